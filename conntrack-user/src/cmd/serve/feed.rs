//! serve's event loop: applies the source's events to the live table,
//! resyncs it by dump every `--resync` seconds and at once after a loss, and
//! publishes a snapshot for the scrapes a few times a second.
//!
//! A resync takes the table to a thread of its own (the dump and its
//! reconciliation take seconds at 1,000,000 entries), at a lower CPU
//! priority than the event loop and the scrapes; meanwhile the loop goes
//! on reading, so the kernel's buffer does not overrun, and keeps the
//! events in a backlog that is applied on top of the dump when the table
//! comes back (an entry made or removed during the dump then ends as the
//! kernel has it, whichever way the dump saw it).
use std::{
    sync::atomic::{AtomicBool, Ordering},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::http::Shared;
use crate::{
    ct::{Conntrack, EventKind},
    filter::Filter,
    metrics::{FeedCounters, Snapshot},
    netlink::{CtSocket, NetlinkError},
    source::{Reader, SourceError},
    table::{Drift, Table},
};

/// How long one wait for events lasts before the stop flag, the resync and
/// the snapshot are looked at again.
const WAIT: Duration = Duration::from_millis(100);
/// How often the snapshot scrapes read is refreshed.
const PUBLISH_EVERY: Duration = Duration::from_millis(250);
/// How often the top talkers are chosen again (a selection over every
/// address, milliseconds with a million of them).
const TALKERS_EVERY: Duration = Duration::from_secs(1);
/// Events kept while a resync holds the table (about 200 bytes each);
/// past this, events are dropped, counted, and another resync follows.
const BACKLOG_MAX: usize = 1 << 20;

/// How the loop runs.
#[derive(Clone, Debug)]
pub struct FeedConfig {
    /// What the table counts.
    pub filter: Filter,
    /// Time between periodic resyncs.
    pub resync_every: Duration,
    /// Top sources and destinations to show (0: none).
    pub top_talkers: usize,
}

/// An event that arrived while a resync held the table.
struct Pending {
    kind: EventKind,
    ct: Conntrack,
    delivery_ns: Option<u64>,
    at: Instant,
}

/// What a resync hands back: the table (whatever happened), the drift or
/// why the dump failed, and how long it took.
type Resynced = (Table, Result<Drift, String>, Duration);

/// The namespace's entries that `filter` selects (the kernel skips what
/// its part of the filter rules out).
fn dump(filter: &Filter) -> Result<Vec<Conntrack>, NetlinkError> {
    let mut sock = CtSocket::open()?;
    let mut out = Vec::new();
    let attrs = filter.kernel_attrs();
    sock.dump(filter.family.unwrap_or(0), attrs.as_bytes(), |ct| {
        if filter.matches(ct) {
            out.push(ct.clone());
        }
        true
    })?;
    Ok(out)
}

/// The nice value of the resync thread: background work, which the event
/// loop and the scrapes go before on a busy machine.
const RESYNC_NICE: libc::c_int = 10;

/// Dumps and reconciles; runs on a thread of its own.
fn resync(mut table: Table, filter: &Filter) -> Resynced {
    // SAFETY: plain syscalls on this thread's own id. Linux keeps nice
    // values per thread, so this leaves the others as they are; failing
    // leaves this one as it is.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, RESYNC_NICE);
    }
    let started = Instant::now();
    let outcome = dump(filter)
        .map(|entries| table.resync(entries, Instant::now()))
        .map_err(|e| e.to_string());
    (table, outcome, started.elapsed())
}

/// The first dump, before serving (a missing privilege shows here).
pub fn initial(table: &mut Table, filter: &Filter) -> Result<(), NetlinkError> {
    table.resync(dump(filter)?, Instant::now());
    Ok(())
}

fn kind_index(kind: EventKind) -> usize {
    match kind {
        EventKind::New => 0,
        EventKind::Update => 1,
        EventKind::Destroy => 2,
    }
}

/// Runs until `stop` is raised (`Ok`) or the source fails (the reason).
pub async fn run(
    mut reader: Reader,
    table: Table,
    shared: &Shared,
    stop: &AtomicBool,
    config: &FeedConfig,
) -> Result<(), String> {
    let mut table = Some(table);
    let mut backlog: Vec<Pending> = Vec::new();
    let mut pending_resync: Option<JoinHandle<Resynced>> = None;
    let mut feed = FeedCounters::default();
    let mut want_resync = false;
    let mut last_resync = Instant::now();
    let mut last_publish: Option<Instant> = None;
    let mut last_talkers: Option<Instant> = None;
    let mut stall = crate::fault::stall();
    while !stop.load(Ordering::Relaxed) {
        shared.beat();
        let mut now = None;
        let backlog_lost_before = feed.backlog_lost;
        let read = reader
            .read(WAIT, |ev| {
                if !config.filter.matches(ev.ct) {
                    return;
                }
                feed.events[kind_index(ev.kind)] += 1;
                let at = *now.get_or_insert_with(Instant::now);
                match table.as_mut() {
                    Some(t) => t.apply(ev.kind, ev.ct, at, ev.delivery_ns),
                    None if backlog.len() < BACKLOG_MAX => backlog.push(Pending {
                        kind: ev.kind,
                        ct: ev.ct.clone(),
                        delivery_ns: ev.delivery_ns,
                        at,
                    }),
                    None => feed.backlog_lost += 1,
                }
            })
            .await;
        let read = match read {
            Ok(read) => read,
            Err(SourceError::NamespaceGone(msg)) => return Err(msg),
            Err(e) => return Err(e.to_string()),
        };
        if feed.events.iter().any(|n| *n > 0)
            && let Some(d) = stall.take()
        {
            // Test-only (fault-injection): a loop stuck in a blocking call.
            std::thread::sleep(d);
        }
        let lost = reader.lost();
        feed.netlink_overruns = lost.overruns;
        feed.ring_full = lost.ring_full;
        feed.skipped = lost.skipped.unwrap_or(0);
        feed.malformed = lost.malformed;
        if read.lost.any() || feed.backlog_lost > backlog_lost_before {
            want_resync = true;
        }
        let mut publish_now = false;
        if pending_resync.as_ref().is_some_and(JoinHandle::is_finished)
            && let Some(handle) = pending_resync.take()
        {
            let (mut t, outcome, took) = handle
                .join()
                .map_err(|_| "the resync thread panicked".to_string())?;
            match outcome {
                Ok(drift) => {
                    feed.resyncs += 1;
                    feed.drift_missed += drift.missed;
                    feed.drift_stale += drift.stale;
                    feed.last_resync_seconds = took.as_secs_f64();
                }
                Err(msg) => {
                    feed.resync_errors += 1;
                    eprintln!(
                        "ctscope: resync failed ({msg}); the next one is due in {} s",
                        config.resync_every.as_secs()
                    );
                }
            }
            for p in backlog.drain(..) {
                t.apply(p.kind, &p.ct, p.at, p.delivery_ns);
            }
            table = Some(t);
            publish_now = true;
        }
        if pending_resync.is_none()
            && (want_resync || last_resync.elapsed() >= config.resync_every)
            && let Some(t) = table.take()
        {
            want_resync = false;
            last_resync = Instant::now();
            let filter = config.filter.clone();
            let spawned = std::thread::Builder::new()
                .name("ctscope-resync".into())
                .spawn(move || resync(t, &filter))
                .map_err(|e| format!("cannot start a resync thread: {e}"))?;
            pending_resync = Some(spawned);
        }
        if publish_now || last_publish.is_none_or(|at| at.elapsed() >= PUBLISH_EVERY) {
            last_publish = Some(Instant::now());
            let snapshot = match &table {
                Some(t) => {
                    let talkers = config.top_talkers > 0
                        && last_talkers.is_none_or(|at| at.elapsed() >= TALKERS_EVERY);
                    let mut s = Snapshot::of(t, feed, if talkers { config.top_talkers } else { 0 });
                    if talkers {
                        last_talkers = Some(Instant::now());
                    } else {
                        let previous = shared.snapshot();
                        s.top_sources.clone_from(&previous.top_sources);
                        s.top_destinations.clone_from(&previous.top_destinations);
                    }
                    s
                }
                // The table is away resyncing: its figures as last seen.
                None => shared.snapshot().with_feed(feed),
            };
            shared.publish(snapshot);
        }
    }
    Ok(())
}
