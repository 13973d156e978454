#!/bin/sh
# Guest side of `cargo xtask bench --only overhead` (not a vm-test script:
# vm-test runs tests/vm/*.sh only). What a conntrack listener costs the
# kernel: ctchurn's rate of new UDP flows with no listener, with
# `ctscope events --source ebpf` attached and with `conntrack -E`, in
# alternating rounds within this one boot. Prints one line per run:
#   CTSCOPE-OVERHEAD <mode> <round> <ctchurn's last stderr line>
# and, for each listener run, CTSCOPE-OVERHEAD-LISTENER <mode> <round> <note>.
# Usage: overhead.sh [ROUNDS] [FLOWS]
set -eu
. /vm/harness/lib.sh

rounds=${1:-3}
flows=${2:-20000}
echo "   kernel $(uname -r)"
ip link set lo up 2>/dev/null || true
sysctl -q -w net.netfilter.nf_conntrack_max=262144 >/dev/null 2>&1 || true
sysctl -q -w net.netfilter.nf_conntrack_udp_timeout=3600 >/dev/null 2>&1 || true
nft -f - <<'NFT' || fail "nft could not load the ct rule"
table inet ctbench {
    chain input {
        type filter hook input priority 0; policy accept;
        ct state new counter
    }
}
NFT

listener=
start_listener() {
    case $1 in
    none) listener= ;;
    ebpf)
        ctscope events --source ebpf -e NEW,DESTROY >/dev/null 2>/tmp/listener.err &
        listener=$!
        i=0
        until grep -q 'event source: eBPF' /tmp/listener.err; do
            kill -0 "$listener" 2>/dev/null || fail "ctscope exited: $(tail -c 2000 /tmp/listener.err)"
            i=$((i + 1))
            [ "$i" -lt 600 ] || fail "the tracer did not start in 60 s: $(tail -c 2000 /tmp/listener.err)"
            sleep 0.1
        done
        ;;
    netlink)
        conntrack -E >/dev/null 2>/tmp/listener.err &
        listener=$!
        # No readiness line: give it time to subscribe (the guest is slow).
        sleep 2
        kill -0 "$listener" 2>/dev/null || fail "conntrack -E exited: $(tail -c 2000 /tmp/listener.err)"
        ;;
    esac
}

stop_listener() {
    [ -n "$listener" ] || return 0
    kill -INT "$listener" 2>/dev/null || true
    wait "$listener" 2>/dev/null || true
    listener=
}

run=0
round=1
while [ "$round" -le "$rounds" ]; do
    # Rotate the order each round, so drift spreads over all three.
    case $((round % 3)) in
    1) order="none ebpf netlink" ;;
    2) order="ebpf netlink none" ;;
    *) order="netlink none ebpf" ;;
    esac
    for mode in $order; do
        conntrack -F >/dev/null 2>&1 || true
        sleep 0.5
        start_listener "$mode"
        run=$((run + 1))
        ctchurn --proto udp --count "$flows" --src-base "127.$((10 + run)).0.1" \
            --dst 127.0.0.1 --dport-base 10000 >/dev/null 2>/tmp/churn.err ||
            fail "ctchurn failed: $(tail -c 2000 /tmp/churn.err)"
        sleep 0.5
        if [ "$mode" != none ]; then
            kill -0 "$listener" 2>/dev/null ||
                fail "the $mode listener died during the churn: $(tail -c 2000 /tmp/listener.err)"
        fi
        stop_listener
        echo "CTSCOPE-OVERHEAD $mode $round $(grep '^ctchurn: ' /tmp/churn.err | tail -n 1)"
        if [ "$mode" = ebpf ]; then
            echo "CTSCOPE-OVERHEAD-LISTENER $mode $round $(grep -E 'shown|lost' /tmp/listener.err | tail -n 2 | tr '\n' ' ')"
        fi
    done
    round=$((round + 1))
done
echo "CTSCOPE-OVERHEAD-DONE"
