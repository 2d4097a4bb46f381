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
  podman rm -f amphi-bats-d >/dev/null 2>&1 || true
  rm -rf "$ROOTFS"
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
