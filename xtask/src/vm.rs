//! qemu harness: Debian cloud kernels, an initramfs with the test binaries,
//! `cargo xtask vm-test` and `cargo xtask vm-run`.
//!
//! Everything lives under target/vm/: `kernels/<release>/` holds the
//! unpacked Debian package (downloaded once, then reused) and
//! `initramfs-<release>.cpio` the guest's root file system, rebuilt on every
//! run because that takes well under a second. The guest's /init and test
//! scripts are the files in tests/vm/.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs,
    io::{BufRead, BufReader, BufWriter, Write},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::{cargo, run_checked, setup, shell_quote, workspace_root};

mod initramfs;
mod kernel;
mod suite;

pub use suite::{VmTestArgs, test};

use self::{initramfs::*, kernel::*};

/// The 6.12 kernel the eBPF path was first verified on; preferred while
/// Debian still carries it, else the newest 6.12.
const PINNED_KERNEL_PACKAGES: &[&str] = &["linux-image-6.12.117+deb12-cloud-amd64-unsigned"];
/// Modules /init loads, in this order after their dependencies (read from
/// each module's .modinfo, so libcrc32c is loaded only where it is a
/// module and something needs it).
const REQUIRED_MODULES: &[&str] = &[
    "libcrc32c",
    "nf_defrag_ipv4",
    "nf_defrag_ipv6",
    "nf_conntrack",
    "nfnetlink",
    "nf_tables",
    "nft_ct",
    "nf_conntrack_netlink",
];
/// Loaded when the kernel has them: NAT for the NAT tests, veth for tests
/// that join namespaces.
const OPTIONAL_MODULES: &[&str] = &["nf_nat", "nft_nat", "nft_chain_nat", "nft_masq", "veth"];
/// Host tools put in the guest at the same path, with their libraries.
const HOST_TOOLS: &[(&str, &str)] = &[
    ("/usr/sbin/conntrack", "/usr/sbin/conntrack"),
    ("/usr/sbin/nft", "/usr/sbin/nft"),
];
/// Host tools that replace a busybox applet when the host has them
/// (iproute2's ip knows `netns`, busybox's does not).
const OPTIONAL_HOST_TOOLS: &[(&str, &str)] = &[("/bin/ip", "/sbin/ip")];
const BUSYBOX: &str = "/bin/busybox";
/// Printed by the guest's /init with the command's exit status.
const EXIT_MARKER: &str = "CTSCOPE-VM-EXIT=";
/// Printed by tests/vm/harness/run-tests.sh before and after each script.
const START_MARKER: &str = "CTSCOPE-VM-START ";
const RESULT_MARKER: &str = "CTSCOPE-VM-RESULT ";
/// How long the guest may take to power off once it has printed its exit
/// status.
const POWEROFF_GRACE: Duration = Duration::from_secs(30);
const VM_RUN_TIMEOUT_SECS: u64 = 300;

/// Options of `cargo xtask vm-run`.
#[derive(clap::Args, Debug, Clone)]
pub struct VmRunArgs {
    /// Which kernel: 6.1 or 6.12.
    #[arg(long, default_value = "6.12")]
    pub kernel: String,
    #[command(flatten)]
    pub guest: GuestArgs,
    /// The command to run in the guest.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub cmd: Vec<String>,
}

/// What goes into the guest and how long it may run; shared by both tasks.
#[derive(clap::Args, Debug, Clone)]
pub struct GuestArgs {
    /// ctscope binary for the guest; default: build target/release/ctscope.
    #[arg(long, env = "CTSCOPE_VM_BIN", value_name = "PATH")]
    pub ctscope: Option<PathBuf>,
    /// ctchurn binary for the guest; default: build target/release/ctchurn
    /// (left out, with a warning, when it does not build).
    #[arg(long, env = "CTSCOPE_VM_CTCHURN", value_name = "PATH")]
    pub ctchurn: Option<PathBuf>,
    /// ctmiss binary for the guest (keeps a CPU inside a BPF program, for
    /// ebpf_misses.sh); default: build target/release/ctmiss (left out,
    /// with a warning, when it does not build).
    #[arg(long, env = "CTSCOPE_VM_CTMISS", value_name = "PATH")]
    pub ctmiss: Option<PathBuf>,
    /// Another host binary for the guest's /usr/local/bin, with the shared
    /// libraries it uses (repeatable).
    #[arg(long = "bin", value_name = "PATH")]
    pub extra_bins: Vec<PathBuf>,
    /// Another kernel module to load after the netfilter ones, with its
    /// dependencies (repeatable).
    #[arg(long = "module", value_name = "NAME")]
    pub extra_modules: Vec<String>,
    /// A sysctl to set in the guest before the command (repeatable).
    #[arg(long = "sysctl", value_name = "KEY=VALUE")]
    pub sysctls: Vec<String>,
    /// An environment variable for the command (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Seconds a boot may last before qemu is killed (software emulation
    /// is slow); default: 300 for vm-run, 120 plus the scripts' time limits
    /// for vm-test.
    #[arg(long, env = "CTSCOPE_VM_TIMEOUT", value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 1024, value_name = "MIB")]
    pub memory: u32,
    /// qemu accelerator: kvm, tcg (software emulation), or auto (kvm
    /// only when /dev/kvm is usable and the CPU shows vmx or svm).
    #[arg(long, value_enum, default_value_t = Accel::Auto, env = "CTSCOPE_VM_ACCEL")]
    pub accel: Accel,
    /// Another word for the kernel command line (repeatable).
    #[arg(long = "append", value_name = "ARG")]
    pub kernel_args: Vec<String>,
    /// Tie the guest's clock to the instructions it runs (qemu `-icount
    /// shift=1,sleep=off`): guest timings no longer swing with the host's
    /// load, and an idle guest skips ahead to its next timer. Software
    /// emulation only; one CPU on 6.1 kernels. Default: on for vm-test,
    /// off for vm-run.
    #[arg(long, overrides_with = "no_icount")]
    pub icount: bool,
    /// The guest's clock is the host's (qemu's multi-threaded software
    /// emulation, two CPUs): timings swing with the host's load.
    #[arg(long, overrides_with = "icount")]
    pub no_icount: bool,
}

impl GuestArgs {
    /// Settles --icount / --no-icount: `default` when neither was given.
    pub fn settle_icount(&mut self, default: bool) {
        self.icount = self.icount || (default && !self.no_icount);
        self.no_icount = !self.icount;
    }
}

/// How qemu runs the guest's CPUs.
#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum Accel {
    Auto,
    Kvm,
    Tcg,
}

/// Runs one command in a guest.
pub fn run(args: &VmRunArgs) -> Result<ExitCode> {
    setup::ensure(setup::Needs { test: true })?;
    let mut guest = args.guest.clone();
    guest.settle_icount(false);
    let bins = GuestBins::build(&guest)?;
    let kernel = Kernel::ensure(&args.kernel)?;
    let initrd = build_initramfs(&kernel, &bins, &guest, &args.cmd)?;
    let timeout = guest.timeout.unwrap_or(VM_RUN_TIMEOUT_SECS);
    let outcome = boot(&kernel, &initrd, &guest, Duration::from_secs(timeout), "");
    keep_initramfs(&kernel, &initrd);
    let outcome = outcome?;
    match outcome.exit {
        Some(code) => Ok(ExitCode::from(u8::try_from(code).unwrap_or(1))),
        None => bail!("{}", outcome.why_unfinished()),
    }
}

fn vm_dir() -> PathBuf {
    workspace_root().join("target/vm")
}

/// The binaries that go into the guest.
struct GuestBins {
    ctscope: PathBuf,
    /// The test helpers (ctchurn, ctmiss) that were given or built, by
    /// the name they get in the guest.
    helpers: Vec<(&'static str, PathBuf)>,
    extra: Vec<PathBuf>,
}

impl GuestBins {
    /// Builds ctscope and the test helpers unless paths were given.
    fn build(args: &GuestArgs) -> Result<Self> {
        let ctscope = match &args.ctscope {
            Some(path) => existing(path)?,
            None => {
                run_checked(cargo().args(["build", "--release", "--package", "conntrack-user"]))?;
                workspace_root().join("target/release/ctscope")
            }
        };
        let mut helpers = Vec::new();
        for (given, package, bin) in [
            (&args.ctchurn, "xtask", "ctchurn"),
            (&args.ctmiss, "ctscope-e2e", "ctmiss"),
        ] {
            if let Some(path) = helper(given.as_deref(), package, bin)? {
                helpers.push((bin, path));
            }
        }
        let extra = args
            .extra_bins
            .iter()
            .map(|p| existing(p))
            .collect::<Result<_>>()?;
        Ok(Self {
            ctscope,
            helpers,
            extra,
        })
    }
}

/// A test helper for the guest: `given`, or target/release/`bin` built from
/// `package`; none, with a warning, when it does not build (the scripts
/// that need it fail, saying so).
fn helper(given: Option<&Path>, package: &str, bin: &str) -> Result<Option<PathBuf>> {
    if let Some(path) = given {
        return existing(path).map(Some);
    }
    let built =
        run_checked(cargo().args(["build", "--release", "--package", package, "--bin", bin]));
    match built {
        Ok(()) => Ok(Some(workspace_root().join("target/release").join(bin))),
        Err(e) => {
            eprintln!("xtask: {bin} does not build, the guest will not have it: {e:#}");
            Ok(None)
        }
    }
}

fn existing(path: &Path) -> Result<PathBuf> {
    if !path.is_file() {
        bail!("{} is not a file", path.display());
    }
    Ok(path.to_path_buf())
}

/// What one boot printed.
#[derive(Default)]
struct BootOutcome {
    /// The command's exit status, from the guest's marker line.
    exit: Option<i32>,
    /// Each test script's result (vm-test).
    results: HashMap<String, ScriptResult>,
    timed_out: Option<Duration>,
    qemu_status: Option<std::process::ExitStatus>,
}

/// How one test script ended, from run-tests.sh's marker lines.
struct ScriptResult {
    code: i32,
    /// As the guest's clock counts (instruction time with --icount).
    guest_secs: Option<u64>,
    /// From its start marker to its result marker on the console.
    wall: Option<Duration>,
}

impl ScriptResult {
    fn took(&self) -> String {
        let guest = self
            .guest_secs
            .map_or_else(|| "?".to_string(), |s| s.to_string());
        let wall = self
            .wall
            .map_or_else(|| "?".to_string(), |w| format!("{:.1}", w.as_secs_f64()));
        format!("{guest} s guest, {wall} s wall")
    }
}

impl BootOutcome {
    fn why_unfinished(&self) -> String {
        match (self.timed_out, self.exit) {
            (Some(t), _) => format!(
                "the guest did not finish within {} s and was killed (raise --timeout?)",
                t.as_secs()
            ),
            (None, Some(125)) => "the guest could not be set up (status 125: a module or \
                                  sysctl failed; see CTSCOPE-VM: above)"
                .to_string(),
            (None, Some(code)) => format!("the guest finished with status {code}"),
            (None, None) => format!(
                "the guest stopped without printing {EXIT_MARKER}<status> \
                 (kernel panic, crash, or /init failed; see the console above); qemu: {}",
                self.qemu_status
                    .map_or_else(|| "no status".to_string(), |s| s.to_string())
            ),
        }
    }
}

/// Whether to ask qemu for KVM. On these machines /dev/kvm exists but the
/// CPU shows no vmx/svm and KVM guests die on their first AVX instruction
/// ("KVM internal error ... emulation failure"), so `auto` wants both.
fn use_kvm(accel: Accel) -> bool {
    match accel {
        Accel::Kvm => true,
        Accel::Tcg => false,
        Accel::Auto => {
            let device = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
                .is_ok();
            let cpu = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
            device
                && cpu.lines().any(|l| {
                    l.starts_with("flags") && l.split_whitespace().any(|f| f == "vmx" || f == "svm")
                })
        }
    }
}

/// Boots `kernel` with `initrd` in qemu, streams the console to stdout
/// (each line after `prefix`) and reads the marker lines; kills qemu after
/// `timeout`.
fn boot(
    kernel: &Kernel,
    initrd: &Path,
    guest: &GuestArgs,
    timeout: Duration,
    prefix: &str,
) -> Result<BootOutcome> {
    let mut append = String::from("console=ttyS0 panic=-1 quiet");
    for a in &guest.kernel_args {
        append.push(' ');
        append.push_str(a);
    }
    let cpus = if guest.icount && kernel.hangs_with_icount_smp() {
        "1"
    } else {
        "2"
    };
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-m", &guest.memory.to_string(), "-smp", cpus])
        // No network card: the guest tests loopback and namespaces only.
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(kernel.vmlinuz())
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", &append]);
    if guest.icount {
        if matches!(guest.accel, Accel::Kvm) {
            bail!("--icount needs software emulation (--accel tcg or auto), not kvm");
        }
        // 2 ns of guest time per instruction; sleep=off lets an idle guest
        // jump to its next timer instead of waiting for the host's clock.
        qemu.args(["-accel", "tcg", "-icount", "shift=1,sleep=off"]);
    } else if use_kvm(guest.accel) {
        qemu.args(["-accel", "kvm", "-cpu", "host"]);
    } else {
        qemu.args(["-accel", "tcg"]);
    }
    let mut child = qemu
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start qemu-system-x86_64 (apt-get install qemu-system-x86)")?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("qemu has no stdout"))?;
    let (tx, rx) = mpsc::channel::<String>();
    let reader = thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = printable(&String::from_utf8_lossy(&buf));
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });

    let mut outcome = BootOutcome::default();
    let mut script_starts = HashMap::new();
    let started = Instant::now();
    let mut deadline = started + timeout;
    let stdout = std::io::stdout();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                {
                    let mut out = stdout.lock();
                    let _ = writeln!(out, "{prefix}{line}");
                    let _ = out.flush();
                }
                if let Some(name) = line.strip_prefix(START_MARKER) {
                    script_starts.insert(name.trim().to_string(), Instant::now());
                }
                if let Some((name, code, guest_secs)) = parse_result(&line) {
                    let wall = script_starts.get(&name).map(Instant::elapsed);
                    outcome.results.insert(
                        name,
                        ScriptResult {
                            code,
                            guest_secs,
                            wall,
                        },
                    );
                }
                if let Some(code) = parse_exit(&line) {
                    outcome.exit = Some(code);
                    deadline = deadline.min(Instant::now() + POWEROFF_GRACE);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if outcome.exit.is_none() {
                    outcome.timed_out = Some(timeout);
                }
                eprintln!(
                    "xtask: killing qemu after {:.0} s",
                    started.elapsed().as_secs_f64()
                );
                // Our own child, by its handle.
                let _ = child.kill();
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    outcome.qemu_status = child.wait().ok();
    let _ = reader.join();
    Ok(outcome)
}

/// A console line without its line end, carriage returns and terminal
/// escape sequences (SeaBIOS sends "ESC c", which would reset the
/// terminal xtask runs in).
fn printable(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                // CSI: ESC [ parameters final-byte; else ESC and one char.
                if chars.next_if_eq(&'[').is_some() {
                    for p in chars.by_ref() {
                        if ('@'..='~').contains(&p) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\r' | '\n' => {}
            c => out.push(c),
        }
    }
    out
}

/// `CTSCOPE-VM-EXIT=<status>` anywhere in the line (a kernel message may
/// precede it).
fn parse_exit(line: &str) -> Option<i32> {
    let (_, rest) = line.split_once(EXIT_MARKER)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// `CTSCOPE-VM-RESULT <script> <status> <seconds>`: the name, the status
/// and the guest seconds, if given.
fn parse_result(line: &str) -> Option<(String, i32, Option<u64>)> {
    let (_, rest) = line.split_once(RESULT_MARKER)?;
    let mut words = rest.split_whitespace();
    let name = words.next()?.to_string();
    let code = words.next()?.parse().ok()?;
    let secs = words.next().and_then(|w| w.parse().ok());
    Some((name, code, secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers() {
        assert_eq!(parse_exit("CTSCOPE-VM-EXIT=0"), Some(0));
        assert_eq!(parse_exit("[ 3.1] oops CTSCOPE-VM-EXIT=125"), Some(125));
        assert_eq!(parse_exit("CTSCOPE-VM-EXIT="), None);
        assert_eq!(parse_exit("nothing"), None);
        assert_eq!(
            parse_result("CTSCOPE-VM-RESULT smoke.sh 1 12"),
            Some(("smoke.sh".to_string(), 1, Some(12)))
        );
        assert_eq!(
            parse_result("CTSCOPE-VM-RESULT smoke.sh 0"),
            Some(("smoke.sh".to_string(), 0, None))
        );
        assert_eq!(parse_result("CTSCOPE-VM-RESULT smoke.sh"), None);
        assert_eq!(
            printable("\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS\r\n"),
            "SeaBIOS"
        );
    }

    #[test]
    fn kernel_names() {
        assert_eq!(
            release_of("linux-image-6.12.117+deb12-cloud-amd64-unsigned"),
            Some("6.12.117+deb12-cloud-amd64")
        );
        assert!(is_release_of("6.1.0-56-cloud-amd64", "6.1"));
        assert!(!is_release_of("6.12.117+deb12-cloud-amd64", "6.1"));
        assert!(version_key("6.1.0-56-cloud-amd64") > version_key("6.1.0-9-cloud-amd64"));
        assert_eq!(
            module_name("nf_conntrack.ko.xz").as_deref(),
            Some("nf_conntrack")
        );
        assert_eq!(module_name("nf-nat.ko").as_deref(), Some("nf_nat"));
        assert_eq!(module_name("modules.order"), None);
    }

    #[test]
    fn elf_parsing_refuses_odd_input() {
        assert!(modinfo_depends(b"").is_err());
        assert!(modinfo_depends(b"\x7fELF\x02\x01").is_err());
        let mut short = b"\x7fELF\x02\x01".to_vec();
        short.resize(64, 0xff);
        assert!(modinfo_depends(&short).is_err());
    }

    #[test]
    fn newc_layout() {
        let mut out = Vec::new();
        write_newc_entry(&mut out, 1, 0o100_644, 1, (0, 0), "a", b"xyz").expect("writes");
        // 110-byte header + "a\0" = 112 (aligned), body 3 + 1 pad.
        assert_eq!(out.len(), 116);
        assert!(out.starts_with(b"070701"));
        assert_eq!(&out[112..115], b"xyz");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert!(is_shell_name("RUST_LOG"));
        assert!(!is_shell_name("1X") && !is_shell_name("A B") && !is_shell_name(""));
    }
}
