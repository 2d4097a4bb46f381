#!/usr/bin/env bash
# Builds amphi and amphi-agent as fully static executables (glibc
# crt-static, libseccomp from libseccomp-dev's libseccomp.a) and copies them
# side by side into OUT_DIR (default target/vm-static), so amphi finds the
# agent next to itself and both run in the nested test host without any
# shared library. --target keeps build scripts and proc-macros dynamic.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-${CARGO_TARGET_DIR:-$root/target}/vm-static}
triple=x86_64-unknown-linux-gnu
export RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static"
export LIBSECCOMP_LINK_TYPE=static
export LIBSECCOMP_LIB_PATH=${LIBSECCOMP_LIB_PATH:-/usr/lib/x86_64-linux-gnu}
cd "$root"
cargo build --release --locked --target "$triple" -p amphi -p amphi-agent >&2
target=${CARGO_TARGET_DIR:-$root/target}
mkdir -p "$out"
cp "$target/$triple/release/amphi" "$target/$triple/release/amphi-agent" "$out/"
for b in amphi amphi-agent; do
  if readelf -l "$out/$b" | grep -q 'INTERP'; then
    echo "build-static: $out/$b is not static" >&2
    exit 1
  fi
done
echo "$out"
