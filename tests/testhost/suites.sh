#!/usr/bin/env bash
# The testhost tier's suites, run INSIDE the full test host (pure cgroup2,
# /dev/kvm, real clients) by tests/testhost/run-tests.sh; see that script
# and docs/testing.md. Lean on purpose: under TCG every program start
# costs tens of milliseconds.
#
# Usage: suites.sh RESULTS_DIR SUITE...
#   selfcheck   the test host is what the tests need: cgroup2 alone with
#               every controller delegated, /dev/kvm where amphi vm check
#               boots a guest, a writable overlay, podman's bridge network
#               (with amphi as the runtime)
#   podman      bats tests/clients/podman.bats      (AMPHI=$TH_BIN/amphi)
#   containerd  tests/clients/containerd.sh         (SHIM_DIR=$TH_BIN)
#   cri         tests/cri/run.sh amphi: a pod through containerd's CRI
#               plugin, container isolation on pure cgroup2 (CRI_TEST_BIN=
#               $TH_CRI, built before the boot)
#   cri-vm      the same pod with the amphi-vm handler: one microVM for
#               the pod, its containers inside it
#   docker      dockerd with amphi as a runtime: run (bridge network),
#               exit code, run -d + stop + rm
#   cgroups     the root tests that need a pure cgroup2 host: the cargo
#               test binaries named in TH_TESTS, run with --ignored
#   vm          VM isolation: bats tests/vm/containers.bats (the runc
#               command line) and tests/vm/pod.bats (VM pods: a CRI
#               sandbox's VM runs the pod's containers), containerd
#               through both shims with every
#               container in a microVM (podman's and docker's VM checks
#               are in their suites)
#   bench       amphi bench --isolation both --suite quick --compare qemu:
#               JSON and HTML in RESULTS_DIR/bench, every step measured in
#               both (the boot step: amphi's VMM and QEMU microvm)
#   load-vm     20 VM lifecycles, 4 at a time: no failure, hang or leak
#               (tests/load/lifecycles.sh)
#   crash-vm    kill -9 of amphi commands in VM isolation, at every named
#               point, then at random moments up to 40 kills; nothing left
#               (tests/crash/kill9.sh)
#   oci-vm      the OCI validation suite in VM isolation, the programs in
#               OCI_VM_TESTS (a subset: the whole suite is one command in
#               docs/testing.md); tests/oci/known-failures-vm.txt lists
#               the failures expected there; the VMs restore a template
#   oci-vm-cold the same subset with templates off (--vm-template=false):
#               every VM boots cold
# Env: TH_BIN (static amphi, amphi-agent, containerd-shim-amphi-v2 side by
# side), TH_TESTS ("name=path ..."). Each suite's whole output goes to
# RESULTS_DIR/<suite>.log and to stdout; then one line per suite
#   # testhost SUITE: N passed, M failed, K skipped (Ts)
# (also appended to RESULTS_DIR/done as soon as the suite ends),
# and last
#   testhost: N passed, M failed, K skipped
# Exits non-zero if anything failed.
set -u
results=${1:?usage: suites.sh RESULTS_DIR SUITE...}
shift
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
mkdir -p "$results"

# --- counting -----------------------------------------------------------------
# TAP-ish lines ("ok ...", "not ok ...", "ok ... # skip why"): "P F S".
tap_counts() {
  awk '/^ok / { if (tolower($0) ~ /# skip/) s++; else p++ } /^not ok / { f++ } END { print p + 0, f + 0, s + 0 }' "$1"
}
# The last "N passed, M failed[, K skipped]" line: "P F S", or nothing.
total_counts() {
  grep -a -E '[0-9]+ passed, [0-9]+ failed' "$1" | tail -n 1 |
    sed -E 's/^(.*[^0-9])?([0-9]+) passed, ([0-9]+) failed(, ([0-9]+) skipped)?.*/\2 \3 \5/' |
    awk '{ print $1, $2, $3 + 0 }'
}

# --- suites ---------------------------------------------------------------------
check_n=0
check() { # NAME COMMAND...: one ok/not ok line
  local name=$1 out
  shift
  if out=$("$@" 2>&1); then
    echo "ok - $name"
  else
    echo "not ok - $name"
    printf '%s\n' "$out" | tail -n 15 | sed 's/^/#   /'
    return 1
  fi
}
only_cgroup2() {
  local m
  m=$(awk '$3 ~ /^cgroup/ {print $3, $2}' /proc/self/mounts)
  [ "$m" = "cgroup2 /sys/fs/cgroup" ] || { echo "cgroup mounts: $m"; return 1; }
}
delegated() {
  local have on
  have=$(tr ' ' '\n' < /sys/fs/cgroup/cgroup.controllers | sort)
  on=$(tr ' ' '\n' < /sys/fs/cgroup/cgroup.subtree_control | sort)
  [ -n "$have" ] && [ "$have" = "$on" ] || { echo "offered: $have; enabled: $on"; return 1; }
}
kvm() { [ -c /dev/kvm ] && grep -q '^kvm_amd ' /proc/modules; }
# A stock guest boots under the test host's KVM (the guest kernel from
# /var/lib/amphi/kernels, as amphi finds it by default).
vm_check() { "$TH_BIN/amphi" vm check --cache-dir /tmp/amphi-vm-cache --timeout 120; }
overlay_writes() {
  mkdir -p /var/lib/amphi/cache && touch /var/lib/amphi/cache/.testhost "$repo/target/.testhost" &&
    rm /var/lib/amphi/cache/.testhost "$repo/target/.testhost"
}
# podman's default network (a CNI bridge, veth, iptables through nftables)
# with amphi as the runtime: the container gets an address on the bridge,
# and the test host reaches it there.
bridge_network() {
  local rootfs name=testhost-net-$$ ip
  rootfs=$(mktemp -d)
  cp -a bundles/hello/rootfs/. "$rootfs/"
  podman --runtime "$TH_BIN/amphi" run -d --name "$name" --ulimit nofile=1024:1024 --rootfs "$rootfs" \
    /bin/sleep 600 >/dev/null || return 1
  ip=$(podman inspect -f '{{.NetworkSettings.IPAddress}}' "$name")
  echo "container address: $ip"
  busybox ping -c 1 -W 5 "$ip" || { podman rm -f -t 0 "$name"; return 1; }
  podman rm -f -t 0 "$name" >/dev/null && rm -rf "$rootfs"
}
suite_selfcheck() {
  check "cgroup2 alone is mounted at /sys/fs/cgroup" only_cgroup2
  check "every cgroup2 controller is enabled for children" delegated
  check "/dev/kvm is there (kvm_amd)" kvm
  check "amphi vm check boots a stock guest on it" vm_check
  check "writes land in the tmpfs overlay (/var/lib/amphi/cache, target/)" overlay_writes
  check "podman's bridge network works with amphi as the runtime" bridge_network
}
suite_podman() { AMPHI=$TH_BIN/amphi bats --tap tests/clients/podman.bats; }
# dockerd 20.10 with amphi as an added runtime (containerd's runc shim
# drives it as its runtime binary), an image imported from the hello
# bundle (no registry: the test host has no network).
# amphi-vm: the same binary with --isolation vm (docker 20.10's run has no
# --annotation; a runtime with arguments is how its users pick one).
docker_up() {
  cat > /tmp/docker-daemon.json <<EOF
{"runtimes": {"amphi": {"path": "$TH_BIN/amphi"},
              "amphi-vm": {"path": "$TH_BIN/amphi", "runtimeArgs": ["--isolation", "vm"]}}}
EOF
  dockerd --config-file /tmp/docker-daemon.json > "$results/dockerd.log" 2>&1 &
  for _ in $(seq 300); do docker version > /dev/null 2>&1 && break; sleep 0.2; done
  docker version > /dev/null || { tail -n 5 "$results/dockerd.log"; return 1; }
  tar -C bundles/hello/rootfs -c . | docker import - amphi-hello > /dev/null
}
docker_run() {
  local out
  out=$(docker run --rm --runtime amphi amphi-hello /bin/sh -c 'echo hello from docker; ip -4 -o addr show eth0') || return 1
  echo "$out"
  [[ $out == "hello from docker"*"inet 172."* ]]
}
docker_exit() {
  docker run --rm --runtime amphi --network none amphi-hello /bin/sh -c 'exit 5'
  [ $? = 5 ]
}
docker_detached() {
  docker run -d --name testhost-d --runtime amphi amphi-hello /bin/sleep 1000 > /dev/null &&
    [ "$(docker inspect -f '{{.State.Status}}' testhost-d)" = running ] &&
    docker stop -t 1 testhost-d > /dev/null &&
    [ "$(docker inspect -f '{{.State.ExitCode}}' testhost-d)" = 137 ] &&
    docker rm testhost-d > /dev/null &&
    [ -z "$(ls /run/docker/runtime-*/moby 2>/dev/null)" ] # amphi's state for docker's containers
}
docker_down() {
  local pid
  pid=$(cat /run/docker.pid 2>/dev/null) || return 0
  kill "$pid"
  while [ -e "/proc/$pid" ]; do sleep 0.2; done
}
docker_vm() {
  local out rc
  out=$(docker run --rm --runtime amphi-vm --network none amphi-hello /bin/sh -c 'uname -r; exit 6')
  rc=$?
  echo "$out"
  [ $rc = 6 ] || { echo "exit status $rc, want 6"; return 1; }
  [[ $out == *cloud-amd64 ]] && [ "$out" != "$(uname -r)" ]
}
# docker's bridge network in a VM: libnetwork's prestart hook moves the
# veth into the VMM's namespace, amphi splices it to the VM. The test host
# and a second VM container reach a server in the first; it reaches one
# of the test host's on docker0.
docker_get() { # URL: retried while the server in a new VM comes up (python:
  # busybox's static wget crashes in its resolver)
  python3 -c 'import sys, time, urllib.request
for i in range(40):
    try:
        sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode()); sys.exit(0)
    except OSError:
        time.sleep(0.5)
sys.exit(1)' "$1"
}
# The body at http://HOST:PORT/PATH, as a command in a guest (busybox nc).
GGET='get() { printf "GET /%s HTTP/1.0\r\n\r\n" "$3" | nc -w 10 "$1" "$2" | tail -n 1; }; get'
docker_vm_network() {
  local ip gw out www web rc=0
  docker run -d --name testhost-vmnet --runtime amphi-vm amphi-hello \
    /bin/sh -c 'echo from-docker-vm > /tmp/d.txt; exec httpd -f -p 8080 -h /tmp' > /dev/null || return 1
  ip=$(docker inspect -f '{{.NetworkSettings.IPAddress}}' testhost-vmnet)
  gw=$(docker inspect -f '{{.NetworkSettings.Gateway}}' testhost-vmnet)
  echo "container $ip, gateway $gw"
  out=$(docker exec testhost-vmnet ip -o -4 addr show eth0) && echo "$out"
  [[ $out == *"inet $ip/"* ]] || rc=1
  out=$(docker_get "http://$ip:8080/d.txt") && echo "host -> vm: $out"
  [ "$out" = from-docker-vm ] || rc=1
  www=$(mktemp -d) && echo from-the-host > "$www/h.txt"
  busybox httpd -f -p "$gw:8083" -h "$www" > /dev/null 2>&1 & web=$!
  out=$(docker exec testhost-vmnet sh -c "$GGET $gw 8083 h.txt") && echo "vm -> host: $out"
  kill "$web"; rm -rf "$www"
  [ "$out" = from-the-host ] || rc=1
  out=$(docker run --rm --runtime amphi-vm amphi-hello /bin/sh -c "$GGET $ip 8080 d.txt") && echo "vm -> vm: $out"
  [ "$out" = from-docker-vm ] || rc=1
  docker rm -f testhost-vmnet > /dev/null || rc=1
  return $rc
}
suite_docker() {
  check "dockerd starts with amphi as a runtime" docker_up || { docker_down; return 0; }
  check "docker run --rm prints the output; the container is on docker0" docker_run
  check "docker run --rm reports the exit code" docker_exit
  check "docker run -d, stop (137) and rm leave nothing behind" docker_detached
  check "docker run --runtime amphi-vm: a microVM with its own kernel; its exit code" docker_vm
  check "docker's bridge network reaches a VM container: test host <-> VM, VM -> VM" docker_vm_network
  docker_down
}
suite_containerd() { SHIM_DIR=$TH_BIN tests/clients/containerd.sh; }
suite_cri() { SHIM_DIR=$TH_BIN CRI_TEST_BIN=$TH_CRI tests/cri/run.sh amphi; }
suite_cri-vm() { SHIM_DIR=$TH_BIN CRI_TEST_BIN=$TH_CRI tests/cri/run.sh amphi-vm; }
suite_vm() {
  local rc=0
  AMPHI=$TH_BIN/amphi bats --tap tests/vm/containers.bats tests/vm/pod.bats || rc=1
  SHIM_DIR=$TH_BIN CONTAINERD_ISOLATION=vm tests/clients/containerd.sh || rc=1
  return $rc
}
# Lifecycle (create, start, state, kill, delete, pid file), hooks, mounts
# and the process settings runtimetest checks inside the guest.
OCI_VM_TESTS="create start state kill killsig kill_no_effect delete pidfile hooks_stdin prestart_fail
poststart_fail poststop mounts process process_user process_rlimits process_capabilities root_readonly_true
linux_sysctl linux_seccomp"
# validation.sh ends with "P passed, F failed" and exits 0 when every
# failure is a known one: then the suite's last line counts them apart.
# oci_vm NAME GLOBAL_ARGS: the subset, its logs under RESULTS_DIR/NAME.
oci_vm() {
  local name=$1 args=$2 rc counts
  OCI_RUNTIME_ARGS="--isolation vm $args" OCI_TIMEOUT=180 OCI_OUT=$results/$name \
    tests/oci/validation.sh --known tests/oci/known-failures-vm.txt "$TH_BIN/amphi" $OCI_VM_TESTS |
    tee "$results/$name.raw"
  rc=${PIPESTATUS[0]}
  counts=$(total_counts "$results/$name.raw")
  [ "$rc" = 0 ] && [ -n "$counts" ] &&
    echo "$name: ${counts%% *} passed, 0 failed ($(echo "$counts" | awk '{print $2}') known failures)"
  return "$rc"
}
# The VMs restore a template (the default); the same subset with cold
# boots must pass the same.
suite_oci-vm() { oci_vm oci-vm ""; }
suite_oci-vm-cold() { oci_vm oci-vm-cold "--vm-template=false"; }
# amphi bench in both isolations, the quick suite with 1 run: the results
# and the report land in RESULTS_DIR/bench (the bench tier screenshots the
# report on the host, where chromium runs at native speed).
bench_both() {
  mkdir -p "$results/bench"
  "$TH_BIN/amphi" bench --isolation both --suite quick --runs 1 --warmup 0 --density 1,2 --compare qemu \
    --json "$results/bench/results.json" --html "$results/bench/report.html" 2>&1 | tee "$results/bench/output.txt"
  return "${PIPESTATUS[0]}"
}
# Every step has a figure for both isolations (the boot step: amphi's VMM
# and QEMU microvm), with 1 sample (one run: this checks that every step
# works in the test host; docs/benchmarks.md has the measurements), none failed.
bench_complete() {
  local r=$results/bench/results.json
  jq -e '[.steps[].series[] | select(.error != null)] | length == 0' "$r" >/dev/null &&
  jq -e '.steps | length == 26' "$r" >/dev/null &&
  jq -e 'all(.steps[]; ([.series[].subject] | unique) ==
      (if .group == "boot" then ["qemu-microvm", "vm"] else ["container", "vm"] end))' "$r" >/dev/null &&
  jq -e 'all(.steps[].series[]; (.samples | length) == 1)' "$r" >/dev/null ||
    { jq -c '.steps[] | {id, series: [.series[] | {subject, x, n: (.samples | length), error}]}' "$r"; return 1; }
}
bench_clean() {
  local left
  left=$(ls -d /run/amphi-bench.* 2>/dev/null; ip netns list 2>/dev/null | grep amphi-bench;
    ps -eo stat=,pid=,comm= | awk '$1 !~ /^Z/ && $3 == "amphi-workload"')
  [ -z "$left" ] || { echo "left behind: $left"; return 1; }
}
suite_bench() {
  check "amphi bench --isolation both --compare qemu (quick suite) exits 0 with JSON and HTML" bench_both
  check "every step has figures for both isolations (boot: amphi and QEMU), none failed" bench_complete
  check "the run left no work directory, namespace or workload process" bench_clean
}
suite_load-vm() { AMPHI=$TH_BIN/amphi ISOLATION=vm tests/load/lifecycles.sh 20 4 0; }
# 40 kills: every named point (13) and 27 random moments; the container
# isolation's crash tier does 100, here each round boots a guest.
suite_crash-vm() { AMPHI=$TH_BIN/amphi ISOLATION=vm tests/crash/kill9.sh 40; }
suite_cgroups() {
  local t name bin rc=0
  for t in $TH_TESTS; do
    name=${t%%=*} bin=${t#*=}
    echo "# $name: $bin --ignored"
    "$bin" --ignored --show-output --test-threads=2 > "$results/cgroups-$name.raw" 2>&1 || rc=1
    # The failures and the result line; passing tests' output stays in the raw log.
    awk '/^failures:$/ {p = 1} /^test result:/ {print; p = 0} p' "$results/cgroups-$name.raw"
    awk -v prefix="$name" -f tests/libtest-summary.awk "$results/cgroups-$name.raw"
  done
  return $rc
}

# --- pins -------------------------------------------------------------------------
# The test host's kernel patches its own text (static keys) each time some
# count goes from 0 to 1 or back, and the stalls (docs/testing.md, "A
# stalled test host") come while it does. Two such counts flip with every
# VM and every container the suites make: KVM's apic_sw_disabled (each new
# vCPU's APIC starts software-disabled until its guest enables it) and the
# cgroup BPF device hook (each container's device program). Holding each
# above zero for the whole run keeps the kernel from patching at all:
#   - a VM whose one vCPU never runs (its APIC stays disabled);
#   - a created container, never started, whose cgroup keeps its device
#     program (cgroupsPath /testhost-pin, its own --root: no suite sees it).
pin_static_keys() {
  python3 - > /dev/null 2>&1 <<'PY' &
import fcntl, os, time
kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
vm = fcntl.ioctl(kvm, 0xAE01, 0)    # KVM_CREATE_VM
fcntl.ioctl(vm, 0xAE60, 0)          # KVM_CREATE_IRQCHIP
fcntl.ioctl(vm, 0xAE41, 0)          # KVM_CREATE_VCPU 0, never run
time.sleep(10 ** 8)
PY
  local b=/tmp/testhost-pin
  mkdir -p "$b"
  cp -a bundles/hello/rootfs "$b/"
  "$TH_BIN/amphi" spec --bundle "$b"
  jq '.process.terminal = false | .process.args = ["/bin/sleep", "100000000"] | .linux.cgroupsPath = "/testhost-pin"' \
    "$b/config.json" > "$b/c" && mv "$b/c" "$b/config.json"
  "$TH_BIN/amphi" --root /run/testhost-pin create --bundle "$b" pin < /dev/null > /dev/null 2>&1 ||
    echo "# testhost: the container pin could not be created (the run goes on without it)"
}
[ -c /dev/kvm ] && pin_static_keys

# --- run --------------------------------------------------------------------------
tp=0 tf=0 ts=0
lines=()
# A microVM of the test host that ends in a triple fault, or whose kernel
# panics, is taken for a fault of the nested emulation (docs/testing.md,
# "Faults of the nested emulation"): a suite that failed with one runs once
# more, and only that run counts. Both are said, with the first run's log kept.
emulation_fault() {
  grep -a -o -m 1 -E 'the VM ended \(triple_fault\)|the guest kernel panicked: .{0,80}' "$1"
}
for s in "$@"; do
  declare -F "suite_$s" >/dev/null || { echo "suites: unknown suite $s" >&2; exit 2; }
  echo "=== testhost suite $s"
  t0=$SECONDS
  "suite_$s" 2>&1 | tee "$results/$s.log"
  rc=${PIPESTATUS[0]}
  if [ "$rc" != 0 ] && fault=$(emulation_fault "$results/$s.log"); then
    mv "$results/$s.log" "$results/$s.emulation-fault.log"
    lines+=("# testhost: $s failed after a microVM fault ($fault): running $s once more")
    echo "${lines[-1]}" | tee -a "$results/done"
    "suite_$s" 2>&1 | tee "$results/$s.log"
    rc=${PIPESTATUS[0]}
  fi
  if [ "$s" = cgroups ]; then
    read -r p f k < <(grep -h -E '^[a-z_0-9]+: [0-9]+ passed' "$results/$s.log" |
      awk '{ p += $2; f += $4; s += $6 } END { print p + 0, f + 0, s + 0 }')
  elif [ "$s" = vm ]; then
    # Two scripts' ok/not ok lines (bats and containerd.sh): counted together.
    read -r p f k < <(tap_counts "$results/$s.log")
  else
    counts=$(total_counts "$results/$s.log")
    [ -n "$counts" ] || counts=$(tap_counts "$results/$s.log")
    read -r p f k <<< "$counts"
  fi
  # A suite that failed without a failed test still counts as one failure.
  [ "$rc" != 0 ] && [ "$f" = 0 ] && f=1
  # A suite that skipped as a whole says so ("SKIPPED: why"): one skip.
  [ "$p$f$k" = 000 ] && grep -q 'SKIPPED:' "$results/$s.log" && k=1
  tp=$((tp + p)) tf=$((tf + f)) ts=$((ts + k))
  lines+=("# testhost $s: $p passed, $f failed, $k skipped ($((SECONDS - t0))s)")
  # As each suite ends: what run-tests.sh keeps should the test host stall later.
  echo "${lines[-1]}" >> "$results/done"
done
echo
printf '%s\n' "${lines[@]}" | tee "$results/summary"
echo "testhost: $tp passed, $tf failed, $ts skipped" | tee -a "$results/summary"
[ "$tf" = 0 ]
