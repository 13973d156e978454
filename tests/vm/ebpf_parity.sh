#!/bin/sh
# eBPF events print the lines conntrack -E prints for the same NEW and
# DESTROY events (UPDATE: ebpf_updates.sh), in the same guest at
# the same time. Normalised: the timeout countdown, delta-time, and the
# " [USERSPACE] portid=N progname=X" suffix, which only netlink can know.
set -eu
. /vm/harness/lib.sh

ct_counter_table parity
set_sysctl net.netfilter.nf_conntrack_acct 1 || fail "acct"
set_sysctl net.netfilter.nf_conntrack_timestamp 1 || fail "timestamp"
long_tcp_timeouts


round=0
for opts in "" "-o extended"; do
    round=$((round + 1))
    step "ctscope events --source ebpf $opts vs conntrack -E -e NEW,DESTROY $opts"
    # The last round's files go first: the shell truncates them in the
    # child, maybe after wait_for_line has read the old "event source"
    # line (under qemu -icount the child often runs late).
    rm -f /tmp/p.ebpf /tmp/p.err /tmp/p.nl
    # shellcheck disable=SC2086
    ctscope events --source ebpf $opts >/tmp/p.ebpf 2>/tmp/p.err &
    tracer=$!
    # shellcheck disable=SC2086
    conntrack -E -e NEW,DESTROY $opts >/tmp/p.nl 2>/dev/null &
    reference=$!
    wait_for_line /tmp/p.err 'event source: eBPF' "the tracer did not start"
    # conntrack -E says nothing when it has subscribed.
    sleep "$(budget 1)"
    ctchurn --count 20 --src-base "127.6.$round.1" >/dev/null 2>&1 || fail "ctchurn udp"
    ctchurn --proto tcp --count 5 --src-base "127.7.$round.1" >/dev/null 2>&1 || fail "ctchurn tcp"
    ping -c 2 -W 2 127.0.0.1 >/dev/null || fail "ping"
    sleep "$(budget 1)"
    conntrack -F 2>/dev/null
    sleep "$(budget 2)"
    kill -INT "$tracer" "$reference"
    wait "$tracer" || true
    wait "$reference" || true
    normalise_event </tmp/p.ebpf | sort >/tmp/p.ebpf.n
    normalise_event </tmp/p.nl | sort >/tmp/p.nl.n
    [ "$(wc -l </tmp/p.nl.n)" -ge 50 ] || fail "conntrack -E saw only $(wc -l </tmp/p.nl.n) events"
    if ! diff -u /tmp/p.nl.n /tmp/p.ebpf.n >/tmp/p.diff; then
        grep '^-[^-]' /tmp/p.diff | head -8
        grep '^+[^+]' /tmp/p.diff | head -8
        for f in nl ebpf; do
            echo "   $f: $(grep -c '\[NEW\]' /tmp/p.$f.n) NEW, $(grep -c '\[DESTROY\]' /tmp/p.$f.n) DESTROY"
        done
        cat /tmp/p.err
        fail "eBPF events differ from conntrack -E (- conntrack -E, + ctscope)"
    fi
    echo "   $(wc -l </tmp/p.ebpf.n) events alike"
done

echo "ebpf_parity: ok"
