//! Fuzzing of every decoder that reads bytes from the kernel or the user:
//! ctnetlink messages, event datagrams, statistics, ring buffer records,
//! BTF, and the command line and its filters. Each must return an error or
//! a value for any input, never panic.
//!
//! Two kinds of input, both through proptest:
//! - mutations (bit flips, overwrites, cuts, insertions, deletions) of the
//!   seed corpus in `tests/corpus/`: real messages and a real BTF cut,
//!   recorded from a kernel by `cargo run -p ctscope-e2e --bin
//!   capture-corpus -- conntrack-user/tests/corpus` (as root). Mutating real
//!   input reaches the nested decoders that noise rarely gets into;
//! - generated input: noise, attribute-shaped noise, command lines.
//!
//! Ring buffer records have no corpus: any 184 bytes are a valid record
//! (plain old data), so generated records cover them.
//!
//! Time: each target runs for `CTSCOPE_FUZZ_SECS` seconds (default 10; the
//! targets run in parallel, just under a minute of CPU in all). A failure is
//! shrunk, printed, and its seed saved under `tests/corpus/regressions/`,
//! which every later run replays first; commit that file with the fix.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::LazyLock,
    time::{Duration, Instant},
};

use conntrack_ebpf::ABSENT;
use ctscope::{
    ct::{Conntrack, EventKind},
    ebpf::{
        btf::KernelBtf,
        record::{decode_record, to_conntrack},
    },
    expect::Expect,
    netlink::{
        codec::{decode_conntrack, decode_stats_cpu, decode_stats_global, split_nfgenmsg},
        events::{Batch, decode_datagram, decode_expect_datagram},
        expect::decode_expect,
    },
    output::{expect as expect_output, text::write_text},
};
use proptest::{
    prelude::*,
    test_runner::{Config, FileFailurePersistence, TestError, TestRunner},
};

/// The seed files of one corpus directory, in name order.
fn seeds(kind: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(kind);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    paths.sort();
    let files: Vec<Vec<u8>> = paths
        .iter()
        .map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .collect();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    files
}

static CTNETLINK: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| seeds("ctnetlink"));
static EVENTS: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| seeds("events"));
static STATS: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| seeds("stats"));
static BTF: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| seeds("btf"));
static EXPECT: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| seeds("expect"));

/// Runs `test` on inputs from `strategy` until the time budget is spent.
/// Each round is a fresh proptest run (new random seed, saved failures
/// replayed first); a failure is shrunk and fails the test.
fn fuzz<S: Strategy>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let secs = std::env::var("CTSCOPE_FUZZ_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10.0f64);
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let regressions: &'static str = Box::leak(
        format!(
            "{}/tests/corpus/regressions/{name}.txt",
            env!("CARGO_MANIFEST_DIR")
        )
        .into_boxed_str(),
    );
    let mut cases = 0u64;
    loop {
        let mut runner = TestRunner::new(Config {
            cases: 2000,
            failure_persistence: Some(Box::new(FileFailurePersistence::Direct(regressions))),
            ..Config::default()
        });
        match runner.run(&strategy, &test) {
            Ok(()) => {}
            Err(TestError::Fail(why, input)) => {
                panic!("{name}: {why}\nminimal failing input: {input:?}")
            }
            Err(TestError::Abort(why)) => panic!("{name}: aborted: {why}"),
        }
        cases += 2000;
        if Instant::now() >= deadline {
            break;
        }
    }
    println!("{name}: {cases} cases in {secs} s");
}

/// One change to a seed; positions wrap around the input's length.
#[derive(Clone, Debug)]
enum Mutation {
    Flip(usize, u8),
    Set(usize, u8),
    Cut(usize),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip(at, bit)),
        (
            any::<usize>(),
            prop_oneof![Just(0u8), Just(0xff), Just(0x80), Just(4), any::<u8>()]
        )
            .prop_map(|(at, b)| Mutation::Set(at, b)),
        any::<usize>().prop_map(Mutation::Cut),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(at, b)| Mutation::Insert(at, b)),
        (any::<usize>(), 1usize..32).prop_map(|(at, n)| Mutation::Remove(at, n)),
    ]
}

fn apply(seed: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for m in mutations {
        let at = |i: usize, len: usize| if len == 0 { 0 } else { i % len };
        match m {
            Mutation::Flip(i, bit) if !v.is_empty() => {
                let i = at(*i, v.len());
                v[i] ^= 1 << bit;
            }
            Mutation::Set(i, b) if !v.is_empty() => {
                let i = at(*i, v.len());
                v[i] = *b;
            }
            Mutation::Cut(i) => v.truncate(at(*i, v.len() + 1)),
            Mutation::Insert(i, bytes) => {
                let i = at(*i, v.len() + 1);
                v.splice(i..i, bytes.iter().copied());
            }
            Mutation::Remove(i, n) if !v.is_empty() => {
                let i = at(*i, v.len());
                let end = (i + n).min(v.len());
                v.drain(i..end);
            }
            _ => {}
        }
    }
    v
}

/// A mutated copy of one of `seeds`.
fn mutated(seeds: &'static [Vec<u8>]) -> impl Strategy<Value = Vec<u8>> {
    (0..seeds.len(), proptest::collection::vec(mutation(), 1..6))
        .prop_map(move |(i, m)| apply(&seeds[i], &m))
}

/// Bytes shaped like netlink attributes (plausible lengths and kinds) mixed
/// with raw noise.
fn nla_like() -> impl Strategy<Value = Vec<u8>> {
    let attr = (
        0u16..40,
        0u16..30,
        proptest::collection::vec(any::<u8>(), 0..48),
    )
        .prop_map(|(len, kind, body)| {
            let mut v = Vec::new();
            v.extend_from_slice(&len.to_ne_bytes());
            v.extend_from_slice(&(kind | if kind % 3 == 0 { 0x8000 } else { 0 }).to_ne_bytes());
            v.extend_from_slice(&body);
            v
        });
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        proptest::collection::vec(attr, 0..12).prop_map(|v| v.concat()),
    ]
}

/// Every decoder that sees one netlink message; none may panic, and the
/// event decoder's count must agree with what it handed out.
fn decode_message(bytes: &[u8]) -> Result<(), TestCaseError> {
    let payload = bytes.get(16..).unwrap_or_default();
    if let Ok((head, body)) = split_nfgenmsg(payload) {
        let _ = decode_conntrack(head.family, body, &mut Conntrack::default());
    }
    let _ = decode_stats_cpu(payload);
    let _ = decode_stats_global(payload);
    let mut batch = Batch::default();
    let mut n = 0u64;
    decode_datagram(
        bytes,
        &mut Conntrack::default(),
        &mut batch,
        &mut |_, ct, _| {
            let mut out = Vec::new();
            write_text(&mut out, ct, &Default::default(), None, 0);
            n += 1;
        },
    );
    prop_assert_eq!(n, batch.events);
    Ok(())
}

/// The expectation decoders on one netlink message (or datagram): none may
/// panic, every decoded expectation prints, and the event decoder's count
/// agrees with what it handed out.
fn decode_expect_message(bytes: &[u8]) -> Result<(), TestCaseError> {
    let print = |exp: &Expect| {
        let mut out = Vec::new();
        expect_output::write_text(&mut out, exp, Some(EventKind::New));
        expect_output::write_xml(&mut out, exp, None, Some(0));
        expect_output::write_json(&mut out, exp, None, None);
        out
    };
    let payload = bytes.get(16..).unwrap_or_default();
    if let Ok((head, body)) = split_nfgenmsg(payload) {
        let mut exp = Expect::default();
        if decode_expect(head.family, body, &mut exp).is_ok() {
            let out = print(&exp);
            prop_assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 3);
        }
    }
    let mut batch = Batch::default();
    let mut n = 0u64;
    decode_expect_datagram(bytes, &mut Expect::default(), &mut batch, &mut |_, exp| {
        print(exp);
        n += 1;
    });
    prop_assert_eq!(n, batch.events);
    Ok(())
}

fn message_type(msg: &[u8]) -> u16 {
    u16::from_ne_bytes([msg[4], msg[5]])
}

#[test]
fn the_corpus_is_real_kernel_output_that_decodes_cleanly() {
    // Dump replies: one entry each, every protocol of the varied table.
    let mut protocols = BTreeSet::new();
    for (i, msg) in CTNETLINK.iter().enumerate() {
        let (head, body) = split_nfgenmsg(&msg[16..]).expect("nfgenmsg");
        let mut ct = Conntrack::default();
        decode_conntrack(head.family, body, &mut ct)
            .unwrap_or_else(|e| panic!("ctnetlink seed {i}: {e}"));
        assert!(
            ct.orig.src.is_some() && ct.reply.dst.is_some(),
            "seed {i}: {ct:?}"
        );
        protocols.insert(ct.orig.l4proto.expect("l4proto"));
    }
    for proto in [1, 6, 17, 47, 58, 132] {
        assert!(
            protocols.contains(&proto),
            "no protocol {proto} in {protocols:?}"
        );
    }
    // Event datagrams: every event decodes, and all three kinds occur.
    let mut kinds = BTreeSet::new();
    for (i, datagram) in EVENTS.iter().enumerate() {
        let mut batch = Batch::default();
        decode_datagram(
            datagram,
            &mut Conntrack::default(),
            &mut batch,
            &mut |kind, _, _| {
                kinds.insert(format!("{kind:?}"));
            },
        );
        assert!(
            batch.events >= 1 && batch.malformed == 0,
            "event seed {i}: {batch:?}"
        );
    }
    for kind in [EventKind::New, EventKind::Update, EventKind::Destroy] {
        assert!(
            kinds.contains(&format!("{kind:?}")),
            "no {kind:?} in {kinds:?}"
        );
    }
    // Statistics: a per-CPU reply and a global one.
    let (mut cpu, mut global) = (0, 0);
    for msg in STATS.iter() {
        match message_type(msg) & 0xff {
            4 => {
                let stats = decode_stats_cpu(&msg[16..]).expect("per-CPU stats");
                assert!(stats.counters.len() >= 8, "{stats:?}");
                cpu += 1;
            }
            5 => {
                let (entries, max) = decode_stats_global(&msg[16..]).expect("global stats");
                assert!(entries.is_some() && max.is_some_and(|m| m > 0));
                global += 1;
            }
            t => panic!("stats seed of message type {t}"),
        }
    }
    assert!(cpu >= 1 && global == 1, "{cpu} per-CPU, {global} global");
    // Expectations: events of both kinds, IPv4 and IPv6, each with its
    // master, mask and helper; and a per-CPU statistics reply (which the
    // kernel sends as a ctnetlink message, subsystem 1).
    let (mut exp_kinds, mut families, mut exp_stats) = (BTreeSet::new(), BTreeSet::new(), 0);
    for (i, msg) in EXPECT.iter().enumerate() {
        if message_type(msg) == 0x0103 {
            let stats = decode_stats_cpu(&msg[16..]).expect("expectation stats");
            assert_eq!(stats.counters.len(), 3, "{stats:?}");
            exp_stats += 1;
            continue;
        }
        let mut batch = Batch::default();
        decode_expect_datagram(msg, &mut Expect::default(), &mut batch, &mut |kind, exp| {
            exp_kinds.insert(format!("{kind:?}"));
            families.insert(exp.family);
            assert!(
                exp.master.src.is_some() && exp.mask.dst.is_some() && exp.helper.is_some(),
                "expect seed {i}: {exp:?}"
            );
        });
        assert!(
            batch.events == 1 && batch.malformed == 0,
            "expect seed {i}: {batch:?}"
        );
    }
    assert!(
        exp_kinds.len() == 2 && families.len() == 2 && exp_stats == 1,
        "{exp_kinds:?} {families:?} {exp_stats}"
    );
    // BTF: the cut holds every offset the programs need, laid out as in
    // the kernel (the tuple hashes follow each other, the reply's after
    // the original's).
    for blob in BTF.iter() {
        let mut btf = KernelBtf::default();
        btf.parse(blob, "corpus").expect("the BTF cut parses");
        let o = btf.conntrack_offsets().expect("every offset");
        assert!(o.tuplehash_size > o.hash_tuple, "{o:?}");
        assert!(o.tuple_dst_u3 > o.tuple_src_u3, "{o:?}");
        assert!(o.ct_tcp_state != ABSENT && o.ext_acct_id != ABSENT, "{o:?}");
        assert_eq!(o.event_ct, 0, "nf_ct_event starts with its entry: {o:?}");
    }
    // A cut of the kernel this runs on must agree with its whole BTF.
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let own = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
        "tests/corpus/btf/vmlinux-{}-conntrack.btf",
        release.trim()
    ));
    if let Ok(blob) = std::fs::read(&own) {
        let mut cut = KernelBtf::default();
        cut.parse(&blob, "corpus").expect("the cut parses");
        let whole = KernelBtf::load_running().expect("this kernel's BTF");
        assert_eq!(
            cut.conntrack_offsets().expect("cut offsets"),
            whole.conntrack_offsets().expect("kernel offsets"),
            "the BTF cut of {} differs from the kernel's own",
            release.trim()
        );
    }
}

#[test]
fn fuzz_ctnetlink_messages() {
    fuzz(
        "ctnetlink",
        prop_oneof![
            mutated(&CTNETLINK),
            mutated(&STATS),
            nla_like().prop_map(|v| [&[0u8; 20][..], &v].concat())
        ],
        |bytes| decode_message(&bytes),
    );
}

#[test]
fn fuzz_event_datagrams() {
    fuzz(
        "events",
        prop_oneof![
            mutated(&EVENTS),
            proptest::collection::vec(any::<u8>(), 0..1024)
        ],
        |bytes| decode_message(&bytes),
    );
}

#[test]
fn fuzz_expectations() {
    fuzz(
        "expect",
        prop_oneof![
            3 => mutated(&EXPECT),
            1 => nla_like().prop_map(|v| {
                // A NEW expectation event's header, then noise.
                let mut head = vec![0u8; 20];
                head[4..6].copy_from_slice(&0x0200u16.to_ne_bytes());
                head[6..8].copy_from_slice(&0x0600u16.to_ne_bytes());
                head[16] = 2;
                let len = (head.len() + v.len()) as u32;
                head[..4].copy_from_slice(&len.to_ne_bytes());
                [head, v].concat()
            })
        ],
        |bytes| decode_expect_message(&bytes),
    );
}

#[test]
fn fuzz_ring_records() {
    fuzz(
        "ring",
        (proptest::collection::vec(any::<u8>(), 0..400), any::<u32>()),
        |(bytes, hz)| {
            if let Some(ev) = decode_record(&bytes) {
                let mut ct = Conntrack::default();
                to_conntrack(&ev, EventKind::Destroy, hz, &mut ct);
                let mut out = Vec::new();
                write_text(
                    &mut out,
                    &ct,
                    &Default::default(),
                    Some(EventKind::Destroy),
                    0,
                );
                prop_assert!(out.ends_with(b"\n"));
            }
            Ok(())
        },
    );
}

#[test]
fn fuzz_btf() {
    let noise = proptest::collection::vec(any::<u8>(), 0..600).prop_map(|mut bytes| {
        // Half the noise starts with a valid header so the type walk runs.
        if bytes.len() >= 24 && bytes[0] % 2 == 0 {
            bytes[0] = 0x9f;
            bytes[1] = 0xeb;
            bytes[4..8].copy_from_slice(&24u32.to_le_bytes());
            bytes[8..12].copy_from_slice(&0u32.to_le_bytes());
        }
        bytes
    });
    fuzz(
        "btf",
        prop_oneof![3 => mutated(&BTF), 1 => noise],
        |bytes| {
            let mut btf = KernelBtf::default();
            let _ = btf.parse(&bytes, "fuzz");
            let _ = btf.conntrack_offsets();
            Ok(())
        },
    );
}

#[test]
fn fuzz_command_lines() {
    let word = prop_oneof![
        Just("list".to_string()),
        Just("-L".to_string()),
        Just("-s".to_string()),
        Just("-d".to_string()),
        Just("-m".to_string()),
        Just("--mark".to_string()),
        Just("-o".to_string()),
        Just("-p".to_string()),
        Just("--sport".to_string()),
        Just("-u".to_string()),
        Just("-n".to_string()),
        Just("-G".to_string()),
        Just("-w".to_string()),
        Just("events".to_string()),
        Just("top".to_string()),
        Just("-e".to_string()),
        Just("--ring-size".to_string()),
        Just("10.0.0.0/8".to_string()),
        Just("0x10/0xff".to_string()),
        Just("tcp".to_string()),
        // Every numeric flag, with values at and past the edges of their
        // types (a huge --duration once panicked converting to Duration).
        Just("--duration".to_string()),
        Just("--count".to_string()),
        Just("-b".to_string()),
        Just("--resync".to_string()),
        Just("--refresh".to_string()),
        Just("--limit".to_string()),
        Just("profile".to_string()),
        Just("--top".to_string()),
        Just("--icmp-type".to_string()),
        Just("--icmp-id".to_string()),
        Just("--zone".to_string()),
        Just("--orig-zone".to_string()),
        Just("--dport".to_string()),
        Just("expect".to_string()),
        Just("dying".to_string()),
        Just("-I".to_string()),
        Just("--tuple-src".to_string()),
        Just("--tuple-port-dst".to_string()),
        Just("--mask-src".to_string()),
        prop_oneof![
            Just("1e99".to_string()),
            Just("1e19".to_string()),
            Just("18446744073709551615".to_string()),
            Just("18446744073709551616".to_string()),
            Just("4294967296".to_string()),
            Just("65536".to_string()),
            Just("-1".to_string()),
            Just("inf".to_string()),
            Just("NaN".to_string()),
            Just("0x10".to_string()),
            any::<f64>().prop_map(|v| v.to_string()),
            any::<u64>().prop_map(|v| v.to_string()),
            any::<i128>().prop_map(|v| v.to_string()),
        ],
        "[ -~]{0,12}",
    ];
    fuzz("cli", proptest::collection::vec(word, 0..6), |args| {
        // Only parsing: every bad combination must be a usage error
        // (exit 2) or a parse that reaches a command; never a panic.
        // Commands are not run: parse errors return before any socket
        // is opened.
        let parsed = <ctscope::cli::Cli as clap::Parser>::try_parse_from(
            std::iter::once("ctscope".to_string()).chain(args.iter().cloned()),
        );
        if let Ok(cli) = parsed {
            match cli.command {
                Some(ctscope::cli::Command::List(a))
                | Some(ctscope::cli::Command::Get(a))
                | Some(ctscope::cli::Command::Delete(a)) => {
                    let _ = a.filter.to_filter();
                }
                Some(ctscope::cli::Command::Events(a)) => {
                    let _ = a.filter.to_filter();
                }
                Some(ctscope::cli::Command::Top(a)) => {
                    let _ = a.filter.to_filter();
                }
                _ => {}
            }
        }
        Ok(())
    });
}
