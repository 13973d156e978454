//! The expectation table's domain: an expectation (what a helper such as
//! ftp or sip expects a related connection to look like), its flags, and
//! the tables conntrack(8) names on its command line. No output code and
//! no kernel I/O.
use crate::ct::Tuple;

/// `NF_CT_EXPECT_*` flags (include/uapi/linux/netfilter/nf_conntrack_common.h).
pub mod flags {
    /// Stays after a connection matched it (sip's REGISTER expectations).
    pub const PERMANENT: u32 = 1 << 0;
    /// Matches nothing until the helper activates it.
    pub const INACTIVE: u32 = 1 << 1;
    /// Made by a program through ctnetlink, without a helper.
    pub const USERSPACE: u32 = 1 << 2;
}

/// One expectation, as ctnetlink describes it (`CTA_EXPECT_*`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expect {
    /// Address family (`AF_INET`, `AF_INET6`) from the nfgenmsg header.
    pub family: u8,
    /// The original tuple of the connection that made it (`CTA_EXPECT_MASTER`).
    pub master: Tuple,
    /// The tuple a new connection must have (`CTA_EXPECT_TUPLE`), under
    /// [`Self::mask`].
    pub tuple: Tuple,
    /// Which bits of the tuple count (`CTA_EXPECT_MASK`): a zero port is
    /// any port.
    pub mask: Tuple,
    /// Seconds left.
    pub timeout: Option<u32>,
    /// The kernel's id of the expectation.
    pub id: Option<u32>,
    /// The helper that made it (`ftp`, `sip`, ...).
    pub helper: Option<Box<str>>,
    /// Zone (`CTA_EXPECT_ZONE`; 6.18 does not send it in dumps).
    pub zone: Option<u16>,
    /// `NF_CT_EXPECT_*` bits ([`flags`]).
    pub flags: Option<u32>,
    /// The helper's expectation class.
    pub class: Option<u32>,
    /// The name of the function run on the new connection (`CTA_EXPECT_FN`).
    pub func: Option<Box<str>>,
}

/// The tables conntrack(8) takes after a command (`-L expect`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Table {
    /// The connection tracking table (the default).
    #[default]
    Conntrack,
    /// The expectation table.
    Expect,
    /// Entries on their way out whose events are not delivered yet.
    Dying,
    /// Entries not yet confirmed (inserted into the table).
    Unconfirmed,
}

impl Table {
    /// Reads a table name as conntrack 1.4.7 does: any prefix of a name,
    /// tried in the order expect, conntrack, dying, unconfirmed (so `e`
    /// and even an empty word mean expect, `c` conntrack).
    pub fn parse(s: &str) -> Result<Self, String> {
        [
            ("expect", Self::Expect),
            ("conntrack", Self::Conntrack),
            ("dying", Self::Dying),
            ("unconfirmed", Self::Unconfirmed),
        ]
        .into_iter()
        .find(|(name, _)| name.starts_with(s))
        .map(|(_, table)| table)
        .ok_or_else(|| format!("unknown type `{s}'"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_as_conntrack_reads_them() {
        for (word, table) in [
            ("expect", Table::Expect),
            ("exp", Table::Expect),
            ("e", Table::Expect),
            ("", Table::Expect),
            ("conntrack", Table::Conntrack),
            ("conn", Table::Conntrack),
            ("dying", Table::Dying),
            ("d", Table::Dying),
            ("unconfirmed", Table::Unconfirmed),
            ("u", Table::Unconfirmed),
        ] {
            assert_eq!(Table::parse(word), Ok(table), "{word}");
        }
        for bad in ["expectations", "conntrackx", "x", "Expect"] {
            assert_eq!(
                Table::parse(bad),
                Err(format!("unknown type `{bad}'")),
                "{bad}"
            );
        }
    }
}
