#!/bin/sh
# amphi's VM end-to-end tests. Runs wherever a stock guest can boot under
# KVM: inside the nested test host (tests/vm/run-tests.sh puts it there) or
# directly on a host with VMX/SVM. POSIX sh, so busybox runs it.
#
# Usage: e2e.sh PAYLOAD_DIR   (holding amphi, amphi-agent, kernel/vmlinuz,
#   modules/, bad-init and silent-agent; see run-tests.sh)
# Ends with the line "N passed, M failed"; exits non-zero on any failure.
p=${1:-/payload}
A=$p/amphi K=$p/kernel/vmlinuz M=$p/modules
CACHE=${E2E_CACHE:-/tmp/amphi-e2e-cache}
TIMEOUT=${E2E_TIMEOUT:-180}
export TMPDIR=${E2E_TMPDIR:-/tmp/amphi-e2e-tmp}
mkdir -p "$TMPDIR"
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok - $1"; }
not_ok() { fail=$((fail + 1)); echo "not ok - $1"; [ -n "$2" ] && printf '%s\n' "$2" | sed 's/^/#   /'; }
check() { if eval "$2"; then ok "$1"; else not_ok "$1" "$out"; fi; }

# Nothing of a run may outlive it: no VMM process, no temp dir, no socket.
no_leftovers() {
  left=$(ls -A "$TMPDIR")
  procs=$(ps -o pid,args 2>/dev/null | grep 'vm run-vmm' | grep -v grep)
  [ -z "$left$procs" ] || { echo "# leftovers: $left $procs"; return 1; }
}

vmcheck() { "$A" vm check --kernel "$KERNEL" --modules "$M" --cache-dir "$CACHE" "$@" 2>&1; }
KERNEL=$K

echo "# e2e: $(uname -r), $(grep -c ^processor /proc/cpuinfo) CPU(s), /dev/kvm: $(ls -l /dev/kvm 2>&1)"

# 1. The whole path: boot, vsock, handshake, health, power-off.
start=$(date +%s)
out=$(vmcheck --timeout "$TIMEOUT"); rc=$?
echo "$out" | sed 's/^/# /'
check "vm check boots the stock kernel and handshakes with the agent" \
  '[ $rc = 0 ] && echo "$out" | grep -q "^amphi vm check: ok" && echo "$out" | grep -q "guest kernel    [0-9]"'
check "the agent loaded the vsock modules in dependency order" \
  'echo "$out" | grep -q "modules loaded  .*virtio_mmio.*vsock .*vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport$"'
check "the report has the time breakdown and the VMM peak RSS" \
  'echo "$out" | grep -q "kernel entry -> agent listening" && echo "$out" | grep -q "teardown" && echo "$out" | grep -q "VMM peak RSS: [0-9]"'
check "the guest powered off cleanly" 'echo "$out" | grep -q "guest powered off cleanly"'
check "nothing is left behind after a successful run" no_leftovers

# 2. Again: the initramfs comes from the cache; two vCPUs; JSON report.
out=$(vmcheck --timeout "$TIMEOUT" --cpus 2 --json); rc=$?
check "a second run reuses the cached initramfs" '[ $rc = 0 ] && echo "$out" | grep -q "\"initramfs_cached\": true"'
check "two vCPUs come online in the guest" 'echo "$out" | grep -q "\"online_cpus\": 2"'

# 3. The same kernel as an ELF vmlinux, entered through its PVH entry point.
if [ -f "$p/kernel/vmlinux" ]; then
  KERNEL=$p/kernel/vmlinux
  out=$(vmcheck --timeout "$TIMEOUT"); rc=$?
  KERNEL=$K
  check "an ELF vmlinux boots through its PVH entry" '[ $rc = 0 ] && echo "$out" | grep -q "guest powered off cleanly"'
else
  not_ok "an ELF vmlinux boots through its PVH entry" "no $p/kernel/vmlinux in the payload"
fi

# 4. Failures: clear, within the timeout, nothing left behind.
out=$("$A" vm check --kernel /nonexistent/vmlinuz --modules "$M" --cache-dir "$CACHE" --timeout 20 2>&1); rc=$?
check "a wrong kernel path is refused by name" '[ $rc != 0 ] && echo "$out" | grep -q "/nonexistent/vmlinuz does not exist"'
check "nothing is left behind after a wrong kernel path" no_leftovers

t0=$(date +%s)
out=$(vmcheck --agent "$p/bad-init" --timeout 60); rc=$?
t1=$(date +%s)
check "a kernel that panics is reported as a panic (exit 22)" \
  '[ $rc = 22 ] && echo "$out" | grep -q "guest kernel panicked: Kernel panic - not syncing"'
check "the panic is reported within the timeout" '[ $((t1 - t0)) -le 60 ]'
check "nothing is left behind after a panic" no_leftovers

t0=$(date +%s)
out=$(vmcheck --agent "$p/silent-agent" --timeout 25); rc=$?
t1=$(date +%s)
check "an agent that never answers times out clearly (exit 21)" \
  '[ $rc = 21 ] && echo "$out" | grep -q "did not answer within 25s"'
check "the timeout is honoured" '[ $((t1 - t0)) -le 35 ]'
check "nothing is left behind after a timeout" no_leftovers

"$A" vm check --kernel "$K" --modules "$M" --cache-dir "$CACHE" --timeout 60 > /tmp/e2e-int.out 2>&1 &
pid=$!
sleep 2
kill -TERM $pid
# Bounded: a check that ignores SIGTERM fails this test, with what every
# process was doing, rather than hang the tier.
n=0
while [ $n -lt 60 ] && [ -e /proc/$pid ] && [ "$(cut -d' ' -f3 /proc/$pid/stat 2>/dev/null)" != Z ]; do
  sleep 1; n=$((n + 1))
done
if [ $n -ge 60 ]; then
  echo "# vm check still runs 60 s after SIGTERM; processes (pid state wchan args):"
  for d in /proc/[0-9]*; do
    echo "#   ${d#/proc/} $(cut -d' ' -f3 $d/stat 2>/dev/null) $(cat $d/wchan 2>/dev/null) $(tr '\0' ' ' < $d/cmdline 2>/dev/null | cut -c1-100)"
  done | grep -v ' $'
  for t in /proc/$pid/task/* $(ls -d /proc/[0-9]*/task/* 2>/dev/null | grep -v "^/proc/$pid/"); do
    grep -q 'run-vmm' ${t%/task/*}/cmdline 2>/dev/null || [ "${t%/task/*}" = /proc/$pid ] || continue
    echo "#   task $t: $(cat $t/comm 2>/dev/null), kernel stack:"
    sed 's/^/#     /' $t/stack 2>/dev/null
  done
  kill -KILL $pid
fi
wait $pid; rc=$?
out=$(cat /tmp/e2e-int.out)
check "an interrupted check stops the VM and says so (exit 130)" '[ $rc = 130 ] && echo "$out" | grep -q "interrupted"'
check "nothing is left behind after an interruption" 'sleep 1; no_leftovers'

out=$(vmcheck --memory 16 --timeout 20); rc=$?
check "too little memory is refused with the fix" '[ $rc != 0 ] && echo "$out" | grep -q -- "--memory 64 or more"'

echo "# e2e took $(( $(date +%s) - start ))s"
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
