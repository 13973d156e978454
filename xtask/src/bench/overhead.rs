//! The overhead benchmark: what the eBPF tracer and conntrack -E cost the
//! kernel's rate of new flows, in qemu guests.
use std::{
    fmt::Write as _,
    fs::{self, File},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    Ctx, Section, events::parse_churn_rate, measure::spread_f64, netns::check_interrupted,
    report::thousands,
};

/// The guest kernels the overhead bench boots.
const OVERHEAD_KERNELS: [&str; 2] = ["6.1", "6.12"];
/// New UDP flows per ctchurn run in the guest.
const OVERHEAD_FLOWS: u64 = 20_000;
/// Rounds of (no listener, eBPF tracer, conntrack -E), rotated.
const OVERHEAD_ROUNDS: usize = 3;
/// The guest script (under tests/vm/bench/, which vm-test does not run).
const OVERHEAD_SCRIPT: &str = "/vm/bench/overhead.sh";
const OVERHEAD_MODES: [(&str, &str); 3] = [
    ("none", "no listener"),
    (
        "ebpf",
        "`ctscope events --source ebpf -e NEW,DESTROY > /dev/null`",
    ),
    ("netlink", "`conntrack -E > /dev/null`"),
];

/// One kernel's rates: per mode, flows per second of each round.
struct OverheadKernel {
    release: String,
    rates: Vec<Vec<f64>>,
    notes: Vec<String>,
    wall: Duration,
}

/// Boots a guest and runs tests/vm/bench/overhead.sh there.
fn overhead_in_guest(ctx: &Ctx, major: &str) -> Result<OverheadKernel> {
    let exe = std::env::current_exe().context("cannot find the xtask binary")?;
    let out_path = ctx.scratch.join(format!("overhead-{major}.out"));
    let err_path = ctx.scratch.join(format!("overhead-{major}.err"));
    let stdout = File::create(&out_path)?;
    let stderr = File::create(&err_path)?;
    let start = Instant::now();
    eprintln!("xtask: overhead bench: booting a {major} guest (software emulation)");
    let status = Command::new(exe)
        .args(["vm-run", "--kernel", major, "--timeout", "900", "--ctscope"])
        .arg(&ctx.ctscope)
        .arg("--ctchurn")
        .arg(&ctx.ctchurn)
        .args([
            "--",
            "sh",
            OVERHEAD_SCRIPT,
            &OVERHEAD_ROUNDS.to_string(),
            &OVERHEAD_FLOWS.to_string(),
        ])
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
    let (rates, notes, release) = parse_overhead(&text);
    for (i, (mode, _)) in OVERHEAD_MODES.iter().enumerate() {
        if rates[i].len() != OVERHEAD_ROUNDS {
            bail!(
                "the {major} guest reported {} rates for {mode}, not {OVERHEAD_ROUNDS}:\n{}",
                rates[i].len(),
                tail(&text)
            );
        }
    }
    Ok(OverheadKernel {
        release: release.unwrap_or_else(|| major.to_owned()),
        rates,
        notes,
        wall,
    })
}

/// The guest script's lines: rates per mode (in [`OVERHEAD_MODES`] order),
/// the tracer's notes and the kernel release.
fn parse_overhead(text: &str) -> (Vec<Vec<f64>>, Vec<String>, Option<String>) {
    let mut rates = vec![Vec::new(); OVERHEAD_MODES.len()];
    let mut notes = Vec::new();
    let mut release = None;
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(rest) = line.strip_prefix("CTSCOPE-OVERHEAD ") {
            let mut words = rest.splitn(3, ' ');
            let (Some(mode), Some(_round), Some(churn)) =
                (words.next(), words.next(), words.next())
            else {
                continue;
            };
            if let (Some(i), Some(rate)) = (
                OVERHEAD_MODES.iter().position(|(m, _)| *m == mode),
                parse_churn_rate(churn),
            ) {
                rates[i].push(rate);
            }
        } else if let Some(rest) = line.strip_prefix("CTSCOPE-OVERHEAD-LISTENER ") {
            // "ebpf ROUND ctscope VERSION (...): N flow events have been shown."
            let said = rest.split_once("): ").map_or(rest, |(_, said)| said);
            notes.push(said.trim().to_owned());
        } else if let Some((_, rest)) = line.split_once("   kernel ") {
            // The serial console may glue it to the firmware's last line.
            release.get_or_insert_with(|| rest.trim().to_owned());
        }
    }
    (rates, notes, release)
}

/// What the eBPF tracer and the netlink listener cost the kernel's rate of
/// new flows, measured in a qemu guest per kernel.
pub(super) fn overhead(ctx: &Ctx) -> Result<Section> {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Kernel overhead of a listener: eBPF tracer vs netlink\n"
    );
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
    let mut kernels = Vec::new();
    for major in OVERHEAD_KERNELS {
        check_interrupted()?;
        kernels.push(overhead_in_guest(ctx, major)?);
    }
    let m = &ctx.machine;
    let _ = writeln!(
        out,
        "Command: `{}` (run {}); host: {} cores ({}), {}.\n",
        ctx.args.command_line(),
        m.date,
        m.nproc,
        m.cpu_model,
        m.ctscope_version(&ctx.ctscope),
    );
    let _ = writeln!(
        out,
        "Each kernel is one boot of a qemu guest (`cargo xtask vm-run`, 2 vCPUs, running \
         tests/vm/bench/overhead.sh): `ctchurn --count {}` (UDP) with no listener, with the eBPF \
         tracer attached and with conntrack -E, {OVERHEAD_ROUNDS} rounds in rotating order, the \
         table flushed before each run. **The guests run under TCG software emulation: the \
         absolute rates mean nothing, only the ratios within one boot do.** Median (min-max) new \
         flows per second; ratio = median with the listener / median without.\n",
        thousands(OVERHEAD_FLOWS)
    );
    let _ = writeln!(
        out,
        "| kernel | listener | flows/s median | min | max | ratio |\n|---|---|---:|---:|---:|---:|"
    );
    for k in &kernels {
        let base = spread_f64(k.rates[0].iter().copied()).map_or(0.0, |s| s.0);
        for (i, (_, label)) in OVERHEAD_MODES.iter().enumerate() {
            let Some((median, min, max)) = spread_f64(k.rates[i].iter().copied()) else {
                continue;
            };
            let ratio = if i == 0 || base <= 0.0 {
                "-".to_owned()
            } else {
                format!("{:.2}", median / base)
            };
            let _ = writeln!(
                out,
                "| {} | {label} | {} | {} | {} | {ratio} |",
                k.release,
                thousands(median as u64),
                thousands(min as u64),
                thousands(max as u64)
            );
        }
    }
    let _ = writeln!(out);
    for k in &kernels {
        let _ = writeln!(
            out,
            "- {} (boot and runs {:.0} s): ctscope's summary after each eBPF round ({} new flows each): {}",
            k.release,
            k.wall.as_secs_f64(),
            thousands(OVERHEAD_FLOWS),
            k.notes
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    eprintln!("{out}");
    Ok(Section {
        name: "overhead",
        markdown: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overhead_lines_are_parsed() {
        let text = "Booting from ROM..   kernel 6.12.117+deb12-cloud-amd64\r\n\
                    CTSCOPE-OVERHEAD none 1 ctchurn: 20000 flows in 0.5 s (40000 flows/s)\n\
                    CTSCOPE-OVERHEAD ebpf 1 ctchurn: 20000 flows in 1.0 s (20000 flows/s)\n\
                    CTSCOPE-OVERHEAD-LISTENER ebpf 1 ctscope v0.1.0 (x): 20000 flow events have been shown.\n\
                    CTSCOPE-OVERHEAD netlink 1 ctchurn: broken\n";
        let (rates, notes, release) = parse_overhead(text);
        assert_eq!(rates, vec![vec![40_000.0], vec![20_000.0], vec![]]);
        assert_eq!(
            notes,
            vec!["20000 flow events have been shown.".to_string()]
        );
        assert_eq!(release.as_deref(), Some("6.12.117+deb12-cloud-amd64"));
    }
}
