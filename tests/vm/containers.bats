#!/usr/bin/env bats
# VM isolation end to end: OCI bundles run inside amphi's microVM through
# the runc command line. Needs a /dev/kvm that runs stock kernels, so CI
# runs it inside the nested test host (tests/vm/run-tests.sh); elsewhere
# every test says why it skips.
#
# AMPHI: a static amphi with a static amphi-agent beside it (what
# scripts/setup.sh installs, or tests/vm/build-static.sh builds).

bats_require_minimum_version 1.5.0
load deadline

setup_file() {
  export AMPHI=${AMPHI:-$(command -v amphi)}
  [ -x "$AMPHI" ] || skip "amphi is not installed (scripts/setup.sh)"
  export REPO=$(cd "$BATS_TEST_DIRNAME/../.." && pwd)
  export ROOT=$(mktemp -d /tmp/amphi-vmc-root.XXXXXX)
  export WORK=$(mktemp -d /tmp/amphi-vmc-work.XXXXXX)
}

teardown_file() {
  for id in $("$AMPHI" --root "$ROOT" list -q 2>/dev/null); do
    "$AMPHI" --root "$ROOT" delete --force "$id" >/dev/null 2>&1 || true
  done
  rm -rf "$ROOT" "$WORK"
}

setup() {
  if [ -e /sys/module/kvm_pvm ] || ! grep -qwE 'vmx|svm' /proc/cpuinfo || [ ! -c /dev/kvm ]; then
    skip "no /dev/kvm that runs stock kernels here (run through tests/vm/run-tests.sh)"
  fi
  deadline_watch "$ROOT"
}

A() { "$AMPHI" --root "$ROOT" "$@"; }

# What a `run` gave, shown by bats when the test fails.
trace() { echo "status=$status"; echo "output=$output"; [ -z "${stderr:-}" ] || echo "stderr=$stderr"; }

# mkbundle NAME JQ-FILTER: a copy of bundles/hello in VM isolation, with its
# config.json passed through the jq filter; prints the bundle path.
mkbundle() {
  local b=$WORK/$1
  rm -rf "$b"; mkdir -p "$b"
  cp -a "$REPO/bundles/hello/rootfs" "$b/rootfs"
  jq '.annotations["run.amphi.isolation"] = "vm" | .root.readonly = false | '"$2" \
    "$REPO/bundles/hello/config.json" > "$b/config.json"
  echo "$b"
}

args() { # JSON array of the process arguments ("--": jq would take "-c" for itself)
  jq -cn '$ARGS.positional' --args -- "$@"
}

# Nothing of container ID is left: no state, no process, no cgroup.
nothing_left() {
  [ ! -e "$ROOT/$1" ]
  ! pgrep -f "amphi-vmc.*$1" >/dev/null
  [ -z "$(find /sys/fs/cgroup -maxdepth 3 -name "amphi-$1" 2>/dev/null)" ]
}

# vmm_api ID JSON: one request to the VMM's control socket; prints the reply.
vmm_api() {
  python3 -c 'import socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\n"); print(s.makefile().readline().strip())' "$ROOT/$1/vmm/api" "$2"
}

# vmm_rss_kib ID: the VMM's resident memory.
vmm_rss_kib() {
  awk '/^VmRSS:/ {print $2}' "/proc/$(A state "$1" | jq -r .pid)/status"
}

# vmm_cgroup ID FILE: FILE of the VMM's cgroup on the host (the test host
# runs cgroup2 alone: the "0::" line of /proc/PID/cgroup).
vmm_cgroup() {
  cat "/sys/fs/cgroup$(sed -n 's/^0:://p' "/proc/$(A state "$1" | jq -r .pid)/cgroup")/$2"
}

@test "run: the workload's output and exit code come back" {
  b=$(mkbundle out ".process.args = $(args /bin/sh -c 'echo out; echo err >&2; exit 7')")
  run --separate-stderr A run --bundle "$b" vmc-out
  trace
  [ "$status" -eq 7 ]
  [ "$output" = out ]
  [ "$stderr" = err ]
  nothing_left vmc-out
}

@test "run: the guest is a VM with its own kernel" {
  b=$(mkbundle kern ".process.args = $(args /bin/sh -c 'uname -r; cat /proc/1/cmdline | tr "\0" " "')")
  run A run --bundle "$b" vmc-kern
  trace
  [ "$status" -eq 0 ]
  [[ "${lines[0]}" == *cloud-amd64 ]]
}

@test "a file the workload writes appears in the host's rootfs" {
  b=$(mkbundle write ".process.args = $(args /bin/sh -c 'echo written-in-vm > /tmp/from-guest')")
  run A run --bundle "$b" vmc-write
  trace
  [ "$status" -eq 0 ]
  [ "$(cat "$b/rootfs/tmp/from-guest")" = written-in-vm ]
}

@test "output written just before the exit reaches a reader that is slow to take it, whole" {
  # 300 kB fit in the pipes and vsock buffers between the workload and
  # the reader, so the workload exits at once; the reader waits for the
  # mark it leaves in its rootfs, then 7 s more. The VMM used to give the
  # copy 5 s after the exit and cut the rest.
  b=$(mkbundle slow ".process.args = $(args /bin/sh -c 'head -c 300000 /dev/zero; touch /done; exit 3')")
  run bash -c '"$1" --root "$2" run --bundle "$3" vmc-slow | {
      for _ in $(seq 600); do [ -e "$3/rootfs/done" ] && break; sleep 0.1; done
      sleep 7; wc -c; }
    echo "exit=${PIPESTATUS[0]}"' _ "$AMPHI" "$ROOT" "$b"
  trace
  [ "${lines[0]}" = 300000 ]
  [ "${lines[1]}" = exit=3 ]
  nothing_left vmc-slow
}

@test "a bind-mounted host directory is readable and writable" {
  mkdir -p "$WORK/vol"; echo from-host > "$WORK/vol/in"
  b=$(mkbundle bind ".process.args = $(args /bin/sh -c 'cat /data/in; echo from-guest > /data/out') |
      .mounts += [{destination: \"/data\", type: \"bind\", source: \"$WORK/vol\", options: [\"rbind\", \"rw\"]}]")
  run A run --bundle "$b" vmc-bind
  trace
  [ "$status" -eq 0 ]
  [ "$output" = from-host ]
  [ "$(cat "$WORK/vol/out")" = from-guest ]
}

@test "a read-only rootfs stays read-only in the guest, and needs no mount points of its own" {
  b=$(mkbundle ro ".root.readonly = true | .process.args = $(args /bin/sh -c 'touch /x 2>&1; echo rc=$?; head -c 4 /proc/self/comm; echo')")
  # An image without the mount points (Kubernetes' pause image is one
  # file): the host makes them before the guest sees the root read-only.
  rm -rf "$b/rootfs/proc" "$b/rootfs/sys" "$b/rootfs/dev"
  run A run --bundle "$b" vmc-ro
  trace
  [[ "$output" == *"Read-only file system"* ]]
  [[ "$output" == *"rc=1"* ]]
  [[ "$output" == *"head"* ]]
  [ ! -e "$b/rootfs/x" ]
  [ -d "$b/rootfs/proc" ] && [ -d "$b/rootfs/sys" ] && [ -d "$b/rootfs/dev" ]
}

@test "stdin reaches the workload and EOF ends it" {
  b=$(mkbundle stdin ".process.args = $(args /bin/sh -c 'tr a-z A-Z')")
  run bash -c "printf 'piped through\n' | '$AMPHI' --root '$ROOT' run --bundle '$b' vmc-stdin"
  trace
  [ "$status" -eq 0 ]
  [ "$output" = "PIPED THROUGH" ]
}

@test "create, start, state, kill, delete: the same state machine" {
  b=$(mkbundle life ".process.args = $(args /bin/sleep 1000)")
  A create --bundle "$b" vmc-life </dev/null >/dev/null 2>&1
  run A state vmc-life
  trace
  [ "$(echo "$output" | jq -r .status)" = created ]
  pid=$(echo "$output" | jq -r .pid)
  [ "$pid" -gt 0 ]
  A start vmc-life
  [ "$(A state vmc-life | jq -r .status)" = running ]
  A kill vmc-life KILL
  for _ in $(seq 100); do [ "$(A state vmc-life | jq -r .status)" = stopped ] && break; sleep 0.1; done
  [ "$(A state vmc-life | jq -r .status)" = stopped ]
  A delete vmc-life
  nothing_left vmc-life
}

@test "the VMM runs the guest with only the capabilities virtio-fs needs, no_new_privs, no core dumps" {
  # CHOWN and FOWNER for the workload too, or the guest kernel itself
  # refuses the chown below before virtio-fs sees it.
  b=$(mkbundle jail ".process.args = $(args /bin/sleep 1000)
    | .process.capabilities.bounding += [\"CAP_CHOWN\", \"CAP_FOWNER\"]
    | .process.capabilities.effective += [\"CAP_CHOWN\", \"CAP_FOWNER\"]
    | .process.capabilities.permitted += [\"CAP_CHOWN\", \"CAP_FOWNER\"]")
  A create --bundle "$b" vmc-jail </dev/null >/dev/null 2>&1
  pid=$(A state vmc-jail | jq -r .pid)
  run cat "/proc/$pid/status"
  echo "$output" | grep -E '^(Cap|NoNewPrivs|Seccomp)'
  # CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID SETGID SETUID SETFCAP
  # (src/vm/jail.rs), in every set that holds any, on every thread.
  for t in /proc/$pid/task/*; do
    grep -q '^CapEff:[[:space:]]*00000000800000df$' "$t/status"
    grep -q '^CapPrm:[[:space:]]*00000000800000df$' "$t/status"
    grep -q '^CapBnd:[[:space:]]*00000000800000df$' "$t/status"
    grep -q '^CapInh:[[:space:]]*0000000000000000$' "$t/status"
    grep -q '^NoNewPrivs:[[:space:]]*1$' "$t/status"
  done
  grep -E '^Max core file size +0 +0 ' "/proc/$pid/limits"
  # virtio-fs still does what needs the kept capabilities: chown and chmod
  # of a file, then a write to it as its new owner.
  A start vmc-jail
  run A exec vmc-jail /bin/sh -c 'echo jailed > /tmp/owned && chown 1234:1234 /tmp/owned && chmod 640 /tmp/owned'
  trace
  [ "$status" = 0 ]
  run A exec --user 1234:1234 vmc-jail /bin/sh -c 'echo by-1234 >> /tmp/owned'
  trace
  [ "$status" = 0 ]
  [ "$(stat -c %u:%g:%a "$b/rootfs/tmp/owned")" = 1234:1234:640 ]
  [ "$(cat "$b/rootfs/tmp/owned")" = "$(printf 'jailed\nby-1234')" ]
  # Every thread (main, vCPU, virtio-fs worker, agent I/O) runs under a
  # seccomp filter (src/vm/jail/seccomp.rs).
  for t in /proc/$pid/task/*; do
    grep -H -E '^(Name|Seccomp)' "$t/status"
    grep -q '^Seccomp:[[:space:]]*2$' "$t/status"
  done
  # Its root holds only what it needs (src/vm/jail/root.rs); of /proc, its
  # own fds and mounts; nothing of the host's filesystem is mounted.
  [ "$(ls /proc/$pid/root | tr '\n' ' ')" = "api console.log dev initrd kernel proc share vsock " ]
  [ "$(ls /proc/$pid/root/proc/self)" = "fd
mountinfo" ]
  ! awk '{print $5}' /proc/$pid/mountinfo | grep -E '^/(usr|etc|bin|lib|var|home|root|run|tmp)(/|$)'
  A delete --force vmc-jail
  nothing_left vmc-jail
}

@test "a syscall outside a VMM thread's seccomp filter stops the VMM with a line that names it" {
  b=$(mkbundle probe ".process.args = $(args /bin/true)")
  # The probe makes each kind of thread call ptrace (101) right after
  # loading its filter, which no filter allows.
  for kind in vmm vcpu device io; do
    run env AMPHI_VMM_SECCOMP_PROBE=$kind "$AMPHI" --root "$ROOT" run --bundle "$b" vmc-probe
    trace
    [ "$status" -ne 0 ]
    [[ "$output" == *"($kind filter) made syscall 101 (x86_64), which its seccomp filter does not allow: the VMM stops"* ]]
    A delete --force vmc-probe
    nothing_left vmc-probe
  done
  # Without the probe the same bundle runs.
  run A run --bundle "$b" vmc-probe
  trace
  [ "$status" -eq 0 ]
  A delete --force vmc-probe
}

@test "SIGTERM to a foreground run reaches the workload" {
  b=$(mkbundle term ".process.args = $(args /bin/sh -c 'trap "echo got-term; exit 3" TERM; echo ready; while :; do sleep 0.1; done')")
  "$AMPHI" --root "$ROOT" run --bundle "$b" vmc-term > "$WORK/term.out" 2>&1 &
  runner=$!
  for _ in $(seq 200); do grep -q ready "$WORK/term.out" && break; sleep 0.1; done
  kill -TERM $runner
  wait $runner || rc=$?
  [ "${rc:-0}" -eq 3 ]
  grep -q got-term "$WORK/term.out"
}

@test "a workload killed by a signal is reported as 128+N" {
  # (A container's init cannot SIGKILL itself: it is PID 1 of its pid
  # namespace, in the VM as on a host. The signal comes from outside.)
  b=$(mkbundle sig ".process.args = $(args /bin/sh -c 'echo ready; exec sleep 1000')")
  "$AMPHI" --root "$ROOT" run --bundle "$b" vmc-sig > "$WORK/sig.out" 2>&1 &
  runner=$!
  for _ in $(seq 200); do grep -q ready "$WORK/sig.out" && break; sleep 0.1; done
  A kill vmc-sig KILL
  wait $runner || rc=$?
  [ "${rc:-0}" -eq 137 ]
  nothing_left vmc-sig
}

@test "delete --force of a running VM, a SIGKILLed VMM and a VM that does not answer leaves nothing" {
  b=$(mkbundle force ".process.args = $(args /bin/sleep 1000)")
  A run -d --bundle "$b" vmc-force </dev/null >/dev/null 2>&1
  A delete --force vmc-force
  nothing_left vmc-force
  A run -d --bundle "$b" vmc-force2 </dev/null >/dev/null 2>&1
  kill -9 "$(A state vmc-force2 | jq -r .pid)"
  sleep 0.5
  [ "$(A state vmc-force2 | jq -r .status)" = stopped ]
  A delete --force vmc-force2
  nothing_left vmc-force2
  # An agent that does not answer: the whole VMM stopped.
  A run -d --bundle "$b" vmc-force3 </dev/null >/dev/null 2>&1
  kill -STOP "$(A state vmc-force3 | jq -r .pid)"
  A delete --force vmc-force3
  nothing_left vmc-force3
}

@test "a terminal works with run in the foreground" {
  b=$(mkbundle tty ".process.terminal = true | .process.args = $(args /bin/sh -c 'tty; stty size')")
  run script -qec "stty rows 33 cols 101; '$AMPHI' --root '$ROOT' run --bundle '$b' vmc-tty" /dev/null
  trace
  [ "$status" -eq 0 ]
  [[ "$output" == */dev/pts/* ]]
  [[ "$output" == *"33 101"* ]]
}

@test "bad VM settings are refused at create and leave nothing" {
  b=$(mkbundle bad '.annotations["run.amphi.vm.memory"] = "0"')
  run A create --bundle "$b" vmc-bad
  trace
  [ "$status" -eq 5 ]
  [[ "$output" == *run.amphi.vm.memory* ]]
  b=$(mkbundle bad2 '.annotations["run.amphi.vm.kernel"] = "/no/such/kernel"')
  run A create --bundle "$b" vmc-bad
  trace
  [ "$status" -eq 5 ]
  [[ "$output" == */no/such/kernel* ]]
  b=$(mkbundle bad3 '.annotations["run.amphi.vm.cpus"] = "999"')
  run A create --bundle "$b" vmc-bad
  trace
  [ "$status" -eq 5 ]
  nothing_left vmc-bad
}

@test "an error inside the guest reaches create with its cause" {
  b=$(mkbundle missing ".process.args = $(args /no/such/program)")
  run A run --bundle "$b" vmc-missing
  trace
  [ "$status" -ne 0 ]
  [[ "$output" == *"/no/such/program"* ]]
  nothing_left vmc-missing
}

@test "exec runs a process in the running VM container, with its own exit code" {
  b=$(mkbundle exec ".process.args = $(args /bin/sleep 1000)")
  A run -d --bundle "$b" vmc-exec </dev/null >/dev/null 2>&1
  run --separate-stderr A exec vmc-exec /bin/sh -c 'echo in-guest $(hostname); echo to-stderr >&2; exit 5'
  trace
  [ "$status" -eq 5 ]
  [ "$output" = "in-guest hello" ]
  [ "$stderr" = to-stderr ]
  run bash -c "echo via-stdin | '$AMPHI' --root '$ROOT' exec vmc-exec /bin/cat"
  trace
  [ "$output" = via-stdin ]
  run script -qec "stty rows 21 cols 77; '$AMPHI' --root '$ROOT' exec -t vmc-exec /bin/sh -c 'tty; stty size'" /dev/null
  trace
  [ "$status" -eq 0 ]
  [[ "$output" == */dev/pts/* ]]
  [[ "$output" == *"21 77"* ]]
  A exec -d --pid-file "$WORK/exec.pid" vmc-exec /bin/sleep 1000 </dev/null >/dev/null 2>&1
  relay=$(cat "$WORK/exec.pid")
  kill -0 "$relay"
  kill -TERM "$relay"
  for _ in $(seq 100); do kill -0 "$relay" 2>/dev/null || break; sleep 0.1; done
  ! kill -0 "$relay" 2>/dev/null
  A delete --force vmc-exec
  nothing_left vmc-exec
}

@test "ps, pause, resume, update and events --stats reach the guest" {
  b=$(mkbundle ops ".process.args = $(args /bin/sh -c 'sleep 1000 & exec sleep 999')")
  A run -d --bundle "$b" vmc-ops </dev/null >/dev/null 2>&1
  # run -d returns once the shell started, maybe before it forked (a CI
  # run's ps saw the shell alone).
  for _ in $(seq 50); do
    [ "$(A ps --format json vmc-ops | jq length)" = 2 ] && break
    sleep 0.2
  done
  run A ps --format json vmc-ops
  trace
  [ "$status" -eq 0 ]
  [ "$(echo "$output" | jq length)" -eq 2 ]
  run A ps vmc-ops
  trace
  [[ "${lines[0]}" == *PID*CMD* ]]
  [[ "$output" == *"sleep 999"* ]]
  A pause vmc-ops
  [ "$(A state vmc-ops | jq -r .status)" = paused ]
  A resume vmc-ops
  [ "$(A state vmc-ops | jq -r .status)" = running ]
  A update --pids-limit 50 vmc-ops
  # CPU settings reach both cgroups: the guest's, and the VMM's on the
  # host, where they throttle the vCPU threads.
  A update --cpu-quota 50000 --cpu-period 100000 vmc-ops
  [ "$(vmm_cgroup vmc-ops cpu.max)" = "50000 100000" ]
  run A exec vmc-ops cat /sys/fs/cgroup/cpu.max
  trace
  [ "$output" = "50000 100000" ]
  # A cpuset naming a CPU the 1-vCPU guest lacks is refused there, before
  # the host changes.
  host_cpus=$(vmm_cgroup vmc-ops cpuset.cpus)
  run A update --cpuset-cpus 3 vmc-ops
  trace
  [ "$status" -ne 0 ]
  [ "$(vmm_cgroup vmc-ops cpuset.cpus)" = "$host_cpus" ]
  run A events --stats vmc-ops
  trace
  [ "$status" -eq 0 ]
  [ "$(echo "$output" | jq -r .type)" = stats ]
  [ "$(echo "$output" | jq -r .data.pids.limit)" = 50 ]
  [ "$(echo "$output" | jq -r .data.pids.current)" -ge 2 ]
  # The host's view: the VMM's cgroup (its threads, the guest's memory).
  [ "$(echo "$output" | jq -r .data.host.pids.current)" -ge 4 ]
  [ "$(echo "$output" | jq -r .data.host.memory.usage.usage)" -gt "$(echo "$output" | jq -r .data.memory.usage.usage)" ]
  [ "$(echo "$output" | jq -r .data.host.cpu.usage.total)" -gt 0 ]
  # The VMM's control socket (src/vm/vmm/api.rs) answers with its own view.
  run vmm_api vmc-ops '{"op":"stats"}'
  trace
  [ "$(echo "$output" | jq -r .stats.memory_mib)" -ge 64 ]
  [ "$(echo "$output" | jq -r .stats.guest_resident_kib)" -gt 1024 ]
  A delete --force vmc-ops
  nothing_left vmc-ops
}

# Disks: mounts of filesystem images (and block devices) become virtio-blk
# disks of the VM. e2fsprogs builds and reads the images on the host.
need_e2fsprogs() {
  command -v mkfs.ext4 >/dev/null && command -v debugfs >/dev/null && command -v e2fsck >/dev/null ||
    skip "SKIPPED: e2fsprogs (mkfs.ext4, debugfs, e2fsck) is not installed"
}

# mkimage PATH: a 16 MiB ext4 image holding /in ("from-image").
mkimage() {
  rm -rf "$WORK/imgsrc" "$1"; mkdir -p "$WORK/imgsrc"; echo from-image > "$WORK/imgsrc/in"
  mkfs.ext4 -q -d "$WORK/imgsrc" "$1" 16M
}

# image_cat IMAGE FILE: FILE of the image as the host reads it, after the
# journal was replayed (what any later mount would do first): a sync in the
# guest commits to the journal, it need not have reached the inode tables.
image_cat() {
  local rc=0
  e2fsck -fy "$1" >/dev/null 2>&1 || rc=$?
  [ "$rc" -le 1 ] || { echo "e2fsck $1: exit $rc" >&2; return 1; }
  debugfs -R "cat $2" "$1" 2>/dev/null
}

@test "a disk image mount is readable and writable, and survives a SIGKILL of the VMM after fsync" {
  need_e2fsprogs
  img=$WORK/disk.img
  mkimage "$img"
  mnt=".mounts += [{destination: \"/data\", type: \"ext4\", source: \"$img\", options: [\"rw\"]}]"
  b=$(mkbundle disk ".process.args = [\"/bin/sh\", \"/disk.sh\"] | $mnt")
  # The disk's flush count (field 16 of /sys/block/vdX/stat) shows that
  # the guest's sync reached the device as FLUSH requests, which the VMM
  # answers only after fdatasync of the image.
  cat > "$b/rootfs/disk.sh" <<'SH'
cat /data/in
dev=$(awk '$2 == "/data" {print $1}' /proc/mounts)
echo "mount $(awk '$2 == "/data" {print $1, $3, $4}' /proc/mounts)"
before=$(awk '{print $16}' /sys/block/${dev#/dev/}/stat)
echo from-guest > /data/out
sync
after=$(awk '{print $16}' /sys/block/${dev#/dev/}/stat)
echo "flushes $before $after"
SH
  run A run --bundle "$b" vmc-disk
  trace
  [ "$status" -eq 0 ]
  [ "${lines[0]}" = from-image ]
  [[ "${lines[1]}" == "mount /dev/vd"?" ext4 rw,"* ]]
  read -r _ before after <<< "${lines[2]}"
  [ "$after" -gt "$before" ]
  nothing_left vmc-disk
  [ "$(image_cat "$img" /out)" = from-guest ]

  # Written and synced, then the VMM is SIGKILLed: the data is in the image.
  b=$(mkbundle disk2 ".process.args = $(args /bin/sh -c 'echo synced-before-kill > /data/killed; sync; touch /tmp/synced; exec sleep 1000') | $mnt")
  A run -d --bundle "$b" vmc-disk2 </dev/null >/dev/null 2>&1
  for _ in $(seq 300); do [ -e "$b/rootfs/tmp/synced" ] && break; sleep 0.1; done
  [ -e "$b/rootfs/tmp/synced" ]
  # Meanwhile the image is this VM's: a second writer is refused at create.
  run A create --bundle "$b" vmc-disk3
  trace
  [ "$status" -eq 5 ]
  [[ "$output" == *"mount #"*"(/data, type ext4)"*"$img is in use by another VM"* ]]
  nothing_left vmc-disk3
  kill -9 "$(A state vmc-disk2 | jq -r .pid)"
  A delete --force vmc-disk2
  nothing_left vmc-disk2
  [ "$(image_cat "$img" /killed)" = synced-before-kill ]
}

@test "a read-only disk image mount cannot be written and the image stays as it was" {
  need_e2fsprogs
  img=$WORK/ro.img
  mkimage "$img"
  sum=$(md5sum < "$img")
  b=$(mkbundle diskro ".process.args = $(args /bin/sh -c 'cat /data/in; echo x > /data/new 2>&1; echo rc=$?') |
      .mounts += [{destination: \"/data\", type: \"ext4\", source: \"$img\", options: [\"ro\"]}]")
  run A run --bundle "$b" vmc-diskro
  trace
  [ "$status" -eq 0 ]
  [ "${lines[0]}" = from-image ]
  [[ "$output" == *"Read-only file system"* ]]
  [[ "$output" == *"rc=1"* ]]
  [ "$(md5sum < "$img")" = "$sum" ]
  nothing_left vmc-diskro
}

@test "bad disk mounts are refused at create with exit code 5 and leave nothing" {
  mkdir -p "$WORK/notimage"
  for src in /no/such.img "$WORK/notimage" /dev/null; do
    b=$(mkbundle diskbad ".mounts += [{destination: \"/data\", type: \"ext4\", source: \"$src\"}]")
    run A create --bundle "$b" vmc-diskbad
    trace
    [ "$status" -eq 5 ]
    [[ "$output" == *"(/data, type ext4): source $src "*"filesystem image or a block device"* ]]
    nothing_left vmc-diskbad
  done
}

@test "a block device is a disk both as a linux.devices entry (with the guest's numbers) and as a read-only mount" {
  need_e2fsprogs
  command -v losetup >/dev/null || skip "SKIPPED: losetup is not installed"
  modprobe loop 2>/dev/null || true
  img=$WORK/blk.img
  mkimage "$img"
  loop=$(losetup -f --show "$img") || skip "SKIPPED: no loop device here"
  major=$((0x$(stat -c %t "$loop"))) minor=$((0x$(stat -c %T "$loop")))
  b=$(mkbundle diskdev ".linux.devices += [{path: \"/dev/xvdb\", type: \"b\", major: $major, minor: $minor, fileMode: 432, uid: 0, gid: 0}] |
      .process.args = $(args /bin/sh -c 'stat -c "%F %t:%T" /dev/xvdb; dd if=/dev/xvdb bs=1 skip=1080 count=2 2>/dev/null | od -An -tx1')")
  run A run --bundle "$b" vmc-diskdev
  dev_status=$status dev_lines=("${lines[@]}") dev_output=$output
  b=$(mkbundle diskdevro ".process.args = $(args /bin/sh -c 'cat /data/in; touch /data/x 2>&1; echo rc=$?') |
      .mounts += [{destination: \"/data\", type: \"ext4\", source: \"$loop\", options: [\"ro\"]}]")
  run A run --bundle "$b" vmc-diskdevro
  losetup -d "$loop"
  trace
  echo "linux.devices: status=$dev_status output=$dev_output"
  [ "$dev_status" -eq 0 ]
  [[ "${dev_lines[0]}" == "block special file "* ]]
  # The guest's virtio disk, not the host's loop device.
  [ "${dev_lines[0]}" != "block special file $(printf %x "$major"):$(printf %x "$minor")" ]
  [ "$(echo ${dev_lines[1]})" = "53 ef" ]
  nothing_left vmc-diskdev
  [ "$status" -eq 0 ]
  [ "${lines[0]}" = from-image ]
  [[ "$output" == *"Read-only file system"* ]]
  [[ "$output" == *"rc=1"* ]]
  nothing_left vmc-diskdevro
}

@test "memory the guest frees goes back to the host, and update --memory takes more through the balloon" {
  # A 256 MiB limit: 384 MiB of guest RAM. The workload fills 160 MiB of
  # tmpfs, then waits; removing the file frees it in the guest.
  b=$(mkbundle mem ".process.args = $(args /bin/sh -c 'dd if=/dev/zero of=/dev/shm/fill bs=1M count=160 2>/dev/null; touch /dev/shm/filled; exec sleep 1000')
    | .linux.resources.memory.limit = 268435456
    | (.mounts[] | select(.destination == \"/dev/shm\") | .options) |= map(select(startswith(\"size=\") | not)) + [\"size=200m\"]")
  # The VMM keeps run's stderr: should it stop on its own (a CI run once
  # lost it mid-update, "connection reset"), its last words show below.
  A run -d --bundle "$b" vmc-mem </dev/null >/dev/null 2>"$WORK/mem.err"
  VMM_ERR=$WORK/mem.err
  for _ in $(seq 100); do A exec vmc-mem test -e /dev/shm/filled && break; sleep 0.3; done
  A exec vmc-mem test -e /dev/shm/filled
  run vmm_api vmc-mem '{"op":"stats"}'
  trace
  [ "$(echo "$output" | jq -r .stats.memory_mib)" = 384 ]
  [ "$(echo "$output" | jq -r .stats.guest_resident_kib)" -gt $((160 * 1024)) ]
  full=$(vmm_rss_kib vmc-mem)
  # Free page reporting: the guest hands freed blocks back after about 2 s.
  A exec vmc-mem rm /dev/shm/fill
  for _ in $(seq 60); do
    [ "$(vmm_rss_kib vmc-mem)" -lt $((full - 100 * 1024)) ] && break
    sleep 0.5
  done
  echo "VMM RSS: $full KiB filled, $(vmm_rss_kib vmc-mem) KiB after the guest freed 160 MiB"
  [ "$(vmm_rss_kib vmc-mem)" -lt $((full - 100 * 1024)) ]
  # The VMM's host cgroup: guest RAM + 64 MiB for the VMM.
  [ "$(vmm_cgroup vmc-mem memory.max)" = $(((384 + 64) << 20)) ]
  # update --memory 64M: the guest keeps 64 + 128 MiB, the balloon takes
  # the other 192 MiB; update returns once the guest has given them.
  start=$(date +%s%N)
  A update --memory 64M vmc-mem
  echo "update --memory 64M took $(( ($(date +%s%N) - start) / 1000000 )) ms"
  run vmm_api vmc-mem '{"op":"stats"}'
  trace
  [ "$(echo "$output" | jq -r .stats.balloon.target_mib)" = 192 ]
  [ "$(echo "$output" | jq -r .stats.balloon.actual_mib)" = 192 ]
  [ "$(echo "$output" | jq -r .stats.balloon.freed_mib)" -ge 100 ]
  # The host cgroup followed, once the guest had given it back: what the
  # guest keeps plus the VMM, (384 - 192) + 64 MiB.
  [ "$(vmm_cgroup vmc-mem memory.max)" = $(((384 - 192 + 64) << 20)) ]
  # The workload still runs; the guest cgroup got the new limit too.
  run A exec vmc-mem cat /sys/fs/cgroup/memory.max
  trace
  [ "$output" = 67108864 ]
  # More than the boot size: the guest's cgroup takes it, the balloon gives
  # everything back and the host limit returns to guest RAM + 64 MiB; guest
  # RAM itself does not grow, which update says.
  run --separate-stderr A update --memory 1G vmc-mem
  trace
  [ "$status" -eq 0 ]
  [[ "$stderr" == *"cannot grow while the VM runs"* ]]
  [ "$(vmm_cgroup vmc-mem memory.max)" = $(((384 + 64) << 20)) ]
  [ "$(vmm_api vmc-mem '{"op":"stats"}' | jq -r .stats.balloon.target_mib)" = 0 ]
  run A exec vmc-mem cat /sys/fs/cgroup/memory.max
  trace
  [ "$output" = 1073741824 ]
  # A balloon that would leave the guest nothing is refused by name.
  run vmm_api vmc-mem '{"op":"balloon","target_mib":380}'
  [[ "$output" == *"ask for at most 320 MiB"* ]]
  A delete --force vmc-mem
  nothing_left vmc-mem
}

@test "a guest that cannot give its memory back keeps the VMM's host limit, and update --memory says why" {
  # 200 MiB of tmpfs the guest cannot reclaim (no swap), held by an init
  # the OOM killer may not pick: a 64M limit leaves the guest short of the
  # 192 MiB the balloon asks.
  b=$(mkbundle stuck ".process.args = $(args /bin/sh -c 'dd if=/dev/zero of=/dev/shm/fill bs=1M count=200 2>/dev/null; touch /dev/shm/filled; exec sleep 1000')
    | .process.oomScoreAdj = -1000
    | .linux.resources.memory.limit = 268435456
    | (.mounts[] | select(.destination == \"/dev/shm\") | .options) |= map(select(startswith(\"size=\") | not)) + [\"size=240m\"]")
  A run -d --bundle "$b" vmc-stuck </dev/null >/dev/null 2>&1
  for _ in $(seq 100); do A exec vmc-stuck test -e /dev/shm/filled && break; sleep 0.3; done
  A exec vmc-stuck test -e /dev/shm/filled
  run --separate-stderr A update --memory 64M vmc-stuck
  trace
  [ "$status" -eq 1 ]
  [[ "$stderr" == *"update vmc-stuck: after "*"s the guest has given back "*" of the 192 MiB"* ]]
  [[ "$stderr" == *"keeps its memory limit (448 MiB): 256 MiB now would have the host OOM-kill the VM"* ]]
  # The VM lives on under the host limit it had (its container's cgroup,
  # over its new limit, has no room for an exec now).
  [ "$(vmm_cgroup vmc-stuck memory.max)" = $(((384 + 64) << 20)) ]
  [ "$(A state vmc-stuck | jq -r .status)" = running ]
  # Back up: nothing to wait for, the balloon lets go, the container runs.
  A update --memory 256M vmc-stuck
  [ "$(vmm_api vmc-stuck '{"op":"stats"}' | jq -r .stats.balloon.target_mib)" = 0 ]
  [ "$(vmm_cgroup vmc-stuck memory.max)" = $(((384 + 64) << 20)) ]
  run A exec vmc-stuck cat /sys/fs/cgroup/memory.max
  trace
  [ "$output" = 268435456 ]
  A delete --force vmc-stuck
  nothing_left vmc-stuck
}

@test "a root filesystem from a disk image (run.amphi.vm.rootfs) is the container's root, and keeps what it writes" {
  need_e2fsprogs
  b=$(mkbundle blockroot ".process.args = [\"/bin/sh\", \"/root.sh\"]
    | .annotations[\"run.amphi.vm.rootfs\"] = \"root.img\"")
  echo in-the-image > "$b/rootfs/marker"
  cat > "$b/rootfs/root.sh" <<'SH'
awk '$2 == "/" {print $1, $3}' /proc/mounts
cat /marker
echo from-block-root > /written
sync
SH
  mkfs.ext4 -q -d "$b/rootfs" "$b/root.img" 64M
  # The bundle's directory is not what the guest sees: empty it.
  rm -rf "${b:?}/rootfs" && mkdir "$b/rootfs"
  run A run --bundle "$b" vmc-blockroot
  trace
  [ "$status" -eq 0 ]
  [[ "${lines[0]}" == "/dev/vd"?" ext4" ]]
  [ "${lines[1]}" = in-the-image ]
  nothing_left vmc-blockroot
  [ "$(image_cat "$b/root.img" /written)" = from-block-root ]
  [ ! -e "$b/rootfs/written" ]
  # A bad image is refused at create, by name, leaving nothing.
  jq '.annotations["run.amphi.vm.rootfs"] = "missing.img"' "$b/config.json" > "$b/c.json" && mv "$b/c.json" "$b/config.json"
  run A run --bundle "$b" vmc-blockroot
  trace
  [ "$status" -eq 5 ]
  [[ "$output" == *"run.amphi.vm.rootfs (missing.img)"* ]]
  nothing_left vmc-blockroot
}

# mknetns NAME SUBNET: a network namespace /run/netns/NAME holding eth0, one
# end of a veth pair (MTU 1400, SUBNET.2/24, default route via SUBNET.1);
# the other end, h-NAME, stays here with SUBNET.1/24. What an engine or a
# CNI plugin makes.
mknetns() {
  ip netns add "$1"
  ip link add "h-$1" type veth peer name eth0 netns "$1"
  ip -n "$1" link set lo up
  ip -n "$1" link set eth0 mtu 1400 up
  ip -n "$1" addr add "$2.2/24" dev eth0
  ip -n "$1" route add default via "$2.1"
  ip link set "h-$1" mtu 1400 up
  ip addr add "$2.1/24" dev "h-$1"
}
rmnetns() { ip link del "h-$1" 2>/dev/null || true; ip netns del "$1" 2>/dev/null || true; }

# serve DIR ADDR:PORT: a busybox httpd in the background, stopped by
# teardown. Its descriptor 3 is closed: bats waits for whoever holds it.
serve() {
  busybox httpd -f -p "$2" -h "$1" >/dev/null 2>&1 3>&- &
  WEB=$!
}

# hget URL: the body at URL, from the host (busybox's static wget crashes
# in its resolver: SIGSEGV, even for an address).
hget() {
  python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' "$1"
}
# GGET HOST PORT PATH, as a guest command: the body over busybox nc.
GGET='get() { printf "GET /%s HTTP/1.0\r\n\r\n" "$3" | nc -w 10 "$1" "$2" | tail -n 1; }; get'

# For every test (bats keeps the last teardown defined).
teardown() {
  deadline_report
  if [ -s "${VMM_ERR:-}" ]; then echo "# the VMM's stderr:"; cat "$VMM_ERR"; fi
  [ -z "${WEB:-}" ] || kill "$WEB" 2>/dev/null || true
  [ -z "${NETNS:-}" ] || { A delete --force "$CID" >/dev/null 2>&1; rmnetns "$NETNS"; }
  true
}

@test "the interface of the container's network namespace reaches the guest: address, route, MTU, MAC, traffic both ways" {
  ns=vmnet$$ NETNS=vmnet$$ CID=vmc-net
  rmnetns "$ns"; mknetns "$ns" 10.231.7
  mac=$(ip -n "$ns" -j link show eth0 | jq -r '.[0].address')
  mkdir -p "$WORK/www" && echo from-the-host > "$WORK/www/h.txt"
  serve "$WORK/www" 10.231.7.1:8081
  b=$(mkbundle net ".process.args = $(args /bin/sh -c 'echo from-the-guest > /tmp/g.txt; exec httpd -f -p 8080 -h /tmp')
    | .linux.namespaces |= map(if .type == \"network\" then .path = \"/run/netns/$ns\" else . end)")
  A run -d --bundle "$b" vmc-net </dev/null >/dev/null 2>&1
  run A exec vmc-net sh -c 'ip -o -4 addr show eth0; ip route; cat /sys/class/net/eth0/mtu /sys/class/net/eth0/address'
  trace
  [ "$status" -eq 0 ]
  [[ "$output" == *"inet 10.231.7.2/24"* ]]
  [[ "$output" == *"default via 10.231.7.1 dev eth0"* ]]
  [[ "$output" == *$'\n1400\n'"$mac"* ]]
  # The guest reaches the host, and the host reaches the guest's server.
  run A exec vmc-net sh -c "$GGET 10.231.7.1 8081 h.txt"
  trace
  [ "$output" = from-the-host ]
  for _ in $(seq 50); do hget http://10.231.7.2:8080/g.txt >/dev/null 2>&1 && break; sleep 0.2; done
  run hget http://10.231.7.2:8080/g.txt
  trace
  [ "$output" = from-the-guest ]
  # The veth's frames all go to the VM's TAP: a tc redirect both ways.
  run ip netns exec "$ns" tc filter show dev eth0 ingress
  [[ "$output" == *"Redirect to device amphi-tap0"* ]]
  A delete --force vmc-net
  nothing_left vmc-net
  # delete took the redirect off the interface the engine still owns, and
  # the TAP went with the VMM.
  [[ "$(ip netns exec "$ns" tc qdisc show dev eth0)" != *ingress* ]]
  ! ip -n "$ns" link show amphi-tap0 2>/dev/null
}

@test "a new network namespace without hooks, or none at all, leaves the guest its loopback only" {
  # IFF_UP | IFF_LOOPBACK: 0x9.
  b=$(mkbundle lo ".process.args = $(args /bin/sh -c 'echo $(ls /sys/class/net) $(cat /sys/class/net/lo/flags)')")
  run A run --bundle "$b" vmc-lo
  trace
  [ "$status" -eq 0 ]
  [ "$output" = "lo 0x9" ]
  jq '.linux.namespaces |= map(select(.type != "network"))' "$b/config.json" > "$b/c.json" && mv "$b/c.json" "$b/config.json"
  run A run --bundle "$b" vmc-lo
  trace
  [ "$status" -eq 0 ]
  [[ "$output" == *"lo 0x9" ]]
  [[ "$output" == *"loopback only"* ]]
  nothing_left vmc-lo
}

@test "two VM containers cannot share one network namespace: the second is refused by name and leaves nothing" {
  ns=vmnet2$$ NETNS=vmnet2$$ CID=vmc-net2a
  rmnetns "$ns"; mknetns "$ns" 10.231.8
  b=$(mkbundle net2 ".process.args = $(args sleep 100)
    | .linux.namespaces |= map(if .type == \"network\" then .path = \"/run/netns/$ns\" else . end)")
  A run -d --bundle "$b" vmc-net2a </dev/null >/dev/null 2>&1
  run A run -d --bundle "$b" vmc-net2b </dev/null
  trace
  [ "$status" -eq 5 ]
  [[ "$output" == *"/run/netns/$ns already holds amphi-tap0"* ]]
  nothing_left vmc-net2b
  A delete --force vmc-net2a
  nothing_left vmc-net2a
}

@test "VM templates: a run restores the cached template by default, each clone gets its own entropy and the host's time, and opting out boots cold" {
  cmd='head -c 16 /dev/urandom | od -An -tx1 | tr -d " \n"; echo; date +%s'
  b=$(mkbundle tpl ".process.args = $(args /bin/sh -c "$cmd")")
  # The first run builds the template if there is none; the next restore it.
  # (`run` may change a variable named i: the ID is fixed before it.)
  for id in vmc-tpl1 vmc-tpl2 vmc-tpl3; do
    run --separate-stderr A --debug run --bundle "$b" "$id"
    trace
    [ "$status" -eq 0 ]
    grep -q "create $id: restoring the VM template" <<<"$stderr"
    echo "${lines[0]}" >> "$WORK/tpl-random"
    now=$(date +%s)
    [ $(( now - ${lines[1]} )) -le 5 ]
    [ $(( ${lines[1]} - now )) -le 5 ]
    nothing_left "$id"
  done
  [ "$(sort -u "$WORK/tpl-random" | wc -l)" -eq 3 ]
  run "$AMPHI" vm template list --json
  trace
  [ "$(echo "$output" | jq 'length')" -ge 1 ]
  b=$(mkbundle tpl-off ".process.args = $(args /bin/true) | .annotations[\"run.amphi.vm.template\"] = \"false\"")
  run --separate-stderr A --debug --vm-template=true run --bundle "$b" vmc-tpl-off
  trace
  [ "$status" -eq 0 ]
  grep -q "cold boot: the annotation run.amphi.vm.template is false" <<<"$stderr"
  b=$(mkbundle tpl-flag ".process.args = $(args /bin/true)")
  run --separate-stderr A --debug --vm-template=false run --bundle "$b" vmc-tpl-flag
  trace
  [ "$status" -eq 0 ]
  grep -q "cold boot: templates are off" <<<"$stderr"
  # The annotation cannot turn them on against the global setting.
  b=$(mkbundle tpl-on ".process.args = $(args /bin/true) | .annotations[\"run.amphi.vm.template\"] = \"true\"")
  run --separate-stderr env AMPHI_VM_TEMPLATE=false "$AMPHI" --root "$ROOT" --debug run --bundle "$b" vmc-tpl-env
  trace
  [ "$status" -eq 0 ]
  grep -q "cold boot: templates are off" <<<"$stderr"
  b=$(mkbundle tpl-bad ".process.args = $(args /bin/true) | .annotations[\"run.amphi.vm.template\"] = \"maybe\"")
  run A run --bundle "$b" vmc-tpl-bad
  trace
  [ "$status" -ne 0 ]
  [[ "$output" == *"run.amphi.vm.template"* ]]
  nothing_left vmc-tpl-bad
}

@test "VM templates: exec works in a restored VM, and vm check --template restores and reports it" {
  b=$(mkbundle tpl-exec ".process.args = $(args /bin/sleep 1000)")
  A run -d --bundle "$b" vmc-tpl-exec </dev/null >/dev/null 2>&1
  run A exec vmc-tpl-exec /bin/sh -c 'echo in-clone; exit 3'
  trace
  [ "$status" -eq 3 ]
  [ "$output" = in-clone ]
  A delete --force vmc-tpl-exec
  nothing_left vmc-tpl-exec
  run --separate-stderr "$AMPHI" vm check --template --json
  trace
  [ "$status" -eq 0 ]
  echo "$output" | jq -e '.template != null and .timings.restore_to_handshake_ms > 0 and .agent_protocol == "1.6"'
}
