#!/usr/bin/env bash
# Sets up a Debian 12 machine (as root) for amphi's demo and test suite.
# Idempotent: re-running only does what is missing or out of date.
#
#   1. Debian packages: build deps, the reference runtimes and clients
#      (runc, crun, podman, containerd), QEMU for the nested VM test host,
#      busybox-static for bundles, Go for the OCI validation suite.
#   2. A static release build of amphi, amphi-agent,
#      containerd-shim-amphi-v2 and amphi-workload (amphi bench's workload),
#      installed under /usr/local.
#   3. The example bundles' root filesystems.
#   4. cargo-afl for the fuzz tier (crates.io, into ~/.cargo/bin).
#   5. The guest kernel for the VM isolation and the full test host's kernel
#      (both downloaded and unpacked into /var/lib/amphi, not installed).
#
# Options: --no-build (packages only), --quiet.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=1
quiet=0
for a in "$@"; do
  case $a in
    --no-build) build=0 ;;
    --quiet) quiet=1 ;;
    *) echo "setup: unknown option $a" >&2; exit 2 ;;
  esac
done
say() { [ "$quiet" = 1 ] || echo "setup: $*"; }
die() { echo "setup: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (amphi is a container runtime)"

export DEBIAN_FRONTEND=noninteractive
PACKAGES=(
  # building amphi
  build-essential pkg-config libseccomp-dev
  # bundles, the VM guest image and the nested test host
  busybox-static cpio lz4 zstd xz-utils kmod e2fsprogs file qemu-system-x86
  # reference runtimes and real clients (umoci builds containerd's test image)
  runc crun podman conmon containerd uidmap umoci docker.io
  # the OCI validation suite is built from Debian's Go sources
  golang-go golang-github-opencontainers-runtime-tools-dev
  # test and benchmark tools
  bats hyperfine jq time iproute2 procps util-linux
  # the CRI test (tests/cri): the pods' CNI plugins, a static pause (libc.a
  # from libc6-dev, in build-essential) and protoc for the CRI client's
  # protobufs (k8s-cri builds them)
  containernetworking-plugins protobuf-compiler
  # renders amphi bench's HTML report for tests/bench/screenshot-check.sh
  chromium
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${#missing[@]} Debian packages: ${missing[*]}"
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ "$build" = 1 ]; then
  command -v cargo >/dev/null || die "cargo is missing: install Rust (1.85 or newer) with rustup first"
  say "building amphi, amphi-agent, containerd-shim-amphi-v2 and amphi-workload (release, static)"
  # Static binaries: they start faster (no dynamic loader) and run unchanged
  # inside the guest and the nested test host. libseccomp links statically.
  (cd "$root" && LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=/usr/lib/x86_64-linux-gnu \
    RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked --target x86_64-unknown-linux-gnu --workspace $([ "$quiet" = 1 ] && echo -q))
  out=$root/target/x86_64-unknown-linux-gnu/release
  "$root/scripts/install.sh" "$out"
fi

# The fuzz tier's tool: cargo-afl (AFL++ for stable Rust) into ~/.cargo/bin.
if command -v cargo >/dev/null && ! "$root/fuzz/run.sh" --install >/dev/null 2>&1; then
  say "could not install cargo-afl (the fuzz tier will say why it skips)"
fi

say "building the example bundles' root filesystems"
"$root/bundles/build-rootfs.sh" >/dev/null

if ! "$root/scripts/fetch-guest-kernel" >/dev/null 2>&1; then
  say "could not fetch the guest kernel (VM tests will say why they skip)"
fi
if ! "$root/scripts/fetch-test-host-kernel" >/dev/null 2>&1; then
  say "could not fetch the test host's kernel (the testhost tier will say why it skips)"
fi
say "done"
