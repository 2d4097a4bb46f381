#!/usr/bin/env bash
# Leak check around a test run: `snapshot FILE` records the containers,
# cgroups, mounts and container processes that exist now; `compare FILE`
# lists everything that exists now but did not then, and fails if anything
# does. Anything new after the suite is a leak: every test cleans up after
# itself, including on failure.
set -uo pipefail

collect() {
  # amphi state directories (default root) and their cgroups
  ls -1 /run/amphi 2>/dev/null | sed 's/^/state /'
  # leaf cgroups: amphi's default parent, and the validation suite's paths
  find /sys/fs/cgroup -mindepth 2 -maxdepth 6 -type d \
    \( -path '*/amphi/*' -o -name cgrouptest -o -name 'amphi-*' \) 2>/dev/null | sed 's/^/cgroup /'
  # mounts below temporary and state directories
  awk '$2 ~ "^/(tmp|var/tmp|run/amphi)/" {print "mount " $2}' /proc/self/mounts
  # processes whose root is not the host's: container processes
  for p in /proc/[0-9]*; do
    r=$(readlink "$p/root" 2>/dev/null) || continue
    [ "$r" = / ] && continue
    [ "$(awk '{print $3}' "$p/stat" 2>/dev/null)" = Z ] && continue
    echo "process ${p#/proc/} root=$r $(tr '\0' ' ' < "$p/cmdline" 2>/dev/null | cut -c1-60)"
  done
}

case ${1:-} in
  snapshot) collect | sort > "$2" ;;
  compare)
    now=$(mktemp)
    collect | sort > "$now"
    new=$(comm -13 "$2" "$now")
    rm -f "$now"
    if [ -n "$new" ]; then
      echo "leaks: left behind by the suite:"
      echo "$new" | sed 's/^/  /'
      exit 1
    fi
    echo "leaks: none (no new containers, cgroups, mounts or container processes)"
    ;;
  *) echo "usage: tests/leaks.sh snapshot|compare FILE" >&2; exit 2 ;;
esac
