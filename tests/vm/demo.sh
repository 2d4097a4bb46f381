#!/usr/bin/env bash
# The VM half of amphi's demo (scripts/demo.sh): `amphi vm check` boots
# Debian's stock cloud kernel in amphi's own VMM, the guest agent answers
# over vsock, and the report shows what it said and how long each step
# took. Runs directly where /dev/kvm runs stock kernels; on a PVM host it
# first shows amphi's refusal, then runs inside the nested test host.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
kroot=$(default_kernel_root) || { echo "demo: no guest kernel: run scripts/fetch-guest-kernel"; exit 1; }
kver=$(kernel_release_in "$kroot")
bindir=$(vm_binaries) || exit 1
payload=$(mktemp -d /tmp/amphi-vm-demo.XXXXXX)
trap 'rm -rf "$payload"' EXIT
prepare_payload "$payload" "$kroot" "$kver" "$bindir"
case $(vm_place) in
  direct)
    "$payload/amphi" vm check --kernel "$payload/kernel/vmlinuz" --modules "$payload/modules" --timeout 60 ;;
  nested)
    if [ -e /sys/module/kvm_pvm ]; then
      echo "\$ amphi vm check    # on this PVM host"
      "$payload/amphi" vm check --kernel "$payload/kernel/vmlinuz" --modules "$payload/modules"
      echo "(exit $?)"
      echo
    fi
    echo "\$ amphi vm check    # inside the nested test host (QEMU, emulated AMD SVM)"
    "$here/nested-host.sh" --smp 1 --timeout 600 "$payload" \
      './amphi vm check --kernel kernel/vmlinuz --modules modules --cache-dir /tmp/amphi-cache --timeout 120' \
      | sed 's/^.*Booting from ROM\.\.//' | grep -v -E '^\[ *[0-9.]+\] (kvm|reboot)|SeaBIOS|NESTED-HOST-EXIT' ;;
  none)
    echo "demo: skipped: no /dev/kvm that runs stock kernels and no qemu-system-x86_64 for the nested test host" ;;
esac
