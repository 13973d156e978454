# Helpers for the guest test scripts: `. /vm/harness/lib.sh`.

# Prints what is being checked, so a failure shows where it happened.
step() {
    echo "-- $*"
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

# Waits up to 30 s for a line matching the grep PATTERN in FILE. Fails,
# naming WHAT and showing the file, if it does not come, or if the process
# PID (optional) ends first.
wait_for_line() {
    local file="$1" pattern="$2" what="$3" pid="${4:-}" tries=0
    until grep -q "$pattern" "$file" 2>/dev/null; do
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
            fail "$what: the process ended: $(cat "$file")"
        fi
        tries=$((tries + 1))
        [ "$tries" -lt 300 ] || fail "$what: nothing after 30 s: $(cat "$file")"
        sleep 0.1
    done
}
