//! ctscope's eBPF programs: hooks on nf_conntrack's insert and delete
//! functions that write `CtEvent` records into the `CT_EVENTS` ring buffer.
//!
//! Two sets, one chosen at start-up: an fentry on `__nf_conntrack_hash_insert`
//! and an fexit on `nf_ct_delete` (no map, no return probe: the cheapest
//! hooks), and the kprobe/kretprobe pairs, for kernels that refuse tracing
//! programs or lack the functions' BTF. UPDATE events come, when asked
//! for, from an fentry (or a kprobe) on nf_conntrack_netlink's
//! `ctnetlink_conntrack_event`: the kernel calls it with the event bits
//! it cached for an entry whether or not a ctnetlink socket listens.
//!
//! Struct offsets come from the running kernel's BTF through the load-time
//! global `OFFSETS`: no offset is compiled in. The fentry/fexit programs
//! load the entry's fields directly (BTF-typed pointers, offsets the
//! verifier knows as constants); the kprobes copy the entry once and read
//! the copy ([`Kernel`]: one record-filling code for both).
//!
//! Cost matters here (the overhead bench runs these per new flow): no
//! call of the compiler-builtins `memset`/`memcpy`, which BPF gets as byte
//! loops (zeroing one record that way cost ~900 instructions); no map
//! between entry and return on the fentry path.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_jiffies64, bpf_ktime_get_ns,
        bpf_probe_read_kernel, generated,
    },
    macros::{fentry, fexit, kprobe, kretprobe, map},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};
use conntrack_ebpf::{
    ABSENT, CT_EVENT_SIZE, CtEvent, CtTuple, EVENT_DESTROY, EVENT_NEW, EVENT_UPDATE, FLAG_COUNTERS,
    FLAG_TIMESTAMPS, IPCT_DESTROY, IPCT_NEW, IPCT_RELATED, Offsets, UNSET_OFFSETS,
};

const IPS_CONFIRMED: u64 = 1 << 3;
/// Also IPS_NAT_CLASH: an entry inserted only to resolve a NAT clash.
const IPS_UNTRACKED: u64 = 1 << 12;
const NF_ACCEPT: i32 = 1;

/// Set by user space at load time from BTF.
#[unsafe(no_mangle)]
static OFFSETS: Offsets = UNSET_OFFSETS;

/// Bytes waiting in the ring past which a record wakes the reader (a
/// quarter of the ring, set by user space at load time; 0: never).
#[unsafe(no_mangle)]
static WAKE_AT: u64 = 0;

/// Ring buffer shared with user space; resized at load time by `--ring-size`.
#[map(name = "CT_EVENTS")]
static CT_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 24, 0);

/// Records that found the ring full, per CPU.
#[map(name = "CT_DROPS")]
static CT_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU sequence numbers.
#[map(name = "CT_SEQ")]
static CT_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// ct pointer seen on entry of `__nf_conntrack_confirm`, by thread.
#[map(name = "CT_CONFIRMING")]
static CT_CONFIRMING: HashMap<u64, u64> = HashMap::with_max_entries(16384, 0);

/// ct pointer seen on entry of `nf_ct_delete`, by thread.
#[map(name = "CT_DELETING")]
static CT_DELETING: HashMap<u64, u64> = HashMap::with_max_entries(16384, 0);

/// ct pointer seen on entry of `nf_conntrack_hash_check_insert`, by thread.
#[map(name = "CT_INSERTING")]
static CT_INSERTING: HashMap<u64, u64> = HashMap::with_max_entries(16384, 0);

/// One field of `OFFSETS`, read where it is used (the verifier knows
/// its value: the global is a frozen read-only map).
macro_rules! off {
    ($field:ident) => {
        load_time(&raw const OFFSETS.$field)
    };
}

/// A load-time global's value.
#[inline(always)]
fn load_time<T: Copy>(global: *const T) -> T {
    // SAFETY: a plain read of our own global; volatile so the compiler
    // keeps the load (user space rewrites the value at load time).
    unsafe { core::ptr::read_volatile(global) }
}

#[inline(always)]
fn read<T>(base: u64, off: u32) -> Option<T> {
    if off == ABSENT || base == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address; a fault is an error.
    unsafe { bpf_probe_read_kernel((base + u64::from(off)) as *const T).ok() }
}

/// Bytes of `struct nf_conn` copied per record by the kprobes (user space
/// checks that every field the programs use lies below
/// `Offsets::ct_size` <= this).
const CT_BYTES: u32 = 512;

/// Per-CPU copy of the entry for the kprobes: one kernel read per record
/// instead of one per field. Every field offset is masked into the
/// buffer, so the verifier sees bounded accesses; the slack after the
/// copy keeps a masked read of the widest field in bounds.
#[map(name = "CT_SCRATCH")]
static CT_SCRATCH: PerCpuArray<[u8; 1024]> = PerCpuArray::with_max_entries(1, 0);

/// How a program reads the kernel's structs. Both read each field with
/// one load of its width (user space checks the offsets are naturally
/// aligned, as the kernel lays them out).
trait Kernel: Sized {
    /// A field of the entry at byte offset `off`, one every kernel has.
    fn ct<T: Copy + Default>(&self, off: u32) -> T;

    /// A field of the entry some kernels lack (0 there).
    #[inline(always)]
    fn ct_opt<T: Copy + Default>(&self, off: u32) -> T {
        if off == ABSENT {
            T::default()
        } else {
            self.ct(off)
        }
    }

    /// A field at `off` in another kernel struct the entry points to
    /// (its namespace, its extensions); 0 when unreadable.
    fn at<T: Copy + Default>(&self, ptr: u64, off: u32) -> T;
}

/// fentry/fexit: the entry is the kernel's own `struct nf_conn`, typed by
/// its BTF, so the verifier lets the program load its fields directly
/// (checking each load against the BTF layout; a fault reads 0): no copy
/// and no helper call. The offsets are constants to the verifier (a
/// frozen read-only global), as it requires of such loads.
struct Direct(u64);

impl Kernel for Direct {
    #[inline(always)]
    fn ct<T: Copy + Default>(&self, off: u32) -> T {
        self.at(self.0, off)
    }

    #[inline(always)]
    fn at<T: Copy + Default>(&self, ptr: u64, off: u32) -> T {
        // SAFETY: a BTF-typed kernel pointer at a constant offset of one
        // of its fields: the verifier checks the access and turns it into
        // a load that reads 0 on a fault (a null pointer included).
        // Volatile, so the compiler neither merges two fields' loads nor
        // splits one.
        unsafe { core::ptr::read_volatile((ptr + u64::from(off)) as *const T) }
    }
}

/// kprobes: an untyped address, so one `bpf_probe_read_kernel` copies the
/// entry into the per-CPU scratch buffer and fields are read from there.
struct Copied(*const u8);

impl Copied {
    /// Copies the entry at `ct`; None without the scratch map.
    #[inline(always)]
    fn of(ct: u64) -> Option<Self> {
        let buf = CT_SCRATCH.get_ptr_mut(0)?.cast::<u8>();
        let size = off!(ct_size);
        let len = if size > CT_BYTES { CT_BYTES } else { size };
        // SAFETY: buf is our per-CPU scratch of 1024 bytes, len <= 512;
        // the helper checks the kernel address, and on a fault zeroes the
        // buffer: no previous entry's bytes are reported.
        unsafe {
            generated::bpf_probe_read_kernel(buf.cast(), len, ct as *const core::ffi::c_void);
        }
        Some(Self(buf))
    }
}

impl Kernel for Copied {
    #[inline(always)]
    fn ct<T: Copy + Default>(&self, off: u32) -> T {
        // SAFETY: (off & 0x1ff) + size_of::<T>() <= 511 + 8 < 1024, and
        // `off` is a multiple of T's alignment, as is the buffer's start.
        unsafe { core::ptr::read(self.0.add((off & 0x1ff) as usize).cast::<T>()) }
    }

    #[inline(always)]
    fn at<T: Copy + Default>(&self, ptr: u64, off: u32) -> T {
        read(ptr, off).unwrap_or_default()
    }
}

/// Fills one tuple of the record from the entry. Returns (l3num,
/// protonum).
#[inline(always)]
fn fill_tuple<K: Kernel>(k: &K, dir: u32, t: *mut CtTuple) -> (u16, u8) {
    let base = off!(ct_tuplehash) + dir * off!(tuplehash_size) + off!(hash_tuple);
    let word = |at: u32, i: u32| k.ct::<u32>(at + 4 * i);
    let (s, d) = (base + off!(tuple_src_u3), base + off!(tuple_dst_u3));
    let src = [word(s, 0), word(s, 1), word(s, 2), word(s, 3)];
    let dst = [word(d, 0), word(d, 1), word(d, 2), word(d, 3)];
    let sport = k.ct::<u16>(base + off!(tuple_src_u));
    let dst_u = k.ct::<u16>(base + off!(tuple_dst_u)).to_ne_bytes();
    // SAFETY: t points into the reserved record (8-aligned), whose
    // addresses lie at offsets 0 and 16: 4-aligned.
    unsafe {
        core::ptr::write((&raw mut (*t).src).cast::<[u32; 4]>(), src);
        core::ptr::write((&raw mut (*t).dst).cast::<[u32; 4]>(), dst);
        // Ports are stored in network order.
        (*t).sport = u16::from_be(sport);
        (*t).dport = u16::from_be_bytes(dst_u);
        (*t).icmp_type = dst_u[0];
        (*t).icmp_code = dst_u[1];
    }
    let l3 = k.ct::<u16>(base + off!(tuple_src_l3num));
    let l4 = k.ct::<u8>(base + off!(tuple_dst_protonum));
    (l3, l4)
}

/// Copies `len` bytes of the entry's extension `id` (its extension area
/// at `ext`) to `dst`: false when the entry or the kernel has no such
/// extension, or it cannot be read. Where an extension lies is the
/// kernel's choice, known only at run time: the helper reads there, for
/// both kinds of program.
#[inline(always)]
fn copy_ext<K: Kernel>(k: &K, ext: u64, id: u32, dst: *mut core::ffi::c_void, len: u32) -> bool {
    let offsets = off!(ext_offset);
    if ext == 0 || offsets == ABSENT || id == ABSENT {
        return false;
    }
    let at = k.at::<u8>(ext, offsets + id);
    // SAFETY: dst is `len` bytes of the reserved record; the helper checks
    // the kernel address (and zeroes dst when it cannot read it).
    at != 0
        && unsafe {
            generated::bpf_probe_read_kernel(
                dst,
                len,
                (ext + u64::from(at)) as *const core::ffi::c_void,
            )
        } == 0
}

/// Fills and submits one record for the entry `ct` read through `k`;
/// counts a drop when the ring is full. The record is written in place:
/// it is too large for the BPF stack. An entry whose status has a bit of
/// `skip_if` is not reported; `status_or` is ORed into the status it
/// reports; `events` are an UPDATE's event bits.
#[inline(always)]
fn emit<K: Kernel>(k: &K, ct: u64, event: u8, status_or: u32, skip_if: u64, events: u16) {
    let status = k.ct::<u64>(off!(ct_status));
    if status & skip_if != 0 {
        return;
    }
    let net = k.ct::<u64>(off!(ct_net));
    let netns = k.at::<u32>(net, off!(net_inum));
    let only = off!(filter_netns);
    if only != 0 && netns != only {
        return;
    }
    let Some(mut slot) = CT_EVENTS.reserve::<CtEvent>(0) else {
        if let Some(drops) = CT_DROPS.get_ptr_mut(0) {
            // SAFETY: per-CPU slot, only this CPU writes it.
            unsafe { *drops += 1 };
        }
        return;
    };
    let ev: *mut CtEvent = slot.as_mut_ptr();
    let mut seq = 0;
    if let Some(s) = CT_SEQ.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU writes it.
        unsafe {
            *s += 1;
            seq = *s;
        }
    }
    // SAFETY: ev is our reserved record (8-aligned, CT_EVENT_SIZE bytes),
    // zeroed first, then its fields set.
    unsafe {
        // Word by word: `write_bytes` would call the byte-at-a-time memset
        // BPF gets from compiler-builtins (~900 instructions a record).
        // Volatile, so the compiler cannot turn the loop back into one.
        for i in 0..CT_EVENT_SIZE / 8 {
            core::ptr::write_volatile(ev.cast::<u64>().add(i), 0);
        }
        let (l3, l4) = fill_tuple(k, 0, &raw mut (*ev).orig);
        fill_tuple(k, 1, &raw mut (*ev).reply);
        let jiffies = bpf_jiffies64();
        let deadline = k.ct::<u32>(off!(ct_timeout));
        (*ev).ktime_ns = bpf_ktime_get_ns();
        (*ev).seq = seq;
        (*ev).ct_ptr = ct;
        (*ev).netns = netns;
        (*ev).status = status as u32 | status_or;
        (*ev).mark = k.ct_opt::<u32>(off!(ct_mark));
        (*ev).timeout = deadline.wrapping_sub(jiffies as u32);
        (*ev).cpu = bpf_get_smp_processor_id();
        (*ev).zone = k.ct_opt::<u16>(off!(ct_zone));
        (*ev).event = event;
        (*ev).events = events;
        (*ev).l3proto = l3 as u8;
        (*ev).l4proto = l4;
        if l4 == 6 {
            (*ev).proto_state = k.ct_opt::<u8>(off!(ct_tcp_state));
        }
        // Counters and timestamps are what a DESTROY reports (user space
        // shows neither for NEW, as ctnetlink).
        if event == EVENT_DESTROY {
            let ext = k.ct::<u64>(off!(ct_ext));
            if copy_ext(
                k,
                ext,
                off!(ext_acct_id),
                (&raw mut (*ev).counters).cast(),
                32,
            ) {
                (*ev).flags |= FLAG_COUNTERS;
            }
            // The extension's start and stop, into the record's start_ns
            // and stop_ns (adjacent, as in the kernel).
            if copy_ext(
                k,
                ext,
                off!(ext_tstamp_id),
                (&raw mut (*ev).start_ns).cast(),
                16,
            ) {
                (*ev).flags |= FLAG_TIMESTAMPS;
            }
        }
    }
    // Wake-ups are batched: the reader drains on a short timer, and is
    // woken only once the ring holds a quarter of its size, so a burst
    // cannot fill it between two drains.
    let wake_at = load_time(&raw const WAKE_AT);
    let flags = if wake_at != 0 && CT_EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= wake_at {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    slot.submit(flags as u64);
}

/// A record of the entry at `ct` for the kprobes, through a copy.
#[inline(always)]
fn emit_copied(ct: u64, event: u8, events: u16) {
    if let Some(k) = Copied::of(ct) {
        emit(&k, ct, event, 0, 0, events);
    }
}

/// `unsigned int __nf_conntrack_confirm(struct sk_buff *skb)`: remembers the
/// skb's ct when it is not confirmed yet.
#[kprobe]
pub fn ct_confirm_entry(ctx: ProbeContext) -> u32 {
    let Some(skb) = ctx.arg::<u64>(0) else {
        return 0;
    };
    let ct = read::<u64>(skb, off!(skb_nfct)).unwrap_or(0) & !7;
    if ct == 0 {
        return 0;
    }
    if read::<u64>(ct, off!(ct_status)).unwrap_or(IPS_CONFIRMED) & IPS_CONFIRMED != 0 {
        return 0;
    }
    let tid = bpf_get_current_pid_tgid();
    let _ = CT_CONFIRMING.insert(&tid, &ct, 0);
    0
}

/// Return of `__nf_conntrack_confirm`: NEW when it accepted and the entry is
/// now confirmed (since 6.16 / 6.12.40 / 6.6.100 / 6.1.147 IPS_CONFIRMED is
/// set after the hash insert, still before the return) and is not a
/// NAT-clash entry.
#[kretprobe]
pub fn ct_confirm_exit(ctx: RetProbeContext) -> u32 {
    let tid = bpf_get_current_pid_tgid();
    let Some(ct) = CT_CONFIRMING.get_ptr(&tid).map(|p| unsafe { *p }) else {
        return 0;
    };
    let _ = CT_CONFIRMING.remove(&tid);
    let ret: i32 = ctx.ret();
    if ret != NF_ACCEPT {
        return 0;
    }
    let status = read::<u64>(ct, off!(ct_status)).unwrap_or(0);
    if status & IPS_CONFIRMED != 0 && status & IPS_UNTRACKED == 0 {
        emit_copied(ct, EVENT_NEW, 0);
    }
    0
}

/// `int nf_conntrack_hash_check_insert(struct nf_conn *ct)`: entries created
/// through ctnetlink (conntrack -I) or the kfunc.
#[kprobe]
pub fn ct_insert_entry(ctx: ProbeContext) -> u32 {
    let Some(ct) = ctx.arg::<u64>(0) else {
        return 0;
    };
    let tid = bpf_get_current_pid_tgid();
    let _ = CT_INSERTING.insert(&tid, &ct, 0);
    0
}

/// Return of `nf_conntrack_hash_check_insert`: NEW when it returned 0.
#[kretprobe]
pub fn ct_insert_exit(ctx: RetProbeContext) -> u32 {
    let tid = bpf_get_current_pid_tgid();
    let Some(ct) = CT_INSERTING.get_ptr(&tid).map(|p| unsafe { *p }) else {
        return 0;
    };
    let _ = CT_INSERTING.remove(&tid);
    let ret: i32 = ctx.ret();
    if ret == 0 {
        emit_copied(ct, EVENT_NEW, 0);
    }
    0
}

/// `bool nf_ct_delete(struct nf_conn *ct, u32 portid, int report)`: every
/// removal (gc timeout, early drop, ctnetlink delete and flush, netns exit).
#[kprobe]
pub fn ct_delete_entry(ctx: ProbeContext) -> u32 {
    let Some(ct) = ctx.arg::<u64>(0) else {
        return 0;
    };
    let tid = bpf_get_current_pid_tgid();
    let _ = CT_DELETING.insert(&tid, &ct, 0);
    0
}

/// Return of `nf_ct_delete`: true only for the call that marked the entry
/// dying, so each entry gives one DESTROY, with its final counters.
#[kretprobe]
pub fn ct_delete_exit(ctx: RetProbeContext) -> u32 {
    let tid = bpf_get_current_pid_tgid();
    let Some(ct) = CT_DELETING.get_ptr(&tid).map(|p| unsafe { *p }) else {
        return 0;
    };
    let _ = CT_DELETING.remove(&tid);
    let removed: u8 = ctx.ret();
    if removed != 0 {
        emit_copied(ct, EVENT_DESTROY, 0);
    }
    0
}

/// `static void __nf_conntrack_hash_insert(struct nf_conn *ct, ...)`: the
/// one place both confirmation and ctnetlink/kfunc inserts put an entry in
/// the table (NAT-clash entries are inserted elsewhere, and are not
/// reported, as with ctnetlink). The timeout is already a deadline here;
/// IPS_CONFIRMED is set before or just after the insert depending on the
/// kernel, so a NEW record always carries it.
#[fentry(function = "__nf_conntrack_hash_insert")]
pub fn ct_insert_fentry(ctx: FEntryContext) -> u32 {
    let ct: u64 = ctx.arg(0);
    emit(
        &Direct(ct),
        ct,
        EVENT_NEW,
        IPS_CONFIRMED as u32,
        IPS_UNTRACKED,
        0,
    );
    0
}

/// Return of `bool nf_ct_delete(struct nf_conn *ct, u32 portid, int
/// report)`: true only for the call that marked the entry dying. fexit sees
/// the arguments and, after them, the return value.
#[fexit(function = "nf_ct_delete")]
pub fn ct_delete_fexit(ctx: FExitContext) -> u32 {
    let ct: u64 = ctx.arg(0);
    let removed: u64 = ctx.arg(3);
    if removed & 0xff != 0 {
        emit(&Direct(ct), ct, EVENT_DESTROY, 0, 0, 0);
    }
    0
}

/// The event bits of an UPDATE, or None when the bits make ctnetlink
/// report NEW or DESTROY (those come from the insert and delete hooks,
/// which need no event cache) or are empty (ctnetlink sends nothing then).
#[inline(always)]
fn update_bits(events: u64) -> Option<u16> {
    let events = events as u16;
    (events != 0 && events & (IPCT_NEW | IPCT_RELATED | IPCT_DESTROY) == 0).then_some(events)
}

/// `int ctnetlink_conntrack_event(unsigned int events, const struct
/// nf_ct_event *item)`: the kernel delivering an entry's cached events.
#[fentry(function = "ctnetlink_conntrack_event")]
pub fn ct_update_fentry(ctx: FEntryContext) -> u32 {
    let Some(events) = update_bits(ctx.arg(0)) else {
        return 0;
    };
    let item: u64 = ctx.arg(1);
    let ct = Direct(item).ct_opt::<u64>(off!(event_ct));
    if ct != 0 {
        emit(&Direct(ct), ct, EVENT_UPDATE, 0, 0, events);
    }
    0
}

/// The same, as a kprobe.
#[kprobe]
pub fn ct_update_entry(ctx: ProbeContext) -> u32 {
    let (Some(events), Some(item)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else {
        return 0;
    };
    let Some(events) = update_bits(events) else {
        return 0;
    };
    let ct = read::<u64>(item, off!(event_ct)).unwrap_or(0);
    if ct != 0 {
        emit_copied(ct, EVENT_UPDATE, events);
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL-compatible, so the programs may call GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
