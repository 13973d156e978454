//! The commands that change the table: create (-I), update (-U) and
//! listing with zeroed counters (-L -z), against conntrack's.
//!
//! A create or update runs with conntrack in one namespace and with
//! ctscope in another holding the same table; the two tables must then be
//! the same. conntrack 1.4.7's -U prints only some of the entries it
//! updates (its update and get requests share a socket, and the get's
//! answers fall out of step), so what it prints must be among what ctscope
//! prints, and ctscope prints one line per entry counted.

use ctscope_e2e::{
    INSERTED, Netns, Output, XtablesDir, compare_outputs, ctscope_bin_str, multiset_diff,
    normalised_lines, report,
};

/// Entries for -I besides [`INSERTED`]: NAT set up by the request, a reply
/// tuple alone, a closing TCP state, a protocol known by number, and the
/// status bit conntrack can set that the listing does not show.
const CREATED_TOO: &[&str] = &[
    "-p udp -s 10.0.0.1 -d 10.0.0.2 --sport 1 --dport 2 -g 10.0.0.9:55 -n 10.0.0.8:66",
    "-p udp -s 2001:db8::1 -d 2001:db8::2 --sport 1 --dport 2 -n 2001:db8::9",
    "-p tcp -r 10.0.0.1 -q 10.0.0.5 --reply-port-src 1 --reply-port-dst 3 --state TIME_WAIT",
    "-p 99 -s 10.0.0.1 -d 10.0.0.2",
    "-p udp -s 10.0.0.1 -d 10.0.0.2 --sport 1 --dport 3 -u FIXED_TIMEOUT -m 0x10/0xf0",
];

fn split(args: &str) -> Vec<&str> {
    args.split_whitespace().collect()
}

/// The last stderr line, without the program's prefix: the message.
fn message(out: &Output) -> String {
    let last = out
        .stderr_lines()
        .into_iter()
        .rfind(|l| !l.starts_with("Try `conntrack -h'"))
        .unwrap_or_default();
    let last = last.strip_prefix("ctscope: ").unwrap_or(&last);
    match last.split_once("): ") {
        Some((head, msg)) if head.contains("conntrack-tools") => msg.to_string(),
        _ => last.to_string(),
    }
}

/// The whole table, normalised, as `conntrack -L -o extended` shows it.
fn table(ns: &Netns) -> Vec<String> {
    let out = ns.conntrack(&["-L", "-o", "extended"]);
    out.expect_code(0);
    normalised_lines(&out)
}

/// Both namespaces emptied and filled with [`INSERTED`] by conntrack.
fn refill(namespaces: [&Netns; 2]) {
    for ns in namespaces {
        ns.conntrack(&["-F"]).expect_code(0);
        for entry in INSERTED {
            ns.insert(entry);
        }
    }
}

#[test]
fn create() {
    let (Some(ct_ns), Some(cs_ns)) = (Netns::new(), Netns::new()) else {
        return;
    };
    let mut failures = Vec::new();
    let entries: Vec<&str> = INSERTED.iter().chain(CREATED_TOO).copied().collect();
    for entry in &entries {
        let args = [&["-I"][..], &split(entry), &["-t", "3600"]].concat();
        let ct = ct_ns.conntrack(&args);
        let cs = cs_ns.ctscope(&args);
        if ct.code != 0 {
            failures.push(format!("conntrack could not create the entry\n{ct}"));
        } else if let Err(e) = compare_outputs(&ct, &cs, "created") {
            failures.push(format!("-I {entry}:\n{e}"));
        }
    }
    let want = table(&ct_ns);
    if let Some(d) = multiset_diff("conntrack -I", &want, "ctscope -I", &table(&cs_ns)) {
        failures.push(format!("the tables differ: {d}"));
    }
    // Refused, by the kernel or before; the message is conntrack's unless
    // `false`. The tables hold the same entries, so EEXIST is the same.
    let cases: &[(&str, i32, bool)] = &[
        (
            "-p udp -s 10.1.0.1 -d 10.1.0.2 --sport 56 --dport 53 -t 9",
            1,
            true,
        ),
        (
            "-p tcp -s 10.1.0.1 -d 10.1.0.2 --sport 1234 --dport 80 --state SYN_RECV -w 5 -t 9",
            1,
            true,
        ),
        (
            "-p icmp -s 10.0.0.1 -d 10.0.0.2 --icmp-type 3 --icmp-code 0 --icmp-id 1 -t 9",
            1,
            true,
        ),
        (
            "-p udp -s 10.0.0.1 -d 10.0.0.2 -r 10.0.0.2 --sport 1 --dport 13 -t 9",
            1,
            true,
        ),
        (
            "-p udp -s 10.0.0.1 -d 10.0.0.2 --sport 1 --dport 7 -t 9 -u EXPECTED",
            1,
            true,
        ),
        (
            "-p udp -s 10.0.0.1 -d 10.0.0.2 --sport 1 --dport 2",
            2,
            true,
        ),
        ("-s 10.0.0.1 -d 10.0.0.2 -t 9", 2, true),
        ("-p tcp -s 10.0.0.1 -d 10.0.0.2 -t 9", 2, true),
        ("-p tcp -s 10.0.0.1 -d 10.0.0.2 --state CLOSE -t 9", 2, true),
        ("-p udp -r 10.0.0.1 --sport 1 --dport 2 -t 9", 2, true),
        (
            "-p udp -s 10.0.0.1 -q 10.0.0.1 --sport 1 --dport 2 -t 9",
            2,
            true,
        ),
        (
            "-p icmp -s 10.0.0.1 -d 10.0.0.2 --icmp-type 8 -t 9",
            2,
            true,
        ),
        ("-p gre -s 10.0.0.1 -d 10.0.0.2 -t 9", 2, true),
        (
            "-p sctp -s 10.0.0.1 -d 10.0.0.2 --sport 1 --dport 2 --state ESTABLISHED --orig-vtag 1 -t 9",
            2,
            true,
        ),
        (
            "-p dccp -s 10.0.0.1 -d 10.0.0.2 --sport 1 --dport 2 --state OPEN -t 9",
            2,
            true,
        ),
        (
            "-p udp -s 10.0.0.1 -d 10.0.0.2 --sport 1 --dport 2 -t 9 -f ipv4",
            2,
            true,
        ),
        (
            "-p udp -s 10.0.0.1 -d 10.0.0.2 --sport 1 --dport 2 -t 9 -c 3",
            2,
            true,
        ),
        (
            "-p udp -s 10.0.0.1 -d 10.0.0.2 --sport 1 --dport 2 -t 9 -j",
            2,
            true,
        ),
        (
            "-p udp -s 10.0.0.0/24 -d 10.0.0.2 --sport 1 --dport 2 -t 9",
            2,
            true,
        ),
        (
            "-p udp -s 10.0.0.1 -d 10.0.0.2 --sport 1 --dport 2 -t 9 -u CONFIRMED",
            2,
            true,
        ),
        (
            "-p udp -s 10.0.0.1 -d 2001:db8::1 --sport 1 --dport 2 -t 9",
            2,
            false,
        ),
        (
            "-p udp -s 10.0.0.1 -d 10.0.0.2 --sport 1 --dport 2 -t 9 -z",
            2,
            false,
        ),
        (
            "-p udp -s 10.0.0.1 -d 10.0.0.2 --sport 1 --dport 2 -t 9 -o extended",
            2,
            false,
        ),
    ];
    for &(args, code, same_words) in cases {
        let args = [&["-I"][..], &split(args)].concat();
        let ct = ct_ns.conntrack(&args);
        let cs = cs_ns.ctscope(&args);
        cs.assert_no_panic();
        if ct.code != code || cs.code != code {
            failures.push(format!("want exit {code} from both\n{ct}\n{cs}"));
        } else if let Err(e) = cs.one_line_error(code) {
            failures.push(e);
        } else if same_words && message(&ct) != message(&cs) {
            failures.push(format!(
                "{args:?}: conntrack says `{}', ctscope `{}'",
                message(&ct),
                message(&cs)
            ));
        }
    }
    if let Some(d) = multiset_diff("conntrack", &table(&ct_ns), "ctscope", &table(&cs_ns)) {
        failures.push(format!("the refused requests changed a table: {d}"));
    }
    report(entries.len() + 1 + cases.len() + 1, &failures);
}

/// The timeouts (seconds left) of the listed entries.
fn timeouts(ns: &Netns, filter: &[&str]) -> Vec<u32> {
    let out = ns.conntrack(&[&["-L"], filter].concat());
    out.lines()
        .iter()
        .filter_map(|l| l.split_whitespace().nth(2)?.parse().ok())
        .collect()
}

/// Runs `-U ARGS` with conntrack in `ct_ns` and with ctscope in `cs_ns`
/// (the same table in each) and says how the results differ.
fn compare_update(ct_ns: &Netns, cs_ns: &Netns, args: &[&str]) -> Result<(Output, Output), String> {
    let args = [&["-U"][..], args].concat();
    let ct = ct_ns.conntrack(&args);
    let cs = cs_ns.ctscope(&args);
    cs.assert_no_panic();
    let mut problems = Vec::new();
    if ct.code != cs.code {
        problems.push(format!("exit {} vs {}", ct.code, cs.code));
    }
    let (want, got) = (
        ct.entries_reported("updated"),
        cs.entries_reported("updated"),
    );
    if want != got {
        problems.push(format!(
            "\"N flow entries have been updated.\": {want:?} vs {got:?}"
        ));
    }
    if ct.code != 0 && message(&ct) != message(&cs) {
        problems.push(format!("messages `{}' vs `{}'", message(&ct), message(&cs)));
    }
    let printed = normalised_lines(&cs);
    if got.is_some_and(|n| n != printed.len() as u64) {
        problems.push(format!(
            "ctscope counted {got:?} and printed {}",
            printed.len()
        ));
    }
    if ct.code == 0 {
        for line in normalised_lines(&ct) {
            if !printed.contains(&line) {
                problems.push(format!("conntrack printed, ctscope did not: {line}"));
            }
        }
    }
    if let Some(d) = multiset_diff("conntrack -U", &table(ct_ns), "ctscope -U", &table(cs_ns)) {
        problems.push(format!("the tables differ after: {d}"));
    }
    if problems.is_empty() {
        Ok((ct, cs))
    } else {
        Err(format!("-U {args:?}: {}\n{ct}\n{cs}", problems.join("; ")))
    }
}

#[test]
fn update() {
    let (Some(ct_ns), Some(cs_ns)) = (Netns::new(), Netns::new()) else {
        return;
    };
    // Where conntrack 1.4.7 works: an address or -f given (it sends the
    // update with the command's family), entries in zone 0 (it sends no
    // zone), no NAT address (it sends it along, and the kernel refuses).
    let cases: &[&str] = &[
        "-s 10.4.0.0/16 -m 7",
        "-f ipv6 -t 500",
        "-s 10.4.0.1 -p tcp --state CLOSE",
        "-s 10.4.0.1 -u ASSURED",
        "-d 10.0.0.2 -p icmp -m 0x20/0xf0",
        // -u before -m: the other way round conntrack 1.4.7 takes the
        // status for the mark (see update_where_conntrack_fails).
        "-r 10.2.0.3 -q 10.2.0.1 -u SEEN_REPLY -m 9",
        "-f ipv4 -p tcp --dport 22 -m 8 -o extended",
        // The TCP entry has mark 99 already: only the ICMPv6 one changes.
        "-f ipv6 -m 99",
        // Nothing changes, nothing matches: exit 1.
        "-s 10.0.0.1 -p sctp -m 0",
        "-s 192.0.2.1 -m 1",
        "-s 10.4.0.1",
        // Refused by the kernel (EBUSY), by conntrack's checks.
        "-s 10.4.0.1 -u EXPECTED",
        "-s 10.4.0.1 -u CONFIRMED",
        "-s 10.4.0.1 -m 1 -w 5",
        "-s 10.4.0.1 -m 1 --orig-zone 5",
        "-s 10.4.0.1 -m 1 -j",
        "-s 10.4.0.1 -m 1 -c 3",
    ];
    let mut failures = Vec::new();
    for args in cases {
        refill([&ct_ns, &cs_ns]);
        match compare_update(&ct_ns, &cs_ns, &split(args)) {
            Err(e) => failures.push(e),
            Ok(_) if args.contains("-t 500") => {
                for ns in [&ct_ns, &cs_ns] {
                    let t = timeouts(ns, &["-f", "ipv6"]);
                    if t.is_empty() || t.iter().any(|t| !(490..=500).contains(t)) {
                        failures.push(format!("-U {args}: timeouts now {t:?}, want 500"));
                    }
                }
            }
            Ok(_) => {}
        }
    }
    report(cases.len(), &failures);
}

/// Where conntrack 1.4.7's -U fails and ctscope does what was asked
/// (README, Differences from conntrack).
#[test]
fn update_where_conntrack_fails() {
    let Some(ns) = Netns::new() else {
        return;
    };
    for entry in INSERTED.iter().chain(CREATED_TOO) {
        ns.insert(entry);
    }
    let count =
        |filter: &[&str]| normalised_lines(&ns.conntrack(&[&["-L"], filter].concat())).len();
    let mut failures = Vec::new();
    let mut expect = |args: &str, n: usize, selected: &[&str], marked: &[&str]| {
        let out = ns.ctscope(&[&["-U"][..], &split(args)].concat());
        let printed = out.lines().len();
        let (all, with_mark) = (count(selected), count(marked));
        if out.code != 0 || out.entries_reported("updated") != Some(n as u64) || printed != n {
            failures.push(format!("-U {args}: want {n} updated and printed\n{out}"));
        } else if all != n || with_mark != n {
            failures.push(format!(
                "-U {args}: {with_mark} of {all} selected entries have the new mark, want {n}"
            ));
        }
    };
    // Entries in zones (conntrack sends no zone: ENOENT), with no address
    // or family (conntrack asks with AF_UNSPEC: EOPNOTSUPP), with a NAT
    // address (conntrack sends it: EOPNOTSUPP).
    expect(
        "-s 10.1.0.1 -m 7",
        4,
        &["-s", "10.1.0.1"],
        &["-s", "10.1.0.1", "-m", "7"],
    );
    expect("-p udp -m 5", 6, &["-p", "udp"], &["-p", "udp", "-m", "5"]);
    expect(
        "-s 10.0.0.1 -n 10.0.0.8 -m 6",
        1,
        &["-n", "10.0.0.8"],
        &["-n", "10.0.0.8", "-m", "6"],
    );
    // The timeout of a FIXED_TIMEOUT entry cannot change: the kernel says
    // EPERM, which conntrack calls a missing privilege.
    let out = ns.ctscope(&[
        "-U", "-s", "10.0.0.1", "-p", "udp", "--dport", "3", "-t", "5",
    ]);
    if out.code != 1 || !out.stderr.contains("FIXED_TIMEOUT") {
        failures.push(format!(
            "-U -t on a FIXED_TIMEOUT entry: want exit 1 naming it\n{out}"
        ));
    }
    // -m before -u: conntrack 1.4.7 sets the status bits as the mark.
    let out = ns.ctscope(&[
        "-I",
        "-p",
        "udp",
        "-s",
        "10.9.0.1",
        "-d",
        "10.9.0.2",
        "--sport",
        "1",
        "--dport",
        "2",
        "-t",
        "60",
        "-m",
        "5",
        "-u",
        "SEEN_REPLY",
    ]);
    if out.code != 0 || count(&["-s", "10.9.0.1", "-m", "5"]) != 1 {
        failures.push(format!("-I -m 5 -u SEEN_REPLY: want mark=5\n{out}"));
    }
    let out = ns.ctscope(&["-U", "-s", "10.9.0.1", "-m", "6", "-u", "ASSURED"]);
    if out.code != 0 || count(&["-s", "10.9.0.1", "-u", "ASSURED", "-m", "6"]) != 1 {
        failures.push(format!(
            "-U -m 6 -u ASSURED: want mark=6 and ASSURED\n{out}"
        ));
    }
    report(6, &failures);
}

#[test]
fn labels_on_create_and_update() {
    let (Some(ct_ns), Some(cs_ns)) = (Netns::new(), Netns::new()) else {
        return;
    };
    let xtables = XtablesDir::new(b"0 web\n1 db\n2 ops\n5 five\n");
    // The kernel gives entries labels only once a rule uses them.
    for ns in [&ct_ns, &cs_ns] {
        ns.nft("table inet labels {\n  chain input {\n    type filter hook input priority 0;\n    ct label set 2\n  }\n}\n");
    }
    let conntrack =
        |args: &[&str]| ct_ns.exec_with_xtables(&xtables.conf, &[&["conntrack"], args].concat());
    let bin = ctscope_bin_str();
    let ctscope =
        |args: &[&str]| cs_ns.exec_with_xtables(&xtables.conf, &[&[bin.as_str()], args].concat());
    let tables = || {
        let (a, b) = (
            conntrack(&["-L", "-o", "labels"]),
            ctscope(&["-L", "-o", "labels"]),
        );
        multiset_diff(
            "conntrack",
            &normalised_lines(&a),
            "ctscope",
            &normalised_lines(&b),
        )
    };
    let mut failures = Vec::new();
    for (sport, extra) in ["--label-add web", "--label-add db,ops", ""]
        .iter()
        .enumerate()
    {
        let port = (sport + 1).to_string();
        let args = [
            &[
                "-I", "-p", "udp", "-s", "10.7.0.1", "-d", "10.7.0.2", "--dport", "53", "-t",
                "3600",
            ][..],
            &["--sport", &port],
            &split(extra),
        ]
        .concat();
        if let Err(e) = compare_outputs(&conntrack(&args), &ctscope(&args), "created") {
            failures.push(format!("-I {extra}: {e}"));
        }
    }
    if let Some(d) = tables() {
        failures.push(format!("created with labels: {d}"));
    }
    // In order, each on the table the one before left.
    let cases: &[(&str, i32)] = &[
        ("--label-add ops -o labels", 0),
        ("--label-del web -o labels", 0),
        ("-l db --label-add five -o labels", 0),
        ("--label-del -o labels", 0),
        // No entry has labels left: none is touched.
        ("--label-del", 1),
        ("--label-add db,five", 0),
        ("--label-del db,five -o labels", 0),
        ("--label-add web --label-del db", 1),
        ("--label-add nosuch", 2),
    ];
    for &(args, code) in cases {
        let args = [&["-U", "-s", "10.7.0.1"][..], &split(args)].concat();
        let (ct, cs) = (conntrack(&args), ctscope(&args));
        let ok = ct.code == code
            && cs.code == code
            && ct.entries_reported("updated") == cs.entries_reported("updated")
            && normalised_lines(&ct)
                .iter()
                .all(|l| normalised_lines(&cs).contains(l));
        if !ok {
            failures.push(format!(
                "{args:?}: want exit {code}, the same count\n{ct}\n{cs}"
            ));
        }
        if let Some(d) = tables() {
            failures.push(format!("after {args:?}: {d}"));
        }
    }
    report(3 + 1 + 2 * cases.len(), &failures);
}

/// The counters of a listing's lines, as (packets, bytes) pairs.
fn counters(lines: &[String]) -> Vec<(u64, u64)> {
    lines
        .iter()
        .flat_map(|l| {
            let kv: Vec<(&str, &str)> = l
                .split_whitespace()
                .filter_map(|t| t.split_once('='))
                .collect();
            kv.windows(2)
                .filter(|w| w[0].0 == "packets" && w[1].0 == "bytes")
                .filter_map(|w| Some((w[0].1.parse().ok()?, w[1].1.parse().ok()?)))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn zero_counters() {
    let Some(ns) = Netns::with_varied_table() else {
        return;
    };
    let listing = |args: &[&str]| {
        let out = ns.conntrack(&[&["-L"], args].concat());
        out.expect_code(0);
        normalised_lines(&out)
    };
    let mut failures = Vec::new();
    let (v4, v6) = (listing(&["-f", "ipv4"]), listing(&["-f", "ipv6"]));
    for (family, lines) in [("ipv4", &v4), ("ipv6", &v6)] {
        assert!(
            counters(lines).iter().any(|c| c.0 > 0),
            "no {family} traffic was counted (nf_conntrack_acct):\n{}",
            lines.join("\n")
        );
    }
    // -z shows the counters as they were, then they are zero: for the
    // family asked only.
    let before = ns.conntrack(&["-L", "-f", "ipv6"]);
    let cs = ns.ctscope(&["-L", "-z", "-f", "ipv6"]);
    if let Err(e) = compare_outputs(&before, &cs, "shown") {
        failures.push(format!("-L -z -f ipv6 is not -L -f ipv6: {e}"));
    }
    if counters(&listing(&["-f", "ipv6"]))
        .iter()
        .any(|c| *c != (0, 0))
    {
        failures.push(format!(
            "-L -z -f ipv6 left counters:\n{}",
            listing(&["-f", "ipv6"]).join("\n")
        ));
    }
    if listing(&["-f", "ipv4"]) != v4 {
        failures.push("-L -z -f ipv6 changed IPv4 entries".to_string());
    }
    // With a NAT filter conntrack shows the NATed entries and zeroes all.
    let before = ns.conntrack(&["-L", "-j", "-o", "extended"]);
    let cs = ns.ctscope(&["-L", "-z", "-j", "-o", "extended"]);
    if let Err(e) = compare_outputs(&before, &cs, "shown") {
        failures.push(format!("-L -z -j: {e}"));
    }
    if before.lines().is_empty() {
        failures.push(format!("no NAT entries to show\n{before}"));
    }
    let after = listing(&[]);
    if counters(&after).iter().any(|c| *c != (0, 0)) {
        failures.push(format!("-L -z -j left counters:\n{}", after.join("\n")));
    }
    // On the zeroed table both list the same.
    let (ct, cs) = (ns.conntrack(&["-L", "-z"]), ns.ctscope(&["-L", "-z"]));
    if let Err(e) = compare_outputs(&ct, &cs, "shown") {
        failures.push(format!("-L -z: {e}"));
    }
    // -z takes no filter but -f and the NAT ones, and is list's alone.
    let refused: &[&[&str]] = &[
        &["-L", "-z", "-p", "udp"],
        &["-L", "-z", "-s", "127.0.0.1"],
        &["-L", "-z", "-m", "1"],
        &["-L", "-z", "-u", "ASSURED"],
        &["-L", "-z", "-w", "7"],
        &["-L", "-z", "-c", "0"],
        &[
            "-G", "-z", "-p", "udp", "-s", "10.1.0.1", "-d", "10.1.0.2", "--sport", "53",
            "--dport", "53",
        ],
        &["-D", "-z", "-s", "192.0.2.1"],
        &["-E", "-z"],
    ];
    for args in refused {
        let (ct, cs) = (ns.conntrack(args), ns.ctscope(args));
        if ct.code != 2 || cs.one_line_error(2).is_err() {
            failures.push(format!("want exit 2 from both\n{ct}\n{cs}"));
        } else if args[0] == "-L" && message(&ct) != message(&cs) {
            failures.push(format!("`{}' vs `{}'", message(&ct), message(&cs)));
        }
    }
    report(7 + refused.len(), &failures);
}
