//! What `top` shows of the table: the sort, the filters and iptstate's
//! switches (inverted filters, no DNS, no loopback, names), and the totals
//! line. [`super::rows`] selects and spells the rows a view asks for.
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use super::{resolve::Names, rows::SortKey};
use crate::{
    ct::{Conntrack, is_icmp, proto},
    filter::Filter,
    table::Tracked,
};

/// How the rows are chosen, ordered and spelled.
#[derive(Clone, Debug, Default)]
pub struct View {
    /// Sort column.
    pub sort: SortKey,
    /// Largest first.
    pub reverse: bool,
    /// The shared filters.
    pub filter: Filter,
    /// `/` filter: rows whose text contains this.
    pub text: String,
    /// The table's clock for the TTL column ([`crate::table::Table::now_ms`]).
    pub now_ms: u32,
    /// `--invert-filters` (`i`): rows matching none of the filter's
    /// conditions, as iptstate's `-i` inverts each of its filters.
    pub invert: bool,
    /// `--no-dns` (`L`): no TCP or UDP flows to port 53 (iptstate's
    /// "outgoing DNS lookup states").
    pub no_dns: bool,
    /// `--no-loopback` (`f`): no flows from 127.0.0.1 or ::1 (iptstate's
    /// `-f`, which looks at the original source only).
    pub no_loopback: bool,
    /// `--lookup` (`l`): host and service names where known, in place of
    /// addresses and port numbers (and for the `/` filter to search).
    pub names: Option<Names>,
}

/// Whether an entry is a DNS query iptstate's `-L` hides: TCP or UDP to
/// port 53 (iptstate knows ports of TCP and UDP only).
pub fn is_dns(ct: &Conntrack) -> bool {
    matches!(ct.l4proto(), proto::TCP | proto::UDP) && ct.orig.dport == Some(53)
}

/// Whether an entry comes from the loopback address as iptstate's `-f`
/// sees it: an original source of exactly 127.0.0.1 or ::1.
pub fn is_loopback(ct: &Conntrack) -> bool {
    matches!(
        ct.orig.src,
        Some(IpAddr::V4(Ipv4Addr::LOCALHOST)) | Some(IpAddr::V6(Ipv6Addr::LOCALHOST))
    )
}

/// A view's row test, worked out once a frame.
pub(super) struct Criteria<'a> {
    pub(super) view: &'a View,
    /// With `invert`: the filter's conditions one by one.
    inverted: Option<Vec<Filter>>,
}

impl<'a> Criteria<'a> {
    pub(super) fn new(view: &'a View) -> Self {
        Self {
            view,
            inverted: view.invert.then(|| view.filter.conditions()),
        }
    }

    /// Whether a row passes everything but the `/` text.
    pub(super) fn passes(&self, ct: &Conntrack) -> bool {
        if (self.view.no_loopback && is_loopback(ct)) || (self.view.no_dns && is_dns(ct)) {
            return false;
        }
        match &self.inverted {
            Some(conditions) => !conditions.iter().any(|c| c.matches(ct)),
            None => self.view.filter.matches(ct),
        }
    }
}

/// iptstate's totals (`-t`): every entry by protocol, and how many the
/// filters hide.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Entries in the table.
    pub all: usize,
    /// TCP entries.
    pub tcp: usize,
    /// UDP entries.
    pub udp: usize,
    /// ICMP and ICMPv6 entries.
    pub icmp: usize,
    /// The rest.
    pub other: usize,
    /// Entries the filters hide.
    pub filtered: usize,
}

impl Totals {
    /// The totals of `entries`, of which `passing` pass the filters.
    pub fn count(entries: &[Tracked], passing: usize) -> Self {
        let mut t = Totals {
            all: entries.len(),
            filtered: entries.len().saturating_sub(passing),
            ..Totals::default()
        };
        for e in entries {
            match e.ct.l4proto() {
                proto::TCP => t.tcp += 1,
                proto::UDP => t.udp += 1,
                l4 if is_icmp(l4) => t.icmp += 1,
                _ => t.other += 1,
            }
        }
        t
    }
}

impl fmt::Display for Totals {
    /// iptstate's line, word for word.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Total States: {} -- TCP: {} UDP: {} ICMP: {} Other: {} (Filtered: {})",
            self.all, self.tcp, self.udp, self.icmp, self.other, self.filtered
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::{
        ct::{EventKind, samples::flow},
        table::Table,
        ui::rows::{cells, select},
    };

    /// A table for iptstate's switches: DNS over UDP and TCP, DNS port
    /// over SCTP (no ports for iptstate), loopback from 127.0.0.1, ::1 and
    /// 127.0.0.2, to 127.0.0.1, and ICMP.
    fn switches_table() -> Table {
        let mut t = Table::new();
        let now = Instant::now();
        let flows = [
            ("10.5.0.4", "10.6.0.3", proto::UDP, 5353, 53),
            ("10.5.0.7", "10.6.0.3", proto::TCP, 5354, 53),
            ("10.5.0.8", "10.6.0.8", proto::SCTP, 1, 53),
            ("127.0.0.1", "127.0.0.1", proto::UDP, 5000, 6000),
            ("::1", "::1", proto::UDP, 5003, 6001),
            ("127.0.0.2", "127.0.0.1", proto::UDP, 5001, 6000),
            ("10.5.0.9", "127.0.0.1", proto::UDP, 5002, 6000),
            ("10.5.0.1", "10.6.0.1", proto::TCP, 40001, 22),
            ("2001:db8::5", "2001:db8::6", proto::TCP, 40004, 8080),
        ];
        for (src, dst, l4, sport, dport) in flows {
            let ct = Conntrack {
                timeout: Some(60),
                ..flow(src, dst, l4, sport, dport)
            };
            t.apply(EventKind::New, &ct, now, None);
        }
        let icmp = Conntrack {
            timeout: Some(30),
            ..flow("10.5.0.6", "10.6.0.4", proto::ICMP, 0, 0)
        };
        t.apply(EventKind::New, &icmp, now, None);
        t
    }

    fn sources(t: &Table, v: &View) -> Vec<String> {
        let (rows, _) = select(t.entries(), v, usize::MAX);
        let mut s: Vec<String> = rows.iter().map(|r| cells(r, false, v)[0].clone()).collect();
        s.sort();
        s
    }

    #[test]
    fn no_dns_hides_tcp_and_udp_to_port_53() {
        let t = switches_table();
        let v = View {
            no_dns: true,
            ..View::default()
        };
        let shown = sources(&t, &v);
        assert!(!shown.contains(&"10.5.0.4:5353".to_string()), "{shown:?}");
        assert!(!shown.contains(&"10.5.0.7:5354".to_string()), "{shown:?}");
        // SCTP to 53 stays, as in iptstate.
        assert!(shown.contains(&"10.5.0.8:1".to_string()), "{shown:?}");
        assert_eq!(shown.len(), 8);
    }

    #[test]
    fn no_loopback_hides_what_comes_from_the_loopback_address() {
        let t = switches_table();
        let v = View {
            no_loopback: true,
            ..View::default()
        };
        let shown = sources(&t, &v);
        for gone in ["127.0.0.1:5000", "[::1]:5003"] {
            assert!(!shown.contains(&gone.to_string()), "{gone} in {shown:?}");
        }
        // Only the source counts, and only the loopback address itself.
        for kept in ["127.0.0.2:5001", "10.5.0.9:5002"] {
            assert!(shown.contains(&kept.to_string()), "{kept} not in {shown:?}");
        }
        assert_eq!(shown.len(), 8);
    }

    #[test]
    fn invert_shows_rows_matching_no_condition() {
        let t = switches_table();
        // As `-s 10.5.0.0/16` makes it, with the family it implies.
        let filter = Filter {
            family: Some(libc::AF_INET as u8),
            orig_src: Some("10.5.0.0/16".parse().expect("net")),
            orig_dport: Some(53),
            ..Filter::default()
        };
        let plain = View {
            filter: filter.clone(),
            ..View::default()
        };
        assert_eq!(
            sources(&t, &plain),
            ["10.5.0.4:5353", "10.5.0.7:5354", "10.5.0.8:1"]
        );
        let inverted = View {
            filter,
            invert: true,
            ..View::default()
        };
        // As iptstate -i -s 10.5.0.0/16 -D 53: neither from 10.5/16 nor
        // to port 53 (the IPv6 rows are outside an IPv4 network).
        assert_eq!(
            sources(&t, &inverted),
            [
                "127.0.0.1:5000",
                "127.0.0.2:5001",
                "[2001:db8::5]:40004",
                "[::1]:5003"
            ]
        );
        // Without filters, inverting hides nothing.
        let nothing = View {
            invert: true,
            ..View::default()
        };
        assert_eq!(sources(&t, &nothing).len(), 10);
        // The skips are not inverted.
        let skip = View {
            invert: true,
            no_dns: true,
            ..View::default()
        };
        assert_eq!(sources(&t, &skip).len(), 8);
    }

    #[test]
    fn totals_count_the_table_by_protocol() {
        let t = switches_table();
        let v = View {
            no_dns: true,
            no_loopback: true,
            ..View::default()
        };
        let (_, passing) = select(t.entries(), &v, 3);
        let totals = Totals::count(t.entries(), passing);
        assert_eq!(
            totals.to_string(),
            "Total States: 10 -- TCP: 3 UDP: 5 ICMP: 1 Other: 1 (Filtered: 4)"
        );
    }

    #[test]
    fn names_replace_addresses_and_ports_and_are_searched() {
        let t = switches_table();
        let mut hosts = std::collections::HashMap::new();
        hosts.insert("10.5.0.1".parse().expect("addr"), "client.test".into());
        hosts.insert("2001:db8::5".parse().expect("addr"), "v6.test".into());
        let names = Names {
            hosts: std::sync::Arc::new(hosts),
            services: std::sync::Arc::new(crate::ui::resolve::Services::parse(
                "ssh 22/tcp\ndomain 53/udp\n",
            )),
        };
        let mut v = View {
            names: Some(names),
            ..View::default()
        };
        let by_src: std::collections::HashMap<String, Vec<String>> = t
            .entries()
            .iter()
            .map(|e| {
                let c = cells(e, false, &v);
                (cells(e, false, &View::default())[0].clone(), c)
            })
            .collect();
        assert_eq!(
            by_src["10.5.0.1:40001"][..2],
            ["client.test:40001", "10.6.0.1:ssh"]
        );
        // An IPv6 name needs no brackets; an address without a name keeps them.
        assert_eq!(
            by_src["[2001:db8::5]:40004"][..2],
            ["v6.test:40004", "[2001:db8::6]:8080"]
        );
        assert_eq!(by_src["10.5.0.4:5353"][1], "10.6.0.3:domain");
        // The `/` filter searches what is shown.
        v.text = "client.test".into();
        assert_eq!(sources(&t, &v), ["client.test:40001"]);
        v.text = ":ssh".into();
        assert_eq!(select(t.entries(), &v, 10).1, 1);
    }
}
