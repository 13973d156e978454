//! The ctnetlink event source: conntrack's NEW / UPDATE / DESTROY multicast
//! groups, read in batches from a socket with a large receive buffer.
//!
//! `conntrack -E` loses events in bursts because its buffer is small and
//! its consumer slow, then exits on ENOBUFS. Here ENOBUFS is counted and
//! reported, never fatal, and the receive buffer is raised with
//! SO_RCVBUFFORCE (as root) to absorb bursts.
use std::{
    io,
    os::fd::{AsRawFd, RawFd},
};

use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};

use super::{
    IPCTNL_MSG_CT_DELETE, IPCTNL_MSG_CT_NEW, IPCTNL_MSG_EXP_DELETE, IPCTNL_MSG_EXP_NEW,
    NFNL_SUBSYS_CTNETLINK, NFNL_SUBSYS_CTNETLINK_EXP, codec, expect, messages, set_rcvbuf,
    socket::NetlinkError,
};
use crate::{
    ct::{Conntrack, EventKind},
    expect::Expect,
};

/// `NFNLGRP_CONNTRACK_NEW`.
const NFNLGRP_CONNTRACK_NEW: u32 = 1;
/// `NFNLGRP_CONNTRACK_UPDATE`.
const NFNLGRP_CONNTRACK_UPDATE: u32 = 2;
/// `NFNLGRP_CONNTRACK_DESTROY`.
const NFNLGRP_CONNTRACK_DESTROY: u32 = 3;
/// `NFNLGRP_CONNTRACK_EXP_NEW`, `_EXP_UPDATE`, `_EXP_DESTROY`: expectation
/// events.
const NFNLGRP_CONNTRACK_EXP: [u32; 3] = [4, 5, 6];
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_EXCL: u16 = 0x200;

/// Which events to receive (`-e`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventMask {
    /// NEW.
    pub new: bool,
    /// UPDATE.
    pub update: bool,
    /// DESTROY.
    pub destroy: bool,
}

impl Default for EventMask {
    fn default() -> Self {
        Self {
            new: true,
            update: true,
            destroy: true,
        }
    }
}

impl EventMask {
    /// Parses conntrack's `-e` value: NEW, UPDATES (or UPDATE), DESTROY,
    /// ALL, comma-separated, any case, and like conntrack any prefix
    /// (`-e N`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut m = Self {
            new: false,
            update: false,
            destroy: false,
        };
        for word in s.split(',') {
            let w = word.trim().to_ascii_uppercase();
            let is = |name: &str| !w.is_empty() && name.starts_with(w.as_str());
            if is("ALL") {
                m = Self::default();
            } else if is("NEW") {
                m.new = true;
            } else if is("UPDATES") || w == "UPDATE" {
                m.update = true;
            } else if is("DESTROY") {
                m.destroy = true;
            } else {
                return Err(format!(
                    "unknown event `{}' (NEW, UPDATE, DESTROY, ALL)",
                    word.trim()
                ));
            }
        }
        Ok(m)
    }

    /// Whether an event of this kind is wanted.
    pub fn wants(&self, kind: EventKind) -> bool {
        match kind {
            EventKind::New => self.new,
            EventKind::Update => self.update,
            EventKind::Destroy => self.destroy,
        }
    }
}

/// Settings of the event socket.
#[derive(Clone, Copy, Debug)]
pub struct EventConfig {
    /// Groups to join.
    pub mask: EventMask,
    /// Receive buffer in bytes (SO_RCVBUFFORCE, else SO_RCVBUF).
    pub rcvbuf: usize,
    /// NETLINK_BROADCAST_SEND_ERROR + NETLINK_NO_ENOBUFS: the kernel drops
    /// the conntrack change instead of the event when we cannot keep up (as
    /// conntrackd's NetlinkEventsReliable). Slows the packet path.
    pub reliable: bool,
}

/// What one [`EventSocket::drain`] saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// Events decoded.
    pub events: u64,
    /// ENOBUFS seen: the kernel dropped events for us.
    pub overruns: u64,
    /// Messages that could not be decoded.
    pub malformed: u64,
    /// The socket was read until it had nothing more.
    pub drained: bool,
}

/// A socket subscribed to conntrack events in the current namespace.
pub struct EventSocket {
    socket: Socket,
    buf: Vec<u8>,
    /// The receive buffer the kernel granted (doubled by the kernel).
    pub granted_rcvbuf: usize,
}

impl EventSocket {
    /// Opens and subscribes to the connection events `config.mask` selects.
    pub fn open(config: EventConfig) -> Result<Self, NetlinkError> {
        let groups = [
            (config.mask.new, NFNLGRP_CONNTRACK_NEW),
            (config.mask.update, NFNLGRP_CONNTRACK_UPDATE),
            (config.mask.destroy, NFNLGRP_CONNTRACK_DESTROY),
        ];
        let groups: Vec<u32> = groups.iter().filter(|g| g.0).map(|g| g.1).collect();
        Self::open_groups(&groups, config)
    }

    /// Opens and subscribes to every expectation event (conntrack -E
    /// expect takes no -e); `config.mask` is not looked at.
    pub fn open_expect(config: EventConfig) -> Result<Self, NetlinkError> {
        Self::open_groups(&NFNLGRP_CONNTRACK_EXP, config)
    }

    fn open_groups(groups: &[u32], config: EventConfig) -> Result<Self, NetlinkError> {
        let io = |op| move |source| NetlinkError::Io { op, source };
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(io("socket"))?;
        socket.bind_auto().map_err(io("bind"))?;
        set_rcvbuf(socket.as_raw_fd(), config.rcvbuf).map_err(io("SO_RCVBUF"))?;
        if config.reliable {
            socket
                .set_broadcast_error(true)
                .map_err(io("NETLINK_BROADCAST_ERROR"))?;
            socket
                .set_no_enobufs(true)
                .map_err(io("NETLINK_NO_ENOBUFS"))?;
        }
        for &group in groups {
            socket.add_membership(group).map_err(|source| {
                if source.raw_os_error() == Some(libc::EPERM) {
                    NetlinkError::PermissionDenied {
                        op: "subscribe to conntrack events",
                    }
                } else {
                    NetlinkError::Io {
                        op: "subscribe",
                        source,
                    }
                }
            })?;
        }
        // Joining the groups succeeds even when ctnetlink is missing (the
        // kernel only starts loading it, without waiting), and then no
        // event ever comes; a request tells the user instead.
        if let Err(NetlinkError::NoCtnetlink) = super::CtSocket::open().and_then(|mut s| s.probe())
        {
            return Err(NetlinkError::NoCtnetlink);
        }
        socket.set_non_blocking(true).map_err(io("O_NONBLOCK"))?;
        let granted_rcvbuf = socket.get_rx_buf_sz().unwrap_or(0);
        Ok(Self {
            socket,
            buf: vec![0; 1 << 20],
            granted_rcvbuf,
        })
    }

    /// Reads what is queued without waiting, at most `max_reads`
    /// datagrams, handing each event to `on_event` (see
    /// [`decode_datagram`]). `Batch::drained` says whether the socket was
    /// left empty.
    pub fn drain(
        &mut self,
        max_reads: usize,
        mut on_event: impl FnMut(EventKind, &Conntrack, u32),
    ) -> Result<Batch, NetlinkError> {
        let mut ct = Conntrack::default();
        self.drain_with(max_reads, |buf, batch| {
            decode_datagram(buf, &mut ct, batch, &mut on_event);
        })
    }

    /// [`Self::drain`] for a socket opened with [`Self::open_expect`]: each
    /// expectation event goes to `on_event`.
    pub fn drain_expect(
        &mut self,
        max_reads: usize,
        mut on_event: impl FnMut(EventKind, &Expect),
    ) -> Result<Batch, NetlinkError> {
        let mut exp = Expect::default();
        self.drain_with(max_reads, |buf, batch| {
            decode_expect_datagram(buf, &mut exp, batch, &mut on_event);
        })
    }

    /// Reads up to `max_reads` datagrams without waiting, each to
    /// `on_datagram`; counts overruns.
    fn drain_with(
        &mut self,
        max_reads: usize,
        mut on_datagram: impl FnMut(&[u8], &mut Batch),
    ) -> Result<Batch, NetlinkError> {
        let mut batch = Batch::default();
        for _ in 0..max_reads {
            let mut slice = &mut self.buf[..];
            let n = match self.socket.recv(&mut slice, 0) {
                Ok(n) => n.min(self.buf.len()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    batch.drained = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => break,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    batch.overruns += 1;
                    continue;
                }
                Err(source) => return Err(NetlinkError::Io { op: "recv", source }),
            };
            on_datagram(&self.buf[..n], &mut batch);
        }
        Ok(batch)
    }
}

impl AsRawFd for EventSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

/// The event messages of `subsys` in one datagram: each one's kind (by
/// its type and flags, as conntrack -E tells them), the family and
/// attributes after its nfgenmsg, and its sender's port id, handed to
/// `decode` (which decodes and passes the event on). Counts the events
/// and what did not decode in `batch`.
fn decode_events(
    buf: &[u8],
    subsys: u16,
    (new, delete): (u8, u8),
    batch: &mut Batch,
    mut decode: impl FnMut(EventKind, u8, &[u8], u32) -> Result<(), codec::CodecError>,
) {
    for packet in messages(buf) {
        let Ok(packet) = packet else {
            batch.malformed += 1;
            return;
        };
        let t = packet.message_type();
        if t >> 8 != subsys {
            continue;
        }
        let kind = match (t & 0xff) as u8 {
            m if m == new && packet.flags() & (NLM_F_CREATE | NLM_F_EXCL) != 0 => EventKind::New,
            m if m == new => EventKind::Update,
            m if m == delete => EventKind::Destroy,
            _ => continue,
        };
        let decoded = codec::split_nfgenmsg(packet.payload())
            .and_then(|(head, body)| decode(kind, head.family, body, packet.port_number()));
        match decoded {
            Ok(()) => batch.events += 1,
            Err(_) => batch.malformed += 1,
        }
    }
}

/// Decodes every expectation event message of one datagram.
pub fn decode_expect_datagram(
    buf: &[u8],
    exp: &mut Expect,
    batch: &mut Batch,
    on_event: &mut impl FnMut(EventKind, &Expect),
) {
    decode_events(
        buf,
        NFNL_SUBSYS_CTNETLINK_EXP,
        (IPCTNL_MSG_EXP_NEW, IPCTNL_MSG_EXP_DELETE),
        batch,
        |kind, family, body, _| {
            expect::decode_expect(family, body, exp)?;
            on_event(kind, exp);
            Ok(())
        },
    );
}

/// Decodes every event message of one datagram; `on_event` also gets the
/// netlink port id of the program that caused the event (0: the kernel).
pub fn decode_datagram(
    buf: &[u8],
    ct: &mut Conntrack,
    batch: &mut Batch,
    on_event: &mut impl FnMut(EventKind, &Conntrack, u32),
) {
    decode_events(
        buf,
        NFNL_SUBSYS_CTNETLINK,
        (IPCTNL_MSG_CT_NEW, IPCTNL_MSG_CT_DELETE),
        batch,
        |kind, family, body, port| {
            codec::decode_conntrack(family, body, ct)?;
            on_event(kind, ct, port);
            Ok(())
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        ct::Tuple,
        netlink::{codec::AttrWriter, ct_msg_type, cta},
    };

    fn message(msg: u8, flags: u16) -> Vec<u8> {
        let mut w = AttrWriter::new();
        w.tuple(
            cta::TUPLE_ORIG,
            &Tuple {
                src: Some("10.0.0.1".parse().expect("addr")),
                dst: Some("10.0.0.2".parse().expect("addr")),
                l4proto: Some(17),
                sport: Some(1),
                dport: Some(2),
                ..Tuple::default()
            },
        );
        let len = 16 + 4 + w.as_bytes().len();
        let mut b = Vec::new();
        b.extend_from_slice(&(len as u32).to_ne_bytes());
        b.extend_from_slice(&ct_msg_type(msg).to_ne_bytes());
        b.extend_from_slice(&flags.to_ne_bytes());
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&[2, 0, 0, 0]);
        b.extend_from_slice(w.as_bytes());
        b
    }

    #[test]
    fn event_kinds_from_type_and_flags() {
        let mut buf = message(IPCTNL_MSG_CT_NEW, NLM_F_CREATE | NLM_F_EXCL);
        buf.extend(message(IPCTNL_MSG_CT_NEW, 0));
        buf.extend(message(IPCTNL_MSG_CT_DELETE, 0));
        let mut kinds = Vec::new();
        let mut batch = Batch::default();
        decode_datagram(
            &buf,
            &mut Conntrack::default(),
            &mut batch,
            &mut |k, ct, _| {
                assert_eq!(ct.orig.sport, Some(1));
                kinds.push(k);
            },
        );
        assert_eq!(
            kinds,
            vec![EventKind::New, EventKind::Update, EventKind::Destroy]
        );
        assert_eq!(batch.events, 3);
    }

    #[test]
    fn truncated_datagrams_are_counted_not_fatal() {
        let buf = message(IPCTNL_MSG_CT_NEW, NLM_F_CREATE);
        for cut in 1..buf.len() {
            let mut batch = Batch::default();
            decode_datagram(
                &buf[..cut],
                &mut Conntrack::default(),
                &mut batch,
                &mut |_, _, _| {},
            );
            assert_eq!(batch.events, 0);
            assert!(batch.malformed >= 1, "cut at {cut}");
        }
    }

    #[test]
    fn event_mask_parses_like_conntrack() {
        assert_eq!(
            EventMask::parse("NEW,destroy"),
            Ok(EventMask {
                new: true,
                update: false,
                destroy: true
            })
        );
        assert_eq!(EventMask::parse("ALL"), Ok(EventMask::default()));
        assert_eq!(
            EventMask::parse("n,UPDATES"),
            EventMask::parse("NEW,UPDATE")
        );
        assert!(EventMask::parse("OPEN").is_err());
        assert!(EventMask::parse("").is_err());
    }
}
