//! Bad arguments and missing privileges: a one-line message, the right exit
//! code, never a panic.

use ctscope_e2e::{Netns, ctscope_bin_str, host, report};

#[test]
fn bad_flags_exit_2_with_one_line() {
    let Some(ns) = Netns::new() else {
        return;
    };
    // conntrack 1.4.7 itself rejects these (exit 2) except `-m x` and
    // `--sport 70000`, which it silently reads as 0 / truncates and lists
    // nothing; ctscope is meant to be stricter there.
    let cases: &[&[&str]] = &[
        &["--bogus"],
        &["-s", "300.1.1.1"],
        &["-m", "x"],
        &["-o", "nonsense"],
        &["-p", "nosuchproto"],
        &["-p", "tcp", "--sport", "70000"],
        &["-f", "ipx"],
        &["-s"],
        &["-p", "tcp", "--state", "NO_SUCH_STATE"],
        &["-u", "NO_SUCH_STATUS"],
        &["-f", "ipv4", "-s", "::1"],
    ];
    let mut failures = Vec::new();
    for args in cases {
        if let Err(e) = ns.ctscope(&[&["list"], *args].concat()).one_line_error(2) {
            failures.push(format!("list {args:?}: {e}"));
        }
    }
    // Unknown words, and two commands at once (conntrack: "Invalid
    // parameters"), which must not run the first and ignore the second.
    let others: &[&[&str]] = &[
        &["--bogus"],
        &["nosuchcommand"],
        &["count", "--bogus"],
        &["-L", "-E"],
        &["-L", "-D"],
        &["-F", "-L"],
        &["profile", "--duration", "0"],
        &["profile", "-o", "svg"],
        &["profile", "--html"],
        &["top", "--once", "--sort", "bogus"],
        // Values that overflow a duration, a buffer or a ring size: one
        // line, never a panic (1e99 used to panic converting to Duration).
        &["-E", "--duration", "1e99"],
        &["-E", "--duration", "18446744073709551615"],
        &["-E", "--duration", "inf"],
        &["-E", "--duration", "NaN"],
        &["profile", "--duration", "1e99"],
        &["-E", "--count", "18446744073709551616"],
        &["-E", "-b", "99999999999999999999"],
        &["-E", "--ring-size", "4294967296"],
        &["top", "--resync", "18446744073709551616"],
        &["top", "--once", "--refresh", "1e99"],
        &["top", "--refresh", "NaN"],
        &["top", "-R", "0"],
        &["top", "--once", "--limit", "-1"],
        &["-L", "-w", "65536"],
        &["-L", "-m", "4294967296"],
        // conntrack warns and fails (exit 1) on these; ctscope says which
        // flag to use, exit 2 (README, differences from conntrack).
        &["-L", "-u", "SRC_NAT"],
        &["-L", "-u", "DST_NAT"],
    ];
    for argv in others {
        if let Err(e) = ns.ctscope(argv).one_line_error(2) {
            failures.push(format!("{argv:?}: {e}"));
        }
    }
    report(cases.len() + others.len(), &failures);
}

#[test]
fn missing_netns_exits_1_naming_it() {
    let Some(_ns) = Netns::new() else {
        return;
    };
    let bin = ctscope_bin_str();
    let mut failures = Vec::new();
    for name in ["/nonexistent", "ctscope-no-such-netns"] {
        let out = host(&[&bin, "--netns", name, "list"]);
        if let Err(e) = out.one_line_error(1) {
            failures.push(e);
        } else if !out.stderr.contains(name) {
            failures.push(format!("the message does not name {name}\n{out}"));
        }
    }
    report(2, &failures);
}

#[test]
fn unprivileged_exits_1_like_conntrack() {
    let Some(mut ns) = Netns::new() else {
        return;
    };
    ns.fill_varied_table();
    let bin = ctscope_bin_str();
    let nobody = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ];
    // (conntrack's arguments, ctscope's), split on spaces.
    let cases: &[(&str, &str)] = &[
        ("-L", "list"),
        ("-D -p tcp", "delete -p tcp"),
        (
            "-G -p tcp -s 2001:db8::1 -d 2001:db8::2 --sport 1234 --dport 80",
            "get -p tcp -s 2001:db8::1 -d 2001:db8::2 --sport 1234 --dport 80",
        ),
        ("-F", "flush"),
    ];
    let mut failures = Vec::new();
    for &(ct_args, cs_args) in cases {
        let mut argv = nobody.to_vec();
        argv.push("conntrack");
        argv.extend(ct_args.split_whitespace());
        let ct = ns.exec(&argv);
        let mut argv = nobody.to_vec();
        argv.push(&bin);
        argv.extend(cs_args.split_whitespace());
        let cs = ns.exec(&argv);
        if ct.code != 1 {
            failures.push(format!(
                "test expects conntrack to exit 1 unprivileged\n{ct}"
            ));
        }
        if let Err(e) = cs.one_line_error(ct.code) {
            failures.push(format!("{cs_args:?} as nobody: {e}\nconntrack:\n{ct}"));
        } else if !(cs.stderr.contains("CAP_NET_ADMIN") || cs.stderr.contains("root")) {
            failures.push(format!(
                "message mentions neither CAP_NET_ADMIN nor root\n{cs}"
            ));
        }
    }
    // Nothing was flushed or deleted by the unprivileged runs.
    let left = ns.conntrack(&["-C"]);
    if left.stdout.trim() == "0" {
        failures.push("the table was emptied by an unprivileged run".into());
    }
    report(cases.len(), &failures);
}
