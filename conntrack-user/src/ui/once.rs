//! `top --once`: one snapshot as plain text, names looked up first when
//! asked (a snapshot may wait for them; the screen never does).
use std::{
    collections::HashSet,
    fmt::Write as _,
    net::IpAddr,
    time::{Duration, Instant},
};

use super::{
    resolve::{Limits, Resolver},
    rows::{cells_into, titles},
    view::{Totals, View},
};
use crate::table::Tracked;

/// How long `--once --lookup` waits for names in all; addresses still
/// unnamed then are printed as addresses.
pub const LOOKUP_WAIT: Duration = Duration::from_secs(5);

/// At most this many addresses are looked up for one snapshot.
pub const LOOKUP_MAX: usize = 65_536;

/// Looks up the names of the rows' addresses (at most [`LOOKUP_MAX`], on
/// `threads` threads), waiting until `deadline`, and gives the view the
/// names found.
pub fn look_up(
    view: &mut View,
    rows: &[&Tracked],
    make: impl FnOnce(Limits) -> Resolver,
    threads: usize,
    deadline: Instant,
) {
    let addrs: HashSet<IpAddr> = rows
        .iter()
        .flat_map(|t| [t.ct.orig.src, t.ct.orig.dst])
        .flatten()
        .take(2 * LOOKUP_MAX)
        .collect();
    let n = addrs.len().min(LOOKUP_MAX);
    let resolver = make(Limits {
        workers: threads,
        queue: n,
        cache: n,
    });
    resolver.request(addrs.into_iter().take(n));
    resolver.wait_idle(deadline);
    view.names = Some(resolver.names());
}

/// A cell's width on a terminal: its characters (names may be UTF-8).
fn width(cell: &[u8]) -> usize {
    if cell.is_ascii() {
        cell.len()
    } else {
        String::from_utf8_lossy(cell).chars().count()
    }
}

/// The `--once` snapshot: a header line, iptstate's totals line when
/// asked, then aligned columns, no padding at line ends.
pub fn write_once(
    out: &mut String,
    rows: &[&Tracked],
    view: &View,
    counters: bool,
    total: usize,
    totals: Option<&Totals>,
) {
    let titles = titles(counters);
    let columns = titles.len();
    let mut arena = Vec::with_capacity(rows.len() * 96);
    let mut ends = Vec::with_capacity(rows.len() * columns);
    for t in rows {
        cells_into(t, counters, view, &mut arena, &mut |a: &mut Vec<u8>| {
            ends.push(a.len())
        });
    }
    let cell = |row: usize, col: usize| {
        let i = row * columns + col;
        let start = if i == 0 { 0 } else { ends[i - 1] };
        &arena[start..ends[i]]
    };
    let mut widths: Vec<usize> = titles.iter().map(|t| t.len()).collect();
    for row in 0..rows.len() {
        for (col, w) in widths.iter_mut().enumerate() {
            *w = (*w).max(width(cell(row, col)));
        }
    }
    // Columns that are empty in every row (NAT, Mark, Zone) are left out.
    let keep: Vec<usize> = (0..columns)
        .filter(|&col| col < 5 || (0..rows.len()).any(|row| !cell(row, col).is_empty()))
        .collect();
    let _ = writeln!(
        out,
        "ctscope top -- Sort by: {}{} -- {} of {} entries",
        view.sort.title(),
        if view.reverse { " (reversed)" } else { "" },
        rows.len(),
        total
    );
    if let Some(t) = totals {
        let _ = writeln!(out, "{t}");
    }
    let mut line = Vec::with_capacity(256);
    out.reserve(arena.len() + rows.len() * columns * 4);
    emit_line(
        out,
        &mut line,
        keep.iter().map(|&c| (titles[c].as_bytes(), widths[c])),
    );
    for row in 0..rows.len() {
        emit_line(
            out,
            &mut line,
            keep.iter().map(|&c| (cell(row, c), widths[c])),
        );
    }
}

/// One line of aligned cells (each padded to its width and two spaces),
/// without trailing spaces.
fn emit_line<'a>(
    out: &mut String,
    line: &mut Vec<u8>,
    cells: impl Iterator<Item = (&'a [u8], usize)>,
) {
    line.clear();
    for (c, width) in cells {
        line.extend_from_slice(c);
        line.resize(line.len() + width.saturating_sub(self::width(c)) + 2, b' ');
    }
    while line.last() == Some(&b' ') {
        line.pop();
    }
    // Cells are whole UTF-8 strings (names may be other than ASCII).
    out.push_str(&String::from_utf8_lossy(line));
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Instant};

    use super::*;
    use crate::{
        ct::{Conntrack, Counters, EventKind, ProtoState, ips, proto, samples::flow},
        table::Table,
        ui::{
            resolve::{ReverseLookup, Services},
            rows::{SortKey, select},
        },
    };

    fn entry(src: &str, sport: u16, dst: &str, l4: u8, timeout: u32) -> Conntrack {
        Conntrack {
            timeout: Some(timeout),
            status: Some(ips::CONFIRMED | ips::SEEN_REPLY),
            proto_state: (l4 == proto::TCP).then_some(ProtoState::Tcp(3)),
            counters_orig: Some(Counters {
                packets: 1,
                bytes: 9000,
            }),
            ..flow(src, dst, l4, sport, 80)
        }
    }

    fn table() -> Table {
        let mut t = Table::new();
        let now = Instant::now();
        for ct in [
            entry("10.0.0.2", 1000, "10.9.0.1", proto::TCP, 300),
            entry("10.0.0.1", 2000, "10.9.0.2", proto::UDP, 20),
            entry("10.0.0.3", 3000, "10.9.0.3", proto::TCP, 3700),
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
    fn text_filter_and_once_layout() {
        let t = table();
        let mut v = view(SortKey::Src, false);
        v.text = "udp".into();
        let (rows, total) = select(t.entries(), &v, usize::MAX);
        assert_eq!(total, 1);
        let mut out = String::new();
        write_once(&mut out, &rows, &v, true, total, None);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "ctscope top -- Sort by: SrcIP -- 1 of 1 entries");
        assert!(lines[1].starts_with("Source"), "{out}");
        assert!(lines[2].starts_with("10.0.0.1:2000  10.9.0.2:80"), "{out}");
        assert!(lines[2].contains(" udp "), "{out}");
        assert!(lines[2].contains("0:00:20"), "{out}");
        assert!(!out.lines().any(|l| l.ends_with(' ')));
    }

    #[test]
    fn totals_line_under_the_header() {
        let t = table();
        let v = View {
            filter: crate::filter::Filter {
                l4proto: Some(proto::TCP),
                ..Default::default()
            },
            ..View::default()
        };
        let (rows, total) = select(t.entries(), &v, usize::MAX);
        let totals = Totals::count(t.entries(), total);
        let mut out = String::new();
        write_once(&mut out, &rows, &v, false, total, Some(&totals));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[1],
            "Total States: 3 -- TCP: 2 UDP: 1 ICMP: 0 Other: 0 (Filtered: 1)"
        );
        assert!(lines[2].starts_with("Source"), "{out}");
        assert_eq!(lines.len(), 5, "{out}");
    }

    /// Names of 10.0.0.x only.
    struct Tens;

    impl ReverseLookup for Tens {
        fn name(&self, addr: IpAddr) -> Option<String> {
            match addr {
                IpAddr::V4(a) if a.octets()[..3] == [10, 0, 0] => {
                    Some(format!("host-{}.tëst", a.octets()[3]))
                }
                _ => None,
            }
        }
    }

    fn http() -> Services {
        Services::parse("http 80/tcp\n")
    }

    #[test]
    fn lookup_names_the_rows_before_printing() {
        let t = table();
        let mut v = view(SortKey::Src, false);
        let (rows, total) = select(t.entries(), &v, usize::MAX);
        let deadline = Instant::now() + Duration::from_secs(10);
        look_up(&mut v, &rows, |l| Resolver::new(Tens, l, http), 2, deadline);
        let names = v.names.clone().expect("names");
        assert_eq!(names.hosts.len(), 3, "{:?}", names.hosts);
        assert!(Arc::strong_count(&names.hosts) >= 1);
        let mut out = String::new();
        write_once(&mut out, &rows, &v, false, total, None);
        let lines: Vec<&str> = out.lines().collect();
        // Sorted by address still; names where found, the service of
        // TCP port 80, the address where there is no name.
        assert!(
            lines[2].starts_with("host-1.tëst:2000  10.9.0.2:80 "),
            "{out}"
        );
        assert!(
            lines[3].starts_with("host-2.tëst:1000  10.9.0.1:http "),
            "{out}"
        );
        // Columns stay aligned with a name that is not ASCII.
        let col = |l: &str, prt: &str| l.find(prt).map(|b| l[..b].chars().count());
        assert_eq!(col(lines[2], " udp "), col(lines[3], " tcp "), "{out}");
    }
}
