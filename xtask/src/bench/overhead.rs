//! The overhead benchmark: what a conntrack listener costs, in qemu guests
//! under `-icount` (guest time is instruction time, so runs repeat): the
//! churn's rate of new flows with each listener, the listener's own CPU
//! time per event, the kernel's part of the slowdown, the listener's
//! start-up time to its first event and the events it wrote.
//!
//! tests/vm/bench/overhead.sh does the runs and prints one line per fact;
//! this file boots the guests, parses those lines, does the arithmetic and
//! writes the report.
mod figures;
#[cfg(test)]
mod tests;
mod transcript;

use std::{
    fmt::Write as _,
    fs::{self, File},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use self::{
    figures::{KernelFigures, TARGETS, figures},
    transcript::{Lost, Transcript, parse_transcript},
};
use super::{Ctx, Section, netns::check_interrupted, report::thousands};

/// The guest kernels the overhead bench boots by default.
const DEFAULT_KERNELS: [&str; 2] = ["6.1", "6.12"];
/// The kernel the targets are set for.
const TARGET_KERNEL: &str = "6.12";
/// New UDP flows per ctchurn run in the guest.
const DEFAULT_FLOWS: u64 = 20_000;
/// Rounds of all modes, rotated. Under -icount the rates repeat within
/// about 0.3 %; three rounds of 20,000 flows keep one kernel's boot and
/// runs within a few minutes of wall time.
const DEFAULT_ROUNDS: usize = 3;
/// The guest script (under tests/vm/bench/, which vm-test does not run).
const OVERHEAD_SCRIPT: &str = "/vm/bench/overhead.sh";
/// The marker every line of the guest script for us starts with.
const TAG: &str = "CTSCOPE-OVERHEAD-";

/// One way of listening, as overhead.sh names it.
struct Mode {
    name: &'static str,
    command: &'static str,
}

/// The modes, in the order of the report; `none` first (the base).
const MODES: [Mode; 6] = [
    Mode {
        name: "none",
        command: "no listener",
    },
    Mode {
        name: "ebpf",
        command: "`ctscope events --source ebpf -e NEW,DESTROY > FILE`",
    },
    Mode {
        name: "ebpf-json",
        command: "`ctscope events --source ebpf -e NEW,DESTROY -o json > FILE`",
    },
    Mode {
        name: "netlink",
        command: "`ctscope events --source netlink -e NEW,DESTROY > FILE`",
    },
    Mode {
        name: "conntrack",
        command: "`conntrack -E -e NEW,DESTROY > FILE`",
    },
    Mode {
        name: "ebpf-updates",
        command: "`ctscope events --source ebpf -e NEW,UPDATE,DESTROY > FILE` with \
                  `nf_conntrack_events=1` for this run (the event cache's kernel cost included)",
    },
];

fn mode_index(name: &str) -> Option<usize> {
    MODES.iter().position(|m| m.name == name)
}

// ------------------------------------------------------------ settings

/// What to run: from the environment, so `--only overhead` needs no flags
/// of its own.
#[derive(Debug, Clone, PartialEq)]
struct Settings {
    kernels: Vec<String>,
    flows: u64,
    rounds: usize,
    icount: bool,
    /// The modes to run, in MODES' order (all by default).
    modes: Vec<&'static str>,
}

impl Settings {
    /// CTSCOPE_OVERHEAD_FLOWS, _ROUNDS, _KERNELS (comma-separated),
    /// _ICOUNT (0 turns -icount off) and _MODES (comma-separated, with none;
    /// the others are left out of the report).
    fn from_env() -> Result<Self> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let number = |key: &str, default: u64| -> Result<u64> {
            match get(key) {
                None => Ok(default),
                Some(v) => match v.trim().parse::<u64>() {
                    Ok(n) if n > 0 => Ok(n),
                    _ => bail!("{key}={v}: want a whole number above 0"),
                },
            }
        };
        let flows = number("CTSCOPE_OVERHEAD_FLOWS", DEFAULT_FLOWS)?;
        let rounds = number("CTSCOPE_OVERHEAD_ROUNDS", DEFAULT_ROUNDS as u64)?;
        let kernels = match get("CTSCOPE_OVERHEAD_KERNELS") {
            None => DEFAULT_KERNELS.iter().map(|k| (*k).to_owned()).collect(),
            Some(v) => {
                let kernels: Vec<String> = v
                    .split(',')
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .map(str::to_owned)
                    .collect();
                if kernels.is_empty() {
                    bail!("CTSCOPE_OVERHEAD_KERNELS={v}: name at least one kernel (6.1, 6.12)");
                }
                kernels
            }
        };
        let icount = match get("CTSCOPE_OVERHEAD_ICOUNT").as_deref().map(str::trim) {
            None | Some("1") => true,
            Some("0") => false,
            Some(v) => bail!("CTSCOPE_OVERHEAD_ICOUNT={v}: want 0 or 1"),
        };
        let modes: Vec<&'static str> = match get("CTSCOPE_OVERHEAD_MODES") {
            None => MODES.iter().map(|m| m.name).collect(),
            Some(v) => {
                let wanted: Vec<&str> = v.split(',').map(str::trim).collect();
                if let Some(bad) = wanted.iter().find(|w| mode_index(w).is_none()) {
                    bail!(
                        "CTSCOPE_OVERHEAD_MODES={v}: no mode {bad} (want some of: {})",
                        MODES.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
                    );
                }
                if !wanted.contains(&"none") {
                    bail!("CTSCOPE_OVERHEAD_MODES={v}: include none, the ratios' base");
                }
                MODES
                    .iter()
                    .map(|m| m.name)
                    .filter(|m| wanted.contains(m))
                    .collect()
            }
        };
        // The guest names each run's churn source 127.(10 + run).0.x and
        // its probes 127.250.run.1.
        if rounds as usize * modes.len() > 200 {
            bail!("CTSCOPE_OVERHEAD_ROUNDS={rounds}: at most 40");
        }
        Ok(Self {
            kernels,
            flows,
            rounds: rounds as usize,
            icount,
            modes,
        })
    }

    /// The settings that differ from the defaults, as `KEY=VALUE ` words
    /// to put before the command in the report.
    fn env_prefix(&self) -> String {
        let mut out = String::new();
        if self.flows != DEFAULT_FLOWS {
            let _ = write!(out, "CTSCOPE_OVERHEAD_FLOWS={} ", self.flows);
        }
        if self.rounds != DEFAULT_ROUNDS {
            let _ = write!(out, "CTSCOPE_OVERHEAD_ROUNDS={} ", self.rounds);
        }
        if self.kernels != DEFAULT_KERNELS {
            let _ = write!(out, "CTSCOPE_OVERHEAD_KERNELS={} ", self.kernels.join(","));
        }
        if !self.icount {
            out.push_str("CTSCOPE_OVERHEAD_ICOUNT=0 ");
        }
        if self.modes.len() != MODES.len() {
            let _ = write!(out, "CTSCOPE_OVERHEAD_MODES={} ", self.modes.join(","));
        }
        out
    }
}

// ------------------------------------------------------------ report

/// `a` or `a-b` with thousands separators.
fn range((lo, hi): (u64, u64)) -> String {
    if lo == hi {
        thousands(lo)
    } else {
        format!("{}-{}", thousands(lo), thousands(hi))
    }
}

fn lost_cell(l: &Lost) -> String {
    let mut parts = Vec::new();
    if l.ring_full > 0 {
        parts.push(format!("{} ring-full", thousands(l.ring_full)));
    }
    if l.overruns > 0 {
        parts.push(format!("{} ENOBUFS overruns", thousands(l.overruns)));
    }
    if l.enobufs_warnings > 0 {
        parts.push(format!("{} ENOBUFS warnings", l.enobufs_warnings));
    }
    if parts.is_empty() {
        "none said".to_owned()
    } else {
        parts.join(", ")
    }
}

/// One kernel's table: a row per mode.
fn kernel_table(k: &KernelFigures) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "**{}** ({} vCPU{}): a flow costs {:.2} µs of guest time with no listener.\n",
        k.release,
        k.guest.cpus,
        if k.guest.cpus == 1 { "" } else { "s" },
        k.base_us
    );
    let _ = writeln!(
        out,
        "| mode | flows/s median (min-max) | ratio | consumer µs/event | total extra µs/flow | \
         consumer µs/flow in churn | kernel extra µs/flow | kernel extra % | NEW / DESTROY shown \
         (of {}) | start-up s median (min-max) | lost |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        thousands(k.flows)
    );
    for (mode, m) in MODES.iter().zip(&k.modes).filter(|(_, m)| !m.absent) {
        let (med, lo, hi) = m.rate;
        let rate = format!(
            "{} ({}-{})",
            thousands(med.round() as u64),
            thousands(lo.round() as u64),
            thousands(hi.round() as u64)
        );
        if mode.name == "none" {
            let _ = writeln!(
                out,
                "| `none` | {rate} | 1 | - | - | - | - | - | - | - | - |"
            );
            continue;
        }
        let opt = |v: Option<f64>| v.map_or_else(|| "?".to_owned(), |v| format!("{v:.2}"));
        let events = match (m.new, m.destroy) {
            (Some(n), Some(d)) => format!("{} / {}", range(n), range(d)),
            _ => "?".to_owned(),
        };
        let startup = m.startup_s.map_or_else(
            || "?".to_owned(),
            |(med, lo, hi)| format!("{med:.3} ({lo:.3}-{hi:.3})"),
        );
        let _ = writeln!(
            out,
            "| `{}` | {rate} | {:.3} | {} | {:.2} | {} | {:.2} | {:.1} % | {events} | {startup} | {} |",
            mode.name,
            m.ratio,
            opt(m.consumer_us_per_event),
            m.total_extra_us,
            opt(m.consumer_churn_us_per_flow),
            m.kernel_extra_us,
            m.kernel_extra_pct,
            lost_cell(&m.lost),
        );
    }
    out
}

/// The targets, measured on each kernel; binding on [`TARGET_KERNEL`].
fn targets_table(kernels: &[(String, KernelFigures)]) -> String {
    let mut out = String::new();
    let mut header = String::from("| target |");
    let mut rule = String::from("|---|");
    for (major, k) in kernels {
        if major == TARGET_KERNEL {
            let _ = write!(header, " {} |", k.release);
        } else {
            let _ = write!(header, " {} (for information) |", k.release);
        }
        rule.push_str("---|");
    }
    let _ = writeln!(out, "{header}\n{rule}");
    for target in &TARGETS {
        let _ = write!(out, "| {} |", target.what);
        for (_, k) in kernels {
            let cell = match (target.check)(k, k.flows) {
                Some((shown, true)) => format!("{shown}: pass"),
                Some((shown, false)) => format!("{shown}: **FAIL**"),
                None => "not measured".to_owned(),
            };
            let _ = write!(out, " {cell} |");
        }
        out.push('\n');
    }
    out
}

/// Notes under the tables: start-up details, buffering, stat resolution,
/// the listeners' own summaries.
fn kernel_notes(k: &KernelFigures, t: &Transcript, wall: Duration) -> String {
    let mut out = String::new();
    let churn = k.base_churn_us.map_or_else(String::new, |us| {
        format!("; with no listener ctchurn's own CPU is {us:.2} µs/flow")
    });
    let _ = writeln!(
        out,
        "- {}: boot and runs {:.0} s of wall time; clock {}, CPU time from {}; table max {}, {} \
         buckets{churn}.",
        k.release,
        wall.as_secs_f64(),
        k.guest.clock,
        k.guest.cputime,
        thousands(k.guest.max),
        thousands(k.guest.buckets)
    );
    for (i, (mode, m)) in MODES
        .iter()
        .zip(&k.modes)
        .enumerate()
        .skip(1)
        .filter(|(_, (_, m))| !m.absent)
    {
        let mut said = Vec::new();
        if let Some(extra) = m.churn_extra_us {
            said.push(format!(
                "ctchurn's own CPU {extra:+.2} µs/flow against no listener"
            ));
        }
        if let (Some(new), Some(destroy)) = (m.consumer_us_per_new, m.consumer_us_per_destroy) {
            said.push(format!(
                "consumer {new:.2} µs per line until the NEW events were written, {destroy:.2} µs \
                 per line of the flush's DESTROY events"
            ));
        }
        if let (Some(delivery), Some(probes)) = (m.delivery_s, m.probe_s) {
            said.push(format!(
                "first caught probe's line came {:.0} ms after it was sent; probes took {:.0} ms of \
                 the start-up; {} of {} start-ups missed the first probe",
                delivery * 1e3,
                probes * 1e3,
                m.missed_first_probe,
                k.rounds
            ));
        }
        if m.buffered_bytes > 0 {
            said.push(format!(
                "{} bytes were written only at exit (buffered)",
                thousands(m.buffered_bytes)
            ));
        }
        if let Some(r) = m.stat_vs_schedstat {
            said.push(format!("/proc/PID/stat's utime+stime = {r:.2} x schedstat"));
        }
        let summaries: Vec<String> = t
            .runs_of(i)
            .iter()
            .flat_map(|r| r.stderr.iter())
            .filter(|l| {
                !l.contains("hit ENOBUFS")
                    && !l.starts_with("This message")
                    && !l.starts_with("Please, check")
            })
            .map(|l| format!("`{l}`"))
            .collect();
        if !summaries.is_empty() {
            said.push(format!("its stderr: {}", summaries.join("; ")));
        }
        let _ = writeln!(out, "  - `{}`: {}.", mode.name, said.join("; "));
    }
    if !t.delivery.is_empty() {
        let paces: Vec<String> = t
            .delivery
            .iter()
            .map(|d| {
                format!(
                    "{} ({} flows, {} records): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                    d.pace,
                    thousands(d.flows),
                    thousands(d.count),
                    d.p50_ns as f64 / 1e6,
                    d.p99_ns as f64 / 1e6,
                    d.max_ns as f64 / 1e6
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "  - eBPF delivery latency (`ctscope profile --source ebpf`: from the kernel's \
             timestamp on a record to its handling), churn at {}.",
            paces.join("; at ")
        );
    }
    out
}

// ------------------------------------------------------------ running

/// One boot's transcript and wall time.
struct Boot {
    major: String,
    transcript: Transcript,
    wall: Duration,
}

/// Boots a guest and runs tests/vm/bench/overhead.sh there.
fn overhead_in_guest(ctx: &Ctx, settings: &Settings, major: &str) -> Result<Boot> {
    let exe = std::env::current_exe().context("cannot find the xtask binary")?;
    let out_path = ctx.scratch.join(format!("overhead-{major}.out"));
    let err_path = ctx.scratch.join(format!("overhead-{major}.err"));
    let stdout = File::create(&out_path)?;
    let stderr = File::create(&err_path)?;
    // About 40 s of wall time per round of 20,000 flows on a loaded
    // 2-core host, plus the boot; generous, since a kill loses everything.
    let timeout = 600 + settings.rounds as u64 * settings.flows.div_ceil(20_000) * 300;
    let start = Instant::now();
    eprintln!(
        "xtask: overhead bench: booting a {major} guest ({}; output in {})",
        if settings.icount {
            "software emulation, -icount"
        } else {
            "software emulation"
        },
        out_path.display()
    );
    let mut cmd = Command::new(exe);
    cmd.args(["vm-run", "--kernel", major, "--timeout"])
        .arg(timeout.to_string())
        .arg(if settings.icount {
            "--icount"
        } else {
            "--no-icount"
        })
        .arg("--ctscope")
        .arg(&ctx.ctscope)
        .arg("--ctchurn")
        .arg(&ctx.ctchurn)
        .args([
            "--",
            "sh",
            OVERHEAD_SCRIPT,
            &settings.rounds.to_string(),
            &settings.flows.to_string(),
            &settings.modes.join(","),
        ]);
    let status = cmd
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .status()
        .context("cannot start xtask vm-run")?;
    let wall = start.elapsed();
    let text = fs::read_to_string(&out_path).unwrap_or_default();
    let tail = |t: &str| -> String {
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    };
    if !status.success() || !text.contains("CTSCOPE-OVERHEAD-DONE") {
        let err = fs::read_to_string(&err_path).unwrap_or_default();
        bail!(
            "the {major} guest's overhead run failed ({status}); last lines:\n{}\n{}",
            tail(&text),
            tail(&err)
        );
    }
    let transcript = parse_transcript(&text)
        .with_context(|| format!("the {major} guest's output ({})", out_path.display()))?;
    Ok(Boot {
        major: major.to_owned(),
        transcript,
        wall,
    })
}

/// What a listener costs, measured in a qemu guest per kernel.
pub(super) fn overhead(ctx: &Ctx) -> Result<Section> {
    let mut out = String::new();
    let _ = writeln!(out, "## What a conntrack listener costs (qemu guests)\n");
    if ctx.args.quick {
        let _ = writeln!(
            out,
            "Skipped in quick mode: it boots two qemu guests (run `cargo xtask bench --only overhead`)."
        );
        eprintln!("xtask: overhead bench skipped in quick mode (it boots qemu guests)");
        return Ok(Section {
            name: "overhead",
            markdown: out,
        });
    }
    let settings = Settings::from_env()?;
    let mut boots = Vec::new();
    for major in &settings.kernels {
        check_interrupted()?;
        boots.push(overhead_in_guest(ctx, &settings, major)?);
    }
    let mut kernels = Vec::new();
    for boot in &boots {
        let figures = figures(&boot.transcript, settings.flows, settings.rounds)
            .with_context(|| format!("the {} guest", boot.major))?;
        kernels.push((boot.major.clone(), figures));
    }
    out.push_str(&report(ctx, &settings, &boots, &kernels));
    eprintln!("{out}");
    Ok(Section {
        name: "overhead",
        markdown: out,
    })
}

fn report(
    ctx: &Ctx,
    settings: &Settings,
    boots: &[Boot],
    kernels: &[(String, KernelFigures)],
) -> String {
    let mut out = String::new();
    let m = &ctx.machine;
    let _ = writeln!(
        out,
        "Command: `{}{}` (run {}); host: {} cores ({}), {}.\n",
        settings.env_prefix(),
        ctx.args.command_line(),
        m.date,
        m.nproc,
        m.cpu_model,
        m.ctscope_version(&ctx.ctscope),
    );
    let cpus: Vec<String> = kernels
        .iter()
        .map(|(_, k)| {
            format!(
                "{} vCPU{} for {}",
                k.guest.cpus,
                if k.guest.cpus == 1 { "" } else { "s" },
                k.release
            )
        })
        .collect();
    let clock = if settings.icount {
        "qemu software emulation with `-icount shift=1,sleep=off`: **every guest time here (rates, \
         CPU times, start-up) is instruction time** (2 ns an instruction, an idle guest skipping \
         to its next timer), so runs repeat to within a fraction of a percent but the absolute \
         figures are not a real machine's; compare within a kernel"
    } else {
        "qemu software emulation **without** `-icount` (CTSCOPE_OVERHEAD_ICOUNT=0): guest times \
         swing by ±30 % with the host's load"
    };
    let _ = writeln!(
        out,
        "How it was made: each kernel is one boot (`cargo xtask vm-run{}`; {}) running \
         tests/vm/bench/overhead.sh under {clock}. The script pins itself, and so the listener, \
         ctchurn and the probes, to CPU 0: under -icount the vCPUs share one instruction \
         counter, so a task busy on the other CPU would slow CPU 0's in guest time and its CPU \
         time would count the other's instructions. The table is raised to \
         nf_conntrack_max 262,144 and 65,536 buckets, UDP timeouts to 3,600 s, and an nftables \
         input chain with `ct state new counter` keeps tracking on. {} rounds, the {} modes \
         rotated each round; each run: flush the table (no listener yet), start the listener \
         with its output to a file, wait for its first event, run `ctchurn --proto udp --count \
         {}` (16 sources 127.N.0.x, new each run), flush the table (the listener sees {} DESTROY \
         events), wait until the listener's output and CPU time stop growing, stop it with \
         SIGINT. `conntrack -S`'s early_drop, drop and insert_failed must not move during a run \
         (else the bench fails).",
        if settings.icount { " --icount" } else { "" },
        cpus.join(", "),
        settings.rounds,
        settings.modes.len(),
        thousands(settings.flows),
        thousands(settings.flows),
    );
    let _ = writeln!(
        out,
        "\nColumns: flows/s is ctchurn's rate (median, min-max over rounds), ratio = median / \
         median with no listener. The listener's CPU time is /proc/PID/task/*/schedstat's \
         on-CPU ns (not /proc/PID/stat's 10 ms ticks), counted from its first event, so its \
         start-up (loading and attaching the eBPF programs) is left out. **Consumer µs/event** = \
         that CPU until the flush's DESTROY events were written / the lines it wrote. **Total \
         extra µs/flow** = 1e6/rate − 1e6/rate with no listener (medians). **Consumer µs/flow \
         in churn** = its CPU from its first event to the churn's end (read right after ctchurn \
         exits, before the flush) / flows: what it took from the churn on the shared CPU; the \
         work it does after the churn (a NEW backlog, the DESTROY events) did not slow the \
         churn and is not subtracted. **Kernel extra** = total extra − consumer in churn: what \
         the kernel's hooks (eBPF programs, ctnetlink's event delivery) and the wake-ups add to \
         each new flow; % of a flow's cost with no listener. NEW / DESTROY shown counts the \
         lines of the churn's flows (source 127.N.0.x) in the output file, min-max over \
         rounds. **Start-up** = guest time from starting the listener to the first line of a \
         probe flow in its file: one `ctchurn --count 1` flow from 127.250.N.1 every 20 ms \
         (ctscope's eBPF modes are first waited for on their stderr start-up line, which comes \
         once the programs are attached, so the probes do not slow the loading); it includes \
         the probes' own cost and the listener's delivery delay (see the notes). Lost is what \
         the listener said on stderr when stopped.\n"
    );
    let _ = writeln!(
        out,
        "**Caveat on the split of total extra:** these Debian kernels have no \
         CONFIG_IRQ_TIME_ACCOUNTING, so softirq work done while the listener is on the CPU is \
         charged to the listener's schedstat. A listener that is woken for each event and \
         preempts ctchurn (ctnetlink's, i.e. `netlink` and `conntrack`) takes over part of the \
         churn's own receive path (NET_RX of the churn's datagrams, the input hook, the nft \
         rule): its consumer figures come out too high and the kernel extra too low, even below \
         zero. The notes give ctchurn's own CPU time (the shell's cutime + cstime around it, \
         10 ms ticks, so ±1 µs/flow) against no listener as a cross-check: where it is close to \
         the kernel extra (the eBPF modes, whose consumer wakes rarely), the split holds; where \
         it is below zero, work moved from ctchurn to the listener.\n"
    );
    let modes: Vec<String> = MODES
        .iter()
        .map(|m| format!("`{}` = {}", m.name, m.command))
        .collect();
    let _ = writeln!(
        out,
        "Modes (FILE is a file in the guest's tmpfs, not /dev/null): {}.\n",
        modes.join("; ")
    );
    for (_, k) in kernels {
        out.push_str(&kernel_table(k));
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "Targets (binding on the {TARGET_KERNEL} guest; \"kernel extra\" and the ratio from the \
         medians, events from every round):\n"
    );
    out.push_str(&targets_table(kernels));
    let _ = writeln!(out, "\nNotes:\n");
    for (boot, (_, k)) in boots.iter().zip(kernels) {
        out.push_str(&kernel_notes(k, &boot.transcript, boot.wall));
    }
    out
}
