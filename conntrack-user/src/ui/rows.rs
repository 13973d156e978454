//! `ctscope top`: the table as rows (iptstate's columns and more), sorted
//! and filtered; `--once` prints one snapshot as plain text, otherwise
//! `tui` draws it live.
use std::{cmp::Ordering, fmt::Write as _, net::IpAddr};

use crate::{
    ct::{Conntrack, ProtoState, Tuple, is_dnat, is_icmp, is_snat, proto_name, state_name},
    filter::Filter,
    table::Tracked,
};

/// Columns one can sort by (iptstate's b/B cycle through them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SortKey {
    /// Source address and port.
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

/// Orders two entries by a column (ties broken by source, then destination).
pub fn compare(key: SortKey, a: &Tracked, b: &Tracked) -> Ordering {
    let by_src = |a: &Tracked, b: &Tracked| {
        (addr_key(a.ct.orig.src), a.ct.orig.sport).cmp(&(addr_key(b.ct.orig.src), b.ct.orig.sport))
    };
    let by_dst = |a: &Tracked, b: &Tracked| {
        (addr_key(a.ct.orig.dst), a.ct.orig.dport).cmp(&(addr_key(b.ct.orig.dst), b.ct.orig.dport))
    };
    let primary = match key {
        SortKey::Src => by_src(a, b),
        SortKey::Dst => by_dst(a, b),
        SortKey::Proto => proto_name(a.ct.l4proto()).cmp(proto_name(b.ct.l4proto())),
        SortKey::State => state_text(&a.ct).cmp(&state_text(&b.ct)),
        SortKey::Ttl => a.expires_at().cmp(&b.expires_at()),
        SortKey::Bytes => bytes(a).cmp(&bytes(b)),
        SortKey::Packets => packets(a).cmp(&packets(b)),
        SortKey::Rate => rate(a).total_cmp(&rate(b)),
    };
    primary
        .then_with(|| by_src(a, b))
        .then_with(|| by_dst(a, b))
}

/// How the rows are chosen and ordered.
#[derive(Clone, Debug)]
pub struct View {
    /// Sort column.
    pub sort: SortKey,
    /// Largest first.
    pub reverse: bool,
    /// The shared filters.
    pub filter: Filter,
    /// `/` filter: rows whose text contains this.
    pub text: String,
    /// The table's clock for the TTL column ([`crate::table::Table::now_ms`]).
    pub now_ms: u32,
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
    if threads <= 1 || entries.len() < threads {
        return select_in(entries.iter(), view, limit);
    }
    let part = entries.len().div_ceil(threads);
    let parts: Vec<(Vec<&'a Tracked>, usize)> = std::thread::scope(|scope| {
        let handles: Vec<_> = entries
            .chunks(part)
            .map(|chunk| scope.spawn(move || select_in(chunk.iter(), view, limit)))
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
    view: &View,
    limit: usize,
) -> (Vec<&'a Tracked>, usize) {
    let passing = entries.filter(|t| view.filter.matches(&t.ct)).filter({
        let mut buf = Vec::with_capacity(128);
        let finder = memchr::memmem::Finder::new(view.text.as_bytes());
        move |t| {
            view.text.is_empty() || {
                row_text_into(&mut buf, t, view.now_ms);
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
    let mut rows: Vec<&Tracked> = passing.collect();
    let total = rows.len();
    if limit < rows.len() && limit > 0 {
        rows.select_nth_unstable_by(limit - 1, cmp);
        rows.truncate(limit);
    } else if limit == 0 {
        rows.clear();
    }
    rows.sort_unstable_by(cmp);
    (rows, total)
}

fn endpoint(a: Option<IpAddr>, port: Option<u16>, l4: u8) -> String {
    let addr = a.map(|a| a.to_string()).unwrap_or_default();
    match (port, crate::ct::has_ports(l4)) {
        (Some(p), true) if a.is_some_and(|a| a.is_ipv6()) => format!("[{addr}]:{p}"),
        (Some(p), true) => format!("{addr}:{p}"),
        _ => addr,
    }
}

/// The State column: TCP/SCTP/DCCP state, or ICMP type/code.
pub fn state_text(ct: &Conntrack) -> String {
    match (ct.proto_state, ct.l4proto()) {
        (Some(s), _) => state_name(s).to_string(),
        (None, l4) if is_icmp(l4) => format!(
            "{}/{}",
            ct.orig.icmp_type.unwrap_or(0),
            ct.orig.icmp_code.unwrap_or(0)
        ),
        _ => String::new(),
    }
}

/// `H:MM:SS`, as iptstate prints the TTL.
pub fn ttl_text(secs: Option<u32>) -> String {
    let s = secs.unwrap_or(0);
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// The NAT column: where the entry is translated to.
pub fn nat_text(ct: &Conntrack) -> String {
    let reply: &Tuple = &ct.reply;
    if is_dnat(ct) {
        format!("DNAT {}", endpoint(reply.src, reply.sport, ct.l4proto()))
    } else if is_snat(ct) {
        format!("SNAT {}", endpoint(reply.dst, reply.dport, ct.l4proto()))
    } else {
        String::new()
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
pub fn cells(t: &Tracked, counters: bool, now_ms: u32) -> Vec<String> {
    let ct = &t.ct;
    let l4 = ct.l4proto();
    let mut v = vec![
        endpoint(ct.orig.src, ct.orig.sport, l4),
        endpoint(ct.orig.dst, ct.orig.dport, l4),
        proto_label(l4).into_owned(),
        state_text(ct),
        ttl_text(t.ttl_at(now_ms)),
    ];
    if counters {
        v.push(bytes(t).to_string());
        v.push(packets(t).to_string());
        v.push(format!("{}/s", human(rate(t))));
    }
    v.push(nat_text(ct));
    v.push(
        ct.mark
            .filter(|m| *m != 0)
            .map(|m| m.to_string())
            .unwrap_or_default(),
    );
    v.push(ct.zone.map(|z| z.to_string()).unwrap_or_default());
    v
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

/// Writes the searchable text of a row (its cells without counters) into
/// `buf`, reusing it: the `/` filter runs this for every entry of a frame,
/// so it avoids `Display` and allocations.
fn row_text_into(buf: &mut Vec<u8>, t: &Tracked, now_ms: u32) {
    buf.clear();
    let ct = &t.ct;
    let l4 = ct.l4proto();
    let ports = crate::ct::has_ports(l4);
    let mut n = itoa::Buffer::new();
    for (a, port) in [(ct.orig.src, ct.orig.sport), (ct.orig.dst, ct.orig.dport)] {
        let Some(a) = a else {
            continue;
        };
        match (port, ports) {
            (Some(p), true) => {
                if a.is_ipv6() {
                    buf.push(b'[');
                    crate::output::text::put_ip(buf, &a);
                    buf.push(b']');
                } else {
                    crate::output::text::put_ip(buf, &a);
                }
                buf.push(b':');
                buf.extend_from_slice(n.format(p).as_bytes());
            }
            _ => crate::output::text::put_ip(buf, &a),
        }
        buf.push(b' ');
    }
    buf.extend_from_slice(proto_label(l4).as_bytes());
    buf.push(b' ');
    match (ct.proto_state, l4) {
        (Some(s), _) => buf.extend_from_slice(state_name(s).as_bytes()),
        (None, l4) if is_icmp(l4) => {
            buf.extend_from_slice(n.format(ct.orig.icmp_type.unwrap_or(0)).as_bytes());
            buf.push(b'/');
            buf.extend_from_slice(n.format(ct.orig.icmp_code.unwrap_or(0)).as_bytes());
        }
        _ => {}
    }
    let s = t.ttl_at(now_ms).unwrap_or(0);
    buf.push(b' ');
    buf.extend_from_slice(n.format(s / 3600).as_bytes());
    for part in [s / 60 % 60, s % 60] {
        buf.push(b':');
        buf.push(b'0' + (part / 10) as u8);
        buf.push(b'0' + (part % 10) as u8);
    }
    if ct.has_status(crate::ct::ips::SRC_NAT_DONE | crate::ct::ips::DST_NAT_DONE) {
        let nat = nat_text(ct);
        if !nat.is_empty() {
            buf.push(b' ');
            buf.extend_from_slice(nat.as_bytes());
        }
    }
    if let Some(m) = ct.mark.filter(|m| *m != 0) {
        buf.push(b' ');
        buf.extend_from_slice(n.format(m).as_bytes());
    }
    if let Some(z) = ct.zone {
        buf.push(b' ');
        buf.extend_from_slice(n.format(z).as_bytes());
    }
}

/// The `--once` snapshot: a header line, then aligned columns, no padding
/// at line ends.
pub fn write_once(out: &mut String, rows: &[&Tracked], view: &View, counters: bool, total: usize) {
    let titles = titles(counters);
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|t| cells(t, counters, view.now_ms))
        .collect();
    // Columns that are empty in every row (NAT, Mark, Zone) are left out.
    let keep: Vec<bool> = (0..titles.len())
        .map(|i| i < 5 || table.iter().any(|r| !r[i].is_empty()))
        .collect();
    let mut widths: Vec<usize> = titles.iter().map(|t| t.len()).collect();
    for r in &table {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let _ = writeln!(
        out,
        "ctscope top -- Sort by: {}{} -- {} of {} entries",
        view.sort.title(),
        if view.reverse { " (reversed)" } else { "" },
        rows.len(),
        total
    );
    let mut line = |cols: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cols.iter().enumerate() {
            if !keep[i] {
                continue;
            }
            let _ = write!(l, "{c:<w$}  ", w = widths[i]);
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(titles.clone());
    for r in &table {
        line(r.iter().map(String::as_str).collect());
    }
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
            filter: Filter::default(),
            text: String::new(),
            now_ms: 0,
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
                        .map(|e| cells(e, true, 0).join(" "))
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
    fn text_filter_and_once_layout() {
        let t = table();
        let mut v = view(SortKey::Src, false);
        v.text = "udp".into();
        let (rows, total) = select(t.entries(), &v, usize::MAX);
        assert_eq!(total, 1);
        let mut out = String::new();
        write_once(&mut out, &rows, &v, true, total);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "ctscope top -- Sort by: SrcIP -- 1 of 1 entries");
        assert!(lines[1].starts_with("Source"), "{out}");
        assert!(lines[2].starts_with("10.0.0.1:2000  10.9.0.2:80"), "{out}");
        assert!(lines[2].contains(" udp "), "{out}");
        assert!(lines[2].contains("0:00:20"), "{out}");
        assert!(!out.lines().any(|l| l.ends_with(' ')));
    }

    #[test]
    fn search_text_is_the_visible_cells() {
        let t = table();
        let mut bytes = Vec::new();
        for e in t.entries().iter() {
            row_text_into(&mut bytes, e, 0);
            let buf = String::from_utf8(bytes.clone()).expect("utf-8");
            let cells: Vec<String> = cells(e, false, 0)
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
