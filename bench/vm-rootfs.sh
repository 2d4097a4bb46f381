#!/usr/bin/env bash
# A VM container's root filesystem over virtio-fs (the default: the
# bundle's rootfs directory, shared by the VMM) against an ext4 image on
# virtio-blk (the run.amphi.vm.rootfs annotation), for file-heavy work:
#   small  - FILES small files created, stat'd (ls -l) and removed
#   write  - a MIB MiB file written and fsync'd
#   read   - a MIB MiB file read that the guest has never seen
#            (put in the rootfs on the host, so no guest cache holds it)
# and the same in container isolation on the same host, for scale. Each
# workload times itself inside the guest (busybox time, 10 ms steps), so
# boot and teardown are not in the figures; medians of ROUNDS runs,
# rounds interleaved so drift hits both alike.
#
# Needs a /dev/kvm that runs stock kernels: in this project's PVM machines
# run it in the full test host:
#   tests/testhost/test-host.sh 'bench/vm-rootfs.sh -n 3'
# Usage: bench/vm-rootfs.sh [-n ROUNDS] [-f FILES] [-m MIB] [AMPHI]
set -uo pipefail
rounds=3 files=2000 mib=64
while getopts ":n:f:m:" o; do
  case $o in
    n) rounds=$OPTARG ;;
    f) files=$OPTARG ;;
    m) mib=$OPTARG ;;
    *) echo "usage: $0 [-n ROUNDS] [-f FILES] [-m MIB] [AMPHI]" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
amphi=${1:-$(command -v amphi)}
repo=$(cd "$(dirname "$0")/.." && pwd)
. "$repo/bench/lib.sh"
vm_preflight vm-rootfs "$amphi"
command -v mkfs.ext4 >/dev/null || { echo "vm-rootfs: mkfs.ext4 (e2fsprogs) is needed" >&2; exit 2; }

work=$(mktemp -d /tmp/amphi-vmrootfs.XXXXXX)
trap 'for i in $("$amphi" --root "$work/root" list -q 2>/dev/null); do "$amphi" --root "$work/root" delete -f "$i"; done; rm -rf "$work"' EXIT

# The workloads, scripts in the rootfs; bench.sh prints "<name> <seconds>".
workload() {
  cat > "$1/small.sh" <<SH
mkdir /t; i=0; while [ \$i -lt $files ]; do echo x > /t/f\$i; i=\$((i+1)); done; ls -l /t >/dev/null; rm -r /t
SH
  cat > "$1/bench.sh" <<SH
t() { name=\$1; shift; /bin/busybox time -f %e -o /time.txt "\$@" >/dev/null 2>&1; echo "\$name \$(tail -1 /time.txt)"; }
t small sh /small.sh
t write dd if=/dev/zero of=/w bs=1M count=$mib conv=fsync
rm -f /w /time.txt
t read cat /big
rm -f /time.txt
SH
}

bundle() { # KIND: share | block | container
  local b=$work/bundle-$1
  mkdir -p "$b/rootfs"
  cp -a "$repo/bundles/hello/rootfs/." "$b/rootfs/"
  workload "$b/rootfs"
  dd if=/dev/urandom of="$b/rootfs/big" bs=1M count="$mib" status=none
  local iso=vm ann='{}'
  case $1 in
    container) iso=container ;;
    block)
      mkfs.ext4 -q -d "$b/rootfs" "$b/root.img" "$((mib * 3 + 64))M"
      ann='{"run.amphi.vm.rootfs": "root.img"}' ;;
  esac
  jq --arg iso "$iso" --argjson ann "$ann" '.process.args = ["/bin/sh", "/bench.sh"] | .root.readonly = false
    | .annotations = ((.annotations // {}) + $ann + {"run.amphi.isolation": $iso})
    | .linux.resources.memory.limit = 536870912
    | .annotations["run.amphi.vm.boot_timeout"] = "240"' \
    "$repo/bundles/hello/config.json" > "$b/config.json"
  echo "$b"
}

declare -A results
kinds=(share block container)
for k in "${kinds[@]}"; do bundle "$k" >/dev/null; done
for r in $(seq "$rounds"); do
  for k in "${kinds[@]}"; do
    # A fresh block image each round: what the last round wrote stays out.
    if [ "$k" = block ]; then
      b=$work/bundle-block
      rm -f "$b/root.img"; mkfs.ext4 -q -d "$b/rootfs" "$b/root.img" "$((mib * 3 + 64))M"
    fi
    out=$("$amphi" --root "$work/root" run --bundle "$work/bundle-$k" "bench-$k-$r" 2>&1) || {
      echo "vm-rootfs: the $k run failed: $out" >&2; exit 1; }
    while read -r name secs; do
      [ -n "$secs" ] && results[$k.$name]+="$secs "
    done <<< "$out"
    echo "round $r $k: $(echo "$out" | tr '\n' ' ')" >&2
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {if (NR) print (NR % 2 ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2)}'; }
echo
echo "| workload (median s, $rounds rounds) | virtio-fs root | ext4 image on virtio-blk | block / virtio-fs | container isolation |"
echo "|---|---|---|---|---|"
for w in small write read; do
  fs=$(echo "${results[share.$w]:-}" | median); blk=$(echo "${results[block.$w]:-}" | median)
  ct=$(echo "${results[container.$w]:-}" | median)
  ratio=$(awk -v a="$blk" -v b="$fs" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "-"}')
  label=$w
  case $w in
    small) label="$files small files: create, ls -l, rm" ;;
    write) label="write $mib MiB + fsync" ;;
    read) label="read $mib MiB (cold in the guest)" ;;
  esac
  echo "| $label | $fs | $blk | $ratio | $ct |"
done
