//! `-o json`: one JSON object per line, schema in the README.
use std::net::IpAddr;

use serde::{Serialize, Serializer};

use super::OutputOptions;
use crate::ct::{
    Conntrack, Counters, EventKind, Tuple, ips, is_dnat, is_snat, label_bits, proto_name,
    state_name,
};

/// An address as JSON, IPv4 written without the formatting machinery (the
/// common case of a busy event stream), IPv6 as its Display.
struct JsonIp(IpAddr);

impl Serialize for JsonIp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            IpAddr::V4(v4) => {
                let (buf, len) = super::text::ipv4_text(v4);
                serializer.serialize_str(std::str::from_utf8(&buf[..len]).unwrap_or_default())
            }
            IpAddr::V6(_) => self.0.serialize(serializer),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ct::samples::tcp_established as tcp_entry;

    #[test]
    fn addresses_are_spelled_as_display_does() {
        for a in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.200.7",
            "::1",
            "2001:db8::1",
        ] {
            let ip: IpAddr = a.parse().expect("addr");
            let json = serde_json::to_string(&JsonIp(ip)).expect("json");
            assert_eq!(json, format!("\"{ip}\""));
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
