//! Expectations as conntrack 1.4.7 prints them (`-L expect`, `-E expect`):
//! the text line of libnetfilter_conntrack 1.0.9's
//! `__snprintf_expect_default`, its `<flow>` XML, and ctscope's JSON.
//!
//! The layout was read off conntrack's output on 6.18 for ftp and sip
//! expectations (flags PERMANENT and INACTIVE come from sip's REGISTER
//! expectations). 6.18 sends no `CTA_EXPECT_ZONE` in dumps, so where the
//! library puts `zone=` could not be seen: it goes after the master tuple,
//! where the library's older releases put it.
use std::net::IpAddr;

use serde::Serialize;

use super::{
    digits::put_u64,
    text::put_named_tuple,
    xml::{element, element_str, l3_name, put_l4, put_when},
};
use crate::{
    ct::{EventKind, Tuple, proto_name},
    expect::{Expect, flags},
};

/// What conntrack prints before the first expectation in XML.
pub const XML_HEADER: &[u8] = b"<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<expect>\n";

/// What conntrack prints after the last one, when it printed the header.
pub const XML_FOOTER: &[u8] = b"</expect>\n";

/// The names of the flags that are set, as the library prints them.
fn flag_names(bits: u32) -> impl Iterator<Item = &'static str> {
    [
        (flags::PERMANENT, "PERMANENT"),
        (flags::INACTIVE, "INACTIVE"),
        (flags::USERSPACE, "USERSPACE"),
    ]
    .into_iter()
    .filter(move |(bit, _)| bits & bit != 0)
    .map(|(_, name)| name)
}

/// Writes the text line, with a newline; `event` adds the right-aligned
/// `[NEW]`-style tag.
pub fn write_text(out: &mut Vec<u8>, exp: &Expect, event: Option<EventKind>) {
    match event {
        Some(EventKind::New) => out.extend_from_slice(b"    [NEW] "),
        Some(EventKind::Update) => out.extend_from_slice(b" [UPDATE] "),
        Some(EventKind::Destroy) => out.extend_from_slice(b"[DESTROY] "),
        None => {}
    }
    put_u64(out, exp.timeout.unwrap_or(0).into());
    out.extend_from_slice(b" proto=");
    put_u64(out, exp.tuple.l4proto.unwrap_or(0).into());
    out.push(b' ');
    // Each tuple prints the ports of its own protocol number (the kernel
    // gives the mask the expected tuple's).
    let l4 = |t: &Tuple| t.l4proto.unwrap_or(0);
    put_named_tuple(out, &exp.tuple, l4(&exp.tuple), b"src=", b" dst=");
    put_named_tuple(out, &exp.mask, l4(&exp.mask), b"mask-src=", b" mask-dst=");
    put_named_tuple(
        out,
        &exp.master,
        l4(&exp.master),
        b"master-src=",
        b" master-dst=",
    );
    if let Some(zone) = exp.zone {
        out.extend_from_slice(b"zone=");
        put_u64(out, zone.into());
        out.push(b' ');
    }
    let mut any_flag = false;
    for name in flag_names(exp.flags.unwrap_or(0)) {
        if any_flag {
            out.push(b',');
        }
        out.extend_from_slice(name.as_bytes());
        any_flag = true;
    }
    if any_flag {
        out.push(b' ');
    }
    if let Some(class) = exp.class {
        out.extend_from_slice(b"class=");
        put_u64(out, class.into());
        out.push(b' ');
    }
    if let Some(helper) = &exp.helper {
        out.extend_from_slice(b"helper=");
        out.extend_from_slice(helper.as_bytes());
    }
    if out.last() == Some(&b' ') {
        out.pop();
    }
    out.push(b'\n');
}

/// Writes one `<flow>`, with a newline. `event` gives the `type`
/// attribute; `when` (`-o xml,timestamp`) the local time of `<when>`,
/// which the library writes between `<class>` and the flags.
pub fn write_xml(out: &mut Vec<u8>, exp: &Expect, event: Option<EventKind>, when: Option<i64>) {
    out.extend_from_slice(match event {
        Some(EventKind::New) => b"<flow type=\"new\">".as_slice(),
        Some(EventKind::Update) => b"<flow type=\"update\">",
        Some(EventKind::Destroy) => b"<flow type=\"destroy\">",
        None => b"<flow>",
    });
    out.extend_from_slice(b"<layer3 protonum=\"");
    put_u64(out, exp.family.into());
    out.extend_from_slice(b"\" protoname=\"");
    out.extend_from_slice(l3_name(exp.family).as_bytes());
    out.extend_from_slice(b"\">");
    let parts: [(&[u8], &Tuple); 3] = [
        (b"expected", &exp.tuple),
        (b"mask", &exp.mask),
        (b"master", &exp.master),
    ];
    for (name, t) in parts {
        open_close(out, name, |out| {
            for (tag, addr) in [(b"src".as_slice(), &t.src), (b"dst", &t.dst)] {
                open_close(out, tag, |out| {
                    if let Some(a) = addr {
                        super::text::put_ip(out, a);
                    }
                });
            }
        });
    }
    let l4 = exp.tuple.l4proto.unwrap_or(0);
    out.extend_from_slice(b"</layer3><layer4 protonum=\"");
    put_u64(out, l4.into());
    out.extend_from_slice(b"\" protoname=\"");
    out.extend_from_slice(proto_name(l4).as_bytes());
    out.extend_from_slice(b"\">");
    for (name, t) in parts {
        open_close(out, name, |out| put_l4(out, t, t.l4proto.unwrap_or(0)));
    }
    out.extend_from_slice(b"</layer4><meta>");
    if let Some(helper) = &exp.helper {
        element_str(out, b"helper-name", helper);
    }
    element(out, b"timeout", exp.timeout.unwrap_or(0).into());
    if let Some(zone) = exp.zone {
        element(out, b"zone", zone.into());
    }
    if let Some(class) = exp.class {
        element(out, b"class", class.into());
    }
    if let Some(secs) = when {
        put_when(out, secs);
    }
    for name in flag_names(exp.flags.unwrap_or(0)) {
        out.push(b'<');
        out.extend_from_slice(name.to_ascii_lowercase().as_bytes());
        out.extend_from_slice(b"/>");
    }
    out.extend_from_slice(b"</meta></flow>\n");
}

/// `<name>` ... `</name>` around what `inner` writes.
fn open_close(out: &mut Vec<u8>, name: &[u8], inner: impl FnOnce(&mut Vec<u8>)) {
    out.push(b'<');
    out.extend_from_slice(name);
    out.push(b'>');
    inner(out);
    out.extend_from_slice(b"</");
    out.extend_from_slice(name);
    out.push(b'>');
}

/// One tuple of an expectation in JSON.
#[derive(Serialize)]
struct JsonTuple {
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    sport: Option<u16>,
    dport: Option<u16>,
}

impl From<&Tuple> for JsonTuple {
    fn from(t: &Tuple) -> Self {
        Self {
            src: t.src,
            dst: t.dst,
            sport: t.sport,
            dport: t.dport,
        }
    }
}

/// An expectation in JSON, keys in this order (the README's schema).
#[derive(Serialize)]
struct JsonExpect<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    time_ns: Option<u64>,
    family: &'static str,
    proto: &'static str,
    protonum: u8,
    timeout: Option<u32>,
    expected: JsonTuple,
    mask: JsonTuple,
    master: JsonTuple,
    master_proto: Option<u8>,
    helper: Option<&'a str>,
    class: Option<u32>,
    flags: Vec<&'static str>,
    zone: Option<u16>,
    id: Option<u32>,
}

/// Writes one JSON object, with a newline (ctscope's own format; see the
/// README's schema); events carry their kind and when they were received.
pub fn write_json(out: &mut Vec<u8>, exp: &Expect, event: Option<EventKind>, time_ns: Option<u64>) {
    let l4 = exp.tuple.l4proto.unwrap_or(0);
    let v = JsonExpect {
        event: event.map(|kind| match kind {
            EventKind::New => "NEW",
            EventKind::Update => "UPDATE",
            EventKind::Destroy => "DESTROY",
        }),
        time_ns: event.and(time_ns),
        family: l3_name(exp.family),
        proto: proto_name(l4),
        protonum: l4,
        timeout: exp.timeout,
        expected: (&exp.tuple).into(),
        mask: (&exp.mask).into(),
        master: (&exp.master).into(),
        master_proto: exp.master.l4proto,
        helper: exp.helper.as_deref(),
        class: exp.class,
        flags: flag_names(exp.flags.unwrap_or(0)).collect(),
        zone: exp.zone,
        id: exp.id,
    };
    // Serialising plain data into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &v);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(src: &str, dst: &str, l4: u8, sport: u16, dport: u16) -> Tuple {
        Tuple {
            src: Some(src.parse().expect("addr")),
            dst: Some(dst.parse().expect("addr")),
            l4proto: Some(l4),
            sport: Some(sport),
            dport: Some(dport),
            ..Tuple::default()
        }
    }

    /// The sip REGISTER expectation conntrack 1.4.7 printed on 6.18.
    fn sip() -> Expect {
        Expect {
            family: libc::AF_INET as u8,
            master: tuple("127.0.0.1", "127.0.0.4", 17, 5062, 5060),
            tuple: tuple("127.0.0.4", "127.0.0.1", 17, 0, 5062),
            mask: tuple("255.255.255.255", "255.255.255.255", 17, 0, 65535),
            timeout: Some(179),
            helper: Some("sip".into()),
            flags: Some(flags::PERMANENT | flags::INACTIVE),
            class: Some(0),
            ..Expect::default()
        }
    }

    fn text(exp: &Expect, event: Option<EventKind>) -> String {
        let mut out = Vec::new();
        write_text(&mut out, exp, event);
        String::from_utf8(out).expect("utf-8")
    }

    fn xml(exp: &Expect, event: Option<EventKind>) -> String {
        let mut out = Vec::new();
        write_xml(&mut out, exp, event, None);
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn text_lines_as_conntrack_printed_them() {
        assert_eq!(
            text(&sip(), None),
            "179 proto=17 src=127.0.0.4 dst=127.0.0.1 sport=0 dport=5062 \
             mask-src=255.255.255.255 mask-dst=255.255.255.255 sport=0 dport=65535 \
             master-src=127.0.0.1 master-dst=127.0.0.4 sport=5062 dport=5060 \
             PERMANENT,INACTIVE class=0 helper=sip\n"
        );
        // conntrack 1.4.7's -I expect put the tuple port's first byte in
        // the protocol (here 19): no ports for the tuple and the mask.
        let mut odd = sip();
        odd.tuple.l4proto = Some(19);
        odd.mask.l4proto = Some(19);
        odd.flags = Some(0);
        odd.timeout = Some(299);
        assert_eq!(
            text(&odd, Some(EventKind::Destroy)),
            "[DESTROY] 299 proto=19 src=127.0.0.4 dst=127.0.0.1 \
             mask-src=255.255.255.255 mask-dst=255.255.255.255 \
             master-src=127.0.0.1 master-dst=127.0.0.4 sport=5062 dport=5060 class=0 helper=sip\n"
        );
        // Nothing after the flags: no trailing space.
        let bare = Expect {
            class: None,
            helper: None,
            flags: Some(flags::USERSPACE),
            ..sip()
        };
        assert!(text(&bare, Some(EventKind::New)).ends_with("dport=5060 USERSPACE\n"));
        assert!(text(&bare, Some(EventKind::New)).starts_with("    [NEW] 179 proto=17 "));
    }

    #[test]
    fn xml_flows_as_conntrack_printed_them() {
        assert_eq!(
            xml(&sip(), Some(EventKind::New)),
            "<flow type=\"new\"><layer3 protonum=\"2\" protoname=\"ipv4\">\
             <expected><src>127.0.0.4</src><dst>127.0.0.1</dst></expected>\
             <mask><src>255.255.255.255</src><dst>255.255.255.255</dst></mask>\
             <master><src>127.0.0.1</src><dst>127.0.0.4</dst></master></layer3>\
             <layer4 protonum=\"17\" protoname=\"udp\"><expected><sport>0</sport><dport>5062</dport></expected>\
             <mask><sport>0</sport><dport>65535</dport></mask>\
             <master><sport>5062</sport><dport>5060</dport></master></layer4>\
             <meta><helper-name>sip</helper-name><timeout>179</timeout><class>0</class>\
             <permanent/><inactive/></meta></flow>\n"
        );
        // -o xml,timestamp: <when> between the class and the flags.
        let mut out = Vec::new();
        write_xml(&mut out, &sip(), None, Some(0));
        let line = String::from_utf8(out).expect("utf-8");
        assert!(line.contains("<class>0</class><when><hour>"), "{line}");
        assert!(
            line.contains("</year></when><permanent/><inactive/></meta>"),
            "{line}"
        );
        let mut odd = sip();
        odd.tuple.l4proto = Some(46);
        odd.mask.l4proto = Some(46);
        odd.flags = Some(0);
        let line = xml(&odd, None);
        assert!(
            line.contains(
                "<layer4 protonum=\"46\" protoname=\"unknown\"><expected></expected><mask></mask>\
                 <master><sport>5062</sport>"
            ),
            "{line}"
        );
        assert!(line.starts_with("<flow><layer3 "), "{line}");
    }

    #[test]
    fn json_is_one_parseable_object() {
        use serde_json::{Value, json};
        let mut out = Vec::new();
        write_json(&mut out, &sip(), Some(EventKind::Destroy), Some(5));
        assert!(out.starts_with(br#"{"event":"DESTROY","time_ns":5,"family":"ipv4","#));
        let v: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["event"], "DESTROY");
        assert_eq!(v["proto"], "udp");
        assert_eq!(v["flags"], json!(["PERMANENT", "INACTIVE"]));
        assert_eq!(v["expected"]["dport"], 5062);
        assert_eq!(v["master"]["src"], "127.0.0.1");
        assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1);
        // A listing has no event keys.
        let mut out = Vec::new();
        write_json(&mut out, &sip(), None, Some(5));
        assert!(out.starts_with(br#"{"family":"ipv4","proto":"udp","#));
    }
}
