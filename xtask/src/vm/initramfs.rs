//! The guest's root file system: an initramfs (newc cpio) with busybox,
//! the test binaries, the shared libraries they use, the kernel modules
//! and the scripts of tests/vm/.
use super::*;

/// A file system tree to be written as a cpio archive; paths have no
/// leading slash.
#[derive(Default)]
pub(super) struct Tree(BTreeMap<String, Node>);

pub(super) enum Node {
    Dir,
    File { data: FileData, mode: u32 },
    Symlink(String),
    CharDevice { major: u32, minor: u32 },
}

pub(super) enum FileData {
    Host(PathBuf),
    Bytes(Vec<u8>),
}

impl Tree {
    /// Adds `node` at `path` (replacing what was there), and its parent
    /// directories.
    pub(super) fn add(&mut self, path: &str, node: Node) {
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

    pub(super) fn add_host_file(&mut self, guest: &str, host: &Path) -> Result<()> {
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

    pub(super) fn add_bytes(&mut self, guest: &str, bytes: impl Into<Vec<u8>>, mode: u32) {
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
    pub(super) fn add_program(&mut self, guest: &str, host: &Path) -> Result<()> {
        self.add_host_file(guest, host)?;
        for lib in shared_libraries(host)? {
            self.add_host_file(&lib.to_string_lossy(), &lib)?;
        }
        Ok(())
    }

    /// Writes the tree as a cpio "newc" archive, the format the kernel
    /// unpacks into its initial root file system.
    pub(super) fn write_newc(&self, out: &Path) -> Result<()> {
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

pub(super) fn write_newc_entry(
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

pub(super) fn pad4(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// The shared libraries and loader `ldd` lists for `program`; none for a
/// static one.
pub(super) fn shared_libraries(program: &Path) -> Result<Vec<PathBuf>> {
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
pub(super) fn is_shell_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Writes target/vm/initramfs-<release>.cpio: busybox, the modules, the
/// binaries, tests/vm/ as /vm, and /vm/cmd running `command`.
pub(super) fn build_initramfs(
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
    for (name, helper) in &bins.helpers {
        tree.add_program(&format!("/usr/local/bin/{name}"), helper)?;
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
pub(super) fn keep_initramfs(kernel: &Kernel, initrd: &Path) {
    let kept = vm_dir().join(format!("initramfs-{}.cpio", kernel.release));
    if fs::rename(initrd, &kept).is_err() {
        let _ = fs::remove_file(initrd);
    }
}

/// Adds the files under `host` (recursively) below `guest`.
pub(super) fn add_host_dir(tree: &mut Tree, guest: &str, host: &Path) -> Result<()> {
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
