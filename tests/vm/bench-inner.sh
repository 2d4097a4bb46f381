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

# Reads a console on stdin (blocking, no polling: the test host may have
# one CPU) until the agent's line, writes the time to $1, then drains the
# rest into $2 so the VMM never blocks on its console.
mark_reader() {
  while IFS= read -r l; do
    case $l in *"$MARK"*) now > "$1"; break;; esac
  done
  cat > "$2"
}

# amphi: from launching `amphi vm check` to the listening line on its console.
amphi_once() {
  rm -f /tmp/t1
  t0=$(now)
  timeout 300 "$A" vm check --kernel "$p/kernel/vmlinuz" --modules "$p/modules" --cache-dir "$CACHE" \
    --timeout 240 --console - --json 2>/tmp/amphi.err | mark_reader /tmp/t1 /tmp/amphi.rest
  [ -s /tmp/t1 ] || { cat /tmp/amphi.err /tmp/amphi.rest; echo "bench: amphi never printed the agent's line"; return 1; }
  hs=$(grep -o '"boot_to_handshake_ms": [0-9]*' /tmp/amphi.rest | awk '{print $2}')
  rss=$(grep -o '"vmm_peak_rss_kib": [0-9]*' /tmp/amphi.rest | awk '{print $2}')
  guest=$(grep -o '"guest_rss_kib": [0-9]*' /tmp/amphi.rest | awk '{print $2}')
  [ -n "$hs" ] || { cat /tmp/amphi.err; echo "bench: amphi vm check failed"; return 1; }
  echo "$(sub_ms "$t0" "$(cat /tmp/t1)") $hs $rss $((rss - ${guest:-0}))"
}

# QEMU microvm: from launch to the same line, then its peak RSS, then stop it.
qemu_once() {
  rm -f /tmp/t1 /tmp/qpid /tmp/qrss
  t0=$(now)
  { "$QEMU_LD" --library-path "$p/qemu/lib" "$p/qemu/qemu-system-x86_64" \
      -M microvm -enable-kvm -cpu host -m 256 -smp 1 -nodefaults -no-user-config -nographic \
      -L "$p/qemu/share" -serial stdio \
      -kernel "$p/kernel/vmlinuz" -initrd "$INITRD" -append "$CMDLINE" \
      -device vhost-vsock-device,guest-cid=3 </dev/null 2>&1 &
    qpid=$!
    echo $qpid > /tmp/qpid
    # A QEMU that never gets there is stopped rather than left to hang the run.
    ( sleep 300; kill -9 $qpid 2>/dev/null ) > /dev/null 2>&1 &
    wait $qpid
  } | {
    while IFS= read -r l; do
      case $l in *"$MARK"*) now > /tmp/t1; break;; esac
    done
    pid=$(cat /tmp/qpid)
    awk '/VmHWM/ {print $2}' "/proc/$pid/status" > /tmp/qrss
    kill -9 "$pid" 2>/dev/null
    cat > /tmp/qemu.rest
  }
  [ -s /tmp/t1 ] || { cat /tmp/qemu.rest; echo "bench: qemu never printed the agent's line"; return 1; }
  echo "$(sub_ms "$t0" "$(cat /tmp/t1)") $(cat /tmp/qrss)"
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
a_own=$(cut -d' ' -f4 /tmp/a.txt | median)
q_listen=$(cut -d' ' -f1 /tmp/q.txt | median)
q_rss=$(cut -d' ' -f2 /tmp/q.txt | median)
echo "boot benchmark ($rounds rounds, medians, $(uname -r), $(grep -c ^processor /proc/cpuinfo) CPU):"
echo "  launch -> agent listening:  amphi ${a_listen} ms   qemu microvm ${q_listen} ms   ratio $(awk -v a="$a_listen" -v b="$q_listen" 'BEGIN { printf "%.2f", a / b }')"
echo "  amphi VMM start -> handshake done: ${a_hs} ms"
echo "  peak RSS:                   amphi VMM $((a_rss / 1024)) MiB   qemu $((q_rss / 1024)) MiB"
echo "  amphi VMM's own memory (peak RSS minus guest memory the guest touched): $((a_own / 1024)) MiB"
