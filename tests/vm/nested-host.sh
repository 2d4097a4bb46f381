#!/usr/bin/env bash
# amphi's nested KVM test host.
#
# The project's machines expose /dev/kvm through PVM, which cannot run a
# stock guest kernel. This boots a throw-away Linux "test host" under QEMU
# TCG with an emulated AMD CPU that has SVM (-cpu qemu64,+svm,+npt, -M pc;
# without +npt kvm_amd runs its guests on shadow page tables), so
# kvm_amd gives it a real /dev/kvm; then runs COMMAND inside it with busybox
# sh, in /payload (a copy of PAYLOAD_DIR). The exit status is COMMAND's.
#
# Usage: tests/vm/nested-host.sh [options] PAYLOAD_DIR COMMAND
#   --kernel-root DIR  tree holding boot/vmlinuz-<r> and lib/modules/<r>
#                      (default: newest in /var/lib/amphi/kernels, see
#                      scripts/fetch-guest-kernel; else / for /boot)
#   --smp N            test host vCPUs (default 1; TCG and 2 host cores:
#                      keep it at 1 or 2)
#   --mem MIB          test host memory (default 2048)
#   --timeout SECS     wall-clock limit (default 900)
#   --extra-modules "m1 m2"  more modules to load in the test host (with
#                      their dependencies), e.g. vhost_vsock for QEMU's vsock
# Needs: qemu-system-x86 busybox-static cpio lz4 (kmod for modinfo).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
smp=1 mem=2048 timeout_s=900 kroot= extra=
while [ $# -gt 0 ]; do
  case $1 in
    --kernel-root) kroot=$2; shift 2;;
    --smp) smp=$2; shift 2;;
    --mem) mem=$2; shift 2;;
    --timeout) timeout_s=$2; shift 2;;
    --extra-modules) extra=$2; shift 2;;
    --) shift; break;;
    -*) echo "nested-host: unknown option $1" >&2; exit 2;;
    *) break;;
  esac
done
payload=${1:?usage: nested-host.sh [options] PAYLOAD_DIR COMMAND}
cmd=${2:?usage: nested-host.sh [options] PAYLOAD_DIR COMMAND}
. "$here/lib.sh"

kroot=${kroot:-$(default_kernel_root)}
kver=$(kernel_release_in "$kroot")
moddir=$kroot/lib/modules/$kver
work=$(mktemp -d /tmp/amphi-nested.XXXXXX)
trap 'rm -rf "$work"' EXIT

# The test host boots the ELF vmlinux through its PVH entry: decompressing a
# bzImage under TCG costs seconds.
extract_vmlinux "$kroot/boot/vmlinuz-$kver" "$work/vmlinux"

root=$work/root
mkdir -p "$root/bin" "$root/mods" "$root/payload" "$root/dev"
cp /bin/busybox "$root/bin/busybox"
order=$(module_load_order "$moddir" kvm_amd $extra)
for m in $order; do
  copy_module "$moddir" "$m" "$root/mods/$m.ko"
done
cp -a "$payload/." "$root/payload/"
{
  echo '#!/bin/busybox sh'
  echo 'export PATH=/bin:/payload'
  echo '/bin/busybox --install -s /bin'
  echo 'mkdir -p /proc /sys /dev /tmp /run'
  echo 'mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev'
  echo 'mount -t tmpfs tmp /tmp; mount -t tmpfs run /run'
  for m in $order; do echo "insmod /mods/$m.ko || echo 'nested-host: insmod $m failed'"; done
  echo '[ -c /dev/kvm ] || echo "nested-host: no /dev/kvm in the test host"'
  echo 'cd /payload'
  printf "sh -c '%s'\n" "$cmd"
  echo 'echo "NESTED-HOST-EXIT=$?"'
  echo 'poweroff -f'
} > "$root/init"
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet) > "$work/initrd"

status_file=$work/console.log
timeout "$timeout_s" qemu-system-x86_64 -M pc -accel tcg -cpu qemu64,+svm,+npt -smp "$smp" -m "$mem" \
  -nographic -no-reboot -nodefaults -serial stdio \
  -kernel "$work/vmlinux" -initrd "$work/initrd" \
  -append "console=ttyS0 panic=-1 quiet" </dev/null | tee "$status_file" || true
code=$(grep -a -o 'NESTED-HOST-EXIT=[0-9]*' "$status_file" | tail -1 | cut -d= -f2 || true)
if [ -z "$code" ]; then
  echo "nested-host: the test host did not report an exit status (timeout ${timeout_s}s or crash)" >&2
  exit 3
fi
exit "$code"
