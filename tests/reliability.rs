//! What ctscope does when the world misbehaves: the watched namespace is
//! deleted, the output is closed early, the user lacks privileges.
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use ctscope_e2e::{Netns, ctscope_bin};

/// Waits for a child with a deadline; kills it and fails past it.
fn wait_within(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("still running after {limit:?}: it hangs");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn deleting_the_watched_namespace_ends_long_commands_with_one_line() {
    for args in [&["events"][..], &["profile", "--duration", "60"][..]] {
        let Some(ns) = Netns::new() else {
            return;
        };
        let mut child = Command::new(ctscope_bin())
            .args(["--netns", ns.name()])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ctscope starts");
        std::thread::sleep(Duration::from_millis(800));
        let del = Command::new("ip")
            .args(["netns", "del", ns.name()])
            .status()
            .expect("ip netns del");
        assert!(del.success());
        let status = wait_within(&mut child, Duration::from_secs(5));
        let mut err = String::new();
        use std::io::Read as _;
        child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut err)
            .expect("read stderr");
        assert_eq!(status.code(), Some(1), "{args:?}: {err}");
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.contains("network namespace") && last.contains("was deleted"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn closed_output_ends_quietly() {
    let Some(ns) = Netns::with_varied_table() else {
        return;
    };
    let bin = ctscope_bin();
    let bin = bin.to_str().expect("utf-8 path");
    // list | head -1, and events | head -1 with an event to print.
    let script = format!(
        "set -o pipefail; {bin} list | head -1 >/dev/null; echo list=$?; \
         ( {bin} events --source netlink | head -1 >/dev/null; echo events=$? ) & \
         sleep 0.7; conntrack -I -p udp -s 10.5.0.1 -d 10.5.0.2 --sport 1 --dport 2 -t 60 \
         >/dev/null 2>&1; sleep 0.3; \
         conntrack -I -p udp -s 10.5.0.1 -d 10.5.0.2 --sport 3 --dport 4 -t 60 \
         >/dev/null 2>&1; wait"
    );
    let out = ns.exec(&["bash", "-c", &script]);
    assert!(
        out.stdout.contains("list=0"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stdout.contains("events=0"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    assert!(!out.stderr.contains("Broken pipe"), "{}", out.stderr);
}

#[test]
fn every_command_unprivileged_exits_1_with_one_line() {
    if std::env::var_os("CTSCOPE_SKIP_NETNS").is_some() {
        eprintln!("skipped: CTSCOPE_SKIP_NETNS is set");
        return;
    }
    let bin = ctscope_bin();
    for args in [
        &["list"][..],
        &[
            "get", "-p", "tcp", "-s", "1.1.1.1", "-d", "2.2.2.2", "--sport", "1", "--dport", "2",
        ],
        &["delete", "-p", "tcp"],
        &["flush"],
        &["count"],
        &["stats"],
        &["events", "--count", "1"],
        &["top", "--once"],
        &["profile", "--duration", "1"],
    ] {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin)
            .args(args)
            .output()
            .expect("setpriv runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: not one line: {err}");
        assert!(
            err.contains("CAP_NET_ADMIN") && err.contains("root"),
            "{args:?}: does not say what is needed: {err}"
        );
    }
}
