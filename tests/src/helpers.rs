//! Real expectations for the expectation-table tests: the kernel's ftp and
//! sip helpers, attached with nftables `ct helper` objects, watching
//! sessions scripted over loopback in the test's namespace.
//!
//! Kernel facts these rely on (6.18): the ftp helper reads a command only
//! at the start of a line it has seen begin, so the client sends `USER`
//! before `PORT`; a helper must be attached before the connection is
//! confirmed, so from an output chain for locally made traffic; on
//! loopback a packet meets the helper twice (output and input), so each
//! `PORT` shows as NEW, DESTROY (the same expectation replaced), NEW; the
//! ftp helper keeps one expectation per connection (`max_expected` 1), so
//! a second `PORT` evicts the first; a sip `REGISTER` makes a PERMANENT,
//! INACTIVE expectation, and the `200 OK` answer activates it.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use crate::Netns;

/// The helpers, on the ports the sessions use (added beside the
/// namespace's tracking table).
pub const HELPER_RULESET: &str = "
table inet ctscope_helpers {
    ct helper ftp-std { type \"ftp\" protocol tcp; }
    ct helper sip-udp { type \"sip\" protocol udp; }
    chain output {
        type filter hook output priority filter; policy accept;
        tcp dport 21 ct helper set \"ftp-std\"
        udp dport 5060 ct helper set \"sip-udp\"
    }
}
";

const WAIT: Duration = Duration::from_secs(3);

/// An ftp control connection held open (its expectations live as long as
/// it does, up to the helper's 300 s).
pub struct FtpSession {
    client: TcpStream,
    server: TcpStream,
    _listener: TcpListener,
}

impl FtpSession {
    /// The client's port: the master tuple's source port.
    pub fn client_port(&self) -> u16 {
        self.client.local_addr().map_or(0, |a| a.port())
    }

    /// The server's address: the master tuple's destination.
    pub fn server_addr(&self) -> SocketAddr {
        self.server
            .local_addr()
            .unwrap_or_else(|e| panic!("server address: {e}"))
    }

    /// The client asks for a data connection to its own address, port
    /// `port` (`PORT` for IPv4, `EPRT` for IPv6), and the server says yes:
    /// the helper expects the server to connect there.
    pub fn port(&mut self, port: u16) {
        let ip = self
            .client
            .local_addr()
            .unwrap_or_else(|e| panic!("client address: {e}"))
            .ip();
        let line = match ip {
            std::net::IpAddr::V4(v4) => {
                let o = v4.octets();
                format!(
                    "PORT {},{},{},{},{},{}\r\n",
                    o[0],
                    o[1],
                    o[2],
                    o[3],
                    port >> 8,
                    port & 0xff
                )
            }
            std::net::IpAddr::V6(v6) => format!("EPRT |2|{v6}|{port}|\r\n"),
        };
        say(&mut self.client, &mut self.server, line.as_bytes());
        say(&mut self.server, &mut self.client, b"200 ok\r\n");
    }
}

/// Sends `line` on `from` and reads it on `to`.
fn say(from: &mut TcpStream, to: &mut TcpStream, line: &[u8]) {
    from.write_all(line)
        .unwrap_or_else(|e| panic!("ftp write: {e}"));
    let mut got = vec![0u8; line.len()];
    to.read_exact(&mut got)
        .unwrap_or_else(|e| panic!("ftp read: {e}"));
}

/// Opens an ftp control connection to `server` (port 21) in `ns` and logs
/// in as far as the helper needs: the greeting, `USER`, its answer.
pub fn ftp_session(ns: &Netns, server: &str) -> FtpSession {
    let server: std::net::IpAddr = server.parse().expect("server address");
    ns.in_netns(move || {
        let listener = TcpListener::bind((server, 21))
            .unwrap_or_else(|e| panic!("listen on {server}:21: {e}"));
        let mut client = TcpStream::connect((server, 21))
            .unwrap_or_else(|e| panic!("connect to {server}:21: {e}"));
        let (mut conn, _) = listener.accept().expect("accept");
        for s in [&client, &conn] {
            s.set_read_timeout(Some(WAIT)).expect("set_read_timeout");
        }
        say(&mut conn, &mut client, b"220 ctscope\r\n");
        say(&mut client, &mut conn, b"USER ctscope\r\n");
        say(&mut conn, &mut client, b"331 password\r\n");
        FtpSession {
            client,
            server: conn,
            _listener: listener,
        }
    })
}

/// A sip `REGISTER` from 127.0.0.1:`client_port` to 127.0.0.4:5060,
/// answered `200 OK` when `answered`: the helper expects the registrar to
/// call the client back at its Contact.
pub fn sip_register(ns: &Netns, client_port: u16, answered: bool) {
    ns.in_netns(move || {
        let client = UdpSocket::bind(("127.0.0.1", client_port)).expect("bind sip client");
        let server = UdpSocket::bind(("127.0.0.4", 5060)).expect("bind sip registrar");
        for s in [&client, &server] {
            s.set_read_timeout(Some(WAIT)).expect("set_read_timeout");
        }
        let head = |first: &str| {
            format!(
                "{first}\r\nVia: SIP/2.0/UDP 127.0.0.1:{client_port}\r\n\
                 From: <sip:ct@127.0.0.4>\r\nTo: <sip:ct@127.0.0.4>\r\n\
                 Call-ID: {client_port}@127.0.0.1\r\nCSeq: 1 REGISTER\r\n\
                 Contact: <sip:ct@127.0.0.1:{client_port}>;expires=3600\r\n\
                 Content-Length: 0\r\n\r\n"
            )
        };
        let mut buf = [0u8; 2048];
        client
            .send_to(
                head("REGISTER sip:127.0.0.4 SIP/2.0").as_bytes(),
                "127.0.0.4:5060",
            )
            .expect("send REGISTER");
        let (_, from) = server.recv_from(&mut buf).expect("REGISTER arrives");
        if answered {
            server
                .send_to(head("SIP/2.0 200 OK").as_bytes(), from)
                .expect("send 200 OK");
            client.recv_from(&mut buf).expect("200 OK arrives");
        }
    });
}

/// Masks what changes between two printings of the same expectation: the
/// timeout (the first number, after an event tag if any) and the
/// `[secs.usecs]` of `-o timestamp`.
pub fn normalise_expect(line: &str) -> String {
    let mut rest = line.trim_end();
    let mut out = String::new();
    if rest.starts_with('[')
        && let Some(end) = rest.find("]\t")
        && rest[1..end]
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == ' ')
    {
        out.push_str("[<time>]\t");
        rest = &rest[end + 2..];
    }
    let tag_end = rest
        .find(']')
        .filter(|_| rest.trim_start().starts_with('['));
    if let Some(i) = tag_end {
        out.push_str(&rest[..=i]);
        out.push(' ');
        rest = rest[i + 1..].trim_start();
    }
    match rest.split_once(' ') {
        Some((timeout, tail)) if timeout.chars().all(|c| c.is_ascii_digit()) => {
            out.push_str("<timeout> ");
            out.push_str(tail);
        }
        _ => out.push_str(rest),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_masks_timeouts_and_times() {
        assert_eq!(
            normalise_expect("299 proto=6 src=1 class=0 helper=ftp\n"),
            "<timeout> proto=6 src=1 class=0 helper=ftp"
        );
        assert_eq!(
            normalise_expect("    [NEW] 300 proto=6 src=1"),
            "    [NEW] <timeout> proto=6 src=1"
        );
        assert_eq!(
            normalise_expect("[1795799129.95    ]\t[DESTROY] 298 proto=17"),
            "[<time>]\t[DESTROY] <timeout> proto=17"
        );
        assert_eq!(normalise_expect("<flow>x</flow>"), "<flow>x</flow>");
    }
}
