//! profile: watches for `--duration`, then reports churn, lifetimes,
//! latencies, top talkers and table pressure (text, JSON or hgrm), with a
//! progress line on a terminal's stderr while it watches.
mod progress;

use std::{
    fs::File,
    io::{self, Write},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use self::progress::{Counts, Progress};
use super::{dump_all, pressure_counters, read_sysctl};
use crate::{
    cli::{CliError, Result, args::ProfileArgs, signals::stop_on_signals, usage},
    ebpf::Updates,
    netlink::{CtSocket, events::EventMask},
    report::{
        self, Pressure,
        html::{self, Run},
        timeline::{Sample, Timeline},
    },
    source::{Source, SourceError, runtime},
    table::Table,
};

/// Runs `ctscope profile`.
pub fn run(args: &ProfileArgs) -> Result<()> {
    if args.source.all_netns {
        return Err(usage(
            "--all-netns is for `events`: profile reconciles its table with dumps of one namespace",
        ));
    }
    let stop = stop_on_signals(true)?;
    let mut sock = CtSocket::open()?;
    let before = pressure_counters(&mut sock)?;
    let source = Source::open(&args.source.config(
        EventMask::default(),
        Updates::IfAvailable,
        false,
    ))?;
    // A file that cannot be written fails now, not after the run (and
    // after the privilege checks, so a refused run leaves no file).
    let mut html_file = match &args.html {
        Some(path) => Some((
            path,
            File::create(path)
                .map_err(|e| CliError::Failed(format!("cannot write {}: {e}", path.display())))?,
        )),
        None => None,
    };
    let updates = source.updates_from();
    if let Some(line) = source.startup_line() {
        eprintln!("{line}");
    }
    let runtime =
        runtime().map_err(|e| CliError::Failed(format!("cannot start the runtime: {e}")))?;
    let start = Instant::now();
    let deadline = start.checked_add(args.duration);
    let mut table = Table::new();
    table.resync(dump_all()?, start);
    // The churn counts only what happens during the run.
    table.stats.new_total = 0;
    table.stats.destroy_total = 0;
    let mut progress = Progress::new(deadline.map(|_| args.duration));
    let mut timeline = Timeline::default();
    let read = runtime.block_on(async {
        let mut reader = source.reader()?;
        let mut gone = None;
        while !stop.load(Ordering::Relaxed) && deadline.is_none_or(|d| Instant::now() < d) {
            let now = Instant::now();
            let elapsed = now.duration_since(start);
            if timeline.due(elapsed) {
                timeline.record(elapsed, sample(&table));
            }
            let lost = reader.lost();
            progress.tick(
                now,
                elapsed,
                Counts {
                    new: table.stats.new_total,
                    destroy: table.stats.destroy_total,
                    lost: lost.total(),
                },
            );
            let read = reader
                .read(Duration::from_millis(100), |ev| {
                    table.apply(ev.kind, ev.ct, now, ev.delivery_ns);
                })
                .await;
            match read {
                // A loss leaves the table short: a dump puts it right, as
                // top does (the churn counts stay what the events said).
                Ok(stats) if stats.lost.any() => {
                    if let Ok(dump) = dump_all() {
                        table.resync(dump, Instant::now());
                    }
                }
                Ok(_) => {}
                // The report of what was seen still comes (ctscope's own
                // sockets keep the namespace alive), then the reason, exit 1.
                Err(SourceError::NamespaceGone(msg)) => {
                    gone = Some(msg);
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok::<_, SourceError>((reader.name(), reader.lost(), gone))
    });
    progress.clear();
    let (source_name, lost, gone) = read?;
    let elapsed = start.elapsed();
    table.resync(dump_all()?, Instant::now());
    timeline.record(elapsed, sample(&table));
    let elapsed = elapsed.as_secs_f64();
    let after = pressure_counters(&mut sock)?;
    let pressure = Pressure {
        count: table.len() as u64,
        max: read_sysctl("nf_conntrack_max"),
        early_drop: after[0].saturating_sub(before[0]),
        insert_failed: after[1].saturating_sub(before[1]),
        drop: after[2].saturating_sub(before[2]),
    };
    let by_reason = report::LostByReason::of(&lost);
    let lost = lost.total();
    let mut report = report::report(&table, elapsed, source_name, lost, pressure, args.top);
    report.updates = updates;
    report.lost_by_reason = by_reason;
    let mut out = io::stdout().lock();
    match args.output.as_str() {
        "json" => {
            let line = serde_json::to_string(&report)
                .map_err(|e| CliError::Failed(format!("json: {e}")))?;
            writeln!(out, "{line}")?;
        }
        "hgrm" => out.write_all(report::hgrm(&report::histograms(&table.stats)).as_bytes())?,
        _ => out.write_all(report::text(&report).as_bytes())?,
    }
    out.flush()?;
    if let Some((path, file)) = &mut html_file {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".to_string(), |k| k.trim().to_string());
        let page = html::page(&Run {
            report: &report,
            histograms: &report::histograms(&table.stats),
            timeline: &timeline,
            kernel: &kernel,
        })
        .map_err(|e| CliError::Failed(e.to_string()))?;
        file.write_all(page.as_bytes())
            .and_then(|()| file.flush())
            .map_err(|e| CliError::Failed(format!("cannot write {}: {e}", path.display())))?;
    }
    match gone {
        Some(msg) => Err(CliError::Failed(msg)),
        None => Ok(()),
    }
}

/// A reading of the run for the timeline: counts so far and the table's
/// size against nf_conntrack_max.
fn sample(table: &Table) -> Sample {
    Sample {
        secs: 0.0,
        new: table.stats.new_total,
        destroy: table.stats.destroy_total,
        entries: table.len() as u64,
        max: read_sysctl("nf_conntrack_max"),
    }
}
