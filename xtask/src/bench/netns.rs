//! The bench's own network namespace, the host-wide sysctls it raises and
//! puts back, and Ctrl-C between two steps.
use std::{
    fs::{self, File},
    io,
    os::{
        fd::{AsRawFd, RawFd},
        unix::process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{Ctx, tolerance};
use crate::run_checked_here;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C or SIGTERM ends the bench between two steps, so the namespace and
/// nf_conntrack_max are put back by the guards instead of being left behind.
/// (A child in the foreground gets Ctrl-C too and fails, which ends the step.)
/// The default actions come back on drop.
pub(super) struct SignalGuard;

const SIGNALS: [nix::sys::signal::Signal; 2] = [
    nix::sys::signal::Signal::SIGINT,
    nix::sys::signal::Signal::SIGTERM,
];

impl SignalGuard {
    pub(super) fn install() -> Result<Self> {
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

pub(super) fn check_interrupted() -> Result<()> {
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
pub(super) struct Netns {
    pub(super) name: String,
    file: File,
}

impl Netns {
    /// Creates the namespace, brings lo up and loads an nftables rule with
    /// `ct state new`, which turns conntrack on in it.
    pub(super) fn create() -> Result<Self> {
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
    pub(super) fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        command_in(&self.file, program)
    }

    /// Runs `f` on a thread that has joined the namespace (setns affects
    /// only the calling thread), e.g. to connect to its loopback.
    pub(super) fn run_in<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    nix::sched::setns(&self.file, nix::sched::CloneFlags::CLONE_NEWNET)
                        .context("setns into the bench namespace")?;
                    Ok(f())
                })
                .join()
                .map_err(|_| anyhow::anyhow!("the thread inside the namespace panicked"))?
        })
    }

    /// Sets a sysctl inside the namespace (per-netns ones only).
    pub(super) fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        run_quiet(
            self.command("sysctl")
                .args(["-q", "-w", &format!("{key}={value}")]),
        )
    }

    /// The namespace's entry count, as `conntrack -C` says.
    pub(super) fn count(&self) -> Result<u64> {
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
pub(super) fn foreign_entries(own: &str) -> u64 {
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
pub(super) fn remove_stale_namespaces() {
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
pub(super) struct HostSysctl {
    path: PathBuf,
    pub(super) old: String,
    /// The value in force during the bench.
    pub(super) value: u64,
}

impl HostSysctl {
    /// Raises the value under /proc/sys to at least `value`.
    pub(super) fn raise(key: &str, value: u64) -> Result<Self> {
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

/// Raises nf_conntrack_max for tables of up to `largest` entries, then makes
/// the namespace, where unreplied UDP entries live an hour. Bind the two in
/// this order (`let (max, netns) = ...`): the namespace is then deleted
/// before nf_conntrack_max is put back.
pub(super) fn table_netns(largest: u64) -> Result<(HostSysctl, Netns)> {
    // nf_conntrack_max is one host-wide limit (read-only inside a namespace
    // on 6.18) that each namespace's count is held to; raised for the bench
    // and put back afterwards.
    let max = HostSysctl::raise(
        "net.netfilter.nf_conntrack_max",
        largest + largest / 4 + 65_536,
    )?;
    let netns = Netns::create()?;
    // Unreplied UDP entries live 30 s by default: long enough to expire
    // between the fill and the last run of a 1M table, or before a flush.
    netns.sysctl("net.netfilter.nf_conntrack_udp_timeout", "3600")?;
    netns.sysctl("net.netfilter.nf_conntrack_udp_timeout_stream", "3600")?;
    Ok((max, netns))
}

/// A sysctl's value as /proc/sys shows it, or "?".
pub(super) fn read_sysctl(key: &str) -> String {
    fs::read_to_string(Path::new("/proc/sys").join(key.replace('.', "/")))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".into())
}

/// Runs a command with its output captured; an error quoting its stderr if
/// it fails.
pub(super) fn run_quiet(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    exited_ok(cmd, &out)
}

/// [`run_quiet`] with `input` on the command's stdin.
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
    exited_ok(cmd, &out)
}

/// An error naming `cmd` and quoting its stderr unless it exited 0.
fn exited_ok(cmd: &Command, out: &Output) -> Result<()> {
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

// ------------------------------------------------------------ filling the table

/// How the table was filled up to a size.
pub(super) struct Fill {
    pub(super) count: u64,
    pub(super) flows: u64,
    pub(super) elapsed: Duration,
}

/// ctchurn making `flows` new UDP flows to 127.0.0.1 from addresses of their
/// own (127.`net`.0.x), so their tuples are new.
pub(super) fn ctchurn_udp(ctx: &Ctx, netns: &Netns, flows: u64, net: u64) -> Command {
    let mut cmd = netns.command(&ctx.ctchurn);
    cmd.args([
        "--proto",
        "udp",
        "--count",
        &flows.to_string(),
        "--src-base",
        &format!("127.{net}.0.1"),
        "--dst",
        "127.0.0.1",
        "--dport-base",
        "10000",
    ]);
    cmd
}

/// Adds UDP flows until the namespace holds `size` entries, and checks it
/// does. Each step uses its own source addresses so its tuples are new.
pub(super) fn fill_to(ctx: &Ctx, netns: &Netns, size: u64, step: usize) -> Result<Fill> {
    let before = netns.count()?;
    let mut flows = 0;
    let mut elapsed = Duration::ZERO;
    if before < size {
        flows = size - before;
        let mut churn = ctchurn_udp(ctx, netns, flows, 10 + step as u64 % 200);
        let start = Instant::now();
        // ctchurn's stderr is passed through: it says its rate there.
        run_checked_here(churn.stdin(Stdio::null()).stdout(Stdio::null()))?;
        elapsed = start.elapsed();
    }
    let count = netns.count()?;
    if count < size || count > size + tolerance(size) {
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
