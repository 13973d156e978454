//! ctnetlink: the conntrack part of netfilter's netlink interface.
//!
//! What comes from maintained crates: the socket (`netlink-sys`) and the
//! netlink header and attribute (NLA) walking (`netlink-packet-core`'s
//! `NetlinkBuffer`, `NlaBuffer` and `NlasIterator`, which check every length
//! against the buffer).
//!
//! What is hand-written, and why: the conntrack attribute semantics
//! (`CTA_*`), decoded straight into the flat [`Conntrack`](crate::ct::Conntrack) record in
//! [`codec`]. `netlink-packet-netfilter` 0.4 knows 6 of the ~25 `CTA_*`
//! attributes (no counters, zone, id, use, timestamps, labels, secctx,
//! SCTP/DCCP state, ICMP tuples, per-CPU stats) and allocates a `Vec` per
//! nested attribute; at 500,000 entries a listing has a budget of about 2 µs
//! per entry, so the decoder walks the borrowed receive buffer and allocates
//! nothing per entry.
pub mod codec;
pub mod events;
pub mod expect;
pub mod progname;
pub mod request;
pub mod socket;

use std::{io, os::fd::RawFd};

pub use codec::StatsCpu;
use netlink_packet_core::NetlinkBuffer;
pub use socket::{CtSocket, NetlinkError};

/// The netlink messages of one datagram, each header checked against the
/// buffer; an `Err` (a truncated header) ends the walk.
pub fn messages(
    buf: &[u8],
) -> impl Iterator<Item = Result<NetlinkBuffer<&[u8]>, codec::CodecError>> {
    let mut off = 0;
    std::iter::from_fn(move || {
        let rest = buf.get(off..).filter(|r| !r.is_empty())?;
        match NetlinkBuffer::new_checked(rest) {
            Ok(packet) => {
                // Messages are 4-byte aligned (NLMSG_ALIGN).
                off += (packet.length() as usize + 3) & !3;
                Some(Ok(packet))
            }
            Err(_) => {
                off = buf.len();
                Some(Err(codec::CodecError::Truncated("netlink header")))
            }
        }
    })
}

/// Asks for a receive buffer of `bytes`: SO_RCVBUFFORCE, which root may
/// set past net.core.rmem_max, else SO_RCVBUF (capped by rmem_max).
pub fn set_rcvbuf(fd: RawFd, bytes: usize) -> io::Result<()> {
    let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let set = |name| {
        // SAFETY: setsockopt on the caller's fd with a c_int value.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                name,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    set(libc::SO_RCVBUFFORCE).or_else(|_| set(libc::SO_RCVBUF))
}

/// `NFNL_SUBSYS_CTNETLINK`.
pub const NFNL_SUBSYS_CTNETLINK: u16 = 1;
/// `IPCTNL_MSG_CT_NEW`: an entry (dump reply, NEW/UPDATE event, create).
pub const IPCTNL_MSG_CT_NEW: u8 = 0;
/// `IPCTNL_MSG_CT_GET`: dump or get.
pub const IPCTNL_MSG_CT_GET: u8 = 1;
/// `IPCTNL_MSG_CT_DELETE`: delete, flush, DESTROY event.
pub const IPCTNL_MSG_CT_DELETE: u8 = 2;
/// `IPCTNL_MSG_CT_GET_CTRZERO`: dump or get, zeroing each entry's counters
/// once they are read.
pub const IPCTNL_MSG_CT_GET_CTRZERO: u8 = 3;
/// `IPCTNL_MSG_CT_GET_STATS_CPU`: per-CPU statistics.
pub const IPCTNL_MSG_CT_GET_STATS_CPU: u8 = 4;
/// `IPCTNL_MSG_CT_GET_STATS`: global statistics (entry count).
pub const IPCTNL_MSG_CT_GET_STATS: u8 = 5;

/// `IPCTNL_MSG_CT_GET_DYING`: dump the dying list.
pub const IPCTNL_MSG_CT_GET_DYING: u8 = 6;
/// `IPCTNL_MSG_CT_GET_UNCONFIRMED`: dump the unconfirmed list.
pub const IPCTNL_MSG_CT_GET_UNCONFIRMED: u8 = 7;

/// `NFNL_SUBSYS_CTNETLINK_EXP`: the expectation table.
pub const NFNL_SUBSYS_CTNETLINK_EXP: u16 = 2;
/// `IPCTNL_MSG_EXP_NEW`: an expectation (dump reply, NEW event, create).
pub const IPCTNL_MSG_EXP_NEW: u8 = 0;
/// `IPCTNL_MSG_EXP_GET`: dump or get.
pub const IPCTNL_MSG_EXP_GET: u8 = 1;
/// `IPCTNL_MSG_EXP_DELETE`: delete, flush, DESTROY event.
pub const IPCTNL_MSG_EXP_DELETE: u8 = 2;
/// `IPCTNL_MSG_EXP_GET_STATS_CPU`: per-CPU expectation statistics.
pub const IPCTNL_MSG_EXP_GET_STATS_CPU: u8 = 3;

/// The netlink message type of a ctnetlink message.
pub const fn ct_msg_type(msg: u8) -> u16 {
    (NFNL_SUBSYS_CTNETLINK << 8) | msg as u16
}

/// The netlink message type of a ctnetlink expectation message.
pub const fn exp_msg_type(msg: u8) -> u16 {
    (NFNL_SUBSYS_CTNETLINK_EXP << 8) | msg as u16
}

/// `CTA_*` attribute numbers (include/uapi/linux/netfilter/nfnetlink_conntrack.h).
pub mod cta {
    pub const TUPLE_ORIG: u16 = 1;
    pub const TUPLE_REPLY: u16 = 2;
    pub const STATUS: u16 = 3;
    pub const PROTOINFO: u16 = 4;
    pub const HELP: u16 = 5;
    pub const NAT_SRC: u16 = 6;
    pub const TIMEOUT: u16 = 7;
    pub const MARK: u16 = 8;
    pub const COUNTERS_ORIG: u16 = 9;
    pub const COUNTERS_REPLY: u16 = 10;
    pub const USE: u16 = 11;
    pub const ID: u16 = 12;
    pub const NAT_DST: u16 = 13;
    pub const SECMARK: u16 = 17;
    pub const ZONE: u16 = 18;
    pub const SECCTX: u16 = 19;
    pub const TIMESTAMP: u16 = 20;
    pub const MARK_MASK: u16 = 21;
    pub const LABELS: u16 = 22;
    pub const LABELS_MASK: u16 = 23;
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
    pub const PROTOINFO_TCP_FLAGS_ORIGINAL: u16 = 4;
    pub const PROTOINFO_TCP_FLAGS_REPLY: u16 = 5;
    pub const PROTOINFO_DCCP_ROLE: u16 = 2;
    pub const PROTOINFO_SCTP_VTAG_ORIGINAL: u16 = 2;
    pub const PROTOINFO_SCTP_VTAG_REPLY: u16 = 3;

    pub const NAT_V4_MINIP: u16 = 1;
    pub const NAT_PROTO: u16 = 3;
    pub const NAT_V6_MINIP: u16 = 4;
    pub const PROTONAT_PORT_MIN: u16 = 1;
    pub const PROTONAT_PORT_MAX: u16 = 2;

    pub const COUNTERS_PACKETS: u16 = 1;
    pub const COUNTERS_BYTES: u16 = 2;
    pub const COUNTERS32_PACKETS: u16 = 3;
    pub const COUNTERS32_BYTES: u16 = 4;

    pub const TIMESTAMP_START: u16 = 1;
    pub const TIMESTAMP_STOP: u16 = 2;

    pub const SECCTX_NAME: u16 = 1;
    pub const HELP_NAME: u16 = 1;

    /// `CTA_STATS_INSERT_FAILED`: per-CPU, inserts that lost a race.
    pub const STATS_INSERT_FAILED: u16 = 9;
    /// `CTA_STATS_DROP`: per-CPU, packets dropped for want of an entry.
    pub const STATS_DROP: u16 = 10;
    /// `CTA_STATS_EARLY_DROP`: per-CPU, entries evicted to make room.
    pub const STATS_EARLY_DROP: u16 = 11;

    pub const STATS_GLOBAL_ENTRIES: u16 = 1;
    pub const STATS_GLOBAL_MAX_ENTRIES: u16 = 2;
}

/// `CTA_EXPECT_*` attribute numbers (include/uapi/linux/netfilter/nfnetlink_conntrack.h).
pub mod cta_exp {
    pub const MASTER: u16 = 1;
    pub const TUPLE: u16 = 2;
    pub const MASK: u16 = 3;
    pub const TIMEOUT: u16 = 4;
    pub const ID: u16 = 5;
    pub const HELP_NAME: u16 = 6;
    pub const ZONE: u16 = 7;
    pub const FLAGS: u16 = 8;
    pub const CLASS: u16 = 9;
    pub const FN: u16 = 11;

    /// `CTA_STATS_EXP_*`, per CPU.
    pub const STATS_NEW: u16 = 1;
    pub const STATS_CREATE: u16 = 2;
    pub const STATS_DELETE: u16 = 3;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_walk_aligned_and_stop_at_a_truncated_header() {
        // Two messages: a 17-byte one (padded to 20) and a 16-byte one.
        let mut buf = Vec::new();
        for (len, kind) in [(17u32, 0x0100u16), (16, 3)] {
            buf.extend_from_slice(&len.to_ne_bytes());
            buf.extend_from_slice(&kind.to_ne_bytes());
            buf.extend_from_slice(&[0; 10]);
            buf.resize(buf.len().next_multiple_of(4) + (len as usize - 16), 0);
            buf.resize(buf.len().next_multiple_of(4), 0);
        }
        let kinds: Vec<u16> = messages(&buf)
            .map(|m| m.expect("well formed").message_type())
            .collect();
        assert_eq!(kinds, [0x0100, 3]);
        let cut = &buf[..buf.len() - 4];
        let walked: Vec<bool> = messages(cut).map(|m| m.is_ok()).collect();
        assert_eq!(walked, [true, false]);
        assert_eq!(messages(&[]).count(), 0);
    }
}
