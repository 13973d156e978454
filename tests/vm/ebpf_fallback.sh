#!/bin/sh
# When the kernel lacks what the eBPF path needs, ctscope says which piece is
# missing: --source ebpf exits 1 with one line, --source auto says it on
# stderr and carries on with ctnetlink events. Two real gaps are made here:
#   - no kernel BTF: a tmpfs hides /sys/kernel/btf, as on a kernel built
#     without CONFIG_DEBUG_INFO_BTF;
#   - the hooked functions missing: the nf_conntrack modules are unloaded
#     (this guest has no modprobe, so nothing can load them on demand).
# (No kprobes at all is the host's own case: tests/events.rs checks it.)
# However the script ends, BTF is shown again and the modules are loaded
# again with /vm/sysctls set, as /init left them: the later scripts need
# them.
set -eu
. /vm/harness/lib.sh

MODDIR=/lib/modules/$(uname -r)/ctscope-vm

# Loads what /vm/modules lists and is not loaded, in its order, and sets
# /vm/sysctls again (reloading nf_conntrack reset its sysctls).
reload_modules() {
    while read -r name need; do
        [ -n "$name" ] || continue
        grep -q "^$name " /proc/modules && continue
        insmod "$MODDIR/$name.ko" || [ "$need" != required ] || fail "insmod $name"
    done </vm/modules
    while read -r setting; do
        [ -n "$setting" ] || continue
        sysctl -w "$setting" >/dev/null || fail "sysctl -w $setting"
    done </vm/sysctls
}

show_btf() {
    if grep -q ' /sys/kernel/btf tmpfs ' /proc/mounts; then
        umount /sys/kernel/btf
    fi
}
at_exit reload_modules
at_exit show_btf

# Runs ctscope ARGS; fails unless it exits CODE with exactly one stderr line
# matching every further pattern (grep -E).
expect_one_line() {
    code=$1
    shift 1
    args=$1
    shift 1
    set +e
    # shellcheck disable=SC2086 # ARGS are words on purpose
    timeout "$(budget 20)" ctscope $args >/tmp/fb.out 2>/tmp/fb.err
    got=$?
    set -e
    [ "$got" -eq "$code" ] || fail "ctscope $args exited $got, not $code: $(cat /tmp/fb.err)"
    [ "$(wc -l </tmp/fb.err)" -eq 1 ] || fail "ctscope $args: not one stderr line: $(cat /tmp/fb.err)"
    for pattern in "$@"; do
        grep -Eq "$pattern" /tmp/fb.err || fail "ctscope $args: no '$pattern' in: $(cat /tmp/fb.err)"
    done
    grep -q panicked /tmp/fb.err && fail "ctscope $args panicked"
    echo "   ctscope $args: $(cat /tmp/fb.err)"
}

# Starts `ctscope events ARGS` in the background and waits for its
# fallback line on stderr.
start_auto_events() {
    # An earlier run's lines must not satisfy the wait below: the shell
    # truncates the file in the child, which may run late.
    rm -f /tmp/auto.out /tmp/auto.err
    # shellcheck disable=SC2086
    ctscope events $1 >/tmp/auto.out 2>/tmp/auto.err &
    auto=$!
    wait_for_line /tmp/auto.err 'using ctnetlink events' "no fallback line from events $1" "$auto"
}

step "no kernel BTF: every command that traces names it"
mount -t tmpfs nobtf /sys/kernel/btf
expect_one_line 1 "events --source ebpf" 'eBPF source unavailable' 'no kernel BTF at /sys/kernel/btf/vmlinux' 'CONFIG_DEBUG_INFO_BTF'
expect_one_line 1 "profile --source ebpf --duration 1" 'eBPF source unavailable' 'no kernel BTF'


step "no kernel BTF: --source auto falls back to ctnetlink, saying why, and still sees events"
start_auto_events "--source auto -e NEW -p udp --dport 5353"
grep -q 'no kernel BTF' /tmp/auto.err || fail "the fallback line does not name BTF: $(cat /tmp/auto.err)"
conntrack -I -p udp -s 10.66.0.1 -d 10.66.0.2 --sport 4000 --dport 5353 -t 60 >/dev/null 2>&1 ||
    fail "conntrack -I failed"
wait_for_line /tmp/auto.out '\[NEW\].*dport=5353' "the ctnetlink fallback saw no NEW" "$auto"
kill -INT "$auto"
wait "$auto" || fail "events --source auto did not end cleanly: $(cat /tmp/auto.err)"
grep -q '1 flow events have been shown' /tmp/auto.err || fail "no summary: $(cat /tmp/auto.err)"
conntrack -F >/dev/null 2>&1
show_btf
[ -e /sys/kernel/btf/vmlinux ] || fail "BTF still hidden"

step "nf_conntrack unloaded: the hooked function is named"
# Dependents first; every one of them holds nf_conntrack.
for m in nf_conntrack_netlink nft_masq nft_chain_nat nft_nat nf_nat nft_ct nf_conntrack; do
    if grep -q "^$m " /proc/modules; then
        rmmod "$m" || fail "rmmod $m"
    fi
done
grep -q '^nf_conntrack ' /proc/modules && fail "nf_conntrack still loaded"
expect_one_line 1 "events --source ebpf" 'eBPF source unavailable' '__nf_conntrack_confirm' 'nf_conntrack loaded'

step "nf_conntrack unloaded: auto says both why eBPF and why ctnetlink cannot run"
set +e
timeout "$(budget 20)" ctscope events --source auto >/tmp/fb.out 2>/tmp/fb.err
got=$?
set -e
[ "$got" -eq 1 ] || fail "events --source auto exited $got, not 1: $(cat /tmp/fb.err)"
grep -q '__nf_conntrack_confirm.*using ctnetlink events' /tmp/fb.err || fail "no fallback line: $(cat /tmp/fb.err)"
grep -q 'ctnetlink is not available' /tmp/fb.err || fail "no ctnetlink line: $(cat /tmp/fb.err)"
[ "$(wc -l </tmp/fb.err)" -eq 2 ] || fail "not two lines: $(cat /tmp/fb.err)"

step "nf_conntrack unloaded: the ctnetlink commands say ctnetlink is missing"
for args in "list" "count" "stats" "flush" "events --source netlink" "profile --duration 1" \
    "get -p tcp -s 10.0.0.1 -d 10.0.0.2 --sport 1 --dport 2"; do
    expect_one_line 1 "$args" 'ctnetlink is not available' 'nf_conntrack_netlink'
done

step "modules back: the eBPF source attaches again"
reload_modules
ctscope events --source ebpf -e NEW -p udp --dport 5454 --count 1 >/tmp/back.out 2>/tmp/back.err &
back=$!
wait_for_line /tmp/back.err 'event source: eBPF' "the tracer did not start again" "$back"
conntrack -I -p udp -s 10.66.0.1 -d 10.66.0.2 --sport 4000 --dport 5454 -t 60 >/dev/null 2>&1 ||
    fail "conntrack -I after reload"
wait "$back" || fail "events --count 1 failed: $(cat /tmp/back.err)"
grep -q '\[NEW\].*dport=5454' /tmp/back.out || fail "no NEW after reload: $(cat /tmp/back.out)"
conntrack -F >/dev/null 2>&1
echo "ebpf_fallback: ok"
