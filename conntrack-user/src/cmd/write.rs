//! The commands that write entries: create (`-I`) and update (`-U`), with
//! conntrack 1.4.7's checks, messages, output and exit codes.
//!
//! `-I` makes one entry from a tuple (the other direction is the inverted
//! one unless given) and prints nothing but `1 flow entries have been
//! created.`; an entry with the same original tuple is EEXIST, exit 1.
//! `-U` selects entries as conntrack does (the address, protocol, port,
//! NAT and label options filter; `-m`, `-u`, `--state`, `-t` and the
//! label options are the new values), changes those the new values
//! change, and prints each as the kernel then has it; none: exit 1.
use std::{io, net::IpAddr, sync::atomic::Ordering};

use ipnet::IpNet;

use crate::{
    cli::{
        CliError, Result,
        args::{CreateArgs, FilterArgs, UpdateArgs},
        illegal,
        signals::{interrupt_on_signals, interrupted},
        usage,
    },
    ct::{Conntrack, ProtoState, Tuple, has_ports, ips, is_icmp, proto},
    filter::StateFilter,
    netlink::{
        CtSocket, NetlinkError,
        codec::AttrWriter,
        cta,
        request::{EntryRequest, LabelChange, NatTarget, ProtoInfo},
    },
    output::{LabelMap, OutputOptions, Printer, summary},
};

/// The status bits conntrack's `-u` can set (its other names are "Bad
/// parameter" there).
const SETTABLE_STATUS: u32 = ips::EXPECTED | ips::SEEN_REPLY | ips::ASSURED | ips::FIXED_TIMEOUT;

/// A kernel error in conntrack's words (its err2str), after "Operation
/// failed: ".
fn operation_failed(e: NetlinkError, create: bool) -> CliError {
    let NetlinkError::Kernel { source, .. } = &e else {
        return e.into();
    };
    let why = match source.raw_os_error() {
        Some(libc::EEXIST) if create => "Such conntrack exists, try -U to update".to_string(),
        Some(libc::ENOENT) => "such conntrack doesn't exist".to_string(),
        Some(libc::EINVAL) => "invalid parameters".to_string(),
        Some(libc::ENOMEM) if create => "not enough memory".to_string(),
        Some(libc::ETIME) if create => "conntrack has expired".to_string(),
        Some(errno) => strerror(errno),
        None => return e.into(),
    };
    CliError::Failed(format!("Operation failed: {why}"))
}

/// strerror(3)'s text, without Rust's " (os error N)".
fn strerror(errno: i32) -> String {
    let text = io::Error::from_raw_os_error(errno).to_string();
    match text.rsplit_once(" (os error") {
        Some((head, _)) => head.to_string(),
        None => text,
    }
}

/// `-u`'s value, refusing the bits conntrack cannot set.
fn settable_status(status: Option<(u32, u32)>) -> Result<Option<u32>> {
    let Some((value, _)) = status else {
        return Ok(None);
    };
    if let Some((name, _)) = ips::NAMES
        .iter()
        .find(|(_, bit)| value & bit & !SETTABLE_STATUS != 0)
    {
        return Err(usage(format!("Bad parameter `{name}'")));
    }
    Ok(Some(value))
}

/// The bitmap of label names (or bit numbers) from connlabel.conf.
fn label_bits(map: &LabelMap, names: &[String]) -> Result<[u8; 16]> {
    let mut bits = [0u8; 16];
    for name in names.iter().flat_map(|l| l.split(',')) {
        let bit = map
            .bit(name)
            .ok_or_else(|| usage(format!("unknown label `{name}'")))?;
        bits[usize::from(bit / 8)] |= 1 << (bit % 8);
    }
    Ok(bits)
}

/// `-n`/`-g` with `-I`: `ADDR` or `IPV4:PORT`; without a value, nothing
/// (conntrack ignores it).
fn nat_target(value: &Option<String>, family: u8) -> Result<Option<NatTarget>> {
    let Some(value) = value.as_deref().filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    // One colon is an IPv4 address with a port; more make an IPv6 address.
    let (addr, port) = match value.split_once(':') {
        Some((a, p)) if !p.contains(':') => (a, Some(p)),
        _ => (value, None),
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| usage(format!("Invalid IP address `{addr}'")))?;
    if (addr.is_ipv4() && i32::from(family) != libc::AF_INET)
        || (addr.is_ipv6() && i32::from(family) != libc::AF_INET6)
    {
        return Err(usage("mismatched address family"));
    }
    let port = match port {
        None => None,
        Some("") => return Err(usage("No port specified after `:'")),
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| usage(format!("Invalid port `{p}'")))?,
        ),
    };
    Ok(Some(NatTarget { addr, port }))
}

fn need(flag: &str) -> CliError {
    usage(format!(
        "You need to supply the `--{flag}' option for this command"
    ))
}

fn is_cidr(net: &Option<IpNet>) -> bool {
    net.is_some_and(|n| n.prefix_len() != n.max_prefix_len())
}

/// conntrack's checks of `-I`'s options, in its order, and the request.
fn create_request(a: &CreateArgs) -> Result<(u8, EntryRequest)> {
    let f = &a.entry;
    // The expected tuple and its mask are -I expect's only.
    if let Some(option) = a.expect.given().first() {
        return Err(illegal(option));
    }
    for (set, flag) in [
        (f.family.is_some(), "family"),
        (f.secmark.is_some(), "secmark"),
        (f.any_nat.is_some(), "any-nat"),
        (!f.label.is_empty(), "label"),
        (is_cidr(&f.src) || f.mask_src.is_some(), "mask-src"),
        (is_cidr(&f.dst) || f.mask_dst.is_some(), "mask-dst"),
    ] {
        if set {
            return Err(illegal(flag));
        }
    }
    let l4proto = f.proto.ok_or_else(|| need("protonum"))?;
    let timeout = a.timeout.ok_or_else(|| need("timeout"))?;
    let (orig_any, reply_any) = (
        f.src.is_some() || f.dst.is_some(),
        f.reply_src.is_some() || f.reply_dst.is_some(),
    );
    let orig_whole = f.src.is_some() && f.dst.is_some();
    let reply_whole = f.reply_src.is_some() && f.reply_dst.is_some();
    if !orig_whole && !reply_whole {
        return Err(usage(if !orig_any && reply_any {
            "you have to specify `--reply-src' and `--reply-dst'"
        } else {
            "you have to specify `--src' and `--dst'"
        }));
    }
    // The NAT values are ADDR[:PORT] here, not the filters' addresses.
    let filter = FilterArgs {
        src_nat: None,
        dst_nat: None,
        ..f.clone()
    }
    .to_filter()?;
    let family = filter.family.unwrap_or(libc::AF_INET as u8);
    let state = match l4proto {
        proto::TCP | proto::SCTP | proto::DCCP => Some(filter.state.ok_or_else(|| need("state"))?),
        _ => None,
    };
    let ports = (f.sport.is_some() && f.dport.is_some())
        || (f.reply_port_src.is_some() && f.reply_port_dst.is_some());
    if has_ports(l4proto) && !ports {
        return Err(usage("you have to specify `--sport' and `--dport'"));
    }
    let v6 = if l4proto == proto::ICMPV6 { "v6" } else { "" };
    if is_icmp(l4proto) {
        f.icmp_type.ok_or_else(|| need(&format!("icmp{v6}-type")))?;
        f.icmp_code.ok_or_else(|| need(&format!("icmp{v6}-code")))?;
    }
    let proto_only = [
        (
            a.entry.srckey.is_some() || a.entry.dstkey.is_some(),
            proto::GRE,
            "srckey",
        ),
        (
            a.orig_vtag.is_some() || a.reply_vtag.is_some(),
            proto::SCTP,
            "orig-vtag",
        ),
        (a.role.is_some(), proto::DCCP, "role"),
    ];
    for (set, p, flag) in proto_only {
        if set && l4proto != p {
            return Err(usage(format!("unknown option `--{flag}'")));
        }
    }
    if l4proto == proto::GRE && (a.entry.srckey.is_none() || a.entry.dstkey.is_none()) {
        return Err(usage("you have to specify `--srckey' and `--dstkey'"));
    }
    let protoinfo = match state {
        Some(StateFilter(state @ ProtoState::Sctp(_))) => Some(ProtoInfo {
            state,
            sctp_vtags: Some((
                a.orig_vtag.ok_or_else(|| need("orig-vtag"))?,
                a.reply_vtag.ok_or_else(|| need("reply-vtag"))?,
            )),
            dccp_role: None,
        }),
        Some(StateFilter(state @ ProtoState::Dccp(_))) => Some(ProtoInfo {
            state,
            sctp_vtags: None,
            dccp_role: Some(match a.role.as_deref().ok_or_else(|| need("role"))? {
                "server" => 1,
                _ => 0,
            }),
        }),
        Some(StateFilter(state)) => Some(ProtoInfo {
            state,
            sctp_vtags: None,
            dccp_role: None,
        }),
        None => None,
    };
    let status = settable_status(f.status)?;
    let labels = if a.label_add.is_empty() {
        None
    } else {
        Some(LabelChange {
            bits: label_bits(&LabelMap::load_default(), &a.label_add)?,
            mask: None,
        })
    };
    let addr = |n: &Option<IpNet>| n.as_ref().map(IpNet::addr);
    let given = |src, dst, sport, dport| {
        let mut t = Tuple {
            src,
            dst,
            l4proto: Some(l4proto),
            sport,
            dport,
            ..Tuple::default()
        };
        if l4proto == proto::GRE {
            (t.sport, t.dport) = (a.entry.srckey, a.entry.dstkey);
        }
        t
    };
    let mut orig = given(addr(&f.src), addr(&f.dst), f.sport, f.dport);
    if is_icmp(l4proto) {
        // The kernel wants all three; conntrack's id defaults to 0.
        orig.icmp_type = f.icmp_type;
        orig.icmp_code = f.icmp_code;
        orig.icmp_id = Some(f.icmp_id.unwrap_or(0));
    }
    let given_reply = given(
        addr(&f.reply_src),
        addr(&f.reply_dst),
        f.reply_port_src,
        f.reply_port_dst,
    );
    // conntrack inverts the tuple given when only one is; with parts of
    // both, both go as given (and an incomplete one is the kernel's EINVAL).
    let (mut orig, mut reply) = match (orig_any, reply_any) {
        (true, false) => (orig, orig.inverted()),
        (false, true) => (given_reply.inverted(), given_reply),
        _ => (orig, given_reply),
    };
    orig.zone = f.orig_zone;
    reply.zone = f.reply_zone;
    let request = EntryRequest {
        orig,
        reply: Some(reply),
        zone: f.zone,
        status,
        timeout: Some(timeout),
        mark: filter.mark.map(|(value, _)| value),
        protoinfo,
        src_nat: nat_target(&f.src_nat, family)?,
        dst_nat: nat_target(&f.dst_nat, family)?,
        labels,
    };
    Ok((family, request))
}

/// `-I`: creates one entry.
pub fn create(args: &CreateArgs) -> Result<()> {
    let (family, request) = create_request(args)?;
    let mut sock = CtSocket::open()?;
    sock.create(family, request.encode().as_bytes())
        .map_err(|e| operation_failed(e, true))?;
    summary("1 flow entries have been created");
    Ok(())
}

/// What `-U` sets on each entry it selects.
struct Changes {
    timeout: Option<u32>,
    /// `-m VALUE/MASK`: the new mark is `(old & !MASK) ^ VALUE`.
    mark: Option<(u32, u32)>,
    /// Bits to add to the status.
    status: Option<u32>,
    state: Option<ProtoState>,
    label_add: Option<[u8; 16]>,
    /// `--label-del`: these bits, or (an empty bitmap) every label.
    label_del: Option<[u8; 16]>,
}

impl Changes {
    /// The request that applies the changes to `ct`; `None` when they
    /// would leave it as it is (conntrack neither sends nor counts those).
    fn request(&self, ct: &Conntrack) -> Option<EntryRequest> {
        let mark = self
            .mark
            .map(|(value, mask)| (ct.mark.unwrap_or(0) & !mask) ^ value);
        let old_status = ct.status.unwrap_or(0);
        let status = self.status.map(|bits| old_status | bits);
        let labels = if let Some(add) = self.label_add {
            // Only the added bits change; conntrack counts the entry even
            // when it had them.
            Some(LabelChange {
                bits: add,
                mask: Some(add),
            })
        } else if let (Some(del), Some(_)) = (self.label_del, ct.labels()) {
            // An entry without labels is left alone, as by conntrack.
            Some(LabelChange {
                bits: [0; 16],
                mask: (del != [0; 16]).then_some(del),
            })
        } else {
            None
        };
        let changed = labels.is_some()
            || self.timeout.is_some_and(|t| ct.timeout != Some(t))
            || mark.is_some_and(|m| ct.mark.unwrap_or(0) != m)
            || status.is_some_and(|s| s != old_status)
            || self.state.is_some_and(|s| ct.proto_state != Some(s));
        changed.then(|| EntryRequest {
            orig: ct.orig,
            zone: ct.zone,
            status,
            timeout: self.timeout,
            mark,
            protoinfo: self.state.map(|state| ProtoInfo {
                state,
                sctp_vtags: None,
                dccp_role: None,
            }),
            labels,
            ..EntryRequest::default()
        })
    }
}

/// The attributes that name an entry for a get: its original tuple (with
/// its per-direction zone) and zone.
fn key_attrs(ct: &Conntrack) -> AttrWriter {
    let mut w = AttrWriter::new();
    w.tuple(cta::TUPLE_ORIG, &ct.orig);
    if let Some(z) = ct.zone {
        w.be16(cta::ZONE, z);
    }
    w
}

/// `-U`: changes the entries that match, printing each as it is after.
pub fn update(args: &UpdateArgs) -> Result<()> {
    let f = &args.filter;
    for (set, flag) in [
        (f.zone.is_some(), "zone"),
        (f.orig_zone.is_some(), "orig-zone"),
        (f.reply_zone.is_some(), "reply-zone"),
        (f.any_nat.is_some(), "any-nat"),
        (f.secmark.is_some(), "secmark"),
    ] {
        if set {
            return Err(illegal(flag));
        }
    }
    if !args.label_add.is_empty() && args.label_del.is_some() {
        // conntrack's exit code for this one is 1.
        return Err(CliError::Failed(
            "cannot use --label-add and --label-del at the same time".into(),
        ));
    }
    let mut select = f.to_filter()?;
    let map = (!args.label_add.is_empty() || args.label_del.is_some()).then(LabelMap::load_default);
    let bits = |names: &[String]| map.as_ref().map(|m| label_bits(m, names)).transpose();
    let changes = Changes {
        timeout: args.timeout,
        mark: select.mark.take(),
        status: settable_status(select.status.take())?,
        state: select.state.take().map(|StateFilter(s)| s),
        label_add: if args.label_add.is_empty() {
            None
        } else {
            bits(&args.label_add)?
        },
        label_del: match &args.label_del {
            Some(names) => bits(names)?,
            None => None,
        },
    };
    let mut opts = OutputOptions::parse(args.output.iter().map(String::as_str))
        .map_err(|e| usage(e.to_string()))?;
    // conntrack prints the labels whenever a label option is in use.
    if opts.labels.is_none() && (map.is_some() || !f.label.is_empty()) {
        opts.labels = map.clone().or_else(|| Some(LabelMap::load_default()));
    }
    let mut sock = CtSocket::open()?;
    let signal = interrupt_on_signals()?;
    // Collect first: changing entries while dumping would disturb the dump.
    let mut selected: Vec<Conntrack> = Vec::new();
    sock.dump(select.family.unwrap_or(0), &[], |ct| {
        if select.matches(ct) {
            selected.push(ct.clone());
        }
        signal.load(Ordering::Relaxed) == 0
    })?;
    let mut printer = Printer::new(opts);
    let mut updated = 0u64;
    let mut failure = None;
    for ct in &selected {
        if signal.load(Ordering::Relaxed) != 0 {
            break;
        }
        let Some(request) = changes.request(ct) else {
            continue;
        };
        match sock.update(ct.family, request.encode().as_bytes()) {
            // Gone in the meantime.
            Ok(false) => continue,
            Ok(true) => {}
            Err(e)
                if e.errno() == Some(libc::EPERM)
                    && changes.timeout.is_some()
                    && ct.has_status(ips::FIXED_TIMEOUT) =>
            {
                failure = Some(CliError::Failed(
                    "Operation failed: the entry has FIXED_TIMEOUT: its timeout cannot change"
                        .into(),
                ));
                break;
            }
            Err(e) => {
                failure = Some(operation_failed(e, false));
                break;
            }
        }
        // Printed as the kernel now has it, as conntrack does.
        match sock.get(ct.family, key_attrs(ct).as_bytes()) {
            Ok(Some(now)) => {
                updated += 1;
                printer.entry(&now);
            }
            Ok(None) => {}
            Err(e) => {
                failure = Some(operation_failed(e, false));
                break;
            }
        }
    }
    printer.finish()?;
    if let Some(e) = failure {
        return Err(e);
    }
    summary(&format!("{updated} flow entries have been updated"));
    interrupted(&signal)?;
    if updated == 0 {
        return Err(CliError::Silent);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::{
        cli::{Cli, Command},
        ct::samples::flow,
    };

    fn create_args(args: &str) -> CreateArgs {
        let argv = std::iter::once("ctscope")
            .chain(std::iter::once("-I"))
            .chain(args.split_whitespace());
        match Cli::try_parse_from(argv).map(|c| c.command) {
            Ok(Some(Command::Create(a))) => a,
            other => panic!("{args}: {other:?}"),
        }
    }

    fn refused(args: &str) -> String {
        match create_request(&create_args(args)) {
            Err(CliError::Usage(msg)) => msg,
            other => panic!("{args}: not a usage error: {other:?}"),
        }
    }

    #[test]
    fn create_inverts_the_tuple_given() {
        let (family, req) = create_request(&create_args(
            "-p udp -s 10.0.0.1 -d 10.0.0.2 --sport 1 --dport 2 -t 5",
        ))
        .expect("valid");
        assert_eq!(i32::from(family), libc::AF_INET);
        let ct = flow("10.0.0.1", "10.0.0.2", proto::UDP, 1, 2);
        assert_eq!((req.orig, req.reply), (ct.orig, Some(ct.reply)));
        assert_eq!((req.timeout, req.status, req.mark), (Some(5), None, None));
        let (_, req) = create_request(&create_args(
            "-p tcp -r 10.0.0.2 -q 10.0.0.1 --reply-port-src 2 --reply-port-dst 1 \
             --state ESTABLISHED -t 5 -m 0x10/0xf0 -u ASSURED --orig-zone 3 -w 5",
        ))
        .expect("valid");
        let ct = flow("10.0.0.1", "10.0.0.2", proto::TCP, 1, 2);
        assert_eq!(
            req.orig,
            Tuple {
                zone: Some(3),
                ..ct.orig
            }
        );
        assert_eq!(req.reply, Some(ct.reply));
        assert_eq!(
            (req.mark, req.status, req.zone),
            (Some(0x10), Some(ips::ASSURED), Some(5))
        );
        assert_eq!(req.protoinfo.map(|p| p.state), Some(ProtoState::Tcp(3)));
        let (_, req) = create_request(&create_args(
            "-p icmpv6 -s 2001:db8::1 -d 2001:db8::2 --icmpv6-type 128 --icmpv6-code 0 -t 5",
        ))
        .expect("valid");
        let reply = req.reply.expect("a reply tuple");
        assert_eq!((req.orig.icmp_id, reply.icmp_type), (Some(0), Some(129)));
        let (_, req) = create_request(&create_args(
            "-p gre -s 10.0.0.1 -d 10.0.0.2 --srckey 1 --dstkey 0x2 -t 5 -g 10.0.0.9:55",
        ))
        .expect("valid");
        assert_eq!((req.orig.sport, req.orig.dport), (Some(1), Some(2)));
        assert_eq!(
            req.dst_nat,
            Some(NatTarget {
                addr: "10.0.0.9".parse().expect("address"),
                port: Some(55)
            })
        );
    }

    #[test]
    fn create_refuses_as_conntrack_does() {
        for (args, msg) in [
            ("-s 10.0.0.1 -d 10.0.0.2 -t 5", "`--protonum'"),
            (
                "-p udp -s 10.0.0.1 -d 10.0.0.2 --sport 1 --dport 2",
                "`--timeout'",
            ),
            (
                "-p udp -r 10.0.0.1 --sport 1 --dport 2 -t 5",
                "`--reply-src' and",
            ),
            (
                "-p udp -s 10.0.0.1 -q 10.0.0.1 --sport 1 --dport 2 -t 5",
                "`--src' and",
            ),
            ("-p tcp -s 10.0.0.1 -d 10.0.0.2 -t 5", "`--state'"),
            (
                "-p tcp -s 10.0.0.1 -d 10.0.0.2 --state CLOSE -t 5",
                "`--sport' and",
            ),
            (
                "-p udp -s 10.0.0.1 -d 10.0.0.2 --sport 1 -t 5",
                "`--sport' and",
            ),
            ("-p icmp -s 10.0.0.1 -d 10.0.0.2 -t 5", "`--icmp-type'"),
            (
                "-p icmp -s 10.0.0.1 -d 10.0.0.2 --icmp-type 8 -t 5",
                "`--icmp-code'",
            ),
            ("-p gre -s 10.0.0.1 -d 10.0.0.2 -t 5", "`--srckey' and"),
            (
                "-p sctp -s 10.0.0.1 -d 10.0.0.2 --sport 1 --dport 2 --state CLOSED -t 5",
                "`--orig-vtag'",
            ),
            (
                "-p dccp -s 10.0.0.1 -d 10.0.0.2 --sport 1 --dport 2 --state OPEN -t 5",
                "`--role'",
            ),
            (
                "-p udp -s 10.0.0.1 -d 10.0.0.2 --sport 1 --dport 2 -t 5 -f ipv4",
                "`--family'",
            ),
            (
                "-p udp -s 10.0.0.0/8 -d 10.0.0.2 --sport 1 --dport 2 -t 5",
                "`--mask-src'",
            ),
            (
                "-p udp -s 10.0.0.1 -d 10.0.0.2 --sport 1 --dport 2 -t 5 -u CONFIRMED",
                "`CONFIRMED'",
            ),
            (
                "-p udp -s 10.0.0.1 -d 10.0.0.2 --sport 1 --dport 2 -t 5 --srckey 1",
                "`--srckey'",
            ),
            (
                "-p udp -s 10.0.0.1 -d 10.0.0.2 --sport 1 --dport 2 -t 5 -n ::1",
                "mismatched",
            ),
        ] {
            let got = refused(args);
            assert!(got.contains(msg), "{args}: {got}");
        }
        assert!(Cli::try_parse_from(["ctscope", "-I", "-t", "x"]).is_err());
        assert!(Cli::try_parse_from(["ctscope", "-I", "-t", "4294967296"]).is_err());
    }

    fn changes() -> Changes {
        Changes {
            timeout: None,
            mark: None,
            status: None,
            state: None,
            label_add: None,
            label_del: None,
        }
    }

    #[test]
    fn update_sends_only_what_changes() {
        let mut ct = flow("10.0.0.1", "10.0.0.2", proto::TCP, 1, 2);
        ct.mark = Some(0x12);
        ct.status = Some(ips::CONFIRMED);
        ct.timeout = Some(100);
        ct.zone = Some(5);
        assert_eq!(changes().request(&ct), None, "nothing asked");
        let mark = Changes {
            mark: Some((0x30, 0xf0)),
            ..changes()
        };
        let req = mark.request(&ct).expect("the mark changes");
        assert_eq!(
            (req.mark, req.zone, req.orig),
            (Some(0x32), Some(5), ct.orig)
        );
        ct.mark = Some(0x32);
        assert_eq!(mark.request(&ct), None, "same mark: not sent, not counted");
        let status = Changes {
            status: Some(ips::ASSURED),
            timeout: Some(100),
            ..changes()
        };
        let req = status.request(&ct).expect("the status changes");
        assert_eq!(req.status, Some(ips::CONFIRMED | ips::ASSURED));
        ct.status = Some(ips::CONFIRMED | ips::ASSURED);
        assert_eq!(status.request(&ct), None);
        let state = Changes {
            state: Some(ProtoState::Tcp(8)),
            ..changes()
        };
        assert!(state.request(&ct).is_some());
    }

    #[test]
    fn label_changes_as_conntrack_counts_them() {
        let ct = flow("10.0.0.1", "10.0.0.2", proto::UDP, 1, 2);
        let mut add = [0u8; 16];
        add[0] = 0b100;
        let adding = Changes {
            label_add: Some(add),
            ..changes()
        };
        let req = adding.request(&ct).expect("always sent");
        assert_eq!(
            req.labels,
            Some(LabelChange {
                bits: add,
                mask: Some(add)
            })
        );
        let deleting = Changes {
            label_del: Some([0; 16]),
            ..changes()
        };
        assert_eq!(deleting.request(&ct), None, "no labels: left alone");
        let mut labelled = ct.clone();
        labelled.extra_mut().labels = Some(add);
        let req = deleting.request(&labelled).expect("sent");
        assert_eq!(
            req.labels,
            Some(LabelChange {
                bits: [0; 16],
                mask: None
            })
        );
    }

    #[test]
    fn kernel_errors_in_conntracks_words() {
        let kernel = |errno| NetlinkError::Kernel {
            op: "create",
            source: io::Error::from_raw_os_error(errno),
        };
        let text = |e: CliError| e.to_string();
        assert_eq!(
            text(operation_failed(kernel(libc::EEXIST), true)),
            "Operation failed: Such conntrack exists, try -U to update"
        );
        assert_eq!(
            text(operation_failed(kernel(libc::EINVAL), true)),
            "Operation failed: invalid parameters"
        );
        assert_eq!(
            text(operation_failed(kernel(libc::EBUSY), false)),
            "Operation failed: Device or resource busy"
        );
    }
}
