#!/bin/sh
# `ctscope profile` on the eBPF source: it counts the NEW and DESTROY of a
# known churn, and measures delivery latency from the kernel's timestamps
# (ctnetlink cannot).
set -eu
. /vm/harness/lib.sh

ct_counter_table prof
set_sysctl net.netfilter.nf_conntrack_udp_timeout 3600 || fail "udp timeout"

step "profile --source ebpf during 2000 new flows and their flush"
ctscope profile --source ebpf --duration "$(budget 15)" -o json >/tmp/prof.json 2>/tmp/prof.err &
prof=$!
wait_for_line /tmp/prof.err 'event source: eBPF' "the tracer did not start"
ctchurn --count 2000 --src-base 127.8.0.1 >/dev/null 2>&1 || fail "ctchurn failed"
conntrack -F 2>/dev/null
wait "$prof" || fail "profile exited with $?: $(cat /tmp/prof.err)"
cat /tmp/prof.json | cut -c1-400
grep -q '"source":"ebpf"' /tmp/prof.json || fail "not the eBPF source: $(cat /tmp/prof.err)"
grep -q '"new":2000,' /tmp/prof.json || fail "NEW is not 2000"
grep -q '"destroy":2000,' /tmp/prof.json || fail "DESTROY is not 2000"
grep -q '"lost":0,' /tmp/prof.json || fail "events were lost"
delivered=$(sed -n 's/.*"delivery_ns":{"count":\([0-9]*\).*/\1/p' /tmp/prof.json)
[ "${delivered:-0}" -eq 4000 ] || fail "delivery latency counted ${delivered:-0} events, not 4000"

echo "ebpf_profile: ok"
