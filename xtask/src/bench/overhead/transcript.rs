//! overhead.sh's lines, read back: the guest, each run's figures and the
//! listener's stderr.
use std::collections::BTreeMap;

use anyhow::{Context as _, Result, anyhow, bail};

use super::{TAG, mode_index};
use crate::bench::events::parse_churn_rate;

/// The guest's CTSCOPE-OVERHEAD-GUEST line.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Guest {
    pub(super) release: String,
    pub(super) cpus: u32,
    /// `timer_list` (ns) or `uptime` (10 ms).
    pub(super) clock: String,
    /// `schedstat` (ns) or `stat` (10 ms ticks).
    pub(super) cputime: String,
    pub(super) buckets: u64,
    pub(super) max: u64,
}

/// What one listener did in one run (overhead.sh's `RUN` fields). CPU
/// times are its threads' schedstat sums in ns, read when its first event
/// was seen (`ready`), when the churn ended (`churn`), once the NEW events
/// were written (`new`) and once the flush's DESTROY events were
/// (`total`); `stat_*` are the same from /proc/PID/stat in 10 ms ticks.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct ListenerRun {
    /// From its start to the first probe flow's line in its output.
    pub(super) startup_ns: u64,
    /// From its start to its stderr start-up line, if it prints one.
    pub(super) ready_ns: Option<u64>,
    pub(super) probes: u64,
    /// Guest time the probe flows' ctchurn runs took.
    pub(super) probe_ns: u64,
    /// Which probe the first line was of (0: the first sent).
    pub(super) first_probe: Option<u64>,
    /// When that probe's ctchurn ended, from the listener's start.
    pub(super) probe_sent_ns: Option<u64>,
    pub(super) cpu_ready_ns: u64,
    pub(super) cpu_churn_ns: u64,
    /// Once the NEW events had settled, before the flush.
    pub(super) cpu_new_ns: Option<u64>,
    pub(super) cpu_total_ns: u64,
    pub(super) stat_ready: u64,
    pub(super) stat_churn: u64,
    pub(super) stat_total: u64,
    /// Lines written once the NEW events had settled.
    pub(super) new_lines: Option<u64>,
    /// Output size once the NEW events had settled, once the DESTROY
    /// events had, and after the listener exited.
    pub(super) new_bytes: u64,
    pub(super) settled_bytes: u64,
    pub(super) final_bytes: u64,
    /// Lines of the churn's flows, and all lines written.
    pub(super) new: u64,
    pub(super) destroy: u64,
    pub(super) lines: u64,
}

/// One run: a mode in a round.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Run {
    pub(super) mode: usize,
    pub(super) round: u32,
    /// Flows per second, from ctchurn's line.
    pub(super) rate: Option<f64>,
    pub(super) flows: u64,
    /// nf_conntrack_count right after the churn.
    pub(super) entries: u64,
    /// ctchurn's own CPU time (the shell's cutime + cstime around it, in
    /// 10 ms ticks).
    pub(super) churn_ticks: Option<u64>,
    /// conntrack -S's counters over the run.
    pub(super) early_drop: u64,
    pub(super) drop: u64,
    pub(super) insert_failed: u64,
    pub(super) listener: Option<ListenerRun>,
    /// The listener's stderr, but its start-up line.
    pub(super) stderr: Vec<String>,
    /// Why the guest called the run invalid.
    pub(super) invalid: Option<String>,
}

/// Everything one boot printed for us.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Transcript {
    pub(super) guest: Option<Guest>,
    pub(super) runs: Vec<Run>,
    /// The eBPF source's delivery latency, per churn pace.
    pub(super) delivery: Vec<Delivery>,
    pub(super) done: bool,
}

/// `ctscope profile --source ebpf`'s delivery latency (kernel timestamp
/// to handling) over one churn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Delivery {
    /// `full` or `N/s`.
    pub(super) pace: String,
    /// Flows the churn made.
    pub(super) flows: u64,
    /// Records measured.
    pub(super) count: u64,
    /// Quantiles, ns.
    pub(super) p50_ns: u64,
    pub(super) p99_ns: u64,
    pub(super) max_ns: u64,
}

/// `key=value` words into a map (words without `=` are skipped).
fn key_values(text: &str) -> BTreeMap<&str, &str> {
    text.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .collect()
}

fn number(fields: &BTreeMap<&str, &str>, key: &str) -> Result<u64> {
    let value = fields.get(key).ok_or_else(|| anyhow!("no {key}="))?;
    value
        .parse()
        .map_err(|_| anyhow!("{key}={value} is not a number"))
}

/// A number, or `None` for the guest's `-` / `?` (not measured).
fn optional_number(fields: &BTreeMap<&str, &str>, key: &str) -> Result<Option<u64>> {
    match fields.get(key) {
        None | Some(&"-") | Some(&"?") => Ok(None),
        Some(_) => number(fields, key).map(Some),
    }
}

/// `<mode> <round> <rest>`.
fn mode_round(rest: &str) -> Result<(usize, u32, &str)> {
    let mut words = rest.splitn(3, ' ');
    let (Some(mode), Some(round)) = (words.next(), words.next()) else {
        bail!("no mode and round");
    };
    let mode = mode_index(mode).ok_or_else(|| anyhow!("unknown mode {mode}"))?;
    let round = round
        .parse()
        .map_err(|_| anyhow!("round {round} is not a number"))?;
    Ok((mode, round, words.next().unwrap_or("").trim()))
}

fn parse_listener(fields: &BTreeMap<&str, &str>) -> Result<ListenerRun> {
    Ok(ListenerRun {
        startup_ns: number(fields, "startup_ns")?,
        ready_ns: optional_number(fields, "ready_ns")?,
        probes: number(fields, "probes")?,
        probe_ns: number(fields, "probe_ns")?,
        first_probe: optional_number(fields, "first_probe")?,
        probe_sent_ns: optional_number(fields, "probe_sent_ns")?,
        cpu_ready_ns: number(fields, "cpu_ready_ns")?,
        cpu_churn_ns: number(fields, "cpu_churn_ns")?,
        cpu_new_ns: optional_number(fields, "cpu_new_ns")?,
        cpu_total_ns: number(fields, "cpu_total_ns")?,
        stat_ready: number(fields, "stat_ready")?,
        stat_churn: number(fields, "stat_churn")?,
        stat_total: number(fields, "stat_total")?,
        new_lines: optional_number(fields, "new_lines")?,
        new_bytes: number(fields, "new_bytes")?,
        settled_bytes: number(fields, "settled_bytes")?,
        final_bytes: number(fields, "final_bytes")?,
        new: number(fields, "new")?,
        destroy: number(fields, "destroy")?,
        lines: number(fields, "lines")?,
    })
}

impl Transcript {
    fn run_mut(&mut self, mode: usize, round: u32) -> &mut Run {
        let i = match self
            .runs
            .iter()
            .position(|r| r.mode == mode && r.round == round)
        {
            Some(i) => i,
            None => {
                self.runs.push(Run {
                    mode,
                    round,
                    ..Run::default()
                });
                self.runs.len() - 1
            }
        };
        &mut self.runs[i]
    }

    /// The runs of one mode, in round order.
    pub(super) fn runs_of(&self, mode: usize) -> Vec<&Run> {
        let mut runs: Vec<&Run> = self.runs.iter().filter(|r| r.mode == mode).collect();
        runs.sort_by_key(|r| r.round);
        runs
    }
}

/// Reads overhead.sh's lines out of the guest's console; a malformed line
/// of ours is an error (naming it), anything else on the console is
/// skipped.
pub(super) fn parse_transcript(text: &str) -> Result<Transcript> {
    let mut t = Transcript::default();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        // The serial console may glue a line to the kernel's last one.
        let Some(at) = line.find(TAG) else { continue };
        let tagged = &line[at + TAG.len()..];
        let (kind, rest) = tagged.split_once(' ').unwrap_or((tagged, ""));
        let parsed: Result<()> = (|| {
            match kind {
                "GUEST" => {
                    let f = key_values(rest);
                    t.guest = Some(Guest {
                        release: f.get("release").copied().unwrap_or("?").to_owned(),
                        cpus: u32::try_from(number(&f, "cpus")?)?,
                        clock: f.get("clock").copied().unwrap_or("?").to_owned(),
                        cputime: f.get("cputime").copied().unwrap_or("?").to_owned(),
                        buckets: number(&f, "buckets")?,
                        max: number(&f, "max")?,
                    });
                }
                "CHURN" => {
                    let (mode, round, churn) = mode_round(rest)?;
                    let rate = parse_churn_rate(churn)
                        .ok_or_else(|| anyhow!("no rate in ctchurn's line"))?;
                    t.run_mut(mode, round).rate = Some(rate);
                }
                "LISTENER" => {
                    let (mode, round, said) = mode_round(rest)?;
                    t.run_mut(mode, round).stderr.push(said.to_owned());
                }
                "INVALID" => {
                    let (mode, round, why) = mode_round(rest)?;
                    t.run_mut(mode, round).invalid = Some(why.to_owned());
                }
                "RUN" => {
                    let (mode, round, rest) = mode_round(rest)?;
                    let f = key_values(rest);
                    let listener = if mode == 0 {
                        None
                    } else {
                        Some(parse_listener(&f)?)
                    };
                    let run = t.run_mut(mode, round);
                    run.flows = number(&f, "flows")?;
                    run.entries = number(&f, "entries")?;
                    run.churn_ticks = optional_number(&f, "churn_ticks")?;
                    run.early_drop = number(&f, "early_drop")?;
                    run.drop = number(&f, "drop")?;
                    run.insert_failed = number(&f, "insert_failed")?;
                    run.listener = listener;
                }
                "DELIVERY" => {
                    let f = key_values(rest);
                    t.delivery.push(Delivery {
                        pace: f.get("pace").copied().unwrap_or("?").to_owned(),
                        flows: number(&f, "flows")?,
                        count: number(&f, "count")?,
                        p50_ns: number(&f, "p50")?,
                        p99_ns: number(&f, "p99")?,
                        max_ns: number(&f, "max")?,
                    });
                }
                "DONE" => t.done = true,
                _ => {}
            }
            Ok(())
        })();
        parsed.with_context(|| format!("cannot read the guest's line {line:?}"))?;
    }
    Ok(t)
}

/// What a listener said it lost, from its stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Lost {
    /// ctscope: events dropped because the eBPF ring buffer was full.
    pub(super) ring_full: u64,
    /// ctscope: netlink receive buffer overruns (ENOBUFS).
    pub(super) overruns: u64,
    /// conntrack -E: its ENOBUFS warnings (one per overrun it saw).
    pub(super) enobufs_warnings: u64,
    /// The listener's own count of what it showed.
    pub(super) shown: Option<u64>,
}

/// The number just before `marker` in `line`, if any.
fn number_before(line: &str, marker: &str) -> Option<u64> {
    let (head, _) = line.split_once(marker)?;
    head.split_whitespace().last()?.parse().ok()
}

pub(super) fn lost_of(stderr: &[String]) -> Lost {
    let mut lost = Lost::default();
    for line in stderr {
        if let Some(n) = number_before(line, "events lost") {
            lost.ring_full += n;
        } else if let Some(n) = number_before(line, "receive buffer overruns") {
            lost.overruns += n;
        } else if line.contains("hit ENOBUFS") {
            lost.enobufs_warnings += 1;
        } else if let Some(n) = number_before(line, "flow events have been shown") {
            lost.shown = Some(n);
        }
    }
    lost
}
