//! The expectation table's commands, as conntrack 1.4.7 runs them: `-L
//! expect`, `-G expect`, `-D expect`, `-I expect`, `-F expect`, `-C
//! expect`, `-S expect` and `-E expect`.
//!
//! conntrack's quirks kept: the commands other than `-E` act on IPv4
//! unless `-f ipv6` (its default family for expectation commands is
//! AF_INET); each command takes only the options conntrack lets it take
//! (`Illegal option `--src' with this command`, exit 2); `-G` and `-D`
//! name an expectation by the tuple of a connection it would match.
//! Where conntrack is plainly wrong, ctscope is not (see the README):
//! `-I expect` puts `--tuple-port-src/dst` in the expected tuple with the
//! `-p` protocol (1.4.7 writes the first byte of the last tuple port given
//! into the protocol), and a
//! successful `-D expect` says so and exits 0 (1.4.7 prints "0
//! expectations have been shown." and exits 1).
use std::{
    io::{self, Write as _},
    net::IpAddr,
    os::fd::AsRawFd as _,
    sync::atomic::Ordering,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use ipnet::IpNet;

use crate::{
    cli::{
        CliError, Result,
        args::{
            CountArgs, CreateArgs, EventArgs, ExpectArgs, FilterArgs, FlushArgs, ListArgs,
            StatsArgs,
        },
        illegal,
        signals::stop_on_signals,
        usage,
    },
    ct::{Tuple, has_ports},
    netlink::{
        CtSocket,
        events::{EventConfig, EventMask, EventSocket},
        expect::{ExpectRequest, tuple_attrs},
    },
    output::{OutputOptions, Printer, summary},
    source::SourceChoice,
};

/// conntrack's default family for every expectation command but `-E`.
const DEFAULT_FAMILY: u8 = libc::AF_INET as u8;

/// Names of `CTA_STATS_EXP_*`, as conntrack -S expect prints them.
const STATS_NAMES: [&str; 4] = ["", "expect_new", "expect_create", "expect_delete"];

/// Refuses the first option given that the command does not take, in
/// conntrack's order and words.
fn only(filter: &FilterArgs, allowed: &[&str]) -> Result<()> {
    match filter.given().into_iter().find(|o| !allowed.contains(o)) {
        Some(option) => Err(illegal(option)),
        None => Ok(()),
    }
}

/// conntrack's message for a required option that is missing.
fn missing(option: &str) -> CliError {
    usage(format!(
        "You need to supply the `--{option}' option for this command"
    ))
}

/// One address of a tuple: CIDR is refused (conntrack treats it as the
/// mask option, which these commands do not take).
fn single(net: Option<IpNet>, option: &str, mask_option: &str) -> Result<IpAddr> {
    let net = net.ok_or_else(|| missing(option))?;
    if net.prefix_len() != net.max_prefix_len() {
        return Err(illegal(mask_option));
    }
    Ok(net.addr())
}

/// An address of the expected tuple, and the mask its prefix implies
/// (`--tuple-src 10.0.0.0/24` is `--mask-src 255.255.255.0` too, as in
/// conntrack; an explicit `--mask-src` wins).
fn tuple_addr(net: Option<IpNet>, option: &str) -> Result<(IpAddr, Option<IpAddr>)> {
    let net = net.ok_or_else(|| missing(option))?;
    let implied = (net.prefix_len() != net.max_prefix_len()).then(|| net.netmask());
    Ok((net.addr(), implied))
}

/// The family both addresses share.
fn family_of(addrs: &[IpAddr]) -> Result<u8> {
    let v4 = addrs.iter().all(IpAddr::is_ipv4);
    if !v4 && addrs.iter().any(IpAddr::is_ipv4) {
        return Err(usage("mismatched address family"));
    }
    Ok(if v4 {
        libc::AF_INET as u8
    } else {
        libc::AF_INET6 as u8
    })
}

/// The master's or a matching connection's tuple, and its family: `-s -d
/// -p` and, for protocols with ports, `--sport --dport`.
fn connection_tuple(f: &FilterArgs) -> Result<(u8, Tuple)> {
    let src = single(f.src, "src", "mask-src")?;
    let dst = single(f.dst, "dst", "mask-dst")?;
    let proto = f.proto.ok_or_else(|| missing("protonum"))?;
    let family = family_of(&[src, dst])?;
    if has_ports(proto) {
        f.sport.ok_or_else(|| missing("orig-port-src"))?;
        f.dport.ok_or_else(|| missing("orig-port-dst"))?;
    }
    let tuple = Tuple {
        src: Some(src),
        dst: Some(dst),
        l4proto: Some(proto),
        sport: f.sport,
        dport: f.dport,
        icmp_type: f.icmp_type,
        icmp_code: f.icmp_code,
        icmp_id: f.icmp_id,
        zone: None,
    };
    Ok((family, tuple))
}

/// The options of `-G expect` and `-D expect` (conntrack also takes `-r
/// -q` and the reply ports, and sends neither).
const TUPLE_OPTIONS: &[&str] = &[
    "src",
    "dst",
    "reply-src",
    "reply-dst",
    "protonum",
    "orig-port-src",
    "orig-port-dst",
    "reply-port-src",
    "reply-port-dst",
    "icmp-type",
    "icmp-code",
    "icmp-id",
];

/// `-L expect`: takes `-f` and `-o` only.
pub fn list(args: &ListArgs) -> Result<()> {
    only(&args.filter, &["family"])?;
    if args.zero {
        return Err(illegal("zero"));
    }
    let opts = OutputOptions::parse(args.output.iter().map(String::as_str))?;
    let mut sock = CtSocket::open()?;
    let mut printer = Printer::for_expectations(opts);
    let mut shown = 0u64;
    sock.dump_expect(args.filter.family.unwrap_or(DEFAULT_FAMILY), |exp| {
        shown += 1;
        printer.expectation(exp, None)
    })?;
    printer.finish()?;
    summary(&format!("{shown} expectations have been shown"));
    Ok(())
}

/// The family and attributes of `-G expect` / `-D expect`, which take no
/// `-o`.
fn tuple_request(args: &ListArgs) -> Result<(u8, Vec<u8>)> {
    only(&args.filter, TUPLE_OPTIONS)?;
    if args.zero {
        return Err(illegal("zero"));
    }
    if !args.output.is_empty() {
        return Err(illegal("output"));
    }
    let (family, tuple) = connection_tuple(&args.filter)?;
    Ok((family, tuple_attrs(&tuple).as_bytes().to_vec()))
}

/// The error conntrack words as strerror(ENOENT).
fn no_such_expectation() -> CliError {
    CliError::Failed("Operation failed: such expectation doesn't exist".into())
}

/// `-G expect`: the expectation a connection with this tuple would match,
/// as one line (conntrack prints no summary).
pub fn get(args: &ListArgs) -> Result<()> {
    let (family, attrs) = tuple_request(args)?;
    let mut sock = CtSocket::open()?;
    let exp = sock
        .get_expect(family, &attrs)?
        .ok_or_else(no_such_expectation)?;
    let mut printer = Printer::for_expectations(OutputOptions::default());
    printer.expectation(&exp, None);
    printer.finish()?;
    Ok(())
}

/// `-D expect`: deletes the expectation a connection with this tuple would
/// match.
pub fn delete(args: &ListArgs) -> Result<()> {
    let (family, attrs) = tuple_request(args)?;
    let mut sock = CtSocket::open()?;
    if !sock.delete_expect(family, &attrs)? {
        return Err(no_such_expectation());
    }
    summary("1 expectations have been deleted");
    Ok(())
}

/// `-I expect`: the master (`-s -d -p --sport --dport`), the expected
/// tuple (`--tuple-src --tuple-dst --tuple-port-src --tuple-port-dst`), its
/// mask (`--mask-src --mask-dst --mask-port-src --mask-port-dst`) and `-t`.
pub fn create(args: &CreateArgs) -> Result<()> {
    let f = &args.entry;
    // conntrack checks its option bits in this order: -s -d -p -t, then
    // the tuple and the mask; -r -q -u are taken and not sent.
    only(
        f,
        &[
            "src",
            "dst",
            "reply-src",
            "reply-dst",
            "protonum",
            "status",
            "mask-src",
            "mask-dst",
            "orig-port-src",
            "orig-port-dst",
            "reply-port-src",
            "reply-port-dst",
        ],
    )?;
    for (given, option) in [
        (!args.label_add.is_empty(), "label-add"),
        (
            args.entry.srckey.is_some() || args.entry.dstkey.is_some(),
            "srckey",
        ),
        (
            args.orig_vtag.is_some() || args.reply_vtag.is_some(),
            "orig-vtag",
        ),
        (args.role.is_some(), "role"),
    ] {
        if given {
            return Err(illegal(option));
        }
    }
    f.src.ok_or_else(|| missing("src"))?;
    f.dst.ok_or_else(|| missing("dst"))?;
    let proto = f.proto.ok_or_else(|| missing("protonum"))?;
    let timeout = args.timeout.ok_or_else(|| missing("timeout"))?;
    let e: &ExpectArgs = &args.expect;
    let (tuple_src, implied_src) = tuple_addr(e.tuple_src, "tuple-src")?;
    let (tuple_dst, implied_dst) = tuple_addr(e.tuple_dst, "tuple-dst")?;
    let mask_src = f
        .mask_src
        .or(implied_src)
        .ok_or_else(|| missing("mask-src"))?;
    let mask_dst = f
        .mask_dst
        .or(implied_dst)
        .ok_or_else(|| missing("mask-dst"))?;
    if !has_ports(proto) {
        return Err(usage(
            "-I expect needs a protocol with ports (tcp, udp, udplite, sctp, dccp)",
        ));
    }
    let (master_family, master) = connection_tuple(f)?;
    let port = |v: Option<u16>, option| v.ok_or_else(|| missing(option));
    let request = ExpectRequest {
        tuple: Tuple {
            src: Some(tuple_src),
            dst: Some(tuple_dst),
            l4proto: Some(proto),
            sport: Some(port(e.tuple_port_src, "tuple-port-src")?),
            dport: Some(port(e.tuple_port_dst, "tuple-port-dst")?),
            ..Tuple::default()
        },
        mask: Tuple {
            src: Some(mask_src),
            dst: Some(mask_dst),
            sport: Some(port(e.mask_port_src, "mask-port-src")?),
            dport: Some(port(e.mask_port_dst, "mask-port-dst")?),
            ..Tuple::default()
        },
        master,
        timeout,
    };
    let family = family_of(&[tuple_src, tuple_dst, mask_src, mask_dst])?;
    if family != master_family {
        return Err(usage("mismatched address family"));
    }
    let mut sock = CtSocket::open()?;
    sock.create_expect(family, request.encode().as_bytes())
        .map_err(|e| match e.errno() {
            Some(libc::ENOENT) => {
                CliError::Failed("Operation failed: master conntrack not found".into())
            }
            Some(libc::EINVAL) => CliError::Failed("Operation failed: invalid parameters".into()),
            Some(libc::EEXIST) => {
                CliError::Failed("Operation failed: such expectation exists".into())
            }
            Some(libc::EOPNOTSUPP) => CliError::Failed(
                "Operation failed: the master connection has no helper \
                 (an expectation needs one; see nft's ct helper)"
                    .into(),
            ),
            _ => e.into(),
        })
}

/// `-F expect`: empties the expectation table (every family).
pub fn flush(args: &FlushArgs) -> Result<()> {
    if args.family.is_some() {
        return Err(illegal("family"));
    }
    CtSocket::open()?.flush_expect(DEFAULT_FAMILY)?;
    summary("expectation table has been emptied");
    Ok(())
}

/// `-C expect`: the number of IPv4 expectations, as conntrack counts them
/// (a dump; the kernel keeps no count it reports).
pub fn count(_args: &CountArgs) -> Result<()> {
    let mut n = 0u64;
    CtSocket::open()?.dump_expect(DEFAULT_FAMILY, |_| {
        n += 1;
        true
    })?;
    writeln!(io::stdout().lock(), "{n}")?;
    Ok(())
}

/// `-S expect`: the per-CPU expectation statistics.
pub fn stats(args: &StatsArgs) -> Result<()> {
    if args.total {
        return Err(illegal("total"));
    }
    let mut out = String::new();
    for cpu in CtSocket::open()?.expect_stats_cpu()? {
        out.push_str(&format!("cpu={:<4}\t", cpu.cpu));
        for (kind, value) in &cpu.counters {
            if let Some(name) = STATS_NAMES
                .get(usize::from(*kind))
                .filter(|n| !n.is_empty())
            {
                out.push_str(&format!("{name}={value} "));
            }
        }
        out.push('\n');
    }
    io::stdout().lock().write_all(out.as_bytes())?;
    Ok(())
}

/// How long one wait for events lasts before the stop flag and the
/// deadline are looked at again.
const WAIT: Duration = Duration::from_millis(100);

/// Why `-E expect` takes no eBPF source: the tracer hooks no expectation
/// function. Expectations come from helpers (ftp, sip, tftp), a handful
/// per control connection, a rate ctnetlink's expectation group keeps up
/// with; their kernel functions (`nf_ct_expect_insert`, the unlink path)
/// would need a second record layout for little gain.
pub const EBPF_NO_EXPECTATIONS: &str = "eBPF source unavailable for expectation events: the tracer \
     hooks no expectation function (expectations come from ctnetlink; use --source auto or netlink)";

/// `-E expect`: expectation events as they happen (conntrack takes `-o`
/// only; `--count`, `--duration` and `-b` are ctscope's own).
pub fn events(args: &EventArgs) -> Result<()> {
    only(&args.filter, &[])?;
    if args.event_mask.is_some() {
        return Err(illegal("event-mask"));
    }
    if args.source.source == SourceChoice::Ebpf {
        return Err(CliError::Failed(EBPF_NO_EXPECTATIONS.into()));
    }
    let opts = OutputOptions::parse(args.output.iter().map(String::as_str))?;
    let stop = stop_on_signals(true)?;
    let mut sock = EventSocket::open_expect(EventConfig {
        mask: EventMask::default(),
        rcvbuf: args.source.buffer_size,
        reliable: args.reliable,
    })?;
    let mut printer = Printer::for_expectations(opts);
    let limit = args.count.unwrap_or(u64::MAX);
    let deadline = args.duration.and_then(|d| Instant::now().checked_add(d));
    let mut shown = 0u64;
    let mut overruns = 0u64;
    let mut out_ok = true;
    let result = loop {
        if !out_ok || shown >= limit || stop.load(Ordering::Relaxed) {
            break Ok(());
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            break Ok(());
        }
        let wait = deadline.map_or(WAIT, |d| WAIT.min(d - now));
        if let Err(e) = wait_readable(sock.as_raw_fd(), wait) {
            break Err(CliError::Failed(format!("waiting for events: {e}")));
        }
        let received = sock.drain_expect(64, |kind, exp| {
            if shown >= limit || !out_ok {
                return;
            }
            shown += 1;
            let ns = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
            out_ok = printer.expectation(exp, Some((kind, ns)));
        });
        match received {
            Ok(batch) => {
                if batch.overruns > 0 && overruns == 0 {
                    eprintln!(
                        "ctscope: the kernel dropped expectation events (netlink receive buffer \
                         overrun, ENOBUFS); going on (raise -b/--buffer-size)"
                    );
                }
                overruns += batch.overruns;
            }
            Err(e) => break Err(CliError::from(e)),
        }
        out_ok = out_ok && printer.flush();
    };
    printer.finish()?;
    summary(&format!("{shown} expectation events have been shown"));
    result
}

/// Waits until `fd` has something to read or `timeout` passes; EINTR (a
/// signal) is a normal wake-up.
fn wait_readable(fd: i32, timeout: Duration) -> io::Result<()> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd for the duration of the call.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::{
        cli::{Cli, Command},
        expect::Table,
    };

    fn parse(args: &[&str]) -> Command {
        Cli::try_parse_from(std::iter::once("ctscope").chain(args.iter().copied()))
            .expect("parses")
            .command
            .expect("a command")
    }

    fn err(r: Result<()>) -> String {
        match r {
            Err(CliError::Usage(m)) => m,
            other => panic!("want a usage error, got {other:?}"),
        }
    }

    #[test]
    fn tables_after_each_command() {
        let Command::List(l) = parse(&["-L", "expect", "-o", "xml"]) else {
            panic!("not list");
        };
        assert_eq!(
            (l.table, l.output.as_slice()),
            (Table::Expect, &["xml".to_string()][..])
        );
        let Command::Events(e) = parse(&["-E", "exp"]) else {
            panic!("not events");
        };
        assert_eq!(e.table, Table::Expect);
        let Command::Count(c) = parse(&["-C", "expect"]) else {
            panic!("not count");
        };
        assert_eq!(c.table, Table::Expect);
        let Command::Flush(f) = parse(&["-F"]) else {
            panic!("not flush");
        };
        assert_eq!(f.table, Table::Conntrack);
        let Command::List(l) = parse(&["-L", "dying"]) else {
            panic!("not list");
        };
        assert_eq!(l.table, Table::Dying);
        assert!(
            Cli::try_parse_from(["ctscope", "-L", "expectations"]).is_err(),
            "an unknown table is a usage error"
        );
    }

    #[test]
    fn options_each_command_refuses_before_any_socket() {
        let Command::List(l) = parse(&["-L", "expect", "-s", "1.1.1.1"]) else {
            panic!("not list");
        };
        assert_eq!(err(list(&l)), "Illegal option `--src' with this command");
        let Command::List(l) = parse(&["-L", "expect", "-z"]) else {
            panic!("not list");
        };
        assert_eq!(err(list(&l)), "Illegal option `--zero' with this command");
        let Command::Get(g) = parse(&["-G", "expect", "-s", "1.1.1.1", "-d", "2.2.2.2"]) else {
            panic!("not get");
        };
        assert_eq!(
            err(get(&g)),
            "You need to supply the `--protonum' option for this command"
        );
        let Command::Delete(d) = parse(&[
            "-D",
            "expect",
            "-s",
            "1.1.1.0/24",
            "-d",
            "2.2.2.2",
            "-p",
            "tcp",
        ]) else {
            panic!("not delete");
        };
        assert_eq!(
            err(delete(&d)),
            "Illegal option `--mask-src' with this command"
        );
        let Command::Delete(d) = parse(&[
            "-D", "expect", "-s", "1.1.1.1", "-d", "2.2.2.2", "-p", "udp", "--sport", "1",
        ]) else {
            panic!("not delete");
        };
        assert_eq!(
            err(delete(&d)),
            "You need to supply the `--orig-port-dst' option for this command"
        );
        let Command::Create(c) = parse(&[
            "-I",
            "expect",
            "-s",
            "1.1.1.1",
            "-d",
            "2.2.2.2",
            "-p",
            "tcp",
            "-t",
            "10",
            "--tuple-src",
            "2.2.2.2",
            "--tuple-dst",
            "1.1.1.1",
            "--mask-src",
            "255.255.255.255",
        ]) else {
            panic!("not create");
        };
        assert_eq!(
            err(create(&c)),
            "You need to supply the `--mask-dst' option for this command"
        );
        let Command::Create(c) = parse(&["-I", "expect", "-m", "1"]) else {
            panic!("not create");
        };
        assert_eq!(err(create(&c)), "Illegal option `--mark' with this command");
        let Command::Flush(f) = parse(&["-F", "expect", "-f", "ipv4"]) else {
            panic!("not flush");
        };
        assert_eq!(
            err(flush(&f)),
            "Illegal option `--family' with this command"
        );
        let Command::Events(e) = parse(&["-E", "expect", "-e", "NEW"]) else {
            panic!("not events");
        };
        assert_eq!(
            err(events(&e)),
            "Illegal option `--event-mask' with this command"
        );
        let Command::Events(e) = parse(&["-E", "expect", "-p", "tcp"]) else {
            panic!("not events");
        };
        assert_eq!(
            err(events(&e)),
            "Illegal option `--protonum' with this command"
        );
        // A prefix on the expected tuple's address is its mask.
        let net = |s: &str| s.parse::<IpNet>().ok();
        assert_eq!(
            tuple_addr(net("10.1.2.3/24"), "tuple-src").ok(),
            Some(("10.1.2.3".parse().expect("a"), "255.255.255.0".parse().ok()))
        );
        assert_eq!(
            tuple_addr(net("10.1.2.3/32"), "tuple-src").ok(),
            Some(("10.1.2.3".parse().expect("a"), None))
        );
        assert!(tuple_addr(None, "tuple-dst").is_err());
        // The lists and the commands they do not take: refused before any
        // socket is opened, exit 2.
        for argv in [
            &["-D", "dying"][..],
            &["-F", "unconfirmed"],
            &["-C", "dying"],
            &["-E", "dying"],
            &["-U", "expect", "-m", "1"],
            &[
                "-G", "expect", "-s", "1.1.1.1", "-d", "2.2.2.2", "-p", "udp", "-o", "xml",
            ],
        ] {
            let code = crate::cli::run(std::iter::once("ctscope").chain(argv.iter().copied()));
            assert_eq!(code, 2, "{argv:?}");
        }
    }
}
