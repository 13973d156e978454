//! Property-based fuzzing of every decoder that reads bytes from the kernel
//! or the user: ctnetlink messages, event datagrams, ring buffer records,
//! BTF, and the command line. Each must return an error or a value for any
//! input, never panic. Bounded: a few thousand cases each, seconds in all
//! (the test command runs them).
use ctscope::{
    btf::KernelBtf,
    format::EventKind,
    netlink::{
        Conntrack,
        codec::{decode_conntrack, decode_stats_cpu, decode_stats_global},
        events::{Batch, decode_datagram},
    },
    tracer::{decode_record, to_conntrack},
};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 4000,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Bytes shaped like netlink attributes (plausible lengths and kinds) mixed
/// with raw noise, so the fuzzer reaches the nested decoders.
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

proptest! {
    #![proptest_config(config())]

    #[test]
    fn ctnetlink_entries(bytes in nla_like(), family in any::<u8>()) {
        let mut ct = Conntrack::default();
        let _ = decode_conntrack(family, &bytes, &mut ct);
        let _ = decode_stats_cpu(&bytes);
        let _ = decode_stats_global(&bytes);
    }

    #[test]
    fn event_datagrams(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let mut batch = Batch::default();
        let mut n = 0u64;
        decode_datagram(&bytes, &mut Conntrack::default(), &mut batch, &mut |_, _, _| n += 1);
        prop_assert_eq!(n, batch.events);
    }

    #[test]
    fn ring_records(bytes in proptest::collection::vec(any::<u8>(), 0..400), hz in any::<u32>()) {
        if let Some(ev) = decode_record(&bytes) {
            let mut ct = Conntrack::default();
            to_conntrack(&ev, EventKind::Destroy, hz, &mut ct);
            let mut out = Vec::new();
            ctscope::format::write_text(&mut out, &ct, &Default::default(), Some(EventKind::Destroy), 0);
            prop_assert!(out.ends_with(b"\n"));
        }
    }

    #[test]
    fn btf_blobs(mut bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        // Half the cases start with a valid header so the type walk runs.
        if bytes.len() >= 24 && bytes[0] % 2 == 0 {
            bytes[0] = 0x9f;
            bytes[1] = 0xeb;
            bytes[4..8].copy_from_slice(&24u32.to_le_bytes());
            bytes[8..12].copy_from_slice(&0u32.to_le_bytes());
        }
        let mut btf = KernelBtf::default();
        let _ = btf.parse(&bytes, "fuzz", &[]);
        let _ = btf.conntrack_offsets();
    }

    #[test]
    fn command_lines(args in proptest::collection::vec(
        prop_oneof![
            Just("list".to_string()), Just("-L".to_string()), Just("-s".to_string()),
            Just("-m".to_string()), Just("-o".to_string()), Just("-p".to_string()),
            Just("--sport".to_string()), Just("-u".to_string()), Just("-n".to_string()),
            Just("-G".to_string()), Just("-w".to_string()), Just("events".to_string()),
            Just("-e".to_string()), Just("--ring-size".to_string()),
            "[ -~]{0,12}",
        ],
        0..6,
    )) {
        // Only parsing: every bad combination must be a usage error (exit 2)
        // or a parse that reaches a command; never a panic. Commands that
        // would touch the kernel are not run here: `--help` style exits
        // and parse errors return before any socket is opened.
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
    }
}
