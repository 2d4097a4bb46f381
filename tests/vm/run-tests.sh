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
bindir=$("$here/build-static.sh") || { echo "vm tests: static build failed"; exit 1; }

payload=$(mktemp -d /tmp/amphi-vm-payload.XXXXXX)
trap 'rm -rf "$payload"' EXIT
cp "$bindir/amphi" "$bindir/amphi-agent" "$here/e2e.sh" "$payload/"
mkdir -p "$payload/kernel"
cp "$kroot/boot/vmlinuz-$kver" "$payload/kernel/vmlinuz"
extract_vmlinux "$kroot/boot/vmlinuz-$kver" "$payload/kernel/vmlinux"
copy_module_tree "$kroot/lib/modules/$kver" "$payload/modules" virtio_mmio vmw_vsock_virtio_transport
# An /init the kernel cannot execute (it panics: "No working init found"),
# and a static program that never answers on vsock (busybox, run as init).
head -c 4096 /dev/urandom > "$payload/bad-init"
cp /bin/busybox "$payload/silent-agent"

host_flags=$(grep -m1 '^flags' /proc/cpuinfo || true)
status=0
if [ -e /sys/module/kvm_pvm ]; then
  echo "# this host's /dev/kvm is PVM: checking the refusal here, the rest in the nested test host"
  out=$("$bindir/amphi" vm check --kernel "$payload/kernel/vmlinuz" --modules "$payload/modules" 2>&1); rc=$?
  echo "$out" | sed 's/^/# /'
  if [ $rc = 20 ] && echo "$out" | grep -q "is PVM" && echo "$out" | grep -q "nested test host"; then
    echo "ok - on a PVM host vm check refuses with the PVM explanation (exit 20)"
    pvm="1 passed, 0 failed"
  else
    echo "not ok - on a PVM host vm check refuses with the PVM explanation (got exit $rc)"
    pvm="0 passed, 1 failed"; status=1
  fi
  echo "pvm refusal: $pvm"
  "$here/nested-host.sh" --smp 2 --timeout 1500 "$payload" 'sh ./e2e.sh /payload' || status=1
elif [ -c /dev/kvm ] && echo "$host_flags" | grep -qwE 'vmx|svm'; then
  E2E_TMPDIR=$(mktemp -d) "$payload/e2e.sh" "$payload" || status=1
elif command -v qemu-system-x86_64 >/dev/null; then
  "$here/nested-host.sh" --smp 2 --timeout 1500 "$payload" 'sh ./e2e.sh /payload' || status=1
else
  echo "# SKIPPED: no usable /dev/kvm (no vmx/svm) and no qemu-system-x86_64 for the nested test host"
  echo "vm e2e: 0 passed, 0 failed, 18 skipped"
  exit 0
fi
if [ $bench = 1 ]; then
  "$here/bench.sh" || status=1
fi
exit $status
