#!/usr/bin/env bash
# containerd 1.6 driving amphi through containerd-shim-amphi-v2, with ctr.
#
# Run by scripts/test.sh as root: tests/clients/containerd.sh
#
# Starts a private containerd (its own root, state, sockets and config under
# a temporary directory; no CRI, only the plugins ctr needs), builds an OCI
# image from bundles/hello/rootfs without any network (umoci), imports it,
# runs containers with `--runtime io.containerd.amphi.v2`, and checks that
# nothing is left behind: no shim processes, no mounts, no amphi state, no
# cgroups, no shim sockets.
#
# SHIM_DIR (default: the directory of containerd-shim-amphi-v2 on PATH)
# holds the shim and the amphi binary it drives; it is put first on
# containerd's PATH, so a fresh build can be tested before installing it:
#   SHIM_DIR=target/debug tests/clients/containerd.sh
# CONTAINERD_LOG=FILE keeps containerd's log (it includes the shims' logs).
# Prints "N passed, M failed"; exits non-zero on failure. Without root,
# containerd, ctr or umoci it says SKIPPED and why.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)

skip() { echo "SKIPPED: $*"; echo "0 passed, 0 failed (skipped)"; exit 0; }
die() { echo "containerd.sh: $*" >&2; echo "0 passed, 1 failed"; exit 1; }

[ "$(id -u)" = 0 ] || skip "needs root (containerd and amphi create namespaces and cgroups)"
for tool in containerd ctr umoci script; do
  command -v "$tool" >/dev/null || skip "$tool is not installed (apt-get install containerd umoci util-linux)"
done

if [ -z "${SHIM_DIR:-}" ]; then
  shim=$(command -v containerd-shim-amphi-v2) ||
    die "containerd-shim-amphi-v2 is not on PATH: run scripts/setup.sh, or set SHIM_DIR to a build directory"
  SHIM_DIR=$(dirname "$(readlink -f "$shim")")
fi
SHIM_DIR=$(cd "$SHIM_DIR" && pwd)
[ -x "$SHIM_DIR/containerd-shim-amphi-v2" ] || die "$SHIM_DIR/containerd-shim-amphi-v2 is missing"
[ -x "$SHIM_DIR/amphi" ] || die "$SHIM_DIR/amphi is missing: the shim runs the amphi installed beside it"
rootfs=$repo/bundles/hello/rootfs
[ -x "$rootfs/bin/busybox" ] || "$repo/bundles/build-rootfs.sh" >/dev/null || die "cannot build $rootfs"

tmp=$(mktemp -d /tmp/amphi-containerd.XXXXXX)
ns=shimtest-$$
image=localhost/amphi-hello:latest
runtime=io.containerd.amphi.v2
amphi_root=/run/containerd/amphi/$ns
containerd_pid=

# State outside $tmp that containerd, ctr and the shim share with other
# users of the host: compared before and after.
shared_state() {
  ls -1 /run/containerd/s 2>/dev/null | sed 's/^/socket /'
  ls -1 /run/containerd/fifo 2>/dev/null | sed 's/^/fifo /'
}
shared_state | sort > "$tmp/shared.before"

ctr_() { timeout 60 ctr --address "$tmp/containerd.sock" --namespace "$ns" "$@"; }

our_shims() { pgrep -f -- "containerd-shim-amphi-v2 -namespace $ns " || true; }

cleanup() {
  [ -n "${CONTAINERD_LOG:-}" ] && cp "$tmp/containerd.log" "$CONTAINERD_LOG" 2>/dev/null
  if [ -n "$containerd_pid" ] && kill -0 "$containerd_pid" 2>/dev/null; then
    for id in $(ctr_ task ls -q 2>/dev/null); do
      ctr_ task kill -s SIGKILL "$id" >/dev/null 2>&1
      ctr_ task delete -f "$id" >/dev/null 2>&1
    done
    for id in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers rm "$id" >/dev/null 2>&1; done
    ctr_ images rm "$image" >/dev/null 2>&1
    kill "$containerd_pid" 2>/dev/null
    wait "$containerd_pid" 2>/dev/null
  fi
  # Shims that outlived their containers (already counted as failures).
  for p in $(our_shims); do kill -KILL "$p" 2>/dev/null; done
  awk -v t="$tmp/" 'index($2, t) == 1 {print $2}' /proc/self/mounts | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null
  done
  rm -rf "$tmp"
  rmdir "$amphi_root" /run/containerd/amphi /run/containerd/s /run/containerd/fifo /run/containerd 2>/dev/null
  # containerd's default cgroupsPath is /<namespace>/<id>: amphi removes
  # the container's cgroup, the namespace level is the client's.
  for d in /sys/fs/cgroup/*/"$ns" /sys/fs/cgroup/"$ns"; do [ -d "$d" ] && rmdir "$d" 2>/dev/null; done
  return 0
}
trap cleanup EXIT

# --- a private containerd ---------------------------------------------------
# The cgroups monitor and restart plugins are off (nothing to restart), as
# are the ones that write outside the temporary directory (opt writes
# /opt/containerd) or need what the host lacks (CRI, aufs, btrfs, zfs,
# devmapper, tracing).
cat > "$tmp/config.toml" <<EOF
version = 2
root = "$tmp/root"
state = "$tmp/state"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.internal.v1.opt",
  "io.containerd.internal.v1.restart",
  "io.containerd.internal.v1.tracing",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]
[grpc]
  address = "$tmp/containerd.sock"
[ttrpc]
  address = "$tmp/containerd.sock.ttrpc"
EOF
PATH="$SHIM_DIR:$PATH" containerd --config "$tmp/config.toml" >"$tmp/containerd.log" 2>&1 &
containerd_pid=$!
for _ in $(seq 100); do
  ctr_ version >/dev/null 2>&1 && break
  kill -0 "$containerd_pid" 2>/dev/null || { tail -20 "$tmp/containerd.log" >&2; die "containerd exited at startup"; }
  sleep 0.1
done
ctr_ version >/dev/null 2>&1 || die "containerd did not answer on $tmp/containerd.sock"

# overlayfs when the filesystem under /tmp takes it, else native snapshots.
mkdir -p "$tmp/ov/l" "$tmp/ov/u" "$tmp/ov/w" "$tmp/ov/m"
if mount -t overlay overlay -o "lowerdir=$tmp/ov/l,upperdir=$tmp/ov/u,workdir=$tmp/ov/w" "$tmp/ov/m" 2>/dev/null; then
  umount "$tmp/ov/m"
  export CONTAINERD_SNAPSHOTTER=overlayfs
else
  export CONTAINERD_SNAPSHOTTER=native
fi
rm -rf "$tmp/ov"

# --- an image without network -------------------------------------------------
{
  umoci init --layout "$tmp/oci" &&
    umoci new --image "$tmp/oci:latest" &&
    umoci insert --image "$tmp/oci:latest" "$rootfs" / &&
    umoci config --image "$tmp/oci:latest" --os linux --architecture amd64 \
      --config.cmd /bin/sh --config.workingdir / &&
    tar -C "$tmp/oci" -cf "$tmp/hello.tar" . &&
    ctr_ images import --base-name localhost/amphi-hello "$tmp/hello.tar"
} >"$tmp/image.log" 2>&1 || { cat "$tmp/image.log" >&2; die "cannot build or import the test image"; }
echo "# containerd $(containerd --version | awk '{print $3}'), snapshotter $CONTAINERD_SNAPSHOTTER, shim and amphi from $SHIM_DIR"

# --- tests ----------------------------------------------------------------------
passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok - $1"; }
not_ok() {
  failed=$((failed + 1))
  echo "not ok - $1"
  shift
  for l in "$@"; do printf '#   %s\n' "$l"; done
}
# run_ctr NAME ARGS...: runs ctr, leaving stdout, stderr and status in
# $out, $err and $rc.
run_ctr() {
  ctr_ "$@" >"$tmp/out" 2>"$tmp/err" </dev/null
  rc=$?
  out=$(cat "$tmp/out")
  err=$(cat "$tmp/err")
}
# wait_status ID STATUS: polls `ctr task ls` (up to 10 s).
wait_status() {
  for _ in $(seq 100); do
    ctr_ task ls 2>/dev/null | awk -v id="$1" '$1 == id {print $3}' | grep -qx "$2" && return 0
    sleep 0.1
  done
  return 1
}

run_ctr run --rm --runtime "$runtime" "$image" t-echo /bin/echo hello from containerd
if [ "$rc" = 0 ] && [ "$out" = "hello from containerd" ]; then
  ok "run --rm prints the workload's output"
else
  not_ok "run --rm prints the workload's output" "status $rc" "stdout: $out" "stderr: $err"
fi

run_ctr run --rm --runtime "$runtime" "$image" t-exit /bin/sh -c 'echo to-out; echo to-err >&2; exit 7'
if [ "$rc" = 7 ] && [ "$out" = to-out ] && [ "$err" = to-err ]; then
  ok "run --rm reports the exit code and keeps stdout and stderr apart"
else
  not_ok "run --rm reports the exit code and keeps stdout and stderr apart" "status $rc (want 7)" "stdout: $out" "stderr: $err"
fi

out=$(printf 'line one\nline two\n' | ctr_ run --rm --runtime "$runtime" "$image" t-stdin /bin/sh -c 'cat; echo eof' 2>&1)
rc=$?
if [ "$rc" = 0 ] && [ "$out" = "$(printf 'line one\nline two\neof')" ]; then
  ok "stdin reaches the container and ends when the client's input does"
else
  not_ok "stdin reaches the container and ends when the client's input does" "status $rc" "output: $out"
fi

# ctr -t needs a terminal of its own: script(1) provides one.
out=$(timeout 60 script -qec "ctr --address $tmp/containerd.sock --namespace $ns run --rm -t --runtime $runtime $image t-tty /bin/sh -c 'tty; exit 3'" /dev/null </dev/null | tr -d '\r\0')
rc=${PIPESTATUS[0]}
if [[ "$out" == *"/dev/pts/"* ]] && [ "$rc" = 3 ]; then
  ok "run -t gives the container a terminal"
else
  not_ok "run -t gives the container a terminal" "status $rc (want 3)" "output: $out"
fi

run_ctr run --rm --runtime "$runtime" "$image" t-missing /no/such/program
if [ "$rc" != 0 ] && [[ "$err" == *"/no/such/program"* ]] && ! ctr_ containers ls -q | grep -qx t-missing; then
  ok "a workload that cannot start fails with amphi's message"
else
  not_ok "a workload that cannot start fails with amphi's message" "status $rc" "stderr: $err"
fi

# A detached container through its whole life.
run_ctr run -d --runtime "$runtime" "$image" t-detached /bin/sh -c 'sleep 1000 & sleep 1000'
if [ "$rc" = 0 ] && wait_status t-detached RUNNING; then
  ok "run -d leaves the task running"
else
  not_ok "run -d leaves the task running" "status $rc" "stderr: $err" "$(ctr_ task ls 2>&1)"
fi

init_pid=$(ctr_ task ls 2>/dev/null | awk '$1 == "t-detached" {print $2}')
run_ctr task ps t-detached
pids=$(echo "$out" | awk 'NR > 1 {print $1}')
# The init and the background sleep (busybox sh may exec the last command).
if [ "$rc" = 0 ] && [ "$(echo "$pids" | wc -l)" -ge 2 ] && echo "$pids" | grep -qx "$init_pid"; then
  ok "task ps lists the container's processes"
else
  not_ok "task ps lists the container's processes" "status $rc, init $init_pid, want it and the background sleep" "$out" "$err"
fi

run_ctr task metrics t-detached
if [ "$rc" = 0 ] && [[ "$out" == *"memory.usage_in_bytes"* || "$out" == *"memory.usage"* ]] && [[ "$out" == *pids.current* ]]; then
  ok "task metrics reads the container's cgroups"
else
  not_ok "task metrics reads the container's cgroups" "status $rc" "$out" "$err"
fi

run_ctr task exec --exec-id e1 t-detached /bin/true
if [ "$rc" != 0 ] && [[ "$err" == *"exec is not implemented in amphi"* ]]; then
  ok "task exec is refused as not implemented"
else
  not_ok "task exec is refused as not implemented" "status $rc" "stderr: $err"
fi

run_ctr task delete t-detached
if [ "$rc" != 0 ] && wait_status t-detached RUNNING; then
  ok "a running task is not deleted"
else
  not_ok "a running task is not deleted" "status $rc" "stderr: $err"
fi

run_ctr task kill --all -s SIGKILL t-detached
if [ "$rc" = 0 ] && wait_status t-detached STOPPED; then
  ok "task kill --all stops the task"
else
  not_ok "task kill --all stops the task" "status $rc" "stderr: $err" "$(ctr_ task ls 2>&1)"
fi

run_ctr task delete t-detached
# ctr prints the non-zero exit status of a deleted task as a warning.
if [ "$rc" = 0 ] && [[ "$err" == *"137"* ]] && ! ctr_ task ls -q | grep -qx t-detached; then
  ok "task delete returns the exit status (137 after SIGKILL)"
else
  not_ok "task delete returns the exit status (137 after SIGKILL)" "status $rc" "stderr: $err"
fi
run_ctr containers rm t-detached
[ "$rc" = 0 ] || not_ok "containers rm t-detached" "status $rc" "stderr: $err"

# --- nothing left behind ---------------------------------------------------------
# A shim exits shortly after containerd's Shutdown call: give it a moment.
for _ in $(seq 50); do [ -z "$(our_shims)" ] && break; sleep 0.1; done
leaks=()
for p in $(our_shims); do leaks+=("shim process $p: $(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | cut -c1-120)"); done
while read -r m; do leaks+=("mount $m"); done < <(awk -v t="$tmp/" 'index($2, t) == 1 {print $2}' /proc/self/mounts)
for c in "$amphi_root"/*; do [ -e "$c" ] && leaks+=("amphi state $c"); done
for d in /sys/fs/cgroup/*/"$ns" /sys/fs/cgroup/"$ns"; do
  [ -d "$d" ] || continue
  while read -r c; do leaks+=("cgroup $c"); done < <(find "$d" -mindepth 1 -type d)
done
while read -r s; do leaks+=("$s"); done < <(shared_state | sort | comm -13 "$tmp/shared.before" -)
if [ ${#leaks[@]} = 0 ]; then
  ok "nothing is left behind (shims, mounts, amphi state, cgroups, sockets, fifos)"
else
  not_ok "nothing is left behind (shims, mounts, amphi state, cgroups, sockets, fifos)" "${leaks[@]}"
fi

if [ "$failed" != 0 ]; then
  echo "# containerd log: last lines"
  tail -15 "$tmp/containerd.log" | cut -c1-300 | sed 's/^/#   /'
fi
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
