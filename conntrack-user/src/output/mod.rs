//! Output: conntrack(8)-identical text lines ([`text`]), XML flows
//! ([`xml`]), `-o save` lines ([`save`]), JSON lines ([`json`]), and the
//! [`Printer`] that writes any of them to stdout in large chunks with
//! conntrack's summary lines.
use std::collections::BTreeMap;

mod append;
pub(crate) mod digits;
pub mod expect;
pub mod json;
mod printer;
pub mod save;
pub mod text;
pub mod xml;

pub use printer::{Listing, Printer, summary};

/// The shape of each printed entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// conntrack's text line (the default).
    #[default]
    Text,
    /// `-o xml`: conntrack's `<flow>` elements inside a `<conntrack>` document.
    Xml,
    /// `-o save`: the `-A ...` / `-D ...` lines `conntrack -I` and `-R` take.
    Save,
    /// `-o json`: one JSON object per line (ctscope's own).
    Json,
}

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
    /// Text, XML, save or JSON.
    pub format: Format,
}

/// Why an `-o` value was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OutputOptionError {
    /// A word that names no output option (conntrack: exit 2).
    #[error("Bad parameter `{0}'")]
    Unknown(String),
    /// `save` with anything but `userspace` (conntrack: exit 1).
    #[error("cannot combine save output with any other output type, use -o save only")]
    SaveCombined,
    /// `json` with `xml` (ctscope's own format; refused as a bad parameter).
    #[error("cannot combine json and xml output, use one of them")]
    JsonWithXml,
}

impl OutputOptionError {
    /// Whether conntrack treats it as a bad parameter (exit 2) rather than
    /// a failure (exit 1).
    pub fn is_usage(&self) -> bool {
        !matches!(self, Self::SaveCombined)
    }
}

/// The `-o` words in conntrack 1.4.7's order (a prefix selects the first
/// one it starts), then ctscope's `json`.
const WORDS: [&str; 9] = [
    "xml",
    "extended",
    "timestamp",
    "id",
    "ktimestamp",
    "labels",
    "userspace",
    "save",
    "json",
];

impl OutputOptions {
    /// Parses comma-separated `-o` values (repeatable). As conntrack does,
    /// a word may be any prefix of an option in any case (`-o x` is xml),
    /// and `save` combined with anything but `userspace` is refused, also
    /// across repeated `-o`.
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> Result<Self, OutputOptionError> {
        let mut o = Self::default();
        let (mut xml, mut save, mut json, mut labels) = (false, false, false, false);
        for value in values {
            let mut rest = value;
            for word in value.split(',') {
                let found = WORDS.iter().find(|w| {
                    !word.is_empty()
                        && w.len() >= word.len()
                        && w.as_bytes()[..word.len()].eq_ignore_ascii_case(word.as_bytes())
                });
                match found.copied() {
                    Some("xml") => xml = true,
                    Some("extended") => o.extended = true,
                    Some("timestamp") => o.timestamp = true,
                    Some("id") => o.id = true,
                    Some("ktimestamp") => o.ktimestamp = true,
                    Some("labels") => labels = true,
                    // conntrack 1.4.7 marks program-made events with
                    // [USERSPACE] whether or not this is given; so do we.
                    Some("userspace") => {}
                    Some("save") => save = true,
                    Some("json") => json = true,
                    // Like conntrack, name the value from the bad word on.
                    _ => return Err(OutputOptionError::Unknown(rest.to_string())),
                }
                rest = rest.get(word.len() + 1..).unwrap_or("");
            }
            // conntrack checks after each -o, against all seen so far.
            let others = o.extended || o.timestamp || o.id || o.ktimestamp;
            if save && (others || labels || xml || json) {
                return Err(OutputOptionError::SaveCombined);
            }
            if json && xml {
                return Err(OutputOptionError::JsonWithXml);
            }
        }
        // Read only once the options stand: a refused -o says nothing of
        // a missing connlabel.conf.
        if labels {
            o.labels = Some(LabelMap::load_default());
        }
        o.format = match (xml, save, json) {
            (true, _, _) => Format::Xml,
            (_, true, _) => Format::Save,
            (_, _, true) => Format::Json,
            _ => Format::Text,
        };
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
        assert!(o.extended && o.id && o.ktimestamp && o.format == Format::Text);
        assert_eq!(
            OutputOptions::parse(["bogus"]),
            Err(OutputOptionError::Unknown("bogus".into()))
        );
        // conntrack names the value from the bad word on.
        assert_eq!(
            OutputOptions::parse(["save,bogus"]),
            Err(OutputOptionError::Unknown("bogus".into()))
        );
        assert_eq!(
            OutputOptions::parse(["json,xml"]).err(),
            Some(OutputOptionError::JsonWithXml)
        );
        assert_eq!(
            OutputOptions::parse(["bogus,xml"]),
            Err(OutputOptionError::Unknown("bogus,xml".into()))
        );
        for bad in [&["", "x"][..], &["xmlx"], &["id,"]] {
            assert!(
                matches!(
                    OutputOptions::parse(bad.iter().copied()),
                    Err(OutputOptionError::Unknown(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn formats_prefixes_and_combinations_as_conntrack() {
        let f = |v: &[&str]| OutputOptions::parse(v.iter().copied()).map(|o| o.format);
        assert_eq!(f(&["xml"]), Ok(Format::Xml));
        assert_eq!(
            f(&["XML,extended,id,timestamp,ktimestamp"]),
            Ok(Format::Xml)
        );
        assert_eq!(f(&["save"]), Ok(Format::Save));
        assert_eq!(f(&["SA"]), Ok(Format::Save));
        assert_eq!(f(&["save,userspace"]), Ok(Format::Save));
        assert_eq!(f(&["json"]), Ok(Format::Json));
        assert_eq!(f(&["x"]), Ok(Format::Xml));
        // "t" is timestamp, "k" ktimestamp, "i" id: conntrack's order.
        let o = OutputOptions::parse(["t,k,i,e"]).expect("prefixes");
        assert!(o.timestamp && o.ktimestamp && o.id && o.extended);
        for combined in [
            &["save,extended"][..],
            &["save,id"],
            &["save,xml"],
            &["xml", "save"],
            &["save", "timestamp"],
            &["ktimestamp,save"],
            &["save,json"],
        ] {
            assert_eq!(
                f(combined),
                Err(OutputOptionError::SaveCombined),
                "{combined:?}"
            );
        }
        assert!(!OutputOptionError::SaveCombined.is_usage());
        assert_eq!(f(&["json,xml"]), Err(OutputOptionError::JsonWithXml));
        assert!(OutputOptionError::JsonWithXml.is_usage());
    }
}
