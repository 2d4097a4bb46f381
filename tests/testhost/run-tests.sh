#!/usr/bin/env bash
# The testhost tier, as CI runs it (scripts/test.sh testhost): real clients
# and the root tests that need a pure cgroup v2 host, inside the full test
# host (tests/testhost/test-host.sh: this machine's / over 9p, cgroup2
# alone, /dev/kvm), in both isolations: VM isolation needs the test host's
# /dev/kvm, which runs stock kernels where this machine's PVM one cannot.
#
# Usage: tests/testhost/run-tests.sh [SUITE...]
#   suites (default: all, in this order): selfcheck podman containerd docker cgroups vm
#   (tests/testhost/suites.sh says what each runs)
# On the host first: the static amphi, amphi-agent and containerd-shim-amphi-v2
# ($AMPHI's directory when it holds all three static, as scripts/setup.sh
# installs them; else tests/vm/build-static.sh) and the cargo test binaries
# (cargo test --no-run: a no-op after the root tier). Then one boot runs
# every suite. Logs: target/testhost/<suite>.log (written from inside
# through a writable 9p share).
# Ends with "testhost: N passed, M failed, K skipped"; exits non-zero on any
# failure. Without root, QEMU or a test-host kernel it says SKIPPED and why.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
. "$repo/tests/vm/lib.sh"
all=(selfcheck podman containerd docker cgroups vm)
suites=("$@")
[ ${#suites[@]} -gt 0 ] || suites=("${all[@]}")
for s in "${suites[@]}"; do
  [[ " ${all[*]} " == *" $s "* ]] || { echo "testhost: unknown suite $s (suites: ${all[*]})" >&2; exit 2; }
done
skip_all() {
  echo "SKIPPED: $*"
  echo "testhost: 0 passed, 0 failed, ${#suites[@]} skipped"
  exit 0
}
fail() {
  echo "testhost: $*" >&2
  echo "testhost: 0 passed, 1 failed, 0 skipped"
  exit 1
}

[ "$(id -u)" = 0 ] || skip_all "needs root (the test host shares this machine's / through QEMU)"
command -v qemu-system-x86_64 >/dev/null || skip_all "no qemu-system-x86_64 for the test host (apt-get install qemu-system-x86)"
"$repo/scripts/fetch-test-host-kernel" >/dev/null ||
  skip_all "no test-host kernel: scripts/fetch-test-host-kernel failed (offline?)"

# Static binaries side by side, somewhere the test host sees (not /tmp).
bindir=
if [ -n "${AMPHI:-}" ]; then
  d=$(cd "$(dirname "$AMPHI")" && pwd)
  if is_static "$d/amphi" && is_static "$d/amphi-agent" && is_static "$d/containerd-shim-amphi-v2"; then bindir=$d; fi
fi
[ -n "$bindir" ] || bindir=$("$repo/tests/vm/build-static.sh") || fail "the static build failed"
case $bindir/ in /tmp/*|/run/*) fail "$bindir is under /tmp or /run, which the test host replaces: set AMPHI elsewhere" ;; esac

tests=
if [[ " ${suites[*]} " == *" cgroups "* ]]; then
  json=$(cd "$repo" && cargo test --workspace --no-run --locked --message-format=json 2>/dev/null) ||
    fail "cargo test --no-run failed (run it to see why)"
  for t in cgroups_v2 lifecycle; do
    exe=$(jq -r --arg t "$t" 'select(.reason == "compiler-artifact" and .target.name == $t and .profile.test) | .executable' <<< "$json" | tail -n 1)
    [ -x "$exe" ] || fail "no test binary for tests/$t.rs"
    tests="$tests $t=$exe"
  done
fi

results=$repo/target/testhost
rm -rf "$results"
mkdir -p "$results"
echo "# testhost: suites ${suites[*]}; binaries from $bindir; logs in $results"
"$here/test-host.sh" --quiet --timeout 2400 --share "$results" --cwd "$repo" \
  --env "TH_BIN=$bindir" --env "TH_TESTS=${tests# }" --console-log "$results/console.log" \
  "tests/testhost/suites.sh $results ${suites[*]}"
rc=$?
if [ "$rc" = 125 ] || ! grep -q '^testhost: ' "$results/summary" 2>/dev/null; then
  fail "the test host did not finish the suites (exit $rc; its console: $results/console.log)"
fi
exit "$rc"
