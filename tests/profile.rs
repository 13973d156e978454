//! `ctscope profile` against real churn in a namespace: the report counts
//! the flows made during the run, and its pressure figures agree with the
//! kernel's.
use std::time::Duration;

use ctscope_e2e::{Netns, Tmux};

#[test]
fn profile_counts_the_churn_of_the_run() {
    let Some(ns) = Netns::new() else {
        return;
    };
    ns.exec(&["sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1"]);
    // Entries made before the run are in the table but not in the churn.
    for i in 0..5u16 {
        let sport = (2000 + i).to_string();
        ns.conntrack(&[
            "-I", "-p", "udp", "-s", "10.7.0.1", "-d", "10.7.0.2", "--sport", &sport, "--dport",
            "53", "-t", "600",
        ]);
    }
    let bin = ctscope_e2e::ctscope_bin();
    let child = std::process::Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .arg(&bin)
        .args(["profile", "--duration", "3", "-o", "json", "--top", "3"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ctscope profile starts");
    std::thread::sleep(Duration::from_millis(700));
    for i in 0..40u16 {
        let sport = (3000 + i).to_string();
        ns.conntrack(&[
            "-I",
            "-p",
            "tcp",
            "-s",
            "10.7.1.1",
            "-d",
            "10.7.1.2",
            "--sport",
            &sport,
            "--dport",
            "443",
            "--state",
            "ESTABLISHED",
            "-t",
            "600",
        ]);
    }
    for i in 0..10u16 {
        let sport = (3000 + i).to_string();
        ns.conntrack(&[
            "-D", "-p", "tcp", "-s", "10.7.1.1", "-d", "10.7.1.2", "--sport", &sport, "--dport",
            "443",
        ]);
    }
    let out = child.wait_with_output().expect("profile ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    // stderr is a pipe here: no progress line, not even an erased one.
    assert!(
        !stderr.contains("profile:") && !stderr.contains('\r') && !stderr.contains('\x1b'),
        "{stderr:?}"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(report["new"], 40, "{report}");
    assert_eq!(report["destroy"], 10, "{report}");
    assert_eq!(report["lost"], 0);
    assert_eq!(report["pressure"]["count"], 35, "{report}");
    let count = ns.count_entries();
    assert_eq!(report["pressure"]["count"].as_f64(), Some(count));
    assert_eq!(report["top_destinations"][0]["key"], "10.7.1.2");
    assert_eq!(report["top_destinations"][0]["connections"], 30);
    assert_eq!(report["top_dports"][0]["key"], "tcp/443");
    let lifetimes = report["lifetime_ms"].as_array().expect("lifetimes");
    assert_eq!(lifetimes.len(), 1, "{report}");
    assert_eq!(lifetimes[0][0], "tcp");
    assert_eq!(lifetimes[0][1]["count"], 10);
    // Per protocol churn, and TCP lifetime per end state (the entries were
    // deleted while ESTABLISHED).
    assert_eq!(report["churn_by_proto"][0][0], "tcp", "{report}");
    assert_eq!(report["churn_by_proto"][0][1], 40);
    assert_eq!(report["churn_by_proto"][0][2], 10);
    assert_eq!(report["tcp_lifetime_ms"][0][0], "ESTABLISHED", "{report}");
    assert_eq!(report["tcp_lifetime_ms"][0][1]["count"], 10);
}

/// SIGINT or SIGTERM ends a long profile early with the report of what it
/// saw so far, exit 0: the usual way to end one at 3 a.m.
#[test]
fn a_signal_ends_profile_early_with_its_report() {
    let Some(ns) = Netns::new() else {
        return;
    };
    for (sig, flows) in [
        (nix::sys::signal::Signal::SIGINT, 3u16),
        (nix::sys::signal::Signal::SIGTERM, 4),
    ] {
        let mut profile = ns.spawn_ctscope(&["profile", "--duration", "120", "-o", "json"]);
        std::thread::sleep(Duration::from_millis(700));
        for i in 0..flows {
            let sport = (4000 + i).to_string();
            ns.conntrack(&[
                "-I", "-p", "udp", "-s", "10.8.0.1", "-d", "10.8.0.2", "--sport", &sport,
                "--dport", "53", "-t", "600",
            ]);
        }
        std::thread::sleep(Duration::from_millis(500));
        // Panics unless it ends within 5 s of the signal.
        let out = profile.stop(sig);
        assert_eq!(out.code, 0, "{sig}: {out}");
        let report: serde_json::Value = serde_json::from_str(&out.stdout).expect("one JSON object");
        assert_eq!(report["new"], flows, "{sig}: {report}");
        let secs = report["duration_secs"].as_f64().expect("duration_secs");
        assert!(secs > 0.5 && secs < 10.0, "{sig}: {report}");
        ns.conntrack(&["-F"]);
    }
}

/// One section of `profile -o hgrm`: its rows (value, percentile level,
/// total count) and the footer's max and total count.
struct HgrmSection {
    rows: Vec<(f64, f64, u64)>,
    max: f64,
    total: u64,
}

impl HgrmSection {
    /// The value HdrHistogram gives at quantile `q`: the first row whose
    /// level reaches `q` (the last row is the 100 % one, the max).
    fn value_at(&self, q: f64) -> f64 {
        self.rows
            .iter()
            .find(|r| r.1 >= q - 1e-12)
            .or(self.rows.last())
            .map_or(0.0, |r| r.0)
    }
}

/// Splits `-o hgrm` output at its `# NAME (UNIT)` lines and reads each
/// section's table and footer.
fn parse_hgrm(text: &str) -> std::collections::BTreeMap<String, HgrmSection> {
    let mut sections = std::collections::BTreeMap::new();
    let mut name: Option<String> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let n = rest.split(' ').next().expect("a name").to_string();
            sections.insert(
                n.clone(),
                HgrmSection {
                    rows: Vec::new(),
                    max: f64::NAN,
                    total: u64::MAX,
                },
            );
            name = Some(n);
            continue;
        }
        let section = sections
            .get_mut(name.as_deref().expect("a section header first"))
            .expect("section");
        if let Some(rest) = line.strip_prefix("#[Max     =") {
            let (max, total) = rest.split_once(", Total count    =").expect("max line");
            section.max = max.trim().parse().expect("max");
            section.total = total.trim_end_matches(']').trim().parse().expect("total");
            continue;
        }
        let cells: Vec<&str> = line.split_whitespace().collect();
        if line.starts_with('#') || cells.is_empty() || cells[0] == "Value" {
            continue;
        }
        assert!(
            cells.len() == 4 || cells.len() == 3,
            "a row of 4 (3 at 100 %) columns: {line:?}"
        );
        section.rows.push((
            cells[0].parse().expect("value"),
            cells[1].parse().expect("percentile"),
            cells[2].parse().expect("total count"),
        ));
    }
    sections
}

/// `-o hgrm` and `-o json` of the same run agree: two profiles watch the
/// same churn in one namespace and, with nf_conntrack_timestamp=1, each
/// lifetime is the kernel's stop - start from the DESTROY event, the same
/// value for both. Totals, max and the JSON's percentiles all match the
/// hgrm tables.
#[test]
fn hgrm_agrees_with_the_json_report_of_the_same_run() {
    let Some(ns) = Netns::new() else {
        return;
    };
    ns.exec(&["sysctl", "-qw", "net.netfilter.nf_conntrack_timestamp=1"]);
    let mut json = ns.spawn_ctscope(&["profile", "--duration", "6", "-o", "json"]);
    let mut hgrm = ns.spawn_ctscope(&["profile", "--duration", "6", "-o", "hgrm"]);
    ns.wait_for_listeners(2).expect("both profiles listening");
    std::thread::sleep(Duration::from_millis(300));
    ctscope_e2e::spread_lifetimes(&ns);
    let json = json
        .wait_timeout(Duration::from_secs(15))
        .expect("json profile ends");
    let hgrm = hgrm
        .wait_timeout(Duration::from_secs(15))
        .expect("hgrm profile ends");
    assert_eq!(json.code, 0, "{json}");
    assert_eq!(hgrm.code, 0, "{hgrm}");
    let report: serde_json::Value = serde_json::from_str(&json.stdout).expect("one JSON object");
    let sections = parse_hgrm(&hgrm.stdout);
    let names: Vec<&str> = sections.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "delivery_ns",
            "lifetime_ms/tcp",
            "lifetime_ms/udp",
            "tcp_lifetime_ms/ESTABLISHED",
            "tcp_setup_us"
        ],
        "{}",
        hgrm.stdout
    );
    let mut keyed = Vec::new();
    for key in ["lifetime_ms", "tcp_lifetime_ms"] {
        for pair in report[key].as_array().expect("a list") {
            keyed.push((
                format!("{key}/{}", pair[0].as_str().expect("name")),
                &pair[1],
            ));
        }
    }
    assert_eq!(keyed[0].1["count"], 6, "{report}");
    assert_eq!(keyed[1].1["count"], 24, "{report}");
    // The UDP lifetimes span 100 ms to ~2 s: a real spread to compare.
    assert!(keyed[1].1["max"].as_u64().expect("max") >= 1500, "{report}");
    for (name, q) in keyed {
        let s = &sections[&name];
        assert_eq!(s.total, q["count"].as_u64().expect("count"), "{name}");
        assert_eq!(s.rows.last().expect("rows").2, s.total, "{name}");
        assert_eq!(s.max, q["max"].as_f64().expect("max"), "{name}");
        for (key, level) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)] {
            assert_eq!(
                s.value_at(level),
                q[key].as_f64().expect("percentile"),
                "{name} {key}\n{}",
                hgrm.stdout
            );
        }
    }
    // The set-up and delivery times are measured by each process when it
    // reads the events, so only their counts must agree.
    for key in ["tcp_setup_us", "delivery_ns"] {
        assert_eq!(
            sections[key].total,
            report[key]["count"].as_u64().expect("count"),
            "{key}"
        );
    }
}

/// On a terminal, a running profile shows one stderr line rewritten in
/// place (elapsed of total seconds, NEW, DESTROY and lost so far); Ctrl-C
/// erases it and the report of what was seen follows.
#[test]
fn progress_line_on_a_terminal_then_ctrl_c_gives_the_report() {
    let Some(ns) = Netns::new() else {
        return;
    };
    let report = std::env::temp_dir().join(format!("{}-progress.json", ns.name()));
    let tmux = Tmux::start(
        &format!(
            "ip netns exec {} {} profile --duration 60 -o json > {}; echo EXITED=$?; sleep 60",
            ns.name(),
            ctscope_e2e::ctscope_bin_str(),
            report.display()
        ),
        120,
    );
    let (up, screen) = tmux.wait(Duration::from_secs(5), |s| {
        progress_line(s).is_some_and(|l| l.ends_with("/60 s  NEW 0  DESTROY 0  lost 0"))
    });
    assert!(up, "no progress line\n{screen}");
    for i in 0..3u16 {
        let sport = (7000 + i).to_string();
        ns.conntrack(&[
            "-I", "-p", "udp", "-s", "10.6.0.1", "-d", "10.6.0.2", "--sport", &sport, "--dport",
            "53", "-t", "600",
        ]);
    }
    ns.conntrack(&[
        "-D", "-p", "udp", "-s", "10.6.0.1", "-d", "10.6.0.2", "--sport", "7000", "--dport", "53",
    ]);
    let (counted, screen) = tmux.wait(Duration::from_secs(5), |s| {
        progress_line(s).is_some_and(|l| l.ends_with("/60 s  NEW 3  DESTROY 1  lost 0"))
    });
    assert!(counted, "the line did not count the churn\n{screen}");
    // Rewritten in place: its seconds move on, and it stays one line.
    let first = progress_line(&screen).map_or(0, seconds);
    let (moved, screen) = tmux.wait(Duration::from_secs(5), |s| {
        progress_line(s).is_some_and(|l| seconds(l) > first)
    });
    assert!(moved, "the elapsed seconds did not move\n{screen}");
    let lines = screen
        .lines
        .iter()
        .filter(|l| l.contains("profile: "))
        .count();
    assert_eq!(lines, 1, "{screen}");
    tmux.keys(&["C-c"]);
    let (ended, screen) = tmux.wait(Duration::from_secs(5), |s| s.has_line_starting("EXITED="));
    assert!(ended, "profile did not end on Ctrl-C\n{screen}");
    assert!(screen.has_line_starting("EXITED=0"), "{screen}");
    assert!(
        !screen.lines.iter().any(|l| l.contains("profile: ")),
        "the progress line was left behind\n{screen}"
    );
    let text = std::fs::read_to_string(&report).expect("the report file");
    let _ = std::fs::remove_file(&report);
    let report: serde_json::Value = serde_json::from_str(&text).expect("one JSON object");
    assert_eq!(report["new"], 3, "{report}");
    assert_eq!(report["destroy"], 1, "{report}");
}

/// The progress line on the screen, if there is one (the source's start-up
/// line may come before it).
fn progress_line(screen: &ctscope_e2e::Screen) -> Option<&str> {
    screen
        .lines
        .iter()
        .map(String::as_str)
        .find(|l| l.starts_with("profile: "))
}

/// The elapsed seconds of a progress line (`profile: 12/60 s ...`).
fn seconds(line: &str) -> u64 {
    line.strip_prefix("profile: ")
        .and_then(|l| l.split('/').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// "200 ms", "2 s", "50 us", "500 ns" in the chart's labels, as ms.
fn label_ms(label: &str) -> f64 {
    let (n, unit) = label.trim().split_once(' ').expect("NUMBER UNIT");
    let n: f64 = n.parse().expect("a number");
    n * match unit {
        "ns" => 1e-6,
        "us" => 1e-3,
        "ms" => 1.0,
        "s" => 1e3,
        other => panic!("unit {other}"),
    }
}

/// One chart line `LO .. HI  BAR  COUNT`: (lo ms, hi ms, the bar's length
/// in eighths of a cell, count).
fn chart_line(line: &str) -> (f64, f64, u64, u64) {
    let cells: Vec<&str> = line.split_whitespace().collect();
    // LO UNIT .. HI UNIT [BAR] COUNT
    assert_eq!(cells[2], "..", "{line:?}");
    let lo = label_ms(&format!("{} {}", cells[0], cells[1]));
    let hi = label_ms(&format!("{} {}", cells[3], cells[4]));
    let count = cells.last().expect("count").parse().expect("a count");
    let eighths = line
        .chars()
        .map(|c| match c {
            '█' => 8,
            '▉' => 7,
            '▊' => 6,
            '▋' => 5,
            '▌' => 4,
            '▍' => 3,
            '▎' => 2,
            '▏' => 1,
            _ => 0,
        })
        .sum();
    (lo, hi, eighths, count)
}

/// The text report draws each lifetime histogram under its percentile
/// line: one line a 1-2-5 bucket (`LO .. HI  BAR  COUNT`) whose counts add
/// up to the line's count, bars proportional to the counts in eighths of a
/// cell (the largest 40 cells), the max in the last bucket and p50 in the
/// bucket where the running count passes half.
#[test]
fn text_report_charts_each_lifetime_histogram() {
    let Some(ns) = Netns::new() else {
        return;
    };
    ns.exec(&["sysctl", "-qw", "net.netfilter.nf_conntrack_timestamp=1"]);
    let mut profile = ns.spawn_ctscope(&["profile", "--duration", "5"]);
    ns.wait_for_listeners(1).expect("profile listening");
    std::thread::sleep(Duration::from_millis(300));
    ctscope_e2e::spread_lifetimes(&ns);
    let out = profile
        .wait_timeout(Duration::from_secs(15))
        .expect("profile ends");
    assert_eq!(out.code, 0, "{out}");
    let text = &out.stdout;
    let lines: Vec<&str> = text.lines().collect();
    for (proto, expected) in [("udp", 24u64), ("tcp", 6)] {
        let at = lines
            .iter()
            .position(|l| l.starts_with(&format!("  {proto} ")) && l.contains(" count "))
            .unwrap_or_else(|| panic!("no {proto} lifetime line\n{text}"));
        let cells: Vec<&str> = lines[at].split_whitespace().collect();
        let field = |name: &str| -> u64 {
            let i = cells.iter().position(|c| *c == name).expect("field");
            cells[i + 1].trim_end_matches("ms").parse().expect("number")
        };
        assert_eq!(field("count"), expected, "{text}");
        let chart: Vec<(f64, f64, u64, u64)> = lines[at + 1..]
            .iter()
            .take_while(|l| l.starts_with("      ") && l.contains(" .. "))
            .map(|l| chart_line(l))
            .collect();
        assert!(!chart.is_empty(), "no chart under {proto}\n{text}");
        assert_eq!(chart.iter().map(|b| b.3).sum::<u64>(), expected, "{text}");
        let top = chart.iter().map(|b| b.3).max().expect("a bucket");
        for &(lo, hi, eighths, count) in &chart {
            assert!(lo < hi, "{text}");
            // 40 cells of 8 eighths for the largest, rounded up; an eighth
            // at least for any sample.
            let want = (count * 320).div_ceil(top);
            assert_eq!(eighths, want, "{proto} bucket {lo}..{hi}\n{text}");
        }
        assert!(chart.windows(2).all(|w| w[0].1 == w[1].0), "gap\n{text}");
        let last = chart.last().expect("a bucket");
        let max = field("max") as f64;
        assert!(last.0 <= max && max < last.1, "max {max}\n{text}");
        let p50 = field("p50") as f64;
        let mut running = 0;
        let half = chart
            .iter()
            .find(|b| {
                running += b.3;
                running * 2 >= expected
            })
            .expect("half");
        assert!(half.0 <= p50 && p50 < half.1, "p50 {p50}\n{text}");
    }
    // The UDP lifetimes spread over several buckets.
    assert!(text.matches(" .. ").count() >= 4, "{text}");
}
