//! top's chart panel (`H`): each histogram (lifetime per protocol, TCP
//! set-up, delivery latency) as a ratatui bar chart of the same log-spaced
//! buckets as `profile`'s text report, and sparklines of NEW and DESTROY
//! per second over the last minute in the header.
use hdrhistogram::Histogram;
use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Style},
    text::Line,
    widgets::{Bar, BarChart, Block, Borders, Paragraph, Sparkline},
};

use super::screen::Status;
use crate::{report::chart, table::Stats};

/// Seconds of NEW and DESTROY rates the sparklines show.
pub const HISTORY: usize = 60;

/// Header lines the sparklines take.
pub const SPARKLINE_LINES: u16 = 2;

/// Keeps the last [`HISTORY`] values, oldest first.
pub fn push_history(history: &mut std::collections::VecDeque<u64>, value: u64) {
    if history.len() == HISTORY {
        history.pop_front();
    }
    history.push_back(value);
}

/// The two sparklines, one line each: `NEW/s    max N ▁▂▅█...`.
pub fn sparklines(frame: &mut Frame, area: Rect, status: &Status) {
    let lines = Layout::vertical([Constraint::Length(1); 2]).split(area);
    for (line, (name, history, colour)) in lines.iter().zip([
        ("NEW/s", &status.new_history, Color::Green),
        ("DESTROY/s", &status.destroy_history, Color::Red),
    ]) {
        let data: Vec<u64> = history.iter().copied().collect();
        let max = data.iter().copied().max().unwrap_or(0);
        let label = format!("{name:<9} last {HISTORY} s, max {max:>7} ");
        let [text, spark] = Layout::horizontal([
            Constraint::Length(u16::try_from(label.len()).unwrap_or(u16::MAX)),
            Constraint::Min(1),
        ])
        .areas(*line);
        frame.render_widget(Paragraph::new(label), text);
        // The newest second at the right edge, as a scrolling strip.
        let width = usize::from(spark.width);
        let shown = &data[data.len().saturating_sub(width)..];
        frame.render_widget(
            Sparkline::default()
                .data(shown)
                .max(max.max(1))
                .style(Style::default().fg(colour)),
            Rect {
                x: spark.x + spark.width - u16::try_from(shown.len()).unwrap_or(0),
                width: u16::try_from(shown.len()).unwrap_or(0),
                ..spark
            },
        );
    }
}

/// One chart of the panel.
struct Panel<'a> {
    title: String,
    unit: &'static str,
    /// None: nothing recorded of this kind yet.
    histogram: Option<&'a Histogram<u64>>,
    /// What an empty chart says.
    why_empty: &'static str,
}

/// The charts: lifetime per protocol (one stand-in while none ended),
/// TCP set-up, delivery latency.
fn panels<'a>(stats: &'a Stats, source: &str) -> Vec<Panel<'a>> {
    let mut lifetimes: Vec<_> = stats.lifetime_ms.iter().collect();
    lifetimes.sort_by_key(|(k, _)| *k);
    let mut v: Vec<Panel<'a>> = lifetimes
        .into_iter()
        .map(|(k, h)| Panel {
            title: format!("lifetime {k}"),
            unit: "ms",
            histogram: Some(h),
            why_empty: "",
        })
        .collect();
    if v.is_empty() {
        v.push(Panel {
            title: "lifetime".into(),
            unit: "ms",
            histogram: None,
            why_empty: "no connection ended yet",
        });
    }
    v.push(Panel {
        title: "TCP set-up".into(),
        unit: "us",
        histogram: Some(&stats.tcp_setup_us),
        why_empty: "no TCP set-up seen yet",
    });
    v.push(Panel {
        title: "delivery".into(),
        unit: "ns",
        histogram: Some(&stats.delivery_ns),
        why_empty: if source == "ebpf" {
            "no samples yet"
        } else {
            "needs the eBPF source"
        },
    });
    v
}

/// The histograms as horizontal bar charts in a grid over `area`.
pub fn histograms(frame: &mut Frame, area: Rect, stats: &Stats, source: &str) {
    let panels = panels(stats, source);
    let columns: usize = if area.width >= 120 { 2 } else { 1 };
    let rows = panels.len().div_ceil(columns);
    let ratio = |n: usize| Constraint::Ratio(1, u32::try_from(n).unwrap_or(1));
    let row_areas = Layout::vertical(vec![ratio(rows); rows]).split(area);
    for (i, p) in panels.iter().enumerate() {
        let cells = Layout::horizontal(vec![ratio(columns); columns]).split(row_areas[i / columns]);
        let cell = cells[i % columns];
        let n = p.histogram.map_or(0, Histogram::len);
        let block = Block::default()
            .borders(Borders::ALL)
            .title(format!(" {}, {} (n={n}) ", p.title, p.unit));
        let mut buckets = p.histogram.map(chart::buckets).unwrap_or_default();
        // More buckets than lines: the empty ones between go first, so
        // that no sample falls off the bottom.
        if buckets.len() > usize::from(cell.height.saturating_sub(2)) {
            buckets.retain(|b| b.count > 0);
        }
        if buckets.is_empty() {
            frame.render_widget(Paragraph::new(p.why_empty).block(block), cell);
            continue;
        }
        let labels: Vec<String> = buckets
            .iter()
            .map(|b| format!("{}..{}", short(b.lo, p.unit), short(b.hi, p.unit)))
            .collect();
        let bars: Vec<Bar> = buckets
            .iter()
            .zip(&labels)
            .map(|(b, l)| {
                Bar::default()
                    .value(b.count)
                    .label(Line::from(l.as_str()))
                    .text_value(b.count.to_string())
            })
            .collect();
        frame.render_widget(
            BarChart::horizontal(bars)
                .block(block)
                .bar_width(1)
                .bar_gap(0)
                .bar_style(Style::default().fg(Color::Cyan))
                .value_style(Style::default().fg(Color::Black).bg(Color::Cyan)),
            cell,
        );
    }
}

/// A bucket bound without the space: `200ms`, `2s`.
fn short(v: u64, unit: &str) -> String {
    chart::label(v, unit).replace(' ', "")
}

#[cfg(test)]
mod tests {
    use ratatui::{Terminal, backend::TestBackend, buffer::Buffer};

    use super::*;

    fn text(buf: &Buffer) -> Vec<String> {
        (0..buf.area.height)
            .map(|y| {
                (0..buf.area.width)
                    .map(|x| buf[(x, y)].symbol().to_string())
                    .collect::<String>()
                    .trim_end()
                    .to_string()
            })
            .collect()
    }

    fn histogram(values: &[(u64, u64)]) -> Histogram<u64> {
        let mut h = Histogram::<u64>::new(3).expect("histogram");
        for &(v, n) in values {
            h.record_n(v, n).expect("record");
        }
        h
    }

    #[test]
    fn histograms_draw_one_bar_a_bucket() {
        let mut stats = Stats::default();
        stats
            .lifetime_ms
            .insert("udp", histogram(&[(3, 2), (60, 8), (70, 8)]));
        stats.tcp_setup_us = histogram(&[(150, 4)]);
        let mut term = Terminal::new(TestBackend::new(130, 24)).expect("terminal");
        term.draw(|f| histograms(f, f.area(), &stats, "netlink"))
            .expect("draw");
        let lines = text(term.backend().buffer());
        let screen = lines.join("\n");
        assert!(screen.contains(" lifetime udp, ms (n=18) "), "{screen}");
        assert!(screen.contains(" TCP set-up, us (n=4) "), "{screen}");
        assert!(screen.contains("│needs the eBPF source"), "{screen}");
        // The udp panel's rows: label, then the bar (its value written
        // over its first cells), in the panel's left half.
        let rows: Vec<(String, usize)> = lines
            .iter()
            .filter_map(|l| {
                let inner = l.strip_prefix('│')?.split('│').next()?;
                let (label, bar) = inner.split_once(' ')?;
                label
                    .contains("..")
                    .then(|| (label.to_string(), bar.trim().chars().count()))
            })
            .filter(|(label, _)| label.ends_with("ms"))
            .collect();
        let labels: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
        assert_eq!(
            labels,
            [
                "2ms..5ms",
                "5ms..10ms",
                "10ms..20ms",
                "20ms..50ms",
                "50ms..100ms"
            ],
            "{screen}"
        );
        // 16 samples fill the width, 2 take an eighth of it, none nothing
        // but their "0".
        let full = rows[4].1;
        assert!(full > 40, "{screen}");
        assert!(rows[0].1.abs_diff(full / 8) <= 1, "{rows:?}\n{screen}");
        assert_eq!(rows[1].1, 1, "{screen}");
    }

    #[test]
    fn empty_buckets_give_way_when_the_panel_is_short() {
        // 1 us to 5 ms: twelve buckets, two of them with samples.
        let stats = Stats {
            tcp_setup_us: histogram(&[(1, 499), (4001, 1)]),
            ..Stats::default()
        };
        // Three panels a column (the lifetime stand-in, set-up, delivery):
        // 6 lines inside each at 24 lines, 13 at 45.
        let mut term = Terminal::new(TestBackend::new(60, 24)).expect("terminal");
        term.draw(|f| histograms(f, f.area(), &stats, "netlink"))
            .expect("draw");
        let screen = text(term.backend().buffer()).join("\n");
        let mut tall = Terminal::new(TestBackend::new(60, 45)).expect("terminal");
        tall.draw(|f| histograms(f, f.area(), &stats, "netlink"))
            .expect("draw");
        let tall = text(tall.backend().buffer()).join("\n");
        assert!(
            tall.contains("│2us..5us "),
            "all buckets when they fit:\n{tall}"
        );
        assert!(screen.contains("│1us..2us 499"), "{screen}");
        assert!(screen.contains("│2ms..5ms 1"), "{screen}");
        assert!(!screen.contains("2us..5us"), "{screen}");
    }

    #[test]
    fn sparklines_show_the_last_minute_newest_at_the_right() {
        let mut status = Status::default();
        for v in 0..90 {
            push_history(&mut status.new_history, v);
            push_history(&mut status.destroy_history, if v == 89 { 40 } else { 0 });
        }
        assert_eq!(status.new_history.len(), HISTORY);
        assert_eq!(status.new_history.front(), Some(&30));
        let mut term = Terminal::new(TestBackend::new(100, 2)).expect("terminal");
        term.draw(|f| sparklines(f, f.area(), &status))
            .expect("draw");
        let lines = text(term.backend().buffer());
        assert!(
            lines[0].starts_with("NEW/s     last 60 s, max      89 "),
            "{lines:?}"
        );
        assert!(
            lines[1].starts_with("DESTROY/s last 60 s, max      40 "),
            "{lines:?}"
        );
        // A rising NEW rate: the strip ends in a full block; DESTROY is
        // empty but for its last second.
        assert!(lines[0].ends_with('█'), "{lines:?}");
        let strip: String = lines[1].chars().skip(35).collect();
        assert_eq!(strip.trim(), "█", "{lines:?}");
        let first: Vec<char> = lines[0].chars().skip(35).take(3).collect();
        assert!(first.iter().all(|c| *c != '█'), "{lines:?}");
    }
}
