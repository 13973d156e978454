//! The event listeners as running children: spawning, watching their
//! netlink subscriptions and output, stopping and reaping them.
use std::{
    fs::{self, File},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{DRAIN_CAP, EXIT_GRACE, NETLINK_NETFILTER, QUIET, SUBSCRIBE_TIMEOUT};
use crate::bench::{
    measure::{Exited, wait_child},
    netns::check_interrupted,
};

/// A listener running in the background, stdout and stderr to files. Killed
/// and reaped on drop if still running, so an error leaves nothing behind.
pub(super) struct Running {
    pid: libc::pid_t,
    pub(super) stdout: PathBuf,
    pub(super) stderr: PathBuf,
    exit: Option<Exited>,
}

impl Running {
    pub(super) fn spawn(cmd: &mut Command, stdout: PathBuf, stderr: PathBuf) -> Result<Self> {
        let out =
            File::create(&stdout).with_context(|| format!("cannot create {}", stdout.display()))?;
        let err =
            File::create(&stderr).with_context(|| format!("cannot create {}", stderr.display()))?;
        // The Child handle is dropped: the child has no pipes, and it is
        // reaped here with wait4 (for its rusage), not by std.
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start {cmd:?}"))?;
        Ok(Self {
            pid: libc::pid_t::try_from(child.id()).context("pid out of range")?,
            stdout,
            stderr,
            exit: None,
        })
    }

    /// Reaps the child if it has exited; true while it runs.
    pub(super) fn alive(&mut self) -> Result<bool> {
        if self.exit.is_none() {
            self.exit = wait_child(self.pid, libc::WNOHANG).context("wait4")?;
        }
        Ok(self.exit.is_none())
    }

    /// SIGINT (as Ctrl-C would), then reaps it; SIGKILL if it has not exited
    /// after [`EXIT_GRACE`].
    pub(super) fn interrupt(&mut self) -> Result<Exited> {
        if self.alive()? {
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(self.pid, libc::SIGINT) };
            let start = Instant::now();
            while self.alive()? {
                if start.elapsed() > EXIT_GRACE {
                    eprintln!(
                        "xtask: pid {} did not exit within {} s of SIGINT; killing it",
                        self.pid,
                        EXIT_GRACE.as_secs()
                    );
                    // SAFETY: as above.
                    unsafe { libc::kill(self.pid, libc::SIGKILL) };
                    self.exit = wait_child(self.pid, 0).context("wait4")?;
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.exit.context("the child was not reaped")
    }

    /// The last lines of its stderr, for an error message. Only used before
    /// a burst: during one, conntrack -E's stderr is a flood of ENOBUFS
    /// warnings.
    fn stderr_tail(&self) -> String {
        let text = fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(3)..].join(" / ")
    }

    fn output_len(&self) -> u64 {
        fs::metadata(&self.stdout).map_or(0, |m| m.len())
    }

    /// Packets the kernel dropped for want of room in the receive buffers
    /// of its sockets subscribed to `group` (sk_drops).
    pub(super) fn socket_drops(&self, group: u32) -> u64 {
        netfilter_sockets(self.pid)
            .iter()
            .filter(|s| s.groups & group != 0)
            .map(|s| s.drops)
            .sum()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.exit.is_none() {
            // SAFETY: kill(2) and wait4(2) on our own unreaped child.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            let _ = wait_child(self.pid, 0);
        }
    }
}

/// One row of /proc/net/netlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NetlinkRow {
    /// Eth: the netlink protocol.
    protocol: u32,
    /// Groups: the first 32 multicast groups joined, as a bitmask.
    groups: u32,
    /// Drops: sk_drops.
    drops: u64,
    inode: u64,
}

/// Parses /proc/net/netlink (`sk Eth Pid Groups Rmem Wmem Dump Locks Drops
/// Inode`); lines that do not parse are skipped.
fn parse_netlink_table(text: &str) -> Vec<NetlinkRow> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 {
                return None;
            }
            Some(NetlinkRow {
                protocol: cols[1].parse().ok()?,
                groups: u32::from_str_radix(cols[3], 16).ok()?,
                drops: cols[8].parse().ok()?,
                inode: cols[9].parse().ok()?,
            })
        })
        .collect()
}

/// The NETLINK_NETFILTER sockets of process `pid`: the rows of its
/// namespace's netlink table whose inode is one of its descriptors.
fn netfilter_sockets(pid: libc::pid_t) -> Vec<NetlinkRow> {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let inodes: Vec<u64> = fds
        .flatten()
        .filter_map(|fd| fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect();
    let table = fs::read_to_string(format!("/proc/{pid}/net/netlink")).unwrap_or_default();
    parse_netlink_table(&table)
        .into_iter()
        .filter(|row| row.protocol == NETLINK_NETFILTER && inodes.contains(&row.inode))
        .collect()
}

/// Waits until each listener has a netfilter socket in all of `groups`, so
/// none misses the start of the burst.
pub(super) fn wait_subscribed(running: &mut [Running], labels: &[&str], groups: u32) -> Result<()> {
    let start = Instant::now();
    loop {
        check_interrupted()?;
        let mut all = true;
        for (listener, label) in running.iter_mut().zip(labels) {
            if !listener.alive()? {
                let how = listener.exit.map(Exited::describe).unwrap_or_default();
                bail!(
                    "`{label}` exited before the burst ({how}): {}",
                    listener.stderr_tail()
                );
            }
            all &= netfilter_sockets(listener.pid)
                .iter()
                .any(|s| s.groups & groups == groups);
        }
        if all {
            return Ok(());
        }
        if start.elapsed() > SUBSCRIBE_TIMEOUT {
            bail!(
                "the event listeners did not all join netlink groups {groups:#x} within {} s",
                SUBSCRIBE_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until no listener's output has grown for [`QUIET`]; returns, for
/// each, how long after the call its output last grew (zero if it did not).
pub(super) fn wait_caught_up(running: &[Running]) -> Result<Vec<Duration>> {
    let start = Instant::now();
    let mut lens: Vec<u64> = running.iter().map(Running::output_len).collect();
    let mut grew = vec![Duration::ZERO; running.len()];
    loop {
        std::thread::sleep(Duration::from_millis(50));
        check_interrupted()?;
        let now = start.elapsed();
        for (i, listener) in running.iter().enumerate() {
            let len = listener.output_len();
            if len != lens[i] {
                lens[i] = len;
                grew[i] = now;
            }
        }
        let last = grew.iter().max().copied().unwrap_or_default();
        if now.saturating_sub(last) >= QUIET {
            return Ok(grew);
        }
        if now >= DRAIN_CAP {
            eprintln!(
                "xtask: the listeners' output was still growing {} s after the burst; stopping them",
                DRAIN_CAP.as_secs()
            );
            return Ok(grew);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::events::{GROUP_DESTROY, GROUP_NEW};

    #[test]
    fn netlink_table_rows() {
        let text = "sk               Eth Pid        Groups   Rmem     Wmem     Dump  Locks    Drops    Inode\n\
            00000000f49334e1 12  2278       00000000 0        0        0     2        0        817243  \n\
            00000000605f28f9 12  4221369939 00000005 0        0        0     2        9689     817244  \n\
            garbage line\n\
            000000000d65ecbb 0   0          0000zz00 0        0        0     2        0        817197\n";
        assert_eq!(
            parse_netlink_table(text),
            vec![
                NetlinkRow {
                    protocol: 12,
                    groups: 0,
                    drops: 0,
                    inode: 817_243
                },
                NetlinkRow {
                    protocol: 12,
                    groups: GROUP_NEW | GROUP_DESTROY,
                    drops: 9689,
                    inode: 817_244
                },
            ]
        );
        assert!(parse_netlink_table("").is_empty());
    }
}
