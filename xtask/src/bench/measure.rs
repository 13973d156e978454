//! Measuring one child: wall time, CPU and peak RSS from wait4(2), and the
//! spread of a set of runs.
use std::{
    cmp::Ordering,
    fs::{self, File},
    io,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// What one run of a command cost.
#[derive(Clone, Copy, Debug)]
pub(super) struct Sample {
    pub(super) wall: Duration,
    pub(super) user: Duration,
    pub(super) sys: Duration,
    /// ru_maxrss: peak resident set, KiB.
    pub(super) max_rss_kib: u64,
}

/// What one run produced.
pub(super) struct Outcome {
    pub(super) sample: Sample,
    /// Newlines on stdout, when asked to count them.
    pub(super) lines: Option<u64>,
}

/// How a command's stdout is handled.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Stdout {
    /// To /dev/null (the timed runs).
    Null,
    /// Piped back and its lines counted (the check runs).
    CountLines,
}

/// Runs `cmd` to the end, timing it with wait4(2): wall clock from spawn to
/// reaping, user and system CPU and peak RSS of that child alone. Its stderr
/// goes to `stderr_path` and is quoted if it fails.
pub(super) fn measure(cmd: &mut Command, stdout: Stdout, stderr_path: &Path) -> Result<Outcome> {
    let stderr = File::create(stderr_path)
        .with_context(|| format!("cannot create {}", stderr_path.display()))?;
    cmd.stdin(Stdio::null())
        .stderr(stderr)
        .stdout(match stdout {
            Stdout::Null => Stdio::null(),
            Stdout::CountLines => Stdio::piped(),
        });
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let counted = child.stdout.take().map(count_lines);
    let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
    let exit = wait_child(pid, 0)
        .context("wait4")?
        .context("wait4 returned before the child exited")?;
    let wall = start.elapsed();
    let lines = counted.transpose().context("reading the child's stdout")?;
    if !exit.success() {
        let text = fs::read_to_string(stderr_path).unwrap_or_default();
        let tail: String = text
            .chars()
            .rev()
            .take(2000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        bail!("{cmd:?} failed ({}): {}", exit.describe(), tail.trim());
    }
    Ok(Outcome {
        sample: Sample {
            wall,
            user: exit.user,
            sys: exit.sys,
            max_rss_kib: exit.max_rss_kib,
        },
        lines,
    })
}

/// How a reaped child ended and what it used, from wait4(2).
#[derive(Clone, Copy, Debug)]
pub(super) struct Exited {
    status: libc::c_int,
    /// ru_utime.
    user: Duration,
    /// ru_stime.
    sys: Duration,
    /// ru_maxrss: peak resident set, KiB.
    max_rss_kib: u64,
}

impl Exited {
    /// Exited on its own with status 0.
    fn success(self) -> bool {
        libc::WIFEXITED(self.status) && libc::WEXITSTATUS(self.status) == 0
    }

    /// "exit status N" or "killed by signal N".
    pub(super) fn describe(self) -> String {
        if libc::WIFSIGNALED(self.status) {
            format!("killed by signal {}", libc::WTERMSIG(self.status))
        } else {
            format!("exit status {}", libc::WEXITSTATUS(self.status))
        }
    }

    /// User plus system CPU time.
    pub(super) fn cpu(self) -> Duration {
        self.user + self.sys
    }
}

/// wait4(2) on our child `pid`: how it ended and what it used once it has
/// exited; `None` while it runs (with `WNOHANG`).
pub(super) fn wait_child(pid: libc::pid_t, flags: libc::c_int) -> io::Result<Option<Exited>> {
    // SAFETY: plain C struct, all-zero is valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: pid is our unreaped child; status and usage are writable.
        let r = unsafe { libc::wait4(pid, &mut status, flags, &mut usage) };
        if r == pid {
            let tv = |t: libc::timeval| {
                Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
                    + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
            };
            return Ok(Some(Exited {
                status,
                user: tv(usage.ru_utime),
                sys: tv(usage.ru_stime),
                max_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
            }));
        }
        if r == 0 {
            return Ok(None);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// Newlines read from `pipe` to its end.
pub(super) fn count_lines(mut pipe: impl io::Read) -> io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut lines = 0u64;
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) => return Ok(lines),
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
    }
}

/// Median, min and max of a set of durations.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Spread {
    pub(super) median: Duration,
    pub(super) min: Duration,
    pub(super) max: Duration,
}

impl Spread {
    /// `None` when there are no values.
    pub(super) fn of(values: impl IntoIterator<Item = Duration>) -> Option<Self> {
        let (median, min, max) =
            median_min_max(values.into_iter().collect(), Ord::cmp, |a, b| (a + b) / 2)?;
        Some(Self { median, min, max })
    }
}

/// Median, min and max of numbers.
pub(super) fn spread_f64(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64, f64)> {
    median_min_max(values.into_iter().collect(), f64::total_cmp, |a, b| {
        (a + b) / 2.0
    })
}

/// Median, min and max of `v` in the order `cmp`; an even count's median is
/// `midpoint` of the middle two.
fn median_min_max<T: Copy>(
    mut v: Vec<T>,
    cmp: impl FnMut(&T, &T) -> Ordering,
    midpoint: impl Fn(T, T) -> T,
) -> Option<(T, T, T)> {
    v.sort_unstable_by(cmp);
    let (first, last) = (*v.first()?, *v.last()?);
    let mid = v.len() / 2;
    let median = if v.len().is_multiple_of(2) {
        midpoint(v[mid - 1], v[mid])
    } else {
        v[mid]
    };
    Some((median, first, last))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::percent;

    #[test]
    fn spread_of_odd_and_even() {
        let ms = Duration::from_millis;
        let s = Spread::of([ms(5), ms(1), ms(3)]).expect("non-empty");
        assert_eq!((s.median, s.min, s.max), (ms(3), ms(1), ms(5)));
        let s = Spread::of([ms(4), ms(1), ms(2), ms(8)]).expect("non-empty");
        assert_eq!((s.median, s.min, s.max), (ms(3), ms(1), ms(8)));
        assert!(Spread::of([]).is_none());
    }

    #[test]
    fn spread_of_numbers() {
        assert_eq!(spread_f64([3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(spread_f64([4.0, 1.0]), Some((2.5, 1.0, 4.0)));
        assert_eq!(spread_f64([]), None);
        assert_eq!(percent(1, 0), 0.0);
        assert!((percent(999, 1000) - 99.9).abs() < 1e-9);
    }

    #[test]
    fn lines_are_counted_across_reads() {
        let data = "a\nb\n\nc".as_bytes();
        assert_eq!(count_lines(data).expect("reads"), 3);
    }
}
