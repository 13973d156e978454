//! The command line: conntrack(8)-compatible subcommands and flags
//! ([`args`]), the checks across them ([`filter_args`]), signal handling
//! ([`signals`]) and exit codes.
//!
//! Exit codes as conntrack: 0 ok, 2 bad parameters (one line saying why),
//! 1 anything else (missing entry, missing privilege, kernel error).
use std::io;

use clap::Parser as _;

pub mod args;
pub mod filter_args;
pub mod signals;

use args::TopArgs;
pub use args::{Cli, Command};

use crate::{
    cmd,
    expect::Table,
    netlink::NetlinkError,
    netns,
    output::OutputOptionError,
    source::{SourceChoice, SourceError},
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

impl From<OutputOptionError> for CliError {
    fn from(e: OutputOptionError) -> Self {
        // conntrack exits 1 on "cannot combine save output ...", 2 on a
        // bad word.
        if e.is_usage() {
            Self::Usage(e.to_string())
        } else {
            Self::Failed(e.to_string())
        }
    }
}

impl From<SourceError> for CliError {
    fn from(e: SourceError) -> Self {
        match e {
            SourceError::Netlink(e) => e.into(),
            SourceError::AllNetnsNeedsEbpf => Self::Usage(e.to_string()),
            e if e.is_privilege() => Self::Privilege(e.to_string()),
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

/// What a command returns.
pub type Result<T> = std::result::Result<T, CliError>;

/// A bad-parameters error (exit 2).
pub fn usage(msg: impl Into<String>) -> CliError {
    CliError::Usage(msg.into())
}

/// conntrack's refusal of an option the command does not take (exit 2),
/// e.g. `Illegal option `--zero' with this command`.
pub fn illegal(long_flag: &str) -> CliError {
    usage(format!("Illegal option `--{long_flag}' with this command"))
}

/// The dying and unconfirmed lists can only be listed, as with conntrack.
fn not_a_list(table: Table) -> Result<Table> {
    match table {
        Table::Dying | Table::Unconfirmed => Err(usage(
            "Can't do that command with tables `dying' and `unconfirmed'",
        )),
        t => Ok(t),
    }
}

fn dispatch(cli: &Cli) -> Result<()> {
    if let Some(ns) = &cli.netns {
        netns::enter(ns).map_err(|e| CliError::Failed(e.to_string()))?;
        if let Some(w) = netns::Watch::new(ns) {
            netns::set_watch(w);
        }
    }
    match &cli.command {
        Some(Command::List(a)) if a.table == Table::Expect => cmd::expect::list(a),
        Some(Command::List(a)) => cmd::table::list(a),
        Some(Command::Get(a)) => match not_a_list(a.table)? {
            Table::Expect => cmd::expect::get(a),
            _ => cmd::table::get(a),
        },
        Some(Command::Delete(a)) => match not_a_list(a.table)? {
            Table::Expect => cmd::expect::delete(a),
            _ => cmd::table::delete(a),
        },
        Some(Command::Create(a)) => match not_a_list(a.table)? {
            Table::Expect => cmd::expect::create(a),
            _ => cmd::write::create(a),
        },
        Some(Command::Update(a)) => match not_a_list(a.table)? {
            Table::Expect => Err(usage("Can't do --update on expectations")),
            _ => cmd::write::update(a),
        },
        Some(Command::Flush(a)) => match not_a_list(a.table)? {
            Table::Expect => cmd::expect::flush(a),
            _ => cmd::table::flush(a),
        },
        Some(Command::Count(a)) => match not_a_list(a.table)? {
            Table::Expect => cmd::expect::count(a),
            _ => cmd::stats::count(),
        },
        Some(Command::Stats(a)) => match not_a_list(a.table)? {
            Table::Expect => cmd::expect::stats(a),
            _ => cmd::stats::stats(a),
        },
        Some(Command::Events(a)) => match not_a_list(a.table)? {
            Table::Expect => cmd::expect::events(a),
            _ => with_ebpf_caps(cmd::events::run(a), a.source.source),
        },
        // `top --once` takes one dump and never traces.
        Some(Command::Top(a)) if a.once => cmd::top::run(a),
        Some(Command::Top(a)) => with_ebpf_caps(cmd::top::run(a), a.source.source),
        Some(Command::Profile(a)) => with_ebpf_caps(cmd::profile::run(a), a.source.source),
        Some(Command::Serve(a)) => with_ebpf_caps(cmd::serve::run(a), a.source.source),
        None => with_ebpf_caps(cmd::top::run(&TopArgs::default()), SourceChoice::Auto),
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
    use crate::{filter::NatFilter, ui::rows::SortKey};

    fn parse(args: &[&str]) -> std::result::Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("ctscope").chain(args.iter().copied()))
    }

    #[test]
    fn protocols_from_etc_protocols() {
        let text = "# comment\nip\t0\tIP\nesp 50 IPSEC-ESP # Encap Security Payload\nbad x\n";
        assert_eq!(args::etc_protocols(text, "esp"), Some(50));
        assert_eq!(args::etc_protocols(text, "ipsec-esp"), Some(50));
        assert_eq!(args::etc_protocols(text, "bad"), None);
        assert_eq!(args::etc_protocols(text, "nope"), None);
        // LISTEN is TCP state 9, as conntrack names it.
        let cli = parse(&["list", "-p", "tcp", "--state", "LISTEN"]).expect("parses");
        let Some(Command::List(a)) = cli.command else {
            panic!("not list");
        };
        assert!(a.filter.to_filter().is_ok());
    }

    #[test]
    fn every_command_has_unique_flags() {
        // clap checks the whole definition (e.g. one short letter for two
        // flags of a command) only when asked, or at run time in debug.
        <Cli as clap::CommandFactory>::command().debug_assert();
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
            Some(Command::Count(_))
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
    fn create_update_and_zero_flags() {
        let Some(Command::Create(c)) = parse(&["-I", "-p", "udp", "-t", "30", "--label-add", "a"])
            .expect("parses")
            .command
        else {
            panic!("not create");
        };
        assert_eq!((c.entry.proto, c.timeout), (Some(17), Some(30)));
        let Some(Command::Update(u)) = parse(&["--update", "-m", "1", "--label-del"])
            .expect("parses")
            .command
        else {
            panic!("not update");
        };
        assert_eq!(u.label_del, Some(Vec::new()), "--label-del without a value");
        let Some(Command::List(l)) = parse(&["-L", "-z", "-f", "ipv4"]).expect("parses").command
        else {
            panic!("not list");
        };
        assert!(l.zero);
        // Refused before any socket is opened: exit 2, as conntrack.
        for argv in [
            &["-L", "-z", "-p", "udp"][..],
            &["-G", "-z", "-p", "udp"],
            &["-D", "-c", "1"],
            &["-I", "-p", "udp", "-s", "1.1.1.1", "-d", "2.2.2.2"],
            &["-U", "-w", "1"],
            &["-I", "-t", "-5"],
            // The expectation options belong to -I expect.
            &[
                "-I",
                "-p",
                "udp",
                "-s",
                "1.1.1.1",
                "-d",
                "2.2.2.2",
                "-t",
                "5",
                "--tuple-src",
                "1.1.1.1",
            ],
        ] {
            let code = run(std::iter::once("ctscope").chain(argv.iter().copied()));
            assert_eq!(code, 2, "{argv:?}");
        }
    }

    #[test]
    fn bad_values_are_usage_errors() {
        assert!(parse(&["list", "-s", "300.1.1.1"]).is_err());
        assert!(parse(&["list", "-m", "x"]).is_err());
        assert!(parse(&["list", "--sport", "70000"]).is_err());
        assert!(parse(&["list", "-f", "ipx"]).is_err());
        assert!(parse(&["list", "-p", "nosuchproto"]).is_err());
        assert_eq!(run(["ctscope", "list", "--bogus"]), 2);
        // Durations past what a Duration holds are refused, not a panic;
        // a long one that fits runs until stopped.
        for d in ["1e99", "18446744073709551616", "inf", "nan", "-1", "0"] {
            assert!(parse(&["events", "--duration", d]).is_err(), "{d}");
            assert!(parse(&["profile", "--duration", d]).is_err(), "{d}");
        }
        assert!(parse(&["events", "--duration", "1e19"]).is_ok());
    }

    #[test]
    fn addresses_in_inet_aton_forms() {
        let net = |s: &str| {
            let Some(Command::List(a)) = parse(&["list", "-s", s]).ok().and_then(|c| c.command)
            else {
                return None;
            };
            a.filter.src.map(|n| n.to_string())
        };
        assert_eq!(net("1.2.3").as_deref(), Some("1.2.0.3/32"));
        assert_eq!(net("10.1").as_deref(), Some("10.0.0.1/32"));
        assert_eq!(net("0x7f.1").as_deref(), Some("127.0.0.1/32"));
        assert_eq!(net("010.0.0.1").as_deref(), Some("8.0.0.1/32"));
        assert_eq!(net("167772161").as_deref(), Some("10.0.0.1/32"));
        assert_eq!(net("127.1/8").as_deref(), Some("127.0.0.1/8"));
        for bad in [
            "1.2.3.256",
            "1.2.65536",
            "1..2",
            "09.1.1.1",
            "1.2.3.4.5",
            "x",
            "",
        ] {
            assert_eq!(net(bad), None, "{bad}");
        }
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
        // --mask-src/--mask-dst: the netmask of -s/-d (replacing a prefix).
        let masked = |args: &[&str]| {
            let Some(Command::List(a)) = parse(args).ok().and_then(|c| c.command) else {
                return Err("does not parse".to_string());
            };
            a.filter
                .to_filter()
                .map(|f| {
                    (
                        f.orig_src.map(|n| n.to_string()),
                        f.orig_dst.map(|n| n.to_string()),
                    )
                })
                .map_err(|e| e.to_string())
        };
        assert_eq!(
            masked(&["-L", "-s", "10.1.2.3", "--mask-src", "255.255.0.0"]),
            Ok((Some("10.1.2.3/16".into()), None))
        );
        assert_eq!(
            masked(&[
                "-L",
                "-s",
                "10.1.0.0/16",
                "-d",
                "::1",
                "--mask-src",
                "255.0.0.0"
            ]),
            Err("mixed address families: -f and the addresses disagree".into())
        );
        assert_eq!(
            masked(&["-L", "-d", "2001:db8::1", "--mask-dst", "ffff:ffff::"]),
            Ok((None, Some("2001:db8::1/32".into())))
        );
        assert_eq!(
            masked(&["-L", "--mask-src", "255.0.0.0"]),
            Err("Can't use --mask-src without --src".into())
        );
        assert!(masked(&["-L", "-s", "10.0.0.1", "--mask-src", "255.0.255.0"]).is_err());
        assert!(masked(&["-L", "-s", "10.0.0.1", "--mask-src", "ffff::"]).is_err());
        assert!(parse(&["-L", "-s", "10.0.0.1", "--mask-src", "255.0.0.0/8"]).is_err());
        let cli = parse(&["list", "--state", "ESTABLISHED"]).expect("parses");
        let Some(Command::List(a)) = cli.command else {
            panic!("not list");
        };
        assert!(matches!(a.filter.to_filter(), Err(CliError::Usage(_))));
    }
}
