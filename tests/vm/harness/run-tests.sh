#!/bin/sh
# Runs the test scripts named on the command line one after the other, each
# from a clean slate (no nftables rules, empty conntrack table, no named
# netns), and prints one marker line per script that xtask reads:
#   CTSCOPE-VM-RESULT <script> <exit status> <seconds>
# Usage: run-tests.sh TIMEOUT_SECS SCRIPT...
#
# TIMEOUT_SECS is guest time at the reference speed. Before each script
# the guest's speed is measured (VM_SLOWNESS, exported for lib.sh's
# `budget`) and the script's limit scaled by it: without qemu -icount a
# guest on a busy host gets less done per second. With -icount the guest
# clock counts instructions and the slowness stays at 100 %.
#
# A script must leave the guest as it found it: the modules, the mounts,
# the net.netfilter sysctls and the processes are compared with what they
# were before it; a difference fails the script (unless it failed anyway),
# and is put back before the next one.
timeout_s=$1
shift
failed=0

# Guest time of the calibration loop at the reference speed, in
# centiseconds: measured under qemu -icount shift=1 (2 ns an instruction),
# where it takes the same time on every run and both kernels.
CALIBRATION_REFERENCE_CS=68
CALIBRATION_ROUNDS=20000

uptime_cs() {
    awk '{ printf "%d\n", $1 * 100 }' /proc/uptime
}

# How much slower than the reference this guest runs now, in percent (at
# least 100): a fixed shell loop, timed on the guest's clock.
measure_slowness() {
    local start i=0 took
    start=$(uptime_cs)
    while [ "$i" -lt "$CALIBRATION_ROUNDS" ]; do
        i=$((i + 1))
    done
    took=$(($(uptime_cs) - start))
    slowness=$((took * 100 / CALIBRATION_REFERENCE_CS))
    [ "$slowness" -ge 100 ] || slowness=100
    echo "CTSCOPE-VM: calibration loop took $took cs (reference $CALIBRATION_REFERENCE_CS): budgets at $slowness %"
}

# What a script must not change, one item a line.
guest_state() {
    cut -d' ' -f1 /proc/modules | sort | sed 's/^/module /'
    cut -d' ' -f2,3 /proc/mounts | sort | sed 's/^/mount /'
    sysctl -a 2>/dev/null | grep '^net\.netfilter\.' |
        grep -v '^net\.netfilter\.nf_conntrack_count ' | sort | sed 's/^/sysctl /'
}

# Processes that were not there before the first script (`pids_before`),
# as "pid name" lines. Not kernel threads (they have no exe), nor this
# shell's own children: its subshells and pipes, as the one running this.
# What a script leaves running has been handed to init.
new_processes() {
    local d pid comm key value ppid
    for d in /proc/[0-9]*; do
        pid=${d#/proc/}
        [ -e "$d/exe" ] || continue
        [ "$pid" = "$$" ] && continue
        case " $pids_before " in *" $pid "*) continue ;; esac
        ppid=
        while read -r key value; do
            [ "$key" = PPid: ] && ppid=$value && break
        done <"$d/status" 2>/dev/null
        [ -n "$ppid" ] && [ "$ppid" != "$$" ] || continue
        read -r comm <"$d/comm" 2>/dev/null || continue
        echo "$pid $comm"
    done
}

# Puts the guest back as `state_before` describes it: kills new processes,
# unmounts new mounts, loads missing modules (in /vm/modules order), sets
# the sysctls back (after the modules: reloading nf_conntrack resets its).
restore_state() {
    local pid rest point type name need line key value
    new_processes | while read -r pid rest; do
        kill -KILL "$pid" 2>/dev/null
    done
    guest_state | grep '^mount ' | sort -r | while read -r _ point type; do
        grep -qx "mount $point $type" /tmp/state.before || umount "$point" 2>/dev/null
    done
    while read -r name need; do
        [ -n "$name" ] || continue
        grep -q "^$name " /proc/modules && continue
        grep -qx "module $name" /tmp/state.before || continue
        insmod "/lib/modules/$(uname -r)/ctscope-vm/$name.ko" ||
            echo "CTSCOPE-VM: cannot load $name again"
    done </vm/modules
    grep '^sysctl ' /tmp/state.before | while read -r _ line; do
        key=${line%% = *}
        value=${line#* = }
        [ "$(sysctl -n "$key" 2>/dev/null)" = "$value" ] && continue
        sysctl -qw "$key=$value" 2>/dev/null || echo "CTSCOPE-VM: cannot set $key back to $value"
    done
}

pids_before=$(for d in /proc/[0-9]*; do [ -e "$d/exe" ] && echo "${d#/proc/}"; done)
pids_before=$(echo $pids_before)
guest_state >/tmp/state.before

for name in "$@"; do
    nft flush ruleset >/dev/null 2>&1
    ip -all netns delete >/dev/null 2>&1
    conntrack -F >/dev/null 2>&1
    sh /vm/harness/warm-conntrack.sh
    echo
    echo "CTSCOPE-VM-START $name"
    measure_slowness
    export VM_SLOWNESS=$slowness
    limit=$((timeout_s * slowness / 100))
    start=$(date +%s)
    # KILL, not TERM: a script stuck in a pipe must not outlive its slot.
    (cd /tmp && timeout -s KILL "$limit" sh "/vm/$name")
    code=$?
    end=$(date +%s)
    [ "$code" -eq 137 ] && echo "CTSCOPE-VM: $name killed after ${limit}s"

    # A killed script could not clean up after itself: its processes may
    # still be going. Those of a script that ended may need a moment.
    [ -z "$(new_processes)" ] || sleep 1
    new_processes | sed 's/^/process /' >/tmp/state.extra
    guest_state >/tmp/state.after
    if ! diff /tmp/state.before /tmp/state.after >/tmp/state.diff || [ -s /tmp/state.extra ]; then
        echo "CTSCOPE-VM: $name left the guest changed (- before, + after):"
        grep '^[-+][^-+]' /tmp/state.diff | grep -v '^.sysctl '
        # An unloaded nf_conntrack takes all its sysctls with it.
        changed=$(grep -c '^[-+]sysctl ' /tmp/state.diff)
        if [ "$changed" -le 10 ]; then
            grep '^[-+]sysctl ' /tmp/state.diff
        else
            echo " ($changed sysctl lines)"
        fi
        sed 's/^/+/' /tmp/state.extra
        restore_state
        guest_state >/tmp/state.after
        diff /tmp/state.before /tmp/state.after >/dev/null ||
            echo "CTSCOPE-VM: the guest could not be put back entirely"
        [ "$code" -eq 0 ] && code=1
    fi
    echo
    echo "CTSCOPE-VM-RESULT $name $code $((end - start))"
    [ "$code" -eq 0 ] || failed=$((failed + 1))
done
[ "$failed" -gt 125 ] && failed=125
exit "$failed"
