//! The eBPF event source: loads the programs built from conntrack-ebpf with
//! offsets from the running kernel's BTF, attaches them as kprobes (the
//! functions live in the nf_conntrack module on distribution kernels, where
//! aya's fentry cannot find their BTF), and reads `CtEvent` records from the
//! ring buffer with tokio's AsyncFd.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    path::Path,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::KProbe,
};
use aya_obj::Object;
use conntrack_ebpf::{
    CT_EVENT_SIZE, CtEvent, CtTuple, EVENT_DESTROY, EVENT_NEW, FLAG_COUNTERS, FLAG_TIMESTAMPS,
};

use crate::{
    btf::{BtfError, KernelBtf},
    format::EventKind,
    netlink::{Conntrack, ProtoState, Tuple, codec::Counters},
};

/// The eBPF object built by aya-build from conntrack-ebpf (build.rs).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/conntrack"));

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
    /// A hooked function is not in this kernel.
    #[error("cannot attach to {function}: {reason}")]
    Attach {
        /// The kernel function.
        function: String,
        /// Why.
        reason: String,
    },
}

/// The names of the programs in the object, checked against the ABI.
pub fn object_programs() -> Result<Vec<String>, TracerError> {
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

/// The symbol to attach to: the function itself, or a compiler clone of it
/// (`.constprop.0`, `.isra.0`) when only that is in `kallsyms` (the text of
/// /proc/kallsyms).
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

/// Settings of the tracer.
#[derive(Clone, Copy, Debug)]
pub struct TracerConfig {
    /// Ring buffer bytes (a power of two, at least a page).
    pub ring_size: u32,
    /// Only this namespace's entries (0: all namespaces).
    pub filter_netns: u32,
}

/// The loaded and attached tracer.
pub struct Tracer {
    /// Keeps programs and links alive.
    _ebpf: Ebpf,
    ring: RingBuf<MapData>,
    drops: PerCpuArray<MapData, u64>,
    hz: u32,
    mono_to_real_ns: i128,
}

impl Tracer {
    /// Loads and attaches everything, or says what is missing.
    pub fn start(config: TracerConfig) -> Result<Self, TracerError> {
        if !Path::new(KPROBE_PMU).exists() {
            return Err(TracerError::NoKprobes);
        }
        let btf = KernelBtf::load_running()?;
        let mut offsets = btf.conntrack_offsets()?;
        offsets.filter_netns = config.filter_netns;
        let mut ebpf = EbpfLoader::new()
            .override_global("OFFSETS", &offsets, true)
            .map_max_entries(conntrack_ebpf::RING_MAP, config.ring_size)
            .load(EBPF_OBJECT)
            .map_err(|e| {
                let text = e.to_string();
                if text.contains("Operation not permitted") || text.contains("EPERM") {
                    TracerError::Privilege(text)
                } else {
                    TracerError::Load(text)
                }
            })?;
        // Read once for every probe: the kernel takes a while to write it
        // (over a second of a qemu TCG guest's time, 160,000 symbols).
        let kallsyms = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
        for (program, function) in PROBES {
            let symbol = attach_symbol(&kallsyms, function).ok_or_else(|| TracerError::Attach {
                function: function.to_string(),
                reason: "not in /proc/kallsyms (is nf_conntrack loaded?)".into(),
            })?;
            let probe: &mut KProbe = ebpf
                .program_mut(program)
                .ok_or_else(|| TracerError::Missing(format!("program {program}")))?
                .try_into()
                .map_err(|e| TracerError::Load(format!("{program}: {e}")))?;
            probe
                .load()
                .map_err(|e| TracerError::Load(format!("{program}: {e}")))?;
            probe.attach(&symbol, 0).map_err(|e| TracerError::Attach {
                function: symbol.clone(),
                reason: e.to_string(),
            })?;
        }
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
            _ebpf: ebpf,
            ring,
            drops,
            hz: kernel_hz(),
            mono_to_real_ns: clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC),
        })
    }

    /// Records the programs could not write because the ring was full.
    pub fn lost(&self) -> u64 {
        self.drops
            .get(&0, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }

    /// The ring buffer's fd, for polling.
    pub fn ring_fd(&self) -> i32 {
        self.ring.as_raw_fd()
    }

    /// Hands every record in the ring to `on_event` (kind, entry, wall time
    /// in ns, network namespace inode); returns how many.
    pub fn drain(&mut self, mut on_event: impl FnMut(EventKind, &Conntrack, u64, u32)) -> u64 {
        let mut n = 0;
        let mut ct = Conntrack::default();
        while let Some(item) = self.ring.next() {
            let Some(ev) = decode_record(&item) else {
                continue;
            };
            n += 1;
            let kind = if ev.event == EVENT_DESTROY {
                EventKind::Destroy
            } else if ev.event == EVENT_NEW {
                EventKind::New
            } else {
                EventKind::Update
            };
            to_conntrack(&ev, kind, self.hz, &mut ct);
            let real = i128::from(ev.ktime_ns) + self.mono_to_real_ns;
            on_event(kind, &ct, u64::try_from(real).unwrap_or(0), ev.netns);
        }
        n
    }

    /// Waits (async) until the ring has data or `timeout` passes.
    pub async fn readable(fd: &tokio::io::unix::AsyncFd<i32>, timeout: std::time::Duration) {
        if let Ok(Ok(mut guard)) = tokio::time::timeout(timeout, fd.readable()).await {
            guard.clear_ready();
        }
    }
}

/// Copies one ring buffer record out; `None` when its size is not ours.
pub fn decode_record(bytes: &[u8]) -> Option<CtEvent> {
    if bytes.len() < CT_EVENT_SIZE {
        return None;
    }
    // SAFETY: CtEvent is plain old data of CT_EVENT_SIZE bytes; the read is
    // unaligned-safe.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<CtEvent>()) })
}

fn addr(family: u8, raw: &[u8; 16]) -> IpAddr {
    if i32::from(family) == libc::AF_INET6 {
        IpAddr::V6(Ipv6Addr::from(*raw))
    } else {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    }
}

fn tuple(family: u8, l4: u8, t: &CtTuple) -> Tuple {
    let icmp = l4 == 1 || l4 == 58;
    Tuple {
        src: Some(addr(family, &t.src)),
        dst: Some(addr(family, &t.dst)),
        l4proto: Some(l4),
        sport: (!icmp).then_some(t.sport),
        dport: (!icmp).then_some(t.dport),
        icmp_type: icmp.then_some(t.icmp_type),
        icmp_code: icmp.then_some(t.icmp_code),
        icmp_id: icmp.then_some(t.sport),
        zone: None,
    }
}

/// Converts a record into the entry ctnetlink would have reported for the
/// same event (NEW: timeout and state; DESTROY: counters and timestamps).
pub fn to_conntrack(ev: &CtEvent, kind: EventKind, hz: u32, ct: &mut Conntrack) {
    let timeout = if ev.timeout > i32::MAX as u32 {
        0
    } else {
        ev.timeout / hz.max(1)
    };
    *ct = Conntrack {
        family: ev.l3proto,
        orig: tuple(ev.l3proto, ev.l4proto, &ev.orig),
        reply: tuple(ev.l3proto, ev.l4proto, &ev.reply),
        status: Some(ev.status),
        // ctnetlink leaves the timeout out of DESTROY events once it has run
        // out (ctnetlink_dump_timeout with skip_zero); so do we.
        timeout: (kind != EventKind::Destroy || timeout > 0).then_some(timeout),
        // ctnetlink events carry the mark only when it is set.
        mark: (ev.mark != 0).then_some(ev.mark),
        zone: (ev.zone != 0).then_some(ev.zone),
        proto_state: (ev.l4proto == 6).then_some(ProtoState::Tcp(ev.proto_state)),
        ..Conntrack::default()
    };
    if kind == EventKind::Destroy {
        if ev.flags & FLAG_COUNTERS != 0 {
            ct.counters_orig = Some(Counters {
                packets: ev.counters[0],
                bytes: ev.counters[1],
            });
            ct.counters_reply = Some(Counters {
                packets: ev.counters[2],
                bytes: ev.counters[3],
            });
        }
        if ev.flags & FLAG_TIMESTAMPS != 0 && ev.start_ns != 0 {
            ct.timestamp_start = Some(ev.start_ns);
            ct.timestamp_stop = (ev.stop_ns != 0).then_some(ev.stop_ns);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_symbols_prefer_the_function_then_a_clone() {
        let kallsyms = "ffffffffc0390000 t nf_ct_delete.constprop.0\t[nf_conntrack]\n\
                        ffffffffc0391000 t nf_ct_delete\t[nf_conntrack]\n\
                        ffffffffc0392000 t __nf_conntrack_confirm.isra.0\t[nf_conntrack]\n\
                        ffffffffc0393000 t nf_ct_delete_from_lists\t[nf_conntrack]\n\
                        short line\n";
        assert_eq!(
            attach_symbol(kallsyms, "nf_ct_delete").as_deref(),
            Some("nf_ct_delete")
        );
        assert_eq!(
            attach_symbol(kallsyms, "__nf_conntrack_confirm").as_deref(),
            Some("__nf_conntrack_confirm.isra.0")
        );
        assert_eq!(attach_symbol(kallsyms, "nf_ct_destroy"), None);
        assert_eq!(attach_symbol("", "nf_ct_delete"), None);
    }

    #[test]
    fn the_build_embeds_the_conntrack_programs_and_ring() {
        let programs = object_programs().expect("object parses and has the ring map");
        for (program, _) in PROBES {
            assert!(
                programs.iter().any(|p| p == program),
                "{program} missing from {programs:?}"
            );
        }
    }

    #[test]
    fn records_decode_into_entries() {
        let mut ev = CtEvent {
            event: EVENT_DESTROY,
            l3proto: 2,
            l4proto: 17,
            status: 0x8,
            timeout: 250 * 30,
            flags: FLAG_COUNTERS,
            counters: [1, 60, 2, 120],
            ..CtEvent::default()
        };
        ev.orig.src[..4].copy_from_slice(&[10, 0, 0, 1]);
        ev.orig.dst[..4].copy_from_slice(&[10, 0, 0, 2]);
        ev.orig.sport = 1000;
        ev.orig.dport = 53;
        let mut bytes = vec![0u8; CT_EVENT_SIZE];
        // SAFETY: writing a POD record into a buffer of its size.
        unsafe { std::ptr::write_unaligned(bytes.as_mut_ptr().cast::<CtEvent>(), ev) };
        let back = decode_record(&bytes).expect("decodes");
        assert_eq!(back, ev);
        assert!(decode_record(&bytes[..CT_EVENT_SIZE - 1]).is_none());
        let mut ct = Conntrack::default();
        to_conntrack(&back, EventKind::Destroy, 250, &mut ct);
        assert_eq!(ct.timeout, Some(30));
        assert_eq!(ct.orig.src, Some("10.0.0.1".parse().expect("addr")));
        assert_eq!(ct.orig.dport, Some(53));
        assert_eq!(
            ct.counters_reply,
            Some(Counters {
                packets: 2,
                bytes: 120
            })
        );
        // An expired entry's DESTROY has no timeout, as ctnetlink's.
        let mut expired = back;
        expired.timeout = u32::MAX - 5;
        to_conntrack(&expired, EventKind::Destroy, 250, &mut ct);
        assert_eq!(ct.timeout, None);
        to_conntrack(&expired, EventKind::New, 250, &mut ct);
        assert_eq!(ct.timeout, Some(0));
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
        }) {
            Err(TracerError::NoKprobes) => assert!(!Path::new(KPROBE_PMU).exists()),
            Err(e) => assert!(!e.to_string().is_empty()),
            Ok(_) => assert!(Path::new(KPROBE_PMU).exists()),
        }
    }
}
