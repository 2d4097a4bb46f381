#!/bin/busybox sh
# /init of the virtio-fs end-to-end guest (tests/vm/e2e.sh): loads the
# virtio-fs modules, mounts the shares the VMM serves, uses them, reports
# each step on the console as "FS-E2E ...", and powers off. The host side
# checks the files afterwards.
export PATH=/bin
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /mnt/share /mnt/ro
mount -t proc proc /proc
mount -t devtmpfs dev /dev
say() { echo "FS-E2E $*"; }
for m in $(cat /modules.order); do insmod "/mods/$m.ko" || say "insmod $m failed"; done
mount -t virtiofs hostshare /mnt/share && say "mounted hostshare"
mount -t virtiofs ro /mnt/ro && say "mounted ro"
say "read: $(cat /mnt/share/from-host.txt)"
echo "written in the guest" > /mnt/share/from-guest.txt && say "wrote from-guest.txt"
mkdir /mnt/share/dir-from-guest && say "made dir-from-guest"
say "owner: $(stat -c %u:%g /mnt/share/from-host.txt)"
# Mount points inside the share: a directory and a single file bind-mounted there.
say "vol: $(cat /mnt/share/vol/inside.txt)"
echo "guest in vol" > /mnt/share/vol/from-guest.txt && say "wrote vol/from-guest.txt"
say "single: $(cat /mnt/share/single.txt)"
echo "guest in single" >> /mnt/share/single.txt && say "appended single.txt"
# The read-only share is mounted read-write on purpose: the device refuses.
echo x 2>/dev/null > /mnt/ro/new.txt && say "ro create succeeded"
say "ro touch: $(touch /mnt/ro/ro.txt 2>&1)"
say "ro read: $(cat /mnt/ro/ro.txt)"
# A rough throughput figure: 32 MiB through the share each way, timed
# with /proc/uptime (centiseconds; busybox's dd prints no rate).
cs() { read -r up _ < /proc/uptime; echo "${up%.*}${up#*.}"; }
t0=$(cs)
dd if=/dev/zero of=/mnt/share/big bs=1M count=32 conv=fsync 2>/dev/null && say "write: 32 MiB in $(( $(cs) - t0 ))0 ms"
echo 3 > /proc/sys/vm/drop_caches
t0=$(cs)
dd if=/mnt/share/big of=/dev/null bs=1M 2>/dev/null && say "read: 32 MiB in $(( $(cs) - t0 ))0 ms"
rm /mnt/share/big && say "removed big"
sync
umount /mnt/share && say "unmounted"
say "done"
poweroff -f
