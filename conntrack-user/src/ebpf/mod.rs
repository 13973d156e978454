//! The eBPF tracer: loads the programs built from conntrack-ebpf with
//! offsets from the running kernel's BTF ([`btf`]), attaches them, and
//! drains `CtEvent` records from the ring buffer ([`record`] decodes them).
//! Waiting for the ring is the event source's business (`source`).
//!
//! Two ways to attach ([`Hook`]): an fentry and an fexit program (the
//! cheapest hooks: no return trampoline, no map between entry and return),
//! loaded against the nf_conntrack module's BTF object ([`btf_object`]) with
//! a small aya patch (third_party/README.md); and, where the kernel refuses
//! tracing programs or lacks the functions' BTF, kprobe/kretprobe pairs.
//! UPDATE events ([`Updates`]) add one more program of the same kind, on
//! nf_conntrack_netlink's `ctnetlink_conntrack_event`; they need the
//! kernel's event cache (`net.netfilter.nf_conntrack_events=1`).
pub mod btf;
pub mod btf_object;
pub mod record;
mod skips;

use std::{
    io,
    os::fd::{AsRawFd, OwnedFd, RawFd},
    path::Path,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{FEntry, FExit, KProbe, ProgramError, kprobe::KProbeLink},
};
use conntrack_ebpf::ABSENT;

use self::{
    btf::{BtfError, KernelBtf},
    record::RecordDecoder,
    skips::events_skipped,
};
use crate::ct::{Conntrack, EventKind};

/// The eBPF object built by aya-build from conntrack-ebpf (build.rs).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/conntrack"));

/// The fentry/fexit programs: (program, kernel function, fexit?).
const TRACING: &[(&str, &str, bool)] = &[
    ("ct_insert_fentry", "__nf_conntrack_hash_insert", false),
    ("ct_delete_fexit", "nf_ct_delete", true),
];

/// The UPDATE program as fentry, and as kprobe; the function, its module.
const UPDATE_FENTRY: &str = "ct_update_fentry";
const UPDATE_KPROBE: &str = "ct_update_entry";
const UPDATE_FUNCTION: &str = "ctnetlink_conntrack_event";
const UPDATE_MODULE: &str = "nf_conntrack_netlink";
/// The sysctl that gives entries the event cache UPDATE events come from.
const EVENTS_SYSCTL: &str = "/proc/sys/net/netfilter/nf_conntrack_events";

/// (program, kernel function) pairs; `_exit` programs are kretprobes.
const PROBES: &[(&str, &str)] = &[
    ("ct_confirm_entry", "__nf_conntrack_confirm"),
    ("ct_confirm_exit", "__nf_conntrack_confirm"),
    ("ct_insert_entry", "nf_conntrack_hash_check_insert"),
    ("ct_insert_exit", "nf_conntrack_hash_check_insert"),
    ("ct_delete_entry", "nf_ct_delete"),
    ("ct_delete_exit", "nf_ct_delete"),
];

/// Where the kernel lists its kprobe PMU; absent when CONFIG_KPROBES is off.
const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe";

/// Why the eBPF source cannot run; each names the missing piece.
#[derive(Debug, thiserror::Error)]
pub enum TracerError {
    /// The embedded object does not parse.
    #[error("the embedded eBPF object is invalid: {0}")]
    BadObject(String),
    /// A program or map the ABI names is missing from the object.
    #[error("the embedded eBPF object lacks {0}")]
    Missing(String),
    /// No kprobe support in this kernel.
    #[error("this kernel has no kprobes (no {KPROBE_PMU}: CONFIG_KPROBES is off)")]
    NoKprobes,
    /// BTF missing or lacking a field.
    #[error("{0}")]
    Btf(#[from] BtfError),
    /// The kernel refused to load the programs or maps.
    #[error("the kernel refused the eBPF programs: {0}")]
    Load(String),
    /// Not allowed to load eBPF programs.
    #[error("loading eBPF programs needs root, or CAP_BPF and CAP_PERFMON ({0})")]
    Privilege(String),
    /// `--ebpf-hook fentry`, and the kernel has no BTF for a function.
    #[error("no BTF for {0} (fentry needs the function in vmlinux or module BTF)")]
    NoFunctionBtf(String),
    /// UPDATE events were asked for and cannot be had.
    #[error("{0}")]
    NoUpdates(String),
    /// A hooked function is not in this kernel.
    #[error("cannot attach to {function}: {reason}")]
    Attach {
        /// The kernel function.
        function: String,
        /// Why.
        reason: String,
    },
}

/// The compiler clone of a function (`.constprop.0`, `.isra.0`) when only
/// that is in /proc/kallsyms, or the function itself when it is there.
fn attach_symbol(kallsyms: &str, function: &str) -> Option<String> {
    let mut clone = None;
    for line in kallsyms.lines() {
        let Some(name) = line.split_whitespace().nth(2) else {
            continue;
        };
        if name == function {
            return Some(function.to_string());
        }
        if clone.is_none()
            && let Some(rest) = name.strip_prefix(function)
            && (rest.starts_with(".constprop.") || rest.starts_with(".isra."))
        {
            clone = Some(name.to_string());
        }
    }
    clone
}

/// The kernel's HZ: CLOCK_MONOTONIC_COARSE ticks once per jiffy.
fn kernel_hz() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_getres writes into ts.
    let ok = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut ts) } == 0;
    if ok && ts.tv_sec == 0 && ts.tv_nsec > 0 {
        (1_000_000_000 / ts.tv_nsec as u64) as u32
    } else {
        250
    }
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into ts.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// The inode of a network namespace file (what the kernel calls ns.inum).
pub fn netns_inode(path: &str) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .ok()
        .and_then(|m| u32::try_from(m.ino()).ok())
}

/// How the programs attach (`--ebpf-hook`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Hook {
    /// fentry/fexit when the kernel allows them, else kprobes.
    #[default]
    Auto,
    /// fentry/fexit only (pins the nf_conntrack module while attached).
    Fentry,
    /// kprobes and kretprobes only.
    Kprobe,
}

/// Whether the tracer reports UPDATE events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Updates {
    /// Not wanted: the program is not attached.
    #[default]
    Off,
    /// Wanted where the kernel gives them; NEW and DESTROY alone
    /// otherwise (the start-up line says why).
    IfAvailable,
    /// Asked for (`-e UPDATE`): the tracer fails without them.
    Required,
}

/// Settings of the tracer.
#[derive(Clone, Copy, Debug)]
pub struct TracerConfig {
    /// Ring buffer bytes (a power of two, at least a page).
    pub ring_size: u32,
    /// Only this namespace's entries (0: all namespaces).
    pub filter_netns: u32,
    /// How to attach.
    pub hook: Hook,
    /// UPDATE events.
    pub updates: Updates,
}

/// Why the kernel gives no UPDATE events to a tracer, or `None` when it
/// does: the event cache must be on for every entry. The short reason,
/// for the start-up line.
fn updates_unavailable() -> Option<String> {
    match std::fs::read_to_string(EVENTS_SYSCTL).map(|v| v.trim().to_string()) {
        Ok(v) if v == "1" => None,
        Ok(v) => Some(format!(
            "net.netfilter.nf_conntrack_events is {v}, they need 1"
        )),
        Err(_) => Some(format!("no {EVENTS_SYSCTL}")),
    }
}

/// The error of a tracer that must report updates and cannot: `why`, and
/// what to do.
fn updates_required(why: &str) -> TracerError {
    TracerError::NoUpdates(format!(
        "UPDATE events from eBPF: {why} (with the default, 2, the kernel tracks changes only \
         while a ctnetlink listener exists); set it with sysctl, or use --source netlink"
    ))
}

/// What [`Tracer::start`] attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attached {
    /// The fentry/fexit programs.
    Fentry,
    /// The kprobe pairs; why fentry was not used, when it was tried.
    Kprobes {
        /// The fentry attempt's error.
        fentry_refused: Option<String>,
    },
}

/// The loaded and attached tracer.
pub struct Tracer {
    /// Keeps programs (and the fentry/fexit links) alive; asked for their
    /// skipped runs.
    ebpf: Ebpf,
    attached: Attached,
    /// The programs attached, by name.
    programs: Vec<&'static str>,
    /// The kprobe programs' links, by program: kept alive here, and asked
    /// for the runs the kprobes themselves missed.
    kprobe_links: Vec<(&'static str, KProbeLink)>,
    /// Whether this kernel counts the runs it skips of these programs.
    skips_counted: bool,
    /// The UPDATE program is attached; else why not, when it was wanted.
    updates: Result<bool, String>,
    ring: RingBuf<MapData>,
    drops: PerCpuArray<MapData, u64>,
    decoder: RecordDecoder,
}

impl Tracer {
    /// Loads and attaches everything, or says what is missing.
    pub fn start(config: TracerConfig) -> Result<Self, TracerError> {
        let btf = KernelBtf::load_running()?;
        let mut offsets = btf.conntrack_offsets()?;
        offsets.filter_netns = config.filter_netns;
        let mut updates_refused = match config.updates {
            Updates::Off => None,
            _ => updates_unavailable().or_else(|| {
                (offsets.event_ct == ABSENT)
                    .then(|| "this kernel's BTF has no struct nf_ct_event".to_string())
            }),
        };
        if config.updates == Updates::Required
            && let Some(why) = &updates_refused
        {
            return Err(updates_required(why));
        }
        // aya parses the kernel's BTF only for CO-RE relocations, which the
        // programs do not have (offsets come in OFFSETS).
        // The reader drains on a timer; a quarter-full ring wakes it.
        let wake_at = u64::from(config.ring_size / 4);
        let mut ebpf = EbpfLoader::new()
            .override_global("OFFSETS", &offsets, true)
            .override_global("WAKE_AT", &wake_at, true)
            .map_max_entries(conntrack_ebpf::RING_MAP, config.ring_size)
            .load(EBPF_OBJECT)
            .map_err(|e| refused(&e, e.to_string()))?;
        let mut kprobe_links = Vec::new();
        let attached = match config.hook {
            Hook::Fentry => {
                attach_tracing(&mut ebpf, &btf)?;
                Attached::Fentry
            }
            Hook::Kprobe => {
                kprobe_links = attach_kprobes(&mut ebpf)?;
                Attached::Kprobes {
                    fentry_refused: None,
                }
            }
            Hook::Auto => match attach_tracing(&mut ebpf, &btf) {
                Ok(()) => Attached::Fentry,
                Err(e) => {
                    detach_tracing(&mut ebpf);
                    kprobe_links = attach_kprobes(&mut ebpf)?;
                    Attached::Kprobes {
                        fentry_refused: Some(e.to_string()),
                    }
                }
            },
        };
        if config.updates != Updates::Off && updates_refused.is_none() {
            let fentry = attached == Attached::Fentry;
            match attach_updates(&mut ebpf, &btf, fentry) {
                Ok(link) => kprobe_links.extend(link),
                Err(e) => {
                    if config.updates == Updates::Required {
                        return Err(e);
                    }
                    updates_refused = Some(e.to_string());
                }
            }
        }
        let updates = match updates_refused {
            Some(why) => Err(why),
            None => Ok(config.updates != Updates::Off),
        };
        let fentry = attached == Attached::Fentry;
        let mut programs: Vec<&'static str> = if fentry {
            TRACING.iter().map(|(p, _, _)| *p).collect()
        } else {
            PROBES.iter().map(|(p, _)| *p).collect()
        };
        if updates == Ok(true) {
            programs.push(if fentry { UPDATE_FENTRY } else { UPDATE_KPROBE });
        }
        // Tracing programs' skips are counted since 5.11 (older kernels
        // cannot load them against a module anyway); a kprobe's since 6.7:
        // both the program's (recursion_misses) and the probe's (the perf
        // link's kprobe.missed).
        let skips_counted = fentry || crate::release::kernel_version().is_some_and(|v| v >= (6, 7));
        let ring = RingBuf::try_from(
            ebpf.take_map(conntrack_ebpf::RING_MAP)
                .ok_or_else(|| TracerError::Missing("the ring buffer map".into()))?,
        )
        .map_err(|e| TracerError::Load(e.to_string()))?;
        let drops = PerCpuArray::try_from(
            ebpf.take_map("CT_DROPS")
                .ok_or_else(|| TracerError::Missing("map CT_DROPS".into()))?,
        )
        .map_err(|e| TracerError::Load(e.to_string()))?;
        Ok(Self {
            ebpf,
            attached,
            programs,
            kprobe_links,
            skips_counted,
            updates,
            ring,
            drops,
            decoder: RecordDecoder::new(
                kernel_hz(),
                clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC),
            ),
        })
    }

    /// Programs attached (a started tracer has all of its set, and the
    /// UPDATE one when it reports updates).
    pub fn probes(&self) -> usize {
        let set = match self.attached {
            Attached::Fentry => TRACING.len(),
            Attached::Kprobes { .. } => PROBES.len(),
        };
        set + usize::from(self.reports_updates())
    }

    /// Whether UPDATE events come.
    pub fn reports_updates(&self) -> bool {
        self.updates == Ok(true)
    }

    /// Why UPDATE events were wanted and do not come.
    pub fn updates_refused(&self) -> Option<&str> {
        self.updates.as_ref().err().map(String::as_str)
    }

    /// How the programs are attached.
    pub fn attached(&self) -> &Attached {
        &self.attached
    }

    /// Whether this kernel counts the runs it skips of the attached
    /// programs (not for kprobes before 6.7).
    pub fn skips_counted(&self) -> bool {
        self.skips_counted
    }

    /// Events the kernel's skipped runs of the attached programs may have
    /// cost since they were loaded (`skips::events_skipped`): a program
    /// already running on that CPU; for kprobes another BPF program running
    /// there (the program's `recursion_misses`), or another kprobe handler
    /// (the probe's `missed`, read from its link). `None` where this kernel
    /// does not count them (kprobes before 6.7).
    pub fn skipped(&self) -> Option<u64> {
        if !self.skips_counted {
            return None;
        }
        let runs: Vec<(&str, u64)> = self
            .programs
            .iter()
            .map(|name| {
                let program = self
                    .ebpf
                    .program(name)
                    .and_then(|p| p.info().ok())
                    .map_or(0, |info| info.recursion_misses());
                let probe: u64 = self
                    .kprobe_links
                    .iter()
                    .filter(|(p, _)| p == name)
                    .filter_map(|(_, link)| link.info().ok()?.kprobe_missed())
                    .sum();
                (*name, program + probe)
            })
            .collect();
        Some(events_skipped(&runs))
    }

    /// Records the programs could not write because the ring was full.
    pub fn lost(&self) -> u64 {
        self.drops
            .get(&0, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }

    /// Hands every record in the ring to `on_event` (kind, entry, wall time
    /// in ns, network namespace inode). A record of an unknown size or kind
    /// (no program emits one) is counted in `malformed`, never shown.
    pub fn drain(&mut self, mut on_event: impl FnMut(EventKind, &Conntrack, u64, u32)) -> Drained {
        let mut drained = Drained::default();
        while let Some(item) = self.ring.next() {
            match self.decoder.decode(&item) {
                Some((kind, ct, time_ns, netns)) => {
                    drained.events += 1;
                    on_event(kind, ct, time_ns, netns);
                }
                None => drained.malformed += 1,
            }
        }
        drained
    }
}

/// Loads and attaches the fentry/fexit programs against the BTF object of
/// the module (or vmlinux) that has each function.
fn attach_tracing(ebpf: &mut Ebpf, btf: &KernelBtf) -> Result<(), TracerError> {
    for (program, function, exit) in TRACING {
        attach_traced(ebpf, btf, program, function, "nf_conntrack", *exit)?;
    }
    Ok(())
}

/// An fentry program and an fexit one load and attach the same way.
trait Traced {
    fn load_in(&mut self, id: u32, btf_fd: OwnedFd) -> Result<(), ProgramError>;
    fn attach_now(&mut self) -> Result<(), ProgramError>;
}

/// [`Traced`] for program types with aya's `load_in_module` and `attach`.
macro_rules! traced {
    ($($kind:ty),*) => {$(
        impl Traced for $kind {
            fn load_in(&mut self, id: u32, btf_fd: OwnedFd) -> Result<(), ProgramError> {
                self.load_in_module(id, btf_fd)
            }
            fn attach_now(&mut self) -> Result<(), ProgramError> {
                self.attach().map(drop)
            }
        }
    )*};
}
traced!(FEntry, FExit);

/// Loads `program` against the BTF of `function` (in `module`, or in
/// vmlinux where the module is built in) and attaches it.
fn attach_traced(
    ebpf: &mut Ebpf,
    btf: &KernelBtf,
    program: &str,
    function: &str,
    module: &str,
    exit: bool,
) -> Result<(), TracerError> {
    let (id, in_module) = btf
        .module_function(module, function)?
        .ok_or_else(|| TracerError::NoFunctionBtf(function.to_string()))?;
    let object = if in_module { module } else { "vmlinux" };
    let btf_fd = btf_object::kernel_btf_fd(object)
        .map_err(|e| refused(&e, format!("cannot find the {object} BTF object: {e}")))?
        .ok_or_else(|| TracerError::NoFunctionBtf(format!("{function} ({object} not loaded)")))?;
    let prog = ebpf
        .program_mut(program)
        .ok_or_else(|| TracerError::Missing(format!("program {program}")))?;
    let not_ours = |e: ProgramError| TracerError::Load(format!("{program}: {e}"));
    let p: &mut dyn Traced = if exit {
        <&mut FExit>::try_from(prog).map_err(not_ours)?
    } else {
        <&mut FEntry>::try_from(prog).map_err(not_ours)?
    };
    p.load_in(id, btf_fd)
        .map_err(|e| refused(&e, format!("{program}: {e}")))?;
    p.attach_now().map_err(|e| TracerError::Attach {
        function: function.to_string(),
        reason: e.to_string(),
    })
}

/// Attaches the UPDATE program, of the kind the other programs are; a
/// kprobe's link.
fn attach_updates(
    ebpf: &mut Ebpf,
    btf: &KernelBtf,
    fentry: bool,
) -> Result<Option<(&'static str, KProbeLink)>, TracerError> {
    if fentry {
        attach_traced(
            ebpf,
            btf,
            UPDATE_FENTRY,
            UPDATE_FUNCTION,
            UPDATE_MODULE,
            false,
        )?;
        Ok(None)
    } else {
        let link = attach_kprobe(
            ebpf,
            UPDATE_KPROBE,
            UPDATE_FUNCTION,
            UPDATE_MODULE,
            &mut None,
        )?;
        Ok(Some((UPDATE_KPROBE, link)))
    }
}

/// Undoes what a failed [`attach_tracing`] did (before kprobes take over,
/// so no entry is reported twice).
fn detach_tracing(ebpf: &mut Ebpf) {
    for (program, _, exit) in TRACING {
        let Some(prog) = ebpf.program_mut(program) else {
            continue;
        };
        if *exit {
            if let Ok(p) = <&mut FExit>::try_from(prog) {
                let _ = p.unload();
            }
        } else if let Ok(p) = <&mut FEntry>::try_from(prog) {
            let _ = p.unload();
        }
    }
}

/// Loads and attaches the kprobe/kretprobe pairs; their links, by
/// program.
fn attach_kprobes(ebpf: &mut Ebpf) -> Result<Vec<(&'static str, KProbeLink)>, TracerError> {
    if !Path::new(KPROBE_PMU).exists() {
        return Err(TracerError::NoKprobes);
    }
    // Read only when a plain name does not attach: /proc/kallsyms is
    // ~200,000 lines the kernel formats on every read, seconds in a
    // slow guest.
    let mut kallsyms: Option<String> = None;
    let mut links = Vec::with_capacity(PROBES.len());
    for (program, function) in PROBES {
        let link = attach_kprobe(ebpf, program, function, "nf_conntrack", &mut kallsyms)?;
        links.push((*program, link));
    }
    Ok(links)
}

/// Loads one kprobe (or kretprobe) program and attaches it to `function`
/// (of `module`), or to its compiler clone (`kallsyms`, read on first
/// need); the link, which detaches the program when dropped.
fn attach_kprobe(
    ebpf: &mut Ebpf,
    program: &str,
    function: &str,
    module: &str,
    kallsyms: &mut Option<String>,
) -> Result<KProbeLink, TracerError> {
    let probe: &mut KProbe = ebpf
        .program_mut(program)
        .ok_or_else(|| TracerError::Missing(format!("program {program}")))?
        .try_into()
        .map_err(|e| TracerError::Load(format!("{program}: {e}")))?;
    probe
        .load()
        .map_err(|e| refused(&e, format!("{program}: {e}")))?;
    let id = match probe.attach(function, 0) {
        Ok(id) => id,
        Err(_) => {
            let symbols = kallsyms.get_or_insert_with(|| {
                std::fs::read_to_string("/proc/kallsyms").unwrap_or_default()
            });
            let symbol = attach_symbol(symbols, function).ok_or_else(|| TracerError::Attach {
                function: function.to_string(),
                reason: format!("not in /proc/kallsyms (is {module} loaded?)"),
            })?;
            probe.attach(&symbol, 0).map_err(|e| TracerError::Attach {
                function: symbol.clone(),
                reason: e.to_string(),
            })?
        }
    };
    probe.take_link(id).map_err(|e| TracerError::Attach {
        function: function.to_string(),
        reason: e.to_string(),
    })
}

/// What one [`Tracer::drain`] took from the ring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drained {
    /// Records handed on.
    pub events: u64,
    /// Records of an unknown size or kind.
    pub malformed: u64,
}

impl AsRawFd for Tracer {
    /// The ring buffer's fd, which polls readable when records wait.
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

/// A refusal by the kernel: [`TracerError::Privilege`] when an EPERM or
/// EACCES is anywhere in the error's chain, else [`TracerError::Load`].
fn refused(error: &(dyn std::error::Error + 'static), text: String) -> TracerError {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<io::Error>()
            && matches!(io.raw_os_error(), Some(libc::EPERM | libc::EACCES))
        {
            return TracerError::Privilege(text);
        }
        cause = e.source();
    }
    TracerError::Load(text)
}

#[cfg(test)]
mod tests {
    use aya_obj::Object;

    use super::*;

    /// The names of the programs in the object, checked against the ABI.
    fn object_programs() -> Result<Vec<String>, TracerError> {
        let obj = Object::parse(EBPF_OBJECT).map_err(|e| TracerError::BadObject(e.to_string()))?;
        if !obj.maps.contains_key(conntrack_ebpf::RING_MAP) {
            return Err(TracerError::Missing(format!(
                "map {}",
                conntrack_ebpf::RING_MAP
            )));
        }
        let mut names: Vec<String> = obj.programs.keys().cloned().collect();
        names.sort();
        Ok(names)
    }

    #[test]
    fn the_build_embeds_the_conntrack_programs_and_ring() {
        let programs = object_programs().expect("object parses and has the ring map");
        let names = PROBES
            .iter()
            .map(|(p, _)| *p)
            .chain(TRACING.iter().map(|(p, _, _)| *p))
            .chain([UPDATE_FENTRY, UPDATE_KPROBE]);
        for program in names {
            assert!(
                programs.iter().any(|p| p == program),
                "{program} missing from {programs:?}"
            );
        }
    }

    #[test]
    fn no_program_calls_a_byte_loop() {
        // BPF has no memset or memcpy of its own: the compiler calls
        // compiler-builtins' byte-at-a-time loops for a `write_bytes` or a
        // large struct copy. Zeroing one record that way cost the kernel
        // ~2 µs of a new flow's ~62 µs (the overhead bench, 6.12 guest), so
        // no program may make a BPF-to-BPF call at all (they need none).
        const CALL: u8 = 0x85; // BPF_JMP | BPF_CALL
        const PSEUDO_CALL: u8 = 1; // src_reg of a call to a BPF function
        let obj = Object::parse(EBPF_OBJECT).expect("object parses");
        let mut callers = Vec::new();
        for program in obj.programs.keys() {
            let function = obj
                .functions
                .values()
                .find(|f| &f.name == program)
                .unwrap_or_else(|| panic!("no code for {program}"));
            assert!(function.instructions.len() > 10, "{program}");
            if function
                .instructions
                .iter()
                .any(|i| i.code == CALL && i.src_reg() == PSEUDO_CALL)
            {
                callers.push(program.clone());
            }
        }
        assert!(callers.is_empty(), "BPF-to-BPF calls in {callers:?}");
    }

    #[test]
    fn privilege_is_told_by_the_errno_not_the_text() {
        let eperm = io::Error::from_raw_os_error(libc::EPERM);
        assert!(matches!(
            refused(&eperm, "x".into()),
            TracerError::Privilege(_)
        ));
        let wrapped = aya::maps::MapError::CreateError {
            name: "CT_EVENTS".into(),
            io_error: io::Error::from_raw_os_error(libc::EACCES),
        };
        assert!(matches!(
            refused(&wrapped, wrapped.to_string()),
            TracerError::Privilege(_)
        ));
        let einval = io::Error::from_raw_os_error(libc::EINVAL);
        assert!(matches!(refused(&einval, "x".into()), TracerError::Load(_)));
    }

    #[test]
    fn hz_is_a_kernel_tick_rate() {
        assert!(
            [100, 250, 300, 1000].contains(&kernel_hz()),
            "{}",
            kernel_hz()
        );
    }

    #[test]
    fn this_host_says_why_ebpf_cannot_run() {
        // The host kernel has CONFIG_KPROBES off (see ENVIRONMENT.md); a
        // kernel with kprobes gets past this check and fails or succeeds
        // further on, but never panics.
        match Tracer::start(TracerConfig {
            ring_size: 1 << 20,
            filter_netns: 0,
            hook: Hook::Auto,
            updates: Updates::Off,
        }) {
            Err(TracerError::NoKprobes) => assert!(!Path::new(KPROBE_PMU).exists()),
            Err(e) => assert!(!e.to_string().is_empty()),
            Ok(_) => assert!(Path::new(KPROBE_PMU).exists()),
        }
    }
}
