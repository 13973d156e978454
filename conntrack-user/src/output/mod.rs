//! Output: conntrack(8)-identical text lines ([`text`]), JSON lines
//! ([`json`]), and the [`Printer`] that writes either to stdout in large
//! chunks with conntrack's summary lines.
use std::collections::BTreeMap;

pub mod json;
mod printer;
pub mod text;

pub use printer::{Printer, summary};

/// `-o` options, combinable as in conntrack.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutputOptions {
    /// `-o extended`: the layer 3 protocol first.
    pub extended: bool,
    /// `-o id`: the entry id.
    pub id: bool,
    /// `-o ktimestamp`: start and stop times.
    pub ktimestamp: bool,
    /// `-o labels`: label names from connlabel.conf.
    pub labels: Option<LabelMap>,
    /// `-o timestamp`: the time an event was received (events only).
    pub timestamp: bool,
    /// `-o json`: one JSON object per line.
    pub json: bool,
}

/// Why an `-o` value was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "unknown output format `{0}' (try extended, id, ktimestamp, labels, timestamp, userspace, json)"
)]
pub struct BadOutputOption(pub String);

impl OutputOptions {
    /// Parses a comma-separated `-o` value (repeatable).
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> Result<Self, BadOutputOption> {
        let mut o = Self::default();
        for value in values {
            for word in value.split(',') {
                match word.trim() {
                    "extended" => o.extended = true,
                    "id" => o.id = true,
                    "ktimestamp" => o.ktimestamp = true,
                    "timestamp" => o.timestamp = true,
                    "json" => o.json = true,
                    // conntrack 1.4.7 marks program-made events with
                    // [USERSPACE] whether or not this is given; so do we.
                    "userspace" => {}
                    "labels" => o.labels = Some(LabelMap::load_default()),
                    other => return Err(BadOutputOption(other.to_string())),
                }
            }
        }
        Ok(o)
    }
}

/// Where conntrack (libnetfilter_conntrack) looks for label names.
pub const CONNLABEL_PATHS: [&str; 2] = ["/etc/xtables/connlabel.conf", "/etc/connlabel.conf"];

/// Label bit to name, from connlabel.conf (as `conntrack -o labels`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelMap {
    names: BTreeMap<u16, String>,
    /// Whether a connlabel.conf was read: without one, conntrack prints no
    /// labels at all.
    pub loaded: bool,
}

impl LabelMap {
    /// Reads connlabel.conf from the first of [`CONNLABEL_PATHS`] that
    /// exists. When none can be read, says so once on stderr, as conntrack
    /// does, and labels are known by bit number only.
    pub fn load_default() -> Self {
        static WARNED: std::sync::Once = std::sync::Once::new();
        let mut first_error = None;
        for path in CONNLABEL_PATHS {
            match std::fs::read(path) {
                Ok(bytes) => return Self::parse(&bytes),
                Err(e) => {
                    first_error.get_or_insert((path, e));
                }
            }
        }
        if let Some((path, e)) = first_error {
            WARNED.call_once(|| {
                eprintln!("ctscope: cannot read {path} ({e}): labels are known by bit number only");
            });
        }
        Self::default()
    }

    /// Parses connlabel.conf: `BIT NAME` per line, `#` comments. A line
    /// that is not UTF-8 is read as far as it goes (the rest still
    /// counts); a bit named twice keeps its first name, as conntrack does.
    pub fn parse(bytes: &[u8]) -> Self {
        let mut names = BTreeMap::new();
        for line in bytes.split(|b| *b == b'\n') {
            let line = String::from_utf8_lossy(line);
            let line = line.split('#').next().unwrap_or("").trim();
            let mut parts = line.split_whitespace();
            if let (Some(bit), Some(name)) = (parts.next(), parts.next())
                && let Ok(bit) = bit.parse::<u16>()
                && bit < 128
            {
                names.entry(bit).or_insert_with(|| name.to_string());
            }
        }
        Self {
            names,
            loaded: true,
        }
    }

    /// The name of a label bit.
    pub fn name(&self, bit: u16) -> Option<&str> {
        self.names.get(&bit).map(String::as_str)
    }

    /// The bit of a label name (or a number).
    pub fn bit(&self, name: &str) -> Option<u16> {
        self.names
            .iter()
            .find(|(_, n)| n.as_str() == name)
            .map(|(b, _)| *b)
            .or_else(|| name.parse().ok().filter(|b| *b < 128))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_options_parse_and_refuse() {
        let o = OutputOptions::parse(["extended", "id,ktimestamp"]).expect("parses");
        assert!(o.extended && o.id && o.ktimestamp && !o.json);
        assert_eq!(
            OutputOptions::parse(["xml"]),
            Err(BadOutputOption("xml".into()))
        );
    }
}
