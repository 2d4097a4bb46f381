#!/usr/bin/env bash
# VM templates: what restoring a booted guest from a template (a snapshot
# taken once its agent listens) saves against booting it cold, side by
# side in one run. Four sections (-s picks some):
#   boot         `amphi vm check --json` (cold boot) against `amphi vm check
#                --template --json` (restore), rounds interleaved: the
#                report's timings (cold: kernel entry -> agent listening and
#                VMM start -> handshake; restored: restore_to_handshake_ms),
#                the VMM's peak RSS, and each command's wall time.
#                Target: restore <= 10 % of the cold kernel -> agent phase.
#   run          `amphi run` of /bin/true end to end: container isolation,
#                VM booted cold (run.amphi.vm.template=false), VM restored
#                (run.amphi.vm.template=true). Timed here rather than by
#                hyperfine so the three interleave round by round and drift
#                hits all alike. Target: restored <= 5x container.
#   memory       VMS idle VM containers (busybox sleep) restored from one
#                template, then VMS booted cold: started one after the
#                other, left 15 s, the PSS and RSS of their host processes
#                summed (smaps_rollup; PSS splits the template's shared
#                pages between the VMMs that map them) and the drop of
#                MemAvailable; deleted before the other kind starts.
#                Target: restored PSS <= 50 % of cold.
#   concurrency  for each C: C `amphi run -d` of a restored sleep VM at once
#                (background jobs): wall time until all have returned, the
#                median and max of each one's own run -d time; all deleted
#                before the next C.
# Every VM has the same guest size (memory limit LIMIT_MIB plus amphi's
# 128 MiB overhead; vm check gets --memory of that size), so one template
# serves each of the sections' VM containers. Before the sections, one
# cold vm check, one vm check --template and one run of each kind fill the
# caches (initramfs, template) and are reported apart, not in the medians.
# The bundles set run.amphi.vm.boot_timeout=240 (TCG boots are slow), and
# every amphi command gets 300 s before the benchmark gives up on it.
# Tables go to stdout, progress to stderr.
#
# Needs a /dev/kvm that runs stock kernels: on this project's PVM machines
# run it in the full test host (its default 4 GiB is enough: 20 restored
# VMs share their template's pages); about 12 minutes under TCG, and
# -r 2 -n 2 -c 1,2 takes about 3:
#   tests/testhost/test-host.sh 'bench/vm-template.sh [OPTIONS] [AMPHI]'
# Usage: bench/vm-template.sh [-r RUNS] [-n VMS] [-c C,C...] [-m LIMIT_MIB]
#          [-s boot,run,memory,concurrency] [AMPHI]
#   defaults: -r 5 -n 10 -c 1,5,10,20 -m 256, every section; AMPHI: a
#   static amphi with amphi-agent beside it (default: amphi on PATH)
set -uo pipefail
usage() {
  echo "usage: $0 [-r RUNS] [-n VMS] [-c C,C...] [-m LIMIT_MIB] [-s boot,run,memory,concurrency] [AMPHI]" >&2
  exit 2
}
runs=5 vms=10 conc=1,5,10,20 limit=256 sections=boot,run,memory,concurrency settle=15
while getopts ":r:n:c:m:s:" o; do
  case $o in
    r) runs=$OPTARG ;; n) vms=$OPTARG ;; c) conc=$OPTARG ;; m) limit=$OPTARG ;; s) sections=$OPTARG ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))
[ $# -le 1 ] || usage
for v in "$runs" "$vms" "$limit" ${conc//,/ }; do [[ $v =~ ^[1-9][0-9]*$ ]] || usage; done
for s in ${sections//,/ }; do case $s in boot|run|memory|concurrency) ;; *) usage ;; esac; done
want() { [[ ,$sections, == *,$1,* ]]; }
amphi=${1:-$(command -v amphi || true)}
repo=$(cd "$(dirname "$0")/.." && pwd)
. "$repo/bench/lib.sh"
vm_preflight vm-template "$amphi"
command -v jq >/dev/null || { echo "vm-template: jq is missing" >&2; exit 2; }
[ -x "$repo/bundles/hello/rootfs/bin/busybox" ] || { echo "vm-template: no bundles/hello/rootfs: run bundles/build-rootfs.sh" >&2; exit 2; }
# The annotations decide cold or restored; the environment must not.
unset AMPHI_VM_TEMPLATE AMPHI_TIMING

guest=$((limit + 128))
work=$(mktemp -d /tmp/amphi-vmtpl.XXXXXX)
A() { "$amphi" --root "$work/root" "$@"; }
# Every amphi command that starts a VM gets a deadline, so one that hangs
# ends the benchmark with an error instead of stalling it (240 s is the
# boot timeout the bundles and vm check set).
T() { timeout -k 10 300 "$@"; }
why() { [ "$1" = 124 ] && echo "timed out after 300 s" || echo "exit $1"; }
cleanup() { for i in $(A list -q 2>/dev/null); do A delete -f "$i" >/dev/null 2>&1; done; }
# A background run -d still going when the script stops is waited for
# first, or the container it creates would outlive the cleanup.
trap 'wait; cleanup; rm -rf "$work"' EXIT
fail() { echo "vm-template: $*" >&2; exit 1; }

# bundle NAME ISOLATION TEMPLATE ARG...: a bundle of hello's rootfs.
bundle() {
  local b=$work/$1 iso=$2 tpl=$3
  shift 3
  mkdir -p "$b"
  cp -a "$repo/bundles/hello/rootfs" "$b/rootfs"
  jq --arg iso "$iso" --arg tpl "$tpl" --argjson limit $((limit << 20)) --args \
    '.process.args = $ARGS.positional
     | .annotations = ((.annotations // {}) + {"run.amphi.isolation": $iso,
         "run.amphi.vm.template": $tpl, "run.amphi.vm.boot_timeout": "240"})
     | .linux.resources.memory.limit = $limit' \
    "$@" < "$repo/bundles/hello/config.json" > "$b/config.json"
}
bundle true-container container false /bin/true
bundle true-cold vm false /bin/true
bundle true-tpl vm true /bin/true
bundle sleep-cold vm false /bin/sleep 100000
bundle sleep-tpl vm true /bin/sleep 100000

now_ms() { echo $(( ${EPOCHREALTIME/./} / 1000 )); }
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR] = $1} END {if (NR) printf "%.0f\n", (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
range() { tr ' ' '\n' | grep -v '^$' | sort -g | awk 'NR == 1 {lo = $1} {hi = $1} END {printf "%.0f-%.0f\n", lo, hi}'; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f %%", 100 * a / b}'; }
ratio_x() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1fx", a / b}'; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
check() { # [--template]: one vm check, its JSON report in $work/check.json
  T "$amphi" vm check --json --memory "$guest" --timeout 240 "$@" >"$work/check.json" 2>"$work/err" ||
    fail "vm check $* failed ($(why $?)): $(cat "$work/err")"
}
took=0
run_once() { # BUNDLE ID: one foreground run, its wall time (ms) in $took
  local t0
  t0=$(now_ms)
  T "$amphi" --root "$work/root" run --bundle "$work/$1" "$2" </dev/null >/dev/null 2>"$work/err" ||
    fail "run of $1 failed ($(why $?)): $(cat "$work/err")"
  took=$(( $(now_ms) - t0 ))
}

echo "VM template benchmark: $(date -u +%Y-%m-%dT%H:%MZ); $(nproc) CPUs; kernel $(uname -r); $("$amphi" --version)"
echo "guest ${guest} MiB (memory limit $limit MiB), 1 vCPU; sections $sections; runs $runs"
echo
echo "| first run, caches filled (not in the figures below) | ms |"
echo "| --- | --- |"
if want boot; then
  t0=$(now_ms); check; echo "| vm check, cold | $(( $(now_ms) - t0 )) |"
  t0=$(now_ms); check --template; echo "| vm check --template (builds the template if none is cached) | $(( $(now_ms) - t0 )) |"
fi
if want run || want memory || want concurrency; then
  run_once true-tpl warm-tpl; echo "| run /bin/true, VM restored (builds the template if none is cached) | $took |"
fi
if want run; then
  run_once true-cold warm-cold; echo "| run /bin/true, VM cold | $took |"
  run_once true-container warm-ct; echo "| run /bin/true, container | $took |"
fi

if want boot; then
  declare -a c_k2a c_b2h c_rss c_wall t_r2h t_rss t_wall
  for r in $(seq "$runs"); do
    t0=$(now_ms); check; c_wall+=($(( $(now_ms) - t0 )))
    c_k2a+=("$(jq .timings.kernel_entry_to_agent_listening_ms "$work/check.json")")
    c_b2h+=("$(jq .timings.boot_to_handshake_ms "$work/check.json")")
    c_rss+=("$(jq .vmm_peak_rss_kib "$work/check.json")")
    t0=$(now_ms); check --template; t_wall+=($(( $(now_ms) - t0 )))
    [ "$(jq -r '.template // empty' "$work/check.json")" ] || fail "vm check --template did not restore a template"
    t_r2h+=("$(jq .timings.restore_to_handshake_ms "$work/check.json")")
    t_rss+=("$(jq .vmm_peak_rss_kib "$work/check.json")")
    printf 'boot round %d: cold %.0f ms to handshake (%.0f kernel -> agent), restored %.0f ms\n' \
      "$r" "${c_b2h[-1]}" "${c_k2a[-1]}" "${t_r2h[-1]}" >&2
  done
  k2a=$(echo "${c_k2a[*]}" | median) b2h=$(echo "${c_b2h[*]}" | median) r2h=$(echo "${t_r2h[*]}" | median)
  echo
  echo "### Boot: vm check cold against vm check --template ($runs rounds, medians [min-max])"
  echo
  echo "| | cold | restored | restored / cold |"
  echo "| --- | --- | --- | --- |"
  echo "| kernel entry -> agent listening (ms) | $k2a [$(echo "${c_k2a[*]}" | range)] | | |"
  echo "| VMM start -> handshake (ms) | $b2h [$(echo "${c_b2h[*]}" | range)] | $r2h [$(echo "${t_r2h[*]}" | range)] | $(pct "$r2h" "$b2h") |"
  echo "| restore -> handshake / cold kernel -> agent (target <= 10 %) | | | $(pct "$r2h" "$k2a") |"
  cw=$(echo "${c_wall[*]}" | median) tw=$(echo "${t_wall[*]}" | median)
  echo "| vm check command, wall (ms) | $cw [$(echo "${c_wall[*]}" | range)] | $tw [$(echo "${t_wall[*]}" | range)] | $(pct "$tw" "$cw") |"
  cr=$(echo "${c_rss[*]}" | median) tr=$(echo "${t_rss[*]}" | median)
  echo "| VMM peak RSS (MiB) | $(mib "$cr") | $(mib "$tr") | $(pct "$tr" "$cr") |"
fi

if want run; then
  declare -a ct cold tpl
  for r in $(seq "$runs"); do
    run_once true-container "ct-$r"; ct+=("$took")
    run_once true-cold "cold-$r"; cold+=("$took")
    run_once true-tpl "tpl-$r"; tpl+=("$took")
    echo "run round $r: container ${ct[-1]} ms, VM cold ${cold[-1]} ms, VM restored ${tpl[-1]} ms" >&2
  done
  mct=$(echo "${ct[*]}" | median) mcold=$(echo "${cold[*]}" | median) mtpl=$(echo "${tpl[*]}" | median)
  echo
  echo "### Run: amphi run of /bin/true, end to end ($runs rounds, medians [min-max])"
  echo
  echo "| | ms | / container |"
  echo "| --- | --- | --- |"
  echo "| container isolation | $mct [$(echo "${ct[*]}" | range)] | 1.0x |"
  echo "| VM, cold boot | $mcold [$(echo "${cold[*]}" | range)] | $(ratio_x "$mcold" "$mct") |"
  echo "| VM, restored from the template (target <= 5x container) | $mtpl [$(echo "${tpl[*]}" | range)] | $(ratio_x "$mtpl" "$mct") |"
  echo "| VM restored / VM cold | $(pct "$mtpl" "$mcold") | |"
fi

if want memory; then
  echo
  echo "### Memory: $vms idle VMs (busybox sleep), left ${settle} s"
  echo
  echo "| VMs | start all (s) | PSS, sum (MiB) | PSS per VM (MiB) | RSS per VM (MiB) | MemAvailable drop per VM (MiB) |"
  echo "| --- | --- | --- | --- | --- | --- |"
  declare -A pss_of
  for kind in tpl cold; do
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    before=$(avail_kib)
    t0=$(now_ms)
    for i in $(seq "$vms"); do
      T "$amphi" --root "$work/root" run -d --bundle "$work/sleep-$kind" "m-$kind-$i" </dev/null >/dev/null 2>"$work/err" ||
        fail "memory: $kind VM $i failed ($(why $?)): $(cat "$work/err")"
    done
    t1=$(now_ms)
    echo "memory: $vms $kind VMs started in $((t1 - t0)) ms" >&2
    sleep "$settle"
    pids=()
    for i in $(seq "$vms"); do pids+=($(host_procs "$(A state "m-$kind-$i" | jq -r .pid)")); done
    read -r pss rss < <(pss_rss_kib "${pids[@]}")
    after=$(avail_kib)
    pss_of[$kind]=$pss
    label=$([ $kind = tpl ] && echo "restored from the template" || echo "booted cold")
    awk -v l="$label" -v t=$((t1 - t0)) -v n="$vms" -v pss="$pss" -v rss="$rss" -v d=$((before - after)) \
      'BEGIN {printf "| %s | %.1f | %.1f | %.1f | %.1f | %.1f |\n", l, t / 1000, pss / 1024, pss / n / 1024, rss / n / 1024, d / n / 1024}'
    cleanup
  done
  echo "| restored / cold, PSS (target <= 50 %) | | $(pct "${pss_of[tpl]}" "${pss_of[cold]}") | | | |"
fi

if want concurrency; then
  echo
  echo "### Concurrency: C restored VMs (busybox sleep) started at once"
  echo
  echo "| C | all returned (ms) | run -d per VM, median (ms) | max (ms) | failed |"
  echo "| --- | --- | --- | --- | --- |"
  for c in ${conc//,/ }; do
    rm -f "$work"/conc.*
    t0=$(now_ms)
    for i in $(seq "$c"); do
      (
        s=$(now_ms)
        if T "$amphi" --root "$work/root" run -d --bundle "$work/sleep-tpl" "c$c-$i" </dev/null >/dev/null 2>"$work/conc.err.$i"; then
          echo $(( $(now_ms) - s )) > "$work/conc.ms.$i"
        else
          echo "($(why $?))" >> "$work/conc.err.$i"
        fi
      ) &
    done
    wait
    t1=$(now_ms)
    ms=$(cat "$work"/conc.ms.* 2>/dev/null | tr '\n' ' ')
    failed=$((c - $(echo "$ms" | wc -w)))
    [ "$failed" = 0 ] || { echo "concurrency $c: $failed failed, first error:" >&2; grep -h . "$work"/conc.err.* | head -3 >&2; }
    echo "concurrency $c: all returned in $((t1 - t0)) ms" >&2
    if [ -n "$ms" ]; then
      echo "| $c | $((t1 - t0)) | $(echo "$ms" | median) | $(echo "$ms" | range | cut -d- -f2) | $failed |"
    else
      echo "| $c | $((t1 - t0)) | | | $failed |"
    fi
    cleanup
  done
fi
