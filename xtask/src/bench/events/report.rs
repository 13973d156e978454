//! The events section of the report: one table per kind of burst, the
//! churn rates and how it was measured.
use std::fmt::Write as _;

use super::{
    Burst, BurstRun, CHURN_PAIRS, CTSCOPE_LISTENER, ChurnRates, EventListener, Heard, QUIET,
};
use crate::bench::{
    Ctx,
    measure::{Spread, spread_f64},
    netns::HostSysctl,
    report::{percent, plural, secs, thousands},
};

/// One line on stderr per burst, to follow the bench.
pub(super) fn log_burst(
    burst: Burst,
    run: usize,
    runs: usize,
    listeners: &[EventListener],
    result: &BurstRun,
) {
    let heard: Vec<String> = listeners
        .iter()
        .zip(&result.heard)
        .map(|(l, h)| {
            format!(
                "{} {} ({:.1} %{})",
                l.label,
                thousands(h.shown),
                percent(h.shown, result.expected),
                if h.alive { "" } else { ", dead" }
            )
        })
        .collect();
    let rate = result
        .churn_rate
        .map(|r| format!(" at {}/s", thousands(r as u64)))
        .unwrap_or_default();
    eprintln!(
        "xtask: {} burst {}/{runs} ({} events in {:.2} s{rate}): {}",
        burst.event(),
        run + 1,
        thousands(result.expected),
        result.trigger.as_secs_f64(),
        heard.join("; ")
    );
}

/// Everything the events section reports.
pub(super) struct EventsReport<'a> {
    pub(super) flows: u64,
    pub(super) runs: usize,
    pub(super) new_listeners: &'a [EventListener],
    pub(super) destroy_listeners: &'a [EventListener],
    pub(super) new_runs: &'a [BurstRun],
    pub(super) destroy_runs: &'a [BurstRun],
    pub(super) rates: &'a ChurnRates,
    pub(super) churn_label: String,
    /// 1-minute load average before and after.
    pub(super) load: (String, String),
    pub(super) max: &'a HostSysctl,
}

impl EventsReport<'_> {
    /// The three tables, for stdout and the report.
    pub(super) fn tables(&self) -> String {
        let mut out = String::new();
        let flows = thousands(self.flows);
        let runs = self.runs;
        let _ = writeln!(
            out,
            "#### NEW events while ctchurn creates {flows} UDP flows ({runs} run{})\n",
            plural(runs)
        );
        out.push_str(&burst_table(self.new_listeners, self.new_runs));
        if let Some((median, min, max)) =
            spread_f64(self.new_runs.iter().filter_map(|r| r.churn_rate))
        {
            let _ = writeln!(
                out,
                "\nctchurn's rate with the three listeners subscribed: median {}/s (min {}, max {}).\n",
                thousands(median as u64),
                thousands(min as u64),
                thousands(max as u64)
            );
        }
        let _ = writeln!(
            out,
            "#### DESTROY events while `conntrack -F` flushes the {flows} entries ({runs} run{})\n",
            plural(runs)
        );
        out.push_str(&burst_table(self.destroy_listeners, self.destroy_runs));
        if let Some(flush) = Spread::of(self.destroy_runs.iter().map(|r| r.trigger)) {
            let _ = writeln!(
                out,
                "\n`conntrack -F` of {} entries with the three listeners subscribed: median {} (min {}, max {}).\n",
                thousands(self.destroy_runs.first().map_or(0, |r| r.expected)),
                secs(flush.median),
                secs(flush.min),
                secs(flush.max)
            );
        }
        if let Some(flush) = Spread::of(self.rates.flushes.iter().map(|f| f.1)) {
            let smallest = self.rates.flushes.iter().map(|f| f.0).min().unwrap_or(0);
            let largest = self.rates.flushes.iter().map(|f| f.0).max().unwrap_or(0);
            let sizes = if smallest == largest {
                thousands(largest)
            } else {
                format!("{} to {}", thousands(smallest), thousands(largest))
            };
            let _ = writeln!(
                out,
                "For reference, `conntrack -F` with no listener ({} flushes of {sizes} entries, between the churn-rate runs below): median {} (min {}, max {}).\n",
                self.rates.flushes.len(),
                secs(flush.median),
                secs(flush.min),
                secs(flush.max)
            );
        }
        let _ = writeln!(
            out,
            "#### ctchurn's rate ({flows} UDP flows) with no listener and with `{}` ({CHURN_PAIRS} alternating pairs)\n",
            self.churn_label
        );
        let _ = writeln!(
            out,
            "| during ctchurn | median | each run |\n|---|---:|---|"
        );
        let rows = [
            ("no event listener".to_owned(), &self.rates.quiet),
            (format!("`{}`", self.churn_label), &self.rates.listened),
        ];
        for (label, rates) in rows {
            let each: Vec<String> = rates
                .iter()
                .map(|r| format!("{}/s", thousands(*r as u64)))
                .collect();
            let median = spread_f64(rates.iter().copied()).map_or(0.0, |s| s.0);
            let _ = writeln!(
                out,
                "| {label} | {}/s | {} |",
                thousands(median as u64),
                each.join(", ")
            );
        }
        let quiet = spread_f64(self.rates.quiet.iter().copied()).map_or(0.0, |s| s.0);
        let listened = spread_f64(self.rates.listened.iter().copied()).map_or(0.0, |s| s.0);
        let shown: Vec<String> = self.rates.shown.iter().map(|&n| thousands(n)).collect();
        let _ = writeln!(
            out,
            "\nWith the listener, ctchurn ran at {:.2} times its rate without one (medians). \
             ctscope showed {} events in the listened runs.",
            listened / quiet.max(1e-9),
            shown.join(", ")
        );
        out
    }

    /// The events section of the report.
    pub(super) fn markdown(&self, ctx: &Ctx) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "## Event capture at full churn: ctscope events vs conntrack -E\n"
        );
        let _ = writeln!(out, "{}\n", ctx.command_sentence());
        let _ = writeln!(
            out,
            "{} Load average (1 min) {} before the bench, {} after.\n",
            ctx.machine_sentence(&ctx.machine.conntrack_version),
            self.load.0,
            self.load.1,
        );
        let said = self
            .new_runs
            .first()
            .map(|r| r.heard[CTSCOPE_LISTENER].first_stderr_line.clone())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "Event source: these are ctscope's **ctnetlink** figures, on the host (ctscope said on \
             stderr: `{}`). The eBPF source cannot attach on this host's kernel (no kprobes, \
             fentry refused); its figures come from the qemu guest, measured separately.\n",
            said.replace('`', "'")
        );
        out.push_str(&self.tables());
        let ends: Vec<String> = self
            .new_listeners
            .iter()
            .enumerate()
            .map(|(i, l)| format!("`{}`: {}", l.label, exits(self.new_runs, i)))
            .chain(
                self.destroy_listeners
                    .iter()
                    .enumerate()
                    .map(|(i, l)| format!("`{}`: {}", l.label, exits(self.destroy_runs, i))),
            )
            .collect();
        let _ = writeln!(
            out,
            "\nHow it was measured: one network namespace made for the bench (lo up, an nftables \
             input chain with `ct state new counter`); `nf_conntrack_udp_timeout` and `_stream` \
             set to 3600 s in it so no entry expires; `nf_conntrack_max` (host-wide) {} during \
             the bench ({} before; put back afterwards). Every command ran inside the namespace, \
             entered with setns(2) between fork and exec. Each run is a NEW burst then a DESTROY \
             burst. NEW burst: the three listeners `{}` were started (each run starting with the \
             next one), stdout to a file, stderr to another; once /proc/PID/net/netlink showed \
             each of them in the NEW group, `ctchurn --proto udp --count {} --src-base 127.N.0.1 \
             --dst 127.0.0.1 --dport-base 10000` (N new each run) created the flows at full speed \
             (one datagram per new tuple, sendmmsg, unreplied UDP entries). DESTROY burst: the \
             same with `-e DESTROY`, and `conntrack -F` (timed) deleting the entries. After the \
             burst, once no listener's output had grown for {} s, each listener still running \
             got SIGINT. Events shown = lines printed (one per event; `-o json` is one object a \
             line); % kept = shown over the entries created (`conntrack -C` after the NEW burst) \
             or flushed (before the flush); alive = still running when the outputs had stopped \
             growing, before SIGINT (a listener that gives up on ENOBUFS is not); CPU = the listener's user + \
             system time over its whole life, from wait4(2), per million events shown; caught \
             up = from the end of ctchurn or conntrack -F to the listener's last output (50 ms \
             resolution); socket drops = the Drops column of /proc/PID/net/netlink (sk_drops) \
             of its subscribed sockets just before SIGINT: events the kernel could not queue \
             for it. conntrack 1.4.7 applies `-b` to its first netlink socket, not to the one \
             subscribed to the events (checked by hand with `ss -f netlink -a -m`: 256 MiB \
             granted on the first, the event socket left at 208 KiB), so `-b` does not enlarge \
             the buffer that overflows. Churn rate: ctchurn's own \
             figure (flows over its sending time), {} flows per run, table flushed before each \
             run with no listener running; the listener (stdout to a file) joined NEW, UPDATE \
             and DESTROY before ctchurn started. How the listeners ended: {}.",
            thousands(self.max.value),
            self.max.old,
            self.new_listeners
                .iter()
                .map(|l| l.label.as_str())
                .collect::<Vec<_>>()
                .join("`, `"),
            self.flows,
            QUIET.as_secs(),
            thousands(self.flows),
            ends.join("; ")
        );
        out
    }
}

/// How listener `i` ended over the runs, e.g. "exit status 0 (5)".
fn exits(runs: &[BurstRun], i: usize) -> String {
    let mut seen: Vec<(String, usize)> = Vec::new();
    for run in runs {
        let Some(heard) = run.heard.get(i) else {
            continue;
        };
        let how = if heard.alive {
            format!("{} after SIGINT", heard.exit.describe())
        } else {
            format!("{} on its own during the burst", heard.exit.describe())
        };
        match seen.iter_mut().find(|(h, _)| *h == how) {
            Some((_, n)) => *n += 1,
            None => seen.push((how, 1)),
        }
    }
    seen.iter()
        .map(|(how, n)| format!("{how} ({n})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The table of one kind of burst: one row per listener.
fn burst_table(listeners: &[EventListener], runs: &[BurstRun]) -> String {
    let mut out = String::from(
        "| listener | events shown (median) | % kept (median) | % kept (min) | % kept (max) | alive at the end | CPU s per M events shown (median) | caught up after the burst (median) | socket drops (median) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (i, listener) in listeners.iter().enumerate() {
        let heard: Vec<(&Heard, u64)> = runs
            .iter()
            .filter_map(|r| Some((r.heard.get(i)?, r.expected)))
            .collect();
        let shown = spread_f64(heard.iter().map(|(h, _)| h.shown as f64)).map_or(0.0, |s| s.0);
        let kept = spread_f64(heard.iter().map(|(h, n)| percent(h.shown, *n)));
        let (kept_median, kept_min, kept_max) = kept.unwrap_or_default();
        let alive = heard.iter().filter(|(h, _)| h.alive).count();
        let cpu = spread_f64(
            heard
                .iter()
                .filter(|(h, _)| h.shown > 0)
                .map(|(h, _)| h.cpu.as_secs_f64() * 1e6 / h.shown as f64),
        )
        .map_or_else(|| "-".to_owned(), |s| format!("{:.2}", s.0));
        let caught_up = Spread::of(heard.iter().map(|(h, _)| h.caught_up))
            .map_or_else(|| "-".to_owned(), |s| secs(s.median));
        let drops = spread_f64(heard.iter().filter_map(|(h, _)| h.drops.map(|d| d as f64)))
            .map_or_else(|| "-".to_owned(), |s| thousands(s.0 as u64));
        let _ = writeln!(
            out,
            "| `{}` | {} | {kept_median:.2} % | {kept_min:.2} % | {kept_max:.2} % | {alive}/{} | {cpu} | {caught_up} | {drops} |",
            listener.label,
            thousands(shown as u64),
            heard.len(),
        );
    }
    out
}
