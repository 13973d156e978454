//! `ctscope top`: the `--once` snapshot against `conntrack -L` and
//! `iptstate -1`, and the interactive screen driven through tmux
//! (send-keys / capture-pane), including the exits on `q` and SIGTERM;
//! iptstate's switches in [`top_switches`].
//!
//! Also needs `tmux` and `iptstate` (2.2.7) on the host.

use std::{
    collections::BTreeMap,
    fmt,
    net::IpAddr,
    path::Path,
    time::{Duration, Instant},
};

use ctscope_e2e::{
    Netns, Output, Screen, Tmux, ctscope_bin, key_values, multiset_diff, poll_until, report,
};

/// iptstate's switches (`--lookup`, `--no-dns`, `--invert-filters`...).
mod top_switches;
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// One entry as both tools name it: protocol, original tuple, and ICMP
/// type/code (ctscope's State column for ICMP).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    proto: String,
    src: IpAddr,
    sport: Option<u16>,
    dst: IpAddr,
    dport: Option<u16>,
    icmp: Option<String>,
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ep = |a: &IpAddr, p: Option<u16>| match p {
            Some(p) => format!("{a} port {p}"),
            None => a.to_string(),
        };
        write!(
            f,
            "{} {} -> {}",
            self.proto,
            ep(&self.src, self.sport),
            ep(&self.dst, self.dport)
        )?;
        if let Some(t) = &self.icmp {
            write!(f, " {t}")?;
        }
        Ok(())
    }
}

fn is_icmp(proto: &str) -> bool {
    matches!(proto, "icmp" | "icmpv6")
}

/// The key of a `conntrack -L` line (its first, original, tuple).
fn conntrack_key(line: &str) -> Result<Key, String> {
    let proto = line
        .split_whitespace()
        .next()
        .ok_or_else(|| format!("empty conntrack line: {line:?}"))?
        .to_string();
    let kv = key_values(line);
    let first = |k: &str| kv.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
    let addr = |k: &str| -> Result<IpAddr, String> {
        first(k)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("no {k}= address in {line:?}"))
    };
    let port = |k: &str| -> Result<Option<u16>, String> {
        first(k)
            .map(|v| v.parse().map_err(|_| format!("bad {k}={v} in {line:?}")))
            .transpose()
    };
    let icmp = match (first("type"), first("code")) {
        (Some(t), Some(c)) if is_icmp(&proto) => Some(format!("{t}/{c}")),
        _ => None,
    };
    let (mut sport, mut dport) = (port("sport")?, port("dport")?);
    // Since Linux 6.16 (DCCP tracking removed) a DCCP entry is generic and
    // carries no ports; conntrack 1.4.7 still prints sport=0 dport=0 for it,
    // where ctscope prints the bare addresses.
    if proto == "dccp" && sport == Some(0) && dport == Some(0) {
        (sport, dport) = (None, None);
    }
    Ok(Key {
        src: addr("src")?,
        sport,
        dst: addr("dst")?,
        dport,
        icmp,
        proto,
    })
}

/// Splits ctscope's `addr:port`, `[v6]:port` or bare `addr`.
fn endpoint(s: &str) -> Option<(IpAddr, Option<u16>)> {
    if let Ok(a) = s.parse::<IpAddr>() {
        return Some((a, None));
    }
    let (addr, port) = match s.strip_prefix('[') {
        Some(rest) => rest.split_once("]:")?,
        None => s.rsplit_once(':')?,
    };
    Some((addr.parse().ok()?, Some(port.parse().ok()?)))
}

/// The key of a ctscope row from its Source, Destination, Prt, State cells.
fn row_key(src: &str, dst: &str, proto: &str, state: &str) -> Result<Key, String> {
    let (s, sport) = endpoint(src).ok_or_else(|| format!("bad Source {src:?}"))?;
    let (d, dport) = endpoint(dst).ok_or_else(|| format!("bad Destination {dst:?}"))?;
    Ok(Key {
        proto: proto.to_string(),
        src: s,
        sport,
        dst: d,
        dport,
        icmp: is_icmp(proto).then(|| state.to_string()),
    })
}

/// Sorted keys of every `conntrack -L` line.
fn conntrack_keys(out: &Output) -> Vec<Key> {
    out.expect_code(0);
    let mut keys: Vec<Key> = out
        .lines()
        .iter()
        .map(|l| conntrack_key(l).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    keys.sort();
    keys
}

/// [`multiset_diff`] over keys.
fn key_diff(a_name: &str, a: &[Key], b_name: &str, b: &[Key]) -> Option<String> {
    let text = |v: &[Key]| v.iter().map(Key::to_string).collect::<Vec<_>>();
    multiset_diff(a_name, &text(a), b_name, &text(b))
}

/// A parsed `ctscope top --once` output.
struct Once {
    /// The whole header line.
    header: String,
    /// N of "N of M entries".
    shown: usize,
    /// M of "N of M entries".
    total: usize,
    /// Column titles, in order.
    titles: Vec<String>,
    /// Each row's cells by title.
    rows: Vec<BTreeMap<String, String>>,
}

impl Once {
    fn cell<'a>(row: &'a BTreeMap<String, String>, title: &str) -> &'a str {
        row.get(title).map_or("", String::as_str)
    }

    fn keys(&self) -> Result<Vec<Key>, String> {
        let mut keys = self
            .rows
            .iter()
            .map(|r| {
                row_key(
                    Self::cell(r, "Source"),
                    Self::cell(r, "Destination"),
                    Self::cell(r, "Prt"),
                    Self::cell(r, "State"),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        keys.sort();
        Ok(keys)
    }

    fn column(&self, title: &str) -> Vec<&str> {
        self.rows.iter().map(|r| Self::cell(r, title)).collect()
    }
}

/// Parses the snapshot: header, title line, then rows whose cells start at
/// their title's column, each column separated from the last by 2+ spaces.
fn parse_once(out: &Output) -> Result<Once, String> {
    let fail = |why: String| Err(format!("{why}\n{out}"));
    if out.code != 0 {
        return fail("ctscope top --once failed".into());
    }
    if let Some(l) = out.stdout.lines().find(|l| l.ends_with(' ')) {
        return fail(format!("trailing spaces in {l:?}"));
    }
    let lines: Vec<&str> = out.stdout.lines().collect();
    let (Some(header), Some(title)) = (lines.first(), lines.get(1)) else {
        return fail("no header and title lines".into());
    };
    let counts = header
        .strip_prefix("ctscope top -- Sort by: ")
        .and_then(|h| h.rsplit_once(" -- "))
        .and_then(|(_, c)| c.strip_suffix(" entries"))
        .and_then(|c| c.split_once(" of "))
        .and_then(|(n, m)| Some((n.parse().ok()?, m.parse().ok()?)));
    let Some((shown, total)) = counts else {
        return fail(format!("unexpected header {header:?}"));
    };
    let mut starts = Vec::new();
    let mut titles = Vec::new();
    let mut prev_space = true;
    for (i, c) in title.char_indices() {
        if c != ' ' && prev_space {
            starts.push(i);
        }
        prev_space = c == ' ';
    }
    for (n, &s) in starts.iter().enumerate() {
        let end = starts.get(n + 1).copied().unwrap_or(title.len());
        titles.push(title[s..end].trim_end().to_string());
    }
    let mut rows = Vec::new();
    for line in &lines[2..] {
        let mut row = BTreeMap::new();
        for (n, &s) in starts.iter().enumerate() {
            let end = starts
                .get(n + 1)
                .copied()
                .unwrap_or(line.len())
                .min(line.len());
            let cell = line.get(s.min(end)..end).unwrap_or("").trim_end();
            let sep_ok = n == 0 || s >= line.len() || line.get(s - 2..s) == Some("  ");
            if !sep_ok || cell.starts_with(' ') {
                return fail(format!(
                    "row {line:?} is not aligned on the title {title:?} (column {})",
                    titles[n]
                ));
            }
            row.insert(titles[n].clone(), cell.to_string());
        }
        rows.push(row);
    }
    Ok(Once {
        header: (*header).to_string(),
        shown,
        total,
        titles,
        rows,
    })
}

/// `H:MM:SS` in seconds.
fn ttl_secs(s: &str) -> Option<u32> {
    let mut parts = s.split(':').map(|p| p.parse::<u32>().ok());
    let (h, m, sec) = (parts.next()??, parts.next()??, parts.next()??);
    (parts.next().is_none() && m < 60 && sec < 60).then_some(h * 3600 + m * 60 + sec)
}

/// `ctscope top --once ARGS` in `ns`, parsed (panics with the output if
/// it cannot be).
#[track_caller]
fn once(ns: &Netns, args: &[&str]) -> Once {
    let out = ns.ctscope(&[&["top", "--once"], args].concat());
    out.assert_no_panic();
    parse_once(&out).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn once_matches_conntrack() {
    let Some(ns) = Netns::with_varied_table() else {
        return;
    };
    // Timeouts far apart, so the TTL order is not decided by seconds.
    for (sport, secs) in [("1", "60"), ("2", "600"), ("3", "1800"), ("4", "7200")] {
        ns.conntrack(&[
            "-I", "-p", "udp", "-s", "10.7.0.1", "-d", "10.7.0.2", "--sport", sport, "--dport",
            "9", "-t", secs,
        ])
        .expect_code(0);
    }
    let mut failures = Vec::new();

    let ct = conntrack_keys(&ns.conntrack(&["-L"]));
    let all = once(&ns, &[]);
    let keys = all.keys().unwrap_or_else(|e| panic!("{e}"));
    if let Some(d) = key_diff("conntrack -L", &ct, "ctscope top --once", &keys) {
        failures.push(format!("rows differ from conntrack -L: {d}"));
    }
    if all.shown != all.rows.len() || all.total != all.rows.len() {
        failures.push(format!(
            "header {:?} vs {} rows",
            all.header,
            all.rows.len()
        ));
    }
    let want_titles = ["Source", "Destination", "Prt", "State", "TTL"];
    if all.titles.get(..5) != Some(&want_titles.map(String::from)[..]) {
        failures.push(format!("titles {:?}", all.titles));
    }
    // The varied table has NAT, marks and zones, so those columns show.
    for t in ["NAT", "Mark", "Zone"] {
        if !all.titles.iter().any(|x| x == t) {
            failures.push(format!("no {t} column in {:?}", all.titles));
        }
    }
    if let Some(bad) = all.column("TTL").iter().find(|t| ttl_secs(t).is_none()) {
        failures.push(format!("TTL {bad:?} is not H:MM:SS"));
    }

    // --limit 3: the first three rows of the same order, out of all.
    let limited = once(&ns, &["--limit", "3"]);
    let pair = |o: &Once| {
        o.rows
            .iter()
            .map(|r| {
                format!(
                    "{} -> {}",
                    Once::cell(r, "Source"),
                    Once::cell(r, "Destination")
                )
            })
            .collect::<Vec<_>>()
    };
    if limited.rows.len() != 3 || limited.shown != 3 || limited.total != all.rows.len() {
        failures.push(format!(
            "--limit 3: header {:?}, {} rows (table has {})",
            limited.header,
            limited.rows.len(),
            all.rows.len()
        ));
    } else if pair(&limited) != pair(&all)[..3] {
        failures.push(format!(
            "--limit 3 rows {:?} are not the first three of {:?}",
            pair(&limited),
            &pair(&all)[..3]
        ));
    }

    // --sort ttl, and reversed.
    for (args, increasing) in [
        (&["--sort", "ttl"][..], true),
        (&["--sort", "ttl", "--reverse"][..], false),
    ] {
        let o = once(&ns, args);
        let ttls: Vec<u32> = o
            .column("TTL")
            .iter()
            .map(|t| ttl_secs(t).unwrap_or(u32::MAX))
            .collect();
        let ordered = ttls.windows(2).all(|w| {
            if increasing {
                w[0] <= w[1]
            } else {
                w[0] >= w[1]
            }
        });
        if !ordered || o.rows.len() != all.rows.len() {
            failures.push(format!(
                "{args:?}: TTLs out of order or rows missing: {ttls:?}"
            ));
        }
        let want_head = if increasing {
            "ctscope top -- Sort by: TTL -- "
        } else {
            "ctscope top -- Sort by: TTL (reversed) -- "
        };
        if !o.header.starts_with(want_head) {
            failures.push(format!("{args:?}: header {:?}", o.header));
        }
        // The 60 s entry has the smallest TTL in the table.
        let end_row = if increasing {
            o.rows.first()
        } else {
            o.rows.last()
        };
        let end = end_row.map(|r| Once::cell(r, "Source"));
        if end != Some("10.7.0.1:1") {
            failures.push(format!(
                "{args:?}: the 60 s entry (10.7.0.1:1) is not at the {} end but {end:?}",
                if increasing { "top" } else { "bottom" }
            ));
        }
    }

    // -p udp.
    let udp = once(&ns, &["-p", "udp"]);
    let ct_udp = conntrack_keys(&ns.conntrack(&["-L", "-p", "udp"]));
    if let Some(p) = udp.column("Prt").iter().find(|p| **p != "udp") {
        failures.push(format!("-p udp shows a {p} row"));
    }
    match udp.keys() {
        Ok(k) => {
            if let Some(d) = key_diff("conntrack -L -p udp", &ct_udp, "ctscope -p udp", &k) {
                failures.push(format!("-p udp: {d}"));
            }
        }
        Err(e) => failures.push(e),
    }
    if udp.shown != udp.rows.len() || udp.total != udp.rows.len() || udp.rows.is_empty() {
        failures.push(format!(
            "-p udp: header {:?}, {} rows",
            udp.header,
            udp.rows.len()
        ));
    }

    // -C: Bytes, Packets, Rate after TTL; bytes and packets as conntrack
    // counts them (both directions; the table's sockets are idle).
    let counted = once(&ns, &["-C"]);
    let want_titles = [
        "Source",
        "Destination",
        "Prt",
        "State",
        "TTL",
        "Bytes",
        "Packets",
        "Rate",
    ];
    if counted.titles.get(..8) != Some(&want_titles.map(String::from)[..]) {
        failures.push(format!("-C titles {:?}", counted.titles));
    }
    let mut ct_counts: BTreeMap<Key, (u64, u64)> = BTreeMap::new();
    for line in ns.conntrack(&["-L"]).lines() {
        let key = conntrack_key(&line).unwrap_or_else(|e| panic!("{e}"));
        let sum = |k: &str| {
            key_values(&line)
                .iter()
                .filter(|(key, _)| *key == k)
                .filter_map(|(_, v)| v.parse::<u64>().ok())
                .sum::<u64>()
        };
        ct_counts.insert(key, (sum("bytes"), sum("packets")));
    }
    let mut nonzero = false;
    for r in &counted.rows {
        let cell = |t: &str| Once::cell(r, t);
        let key = row_key(
            cell("Source"),
            cell("Destination"),
            cell("Prt"),
            cell("State"),
        );
        let got = (cell("Bytes").parse::<u64>(), cell("Packets").parse::<u64>());
        let (Ok(key), (Ok(b), Ok(p))) = (key, got) else {
            failures.push(format!("-C row {r:?} has no numeric Bytes/Packets"));
            continue;
        };
        nonzero |= b > 0;
        if !cell("Rate").ends_with("/s") {
            failures.push(format!("-C row {r:?}: Rate is not N/s"));
        }
        if let Some(&want) = ct_counts.get(&key)
            && want != (b, p)
        {
            failures.push(format!(
                "-C {key}: bytes/packets {b}/{p}, conntrack -L says {}/{}",
                want.0, want.1
            ));
        }
    }
    if !nonzero || counted.rows.len() != all.rows.len() {
        failures.push(format!(
            "-C: {} rows, some with bytes: {nonzero}",
            counted.rows.len()
        ));
    }
    report(9, &failures);
}

/// iptstate's `-1` output, as the terminal shows it: the (Source,
/// Destination, Prt, State) of each row.
fn iptstate_rows(lines: &[String]) -> Result<Vec<String>, String> {
    let shown = || lines.join("\n");
    let start = lines
        .iter()
        .position(|l| l.starts_with("Source"))
        .ok_or_else(|| format!("no title line: {}", shown()))?;
    let mut rows = Vec::new();
    for l in lines[start + 1..].iter().filter(|l| !l.is_empty()) {
        let t: Vec<&str> = l.split_whitespace().collect();
        // Source Destination Prt [State...] TTL.
        let ttl_at = t
            .iter()
            .rposition(|x| ttl_secs(x).is_some())
            .filter(|&i| i >= 3)
            .ok_or_else(|| format!("no TTL in row {l:?}"))?;
        let mut state = t[3..ttl_at].join(" ");
        // iptstate writes ICMP's State as "type/code (id)", and reads the id
        // in network byte order (id 5 shows as 1280); the id is no part of
        // the row's identity here, so it goes.
        if is_icmp(t[2])
            && let Some((tc, _)) = state.split_once(" (")
        {
            state = tc.to_string();
        }
        rows.push(format!("{} {} {} {}", t[0], t[1], t[2], state.trim_end()));
    }
    Ok(rows)
}

#[test]
fn once_matches_iptstate() {
    let Some(ns) = Netns::new() else {
        return;
    };
    let entries: &[&str] = &[
        "-p tcp -s 10.5.0.1 -d 10.6.0.1 --sport 40001 --dport 22 \
         --state ESTABLISHED -u SEEN_REPLY,ASSURED",
        "-p tcp -s 10.5.0.2 -d 10.6.0.1 --sport 40002 --dport 443 --state SYN_SENT",
        "-p tcp -s 10.5.0.3 -d 10.6.0.2 --sport 40003 --dport 80 --state TIME_WAIT",
        "-p udp -s 10.5.0.4 -d 10.6.0.3 --sport 5353 --dport 53",
        "-p udp -s 10.5.0.5 -d 10.6.0.3 --sport 123 --dport 123 -u SEEN_REPLY",
        "-p icmp -s 10.5.0.6 -d 10.6.0.4 --icmp-type 8 --icmp-code 0 --icmp-id 5",
        "-p tcp -s 2001:db8::5 -d 2001:db8::6 --sport 40004 --dport 8080 --state ESTABLISHED",
        "-p udp -s 2001:db8::5 -d 2001:db8::7 --sport 546 --dport 547",
    ];
    for e in entries {
        ns.insert(e);
    }
    // In a terminal: with stdout a file or a pipe, iptstate 2.2.7 pads its
    // lines to a width it does not get from a terminal, gigabytes of
    // spaces at times. 250 columns fit the widest IPv6 rows.
    let tmux = Tmux::start(
        &format!(
            "ip netns exec {} iptstate -1; echo IPTSTATE_EXITED=$?; sleep 60",
            ns.name()
        ),
        250,
    );
    let (done, screen) = tmux.wait_all(Duration::from_secs(10), |s| {
        s.has_line_starting("IPTSTATE_EXITED=")
    });
    assert!(done, "iptstate -1 did not finish\n{screen}");
    let end = screen
        .lines
        .iter()
        .position(|l| l.starts_with("IPTSTATE_EXITED="))
        .unwrap_or(screen.lines.len());
    assert_eq!(
        screen.lines[end], "IPTSTATE_EXITED=0",
        "iptstate -1 failed\n{screen}"
    );
    let ipt = iptstate_rows(&screen.lines[..end]).unwrap_or_else(|e| panic!("{e}\n{screen}"));
    let cs = once(&ns, &[]);
    // No NAT, mark or zone here: those columns stay out of the snapshot.
    assert_eq!(
        cs.titles,
        ["Source", "Destination", "Prt", "State", "TTL"],
        "titles of a table without NAT, marks or zones"
    );
    let ours: Vec<String> = cs
        .rows
        .iter()
        .map(|r| {
            let cell = |t: &str| Once::cell(r, t);
            // iptstate writes an IPv6 endpoint as addr:port, without the
            // brackets ctscope puts around the address.
            let unbracket = |s: &str| s.replacen('[', "", 1).replacen("]:", ":", 1);
            format!(
                "{} {} {} {}",
                unbracket(cell("Source")),
                unbracket(cell("Destination")),
                cell("Prt"),
                cell("State")
            )
        })
        .collect();
    let mut a = ipt.clone();
    let mut b = ours;
    a.sort();
    b.sort();
    assert_eq!(a.len(), entries.len(), "iptstate shows {a:#?}");
    if let Some(d) = multiset_diff("iptstate -1", &a, "ctscope top --once", &b) {
        panic!("(Source Destination Prt State) rows differ: {d}");
    }
}

/// The `sh -c` line for the pane: `ctscope top ARGS` on `ns`, then its exit
/// code, then a pause so the pane (and what the terminal shows after the
/// exit) stays.
fn pane_command(ns: &Netns, args: &[&str]) -> String {
    format!(
        "{} --netns {} {}; echo EXITED=$?; sleep 60",
        ctscope_bin().display(),
        ns.name(),
        [&["top"], args].concat().join(" ")
    )
}

/// The ctscope process started by the pane's shell, found by its parent
/// (the pane) and its argv[0], so nothing else on the host is signalled;
/// panics (showing `screen`) if there is none.
#[track_caller]
fn ctscope_pid(tmux: &Tmux, screen: &Screen) -> Pid {
    let shell = tmux.pane_pid();
    let bin = ctscope_bin();
    let children = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children"));
    children
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| c.parse::<i32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                cmdline
                    .split(|b| *b == 0)
                    .next()
                    .is_some_and(|argv0| Path::new(&*String::from_utf8_lossy(argv0)) == bin)
            })
        })
        .map(Pid::from_raw)
        .unwrap_or_else(|| panic!("no ctscope under the pane\n{screen}"))
}

/// Five entries whose source order differs from their destination order.
const SMALL_TABLE: &[&str] = &[
    "-p tcp -s 10.9.0.1 -d 10.8.0.5 --sport 1001 --dport 80 --state ESTABLISHED",
    "-p udp -s 10.9.0.2 -d 10.8.0.3 --sport 1002 --dport 53",
    "-p tcp -s 10.9.0.3 -d 10.8.0.1 --sport 1003 --dport 443 --state SYN_SENT",
    "-p icmp -s 10.9.0.4 -d 10.8.0.4 --icmp-type 8 --icmp-code 0 --icmp-id 7",
    "-p udp -s 10.9.0.5 -d 10.8.0.2 --sport 1005 --dport 123",
];

/// A fresh namespace holding [`SMALL_TABLE`]; `None` when the skip switch
/// is set.
fn with_small_table() -> Option<Netns> {
    let ns = Netns::new()?;
    for e in SMALL_TABLE {
        ns.insert(e);
    }
    Some(ns)
}

/// Starts `ctscope top` on [`SMALL_TABLE`] in a pane and waits (up to 5 s)
/// for a header starting with `header` over five rows.
#[track_caller]
fn start_top(ns: &Netns, header: &str) -> (Tmux, Screen) {
    let tmux = Tmux::start(&pane_command(ns, &[]), 160);
    let (up, screen) = tmux.wait(Duration::from_secs(5), |s| {
        s.header().starts_with(header) && s.rows().len() == 5
    });
    assert!(up, "the screen did not come up with 5 rows\n{screen}");
    (tmux, screen)
}

/// A row key of the screen (the same cells as `--once`).
fn screen_keys(screen: &Screen) -> Result<Vec<Key>, String> {
    let mut keys = screen
        .rows()
        .iter()
        .map(|r| {
            let cell = |i: usize| r.get(i).map_or("", String::as_str);
            row_key(cell(0), cell(1), cell(2), cell(3))
        })
        .collect::<Result<Vec<_>, _>>()?;
    keys.sort();
    Ok(keys)
}

const SHORT: Duration = Duration::from_secs(3);

#[test]
fn interactive_keys() {
    let Some(ns) = with_small_table() else {
        return;
    };
    let (tmux, screen) = start_top(&ns, "ctscope top -- source netlink -- 5 entries");
    let mut failures = Vec::new();

    // The rows are the table, sorted by source.
    let ct = conntrack_keys(&ns.conntrack(&["-L"]));
    match screen_keys(&screen) {
        Ok(k) => {
            if let Some(d) = key_diff("conntrack -L", &ct, "screen", &k) {
                failures.push(format!("rows differ from conntrack -L: {d}\n{screen}"));
            }
        }
        Err(e) => failures.push(format!("{e}\n{screen}")),
    }
    let by_src: Vec<String> = [
        "10.9.0.1:1001 -> 10.8.0.5:80",
        "10.9.0.2:1002 -> 10.8.0.3:53",
        "10.9.0.3:1003 -> 10.8.0.1:443",
        "10.9.0.4 -> 10.8.0.4",
        "10.9.0.5:1005 -> 10.8.0.2:123",
    ]
    .map(String::from)
    .to_vec();
    if screen.pairs() != by_src {
        failures.push(format!("not sorted by source\n{screen}"));
    }
    if !screen.header().contains("-- 5 shown -- sort SrcIP") {
        failures.push(format!("header: {:?}", screen.header()));
    }

    // r: reversed.
    tmux.keys(&["r"]);
    let reversed: Vec<String> = by_src.iter().rev().cloned().collect();
    let (ok, screen) = tmux.wait(SHORT, |s| s.pairs() == reversed);
    if !ok {
        failures.push(format!("r did not reverse the rows\n{screen}"));
    }

    // b: the next sort column, destination (still reversed).
    tmux.keys(&["b"]);
    let by_dst_rev: Vec<String> = [
        "10.9.0.1:1001 -> 10.8.0.5:80",
        "10.9.0.4 -> 10.8.0.4",
        "10.9.0.2:1002 -> 10.8.0.3:53",
        "10.9.0.5:1005 -> 10.8.0.2:123",
        "10.9.0.3:1003 -> 10.8.0.1:443",
    ]
    .map(String::from)
    .to_vec();
    let (ok, screen) = tmux.wait(SHORT, |s| s.header().contains("sort DstIP"));
    if !ok {
        failures.push(format!("b: the header does not say DstIP\n{screen}"));
    } else if screen.pairs() != by_dst_rev {
        failures.push(format!(
            "b: rows not by destination, reversed: want {by_dst_rev:#?}\n{screen}"
        ));
    }

    // /TEXT Enter: only matching rows.
    tmux.keys(&["/"]);
    tmux.type_text("10.9.0.3");
    let (ok, screen) = tmux.wait(SHORT, |s| s.footer().contains("10.9.0.3"));
    if !ok {
        failures.push(format!("/: no prompt echoing the text\n{screen}"));
    }
    tmux.keys(&["Enter"]);
    let (ok, screen) = tmux.wait(SHORT, |s| {
        s.pairs() == ["10.9.0.3:1003 -> 10.8.0.1:443"] && s.header().contains("-- 1 shown --")
    });
    if !ok {
        failures.push(format!("/10.9.0.3 Enter: want only that row\n{screen}"));
    }

    // / Enter with nothing typed: the filter goes.
    tmux.keys(&["/"]);
    let (_, prompt) = tmux.wait(SHORT, |s| s.footer().starts_with("filter text:"));
    tmux.keys(&["Enter"]);
    let (ok, screen) = tmux.wait(SHORT, |s| s.rows().len() == 5);
    if !ok {
        failures.push(format!(
            "`/` then Enter (nothing typed) does not clear the text filter; after `/` the \
             footer read {:?}\n{screen}",
            prompt.footer()
        ));
        // Clear it by erasing the prompt's text, so the rest can go on.
        tmux.keys(&["/"]);
        for _ in 0.."10.9.0.3".len() {
            tmux.keys(&["BSpace"]);
        }
        tmux.keys(&["Enter"]);
        let (ok, screen) = tmux.wait(SHORT, |s| s.rows().len() == 5);
        assert!(ok, "cannot clear the text filter at all\n{screen}");
    }

    // Down, x: the second row, after a y/n question.
    let (_, screen) = tmux.wait(SHORT, |s| s.pairs() == by_dst_rev);
    let rows = screen.rows();
    let Some(second) = rows.get(1) else {
        panic!("no second row\n{screen}");
    };
    let victim = row_key(&second[0], &second[1], &second[2], &second[3])
        .unwrap_or_else(|e| panic!("{e}\n{screen}"));
    tmux.keys(&["Down", "x"]);
    let question = format!("Delete {} -> {}? (y/n)", victim.src, victim.dst);
    let (ok, screen) = tmux.wait(SHORT, |s| s.footer() == question);
    if !ok {
        failures.push(format!("x: footer is not {question:?}\n{screen}"));
    }
    tmux.keys(&["y"]);
    let mut left = Vec::new();
    let gone = poll_until(SHORT, || {
        left = conntrack_keys(&ns.conntrack(&["-L"]));
        !left.contains(&victim)
    });
    let mut want_left = ct.clone();
    want_left.retain(|k| *k != victim);
    if !gone {
        failures.push(format!("y: {victim} is still in conntrack -L"));
    } else if let Some(d) = key_diff("expected", &want_left, "conntrack -L", &left) {
        failures.push(format!("y deleted more than {victim}: {d}"));
    }
    let (ok, screen) = tmux.wait(SHORT, |s| {
        s.rows().len() == 4 && screen_keys(s).is_ok_and(|k| !k.contains(&victim))
    });
    if !ok {
        failures.push(format!("the deleted {victim} stays on screen\n{screen}"));
    }

    // A new entry shows up from its event, well before the 10 s resync.
    let started = Instant::now();
    ns.insert("-p tcp -s 10.9.0.7 -d 10.8.0.7 --sport 1007 --dport 22 --state ESTABLISHED");
    let (ok, screen) = tmux.wait(SHORT, |s| {
        s.pairs()
            .iter()
            .any(|p| p == "10.9.0.7:1007 -> 10.8.0.7:22")
    });
    if !ok {
        failures.push(format!(
            "an entry made with conntrack -I is not on screen after {:?}\n{screen}",
            started.elapsed()
        ));
    } else {
        eprintln!("new entry on screen after {:?}", started.elapsed());
    }

    // q: exit 0, the terminal back as it was (only the shell's echo).
    tmux.keys(&["q"]);
    let (ok, screen) = tmux.wait(Duration::from_secs(5), |s| s.has_line_starting("EXITED="));
    if !ok || screen.content() != ["EXITED=0"] {
        failures.push(format!(
            "q: want only EXITED=0 on the restored terminal\n{screen}"
        ));
    }
    report(11, &failures);
}

#[test]
fn interactive_sigterm() {
    let Some(ns) = with_small_table() else {
        return;
    };
    let (tmux, screen) = start_top(&ns, "ctscope top -- ");
    // Signalled by pid: a `pkill -f` on the namespace's name would also
    // match the tmux server and the pane's shell, whose command lines carry
    // the same name.
    let pid = ctscope_pid(&tmux, &screen);
    kill(pid, Signal::SIGTERM).unwrap_or_else(|e| panic!("kill -TERM {pid}: {e}"));
    let (ok, screen) = tmux.wait(Duration::from_secs(5), |s| s.has_line_starting("EXITED="));
    assert!(
        ok && screen.content() == ["EXITED=0"],
        "SIGTERM: want exit 0 and the terminal restored (only EXITED=0 left)\n{screen}"
    );
}

/// A bug in `top`, on the screen's thread or on the event thread (panics
/// injected through the test-only CTSCOPE_FAULT_PANIC switch), leaves the
/// terminal as it found it (same `stty` settings, main screen back), says
/// what happened, and exits non-zero.
#[test]
fn a_panic_restores_the_terminal() {
    let Some(ns) = with_small_table() else {
        return;
    };
    let mut failures = Vec::new();
    for (place, code, says) in [
        ("draw", 101, "injected by CTSCOPE_FAULT_PANIC=draw"),
        (
            "feeder",
            1,
            "ctscope: the event thread panicked: injected by CTSCOPE_FAULT_PANIC=feeder",
        ),
    ] {
        let cmd = format!(
            "s=$(stty -g); CTSCOPE_FAULT_PANIC={place} RUST_BACKTRACE=0 {} --netns {} top; echo EXITED=$?; \
             [ \"$(stty -g)\" = \"$s\" ] && echo TTY=restored || echo TTY=changed; sleep 60",
            ctscope_bin().display(),
            ns.name()
        );
        let tmux = Tmux::start(&cmd, 160);
        let (ended, screen) = tmux.wait(Duration::from_secs(10), |s| s.has_line_starting("TTY="));
        let content = screen.content();
        if !ended
            || !content.contains(&format!("EXITED={code}").as_str())
            || !content.contains(&"TTY=restored")
            || !content.iter().any(|l| l.contains(says))
            || content.iter().any(|l| l.starts_with("ctscope top -- "))
        {
            failures.push(format!(
                "{place}: want EXITED={code}, TTY=restored, {says:?}, and the screen gone\n{screen}"
            ));
        }
    }
    report(2, &failures);
}

/// The consumer is stopped (SIGSTOP) while a burst overflows its small
/// receive buffer: the loss shows on screen, a resync runs at once, and
/// afterwards the live table holds what `conntrack -C` counts.
#[test]
fn stopped_consumer_loses_events_then_resyncs() {
    let Some(ns) = Netns::new() else {
        return;
    };
    let tmux = Tmux::start(
        &pane_command(&ns, &["-b", "65536", "--resync", "3600"]),
        160,
    );
    let (up, screen) = tmux.wait(Duration::from_secs(5), |s| {
        s.header().starts_with("ctscope top -- ")
    });
    assert!(up, "the screen did not come up\n{screen}");
    let pid = ctscope_pid(&tmux, &screen);
    kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
    // 600 NEW events need far more than the 128 KiB the kernel grants a
    // 64 KiB buffer.
    for i in 0..600u32 {
        let src = format!("10.6.{}.{}", i / 250, i % 250 + 1);
        let sport = 1024 + i;
        ns.insert(&format!(
            "-p udp -s {src} -d 10.6.99.1 --sport {sport} --dport 53"
        ));
    }
    kill(pid, Signal::SIGCONT).expect("SIGCONT");
    let count = ns.conntrack(&["-C"]).stdout.trim().to_string();
    let want = format!("-- {count} entries/");
    let (ok, screen) = tmux.wait(Duration::from_secs(10), |s| {
        s.header().contains(&want)
            && s.content()
                .iter()
                .any(|l| l.contains(" lost ") && !l.contains(" lost 0 "))
            && s.content().iter().any(|l| l.contains("resyncs 2"))
    });
    assert!(
        ok,
        "after SIGCONT: want the table at conntrack -C = {count}, a non-zero loss and a second resync\n{screen}"
    );
}

/// Whether a terminal is in raw mode (`stty -a` shows `-icanon`).
fn is_raw(tty: &str) -> Result<bool, String> {
    let out = std::process::Command::new("sh")
        .args(["-c", "stty -a < \"$0\"", tty])
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "stty -a < {tty}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(text.split_whitespace().any(|w| w == "-icanon"))
}

/// Stopped and continued as a shell job is (`kill -STOP`; the shell puts
/// the terminal back in cooked mode and on the main screen; `fg` sends
/// SIGCONT), top takes the terminal back (raw mode, its screen redrawn)
/// and resyncs at once: entries flushed meanwhile, which were made before
/// any listener and so send no DESTROY, are gone long before the next
/// periodic resync.
#[test]
fn continued_after_a_stop_retakes_the_terminal_and_resyncs() {
    let Some(ns) = with_small_table() else {
        return;
    };
    let tmux = Tmux::start(&pane_command(&ns, &["--resync", "3600"]), 160);
    let (up, screen) = tmux.wait(Duration::from_secs(5), |s| {
        s.header().starts_with("ctscope top -- ") && s.rows().len() == 5
    });
    assert!(up, "the screen did not come up with 5 rows\n{screen}");
    let pid = ctscope_pid(&tmux, &screen);
    let tty = tmux.pane_tty();
    assert_eq!(is_raw(&tty), Ok(true), "top runs in raw mode");
    kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
    // What an interactive shell does to a stopped job's terminal.
    let reset = std::process::Command::new("sh")
        .args([
            "-c",
            "stty sane < \"$0\" && printf '\\033[?1049l' > \"$0\"",
            &tty,
        ])
        .status()
        .expect("stty sane");
    assert!(reset.success());
    assert_eq!(
        is_raw(&tty),
        Ok(false),
        "the reset put the terminal in cooked mode"
    );
    ns.conntrack(&["-F"]).expect_code(0);
    kill(pid, Signal::SIGCONT).expect("SIGCONT");
    let (ok, screen) = tmux.wait(Duration::from_secs(5), |s| {
        s.header().contains("-- 0 entries/") && s.rows().is_empty()
    });
    assert!(
        ok,
        "after SIGCONT: want the table emptied by an immediate resync\n{screen}"
    );
    let raw = poll_until(Duration::from_secs(3), || is_raw(&tty) == Ok(true));
    assert!(raw, "after SIGCONT the terminal is not back in raw mode");
    // The screen is top's again: it answers keys (b: the next sort column).
    tmux.keys(&["b"]);
    let (sorted, screen) = tmux.wait(Duration::from_secs(3), |s| {
        s.header().contains("sort DstIP")
    });
    assert!(sorted, "top does not answer keys after SIGCONT\n{screen}");
    // Ctrl-Z (a key in raw mode) gives the terminal back and stops top as
    // a shell job. Here no shell has job control (the pane runs `sh -c`),
    // so the kernel discards the stop: top must take the terminal back at
    // once and go on answering.
    tmux.keys(&["C-z"]);
    std::thread::sleep(Duration::from_millis(300));
    let raw = poll_until(Duration::from_secs(3), || is_raw(&tty) == Ok(true));
    assert!(
        raw,
        "after Ctrl-Z without job control the terminal is not raw"
    );
    tmux.keys(&["b"]);
    let (sorted, screen) = tmux.wait(Duration::from_secs(3), |s| {
        s.header().contains("sort Proto")
    });
    assert!(sorted, "top does not answer keys after Ctrl-Z\n{screen}");
}

#[test]
fn needs_a_terminal() {
    let Some(ns) = Netns::new() else {
        return;
    };
    let mut failures = Vec::new();
    // top is the default command.
    for args in [&["top"][..], &[][..]] {
        let out = ns.ctscope(args);
        out.assert_no_panic();
        if out.code != 2 || out.stderr_lines().len() != 1 || !out.stdout.is_empty() {
            failures.push(format!(
                "without a terminal: want exit 2 and one line on stderr\n{out}"
            ));
        }
    }
    report(2, &failures);
}
