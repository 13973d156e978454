#!/bin/sh
# Entries that time out are removed by the kernel's gc worker, not by a
# flush: the eBPF source must give their DESTROY too (nf_ct_delete on that
# path, not inlined away). conntrack -E runs alongside for comparison.
set -eu
. /vm/harness/lib.sh

ct_counter_table gc
set_sysctl net.netfilter.nf_conntrack_udp_timeout 2 || fail "udp timeout"

ctscope events --source ebpf -e DESTROY >/tmp/gc.ebpf 2>/tmp/gc.err &
tracer=$!
conntrack -E -e DESTROY >/tmp/gc.nl 2>/dev/null &
reference=$!
wait_for_line /tmp/gc.err 'event source: eBPF' "the tracer did not start"

step "300 UDP flows with a 2 s timeout, left to the gc worker"
ctchurn --count 300 --src-base 127.9.0.1 >/dev/null 2>&1 || fail "ctchurn failed"
# The gc worker scans a quiet table about once a minute.
i=0
secs=$(budget 150)
while [ "$(conntrack -C)" -gt 0 ] && [ "$i" -lt "$secs" ]; do
    sleep 1
    i=$((i + 1))
done
[ "$(conntrack -C)" -eq 0 ] || fail "$(conntrack -C) entries still there after ${i}s"
sleep 1
kill -INT "$tracer" "$reference"
wait "$tracer" || true
wait "$reference" || true
ebpf=$(grep -c '^\[DESTROY\] udp' /tmp/gc.ebpf || true)
echo "   DESTROY by timeout: eBPF $ebpf, conntrack -E $(grep -c DESTROY /tmp/gc.nl || true)"
[ "$ebpf" -eq 300 ] || fail "eBPF saw $ebpf DESTROY for 300 timed-out flows"

echo "ebpf_gc: ok"
