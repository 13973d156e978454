//! `ctscope serve` in a namespace: its scrape passes `promtool check
//! metrics` and agrees with `conntrack -C`/`-S` and with node_exporter's
//! conntrack collector; a real Prometheus scraping it every second sees the
//! table's count and the NEW events of the flows made, exactly, in the
//! first scrape after them; bad input fails in one line; disconnecting
//! scrapers and 1,000 scrapes in a row leave it healthy.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use ctscope_e2e::{
    Background, HttpResponse, Netns, ctscope_bin_str, http_get, poll_until, report, sample,
    udp_flows, url_encode,
};
use nix::sys::signal::Signal;

/// serve's default address.
const SERVE: &str = "127.0.0.1:10318";
/// Where the tests' Prometheus and node_exporter listen.
const PROMETHEUS: &str = "127.0.0.1:9090";
const NODE_EXPORTER: &str = "127.0.0.1:9100";

/// The HTTP traffic of the tests makes no conntrack entries, so the table
/// holds only what a test made and `conntrack -C` stays still.
const NOTRACK_HTTP: &str = "
table inet ctscope_serve_http {
    chain pre {
        type filter hook prerouting priority raw; policy accept;
        tcp dport { 9090, 9100, 10318 } notrack
        tcp sport { 9090, 9100, 10318 } notrack
    }
    chain out {
        type filter hook output priority raw; policy accept;
        tcp dport { 9090, 9100, 10318 } notrack
        tcp sport { 9090, 9100, 10318 } notrack
    }
}
";

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

/// A namespace whose HTTP traffic is not tracked.
fn quiet_netns() -> Option<Netns> {
    let ns = Netns::new()?;
    ns.nft(NOTRACK_HTTP);
    Some(ns)
}

/// `GET path` inside the namespace.
#[track_caller]
fn get(ns: &Netns, at: &str, path: &str, accept: Option<&str>) -> HttpResponse {
    let target = addr(at);
    ns.in_netns(|| http_get(target, path, accept))
        .unwrap_or_else(|e| panic!("GET http://{at}{path}: {e}"))
}

/// Waits up to 20 s until `GET http://at/path` answers 200; `Err` with
/// what the program printed if it does not (or exits).
fn wait_ready(ns: &Netns, program: &mut Background, at: &str, path: &str) -> Result<(), String> {
    let target = addr(at);
    let ready = poll_until(Duration::from_secs(20), || {
        !program.is_running()
            || ns
                .in_netns(|| http_get(target, path, None))
                .is_ok_and(|r| r.status == 200)
    });
    if ready && program.is_running() {
        return Ok(());
    }
    let out = program.stop(Signal::SIGKILL);
    Err(format!(
        "{} did not answer on http://{at}{path}\n{out}",
        program.command()
    ))
}

/// Starts `ctscope serve ARGS` and waits until /healthz answers.
#[track_caller]
fn start_serve(ns: &Netns, args: &[&str]) -> Background {
    let mut serve = ns.spawn_ctscope(&[&["serve"], args].concat());
    if let Err(e) = wait_ready(ns, &mut serve, SERVE, "/healthz") {
        panic!("{e}");
    }
    serve
}

/// `promtool check metrics` on a scrape's body: `Err` with its complaints.
fn promtool_check(body: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run promtool (apt-get install prometheus): {e}"))?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .map_err(|e| format!("promtool stdin: {e}"))?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "promtool check metrics failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `conntrack ARGS` in the namespace: the number of entries it listed.
fn conntrack_count(ns: &Netns, args: &[&str]) -> f64 {
    let out = ns.conntrack(&[&["-L"], args].concat());
    out.entries_reported("shown")
        .unwrap_or_else(|| panic!("no count from conntrack -L {args:?}\n{out}")) as f64
}

/// `conntrack -S`, summed over CPUs: `(name, sum)`.
fn conntrack_stats(ns: &Netns) -> Vec<(String, f64)> {
    let out = ns.conntrack(&["-S"]);
    let mut sums: Vec<(String, f64)> = Vec::new();
    for (k, v) in out
        .stdout
        .split_whitespace()
        .filter_map(|t| t.split_once('='))
        .filter(|(k, _)| *k != "cpu")
    {
        let v: f64 = v
            .parse()
            .unwrap_or_else(|_| panic!("conntrack -S: {k}={v}"));
        match sums.iter_mut().find(|(n, _)| n == k) {
            Some((_, s)) => *s += v,
            None => sums.push((k.to_string(), v)),
        }
    }
    sums
}

#[test]
fn a_scrape_passes_promtool_and_agrees_with_conntrack() {
    let Some(mut ns) = quiet_netns() else {
        return;
    };
    ns.fill_varied_table();
    let mut serve = start_serve(&ns, &[]);
    let mut failures = Vec::new();
    let plain = get(&ns, SERVE, "/metrics", None);
    let body = &plain.body;
    if plain.status != 200
        || !plain
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4"))
    {
        failures.push(format!("plain scrape: {plain:?}"));
    }
    if let Err(e) = promtool_check(body) {
        failures.push(e);
    }
    let count: f64 = ns
        .conntrack(&["-C"])
        .stdout
        .trim()
        .parse()
        .expect("conntrack -C");
    let mut expect = |series: &str, want: f64| match sample(body, series) {
        Some(got) if got == want => {}
        got => failures.push(format!("{series}: {got:?}, want {want}")),
    };
    expect("ctscope_nf_conntrack_entries", count);
    expect("ctscope_table_entries", count);
    let max: f64 = ns
        .exec(&["sysctl", "-n", "net.netfilter.nf_conntrack_max"])
        .stdout
        .trim()
        .parse()
        .expect("nf_conntrack_max");
    expect("ctscope_nf_conntrack_entries_limit", max);
    for (name, sum) in conntrack_stats(&ns) {
        if name == "error" {
            continue;
        }
        expect(&format!("ctscope_nf_conntrack_stat_{name}"), sum);
    }
    expect(
        "ctscope_protocol_entries{protocol=\"tcp\"}",
        conntrack_count(&ns, &["-p", "tcp"]),
    );
    expect(
        "ctscope_protocol_entries{protocol=\"udp\"}",
        conntrack_count(&ns, &["-p", "udp"]),
    );
    for state in ["ESTABLISHED", "TIME_WAIT", "SYN_SENT"] {
        expect(
            &format!("ctscope_tcp_state_entries{{state=\"{state}\"}}"),
            conntrack_count(&ns, &["-p", "tcp", "--state", state]),
        );
    }
    // Whole-entry zones (conntrack prints them as a bare zone=N).
    let listing = ns.conntrack(&["-L"]).stdout;
    for zone in [5, 7] {
        let tag = format!("zone={zone}");
        let n = listing
            .lines()
            .filter(|l| l.split_whitespace().any(|t| t == tag))
            .count();
        expect(
            &format!("ctscope_zone_entries{{zone=\"{zone}\"}}"),
            n as f64,
        );
    }
    expect("ctscope_events_total{type=\"new\"}", 0.0);
    expect(
        "ctscope_source_info{source=\"netlink\",requested=\"auto\",version=\"0.1.0\"}",
        1.0,
    );
    for series in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_cpu_seconds_total",
    ] {
        if sample(body, series).is_none() {
            failures.push(format!("no {series}"));
        }
    }
    // OpenMetrics when the scraper asks for it, as Prometheus does.
    let om = get(
        &ns,
        SERVE,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    );
    if !om
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/openmetrics-text"))
        || !om.body.ends_with("# EOF\n")
        || sample(&om.body, "ctscope_nf_conntrack_entries") != Some(count)
    {
        failures.push(format!(
            "OpenMetrics scrape: {:?}\n{}",
            om.header("content-type"),
            om.body
        ));
    }
    let health = get(&ns, SERVE, "/healthz", None);
    if health.status != 200 || health.body != "ok\n" {
        failures.push(format!("/healthz: {health:?}"));
    }
    if get(&ns, SERVE, "/nothing", None).status != 404 {
        failures.push("/nothing is not a 404".into());
    }
    let out = serve.stop(Signal::SIGTERM);
    if out.code != 0 || out.stderr.contains("panicked") {
        failures.push(format!("serve did not end cleanly on SIGTERM\n{out}"));
    }
    report(24, &failures);
}

#[test]
fn node_exporter_names_agree_with_node_exporter() {
    let Some(mut ns) = quiet_netns() else {
        return;
    };
    ns.fill_varied_table();
    let mut serve = start_serve(&ns, &["--node-exporter-names"]);
    let mut node = ns.spawn(&[
        "prometheus-node-exporter",
        "--collector.disable-defaults",
        "--collector.conntrack",
        &format!("--web.listen-address={NODE_EXPORTER}"),
    ]);
    if let Err(e) = wait_ready(&ns, &mut node, NODE_EXPORTER, "/metrics") {
        panic!("{e} (apt-get install prometheus-node-exporter)");
    }
    let ours = get(&ns, SERVE, "/metrics", None).body;
    let theirs = get(&ns, NODE_EXPORTER, "/metrics", None).body;
    let mut failures = Vec::new();
    if sample(&ours, "ctscope_nf_conntrack_entries").is_some() {
        failures.push("--node-exporter-names still shows ctscope_nf_conntrack_entries".into());
    }
    let names: Vec<&str> = theirs
        .lines()
        .filter(|l| l.starts_with("node_nf_conntrack_"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    if names.len() < 10 {
        failures.push(format!("node_exporter shows only {names:?}"));
    }
    for name in &names {
        let (a, b) = (sample(&ours, name), sample(&theirs, name));
        if a.is_none() || a != b {
            failures.push(format!("{name}: ctscope {a:?}, node_exporter {b:?}"));
        }
    }
    node.stop(Signal::SIGTERM);
    serve.stop(Signal::SIGTERM);
    report(names.len().max(1), &failures);
}

/// A temporary directory for Prometheus, removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Prometheus's answer to an instant query: the first result's value.
fn query(ns: &Netns, promql: &str) -> Option<f64> {
    let path = format!("/api/v1/query?query={}", url_encode(promql));
    let r = get(ns, PROMETHEUS, &path, None);
    let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

fn wall_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[test]
fn prometheus_sees_the_count_and_the_new_flows_in_the_next_scrape() {
    let Some(ns) = quiet_netns() else {
        return;
    };
    let mut serve = start_serve(&ns, &["--resync", "2"]);
    let dir = TempDir(std::env::temp_dir().join(format!("{}-prometheus", ns.name())));
    std::fs::create_dir_all(dir.0.join("data")).expect("temp dir");
    let config = dir.0.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  \
             - job_name: ctscope\n    static_configs:\n      - targets: ['{SERVE}']\n"
        ),
    )
    .expect("prometheus.yml");
    let mut prometheus = ns.spawn(&[
        "prometheus",
        &format!("--config.file={}", config.display()),
        &format!("--storage.tsdb.path={}", dir.0.join("data").display()),
        &format!("--web.listen-address={PROMETHEUS}"),
        "--log.level=warn",
    ]);
    if let Err(e) = wait_ready(&ns, &mut prometheus, PROMETHEUS, "/-/ready") {
        panic!("{e} (apt-get install prometheus)");
    }
    let new = "ctscope_events_total{type=\"new\"}";
    assert!(
        poll_until(Duration::from_secs(20), || query(&ns, new).is_some()),
        "Prometheus has no sample of {new} after 20 s"
    );
    let new_before = query(&ns, new).expect("a sample");
    const FLOWS: u64 = 300;
    let (made, _) = ns.in_netns(|| udp_flows(FLOWS));
    assert_eq!(made, FLOWS);
    let count: f64 = ns
        .conntrack(&["-C"])
        .stdout
        .trim()
        .parse()
        .expect("conntrack -C");
    assert_eq!(
        count, FLOWS as f64,
        "the namespace holds only the flows made"
    );
    // The first scrape that starts after the events were read (the feeder
    // publishes every 250 ms; 0.5 s leaves room on a busy machine) must
    // show them all.
    let done = wall_secs() + 0.5;
    let scraped_after = poll_until(Duration::from_secs(10), || {
        query(&ns, &format!("timestamp({new})")).is_some_and(|t| t >= done)
    });
    assert!(scraped_after, "no scrape within 10 s of the traffic");
    let mut failures = Vec::new();
    let entries = query(&ns, "ctscope_nf_conntrack_entries");
    if entries != Some(count) {
        failures.push(format!(
            "ctscope_nf_conntrack_entries {entries:?}, conntrack -C {count}"
        ));
    }
    let new_after = query(&ns, new);
    if new_after.map(|n| n - new_before) != Some(FLOWS as f64) {
        failures.push(format!(
            "{new} went from {new_before} to {new_after:?}, {FLOWS} flows were made"
        ));
    }
    for (promql, want) in [
        ("up{job=\"ctscope\"}", 1.0),
        ("sum(ctscope_events_lost_total)", 0.0),
        ("ctscope_table_entries", count),
        ("ctscope_protocol_entries{protocol=\"udp\"}", count),
        ("count(ctscope_source_info{source=\"netlink\"})", 1.0),
    ] {
        let got = query(&ns, promql);
        if got != Some(want) {
            failures.push(format!("{promql}: {got:?}, want {want}"));
        }
    }
    // Resyncs run every 2 s and find nothing the events missed.
    let resyncs_ok = poll_until(Duration::from_secs(10), || {
        query(&ns, "ctscope_resyncs_total").is_some_and(|n| n >= 1.0)
    });
    let drift = query(&ns, "sum(ctscope_resync_drift_entries_total)");
    if !resyncs_ok || drift != Some(0.0) {
        failures.push(format!("resyncs {resyncs_ok}, drift {drift:?}"));
    }
    prometheus.stop(Signal::SIGTERM);
    let out = serve.stop(Signal::SIGTERM);
    if out.code != 0 {
        failures.push(format!("serve on SIGTERM\n{out}"));
    }
    report(10, &failures);
}

#[test]
fn bad_listen_port_in_use_and_no_privilege_fail_in_one_line() {
    let Some(ns) = quiet_netns() else {
        return;
    };
    let mut failures = Vec::new();
    for args in [
        &["--listen", "nonsense"][..],
        &["--listen", "127.0.0.1:99999"],
        &["--listen", "300.1.1.1:80"],
        &["--top-talkers", "5000"],
        &["--resync", "0"],
        &["--all-netns"],
    ] {
        if let Err(e) = ns.ctscope(&[&["serve"], args].concat()).one_line_error(2) {
            failures.push(format!("serve {args:?}: {e}"));
        }
    }
    // The port is taken by a listener inside the namespace.
    let taken = addr(SERVE);
    let holder = ns.in_netns(|| std::net::TcpListener::bind(taken).expect("bind"));
    let out = ns.ctscope(&["serve"]);
    if let Err(e) = out.one_line_error(1) {
        failures.push(format!("port in use: {e}"));
    } else if !out.stderr.contains("10318") || !out.stderr.contains("in use") {
        failures.push(format!("the message names neither the port nor why\n{out}"));
    }
    drop(holder);
    let bin = ctscope_bin_str();
    let out = ns.exec(&[
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        &bin,
        "serve",
    ]);
    if let Err(e) = out.one_line_error(1) {
        failures.push(format!("unprivileged: {e}"));
    } else if !out.stderr.contains("CAP_NET_ADMIN") {
        failures.push(format!("the message does not name CAP_NET_ADMIN\n{out}"));
    }
    report(9, &failures);
}

/// A client that sends a request, reads a little of the answer and resets
/// the connection.
fn hang_up_mid_response(at: SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect(at)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut some = [0u8; 100];
    s.read_exact(&mut some)?;
    // SO_LINGER 0: close sends a reset, and the rest of the answer fails.
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a linger struct of the size passed.
    let set = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if set != 0 {
        return Err(std::io::Error::last_os_error());
    }
    drop(s);
    Ok(())
}

#[test]
fn disconnecting_scrapers_and_1000_scrapes_leave_it_healthy() {
    let Some(mut ns) = quiet_netns() else {
        return;
    };
    ns.fill_varied_table();
    let mut serve = start_serve(&ns, &["--top-talkers", "3"]);
    let at = addr(SERVE);
    let fds = |ns: &Netns| sample(&get(ns, SERVE, "/metrics", None).body, "process_open_fds");
    let fds_before = fds(&ns);
    let started = Instant::now();
    let (ok, bad) = ns.in_netns(|| {
        let (mut ok, mut bad) = (0, Vec::new());
        for i in 0..1000 {
            match http_get(at, "/metrics", None) {
                Ok(r) if r.status == 200 && r.body.contains("ctscope_nf_conntrack_entries ") => {
                    ok += 1
                }
                other => bad.push(format!("scrape {i}: {other:?}")),
            }
        }
        (ok, bad)
    });
    let took = started.elapsed();
    let mut failures = bad;
    failures.truncate(5);
    if ok != 1000 {
        failures.push(format!("{ok} of 1000 scrapes answered"));
    }
    eprintln!("1000 scrapes in {took:?}");
    let hung = ns.in_netns(|| {
        let mut errors = Vec::new();
        for _ in 0..50 {
            if let Err(e) = hang_up_mid_response(at) {
                errors.push(e.to_string());
            }
            // Half a request, then gone.
            if let Ok(mut s) = TcpStream::connect(at) {
                let _ = s.write_all(b"GET /metr");
            }
        }
        errors
    });
    if !hung.is_empty() {
        failures.push(format!("hanging up: {hung:?}"));
    }
    let health = get(&ns, SERVE, "/healthz", None);
    if health.status != 200 || !serve.is_running() {
        failures.push(format!("unhealthy after: {health:?}"));
    }
    let scrape = get(&ns, SERVE, "/metrics", None);
    if let Err(e) = promtool_check(&scrape.body) {
        failures.push(e);
    }
    if sample(
        &scrape.body,
        "ctscope_top_talker_entries{direction=\"source\",address=\"127.0.0.1\"}",
    )
    .is_none()
    {
        failures.push(format!("no top talker 127.0.0.1 in\n{}", scrape.body));
    }
    // No descriptor leaks (the half-open connections have ended by now,
    // or will within the header timeout: allow a few).
    let settled = poll_until(Duration::from_secs(5), || {
        fds(&ns)
            .zip(fds_before)
            .is_some_and(|(after, before)| after <= before + 2.0)
    });
    if !settled {
        failures.push(format!(
            "open fds {fds_before:?} before, {:?} after",
            fds(&ns)
        ));
    }
    let out = serve.stop(Signal::SIGTERM);
    if out.code != 0 || out.stderr.contains("panicked") {
        failures.push(format!("serve on SIGTERM\n{out}"));
    }
    report(6, &failures);
}

/// `Err` unless every histogram's buckets only grow and its `+Inf` bucket
/// equals its count (series told apart by their labels but `le`).
fn check_histograms(body: &str) -> Result<usize, String> {
    let mut series: Vec<(String, Vec<f64>)> = Vec::new();
    for l in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((head, value)) = l.rsplit_once(' ') else {
            continue;
        };
        let value: f64 = value.parse().map_err(|_| format!("bad value in `{l}`"))?;
        let key = if let Some(at) = head.find("_bucket{") {
            // The family and its labels without le="...".
            let labels: Vec<&str> = head[at + 8..]
                .trim_end_matches('}')
                .split(',')
                .filter(|p| !p.starts_with("le="))
                .collect();
            format!("{}{{{}}}", &head[..at], labels.join(","))
        } else if let Some(at) = head.find("_count") {
            let labels = head[at + 6..].trim_start_matches('{').trim_end_matches('}');
            let key = format!("{}{{{labels}}}", &head[..at]);
            match series.iter().find(|(k, _)| *k == key) {
                Some((_, b)) if b.last() == Some(&value) => continue,
                Some((_, b)) => return Err(format!("{key}: +Inf {:?} != count {value}", b.last())),
                None => continue,
            }
        } else {
            continue;
        };
        match series.iter_mut().find(|(k, _)| *k == key) {
            Some((_, b)) => {
                if b.last().is_some_and(|last| value < *last) {
                    return Err(format!("{key}: a bucket shrinks: {l}"));
                }
                b.push(value);
            }
            None => series.push((key, vec![value])),
        }
    }
    Ok(series.len())
}

/// The metric names an expression or a rule file refers to (`ctscope_*`,
/// `process_*`), histogram series reduced to their family.
fn metric_names(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|t| t.starts_with("ctscope_") || t.starts_with("process_"))
        // Prefixes in prose ("ctscope_nf_conntrack_*").
        .filter(|t| !t.ends_with('_'))
        .map(|t| t.trim_end_matches("_bucket").to_string())
        .collect();
    names.sort();
    names.dedup();
    names
}

#[test]
fn contrib_rules_config_and_dashboard_check_out_against_a_real_scrape() {
    let Some(mut ns) = quiet_netns() else {
        return;
    };
    let contrib = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../contrib");
    let mut failures = Vec::new();
    for args in [
        &["check", "rules", "ctscope-alerts.yml"][..],
        &["test", "rules", "ctscope-alerts.test.yml"],
        &["check", "config", "prometheus.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&contrib)
            .output()
            .expect("promtool (apt-get install prometheus)");
        if !out.status.success() {
            failures.push(format!(
                "promtool {args:?}: {}\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    // Every metric the rules and the dashboard use is one serve exports
    // (the eBPF delivery histogram only with the eBPF source).
    ns.fill_varied_table();
    let mut serve = start_serve(&ns, &[]);
    // A connection comes and goes, so the lifetime histogram has a series
    // (entries made before any event listener send no DESTROY).
    ns.insert("-p udp -s 10.9.0.1 -d 10.9.0.2 --sport 1 --dport 2");
    ns.conntrack(&["-D", "-p", "udp", "-s", "10.9.0.1"])
        .expect_code(0);
    let ended = poll_until(Duration::from_secs(5), || {
        get(&ns, SERVE, "/metrics", None)
            .body
            .contains("ctscope_connection_lifetime_seconds_count{protocol=\"udp\"} 1")
    });
    if !ended {
        failures.push("no udp lifetime 5 s after its DESTROY".into());
    }
    let body = get(&ns, SERVE, "/metrics", None).body;
    serve.stop(Signal::SIGTERM);
    match check_histograms(&body) {
        Ok(n) if n >= 2 => {}
        other => failures.push(format!("histograms: {other:?}\n{body}")),
    }
    let exported: Vec<String> = body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|n| {
            n.trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count")
                .to_string()
        })
        .collect();
    let read = |name: &str| {
        std::fs::read_to_string(contrib.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("grafana-dashboard.json")).expect("the dashboard is JSON");
    let mut exprs = String::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push_str(target["expr"].as_str().unwrap_or(""));
            exprs.push('\n');
        }
    }
    let used = [
        metric_names(&exprs),
        metric_names(&read("ctscope-alerts.yml")),
    ]
    .concat();
    if used.len() < 10 {
        failures.push(format!("only {used:?} found in the dashboard and rules"));
    }
    for name in used {
        if name != "ctscope_event_delivery_seconds" && !exported.contains(&name) {
            failures.push(format!(
                "{name} is used in contrib/ but serve does not export it"
            ));
        }
    }
    report(6, &failures);
}

#[test]
fn with_netns_it_serves_that_namespace_and_ends_when_it_is_deleted() {
    let Some(outside) = quiet_netns() else {
        return;
    };
    let Some(mut target) = quiet_netns() else {
        return;
    };
    target.fill_varied_table();
    // Started in one namespace, watching another: the listener, the event
    // socket, the dumps and the scrapes' ctnetlink requests (on threads
    // made after the switch) are all the target's.
    let mut serve = outside.spawn_ctscope(&["--netns", target.name(), "serve"]);
    if let Err(e) = wait_ready(&target, &mut serve, SERVE, "/healthz") {
        panic!("{e}");
    }
    let mut failures = Vec::new();
    let body = get(&target, SERVE, "/metrics", None).body;
    let count: f64 = target
        .conntrack(&["-C"])
        .stdout
        .trim()
        .parse()
        .expect("conntrack -C");
    for series in ["ctscope_nf_conntrack_entries", "ctscope_table_entries"] {
        let got = sample(&body, series);
        if got != Some(count) {
            failures.push(format!(
                "{series}: {got:?}, conntrack -C in the target {count}"
            ));
        }
    }
    let at = addr(SERVE);
    if outside.in_netns(|| http_get(at, "/healthz", None)).is_ok() {
        failures.push("serve also answers in the namespace it was started in".into());
    }
    ctscope_e2e::host(&["ip", "netns", "del", target.name()]).expect_code(0);
    let gone = format!("was deleted (/run/netns/{} is gone)", target.name());
    match serve.wait_timeout(Duration::from_secs(5)) {
        Some(out) if out.code == 1 && out.stderr.trim_end().ends_with(&gone) => {}
        Some(out) => failures.push(format!("after the namespace was deleted:\n{out}")),
        None => failures.push("serve still runs 5 s after its namespace was deleted".into()),
    }
    report(4, &failures);
}
