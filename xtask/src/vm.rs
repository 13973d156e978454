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

mod suite;
pub use suite::{VmTestArgs, test};

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
    ctchurn: Option<PathBuf>,
    extra: Vec<PathBuf>,
}

impl GuestBins {
    /// Builds ctscope and ctchurn unless paths were given.
    fn build(args: &GuestArgs) -> Result<Self> {
        let release = workspace_root().join("target/release");
        let ctscope = match &args.ctscope {
            Some(path) => existing(path)?,
            None => {
                run_checked(cargo().args(["build", "--release", "--package", "conntrack-user"]))?;
                release.join("ctscope")
            }
        };
        let ctchurn = match &args.ctchurn {
            Some(path) => Some(existing(path)?),
            None => {
                let built = run_checked(cargo().args([
                    "build",
                    "--release",
                    "--package",
                    "xtask",
                    "--bin",
                    "ctchurn",
                ]));
                match built {
                    Ok(()) => Some(release.join("ctchurn")),
                    Err(e) => {
                        eprintln!(
                            "xtask: ctchurn does not build, the guest will not have it: {e:#}"
                        );
                        None
                    }
                }
            }
        };
        let extra = args
            .extra_bins
            .iter()
            .map(|p| existing(p))
            .collect::<Result<_>>()?;
        Ok(Self {
            ctscope,
            ctchurn,
            extra,
        })
    }
}

fn existing(path: &Path) -> Result<PathBuf> {
    if !path.is_file() {
        bail!("{} is not a file", path.display());
    }
    Ok(path.to_path_buf())
}

/// A Debian kernel package unpacked under target/vm/kernels/<release>/.
struct Kernel {
    /// As `uname -r` says it, e.g. 6.12.117+deb12-cloud-amd64.
    release: String,
    root: PathBuf,
}

impl Kernel {
    fn vmlinuz(&self) -> PathBuf {
        self.root.join(format!("boot/vmlinuz-{}", self.release))
    }

    /// Debian's 6.1 kernels hang bringing up a second CPU under qemu
    /// `-icount` (6.12 does not): such a guest gets one CPU.
    fn hangs_with_icount_smp(&self) -> bool {
        is_release_of(&self.release, "6.1")
    }

    fn modules_dir(&self) -> PathBuf {
        self.root.join(format!("lib/modules/{}", self.release))
    }

    /// The newest kernel of `major` (6.1, 6.12...) Debian offers, from the
    /// cache or downloaded into it; the cached newest when apt knows none.
    fn ensure(major: &str) -> Result<Self> {
        if major.is_empty() || !major.chars().all(|c| c.is_ascii_digit() || c == '.') {
            bail!("--kernel takes a version such as 6.1 or 6.12, not {major:?}");
        }
        let dir = vm_dir().join("kernels");
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut packages = apt_kernel_packages(major);
        if packages.is_empty() {
            if let Some(cached) = newest_cached(&dir, major) {
                eprintln!(
                    "xtask: apt knows no {major} cloud kernel; using the cached {}",
                    cached.release
                );
                return Ok(cached);
            }
            eprintln!("xtask: apt knows no {major} cloud kernel; running apt-get update");
            run_checked(
                Command::new("apt-get")
                    .args(["-q", "update"])
                    .stdout(Stdio::null()),
            )?;
            packages = apt_kernel_packages(major);
        }
        let mut errors = Vec::new();
        for package in &packages {
            let Some(release) = release_of(package) else {
                continue;
            };
            let kernel = Self {
                release: release.to_string(),
                root: dir.join(release),
            };
            if kernel.vmlinuz().is_file() {
                return Ok(kernel);
            }
            match download(&dir, package, &kernel.root) {
                Ok(()) if kernel.vmlinuz().is_file() => return Ok(kernel),
                Ok(()) => errors.push(format!("{package} has no boot/vmlinuz-{release}")),
                Err(e) => {
                    eprintln!("xtask: {e:#}");
                    errors.push(format!("{e:#}"));
                }
            }
        }
        if let Some(cached) = newest_cached(&dir, major) {
            eprintln!("xtask: using the cached {}", cached.release);
            return Ok(cached);
        }
        if packages.is_empty() {
            bail!(
                "no Debian cloud kernel {major}: apt knows no package \
                 linux-image-{major}.*-cloud-amd64-unsigned and none is cached"
            );
        }
        bail!(
            "no Debian cloud kernel {major} could be had (tried {}): {}",
            packages.join(" "),
            errors.join("; ")
        )
    }
}

/// `linux-image-6.12.117+deb12-cloud-amd64-unsigned` ->
/// `6.12.117+deb12-cloud-amd64`.
fn release_of(package: &str) -> Option<&str> {
    package
        .strip_prefix("linux-image-")?
        .strip_suffix("-unsigned")
}

/// The numbers in a release, for ordering: 6.1.0-56 after 6.1.0-9.
fn version_key(release: &str) -> Vec<u64> {
    release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap_or(u64::MAX))
        .collect()
}

fn is_release_of(release: &str, major: &str) -> bool {
    // "6.1." so that 6.12 is not taken for 6.1.
    release.starts_with(&format!("{major}.")) && release.ends_with("-cloud-amd64")
}

/// The unsigned cloud kernel packages of `major` apt knows, best first:
/// the pinned one, then newest first.
fn apt_kernel_packages(major: &str) -> Vec<String> {
    let pattern = format!(
        "^linux-image-{}\\.[0-9].*-cloud-amd64-unsigned$",
        major.replace('.', "\\.")
    );
    let out = Command::new("apt-cache")
        .args(["search", "--names-only", &pattern])
        .stderr(Stdio::null())
        .output();
    let Ok(out) = out else {
        return Vec::new();
    };
    let mut packages: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|p| release_of(p).is_some_and(|r| is_release_of(r, major)))
        .map(ToString::to_string)
        .collect();
    packages.sort_by_key(|p| std::cmp::Reverse(version_key(p)));
    packages.dedup();
    for pinned in PINNED_KERNEL_PACKAGES.iter().rev() {
        if let Some(i) = packages.iter().position(|p| p == pinned) {
            let p = packages.remove(i);
            packages.insert(0, p);
        }
    }
    packages
}

fn newest_cached(dir: &Path, major: &str) -> Option<Kernel> {
    let mut kernels: Vec<Kernel> = fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(ToString::to_string))
        .filter(|name| is_release_of(name, major))
        .map(|release| Kernel {
            root: dir.join(&release),
            release,
        })
        .filter(|k| k.vmlinuz().is_file())
        .collect();
    kernels.sort_by_key(|k| version_key(&k.release));
    kernels.pop()
}

/// `apt-get download` of `package`, unpacked into `root` (in `dir`). The
/// work happens in a directory of this process's own and ends in a rename,
/// so that two runs at once neither clash nor leave half a kernel.
fn download(dir: &Path, package: &str, root: &Path) -> Result<()> {
    println!("xtask: downloading {package} (Debian package, about 30 MB)");
    let work = dir.join(format!(".download-{}", std::process::id()));
    let result = download_in(&work, package, root);
    let _ = fs::remove_dir_all(&work);
    result
}

fn download_in(work: &Path, package: &str, root: &Path) -> Result<()> {
    if work.exists() {
        fs::remove_dir_all(work)?;
    }
    fs::create_dir_all(work).with_context(|| format!("cannot create {}", work.display()))?;
    let mut apt = Command::new("apt-get");
    apt.args(["-q", "download"]);
    if nix::unistd::geteuid().is_root() {
        // As root apt hands the download to the _apt user, who may not
        // write to target/; it then warns and does it as root anyway.
        apt.args(["-o", "APT::Sandbox::User=root"]);
    }
    let status = apt
        .arg(package)
        .current_dir(work)
        .stdout(Stdio::null())
        .status()
        .context("cannot start apt-get")?;
    if !status.success() {
        bail!("apt-get download {package} failed: {status}");
    }
    let deb = fs::read_dir(work)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| anyhow!("apt-get download {package} left no .deb"))?;
    let unpacked_dir = work.join("root");
    let unpacked = Command::new("dpkg")
        .arg("-x")
        .arg(&deb)
        .arg(&unpacked_dir)
        .status()
        .context("cannot start dpkg")?;
    if !unpacked.success() {
        bail!("dpkg -x {} failed: {unpacked}", deb.display());
    }
    if root.exists() {
        // A broken earlier unpack (no vmlinuz), or another run's: either
        // way the fresh one is complete.
        fs::remove_dir_all(root)?;
    }
    fs::rename(&unpacked_dir, root)
        .with_context(|| format!("cannot move the kernel to {}", root.display()))?;
    Ok(())
}

/// A module to put in the guest and insmod.
struct Module {
    name: String,
    image: Vec<u8>,
    required: bool,
}

/// The kernel's module files by name, and its built-in modules.
struct ModuleIndex {
    files: HashMap<String, PathBuf>,
    builtin: HashSet<String>,
}

impl ModuleIndex {
    fn read(kernel: &Kernel) -> Result<Self> {
        let dir = kernel.modules_dir();
        let mut files = HashMap::new();
        let mut pending = vec![dir.join("kernel")];
        while let Some(d) = pending.pop() {
            for entry in fs::read_dir(&d).with_context(|| format!("cannot read {}", d.display()))? {
                let path = entry?.path();
                if path.is_dir() {
                    pending.push(path);
                } else if let Some(name) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(module_name)
                {
                    files.insert(name, path);
                }
            }
        }
        let builtin = fs::read_to_string(dir.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.rsplit('/').next())
            .filter_map(module_name)
            .collect();
        Ok(Self { files, builtin })
    }

    /// `wanted` and their dependencies, dependencies first, read and
    /// decompressed. A missing required module is an error; a missing
    /// optional one is left out, with what depends on it.
    fn load_order(&self, wanted: &[(String, bool)]) -> Result<Vec<Module>> {
        let mut order: Vec<Module> = Vec::new();
        let mut visiting = HashSet::new();
        for (name, required) in wanted {
            if let Err(e) = self.visit(name, *required, &mut order, &mut visiting) {
                if *required {
                    return Err(e);
                }
                eprintln!("xtask: optional module left out: {e:#}");
            }
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        required: bool,
        order: &mut Vec<Module>,
        visiting: &mut HashSet<String>,
    ) -> Result<()> {
        let name = name.replace('-', "_");
        if self.builtin.contains(&name) {
            return Ok(());
        }
        if let Some(m) = order.iter_mut().find(|m| m.name == name) {
            m.required |= required;
            return Ok(());
        }
        if !visiting.insert(name.clone()) {
            bail!("module dependency cycle through {name}");
        }
        let path = self
            .files
            .get(&name)
            .ok_or_else(|| anyhow!("module {name} is neither a file nor built in"))?;
        let image = decompress_module(path)?;
        let depends = modinfo_depends(&image)
            .with_context(|| format!("cannot read the .modinfo of {}", path.display()))?;
        for dep in depends {
            self.visit(&dep, required, order, visiting)
                .with_context(|| format!("{name} needs {dep}"))?;
        }
        visiting.remove(&name);
        order.push(Module {
            name,
            image,
            required,
        });
        Ok(())
    }
}

/// `nf_conntrack.ko.xz` -> `nf_conntrack`.
fn module_name(file: &str) -> Option<String> {
    let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|ext| file.strip_suffix(ext))?;
    Some(stem.replace('-', "_"))
}

/// The module's ELF image: the kernel's insmod takes it uncompressed
/// (busybox insmod does not decompress).
fn decompress_module(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else if name.ends_with(".gz") {
        "gzip"
    } else {
        return fs::read(path).with_context(|| format!("cannot read {name}"));
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .with_context(|| format!("cannot start {tool} for {name}"))?;
    if !out.status.success() {
        bail!(
            "{tool} -dc {name} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// The `depends=` list of a module's .modinfo section (what modinfo -F
/// depends prints). Debian ships no modules.dep in the package: depmod
/// writes it at install time.
fn modinfo_depends(elf: &[u8]) -> Result<Vec<String>> {
    let modinfo = elf_section(elf, ".modinfo")?;
    Ok(modinfo
        .split(|&b| b == 0)
        .filter_map(|field| field.strip_prefix(b"depends="))
        .flat_map(|list| {
            String::from_utf8_lossy(list)
                .split(',')
                .filter(|s| !s.is_empty())
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        })
        .collect())
}

/// The contents of the section called `wanted` of a 64-bit little-endian
/// ELF file.
fn elf_section<'a>(elf: &'a [u8], wanted: &str) -> Result<&'a [u8]> {
    fn bytes<const N: usize>(elf: &[u8], at: u64) -> Result<[u8; N]> {
        let at = usize::try_from(at)?;
        elf.get(at..at.saturating_add(N))
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| anyhow!("ELF file cut short at offset {at}"))
    }
    let u16_at = |at: u64| bytes::<2>(elf, at).map(u16::from_le_bytes);
    let u32_at = |at: u64| bytes::<4>(elf, at).map(u32::from_le_bytes);
    let u64_at = |at: u64| bytes::<8>(elf, at).map(u64::from_le_bytes);
    if elf.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        bail!("not a 64-bit little-endian ELF file");
    }
    let shoff = u64_at(0x28)?;
    let shentsize = u64::from(u16_at(0x3a)?);
    let shnum = u64::from(u16_at(0x3c)?);
    let shstrndx = u64::from(u16_at(0x3e)?);
    let header = |i: u64| -> Result<(u32, u64, u64)> {
        let at = shoff.saturating_add(i.saturating_mul(shentsize));
        Ok((u32_at(at)?, u64_at(at + 24)?, u64_at(at + 32)?))
    };
    let slice = |offset: u64, size: u64| -> Result<&'a [u8]> {
        let start = usize::try_from(offset)?;
        let end = start.saturating_add(usize::try_from(size)?);
        elf.get(start..end)
            .ok_or_else(|| anyhow!("ELF section past the end of the file"))
    };
    let (_, names_off, names_size) = header(shstrndx)?;
    let names = slice(names_off, names_size)?;
    for i in 0..shnum {
        let (name_at, offset, size) = header(i)?;
        let name = names
            .get(usize::try_from(name_at)?..)
            .and_then(|s| s.split(|&b| b == 0).next())
            .unwrap_or_default();
        if name == wanted.as_bytes() {
            return slice(offset, size);
        }
    }
    bail!("no {wanted} section")
}

/// A file system tree to be written as a cpio archive; paths have no
/// leading slash.
#[derive(Default)]
struct Tree(BTreeMap<String, Node>);

enum Node {
    Dir,
    File { data: FileData, mode: u32 },
    Symlink(String),
    CharDevice { major: u32, minor: u32 },
}

enum FileData {
    Host(PathBuf),
    Bytes(Vec<u8>),
}

impl Tree {
    /// Adds `node` at `path` (replacing what was there), and its parent
    /// directories.
    fn add(&mut self, path: &str, node: Node) {
        let path = path.trim_start_matches('/').to_string();
        let mut parent = Path::new(&path).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            self.0
                .entry(p.to_string_lossy().into_owned())
                .or_insert(Node::Dir);
            parent = p.parent();
        }
        self.0.insert(path, node);
    }

    fn add_host_file(&mut self, guest: &str, host: &Path) -> Result<()> {
        let meta = fs::metadata(host).with_context(|| format!("cannot stat {}", host.display()))?;
        self.add(
            guest,
            Node::File {
                data: FileData::Host(host.to_path_buf()),
                mode: meta.permissions().mode() & 0o7777,
            },
        );
        Ok(())
    }

    fn add_bytes(&mut self, guest: &str, bytes: impl Into<Vec<u8>>, mode: u32) {
        self.add(
            guest,
            Node::File {
                data: FileData::Bytes(bytes.into()),
                mode,
            },
        );
    }

    /// Adds a host program at `guest` and every shared library ldd lists
    /// for it (and the dynamic loader) at the path ldd names.
    fn add_program(&mut self, guest: &str, host: &Path) -> Result<()> {
        self.add_host_file(guest, host)?;
        for lib in shared_libraries(host)? {
            self.add_host_file(&lib.to_string_lossy(), &lib)?;
        }
        Ok(())
    }

    /// Writes the tree as a cpio "newc" archive, the format the kernel
    /// unpacks into its initial root file system.
    fn write_newc(&self, out: &Path) -> Result<()> {
        let file =
            fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
        let mut w = BufWriter::new(file);
        for (ino, (path, node)) in (1u32..).zip(&self.0) {
            let (mode, body, rdev): (u32, Vec<u8>, (u32, u32)) = match node {
                Node::Dir => (0o040_755, Vec::new(), (0, 0)),
                Node::File { data, mode } => {
                    let body = match data {
                        FileData::Host(p) => {
                            fs::read(p).with_context(|| format!("cannot read {}", p.display()))?
                        }
                        FileData::Bytes(b) => b.clone(),
                    };
                    (0o100_000 | mode, body, (0, 0))
                }
                Node::Symlink(target) => (0o120_777, target.as_bytes().to_vec(), (0, 0)),
                Node::CharDevice { major, minor } => (0o020_600, Vec::new(), (*major, *minor)),
            };
            let nlink = if matches!(node, Node::Dir) { 2 } else { 1 };
            write_newc_entry(&mut w, ino, mode, nlink, rdev, path, &body)?;
        }
        write_newc_entry(&mut w, 0, 0, 1, (0, 0), "TRAILER!!!", &[])?;
        w.flush()?;
        Ok(())
    }
}

fn write_newc_entry(
    w: &mut impl Write,
    ino: u32,
    mode: u32,
    nlink: u32,
    (rdev_major, rdev_minor): (u32, u32),
    name: &str,
    body: &[u8],
) -> Result<()> {
    let size =
        u32::try_from(body.len()).with_context(|| format!("{name} is too large for cpio"))?;
    let name_size = u32::try_from(name.len() + 1)?;
    // Fields: ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
    // devminor, rdevmajor, rdevminor, namesize, check.
    let fields = [
        ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev_major, rdev_minor, name_size, 0,
    ];
    let mut header = String::from("070701");
    for f in fields {
        header.push_str(&format!("{f:08X}"));
    }
    w.write_all(header.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    w.write_all(&[0; 3][..pad4(header.len() + name.len() + 1)])?;
    w.write_all(body)?;
    w.write_all(&[0; 3][..pad4(body.len())])?;
    Ok(())
}

fn pad4(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// The shared libraries and loader `ldd` lists for `program`; none for a
/// static one.
fn shared_libraries(program: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(program)
        .output()
        .context("cannot start ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("not a dynamic executable") {
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vdso has no path.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        match path {
            Some(p) if p.starts_with('/') => libs.push(PathBuf::from(p)),
            // "libfoo.so => not found"
            Some("not") => bail!("ldd {}: {}", program.display(), line.trim()),
            _ => {}
        }
    }
    Ok(libs)
}

/// Whether `name` can be a shell variable's name.
fn is_shell_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Writes target/vm/initramfs-<release>.cpio: busybox, the modules, the
/// binaries, tests/vm/ as /vm, and /vm/cmd running `command`.
fn build_initramfs(
    kernel: &Kernel,
    bins: &GuestBins,
    guest: &GuestArgs,
    command: &[String],
) -> Result<PathBuf> {
    let mut tree = Tree::default();
    for dir in ["dev", "proc", "sys", "run", "tmp", "root", "mnt", "etc"] {
        tree.add(dir, Node::Dir);
    }
    // The kernel opens /dev/console for init before devtmpfs is mounted.
    tree.add("dev/console", Node::CharDevice { major: 5, minor: 1 });

    tree.add_program(BUSYBOX, Path::new(BUSYBOX))?;
    let applets = Command::new(BUSYBOX)
        .arg("--list-full")
        .output()
        .context("cannot run busybox --list-full (apt-get install busybox-static)")?;
    for applet in String::from_utf8_lossy(&applets.stdout).lines() {
        let applet = applet.trim();
        if !applet.is_empty() && applet != "bin/busybox" {
            tree.add(applet, Node::Symlink(BUSYBOX.to_string()));
        }
    }

    tree.add_bytes("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644);
    tree.add_bytes("etc/group", "root:x:0:\n", 0o644);
    for etc in ["/etc/protocols", "/etc/services"] {
        if Path::new(etc).is_file() {
            tree.add_host_file(etc, Path::new(etc))?;
        }
    }

    for (host, at) in HOST_TOOLS {
        tree.add_program(at, Path::new(host))
            .with_context(|| format!("{host} is needed in the guest"))?;
    }
    for (host, at) in OPTIONAL_HOST_TOOLS {
        if Path::new(host).is_file() {
            tree.add_program(at, Path::new(host))?;
        }
    }
    tree.add_program("/usr/local/bin/ctscope", &bins.ctscope)?;
    if let Some(ctchurn) = &bins.ctchurn {
        tree.add_program("/usr/local/bin/ctchurn", ctchurn)?;
    }
    for bin in &bins.extra {
        let name = bin
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| anyhow!("{} has no file name", bin.display()))?;
        tree.add_program(&format!("/usr/local/bin/{name}"), bin)?;
    }

    let wanted: Vec<(String, bool)> = REQUIRED_MODULES
        .iter()
        .map(|m| (m.to_string(), true))
        .chain(OPTIONAL_MODULES.iter().map(|m| (m.to_string(), false)))
        .chain(guest.extra_modules.iter().map(|m| (m.clone(), true)))
        .collect();
    let modules = ModuleIndex::read(kernel)?
        .load_order(&wanted)
        .with_context(|| format!("kernel {}", kernel.release))?;
    let mut list = String::new();
    for m in modules {
        let need = if m.required { "required" } else { "optional" };
        list.push_str(&format!("{} {need}\n", m.name));
        tree.add_bytes(
            &format!("lib/modules/{}/ctscope-vm/{}.ko", kernel.release, m.name),
            m.image,
            0o644,
        );
    }
    tree.add_bytes("vm/modules", list, 0o644);

    let scripts = workspace_root().join("tests/vm");
    add_host_dir(&mut tree, "vm", &scripts)?;
    tree.add_host_file("init", &scripts.join("harness/init.sh"))?;

    let mut sysctls = String::new();
    for s in &guest.sysctls {
        if !s.contains('=') {
            bail!("--sysctl takes KEY=VALUE, not {s:?}");
        }
        sysctls.push_str(s);
        sysctls.push('\n');
    }
    tree.add_bytes("vm/sysctls", sysctls, 0o644);

    let mut cmd = String::from("export RUST_BACKTRACE=1\n");
    for e in &guest.env {
        let Some((key, value)) = e.split_once('=').filter(|(k, _)| is_shell_name(k)) else {
            bail!("--env takes NAME=VALUE, not {e:?}");
        };
        cmd.push_str(&format!("export {key}={}\n", shell_quote(value)));
    }
    let words: Vec<String> = command.iter().map(|w| shell_quote(w)).collect();
    cmd.push_str(&words.join(" "));
    cmd.push('\n');
    tree.add_bytes("vm/cmd", cmd, 0o755);

    // Named after this process: another run at once writes its own. It
    // becomes initramfs-<release>.cpio once booted (see `keep_initramfs`).
    let out = vm_dir().join(format!(
        "initramfs-{}.cpio.{}",
        kernel.release,
        std::process::id()
    ));
    tree.write_newc(&out)?;
    Ok(out)
}

/// Renames this run's initramfs to initramfs-<release>.cpio, the last one
/// booted, kept to look into (`cpio -t <`) or to boot by hand.
fn keep_initramfs(kernel: &Kernel, initrd: &Path) {
    let kept = vm_dir().join(format!("initramfs-{}.cpio", kernel.release));
    if fs::rename(initrd, &kept).is_err() {
        let _ = fs::remove_file(initrd);
    }
}

/// Adds the files under `host` (recursively) below `guest`.
fn add_host_dir(tree: &mut Tree, guest: &str, host: &Path) -> Result<()> {
    for entry in fs::read_dir(host).with_context(|| format!("cannot read {}", host.display()))? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let at = format!("{guest}/{name}");
        if path.is_dir() {
            add_host_dir(tree, &at, &path)?;
        } else {
            tree.add_host_file(&at, &path)?;
        }
    }
    Ok(())
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
