//! Measuring one child: wall time, CPU and peak RSS from wait4(2), and the
//! spread of a set of runs.
use std::{
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
    // SAFETY: plain C structs, all-zero is valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: pid is our unreaped child; status and usage are writable.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err).context("wait4");
        }
    }
    let wall = start.elapsed();
    let lines = counted.transpose().context("reading the child's stdout")?;
    let exited_ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    if !exited_ok {
        let text = fs::read_to_string(stderr_path).unwrap_or_default();
        let tail: String = text
            .chars()
            .rev()
            .take(2000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let how = if libc::WIFSIGNALED(status) {
            format!("killed by signal {}", libc::WTERMSIG(status))
        } else {
            format!("exit status {}", libc::WEXITSTATUS(status))
        };
        bail!("{cmd:?} failed ({how}): {}", tail.trim());
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    Ok(Outcome {
        sample: Sample {
            wall,
            user: tv(usage.ru_utime),
            sys: tv(usage.ru_stime),
            max_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
        },
        lines,
    })
}

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
    pub(super) fn of(values: impl IntoIterator<Item = Duration>) -> Option<Self> {
        let mut v: Vec<Duration> = values.into_iter().collect();
        v.sort_unstable();
        let (first, last) = (*v.first()?, *v.last()?);
        let mid = v.len() / 2;
        let median = if !v.len().is_multiple_of(2) {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2
        };
        Some(Self {
            median,
            min: first,
            max: last,
        })
    }
}

/// Median, min and max of numbers.
pub(super) fn spread_f64(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = values.into_iter().collect();
    v.sort_unstable_by(f64::total_cmp);
    let (first, last) = (*v.first()?, *v.last()?);
    let mid = v.len() / 2;
    let median = if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
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
