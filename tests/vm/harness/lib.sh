# Helpers for the guest test scripts: `. /vm/harness/lib.sh`.
#
# Sourcing this also sets an EXIT trap: when the script ends, however it
# ends (but SIGKILL, which run-tests.sh makes up for), its background jobs
# are killed and what it registered with at_exit runs, last first. A
# script that needs its own EXIT trap must call run_at_exit from it.

# Guest time since boot in centiseconds (with qemu -icount it is
# instruction time, not wall time).
uptime_cs() {
    awk '{ printf "%d\n", $1 * 100 }' /proc/uptime
}

script_started_cs=$(uptime_cs)

# Prints what is being checked, and when in the script, so a failure shows
# where it happened and a slow step shows which.
step() {
    local cs=$(($(uptime_cs) - script_started_cs))
    echo "-- [$((cs / 100)).$((cs / 10 % 10)) s] $*"
}

# SECS of guest time scaled by how much slower than its reference speed
# this guest runs (VM_SLOWNESS, a percentage run-tests.sh measures before
# each script; 100 with qemu -icount): a wait's budget.
budget() {
    echo $(($1 * ${VM_SLOWNESS:-100} / 100))
}

at_exit_cmds=""

# Registers a command to run when the script ends (see above).
at_exit() {
    at_exit_cmds="$1
$at_exit_cmds"
}

run_at_exit() {
    local status=$?
    set +e
    trap - EXIT
    # shellcheck disable=SC2046 # one pid a word
    kill -KILL $(jobs -p) 2>/dev/null
    eval "$at_exit_cmds"
    exit "$status"
}
trap run_at_exit EXIT
# Without these a signal would end the script without the EXIT trap.
trap 'exit 130' INT
trap 'exit 143' TERM

# Sets the sysctl KEY to VALUE until the script ends. Returns non-zero,
# setting nothing, if the key cannot be read or written.
set_sysctl() {
    local old
    old=$(sysctl -n "$1" 2>/dev/null) || return 1
    sysctl -qw "$1=$2" 2>/dev/null || return 1
    at_exit "sysctl -qw '$1=$old'"
}

# Loads an nft table NAME whose input chain counts new entries (a rule
# that needs conntrack, so the kernel tracks the guest's loopback
# traffic), deleted when the script ends.
ct_counter_table() {
    nft -f - <<NFT || fail "nft could not load the ct rule"
table inet $1 {
    chain input {
        type filter hook input priority 0; policy accept;
        ct state new counter
    }
}
NFT
    at_exit "nft delete table inet $1 2>/dev/null"
}

# Keeps every TCP connection listed until the script ends: the states a
# connection ends in time out after 3600 s instead of seconds.
long_tcp_timeouts() {
    local state
    for state in close time_wait fin_wait close_wait last_ack syn_sent syn_recv; do
        set_sysctl "net.netfilter.nf_conntrack_tcp_timeout_$state" 3600 || fail "tcp $state timeout"
    done
}

# An event line of conntrack -E or ctscope events with what two listeners
# cannot agree on replaced: the timeout countdown, delta-time, and the
# " [USERSPACE] portid=N progname=X" suffix, which only netlink can know.
normalise_event() {
    sed -E \
        -e 's/ \[USERSPACE\] portid=[0-9]+( progname=.*)?$//' \
        -e 's/^( *\[[A-Z]+\] +)((ipv4|ipv6) +[0-9]+ +)?([a-z0-9-]+ +[0-9]+ +)[0-9]+ /\1\2\4<t> /' \
        -e 's/delta-time=[0-9]+/delta-time=<d>/'
}

# Stops the script with a message naming what failed.
fail() {
    echo "FAIL: $*" >&2
    exit 1
}

# A conntrack -L / ctscope list line with the parts that change between two
# listings replaced: the timeout after the protocol number (field 3, or 5
# with -o extended) and delta-time=. Spacing is kept, so a padding
# difference still shows.
normalise_listing() {
    sed -E \
        -e 's/^((ipv4|ipv6|unknown) +[0-9]+ +)?([a-z0-9-]+ +[0-9]+ +)[0-9]+ /\1\3<timeout> /' \
        -e 's/delta-time=[0-9]+/delta-time=<d>/'
}

# Fails unless `ctscope list ARGS` and `conntrack -L ARGS` print the same
# lines (sorted, normalised), and unless they print at least one.
assert_list_parity() {
    conntrack -L "$@" 2>/dev/null | normalise_listing | sort >/tmp/parity.conntrack ||
        fail "conntrack -L $* failed"
    ctscope list "$@" | normalise_listing | sort >/tmp/parity.ctscope ||
        fail "ctscope list $* failed"
    [ -s /tmp/parity.conntrack ] || fail "conntrack -L $* printed nothing"
    if ! diff -u /tmp/parity.conntrack /tmp/parity.ctscope; then
        fail "ctscope list $* differs from conntrack -L $* (- conntrack, + ctscope)"
    fi
    echo "   $(wc -l </tmp/parity.ctscope) lines alike"
}

# Waits until FILE has stopped growing for a second (at most SECS).
wait_quiet() {
    local file=$1 secs=$2 last=-1 now i=0
    while [ "$i" -lt "$secs" ]; do
        now=$(wc -l <"$file")
        [ "$now" -eq "$last" ] && return 0
        last=$now
        sleep 1
        i=$((i + 1))
    done
}

# Waits up to 30 s (scaled by `budget`) for a line matching the grep
# PATTERN in FILE. Fails, naming WHAT and showing the file, if it does not
# come, or if the process PID (optional) ends first. FILE must not hold an
# earlier run's lines: `cmd 2>FILE &` truncates it in the child, which may
# not have run yet.
wait_for_line() {
    local file="$1" pattern="$2" what="$3" pid="${4:-}" tries=0 secs
    secs=$(budget 30)
    until grep -q "$pattern" "$file" 2>/dev/null; do
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
            fail "$what: the process ended: $(cat "$file")"
        fi
        tries=$((tries + 1))
        [ "$tries" -lt "$((secs * 10))" ] || fail "$what: nothing after $secs s: $(cat "$file")"
        sleep 0.1
    done
}
