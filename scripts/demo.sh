#!/usr/bin/env bash
# amphi's demo: the example bundle (bundles/hello), unmodified, run as a
# Linux container and then inside amphi's microVM, by the same binary and
# the same runc command line; then each isolation's lifecycle step by step
# (create, list, start, exec, state, kill, delete).
#
# VM isolation needs a /dev/kvm that runs stock kernels. On a host with
# VMX/SVM everything runs here. On a PVM host (this project's machines) the
# demo shows amphi's refusal here, then runs the VM half inside the full
# test host (tests/testhost/test-host.sh: this machine's / under QEMU with
# an emulated AMD SVM CPU; its TCG CPU makes every step there several times
# slower than on hardware).
#
# Usage: scripts/demo.sh [--no-setup]
#        scripts/demo.sh --isolation ISOLATION   (one half, set-up done)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
[ "$(id -u)" = 0 ] || { echo "demo: run as root" >&2; exit 2; }

ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

# One isolation: the bundle as it is, then step by step.
half() {
  local iso=$1 id=demo-$1-$$ start bundle
  echo "== $iso isolation: amphi --isolation $iso run --bundle bundles/hello $id"
  start=$(date +%s%N)
  amphi --isolation "$iso" run --bundle bundles/hello "$id"
  echo "(create, start, wait and delete in $(ms_since "$start") ms)"

  echo
  echo "== $iso isolation, step by step"
  bundle=$(mktemp -d /tmp/amphi-demo.XXXXXX)
  jq '.process.args = ["/bin/sleep", "600"]' bundles/hello/config.json > "$bundle/config.json"
  ln -s "$root/bundles/hello/rootfs" "$bundle/rootfs"
  echo "\$ amphi --isolation $iso create --bundle $bundle $id"
  amphi --isolation "$iso" create --bundle "$bundle" "$id"
  echo "\$ amphi list"
  amphi list
  echo "\$ amphi start $id"
  amphi start "$id"
  echo "\$ amphi exec $id /bin/sh -c 'uname -r; cat /proc/1/cmdline'"
  amphi exec "$id" /bin/sh -c 'uname -r; tr "\0" " " < /proc/1/cmdline; echo'
  echo "\$ amphi state $id"
  amphi state "$id"
  echo "\$ amphi kill $id KILL; amphi delete $id"
  amphi kill "$id" KILL
  for _ in $(seq 50); do
    [ "$(amphi state "$id" | jq -r .status)" = stopped ] && break
    sleep 0.1
  done
  amphi delete "$id"
  rm -rf "$bundle"
  echo
}

case ${1:-} in
  --isolation)
    half "${2:?demo: --isolation container|vm}"
    exit 0 ;;
  --no-setup) ;;
  '') scripts/setup.sh --quiet ;;
  *) echo "usage: scripts/demo.sh [--no-setup]" >&2; exit 2 ;;
esac

half container

. tests/vm/lib.sh
case $(vm_place) in
  direct) half vm ;;
  nested)
    echo "== vm isolation on this host"
    echo "\$ amphi --isolation vm run --bundle bundles/hello demo-vm-$$"
    set +e
    amphi --isolation vm run --bundle bundles/hello "demo-vm-$$"
    echo "(exit $?)"
    set -e
    echo
    echo "== the same, inside the full test host (QEMU with emulated SVM; this machine's / read-only)"
    tests/testhost/test-host.sh --quiet --timeout 900 --cwd "$root" "scripts/demo.sh --isolation vm" ;;
  none)
    echo "== vm isolation: skipped: no /dev/kvm that runs stock kernels, and no qemu-system-x86_64 for the test host" ;;
esac
