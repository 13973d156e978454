//! Counts of the live entries by protocol, TCP state and zone, and (when
//! asked) by original source and destination address, kept as entries come,
//! change state and go, so a view reads them without walking the table.
use std::{collections::HashMap, net::IpAddr};

use crate::ct::{Conntrack, ProtoState, TCP_STATES, proto};

/// The TCP state slot of entries whose state no event or dump reported.
const TCP_UNKNOWN: usize = TCP_STATES.len();

/// Entries by protocol, TCP state and zone; optionally by address.
#[derive(Clone, Debug)]
pub struct Census {
    by_proto: [u64; 256],
    tcp_states: [u64; TCP_STATES.len() + 1],
    /// Entries without a zone, the usual case: counted without hashing.
    zone0: u64,
    /// Entries per other zone.
    zones: HashMap<u16, u64>,
    talkers: Option<Talkers>,
}

/// Entries per original source and per original destination address.
#[derive(Clone, Debug, Default)]
struct Talkers {
    sources: HashMap<IpAddr, u64>,
    destinations: HashMap<IpAddr, u64>,
}

impl Default for Census {
    fn default() -> Self {
        Self {
            by_proto: [0; 256],
            tcp_states: [0; TCP_STATES.len() + 1],
            zone0: 0,
            zones: HashMap::new(),
            talkers: None,
        }
    }
}

/// The census slot of an entry's TCP state; `None` for other protocols.
pub(super) fn tcp_slot(ct: &Conntrack) -> Option<usize> {
    if ct.l4proto() != proto::TCP {
        return None;
    }
    Some(match ct.proto_state {
        Some(ProtoState::Tcp(s)) if usize::from(s) < TCP_STATES.len() => usize::from(s),
        // Out of the kernel's enum: NONE, as conntrack names it.
        Some(ProtoState::Tcp(_)) => 0,
        _ => TCP_UNKNOWN,
    })
}

fn bump(map: &mut HashMap<IpAddr, u64>, addr: Option<IpAddr>, up: bool) {
    let Some(addr) = addr else {
        return;
    };
    if up {
        *map.entry(addr).or_default() += 1;
    } else if let Some(n) = map.get_mut(&addr) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(&addr);
        }
    }
}

impl Census {
    /// An empty census with the same settings (address counts or not).
    pub(super) fn emptied(&self) -> Self {
        Self {
            talkers: self.talkers.as_ref().map(|_| Talkers::default()),
            ..Self::default()
        }
    }

    /// Starts counting entries per address (`entries` are those held now).
    pub(super) fn track_talkers<'a>(&mut self, entries: impl Iterator<Item = &'a Conntrack>) {
        let mut talkers = Talkers::default();
        for ct in entries {
            bump(&mut talkers.sources, ct.orig.src, true);
            bump(&mut talkers.destinations, ct.orig.dst, true);
        }
        self.talkers = Some(talkers);
    }

    /// Counts an entry the table now holds.
    pub(super) fn add(&mut self, ct: &Conntrack) {
        self.count(ct, true);
    }

    /// Uncounts an entry the table no longer holds.
    pub(super) fn remove(&mut self, ct: &Conntrack) {
        self.count(ct, false);
    }

    fn count(&mut self, ct: &Conntrack, up: bool) {
        let step = |n: &mut u64| *n = if up { *n + 1 } else { n.saturating_sub(1) };
        step(&mut self.by_proto[usize::from(ct.l4proto())]);
        if let Some(slot) = tcp_slot(ct) {
            step(&mut self.tcp_states[slot]);
        }
        match ct.zone.unwrap_or(0) {
            0 => step(&mut self.zone0),
            zone => {
                let n = self.zones.entry(zone).or_default();
                step(n);
                if *n == 0 {
                    self.zones.remove(&zone);
                }
            }
        }
        if let Some(t) = &mut self.talkers {
            bump(&mut t.sources, ct.orig.src, up);
            bump(&mut t.destinations, ct.orig.dst, up);
        }
    }

    /// An entry's TCP state moved from slot `from` to slot `to`.
    pub(super) fn move_tcp_state(&mut self, from: usize, to: usize) {
        self.tcp_states[from] = self.tcp_states[from].saturating_sub(1);
        self.tcp_states[to] += 1;
    }

    /// Entries per layer 4 protocol number, those with any.
    pub fn by_proto(&self) -> impl Iterator<Item = (u8, u64)> + '_ {
        (0..=u8::MAX)
            .zip(self.by_proto.iter().copied())
            .filter(|(_, n)| *n > 0)
    }

    /// TCP entries per state name (`UNKNOWN` when never reported), those
    /// with any.
    pub fn tcp_states(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        TCP_STATES
            .iter()
            .copied()
            .chain(std::iter::once("UNKNOWN"))
            .zip(self.tcp_states.iter().copied())
            .filter(|(_, n)| *n > 0)
    }

    /// Entries per zone (0: no zone), those with any, in zone order.
    pub fn zones(&self) -> Vec<(u16, u64)> {
        let mut zones: Vec<(u16, u64)> = self.zones.iter().map(|(z, n)| (*z, *n)).collect();
        if self.zone0 > 0 {
            zones.push((0, self.zone0));
        }
        zones.sort_unstable();
        zones
    }

    /// Whether entries are counted per address.
    pub fn tracks_talkers(&self) -> bool {
        self.talkers.is_some()
    }

    /// The `n` original sources with the most entries, most first (ties
    /// by address); empty unless addresses are counted.
    pub fn top_sources(&self, n: usize) -> Vec<(IpAddr, u64)> {
        self.talkers
            .as_ref()
            .map_or_else(Vec::new, |t| top(&t.sources, n))
    }

    /// The `n` original destinations with the most entries, most first.
    pub fn top_destinations(&self, n: usize) -> Vec<(IpAddr, u64)> {
        self.talkers
            .as_ref()
            .map_or_else(Vec::new, |t| top(&t.destinations, n))
    }
}

/// The `n` largest counts: a partial selection, then a sort of those.
fn top(map: &HashMap<IpAddr, u64>, n: usize) -> Vec<(IpAddr, u64)> {
    if n == 0 {
        return Vec::new();
    }
    let mut all: Vec<(IpAddr, u64)> = map.iter().map(|(a, c)| (*a, *c)).collect();
    let order = |a: &(IpAddr, u64), b: &(IpAddr, u64)| b.1.cmp(&a.1).then(a.0.cmp(&b.0));
    if all.len() > n {
        all.select_nth_unstable_by(n - 1, order);
        all.truncate(n);
    }
    all.sort_unstable_by(order);
    all
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::{
        ct::{EventKind, samples::flow},
        table::Table,
    };

    #[test]
    fn counts_follow_adds_removes_and_state_moves() {
        let mut c = Census::default();
        c.track_talkers(std::iter::empty());
        let mut a = flow("10.0.0.1", "10.0.0.9", proto::TCP, 1, 80);
        a.proto_state = Some(ProtoState::Tcp(1));
        let mut b = flow("10.0.0.1", "10.0.0.8", proto::UDP, 2, 53);
        b.zone = Some(7);
        let c2 = flow("10.0.0.2", "10.0.0.9", proto::TCP, 3, 80);
        for ct in [&a, &b, &c2] {
            c.add(ct);
        }
        assert_eq!(c.by_proto().collect::<Vec<_>>(), [(6, 2), (17, 1)]);
        assert_eq!(
            c.tcp_states().collect::<Vec<_>>(),
            [("SYN_SENT", 1), ("UNKNOWN", 1)]
        );
        assert_eq!(c.zones(), [(0, 2), (7, 1)]);
        let ip = |s: &str| s.parse::<IpAddr>().expect("address");
        assert_eq!(c.top_sources(1), [(ip("10.0.0.1"), 2)]);
        assert_eq!(
            c.top_destinations(5),
            [(ip("10.0.0.9"), 2), (ip("10.0.0.8"), 1)]
        );
        c.move_tcp_state(1, 3);
        assert_eq!(
            c.tcp_states().collect::<Vec<_>>(),
            [("ESTABLISHED", 1), ("UNKNOWN", 1)]
        );
        a.proto_state = Some(ProtoState::Tcp(3));
        c.remove(&a);
        c.remove(&b);
        assert_eq!(c.by_proto().collect::<Vec<_>>(), [(6, 1)]);
        assert_eq!(c.zones(), [(0, 1)]);
        assert_eq!(c.top_sources(3), [(ip("10.0.0.2"), 1)]);
        // Removing what is not counted never underflows.
        c.remove(&b);
        assert_eq!(c.zones(), [(0, 1)]);
        assert!(c.emptied().tracks_talkers());
        assert_eq!(c.emptied().by_proto().count(), 0);
    }

    /// The census counted as entries came and went equals a count of the
    /// entries held.
    fn assert_census_matches(t: &Table) {
        let mut protos = std::collections::BTreeMap::new();
        let mut states = std::collections::BTreeMap::new();
        let mut zones = std::collections::BTreeMap::new();
        let mut sources = std::collections::BTreeMap::new();
        for e in t.entries() {
            *protos.entry(e.ct.l4proto()).or_insert(0u64) += 1;
            if let Some(slot) = tcp_slot(&e.ct) {
                let name = crate::ct::TCP_STATES
                    .get(slot)
                    .copied()
                    .unwrap_or("UNKNOWN");
                *states.entry(name).or_insert(0u64) += 1;
            }
            *zones.entry(e.ct.zone.unwrap_or(0)).or_insert(0u64) += 1;
            if let Some(src) = e.ct.orig.src {
                *sources.entry(src).or_insert(0u64) += 1;
            }
        }
        let c = t.census();
        assert_eq!(
            c.by_proto().collect::<std::collections::BTreeMap<_, _>>(),
            protos
        );
        assert_eq!(
            c.tcp_states().collect::<std::collections::BTreeMap<_, _>>(),
            states
        );
        assert_eq!(
            c.zones()
                .into_iter()
                .collect::<std::collections::BTreeMap<_, _>>(),
            zones
        );
        let top: std::collections::BTreeMap<_, _> = c.top_sources(usize::MAX).into_iter().collect();
        assert_eq!(top, sources);
    }

    #[test]
    fn the_census_matches_the_entries_through_churn_and_resyncs() {
        let mut t = Table::new();
        t.track_talkers();
        let base = Instant::now();
        let mut x: u32 = 777;
        let mut held = Vec::new();
        for step in 0..5_000u32 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let mut ct = flow("10.0.0.1", "10.0.0.2", proto::UDP, (x % 500) as u16, 53);
            ct.status = Some(crate::ct::ips::CONFIRMED);
            ct.orig.src = Some(IpAddr::from([10, 0, 0, (x % 7) as u8]));
            if x.is_multiple_of(3) {
                ct.orig.l4proto = Some(6);
                ct.proto_state = Some(ProtoState::Tcp((x % 11) as u8));
            }
            ct.zone = x.is_multiple_of(5).then_some((x % 3) as u16);
            let now = base + Duration::from_secs(u64::from(step) * 3);
            let kind = match x % 4 {
                0 => EventKind::Destroy,
                1 => EventKind::Update,
                _ => EventKind::New,
            };
            t.apply(kind, &ct, now, None);
            held.push(ct);
            if step % 1000 == 999 {
                assert_census_matches(&t);
                // A dump of some of what was seen, some of it new.
                let dump: Vec<Conntrack> = held.iter().step_by(3).cloned().collect();
                t.resync(dump, now);
                assert_census_matches(&t);
                assert!(t.census().tracks_talkers());
            }
        }
    }
}
