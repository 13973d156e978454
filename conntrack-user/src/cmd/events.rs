//! events (`-E`): connection events as they happen, as conntrack -E prints
//! them, from the one event source.
use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use crate::{
    cli::{CliError, Result, args::EventArgs, signals::stop_on_signals, usage},
    ebpf::Updates,
    output::{OutputOptions, Printer, summary},
    source::{Lost, Source, SourceError, runtime},
};

/// How long one wait for events lasts before the stop flag and the
/// deadline are looked at again.
const WAIT: Duration = Duration::from_millis(100);

/// Runs `ctscope events`.
pub fn run(args: &EventArgs) -> Result<()> {
    let filter = args.filter.to_filter()?;
    // Most runs filter nothing: no need to ask for each event.
    let everything = filter.is_empty();
    let opts = OutputOptions::parse(args.output.iter().map(String::as_str))?;
    let mask = args.event_mask.unwrap_or_default();
    if !(mask.new || mask.update || mask.destroy) {
        return Err(usage("-e selects no event"));
    }
    // UPDATE asked for by name must come; by default, where the kernel
    // gives it to eBPF.
    let updates = match args.event_mask {
        Some(m) if m.update => Updates::Required,
        Some(_) => Updates::Off,
        None => Updates::IfAvailable,
    };
    let stop = stop_on_signals(true)?;
    let source = Source::open(&args.source.config(mask, updates, args.reliable))?;
    if let Some(line) = source.startup_line() {
        eprintln!("{line}");
    }
    let runtime =
        runtime().map_err(|e| CliError::Failed(format!("cannot start the runtime: {e}")))?;
    let mut printer = Printer::new(opts);
    let limit = args.count.unwrap_or(u64::MAX);
    let deadline = args.duration.and_then(|d| Instant::now().checked_add(d));
    let mut shown = 0u64;
    let mut lost = Lost::default();
    let result: std::result::Result<(), SourceError> = runtime.block_on(async {
        let mut reader = source.reader()?;
        let mut out_ok = true;
        let mut warned = false;
        while out_ok && shown < limit && !stop.load(Ordering::Relaxed) {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            let read = reader
                .read(WAIT, |ev| {
                    if shown >= limit || !out_ok || !(everything || filter.matches(ev.ct)) {
                        return;
                    }
                    shown += 1;
                    out_ok = printer.event(ev);
                })
                .await;
            lost = reader.lost();
            let read = read?;
            if read.lost.overruns > 0 && !warned {
                warned = true;
                eprintln!(
                    "ctscope: the kernel dropped events (netlink receive buffer overrun, ENOBUFS); \
                     counting, and going on (raise -b/--buffer-size)"
                );
            }
            out_ok = out_ok && printer.flush();
        }
        Ok(())
    });
    // What was shown is written out and counted even when the run ends on
    // an error (the namespace deleted).
    printer.finish()?;
    summary(&format!("{shown} flow events have been shown"));
    report_lost(&lost);
    result.map_err(CliError::from)
}

/// The stderr lines for what was lost, by reason.
fn report_lost(lost: &Lost) {
    if lost.ring_full > 0 {
        eprintln!(
            "ctscope: {} events lost: the ring buffer was full (raise --ring-size)",
            lost.ring_full
        );
    }
    if lost.overruns > 0 {
        eprintln!(
            "ctscope: events were lost in {} receive buffer overruns (ENOBUFS); \
             ctnetlink does not say how many",
            lost.overruns
        );
    }
    if let Some(n) = lost.skipped.filter(|n| *n > 0) {
        eprintln!(
            "ctscope: {n} events may be lost: the kernel skipped ctscope's eBPF programs \
             (another BPF program or kprobe handler was running on that CPU)"
        );
    }
}
