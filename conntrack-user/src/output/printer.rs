//! Writes entries and events to stdout in large chunks (memory stays
//! bounded), conntrack's XML document lines around them, and its summary
//! lines to stderr.
use std::{
    io::{self, Write},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use super::{Format, OutputOptions, expect, json, save, text, xml};
use crate::{
    ct::{Conntrack, EventKind},
    expect::Expect,
    netlink::progname::ProgName,
    source::Event,
};

/// Bytes gathered before a write to stdout.
const OUT_CHUNK: usize = 256 * 1024;

fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Prints conntrack's summary line on stderr: `ctscope vX
/// (conntrack-tools compatible): WHAT.`, e.g. `3 flow entries have been
/// shown`.
pub fn summary(what: &str) {
    eprintln!(
        "ctscope v{} (conntrack-tools compatible): {what}.",
        env!("CARGO_PKG_VERSION")
    );
}

/// Which command's entries a [`Printer`] writes: conntrack frames and
/// words them differently.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Listing {
    /// `-L` and `-E`: the XML header before the first entry and the footer
    /// after the last (nothing at all when there is none).
    #[default]
    List,
    /// `-G`: the XML header, no footer (conntrack 1.4.7 prints none).
    Get,
    /// `-D`: bare XML flows; `-D` save lines; no labels and no
    /// `-o ktimestamp` in any format (conntrack's delete callback passes
    /// neither).
    Delete,
}

/// Writes entries or events to stdout (or another sink) in large chunks.
pub struct Printer<W: Write = io::Stdout> {
    out: Vec<u8>,
    sink: W,
    opts: OutputOptions,
    listing: Listing,
    /// Whether the XML header has been written (so the footer is due).
    xml_started: bool,
    /// The XML document's first lines and last line: `<conntrack>`, or
    /// `<expect>` for expectations.
    xml_header: &'static [u8],
    xml_footer: &'static [u8],
    /// Wall clock for `delta-time` of listed entries.
    now_secs: i64,
    prognames: ProgName,
    error: Option<io::Error>,
}

impl Printer {
    /// A printer to stdout with these `-o` options, for a listing or events.
    pub fn new(opts: OutputOptions) -> Self {
        Self::for_listing(opts, Listing::List)
    }

    /// A printer with these `-o` options for this command's entries.
    pub fn for_listing(opts: OutputOptions, listing: Listing) -> Self {
        Printer::with_sink(opts, listing, io::stdout())
    }

    /// A printer to stdout for expectations (`-L expect`, `-E expect`):
    /// their XML document is `<expect>`.
    pub fn for_expectations(opts: OutputOptions) -> Self {
        let mut p = Self::new(opts);
        p.xml_header = expect::XML_HEADER;
        p.xml_footer = expect::XML_FOOTER;
        p
    }
}

impl<W: Write> Printer<W> {
    /// A printer for this command's entries that writes to `sink`.
    pub fn with_sink(mut opts: OutputOptions, listing: Listing, sink: W) -> Self {
        if listing == Listing::Delete {
            opts.ktimestamp = false;
            opts.labels = None;
        }
        Self {
            out: Vec::with_capacity(OUT_CHUNK + 4096),
            sink,
            opts,
            listing,
            xml_started: false,
            xml_header: xml::HEADER,
            xml_footer: xml::FOOTER,
            now_secs: i64::try_from(now().as_secs()).unwrap_or(i64::MAX),
            prognames: ProgName::default(),
            error: None,
        }
    }

    /// Writes the XML header before the first flow, where conntrack does.
    fn start_xml(&mut self) {
        if !self.xml_started && self.listing != Listing::Delete {
            self.xml_started = true;
            self.out.extend_from_slice(self.xml_header);
        }
    }

    /// Adds one entry; false once stdout has failed.
    pub fn entry(&mut self, ct: &Conntrack) -> bool {
        match self.opts.format {
            Format::Json => {
                json::write_json(&mut self.out, ct, &self.opts, json::EventMeta::default());
            }
            Format::Xml => {
                self.start_xml();
                xml::write_xml(&mut self.out, ct, &self.opts, None, self.now_secs);
            }
            Format::Save => {
                let kind = if self.listing == Listing::Delete {
                    EventKind::Destroy
                } else {
                    EventKind::New
                };
                save::write_save(&mut self.out, ct, kind);
            }
            Format::Text => text::write_text(&mut self.out, ct, &self.opts, None, self.now_secs),
        }
        self.flush_if_full()
    }

    /// Adds one event line; false once stdout has failed.
    pub fn event(&mut self, ev: &Event<'_>) -> bool {
        let at = Duration::from_nanos(ev.time_ns);
        let secs = i64::try_from(at.as_secs()).unwrap_or(i64::MAX);
        if self.opts.format == Format::Json {
            let meta = json::EventMeta {
                kind: Some(ev.kind),
                time_ns: Some(ev.time_ns),
                source: Some(ev.source),
                netns: ev.netns,
            };
            json::write_json(&mut self.out, ev.ct, &self.opts, meta);
        } else {
            match self.opts.format {
                Format::Xml => {
                    self.start_xml();
                    xml::write_xml(&mut self.out, ev.ct, &self.opts, Some(ev.kind), secs);
                }
                Format::Save => save::write_save(&mut self.out, ev.ct, ev.kind),
                _ => {
                    if self.opts.timestamp {
                        // conntrack's "[%-.8ld.%-.6ld]\t".
                        let _ = write!(
                            self.out,
                            "[{:08}.{:06}]\t",
                            at.as_secs(),
                            at.subsec_micros()
                        );
                    }
                    text::write_text(&mut self.out, ev.ct, &self.opts, Some(ev.kind), secs);
                }
            }
            // conntrack ends XML flows and save lines with [USERSPACE]
            // too; ctscope's netns= goes with it.
            if let Some(netns) = ev.netns {
                self.out.pop();
                let _ = write!(self.out, " netns={netns}");
                self.out.push(b'\n');
            }
            if ev.portid != 0 {
                self.out.pop();
                let _ = write!(self.out, " [USERSPACE] portid={}", ev.portid);
                if let Some(name) = self.prognames.lookup(ev.portid) {
                    let _ = write!(self.out, " progname={name}");
                }
                self.out.push(b'\n');
            }
        }
        self.flush_if_full()
    }

    /// Adds one expectation, listed (`event` None) or an event with the
    /// time it was received; false once stdout has failed. As conntrack,
    /// only `-o xml`, `-o timestamp` (and ctscope's json) change the
    /// output; `save` prints the text line.
    pub fn expectation(&mut self, exp: &Expect, event: Option<(EventKind, u64)>) -> bool {
        let at = match event {
            Some((_, ns)) => Duration::from_nanos(ns),
            None => now(),
        };
        let kind = event.map(|(k, _)| k);
        match self.opts.format {
            Format::Json => {
                expect::write_json(&mut self.out, exp, kind, event.map(|(_, ns)| ns));
            }
            Format::Xml => {
                self.start_xml();
                let when = self
                    .opts
                    .timestamp
                    .then(|| i64::try_from(at.as_secs()).unwrap_or(i64::MAX));
                expect::write_xml(&mut self.out, exp, kind, when);
            }
            Format::Save | Format::Text => {
                if self.opts.timestamp {
                    // conntrack's "[%-8ld.%-6ld]\t" for expectations: the
                    // microseconds padded with spaces on the right.
                    let _ = write!(
                        self.out,
                        "[{:<8}.{:<6}]\t",
                        at.as_secs(),
                        at.subsec_micros()
                    );
                }
                expect::write_text(&mut self.out, exp, kind);
            }
        }
        self.flush_if_full()
    }

    fn flush_if_full(&mut self) -> bool {
        if self.out.len() >= OUT_CHUNK {
            return self.flush();
        }
        self.error.is_none()
    }

    /// Writes out what is gathered; false once stdout has failed.
    pub fn flush(&mut self) -> bool {
        if self.error.is_some() {
            return false;
        }
        if let Err(e) = self.sink.write_all(&self.out) {
            self.error = Some(e);
            return false;
        }
        self.out.clear();
        true
    }

    /// Writes out the rest (and the XML footer, when a listing or an
    /// event run wrote the header); the first write error, if any.
    pub fn finish(mut self) -> io::Result<()> {
        if self.xml_started && self.listing == Listing::List {
            self.out.extend_from_slice(self.xml_footer);
        }
        self.flush();
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        self.sink.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ct::samples::tcp_established;

    fn opts(o: &str) -> OutputOptions {
        OutputOptions::parse([o]).expect("parses")
    }

    /// What a printer writes for `entries` entries, then finish.
    fn listed(o: &str, listing: Listing, entries: usize) -> String {
        let mut sink = Vec::new();
        let mut p = Printer::with_sink(opts(o), listing, &mut sink);
        for _ in 0..entries {
            assert!(p.entry(&tcp_established()));
        }
        p.finish().expect("a Vec takes everything");
        String::from_utf8(sink).expect("utf8")
    }

    #[test]
    fn xml_document_lines_as_each_command_prints_them() {
        let header = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<conntrack>\n";
        // -L: header, flows, footer; nothing at all for an empty listing.
        let list = listed("xml", Listing::List, 2);
        assert!(list.starts_with(&format!("{header}<flow><meta")), "{list}");
        assert!(list.ends_with("</flow>\n</conntrack>\n"), "{list}");
        assert_eq!(list.lines().count(), 5);
        assert_eq!(listed("xml", Listing::List, 0), "");
        // -G: no footer; -D: flows only.
        let get = listed("xml", Listing::Get, 1);
        assert!(
            get.starts_with(header) && get.ends_with("</flow>\n"),
            "{get}"
        );
        assert_eq!(get.lines().count(), 3);
        let deleted = listed("xml", Listing::Delete, 2);
        assert!(deleted.starts_with("<flow><meta") && deleted.ends_with("</flow>\n"));
        assert_eq!(deleted.lines().count(), 2);
        // Text and save have no document lines.
        assert_eq!(listed("save", Listing::List, 1).lines().count(), 1);
    }

    #[test]
    fn save_words_and_delete_options() {
        assert!(listed("save", Listing::List, 1).starts_with("-A -t 99 "));
        assert!(listed("save", Listing::Get, 1).starts_with("-A -t 99 "));
        assert!(listed("save", Listing::Delete, 1).starts_with("-D -t 99 "));
        // conntrack -D prints no [start=...] (nor labels), -L does.
        assert!(listed("ktimestamp", Listing::List, 1).contains(" [start="));
        assert!(!listed("ktimestamp", Listing::Delete, 1).contains(" [start="));
        assert!(listed("xml,ktimestamp", Listing::List, 1).contains("<timestamp>"));
        assert!(!listed("xml,ktimestamp", Listing::Delete, 1).contains("<timestamp>"));
    }

    #[test]
    fn events_in_xml_and_save() {
        let ct = tcp_established();
        let event = |kind, portid| Event {
            kind,
            ct: &ct,
            time_ns: 1_700_000_005_000_000_000,
            portid,
            netns: None,
            delivery_ns: None,
            source: "netlink",
        };
        let mut sink = Vec::new();
        let mut p = Printer::with_sink(opts("xml"), Listing::List, &mut sink);
        assert!(p.event(&event(EventKind::New, 0)));
        // A portid no program holds: no progname.
        assert!(p.event(&event(EventKind::Destroy, u32::MAX)));
        p.finish().expect("a Vec takes everything");
        let text = String::from_utf8(sink).expect("utf8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(lines[2].starts_with("<flow type=\"new\">") && lines[2].ends_with("</flow>"));
        assert!(lines[3].starts_with("<flow type=\"destroy\">"));
        assert!(lines[3].ends_with("</flow> [USERSPACE] portid=4294967295"));
        assert_eq!(lines[4], "</conntrack>");

        let mut sink = Vec::new();
        let mut p = Printer::with_sink(opts("save"), Listing::List, &mut sink);
        for kind in [EventKind::New, EventKind::Update, EventKind::Destroy] {
            assert!(p.event(&event(kind, 0)));
        }
        p.finish().expect("a Vec takes everything");
        let words: Vec<String> = String::from_utf8(sink)
            .expect("utf8")
            .lines()
            .map(|l| l[..2].to_string())
            .collect();
        assert_eq!(words, ["-A", "-U", "-D"]);
    }
}
