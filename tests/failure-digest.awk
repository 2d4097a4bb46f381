# What failed in one tier's log, in a few lines, for the end of
# scripts/test.sh's output: CI shows only the last few kilobytes of a run,
# and a failure deep in a long tier (the test host's) would otherwise be
# seen only as a count in the summary.
#
# Picks, in the order they appear:
#   TAP       "not ok" lines, each with its first comment lines that say
#             why (a failed check, an error, a timeout), not bats' own
#             "(in test file ...)" and "`[ ... ]' failed" lines
#   libtest   "test NAME ... FAILED" and the line after "panicked at"
#   validation.sh  the table rows of the programs it calls unexpected
#   test host a suite's line with failures, a stall or panic of the host
#   fuzz      a target with crashes or hangs
# Each line is cut to 300 characters; -v max=N caps the lines (default 12)
# and says how many more there were.
BEGIN { if (max == "") max = 12; n = 0; more = 0; why = 0 }
function say(line) {
  if (n >= max) { more++; return }
  if (length(line) > 300) line = substr(line, 1, 297) "..."
  print line
  n++
}
# validation.sh's table: a row per program; only the unexpected ones are said.
/^[A-Za-z0-9_]+ +[0-9]+ +[0-9]+ +[0-9]+  (FAIL|TIMEOUT|ERROR)/ { row[$1] = $0; next }
/^unexpected failures: / {
  if ($3 != "none") for (i = 3; i <= NF; i++) say((($i in row) ? row[$i] : $i " (no table row)"))
  delete row
  next
}
/^not ok / { say($0); why = 3; next }
why > 0 && /^#/ {
  if ($0 ~ /\(in test file|^# *`.*' failed$|^# *\(from function/) next
  # JSON fields such as "error":null name no failure.
  t = tolower($0); gsub(/"error": ?null/, "", t)
  if (t ~ /fail|error|timeout|timed out|panick|refused|not |stalled|no such|denied|killed|missing/) { say("  " $0); why-- }
  next
}
why > 0 { why = 0 }
/^test .* \.\.\. FAILED$/ { say($0); next }
/ panicked at / { panic = 1; next }
panic { say("  " $0); panic = 0; next }
/^# testhost [a-z0-9-]+: [0-9]+ passed, [1-9][0-9]* failed/ { say($0); next }
/^testhost: .*(stalled|panicked)/ { say($0); next }
/^fuzz: [a-z_]+: .*(crashes [1-9]|hangs [1-9])/ { say($0); next }
END { if (more) print "(" more " more lines of failures in the log)" }
