//! The live table at 1,000,000 entries: bytes per entry in the engine, the
//! time to apply events, and the time of one `top` frame (filter, select
//! and sort the visible rows, draw them). Run with
//! `cargo bench -p conntrack-user --bench top_frame`.
use std::{
    alloc::{GlobalAlloc, Layout, System},
    hint::black_box,
    net::{IpAddr, Ipv4Addr},
    sync::atomic::{AtomicUsize, Ordering},
    time::Instant,
};

use criterion::{Criterion, criterion_group, criterion_main};
use ctscope::{
    ct::{Conntrack, Counters, EventKind, ProtoState, Tuple, ips},
    table::Table,
    ui::{
        app::Settings,
        resolve::Resolver,
        rows::{self as top, SortKey},
        screen::{self as tui, App, Shown, Status},
        view::View,
    },
};
use ratatui::{Terminal, backend::TestBackend};

/// Counts live heap bytes, to measure what the table holds.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const N: u32 = 1_000_000;

fn entry(i: u32) -> Conntrack {
    let src = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (i >> 8)));
    let dst = IpAddr::V4(Ipv4Addr::from(0xc0a8_0000 | (i % 251)));
    let sport = (1024 + i % 60000) as u16;
    let tcp = i.is_multiple_of(3);
    let l4 = if tcp { 6 } else { 17 };
    Conntrack {
        family: 2,
        orig: Tuple {
            src: Some(src),
            dst: Some(dst),
            l4proto: Some(l4),
            sport: Some(sport),
            dport: Some(443),
            ..Tuple::default()
        },
        reply: Tuple {
            src: Some(dst),
            dst: Some(src),
            l4proto: Some(l4),
            sport: Some(443),
            dport: Some(sport),
            ..Tuple::default()
        },
        status: Some(ips::CONFIRMED | ips::SEEN_REPLY),
        timeout: Some(i % 86400),
        mark: Some(0),
        use_count: Some(1),
        id: Some(i),
        proto_state: tcp.then_some(ProtoState::Tcp(3)),
        counters_orig: Some(Counters {
            packets: u64::from(i % 100),
            bytes: u64::from(i % 100_000),
        }),
        counters_reply: Some(Counters {
            packets: 1,
            bytes: 60,
        }),
        ..Conntrack::default()
    }
}

fn bench(c: &mut Criterion) {
    let entries: Vec<Conntrack> = (0..N).map(entry).collect();
    let before = LIVE.load(Ordering::Relaxed);
    let mut table = Table::new();
    let t0 = Instant::now();
    for ct in &entries {
        table.apply(EventKind::New, ct, t0, None);
    }
    let apply_secs = t0.elapsed().as_secs_f64();
    let bytes = LIVE.load(Ordering::Relaxed) - before;
    println!(
        "engine: {} entries, {} bytes each (heap held by the table), NEW applied at {:.2} M/s",
        table.len(),
        bytes / table.len(),
        f64::from(N) / apply_secs / 1e6
    );
    drop(entries);

    let status = Status {
        source: "netlink",
        ..Status::default()
    };
    let mut term = Terminal::new(TestBackend::new(160, 50)).expect("terminal");
    for (name, sort, text) in [
        ("frame/sort-src", SortKey::Src, ""),
        ("frame/sort-bytes", SortKey::Bytes, ""),
        ("frame/text-filter", SortKey::Src, "192.168.0.7"),
    ] {
        let app = App::new(
            View {
                sort,
                text: text.to_string(),
                ..View::default()
            },
            Settings {
                counters: true,
                ..Settings::default()
            },
            Resolver::system(),
        );
        let mut group = c.benchmark_group("top-1M");
        group.sample_size(10);
        group.bench_function(name, |b| {
            b.iter(|| {
                let (rows, total) = top::select(table.entries(), &app.view, 43);
                let shown = Shown {
                    rows: &rows,
                    total,
                    totals: None,
                };
                term.draw(|f| tui::draw(f, &app, shown, &table, &status))
                    .expect("draw");
                black_box(total)
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
