# A deadline for each VM test (loaded by tests/vm/*.bats). A hung test
# would otherwise hold its suite, and the testhost tier, until the tier's
# budget runs out (CI of 2026-12-01: a VM test hung for 48 minutes). bats
# fails a test that runs past BATS_TEST_TIMEOUT seconds; 30 s before that
# tests/vm/hang-report.sh records what the VMMs and amphi were doing,
# while the hang is still there (bats kills the test's children first),
# and teardown prints it with the failure.
: "${BATS_TEST_TIMEOUT:=600}"

# deadline_watch ROOT...: in setup.
deadline_watch() {
  DEADLINE_REPORT=$BATS_TEST_TMPDIR/hang-report.txt
  (
    # Nothing of bats' own (its TAP pipe and the rest): bats reads those
    # pipes to their end, so a descriptor held here would hold the run.
    for fd in /proc/$BASHPID/fd/*; do
      fd=${fd##*/}
      [ "$fd" -le 2 ] || eval "exec $fd>&-"
    done
    # The sleep goes with the watch (no sleeper left per test).
    sleep $((BATS_TEST_TIMEOUT > 60 ? BATS_TEST_TIMEOUT - 30 : BATS_TEST_TIMEOUT / 2)) &
    trap 'kill $! 2>/dev/null; exit 0' TERM
    wait $! || exit 0
    "$REPO/tests/vm/hang-report.sh" "$@" > "$DEADLINE_REPORT" 2>&1
  ) </dev/null >/dev/null 2>&1 &
  DEADLINE_WATCH=$!
}

# deadline_report: in teardown; prints the report if the deadline came.
deadline_report() {
  [ -z "${DEADLINE_WATCH:-}" ] || kill "$DEADLINE_WATCH" 2>/dev/null || true
  if [ -s "${DEADLINE_REPORT:-}" ]; then
    echo "# the test ran into its deadline (${BATS_TEST_TIMEOUT}s); what amphi's VMMs were doing:"
    cat "$DEADLINE_REPORT"
  fi
}
