//! `ctscope serve` in a namespace: its scrape passes `promtool check
//! metrics` and agrees with `conntrack -C`/`-S` and with node_exporter's
//! conntrack collector; a real Prometheus scraping it every second sees the
//! table's count and the NEW events of the flows made, exactly, in the
//! first scrape after them, and the lifetimes of the flows flushed, as
//! classic histograms or (asked for by Prometheus with native histograms
//! on, in protobuf) as native ones; `--netns` serves that namespace; a loss is
//! counted and the resync it starts puts the table right. (Bad input,
//! hang-ups, 1,000 scrapes and contrib/: serve_input.rs.)
use std::{
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use ctscope_e2e::{
    NODE_EXPORTER, Netns, PROMETHEUS, SERVE, addr, get, http_get, poll_until, promtool_check,
    quiet_netns, report, sample, start_serve, udp_flows, url_encode, wait_ready,
};
use nix::sys::signal::Signal;

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
    let count = ns.count_entries();
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
    prometheus_scrapes(false);
}

#[test]
fn prometheus_with_native_histograms_reads_them_from_protobuf() {
    prometheus_scrapes(true);
}

/// A real Prometheus scrapes serve every second (asking for protobuf when
/// `native`); checks what it stored against conntrack and the flows made.
fn prometheus_scrapes(native: bool) {
    let Some(ns) = quiet_netns() else {
        return;
    };
    let started = wall_secs();
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
    let mut args = vec![
        "prometheus".to_string(),
        format!("--config.file={}", config.display()),
        format!("--storage.tsdb.path={}", dir.0.join("data").display()),
        format!("--web.listen-address={PROMETHEUS}"),
        "--log.level=warn".to_string(),
    ];
    if native {
        args.push("--enable-feature=native-histograms".to_string());
    }
    let mut prometheus = ns.spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
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
    let count = ns.count_entries();
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
    // Flushing the flows gives each a lifetime: Prometheus holds them as a
    // native histogram when it asked for one, else as classic buckets.
    let flushed = ns.conntrack(&["-F"]);
    assert_eq!(flushed.code, 0, "conntrack -F\n{flushed}");
    let lifetime = "ctscope_connection_lifetime_seconds{protocol=\"udp\"}";
    let (count, other) = if native {
        (
            format!("histogram_count({lifetime})"),
            "ctscope_connection_lifetime_seconds_count{protocol=\"udp\"}".to_string(),
        )
    } else {
        (
            "ctscope_connection_lifetime_seconds_count{protocol=\"udp\"}".to_string(),
            format!("histogram_count({lifetime})"),
        )
    };
    let counted = poll_until(Duration::from_secs(10), || {
        query(&ns, &count) == Some(FLOWS as f64)
    });
    if !counted {
        failures.push(format!(
            "{count}: {:?} 10 s after the flush, {FLOWS} flows were flushed",
            query(&ns, &count)
        ));
    }
    // Stored one way only.
    if let Some(v) = query(&ns, &other) {
        failures.push(format!("{other}: {v}, want no series (native {native})"));
    }
    // Every lifetime is within the test's run; the median is a bucket's
    // worth of one of them.
    let elapsed = wall_secs() - started;
    let quantile = if native {
        format!("histogram_quantile(1, {lifetime})")
    } else {
        "histogram_quantile(1, ctscope_connection_lifetime_seconds_bucket{protocol=\"udp\"})"
            .to_string()
    };
    match query(&ns, &quantile) {
        Some(q) if q > 0.0 && q <= elapsed * 1.2 + 1.0 => {}
        q => {
            let path = format!(
                "/api/v1/query?query={}",
                url_encode("{__name__=~\"ctscope_connection_lifetime.*\"}")
            );
            failures.push(format!(
                "{quantile}: {q:?}, the test ran {elapsed:.1} s; stored:\n{}",
                get(&ns, PROMETHEUS, &path, None).body
            ))
        }
    }
    prometheus.stop(Signal::SIGTERM);
    let out = serve.stop(Signal::SIGTERM);
    if out.code != 0 {
        failures.push(format!("serve on SIGTERM\n{out}"));
    }
    report(10, &failures);
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
    let count = target.count_entries();
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

#[test]
fn a_loss_is_counted_and_the_resync_it_starts_puts_the_table_right() {
    let Some(ns) = quiet_netns() else {
        return;
    };
    // A receive buffer far too small for a burst: the kernel drops events
    // (ENOBUFS). Periodic resyncs are off, so only the loss resyncs.
    let mut serve = start_serve(&ns, &["--resync", "3600", "-b", "4096"]);
    const FLOWS: u64 = 20_000;
    let (made, took) = ns.in_netns(|| udp_flows(FLOWS));
    assert_eq!(made, FLOWS);
    eprintln!("{FLOWS} flows in {took:?}");
    let count = ns.count_entries();
    let mut last = String::new();
    let settled = poll_until(Duration::from_secs(20), || {
        last = get(&ns, SERVE, "/metrics", None).body;
        sample(&last, "ctscope_table_entries") == Some(count)
            && sample(&last, "ctscope_resyncs_total").is_some_and(|n| n >= 1.0)
    });
    let mut failures = Vec::new();
    if !settled {
        failures.push(format!(
            "ctscope's table never matched conntrack -C ({count}):\n{last}"
        ));
    }
    let lost = sample(
        &last,
        "ctscope_events_lost_total{reason=\"netlink_overrun\"}",
    );
    if !lost.is_some_and(|n| n >= 1.0) {
        failures.push(format!(
            "no overrun counted ({lost:?}): the test made no loss"
        ));
    }
    let new = sample(&last, "ctscope_events_total{type=\"new\"}").unwrap_or(0.0);
    if new >= FLOWS as f64 {
        failures.push(format!("{new} NEW events for {FLOWS} flows, yet overruns"));
    }
    let out = serve.stop(Signal::SIGTERM);
    if out.code != 0 {
        failures.push(format!("serve on SIGTERM\n{out}"));
    }
    report(4, &failures);
}

#[test]
fn filters_select_what_the_table_counts_not_the_kernel_gauges() {
    let Some(mut ns) = quiet_netns() else {
        return;
    };
    ns.fill_varied_table();
    let mut serve = start_serve(&ns, &["-p", "tcp"]);
    // Events pass the same filter: one UDP and one TCP entry made now.
    ns.insert("-p udp -s 10.9.0.1 -d 10.9.0.2 --sport 1 --dport 2");
    ns.insert("-p tcp -s 10.9.0.1 -d 10.9.0.2 --sport 1 --dport 2 --state ESTABLISHED");
    let total = ns.count_entries();
    let tcp = ns.conntrack(&["-L", "-p", "tcp"]);
    let tcp = tcp.entries_reported("shown").expect("a count") as f64;
    let mut body = String::new();
    let settled = poll_until(Duration::from_secs(5), || {
        body = get(&ns, SERVE, "/metrics", None).body;
        sample(&body, "ctscope_table_entries") == Some(tcp)
    });
    let mut failures = Vec::new();
    if !settled {
        failures.push(format!(
            "ctscope_table_entries is not {tcp} (tcp only):\n{body}"
        ));
    }
    for (series, want) in [
        ("ctscope_nf_conntrack_entries", total),
        ("ctscope_events_total{type=\"new\"}", 1.0),
        ("ctscope_protocol_entries{protocol=\"tcp\"}", tcp),
    ] {
        let got = sample(&body, series);
        if got != Some(want) {
            failures.push(format!("{series}: {got:?}, want {want}"));
        }
    }
    if body.contains("protocol=\"udp\"") {
        failures.push("UDP entries counted despite -p tcp".into());
    }
    serve.stop(nix::sys::signal::Signal::SIGTERM);
    report(5, &failures);
}
