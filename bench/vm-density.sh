#!/usr/bin/env bash
# Density: N idle containers (busybox sleep) at once, and what the host
# pays for each, in three setups side by side:
#   vm         VM isolation, the balloon with free page reporting (default)
#   vm-nofpr   VM isolation, free page reporting off
#              (run.amphi.vm.free_page_reporting=false)
#   container  container isolation
# For each N: the containers are started one after the other, left 15 s
# (the guest hands freed blocks back about 2 s after freeing them), then
# the host memory of each instance is summed over its host processes:
# PSS (shared pages split between the processes that map them) and RSS,
# from /proc/<pid>/smaps_rollup, plus the drop of MemAvailable. Then all
# are deleted.
#
# Needs a /dev/kvm that runs stock kernels: run it in the full test host:
#   tests/testhost/test-host.sh 'bench/vm-density.sh 1 5 10'
# Usage: bench/vm-density.sh [-m LIMIT_MIB] [AMPHI] N...   (default N: 1 5 10)
set -uo pipefail
limit=64
while getopts ":m:" o; do
  case $o in m) limit=$OPTARG ;; *) echo "usage: $0 [-m LIMIT_MIB] [AMPHI] N..." >&2; exit 2 ;; esac
done
shift $((OPTIND - 1))
amphi=$(command -v amphi || true)
if [ $# -gt 0 ] && [ -x "$1" ]; then amphi=$1; shift; fi
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(1 5 10)
repo=$(cd "$(dirname "$0")/.." && pwd)
. "$repo/bench/lib.sh"
vm_preflight vm-density "$amphi"

work=$(mktemp -d /tmp/amphi-density.XXXXXX)
A() { "$amphi" --root "$work/root" "$@"; }
cleanup() { for i in $(A list -q 2>/dev/null); do A delete -f "$i" >/dev/null 2>&1; done; }
trap 'cleanup; rm -rf "$work"' EXIT

setups=(vm vm-nofpr container)
for s in "${setups[@]}"; do
  b=$work/$s
  mkdir -p "$b"
  cp -a "$repo/bundles/hello/rootfs" "$b/rootfs"
  iso=vm fpr=true
  case $s in container) iso=container ;; vm-nofpr) fpr=false ;; esac
  jq --arg iso "$iso" --arg fpr "$fpr" --argjson limit $((limit << 20)) \
    '.process.args = ["/bin/sleep", "100000"]
     | .annotations = ((.annotations // {}) + {"run.amphi.isolation": $iso,
         "run.amphi.vm.free_page_reporting": $fpr, "run.amphi.vm.boot_timeout": "240"})
     | .linux.resources.memory.limit = $limit' \
    "$repo/bundles/hello/config.json" > "$b/config.json"
done

# The host processes of a container (bench/lib.sh).
procs_of() { host_procs "$(A state "$1" | jq -r .pid)"; }

echo "| setup | N | start all (s) | PSS per instance (MiB) | RSS per instance (MiB) | MemAvailable drop per instance (MiB) |"
echo "|---|---|---|---|---|---|"
for n in "${counts[@]}"; do
  for s in "${setups[@]}"; do
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    before=$(avail_kib)
    t0=$(date +%s%N)
    for i in $(seq "$n"); do
      A run -d --bundle "$work/$s" "d-$s-$i" </dev/null >/dev/null 2>"$work/err" || {
        echo "vm-density: $s instance $i failed: $(cat "$work/err")" >&2; cleanup; continue 2; }
    done
    t1=$(date +%s%N)
    sleep 15
    pids=()
    for i in $(seq "$n"); do pids+=($(procs_of "d-$s-$i")); done
    read -r pss rss < <(pss_rss_kib "${pids[@]}")
    after=$(avail_kib)
    awk -v s="$s" -v n="$n" -v t=$(((t1 - t0) / 1000000)) -v pss="$pss" -v rss="$rss" -v d=$((before - after)) \
      'BEGIN {printf "| %s | %d | %.1f | %.1f | %.1f | %.1f |\n", s, n, t / 1000, pss / n / 1024, rss / n / 1024, d / n / 1024}'
    cleanup
  done
done
