#!/bin/sh
# The guest is fit for ctscope's end-to-end tests: conntrack runs as a
# module, an nftables ct rule turns tracking on, the reference tools work,
# the kernel has what the kprobe path needs (BTF, kprobe PMU, the hooked
# symbols), and `ctscope list` agrees with `conntrack -L`.
set -eu
. /vm/harness/lib.sh

echo "   kernel $(uname -r)"

step "nf_conntrack is loaded"
grep -q '^nf_conntrack ' /proc/modules || [ -d /sys/module/nf_conntrack ] ||
    fail "nf_conntrack is neither in /proc/modules nor in /sys/module"
[ -r /proc/sys/net/netfilter/nf_conntrack_max ] ||
    fail "no /proc/sys/net/netfilter/nf_conntrack_max"

step "conntrack -L works on the empty table"
conntrack -L >/tmp/empty.txt 2>/tmp/empty.err || fail "conntrack -L: $(cat /tmp/empty.err)"
[ "$(conntrack -C)" -eq 0 ] || fail "the table is not empty before any rule: $(cat /tmp/empty.txt)"

step "an nft 'ct state new' rule makes loopback traffic tracked"
ct_counter_table smoke
# UDP: busybox nc has no -u; traceroute's probes are UDP to 33434 and up.
traceroute -n -q 1 -m 1 -w 1 127.0.0.1 >/dev/null 2>&1 || true
# ICMP and TCP.
ping -c 1 -W 2 127.0.0.1 >/dev/null || fail "ping 127.0.0.1 failed"
nc -l -p 9999 >/dev/null 2>&1 &
listener=$!
sleep 1
echo hello | nc -w 2 127.0.0.1 9999 || true
kill "$listener" 2>/dev/null || true
wait "$listener" 2>/dev/null || true
if [ -x /usr/local/bin/ctchurn ]; then
    ctchurn --count 200 >/dev/null || fail "ctchurn --count 200 failed"
    churned=200
else
    echo "   (no ctchurn in this guest: UDP from traceroute only)"
    churned=0
fi
conntrack -L >/tmp/tracked.txt 2>/dev/null || fail "conntrack -L failed"
grep -v 'src=127\.1\.' /tmp/tracked.txt || true
count=$(conntrack -C)
echo "   conntrack -C: $count"
[ "$count" -gt "$churned" ] || fail "conntrack -C is $count after the traffic (expected > $churned)"
grep -q '^udp .*dport=3343[4-9] ' /tmp/tracked.txt || fail "no UDP entry for traceroute's probe"
grep -q '^icmp .*type=8 ' /tmp/tracked.txt || fail "no ICMP echo entry"
grep -q '^tcp .*dport=9999 ' /tmp/tracked.txt || fail "no TCP entry for port 9999"
nft list chain inet smoke input | grep -Eq 'counter packets [1-9]' ||
    fail "the ct state new counter did not count: $(nft list chain inet smoke input)"

step "the kernel has BTF, the kprobe PMU and the hooked conntrack functions"
[ -r /sys/kernel/btf/vmlinux ] || fail "no /sys/kernel/btf/vmlinux"
[ -r /sys/kernel/btf/nf_conntrack ] || fail "no /sys/kernel/btf/nf_conntrack (module BTF)"
[ -d /sys/bus/event_source/devices/kprobe ] || fail "no kprobe PMU in /sys/bus/event_source/devices"
# One read of /proc/kallsyms: each takes seconds in a TCG guest.
grep -F '[nf_conntrack]' /proc/kallsyms >/tmp/kallsyms.nf_conntrack || true
for sym in __nf_conntrack_confirm nf_ct_delete nf_ct_destroy; do
    grep -q " $sym[[:space:]]*\[nf_conntrack\]" /tmp/kallsyms.nf_conntrack || fail "$sym is not in /proc/kallsyms"
done

step "ctscope list prints what conntrack -L prints"
assert_list_parity
assert_list_parity -o extended
assert_list_parity -p tcp
[ "$(ctscope count)" -eq "$(conntrack -C)" ] || fail "ctscope count $(ctscope count) != conntrack -C $(conntrack -C)"

echo "smoke: ok"
