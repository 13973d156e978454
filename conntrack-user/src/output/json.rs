//! `-o json`: one JSON object per line, schema in the README.
//!
//! Hand-written encoder, and why: the object's shape is fixed, so its keys
//! and punctuation are written as literals, and only the free-form strings
//! (helper, security context, label names) go through serde_json's
//! escaping. serde_json's derive cost about 9,600 instructions per event,
//! half of it escaping the constant keys (callgrind, 2026-11-27): four
//! times the budget of an event stream on a busy box (BENCHMARKS.md). The
//! tests keep that derive as the reference this encoder must equal byte for
//! byte.
use std::{io::Write as _, net::IpAddr};

use super::{OutputOptions, text::ipv4_text};
use crate::ct::{
    Conntrack, Counters, EventKind, Tuple, ips, is_dnat, is_snat, label_bits, proto_name,
    state_name,
};

/// Event metadata added to JSON lines of events.
#[derive(Clone, Copy, Debug, Default)]
pub struct EventMeta<'a> {
    /// NEW / UPDATE / DESTROY.
    pub kind: Option<EventKind>,
    /// When the event happened (kernel time, ns since the epoch).
    pub time_ns: Option<u64>,
    /// "ebpf" or "netlink".
    pub source: Option<&'a str>,
    /// Network namespace inode (eBPF source with --all-netns).
    pub netns: Option<u32>,
}

/// Writes one entry as a JSON object and a newline. Schema in README.md.
pub fn write_json(out: &mut Vec<u8>, ct: &Conntrack, opts: &OutputOptions, meta: EventMeta<'_>) {
    let l4 = ct.l4proto();
    out.push(b'{');
    let mut o = Obj { out, first: true };
    if let Some(kind) = meta.kind {
        o.key("event");
        o.name(match kind {
            EventKind::New => "NEW",
            EventKind::Update => "UPDATE",
            EventKind::Destroy => "DESTROY",
        });
    }
    if let Some(ns) = meta.time_ns {
        o.key("time_ns");
        o.num(ns);
    }
    if let Some(source) = meta.source {
        o.key("source");
        o.string(source);
    }
    if let Some(netns) = meta.netns {
        o.key("netns");
        o.num(u64::from(netns));
    }
    o.key("family");
    o.name(if i32::from(ct.family) == libc::AF_INET6 {
        "ipv6"
    } else {
        "ipv4"
    });
    o.key("proto");
    o.name(proto_name(l4));
    o.key("protonum");
    o.num(u64::from(l4));
    o.key("timeout");
    o.opt_num(ct.timeout.map(u64::from));
    o.key("state");
    match ct.proto_state {
        Some(state) => o.name(state_name(state)),
        None => o.null(),
    }
    o.key("orig");
    o.tuple(&ct.orig, ct.counters_orig.as_ref());
    o.key("reply");
    o.tuple(&ct.reply, ct.counters_reply.as_ref());
    o.key("status");
    o.out.push(b'[');
    let status = ct.status.unwrap_or(0);
    let mut first = true;
    for (name, _) in ips::NAMES.iter().filter(|(_, bit)| status & bit != 0) {
        if !first {
            o.out.push(b',');
        }
        first = false;
        o.name(name);
    }
    o.out.push(b']');
    o.key("mark");
    o.opt_num(ct.mark.map(u64::from));
    o.key("secmark");
    o.opt_num(ct.secmark().map(u64::from));
    o.key("secctx");
    o.opt_string(ct.secctx());
    o.key("zone");
    o.opt_num(ct.zone.map(u64::from));
    o.key("use");
    o.opt_num(ct.use_count.map(u64::from));
    o.key("id");
    o.opt_num(ct.id.map(u64::from));
    o.key("timestamp");
    match ct.timestamp_start {
        Some(start) => {
            o.out.extend_from_slice(b"{\"start\":");
            super::text::put_u64(o.out, start);
            o.out.extend_from_slice(b",\"stop\":");
            o.opt_num(ct.timestamp_stop);
            o.out.push(b'}');
        }
        None => o.null(),
    }
    o.key("helper");
    o.opt_string(ct.helper());
    o.key("labels");
    match ct.labels() {
        Some(labels) => {
            o.out.push(b'[');
            for (i, bit) in label_bits(labels).enumerate() {
                if i > 0 {
                    o.out.push(b',');
                }
                match opts.labels.as_ref().and_then(|m| m.name(bit)) {
                    Some(name) => o.string(name),
                    None => {
                        o.out.push(b'"');
                        super::text::put_u64(o.out, u64::from(bit));
                        o.out.push(b'"');
                    }
                }
            }
            o.out.push(b']');
        }
        None => o.null(),
    }
    o.key("nat");
    o.out.extend_from_slice(if is_snat(ct) {
        b"{\"snat\":true,"
    } else {
        b"{\"snat\":false,"
    });
    o.out.extend_from_slice(if is_dnat(ct) {
        b"\"dnat\":true}}\n"
    } else {
        b"\"dnat\":false}}\n"
    });
}

/// The members of one JSON object being written.
struct Obj<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl Obj<'_> {
    /// `"k":`, after a comma unless it is the first member. Keys are
    /// plain ASCII literals: nothing to escape.
    fn key(&mut self, k: &'static str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(k.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    /// A name from ctscope's own tables (protocols, states, status bits):
    /// plain ASCII, nothing to escape.
    fn name(&mut self, s: &str) {
        self.out.push(b'"');
        self.out.extend_from_slice(s.as_bytes());
        self.out.push(b'"');
    }

    /// A free-form string, escaped by serde_json.
    fn string(&mut self, s: &str) {
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *self.out, s);
    }

    fn opt_string(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.string(s),
            None => self.null(),
        }
    }

    fn num(&mut self, v: u64) {
        super::text::put_u64(self.out, v);
    }

    fn opt_num(&mut self, v: Option<u64>) {
        match v {
            Some(v) => self.num(v),
            None => self.null(),
        }
    }

    fn null(&mut self) {
        self.out.extend_from_slice(b"null");
    }

    fn ip(&mut self, a: Option<&IpAddr>) {
        match a {
            Some(IpAddr::V4(v4)) => {
                let (buf, len) = ipv4_text(*v4);
                self.out.push(b'"');
                self.out.extend_from_slice(&buf[..len]);
                self.out.push(b'"');
            }
            Some(IpAddr::V6(v6)) => {
                let _ = write!(self.out, "\"{v6}\"");
            }
            None => self.null(),
        }
    }

    /// One direction: addresses, the protocol's keys, counters, zone.
    fn tuple(&mut self, t: &Tuple, c: Option<&Counters>) {
        self.out.push(b'{');
        let mut o = Obj {
            out: self.out,
            first: true,
        };
        o.key("src");
        o.ip(t.src.as_ref());
        o.key("dst");
        o.ip(t.dst.as_ref());
        for (k, v) in [
            ("sport", t.sport),
            ("dport", t.dport),
            ("type", t.icmp_type.map(u16::from)),
            ("code", t.icmp_code.map(u16::from)),
            ("id", t.icmp_id),
        ] {
            if let Some(v) = v {
                o.key(k);
                o.num(u64::from(v));
            }
        }
        o.key("packets");
        o.opt_num(c.map(|c| c.packets));
        o.key("bytes");
        o.opt_num(c.map(|c| c.bytes));
        o.key("zone");
        o.opt_num(t.zone.map(u64::from));
        o.out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use serde::{Serialize, Serializer};

    use super::*;
    use crate::ct::{
        CtExtra,
        samples::{flow, tcp_established as tcp_entry},
    };

    /// The serde_json derive the encoder replaced: the reference its output
    /// must equal byte for byte. Addresses go through std's Display here.
    mod reference {
        use super::*;

        /// An address as JSON, IPv4 written without the formatting machinery (the
        /// common case of a busy event stream), IPv6 as its Display.
        struct JsonIp(IpAddr);

        impl Serialize for JsonIp {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                match self.0 {
                    IpAddr::V4(_) | IpAddr::V6(_) => serializer.collect_str(&self.0),
                }
            }
        }

        /// The names of the set status bits, as a JSON array, without collecting
        /// them first.
        struct StatusNames(u32);

        impl Serialize for StatusNames {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_seq(
                    ips::NAMES
                        .iter()
                        .filter(|(_, bit)| self.0 & bit != 0)
                        .map(|(name, _)| name),
                )
            }
        }

        #[derive(Serialize)]
        struct JsonTuple {
            src: Option<JsonIp>,
            dst: Option<JsonIp>,
            #[serde(skip_serializing_if = "Option::is_none")]
            sport: Option<u16>,
            #[serde(skip_serializing_if = "Option::is_none")]
            dport: Option<u16>,
            #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
            icmp_type: Option<u8>,
            #[serde(rename = "code", skip_serializing_if = "Option::is_none")]
            icmp_code: Option<u8>,
            #[serde(rename = "id", skip_serializing_if = "Option::is_none")]
            icmp_id: Option<u16>,
            packets: Option<u64>,
            bytes: Option<u64>,
            zone: Option<u16>,
        }

        impl JsonTuple {
            fn new(t: &Tuple, c: Option<&Counters>) -> Self {
                Self {
                    src: t.src.map(JsonIp),
                    dst: t.dst.map(JsonIp),
                    sport: t.sport,
                    dport: t.dport,
                    icmp_type: t.icmp_type,
                    icmp_code: t.icmp_code,
                    icmp_id: t.icmp_id,
                    packets: c.map(|c| c.packets),
                    bytes: c.map(|c| c.bytes),
                    zone: t.zone,
                }
            }
        }

        #[derive(Serialize)]
        struct JsonTimestamp {
            start: u64,
            stop: Option<u64>,
        }

        #[derive(Serialize)]
        struct JsonNat {
            snat: bool,
            dnat: bool,
        }

        #[derive(Serialize)]
        struct JsonEntry<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            event: Option<EventKind>,
            #[serde(skip_serializing_if = "Option::is_none")]
            time_ns: Option<u64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            source: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            netns: Option<u32>,
            family: &'static str,
            proto: &'static str,
            protonum: u8,
            timeout: Option<u32>,
            state: Option<&'static str>,
            orig: JsonTuple,
            reply: JsonTuple,
            status: StatusNames,
            mark: Option<u32>,
            secmark: Option<u32>,
            secctx: Option<&'a str>,
            zone: Option<u16>,
            #[serde(rename = "use")]
            use_count: Option<u32>,
            id: Option<u32>,
            timestamp: Option<JsonTimestamp>,
            helper: Option<&'a str>,
            labels: Option<Vec<String>>,
            nat: JsonNat,
        }

        /// Writes one entry as a JSON object and a newline. Schema in README.md.
        pub fn write_json(
            out: &mut Vec<u8>,
            ct: &Conntrack,
            opts: &OutputOptions,
            meta: EventMeta<'_>,
        ) {
            let l4 = ct.l4proto();
            let labels = ct.labels().map(|l| {
                label_bits(l)
                    .map(|bit| {
                        opts.labels
                            .as_ref()
                            .and_then(|m| m.name(bit))
                            .map_or_else(|| bit.to_string(), str::to_string)
                    })
                    .collect()
            });
            let entry = JsonEntry {
                event: meta.kind,
                time_ns: meta.time_ns,
                source: meta.source,
                netns: meta.netns,
                family: if i32::from(ct.family) == libc::AF_INET6 {
                    "ipv6"
                } else {
                    "ipv4"
                },
                proto: proto_name(l4),
                protonum: l4,
                timeout: ct.timeout,
                state: ct.proto_state.map(state_name),
                orig: JsonTuple::new(&ct.orig, ct.counters_orig.as_ref()),
                reply: JsonTuple::new(&ct.reply, ct.counters_reply.as_ref()),
                status: StatusNames(ct.status.unwrap_or(0)),
                mark: ct.mark,
                secmark: ct.secmark(),
                secctx: ct.secctx(),
                zone: ct.zone,
                use_count: ct.use_count,
                id: ct.id,
                timestamp: ct.timestamp_start.map(|start| JsonTimestamp {
                    start,
                    stop: ct.timestamp_stop,
                }),
                helper: ct.helper(),
                labels,
                nat: JsonNat {
                    snat: is_snat(ct),
                    dnat: is_dnat(ct),
                },
            };
            // Serializing plain data into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, &entry);
            out.push(b'\n');
        }
    }

    fn line(ct: &Conntrack, opts: &OutputOptions, meta: EventMeta<'_>) -> (String, String) {
        let mut ours = Vec::new();
        write_json(&mut ours, ct, opts, meta);
        let mut theirs = Vec::new();
        reference::write_json(&mut theirs, ct, opts, meta);
        (
            String::from_utf8(ours).expect("utf-8"),
            String::from_utf8(theirs).expect("utf-8"),
        )
    }

    #[test]
    fn the_encoder_writes_what_serde_json_wrote() {
        let mut rich = tcp_entry();
        rich.timestamp_stop = Some(1_700_000_001_000_000_000);
        rich.counters_orig = Some(Counters {
            packets: 3,
            bytes: 180,
        });
        let mut labels = [0u8; 16];
        labels[0] = 0b101;
        labels[15] = 0x80;
        rich.extra = Some(Box::new(CtExtra {
            secmark: Some(9),
            helper: Some("ftp".into()),
            secctx: Some("system_u:\"quoted\"\\back\u{1}\u{e9}".into()),
            labels: Some(labels),
            ..CtExtra::default()
        }));
        let mut bare = flow("10.0.0.1", "10.0.0.2", 17, 1000, 53);
        bare.status = None;
        let mut icmp = flow("192.168.100.254", "8.8.8.8", 1, 77, 0);
        icmp.timeout = Some(29);
        let v6 = flow("2001:db8::1", "::ffff:1.2.3.4", 6, 443, 55555);
        let mut no_addr = flow("1.1.1.1", "2.2.2.2", 132, 1, 2);
        no_addr.orig.src = None;
        let named = OutputOptions {
            labels: Some(crate::output::LabelMap::parse(b"0 zero\n2 tw\"o\\\n")),
            ..OutputOptions::default()
        };
        let metas = [
            EventMeta::default(),
            EventMeta {
                kind: Some(EventKind::Destroy),
                time_ns: Some(1_700_000_000_123_456_789),
                source: Some("ebpf"),
                netns: Some(4_026_531_840),
            },
            EventMeta {
                kind: Some(EventKind::Update),
                source: Some("netlink"),
                ..EventMeta::default()
            },
        ];
        for ct in [&rich, &bare, &icmp, &v6, &no_addr] {
            for opts in [&OutputOptions::default(), &named] {
                for meta in metas {
                    let (ours, theirs) = line(ct, opts, meta);
                    assert_eq!(ours, theirs);
                    let v: serde_json::Value = serde_json::from_str(&ours).expect("valid JSON");
                    assert!(v.is_object() && ours.ends_with("}\n"));
                }
            }
        }
        // The names file was used, and unnamed bits kept their numbers.
        let (ours, _) = line(&rich, &named, EventMeta::default());
        assert!(
            ours.contains(r#""labels":["zero","tw\"o\\","127"]"#),
            "{ours}"
        );
    }

    #[test]
    fn json_carries_every_value() {
        let mut out = Vec::new();
        write_json(
            &mut out,
            &tcp_entry(),
            &OutputOptions::default(),
            EventMeta::default(),
        );
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["proto"], "tcp");
        assert_eq!(v["state"], "ESTABLISHED");
        assert_eq!(v["orig"]["src"], "1.2.3.4");
        assert_eq!(v["reply"]["sport"], 20);
        assert_eq!(v["mark"], 7);
        assert_eq!(v["zone"], 3);
        assert_eq!(
            v["status"],
            serde_json::json!(["SEEN_REPLY", "ASSURED", "CONFIRMED"])
        );
        assert_eq!(v["nat"]["snat"], false);
        assert!(out.ends_with(b"}\n"));
    }
}
