#!/bin/sh
# UPDATE events from the eBPF source (an fentry, or a kprobe, on
# nf_conntrack_netlink's ctnetlink_conntrack_event), with
# net.netfilter.nf_conntrack_events=1:
# - TCP connections (EBPF_UPDATE_CONNS: 1,000, and the acceptance volume
#   2,000 with `vm-test --full`): `ctscope events
#   --source ebpf -e NEW,UPDATE,DESTROY` prints the lines `conntrack -E`
#   prints beside it (normalised as in ebpf_parity.sh: the timeout, the
#   [USERSPACE] suffix). Where conntrack -E itself reports ENOBUFS, every
#   line it did print must be among ctscope's (it says so).
# - Alone (no ctnetlink listener at all): the same number of UPDATE
#   lines, and every connection's UPDATEs go SYN_RECV, ESTABLISHED, ...
#   with its last one naming the state `conntrack -L` lists for it. (How
#   many states a close passes through depends on timing, as a FIN and its
#   ACK may share a packet: the paced churn under qemu -icount, which
#   vm-test uses, repeats it exactly; a mark change below gives a count
#   that never depends on timing.)
# - `ctscope -U --mark` on a set of entries gives exactly one UPDATE each,
#   with and without conntrack -E, with fentry and with kprobes.
# - The runs the kernel skipped (recursion_misses of every program, and
#   for kprobes the probes' missed) are read and reported: 0 with fentry,
#   and with kprobes on 6.12; on 6.1, which does not count a kprobe's
#   skips, null and said so. (ebpf_misses.sh makes the kernel skip ours.)
# - With nf_conntrack_events=2 ("auto", the default): `-e UPDATE --source
#   ebpf` exits 1 with one line naming the sysctl; `--source auto` says so
#   and uses ctnetlink; without -e the tracer runs and says why it has no
#   UPDATE.
set -eu
. /vm/harness/lib.sh

conns=${EBPF_UPDATE_CONNS:-1000}

ct_counter_table updates
set_sysctl net.netfilter.nf_conntrack_max 1048576 || true
long_tcp_timeouts

counts() {
    echo "NEW $(grep -c '\[NEW\]' "$1" || true), UPDATE $(grep -c '\[UPDATE\]' "$1" || true), DESTROY $(grep -c '\[DESTROY\]' "$1" || true)"
}

step "nf_conntrack_events=2: UPDATE from eBPF is refused, and said why"
set_sysctl net.netfilter.nf_conntrack_events 2 || fail "events sysctl"
if ctscope events --source ebpf -e NEW,UPDATE --duration 1 >/dev/null 2>/tmp/upd.refused.err; then
    fail "-e UPDATE --source ebpf ran with nf_conntrack_events=2"
else
    code=$?
fi
cat /tmp/upd.refused.err
[ "$code" -eq 1 ] || fail "exit $code, want 1"
[ "$(wc -l </tmp/upd.refused.err)" -eq 1 ] || fail "not one line"
grep -q 'UPDATE events from eBPF: net.netfilter.nf_conntrack_events is 2, they need 1' /tmp/upd.refused.err ||
    fail "the sysctl is not named"
ctscope events --source auto -e UPDATE --duration 1 >/dev/null 2>/tmp/upd.auto.err ||
    fail "--source auto: $(cat /tmp/upd.auto.err)"
head -1 /tmp/upd.auto.err
grep -q 'nf_conntrack_events is 2, they need 1.*using ctnetlink events' /tmp/upd.auto.err ||
    fail "--source auto did not say why it uses ctnetlink: $(cat /tmp/upd.auto.err)"
ctscope events --source ebpf --duration 1 >/dev/null 2>/tmp/upd.default.err ||
    fail "--source ebpf without -e: $(cat /tmp/upd.default.err)"
grep -q 'event source: eBPF (fentry/fexit on nf_conntrack); no UPDATE events (net.netfilter.nf_conntrack_events is 2, they need 1)' \
    /tmp/upd.default.err || fail "the start-up line does not say why no UPDATE: $(cat /tmp/upd.default.err)"

set_sysctl net.netfilter.nf_conntrack_events 1 || fail "events sysctl"

step "$conns TCP connections: ctscope -e NEW,UPDATE,DESTROY beside conntrack -E"
conntrack -F 2>/dev/null
rm -f /tmp/u.ebpf /tmp/u.err /tmp/u.nl /tmp/u.nl.err
ctscope events --source ebpf -e NEW,UPDATE,DESTROY >/tmp/u.ebpf 2>/tmp/u.err &
tracer=$!
conntrack -E -e NEW,UPDATE,DESTROY >/tmp/u.nl 2>/tmp/u.nl.err &
reference=$!
wait_for_line /tmp/u.err 'event source: eBPF' "the tracer did not start" "$tracer"
cat /tmp/u.err
grep -q 'UPDATE events from ctnetlink_conntrack_event' /tmp/u.err || fail "no UPDATE program attached"
# conntrack -E says nothing when it has subscribed.
sleep "$(budget 1)"
ctchurn --proto tcp --count "$conns" --rate 300 --src-base 127.8.0.1 || fail "ctchurn tcp"
wait_quiet /tmp/u.ebpf "$(budget 30)"
wait_quiet /tmp/u.nl "$(budget 30)"
kill -INT "$tracer" "$reference"
wait "$tracer" || fail "ctscope events exited with $?"
wait "$reference" || true
normalise_event </tmp/u.ebpf | sort >/tmp/u.ebpf.n
normalise_event </tmp/u.nl | sort >/tmp/u.nl.n
echo "   conntrack -E: $(counts /tmp/u.nl.n)"
echo "   ctscope:      $(counts /tmp/u.ebpf.n)"
updates=$(grep -c '\[UPDATE\]' /tmp/u.ebpf.n || true)
[ "$updates" -ge "$((2 * conns))" ] || fail "$updates UPDATE lines for $conns connections"
if grep -q ENOBUFS /tmp/u.nl.err; then
    # conntrack -E lost events: everything it printed must be ours too.
    comm -23 /tmp/u.nl.n /tmp/u.ebpf.n >/tmp/u.missing
    [ ! -s /tmp/u.missing ] ||
        fail "lines of conntrack -E that ctscope lacks: $(head -5 /tmp/u.missing)"
    echo "   conntrack -E hit ENOBUFS: its $(wc -l </tmp/u.nl.n) lines are all among ctscope's"
elif ! diff -u /tmp/u.nl.n /tmp/u.ebpf.n >/tmp/u.diff; then
    grep '^-[^-]' /tmp/u.diff | head -5
    grep '^+[^+]' /tmp/u.diff | head -5
    fail "eBPF events differ from conntrack -E (- conntrack -E, + ctscope)"
else
    echo "   the same $(wc -l </tmp/u.ebpf.n) lines"
fi
grep -q 'events lost' /tmp/u.err && fail "records were lost: $(cat /tmp/u.err)"

step "$conns TCP connections with no ctnetlink listener at all"
conntrack -F 2>/dev/null
rm -f /tmp/v.ebpf /tmp/v.err
ctscope events --source ebpf -e UPDATE >/tmp/v.ebpf 2>/tmp/v.err &
tracer=$!
wait_for_line /tmp/v.err 'event source: eBPF' "the tracer did not start" "$tracer"
ctchurn --proto tcp --count "$conns" --rate 300 --src-base 127.9.0.1 || fail "ctchurn tcp"
wait_quiet /tmp/v.ebpf "$(budget 30)"
kill -INT "$tracer"
wait "$tracer" || fail "ctscope events exited with $?"
conntrack -L -p tcp 2>/dev/null >/tmp/v.list
echo "   ctscope alone: $(counts /tmp/v.ebpf), $(wc -l </tmp/v.list) entries listed"
alone=$(grep -c '\[UPDATE\]' /tmp/v.ebpf || true)
[ "$alone" -eq "$updates" ] ||
    fail "$alone UPDATE lines alone, $updates beside conntrack -E, for the same churn"
# Per connection (its source address and port): the states its UPDATEs
# named, in order, and the state listed at the end.
awk '{ for (i = 1; i <= NF; i++) { if ($i ~ /^src=/ && !s) s = $i; if ($i ~ /^sport=/ && !p) p = $i }
       st = ""; for (i = 1; i <= NF; i++) if ($i ~ /^[A-Z_]+$/ && $i != "[UPDATE]") { st = $i; break }
       if (st != "") seq[s " " p] = seq[s " " p] " " st; s = ""; p = "" }
     END { for (k in seq) print k ":" seq[k] }' /tmp/v.ebpf | sort >/tmp/v.seq
awk '{ for (i = 1; i <= NF; i++) { if ($i ~ /^src=/ && !s) s = $i; if ($i ~ /^sport=/ && !p) p = $i }
       print s " " p ": " $4; s = ""; p = "" }' /tmp/v.list | sort >/tmp/v.final
[ "$(wc -l </tmp/v.seq)" -eq "$conns" ] ||
    fail "UPDATEs for $(wc -l </tmp/v.seq) connections, $conns were made"
head -2 /tmp/v.seq
bad=$(awk -F': ' 'NR == FNR { final[$1] = $2; next }
                  { n = split($2, s, " ");
                    if (s[1] != "SYN_RECV" || s[2] != "ESTABLISHED" || s[n] != final[$1]) print }' \
          /tmp/v.final /tmp/v.seq | head -3)
[ -z "$bad" ] || fail "connections whose UPDATEs do not go SYN_RECV, ESTABLISHED, ..., listed state: $bad"
echo "   every connection: SYN_RECV, ESTABLISHED, ..., its listed state"

# mark_round HOOK MARK with|without: `ctscope -U --mark` on a source's
# entries gives exactly one UPDATE each, carrying the mark, alone or
# beside conntrack -E (then the same lines).
mark_round() {
    hook=$1 mark=$2
    rm -f /tmp/m.ebpf /tmp/m.err /tmp/m.nl
    ctscope events --source ebpf --ebpf-hook "$hook" -e UPDATE >/tmp/m.ebpf 2>/tmp/m.err &
    tracer=$!
    wait_for_line /tmp/m.err 'UPDATE events from ctnetlink_conntrack_event' \
        "the tracer did not attach its UPDATE program ($hook)" "$tracer"
    reference=
    if [ "$3" = with ]; then
        conntrack -E -e UPDATE >/tmp/m.nl 2>/dev/null &
        reference=$!
        sleep "$(budget 1)"
    fi
    # One source address's entries, marked by ctscope -U: conntrack
    # 1.4.7's -U ran out of socket buffer (ENOBUFS) on 2,000 entries, and
    # failed now and then with EPROTO on a few hundred in the suite.
    entries=$(conntrack -L -s 127.9.0.1 2>/dev/null | wc -l)
    [ "$entries" -gt 0 ] || fail "no entry from 127.9.0.1 to mark"
    ctscope -U -s 127.9.0.1 --mark "$mark" >/dev/null 2>/tmp/m.upd ||
        fail "ctscope -U -s 127.9.0.1 --mark $mark: $(tail -3 /tmp/m.upd)"
    wait_quiet /tmp/m.ebpf "$(budget 30)"
    kill -INT "$tracer" $reference
    wait "$tracer" || fail "ctscope events exited with $?"
    [ -z "$reference" ] || wait "$reference" || true
    got=$(grep -c "\[UPDATE\].* mark=$mark" /tmp/m.ebpf || true)
    echo "   $hook, conntrack -E $3: $entries entries, $got UPDATE lines with mark=$mark"
    [ "$got" -eq "$entries" ] || fail "$got UPDATE lines for $entries entries marked ($hook)"
    if [ -n "$reference" ]; then
        normalise_event </tmp/m.ebpf | sort >/tmp/m.ebpf.n
        normalise_event </tmp/m.nl | sort >/tmp/m.nl.n
        diff -u /tmp/m.nl.n /tmp/m.ebpf.n >/tmp/m.diff ||
            fail "mark UPDATEs differ from conntrack -E: $(grep '^[-+][^-+]' /tmp/m.diff | head -4)"
    fi
}

step "a mark set on a source's entries: one UPDATE each"
mark_round fentry 7 without
mark_round fentry 8 with
mark_round kprobe 9 without

step "runs the kernel skipped: read from it, in profile's JSON and start-up line"
ctscope profile --source ebpf --duration 1 -o json >/tmp/skip.json 2>/tmp/skip.err ||
    fail "profile: $(cat /tmp/skip.err)"
grep -o '"lost_by_reason":{[^}]*}' /tmp/skip.json
grep -q '"skipped_by_kernel":0' /tmp/skip.json || fail "fentry: no skipped_by_kernel count of 0"
ctscope profile --source ebpf --ebpf-hook kprobe --duration 1 -o json >/tmp/skipk.json 2>/tmp/skipk.err ||
    fail "profile: $(cat /tmp/skipk.err)"
grep -o '"lost_by_reason":{[^}]*}' /tmp/skipk.json
case $(uname -r) in
6.[0-6].* | [1-5].*)
    # Kernels before 6.7 do not count a kprobe's skipped runs: said, and
    # null rather than a 0 that would claim nothing was missed.
    grep -q '"skipped_by_kernel":null' /tmp/skipk.json || fail "kprobes before 6.7: not null"
    grep -q 'runs the kernel skips are not counted (kprobes before 6.7)' /tmp/skipk.err ||
        fail "the start-up line does not say skips go uncounted: $(cat /tmp/skipk.err)"
    ;;
*)
    grep -q '"skipped_by_kernel":0' /tmp/skipk.json || fail "kprobes since 6.7: no count of 0"
    ;;
esac

echo "ebpf_updates: ok"
