//! The table commands: list (`-L`, and `-L -z`, which zeroes counters),
//! get (`-G`), delete (`-D`), flush (`-F`), with conntrack's output and
//! exit codes.
use std::{net::IpAddr, sync::atomic::Ordering};

use ipnet::IpNet;

use crate::{
    cli::{
        CliError, Result,
        args::{FilterArgs, FlushArgs, ListArgs},
        illegal,
        signals::{interrupt_on_signals, interrupted},
        usage,
    },
    ct::{Conntrack, Tuple, has_ports},
    expect::Table,
    netlink::{CtSocket, codec::AttrWriter, cta},
    output::{LabelMap, Listing, OutputOptions, Printer, summary},
};

/// The `-o` options of a listing; selecting by label (`-l`) prints the
/// labels too, as conntrack does.
fn output_options(output: &[String], filter: &FilterArgs) -> Result<OutputOptions> {
    let mut opts = OutputOptions::parse(output.iter().map(String::as_str))?;
    if !filter.label.is_empty() && opts.labels.is_none() {
        opts.labels = Some(LabelMap::load_default());
    }
    Ok(opts)
}

/// Whether conntrack counts the filters as comparisons (its
/// CT_COMPARISON), which `-z` refuses: every filter but -f and the NAT ones
/// (ports, states and ICMP fields come with -p).
fn compares(f: &FilterArgs) -> bool {
    f.proto.is_some()
        || [f.src, f.dst, f.reply_src, f.reply_dst]
            .iter()
            .any(Option::is_some)
        || f.mark.is_some()
        || f.secmark.is_some()
        || f.status.is_some()
        || [f.zone, f.orig_zone, f.reply_zone]
            .iter()
            .any(Option::is_some)
        || !f.label.is_empty()
}

/// `-z` and `-c` are list's own: get and delete refuse them, as conntrack.
fn list_only_options(args: &ListArgs) -> Result<()> {
    if args.zero {
        return Err(illegal("zero"));
    }
    if args.filter.secmark.is_some() {
        return Err(illegal("secmark"));
    }
    Ok(())
}

/// `-L`, `-L dying`, `-L unconfirmed` (`-L expect` is in `cmd::expect`).
pub fn list(args: &ListArgs) -> Result<()> {
    let main_table = args.table == Table::Conntrack;
    if main_table && args.zero && compares(&args.filter) {
        return Err(usage("Can't use -z with filtering parameters"));
    }
    let filter = args.filter.to_filter()?;
    let opts = output_options(&args.output, &args.filter)?;
    let mut sock = CtSocket::open()?;
    let signal = interrupt_on_signals()?;
    // conntrack 1.4.7 ends its dying and unconfirmed dumps before the
    // line that closes the XML document.
    let listing = if main_table {
        Listing::List
    } else {
        Listing::Get
    };
    let mut printer = Printer::for_listing(opts, listing);
    let mut shown = 0u64;
    let kernel_filter = filter.kernel_attrs();
    let on_entry = |ct: &Conntrack| {
        if signal.load(Ordering::Relaxed) != 0 {
            return false;
        }
        if !filter.matches(ct) {
            return true;
        }
        shown += 1;
        printer.entry(ct)
    };
    let family = filter.family.unwrap_or(0);
    // With -z the kernel zeroes every entry it dumps, those the NAT
    // filters then leave out included, as for conntrack.
    let dumped = match args.table {
        // conntrack sends these dumps without filters, and never zeroes.
        Table::Dying => sock.dump_dying(family, on_entry)?,
        Table::Unconfirmed => sock.dump_unconfirmed(family, on_entry)?,
        _ if args.zero => sock.dump_zeroing(family, kernel_filter.as_bytes(), on_entry)?,
        _ => sock.dump(family, kernel_filter.as_bytes(), on_entry)?,
    };
    printer.finish()?;
    if dumped.restarts > 0 {
        eprintln!(
            "ctscope: the dump was restarted {} time(s) after a socket overrun (ENOBUFS); \
             entries already shown were skipped by id",
            dumped.restarts
        );
    }
    summary(&format!("{shown} flow entries have been shown"));
    interrupted(&signal)
}

/// The tuple conntrack -G / -D take: orig (-s -d --sport --dport) or reply.
fn tuple_request(f: &FilterArgs) -> Result<(u8, AttrWriter)> {
    let single = |net: &Option<IpNet>| -> Option<IpAddr> {
        net.as_ref()
            .filter(|n| n.prefix_len() == n.max_prefix_len())
            .map(IpNet::addr)
    };
    // conntrack -G refuses the zone options (exit 2), which it would
    // otherwise ignore: the entry would not be found.
    for (set, flag) in [
        (f.zone.is_some(), "--zone"),
        (f.orig_zone.is_some(), "--orig-zone"),
        (f.reply_zone.is_some(), "--reply-zone"),
        (f.mask_src.is_some(), "--mask-src"),
        (f.mask_dst.is_some(), "--mask-dst"),
    ] {
        if set {
            return Err(usage(format!("Illegal option `{flag}' with this command")));
        }
    }
    let proto = f.proto.ok_or_else(|| usage("get needs -p/--proto"))?;
    let (kind, src, dst, sport, dport) = if f.src.is_some() || f.dst.is_some() {
        (
            cta::TUPLE_ORIG,
            single(&f.src),
            single(&f.dst),
            f.sport,
            f.dport,
        )
    } else {
        (
            cta::TUPLE_REPLY,
            single(&f.reply_src),
            single(&f.reply_dst),
            f.reply_port_src,
            f.reply_port_dst,
        )
    };
    let (Some(src), Some(dst)) = (src, dst) else {
        return Err(usage(
            "get needs a full tuple: -s and -d (or -r and -q) as single addresses, -p, and ports",
        ));
    };
    if src.is_ipv4() != dst.is_ipv4() {
        return Err(usage("mixed address families"));
    }
    let has_ports = has_ports(proto);
    if has_ports && (sport.is_none() || dport.is_none()) {
        return Err(usage(
            "get needs --sport and --dport (or the reply ports) for this protocol",
        ));
    }
    // GRE's keys take the ports' place in the tuple.
    let (sport, dport) = if proto == crate::ct::proto::GRE {
        match (f.srckey, f.dstkey) {
            (Some(s), Some(d)) => (Some(s), Some(d)),
            _ => return Err(usage("get needs --srckey and --dstkey for -p gre")),
        }
    } else {
        (sport, dport)
    };
    let tuple = Tuple {
        src: Some(src),
        dst: Some(dst),
        l4proto: Some(proto),
        sport,
        dport,
        icmp_type: f.icmp_type,
        icmp_code: f.icmp_code,
        icmp_id: f.icmp_id,
        zone: None,
    };
    let mut w = AttrWriter::new();
    w.tuple(kind, &tuple);
    let family = if src.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    } as u8;
    Ok((family, w))
}

pub fn get(args: &ListArgs) -> Result<()> {
    list_only_options(args)?;
    let opts = output_options(&args.output, &args.filter)?;
    let (family, attrs) = tuple_request(&args.filter)?;
    let mut sock = CtSocket::open()?;
    match sock.get(family, attrs.as_bytes())? {
        Some(ct) => {
            let mut printer = Printer::for_listing(opts, Listing::Get);
            printer.entry(&ct);
            printer.finish()?;
            summary("1 flow entries have been shown");
            Ok(())
        }
        None => Err(CliError::Failed("such conntrack doesn't exist".into())),
    }
}

pub fn delete(args: &ListArgs) -> Result<()> {
    list_only_options(args)?;
    let filter = args.filter.to_filter()?;
    let opts = output_options(&args.output, &args.filter)?;
    let mut sock = CtSocket::open()?;
    let signal = interrupt_on_signals()?;
    // Collect first: deleting while dumping would disturb the dump.
    let mut victims: Vec<Conntrack> = Vec::new();
    let kernel_filter = filter.kernel_attrs();
    sock.dump(filter.family.unwrap_or(0), kernel_filter.as_bytes(), |ct| {
        if filter.matches(ct) {
            victims.push(ct.clone());
        }
        signal.load(Ordering::Relaxed) == 0
    })?;
    let mut printer = Printer::for_listing(opts, Listing::Delete);
    let mut deleted = 0u64;
    for ct in &victims {
        if signal.load(Ordering::Relaxed) != 0 {
            break;
        }
        if sock.delete(ct.family, delete_attrs(ct).as_bytes())? {
            deleted += 1;
            printer.entry(ct);
        }
    }
    printer.finish()?;
    summary(&format!("{deleted} flow entries have been deleted"));
    interrupted(&signal)?;
    if deleted == 0 {
        // conntrack -D exits 1 when nothing matched.
        return Err(CliError::Silent);
    }
    Ok(())
}

/// The request attributes that name one entry for deletion: its original
/// tuple, zone and id (so a newer entry with the same tuple is kept).
pub fn delete_attrs(ct: &Conntrack) -> AttrWriter {
    let mut w = AttrWriter::new();
    w.tuple(cta::TUPLE_ORIG, &ct.orig);
    if let Some(z) = ct.zone {
        w.be16(cta::ZONE, z);
    }
    if let Some(id) = ct.id {
        w.be32(cta::ID, id);
    }
    w
}

/// The first kernel whose ctnetlink flushes one family on request.
const FAMILY_FLUSH_SINCE: (u32, u32) = (4, 19);

pub fn flush(args: &FlushArgs) -> Result<()> {
    let mut sock = CtSocket::open()?;
    match args.family {
        Some(family)
            if crate::release::kernel_version().is_some_and(|v| v < FAMILY_FLUSH_SINCE) =>
        {
            // An older kernel would flush every family: delete this
            // family's entries one by one instead.
            eprintln!(
                "ctscope: this kernel flushes every family at once; deleting the {} entries one by one",
                if i32::from(family) == libc::AF_INET6 {
                    "IPv6"
                } else {
                    "IPv4"
                }
            );
            let mut victims = Vec::new();
            sock.dump(family, &[], |ct| {
                victims.push(ct.clone());
                true
            })?;
            for ct in &victims {
                sock.delete(ct.family, delete_attrs(ct).as_bytes())?;
            }
        }
        family => sock.flush(family.unwrap_or(0))?,
    }
    summary("connection tracking table has been emptied");
    Ok(())
}
