//! `ctscope serve` against bad input and rough scrapers: a bad `--listen`,
//! a port in use and a missing privilege fail in one line; scrapers that
//! hang up mid-response and 1,000 scrapes in a row leave it healthy;
//! `/healthz` answers 503 while the event loop is stuck (injected) and 200
//! again once it turns, with nothing lost; and
//! contrib/ (alert rules, scrape configuration, dashboard) checks out with
//! promtool and names only metrics a real scrape has.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use ctscope_e2e::{
    Netns, SERVE, addr, check_histograms, ctscope_bin_str, get, http_get, poll_until,
    promtool_check, quiet_netns, report, sample, start_serve, udp_flows, wait_ready,
};
use nix::sys::signal::Signal;

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
    // This host's kernel has no kprobes: asking for eBPF only is exit 1,
    // one line naming why.
    let out = ns.ctscope(&["serve", "--source", "ebpf"]);
    if let Err(e) = out.one_line_error(1) {
        failures.push(format!("serve --source ebpf: {e}"));
    } else if !out.stderr.contains("eBPF source unavailable") {
        failures.push(format!("the message does not say why\n{out}"));
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
    report(10, &failures);
}

/// The capabilities contrib/ctscope-serve.service grants, as setpriv
/// names them (`net_admin`, ...).
fn unit_capabilities() -> Vec<String> {
    let unit = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../contrib/ctscope-serve.service"),
    )
    .expect("contrib/ctscope-serve.service");
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("an AmbientCapabilities= line");
    line.split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_ascii_lowercase())
        .collect()
}

#[test]
fn the_units_capabilities_are_enough_and_net_admin_is_needed() {
    let Some(mut ns) = quiet_netns() else {
        return;
    };
    ns.fill_varied_table();
    let caps = unit_capabilities();
    assert!(caps.contains(&"net_admin".to_string()), "{caps:?}");
    let bin = ctscope_bin_str();
    // As the unit runs it: an unprivileged user, no new privileges, only
    // these capabilities (ambient, and the bounding set).
    let setpriv = |caps: &[String]| -> Vec<String> {
        let list = caps
            .iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut argv: Vec<String> = [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--no-new-privs",
        ]
        .map(String::from)
        .to_vec();
        if !caps.is_empty() {
            argv.push(format!("--inh-caps=-all,{list}"));
            argv.push(format!("--ambient-caps={list}"));
            argv.push(format!("--bounding-set=-all,{list}"));
        }
        argv.extend([bin.clone(), "serve".into()]);
        argv
    };
    let mut failures = Vec::new();
    let argv = setpriv(&caps);
    let mut serve = ns.spawn(&argv.iter().map(String::as_str).collect::<Vec<_>>());
    if let Err(e) = wait_ready(&ns, &mut serve, SERVE, "/healthz") {
        panic!("with the unit's capabilities {caps:?}: {e}");
    }
    let count = ns.count_entries();
    let body = get(&ns, SERVE, "/metrics", None).body;
    for series in ["ctscope_nf_conntrack_entries", "ctscope_table_entries"] {
        if sample(&body, series) != Some(count) {
            failures.push(format!(
                "{series}: {:?}, conntrack -C {count}",
                sample(&body, series)
            ));
        }
    }
    if sample(&body, "ctscope_kernel_read_errors_total") != Some(0.0) {
        failures.push("the kernel's figures could not be read".into());
    }
    serve.stop(Signal::SIGTERM);
    // Without CAP_NET_ADMIN: one line naming it, exit 1.
    let fewer: Vec<String> = caps.iter().filter(|c| *c != "net_admin").cloned().collect();
    let argv = setpriv(&fewer);
    let out = ns.exec(&argv.iter().map(String::as_str).collect::<Vec<_>>());
    if let Err(e) = out.one_line_error(1) {
        failures.push(format!("without net_admin: {e}"));
    } else if !out.stderr.contains("CAP_NET_ADMIN") {
        failures.push(format!("the message does not name CAP_NET_ADMIN\n{out}"));
    }
    report(4, &failures);
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
fn healthz_fails_while_the_event_loop_is_stuck_and_recovers() {
    let Some(ns) = quiet_netns() else {
        return;
    };
    // The test-only switch (fault-injection builds): the event loop blocks
    // for 14 s after its first event; /healthz fails past 10 s of that.
    let mut serve = ns.spawn(&[
        "env",
        "CTSCOPE_FAULT_STALL_SECS=14",
        &ctscope_bin_str(),
        "serve",
    ]);
    if let Err(e) = wait_ready(&ns, &mut serve, SERVE, "/healthz") {
        panic!("{e}");
    }
    let mut failures = Vec::new();
    let (made, _) = ns.in_netns(|| udp_flows(20));
    assert_eq!(made, 20);
    let stuck_at = Instant::now();
    let mut unavailable = None;
    let failed = poll_until(Duration::from_secs(20), || {
        let r = get(&ns, SERVE, "/healthz", None);
        let hit = r.status == 503;
        if hit {
            unavailable = Some(r.body);
        }
        hit
    });
    let waited = stuck_at.elapsed();
    match unavailable {
        Some(body) if failed && body.starts_with("the event loop has not run for 1") => {
            // Not before the 10 s limit.
            if waited < Duration::from_secs(9) {
                failures.push(format!("503 after {waited:?}, before the 10 s limit"));
            }
        }
        other => failures.push(format!("no 503 within 20 s of the stall: {other:?}")),
    }
    // Metrics keep answering meanwhile (the HTTP side is not stuck).
    let r = get(&ns, SERVE, "/metrics", None);
    if r.status != 200 {
        failures.push(format!("/metrics during the stall: {}", r.status));
    }
    let recovered = poll_until(Duration::from_secs(15), || {
        get(&ns, SERVE, "/healthz", None).status == 200
    });
    if !recovered {
        failures.push("/healthz still failing 15 s into the stall's end".into());
    }
    // The events of the stall were read afterwards, none lost.
    let counted = poll_until(Duration::from_secs(5), || {
        sample(
            &get(&ns, SERVE, "/metrics", None).body,
            "ctscope_events_total{type=\"new\"}",
        ) == Some(20.0)
    });
    if !counted {
        failures.push(format!(
            "NEW events after the stall: {:?}, 20 flows were made",
            sample(
                &get(&ns, SERVE, "/metrics", None).body,
                "ctscope_events_total{type=\"new\"}"
            )
        ));
    }
    let out = serve.stop(Signal::SIGTERM);
    if out.code != 0 {
        failures.push(format!("serve on SIGTERM\n{out}"));
    }
    report(5, &failures);
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
    // Other methods: 405 naming GET and HEAD; HEAD: the headers only.
    let raw = |request: &'static [u8]| {
        ns.in_netns(|| {
            let mut s = TcpStream::connect(at)?;
            s.write_all(request)?;
            let mut answer = String::new();
            s.read_to_string(&mut answer)?;
            Ok::<_, std::io::Error>(answer)
        })
    };
    match raw(b"POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n") {
        Ok(a)
            if a.starts_with("HTTP/1.0 405")
                && a.to_ascii_lowercase().contains("allow: get, head") => {}
        other => failures.push(format!("POST /metrics: {other:?}")),
    }
    match raw(b"HEAD /metrics HTTP/1.0\r\n\r\n") {
        Ok(a) if a.starts_with("HTTP/1.0 200") && a.ends_with("\r\n\r\n") => {}
        other => failures.push(format!("HEAD /metrics: {other:?}")),
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
    report(7, &failures);
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
    // The systemd unit, with ExecStart pointing at the binary under test.
    let unit_dir = std::env::temp_dir().join(format!("{}-unit", ns.name()));
    std::fs::create_dir_all(&unit_dir).expect("temp dir");
    let unit = std::fs::read_to_string(contrib.join("ctscope-serve.service"))
        .expect("ctscope-serve.service")
        .replace("/usr/local/bin/ctscope", &ctscope_bin_str());
    let unit_path = unit_dir.join("ctscope-serve.service");
    std::fs::write(&unit_path, unit).expect("write the unit");
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit_path)
        .output()
        .expect("systemd-analyze (apt-get install systemd)");
    let said = String::from_utf8_lossy(&verify.stderr).into_owned();
    if !verify.status.success() || said.contains("ctscope-serve.service") {
        failures.push(format!("systemd-analyze verify: {}\n{said}", verify.status));
    }
    let _ = std::fs::remove_dir_all(&unit_dir);
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
    report(7, &failures);
}
