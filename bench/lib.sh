# Sourced by the VM benchmarks (bench/vm-*.sh).

# vm_preflight NAME AMPHI: exits 2 with a line naming NAME unless this runs
# as root, AMPHI is a program, and /dev/kvm runs stock kernels (elsewhere,
# such as this project's PVM machines, the benchmarks run in the full test
# host).
vm_preflight() {
  [ "$(id -u)" = 0 ] || { echo "$1: run as root" >&2; exit 2; }
  [ -x "$2" ] || { echo "$1: no amphi binary" >&2; exit 2; }
  if [ -e /sys/module/kvm_pvm ] || ! grep -qwE 'vmx|svm' /proc/cpuinfo; then
    echo "$1: this /dev/kvm cannot run stock kernels: run me in the full test host" >&2
    exit 2
  fi
}
