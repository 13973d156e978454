#!/bin/sh
# Guest side of `cargo xtask bench --only overhead` (not a vm-test script:
# vm-test runs tests/vm/*.sh only). What a conntrack listener costs: ctchurn's
# rate of new UDP flows with no listener and with each listener writing to a
# file, in rotated rounds within this one boot, with the listener's own CPU
# time, its start-up time, and the events it wrote.
#
# Meant for qemu -icount (xtask boots it so): guest times are then
# instruction time (2 ns an instruction) and repeat run to run.
#
# The whole script (so the listener, ctchurn and the probes) runs pinned to
# CPU 0. Under -icount the vCPUs share one instruction counter: a task busy
# on CPU 1 would make CPU 0's task look slower and each other's on-CPU time
# would count the other's instructions too. On one CPU the churn's slowdown
# is the sum of the kernel's extra work and the listener's. (These kernels
# have no CONFIG_IRQ_TIME_ACCOUNTING: softirq work that runs while the
# listener is on the CPU counts as the listener's; churn_ticks, ctchurn's
# own CPU, is there to show it.)
#
# Lines for xtask (bench/overhead.rs parses them), all on stdout:
#   CTSCOPE-OVERHEAD-GUEST release=R cpus=N clock=timer_list|uptime cputime=schedstat|stat buckets=B max=M pinned=MASK
#   CTSCOPE-OVERHEAD-CHURN <mode> <round> ctchurn: N flows in S s (R flows/s)
#   CTSCOPE-OVERHEAD-RUN <mode> <round> key=value ... (see the end of the loop)
#   CTSCOPE-OVERHEAD-LISTENER <mode> <round> <a line of the listener's stderr>
#   CTSCOPE-OVERHEAD-INVALID <mode> <round> <why>
#   CTSCOPE-OVERHEAD-DELIVERY pace=full|N/s flows=N count=N p50=NS p99=NS max=NS
#   CTSCOPE-OVERHEAD-DONE
# Usage: overhead.sh [ROUNDS] [FLOWS] [MODES]
# (MODES: comma-separated, from the list below; default all of them.)
set -eu
. /vm/harness/lib.sh

rounds=${1:-3}
flows=${2:-20000}
all_modes="none ebpf ebpf-json netlink conntrack ebpf-updates"
modes=$(echo "${3:-$all_modes}" | tr ',' ' ')
nmodes=0
for mode in $modes; do
    case " $all_modes " in
    *" $mode "*) nmodes=$((nmodes + 1)) ;;
    *) fail "unknown mode $mode (want some of: $all_modes)" ;;
    esac
done
# Seconds of guest time between two probe flows while a listener starts.
probe_every=0.02
# The output file has settled when it has not grown, and the listener has
# used less than SETTLE_CPU_NS of CPU, over SETTLE_POLLS polls in a row.
settle_every=0.1
SETTLE_POLLS=5
SETTLE_CPU_NS=2000000

taskset -p -c 0 $$ >/dev/null || fail "taskset could not pin the script to CPU 0"

# Monotonic guest time in ns into NOW, without a fork: "now at N nsecs" is
# /proc/timer_list's third line (busybox date has no %N). Falls back to
# /proc/uptime's centiseconds.
if [ -r /proc/timer_list ] && { read -r _ && read -r _ && read -r _ _ NOW _; } </proc/timer_list &&
    [ "$NOW" -gt 0 ] 2>/dev/null; then
    clock=timer_list
    now_ns() { { read -r _ && read -r _ && read -r _ _ NOW _; } </proc/timer_list; }
else
    clock=uptime
    now_ns() { NOW=$(awk '{ printf "%d\n", $1 * 1000000000 }' /proc/uptime); }
fi

# The listener's CPU time in ns into CPU: the sum over its threads of
# /proc/PID/task/TID/schedstat's first field (time on a CPU, ns), else
# utime+stime from /proc/PID/stat (10 ms ticks). STAT_TICKS gets the
# latter either way, to show the difference in resolution.
if [ -r /proc/self/schedstat ]; then cputime=schedstat; else cputime=stat; fi
cpu_of() {
    local f t ut st
    STAT_TICKS=0
    # Fields 14 and 15; the command name (ctscope, conntrack) has no space.
    if read -r _ _ _ _ _ _ _ _ _ _ _ _ _ ut st _ <"/proc/$1/stat"; then
        STAT_TICKS=$((ut + st))
    fi
    if [ "$cputime" = stat ]; then
        CPU=$((STAT_TICKS * 10000000))
        return
    fi
    CPU=0
    for f in /proc/"$1"/task/*/schedstat; do
        if read -r t _ <"$f"; then
            CPU=$((CPU + t))
        fi
    done
}

# The CPU time of this shell's waited-for children (cutime + cstime, fields
# 16 and 17 of /proc/PID/stat, 10 ms ticks) into CHILDREN_TICKS: around a
# foreground ctchurn, its own CPU time (schedstat is gone once the shell
# has reaped it).
children_ticks() {
    local cu cs
    read -r _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ cu cs _ <"/proc/$$/stat"
    CHILDREN_TICKS=$((cu + cs))
}

# conntrack -S summed over CPUs: "early_drop drop insert_failed" into
# CT_STATS.
ct_stats() {
    CT_STATS=$(conntrack -S | awk '
        { for (i = 1; i <= NF; i++) { split($i, kv, "="); s[kv[1]] += kv[2] } }
        END { printf "%d %d %d\n", s["early_drop"], s["drop"], s["insert_failed"] }')
}

# Whether the listener's stderr has its start-up line (ctscope: "...event
# source: ..."; the eBPF one names eBPF; the rest of the wording may
# change, so match loosely), without a fork.
has_startup_line() {
    local line
    while IFS= read -r line; do
        case $line in
        *[Ee]vent\ source*)
            case $1 in
            ebpf*) case $line in *[Ee][Bb][Pp][Ff]*) return 0 ;; esac ;;
            *) return 0 ;;
            esac
            ;;
        esac
    done <"$2"
    return 1
}

echo "   kernel $(uname -r)"
ip link set lo up 2>/dev/null || true
# The Debian guests' default table holds 8,192 entries: the churn would
# measure early drop.
set_sysctl net.netfilter.nf_conntrack_max 262144 || fail "cannot raise nf_conntrack_max"
if ! set_sysctl net.netfilter.nf_conntrack_buckets 65536; then
    echo 65536 >/sys/module/nf_conntrack/parameters/hashsize ||
        fail "cannot raise the conntrack hash size"
fi
# No churned entry may time out while a run lasts (guest time jumps ahead
# when the guest idles under -icount sleep=off).
set_sysctl net.netfilter.nf_conntrack_udp_timeout 3600 || fail "cannot set the UDP timeout"
set_sysctl net.netfilter.nf_conntrack_udp_timeout_stream 3600 || true
ct_counter_table ctbench
echo "CTSCOPE-OVERHEAD-GUEST release=$(uname -r) cpus=$(grep -c ^processor /proc/cpuinfo) clock=$clock cputime=$cputime" \
    "buckets=$(cat /sys/module/nf_conntrack/parameters/hashsize)" \
    "max=$(sysctl -n net.netfilter.nf_conntrack_max) pinned=$(taskset -p $$ | sed 's/.*: //')"

# The event cache setting of every mode but ebpf-updates (restored at
# the end).
events_default=$(sysctl -n net.netfilter.nf_conntrack_events)
at_exit "sysctl -qw net.netfilter.nf_conntrack_events=$events_default"

listener=
start_listener() {
    : >/tmp/listener.out
    : >/tmp/listener.err
    case $1 in
    ebpf) ctscope events --source ebpf -e NEW,DESTROY >/tmp/listener.out 2>/tmp/listener.err & ;;
    ebpf-json) ctscope events --source ebpf -e NEW,DESTROY -o json >/tmp/listener.out 2>/tmp/listener.err & ;;
    # UPDATE events need the kernel's event cache on every entry, which
    # costs the kernel too: measured with it, as a user would run it.
    ebpf-updates) ctscope events --source ebpf -e NEW,UPDATE,DESTROY >/tmp/listener.out 2>/tmp/listener.err & ;;
    netlink) ctscope events --source netlink -e NEW,DESTROY >/tmp/listener.out 2>/tmp/listener.err & ;;
    conntrack) conntrack -E -e NEW,DESTROY >/tmp/listener.out 2>/tmp/listener.err & ;;
    *) fail "unknown mode $1" ;;
    esac
    listener=$!
}

alive() {
    kill -0 "$listener" 2>/dev/null ||
        fail "the $mode listener ended: $(tail -c 2000 /tmp/listener.err)"
}

# Start-up time to the first event: one probe flow (source 127.250.RUN.1,
# a new destination port each time) every $probe_every s until the listener
# has written a line of it. ctscope's eBPF modes are first waited for
# their start-up line (which comes once the programs are attached), so
# that probes, which cost guest time too, do not slow the loading.
# Sets STARTUP_NS (to the probe's line), READY_NS (to the start-up line,
# or -), PROBES and PROBE_NS (guest time spent in the probes),
# FIRST_PROBE (which probe the first line is of, 0 for the first sent) and
# PROBE_SENT_NS (when that probe's ctchurn ended).
wait_first_event() {
    local t0=$1 probe_src="127.250.$2.1" deadline t
    deadline=$((t0 + $(budget 120) * 1000000000))
    READY_NS=- PROBES=0 PROBE_NS=0 FIRST_PROBE=? PROBE_SENT_NS=- SENT=
    while :; do
        alive
        now_ns
        [ "$NOW" -lt "$deadline" ] ||
            fail "no event from the $mode listener after 120 s: $(tail -c 2000 /tmp/listener.err)"
        if [ "$READY_NS" = - ] && has_startup_line "$mode" /tmp/listener.err; then
            READY_NS=$((NOW - t0))
        fi
        case $mode in
        ebpf*) if [ "$READY_NS" = - ]; then sleep "$probe_every"; continue; fi ;;
        esac
        if [ -s /tmp/listener.out ] && grep -q -F "$probe_src" /tmp/listener.out; then
            STARTUP_NS=$((NOW - t0))
            # Which probe came first (0 = the first sent): a later one
            # means the earlier ones were missed, not just late.
            FIRST_PROBE=$(grep -m 1 -F "$probe_src" /tmp/listener.out | awk '
                match($0, /dport[=":]+[0-9]+/) {
                    s = substr($0, RSTART, RLENGTH); gsub(/[^0-9]/, "", s); print s - 20000
                }')
            case $FIRST_PROBE in
            # shellcheck disable=SC2086 # one time a word
            [0-9]*) set -- $SENT && shift "$FIRST_PROBE" && PROBE_SENT_NS=$1 ;;
            esac
            return
        fi
        t=$NOW
        ctchurn --proto udp --count 1 --src-base "$probe_src" --src-addrs 1 \
            --dst 127.0.0.1 --dport-base $((20000 + PROBES)) >/dev/null 2>/tmp/probe.err ||
            fail "the probe flow failed: $(cat /tmp/probe.err)"
        now_ns
        PROBES=$((PROBES + 1))
        PROBE_NS=$((PROBE_NS + NOW - t))
        SENT="$SENT $((NOW - t0))"
        sleep "$probe_every"
    done
}

# Waits until the listener's output file stops growing and the listener
# stops using CPU ($SETTLE_POLLS polls in a row, by guest time).
wait_settled() {
    local quiet=0 size last_size=-1 last_cpu=-1 deadline
    now_ns
    deadline=$((NOW + $(budget 300) * 1000000000))
    while [ "$quiet" -lt "$SETTLE_POLLS" ]; do
        alive
        size=$(stat -c %s /tmp/listener.out)
        cpu_of "$listener"
        if [ "$size" = "$last_size" ] && [ $((CPU - last_cpu)) -lt "$SETTLE_CPU_NS" ]; then
            quiet=$((quiet + 1))
        else
            quiet=0
        fi
        last_size=$size last_cpu=$CPU
        now_ns
        [ "$NOW" -lt "$deadline" ] ||
            fail "the $mode listener's output did not settle in 300 s"
        sleep "$settle_every"
    done
    SETTLED_BYTES=$size
}

# Events of the churn's flows (source 127.NET.0.x) in the listener's
# output: NEW and DESTROY apart, for conntrack -E's and ctscope's text
# ("[NEW] udp ... src=127.11.0.1 ...") and ctscope's JSON
# ({"event":"NEW",...,"orig":{"src":"127.11.0.1",...).
count_events() {
    awk -v pfx="127.$1.0." '
        index($0, "=" pfx) || index($0, "\"" pfx "") {
            if ($0 ~ /\[NEW\]|"event":"NEW"/) n++
            else if ($0 ~ /\[DESTROY\]|"event":"DESTROY"/) d++
        }
        END { printf "new=%d destroy=%d lines=%d\n", n, d, NR }' /tmp/listener.out
}

# The first churn of a boot allocates the slab pages for its entries (and
# faults ctchurn in), which later ones reuse: not measured, so that the
# first mode of round 1 does not pay for it.
step "warm-up: $flows flows, not measured"
ctchurn --proto udp --count "$flows" --src-base 127.10.0.1 --dst 127.0.0.1 \
    --dport-base 10000 >/dev/null 2>/tmp/churn.err ||
    fail "ctchurn failed: $(tail -c 2000 /tmp/churn.err)"
conntrack -F >/dev/null 2>&1 || fail "conntrack -F failed"

run=0
round=1
while [ "$round" -le "$rounds" ]; do
    # Rotate the order each round, so drift spreads over all modes.
    order=
    k=0
    for mode in $modes; do
        order="$order $(echo "$modes" | cut -d' ' -f$(((round - 1 + k) % nmodes + 1)))"
        k=$((k + 1))
    done
    for mode in $order; do
        run=$((run + 1))
        net=$((10 + run))
        step "round $round: $mode"
        if [ "$mode" = ebpf-updates ]; then
            sysctl -qw net.netfilter.nf_conntrack_events=1 || fail "nf_conntrack_events"
        else
            sysctl -qw "net.netfilter.nf_conntrack_events=$events_default" || fail "nf_conntrack_events"
        fi
        # Flush with no listener, so the listener sees nothing of the
        # previous run.
        conntrack -F >/dev/null 2>&1 || fail "conntrack -F failed"
        ct_stats
        stats_before=$CT_STATS
        fields=
        if [ "$mode" != none ]; then
            now_ns
            t0=$NOW
            start_listener "$mode"
            wait_first_event "$t0" "$run"
            cpu_of "$listener"
            cpu_ready=$CPU stat_ready=$STAT_TICKS
            fields="startup_ns=$STARTUP_NS ready_ns=$READY_NS probes=$PROBES probe_ns=$PROBE_NS first_probe=$FIRST_PROBE probe_sent_ns=$PROBE_SENT_NS cpu_ready_ns=$cpu_ready stat_ready=$stat_ready"
        fi
        children_ticks
        churn_ticks=$CHILDREN_TICKS
        ctchurn --proto udp --count "$flows" --src-base "127.$net.0.1" \
            --dst 127.0.0.1 --dport-base 10000 >/dev/null 2>/tmp/churn.err ||
            fail "ctchurn failed: $(tail -c 2000 /tmp/churn.err)"
        if [ "$mode" != none ]; then
            # The listener's CPU while the churn ran (and its start-up):
            # what it took from the churn. Read at once (no fork, no
            # console write first): a listener with a backlog goes on
            # working as soon as ctchurn is gone.
            cpu_of "$listener"
            cpu_churn=$CPU stat_churn=$STAT_TICKS
        fi
        children_ticks
        churn_ticks=$((CHILDREN_TICKS - churn_ticks))
        # (Not the builtin read: a sysctl file read a byte at a time ends
        # after its first byte.)
        entries=$(cat /proc/sys/net/netfilter/nf_conntrack_count)
        echo "CTSCOPE-OVERHEAD-CHURN $mode $round $(grep '^ctchurn: ' /tmp/churn.err | tail -n 1)"
        if [ "$mode" != none ]; then
            wait_settled
            cpu_of "$listener"
            cpu_new=$CPU
            new_bytes=$SETTLED_BYTES
            new_lines=$(wc -l </tmp/listener.out)
        fi
        conntrack -F >/dev/null 2>&1 || fail "conntrack -F failed"
        if [ "$mode" != none ]; then
            wait_settled
            cpu_of "$listener"
            cpu_total=$CPU stat_total=$STAT_TICKS
            settled_bytes=$SETTLED_BYTES
            kill -INT "$listener" 2>/dev/null || true
            wait "$listener" || true
            listener=
            # Anything the listener wrote only on its way out was held in
            # a buffer: the start-up time would then be to the flush.
            final_bytes=$(stat -c %s /tmp/listener.out)
            fields="$fields cpu_churn_ns=$cpu_churn stat_churn=$stat_churn cpu_new_ns=$cpu_new cpu_total_ns=$cpu_total stat_total=$stat_total"
            fields="$fields new_lines=$new_lines new_bytes=$new_bytes settled_bytes=$settled_bytes final_bytes=$final_bytes $(count_events "$net")"
            grep -v -i 'event source' /tmp/listener.err | while IFS= read -r line; do
                echo "CTSCOPE-OVERHEAD-LISTENER $mode $round $line"
            done
        fi
        ct_stats
        # shellcheck disable=SC2086 # three numbers
        set -- $stats_before $CT_STATS
        early_drop=$(($4 - $1)) drop=$(($5 - $2)) insert_failed=$(($6 - $3))
        echo "CTSCOPE-OVERHEAD-RUN $mode $round flows=$flows entries=$entries churn_ticks=$churn_ticks" \
            "early_drop=$early_drop drop=$drop insert_failed=$insert_failed $fields"
        if [ $((early_drop + drop + insert_failed)) -ne 0 ]; then
            echo "CTSCOPE-OVERHEAD-INVALID $mode $round conntrack -S: early_drop=$early_drop drop=$drop insert_failed=$insert_failed"
        fi
        rm -f /tmp/listener.out
    done
    round=$((round + 1))
done

# The eBPF source's delivery latency, when an eBPF mode ran: `ctscope
# profile --source ebpf` measures each record from the kernel's timestamp
# to its handling (delivery_ns in its JSON report), over a full-speed
# churn (the reader woken when the ring is a quarter full, else on its
# timer) and over a slow one (the timer alone).
case " $modes " in
*" ebpf"*)
    for pace in full 200; do
        run=$((run + 1))
        net=$((10 + run))
        step "delivery latency: $pace"
        sysctl -qw "net.netfilter.nf_conntrack_events=$events_default" || fail "nf_conntrack_events"
        conntrack -F >/dev/null 2>&1 || fail "conntrack -F failed"
        if [ "$pace" = full ]; then count=$flows rate=; else count=$((pace * 2)) rate="--rate $pace"; fi
        rm -f /tmp/profile.json /tmp/profile.err
        ctscope profile --source ebpf -o json --duration 3600 >/tmp/profile.json 2>/tmp/profile.err &
        listener=$!
        now_ns
        deadline=$((NOW + $(budget 120) * 1000000000))
        until has_startup_line ebpf /tmp/profile.err; do
            alive
            now_ns
            [ "$NOW" -lt "$deadline" ] || fail "profile did not start: $(cat /tmp/profile.err)"
            sleep 0.05
        done
        # shellcheck disable=SC2086 # empty or two words
        ctchurn --proto udp --count "$count" $rate --src-base "127.$net.0.1" \
            --dst 127.0.0.1 --dport-base 10000 >/dev/null 2>/tmp/churn.err ||
            fail "ctchurn failed: $(tail -c 2000 /tmp/churn.err)"
        # Past the reader's 100 ms timer, so every record was handled.
        sleep 0.5
        kill -INT "$listener" 2>/dev/null || true
        wait "$listener" || fail "profile failed: $(cat /tmp/profile.err)"
        listener=
        q=$(tr -d ' \n' </tmp/profile.json | grep -o '"delivery_ns":{[^}]*}') ||
            fail "no delivery_ns in profile's report: $(head -c 2000 /tmp/profile.json)"
        field() { echo "$q" | grep -o "\"$1\":[0-9]*" | cut -d: -f2; }
        label=$pace
        [ "$pace" = full ] || label="$pace/s"
        echo "CTSCOPE-OVERHEAD-DELIVERY pace=$label flows=$count count=$(field count) p50=$(field p50) p99=$(field p99) max=$(field max)"
    done
    ;;
esac
echo "CTSCOPE-OVERHEAD-DONE"
