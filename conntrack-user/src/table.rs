//! The live table: every tracked entry, kept from an event source and
//! reconciled with ctnetlink dumps. Data flows one way: source -> table ->
//! views (`top`, `profile`).
//!
//! Entries are keyed by (family, zone, l4 protocol, original tuple), the
//! kernel's own identity of a connection within a namespace. DESTROY before
//! NEW (events of one entry can be delivered by different CPUs out of order)
//! and DESTROY without NEW are tolerated: a DESTROY of an unknown key only
//! counts; a NEW arriving after its DESTROY within a short window is
//! dropped. Updates no event carries (counters, timeouts) come from the
//! periodic dumps, which also measure the drift the events missed.
//!
//! Storage: the entries sit in one dense `Vec` (a frame walks memory in
//! order, and nothing rounds the entry array up to a power of two) with a
//! `hashbrown::HashTable` of `u32` positions as the index, hashed by [`Key`].
use std::{
    collections::HashMap,
    hash::BuildHasher,
    net::IpAddr,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use hashbrown::{DefaultHashBuilder, HashTable};
use hdrhistogram::Histogram;

pub use self::census::Census;
use crate::ct::{Conntrack, EventKind, ProtoState, Tuple, proto_name};

mod census;

/// The identity of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    family: u8,
    l4: u8,
    zone: u16,
    src: IpAddr,
    dst: IpAddr,
    /// Source port, or ICMP id.
    sport: u16,
    /// Destination port, or ICMP type << 8 | code.
    dport: u16,
}

impl Key {
    /// The key of an entry; `None` without an original tuple.
    pub fn of(ct: &Conntrack) -> Option<Self> {
        let t: &Tuple = &ct.orig;
        Some(Self {
            family: ct.family,
            l4: ct.l4proto(),
            zone: ct.zone.unwrap_or(0),
            src: t.src?,
            dst: t.dst?,
            sport: t.sport.or(t.icmp_id).unwrap_or(0),
            dport: t.dport.unwrap_or_else(|| {
                u16::from(t.icmp_type.unwrap_or(0)) << 8 | u16::from(t.icmp_code.unwrap_or(0))
            }),
        })
    }
}

/// One tracked entry and what the table learnt about it over time.
#[derive(Clone, Debug)]
pub struct Tracked {
    /// The latest view of the entry.
    pub ct: Conntrack,
    /// When this table first saw it, in ms since the table was made.
    pub first_seen_ms: u32,
    /// When `ct.timeout` was last reported (event or dump), in ms since
    /// the table was made: the TTL counts down from there.
    pub timeout_at_ms: u32,
    /// Bytes per second, original and reply directions, between the last
    /// two dumps (needs nf_conntrack_acct=1).
    pub rate_bytes: (f32, f32),
    /// Packets per second, original and reply.
    pub rate_packets: (f32, f32),
}

/// What a resync found that the events had not said.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drift {
    /// Entries in the dump the table did not have (missed NEW).
    pub missed: u64,
    /// Entries the table had that the dump did not (missed DESTROY).
    pub stale: u64,
}

/// Churn and histogram summaries.
#[derive(Clone, Debug)]
pub struct Stats {
    /// NEW events applied.
    pub new_total: u64,
    /// DESTROY events applied.
    pub destroy_total: u64,
    /// DESTROY events for keys the table did not hold.
    pub destroy_unknown: u64,
    /// Resyncs done.
    pub resyncs: u64,
    /// Drift found by the last resync.
    pub last_drift: Drift,
    /// Connection lifetime in ms, per protocol name.
    pub lifetime_ms: HashMap<&'static str, Histogram<u64>>,
    /// TCP connection lifetime in ms, per end state (the state at DESTROY).
    pub tcp_lifetime_ms: HashMap<&'static str, Histogram<u64>>,
    /// NEW events per protocol name.
    pub new_by_proto: HashMap<&'static str, u64>,
    /// DESTROY events per protocol name.
    pub destroy_by_proto: HashMap<&'static str, u64>,
    /// TCP set-up time (NEW to ESTABLISHED) in µs.
    pub tcp_setup_us: Histogram<u64>,
    /// Event delivery latency (kernel time to handling) in ns.
    pub delivery_ns: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    // 3 significant digits, auto-resizing: never fails for these arguments.
    Histogram::new(3).unwrap_or_else(|_| Histogram::new_with_max(1 << 40, 2).expect("histogram"))
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            new_total: 0,
            destroy_total: 0,
            destroy_unknown: 0,
            resyncs: 0,
            last_drift: Drift::default(),
            lifetime_ms: HashMap::new(),
            tcp_lifetime_ms: HashMap::new(),
            new_by_proto: HashMap::new(),
            destroy_by_proto: HashMap::new(),
            tcp_setup_us: histogram(),
            delivery_ns: histogram(),
        }
    }
}

/// The live table.
#[derive(Debug)]
pub struct Table {
    entries: Vec<Tracked>,
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
    epoch: Instant,
    last_resync: Option<Instant>,
    /// Keys destroyed recently, to drop a late NEW (per-CPU reordering).
    recently_destroyed: HashMap<Key, Instant>,
    /// Entries the last resync's dump no longer had, until the next one: a
    /// dump that overtakes their DESTROY events (a flush while it ran)
    /// must not cost those connections their lifetimes.
    vanished: HashMap<Key, Tracked>,
    /// Churn, drift and histograms.
    pub stats: Stats,
    /// Entries held, by protocol, TCP state, zone (and address).
    census: Census,
}

impl Default for Table {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            index: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            epoch: Instant::now(),
            last_resync: None,
            recently_destroyed: HashMap::new(),
            vanished: HashMap::new(),
            stats: Stats::default(),
            census: Census::default(),
        }
    }
}

const REORDER_WINDOW: Duration = Duration::from_secs(2);
const ESTABLISHED: u8 = 3;

impl Table {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every entry, in no order.
    pub fn entries(&self) -> &[Tracked] {
        &self.entries
    }

    /// The table's clock now, in ms since it was made.
    pub fn now_ms(&self) -> u32 {
        self.ms_since_epoch(Instant::now())
    }

    fn ms_since_epoch(&self, now: Instant) -> u32 {
        u32::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u32::MAX)
    }

    fn hash(&self, key: &Key) -> u64 {
        self.hasher.hash_one(key)
    }

    fn find(&self, key: &Key) -> Option<usize> {
        let entries = &self.entries;
        self.index
            .find(self.hash(key), |&i| {
                Key::of(&entries[i as usize].ct).as_ref() == Some(key)
            })
            .map(|&i| i as usize)
    }

    /// The entries held, counted by protocol, TCP state and zone.
    pub fn census(&self) -> &Census {
        &self.census
    }

    /// Counts entries per original source and destination address too
    /// (see [`Census::top_sources`]), from now on.
    pub fn track_talkers(&mut self) {
        self.census
            .track_talkers(self.entries.iter().map(|t| &t.ct));
    }

    fn insert(&mut self, key: Key, t: Tracked) {
        self.census.add(&t.ct);
        let pos = self.entries.len() as u32;
        self.entries.push(t);
        let hash = self.hash(&key);
        let (entries, hasher) = (&self.entries, &self.hasher);
        self.index.insert_unique(hash, pos, |&i| {
            Key::of(&entries[i as usize].ct).map_or(0, |k| hasher.hash_one(k))
        });
    }

    fn remove(&mut self, key: &Key) -> Option<Tracked> {
        let hash = self.hash(key);
        let entries = &self.entries;
        let slot = self
            .index
            .find_entry(hash, |&i| {
                Key::of(&entries[i as usize].ct).as_ref() == Some(key)
            })
            .ok()?;
        let (pos, _) = slot.remove();
        let pos = pos as usize;
        let last = self.entries.len() - 1;
        let removed = self.entries.swap_remove(pos);
        self.census.remove(&removed.ct);
        if pos != last {
            // The last entry moved into `pos`: point its index slot there.
            if let Some(moved) = Key::of(&self.entries[pos].ct) {
                let h = self.hash(&moved);
                if let Some(i) = self.index.find_mut(h, |&i| i as usize == last) {
                    *i = pos as u32;
                }
            }
        }
        Some(removed)
    }

    /// Applies one event. `delivery_ns`, when known, is the time from the
    /// kernel's timestamp to now.
    pub fn apply(
        &mut self,
        kind: EventKind,
        ct: &Conntrack,
        now: Instant,
        delivery_ns: Option<u64>,
    ) {
        let Some(key) = Key::of(ct) else {
            return;
        };
        if let Some(ns) = delivery_ns {
            let _ = self.stats.delivery_ns.record(ns.max(1));
        }
        let now_ms = self.ms_since_epoch(now);
        match kind {
            EventKind::New | EventKind::Update => {
                if kind == EventKind::New {
                    self.stats.new_total += 1;
                    *self
                        .stats
                        .new_by_proto
                        .entry(proto_name(ct.l4proto()))
                        .or_default() += 1;
                    if self
                        .recently_destroyed
                        .get(&key)
                        .is_some_and(|t| now.duration_since(*t) < REORDER_WINDOW)
                    {
                        return;
                    }
                }
                match self.find(&key) {
                    Some(pos) => {
                        let t = &mut self.entries[pos];
                        let was_established =
                            matches!(t.ct.proto_state, Some(ProtoState::Tcp(ESTABLISHED)));
                        let state_before = census::tcp_slot(&t.ct);
                        merge(&mut t.ct, ct);
                        if let (Some(from), Some(to)) = (state_before, census::tcp_slot(&t.ct))
                            && from != to
                        {
                            self.census.move_tcp_state(from, to);
                        }
                        if ct.timeout.is_some() {
                            t.timeout_at_ms = now_ms;
                        }
                        if !was_established
                            && matches!(t.ct.proto_state, Some(ProtoState::Tcp(ESTABLISHED)))
                        {
                            let us = u64::from(now_ms.saturating_sub(t.first_seen_ms)) * 1000;
                            let _ = self.stats.tcp_setup_us.record(us.max(1));
                        }
                    }
                    None => self.insert(key, tracked(ct.clone(), now_ms)),
                }
            }
            EventKind::Destroy => {
                self.stats.destroy_total += 1;
                *self
                    .stats
                    .destroy_by_proto
                    .entry(proto_name(ct.l4proto()))
                    .or_default() += 1;
                self.recently_destroyed.insert(key, now);
                let gone = self.remove(&key);
                match gone.or_else(|| self.vanished.remove(&key)) {
                    Some(t) => {
                        // The kernel's start time (nf_conntrack_timestamp=1)
                        // when the DESTROY or an earlier dump carried it; the
                        // time this table first saw the entry otherwise.
                        let start = ct.timestamp_start.or(t.ct.timestamp_start);
                        let stop = ct.timestamp_stop.or_else(|| {
                            SystemTime::now()
                                .duration_since(UNIX_EPOCH)
                                .ok()
                                .and_then(|d| u64::try_from(d.as_nanos()).ok())
                        });
                        let ms = match (start, stop) {
                            (Some(start), Some(stop)) if stop >= start => {
                                (stop - start) / 1_000_000
                            }
                            _ => u64::from(now_ms.saturating_sub(t.first_seen_ms)),
                        };
                        self.record_lifetime(ct.l4proto(), ms);
                        // The end state: the DESTROY's own, else the last seen.
                        if let Some(ProtoState::Tcp(state)) = ct.proto_state.or(t.ct.proto_state) {
                            let name = crate::ct::state_name(ProtoState::Tcp(state));
                            let _ = self
                                .stats
                                .tcp_lifetime_ms
                                .entry(name)
                                .or_insert_with(histogram)
                                .record(ms.max(1));
                        }
                    }
                    None => self.stats.destroy_unknown += 1,
                }
            }
        }
        if self.recently_destroyed.len() > 65_536 {
            self.recently_destroyed
                .retain(|_, t| now.duration_since(*t) < REORDER_WINDOW);
        }
    }

    fn record_lifetime(&mut self, l4: u8, ms: u64) {
        let _ = self
            .stats
            .lifetime_ms
            .entry(proto_name(l4))
            .or_insert_with(histogram)
            .record(ms.max(1));
    }

    /// Replaces the table with a full dump, keeping what was learnt about
    /// entries still there, updating rates from counter deltas since the
    /// last dump, and counting the drift.
    pub fn resync(&mut self, dump: impl IntoIterator<Item = Conntrack>, now: Instant) -> Drift {
        let now_ms = self.ms_since_epoch(now);
        let since_last = self
            .last_resync
            .map(|t| now.saturating_duration_since(t).as_secs_f64());
        let mut old = std::mem::take(self);
        // The new table counts what it inserts; the old one need not count
        // what it gives up.
        self.census = std::mem::take(&mut old.census).emptied();
        self.epoch = old.epoch;
        self.stats = std::mem::take(&mut old.stats);
        self.recently_destroyed = std::mem::take(&mut old.recently_destroyed);
        // Room for the whole dump at once: growing a 300,000-entry index
        // step by step rehashes it again and again.
        let dump = dump.into_iter();
        let expected = dump.size_hint().0.max(old.entries.len());
        self.entries.reserve(expected);
        {
            let (entries, hasher) = (&self.entries, &self.hasher);
            self.index.reserve(expected, |&i| {
                Key::of(&entries[i as usize].ct).map_or(0, |k| hasher.hash_one(k))
            });
        }
        let mut drift = Drift::default();
        let mut kept = 0u64;
        for ct in dump {
            let Some(key) = Key::of(&ct) else {
                continue;
            };
            let t = match old.remove(&key) {
                Some(mut t) => {
                    kept += 1;
                    let secs = since_last.map(|s| {
                        let born = f64::from(now_ms.saturating_sub(t.first_seen_ms)) / 1000.0;
                        s.min(born)
                    });
                    update_rates(&mut t, &ct, secs);
                    t.ct = ct;
                    t.timeout_at_ms = now_ms;
                    t
                }
                None => {
                    drift.missed += 1;
                    tracked(ct, now_ms)
                }
            };
            if self.find(&key).is_none() {
                self.insert(key, t);
            }
        }
        let _ = kept;
        drift.stale = old.entries.len() as u64;
        self.vanished = old
            .entries
            .into_iter()
            .filter_map(|t| Some((Key::of(&t.ct)?, t)))
            .collect();
        self.last_resync = Some(now);
        self.stats.resyncs += 1;
        self.stats.last_drift = drift;
        drift
    }
}

impl Tracked {
    /// Seconds left at `now_ms` (see [`Table::now_ms`]): the timeout last
    /// reported, counted down since, as iptstate shows it every second.
    pub fn ttl_at(&self, now_ms: u32) -> Option<u32> {
        let elapsed = now_ms.saturating_sub(self.timeout_at_ms) / 1000;
        self.ct.timeout.map(|t| t.saturating_sub(elapsed))
    }

    /// When the entry runs out, in seconds on the table's clock (what a
    /// TTL sort compares, whatever the time now).
    pub fn expires_at(&self) -> Option<u64> {
        self.ct
            .timeout
            .map(|t| u64::from(t) + u64::from(self.timeout_at_ms / 1000))
    }
}

fn tracked(ct: Conntrack, now_ms: u32) -> Tracked {
    Tracked {
        ct,
        first_seen_ms: now_ms,
        timeout_at_ms: now_ms,
        rate_bytes: (0.0, 0.0),
        rate_packets: (0.0, 0.0),
    }
}

/// Rates from the counters the entry held (`t.ct`, as of the last dump)
/// to the new ones, over `secs`.
fn update_rates(t: &mut Tracked, new: &Conntrack, secs: Option<f64>) {
    let (Some(secs), Some(o0), Some(r0), Some(o1), Some(r1)) = (
        secs.filter(|s| *s > 0.0),
        t.ct.counters_orig,
        t.ct.counters_reply,
        new.counters_orig,
        new.counters_reply,
    ) else {
        return;
    };
    let rate = |new: u64, old: u64| (new.saturating_sub(old) as f64 / secs) as f32;
    t.rate_bytes = (rate(o1.bytes, o0.bytes), rate(r1.bytes, r0.bytes));
    t.rate_packets = (rate(o1.packets, o0.packets), rate(r1.packets, r0.packets));
}

/// Takes the attributes an event carries into the entry we hold (events
/// omit what did not change: counters, timestamps, mark...).
fn merge(into: &mut Conntrack, from: &Conntrack) {
    macro_rules! take {
        ($($f:ident),*) => { $( if from.$f.is_some() { into.$f = from.$f.clone(); } )* };
    }
    take!(
        status,
        timeout,
        mark,
        use_count,
        id,
        counters_orig,
        counters_reply,
        timestamp_start,
        timestamp_stop,
        proto_state,
        extra
    );
}

/// Summary of a histogram: count, p50, p90, p99, p99.9, max.
pub fn summary(h: &Histogram<u64>) -> [u64; 6] {
    [
        h.len(),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.9),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max(),
    ]
}

#[cfg(test)]
mod tests;
