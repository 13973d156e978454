//! The serve benchmark: scrape latency of `ctscope serve` on a large table
//! while it resyncs every 5 s, against node_exporter's conntrack collector
//! scraped in the same loop (the reference: it reads two sysctls and
//! /proc/net/stat/nf_conntrack, and knows nothing per entry).
use std::{
    fmt::Write as _,
    fs::{self, File},
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    Ctx, Section,
    netns::{Netns, check_interrupted, fill_to, run_quiet, table_netns},
    report::thousands,
    which,
};

/// Table size of the full run, and of `--quick`.
const SIZE: u64 = 700_000;
const QUICK_SIZE: u64 = 5_000;
/// How long the scrapers run, and the pause between two rounds.
const DURATION: Duration = Duration::from_secs(30);
const QUICK_DURATION: Duration = Duration::from_secs(3);
const PAUSE: Duration = Duration::from_millis(50);
const SERVE: &str = "127.0.0.1:10318";
const NODE_EXPORTER: &str = "127.0.0.1:9100";
const NODE_EXPORTER_BIN: &str = "prometheus-node-exporter";

/// The scrapes make no conntrack entries of their own.
const NOTRACK: &str = "table inet ctbench_http {
  chain pre {
    type filter hook prerouting priority raw; policy accept;
    tcp dport { 9100, 10318 } notrack
    tcp sport { 9100, 10318 } notrack
  }
  chain out {
    type filter hook output priority raw; policy accept;
    tcp dport { 9100, 10318 } notrack
    tcp sport { 9100, 10318 } notrack
  }
}
";

/// A child killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One `GET /metrics` (HTTP/1.0, read to the end): the body.
fn scrape(at: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect(at)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    if !text.starts_with("HTTP/1.0 200") && !text.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!(
            "answer: {}",
            text.lines().next().unwrap_or("")
        )));
    }
    Ok(text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string()))
}

/// A sample's value in a text exposition.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Starts `cmd` (stderr to a file) and waits up to 60 s until `at`
/// answers a scrape.
fn start(
    netns: &Netns,
    mut cmd: Command,
    at: SocketAddr,
    log: &std::path::Path,
) -> Result<Running> {
    let err = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let mut running = Running(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while netns.run_in(|| scrape(at))?.is_err() {
        if Instant::now() > deadline || running.0.try_wait().ok().flatten().is_some() {
            bail!(
                "{cmd:?} did not answer on {at}: {}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(running)
}

/// Scrape times in ms, and the last body, of each target, scraped in turn.
fn scrape_in_turn(at: &[SocketAddr], duration: Duration) -> Result<Vec<(Vec<f64>, String)>> {
    let mut out: Vec<(Vec<f64>, String)> = at.iter().map(|_| (Vec::new(), String::new())).collect();
    let end = Instant::now() + duration;
    while Instant::now() < end {
        for (target, (times, last)) in at.iter().zip(out.iter_mut()) {
            let t0 = Instant::now();
            *last = scrape(*target).with_context(|| format!("scraping {target}"))?;
            times.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
        std::thread::sleep(PAUSE);
    }
    Ok(out)
}

/// `ctscope serve --resync 5` and node_exporter on the same table, scraped
/// in turn.
pub(super) fn serve(ctx: &Ctx) -> Result<Section> {
    let (size, duration) = if ctx.args.quick {
        (QUICK_SIZE, QUICK_DURATION)
    } else {
        (SIZE, DURATION)
    };
    let mut out = String::from("## serve: scrape latency on a large table\n\n");
    let (_max, netns) = table_netns(size)?;
    let rules = ctx.scratch.join("serve-notrack.nft");
    fs::write(&rules, NOTRACK).context("cannot write the nft rules")?;
    run_quiet(netns.command("nft").arg("-f").arg(&rules))?;
    let fill = fill_to(ctx, &netns, size, 0)?;
    check_interrupted()?;
    // Other work on the machine shows in the tails: said with the figures.
    let load = fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into());
    let serve_at: SocketAddr = SERVE.parse().context("address")?;
    let node_at: SocketAddr = NODE_EXPORTER.parse().context("address")?;
    let mut cmd = netns.command(&ctx.ctscope);
    cmd.args(["serve", "--resync", "5", "--top-talkers", "10"]);
    let started = Instant::now();
    let _serve = start(&netns, cmd, serve_at, &ctx.scratch.join("serve.err"))?;
    let ready = started.elapsed();
    let node = which(NODE_EXPORTER_BIN);
    let _node = match &node {
        Some(bin) => {
            let mut cmd = netns.command(bin);
            cmd.args([
                "--collector.disable-defaults",
                "--collector.conntrack",
                &format!("--web.listen-address={NODE_EXPORTER}"),
            ]);
            Some(start(
                &netns,
                cmd,
                node_at,
                &ctx.scratch.join("node-exporter.err"),
            )?)
        }
        None => None,
    };
    let targets: Vec<SocketAddr> = if node.is_some() {
        vec![serve_at, node_at]
    } else {
        vec![serve_at]
    };
    eprintln!(
        "xtask: serve: scraping {} for {} s",
        if node.is_some() {
            "ctscope serve and node_exporter in turn"
        } else {
            "ctscope serve"
        },
        duration.as_secs()
    );
    let results = netns.run_in(|| scrape_in_turn(&targets, duration))??;
    let count = netns.count()?;
    let (serve_times, body) = &results[0];
    let resyncs = sample(body, "ctscope_resyncs_total").unwrap_or(0.0);
    let resync_secs = sample(body, "ctscope_last_resync_duration_seconds").unwrap_or(0.0);
    let rss = sample(body, "process_resident_memory_bytes").unwrap_or(0.0);
    let entries = sample(body, "ctscope_table_entries").unwrap_or(0.0);
    if entries != count as f64 {
        bail!("serve's table holds {entries} entries, conntrack -C says {count}");
    }
    let _ = writeln!(
        out,
        "Command: `cargo xtask bench --only serve`: a namespace filled with {} UDP entries by \
         ctchurn ({:.1} s), then `ctscope serve --resync 5 --top-talkers 10` in it{}; one \
         thread scrapes {} in turn over loopback (HTTP/1.0, a new connection each, {} ms pause \
         after each round) for {} s. Machine: {} cores ({}), kernel {}, run {} (load average {load} \
         when the scrapes began).\n",
        thousands(fill.count),
        fill.elapsed.as_secs_f64(),
        if node.is_some() {
            " and `prometheus-node-exporter --collector.disable-defaults --collector.conntrack`"
        } else {
            ""
        },
        if node.is_some() { "the two" } else { "it" },
        PAUSE.as_millis(),
        duration.as_secs(),
        ctx.machine.nproc,
        ctx.machine.cpu_model,
        ctx.machine.kernel,
        ctx.machine.date,
    );
    out.push_str("| exporter | scrapes | p50 | p99 | max |\n|---|---|---|---|---|\n");
    let names = ["ctscope serve", "node_exporter (conntrack collector)"];
    for (name, (times, _)) in names.iter().zip(&results) {
        let mut sorted = times.clone();
        sorted.sort_by(f64::total_cmp);
        let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
        let _ = writeln!(
            out,
            "| {name} | {} | {:.2} ms | {:.2} ms | {:.2} ms |",
            sorted.len(),
            at(0.5),
            at(0.99),
            at(1.0)
        );
    }
    if node.is_none() {
        let _ = writeln!(
            out,
            "| node_exporter | not installed (apt-get install {NODE_EXPORTER_BIN}) | | | |"
        );
    }
    let mean = serve_times.iter().sum::<f64>() / serve_times.len().max(1) as f64;
    let resynced = if resyncs > 0.0 {
        format!(
            "resynced {resyncs:.0} times (the last took {resync_secs:.2} s: a full dump and its \
             reconciliation, on a thread of its own at nice 10)"
        )
    } else {
        "did not resync (the run was shorter than --resync)".to_string()
    };
    let _ = writeln!(
        out,
        "\nDuring the run serve {resynced}, kept {} entries (as `conntrack -C`), was ready {:.1} s \
         after it started (the first dump), and held {:.0} MiB resident at the end. Mean scrape \
         {mean:.2} ms. Target: a scrape in at most 50 ms at 1,000,000 entries (BENCHMARKS' \
         criterion section measures the scrape itself on a 1,000,000-entry table).\n",
        thousands(count),
        ready.as_secs_f64(),
        rss / f64::from(1 << 20),
    );
    Ok(Section {
        name: "serve",
        markdown: out,
    })
}
