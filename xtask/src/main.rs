//! `cargo xtask`: set-up, build-and-run, the full test command, benchmarks.
mod bench;
mod setup;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "ctscope developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building ctscope needs (Debian packages, toolchains,
    /// bpf-linker); with --test, what the tests need too.
    Setup {
        /// Also install the test tools (conntrack, nftables, tmux, qemu...).
        #[arg(long)]
        test: bool,
    },
    /// Set up, build ctscope (release) and run it as root with ARGS.
    Run {
        /// Arguments for ctscope.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every test: formatting, clippy, unused dependencies, unit, host
    /// namespace tests, bench --quick, vm-test.
    Test {
        /// vm-test at the acceptance volumes (vm-test --full): slower.
        #[arg(long)]
        full: bool,
    },
    /// Benchmarks against conntrack and iptstate; rewrites BENCHMARKS.md.
    Bench(bench::BenchArgs),
    /// Boot each Debian test kernel in qemu and run the eBPF end-to-end
    /// tests inside.
    VmTest(vm::VmTestArgs),
    /// Run a command in a qemu guest with ctscope, conntrack, nft, ctchurn
    /// and ctmiss on PATH; exits with its status.
    VmRun(vm::VmRunArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup { test } => setup::ensure(setup::Needs { test }).map(|()| ExitCode::SUCCESS),
        Task::Run { args } => run(&args),
        Task::Test { full } => test(full),
        Task::Bench(args) => bench::run(&args),
        Task::VmTest(args) => vm::test(&args),
        Task::VmRun(args) => vm::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (the parent of xtask/).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs a command in the workspace root; an error if it does not exit 0.
pub fn run_checked(cmd: &mut Command) -> Result<()> {
    run_checked_here(cmd.current_dir(workspace_root()))
}

/// Runs a command where it is set to run; an error if it does not exit 0.
pub fn run_checked_here(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// The cargo that runs xtask, with ~/.cargo/bin on PATH.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    // bpf-linker, which the ctscope build needs, lives in ~/.cargo/bin.
    cmd.env("PATH", setup::path_with_cargo_bin());
    cmd
}

/// Builds ctscope (package conntrack-user) with the release profile.
pub fn build_release_ctscope() -> Result<()> {
    run_checked(cargo().args(["build", "--release", "--package", "conntrack-user"]))
}

/// Builds the ctchurn generator with the release profile.
pub fn build_release_ctchurn() -> Result<()> {
    run_checked(cargo().args([
        "build",
        "--release",
        "--package",
        "xtask",
        "--bin",
        "ctchurn",
    ]))
}

/// `'word'`, for a POSIX shell.
pub fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}

fn run(args: &[String]) -> Result<ExitCode> {
    setup::ensure(setup::Needs { test: false })?;
    build_release_ctscope()?;
    let bin = workspace_root().join("target/release/ctscope");
    let mut cmd = if nix::unistd::geteuid().is_root() {
        Command::new(&bin)
    } else {
        eprintln!("xtask: ctscope needs root (CAP_NET_ADMIN); running it with sudo");
        let mut sudo = Command::new("sudo");
        sudo.arg(&bin);
        sudo
    };
    let status = cmd.args(args).status().context("cannot start ctscope")?;
    Ok(ExitCode::from(
        u8::try_from(status.code().unwrap_or(1)).unwrap_or(1),
    ))
}

/// The test-only fault injection of ctscope (conntrack-user/src/fault.rs).
const FAULT_FEATURE: &str = "conntrack-user/fault-injection";

fn test(full: bool) -> Result<ExitCode> {
    setup::ensure(setup::Needs { test: true })?;
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "the tests create network namespaces and read conntrack tables: run as root \
             (CTSCOPE_SKIP_NETNS=1 skips the namespace tests, and says so)"
        );
    }
    // rustfmt.toml uses nightly-only options (import grouping): check with
    // the pinned nightly that builds the eBPF crate.
    run_checked(
        Command::new("cargo")
            .env("PATH", setup::path_with_cargo_bin())
            .args([
                &format!("+{}", setup::EBPF_TOOLCHAIN),
                "fmt",
                "--all",
                "--check",
            ]),
    )?;
    // One feature set for every step: a change of conntrack-user's
    // features reruns its build script, which rebuilds the eBPF programs.
    run_checked(cargo().args([
        "clippy",
        "--all-targets",
        "--features",
        FAULT_FEATURE,
        "--",
        "-D",
        "warnings",
    ]))?;
    // The ABI crate's lib is no_std and builds for the host too.
    run_checked(cargo().args([
        "clippy",
        "--package",
        "conntrack-ebpf",
        "--lib",
        "--features",
        "user",
        "--",
        "-D",
        "warnings",
    ]))?;
    // Unused dependencies, found in the sources (a false positive goes in
    // the crate's [package.metadata.cargo-machete] ignored list).
    // Run directly, on the workspace's path: as `cargo machete` through
    // the toolchain's cargo (not rustup's proxy) it takes "machete" for
    // the directory to scan.
    run_checked(Command::new(setup::cargo_bin_dir().join("cargo-machete")).arg(workspace_root()))?;
    // The end-to-end tests inject faults (CTSCOPE_FAULT_*), which only a
    // build with the test-only feature reads.
    run_checked(cargo().args([
        "build",
        "--package",
        "conntrack-user",
        "--bins",
        "--features",
        FAULT_FEATURE,
    ]))?;
    let bin = workspace_root().join("target/debug/ctscope");
    run_checked(
        cargo()
            .args(["test", "--no-fail-fast", "--features", FAULT_FEATURE])
            .env("CTSCOPE_BIN", &bin),
    )?;
    bench::run(&bench::BenchArgs::quick())?;
    // The eBPF path needs kprobes, which this host's kernel lacks: it is
    // tested in qemu guests with Debian kernels. CTSCOPE_SKIP_VM=1 turns
    // that off, and says so.
    if std::env::var_os("CTSCOPE_SKIP_VM").is_some_and(|v| v == "1") {
        eprintln!("xtask: vm-test SKIPPED (CTSCOPE_SKIP_VM=1): the eBPF path was not tested");
        return Ok(ExitCode::SUCCESS);
    }
    let mut vm_test = VmTestDefaults::parse_from(["vm-test"]).args;
    vm_test.full = full;
    vm::test(&vm_test)
}

/// `cargo xtask vm-test` with its defaults (and CTSCOPE_VM_* from the
/// environment), for the test command.
#[derive(Parser)]
struct VmTestDefaults {
    #[command(flatten)]
    args: vm::VmTestArgs,
}
