#!/usr/bin/env bash
# TCP throughput from the host into a VM container, next to the same in
# container isolation on the same path: for each, a network namespace with
# one end of a veth pair (what an engine or CNI makes), the other end on
# the host.
# In the VM the veth's frames are redirected to the VM's TAP (tc mirred)
# and served by the VMM's virtio-net device; in the container they reach
# the namespace's own stack.
#
# The container (busybox) listens with `nc -l` and throws the bytes away;
# the host sends MIB MiB of zeros with one python3 socket and times from
# connect to the receiver's close (everything was read). Medians of ROUNDS
# runs, container and VM interleaved.
#
# Needs a /dev/kvm that runs stock kernels: in this project's PVM machines
# run it in the full test host:
#   tests/testhost/test-host.sh 'bench/vm-net.sh -n 5'
# Usage: bench/vm-net.sh [-n ROUNDS] [-m MIB] [AMPHI]
set -uo pipefail
rounds=5 mib=256
while getopts ":n:m:" o; do
  case $o in
    n) rounds=$OPTARG ;;
    m) mib=$OPTARG ;;
    *) echo "usage: $0 [-n ROUNDS] [-m MIB] [AMPHI]" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
amphi=${1:-$(command -v amphi)}
repo=$(cd "$(dirname "$0")/.." && pwd)
. "$repo/bench/lib.sh"
vm_preflight vm-net "$amphi"

work=$(mktemp -d /tmp/amphi-vmnet.XXXXXX)
cleanup() {
  for i in $("$amphi" --root "$work/root" list -q 2>/dev/null); do "$amphi" --root "$work/root" delete -f "$i"; done
  for iso in container vm; do
    ip link del "hb-$iso" 2>/dev/null
    ip netns del "amphi-bench-$iso" 2>/dev/null
  done
  rm -rf "$work"
}
trap cleanup EXIT
declare -A subnet=([container]=10.232.1 [vm]=10.232.2)
for iso in container vm; do
  ns=amphi-bench-$iso
  ip netns add "$ns"
  ip link add "hb-$iso" type veth peer name eth0 netns "$ns"
  ip -n "$ns" link set lo up
  ip -n "$ns" link set eth0 up
  ip -n "$ns" addr add "${subnet[$iso]}.2/24" dev eth0
  ip link set "hb-$iso" up
  ip addr add "${subnet[$iso]}.1/24" dev "hb-$iso"
done

bundle() { # ISOLATION: a bundle in that isolation, in the namespace, listening
  local b=$work/$1
  mkdir -p "$b"
  cp -a "$repo/bundles/hello/rootfs" "$b/rootfs"
  jq --arg iso "$1" --arg ns "/run/netns/amphi-bench-$1" '.annotations["run.amphi.isolation"] = $iso
    | .process.args = ["/bin/sh", "-c", "while true; do nc -l -p 5001 > /dev/null; done"]
    | .linux.namespaces |= map(if .type == "network" then .path = $ns else . end)' \
    "$repo/bundles/hello/config.json" > "$b/config.json"
  echo "$b"
}

# send ISOLATION: seconds to push MIB MiB to its listener and see it close.
send() {
  python3 - "${subnet[$1]}.2" "$mib" <<'PY'
import socket, sys, time
host, mib = sys.argv[1], int(sys.argv[2])
chunk = b"\0" * (1 << 20)
for attempt in range(100):
    try:
        s = socket.create_connection((host, 5001), timeout=5)
        break
    except OSError:
        time.sleep(0.2)
else:
    sys.exit("vm-net: the listener never came up")
s.settimeout(120)
t = time.monotonic()
for _ in range(mib):
    s.sendall(chunk)
s.shutdown(socket.SHUT_WR)
s.recv(1)
print(f"{time.monotonic() - t:.4f}")
PY
}

median() { sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

declare -A times
for iso in container vm; do
  b=$(bundle "$iso")
  "$amphi" --root "$work/root" run -d --bundle "$b" "bench-$iso" < /dev/null > /dev/null 2>&1 ||
    { echo "vm-net: the $iso container did not start" >&2; exit 1; }
  send "$iso" > /dev/null || exit 1 # warm-up (and: the listener is up)
done
for r in $(seq "$rounds"); do
  for iso in container vm; do
    t=$(send "$iso") || exit 1
    times[$iso]+="$t "
    echo "round $r $iso: ${mib} MiB in ${t} s" >&2
  done
done
c=$(echo "${times[container]}" | tr ' ' '\n' | grep . | median)
v=$(echo "${times[vm]}" | tr ' ' '\n' | grep . | median)
awk -v c="$c" -v v="$v" -v m="$mib" -v n="$rounds" 'BEGIN {
  printf "host -> guest TCP, %d MiB, median of %d: container %.0f MiB/s, VM %.0f MiB/s (VM at %.2fx of container)\n",
    m, n, m / c, m / v, c / v
}'
