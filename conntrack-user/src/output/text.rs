//! conntrack(8)-identical text lines.
//!
//! The text layout follows libnetfilter_conntrack 1.0.9's
//! `__snprintf_conntrack_default` (what conntrack 1.4.7 prints), field by
//! field, including its quirks (DCCP states are named from the SCTP table;
//! an empty label set prints `labels`).
//!
//! Written by hand with appends of fixed size (`output::append`) and the
//! number and address writers of `output::digits` rather than `write!`
//! or itoa: an event stream prints this line for every event, and the
//! formatting machinery or a memcpy call per piece was most of the
//! consumer's cost per event (BENCHMARKS.md, "What a conntrack listener
//! costs"). Rare fields (helper, security context, labels, times) still
//! use `write!`.
use std::{
    io::Write as _,
    net::{IpAddr, Ipv6Addr},
};

use super::{OutputOptions, append::Append, digits};
use crate::ct::{
    Conntrack, Counters, EventKind, Tuple, has_ports, ips, is_icmp, label_bits, proto, proto_name,
    state_name,
};

/// The event tag conntrack prints first: "%9s " in libnetfilter_conntrack,
/// right-aligned in 9 columns.
fn event_tag(kind: EventKind) -> &'static [u8; 10] {
    match kind {
        EventKind::New => b"    [NEW] ",
        EventKind::Update => b" [UPDATE] ",
        EventKind::Destroy => b"[DESTROY] ",
    }
}

/// conntrack's "%-8s %u " for every layer 4 protocol number (the name
/// padded to 8 columns, a space, the number, a space) in the first bytes,
/// its length in the last: one copy of fixed size per line.
const PROTO_COLUMNS: [[u8; 16]; 256] = {
    let mut t = [[b' '; 16]; 256];
    let mut p = 0;
    while p < 256 {
        let name = proto_name(p as u8).as_bytes();
        let mut i = 0;
        while i < name.len() {
            t[p][i] = name[i];
            i += 1;
        }
        let mut len = if name.len() > 8 { name.len() } else { 8 } + 1;
        if p >= 100 {
            t[p][len] = b'0' + (p / 100) as u8;
            len += 1;
        }
        if p >= 10 {
            t[p][len] = b'0' + (p / 10 % 10) as u8;
            len += 1;
        }
        t[p][len] = b'0' + (p % 10) as u8;
        t[p][15] = len as u8 + 2;
        p += 1;
    }
    t
};

/// Writes conntrack's protocol column: "udp      17 ".
#[inline(always)]
fn put_proto_column(out: &mut Vec<u8>, l4: u8) {
    let column = &PROTO_COLUMNS[usize::from(l4)];
    out.put_prefix(column, usize::from(column[15]));
}

/// Writes an IPv6 address as glibc's inet_ntop does (which differs from
/// Rust's Display for IPv4-compatible addresses such as ::1.2.3.4). Out
/// of line: the formatting machinery would weigh on IPv4's path.
#[inline(never)]
fn put_ipv6(out: &mut Vec<u8>, a: &Ipv6Addr) {
    let s = a.segments();
    if s[..6] == [0; 6] && s[6] != 0 {
        let o = a.octets();
        let _ = write!(out, "::{}.{}.{}.{}", o[12], o[13], o[14], o[15]);
    } else {
        let _ = write!(out, "{a}");
    }
}

/// Writes an address as conntrack does.
pub(crate) fn put_ip(out: &mut Vec<u8>, a: &IpAddr) {
    put_addr(out, a);
}

/// [`put_ip`], inlined into the line writers.
#[inline(always)]
fn put_addr(out: &mut Vec<u8>, a: &IpAddr) {
    match a {
        IpAddr::V4(v4) => digits::put_ipv4(out, *v4),
        IpAddr::V6(v6) => put_ipv6(out, v6),
    }
}

#[inline(always)]
fn put_tuple(out: &mut Vec<u8>, t: &Tuple, l4: u8) {
    put_named_tuple(out, t, l4, b"src=", b" dst=");
}

/// A tuple with its own names for the addresses (`mask-src=`,
/// `master-src=` in expectations), then its ports, keys or ICMP fields as
/// `l4` has them. The names are arrays so that each copy has a fixed size.
#[inline(always)]
pub(crate) fn put_named_tuple<const S: usize, const D: usize>(
    out: &mut Vec<u8>,
    t: &Tuple,
    l4: u8,
    src_is: &[u8; S],
    dst_is: &[u8; D],
) {
    if let (Some(src), Some(dst)) = (&t.src, &t.dst) {
        out.put(src_is);
        put_addr(out, src);
        out.put(dst_is);
        put_addr(out, dst);
        out.push(b' ');
    }
    if has_ports(l4) {
        out.put(b"sport=");
        digits::put_u64(out, t.sport.unwrap_or(0).into());
        out.put(b" dport=");
        digits::put_u64(out, t.dport.unwrap_or(0).into());
        out.push(b' ');
    } else if l4 == proto::GRE {
        let _ = write!(
            out,
            "srckey=0x{:x} dstkey=0x{:x} ",
            t.sport.unwrap_or(0),
            t.dport.unwrap_or(0)
        );
    } else if is_icmp(l4) {
        out.put(b"type=");
        digits::put_u64(out, t.icmp_type.unwrap_or(0).into());
        out.put(b" code=");
        digits::put_u64(out, t.icmp_code.unwrap_or(0).into());
        out.put(b" id=");
        digits::put_u64(out, t.icmp_id.unwrap_or(0).into());
        out.push(b' ');
    }
}

#[inline(always)]
fn put_counters(out: &mut Vec<u8>, c: &Counters) {
    out.put(b"packets=");
    digits::put_u64(out, c.packets);
    out.put(b" bytes=");
    digits::put_u64(out, c.bytes);
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
        out.put(event_tag(e));
    }
    let l4 = ct.l4proto();
    if opts.extended {
        let name = match i32::from(ct.family) {
            libc::AF_INET => "ipv4",
            libc::AF_INET6 => "ipv6",
            _ => "unknown",
        };
        let _ = write!(out, "{name:<8} {} ", ct.family);
    }
    put_proto_column(out, l4);
    if let Some(t) = ct.timeout {
        digits::put_u64(out, t.into());
        out.push(b' ');
    }
    if let Some(state) = ct.proto_state {
        out.extend_from_slice(state_name(state).as_bytes());
        out.push(b' ');
    }
    put_tuple(out, &ct.orig, l4);
    if let Some(z) = ct.orig.zone {
        out.put(b"zone-orig=");
        digits::put_u64(out, z.into());
        out.push(b' ');
    }
    if let Some(c) = &ct.counters_orig {
        put_counters(out, c);
    }
    if let Some(s) = ct.status
        && s & ips::SEEN_REPLY == 0
    {
        out.put(b"[UNREPLIED] ");
    }
    put_tuple(out, &ct.reply, ct.reply.l4proto.unwrap_or(l4));
    if let Some(z) = ct.reply.zone {
        out.put(b"zone-reply=");
        digits::put_u64(out, z.into());
        out.push(b' ');
    }
    if let Some(c) = &ct.counters_reply {
        put_counters(out, c);
    }
    if let Some(s) = ct.status {
        if s & ips::HW_OFFLOAD != 0 {
            out.put(b"[HW_OFFLOAD] ");
        } else if s & ips::OFFLOAD != 0 {
            out.put(b"[OFFLOAD] ");
        } else if s & ips::ASSURED != 0 {
            out.put(b"[ASSURED] ");
        }
    }
    if let Some(m) = ct.mark {
        out.put(b"mark=");
        digits::put_u64(out, m.into());
        out.push(b' ');
    }
    if let Some(m) = ct.secmark() {
        out.put(b"secmark=");
        digits::put_u64(out, m.into());
        out.push(b' ');
    }
    if let Some(ctx) = ct.secctx() {
        let _ = write!(out, "secctx={ctx} ");
    }
    if let Some(z) = ct.zone {
        out.put(b"zone=");
        digits::put_u64(out, z.into());
        out.push(b' ');
    }
    if let Some(start) = ct.timestamp_start {
        let stop = match ct.timestamp_stop {
            Some(stop) if stop != 0 => (stop / 1_000_000_000) as i64,
            _ => now_secs,
        };
        let delta = stop - (start / 1_000_000_000) as i64;
        out.put(b"delta-time=");
        // conntrack prints the difference as unsigned.
        digits::put_u64(out, delta as u64);
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
        out.put(b"use=");
        digits::put_u64(out, u.into());
        out.push(b' ');
    }
    if opts.id
        && let Some(id) = ct.id
    {
        out.put(b"id=");
        digits::put_u64(out, id.into());
        out.push(b' ');
    }
    if let (Some(map), Some(labels)) = (opts.labels.as_ref().filter(|m| m.loaded), ct.labels()) {
        let names: Vec<&str> = label_bits(labels).filter_map(|bit| map.name(bit)).collect();
        if names.is_empty() {
            // The library writes "labels=", then removes one character for
            // the trailing comma it expected.
            out.put(b"labels ");
        } else {
            let _ = write!(out, "labels={} ", names.join(","));
        }
    }
    out.trim(b' ');
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
    fn protocol_column_and_event_tags_are_conntracks_printf() {
        // "%-8s %u " and "%9s " through std's formatting.
        for l4 in 0..=255u8 {
            let mut out = Vec::new();
            put_proto_column(&mut out, l4);
            let expected = format!("{:<8} {l4} ", proto_name(l4));
            assert_eq!(String::from_utf8(out), Ok(expected));
        }
        for (kind, name) in [
            (EventKind::New, "[NEW]"),
            (EventKind::Update, "[UPDATE]"),
            (EventKind::Destroy, "[DESTROY]"),
        ] {
            assert_eq!(event_tag(kind), format!("{name:>9} ").as_bytes());
        }
    }

    #[test]
    fn event_lines_of_the_common_kind_are_as_formatted_by_std() {
        // The eBPF source's common line (an IPv4 flow with ports or ICMP
        // keys), across address, port and timeout widths, against the same
        // line put together with format!.
        let addrs = ["0.0.0.0", "127.11.0.3", "9.99.100.255", "255.255.255.255"];
        let mut checked = 0;
        for (i, (src, dst)) in addrs.iter().flat_map(|s| addrs.map(|d| (s, d))).enumerate() {
            for (sport, dport) in [(0, 65535), (9, 10), (99, 100), (32768, 1)] {
                for l4 in [6, 17, 132, 1] {
                    let mut ct = crate::ct::samples::flow(src, dst, l4, sport, dport);
                    ct.timeout = [None, Some(0), Some(3600), Some(u32::MAX)][i % 4];
                    ct.status = Some(if i % 2 == 0 {
                        ips::CONFIRMED
                    } else {
                        ips::SEEN_REPLY
                    });
                    let tuple = |a: &str, b: &str, p: u16, q: u16| match l4 {
                        1 => {
                            format!(
                                "src={a} dst={b} type={} code={} id={} ",
                                8 + p % 2,
                                q % 3,
                                p
                            )
                        }
                        _ => format!("src={a} dst={b} sport={p} dport={q} "),
                    };
                    if l4 == 1 {
                        for t in [&mut ct.orig, &mut ct.reply] {
                            (t.icmp_type, t.icmp_code, t.icmp_id) = (Some(0), Some(0), Some(0));
                        }
                        ct.orig.icmp_type = Some(8 + (sport % 2) as u8);
                        ct.orig.icmp_code = Some((dport % 3) as u8);
                        ct.orig.icmp_id = Some(sport);
                        ct.reply.icmp_type = Some(8 + (dport % 2) as u8);
                        ct.reply.icmp_code = Some((sport % 3) as u8);
                        ct.reply.icmp_id = Some(dport);
                    }
                    let timeout = ct.timeout.map(|t| format!("{t} ")).unwrap_or_default();
                    let unreplied = if i % 2 == 0 { "[UNREPLIED] " } else { "" };
                    let expected = format!(
                        "[DESTROY] {:<8} {l4} {timeout}{}{unreplied}{}",
                        proto_name(l4),
                        tuple(src, dst, sport, dport),
                        tuple(dst, src, dport, sport)
                    );
                    let expected = format!("{}\n", expected.trim_end());
                    assert_eq!(
                        text(&ct, &OutputOptions::default(), Some(EventKind::Destroy)),
                        expected
                    );
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 256);
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
