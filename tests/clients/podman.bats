#!/usr/bin/env bats
# podman 4.3 driving amphi through conmon, with no image (--rootfs).
#
# Run by scripts/test.sh as root: bats tests/clients/podman.bats
# AMPHI (default: amphi on PATH) selects the binary under test. This host
# lacks CAP_SYS_RESOURCE, so podman's default rlimits (NOFILE and NPROC
# raised to large values for root containers) cannot be granted; every run
# passes --ulimit values under the host's hard limits.

bats_require_minimum_version 1.5.0

setup_file() {
  export AMPHI=${AMPHI:-$(command -v amphi)}
  [ -x "$AMPHI" ] || skip "amphi is not installed (scripts/setup.sh)"
  command -v podman >/dev/null || skip "podman is not installed"
  export ROOTFS=$(mktemp -d /tmp/amphi-podman-rootfs.XXXXXX)
  cp -a "$BATS_TEST_DIRNAME/../../bundles/hello/rootfs/." "$ROOTFS/"
  export P="podman --runtime $AMPHI"
  export O="--network none --ulimit nofile=1024:1024 --ulimit nproc=4096:4096 --rootfs $ROOTFS"
}

teardown_file() {
  for c in amphi-bats-d amphi-bats-e amphi-bats-f amphi-bats-m amphi-bats-vm amphi-bats-vmnet1 amphi-bats-vmnet2; do
    podman rm -f "$c" >/dev/null 2>&1 || true
  done
  rm -rf "$ROOTFS"
}

# The cgroup directory of a podman container in one v1 hierarchy (cgroupfs
# manager: /libpod_parent/libpod-<id>), or its cgroup2 directory.
cgfile() {
  local id file=$2 d
  id=$($P inspect -f '{{.Id}}' "$1")
  for d in /sys/fs/cgroup/*/libpod_parent/libpod-"$id" /sys/fs/cgroup/libpod_parent/libpod-"$id"; do
    [ -f "$d/$file" ] && { cat "$d/$file"; return 0; }
  done
  return 1
}

v2() { [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; }
# The CFS quota in microseconds, from either hierarchy.
cpu_quota() {
  if v2; then cgfile "$1" cpu.max | cut -d' ' -f1; else cgfile "$1" cpu.cfs_quota_us; fi
}
frozen() {
  if v2; then [ "$(cgfile "$1" cgroup.freeze)" = 1 ]; else [ "$(cgfile "$1" freezer.state)" = FROZEN ]; fi
}

@test "run --rm prints the workload's output" {
  run $P run --rm $O /bin/echo hello from podman
  [ "$status" -eq 0 ]
  [ "$output" = "hello from podman" ]
}

@test "run --rm reports the workload's exit code" {
  run $P run --rm $O /bin/sh -c 'exit 7'
  [ "$status" -eq 7 ]
}

@test "a missing command is exit code 127, as with runc" {
  run -127 $P run --rm $O /no/such/program
  [[ "$output" == *"not found"* ]]
}

@test "the container gets its own hostname, pid and mount namespaces" {
  run $P run --rm --hostname amphi-pod $O /bin/sh -c 'hostname; echo $$; test -e /proc/1/exe && grep -c " / " /proc/self/mountinfo'
  [ "$status" -eq 0 ]
  [ "${lines[0]}" = "amphi-pod" ]
  [ "${lines[1]}" = "1" ]
}

@test "run -d, then stop and rm" {
  run $P run -d --name amphi-bats-d $O /bin/sleep 1000
  [ "$status" -eq 0 ]
  run $P inspect -f '{{.State.Status}}' amphi-bats-d
  [ "$output" = "running" ]
  # sleep is PID 1 and ignores SIGTERM: podman escalates to SIGKILL.
  run $P stop -t 1 amphi-bats-d
  [ "$status" -eq 0 ]
  run $P inspect -f '{{.State.Status}} {{.State.ExitCode}}' amphi-bats-d
  [ "$output" = "exited 137" ]
  run $P rm amphi-bats-d
  [ "$status" -eq 0 ]
  run $P ps -a --filter name=amphi-bats-d -q
  [ -z "$output" ]
}

@test "a terminal: run -t gets a pty" {
  run $P run --rm -t $O /bin/sh -c 'test -t 0 && test -t 1 && echo tty'
  [ "$status" -eq 0 ]
  [[ "$output" == *tty* ]]
}

@test "an rlimit above the host's hard limit is refused with the fix" {
  bnd=$(awk '/^CapBnd/ {print $2}' /proc/self/status)
  if (( (16#$bnd >> 24) & 1 )); then
    skip "this host grants CAP_SYS_RESOURCE, so the limit can be raised"
  fi
  hard=$(ulimit -Hn)
  run $P run --rm --network none --ulimit nofile=$((hard + 1000)):$((hard + 1000)) --ulimit nproc=4096:4096 --rootfs "$ROOTFS" /bin/true
  [ "$status" -ne 0 ]
  [[ "$output" == *"RLIMIT_NOFILE"*"CAP_SYS_RESOURCE"* ]]
}

@test "--annotation run.amphi.isolation=container runs a container" {
  run $P run --rm --annotation run.amphi.isolation=container $O /bin/sh -c 'echo isolated; test -e /proc/1/exe'
  [ "$status" -eq 0 ]
  [ "$output" = "isolated" ]
}

@test "run --read-only, --cap-drop" {
  run $P run --rm --read-only $O /bin/sh -c 'touch /x 2>&1 | grep -c Read-only'
  [ "$status" -eq 0 ]
  [ "$output" = "1" ]
  run $P run --rm --cap-drop all --cap-add kill $O /bin/grep CapEff /proc/self/status
  [ "$status" -eq 0 ]
  [ "$output" = "$(printf 'CapEff:\t0000000000000020')" ]
}

@test "exec, exec -t, top, stats, logs on a running container" {
  run $P run -d --name amphi-bats-e --cpus 0.5 --memory 64m --pids-limit 32 $O /bin/sh -c 'echo started; while :; do sleep 0.2; done'
  [ "$status" -eq 0 ]
  run $P exec amphi-bats-e /bin/sh -c 'echo in-container; exit 3'
  [ "$status" -eq 3 ]
  [ "$output" = "in-container" ]
  run $P exec -t amphi-bats-e /bin/sh -c 'test -t 0 && test -t 1 && echo tty'
  [ "$status" -eq 0 ]
  [[ "$output" == *tty* ]]
  run $P exec -u 65534 -w /tmp -e FOO=bar amphi-bats-e /bin/sh -c 'id -u; pwd; echo $FOO'
  [ "$status" -eq 0 ]
  [ "${lines[0]}" = "65534" ]
  [ "${lines[1]}" = "/tmp" ]
  [ "${lines[2]}" = "bar" ]
  run $P top amphi-bats-e
  [ "$status" -eq 0 ]
  [[ "${lines[0]}" == *PID* ]]
  [[ "$output" == *sleep* || "$output" == *"/bin/sh"* ]]
  run $P stats --no-stream --format '{{.Name}} {{.MemUsage}} {{.PIDs}}' amphi-bats-e
  [ "$status" -eq 0 ]
  [[ "$output" == "amphi-bats-e "* ]]
  [[ "$output" == *"64MB"* || "$output" == *"67.11MB"* || "$output" == *"64MiB"* ]]
  run $P logs amphi-bats-e
  [ "$status" -eq 0 ]
  [ "${lines[0]}" = "started" ]
  run cgfile amphi-bats-e pids.max
  [ "$output" = "32" ]
  run cpu_quota amphi-bats-e
  [ "$output" = "50000" ]
}

@test "a missing program in exec is 127 with amphi's message" {
  run -127 $P exec amphi-bats-e /no/such/program
  [ "$status" -eq 127 ]
  [[ "$output" == *"/no/such/program"* ]]
}

@test "pause and unpause" {
  run $P pause amphi-bats-e
  [ "$status" -eq 0 ]
  run $P inspect -f '{{.State.Status}}' amphi-bats-e
  [ "$output" = "paused" ]
  frozen amphi-bats-e
  run $P unpause amphi-bats-e
  [ "$status" -eq 0 ]
  run $P inspect -f '{{.State.Status}}' amphi-bats-e
  [ "$output" = "running" ]
}

@test "update changes the limits" {
  run $P update --cpu-quota 40000 --cpu-period 100000 amphi-bats-e
  [ "$status" -eq 0 ]
  run cpu_quota amphi-bats-e
  [ "$output" = "40000" ]
}

@test "a memory limit the kernel refuses shows amphi's message" {
  # cgroup2 takes any memory.max and reclaims or OOM-kills instead.
  v2 && skip "cgroup v1 only: cgroup2 never refuses a memory.max below the usage"
  run $P run -d --name amphi-bats-m --memory 64m --memory-swap 64m $O /bin/sh -c 'dd if=/dev/zero of=/dev/shm/fill bs=1M count=24 2>/dev/null; sleep 1000'
  [ "$status" -eq 0 ]
  for _ in $(seq 50); do
    u=$(cgfile amphi-bats-m memory.usage_in_bytes || echo 0)
    [ "$u" -gt 20000000 ] && break
    sleep 0.1
  done
  run $P update --memory 8m --memory-swap 8m amphi-bats-m
  [ "$status" -ne 0 ]
  [[ "$output" == *"memory.limit"* ]]
  [[ "$output" == *"already uses"* ]]
}

@test "stop, kill and rm -f" {
  run $P stop -t 1 amphi-bats-e
  [ "$status" -eq 0 ]
  run $P rm amphi-bats-e
  [ "$status" -eq 0 ]
  run $P run -d --name amphi-bats-f $O /bin/sleep 1000
  [ "$status" -eq 0 ]
  run $P kill amphi-bats-f
  [ "$status" -eq 0 ]
  run $P wait amphi-bats-f
  [ "$output" = "137" ]
  run $P rm -f --ignore amphi-bats-f amphi-bats-m
  [ "$status" -eq 0 ]
  run $P ps -a --filter name=amphi-bats -q
  echo "left: $output"
  [ -z "$output" ]
}

@test "a bad --user is refused and named" {
  run $P run --rm --user nosuchuser $O /bin/true
  [ "$status" -ne 0 ]
  [[ "$output" == *nosuchuser* ]]
}

# --- VM isolation: the same podman, the annotation picks the microVM ----------
# Needs a /dev/kvm that runs stock kernels: CI runs these in the full test
# host (tests/testhost, suite podman); on a PVM host they say why they skip.
vm_or_skip() {
  if [ -e /sys/module/kvm_pvm ] || ! grep -qwE 'vmx|svm' /proc/cpuinfo || [ ! -c /dev/kvm ]; then
    skip "no /dev/kvm that runs stock kernels here (the testhost tier runs this)"
  fi
  VM="--annotation run.amphi.isolation=vm"
}
# Every podman call below has a time limit, so a hang fails its test (and
# shows what was running) instead of stalling the suite.
teardown() {
  if [ -n "${VM:-}" ] && [ "${status:-0}" = 124 ]; then
    ps -eo pid,ppid,stat,pcpu,etimes,args | grep -E 'amphi|conmon|podman' | grep -v grep | cut -c1-200
  fi
}

@test "vm: run --rm prints the output of a workload in its own kernel, and its exit code" {
  vm_or_skip
  run timeout 240 $P run --rm $VM $O /bin/sh -c 'uname -r; exit 7'
  [ "$status" -eq 7 ]
  [[ "${lines[0]}" == *cloud-amd64 ]]
  [ "${lines[0]}" != "$(uname -r)" ]
}

@test "vm: run -d, exec (own stdio and exit code), stop (137) and rm" {
  vm_or_skip
  run timeout 240 $P run -d --name amphi-bats-vm $VM $O /bin/sleep 1000
  [ "$status" -eq 0 ]
  run timeout 240 $P inspect -f '{{.State.Status}}' amphi-bats-vm
  [ "$output" = "running" ]
  run timeout 240 $P exec amphi-bats-vm /bin/sh -c 'echo in-vm; exit 3'
  [ "$status" -eq 3 ]
  [ "$output" = "in-vm" ]
  run timeout 240 $P exec -t amphi-bats-vm /bin/sh -c 'test -t 1 && echo tty'
  [ "$status" -eq 0 ]
  [[ "$output" == *tty* ]]
  run timeout 240 $P stop -t 1 amphi-bats-vm
  [ "$status" -eq 0 ]
  run timeout 240 $P inspect -f '{{.State.Status}} {{.State.ExitCode}}' amphi-bats-vm
  [ "$output" = "exited 137" ]
  run timeout 240 $P rm amphi-bats-vm
  [ "$status" -eq 0 ]
}

@test "vm: a bad VM setting is refused with amphi's message" {
  vm_or_skip
  run timeout 240 $P run --rm $VM --annotation run.amphi.vm.memory=12x $O /bin/true
  [ "$status" -ne 0 ]
  [[ "$output" == *run.amphi.vm.memory* ]]
}

# wait_get URL: the body at URL, retried for up to 20 s (a server in a VM
# that was just started may not listen yet). Not busybox's static wget,
# which crashes in its resolver.
wait_get() {
  python3 - "$1" <<'PY'
import sys, time, urllib.request
for i in range(40):
    try:
        sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())
        sys.exit(0)
    except OSError:
        time.sleep(0.5)
sys.exit(1)
PY
}
# GGET HOST PORT PATH, as a guest command: the body over busybox nc.
GGET='get() { printf "GET /%s HTTP/1.0\r\n\r\n" "$3" | nc -w 10 "$1" "$2" | tail -n 1; }; get'

@test "vm: podman's bridge network reaches the VM: the test host and a second VM container reach its server, it reaches the test host's" {
  vm_or_skip
  ON="--ulimit nofile=1024:1024 --ulimit nproc=4096:4096 --rootfs $ROOTFS"
  podman rm -f amphi-bats-vmnet1 amphi-bats-vmnet2 >/dev/null 2>&1 || true
  run timeout 240 $P run -d --name amphi-bats-vmnet1 $VM $ON /bin/sh -c 'echo from-vm1 > /tmp/a.txt; exec httpd -f -p 8080 -h /tmp'
  [ "$status" -eq 0 ]
  ip=$($P inspect -f '{{.NetworkSettings.IPAddress}}' amphi-bats-vmnet1)
  [ -n "$ip" ]
  # The guest has the address podman's network gave the container.
  run timeout 60 $P exec amphi-bats-vmnet1 sh -c 'ip -o -4 addr show eth0; ip route'
  echo "$output"
  [[ "$output" == *"inet $ip/"* ]]
  gw=$(echo "$output" | awk '/^default via/ {print $3}')
  [ -n "$gw" ]
  # The test host reaches the server in the VM.
  run wait_get "http://$ip:8080/a.txt"
  [ "$output" = from-vm1 ]
  # The VM reaches a server of the test host's, on the bridge's address.
  www=$(mktemp -d) && echo from-the-host > "$www/h.txt"
  # (Descriptor 3 closed: bats would wait for the server otherwise.)
  busybox httpd -f -p "$gw:8082" -h "$www" >/dev/null 2>&1 3>&- & web=$!
  run timeout 60 $P exec amphi-bats-vmnet1 sh -c "$GGET $gw 8082 h.txt"
  kill "$web"; rm -rf "$www"
  [ "$output" = from-the-host ]
  # A second VM container reaches the first.
  run timeout 240 $P run --rm --name amphi-bats-vmnet2 $VM $ON /bin/sh -c "$GGET $ip 8080 a.txt"
  echo "$output"
  [ "$status" -eq 0 ]
  [ "$output" = from-vm1 ]
  run timeout 240 $P rm -f amphi-bats-vmnet1
  [ "$status" -eq 0 ]
}
