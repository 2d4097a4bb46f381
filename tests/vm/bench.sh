#!/usr/bin/env bash
# Boot benchmark: amphi's VMM against QEMU microvm
# (`qemu-system-x86_64 -M microvm -enable-kvm -cpu host`), booting the same
# kernel (the stock Debian bzImage), the same initramfs (amphi's, with
# amphi-agent as /init) and the same kernel command line, side by side in
# the same place, to the same point: the agent's "listening" line on the
# serial console. QEMU gets a vsock device too (vhost-vsock, which the test
# host can load) so the guest does the same work. amphi's full handshake
# and its peak RSS come from its own report. Not a test: it prints figures.
#
# Runs in the nested test host on PVM machines, directly where /dev/kvm
# runs stock kernels. Usage: tests/vm/bench.sh [ROUNDS]   (default 5)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
rounds=${1:-5}
kroot=$(default_kernel_root)
kver=$(kernel_release_in "$kroot")
bindir=$("$here/build-static.sh")

payload=$(mktemp -d /tmp/amphi-vm-bench.XXXXXX)
trap 'rm -rf "$payload"' EXIT
cp "$bindir/amphi" "$bindir/amphi-agent" "$here/bench-inner.sh" "$payload/"
mkdir -p "$payload/kernel" "$payload/qemu/lib" "$payload/qemu/share"
cp "$kroot/boot/vmlinuz-$kver" "$payload/kernel/vmlinuz"
copy_module_tree "$kroot/lib/modules/$kver" "$payload/modules" virtio_mmio virtio_blk virtio_balloon virtio_net vmw_vsock_virtio_transport virtiofs
# QEMU and the libraries it links, run through their own loader.
qemu=$(command -v qemu-system-x86_64)
cp "$qemu" "$payload/qemu/"
for lib in $(ldd "$qemu" | awk '/=>/ {print $3} /ld-linux/ {print $1}'); do
  cp -L "$lib" "$payload/qemu/lib/"
done
cp -L /usr/share/qemu/bios-microvm.bin "$payload/qemu/share/"

if [ -e /sys/module/kvm_pvm ] || ! grep -qwE 'vmx|svm' /proc/cpuinfo; then
  "$here/nested-host.sh" --smp 1 --mem 3072 --timeout 3000 --extra-modules "vhost_vsock" \
    "$payload" "sh ./bench-inner.sh /payload $rounds"
else
  "$payload/bench-inner.sh" "$payload" "$rounds"
fi
