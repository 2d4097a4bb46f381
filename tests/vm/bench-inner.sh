#!/bin/sh
# The measuring half of bench.sh, run where the VMs boot (busybox sh).
p=${1:-/payload}; rounds=${2:-5}
A=$p/amphi
CACHE=/tmp/bench-cache
MARK="amphi-agent: listening on vsock port"
QEMU_LD=$(ls "$p"/qemu/lib/ld-linux-x86-64.so.2)
now() { cut -d' ' -f1 /proc/uptime; }
sub_ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%d", (b - a) * 1000 }'; }
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print int((v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }

# Warm up: builds the cached initramfs both VMMs then boot.
"$A" vm check --kernel "$p/kernel/vmlinuz" --modules "$p/modules" --cache-dir "$CACHE" --timeout 300 >/tmp/warm.txt 2>&1 \
  || { cat /tmp/warm.txt; echo "bench: amphi warm-up failed"; exit 1; }
cat /tmp/warm.txt
INITRD=$(ls "$CACHE"/initramfs-*.cpio)
CMDLINE="console=ttyS0 quiet panic=-1 pci=off 8250.nr_uarts=1 tsc=reliable rdinit=/init"

# Waits (blocking, no polling: the test host may have one CPU) until the
# console on fifo $1 shows the agent's line; prints the time; drains the
# rest in the background so the VMM never blocks on its console.
wait_mark() {
  exec 3< "$1"
  while IFS= read -r l <&3; do
    case $l in *"$MARK"*) now; break;; esac
  done
  cat <&3 > /dev/null &
  exec 3<&-
}

# amphi: from launching `amphi vm check` to the listening line on its console.
amphi_once() {
  rm -f /tmp/afifo; mkfifo /tmp/afifo
  t0=$(now)
  "$A" vm check --kernel "$p/kernel/vmlinuz" --modules "$p/modules" --cache-dir "$CACHE" --timeout 300 \
    --console /tmp/afifo --json > /tmp/amphi.json 2>/tmp/amphi.err &
  pid=$!
  t1=$(wait_mark /tmp/afifo)
  wait $pid || { cat /tmp/amphi.err; return 1; }
  hs=$(grep -o '"boot_to_handshake_ms": [0-9]*' /tmp/amphi.json | awk '{print $2}')
  rss=$(grep -o '"vmm_peak_rss_kib": [0-9]*' /tmp/amphi.json | awk '{print $2}')
  echo "$(sub_ms "$t0" "$t1") $hs $rss"
}

# QEMU microvm: from launch to the same line, then its peak RSS, then stop it.
qemu_once() {
  rm -f /tmp/qfifo; mkfifo /tmp/qfifo
  t0=$(now)
  "$QEMU_LD" --library-path "$p/qemu/lib" "$p/qemu/qemu-system-x86_64" \
    -M microvm -enable-kvm -cpu host -m 256 -smp 1 -nodefaults -no-user-config -nographic \
    -L "$p/qemu/share" -serial stdio \
    -kernel "$p/kernel/vmlinuz" -initrd "$INITRD" -append "$CMDLINE" \
    -device vhost-vsock-device,guest-cid=3 > /tmp/qfifo 2>&1 </dev/null &
  pid=$!
  t1=$(wait_mark /tmp/qfifo)
  [ -n "$t1" ] || { echo "bench: qemu never printed the agent's line"; return 1; }
  rss=$(awk '/VmHWM/ {print $2}' /proc/$pid/status)
  kill -9 $pid; wait $pid 2>/dev/null
  echo "$(sub_ms "$t0" "$t1") $rss"
}

: > /tmp/a.txt; : > /tmp/q.txt
i=0
while [ $i -lt "$rounds" ]; do
  a=$(amphi_once) || exit 1
  q=$(qemu_once) || exit 1
  echo "# round $((i + 1)): amphi listening/handshake/rss_kib: $a | qemu listening/rss_kib: $q"
  echo "$a" >> /tmp/a.txt; echo "$q" >> /tmp/q.txt
  i=$((i + 1))
done
a_listen=$(cut -d' ' -f1 /tmp/a.txt | median)
a_hs=$(cut -d' ' -f2 /tmp/a.txt | median)
a_rss=$(cut -d' ' -f3 /tmp/a.txt | median)
q_listen=$(cut -d' ' -f1 /tmp/q.txt | median)
q_rss=$(cut -d' ' -f2 /tmp/q.txt | median)
echo "boot benchmark ($rounds rounds, medians, $(uname -r), $(grep -c ^processor /proc/cpuinfo) CPU):"
echo "  launch -> agent listening:  amphi ${a_listen} ms   qemu microvm ${q_listen} ms   ratio $(awk -v a="$a_listen" -v b="$q_listen" 'BEGIN { printf "%.2f", a / b }')"
echo "  amphi VMM start -> handshake done: ${a_hs} ms"
echo "  peak RSS:                   amphi VMM $((a_rss / 1024)) MiB   qemu $((q_rss / 1024)) MiB"
