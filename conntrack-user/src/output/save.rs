//! `-o save`: one line per entry in conntrack's own parameters, as
//! conntrack 1.4.7's `ct_save_snprintf` writes them: `-A` for a listed
//! entry or a NEW event, `-U` for an UPDATE, `-D` for a deleted entry or a
//! DESTROY event. Without its first word a line is what `conntrack -I`
//! takes; whole, `conntrack -R FILE` (`--load-file`) replays it.
//!
//! What conntrack leaves out, ctscope leaves out too: the mark, the
//! counters, the labels, the helper and the timestamps are not saved, and
//! `-u` names only EXPECTED, SEEN_REPLY, ASSURED and FIXED_TIMEOUT (UNSET
//! when none is set).
use super::{digits::put_u64, text::put_ip};
use crate::ct::{
    Conntrack, DCCP_STATES, EventKind, ProtoState, SCTP_STATES, TCP_STATES, Tuple, ips, proto,
    proto_name,
};

/// The status bits `-u` can set, in conntrack's (bit) order.
const SAVED_STATUS: [(&str, u32); 4] = [
    ("EXPECTED", ips::EXPECTED),
    ("SEEN_REPLY", ips::SEEN_REPLY),
    ("ASSURED", ips::ASSURED),
    ("FIXED_TIMEOUT", ips::FIXED_TIMEOUT),
];

/// `--role` names of conntrack's DCCP extension.
const DCCP_ROLES: [&str; 2] = ["client", "server"];

/// `NAME VALUE ` for a number.
fn opt(out: &mut Vec<u8>, name: &str, value: Option<u64>) {
    if let Some(v) = value {
        out.extend_from_slice(name.as_bytes());
        out.push(b' ');
        put_u64(out, v);
        out.push(b' ');
    }
}

/// `NAME WORD ` for a value conntrack maps to a name; glibc's "(null)"
/// where its table has none.
fn opt_name(out: &mut Vec<u8>, name: &str, table: &[&str], value: Option<u8>) {
    if let Some(v) = value {
        out.extend_from_slice(name.as_bytes());
        out.push(b' ');
        let word = table.get(usize::from(v)).copied().unwrap_or("(null)");
        out.extend_from_slice(word.as_bytes());
        out.push(b' ');
    }
}

/// `NAME ADDRESS ` when the address is known.
fn opt_ip(out: &mut Vec<u8>, name: &str, addr: Option<&std::net::IpAddr>) {
    if let Some(a) = addr {
        out.extend_from_slice(name.as_bytes());
        out.push(b' ');
        put_ip(out, a);
        out.push(b' ');
    }
}

/// The four port (or GRE key) options of both tuples.
fn ports(out: &mut Vec<u8>, names: [&str; 4], orig: &Tuple, reply: &Tuple) {
    let values = [orig.sport, orig.dport, reply.sport, reply.dport];
    for (name, v) in names.into_iter().zip(values) {
        opt(out, name, v.map(u64::from));
    }
}

/// Writes one entry as a `-o save` line, with a newline. `kind` picks the
/// first word: `-A` (listed, NEW), `-U` (UPDATE) or `-D` (deleted, DESTROY).
pub fn write_save(out: &mut Vec<u8>, ct: &Conntrack, kind: EventKind) {
    let line_start = out.len();
    out.extend_from_slice(match kind {
        EventKind::New => b"-A ".as_slice(),
        EventKind::Update => b"-U ",
        EventKind::Destroy => b"-D ",
    });
    opt(out, "-t", ct.timeout.map(u64::from));
    if let Some(status) = ct.status {
        out.extend_from_slice(b"-u ");
        let mut any = false;
        for (name, _) in SAVED_STATUS.iter().filter(|(_, bit)| status & bit != 0) {
            if any {
                out.push(b',');
            }
            out.extend_from_slice(name.as_bytes());
            any = true;
        }
        out.extend_from_slice(if any { b" ".as_slice() } else { b"UNSET " });
    }
    opt(out, "-c", ct.secmark().map(u64::from));
    opt(out, "-w", ct.zone.map(u64::from));
    opt(out, "--orig-zone", ct.orig.zone.map(u64::from));
    opt(out, "--reply-zone", ct.reply.zone.map(u64::from));

    opt_ip(out, "-s", ct.orig.src.as_ref());
    opt_ip(out, "-d", ct.orig.dst.as_ref());
    // A NATed reply address is written as the NAT option that makes it
    // (libnetfilter_conntrack's NFCT_GOPT_IS_DNAT / IS_SNAT: the status bit,
    // or no status at all, and an address that differs).
    let nat_done = |bit: u32| ct.status.is_none_or(|s| s & bit != 0);
    let dnat = nat_done(ips::DST_NAT_DONE) && ct.reply.src != ct.orig.dst;
    let snat = nat_done(ips::SRC_NAT_DONE) && ct.reply.dst != ct.orig.src;
    opt_ip(out, if dnat { "-g" } else { "-r" }, ct.reply.src.as_ref());
    opt_ip(out, if snat { "-n" } else { "-q" }, ct.reply.dst.as_ref());

    let l4 = ct.l4proto();
    let name = proto_name(l4);
    out.extend_from_slice(b"-p ");
    if name == "unknown" {
        put_u64(out, l4.into());
    } else {
        out.extend_from_slice(name.as_bytes());
    }
    out.push(b' ');
    let (o, r) = (&ct.orig, &ct.reply);
    let port_names = ["--sport", "--dport", "--reply-port-src", "--reply-port-dst"];
    match l4 {
        proto::TCP | proto::UDP | proto::UDPLITE | proto::SCTP | proto::DCCP => {
            ports(out, port_names, o, r);
        }
        proto::GRE => {
            let keys = ["--srckey", "--dstkey", "--reply-key-src", "--reply-key-dst"];
            ports(out, keys, o, r);
        }
        proto::ICMP | proto::ICMPV6 => {
            let v6 = if l4 == proto::ICMPV6 { "v6" } else { "" };
            opt(out, &format!("--icmp{v6}-type"), o.icmp_type.map(u64::from));
            opt(out, &format!("--icmp{v6}-code"), o.icmp_code.map(u64::from));
            opt(out, &format!("--icmp{v6}-id"), o.icmp_id.map(u64::from));
        }
        _ => {}
    }
    match (l4, ct.proto_state) {
        (proto::TCP, Some(ProtoState::Tcp(s))) => opt_name(out, "--state", &TCP_STATES, Some(s)),
        (proto::SCTP, state) => {
            if let Some(ProtoState::Sctp(s)) = state {
                opt_name(out, "--state", &SCTP_STATES, Some(s));
            }
            // conntrack prints the vtag through ntohl once more than the
            // library decoded it, which is what its --orig-vtag reads back.
            let vtag = |v: Option<u32>| v.map(|v| u64::from(u32::from_be(v)));
            opt(out, "--orig-vtag", vtag(ct.sctp_vtag_orig()));
            opt(out, "--reply-vtag", vtag(ct.sctp_vtag_reply()));
        }
        (proto::DCCP, state) => {
            if let Some(ProtoState::Dccp(s)) = state {
                opt_name(out, "--state", &DCCP_STATES, Some(s));
            }
            opt_name(out, "--role", &DCCP_ROLES, ct.dccp_role());
        }
        _ => {}
    }
    while out.len() > line_start && out.last() == Some(&b' ') {
        out.pop();
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ct::samples::{flow, tcp_established};

    fn save(ct: &Conntrack, kind: EventKind) -> String {
        let mut out = Vec::new();
        write_save(&mut out, ct, kind);
        String::from_utf8(out).expect("utf8")
    }

    // Lines printed by conntrack 1.4.7 (`-L -o save`) for entries made
    // with `conntrack -I`, as in the module's tests of text and XML.
    #[test]
    fn matches_conntrack_for_tcp_with_zone_and_mark() {
        let ct = tcp_established();
        // The mark (7) is not saved: conntrack leaves it out.
        assert_eq!(
            save(&ct, EventKind::New),
            "-A -t 99 -u SEEN_REPLY,ASSURED -w 3 -s 1.2.3.4 -d 5.6.7.8 -r 5.6.7.8 -q 1.2.3.4 \
             -p tcp --sport 10 --dport 20 --reply-port-src 20 --reply-port-dst 10 \
             --state ESTABLISHED\n"
        );
        assert!(save(&ct, EventKind::Update).starts_with("-U -t 99 "));
        assert!(save(&ct, EventKind::Destroy).starts_with("-D -t 99 "));
    }

    #[test]
    fn icmp_gre_unknown_and_ipv6() {
        let mut ct = flow("10.0.0.1", "10.0.0.2", proto::ICMP, 0, 0);
        ct.status = Some(ips::CONFIRMED);
        ct.timeout = Some(29);
        for t in [&mut ct.orig, &mut ct.reply] {
            (t.sport, t.dport) = (None, None);
            (t.icmp_type, t.icmp_code, t.icmp_id) = (Some(8), Some(0), Some(77));
        }
        ct.reply.icmp_type = Some(0);
        assert_eq!(
            save(&ct, EventKind::New),
            "-A -t 29 -u UNSET -s 10.0.0.1 -d 10.0.0.2 -r 10.0.0.2 -q 10.0.0.1 -p icmp \
             --icmp-type 8 --icmp-code 0 --icmp-id 77\n"
        );
        let mut v6 = flow("2001:db8::1", "2001:db8::2", proto::ICMPV6, 0, 0);
        (v6.orig.sport, v6.orig.dport) = (None, None);
        (v6.orig.icmp_type, v6.orig.icmp_code, v6.orig.icmp_id) = (Some(128), Some(0), Some(79));
        assert_eq!(
            save(&v6, EventKind::New),
            "-A -s 2001:db8::1 -d 2001:db8::2 -r 2001:db8::2 -q 2001:db8::1 -p icmpv6 \
             --icmpv6-type 128 --icmpv6-code 0 --icmpv6-id 79\n"
        );
        // GRE keys in decimal; an unknown protocol by number; no status
        // attribute, no -u.
        let gre = flow("10.0.0.1", "10.0.0.2", proto::GRE, 1, 0x1234);
        assert!(
            save(&gre, EventKind::New).ends_with(
                "-p gre --srckey 1 --dstkey 4660 --reply-key-src 4660 --reply-key-dst 1\n"
            )
        );
        let mut other = flow("10.6.0.1", "10.6.0.2", 99, 0, 0);
        for t in [&mut other.orig, &mut other.reply] {
            (t.sport, t.dport) = (None, None);
        }
        other.status = Some(ips::CONFIRMED);
        assert_eq!(
            save(&other, EventKind::New),
            "-A -u UNSET -s 10.6.0.1 -d 10.6.0.2 -r 10.6.0.2 -q 10.6.0.1 -p 99\n"
        );
    }

    #[test]
    fn nat_status_zones_secmark() {
        let mut ct = flow("10.8.0.1", "10.8.0.2", proto::UDP, 3, 2);
        ct.reply.src = "10.8.0.9".parse().ok();
        ct.status = Some(ips::DST_NAT | ips::DST_NAT_DONE | ips::CONFIRMED | ips::EXPECTED);
        ct.orig.zone = Some(8);
        ct.reply.zone = Some(4);
        ct.extra_mut().secmark = Some(5);
        assert_eq!(
            save(&ct, EventKind::New),
            "-A -u EXPECTED -c 5 --orig-zone 8 --reply-zone 4 -s 10.8.0.1 -d 10.8.0.2 \
             -g 10.8.0.9 -q 10.8.0.1 -p udp --sport 3 --dport 2 --reply-port-src 2 \
             --reply-port-dst 3\n"
        );
        // The same reply without the NAT bit is written as it is.
        ct.status = Some(ips::CONFIRMED | ips::FIXED_TIMEOUT | ips::SEEN_REPLY);
        assert!(save(&ct, EventKind::New).contains(
            "-u SEEN_REPLY,FIXED_TIMEOUT -c 5 --orig-zone 8 --reply-zone 4 -s 10.8.0.1 \
             -d 10.8.0.2 -r 10.8.0.9 -q"
        ));
        // Source NAT, IPv6, compared on the whole address.
        let mut v6 = flow("2001:db8::1", "2001:db8::2", proto::UDP, 1, 2);
        v6.reply.dst = "2001:db8::9".parse().ok();
        v6.status = Some(ips::SRC_NAT | ips::SRC_NAT_DONE);
        assert!(
            save(&v6, EventKind::New)
                .contains("-s 2001:db8::1 -d 2001:db8::2 -r 2001:db8::2 -n 2001:db8::9 -p udp")
        );
        // No status attribute at all: the library calls a differing
        // address NAT.
        v6.status = None;
        assert!(save(&v6, EventKind::New).contains(" -n 2001:db8::9 "));
    }

    #[test]
    fn sctp_vtags_dccp_role_and_odd_states() {
        let mut ct = flow("10.0.0.1", "10.0.0.2", proto::SCTP, 1000, 2000);
        ct.status = Some(ips::SEEN_REPLY);
        ct.proto_state = Some(ProtoState::Sctp(4));
        // What the kernel holds for `conntrack -I --orig-vtag 1
        // --reply-vtag 3735928559` (decoded big-endian).
        ct.extra_mut().sctp_vtag_orig = Some(1u32.to_be());
        ct.extra_mut().sctp_vtag_reply = Some(3_735_928_559u32.to_be());
        assert!(save(&ct, EventKind::New).ends_with(
            "-p sctp --sport 1000 --dport 2000 --reply-port-src 2000 --reply-port-dst 1000 \
             --state ESTABLISHED --orig-vtag 1 --reply-vtag 3735928559\n"
        ));
        let mut dccp = flow("10.0.0.1", "10.0.0.2", proto::DCCP, 1000, 2000);
        dccp.proto_state = Some(ProtoState::Dccp(4));
        dccp.extra_mut().dccp_role = Some(0);
        assert!(
            save(&dccp, EventKind::New)
                .ends_with("--reply-port-dst 1000 --state OPEN --role client\n")
        );
        // Linux 6.16+: a generic protocol-33 entry, no ports, no state.
        let mut generic = flow("10.0.0.1", "10.0.0.2", proto::DCCP, 0, 0);
        for t in [&mut generic.orig, &mut generic.reply] {
            (t.sport, t.dport) = (None, None);
        }
        assert!(save(&generic, EventKind::New).ends_with("-q 10.0.0.1 -p dccp\n"));
        let mut tcp = tcp_established();
        tcp.proto_state = Some(ProtoState::Tcp(9));
        assert!(save(&tcp, EventKind::New).ends_with("--state SYN_SENT2\n"));
        tcp.proto_state = Some(ProtoState::Tcp(42));
        assert!(save(&tcp, EventKind::New).ends_with("--state (null)\n"));
        // An entry without addresses still ends cleanly.
        let bare = Conntrack::default();
        assert_eq!(save(&bare, EventKind::Destroy), "-D -p 0\n");
    }
}
