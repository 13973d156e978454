//! What ctscope does when the world misbehaves: the watched namespace is
//! deleted, the output is closed early or not read, a signal comes
//! mid-listing, the user lacks privileges.
use std::{
    io::Read,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use ctscope_e2e::{Netns, ctscope_bin, ctscope_bin_str};

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

/// What was captured before the namespace went away is still written out:
/// the event line, the profile's report.
#[test]
fn deleting_the_watched_namespace_ends_long_commands_with_one_line() {
    for (args, captured) in [
        (&["events"][..], "[NEW] udp"),
        (
            &["profile", "--duration", "60", "-o", "json"][..],
            "\"new\":1,",
        ),
    ] {
        let Some(ns) = Netns::new() else {
            return;
        };
        let mut child = Command::new(ctscope_bin())
            .args(["--netns", ns.name()])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ctscope starts");
        let stdout = read_all(child.stdout.take().expect("stdout"));
        std::thread::sleep(Duration::from_millis(800));
        ns.conntrack(&[
            "-I", "-p", "udp", "-s", "10.3.0.1", "-d", "10.3.0.2", "--sport", "1", "--dport", "2",
            "-t", "60",
        ])
        .expect_code(0);
        std::thread::sleep(Duration::from_millis(500));
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
        let out = stdout.join().expect("stdout reader");
        assert!(
            out.contains(captured),
            "{args:?}: {captured:?} lost: {out}\n{err}"
        );
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.contains("network namespace") && last.contains("was deleted"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// Entries for the signal tests: about 3 MB of listing, far more than a
/// pipe holds.
const SIGNAL_FLOWS: u64 = 20_000;

/// `ctscope list` in `ns` with its output on a pipe the test reads (or
/// not), and its stderr collected.
fn spawn_list(ns: &Netns) -> std::process::Child {
    let bin = ctscope_bin();
    Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .arg(&bin)
        .arg("list")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ctscope list")
}

/// Reads a child's pipe to the end on a thread.
fn read_all(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

fn signal(child: &std::process::Child, sig: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, sig).expect("kill");
}

#[test]
fn a_signal_mid_listing_ends_it_with_what_was_shown_and_its_summary() {
    let Some(ns) = Netns::new() else {
        return;
    };
    let (made, _) = ns.in_netns(|| ctscope_e2e::udp_flows(SIGNAL_FLOWS));
    assert_eq!(made, SIGNAL_FLOWS);
    for (sig, code) in [
        (nix::sys::signal::Signal::SIGINT, 130),
        (nix::sys::signal::Signal::SIGTERM, 143),
    ] {
        // Nobody reads at first, so ctscope is mid-listing, blocked on a
        // full pipe, when the signal comes; then everything is read.
        let mut child = spawn_list(&ns);
        std::thread::sleep(Duration::from_millis(800));
        signal(&child, sig);
        let stdout = read_all(child.stdout.take().expect("stdout"));
        let stderr = read_all(child.stderr.take().expect("stderr"));
        let status = wait_within(&mut child, Duration::from_secs(10));
        let (stdout, stderr) = (
            stdout.join().expect("stdout reader"),
            stderr.join().expect("stderr reader"),
        );
        let lines = stdout.lines().count() as u64;
        assert_eq!(status.code(), Some(code), "{sig}: {status:?}\n{stderr}");
        assert!(
            lines > 0 && lines < SIGNAL_FLOWS,
            "{sig}: {lines} lines: not stopped mid-listing\n{stderr}"
        );
        assert!(
            stdout.ends_with('\n') && stdout.lines().all(|l| l.contains(" dport=")),
            "{sig}: a line was cut short"
        );
        // Exactly the summary, counting exactly what was written.
        let want = format!("{lines} flow entries have been shown.");
        assert!(
            stderr.lines().count() == 1 && stderr.contains(&want),
            "{sig}: want one line with {want:?}\n{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn a_second_signal_ends_a_stuck_listing_at_once() {
    let Some(ns) = Netns::new() else {
        return;
    };
    ns.in_netns(|| ctscope_e2e::udp_flows(SIGNAL_FLOWS));
    // The output is never read: the clean stop cannot finish writing.
    let mut child = spawn_list(&ns);
    std::thread::sleep(Duration::from_millis(800));
    signal(&child, nix::sys::signal::Signal::SIGINT);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "ctscope ended though its output was never read"
    );
    signal(&child, nix::sys::signal::Signal::SIGTERM);
    let status = wait_within(&mut child, Duration::from_secs(3));
    assert_eq!(status.code(), Some(143), "{status:?}");
}

/// A dump that keeps being interrupted (the process stopped and continued
/// every few milliseconds, as a debugger or job control does) still lists
/// exactly what conntrack -L lists.
#[test]
fn a_dump_stopped_and_continued_again_and_again_is_complete() {
    let Some(ns) = Netns::new() else {
        return;
    };
    ns.in_netns(|| ctscope_e2e::udp_flows(SIGNAL_FLOWS));
    let ct = ns.conntrack(&["-L"]);
    let mut child = spawn_list(&ns);
    let stdout = read_all(child.stdout.take().expect("stdout"));
    let stderr = read_all(child.stderr.take().expect("stderr"));
    let mut stops = 0;
    let start = Instant::now();
    while child.try_wait().expect("try_wait").is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "still listing after 60 s"
        );
        signal(&child, nix::sys::signal::Signal::SIGSTOP);
        std::thread::sleep(Duration::from_millis(3));
        signal(&child, nix::sys::signal::Signal::SIGCONT);
        stops += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
    let status = child.wait().expect("wait");
    let cs = ctscope_e2e::Output {
        code: status.code().unwrap_or(-1),
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
        command: "ctscope list (stopped and continued)".into(),
    };
    assert_eq!(cs.code, 0, "{cs}");
    println!("{stops} stops during the listing");
    assert!(
        stops >= 3,
        "only {stops} stops: the dump was too quick to interrupt"
    );
    let a = ctscope_e2e::normalised_lines(&ct);
    let b = ctscope_e2e::normalised_lines(&cs);
    assert!(a.len() as u64 >= SIGNAL_FLOWS, "only {} entries", a.len());
    if let Some(diff) = ctscope_e2e::multiset_diff("conntrack -L", &a, "ctscope list", &b) {
        panic!("after {stops} stops: {diff}");
    }
}

#[test]
fn closed_output_ends_quietly() {
    let Some(ns) = Netns::with_varied_table() else {
        return;
    };
    let bin = ctscope_bin_str();
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
        // The commands that may trace name the eBPF source's needs too.
        if matches!(args[0], "events" | "profile") {
            assert!(
                err.contains("CAP_BPF") && err.contains("CAP_PERFMON"),
                "{args:?}: does not name the eBPF source's capabilities: {err}"
            );
        }
    }
}
