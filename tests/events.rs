//! `ctscope events` (`-E`) against `conntrack -E`: the same event lines for
//! the same changes, filters and the event mask, how it stops (`--count`,
//! `--duration`, SIGINT, SIGTERM), JSON events, a burst of 100,000 new flows,
//! and bad input.
//!
//! Every run waits until its listeners are subscribed (polling the
//! namespace's netlink socket table), makes its changes, ends them with a
//! sentinel entry and waits until every listener has printed it, so no
//! event is still on its way when the listeners are stopped.

use std::{
    collections::HashSet,
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use ctscope_e2e::{
    Background, ConntrackMax, Netns, Output, events_diff, multiset_diff, poll_until, report,
};
use nix::sys::signal::Signal;
use serde_json::Value;

/// Where the kprobe PMU would be; absent on the host this suite targets.
const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe";

/// The source address of the last change of a run, waited for.
const SENTINEL: &str = "10.9.9.9";

fn kprobes_available() -> bool {
    Path::new(KPROBE_PMU).exists()
}

/// Real traffic in which every step is an event: UDP exchanges (v4 and v6:
/// NEW, then UPDATE on the reply) and one TCP connection from the handshake
/// through data to TIME_WAIT. Runs on a thread inside the namespace.
fn traffic() {
    let wait = Some(Duration::from_secs(3));
    let mut buf = [0u8; 16];
    for (server, client) in [("127.0.0.1:4100", "127.0.0.1:0"), ("[::1]:4101", "[::1]:0")] {
        let s = UdpSocket::bind(server).unwrap_or_else(|e| panic!("bind udp {server}: {e}"));
        let c = UdpSocket::bind(client).unwrap_or_else(|e| panic!("bind udp {client}: {e}"));
        s.set_read_timeout(wait).expect("set_read_timeout");
        c.set_read_timeout(wait).expect("set_read_timeout");
        c.send_to(b"ping", server).expect("send udp");
        let (_, peer) = s.recv_from(&mut buf).expect("recv udp");
        s.send_to(b"pong", peer).expect("send udp reply");
        c.recv_from(&mut buf).expect("recv udp reply");
    }
    let listener = TcpListener::bind("127.0.0.1:7100").expect("listen tcp 127.0.0.1:7100");
    let mut client = TcpStream::connect("127.0.0.1:7100").expect("connect tcp");
    let (mut server, _) = listener.accept().expect("accept");
    client.set_read_timeout(wait).expect("set_read_timeout");
    server.set_read_timeout(wait).expect("set_read_timeout");
    client.write_all(b"hello").expect("tcp write");
    server.read_exact(&mut buf[..5]).expect("tcp read");
    server.write_all(b"world").expect("tcp write");
    client.read_exact(&mut buf[..5]).expect("tcp read");
    // Client closes first (FIN_WAIT, CLOSE_WAIT), then the server (LAST_ACK,
    // TIME_WAIT); loopback delivers in softirq, the pauses let it finish.
    drop(client);
    thread::sleep(Duration::from_millis(50));
    drop(server);
    thread::sleep(Duration::from_millis(50));
}

/// `conntrack -I` of a UDP entry from `src`, the last change of a run.
fn insert_sentinel(ns: &Netns, src: &str) {
    ns.conntrack(&[
        "-I", "-p", "udp", "-s", src, "-d", "10.9.9.8", "--sport", "9", "--dport", "9", "-t", "100",
    ])
    .expect_code(0);
}

/// The set of changes of the parity and JSON runs: real traffic, then
/// `conntrack -I`, `-U -m` and `-D` (of an inserted entry and of a real
/// flow, which has counters and a start time), then the sentinel.
fn make_changes(ns: &Netns) {
    ns.in_netns(traffic);
    ns.conntrack(&[
        "-I", "-p", "udp", "-s", "10.0.0.1", "-d", "10.0.0.2", "--sport", "1", "--dport", "2",
        "-t", "100",
    ])
    .expect_code(0);
    ns.conntrack(&[
        "-I",
        "-p",
        "tcp",
        "-s",
        "10.0.0.1",
        "-d",
        "10.0.0.2",
        "--sport",
        "3",
        "--dport",
        "4",
        "--state",
        "ESTABLISHED",
        "-t",
        "100",
    ])
    .expect_code(0);
    ns.conntrack(&["-U", "-p", "udp", "-s", "10.0.0.1", "-m", "5"])
        .expect_code(0);
    ns.conntrack(&["-D", "-p", "tcp", "-s", "10.0.0.1"])
        .expect_code(0);
    ns.conntrack(&["-D", "-p", "udp", "--orig-port-dst", "4100"])
        .expect_code(0);
    insert_sentinel(ns, SENTINEL);
}

/// Waits (up to 5 s) until every listener has printed `lines` lines that
/// contain `needle`.
fn wait_printed(listeners: &[&Background], needle: &str, lines: usize) -> Result<(), String> {
    for bg in listeners {
        let seen = |bg: &Background| {
            bg.stdout_now()
                .lines()
                .filter(|l| l.contains(needle))
                .count()
        };
        if !poll_until(Duration::from_secs(5), || seen(bg) >= lines) {
            return Err(format!(
                "`{}` printed {} of {lines} lines with {needle:?} within 5 s; stdout so far:\n{}",
                bg.command(),
                seen(bg),
                bg.stdout_now().trim_end()
            ));
        }
    }
    Ok(())
}

/// The `[NEW]`-style tag of an event line, without brackets.
fn tag(line: &str) -> &str {
    line.trim_start()
        .strip_prefix('[')
        .and_then(|l| l.split(']').next())
        .unwrap_or("")
}

/// The first value of `key=` in a line (the original direction's).
fn first_value<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|t| t.strip_prefix(key)?.strip_prefix('='))
}

/// Stderr beyond the summary: on a host without kprobes, exactly the one
/// line in which `--source auto` says it uses ctnetlink.
fn check_stderr(out: &Output) -> Result<(), String> {
    let lines = out.stderr_lines();
    let extra: Vec<&String> = lines
        .iter()
        .filter(|l| !l.contains(" flow events have been shown."))
        .collect();
    if kprobes_available() {
        return Ok(());
    }
    if extra.len() != 1 || !(extra[0].contains("eBPF") && extra[0].contains("ctnetlink")) {
        return Err(format!(
            "want one stderr line saying eBPF is unavailable and ctnetlink is used\n{out}"
        ));
    }
    Ok(())
}

/// Exit 0, no panic, and a summary whose count is the number of lines.
fn check_summary(out: &Output) -> Result<(), String> {
    if out.code != 0 || out.stderr.contains("panicked") {
        return Err(format!("want exit 0 without a panic\n{out}"));
    }
    let lines = out.lines().len() as u64;
    match out.events_shown() {
        Some(n) if n == lines => Ok(()),
        other => Err(format!(
            "summary says {other:?} flow events, stdout has {lines} lines\n{out}"
        )),
    }
}

#[test]
fn parity_with_conntrack() {
    let Some(ns) = Netns::new() else {
        return;
    };
    let formats: [&[&str]; 2] = [&["-o", "extended"], &[]];
    let mut runs = Vec::new();
    for format in formats {
        let label = if format.is_empty() {
            "(plain)".to_string()
        } else {
            format.join(" ")
        };
        let (cs, ct) = ns.spawn_events(format);
        runs.push((label, cs, ct));
    }
    ns.wait_for_listeners(2 * runs.len())
        .unwrap_or_else(|e| panic!("{e}"));
    make_changes(&ns);
    let all: Vec<&Background> = runs.iter().flat_map(|(_, cs, ct)| [cs, ct]).collect();
    wait_printed(&all, &format!("src={SENTINEL} "), 1).unwrap_or_else(|e| panic!("{e}"));

    let mut failures = Vec::new();
    for (format, mut cs, mut ct) in runs {
        let cs = cs.stop(Signal::SIGINT);
        let ct = ct.stop(Signal::SIGINT);
        let lines = ct.lines();
        // The test's own check: the changes gave what they are meant to.
        for want in [
            "[NEW]",
            "[UPDATE]",
            "[DESTROY]",
            "[USERSPACE] portid=",
            "SYN_SENT",
            "SYN_RECV",
            "ESTABLISHED",
            "FIN_WAIT",
            "CLOSE_WAIT",
            "LAST_ACK",
            "TIME_WAIT",
            "src=::1",
            "mark=5",
        ] {
            assert!(
                lines.iter().any(|l| l.contains(want)),
                "conntrack -E {format} shows no {want:?}: the test's changes did not happen\n{ct}"
            );
        }
        if let Err(e) = check_summary(&cs).and_then(|()| check_stderr(&cs)) {
            failures.push(format!("ctscope events {format}: {e}"));
        }
        if ct.events_shown() != Some(lines.len() as u64) {
            failures.push(format!(
                "conntrack -E {format}: summary and lines differ\n{ct}"
            ));
        }
        match events_diff(&ct, &cs) {
            Some(d) => failures.push(d),
            None => eprintln!(
                "events {format}: {} lines, the same as conntrack -E's",
                lines.len()
            ),
        }
    }
    report(formats.len(), &failures);
}

/// One filter case: the arguments, what every line must satisfy, and how
/// many lines of the sentinel flow it shows.
struct FilterCase {
    args: &'static [&'static str],
    holds: fn(&str) -> bool,
    sentinel_lines: usize,
}

#[test]
fn filters_and_event_mask() {
    let Some(ns) = Netns::new() else {
        return;
    };
    let cases = [
        FilterCase {
            args: &["-e", "NEW"],
            holds: |l| tag(l) == "NEW",
            sentinel_lines: 1,
        },
        FilterCase {
            args: &["-p", "udp"],
            holds: |l| l.split_whitespace().nth(1) == Some("udp"),
            sentinel_lines: 2,
        },
        FilterCase {
            args: &["-e", "DESTROY", "-s", "127.0.0.0/8"],
            holds: |l| {
                tag(l) == "DESTROY" && first_value(l, "src").is_some_and(|s| s.starts_with("127."))
            },
            sentinel_lines: 1,
        },
    ];
    let mut runs = Vec::new();
    for case in &cases {
        let (cs, ct) = ns.spawn_events(case.args);
        runs.push((case, cs, ct));
    }
    ns.wait_for_listeners(2 * runs.len())
        .unwrap_or_else(|e| panic!("{e}"));
    ns.in_netns(traffic);
    let udp: &[&str] = &["-p", "udp", "--sport", "1"];
    let tcp: &[&str] = &["-p", "tcp", "--sport", "3", "--state", "ESTABLISHED"];
    for proto in [udp, tcp] {
        let addrs = [
            "-s", "10.0.0.1", "-d", "10.0.0.2", "--dport", "2", "-t", "100",
        ];
        ns.conntrack(&[&["-I"], proto, &addrs].concat())
            .expect_code(0);
    }
    // Everything goes: DESTROY events of 127.x, ::1 and 10.x flows.
    ns.conntrack(&["-D"]).expect_code(0);
    // The sentinel, inside 127.0.0.0/8: a NEW then a DESTROY.
    ns.conntrack(&[
        "-I",
        "-p",
        "udp",
        "-s",
        "127.9.9.9",
        "-d",
        "127.9.9.8",
        "--sport",
        "9",
        "--dport",
        "9",
        "-t",
        "100",
    ])
    .expect_code(0);
    ns.conntrack(&["-D", "-s", "127.9.9.9"]).expect_code(0);
    for (case, cs, ct) in &runs {
        wait_printed(&[cs, ct], "src=127.9.9.9 ", case.sentinel_lines)
            .unwrap_or_else(|e| panic!("{}: {e}", case.args.join(" ")));
    }

    let mut failures = Vec::new();
    for (case, mut cs, mut ct) in runs {
        let args = case.args.join(" ");
        let cs = cs.stop(Signal::SIGINT);
        let ct = ct.stop(Signal::SIGINT);
        let lines = cs.lines();
        if lines.is_empty() {
            failures.push(format!("ctscope events {args}: no events\n{cs}"));
        }
        let wrong: Vec<&String> = lines.iter().filter(|l| !(case.holds)(l)).collect();
        if !wrong.is_empty() {
            failures.push(format!(
                "ctscope events {args}: lines the filter should have left out:\n{}",
                wrong
                    .iter()
                    .map(|l| format!("  {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ));
        }
        if let Err(e) = check_summary(&cs) {
            failures.push(format!("ctscope events {args}: {e}"));
        }
        if let Some(d) = events_diff(&ct, &cs) {
            failures.push(d);
        }
    }
    report(cases.len(), &failures);
}

/// `conntrack -I` of `n` UDP entries 10.0.0.1:1..=n -> 10.0.0.2:2.
fn insert_entries(ns: &Netns, n: u16) {
    for sport in 1..=n {
        ns.conntrack(&[
            "-I",
            "-p",
            "udp",
            "-s",
            "10.0.0.1",
            "-d",
            "10.0.0.2",
            "--sport",
            &sport.to_string(),
            "--dport",
            "2",
            "-t",
            "100",
        ])
        .expect_code(0);
    }
}

#[test]
fn count_stops_after_n_events() {
    let Some(ns) = Netns::new() else {
        return;
    };
    let mut cs = ns.spawn_ctscope(&["events", "--count", "3"]);
    ns.wait_for_listeners(1).unwrap_or_else(|e| panic!("{e}"));
    insert_entries(&ns, 5);
    let Some(out) = cs.wait_timeout(Duration::from_secs(5)) else {
        let out = cs.stop(Signal::SIGKILL);
        panic!("events --count 3 still runs 5 s after 5 events\n{out}");
    };
    check_summary(&out).unwrap_or_else(|e| panic!("{e}"));
    let lines = out.lines();
    let sports: Vec<Option<&str>> = lines.iter().map(|l| first_value(l, "sport")).collect();
    assert!(
        lines.iter().all(|l| tag(l) == "NEW") && sports == [Some("1"), Some("2"), Some("3")],
        "want the NEW events of the first 3 entries, in order\n{out}"
    );
}

#[test]
fn duration_stops_by_itself() {
    let Some(ns) = Netns::new() else {
        return;
    };
    let mut cs = ns.spawn_ctscope(&["events", "--duration", "1"]);
    let Some(out) = cs.wait_timeout(Duration::from_secs(5)) else {
        let out = cs.stop(Signal::SIGKILL);
        panic!("events --duration 1 still runs after 5 s\n{out}");
    };
    let took = cs.elapsed();
    check_summary(&out).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        (Duration::from_secs(1)..=Duration::from_secs(3)).contains(&took),
        "events --duration 1 took {took:?}\n{out}"
    );
}

#[test]
fn sigterm_prints_summary() {
    let Some(ns) = Netns::new() else {
        return;
    };
    let mut cs = ns.spawn_ctscope(&["events"]);
    ns.wait_for_listeners(1).unwrap_or_else(|e| panic!("{e}"));
    insert_entries(&ns, 2);
    wait_printed(&[&cs], "sport=2 ", 1).unwrap_or_else(|e| panic!("{e}"));
    assert!(cs.is_running(), "ctscope events exited before SIGTERM");
    let out = cs.stop(Signal::SIGTERM);
    check_summary(&out).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.lines().len(), 2, "want 2 events\n{out}");
}

/// What a text event line and a JSON event share: event, protocol and the
/// original tuple.
fn text_key(line: &str) -> String {
    let proto = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let v = |k| first_value(line, k).unwrap_or("-");
    format!(
        "{} {proto} {} {} {} {}",
        tag(line),
        v("src"),
        v("dst"),
        v("sport"),
        v("dport")
    )
}

fn json_key(v: &Value) -> String {
    let s = |x: &Value| match x {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => "-".to_string(),
    };
    let orig = &v["orig"];
    format!(
        "{} {} {} {} {} {}",
        s(&v["event"]),
        s(&v["proto"]),
        s(&orig["src"]),
        s(&orig["dst"]),
        s(&orig["sport"]),
        s(&orig["dport"])
    )
}

#[test]
fn json_matches_text() {
    let Some(ns) = Netns::new() else {
        return;
    };
    let mut json = ns.spawn_ctscope(&["events", "-o", "json"]);
    let mut text = ns.spawn_ctscope(&["events"]);
    ns.wait_for_listeners(2).unwrap_or_else(|e| panic!("{e}"));
    make_changes(&ns);
    wait_printed(&[&text], &format!("src={SENTINEL} "), 1).unwrap_or_else(|e| panic!("{e}"));
    wait_printed(&[&json], &format!("\"src\":\"{SENTINEL}\""), 1).unwrap_or_else(|e| panic!("{e}"));
    let json = json.stop(Signal::SIGINT);
    let text = text.stop(Signal::SIGINT);
    check_summary(&json).unwrap_or_else(|e| panic!("json: {e}"));
    check_summary(&text).unwrap_or_else(|e| panic!("text: {e}"));

    let now_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    let mut failures = Vec::new();
    let mut json_keys = Vec::new();
    for line in json.lines() {
        let v: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                failures.push(format!("not JSON ({e}): {line}"));
                continue;
            }
        };
        let event_ok = matches!(v["event"].as_str(), Some("NEW" | "UPDATE" | "DESTROY"));
        let time_ok = v["time_ns"]
            .as_u64()
            .is_some_and(|t| now_ns.abs_diff(u128::from(t)) < 60_000_000_000);
        let orig_ok = v["orig"]["src"].is_string() && v["orig"]["dst"].is_string();
        if !(event_ok && time_ok && orig_ok && v["source"] == "netlink" && v["proto"].is_string()) {
            failures.push(format!(
                "want event NEW|UPDATE|DESTROY, time_ns within 60 s of now, source \"netlink\", \
                 proto and orig src/dst: {line}"
            ));
        }
        json_keys.push(json_key(&v));
    }
    json_keys.sort();
    let mut text_keys: Vec<String> = text.lines().iter().map(|l| text_key(l)).collect();
    text_keys.sort();
    if let Some(d) = multiset_diff("text", &text_keys, "json", &json_keys) {
        failures.push(format!("event and orig tuple differ: {d}"));
    }
    report(json.lines().len(), &failures);
}

/// The burst's size, and its sources: 127.77.0.1 to 127.77.0.16.
const BURST_FLOWS: u64 = 100_000;
const BURST_SRC_BASE: &str = "127.77.0.1";
const BURST_SRC_PREFIX: &str = "127.77.0.";

/// The flow generator: `CTCHURN_BIN`, else the workspace's release (or
/// debug) build of `xtask --bin ctchurn`.
fn ctchurn_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CTCHURN_BIN") {
        return Some(PathBuf::from(p));
    }
    let target = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()?
        .join("target");
    ["release", "debug"]
        .iter()
        .map(|profile| target.join(profile).join("ctchurn"))
        .find(|p| p.is_file())
}

/// Runs the generator in `ns`: flows, seconds, and what made them.
fn generate_burst(ns: &Netns) -> (u64, f64, String) {
    let Some(bin) = ctchurn_bin() else {
        let (flows, took) = ns.in_netns(|| ctscope_e2e::udp_flows(BURST_FLOWS));
        return (flows, took.as_secs_f64(), "a sendto loop".to_string());
    };
    let bin = bin.to_str().expect("utf-8 path");
    let out = ns.exec(&[
        bin,
        "--count",
        &BURST_FLOWS.to_string(),
        "--src-base",
        BURST_SRC_BASE,
        "--src-addrs",
        "16",
    ]);
    out.expect_code(0);
    // "ctchurn: N flows in S s (R flows/s)"
    let figures = out
        .stderr
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix("ctchurn: ")?;
            let (flows, rest) = rest.split_once(" flows in ")?;
            let (secs, _) = rest.split_once(" s ")?;
            Some((flows.parse().ok()?, secs.parse().ok()?))
        })
        .unwrap_or_else(|| panic!("no figures from ctchurn\n{out}"));
    (figures.0, figures.1, bin.to_string())
}

/// Lines in a file so far.
fn count_lines(path: &Path) -> usize {
    let mut n = 0;
    if let Ok(file) = File::open(path) {
        let mut reader = BufReader::with_capacity(1 << 20, file);
        loop {
            let chunk = match reader.fill_buf() {
                Ok([]) | Err(_) => break,
                Ok(chunk) => chunk,
            };
            n += chunk.iter().filter(|&&b| b == b'\n').count();
            let len = chunk.len();
            reader.consume(len);
        }
    }
    n
}

/// Waits until `path` has `want` lines or stops growing for `quiet`
/// (at most `limit`); its line count then.
fn wait_drained(path: &Path, want: usize, quiet: Duration, limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    let (mut last, mut since) = (count_lines(path), Instant::now());
    while last < want && since.elapsed() < quiet && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
        let n = count_lines(path);
        if n != last {
            (last, since) = (n, Instant::now());
        }
    }
    last
}

/// Distinct burst flows among ctscope's JSON NEW events.
fn json_burst_flows(path: &Path) -> usize {
    let file = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut tuples = HashSet::new();
    for line in BufReader::new(file).lines().map_while(Result::ok) {
        if !line.contains("\"event\":\"NEW\"") || !line.contains("\"proto\":\"udp\"") {
            continue;
        }
        // Parsing only the orig object keeps this quick in a debug build.
        let orig = line
            .split_once("\"orig\":")
            .and_then(|(_, rest)| rest.split_once(",\"reply\":"))
            .map_or(line.as_str(), |(orig, _)| orig);
        let Ok(v) = serde_json::from_str::<Value>(orig) else {
            continue;
        };
        let v = if v.get("orig").is_some() {
            &v["orig"]
        } else {
            &v
        };
        if let (Some(src), Some(sport), Some(dport)) =
            (v["src"].as_str(), v["sport"].as_u64(), v["dport"].as_u64())
            && src.starts_with(BURST_SRC_PREFIX)
        {
            tuples.insert((src.to_string(), sport, dport));
        }
    }
    tuples.len()
}

/// Burst flows among `conntrack -E -e NEW`'s lines.
fn text_burst_flows(path: &Path) -> usize {
    let file = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter(|l| first_value(l, "src").is_some_and(|s| s.starts_with(BURST_SRC_PREFIX)))
        .count()
}

#[test]
fn burst_of_new_flows() {
    let Some(ns) = Netns::new() else {
        return;
    };
    // Room for this burst and whatever else runs on the machine.
    let _max = ConntrackMax::at_least(4 * BURST_FLOWS);
    let mut cs = ns.spawn_ctscope(&["events", "-e", "NEW", "-o", "json"]);
    let mut ct = ns.spawn_conntrack(&["-E", "-e", "NEW"]);
    ns.wait_for_listeners(2).unwrap_or_else(|e| panic!("{e}"));

    let (flows, secs, generator) = generate_burst(&ns);
    let flows_usize = usize::try_from(flows).expect("flows fit in usize");
    let in_table: u64 = ns.conntrack(&["-C"]).stdout.trim().parse().unwrap_or(0);
    assert!(
        in_table >= flows,
        "{generator} says {flows} flows, but the table holds {in_table} entries"
    );

    // ctscope may still be working through its receive buffer.
    let printed = wait_drained(
        cs.stdout_path(),
        flows_usize,
        Duration::from_secs(3),
        Duration::from_secs(30),
    );
    let alive = cs.is_running();
    wait_drained(
        ct.stdout_path(),
        flows_usize,
        Duration::from_millis(300),
        Duration::from_secs(5),
    );
    let cs_out = cs.stop(Signal::SIGINT);
    let ct_out = ct.stop(Signal::SIGINT);
    assert!(
        alive,
        "ctscope events exited during the burst (after {printed} lines)\n--- stderr ---\n{}",
        cs_out.stderr.trim_end()
    );

    let shown = json_burst_flows(cs.stdout_path());
    let ct_shown = text_burst_flows(ct.stdout_path());
    let pct = |n: usize| 100.0 * n as f64 / flows as f64;
    eprintln!(
        "burst: {flows} new UDP flows in {secs:.3} s ({:.0} flows/s) by {generator}; \
         ctscope events showed {shown} ({:.2} %), conntrack -E showed {ct_shown} ({:.2} %, \
         {} ENOBUFS warnings, exit {})",
        flows as f64 / secs,
        pct(shown),
        pct(ct_shown),
        ct_out.stderr.matches("ENOBUFS").count(),
        ct_out.code
    );

    assert_eq!(
        cs_out.code,
        0,
        "ctscope events: exit {}\n--- stderr ---\n{}",
        cs_out.code,
        cs_out.stderr.trim_end()
    );
    assert!(
        !cs_out.stderr.contains("panicked"),
        "ctscope panicked\n{}",
        cs_out.stderr
    );
    assert_eq!(
        cs_out.events_shown(),
        Some(count_lines(cs.stdout_path()) as u64),
        "the summary's count is not the number of lines\n--- stderr ---\n{}",
        cs_out.stderr.trim_end()
    );
    assert!(
        shown as u64 * 1000 >= flows * 999,
        "ctscope showed {shown} of {flows} flows (< 99.9 %)\n--- stderr ---\n{}",
        cs_out.stderr.trim_end()
    );
    // A loss is said, and said as what it is.
    let loss_lines: Vec<&str> = cs_out
        .stderr
        .lines()
        .filter(|l| l.contains("lost") || l.contains("dropped") || l.contains("overrun"))
        .collect();
    assert!(
        loss_lines.iter().all(|l| l.contains("ENOBUFS")),
        "a loss reported without naming it (ENOBUFS):\n{}",
        cs_out.stderr.trim_end()
    );
    assert!(
        shown == flows_usize || !loss_lines.is_empty(),
        "ctscope showed {shown} of {flows} flows and reported no loss\n--- stderr ---\n{}",
        cs_out.stderr.trim_end()
    );
    assert!(
        ct_shown <= shown,
        "conntrack -E showed more flows ({ct_shown}) than ctscope ({shown})"
    );
}

/// Bad input: one stderr line, nothing on stdout, the right exit code, and
/// no waiting for events.
#[test]
fn bad_input() {
    let Some(ns) = Netns::new() else {
        return;
    };
    let mut cases: Vec<(&[&str], i32, &str)> = vec![
        (&["events", "-e", "OPEN"], 2, "OPEN"),
        (&["events", "--ring-size", "1000"], 2, "1000"),
        (&["events", "--ring-size", "0"], 2, "--ring-size"),
        (&["events", "--count", "x"], 2, "--count"),
        (
            &["events", "--all-netns", "--source", "netlink"],
            2,
            "--all-netns",
        ),
    ];
    if kprobes_available() {
        eprintln!("{KPROBE_PMU} exists: `events --source ebpf` may attach here; not checked");
    } else {
        cases.push((&["events", "--source", "ebpf"], 1, "kprobes"));
    }
    let mut failures = Vec::new();
    for (args, code, names) in &cases {
        let mut bg = ns.spawn_ctscope(args);
        let Some(out) = bg.wait_timeout(Duration::from_secs(5)) else {
            let out = bg.stop(Signal::SIGKILL);
            failures.push(format!("still running after 5 s\n{out}"));
            continue;
        };
        let named = out
            .stderr_lines()
            .first()
            .is_some_and(|l| l.contains(names));
        if out.one_line_error(*code).is_err() || !named {
            failures.push(format!(
                "want exit {code}, one stderr line naming {names:?}, empty stdout\n{out}"
            ));
        }
    }
    report(cases.len(), &failures);
}
