#!/usr/bin/env bats
# VM pods: a CRI pod's sandbox boots one microVM and the pod's other
# containers run inside it (src/vm/sandbox/pod.rs), driven through the
# runc command line with the annotations containerd's CRI sets. The tests
# share one pod and run in order. Needs a /dev/kvm that runs stock
# kernels, so it runs inside the nested test host; elsewhere every test
# says why it skips.
#
# AMPHI: a static amphi with a static amphi-agent beside it
# (tests/vm/build-static.sh). HELLO_ROOTFS: the busybox rootfs the bundles
# copy (default bundles/hello/rootfs of this checkout, which a worktree
# may lack).

bats_require_minimum_version 1.5.0
load deadline

setup_file() {
  export AMPHI=${AMPHI:-$(command -v amphi)}
  export REPO=$(cd "$BATS_TEST_DIRNAME/../.." && pwd)
  export ROOT=$(mktemp -d /tmp/amphi-pod-root.XXXXXX)
  export WORK=$(mktemp -d /tmp/amphi-pod-work.XXXXXX)
}

teardown_file() {
  for id in $("$AMPHI" --root "$ROOT" list -q 2>/dev/null); do
    "$AMPHI" --root "$ROOT" delete --force "$id" >/dev/null 2>&1 || true
  done
  rm -rf "$ROOT" "$WORK"
}

teardown() {
  deadline_report
}

setup() {
  [ -x "$AMPHI" ] || skip "amphi is not installed (scripts/setup.sh)"
  if [ -e /sys/module/kvm_pvm ] || ! grep -qwE 'vmx|svm' /proc/cpuinfo || [ ! -c /dev/kvm ]; then
    skip "no /dev/kvm that runs stock kernels here (run inside the nested test host)"
  fi
  deadline_watch "$ROOT"
}

A() { "$AMPHI" --root "$ROOT" "$@"; }

trace() { echo "status=$status"; echo "output=$output"; }

args() { jq -cn '$ARGS.positional' --args -- "$@"; }

# mkbundle NAME TYPE JQ-FILTER: bundles/hello in VM isolation as a CRI pod's
# TYPE ("sandbox" or "container") of the pod "pod1"; prints its path.
mkbundle() {
  local b=$WORK/$1
  rm -rf "$b"; mkdir -p "$b"
  cp -a "${HELLO_ROOTFS:-$REPO/bundles/hello/rootfs}" "$b/rootfs"
  jq --arg type "$2" '.annotations["run.amphi.isolation"] = "vm"
      | .annotations["io.kubernetes.cri.container-type"] = $type
      | .annotations["io.kubernetes.cri.sandbox-id"] = "pod1"
      | .root.readonly = false | '"$3" "$REPO/bundles/hello/config.json" > "$b/config.json"
  echo "$b"
}

# member NAME JQ-FILTER: a container of pod1 that shares its sandbox's
# network, IPC and UTS namespaces by path, as the CRI asks.
member() {
  local pid
  pid=$(A state pod1 | jq -r .pid)
  mkbundle "$1" container '.linux.namespaces = [{type: "pid"}, {type: "mount"}, {type: "cgroup"},
      {type: "network", path: "/proc/'"$pid"'/ns/net"}, {type: "ipc", path: "/proc/'"$pid"'/ns/ipc"},
      {type: "uts", path: "/proc/'"$pid"'/ns/uts"}] | del(.hostname) | '"$2"
}

status_of() { A state "$1" | jq -r .status; }

wait_status() { # ID STATUS
  for _ in $(seq 300); do [ "$(status_of "$1")" = "$2" ] && return 0; sleep 0.1; done
  status_of "$1"; return 1
}

vmm_pid() { A state pod1 | jq -r .pid; }

@test "the sandbox boots the pod's VM and two containers run in it: one VMM, one kernel" {
  b=$(mkbundle pod1 sandbox ".hostname = \"podhost\" | .process.args = $(args /bin/sleep 100000)")
  A create --bundle "$b" pod1 </dev/null >/dev/null 2>&1
  A start pod1
  b=$(member web ".process.args = $(args /bin/httpd -f -p 8080 -h /www)")
  mkdir -p "$b/rootfs/www"
  echo served-by-web > "$b/rootfs/www/index.html"
  # stdio to /dev/null: the relay that stands for the member keeps what
  # it was given open for the member's life.
  A create --bundle "$b" web </dev/null >"$WORK/web.create" 2>&1 || { cat "$WORK/web.create"; false; }
  [ "$(status_of web)" = created ]
  A start web
  [ "$(status_of web)" = running ]
  b=$(member idle ".process.args = $(args /bin/sleep 100000)")
  A create --bundle "$b" idle </dev/null >/dev/null 2>&1
  A start idle
  [ "$(status_of idle)" = running ]
  # One guest kernel for the three of them.
  boot=$(A exec pod1 cat /proc/sys/kernel/random/boot_id)
  [ -n "$boot" ]
  [ "$(A exec web cat /proc/sys/kernel/random/boot_id)" = "$boot" ]
  [ "$(A exec idle cat /proc/sys/kernel/random/boot_id)" = "$boot" ]
  # One VMM: only the sandbox's pid is a process with a VMM's root.
  n=0
  for p in "$(vmm_pid)" "$(A state web | jq -r .pid)" "$(A state idle | jq -r .pid)"; do
    [ -e "/proc/$p/root/console.log" ] && n=$((n + 1))
  done
  [ "$n" -eq 1 ]
  # Each member's files are under pod/<id> of the VMM's share.
  [ "$(ls "/proc/$(vmm_pid)/root/share/pod" | tr '\n' ' ')" = "idle web " ]
  # Nothing of it is mounted on the host.
  ! grep -q "$ROOT" /proc/self/mountinfo
}

@test "the pod's containers share its loopback, IPC and UTS namespaces, each with its own mounts" {
  run A exec idle wget -qO- http://127.0.0.1:8080/index.html
  trace
  [ "$status" -eq 0 ]
  [ "$output" = served-by-web ]
  for ns in net ipc uts; do
    s=$(A exec pod1 readlink /proc/self/ns/$ns)
    [ "$(A exec web readlink /proc/self/ns/$ns)" = "$s" ]
    [ "$(A exec idle readlink /proc/self/ns/$ns)" = "$s" ]
  done
  [ "$(A exec idle hostname)" = podhost ]
  [ "$(A exec web readlink /proc/self/ns/mnt)" != "$(A exec idle readlink /proc/self/ns/mnt)" ]
  # A file one member writes is in its own rootfs only.
  A exec idle sh -c 'echo mine > /tmp/idle-file'
  [ "$(cat "$WORK/idle/rootfs/tmp/idle-file")" = mine ]
  [ ! -e "$WORK/web/rootfs/tmp/idle-file" ]
}

@test "run: a member's output and exit code come back" {
  b=$(member exit7 ".process.args = $(args /bin/sh -c 'echo from-member; hostname; exit 7')")
  run A run --bundle "$b" exit7
  trace
  [ "$status" -eq 7 ]
  [ "${lines[0]}" = from-member ]
  [ "${lines[1]}" = podhost ]
  # run deletes what it created.
  [ ! -e "$ROOT/exit7" ]
  [ "$(ls "/proc/$(vmm_pid)/root/share/pod" | tr '\n' ' ')" = "idle web " ]
}

@test "kill and delete of a member: the sandbox and the other member run on" {
  A kill idle KILL
  wait_status idle stopped
  A delete idle
  [ ! -e "$ROOT/idle" ]
  [ "$(ls "/proc/$(vmm_pid)/root/share/pod" | tr '\n' ' ')" = "web " ]
  # Its files are where they were on the host, untouched.
  [ "$(cat "$WORK/idle/rootfs/tmp/idle-file")" = mine ]
  [ "$(status_of pod1)" = running ]
  [ "$(status_of web)" = running ]
  [ "$(A exec web wget -qO- http://127.0.0.1:8080/index.html)" = served-by-web ]
  # The same id can be created again in the pod.
  b=$(member idle ".process.args = $(args /bin/true)")
  run A run --bundle "$b" idle
  trace
  [ "$status" -eq 0 ]
  [ ! -e "$ROOT/idle" ]
}

@test "a member is refused with what to do: no such sandbox, a host namespace" {
  b=$(member orphan ".annotations[\"io.kubernetes.cri.sandbox-id\"] = \"nopod\" | .process.args = $(args /bin/true)")
  run A create --bundle "$b" orphan
  trace
  [ "$status" -ne 0 ]
  [[ "$output" == *'sandbox "nopod" does not exist'*'create the sandbox first'* ]]
  [ ! -e "$ROOT/orphan" ]
  b=$(member hostipc ".linux.namespaces |= map(if .type == \"ipc\" then .path = \"/proc/1/ns/ipc\" else . end)
      | .process.args = $(args /bin/true)")
  run A create --bundle "$b" hostipc
  trace
  [ "$status" -ne 0 ]
  [[ "$output" == *"not the pod sandbox \"pod1\"'s"* ]]
  [ ! -e "$ROOT/hostipc" ]
  [ "$(ls "/proc/$(vmm_pid)/root/share/pod" | tr '\n' ' ')" = "web " ]
}

@test "deleting the sandbox stops the VM; its members stop, and nothing is left" {
  vmm=$(vmm_pid)
  A delete --force pod1
  [ ! -e "$ROOT/pod1" ]
  [ ! -e "/proc/$vmm" ] || [ "$(awk '{print $3}' "/proc/$vmm/stat")" = Z ]
  wait_status web stopped
  A delete web
  # Without its sandbox a member is refused.
  b=$(mkbundle late container ".process.args = $(args /bin/true)")
  run A create --bundle "$b" late
  trace
  [ "$status" -ne 0 ]
  [[ "$output" == *'sandbox "pod1" does not exist'* ]]
  [ -z "$(A list -q)" ]
  ! grep -q "$ROOT" /proc/self/mountinfo
  [ -z "$(find /sys/fs/cgroup -maxdepth 3 -name 'amphi-pod1' 2>/dev/null)" ]
}
