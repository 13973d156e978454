//! The expectation table (`-L/-G/-D/-I/-F/-C/-S/-E expect`) and the dying
//! and unconfirmed lists, against conntrack's commands, with expectations
//! the kernel's ftp and sip helpers make in the test's namespace.

use std::{
    net::{TcpListener, TcpStream},
    time::Duration,
};

use ctscope_e2e::{
    HELPER_RULESET, Netns, Output, compare_outputs, ftp_session, multiset_diff, normalise,
    normalise_expect, normalise_xml, poll_until, report, same_exit, sip_register,
};
use nix::sys::signal::Signal;

/// A namespace whose ftp (tcp 21) and sip (udp 5060) traffic gets the
/// kernel's helpers.
fn helper_netns() -> Option<Netns> {
    let ns = Netns::new()?;
    ns.nft(HELPER_RULESET);
    Some(ns)
}

/// Stdout lines with the timeouts, times and `<when>` masked.
fn lines(out: &Output) -> Vec<String> {
    out.lines()
        .iter()
        .map(|l| normalise_expect(&normalise_xml(l)))
        .collect()
}

/// The words after conntrack's `prog vX (...): ` prefix of each stderr
/// line that has one (`1 expectations have been shown.`).
fn summaries(out: &Output) -> Vec<String> {
    out.stderr_lines()
        .iter()
        .filter_map(|l| l.split_once("): ").map(|(_, s)| s.to_string()))
        .collect()
}

/// Runs `conntrack ARGS` and `ctscope ARGS`; `Err` says how they differ
/// (exit code, stdout lines, summary lines), `Ok` is conntrack's run.
fn compare(ns: &Netns, args: &[&str]) -> Result<Output, String> {
    let ct = ns.conntrack(args);
    let cs = ns.ctscope(args);
    same_exit(&ct, &cs)?;
    if ct.code == 2 {
        return cs.one_line_error(2).map(|()| ct);
    }
    // A failure's one line is ctscope's own; a success's summary is
    // conntrack's.
    let summaries_differ = ct.code == 0 && summaries(&ct) != summaries(&cs);
    if lines(&ct) != lines(&cs) || summaries_differ {
        return Err(format!("outputs differ\n{ct}\n{cs}"));
    }
    if ct.code != 0 {
        cs.one_line_error(ct.code)?;
    }
    Ok(ct)
}

/// The connection options of `-G/-D expect` naming a tcp connection
/// `src:sport -> dst:dport` (conntrack 1.4.7 also wants the reply ports,
/// which it does not send; ctscope takes them too).
fn tcp_tuple<'a>(src: &'a str, dst: &'a str, sport: &'a str, dport: &'a str) -> Vec<&'a str> {
    vec![
        "-s",
        src,
        "-d",
        dst,
        "-p",
        "tcp",
        "--sport",
        sport,
        "--dport",
        dport,
        "--reply-port-src",
        dport,
        "--reply-port-dst",
        sport,
    ]
}

#[test]
fn listings_match_conntrack() {
    let Some(ns) = helper_netns() else {
        return;
    };
    let mut ftp4 = ftp_session(&ns, "127.0.0.2");
    ftp4.port(51210);
    let mut ftp6 = ftp_session(&ns, "::1");
    ftp6.port(51211);
    sip_register(&ns, 5062, false);
    sip_register(&ns, 5064, true);
    // The fixture made what the cases need: three IPv4 expectations (one
    // with PERMANENT,INACTIVE) and an IPv6 one, which conntrack lists only
    // with -f ipv6.
    let v4 = ns.conntrack(&["-L", "expect"]);
    let v4_lines = v4.lines();
    assert_eq!(v4_lines.len(), 3, "three IPv4 expectations\n{v4}");
    assert!(
        v4_lines
            .iter()
            .any(|l| l.contains(" PERMANENT,INACTIVE class=0 helper=sip"))
            && v4_lines
                .iter()
                .any(|l| l.contains(" PERMANENT class=0 helper=sip"))
            && v4_lines.iter().any(|l| l.contains("dport=51210 ")),
        "{v4}"
    );
    let v6 = ns.conntrack(&["-L", "expect", "-f", "ipv6"]);
    assert_eq!(v6.lines().len(), 1, "one IPv6 expectation\n{v6}");

    let cases: &[&[&str]] = &[
        &["-L", "expect"],
        &["-L", "exp"],
        &["--dump", "expect"],
        &["-L", "expect", "-o", "xml"],
        &["-L", "expect", "-o", "timestamp"],
        &["-L", "expect", "-o", "xml,timestamp"],
        &["-L", "expect", "-f", "ipv6"],
        &["-L", "expect", "-f", "ipv6", "-o", "xml"],
        &["-L", "expect", "-f", "ipv4"],
        &["-L", "expect", "-o", "save"],
        &["-L", "expect", "-o", "extended,id"],
        &["-C", "expect"],
        &["-L", "dying"],
        &["-L", "dying", "-o", "xml"],
        &["-L", "unconfirmed"],
        &["-L", "unconfirmed", "-p", "tcp"],
        &["-L", "d"],
        // Refused by both, exit 2.
        &["-L", "expectations"],
        &["-L", "expect", "-s", "127.0.0.1"],
        &["-L", "expect", "-z"],
        &["-L", "expect", "-o", "bogus"],
        &["-E", "expect", "-e", "NEW"],
        &["-E", "expect", "-p", "tcp"],
        &["-F", "expect", "-f", "ipv4"],
        &["-U", "expect", "-m", "1"],
        &["-D", "dying"],
        &["-G", "unconfirmed", "-p", "tcp"],
        &["-C", "dying"],
        &["-I", "expect", "-s", "127.0.0.1"],
        // --mask-src is a filter of -L/-D/-E/-U, not of -G or -I.
        &[
            "-G",
            "-p",
            "tcp",
            "-s",
            "127.0.0.1",
            "-d",
            "127.0.0.2",
            "--sport",
            "1",
            "--dport",
            "21",
            "--mask-src",
            "255.0.0.0",
        ],
        &[
            "-I",
            "-p",
            "udp",
            "-s",
            "10.0.0.1",
            "-d",
            "10.0.0.2",
            "--sport",
            "1",
            "--dport",
            "2",
            "-t",
            "5",
            "--mask-src",
            "255.0.0.0",
        ],
        &[
            "-I",
            "-p",
            "udp",
            "-s",
            "10.0.0.1",
            "-d",
            "10.0.0.2",
            "--sport",
            "1",
            "--dport",
            "2",
            "-t",
            "5",
            "--tuple-src",
            "10.0.0.2",
        ],
        &["-G", "expect", "-s", "127.0.0.1", "-d", "127.0.0.2"],
        &[
            "-G",
            "expect",
            "-s",
            "127.0.0.2",
            "-d",
            "127.0.0.1",
            "-p",
            "udp",
            "-o",
            "xml",
        ],
        &[
            "-D",
            "expect",
            "-s",
            "127.0.0.0/8",
            "-d",
            "127.0.0.2",
            "-p",
            "tcp",
        ],
    ];
    let mut failures = Vec::new();
    for args in cases {
        if let Err(e) = compare(&ns, args) {
            failures.push(e);
        }
    }
    // The main table by name lists what plain -L lists.
    let ct = ns.conntrack(&["-L", "conntrack"]);
    let cs = ns.ctscope(&["-L", "conntrack"]);
    if let Err(e) = compare_outputs(&ct, &cs, "shown") {
        failures.push(e);
    }
    if ct.lines().len() < 4 {
        failures.push(format!("the helpers' connections are missing\n{ct}"));
    }
    report(cases.len() + 1, &failures);
    drop((ftp4, ftp6));
}

#[test]
fn stats_have_conntracks_counters() {
    let Some(ns) = helper_netns() else {
        return;
    };
    let mut ftp = ftp_session(&ns, "127.0.0.2");
    ftp.port(51210);
    let ct = ns.conntrack(&["-S", "expect"]);
    let cs = ns.ctscope(&["-S", "expect"]);
    same_exit(&ct, &cs).unwrap_or_else(|e| panic!("{e}"));
    let keys = |out: &Output| -> Vec<Vec<String>> {
        out.lines()
            .iter()
            .map(|l| {
                l.split_whitespace()
                    .filter_map(|t| t.split_once('=').map(|(k, _)| k.to_string()))
                    .collect()
            })
            .collect()
    };
    assert!(
        !ct.lines().is_empty(),
        "conntrack -S expect shows nothing\n{ct}"
    );
    assert_eq!(keys(&ct), keys(&cs), "\n{ct}\n{cs}");
    // The ftp helper has made expectations since: the counters moved.
    let created = |out: &Output| -> u64 {
        out.lines()
            .iter()
            .flat_map(|l| {
                l.split_whitespace()
                    .filter_map(|t| t.strip_prefix("expect_create="))
                    .filter_map(|v| v.parse::<u64>().ok())
                    .collect::<Vec<_>>()
            })
            .sum()
    };
    assert_eq!(created(&ct), created(&cs), "\n{ct}\n{cs}");
    assert!(created(&cs) >= 1, "{cs}");
}

#[test]
fn events_match_conntrack() {
    let Some(ns) = helper_netns() else {
        return;
    };
    let runs: &[&[&str]] = &[&[], &["-o", "xml"], &["-o", "timestamp"]];
    let mut listeners = Vec::new();
    for extra in runs {
        let args = [&["-E", "expect"], *extra].concat();
        listeners.push((ns.spawn_conntrack(&args), ns.spawn_ctscope(&args)));
    }
    // ctscope's own: JSON, and a run that ends itself after two events.
    let mut json = ns.spawn_ctscope(&["-E", "expect", "-o", "json"]);
    let mut counted = ns.spawn_ctscope(&["-E", "expect", "--count", "2"]);
    ns.wait_for_listeners(2 * runs.len() + 2)
        .unwrap_or_else(|e| panic!("{e}"));
    // The kernel reports a connection's expectations only if the
    // connection got its event extension, which it gets when made while a
    // listener exists: so the sessions start only now.
    let mut ftp = ftp_session(&ns, "127.0.0.2");
    ftp.port(50000);
    // The ftp helper keeps one expectation: this one evicts the first.
    ftp.port(50001);
    sip_register(&ns, 5062, true);
    ns.conntrack(&["-F", "expect"]).expect_code(0);
    let mut failures = Vec::new();
    for (i, (ct, cs)) in listeners.iter_mut().enumerate() {
        // Both have printed the flush's DESTROY events before they stop.
        poll_until(Duration::from_secs(5), || {
            let n = |s: String| s.lines().filter(|l| l.contains("estroy")).count();
            n(ct.stdout_now()) >= 2 && n(cs.stdout_now()) >= 2
        });
        let ct = ct.stop(Signal::SIGINT);
        let cs = cs.stop(Signal::SIGINT);
        let events = ct
            .lines()
            .iter()
            .filter(|l| l.contains("NEW") || l.contains("new"))
            .count();
        if events < 3 {
            failures.push(format!("run {i}: too few NEW events to compare\n{ct}"));
        }
        if let Err(e) = same_exit(&ct, &cs) {
            failures.push(e);
        } else if lines(&ct) != lines(&cs) || summaries(&ct) != summaries(&cs) {
            failures.push(format!("run {i}: outputs differ\n{ct}\n{cs}"));
        }
    }
    // The JSON run saw the text run's events: same kinds, same ports.
    let text = listeners[0].0.stdout_now();
    let json = json.stop(Signal::SIGINT);
    let from_text: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| {
            let tag = l.split(']').next()?.trim().trim_start_matches('[');
            let dport = l
                .split_whitespace()
                .find_map(|t| t.strip_prefix("dport="))?;
            Some((tag.to_string(), dport.to_string()))
        })
        .collect();
    let from_json: Vec<(String, String)> = json
        .lines()
        .iter()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            Some((
                v["event"].as_str()?.to_string(),
                v["expected"]["dport"].as_u64()?.to_string(),
            ))
        })
        .collect();
    if from_text.is_empty() || from_text != from_json {
        failures.push(format!(
            "JSON events {from_json:?} vs conntrack's {from_text:?}\n{json}"
        ));
    }
    match counted.wait_timeout(Duration::from_secs(5)) {
        Some(out) if out.code == 0 && out.lines().len() == 2 => {
            if summaries(&out) != ["2 expectation events have been shown."] {
                failures.push(format!("--count 2: summary\n{out}"));
            }
        }
        Some(out) => failures.push(format!("--count 2: want 2 lines, exit 0\n{out}")),
        None => failures.push("--count 2 did not stop by itself".into()),
    }
    report(runs.len() + 2, &failures);
    drop(ftp);
}

#[test]
fn get_delete_and_flush() {
    let Some(ns) = helper_netns() else {
        return;
    };
    let mut ftp = ftp_session(&ns, "127.0.0.2");
    ftp.port(40000);
    // The server's data connection to the client's port 40000, from any
    // port: what the expectation stands for.
    let hit = tcp_tuple("127.0.0.2", "127.0.0.1", "2000", "40000");
    let miss = tcp_tuple("127.0.0.2", "127.0.0.1", "2000", "40001");
    let mut failures = Vec::new();
    let get = |t: &[&'static str]| [&["-G", "expect"], t].concat();
    match compare(&ns, &get(&hit)) {
        Ok(ct) if ct.code == 0 && ct.lines().len() == 1 => {}
        Ok(ct) => failures.push(format!("-G finds nothing to compare\n{ct}")),
        Err(e) => failures.push(e),
    }
    match compare(&ns, &get(&miss)) {
        Ok(ct) if ct.code == 1 => {}
        Ok(ct) => failures.push(format!("-G of no expectation: want exit 1\n{ct}")),
        Err(e) => failures.push(e),
    }

    // ctscope -D deletes it; a second -D fails as conntrack's does.
    let delete = |t: &[&'static str]| [&["-D", "expect"], t].concat();
    let cs = ns.ctscope(&delete(&hit));
    if cs.code != 0 || summaries(&cs) != ["1 expectations have been deleted."] {
        failures.push(format!("ctscope -D expect\n{cs}"));
    }
    let left = ns.conntrack(&["-L", "expect"]);
    if !left.lines().is_empty() {
        failures.push(format!("ctscope -D expect left it\n{left}"));
    }
    let (ct, cs) = (ns.conntrack(&delete(&hit)), ns.ctscope(&delete(&hit)));
    if ct.code != 1 || cs.code != 1 {
        failures.push(format!(
            "-D of a deleted expectation: want exit 1\n{ct}\n{cs}"
        ));
    }
    // conntrack's own -D removes the same one (it then says "0
    // expectations have been shown." and exits 1: see the README).
    ftp.port(40000);
    let ct = ns.conntrack(&delete(&hit));
    let left = ns.conntrack(&["-L", "expect"]);
    if !left.lines().is_empty() {
        failures.push(format!("conntrack -D expect left it\n{ct}\n{left}"));
    }

    // -F empties the table, and says so in conntrack's words.
    let fill = |ftp: &mut ctscope_e2e::FtpSession, port| {
        ftp.port(port);
        sip_register(&ns, port, false);
        let n = ns.conntrack(&["-L", "expect"]).lines().len();
        assert_eq!(n, 2, "the table to flush has two expectations");
    };
    fill(&mut ftp, 40002);
    let ct = ns.conntrack(&["-F", "expect"]);
    fill(&mut ftp, 40003);
    // Every family goes, as with conntrack (the kernel flushes them all).
    let mut ftp6 = ftp_session(&ns, "::1");
    ftp6.port(40004);
    let cs = ns.ctscope(&["-F", "expect"]);
    let left = ns.conntrack(&["-L", "expect"]);
    let left6 = ns.conntrack(&["-L", "expect", "-f", "ipv6"]);
    if let Err(e) = same_exit(&ct, &cs) {
        failures.push(e);
    } else if summaries(&ct) != summaries(&cs)
        || !left.lines().is_empty()
        || !left6.lines().is_empty()
    {
        failures.push(format!("-F expect\n{ct}\n{cs}\n{left}\n{left6}"));
    }
    drop(ftp6);
    report(6, &failures);
}

#[test]
fn create_makes_a_working_expectation() {
    let Some(ns) = helper_netns() else {
        return;
    };
    // A control connection with the ftp helper and no expectation yet:
    // the master.
    let ftp = ftp_session(&ns, "127.0.0.2");
    let sport = ftp.client_port().to_string();
    let master = ["-s", "127.0.0.1", "-d", "127.0.0.2", "-p", "tcp"];
    let expected = [
        "--tuple-src",
        "127.0.0.1",
        "--tuple-dst",
        "127.0.0.1",
        "--tuple-port-src",
        "0",
        "--tuple-port-dst",
        "45000",
        "--mask-src",
        "255.255.255.255",
        "--mask-dst",
        "255.255.255.255",
        "--mask-port-src",
        "0",
        "--mask-port-dst",
        "65535",
        "-t",
        "60",
    ];
    let create = |sport: &str, tuple: &[&str]| -> Vec<String> {
        [
            &["-I", "expect"],
            &master[..],
            &["--sport", sport, "--dport", "21"],
            tuple,
        ]
        .concat()
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let argv = create(&sport, &expected);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let cs = ns.ctscope(&argv);
    cs.expect_code(0);
    assert!(cs.stdout.is_empty(), "-I expect prints nothing\n{cs}");

    // conntrack lists what was asked for; ctscope lists it as conntrack.
    let listed = compare(&ns, &["-L", "expect"]).unwrap_or_else(|e| panic!("{e}"));
    let want = format!(
        "<timeout> proto=6 src=127.0.0.1 dst=127.0.0.1 sport=0 dport=45000 \
         mask-src=255.255.255.255 mask-dst=255.255.255.255 sport=0 dport=65535 \
         master-src=127.0.0.1 master-dst=127.0.0.2 sport={sport} dport=21 class=0 helper=ftp"
    );
    assert_eq!(lines(&listed), [want], "\n{listed}");

    // It works: a connection to port 45000 is taken as expected, and the
    // expectation is used up.
    let kept = ns.in_netns(|| {
        let listener = TcpListener::bind("127.0.0.1:45000").expect("listen on 45000");
        let client = TcpStream::connect("127.0.0.1:45000").expect("connect to 45000");
        let (server, _) = listener.accept().expect("accept");
        (listener, client, server)
    });
    let related = ns.conntrack(&["-L", "-p", "tcp", "--dport", "45000", "-u", "EXPECTED"]);
    assert_eq!(
        related.lines().len(),
        1,
        "the data connection is EXPECTED\n{related}"
    );
    let left = ns.conntrack(&["-L", "expect"]);
    assert!(
        left.lines().is_empty(),
        "the expectation is used up\n{left}"
    );
    drop(kept);

    // The same arguments make the same expectation as conntrack's -I
    // expect, where conntrack 1.4.7 gets it right: its tuple's protocol
    // takes the first byte of the last tuple port given (see the README),
    // which is tcp's 6 for ports 1536 to 1791. A prefix on --tuple-src is
    // the mask.
    let mut failures = Vec::new();
    let variants: [&[&str]; 2] = [
        &[
            "--tuple-src",
            "127.0.0.1",
            "--mask-src",
            "255.255.255.255",
            "--tuple-port-dst",
            "1600",
        ],
        &["--tuple-src", "127.0.0.0/8", "--tuple-port-dst", "1601"],
    ];
    for variant in variants {
        let argv: Vec<String> = create(
            &sport,
            &[
                &[
                    "--tuple-dst",
                    "127.0.0.1",
                    "--tuple-port-src",
                    "7",
                    "--mask-dst",
                    "255.255.255.255",
                    "--mask-port-src",
                    "0",
                    "--mask-port-dst",
                    "65535",
                    "-t",
                    "60",
                ],
                variant,
            ]
            .concat(),
        );
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut made = Vec::new();
        for tool in ["conntrack", "ctscope"] {
            ns.conntrack(&["-F", "expect"]).expect_code(0);
            let out = if tool == "conntrack" {
                ns.conntrack(&argv)
            } else {
                ns.ctscope(&argv)
            };
            made.push((out, lines(&ns.conntrack(&["-L", "expect"]))));
        }
        let (ct, cs) = (&made[0], &made[1]);
        if ct.0.code != 0 || cs.0.code != 0 || ct.1.len() != 1 || ct.1 != cs.1 {
            failures.push(format!(
                "-I expect {variant:?}: conntrack made {:?}, ctscope {:?}\n{}\n{}",
                ct.1, cs.1, ct.0, cs.0
            ));
        }
    }
    ns.conntrack(&["-F", "expect"]).expect_code(0);

    // Failures as conntrack's: no such master (exit 1), an option missing
    // (exit 2), a master without a helper (exit 1).
    let no_master = create("1", &expected);
    let no_mask: Vec<&str> = expected
        .iter()
        .copied()
        .filter(|a| *a != "--mask-dst")
        .collect();
    let no_mask = create(&sport, &no_mask);
    let plain = ns.in_netns(|| {
        let listener = TcpListener::bind("127.0.0.2:2222").expect("listen on 2222");
        let client = TcpStream::connect("127.0.0.2:2222").expect("connect to 2222");
        (listener, client)
    });
    let plain_port = plain
        .1
        .local_addr()
        .map(|a| a.port())
        .unwrap_or(0)
        .to_string();
    let mut no_helper = create(&plain_port, &expected);
    if let Some(i) = no_helper.iter().position(|a| a == "21") {
        no_helper[i] = "2222".into();
    }
    for (argv, code) in [(no_master, 1), (no_mask, 2), (no_helper, 1)] {
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let ct = ns.conntrack(&argv);
        let cs = ns.ctscope(&argv);
        if let Err(e) = same_exit(&ct, &cs) {
            failures.push(e);
        } else if ct.code != code {
            failures.push(format!("want exit {code}\n{ct}\n{cs}"));
        } else if let Err(e) = cs.one_line_error(code) {
            failures.push(e);
        }
    }
    report(5, &failures);
    drop((ftp, plain));
}

#[test]
fn dying_list_holds_undelivered_destroys() {
    let Some(ns) = Netns::new() else {
        return;
    };
    // A reliable listener (NETLINK_BROADCAST_SEND_ERROR) that stops
    // reading: once its small buffer is full, the kernel cannot deliver a
    // DESTROY event, and (since 6.2) keeps the entry on the dying list
    // until it can.
    let mut listener =
        ns.spawn_ctscope(&["events", "--source", "netlink", "--reliable", "-b", "4096"]);
    ns.wait_for_listeners(1).unwrap_or_else(|e| panic!("{e}"));
    listener.signal(Signal::SIGSTOP);
    for sport in 1..=60 {
        ns.insert(&format!(
            "-p udp -s 10.9.0.1 -d 10.9.0.2 --sport {sport} --dport 53"
        ));
    }
    ns.conntrack(&["-F"]).expect_code(0);
    let dying = ns.conntrack(&["-L", "dying"]);
    assert!(
        dying.lines().len() >= 40,
        "the flush left the undelivered entries dying\n{dying}"
    );
    // Lines as conntrack's (timeouts masked), as multisets: the kernel's
    // redelivery work may reorder the list between two dumps.
    let sorted = |out: &Output| {
        let mut v: Vec<String> = out
            .lines()
            .iter()
            .map(|l| normalise(&normalise_xml(l)))
            .collect();
        v.sort();
        v
    };
    let cases: &[&[&str]] = &[
        &["-L", "dying"],
        &["-L", "dying", "-o", "xml"],
        &["-L", "dying", "-o", "extended,id"],
        &["-L", "dying", "-o", "save"],
        &["-L", "dying", "-p", "udp", "--sport", "19"],
        &["-L", "unconfirmed"],
    ];
    let mut failures = Vec::new();
    for args in cases {
        let ct = ns.conntrack(args);
        let cs = ns.ctscope(args);
        if let Err(e) = same_exit(&ct, &cs) {
            failures.push(e);
        } else if let Some(d) = multiset_diff("conntrack", &sorted(&ct), "ctscope", &sorted(&cs)) {
            failures.push(format!("{args:?}: {d}"));
        } else if summaries(&ct) != summaries(&cs) {
            failures.push(format!("{args:?}: summaries differ\n{ct}\n{cs}"));
        }
    }
    // The listener reads again: the events go out and the list empties.
    listener.signal(Signal::SIGCONT);
    listener.stop(Signal::SIGINT);
    let emptied = poll_until(Duration::from_secs(5), || {
        ns.ctscope(&["-L", "dying"]).lines().is_empty()
    });
    if !emptied {
        failures.push(format!(
            "the dying list did not empty\n{}",
            ns.conntrack(&["-L", "dying"])
        ));
    }
    report(cases.len() + 1, &failures);
}

#[test]
fn expectation_events_from_ebpf_are_refused_saying_why() {
    let Some(ns) = Netns::new() else {
        return;
    };
    let out = ns.ctscope(&["-E", "expect", "--source", "ebpf", "--duration", "1"]);
    if let Err(e) = out.one_line_error(1) {
        panic!("{e}");
    }
    assert!(
        out.stderr.contains("hooks no expectation function"),
        "{out}"
    );
    // The default source takes ctnetlink's expectation events.
    let out = ns.ctscope(&["-E", "expect", "--duration", "1"]);
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stderr.contains("0 expectation events have been shown"),
        "{out}"
    );
}
