//! conntrack(8)-identical text lines.
//!
//! The text layout follows libnetfilter_conntrack 1.0.9's
//! `__snprintf_conntrack_default` (what conntrack 1.4.7 prints), field by
//! field, including its quirks (DCCP states are named from the SCTP table;
//! an empty label set prints `labels`).
use std::{
    io::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use super::OutputOptions;
use crate::ct::{
    Conntrack, Counters, EventKind, Tuple, has_ports, ips, is_icmp, label_bits, proto, proto_name,
    state_name,
};

/// The event tag conntrack prints first: "%9s " in libnetfilter_conntrack,
/// right-aligned in 9 columns.
fn event_tag(kind: EventKind) -> &'static str {
    match kind {
        EventKind::New => "    [NEW] ",
        EventKind::Update => " [UPDATE] ",
        EventKind::Destroy => "[DESTROY] ",
    }
}

/// Writes a number in decimal.
pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// Writes an IPv6 address as glibc's inet_ntop does (which differs from
/// Rust's Display for IPv4-compatible addresses such as ::1.2.3.4).
fn put_ipv6(out: &mut Vec<u8>, a: &Ipv6Addr) {
    let s = a.segments();
    if s[..6] == [0; 6] && s[6] != 0 {
        let o = a.octets();
        let _ = write!(out, "::{}.{}.{}.{}", o[12], o[13], o[14], o[15]);
    } else {
        let _ = write!(out, "{a}");
    }
}

/// An IPv4 address in dotted-quad form, in a stack buffer: (bytes, length).
/// One digit loop per octet and no formatting machinery: event streams
/// print four addresses per line.
pub(crate) fn ipv4_text(a: Ipv4Addr) -> ([u8; 15], usize) {
    let mut buf = [0u8; 15];
    let mut len = 0;
    for (i, o) in a.octets().into_iter().enumerate() {
        if i > 0 {
            buf[len] = b'.';
            len += 1;
        }
        if o >= 100 {
            buf[len] = b'0' + o / 100;
            len += 1;
        }
        if o >= 10 {
            buf[len] = b'0' + (o / 10) % 10;
            len += 1;
        }
        buf[len] = b'0' + o % 10;
        len += 1;
    }
    (buf, len)
}

/// Writes an address as conntrack does (fast path for IPv4).
pub(crate) fn put_ip(out: &mut Vec<u8>, a: &IpAddr) {
    match a {
        IpAddr::V4(v4) => {
            let (buf, len) = ipv4_text(*v4);
            out.extend_from_slice(&buf[..len]);
        }
        IpAddr::V6(v6) => put_ipv6(out, v6),
    }
}

fn put_tuple(out: &mut Vec<u8>, t: &Tuple, l4: u8) {
    put_named_tuple(out, t, l4, b"src=", b" dst=");
}

/// A tuple with its own names for the addresses (`mask-src=`,
/// `master-src=` in expectations), then its ports, keys or ICMP fields as
/// `l4` has them.
pub(crate) fn put_named_tuple(out: &mut Vec<u8>, t: &Tuple, l4: u8, src_is: &[u8], dst_is: &[u8]) {
    if let (Some(src), Some(dst)) = (&t.src, &t.dst) {
        out.extend_from_slice(src_is);
        put_ip(out, src);
        out.extend_from_slice(dst_is);
        put_ip(out, dst);
        out.push(b' ');
    }
    let mut b = itoa::Buffer::new();
    if has_ports(l4) {
        out.extend_from_slice(b"sport=");
        out.extend_from_slice(b.format(t.sport.unwrap_or(0)).as_bytes());
        out.extend_from_slice(b" dport=");
        out.extend_from_slice(b.format(t.dport.unwrap_or(0)).as_bytes());
        out.push(b' ');
    } else if l4 == proto::GRE {
        let _ = write!(
            out,
            "srckey=0x{:x} dstkey=0x{:x} ",
            t.sport.unwrap_or(0),
            t.dport.unwrap_or(0)
        );
    } else if is_icmp(l4) {
        out.extend_from_slice(b"type=");
        out.extend_from_slice(b.format(t.icmp_type.unwrap_or(0)).as_bytes());
        out.extend_from_slice(b" code=");
        out.extend_from_slice(b.format(t.icmp_code.unwrap_or(0)).as_bytes());
        out.extend_from_slice(b" id=");
        out.extend_from_slice(b.format(t.icmp_id.unwrap_or(0)).as_bytes());
        out.push(b' ');
    }
}

fn put_counters(out: &mut Vec<u8>, c: &Counters) {
    out.extend_from_slice(b"packets=");
    put_u64(out, c.packets);
    out.extend_from_slice(b" bytes=");
    put_u64(out, c.bytes);
    out.push(b' ');
}

/// The local broken-down time of `secs` (`localtime_r`), if it has one.
pub(crate) fn local_tm(secs: i64) -> Option<libc::tm> {
    let t: libc::time_t = secs as libc::time_t;
    // SAFETY: localtime_r writes into our tm and reads only t.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        return None;
    }
    Some(tm)
}

/// `ctime()` without the newline, in local time: "Tue Nov 24 08:27:18 2026".
pub fn ctime(secs: i64) -> String {
    let Some(tm) = local_tm(secs) else {
        return secs.to_string();
    };
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{} {}{:3} {:02}:{:02}:{:02} {}",
        DAYS.get(tm.tm_wday as usize).unwrap_or(&"???"),
        MONTHS.get(tm.tm_mon as usize).unwrap_or(&"???"),
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        i64::from(tm.tm_year) + 1900
    )
}

/// Writes one entry as conntrack prints it, with a newline. `now_secs` is
/// the wall clock used for `delta-time` of live entries.
pub fn write_text(
    out: &mut Vec<u8>,
    ct: &Conntrack,
    opts: &OutputOptions,
    event: Option<EventKind>,
    now_secs: i64,
) {
    if let Some(e) = event {
        out.extend_from_slice(event_tag(e).as_bytes());
    }
    let l4 = ct.l4proto();
    let mut b = itoa::Buffer::new();
    if opts.extended {
        let name = match i32::from(ct.family) {
            libc::AF_INET => "ipv4",
            libc::AF_INET6 => "ipv6",
            _ => "unknown",
        };
        let _ = write!(out, "{name:<8} {} ", ct.family);
    }
    // "%-8s " without the formatting machinery: this runs per event.
    let name = proto_name(l4).as_bytes();
    out.extend_from_slice(name);
    out.resize(out.len() + 8usize.saturating_sub(name.len()) + 1, b' ');
    out.extend_from_slice(b.format(l4).as_bytes());
    out.push(b' ');
    if let Some(t) = ct.timeout {
        out.extend_from_slice(b.format(t).as_bytes());
        out.push(b' ');
    }
    if let Some(state) = ct.proto_state {
        out.extend_from_slice(state_name(state).as_bytes());
        out.push(b' ');
    }
    put_tuple(out, &ct.orig, l4);
    if let Some(z) = ct.orig.zone {
        out.extend_from_slice(b"zone-orig=");
        out.extend_from_slice(b.format(z).as_bytes());
        out.push(b' ');
    }
    if let Some(c) = &ct.counters_orig {
        put_counters(out, c);
    }
    if let Some(s) = ct.status
        && s & ips::SEEN_REPLY == 0
    {
        out.extend_from_slice(b"[UNREPLIED] ");
    }
    put_tuple(out, &ct.reply, ct.reply.l4proto.unwrap_or(l4));
    if let Some(z) = ct.reply.zone {
        out.extend_from_slice(b"zone-reply=");
        out.extend_from_slice(b.format(z).as_bytes());
        out.push(b' ');
    }
    if let Some(c) = &ct.counters_reply {
        put_counters(out, c);
    }
    if let Some(s) = ct.status {
        if s & ips::HW_OFFLOAD != 0 {
            out.extend_from_slice(b"[HW_OFFLOAD] ");
        } else if s & ips::OFFLOAD != 0 {
            out.extend_from_slice(b"[OFFLOAD] ");
        } else if s & ips::ASSURED != 0 {
            out.extend_from_slice(b"[ASSURED] ");
        }
    }
    if let Some(m) = ct.mark {
        out.extend_from_slice(b"mark=");
        out.extend_from_slice(b.format(m).as_bytes());
        out.push(b' ');
    }
    if let Some(m) = ct.secmark() {
        out.extend_from_slice(b"secmark=");
        out.extend_from_slice(b.format(m).as_bytes());
        out.push(b' ');
    }
    if let Some(ctx) = ct.secctx() {
        let _ = write!(out, "secctx={ctx} ");
    }
    if let Some(z) = ct.zone {
        out.extend_from_slice(b"zone=");
        out.extend_from_slice(b.format(z).as_bytes());
        out.push(b' ');
    }
    if let Some(start) = ct.timestamp_start {
        let stop = match ct.timestamp_stop {
            Some(stop) if stop != 0 => (stop / 1_000_000_000) as i64,
            _ => now_secs,
        };
        let delta = stop - (start / 1_000_000_000) as i64;
        out.extend_from_slice(b"delta-time=");
        // conntrack prints the difference as unsigned.
        put_u64(out, delta as u64);
        out.push(b' ');
    }
    if opts.ktimestamp {
        if let Some(start) = ct.timestamp_start {
            let _ = write!(out, "[start={}] ", ctime((start / 1_000_000_000) as i64));
        }
        if let Some(stop) = ct.timestamp_stop {
            let _ = write!(out, "[stop={}] ", ctime((stop / 1_000_000_000) as i64));
        }
    }
    if let Some(h) = ct.helper() {
        let _ = write!(out, "helper={h} ");
    }
    if let Some(u) = ct.use_count {
        out.extend_from_slice(b"use=");
        out.extend_from_slice(b.format(u).as_bytes());
        out.push(b' ');
    }
    if opts.id
        && let Some(id) = ct.id
    {
        out.extend_from_slice(b"id=");
        out.extend_from_slice(b.format(id).as_bytes());
        out.push(b' ');
    }
    if let (Some(map), Some(labels)) = (opts.labels.as_ref().filter(|m| m.loaded), ct.labels()) {
        let names: Vec<&str> = label_bits(labels).filter_map(|bit| map.name(bit)).collect();
        if names.is_empty() {
            // The library writes "labels=", then removes one character for
            // the trailing comma it expected.
            out.extend_from_slice(b"labels ");
        } else {
            let _ = write!(out, "labels={} ", names.join(","));
        }
    }
    if out.last() == Some(&b' ') {
        out.pop();
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ct::samples::tcp_established as tcp_entry, output::LabelMap};

    fn text(ct: &Conntrack, opts: &OutputOptions, event: Option<EventKind>) -> String {
        let mut out = Vec::new();
        write_text(&mut out, ct, opts, event, 1_700_000_005);
        String::from_utf8(out).expect("utf8")
    }

    // Expected lines were printed by conntrack 1.4.7 for an entry made with
    // `conntrack -I -p tcp -s 1.2.3.4 -d 5.6.7.8 --sport 10 --dport 20
    // --state ESTABLISHED -t 100 -u SEEN_REPLY,ASSURED -m 7 -w 3`.
    #[test]
    fn matches_conntrack_default_and_extended_layout() {
        let ct = tcp_entry();
        assert_eq!(
            text(&ct, &OutputOptions::default(), None),
            "tcp      6 99 ESTABLISHED src=1.2.3.4 dst=5.6.7.8 sport=10 dport=20 packets=0 bytes=0 \
             src=5.6.7.8 dst=1.2.3.4 sport=20 dport=10 packets=0 bytes=0 [ASSURED] mark=7 zone=3 \
             delta-time=5 use=1\n"
        );
        let opts = OutputOptions::parse(["extended,id"]).expect("parses");
        assert_eq!(
            text(&ct, &opts, None),
            "ipv4     2 tcp      6 99 ESTABLISHED src=1.2.3.4 dst=5.6.7.8 sport=10 dport=20 \
             packets=0 bytes=0 src=5.6.7.8 dst=1.2.3.4 sport=20 dport=10 packets=0 bytes=0 \
             [ASSURED] mark=7 zone=3 delta-time=5 use=1 id=1032319915\n"
        );
    }

    #[test]
    fn unreplied_icmp_gre_and_event_tags() {
        let mut ct = tcp_entry();
        ct.orig.l4proto = Some(1);
        ct.orig.icmp_type = Some(8);
        ct.orig.icmp_code = Some(0);
        ct.orig.icmp_id = Some(77);
        ct.reply.icmp_type = Some(0);
        ct.reply.icmp_code = Some(0);
        ct.reply.icmp_id = Some(77);
        ct.reply.l4proto = Some(1);
        ct.proto_state = None;
        ct.status = Some(ips::CONFIRMED);
        ct.counters_orig = None;
        ct.counters_reply = None;
        ct.timestamp_start = None;
        ct.zone = None;
        let line = text(&ct, &OutputOptions::default(), Some(EventKind::New));
        assert_eq!(
            line,
            "    [NEW] icmp     1 99 src=1.2.3.4 dst=5.6.7.8 type=8 code=0 id=77 [UNREPLIED] \
             src=5.6.7.8 dst=1.2.3.4 type=0 code=0 id=77 mark=7 use=1\n"
        );
        ct.orig.l4proto = Some(47);
        ct.orig.sport = Some(0x1234);
        ct.reply.l4proto = Some(47);
        let line = text(&ct, &OutputOptions::default(), Some(EventKind::Destroy));
        assert!(line.starts_with(
            "[DESTROY] gre      47 99 src=1.2.3.4 dst=5.6.7.8 srckey=0x1234 dstkey=0x14"
        ));
    }

    #[test]
    fn ipv4_is_the_dotted_quad_of_std() {
        // Every octet value in every position, checked against std's
        // Display (an independent formatter).
        for o in 0..=255u8 {
            for a in [
                Ipv4Addr::new(o, 0, 9, 255),
                Ipv4Addr::new(10, o, 100, 1),
                Ipv4Addr::new(199, 99, o, 9),
                Ipv4Addr::new(1, 22, 255, o),
            ] {
                let (buf, len) = ipv4_text(a);
                assert_eq!(std::str::from_utf8(&buf[..len]), Ok(a.to_string().as_str()));
            }
        }
    }

    #[test]
    fn ipv6_is_spelled_like_inet_ntop() {
        let cases = [
            ("::1", "::1"),
            ("::1.2.3.4", "::1.2.3.4"),
            ("::ffff:1.2.3.4", "::ffff:1.2.3.4"),
            ("fe80::1:0:0:1", "fe80::1:0:0:1"),
            ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),
            ("::", "::"),
        ];
        for (input, expected) in cases {
            let mut out = Vec::new();
            put_ip(&mut out, &input.parse().expect("addr"));
            assert_eq!(String::from_utf8_lossy(&out), expected, "{input}");
        }
    }

    #[test]
    fn labels_map_and_quirk() {
        let map = LabelMap::parse(b"0 eth0-in\n1 eth1-in # comment\n1 again\n\xff\xfe 2\n");
        assert_eq!(map.bit("eth1-in"), Some(1));
        let mut ct = tcp_entry();
        ct.extra_mut().labels = Some([0b11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let opts = OutputOptions {
            labels: Some(map.clone()),
            ..OutputOptions::default()
        };
        assert!(text(&ct, &opts, None).ends_with("use=1 labels=eth0-in,eth1-in\n"));
        ct.extra_mut().labels = Some([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x80]);
        assert!(text(&ct, &opts, None).ends_with("use=1 labels\n"));
        // A bit named twice keeps its first name; a bad byte spoils only
        // its own line.
        assert_eq!(map.name(1), Some("eth1-in"));
        assert_eq!(map.bit("eth0-in"), Some(0));
        // Without a connlabel.conf, no labels at all, as conntrack.
        let none = OutputOptions {
            labels: Some(LabelMap::default()),
            ..OutputOptions::default()
        };
        assert!(text(&ct, &none, None).ends_with("use=1\n"));
    }
}
