//! The exposition formats, checked on a fixed scrape.
use prometheus_client::encoding::prometheus_protobuf::prometheus_data_model::{
    MetricFamily, MetricType as PbType,
};
use prost::Message;

use super::*;
use crate::metrics::{FeedCounters, Snapshot, native::Native};

#[test]
fn accept_header_picks_the_format() {
    const PROMETHEUS_2_CLASSIC: &str = "application/openmetrics-text;version=1.0.0,\
        application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    // What Prometheus 2.42 sends with --enable-feature=native-histograms.
    const PROMETHEUS_2_NATIVE: &str = "application/vnd.google.protobuf;\
        proto=io.prometheus.client.MetricFamily;encoding=delimited,\
        application/openmetrics-text;version=1.0.0;q=0.8,\
        application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    for (accept, want) in [
        (None, Format::Prometheus),
        (Some("text/plain"), Format::Prometheus),
        (Some("*/*"), Format::Prometheus),
        (Some(PROMETHEUS_2_CLASSIC), Format::OpenMetrics),
        (Some(PROMETHEUS_2_NATIVE), Format::Protobuf),
        (Some("Application/OpenMetrics-Text"), Format::OpenMetrics),
        (
            Some("application/openmetrics-text; q=0, text/plain"),
            Format::Prometheus,
        ),
        // Text asked for above OpenMetrics.
        (
            Some("text/plain, application/openmetrics-text;q=0.5"),
            Format::Prometheus,
        ),
        // Protobuf only as delimited MetricFamily messages.
        (
            Some("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily"),
            Format::Prometheus,
        ),
        (
            Some(
                "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;\
                 encoding=delimited;q=0.2,application/openmetrics-text;q=0.9",
            ),
            Format::OpenMetrics,
        ),
    ] {
        assert_eq!(Format::from_accept(accept), want, "{accept:?}");
    }
}

fn scrape(node_names: bool, source: &'static str) -> Scrape {
    let mut snapshot = Snapshot {
        feed: FeedCounters {
            events: [3, 2, 1],
            ..FeedCounters::default()
        },
        table_entries: 2,
        protocols: vec![("tcp".into(), 1), ("udp".into(), 1)],
        zones: vec![(0, 2)],
        top_sources: vec![("10.0.0.1".parse().expect("address"), 2)],
        ..Snapshot::default()
    };
    let empty = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
    snapshot.tcp_setup = Buckets::from_hdr(&empty, 1e-6, &crate::metrics::TCP_SETUP_BOUNDS);
    snapshot.delivery = Buckets::from_hdr(&empty, 1e-9, &crate::metrics::DELIVERY_BOUNDS);
    snapshot.lifetime = vec![(
        "udp",
        Buckets {
            buckets: vec![(1.0, 1), (10.0, 1), (f64::INFINITY, 0)],
            sum: 5.5,
            count: 2,
            // 1 s and 4.5 s: buckets 0 and 18 of schema 3.
            native: Native {
                zero_count: 0,
                spans: vec![(0, 1), (17, 1)],
                deltas: vec![1, 0],
            },
        },
    )];
    Scrape {
        info: Arc::new(ExporterInfo {
            source,
            requested: "auto",
            node_exporter_names: node_names,
            ring_size: (source == "ebpf").then_some(1 << 25),
            probes_attached: if source == "ebpf" { 6 } else { 0 },
            ..ExporterInfo::default()
        }),
        snapshot: Arc::new(snapshot),
        kernel: Some(KernelStats {
            entries: Some(2),
            limit: Some(65536),
            stats: vec![("found", 7), ("early_drop", 1)],
        }),
        kernel_read_errors: 0,
        process: None,
    }
}

#[test]
fn both_formats_name_type_and_describe_every_family() {
    for format in [Format::Prometheus, Format::OpenMetrics] {
        let body = String::from_utf8(scrape(false, "netlink").encode(format).expect("encoded"))
            .expect("utf-8");
        for line in [
            "ctscope_nf_conntrack_entries 2",
            "ctscope_nf_conntrack_entries_limit 65536",
            "ctscope_nf_conntrack_stat_early_drop 1",
            "ctscope_events_total{type=\"new\"} 3",
            "ctscope_protocol_entries{protocol=\"udp\"} 1",
            "ctscope_top_talker_entries{direction=\"source\",address=\"10.0.0.1\"} 2",
            "ctscope_connection_lifetime_seconds_bucket{protocol=\"udp\",le=\"10.0\"} 2",
            "ctscope_connection_lifetime_seconds_count{protocol=\"udp\"} 2",
            "ctscope_connection_lifetime_seconds_bucket{protocol=\"udp\",le=\"+Inf\"} 2",
            "ctscope_source_info{source=\"netlink\",requested=\"auto\",version=\"0.1.0\"} 1",
            "ctscope_ebpf_probes_attached 0",
        ] {
            // The text format writes le="10" where OpenMetrics writes
            // "10.0", and OpenMetrics puts le first.
            let text = line.replace("le=\"10.0\"", "le=\"10\"");
            let om = ["10.0", "+Inf"].iter().fold(line.to_string(), |l, le| {
                l.replace(
                    &format!("{{protocol=\"udp\",le=\"{le}\"}}"),
                    &format!("{{le=\"{le}\",protocol=\"udp\"}}"),
                )
            });
            assert!(
                body.lines().any(|l| l == line || l == text || l == om),
                "{format:?}: no `{line}` in\n{body}"
            );
        }
        // Every sample's family has HELP and TYPE lines before it.
        for l in body.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap_or("");
            let family = ["_bucket", "_sum", "_count", "_total", "_info"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            assert!(
                body.contains(&format!("# HELP {family}")),
                "{format:?}: no HELP for {name}"
            );
            assert!(body.contains(&format!("# TYPE {family}")));
        }
        assert_eq!(body.ends_with("# EOF\n"), format == Format::OpenMetrics);
        // No delivery histogram without eBPF.
        assert!(!body.contains("ctscope_event_delivery"));
    }
}

#[test]
fn node_exporter_names_and_ebpf_gauges() {
    let body = String::from_utf8(
        scrape(true, "ebpf")
            .encode(Format::Prometheus)
            .expect("encoded"),
    )
    .expect("utf-8");
    assert!(body.contains("\nnode_nf_conntrack_entries 2\n"), "{body}");
    assert!(body.contains("\nnode_nf_conntrack_stat_found 7\n"));
    assert!(!body.contains("ctscope_nf_conntrack"));
    assert!(body.contains("\nctscope_ebpf_probes_attached 6\n"));
    assert!(body.contains("\nctscope_ebpf_ring_buffer_bytes 33554432\n"));
    assert!(body.contains("ctscope_event_delivery_seconds_count 0"));
    assert!(!body.contains("ctscope_netlink_receive_buffer"));
}

/// The families of a protobuf body, decoded as Prometheus does:
/// length-delimited messages back to back.
fn families(mut body: &[u8]) -> Vec<MetricFamily> {
    let mut out = Vec::new();
    while !body.is_empty() {
        out.push(MetricFamily::decode_length_delimited(&mut body).expect("a MetricFamily"));
    }
    out
}

#[test]
fn protobuf_carries_every_family_and_native_buckets() {
    let text = String::from_utf8(
        scrape(false, "ebpf")
            .encode(Format::Prometheus)
            .expect("encoded"),
    )
    .expect("utf-8");
    let pb = families(
        &scrape(false, "ebpf")
            .encode(Format::Protobuf)
            .expect("encoded"),
    );
    // The same families as the text format, by name and type.
    let text_families: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    let pb_families: Vec<(&str, &str)> = pb
        .iter()
        .map(|f| {
            let kind = match f.r#type() {
                PbType::Counter => "counter",
                PbType::Gauge => "gauge",
                PbType::Histogram => "histogram",
                _ => "other",
            };
            (f.name.as_str(), kind)
        })
        .collect();
    // prometheus-client's text format names a counter's family without
    // `_total` and an info metric's with `_info`; protobuf names the
    // samples.
    fn normal((n, k): (&str, &str)) -> (String, String) {
        let n = if k == "counter" {
            n.strip_suffix("_total").unwrap_or(n)
        } else {
            n
        };
        (n.to_string(), k.to_string())
    }
    let mut want: Vec<_> = text_families.into_iter().map(normal).collect();
    let mut got: Vec<_> = pb_families.into_iter().map(normal).collect();
    want.sort();
    got.sort();
    assert_eq!(got, want);
    let lifetime = pb
        .iter()
        .find(|f| f.name == "ctscope_connection_lifetime_seconds")
        .expect("the lifetime family");
    let h = lifetime.metric[0].histogram.as_ref().expect("a histogram");
    assert_eq!(lifetime.metric[0].label[0].value, "udp");
    assert_eq!((h.sample_count, h.sample_sum), (2, 5.5));
    // Classic buckets stay, cumulative; native ones come beside them.
    let classic: Vec<(f64, u64)> = h
        .bucket
        .iter()
        .map(|b| (b.upper_bound, b.cumulative_count))
        .collect();
    assert_eq!(classic, [(1.0, 1), (10.0, 2), (f64::INFINITY, 2)]);
    assert_eq!((h.schema, h.zero_threshold), (SCHEMA, ZERO_THRESHOLD));
    let spans: Vec<(i32, u32)> = h
        .positive_span
        .iter()
        .map(|s| (s.offset, s.length))
        .collect();
    assert_eq!(spans, [(0, 1), (17, 1)]);
    assert_eq!(h.positive_delta, [1, 0]);
    // An empty histogram is still native (a zero threshold above 0).
    let delivery = pb
        .iter()
        .find(|f| f.name == "ctscope_event_delivery_seconds")
        .expect("the delivery family");
    let d = delivery.metric[0].histogram.as_ref().expect("a histogram");
    assert_eq!(d.sample_count, 0);
    assert!(d.zero_threshold > 0.0 && d.positive_span.is_empty());
    let source = pb
        .iter()
        .find(|f| f.name == "ctscope_source_info")
        .expect("the info metric");
    assert!(
        source.metric[0]
            .label
            .iter()
            .any(|l| l.name == "source" && l.value == "ebpf")
    );
}
