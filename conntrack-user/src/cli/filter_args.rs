//! Filter flags -> [`Filter`]: the checks across flags (families that
//! disagree, ports without a protocol, states of the wrong protocol).
use std::net::IpAddr;

use ipnet::IpNet;

use super::{
    Result,
    args::{ExpectArgs, FilterArgs},
    usage,
};
use crate::{
    ct::{DCCP_STATES, ProtoState, SCTP_STATES, TCP_STATES, has_ports, is_icmp, proto},
    filter::{Filter, NatFilter, StateFilter},
    output::LabelMap,
};

fn parse_state(proto: Option<u8>, name: &str) -> Result<StateFilter> {
    let upper = name.to_ascii_uppercase();
    let find = |table: &[&str; 10]| {
        table
            .iter()
            .position(|s| *s == upper)
            .map(|i| i as u8)
            .or_else(|| {
                // conntrack's old name for TCP state 9 (SYN_SENT2).
                (upper == "LISTEN" && table == &TCP_STATES).then_some(9)
            })
    };
    let state = match proto {
        Some(proto::TCP) => find(&TCP_STATES).map(ProtoState::Tcp),
        Some(proto::SCTP) => find(&SCTP_STATES).map(ProtoState::Sctp),
        Some(proto::DCCP) => find(&DCCP_STATES).map(ProtoState::Dccp),
        _ => return Err(usage("--state needs -p tcp, sctp or dccp")),
    };
    state
        .map(StateFilter)
        .ok_or_else(|| usage(format!("unknown state `{name}'")))
}

fn parse_nat(value: &Option<String>, flag: &str) -> Result<NatFilter> {
    match value.as_deref() {
        None => Ok(NatFilter::Off),
        Some("") => Ok(NatFilter::Any),
        Some(a) => a
            .parse()
            .map(NatFilter::To)
            .map_err(|_| usage(format!("invalid address `{a}' for {flag}"))),
    }
}

/// `-s ADDR --mask-src MASK` as a network: the mask replaces any prefix
/// of `-s`, as in conntrack. Only contiguous masks: a network is a prefix
/// here.
fn masked(
    net: Option<IpNet>,
    mask: Option<IpAddr>,
    addr_flag: &str,
    mask_flag: &str,
) -> Result<Option<IpNet>> {
    let Some(mask) = mask else {
        return Ok(net);
    };
    let net = net.ok_or_else(|| usage(format!("Can't use {mask_flag} without {addr_flag}")))?;
    let (bits, width) = match (net.addr(), mask) {
        (IpAddr::V4(_), IpAddr::V4(m)) => (u128::from(u32::from(m)) << 96, 32),
        (IpAddr::V6(_), IpAddr::V6(m)) => (u128::from(m), 128),
        _ => return Err(usage("mismatched address family")),
    };
    let prefix = bits.leading_ones();
    if bits.checked_shl(prefix).unwrap_or(0) != 0 {
        return Err(usage(format!(
            "{mask_flag} {mask}: only contiguous masks are supported (as in ADDR/PREFIX)"
        )));
    }
    let prefix = u8::try_from(prefix.min(width)).unwrap_or(0);
    IpNet::new(net.addr(), prefix)
        .map(Some)
        .map_err(|_| usage(format!("invalid {mask_flag} {mask}")))
}

fn family_of(net: &Option<IpNet>) -> Option<u8> {
    net.as_ref().map(|n| match n {
        IpNet::V4(_) => libc::AF_INET as u8,
        IpNet::V6(_) => libc::AF_INET6 as u8,
    })
}

impl ExpectArgs {
    /// The long names of the expectation options given (which only `-I
    /// expect` takes), in conntrack's order.
    pub fn given(&self) -> Vec<&'static str> {
        [
            (self.tuple_src.is_some(), "tuple-src"),
            (self.tuple_dst.is_some(), "tuple-dst"),
            (self.tuple_port_src.is_some(), "tuple-port-src"),
            (self.tuple_port_dst.is_some(), "tuple-port-dst"),
            (self.mask_port_src.is_some(), "mask-port-src"),
            (self.mask_port_dst.is_some(), "mask-port-dst"),
        ]
        .into_iter()
        .filter(|(set, _)| *set)
        .map(|(_, name)| name)
        .collect()
    }
}

impl FilterArgs {
    /// The long names of the options given, in the order conntrack 1.4.7
    /// checks them (its option bits, then the protocol's own), as its
    /// messages name them (`protonum`, `orig-port-src`): for the commands
    /// that take only some of them.
    pub fn given(&self) -> Vec<&'static str> {
        [
            (self.src.is_some(), "src"),
            (self.dst.is_some(), "dst"),
            (self.reply_src.is_some(), "reply-src"),
            (self.reply_dst.is_some(), "reply-dst"),
            (self.proto.is_some(), "protonum"),
            (self.status.is_some(), "status"),
            (self.mask_src.is_some(), "mask-src"),
            (self.mask_dst.is_some(), "mask-dst"),
            (self.mark.is_some(), "mark"),
            (self.family.is_some(), "family"),
            (self.src_nat.is_some(), "src-nat"),
            (self.dst_nat.is_some(), "dst-nat"),
            (self.secmark.is_some(), "secmark"),
            (self.any_nat.is_some(), "any-nat"),
            (self.zone.is_some(), "zone"),
            (!self.label.is_empty(), "label"),
            (self.orig_zone.is_some(), "orig-zone"),
            (self.reply_zone.is_some(), "reply-zone"),
            (self.sport.is_some(), "orig-port-src"),
            (self.dport.is_some(), "orig-port-dst"),
            (self.reply_port_src.is_some(), "reply-port-src"),
            (self.reply_port_dst.is_some(), "reply-port-dst"),
            (self.state.is_some(), "state"),
            (self.icmp_type.is_some(), "icmp-type"),
            (self.icmp_code.is_some(), "icmp-code"),
            (self.icmp_id.is_some(), "icmp-id"),
            (self.srckey.is_some(), "srckey"),
            (self.dstkey.is_some(), "dstkey"),
        ]
        .into_iter()
        .filter(|(set, _)| *set)
        .map(|(_, name)| name)
        .collect()
    }

    /// Checks the combination and builds the filter.
    pub fn to_filter(&self) -> Result<Filter> {
        for (net, flag) in [
            (&self.reply_src, "--reply-src"),
            (&self.reply_dst, "--reply-dst"),
        ] {
            if net.is_some_and(|n| n.prefix_len() != n.max_prefix_len()) {
                return Err(usage(format!("CIDR notation unavailable for `{flag}'")));
            }
        }
        if self.any_nat.is_some() && (self.src_nat.is_some() || self.dst_nat.is_some()) {
            return Err(usage(
                "cannot specify `--src-nat' or `--dst-nat' with `--any-nat'",
            ));
        }
        let src = masked(self.src, self.mask_src, "--src", "--mask-src")?;
        let dst = masked(self.dst, self.mask_dst, "--dst", "--mask-dst")?;
        let mut family = self.family;
        for net in [&src, &dst, &self.reply_src, &self.reply_dst] {
            if let Some(f) = family_of(net) {
                match family {
                    Some(have) if have != f => {
                        return Err(usage(
                            "mixed address families: -f and the addresses disagree",
                        ));
                    }
                    _ => family = Some(f),
                }
            }
        }
        let ports = [
            self.sport,
            self.dport,
            self.reply_port_src,
            self.reply_port_dst,
        ];
        if ports.iter().any(Option::is_some) {
            match self.proto {
                None => return Err(usage("port filters need -p/--proto")),
                // conntrack knows no --sport for ICMP, GRE (--srckey) or a
                // protocol without ports: "unknown option", exit 2.
                Some(p) if !has_ports(p) => {
                    return Err(usage(format!(
                        "port filters need a protocol with ports, not -p {}",
                        crate::ct::proto_name(p)
                    )));
                }
                Some(_) => {}
            }
        }
        // GRE keys sit where ports do: in the tuple's port fields.
        let keys = self.srckey.is_some() || self.dstkey.is_some();
        if keys && self.proto != Some(proto::GRE) {
            return Err(usage("unknown option `--srckey' (GRE keys need -p gre)"));
        }
        let icmp = self.icmp_type.is_some() || self.icmp_code.is_some() || self.icmp_id.is_some();
        if icmp && !self.proto.is_some_and(is_icmp) {
            return Err(usage(
                "--icmp-type/--icmp-code/--icmp-id need -p icmp or icmpv6",
            ));
        }
        let state = self
            .state
            .as_deref()
            .map(|s| parse_state(self.proto, s))
            .transpose()?;
        let labels = if self.label.is_empty() {
            Vec::new()
        } else {
            let map = LabelMap::load_default();
            let mut bits = Vec::new();
            for name in self.label.iter().flat_map(|l| l.split(',')) {
                bits.push(
                    map.bit(name)
                        .ok_or_else(|| usage(format!("unknown label `{name}'")))?,
                );
            }
            bits
        };
        Ok(Filter {
            family,
            orig_src: src,
            orig_dst: dst,
            reply_src: self.reply_src,
            reply_dst: self.reply_dst,
            l4proto: self.proto,
            orig_sport: self.sport.or(self.srckey),
            orig_dport: self.dport.or(self.dstkey),
            reply_sport: self.reply_port_src,
            reply_dport: self.reply_port_dst,
            state,
            icmp_type: self.icmp_type,
            icmp_code: self.icmp_code,
            icmp_id: self.icmp_id,
            mark: self.mark,
            status: self.status,
            secmark: self.secmark,
            zone: self.zone,
            orig_zone: self.orig_zone,
            reply_zone: self.reply_zone,
            src_nat: parse_nat(&self.src_nat, "-n")?,
            dst_nat: parse_nat(&self.dst_nat, "-g")?,
            any_nat: parse_nat(&self.any_nat, "-j")?,
            labels,
        })
    }
}
