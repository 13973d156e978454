#!/bin/sh
# `ctscope serve` on the eBPF source: the tracer's gauges (source, probes,
# ring size), the NEW and DESTROY of a known churn in ctscope_events_total,
# the delivery latency histogram, and a scrape promtool-clean in shape
# (HELP and TYPE before every family).
set -eu
. /vm/harness/lib.sh

# Tracking on; the scrapes themselves make no entries.
nft -f - <<'NFT' || fail "nft could not load the rules"
table inet serve {
    chain pre {
        type filter hook prerouting priority raw; policy accept;
        tcp dport 10318 notrack
        tcp sport 10318 notrack
    }
    chain out {
        type filter hook output priority raw; policy accept;
        tcp dport 10318 notrack
        tcp sport 10318 notrack
    }
    chain input {
        type filter hook input priority 0; policy accept;
        ct state new counter
    }
}
NFT
at_exit "nft delete table inet serve 2>/dev/null"
set_sysctl net.netfilter.nf_conntrack_udp_timeout 3600 || fail "udp timeout"

step "serve --source ebpf during 2000 new flows and their flush"
ctscope serve --source ebpf --resync 3600 2>/tmp/serve.err &
serve=$!
wait_for_line /tmp/serve.err 'serving http' "serve did not start" "$serve"
grep -q 'event source: eBPF' /tmp/serve.err || fail "not the eBPF source: $(cat /tmp/serve.err)"
ctchurn --count 2000 --src-base 127.8.0.1 >/dev/null 2>&1 || fail "ctchurn failed"
conntrack -F 2>/dev/null
# The ring is drained every 100 ms and the snapshot published every 250 ms.
tries=0
secs=$(budget 10)
until wget -q -O /tmp/metrics.txt http://127.0.0.1:10318/metrics &&
    grep -q '^ctscope_events_total{type="destroy"} 2000$' /tmp/metrics.txt; do
    tries=$((tries + 1))
    [ "$tries" -lt "$((secs * 10))" ] ||
        fail "no 2000 DESTROY after $secs s: $(grep events_total /tmp/metrics.txt)"
    sleep 0.1
done
expect() {
    grep -qx "$1" /tmp/metrics.txt || fail "no line '$1' in the scrape: $(grep "${1%% *}" /tmp/metrics.txt)"
}
expect 'ctscope_source_info{source="ebpf",requested="ebpf",version="0.1.0"} 1'
# fentry/fexit in both guests: two programs.
expect 'ctscope_ebpf_probes_attached 2'
expect 'ctscope_ebpf_ring_buffer_bytes 33554432'
expect 'ctscope_events_total{type="new"} 2000'
expect 'ctscope_events_lost_total{reason="ring_buffer_full"} 0'
expect 'ctscope_event_delivery_seconds_count 4000'
expect 'ctscope_table_entries 0'
grep -q '^ctscope_nf_conntrack_entries_limit [1-9]' /tmp/metrics.txt || fail "no entries limit"
# Every sample's family has HELP and TYPE lines.
for family in $(grep -v '^#' /tmp/metrics.txt | sed -E 's/[{ ].*//; s/_(bucket|sum|count)$//' | sort -u); do
    grep -q "^# HELP $family" /tmp/metrics.txt || grep -q "^# HELP ${family%_total}" /tmp/metrics.txt ||
        fail "no HELP for $family"
done
wget -q -O - http://127.0.0.1:10318/healthz | grep -qx ok || fail "/healthz is not ok"

kill "$serve"
wait "$serve" || fail "serve exited with $? on SIGTERM: $(cat /tmp/serve.err)"
echo "ebpf_serve: ok"
