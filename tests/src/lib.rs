//! Shared fixture for ctscope's end-to-end tests.
//!
//! Every test makes its own network namespace (`ctscope-t-<pid>-<n>`), fills
//! its conntrack table with real traffic and `conntrack -I` entries, and runs
//! `ctscope` and the reference `conntrack` (1.4.7) in that namespace with the
//! same arguments.
//!
//! Needs: root (namespaces, nftables, ctnetlink), `ip`, `nft`, `sysctl`,
//! `conntrack`, `setpriv`, `tmux`, `chromium` (the HTML report's test), and a built ctscope, taken from `CTSCOPE_BIN` or
//! else `<workspace>/target/debug/ctscope` (`cargo build -p conntrack-user`).
//!
//! Switch: `CTSCOPE_SKIP_NETNS=1` turns these tests off (for machines where
//! they cannot run, e.g. without root). Each test then prints that it was
//! skipped by that switch and passes. Without the switch, a test that cannot
//! run fails and says why.
//!
//! The parts: `netns` (the namespace and running programs in it),
//! `command` (a finished run's [`Output`]), `background` (programs left
//! running), `http` (a tiny HTTP client), `exporter` (`serve`, Prometheus
//! and node_exporter in a namespace),
//! `helpers` (real expectations from the kernel's ftp and sip helpers),
//! `traffic` (the table's entries), `browser` (headless Chromium for the
//! HTML report), `compare` (ctscope's output against
//! conntrack's), `tmux` (driving a terminal screen), `conntrack_max` (the
//! host's limit) and `xtables` (a connlabel.conf for a test); everything
//! the tests use is re-exported here.

mod background;
mod browser;
mod command;
mod compare;
mod conntrack_max;
mod exporter;
mod helpers;
mod http;
mod netns;
mod tmux;
mod traffic;
mod xtables;

use std::{
    thread,
    time::{Duration, Instant},
};

pub use background::Background;
pub use browser::{Chromium, LoadedPage, png_size};
pub use command::{Output, ctscope_bin, ctscope_bin_str, host, run};
pub use compare::{
    compare_list, compare_list_to, compare_outputs, events_diff, key_values, mask_element,
    multiset_diff, normalise, normalise_event, normalise_save, normalise_xml, normalised_events,
    normalised_lines, report, same_exit,
};
pub use conntrack_max::ConntrackMax;
pub use exporter::{
    NODE_EXPORTER, NOTRACK_HTTP, PROMETHEUS, SERVE, addr, check_histograms, get, promtool_check,
    quiet_netns, start_serve, wait_ready,
};
pub use helpers::{FtpSession, HELPER_RULESET, ftp_session, normalise_expect, sip_register};
pub use http::{HttpResponse, http_get, sample, url_encode};
pub use netns::{Netns, SKIP_SWITCH};
pub use tmux::{Screen, Tmux};
pub use traffic::{INSERTED, Kept, VARIED_RULESET, spread_lifetimes, udp_flows};
pub use xtables::XtablesDir;

/// Calls `done` every 10 ms until it returns true (true) or `timeout`
/// passes (false).
pub fn poll_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}
