//! The kernel's own figures, read over ctnetlink at each scrape (so they
//! need no /proc): the entry count, nf_conntrack_max and the `conntrack -S`
//! statistics summed over CPUs, the ones node_exporter's conntrack
//! collector reads from /proc.
use crate::netlink::{CtSocket, NetlinkError, StatsCpu, codec::STATS_NAMES};

/// The per-CPU statistics shown, by `CTA_STATS_*` number: node_exporter's
/// (always shown, 0 when this kernel does not report one), then those of
/// newer kernels (shown when reported).
pub const SHOWN_STATS: [(u16, bool); 10] = [
    (2, true),   // found
    (4, true),   // invalid
    (5, true),   // ignore
    (8, true),   // insert
    (9, true),   // insert_failed
    (10, true),  // drop
    (11, true),  // early_drop
    (13, true),  // search_restart
    (14, false), // clash_resolve
    (15, false), // chaintoolong
];

/// What the kernel says about its table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    /// Entries in the table (`conntrack -C`).
    pub entries: Option<u64>,
    /// `nf_conntrack_max`.
    pub limit: Option<u64>,
    /// `(name, sum over CPUs)` for each of [`SHOWN_STATS`] shown.
    pub stats: Vec<(&'static str, u64)>,
}

impl KernelStats {
    /// Reads the figures of the current network namespace.
    pub fn read() -> Result<Self, NetlinkError> {
        let mut sock = CtSocket::open()?;
        let (entries, limit) = sock.stats_global()?;
        let cpus = sock.stats_cpu()?;
        Ok(Self::from_parts(entries, limit, &cpus))
    }

    /// Sums the per-CPU messages into the figures shown.
    pub fn from_parts(entries: Option<u32>, limit: Option<u32>, cpus: &[StatsCpu]) -> Self {
        let mut sums = [0u64; STATS_NAMES.len()];
        let mut seen = [false; STATS_NAMES.len()];
        for cpu in cpus {
            for &(kind, value) in &cpu.counters {
                if let Some(sum) = sums.get_mut(usize::from(kind)) {
                    *sum += u64::from(value);
                    seen[usize::from(kind)] = true;
                }
            }
        }
        let stats = SHOWN_STATS
            .iter()
            .filter(|(kind, always)| *always || seen[usize::from(*kind)])
            .map(|&(kind, _)| (STATS_NAMES[usize::from(kind)], sums[usize::from(kind)]))
            .collect();
        Self {
            entries: entries.map(u64::from),
            limit: limit.map(u64::from),
            stats,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_over_cpus_and_shows_new_stats_only_when_reported() {
        let cpus = [
            StatsCpu {
                cpu: 0,
                counters: vec![(2, 5), (9, 1), (11, 7)],
            },
            StatsCpu {
                cpu: 1,
                counters: vec![(2, u32::MAX), (14, 3), (99, 1)],
            },
        ];
        let k = KernelStats::from_parts(Some(10), Some(262_144), &cpus);
        assert_eq!(k.entries, Some(10));
        assert_eq!(k.limit, Some(262_144));
        let get = |name: &str| k.stats.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        // Summed in 64 bits: no wrap past u32::MAX.
        assert_eq!(get("found"), Some(5 + u64::from(u32::MAX)));
        assert_eq!(get("insert_failed"), Some(1));
        assert_eq!(get("early_drop"), Some(7));
        // node_exporter's names are always there; newer ones when reported.
        assert_eq!(get("ignore"), Some(0));
        assert_eq!(get("clash_resolve"), Some(3));
        assert_eq!(get("chaintoolong"), None);
        assert_eq!(k.stats.len(), 9);
    }
}
