//! The domain: conntrack entries, their tuples, protocol and state names,
//! status bits, NAT rules and event kinds, as conntrack(8) names them. No
//! output code and no kernel I/O: every other module builds on this one.
use std::net::IpAddr;

use serde::Serialize;

/// Layer 4 protocol numbers (IPPROTO_*) that conntrack treats specially.
pub mod proto {
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// DCCP.
    pub const DCCP: u8 = 33;
    /// GRE.
    pub const GRE: u8 = 47;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
    /// SCTP.
    pub const SCTP: u8 = 132;
    /// UDP-Lite.
    pub const UDPLITE: u8 = 136;
}

/// Packet and byte counters of one direction (`nf_conntrack_acct=1`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// The per-protocol state the kernel reports in `CTA_PROTOINFO`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtoState {
    /// `enum tcp_conntrack`.
    Tcp(u8),
    /// `enum sctp_conntrack`.
    Sctp(u8),
    /// `enum ct_dccp_states`.
    Dccp(u8),
}

/// One direction of a connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tuple {
    /// Source address.
    pub src: Option<IpAddr>,
    /// Destination address.
    pub dst: Option<IpAddr>,
    /// Layer 4 protocol number.
    pub l4proto: Option<u8>,
    /// Source port (TCP, UDP, UDPLITE, SCTP, DCCP; GRE key).
    pub sport: Option<u16>,
    /// Destination port.
    pub dport: Option<u16>,
    /// ICMP / ICMPv6 type.
    pub icmp_type: Option<u8>,
    /// ICMP / ICMPv6 code.
    pub icmp_code: Option<u8>,
    /// ICMP / ICMPv6 identifier.
    pub icmp_id: Option<u16>,
    /// Per-direction zone (`CTA_TUPLE_ZONE`).
    pub zone: Option<u16>,
}

/// One conntrack entry, as ctnetlink describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Conntrack {
    /// Address family (`AF_INET`, `AF_INET6`) from the nfgenmsg header.
    pub family: u8,
    /// Original direction.
    pub orig: Tuple,
    /// Reply direction.
    pub reply: Tuple,
    /// `IPS_*` status bits.
    pub status: Option<u32>,
    /// Seconds until the entry expires.
    pub timeout: Option<u32>,
    /// Connection mark.
    pub mark: Option<u32>,
    /// Reference count.
    pub use_count: Option<u32>,
    /// The kernel's id of the entry.
    pub id: Option<u32>,
    /// Zone (both directions).
    pub zone: Option<u16>,
    /// Original-direction counters.
    pub counters_orig: Option<Counters>,
    /// Reply-direction counters.
    pub counters_reply: Option<Counters>,
    /// Start time, ns since the epoch (`nf_conntrack_timestamp=1`).
    pub timestamp_start: Option<u64>,
    /// Stop time, ns since the epoch (DESTROY events).
    pub timestamp_stop: Option<u64>,
    /// TCP / SCTP / DCCP state.
    pub proto_state: Option<ProtoState>,
    /// Attributes most entries lack (helper, security, labels), boxed so
    /// the common entry stays small in the live table.
    pub extra: Option<Box<CtExtra>>,
}

/// The rarely present attributes of an entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CtExtra {
    /// Security mark.
    pub secmark: Option<u32>,
    /// Helper name.
    pub helper: Option<Box<str>>,
    /// Security context.
    pub secctx: Option<Box<str>>,
    /// Connection labels bitmap (bit i = label i).
    pub labels: Option<[u8; 16]>,
    /// SCTP verification tag of the original direction, as the kernel
    /// sends it (`CTA_PROTOINFO_SCTP_VTAG_ORIGINAL`, read big-endian).
    pub sctp_vtag_orig: Option<u32>,
    /// SCTP verification tag of the reply direction.
    pub sctp_vtag_reply: Option<u32>,
    /// DCCP role of the original direction's sender (0 client, 1 server).
    pub dccp_role: Option<u8>,
}

impl Tuple {
    /// The same flow seen from its other end: addresses and ports swapped.
    pub fn reversed(&self) -> Self {
        Self {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            ..*self
        }
    }

    /// The tuple the other direction of this flow has: [`Self::reversed`],
    /// and for ICMP the answering type (echo 8 -> echo reply 0). The
    /// per-direction zone stays with its own direction, so it is cleared.
    pub fn inverted(&self) -> Self {
        let icmp_type = match self.l4proto {
            Some(proto::ICMP | proto::ICMPV6) => self
                .icmp_type
                .map(|t| icmp_reply_type(self.l4proto.unwrap_or(0), t)),
            _ => self.icmp_type,
        };
        Self {
            icmp_type,
            zone: None,
            ..self.reversed()
        }
    }
}

/// The ICMP (or ICMPv6) type that answers `icmp_type`, as the kernel's and
/// libnetfilter_conntrack's invmap have it; 255 when the type has no
/// answer, which the kernel refuses in a tuple (EINVAL), as it does for
/// conntrack's request.
pub fn icmp_reply_type(l4proto: u8, icmp_type: u8) -> u8 {
    let pairs: &[(u8, u8)] = if l4proto == proto::ICMPV6 {
        // Echo request/reply, node information query/reply.
        &[(128, 129), (139, 140)]
    } else {
        // Echo, timestamp, information and address mask requests.
        &[(8, 0), (13, 14), (15, 16), (17, 18)]
    };
    pairs
        .iter()
        .find_map(|&(a, b)| {
            if icmp_type == a {
                Some(b)
            } else if icmp_type == b {
                Some(a)
            } else {
                None
            }
        })
        .unwrap_or(u8::MAX)
}

impl Conntrack {
    /// An entry for a flow from `src:sport` to `dst:dport` whose reply comes
    /// back from where it went (no NAT); every other attribute unset.
    pub fn flow(src: IpAddr, dst: IpAddr, l4proto: u8, sport: u16, dport: u16) -> Self {
        let orig = Tuple {
            src: Some(src),
            dst: Some(dst),
            l4proto: Some(l4proto),
            sport: Some(sport),
            dport: Some(dport),
            ..Tuple::default()
        };
        let family = if src.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        Self {
            family: family as u8,
            reply: orig.reversed(),
            orig,
            ..Self::default()
        }
    }

    /// The layer 4 protocol number (original tuple).
    pub fn l4proto(&self) -> u8 {
        self.orig.l4proto.unwrap_or(0)
    }

    /// Whether a status bit is set.
    pub fn has_status(&self, bit: u32) -> bool {
        self.status.is_some_and(|s| s & bit != 0)
    }

    /// The rare attributes, created on first write.
    pub fn extra_mut(&mut self) -> &mut CtExtra {
        self.extra.get_or_insert_with(Box::default)
    }

    /// Security mark.
    pub fn secmark(&self) -> Option<u32> {
        self.extra.as_ref().and_then(|e| e.secmark)
    }

    /// Helper name.
    pub fn helper(&self) -> Option<&str> {
        self.extra.as_ref().and_then(|e| e.helper.as_deref())
    }

    /// Security context.
    pub fn secctx(&self) -> Option<&str> {
        self.extra.as_ref().and_then(|e| e.secctx.as_deref())
    }

    /// Connection labels bitmap.
    pub fn labels(&self) -> Option<&[u8; 16]> {
        self.extra.as_ref().and_then(|e| e.labels.as_ref())
    }

    /// SCTP verification tag, original direction.
    pub fn sctp_vtag_orig(&self) -> Option<u32> {
        self.extra.as_ref().and_then(|e| e.sctp_vtag_orig)
    }

    /// SCTP verification tag, reply direction.
    pub fn sctp_vtag_reply(&self) -> Option<u32> {
        self.extra.as_ref().and_then(|e| e.sctp_vtag_reply)
    }

    /// DCCP role.
    pub fn dccp_role(&self) -> Option<u8> {
        self.extra.as_ref().and_then(|e| e.dccp_role)
    }
}

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

/// Layer 4 protocol name as conntrack prints it.
pub const fn proto_name(p: u8) -> &'static str {
    match p {
        proto::TCP => "tcp",
        proto::UDP => "udp",
        proto::UDPLITE => "udplite",
        proto::ICMP => "icmp",
        proto::ICMPV6 => "icmpv6",
        proto::SCTP => "sctp",
        proto::GRE => "gre",
        proto::DCCP => "dccp",
        _ => "unknown",
    }
}

/// Protocol number for a name or number (`-p`).
pub fn proto_number(s: &str) -> Option<u8> {
    let by_name = match s.to_ascii_lowercase().as_str() {
        "tcp" => Some(proto::TCP),
        "udp" => Some(proto::UDP),
        "udplite" => Some(proto::UDPLITE),
        "icmp" => Some(proto::ICMP),
        "icmpv6" => Some(proto::ICMPV6),
        "sctp" => Some(proto::SCTP),
        "gre" => Some(proto::GRE),
        "dccp" => Some(proto::DCCP),
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
pub fn has_ports(p: u8) -> bool {
    matches!(
        p,
        proto::TCP | proto::UDP | proto::UDPLITE | proto::SCTP | proto::DCCP
    )
}

/// Whether a layer 4 protocol is ICMP or ICMPv6 (type, code and id instead
/// of ports).
pub fn is_icmp(p: u8) -> bool {
    matches!(p, proto::ICMP | proto::ICMPV6)
}

/// The set bits of a labels bitmap.
pub fn label_bits(labels: &[u8; 16]) -> impl Iterator<Item = u16> + '_ {
    (0u16..128).filter(|bit| labels[usize::from(bit / 8)] & (1 << (bit % 8)) != 0)
}

/// `IPS_*` status bits (include/uapi/linux/netfilter/nf_conntrack_common.h).
pub mod ips {
    pub const EXPECTED: u32 = 1 << 0;
    pub const SEEN_REPLY: u32 = 1 << 1;
    pub const ASSURED: u32 = 1 << 2;
    pub const CONFIRMED: u32 = 1 << 3;
    pub const SRC_NAT: u32 = 1 << 4;
    pub const DST_NAT: u32 = 1 << 5;
    pub const SEQ_ADJUST: u32 = 1 << 6;
    pub const SRC_NAT_DONE: u32 = 1 << 7;
    pub const DST_NAT_DONE: u32 = 1 << 8;
    pub const DYING: u32 = 1 << 9;
    pub const FIXED_TIMEOUT: u32 = 1 << 10;
    pub const TEMPLATE: u32 = 1 << 11;
    pub const UNTRACKED: u32 = 1 << 12;
    pub const HELPER: u32 = 1 << 13;
    pub const OFFLOAD: u32 = 1 << 14;
    pub const HW_OFFLOAD: u32 = 1 << 15;

    /// Names as conntrack(8) spells them, in bit order.
    pub const NAMES: &[(&str, u32)] = &[
        ("EXPECTED", EXPECTED),
        ("SEEN_REPLY", SEEN_REPLY),
        ("ASSURED", ASSURED),
        ("CONFIRMED", CONFIRMED),
        ("SRC_NAT", SRC_NAT),
        ("DST_NAT", DST_NAT),
        ("SEQ_ADJUST", SEQ_ADJUST),
        ("SRC_NAT_DONE", SRC_NAT_DONE),
        ("DST_NAT_DONE", DST_NAT_DONE),
        ("DYING", DYING),
        ("FIXED_TIMEOUT", FIXED_TIMEOUT),
        ("TEMPLATE", TEMPLATE),
        ("UNTRACKED", UNTRACKED),
        ("HELPER", HELPER),
        ("OFFLOAD", OFFLOAD),
        ("HW_OFFLOAD", HW_OFFLOAD),
    ];
}

/// Entries for the unit tests of every module.
#[cfg(test)]
pub(crate) mod samples {
    use super::*;

    /// An assured TCP connection with every common attribute set.
    pub fn tcp_established() -> Conntrack {
        Conntrack {
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
            ..flow("1.2.3.4", "5.6.7.8", proto::TCP, 10, 20)
        }
    }

    /// [`Conntrack::flow`] from address strings.
    pub fn flow(src: &str, dst: &str, l4proto: u8, sport: u16, dport: u16) -> Conntrack {
        let addr = |s: &str| s.parse::<IpAddr>().expect("a test address");
        Conntrack::flow(addr(src), addr(dst), l4proto, sport, dport)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flow_mirrors_its_tuple_and_family() {
        let ct = samples::flow("10.0.0.1", "10.0.0.2", proto::UDP, 1000, 53);
        assert_eq!(ct.family, libc::AF_INET as u8);
        assert_eq!(ct.reply.src, ct.orig.dst);
        assert_eq!(ct.reply.dport, Some(1000));
        assert_eq!(ct.reply.reversed(), ct.orig);
        let v6 = samples::flow("::1", "::2", proto::TCP, 1, 2);
        assert_eq!(v6.family, libc::AF_INET6 as u8);
    }

    #[test]
    fn inverted_tuples_answer_icmp_requests() {
        let echo = Tuple {
            src: "10.0.0.1".parse().ok(),
            dst: "10.0.0.2".parse().ok(),
            l4proto: Some(proto::ICMP),
            icmp_type: Some(8),
            icmp_code: Some(0),
            icmp_id: Some(77),
            zone: Some(3),
            ..Tuple::default()
        };
        let reply = echo.inverted();
        assert_eq!(
            (reply.src, reply.icmp_type, reply.icmp_id, reply.zone),
            (echo.dst, Some(0), Some(77), None)
        );
        assert_eq!(reply.inverted().icmp_type, Some(8));
        assert_eq!(icmp_reply_type(proto::ICMP, 13), 14);
        assert_eq!(
            icmp_reply_type(proto::ICMP, 3),
            255,
            "no answer to an error"
        );
        assert_eq!(icmp_reply_type(proto::ICMPV6, 128), 129);
        assert_eq!(icmp_reply_type(proto::ICMPV6, 8), 255);
        let udp = samples::flow("10.0.0.1", "10.0.0.2", proto::UDP, 1, 2);
        assert_eq!(udp.orig.inverted(), udp.reply);
    }

    #[test]
    fn protocol_names_and_numbers_agree() {
        for p in [
            proto::TCP,
            proto::UDP,
            proto::ICMP,
            proto::ICMPV6,
            proto::SCTP,
            proto::GRE,
        ] {
            assert_eq!(proto_number(proto_name(p)), Some(p));
        }
        assert_eq!(proto_number("99"), Some(99));
        assert!(has_ports(proto::DCCP) && !has_ports(proto::GRE) && is_icmp(proto::ICMPV6));
    }
}
