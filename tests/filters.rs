//! Each `conntrack -L` filter, through `ctscope list`, selects the same
//! entries as conntrack does with the same arguments.

use ctscope_e2e::{Netns, compare_list_to, normalise, report};

/// What conntrack 1.4.7 does with a case, checked before comparing, so a
/// filter that matches nothing (or everything) cannot pass unnoticed.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// A non-empty strict subset of the table.
    Subset,
    /// Whatever conntrack shows (possibly nothing or everything).
    Any,
    /// conntrack rejects the arguments with exit 2; ctscope must too.
    Rejected,
}
use Expect::{Any, Rejected, Subset};

fn check(cases: &[(&[&str], Expect)]) {
    let Some(ns) = Netns::with_varied_table() else {
        return;
    };
    let all = ns.conntrack(&["-L"]);
    all.expect_code(0);
    let total = all.lines().len();
    assert!(total > 10, "the varied table is too small:\n{all}");
    let mut failures = Vec::new();
    for &(args, expect) in cases {
        let ct = ns.conntrack(&[&["-L"], args].concat());
        // The reference first: the test's own expectation must hold for it.
        match expect {
            Rejected if ct.code != 2 => {
                failures.push(format!("test expects conntrack to reject {args:?}\n{ct}"));
                continue;
            }
            Subset if ct.code != 0 || ct.lines().is_empty() || ct.lines().len() >= total => {
                failures.push(format!(
                    "test expects {args:?} to select a non-empty strict subset of {total}\n{ct}"
                ));
                continue;
            }
            _ => {}
        }
        if let Err(e) = compare_list_to(&ns, &ct, args) {
            failures.push(format!("filter {args:?}:\n{e}"));
        }
    }
    report(cases.len(), &failures);
}

#[test]
fn addresses() {
    check(&[
        (&["-s", "127.0.0.0/8"], Subset),
        (&["-s", "127.0.0.1"], Subset),
        (&["-d", "127.0.0.5"], Subset),
        (&["-d", "10.0.0.0/24"], Subset),
        (&["-r", "127.0.0.2"], Subset),
        (&["-r", "10.2.0.3"], Subset),
        (&["-q", "127.0.0.3"], Subset),
        (&["-q", "10.0.0.1"], Subset),
        (&["-s", "0.0.0.0/0"], Subset),
        (&["-s", "::/0"], Subset),
        (&["-d", "127.0.0.4/31"], Subset),
        // conntrack 1.4.7 takes CIDR only for -s and -d.
        (&["-q", "10.0.0.0/8"], Rejected),
        (&["-r", "10.0.0.0/8"], Rejected),
        (&["-s", "10.0.0.0/33"], Rejected),
        (&["-s", "10.0.0.1", "-d", "10.0.0.2"], Subset),
        (&["-s", "::1"], Subset),
        (&["-f", "ipv6", "-s", "::1"], Subset),
        (&["-s", "2001:db8::/32"], Subset),
        (&["-d", "192.0.2.1"], Any),
        (&["-f", "ipv4", "-s", "::1"], Rejected),
        // inet_aton's short forms, which conntrack reads: 127.1 is
        // 127.0.0.1, 10.1.2 is 10.1.0.2.
        (&["-s", "127.1"], Subset),
        (&["-d", "10.1.2"], Subset),
        (&["-s", "127.1/8"], Subset),
        // --mask-src/--mask-dst: the netmask of -s/-d, as an address; it
        // replaces a prefix given with -s.
        (&["-s", "127.0.0.9", "--mask-src", "255.0.0.0"], Subset),
        (&["-d", "10.0.0.77", "--mask-dst", "255.255.255.0"], Subset),
        (&["-s", "10.1.0.0/16", "--mask-src", "255.0.0.0"], Subset),
        (&["-s", "2001:db8::5", "--mask-src", "ffff:ffff::"], Subset),
        (&["-s", "10.0.0.0", "--mask-src", "0.0.0.0"], Subset),
        (&["--mask-src", "255.0.0.0"], Rejected),
        (&["-d", "10.0.0.1", "--mask-src", "255.0.0.0"], Rejected),
        (&["-s", "10.0.0.1", "--mask-src", "ffff::"], Rejected),
    ]);
}

#[test]
fn protocols_and_ports() {
    check(&[
        (&["-p", "tcp"], Subset),
        (&["-p", "17"], Subset),
        (&["-p", "udp"], Subset),
        (&["-p", "icmp"], Subset),
        (&["-p", "icmpv6"], Subset),
        (&["-p", "sctp"], Subset),
        (&["-p", "gre"], Subset),
        (&["-p", "udplite"], Subset),
        (&["-p", "tcp", "--sport", "1234"], Subset),
        (&["-p", "tcp", "--dport", "7001"], Subset),
        (&["-p", "udp", "--dport", "5000"], Subset),
        (&["-p", "udp", "--reply-port-src", "5001"], Subset),
        (&["-p", "udp", "--reply-port-dst", "54"], Subset),
        (&["-p", "tcp", "--reply-port-src", "3"], Subset),
        (
            &["-p", "sctp", "--sport", "1000", "--dport", "2000"],
            Subset,
        ),
        (&["-p", "udp", "--dport", "1"], Any),
        (&["--sport", "1"], Rejected),
        // Names from /etc/protocols, as conntrack's getprotobyname.
        (&["-p", "esp"], Any),
        (&["-p", "ipv6-icmp"], Subset),
        // No ports for ICMP: conntrack says "unknown option".
        (&["-p", "icmp", "--sport", "5"], Rejected),
    ]);
}

#[test]
fn states() {
    check(&[
        (&["-p", "tcp", "--state", "ESTABLISHED"], Subset),
        (&["-p", "tcp", "--state", "TIME_WAIT"], Subset),
        (&["-p", "tcp", "--state", "SYN_SENT"], Subset),
        (&["-p", "tcp", "--state", "CLOSE_WAIT"], Subset),
        (&["-p", "tcp", "--state", "FIN_WAIT"], Subset),
        (&["-p", "tcp", "--state", "LAST_ACK"], Subset),
        (&["-p", "tcp", "--state", "SYN_RECV"], Subset),
        (&["-p", "sctp", "--state", "ESTABLISHED"], Subset),
        (&["--state", "ESTABLISHED"], Rejected),
        // conntrack's old name of TCP state 9 (SYN_SENT2).
        (&["-p", "tcp", "--state", "LISTEN"], Any),
        (&["-p", "tcp", "--state", "NO_SUCH_STATE"], Rejected),
    ]);
}

#[test]
fn icmp() {
    check(&[
        (&["-p", "icmp", "--icmp-type", "8"], Subset),
        (
            &["-p", "icmp", "--icmp-type", "13", "--icmp-code", "0"],
            Subset,
        ),
        (&["-p", "icmp", "--icmp-id", "77"], Subset),
    ]);
}

#[test]
fn marks_and_status() {
    check(&[
        (&["-m", "42"], Subset),
        (&["-m", "0x1234"], Subset),
        (&["-m", "0x34/0xff"], Subset),
        (&["-m", "0xff/0xff"], Subset),
        (&["-m", "0"], Subset),
        (&["-u", "ASSURED"], Subset),
        (&["-u", "SEEN_REPLY"], Subset),
        (&["-u", "UNREPLIED"], Subset),
        (&["-u", "ASSURED,SEEN_REPLY"], Subset),
        // Status names in any case, as conntrack reads them.
        (&["-u", "assured"], Subset),
        (&["-u", "Seen_Reply"], Subset),
        (&["-p", "udp", "-s", "127.0.0.1", "-m", "42"], Subset),
        // The kernel reports no secmark (CTA_SECMARK is gone from its
        // dumps), so -c selects every entry, for conntrack too.
        (&["-c", "0"], Any),
        (&["-c", "5"], Any),
        (&["--secmark", "0x10", "-m", "42"], Subset),
        // conntrack 1.4.7 takes no timeout filter.
        (&["-t", "100"], Rejected),
    ]);
}

#[test]
fn zones() {
    check(&[
        (&["-w", "7"], Subset),
        (&["-w", "5"], Subset),
        (&["-w", "0"], Subset),
        (&["--orig-zone", "8"], Subset),
        (&["--orig-zone", "3"], Subset),
        (&["--reply-zone", "4"], Subset),
    ]);
}

#[test]
fn nat() {
    check(&[
        (&["-n"], Subset),
        (&["-g"], Subset),
        (&["-j"], Subset),
        (&["-n", "127.0.0.3"], Subset),
        (&["-g", "127.0.0.2"], Subset),
        (&["-j", "127.0.0.2"], Subset),
        (&["-g", "127.0.0.9"], Any),
        // Both -n and -g: entries with both (none here).
        (&["-n", "-g"], Any),
        (&["-j", "-n"], Rejected),
        (&["-g", "127.0.0.0/8"], Rejected),
    ]);
}

/// GRE keys: `-G` takes them as conntrack does; `-L` and `-D` filter by
/// them, where conntrack 1.4.7 ignores them (it lists, and deletes, every
/// GRE entry: README, Differences), so the reference is conntrack's
/// listing of the entry with those keys; and without `-p gre` they are
/// refused (exit 2), as conntrack refuses them.
#[test]
fn gre_keys() {
    let Some(ns) = Netns::new() else {
        return;
    };
    ns.insert("-p gre -s 1.1.1.1 -d 2.2.2.2 --srckey 5 --dstkey 6");
    ns.insert("-p gre -s 1.1.1.1 -d 2.2.2.3 --srckey 7 --dstkey 8");
    let mut failures = Vec::new();
    let listed = |args: &[&str]| -> Vec<String> {
        let out = ns.ctscope(args);
        out.lines().iter().map(|l| normalise(l)).collect()
    };
    let theirs: Vec<String> = ns
        .conntrack(&["-L", "-p", "gre"])
        .lines()
        .iter()
        .map(|l| normalise(l))
        .collect();
    assert_eq!(theirs.len(), 2, "{theirs:?}");
    let with = |key: &str| -> Vec<String> {
        theirs
            .iter()
            .filter(|l| l.contains(&format!("src=1.1.1.1 dst=2.2.2.{key} ")))
            .cloned()
            .collect()
    };
    for (args, want) in [
        (&["-L", "-p", "gre", "--srckey", "5"][..], with("2")),
        (&["-L", "-p", "gre", "--dstkey", "8"], with("3")),
        (
            &["-L", "-p", "gre", "--srckey", "5", "--dstkey", "8"],
            vec![],
        ),
    ] {
        let got = listed(args);
        if got != want {
            failures.push(format!("{args:?}: {got:?}, want {want:?}"));
        }
    }
    // -G with the keys: the same line as conntrack's -G.
    let get = ["-G", "-p", "gre", "-s", "1.1.1.1", "-d", "2.2.2.2"];
    let keys = ["--srckey", "5", "--dstkey", "6"];
    let ct = ns.conntrack(&[&get[..], &keys].concat());
    let cs = ns.ctscope(&[&get[..], &keys].concat());
    let norm = |o: &ctscope_e2e::Output| -> Vec<String> {
        o.lines().iter().map(|l| normalise(l)).collect()
    };
    if ct.code != 0 || cs.code != 0 || norm(&ct) != norm(&cs) {
        failures.push(format!("-G with keys\n{ct}\n{cs}"));
    }
    let cs = ns.ctscope(&get);
    if let Err(e) = cs.one_line_error(2) {
        failures.push(format!("-G -p gre without keys: {e}"));
    }
    // Keys without -p gre.
    for args in [
        &["-L", "-p", "udp", "--srckey", "5"][..],
        &["-L", "--dstkey", "1"],
    ] {
        let ct = ns.conntrack(args);
        let cs = ns.ctscope(args);
        if ct.code != 2 {
            failures.push(format!("conntrack accepts {args:?}\n{ct}"));
        }
        if let Err(e) = cs.one_line_error(2) {
            failures.push(format!("{args:?}: {e}"));
        }
    }
    // -D deletes the one entry with the key; the other stays.
    let deleted = ns.ctscope(&["-D", "-p", "gre", "--srckey", "7"]);
    let left: Vec<String> = ns
        .conntrack(&["-L", "-p", "gre"])
        .lines()
        .iter()
        .map(|l| normalise(l))
        .collect();
    if deleted.code != 0 || left != with("2") {
        failures.push(format!("-D --srckey 7 left {left:?}\n{deleted}"));
    }
    report(9, &failures);
}
