//! The usual `process_*` figures of the ctscope process itself, read from
//! /proc/self as the Go and Python clients do (prometheus-client has none).
use std::fs;

/// CPU time, memory, file descriptors and start time of this process.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Resident set size, bytes.
    pub resident_bytes: u64,
    /// Virtual memory size, bytes.
    pub virtual_bytes: u64,
    /// Start time, seconds since the epoch.
    pub start_time_seconds: f64,
    /// Threads.
    pub threads: u64,
    /// Open file descriptors.
    pub open_fds: Option<u64>,
    /// The soft limit on file descriptors.
    pub max_fds: Option<u64>,
}

/// The fields of /proc/PID/stat used here, from the text after the
/// command name (which may itself hold spaces and parentheses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StatFields {
    utime: u64,
    stime: u64,
    threads: u64,
    starttime: u64,
    vsize: u64,
    rss_pages: u64,
}

fn parse_stat(text: &str) -> Option<StatFields> {
    // Fields 3.. follow the last ')'; field N is at index N - 3.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |field: usize| f.get(field - 3)?.parse::<u64>().ok();
    Some(StatFields {
        utime: num(14)?,
        stime: num(15)?,
        threads: num(20)?,
        starttime: num(22)?,
        vsize: num(23)?,
        // rss is signed in the kernel's format; negative never happens
        // for a live process, and reads as absent here.
        rss_pages: num(24)?,
    })
}

/// The boot time (`btime`) from /proc/stat's text.
fn parse_btime(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn sysconf(name: libc::c_int) -> Option<u64> {
    // SAFETY: sysconf only reads its argument.
    let v = unsafe { libc::sysconf(name) };
    u64::try_from(v).ok().filter(|v| *v > 0)
}

impl ProcessStats {
    /// Reads this process's figures; `None` when /proc is not there.
    pub fn read() -> Option<Self> {
        let stat = parse_stat(&fs::read_to_string("/proc/self/stat").ok()?)?;
        let ticks = sysconf(libc::_SC_CLK_TCK).unwrap_or(100) as f64;
        let page = sysconf(libc::_SC_PAGESIZE).unwrap_or(4096);
        let btime = fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|t| parse_btime(&t))
            .unwrap_or(0);
        let open_fds = fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as u64);
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into `limit`.
        let max_fds = (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0)
            .then_some(limit.rlim_cur);
        Some(Self {
            cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
            resident_bytes: stat.rss_pages.saturating_mul(page),
            virtual_bytes: stat.vsize,
            start_time_seconds: btime as f64 + stat.starttime as f64 / ticks,
            threads: stat.threads,
            open_fds,
            max_fds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_command_names() {
        let line = "4242 (ct (scope) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 \
                    150 25 0 0 20 0 3 0 12345 104857600 2560 18446744073709551615 \
                    1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let f = parse_stat(line).expect("parses");
        assert_eq!(
            f,
            StatFields {
                utime: 150,
                stime: 25,
                threads: 3,
                starttime: 12345,
                vsize: 104_857_600,
                rss_pages: 2560,
            }
        );
        assert_eq!(parse_stat("4242 (cut"), None);
        assert_eq!(parse_stat("4242 (x) S 1 2"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn btime_and_this_process() {
        assert_eq!(
            parse_btime("cpu 1 2\nbtime 1700000000\nprocesses 9\n"),
            Some(1_700_000_000)
        );
        assert_eq!(parse_btime("cpu 1 2\n"), None);
        let me = ProcessStats::read().expect("/proc/self/stat");
        assert!(me.resident_bytes > 0 && me.threads >= 1, "{me:?}");
        assert!(me.open_fds.is_some_and(|n| n >= 3));
        assert!(me.start_time_seconds > 1_000_000_000.0);
    }
}
