//! The run over time, for `profile --html`: one reading a second of the
//! NEW and DESTROY counts so far and of the table's size against
//! nf_conntrack_max.
use std::time::Duration;

/// One reading.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Seconds into the run.
    pub secs: f64,
    /// NEW events so far.
    pub new: u64,
    /// DESTROY events so far.
    pub destroy: u64,
    /// Entries in the table.
    pub entries: u64,
    /// nf_conntrack_max then (None if it could not be read).
    pub max: Option<u64>,
}

/// The readings of a run, one a second (and one at its end).
#[derive(Clone, Debug, Default)]
pub struct Timeline {
    samples: Vec<Sample>,
    next: Duration,
}

/// NEW and DESTROY per second over one interval between readings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Seconds into the run at the interval's end.
    pub secs: f64,
    /// NEW per second.
    pub new: f64,
    /// DESTROY per second.
    pub destroy: f64,
}

impl Timeline {
    /// Whether a reading is due at `elapsed` (the first at once, then
    /// one each whole second).
    pub fn due(&self, elapsed: Duration) -> bool {
        elapsed >= self.next
    }

    /// Records a reading taken at `elapsed`.
    pub fn record(&mut self, elapsed: Duration, mut sample: Sample) {
        sample.secs = elapsed.as_secs_f64();
        self.samples.push(sample);
        self.next = Duration::from_secs(elapsed.as_secs() + 1);
    }

    /// The readings, oldest first.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// The rates between consecutive readings.
    pub fn rates(&self) -> Vec<Rate> {
        self.samples
            .windows(2)
            .filter_map(|w| {
                let dt = w[1].secs - w[0].secs;
                (dt > 0.0).then(|| Rate {
                    secs: w[1].secs,
                    new: w[1].new.saturating_sub(w[0].new) as f64 / dt,
                    destroy: w[1].destroy.saturating_sub(w[0].destroy) as f64 / dt,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(new: u64, destroy: u64) -> Sample {
        Sample {
            secs: 0.0,
            new,
            destroy,
            entries: new - destroy,
            max: Some(100),
        }
    }

    #[test]
    fn one_reading_a_second_and_rates_between() {
        let mut t = Timeline::default();
        let ms = Duration::from_millis;
        assert!(t.due(ms(0)));
        t.record(ms(0), at(0, 0));
        assert!(!t.due(ms(900)));
        assert!(t.due(ms(1000)));
        t.record(ms(1000), at(10, 2));
        // Late by 200 ms: the next is still due at 2 s, not at 2.2 s.
        t.record(ms(2200), at(22, 2));
        assert!(t.due(ms(3000)));
        // The end of the run, half a second later.
        t.record(ms(2700), at(22, 12));
        let rates = t.rates();
        assert_eq!(rates.len(), 3);
        assert_eq!(
            rates[0],
            Rate {
                secs: 1.0,
                new: 10.0,
                destroy: 2.0
            }
        );
        assert!((rates[1].new - 10.0).abs() < 1e-9, "{rates:?}");
        assert!((rates[2].destroy - 20.0).abs() < 1e-9, "{rates:?}");
        assert_eq!(t.samples()[3].entries, 10);
    }
}
