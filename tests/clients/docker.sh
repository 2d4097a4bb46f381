#!/usr/bin/env bash
# docker (Debian's docker.io 20.10) driving amphi as a registered runtime.
#
# Run by scripts/test.sh as root: tests/clients/docker.sh
#
# Starts a private dockerd (data root, exec root, pid file and socket under a
# temporary directory; no iptables, no bridge, the vfs storage driver) with
# amphi in daemon.json's "runtimes", so every container goes through
# containerd's runc shim with amphi as its runtime binary, as on a real docker
# host. The image is `docker import` of bundles/hello/rootfs (busybox), no
# network needed. Checks run, exec, logs, top, stats, pause, stop, kill, rm,
# resource flags, and that failures show amphi's message; then that nothing
# is left behind (containers, cgroups, mounts, amphi state, processes).
#
# AMPHI (default: amphi on PATH) is the binary under test.
# DOCKER_LOG=FILE keeps dockerd's log. Prints "N passed, M failed"; exits
# non-zero on failure; says SKIPPED and why without root or docker.
#
# This host lacks CAP_SYS_RESOURCE, so rlimits above the hard limits cannot
# be granted: every run passes --ulimit values under them.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)

skip() { echo "SKIPPED: $*"; echo "0 passed, 0 failed (skipped)"; exit 0; }
die() { echo "docker.sh: $*" >&2; echo "0 passed, 1 failed"; exit 1; }

[ "$(id -u)" = 0 ] || skip "needs root (dockerd and amphi create namespaces and cgroups)"
command -v dockerd >/dev/null || skip "dockerd is not installed (apt-get install docker.io)"
# Debian's client, which matches its daemon (another docker may come first on PATH).
DOCKER_CLI=${DOCKER_CLI:-$( [ -x /usr/bin/docker ] && echo /usr/bin/docker || command -v docker )}
[ -n "$DOCKER_CLI" ] || skip "the docker client is not installed"
command -v script >/dev/null || skip "script(1) is not installed (util-linux)"
AMPHI=${AMPHI:-$(command -v amphi)}
[ -x "$AMPHI" ] || die "no amphi binary: set AMPHI or run scripts/setup.sh"
AMPHI=$(readlink -f "$AMPHI")
rootfs=$repo/bundles/hello/rootfs
[ -x "$rootfs/bin/busybox" ] || "$repo/bundles/build-rootfs.sh" >/dev/null || die "cannot build $rootfs"

tmp=$(mktemp -d /tmp/amphi-docker.XXXXXX)
chmod 711 "$tmp"
sock=$tmp/docker.sock
export DOCKER_HOST=unix://$sock
dockerd_pid=
image=amphi-hello
cgparent=amphi-docker-$$
# Every run: our runtime, no network, rlimits under the host's hard limits,
# a cgroup parent of our own (checked for leftovers).
hard_n=$(ulimit -Hn)
[ "$hard_n" = unlimited ] && hard_n=1048576
nofile=$(( hard_n < 4096 ? hard_n : 4096 ))
hard_u=$(ulimit -Hu)
[ "$hard_u" = unlimited ] && hard_u=65536
nproc=$(( hard_u < 4096 ? hard_u : 4096 ))
R=(--runtime amphi --network none --cgroup-parent "/$cgparent" --ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc")

d() { timeout 60 "$DOCKER_CLI" "$@"; }

cleanup() {
  [ -n "${DOCKER_LOG:-}" ] && cp "$tmp/dockerd.log" "$DOCKER_LOG" 2>/dev/null
  if [ -n "$dockerd_pid" ] && kill -0 "$dockerd_pid" 2>/dev/null; then
    for c in $(d ps -aq 2>/dev/null); do d rm -f "$c" >/dev/null 2>&1; done
    kill "$dockerd_pid" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$dockerd_pid" 2>/dev/null
  fi
  # dockerd's own containerd and shims, should any have outlived it.
  for p in $(pgrep -f -- "$tmp/" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
  awk -v t="$tmp/" 'index($2, t) == 1 {print $2}' /proc/self/mounts | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null
  done
  rm -rf "$tmp" 2>/dev/null || { sleep 1; rm -rf "$tmp"; }
  for d in /sys/fs/cgroup/*/"$cgparent" /sys/fs/cgroup/"$cgparent"; do [ -d "$d" ] && rmdir "$d" 2>/dev/null; done
  return 0
}
trap cleanup EXIT

# --- a private dockerd ----------------------------------------------------------
cat > "$tmp/daemon.json" <<EOF
{
  "runtimes": { "amphi": { "path": "$AMPHI" } },
  "storage-driver": "vfs",
  "iptables": false,
  "ip6tables": false,
  "bridge": "none",
  "userland-proxy": false,
  "log-level": "warn"
}
EOF
dockerd --config-file "$tmp/daemon.json" --data-root "$tmp/root" --exec-root "$tmp/exec" \
  --pidfile "$tmp/docker.pid" -H "unix://$sock" >"$tmp/dockerd.log" 2>&1 &
dockerd_pid=$!
for _ in $(seq 300); do
  d version >/dev/null 2>&1 && break
  kill -0 "$dockerd_pid" 2>/dev/null || { tail -20 "$tmp/dockerd.log" >&2; die "dockerd exited at startup"; }
  sleep 0.1
done
d version >/dev/null 2>&1 || { tail -20 "$tmp/dockerd.log" >&2; die "dockerd did not answer on $sock"; }
tar -C "$rootfs" -c . | d import - "$image" >/dev/null 2>"$tmp/import.err" || { cat "$tmp/import.err" >&2; die "docker import failed"; }
echo "# docker $(d version -f '{{.Server.Version}}'), amphi $("$AMPHI" --version | awk '{print $2}') from $AMPHI"

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
# run_d ARGS...: runs the docker client; stdout, stderr and status in $out, $err, $rc.
run_d() {
  d "$@" >"$tmp/out" 2>"$tmp/err" </dev/null
  rc=$?
  out=$(cat "$tmp/out")
  err=$(cat "$tmp/err")
}
# wait_for NAME STATUS: polls `docker inspect` (up to 10 s).
wait_for() {
  for _ in $(seq 100); do
    [ "$(d inspect -f '{{.State.Status}}' "$1" 2>/dev/null)" = "$2" ] && return 0
    sleep 0.1
  done
  return 1
}

run_d run --rm "${R[@]}" "$image" /bin/echo hello from docker
if [ "$rc" = 0 ] && [ "$out" = "hello from docker" ]; then
  ok "run --rm prints the workload's output"
else
  not_ok "run --rm prints the workload's output" "status $rc" "stdout: $out" "stderr: $err"
fi

run_d run --rm "${R[@]}" "$image" /bin/sh -c 'echo to-out; echo to-err >&2; exit 7'
if [ "$rc" = 7 ] && [ "$out" = to-out ] && [ "$err" = to-err ]; then
  ok "run --rm reports the exit code and keeps stdout and stderr apart"
else
  not_ok "run --rm reports the exit code and keeps stdout and stderr apart" "status $rc (want 7)" "stdout: $out" "stderr: $err"
fi

run_d run --rm "${R[@]}" --read-only "$image" /bin/sh -c 'touch /x 2>&1; echo rc=$?'
if [ "$rc" = 0 ] && [[ "$out" == *"Read-only file system"* ]]; then
  ok "run --read-only gives a read-only root"
else
  not_ok "run --read-only gives a read-only root" "status $rc" "stdout: $out" "stderr: $err"
fi

run_d run --rm "${R[@]}" --cap-drop ALL --cap-add KILL "$image" /bin/grep CapEff /proc/self/status
if [ "$rc" = 0 ] && [ "$out" = "$(printf 'CapEff:\t0000000000000020')" ]; then
  ok "run --cap-drop leaves only the capabilities asked for"
else
  not_ok "run --cap-drop leaves only the capabilities asked for" "status $rc" "stdout: $out" "stderr: $err"
fi

run_d run -d --name amphi-d1 "${R[@]}" --cpus 0.5 --memory 64m --pids-limit 32 "$image" \
  /bin/sh -c 'echo started; trap "echo bye; exit 0" TERM; while :; do sleep 0.2; done'
cid=$out
if [ "$rc" = 0 ] && wait_for amphi-d1 running; then
  ok "run -d leaves the container running"
else
  not_ok "run -d leaves the container running" "status $rc" "stderr: $err" "$(tail -5 "$tmp/dockerd.log")"
fi

# The limits reached the container's cgroups (docker's cgroupfs layout).
cg() { cat "/sys/fs/cgroup/$1/$cgparent/$cid/$2" 2>/dev/null || cat "/sys/fs/cgroup/$cgparent/$cid/$2" 2>/dev/null; }
limits="$(cg cpu cpu.cfs_quota_us) $(cg memory memory.limit_in_bytes) $(cg pids pids.max)"
if [ "$limits" = "50000 67108864 32" ]; then
  ok "--cpus, --memory and --pids-limit reach the cgroups"
else
  not_ok "--cpus, --memory and --pids-limit reach the cgroups" "cpu quota, memory limit, pids.max: $limits"
fi

run_d logs amphi-d1
if [ "$rc" = 0 ] && [ "$out" = started ]; then
  ok "logs shows the container's output"
else
  not_ok "logs shows the container's output" "status $rc" "stdout: $out" "stderr: $err"
fi

run_d exec amphi-d1 /bin/sh -c 'echo in-$(hostname); cat /proc/1/cmdline | tr "\0" " "; exit 3'
if [ "$rc" = 3 ] && [[ "$out" == in-* ]] && [[ "$out" == *"/bin/sh -c"* ]]; then
  ok "exec runs in the container and returns the exit code"
else
  not_ok "exec runs in the container and returns the exit code" "status $rc (want 3)" "stdout: $out" "stderr: $err"
fi

out=$(timeout 60 script -qec "$DOCKER_CLI exec -it amphi-d1 /bin/sh -c 'tty; test -t 0 && echo is-a-tty; exit 4'" /dev/null </dev/null | tr -d '\r\0')
rc=${PIPESTATUS[0]}
if [ "$rc" = 4 ] && [[ "$out" == *"/dev/pts/"* ]] && [[ "$out" == *is-a-tty* ]]; then
  ok "exec -it gives the process a terminal"
else
  not_ok "exec -it gives the process a terminal" "status $rc (want 4)" "output: $out"
fi

run_d exec -u 65534:65534 -w /tmp -e FOO=bar amphi-d1 /bin/sh -c 'id -u; pwd; echo $FOO'
if [ "$rc" = 0 ] && [ "$out" = "$(printf '65534\n/tmp\nbar')" ]; then
  ok "exec -u, -w and -e set the process's user, directory and environment"
else
  not_ok "exec -u, -w and -e set the process's user, directory and environment" "status $rc" "stdout: $out" "stderr: $err"
fi

run_d exec amphi-d1 /no/such/program
if [ "$rc" != 0 ] && [[ "$out$err" == *"/no/such/program"* ]]; then
  ok "exec of a missing program fails with amphi's message"
else
  not_ok "exec of a missing program fails with amphi's message" "status $rc" "stdout: $out" "stderr: $err"
fi

run_d top amphi-d1
if [ "$rc" = 0 ] && [[ "$out" == *PID* ]] && [[ "$out" == *"sleep 0.2"* || "$out" == *"while"* || "$out" == *"/bin/sh"* ]]; then
  ok "top lists the container's processes"
else
  not_ok "top lists the container's processes" "status $rc" "stdout: $out" "stderr: $err"
fi

run_d stats --no-stream --format '{{.Name}} {{.MemUsage}} {{.PIDs}}' amphi-d1
if [ "$rc" = 0 ] && [[ "$out" == "amphi-d1 "* ]] && [[ "$out" == *"64MiB"* ]] && [[ ! "$out" =~ \ 0$ ]]; then
  ok "stats --no-stream reads memory and pids"
else
  not_ok "stats --no-stream reads memory and pids" "status $rc" "stdout: $out" "stderr: $err"
fi

run_d pause amphi-d1
st=$(d inspect -f '{{.State.Status}}' amphi-d1 2>&1)
frozen=$(cat "/sys/fs/cgroup/freezer/$cgparent/$cid/freezer.state" 2>/dev/null || echo "?")
if [ "$rc" = 0 ] && [ "$st" = paused ] && [ "$frozen" = FROZEN ]; then
  ok "pause freezes the container"
else
  not_ok "pause freezes the container" "status $rc, docker says $st, freezer $frozen" "stderr: $err"
fi
run_d unpause amphi-d1
if [ "$rc" = 0 ] && wait_for amphi-d1 running; then
  ok "unpause thaws it"
else
  not_ok "unpause thaws it" "status $rc" "stderr: $err"
fi

run_d update --memory 96m --memory-swap 96m --pids-limit 40 amphi-d1
limits="$(cg memory memory.limit_in_bytes) $(cg pids pids.max)"
if [ "$rc" = 0 ] && [ "$limits" = "100663296 40" ]; then
  ok "update changes the limits of the running container"
else
  not_ok "update changes the limits of the running container" "status $rc, limits: $limits" "stderr: $err"
fi

run_d stop -t 5 amphi-d1
logs=$(d logs amphi-d1 2>&1)
code=$(d inspect -f '{{.State.ExitCode}}' amphi-d1 2>&1)
if [ "$rc" = 0 ] && [ "$code" = 0 ] && [[ "$logs" == *bye* ]]; then
  ok "stop delivers SIGTERM to the workload"
else
  not_ok "stop delivers SIGTERM to the workload" "status $rc, exit code $code" "logs: $logs" "stderr: $err"
fi
run_d rm amphi-d1
[ "$rc" = 0 ] || not_ok "rm amphi-d1" "status $rc" "stderr: $err"

run_d run -d --name amphi-d2 "${R[@]}" "$image" /bin/sleep 1000
wait_for amphi-d2 running
run_d kill amphi-d2
code=$(d inspect -f '{{.State.ExitCode}}' amphi-d2 2>&1)
if [ "$rc" = 0 ] && wait_for amphi-d2 exited && [ "$(d inspect -f '{{.State.ExitCode}}' amphi-d2)" = 137 ]; then
  ok "kill ends the container (137)"
else
  not_ok "kill ends the container (137)" "status $rc, exit code $code" "stderr: $err"
fi
run_d run -d --name amphi-d3 "${R[@]}" "$image" /bin/sleep 1000
run_d rm -f amphi-d3
if [ "$rc" = 0 ] && ! d ps -aq --filter name=amphi-d3 | grep -q .; then
  ok "rm -f removes a running container"
else
  not_ok "rm -f removes a running container" "status $rc" "stderr: $err"
fi
d rm -f amphi-d2 >/dev/null 2>&1

# --- failures show amphi's message ----------------------------------------------
run_d run --rm "${R[@]}" "$image" /no/such/program
if [ "$rc" = 127 ] && [[ "$err" == *"/no/such/program"* ]]; then
  ok "a program that is not in the image: exit 127 and amphi's message"
else
  not_ok "a program that is not in the image: exit 127 and amphi's message" "status $rc (want 127)" "stderr: $err"
fi

run_d run --rm "${R[@]}" --user nosuchuser "$image" /bin/true
if [ "$rc" != 0 ] && [[ "$err" == *nosuchuser* ]]; then
  ok "a bad --user is refused and named"
else
  not_ok "a bad --user is refused and named" "status $rc" "stderr: $err"
fi

run_d run --rm "${R[@]}" --ulimit "nofile=$((hard_n + 1000)):$((hard_n + 1000))" "$image" /bin/true
if [ "$rc" != 0 ] && [[ "$err" == *RLIMIT_NOFILE* ]] && [[ "$err" == *CAP_SYS_RESOURCE* ]]; then
  ok "an rlimit the host refuses: amphi names the limit and the fix"
else
  bnd=$(awk '/^CapBnd/ {print $2}' /proc/self/status)
  if (( (16#$bnd >> 24) & 1 )); then
    ok "an rlimit the host refuses # SKIP this host grants CAP_SYS_RESOURCE"
  else
    not_ok "an rlimit the host refuses: amphi names the limit and the fix" "status $rc" "stderr: $err"
  fi
fi

run_d run -d --name amphi-d4 "${R[@]}" --memory 64m --memory-swap 64m "$image" \
  /bin/sh -c 'dd if=/dev/zero of=/dev/shm/fill bs=1M count=24 2>/dev/null; sleep 1000'
for _ in $(seq 50); do [ "$(cg memory memory.usage_in_bytes)" -gt 20000000 ] 2>/dev/null && break; sleep 0.1; done
run_d update --memory 8m --memory-swap 8m amphi-d4
if [ "$rc" != 0 ] && [[ "$err" == *memory.limit* ]] && [[ "$err" == *"already uses"* ]]; then
  ok "a cgroup limit the kernel refuses: amphi's message names the field and the usage"
else
  not_ok "a cgroup limit the kernel refuses: amphi's message names the field and the usage" "status $rc" "stderr: $err"
fi
d rm -f amphi-d4 >/dev/null 2>&1

# --- nothing left behind ----------------------------------------------------------
leaks=()
for c in $(d ps -aq 2>/dev/null); do leaks+=("container $c"); done
for dir in /sys/fs/cgroup/*/"$cgparent" /sys/fs/cgroup/"$cgparent"; do
  [ -d "$dir" ] || continue
  while read -r c; do leaks+=("cgroup $c"); done < <(find "$dir" -mindepth 1 -type d)
done
for s in "$tmp"/exec/runtime-runc/moby/*; do [ -e "$s" ] && leaks+=("amphi state $s"); done
while read -r m; do leaks+=("mount $m"); done < <(awk -v t="$tmp/root/" 'index($2, t) == 1 && $2 !~ /\/vfs\// {print $2}' /proc/self/mounts)
if [ ${#leaks[@]} = 0 ]; then
  ok "nothing is left behind (containers, cgroups, amphi state, mounts)"
else
  not_ok "nothing is left behind (containers, cgroups, amphi state, mounts)" "${leaks[@]}"
fi

if [ "$failed" != 0 ]; then
  echo "# dockerd log: last lines"
  tail -15 "$tmp/dockerd.log" | cut -c1-300 | sed 's/^/#   /'
fi
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
