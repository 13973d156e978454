//! The host's `nf_conntrack_max`, changed for one test and put back.

/// Where the limit is set. Since 6.x it is one global value, read-only
/// inside a namespace, so a test that changes it changes it for the host.
const CONNTRACK_MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";

/// A changed `nf_conntrack_max`, restored on drop (even if the test panics).
pub struct ConntrackMax {
    /// The value before, when it was changed.
    old: Option<String>,
}

impl ConntrackMax {
    /// Sets the limit to `n`.
    #[track_caller]
    pub fn set(n: u64) -> Self {
        let old = read();
        write(n);
        Self { old: Some(old) }
    }

    /// Raises the limit to `n` if it is lower; leaves it alone otherwise.
    #[track_caller]
    pub fn at_least(n: u64) -> Self {
        let old = read();
        let cur: u64 = old.trim().parse().unwrap_or(0);
        if cur >= n {
            return Self { old: None };
        }
        write(n);
        Self { old: Some(old) }
    }
}

impl Drop for ConntrackMax {
    fn drop(&mut self) {
        if let Some(old) = &self.old
            && let Err(e) = std::fs::write(CONNTRACK_MAX, old.trim())
        {
            eprintln!("warning: could not restore {CONNTRACK_MAX} to {old}: {e}");
        }
    }
}

#[track_caller]
fn read() -> String {
    std::fs::read_to_string(CONNTRACK_MAX).unwrap_or_else(|e| panic!("read {CONNTRACK_MAX}: {e}"))
}

#[track_caller]
fn write(n: u64) {
    std::fs::write(CONNTRACK_MAX, n.to_string())
        .unwrap_or_else(|e| panic!("set {CONNTRACK_MAX} to {n}: {e}"));
}
