#!/usr/bin/env bash
# `cargo test` for scripts/test.sh: a test that says "SKIPPED: why" is
# counted as skipped, not passed (libtest alone counts it as passed).
#
# Usage: tests/cargo-test.sh NAME [CARGO_TEST_ARGS...] [-- LIBTEST_ARGS...]
# Runs `cargo test -q --no-fail-fast CARGO_TEST_ARGS -- --show-output LIBTEST_ARGS`, keeps
# its whole output in $CARGO_TEST_LOG (default: a temporary file, removed
# unless something failed), and prints cargo's progress and errors, the
# failures, each skipped test with its reason, and a last line
#   NAME: N passed, M failed, K skipped (I ignored)
# Exits with cargo's status.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
name=${1:?usage: cargo-test.sh NAME [CARGO_TEST_ARGS...] [-- LIBTEST_ARGS...]}
shift
cargo_args=() test_args=()
while [ $# -gt 0 ]; do
  [ "$1" = -- ] && { shift; test_args=("$@"); break; }
  cargo_args+=("$1")
  shift
done
log=${CARGO_TEST_LOG:-}
keep=1
[ -n "$log" ] || { log=$(mktemp /tmp/amphi-cargo-test.XXXXXX); keep=0; }
cargo test -q --no-fail-fast "${cargo_args[@]}" -- --show-output ${test_args[@]+"${test_args[@]}"} > "$log" 2>&1
rc=$?
# What a reader needs: compiler and cargo messages, failures, the per-binary
# result lines; not the output of every passing test.
awk '
  /^successes:$/ { quiet = 1; next }
  /^failures:$/ { quiet = 0 }
  /^test result: / { quiet = 0; print; next }
  /^running [0-9]+ tests?$/ { next }
  !quiet
' "$log" | grep -v -E '^[.i]+( [0-9]+/[0-9]+)?$' | cat -s
awk -v prefix="$name" -f "$here/libtest-summary.awk" "$log"
if [ "$rc" = 0 ] && [ "$keep" = 0 ]; then rm -f "$log"; elif [ "$keep" = 0 ]; then echo "# full output: $log"; fi
exit "$rc"
