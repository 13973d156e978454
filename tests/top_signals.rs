//! `ctscope top` and signals: SIGTERM, a panic, a stopped consumer, and a
//! stop and continue as a shell job, each with the terminal restored.

use std::time::Duration;

use ctscope_e2e::{Netns, Tmux, ctscope_bin, poll_until, report};
use nix::sys::signal::{Signal, kill};

use super::{ctscope_pid, pane_command, start_top, with_small_table};

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
