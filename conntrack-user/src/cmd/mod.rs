//! The commands, one file per command or family: [`table`] (list, get,
//! delete, flush), [`write`](mod@write) (create, update), [`stats`] (count, stats),
//! [`events`], [`top`], [`profile`], [`serve`]. Each takes its validated
//! arguments from `cli` and returns
//! `cli::Result`.
use crate::{
    cli::Result,
    ct::Conntrack,
    netlink::{CtSocket, cta},
};

pub mod events;
pub mod expect;
pub mod profile;
pub mod serve;
pub mod stats;
pub mod table;
pub mod top;
pub mod write;

/// A netfilter sysctl of the current namespace, if readable.
pub fn read_sysctl(name: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/sys/net/netfilter/{name}"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// The whole table of the current namespace.
pub fn dump_all() -> Result<Vec<Conntrack>> {
    let mut sock = CtSocket::open()?;
    let mut all = Vec::new();
    sock.dump(0, &[], |ct| {
        all.push(ct.clone());
        true
    })?;
    Ok(all)
}

/// Sums of the kernel's per-CPU early_drop, insert_failed and drop.
pub fn pressure_counters(sock: &mut CtSocket) -> Result<[u64; 3]> {
    let mut sums = [0u64; 3];
    for cpu in sock.stats_cpu()? {
        for (kind, value) in cpu.counters {
            let slot = match kind {
                cta::STATS_EARLY_DROP => 0,
                cta::STATS_INSERT_FAILED => 1,
                cta::STATS_DROP => 2,
                _ => continue,
            };
            sums[slot] += u64::from(value);
        }
    }
    Ok(sums)
}
