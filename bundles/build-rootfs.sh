#!/bin/sh
# Builds the root filesystem of every example bundle (bundles/<name>/rootfs)
# from Debian's busybox-static: one static binary plus its applet links, a
# minimal /etc. Idempotent; rebuilds a rootfs only when busybox changed.
#
# Usage: bundles/build-rootfs.sh [BUNDLE_DIR...]   (default: every bundle here)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
busybox=${BUSYBOX:-/bin/busybox}
[ -x "$busybox" ] || { echo "build-rootfs: $busybox is missing: apt-get install busybox-static" >&2; exit 2; }
file "$busybox" 2>/dev/null | grep -q "statically linked" || \
  ldd "$busybox" 2>&1 | grep -q "not a dynamic executable" || \
  { echo "build-rootfs: $busybox is not static: install busybox-static, not busybox" >&2; exit 2; }

[ $# -gt 0 ] || set -- "$here"/*/
stamp=$(sha256sum "$busybox" | cut -c1-16)
for b in "$@"; do
  b=${b%/}
  [ -f "$b/config.json" ] || continue
  root=$b/rootfs
  if [ -f "$root/.busybox-$stamp" ]; then
    continue
  fi
  rm -rf "$root"
  mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/proc" "$root/sys" "$root/dev" "$root/root" "$root/var"
  chmod 1777 "$root/tmp"
  cp "$busybox" "$root/bin/busybox"
  for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
  echo amphi > "$root/etc/hostname"
  touch "$root/.busybox-$stamp"
  echo "build-rootfs: $root"
done
