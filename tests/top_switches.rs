//! iptstate's switches in `ctscope top`: `--once` against `iptstate -1`
//! with the same switches on the same table (-L, -f, -i, -t, -l), and the
//! keys on the live screen in tmux (t, L, f, i, l, c, m, R).

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use ctscope_e2e::{Netns, Output, Screen, Tmux, ctscope_bin, multiset_diff, report};

use super::{Once, SHORT, iptstate_rows, parse_once};

/// Flows for every switch: DNS over UDP and TCP (hidden by -L) and SCTP to
/// port 53 (not: iptstate knows ports of TCP and UDP only), flows from
/// 127.0.0.1 and ::1 (hidden by -f) and from 127.0.0.2 and to 127.0.0.1
/// (not), ICMP, GRE (an "Other" of the totals) and IPv6.
const SWITCHES_TABLE: &[&str] = &[
    "-p tcp -s 10.5.0.1 -d 10.6.0.1 --sport 40001 --dport 22 --state ESTABLISHED -u SEEN_REPLY,ASSURED",
    "-p udp -s 10.5.0.4 -d 10.6.0.3 --sport 5353 --dport 53",
    "-p tcp -s 10.5.0.7 -d 10.6.0.3 --sport 5354 --dport 53 --state ESTABLISHED",
    "-p sctp -s 10.5.0.8 -d 10.6.0.8 --sport 1 --dport 53 --state ESTABLISHED --orig-vtag 1 --reply-vtag 2",
    "-p udp -s 10.5.0.9 -d 127.0.0.1 --sport 5002 --dport 6000",
    "-p gre -s 10.5.0.10 -d 10.6.0.10 --srckey 1 --dstkey 2",
    "-p icmp -s 10.5.0.6 -d 10.6.0.4 --icmp-type 8 --icmp-code 0 --icmp-id 5",
    "-p udp -s 127.0.0.1 -d 127.0.0.1 --sport 5000 --dport 6000",
    "-p udp -s 127.0.0.2 -d 127.0.0.1 --sport 5001 --dport 6000",
    "-p udp -s ::1 -d ::1 --sport 5003 --dport 6001",
    "-p tcp -s 2001:db8::5 -d 2001:db8::6 --sport 40004 --dport 8080 --state ESTABLISHED",
];

fn with_switches_table() -> Option<Netns> {
    let ns = Netns::new()?;
    for e in SWITCHES_TABLE {
        ns.insert(e);
    }
    Some(ns)
}

/// The names of the table's hosts for `--lookup`, in the files `ip netns
/// exec` mounts over /etc for one namespace (/etc/netns/NAME/): a hosts
/// file, and an nsswitch.conf that looks names up in files only, so no DNS
/// query is made at all (none leaves the namespace, and none adds a
/// conntrack entry to the table under test); a resolv.conf naming the
/// namespace's own loopback besides. Removed on drop.
struct NetnsEtc {
    dir: PathBuf,
}

impl NetnsEtc {
    fn new(ns: &Netns, hosts: &str) -> Self {
        let dir = Path::new("/etc/netns").join(ns.name());
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        fs::write(dir.join("hosts"), hosts).expect("write the namespace's hosts");
        fs::write(
            dir.join("nsswitch.conf"),
            "passwd: files\ngroup: files\nshadow: files\nhosts: files\nnetworks: files\n\
             protocols: files\nservices: files\nethers: files\nrpc: files\n",
        )
        .expect("write the namespace's nsswitch.conf");
        fs::write(
            dir.join("resolv.conf"),
            "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
        )
        .expect("write the namespace's resolv.conf");
        Self { dir }
    }
}

impl Drop for NetnsEtc {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
        // Only when no other test's namespace has files there.
        let _ = fs::remove_dir("/etc/netns");
    }
}

const HOSTS: &str = "10.5.0.1 client.v4.test\n10.6.0.1 server.v4.test\n\
                     2001:db8::5 client.v6.test\n2001:db8::6 server.v6.test\n";

/// `iptstate -1 ARGS` in `ns` for each of `runs`, one after the other in
/// one tmux pane (without a terminal, iptstate 2.2.7 pads its lines with
/// gigabytes of spaces): the lines of each run.
fn iptstate_runs(ns: &Netns, runs: &[Vec<&str>]) -> Vec<Vec<String>> {
    let script: Vec<String> = runs
        .iter()
        .enumerate()
        .map(|(i, args)| {
            format!(
                "echo RUN{i}; ip netns exec {} iptstate -1 {}; echo END{i}=$?",
                ns.name(),
                args.join(" ")
            )
        })
        .collect();
    let tmux = Tmux::start(
        &format!("{}; echo ALLDONE; sleep 60", script.join("; ")),
        250,
    );
    let (done, screen) = tmux.wait_all(Duration::from_secs(60), |s| s.has_line_starting("ALLDONE"));
    assert!(done, "iptstate -1 did not finish\n{screen}");
    (0..runs.len())
        .map(|i| {
            let at = |prefix: &str| {
                screen
                    .lines
                    .iter()
                    .position(|l| l.starts_with(prefix))
                    .unwrap_or_else(|| panic!("no {prefix} line\n{screen}"))
            };
            let (start, end) = (at(&format!("RUN{i}")), at(&format!("END{i}=")));
            assert_eq!(
                screen.lines[end],
                format!("END{i}=0"),
                "iptstate -1 {:?} failed\n{screen}",
                runs[i]
            );
            screen.lines[start + 1..end].to_vec()
        })
        .collect()
}

/// `ctscope top --once ARGS` in `ns`: its totals line, if any, and the
/// rest parsed.
fn once_with_totals(ns: &Netns, args: &[&str]) -> (Option<String>, Once) {
    let mut out: Output = ns.ctscope(&[&["top", "--once"], args].concat());
    out.assert_no_panic();
    let mut lines: Vec<&str> = out.stdout.lines().collect();
    let totals = (lines
        .get(1)
        .is_some_and(|l| l.starts_with("Total States: ")))
    .then(|| lines.remove(1).to_string());
    let rest = lines.iter().map(|l| format!("{l}\n")).collect::<String>();
    out.stdout = rest;
    let once = parse_once(&out).unwrap_or_else(|e| panic!("{e}"));
    (totals, once)
}

/// ctscope's rows as [`iptstate_rows`] spells them: IPv6 endpoints without
/// brackets, and for protocols other than TCP, UDP and ICMP no ports and
/// no state (iptstate shows neither for them).
fn as_iptstate(once: &Once) -> Vec<String> {
    let mut rows: Vec<String> = once
        .rows
        .iter()
        .map(|r| {
            let cell = |t: &str| Once::cell(r, t);
            let proto = cell("Prt");
            let plain = matches!(proto, "tcp" | "udp" | "icmp");
            let endpoint = |s: &str| {
                let s = s.replacen('[', "", 1).replacen("]:", ":", 1);
                match s.rsplit_once(':') {
                    Some((a, _)) if !plain && a.parse::<std::net::Ipv4Addr>().is_ok() => {
                        a.to_string()
                    }
                    _ => s,
                }
            };
            let state = if plain { cell("State") } else { "" };
            format!(
                "{} {} {proto} {state}",
                endpoint(cell("Source")),
                endpoint(cell("Destination"))
            )
        })
        .collect();
    rows.sort();
    rows
}

/// The "Total States:" line of an iptstate run.
fn totals_line(lines: &[String]) -> Option<&str> {
    lines
        .iter()
        .map(String::as_str)
        .find(|l| l.starts_with("Total States: "))
}

#[test]
fn once_switches_match_iptstate() {
    let Some(ns) = with_switches_table() else {
        return;
    };
    // (iptstate's switches, ctscope's), each with the totals line.
    let cases: &[(&[&str], &[&str])] = &[
        (&[], &[]),
        (&["-L"], &["--no-dns"]),
        (&["-f"], &["--no-loopback"]),
        (
            &["-i", "-s", "10.5.0.0/16"],
            &["--invert-filters", "-s", "10.5.0.0/16"],
        ),
        (
            &["-i", "-s", "10.5.0.0/16", "-d", "10.6.0.3"],
            &["-i", "-s", "10.5.0.0/16", "-d", "10.6.0.3"],
        ),
        (
            &["-s", "10.5.0.0/16", "-d", "10.6.0.3"],
            &["-s", "10.5.0.0/16", "-d", "10.6.0.3"],
        ),
        (
            &["-i", "-d", "127.0.0.1", "-L", "-f"],
            &["-i", "-d", "127.0.0.1", "--no-dns", "--no-loopback"],
        ),
    ];
    let runs: Vec<Vec<&str>> = cases
        .iter()
        .map(|(ipt, _)| [&["-t"][..], ipt].concat())
        .collect();
    let ipt_runs = iptstate_runs(&ns, &runs);
    let mut failures = Vec::new();
    for ((ipt_args, cs_args), ipt_lines) in cases.iter().zip(&ipt_runs) {
        let (totals, once) = once_with_totals(&ns, &[&["--totals"], *cs_args].concat());
        let want_totals = totals_line(ipt_lines);
        if want_totals.is_none() || totals.as_deref() != want_totals {
            failures.push(format!(
                "iptstate -1 -t {ipt_args:?}: {want_totals:?}; ctscope top --once --totals \
                 {cs_args:?}: {totals:?}"
            ));
        }
        let mut want = match iptstate_rows(ipt_lines) {
            Ok(rows) => rows,
            Err(e) => {
                failures.push(format!("iptstate -1 -t {ipt_args:?}: {e}"));
                continue;
            }
        };
        want.sort();
        let got = as_iptstate(&once);
        if let Some(d) = multiset_diff(
            &format!("iptstate -1 {ipt_args:?}"),
            &want,
            &format!("ctscope top --once {cs_args:?}"),
            &got,
        ) {
            failures.push(d);
        }
        if once.shown != once.rows.len() {
            failures.push(format!("{cs_args:?}: header {:?}", once.header));
        }
    }
    report(2 * cases.len(), &failures);
}

/// `--lookup` names hosts from the namespace's hosts file and ports from
/// /etc/services, and hides DNS flows, as `iptstate -l` does. iptstate
/// 2.2.7 names no IPv4 address (it asks gethostbyaddr with the length of
/// an IPv6 address): ctscope does, so those rows are compared with the
/// name put back to its address.
#[test]
fn once_lookup_matches_iptstate() {
    let Some(ns) = with_switches_table() else {
        return;
    };
    let _etc = NetnsEtc::new(&ns, HOSTS);
    let ipt = iptstate_runs(&ns, &[vec!["-t", "-l"]]).remove(0);
    let started = Instant::now();
    let (totals, once) = once_with_totals(&ns, &["--totals", "--lookup"]);
    let took = started.elapsed();
    let mut failures = Vec::new();
    if totals.as_deref() != totals_line(&ipt) {
        failures.push(format!(
            "totals: iptstate -1 -t -l {:?}, ctscope {totals:?}",
            totals_line(&ipt)
        ));
    }
    let got = as_iptstate(&once);
    for named in [
        "client.v4.test:40001 server.v4.test:ssh tcp ESTABLISHED",
        "client.v6.test:40004 server.v6.test:http-alt tcp ESTABLISHED",
    ] {
        if !got.iter().any(|r| r == named) {
            failures.push(format!("no row {named:?} in {got:#?}"));
        }
    }
    let mut got: Vec<String> = got
        .iter()
        .map(|r| {
            r.replace("client.v4.test", "10.5.0.1")
                .replace("server.v4.test", "10.6.0.1")
        })
        .collect();
    got.sort();
    match iptstate_rows(&ipt) {
        Ok(mut want) => {
            want.sort();
            if let Some(d) = multiset_diff("iptstate -1 -l", &want, "ctscope --lookup", &got) {
                failures.push(d);
            }
        }
        Err(e) => failures.push(e),
    }
    // Unnamed addresses fail at once here (files only): the snapshot did
    // not wait out its 5 s for them.
    if took > Duration::from_secs(4) {
        failures.push(format!("--once --lookup took {took:?}"));
    }
    report(4, &failures);
}

/// `ip netns exec NS ctscope top ARGS` in a pane (so the namespace's
/// /etc/netns files apply), then its exit code.
fn pane_in_netns(ns: &Netns, args: &[&str]) -> String {
    format!(
        "ip netns exec {} {} top {}; echo EXITED=$?; sleep 60",
        ns.name(),
        ctscope_bin().display(),
        args.join(" ")
    )
}

/// Starts top on [`SWITCHES_TABLE`] with `args`, `width` columns wide, and
/// waits for its rows.
#[track_caller]
fn start(ns: &Netns, args: &[&str], width: u16, rows: usize) -> Tmux {
    let tmux = Tmux::start(&pane_in_netns(ns, args), width);
    let (up, screen) = tmux.wait(Duration::from_secs(5), |s| {
        s.header().starts_with("ctscope top -- ") && s.rows().len() == rows
    });
    assert!(up, "the screen did not come up with {rows} rows\n{screen}");
    tmux
}

/// The first cells (Source) of the rows, sorted.
fn sources(s: &Screen) -> Vec<String> {
    let mut v: Vec<String> = s.rows().iter().map(|r| r[0].clone()).collect();
    v.sort();
    v
}

/// Applies one SGR sequence's parameters to the foreground colour.
fn apply_sgr(fg: &mut Option<String>, params: &str) {
    let p: Vec<&str> = params.split(';').collect();
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            "" | "0" | "39" => *fg = None,
            "38" if p.get(i + 1) == Some(&"5") => {
                *fg = p.get(i + 2).map(|c| (*c).to_string());
                i += 2;
            }
            "48" if p.get(i + 1) == Some(&"5") => i += 2,
            x if x.len() == 2 && x.starts_with('3') => *fg = Some(x[1..].to_string()),
            _ => {}
        }
        i += 1;
    }
}

/// The foreground colour (N of `38;5;N` as tmux writes it; `None` for
/// the terminal's default) where the row starting with `start` begins,
/// following the escape sequences from the top of the screen; `None` if
/// there is no such row.
fn row_fg(s: &Screen, start: &str) -> Option<Option<String>> {
    let mut fg: Option<String> = None;
    for line in &s.lines {
        let mut plain = String::new();
        let mut at_start = None;
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                if chars.peek() == Some(&'[') {
                    chars.next();
                }
                let mut params = String::new();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        if d == 'm' {
                            apply_sgr(&mut fg, &params);
                        }
                        break;
                    }
                    params.push(d);
                }
                continue;
            }
            if at_start.is_none() {
                at_start = Some(fg.clone());
            }
            plain.push(c);
        }
        if plain.starts_with(start) {
            return at_start;
        }
    }
    None
}

#[test]
fn interactive_switch_keys() {
    let Some(ns) = with_switches_table() else {
        return;
    };
    let _etc = NetnsEtc::new(&ns, HOSTS);
    let tmux = start(&ns, &[], 160, 11);
    let mut failures = Vec::new();
    let all = |s: &Screen| s.rows().len() == 11;

    // c: rows coloured by protocol (TCP green, UDP yellow, ICMP red, others
    // plain), then not.
    let colours = |s: &Screen| {
        [
            ("10.5.0.7:5354", Some("2")),
            ("10.5.0.4:5353", Some("3")),
            ("10.5.0.6 ", Some("1")),
            ("10.5.0.10 ", None),
        ]
        .iter()
        .all(|(row, want)| row_fg(s, row) == Some(want.map(str::to_string)))
    };
    let (ok, screen) = tmux.wait_escaped(SHORT, colours);
    if !ok {
        failures.push(format!(
            "rows not coloured by protocol\n{screen:?}",
            screen = screen.lines
        ));
    }
    tmux.keys(&["c"]);
    let (ok, screen) = tmux.wait_escaped(SHORT, |s| {
        ["10.5.0.7:5354", "10.5.0.4:5353", "10.5.0.6 "]
            .iter()
            .all(|row| row_fg(s, row) == Some(None))
    });
    if !ok {
        failures.push(format!("c: rows still coloured\n{:?}", screen.lines));
    }

    // t: iptstate's totals line.
    tmux.keys(&["t"]);
    let want = "Total States: 11 -- TCP: 3 UDP: 5 ICMP: 1 Other: 2 (Filtered: 0)";
    let (ok, screen) = tmux.wait(SHORT, |s| s.lines.iter().any(|l| l == want) && all(s));
    if !ok {
        failures.push(format!("t: no {want:?}\n{screen}"));
    }

    // L: no DNS flows (TCP and UDP to 53), then back.
    tmux.keys(&["L"]);
    let (ok, screen) = tmux.wait(SHORT, |s| {
        let src = sources(s);
        src.len() == 9
            && !src
                .iter()
                .any(|r| r == "10.5.0.4:5353" || r == "10.5.0.7:5354")
            && s.footer() == "DNS flows hidden"
            && s.lines.iter().any(|l| l.ends_with("(Filtered: 2)"))
    });
    if !ok {
        failures.push(format!("L: want the two DNS rows gone\n{screen}"));
    }
    tmux.keys(&["L"]);
    let (ok, screen) = tmux.wait(SHORT, all);
    if !ok {
        failures.push(format!("L again: want every row back\n{screen}"));
    }

    // f: no flows from 127.0.0.1 or ::1.
    tmux.keys(&["f"]);
    let (ok, screen) = tmux.wait(SHORT, |s| {
        let src = sources(s);
        src.len() == 9
            && !src
                .iter()
                .any(|r| r == "127.0.0.1:5000" || r == "[::1]:5003")
            && src.iter().any(|r| r == "127.0.0.2:5001")
    });
    if !ok {
        failures.push(format!(
            "f: want the rows from 127.0.0.1 and ::1 gone\n{screen}"
        ));
    }
    tmux.keys(&["f"]);
    tmux.wait(SHORT, all);

    // s 10.5.0.0/16, then i: the rows the filter hides.
    tmux.keys(&["s"]);
    tmux.type_text("10.5.0.0/16");
    tmux.keys(&["Enter"]);
    let (ok, screen) = tmux.wait(SHORT, |s| s.rows().len() == 7);
    if !ok {
        failures.push(format!("s 10.5.0.0/16: want 7 rows\n{screen}"));
    }
    tmux.keys(&["i"]);
    let inverted = [
        "127.0.0.1:5000",
        "127.0.0.2:5001",
        "[2001:db8::5]:40004",
        "[::1]:5003",
    ];
    let (ok, screen) = tmux.wait(SHORT, |s| sources(s) == inverted);
    if !ok {
        failures.push(format!("i: want {inverted:?}\n{screen}"));
    }
    tmux.keys(&["i", "s", "Enter"]);
    tmux.wait(SHORT, all);

    // l: names (and DNS flows hidden), which come while frames go on.
    tmux.keys(&["l"]);
    let (ok, screen) = tmux.wait(Duration::from_secs(5), |s| {
        let rows = s.rows();
        let pair = |a: &str, b: &str| rows.iter().any(|r| r[0] == a && r[1] == b);
        rows.len() == 9
            && pair("client.v4.test:40001", "server.v4.test:ssh")
            && pair("client.v6.test:40004", "server.v6.test:http-alt")
    });
    if !ok {
        failures.push(format!("l: want names and no DNS rows\n{screen}"));
    }
    tmux.keys(&["l"]);
    let (ok, screen) = tmux.wait(SHORT, |s| sources(s).iter().any(|r| r == "10.5.0.1:40001"));
    if !ok {
        failures.push(format!("l again: want addresses back\n{screen}"));
    }

    tmux.keys(&["q"]);
    let (ok, screen) = tmux.wait(Duration::from_secs(5), |s| s.has_line_starting("EXITED="));
    if !ok || screen.content() != ["EXITED=0"] {
        failures.push(format!("q: want only EXITED=0\n{screen}"));
    }
    report(12, &failures);
}

/// Names too long for an 80-column screen are cut as iptstate cuts them
/// (the source keeps its start, the destination its end), with a `+` where
/// `--mark-truncated` asks for it; `m` toggles the mark.
#[test]
fn interactive_long_names_cut_and_marked() {
    let Some(ns) = with_switches_table() else {
        return;
    };
    let _etc = NetnsEtc::new(
        &ns,
        "10.5.0.1 workstation-42.floor-3.office.example.test\n\
         10.6.0.1 login.cluster-7.datacentre.example.net\n",
    );
    let tmux = start(&ns, &["--lookup", "--mark-truncated"], 80, 9);
    let mut failures = Vec::new();
    let tcp_row = |s: &Screen| {
        s.rows()
            .into_iter()
            .find(|r| r.get(2).is_some_and(|p| p == "tcp") && r[0].ends_with(":40001"))
    };
    let (ok, screen) = tmux.wait(Duration::from_secs(5), |s| {
        tcp_row(s).is_some_and(|r| {
            r[0].starts_with("workstation-42.")
                && r[0].ends_with("+:40001")
                && r[1].starts_with('+')
                && r[1].ends_with(".example.net:ssh")
        })
    });
    if !ok {
        failures.push(format!(
            "want workstation-42…+:40001 and +….example.net:ssh\n{screen}"
        ));
    }
    tmux.keys(&["m"]);
    let (ok, screen) = tmux.wait(SHORT, |s| {
        tcp_row(s).is_some_and(|r| {
            r[0].starts_with("workstation-42.")
                && r[0].ends_with(":40001")
                && !r[0].contains('+')
                && !r[1].contains('+')
                && r[1].ends_with(".example.net:ssh")
        })
    });
    if !ok {
        failures.push(format!("m: want the same cut without marks\n{screen}"));
    }
    report(2, &failures);
}

/// `--refresh 60`: nothing redraws the screen but a key for a minute; `R`
/// 0.2 makes it redraw by itself again.
#[test]
fn interactive_refresh_rate() {
    let Some(ns) = with_switches_table() else {
        return;
    };
    let tmux = start(&ns, &["--refresh", "60"], 160, 11);
    let mut failures = Vec::new();
    ns.insert("-p udp -s 10.7.0.1 -d 10.7.0.2 --sport 1 --dport 2");
    std::thread::sleep(Duration::from_millis(1500));
    let screen = tmux.capture();
    if screen.rows().len() != 11 {
        failures.push(format!("--refresh 60 redrew by itself\n{screen}"));
    }
    // A key redraws at once.
    tmux.keys(&["Space"]);
    let (ok, screen) = tmux.wait(SHORT, |s| s.rows().len() == 12);
    if !ok {
        failures.push(format!("space: want the new row\n{screen}"));
    }
    tmux.keys(&["R"]);
    tmux.type_text("0.2");
    tmux.keys(&["Enter"]);
    let (ok, screen) = tmux.wait(SHORT, |s| s.footer() == "refresh every 0.2s");
    if !ok {
        failures.push(format!("R 0.2: footer\n{screen}"));
    }
    ns.insert("-p udp -s 10.7.0.3 -d 10.7.0.4 --sport 1 --dport 2");
    let (ok, screen) = tmux.wait(SHORT, |s| s.rows().len() == 13);
    if !ok {
        failures.push(format!(
            "after R 0.2 the new row does not come by itself\n{screen}"
        ));
    }
    report(4, &failures);
}
