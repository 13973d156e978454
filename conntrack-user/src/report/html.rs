//! `profile --html FILE`: the report as one self-contained HTML page. The
//! charts are inline SVG drawn by plotters (`report/plots.rs`), the style
//! sheet is inline, and there is no script, link or image to fetch.
use std::fmt::Write as _;

use super::{NamedHistogram, Report, Talker, plots, timeline::Timeline};

/// Why the page could not be made.
#[derive(Debug, thiserror::Error)]
pub enum HtmlError {
    /// plotters could not draw a chart.
    #[error("cannot draw the {chart} chart: {reason}")]
    Draw {
        /// The chart's id on the page.
        chart: &'static str,
        /// plotters' error.
        reason: String,
    },
}

/// Everything the page shows.
#[derive(Debug)]
pub struct Run<'a> {
    /// The report (also printed on stdout).
    pub report: &'a Report,
    /// The run's histograms.
    pub histograms: &'a [NamedHistogram<'a>],
    /// Readings over the run.
    pub timeline: &'a Timeline,
    /// The kernel release (`uname -r`).
    pub kernel: &'a str,
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;color:#222;max-width:1600px}\
dl#run{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}\
dt{font-weight:bold}.loss{color:#b00;font-weight:bold}\
.charts{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0}\
figure.empty{width:760px;border:1px dashed #999;padding:1em;box-sizing:border-box}\
table{border-collapse:collapse;margin:0 2em 1em 0;display:inline-table;vertical-align:top}\
td,th{border:1px solid #ccc;padding:.2em .6em}td.n{text-align:right}";

/// Text made safe inside HTML elements and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A chart in its `<figure>`, or an empty figure saying why there is none.
fn figure(
    out: &mut String,
    id: &'static str,
    drawn: Option<Result<String, String>>,
    why_empty: &str,
) -> Result<(), HtmlError> {
    match drawn {
        Some(svg) => {
            let svg = svg.map_err(|reason| HtmlError::Draw { chart: id, reason })?;
            let _ = writeln!(out, "<figure id=\"{id}\">{svg}</figure>");
        }
        None => {
            let _ = writeln!(
                out,
                "<figure id=\"{id}\" class=\"empty\"><p>{}</p></figure>",
                escape(why_empty)
            );
        }
    }
    Ok(())
}

fn talkers(out: &mut String, id: &str, title: &str, key: &str, list: &[Talker]) {
    let _ = write!(
        out,
        "<table id=\"{id}\"><caption>{title}</caption>\
         <tr><th>{key}</th><th>connections</th><th>bytes</th></tr>"
    );
    for t in list {
        let _ = write!(
            out,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            escape(&t.key),
            t.connections,
            t.bytes
        );
    }
    let _ = writeln!(out, "</table>");
}

/// The page.
pub fn page(run: &Run<'_>) -> Result<String, HtmlError> {
    let r = run.report;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>ctscope profile</title><style>{STYLE}</style></head><body>"
    );
    let _ = writeln!(out, "<header><h1>ctscope profile</h1><dl id=\"run\">");
    let max = r.pressure.max.map_or("unknown".into(), |m| m.to_string());
    let loss = if r.lost > 0 {
        format!("<span class=\"loss\">{} events lost</span>", r.lost)
    } else {
        "none".into()
    };
    for (term, value) in [
        ("source", escape(r.source)),
        ("kernel", escape(run.kernel)),
        ("duration", format!("{:.1} s", r.duration_secs)),
        ("NEW", format!("{} ({:.0}/s)", r.new, r.new_per_sec)),
        (
            "DESTROY",
            format!("{} ({:.0}/s)", r.destroy, r.destroy_per_sec),
        ),
        ("loss", loss),
        (
            "table",
            format!(
                "{} entries of nf_conntrack_max {max}; early_drop {}, insert_failed {}, drop {}",
                r.pressure.count, r.pressure.early_drop, r.pressure.insert_failed, r.pressure.drop
            ),
        ),
    ] {
        let _ = writeln!(out, "<dt>{term}</dt><dd id=\"run-{term}\">{value}</dd>");
    }
    let _ = writeln!(out, "</dl></header>");
    let duration = r.duration_secs;
    let _ = writeln!(out, "<h2>Churn and table</h2><div class=\"charts\">");
    figure(
        &mut out,
        "churn",
        Some(plots::churn(
            &run.timeline.rates(),
            duration,
            r.new,
            r.destroy,
        )),
        "",
    )?;
    figure(
        &mut out,
        "entries",
        Some(plots::entries(run.timeline.samples(), duration)),
        "",
    )?;
    let _ = writeln!(out, "</div><h2>Distributions</h2><div class=\"charts\">");
    let lifetimes: Vec<(&str, &hdrhistogram::Histogram<u64>)> = run
        .histograms
        .iter()
        .filter(|n| !n.histogram.is_empty())
        .filter_map(|n| Some((n.name.strip_prefix("lifetime_ms/")?, n.histogram)))
        .collect();
    figure(
        &mut out,
        "lifetime",
        (!lifetimes.is_empty()).then(|| plots::lifetime_cdf(&lifetimes)),
        "connection lifetime: no connection ended during the run",
    )?;
    let named = |name: &str| run.histograms.iter().find(|n| n.name == name);
    let delivery_why = if r.source == "netlink" {
        "delivery latency: no samples (ctnetlink events carry no kernel timestamp; it needs the eBPF source)"
    } else {
        "delivery latency: no samples"
    };
    for (id, name, title, why) in [
        (
            "tcp-setup",
            "tcp_setup_us",
            "TCP set-up",
            "TCP set-up: no connection reached ESTABLISHED during the run",
        ),
        ("delivery", "delivery_ns", "delivery latency", delivery_why),
    ] {
        let drawn = named(name)
            .filter(|n| !n.histogram.is_empty())
            .map(|n| plots::percentiles(title, n.unit, n.histogram));
        figure(&mut out, id, drawn, why)?;
    }
    let _ = writeln!(out, "</div><h2>Top talkers</h2><div>");
    talkers(
        &mut out,
        "top-sources",
        "top sources",
        "source",
        &r.top_sources,
    );
    talkers(
        &mut out,
        "top-destinations",
        "top destinations",
        "destination",
        &r.top_destinations,
    );
    talkers(
        &mut out,
        "top-dports",
        "top destination ports",
        "port",
        &r.top_dports,
    );
    let _ = writeln!(out, "</div></body></html>");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
