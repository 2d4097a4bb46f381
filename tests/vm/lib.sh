# Helpers shared by amphi's VM test scripts (sourced, not run).

# Newest kernel tree unpacked by scripts/fetch-guest-kernel, else "/".
default_kernel_root() {
  local d
  d=$(ls -d /var/lib/amphi/kernels/*/ 2>/dev/null | sort -V | tail -1)
  if [ -n "$d" ]; then echo "${d%/}"; return; fi
  if ls /boot/vmlinuz-* >/dev/null 2>&1; then echo /; return; fi
  echo "no guest kernel: run scripts/fetch-guest-kernel first" >&2
  return 1
}

# Release of the newest boot/vmlinuz-* under a kernel root.
kernel_release_in() {
  local k
  k=$(ls "$1"/boot/vmlinuz-* 2>/dev/null | sort -V | tail -1)
  [ -n "$k" ] || { echo "no boot/vmlinuz-* under $1" >&2; return 1; }
  basename "$k" | sed 's/^vmlinuz-//'
}

# Reads a little-endian u32 (or u8 with n=1) at a byte offset of a file.
read_le() { od -An -t "u$3" -j "$2" -N "$3" "$1" | tr -d ' '; }

# extract_vmlinux BZIMAGE OUT: the ELF kernel inside a bzImage (header
# fields setup_sects 0x1f1, payload_offset 0x248, payload_length 0x24c).
extract_vmlinux() {
  local setup off len start
  setup=$(read_le "$1" $((0x1f1)) 1); [ "$setup" = 0 ] && setup=4
  off=$(read_le "$1" $((0x248)) 4)
  len=$(read_le "$1" $((0x24c)) 4)
  start=$(( (setup + 1) * 512 + off ))
  dd if="$1" of="$2.z" iflag=skip_bytes,count_bytes skip="$start" count="$len" bs=1M status=none
  local dec
  for dec in "lz4 -dc" "zstd -dcq" "xz -dc" "gzip -dc" "bzip2 -dc"; do
    # lz4 complains about the kernel's legacy frame trailer but writes it all.
    $dec < "$2.z" > "$2" 2>/dev/null || true
    if [ "$(head -c4 "$2" | od -An -c | tr -d ' ')" = '177ELF' ]; then rm -f "$2.z"; return 0; fi
  done
  echo "cannot extract an ELF kernel from $1" >&2
  return 1
}

# module_file MODDIR NAME: path of a module by name (- and _ alike).
module_file() {
  local n=${2//_/[-_]}
  find "$1" -name "$n.ko" -o -name "$n.ko.xz" -o -name "$n.ko.zst" | head -1
}

# module_load_order MODDIR NAME...: the modules and their dependencies,
# dependencies first, each once (from modinfo, no modules.dep needed).
module_load_order() {
  local dir=$1; shift
  local seen=" " out=""
  visit() {
    local m=${1//-/_} f d
    case "$seen" in *" $m "*) return;; esac
    seen="$seen$m "
    f=$(module_file "$dir" "$m")
    if [ -z "$f" ]; then
      grep -q "/$m.ko" "$dir/modules.builtin" 2>/dev/null && return
      echo "module $m not found under $dir" >&2; return 1
    fi
    for d in $(modinfo -F depends "$f" | tr ',' ' '); do visit "$d"; done
    out="$out $m"
  }
  for m in "$@"; do visit "$m"; done
  echo $out
}

# copy_module MODDIR NAME OUT: the module, decompressed.
copy_module() {
  local f
  f=$(module_file "$1" "$2")
  case $f in
    *.xz) xz -dc "$f" > "$3";;
    *.zst) zstd -qdc "$f" > "$3";;
    *) cp "$f" "$3";;
  esac
}

# copy_module_tree MODDIR OUT NAME...: a minimal module tree holding the
# named modules and their dependencies (plus modules.builtin), as amphi's
# --modules expects.
copy_module_tree() {
  local dir=$1 out=$2; shift 2
  mkdir -p "$out/kernel"
  cp "$dir/modules.builtin" "$out/" 2>/dev/null || true
  local m f
  for m in $(module_load_order "$dir" "$@"); do
    f=$(module_file "$dir" "$m")
    cp "$f" "$out/kernel/"
  done
}

# build_fs_initrd OUT MODDIR: the busybox initramfs of the virtio-fs
# end-to-end test (fs-guest-init.sh as /init, the virtio-fs modules and
# their dependencies uncompressed under /mods, their load order in
# /modules.order). No agent: the guest reports on the console.
build_fs_initrd() {
  local out=$1 moddir=$2 here root order m
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  order=$(module_load_order "$moddir" virtio_mmio virtiofs) || return 1
  root=$(mktemp -d /tmp/amphi-fs-initrd.XXXXXX)
  mkdir -p "$root/bin" "$root/mods"
  cp /bin/busybox "$root/bin/busybox"
  for m in $order; do copy_module "$moddir" "$m" "$root/mods/$m.ko"; done
  echo "$order" > "$root/modules.order"
  cp "$here/fs-guest-init.sh" "$root/init"
  chmod +x "$root/init"
  (cd "$root" && find . | cpio -o -H newc --quiet) > "$out"
  rm -rf "$root"
}

# Whether a binary is statically linked (no ELF interpreter).
is_static() { ! readelf -l "$1" 2>/dev/null | grep -q INTERP; }

# vm_binaries: a directory holding static amphi and amphi-agent side by
# side: the installed ones when $AMPHI (scripts/test.sh exports it) points
# at such a pair, else a fresh static build (build-static.sh).
vm_binaries() {
  local here d
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  if [ -n "${AMPHI:-}" ]; then
    d=$(dirname "$AMPHI")
    if [ -x "$d/amphi-agent" ] && is_static "$d/amphi" && is_static "$d/amphi-agent"; then
      echo "$d"; return 0
    fi
  fi
  "$here/build-static.sh"
}

# prepare_payload DIR KROOT KVER BINDIR: what the VM tests and the demo
# need, in DIR: the binaries, the guest kernel (bzImage and its ELF
# vmlinux), a minimal module tree, an /init the kernel cannot execute
# (bad-init) and a static program that never answers on vsock
# (silent-agent: busybox, which runs as init and waits), and the virtio-fs
# test's busybox initramfs (fs-initrd; left out, and the test skipped, if
# the kernel has no virtiofs module).
prepare_payload() {
  local dir=$1 kroot=$2 kver=$3 bindir=$4
  cp "$bindir/amphi" "$bindir/amphi-agent" "$dir/"
  mkdir -p "$dir/kernel"
  cp "$kroot/boot/vmlinuz-$kver" "$dir/kernel/vmlinuz"
  extract_vmlinux "$kroot/boot/vmlinuz-$kver" "$dir/kernel/vmlinux"
  copy_module_tree "$kroot/lib/modules/$kver" "$dir/modules" virtio_mmio virtio_blk virtio_balloon virtio_net vmw_vsock_virtio_transport virtiofs
  head -c 4096 /dev/urandom > "$dir/bad-init"
  cp /bin/busybox "$dir/silent-agent"
  build_fs_initrd "$dir/fs-initrd" "$kroot/lib/modules/$kver" || rm -f "$dir/fs-initrd"
}

# Where stock guests boot: "direct" (VMX/SVM /dev/kvm), "nested" (PVM or
# no hardware virtualization, but QEMU is there), or "none".
vm_place() {
  if [ -e /sys/module/kvm_pvm ]; then
    command -v qemu-system-x86_64 >/dev/null && echo nested || echo none
  elif [ -c /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; then
    echo direct
  elif command -v qemu-system-x86_64 >/dev/null; then
    echo nested
  else
    echo none
  fi
}
