//! Entering another network namespace (`--netns NAME|PATH`), so an operator
//! can look into a container without `ip netns exec`.
use std::{fs::File, path::PathBuf};

use nix::sched::{CloneFlags, setns};

/// Why the namespace could not be entered.
#[derive(Debug, thiserror::Error)]
#[error("cannot enter network namespace '{name}' ({path}): {reason}")]
pub struct NetnsError {
    name: String,
    path: String,
    reason: String,
}

/// Where a namespace name or path points: names live in /run/netns, as
/// `ip netns` keeps them.
pub fn resolve(name: &str) -> PathBuf {
    if name.contains('/') {
        PathBuf::from(name)
    } else {
        PathBuf::from("/run/netns").join(name)
    }
}

/// Moves the calling thread into the namespace. Call before opening any
/// socket: sockets stay in the namespace they were made in.
pub fn enter(name: &str) -> Result<(), NetnsError> {
    let path = resolve(name);
    let err = |reason: String| NetnsError {
        name: name.to_string(),
        path: path.display().to_string(),
        reason,
    };
    let file = File::open(&path).map_err(|e| {
        err(e.raw_os_error().map_or_else(
            || e.to_string(),
            |n| nix::errno::Errno::from_raw(n).desc().to_string(),
        ))
    })?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| match e {
        nix::errno::Errno::EPERM => {
            err("operation not permitted: needs root or CAP_SYS_ADMIN".into())
        }
        nix::errno::Errno::EINVAL => err("not a network namespace".into()),
        e => err(e.desc().to_string()),
    })
}

/// Watches the namespace named with `--netns`: ctscope's own reference keeps
/// a namespace alive after `ip netns del` (or after its container exits),
/// so without this a watcher would wait forever on a table nobody uses.
#[derive(Debug, Clone)]
pub struct Watch {
    name: String,
    path: PathBuf,
    inode: u64,
}

impl Watch {
    /// Records the namespace's identity (call right after [`enter`]).
    pub fn new(name: &str) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let path = resolve(name);
        let inode = std::fs::metadata(&path).ok()?.ino();
        Some(Self {
            name: name.to_string(),
            path,
            inode,
        })
    }

    /// `Some(message)` once the name no longer points at our namespace.
    pub fn gone(&self) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        match std::fs::metadata(&self.path) {
            Ok(m) if m.ino() == self.inode => None,
            _ => Some(format!(
                "network namespace '{}' was deleted ({} is gone)",
                self.name,
                self.path.display()
            )),
        }
    }
}

static WATCH: std::sync::OnceLock<Watch> = std::sync::OnceLock::new();

/// Sets the namespace that long-running commands watch.
pub fn set_watch(w: Watch) {
    let _ = WATCH.set(w);
}

/// The message to exit with if the watched namespace was deleted.
pub fn watched_gone() -> Option<String> {
    WATCH.get().and_then(Watch::gone)
}
