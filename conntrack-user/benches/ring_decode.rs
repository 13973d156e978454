//! Ring buffer consumer throughput: decode a `CtEvent` record, turn it into
//! an entry, run a filter on it (what `ctscope events` does per record
//! before formatting). Run with `cargo bench -p conntrack-user`.
use std::hint::black_box;

use conntrack_ebpf::{CT_EVENT_SIZE, CtEvent, EVENT_NEW};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ctscope::{
    ct::{Conntrack, EventKind},
    ebpf::record::{decode_record, to_conntrack},
    filter::Filter,
    output::{
        Format, OutputOptions,
        json::{EventMeta, write_json},
        text::write_text,
    },
};

fn records(n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n * CT_EVENT_SIZE];
    for i in 0..n {
        let mut ev = CtEvent {
            event: EVENT_NEW,
            l3proto: 2,
            l4proto: 17,
            status: 0x8,
            timeout: 7500,
            ..CtEvent::default()
        };
        ev.orig.src[..4].copy_from_slice(&[10, 0, (i >> 8) as u8, i as u8]);
        ev.orig.dst[..4].copy_from_slice(&[10, 1, 0, 1]);
        ev.orig.sport = 1024 + (i % 60000) as u16;
        ev.orig.dport = 53;
        ev.reply = ev.orig;
        // SAFETY: writing a plain-old-data record into a buffer of its size.
        unsafe {
            std::ptr::write_unaligned(
                bytes[i * CT_EVENT_SIZE..].as_mut_ptr().cast::<CtEvent>(),
                ev,
            )
        };
    }
    bytes
}

fn decode_and_dispatch(c: &mut Criterion) {
    const N: usize = 4096;
    let bytes = records(N);
    let filter = Filter {
        l4proto: Some(17),
        ..Filter::default()
    };
    let mut group = c.benchmark_group("ring");
    group.throughput(Throughput::Elements(N as u64));
    group.bench_function("decode+filter", |b| {
        let mut ct = Conntrack::default();
        b.iter(|| {
            let mut matched = 0u64;
            for rec in bytes.as_chunks::<CT_EVENT_SIZE>().0 {
                if let Some(ev) = decode_record(black_box(rec)) {
                    to_conntrack(&ev, EventKind::New, 250, &mut ct);
                    matched += u64::from(filter.matches(&ct));
                }
            }
            black_box(matched)
        });
    });
    // What `ctscope events` does per record after that: the line, in
    // conntrack's text and in JSON.
    for (name, opts) in [
        ("decode+text", OutputOptions::default()),
        (
            "decode+json",
            OutputOptions {
                format: Format::Json,
                ..OutputOptions::default()
            },
        ),
    ] {
        group.bench_function(name, |b| {
            let mut ct = Conntrack::default();
            let mut out = Vec::with_capacity(N * 400);
            b.iter(|| {
                out.clear();
                for rec in bytes.as_chunks::<CT_EVENT_SIZE>().0 {
                    if let Some(ev) = decode_record(black_box(rec)) {
                        to_conntrack(&ev, EventKind::New, 250, &mut ct);
                        if opts.format == Format::Json {
                            let meta = EventMeta {
                                kind: Some(EventKind::New),
                                time_ns: Some(1),
                                source: Some("ebpf"),
                                netns: None,
                            };
                            write_json(&mut out, &ct, &opts, meta);
                        } else {
                            write_text(&mut out, &ct, &opts, Some(EventKind::New), 0);
                        }
                    }
                }
                black_box(out.len())
            });
        });
    }
    group.finish();
}

criterion_group!(benches, decode_and_dispatch);
criterion_main!(benches);
