//! count (-C), stats (-S), get (-G), delete (-D) and flush (-F) against
//! conntrack's commands of the same name.

use std::collections::BTreeSet;

use ctscope_e2e::{
    INSERTED, Netns, Output, compare_outputs, key_values, multiset_diff, normalise,
    normalised_lines, report,
};

#[test]
fn count() {
    let Some(ns) = Netns::with_varied_table() else {
        return;
    };
    let want = ns.conntrack(&["-C"]);
    want.expect_code(0);
    let n: u64 = want
        .stdout
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("conntrack -C prints a number\n{want}"));
    assert!(n > 10, "varied table too small: {n}");
    let mut failures = Vec::new();
    for cmd in ["count", "-C", "--count"] {
        let got = ns.ctscope(&[cmd]);
        if got.code != 0 || got.stdout.trim() != want.stdout.trim() {
            failures.push(format!("ctscope {cmd}: want {n}\n{got}"));
        }
    }
    report(3, &failures);
}

/// The `key=value` pairs of a stats line, `cpu=` included.
fn stat_keys(line: &str) -> Vec<String> {
    key_values(line)
        .iter()
        .map(|(k, _)| k.to_string())
        .collect()
}

#[test]
fn stats() {
    let Some(ns) = Netns::with_varied_table() else {
        return;
    };
    let want = ns.conntrack(&["-S"]);
    want.expect_code(0);
    let want_lines = want.lines();
    assert!(!want_lines.is_empty(), "conntrack -S shows nothing\n{want}");
    let mut failures = Vec::new();
    for cmd in ["stats", "-S"] {
        let got = ns.ctscope(&[cmd]);
        got.assert_no_panic();
        let lines = got.lines();
        if got.code != 0 || lines.len() != want_lines.len() {
            failures.push(format!(
                "ctscope {cmd}: {} lines, conntrack -S {}\n{got}\n{want}",
                lines.len(),
                want_lines.len()
            ));
            continue;
        }
        for (g, w) in lines.iter().zip(&want_lines) {
            if stat_keys(g) != stat_keys(w) {
                failures.push(format!(
                    "ctscope {cmd}: keys differ\n  conntrack: {w}\n  ctscope:   {g}"
                ));
            }
        }
    }

    // --total (ctscope's own): one more line, each value the per-CPU sum.
    let got = ns.ctscope(&["stats", "--total"]);
    got.assert_no_panic();
    let lines = got.lines();
    let (cpus, extra): (Vec<&String>, Vec<&String>) = lines
        .iter()
        .partition(|l| l.trim_start().starts_with("cpu="));
    if got.code != 0 || cpus.len() != want_lines.len() || extra.len() != 1 {
        failures.push(format!(
            "ctscope stats --total: want {} cpu= lines and one total line\n{got}",
            want_lines.len()
        ));
    } else {
        let total = key_values(extra[0]);
        let keys: Vec<String> = stat_keys(cpus[0])
            .into_iter()
            .filter(|k| k != "cpu")
            .collect();
        let total_keys: Vec<String> = total.iter().map(|(k, _)| k.to_string()).collect();
        if total_keys != keys {
            failures.push(format!(
                "total line keys {total_keys:?} != per-CPU keys {keys:?}\n{got}"
            ));
        }
        for (k, v) in &total {
            let sum: u64 = cpus
                .iter()
                .filter_map(|l| key_values(l).into_iter().find(|(kk, _)| kk == k))
                .filter_map(|(_, v)| v.parse::<u64>().ok())
                .sum();
            if v.parse::<u64>().ok() != Some(sum) {
                failures.push(format!("total {k}={v}, per-CPU sum {sum}\n{got}"));
            }
        }
    }
    report(3, &failures);
}

#[test]
fn get() {
    let Some(ns) = Netns::with_varied_table() else {
        return;
    };
    // Arguments as conntrack takes them, split on spaces.
    let cases: &[(&str, i32)] = &[
        (
            "-p tcp -s 2001:db8::1 -d 2001:db8::2 --sport 1234 --dport 80",
            0,
        ),
        ("-p udp -s 10.1.0.1 -d 10.1.0.2 --sport 56 --dport 53", 0),
        (
            "-p sctp -s 10.0.0.1 -d 10.0.0.2 --sport 1000 --dport 2000",
            0,
        ),
        (
            "-p icmp -s 10.0.0.1 -d 10.0.0.2 --icmp-type 8 --icmp-code 0 --icmp-id 77",
            0,
        ),
        (
            "-p tcp -s 2001:db8::1 -d 2001:db8::2 --sport 1234 --dport 80 -o extended,id",
            0,
        ),
        // Missing entry: conntrack exits 1 ("such conntrack doesn't exist").
        (
            "-p tcp -s 2001:db8::1 -d 2001:db8::2 --sport 1234 --dport 81",
            1,
        ),
        // The zone-5 entry is not in zone 0, where -G looks.
        ("-p tcp -s 10.1.0.1 -d 10.1.0.2 --sport 1234 --dport 80", 1),
        // Rejected by conntrack: no --dport; -w with -G.
        ("-p tcp -s 2001:db8::1 -d 2001:db8::2 --sport 1234", 2),
        (
            "-p tcp -s 10.1.0.1 -d 10.1.0.2 --sport 1234 --dport 80 -w 5",
            2,
        ),
        // And the per-direction zones (once accepted and ignored).
        (
            "-p udp -s 10.1.0.1 -d 10.1.0.2 --sport 53 --dport 53 --orig-zone 3",
            2,
        ),
        (
            "-p udp -s 10.1.0.1 -d 10.1.0.2 --sport 54 --dport 53 --reply-zone 4",
            2,
        ),
    ];
    let mut failures = Vec::new();
    for &(args, code) in cases {
        let args: Vec<&str> = args.split_whitespace().collect();
        let ct = ns.conntrack(&[&["-G"], &args[..]].concat());
        if ct.code != code {
            failures.push(format!("test expects conntrack to exit {code}\n{ct}"));
            continue;
        }
        if code == 0 && ct.lines().len() != 1 {
            failures.push(format!("conntrack -G printed not one line\n{ct}"));
        }
        for verb in ["get", "-G"] {
            let cs = ns.ctscope(&[&[verb], &args[..]].concat());
            if let Err(e) = compare_outputs(&ct, &cs, "shown") {
                failures.push(format!("{verb} {args:?}:\n{e}"));
            }
        }
    }
    report(cases.len() * 2, &failures);
}

fn ids(out: &Output) -> BTreeSet<String> {
    out.lines()
        .iter()
        .filter_map(|l| {
            key_values(l)
                .into_iter()
                .rev()
                .find(|(k, _)| *k == "id")
                .map(|(_, v)| v.to_string())
        })
        .collect()
}

#[test]
fn delete() {
    let Some(ns) = Netns::with_varied_table() else {
        return;
    };
    let cases: &[(&str, &[&str])] = &[
        ("delete", &["-p", "udp", "-s", "10.1.0.0/16"]),
        ("-D", &["-f", "ipv6", "-p", "tcp", "--dport", "80"]),
        ("delete", &["-w", "5"]),
        ("-D", &["-m", "42"]),
        ("delete", &["-p", "tcp", "--state", "TIME_WAIT"]),
        ("delete", &["-g"]),
        // Matches nothing: conntrack exits 1 with "0 flow entries have been deleted."
        ("delete", &["-s", "192.0.2.1"]),
    ];
    let mut failures = Vec::new();
    for &(verb, filter) in cases {
        let mut case = Vec::new();
        let list = |extra: &[&str]| {
            let out = ns.conntrack(&[&["-L", "-o", "id"], extra].concat());
            out.expect_code(0);
            out
        };
        let before = ids(&list(&[]));
        let selected = list(filter);
        let doomed = ids(&selected);
        let cs = ns.ctscope(&[&[verb], filter].concat());
        cs.assert_no_panic();
        let want_code = if doomed.is_empty() { 1 } else { 0 };
        if cs.code != want_code {
            case.push(format!(
                "{verb} {filter:?}: exit {} (conntrack -D exits {want_code} when it deletes {})\n{cs}",
                cs.code,
                doomed.len()
            ));
        }
        let reported = cs.entries_reported("deleted");
        if reported != Some(doomed.len() as u64) {
            case.push(format!(
                "{verb} {filter:?}: want \"{} flow entries have been deleted.\", got {reported:?}\n{cs}",
                doomed.len()
            ));
        }
        // conntrack -D prints each entry it deletes, as -L would.
        let mut want_printed: Vec<String> = selected
            .lines()
            .iter()
            .map(|l| normalise(l.rsplit_once(" id=").map_or(l.as_str(), |(h, _)| h)))
            .collect();
        want_printed.sort();
        if let Some(d) = multiset_diff(
            "conntrack -L FILTER before",
            &want_printed,
            "ctscope delete stdout",
            &normalised_lines(&cs),
        ) {
            case.push(format!("{verb} {filter:?} printed other entries: {d}"));
        }
        let after = ids(&list(&[]));
        let expected: BTreeSet<String> = before.difference(&doomed).cloned().collect();
        if after != expected {
            case.push(format!(
                "{verb} {filter:?}: left {} entries, want {}; wrongly kept ids {:?}, wrongly removed ids {:?}",
                after.len(),
                expected.len(),
                after.difference(&expected).collect::<Vec<_>>(),
                expected.difference(&after).collect::<Vec<_>>()
            ));
        }
        if !case.is_empty() {
            failures.push(case.join("\n"));
        }
    }
    report(cases.len(), &failures);
}

#[test]
fn flush() {
    let Some(ns) = Netns::with_varied_table() else {
        return;
    };
    let mut failures = Vec::new();
    for verb in ["flush", "-F"] {
        let before = ns.conntrack(&["-C"]);
        before.expect_code(0);
        assert_ne!(before.stdout.trim(), "0", "nothing to flush\n{before}");
        let cs = ns.ctscope(&[verb]);
        cs.assert_no_panic();
        let after = ns.conntrack(&["-C"]);
        if cs.code != 0 || after.stdout.trim() != "0" {
            failures.push(format!(
                "ctscope {verb}: table has {} entries after\n{cs}",
                after.stdout.trim()
            ));
        }
        // Refill a little for the next round.
        for entry in INSERTED.iter().take(4) {
            ns.insert(entry);
        }
    }
    // Flushing an empty table is fine for conntrack (exit 0).
    ns.conntrack(&["-F"]).expect_code(0);
    let cs = ns.ctscope(&["flush"]);
    if cs.code != 0 {
        failures.push(format!("flushing an empty table: conntrack exits 0\n{cs}"));
    }
    report(3, &failures);
}

/// `-F -f FAMILY` empties one family and leaves the other. conntrack
/// 1.4.7's own `-F -f` empties every family (it asks with NFNETLINK_V0,
/// which the kernel reads as "all"), so the reference is `conntrack -D -f
/// FAMILY`, which deletes that family's entries one by one: the same table
/// is emptied by each, and what is left must be the same.
#[test]
fn flush_one_family() {
    let Some(ns) = Netns::with_varied_table() else {
        return;
    };
    let mut failures = Vec::new();
    for family in ["ipv4", "ipv6"] {
        let other = if family == "ipv4" { "ipv6" } else { "ipv4" };
        let mut left = Vec::new();
        for tool in ["conntrack -D", "ctscope -F"] {
            ns.conntrack(&["-F"]).expect_code(0);
            for entry in INSERTED {
                ns.insert(entry);
            }
            let out = if tool == "conntrack -D" {
                ns.conntrack(&["-D", "-f", family])
            } else {
                ns.ctscope(&["-F", "-f", family])
            };
            out.assert_no_panic();
            if out.code != 0 {
                failures.push(format!("{tool} -f {family}: exit {}\n{out}", out.code));
            }
            let listed = ns.conntrack(&["-L", "-o", "extended"]);
            let families: BTreeSet<&str> = listed
                .stdout
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .collect();
            if families.contains(family) || !families.contains(other) {
                failures.push(format!(
                    "{tool} -f {family} should leave only {other} entries:\n{listed}"
                ));
            }
            left.push(normalised_lines(&listed));
        }
        if left[0] != left[1] {
            failures.push(format!(
                "after -f {family}, conntrack -D left\n{}\nctscope -F left\n{}",
                left[0].join("\n"),
                left[1].join("\n")
            ));
        }
    }
    report(2, &failures);
}
