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
    /// Remaining timeout in seconds.
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
    /// Explicit padding to an 8-byte multiple.
    pub _pad: [u8; 5],
    /// Original tuple.
    pub orig: CtTuple,
    /// Reply tuple.
    pub reply: CtTuple,
}

/// The size of one record in the ring buffer.
pub const CT_EVENT_SIZE: usize = core::mem::size_of::<CtEvent>();

const _: () = assert!(CT_EVENT_SIZE.is_multiple_of(8));
const _: () = assert!(core::mem::size_of::<CtTuple>() == 40);

#[cfg(feature = "user")]
// SAFETY: plain old data, repr(C), no padding the compiler adds (checked above).
unsafe impl aya::Pod for CtEvent {}
