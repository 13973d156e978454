//! The table reaches nf_conntrack_max: ctscope keeps running and reports
//! the pressure (count against max, early_drop, drop, insert_failed).
//!
//! Since 6.x nf_conntrack_max is one global value (read-only inside a
//! namespace), so this test lowers the host's for a few seconds and puts it
//! back through a guard. It is alone in its test binary: cargo runs test
//! binaries one after the other, so no other test sees the low limit.
use std::time::Duration;

use ctscope_e2e::{ConntrackMax, Netns, ctscope_bin};

#[test]
fn a_full_table_is_reported_not_fatal() {
    let Some(ns) = Netns::new() else {
        return;
    };
    let _max = ConntrackMax::set(64);
    let child = std::process::Command::new(ctscope_bin())
        .args([
            "--netns",
            ns.name(),
            "profile",
            "--duration",
            "3",
            "-o",
            "json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ctscope profile starts");
    std::thread::sleep(Duration::from_millis(700));
    // 400 new UDP flows through the input hook: far past the limit.
    let traffic = ns.exec(&[
        "bash",
        "-c",
        "for p in $(seq 20000 20399); do echo x 2>/dev/null >/dev/udp/127.0.0.1/$p; done; true",
    ]);
    assert_eq!(traffic.code, 0, "{traffic}");
    let out = child.wait_with_output().expect("profile ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ctscope stopped: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let p = &report["pressure"];
    assert_eq!(p["max"], 64, "{report}");
    let count = p["count"].as_u64().expect("count");
    assert!(count <= 64 && count > 0, "{report}");
    let dropped = ["early_drop", "drop", "insert_failed"]
        .iter()
        .map(|k| p[k].as_u64().unwrap_or(0))
        .sum::<u64>();
    assert!(dropped > 0, "a full table dropped nothing? {report}");
    // The kernel makes room by early-dropping unreplied entries: every
    // entry that got in gave a NEW, the evicted ones a DESTROY too.
    let new = report["new"].as_u64().expect("new");
    let destroy = report["destroy"].as_u64().expect("destroy");
    assert!(
        new >= count && new.saturating_sub(destroy) <= count,
        "{report}"
    );
}
