#!/usr/bin/env bash
# The testhost tier, as CI runs it (scripts/test.sh testhost): real clients
# and the root tests that need a pure cgroup v2 host, inside the full test
# host (tests/testhost/test-host.sh: this machine's / over 9p, cgroup2
# alone, /dev/kvm), in both isolations: VM isolation needs the test host's
# /dev/kvm, which runs stock kernels where this machine's PVM one cannot.
#
# Usage: tests/testhost/run-tests.sh [SUITE...]
#   suites (default: all, in this order): selfcheck podman containerd cri docker cgroups vm cri-vm load-vm crash-vm oci-vm oci-vm-cold bench
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
# Everything is in main, read whole before it runs: editing this file while
# the tier runs cannot change what that run does.
main() {
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
. "$repo/tests/vm/lib.sh"
# bench last: the test hosts that stalled on 2026-12-01 did so during it
# (QEMU microvm boots beside amphi's), and a retry then reruns it alone.
all=(selfcheck podman containerd cri docker cgroups vm cri-vm load-vm crash-vm oci-vm oci-vm-cold bench)
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
  if is_static "$d/amphi" && is_static "$d/amphi-agent" && is_static "$d/containerd-shim-amphi-v2" && is_static "$d/amphi-workload"; then bindir=$d; fi
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

# The CRI test's binary, built here (cargo under TCG is slow).
cri_bin=
if [[ " ${suites[*]} " == *" cri"* ]]; then
  cri_bin=$(cd "$repo" && cargo test -p containerd-shim-amphi-v2 --test cri --no-run --locked --message-format=json 2>/dev/null |
    jq -r 'select(.reason == "compiler-artifact" and .target.name == "cri" and .executable != null) | .executable' | tail -n 1)
  [ -x "$cri_bin" ] || fail "the CRI test did not build (cargo test -p containerd-shim-amphi-v2 --test cri --no-run)"
fi

# The OCI suite's build (cached in /var/tmp/amphi-oci, which the test host
# sees): made here, where apt and the network are.
if [[ " ${suites[*]} " == *" oci-vm"* ]]; then
  "$repo/tests/oci/validation.sh" --build-only || fail "the OCI validation suite did not build"
fi

results=$repo/target/testhost
rm -rf "$results"
mkdir -p "$results"
echo "# testhost: suites ${suites[*]}; binaries from $bindir; logs in $results"
boot() { # TIMEOUT SUITE...
  local timeout=$1
  shift
  "$here/test-host.sh" --quiet --timeout "$timeout" --share "$results" --cwd "$repo" \
    --env "TH_BIN=$bindir" --env "TH_TESTS=${tests# }" --env "TH_CRI=$cri_bin" --console-log "$results/console.log" \
    "tests/testhost/suites.sh $results $*"
}
# The tier's budget, counted from its start (builds included): CI allows
# 90 minutes for every tier, and the others take about 30 on a slow day
# (2026-12-01: 1824 s). The first boot gets all of what is left of it: a
# fixed limit (45 minutes) failed a CI run whose suites were merely slow.
# TESTHOST_LEFT, when set (scripts/test.sh under CI), is what the whole
# run has left for this tier: the budget never goes past it.
budget=${TESTHOST_BUDGET:-3300}
if [ -n "${TESTHOST_LEFT:-}" ] && [ "$TESTHOST_LEFT" -lt "$budget" ]; then budget=$TESTHOST_LEFT; fi
echo "# testhost: a budget of ${budget}s${TESTHOST_LEFT:+ (the run has ${TESTHOST_LEFT}s left for it)}"
boot $((budget - SECONDS)) "${suites[@]}"
rc=$?
# A stalled test host (exit 124: its emulated kernel stopped scheduling,
# both vCPUs spinning in the scheduler with interrupts off; seen in up to
# half the boots that run microVMs under QEMU 7.2, docs/testing.md), or
# one whose own kernel panicked (also 124; seen under QEMU 10), says
# nothing about amphi: the suites it had not finished run again in a
# fresh one, at most three times (2026-12-01 afternoon: 4 stalls in 6 boots), within the
# tier's budget: a fresh boot gets what is left of it,
# and none starts with less than 10 minutes left. On a slow day a retry of
# most suites needs more than the half hour a fixed timeout gave it
# (2026-12-01: the suites ran at half their usual speed and the retry ran
# out of time in oci-vm-cold). The suites that ended keep their results;
# every stall is said.
stalls=0
while [ "$rc" = 124 ]; do
  stalls=$((stalls + 1))
  left=()
  for s in "${suites[@]}"; do
    grep -q "^# testhost $s: " "$results/done" 2>/dev/null || left+=("$s")
  done
  mv "$results/console.log" "$results/console.stalled-$stalls.log" 2>/dev/null
  if [ ${#left[@]} = 0 ]; then
    echo "testhost: the test host stalled or panicked after its last suite (console: $results/console.stalled-$stalls.log)"
    echo "testhost: stalled" > "$results/summary"
    rc=0
    break
  fi
  if [ "$stalls" -gt 3 ] || [ $((budget - SECONDS)) -lt 600 ]; then
    fail "the test host stalled or panicked $stalls times (last during suite ${left[0]}; consoles: $results/console.stalled-*.log); not retrying after ${SECONDS}s"
  fi
  echo "testhost: the test host stalled or panicked during suite ${left[0]} (console: $results/console.stalled-$stalls.log); running ${left[*]} again in a fresh test host"
  rm -f "$results/summary"
  boot $((budget - SECONDS)) "${left[@]}"
  rc=$?
done
if [ "$stalls" -gt 0 ] && [ "$rc" != 125 ] && grep -q '^testhost: ' "$results/summary" 2>/dev/null; then
  # Every boot's suites, counted together.
  echo "# testhost: after $stalls stalled test host(s), the suites of every boot:"
  cat "$results/done"
  awk '/^# testhost [a-z0-9-]+: [0-9]+ passed/ { p += $4; f += $6; k += $8 } END { printf "testhost: %d passed, %d failed, %d skipped\n", p, f, k; exit f > 0 }' \
    "$results/done"
  exit $?
fi
if [ "$rc" = 125 ] || ! grep -q '^testhost: ' "$results/summary" 2>/dev/null; then
  fail "the test host did not finish the suites (exit $rc; its console: $results/console.log)"
fi
exit "$rc"
}
main "$@"
