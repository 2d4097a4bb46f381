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
# serves every section. First, one cold vm check, one vm check --template
# and one run of each kind fill the caches (initramfs, template): they are
# reported apart and must succeed. After them, a command that fails or
# outlives its deadline (-t, default 180 s; the bundles' boot timeout is
# 240 s, as TCG boots are slow) is counted in its table, its container
# deleted, and the benchmark goes on: a hang is a finding, not the end of
# the run (the exit status is then 1). Tables go to stdout, progress and
# errors to stderr.
#
# Needs a /dev/kvm that runs stock kernels: on this project's PVM machines
# run it in the full test host (its default 4 GiB is enough: 20 restored
# VMs share their template's pages); about 10 minutes under TCG, and
# -r 2 -n 2 -c 1,2 about 4. A test host that runs microVMs stalls now and
# then (docs/testing.md): -s runs the sections one at a time, so a stall
# costs less.
#   tests/testhost/test-host.sh 'bench/vm-template.sh [OPTIONS] [AMPHI]'
# Usage: bench/vm-template.sh [-r RUNS] [-n VMS] [-c C,C...] [-m LIMIT_MIB]
#          [-t SECS] [-s boot,run,memory,concurrency] [AMPHI]
#   defaults: -r 5 -n 10 -c 1,5,10,20 -m 256 -t 180, every section; AMPHI:
#   a static amphi with amphi-agent beside it (default: amphi on PATH)
set -uo pipefail
usage() {
  echo "usage: $0 [-r RUNS] [-n VMS] [-c C,C...] [-m LIMIT_MIB] [-t SECS] [-s boot,run,memory,concurrency] [AMPHI]" >&2
  exit 2
}
runs=5 vms=10 conc=1,5,10,20 limit=256 deadline=180 sections=boot,run,memory,concurrency settle=15
while getopts ":r:n:c:m:t:s:" o; do
  case $o in
    r) runs=$OPTARG ;; n) vms=$OPTARG ;; c) conc=$OPTARG ;; m) limit=$OPTARG ;;
    t) deadline=$OPTARG ;; s) sections=$OPTARG ;; *) usage ;;
  esac
done
shift $((OPTIND - 1))
[ $# -le 1 ] || usage
for v in "$runs" "$vms" "$limit" "$deadline" ${conc//,/ }; do [[ $v =~ ^[1-9][0-9]*$ ]] || usage; done
for s in ${sections//,/ }; do case $s in boot|run|memory|concurrency) ;; *) usage ;; esac; done
want() { [[ ,$sections, == *,$1,* ]]; }
amphi=${1:-$(command -v amphi || true)}
repo=$(cd "$(dirname "$0")/.." && pwd)
. "$repo/bench/lib.sh"
vm_preflight vm-template "$amphi"
command -v jq >/dev/null || { echo "vm-template: jq is missing" >&2; exit 2; }
[ -x "$repo/bundles/hello/rootfs/bin/busybox" ] ||
  { echo "vm-template: no bundles/hello/rootfs: run bundles/build-rootfs.sh" >&2; exit 2; }
# The annotations decide cold or restored; the environment must not.
unset AMPHI_VM_TEMPLATE AMPHI_TIMING

guest=$((limit + 128))
work=$(mktemp -d /tmp/amphi-vmtpl.XXXXXX)
A() { "$amphi" --root "$work/root" "$@"; }
# T CMD...: CMD with the deadline. amphi run may not end on SIGTERM while
# it waits for its VM, hence the SIGKILL 10 s later.
T() { timeout -k 10 "$deadline" "$@"; }
why() {
  case $1 in
    124) echo "no end within $deadline s" ;;
    137) echo "SIGKILL: no end within $deadline s, or out of memory" ;;
    *) echo "exit $1" ;;
  esac
}
cleanup() { for i in $(A list -q 2>/dev/null); do A delete -f "$i" >/dev/null 2>&1; done; }
# A background run -d still going when the script stops is waited for
# first, or the container it creates would outlive the cleanup.
trap 'wait; cleanup; rm -rf "$work"' EXIT
failures=0
failed() { echo "vm-template: $*" >&2; failures=$((failures + 1)); }
# errs FILE: ": " and FILE's last lines, when it has any.
errs() { [ -s "$1" ] && printf ': %s' "$(tail -n 5 "$1")"; }

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
# Statistics over space-separated samples; empty when there are none.
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR] = $1} END {if (NR) printf "%.0f\n", (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
range() { tr ' ' '\n' | grep -v '^$' | sort -g | awk 'NR == 1 {lo = $1} {hi = $1} END {if (NR) printf "[%.0f-%.0f]\n", lo, hi}'; }
maxof() { tr ' ' '\n' | grep -v '^$' | sort -g | tail -n 1; }
# A / B as a percentage or a factor; "-" when either is missing.
pct() { awk -v a="$1" -v b="$2" 'BEGIN {if (a == "" || b + 0 == 0) print "-"; else printf "%.1f %%\n", 100 * a / b}'; }
ratio_x() { awk -v a="$1" -v b="$2" 'BEGIN {if (a == "" || b + 0 == 0) print "-"; else printf "%.1fx\n", a / b}'; }
mib() { awk -v k="$1" 'BEGIN {if (k == "") print "-"; else printf "%.1f\n", k / 1024}'; }

took=0
# check [--template]: one vm check; its report in $work/check.json, its
# wall time (ms) in $took; 1 when it failed (said on stderr).
check() {
  local t0 rc
  t0=$(now_ms)
  T "$amphi" vm check --json --memory "$guest" --timeout 240 "$@" >"$work/check.json" 2>"$work/err"
  rc=$?
  took=$(( $(now_ms) - t0 ))
  [ $rc = 0 ] || { failed "vm check${*:+ $*} failed ($(why $rc))$(errs "$work/err")"; return 1; }
  if [ "${1:-}" = --template ] && [ -z "$(jq -r '.template // empty' "$work/check.json")" ]; then
    failed "vm check --template did not restore a template"; return 1
  fi
}
# run_once BUNDLE ID: one foreground run; its wall time (ms) in $took; 1
# when it failed (said on stderr; the container is deleted).
run_once() {
  local t0 rc
  t0=$(now_ms)
  T "$amphi" --root "$work/root" run --bundle "$work/$1" "$2" </dev/null >/dev/null 2>"$work/err"
  rc=$?
  took=$(( $(now_ms) - t0 ))
  [ $rc = 0 ] && return 0
  failed "run of $1 ($2) failed ($(why $rc))$(errs "$work/err")"
  A delete -f "$2" >/dev/null 2>&1
  return 1
}

echo "VM template benchmark: $(date -u +%Y-%m-%dT%H:%MZ); $(nproc) CPUs; kernel $(uname -r); $("$amphi" --version)"
echo "guest $guest MiB (memory limit $limit MiB), 1 vCPU; sections $sections; runs $runs; deadline $deadline s"
echo
echo "| first run, caches filled (not in the figures below) | ms |"
echo "| --- | --- |"
if want boot; then
  check || exit 1
  echo "| vm check, cold | $took |"
  check --template || exit 1
  echo "| vm check --template (builds the template if none is cached) | $took |"
fi
if want run || want memory || want concurrency; then
  run_once true-tpl warm-tpl || exit 1
  echo "| run /bin/true, VM restored (builds the template if none is cached) | $took |"
fi
if want run; then
  run_once true-cold warm-cold || exit 1
  echo "| run /bin/true, VM cold | $took |"
  run_once true-container warm-ct || exit 1
  echo "| run /bin/true, container | $took |"
fi

if want boot; then
  c_k2a=() c_b2h=() c_rss=() c_wall=() t_r2h=() t_rss=() t_wall=() c_bad=0 t_bad=0
  for r in $(seq "$runs"); do
    line="boot round $r:"
    if check; then
      c_wall+=("$took")
      c_k2a+=("$(jq .timings.kernel_entry_to_agent_listening_ms "$work/check.json")")
      c_b2h+=("$(jq .timings.boot_to_handshake_ms "$work/check.json")")
      c_rss+=("$(jq .vmm_peak_rss_kib "$work/check.json")")
      line+=" cold $(median <<< "${c_b2h[-1]}") ms to handshake ($(median <<< "${c_k2a[-1]}") kernel -> agent),"
    else
      c_bad=$((c_bad + 1)) line+=" cold failed,"
    fi
    if check --template; then
      t_wall+=("$took")
      t_r2h+=("$(jq .timings.restore_to_handshake_ms "$work/check.json")")
      t_rss+=("$(jq .vmm_peak_rss_kib "$work/check.json")")
      line+=" restored $(median <<< "${t_r2h[-1]}") ms"
    else
      t_bad=$((t_bad + 1)) line+=" restored failed"
    fi
    echo "$line" >&2
  done
  k2a=$(echo "${c_k2a[*]}" | median) b2h=$(echo "${c_b2h[*]}" | median) r2h=$(echo "${t_r2h[*]}" | median)
  cw=$(echo "${c_wall[*]}" | median) tw=$(echo "${t_wall[*]}" | median)
  cr=$(echo "${c_rss[*]}" | median) tr=$(echo "${t_rss[*]}" | median)
  echo
  echo "### Boot: vm check cold against vm check --template ($runs rounds, medians [min-max])"
  echo
  echo "| | cold | restored | restored / cold |"
  echo "| --- | --- | --- | --- |"
  echo "| kernel entry -> agent listening (ms) | $k2a $(echo "${c_k2a[*]}" | range) | | |"
  echo "| VMM start -> handshake (ms) | $b2h $(echo "${c_b2h[*]}" | range) | $r2h $(echo "${t_r2h[*]}" | range) | $(pct "$r2h" "$b2h") |"
  echo "| restore -> handshake / cold kernel -> agent (target <= 10 %) | | | $(pct "$r2h" "$k2a") |"
  echo "| vm check command, wall (ms) | $cw $(echo "${c_wall[*]}" | range) | $tw $(echo "${t_wall[*]}" | range) | $(pct "$tw" "$cw") |"
  echo "| VMM peak RSS (MiB) | $(mib "$cr") | $(mib "$tr") | $(pct "$tr" "$cr") |"
  echo "| failed or timed out | $c_bad | $t_bad | |"
fi

if want run; then
  declare -A ms bad
  kinds="container cold tpl"
  for k in $kinds; do ms[$k]="" bad[$k]=0; done
  for r in $(seq "$runs"); do
    line="run round $r:"
    for k in $kinds; do
      if run_once "true-$k" "$k-$r"; then ms[$k]+=" $took"; line+=" $k $took ms,"; else bad[$k]=$((bad[$k] + 1)); line+=" $k failed,"; fi
    done
    echo "${line%,}" >&2
  done
  mct=$(echo "${ms[container]}" | median)
  echo
  echo "### Run: amphi run of /bin/true, end to end ($runs rounds, medians [min-max])"
  echo
  echo "| | ms | / container | failed or timed out |"
  echo "| --- | --- | --- | --- |"
  for k in $kinds; do
    m=$(echo "${ms[$k]}" | median)
    label=$(case $k in
      container) echo "container isolation" ;; cold) echo "VM, cold boot" ;;
      tpl) echo "VM, restored from the template (target <= 5x container)" ;; esac)
    echo "| $label | $m $(echo "${ms[$k]}" | range) | $(ratio_x "$m" "$mct") | ${bad[$k]} |"
  done
  echo "| VM restored / VM cold | $(pct "$(echo "${ms[tpl]}" | median)" "$(echo "${ms[cold]}" | median)") | | |"
fi

if want memory; then
  echo
  echo "### Memory: $vms idle VMs (busybox sleep), left $settle s, per VM running"
  echo
  echo "| VMs | running | start all (s) | PSS, sum (MiB) | PSS per VM (MiB) | RSS per VM (MiB) | MemAvailable drop per VM (MiB) |"
  echo "| --- | --- | --- | --- | --- | --- | --- |"
  declare -A per_vm
  for kind in tpl cold; do
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    before=$(avail_kib)
    up=()
    t0=$(now_ms)
    for i in $(seq "$vms"); do
      T "$amphi" --root "$work/root" run -d --bundle "$work/sleep-$kind" "m-$kind-$i" </dev/null >/dev/null 2>"$work/err"
      rc=$?
      if [ $rc = 0 ]; then up+=("m-$kind-$i"); else failed "memory: $kind VM $i failed ($(why $rc))$(errs "$work/err")"; fi
    done
    t1=$(now_ms)
    echo "memory: ${#up[@]} of $vms $kind VMs started in $((t1 - t0)) ms" >&2
    label=$([ $kind = tpl ] && echo "restored from the template" || echo "booted cold")
    if [ ${#up[@]} = 0 ]; then echo "| $label | 0 | | | | | |"; cleanup; continue; fi
    sleep "$settle"
    pids=()
    for id in "${up[@]}"; do pids+=($(host_procs "$(A state "$id" | jq -r .pid)")); done
    read -r pss rss < <(pss_rss_kib "${pids[@]}")
    after=$(avail_kib)
    n=${#up[@]}
    per_vm[$kind]=$((pss / n))
    awk -v l="$label" -v t=$((t1 - t0)) -v n="$n" -v pss="$pss" -v rss="$rss" -v d=$((before - after)) \
      'BEGIN {printf "| %s | %d | %.1f | %.1f | %.1f | %.1f | %.1f |\n", l, n, t / 1000, pss / 1024, pss / n / 1024, rss / n / 1024, d / n / 1024}'
    cleanup
  done
  echo "| restored / cold, PSS per VM (target <= 50 %) | | | | $(pct "${per_vm[tpl]:-}" "${per_vm[cold]:-}") | | |"
fi

if want concurrency; then
  echo
  echo "### Concurrency: C restored VMs (busybox sleep) started at once"
  echo
  echo "| C | all returned (ms) | run -d per VM, median (ms) | max (ms) | failed or timed out |"
  echo "| --- | --- | --- | --- | --- |"
  for c in ${conc//,/ }; do
    rm -f "$work"/conc.*
    t0=$(now_ms)
    for i in $(seq "$c"); do
      (
        s=$(now_ms)
        T "$amphi" --root "$work/root" run -d --bundle "$work/sleep-tpl" "c$c-$i" </dev/null >/dev/null 2>"$work/conc.err.$i"
        rc=$?
        if [ $rc = 0 ]; then echo $(( $(now_ms) - s )) > "$work/conc.ms.$i"; else echo "$(why $rc)" >> "$work/conc.err.$i"; fi
      ) &
    done
    wait
    t1=$(now_ms)
    samples=$(cat "$work"/conc.ms.* 2>/dev/null | tr '\n' ' ')
    nbad=$((c - $(echo "$samples" | wc -w)))
    if [ "$nbad" != 0 ]; then
      failures=$((failures + nbad))
      for i in $(seq "$c"); do
        [ -e "$work/conc.ms.$i" ] || echo "vm-template: concurrency $c: VM $i failed: $(tail -n 5 "$work/conc.err.$i")" >&2
      done
    fi
    echo "concurrency $c: all returned in $((t1 - t0)) ms, $nbad failed" >&2
    echo "| $c | $((t1 - t0)) | $(echo "$samples" | median) | $(echo "$samples" | maxof) | $nbad |"
    cleanup
  done
fi
# Figures were still printed, but a failure is worth an exit status.
if [ "$failures" != 0 ]; then
  echo
  echo "$failures command(s) failed or timed out after the first runs (errors on stderr)."
  exit 1
fi
