#!/usr/bin/env bash
# Container lifecycle benchmark: amphi, runc and crun side by side.
#
# For each runtime, N interleaved rounds (A B C A B C ..., so drift hits all
# alike) of:
#   run     `RT run` of /bin/true: create, start, wait, delete in one call
#   create  `RT create` of a `sleep 60` container
#   start   `RT start` of it
#   delete  `RT delete` of it after `kill KILL` (kill and the wait for
#           "stopped" are not timed)
#   rss     peak RSS of `RT run` of /bin/true (GNU time %M: the largest
#           single process the runtime waited for)
# and prints the median [min-max] per cell and the median of per-round
# ratios against amphi. Wall-clock times include ~1 ms of fork/exec by bash,
# the same for every runtime.
#
# crun 1.8 refuses a hybrid cgroup host whose cgroup2 mount holds a
# controller (hugetlb here): the benchmark runs in a private mount namespace
# where /sys/fs/cgroup/unified/cgroup.controllers is masked, for every
# runtime alike. crun is measured twice: with its cgroupfs manager, and with
# --cgroup-manager=disabled (no cgroups at all, the cheapest possible).
#
# Usage: bench/lifecycle.sh [-n ROUNDS] [-o RESULTS.md] [AMPHI]
set -uo pipefail
rounds=20 out=""
while getopts ":n:o:" o; do
  case $o in n) rounds=$OPTARG ;; o) out=$OPTARG ;; *) echo "usage: $0 [-n N] [-o FILE] [AMPHI]" >&2; exit 2 ;; esac
done
shift $((OPTIND - 1))
amphi=${1:-$(command -v amphi)}
here=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "bench: run as root" >&2; exit 2; }
[ -x "$amphi" ] || { echo "bench: no amphi binary (scripts/setup.sh)" >&2; exit 2; }

if [ -z "${AMPHI_BENCH_MASKED:-}" ] && [ -e /sys/fs/cgroup/unified/cgroup.controllers ]; then
  exec unshare -m --propagation private env AMPHI_BENCH_MASKED=1 bash -c \
    'mount --bind /dev/null /sys/fs/cgroup/unified/cgroup.controllers && exec bash "$0" "$@"' \
    "$0" -n "$rounds" ${out:+-o "$out"} "$amphi"
fi

work=$(mktemp -d /tmp/amphi-bench.XXXXXX)
trap 'cleanup' EXIT
names=(amphi runc "crun" "crun (no cgroups)")
cmds=("$amphi --root $work/r0" "runc --root $work/r1" "crun --root $work/r2" "crun --root $work/r3 --cgroup-manager=disabled")
cleanup() {
  for i in "${!cmds[@]}"; do
    for id in $(ls "$work/r$i" 2>/dev/null); do ${cmds[$i]} delete -f "$id" >/dev/null 2>&1; done
  done
  rm -rf "$work"
}

# Two bundles sharing the example rootfs (by absolute path: runc refuses a
# symlinked rootfs).
"$here/bundles/build-rootfs.sh" >/dev/null
rootfs=$here/bundles/hello/rootfs
mkdir -p "$work/true" "$work/sleep"
jq --arg r "$rootfs" '.process.args = ["/bin/true"] | .root.path = $r' "$here/bundles/hello/config.json" > "$work/true/config.json"
jq --arg r "$rootfs" '.process.args = ["/bin/sleep", "60"] | .root.path = $r' "$here/bundles/hello/config.json" > "$work/sleep/config.json"

declare -A T=()
now_us() { echo $(( ${EPOCHREALTIME/./} )); }
timed() { # key cmd...; appends ms to T[key] (NA on failure)
  local key=$1; shift
  local t0; t0=$(now_us)
  if "$@" >/dev/null 2>>"$work/errors"; then
    T[$key]+="$(awk -v d=$(( $(now_us) - t0 )) 'BEGIN { printf "%.3f", d / 1000 }') "
  else
    T[$key]+="NA "
    echo "[$key] failed: $*" >> "$work/errors"
  fi
}

for ((r = -2; r < rounds; r++)); do
  for i in "${!cmds[@]}"; do
    read -r -a c <<< "${cmds[$i]}"
    id=b$i-$r
    k=$i
    [ $r -lt 0 ] && k=warm
    timed "$k,run" "${c[@]}" run --bundle "$work/true" "$id-run"
    "${c[@]}" delete -f "$id-run" >/dev/null 2>&1
    /usr/bin/time -f '%M' -o "$work/rss" "${c[@]}" run --bundle "$work/true" "$id-rss" >/dev/null 2>&1
    [ $r -ge 0 ] && T[$k,rss]+="$(tail -n1 "$work/rss") "
    "${c[@]}" delete -f "$id-rss" >/dev/null 2>&1
    timed "$k,create" "${c[@]}" create --bundle "$work/sleep" "$id"
    timed "$k,start" "${c[@]}" start "$id"
    "${c[@]}" kill "$id" KILL >/dev/null 2>&1
    for _ in $(seq 200); do
      "${c[@]}" state "$id" 2>/dev/null | grep -q '"stopped"' && break
      sleep 0.005
    done
    timed "$k,delete" "${c[@]}" delete "$id"
    "${c[@]}" delete -f "$id" >/dev/null 2>&1
  done
done

median() { tr ' ' '\n' | grep -E '^[0-9.]+$' | sort -g | awk '{ v[NR] = $1 } END {
  if (NR == 0) { print "-"; exit }
  m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
  printf "%.2f [%.2f-%.2f]", m, v[1], v[NR] }'; }
ratio() { # a-samples b-samples: median of a/b per round
  paste -d' ' <(tr ' ' '\n' <<< "$1" | sed '/^$/d') <(tr ' ' '\n' <<< "$2" | sed '/^$/d') |
    awk '$1 != "NA" && $2 != "NA" && $2 > 0 { print $1 / $2 }' | sort -g |
    awk '{ v[NR] = $1 } END { if (NR == 0) { print "-"; exit }
      m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.2fx", m }'
}

{
  echo "lifecycle benchmark: $rounds rounds (+2 warm-up), interleaved; $(date -u +%Y-%m-%dT%H:%MZ); $(nproc) CPUs; kernel $(uname -r)"
  echo "amphi: $("$amphi" --version) ($amphi); $(runc --version | head -n1); $(crun --version | head -n1)"
  echo
  echo "| runtime | run /bin/true (ms) | create (ms) | start (ms) | delete (ms) | peak RSS of run (MiB) |"
  echo "|---|---|---|---|---|---|"
  for i in "${!cmds[@]}"; do
    rss=$(tr ' ' '\n' <<< "${T[$i,rss]:-}" | grep -E '^[0-9]+$' | awk '{ printf "%.2f\n", $1 / 1024 }' | tr '\n' ' ' | median)
    echo "| ${names[$i]} | $(median <<< "${T[$i,run]:-}") | $(median <<< "${T[$i,create]:-}") | $(median <<< "${T[$i,start]:-}") | $(median <<< "${T[$i,delete]:-}") | $rss |"
  done
  echo
  echo "Median of per-round ratios, runtime / amphi (above 1.00x: amphi is faster):"
  echo
  echo "| runtime | run | create | start | delete |"
  echo "|---|---|---|---|---|"
  for i in 1 2 3; do
    echo "| ${names[$i]} | $(ratio "${T[$i,run]:-}" "${T[0,run]:-}") | $(ratio "${T[$i,create]:-}" "${T[0,create]:-}") | $(ratio "${T[$i,start]:-}" "${T[0,start]:-}") | $(ratio "${T[$i,delete]:-}" "${T[0,delete]:-}") |"
  done
  fails=$(grep -c failed "$work/errors" 2>/dev/null || true)
  [ "${fails:-0}" -gt 0 ] && { echo; echo "$fails timed commands failed:"; grep failed "$work/errors" | head -n 5; }
} | tee ${out:+"$out"}
