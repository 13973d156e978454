//! The criterion benches of conntrack-user (ring decode, live table, top
//! frame, serve's scrape), run and summarised.
use std::{fmt::Write as _, process::Stdio};

use anyhow::{Context as _, Result, bail};

use super::{Ctx, Section};
use crate::{cargo, workspace_root};

/// One criterion figure: the benchmark's id and its `[low mean high]`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CriterionFigure {
    id: String,
    kind: &'static str,
    interval: String,
}

/// Reads criterion's human output: an id line (or the id at the start of
/// the `time:` line), then `time:` / `thrpt:` lines with `[low mean high]`.
fn parse_criterion(text: &str) -> Vec<CriterionFigure> {
    let mut figures = Vec::new();
    let mut id = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        for kind in ["time:", "thrpt:"] {
            if let Some(at) = trimmed.find(kind) {
                let head = trimmed[..at].trim();
                if !head.is_empty() {
                    id = head.to_string();
                }
                if let (Some(open), Some(close)) = (trimmed.find('['), trimmed.rfind(']'))
                    // "change:" lines compare with the last run, in percent.
                    && !trimmed[open..=close].contains('%')
                {
                    figures.push(CriterionFigure {
                        id: id.clone(),
                        kind: if kind == "time:" {
                            "time"
                        } else {
                            "throughput"
                        },
                        interval: trimmed[open..=close].to_string(),
                    });
                }
            }
        }
        if !trimmed.contains(':')
            && !trimmed.is_empty()
            && !trimmed.starts_with("Found")
            && !trimmed.contains(' ')
        {
            id = trimmed.to_string();
        }
    }
    figures
}

/// The criterion benches of conntrack-user (ring decode, live table, top
/// frame and serve's scrape at 1M entries), run and summarised. Full mode
/// only.
pub(super) fn criterion(ctx: &Ctx) -> Result<Section> {
    let mut out = String::from(
        "## Criterion benches: ring decode, live table, top frame and serve's scrape\n\n",
    );
    if ctx.args.quick {
        out.push_str(
            "Skipped in quick mode: it builds a 1,000,000-entry table (run `cargo xtask bench --only criterion`).\n",
        );
        eprintln!("xtask: criterion benches skipped in quick mode");
        return Ok(Section {
            name: "criterion",
            markdown: out,
        });
    }
    let mut figures = Vec::new();
    let mut engine = None;
    let mut serve_lines = Vec::new();
    for bench in ["ring_decode", "top_frame", "serve_scrape"] {
        let output = cargo()
            .args([
                "bench",
                "--package",
                "conntrack-user",
                "--bench",
                bench,
                "--",
            ])
            .args(["--warm-up-time", "1", "--measurement-time", "4"])
            .current_dir(workspace_root())
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("cannot run cargo bench --bench {bench}"))?;
        if !output.status.success() {
            bail!("cargo bench --bench {bench} failed: {}", output.status);
        }
        let text = String::from_utf8_lossy(&output.stdout);
        if let Some(line) = text.lines().find(|l| l.starts_with("engine:")) {
            engine = Some(line.trim_start_matches("engine:").trim().to_string());
        }
        serve_lines.extend(
            text.lines()
                .filter_map(|l| l.strip_prefix("serve "))
                .map(str::to_string),
        );
        figures.extend(parse_criterion(&text));
    }
    if figures.is_empty() {
        bail!("criterion printed no figure");
    }
    let _ = writeln!(
        out,
        "Command: `cargo xtask bench --only criterion`, which runs `cargo bench -p conntrack-user \
         --bench ring_decode`, `--bench top_frame` and `--bench serve_scrape` (criterion, 1 s \
         warm-up, 4 s measurement; \
         `[low mean high]` is criterion's confidence interval), run {}. Machine: {} cores \
         ({}), {} RAM, kernel {}.\n",
        ctx.machine.date,
        ctx.machine.nproc,
        ctx.machine.cpu_model,
        ctx.machine.memory,
        ctx.machine.kernel
    );
    if let Some(engine) = engine {
        let _ = writeln!(out, "Live table at 1,000,000 entries: {engine}.\n");
    }
    for line in &serve_lines {
        let _ = writeln!(out, "serve, {line}.\n");
    }
    out.push_str("| benchmark | measure | [low mean high] |\n|---|---|---|\n");
    for f in &figures {
        let _ = writeln!(out, "| `{}` | {} | {} |", f.id, f.kind, f.interval);
    }
    out.push_str(
        "\nTargets: ring decode at least 5 M records/s on one core (issue 3); at 1,000,000 \
         entries, at most 300 bytes per entry and a frame in at most 50 ms (issue 4); a \
         scrape of `ctscope serve` in at most 50 ms (`serve-1M/scrape/*`: an HTTP GET of \
         /metrics on loopback against the real server, whose scrape reads the feeder's \
         snapshot and never the table, so its time does not grow with the table; \
         `serve/kernel-read` is the ctnetlink part of a real scrape). There is no reference \
         tool for these (iptstate stops at 16,384 rows; node_exporter's conntrack collector \
         reads two sysctls and /proc/net/stat/nf_conntrack and has no per-entry view).\n",
    );
    Ok(Section {
        name: "criterion",
        markdown: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_criterion_lines() {
        let text = "engine: 1000000 entries, 295 bytes each\n\
            Benchmarking ring/decode+filter: Analyzing\n\
            ring/decode+filter      time:   [88.472 µs 91.250 µs 93.965 µs]\n\
            \x20                       thrpt:  [43.591 Melem/s 44.888 Melem/s 46.297 Melem/s]\n\
            top-1M/frame/text-filter\n\
            \x20                       time:   [52.666 ms 52.799 ms 52.891 ms]\n\
            \x20                       change: [−3.9062% −1.4314% +1.0245%]\n";
        let f = parse_criterion(text);
        assert_eq!(f.len(), 3, "{f:?}");
        assert_eq!(f[0].id, "ring/decode+filter");
        assert_eq!(f[1].kind, "throughput");
        assert_eq!(
            f[1].interval,
            "[43.591 Melem/s 44.888 Melem/s 46.297 Melem/s]"
        );
        assert_eq!(f[2].id, "top-1M/frame/text-filter");
        assert_eq!(f[2].interval, "[52.666 ms 52.799 ms 52.891 ms]");
    }
}
