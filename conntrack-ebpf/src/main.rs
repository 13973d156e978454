//! ctscope's eBPF programs. Each hooks one kernel function of nf_conntrack and
//! writes `CtEvent` records into the `CT_EVENTS` ring buffer.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::{kprobe, map},
    maps::RingBuf,
    programs::ProbeContext,
};
use conntrack_ebpf::{CtEvent, EVENT_DESTROY};

/// Ring buffer shared with user space; resized at load time by `--ring-size`.
#[map(name = "CT_EVENTS")]
static CT_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 24, 0);

/// `bool nf_ct_delete(struct nf_conn *ct, u32 portid, int report)`: every
/// removal (gc timeout, early drop, ctnetlink delete and flush, netns exit).
#[kprobe]
pub fn nf_ct_delete(ctx: ProbeContext) -> u32 {
    let Some(ct) = ctx.arg::<u64>(0) else {
        return 0;
    };
    if let Some(mut slot) = CT_EVENTS.reserve::<CtEvent>(0) {
        // SAFETY: helpers without preconditions.
        let (ktime_ns, cpu) = unsafe { (bpf_ktime_get_ns(), bpf_get_smp_processor_id()) };
        slot.write(CtEvent {
            ktime_ns,
            ct_ptr: ct,
            cpu,
            event: EVENT_DESTROY,
            ..CtEvent::default()
        });
        slot.submit(0);
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
