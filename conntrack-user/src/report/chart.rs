//! Histograms drawn as text: counts in log-spaced buckets (1, 2, 5, 10,
//! 20, 50...) as Unicode block bars, one line a bucket, for `profile`'s
//! text report.
use hdrhistogram::Histogram;

/// Bars of the largest bucket are this many cells wide.
pub const BAR_WIDTH: usize = 40;

/// Eighths of a cell, the last cell of a bar (index = eighths).
const PARTIAL: [char; 8] = [' ', '▏', '▎', '▍', '▌', '▋', '▊', '▉'];

/// One log-spaced bucket: the samples with values in `[lo, hi)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bucket {
    /// Lowest value in the bucket.
    pub lo: u64,
    /// First value past the bucket.
    pub hi: u64,
    /// Samples in it.
    pub count: u64,
}

/// The 1-2-5 bound after `v`: 1, 2, 5, 10, 20, 50, 100...
fn next_bound(v: u64) -> u64 {
    let mut decade = 1u64;
    while let Some(next) = decade.checked_mul(10)
        && next <= v
    {
        decade = next;
    }
    match v / decade {
        0 | 1 => decade.saturating_mul(2),
        2..=4 => decade.saturating_mul(5),
        _ => decade.saturating_mul(10),
    }
}

/// The 1-2-5 bucket holding `v`: (lo, hi); 0 goes in [0, 1).
fn bucket_of(v: u64) -> (u64, u64) {
    if v == 0 {
        return (0, 1);
    }
    let mut lo = 1;
    loop {
        let hi = next_bound(lo);
        if v < hi || hi == lo {
            return (lo, hi);
        }
        lo = hi;
    }
}

/// A histogram's counts in 1-2-5 buckets, from the first non-empty bucket
/// to the last (empty ones between them kept, so the gaps show).
pub fn buckets(h: &Histogram<u64>) -> Vec<Bucket> {
    let mut out: Vec<Bucket> = Vec::new();
    for v in h.iter_recorded() {
        // A value stands for its HdrHistogram bucket; its lowest value
        // decides the 1-2-5 bucket (within the histogram's 0.1 %).
        let (lo, hi) = bucket_of(h.lowest_equivalent(v.value_iterated_to()));
        while out.last().is_some_and(|b| b.hi <= lo) {
            let from = out.last().map_or(lo, |b| b.hi);
            out.push(Bucket {
                lo: from,
                hi: next_bound(from),
                count: 0,
            });
        }
        match out.last_mut() {
            Some(b) if b.lo == lo => b.count += v.count_at_value(),
            _ => out.push(Bucket {
                lo,
                hi,
                count: v.count_at_value(),
            }),
        }
    }
    out
}

/// A value with its unit, in the largest unit that keeps it whole: 500
/// ms, 2 s, 50 us.
pub fn label(v: u64, unit: &str) -> String {
    const LADDER: [&str; 4] = ["ns", "us", "ms", "s"];
    let Some(mut i) = LADDER.iter().position(|u| *u == unit) else {
        return format!("{v} {unit}");
    };
    let mut v = v;
    while i + 1 < LADDER.len() && v >= 1000 && v.is_multiple_of(1000) {
        v /= 1000;
        i += 1;
    }
    format!("{v} {}", LADDER[i])
}

/// A bar of `count` against `max` in `width` cells: whole blocks then one
/// partial block, at least an eighth for any sample at all.
pub fn bar(count: u64, max: u64, width: usize) -> String {
    if count == 0 || max == 0 {
        return String::new();
    }
    let eighths = (u128::from(count) * (width as u128) * 8)
        .div_ceil(u128::from(max))
        .max(1);
    let eighths = usize::try_from(eighths).unwrap_or(width * 8).min(width * 8);
    let mut s = "█".repeat(eighths / 8);
    if eighths % 8 > 0 {
        s.push(PARTIAL[eighths % 8]);
    }
    s
}

/// The chart's lines: `lo .. hi  bar  count`, each indented by `indent`.
pub fn lines(buckets: &[Bucket], unit: &str, indent: &str) -> Vec<String> {
    let max = buckets.iter().map(|b| b.count).max().unwrap_or(0);
    let labels: Vec<(String, String)> = buckets
        .iter()
        .map(|b| (label(b.lo, unit), label(b.hi, unit)))
        .collect();
    let lo_w = labels
        .iter()
        .map(|l| l.0.chars().count())
        .max()
        .unwrap_or(0);
    let hi_w = labels
        .iter()
        .map(|l| l.1.chars().count())
        .max()
        .unwrap_or(0);
    let count_w = max.to_string().len();
    buckets
        .iter()
        .zip(labels)
        .map(|(b, (lo, hi))| {
            format!(
                "{indent}{lo:>lo_w$} .. {hi:<hi_w$} {:<BAR_WIDTH$} {:>count_w$}",
                bar(b.count, max, BAR_WIDTH),
                b.count
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(values: &[(u64, u64)]) -> Histogram<u64> {
        let mut h = Histogram::<u64>::new(3).expect("histogram");
        for &(v, n) in values {
            h.record_n(v, n).expect("record");
        }
        h
    }

    #[test]
    fn bounds_go_one_two_five() {
        let mut v = 1;
        let mut seen = vec![v];
        for _ in 0..7 {
            v = next_bound(v);
            seen.push(v);
        }
        assert_eq!(seen, [1, 2, 5, 10, 20, 50, 100, 200]);
        assert_eq!(bucket_of(0), (0, 1));
        assert_eq!(bucket_of(1), (1, 2));
        assert_eq!(bucket_of(4), (2, 5));
        assert_eq!(bucket_of(5), (5, 10));
        assert_eq!(bucket_of(999), (500, 1000));
        assert_eq!(bucket_of(1000), (1000, 2000));
        // The top saturates instead of overflowing.
        assert!(bucket_of(u64::MAX).0 >= 10_000_000_000_000_000_000);
    }

    #[test]
    fn counts_fall_in_their_buckets_with_gaps_kept() {
        let h = hist(&[(3, 2), (4, 1), (60, 5), (70, 1), (1500, 4)]);
        let b = buckets(&h);
        let got: Vec<(u64, u64, u64)> = b.iter().map(|b| (b.lo, b.hi, b.count)).collect();
        assert_eq!(
            got,
            [
                (2, 5, 3),
                (5, 10, 0),
                (10, 20, 0),
                (20, 50, 0),
                (50, 100, 6),
                (100, 200, 0),
                (200, 500, 0),
                (500, 1000, 0),
                (1000, 2000, 4)
            ]
        );
        assert_eq!(b.iter().map(|b| b.count).sum::<u64>(), h.len());
        assert!(buckets(&hist(&[])).is_empty());
    }

    #[test]
    fn bars_scale_to_the_largest_in_eighths() {
        assert_eq!(bar(8, 8, 4), "████");
        assert_eq!(bar(4, 8, 4), "██");
        assert_eq!(bar(1, 8, 4), "▌");
        assert_eq!(bar(3, 8, 4), "█▌");
        // One sample among a million still shows.
        assert_eq!(bar(1, 1_000_000, 40), "▏");
        assert_eq!(bar(0, 8, 4), "");
        assert_eq!(bar(u64::MAX, u64::MAX, 40).chars().count(), 40);
    }

    #[test]
    fn labels_take_the_largest_whole_unit() {
        assert_eq!(label(500, "ms"), "500 ms");
        assert_eq!(label(2000, "ms"), "2 s");
        assert_eq!(label(20_000_000, "ns"), "20 ms");
        assert_eq!(label(5000, "s"), "5000 s");
        assert_eq!(label(1500, "us"), "1500 us");
    }

    #[test]
    fn lines_align_and_end_with_the_count() {
        let h = hist(&[(3, 2), (60, 18)]);
        let l = lines(&buckets(&h), "ms", "    ");
        assert_eq!(l.len(), 5);
        assert!(l[0].starts_with("     2 ms .. 5 ms   █"), "{l:?}");
        assert!(l[0].ends_with("  2"), "{l:?}");
        assert!(l[4].starts_with("    50 ms .. 100 ms "), "{l:?}");
        assert!(l[4].contains(&"█".repeat(BAR_WIDTH)), "{l:?}");
        assert!(l[4].ends_with(" 18"), "{l:?}");
        // Every count starts in the same column.
        let col: Vec<usize> = l.iter().map(|s| s.chars().count()).collect();
        assert!(col.windows(2).all(|w| w[0] == w[1]), "{l:?}");
    }
}
