//! `cargo xtask vm-test`: every tests/vm/*.sh in each Debian kernel, one
//! boot per kernel, run by tests/vm/harness/run-tests.sh.
//!
//! By default the guests run under qemu's icount (see `GuestArgs`): their
//! clocks count instructions, so the scripts' time limits mean the same on
//! an idle laptop and on a loaded 2-core CI machine, and idle waits (the gc
//! worker's minute, a profile's duration) cost no wall time. Each icount
//! guest is one host thread, so the kernels boot side by side.
use std::{
    fs,
    process::ExitCode,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{BootOutcome, GuestArgs, GuestBins, Kernel, boot, build_initramfs, keep_initramfs};
use crate::{setup, workspace_root};

/// The kernels `vm-test` boots when no `--kernel` is given.
const DEFAULT_KERNELS: [&str; 2] = ["6.1", "6.12"];
/// The boot allowance on top of the scripts' own time limits.
const BOOT_SECS: u64 = 120;
/// Guest seconds a script may run, without and with `--full`, at the
/// guest's reference speed: run-tests.sh scales them by the slowness it
/// measures (100 % under icount). The slowest quick script, ebpf_gc.sh,
/// takes about 55 s, most of it waiting for the kernel's gc worker.
const SCRIPT_TIMEOUT_SECS: u64 = 240;
const FULL_SCRIPT_TIMEOUT_SECS: u64 = 900;
/// The acceptance volumes of ebpf_events.sh and ebpf_updates.sh, set by
/// `--full`; the scripts' own defaults are a twentieth and a half of them.
const FULL_VOLUME_ENV: [&str; 3] = [
    "EBPF_UDP_FLOWS=100000",
    "EBPF_TCP_FLOWS=20000",
    "EBPF_UPDATE_CONNS=2000",
];

/// Options of `cargo xtask vm-test`.
#[derive(clap::Args, Debug, Clone)]
pub struct VmTestArgs {
    /// Only this kernel (6.1 or 6.12); default: both.
    #[arg(long)]
    pub kernel: Option<String>,
    /// Guest seconds each script may run before it is killed, at the
    /// guest's reference speed (scaled by its measured slowness); default:
    /// 240, 900 with --full.
    #[arg(long, value_name = "SECS")]
    pub script_timeout: Option<u64>,
    /// The acceptance volumes: ebpf_events.sh churns 100,000 UDP flows and
    /// 20,000 TCP connections (default: 5,000 and 1,000), ebpf_updates.sh
    /// 2,000 TCP connections (default 1,000). An --env EBPF_UDP_FLOWS=N,
    /// EBPF_TCP_FLOWS=N or EBPF_UPDATE_CONNS=N still wins.
    #[arg(long)]
    pub full: bool,
    /// Only these scripts of tests/vm/ (file names); default: every *.sh.
    pub scripts: Vec<String>,
    #[command(flatten)]
    pub guest: GuestArgs,
}

/// Runs the eBPF end-to-end tests in each kernel.
pub fn test(args: &VmTestArgs) -> Result<ExitCode> {
    let scripts = test_scripts(&args.scripts)?;
    setup::ensure(setup::Needs { test: true })?;
    let mut guest = args.guest.clone();
    guest.settle_icount(true);
    if args.full {
        // First, so that the user's own --env, exported later, wins.
        let mut env: Vec<String> = FULL_VOLUME_ENV.iter().map(ToString::to_string).collect();
        env.append(&mut guest.env);
        guest.env = env;
    }
    let bins = GuestBins::build(&guest)?;
    let majors: Vec<String> = match &args.kernel {
        Some(k) => vec![k.clone()],
        None => DEFAULT_KERNELS.iter().map(ToString::to_string).collect(),
    };
    let per_script = args.script_timeout.unwrap_or(if args.full {
        FULL_SCRIPT_TIMEOUT_SECS
    } else {
        SCRIPT_TIMEOUT_SECS
    });
    let script_count = u64::try_from(scripts.len()).unwrap_or(u64::MAX);
    let timeout = guest
        .timeout
        .unwrap_or_else(|| BOOT_SECS.saturating_add(per_script.saturating_mul(script_count)));
    let mut command = vec![
        "sh".to_string(),
        "/vm/harness/run-tests.sh".to_string(),
        per_script.to_string(),
    ];
    command.extend(scripts.iter().cloned());

    let started = Instant::now();
    // Downloads first, one at a time: they share target/vm/kernels/.
    let kernels: Vec<(String, Result<(Kernel, Duration)>)> = majors
        .iter()
        .map(|major| {
            let t0 = Instant::now();
            let kernel = Kernel::ensure(major).map(|k| (k, t0.elapsed()));
            (major.clone(), kernel)
        })
        .collect();
    let run = |major: &str, kernel: &Result<(Kernel, Duration)>, prefix: &str| {
        println!("xtask: vm-test {major}: {}", scripts.join(" "));
        match kernel {
            Ok((kernel, ready)) => {
                test_one_kernel(kernel, *ready, &bins, &guest, &command, timeout, prefix)
            }
            Err(e) => Err(anyhow::anyhow!("{e:#}")),
        }
    };
    // An icount guest is one host thread: two of them use both cores of a
    // 2-core machine. Without icount each guest already has a thread per
    // CPU, and running two would only slow both.
    let outcomes: Vec<Result<TestOutcome>> = if guest.icount && kernels.len() > 1 {
        let width = majors.iter().map(String::len).max().unwrap_or(0);
        thread::scope(|scope| {
            let handles: Vec<_> = kernels
                .iter()
                .map(|(major, kernel)| {
                    let prefix = format!("{major:<width$} | ");
                    let run = &run;
                    scope.spawn(move || run(major, kernel, &prefix))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("the boot thread panicked")))
                })
                .collect()
        })
    } else {
        kernels
            .iter()
            .map(|(major, kernel)| run(major, kernel, ""))
            .collect()
    };

    let (mut passed, mut failed) = (0usize, 0usize);
    let mut summaries = Vec::new();
    for (major, outcome) in majors.iter().zip(outcomes) {
        let (p, f) = match outcome {
            Ok(outcome) => outcome.report(major, &scripts),
            Err(e) => {
                println!("vm-test {major}: cannot boot: {e:#}");
                (0, scripts.len())
            }
        };
        summaries.push(format!("vm-test {major}: {p} passed, {f} failed"));
        passed += p;
        failed += f;
    }
    println!(
        "xtask: vm-test took {:.1} s in all ({}{})",
        started.elapsed().as_secs_f64(),
        if guest.icount {
            "icount: guest seconds are instruction time"
        } else {
            "no icount: guest seconds are the host's"
        },
        if args.full { ", full volumes" } else { "" },
    );
    for s in &summaries {
        println!("{s}");
    }
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What one kernel's boot printed, and how long its parts took.
struct TestOutcome {
    boot: BootOutcome,
    timings: String,
}

impl TestOutcome {
    /// Prints one line per script; the numbers passed and failed.
    fn report(&self, major: &str, scripts: &[String]) -> (usize, usize) {
        let (mut passed, mut failed) = (0, 0);
        for script in scripts {
            match self.boot.results.get(script) {
                Some(result) if result.code == 0 => {
                    passed += 1;
                    println!("vm-test {major}: ok {script} ({})", result.took());
                }
                Some(result) => {
                    failed += 1;
                    println!(
                        "vm-test {major}: FAILED {script} (exit status {}; {})",
                        result.code,
                        result.took()
                    );
                }
                None => {
                    failed += 1;
                    println!(
                        "vm-test {major}: FAILED {script} (no result: {})",
                        self.boot.why_unfinished()
                    );
                }
            }
        }
        println!("vm-test {major}: {}", self.timings);
        (passed, failed)
    }
}

fn test_one_kernel(
    kernel: &Kernel,
    ready: Duration,
    bins: &GuestBins,
    guest: &GuestArgs,
    command: &[String],
    timeout: u64,
    prefix: &str,
) -> Result<TestOutcome> {
    let t1 = Instant::now();
    let initrd = build_initramfs(kernel, bins, guest, command)?;
    let t2 = Instant::now();
    let boot = boot(kernel, &initrd, guest, Duration::from_secs(timeout), prefix);
    let size_mb = fs::metadata(&initrd).map(|m| m.len() >> 20).unwrap_or(0);
    keep_initramfs(kernel, &initrd);
    let boot = boot?;
    let t3 = Instant::now();
    let timings = format!(
        "kernel {} (ready in {:.1} s), initramfs {:.1} s ({} MB), boot+tests {:.1} s",
        kernel.release,
        ready.as_secs_f64(),
        (t2 - t1).as_secs_f64(),
        size_mb,
        (t3 - t2).as_secs_f64(),
    );
    Ok(TestOutcome { boot, timings })
}

/// The file names of the scripts to run: `wanted`, or every tests/vm/*.sh.
fn test_scripts(wanted: &[String]) -> Result<Vec<String>> {
    let dir = workspace_root().join("tests/vm");
    let mut all = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        if path.is_file()
            && path.extension().is_some_and(|e| e == "sh")
            && let Some(name) = path.file_name().and_then(|n| n.to_str())
        {
            all.push(name.to_string());
        }
    }
    all.sort();
    if wanted.is_empty() {
        if all.is_empty() {
            bail!("no test scripts in {}", dir.display());
        }
        return Ok(all);
    }
    for w in wanted {
        if !all.contains(w) {
            bail!(
                "no script {w} in {} (there are: {})",
                dir.display(),
                all.join(" ")
            );
        }
    }
    Ok(wanted.to_vec())
}
