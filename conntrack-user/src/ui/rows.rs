//! `ctscope top`: the table as rows (iptstate's columns and more), sorted
//! and filtered; [`super::once`] prints one snapshot as plain text,
//! [`super::screen`] draws them live.
use std::{cmp::Ordering, net::IpAddr};

use super::{
    resolve::Names,
    view::{Criteria, View},
};
use crate::{
    ct::{Conntrack, ProtoState, Tuple, is_dnat, is_icmp, is_snat, proto_name, state_name},
    output::digits::put_u64,
    table::Tracked,
};

/// Columns one can sort by (iptstate's b/B cycle through them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SortKey {
    /// Source address and port.
    #[default]
    Src,
    /// Destination address and port.
    Dst,
    /// Protocol.
    Proto,
    /// State.
    State,
    /// Time to live.
    Ttl,
    /// Bytes, both directions.
    Bytes,
    /// Packets, both directions.
    Packets,
    /// Bytes per second, both directions.
    Rate,
}

impl SortKey {
    /// All keys in cycling order.
    pub const ALL: [SortKey; 8] = [
        Self::Src,
        Self::Dst,
        Self::Proto,
        Self::State,
        Self::Ttl,
        Self::Bytes,
        Self::Packets,
        Self::Rate,
    ];

    /// The next key (`b`), or the previous (`B`).
    pub fn cycle(self, forward: bool) -> Self {
        let i = Self::ALL.iter().position(|k| *k == self).unwrap_or(0);
        let n = Self::ALL.len();
        Self::ALL[if forward {
            (i + 1) % n
        } else {
            (i + n - 1) % n
        }]
    }

    /// The column title.
    pub fn title(self) -> &'static str {
        match self {
            Self::Src => "SrcIP",
            Self::Dst => "DstIP",
            Self::Proto => "Proto",
            Self::State => "State",
            Self::Ttl => "TTL",
            Self::Bytes => "Bytes",
            Self::Packets => "Packets",
            Self::Rate => "Rate",
        }
    }
}

fn addr_key(a: Option<IpAddr>) -> u128 {
    match a {
        Some(IpAddr::V4(v4)) => u128::from(u32::from(v4)),
        Some(IpAddr::V6(v6)) => u128::from(v6) | (1 << 127),
        None => 0,
    }
}

fn bytes(t: &Tracked) -> u64 {
    t.ct.counters_orig.map_or(0, |c| c.bytes) + t.ct.counters_reply.map_or(0, |c| c.bytes)
}

fn packets(t: &Tracked) -> u64 {
    t.ct.counters_orig.map_or(0, |c| c.packets) + t.ct.counters_reply.map_or(0, |c| c.packets)
}

fn rate(t: &Tracked) -> f64 {
    f64::from(t.rate_bytes.0) + f64::from(t.rate_bytes.1)
}

/// The first 16 bytes of a name, big-endian: ordered as the names are
/// (names in this table differ within their first 16 bytes).
fn text_key(text: &[u8]) -> u128 {
    let mut bytes = [0u8; 16];
    let n = text.len().min(16);
    bytes[..n].copy_from_slice(&text[..n]);
    u128::from_be_bytes(bytes)
}

/// An f64 as a u64 in the same order as `f64::total_cmp`.
fn ordered_bits(v: f64) -> u64 {
    let bits = v.to_bits();
    if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    }
}

/// What rows are ordered by: the column's value (two words, to hold an
/// address and a port), then the source, then the destination. Sorting
/// these compact keys, rather than comparing entries scattered in memory,
/// is what keeps `top --once` on 300,000 entries cheap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RowKey(u128, u64, u128, u16, u128, u16);

/// The key of an entry under a sort column.
pub fn row_key(key: SortKey, t: &Tracked) -> RowKey {
    let ct = &t.ct;
    let (src, dst) = (addr_key(ct.orig.src), addr_key(ct.orig.dst));
    let (sport, dport) = (ct.orig.sport.unwrap_or(0), ct.orig.dport.unwrap_or(0));
    let (hi, lo) = match key {
        SortKey::Src => (src, u64::from(sport)),
        SortKey::Dst => (dst, u64::from(dport)),
        SortKey::Proto => (text_key(proto_name(ct.l4proto()).as_bytes()), 0),
        SortKey::State => (text_key(state_text(ct).as_bytes()), 0),
        SortKey::Ttl => (0, t.expires_at().map_or(0, |e| e.saturating_add(1))),
        SortKey::Bytes => (0, bytes(t)),
        SortKey::Packets => (0, packets(t)),
        SortKey::Rate => (0, ordered_bits(rate(t))),
    };
    RowKey(hi, lo, src, sport, dst, dport)
}

/// Orders two entries by a column (ties broken by source, then destination).
pub fn compare(key: SortKey, a: &Tracked, b: &Tracked) -> Ordering {
    row_key(key, a).cmp(&row_key(key, b))
}

/// Up to this many rows, `select` keeps a sorted top-k in one pass.
const TOP_K_MAX: usize = 4096;

/// From this many entries on, a screenful is selected on every core: the
/// `/` filter formats each entry, about 50 ns apiece, so one core needs
/// about 50 ms per frame at 1M entries.
const PARALLEL_MIN: usize = 1 << 17;
/// At most this many threads per frame.
const PARALLEL_MAX: usize = 8;

/// Entries passing the view's filters, the first `limit` of them in order
/// (selection, then a sort of only those: a frame at 1M entries sorts only
/// what it shows), and how many pass in all.
pub fn select<'a>(entries: &'a [Tracked], view: &View, limit: usize) -> (Vec<&'a Tracked>, usize) {
    let threads = if entries.len() >= PARALLEL_MIN && limit <= TOP_K_MAX {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(PARALLEL_MAX))
    } else {
        1
    };
    select_on(entries, view, limit, threads)
}

/// [`select`] on `threads` threads: each takes a contiguous part of the
/// entries and keeps its own best `limit`; the parts' bests are merged with
/// a stable sort, so equal rows keep memory order, as on one thread.
fn select_on<'a>(
    entries: &'a [Tracked],
    view: &View,
    limit: usize,
    threads: usize,
) -> (Vec<&'a Tracked>, usize) {
    let criteria = Criteria::new(view);
    if threads <= 1 || entries.len() < threads {
        return select_in(entries.iter(), &criteria, limit);
    }
    let part = entries.len().div_ceil(threads);
    let parts: Vec<(Vec<&'a Tracked>, usize)> = std::thread::scope(|scope| {
        let handles: Vec<_> = entries
            .chunks(part)
            .map(|chunk| {
                let criteria = &criteria;
                scope.spawn(move || select_in(chunk.iter(), criteria, limit))
            })
            .collect();
        handles
            .into_iter()
            // A new panic, not resume_unwind (which skips the panic hook):
            // on the screen's thread, the hook restores the terminal and
            // prints this.
            .map(|h| {
                h.join().unwrap_or_else(|panic| {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    panic!("a frame's selection thread panicked: {what}")
                })
            })
            .collect()
    });
    let total = parts.iter().map(|(_, n)| n).sum();
    let mut best: Vec<&Tracked> = parts.into_iter().flat_map(|(rows, _)| rows).collect();
    best.sort_by(|a, b| {
        let o = compare(view.sort, a, b);
        if view.reverse { o.reverse() } else { o }
    });
    best.truncate(limit);
    (best, total)
}

fn select_in<'a>(
    entries: impl Iterator<Item = &'a Tracked>,
    criteria: &Criteria<'_>,
    limit: usize,
) -> (Vec<&'a Tracked>, usize) {
    let view = criteria.view;
    let passing = entries.filter(|t| criteria.passes(&t.ct)).filter({
        let mut buf = Vec::with_capacity(128);
        let finder = memchr::memmem::Finder::new(view.text.as_bytes());
        move |t| {
            view.text.is_empty() || {
                row_text_into(&mut buf, t, view);
                finder.find(&buf).is_some()
            }
        }
    });
    let cmp = |a: &&Tracked, b: &&Tracked| {
        let o = compare(view.sort, a, b);
        if view.reverse { o.reverse() } else { o }
    };
    if limit <= TOP_K_MAX {
        // A screenful: one pass in memory order keeping the best `limit`
        // sorted; most entries cost one comparison with the worst kept.
        let mut best: Vec<&Tracked> = Vec::with_capacity(limit + 1);
        let mut total = 0;
        for t in passing {
            total += 1;
            if limit == 0 {
                continue;
            }
            if best.len() == limit
                && best
                    .last()
                    .is_some_and(|worst| cmp(&t, worst) != Ordering::Less)
            {
                continue;
            }
            let at = best.partition_point(|b| cmp(b, &t) != Ordering::Greater);
            best.insert(at, t);
            best.truncate(limit);
        }
        return (best, total);
    }
    // Many rows (`--once`): sort the keys, computed once each.
    let mut keyed: Vec<(RowKey, &Tracked)> = passing.map(|t| (row_key(view.sort, t), t)).collect();
    let total = keyed.len();
    let order = |a: &(RowKey, &Tracked), b: &(RowKey, &Tracked)| {
        let o = a.0.cmp(&b.0);
        if view.reverse { o.reverse() } else { o }
    };
    if limit < keyed.len() && limit > 0 {
        keyed.select_nth_unstable_by(limit - 1, order);
        keyed.truncate(limit);
    } else if limit == 0 {
        keyed.clear();
    }
    keyed.sort_unstable_by(order);
    (keyed.into_iter().map(|(_, t)| t).collect(), total)
}

/// The State column: TCP/SCTP/DCCP state, or ICMP type/code.
pub fn state_text(ct: &Conntrack) -> String {
    let mut buf = Vec::new();
    state_into(&mut buf, ct);
    String::from_utf8_lossy(&buf).into_owned()
}

fn state_into(buf: &mut Vec<u8>, ct: &Conntrack) {
    match (ct.proto_state, ct.l4proto()) {
        (Some(s), _) => buf.extend_from_slice(state_name(s).as_bytes()),
        (None, l4) if is_icmp(l4) => {
            put_u64(buf, ct.orig.icmp_type.unwrap_or(0).into());
            buf.push(b'/');
            put_u64(buf, ct.orig.icmp_code.unwrap_or(0).into());
        }
        _ => {}
    }
}

/// `H:MM:SS`, as iptstate prints the TTL.
pub fn ttl_text(secs: Option<u32>) -> String {
    let mut buf = Vec::new();
    ttl_into(&mut buf, secs.unwrap_or(0));
    String::from_utf8_lossy(&buf).into_owned()
}

fn ttl_into(buf: &mut Vec<u8>, secs: u32) {
    put_u64(buf, (secs / 3600).into());
    for part in [secs / 60 % 60, secs % 60] {
        buf.push(b':');
        buf.push(b'0' + (part / 10) as u8);
        buf.push(b'0' + (part % 10) as u8);
    }
}

/// The NAT column: where the entry is translated to.
pub fn nat_text(ct: &Conntrack) -> String {
    let mut buf = Vec::new();
    nat_into(&mut buf, ct);
    String::from_utf8_lossy(&buf).into_owned()
}

fn nat_into(buf: &mut Vec<u8>, ct: &Conntrack) {
    let reply: &Tuple = &ct.reply;
    if is_dnat(ct) {
        buf.extend_from_slice(b"DNAT ");
        endpoint_into(buf, reply.src, reply.sport, ct.l4proto(), None);
    } else if is_snat(ct) {
        buf.extend_from_slice(b"SNAT ");
        endpoint_into(buf, reply.dst, reply.dport, ct.l4proto(), None);
    }
}

/// Human bytes: 1.2K, 3.4M...
pub fn human(n: f64) -> String {
    const UNITS: [&str; 5] = ["", "K", "M", "G", "T"];
    let mut v = n;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

/// The Prt column: conntrack's name, or the number where it has none (as
/// iptstate shows it).
pub fn proto_label(l4: u8) -> std::borrow::Cow<'static, str> {
    match proto_name(l4) {
        "unknown" => l4.to_string().into(),
        name => name.into(),
    }
}

/// The cells of one row, in column order.
pub fn cells(t: &Tracked, counters: bool, view: &View) -> Vec<String> {
    let (mut arena, mut ends) = (Vec::with_capacity(128), Vec::with_capacity(11));
    cells_into(t, counters, view, &mut arena, &mut |a: &mut Vec<u8>| {
        ends.push(a.len())
    });
    let mut start = 0;
    ends.iter()
        .map(|&end| {
            let cell = String::from_utf8_lossy(&arena[start..end]).into_owned();
            start = end;
            cell
        })
        .collect()
}

/// Writes an address, `[IPv6]:port` or `IPv4:port` for port protocols;
/// with `names`, the host's and the port's names where known
/// (`host:service`).
fn endpoint_into(
    buf: &mut Vec<u8>,
    a: Option<IpAddr>,
    port: Option<u16>,
    l4: u8,
    names: Option<&Names>,
) {
    let Some(a) = a else {
        return;
    };
    let port = port.filter(|_| crate::ct::has_ports(l4));
    let bracket = a.is_ipv6() && port.is_some();
    match names.and_then(|n| n.host(&a)) {
        Some(host) => buf.extend_from_slice(host.as_bytes()),
        None => {
            if bracket {
                buf.push(b'[');
            }
            crate::output::text::put_ip(buf, &a);
            if bracket {
                buf.push(b']');
            }
        }
    }
    if let Some(p) = port {
        buf.push(b':');
        match names.and_then(|n| n.service(p, l4)) {
            Some(service) => buf.extend_from_slice(service.as_bytes()),
            None => put_u64(buf, p.into()),
        }
    }
}

/// [`cells`] without a String each: the cells one after another in
/// `arena`, `end` called after each (to note where it ends, or to put a
/// separator): `top --once` writes 300,000 rows, the `/` filter searches
/// every entry each frame.
pub fn cells_into(
    t: &Tracked,
    counters: bool,
    view: &View,
    arena: &mut Vec<u8>,
    end: &mut impl FnMut(&mut Vec<u8>),
) {
    use std::io::Write as _;
    let ct = &t.ct;
    let l4 = ct.l4proto();
    let names = view.names.as_ref();
    endpoint_into(arena, ct.orig.src, ct.orig.sport, l4, names);
    end(arena);
    endpoint_into(arena, ct.orig.dst, ct.orig.dport, l4, names);
    end(arena);
    arena.extend_from_slice(proto_label(l4).as_bytes());
    end(arena);
    state_into(arena, ct);
    end(arena);
    ttl_into(arena, t.ttl_at(view.now_ms).unwrap_or(0));
    end(arena);
    if counters {
        put_u64(arena, bytes(t));
        end(arena);
        put_u64(arena, packets(t));
        end(arena);
        let _ = write!(arena, "{}/s", human(rate(t)));
        end(arena);
    }
    nat_into(arena, ct);
    end(arena);
    if let Some(m) = ct.mark.filter(|m| *m != 0) {
        put_u64(arena, m.into());
    }
    end(arena);
    if let Some(z) = ct.zone {
        put_u64(arena, z.into());
    }
    end(arena);
}

/// Column titles matching [`cells`].
pub fn titles(counters: bool) -> Vec<&'static str> {
    let mut v = vec!["Source", "Destination", "Prt", "State", "TTL"];
    if counters {
        v.extend(["Bytes", "Packets", "Rate"]);
    }
    v.extend(["NAT", "Mark", "Zone"]);
    v
}

/// Writes the searchable text of a row (its cells without counters, a
/// space after each) into `buf`, reusing it: the `/` filter runs this for
/// every entry of a frame, so it avoids `Display` and allocations.
fn row_text_into(buf: &mut Vec<u8>, t: &Tracked, view: &View) {
    buf.clear();
    cells_into(t, false, view, buf, &mut |b: &mut Vec<u8>| b.push(b' '));
}

/// Whether a TCP entry is in one of the closing states (used by the TUI to
/// dim them, as iptstate does).
pub fn is_closing(ct: &Conntrack) -> bool {
    matches!(ct.proto_state, Some(ProtoState::Tcp(4..=8)))
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::{
        ct::{Counters, EventKind, ips, proto, samples::flow},
        table::Table,
    };

    fn entry(src: &str, sport: u16, dst: &str, l4: u8, timeout: u32, bytes: u64) -> Conntrack {
        Conntrack {
            timeout: Some(timeout),
            status: Some(ips::CONFIRMED | ips::SEEN_REPLY),
            proto_state: (l4 == proto::TCP).then_some(ProtoState::Tcp(3)),
            counters_orig: Some(Counters { packets: 1, bytes }),
            counters_reply: Some(Counters {
                packets: 1,
                bytes: 0,
            }),
            ..flow(src, dst, l4, sport, 80)
        }
    }

    fn table() -> Table {
        let mut t = Table::new();
        let now = Instant::now();
        for ct in [
            entry("10.0.0.2", 1000, "10.9.0.1", 6, 300, 500),
            entry("10.0.0.1", 2000, "10.9.0.2", 17, 20, 9000),
            entry("10.0.0.3", 3000, "10.9.0.3", 6, 3700, 10),
        ] {
            t.apply(EventKind::New, &ct, now, None);
        }
        t
    }

    fn view(sort: SortKey, reverse: bool) -> View {
        View {
            sort,
            reverse,
            ..View::default()
        }
    }

    #[test]
    fn sorts_and_limits() {
        let t = table();
        let (rows, total) = select(t.entries(), &view(SortKey::Src, false), 10);
        assert_eq!(total, 3);
        let srcs: Vec<_> = rows.iter().map(|r| r.ct.orig.sport).collect();
        assert_eq!(srcs, vec![Some(2000), Some(1000), Some(3000)]);
        let (rows, _) = select(t.entries(), &view(SortKey::Bytes, true), 2);
        let b: Vec<_> = rows.iter().map(|r| bytes(r)).collect();
        assert_eq!(b, vec![9000, 500]);
        let (rows, _) = select(t.entries(), &view(SortKey::Ttl, false), 1);
        assert_eq!(rows[0].ct.timeout, Some(20));
    }

    /// `n` entries from a xorshift sequence started at `seed`: sources
    /// 10.0.{x % a}.{x % b}, TCP or UDP, timeouts below `ttl`, bytes below
    /// `bytes`; source ports 0..n tell them apart.
    fn random_table(n: u16, seed: u32, (a, b): (u32, u32), ttl: u32, bytes: u32) -> Table {
        let mut t = Table::new();
        let now = Instant::now();
        let mut x = seed;
        for i in 0..n {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let src = format!("10.0.{}.{}", x % a, x % b);
            let l4 = if x.is_multiple_of(2) { 6 } else { 17 };
            t.apply(
                EventKind::New,
                &entry(&src, i, "10.9.0.1", l4, x % ttl, u64::from(x % bytes)),
                now,
                None,
            );
        }
        t
    }

    #[test]
    fn top_k_pass_equals_the_full_sort() {
        let t = random_table(600, 99, (7, 5), 900, 300);
        for key in SortKey::ALL {
            for reverse in [false, true] {
                let v = view(key, reverse);
                let (all, total) = select(t.entries(), &v, usize::MAX);
                let (top, total_k) = select(t.entries(), &v, 37);
                assert_eq!(total, total_k);
                let ids = |r: &[&Tracked]| r.iter().map(|e| e.ct.orig.sport).collect::<Vec<_>>();
                let full = ids(&all);
                // Equal keys may come in either order; compare the keys.
                let keys = |r: &[&Tracked]| {
                    r.iter()
                        .map(|e| cells(e, true, &v).join(" "))
                        .collect::<Vec<_>>()
                };
                assert_eq!(keys(&top), keys(&all[..37]), "{key:?} reverse={reverse}");
                assert_eq!(full.len(), 600);
            }
        }
    }

    #[test]
    fn every_core_selects_what_one_core_does() {
        // Few distinct keys: many ties, whose order must not change.
        let t = random_table(1000, 7, (3, 2), 50, 20);
        let ids = |r: &[&Tracked]| r.iter().map(|e| e.ct.orig.sport).collect::<Vec<_>>();
        for key in SortKey::ALL {
            for text in ["", "udp", "10.0.1"] {
                let mut v = view(key, key == SortKey::Bytes);
                v.text = text.into();
                let (one, n1) = select_on(t.entries(), &v, 41, 1);
                for threads in [2, 3, 8] {
                    let (many, n) = select_on(t.entries(), &v, 41, threads);
                    assert_eq!(n, n1, "{key:?} {text:?} on {threads}");
                    assert_eq!(ids(&many), ids(&one), "{key:?} {text:?} on {threads}");
                }
            }
        }
    }

    #[test]
    fn search_text_is_the_visible_cells() {
        let t = table();
        let mut bytes = Vec::new();
        for e in t.entries().iter() {
            row_text_into(&mut bytes, e, &View::default());
            let buf = String::from_utf8(bytes.clone()).expect("utf-8");
            let cells: Vec<String> = cells(e, false, &View::default())
                .into_iter()
                .filter(|c| !c.is_empty())
                .collect();
            assert_eq!(
                buf.split_whitespace().collect::<Vec<_>>(),
                cells
                    .iter()
                    .flat_map(|c| c.split_whitespace())
                    .collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn cells_spell_ttl_state_and_nat() {
        assert_eq!(ttl_text(Some(3725)), "1:02:05");
        let mut ct = entry("192.168.1.5", 1000, "10.0.0.1", 6, 1, 1);
        ct.reply.src = Some("10.0.0.2".parse().expect("addr"));
        ct.status = Some(ips::CONFIRMED | ips::DST_NAT | ips::DST_NAT_DONE);
        assert_eq!(nat_text(&ct), "DNAT 10.0.0.2:80");
        assert_eq!(state_text(&ct), "ESTABLISHED");
        assert_eq!(SortKey::Rate.cycle(true), SortKey::Src);
        assert_eq!(SortKey::Src.cycle(false), SortKey::Rate);
        assert_eq!(human(1_234_000.0), "1.2M");
    }
}
