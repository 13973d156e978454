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
//! global `OFFSETS`: no offset is compiled in.
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
    ABSENT, CtEvent, CtTuple, EVENT_DESTROY, EVENT_NEW, EVENT_UPDATE, FLAG_COUNTERS,
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

#[inline(always)]
fn offsets() -> Offsets {
    // SAFETY: a plain read of our own global; volatile so the compiler keeps
    // the load (user space rewrites the value at load time).
    unsafe { core::ptr::read_volatile(&OFFSETS) }
}

#[inline(always)]
fn read<T>(base: u64, off: u32) -> Option<T> {
    if off == ABSENT || base == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address; a fault is an error.
    unsafe { bpf_probe_read_kernel((base + u64::from(off)) as *const T).ok() }
}

/// Bytes of `struct nf_conn` copied per record (user space checks that
/// every field the programs use lies below `Offsets::ct_size` <= this).
const CT_BYTES: u32 = 512;
/// Bytes of `struct nf_ct_ext` copied for a DESTROY: its u8 offsets reach
/// 255, and the counters behind the last one take 32 more.
const EXT_BYTES: u32 = 320;
/// Where the extension bytes start in the scratch buffer.
const EXT_AT: usize = CT_BYTES as usize;

/// Per-CPU copy of the entry (and of its extensions for a DESTROY): one
/// kernel read per struct instead of one per field. Every field offset is
/// masked into the buffer, so the verifier sees bounded accesses; the
/// slack after the extensions keeps a masked read of the widest field in
/// bounds.
#[map(name = "CT_SCRATCH")]
static CT_SCRATCH: PerCpuArray<[u8; 1024]> = PerCpuArray::with_max_entries(1, 0);

/// A field of the copied entry at byte offset `off` (0 when absent), in
/// one load of its width (user space checks the offsets are naturally
/// aligned, as the kernel lays them out; the scratch buffer is 8-aligned).
#[inline(always)]
fn field<T: Copy + Default>(buf: *const u8, off: u32) -> T {
    if off == ABSENT {
        return T::default();
    }
    // SAFETY: (off & 0x1ff) + size_of::<T>() <= 511 + 32 < 1024, and
    // `off` is a multiple of T's alignment (see above).
    unsafe { core::ptr::read(buf.add((off & 0x1ff) as usize).cast::<T>()) }
}

/// A field of the copied extension area at byte offset `off`. The
/// extension offsets the kernel hands out are aligned for their extension
/// (8 bytes for the counters and timestamps), and `EXT_AT` is too.
#[inline(always)]
fn ext_field<T: Copy + Default>(buf: *const u8, off: u32) -> T {
    // SAFETY: EXT_AT + (off & 0xff) + size_of::<T>() <= 512 + 255 + 32 < 1024.
    unsafe { core::ptr::read(buf.add(EXT_AT + (off & 0xff) as usize).cast::<T>()) }
}

/// Fills one tuple of the record from the copied entry. Returns (l3num,
/// protonum).
#[inline(always)]
fn fill_tuple(o: &Offsets, buf: *const u8, dir: u32, t: *mut CtTuple) -> (u16, u8) {
    let base = o.ct_tuplehash + dir * o.tuplehash_size + o.hash_tuple;
    // SAFETY: t points into the reserved record (8-aligned), whose
    // addresses lie at offsets 0 and 16: 4-aligned, as the kernel's are.
    unsafe {
        let src: [u32; 4] = field(buf, base + o.tuple_src_u3);
        let dst: [u32; 4] = field(buf, base + o.tuple_dst_u3);
        core::ptr::write((&raw mut (*t).src).cast::<[u32; 4]>(), src);
        core::ptr::write((&raw mut (*t).dst).cast::<[u32; 4]>(), dst);
        // Ports are stored in network order.
        (*t).sport = u16::from_be(field::<u16>(buf, base + o.tuple_src_u));
        let dst_u: [u8; 2] = field(buf, base + o.tuple_dst_u);
        (*t).dport = u16::from_be_bytes(dst_u);
        (*t).icmp_type = dst_u[0];
        (*t).icmp_code = dst_u[1];
    }
    let l3 = field::<u16>(buf, base + o.tuple_src_l3num);
    let l4 = field::<u8>(buf, base + o.tuple_dst_protonum);
    (l3, l4)
}

/// Fills and submits one record for `ct`; counts a drop when the ring is
/// full. The record is written in place: it is too large for the BPF stack.
/// An entry whose status has a bit of `skip_if` is not reported;
/// `status_or` is ORed into the status it reports; `events` are an
/// UPDATE's event bits.
#[inline(always)]
fn emit(ct: u64, event: u8, status_or: u32, skip_if: u64, events: u16) {
    let o = offsets();
    let Some(scratch) = CT_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let buf = scratch.cast::<u8>();
    let len = if o.ct_size > CT_BYTES {
        CT_BYTES
    } else {
        o.ct_size
    };
    // SAFETY: buf is our per-CPU scratch of 1024 bytes, len <= 512; the
    // helper checks the kernel address. A fault leaves zeros, not the
    // previous entry's bytes.
    unsafe {
        if generated::bpf_probe_read_kernel(buf.cast(), len, ct as *const core::ffi::c_void) != 0 {
            core::ptr::write_bytes(buf, 0, CT_BYTES as usize);
        }
    }
    let status = field::<u64>(buf, o.ct_status);
    if status & skip_if != 0 {
        return;
    }
    let net = field::<u64>(buf, o.ct_net);
    let netns = read::<u32>(net, o.net_inum).unwrap_or(0);
    if o.filter_netns != 0 && netns != o.filter_netns {
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
    // SAFETY: ev is our reserved record, zeroed first, then every field set.
    unsafe {
        core::ptr::write_bytes(ev, 0, 1);
        let (l3, l4) = fill_tuple(&o, buf, 0, &raw mut (*ev).orig);
        fill_tuple(&o, buf, 1, &raw mut (*ev).reply);
        let jiffies = bpf_jiffies64();
        let deadline = field::<u32>(buf, o.ct_timeout);
        (*ev).ktime_ns = bpf_ktime_get_ns();
        (*ev).seq = seq;
        (*ev).ct_ptr = ct;
        (*ev).netns = netns;
        (*ev).status = status as u32 | status_or;
        (*ev).mark = field::<u32>(buf, o.ct_mark);
        (*ev).timeout = deadline.wrapping_sub(jiffies as u32);
        (*ev).cpu = bpf_get_smp_processor_id();
        (*ev).zone = field::<u16>(buf, o.ct_zone);
        (*ev).event = event;
        (*ev).events = events;
        (*ev).l3proto = l3 as u8;
        (*ev).l4proto = l4;
        if l4 == 6 {
            (*ev).proto_state = field::<u8>(buf, o.ct_tcp_state);
        }
        // Counters and timestamps are what a DESTROY reports (user space
        // shows neither for NEW, as ctnetlink).
        let ext = field::<u64>(buf, o.ct_ext);
        if event == EVENT_DESTROY && ext != 0 && o.ext_offset != ABSENT {
            let read = generated::bpf_probe_read_kernel(
                buf.add(EXT_AT).cast(),
                EXT_BYTES,
                ext as *const core::ffi::c_void,
            );
            if read == 0 {
                if o.ext_acct_id != ABSENT {
                    let off = ext_field::<u8>(buf, o.ext_offset + o.ext_acct_id);
                    if off != 0 {
                        (*ev).counters = ext_field(buf, u32::from(off));
                        (*ev).flags |= FLAG_COUNTERS;
                    }
                }
                if o.ext_tstamp_id != ABSENT {
                    let off = ext_field::<u8>(buf, o.ext_offset + o.ext_tstamp_id);
                    if off != 0 {
                        (*ev).start_ns = ext_field(buf, u32::from(off));
                        (*ev).stop_ns = ext_field(buf, u32::from(off) + 8);
                        (*ev).flags |= FLAG_TIMESTAMPS;
                    }
                }
            }
        }
    }
    // Wake-ups are batched: the reader drains on a short timer, and is
    // woken only once the ring holds a quarter of its size, so a burst
    // cannot fill it between two drains.
    // SAFETY: a plain read of our own global (see offsets()).
    let wake_at = unsafe { core::ptr::read_volatile(&WAKE_AT) };
    let flags = if wake_at != 0 && CT_EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= wake_at {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    slot.submit(flags as u64);
}

/// `unsigned int __nf_conntrack_confirm(struct sk_buff *skb)`: remembers the
/// skb's ct when it is not confirmed yet.
#[kprobe]
pub fn ct_confirm_entry(ctx: ProbeContext) -> u32 {
    let o = offsets();
    let Some(skb) = ctx.arg::<u64>(0) else {
        return 0;
    };
    let ct = read::<u64>(skb, o.skb_nfct).unwrap_or(0) & !7;
    if ct == 0 {
        return 0;
    }
    if read::<u64>(ct, o.ct_status).unwrap_or(IPS_CONFIRMED) & IPS_CONFIRMED != 0 {
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
    let status = read::<u64>(ct, offsets().ct_status).unwrap_or(0);
    if status & IPS_CONFIRMED != 0 && status & IPS_UNTRACKED == 0 {
        emit(ct, EVENT_NEW, 0, 0, 0);
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
        emit(ct, EVENT_NEW, 0, 0, 0);
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
        emit(ct, EVENT_DESTROY, 0, 0, 0);
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
    emit(ct, EVENT_NEW, IPS_CONFIRMED as u32, IPS_UNTRACKED, 0);
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
        emit(ct, EVENT_DESTROY, 0, 0, 0);
    }
    0
}

/// An UPDATE for the entry of `item` (a `struct nf_ct_event *`) unless
/// the bits make ctnetlink report NEW or DESTROY (those come from the
/// insert and delete hooks, which need no event cache) or are empty
/// (ctnetlink sends nothing then).
#[inline(always)]
fn update(events: u64, item: u64) {
    let events = events as u16;
    if events == 0 || events & (IPCT_NEW | IPCT_RELATED | IPCT_DESTROY) != 0 {
        return;
    }
    let ct = read::<u64>(item, offsets().event_ct).unwrap_or(0);
    if ct != 0 {
        emit(ct, EVENT_UPDATE, 0, 0, events);
    }
}

/// `int ctnetlink_conntrack_event(unsigned int events, const struct
/// nf_ct_event *item)`: the kernel delivering an entry's cached events.
#[fentry(function = "ctnetlink_conntrack_event")]
pub fn ct_update_fentry(ctx: FEntryContext) -> u32 {
    let events: u64 = ctx.arg(0);
    let item: u64 = ctx.arg(1);
    update(events, item);
    0
}

/// The same, as a kprobe.
#[kprobe]
pub fn ct_update_entry(ctx: ProbeContext) -> u32 {
    let (Some(events), Some(item)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else {
        return 0;
    };
    update(events, item);
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
