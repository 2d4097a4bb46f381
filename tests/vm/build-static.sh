#!/usr/bin/env bash
# Builds amphi, amphi-agent, containerd-shim-amphi-v2 and amphi-workload
# (the benchmarks' in-container program) as fully static
# executables (glibc crt-static, libseccomp from libseccomp-dev's
# libseccomp.a, the flags scripts/setup.sh uses) and copies them side by
# side into OUT_DIR (default target/vm-static), so amphi finds the agent
# next to itself, the shim finds amphi next to itself, and all run in the
# nested test hosts without any shared library. --target keeps build
# scripts and proc-macros dynamic.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-${CARGO_TARGET_DIR:-$root/target}/vm-static}
triple=x86_64-unknown-linux-gnu
export RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static"
export LIBSECCOMP_LINK_TYPE=static
export LIBSECCOMP_LIB_PATH=${LIBSECCOMP_LIB_PATH:-/usr/lib/x86_64-linux-gnu}
cd "$root"
cargo build --release --locked --target "$triple" -p amphi -p amphi-agent -p containerd-shim-amphi-v2 -p amphi-workload >&2
target=${CARGO_TARGET_DIR:-$root/target}
mkdir -p "$out"
bins="amphi amphi-agent containerd-shim-amphi-v2 amphi-workload"
for b in $bins; do
  # Replaced, not overwritten: a running copy (a test host) keeps its file.
  cp "$target/$triple/release/$b" "$out/.$b.new"
  mv -f "$out/.$b.new" "$out/$b"
done
for b in $bins; do
  if readelf -l "$out/$b" | grep -q 'INTERP'; then
    echo "build-static: $out/$b is not static" >&2
    exit 1
  fi
done
echo "$out"
