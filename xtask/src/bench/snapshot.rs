//! The snapshot benchmark: ctscope top --once against iptstate -1, both on
//! a tmux tty, and against conntrack -L (all three up to 300,000 entries).
use std::{
    fmt::Write as _,
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    Ctx, Section,
    measure::{Spread, Stdout, measure},
    netns::{Netns, check_interrupted, fill_to, run_quiet, table_netns},
    report::{output_line, plural, ratio_to, secs, thousands},
    rotated, tolerance, which,
};
use crate::shell_quote;

/// Table sizes of the snapshot bench (quick mode: [`SNAPSHOT_QUICK_SIZE`]).
const SNAPSHOT_SIZES: [u64; 3] = [10_000, 100_000, 300_000];
const SNAPSHOT_QUICK_SIZE: u64 = 2_000;
/// iptstate 2.2.7 prints at most this many rows.
const IPTSTATE_MAX_ROWS: u64 = 16_384;
/// The tmux window every tty run gets.
const TMUX_SIZE: (&str, &str) = ("250", "50");
/// How long one snapshot may take before the bench gives up.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(300);

/// Times the command it is given between two `date` calls and writes
/// `START_NS END_NS STATUS` to its first argument; it starts once the file
/// named by its second argument exists (so a pipe-pane can be set up first).
const TTY_WRAPPER: &str = r#"#!/bin/sh
out=$1
go=$2
shift 2
while [ ! -e "$go" ]; do sleep 0.01; done
start=$(date +%s%N)
"$@"
code=$?
end=$(date +%s%N)
echo "$start $end $code" >"$out.tmp" && mv "$out.tmp" "$out"
"#;

/// A private tmux server with one detached session, killed on drop.
struct Tmux {
    socket: String,
    wrapper: PathBuf,
    scratch: PathBuf,
    windows: usize,
}

impl Tmux {
    fn start(scratch: &Path) -> Result<Self> {
        let wrapper = scratch.join("tty-wrapper.sh");
        fs::write(&wrapper, TTY_WRAPPER)
            .with_context(|| format!("cannot write {}", wrapper.display()))?;
        let tmux = Self {
            socket: format!("ctbench-{}", std::process::id()),
            wrapper,
            scratch: scratch.to_owned(),
            windows: 0,
        };
        run_quiet(tmux.command().args([
            "new-session",
            "-d",
            "-s",
            "bench",
            "-x",
            TMUX_SIZE.0,
            "-y",
            TMUX_SIZE.1,
            "sleep 86400",
        ]))?;
        Ok(tmux)
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("tmux");
        cmd.args(["-f", "/dev/null", "-L", &self.socket]);
        cmd
    }

    /// Runs `words` in a new tmux window (stdout is the pane's tty) inside
    /// the namespace; returns its wall time as the wrapper measured it and,
    /// when `count` is set, every byte the pane received.
    fn run(
        &mut self,
        netns: &Netns,
        words: &[&str],
        count: bool,
    ) -> Result<(Duration, Option<String>)> {
        self.windows += 1;
        let window = format!("run{}", self.windows);
        let out = self.scratch.join("tty-run.out");
        let go = self.scratch.join("tty-run.go");
        let piped = self.scratch.join("tty-run.pane");
        for f in [&out, &go, &piped] {
            let _ = fs::remove_file(f);
        }
        let mut line = format!(
            "ip netns exec {} sh {} {} {}",
            shell_quote(&netns.name),
            shell_quote(&self.wrapper.to_string_lossy()),
            shell_quote(&out.to_string_lossy()),
            shell_quote(&go.to_string_lossy()),
        );
        for w in words {
            line.push(' ');
            line.push_str(&shell_quote(w));
        }
        run_quiet(
            self.command()
                .args(["new-window", "-d", "-t", "bench", "-n", &window, &line]),
        )?;
        if count {
            run_quiet(self.command().args([
                "pipe-pane",
                "-t",
                &format!("bench:{window}"),
                &format!("cat >{}", shell_quote(&piped.to_string_lossy())),
            ]))?;
        }
        File::create(&go).with_context(|| format!("cannot create {}", go.display()))?;
        let start = Instant::now();
        let text = loop {
            check_interrupted()?;
            if let Ok(text) = fs::read_to_string(&out) {
                break text;
            }
            if start.elapsed() > SNAPSHOT_TIMEOUT {
                bail!(
                    "`{}` did not finish in tmux within {SNAPSHOT_TIMEOUT:?}",
                    words.join(" ")
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let fields: Vec<u64> = text
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        let [begin, end, code] = fields[..] else {
            bail!("the tty wrapper wrote {text:?}");
        };
        if code != 0 {
            bail!("`{}` exited with status {code} in tmux", words.join(" "));
        }
        let wall = Duration::from_nanos(end.saturating_sub(begin));
        let pane = if count {
            // The pane's output reaches the pipe after the program is done:
            // wait until the file stops growing.
            let mut last = u64::MAX;
            loop {
                std::thread::sleep(Duration::from_millis(300));
                let len = fs::metadata(&piped).map_or(0, |m| m.len());
                if len == last {
                    break;
                }
                last = len;
            }
            Some(fs::read_to_string(&piped).unwrap_or_default())
        } else {
            None
        };
        Ok((wall, pane))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self
            .command()
            .arg("kill-server")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The flow rows in a snapshot's output (lines naming the protocol).
fn flow_rows(text: &str) -> u64 {
    text.lines().filter(|l| l.contains(" udp ")).count() as u64
}

/// How the snapshot bench runs one command.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SnapshotWay {
    /// In a tmux pane (stdout a tty).
    Tty,
    /// stdout to /dev/null, timed with wait4.
    DevNull,
}

/// One command the snapshot benchmark times.
struct Snapshotter {
    label: &'static str,
    program: String,
    args: &'static [&'static str],
    way: SnapshotWay,
}

impl Snapshotter {
    /// The command line, program first.
    fn words(&self) -> Vec<&str> {
        let mut words = vec![self.program.as_str()];
        words.extend(self.args);
        words
    }
}

/// What one table size measured.
struct SnapshotSize {
    count: u64,
    rows: Vec<Option<u64>>,
    walls: Vec<Vec<Duration>>,
}

/// ctscope top --once against iptstate -1, both on a tty (tmux), plus
/// ctscope top --once with stdout to /dev/null.
pub(super) fn snapshot(ctx: &Ctx) -> Result<Section> {
    let quick = ctx.args.quick;
    let sizes: Vec<u64> = if quick {
        vec![SNAPSHOT_QUICK_SIZE]
    } else {
        SNAPSHOT_SIZES.to_vec()
    };
    let runs = if quick {
        1
    } else {
        ctx.args.runs.unwrap_or(5).max(1)
    };
    let ctscope = ctx.ctscope.to_string_lossy().into_owned();
    let iptstate = which("iptstate").context("iptstate is not installed")?;
    let conntrack = which("conntrack").context("conntrack is not installed")?;
    let tools = [
        Snapshotter {
            label: "iptstate -1 (tty)",
            program: iptstate.to_string_lossy().into_owned(),
            args: &["-1"],
            way: SnapshotWay::Tty,
        },
        Snapshotter {
            label: "ctscope top --once (tty)",
            program: ctscope.clone(),
            args: &["top", "--once"],
            way: SnapshotWay::Tty,
        },
        Snapshotter {
            label: "ctscope top --once > /dev/null",
            program: ctscope,
            args: &["top", "--once"],
            way: SnapshotWay::DevNull,
        },
        // The other reference: a listing of the same table, which pays the
        // same kernel dump (top --once also sorts and aligns).
        Snapshotter {
            label: "conntrack -L > /dev/null",
            program: conntrack.to_string_lossy().into_owned(),
            args: &["-L"],
            way: SnapshotWay::DevNull,
        },
    ];
    let largest = sizes.last().copied().unwrap_or(0);
    let (max_guard, netns) = table_netns(largest)?;
    let mut tmux = Tmux::start(&ctx.scratch)?;
    let stderr_path = ctx.scratch.join("snapshot.stderr");
    eprintln!(
        "xtask: snapshot bench in netns {} (nf_conntrack_max {}), sizes {sizes:?}, {runs} runs",
        netns.name, max_guard.value
    );
    let mut results = Vec::new();
    for (step, &size) in sizes.iter().enumerate() {
        let fill = fill_to(ctx, &netns, size, step)?;
        // One untimed pass on a tty that counts the rows each printed.
        let mut rows = Vec::new();
        for tool in &tools {
            rows.push(match tool.way {
                SnapshotWay::Tty => {
                    let (_, pane) = tmux.run(&netns, &tool.words(), true)?;
                    Some(flow_rows(&pane.unwrap_or_default()))
                }
                SnapshotWay::DevNull => None,
            });
        }
        let ctscope_rows = rows[1].unwrap_or(0);
        let iptstate_rows = rows[0].unwrap_or(0);
        let slack = tolerance(size);
        if ctscope_rows.abs_diff(fill.count) > slack {
            bail!(
                "ctscope top --once printed {ctscope_rows} rows on a tty, the table holds {}",
                fill.count
            );
        }
        if iptstate_rows == 0 || iptstate_rows > IPTSTATE_MAX_ROWS.max(fill.count + slack) {
            bail!(
                "iptstate -1 printed {iptstate_rows} rows on a tty, the table holds {}",
                fill.count
            );
        }
        let mut walls: Vec<Vec<Duration>> = tools.iter().map(|_| Vec::new()).collect();
        for run in 0..runs {
            for i in rotated(run, tools.len()) {
                check_interrupted()?;
                let tool = &tools[i];
                let wall = match tool.way {
                    SnapshotWay::Tty => tmux.run(&netns, &tool.words(), false)?.0,
                    SnapshotWay::DevNull => {
                        measure(
                            netns.command(&tool.program).args(tool.args),
                            Stdout::Null,
                            &stderr_path,
                        )?
                        .sample
                        .wall
                    }
                };
                walls[i].push(wall);
            }
        }
        let count = netns.count()?;
        if count.abs_diff(fill.count) > slack {
            bail!(
                "the table went from {} to {count} entries during the runs",
                fill.count
            );
        }
        let result = SnapshotSize {
            count: fill.count,
            rows,
            walls,
        };
        let table = snapshot_table(&tools, &result);
        eprintln!("{table}");
        results.push(result);
    }
    drop(tmux);
    drop(netns);
    drop(max_guard);

    let iptstate_version = output_line(Command::new("dpkg-query").args([
        "-W",
        "-f",
        "iptstate ${Version}",
        "iptstate",
    ]))
    .unwrap_or_else(|| "iptstate (version unknown)".into());
    let mut out = String::new();
    let _ = writeln!(out, "## One snapshot: ctscope top --once vs iptstate -1\n");
    let _ = writeln!(out, "{}\n", ctx.command_sentence());
    let _ = writeln!(out, "{}\n", ctx.machine_sentence(&iptstate_version));
    let _ = writeln!(
        out,
        "The table is filled with UDP flows by ctchurn in a namespace of the bench's own. \
         iptstate 2.2.7 pads every line with thousands of spaces when stdout is not a terminal, \
         so both tools run with stdout on a tmux pane ({}x{}), started by `ip netns exec` and timed \
         between two `date` calls around the command alone; `> /dev/null` is ctscope timed with \
         wait4. {runs} run{} of each per size, interleaved; median (min-max) wall time; ratio is \
         against iptstate's median. Rows are the flow lines each printed on the tty (iptstate \
         prints at most {}).\n",
        TMUX_SIZE.0,
        TMUX_SIZE.1,
        plural(runs),
        thousands(IPTSTATE_MAX_ROWS),
    );
    for result in &results {
        let _ = writeln!(out, "{}", snapshot_table(&tools, result));
    }
    Ok(Section {
        name: "snapshot",
        markdown: out,
    })
}

fn snapshot_table(tools: &[Snapshotter], result: &SnapshotSize) -> String {
    let mut out = format!(
        "### {} entries\n\n| command | rows printed | median | min | max | vs iptstate | vs conntrack -L |\n|---|---:|---:|---:|---:|---:|---:|\n",
        thousands(result.count)
    );
    // The references: iptstate first, conntrack -L last.
    let median_of = |i: usize| {
        result
            .walls
            .get(i)
            .and_then(|w| Spread::of(w.iter().copied()))
            .map(|s| s.median)
    };
    let references = [median_of(0), median_of(tools.len().saturating_sub(1))];
    for (i, tool) in tools.iter().enumerate() {
        let Some(spread) = Spread::of(result.walls[i].iter().copied()) else {
            continue;
        };
        let rows = result.rows[i].map_or_else(|| "-".into(), thousands);
        let [vs_iptstate, vs_conntrack] = references.map(|r| {
            r.map_or_else(
                || "?".into(),
                |r| format!("{:.2}x", ratio_to(spread.median, r)),
            )
        });
        let _ = writeln!(
            out,
            "| {} | {rows} | {} | {} | {} | {vs_iptstate} | {vs_conntrack} |",
            tool.label,
            secs(spread.median),
            secs(spread.min),
            secs(spread.max)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_rows_are_flow_lines() {
        let pane = "ctscope top -- Sort by: SrcIP -- 2 of 2 entries\r\n\
                    Source   Destination   Prt  State  TTL\r\n\
                    127.1.0.1:1   127.0.0.1:10000  udp         0:00:11\r\n\
                    127.1.0.1:1   127.0.0.1:10001  udp         0:00:11\r\n";
        assert_eq!(flow_rows(pane), 2);
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
