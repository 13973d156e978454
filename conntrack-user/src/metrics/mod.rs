//! `serve`'s view: what a Prometheus scrape shows. The feeder publishes a
//! [`Snapshot`] of the live table and its own counters a few times a
//! second; a scrape adds the kernel's figures ([`kernel`], over ctnetlink)
//! and the process's ([`process`]) and encodes them all ([`exposition`])
//! in the Prometheus text format, OpenMetrics or protobuf (with native
//! histograms, [`native`]). A scrape never touches
//! the table, so it costs the same at 10 entries or 1,000,000.
use std::net::IpAddr;

use hdrhistogram::Histogram;

use crate::{ct::proto_name, table::Table};

pub mod exposition;
pub mod kernel;
pub mod native;
pub mod process;

pub use exposition::{Format, Scrape};

/// Upper bounds of the connection lifetime buckets, seconds: from a DNS
/// exchange to TCP's 5-day established timeout.
pub const LIFETIME_BOUNDS: [f64; 16] = [
    0.01, 0.1, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0,
    86400.0, 432000.0,
];
/// Upper bounds of the TCP set-up (NEW to ESTABLISHED) buckets, seconds.
pub const TCP_SETUP_BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Upper bounds of the eBPF delivery latency buckets, seconds.
pub const DELIVERY_BOUNDS: [f64; 16] = [
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.05,
    0.1, 1.0,
];

/// A histogram as classic buckets, and as a native histogram's (served
/// when the scraper asks for protobuf).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Buckets {
    /// `(upper bound in seconds, observations in that bucket alone)`, the
    /// last one `+Inf` (the encoders accumulate them, and write `le="+Inf"`
    /// only for a bucket given with an infinite bound).
    pub buckets: Vec<(f64, u64)>,
    /// Sum of the observations, seconds (from hdrhistogram's buckets, to
    /// its 3 significant digits).
    pub sum: f64,
    /// Observations.
    pub count: u64,
    /// The same observations in native buckets.
    pub native: native::Native,
}

impl Buckets {
    /// Classic buckets of an hdrhistogram whose values are in units of
    /// `unit` seconds. A value counts in the first bucket whose bound is
    /// at least the lowest value hdrhistogram holds as equal to it.
    pub fn from_hdr(h: &Histogram<u64>, unit: f64, bounds: &[f64]) -> Self {
        let mut counts = vec![0u64; bounds.len() + 1];
        let mut sum = 0.0;
        for v in h.iter_recorded() {
            let value = v.value_iterated_to();
            let n = v.count_at_value();
            sum += h.median_equivalent(value) as f64 * unit * n as f64;
            let secs = h.lowest_equivalent(value) as f64 * unit;
            let at = bounds.partition_point(|b| *b < secs);
            if let Some(c) = counts.get_mut(at) {
                *c += n;
            }
        }
        Self {
            buckets: bounds
                .iter()
                .copied()
                .chain([f64::INFINITY])
                .zip(counts)
                .collect(),
            sum,
            count: h.len(),
            native: native::Native::from_hdr(h, unit),
        }
    }
}

/// What the feeder counts beside the table, since ctscope started.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FeedCounters {
    /// Events delivered by the source (after the filters): NEW, UPDATE,
    /// DESTROY.
    pub events: [u64; 3],
    /// ctnetlink receive buffer overruns (ENOBUFS); each lost one event or
    /// more, the kernel does not say how many.
    pub netlink_overruns: u64,
    /// Records the eBPF programs could not write: the ring was full.
    pub ring_full: u64,
    /// Events the runs of the eBPF programs the kernel skipped may have
    /// been (0 where it does not count them).
    pub skipped: u64,
    /// Events dropped while a resync ran, past the backlog's bound.
    pub backlog_lost: u64,
    /// Messages or records that could not be decoded.
    pub malformed: u64,
    /// Resyncs done (full dumps reconciled with the table).
    pub resyncs: u64,
    /// Resyncs that failed (the dump did not complete).
    pub resync_errors: u64,
    /// Entries a resync found that the events had not said (missed NEW).
    pub drift_missed: u64,
    /// Entries a resync found gone that the events had not said (missed
    /// DESTROY).
    pub drift_stale: u64,
    /// How long the last resync took (dump and reconciliation), seconds.
    pub last_resync_seconds: f64,
}

/// The table and the feeder's counters at one moment: all a scrape shows
/// but the kernel's and the process's figures.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// The feeder's counters.
    pub feed: FeedCounters,
    /// Entries in ctscope's table (those the filters select).
    pub table_entries: u64,
    /// Entries per protocol: `(label, count)`, the name conntrack prints or
    /// else the number.
    pub protocols: Vec<(String, u64)>,
    /// TCP entries per state.
    pub tcp_states: Vec<(&'static str, u64)>,
    /// Entries per zone.
    pub zones: Vec<(u16, u64)>,
    /// The sources with the most entries (`--top-talkers`).
    pub top_sources: Vec<(IpAddr, u64)>,
    /// The destinations with the most entries (`--top-talkers`).
    pub top_destinations: Vec<(IpAddr, u64)>,
    /// Connection lifetime per protocol name.
    pub lifetime: Vec<(&'static str, Buckets)>,
    /// TCP set-up time.
    pub tcp_setup: Buckets,
    /// Event delivery latency (eBPF source).
    pub delivery: Buckets,
}

/// The label of a protocol number: conntrack's name, else the number (so
/// two unnamed protocols never share a series).
pub fn protocol_label(p: u8) -> String {
    match proto_name(p) {
        "unknown" => p.to_string(),
        name => name.to_string(),
    }
}

impl Snapshot {
    /// Reads the table's census and histograms; `top_talkers` sources and
    /// destinations when the table counts addresses.
    pub fn of(table: &Table, feed: FeedCounters, top_talkers: usize) -> Self {
        let census = table.census();
        let mut lifetime: Vec<(&'static str, Buckets)> = table
            .stats
            .lifetime_ms
            .iter()
            .map(|(p, h)| (*p, Buckets::from_hdr(h, 1e-3, &LIFETIME_BOUNDS)))
            .collect();
        lifetime.sort_unstable_by_key(|(p, _)| *p);
        Self {
            feed,
            table_entries: table.len() as u64,
            protocols: census
                .by_proto()
                .map(|(p, n)| (protocol_label(p), n))
                .collect(),
            tcp_states: census.tcp_states().collect(),
            zones: census.zones(),
            top_sources: census.top_sources(top_talkers),
            top_destinations: census.top_destinations(top_talkers),
            lifetime,
            tcp_setup: Buckets::from_hdr(&table.stats.tcp_setup_us, 1e-6, &TCP_SETUP_BOUNDS),
            delivery: Buckets::from_hdr(&table.stats.delivery_ns, 1e-9, &DELIVERY_BOUNDS),
        }
    }

    /// The same table figures with newer feeder counters (while a resync
    /// holds the table).
    pub fn with_feed(&self, feed: FeedCounters) -> Self {
        Self {
            feed,
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::ct::{EventKind, proto, samples::flow};

    #[test]
    fn hdr_to_classic_buckets() {
        let mut h = Histogram::<u64>::new(3).expect("histogram");
        for ms in [5, 10, 11, 1000, 300_000, 300_001, 10_000_000] {
            h.record(ms).expect("record");
        }
        let b = Buckets::from_hdr(&h, 1e-3, &LIFETIME_BOUNDS);
        assert_eq!(b.count, 7);
        // What the exposition shows: counts up to each bound.
        let at = |bound: f64| {
            b.buckets
                .iter()
                .take_while(|(le, _)| *le <= bound)
                .map(|(_, c)| *c)
                .reduce(|a, c| a + c)
        };
        // 5 ms and 10 ms are <= 0.01 s; 11 ms is not.
        assert_eq!(at(0.01), Some(2));
        assert_eq!(at(1.0), Some(4));
        // 300 s is within the 300 s bucket despite hdrhistogram's 128 ms
        // resolution there; 300.001 s is held equal to it.
        assert_eq!(at(300.0), Some(6));
        assert_eq!(at(432000.0), Some(7));
        let exact = (5 + 10 + 11 + 1000 + 300_000 + 300_001 + 10_000_000) as f64 * 1e-3;
        assert!(
            (b.sum - exact).abs() / exact < 0.001,
            "{} vs {exact}",
            b.sum
        );
        assert_eq!(at(f64::INFINITY), Some(7));
        // Past the last bound: only in +Inf.
        let mut big = Histogram::<u64>::new(3).expect("histogram");
        big.record(999_999_999).expect("record");
        let b = Buckets::from_hdr(&big, 1e-3, &LIFETIME_BOUNDS);
        assert_eq!(b.buckets.last(), Some(&(f64::INFINITY, 1)));
        assert_eq!(b.buckets.iter().map(|(_, c)| c).sum::<u64>(), 1);
        assert_eq!(b.count, 1);
    }

    #[test]
    fn snapshot_of_a_table() {
        let mut t = Table::new();
        t.track_talkers();
        let now = Instant::now();
        let mut a = flow("10.0.0.1", "10.0.0.2", proto::TCP, 1, 80);
        a.proto_state = Some(crate::ct::ProtoState::Tcp(3));
        t.apply(EventKind::New, &a, now, None);
        let b = flow("10.0.0.1", "10.0.0.3", 99, 0, 0);
        t.apply(EventKind::New, &b, now, None);
        let c = flow("10.0.0.4", "10.0.0.3", proto::UDP, 5, 53);
        t.apply(EventKind::New, &c, now, None);
        t.apply(EventKind::Destroy, &c, now + Duration::from_secs(2), None);
        let s = Snapshot::of(&t, FeedCounters::default(), 1);
        assert_eq!(s.table_entries, 2);
        assert_eq!(s.protocols, [("tcp".into(), 1), ("99".into(), 1)]);
        assert_eq!(s.tcp_states, [("ESTABLISHED", 1)]);
        assert_eq!(s.zones, [(0, 2)]);
        assert_eq!(s.top_sources, [("10.0.0.1".parse().expect("address"), 2)]);
        assert_eq!(s.lifetime.len(), 1);
        assert_eq!(s.lifetime[0].0, "udp");
        assert_eq!(s.lifetime[0].1.count, 1);
        assert_eq!(s.delivery.count, 0);
    }
}
