//! The events benchmark: ctscope events against conntrack -E during bursts
//! of new and destroyed entries, and what a listener costs the kernel's
//! churn rate.
mod report;
mod running;

use std::{
    fs::{self, File},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use self::{
    report::{EventsReport, log_burst},
    running::{Running, wait_caught_up, wait_subscribed},
};
use super::{
    Ctx, Section,
    measure::{Exited, Stdout, count_lines, measure},
    netns::{Netns, check_interrupted, ctchurn_udp, foreign_entries, read_sysctl, table_netns},
    report::percent,
    rotated, tolerance,
};

/// New UDP flows per burst: as many NEW events, then as many DESTROY events
/// when they are flushed.
const EVENT_FLOWS: u64 = 500_000;
/// The same, with --quick.
const EVENT_FLOWS_QUICK: u64 = 20_000;
/// With --quick the bench fails when ctscope shows less than this share of a
/// burst (percent), or has died by its end.
const QUICK_MIN_KEPT: f64 = 99.9;
/// What conntrack -E is asked for with -b (128 MiB).
const CONNTRACK_E_BUFFER: &str = "134217728";
/// Alternating (no listener, listener) pairs of the churn-rate measurement.
const CHURN_PAIRS: usize = 3;
/// The listeners have caught up once none of their outputs grew for this long.
const QUIET: Duration = Duration::from_secs(1);
/// Longest wait for the listeners to catch up after a burst.
const DRAIN_CAP: Duration = Duration::from_secs(180);
/// Longest wait for the listeners to join their netlink groups.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait for the kernel to free the entries of a deleted namespace.
const TEARDOWN_CAP: Duration = Duration::from_secs(60);
/// How long a listener gets to exit after SIGINT before SIGKILL.
const EXIT_GRACE: Duration = Duration::from_secs(10);
/// NETLINK_NETFILTER: the Eth column of /proc/net/netlink.
const NETLINK_NETFILTER: u32 = 12;
/// Bits of the Groups column of /proc/net/netlink (group N is bit N-1):
/// NFNLGRP_CONNTRACK_NEW (1), _UPDATE (2) and _DESTROY (3).
const GROUP_NEW: u32 = 1;
const GROUP_UPDATE: u32 = 1 << 1;
const GROUP_DESTROY: u32 = 1 << 2;

/// What makes the events of a burst.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Burst {
    /// ctchurn creating the flows: NEW events.
    New,
    /// conntrack -F deleting them: DESTROY events.
    Destroy,
}

impl Burst {
    fn event(self) -> &'static str {
        match self {
            Self::New => "NEW",
            Self::Destroy => "DESTROY",
        }
    }

    fn group(self) -> u32 {
        match self {
            Self::New => GROUP_NEW,
            Self::Destroy => GROUP_DESTROY,
        }
    }
}

/// One event listener the events benchmark runs.
struct EventListener {
    /// The command as the report shows it.
    label: String,
    program: PathBuf,
    args: Vec<String>,
}

impl EventListener {
    fn new(name: &str, program: PathBuf, args: &[&str]) -> Self {
        Self {
            label: format!("{name} {}", args.join(" ")),
            program,
            args: args.iter().map(|&a| a.to_owned()).collect(),
        }
    }

    fn command(&self, netns: &Netns) -> Command {
        let mut cmd = netns.command(&self.program);
        cmd.args(&self.args);
        cmd
    }
}

/// Where ctscope is in [`event_listeners`].
const CTSCOPE_LISTENER: usize = 0;

/// ctscope events and conntrack -E (default buffer and -b), for one kind of
/// event.
fn event_listeners(ctx: &Ctx, burst: Burst) -> Vec<EventListener> {
    let event = burst.event();
    vec![
        EventListener::new(
            "ctscope",
            ctx.ctscope.clone(),
            &["events", "-e", event, "-o", "json"],
        ),
        EventListener::new("conntrack", "conntrack".into(), &["-E", "-e", event]),
        EventListener::new(
            "conntrack",
            "conntrack".into(),
            &["-E", "-e", event, "-b", CONNTRACK_E_BUFFER],
        ),
    ]
}

/// What one listener did in one burst.
#[derive(Clone, Debug)]
struct Heard {
    /// Lines printed: one per event.
    shown: u64,
    /// Still running when the burst was over and the outputs had stopped
    /// growing.
    alive: bool,
    /// User + system CPU over its whole life (wait4).
    cpu: Duration,
    /// From the end of the burst to its last output.
    caught_up: Duration,
    /// sk_drops of its subscribed sockets just before SIGINT (when alive).
    drops: Option<u64>,
    /// How it ended (after SIGINT, or on its own).
    exit: Exited,
    /// The first line of its stderr (ctscope says there which event source
    /// it uses).
    first_stderr_line: String,
}

/// One burst.
struct BurstRun {
    /// Events the kernel generated: entries created or flushed.
    expected: u64,
    /// Wall time of the command that made the burst (ctchurn or conntrack -F).
    trigger: Duration,
    /// ctchurn's own figure, flows per second (NEW bursts).
    churn_rate: Option<f64>,
    /// Per listener, in [`event_listeners`] order.
    heard: Vec<Heard>,
}

/// Parses ctchurn's last stderr line, `ctchurn: N flows in S s (R flows/s)`,
/// into flows per second.
pub(super) fn parse_churn_rate(stderr: &str) -> Option<f64> {
    let line = stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("ctchurn: "))?;
    let mut words = line.split_whitespace();
    let flows: f64 = words.next()?.parse().ok()?;
    if words.next()? != "flows" || words.next()? != "in" {
        return None;
    }
    let secs: f64 = words.next()?.parse().ok()?;
    (secs > 0.0).then(|| flows / secs)
}

/// Runs ctchurn in the namespace, `flows` new UDP flows from addresses of
/// their own (127.(20 + `net` % 200).0.x); returns its rate (flows per
/// second) and wall time.
fn churn(ctx: &Ctx, netns: &Netns, flows: u64, net: u64) -> Result<(f64, Duration)> {
    let stderr_path = ctx.scratch.join("events-ctchurn.stderr");
    let outcome = measure(
        &mut ctchurn_udp(ctx, netns, flows, 20 + net % 200),
        Stdout::Null,
        &stderr_path,
    )?;
    let wall = outcome.sample.wall;
    let rate = parse_churn_rate(&fs::read_to_string(&stderr_path).unwrap_or_default())
        .unwrap_or(flows as f64 / wall.as_secs_f64().max(1e-9));
    Ok((rate, wall))
}

/// Empties the namespace's table (no listener running), checks it is, and
/// says how many entries `conntrack -F` deleted and how long it took.
fn flush_table(ctx: &Ctx, netns: &Netns) -> Result<(u64, Duration)> {
    let before = netns.count()?;
    let took = conntrack_flush(ctx, netns)?;
    let left = netns.count()?;
    if left > 0 {
        bail!("{left} conntrack entries are left after conntrack -F");
    }
    Ok((before, took))
}

/// Runs `conntrack -F` in the namespace; returns its wall time.
fn conntrack_flush(ctx: &Ctx, netns: &Netns) -> Result<Duration> {
    let outcome = measure(
        netns.command("conntrack").arg("-F"),
        Stdout::Null,
        &ctx.scratch.join("events-flush.stderr"),
    )?;
    Ok(outcome.sample.wall)
}

/// Starts the listeners (each round starting with the next one), waits
/// until they are subscribed, makes the burst, waits until their output
/// stops growing, and stops them with SIGINT.
fn run_burst(
    ctx: &Ctx,
    netns: &Netns,
    burst: Burst,
    listeners: &[EventListener],
    run: usize,
    flows: u64,
) -> Result<BurstRun> {
    let slack = tolerance(flows);
    let before = netns.count()?;
    match burst {
        Burst::New if before != 0 => {
            bail!("the namespace holds {before} entries before the NEW burst, not 0")
        }
        Burst::Destroy if before.abs_diff(flows) > slack => {
            bail!("the namespace holds {before} entries before the flush, not about {flows}")
        }
        _ => {}
    }

    let n = listeners.len();
    let mut slots: Vec<Option<Running>> = (0..n).map(|_| None).collect();
    for i in rotated(run, n) {
        slots[i] = Some(Running::spawn(
            &mut listeners[i].command(netns),
            ctx.scratch.join(format!("events-{i}.out")),
            ctx.scratch.join(format!("events-{i}.stderr")),
        )?);
    }
    let mut running: Vec<Running> = slots.into_iter().flatten().collect();
    let labels: Vec<&str> = listeners.iter().map(|l| l.label.as_str()).collect();
    wait_subscribed(&mut running, &labels, burst.group())?;

    let (trigger, churn_rate) = match burst {
        Burst::New => {
            let (rate, wall) = churn(ctx, netns, flows, run as u64)?;
            (wall, Some(rate))
        }
        Burst::Destroy => (conntrack_flush(ctx, netns)?, None),
    };
    let grew = wait_caught_up(&running)?;

    let mut heard = Vec::with_capacity(n);
    for (listener, caught_up) in running.iter_mut().zip(grew) {
        let alive = listener.alive()?;
        let drops = alive.then(|| listener.socket_drops(burst.group()));
        let exit = listener.interrupt()?;
        let shown = count_lines(
            File::open(&listener.stdout)
                .with_context(|| format!("cannot read {}", listener.stdout.display()))?,
        )
        .context("counting events")?;
        let first_stderr_line = fs::read_to_string(&listener.stderr)
            .unwrap_or_default()
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        // Hundreds of MB of JSON a burst: not kept.
        let _ = fs::remove_file(&listener.stdout);
        heard.push(Heard {
            shown,
            alive,
            cpu: exit.cpu(),
            caught_up,
            drops,
            exit,
            first_stderr_line,
        });
    }

    let after = netns.count()?;
    let expected = match burst {
        Burst::New => {
            if after.abs_diff(flows) > slack {
                bail!("after the NEW burst of {flows} flows the namespace holds {after} entries");
            }
            after
        }
        Burst::Destroy => {
            if after > 0 {
                bail!("{after} entries are left after conntrack -F");
            }
            before
        }
    };
    Ok(BurstRun {
        expected,
        trigger,
        churn_rate,
        heard,
    })
}

/// Churn rates without and with a listener.
struct ChurnRates {
    /// Flows per second with no listener.
    quiet: Vec<f64>,
    /// Flows per second with ctscope subscribed to NEW, UPDATE and DESTROY.
    listened: Vec<f64>,
    /// Events ctscope showed in each listened run.
    shown: Vec<u64>,
    /// `conntrack -F` with no listener, between the runs: entries deleted
    /// and wall time.
    flushes: Vec<(u64, Duration)>,
}

/// The ctscope command of the churn-rate measurement.
fn churn_listener(ctx: &Ctx) -> EventListener {
    EventListener::new(
        "ctscope",
        ctx.ctscope.clone(),
        &["events", "-e", "NEW,UPDATE,DESTROY", "-o", "json"],
    )
}

/// [`CHURN_PAIRS`] alternating pairs of ctchurn runs, without and with
/// ctscope events listening; the table is flushed (no listener) before each.
fn churn_rates(ctx: &Ctx, netns: &Netns, flows: u64) -> Result<ChurnRates> {
    let listener = churn_listener(ctx);
    let mut rates = ChurnRates {
        quiet: Vec::new(),
        listened: Vec::new(),
        shown: Vec::new(),
        flushes: Vec::new(),
    };
    for pair in 0..CHURN_PAIRS {
        for listened in [pair % 2 == 1, pair % 2 == 0] {
            check_interrupted()?;
            let (flushed, took) = flush_table(ctx, netns)?;
            if flushed > 0 {
                rates.flushes.push((flushed, took));
            }
            let net = 100 + rates.quiet.len() as u64 + rates.listened.len() as u64;
            let check_count = || -> Result<()> {
                let count = netns.count()?;
                if count.abs_diff(flows) > tolerance(flows) {
                    bail!("after a churn of {flows} flows the namespace holds {count} entries");
                }
                Ok(())
            };
            if !listened {
                rates.quiet.push(churn(ctx, netns, flows, net)?.0);
                check_count()?;
                continue;
            }
            let mut running = [Running::spawn(
                &mut listener.command(netns),
                ctx.scratch.join("events-churn.out"),
                ctx.scratch.join("events-churn.stderr"),
            )?];
            wait_subscribed(
                &mut running,
                &[listener.label.as_str()],
                GROUP_NEW | GROUP_UPDATE | GROUP_DESTROY,
            )?;
            rates.listened.push(churn(ctx, netns, flows, net)?.0);
            check_count()?;
            wait_caught_up(&running)?;
            let [mut running] = running;
            running.interrupt()?;
            rates.shown.push(
                count_lines(File::open(&running.stdout).context("cannot read ctscope's output")?)
                    .context("counting events")?,
            );
            let _ = fs::remove_file(&running.stdout);
        }
        eprintln!("xtask: churn rate pair {}/{CHURN_PAIRS} done", pair + 1);
    }
    let (flushed, took) = flush_table(ctx, netns)?;
    rates.flushes.push((flushed, took));
    Ok(rates)
}

/// Number of nf_conntrack objects in use, from /proc/slabinfo: entries of
/// all namespaces, including those of deleted namespaces not yet freed.
fn conntrack_objects() -> Option<u64> {
    let slabinfo = fs::read_to_string("/proc/slabinfo").ok()?;
    slabinfo.lines().find_map(|line| {
        let mut cols = line.split_whitespace();
        (cols.next()? == "nf_conntrack").then_some(())?;
        cols.next()?.parse().ok()
    })
}

/// A deleted namespace's entries (the listing bench's million) are freed by
/// a kernel worker after `ip netns del` returns; waits for it, so that work
/// does not compete with the bursts.
fn wait_for_conntrack_teardown(own: &str) {
    let start = Instant::now();
    let mut last = (u64::MAX, Instant::now());
    loop {
        let Some(objects) = conntrack_objects() else {
            return;
        };
        let live = foreign_entries(own);
        if objects <= live + 5_000 {
            return;
        }
        if objects < last.0 {
            last = (objects, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(3) {
            // Not going down any more: slab caches keep some objects.
            return;
        }
        if start.elapsed() > TEARDOWN_CAP {
            eprintln!(
                "xtask: {objects} conntrack objects still allocated (live entries {live}) after {} s; going on",
                TEARDOWN_CAP.as_secs()
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// ctscope events against conntrack -E while 500,000 flows are created and
/// then flushed, and the churn rate with and without a listener.
pub(super) fn events(ctx: &Ctx) -> Result<Section> {
    let quick = ctx.args.quick;
    let flows = if quick {
        EVENT_FLOWS_QUICK
    } else {
        EVENT_FLOWS
    };
    let runs = ctx.args.runs.unwrap_or(if quick { 1 } else { 5 }).max(1);

    // Unreplied UDP entries live an hour in it: the flush must find all of
    // them.
    let (max_guard, netns) = table_netns(flows)?;
    wait_for_conntrack_teardown(&netns.name);
    let load_before = load_average();
    eprintln!(
        "xtask: events bench in netns {} (nf_conntrack_max {}), {flows} flows, {runs} runs; load average {load_before}",
        netns.name,
        read_sysctl("net.netfilter.nf_conntrack_max"),
    );

    let new_listeners = event_listeners(ctx, Burst::New);
    let destroy_listeners = event_listeners(ctx, Burst::Destroy);
    let mut new_runs = Vec::new();
    let mut destroy_runs = Vec::new();
    for run in 0..runs {
        check_interrupted()?;
        let new = run_burst(ctx, &netns, Burst::New, &new_listeners, run, flows)?;
        log_burst(Burst::New, run, runs, &new_listeners, &new);
        new_runs.push(new);
        check_interrupted()?;
        let destroy = run_burst(ctx, &netns, Burst::Destroy, &destroy_listeners, run, flows)?;
        log_burst(Burst::Destroy, run, runs, &destroy_listeners, &destroy);
        destroy_runs.push(destroy);
    }
    let rates = churn_rates(ctx, &netns, flows)?;
    let load_after = load_average();

    let report = EventsReport {
        flows,
        runs,
        new_listeners: &new_listeners,
        destroy_listeners: &destroy_listeners,
        new_runs: &new_runs,
        destroy_runs: &destroy_runs,
        rates: &rates,
        churn_label: churn_listener(ctx).label,
        load: (load_before, load_after),
        max: &max_guard,
    };
    println!("{}", report.tables());
    let markdown = report.markdown(ctx);
    drop(netns);

    if quick {
        for (burst, results) in [(Burst::New, &new_runs), (Burst::Destroy, &destroy_runs)] {
            for result in results.iter() {
                let heard = &result.heard[CTSCOPE_LISTENER];
                let kept = percent(heard.shown, result.expected);
                if kept < QUICK_MIN_KEPT || !heard.alive {
                    bail!(
                        "ctscope events showed {} of {} {} events ({kept:.2} %, at least {QUICK_MIN_KEPT} % wanted){}",
                        heard.shown,
                        result.expected,
                        burst.event(),
                        if heard.alive {
                            ""
                        } else {
                            " and had died by the end of the burst"
                        }
                    );
                }
            }
        }
    }
    Ok(Section {
        name: "events",
        markdown,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn churn_rate_from_its_last_line() {
        let rate =
            parse_churn_rate("warming up\nctchurn: 20000 flows in 0.400 s (50000 flows/s)\n")
                .expect("parses");
        assert!((rate - 50_000.0).abs() < 1e-6);
        assert_eq!(parse_churn_rate("ctchurn: 20000 flows in 0 s"), None);
        assert_eq!(parse_churn_rate("ctchurn: cannot bind"), None);
        assert_eq!(parse_churn_rate(""), None);
    }
}
