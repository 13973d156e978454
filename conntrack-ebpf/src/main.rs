//! ctscope's eBPF programs: kprobes on nf_conntrack's insert and delete
//! functions that write `CtEvent` records into the `CT_EVENTS` ring buffer.
//!
//! Struct offsets come from the running kernel's BTF through the load-time
//! global `OFFSETS`: no offset is compiled in.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_jiffies64, bpf_ktime_get_ns,
        bpf_probe_read_kernel, generated,
    },
    macros::{kprobe, kretprobe, map},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RetProbeContext},
};
use conntrack_ebpf::{
    ABSENT, CtEvent, CtTuple, EVENT_DESTROY, EVENT_NEW, FLAG_COUNTERS, FLAG_TIMESTAMPS, Offsets,
    UNSET_OFFSETS,
};

const IPS_CONFIRMED: u64 = 1 << 3;
/// Also IPS_NAT_CLASH: an entry inserted only to resolve a NAT clash.
const IPS_UNTRACKED: u64 = 1 << 12;
const NF_ACCEPT: i32 = 1;
const AF_INET: u16 = 2;

/// Set by user space at load time from BTF.
#[unsafe(no_mangle)]
static OFFSETS: Offsets = UNSET_OFFSETS;

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

/// Reads `size_of::<T>()` kernel bytes straight into `dst` (ring buffer
/// memory), leaving it as it was (zeroed) when the read faults.
#[inline(always)]
fn read_into<T>(dst: *mut T, base: u64, off: u32) {
    if off == ABSENT || base == 0 {
        return;
    }
    // SAFETY: dst points into our reserved ring buffer record; the helper
    // checks the kernel address.
    unsafe {
        generated::bpf_probe_read_kernel(
            dst.cast(),
            core::mem::size_of::<T>() as u32,
            (base + u64::from(off)) as *const core::ffi::c_void,
        );
    }
}

/// Fills one tuple of the record in place. Returns (l3num, protonum).
#[inline(always)]
fn fill_tuple(o: &Offsets, ct: u64, dir: u32, t: *mut CtTuple) -> (u16, u8) {
    let base = ct
        + u64::from(o.ct_tuplehash)
        + u64::from(dir * o.tuplehash_size)
        + u64::from(o.hash_tuple);
    // SAFETY: t points into the reserved record.
    unsafe {
        read_into(&raw mut (*t).src, base, o.tuple_src_u3);
        read_into(&raw mut (*t).dst, base, o.tuple_dst_u3);
        // Ports are stored in network order.
        (*t).sport = u16::from_be(read::<u16>(base, o.tuple_src_u).unwrap_or(0));
        let dst_u = read::<[u8; 2]>(base, o.tuple_dst_u).unwrap_or_default();
        (*t).dport = u16::from_be_bytes(dst_u);
        (*t).icmp_type = dst_u[0];
        (*t).icmp_code = dst_u[1];
    }
    let l3 = read::<u16>(base, o.tuple_src_l3num).unwrap_or(AF_INET);
    let l4 = read::<u8>(base, o.tuple_dst_protonum).unwrap_or(0);
    (l3, l4)
}

/// Fills and submits one record for `ct`; counts a drop when the ring is
/// full. The record is written in place: it is too large for the BPF stack.
#[inline(always)]
fn emit(ct: u64, event: u8) {
    let o = offsets();
    let net = read::<u64>(ct, o.ct_net).unwrap_or(0);
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
        let (l3, l4) = fill_tuple(&o, ct, 0, &raw mut (*ev).orig);
        fill_tuple(&o, ct, 1, &raw mut (*ev).reply);
        let jiffies = bpf_jiffies64();
        let deadline = read::<u32>(ct, o.ct_timeout).unwrap_or(0);
        (*ev).ktime_ns = bpf_ktime_get_ns();
        (*ev).seq = seq;
        (*ev).ct_ptr = ct;
        (*ev).netns = netns;
        (*ev).status = read::<u64>(ct, o.ct_status).unwrap_or(0) as u32;
        (*ev).mark = read::<u32>(ct, o.ct_mark).unwrap_or(0);
        (*ev).timeout = deadline.wrapping_sub(jiffies as u32);
        (*ev).cpu = bpf_get_smp_processor_id();
        (*ev).zone = read::<u16>(ct, o.ct_zone).unwrap_or(0);
        (*ev).event = event;
        (*ev).l3proto = l3 as u8;
        (*ev).l4proto = l4;
        if l4 == 6 {
            (*ev).proto_state = read::<u8>(ct, o.ct_tcp_state).unwrap_or(0);
        }
        let ext = read::<u64>(ct, o.ct_ext).unwrap_or(0);
        if ext != 0 && o.ext_offset != ABSENT {
            if o.ext_acct_id != ABSENT {
                let off = read::<u8>(ext, o.ext_offset + o.ext_acct_id).unwrap_or(0);
                if off != 0 {
                    read_into(&raw mut (*ev).counters, ext, u32::from(off));
                    (*ev).flags |= FLAG_COUNTERS;
                }
            }
            if o.ext_tstamp_id != ABSENT {
                let off = read::<u8>(ext, o.ext_offset + o.ext_tstamp_id).unwrap_or(0);
                if off != 0 {
                    read_into(&raw mut (*ev).start_ns, ext, u32::from(off));
                    read_into(&raw mut (*ev).stop_ns, ext, u32::from(off) + 8);
                    (*ev).flags |= FLAG_TIMESTAMPS;
                }
            }
        }
    }
    // Wake-ups are batched: user space polls with a short timeout.
    slot.submit(BPF_RB_NO_WAKEUP as u64);
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
        emit(ct, EVENT_NEW);
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
        emit(ct, EVENT_NEW);
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
        emit(ct, EVENT_DESTROY);
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
