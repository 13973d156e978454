//! A ctnetlink request socket: dumps (zeroing counters or not), get,
//! create, update, delete, flush, statistics.
use std::io;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use super::{
    IPCTNL_MSG_CT_DELETE, IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_GET_CTRZERO, IPCTNL_MSG_CT_GET_DYING,
    IPCTNL_MSG_CT_GET_STATS, IPCTNL_MSG_CT_GET_STATS_CPU, IPCTNL_MSG_CT_GET_UNCONFIRMED,
    IPCTNL_MSG_CT_NEW,
    codec::{self, CodecError, StatsCpu},
    ct_msg_type, messages, set_rcvbuf,
};
use crate::ct::Conntrack;

const NLM_F_REQUEST: u16 = 0x1;
pub(super) const NLM_F_ACK: u16 = 0x4;
pub(super) const NLM_F_EXCL: u16 = 0x200;
pub(super) const NLM_F_CREATE: u16 = 0x400;
pub(super) const NLM_F_DUMP: u16 = 0x300;
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;
/// nfgenmsg versions.
const NFNETLINK_V0: u8 = 0;
const NFNETLINK_V1: u8 = 1;

/// The receive buffer: larger than the biggest skb a dump sends (32 KiB).
const RECV_BUF: usize = 256 * 1024;
/// Socket receive buffer asked of the kernel (SO_RCVBUFFORCE as root).
const SO_RCVBUF_BYTES: usize = 8 * 1024 * 1024;
/// Dump restarts after ENOBUFS before giving up.
const MAX_RESTARTS: u32 = 3;

/// What went wrong talking to ctnetlink.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The kernel refused for lack of privilege.
    #[error("{op}: operation not permitted: needs root or CAP_NET_ADMIN")]
    PermissionDenied {
        /// What was being done.
        op: &'static str,
    },
    /// The kernel answered with an error.
    #[error("{op}: {source}")]
    Kernel {
        /// What was being done.
        op: &'static str,
        /// The errno, as an io::Error.
        source: io::Error,
    },
    /// A socket call failed.
    #[error("netlink socket: {op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The error.
        source: io::Error,
    },
    /// A message could not be decoded.
    #[error("ctnetlink: {0}")]
    Codec(#[from] CodecError),
    /// nfnetlink knows no conntrack subsystem: nf_conntrack_netlink is not
    /// built in, not loaded, and could not be loaded on demand.
    #[error(
        "ctnetlink is not available: this kernel has no nf_conntrack_netlink and could not load it (try: modprobe nf_conntrack_netlink)"
    )]
    NoCtnetlink,
    /// The caller asked to stop a dump early (not an error for callers of
    /// [`CtSocket::dump`]).
    #[error("dump stopped")]
    Stopped,
}

impl NetlinkError {
    fn kernel(op: &'static str, errno: i32) -> Self {
        if errno == libc::EPERM || errno == libc::EACCES {
            Self::PermissionDenied { op }
        } else {
            Self::Kernel {
                op,
                source: io::Error::from_raw_os_error(errno),
            }
        }
    }

    /// The errno the kernel answered with, if it did.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Kernel { source, .. } | Self::Io { source, .. } => source.raw_os_error(),
            Self::PermissionDenied { .. } => Some(libc::EPERM),
            Self::NoCtnetlink => Some(libc::EINVAL),
            Self::Codec(_) | Self::Stopped => None,
        }
    }
}

/// `recv` on a raw netlink fd, retrying EINTR.
fn recv_fd(fd: i32, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: buf is a valid writable slice of buf.len() bytes.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n >= 0 {
            return Ok((n as usize).min(buf.len()));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Whether a datagram holds the end (DONE or an error) of reply `seq`; a
/// malformed one ends it too.
fn ends_reply(buf: &[u8], seq: u32) -> bool {
    messages(buf).any(|m| {
        m.map_or(true, |packet| {
            packet.sequence_number() == seq
                && matches!(packet.message_type(), NLMSG_DONE | NLMSG_ERROR)
        })
    })
}

/// Hands the messages of one datagram that answer `seq` to `on_msg`.
/// Returns true when the reply is complete (DONE, ACK, or the one answer
/// of a plain request).
fn process_datagram(
    buf: &[u8],
    seq: u32,
    op: &'static str,
    flags: u16,
    on_msg: &mut impl FnMut(u16, &[u8]) -> Result<(), NetlinkError>,
) -> Result<bool, NetlinkError> {
    let is_dump = flags & NLM_F_DUMP == NLM_F_DUMP;
    for packet in messages(buf) {
        let packet = packet?;
        if packet.sequence_number() != seq {
            continue;
        }
        match packet.message_type() {
            NLMSG_NOOP | NLMSG_OVERRUN => {}
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = packet
                    .payload()
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .map(i32::from_ne_bytes)
                    .ok_or(CodecError::Truncated("nlmsgerr"))?;
                if errno == 0 {
                    return Ok(true);
                }
                return Err(NetlinkError::kernel(op, -errno));
            }
            t => {
                on_msg(t, packet.payload())?;
                if !is_dump && flags & NLM_F_ACK == 0 {
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
}

/// What a dump saw besides the entries.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DumpSummary {
    /// Entries handed to the callback.
    pub entries: u64,
    /// Messages that could not be decoded (skipped, not fatal).
    pub malformed: u64,
    /// Times the dump was restarted after the socket overran.
    pub restarts: u32,
}

/// A socket for ctnetlink requests (no multicast groups joined, so the
/// kernel never drops dump messages: it pauses the dump until we read).
pub struct CtSocket {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
    rcvbuf: usize,
    fault_enobufs_after: Option<u64>,
    received: u64,
    /// The nfgenmsg version of the next requests (NFNETLINK_V0 but for a
    /// family flush).
    version: u8,
}

impl CtSocket {
    /// Opens a ctnetlink socket in the current network namespace.
    pub fn open() -> Result<Self, NetlinkError> {
        Self::open_with(SO_RCVBUF_BYTES)
    }

    fn open_with(rcvbuf: usize) -> Result<Self, NetlinkError> {
        let io = |op| move |source| NetlinkError::Io { op, source };
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(io("socket"))?;
        socket.bind_auto().map_err(io("bind"))?;
        // Best effort: a larger buffer lets the kernel fill whole 32 KiB
        // skbs; a dump works with the default one too.
        let _ = set_rcvbuf(std::os::fd::AsRawFd::as_raw_fd(&socket), rcvbuf);
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(io("connect"))?;
        Ok(Self {
            socket,
            seq: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as u32)
                .unwrap_or(1),
            buf: vec![0; RECV_BUF],
            rcvbuf,
            fault_enobufs_after: crate::fault::dump_enobufs_after(),
            received: 0,
            version: NFNETLINK_V0,
        })
    }

    fn send(
        &mut self,
        msg_type: u16,
        flags: u16,
        family: u8,
        attrs: &[u8],
    ) -> Result<u32, NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let len = 16 + 4 + attrs.len();
        let mut req = Vec::with_capacity(len);
        req.extend_from_slice(&(len as u32).to_ne_bytes());
        req.extend_from_slice(&msg_type.to_ne_bytes());
        req.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
        req.extend_from_slice(&self.seq.to_ne_bytes());
        req.extend_from_slice(&0u32.to_ne_bytes());
        req.extend_from_slice(&[family, self.version, 0, 0]);
        req.extend_from_slice(attrs);
        loop {
            match self.socket.send(&req, 0) {
                Ok(_) => return Ok(self.seq),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(NetlinkError::Io { op: "send", source }),
            }
        }
    }

    /// Receives one datagram; EINTR is retried. Returns its length.
    fn recv(&mut self) -> io::Result<usize> {
        self.received += 1;
        if self.fault_enobufs_after.is_some_and(|n| self.received > n) {
            self.fault_enobufs_after = None;
            return Err(io::Error::from_raw_os_error(libc::ENOBUFS));
        }
        loop {
            let mut slice = &mut self.buf[..];
            match self.socket.recv(&mut slice, 0) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(n) => return Ok(n.min(self.buf.len())),
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs a request and hands every reply message (payload after the
    /// netlink header) to `on_msg`, until DONE or the ACK.
    pub(super) fn transact(
        &mut self,
        op: &'static str,
        msg_type: u16,
        flags: u16,
        family: u8,
        attrs: &[u8],
        on_msg: impl FnMut(u16, &[u8]) -> Result<(), NetlinkError>,
    ) -> Result<(), NetlinkError> {
        let result = self.transact_once(op, msg_type, flags, family, attrs, on_msg);
        self.explained(result)
    }

    /// Asks for the per-CPU statistics, which ctnetlink has answered
    /// without parameters for over a decade. Sending it makes the kernel load
    /// nf_conntrack_netlink (and with it nf_conntrack) if it can; an EINVAL
    /// answer means there is no ctnetlink at all.
    pub fn probe(&mut self) -> Result<(), NetlinkError> {
        match self.transact_once(
            "probe",
            ct_msg_type(IPCTNL_MSG_CT_GET_STATS_CPU),
            NLM_F_DUMP,
            0,
            &[],
            |_, _| Ok(()),
        ) {
            Err(e) if e.errno() == Some(libc::EINVAL) => Err(NetlinkError::NoCtnetlink),
            other => other,
        }
    }

    /// nfnetlink answers EINVAL both to a request it finds invalid and to
    /// every request when ctnetlink is missing; a probe tells them apart.
    fn explained(&mut self, result: Result<(), NetlinkError>) -> Result<(), NetlinkError> {
        match result {
            Err(e) if e.errno() == Some(libc::EINVAL) => match self.probe() {
                Err(NetlinkError::NoCtnetlink) => Err(NetlinkError::NoCtnetlink),
                _ => Err(e),
            },
            other => other,
        }
    }

    fn transact_once(
        &mut self,
        op: &'static str,
        msg_type: u16,
        flags: u16,
        family: u8,
        attrs: &[u8],
        mut on_msg: impl FnMut(u16, &[u8]) -> Result<(), NetlinkError>,
    ) -> Result<(), NetlinkError> {
        let seq = self.send(msg_type, flags, family, attrs)?;
        loop {
            let n = self
                .recv()
                .map_err(|source| NetlinkError::Io { op, source })?;
            // Moved out so `on_msg` may borrow self's buffer immutably.
            let buf = std::mem::take(&mut self.buf);
            let result = process_datagram(&buf[..n], seq, op, flags, &mut on_msg);
            self.buf = buf;
            if result? {
                return Ok(());
            }
        }
    }

    /// Like [`Self::transact`] for dumps, with the receiving on a second
    /// thread: the kernel fills the next datagrams (its dump work runs in
    /// our recvmsg) while this thread decodes and formats the last ones.
    fn transact_pipelined(
        &mut self,
        op: &'static str,
        msg_type: u16,
        family: u8,
        attrs: &[u8],
        on_msg: impl FnMut(u16, &[u8]) -> Result<(), NetlinkError>,
    ) -> Result<(), NetlinkError> {
        let result = self.transact_pipelined_once(op, msg_type, family, attrs, on_msg);
        self.explained(result)
    }

    fn transact_pipelined_once(
        &mut self,
        op: &'static str,
        msg_type: u16,
        family: u8,
        attrs: &[u8],
        mut on_msg: impl FnMut(u16, &[u8]) -> Result<(), NetlinkError>,
    ) -> Result<(), NetlinkError> {
        let seq = self.send(msg_type, NLM_F_DUMP, family, attrs)?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.socket);
        let mut fault = self.fault_enobufs_after.take();
        std::thread::scope(|scope| {
            let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(4);
            let (empty_tx, empty_rx) = std::sync::mpsc::channel::<Vec<u8>>();
            scope.spawn(move || {
                let mut count = 0u64;
                loop {
                    let mut buf = empty_rx.try_recv().unwrap_or_default();
                    buf.resize(RECV_BUF, 0);
                    count += 1;
                    let received = if fault.is_some_and(|n| count > n) {
                        fault = None;
                        Err(io::Error::from_raw_os_error(libc::ENOBUFS))
                    } else {
                        recv_fd(fd, &mut buf)
                    };
                    match received {
                        Ok(n) => {
                            buf.truncate(n);
                            let end = ends_reply(&buf, seq);
                            // A closed channel: the consumer stopped early.
                            if full_tx.send(Ok(buf)).is_err() || end {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = full_tx.send(Err(e));
                            return;
                        }
                    }
                }
            });
            for received in full_rx.iter() {
                let buf = received.map_err(|source| NetlinkError::Io { op, source })?;
                if process_datagram(&buf, seq, op, NLM_F_DUMP, &mut on_msg)? {
                    return Ok(());
                }
                let _ = empty_tx.send(buf);
            }
            Err(CodecError::Truncated("dump ended without NLMSG_DONE").into())
        })
    }

    /// Dumps the table (`family` 0: IPv4 and IPv6), handing each entry to
    /// `on_entry`, which returns false to stop early. `attrs` are
    /// kernel-side filters (mark, zone, status).
    ///
    /// If the socket overruns mid-dump (ENOBUFS: the kernel could not queue
    /// a dump message, e.g. under memory pressure), the dump restarts on a
    /// fresh socket and entries already handed out are skipped by id, so
    /// the result is complete and has no duplicates. That costs 4 bytes per
    /// entry for the ids; nothing else grows with the table.
    pub fn dump(
        &mut self,
        family: u8,
        attrs: &[u8],
        on_entry: impl FnMut(&Conntrack) -> bool,
    ) -> Result<DumpSummary, NetlinkError> {
        self.dump_as(IPCTNL_MSG_CT_GET, family, attrs, on_entry)
    }

    /// [`Self::dump`] that also zeroes the counters of every entry the
    /// kernel dumps, once it has read them (`conntrack -L -z`): each entry
    /// shows its counters as they were. After a restart (ENOBUFS) the
    /// entries already shown are dumped (and zeroed) again but skipped.
    pub fn dump_zeroing(
        &mut self,
        family: u8,
        attrs: &[u8],
        on_entry: impl FnMut(&Conntrack) -> bool,
    ) -> Result<DumpSummary, NetlinkError> {
        self.dump_as(IPCTNL_MSG_CT_GET_CTRZERO, family, attrs, on_entry)
    }

    /// Dumps the dying list: entries on their way out whose DESTROY event
    /// is not delivered yet (since 6.2 the only entries kept there). No
    /// kernel-side filters, as conntrack sends none.
    pub fn dump_dying(
        &mut self,
        family: u8,
        on_entry: impl FnMut(&Conntrack) -> bool,
    ) -> Result<DumpSummary, NetlinkError> {
        self.dump_as(IPCTNL_MSG_CT_GET_DYING, family, &[], on_entry)
    }

    /// Dumps the unconfirmed list. Since 6.1 (the per-CPU unconfirmed
    /// lists are gone) ctnetlink_dump_unconfirmed answers with nothing.
    pub fn dump_unconfirmed(
        &mut self,
        family: u8,
        on_entry: impl FnMut(&Conntrack) -> bool,
    ) -> Result<DumpSummary, NetlinkError> {
        self.dump_as(IPCTNL_MSG_CT_GET_UNCONFIRMED, family, &[], on_entry)
    }

    fn dump_as(
        &mut self,
        msg: u8,
        family: u8,
        attrs: &[u8],
        mut on_entry: impl FnMut(&Conntrack) -> bool,
    ) -> Result<DumpSummary, NetlinkError> {
        let mut summary = DumpSummary::default();
        let mut ct = Conntrack::default();
        let mut seen: Vec<u32> = Vec::new();
        let mut skip: Option<std::collections::HashSet<u32>> = None;
        loop {
            let msg_type = ct_msg_type(msg);
            let result = self.transact_pipelined("dump", msg_type, family, attrs, |_, payload| {
                let Ok((head, body)) = codec::split_nfgenmsg(payload) else {
                    summary.malformed += 1;
                    return Ok(());
                };
                if codec::decode_conntrack(head.family, body, &mut ct).is_err() {
                    summary.malformed += 1;
                    return Ok(());
                }
                if let (Some(skip), Some(id)) = (&skip, ct.id)
                    && skip.contains(&id)
                {
                    return Ok(());
                }
                if let Some(id) = ct.id {
                    seen.push(id);
                }
                summary.entries += 1;
                if on_entry(&ct) {
                    Ok(())
                } else {
                    Err(NetlinkError::Stopped)
                }
            });
            match result {
                Ok(()) | Err(NetlinkError::Stopped) => return Ok(summary),
                Err(e) if e.errno() == Some(libc::ENOBUFS) && summary.restarts < MAX_RESTARTS => {
                    summary.restarts += 1;
                    // The old socket may still hold a running dump (EBUSY).
                    let rcvbuf = self.rcvbuf.saturating_mul(2);
                    *self = Self::open_with(rcvbuf)?;
                    self.fault_enobufs_after = None;
                    skip = Some(seen.iter().copied().collect());
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Gets one entry by tuple; `None` when there is no such entry.
    pub fn get(&mut self, family: u8, attrs: &[u8]) -> Result<Option<Conntrack>, NetlinkError> {
        let mut found = None;
        let result = self.transact(
            "get",
            ct_msg_type(IPCTNL_MSG_CT_GET),
            0,
            family,
            attrs,
            |_, payload| {
                let (head, body) = codec::split_nfgenmsg(payload)?;
                let mut ct = Conntrack::default();
                codec::decode_conntrack(head.family, body, &mut ct)?;
                found = Some(ct);
                Ok(())
            },
        );
        Ok(if exists(result)? { found } else { None })
    }

    /// Deletes one entry by tuple (and id, when given in `attrs`).
    /// Returns false when it was already gone.
    pub fn delete(&mut self, family: u8, attrs: &[u8]) -> Result<bool, NetlinkError> {
        exists(self.transact(
            "delete",
            ct_msg_type(IPCTNL_MSG_CT_DELETE),
            NLM_F_ACK,
            family,
            attrs,
            |_, _| Ok(()),
        ))
    }

    /// Creates an entry (`attrs`: both tuples and what to set). The kernel
    /// answers EEXIST when the original tuple is taken.
    pub fn create(&mut self, family: u8, attrs: &[u8]) -> Result<(), NetlinkError> {
        self.transact(
            "create",
            ct_msg_type(IPCTNL_MSG_CT_NEW),
            NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK,
            family,
            attrs,
            |_, _| Ok(()),
        )
    }

    /// Updates the entry that `attrs`' original tuple (and zone) names:
    /// without NLM_F_CREATE, ctnetlink_new_conntrack changes an existing
    /// entry and creates none. Returns false when there is no such entry.
    pub fn update(&mut self, family: u8, attrs: &[u8]) -> Result<bool, NetlinkError> {
        exists(self.transact(
            "update",
            ct_msg_type(IPCTNL_MSG_CT_NEW),
            NLM_F_ACK,
            family,
            attrs,
            |_, _| Ok(()),
        ))
    }

    /// Flushes the table (`family` 0: all families).
    pub fn flush(&mut self, family: u8) -> Result<(), NetlinkError> {
        // ctnetlink_del_conntrack (since 4.19) flushes only `family` when
        // the request says NFNETLINK_V1, as conntrack -F -f does; with V0
        // it flushes every family, for old programs that left it unset.
        self.version = if family == 0 {
            NFNETLINK_V0
        } else {
            NFNETLINK_V1
        };
        let flushed = self.transact(
            "flush",
            ct_msg_type(IPCTNL_MSG_CT_DELETE),
            NLM_F_ACK,
            family,
            &[],
            |_, _| Ok(()),
        );
        self.version = NFNETLINK_V0;
        flushed
    }

    /// Per-CPU statistics, one element per CPU.
    pub fn stats_cpu(&mut self) -> Result<Vec<StatsCpu>, NetlinkError> {
        let mut out = Vec::new();
        self.transact(
            "stats",
            ct_msg_type(IPCTNL_MSG_CT_GET_STATS_CPU),
            NLM_F_DUMP,
            0,
            &[],
            |_, payload| {
                out.push(codec::decode_stats_cpu(payload)?);
                Ok(())
            },
        )?;
        Ok(out)
    }

    /// Global statistics: (entries in the table, nf_conntrack_max).
    pub fn stats_global(&mut self) -> Result<(Option<u32>, Option<u32>), NetlinkError> {
        let mut out = (None, None);
        self.transact(
            "count",
            ct_msg_type(IPCTNL_MSG_CT_GET_STATS),
            0,
            0,
            &[],
            |_, payload| {
                out = codec::decode_stats_global(payload)?;
                Ok(())
            },
        )?;
        Ok(out)
    }
}

/// A request's outcome with the kernel's "no such entry" (ENOENT) as
/// `false` rather than an error.
pub(super) fn exists(result: Result<(), NetlinkError>) -> Result<bool, NetlinkError> {
    match result {
        Ok(()) => Ok(true),
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}
