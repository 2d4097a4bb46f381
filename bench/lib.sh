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

# pss_rss_kib PID...: the PSS and RSS of these processes, summed (KiB, from
# /proc/PID/smaps_rollup; PSS splits each shared page between the processes
# that map it, so a sum over many processes counts a shared page once).
pss_rss_kib() {
  local p pss=0 rss=0 a b
  for p in "$@"; do
    read -r a b < <(awk '/^Pss:/ {p=$2} /^Rss:/ {r=$2} END {print p+0, r+0}' "/proc/$p/smaps_rollup" 2>/dev/null)
    pss=$((pss + ${a:-0})); rss=$((rss + ${b:-0}))
  done
  echo "$pss $rss"
}

# host_procs PID: PID (a container's pid from `amphi state`: the VMM in VM
# isolation, the init in container isolation) and every process of its
# host cgroup, one a line.
host_procs() {
  local cg
  cg=$(awk -F: '$1 == "0" {print $3}' "/proc/$1/cgroup" 2>/dev/null)
  { echo "$1"; [ -n "$cg" ] && cat "/sys/fs/cgroup$cg/cgroup.procs" 2>/dev/null; } | sort -u
}

avail_kib() { awk '/^MemAvailable:/ {print $2}' /proc/meminfo; }
