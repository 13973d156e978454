//! The one event source every command reads: the eBPF tracer when it loads
//! and attaches, else ctnetlink's event groups.
//!
//! [`Source::open`] picks one (with one message format for why eBPF is not
//! used), [`Source::reader`] hands it to tokio, and [`Reader::read`] waits
//! for the ring buffer or the netlink socket with a timeout and hands each
//! [`Event`] to the caller. Every source flag (`--source`, `--ring-size`,
//! `--all-netns`, `-b`) means the same for every command that reads events.
use std::{
    os::fd::{AsRawFd, RawFd},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tokio::io::{Interest, unix::AsyncFd};

use crate::{
    ct::{Conntrack, EventKind},
    ebpf::{Attached, Hook, Tracer, TracerConfig, TracerError, Updates},
    netlink::{
        CtSocket, NetlinkError,
        events::{EventConfig, EventMask, EventSocket},
    },
    netns,
};

/// Which source to use (`--source`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SourceChoice {
    /// eBPF when it loads and attaches, else ctnetlink (said on stderr).
    #[default]
    Auto,
    /// eBPF only: exit 1 with the reason when it cannot attach.
    Ebpf,
    /// ctnetlink events only.
    Netlink,
}

/// Settings of the event source, the same for every command.
#[derive(Clone, Copy, Debug)]
pub struct SourceConfig {
    /// `--source`.
    pub choice: SourceChoice,
    /// `-e`: the events wanted (ctnetlink joins only these groups).
    pub mask: EventMask,
    /// Whether the eBPF source must report UPDATE events.
    pub updates: Updates,
    /// `-b`: the netlink receive buffer in bytes.
    pub rcvbuf: usize,
    /// `--reliable`: ctnetlink's reliable delivery.
    pub reliable: bool,
    /// `--ring-size`: the eBPF ring buffer in bytes.
    pub ring_size: u32,
    /// `--all-netns`: every network namespace (eBPF only).
    pub all_netns: bool,
    /// `--ebpf-hook`: how the tracer attaches.
    pub hook: Hook,
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            choice: SourceChoice::Auto,
            mask: EventMask::default(),
            updates: Updates::IfAvailable,
            rcvbuf: DEFAULT_RCVBUF,
            reliable: false,
            ring_size: DEFAULT_RING_SIZE,
            all_netns: false,
            hook: Hook::Auto,
        }
    }
}

/// `-b`'s default: 256 MiB absorbs a burst of 500,000 events.
pub const DEFAULT_RCVBUF: usize = 256 << 20;
/// `--ring-size`'s default: absorbs a 100 ms stall at 1M events/s.
pub const DEFAULT_RING_SIZE: u32 = 32 << 20;

/// Why no source could be opened.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// `--source ebpf`, and the tracer cannot run.
    #[error("eBPF source unavailable: {0}")]
    EbpfUnavailable(TracerError),
    /// `--all-netns` with the ctnetlink source, which sees one namespace.
    #[error("--all-netns needs the eBPF source")]
    AllNetnsNeedsEbpf,
    /// `--all-netns`, and the tracer cannot run.
    #[error("--all-netns needs the eBPF source, which is unavailable: {0}")]
    AllNetnsUnavailable(TracerError),
    /// The ctnetlink source failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// The watched namespace (`--netns`) was deleted.
    #[error("{0}")]
    NamespaceGone(String),
    /// tokio could not watch the source's fd.
    #[error("cannot poll the event source: {0}")]
    Poll(std::io::Error),
}

impl SourceError {
    /// Whether the cause is a missing privilege.
    pub fn is_privilege(&self) -> bool {
        matches!(
            self,
            Self::Netlink(NetlinkError::PermissionDenied { .. })
                | Self::EbpfUnavailable(TracerError::Privilege(_))
        )
    }
}

/// One connection event, from either source.
#[derive(Clone, Copy, Debug)]
pub struct Event<'a> {
    /// NEW, UPDATE or DESTROY.
    pub kind: EventKind,
    /// The entry as ctnetlink reports it for this event.
    pub ct: &'a Conntrack,
    /// Wall time in ns since the epoch: the kernel's for eBPF, the time of
    /// receipt for ctnetlink.
    pub time_ns: u64,
    /// The netlink port id of the program that made the change (0: the
    /// kernel, or not known, as with eBPF).
    pub portid: u32,
    /// The entry's network namespace inode, with `--all-netns`.
    pub netns: Option<u32>,
    /// Kernel timestamp to handling, in ns (eBPF only).
    pub delivery_ns: Option<u64>,
    /// `"ebpf"` or `"netlink"`.
    pub source: &'static str,
}

/// Events lost on the way, by reason, since the source opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lost {
    /// Records the eBPF programs could not write: the ring was full.
    pub ring_full: u64,
    /// Events the runs of the eBPF programs the kernel skipped may have
    /// been (`Tracer::skipped`: a kprobe/kretprobe pair skipped on one call
    /// is one event); `None` where the kernel does not count them, or with
    /// ctnetlink.
    pub skipped: Option<u64>,
    /// ctnetlink receive buffer overruns (ENOBUFS); each lost an unknown
    /// number of events.
    pub overruns: u64,
    /// Messages or records that could not be decoded.
    pub malformed: u64,
}

impl Lost {
    /// Whether anything was lost (a reason to resync a table).
    pub fn any(&self) -> bool {
        self.ring_full > 0 || self.overruns > 0 || self.skipped.unwrap_or(0) > 0
    }

    /// Events known lost, whatever the reason: records dropped and runs
    /// skipped (an overrun's count is unknown: it counts once).
    pub fn total(&self) -> u64 {
        self.ring_full + self.overruns + self.skipped.unwrap_or(0)
    }

    /// What was lost after `earlier`.
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            ring_full: self.ring_full.saturating_sub(earlier.ring_full),
            skipped: self
                .skipped
                .map(|n| n.saturating_sub(earlier.skipped.unwrap_or(0))),
            overruns: self.overruns.saturating_sub(earlier.overruns),
            malformed: self.malformed.saturating_sub(earlier.malformed),
        }
    }
}

enum Kind {
    Ebpf(Box<Tracer>),
    Netlink(EventSocket),
}

impl AsRawFd for Kind {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Self::Ebpf(tracer) => tracer.as_raw_fd(),
            Self::Netlink(sock) => sock.as_raw_fd(),
        }
    }
}

/// An open event source, not yet watched by tokio (so it can move to the
/// thread that reads it).
pub struct Source {
    kind: Kind,
    fallback: Option<String>,
    mask: EventMask,
    all_netns: bool,
}

/// Starts the eBPF tracer. A ctnetlink request first makes the kernel load
/// nf_conntrack (through nf_conntrack_netlink) if nothing has yet, so the
/// functions to hook exist; where that fails, the tracer's error names the
/// missing function.
fn start_tracer(config: TracerConfig) -> Result<Tracer, TracerError> {
    if let Ok(mut sock) = CtSocket::open() {
        let _ = sock.probe();
    }
    Tracer::start(config)
}

impl Source {
    /// Opens the source `config` asks for. With `auto`, a tracer that cannot
    /// run leaves the reason in [`Source::fallback`]; when ctnetlink fails
    /// too, that reason is printed first, unless both lack the same
    /// privilege (then the error says it once).
    pub fn open(config: &SourceConfig) -> Result<Self, SourceError> {
        if config.choice == SourceChoice::Netlink && config.all_netns {
            return Err(SourceError::AllNetnsNeedsEbpf);
        }
        let mut fallback = None;
        if config.choice != SourceChoice::Netlink {
            let filter_netns = if config.all_netns {
                0
            } else {
                crate::ebpf::netns_inode("/proc/self/ns/net").unwrap_or(0)
            };
            let started = start_tracer(TracerConfig {
                ring_size: config.ring_size,
                filter_netns,
                hook: config.hook,
                updates: if config.mask.update {
                    config.updates
                } else {
                    Updates::Off
                },
            });
            match started {
                Ok(tracer) => {
                    return Ok(Self {
                        kind: Kind::Ebpf(Box::new(tracer)),
                        fallback: None,
                        mask: config.mask,
                        all_netns: config.all_netns,
                    });
                }
                Err(e) if config.choice == SourceChoice::Ebpf => {
                    return Err(SourceError::EbpfUnavailable(e));
                }
                Err(e) if config.all_netns => return Err(SourceError::AllNetnsUnavailable(e)),
                Err(e) => {
                    fallback = Some(format!(
                        "eBPF source unavailable ({e}); using ctnetlink events"
                    ))
                }
            }
        }
        let opened = EventSocket::open(EventConfig {
            mask: config.mask,
            rcvbuf: config.rcvbuf,
            reliable: config.reliable,
        });
        match opened {
            Ok(sock) => Ok(Self {
                kind: Kind::Netlink(sock),
                fallback,
                mask: config.mask,
                all_netns: false,
            }),
            Err(e) => {
                if let Some(note) = &fallback
                    && !matches!(e, NetlinkError::PermissionDenied { .. })
                {
                    eprintln!("ctscope: {note}");
                }
                Err(e.into())
            }
        }
    }

    /// `"ebpf"` or `"netlink"`.
    pub fn name(&self) -> &'static str {
        match self.kind {
            Kind::Ebpf(_) => "ebpf",
            Kind::Netlink(_) => "netlink",
        }
    }

    /// eBPF programs attached: the tracer's; none for ctnetlink.
    pub fn probes_attached(&self) -> usize {
        match &self.kind {
            Kind::Ebpf(tracer) => tracer.probes(),
            Kind::Netlink(_) => 0,
        }
    }

    /// Where state changes come from: `"events"` (ctnetlink, or eBPF with
    /// its UPDATE program) or `"dumps"` (eBPF without: only resyncs see
    /// them).
    pub fn updates_from(&self) -> &'static str {
        match &self.kind {
            Kind::Ebpf(tracer) if !tracer.reports_updates() => "dumps",
            _ => "events",
        }
    }

    /// Why eBPF is not used, when `auto` fell back to ctnetlink.
    pub fn fallback(&self) -> Option<&str> {
        self.fallback.as_deref()
    }

    /// The start-up line for stderr: which source runs, or why not eBPF;
    /// nothing when ctnetlink was asked for.
    pub fn startup_line(&self) -> Option<String> {
        match (&self.kind, &self.fallback) {
            (Kind::Ebpf(tracer), _) => {
                let hooks = match tracer.attached() {
                    Attached::Fentry => "fentry/fexit on nf_conntrack".to_string(),
                    Attached::Kprobes {
                        fentry_refused: None,
                    } => "kprobes on nf_conntrack".into(),
                    Attached::Kprobes {
                        fentry_refused: Some(why),
                    } => format!("kprobes on nf_conntrack; fentry unavailable: {why}"),
                };
                let updates = if tracer.reports_updates() {
                    "; UPDATE events from ctnetlink_conntrack_event".to_string()
                } else if let Some(why) = tracer.updates_refused() {
                    format!("; no UPDATE events ({why})")
                } else {
                    String::new()
                };
                let skips = if !tracer.skips_counted() {
                    "; runs the kernel skips are not counted (kprobes before 6.7)"
                } else {
                    ""
                };
                Some(format!(
                    "ctscope: event source: eBPF ({hooks}){updates}{skips}"
                ))
            }
            (Kind::Netlink(_), Some(note)) => Some(format!("ctscope: {note}")),
            (Kind::Netlink(_), None) => None,
        }
    }

    /// Hands the source to tokio; call inside a runtime.
    pub fn reader(self) -> Result<Reader, SourceError> {
        // SAFETY: `Kind` owns the fd it returns (the tracer's ring map, or
        // the netlink socket), keeps it open until dropped and always
        // returns the same one; the AsyncFd owns the `Kind`.
        let fd = unsafe { AsyncFd::register_with_interest(self.kind, Interest::READABLE) }
            .map_err(|e| SourceError::Poll(e.into()))?;
        Ok(Reader {
            fd,
            mask: self.mask,
            all_netns: self.all_netns,
            lost: Lost::default(),
            last_netns_check: Instant::now(),
        })
    }
}

/// How often a reader checks that the watched namespace still exists.
const NETNS_CHECK_EVERY: Duration = Duration::from_millis(500);
/// Datagrams read from the netlink socket in one go, so a flood cannot
/// starve the caller's other work (resyncs, redraws, the stop flag).
const NETLINK_READS_PER_BATCH: usize = 256;

/// What one [`Reader::read`] saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Events handed to the caller.
    pub events: u64,
    /// What was lost during this read.
    pub lost: Lost,
}

/// A source watched by tokio: the one reader of every command.
pub struct Reader {
    fd: AsyncFd<Kind>,
    mask: EventMask,
    all_netns: bool,
    lost: Lost,
    last_netns_check: Instant,
}

fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Reader {
    /// `"ebpf"` or `"netlink"`.
    pub fn name(&self) -> &'static str {
        match self.fd.get_ref() {
            Kind::Ebpf(_) => "ebpf",
            Kind::Netlink(_) => "netlink",
        }
    }

    /// Everything lost since the source opened.
    pub fn lost(&self) -> Lost {
        self.lost
    }

    /// Waits up to `timeout` for events and hands each wanted one to
    /// `on_event`. Ends with [`SourceError::NamespaceGone`] once the
    /// watched namespace is deleted.
    pub async fn read(
        &mut self,
        timeout: Duration,
        mut on_event: impl FnMut(&Event<'_>),
    ) -> Result<ReadStats, SourceError> {
        if self.last_netns_check.elapsed() >= NETNS_CHECK_EVERY {
            self.last_netns_check = Instant::now();
            if let Some(msg) = netns::watched_gone() {
                return Err(SourceError::NamespaceGone(msg));
            }
        }
        let before = self.lost;
        let (mask, all_netns) = (self.mask, self.all_netns);
        // The eBPF programs submit without waking us (BPF_RB_NO_WAKEUP), so
        // the timeout is also when the ring is drained.
        let events = match tokio::time::timeout(timeout, self.fd.readable_mut()).await {
            Ok(Ok(mut guard)) => {
                let (events, empty) = drain(
                    guard.get_inner_mut(),
                    mask,
                    all_netns,
                    &mut self.lost,
                    &mut on_event,
                )?;
                // Readiness is edge-triggered: forget it only once the fd
                // is empty, or the rest would wait for the next event.
                if empty {
                    guard.clear_ready();
                }
                events
            }
            Ok(Err(e)) => return Err(SourceError::Poll(e)),
            Err(_elapsed) => {
                drain(
                    self.fd.get_mut(),
                    mask,
                    all_netns,
                    &mut self.lost,
                    &mut on_event,
                )?
                .0
            }
        };
        Ok(ReadStats {
            events,
            lost: self.lost.since(&before),
        })
    }
}

/// Hands what the source holds now to `on_event`; returns how many events
/// and whether the source was left empty.
fn drain(
    kind: &mut Kind,
    mask: EventMask,
    all_netns: bool,
    lost: &mut Lost,
    on_event: &mut impl FnMut(&Event<'_>),
) -> Result<(u64, bool), SourceError> {
    let mut events = 0;
    match kind {
        Kind::Ebpf(tracer) => {
            let now_ns = wall_ns();
            let drained = tracer.drain(|kind, ct, time_ns, netns| {
                if !mask.wants(kind) {
                    return;
                }
                events += 1;
                on_event(&Event {
                    kind,
                    ct,
                    time_ns,
                    portid: 0,
                    netns: all_netns.then_some(netns),
                    delivery_ns: Some(now_ns.saturating_sub(time_ns)),
                    source: "ebpf",
                });
            });
            lost.malformed += drained.malformed;
            lost.ring_full = tracer.lost();
            lost.skipped = tracer.skipped();
            Ok((events, true))
        }
        Kind::Netlink(sock) => {
            let time_ns = wall_ns();
            let batch = sock.drain(NETLINK_READS_PER_BATCH, |kind, ct, portid| {
                events += 1;
                on_event(&Event {
                    kind,
                    ct,
                    time_ns,
                    portid,
                    netns: None,
                    delivery_ns: None,
                    source: "netlink",
                });
            })?;
            lost.overruns += batch.overruns;
            lost.malformed += batch.malformed;
            Ok((events, batch.drained))
        }
    }
}

/// The runtime the event-reading commands run on: one thread, since the
/// work per event is small and ordered.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipped_runs_are_a_loss_and_count_since_a_point() {
        let earlier = Lost {
            ring_full: 1,
            skipped: Some(2),
            ..Lost::default()
        };
        let now = Lost {
            ring_full: 1,
            skipped: Some(5),
            overruns: 1,
            ..Lost::default()
        };
        let since = now.since(&earlier);
        assert_eq!(since.skipped, Some(3));
        assert!(since.any());
        assert_eq!(now.total(), 7);
        // Skips alone are a loss (a reason to resync).
        let skips_only = Lost {
            skipped: Some(1),
            ..Lost::default()
        };
        assert!(skips_only.any());
        // Not counted is not a loss, and not a number.
        let uncounted = Lost::default();
        assert!(!uncounted.any());
        assert_eq!(uncounted.since(&earlier).skipped, None);
    }
}
