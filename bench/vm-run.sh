#!/usr/bin/env bash
# VM isolation run benchmark: `amphi run --isolation vm` of /bin/true, end
# to end and phase by phase, next to `amphi vm check` (boot to handshake)
# and `amphi run` in container isolation, in the same place, interleaved
# round by round so drift hits all three alike.
#
# Phases come from amphi's timing marks (AMPHI_TIMING, CLOCK_MONOTONIC,
# written by the command and by the VMM process), plus what the agent
# reports of its own work:
#   VMM start -> kernel entry -> agent listening -> filesystem mounted ->
#   spec applied (container created in the guest) -> workload started ->
#   exit seen (by the VMM, through the agent) -> VM gone (the VMM reaped).
# It also reports the VMM's own memory (peak RSS minus the guest memory
# the guest touched).
#
# Needs a /dev/kvm that runs stock kernels: on this project's PVM machines
# run it inside the nested test host:
#   tests/testhost/test-host.sh 'bench/vm-run.sh -n 10'
# Usage: bench/vm-run.sh [-n ROUNDS] [AMPHI]   (AMPHI: a static amphi with
# amphi-agent beside it; default: amphi on PATH)
set -uo pipefail
rounds=10
while getopts ":n:" o; do
  case $o in n) rounds=$OPTARG ;; *) echo "usage: $0 [-n N] [AMPHI]" >&2; exit 2 ;; esac
done
shift $((OPTIND - 1))
amphi=${1:-$(command -v amphi)}
repo=$(cd "$(dirname "$0")/.." && pwd)
. "$repo/bench/lib.sh"
vm_preflight vm-run "$amphi"

work=$(mktemp -d /tmp/amphi-vmrun.XXXXXX)
trap 'for i in $("$amphi" --root "$work/root" list -q 2>/dev/null); do "$amphi" --root "$work/root" delete -f "$i"; done; rm -rf "$work"' EXIT
for iso in vm container; do
  b=$work/bundle-$iso
  mkdir -p "$b"
  cp -a "$repo/bundles/hello/rootfs" "$b/rootfs"
  jq --arg iso "$iso" '.annotations["run.amphi.isolation"] = $iso | .process.args = ["/bin/true"]' \
    "$repo/bundles/hello/config.json" > "$b/config.json"
done

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
declare -a check_ms vm_ms ct_ms own_kib
declare -A phase
names="kernel agent fs spec started exit gone"
for r in $(seq "$rounds"); do
  # vm check: boot to handshake, as it reports it.
  j=$("$amphi" vm check --json 2>/dev/null) || { echo "vm-run: vm check failed" >&2; exit 1; }
  check_ms+=("$(echo "$j" | jq '.timings.boot_to_handshake_ms | floor')")
  # run in VM isolation, with timing marks.
  rm -f "$work/marks"
  t0=$(now_ms)
  AMPHI_TIMING=$work/marks "$amphi" --root "$work/root" run --bundle "$work/bundle-vm" "vmrun-$r" </dev/null >/dev/null 2>"$work/err" \
    || { echo "vm-run: run --isolation vm failed: $(cat "$work/err")" >&2; exit 1; }
  vm_ms+=($(( $(now_ms) - t0 )))
  m() { awk -v k="$1" '$1 == k {print int($2 / 1000000); exit}' "$work/marks"; }
  v() { awk -F'[= ]' -v k="$1" '$1 == k {print $2; exit}' "$work/marks"; }
  forked=$(m vmm:forked)
  kernel=$(m vmm:kernel_entry); agent=$(m vmm:agent_listening)
  share=$(v guest:share_ms); runtime=$(v guest:runtime_ms)
  created=$(m create:container_created); started=$(m start:done)
  seen=$(m vmm:exit_seen); gone=$(m run:exited)
  phase[kernel]+=" $((kernel - forked))"
  phase[agent]+=" $((agent - kernel))"
  phase[fs]+=" ${share:-0}"
  phase[spec]+=" $((created - agent - ${share:-0}))"
  phase[started]+=" $((started - created))"
  phase[exit]+=" $((seen - started))"
  phase[gone]+=" $((gone - seen))"
  own_kib+=($(( $(v vmm:peak_rss_kib) - $(v vmm:guest_rss_kib) )))
  # run in container isolation.
  t0=$(now_ms)
  "$amphi" --root "$work/root" run --bundle "$work/bundle-container" "ctrun-$r" </dev/null >/dev/null 2>&1
  ct_ms+=($(( $(now_ms) - t0 )))
  echo "round $r: vm check ${check_ms[-1]} ms, run vm ${vm_ms[-1]} ms, run container ${ct_ms[-1]} ms" >&2
done

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : int((a[NR / 2] + a[NR / 2 + 1]) / 2)}'; }
range() { tr ' ' '\n' | grep -v '^$' | sort -n | awk 'NR == 1 {lo = $1} {hi = $1} END {print lo "-" hi}'; }
mc=$(echo "${check_ms[*]}" | median); mv=$(echo "${vm_ms[*]}" | median); mt=$(echo "${ct_ms[*]}" | median)
echo
echo "amphi run of /bin/true, $rounds rounds, medians [min-max]"
echo
echo "| | ms |"
echo "| --- | --- |"
echo "| amphi vm check, boot to handshake | $mc [$(echo "${check_ms[*]}" | range)] |"
echo "| amphi run --isolation vm, end to end | $mv [$(echo "${vm_ms[*]}" | range)] |"
echo "| amphi run, container isolation | $mt [$(echo "${ct_ms[*]}" | range)] |"
echo "| ratio run vm / vm check boot | $(awk -v a="$mv" -v b="$mc" 'BEGIN {printf "%.2f", a / b}') |"
echo "| ratio run vm / run container | $(awk -v a="$mv" -v b="$mt" 'BEGIN {printf "%.1f", a / b}') |"
echo
echo "| phase of run --isolation vm | median ms |"
echo "| --- | --- |"
for p in $names; do
  label=$(case $p in
    kernel) echo "VMM start -> kernel entry" ;; agent) echo "kernel entry -> agent listening" ;;
    fs) echo "filesystem mounted (guest)" ;; spec) echo "spec applied (container created in the guest)" ;;
    started) echo "workload started" ;; exit) echo "exit seen" ;; gone) echo "VM gone" ;; esac)
  echo "| $label | $(echo "${phase[$p]}" | median) |"
done
echo
echo "VMM's own memory (peak RSS minus guest memory): median $(( $(echo "${own_kib[*]}" | median) / 1024 )) MiB [$(echo "${own_kib[*]}" | range) KiB]"
