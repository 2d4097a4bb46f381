#!/usr/bin/env bash
# exec latency: `RT exec ID /bin/true` into a running container, for amphi,
# runc and crun side by side in one run (hyperfine).
#
# Each runtime gets a running `sleep` container made from the example
# bundle (same rootfs, same config) with its own --root; then hyperfine
# times `exec` of /bin/true into it, the runtimes' commands interleaved by
# hyperfine's own order (one after the other, each with warm-up runs). The
# numbers include fork+exec of the runtime binary by hyperfine (-N, no
# shell), the join of the container's namespaces and cgroups, the exec of
# /bin/true and the wait for it.
#
# crun 1.8 refuses a hybrid cgroup host whose cgroup2 mount holds a
# controller, so, as bench/lifecycle.sh does, everything runs in a private
# mount namespace where /sys/fs/cgroup/unified/cgroup.controllers is
# masked, for every runtime alike; crun runs with --cgroup-manager=disabled
# (its exec then joins no cgroup at all, strictly less work than the
# others).
#
# amphi is run from a read-only bind mount of its binary, as scripts/
# install.sh installs it (otherwise each exec copies the binary into a
# sealed memfd first, CVE-2019-5736; see docs/performance.md).
#
# Usage: bench/exec.sh [-n RUNS] [-o RESULTS.md] [AMPHI]
set -uo pipefail
runs=200 out=""
while getopts ":n:o:" o; do
  case $o in n) runs=$OPTARG ;; o) out=$OPTARG ;; *) echo "usage: $0 [-n RUNS] [-o FILE] [AMPHI]" >&2; exit 2 ;; esac
done
shift $((OPTIND - 1))
amphi=$(readlink -f "${1:-$(command -v amphi)}")
here=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "bench: run as root" >&2; exit 2; }
[ -x "$amphi" ] || { echo "bench: no amphi binary (scripts/setup.sh)" >&2; exit 2; }
for t in hyperfine runc crun jq; do
  command -v $t >/dev/null || { echo "bench: $t is missing (scripts/setup.sh installs it)" >&2; exit 2; }
done

if [ -z "${AMPHI_BENCH_MASKED:-}" ]; then
  exec unshare -m --propagation private env AMPHI_BENCH_MASKED=1 bash -c '
    if [ -e /sys/fs/cgroup/unified/cgroup.controllers ]; then
      mount --bind /dev/null /sys/fs/cgroup/unified/cgroup.controllers || exit 1
    fi
    if ! findmnt -n -o OPTIONS -T "$2" | grep -qw ro; then
      mount --bind "$2" "$2" && mount -o remount,bind,ro "$2" || exit 1
    fi
    exec bash "$0" -n "$1" ${3:+-o "$3"} "$2"' "$0" "$runs" "$amphi" "$out"
fi

work=$(mktemp -d /tmp/amphi-bench-exec.XXXXXX)
names=(amphi runc crun)
cmds=("$amphi --root $work/r0" "runc --root $work/r1" "crun --root $work/r2 --cgroup-manager=disabled")
cleanup() {
  for i in "${!cmds[@]}"; do
    for id in $(ls "$work/r$i" 2>/dev/null); do ${cmds[$i]} delete -f "$id" >/dev/null 2>&1; done
  done
  rm -rf "$work"
}
trap cleanup EXIT

"$here/bundles/build-rootfs.sh" >/dev/null
rootfs=$here/bundles/hello/rootfs
mkdir -p "$work/sleep"
jq --arg r "$rootfs" '.process.args = ["/bin/sleep", "100000"] | .root.path = $r' \
  "$here/bundles/hello/config.json" > "$work/sleep/config.json"

targets=()
for i in "${!cmds[@]}"; do
  read -r -a c <<< "${cmds[$i]}"
  id=x$i-$$
  "${c[@]}" run -d --bundle "$work/sleep" "$id" >/dev/null 2>"$work/err" </dev/null ||
    { echo "bench: ${names[$i]} cannot run the container: $(cat "$work/err")" >&2; exit 1; }
  "${c[@]}" exec "$id" /bin/true </dev/null || { echo "bench: ${names[$i]} exec fails" >&2; exit 1; }
  targets+=("${cmds[$i]} exec $id /bin/true")
done

hyperfine -N --warmup 20 --runs "$runs" --export-json "$work/h.json" \
  -n amphi "${targets[0]}" -n runc "${targets[1]}" -n crun "${targets[2]}" >"$work/hyperfine.txt" 2>&1 ||
  { cat "$work/hyperfine.txt" >&2; exit 1; }

ms() { awk '{ printf "%.2f", $1 * 1000 }'; }
median() { jq -r --arg n "$1" '.results[] | select(.command == $n) | .median' "$work/h.json"; }
field() { jq -r --arg n "$1" --arg f "$2" '.results[] | select(.command == $n) | .[$f]' "$work/h.json"; }
{
  echo "exec benchmark: $runs runs each (+20 warm-up), hyperfine -N; $(date -u +%Y-%m-%dT%H:%MZ); $(nproc) CPUs; kernel $(uname -r)"
  echo "amphi: $("$amphi" --version) ($amphi, read-only mount); $(runc --version | head -n1); $(crun --version | head -n1) (--cgroup-manager=disabled)"
  echo
  echo "| runtime | exec /bin/true, median (ms) | mean ± σ (ms) | min-max (ms) | median / amphi's |"
  echo "|---|---|---|---|---|"
  base=$(median amphi)
  for n in "${names[@]}"; do
    m=$(median "$n")
    printf '| %s | %s | %s ± %s | %s-%s | %s |\n' "$n" "$(ms <<< "$m")" "$(field "$n" mean | ms)" \
      "$(field "$n" stddev | ms)" "$(field "$n" min | ms)" "$(field "$n" max | ms)" \
      "$(awk -v a="$m" -v b="$base" 'BEGIN { printf "%.2fx", a / b }')"
  done
} | tee ${out:+"$out"}
