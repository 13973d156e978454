//! One scrape's metrics, encoded with prometheus-client (a collector built
//! per scrape from the snapshot, the kernel's and the process's figures) in
//! the Prometheus text format (0.0.4), OpenMetrics 1.0, or Prometheus's
//! protobuf format, as the scraper's Accept header asks. Histograms carry
//! classic buckets in every format and native buckets too in protobuf (the
//! only format Prometheus reads native histograms from). Every metric has
//! HELP text; label values are bounded (protocols, TCP states, zones, and
//! `--top-talkers` addresses only).
use std::{fmt, sync::Arc};

use prometheus_client::{
    collector::Collector,
    encoding::{
        DescriptorEncoder, EncodeGaugeValue, EncodeMetric, NativeHistogram, NativeHistogramBuckets,
        NoLabelSet,
    },
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};

use super::{
    Buckets, Snapshot,
    kernel::KernelStats,
    native::{SCHEMA, ZERO_THRESHOLD},
    process::ProcessStats,
};

/// The exposition format of a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format, version 0.0.4.
    Prometheus,
    /// OpenMetrics 1.0 text.
    OpenMetrics,
    /// Length-delimited `io.prometheus.client.MetricFamily` messages, with
    /// native histograms.
    Protobuf,
}

/// The media type and parameters Prometheus asks for protobuf with.
const PROTOBUF_MEDIA: &str = "application/vnd.google.protobuf";

impl Format {
    /// The format the Accept header prefers: the highest q among what it
    /// offers (protobuf first, then OpenMetrics, on a tie); the text format
    /// when it offers nothing else, or nothing at all.
    pub fn from_accept(accept: Option<&str>) -> Self {
        let mut best = (Self::Prometheus, 0.0f64);
        for range in accept.unwrap_or("").split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("");
            let (mut q, mut proto, mut delimited) = (1.0f64, false, false);
            for p in parts {
                let Some((k, v)) = p.split_once('=') else {
                    continue;
                };
                let v = v.trim().trim_matches('"');
                match k.trim().to_ascii_lowercase().as_str() {
                    "q" => q = v.parse().unwrap_or(0.0),
                    "proto" => proto = v == "io.prometheus.client.MetricFamily",
                    "encoding" => delimited = v == "delimited",
                    _ => {}
                }
            }
            let format = if media.eq_ignore_ascii_case(PROTOBUF_MEDIA) && proto && delimited {
                Self::Protobuf
            } else if media.eq_ignore_ascii_case("application/openmetrics-text") {
                Self::OpenMetrics
            } else {
                continue;
            };
            let rank = |f: Self| match f {
                Self::Protobuf => 2,
                Self::OpenMetrics => 1,
                Self::Prometheus => 0,
            };
            if q > best.1 || (q == best.1 && q > 0.0 && rank(format) > rank(best.0)) {
                best = (format, q);
            }
        }
        // A text range offered above the best other one wins.
        let text_q = accept
            .unwrap_or("")
            .split(',')
            .filter_map(|range| {
                let mut parts = range.split(';').map(str::trim);
                let media = parts.next().unwrap_or("");
                (media.eq_ignore_ascii_case("text/plain")).then(|| {
                    parts
                        .find_map(|p| p.strip_prefix("q="))
                        .map_or(1.0, |q| q.parse().unwrap_or(0.0))
                })
            })
            .fold(0.0f64, f64::max);
        if text_q > best.1 {
            Self::Prometheus
        } else {
            best.0
        }
    }

    /// The response's Content-Type.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Protobuf => {
                "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; \
                 encoding=delimited"
            }
        }
    }
}

/// What does not change while ctscope serves.
#[derive(Clone, Debug, Default)]
pub struct ExporterInfo {
    /// The event source in use: `"ebpf"` or `"netlink"`.
    pub source: &'static str,
    /// The source asked for: `"auto"`, `"ebpf"` or `"netlink"`.
    pub requested: &'static str,
    /// The eBPF ring buffer, bytes (eBPF source).
    pub ring_size: Option<u64>,
    /// The netlink receive buffer, bytes (ctnetlink source).
    pub rcvbuf: Option<u64>,
    /// kprobes attached (0 with ctnetlink).
    pub probes_attached: u64,
    /// Name the kernel's gauges as node_exporter does (`node_nf_conntrack_*`).
    pub node_exporter_names: bool,
}

/// Everything one scrape shows.
#[derive(Clone, Debug)]
pub struct Scrape {
    /// What does not change.
    pub info: Arc<ExporterInfo>,
    /// The table and the feeder's counters, as last published.
    pub snapshot: Arc<Snapshot>,
    /// The kernel's figures, unless reading them failed.
    pub kernel: Option<KernelStats>,
    /// Scrapes whose kernel figures could not be read, so far.
    pub kernel_read_errors: u64,
    /// This process's figures, where /proc has them.
    pub process: Option<ProcessStats>,
}

/// The HELP text of node_exporter's conntrack collector, by statistic.
fn stat_help(name: &str) -> &'static str {
    match name {
        "found" => "Number of searched entries which were successful.",
        "invalid" => "Number of packets seen which can not be tracked.",
        "ignore" => "Number of packets seen which are already connected to a conntrack entry.",
        "insert" => "Number of entries inserted into the list.",
        "insert_failed" => "Number of entries for which list insertion was attempted but failed.",
        "drop" => "Number of packets dropped due to conntrack failure.",
        "early_drop" => {
            "Number of dropped conntrack entries to make room for new ones, if maximum table size was reached."
        }
        "search_restart" => {
            "Number of conntrack table lookups which had to be restarted due to hashtable resizes."
        }
        "clash_resolve" => {
            "Number of insertion clashes resolved by reusing the entry already there (not in node_exporter)."
        }
        "chaintoolong" => {
            "Number of entries dropped because their hash chain was too long (not in node_exporter)."
        }
        _ => "A conntrack statistic, summed over CPUs.",
    }
}

impl Scrape {
    /// The response body in `format`. Fails only if prometheus-client
    /// refuses a metric (the collector never fails on its own).
    pub fn encode(self, format: Format) -> Result<Vec<u8>, fmt::Error> {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::with_capacity(16 << 10);
        match format {
            Format::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?
            }
            Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &registry)?,
            Format::Protobuf => {
                return prometheus_client::encoding::prometheus_protobuf::encode_to_vec(&registry)
                    .map_err(|_| fmt::Error);
            }
        }
        Ok(out.into_bytes())
    }
}

/// A gauge without labels.
fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: impl EncodeGaugeValue,
) -> fmt::Result {
    let g = ConstGauge::new(value);
    g.encode(enc.encode_descriptor(name, help, unit, g.metric_type())?)
}

/// A counter without labels (the encoder adds `_total`).
fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: impl prometheus_client::encoding::EncodeCounterValue,
) -> fmt::Result {
    let c = ConstCounter::new(value);
    c.encode(enc.encode_descriptor(name, help, unit, c.metric_type())?)
}

/// A family of gauges or counters, one per label set; nothing when empty.
fn family<V>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: impl IntoIterator<Item = (Vec<(&'static str, String)>, V)>,
    encode: impl Fn(prometheus_client::encoding::MetricEncoder, V) -> fmt::Result,
) -> fmt::Result {
    let mut rows = rows.into_iter().peekable();
    if rows.peek().is_none() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in rows {
        encode(m.encode_family(&labels)?, value)?;
    }
    Ok(())
}

fn gauge_rows(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Vec<(&'static str, String)>, u64)>,
) -> fmt::Result {
    family(enc, name, help, MetricType::Gauge, rows, |m, v| {
        ConstGauge::new(v).encode(m)
    })
}

fn counter_rows(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Vec<(&'static str, String)>, u64)>,
) -> fmt::Result {
    family(enc, name, help, MetricType::Counter, rows, |m, v| {
        ConstCounter::new(v).encode(m)
    })
}

/// A histogram in seconds, one series per label set (an empty set: the
/// one series has no labels): classic buckets, and native ones where the
/// format has them.
fn histograms<'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Vec<(&'static str, String)>, &'a Buckets)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    for (labels, b) in rows {
        let native = NativeHistogram {
            schema: SCHEMA,
            zero_threshold: ZERO_THRESHOLD,
            zero_count: b.native.zero_count,
            negative: NativeHistogramBuckets {
                spans: &[],
                deltas: &[],
            },
            positive: NativeHistogramBuckets {
                spans: &b.native.spans,
                deltas: &b.native.deltas,
            },
            created: None,
        };
        // The text encoders refuse a histogram without classic buckets
        // (from_hdr always makes them).
        if b.buckets.is_empty() {
            continue;
        }
        if labels.is_empty() {
            m.encode_histogram_with_native::<NoLabelSet>(b.sum, b.count, &b.buckets, None, native)?;
        } else {
            m.encode_family(&labels)?
                .encode_histogram_with_native::<NoLabelSet>(
                    b.sum, b.count, &b.buckets, None, native,
                )?;
        }
    }
    Ok(())
}

fn label(key: &'static str, value: impl ToString) -> Vec<(&'static str, String)> {
    vec![(key, value.to_string())]
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        self.encode_kernel(&mut enc)?;
        self.encode_table(&mut enc)?;
        self.encode_feed(&mut enc)?;
        self.encode_histograms(&mut enc)?;
        self.encode_tracer(&mut enc)?;
        self.encode_process(&mut enc)
    }
}

impl Scrape {
    fn encode_kernel(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let prefix = if self.info.node_exporter_names {
            "node"
        } else {
            "ctscope"
        };
        if let Some(k) = &self.kernel {
            if let Some(n) = k.entries {
                gauge(
                    enc,
                    &format!("{prefix}_nf_conntrack_entries"),
                    "Number of currently allocated flow entries for connection tracking.",
                    None,
                    n,
                )?;
            }
            if let Some(n) = k.limit {
                gauge(
                    enc,
                    &format!("{prefix}_nf_conntrack_entries_limit"),
                    "Maximum size of connection tracking table.",
                    None,
                    n,
                )?;
            }
            for (stat, n) in &k.stats {
                gauge(
                    enc,
                    &format!("{prefix}_nf_conntrack_stat_{stat}"),
                    stat_help(stat),
                    None,
                    *n,
                )?;
            }
        }
        counter(
            enc,
            "ctscope_kernel_read_errors",
            "Scrapes whose kernel figures (nf_conntrack_*) could not be read over ctnetlink.",
            None,
            self.kernel_read_errors,
        )
    }

    fn encode_table(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let s = &self.snapshot;
        gauge(
            enc,
            "ctscope_table_entries",
            "Entries in ctscope's live table (events reconciled with dumps; those the filters select).",
            None,
            s.table_entries,
        )?;
        gauge_rows(
            enc,
            "ctscope_protocol_entries",
            "Entries in ctscope's table per layer 4 protocol.",
            s.protocols.iter().map(|(p, n)| (label("protocol", p), *n)),
        )?;
        gauge_rows(
            enc,
            "ctscope_tcp_state_entries",
            "TCP entries in ctscope's table per conntrack state (UNKNOWN: no state reported yet).",
            s.tcp_states.iter().map(|(st, n)| (label("state", st), *n)),
        )?;
        gauge_rows(
            enc,
            "ctscope_zone_entries",
            "Entries in ctscope's table per conntrack zone (0: no zone).",
            s.zones.iter().map(|(z, n)| (label("zone", z), *n)),
        )?;
        let talkers = s
            .top_sources
            .iter()
            .map(|(a, n)| ("source", a, n))
            .chain(
                s.top_destinations
                    .iter()
                    .map(|(a, n)| ("destination", a, n)),
            )
            .map(|(dir, a, n)| {
                (
                    vec![("direction", dir.to_string()), ("address", a.to_string())],
                    *n,
                )
            });
        gauge_rows(
            enc,
            "ctscope_top_talker_entries",
            "Entries of the original sources and destinations with the most entries (--top-talkers).",
            talkers,
        )
    }

    fn encode_feed(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let f = &self.snapshot.feed;
        counter_rows(
            enc,
            "ctscope_events",
            "Connection events received from the source (after the filters), by type.",
            ["new", "update", "destroy"]
                .into_iter()
                .zip(f.events)
                .map(|(t, n)| (label("type", t), n)),
        )?;
        counter_rows(
            enc,
            "ctscope_events_lost",
            "Events lost, by reason: netlink_overrun counts receive buffer overruns (ENOBUFS; each \
             lost one event or more), ring_buffer_full eBPF records, skipped_by_kernel events that \
             runs of the eBPF programs the kernel skipped may have been (another BPF program or \
             kprobe handler running on that CPU), resync_backlog events dropped while a resync \
             ran.",
            [
                ("netlink_overrun", f.netlink_overruns),
                ("ring_buffer_full", f.ring_full),
                ("skipped_by_kernel", f.skipped),
                ("resync_backlog", f.backlog_lost),
            ]
            .into_iter()
            .map(|(r, n)| (label("reason", r), n)),
        )?;
        counter(
            enc,
            "ctscope_events_malformed",
            "Event messages or records that could not be decoded.",
            None,
            f.malformed,
        )?;
        counter(
            enc,
            "ctscope_resyncs",
            "Full dumps reconciled with ctscope's table (periodic, and at once after a loss).",
            None,
            f.resyncs,
        )?;
        counter(
            enc,
            "ctscope_resync_errors",
            "Resyncs whose dump failed.",
            None,
            f.resync_errors,
        )?;
        counter_rows(
            enc,
            "ctscope_resync_drift_entries",
            "Entries resyncs found the events had not told: missed (in the dump, not the table) \
             and stale (in the table, not the dump).",
            [("missed", f.drift_missed), ("stale", f.drift_stale)]
                .into_iter()
                .map(|(k, n)| (label("kind", k), n)),
        )?;
        gauge(
            enc,
            "ctscope_last_resync_duration",
            "How long the last resync took: the dump and its reconciliation.",
            Some(&Unit::Seconds),
            f.last_resync_seconds,
        )
    }

    fn encode_histograms(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let s = &self.snapshot;
        if !s.lifetime.is_empty() {
            histograms(
                enc,
                "ctscope_connection_lifetime",
                "Lifetime of the connections destroyed, per layer 4 protocol (kernel timestamps when \
                 nf_conntrack_timestamp=1, else from when ctscope first saw them).",
                s.lifetime.iter().map(|(p, b)| (label("protocol", p), b)),
            )?;
        }
        histograms(
            enc,
            "ctscope_tcp_setup",
            "TCP set-up time: from the NEW event to ESTABLISHED.",
            [(Vec::new(), &s.tcp_setup)],
        )?;
        if self.info.source == "ebpf" {
            histograms(
                enc,
                "ctscope_event_delivery",
                "eBPF event delivery latency: from the kernel's timestamp to ctscope handling it.",
                [(Vec::new(), &s.delivery)],
            )?;
        }
        Ok(())
    }

    fn encode_tracer(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let i = &self.info;
        let info = prometheus_client::metrics::info::Info::new(vec![
            ("source", i.source.to_string()),
            ("requested", i.requested.to_string()),
            ("version", env!("CARGO_PKG_VERSION").to_string()),
        ]);
        info.encode(enc.encode_descriptor(
            "ctscope_source",
            "The event source in use (ebpf or netlink), the one asked for, and ctscope's version.",
            None,
            info.metric_type(),
        )?)?;
        gauge(
            enc,
            "ctscope_ebpf_probes_attached",
            "eBPF programs the tracer has attached: 2 fentry/fexit or 6 kprobes (0 with the ctnetlink source).",
            None,
            i.probes_attached,
        )?;
        if let Some(bytes) = i.ring_size {
            gauge(
                enc,
                "ctscope_ebpf_ring_buffer",
                "Size of the eBPF ring buffer (--ring-size).",
                Some(&Unit::Bytes),
                bytes,
            )?;
        }
        if let Some(bytes) = i.rcvbuf {
            gauge(
                enc,
                "ctscope_netlink_receive_buffer",
                "Receive buffer of the ctnetlink event socket (-b).",
                Some(&Unit::Bytes),
                bytes,
            )?;
        }
        Ok(())
    }

    fn encode_process(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let Some(p) = &self.process else {
            return Ok(());
        };
        counter(
            enc,
            "process_cpu",
            "Total user and system CPU time spent in seconds.",
            Some(&Unit::Seconds),
            p.cpu_seconds,
        )?;
        gauge(
            enc,
            "process_resident_memory",
            "Resident memory size in bytes.",
            Some(&Unit::Bytes),
            p.resident_bytes,
        )?;
        gauge(
            enc,
            "process_virtual_memory",
            "Virtual memory size in bytes.",
            Some(&Unit::Bytes),
            p.virtual_bytes,
        )?;
        gauge(
            enc,
            "process_start_time",
            "Start time of the process since unix epoch in seconds.",
            Some(&Unit::Seconds),
            p.start_time_seconds,
        )?;
        gauge(
            enc,
            "process_threads",
            "Number of OS threads in the process.",
            None,
            p.threads,
        )?;
        if let Some(n) = p.open_fds {
            gauge(
                enc,
                "process_open_fds",
                "Number of open file descriptors.",
                None,
                n,
            )?;
        }
        if let Some(n) = p.max_fds {
            gauge(
                enc,
                "process_max_fds",
                "Maximum number of open file descriptors.",
                None,
                n,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
