//! Decoding ctnetlink messages into [`Conntrack`] records, and encoding the
//! attributes of requests. Never panics: every length is checked, and
//! malformed input is an error.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{NlaBuffer, NlasIterator};

use super::cta;
use crate::ct::{Conntrack, Counters, ProtoState, Tuple};

/// Why a message could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    /// The message is shorter than its headers.
    #[error("truncated ctnetlink message ({0})")]
    Truncated(&'static str),
    /// An attribute's length does not fit its type or the buffer.
    #[error("malformed ctnetlink attribute {name}")]
    BadAttribute {
        /// Which attribute.
        name: &'static str,
    },
    /// A conntrack message without its original tuple.
    #[error("ctnetlink entry without an original tuple")]
    NoTuple,
    /// An expectation message without the tuple it expects.
    #[error("ctnetlink expectation without its tuple")]
    NoExpectTuple,
}

/// The nfgenmsg header that starts every nfnetlink payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NfGenMsg {
    /// Address family.
    pub family: u8,
    /// Resource id (the CPU for per-CPU statistics).
    pub res_id: u16,
}

/// Splits an nfnetlink payload into its nfgenmsg header and attributes.
pub fn split_nfgenmsg(payload: &[u8]) -> Result<(NfGenMsg, &[u8]), CodecError> {
    let head = payload.get(..4).ok_or(CodecError::Truncated("nfgenmsg"))?;
    Ok((
        NfGenMsg {
            family: head[0],
            res_id: u16::from_be_bytes([head[2], head[3]]),
        },
        &payload[4..],
    ))
}

pub(super) fn attrs(buf: &[u8]) -> impl Iterator<Item = Result<NlaBuffer<&[u8]>, CodecError>> {
    NlasIterator::new(buf).map(|nla| nla.map_err(|_| CodecError::BadAttribute { name: "nla" }))
}

pub(super) fn be_u16(v: &[u8], name: &'static str) -> Result<u16, CodecError> {
    let b: [u8; 2] = v
        .get(..2)
        .and_then(|b| b.try_into().ok())
        .ok_or(CodecError::BadAttribute { name })?;
    Ok(u16::from_be_bytes(b))
}

pub(super) fn be_u32(v: &[u8], name: &'static str) -> Result<u32, CodecError> {
    let b: [u8; 4] = v
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or(CodecError::BadAttribute { name })?;
    Ok(u32::from_be_bytes(b))
}

fn be_u64(v: &[u8], name: &'static str) -> Result<u64, CodecError> {
    let b: [u8; 8] = v
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or(CodecError::BadAttribute { name })?;
    Ok(u64::from_be_bytes(b))
}

fn u8_at(v: &[u8], name: &'static str) -> Result<u8, CodecError> {
    v.first().copied().ok_or(CodecError::BadAttribute { name })
}

fn ipv4(v: &[u8]) -> Result<IpAddr, CodecError> {
    let b: [u8; 4] = v
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or(CodecError::BadAttribute { name: "CTA_IP_V4" })?;
    Ok(IpAddr::V4(Ipv4Addr::from(b)))
}

fn ipv6(v: &[u8]) -> Result<IpAddr, CodecError> {
    let b: [u8; 16] = v
        .get(..16)
        .and_then(|b| b.try_into().ok())
        .ok_or(CodecError::BadAttribute { name: "CTA_IP_V6" })?;
    Ok(IpAddr::V6(Ipv6Addr::from(b)))
}

pub(super) fn string(v: &[u8]) -> Box<str> {
    let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into()
}

pub(super) fn decode_tuple(buf: &[u8], tuple: &mut Tuple) -> Result<(), CodecError> {
    for nla in attrs(buf) {
        let nla = nla?;
        match nla.kind() {
            cta::TUPLE_IP => {
                for ip in attrs(nla.value()) {
                    let ip = ip?;
                    match ip.kind() {
                        cta::IP_V4_SRC => tuple.src = Some(ipv4(ip.value())?),
                        cta::IP_V4_DST => tuple.dst = Some(ipv4(ip.value())?),
                        cta::IP_V6_SRC => tuple.src = Some(ipv6(ip.value())?),
                        cta::IP_V6_DST => tuple.dst = Some(ipv6(ip.value())?),
                        _ => {}
                    }
                }
            }
            cta::TUPLE_PROTO => {
                for p in attrs(nla.value()) {
                    let p = p?;
                    let v = p.value();
                    match p.kind() {
                        cta::PROTO_NUM => tuple.l4proto = Some(u8_at(v, "CTA_PROTO_NUM")?),
                        cta::PROTO_SRC_PORT => tuple.sport = Some(be_u16(v, "CTA_PROTO_SRC_PORT")?),
                        cta::PROTO_DST_PORT => tuple.dport = Some(be_u16(v, "CTA_PROTO_DST_PORT")?),
                        cta::PROTO_ICMP_ID | cta::PROTO_ICMPV6_ID => {
                            tuple.icmp_id = Some(be_u16(v, "CTA_PROTO_ICMP_ID")?)
                        }
                        cta::PROTO_ICMP_TYPE | cta::PROTO_ICMPV6_TYPE => {
                            tuple.icmp_type = Some(u8_at(v, "CTA_PROTO_ICMP_TYPE")?)
                        }
                        cta::PROTO_ICMP_CODE | cta::PROTO_ICMPV6_CODE => {
                            tuple.icmp_code = Some(u8_at(v, "CTA_PROTO_ICMP_CODE")?)
                        }
                        _ => {}
                    }
                }
            }
            cta::TUPLE_ZONE => tuple.zone = Some(be_u16(nla.value(), "CTA_TUPLE_ZONE")?),
            _ => {}
        }
    }
    Ok(())
}

fn decode_counters(buf: &[u8]) -> Result<Counters, CodecError> {
    let mut c = Counters::default();
    for nla in attrs(buf) {
        let nla = nla?;
        let v = nla.value();
        match nla.kind() {
            cta::COUNTERS_PACKETS => c.packets = be_u64(v, "CTA_COUNTERS_PACKETS")?,
            cta::COUNTERS_BYTES => c.bytes = be_u64(v, "CTA_COUNTERS_BYTES")?,
            cta::COUNTERS32_PACKETS => c.packets = be_u32(v, "CTA_COUNTERS32_PACKETS")?.into(),
            cta::COUNTERS32_BYTES => c.bytes = be_u32(v, "CTA_COUNTERS32_BYTES")?.into(),
            _ => {}
        }
    }
    Ok(c)
}

/// The protocol state, and the SCTP verification tags and DCCP role that
/// `-o save` writes back.
fn decode_protoinfo(buf: &[u8], ct: &mut Conntrack) -> Result<(), CodecError> {
    for nla in attrs(buf) {
        let nla = nla?;
        let proto = nla.kind();
        let make: fn(u8) -> ProtoState = match proto {
            cta::PROTOINFO_TCP => ProtoState::Tcp,
            cta::PROTOINFO_SCTP => ProtoState::Sctp,
            cta::PROTOINFO_DCCP => ProtoState::Dccp,
            _ => continue,
        };
        for inner in attrs(nla.value()) {
            let inner = inner?;
            let v = inner.value();
            match (proto, inner.kind()) {
                (_, cta::PROTOINFO_STATE) => {
                    ct.proto_state = Some(make(u8_at(v, "CTA_PROTOINFO_STATE")?));
                }
                (cta::PROTOINFO_SCTP, cta::PROTOINFO_SCTP_VTAG_ORIGINAL) => {
                    let tag = be_u32(v, "CTA_PROTOINFO_SCTP_VTAG_ORIGINAL")?;
                    ct.extra_mut().sctp_vtag_orig = Some(tag);
                }
                (cta::PROTOINFO_SCTP, cta::PROTOINFO_SCTP_VTAG_REPLY) => {
                    let tag = be_u32(v, "CTA_PROTOINFO_SCTP_VTAG_REPLY")?;
                    ct.extra_mut().sctp_vtag_reply = Some(tag);
                }
                (cta::PROTOINFO_DCCP, cta::PROTOINFO_DCCP_ROLE) => {
                    ct.extra_mut().dccp_role = Some(u8_at(v, "CTA_PROTOINFO_DCCP_ROLE")?);
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Decodes the attributes of a conntrack message (after the nfgenmsg
/// header) into `ct`, which is cleared first.
pub fn decode_conntrack(family: u8, buf: &[u8], ct: &mut Conntrack) -> Result<(), CodecError> {
    *ct = Conntrack {
        family,
        ..Conntrack::default()
    };
    let mut has_orig = false;
    for nla in attrs(buf) {
        let nla = nla?;
        let v = nla.value();
        match nla.kind() {
            cta::TUPLE_ORIG => {
                decode_tuple(v, &mut ct.orig)?;
                has_orig = true;
            }
            cta::TUPLE_REPLY => decode_tuple(v, &mut ct.reply)?,
            cta::STATUS => ct.status = Some(be_u32(v, "CTA_STATUS")?),
            cta::PROTOINFO => decode_protoinfo(v, ct)?,
            cta::TIMEOUT => ct.timeout = Some(be_u32(v, "CTA_TIMEOUT")?),
            cta::MARK => ct.mark = Some(be_u32(v, "CTA_MARK")?),
            cta::SECMARK => ct.extra_mut().secmark = Some(be_u32(v, "CTA_SECMARK")?),
            cta::USE => ct.use_count = Some(be_u32(v, "CTA_USE")?),
            cta::ID => ct.id = Some(be_u32(v, "CTA_ID")?),
            cta::ZONE => ct.zone = Some(be_u16(v, "CTA_ZONE")?),
            cta::COUNTERS_ORIG => ct.counters_orig = Some(decode_counters(v)?),
            cta::COUNTERS_REPLY => ct.counters_reply = Some(decode_counters(v)?),
            cta::TIMESTAMP => {
                for ts in attrs(v) {
                    let ts = ts?;
                    match ts.kind() {
                        cta::TIMESTAMP_START => {
                            ct.timestamp_start = Some(be_u64(ts.value(), "CTA_TIMESTAMP_START")?)
                        }
                        cta::TIMESTAMP_STOP => {
                            ct.timestamp_stop = Some(be_u64(ts.value(), "CTA_TIMESTAMP_STOP")?)
                        }
                        _ => {}
                    }
                }
            }
            cta::HELP => {
                for h in attrs(v) {
                    let h = h?;
                    if h.kind() == cta::HELP_NAME {
                        ct.extra_mut().helper = Some(string(h.value()));
                    }
                }
            }
            cta::SECCTX => {
                for s in attrs(v) {
                    let s = s?;
                    if s.kind() == cta::SECCTX_NAME {
                        ct.extra_mut().secctx = Some(string(s.value()));
                    }
                }
            }
            cta::LABELS => {
                let mut labels = [0u8; 16];
                let n = v.len().min(16);
                labels[..n].copy_from_slice(&v[..n]);
                ct.extra_mut().labels = Some(labels);
            }
            _ => {}
        }
    }
    if !has_orig || ct.orig.src.is_none() {
        return Err(CodecError::NoTuple);
    }
    // The kernel sends the l3 protocol only in the header; for AF_UNSPEC
    // dumps the header carries the entry's own family.
    if ct.family == 0 {
        ct.family = match ct.orig.src {
            Some(IpAddr::V6(_)) => libc::AF_INET6 as u8,
            _ => libc::AF_INET as u8,
        };
    }
    Ok(())
}

/// Per-CPU statistics, as `conntrack -S` prints them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatsCpu {
    /// The CPU number.
    pub cpu: u16,
    /// `(CTA_STATS_* number, value)` in the order received.
    pub counters: Vec<(u16, u32)>,
}

/// Names of `CTA_STATS_*` as conntrack(8) prints them, indexed by number.
pub const STATS_NAMES: [&str; 16] = [
    "",
    "searched",
    "found",
    "new",
    "invalid",
    "ignore",
    "delete",
    "delete_list",
    "insert",
    "insert_failed",
    "drop",
    "early_drop",
    "error",
    "search_restart",
    "clash_resolve",
    "chaintoolong",
];

/// Decodes a per-CPU statistics message.
pub fn decode_stats_cpu(payload: &[u8]) -> Result<StatsCpu, CodecError> {
    let (head, buf) = split_nfgenmsg(payload)?;
    let mut stats = StatsCpu {
        cpu: head.res_id,
        counters: Vec::with_capacity(16),
    };
    for nla in attrs(buf) {
        let nla = nla?;
        let kind = nla.kind() & netlink_packet_core::NLA_TYPE_MASK;
        if usize::from(kind) < STATS_NAMES.len() && kind != 0 {
            stats
                .counters
                .push((kind, be_u32(nla.value(), "CTA_STATS")?));
        }
    }
    stats.counters.sort_by_key(|(k, _)| *k);
    Ok(stats)
}

/// Decodes the global statistics message: (entries, max entries).
pub fn decode_stats_global(payload: &[u8]) -> Result<(Option<u32>, Option<u32>), CodecError> {
    let (_, buf) = split_nfgenmsg(payload)?;
    let (mut entries, mut max) = (None, None);
    for nla in attrs(buf) {
        let nla = nla?;
        match nla.kind() & netlink_packet_core::NLA_TYPE_MASK {
            cta::STATS_GLOBAL_ENTRIES => {
                entries = Some(be_u32(nla.value(), "CTA_STATS_GLOBAL_ENTRIES")?)
            }
            cta::STATS_GLOBAL_MAX_ENTRIES => {
                max = Some(be_u32(nla.value(), "CTA_STATS_GLOBAL_MAX_ENTRIES")?)
            }
            _ => {}
        }
    }
    Ok((entries, max))
}

/// Builds the attributes of a request (4-byte aligned TLVs).
#[derive(Default, Debug)]
pub struct AttrWriter {
    buf: Vec<u8>,
}

impl AttrWriter {
    /// An empty attribute list.
    pub fn new() -> Self {
        Self::default()
    }

    /// The encoded attributes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    fn put(&mut self, kind: u16, value: &[u8]) {
        let len = (4 + value.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    /// A u8 attribute.
    pub fn u8(&mut self, kind: u16, v: u8) {
        self.put(kind, &[v]);
    }

    /// A big-endian u16 attribute.
    pub fn be16(&mut self, kind: u16, v: u16) {
        self.put(kind, &v.to_be_bytes());
    }

    /// A big-endian u32 attribute.
    pub fn be32(&mut self, kind: u16, v: u32) {
        self.put(kind, &v.to_be_bytes());
    }

    /// Raw bytes.
    pub fn bytes(&mut self, kind: u16, v: &[u8]) {
        self.put(kind, v);
    }

    /// Starts a nested attribute; pass the result to [`Self::end_nest`].
    pub fn begin_nest(&mut self, kind: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(kind | netlink_packet_core::NLA_F_NESTED).to_ne_bytes());
        at
    }

    /// Closes a nested attribute.
    pub fn end_nest(&mut self, at: usize) {
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    /// A tuple nest (`CTA_TUPLE_ORIG` or `CTA_TUPLE_REPLY`).
    pub fn tuple(&mut self, kind: u16, t: &Tuple) {
        let outer = self.begin_nest(kind);
        let ip = self.begin_nest(cta::TUPLE_IP);
        match t.src {
            Some(IpAddr::V4(a)) => self.bytes(cta::IP_V4_SRC, &a.octets()),
            Some(IpAddr::V6(a)) => self.bytes(cta::IP_V6_SRC, &a.octets()),
            None => {}
        }
        match t.dst {
            Some(IpAddr::V4(a)) => self.bytes(cta::IP_V4_DST, &a.octets()),
            Some(IpAddr::V6(a)) => self.bytes(cta::IP_V6_DST, &a.octets()),
            None => {}
        }
        self.end_nest(ip);
        let proto = self.begin_nest(cta::TUPLE_PROTO);
        if let Some(p) = t.l4proto {
            self.u8(cta::PROTO_NUM, p);
        }
        let v6 = matches!(t.src, Some(IpAddr::V6(_)));
        if let Some(p) = t.sport {
            self.be16(cta::PROTO_SRC_PORT, p);
        }
        if let Some(p) = t.dport {
            self.be16(cta::PROTO_DST_PORT, p);
        }
        if let Some(id) = t.icmp_id {
            self.be16(
                if v6 {
                    cta::PROTO_ICMPV6_ID
                } else {
                    cta::PROTO_ICMP_ID
                },
                id,
            );
        }
        if let Some(ty) = t.icmp_type {
            self.u8(
                if v6 {
                    cta::PROTO_ICMPV6_TYPE
                } else {
                    cta::PROTO_ICMP_TYPE
                },
                ty,
            );
        }
        if let Some(code) = t.icmp_code {
            self.u8(
                if v6 {
                    cta::PROTO_ICMPV6_CODE
                } else {
                    cta::PROTO_ICMP_CODE
                },
                code,
            );
        }
        self.end_nest(proto);
        if let Some(z) = t.zone {
            self.be16(cta::TUPLE_ZONE, z);
        }
        self.end_nest(outer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ct::{proto, samples::flow};

    fn sample_entry() -> Conntrack {
        let mut ct = flow("10.0.0.1", "10.0.0.2", proto::TCP, 1234, 80);
        ct.reply.zone = Some(4);
        ct
    }

    /// Encodes an entry the way the kernel does (the attributes we decode).
    fn encode(ct: &Conntrack) -> Vec<u8> {
        let mut w = AttrWriter::new();
        w.tuple(cta::TUPLE_ORIG, &ct.orig);
        w.tuple(cta::TUPLE_REPLY, &ct.reply);
        if let Some(s) = ct.status {
            w.be32(cta::STATUS, s);
        }
        if let Some(m) = ct.mark {
            w.be32(cta::MARK, m);
        }
        if let Some(t) = ct.timeout {
            w.be32(cta::TIMEOUT, t);
        }
        if let Some(c) = ct.counters_orig {
            let n = w.begin_nest(cta::COUNTERS_ORIG);
            w.bytes(cta::COUNTERS_PACKETS, &c.packets.to_be_bytes());
            w.bytes(cta::COUNTERS_BYTES, &c.bytes.to_be_bytes());
            w.end_nest(n);
        }
        if let Some(state) = ct.proto_state {
            let (kind, s) = match state {
                ProtoState::Tcp(s) => (cta::PROTOINFO_TCP, s),
                ProtoState::Sctp(s) => (cta::PROTOINFO_SCTP, s),
                ProtoState::Dccp(s) => (cta::PROTOINFO_DCCP, s),
            };
            let p = w.begin_nest(cta::PROTOINFO);
            let t = w.begin_nest(kind);
            w.u8(cta::PROTOINFO_STATE, s);
            if let Some(tag) = ct.sctp_vtag_orig() {
                w.be32(cta::PROTOINFO_SCTP_VTAG_ORIGINAL, tag);
            }
            if let Some(tag) = ct.sctp_vtag_reply() {
                w.be32(cta::PROTOINFO_SCTP_VTAG_REPLY, tag);
            }
            if let Some(role) = ct.dccp_role() {
                w.u8(cta::PROTOINFO_DCCP_ROLE, role);
            }
            w.end_nest(t);
            w.end_nest(p);
        }
        w.as_bytes().to_vec()
    }

    #[test]
    fn sctp_vtags_and_dccp_role_round_trip() {
        let mut sctp = flow("10.0.0.1", "10.0.0.2", proto::SCTP, 1000, 2000);
        sctp.proto_state = Some(ProtoState::Sctp(4));
        sctp.extra_mut().sctp_vtag_orig = Some(0x0100_0000);
        sctp.extra_mut().sctp_vtag_reply = Some(0xdead_beef);
        let mut dccp = flow("10.0.0.1", "10.0.0.2", proto::DCCP, 1000, 2000);
        dccp.proto_state = Some(ProtoState::Dccp(4));
        dccp.extra_mut().dccp_role = Some(1);
        for ct in [sctp, dccp] {
            let mut out = Conntrack::default();
            decode_conntrack(libc::AF_INET as u8, &encode(&ct), &mut out).expect("decodes");
            assert_eq!(out, ct);
        }
        // A short vtag is an error, not a panic.
        let mut w = AttrWriter::new();
        w.tuple(cta::TUPLE_ORIG, &sample_entry().orig);
        let p = w.begin_nest(cta::PROTOINFO);
        let t = w.begin_nest(cta::PROTOINFO_SCTP);
        w.bytes(cta::PROTOINFO_SCTP_VTAG_REPLY, &[1, 2]);
        w.end_nest(t);
        w.end_nest(p);
        let mut out = Conntrack::default();
        assert_eq!(
            decode_conntrack(2, w.as_bytes(), &mut out),
            Err(CodecError::BadAttribute {
                name: "CTA_PROTOINFO_SCTP_VTAG_REPLY"
            })
        );
    }

    #[test]
    fn round_trip_of_the_attributes_we_encode() {
        let mut ct = sample_entry();
        ct.status = Some(0x0e);
        ct.mark = Some(7);
        ct.timeout = Some(120);
        ct.counters_orig = Some(Counters {
            packets: 3,
            bytes: 180,
        });
        ct.proto_state = Some(ProtoState::Tcp(3));
        let bytes = encode(&ct);
        let mut out = Conntrack::default();
        decode_conntrack(libc::AF_INET as u8, &bytes, &mut out).expect("decodes");
        assert_eq!(out, ct);
    }

    #[test]
    fn every_truncation_is_an_error_or_a_partial_entry_never_a_panic() {
        let mut ct = sample_entry();
        ct.counters_orig = Some(Counters {
            packets: 1,
            bytes: 2,
        });
        ct.proto_state = Some(ProtoState::Tcp(2));
        let bytes = encode(&ct);
        let mut out = Conntrack::default();
        for cut in 0..bytes.len() {
            let _ = decode_conntrack(2, &bytes[..cut], &mut out);
        }
        assert_eq!(decode_conntrack(2, &[], &mut out), Err(CodecError::NoTuple));
    }

    #[test]
    fn corrupted_lengths_never_panic() {
        let bytes = encode(&sample_entry());
        let mut out = Conntrack::default();
        // Flip every byte to a few values: lengths and kinds become garbage.
        for i in 0..bytes.len() {
            for v in [0u8, 1, 3, 4, 0x7f, 0xff] {
                let mut b = bytes.clone();
                b[i] = v;
                let _ = decode_conntrack(2, &b, &mut out);
            }
        }
    }

    #[test]
    fn unknown_attributes_are_skipped() {
        let mut w = AttrWriter::new();
        w.be32(200, 0xdead_beef);
        let n = w.begin_nest(201);
        w.be32(1, 1);
        w.end_nest(n);
        let mut bytes = w.as_bytes().to_vec();
        bytes.extend(encode(&sample_entry()));
        let mut out = Conntrack::default();
        decode_conntrack(2, &bytes, &mut out).expect("decodes");
        assert_eq!(out, sample_entry());
    }

    #[test]
    fn short_fixed_size_values_are_errors() {
        let mut w = AttrWriter::new();
        w.tuple(cta::TUPLE_ORIG, &sample_entry().orig);
        w.bytes(cta::STATUS, &[1, 2]);
        let mut out = Conntrack::default();
        assert_eq!(
            decode_conntrack(2, w.as_bytes(), &mut out),
            Err(CodecError::BadAttribute { name: "CTA_STATUS" })
        );
    }

    #[test]
    fn stats_cpu_decodes_and_sorts() {
        let mut payload = vec![0u8, 0, 0, 1];
        let mut w = AttrWriter::new();
        w.be32(8, 5);
        w.be32(2, 9);
        payload.extend_from_slice(w.as_bytes());
        let s = decode_stats_cpu(&payload).expect("decodes");
        assert_eq!(s.cpu, 1);
        assert_eq!(s.counters, vec![(2, 9), (8, 5)]);
        assert!(decode_stats_cpu(&payload[..3]).is_err());
    }
}
