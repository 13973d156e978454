//! ctnetlink: the conntrack part of netfilter's netlink interface.
//!
//! What comes from maintained crates: the socket (`netlink-sys`) and the
//! netlink header and attribute (NLA) walking (`netlink-packet-core`'s
//! `NetlinkBuffer`, `NlaBuffer` and `NlasIterator`, which check every length
//! against the buffer).
//!
//! What is hand-written, and why: the conntrack attribute semantics
//! (`CTA_*`), decoded straight into the flat [`Conntrack`] record in
//! [`codec`]. `netlink-packet-netfilter` 0.4 knows 6 of the ~25 `CTA_*`
//! attributes (no counters, zone, id, use, timestamps, labels, secctx,
//! SCTP/DCCP state, ICMP tuples, per-CPU stats) and allocates a `Vec` per
//! nested attribute; at 500,000 entries a listing has a budget of about 2 µs
//! per entry, so the decoder walks the borrowed receive buffer and allocates
//! nothing per entry.
pub mod codec;
pub mod events;
pub mod socket;

pub use codec::{Conntrack, ProtoState, StatsCpu, Tuple};
pub use socket::{CtSocket, NetlinkError};

/// `NFNL_SUBSYS_CTNETLINK`.
pub const NFNL_SUBSYS_CTNETLINK: u16 = 1;
/// `IPCTNL_MSG_CT_NEW`: an entry (dump reply, NEW/UPDATE event, create).
pub const IPCTNL_MSG_CT_NEW: u8 = 0;
/// `IPCTNL_MSG_CT_GET`: dump or get.
pub const IPCTNL_MSG_CT_GET: u8 = 1;
/// `IPCTNL_MSG_CT_DELETE`: delete, flush, DESTROY event.
pub const IPCTNL_MSG_CT_DELETE: u8 = 2;
/// `IPCTNL_MSG_CT_GET_STATS_CPU`: per-CPU statistics.
pub const IPCTNL_MSG_CT_GET_STATS_CPU: u8 = 4;
/// `IPCTNL_MSG_CT_GET_STATS`: global statistics (entry count).
pub const IPCTNL_MSG_CT_GET_STATS: u8 = 5;

/// The netlink message type of a ctnetlink message.
pub const fn ct_msg_type(msg: u8) -> u16 {
    (NFNL_SUBSYS_CTNETLINK << 8) | msg as u16
}

/// `CTA_*` attribute numbers (include/uapi/linux/netfilter/nfnetlink_conntrack.h).
pub mod cta {
    pub const TUPLE_ORIG: u16 = 1;
    pub const TUPLE_REPLY: u16 = 2;
    pub const STATUS: u16 = 3;
    pub const PROTOINFO: u16 = 4;
    pub const HELP: u16 = 5;
    pub const TIMEOUT: u16 = 7;
    pub const MARK: u16 = 8;
    pub const COUNTERS_ORIG: u16 = 9;
    pub const COUNTERS_REPLY: u16 = 10;
    pub const USE: u16 = 11;
    pub const ID: u16 = 12;
    pub const SECMARK: u16 = 17;
    pub const ZONE: u16 = 18;
    pub const SECCTX: u16 = 19;
    pub const TIMESTAMP: u16 = 20;
    pub const MARK_MASK: u16 = 21;
    pub const LABELS: u16 = 22;
    pub const STATUS_MASK: u16 = 26;

    pub const TUPLE_IP: u16 = 1;
    pub const TUPLE_PROTO: u16 = 2;
    pub const TUPLE_ZONE: u16 = 3;

    pub const IP_V4_SRC: u16 = 1;
    pub const IP_V4_DST: u16 = 2;
    pub const IP_V6_SRC: u16 = 3;
    pub const IP_V6_DST: u16 = 4;

    pub const PROTO_NUM: u16 = 1;
    pub const PROTO_SRC_PORT: u16 = 2;
    pub const PROTO_DST_PORT: u16 = 3;
    pub const PROTO_ICMP_ID: u16 = 4;
    pub const PROTO_ICMP_TYPE: u16 = 5;
    pub const PROTO_ICMP_CODE: u16 = 6;
    pub const PROTO_ICMPV6_ID: u16 = 7;
    pub const PROTO_ICMPV6_TYPE: u16 = 8;
    pub const PROTO_ICMPV6_CODE: u16 = 9;

    pub const PROTOINFO_TCP: u16 = 1;
    pub const PROTOINFO_DCCP: u16 = 2;
    pub const PROTOINFO_SCTP: u16 = 3;
    /// The state is the first attribute of each protoinfo nest.
    pub const PROTOINFO_STATE: u16 = 1;

    pub const COUNTERS_PACKETS: u16 = 1;
    pub const COUNTERS_BYTES: u16 = 2;
    pub const COUNTERS32_PACKETS: u16 = 3;
    pub const COUNTERS32_BYTES: u16 = 4;

    pub const TIMESTAMP_START: u16 = 1;
    pub const TIMESTAMP_STOP: u16 = 2;

    pub const SECCTX_NAME: u16 = 1;
    pub const HELP_NAME: u16 = 1;

    pub const STATS_GLOBAL_ENTRIES: u16 = 1;
    pub const STATS_GLOBAL_MAX_ENTRIES: u16 = 2;
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
