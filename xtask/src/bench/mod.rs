//! `cargo xtask bench`: ctscope against the reference tools, on tables filled
//! by ctchurn inside a network namespace of the bench's own.
//!
//! Each benchmark returns a Markdown section; the sections go to
//! BENCHMARKS.md between `<!-- bench:NAME:begin -->` / `<!-- bench:NAME:end -->`
//! markers (anything else in the file is kept), or, with `--quick`, to
//! target/bench-quick.md.
//!
//! Benchmarks so far: `listing` (ctscope list vs conntrack -L) and `events`
//! (ctscope events vs conntrack -E during bursts of new and destroyed
//! entries, and what a listener costs the kernel's churn rate), `snapshot`
//! (ctscope top --once vs iptstate -1, on a tmux tty) and `overhead` (what
//! a listener costs: ctscope's eBPF and netlink sources and conntrack -E,
//! writing to files, in qemu guests under -icount; skipped by --quick;
//! CTSCOPE_OVERHEAD_* variables set flows, rounds, kernels, modes), `serve` (ctscope serve's scrape
//! latency on a large table while it resyncs, against node_exporter's
//! conntrack collector) and `criterion` (the criterion benches).
mod criterion;
mod events;
mod listing;
mod measure;
mod netns;
mod overhead;
mod report;
mod serve;
mod snapshot;

use std::{fmt::Write as _, fs, path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result, bail};

use self::{
    criterion::criterion,
    events::events,
    listing::listing,
    netns::{SignalGuard, check_interrupted, remove_stale_namespaces},
    overhead::overhead,
    report::{Machine, write_section},
    snapshot::snapshot,
};
use crate::{build_release_ctchurn, build_release_ctscope, setup, workspace_root};

/// Options of `cargo xtask bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Small sizes, few runs: proves the bench works (the test command runs it).
    #[arg(long)]
    pub quick: bool,
    /// Table sizes in entries, comma-separated (default 100000,500000,1000000;
    /// with --quick 20000).
    #[arg(long, value_delimiter = ',')]
    pub sizes: Vec<u64>,
    /// Timed runs of each command per size (default 5; with --quick 3); for
    /// the events bench, bursts of each kind (default 5; with --quick 1).
    #[arg(long)]
    pub runs: Option<usize>,
    /// Run only these benchmarks (comma-separated: listing, events, snapshot,
    /// overhead, serve, criterion); all by default. Sections of the others are left as they are.
    #[arg(long, value_delimiter = ',', value_name = "NAME")]
    pub only: Vec<String>,
    /// Measure this ctscope binary instead of building target/release/ctscope.
    #[arg(long, value_name = "PATH")]
    pub ctscope: Option<PathBuf>,
}

impl BenchArgs {
    /// The options the test command uses.
    pub fn quick() -> Self {
        Self {
            quick: true,
            sizes: Vec::new(),
            runs: None,
            only: Vec::new(),
            ctscope: None,
        }
    }

    fn sizes(&self) -> Vec<u64> {
        if !self.sizes.is_empty() {
            let mut sizes = self.sizes.clone();
            sizes.sort_unstable();
            sizes.dedup();
            return sizes;
        }
        if self.quick {
            vec![20_000]
        } else {
            vec![100_000, 500_000, 1_000_000]
        }
    }

    fn runs(&self) -> usize {
        self.runs.unwrap_or(if self.quick { 3 } else { 5 }).max(1)
    }

    /// The command line that reproduces this run, for the report.
    fn command_line(&self) -> String {
        let mut line = String::from("cargo xtask bench");
        if self.quick {
            line.push_str(" --quick");
        }
        if !self.sizes.is_empty() {
            let sizes: Vec<String> = self.sizes.iter().map(u64::to_string).collect();
            let _ = write!(line, " --sizes {}", sizes.join(","));
        }
        if let Some(runs) = self.runs {
            let _ = write!(line, " --runs {runs}");
        }
        if !self.only.is_empty() {
            let _ = write!(line, " --only {}", self.only.join(","));
        }
        if let Some(path) = &self.ctscope {
            let _ = write!(line, " --ctscope {}", path.display());
        }
        line
    }
}

/// What every benchmark needs: the binaries, the options, where to put
/// scratch files.
struct Ctx<'a> {
    args: &'a BenchArgs,
    ctscope: PathBuf,
    ctchurn: PathBuf,
    scratch: PathBuf,
    machine: Machine,
}

impl Ctx<'_> {
    /// "Command: `cargo xtask bench ...` (run DATE).": a section's first
    /// line.
    fn command_sentence(&self) -> String {
        format!(
            "Command: `{}` (run {}).",
            self.args.command_line(),
            self.machine.date
        )
    }

    /// "Machine: N cores (CPU), RAM, kernel K; REFERENCE; CTSCOPE VERSION.",
    /// where `reference` names the reference tool and its version.
    fn machine_sentence(&self, reference: &str) -> String {
        let m = &self.machine;
        format!(
            "Machine: {} cores ({}), {} RAM, kernel {}; {reference}; {}.",
            m.nproc,
            m.cpu_model,
            m.memory,
            m.kernel,
            m.ctscope_version(&self.ctscope)
        )
    }
}

/// One benchmark's part of the report.
struct Section {
    name: &'static str,
    markdown: String,
}

/// A benchmark: its name (as `--only` takes it) and the function that runs
/// it.
type Bench = (&'static str, fn(&Ctx) -> Result<Section>);

/// The benchmarks, in the order they run; each makes its own namespace.
const BENCHES: &[Bench] = &[
    ("listing", listing),
    ("events", events),
    ("snapshot", snapshot),
    ("overhead", overhead),
    ("serve", serve::serve),
    ("criterion", criterion),
];

/// Runs the benchmarks.
pub fn run(args: &BenchArgs) -> Result<ExitCode> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "cargo xtask bench creates a network namespace and raises net.netfilter.nf_conntrack_max: \
             run it as root"
        );
    }
    if let Some(unknown) = args
        .only
        .iter()
        .find(|name| !BENCHES.iter().any(|(known, _)| known == name))
    {
        let known: Vec<&str> = BENCHES.iter().map(|(name, _)| *name).collect();
        bail!(
            "--only {unknown}: no such benchmark (there are {})",
            known.join(", ")
        );
    }
    let _signals = SignalGuard::install()?;
    let missing: Vec<&str> = ["conntrack", "nft", "ip", "sysctl", "iptstate", "tmux"]
        .into_iter()
        .filter(|tool| which(tool).is_none())
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "xtask: bench needs {}; installing the test tools",
            missing.join(", ")
        );
        setup::ensure(setup::Needs { test: true })?;
    }
    remove_stale_namespaces();

    let target = target_dir();
    let ctscope = match &args.ctscope {
        Some(path) => path.clone(),
        None => {
            build_release_ctscope()?;
            target.join("release/ctscope")
        }
    };
    build_release_ctchurn()?;
    let ctchurn = target.join("release/ctchurn");
    for bin in [&ctscope, &ctchurn] {
        if !bin.exists() {
            bail!("{} is missing after the build", bin.display());
        }
    }
    let scratch = target.join("bench-scratch");
    fs::create_dir_all(&scratch).with_context(|| format!("cannot create {}", scratch.display()))?;

    let ctx = Ctx {
        args,
        ctscope,
        ctchurn,
        scratch,
        machine: Machine::describe(),
    };
    let mut sections = Vec::new();
    for (name, bench) in BENCHES {
        if !args.only.is_empty() && !args.only.iter().any(|o| o == name) {
            continue;
        }
        check_interrupted()?;
        sections.push(bench(&ctx)?);
    }

    let report = if args.quick {
        target.join("bench-quick.md")
    } else {
        workspace_root().join("BENCHMARKS.md")
    };
    for section in &sections {
        write_section(&report, section.name, &section.markdown)?;
    }
    eprintln!("xtask: bench report written to {}", report.display());
    Ok(ExitCode::SUCCESS)
}

/// How far a count may be from the one expected: 1 % and 10 entries.
fn tolerance(expected: u64) -> u64 {
    expected / 100 + 10
}

/// `0..n` starting at `run % n`: interleaved runs, each round starting with
/// the next command, so drift (caches, timers, other load) spreads over all
/// of them.
fn rotated(run: usize, n: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |k| (run + k) % n)
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}
