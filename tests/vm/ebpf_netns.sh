#!/bin/sh
# The eBPF source sees every namespace: by default ctscope shows only its
# own, with --all-netns all of them, each line naming its namespace inode.
set -eu
. /vm/harness/lib.sh

IP=/sbin/ip  # iproute2 (busybox's ip has no netns)
# ip netns add mounts a tmpfs on /run/netns; deleting the netns leaves it.
grep -q ' /run/netns ' /proc/mounts || at_exit "umount /run/netns"
at_exit "nft delete table inet netns 2>/dev/null"
at_exit "$IP netns delete other 2>/dev/null"
$IP netns add other
$IP -n other link set lo up
for ns in "" "$IP netns exec other"; do
    $ns nft -f - <<'NFT' || fail "nft could not load the ct rule"
table inet netns {
    chain input {
        type filter hook input priority 0; policy accept;
        ct state new counter
    }
}
NFT
done
other_ino=$(stat -L -c %i /run/netns/other)
self_ino=$(stat -L -c %i /proc/self/ns/net)
echo "   namespaces: ours $self_ino, other $other_ino"

ctscope events --source ebpf -e NEW --all-netns >/tmp/all.txt 2>/tmp/all.err &
all=$!
ctscope events --source ebpf -e NEW >/tmp/own.txt 2>/tmp/own.err &
own=$!
for f in /tmp/all.err /tmp/own.err; do
    wait_for_line "$f" 'event source: eBPF' "a tracer did not start"
done

step "50 flows here, 30 in the other namespace"
ctchurn --count 50 --src-base 127.4.0.1 >/dev/null 2>&1 || fail "ctchurn here"
$IP netns exec other ctchurn --count 30 --src-base 127.5.0.1 >/dev/null 2>&1 || fail "ctchurn there"
sleep "$(budget 2)"
kill -INT "$all" "$own"
wait "$all" || true
wait "$own" || true

step "default: only our namespace, no netns field"
[ "$(grep -c '\[NEW\]' /tmp/own.txt)" -eq 50 ] || fail "own: $(grep -c '\[NEW\]' /tmp/own.txt) NEW, not 50"
grep -q 'netns=' /tmp/own.txt && fail "own lines carry netns="

step "--all-netns: both, each line naming its namespace"
[ "$(grep -c "\[NEW\].* netns=$self_ino\$" /tmp/all.txt)" -eq 50 ] ||
    fail "all: $(grep -c "netns=$self_ino\$" /tmp/all.txt) lines of ours, not 50"
[ "$(grep -c "\[NEW\].* netns=$other_ino\$" /tmp/all.txt)" -eq 30 ] ||
    fail "all: $(grep -c "netns=$other_ino\$" /tmp/all.txt) lines of the other, not 30"
grep "netns=$other_ino" /tmp/all.txt | grep -q 'src=127\.5\.' || fail "the other namespace's lines are not its flows"

step "--netns other, then other is deleted: what was shown stays, one line, exit 1"
ctscope --netns other events --source ebpf -e NEW >/tmp/gone.out 2>/tmp/gone.err &
watcher=$!
wait_for_line /tmp/gone.err 'event source: eBPF' "the tracer did not start" "$watcher"
$IP netns exec other ctchurn --count 3 --src-base 127.5.1.1 >/dev/null 2>&1 || fail "ctchurn there"
wait_for_line /tmp/gone.out 'src=127\.5\.1\.' "no event from the watched namespace" "$watcher"
$IP netns delete other
set +e
wait "$watcher"
code=$?
set -e
[ "$code" -eq 1 ] || fail "exit $code, not 1: $(cat /tmp/gone.err)"
tail -n 1 /tmp/gone.err | grep -q 'was deleted' || fail "last line does not say so: $(cat /tmp/gone.err)"
shown=$(grep -c '\[NEW\]' /tmp/gone.out)
grep -q "$shown flow events have been shown" /tmp/gone.err ||
    fail "no summary counting the $shown lines shown: $(cat /tmp/gone.err)"
echo "   $shown events kept; $(tail -n 1 /tmp/gone.err)"

echo "ebpf_netns: ok"
