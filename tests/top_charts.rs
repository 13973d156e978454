//! `ctscope top`'s chart panel in a real terminal (tmux): `H` puts the
//! histograms of the churn just made in the table's place, as bar charts
//! whose counts add up to the lifetimes recorded, and NEW/DESTROY
//! sparklines in the header; `H` again brings the table back.
use std::time::Duration;

use ctscope_e2e::{Netns, Screen, Tmux, ctscope_bin};

/// The bars of the panel titled `title`: (label, the value written on the
/// bar), read from the panel's box wherever it is on the screen.
fn panel_bars(screen: &Screen, title: &str) -> Option<Vec<(String, u64)>> {
    let (top, col) = screen
        .lines
        .iter()
        .enumerate()
        .find_map(|(i, l)| Some((i, l.find(title)?)))?;
    // The box's left border is the `┌` just before the title.
    let left = screen.lines[top][..col].rfind('┌')?;
    let left_chars = screen.lines[top][..left].chars().count();
    let mut bars = Vec::new();
    for line in &screen.lines[top + 1..] {
        let inner: String = line.chars().skip(left_chars + 1).collect();
        if inner.starts_with('─') || line.chars().nth(left_chars) == Some('└') {
            break;
        }
        let inner = inner.split('│').next().unwrap_or("");
        let Some((label, bar)) = inner.split_once(' ') else {
            continue;
        };
        if !label.contains("..") {
            continue;
        }
        let digits: String = bar
            .trim_start()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        bars.push((label.to_string(), digits.parse().ok()?));
    }
    Some(bars)
}

#[test]
fn h_shows_the_histograms_and_rate_sparklines_then_the_table_again() {
    let Some(ns) = Netns::new() else {
        return;
    };
    let tmux = Tmux::start(
        &format!(
            "{} --netns {} top; echo EXITED=$?; sleep 60",
            ctscope_bin().display(),
            ns.name()
        ),
        160,
    );
    let (up, screen) = tmux.wait(Duration::from_secs(5), |s| {
        s.header().starts_with("ctscope top")
    });
    assert!(up, "top did not come up\n{screen}");
    ns.wait_for_listeners(1).expect("top listening");
    ctscope_e2e::spread_lifetimes(&ns);
    tmux.keys(&["H"]);
    let (charted, screen) = tmux.wait(Duration::from_secs(10), |s| {
        let text = s.lines.join("\n");
        text.contains(" lifetime udp, ms (n=24) ") && text.contains(" lifetime tcp, ms (n=6) ")
    });
    assert!(charted, "no lifetime charts for the churn\n{screen}");
    // The bars' counts add up to the samples, in 1-2-5 buckets.
    let udp = panel_bars(&screen, " lifetime udp, ms (n=24) ").expect("udp panel");
    assert!(udp.len() >= 2, "{udp:?}\n{screen}");
    assert_eq!(
        udp.iter().map(|b| b.1).sum::<u64>(),
        24,
        "{udp:?}\n{screen}"
    );
    assert!(
        udp.iter()
            .all(|b| b.0.ends_with("ms") || b.0.ends_with('s')),
        "{udp:?}"
    );
    let tcp = panel_bars(&screen, " lifetime tcp, ms (n=6) ").expect("tcp panel");
    assert_eq!(tcp.iter().map(|b| b.1).sum::<u64>(), 6, "{tcp:?}\n{screen}");
    // Delivery latency needs the eBPF source, which this host lacks.
    assert!(
        screen
            .lines
            .iter()
            .any(|l| l.contains("needs the eBPF source")),
        "{screen}"
    );
    // The sparklines: 30 NEW and 30 DESTROY in the last few seconds.
    let spark = |name: &str| -> Option<(u64, String)> {
        let line = screen
            .lines
            .iter()
            .find(|l| l.starts_with(&format!("{name:<9} last 60 s, max")))?;
        let rest = line.split_once(", max")?.1.trim_start();
        let (max, strip) = rest.split_once(' ')?;
        Some((max.parse().ok()?, strip.trim().to_string()))
    };
    for name in ["NEW/s", "DESTROY/s"] {
        let (max, strip) = spark(name).unwrap_or_else(|| panic!("no {name} sparkline\n{screen}"));
        assert!(max >= 1, "{name}\n{screen}");
        assert!(
            strip.chars().any(|c| "▁▂▃▄▅▆▇█".contains(c)),
            "{name}: {strip:?}\n{screen}"
        );
    }
    // No table while the charts are up; H brings it back.
    assert!(
        !screen.lines.iter().any(|l| l.starts_with("Source")),
        "{screen}"
    );
    tmux.keys(&["H"]);
    let (table, screen) = tmux.wait(Duration::from_secs(5), |s| {
        s.lines.iter().any(|l| l.starts_with("Source"))
            && !s.lines.iter().any(|l| l.contains("lifetime udp, ms"))
    });
    assert!(table, "H did not bring the table back\n{screen}");
    tmux.keys(&["q"]);
    let (ended, screen) = tmux.wait(Duration::from_secs(5), |s| s.has_line_starting("EXITED="));
    assert!(ended && screen.has_line_starting("EXITED=0"), "{screen}");
}
