//! SIGINT and SIGTERM: the long-running commands stop cleanly with their
//! summary; list and delete stop after the entry in hand. signal-hook sets
//! flags from the handlers (and ends ctscope on a second signal, which
//! tokio's signal streams cannot do for a blocked thread).
use std::{
    io,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use super::{CliError, Result};

/// A flag that SIGINT and SIGTERM raise, for the long-running commands to
/// end cleanly with their summary.
pub fn stop_on_signals(second_exits: bool) -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let failed = |e: io::Error| CliError::Failed(format!("cannot handle signals: {e}"));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // Registered first, so it sees the flag as the previous signal
        // left it: a second signal ends ctscope at once, for when the
        // clean stop is stuck (e.g. writing to a pipe nobody reads). Not
        // for top, whose every exit must restore the terminal.
        if second_exits {
            signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, Arc::clone(&stop))
                .map_err(failed)?;
        }
        signal_hook::flag::register(sig, Arc::clone(&stop)).map_err(failed)?;
    }
    Ok(stop)
}

/// For list and delete: the first SIGINT or SIGTERM is recorded here (the
/// signal number; 0 until then), and the command stops after the entry in
/// hand, with everything shown so far written out and its summary line;
/// a second signal ends ctscope at once.
pub fn interrupt_on_signals() -> Result<Arc<AtomicUsize>> {
    let got = Arc::new(AtomicUsize::new(0));
    let armed = Arc::new(AtomicBool::new(false));
    let failed = |e: io::Error| CliError::Failed(format!("cannot handle signals: {e}"));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, Arc::clone(&armed))
            .map_err(failed)?;
        signal_hook::flag::register(sig, Arc::clone(&armed)).map_err(failed)?;
        signal_hook::flag::register_usize(sig, Arc::clone(&got), sig as usize).map_err(failed)?;
    }
    Ok(got)
}

/// The signal recorded by [`interrupt_on_signals`], as the command's end.
pub fn interrupted(got: &AtomicUsize) -> Result<()> {
    match got.load(Ordering::Relaxed) {
        0 => Ok(()),
        sig => Err(CliError::Interrupted(i32::try_from(sig).unwrap_or(2))),
    }
}
