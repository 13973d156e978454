//! The guest kernels: Debian cloud kernel packages, downloaded once into
//! target/vm/kernels/, and the index of their modules (dependencies read
//! from each module's .modinfo).
use super::*;

/// A Debian kernel package unpacked under target/vm/kernels/<release>/.
pub(super) struct Kernel {
    /// As `uname -r` says it, e.g. 6.12.117+deb12-cloud-amd64.
    pub(super) release: String,
    pub(super) root: PathBuf,
}

impl Kernel {
    pub(super) fn vmlinuz(&self) -> PathBuf {
        self.root.join(format!("boot/vmlinuz-{}", self.release))
    }

    /// Debian's 6.1 kernels hang bringing up a second CPU under qemu
    /// `-icount` (6.12 does not): such a guest gets one CPU.
    pub(super) fn hangs_with_icount_smp(&self) -> bool {
        is_release_of(&self.release, "6.1")
    }

    pub(super) fn modules_dir(&self) -> PathBuf {
        self.root.join(format!("lib/modules/{}", self.release))
    }

    /// The newest kernel of `major` (6.1, 6.12...) Debian offers, from the
    /// cache or downloaded into it; the cached newest when apt knows none.
    pub(super) fn ensure(major: &str) -> Result<Self> {
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
pub(super) fn release_of(package: &str) -> Option<&str> {
    package
        .strip_prefix("linux-image-")?
        .strip_suffix("-unsigned")
}

/// The numbers in a release, for ordering: 6.1.0-56 after 6.1.0-9.
pub(super) fn version_key(release: &str) -> Vec<u64> {
    release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap_or(u64::MAX))
        .collect()
}

pub(super) fn is_release_of(release: &str, major: &str) -> bool {
    // "6.1." so that 6.12 is not taken for 6.1.
    release.starts_with(&format!("{major}.")) && release.ends_with("-cloud-amd64")
}

/// The unsigned cloud kernel packages of `major` apt knows, best first:
/// the pinned one, then newest first.
pub(super) fn apt_kernel_packages(major: &str) -> Vec<String> {
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

pub(super) fn newest_cached(dir: &Path, major: &str) -> Option<Kernel> {
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
pub(super) fn download(dir: &Path, package: &str, root: &Path) -> Result<()> {
    println!("xtask: downloading {package} (Debian package, about 30 MB)");
    let work = dir.join(format!(".download-{}", std::process::id()));
    let result = download_in(&work, package, root);
    let _ = fs::remove_dir_all(&work);
    result
}

pub(super) fn download_in(work: &Path, package: &str, root: &Path) -> Result<()> {
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
pub(super) struct Module {
    pub(super) name: String,
    pub(super) image: Vec<u8>,
    pub(super) required: bool,
}

/// The kernel's module files by name, and its built-in modules.
pub(super) struct ModuleIndex {
    pub(super) files: HashMap<String, PathBuf>,
    pub(super) builtin: HashSet<String>,
}

impl ModuleIndex {
    pub(super) fn read(kernel: &Kernel) -> Result<Self> {
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
    pub(super) fn load_order(&self, wanted: &[(String, bool)]) -> Result<Vec<Module>> {
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

    pub(super) fn visit(
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
pub(super) fn module_name(file: &str) -> Option<String> {
    let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|ext| file.strip_suffix(ext))?;
    Some(stem.replace('-', "_"))
}

/// The module's ELF image: the kernel's insmod takes it uncompressed
/// (busybox insmod does not decompress).
pub(super) fn decompress_module(path: &Path) -> Result<Vec<u8>> {
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
pub(super) fn modinfo_depends(elf: &[u8]) -> Result<Vec<String>> {
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
pub(super) fn elf_section<'a>(elf: &'a [u8], wanted: &str) -> Result<&'a [u8]> {
    pub(super) fn bytes<const N: usize>(elf: &[u8], at: u64) -> Result<[u8; N]> {
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
