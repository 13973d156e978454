//! Native (exponential) histograms, as Prometheus's protobuf format carries
//! them: a schema, a zero bucket, and the populated buckets as spans of
//! consecutive indexes with count deltas. Only the bucket layout is worked
//! out here; prometheus-client writes the message.
//!
//! Bucket `i` of schema `s` holds the values in
//! `(2^((i-1)/2^s), 2^(i/2^s)]`; schema 3 gives 8 buckets per doubling
//! (about 9 % wide, finer than any classic layout and coarser than
//! hdrhistogram's 3 significant digits, so nothing is lost in the mapping).
use std::collections::BTreeMap;

use hdrhistogram::Histogram;

/// The schema of every native histogram ctscope serves.
pub const SCHEMA: i32 = 3;
/// The zero bucket's width (client_golang's default, 2^-128): only a value
/// recorded as 0 falls in it. Non-zero also tells Prometheus the histogram
/// is native when it has no observation yet.
pub const ZERO_THRESHOLD: f64 = 2.938_735_877_055_719e-39;

/// The upper bound of bucket `index`.
pub fn upper_bound(index: i32) -> f64 {
    (f64::from(index) / f64::from(1 << SCHEMA)).exp2()
}

/// The bucket holding `value` (> 0).
pub fn index_of(value: f64) -> i32 {
    let mut i = (value.log2() * f64::from(1 << SCHEMA)).ceil() as i32;
    // log2 rounds: settle the edges against the bounds themselves.
    while upper_bound(i) < value {
        i += 1;
    }
    while upper_bound(i - 1) >= value {
        i -= 1;
    }
    i
}

/// A native histogram's buckets.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Native {
    /// Observations in the zero bucket.
    pub zero_count: u64,
    /// Runs of consecutive populated buckets: `(offset from the previous
    /// run's end, or the first index, length)`.
    pub spans: Vec<(i32, u32)>,
    /// Bucket counts in span order, each as the difference from the one
    /// before (the first from 0).
    pub deltas: Vec<i64>,
}

impl Native {
    /// The buckets of an hdrhistogram whose values are in units of `unit`
    /// seconds; a value counts where its lowest equivalent falls, as in the
    /// classic buckets.
    pub fn from_hdr(h: &Histogram<u64>, unit: f64) -> Self {
        let mut counts = BTreeMap::<i32, u64>::new();
        let mut zero_count = 0;
        for v in h.iter_recorded() {
            let secs = h.lowest_equivalent(v.value_iterated_to()) as f64 * unit;
            let n = v.count_at_value();
            if secs <= ZERO_THRESHOLD {
                zero_count += n;
            } else {
                *counts.entry(index_of(secs)).or_default() += n;
            }
        }
        Self::from_counts(zero_count, counts)
    }

    /// Spans and deltas of populated buckets, by index.
    fn from_counts(zero_count: u64, counts: BTreeMap<i32, u64>) -> Self {
        let mut spans: Vec<(i32, u32)> = Vec::new();
        let mut deltas = Vec::with_capacity(counts.len());
        let (mut next, mut previous) = (None::<i32>, 0i64);
        for (index, count) in counts {
            match (next, spans.last_mut()) {
                (Some(n), Some(last)) if n == index => last.1 += 1,
                (Some(n), _) => spans.push((index - n, 1)),
                (None, _) => spans.push((index, 1)),
            }
            next = Some(index + 1);
            let count = i64::try_from(count).unwrap_or(i64::MAX);
            deltas.push(count - previous);
            previous = count;
        }
        Self {
            zero_count,
            spans,
            deltas,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(index, count)` of every populated bucket, read back from spans and
    /// deltas as Prometheus does.
    fn expand(n: &Native) -> Vec<(i32, i64)> {
        let mut out = Vec::new();
        let (mut index, mut count) = (0i32, 0i64);
        let mut deltas = n.deltas.iter();
        for (offset, len) in &n.spans {
            index += offset;
            for _ in 0..*len {
                count += deltas.next().expect("a delta per bucket");
                out.push((index, count));
                index += 1;
            }
        }
        assert!(deltas.next().is_none(), "a delta left over");
        out
    }

    #[test]
    fn every_value_lies_within_its_bucket() {
        for value in [
            1e-9,
            2.5e-6,
            0.001,
            0.5,
            1.0,
            1.0 + 1e-12,
            2.0,
            3.0,
            300.0,
            432000.0,
        ] {
            let i = index_of(value);
            assert!(
                upper_bound(i - 1) < value && value <= upper_bound(i),
                "{value} in bucket {i}: ({}, {}]",
                upper_bound(i - 1),
                upper_bound(i)
            );
        }
        // Powers of two are upper bounds: 1 is bucket 0, 2 bucket 8.
        assert_eq!(index_of(1.0), 0);
        assert_eq!(index_of(2.0), 8);
        assert_eq!(index_of(0.5), -8);
    }

    #[test]
    fn spans_and_deltas_give_back_the_counts() {
        let mut h = Histogram::<u64>::new(3).expect("histogram");
        // In ms: 0 (zero bucket), a run of neighbours, a gap, a far value.
        for (ms, n) in [(0, 2), (1000, 5), (1100, 3), (1200, 1), (60_000, 4)] {
            h.record_n(ms, n).expect("record");
        }
        let native = Native::from_hdr(&h, 1e-3);
        assert_eq!(native.zero_count, 2);
        // Brute force: each value's bucket by walking the bounds up.
        let mut want = BTreeMap::<i32, i64>::new();
        for (secs, n) in [(1.0, 5), (1.1, 3), (1.2, 1), (60.0, 4)] {
            let mut i = -200;
            while upper_bound(i) < secs {
                i += 1;
            }
            *want.entry(i).or_default() += n;
        }
        assert_eq!(expand(&native), want.into_iter().collect::<Vec<_>>());
        // 1.0, 1.1 and 1.2 s are buckets 0, 2 and 3: two spans there.
        assert_eq!(&native.spans[..2], &[(0, 1), (1, 2)]);
    }

    #[test]
    fn an_empty_histogram_has_no_buckets() {
        let h = Histogram::<u64>::new(3).expect("histogram");
        assert_eq!(Native::from_hdr(&h, 1e-9), Native::default());
    }
}
