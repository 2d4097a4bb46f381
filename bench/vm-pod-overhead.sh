#!/usr/bin/env bash
# Host memory of an idle VM pod (docs/kubernetes.md, "Pod overhead of
# amphi-vm"): a sandbox that boots the pod's VM (or restores it from a
# template) and MEMBERS idle containers inside it, made through the runc
# command line with the annotations containerd's CRI sets. After SETTLE
# seconds idle it counts the PSS (/proc/<pid>/smaps_rollup) of every host
# process the pod has: the VMM, its threads' process and whatever it
# forked, and each member's relay. containerd's shim (one per pod, a few
# MiB) is not counted here. Needs a /dev/kvm that runs stock kernels: run
# it in the nested test host (tests/testhost/test-host.sh).
#
# Usage: bench/vm-pod-overhead.sh [-m MEMBERS] [-s SETTLE] [-c] AMPHI
#   -m  containers besides the sandbox (default 1)
#   -s  seconds idle before counting (default 10)
#   -c  boot the pod's VM cold (--vm-template=false) instead of restoring
#       a template
# Prints one line per process and "pod: N MiB PSS (...)".
set -euo pipefail
members=1 settle=10 cold=0
while getopts m:s:c o; do
  case $o in
    m) members=$OPTARG ;;
    s) settle=$OPTARG ;;
    c) cold=1 ;;
    *) echo "usage: $0 [-m MEMBERS] [-s SETTLE] [-c] AMPHI" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
amphi=${1:?usage: $0 [-m MEMBERS] [-s SETTLE] [-c] AMPHI}
repo=$(cd "$(dirname "$0")/.." && pwd)
root=$(mktemp -d /tmp/amphi-podmem-root.XXXXXX)
work=$(mktemp -d /tmp/amphi-podmem-work.XXXXXX)
flags=()
[ "$cold" = 1 ] && flags=(--vm-template=false)
A() { "$amphi" --root "$root" "${flags[@]}" "$@"; }
cleanup() {
  for id in $("$amphi" --root "$root" list -q 2>/dev/null); do
    "$amphi" --root "$root" delete --force "$id" >/dev/null 2>&1 || true
  done
  rm -rf "$root" "$work"
}
trap cleanup EXIT

# bundle NAME TYPE JQ: the hello bundle as TYPE of the CRI pod "pod".
bundle() {
  local b=$work/$1
  mkdir -p "$b"
  cp -a "$repo/bundles/hello/rootfs" "$b/rootfs"
  jq --arg type "$2" '.annotations["run.amphi.isolation"] = "vm"
      | .annotations["io.kubernetes.cri.container-type"] = $type
      | .annotations["io.kubernetes.cri.sandbox-id"] = "pod"
      | .process.terminal = false | .process.args = ["/bin/sleep", "1000000"] | '"$3" \
    "$repo/bundles/hello/config.json" > "$b/config.json"
  echo "$b"
}

A run -d --bundle "$(bundle pod sandbox .)" pod </dev/null >/dev/null
vmm=$(A state pod | jq -r .pid)
pids=("$vmm")
for i in $(seq "$members"); do
  A run -d --bundle "$(bundle "c$i" container '.linux.namespaces = [{type: "pid"}, {type: "mount"},
      {type: "network", path: "/proc/'"$vmm"'/ns/net"}, {type: "ipc", path: "/proc/'"$vmm"'/ns/ipc"},
      {type: "uts", path: "/proc/'"$vmm"'/ns/uts"}] | del(.hostname)')" "c$i" </dev/null >/dev/null
  pids+=("$(A state "c$i" | jq -r .pid)")
done
sleep "$settle"

# Every descendant of the pod's processes too (the VMM may fork helpers).
all=("${pids[@]}")
for ((i = 0; i < ${#all[@]}; i++)); do
  for c in $(cat /proc/"${all[$i]}"/task/*/children 2>/dev/null); do all+=("$c"); done
done
total=0
for p in "${all[@]}"; do
  kib=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)
  printf '%8d KiB  %s %s\n' "$kib" "$p" "$(tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | cut -c1-60)"
  total=$((total + kib))
done
mode=restored
[ "$cold" = 1 ] && mode=cold
echo "pod: $((total / 1024)) MiB PSS ($mode VM, sandbox + $members container(s), ${#all[@]} processes, after ${settle}s idle)"
