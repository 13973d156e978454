//! `-o xml`: conntrack's `<flow>` elements, byte for byte.
//!
//! The layout follows libnetfilter_conntrack 1.0.9's
//! `__snprintf_conntrack_xml` (what conntrack 1.4.7 prints), including its
//! quirks: one line per flow, no indentation and no escaping (a label or
//! helper name is written as it is); ICMP tuples have an empty `<layer4>`;
//! SCTP and DCCP states are named from the TCP table (SCTP ESTABLISHED is
//! `<state>FIN_WAIT</state>`); both directions print counters when the
//! original one has them; the helper comes after the independent `<meta>`.
//! The document lines around the flows ([`HEADER`], [`FOOTER`]) are the
//! command's business (see `Printer`).
use std::io::Write as _;

use super::{
    OutputOptions,
    digits::put_u64,
    text::{local_tm, put_ip},
};
use crate::ct::{
    Conntrack, Counters, EventKind, ProtoState, TCP_STATES, Tuple, has_ports, ips, label_bits,
    proto, proto_name,
};

/// What conntrack prints before the first flow of a listing or event run
/// (nothing when there is no flow).
pub const HEADER: &[u8] = b"<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<conntrack>\n";

/// What conntrack prints after the last flow, when it printed [`HEADER`].
pub const FOOTER: &[u8] = b"</conntrack>\n";

/// `<name>value</name>` for a number.
pub(crate) fn element(out: &mut Vec<u8>, name: &[u8], value: u64) {
    out.push(b'<');
    out.extend_from_slice(name);
    out.push(b'>');
    put_u64(out, value);
    out.extend_from_slice(b"</");
    out.extend_from_slice(name);
    out.push(b'>');
}

/// `<name>text</name>`, the text unescaped as conntrack writes it.
pub(crate) fn element_str(out: &mut Vec<u8>, name: &[u8], text: &str) {
    out.push(b'<');
    out.extend_from_slice(name);
    out.push(b'>');
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"</");
    out.extend_from_slice(name);
    out.push(b'>');
}

/// The library's name of an address family.
pub(crate) fn l3_name(family: u8) -> &'static str {
    match i32::from(family) {
        libc::AF_INET => "ipv4",
        libc::AF_INET6 => "ipv6",
        _ => "unknown",
    }
}

/// The state name in XML: the library indexes its TCP table with the
/// TCP, SCTP and DCCP state alike.
fn xml_state(state: ProtoState) -> &'static str {
    let s = match state {
        ProtoState::Tcp(s) | ProtoState::Sctp(s) | ProtoState::Dccp(s) => s,
    };
    TCP_STATES.get(usize::from(s)).copied().unwrap_or("NONE")
}

/// The layer 4 elements of a tuple: ports, GRE keys, or nothing (ICMP
/// and unknown protocols).
pub(crate) fn put_l4(out: &mut Vec<u8>, t: &Tuple, l4: u8) {
    if has_ports(l4) {
        element(out, b"sport", t.sport.unwrap_or(0).into());
        element(out, b"dport", t.dport.unwrap_or(0).into());
    } else if l4 == proto::GRE {
        let _ = write!(
            out,
            "<srckey>0x{:x}</srckey><dstkey>0x{:x}</dstkey>",
            t.sport.unwrap_or(0),
            t.dport.unwrap_or(0)
        );
    }
}

/// One `<meta direction="original|reply">` element.
fn put_tuple(
    out: &mut Vec<u8>,
    direction: &[u8],
    t: &Tuple,
    family: u8,
    l4: u8,
    counters: Option<Counters>,
) {
    out.extend_from_slice(b"<meta direction=\"");
    out.extend_from_slice(direction);
    out.extend_from_slice(b"\"><layer3 protonum=\"");
    put_u64(out, family.into());
    out.extend_from_slice(b"\" protoname=\"");
    out.extend_from_slice(l3_name(family).as_bytes());
    out.extend_from_slice(b"\"><src>");
    if let Some(src) = &t.src {
        put_ip(out, src);
    }
    out.extend_from_slice(b"</src><dst>");
    if let Some(dst) = &t.dst {
        put_ip(out, dst);
    }
    out.extend_from_slice(b"</dst></layer3><layer4 protonum=\"");
    put_u64(out, l4.into());
    out.extend_from_slice(b"\" protoname=\"");
    out.extend_from_slice(proto_name(l4).as_bytes());
    out.extend_from_slice(b"\">");
    put_l4(out, t, l4);
    out.extend_from_slice(b"</layer4>");
    if let Some(z) = t.zone {
        element(out, b"zone", z.into());
    }
    if let Some(c) = counters {
        out.extend_from_slice(b"<counters>");
        element(out, b"packets", c.packets);
        element(out, b"bytes", c.bytes);
        out.extend_from_slice(b"</counters>");
    }
    out.extend_from_slice(b"</meta>");
}

/// Writes one `<flow>` as conntrack prints it, with a newline. `event`
/// gives the `type` attribute (and, with `-o timestamp`, the `<when>`
/// element: the local time of `now_secs`); `now_secs` is also the clock
/// for `<deltatime>` of live entries. `-o ktimestamp` adds `<timestamp>`;
/// label names are written when `opts.labels` holds a connlabel.conf.
pub fn write_xml(
    out: &mut Vec<u8>,
    ct: &Conntrack,
    opts: &OutputOptions,
    event: Option<EventKind>,
    now_secs: i64,
) {
    out.extend_from_slice(match event {
        None => b"<flow>".as_slice(),
        Some(EventKind::New) => b"<flow type=\"new\">",
        Some(EventKind::Update) => b"<flow type=\"update\">",
        Some(EventKind::Destroy) => b"<flow type=\"destroy\">",
    });
    let l4 = ct.l4proto();
    // The library prints both directions' counters when the original
    // direction has them.
    let reply_counters = ct
        .counters_orig
        .map(|_| ct.counters_reply.unwrap_or_default());
    put_tuple(out, b"original", &ct.orig, ct.family, l4, ct.counters_orig);
    let reply_l4 = ct.reply.l4proto.unwrap_or(l4);
    put_tuple(
        out,
        b"reply",
        &ct.reply,
        ct.family,
        reply_l4,
        reply_counters,
    );

    // The kernel sends no stop time for a live entry; 0 is the same.
    let stop = ct.timestamp_stop.filter(|s| *s != 0);
    let start = ct.timestamp_start;
    // The opening condition leaves out secctx and helper, as the library's.
    let independent = ct.proto_state.is_some()
        || ct.timeout.is_some()
        || ct.mark.is_some()
        || ct.secmark().is_some()
        || ct.zone.is_some()
        || ct.use_count.is_some()
        || ct.status.is_some()
        || ct.id.is_some()
        || ct.labels().is_some()
        || start.is_some()
        || stop.is_some();
    if independent {
        out.extend_from_slice(b"<meta direction=\"independent\">");
    }
    if let Some(state) = ct.proto_state {
        element_str(out, b"state", xml_state(state));
    }
    if let Some(t) = ct.timeout {
        element(out, b"timeout", t.into());
    }
    if let Some(m) = ct.mark {
        element(out, b"mark", m.into());
    }
    if let (Some(map), Some(labels)) = (opts.labels.as_ref().filter(|m| m.loaded), ct.labels()) {
        out.extend_from_slice(b"<labels>");
        for name in label_bits(labels).filter_map(|bit| map.name(bit)) {
            if !name.is_empty() {
                element_str(out, b"label", name);
            }
        }
        out.extend_from_slice(b"</labels>");
    }
    if let Some(m) = ct.secmark() {
        element(out, b"secmark", m.into());
    }
    if let Some(ctx) = ct.secctx() {
        element_str(out, b"secctx", ctx);
    }
    if let Some(z) = ct.zone {
        element(out, b"zone", z.into());
    }
    if let Some(u) = ct.use_count {
        element(out, b"use", u.into());
    }
    if let Some(id) = ct.id {
        element(out, b"id", id.into());
    }
    if let Some(s) = ct.status {
        if s & ips::ASSURED != 0 {
            out.extend_from_slice(b"<assured/>");
        }
        if s & ips::SEEN_REPLY == 0 {
            out.extend_from_slice(b"<unreplied/>");
        }
    }
    if opts.ktimestamp && (start.is_some() || stop.is_some()) {
        out.extend_from_slice(b"<timestamp>");
        if let Some(start) = start {
            element(out, b"start", start);
        }
        if let Some(stop) = stop {
            element(out, b"stop", stop);
        }
        out.extend_from_slice(b"</timestamp>");
    }
    match (start, stop) {
        // The library divides the difference in ns (text divides each
        // time first), and prints the signed result as unsigned.
        (Some(start), Some(stop)) => {
            element(out, b"deltatime", stop.wrapping_sub(start) / 1_000_000_000);
        }
        (Some(start), None) => {
            let delta = now_secs.wrapping_sub((start / 1_000_000_000) as i64);
            element(out, b"deltatime", delta as u64);
        }
        _ => {}
    }
    if independent {
        out.extend_from_slice(b"</meta>");
    }
    if event.is_some() && opts.timestamp {
        put_when(out, now_secs);
    }
    if let Some(h) = ct.helper() {
        element_str(out, b"helper", h);
    }
    out.extend_from_slice(b"</flow>\n");
}

/// `<when>`: the local time of `secs`, as the library's NFCT_OF_TIME
/// writes it (`-o xml,timestamp`).
pub(crate) fn put_when(out: &mut Vec<u8>, secs: i64) {
    let Some(tm) = local_tm(secs) else {
        return;
    };
    let _ = write!(
        out,
        "<when><hour>{}</hour><min>{:02}</min><sec>{:02}</sec><wday>{}</wday>\
         <day>{}</day><month>{}</month><year>{}</year></when>",
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        tm.tm_wday + 1,
        tm.tm_mday,
        tm.tm_mon + 1,
        i64::from(tm.tm_year) + 1900
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        ct::samples::{flow, tcp_established},
        output::LabelMap,
    };

    fn xml(ct: &Conntrack, opts: &OutputOptions, event: Option<EventKind>) -> String {
        let mut out = Vec::new();
        write_xml(&mut out, ct, opts, event, 1_700_000_005);
        String::from_utf8(out).expect("utf8")
    }

    // Printed by conntrack 1.4.7 (`conntrack -L -o xml`) for the entry of
    // `conntrack -I -p tcp -s 1.2.3.4 -d 5.6.7.8 --sport 10 --dport 20
    // --state ESTABLISHED -t 100 -u SEEN_REPLY,ASSURED -m 7 -w 3`, with
    // the timeout, id and deltatime of the sample.
    const TCP_FLOW: &str = "<flow><meta direction=\"original\"><layer3 protonum=\"2\" \
        protoname=\"ipv4\"><src>1.2.3.4</src><dst>5.6.7.8</dst></layer3><layer4 protonum=\"6\" \
        protoname=\"tcp\"><sport>10</sport><dport>20</dport></layer4><counters><packets>0\
        </packets><bytes>0</bytes></counters></meta><meta direction=\"reply\"><layer3 \
        protonum=\"2\" protoname=\"ipv4\"><src>5.6.7.8</src><dst>1.2.3.4</dst></layer3>\
        <layer4 protonum=\"6\" protoname=\"tcp\"><sport>20</sport><dport>10</dport></layer4>\
        <counters><packets>0</packets><bytes>0</bytes></counters></meta><meta \
        direction=\"independent\"><state>ESTABLISHED</state><timeout>99</timeout><mark>7\
        </mark><zone>3</zone><use>1</use><id>1032319915</id><assured/><deltatime>5\
        </deltatime></meta></flow>\n";

    #[test]
    fn matches_conntrack_for_a_tcp_entry() {
        let ct = tcp_established();
        assert_eq!(xml(&ct, &OutputOptions::default(), None), TCP_FLOW);
        // extended and id change nothing in XML; the id is always there.
        let opts = OutputOptions::parse(["xml,extended,id"]).expect("parses");
        assert_eq!(xml(&ct, &opts, None), TCP_FLOW);
    }

    #[test]
    fn ktimestamp_events_and_when() {
        let mut ct = tcp_established();
        let opts = OutputOptions::parse(["xml,ktimestamp"]).expect("parses");
        assert!(xml(&ct, &opts, None).contains(
            "<assured/><timestamp><start>1700000000000000000</start></timestamp>\
             <deltatime>5</deltatime></meta></flow>\n"
        ));
        // A destroyed entry: the delta of the two times, in whole seconds
        // of their difference.
        ct.timestamp_start = Some(1_700_000_000_900_000_000);
        ct.timestamp_stop = Some(1_700_000_002_100_000_000);
        let line = xml(&ct, &opts, Some(EventKind::Destroy));
        assert!(line.starts_with("<flow type=\"destroy\"><meta direction=\"original\">"));
        assert!(line.contains(
            "<timestamp><start>1700000000900000000</start><stop>1700000002100000000</stop>\
             </timestamp><deltatime>1</deltatime></meta></flow>\n"
        ));
        // -o timestamp adds <when> to events only.
        let opts = OutputOptions::parse(["xml,timestamp"]).expect("parses");
        assert!(!xml(&ct, &opts, None).contains("<when>"));
        let line = xml(&ct, &opts, Some(EventKind::New));
        let when = line
            .find("</meta><when><hour>")
            .expect("a <when> after the meta");
        assert!(line[when..].contains("</year></when></flow>\n"), "{line}");
        assert!(xml(&ct, &opts, Some(EventKind::Update)).starts_with("<flow type=\"update\">"));
    }

    #[test]
    fn icmp_gre_unknown_and_dccp_tuples() {
        let mut ct = flow("10.0.0.1", "10.0.0.2", proto::ICMP, 0, 0);
        for t in [&mut ct.orig, &mut ct.reply] {
            (t.sport, t.dport) = (None, None);
            (t.icmp_type, t.icmp_code, t.icmp_id) = (Some(8), Some(0), Some(77));
        }
        let line = xml(&ct, &OutputOptions::default(), None);
        // No type, code or id in XML; no independent meta without its
        // attributes; no counters without accounting.
        assert_eq!(
            line,
            "<flow><meta direction=\"original\"><layer3 protonum=\"2\" protoname=\"ipv4\">\
             <src>10.0.0.1</src><dst>10.0.0.2</dst></layer3><layer4 protonum=\"1\" \
             protoname=\"icmp\"></layer4></meta><meta direction=\"reply\"><layer3 \
             protonum=\"2\" protoname=\"ipv4\"><src>10.0.0.2</src><dst>10.0.0.1</dst>\
             </layer3><layer4 protonum=\"1\" protoname=\"icmp\"></layer4></meta></flow>\n"
        );
        let mut gre = flow("10.0.0.1", "10.0.0.2", proto::GRE, 1, 0x1234);
        gre.status = Some(ips::CONFIRMED);
        let line = xml(&gre, &OutputOptions::default(), None);
        assert!(
            line.contains("protoname=\"gre\"><srckey>0x1</srckey><dstkey>0x1234</dstkey></layer4>")
        );
        assert!(line.contains("<srckey>0x1234</srckey><dstkey>0x1</dstkey>"));
        assert!(line.ends_with("<meta direction=\"independent\"><unreplied/></meta></flow>\n"));
        // Linux 6.16+ keeps DCCP as a generic entry without ports: the
        // library prints zeros.
        let mut dccp = flow("10.0.0.1", "10.0.0.2", proto::DCCP, 0, 0);
        (dccp.orig.sport, dccp.orig.dport) = (None, None);
        assert!(
            xml(&dccp, &OutputOptions::default(), None)
                .contains("protoname=\"dccp\"><sport>0</sport><dport>0</dport></layer4>")
        );
        let other = flow("10.6.0.1", "10.6.0.2", 99, 0, 0);
        assert!(
            xml(&other, &OutputOptions::default(), None)
                .contains("<layer4 protonum=\"99\" protoname=\"unknown\"></layer4>")
        );
    }

    #[test]
    fn ipv6_zones_states_labels_helper() {
        let mut ct = flow("2001:db8::1", "::1.2.3.4", proto::SCTP, 1000, 2000);
        ct.orig.zone = Some(8);
        ct.reply.zone = Some(4);
        ct.zone = Some(3);
        ct.status = Some(ips::SEEN_REPLY | ips::CONFIRMED);
        // SCTP ESTABLISHED (4) is named from the TCP table.
        ct.proto_state = Some(ProtoState::Sctp(4));
        ct.counters_orig = Some(Counters {
            packets: 3,
            bytes: 180,
        });
        ct.extra_mut().helper = Some("ftp".into());
        ct.extra_mut().secctx = Some("system_u:object_r:unlabeled_t:s0".into());
        ct.extra_mut().labels = Some([0b101, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let line = xml(&ct, &OutputOptions::default(), None);
        assert!(line.contains(
            "<layer3 protonum=\"10\" protoname=\"ipv6\"><src>2001:db8::1</src>\
             <dst>::1.2.3.4</dst></layer3>"
        ));
        assert!(line.contains(
            "<dport>2000</dport></layer4><zone>8</zone><counters><packets>3</packets>\
             <bytes>180</bytes></counters></meta>"
        ));
        // The reply direction has no counters of its own: zeros.
        assert!(line.contains(
            "<dport>1000</dport></layer4><zone>4</zone><counters><packets>0</packets>\
             <bytes>0</bytes></counters></meta>"
        ));
        assert!(line.ends_with(
            "<meta direction=\"independent\"><state>FIN_WAIT</state><secctx>\
             system_u:object_r:unlabeled_t:s0</secctx><zone>3</zone></meta>\
             <helper>ftp</helper></flow>\n"
        ));
        // Labels only with a connlabel.conf; unnamed bits are left out.
        let opts = OutputOptions {
            labels: Some(LabelMap::parse(b"0 eth0-in\n")),
            ..OutputOptions::default()
        };
        assert!(
            xml(&ct, &opts, None)
                .contains("<state>FIN_WAIT</state><labels><label>eth0-in</label></labels><secctx>")
        );
        let none = OutputOptions {
            labels: Some(LabelMap::default()),
            ..OutputOptions::default()
        };
        assert!(!xml(&ct, &none, None).contains("<labels>"));
    }

    #[test]
    fn odd_states_and_a_bare_entry() {
        let mut ct = tcp_established();
        ct.proto_state = Some(ProtoState::Tcp(9));
        assert!(xml(&ct, &OutputOptions::default(), None).contains("<state>SYN_SENT2</state>"));
        ct.proto_state = Some(ProtoState::Tcp(200));
        assert!(xml(&ct, &OutputOptions::default(), None).contains("<state>NONE</state>"));
        ct.proto_state = Some(ProtoState::Dccp(4));
        assert!(xml(&ct, &OutputOptions::default(), None).contains("<state>FIN_WAIT</state>"));
        // An entry with only its tuples (and no addresses at all).
        let bare = Conntrack::default();
        assert_eq!(
            xml(&bare, &OutputOptions::default(), None),
            "<flow><meta direction=\"original\"><layer3 protonum=\"0\" protoname=\"unknown\">\
             <src></src><dst></dst></layer3><layer4 protonum=\"0\" protoname=\"unknown\">\
             </layer4></meta><meta direction=\"reply\"><layer3 protonum=\"0\" \
             protoname=\"unknown\"><src></src><dst></dst></layer3><layer4 protonum=\"0\" \
             protoname=\"unknown\"></layer4></meta></flow>\n"
        );
    }
}
