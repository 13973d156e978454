//! ctchurn: creates new conntrack entries as fast as asked, in the current
//! network namespace, with loopback traffic only (127.0.0.0/8 or ::1).
//!
//! UDP: one datagram per new tuple, sent with `sendmmsg` in batches from a
//! few sockets bound to different 127.x source addresses; each socket walks a
//! range of destination ports. TCP: real handshakes to a listener of our own
//! (connect, a few bytes, close), many in flight on one epoll loop.
//!
//! Tuples are distinct within one run. UDP sockets get ephemeral source ports
//! and TCP flows walk the same source ports every run, so a second run in the
//! same namespace should use another `--src-base` to be sure of new tuples
//! (the benchmark does).
//!
//! Ends with one line on stderr: `ctchurn: N flows in S s (R flows/s)`.
//! Exit status 1 when flows could not be created (after saying why), 2 on
//! bad options.
use std::{
    io, mem,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, ValueEnum};
use socket2::{Domain, Protocol, Socket, Type};

/// The payload of every datagram and connection.
const PAYLOAD: &[u8] = b"ctchurn\n";
/// sendmmsg takes at most UIO_MAXIOV (1024) messages per call.
const MAX_BATCH: usize = 1024;
/// Give up when nothing has moved for this long.
const STALL: Duration = Duration::from_secs(10);
/// Upper bound on UDP sockets, so a bad combination of options fails early
/// instead of running out of descriptors.
const MAX_UDP_SOCKETS: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Proto {
    Udp,
    Tcp,
}

/// Creates new conntrack entries (loopback traffic in the current netns).
#[derive(Parser, Debug)]
#[command(name = "ctchurn")]
struct Args {
    /// Protocol of the new flows.
    #[arg(long, value_enum, default_value = "udp")]
    proto: Proto,
    /// How many new flows (distinct tuples) to create.
    #[arg(long)]
    count: u64,
    /// New flows per second; as fast as possible when absent.
    #[arg(long)]
    rate: Option<f64>,
    /// First source address; the next --src-addrs addresses are used too.
    #[arg(long, default_value = "127.1.0.1")]
    src_base: IpAddr,
    /// How many source addresses (default 16, more for TCP when
    /// --count exceeds 16 x --sports).
    #[arg(long)]
    src_addrs: Option<u32>,
    /// TCP: first source port; flow i uses address i % src-addrs and port
    /// sport-base + i / src-addrs. (UDP sockets take ephemeral ports.)
    #[arg(long, default_value_t = 20000)]
    sport_base: u16,
    /// TCP: how many source ports each source address uses at most.
    #[arg(long, default_value_t = 40000)]
    sports: u32,
    /// Destination address (loopback only).
    #[arg(long, default_value = "127.0.0.1")]
    dst: IpAddr,
    /// First destination port (UDP), or the listener's port (TCP).
    #[arg(long, default_value_t = 10000)]
    dport_base: u16,
    /// How many destination ports a UDP socket walks (capped at 65535).
    #[arg(long, default_value_t = 50000)]
    dports: u32,
    /// UDP datagrams per sendmmsg call (1..=1024).
    #[arg(long, default_value_t = 512)]
    batch: usize,
    /// TCP connections in flight at once.
    #[arg(long, default_value_t = 256)]
    inflight: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(err) = check(&args) {
        eprintln!("ctchurn: {err:#}");
        return ExitCode::from(2);
    }
    let start = Instant::now();
    let result = match args.proto {
        Proto::Udp => udp(&args, start),
        Proto::Tcp => tcp(&args, start),
    };
    match result {
        Ok(flows) => {
            report(flows, start.elapsed());
            ExitCode::SUCCESS
        }
        Err(Failure { flows, err }) => {
            eprintln!("ctchurn: {err:#}");
            report(flows, start.elapsed());
            ExitCode::FAILURE
        }
    }
}

fn report(flows: u64, elapsed: Duration) {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { flows as f64 / secs } else { 0.0 };
    eprintln!("ctchurn: {flows} flows in {secs:.3} s ({rate:.0} flows/s)");
}

/// An error after `flows` flows were created.
struct Failure {
    flows: u64,
    err: anyhow::Error,
}

trait AtFlows<T> {
    fn at(self, flows: u64) -> std::result::Result<T, Failure>;
}

impl<T> AtFlows<T> for Result<T> {
    fn at(self, flows: u64) -> std::result::Result<T, Failure> {
        self.map_err(|err| Failure { flows, err })
    }
}

fn check(args: &Args) -> Result<()> {
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    if let Some(rate) = args.rate
        && !(rate.is_finite() && rate > 0.0)
    {
        bail!("--rate must be a positive number of flows per second");
    }
    if !(1..=MAX_BATCH).contains(&args.batch) {
        bail!("--batch must be within 1..={MAX_BATCH}");
    }
    if args.inflight == 0 {
        bail!("--inflight must be at least 1");
    }
    if args.dports == 0 {
        bail!("--dports must be at least 1");
    }
    if !args.dst.is_loopback() {
        bail!(
            "--dst {} is not a loopback address: ctchurn sends only to 127.0.0.0/8 or ::1",
            args.dst
        );
    }
    if args.src_base.is_ipv4() != args.dst.is_ipv4() {
        bail!("--src-base and --dst must be of the same family");
    }
    let addrs = src_addrs(args);
    if addrs == 0 {
        bail!("--src-addrs must be at least 1");
    }
    if args.proto == Proto::Tcp {
        let sports = u64::from(args.sports.min(65_536 - u32::from(args.sport_base)));
        if args.count.div_ceil(u64::from(addrs)) > sports {
            bail!(
                "{} TCP flows from {addrs} addresses need more than {sports} source ports each: raise --src-addrs or --sports",
                args.count
            );
        }
    }
    // Both ends of the range must stay inside the loopback range.
    for k in [0, addrs - 1] {
        let addr = nth_addr(args.src_base, k)?;
        if !addr.is_loopback() {
            bail!("source address {addr} is not a loopback address");
        }
    }
    Ok(())
}

/// The number of source addresses this run uses.
fn src_addrs(args: &Args) -> u32 {
    if let Some(n) = args.src_addrs {
        return n;
    }
    if args.src_base.is_ipv6() {
        // ::1 is the only IPv6 loopback address.
        return 1;
    }
    match args.proto {
        Proto::Udp => 16,
        Proto::Tcp => u32::try_from(args.count.div_ceil(u64::from(args.sports.max(1))))
            .unwrap_or(u32::MAX)
            .max(16),
    }
}

/// The `k`-th address after `base`.
fn nth_addr(base: IpAddr, k: u32) -> Result<IpAddr> {
    match base {
        IpAddr::V4(v4) => u32::from(v4)
            .checked_add(k)
            .map(|a| IpAddr::V4(Ipv4Addr::from(a)))
            .context("source address range overflows"),
        IpAddr::V6(v6) => u128::from(v6)
            .checked_add(u128::from(k))
            .map(|a| IpAddr::V6(Ipv6Addr::from(a)))
            .context("source address range overflows"),
    }
}

/// Paces flow starts at `--rate`; unlimited without it.
struct Pacer {
    start: Instant,
    rate: Option<f64>,
}

impl Pacer {
    /// How many flows may have started by now.
    fn allowed(&self) -> u64 {
        match self.rate {
            None => u64::MAX,
            // Saturating float-to-int cast; the +1 lets the first flow go at t=0.
            Some(rate) => (self.start.elapsed().as_secs_f64() * rate) as u64 + 1,
        }
    }

    /// Sleeps until `flows` flows in all are allowed.
    fn wait_for(&self, flows: u64) {
        if let Some(rate) = self.rate {
            let due = self.start + Duration::from_secs_f64(flows.saturating_sub(1) as f64 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
    }

    /// Time until the next flow is allowed (at most `cap`).
    fn until_next(&self, started: u64, cap: Duration) -> Duration {
        match self.rate {
            None => cap,
            Some(rate) => {
                let due = self.start + Duration::from_secs_f64(started as f64 / rate);
                due.saturating_duration_since(Instant::now()).min(cap)
            }
        }
    }
}

// ---------------------------------------------------------------- UDP

/// One UDP socket and the destination ports it still has to send to.
struct UdpSource {
    socket: UdpSocket,
    local: SocketAddr,
    next_dport: u32,
    end_dport: u32,
}

fn udp(args: &Args, start: Instant) -> std::result::Result<u64, Failure> {
    let dports = u64::from(args.dports.min(65_536 - u32::from(args.dport_base)));
    if dports == 0 {
        return Err(anyhow::anyhow!("--dport-base leaves no destination port")).at(0);
    }
    let addrs = u64::from(src_addrs(args));
    // Enough sockets for every flow to have its own (source, dport) pair, and
    // at least one per source address.
    let nsockets = args.count.div_ceil(dports).max(addrs).min(args.count);
    if nsockets > MAX_UDP_SOCKETS as u64 {
        return Err(anyhow::anyhow!(
            "{} flows over {dports} destination ports need {nsockets} sockets (limit {MAX_UDP_SOCKETS}): raise --dports",
            args.count
        ))
        .at(0);
    }
    let per_socket = args.count.div_ceil(nsockets);
    let mut sources = Vec::new();
    let mut assigned = 0u64;
    for k in 0..nsockets {
        let flows = per_socket.min(args.count - assigned);
        if flows == 0 {
            break;
        }
        assigned += flows;
        let addr = nth_addr(args.src_base, (k % addrs) as u32).at(0)?;
        let socket = UdpSocket::bind(SocketAddr::new(addr, 0))
            .with_context(|| format!("cannot bind a UDP socket to {addr}"))
            .at(0)?;
        let local = socket.local_addr().context("getsockname").at(0)?;
        let first = u32::from(args.dport_base);
        sources.push(UdpSource {
            socket,
            local,
            next_dport: first,
            end_dport: first + flows as u32,
        });
    }

    let pacer = Pacer {
        start,
        rate: args.rate,
    };
    // With a rate, smaller batches keep the pace even (about 200 calls/s).
    let batch = match args.rate {
        Some(rate) => ((rate / 200.0) as usize).clamp(1, args.batch),
        None => args.batch,
    };
    let mut sent = 0u64;
    let mut sender = BatchSender::new(args.dst, batch);
    // Round robin over the sockets, one batch each.
    while sent < args.count {
        let mut progressed = false;
        for source in &mut sources {
            if source.next_dport >= source.end_dport {
                continue;
            }
            let room = (source.end_dport - source.next_dport) as usize;
            let n = room.min(batch);
            pacer.wait_for(sent + n as u64);
            let done = sender
                .send(&source.socket, source.next_dport, n)
                .with_context(|| {
                    format!(
                        "sendmmsg from {} to {} failed after {sent} flows",
                        source.local, args.dst
                    )
                })
                .at(sent)?;
            source.next_dport += done as u32;
            sent += done as u64;
            progressed = true;
        }
        if !progressed {
            break;
        }
    }
    Ok(sent)
}

/// Reusable sendmmsg buffers: one destination and one iovec per message.
struct BatchSender {
    dst: IpAddr,
    names4: Vec<libc::sockaddr_in>,
    names6: Vec<libc::sockaddr_in6>,
    iovecs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
}

impl BatchSender {
    fn new(dst: IpAddr, batch: usize) -> Self {
        // SAFETY: these are plain C structs for which all-zero is valid.
        let zero_in: libc::sockaddr_in = unsafe { mem::zeroed() };
        let zero_in6: libc::sockaddr_in6 = unsafe { mem::zeroed() };
        let zero_msg: libc::mmsghdr = unsafe { mem::zeroed() };
        let iov = libc::iovec {
            iov_base: PAYLOAD.as_ptr().cast_mut().cast(),
            iov_len: PAYLOAD.len(),
        };
        Self {
            dst,
            names4: vec![zero_in; batch],
            names6: vec![zero_in6; batch],
            iovecs: vec![iov; batch],
            msgs: vec![zero_msg; batch],
        }
    }

    /// Sends one datagram to each of `n` consecutive ports from `first_dport`;
    /// returns how many went out. Retries transient errors for a while.
    fn send(&mut self, socket: &UdpSocket, first_dport: u32, n: usize) -> Result<usize> {
        let n = n.min(self.msgs.len());
        for i in 0..n {
            let port = (first_dport as usize + i) as u16;
            let (name, len): (*mut libc::c_void, usize) = match self.dst {
                IpAddr::V4(v4) => {
                    let sin = &mut self.names4[i];
                    sin.sin_family = libc::AF_INET as libc::sa_family_t;
                    sin.sin_port = port.to_be();
                    sin.sin_addr = libc::in_addr {
                        s_addr: u32::from(v4).to_be(),
                    };
                    (
                        std::ptr::from_mut(sin).cast(),
                        mem::size_of::<libc::sockaddr_in>(),
                    )
                }
                IpAddr::V6(v6) => {
                    let sin6 = &mut self.names6[i];
                    sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                    sin6.sin6_port = port.to_be();
                    sin6.sin6_addr = libc::in6_addr {
                        s6_addr: v6.octets(),
                    };
                    (
                        std::ptr::from_mut(sin6).cast(),
                        mem::size_of::<libc::sockaddr_in6>(),
                    )
                }
            };
            let hdr = &mut self.msgs[i].msg_hdr;
            hdr.msg_name = name;
            hdr.msg_namelen = len as libc::socklen_t;
            hdr.msg_iov = std::ptr::from_mut(&mut self.iovecs[i]);
            hdr.msg_iovlen = 1;
        }
        let mut done = 0usize;
        let mut transient = 0u32;
        while done < n {
            // SAFETY: msgs[done..n] point into self's buffers, which outlive
            // the call; the count matches the slice.
            let r = unsafe {
                libc::sendmmsg(
                    socket.as_raw_fd(),
                    self.msgs[done..].as_mut_ptr(),
                    (n - done) as libc::c_uint,
                    0,
                )
            };
            if r >= 0 {
                done += r as usize;
                transient = 0;
                continue;
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => {}
                // A full socket or device queue: wait a little, a bounded
                // number of times.
                Some(libc::EAGAIN | libc::ENOBUFS) if transient < 1000 => {
                    transient += 1;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Some(libc::EPERM) => {
                    return Err(err).context(
                        "a netfilter hook dropped the packet (conntrack table full? see net.netfilter.nf_conntrack_max)",
                    );
                }
                _ => return Err(err.into()),
            }
        }
        Ok(done)
    }
}

// ---------------------------------------------------------------- TCP

/// epoll tags, in the top bits of the event data; the fd is in the low bits.
const TAG_LISTENER: u64 = 1 << 32;
const TAG_CLIENT: u64 = 2 << 32;
const TAG_SERVER: u64 = 3 << 32;

/// An epoll instance.
struct Epoll(OwnedFd);

impl Epoll {
    fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the fd is owned right away.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a new descriptor nobody else owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn add(&self, fd: RawFd, events: u32, tag: u64) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events,
            u64: tag | fd as u32 as u64,
        };
        // SAFETY: event is a valid epoll_event for the duration of the call.
        let r = unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn wait(&self, events: &mut [libc::epoll_event], timeout: Duration) -> io::Result<usize> {
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: events is a writable buffer of the given length.
        let r = unsafe {
            libc::epoll_wait(
                self.0.as_raw_fd(),
                events.as_mut_ptr(),
                i32::try_from(events.len()).unwrap_or(i32::MAX),
                ms,
            )
        };
        if r < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                return Ok(0);
            }
            return Err(err);
        }
        Ok(r as usize)
    }
}

/// Sockets by fd: the clients being connected and the accepted server ends.
#[derive(Default)]
struct Sockets {
    by_fd: Vec<Option<Socket>>,
}

impl Sockets {
    fn insert(&mut self, socket: Socket) -> RawFd {
        let fd = socket.as_raw_fd();
        let i = fd as usize;
        if self.by_fd.len() <= i {
            self.by_fd.resize_with(i + 1, || None);
        }
        self.by_fd[i] = Some(socket);
        fd
    }

    fn get(&self, fd: RawFd) -> Option<&Socket> {
        self.by_fd.get(fd as usize).and_then(Option::as_ref)
    }

    /// Closes (and so removes from epoll) the socket.
    fn remove(&mut self, fd: RawFd) {
        if let Some(slot) = self.by_fd.get_mut(fd as usize) {
            *slot = None;
        }
    }
}

fn tcp(args: &Args, start: Instant) -> std::result::Result<u64, Failure> {
    let domain = if args.dst.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let listen_addr = SocketAddr::new(args.dst, args.dport_base);
    let listener = Socket::new(domain, Type::STREAM.nonblocking(), Some(Protocol::TCP))
        .context("socket")
        .at(0)?;
    listener
        .set_reuse_address(true)
        .context("SO_REUSEADDR")
        .at(0)?;
    listener
        .bind(&listen_addr.into())
        .with_context(|| format!("cannot listen on {listen_addr}"))
        .at(0)?;
    listener.listen(4096).context("listen").at(0)?;

    let epoll = Epoll::new().context("epoll_create1").at(0)?;
    epoll
        .add(listener.as_raw_fd(), libc::EPOLLIN as u32, TAG_LISTENER)
        .context("epoll_ctl")
        .at(0)?;

    let addrs = src_addrs(args);
    let pacer = Pacer {
        start,
        rate: args.rate,
    };
    let mut sockets = Sockets::default();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let (mut started, mut clients_done, mut servers_done, mut inflight) =
        (0u64, 0u64, 0u64, 0usize);
    let mut last_progress = Instant::now();

    while clients_done < args.count || servers_done < args.count {
        // Start what the pace and the in-flight limit allow.
        let allowed = pacer.allowed().min(args.count);
        while started < allowed && inflight < args.inflight {
            // Explicit source ports: the kernel's search for a free ephemeral
            // port slows down badly once most are held in TIME_WAIT, and
            // past tcp_max_tw_buckets it could hand out a port again (and so
            // an old tuple).
            let src =
                nth_addr(args.src_base, (started % u64::from(addrs)) as u32).at(clients_done)?;
            let sport = u64::from(args.sport_base) + started / u64::from(addrs);
            let src = SocketAddr::new(src, sport as u16);
            let client = connect_from(domain, src, listen_addr).at(clients_done)?;
            let fd = sockets.insert(client);
            epoll
                .add(fd, libc::EPOLLOUT as u32, TAG_CLIENT)
                .context("epoll_ctl")
                .at(clients_done)?;
            started += 1;
            inflight += 1;
            last_progress = Instant::now();
        }

        let timeout = if started < args.count && inflight < args.inflight {
            pacer.until_next(started, Duration::from_millis(100))
        } else {
            Duration::from_millis(100)
        };
        let n = epoll
            .wait(&mut events, timeout)
            .context("epoll_wait")
            .at(clients_done)?;
        for event in &events[..n] {
            let tag = event.u64 & !0xffff_ffff;
            let fd = (event.u64 & 0xffff_ffff) as RawFd;
            match tag {
                TAG_LISTENER => loop {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            conn.set_nonblocking(true)
                                .context("O_NONBLOCK")
                                .at(clients_done)?;
                            let fd = sockets.insert(conn);
                            epoll
                                .add(fd, libc::EPOLLIN as u32, TAG_SERVER)
                                .context("epoll_ctl")
                                .at(clients_done)?;
                        }
                        Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                        Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                        Err(err) => return Err(err).context("accept").at(clients_done),
                    }
                },
                TAG_CLIENT => {
                    let Some(client) = sockets.get(fd) else {
                        continue;
                    };
                    match client.take_error() {
                        Ok(None) => {}
                        Ok(Some(err)) | Err(err) => {
                            let local = client
                                .local_addr()
                                .ok()
                                .and_then(|a| a.as_socket())
                                .map_or_else(|| "?".to_owned(), |a| a.to_string());
                            return Err(err)
                                .with_context(|| {
                                    format!("connect from {local} to {listen_addr} failed")
                                })
                                .at(clients_done);
                        }
                    }
                    // A few bytes, then close: the FIN goes out after them.
                    match client.send(PAYLOAD) {
                        Ok(_) => {}
                        Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(err) => return Err(err).context("send").at(clients_done),
                    }
                    sockets.remove(fd);
                    inflight -= 1;
                    clients_done += 1;
                    last_progress = Instant::now();
                }
                TAG_SERVER => {
                    let Some(conn) = sockets.get(fd) else {
                        continue;
                    };
                    let mut buf = [mem::MaybeUninit::<u8>::uninit(); 256];
                    loop {
                        match conn.recv(&mut buf) {
                            Ok(0) => {
                                sockets.remove(fd);
                                servers_done += 1;
                                last_progress = Instant::now();
                                break;
                            }
                            Ok(_) => {}
                            Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                            // The client is gone either way; the flow exists.
                            Err(_) => {
                                sockets.remove(fd);
                                servers_done += 1;
                                last_progress = Instant::now();
                                break;
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        if last_progress.elapsed() > STALL {
            return Err(anyhow::anyhow!(
                "no progress for {} s ({clients_done} connections done, {servers_done} accepted and closed, {inflight} in flight)",
                STALL.as_secs()
            ))
            .at(clients_done);
        }
    }
    Ok(clients_done)
}

/// A nonblocking TCP socket bound to `src`, connecting to `dst`.
fn connect_from(domain: Domain, src: SocketAddr, dst: SocketAddr) -> Result<Socket> {
    let socket =
        Socket::new(domain, Type::STREAM.nonblocking(), Some(Protocol::TCP)).context("socket")?;
    socket.bind(&src.into()).with_context(|| {
        format!("cannot bind a TCP socket to {src} (in TIME_WAIT from an earlier run? use another --src-base)")
    })?;
    match socket.connect(&dst.into()) {
        Ok(()) => {}
        Err(err) if err.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(err) => return Err(err).with_context(|| format!("connect from {src} to {dst}")),
    }
    Ok(socket)
}
