//! Test-only fault injection, compiled in only with the `fault-injection`
//! cargo feature (the test command builds with it; release builds do not,
//! so a shipped ctscope never reads these variables).
//!
//! - `CTSCOPE_FAULT_DUMP_ENOBUFS_AFTER=N`: a dump sees ENOBUFS after N
//!   datagrams.
//! - `CTSCOPE_FAULT_PANIC=draw|feeder`: `top` panics on its screen thread
//!   after a frame, or on its event thread a second after it starts.

/// The variable that makes a dump see ENOBUFS.
pub const DUMP_ENOBUFS_ENV: &str = "CTSCOPE_FAULT_DUMP_ENOBUFS_AFTER";
/// The variable that makes `top` panic at a named place.
pub const PANIC_ENV: &str = "CTSCOPE_FAULT_PANIC";

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
