//! Output: conntrack(8)-identical text lines and JSON lines.
//!
//! The text layout follows libnetfilter_conntrack 1.0.9's
//! `__snprintf_conntrack_default` (what conntrack 1.4.7 prints), field by
//! field, including its quirks (DCCP states are named from the SCTP table;
//! an empty label set prints `labels`).
use std::{
    collections::BTreeMap,
    io::Write as _,
    net::{IpAddr, Ipv6Addr},
};

use serde::Serialize;

use crate::netlink::{Conntrack, ProtoState, Tuple, codec::Counters, ips};

/// Which conntrack event a line reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum EventKind {
    /// `[NEW]`.
    New,
    /// `[UPDATE]`.
    Update,
    /// `[DESTROY]`.
    Destroy,
}

impl EventKind {
    fn tag(self) -> &'static str {
        // "%9s " in libnetfilter_conntrack: right-aligned in 9 columns.
        match self {
            Self::New => "    [NEW] ",
            Self::Update => " [UPDATE] ",
            Self::Destroy => "[DESTROY] ",
        }
    }
}

/// `-o` options, combinable as in conntrack.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutputOptions {
    /// `-o extended`: the layer 3 protocol first.
    pub extended: bool,
    /// `-o id`: the entry id.
    pub id: bool,
    /// `-o ktimestamp`: start and stop times.
    pub ktimestamp: bool,
    /// `-o labels`: label names from connlabel.conf.
    pub labels: Option<LabelMap>,
    /// `-o timestamp`: the time an event was received (events only).
    pub timestamp: bool,
    /// `-o json`: one JSON object per line.
    pub json: bool,
}

/// Why an `-o` value was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "unknown output format `{0}' (try extended, id, ktimestamp, labels, timestamp, userspace, json)"
)]
pub struct BadOutputOption(pub String);

impl OutputOptions {
    /// Parses a comma-separated `-o` value (repeatable).
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> Result<Self, BadOutputOption> {
        let mut o = Self::default();
        for value in values {
            for word in value.split(',') {
                match word.trim() {
                    "extended" => o.extended = true,
                    "id" => o.id = true,
                    "ktimestamp" => o.ktimestamp = true,
                    "timestamp" => o.timestamp = true,
                    "json" => o.json = true,
                    // conntrack 1.4.7 marks program-made events with
                    // [USERSPACE] whether or not this is given; so do we.
                    "userspace" => {}
                    "labels" => o.labels = Some(LabelMap::load_default()),
                    other => return Err(BadOutputOption(other.to_string())),
                }
            }
        }
        Ok(o)
    }
}

/// Label bit to name, from connlabel.conf (as `conntrack -o labels`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelMap {
    names: BTreeMap<u16, String>,
}

impl LabelMap {
    /// Reads /etc/xtables/connlabel.conf (or /etc/connlabel.conf); empty
    /// when neither exists.
    pub fn load_default() -> Self {
        ["/etc/xtables/connlabel.conf", "/etc/connlabel.conf"]
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
            .map(|text| Self::parse(&text))
            .unwrap_or_default()
    }

    /// Parses connlabel.conf text: `BIT NAME` per line, `#` comments.
    pub fn parse(text: &str) -> Self {
        let mut names = BTreeMap::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            let mut parts = line.split_whitespace();
            if let (Some(bit), Some(name)) = (parts.next(), parts.next())
                && let Ok(bit) = bit.parse::<u16>()
                && bit < 128
            {
                names.insert(bit, name.to_string());
            }
        }
        Self { names }
    }

    /// The name of a label bit.
    pub fn name(&self, bit: u16) -> Option<&str> {
        self.names.get(&bit).map(String::as_str)
    }

    /// The bit of a label name (or a number).
    pub fn bit(&self, name: &str) -> Option<u16> {
        self.names
            .iter()
            .find(|(_, n)| n.as_str() == name)
            .map(|(b, _)| *b)
            .or_else(|| name.parse().ok().filter(|b| *b < 128))
    }
}

/// Layer 4 protocol name as conntrack prints it.
pub fn proto_name(p: u8) -> &'static str {
    match p {
        6 => "tcp",
        17 => "udp",
        136 => "udplite",
        1 => "icmp",
        58 => "icmpv6",
        132 => "sctp",
        47 => "gre",
        33 => "dccp",
        _ => "unknown",
    }
}

/// Protocol number for a name or number (`-p`).
pub fn proto_number(s: &str) -> Option<u8> {
    let by_name = match s.to_ascii_lowercase().as_str() {
        "tcp" => Some(6),
        "udp" => Some(17),
        "udplite" => Some(136),
        "icmp" => Some(1),
        "icmpv6" => Some(58),
        "sctp" => Some(132),
        "gre" => Some(47),
        "dccp" => Some(33),
        _ => None,
    };
    by_name.or_else(|| s.parse().ok())
}

/// TCP states, `enum tcp_conntrack` order.
pub const TCP_STATES: [&str; 10] = [
    "NONE",
    "SYN_SENT",
    "SYN_RECV",
    "ESTABLISHED",
    "FIN_WAIT",
    "CLOSE_WAIT",
    "LAST_ACK",
    "TIME_WAIT",
    "CLOSE",
    "SYN_SENT2",
];

/// SCTP states, `enum sctp_conntrack` order.
pub const SCTP_STATES: [&str; 10] = [
    "NONE",
    "CLOSED",
    "COOKIE_WAIT",
    "COOKIE_ECHOED",
    "ESTABLISHED",
    "SHUTDOWN_SENT",
    "SHUTDOWN_RECD",
    "SHUTDOWN_ACK_SENT",
    "HEARTBEAT_SENT",
    "HEARTBEAT_ACKED",
];

/// DCCP states, `enum ct_dccp_states` order.
pub const DCCP_STATES: [&str; 10] = [
    "NONE", "REQUEST", "RESPOND", "PARTOPEN", "OPEN", "CLOSEREQ", "CLOSING", "TIMEWAIT", "IGNORE",
    "INVALID",
];

/// The state name conntrack prints for an entry.
pub fn state_name(state: ProtoState) -> &'static str {
    let pick =
        |table: &[&'static str; 10], s: u8| table.get(usize::from(s)).copied().unwrap_or("NONE");
    match state {
        ProtoState::Tcp(s) => pick(&TCP_STATES, s),
        ProtoState::Sctp(s) => pick(&SCTP_STATES, s),
        // libnetfilter_conntrack 1.0.9 names DCCP states from the SCTP table.
        ProtoState::Dccp(s) => pick(&SCTP_STATES, s),
    }
}

/// Whether the entry is source-NATed: its reply destination address, or
/// (for port protocols) port, differs from the original source.
pub fn is_snat(ct: &Conntrack) -> bool {
    ct.has_status(ips::SRC_NAT_DONE)
        && (ct.reply.dst != ct.orig.src
            || (has_ports(ct.l4proto()) && ct.reply.dport != ct.orig.sport))
}

/// Whether the entry is destination-NATed (address, or port for port
/// protocols).
pub fn is_dnat(ct: &Conntrack) -> bool {
    ct.has_status(ips::DST_NAT_DONE)
        && (ct.reply.src != ct.orig.dst
            || (has_ports(ct.l4proto()) && ct.reply.sport != ct.orig.dport))
}

/// Whether a layer 4 protocol's tuple has ports (TCP, UDP, UDPLITE, SCTP,
/// DCCP).
pub(crate) fn has_ports(p: u8) -> bool {
    matches!(p, 6 | 17 | 136 | 132 | 33)
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// Writes an IPv6 address as glibc's inet_ntop does (which differs from
/// Rust's Display for IPv4-compatible addresses such as ::1.2.3.4).
fn put_ipv6(out: &mut Vec<u8>, a: &Ipv6Addr) {
    let s = a.segments();
    if s[..6] == [0; 6] && s[6] != 0 {
        let o = a.octets();
        let _ = write!(out, "::{}.{}.{}.{}", o[12], o[13], o[14], o[15]);
    } else {
        let _ = write!(out, "{a}");
    }
}

/// Writes an address as conntrack does (fast path for IPv4).
pub(crate) fn put_ip(out: &mut Vec<u8>, a: &IpAddr) {
    match a {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            let mut b = itoa::Buffer::new();
            for (i, byte) in o.iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(b.format(*byte).as_bytes());
            }
        }
        IpAddr::V6(v6) => put_ipv6(out, v6),
    }
}

fn put_tuple(out: &mut Vec<u8>, t: &Tuple, l4: u8) {
    if let (Some(src), Some(dst)) = (&t.src, &t.dst) {
        out.extend_from_slice(b"src=");
        put_ip(out, src);
        out.extend_from_slice(b" dst=");
        put_ip(out, dst);
        out.push(b' ');
    }
    let mut b = itoa::Buffer::new();
    if has_ports(l4) {
        out.extend_from_slice(b"sport=");
        out.extend_from_slice(b.format(t.sport.unwrap_or(0)).as_bytes());
        out.extend_from_slice(b" dport=");
        out.extend_from_slice(b.format(t.dport.unwrap_or(0)).as_bytes());
        out.push(b' ');
    } else if l4 == 47 {
        let _ = write!(
            out,
            "srckey=0x{:x} dstkey=0x{:x} ",
            t.sport.unwrap_or(0),
            t.dport.unwrap_or(0)
        );
    } else if l4 == 1 || l4 == 58 {
        out.extend_from_slice(b"type=");
        out.extend_from_slice(b.format(t.icmp_type.unwrap_or(0)).as_bytes());
        out.extend_from_slice(b" code=");
        out.extend_from_slice(b.format(t.icmp_code.unwrap_or(0)).as_bytes());
        out.extend_from_slice(b" id=");
        out.extend_from_slice(b.format(t.icmp_id.unwrap_or(0)).as_bytes());
        out.push(b' ');
    }
}

fn put_counters(out: &mut Vec<u8>, c: &Counters) {
    out.extend_from_slice(b"packets=");
    put_u64(out, c.packets);
    out.extend_from_slice(b" bytes=");
    put_u64(out, c.bytes);
    out.push(b' ');
}

/// `ctime()` without the newline, in local time: "Tue Nov 24 08:27:18 2026".
pub fn ctime(secs: i64) -> String {
    let t: libc::time_t = secs as libc::time_t;
    // SAFETY: localtime_r writes into our tm and reads only t.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        return secs.to_string();
    }
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{} {}{:3} {:02}:{:02}:{:02} {}",
        DAYS.get(tm.tm_wday as usize).unwrap_or(&"???"),
        MONTHS.get(tm.tm_mon as usize).unwrap_or(&"???"),
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        i64::from(tm.tm_year) + 1900
    )
}

/// Writes one entry as conntrack prints it, with a newline. `now_secs` is
/// the wall clock used for `delta-time` of live entries.
pub fn write_text(
    out: &mut Vec<u8>,
    ct: &Conntrack,
    opts: &OutputOptions,
    event: Option<EventKind>,
    now_secs: i64,
) {
    if let Some(e) = event {
        out.extend_from_slice(e.tag().as_bytes());
    }
    let l4 = ct.l4proto();
    let mut b = itoa::Buffer::new();
    if opts.extended {
        let name = match i32::from(ct.family) {
            libc::AF_INET => "ipv4",
            libc::AF_INET6 => "ipv6",
            _ => "unknown",
        };
        let _ = write!(out, "{name:<8} {} ", ct.family);
    }
    let _ = write!(out, "{:<8} ", proto_name(l4));
    out.extend_from_slice(b.format(l4).as_bytes());
    out.push(b' ');
    if let Some(t) = ct.timeout {
        out.extend_from_slice(b.format(t).as_bytes());
        out.push(b' ');
    }
    if let Some(state) = ct.proto_state {
        out.extend_from_slice(state_name(state).as_bytes());
        out.push(b' ');
    }
    put_tuple(out, &ct.orig, l4);
    if let Some(z) = ct.orig.zone {
        out.extend_from_slice(b"zone-orig=");
        out.extend_from_slice(b.format(z).as_bytes());
        out.push(b' ');
    }
    if let Some(c) = &ct.counters_orig {
        put_counters(out, c);
    }
    if let Some(s) = ct.status
        && s & ips::SEEN_REPLY == 0
    {
        out.extend_from_slice(b"[UNREPLIED] ");
    }
    put_tuple(out, &ct.reply, ct.reply.l4proto.unwrap_or(l4));
    if let Some(z) = ct.reply.zone {
        out.extend_from_slice(b"zone-reply=");
        out.extend_from_slice(b.format(z).as_bytes());
        out.push(b' ');
    }
    if let Some(c) = &ct.counters_reply {
        put_counters(out, c);
    }
    if let Some(s) = ct.status {
        if s & ips::HW_OFFLOAD != 0 {
            out.extend_from_slice(b"[HW_OFFLOAD] ");
        } else if s & ips::OFFLOAD != 0 {
            out.extend_from_slice(b"[OFFLOAD] ");
        } else if s & ips::ASSURED != 0 {
            out.extend_from_slice(b"[ASSURED] ");
        }
    }
    if let Some(m) = ct.mark {
        out.extend_from_slice(b"mark=");
        out.extend_from_slice(b.format(m).as_bytes());
        out.push(b' ');
    }
    if let Some(m) = ct.secmark() {
        out.extend_from_slice(b"secmark=");
        out.extend_from_slice(b.format(m).as_bytes());
        out.push(b' ');
    }
    if let Some(ctx) = ct.secctx() {
        let _ = write!(out, "secctx={ctx} ");
    }
    if let Some(z) = ct.zone {
        out.extend_from_slice(b"zone=");
        out.extend_from_slice(b.format(z).as_bytes());
        out.push(b' ');
    }
    if let Some(start) = ct.timestamp_start {
        let stop = match ct.timestamp_stop {
            Some(stop) if stop != 0 => (stop / 1_000_000_000) as i64,
            _ => now_secs,
        };
        let delta = stop - (start / 1_000_000_000) as i64;
        out.extend_from_slice(b"delta-time=");
        // conntrack prints the difference as unsigned.
        put_u64(out, delta as u64);
        out.push(b' ');
    }
    if opts.ktimestamp {
        if let Some(start) = ct.timestamp_start {
            let _ = write!(out, "[start={}] ", ctime((start / 1_000_000_000) as i64));
        }
        if let Some(stop) = ct.timestamp_stop {
            let _ = write!(out, "[stop={}] ", ctime((stop / 1_000_000_000) as i64));
        }
    }
    if let Some(h) = ct.helper() {
        let _ = write!(out, "helper={h} ");
    }
    if let Some(u) = ct.use_count {
        out.extend_from_slice(b"use=");
        out.extend_from_slice(b.format(u).as_bytes());
        out.push(b' ');
    }
    if opts.id
        && let Some(id) = ct.id
    {
        out.extend_from_slice(b"id=");
        out.extend_from_slice(b.format(id).as_bytes());
        out.push(b' ');
    }
    if let (Some(map), Some(labels)) = (&opts.labels, ct.labels()) {
        let names: Vec<&str> = label_bits(labels).filter_map(|bit| map.name(bit)).collect();
        if names.is_empty() {
            // The library writes "labels=", then removes one character for
            // the trailing comma it expected.
            out.extend_from_slice(b"labels ");
        } else {
            let _ = write!(out, "labels={} ", names.join(","));
        }
    }
    if out.last() == Some(&b' ') {
        out.pop();
    }
    out.push(b'\n');
}

/// The set bits of a labels bitmap.
pub fn label_bits(labels: &[u8; 16]) -> impl Iterator<Item = u16> + '_ {
    (0u16..128).filter(|bit| labels[usize::from(bit / 8)] & (1 << (bit % 8)) != 0)
}

#[derive(Serialize)]
struct JsonTuple {
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
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
            src: t.src,
            dst: t.dst,
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
    status: Vec<&'static str>,
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
    let status = ct
        .status
        .map(|s| {
            ips::NAMES
                .iter()
                .filter(|(_, bit)| s & bit != 0)
                .map(|(n, _)| *n)
                .collect()
        })
        .unwrap_or_default();
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
        status,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp_entry() -> Conntrack {
        Conntrack {
            family: libc::AF_INET as u8,
            orig: Tuple {
                src: Some("1.2.3.4".parse().expect("addr")),
                dst: Some("5.6.7.8".parse().expect("addr")),
                l4proto: Some(6),
                sport: Some(10),
                dport: Some(20),
                ..Tuple::default()
            },
            reply: Tuple {
                src: Some("5.6.7.8".parse().expect("addr")),
                dst: Some("1.2.3.4".parse().expect("addr")),
                l4proto: Some(6),
                sport: Some(20),
                dport: Some(10),
                ..Tuple::default()
            },
            status: Some(ips::SEEN_REPLY | ips::ASSURED | ips::CONFIRMED),
            timeout: Some(99),
            mark: Some(7),
            zone: Some(3),
            use_count: Some(1),
            id: Some(1032319915),
            proto_state: Some(ProtoState::Tcp(3)),
            counters_orig: Some(Counters::default()),
            counters_reply: Some(Counters::default()),
            timestamp_start: Some(1_700_000_000_000_000_000),
            ..Conntrack::default()
        }
    }

    fn text(ct: &Conntrack, opts: &OutputOptions, event: Option<EventKind>) -> String {
        let mut out = Vec::new();
        write_text(&mut out, ct, opts, event, 1_700_000_005);
        String::from_utf8(out).expect("utf8")
    }

    // Expected lines were printed by conntrack 1.4.7 for an entry made with
    // `conntrack -I -p tcp -s 1.2.3.4 -d 5.6.7.8 --sport 10 --dport 20
    // --state ESTABLISHED -t 100 -u SEEN_REPLY,ASSURED -m 7 -w 3`.
    #[test]
    fn matches_conntrack_default_and_extended_layout() {
        let ct = tcp_entry();
        assert_eq!(
            text(&ct, &OutputOptions::default(), None),
            "tcp      6 99 ESTABLISHED src=1.2.3.4 dst=5.6.7.8 sport=10 dport=20 packets=0 bytes=0 \
             src=5.6.7.8 dst=1.2.3.4 sport=20 dport=10 packets=0 bytes=0 [ASSURED] mark=7 zone=3 \
             delta-time=5 use=1\n"
        );
        let opts = OutputOptions::parse(["extended,id"]).expect("parses");
        assert_eq!(
            text(&ct, &opts, None),
            "ipv4     2 tcp      6 99 ESTABLISHED src=1.2.3.4 dst=5.6.7.8 sport=10 dport=20 \
             packets=0 bytes=0 src=5.6.7.8 dst=1.2.3.4 sport=20 dport=10 packets=0 bytes=0 \
             [ASSURED] mark=7 zone=3 delta-time=5 use=1 id=1032319915\n"
        );
    }

    #[test]
    fn unreplied_icmp_gre_and_event_tags() {
        let mut ct = tcp_entry();
        ct.orig.l4proto = Some(1);
        ct.orig.icmp_type = Some(8);
        ct.orig.icmp_code = Some(0);
        ct.orig.icmp_id = Some(77);
        ct.reply.icmp_type = Some(0);
        ct.reply.icmp_code = Some(0);
        ct.reply.icmp_id = Some(77);
        ct.reply.l4proto = Some(1);
        ct.proto_state = None;
        ct.status = Some(ips::CONFIRMED);
        ct.counters_orig = None;
        ct.counters_reply = None;
        ct.timestamp_start = None;
        ct.zone = None;
        let line = text(&ct, &OutputOptions::default(), Some(EventKind::New));
        assert_eq!(
            line,
            "    [NEW] icmp     1 99 src=1.2.3.4 dst=5.6.7.8 type=8 code=0 id=77 [UNREPLIED] \
             src=5.6.7.8 dst=1.2.3.4 type=0 code=0 id=77 mark=7 use=1\n"
        );
        ct.orig.l4proto = Some(47);
        ct.orig.sport = Some(0x1234);
        ct.reply.l4proto = Some(47);
        let line = text(&ct, &OutputOptions::default(), Some(EventKind::Destroy));
        assert!(line.starts_with(
            "[DESTROY] gre      47 99 src=1.2.3.4 dst=5.6.7.8 srckey=0x1234 dstkey=0x14"
        ));
    }

    #[test]
    fn ipv6_is_spelled_like_inet_ntop() {
        let cases = [
            ("::1", "::1"),
            ("::1.2.3.4", "::1.2.3.4"),
            ("::ffff:1.2.3.4", "::ffff:1.2.3.4"),
            ("fe80::1:0:0:1", "fe80::1:0:0:1"),
            ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),
            ("::", "::"),
        ];
        for (input, expected) in cases {
            let mut out = Vec::new();
            put_ip(&mut out, &input.parse().expect("addr"));
            assert_eq!(String::from_utf8_lossy(&out), expected, "{input}");
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

    #[test]
    fn output_options_parse_and_refuse() {
        let o = OutputOptions::parse(["extended", "id,ktimestamp"]).expect("parses");
        assert!(o.extended && o.id && o.ktimestamp && !o.json);
        assert_eq!(
            OutputOptions::parse(["xml"]),
            Err(BadOutputOption("xml".into()))
        );
    }

    #[test]
    fn labels_map_and_quirk() {
        let map = LabelMap::parse("0 eth0-in\n1 eth1-in # comment\n");
        assert_eq!(map.bit("eth1-in"), Some(1));
        let mut ct = tcp_entry();
        ct.extra_mut().labels = Some([0b11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let opts = OutputOptions {
            labels: Some(map),
            ..OutputOptions::default()
        };
        assert!(text(&ct, &opts, None).ends_with("use=1 labels=eth0-in,eth1-in\n"));
        ct.extra_mut().labels = Some([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x80]);
        assert!(text(&ct, &opts, None).ends_with("use=1 labels\n"));
    }
}
