#!/usr/bin/env bash
# Tier 4 (VM end to end), as CI runs it:
#   - on a host whose /dev/kvm runs stock kernels (VMX/SVM): e2e.sh directly;
#   - on a PVM host (these machines): first the PVM refusal, then e2e.sh
#     inside the nested test host (nested-host.sh);
#   - with neither: every test reported skipped, with the reason.
# Usage: tests/vm/run-tests.sh [--bench]   (--bench: also run bench.sh)
# Needs root, a guest kernel (scripts/fetch-guest-kernel), and for the
# nested path qemu-system-x86 busybox-static cpio lz4 kmod.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
. "$here/lib.sh"
bench=0
[ "${1:-}" = --bench ] && bench=1

kroot=$(default_kernel_root) || { echo "vm tests: 0 passed, 0 failed, 1 skipped: no guest kernel (run scripts/fetch-guest-kernel)"; exit 1; }
kver=$(kernel_release_in "$kroot")
bindir=$(vm_binaries) || { echo "vm tests: static build failed"; exit 1; }

payload=$(mktemp -d /tmp/amphi-vm-payload.XXXXXX)
trap 'rm -rf "$payload"' EXIT
prepare_payload "$payload" "$kroot" "$kver" "$bindir"
cp "$here/e2e.sh" "$payload/"

status=0
place=$(vm_place)
if [ -e /sys/module/kvm_pvm ]; then
  echo "# this host's /dev/kvm is PVM: checking the refusal here, the rest in the nested test host"
  out=$("$bindir/amphi" vm check --kernel "$payload/kernel/vmlinuz" --modules "$payload/modules" 2>&1); rc=$?
  echo "$out" | sed 's/^/# /'
  if [ $rc = 20 ] && echo "$out" | grep -q "is PVM" && echo "$out" | grep -q "nested test host"; then
    echo "ok - on a PVM host vm check refuses with the PVM explanation (exit 20)"
    echo "pvm refusal: 1 passed, 0 failed"
  else
    echo "not ok - on a PVM host vm check refuses with the PVM explanation (got exit $rc)"
    echo "pvm refusal: 0 passed, 1 failed"; status=1
  fi
fi
case $place in
  direct) E2E_TMPDIR=$(mktemp -d) "$payload/e2e.sh" "$payload" || status=1 ;;
  nested) "$here/nested-host.sh" --smp 2 --timeout 1500 "$payload" 'sh ./e2e.sh /payload' || status=1 ;;
  none)
    echo "# SKIPPED: no /dev/kvm that runs stock kernels (no vmx/svm, or PVM) and no qemu-system-x86_64 for the nested test host"
    echo "vm e2e: 0 passed, 0 failed, 30 skipped"
    exit $status ;;
esac
if [ $bench = 1 ]; then
  "$here/bench.sh" || status=1
fi
exit $status
