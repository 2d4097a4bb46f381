#!/usr/bin/env bash
# The CRI test (shim/tests/cri.rs) for one runtime handler: a pod through
# containerd 1.6's CRI plugin, driven as the kubelet drives it, then a check
# that nothing of it is left. docs/kubernetes.md describes the handlers.
#
# Usage (as root): tests/cri/run.sh [HANDLER]
#   HANDLER: amphi (default, or $AMPHI_CRI_HANDLER), amphi-vm, runc.
#   runc checks the harness itself with containerd's own runc shim.
# Builds the test (cargo test --no-run; set CARGO_TARGET_DIR as usual), or
# takes the test binary from CRI_TEST_BIN (the test host, where building is
# slow, gets it so), and runs it with --ignored. It prints each check as "ok - ..." or
# "not ok - ...", and last "N passed, M failed"; when the host cannot run it
# (not root, no containerd, ...) "SKIPPED: why" and
# "0 passed, 0 failed (skipped)". Exits non-zero on a failure.
# SHIM_DIR, as for tests/clients/containerd.sh, tests a build of the shim
# and amphi before installing them: SHIM_DIR=target/debug tests/cri/run.sh
# AMPHI_CRI_KEEP_LOG=FILE keeps containerd's log (with the shims' logs).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
handler=${1:-${AMPHI_CRI_HANDLER:-amphi}}
case $handler in
  amphi | amphi-vm | runc) ;;
  *) echo "run.sh: the handler is amphi, amphi-vm or runc, not $handler" >&2; exit 2 ;;
esac
test_name=a_pod_runs_through_the_cri_and_leaves_nothing_behind

skip() { echo "SKIPPED: $*"; echo "0 passed, 0 failed (skipped)"; exit 0; }
[ "$(id -u)" = 0 ] || skip "needs root (containerd creates namespaces, cgroups and mounts)"
command -v jq >/dev/null || skip "jq is not installed (scripts/setup.sh installs it)"
command -v protoc >/dev/null || skip "protoc is not installed: the CRI client's protobufs need it (apt-get install protobuf-compiler)"

log=$(mktemp /tmp/amphi-cri-run.XXXXXX)
dir=/tmp/amphi-cri.run.$$
cleanup() {
  # The test tears its environment down itself; this is for a test that was
  # killed.
  [ -d "$dir" ] && "$here/env.sh" stop "$dir" | sed 's/^/# after the test: /'
  rm -f "$log"
}
trap cleanup EXIT

cd "$repo" || exit 1
if [ -n "${CRI_TEST_BIN:-}" ]; then
  bin=$CRI_TEST_BIN
elif ! bin=$(cargo test -p containerd-shim-amphi-v2 --test cri --locked --no-run --message-format=json 2>"$log" |
  jq -r 'select(.reason == "compiler-artifact" and .target.name == "cri" and .executable != null) | .executable' | tail -1) ||
  [ -z "$bin" ]; then
  tail -30 "$log"
  echo "run.sh: cannot build the CRI test"
  echo "0 passed, 1 failed"
  exit 1
fi

if [ -n "${SHIM_DIR:-}" ]; then
  SHIM_DIR=$(cd "$SHIM_DIR" && pwd) || exit 1
  export SHIM_DIR
fi
AMPHI_CRI_HANDLER=$handler AMPHI_CRI_DIR=$dir "$bin" --ignored --exact "$test_name" --nocapture --test-threads=1 >"$log" 2>&1
rc=$?
# libtest's own lines (with --nocapture its verdict lands on a line of its
# own) and the blank ones.
sed "s/^test $test_name \.\.\. //" "$log" |
  grep -v -E '^(running [0-9]+ tests?|test result: .*|ok|FAILED|failures:|    '"$test_name"')?$'
skipped=$(grep -m1 '^SKIPPED: ' "$log")
passed=$(grep -c '^ok - ' "$log")
failed=$(grep -c '^not ok - ' "$log")
if [ -n "$skipped" ] && [ "$passed" = 0 ] && [ "$failed" = 0 ] && [ "$rc" = 0 ]; then
  echo "0 passed, 0 failed (skipped)"
  exit 0
fi
# A panic outside the checks (the environment did not start) is a failure too.
if [ "$rc" != 0 ] && [ "$failed" = 0 ]; then failed=1; fi
echo "$passed passed, $failed failed"
[ "$rc" = 0 ] && [ "$failed" = 0 ]
