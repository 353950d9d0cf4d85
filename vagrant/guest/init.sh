#!/bin/sh
# dockerguard test VM PID 1: run /work/guest.sh from the second disk, then power off.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /work
if mount -t ext4 /dev/vdb /work; then
    sh /work/guest.sh
    sync
    umount /work
else
    echo "dg-init: cannot mount /dev/vdb" >/dev/console
fi
sync
echo o >/proc/sysrq-trigger
sleep 60
