#!/bin/sh
# Runs the test scripts named on the command line one after the other, each
# from a clean slate (no nftables rules, empty conntrack table, no named
# netns), and prints one marker line per script that xtask reads:
#   CTSCOPE-VM-RESULT <script> <exit status> <seconds>
# Usage: run-tests.sh TIMEOUT_SECS SCRIPT...
timeout_s=$1
shift
failed=0
for name in "$@"; do
    nft flush ruleset >/dev/null 2>&1
    ip -all netns delete >/dev/null 2>&1
    conntrack -F >/dev/null 2>&1
    echo
    echo "CTSCOPE-VM-START $name"
    start=$(date +%s)
    # KILL, not TERM: a script stuck in a pipe must not outlive its slot.
    (cd /tmp && timeout -s KILL "$timeout_s" sh "/vm/$name")
    code=$?
    end=$(date +%s)
    [ "$code" -eq 137 ] && echo "CTSCOPE-VM: $name killed after ${timeout_s}s"
    echo
    echo "CTSCOPE-VM-RESULT $name $code $((end - start))"
    [ "$code" -eq 0 ] || failed=$((failed + 1))
done
[ "$failed" -gt 125 ] && failed=125
exit "$failed"
