#!/usr/bin/env bash
# What every running amphi VMM is doing, for a test that timed out: a hang
# in VM isolation is either the guest (its vCPU spinning, or halted with an
# interrupt that never comes) or the host side (a VMM thread or an amphi
# command blocked). This prints, changing nothing but mounting tracefs
# where it is not mounted:
#   - each VMM's threads with their state and kernel wait channel, and the
#     amphi commands still running (what they wait in);
#   - 2 s of KVM exits (ftrace kvm:kvm_exit): how often each vCPU left the
#     guest, why, and the guest RIPs it left from (a vCPU that never exits
#     and a halted one look alike in `ps`; here they do not);
#   - the last console lines of each VM under ROOT.
# Guest RIPs are raw: the guest kernel has KASLR and Debian ships no
# System.map; one restored VM's /proc/kallsyms (same template, same
# offset) maps them.
# Usage: tests/vm/hang-report.sh [ROOT...]   (amphi --root directories)
# Needs root and tracefs for the exits; says so and goes on without them.
set -u
echo "# hang report $(date -u +%FT%TZ)"
# A VMM is forked from `amphi create` and keeps its command line: it is
# the process with vCPU threads.
vmms=$(grep -lx 'vcpu[0-9]*' /proc/[0-9]*/task/*/comm 2>/dev/null | cut -d/ -f3 | sort -un)
for pid in $vmms; do
  echo "## VMM $pid: $(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | cut -c1-200)"
  for t in /proc/"$pid"/task/*; do
    [ -r "$t/stat" ] || continue
    printf '  thread %s %-16s state %s wchan %s\n' "${t##*/}" "$(cat "$t/comm" 2>/dev/null)" \
      "$(awk '{print $3}' "$t/stat" 2>/dev/null)" "$(cat "$t/wchan" 2>/dev/null)"
  done
done
echo "## amphi commands"
ps -eo pid=,stat=,wchan:32=,etimes=,args= | awk '$5 ~ /amphi/ && $0 !~ /hang-report/' | cut -c1-220

tracing=/sys/kernel/tracing
[ -d "$tracing/events" ] || mount -t tracefs nodev "$tracing" 2>/dev/null
if [ -w "$tracing/events/kvm/kvm_exit/enable" ]; then
  echo "## KVM exits for 2 s (vcpu, reason, guest RIP: count)"
  echo > "$tracing/trace"
  echo 1 > "$tracing/events/kvm/kvm_exit/enable"
  sleep 2
  echo 0 > "$tracing/events/kvm/kvm_exit/enable"
  # Lines look like: "... kvm_exit: vcpu 0 reason hlt rip 0xffffffff81... info1 ..."
  grep -o 'kvm_exit: .*' "$tracing/trace" |
    sed -E 's/.*vcpu ([0-9]+) reason ([A-Za-z_0-9]+) rip (0x[0-9a-f]+).*/vcpu \1 \2 \3/' |
    sort | uniq -c | sort -rn | head -n 25
  echo "  ($(grep -c 'kvm_exit:' "$tracing/trace") exits in all)"
  echo > "$tracing/trace"
else
  echo "## KVM exits: no tracefs here ($tracing), not traced"
fi

for root in "$@"; do
  for log in "$root"/*/vmm/console.log; do
    [ -f "$log" ] || continue
    echo "## console of ${log#"$root"/}: last lines"
    tail -n 15 "$log" | sed 's/^/  /'
  done
done
