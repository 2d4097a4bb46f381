# Counts the results of Rust test binaries (libtest), as the project
# counts them (DEVELOPERS.md: a test that cannot run says "SKIPPED: why"
# and is counted as skipped, never as passed).
#
# Input: the output of one or more test binaries (or `cargo test`) run
# with --show-output, so a passing test's output is printed in the
# "successes:" part and its SKIPPED line can be seen. Output: one line
# "# skipped: NAME: REASON" per skipped test, then
#   PREFIX: N passed, M failed, K skipped (I ignored)
# PREFIX is -v prefix=... (default "libtest"). "ignored" are #[ignore]d
# tests that were not run (another tier runs them).
BEGIN { if (prefix == "") prefix = "libtest" }
/^successes:$/ { in_ok = 1; section = ""; next }
/^failures:$/ { in_ok = 0; section = ""; next }
/^---- .* stdout ----$/ {
  section = ""
  if (in_ok) { section = $0; sub(/^---- /, "", section); sub(/ stdout ----$/, "", section); bin_section = bin ":" section }
  next
}
/^test result: / {
  for (i = 1; i <= NF; i++) {
    if ($(i + 1) ~ /^passed;/) passed += $i
    if ($(i + 1) ~ /^failed;/) failed += $i
    if ($(i + 1) ~ /^ignored;/) ignored += $i
  }
  in_ok = 0; section = ""; bin++
  next
}
section != "" && /SKIPPED:/ && !(bin_section in skipped) {
  reason = $0; sub(/^.*SKIPPED: */, "", reason)
  skipped[bin_section] = reason
  order[++n] = section
  reasons[n] = reason
}
END {
  for (i = 1; i <= n; i++) printf "# skipped: %s: %s\n", order[i], reasons[i]
  printf "%s: %d passed, %d failed, %d skipped (%d ignored)\n", prefix, passed - n, failed + 0, n, ignored + 0
}
