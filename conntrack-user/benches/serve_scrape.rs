//! `ctscope serve` at 1,000,000 entries: what the table's census adds per
//! entry, the feeder's snapshot (4 times a second), and whole scrapes: an
//! HTTP GET of /metrics on loopback against the real server, in the
//! Prometheus text format and in OpenMetrics, with `--top-talkers 10`.
//! The kernel's figures are fixed here (no ctnetlink), and read for real
//! in `serve/kernel-read` when the bench runs with CAP_NET_ADMIN. Run
//! with `cargo bench -p conntrack-user --bench serve_scrape`.
use std::{
    alloc::{GlobalAlloc, Layout, System},
    hint::black_box,
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use criterion::{Criterion, criterion_group, criterion_main};
use ctscope::{
    cmd::serve::http::{KernelSource, Shared, serve},
    ct::{Conntrack, Counters, EventKind, ProtoState, Tuple, ips},
    metrics::{FeedCounters, Snapshot, exposition::ExporterInfo, kernel::KernelStats},
    table::Table,
};

/// Counts live heap bytes, to measure what the census adds.
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

/// A varied entry: TCP in every state, UDP, ICMP, a few zones, 3,907
/// sources and 251 destinations.
fn entry(i: u32) -> Conntrack {
    let src = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (i >> 8)));
    let dst = IpAddr::V4(Ipv4Addr::from(0xc0a8_0000 | (i % 251)));
    let sport = (1024 + i % 60000) as u16;
    let l4 = [6, 6, 17, 1][(i % 4) as usize];
    let tuple = |src, dst, sport, dport| Tuple {
        src: Some(src),
        dst: Some(dst),
        l4proto: Some(l4),
        sport: Some(sport),
        dport: Some(dport),
        ..Tuple::default()
    };
    Conntrack {
        family: 2,
        orig: tuple(src, dst, sport, 443),
        reply: tuple(dst, src, 443, sport),
        status: Some(ips::CONFIRMED | ips::SEEN_REPLY),
        timeout: Some(i % 86400),
        mark: Some(0),
        zone: i.is_multiple_of(10).then_some((i % 7) as u16),
        id: Some(i),
        proto_state: (l4 == 6).then_some(ProtoState::Tcp((i % 10) as u8)),
        counters_orig: Some(Counters {
            packets: u64::from(i % 100),
            bytes: u64::from(i % 100_000),
        }),
        ..Conntrack::default()
    }
}

/// A table of `N` entries, counting addresses or not; its heap bytes.
fn table(talkers: bool) -> (Table, usize) {
    let entries: Vec<Conntrack> = (0..N).map(entry).collect();
    let before = LIVE.load(Ordering::Relaxed);
    let mut t = Table::new();
    if talkers {
        t.track_talkers();
    }
    let now = Instant::now();
    for (i, ct) in entries.iter().enumerate() {
        t.apply(EventKind::New, ct, now, None);
        // Some connections come and go, so the histograms hold something.
        if i.is_multiple_of(10) {
            t.apply(EventKind::Destroy, ct, now + Duration::from_secs(3), None);
            t.apply(EventKind::New, ct, now + Duration::from_secs(9), None);
        }
    }
    let bytes = LIVE.load(Ordering::Relaxed) - before;
    (t, bytes)
}

/// One `GET /metrics` (HTTP/1.0, read to the end); the body's length.
fn scrape(at: SocketAddr, accept: &str) -> usize {
    let mut s = TcpStream::connect(at).expect("connect");
    write!(
        s,
        "GET /metrics HTTP/1.0\r\nHost: bench\r\nAccept: {accept}\r\n\r\n"
    )
    .expect("request");
    let mut body = Vec::with_capacity(64 << 10);
    s.read_to_end(&mut body).expect("response");
    assert!(body.starts_with(b"HTTP/1.0 200") || body.starts_with(b"HTTP/1.1 200"));
    body.len()
}

fn bench(c: &mut Criterion) {
    let (plain, plain_bytes) = table(false);
    drop(plain);
    let (t, talker_bytes) = table(true);
    println!(
        "serve engine: {} entries, {} bytes each (heap held by the table, its census \
         included), {} with --top-talkers (3,907 sources, 251 destinations)",
        t.len(),
        plain_bytes / N as usize,
        talker_bytes / N as usize,
    );
    let mut group = c.benchmark_group("serve-1M");
    group.sample_size(20);
    group.bench_function("snapshot", |b| {
        b.iter(|| black_box(Snapshot::of(&t, FeedCounters::default(), 0)))
    });
    group.bench_function("snapshot+top-talkers-10", |b| {
        b.iter(|| black_box(Snapshot::of(&t, FeedCounters::default(), 10)))
    });
    let kernel = KernelStats {
        entries: Some(u64::from(N)),
        limit: Some(1 << 21),
        stats: vec![("found", 1), ("insert", 2), ("insert_failed", 3)],
    };
    let info = ExporterInfo {
        source: "netlink",
        requested: "auto",
        rcvbuf: Some(256 << 20),
        ..ExporterInfo::default()
    };
    let shared = Arc::new(Shared::new(info, KernelSource::Fixed(kernel)));
    shared.publish(Snapshot::of(&t, FeedCounters::default(), 10));
    shared.beat();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("listen");
    let at = listener.local_addr().expect("address");
    runtime.spawn(serve(listener, Arc::clone(&shared)));
    const PROTOBUF: &str = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited";
    println!(
        "serve scrape: {} bytes (Prometheus text), {} bytes (OpenMetrics), {} bytes (protobuf \
         with native histograms), --top-talkers 10",
        scrape(at, "text/plain"),
        scrape(at, "application/openmetrics-text; version=1.0.0"),
        scrape(at, PROTOBUF)
    );
    group.bench_function("scrape/prometheus-text", |b| {
        b.iter(|| black_box(scrape(at, "text/plain;version=0.0.4")))
    });
    group.bench_function("scrape/openmetrics", |b| {
        b.iter(|| {
            black_box(scrape(
                at,
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
            ))
        })
    });
    group.bench_function("scrape/protobuf", |b| {
        b.iter(|| black_box(scrape(at, PROTOBUF)))
    });
    group.finish();
    // The ctnetlink requests of a real scrape (the host's namespace).
    match KernelStats::read() {
        Ok(_) => {
            c.bench_function("serve/kernel-read", |b| {
                b.iter(|| black_box(KernelStats::read().expect("ctnetlink stats")))
            });
        }
        Err(e) => println!("serve/kernel-read: skipped ({e})"),
    }
    runtime.shutdown_background();
}

criterion_group!(benches, bench);
criterion_main!(benches);
