#!/bin/sh
# amphi's VM end-to-end tests. Runs wherever a stock guest can boot under
# KVM: inside the nested test host (tests/vm/run-tests.sh puts it there) or
# directly on a host with VMX/SVM. POSIX sh, so busybox runs it.
#
# Usage: e2e.sh PAYLOAD_DIR   (holding amphi, amphi-agent, kernel/vmlinuz,
#   modules/, bad-init, silent-agent and fs-initrd; see run-tests.sh)
# Ends with the line "N passed, M failed, K skipped"; exits non-zero on any
# failure. A test that cannot run here is reported skipped with the reason.
p=${1:-/payload}
A=$p/amphi K=$p/kernel/vmlinuz M=$p/modules
CACHE=${E2E_CACHE:-/tmp/amphi-e2e-cache}
TIMEOUT=${E2E_TIMEOUT:-180}
export TMPDIR=${E2E_TMPDIR:-/tmp/amphi-e2e-tmp}
mkdir -p "$TMPDIR"
pass=0 fail=0 skip=0
ok() { pass=$((pass + 1)); echo "ok - $1"; }
skipped() { skip=$((skip + 1)); echo "ok - $1 # SKIP $2"; }
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
check "the agent loaded the virtio-blk, virtio-balloon, virtio-net, vsock and virtio-fs modules in dependency order" \
  'echo "$out" | grep -q "modules loaded  .*virtio_mmio virtio_blk virtio_balloon failover net_failover virtio_net vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport .*fuse virtiofs$"'
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

# 5. virtio-fs: a busybox guest (no agent) mounts two directories the VMM
# serves, one of them read-only, and one with a directory and a single file
# bind-mounted inside it (in a private mount namespace, as part 2's VMM
# will have); the host checks what the guest wrote.
FS_CHECKS=11
fs_test() {
  fsd=$(mktemp -d /tmp/amphi-e2e-fs.XXXXXX)
  share=$fsd/share
  mkdir -p "$share/vol" "$fsd/ro" "$fsd/vol"
  echo "hello from the host" > "$share/from-host.txt"
  echo "read-only data" > "$fsd/ro/ro.txt"
  echo "volume data" > "$fsd/vol/inside.txt"
  echo "single file" > "$fsd/single.txt"
  : > "$share/single.txt"
  vmm="$A vm run-vmm --kernel $K --initrd $p/fs-initrd --memory 256 --cpus 1 --kvm /dev/kvm \
    --vsock-uds $fsd/vsock --vsock-cid 3 --event-fd 3 --serial $fsd/console.log \
    --share hostshare=$share --share ro=$fsd/ro:ro"
  cmdline="console=ttyS0 quiet panic=-1 pci=off 8250.nr_uarts=1 tsc=reliable rdinit=/init"
  t0=$(date +%s)
  timeout 180 unshare -m sh -c "mount --bind $fsd/vol $share/vol && mount --bind $fsd/single.txt $share/single.txt \
    && exec $vmm --cmdline '$cmdline'" 3>"$fsd/events" 2>"$fsd/stderr"
  rc=$? t1=$(date +%s)
  con=$(grep -a "FS-E2E" "$fsd/console.log" 2>/dev/null)
  out="rc=$rc
$(cat "$fsd/stderr" 2>/dev/null)
$(tail -20 "$fsd/console.log" 2>/dev/null)"
  echo "$con" | sed 's/^/# /'
  check "virtio-fs: the guest mounts the share and powers off (exit 0)" \
    '[ $rc = 0 ] && echo "$con" | grep -q "FS-E2E mounted hostshare" && echo "$con" | grep -q "FS-E2E done"'
  check "virtio-fs: the guest reads a host file" 'echo "$con" | grep -q "FS-E2E read: hello from the host"'
  check "virtio-fs: the guest's writes land in the host directory" \
    '[ "$(cat "$share/from-guest.txt" 2>/dev/null)" = "written in the guest" ] && [ -d "$share/dir-from-guest" ]'
  check "virtio-fs: the guest's root acts as root on the host files" \
    'echo "$con" | grep -q "FS-E2E owner: 0:0" && [ "$(stat -c %u "$share/from-guest.txt")" = 0 ]'
  check "virtio-fs: a directory bind-mounted inside the share is read and written through" \
    'echo "$con" | grep -q "FS-E2E vol: volume data" && [ "$(cat "$fsd/vol/from-guest.txt" 2>/dev/null)" = "guest in vol" ]'
  check "virtio-fs: a single file bind-mounted onto a file is read and written through" \
    'echo "$con" | grep -q "FS-E2E single: single file" && [ "$(tail -1 "$fsd/single.txt")" = "guest in single" ]'
  check "virtio-fs: a read-only share refuses writes with EROFS" \
    'echo "$con" | grep -q "FS-E2E ro touch: .*Read-only file system" && ! echo "$con" | grep -q "ro create succeeded" && [ ! -e "$fsd/ro/new.txt" ]'
  check "virtio-fs: a read-only share is still readable" 'echo "$con" | grep -q "FS-E2E ro read: read-only data"'
  check "virtio-fs: 32 MiB go through the share both ways" \
    'echo "$con" | grep -q "FS-E2E write: 32 MiB in [0-9]* ms" && echo "$con" | grep -q "FS-E2E read: 32 MiB in [0-9]* ms" && echo "$con" | grep -q "FS-E2E removed big"'
  check "virtio-fs: the guest unmounts cleanly" 'echo "$con" | grep -q "FS-E2E unmounted"'
  peak=$(sed -n 's/.*"peak_rss_kib":\([0-9]*\).*/\1/p' "$fsd/events")
  guest=$(sed -n 's/.*"guest_rss_kib":\([0-9]*\).*/\1/p' "$fsd/events")
  own=$(( ${peak:-0} - ${guest:-0} ))
  echo "# virtio-fs run: ${t1}-${t0}=$((t1 - t0))s, VMM peak RSS ${peak:-?} KiB, guest ${guest:-?} KiB, VMM's own $own KiB"
  out=$(cat "$fsd/events")
  check "virtio-fs: the VMM reports its exit with its peak RSS" '[ -n "$peak" ] && [ -n "$guest" ] && [ "$own" -gt 0 ]'
  rm -rf "$fsd"
}
if [ ! -f "$p/fs-initrd" ]; then
  i=0; while [ $i -lt $FS_CHECKS ]; do skipped "virtio-fs check $((i + 1))" "no fs-initrd in the payload (kernel without virtiofs?)"; i=$((i + 1)); done
elif ! unshare -m true 2>/dev/null; then
  i=0; while [ $i -lt $FS_CHECKS ]; do skipped "virtio-fs check $((i + 1))" "cannot make a mount namespace here (unshare -m)"; i=$((i + 1)); done
else
  fs_test
fi

echo "# e2e took $(( $(date +%s) - start ))s"
echo "$pass passed, $fail failed, $skip skipped"
[ "$fail" = 0 ]
