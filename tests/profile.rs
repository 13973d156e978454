//! `ctscope profile` against real churn in a namespace: the report counts
//! the flows made during the run, and its pressure figures agree with the
//! kernel's.
use std::time::Duration;

use ctscope_e2e::Netns;

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
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(report["new"], 40, "{report}");
    assert_eq!(report["destroy"], 10, "{report}");
    assert_eq!(report["lost"], 0);
    assert_eq!(report["pressure"]["count"], 35, "{report}");
    let count: u64 = ns
        .conntrack(&["-C"])
        .stdout
        .trim()
        .parse()
        .expect("conntrack -C");
    assert_eq!(report["pressure"]["count"], count);
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
