//! The kernel/user ABI of ctscope: fixed-size records written by the eBPF
//! programs into the ring buffer, and the load-time globals they read.
//!
//! One definition of each record, used by both sides. Every record is
//! `#[repr(C)]`, 8-byte aligned, with explicit padding, so its layout does not
//! depend on the compiler.
#![no_std]

/// An entry was confirmed (inserted into the conntrack hash).
pub const EVENT_NEW: u8 = 1;
/// An entry changed (state, mark, status).
pub const EVENT_UPDATE: u8 = 2;
/// An entry was removed from the table.
pub const EVENT_DESTROY: u8 = 3;

/// The name of the ring buffer map in the eBPF object.
pub const RING_MAP: &str = "CT_EVENTS";

/// One direction of a connection, as the kernel's `nf_conntrack_tuple`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtTuple {
    /// Source address; IPv4 in the first 4 bytes, network order.
    pub src: [u8; 16],
    /// Destination address; IPv4 in the first 4 bytes, network order.
    pub dst: [u8; 16],
    /// Source port, or ICMP id, host order.
    pub sport: u16,
    /// Destination port, host order.
    pub dport: u16,
    /// ICMP type.
    pub icmp_type: u8,
    /// ICMP code.
    pub icmp_code: u8,
    /// Explicit padding to 40 bytes.
    pub _pad: [u8; 2],
}

/// One conntrack event, written by the eBPF programs into the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEvent {
    /// `bpf_ktime_get_ns()` when the event was seen (CLOCK_MONOTONIC).
    pub ktime_ns: u64,
    /// Per-CPU sequence number, to detect reordering and gaps.
    pub seq: u64,
    /// Address of the `struct nf_conn`: with `start_ns`, the entry's identity.
    pub ct_ptr: u64,
    /// The entry's start time (timestamp extension), 0 when absent.
    pub start_ns: u64,
    /// The entry's stop time (timestamp extension), 0 when absent.
    pub stop_ns: u64,
    /// Original-direction packets and bytes, reply packets and bytes.
    pub counters: [u64; 4],
    /// Network namespace inode number.
    pub netns: u32,
    /// `ct->status` (IPS_* bits).
    pub status: u32,
    /// `ct->mark`.
    pub mark: u32,
    /// Remaining timeout in jiffies (user space divides by the kernel's HZ).
    pub timeout: u32,
    /// CPU the event was seen on.
    pub cpu: u32,
    /// Conntrack zone id.
    pub zone: u16,
    /// One of `EVENT_*`.
    pub event: u8,
    /// Layer 3 protocol (AF_INET, AF_INET6).
    pub l3proto: u8,
    /// Layer 4 protocol (IPPROTO_*).
    pub l4proto: u8,
    /// TCP/SCTP/DCCP state, 0 when none.
    pub proto_state: u8,
    /// Bit 0: counters valid; bit 1: timestamps valid.
    pub flags: u8,
    /// Explicit padding.
    pub _pad: u8,
    /// UPDATE: the kernel's event bits (uapi `enum ip_conntrack_events`,
    /// `1 << IPCT_*`), which say what ctnetlink puts in the message; 0
    /// for NEW and DESTROY.
    pub events: u16,
    /// Explicit padding to an 8-byte multiple.
    pub _pad2: [u8; 2],
    /// Original tuple.
    pub orig: CtTuple,
    /// Reply tuple.
    pub reply: CtTuple,
}

/// An offset the running kernel does not have (e.g. no CONFIG_NF_CONNTRACK_MARK).
pub const ABSENT: u32 = u32::MAX;

/// Kernel struct offsets, read from the running kernel's BTF by user space
/// and set as the load-time global `OFFSETS` (Rust eBPF has no CO-RE).
/// Offsets are in bytes; [`ABSENT`] marks a field this kernel lacks.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offsets {
    /// `sk_buff._nfct` (ct pointer | ctinfo in the low 3 bits).
    pub skb_nfct: u32,
    /// `nf_conn.status`.
    pub ct_status: u32,
    /// `nf_conn.timeout` (jiffies).
    pub ct_timeout: u32,
    /// `nf_conn.mark`.
    pub ct_mark: u32,
    /// `nf_conn.zone.id`.
    pub ct_zone: u32,
    /// `nf_conn.ct_net.net` (pointer to `struct net`).
    pub ct_net: u32,
    /// `net.ns.inum`.
    pub net_inum: u32,
    /// `nf_conn.ext` (pointer to `struct nf_ct_ext`).
    pub ct_ext: u32,
    /// `nf_conn.proto.tcp.state`.
    pub ct_tcp_state: u32,
    /// `nf_conn.tuplehash` (array of two `nf_conntrack_tuple_hash`).
    pub ct_tuplehash: u32,
    /// `sizeof(struct nf_conntrack_tuple_hash)`.
    pub tuplehash_size: u32,
    /// `nf_conntrack_tuple_hash.tuple`.
    pub hash_tuple: u32,
    /// `nf_conntrack_tuple.src.u3`.
    pub tuple_src_u3: u32,
    /// `nf_conntrack_tuple.src.u` (port / ICMP id).
    pub tuple_src_u: u32,
    /// `nf_conntrack_tuple.src.l3num`.
    pub tuple_src_l3num: u32,
    /// `nf_conntrack_tuple.dst.u3`.
    pub tuple_dst_u3: u32,
    /// `nf_conntrack_tuple.dst.u` (port / ICMP type and code).
    pub tuple_dst_u: u32,
    /// `nf_conntrack_tuple.dst.protonum`.
    pub tuple_dst_protonum: u32,
    /// `nf_ct_ext.offset` (u8 array indexed by extension id).
    pub ext_offset: u32,
    /// `NF_CT_EXT_ACCT` (enum nf_ct_ext_id).
    pub ext_acct_id: u32,
    /// `NF_CT_EXT_TSTAMP`.
    pub ext_tstamp_id: u32,
    /// `nf_ct_event.ct` (the entry an event is about).
    pub event_ct: u32,
    /// Bytes of `struct nf_conn` the programs copy (at most 512); every
    /// `ct_*` field above lies below it.
    pub ct_size: u32,
    /// Only report entries of this network namespace inode (0: all).
    pub filter_netns: u32,
}

/// Offsets with every field absent: the value compiled into the object.
pub const UNSET_OFFSETS: Offsets = Offsets {
    skb_nfct: ABSENT,
    ct_status: ABSENT,
    ct_timeout: ABSENT,
    ct_mark: ABSENT,
    ct_zone: ABSENT,
    ct_net: ABSENT,
    net_inum: ABSENT,
    ct_ext: ABSENT,
    ct_tcp_state: ABSENT,
    ct_tuplehash: ABSENT,
    tuplehash_size: ABSENT,
    hash_tuple: ABSENT,
    tuple_src_u3: ABSENT,
    tuple_src_u: ABSENT,
    tuple_src_l3num: ABSENT,
    tuple_dst_u3: ABSENT,
    tuple_dst_u: ABSENT,
    tuple_dst_protonum: ABSENT,
    ext_offset: ABSENT,
    ext_acct_id: ABSENT,
    ext_tstamp_id: ABSENT,
    event_ct: ABSENT,
    ct_size: 0,
    filter_netns: 0,
};

impl Default for Offsets {
    fn default() -> Self {
        UNSET_OFFSETS
    }
}

/// `CtEvent::flags`: the counters are valid (acct extension present).
pub const FLAG_COUNTERS: u8 = 1;
/// `CtEvent::flags`: the timestamps are valid (tstamp extension present).
pub const FLAG_TIMESTAMPS: u8 = 2;

/// uapi `enum ip_conntrack_events` (linux/netfilter/nf_conntrack_common.h),
/// as bits of `CtEvent::events`: a new entry.
pub const IPCT_NEW: u16 = 1 << 0;
/// An expected (related) entry.
pub const IPCT_RELATED: u16 = 1 << 1;
/// The entry is gone.
pub const IPCT_DESTROY: u16 = 1 << 2;
/// Its protocol state (TCP state) changed: ctnetlink adds the protoinfo.
pub const IPCT_PROTOINFO: u16 = 1 << 5;
/// Its helper changed.
pub const IPCT_HELPER: u16 = 1 << 6;
/// Its mark changed: ctnetlink adds the mark even when 0.
pub const IPCT_MARK: u16 = 1 << 7;

/// The size of one record in the ring buffer.
pub const CT_EVENT_SIZE: usize = core::mem::size_of::<CtEvent>();

const _: () = assert!(CT_EVENT_SIZE.is_multiple_of(8));
// No padding of the compiler's: the tuples follow the explicit fields.
const _: () = assert!(core::mem::offset_of!(CtEvent, orig) == 104);
const _: () = assert!(CT_EVENT_SIZE == 104 + 2 * 40);
const _: () = assert!(core::mem::size_of::<CtTuple>() == 40);
// The programs read the timestamp extension's start and stop into these
// two in one copy.
const _: () = assert!(
    core::mem::offset_of!(CtEvent, stop_ns) == core::mem::offset_of!(CtEvent, start_ns) + 8
);

#[cfg(feature = "user")]
// SAFETY: plain old data, repr(C), no padding the compiler adds (checked above).
unsafe impl aya::Pod for CtEvent {}

#[cfg(feature = "user")]
// SAFETY: plain old data: u32 fields only.
unsafe impl aya::Pod for Offsets {}
