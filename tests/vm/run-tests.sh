#!/usr/bin/env bash
# Tier 4 (VM end to end), as CI runs it:
#   - on a host whose /dev/kvm runs stock kernels (VMX/SVM): e2e.sh directly;
#   - on a PVM host (these machines): first the PVM refusal, then e2e.sh
#     inside a nested test host: by default the minimal busybox one
#     (nested-host.sh), which runs this tier faster than the full one
#     (tests/testhost/test-host.sh; VM_TEST_HOST=full picks it), see
#     docs/testing.md;
#   - with neither: every test reported skipped, with the reason.
# Usage: tests/vm/run-tests.sh [--bench]   (--bench: also run bench.sh)
# Ends with "vm: N passed, M failed, K skipped".
# Needs root, a guest kernel (scripts/fetch-guest-kernel), and for the
# nested path qemu-system-x86 busybox-static cpio lz4 kmod (and for the full
# test host its kernel, scripts/fetch-test-host-kernel).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
. "$here/lib.sh"
bench=0
[ "${1:-}" = --bench ] && bench=1
e2e_tests=30
test_host=${VM_TEST_HOST:-minimal}
case $test_host in full|minimal) ;; *) echo "vm tests: VM_TEST_HOST is full or minimal" >&2; exit 2 ;; esac

kroot=$(default_kernel_root) || {
  echo "SKIPPED: no guest kernel (run scripts/fetch-guest-kernel)"
  echo "vm: 0 passed, 0 failed, $((e2e_tests + 1)) skipped"   # + the PVM refusal
  exit 0
}
kver=$(kernel_release_in "$kroot")
bindir=$(vm_binaries) || { echo "vm tests: static build failed"; echo "vm: 0 passed, 1 failed, 0 skipped"; exit 1; }

# The payload lives where the full test host sees it (it replaces /tmp).
mkdir -p "$root/target"
payload=$(mktemp -d "$root/target/vm-payload.XXXXXX")
trap 'rm -rf "$payload"' EXIT
prepare_payload "$payload" "$kroot" "$kver" "$bindir"
cp "$here/e2e.sh" "$payload/"

status=0 passed=0 failed=0 skipped=0
place=$(vm_place)
if [ -e /sys/module/kvm_pvm ]; then
  echo "# this host's /dev/kvm is PVM: checking the refusal here, the rest in the nested test host"
  out=$("$bindir/amphi" vm check --kernel "$payload/kernel/vmlinuz" --modules "$payload/modules" 2>&1); rc=$?
  echo "$out" | sed 's/^/# /'
  if [ $rc = 20 ] && echo "$out" | grep -q "is PVM" && echo "$out" | grep -q "nested test host"; then
    echo "ok - on a PVM host vm check refuses with the PVM explanation (exit 20)"
    passed=1
  else
    echo "not ok - on a PVM host vm check refuses with the PVM explanation (got exit $rc)"
    failed=1; status=1
  fi
fi
case $place in
  direct) E2E_TMPDIR=$(mktemp -d) "$payload/e2e.sh" "$payload" | tee "$payload/e2e.log" || status=1 ;;
  nested)
    if [ "$test_host" = full ]; then
      "$root/tests/testhost/test-host.sh" --quiet --timeout 1500 --cwd "$payload" "sh ./e2e.sh $payload" |
        tee "$payload/e2e.log"
      [ "${PIPESTATUS[0]}" = 0 ] || status=1
    else
      # The e2e tests take about a minute; a nested host that reports no
      # exit status within 300 s (exit 3) stalled (docs/testing.md, "A
      # stalled test host": nothing amphi does) and gets one fresh boot.
      for attempt in 1 2; do
        "$here/nested-host.sh" --smp 2 --timeout 300 "$payload" 'sh ./e2e.sh /payload' | tee "$payload/e2e.log"
        rc=${PIPESTATUS[0]}
        [ "$rc" = 3 ] && [ $attempt = 1 ] || break
        echo "# the nested test host stalled (no exit status in 300 s): booting a fresh one"
      done
      [ "$rc" = 0 ] || status=1
    fi ;;
  none)
    echo "# SKIPPED: no /dev/kvm that runs stock kernels (no vmx/svm, or PVM) and no qemu-system-x86_64 for the nested test host"
    skipped=$e2e_tests ;;
esac
if [ "$place" != none ]; then
  # e2e.sh's last line: "N passed, M failed, K skipped".
  read -r p f k < <(tr -d '\r' < "$payload/e2e.log" |
    sed -n -E 's/^([0-9]+) passed, ([0-9]+) failed, ([0-9]+) skipped$/\1 \2 \3/p' | tail -n 1)
  if [ -z "${p:-}" ]; then
    echo "not ok - the e2e tests did not report (see above)"
    p=0 f=1 k=0 status=1
  fi
  passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + k))
fi
if [ $bench = 1 ] && [ "$place" != none ]; then
  "$here/bench.sh" || status=1
fi
echo "vm: $passed passed, $failed failed, $skipped skipped"
exit $status
