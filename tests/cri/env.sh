#!/usr/bin/env bash
# A private containerd 1.6 with its CRI plugin, for the CRI test
# (shim/tests/cri.rs, run by tests/cri/run.sh).
#
#   tests/cri/env.sh start DIR   starts it; DIR must be new or empty
#   tests/cri/env.sh stop DIR    tears it down and removes DIR
#
# Everything lives under DIR: containerd's config, root, state, sockets and
# log, the CNI configuration and IPAM state, the images' build files and the
# pods' logs. containerd runs in a network namespace of its own (unshare -n),
# so the CNI bridge, the pods' veths and their addresses never touch the
# host's network; the pods' network namespaces are mounted under containerd's
# state directory (netns_mounts_under_state_dir), not /run/netns.
#
# Runtime handlers (docs/kubernetes.md has the same configuration):
#   runc      containerd's runc shim, to check the harness itself;
#   amphi     containerd-shim-amphi-v2, container isolation;
#   amphi-vm  the same shim with the options file DIR/amphi-vm.toml
#             (ConfigPath; Isolation = "vm"): every pod of the handler is in
#             VM isolation, whatever its annotations say. The run.amphi.*
#             pod annotations pass through too (pod_annotations), for the
#             other VM settings.
# Images, built here without any network: localhost/amphi-pause:latest (the
# sandbox image, tests/cri/pause.c built static) and
# localhost/amphi-busybox:latest (bundles/hello/rootfs), imported into the
# k8s.io namespace with ctr.
#
# `start` writes DIR/env, lines of NAME=VALUE for the client:
#   CRI_SOCKET CRI_PAUSE_IMAGE CRI_BUSYBOX_IMAGE CRI_LOG_DIR CRI_CGROUP_PARENT
#   CRI_SNAPSHOTTER CONTAINERD_PID CONTAINERD_LOG SHIM_DIR
# and exits 0; when the host cannot run it (not root, a tool missing) it
# prints "SKIPPED: why" and exits 77; on any other failure it exits 1.
# Pods go below the cgroup CRI_CGROUP_PARENT (what the kubelet's
# /kubepods is); `stop` removes it.
#
# `stop` kills what is left (tasks, containerd, shims), unmounts what is
# mounted under DIR, deletes amphi's or runc's state of the containers
# containerd knew, removes CRI_CGROUP_PARENT and DIR, and prints one line
# "cleaned: WHAT" for each thing it had to remove that a correct run would
# not have left. It always exits 0.
#
# SHIM_DIR (default: the directory of containerd-shim-amphi-v2 on PATH)
# holds the shim and the amphi it drives; it goes first on containerd's PATH.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
. "$repo/tests/lib/containerd.sh"

usage() { echo "usage: tests/cri/env.sh start|stop DIR" >&2; exit 2; }
[ $# = 2 ] || usage
action=$1
dir=$2
ns=k8s.io
pause_image=localhost/amphi-pause:latest
busybox_image=localhost/amphi-busybox:latest

skip() { echo "SKIPPED: $*"; exit 77; }
die() { echo "env.sh: $*" >&2; exit 1; }

ctr_() { timeout -k 5 60 ctr --address "$dir/containerd.sock" --namespace "$ns" "$@"; }
# Shims started by this containerd: they carry its socket in their arguments.
our_shims() { pgrep -f -- "-address $dir/containerd.sock( |$)" || true; }
# The value of NAME in DIR/env.
env_value() { sed -n "s/^$1=//p" "$dir/env" 2>/dev/null | head -1; }

start() {
  [ "$(id -u)" = 0 ] || skip "needs root (containerd creates namespaces, cgroups and mounts)"
  for tool in containerd ctr umoci unshare ip gcc; do
    command -v "$tool" >/dev/null || skip "$tool is not installed (scripts/setup.sh installs it)"
  done
  containerd --version | grep -q ' v\?1\.6\.' ||
    echo "# env.sh: written for containerd 1.6, this is $(containerd --version)" >&2
  for p in bridge host-local loopback; do
    [ -x "/usr/lib/cni/$p" ] || skip "the CNI plugin /usr/lib/cni/$p is missing (apt-get install containernetworking-plugins)"
  done
  # A static pause needs libc.a (libc6-dev).
  echo 'int main(void){return 0;}' | gcc -static -x c -o /dev/null - 2>/dev/null ||
    skip "gcc cannot link statically (apt-get install libc6-dev)"

  if [ -z "${SHIM_DIR:-}" ]; then
    shim=$(command -v containerd-shim-amphi-v2) && SHIM_DIR=$(dirname "$(readlink -f "$shim")")
  fi
  if [ -n "${SHIM_DIR:-}" ]; then
    SHIM_DIR=$(cd "$SHIM_DIR" && pwd) || die "SHIM_DIR $SHIM_DIR does not exist"
  fi

  mkdir -p "$dir" || die "cannot create $dir"
  [ -z "$(ls -A "$dir")" ] || die "$dir is not empty"
  dir=$(cd "$dir" && pwd)
  # libcni caches results in /var/lib/cni/results (not configurable in
  # containerd 1.6); stop removes the directories if this run made them.
  [ -e /var/lib/cni ] || touch "$dir/made-var-lib-cni"
  local rootfs=$repo/bundles/hello/rootfs
  [ -x "$rootfs/bin/busybox" ] || "$repo/bundles/build-rootfs.sh" >/dev/null || die "cannot build $rootfs"

  # overlayfs when the filesystem under DIR takes it, else native snapshots.
  local snapshotter=native
  mkdir -p "$dir/ov/l" "$dir/ov/u" "$dir/ov/w" "$dir/ov/m"
  if mount -t overlay overlay -o "lowerdir=$dir/ov/l,upperdir=$dir/ov/u,workdir=$dir/ov/w" "$dir/ov/m" 2>/dev/null; then
    umount "$dir/ov/m"
    snapshotter=overlayfs
  fi
  rm -rf "$dir/ov"

  # The pods' network: a bridge inside containerd's network namespace, with
  # addresses from host-local, whose leases stay under DIR. No masquerading
  # and no port mappings: nothing touches iptables.
  mkdir -p "$dir/cni/conf" "$dir/cni/ipam" "$dir/pods"
  cat > "$dir/cni/conf/10-amphi-cri.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "amphi-cri",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "amphicri0",
      "isGateway": true,
      "ipMasq": false,
      "ipam": {
        "type": "host-local",
        "dataDir": "$dir/cni/ipam",
        "ranges": [[{ "subnet": "10.88.212.0/24" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    }
  ]
}
EOF

  # The shim's options for amphi-vm (docs/shim.md: the CRI plugin hands a
  # runtime of our type only this file's path).
  printf 'Isolation = "vm"\n' > "$dir/amphi-vm.toml"
  # The head of the config is shared with tests/clients/containerd.sh.
  {
    containerd_config "$dir" cri
    cat <<EOF
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause_image"
  # The streaming server (Exec, Attach, PortForward) listens on the loopback
  # of containerd's own network namespace.
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  enable_selinux = false
  netns_mounts_under_state_dir = true
  # The CRI asks for oom_score_adj -998 for a sandbox, which needs
  # CAP_SYS_RESOURCE; where root lacks it (some CI sandboxes), the runtime's
  # init fails. Restricted, containerd clamps the value to its own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "$snapshotter"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.amphi]
      runtime_type = "io.containerd.amphi.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.amphi-vm]
      runtime_type = "io.containerd.amphi.v2"
      pod_annotations = ["run.amphi.*"]
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.amphi-vm.options]
        ConfigPath = "$dir/amphi-vm.toml"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni/conf"
    max_conf_num = 1
EOF
  } > "$dir/config.toml"

  # containerd in a new network namespace; its loopback up for the streaming
  # server. setsid: a ^C meant for the client does not reach it.
  local path=$PATH
  [ -n "${SHIM_DIR:-}" ] && path=$SHIM_DIR:$PATH
  PATH=$path setsid unshare --net -- sh -c 'ip link set lo up && exec "$@"' sh \
    containerd --config "$dir/config.toml" --log-level debug </dev/null >"$dir/containerd.log" 2>&1 &
  local pid=$!
  echo "$pid" > "$dir/containerd.pid"
  containerd_wait "$pid" "$dir" "$dir/containerd.log"
  ctr_ plugins ls 2>/dev/null | awk '$2 == "cri" {print $NF}' | grep -qx ok || {
    grep -i 'cri' "$dir/containerd.log" | tail -5 >&2
    die "containerd's CRI plugin (io.containerd.grpc.v1.cri) did not load: $(ctr_ plugins ls 2>&1 | awk '$2 == "cri"')"
  }

  # The images, without network.
  local img=$dir/images
  mkdir -p "$img/pause-root"
  {
    gcc -static -Os -o "$img/pause-root/pause" "$here/pause.c" &&
      strip "$img/pause-root/pause" &&
      umoci init --layout "$img/pause" &&
      umoci new --image "$img/pause:latest" &&
      umoci insert --image "$img/pause:latest" "$img/pause-root" / &&
      umoci config --image "$img/pause:latest" --os linux --architecture amd64 \
        --config.entrypoint /pause --config.workingdir / &&
      tar -C "$img/pause" -cf "$img/pause.tar" . &&
      CONTAINERD_SNAPSHOTTER=$snapshotter ctr_ images import --base-name "${pause_image%:*}" "$img/pause.tar" &&
      umoci init --layout "$img/busybox" &&
      umoci new --image "$img/busybox:latest" &&
      umoci insert --image "$img/busybox:latest" "$rootfs" / &&
      umoci config --image "$img/busybox:latest" --os linux --architecture amd64 \
        --config.cmd /bin/sh --config.workingdir / &&
      tar -C "$img/busybox" -cf "$img/busybox.tar" . &&
      CONTAINERD_SNAPSHOTTER=$snapshotter ctr_ images import --base-name "${busybox_image%:*}" "$img/busybox.tar"
  } >"$img/build.log" 2>&1 || { cat "$img/build.log" >&2; die "cannot build or import the images"; }
  rm -rf "$img"

  cat > "$dir/env" <<EOF
CRI_SOCKET=$dir/containerd.sock
CRI_PAUSE_IMAGE=$pause_image
CRI_BUSYBOX_IMAGE=$busybox_image
CRI_LOG_DIR=$dir/pods
CRI_CGROUP_PARENT=/amphi-cri-$pid
CRI_SNAPSHOTTER=$snapshotter
CONTAINERD_PID=$pid
CONTAINERD_LOG=$dir/containerd.log
SHIM_DIR=${SHIM_DIR:-}
EOF
  echo "# containerd $(containerd --version | awk '{print $3}') with CRI in its own network namespace, snapshotter $snapshotter, shim and amphi from ${SHIM_DIR:-nowhere (containerd-shim-amphi-v2 is not installed)}"
}

stop() {
  [ -d "$dir" ] || exit 0
  dir=$(cd "$dir" && pwd)
  local pid cg ids=()
  pid=$(cat "$dir/containerd.pid" 2>/dev/null)
  cg=$(env_value CRI_CGROUP_PARENT)
  # The containers containerd started a task for (one bundle each).
  for b in "$dir"/state/io.containerd.runtime.v2.task/"$ns"/*/; do
    [ -d "$b" ] && ids+=("$(basename "$b")")
  done
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    for id in $(ctr_ task ls -q 2>/dev/null); do
      echo "cleaned: task $id"
      ctr_ task kill -a -s SIGKILL "$id" >/dev/null 2>&1
      sleep 0.2
      ctr_ task delete -f "$id" >/dev/null 2>&1
    done
    kill "$pid" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
  fi
  for _ in $(seq 30); do [ -z "$(our_shims)" ] && break; sleep 0.1; done
  for p in $(our_shims); do
    echo "cleaned: shim process $p: $(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | cut -c1-120)"
    kill -KILL "$p" 2>/dev/null
  done
  # The runtimes' state of containers whose tasks were not deleted.
  local root
  for id in "${ids[@]}"; do
    for root in /run/containerd/amphi/$ns /run/containerd/runc/$ns; do
      [ -e "$root/$id" ] || continue
      echo "cleaned: runtime state $root/$id"
      case $root in
        */amphi/*) amphi_bin=${SHIM_DIR:-$(env_value SHIM_DIR)}
                   amphi_bin=${amphi_bin:+$amphi_bin/}amphi
                   "$amphi_bin" --root "$root" delete --force "$id" >/dev/null 2>&1 ;;
        *) runc --root "$root" delete --force "$id" >/dev/null 2>&1 ;;
      esac
      rm -rf "${root:?}/$id"
    done
  done
  rmdir /run/containerd/amphi/$ns /run/containerd/amphi /run/containerd/runc/$ns /run/containerd/runc \
    /run/containerd/s /run/containerd/fifo /run/containerd 2>/dev/null
  awk -v t="$dir/" 'index($2, t) == 1 {print $2}' /proc/self/mounts | sort -r | while read -r m; do
    echo "cleaned: mount $m"
    umount -l "$m" 2>/dev/null
  done
  # The pods' cgroups, deepest first; the parent itself is the client's to
  # remove, as the kubelet removes /kubepods/.../pod<uid>.
  if [ -n "$cg" ]; then
    for d in /sys/fs/cgroup/*/"${cg#/}" /sys/fs/cgroup/"${cg#/}"; do
      [ -d "$d" ] || continue
      find "$d" -mindepth 1 -depth -type d | while read -r c; do
        case ${c##*/} in pod*) ;; *) echo "cleaned: cgroup $c" ;; esac
        rmdir "$c" 2>/dev/null
      done
      rmdir "$d" 2>/dev/null || echo "cleaned: cgroup $d could not be removed"
    done
  fi
  if [ -e "$dir/made-var-lib-cni" ]; then
    for f in /var/lib/cni/results/*; do [ -e "$f" ] && echo "cleaned: CNI result $f" && rm -f "$f"; done
    rmdir /var/lib/cni/results /var/lib/cni 2>/dev/null
  fi
  rm -rf "$dir"
  exit 0
}

case $action in
  start) start ;;
  stop) stop ;;
  *) usage ;;
esac
