//! The progress line of a running `profile`: one stderr line, rewritten in
//! place, shown only when stderr is a terminal so that scripts and
//! `-o json` get nothing but the report.
use std::{
    io::{self, IsTerminal, Write},
    time::{Duration, Instant},
};

/// How often the line is rewritten: often enough to look alive, seldom
/// enough to cost nothing next to the events.
const EVERY: Duration = Duration::from_millis(250);

/// Erases the terminal line the cursor is on and returns to its start.
const ERASE_LINE: &str = "\r\x1b[2K";

/// The progress line, or nothing when stderr is not a terminal.
#[derive(Debug)]
pub struct Progress {
    on: bool,
    total: Option<Duration>,
    last: Option<Instant>,
}

/// What the line shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts {
    /// NEW events so far.
    pub new: u64,
    /// DESTROY events so far.
    pub destroy: u64,
    /// Events lost so far.
    pub lost: u64,
}

impl Progress {
    /// A progress line for a run of `total` (`None`: no end), drawn only if
    /// stderr is a terminal.
    pub fn new(total: Option<Duration>) -> Self {
        Self {
            on: io::stderr().is_terminal(),
            total,
            last: None,
        }
    }

    /// Rewrites the line if the last one is older than [`EVERY`].
    pub fn tick(&mut self, now: Instant, elapsed: Duration, counts: Counts) {
        if !self.on || self.last.is_some_and(|t| now.duration_since(t) < EVERY) {
            return;
        }
        self.last = Some(now);
        let mut err = io::stderr().lock();
        // A closed or full stderr must not end the run: the report matters.
        let _ = write!(err, "{ERASE_LINE}{}", line(elapsed, self.total, counts));
        let _ = err.flush();
    }

    /// Erases the line, before the report (which may go to the same
    /// terminal) is written.
    pub fn clear(&mut self) {
        if self.on && self.last.is_some() {
            let mut err = io::stderr().lock();
            let _ = write!(err, "{ERASE_LINE}");
            let _ = err.flush();
        }
    }
}

/// The text of the line, e.g. `profile: 12/60 s  NEW 1234  DESTROY 1200
/// lost 0`.
pub fn line(elapsed: Duration, total: Option<Duration>, c: Counts) -> String {
    let total = total.map_or(String::new(), |t| format!("/{}", t.as_secs_f64().ceil()));
    format!(
        "profile: {}{total} s  NEW {}  DESTROY {}  lost {}",
        elapsed.as_secs(),
        c.new,
        c.destroy,
        c.lost
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_shows_elapsed_of_total_and_the_counts() {
        let c = Counts {
            new: 1234,
            destroy: 1200,
            lost: 3,
        };
        assert_eq!(
            line(
                Duration::from_millis(12_900),
                Some(Duration::from_secs(60)),
                c
            ),
            "profile: 12/60 s  NEW 1234  DESTROY 1200  lost 3"
        );
        // A fractional --duration shows its whole seconds, rounded up.
        assert_eq!(
            line(Duration::ZERO, Some(Duration::from_millis(2500)), c),
            "profile: 0/3 s  NEW 1234  DESTROY 1200  lost 3"
        );
        assert_eq!(
            line(Duration::from_secs(5), None, c),
            "profile: 5 s  NEW 1234  DESTROY 1200  lost 3"
        );
    }
}
