//! `cargo xtask bench`: ctscope against the reference tools, on tables filled
//! by ctchurn inside a network namespace of the bench's own.
//!
//! Each benchmark returns a Markdown section; the sections go to
//! BENCHMARKS.md between `<!-- bench:NAME:begin -->` / `<!-- bench:NAME:end -->`
//! markers (anything else in the file is kept), or, with `--quick`, to
//! target/bench-quick.md.
//!
//! Benchmarks so far: `listing` (ctscope list vs conntrack -L).
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
    /// Timed runs of each command per size (default 5; with --quick 3).
    #[arg(long)]
    pub runs: Option<usize>,
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

/// The benchmarks, in the order they run; each makes its own namespace.
const BENCHES: &[fn(&Ctx) -> Result<Section>] = &[listing];

/// Runs the benchmarks.
pub fn run(args: &BenchArgs) -> Result<ExitCode> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "cargo xtask bench creates a network namespace and raises net.netfilter.nf_conntrack_max: \
             run it as root"
        );
    }
    let _signals = SignalGuard::install()?;
    let missing: Vec<&str> = ["conntrack", "nft", "ip", "sysctl"]
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
    for bench in BENCHES {
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
    fn lines_are_counted_across_reads() {
        let data = "a\nb\n\nc".as_bytes();
        assert_eq!(count_lines(data).expect("reads"), 3);
    }
}
