//! Installs what ctscope needs on a Debian machine, saying in one line each
//! what it installs; a second run installs nothing.
use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::{cargo, run_checked};

/// The nightly that builds the eBPF crate (keep in step with
/// conntrack-user/build.rs).
pub const EBPF_TOOLCHAIN: &str = "nightly-2026-07-01";
/// The LLVM major bpf-linker is built against; must match EBPF_TOOLCHAIN's.
const LLVM_MAJOR: &str = "22";

/// What to install.
pub struct Needs {
    /// Also the tools the tests drive.
    pub test: bool,
}

const BUILD_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "gcc",
    "libc6-dev",
    "pkg-config",
];

const TEST_PACKAGES: &[&str] = &[
    "conntrack",
    "iptstate",
    "nftables",
    "iproute2",
    "tmux",
    "util-linux",
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "xz-utils",
    // /etc/protocols and /etc/services, which -p NAME and top --lookup read.
    "netbase",
    // serve's tests: a real Prometheus (and promtool), node_exporter to
    // compare the conntrack gauges with, systemd-analyze for the unit.
    "prometheus",
    "prometheus-node-exporter",
    "systemd",
    // profile --html's test: the page in a real browser (headless).
    "chromium",
];

/// PATH with ~/.cargo/bin first, where bpf-linker is installed.
pub fn path_with_cargo_bin() -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    format!("{}:{path}", cargo_bin_dir().display())
}

/// Where cargo install puts binaries (~/.cargo/bin, or $CARGO_HOME/bin).
pub fn cargo_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

/// Installs whatever of `needs` is missing.
pub fn ensure(needs: Needs) -> Result<()> {
    let mut packages: Vec<&str> = BUILD_PACKAGES.to_vec();
    if needs.test {
        packages.extend_from_slice(TEST_PACKAGES);
    }
    ensure_debian_packages(&packages)?;
    ensure_toolchain(EBPF_TOOLCHAIN, &["rust-src", "rustfmt"])?;
    ensure_bpf_linker()?;
    if needs.test {
        ensure_cargo_machete()?;
    }
    Ok(())
}

fn is_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn ensure_debian_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !is_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    let sudo = !nix::unistd::geteuid().is_root();
    let apt = |args: &[&str]| {
        let mut cmd = if sudo {
            let mut c = Command::new("sudo");
            c.arg("apt-get");
            c
        } else {
            Command::new("apt-get")
        };
        cmd.env("DEBIAN_FRONTEND", "noninteractive")
            .args(["-q", "-y", "-o", "Dpkg::Use-Pty=0"])
            .args(args)
            .stdout(Stdio::null());
        cmd
    };
    run_checked(&mut apt(&["update"]))?;
    run_checked(apt(&["install", "--no-install-recommends"]).args(&missing))
        .context("apt-get install failed")?;
    Ok(())
}

fn ensure_toolchain(toolchain: &str, components: &[&str]) -> Result<()> {
    let installed = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", toolchain])
        .stderr(Stdio::null())
        .output()
        .context("rustup is needed (https://rustup.rs)")?;
    let listed = String::from_utf8_lossy(&installed.stdout);
    let missing: Vec<&str> = components
        .iter()
        .copied()
        .filter(|c| !listed.lines().any(|l| l.starts_with(c)))
        .collect();
    if installed.status.success() && missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "xtask: installing Rust toolchain {toolchain} with {}",
        components.join(", ")
    );
    let mut cmd = Command::new("rustup");
    cmd.args(["toolchain", "install", toolchain, "--profile", "minimal"]);
    for c in components {
        cmd.args(["--component", c]);
    }
    run_checked(&mut cmd)
}

/// cargo-machete, the test command's unused-dependency check.
fn ensure_cargo_machete() -> Result<()> {
    if cargo_bin_dir().join("cargo-machete").exists() {
        return Ok(());
    }
    eprintln!(
        "xtask: installing cargo-machete (cargo install, for the unused-dependency check; a few minutes)"
    );
    run_checked(cargo().args(["install", "--locked", "cargo-machete"]))
        .context("cargo install cargo-machete failed")
}

fn ensure_bpf_linker() -> Result<()> {
    let linker = cargo_bin_dir().join("bpf-linker");
    if linker.exists() {
        return Ok(());
    }
    eprintln!(
        "xtask: installing bpf-linker (cargo install, built against LLVM {LLVM_MAJOR}; about a minute)"
    );
    let llvm_bin = format!("/usr/lib/llvm-{LLVM_MAJOR}/bin");
    if !PathBuf::from(&llvm_bin).join("llvm-config").exists() {
        bail!("{llvm_bin}/llvm-config is missing: install llvm-{LLVM_MAJOR}-dev");
    }
    let path = format!("{llvm_bin}:{}", path_with_cargo_bin());
    // Run from / so the workspace's rust-toolchain.toml does not apply; the
    // user-space toolchain is used explicitly.
    let status = Command::new("cargo")
        .args([
            "+1.98.0",
            "install",
            "--locked",
            "bpf-linker",
            "--no-default-features",
            "--features",
            &format!("llvm-{LLVM_MAJOR}"),
        ])
        .env("PATH", path)
        .current_dir("/")
        .status()
        .context("cannot start cargo install bpf-linker")?;
    if !status.success() {
        bail!("cargo install bpf-linker failed: {status}");
    }
    Ok(())
}
