//! Test-only fault injection, compiled in only with the `fault-injection`
//! cargo feature (the test command builds with it; release builds do not,
//! so a shipped ctscope never reads these variables).
//!
//! - `CTSCOPE_FAULT_DUMP_ENOBUFS_AFTER=N`: a dump sees ENOBUFS after N
//!   datagrams.
//! - `CTSCOPE_FAULT_PANIC=draw|feeder`: `top` panics on its screen thread
//!   after a frame, or on its event thread a second after it starts.
//! - `CTSCOPE_FAULT_STALL_SECS=N`: `serve`'s event loop blocks for N
//!   seconds once, after the first event it counts (its HTTP side keeps
//!   answering, so `/healthz` can be seen to fail and recover).

/// The variable that makes a dump see ENOBUFS.
pub const DUMP_ENOBUFS_ENV: &str = "CTSCOPE_FAULT_DUMP_ENOBUFS_AFTER";
/// The variable that makes `top` panic at a named place.
pub const PANIC_ENV: &str = "CTSCOPE_FAULT_PANIC";

/// The variable that stalls `serve`'s event loop once.
pub const STALL_ENV: &str = "CTSCOPE_FAULT_STALL_SECS";

/// How long `serve`'s event loop should block, once.
pub fn stall() -> Option<std::time::Duration> {
    if cfg!(feature = "fault-injection") {
        let secs: u64 = std::env::var(STALL_ENV).ok()?.parse().ok()?;
        Some(std::time::Duration::from_secs(secs))
    } else {
        None
    }
}

/// After how many received datagrams a dump should see ENOBUFS once.
pub fn dump_enobufs_after() -> Option<u64> {
    if cfg!(feature = "fault-injection") {
        std::env::var(DUMP_ENOBUFS_ENV).ok()?.parse().ok()
    } else {
        None
    }
}

/// Panics when [`PANIC_ENV`] names this place (reported at the caller).
#[track_caller]
pub fn panic_at(place: &str) {
    if !cfg!(feature = "fault-injection") {
        return;
    }
    static PLACE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if PLACE
        .get_or_init(|| std::env::var(PANIC_ENV).ok())
        .as_deref()
        == Some(place)
    {
        panic!("injected by {PANIC_ENV}={place}");
    }
}
