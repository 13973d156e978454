//! top: the live table, like iptstate; `--once` prints one snapshot. The
//! screen runs on the main thread; the feeder thread reads the event source
//! (on a tokio runtime of its own), applies events to the table and
//! resyncs it by dump periodically and at once after a loss.
use std::{
    io::{self, Write},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use super::{dump_all, read_sysctl};
use crate::{
    cli::{CliError, Result, args::TopArgs, signals::stop_on_signals, usage},
    cmd::table::delete_attrs,
    ct::{Conntrack, EventKind},
    ebpf::Updates,
    netlink::{CtSocket, events::EventMask},
    source::{Reader, Source, SourceError, runtime},
    table::Table,
    ui::{
        app::{App, Settings},
        charts::push_history,
        once,
        resolve::{Resolver, Services, SystemLookup},
        rows, screen,
        view::{Totals, View},
    },
};

/// Lookups running at once for `--once --lookup`.
const ONCE_LOOKUP_THREADS: usize = 8;

/// Runs `ctscope top`.
pub fn run(args: &TopArgs) -> Result<()> {
    let filter = args.filter.to_filter()?;
    if args.enable_acct {
        std::fs::write("/proc/sys/net/netfilter/nf_conntrack_acct", "1")
            .map_err(|e| CliError::Failed(format!("cannot set nf_conntrack_acct: {e}")))?;
    }
    let acct_note = (args.counters && read_sysctl("nf_conntrack_acct") == Some(0)).then(|| {
        "counters and rates are empty: nf_conntrack_acct is 0 here (--enable-acct turns it on)"
            .to_string()
    });
    let mut view = View {
        sort: args.sort,
        reverse: args.reverse,
        filter,
        invert: args.invert,
        // As iptstate's -l: names on hides DNS flows, so the lookups do
        // not show up as new rows asking for more lookups.
        no_dns: args.no_dns || args.lookup,
        no_loopback: args.no_loopback,
        ..View::default()
    };
    let now = Instant::now();
    if args.once {
        let mut table = Table::new();
        table.resync(dump_all()?, now);
        view.now_ms = table.now_ms();
        let (rows, total) = rows::select(table.entries(), &view, args.limit.unwrap_or(usize::MAX));
        if args.lookup {
            let resolver = |limits| Resolver::new(SystemLookup, limits, Services::system);
            let deadline = Instant::now() + once::LOOKUP_WAIT;
            once::look_up(&mut view, &rows, resolver, ONCE_LOOKUP_THREADS, deadline);
        }
        let totals = args.totals.then(|| Totals::count(table.entries(), total));
        let mut out = String::new();
        once::write_once(
            &mut out,
            &rows,
            &view,
            args.counters,
            total,
            totals.as_ref(),
        );
        if let Some(note) = &acct_note {
            eprintln!("ctscope: {note}");
        }
        io::stdout().lock().write_all(out.as_bytes())?;
        return Ok(());
    }
    if !io::IsTerminal::is_terminal(&io::stdout()) {
        return Err(usage(
            "top needs a terminal; use `top --once` for a snapshot",
        ));
    }
    if args.source.all_netns {
        return Err(usage(
            "--all-netns is for `events`: top reconciles its table with dumps of one namespace",
        ));
    }
    let stop = stop_on_signals(false)?;
    // SIGCONT (after kill -STOP or Ctrl-Z, then fg): the screen takes the
    // terminal back and the feeder resyncs at once, since entries made or
    // removed meanwhile may have sent no event.
    let (resumed_screen, resumed_feeder) = (on_sigcont()?, on_sigcont()?);
    // Subscribe before the first dump, so nothing falls between them.
    let source = Source::open(&args.source.config(
        EventMask::default(),
        Updates::IfAvailable,
        false,
    ))?;
    let table = Arc::new(Mutex::new(Table::new()));
    if let Ok(mut t) = table.lock() {
        t.resync(dump_all()?, now);
    }
    let status = Arc::new(Mutex::new(screen::Status {
        source: source.name(),
        updates: source.updates_from(),
        max: read_sysctl("nf_conntrack_max"),
        note: match (acct_note, source.fallback()) {
            (Some(a), Some(b)) => Some(format!("{a}; {b}")),
            (a, b) => a.or(b.map(str::to_string)),
        },
        ..screen::Status::default()
    }));
    let feeder = {
        let (table, status, stop) = (Arc::clone(&table), Arc::clone(&status), Arc::clone(&stop));
        let resync = Duration::from_secs(args.resync);
        std::thread::spawn(move || feed(source, table, status, stop, resumed_feeder, resync))
    };
    let mut sock = CtSocket::open()?;
    let deleted_from = Arc::clone(&table);
    let deleter: screen::Deleter = Box::new(move |ct: &Conntrack| {
        let gone = sock
            .delete(ct.family, delete_attrs(ct).as_bytes())
            .map_err(|e| e.to_string())?;
        if !gone {
            return Err("already gone".into());
        }
        // The kernel sends no DESTROY for entries made while no ctnetlink
        // listener existed (they carry no event extension), so the table
        // applies its own delete rather than wait for the next resync.
        if let Ok(mut t) = deleted_from.lock() {
            t.apply(EventKind::Destroy, ct, Instant::now(), None);
        }
        Ok(())
    });
    let settings = Settings {
        counters: args.counters,
        color: !args.no_color,
        totals: args.totals,
        lookup: args.lookup,
        mark_truncated: args.mark_truncated,
        refresh: args.refresh,
    };
    let result = screen::run(
        App::new(view, settings, Resolver::system()),
        table,
        status,
        Arc::clone(&stop),
        resumed_screen,
        deleter,
    );
    stop.store(true, Ordering::Relaxed);
    let fed = feeder.join();
    // A panicking feeder may have poisoned the table, failing the screen
    // too: the panic is the cause to report.
    let fed = fed.map_err(|_| {
        CliError::Failed(format!(
            "the event thread panicked: {}",
            screen::take_other_panic().unwrap_or_else(|| "no message".into())
        ))
    })?;
    result.map_err(|e| CliError::Failed(format!("terminal: {e}")))?;
    fed.map_err(CliError::Failed)
}

/// A flag SIGCONT raises.
fn on_sigcont() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGCONT, Arc::clone(&flag))
        .map_err(|e| CliError::Failed(format!("cannot handle signals: {e}")))?;
    Ok(flag)
}

/// The feeder thread: runs [`feed_loop`] on a runtime of its own.
fn feed(
    source: Source,
    table: Arc<Mutex<Table>>,
    status: Arc<Mutex<screen::Status>>,
    stop: Arc<AtomicBool>,
    resumed: Arc<AtomicBool>,
    resync_every: Duration,
) -> std::result::Result<(), String> {
    let runtime = runtime().map_err(|e| format!("cannot start the runtime: {e}"))?;
    let result = runtime.block_on(async {
        let reader = source.reader().map_err(|e| e.to_string())?;
        feed_loop(reader, &table, &status, &stop, &resumed, resync_every).await
    });
    if result.is_err() {
        stop.store(true, Ordering::Relaxed);
    }
    result
}

/// Events per second over the last window.
#[derive(Default)]
struct Rates {
    events: u64,
    new: u64,
    destroy: u64,
}

/// Applies events to the table, measures rates, and resyncs by dump
/// periodically and at once after a loss.
async fn feed_loop(
    mut reader: Reader,
    table: &Mutex<Table>,
    status: &Mutex<screen::Status>,
    stop: &AtomicBool,
    resumed: &AtomicBool,
    resync_every: Duration,
) -> std::result::Result<(), String> {
    let started = Instant::now();
    let mut last_resync = started;
    let mut window_start = started;
    let mut window = Rates::default();
    let mut batch: Vec<(EventKind, Conntrack, Option<u64>)> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        if started.elapsed() >= Duration::from_secs(1) {
            crate::fault::panic_at("feeder");
        }
        batch.clear();
        let read = reader
            .read(Duration::from_millis(200), |ev| {
                batch.push((ev.kind, ev.ct.clone(), ev.delivery_ns));
            })
            .await;
        let read = match read {
            Ok(read) => read,
            Err(SourceError::NamespaceGone(msg)) => return Err(msg),
            Err(e) => return Err(e.to_string()),
        };
        let now = Instant::now();
        if let Ok(mut t) = table.lock() {
            for (kind, ct, delivery) in &batch {
                t.apply(*kind, ct, now, *delivery);
            }
        }
        window.events += read.events;
        for (kind, _, _) in &batch {
            match kind {
                EventKind::New => window.new += 1,
                EventKind::Destroy => window.destroy += 1,
                EventKind::Update => {}
            }
        }
        let elapsed = now.duration_since(window_start).as_secs_f64();
        if elapsed >= 1.0 {
            let lost = reader.lost();
            if let Ok(mut s) = status.lock() {
                s.events_per_sec = window.events as f64 / elapsed;
                s.new_per_sec = window.new as f64 / elapsed;
                s.destroy_per_sec = window.destroy as f64 / elapsed;
                let (new, destroy) = (s.new_per_sec.round(), s.destroy_per_sec.round());
                push_history(&mut s.new_history, new as u64);
                push_history(&mut s.destroy_history, destroy as u64);
                s.lost = lost.total();
            }
            window = Rates::default();
            window_start = now;
        }
        let was_stopped = resumed.swap(false, Ordering::Relaxed);
        if was_stopped || read.lost.any() || now.duration_since(last_resync) >= resync_every {
            let dump = dump_all().map_err(|e| e.to_string())?;
            if let Ok(mut t) = table.lock() {
                t.resync(dump, Instant::now());
            }
            last_resync = Instant::now();
        }
    }
    Ok(())
}
