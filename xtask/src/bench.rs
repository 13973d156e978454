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
//! the eBPF tracer and conntrack -E cost the kernel's rate of new flows, in
//! qemu guests; skipped by --quick).
use std::{
    fmt::Write as _,
    fs::{self, File},
    io,
    os::{
        fd::{AsRawFd, RawFd},
        unix::process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{run_checked, setup, workspace_root};

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
    /// overhead); all by
    /// default. Sections of the others are left as they are.
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
            run_checked(cargo().args(["build", "--release", "--package", "conntrack-user"]))?;
            target.join("release/ctscope")
        }
    };
    run_checked(cargo().args([
        "build",
        "--release",
        "--package",
        "xtask",
        "--bin",
        "ctchurn",
    ]))?;
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

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    // bpf-linker, which the ctscope build needs, lives in ~/.cargo/bin.
    cmd.env("PATH", setup::path_with_cargo_bin());
    cmd
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

// ------------------------------------------------------------ interruption

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C or SIGTERM ends the bench between two steps, so the namespace and
/// nf_conntrack_max are put back by the guards instead of being left behind.
/// (A child in the foreground gets Ctrl-C too and fails, which ends the step.)
/// The default actions come back on drop.
struct SignalGuard;

const SIGNALS: [nix::sys::signal::Signal; 2] = [
    nix::sys::signal::Signal::SIGINT,
    nix::sys::signal::Signal::SIGTERM,
];

impl SignalGuard {
    fn install() -> Result<Self> {
        use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, sigaction};
        INTERRUPTED.store(false, Ordering::SeqCst);
        let action = SigAction::new(
            SigHandler::Handler(on_signal),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        for signal in SIGNALS {
            // SAFETY: the handler only stores to an atomic.
            unsafe { sigaction(signal, &action) }.context("sigaction")?;
        }
        Ok(Self)
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, sigaction};
        let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
        for signal in SIGNALS {
            // SAFETY: restoring the default action.
            let _ = unsafe { sigaction(signal, &default) };
        }
    }
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

// ------------------------------------------------------------ namespace and sysctls

/// Namespaces are named after the bench's pid, so a later run can tell a
/// leftover (its process is gone) from one in use.
const NETNS_PREFIX: &str = "ctbench-";

/// A network namespace of the bench's own, deleted on drop.
struct Netns {
    name: String,
    file: File,
}

impl Netns {
    /// Creates the namespace, brings lo up and loads an nftables rule with
    /// `ct state new`, which turns conntrack on in it.
    fn create() -> Result<Self> {
        let name = format!("{NETNS_PREFIX}{}", std::process::id());
        run_quiet(Command::new("ip").args(["netns", "add", &name]))?;
        let file = match File::open(Path::new("/run/netns").join(&name)) {
            Ok(file) => file,
            Err(err) => {
                let _ = run_quiet(Command::new("ip").args(["netns", "del", &name]));
                return Err(err).with_context(|| format!("cannot open /run/netns/{name}"));
            }
        };
        let netns = Self { name, file };
        run_quiet(netns.command("ip").args(["link", "set", "lo", "up"]))?;
        let ruleset = "table inet ctbench {\n  chain input {\n    type filter hook input priority 0;\n    ct state new counter\n  }\n}\n";
        let mut nft = netns.command("nft");
        nft.args(["-f", "-"]).stdin(Stdio::piped());
        run_with_stdin(&mut nft, ruleset.as_bytes())?;
        Ok(netns)
    }

    /// A command that runs inside the namespace. It enters with setns(2)
    /// between fork and exec, so no `ip netns exec` is in the timings.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        command_in(&self.file, program)
    }

    /// Sets a sysctl inside the namespace (per-netns ones only).
    fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        run_quiet(
            self.command("sysctl")
                .args(["-q", "-w", &format!("{key}={value}")]),
        )
    }

    /// The namespace's entry count, as `conntrack -C` says.
    fn count(&self) -> Result<u64> {
        let out = self
            .command("conntrack")
            .arg("-C")
            .stderr(Stdio::piped())
            .output()
            .context("cannot start conntrack -C")?;
        if !out.status.success() {
            bail!(
                "conntrack -C failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim()
            .parse()
            .with_context(|| format!("conntrack -C printed {text:?}"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(err) = run_quiet(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!(
                "xtask: could not delete network namespace {}: {err:#}",
                self.name
            );
        }
    }
}

/// A command that enters the namespace `netns` (an open nsfs file) before
/// exec.
fn command_in(netns: &File, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    let fd: RawFd = netns.as_raw_fd();
    // SAFETY: the closure only makes one async-signal-safe syscall; `fd`
    // stays open until the spawn returns (the caller holds `netns`) and
    // CLOEXEC closes it at exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// Conntrack entries outside the bench's namespace: those of the namespace
/// xtask runs in (normally the host's) plus every one under /run/netns.
/// The hash table is shared by all namespaces, so a dump walks these too.
fn foreign_entries(own: &str) -> u64 {
    const COUNT: &str = "/proc/sys/net/netfilter/nf_conntrack_count";
    let parse = |s: &str| s.trim().parse::<u64>().unwrap_or(0);
    let mut total = fs::read_to_string(COUNT).map_or(0, |s| parse(&s));
    let Ok(dir) = fs::read_dir("/run/netns") else {
        return total;
    };
    for entry in dir.flatten() {
        if entry.file_name().to_string_lossy() == own {
            continue;
        }
        let Ok(file) = File::open(entry.path()) else {
            continue;
        };
        if let Ok(out) = command_in(&file, "cat")
            .arg(COUNT)
            .stderr(Stdio::null())
            .output()
        {
            total += parse(&String::from_utf8_lossy(&out.stdout));
        }
    }
    total
}

/// Deletes `ctbench-PID` namespaces whose bench process is gone.
fn remove_stale_namespaces() {
    let Ok(dir) = fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(NETNS_PREFIX)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("xtask: deleting network namespace {name}, left by an earlier bench");
            let _ = run_quiet(Command::new("ip").args(["netns", "del", &name]));
        }
    }
}

/// A host-wide sysctl set for the bench and put back on drop.
struct HostSysctl {
    path: PathBuf,
    old: String,
    /// The value in force during the bench.
    value: u64,
}

impl HostSysctl {
    /// Raises the value under /proc/sys to at least `value`.
    fn raise(key: &str, value: u64) -> Result<Self> {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        let old = fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .trim()
            .to_owned();
        let current: u64 = old.parse().with_context(|| format!("{key} is {old:?}"))?;
        if current >= value {
            return Ok(Self {
                path,
                old,
                value: current,
            });
        }
        fs::write(&path, value.to_string())
            .with_context(|| format!("cannot set {key} to {value}"))?;
        Ok(Self { path, old, value })
    }
}

impl Drop for HostSysctl {
    fn drop(&mut self) {
        if let Err(err) = fs::write(&self.path, &self.old) {
            eprintln!(
                "xtask: could not put {} back to {}: {err}",
                self.path.display(),
                self.old
            );
        }
    }
}

fn read_sysctl(key: &str) -> String {
    fs::read_to_string(Path::new("/proc/sys").join(key.replace('.', "/")))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".into())
}

fn run_quiet(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input)
            .context("writing to the child's stdin")?;
    }
    let out = child.wait_with_output().context("waiting for the child")?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

// ------------------------------------------------------------ measuring one child

/// What one run of a command cost.
#[derive(Clone, Copy, Debug)]
struct Sample {
    wall: Duration,
    user: Duration,
    sys: Duration,
    /// ru_maxrss: peak resident set, KiB.
    max_rss_kib: u64,
}

/// What one run produced.
struct Outcome {
    sample: Sample,
    /// Newlines on stdout, when asked to count them.
    lines: Option<u64>,
}

/// How a command's stdout is handled.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stdout {
    /// To /dev/null (the timed runs).
    Null,
    /// Piped back and its lines counted (the check runs).
    CountLines,
}

/// Runs `cmd` to the end, timing it with wait4(2): wall clock from spawn to
/// reaping, user and system CPU and peak RSS of that child alone. Its stderr
/// goes to `stderr_path` and is quoted if it fails.
fn measure(cmd: &mut Command, stdout: Stdout, stderr_path: &Path) -> Result<Outcome> {
    let stderr = File::create(stderr_path)
        .with_context(|| format!("cannot create {}", stderr_path.display()))?;
    cmd.stdin(Stdio::null())
        .stderr(stderr)
        .stdout(match stdout {
            Stdout::Null => Stdio::null(),
            Stdout::CountLines => Stdio::piped(),
        });
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let counted = child.stdout.take().map(count_lines);
    let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
    // SAFETY: plain C structs, all-zero is valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: pid is our unreaped child; status and usage are writable.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err).context("wait4");
        }
    }
    let wall = start.elapsed();
    let lines = counted.transpose().context("reading the child's stdout")?;
    let exited_ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    if !exited_ok {
        let text = fs::read_to_string(stderr_path).unwrap_or_default();
        let tail: String = text
            .chars()
            .rev()
            .take(2000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let how = if libc::WIFSIGNALED(status) {
            format!("killed by signal {}", libc::WTERMSIG(status))
        } else {
            format!("exit status {}", libc::WEXITSTATUS(status))
        };
        bail!("{cmd:?} failed ({how}): {}", tail.trim());
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    Ok(Outcome {
        sample: Sample {
            wall,
            user: tv(usage.ru_utime),
            sys: tv(usage.ru_stime),
            max_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
        },
        lines,
    })
}

fn count_lines(mut pipe: impl io::Read) -> io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut lines = 0u64;
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) => return Ok(lines),
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
    }
}

/// Median, min and max of a set of durations.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Spread {
    median: Duration,
    min: Duration,
    max: Duration,
}

impl Spread {
    fn of(values: impl IntoIterator<Item = Duration>) -> Option<Self> {
        let mut v: Vec<Duration> = values.into_iter().collect();
        v.sort_unstable();
        let (first, last) = (*v.first()?, *v.last()?);
        let mid = v.len() / 2;
        let median = if !v.len().is_multiple_of(2) {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2
        };
        Some(Self {
            median,
            min: first,
            max: last,
        })
    }
}

// ------------------------------------------------------------ the listing benchmark

/// One command the listing benchmark times.
struct Lister {
    /// How the report names it.
    label: &'static str,
    program: PathBuf,
    args: &'static [&'static str],
    /// Its line count must equal conntrack -L's.
    checked: bool,
}

/// The reference every ratio is taken against.
const REFERENCE: &str = "conntrack -L";

/// What one table size measured.
struct SizeResult {
    size: u64,
    fill: Fill,
    count_after: u64,
    lines: Vec<(&'static str, u64)>,
    /// Samples per lister, in `listers` order.
    samples: Vec<Vec<Sample>>,
}

/// How the table was filled up to a size.
struct Fill {
    count: u64,
    flows: u64,
    elapsed: Duration,
}

/// ctscope list (text and JSON), conntrack -L and cat /proc/net/nf_conntrack
/// on tables of growing size.
fn listing(ctx: &Ctx) -> Result<Section> {
    let sizes = ctx.args.sizes();
    let runs = ctx.args.runs();
    let largest = sizes.last().copied().unwrap_or(0);
    let listers = [
        Lister {
            label: "ctscope list",
            program: ctx.ctscope.clone(),
            args: &["list"],
            checked: true,
        },
        Lister {
            label: "ctscope list -o json",
            program: ctx.ctscope.clone(),
            args: &["list", "-o", "json"],
            checked: true,
        },
        Lister {
            label: REFERENCE,
            program: "conntrack".into(),
            args: &["-L"],
            checked: true,
        },
        Lister {
            label: "cat /proc/net/nf_conntrack",
            program: "cat".into(),
            args: &["/proc/net/nf_conntrack"],
            checked: false,
        },
    ];

    // nf_conntrack_max is one host-wide limit (read-only inside a namespace
    // on 6.18) that each namespace's count is held to; raised for the bench
    // and put back afterwards. Declared before the namespace so it is put
    // back after the namespace is gone.
    let max = largest + largest / 4 + 65_536;
    let max_guard = HostSysctl::raise("net.netfilter.nf_conntrack_max", max)?;
    let netns = Netns::create()?;
    // Unreplied UDP entries live 30 s by default: long enough to expire
    // between the fill and the last run of a 1M table.
    netns.sysctl("net.netfilter.nf_conntrack_udp_timeout", "3600")?;
    netns.sysctl("net.netfilter.nf_conntrack_udp_timeout_stream", "3600")?;
    let foreign_before = foreign_entries(&netns.name);
    eprintln!(
        "xtask: listing bench in netns {} (nf_conntrack_max {}, buckets {}), sizes {sizes:?}, {runs} runs",
        netns.name,
        read_sysctl("net.netfilter.nf_conntrack_max"),
        read_sysctl("net.netfilter.nf_conntrack_buckets"),
    );
    if foreign_before > 0 {
        eprintln!(
            "xtask: other namespaces hold {foreign_before} conntrack entries; every dump walks them too, \
             so the timings are higher than on an idle machine"
        );
    }

    let stderr_path = ctx.scratch.join("listing.stderr");
    let mut results = Vec::new();
    for (step, &size) in sizes.iter().enumerate() {
        check_interrupted()?;
        let fill = fill_to(ctx, &netns, size, step)?;
        eprintln!(
            "xtask: {size} entries ({} new flows in {:.2} s); checking the listers agree",
            fill.flows,
            fill.elapsed.as_secs_f64()
        );

        // One untimed pass that counts lines: the listers must agree, and it
        // warms caches for the timed runs.
        let mut lines = Vec::new();
        for lister in &listers {
            check_interrupted()?;
            let outcome = measure(
                netns.command(&lister.program).args(lister.args),
                Stdout::CountLines,
                &stderr_path,
            )?;
            lines.push((lister.label, outcome.lines.unwrap_or(0)));
        }
        let reference = lines
            .iter()
            .find(|(label, _)| *label == REFERENCE)
            .map_or(0, |(_, n)| *n);
        for (lister, (label, n)) in listers.iter().zip(&lines) {
            if lister.checked && *n != reference {
                bail!(
                    "{label} printed {n} lines but {REFERENCE} printed {reference}, on a table of {} entries",
                    fill.count
                );
            }
        }
        let slack = size / 100 + 10;
        if reference.abs_diff(size) > slack {
            bail!("{REFERENCE} printed {reference} lines, the table should hold about {size}");
        }

        let mut samples: Vec<Vec<Sample>> = listers.iter().map(|_| Vec::new()).collect();
        for run in 0..runs {
            // Interleaved: every round starts with the next command, so drift
            // (caches, timers, other load) spreads over all of them.
            for k in 0..listers.len() {
                check_interrupted()?;
                let i = (run + k) % listers.len();
                let lister = &listers[i];
                let outcome = measure(
                    netns.command(&lister.program).args(lister.args),
                    Stdout::Null,
                    &stderr_path,
                )?;
                samples[i].push(outcome.sample);
            }
            eprintln!("xtask: {size} entries: round {}/{runs} done", run + 1);
        }
        let count_after = netns.count()?;
        if count_after.abs_diff(fill.count) > slack {
            bail!(
                "the table went from {} to {count_after} entries during the runs (entries expiring?)",
                fill.count
            );
        }
        let result = SizeResult {
            size,
            fill,
            count_after,
            lines,
            samples,
        };
        println!("{}", size_table(&listers, &result));
        results.push(result);
    }
    let foreign = (foreign_before, foreign_entries(&netns.name));
    let markdown = listing_report(ctx, &listers, &results, runs, &max_guard, foreign);
    drop(netns);
    Ok(Section {
        name: "listing",
        markdown,
    })
}

/// Adds UDP flows until the namespace holds `size` entries, and checks it
/// does. Each step uses its own source addresses so its tuples are new.
fn fill_to(ctx: &Ctx, netns: &Netns, size: u64, step: usize) -> Result<Fill> {
    let before = netns.count()?;
    let mut flows = 0;
    let mut elapsed = Duration::ZERO;
    if before < size {
        flows = size - before;
        let src_base = format!("127.{}.0.1", 10 + step % 200);
        let start = Instant::now();
        run_quiet_logged(netns.command(&ctx.ctchurn).args([
            "--proto",
            "udp",
            "--count",
            &flows.to_string(),
            "--src-base",
            &src_base,
            "--dst",
            "127.0.0.1",
            "--dport-base",
            "10000",
        ]))?;
        elapsed = start.elapsed();
    }
    let count = netns.count()?;
    if count < size || count > size + size / 100 + 10 {
        bail!(
            "after adding {flows} flows the namespace holds {count} conntrack entries, not about {size} \
             (nf_conntrack_max {}; dropped or expired entries?)",
            read_sysctl("net.netfilter.nf_conntrack_max")
        );
    }
    Ok(Fill {
        count,
        flows,
        elapsed,
    })
}

/// Runs a command, passing its stderr through (ctchurn says its rate there).
fn run_quiet_logged(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// 1234567 -> "1,234,567".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The Markdown table of one size (also what stdout shows).
fn size_table(listers: &[Lister], result: &SizeResult) -> String {
    let reference = listers
        .iter()
        .position(|l| l.label == REFERENCE)
        .and_then(|i| Spread::of(result.samples[i].iter().map(|s| s.wall)));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "#### {} entries\n\n| command | median | min | max | user CPU (median) | system CPU (median) | peak RSS | median / conntrack -L |\n|---|---:|---:|---:|---:|---:|---:|---:|",
        thousands(result.size)
    );
    for (lister, samples) in listers.iter().zip(&result.samples) {
        let Some(wall) = Spread::of(samples.iter().map(|s| s.wall)) else {
            continue;
        };
        let median_of = |f: fn(&Sample) -> Duration| {
            Spread::of(samples.iter().map(f)).map_or(Duration::ZERO, |s| s.median)
        };
        let (user, sys) = (median_of(|s| s.user), median_of(|s| s.sys));
        let rss = samples.iter().map(|s| s.max_rss_kib).max().unwrap_or(0);
        let ratio = reference.map_or_else(
            || "-".to_owned(),
            |r| {
                format!(
                    "{:.2}",
                    wall.median.as_secs_f64() / r.median.as_secs_f64().max(1e-9)
                )
            },
        );
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} | {} | {} | {ratio} |",
            lister.label,
            secs(wall.median),
            secs(wall.min),
            secs(wall.max),
            secs(user),
            secs(sys),
            mib(rss),
        );
    }
    let lines: Vec<String> = result
        .lines
        .iter()
        .map(|(label, n)| format!("{label} {}", thousands(*n)))
        .collect();
    let _ = writeln!(
        out,
        "\nEntries (conntrack -C): {} after the fill, {} after the runs. Lines printed in the check pass: {}.",
        thousands(result.fill.count),
        thousands(result.count_after),
        lines.join(", ")
    );
    out
}

/// The listing section of the report.
fn listing_report(
    ctx: &Ctx,
    listers: &[Lister],
    results: &[SizeResult],
    runs: usize,
    max: &HostSysctl,
    foreign: (u64, u64),
) -> String {
    let m = &ctx.machine;
    let mut out = String::new();
    let _ = writeln!(out, "## Listing the table: ctscope list vs conntrack -L\n");
    let _ = writeln!(
        out,
        "Command: `{}` (run {}).\n",
        ctx.args.command_line(),
        m.date
    );
    let _ = writeln!(
        out,
        "Machine: {} cores ({}), {} RAM, kernel {}; {}; {}.\n",
        m.nproc,
        m.cpu_model,
        m.memory,
        m.kernel,
        m.conntrack_version,
        m.ctscope_version(&ctx.ctscope)
    );
    for result in results {
        let _ = writeln!(out, "{}", size_table(listers, result));
    }

    // Peak RSS per size, side by side: ctscope streams the dump, so its
    // memory should not grow with the table.
    let _ = write!(
        out,
        "Peak RSS (largest ru_maxrss over the runs):\n\n| command |"
    );
    for r in results {
        let _ = write!(out, " {} entries |", thousands(r.size));
    }
    let _ = write!(out, "\n|---|");
    for _ in results {
        let _ = write!(out, "---:|");
    }
    out.push('\n');
    for (i, lister) in listers.iter().enumerate() {
        let _ = write!(out, "| `{}` |", lister.label);
        for r in results {
            let rss = r.samples[i]
                .iter()
                .map(|s| s.max_rss_kib)
                .max()
                .unwrap_or(0);
            let _ = write!(out, " {} |", mib(rss));
        }
        out.push('\n');
    }

    let fills: Vec<String> = results
        .iter()
        .filter(|r| r.fill.flows > 0)
        .map(|r| {
            format!(
                "{} flows in {:.2} s ({}/s)",
                thousands(r.fill.flows),
                r.fill.elapsed.as_secs_f64(),
                thousands((r.fill.flows as f64 / r.fill.elapsed.as_secs_f64().max(1e-9)) as u64)
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "\nHow it was measured: one network namespace made for the run (lo up, an nftables \
         input chain with `ct state new counter`), filled by `ctchurn --proto udp` (one datagram \
         per new tuple from 127.x sources to 127.0.0.1, sendmmsg; each table grows from the \
         previous one: {}), so the entries are unreplied UDP flows. \
         `nf_conntrack_udp_timeout` and `_stream` were set to 3600 s in the namespace so no entry \
         expires during the runs; `nf_conntrack_max` (host-wide) was {} during the runs ({} \
         before; put back afterwards); `nf_conntrack_buckets` was left at {}. The hash table is \
         shared by all namespaces and a dump walks all of it: other namespaces (the host's and \
         those under /run/netns) held {} entries at the start and {} at the end. Each command ran inside the namespace \
         (entered with setns(2) between fork and exec, no `ip netns exec` in the timing) with stdout \
         to /dev/null, {runs} times per size, interleaved (each round starts with the next \
         command), after one untimed pass that counts the lines each prints: ctscope's text and \
         JSON line counts must equal conntrack -L's or the bench fails. Wall time is from spawn to \
         wait4(2); user and system CPU are the child's ru_utime and ru_stime (system time is \
         mostly the kernel walking the conntrack hash table for the dump) and peak RSS its \
         ru_maxrss, all from wait4. The ratio is the command's median wall time over conntrack -L's median in the \
         same run (below 1 is faster).",
        fills.join("; "),
        thousands(max.value),
        max.old,
        read_sysctl("net.netfilter.nf_conntrack_buckets"),
        thousands(foreign.0),
        thousands(foreign.1),
    );
    out
}

// ------------------------------------------------------------ the events benchmark

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

/// How a reaped child ended and the CPU it used.
#[derive(Clone, Copy, Debug)]
struct Exited {
    status: libc::c_int,
    /// ru_utime + ru_stime.
    cpu: Duration,
}

impl Exited {
    fn describe(self) -> String {
        if libc::WIFSIGNALED(self.status) {
            format!("killed by signal {}", libc::WTERMSIG(self.status))
        } else {
            format!("exit status {}", libc::WEXITSTATUS(self.status))
        }
    }
}

/// wait4(2) on our child `pid`: how it ended and its CPU time once it has
/// exited; `None` while it runs (with `WNOHANG`).
fn wait_child(pid: libc::pid_t, flags: libc::c_int) -> io::Result<Option<Exited>> {
    // SAFETY: plain C struct, all-zero is valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: pid is our unreaped child; status and usage are writable.
        let r = unsafe { libc::wait4(pid, &mut status, flags, &mut usage) };
        if r == pid {
            let tv = |t: libc::timeval| {
                Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
                    + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
            };
            return Ok(Some(Exited {
                status,
                cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
            }));
        }
        if r == 0 {
            return Ok(None);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// A listener running in the background, stdout and stderr to files. Killed
/// and reaped on drop if still running, so an error leaves nothing behind.
struct Running {
    pid: libc::pid_t,
    stdout: PathBuf,
    stderr: PathBuf,
    exit: Option<Exited>,
}

impl Running {
    fn spawn(cmd: &mut Command, stdout: PathBuf, stderr: PathBuf) -> Result<Self> {
        let out =
            File::create(&stdout).with_context(|| format!("cannot create {}", stdout.display()))?;
        let err =
            File::create(&stderr).with_context(|| format!("cannot create {}", stderr.display()))?;
        // The Child handle is dropped: the child has no pipes, and it is
        // reaped here with wait4 (for its rusage), not by std.
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start {cmd:?}"))?;
        Ok(Self {
            pid: libc::pid_t::try_from(child.id()).context("pid out of range")?,
            stdout,
            stderr,
            exit: None,
        })
    }

    /// Reaps the child if it has exited; true while it runs.
    fn alive(&mut self) -> Result<bool> {
        if self.exit.is_none() {
            self.exit = wait_child(self.pid, libc::WNOHANG).context("wait4")?;
        }
        Ok(self.exit.is_none())
    }

    /// SIGINT (as Ctrl-C would), then reaps it; SIGKILL if it has not exited
    /// after [`EXIT_GRACE`].
    fn interrupt(&mut self) -> Result<Exited> {
        if self.alive()? {
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(self.pid, libc::SIGINT) };
            let start = Instant::now();
            while self.alive()? {
                if start.elapsed() > EXIT_GRACE {
                    eprintln!(
                        "xtask: pid {} did not exit within {} s of SIGINT; killing it",
                        self.pid,
                        EXIT_GRACE.as_secs()
                    );
                    // SAFETY: as above.
                    unsafe { libc::kill(self.pid, libc::SIGKILL) };
                    self.exit = wait_child(self.pid, 0).context("wait4")?;
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.exit.context("the child was not reaped")
    }

    /// The last lines of its stderr, for an error message. Only used before
    /// a burst: during one, conntrack -E's stderr is a flood of ENOBUFS
    /// warnings.
    fn stderr_tail(&self) -> String {
        let text = fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(3)..].join(" / ")
    }

    fn output_len(&self) -> u64 {
        fs::metadata(&self.stdout).map_or(0, |m| m.len())
    }

    /// Packets the kernel dropped for want of room in the receive buffers
    /// of its sockets subscribed to `group` (sk_drops).
    fn socket_drops(&self, group: u32) -> u64 {
        netfilter_sockets(self.pid)
            .iter()
            .filter(|s| s.groups & group != 0)
            .map(|s| s.drops)
            .sum()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.exit.is_none() {
            // SAFETY: kill(2) and wait4(2) on our own unreaped child.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            let _ = wait_child(self.pid, 0);
        }
    }
}

/// One row of /proc/net/netlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NetlinkRow {
    /// Eth: the netlink protocol.
    protocol: u32,
    /// Groups: the first 32 multicast groups joined, as a bitmask.
    groups: u32,
    /// Drops: sk_drops.
    drops: u64,
    inode: u64,
}

/// Parses /proc/net/netlink (`sk Eth Pid Groups Rmem Wmem Dump Locks Drops
/// Inode`); lines that do not parse are skipped.
fn parse_netlink_table(text: &str) -> Vec<NetlinkRow> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 {
                return None;
            }
            Some(NetlinkRow {
                protocol: cols[1].parse().ok()?,
                groups: u32::from_str_radix(cols[3], 16).ok()?,
                drops: cols[8].parse().ok()?,
                inode: cols[9].parse().ok()?,
            })
        })
        .collect()
}

/// The NETLINK_NETFILTER sockets of process `pid`: the rows of its
/// namespace's netlink table whose inode is one of its descriptors.
fn netfilter_sockets(pid: libc::pid_t) -> Vec<NetlinkRow> {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let inodes: Vec<u64> = fds
        .flatten()
        .filter_map(|fd| fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect();
    let table = fs::read_to_string(format!("/proc/{pid}/net/netlink")).unwrap_or_default();
    parse_netlink_table(&table)
        .into_iter()
        .filter(|row| row.protocol == NETLINK_NETFILTER && inodes.contains(&row.inode))
        .collect()
}

/// Waits until each listener has a netfilter socket in all of `groups`, so
/// none misses the start of the burst.
fn wait_subscribed(running: &mut [Running], labels: &[&str], groups: u32) -> Result<()> {
    let start = Instant::now();
    loop {
        check_interrupted()?;
        let mut all = true;
        for (listener, label) in running.iter_mut().zip(labels) {
            if !listener.alive()? {
                let how = listener.exit.map(Exited::describe).unwrap_or_default();
                bail!(
                    "`{label}` exited before the burst ({how}): {}",
                    listener.stderr_tail()
                );
            }
            all &= netfilter_sockets(listener.pid)
                .iter()
                .any(|s| s.groups & groups == groups);
        }
        if all {
            return Ok(());
        }
        if start.elapsed() > SUBSCRIBE_TIMEOUT {
            bail!(
                "the event listeners did not all join netlink groups {groups:#x} within {} s",
                SUBSCRIBE_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until no listener's output has grown for [`QUIET`]; returns, for
/// each, how long after the call its output last grew (zero if it did not).
fn wait_caught_up(running: &[Running]) -> Result<Vec<Duration>> {
    let start = Instant::now();
    let mut lens: Vec<u64> = running.iter().map(Running::output_len).collect();
    let mut grew = vec![Duration::ZERO; running.len()];
    loop {
        std::thread::sleep(Duration::from_millis(50));
        check_interrupted()?;
        let now = start.elapsed();
        for (i, listener) in running.iter().enumerate() {
            let len = listener.output_len();
            if len != lens[i] {
                lens[i] = len;
                grew[i] = now;
            }
        }
        let last = grew.iter().max().copied().unwrap_or_default();
        if now.saturating_sub(last) >= QUIET {
            return Ok(grew);
        }
        if now >= DRAIN_CAP {
            eprintln!(
                "xtask: the listeners' output was still growing {} s after the burst; stopping them",
                DRAIN_CAP.as_secs()
            );
            return Ok(grew);
        }
    }
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

/// The ctchurn command of one burst: `flows` new UDP flows from addresses
/// of their own (127.`net`.0.x).
fn churn_command(ctx: &Ctx, netns: &Netns, flows: u64, net: u64) -> Command {
    let mut cmd = netns.command(&ctx.ctchurn);
    cmd.args([
        "--proto",
        "udp",
        "--count",
        &flows.to_string(),
        "--src-base",
        &format!("127.{}.0.1", 20 + net % 200),
        "--dst",
        "127.0.0.1",
        "--dport-base",
        "10000",
    ]);
    cmd
}

/// Parses ctchurn's last stderr line, `ctchurn: N flows in S s (R flows/s)`,
/// into flows per second.
fn parse_churn_rate(stderr: &str) -> Option<f64> {
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

/// Runs ctchurn in the namespace; returns its rate (flows per second).
fn churn(ctx: &Ctx, netns: &Netns, flows: u64, net: u64) -> Result<(f64, Duration)> {
    let stderr_path = ctx.scratch.join("events-ctchurn.stderr");
    let outcome = measure(
        &mut churn_command(ctx, netns, flows, net),
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
    let outcome = measure(
        netns.command("conntrack").arg("-F"),
        Stdout::Null,
        &ctx.scratch.join("events-flush.stderr"),
    )?;
    let left = netns.count()?;
    if left > 0 {
        bail!("{left} conntrack entries are left after conntrack -F");
    }
    Ok((before, outcome.sample.wall))
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
    let slack = flows / 100 + 10;
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
    for k in 0..n {
        let i = (run + k) % n;
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
        Burst::Destroy => {
            let outcome = measure(
                netns.command("conntrack").arg("-F"),
                Stdout::Null,
                &ctx.scratch.join("events-flush.stderr"),
            )?;
            (outcome.sample.wall, None)
        }
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
            cpu: exit.cpu,
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
                if count.abs_diff(flows) > flows / 100 + 10 {
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

/// Median, min and max of numbers.
fn spread_f64(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = values.into_iter().collect();
    v.sort_unstable_by(f64::total_cmp);
    let (first, last) = (*v.first()?, *v.last()?);
    let mid = v.len() / 2;
    let median = if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    };
    Some((median, first, last))
}

/// ctscope events against conntrack -E while 500,000 flows are created and
/// then flushed, and the churn rate with and without a listener.
fn events(ctx: &Ctx) -> Result<Section> {
    let quick = ctx.args.quick;
    let flows = if quick {
        EVENT_FLOWS_QUICK
    } else {
        EVENT_FLOWS
    };
    let runs = ctx.args.runs.unwrap_or(if quick { 1 } else { 5 }).max(1);

    let max_guard =
        HostSysctl::raise("net.netfilter.nf_conntrack_max", flows + flows / 4 + 65_536)?;
    let netns = Netns::create()?;
    wait_for_conntrack_teardown(&netns.name);
    // Unreplied UDP entries live 30 s by default: the flush must find all
    // of them.
    netns.sysctl("net.netfilter.nf_conntrack_udp_timeout", "3600")?;
    netns.sysctl("net.netfilter.nf_conntrack_udp_timeout_stream", "3600")?;
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

/// `part` as a percentage of `whole`.
fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        return 0.0;
    }
    part as f64 * 100.0 / whole as f64
}

/// One line on stderr per burst, to follow the bench.
fn log_burst(
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
struct EventsReport<'a> {
    flows: u64,
    runs: usize,
    new_listeners: &'a [EventListener],
    destroy_listeners: &'a [EventListener],
    new_runs: &'a [BurstRun],
    destroy_runs: &'a [BurstRun],
    rates: &'a ChurnRates,
    churn_label: String,
    /// 1-minute load average before and after.
    load: (String, String),
    max: &'a HostSysctl,
}

impl EventsReport<'_> {
    /// The three tables, for stdout and the report.
    fn tables(&self) -> String {
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
    fn markdown(&self, ctx: &Ctx) -> String {
        let m = &ctx.machine;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "## Event capture at full churn: ctscope events vs conntrack -E\n"
        );
        let _ = writeln!(
            out,
            "Command: `{}` (run {}).\n",
            ctx.args.command_line(),
            m.date
        );
        let _ = writeln!(
            out,
            "Machine: {} cores ({}), {} RAM, kernel {}; {}; {}. Load average (1 min) {} before the bench, {} after.\n",
            m.nproc,
            m.cpu_model,
            m.memory,
            m.kernel,
            m.conntrack_version,
            m.ctscope_version(&ctx.ctscope),
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

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
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

// ------------------------------------------------------------ the snapshot benchmark

/// Table sizes of the snapshot bench (quick mode: [`SNAPSHOT_QUICK_SIZE`]).
const SNAPSHOT_SIZES: [u64; 2] = [10_000, 100_000];
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
            shell_word(&netns.name),
            shell_word(&self.wrapper.to_string_lossy()),
            shell_word(&out.to_string_lossy()),
            shell_word(&go.to_string_lossy()),
        );
        for w in words {
            line.push(' ');
            line.push_str(&shell_word(w));
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
                &format!("cat >{}", shell_word(&piped.to_string_lossy())),
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

/// `word` quoted for sh.
fn shell_word(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
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

struct Snapshotter {
    label: &'static str,
    program: String,
    args: &'static [&'static str],
    way: SnapshotWay,
}

/// What one table size measured.
struct SnapshotSize {
    count: u64,
    rows: Vec<Option<u64>>,
    walls: Vec<Vec<Duration>>,
}

/// ctscope top --once against iptstate -1, both on a tty (tmux), plus
/// ctscope top --once with stdout to /dev/null.
fn snapshot(ctx: &Ctx) -> Result<Section> {
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
    ];
    let largest = sizes.last().copied().unwrap_or(0);
    let max_guard = HostSysctl::raise(
        "net.netfilter.nf_conntrack_max",
        largest + largest / 4 + 65_536,
    )?;
    let netns = Netns::create()?;
    netns.sysctl("net.netfilter.nf_conntrack_udp_timeout", "3600")?;
    netns.sysctl("net.netfilter.nf_conntrack_udp_timeout_stream", "3600")?;
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
            let mut words = vec![tool.program.as_str()];
            words.extend(tool.args);
            rows.push(match tool.way {
                SnapshotWay::Tty => {
                    let (_, pane) = tmux.run(&netns, &words, true)?;
                    Some(flow_rows(&pane.unwrap_or_default()))
                }
                SnapshotWay::DevNull => None,
            });
        }
        let ctscope_rows = rows[1].unwrap_or(0);
        let iptstate_rows = rows[0].unwrap_or(0);
        let slack = size / 100 + 10;
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
            for k in 0..tools.len() {
                check_interrupted()?;
                let i = (run + k) % tools.len();
                let tool = &tools[i];
                let wall = match tool.way {
                    SnapshotWay::Tty => {
                        let mut words = vec![tool.program.as_str()];
                        words.extend(tool.args);
                        tmux.run(&netns, &words, false)?.0
                    }
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

    let m = &ctx.machine;
    let mut out = String::new();
    let _ = writeln!(out, "## One snapshot: ctscope top --once vs iptstate -1\n");
    let _ = writeln!(
        out,
        "Command: `{}` (run {}).\n",
        ctx.args.command_line(),
        m.date
    );
    let _ = writeln!(
        out,
        "Machine: {} cores ({}), {} RAM, kernel {}; {}; {}.\n",
        m.nproc,
        m.cpu_model,
        m.memory,
        m.kernel,
        output_line(Command::new("dpkg-query").args([
            "-W",
            "-f",
            "iptstate ${Version}",
            "iptstate"
        ]))
        .unwrap_or_else(|| "iptstate (version unknown)".into()),
        m.ctscope_version(&ctx.ctscope),
    );
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
        "### {} entries\n\n| command | rows printed | median | min | max | vs iptstate |\n|---|---:|---:|---:|---:|---:|\n",
        thousands(result.count)
    );
    let reference = Spread::of(result.walls[0].iter().copied());
    for (i, tool) in tools.iter().enumerate() {
        let Some(spread) = Spread::of(result.walls[i].iter().copied()) else {
            continue;
        };
        let rows = result.rows[i].map_or_else(|| "-".into(), thousands);
        let ratio = reference.map_or_else(
            || "?".into(),
            |r| {
                format!(
                    "{:.2}x",
                    spread.median.as_secs_f64() / r.median.as_secs_f64().max(1e-9)
                )
            },
        );
        let _ = writeln!(
            out,
            "| {} | {rows} | {} | {} | {} | {ratio} |",
            tool.label,
            secs(spread.median),
            secs(spread.min),
            secs(spread.max)
        );
    }
    out
}

// ------------------------------------------------------------ the overhead benchmark

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
fn overhead(ctx: &Ctx) -> Result<Section> {
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

// ------------------------------------------------------------ machine and report file

/// What the report says about the machine.
struct Machine {
    nproc: usize,
    cpu_model: String,
    memory: String,
    kernel: String,
    date: String,
    conntrack_version: String,
}

impl Machine {
    fn describe() -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                let (key, value) = l.split_once(':')?;
                (key.trim() == "model name").then(|| value.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or_else(
                || "?".into(),
                |kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0),
            );
        Self {
            nproc: std::thread::available_parallelism().map_or(1, usize::from),
            cpu_model,
            memory,
            kernel: read_sysctl("kernel.osrelease"),
            date: output_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
                .unwrap_or_else(|| "date unknown".into()),
            conntrack_version: output_line(Command::new("conntrack").arg("--version"))
                .unwrap_or_else(|| "conntrack (version unknown)".into()),
        }
    }

    fn ctscope_version(&self, ctscope: &Path) -> String {
        let version = output_line(Command::new(ctscope).arg("--version"))
            .unwrap_or_else(|| "(version unknown)".into());
        let commit = output_line(
            Command::new("git")
                .args(["rev-parse", "--short", "HEAD"])
                .current_dir(workspace_root()),
        );
        // Uncommitted changes to the sources make the commit an approximation.
        let dirty = Command::new("git")
            .args(["status", "--porcelain", "--untracked-files=no"])
            .current_dir(workspace_root())
            .output()
            .is_ok_and(|o| o.status.success() && !o.stdout.is_empty());
        match (commit, dirty) {
            (Some(commit), false) => format!("{version}, commit {commit}"),
            (Some(commit), true) => format!("{version}, commit {commit} plus uncommitted changes"),
            (None, _) => version,
        }
    }
}

/// The first line a command prints (stdout, else stderr), if it exits 0.
fn output_line(cmd: &mut Command) -> Option<String> {
    let out = cmd.stdin(Stdio::null()).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .next()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
}

/// Puts `body` between the section's markers in the report at `path`,
/// keeping everything else; creates the file (with a title) if missing.
fn write_section(path: &Path, name: &str, body: &str) -> Result<()> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => String::new(),
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
    };
    let merged = merge_section(&text, name, body);
    let tmp = path.with_extension("md.tmp");
    fs::write(&tmp, merged).with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn merge_section(text: &str, name: &str, body: &str) -> String {
    let begin = format!("<!-- bench:{name}:begin -->");
    let end = format!("<!-- bench:{name}:end -->");
    let block = format!("{begin}\n{}\n{end}\n", body.trim_end());
    if let Some(b) = text.find(&begin)
        && let Some(e) = text[b..].find(&end).map(|e| b + e)
    {
        let rest = &text[e + end.len()..];
        let rest = rest.strip_prefix('\n').unwrap_or(rest);
        return format!("{}{block}{rest}", &text[..b]);
    }
    if text.trim().is_empty() {
        return format!("# ctscope benchmarks\n\n{block}");
    }
    format!("{}\n\n{block}", text.trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_file_gets_a_title() {
        let out = merge_section("", "listing", "body");
        assert_eq!(
            out,
            "# ctscope benchmarks\n\n<!-- bench:listing:begin -->\nbody\n<!-- bench:listing:end -->\n"
        );
    }

    #[test]
    fn section_is_replaced_and_the_rest_kept() {
        let text = "# T\n\nintro\n\n<!-- bench:listing:begin -->\nold\n<!-- bench:listing:end -->\n\n## Other\nkeep\n";
        let out = merge_section(text, "listing", "new\n");
        assert_eq!(
            out,
            "# T\n\nintro\n\n<!-- bench:listing:begin -->\nnew\n<!-- bench:listing:end -->\n\n## Other\nkeep\n"
        );
    }

    #[test]
    fn missing_section_is_appended() {
        let out = merge_section(
            "# T\n\n<!-- bench:events:begin -->\nx\n<!-- bench:events:end -->\n",
            "listing",
            "y",
        );
        assert!(out.starts_with("# T\n\n<!-- bench:events:begin -->\nx\n<!-- bench:events:end -->\n\n<!-- bench:listing:begin -->\ny\n"));
    }

    #[test]
    fn end_marker_before_begin_is_not_a_section() {
        let text = "<!-- bench:listing:end -->\n";
        let out = merge_section(text, "listing", "y");
        assert!(out.ends_with("<!-- bench:listing:begin -->\ny\n<!-- bench:listing:end -->\n"));
    }

    #[test]
    fn spread_of_odd_and_even() {
        let ms = Duration::from_millis;
        let s = Spread::of([ms(5), ms(1), ms(3)]).expect("non-empty");
        assert_eq!((s.median, s.min, s.max), (ms(3), ms(1), ms(5)));
        let s = Spread::of([ms(4), ms(1), ms(2), ms(8)]).expect("non-empty");
        assert_eq!((s.median, s.min, s.max), (ms(3), ms(1), ms(8)));
        assert!(Spread::of([]).is_none());
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }

    #[test]
    fn netlink_table_rows() {
        let text = "sk               Eth Pid        Groups   Rmem     Wmem     Dump  Locks    Drops    Inode\n\
            00000000f49334e1 12  2278       00000000 0        0        0     2        0        817243  \n\
            00000000605f28f9 12  4221369939 00000005 0        0        0     2        9689     817244  \n\
            garbage line\n\
            000000000d65ecbb 0   0          0000zz00 0        0        0     2        0        817197\n";
        assert_eq!(
            parse_netlink_table(text),
            vec![
                NetlinkRow {
                    protocol: 12,
                    groups: 0,
                    drops: 0,
                    inode: 817_243
                },
                NetlinkRow {
                    protocol: 12,
                    groups: GROUP_NEW | GROUP_DESTROY,
                    drops: 9689,
                    inode: 817_244
                },
            ]
        );
        assert!(parse_netlink_table("").is_empty());
    }

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

    #[test]
    fn spread_of_numbers() {
        assert_eq!(spread_f64([3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(spread_f64([4.0, 1.0]), Some((2.5, 1.0, 4.0)));
        assert_eq!(spread_f64([]), None);
        assert_eq!(percent(1, 0), 0.0);
        assert!((percent(999, 1000) - 99.9).abs() < 1e-9);
    }

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

    #[test]
    fn snapshot_rows_are_flow_lines() {
        let pane = "ctscope top -- Sort by: SrcIP -- 2 of 2 entries\r\n\
                    Source   Destination   Prt  State  TTL\r\n\
                    127.1.0.1:1   127.0.0.1:10000  udp         0:00:11\r\n\
                    127.1.0.1:1   127.0.0.1:10001  udp         0:00:11\r\n";
        assert_eq!(flow_rows(pane), 2);
        assert_eq!(shell_word("it's"), "'it'\\''s'");
    }

    #[test]
    fn lines_are_counted_across_reads() {
        let data = "a\nb\n\nc".as_bytes();
        assert_eq!(count_lines(data).expect("reads"), 3);
    }
}

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

/// The criterion benches of conntrack-user (ring decode, live table and
/// top frame at 1M entries), run and summarised. Full mode only.
fn criterion(ctx: &Ctx) -> Result<Section> {
    let mut out = String::from("## Criterion benches: ring decode, live table and top frame\n\n");
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
    for bench in ["ring_decode", "top_frame"] {
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
        figures.extend(parse_criterion(&text));
    }
    if figures.is_empty() {
        bail!("criterion printed no figure");
    }
    let _ = writeln!(
        out,
        "Command: `cargo xtask bench --only criterion`, which runs `cargo bench -p conntrack-user \
         --bench ring_decode` and `--bench top_frame` (criterion, 1 s warm-up, 4 s measurement; \
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
    out.push_str("| benchmark | measure | [low mean high] |\n|---|---|---|\n");
    for f in &figures {
        let _ = writeln!(out, "| `{}` | {} | {} |", f.id, f.kind, f.interval);
    }
    out.push_str(
        "\nTargets: ring decode at least 5 M records/s on one core (issue 3); at 1,000,000 \
         entries, at most 300 bytes per entry and a frame in at most 50 ms (issue 4). There \
         is no reference tool for these (iptstate stops at 16,384 rows).\n",
    );
    Ok(Section {
        name: "criterion",
        markdown: out,
    })
}

#[cfg(test)]
mod criterion_tests {
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
