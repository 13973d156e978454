//! Entry filters shared by list, delete, events and top, with conntrack(8)'s
//! semantics. What the kernel can filter (family, mark/mask, zone, status)
//! is also sent with the dump request; the user-space check stays
//! authoritative, so an older kernel that ignores an attribute changes
//! speed, never results.
use std::net::IpAddr;

use ipnet::IpNet;

use crate::{
    ct::{Conntrack, ProtoState, Tuple, ips},
    netlink::{codec::AttrWriter, cta},
};

/// NAT filter: `-n`, `-g`, `-j`, each with an optional address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NatFilter {
    /// Not asked.
    #[default]
    Off,
    /// Any entry NATed this way.
    Any,
    /// NATed to this address.
    To(IpAddr),
}

/// Which protocol state `--state` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateFilter(pub ProtoState);

/// A conjunction of conditions on an entry. `Default` matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// `-f`: AF_INET or AF_INET6.
    pub family: Option<u8>,
    /// `-s`: original source address or network.
    pub orig_src: Option<IpNet>,
    /// `-d`: original destination.
    pub orig_dst: Option<IpNet>,
    /// `-r`: reply source.
    pub reply_src: Option<IpNet>,
    /// `-q`: reply destination.
    pub reply_dst: Option<IpNet>,
    /// `-p`: layer 4 protocol.
    pub l4proto: Option<u8>,
    /// `--sport`.
    pub orig_sport: Option<u16>,
    /// `--dport`.
    pub orig_dport: Option<u16>,
    /// `--reply-port-src`.
    pub reply_sport: Option<u16>,
    /// `--reply-port-dst`.
    pub reply_dport: Option<u16>,
    /// `--state`.
    pub state: Option<StateFilter>,
    /// `--icmp-type`.
    pub icmp_type: Option<u8>,
    /// `--icmp-code`.
    pub icmp_code: Option<u8>,
    /// `--icmp-id`.
    pub icmp_id: Option<u16>,
    /// `-m MARK[/MASK]`: (value, mask).
    pub mark: Option<(u32, u32)>,
    /// `-u`: `(value, mask)`: the entry's status masked equals value
    /// (ASSURED sets a bit in both; UNREPLIED puts SEEN_REPLY in the mask only).
    pub status: Option<(u32, u32)>,
    /// `-c`: security mark. ctnetlink has not reported one (CTA_SECMARK)
    /// since it took the security context instead, so an entry without one
    /// matches, as it does for conntrack.
    pub secmark: Option<u32>,
    /// `-w`: zone.
    pub zone: Option<u16>,
    /// `--orig-zone`.
    pub orig_zone: Option<u16>,
    /// `--reply-zone`.
    pub reply_zone: Option<u16>,
    /// `-n`.
    pub src_nat: NatFilter,
    /// `-g`.
    pub dst_nat: NatFilter,
    /// `-j`.
    pub any_nat: NatFilter,
    /// `-l`: label bits that must all be set.
    pub labels: Vec<u16>,
}

/// AF_INET or AF_INET6.
fn net_family(net: &IpNet) -> i32 {
    match net {
        IpNet::V4(_) => libc::AF_INET,
        IpNet::V6(_) => libc::AF_INET6,
    }
}

fn net_matches(net: &Option<IpNet>, addr: &Option<IpAddr>) -> bool {
    match (net, addr) {
        (None, _) => true,
        (Some(net), Some(a)) => net.contains(a),
        (Some(_), None) => false,
    }
}

fn eq_opt<T: PartialEq>(want: &Option<T>, have: &Option<T>) -> bool {
    want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
}

impl Filter {
    /// Whether the filter asks for nothing.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Whether `ct` passes every condition.
    pub fn matches(&self, ct: &Conntrack) -> bool {
        if self.family.is_some_and(|f| f != ct.family) {
            return false;
        }
        if !(net_matches(&self.orig_src, &ct.orig.src)
            && net_matches(&self.orig_dst, &ct.orig.dst)
            && net_matches(&self.reply_src, &ct.reply.src)
            && net_matches(&self.reply_dst, &ct.reply.dst))
        {
            return false;
        }
        if self.l4proto.is_some_and(|p| p != ct.l4proto()) {
            return false;
        }
        if !(eq_opt(&self.orig_sport, &ct.orig.sport)
            && eq_opt(&self.orig_dport, &ct.orig.dport)
            && eq_opt(&self.reply_sport, &ct.reply.sport)
            && eq_opt(&self.reply_dport, &ct.reply.dport)
            && eq_opt(&self.icmp_type, &ct.orig.icmp_type)
            && eq_opt(&self.icmp_code, &ct.orig.icmp_code)
            && eq_opt(&self.icmp_id, &ct.orig.icmp_id))
        {
            return false;
        }
        if let Some(StateFilter(want)) = self.state
            && ct.proto_state != Some(want)
        {
            return false;
        }
        if let Some((value, mask)) = self.mark
            && ct.mark.unwrap_or(0) & mask != value
        {
            return false;
        }
        if let Some((value, mask)) = self.status
            && ct.status.unwrap_or(0) & mask != value
        {
            return false;
        }
        if let (Some(want), Some(have)) = (self.secmark, ct.secmark())
            && want != have
        {
            return false;
        }
        // The kernel sends no zone attribute for zone 0.
        if self.zone.is_some_and(|z| z != ct.zone.unwrap_or(0))
            || self
                .orig_zone
                .is_some_and(|z| z != ct.orig.zone.unwrap_or(0))
            || self
                .reply_zone
                .is_some_and(|z| z != ct.reply.zone.unwrap_or(0))
        {
            return false;
        }
        if !self.nat_matches(ct) {
            return false;
        }
        if !self.labels.is_empty() {
            let Some(l) = ct.labels() else {
                return false;
            };
            if !self
                .labels
                .iter()
                .all(|bit| l[usize::from(bit / 8)] & (1 << (bit % 8)) != 0)
            {
                return false;
            }
        }
        true
    }

    /// conntrack's `filter_nat`: with -j, either; with -n and -g, both.
    /// Without an address, an entry is NATed when its address or its
    /// layer 4 "port" changed (libnetfilter_conntrack's IS_SNAT / IS_SPAT,
    /// which compare the raw tuple unions: for ICMP that is the id against
    /// type and code, so every NATed-hook ICMP entry counts); with an
    /// address, only the address test applies.
    fn nat_matches(&self, ct: &Conntrack) -> bool {
        let src_done = ct.has_status(ips::SRC_NAT_DONE);
        let dst_done = ct.has_status(ips::DST_NAT_DONE);
        let snat_addr = src_done && ct.reply.dst != ct.orig.src;
        let dnat_addr = dst_done && ct.reply.src != ct.orig.dst;
        let snat = |f: NatFilter| match f {
            NatFilter::Off => false,
            NatFilter::Any => snat_addr || (src_done && raw_dst(&ct.reply) != raw_src(&ct.orig)),
            NatFilter::To(a) => snat_addr && ct.reply.dst == Some(a),
        };
        let dnat = |f: NatFilter| match f {
            NatFilter::Off => false,
            NatFilter::Any => dnat_addr || (dst_done && raw_src(&ct.reply) != raw_dst(&ct.orig)),
            NatFilter::To(a) => dnat_addr && ct.reply.src == Some(a),
        };
        if self.any_nat != NatFilter::Off {
            return snat(self.any_nat) || dnat(self.any_nat);
        }
        match (self.src_nat, self.dst_nat) {
            (NatFilter::Off, NatFilter::Off) => true,
            (s, NatFilter::Off) => snat(s),
            (NatFilter::Off, d) => dnat(d),
            (s, d) => snat(s) && dnat(d),
        }
    }

    /// Each condition asked, as a filter of its own: `top
    /// --invert-filters` shows the entries that match none of them, as
    /// iptstate's `-i` inverts each of its filters. The NAT filters (-n,
    /// -g, -j, which combine) are one condition, and so are the labels; the
    /// family is none when an address has it already (`-s 10.0.0.0/8`
    /// implies `-f ipv4`, which says nothing more).
    pub fn conditions(&self) -> Vec<Filter> {
        // Destructured whole, so a new field cannot be forgotten here.
        let Filter {
            family,
            orig_src,
            orig_dst,
            reply_src,
            reply_dst,
            l4proto,
            orig_sport,
            orig_dport,
            reply_sport,
            reply_dport,
            state,
            icmp_type,
            icmp_code,
            icmp_id,
            mark,
            secmark,
            status,
            zone,
            orig_zone,
            reply_zone,
            src_nat,
            dst_nat,
            any_nat,
            labels,
        } = self.clone();
        let implied = [orig_src, orig_dst, reply_src, reply_dst]
            .iter()
            .flatten()
            .any(|net| Some(u8::try_from(net_family(net)).unwrap_or(0)) == family);
        let family = family.filter(|_| !implied);
        let none = Filter::default;
        [
            Filter { family, ..none() },
            Filter { orig_src, ..none() },
            Filter { orig_dst, ..none() },
            Filter {
                reply_src,
                ..none()
            },
            Filter {
                reply_dst,
                ..none()
            },
            Filter { l4proto, ..none() },
            Filter {
                orig_sport,
                ..none()
            },
            Filter {
                orig_dport,
                ..none()
            },
            Filter {
                reply_sport,
                ..none()
            },
            Filter {
                reply_dport,
                ..none()
            },
            Filter { state, ..none() },
            Filter {
                icmp_type,
                ..none()
            },
            Filter {
                icmp_code,
                ..none()
            },
            Filter { icmp_id, ..none() },
            Filter { mark, ..none() },
            Filter { secmark, ..none() },
            Filter { status, ..none() },
            Filter { zone, ..none() },
            Filter {
                orig_zone,
                ..none()
            },
            Filter {
                reply_zone,
                ..none()
            },
            Filter {
                src_nat,
                dst_nat,
                any_nat,
                ..none()
            },
            Filter { labels, ..none() },
        ]
        .into_iter()
        .filter(|f| !f.is_empty())
        .collect()
    }

    /// The dump request's kernel-side filter attributes.
    pub fn kernel_attrs(&self) -> AttrWriter {
        let mut w = AttrWriter::new();
        if let Some((value, mask)) = self.mark {
            w.be32(cta::MARK, value);
            w.be32(cta::MARK_MASK, mask);
        }
        // Zone 0 means "no zone filter" to the kernel; user space checks it.
        if let Some(z) = self.zone.filter(|z| *z != 0) {
            w.be16(cta::ZONE, z);
        }
        if let Some((value, mask)) = self.status.filter(|(_, m)| *m != 0) {
            w.be32(cta::STATUS, value);
            w.be32(cta::STATUS_MASK, mask);
        }
        w
    }
}

/// The tuple's source "port" as the kernel's union holds it (ICMP: the id).
fn raw_src(t: &Tuple) -> u16 {
    t.sport.or(t.icmp_id).unwrap_or(0)
}

/// The tuple's destination "port" (ICMP: type and code, as one u16).
fn raw_dst(t: &Tuple) -> u16 {
    t.dport.unwrap_or_else(|| {
        u16::from(t.icmp_type.unwrap_or(0)) << 8 | u16::from(t.icmp_code.unwrap_or(0))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ct::samples::flow;

    fn entry(src: &str, dst: &str, proto: u8, sport: u16, dport: u16) -> Conntrack {
        Conntrack {
            status: Some(ips::CONFIRMED | ips::SEEN_REPLY),
            mark: Some(0x12),
            ..flow(src, dst, proto, sport, dport)
        }
    }

    #[test]
    fn address_networks_and_ports() {
        let ct = entry("10.1.2.3", "10.9.9.9", 6, 1000, 80);
        let mut f = Filter {
            orig_src: Some("10.1.0.0/16".parse().expect("net")),
            ..Filter::default()
        };
        assert!(f.matches(&ct));
        f.orig_dport = Some(81);
        assert!(!f.matches(&ct));
        f.orig_dport = Some(80);
        f.reply_dst = Some("10.1.2.3/32".parse().expect("net"));
        assert!(f.matches(&ct));
        // IPv4 filters never match IPv6 entries.
        assert!(!f.matches(&entry("::1", "::2", 6, 1000, 80)));
    }

    #[test]
    fn mark_mask_status_zone() {
        let mut ct = entry("10.1.2.3", "10.9.9.9", 17, 1, 2);
        let f = Filter {
            mark: Some((0x10, 0xf0)),
            ..Filter::default()
        };
        assert!(f.matches(&ct));
        let f = Filter {
            status: Some((ips::ASSURED, ips::ASSURED)),
            ..Filter::default()
        };
        let unreplied = Filter {
            status: Some((0, ips::SEEN_REPLY)),
            ..Filter::default()
        };
        assert!(!unreplied.matches(&ct));
        assert!(!f.matches(&ct));
        ct.status = Some(ct.status.unwrap_or(0) | ips::ASSURED);
        assert!(f.matches(&ct));
        let f = Filter {
            zone: Some(0),
            ..Filter::default()
        };
        assert!(f.matches(&ct), "no zone attribute means zone 0");
        ct.zone = Some(5);
        assert!(!f.matches(&ct));
    }

    #[test]
    fn secmark_only_judges_entries_that_carry_one() {
        let mut ct = entry("10.1.2.3", "10.9.9.9", 17, 1, 2);
        let f = Filter {
            secmark: Some(5),
            ..Filter::default()
        };
        assert!(f.matches(&ct), "the kernel reports no secmark");
        ct.extra_mut().secmark = Some(6);
        assert!(!f.matches(&ct));
        ct.extra_mut().secmark = Some(5);
        assert!(f.matches(&ct));
    }

    #[test]
    fn nat_semantics() {
        let mut ct = entry("192.168.1.5", "10.0.0.1", 6, 1000, 80);
        // DNAT to 10.0.0.2: the reply comes from the translated address.
        ct.reply.src = Some("10.0.0.2".parse().expect("addr"));
        ct.status = Some(ips::CONFIRMED | ips::DST_NAT | ips::DST_NAT_DONE);
        let dnat = Filter {
            dst_nat: NatFilter::Any,
            ..Filter::default()
        };
        let snat = Filter {
            src_nat: NatFilter::Any,
            ..Filter::default()
        };
        assert!(dnat.matches(&ct));
        assert!(!snat.matches(&ct));
        let to = Filter {
            dst_nat: NatFilter::To("10.0.0.2".parse().expect("addr")),
            ..Filter::default()
        };
        assert!(to.matches(&ct));
        let any = Filter {
            any_nat: NatFilter::Any,
            ..Filter::default()
        };
        assert!(any.matches(&ct));
        assert!(!any.matches(&entry("1.1.1.1", "2.2.2.2", 6, 1, 2)));
    }

    #[test]
    fn conditions_split_the_conjunction() {
        let f = Filter {
            family: Some(libc::AF_INET as u8),
            orig_src: Some("10.1.0.0/16".parse().expect("net")),
            l4proto: Some(6),
            orig_dport: Some(80),
            mark: Some((0x10, 0xf0)),
            dst_nat: NatFilter::Any,
            src_nat: NatFilter::Any,
            ..Filter::default()
        };
        let parts = f.conditions();
        // -n and -g together are one condition; the family is the
        // address's.
        assert_eq!(parts.len(), 5, "{parts:#?}");
        assert!(Filter::default().conditions().is_empty());
        for ct in [
            entry("10.1.2.3", "10.9.9.9", 6, 1000, 80),
            entry("10.1.2.3", "10.9.9.9", 6, 1000, 81),
            entry("10.2.2.3", "10.9.9.9", 17, 1000, 80),
            entry("::1", "::2", 6, 1000, 80),
        ] {
            assert_eq!(
                f.matches(&ct),
                parts.iter().all(|p| p.matches(&ct)),
                "{ct:?}"
            );
        }
        // Every field makes a condition of its own.
        let all = Filter {
            family: Some(libc::AF_INET6 as u8),
            orig_src: Some("10.0.0.0/8".parse().expect("net")),
            orig_dst: Some("10.0.0.0/8".parse().expect("net")),
            reply_src: Some("10.0.0.0/8".parse().expect("net")),
            reply_dst: Some("10.0.0.0/8".parse().expect("net")),
            l4proto: Some(6),
            orig_sport: Some(1),
            orig_dport: Some(2),
            reply_sport: Some(3),
            reply_dport: Some(4),
            state: Some(StateFilter(ProtoState::Tcp(3))),
            icmp_type: Some(8),
            icmp_code: Some(0),
            icmp_id: Some(5),
            mark: Some((1, 1)),
            secmark: Some(7),
            status: Some((ips::ASSURED, ips::ASSURED)),
            zone: Some(1),
            orig_zone: Some(2),
            reply_zone: Some(3),
            src_nat: NatFilter::Any,
            dst_nat: NatFilter::Off,
            any_nat: NatFilter::Off,
            labels: vec![1],
        };
        assert_eq!(all.conditions().len(), 22);
    }

    #[test]
    fn kernel_attrs_only_for_what_the_kernel_filters() {
        assert!(Filter::default().kernel_attrs().as_bytes().is_empty());
        let f = Filter {
            mark: Some((1, 0xff)),
            zone: Some(0),
            ..Filter::default()
        };
        // CTA_MARK and CTA_MARK_MASK, 8 bytes each; zone 0 is not sent.
        assert_eq!(f.kernel_attrs().as_bytes().len(), 16);
    }
}
