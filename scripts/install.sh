#!/usr/bin/env bash
# Installs amphi's binaries from a build directory (default: the static
# release build) into /usr/local/libexec/amphi, links them into
# /usr/local/bin, and makes that directory a read-only bind mount.
#
# Why read-only: a container's init is a fork of amphi, so until it execs
# the workload its /proc/<pid>/exe is amphi's binary (CVE-2019-5736). amphi
# refuses to run from a writable binary: it then copies itself into a
# sealed memfd and re-executes, which costs a few milliseconds on every
# create. Run from a read-only mount it needs neither. The mount does not
# survive a reboot; amphi stays safe without it, only slower (run this
# script again, e.g. from a boot service).
#
# Usage: scripts/install.sh [BUILD_DIR] [PREFIX]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
src=${1:-$root/target/x86_64-unknown-linux-gnu/release}
prefix=${2:-/usr/local}
dest=$prefix/libexec/amphi
# amphi-workload is not part of the runtime: amphi bench copies it into its
# benchmark containers' root filesystems, and finds it here.
bins=(amphi amphi-agent containerd-shim-amphi-v2 amphi-workload)
for b in "${bins[@]}"; do
  [ -x "$src/$b" ] || { echo "install: $src/$b is missing: build first (scripts/setup.sh)" >&2; exit 1; }
done
mkdir -p "$dest" "$prefix/bin"
# Lift an earlier read-only mount so the new binaries can be written.
while mountpoint -q "$dest"; do umount "$dest"; done
for b in "${bins[@]}"; do
  install -m 0755 "$src/$b" "$dest/$b.new"
  mv -f "$dest/$b.new" "$dest/$b"
  ln -sfn "$dest/$b" "$prefix/bin/$b"
done
mount --bind "$dest" "$dest"
mount -o remount,bind,ro "$dest"
echo "install: ${bins[*]} -> $dest (read-only bind mount), linked from $prefix/bin"
