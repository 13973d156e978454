//! The command line's flags and their value parsers (clap derive); the
//! checks across flags live in [`super::filter_args`].
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;

use crate::{
    ebpf::{Hook, Updates},
    expect::Table,
    netlink::events::EventMask,
    source::{DEFAULT_RCVBUF, DEFAULT_RING_SIZE, SourceChoice, SourceConfig},
    ui::{app::parse_refresh, rows::SortKey},
};

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
    /// Create an entry (conntrack -I).
    #[command(short_flag = 'I', long_flag = "create")]
    Create(CreateArgs),
    /// Change the mark, status, timeout, state or labels of the entries
    /// that match (conntrack -U).
    #[command(short_flag = 'U', long_flag = "update")]
    Update(UpdateArgs),
    /// Flush the whole table (conntrack -F).
    #[command(short_flag = 'F', long_flag = "flush")]
    Flush(FlushArgs),
    /// Print the number of entries in the table (conntrack -C).
    #[command(short_flag = 'C', long_flag = "count")]
    Count(CountArgs),
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
    /// Serve Prometheus/OpenMetrics metrics (GET /metrics, GET /healthz)
    /// from the live table and the kernel's statistics.
    Serve(ServeArgs),
}

/// Arguments of serve.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on: ADDR:PORT, [ADDR]:PORT for IPv6, or :PORT
    /// for every IPv4 address.
    #[arg(long, value_name = "ADDR:PORT", default_value_t = SocketAddr::from((Ipv4Addr::LOCALHOST, crate::cmd::serve::DEFAULT_PORT)), value_parser = parse_listen)]
    pub listen: SocketAddr,
    /// Seconds between full dumps that reconcile the table (one also
    /// follows any loss at once).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub resync: u64,
    /// Name the kernel's gauges as node_exporter does (node_nf_conntrack_*)
    /// instead of ctscope_nf_conntrack_*.
    #[arg(long = "node-exporter-names")]
    pub node_exporter_names: bool,
    /// Also export the N original sources and N destinations with the most
    /// entries (the only metrics with address labels).
    #[arg(long = "top-talkers", value_name = "N", default_value_t = 0, value_parser = parse_top_talkers)]
    pub top_talkers: usize,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub source: SourceArgs,
}

/// `--top-talkers`: at most 1,000 of each (each is a series).
fn parse_top_talkers(s: &str) -> std::result::Result<usize, String> {
    s.parse::<usize>()
        .ok()
        .filter(|n| *n <= 1000)
        .ok_or_else(|| format!("invalid count `{s}' (0 to 1000)"))
}

/// `--listen`: ADDR:PORT, [V6ADDR]:PORT, localhost:PORT or :PORT (every
/// IPv4 address).
fn parse_listen(s: &str) -> std::result::Result<SocketAddr, String> {
    let bad = || format!("invalid address `{s}' (ADDR:PORT, [ADDR]:PORT or :PORT)");
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    match host {
        "" => Ok(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))),
        "localhost" => Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port))),
        _ => Err(bad()),
    }
}

/// Arguments of profile.
#[derive(Args, Debug, Clone)]
pub struct ProfileArgs {
    /// How long to watch, in seconds.
    #[arg(long, value_parser = parse_duration, default_value = "10")]
    pub duration: Duration,
    /// Output: text (default), json, or hgrm (each histogram in
    /// HdrHistogram's percentile-distribution text).
    #[arg(short = 'o', long = "output", value_parser = ["text", "json", "hgrm"], default_value = "text")]
    pub output: String,
    /// How many top talkers of each kind.
    #[arg(long = "top", default_value_t = 10)]
    pub top: usize,
    /// Also write the report as one self-contained HTML page with charts
    /// (inline SVG, nothing fetched).
    #[arg(long, value_name = "FILE")]
    pub html: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub source: SourceArgs,
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
    /// Start without iptstate's colours by protocol (`c` toggles them).
    /// No `-c`: that is conntrack's secmark filter here.
    #[arg(long = "no-color", visible_alias = "no-colour")]
    pub no_color: bool,
    /// Show the rows that match none of the filters (each filter inverted,
    /// as iptstate's -i).
    #[arg(short = 'i', long = "invert-filters", visible_alias = "invert")]
    pub invert: bool,
    /// Host and service names in place of addresses and ports, looked up
    /// in the background; hides DNS flows too, as iptstate's -l.
    #[arg(long)]
    pub lookup: bool,
    /// Hide TCP and UDP flows to port 53 (iptstate's -L).
    #[arg(long = "no-dns")]
    pub no_dns: bool,
    /// Hide flows from 127.0.0.1 and ::1 (iptstate's -f; -f is the family
    /// here).
    #[arg(long = "no-loopback")]
    pub no_loopback: bool,
    /// Seconds between frames (fractions allowed).
    #[arg(short = 'R', long = "refresh", visible_alias = "rate", value_name = "SECS", value_parser = parse_refresh, default_value = "0.5")]
    pub refresh: Duration,
    /// iptstate's totals line: the entries by protocol, and how many the
    /// filters hide.
    #[arg(short = 't', long)]
    pub totals: bool,
    /// Mark names and addresses cut to fit the screen with a `+`
    /// (iptstate's -m; -m is the mark here).
    #[arg(long = "mark-truncated")]
    pub mark_truncated: bool,
    #[command(flatten)]
    pub source: SourceArgs,
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
            no_color: false,
            invert: false,
            lookup: false,
            no_dns: false,
            no_loopback: false,
            refresh: crate::ui::app::DEFAULT_REFRESH,
            totals: false,
            mark_truncated: false,
            source: SourceArgs::default(),
        }
    }
}

/// Where events come from, for every command that reads them.
#[derive(Args, Debug, Clone)]
pub struct SourceArgs {
    /// Event source.
    #[arg(long, value_enum, default_value_t = SourceChoice::Auto)]
    pub source: SourceChoice,
    /// Netlink receive buffer in bytes for the ctnetlink source (raised
    /// with SO_RCVBUFFORCE).
    #[arg(short = 'b', long = "buffer-size", default_value_t = DEFAULT_RCVBUF, value_parser = parse_buffer_size)]
    pub buffer_size: usize,
    /// eBPF ring buffer size in bytes (a power of two; the default absorbs
    /// a 100 ms consumer stall at 1M events/s).
    #[arg(long = "ring-size", default_value_t = DEFAULT_RING_SIZE, value_parser = parse_ring_size)]
    pub ring_size: u32,
    /// Show events of every network namespace (eBPF source), not only ours.
    #[arg(long = "all-netns")]
    pub all_netns: bool,
    /// How the eBPF source attaches: fentry/fexit (cheapest; pins the
    /// nf_conntrack module while attached), kprobes, or auto (fentry when
    /// the kernel allows it, else kprobes).
    #[arg(long = "ebpf-hook", value_enum, default_value_t = Hook::Auto)]
    pub ebpf_hook: Hook,
}

impl Default for SourceArgs {
    fn default() -> Self {
        Self {
            source: SourceChoice::Auto,
            buffer_size: DEFAULT_RCVBUF,
            ring_size: DEFAULT_RING_SIZE,
            all_netns: false,
            ebpf_hook: Hook::Auto,
        }
    }
}

impl SourceArgs {
    /// The source's settings, with the events wanted, whether the eBPF
    /// source must report updates, and whether delivery must be reliable.
    pub fn config(&self, mask: EventMask, updates: Updates, reliable: bool) -> SourceConfig {
        SourceConfig {
            choice: self.source,
            mask,
            updates,
            rcvbuf: self.buffer_size,
            reliable,
            ring_size: self.ring_size,
            all_netns: self.all_netns,
            hook: self.ebpf_hook,
        }
    }
}

/// Arguments of events.
#[derive(Args, Debug, Clone)]
pub struct EventArgs {
    /// The table: conntrack (the default) or expect.
    #[arg(value_name = "TABLE", value_parser = Table::parse, default_value = "conntrack")]
    pub table: Table,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Output: xml, save, json, extended, id, timestamp, labels (comma-separated).
    #[arg(short = 'o', long = "output", value_name = "FORMAT")]
    pub output: Vec<String>,
    /// Events to show: NEW, UPDATE, DESTROY, ALL (comma-separated; default
    /// ALL, where the eBPF source shows UPDATE only if the kernel gives it).
    #[arg(short = 'e', long = "event-mask", value_parser = EventMask::parse)]
    pub event_mask: Option<EventMask>,
    /// Stop after this many events.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Reliable ctnetlink delivery: the kernel drops the conntrack change
    /// rather than the event when ctscope falls behind (slows the packet path).
    #[arg(long)]
    pub reliable: bool,
    #[command(flatten)]
    pub source: SourceArgs,
}

fn parse_ring_size(s: &str) -> std::result::Result<u32, String> {
    s.parse::<u32>()
        .ok()
        .filter(|v| *v >= 4096 && v.is_power_of_two())
        .ok_or_else(|| format!("invalid ring size `{s}' (bytes: a power of two, at least 4096)"))
}

fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .filter(|v| *v > 0.0)
        .and_then(|v| Duration::try_from_secs_f64(v).ok())
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
    /// Netmask of -s, as an address (255.255.0.0): -s ADDR --mask-src
    /// MASK is -s ADDR/PREFIX. With -I expect: the expectation's source
    /// mask.
    #[arg(long = "mask-src", value_name = "MASK", value_parser = parse_mask)]
    pub mask_src: Option<IpAddr>,
    /// Netmask of -d (with -I expect: the expectation's destination mask).
    #[arg(long = "mask-dst", value_name = "MASK", value_parser = parse_mask)]
    pub mask_dst: Option<IpAddr>,
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
    #[arg(long = "icmp-type", visible_alias = "icmpv6-type")]
    pub icmp_type: Option<u8>,
    /// ICMP code.
    #[arg(long = "icmp-code", visible_alias = "icmpv6-code")]
    pub icmp_code: Option<u8>,
    /// ICMP id.
    #[arg(long = "icmp-id", visible_alias = "icmpv6-id")]
    pub icmp_id: Option<u16>,
    /// GRE source key (of the original direction; with -p gre).
    #[arg(long = "srckey", value_parser = parse_u16_arg)]
    pub srckey: Option<u16>,
    /// GRE destination key (of the original direction; with -p gre).
    #[arg(long = "dstkey", value_parser = parse_u16_arg)]
    pub dstkey: Option<u16>,
    /// Connection mark, MARK or MARK/MASK (decimal or 0x hex).
    #[arg(short = 'm', long = "mark", value_parser = parse_mark)]
    pub mark: Option<(u32, u32)>,
    /// Status flags that must be set, comma-separated (ASSURED, SEEN_REPLY,
    /// EXPECTED, FIXED_TIMEOUT, ...; UNSET for none).
    #[arg(short = 'u', long = "status", value_parser = parse_status)]
    pub status: Option<(u32, u32)>,
    /// Security mark (the kernel reports none since ctnetlink dropped
    /// CTA_SECMARK, so every entry matches, as with conntrack).
    #[arg(short = 'c', long = "secmark", value_parser = parse_u32_arg)]
    pub secmark: Option<u32>,
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
    /// The table: conntrack (the default), expect, dying or unconfirmed
    /// (any prefix, as conntrack reads it).
    #[arg(value_name = "TABLE", value_parser = Table::parse, default_value = "conntrack")]
    pub table: Table,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Output: xml, save, json, extended, id, ktimestamp, labels (comma-separated).
    #[arg(short = 'o', long = "output", value_name = "FORMAT")]
    pub output: Vec<String>,
    /// List, then zero the counters of every entry listed (list only; no
    /// filters but -f, -n, -g, -j).
    #[arg(short = 'z', long = "zero")]
    pub zero: bool,
}

/// Arguments of create (`-I`): the entry's tuple (`-s -d` and/or `-r -q`,
/// `-p` and its ports or ICMP fields) and what to set.
#[derive(Args, Debug, Default, Clone)]
pub struct CreateArgs {
    /// The table: conntrack (the default) or expect.
    #[arg(value_name = "TABLE", value_parser = Table::parse, default_value = "conntrack")]
    pub table: Table,
    /// The tuple (filters' flags), and the values of -m, -u, -w,
    /// --orig-zone, --reply-zone, --state, -n, -g. With `expect`: the
    /// master connection's original tuple.
    #[command(flatten)]
    pub entry: FilterArgs,
    #[command(flatten)]
    pub expect: ExpectArgs,
    /// Seconds to live (required).
    #[arg(short = 't', long = "timeout", value_parser = parse_u32_arg)]
    pub timeout: Option<u32>,
    /// Labels to set (names from connlabel.conf), comma-separated.
    #[arg(long = "label-add")]
    pub label_add: Vec<String>,
    /// SCTP verification tag of the original direction.
    #[arg(long = "orig-vtag", value_parser = parse_u32_arg)]
    pub orig_vtag: Option<u32>,
    /// SCTP verification tag of the reply direction.
    #[arg(long = "reply-vtag", value_parser = parse_u32_arg)]
    pub reply_vtag: Option<u32>,
    /// DCCP role: client or server.
    #[arg(long = "role", value_parser = ["client", "server"])]
    pub role: Option<String>,
}

/// Arguments of update (`-U`): filters select entries (as `-L`'s do),
/// except -m, -u and --state, which are the new values.
#[derive(Args, Debug, Default, Clone)]
pub struct UpdateArgs {
    /// The table (only conntrack can be updated).
    #[arg(value_name = "TABLE", value_parser = Table::parse, default_value = "conntrack")]
    pub table: Table,
    /// Filters, and the new -m MARK[/MASK], -u STATUS, --state.
    #[command(flatten)]
    pub filter: FilterArgs,
    /// New timeout, in seconds.
    #[arg(short = 't', long = "timeout", value_parser = parse_u32_arg)]
    pub timeout: Option<u32>,
    /// Output: extended, id, ktimestamp, labels, json (comma-separated).
    #[arg(short = 'o', long = "output", value_name = "FORMAT")]
    pub output: Vec<String>,
    /// Labels to add (names from connlabel.conf), comma-separated.
    #[arg(long = "label-add")]
    pub label_add: Vec<String>,
    /// Labels to remove; without a value, every label.
    #[arg(long = "label-del", num_args = 0..=1, value_name = "LABEL")]
    pub label_del: Option<Vec<String>>,
}

/// Arguments of flush.
#[derive(Args, Debug, Default, Clone)]
pub struct FlushArgs {
    /// The table: conntrack (the default) or expect.
    #[arg(value_name = "TABLE", value_parser = Table::parse, default_value = "conntrack")]
    pub table: Table,
    /// Only this family: ipv4 or ipv6.
    #[arg(short = 'f', long = "family", value_parser = parse_family)]
    pub family: Option<u8>,
}

/// Arguments of count.
#[derive(Args, Debug, Default, Clone)]
pub struct CountArgs {
    /// The table: conntrack (the default) or expect.
    #[arg(value_name = "TABLE", value_parser = Table::parse, default_value = "conntrack")]
    pub table: Table,
}

/// What `-I expect` takes besides the master tuple (`-s -d -p --sport
/// --dport`) and the address mask (`--mask-src --mask-dst`): the expected
/// tuple and its port mask, as conntrack names them.
#[derive(Args, Debug, Default, Clone)]
pub struct ExpectArgs {
    /// Source address of the expected tuple.
    #[arg(long = "tuple-src", value_parser = parse_net)]
    pub tuple_src: Option<IpNet>,
    /// Destination address of the expected tuple.
    #[arg(long = "tuple-dst", value_parser = parse_net)]
    pub tuple_dst: Option<IpNet>,
    /// Source port of the expected tuple.
    #[arg(long = "tuple-port-src")]
    pub tuple_port_src: Option<u16>,
    /// Destination port of the expected tuple.
    #[arg(long = "tuple-port-dst")]
    pub tuple_port_dst: Option<u16>,
    /// Source port mask (0: any port).
    #[arg(long = "mask-port-src")]
    pub mask_port_src: Option<u16>,
    /// Destination port mask (65535: this port only).
    #[arg(long = "mask-port-dst")]
    pub mask_port_dst: Option<u16>,
}

/// Arguments of stats.
#[derive(Args, Debug, Default, Clone)]
pub struct StatsArgs {
    /// The table: conntrack (the default) or expect.
    #[arg(value_name = "TABLE", value_parser = Table::parse, default_value = "conntrack")]
    pub table: Table,
    /// Add a line with the sum over all CPUs.
    #[arg(long)]
    pub total: bool,
}

/// An address or network. IPv4 also in the shorter forms inet_aton reads
/// and conntrack accepts (`1.2.3` is 1.2.0.3, `10.1` is 10.0.0.1).
fn parse_net(s: &str) -> std::result::Result<IpNet, String> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net);
    }
    if let Ok(addr) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(addr));
    }
    let bad = || format!("invalid address `{s}'");
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
        None => (s, None),
    };
    let v4 = inet_aton(addr).ok_or_else(bad)?;
    let net = ipnet::Ipv4Net::new(v4, prefix.unwrap_or(32)).map_err(|_| bad())?;
    Ok(IpNet::V4(net))
}

/// A netmask written as an address (`255.255.0.0`, `ffff:ffff::`), in
/// the forms `-s` takes; CIDR is refused, as conntrack refuses it here.
fn parse_mask(s: &str) -> std::result::Result<IpAddr, String> {
    match parse_net(s)? {
        net if net.prefix_len() == net.max_prefix_len() => Ok(net.addr()),
        _ => Err(format!("CIDR notation unavailable for a mask (`{s}')")),
    }
}

/// glibc's inet_aton: one to four parts, decimal, octal (leading 0) or hex
/// (0x), the last part filling the remaining bytes.
fn inet_aton(s: &str) -> Option<std::net::Ipv4Addr> {
    let parts: Vec<u32> = s
        .split('.')
        .map(|p| {
            if let Some(hex) = p.strip_prefix("0x").or_else(|| p.strip_prefix("0X")) {
                u32::from_str_radix(hex, 16).ok()
            } else if p.len() > 1 && p.starts_with('0') {
                u32::from_str_radix(&p[1..], 8).ok()
            } else if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) {
                p.parse().ok()
            } else {
                None
            }
        })
        .collect::<Option<_>>()?;
    let (head, last) = parts.split_last().map(|(l, h)| (h, *l))?;
    if head.len() > 3 || head.iter().any(|p| *p > 255) {
        return None;
    }
    let last_bits = 8 * (4 - head.len() as u32);
    if last_bits < 32 && last >> last_bits != 0 {
        return None;
    }
    let mut value = u64::from(last);
    for (i, p) in head.iter().enumerate() {
        value |= u64::from(*p) << (24 - 8 * i);
    }
    u32::try_from(value).ok().map(std::net::Ipv4Addr::from)
}

fn parse_proto(s: &str) -> std::result::Result<u8, String> {
    crate::ct::proto_number(s)
        .or_else(|| {
            let text = std::fs::read_to_string("/etc/protocols").ok()?;
            etc_protocols(&text, s)
        })
        .ok_or_else(|| format!("unknown protocol `{s}'"))
}

/// A protocol's number by its name or an alias in /etc/protocols (`esp
/// 50 IPSEC-ESP`), as conntrack's getprotobyname finds it.
pub(crate) fn etc_protocols(text: &str, name: &str) -> Option<u8> {
    text.lines().find_map(|line| {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let (official, number) = (words.next()?, words.next()?);
        let named = official.eq_ignore_ascii_case(name)
            || words.any(|alias| alias.eq_ignore_ascii_case(name));
        named.then(|| number.parse().ok()).flatten()
    })
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

/// A decimal or 0x-hex u32 (a timeout, a secmark, a verification tag).
fn parse_u32_arg(s: &str) -> std::result::Result<u32, String> {
    parse_u32(s).ok_or_else(|| format!("invalid value `{s}' (0 to 4294967295)"))
}

/// A decimal or 0x-hex u16 (a GRE key).
fn parse_u16_arg(s: &str) -> std::result::Result<u16, String> {
    parse_u32(s)
        .and_then(|v| u16::try_from(v).ok())
        .ok_or_else(|| format!("invalid value `{s}' (0 to 65535)"))
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
        // conntrack reads the names in any case.
        let word = word.to_ascii_uppercase();
        match word.as_str() {
            "UNSET" => {}
            "UNREPLIED" => mask |= crate::ct::ips::SEEN_REPLY,
            // conntrack refuses these too (its kernel request fails).
            "SRC_NAT" | "DST_NAT" => {
                return Err(format!(
                    "`{word}' is not a status filter: use --{}-nat instead",
                    if word == "SRC_NAT" { "src" } else { "dst" }
                ));
            }
            _ => {
                let bit = crate::ct::ips::NAMES
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
