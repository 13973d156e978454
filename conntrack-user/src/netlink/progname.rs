//! Which program caused a conntrack event, from the netlink port id in the
//! event's header (conntrack -E's " \[USERSPACE\] portid=N progname=X").
//!
//! The same /proc walk as conntrack 1.4.7: find the socket inode of the
//! port id in /proc/net/netlink, then the process holding that socket (the
//! pid equal to the port id first, then every pid). The last answer is
//! cached, and trusted for [`RECHECK_AFTER`] before /proc/net/netlink is
//! read again to see that the port id still names the same socket: a
//! flush of 500,000 entries costs one walk, not one read per event (that
//! read was ~500 µs of guest time an event, BENCHMARKS.md).
use std::{
    fs,
    time::{Duration, Instant},
};

/// How long a cached port id answer is used before it is checked again (a
/// port id is reused only once its socket is closed).
pub const RECHECK_AFTER: Duration = Duration::from_secs(1);

/// Caches the last port id lookup.
#[derive(Debug, Default)]
pub struct ProgName {
    /// (port id, socket inode, program name, when the inode was checked).
    last: Option<(u32, u64, Option<String>, Instant)>,
}

fn socket_inode(portid: u32) -> Option<u64> {
    let text = fs::read_to_string("/proc/net/netlink").ok()?;
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode
        if f.len() >= 10
            && f[1].parse::<i32>().ok() == Some(libc::NETLINK_NETFILTER)
            && f[2].parse::<u32>().ok() == Some(portid)
        {
            return f[9].parse().ok();
        }
    }
    None
}

fn comm_of(pid: u32) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let start = stat.find('(')? + 1;
    let end = stat.rfind(')')?;
    stat.get(start..end).map(str::to_string)
}

fn holds_socket(pid: u32, inode: u64) -> bool {
    let want = format!("socket:[{inode}]");
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    dir.flatten()
        .any(|e| fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == want.as_str()))
}

impl ProgName {
    /// The program name for a port id, if it can still be found.
    pub fn lookup(&mut self, portid: u32) -> Option<&str> {
        let fresh = matches!(&self.last,
            Some((p, _, _, at)) if *p == portid && at.elapsed() < RECHECK_AFTER);
        if fresh {
            return self.last.as_ref().and_then(|(_, _, n, _)| n.as_deref());
        }
        let inode = socket_inode(portid)?;
        let cached = matches!(&self.last, Some((p, i, _, _)) if *p == portid && *i == inode);
        if cached {
            if let Some(last) = self.last.as_mut() {
                last.3 = Instant::now();
            }
        } else {
            let name = if holds_socket(portid, inode) {
                comm_of(portid)
            } else {
                fs::read_dir("/proc").ok().and_then(|dir| {
                    dir.flatten()
                        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                        .filter(|pid| *pid > 1 && *pid != portid)
                        .find(|pid| holds_socket(*pid, inode))
                        .and_then(comm_of)
                })
            };
            self.last = Some((portid, inode, name, Instant::now()));
        }
        self.last.as_ref().and_then(|(_, _, n, _)| n.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_our_own_netfilter_socket() {
        let Ok(mut sock) = netlink_sys::Socket::new(libc::NETLINK_NETFILTER as isize) else {
            panic!("cannot open a NETLINK_NETFILTER socket");
        };
        let addr = sock.bind_auto().expect("bind");
        let name = ProgName::default()
            .lookup(addr.port_number())
            .map(str::to_string);
        let me = comm_of(std::process::id()).expect("own comm");
        assert_eq!(name.as_deref(), Some(me.as_str()));
    }

    #[test]
    fn a_cached_answer_is_checked_again_after_a_while() {
        let Ok(mut sock) = netlink_sys::Socket::new(libc::NETLINK_NETFILTER as isize) else {
            panic!("cannot open a NETLINK_NETFILTER socket");
        };
        let port = sock.bind_auto().expect("bind").port_number();
        let mut names = ProgName::default();
        assert!(names.lookup(port).is_some());
        drop(sock);
        // Within RECHECK_AFTER the answer comes from the cache, without
        // reading /proc (the flush case: one port id, many events)...
        assert!(names.lookup(port).is_some());
        // ...and after it, the closed socket is noticed.
        std::thread::sleep(RECHECK_AFTER + Duration::from_millis(50));
        assert_eq!(names.lookup(port), None);
    }
}
