#!/bin/sh
# /init of the ctscope qemu guest (cargo xtask vm-run / vm-test build it into
# the initramfs). It mounts the pseudo file systems, loads the netfilter
# modules listed in /vm/modules, sets the sysctls in /vm/sysctls, runs
# /vm/cmd and prints its exit status on a marker line that xtask reads:
#   CTSCOPE-VM-EXIT=<status>
# then powers the machine off. 125 means the guest could not be set up.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=dumb

finish() {
    # The empty line keeps the marker off a half-written console line.
    echo
    echo "CTSCOPE-VM-EXIT=$1"
    sync
    poweroff -f
}

fatal() {
    echo "CTSCOPE-VM: $*"
    finish 125
}

mount -t proc proc /proc || fatal "cannot mount /proc"
mount -t sysfs sysfs /sys || fatal "cannot mount /sys"
mount -t devtmpfs devtmpfs /dev || fatal "cannot mount /dev"
mkdir -p /dev/pts /dev/shm /run /tmp /root
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /dev/shm
# Best effort: kprobe_events (the fallback when there is no kprobe PMU),
# trace_pipe for bpf_printk, pinned maps.
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
ulimit -l unlimited
hostname ctscope-vm
ip link set lo up || fatal "ip link set lo up failed"

while read -r name need; do
    [ -n "$name" ] || continue
    if insmod "/lib/modules/$(uname -r)/ctscope-vm/$name.ko"; then
        :
    elif [ "$need" = required ]; then
        fatal "insmod $name failed"
    else
        echo "CTSCOPE-VM: optional module $name did not load"
    fi
done </vm/modules

while read -r setting; do
    [ -n "$setting" ] || continue
    sysctl -w "$setting" >/dev/null || fatal "sysctl -w $setting failed"
done </vm/sysctls
sh /vm/harness/warm-conntrack.sh

cd /tmp || fatal "no /tmp"
sh /vm/cmd
finish $?
