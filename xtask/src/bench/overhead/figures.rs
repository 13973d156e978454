//! The arithmetic: one kernel's figures per mode, from its transcript,
//! and the targets they are held to.
use anyhow::{Result, anyhow, bail};

use super::{
    MODES, range,
    transcript::{Guest, ListenerRun, Lost, Run, Transcript, lost_of},
};
use crate::bench::measure::spread_f64;

/// One mode's figures over the rounds of one boot. Rates are new flows a
/// second of guest time; µs are guest µs.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct ModeFigures {
    /// The transcript has no run of this mode (one made before the mode
    /// existed): nothing below is measured, and no table shows it.
    pub(super) absent: bool,
    /// Median, min, max over the rounds.
    pub(super) rate: (f64, f64, f64),
    /// Median rate over the median rate with no listener.
    pub(super) ratio: f64,
    /// 1e6 / rate - 1e6 / rate with no listener (medians).
    pub(super) total_extra_us: f64,
    /// The listener's CPU from its first event to the end of the churn,
    /// per churned flow (median over rounds).
    pub(super) consumer_churn_us_per_flow: Option<f64>,
    /// The listener's CPU from its first event until it had written the
    /// flush's DESTROY events, per line it wrote (median over rounds).
    pub(super) consumer_us_per_event: Option<f64>,
    /// The same split: CPU until the NEW events were written over the
    /// lines then, and the rest over the DESTROY phase's lines.
    pub(super) consumer_us_per_new: Option<f64>,
    pub(super) consumer_us_per_destroy: Option<f64>,
    /// total extra - the consumer's CPU during the churn, per flow.
    pub(super) kernel_extra_us: f64,
    /// ctchurn's own CPU per flow minus the same with no listener (medians;
    /// 10 ms ticks, so ±1 µs at 20,000 flows).
    pub(super) churn_extra_us: Option<f64>,
    /// kernel_extra_us as a percentage of a flow's cost with no listener.
    pub(super) kernel_extra_pct: f64,
    /// NEW and DESTROY lines of the churn's flows: min, max over rounds.
    pub(super) new: Option<(u64, u64)>,
    pub(super) destroy: Option<(u64, u64)>,
    /// Start-up time to the first event, s: median, min, max.
    pub(super) startup_s: Option<(f64, f64, f64)>,
    /// Median time from the first caught probe's sending to its line, s.
    pub(super) delivery_s: Option<f64>,
    /// Median guest time the probes took during start-up, s.
    pub(super) probe_s: Option<f64>,
    /// Rounds whose first line was not of the first probe sent.
    pub(super) missed_first_probe: usize,
    /// Losses summed over rounds.
    pub(super) lost: Lost,
    /// Bytes written only on exit (held in a buffer), summed over rounds.
    pub(super) buffered_bytes: u64,
    /// The listener's CPU from /proc/PID/stat over schedstat's, total
    /// (to show the tick resolution's error).
    pub(super) stat_vs_schedstat: Option<f64>,
}

/// One kernel's figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct KernelFigures {
    pub(super) release: String,
    pub(super) guest: Guest,
    pub(super) flows: u64,
    pub(super) rounds: usize,
    /// A flow's cost with no listener: 1e6 / median rate, µs.
    pub(super) base_us: f64,
    /// ctchurn's own CPU per flow with no listener, µs.
    pub(super) base_churn_us: Option<f64>,
    pub(super) modes: Vec<ModeFigures>,
}

fn median(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    spread_f64(values).map(|s| s.0)
}

fn min_max(values: impl IntoIterator<Item = u64>) -> Option<(u64, u64)> {
    values.into_iter().fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// Checks that the transcript is complete and valid and works out the
/// figures. An invalid run (conntrack -S counted drops, or the table lost
/// entries) is an error: its rate would measure the drops.
pub(super) fn figures(t: &Transcript, flows: u64, rounds: usize) -> Result<KernelFigures> {
    if !t.done {
        bail!("the guest did not finish (no CTSCOPE-OVERHEAD-DONE)");
    }
    let guest = t
        .guest
        .clone()
        .ok_or_else(|| anyhow!("no CTSCOPE-OVERHEAD-GUEST line"))?;
    let mut invalid = Vec::new();
    for run in &t.runs {
        let name = MODES[run.mode].name;
        if let Some(why) = &run.invalid {
            invalid.push(format!("{name} round {}: {why}", run.round));
        } else if run.early_drop + run.drop + run.insert_failed > 0 {
            invalid.push(format!(
                "{name} round {}: early_drop={} drop={} insert_failed={}",
                run.round, run.early_drop, run.drop, run.insert_failed
            ));
        } else if run.entries < run.flows {
            invalid.push(format!(
                "{name} round {}: {} entries after {} new flows",
                run.round, run.entries, run.flows
            ));
        }
    }
    if !invalid.is_empty() {
        bail!(
            "invalid runs (the table dropped entries, so the rates would measure drops):\n  {}",
            invalid.join("\n  ")
        );
    }
    let per_mode: Vec<Vec<&Run>> = (0..MODES.len()).map(|m| t.runs_of(m)).collect();
    for (mode, runs) in MODES.iter().zip(&per_mode) {
        // A mode with no run at all is one this transcript predates; one
        // with some runs must have them all.
        if runs.is_empty() && mode.name != "none" {
            continue;
        }
        let complete = runs
            .iter()
            .filter(|r| r.rate.is_some() && r.flows == flows)
            .count();
        if complete != rounds || runs.len() != rounds {
            bail!(
                "{} of {rounds} complete runs of {} (each with a ctchurn rate and {flows} flows)",
                complete,
                mode.name
            );
        }
    }
    let rates = |runs: &[&Run]| -> Option<(f64, f64, f64)> {
        spread_f64(runs.iter().filter_map(|r| r.rate))
    };
    let base = rates(&per_mode[0]).ok_or_else(|| anyhow!("no rate without a listener"))?;
    if base.0 <= 0.0 {
        bail!("a rate of 0 flows/s without a listener");
    }
    let base_us = 1e6 / base.0;
    let churn_us = |runs: &[&Run]| {
        median(
            runs.iter()
                .filter_map(|r| r.churn_ticks)
                .map(|ticks| ticks as f64 * 1e4 / flows as f64),
        )
    };
    let base_churn_us = churn_us(&per_mode[0]);
    let mut modes = Vec::new();
    for runs in &per_mode {
        if runs.is_empty() {
            modes.push(ModeFigures {
                absent: true,
                ..ModeFigures::default()
            });
            continue;
        }
        let rate = rates(runs).ok_or_else(|| anyhow!("no rate"))?;
        let total_extra_us = 1e6 / rate.0.max(1e-9) - base_us;
        let listeners: Vec<&ListenerRun> =
            runs.iter().filter_map(|r| r.listener.as_ref()).collect();
        let consumer_churn_us_per_flow =
            median(listeners.iter().map(|l| {
                l.cpu_churn_ns.saturating_sub(l.cpu_ready_ns) as f64 / 1e3 / flows as f64
            }));
        let consumer_us_per_event =
            median(listeners.iter().filter(|l| l.lines > 0).map(|l| {
                l.cpu_total_ns.saturating_sub(l.cpu_ready_ns) as f64 / 1e3 / l.lines as f64
            }));
        let consumer_us_per_new = median(listeners.iter().filter_map(|l| {
            let (cpu, lines) = (l.cpu_new_ns?, l.new_lines?);
            (lines > 0).then(|| cpu.saturating_sub(l.cpu_ready_ns) as f64 / 1e3 / lines as f64)
        }));
        let consumer_us_per_destroy = median(listeners.iter().filter_map(|l| {
            let (cpu, lines) = (l.cpu_new_ns?, l.lines.checked_sub(l.new_lines?)?);
            (lines > 0).then(|| l.cpu_total_ns.saturating_sub(cpu) as f64 / 1e3 / lines as f64)
        }));
        let kernel_extra_us = total_extra_us - consumer_churn_us_per_flow.unwrap_or(0.0);
        let lost = runs.iter().fold(Lost::default(), |acc, r| {
            let l = lost_of(&r.stderr);
            Lost {
                ring_full: acc.ring_full + l.ring_full,
                overruns: acc.overruns + l.overruns,
                enobufs_warnings: acc.enobufs_warnings + l.enobufs_warnings,
                shown: match (acc.shown, l.shown) {
                    (Some(a), Some(b)) => Some(a + b),
                    (a, b) => a.or(b),
                },
            }
        });
        let schedstat: u64 = listeners.iter().map(|l| l.cpu_total_ns).sum();
        let stat_ns: u64 = listeners.iter().map(|l| l.stat_total * 10_000_000).sum();
        modes.push(ModeFigures {
            absent: false,
            rate,
            ratio: rate.0 / base.0,
            total_extra_us,
            consumer_churn_us_per_flow,
            consumer_us_per_event,
            consumer_us_per_new,
            consumer_us_per_destroy,
            kernel_extra_us,
            churn_extra_us: churn_us(runs).zip(base_churn_us).map(|(m, b)| m - b),
            kernel_extra_pct: kernel_extra_us * 100.0 / base_us,
            new: min_max(listeners.iter().map(|l| l.new)),
            destroy: min_max(listeners.iter().map(|l| l.destroy)),
            startup_s: spread_f64(listeners.iter().map(|l| l.startup_ns as f64 / 1e9)),
            delivery_s: median(listeners.iter().filter_map(|l| {
                l.probe_sent_ns
                    .map(|sent| l.startup_ns.saturating_sub(sent) as f64 / 1e9)
            })),
            probe_s: median(listeners.iter().map(|l| l.probe_ns as f64 / 1e9)),
            missed_first_probe: listeners
                .iter()
                .filter(|l| l.first_probe != Some(0))
                .count(),
            lost,
            buffered_bytes: listeners
                .iter()
                .map(|l| l.final_bytes.saturating_sub(l.settled_bytes))
                .sum(),
            stat_vs_schedstat: (schedstat > 0).then(|| stat_ns as f64 / schedstat as f64),
        });
    }
    Ok(KernelFigures {
        release: guest.release.clone(),
        guest,
        flows,
        rounds,
        base_us,
        base_churn_us,
        modes,
    })
}

// ------------------------------------------------------------ targets

/// One figure the team has to meet on the target kernel.
pub(super) struct Target {
    pub(super) what: &'static str,
    /// The figure as shown, and whether it meets the target; `None` when
    /// it was not measured.
    pub(super) check: fn(&KernelFigures, u64) -> Option<(String, bool)>,
}

const EBPF: usize = 1;
const EBPF_JSON: usize = 2;

pub(super) const TARGETS: [Target; 7] = [
    Target {
        what: "kernel extra ≤ 5 % of a flow's cost (`ebpf`)",
        check: |k, _| kernel_extra_target(&k.modes[EBPF]),
    },
    Target {
        what: "kernel extra ≤ 5 % of a flow's cost (`ebpf-json`)",
        check: |k, _| kernel_extra_target(&k.modes[EBPF_JSON]),
    },
    Target {
        what: "rate ratio ≥ 0.90 (`ebpf`)",
        check: |k, _| {
            let r = k.modes[EBPF].ratio;
            Some((format!("{r:.3}"), r >= 0.90))
        },
    },
    Target {
        what: "consumer ≤ 3 µs/event (`ebpf`, text)",
        check: |k, _| {
            let us = k.modes[EBPF].consumer_us_per_event?;
            Some((format!("{us:.2} µs"), us <= 3.0))
        },
    },
    Target {
        what: "consumer ≤ 5 µs/event (`ebpf-json`)",
        check: |k, _| {
            let us = k.modes[EBPF_JSON].consumer_us_per_event?;
            Some((format!("{us:.2} µs"), us <= 5.0))
        },
    },
    Target {
        what: "start-up to the first event ≤ 1.5 s (both eBPF modes, slowest round)",
        check: |k, _| {
            let worst = [EBPF, EBPF_JSON]
                .iter()
                .filter_map(|&m| k.modes[m].startup_s.map(|s| s.2))
                .fold(None, |acc: Option<f64>, s| {
                    Some(acc.map_or(s, |a| a.max(s)))
                })?;
            Some((format!("{worst:.3} s"), worst <= 1.5))
        },
    },
    Target {
        what: "events exact: N NEW and N DESTROY in every round (both eBPF modes)",
        check: |k, flows| {
            let mut shown = Vec::new();
            let mut exact = true;
            for m in [EBPF, EBPF_JSON] {
                let (new, destroy) = (k.modes[m].new?, k.modes[m].destroy?);
                exact &= new == (flows, flows) && destroy == (flows, flows);
                shown.push(format!("{} / {}", range(new), range(destroy)));
            }
            Some((shown.join("; "), exact))
        },
    },
];

fn kernel_extra_target(m: &ModeFigures) -> Option<(String, bool)> {
    m.consumer_churn_us_per_flow?;
    Some((
        format!("{:.1} % ({:.2} µs)", m.kernel_extra_pct, m.kernel_extra_us),
        m.kernel_extra_pct <= 5.0,
    ))
}
