//! Replays the ring buffer records of the overhead bench's churn through
//! what `ctscope events --source ebpf -e NEW,DESTROY [-o json]` does with
//! each record (decode, event mask, filter, format, buffered write to
//! stdout, one flush per drained batch), off the ring: to count the
//! consumer's instructions per event.
//!
//! The records are what `ctchurn --proto udp --count FLOWS` makes (16
//! sockets bound to 127.11.0.1-16, ephemeral source ports, destination
//! 127.0.0.1 ports from 10000): every flow's NEW, then every flow's DESTROY
//! (the bench's flush), in batches of 1,600 (what the 100 ms drain timer
//! finds at 16,000 flows/s).
//!
//! ```text
//! cargo build --release -p conntrack-user --example replay_events
//! GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX2,-AVX,-ERMS,-FSRM,-AVX512F,-AVX512VL,-AVX_Fast_Unaligned_Load \
//!   valgrind --tool=callgrind --toggle-collect='replay_events::replay' \
//!   target/release/examples/replay_events text 20000 > /dev/shm/out
//! callgrind_annotate --inclusive=yes callgrind.out.PID
//! ```
//!
//! (The tunables make glibc pick the SSE2 memcpy and memset the guests'
//! qemu CPU has; with them, callgrind's count per event agreed with the
//! guest's to about 1 %.) In a guest under qemu -icount
//! (`cargo xtask vm-run --icount --bin target/release/examples/replay_events
//! -- sh -c 'replay_events text 50000 > /tmp/out'`), the line it prints on
//! stderr gives the time per event (2 ns an instruction): user and kernel
//! (the writes to the file), as the overhead bench counts them, less the
//! ring buffer's part.
use std::{hint::black_box, io, time::Instant};

use conntrack_ebpf::{CT_EVENT_SIZE, CtEvent, EVENT_DESTROY, EVENT_NEW};
use ctscope::{
    ebpf::record::RecordDecoder,
    filter::Filter,
    netlink::events::EventMask,
    output::{OutputOptions, Printer},
    source::Event,
};

/// Records per drain.
const BATCH: usize = 1600;
/// The guests' HZ.
const HZ: u32 = 250;

/// The records of `flows` UDP flows: NEW of each, then DESTROY of each.
fn records(flows: usize) -> Vec<[u8; CT_EVENT_SIZE]> {
    let mut out = Vec::with_capacity(2 * flows);
    for event in [EVENT_NEW, EVENT_DESTROY] {
        for i in 0..flows {
            let socket = (i % 16) as u8;
            let mut ev = CtEvent {
                ktime_ns: 1_000_000_000 + i as u64 * 62_000,
                event,
                l3proto: libc::AF_INET as u8,
                l4proto: libc::IPPROTO_UDP as u8,
                // CONFIRMED; DYING too once deleted.
                status: if event == EVENT_NEW { 0x8 } else { 0x208 },
                timeout: 3600 * HZ - (event == EVENT_DESTROY) as u32 * 5 * HZ,
                netns: 4_026_531_840,
                ..CtEvent::default()
            };
            ev.orig.src[..4].copy_from_slice(&[127, 11, 0, socket + 1]);
            ev.orig.dst[..4].copy_from_slice(&[127, 0, 0, 1]);
            ev.orig.sport = 32768 + (socket as u16) * 1637;
            ev.orig.dport = 10000 + (i / 16) as u16;
            ev.reply.src = ev.orig.dst;
            ev.reply.dst = ev.orig.src;
            ev.reply.sport = ev.orig.dport;
            ev.reply.dport = ev.orig.sport;
            let mut rec = [0u8; CT_EVENT_SIZE];
            // SAFETY: a plain-old-data record written into a buffer of its size.
            unsafe { std::ptr::write_unaligned(rec.as_mut_ptr().cast::<CtEvent>(), ev) };
            out.push(rec);
        }
    }
    out
}

/// On-CPU ns of this process so far (schedstat's first field).
fn on_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// What `events` does with every record of every batch (source::drain's
/// closure, then cmd::events' one), then the printer's flush per batch.
#[inline(never)]
fn replay(records: &[[u8; CT_EVENT_SIZE]], printer: &mut Printer, filter: &Filter) -> u64 {
    let mask = EventMask::parse("NEW,DESTROY").expect("a valid mask");
    let mut decoder = RecordDecoder::new(HZ, 1_700_000_000_000_000_000);
    let everything = filter.is_empty();
    let mut shown = 0u64;
    for batch in records.chunks(BATCH) {
        let now_ns = 1_700_000_100_000_000_000u64;
        for rec in batch {
            let Some((kind, ct, time_ns, netns)) = decoder.decode(black_box(rec)) else {
                continue;
            };
            if !mask.wants(kind) {
                continue;
            }
            let ev = Event {
                kind,
                ct,
                time_ns,
                portid: 0,
                netns: false.then_some(netns),
                delivery_ns: Some(now_ns.saturating_sub(time_ns)),
                source: "ebpf",
            };
            if !(everything || filter.matches(ev.ct)) {
                continue;
            }
            shown += 1;
            printer.event(&ev);
        }
        printer.flush();
    }
    shown
}

fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let format = args.next().unwrap_or_else(|| "text".into());
    let flows: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(20_000);
    let opts = match format.as_str() {
        "text" => OutputOptions::default(),
        other => OutputOptions::parse([other]).map_err(io::Error::other)?,
    };
    let records = records(flows);
    let mut printer = Printer::new(opts);
    let filter = Filter::default();
    let (cpu0, t0) = (on_cpu_ns(), Instant::now());
    let shown = replay(&records, &mut printer, &filter);
    let (cpu1, wall) = (on_cpu_ns(), t0.elapsed());
    printer.finish()?;
    let per_event = |ns: u128| ns as f64 / shown.max(1) as f64 / 1000.0;
    let cpu = match (cpu0, cpu1) {
        (Some(a), Some(b)) => format!("{:.3} us/event on-CPU", per_event(u128::from(b - a))),
        _ => "no schedstat".to_string(),
    };
    eprintln!(
        "replay_events: {shown} {format} events; {cpu}; {:.3} us/event wall",
        per_event(wall.as_nanos())
    );
    Ok(())
}
