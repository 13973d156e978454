//! Making the table's entries: the varied table's ruleset, real flows from
//! local sockets, `conntrack -I` entries, and bursts of new UDP flows.

use std::{
    io::ErrorKind,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{FromRawFd, OwnedFd},
    thread,
    time::{Duration, Instant},
};

/// The rules behind the varied table: zones, marks, a dropped port (for
/// SYN_SENT), DNAT and SNAT.
pub const VARIED_RULESET: &str = "
table inet ctscope_vary {
    chain raw_out {
        type filter hook output priority raw; policy accept;
        udp dport 6000 ct zone set 7
        udp sport 6000 ct zone set 7
        udp dport 6003 ct original zone set 8
    }
    chain input {
        type filter hook input priority filter; policy accept;
        tcp dport 9 drop
    }
    chain output {
        type filter hook output priority filter; policy accept;
        udp dport 6001 meta mark set 0x2a ct mark set meta mark
        udp dport 6002 ct mark set 0x1234
    }
}
table ip ctscope_nat {
    chain out {
        type nat hook output priority -100; policy accept;
        udp dport 5000 dnat to 127.0.0.2:5001
    }
    chain post {
        type nat hook postrouting priority srcnat; policy accept;
        udp dport 5002 snat to 127.0.0.3
    }
}
";

/// Entries added with `conntrack -I ... -t 3600` ([`Netns::insert`](crate::Netns::insert)):
/// protocols, states, marks, zones and status bits that local traffic does
/// not easily give.
pub const INSERTED: &[&str] = &[
    "-p sctp -s 10.0.0.1 -d 10.0.0.2 --sport 1000 --dport 2000 --orig-vtag 1 --reply-vtag 2 \
     --state ESTABLISHED -u SEEN_REPLY",
    // Linux 6.16 removed DCCP tracking: the kernel keeps this as a generic
    // protocol-33 entry without ports, and conntrack prints sport=0 dport=0.
    "-p dccp -s 10.0.0.1 -d 10.0.0.2 --sport 1000 --dport 2000 --state OPEN --role client",
    "-p gre -s 10.0.0.1 -d 10.0.0.2 --srckey 1 --dstkey 2",
    "-p icmp -s 10.0.0.1 -d 10.0.0.2 --icmp-type 8 --icmp-code 0 --icmp-id 77",
    "-p icmp -s 10.0.0.1 -d 10.0.0.3 --icmp-type 13 --icmp-code 0 --icmp-id 78",
    "-p icmpv6 -s 2001:db8::1 -d 2001:db8::2 --icmpv6-type 128 --icmpv6-code 0 --icmpv6-id 79",
    "-p tcp -s 2001:db8::1 -d 2001:db8::2 --sport 1234 --dport 80 \
     --state ESTABLISHED -u ASSURED -m 99",
    "-p tcp -s 10.1.0.1 -d 10.1.0.2 --sport 1234 --dport 80 --state SYN_RECV -w 5",
    "-p udp -s 10.1.0.1 -d 10.1.0.2 --sport 53 --dport 53 --orig-zone 3",
    "-p udp -s 10.1.0.1 -d 10.1.0.2 --sport 54 --dport 53 --reply-zone 4",
    "-p udp -s 10.1.0.1 -d 10.1.0.2 --sport 56 --dport 53 -m 0x10ff",
    "-p udplite -s 10.1.0.9 -d 10.1.0.8 --sport 1 --dport 2",
    "-p tcp -s 10.4.0.1 -d 10.4.0.2 --sport 1111 --dport 22 --state FIN_WAIT -u SEEN_REPLY,ASSURED",
    "-p tcp -s 10.4.0.1 -d 10.4.0.2 --sport 1112 --dport 22 --state LAST_ACK -u SEEN_REPLY",
    // A reply tuple that differs from the inverted original, without the
    // NAT status bits: conntrack's -n/-g/-j must not call this NAT.
    "-p tcp -s 10.2.0.1 -d 10.2.0.2 --sport 1 --dport 2 -r 10.2.0.3 -q 10.2.0.1 \
     --reply-port-src 3 --reply-port-dst 1 --state ESTABLISHED",
];

/// Sockets kept open so their entries stay as they are.
#[derive(Default)]
pub struct Kept {
    udp: Vec<UdpSocket>,
    tcp: Vec<TcpStream>,
    listeners: Vec<TcpListener>,
    fds: Vec<OwnedFd>,
}

impl Kept {
    /// How many sockets are held.
    pub fn len(&self) -> usize {
        self.udp.len() + self.tcp.len() + self.listeners.len() + self.fds.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

const WAIT: Duration = Duration::from_secs(3);

fn udp(addr: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind udp {addr}: {e}"));
    s.set_read_timeout(Some(WAIT)).expect("set_read_timeout");
    s
}

/// One datagram from `src` (port 0: any) to `dst`, answered when `reply`;
/// the receiver listens on `listen` (differs from `dst` under DNAT).
fn udp_flow(kept: &mut Kept, src: SocketAddr, dst: SocketAddr, listen: SocketAddr, reply: bool) {
    let server = udp(listen);
    let client = udp(src);
    client
        .send_to(b"ctscope", dst)
        .unwrap_or_else(|e| panic!("send udp {src} -> {dst}: {e}"));
    let mut buf = [0u8; 64];
    let (_, peer) = server
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("recv udp on {listen} (from {src} to {dst}): {e}"));
    if reply {
        server.send_to(b"back", peer).expect("send udp reply");
        client
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("recv udp reply {dst} -> {src}: {e}"));
    }
    kept.udp.push(server);
    kept.udp.push(client);
}

fn tcp_pair(addr: SocketAddr) -> (TcpListener, TcpStream, TcpStream) {
    let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("listen {addr}: {e}"));
    let client = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let (server, _) = listener.accept().expect("accept");
    (listener, client, server)
}

fn v4(a: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::from(a), port))
}

fn v6_lo(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv6Addr::LOCALHOST, port))
}

fn settle() {
    thread::sleep(Duration::from_millis(50));
}

/// An ICMP echo through an unprivileged ping socket (the kernel fills in
/// the id and checksum) and its answer.
fn ping(kept: &mut Kept, v6: bool) {
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe {
        if v6 {
            libc::socket(libc::AF_INET6, libc::SOCK_DGRAM, libc::IPPROTO_ICMPV6)
        } else {
            libc::socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP)
        }
    };
    assert!(fd >= 0, "ping socket: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh, valid descriptor nobody else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let echo: [u8; 16] = [
        if v6 { 128 } else { 8 },
        0,
        0,
        0,
        0,
        0,
        0,
        1,
        b'c',
        b't',
        b's',
        b'c',
        b'o',
        b'p',
        b'e',
        b'!',
    ];
    // SAFETY: the sockaddr structs are fully initialised and their sizes passed.
    let sent = unsafe {
        if v6 {
            let mut sa: libc::sockaddr_in6 = std::mem::zeroed();
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_addr.s6_addr = Ipv6Addr::LOCALHOST.octets();
            libc::sendto(
                fd,
                echo.as_ptr().cast(),
                echo.len(),
                0,
                (&raw const sa).cast(),
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        } else {
            let mut sa: libc::sockaddr_in = std::mem::zeroed();
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
            libc::sendto(
                fd,
                echo.as_ptr().cast(),
                echo.len(),
                0,
                (&raw const sa).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        }
    };
    assert!(sent > 0, "ping sendto: {}", std::io::Error::last_os_error());
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let ready = unsafe { libc::poll(&raw mut pfd, 1, 3000) };
    assert!(ready == 1, "no ICMP echo reply within 3 s (v6: {v6})");
    // Read the reply: while its skb sits in the queue it holds a reference
    // to the entry (use=2), and a flushed entry stays counted until freed.
    let mut buf = [0u8; 64];
    // SAFETY: buf is valid for buf.len() bytes.
    let got = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    assert!(got > 0, "ping recv: {}", std::io::Error::last_os_error());
    kept.fds.push(owned);
}

/// Real traffic, run on a thread inside the namespace.
pub(crate) fn make_traffic() -> Kept {
    let mut k = Kept::default();
    let lo = [127, 0, 0, 1];
    // UDP, answered and not, v4 and v6, to several 127.x addresses.
    udp_flow(&mut k, v4(lo, 0), v4(lo, 4000), v4(lo, 4000), true);
    udp_flow(
        &mut k,
        v4(lo, 0),
        v4([127, 0, 0, 5], 4001),
        v4([127, 0, 0, 5], 4001),
        false,
    );
    udp_flow(
        &mut k,
        v4(lo, 0),
        v4([127, 0, 0, 7], 4004),
        v4([127, 0, 0, 7], 4004),
        true,
    );
    udp_flow(&mut k, v6_lo(0), v6_lo(4002), v6_lo(4002), true);
    udp_flow(&mut k, v6_lo(0), v6_lo(4003), v6_lo(4003), false);
    // Zones and marks set by the ruleset.
    udp_flow(&mut k, v4(lo, 0), v4(lo, 6000), v4(lo, 6000), true);
    udp_flow(&mut k, v4(lo, 0), v4(lo, 6003), v4(lo, 6003), true);
    udp_flow(&mut k, v4(lo, 0), v4(lo, 6001), v4(lo, 6001), true);
    udp_flow(&mut k, v4(lo, 0), v4(lo, 6002), v4(lo, 6002), true);
    // DNAT 127.0.0.1:5000 -> 127.0.0.2:5001, SNAT to 127.0.0.3.
    udp_flow(
        &mut k,
        v4(lo, 0),
        v4(lo, 5000),
        v4([127, 0, 0, 2], 5001),
        true,
    );
    udp_flow(&mut k, v4(lo, 0), v4(lo, 5002), v4(lo, 5002), true);

    // TCP ESTABLISHED, v4 and v6.
    for addr in [v4(lo, 7000), v6_lo(7003), v4([127, 0, 0, 9], 7004)] {
        let (l, c, s) = tcp_pair(addr);
        k.listeners.push(l);
        k.tcp.push(c);
        k.tcp.push(s);
    }
    // TIME_WAIT: the client closes first, then the server.
    {
        let (l, c, s) = tcp_pair(v4(lo, 7001));
        drop(c);
        settle();
        drop(s);
        settle();
        k.listeners.push(l);
    }
    // CLOSE_WAIT: the client closes, the server stays open.
    {
        let (l, c, s) = tcp_pair(v4(lo, 7002));
        drop(c);
        settle();
        k.listeners.push(l);
        k.tcp.push(s);
    }
    // SYN_SENT [UNREPLIED]: the ruleset drops SYNs to port 9 on input. The
    // SYN leaves during connect(); closing the socket then sends nothing
    // more, so the entry's counters do not move between listings.
    match TcpStream::connect_timeout(&v4(lo, 9), Duration::from_millis(200)) {
        Err(e) if e.kind() == ErrorKind::TimedOut => {}
        other => panic!("connect to dropped port 9 should time out, got {other:?}"),
    }
    ping(&mut k, false);
    ping(&mut k, true);
    settle();
    k
}

/// `flows` new UDP entries: one datagram per new tuple, round robin over
/// sockets bound to 127.77.0.1-16 (a stand-in for ctchurn). Call it inside
/// the namespace ([`Netns::in_netns`](crate::Netns::in_netns)); returns
/// flows and time taken.
pub fn udp_flows(flows: u64) -> (u64, Duration) {
    let sockets: Vec<UdpSocket> = (1..=16)
        .map(|k| {
            UdpSocket::bind((Ipv4Addr::new(127, 77, 0, k), 0))
                .unwrap_or_else(|e| panic!("bind udp 127.77.0.{k}: {e}"))
        })
        .collect();
    let start = Instant::now();
    let mut sent = 0;
    'ports: for dport in 10_000u16..=u16::MAX {
        for s in &sockets {
            if sent == flows {
                break 'ports;
            }
            s.send_to(b"ctscope", (Ipv4Addr::LOCALHOST, dport))
                .unwrap_or_else(|e| panic!("send udp to 127.0.0.1:{dport}: {e}"));
            sent += 1;
        }
    }
    (sent, start.elapsed())
}

/// 24 UDP and 6 TCP entries, the UDP ones ended in batches 0.1 to 1.6 s
/// apart, so their lifetimes spread over more than a decade.
pub fn spread_lifetimes(ns: &crate::Netns) {
    let insert = |proto: &str, sport: u16| {
        let sport = sport.to_string();
        let mut args = vec![
            "-I", "-p", proto, "-s", "10.9.0.1", "-d", "10.9.0.2", "--sport", &sport, "--dport",
            "53", "-t", "600",
        ];
        if proto == "tcp" {
            args.extend(["--state", "ESTABLISHED"]);
        }
        ns.conntrack(&args);
    };
    let delete = |proto: &str, sport: u16| {
        let sport = sport.to_string();
        ns.conntrack(&[
            "-D", "-p", proto, "-s", "10.9.0.1", "-d", "10.9.0.2", "--sport", &sport, "--dport",
            "53",
        ]);
    };
    for i in 0..24 {
        insert("udp", 5000 + i);
    }
    for i in 0..6 {
        insert("tcp", 6000 + i);
    }
    for (batch, wait_ms) in [(0..8u16, 100), (8..16, 400), (16..24, 1600)] {
        thread::sleep(Duration::from_millis(wait_ms));
        for i in batch {
            delete("udp", 5000 + i);
        }
    }
    for i in 0..6 {
        delete("tcp", 6000 + i);
    }
}
