//! `ctscope profile`: a churn report for performance engineers. Watches the
//! event source for a while, keeps the live table, and reports NEW/DESTROY
//! rates, lifetime / set-up / delivery histograms, top talkers and table
//! pressure (count against nf_conntrack_max, and the kernel's early_drop,
//! insert_failed and drop counters over the run).
pub mod chart;
mod hgrm;
pub mod html;
mod plots;
pub mod timeline;

use std::{collections::HashMap, fmt::Write as _, net::IpAddr};

use hdrhistogram::Histogram;
use serde::Serialize;

pub use self::hgrm::hgrm;
use crate::table::{Stats, Table, summary};

/// One of the run's histograms, named as the JSON report names it.
#[derive(Clone, Debug)]
pub struct NamedHistogram<'a> {
    /// The JSON key, then `/` and the protocol or end state for the keyed
    /// ones: `lifetime_ms/tcp`, `tcp_lifetime_ms/ESTABLISHED`,
    /// `tcp_setup_us`, `delivery_ns`.
    pub name: String,
    /// The unit of its values: ms, us or ns.
    pub unit: &'static str,
    /// The histogram.
    pub histogram: &'a Histogram<u64>,
}

/// Every histogram of the run, in the JSON report's order.
pub fn histograms(stats: &Stats) -> Vec<NamedHistogram<'_>> {
    let mut out = Vec::new();
    for (key, map) in [
        ("lifetime_ms", &stats.lifetime_ms),
        ("tcp_lifetime_ms", &stats.tcp_lifetime_ms),
    ] {
        let mut keyed: Vec<_> = map.iter().collect();
        keyed.sort_by(|a, b| a.0.cmp(b.0));
        out.extend(keyed.into_iter().map(|(k, h)| NamedHistogram {
            name: format!("{key}/{k}"),
            unit: "ms",
            histogram: h,
        }));
    }
    out.push(NamedHistogram {
        name: "tcp_setup_us".into(),
        unit: "us",
        histogram: &stats.tcp_setup_us,
    });
    out.push(NamedHistogram {
        name: "delivery_ns".into(),
        unit: "ns",
        histogram: &stats.delivery_ns,
    });
    out
}

/// One histogram as count and quantiles.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Quantiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
    /// Counts in log-spaced buckets, for the text report's chart.
    #[serde(skip)]
    pub buckets: Vec<chart::Bucket>,
}

impl Quantiles {
    fn of(h: &hdrhistogram::Histogram<u64>) -> Self {
        let [count, p50, p90, p99, p999, max] = summary(h);
        Self {
            count,
            p50,
            p90,
            p99,
            p999,
            max,
            buckets: chart::buckets(h),
        }
    }
}

/// One talker: a key and its connection count and bytes.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Talker {
    /// Address, or port.
    pub key: String,
    /// Connections in the table.
    pub connections: u64,
    /// Bytes, both directions (needs nf_conntrack_acct=1).
    pub bytes: u64,
}

/// The kernel's pressure counters over the run (sums over CPUs).
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Pressure {
    /// Entries at the end.
    pub count: u64,
    /// nf_conntrack_max.
    pub max: Option<u64>,
    /// early_drop during the run.
    pub early_drop: u64,
    /// insert_failed during the run.
    pub insert_failed: u64,
    /// drop during the run.
    pub drop: u64,
}

/// What was lost, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LostByReason {
    /// eBPF records that found the ring buffer full.
    pub ring_buffer_full: u64,
    /// ctnetlink receive buffer overruns (ENOBUFS), each an unknown number
    /// of events.
    pub netlink_overrun: u64,
    /// Events the runs of the eBPF programs the kernel skipped may have
    /// been; `null` where it does not count them (kprobes before 6.7) or
    /// with ctnetlink.
    pub skipped_by_kernel: Option<u64>,
}

impl LostByReason {
    /// From a source's counters.
    pub fn of(lost: &crate::source::Lost) -> Self {
        Self {
            ring_buffer_full: lost.ring_full,
            netlink_overrun: lost.overruns,
            skipped_by_kernel: lost.skipped,
        }
    }
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Seconds watched.
    pub duration_secs: f64,
    /// "netlink" or "ebpf".
    pub source: &'static str,
    /// Where state changes (and so TCP set-up times) came from: "events",
    /// or "dumps" (the eBPF source without UPDATE events).
    pub updates: &'static str,
    /// NEW events.
    pub new: u64,
    /// DESTROY events.
    pub destroy: u64,
    /// NEW per second.
    pub new_per_sec: f64,
    /// DESTROY per second.
    pub destroy_per_sec: f64,
    /// Events lost, all reasons together (an overrun counts once).
    pub lost: u64,
    /// The same by reason.
    pub lost_by_reason: LostByReason,
    /// NEW and DESTROY per protocol: (protocol, new, destroy, new/s, destroy/s).
    pub churn_by_proto: Vec<(String, u64, u64, f64, f64)>,
    /// Lifetime in ms per protocol, for connections that ended.
    pub lifetime_ms: Vec<(String, Quantiles)>,
    /// TCP lifetime in ms per end state.
    pub tcp_lifetime_ms: Vec<(String, Quantiles)>,
    /// TCP set-up time (NEW to ESTABLISHED), µs.
    pub tcp_setup_us: Quantiles,
    /// Event delivery latency, ns (eBPF source only).
    pub delivery_ns: Quantiles,
    /// Top sources by connections.
    pub top_sources: Vec<Talker>,
    /// Top destinations by connections.
    pub top_destinations: Vec<Talker>,
    /// Top destination ports by connections.
    pub top_dports: Vec<Talker>,
    /// Table pressure.
    pub pressure: Pressure,
}

fn top_n(map: HashMap<String, (u64, u64)>, n: usize) -> Vec<Talker> {
    let mut v: Vec<Talker> = map
        .into_iter()
        .map(|(key, (connections, bytes))| Talker {
            key,
            connections,
            bytes,
        })
        .collect();
    v.sort_by(|a, b| {
        b.connections
            .cmp(&a.connections)
            .then(b.bytes.cmp(&a.bytes))
            .then(a.key.cmp(&b.key))
    });
    v.truncate(n);
    v
}

/// Builds the report from the table at the end of the run.
pub fn report(
    table: &Table,
    duration_secs: f64,
    source: &'static str,
    lost: u64,
    pressure: Pressure,
    n: usize,
) -> Report {
    let (mut src, mut dst, mut dport): (HashMap<String, (u64, u64)>, HashMap<_, _>, HashMap<_, _>) =
        Default::default();
    for t in table.entries().iter() {
        let bytes =
            t.ct.counters_orig.map_or(0, |c| c.bytes) + t.ct.counters_reply.map_or(0, |c| c.bytes);
        let add = |m: &mut HashMap<String, (u64, u64)>, k: String| {
            let e = m.entry(k).or_default();
            e.0 += 1;
            e.1 += bytes;
        };
        let name = |a: Option<IpAddr>| a.map(|a| a.to_string()).unwrap_or_default();
        add(&mut src, name(t.ct.orig.src));
        add(&mut dst, name(t.ct.orig.dst));
        if let Some(p) = t.ct.orig.dport.filter(|_| t.ct.orig.icmp_type.is_none()) {
            add(
                &mut dport,
                format!("{}/{p}", crate::ct::proto_name(t.ct.l4proto())),
            );
        }
    }
    let s = &table.stats;
    let secs = duration_secs.max(1e-9);
    let mut lifetime_ms: Vec<(String, Quantiles)> = s
        .lifetime_ms
        .iter()
        .map(|(k, h)| (k.to_string(), Quantiles::of(h)))
        .collect();
    lifetime_ms.sort_by(|a, b| a.0.cmp(&b.0));
    let mut tcp_lifetime_ms: Vec<(String, Quantiles)> = s
        .tcp_lifetime_ms
        .iter()
        .map(|(k, h)| (k.to_string(), Quantiles::of(h)))
        .collect();
    tcp_lifetime_ms.sort_by(|a, b| a.0.cmp(&b.0));
    let mut protos: Vec<&&str> = s
        .new_by_proto
        .keys()
        .chain(s.destroy_by_proto.keys())
        .collect();
    protos.sort();
    protos.dedup();
    let churn_by_proto = protos
        .into_iter()
        .map(|p| {
            let new = s.new_by_proto.get(*p).copied().unwrap_or(0);
            let destroy = s.destroy_by_proto.get(*p).copied().unwrap_or(0);
            (
                p.to_string(),
                new,
                destroy,
                new as f64 / secs,
                destroy as f64 / secs,
            )
        })
        .collect();
    Report {
        duration_secs,
        source,
        updates: "events",
        new: s.new_total,
        destroy: s.destroy_total,
        new_per_sec: s.new_total as f64 / secs,
        destroy_per_sec: s.destroy_total as f64 / secs,
        lost,
        lost_by_reason: LostByReason::default(),
        churn_by_proto,
        lifetime_ms,
        tcp_lifetime_ms,
        tcp_setup_us: Quantiles::of(&s.tcp_setup_us),
        delivery_ns: Quantiles::of(&s.delivery_ns),
        top_sources: top_n(src, n),
        top_destinations: top_n(dst, n),
        top_dports: top_n(dport, n),
        pressure,
    }
}

fn q_line(out: &mut String, name: &str, unit: &str, q: &Quantiles) {
    let _ = writeln!(
        out,
        "  {name:<14} count {:>8}  p50 {:>8}{unit}  p90 {:>8}{unit}  p99 {:>8}{unit}  p99.9 {:>8}{unit}  max {:>8}{unit}",
        q.count, q.p50, q.p90, q.p99, q.p999, q.max
    );
}

/// The percentile line, then the distribution as bars (none when empty).
fn q_chart(out: &mut String, name: &str, unit: &str, q: &Quantiles) {
    q_line(out, name, unit, q);
    for line in chart::lines(&q.buckets, unit, "      ") {
        let _ = writeln!(out, "{line}");
    }
}

/// The text form of the report.
pub fn text(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "ctscope profile: {:.1} s, source {}",
        r.duration_secs, r.source
    );
    let _ = writeln!(
        out,
        "churn: NEW {} ({:.0}/s)  DESTROY {} ({:.0}/s)  lost {}",
        r.new, r.new_per_sec, r.destroy, r.destroy_per_sec, r.lost
    );
    if r.lost > 0 || r.lost_by_reason.skipped_by_kernel.is_none() && r.source == "ebpf" {
        let l = &r.lost_by_reason;
        let _ = writeln!(
            out,
            "  lost by reason: ring buffer full {}, netlink overruns {}, skipped by the kernel {}",
            l.ring_buffer_full,
            l.netlink_overrun,
            l.skipped_by_kernel
                .map_or("(not counted by this kernel)".to_string(), |n| n
                    .to_string())
        );
    }
    let max = r
        .pressure
        .max
        .map(|m| format!(" of {m}"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "table: {} entries{max}  early_drop {}  insert_failed {}  drop {}",
        r.pressure.count, r.pressure.early_drop, r.pressure.insert_failed, r.pressure.drop
    );
    for (proto, new, destroy, new_s, destroy_s) in &r.churn_by_proto {
        let _ = writeln!(
            out,
            "  {proto:<8} NEW {new} ({new_s:.0}/s)  DESTROY {destroy} ({destroy_s:.0}/s)"
        );
    }
    let _ = writeln!(out, "lifetime (connections that ended):");
    if r.lifetime_ms.is_empty() {
        let _ = writeln!(out, "  none ended");
    }
    for (proto, q) in &r.lifetime_ms {
        q_chart(&mut out, proto, "ms", q);
    }
    for (state, q) in &r.tcp_lifetime_ms {
        q_line(&mut out, &format!("tcp {state}"), "ms", q);
    }
    let _ = writeln!(out, "latency:");
    if r.source == "netlink" {
        let _ = writeln!(
            out,
            "  (ctnetlink events carry no kernel timestamp: set-up times are measured when ctscope \
             read the events, and delivery latency needs the eBPF source)"
        );
    }
    if r.updates == "dumps" {
        let _ = writeln!(
            out,
            "  (no UPDATE events: TCP set-up times need them; the eBPF source has them with \
             net.netfilter.nf_conntrack_events=1)"
        );
    }
    q_chart(&mut out, "tcp set-up", "us", &r.tcp_setup_us);
    q_chart(&mut out, "delivery", "ns", &r.delivery_ns);
    for (title, list) in [
        ("top sources", &r.top_sources),
        ("top destinations", &r.top_destinations),
        ("top destination ports", &r.top_dports),
    ] {
        let _ = writeln!(out, "{title} (connections, bytes):");
        for t in list.iter() {
            let _ = writeln!(out, "  {:<40} {:>8} {:>12}", t.key, t.connections, t.bytes);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::ct::{Conntrack, Counters, EventKind, proto, samples};

    fn flow(src: &str, dport: u16, bytes: u64) -> Conntrack {
        Conntrack {
            counters_orig: Some(Counters { packets: 1, bytes }),
            counters_reply: Some(Counters {
                packets: 0,
                bytes: 0,
            }),
            ..samples::flow(src, "10.9.0.1", proto::UDP, 1000 + dport, dport)
        }
    }

    #[test]
    fn talkers_rates_and_lifetimes() {
        let mut t = Table::new();
        let now = Instant::now();
        for (i, src) in ["10.0.0.1", "10.0.0.1", "10.0.0.2"].iter().enumerate() {
            t.apply(
                EventKind::New,
                &flow(src, 53 + i as u16, 100 * (i as u64 + 1)),
                now,
                None,
            );
        }
        t.apply(
            EventKind::Destroy,
            &flow("10.0.0.2", 55, 0),
            now + Duration::from_millis(250),
            None,
        );
        let r = report(&t, 2.0, "netlink", 0, Pressure::default(), 5);
        assert_eq!(r.new, 3);
        assert_eq!(r.destroy, 1);
        assert!((r.new_per_sec - 1.5).abs() < 1e-9);
        assert_eq!(r.top_sources[0].key, "10.0.0.1");
        assert_eq!(r.top_sources[0].connections, 2);
        assert_eq!(r.top_sources[0].bytes, 300);
        assert_eq!(r.lifetime_ms[0].0, "udp");
        assert_eq!(r.churn_by_proto, vec![("udp".to_string(), 3, 1, 1.5, 0.5)]);
        assert!((240..=260).contains(&r.lifetime_ms[0].1.max));
        let text = text(&r);
        assert!(
            text.contains("churn: NEW 3 (2/s)  DESTROY 1 (0/s)"),
            "{text}"
        );
        // The lifetime's chart: its one sample, in the 200-500 ms bucket,
        // a full bar, right under the udp percentile line.
        let lines: Vec<&str> = text.lines().collect();
        let udp = lines
            .iter()
            .position(|l| l.starts_with("  udp ") && l.contains(" count "))
            .expect("udp line");
        let full = "█".repeat(chart::BAR_WIDTH);
        assert_eq!(
            lines[udp + 1],
            format!("      200 ms .. 500 ms {full} 1"),
            "{text}"
        );
        assert_eq!(lines[udp + 2], "latency:", "{text}");
        let json = serde_json::to_value(&r).expect("json");
        // The buckets are for the chart only: the JSON keeps its fields.
        assert!(json["lifetime_ms"][0][1].get("buckets").is_none(), "{json}");
        // One connection each: ties go to the one with more bytes.
        assert_eq!(json["top_dports"][0]["key"], "udp/54");
        assert_eq!(r.top_dports.len(), 2);
    }
}
