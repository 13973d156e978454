//! `ctscope list ARGS` against `conntrack -L ARGS`, line for line, in a
//! namespace holding a varied table.

use ctscope_e2e::{
    Netns, XtablesDir, compare_list, ctscope_bin_str, multiset_diff, normalise_xml,
    normalised_lines, report,
};

/// Fails unless the unfiltered listing shows the variety the table was
/// built to have, so the comparison cannot pass on a thin table.
fn assert_variety(lines: &[String]) {
    let has = |what: &str, f: &dyn Fn(&str) -> bool| {
        assert!(
            lines.iter().any(|l| f(l)),
            "the table lacks {what}; lines:\n{}",
            lines.join("\n")
        );
    };
    has("a TIME_WAIT entry", &|l| l.contains(" TIME_WAIT "));
    has("a CLOSE_WAIT entry", &|l| l.contains(" CLOSE_WAIT "));
    has("a SYN_SENT entry", &|l| l.contains(" SYN_SENT "));
    has("an ESTABLISHED entry", &|l| l.contains(" ESTABLISHED "));
    has("an [UNREPLIED] entry", &|l| l.contains("[UNREPLIED]"));
    has("an [ASSURED] entry", &|l| l.contains("[ASSURED]"));
    has("an IPv6 entry", &|l| {
        l.contains("src=::1 ") || l.contains("src=2001:db8::1 ")
    });
    has("a zone= entry", &|l| l.contains(" zone=7 "));
    has("a zone-orig= entry", &|l| l.contains(" zone-orig=8 "));
    has("a zone-reply= entry", &|l| l.contains(" zone-reply=4 "));
    has("a non-zero mark", &|l| {
        l.contains(" mark=4660 ") || l.contains(" mark=42 ")
    });
    has("a DNAT entry", &|l| {
        l.contains("dport=5000 ") && l.contains("src=127.0.0.2 ")
    });
    has("an SNAT entry", &|l| {
        l.contains("dport=5002 ") && l.contains("dst=127.0.0.3 ")
    });
    has("an icmp entry", &|l| l.starts_with("icmp "));
    has("an icmpv6 entry", &|l| l.starts_with("icmpv6 "));
    has("an sctp entry", &|l| l.starts_with("sctp "));
    has("a gre entry", &|l| l.starts_with("gre "));
    has("a udplite entry", &|l| l.starts_with("udplite "));
}

#[track_caller]
fn parity(args: &[&str]) {
    let Some(ns) = Netns::with_varied_table() else {
        return;
    };
    match compare_list(&ns, args) {
        Ok(lines) => {
            assert!(!lines.is_empty(), "conntrack -L {args:?} shows nothing");
            if args.is_empty() {
                // Shown with --nocapture, to see what the table holds.
                eprintln!("the varied table:\n{}", lines.join("\n"));
                assert_variety(&lines);
            }
        }
        Err(e) => panic!("ctscope list {args:?} differs from conntrack -L {args:?}:\n{e}"),
    }
}

#[test]
fn plain() {
    parity(&[]);
}

#[test]
fn output_extended() {
    parity(&["-o", "extended"]);
}

#[test]
fn output_id() {
    parity(&["-o", "id"]);
}

#[test]
fn output_extended_id() {
    parity(&["-o", "extended,id"]);
}

#[test]
fn output_ktimestamp() {
    parity(&["-o", "ktimestamp"]);
}

#[test]
fn family_ipv6() {
    parity(&["-f", "ipv6"]);
}

#[test]
fn family_ipv4() {
    parity(&["-f", "ipv4"]);
}

/// `-L`, `--dump` and `dump` are `list`; `--netns NAME` from the host is
/// `ip netns exec NAME`.
#[test]
fn aliases_and_netns_flag() {
    let Some(ns) = Netns::with_varied_table() else {
        return;
    };
    let list = ns.ctscope(&["list"]);
    list.expect_code(0).assert_no_panic();
    let want = normalised_lines(&list);
    assert!(!want.is_empty(), "ctscope list shows nothing\n{list}");
    let mut failures = Vec::new();
    let mut cases = 0;
    for alias in [&["-L"][..], &["--dump"], &["dump"]] {
        cases += 1;
        let out = ns.ctscope(alias);
        if out.code != 0 {
            failures.push(format!("ctscope {alias:?} failed\n{out}"));
        } else if let Some(d) = multiset_diff(
            "ctscope list",
            &want,
            &format!("ctscope {alias:?}"),
            &normalised_lines(&out),
        ) {
            failures.push(d);
        }
    }
    let bin = ctscope_e2e::ctscope_bin_str();
    for argv in [
        vec![bin.as_str(), "--netns", ns.name(), "list"],
        vec![bin.as_str(), "--netns", ns.name(), "-L"],
    ] {
        cases += 1;
        let out = ctscope_e2e::host(&argv);
        if out.code != 0 {
            failures.push(format!("from the host namespace:\n{out}"));
        } else if let Some(d) = multiset_diff(
            "ip netns exec NS ctscope list",
            &want,
            &format!("ctscope {:?} from the host", &argv[1..]),
            &normalised_lines(&out),
        ) {
            failures.push(d);
        } else if out.entries_reported("shown") != Some(want.len() as u64) {
            failures.push(format!(
                "--netns: wrong \"N flow entries have been shown.\" (want {})\n{out}",
                want.len()
            ));
        }
    }
    report(cases, &failures);
}

/// A dump interrupted by a socket overrun (ENOBUFS, injected after the
/// first datagram through the test-only CTSCOPE_FAULT_DUMP_ENOBUFS_AFTER
/// switch) is restarted on a fresh socket, and the listing is still exactly
/// conntrack's: complete, no duplicates.
#[test]
fn dump_restarted_after_enobufs_is_complete() {
    let Some(ns) = Netns::with_varied_table() else {
        return;
    };
    // Enough entries that the dump spans several datagrams.
    for i in 0..600u32 {
        let src = format!("10.9.{}.{}", i / 200, i % 200 + 1);
        let sport = (1000 + i).to_string();
        ns.conntrack(&[
            "-I", "-p", "udp", "-s", &src, "-d", "10.8.0.1", "--sport", &sport, "--dport", "53",
            "-t", "600",
        ]);
    }
    let ct = ns.conntrack(&["-L"]);
    let bin = ctscope_e2e::ctscope_bin();
    let cs = ctscope_e2e::run(
        std::process::Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .arg(&bin)
            .arg("list")
            .env("CTSCOPE_FAULT_DUMP_ENOBUFS_AFTER", "1"),
    );
    assert_eq!(cs.code, 0, "{}", cs.stderr);
    assert!(
        cs.stderr.contains("restarted 1 time"),
        "the restart is not reported: {}",
        cs.stderr
    );
    let a = normalised_lines(&ct);
    let b = normalised_lines(&cs);
    assert!(a.len() > 600, "only {} entries", a.len());
    if let Some(diff) = multiset_diff("conntrack -L", &a, "ctscope list (restarted)", &b) {
        panic!("{diff}");
    }
}

/// Labels named in connlabel.conf: `-o labels` prints them and `-l NAME`
/// selects (and prints) them as conntrack does, from a file with a
/// comment, a bit named twice (the first name counts) and a line that is
/// not UTF-8.
#[test]
fn labels_from_connlabel_conf() {
    let Some(ns) = Netns::new() else {
        return;
    };
    // libnetfilter_conntrack refuses a whole file with a comment after a
    // name, so comments stand on their own lines here.
    let xtables = XtablesDir::new(b"# names\n0 web\n1 db\n1 dup\n2 \xff\xfebad\n3 ops\n");
    let run = |argv: &[&str]| ns.exec_with_xtables(&xtables.conf, argv);
    // The kernel keeps labels only once a rule uses them (nf_connlabels_get).
    ns.nft(
        "table inet labels {\n  chain input {\n    type filter hook input priority 0;\n    ct label set 2\n  }\n}\n",
    );
    for entry in [
        "-p udp -s 10.7.0.1 -d 10.7.0.2 --sport 1 --dport 53 --label-add web",
        "-p udp -s 10.7.0.1 -d 10.7.0.2 --sport 2 --dport 53 --label-add db,ops",
        "-p udp -s 10.7.0.1 -d 10.7.0.2 --sport 3 --dport 53",
    ] {
        let args: Vec<&str> = entry.split_whitespace().collect();
        run(&[&["conntrack", "-I"], &args[..], &["-t", "3600"]].concat()).expect_code(0);
    }
    let mut failures = Vec::new();
    let cases: &[&[&str]] = &[
        &["-o", "labels"],
        &["-l", "web"],
        &["-l", "ops"],
        &["-l", "db", "-o", "labels"],
    ];
    for args in cases {
        let ct = run(&[&["conntrack", "-L"], *args].concat());
        let cs = run(&[&[ctscope_bin_str().as_str(), "-L"], *args].concat());
        let (want, got) = (normalised_lines(&ct), normalised_lines(&cs));
        if ct.code != 0 || want.is_empty() || !want.iter().any(|l| l.contains("labels=")) {
            failures.push(format!("conntrack -L {args:?} shows no labels:\n{ct}"));
        } else if let Some(diff) = multiset_diff("conntrack", &want, "ctscope", &got) {
            failures.push(format!("-L {args:?}:\n{diff}\n{ct}\n{cs}"));
        }
    }
    // XML names them too, as <labels><label>NAME</label>...</labels>.
    let xml_cases: &[&[&str]] = &[&["-o", "xml,labels"], &["-l", "db", "-o", "xml"]];
    let xml_lines = |out: &ctscope_e2e::Output| {
        let mut v: Vec<String> = out.lines().iter().map(|l| normalise_xml(l)).collect();
        v.sort();
        v
    };
    for args in xml_cases {
        let ct = run(&[&["conntrack", "-L"], *args].concat());
        let cs = run(&[&[ctscope_bin_str().as_str(), "-L"], *args].concat());
        if ct.code != 0 || !ct.stdout.contains("<labels><label>") {
            failures.push(format!("conntrack -L {args:?} shows no labels:\n{ct}"));
        } else if let Some(diff) =
            multiset_diff("conntrack", &xml_lines(&ct), "ctscope", &xml_lines(&cs))
        {
            failures.push(format!("-L {args:?}:\n{diff}\n{ct}\n{cs}"));
        }
    }
    // Without a connlabel.conf: one warning, as conntrack gives, and no
    // labels on the lines (not a bare `labels`), as conntrack prints them.
    std::fs::remove_file(xtables.conf.join("connlabel.conf")).expect("remove connlabel.conf");
    let ct = run(&["conntrack", "-L", "-o", "labels"]);
    let cs = run(&[ctscope_bin_str().as_str(), "-L", "-o", "labels"]);
    let warnings: Vec<&str> = cs
        .stderr
        .lines()
        .filter(|l| l.contains("connlabel.conf"))
        .collect();
    if warnings.len() != 1 || cs.code != 0 {
        failures.push(format!("no connlabel.conf: want one warning, exit 0\n{cs}"));
    }
    if let Some(diff) = multiset_diff(
        "conntrack",
        &normalised_lines(&ct),
        "ctscope",
        &normalised_lines(&cs),
    ) {
        failures.push(format!("-o labels without connlabel.conf:\n{diff}"));
    }
    report(cases.len() + xml_cases.len() + 2, &failures);
}
