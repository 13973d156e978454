//! count (`-C`) and stats (`-S`), as conntrack prints them.
use std::io::{self, Write};

use crate::{
    cli::{CliError, Result, args::StatsArgs},
    netlink::{CtSocket, NetlinkError, codec::STATS_NAMES},
};

pub fn count() -> Result<()> {
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

pub fn stats(args: &StatsArgs) -> Result<()> {
    let mut sock = CtSocket::open()?;
    let cpus = sock.stats_cpu()?;
    let mut out = String::new();
    let mut totals = [0u64; STATS_NAMES.len()];
    let mut seen = [false; STATS_NAMES.len()];
    for cpu in &cpus {
        out.push_str(&format!("cpu={:<4}\t", cpu.cpu));
        for (kind, value) in &cpu.counters {
            let k = usize::from(*kind);
            out.push_str(&format!("{}={} ", STATS_NAMES[k], value));
            totals[k] += u64::from(*value);
            seen[k] = true;
        }
        out.push('\n');
    }
    if args.total {
        out.push_str(&format!("{:<8}\t", "total"));
        for k in 0..STATS_NAMES.len() {
            if seen[k] {
                out.push_str(&format!("{}={} ", STATS_NAMES[k], totals[k]));
            }
        }
        out.push('\n');
    }
    io::stdout().lock().write_all(out.as_bytes())?;
    Ok(())
}
