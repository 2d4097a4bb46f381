# Sourced by the scripts that start a private containerd (tests/clients/
# containerd.sh, tests/cri/env.sh): the part of its config and start-up
# they share, so that a plugin turned off for one is off for both.

# containerd_config DIR [cri]: the head of a config.toml for a containerd
# whose root, state and sockets are all under DIR. Off: the plugins that
# write outside DIR (opt writes /opt/containerd), restart (nothing to
# restart), and those that need what the host lacks (aufs, btrfs, zfs,
# devmapper, tracing); the CRI plugin too unless the second argument is
# "cri". The caller appends its own [plugins...] sections.
containerd_config() {
  local dir=$1 cri=${2:-}
  printf '%s\n' 'version = 2' "root = \"$dir/root\"" "state = \"$dir/state\"" 'disabled_plugins = ['
  [ "$cri" = cri ] || printf '  "%s",\n' io.containerd.grpc.v1.cri
  printf '  "%s",\n' io.containerd.internal.v1.opt io.containerd.internal.v1.restart \
    io.containerd.internal.v1.tracing io.containerd.tracing.processor.v1.otlp \
    io.containerd.snapshotter.v1.aufs io.containerd.snapshotter.v1.btrfs \
    io.containerd.snapshotter.v1.devmapper io.containerd.snapshotter.v1.zfs
  printf '%s\n' ']' '[grpc]' "  address = \"$dir/containerd.sock\"" '[ttrpc]' "  address = \"$dir/containerd.sock.ttrpc\""
}

# containerd_wait PID DIR LOG: waits up to 10 s for the containerd PID to
# answer on DIR/containerd.sock (through the caller's ctr_), and dies with
# the end of LOG if it exits first. Needs the caller's ctr_ and die.
containerd_wait() {
  local pid=$1 dir=$2 log=$3
  for _ in $(seq 100); do
    ctr_ version >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || { tail -20 "$log" >&2; die "containerd exited at startup"; }
    sleep 0.1
  done
  ctr_ version >/dev/null 2>&1 || die "containerd did not answer on $dir/containerd.sock"
}
