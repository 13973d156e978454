//! The command line: conntrack(8)-compatible subcommands and flags.
//!
//! Exit codes as conntrack: 0 ok, 2 bad parameters (one line saying why),
//! 1 anything else (missing entry, missing privilege, kernel error).
use std::{
    io::{self, Write},
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;

use crate::{
    filter::{Filter, NatFilter, StateFilter},
    format::{self, EventKind, EventMeta, LabelMap, OutputOptions},
    netlink::{
        Conntrack, CtSocket, NetlinkError, ProtoState, Tuple,
        codec::AttrWriter,
        cta,
        events::{EventConfig, EventMask, EventSocket},
    },
    netns,
    progname::ProgName,
    table::Table,
    top::{self, SortKey, View},
    tracer, tui,
};

/// What ends a command early, and with which exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad parameters: exit 2.
    #[error("{0}")]
    Usage(String),
    /// Anything else: exit 1.
    #[error("{0}")]
    Failed(String),
    /// The kernel refused for lack of privilege: exit 1.
    #[error("{0}")]
    Privilege(String),
    /// Standard output was closed (e.g. `| head`): end quietly.
    #[error("broken pipe")]
    BrokenPipe,
    /// Exit 1 with nothing more to say (the summary said it).
    #[error("")]
    Silent,
    /// Stopped by this signal after its summary: exit 128 + the signal,
    /// as a shell reports a command a signal ended.
    #[error("")]
    Interrupted(i32),
}

impl From<NetlinkError> for CliError {
    fn from(e: NetlinkError) -> Self {
        match e {
            NetlinkError::PermissionDenied { .. } => Self::Privilege(e.to_string()),
            e => Self::Failed(e.to_string()),
        }
    }
}

/// For the commands that may trace: a missing privilege names the eBPF
/// source's capabilities too, in the same line.
fn with_ebpf_caps(result: Result<()>, source: SourceChoice) -> Result<()> {
    match result {
        Err(CliError::Privilege(msg)) if source != SourceChoice::Netlink => {
            Err(CliError::Privilege(format!(
                "{msg}; the eBPF source needs root, or CAP_BPF and CAP_PERFMON"
            )))
        }
        other => other,
    }
}

impl From<io::Error> for CliError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::BrokenPipe {
            Self::BrokenPipe
        } else {
            Self::Failed(format!("writing output: {e}"))
        }
    }
}

type Result<T> = std::result::Result<T, CliError>;

fn usage(msg: impl Into<String>) -> CliError {
    CliError::Usage(msg.into())
}

/// ctscope: what the Linux connection tracker is doing.
#[derive(Parser, Debug)]
#[command(
    name = "ctscope",
    version,
    about = "Shows what the Linux connection tracker (conntrack) is doing",
    disable_help_subcommand = true
)]
pub struct Cli {
    /// Act inside another network namespace: a name under /run/netns, or a path
    /// such as /proc/PID/ns/net.
    #[arg(long, global = true, value_name = "NAME|PATH")]
    pub netns: Option<String>,

    /// Without a command: `top`.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands; conntrack's short options are aliases (`-L` = `list`).
#[derive(Subcommand, Debug)]
pub enum Command {
    /// List the connection tracking table (conntrack -L).
    #[command(short_flag = 'L', long_flag = "dump", visible_alias = "dump")]
    List(ListArgs),
    /// Get one entry by its tuple (conntrack -G).
    #[command(short_flag = 'G', long_flag = "get")]
    Get(ListArgs),
    /// Delete the entries that match the filters (conntrack -D).
    #[command(short_flag = 'D', long_flag = "delete")]
    Delete(ListArgs),
    /// Flush the whole table (conntrack -F).
    #[command(short_flag = 'F', long_flag = "flush")]
    Flush(FlushArgs),
    /// Print the number of entries in the table (conntrack -C).
    #[command(short_flag = 'C', long_flag = "count")]
    Count,
    /// Print per-CPU statistics (conntrack -S).
    #[command(short_flag = 'S', long_flag = "stats")]
    Stats(StatsArgs),
    /// Print connection events as they happen (conntrack -E).
    #[command(short_flag = 'E', long_flag = "event")]
    Events(EventArgs),
    /// The live table, like iptstate (the default command).
    Top(TopArgs),
    /// Watch for a while, then report churn, lifetimes, latencies, top
    /// talkers and table pressure.
    Profile(ProfileArgs),
}

/// Arguments of profile.
#[derive(Args, Debug, Clone)]
pub struct ProfileArgs {
    /// How long to watch, in seconds.
    #[arg(long, value_parser = parse_duration, default_value = "10")]
    pub duration: std::time::Duration,
    /// Output: text (default) or json.
    #[arg(short = 'o', long = "output", value_parser = ["text", "json"], default_value = "text")]
    pub output: String,
    /// How many top talkers of each kind.
    #[arg(long = "top", default_value_t = 10)]
    pub top: usize,
    /// Event source.
    #[arg(long, value_enum, default_value_t = SourceChoice::Auto)]
    pub source: SourceChoice,
}

/// Arguments of top.
#[derive(Args, Debug, Clone)]
pub struct TopArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// One snapshot to stdout as a plain text table, then exit.
    #[arg(short = '1', long = "once")]
    pub once: bool,
    /// Sort column.
    #[arg(long, value_enum, default_value_t = SortKey::Src)]
    pub sort: SortKey,
    /// Largest first.
    #[arg(long)]
    pub reverse: bool,
    /// At most this many rows (--once; default: all).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Bytes, packets and rate columns (needs nf_conntrack_acct=1).
    #[arg(short = 'C', long = "counters")]
    pub counters: bool,
    /// Seconds between full dumps that reconcile the table.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub resync: u64,
    /// Turn on nf_conntrack_acct (per-connection counters) in this namespace.
    #[arg(long = "enable-acct")]
    pub enable_acct: bool,
    /// Event source.
    #[arg(long, value_enum, default_value_t = SourceChoice::Auto)]
    pub source: SourceChoice,
    /// Netlink receive buffer in bytes for the ctnetlink source.
    #[arg(short = 'b', long = "buffer-size", default_value_t = 256 << 20, value_parser = parse_buffer_size)]
    pub buffer_size: usize,
}

impl Default for TopArgs {
    fn default() -> Self {
        Self {
            filter: FilterArgs::default(),
            once: false,
            sort: SortKey::Src,
            reverse: false,
            limit: None,
            counters: false,
            resync: 10,
            enable_acct: false,
            source: SourceChoice::Auto,
            buffer_size: 256 << 20,
        }
    }
}

/// Where events come from.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SourceChoice {
    /// eBPF when it loads and attaches, else ctnetlink (said on stderr).
    #[default]
    Auto,
    /// eBPF only: exit 1 with the reason when it cannot attach.
    Ebpf,
    /// ctnetlink events only.
    Netlink,
}

/// Arguments of events.
#[derive(Args, Debug, Clone)]
pub struct EventArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Output: extended, id, timestamp, json (comma-separated).
    #[arg(short = 'o', long = "output", value_name = "FORMAT")]
    pub output: Vec<String>,
    /// Events to show: NEW, UPDATE, DESTROY, ALL (comma-separated).
    #[arg(short = 'e', long = "event-mask", value_parser = EventMask::parse, default_value = "ALL")]
    pub event_mask: EventMask,
    /// Stop after this many events.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<std::time::Duration>,
    /// Netlink receive buffer in bytes (raised with SO_RCVBUFFORCE).
    #[arg(short = 'b', long = "buffer-size", default_value_t = 256 << 20, value_parser = parse_buffer_size)]
    pub buffer_size: usize,
    /// Reliable ctnetlink delivery: the kernel drops the conntrack change
    /// rather than the event when ctscope falls behind (slows the packet path).
    #[arg(long)]
    pub reliable: bool,
    /// Event source.
    #[arg(long, value_enum, default_value_t = SourceChoice::Auto)]
    pub source: SourceChoice,
    /// eBPF ring buffer size in bytes (a power of two; the default absorbs
    /// a 100 ms consumer stall at 1M events/s).
    #[arg(long = "ring-size", default_value_t = 32 << 20, value_parser = parse_ring_size)]
    pub ring_size: u32,
    /// Show events of every network namespace (eBPF source), not only ours.
    #[arg(long = "all-netns")]
    pub all_netns: bool,
}

fn parse_ring_size(s: &str) -> std::result::Result<u32, String> {
    s.parse::<u32>()
        .ok()
        .filter(|v| *v >= 4096 && v.is_power_of_two())
        .ok_or_else(|| format!("invalid ring size `{s}' (bytes: a power of two, at least 4096)"))
}

fn parse_duration(s: &str) -> std::result::Result<std::time::Duration, String> {
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v > 0.0)
        .map(std::time::Duration::from_secs_f64)
        .ok_or_else(|| format!("invalid duration `{s}' (seconds, > 0)"))
}

fn parse_buffer_size(s: &str) -> std::result::Result<usize, String> {
    s.parse::<usize>()
        .ok()
        .filter(|v| (4096..=(1 << 31)).contains(v))
        .ok_or_else(|| format!("invalid buffer size `{s}' (bytes, 4096 to 2147483648)"))
}

/// Filters shared by list, get, delete (and later events and top).
#[derive(Args, Debug, Default, Clone)]
pub struct FilterArgs {
    /// Original source address or network (ADDR or ADDR/PREFIX).
    #[arg(short = 's', long = "src", visible_alias = "orig-src", value_parser = parse_net)]
    pub src: Option<IpNet>,
    /// Original destination address or network.
    #[arg(short = 'd', long = "dst", visible_alias = "orig-dst", value_parser = parse_net)]
    pub dst: Option<IpNet>,
    /// Reply source address or network.
    #[arg(short = 'r', long = "reply-src", value_parser = parse_net)]
    pub reply_src: Option<IpNet>,
    /// Reply destination address or network.
    #[arg(short = 'q', long = "reply-dst", value_parser = parse_net)]
    pub reply_dst: Option<IpNet>,
    /// Layer 4 protocol, by name (tcp, udp, icmp...) or number.
    #[arg(short = 'p', long = "proto", visible_alias = "protonum", value_parser = parse_proto)]
    pub proto: Option<u8>,
    /// Layer 3 family: ipv4 or ipv6 (default: both).
    #[arg(short = 'f', long = "family", value_parser = parse_family)]
    pub family: Option<u8>,
    /// Original source port.
    #[arg(long = "sport", visible_alias = "orig-port-src")]
    pub sport: Option<u16>,
    /// Original destination port.
    #[arg(long = "dport", visible_alias = "orig-port-dst")]
    pub dport: Option<u16>,
    /// Reply source port.
    #[arg(long = "reply-port-src")]
    pub reply_port_src: Option<u16>,
    /// Reply destination port.
    #[arg(long = "reply-port-dst")]
    pub reply_port_dst: Option<u16>,
    /// Protocol state (TCP, SCTP, DCCP), e.g. ESTABLISHED.
    #[arg(long = "state")]
    pub state: Option<String>,
    /// ICMP type.
    #[arg(long = "icmp-type")]
    pub icmp_type: Option<u8>,
    /// ICMP code.
    #[arg(long = "icmp-code")]
    pub icmp_code: Option<u8>,
    /// ICMP id.
    #[arg(long = "icmp-id")]
    pub icmp_id: Option<u16>,
    /// Connection mark, MARK or MARK/MASK (decimal or 0x hex).
    #[arg(short = 'm', long = "mark", value_parser = parse_mark)]
    pub mark: Option<(u32, u32)>,
    /// Status flags that must be set, comma-separated (ASSURED, SEEN_REPLY,
    /// EXPECTED, FIXED_TIMEOUT, ...; UNSET for none).
    #[arg(short = 'u', long = "status", value_parser = parse_status)]
    pub status: Option<(u32, u32)>,
    /// Zone.
    #[arg(short = 'w', long = "zone")]
    pub zone: Option<u16>,
    /// Original-direction zone.
    #[arg(long = "orig-zone")]
    pub orig_zone: Option<u16>,
    /// Reply-direction zone.
    #[arg(long = "reply-zone")]
    pub reply_zone: Option<u16>,
    /// Source-NATed entries, optionally to ADDR.
    #[arg(short = 'n', long = "src-nat", num_args = 0..=1, default_missing_value = "", value_name = "ADDR")]
    pub src_nat: Option<String>,
    /// Destination-NATed entries, optionally to ADDR.
    #[arg(short = 'g', long = "dst-nat", num_args = 0..=1, default_missing_value = "", value_name = "ADDR")]
    pub dst_nat: Option<String>,
    /// Entries NATed either way, optionally to ADDR.
    #[arg(short = 'j', long = "any-nat", num_args = 0..=1, default_missing_value = "", value_name = "ADDR")]
    pub any_nat: Option<String>,
    /// Connection labels that must be set (names from connlabel.conf, or bit
    /// numbers), comma-separated.
    #[arg(short = 'l', long = "label")]
    pub label: Vec<String>,
}

/// Arguments of list, get and delete.
#[derive(Args, Debug, Default, Clone)]
pub struct ListArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Output: extended, id, ktimestamp, labels, json (comma-separated).
    #[arg(short = 'o', long = "output", value_name = "FORMAT")]
    pub output: Vec<String>,
}

/// Arguments of flush.
#[derive(Args, Debug, Default, Clone)]
pub struct FlushArgs {
    /// Only this family: ipv4 or ipv6.
    #[arg(short = 'f', long = "family", value_parser = parse_family)]
    pub family: Option<u8>,
}

/// Arguments of stats.
#[derive(Args, Debug, Default, Clone)]
pub struct StatsArgs {
    /// Add a line with the sum over all CPUs.
    #[arg(long)]
    pub total: bool,
}

fn parse_net(s: &str) -> std::result::Result<IpNet, String> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net);
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("invalid address `{s}'"))
}

fn parse_proto(s: &str) -> std::result::Result<u8, String> {
    format::proto_number(s).ok_or_else(|| format!("unknown protocol `{s}'"))
}

fn parse_family(s: &str) -> std::result::Result<u8, String> {
    match s {
        "ipv4" => Ok(libc::AF_INET as u8),
        "ipv6" => Ok(libc::AF_INET6 as u8),
        _ => Err(format!("unknown family `{s}' (ipv4 or ipv6)")),
    }
}

fn parse_u32(s: &str) -> Option<u32> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn parse_mark(s: &str) -> std::result::Result<(u32, u32), String> {
    let bad = || format!("invalid mark `{s}' (MARK or MARK/MASK)");
    match s.split_once('/') {
        Some((v, m)) => Ok((parse_u32(v).ok_or_else(bad)?, parse_u32(m).ok_or_else(bad)?)),
        None => Ok((parse_u32(s).ok_or_else(bad)?, u32::MAX)),
    }
}

/// `-u`: (value, mask). UNREPLIED means SEEN_REPLY unset; UNSET asks
/// nothing, as in conntrack.
fn parse_status(s: &str) -> std::result::Result<(u32, u32), String> {
    let (mut value, mut mask) = (0, 0);
    for word in s.split(',') {
        match word {
            "UNSET" => {}
            "UNREPLIED" => mask |= crate::netlink::ips::SEEN_REPLY,
            _ => {
                let bit = crate::netlink::ips::NAMES
                    .iter()
                    .find(|(n, _)| *n == word)
                    .map(|(_, b)| *b)
                    .ok_or_else(|| format!("Bad parameter `{word}'"))?;
                value |= bit;
                mask |= bit;
            }
        }
    }
    Ok((value, mask))
}

fn parse_state(proto: Option<u8>, name: &str) -> Result<StateFilter> {
    let upper = name.to_ascii_uppercase();
    let find = |table: &[&str; 10]| table.iter().position(|s| *s == upper).map(|i| i as u8);
    let state = match proto {
        Some(6) => find(&format::TCP_STATES).map(ProtoState::Tcp),
        Some(132) => find(&format::SCTP_STATES).map(ProtoState::Sctp),
        Some(33) => find(&format::DCCP_STATES).map(ProtoState::Dccp),
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

fn family_of(net: &Option<IpNet>) -> Option<u8> {
    net.as_ref().map(|n| match n {
        IpNet::V4(_) => libc::AF_INET as u8,
        IpNet::V6(_) => libc::AF_INET6 as u8,
    })
}

impl FilterArgs {
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
        let mut family = self.family;
        for net in [&self.src, &self.dst, &self.reply_src, &self.reply_dst] {
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
        if ports.iter().any(Option::is_some) && self.proto.is_none() {
            return Err(usage("port filters need -p/--proto"));
        }
        let icmp = self.icmp_type.is_some() || self.icmp_code.is_some() || self.icmp_id.is_some();
        if icmp && !matches!(self.proto, Some(1 | 58)) {
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
            orig_src: self.src,
            orig_dst: self.dst,
            reply_src: self.reply_src,
            reply_dst: self.reply_dst,
            l4proto: self.proto,
            orig_sport: self.sport,
            orig_dport: self.dport,
            reply_sport: self.reply_port_src,
            reply_dport: self.reply_port_dst,
            state,
            icmp_type: self.icmp_type,
            icmp_code: self.icmp_code,
            icmp_id: self.icmp_id,
            mark: self.mark,
            status: self.status,
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

const OUT_CHUNK: usize = 256 * 1024;

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Writes entries to stdout in large chunks; memory stays bounded.
struct Printer {
    /// Namespace inode to show with each event (--all-netns).
    netns: Option<u32>,
    out: Vec<u8>,
    stdout: io::Stdout,
    opts: OutputOptions,
    now: i64,
    error: Option<io::Error>,
}

impl Printer {
    fn new(opts: OutputOptions) -> Self {
        Self {
            netns: None,
            out: Vec::with_capacity(OUT_CHUNK + 4096),
            stdout: io::stdout(),
            opts,
            now: now_secs(),
            error: None,
        }
    }

    /// Adds one entry; false once stdout has failed.
    fn entry(&mut self, ct: &Conntrack) -> bool {
        if self.opts.json {
            format::write_json(&mut self.out, ct, &self.opts, EventMeta::default());
        } else {
            format::write_text(&mut self.out, ct, &self.opts, None, self.now);
        }
        if self.out.len() >= OUT_CHUNK {
            return self.flush_out();
        }
        true
    }

    /// Adds one event line.
    fn event(
        &mut self,
        kind: EventKind,
        ct: &Conntrack,
        source: &str,
        portid: u32,
        prognames: &mut ProgName,
        time_ns: Option<u64>,
    ) -> bool {
        let now = match time_ns {
            Some(ns) => std::time::Duration::from_nanos(ns),
            None => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        };
        if self.opts.json {
            let meta = EventMeta {
                kind: Some(kind),
                time_ns: Some(now.as_nanos() as u64),
                source: Some(source),
                netns: self.netns,
            };
            format::write_json(&mut self.out, ct, &self.opts, meta);
        } else {
            if self.opts.timestamp {
                // conntrack's "[%-.8ld.%-.6ld]\t".
                let _ = write!(
                    self.out,
                    "[{:08}.{:06}]\t",
                    now.as_secs(),
                    now.subsec_micros()
                );
            }
            format::write_text(
                &mut self.out,
                ct,
                &self.opts,
                Some(kind),
                now.as_secs() as i64,
            );
            if let Some(netns) = self.netns {
                self.out.pop();
                let _ = write!(self.out, " netns={netns}");
                self.out.push(b'\n');
            }
            if portid != 0 {
                self.out.pop();
                let _ = write!(self.out, " [USERSPACE] portid={portid}");
                if let Some(name) = prognames.lookup(portid) {
                    let _ = write!(self.out, " progname={name}");
                }
                self.out.push(b'\n');
            }
        }
        if self.out.len() >= OUT_CHUNK {
            return self.flush_out();
        }
        true
    }

    fn flush_out(&mut self) -> bool {
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

    fn finish(mut self) -> Result<()> {
        self.flush_out();
        if let Some(e) = self.error.take() {
            return Err(e.into());
        }
        self.stdout.lock().flush()?;
        Ok(())
    }
}

fn summary(n: u64, what: &str) {
    eprintln!(
        "ctscope v{} (conntrack-tools compatible): {n} flow entries have been {what}.",
        env!("CARGO_PKG_VERSION")
    );
}

fn list(args: &ListArgs) -> Result<()> {
    let filter = args.filter.to_filter()?;
    let opts = OutputOptions::parse(args.output.iter().map(String::as_str))
        .map_err(|e| usage(e.to_string()))?;
    let mut sock = CtSocket::open()?;
    let signal = interrupt_on_signals()?;
    let mut printer = Printer::new(opts);
    let mut shown = 0u64;
    let kernel_filter = filter.kernel_attrs();
    let dumped = sock.dump(filter.family.unwrap_or(0), kernel_filter.as_bytes(), |ct| {
        if signal.load(Ordering::Relaxed) != 0 {
            return false;
        }
        if !filter.matches(ct) {
            return true;
        }
        shown += 1;
        printer.entry(ct)
    })?;
    printer.finish()?;
    if dumped.restarts > 0 {
        eprintln!(
            "ctscope: the dump was restarted {} time(s) after a socket overrun (ENOBUFS); \
             entries already shown were skipped by id",
            dumped.restarts
        );
    }
    summary(shown, "shown");
    interrupted(&signal)
}

/// The tuple conntrack -G / -D take: orig (-s -d --sport --dport) or reply.
fn tuple_request(f: &FilterArgs) -> Result<(u8, AttrWriter)> {
    let single = |net: &Option<IpNet>| -> Option<IpAddr> {
        net.as_ref()
            .filter(|n| n.prefix_len() == n.max_prefix_len())
            .map(IpNet::addr)
    };
    if f.zone.is_some() {
        return Err(usage("Illegal option `--zone' with this command"));
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
    let has_ports = format::has_ports(proto);
    if has_ports && (sport.is_none() || dport.is_none()) {
        return Err(usage(
            "get needs --sport and --dport (or the reply ports) for this protocol",
        ));
    }
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

fn get(args: &ListArgs) -> Result<()> {
    let opts = OutputOptions::parse(args.output.iter().map(String::as_str))
        .map_err(|e| usage(e.to_string()))?;
    let (family, attrs) = tuple_request(&args.filter)?;
    let mut sock = CtSocket::open()?;
    match sock.get(family, attrs.as_bytes())? {
        Some(ct) => {
            let mut printer = Printer::new(opts);
            printer.entry(&ct);
            printer.finish()?;
            summary(1, "shown");
            Ok(())
        }
        None => Err(CliError::Failed("such conntrack doesn't exist".into())),
    }
}

fn delete(args: &ListArgs) -> Result<()> {
    let filter = args.filter.to_filter()?;
    let opts = OutputOptions::parse(args.output.iter().map(String::as_str))
        .map_err(|e| usage(e.to_string()))?;
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
    let mut printer = Printer::new(opts);
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
    summary(deleted, "deleted");
    interrupted(&signal)?;
    if deleted == 0 {
        // conntrack -D exits 1 when nothing matched.
        return Err(CliError::Silent);
    }
    Ok(())
}

/// The request attributes that name one entry for deletion: its original
/// tuple, zone and id (so a newer entry with the same tuple is kept).
fn delete_attrs(ct: &Conntrack) -> AttrWriter {
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

fn read_sysctl(name: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/sys/net/netfilter/{name}"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

fn dump_all() -> Result<Vec<Conntrack>> {
    let mut sock = CtSocket::open()?;
    let mut all = Vec::new();
    sock.dump(0, &[], |ct| {
        all.push(ct.clone());
        true
    })?;
    Ok(all)
}

fn top(args: &TopArgs) -> Result<()> {
    let filter = args.filter.to_filter()?;
    if args.enable_acct {
        std::fs::write("/proc/sys/net/netfilter/nf_conntrack_acct", "1")
            .map_err(|e| CliError::Failed(format!("cannot set nf_conntrack_acct: {e}")))?;
    }
    let acct_note = (args.counters && read_sysctl("nf_conntrack_acct") == Some(0)).then(|| {
        "counters and rates are empty: nf_conntrack_acct is 0 here (--enable-acct turns it on)"
            .to_string()
    });
    let view = View {
        sort: args.sort,
        reverse: args.reverse,
        filter,
        text: String::new(),
    };
    let now = std::time::Instant::now();
    if args.once {
        let mut table = Table::new();
        table.resync(dump_all()?, now);
        let (rows, total) = top::select(table.entries(), &view, args.limit.unwrap_or(usize::MAX));
        let mut out = String::new();
        top::write_once(&mut out, &rows, &view, args.counters, total);
        if let Some(note) = &acct_note {
            eprintln!("ctscope: {note}");
        }
        io::stdout().lock().write_all(out.as_bytes())?;
        return Ok(());
    }
    if !io::IsTerminal::is_terminal(&io::stdout()) {
        return Err(usage(
            "top needs a terminal; use `top --once` for a snapshot",
        ));
    }
    let stop = stop_on_signals(false)?;
    // Subscribe before the first dump, so nothing falls between them.
    let (events, source_note) = LiveFeed::open(args.source, args.buffer_size)?;
    let table = Arc::new(Mutex::new(Table::new()));
    if let Ok(mut t) = table.lock() {
        t.resync(dump_all()?, now);
    }
    let status = Arc::new(Mutex::new(tui::Status {
        source: events.name(),
        max: read_sysctl("nf_conntrack_max"),
        note: match (acct_note, source_note) {
            (Some(a), Some(b)) => Some(format!("{a}; {b}")),
            (a, b) => a.or(b),
        },
        ..tui::Status::default()
    }));
    let feeder = {
        let (table, status, stop) = (Arc::clone(&table), Arc::clone(&status), Arc::clone(&stop));
        let resync = std::time::Duration::from_secs(args.resync);
        std::thread::spawn(move || feed(events, table, status, stop, resync))
    };
    let mut sock = CtSocket::open()?;
    let deleted_from = Arc::clone(&table);
    let deleter: tui::Deleter = Box::new(move |ct: &Conntrack| {
        let gone = sock
            .delete(ct.family, delete_attrs(ct).as_bytes())
            .map_err(|e| e.to_string())?;
        if !gone {
            return Err("already gone".into());
        }
        // The kernel sends no DESTROY for entries made while no ctnetlink
        // listener existed (they carry no event extension), so the table
        // applies its own delete rather than wait for the next resync.
        if let Ok(mut t) = deleted_from.lock() {
            t.apply(EventKind::Destroy, ct, std::time::Instant::now(), None);
        }
        Ok(())
    });
    let result = tui::run(
        tui::App::new(view, args.counters),
        table,
        status,
        Arc::clone(&stop),
        deleter,
    );
    stop.store(true, Ordering::Relaxed);
    let fed = feeder.join();
    // A panicking feeder may have poisoned the table, failing the screen
    // too: the panic is the cause to report.
    let fed = fed.map_err(|_| {
        CliError::Failed(format!(
            "the event thread panicked: {}",
            tui::take_other_panic().unwrap_or_else(|| "no message".into())
        ))
    })?;
    result.map_err(|e| CliError::Failed(format!("terminal: {e}")))?;
    fed.map_err(CliError::Failed)
}

/// The feeder: applies events to the table, measures rates, and resyncs by
/// dump periodically and at once after a loss.
fn feed(
    mut events: LiveFeed,
    table: Arc<Mutex<Table>>,
    status: Arc<Mutex<tui::Status>>,
    stop: Arc<AtomicBool>,
    resync_every: std::time::Duration,
) -> std::result::Result<(), String> {
    let started = std::time::Instant::now();
    let mut last_resync = started;
    let mut window = (started, 0u64, 0u64, 0u64);
    let mut lost = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if started.elapsed() >= std::time::Duration::from_secs(1) {
            tui::injected_panic("feeder");
        }
        if let Some(msg) = netns::watched_gone() {
            stop.store(true, Ordering::Relaxed);
            return Err(msg);
        }
        let mut batch_events = Vec::new();
        let newly_lost = events
            .read(200, &mut batch_events)
            .map_err(|e| e.to_string())?;
        let now = std::time::Instant::now();
        if let Ok(mut t) = table.lock() {
            for (kind, ct, delivery) in &batch_events {
                t.apply(*kind, ct, now, *delivery);
            }
        }
        window.1 += batch_events.len() as u64;
        window.2 += batch_events
            .iter()
            .filter(|(k, _, _)| *k == EventKind::New)
            .count() as u64;
        window.3 += batch_events
            .iter()
            .filter(|(k, _, _)| *k == EventKind::Destroy)
            .count() as u64;
        lost += newly_lost;
        let elapsed = now.duration_since(window.0).as_secs_f64();
        if elapsed >= 1.0 {
            if let Ok(mut s) = status.lock() {
                s.events_per_sec = window.1 as f64 / elapsed;
                s.new_per_sec = window.2 as f64 / elapsed;
                s.destroy_per_sec = window.3 as f64 / elapsed;
                s.lost = lost;
            }
            window = (now, 0, 0, 0);
        }
        if newly_lost > 0 || now.duration_since(last_resync) >= resync_every {
            let dump = dump_all().map_err(|e| e.to_string())?;
            if let Ok(mut t) = table.lock() {
                t.resync(dump, std::time::Instant::now());
            }
            last_resync = std::time::Instant::now();
        }
    }
    Ok(())
}

/// Where `top` and `profile` get events: the eBPF tracer when it attaches
/// (NEW and DESTROY with kernel timestamps; updates come from the dumps),
/// else ctnetlink.
enum LiveFeed {
    Netlink(EventSocket),
    Ebpf(Box<tracer::Tracer>, u64),
}

/// One event for the table: kind, entry, delivery latency when known.
type FeedEvent = (EventKind, Conntrack, Option<u64>);

impl LiveFeed {
    /// Opens the source; the second value says why eBPF is not used.
    fn open(choice: SourceChoice, rcvbuf: usize) -> Result<(Self, Option<String>)> {
        let mut note = None;
        if choice != SourceChoice::Netlink {
            let config = tracer::TracerConfig {
                ring_size: 32 << 20,
                filter_netns: tracer::netns_inode("/proc/self/ns/net").unwrap_or(0),
            };
            match start_tracer(config) {
                Ok(t) => return Ok((Self::Ebpf(Box::new(t), 0), None)),
                Err(e) if choice == SourceChoice::Ebpf => {
                    return Err(CliError::Failed(format!("eBPF source unavailable: {e}")));
                }
                Err(e) => {
                    note = Some(format!(
                        "eBPF source unavailable ({e}); using ctnetlink events"
                    ))
                }
            }
        }
        let sock = EventSocket::open(EventConfig {
            mask: EventMask::default(),
            rcvbuf,
            reliable: false,
        });
        match sock {
            Ok(sock) => Ok((Self::Netlink(sock), note)),
            Err(e) => {
                // Both reasons: why not eBPF, then why not ctnetlink; a
                // missing privilege, which both lack, is said once.
                if let Some(note) = note
                    && !matches!(e, NetlinkError::PermissionDenied { .. })
                {
                    eprintln!("ctscope: {note}");
                }
                Err(e.into())
            }
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Netlink(_) => "netlink",
            Self::Ebpf(..) => "ebpf",
        }
    }

    /// Waits up to `timeout_ms`, appends what arrived to `out`, and returns
    /// how many events were newly lost (ring full) or overruns (ENOBUFS).
    fn read(
        &mut self,
        timeout_ms: i32,
        out: &mut Vec<FeedEvent>,
    ) -> std::result::Result<u64, NetlinkError> {
        match self {
            Self::Netlink(sock) => {
                let batch = sock.read_batch(timeout_ms, 256, |kind, ct, _| {
                    out.push((kind, ct.clone(), None))
                })?;
                Ok(batch.overruns)
            }
            Self::Ebpf(tracer, lost_seen) => {
                let mut pfd = libc::pollfd {
                    fd: tracer.ring_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
                let now_ns = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0);
                tracer.drain(|kind, ct, time_ns, _| {
                    out.push((kind, ct.clone(), Some(now_ns.saturating_sub(time_ns))));
                });
                let lost = tracer.lost();
                let new = lost.saturating_sub(*lost_seen);
                *lost_seen = lost;
                Ok(new)
            }
        }
    }
}

/// Sums of the kernel's per-CPU early_drop, insert_failed and drop.
fn pressure_counters(sock: &mut CtSocket) -> Result<[u64; 3]> {
    let mut sums = [0u64; 3];
    for cpu in sock.stats_cpu()? {
        for (kind, value) in cpu.counters {
            // CTA_STATS_EARLY_DROP, CTA_STATS_INSERT_FAILED, CTA_STATS_DROP.
            match kind {
                11 => sums[0] += u64::from(value),
                9 => sums[1] += u64::from(value),
                10 => sums[2] += u64::from(value),
                _ => {}
            }
        }
    }
    Ok(sums)
}

fn profile(args: &ProfileArgs) -> Result<()> {
    let stop = stop_on_signals(true)?;
    let mut sock = CtSocket::open()?;
    let before = pressure_counters(&mut sock)?;
    let (mut events, note) = LiveFeed::open(args.source, 256 << 20)?;
    match note {
        Some(note) => eprintln!("ctscope: {note}"),
        None => eprintln!("ctscope: event source: eBPF (kprobes on nf_conntrack)"),
    }
    let start = std::time::Instant::now();
    let mut table = Table::new();
    table.resync(dump_all()?, start);
    // The churn counts only what happens during the run.
    table.stats.new_total = 0;
    table.stats.destroy_total = 0;
    let mut lost = 0;
    let mut gone = None;
    while !stop.load(Ordering::Relaxed) && start.elapsed() < args.duration {
        // The report of what was seen still comes (ctscope's own sockets
        // keep the namespace alive), then the reason, exit 1.
        gone = netns::watched_gone();
        if gone.is_some() {
            break;
        }
        let mut batch = Vec::new();
        lost += events.read(100, &mut batch)?;
        let now = std::time::Instant::now();
        for (kind, ct, delivery) in &batch {
            table.apply(*kind, ct, now, *delivery);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    table.resync(dump_all()?, std::time::Instant::now());
    let after = pressure_counters(&mut sock)?;
    let pressure = crate::profile::Pressure {
        count: table.len() as u64,
        max: read_sysctl("nf_conntrack_max"),
        early_drop: after[0].saturating_sub(before[0]),
        insert_failed: after[1].saturating_sub(before[1]),
        drop: after[2].saturating_sub(before[2]),
    };
    let report = crate::profile::report(&table, elapsed, events.name(), lost, pressure, args.top);
    let mut out = io::stdout().lock();
    if args.output == "json" {
        let line =
            serde_json::to_string(&report).map_err(|e| CliError::Failed(format!("json: {e}")))?;
        writeln!(out, "{line}")?;
    } else {
        out.write_all(crate::profile::text(&report).as_bytes())?;
    }
    out.flush()?;
    match gone {
        Some(msg) => Err(CliError::Failed(msg)),
        None => Ok(()),
    }
}

fn flush(args: &FlushArgs) -> Result<()> {
    let mut sock = CtSocket::open()?;
    sock.flush(args.family.unwrap_or(0))?;
    eprintln!(
        "ctscope v{} (conntrack-tools compatible): connection tracking table has been emptied.",
        env!("CARGO_PKG_VERSION")
    );
    Ok(())
}

fn count() -> Result<()> {
    let mut sock = CtSocket::open()?;
    let entries = match sock.stats_global() {
        Ok((Some(n), _)) => n,
        // Kernels before 4.6 lack the global stats message.
        Ok((None, _)) | Err(NetlinkError::Kernel { .. }) => {
            let text = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
                .map_err(|e| CliError::Failed(format!("cannot read the entry count: {e}")))?;
            text.trim()
                .parse()
                .map_err(|_| CliError::Failed("unreadable nf_conntrack_count".into()))?
        }
        Err(e) => return Err(e.into()),
    };
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{entries}")?;
    Ok(())
}

fn stats(args: &StatsArgs) -> Result<()> {
    let mut sock = CtSocket::open()?;
    let cpus = sock.stats_cpu()?;
    let mut out = String::new();
    let mut totals = [0u64; format_stats::LEN];
    let mut seen = [false; format_stats::LEN];
    for cpu in &cpus {
        out.push_str(&format!("cpu={:<4}\t", cpu.cpu));
        for (kind, value) in &cpu.counters {
            let k = usize::from(*kind);
            out.push_str(&format!(
                "{}={} ",
                crate::netlink::codec::STATS_NAMES[k],
                value
            ));
            totals[k] += u64::from(*value);
            seen[k] = true;
        }
        out.push('\n');
    }
    if args.total {
        out.push_str(&format!("{:<8}\t", "total"));
        for k in 0..format_stats::LEN {
            if seen[k] {
                out.push_str(&format!(
                    "{}={} ",
                    crate::netlink::codec::STATS_NAMES[k],
                    totals[k]
                ));
            }
        }
        out.push('\n');
    }
    io::stdout().lock().write_all(out.as_bytes())?;
    Ok(())
}

/// A flag that SIGINT and SIGTERM raise, for the long-running commands to
/// end cleanly with their summary.
fn stop_on_signals(second_exits: bool) -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let failed = |e: io::Error| CliError::Failed(format!("cannot handle signals: {e}"));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // Registered first, so it sees the flag as the previous signal
        // left it: a second signal ends ctscope at once, for when the
        // clean stop is stuck (e.g. writing to a pipe nobody reads). Not
        // for top, whose every exit must restore the terminal.
        if second_exits {
            signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, Arc::clone(&stop))
                .map_err(failed)?;
        }
        signal_hook::flag::register(sig, Arc::clone(&stop)).map_err(failed)?;
    }
    Ok(stop)
}

/// For list and delete: the first SIGINT or SIGTERM is recorded here (the
/// signal number; 0 until then), and the command stops after the entry in
/// hand, with everything shown so far written out and its summary line;
/// a second signal ends ctscope at once.
fn interrupt_on_signals() -> Result<Arc<AtomicUsize>> {
    let got = Arc::new(AtomicUsize::new(0));
    let armed = Arc::new(AtomicBool::new(false));
    let failed = |e: io::Error| CliError::Failed(format!("cannot handle signals: {e}"));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, Arc::clone(&armed))
            .map_err(failed)?;
        signal_hook::flag::register(sig, Arc::clone(&armed)).map_err(failed)?;
        signal_hook::flag::register_usize(sig, Arc::clone(&got), sig as usize).map_err(failed)?;
    }
    Ok(got)
}

/// The signal recorded by [`interrupt_on_signals`], as the command's end.
fn interrupted(got: &AtomicUsize) -> Result<()> {
    match got.load(Ordering::Relaxed) {
        0 => Ok(()),
        sig => Err(CliError::Interrupted(i32::try_from(sig).unwrap_or(2))),
    }
}

/// The event source in use.
enum Source {
    /// ctnetlink; the reason eBPF is not used, printed unless the netlink
    /// socket fails for lack of privilege (then one line says it all).
    Netlink(Option<String>),
    Ebpf(Box<tracer::Tracer>),
}

/// Starts the eBPF tracer. A ctnetlink request first makes the kernel load
/// nf_conntrack (through nf_conntrack_netlink) if nothing has yet, so the
/// functions to hook exist; where that fails, the tracer's error names the
/// missing function.
fn start_tracer(
    config: tracer::TracerConfig,
) -> std::result::Result<tracer::Tracer, tracer::TracerError> {
    if let Ok(mut sock) = CtSocket::open() {
        let _ = sock.probe();
    }
    tracer::Tracer::start(config)
}

/// Picks the event source.
fn choose_source(args: &EventArgs) -> Result<Source> {
    if args.source == SourceChoice::Netlink {
        if args.all_netns {
            return Err(usage("--all-netns needs the eBPF source"));
        }
        return Ok(Source::Netlink(None));
    }
    let filter_netns = if args.all_netns {
        0
    } else {
        tracer::netns_inode("/proc/self/ns/net").unwrap_or(0)
    };
    let started = start_tracer(tracer::TracerConfig {
        ring_size: args.ring_size,
        filter_netns,
    });
    match (started, args.source) {
        (Ok(t), _) => {
            eprintln!("ctscope: event source: eBPF (kprobes on nf_conntrack)");
            Ok(Source::Ebpf(Box::new(t)))
        }
        (Err(e), SourceChoice::Ebpf) => {
            Err(CliError::Failed(format!("eBPF source unavailable: {e}")))
        }
        (Err(e), _) => {
            if args.all_netns {
                return Err(CliError::Failed(format!(
                    "--all-netns needs the eBPF source, which is unavailable: {e}"
                )));
            }
            Ok(Source::Netlink(Some(format!(
                "ctscope: eBPF source unavailable ({e}); using ctnetlink events"
            ))))
        }
    }
}

fn events_ebpf(
    mut tracer: Box<tracer::Tracer>,
    args: &EventArgs,
    filter: &Filter,
    mut printer: Printer,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("cannot start the runtime: {e}")))?;
    let deadline = args.duration.map(|d| std::time::Instant::now() + d);
    let limit = args.count.unwrap_or(u64::MAX);
    let mut shown = 0u64;
    let mut prognames = ProgName::default();
    let result: Result<()> = runtime.block_on(async {
        // SAFETY: the ring's fd is owned by `tracer`, which outlives `fd`
        // (fd is dropped at the end of this block, tracer after it).
        let fd = unsafe { tokio::io::unix::AsyncFd::register(tracer.ring_fd()) }
            .map_err(|e| CliError::Failed(format!("cannot poll the ring buffer: {e}")))?;
        let mut out_ok = true;
        while out_ok && shown < limit && !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                break;
            }
            if let Some(msg) = netns::watched_gone() {
                return Err(CliError::Failed(msg));
            }
            tracer::Tracer::readable(&fd, std::time::Duration::from_millis(100)).await;
            tracer.drain(|kind, ct, time_ns, netns| {
                if shown >= limit || !out_ok || !args.event_mask.wants(kind) || !filter.matches(ct)
                {
                    return;
                }
                shown += 1;
                printer.netns = args.all_netns.then_some(netns);
                out_ok = printer.event(kind, ct, "ebpf", 0, &mut prognames, Some(time_ns));
            });
            out_ok = out_ok && printer.flush_out();
        }
        Ok(())
    });
    let lost = tracer.lost();
    printer.finish()?;
    // What was shown is counted even when the run ends on an error (the
    // namespace deleted), as on the ctnetlink path.
    eprintln!(
        "ctscope v{} (conntrack-tools compatible): {shown} flow events have been shown.",
        env!("CARGO_PKG_VERSION")
    );
    if lost > 0 {
        eprintln!("ctscope: {lost} events lost: the ring buffer was full (raise --ring-size)");
    }
    result
}

fn events(args: &EventArgs) -> Result<()> {
    let filter = args.filter.to_filter()?;
    let opts = OutputOptions::parse(args.output.iter().map(String::as_str))
        .map_err(|e| usage(e.to_string()))?;
    if !(args.event_mask.new || args.event_mask.update || args.event_mask.destroy) {
        return Err(usage("-e selects no event"));
    }
    let stop = stop_on_signals(true)?;
    let fallback_note = match choose_source(args)? {
        Source::Ebpf(tracer) => {
            return events_ebpf(tracer, args, &filter, Printer::new(opts), &stop);
        }
        Source::Netlink(note) => note,
    };
    let opened = EventSocket::open(EventConfig {
        mask: args.event_mask,
        rcvbuf: args.buffer_size,
        reliable: args.reliable,
    });
    // Why not eBPF, then why not ctnetlink either; a missing privilege,
    // which both lack, is said once.
    if let Some(note) = fallback_note
        && !matches!(opened, Err(NetlinkError::PermissionDenied { .. }))
    {
        eprintln!("{note}");
    }
    let mut sock = opened?;
    let deadline = args.duration.map(|d| std::time::Instant::now() + d);
    let mut printer = Printer::new(opts);
    let (mut shown, mut overruns) = (0u64, 0u64);
    let limit = args.count.unwrap_or(u64::MAX);
    let mut prognames = ProgName::default();
    let mut out_ok = true;
    let mut gone = None;
    let mut last_check = std::time::Instant::now();
    while out_ok && shown < limit && !stop.load(std::sync::atomic::Ordering::Relaxed) {
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            break;
        }
        if last_check.elapsed() >= std::time::Duration::from_millis(500) {
            last_check = std::time::Instant::now();
            gone = netns::watched_gone();
            if gone.is_some() {
                break;
            }
        }
        let batch = sock.read_batch(100, 256, |kind, ct, portid| {
            if shown >= limit || !out_ok || !filter.matches(ct) {
                return;
            }
            shown += 1;
            out_ok = printer.event(kind, ct, "netlink", portid, &mut prognames, None);
        })?;
        if batch.overruns > 0 {
            if overruns == 0 {
                eprintln!(
                    "ctscope: the kernel dropped events (netlink receive buffer overrun, ENOBUFS); \
                     counting, and going on (raise -b/--buffer-size)"
                );
            }
            overruns += batch.overruns;
        }
        out_ok = out_ok && printer.flush_out();
    }
    printer.finish()?;
    eprintln!(
        "ctscope v{} (conntrack-tools compatible): {shown} flow events have been shown.",
        env!("CARGO_PKG_VERSION")
    );
    if overruns > 0 {
        eprintln!(
            "ctscope: events were lost in {overruns} receive buffer overruns (ENOBUFS); \
             ctnetlink does not say how many"
        );
    }
    if let Some(msg) = gone {
        return Err(CliError::Failed(msg));
    }
    Ok(())
}

mod format_stats {
    pub const LEN: usize = crate::netlink::codec::STATS_NAMES.len();
}

fn dispatch(cli: &Cli) -> Result<()> {
    if let Some(ns) = &cli.netns {
        netns::enter(ns).map_err(|e| CliError::Failed(e.to_string()))?;
        if let Some(w) = netns::Watch::new(ns) {
            netns::set_watch(w);
        }
    }
    match &cli.command {
        Some(Command::List(a)) => list(a),
        Some(Command::Get(a)) => get(a),
        Some(Command::Delete(a)) => delete(a),
        Some(Command::Flush(a)) => flush(a),
        Some(Command::Count) => count(),
        Some(Command::Stats(a)) => stats(a),
        Some(Command::Events(a)) => with_ebpf_caps(events(a), a.source),
        // `top --once` takes one dump and never traces.
        Some(Command::Top(a)) if a.once => top(a),
        Some(Command::Top(a)) => with_ebpf_caps(top(a), a.source),
        Some(Command::Profile(a)) => with_ebpf_caps(profile(a), a.source),
        None => with_ebpf_caps(top(&TopArgs::default()), SourceChoice::Auto),
    }
}

/// Runs ctscope with the process arguments; returns the exit code.
pub fn main() -> i32 {
    run(std::env::args_os())
}

/// Runs ctscope with these arguments; returns the exit code.
pub fn run<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            match e.kind() {
                ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = e.print();
                    return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                        2
                    } else {
                        0
                    };
                }
                _ => {
                    // One line: clap's first line, without its "error: ".
                    let text = e.render().to_string();
                    let first = text.lines().next().unwrap_or("bad arguments");
                    let first = first.strip_prefix("error: ").unwrap_or(first);
                    eprintln!("ctscope: {first} (see ctscope --help)");
                    return 2;
                }
            }
        }
    };
    match dispatch(&cli) {
        Ok(()) => 0,
        Err(CliError::BrokenPipe) => 0,
        Err(CliError::Silent) => 1,
        Err(CliError::Interrupted(sig)) => 128 + sig,
        Err(CliError::Usage(msg)) => {
            eprintln!("ctscope: {msg}");
            2
        }
        Err(CliError::Failed(msg) | CliError::Privilege(msg)) => {
            eprintln!("ctscope: {msg}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> std::result::Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("ctscope").chain(args.iter().copied()))
    }

    #[test]
    fn conntrack_short_flags_select_subcommands() {
        let cli = parse(&["-L", "-p", "tcp", "-o", "extended,id"]).expect("parses");
        let Some(Command::List(a)) = cli.command else {
            panic!("not list");
        };
        assert_eq!(a.filter.proto, Some(6));
        assert_eq!(a.output, vec!["extended,id"]);
        assert!(matches!(
            parse(&["-C"]).expect("parses").command,
            Some(Command::Count)
        ));
        assert!(matches!(
            parse(&["-F"]).expect("parses").command,
            Some(Command::Flush(_))
        ));
        assert!(
            parse(&[]).expect("parses").command.is_none(),
            "no command is top"
        );
        let Some(Command::Top(t)) = parse(&["top", "-1", "-C", "--sort", "bytes"])
            .expect("parses")
            .command
        else {
            panic!("not top");
        };
        assert!(t.once && t.counters && t.sort == SortKey::Bytes);
    }

    #[test]
    fn bad_values_are_usage_errors() {
        assert!(parse(&["list", "-s", "300.1.1.1"]).is_err());
        assert!(parse(&["list", "-m", "x"]).is_err());
        assert!(parse(&["list", "--sport", "70000"]).is_err());
        assert!(parse(&["list", "-f", "ipx"]).is_err());
        assert!(parse(&["list", "-p", "nosuchproto"]).is_err());
        assert_eq!(run(["ctscope", "list", "--bogus"]), 2);
    }

    #[test]
    fn filter_combinations() {
        let cli = parse(&["list", "-s", "10.0.0.0/8", "-m", "0x10/0xf0", "-n"]).expect("parses");
        let Some(Command::List(a)) = cli.command else {
            panic!("not list");
        };
        let f = a.filter.to_filter().expect("valid");
        assert_eq!(f.family, Some(libc::AF_INET as u8));
        assert_eq!(f.mark, Some((0x10, 0xf0)));
        assert_eq!(f.src_nat, NatFilter::Any);
        let cli = parse(&["list", "-f", "ipv6", "-s", "10.0.0.1"]).expect("parses");
        let Some(Command::List(a)) = cli.command else {
            panic!("not list");
        };
        assert!(matches!(a.filter.to_filter(), Err(CliError::Usage(_))));
        let cli = parse(&["list", "--state", "ESTABLISHED"]).expect("parses");
        let Some(Command::List(a)) = cli.command else {
            panic!("not list");
        };
        assert!(matches!(a.filter.to_filter(), Err(CliError::Usage(_))));
    }
}
