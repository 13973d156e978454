//! Writes entries and events to stdout in large chunks (memory stays
//! bounded), and conntrack's summary lines to stderr.
use std::{
    io::{self, Write},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use super::{OutputOptions, json, text};
use crate::{ct::Conntrack, netlink::progname::ProgName, source::Event};

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

/// Writes entries or events to stdout in large chunks.
pub struct Printer {
    out: Vec<u8>,
    stdout: io::Stdout,
    opts: OutputOptions,
    /// Wall clock for `delta-time` of listed entries.
    now_secs: i64,
    prognames: ProgName,
    error: Option<io::Error>,
}

impl Printer {
    /// A printer with these `-o` options.
    pub fn new(opts: OutputOptions) -> Self {
        Self {
            out: Vec::with_capacity(OUT_CHUNK + 4096),
            stdout: io::stdout(),
            opts,
            now_secs: i64::try_from(now().as_secs()).unwrap_or(i64::MAX),
            prognames: ProgName::default(),
            error: None,
        }
    }

    /// Adds one entry; false once stdout has failed.
    pub fn entry(&mut self, ct: &Conntrack) -> bool {
        if self.opts.json {
            json::write_json(&mut self.out, ct, &self.opts, json::EventMeta::default());
        } else {
            text::write_text(&mut self.out, ct, &self.opts, None, self.now_secs);
        }
        self.flush_if_full()
    }

    /// Adds one event line; false once stdout has failed.
    pub fn event(&mut self, ev: &Event<'_>) -> bool {
        let at = Duration::from_nanos(ev.time_ns);
        if self.opts.json {
            let meta = json::EventMeta {
                kind: Some(ev.kind),
                time_ns: Some(ev.time_ns),
                source: Some(ev.source),
                netns: ev.netns,
            };
            json::write_json(&mut self.out, ev.ct, &self.opts, meta);
        } else {
            if self.opts.timestamp {
                // conntrack's "[%-.8ld.%-.6ld]\t".
                let _ = write!(
                    self.out,
                    "[{:08}.{:06}]\t",
                    at.as_secs(),
                    at.subsec_micros()
                );
            }
            let secs = i64::try_from(at.as_secs()).unwrap_or(i64::MAX);
            text::write_text(&mut self.out, ev.ct, &self.opts, Some(ev.kind), secs);
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
        if let Err(e) = self.stdout.lock().write_all(&self.out) {
            self.error = Some(e);
            return false;
        }
        self.out.clear();
        true
    }

    /// Writes out the rest; the first write error, if any.
    pub fn finish(mut self) -> io::Result<()> {
        self.flush();
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        self.stdout.lock().flush()
    }
}
