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
//!
//! The keys go out in fragments as long as the common event allows: one
//! literal from a member's value to the next (`,"timeout":`), the whole
//! run of null members of an entry without rare attributes, a tuple's null
//! counters and zone, the `nat` object; names from tables padded to a fixed
//! size (`Padded`); numbers and addresses from `output::digits`. That
//! took an event line of the eBPF source from about 3,400 instructions to
//! about 1,000 (callgrind of examples/replay_events.rs, 2026-11-27).
use std::{io::Write as _, net::IpAddr};

use super::{
    OutputOptions,
    append::{Append, Padded},
    digits::{put_ipv4, put_u64},
};
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

/// The members an entry of the common kind (no mark, zone, use, id,
/// timestamps, nor any of the rare attributes) ends with, before `nat`.
const PLAIN_TAIL: &[u8; 119] =
    b",\"mark\":null,\"secmark\":null,\"secctx\":null,\"zone\":null,\"use\":null,\
\"id\":null,\"timestamp\":null,\"helper\":null,\"labels\":null";

/// A tuple's last members when it has no counters and no zone.
const PLAIN_TUPLE_TAIL: &[u8; 41] = b",\"packets\":null,\"bytes\":null,\"zone\":null}";

/// The line's first members, by event (padded to one size, so that the
/// copy has a fixed size).
const EVENT_NEW: Padded<19> = Padded::new(b"{\"event\":\"NEW\",");
const EVENT_UPDATE: Padded<19> = Padded::new(b"{\"event\":\"UPDATE\",");
const EVENT_DESTROY: Padded<19> = Padded::new(b"{\"event\":\"DESTROY\",");

/// The line's last members, by (SNAT, DNAT).
const NATS: [Padded<40>; 4] = [
    Padded::new(b",\"nat\":{\"snat\":false,\"dnat\":false}}\n"),
    Padded::new(b",\"nat\":{\"snat\":false,\"dnat\":true}}\n"),
    Padded::new(b",\"nat\":{\"snat\":true,\"dnat\":false}}\n"),
    Padded::new(b",\"nat\":{\"snat\":true,\"dnat\":true}}\n"),
];

/// Every protocol number's name, its number and the key after it:
/// `udp","protonum":17,"timeout":`.
const PROTOS: [Padded<40>; 256] = {
    let mut t = [const { Padded::new(b"") }; 256];
    let mut p = 0;
    while p < 256 {
        let digits = [
            b'0' + (p / 100) as u8,
            b'0' + (p / 10 % 10) as u8,
            b'0' + (p % 10) as u8,
        ];
        let skip = if p >= 100 {
            0
        } else if p >= 10 {
            1
        } else {
            2
        };
        let (_, number) = digits.split_at(skip);
        t[p] = Padded::concat(&[
            proto_name(p as u8).as_bytes(),
            b"\",\"protonum\":",
            number,
            b",\"timeout\":",
        ]);
        p += 1;
    }
    t
};

/// Every named status bit's name in quotes and a comma, by bit.
const STATUS_NAMES: [Padded<16>; 16] = {
    let mut t = [const { Padded::new(b"") }; 16];
    let mut i = 0;
    while i < ips::NAMES.len() {
        assert!(ips::NAMES[i].1 == 1 << i, "ips::NAMES is in bit order");
        t[i] = Padded::concat(&[b"\"", ips::NAMES[i].0.as_bytes(), b"\","]);
        i += 1;
    }
    t
};

/// The status bits with a name.
const NAMED_STATUS: u32 = (1 << ips::NAMES.len()) - 1;

/// Writes one entry as a JSON object and a newline. Schema in README.md.
pub fn write_json(out: &mut Vec<u8>, ct: &Conntrack, opts: &OutputOptions, meta: EventMeta<'_>) {
    let l4 = ct.l4proto();
    // Each member before `family` is written with its comma after it.
    match meta.kind {
        Some(EventKind::New) => out.put_padded(&EVENT_NEW),
        Some(EventKind::Update) => out.put_padded(&EVENT_UPDATE),
        Some(EventKind::Destroy) => out.put_padded(&EVENT_DESTROY),
        None => out.push(b'{'),
    }
    if let Some(ns) = meta.time_ns {
        out.put(b"\"time_ns\":");
        put_u64(out, ns);
        out.push(b',');
    }
    match meta.source {
        Some("ebpf") => out.put(b"\"source\":\"ebpf\","),
        Some("netlink") => out.put(b"\"source\":\"netlink\","),
        Some(other) => {
            out.put(b"\"source\":");
            put_string(out, other);
            out.push(b',');
        }
        None => {}
    }
    if let Some(netns) = meta.netns {
        out.put(b"\"netns\":");
        put_u64(out, netns.into());
        out.push(b',');
    }
    out.put(if i32::from(ct.family) == libc::AF_INET6 {
        b"\"family\":\"ipv6\",\"proto\":\""
    } else {
        b"\"family\":\"ipv4\",\"proto\":\""
    });
    out.put_padded(&PROTOS[usize::from(l4)]);
    match ct.timeout {
        Some(t) => put_u64(out, t.into()),
        None => out.put(b"null"),
    }
    match ct.proto_state {
        Some(state) => {
            out.put(b",\"state\":\"");
            out.extend_from_slice(state_name(state).as_bytes());
            out.put(b"\",\"orig\":");
        }
        None => out.put(b",\"state\":null,\"orig\":"),
    }
    put_tuple(out, &ct.orig, ct.counters_orig.as_ref());
    out.put(b",\"reply\":");
    put_tuple(out, &ct.reply, ct.counters_reply.as_ref());
    out.put(b",\"status\":[");
    // The set bits, lowest first, as ips::NAMES lists them, each with a
    // comma after it but the last.
    let mut bits = ct.status.unwrap_or(0) & NAMED_STATUS;
    while bits != 0 {
        out.put_padded(&STATUS_NAMES[bits.trailing_zeros() as usize % STATUS_NAMES.len()]);
        bits &= bits - 1;
    }
    out.trim(b',');
    out.push(b']');
    let plain = ct.mark.is_none()
        && ct.extra.is_none()
        && ct.zone.is_none()
        && ct.use_count.is_none()
        && ct.id.is_none()
        && ct.timestamp_start.is_none();
    if plain {
        out.put(PLAIN_TAIL);
    } else {
        put_rest(out, ct, opts);
    }
    out.put_padded(&NATS[usize::from(is_snat(ct)) * 2 + usize::from(is_dnat(ct))]);
}

/// The members from `mark` to `labels`, any of them present.
#[inline(never)]
fn put_rest(out: &mut Vec<u8>, ct: &Conntrack, opts: &OutputOptions) {
    out.extend_from_slice(b",\"mark\":");
    put_opt_u64(out, ct.mark.map(u64::from));
    out.extend_from_slice(b",\"secmark\":");
    put_opt_u64(out, ct.secmark().map(u64::from));
    out.extend_from_slice(b",\"secctx\":");
    put_opt_string(out, ct.secctx());
    out.extend_from_slice(b",\"zone\":");
    put_opt_u64(out, ct.zone.map(u64::from));
    out.extend_from_slice(b",\"use\":");
    put_opt_u64(out, ct.use_count.map(u64::from));
    out.extend_from_slice(b",\"id\":");
    put_opt_u64(out, ct.id.map(u64::from));
    out.extend_from_slice(b",\"timestamp\":");
    match ct.timestamp_start {
        Some(start) => {
            out.extend_from_slice(b"{\"start\":");
            put_u64(out, start);
            out.extend_from_slice(b",\"stop\":");
            put_opt_u64(out, ct.timestamp_stop);
            out.push(b'}');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"helper\":");
    put_opt_string(out, ct.helper());
    out.extend_from_slice(b",\"labels\":");
    match ct.labels() {
        Some(labels) => {
            out.push(b'[');
            for (i, bit) in label_bits(labels).enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                match opts.labels.as_ref().and_then(|m| m.name(bit)) {
                    Some(name) => put_string(out, name),
                    None => {
                        out.push(b'"');
                        put_u64(out, u64::from(bit));
                        out.push(b'"');
                    }
                }
            }
            out.push(b']');
        }
        None => out.extend_from_slice(b"null"),
    }
}

/// A free-form string as JSON: as it is when nothing in it needs escaping
/// (what serde_json escapes: controls, quote, backslash), else through
/// serde_json.
fn put_string(out: &mut Vec<u8>, s: &str) {
    if s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    } else {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

fn put_opt_string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => put_string(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn put_opt_u64(out: &mut Vec<u8>, v: Option<u64>) {
    match v {
        Some(v) => put_u64(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

/// An address in quotes, or null; IPv4 addresses are written inline by
/// [`put_tuple`].
#[inline(never)]
fn put_ip(out: &mut Vec<u8>, a: Option<&IpAddr>) {
    match a {
        Some(IpAddr::V4(v4)) => {
            out.push(b'"');
            put_ipv4(out, *v4);
            out.push(b'"');
        }
        Some(IpAddr::V6(v6)) => {
            let _ = write!(out, "\"{v6}\"");
        }
        None => out.extend_from_slice(b"null"),
    }
}

/// One direction: addresses, the protocol's keys, counters, zone.
#[inline(always)]
fn put_tuple(out: &mut Vec<u8>, t: &Tuple, c: Option<&Counters>) {
    if let (Some(IpAddr::V4(src)), Some(IpAddr::V4(dst))) = (t.src, t.dst) {
        out.put(b"{\"src\":\"");
        put_ipv4(out, src);
        out.put(b"\",\"dst\":\"");
        put_ipv4(out, dst);
        out.push(b'"');
    } else {
        out.put(b"{\"src\":");
        put_ip(out, t.src.as_ref());
        out.put(b",\"dst\":");
        put_ip(out, t.dst.as_ref());
    }
    if let Some(v) = t.sport {
        out.put(b",\"sport\":");
        put_u64(out, v.into());
    }
    if let Some(v) = t.dport {
        out.put(b",\"dport\":");
        put_u64(out, v.into());
    }
    if t.icmp_type.is_some() || t.icmp_code.is_some() || t.icmp_id.is_some() {
        put_icmp(out, t);
    }
    if c.is_none() && t.zone.is_none() {
        out.put(PLAIN_TUPLE_TAIL);
        return;
    }
    put_tuple_rest(out, t, c);
}

/// A tuple's counters and zone, when it has any of them.
#[inline(never)]
fn put_tuple_rest(out: &mut Vec<u8>, t: &Tuple, c: Option<&Counters>) {
    out.extend_from_slice(b",\"packets\":");
    put_opt_u64(out, c.map(|c| c.packets));
    out.extend_from_slice(b",\"bytes\":");
    put_opt_u64(out, c.map(|c| c.bytes));
    out.extend_from_slice(b",\"zone\":");
    put_opt_u64(out, t.zone.map(u64::from));
    out.push(b'}');
}

/// An ICMP tuple's type, code and id, those it has.
#[inline(never)]
fn put_icmp(out: &mut Vec<u8>, t: &Tuple) {
    for (key, v) in [
        (b",\"type\":".as_slice(), t.icmp_type.map(u16::from)),
        (b",\"code\":", t.icmp_code.map(u16::from)),
        (b",\"id\":", t.icmp_id),
    ] {
        if let Some(v) = v {
            out.extend_from_slice(key);
            put_u64(out, v.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::{Serialize, Serializer};

    use super::*;
    use crate::ct::{
        CtExtra, ProtoState,
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

    /// The common eBPF entry (an unreplied UDP flow), then one member at a
    /// time set or changed: every branch between the encoder's literal
    /// fragments and its member-by-member path.
    fn shapes() -> Vec<Conntrack> {
        let base = {
            let mut ct = flow("127.11.0.3", "127.0.0.1", 17, 34405, 10123);
            ct.timeout = Some(3600);
            ct.status = Some(ips::CONFIRMED);
            ct
        };
        let with = |change: &dyn Fn(&mut Conntrack)| {
            let mut ct = base.clone();
            change(&mut ct);
            ct
        };
        let mut shapes = vec![
            base.clone(),
            with(&|ct| ct.mark = Some(0)),
            with(&|ct| ct.mark = Some(u32::MAX)),
            with(&|ct| ct.zone = Some(7)),
            with(&|ct| ct.use_count = Some(1)),
            with(&|ct| ct.id = Some(123_456_789)),
            with(&|ct| ct.timestamp_start = Some(1_700_000_000_000_000_001)),
            with(&|ct| {
                ct.timestamp_start = Some(1);
                ct.timestamp_stop = Some(u64::MAX);
            }),
            with(&|ct| ct.extra = Some(Box::default())),
            with(&|ct| ct.extra_mut().secmark = Some(4)),
            with(&|ct| ct.extra_mut().helper = Some("tftp".into())),
            with(&|ct| ct.extra_mut().secctx = Some("\u{7f}\u{1f}\"".into())),
            with(&|ct| ct.extra_mut().labels = Some([0; 16])),
            with(&|ct| ct.orig.zone = Some(1)),
            with(&|ct| ct.reply.zone = Some(65535)),
            with(&|ct| {
                ct.counters_orig = Some(Counters {
                    packets: 1,
                    bytes: u64::MAX,
                });
            }),
            with(&|ct| {
                ct.counters_reply = Some(Counters {
                    packets: 0,
                    bytes: 0,
                });
            }),
            with(&|ct| ct.timeout = None),
            with(&|ct| ct.timeout = Some(0)),
            with(&|ct| ct.status = Some(u32::MAX)),
            with(&|ct| ct.status = Some(0)),
            with(&|ct| ct.proto_state = Some(ProtoState::Tcp(3))),
            with(&|ct| ct.proto_state = Some(ProtoState::Tcp(200))),
            with(&|ct| ct.family = 0),
            with(&|ct| ct.orig.dst = Some("::1".parse().expect("addr"))),
            with(&|ct| ct.reply.src = None),
            with(&|ct| {
                ct.status = Some(ips::SRC_NAT_DONE | ips::DST_NAT_DONE);
                ct.reply.dst = Some("10.0.0.1".parse().expect("addr"));
            }),
            with(&|ct| {
                ct.status = Some(ips::DST_NAT_DONE);
                ct.reply.sport = Some(1);
            }),
        ];
        for bit in 0..32 {
            shapes.push(with(&|ct| ct.status = Some(1 << bit)));
        }
        // Every protocol number, with the keys its tuples have.
        for l4 in 0..=255u8 {
            shapes.push(with(&|ct| {
                for t in [&mut ct.orig, &mut ct.reply] {
                    t.l4proto = Some(l4);
                    if crate::ct::is_icmp(l4) {
                        (t.sport, t.dport) = (None, None);
                        (t.icmp_type, t.icmp_code, t.icmp_id) = (Some(8), Some(0), Some(65535));
                    } else if !crate::ct::has_ports(l4) && l4 != crate::ct::proto::GRE {
                        (t.sport, t.dport) = (None, None);
                    }
                }
            }));
        }
        shapes
    }

    #[test]
    fn every_shape_matches_the_serde_reference() {
        let metas = [
            EventMeta::default(),
            EventMeta {
                kind: Some(EventKind::New),
                time_ns: Some(1_700_000_001_000_000_000),
                source: Some("ebpf"),
                netns: None,
            },
            EventMeta {
                kind: Some(EventKind::Destroy),
                time_ns: Some(0),
                source: Some("netlink"),
                netns: Some(u32::MAX),
            },
            EventMeta {
                kind: Some(EventKind::Update),
                time_ns: Some(u64::MAX),
                source: Some("a\"b\\c\u{1}\u{7f}\u{e9}"),
                netns: Some(0),
            },
            EventMeta {
                source: Some(""),
                ..EventMeta::default()
            },
        ];
        for ct in shapes() {
            for meta in metas {
                let (ours, theirs) = line(&ct, &OutputOptions::default(), meta);
                assert_eq!(ours, theirs);
            }
        }
    }

    #[test]
    fn strings_are_escaped_as_serde_json_does() {
        let mut texts: Vec<String> = (0..=0x7fu8).map(|b| format!("x{}y", b as char)).collect();
        texts.extend(
            ["", "\u{e9}", "\u{2028}", "\u{10ffff}", "plain", "\\\"\u{0}"].map(String::from),
        );
        for text in texts {
            let mut ours = Vec::new();
            put_string(&mut ours, &text);
            let theirs = serde_json::to_vec(&text).expect("a string serializes");
            assert_eq!(ours, theirs, "{text:?}");
        }
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
