//! `profile -o hgrm`: each histogram in HdrHistogram's classic
//! percentile-distribution text, the `Value Percentile TotalCount
//! 1/(1-Percentile)` table with its `#[Mean ...]` footer that HdrHistogram
//! plotters (the project's plotFiles.html, hdr-plot, wrk2 tooling) read.
//!
//! The hdrhistogram crate (7.6) gives the percentile iteration the table is
//! made of ([`Histogram::iter_quantiles`], the same walk as Java's
//! `PercentileIterator`) but no printer of the text: only its `cli` example
//! prints something like it, with a different header and an extra column.
//! So the lines are written here, field for field as Java's
//! `AbstractHistogram.outputPercentileDistribution(out, 5, 1.0)` writes them.
use std::fmt::Write as _;

use hdrhistogram::Histogram;

use super::NamedHistogram;

/// Percentile ticks per half distance: Java's usual 5.
const TICKS_PER_HALF_DISTANCE: u32 = 5;

/// One histogram's percentile distribution, as Java's
/// `outputPercentileDistribution` prints it with a value scale of 1.
pub fn distribution(h: &Histogram<u64>, out: &mut String) {
    let digits = usize::from(h.sigfig());
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    for v in h.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
        total += v.count_since_last_iteration();
        let value = v.value_iterated_to() as f64;
        let level = v.quantile_iterated_to();
        if level < 1.0 {
            let _ = writeln!(
                out,
                "{value:12.digits$} {level:2.12} {total:10} {:14.2}",
                1.0 / (1.0 - level)
            );
        } else {
            // Java's last line (100 %) has no 1/(1-Percentile).
            let _ = writeln!(out, "{value:12.digits$} {level:2.12} {total:10}");
        }
    }
    let (mean, stdev) = if h.is_empty() {
        (0.0, 0.0)
    } else {
        (h.mean(), h.stdev())
    };
    let _ = writeln!(
        out,
        "#[Mean    = {mean:12.digits$}, StdDeviation   = {stdev:12.digits$}]"
    );
    let _ = writeln!(
        out,
        "#[Max     = {:12.digits$}, Total count    = {:12}]",
        h.max() as f64,
        h.len()
    );
    // The crate keeps (buckets + 1) half-buckets of sub-buckets
    // (`counts.len()`); Java prints the full sub-bucket count.
    let sub_buckets = h.distinct_values() * 2 / (usize::from(h.buckets()) + 1);
    let _ = writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {sub_buckets:12}]",
        h.buckets()
    );
}

/// Every histogram of the run, each as a `# NAME (UNIT)` comment line, a
/// blank line and its distribution, separated by blank lines. Plotters skip
/// `#` lines; README shows an awk line that writes one histogram to a file.
pub fn hgrm(histograms: &[NamedHistogram<'_>]) -> String {
    let mut out = String::new();
    for (i, n) in histograms.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let _ = writeln!(out, "# {} ({})\n", n.name, n.unit);
        distribution(n.histogram, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(text: &str) -> Vec<Vec<f64>> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .skip(1)
            .map(|l| {
                l.split_whitespace()
                    .map(|c| c.parse().expect("number"))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn java_layout_for_one_to_a_hundred() {
        let mut h = Histogram::<u64>::new(3).expect("histogram");
        for v in 1..=100 {
            h.record(v).expect("record");
        }
        let mut text = String::new();
        distribution(&h, &mut text);
        let lines: Vec<&str> = text.lines().collect();
        // Java: "%12s %14s %10s %14s\n\n" then "%12.3f %2.12f %10d %14.2f".
        assert_eq!(
            lines[0],
            "       Value     Percentile TotalCount 1/(1-Percentile)"
        );
        assert_eq!(lines[1], "");
        assert_eq!(
            lines[2],
            "       1.000 0.000000000000          1           1.00"
        );
        let rows = rows(&text);
        let median = rows.iter().find(|r| r[1] == 0.5).expect("a 50 % row");
        assert_eq!(median[0], 50.0);
        assert_eq!(median[2], 50.0);
        assert_eq!(median[3], 2.0);
        let last = rows.last().expect("rows");
        assert_eq!(last.len(), 3, "the 100 % row has no 1/(1-p): {text}");
        assert_eq!(last[..], [100.0, 1.0, 100.0]);
        // Levels and counts only grow.
        assert!(
            rows.windows(2)
                .all(|w| w[0][1] <= w[1][1] && w[0][2] <= w[1][2])
        );
        let footer: Vec<&str> = lines.iter().rev().take(3).rev().copied().collect();
        assert_eq!(
            footer[0],
            "#[Mean    =       50.500, StdDeviation   =       28.866]"
        );
        assert_eq!(
            footer[1],
            "#[Max     =      100.000, Total count    =          100]"
        );
        assert!(
            footer[2].starts_with("#[Buckets = ")
                && footer[2].ends_with("SubBuckets     =         2048]"),
            "{}",
            footer[2]
        );
    }

    #[test]
    fn empty_histogram_has_header_and_footer_only() {
        let h = Histogram::<u64>::new(3).expect("histogram");
        let mut text = String::new();
        distribution(&h, &mut text);
        assert!(rows(&text).is_empty(), "{text}");
        assert!(text.contains("Total count    =            0]"), "{text}");
        assert!(!text.contains("NaN"), "{text}");
    }

    #[test]
    fn sections_are_named() {
        let mut a = Histogram::<u64>::new(3).expect("histogram");
        a.record(7).expect("record");
        let b = Histogram::<u64>::new(3).expect("histogram");
        let text = hgrm(&[
            NamedHistogram {
                name: "lifetime_ms/udp".into(),
                unit: "ms",
                histogram: &a,
            },
            NamedHistogram {
                name: "tcp_setup_us".into(),
                unit: "us",
                histogram: &b,
            },
        ]);
        assert!(
            text.starts_with("# lifetime_ms/udp (ms)\n\n       Value"),
            "{text}"
        );
        assert!(text.contains("\n\n# tcp_setup_us (us)\n\n"), "{text}");
    }
}
