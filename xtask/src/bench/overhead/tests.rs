//! Unit tests of the overhead bench: the guest's lines, the arithmetic,
//! the targets and the settings.
use std::fmt::Write as _;

use super::{transcript::lost_of, *};

/// A 6.12 guest's console, one round of 20,000 flows, as vm-run printed it
/// (before overhead.sh printed probe_sent_ns).
const REAL_612: &str = "\
SeaBIOS (version 1.16.2-debian-1.16.2-1)
Booting from ROM..   kernel 6.12.117+deb12-cloud-amd64
CTSCOPE-OVERHEAD-GUEST release=6.12.117+deb12-cloud-amd64 cpus=2 clock=timer_list cputime=schedstat buckets=65536 max=262144 pinned=1
-- [0.0 s] round 1: none
CTSCOPE-OVERHEAD-CHURN none 1 ctchurn: 20000 flows in 1.233 s (16215 flows/s)
CTSCOPE-OVERHEAD-RUN none 1 flows=20000 entries=20000 early_drop=0 drop=0 insert_failed=0 
-- [1.3 s] round 1: ebpf
CTSCOPE-OVERHEAD-CHURN ebpf 1 ctchurn: 20000 flows in 1.553 s (12879 flows/s)
CTSCOPE-OVERHEAD-LISTENER ebpf 1 ctscope v0.1.0 (conntrack-tools compatible): 40006 flow events have been shown.
CTSCOPE-OVERHEAD-RUN ebpf 1 flows=20000 entries=20003 early_drop=0 drop=0 insert_failed=0 startup_ns=508305220 ready_ns=424737974 probes=3 probe_ns=16277716 first_probe=0 cpu_ready_ns=346833620 stat_ready=33 cpu_churn_ns=437942648 stat_churn=43 cpu_total_ns=540526728 stat_total=53 new_bytes=2917941 settled_bytes=5835882 final_bytes=5835882 new=20000 destroy=20000 lines=40006
-- [6.9 s] round 1: ebpf-json
CTSCOPE-OVERHEAD-CHURN ebpf-json 1 ctchurn: 20000 flows in 1.859 s (10759 flows/s)
CTSCOPE-OVERHEAD-LISTENER ebpf-json 1 ctscope v0.1.0 (conntrack-tools compatible): 40008 flow events have been shown.
CTSCOPE-OVERHEAD-RUN ebpf-json 1 flows=20000 entries=20004 early_drop=0 drop=0 insert_failed=0 startup_ns=520297224 ready_ns=409049428 probes=4 probe_ns=21523150 first_probe=0 cpu_ready_ns=356145672 stat_ready=34 cpu_churn_ns=758493094 stat_churn=75 cpu_total_ns=1172549252 stat_total=116 new_bytes=10799664 settled_bytes=21839376 final_bytes=21839376 new=20000 destroy=20000 lines=40008
-- [15.0 s] round 1: netlink
CTSCOPE-OVERHEAD-CHURN netlink 1 ctchurn: 20000 flows in 2.094 s (9550 flows/s)
CTSCOPE-OVERHEAD-LISTENER netlink 1 ctscope v0.1.0 (conntrack-tools compatible): 40002 flow events have been shown.
CTSCOPE-OVERHEAD-RUN netlink 1 flows=20000 entries=20002 early_drop=0 drop=0 insert_failed=0 startup_ns=65119622 ready_ns=- probes=2 probe_ns=15748456 first_probe=1 cpu_ready_ns=7460876 stat_ready=0 cpu_churn_ns=806043144 stat_churn=79 cpu_total_ns=11397146702 stat_total=1139 new_bytes=2917647 settled_bytes=6305710 final_bytes=6305710 new=20000 destroy=20000 lines=40002
-- [30.9 s] round 1: conntrack
CTSCOPE-OVERHEAD-CHURN conntrack 1 ctchurn: 20000 flows in 2.576 s (7764 flows/s)
CTSCOPE-OVERHEAD-LISTENER conntrack 1 WARNING: We have hit ENOBUFS! We are losing events.
CTSCOPE-OVERHEAD-LISTENER conntrack 1 This message means that the current netlink socket buffer size is too small.
CTSCOPE-OVERHEAD-LISTENER conntrack 1 Please, check --buffer-size in conntrack(8) manpage.
CTSCOPE-OVERHEAD-LISTENER conntrack 1 WARNING: We have hit ENOBUFS! We are losing events.
CTSCOPE-OVERHEAD-LISTENER conntrack 1 This message means that the current netlink socket buffer size is too small.
CTSCOPE-OVERHEAD-LISTENER conntrack 1 Please, check --buffer-size in conntrack(8) manpage.
CTSCOPE-OVERHEAD-LISTENER conntrack 1 WARNING: We have hit ENOBUFS! We are losing events.
CTSCOPE-OVERHEAD-LISTENER conntrack 1 This message means that the current netlink socket buffer size is too small.
CTSCOPE-OVERHEAD-LISTENER conntrack 1 Please, check --buffer-size in conntrack(8) manpage.
CTSCOPE-OVERHEAD-LISTENER conntrack 1 WARNING: We have hit ENOBUFS! We are losing events.
CTSCOPE-OVERHEAD-LISTENER conntrack 1 This message means that the current netlink socket buffer size is too small.
CTSCOPE-OVERHEAD-LISTENER conntrack 1 Please, check --buffer-size in conntrack(8) manpage.
CTSCOPE-OVERHEAD-LISTENER conntrack 1 conntrack v1.4.7 (conntrack-tools): 20665 flow events have been shown.
CTSCOPE-OVERHEAD-RUN conntrack 1 flows=20000 entries=20001 early_drop=0 drop=0 insert_failed=0 startup_ns=33088698 ready_ns=- probes=1 probe_ns=7056824 first_probe=0 cpu_ready_ns=3296920 stat_ready=0 cpu_churn_ns=1178000500 stat_churn=117 cpu_total_ns=1491917080 stat_total=148 new_bytes=2917647 settled_bytes=3029781 final_bytes=3029781 new=20000 destroy=664 lines=20665
CTSCOPE-OVERHEAD-DONE

CTSCOPE-VM-EXIT=0
[   42.737282] reboot: Power down
";

fn close(actual: f64, expected: f64) -> bool {
    (actual - expected).abs() <= 1e-6 * expected.abs().max(1.0)
}

macro_rules! assert_close {
    ($actual:expr, $expected:expr) => {{
        let (a, e): (f64, f64) = ($actual, $expected);
        assert!(close(a, e), "{} = {a}, expected {e}", stringify!($actual));
    }};
}

#[test]
fn real_transcript_is_read() {
    let t = parse_transcript(REAL_612).expect("parses");
    assert!(t.done);
    let guest = t.guest.clone().expect("guest line");
    assert_eq!(guest.release, "6.12.117+deb12-cloud-amd64");
    assert_eq!(guest.cpus, 2);
    assert_eq!(guest.clock, "timer_list");
    assert_eq!(guest.cputime, "schedstat");
    assert_eq!((guest.buckets, guest.max), (65_536, 262_144));
    assert_eq!(t.runs.len(), 5);

    let none = t.runs_of(0);
    assert_eq!(none.len(), 1);
    // ctchurn's flows / seconds, not its rounded rate.
    assert_close!(none[0].rate.expect("rate"), 20_000.0 / 1.233);
    assert!(none[0].listener.is_none());

    let ebpf = t.runs_of(1)[0];
    assert_eq!(ebpf.entries, 20_003);
    let l = ebpf.listener.as_ref().expect("listener figures");
    assert_eq!(l.startup_ns, 508_305_220);
    assert_eq!(l.ready_ns, Some(424_737_974));
    assert_eq!(
        (l.probes, l.first_probe, l.probe_sent_ns),
        (3, Some(0), None)
    );
    assert_eq!(
        (l.cpu_ready_ns, l.cpu_churn_ns, l.cpu_total_ns),
        (346_833_620, 437_942_648, 540_526_728)
    );
    assert_eq!((l.new, l.destroy, l.lines), (20_000, 20_000, 40_006));
    assert_eq!(
        ebpf.stderr,
        ["ctscope v0.1.0 (conntrack-tools compatible): 40006 flow events have been shown."]
    );

    let netlink = t.runs_of(3)[0];
    assert_eq!(
        netlink.listener.as_ref().expect("listener").ready_ns,
        None,
        "ready_ns=- is not measured"
    );

    let conntrack = t.runs_of(4)[0];
    assert_eq!(conntrack.stderr.len(), 13);
    assert_eq!(
        lost_of(&conntrack.stderr),
        Lost {
            ring_full: 0,
            overruns: 0,
            enobufs_warnings: 4,
            shown: Some(20_665),
        }
    );
}

#[test]
fn real_transcript_figures() {
    let t = parse_transcript(REAL_612).expect("parses");
    let k = figures(&t, 20_000, 1).expect("figures");
    // A flow with no listener: 1.233 s / 20,000.
    assert_close!(k.base_us, 61.65);
    // Recorded before the ebpf-updates mode: absent, and in no table.
    assert!(k.modes[5].absent && !k.modes[1].absent);
    assert!(!kernel_table(&k).contains("ebpf-updates"));
    assert!(kernel_table(&k).contains("ebpf-json"));

    let ebpf = &k.modes[1];
    assert_close!(ebpf.ratio, 1.233 / 1.553);
    assert_close!(ebpf.total_extra_us, 77.65 - 61.65);
    // (437,942,648 - 346,833,620) ns over 20,000 flows.
    assert_close!(
        ebpf.consumer_churn_us_per_flow.expect("consumer"),
        4.555_451_4
    );
    assert_close!(ebpf.kernel_extra_us, 16.0 - 4.555_451_4);
    assert_close!(ebpf.kernel_extra_pct, (16.0 - 4.555_451_4) * 100.0 / 61.65);
    // (540,526,728 - 346,833,620) ns over 40,006 lines.
    assert_close!(
        ebpf.consumer_us_per_event.expect("per event"),
        193_693_108.0 / 40_006_000.0
    );
    assert_eq!(ebpf.new, Some((20_000, 20_000)));
    assert_eq!(ebpf.destroy, Some((20_000, 20_000)));
    let startup = ebpf.startup_s.expect("start-up");
    assert_close!(startup.0, 0.508_305_22);
    assert_close!(ebpf.probe_s.expect("probes"), 0.016_277_716);
    assert_eq!(ebpf.delivery_s, None, "no probe_sent_ns in this transcript");
    assert_eq!(ebpf.consumer_us_per_new, None, "nor cpu_new_ns");
    assert_eq!(ebpf.churn_extra_us, None, "nor churn_ticks");
    assert_eq!(ebpf.missed_first_probe, 0);
    assert_eq!(ebpf.buffered_bytes, 0);
    assert_close!(
        ebpf.stat_vs_schedstat.expect("stat"),
        530_000_000.0 / 540_526_728.0
    );

    let json = &k.modes[2];
    assert_close!(json.total_extra_us, 92.95 - 61.65);
    assert_close!(
        json.consumer_churn_us_per_flow.expect("consumer"),
        402_347_422.0 / 20_000_000.0
    );
    assert_close!(
        json.consumer_us_per_event.expect("per event"),
        816_403_580.0 / 40_008_000.0
    );

    let netlink = &k.modes[3];
    assert_eq!(netlink.missed_first_probe, 1);

    let conntrack = &k.modes[4];
    assert_eq!(conntrack.destroy, Some((664, 664)));
    assert_eq!(conntrack.lost.enobufs_warnings, 4);
    assert_eq!(lost_cell(&conntrack.lost), "4 ENOBUFS warnings");
    assert_eq!(lost_cell(&ebpf.lost), "none said");

    let table = kernel_table(&k);
    assert!(table.contains("a flow costs 61.65 µs"), "{table}");
    assert!(
        table.contains(
            "| `ebpf` | 12,878 (12,878-12,878) | 0.794 | 4.84 | 16.00 | 4.56 | 11.44 | 18.6 % | \
             20,000 / 20,000 | 0.508 (0.508-0.508) | none said |"
        ),
        "{table}"
    );
    assert!(
        table.contains("| `conntrack` |") && table.contains("| 20,000 / 664 |"),
        "{table}"
    );
}

#[test]
fn targets_pass_and_fail() {
    let t = parse_transcript(REAL_612).expect("parses");
    let k = figures(&t, 20_000, 1).expect("figures");
    let verdicts: Vec<(String, bool)> = TARGETS
        .iter()
        .map(|target| (target.check)(&k, 20_000).expect("measured"))
        .collect();
    assert_eq!(
        verdicts,
        [
            ("18.6 % (11.44 µs)".to_owned(), false),
            ("18.1 % (11.18 µs)".to_owned(), false),
            ("0.794".to_owned(), false),
            ("4.84 µs".to_owned(), false),
            ("20.41 µs".to_owned(), false),
            ("0.520 s".to_owned(), true),
            ("20,000 / 20,000; 20,000 / 20,000".to_owned(), true),
        ]
    );
    let table = targets_table(&[("6.12".to_owned(), k.clone()), ("6.1".to_owned(), k)]);
    assert!(
        table.starts_with(
            "| target | 6.12.117+deb12-cloud-amd64 | 6.12.117+deb12-cloud-amd64 (for information) |"
        ),
        "{table}"
    );
    assert!(
        table.contains("| rate ratio ≥ 0.90 (`ebpf`) | 0.794: **FAIL** | 0.794: **FAIL** |"),
        "{table}"
    );
    assert!(table.contains("0.520 s: pass"), "{table}");
}

/// Two rounds in rotated order, with figures chosen so the arithmetic can
/// be done by hand.
fn two_rounds() -> String {
    let mut text = String::from(
        "CTSCOPE-OVERHEAD-GUEST release=6.1.0-56-cloud-amd64 cpus=1 clock=timer_list \
         cputime=schedstat buckets=65536 max=262144 pinned=1\n",
    );
    // (mode, round, seconds for 20,000 flows, listener fields)
    let listener = |ready: u64, churn: u64, total: u64, lines: u64, destroy: u64, startup: u64| {
        format!(
            "startup_ns={startup} ready_ns=300000000 probes=4 probe_ns=20000000 first_probe=0 \
             probe_sent_ns={} cpu_ready_ns={ready} stat_ready=30 cpu_churn_ns={churn} \
             stat_churn=40 cpu_new_ns={} cpu_total_ns={total} stat_total=50 new_lines={} \
             new_bytes=100 settled_bytes=200 final_bytes=250 new=20000 destroy={destroy} \
             lines={lines}",
            startup - (startup / 2).min(100_000_000),
            churn + 10_000_000,
            lines / 2
        )
    };
    let runs = [
        ("none", 1, "1.250", String::new()),
        (
            "ebpf",
            1,
            "1.600",
            listener(
                350_000_000,
                440_000_000,
                550_000_000,
                40_000,
                20_000,
                500_000_000,
            ),
        ),
        (
            "ebpf-json",
            1,
            "2.000",
            listener(
                350_000_000,
                750_000_000,
                1_150_000_000,
                40_000,
                20_000,
                600_000_000,
            ),
        ),
        (
            "netlink",
            1,
            "2.500",
            listener(
                10_000_000,
                810_000_000,
                1_610_000_000,
                40_000,
                20_000,
                60_000_000,
            ),
        ),
        (
            "conntrack",
            1,
            "2.500",
            listener(
                5_000_000,
                1_005_000_000,
                1_205_000_000,
                20_000,
                500,
                30_000_000,
            ),
        ),
        (
            "ebpf",
            2,
            "1.600",
            listener(
                300_000_000,
                400_000_000,
                460_000_000,
                40_000,
                19_999,
                1_600_000_000,
            ),
        ),
        (
            "ebpf-json",
            2,
            "2.000",
            listener(
                350_000_000,
                750_000_000,
                1_150_000_000,
                40_000,
                20_000,
                700_000_000,
            ),
        ),
        (
            "netlink",
            2,
            "2.500",
            listener(
                10_000_000,
                810_000_000,
                1_610_000_000,
                40_000,
                20_000,
                60_000_000,
            ),
        ),
        (
            "conntrack",
            2,
            "2.500",
            listener(
                5_000_000,
                1_005_000_000,
                1_205_000_000,
                20_000,
                700,
                40_000_000,
            ),
        ),
        ("none", 2, "1.250", String::new()),
    ];
    for (mode, round, secs, fields) in runs {
        // ctchurn's own CPU: 1.25 s with no listener, more with the eBPF
        // programs, less when a netlink listener takes over softirq work.
        let ticks = match mode {
            "none" => 125,
            "ebpf" | "ebpf-json" => 146,
            _ => 120,
        };
        let _ = writeln!(
            text,
            "CTSCOPE-OVERHEAD-CHURN {mode} {round} ctchurn: 20000 flows in {secs} s (1 flows/s)\n\
             CTSCOPE-OVERHEAD-RUN {mode} {round} flows=20000 entries=20004 churn_ticks={ticks} \
             early_drop=0 drop=0 insert_failed=0 {fields}"
        );
    }
    text.push_str(
        "CTSCOPE-OVERHEAD-LISTENER ebpf 2 ctscope: 12 events lost: the ring buffer was full (raise --ring-size)\n\
         CTSCOPE-OVERHEAD-LISTENER netlink 1 ctscope: events were lost in 3 receive buffer overruns (ENOBUFS); ctnetlink does not say how many\n\
         CTSCOPE-OVERHEAD-DONE\n",
    );
    text
}

#[test]
fn arithmetic_over_rounds() {
    let t = parse_transcript(&two_rounds()).expect("parses");
    let k = figures(&t, 20_000, 2).expect("figures");
    assert_eq!(k.release, "6.1.0-56-cloud-amd64");
    // 16,000 flows/s with no listener: 62.5 µs a flow.
    assert_close!(k.base_us, 62.5);
    // 125 ticks of 10 ms over 20,000 flows.
    assert_close!(k.base_churn_us.expect("churn CPU"), 62.5);
    assert_close!(k.modes[1].churn_extra_us.expect("churn CPU"), 10.5);
    assert_close!(k.modes[3].churn_extra_us.expect("churn CPU"), -2.5);
    let ebpf = &k.modes[1];
    assert_eq!(ebpf.rate, (12_500.0, 12_500.0, 12_500.0));
    assert_close!(ebpf.ratio, 0.781_25);
    // 80 - 62.5 µs.
    assert_close!(ebpf.total_extra_us, 17.5);
    // Rounds: 90 ms and 100 ms over 20,000 flows: 4.5 and 5.0 µs.
    assert_close!(ebpf.consumer_churn_us_per_flow.expect("consumer"), 4.75);
    assert_close!(ebpf.kernel_extra_us, 12.75);
    assert_close!(ebpf.kernel_extra_pct, 20.4);
    // Rounds: 200 ms and 160 ms over 40,000 lines: 5.0 and 4.0 µs.
    assert_close!(ebpf.consumer_us_per_event.expect("per event"), 4.5);
    // NEW phase: 100 and 110 ms over 20,000 lines; DESTROY: 100 and 50 ms.
    assert_close!(ebpf.consumer_us_per_new.expect("NEW phase"), 5.25);
    assert_close!(ebpf.consumer_us_per_destroy.expect("DESTROY phase"), 3.75);
    assert_eq!(ebpf.destroy, Some((19_999, 20_000)));
    let startup = ebpf.startup_s.expect("start-up");
    assert_close!(startup.0, 1.05);
    assert_close!(startup.1, 0.5);
    assert_close!(startup.2, 1.6);
    assert_close!(ebpf.delivery_s.expect("delivery"), 0.1);
    assert_eq!(ebpf.lost.ring_full, 12);
    // 50 bytes a round came only at exit.
    assert_eq!(ebpf.buffered_bytes, 100);

    let json = &k.modes[2];
    // 100 - 62.5 µs, of which 400 ms / 20,000 = 20 µs the consumer's.
    assert_close!(json.total_extra_us, 37.5);
    assert_close!(json.kernel_extra_us, 17.5);
    assert_close!(json.consumer_us_per_event.expect("per event"), 20.0);

    let netlink = &k.modes[3];
    assert_eq!(netlink.lost.overruns, 3);
    assert_eq!(lost_cell(&netlink.lost), "3 ENOBUFS overruns");
    // 125 - 62.5 µs, of which 800 ms / 20,000 = 40 µs the consumer's.
    assert_close!(netlink.kernel_extra_us, 22.5);
    assert_close!(netlink.consumer_us_per_event.expect("per event"), 40.0);
    assert_eq!(k.modes[4].destroy, Some((500, 700)));

    let verdicts: Vec<bool> = TARGETS
        .iter()
        .map(|target| (target.check)(&k, 20_000).expect("measured").1)
        .collect();
    // Start-up: the slowest round (1.6 s) fails; events: one DESTROY short.
    assert_eq!(verdicts, [false, false, false, false, false, false, false]);
    let table = kernel_table(&k);
    assert!(table.contains("| 20,000 / 19,999-20,000 |"), "{table}");
    assert!(table.contains("| 1.050 (0.500-1.600) |"), "{table}");
}

#[test]
fn invalid_and_incomplete_runs_are_errors() {
    let text = two_rounds().replace(
        "CTSCOPE-OVERHEAD-RUN ebpf 2 flows=20000 entries=20004 churn_ticks=146 early_drop=0",
        "CTSCOPE-OVERHEAD-RUN ebpf 2 flows=20000 entries=20004 churn_ticks=146 early_drop=7",
    );
    let t = parse_transcript(&text).expect("parses");
    let err = format!("{:#}", figures(&t, 20_000, 2).expect_err("early drops"));
    assert!(err.contains("ebpf round 2: early_drop=7"), "{err}");

    let text = format!(
        "{}CTSCOPE-OVERHEAD-INVALID conntrack 1 conntrack -S: early_drop=0 drop=0 insert_failed=2\n",
        two_rounds()
    );
    let t = parse_transcript(&text).expect("parses");
    let err = format!("{:#}", figures(&t, 20_000, 2).expect_err("invalid"));
    assert!(err.contains("conntrack round 1: conntrack -S"), "{err}");

    // The first run (none, round 1) ends with fewer entries than flows.
    let text = two_rounds().replacen("entries=20004", "entries=19000", 1);
    let t = parse_transcript(&text).expect("parses");
    let err = format!("{:#}", figures(&t, 20_000, 2).expect_err("lost entries"));
    assert!(
        err.contains("none round 1: 19000 entries after 20000 new flows"),
        "{err}"
    );

    let t = parse_transcript(&two_rounds().replace("CTSCOPE-OVERHEAD-DONE\n", "")).expect("parses");
    assert!(figures(&t, 20_000, 2).is_err(), "no DONE line");

    let t = parse_transcript(&two_rounds()).expect("parses");
    let err = format!(
        "{:#}",
        figures(&t, 20_000, 3).expect_err("two rounds of three")
    );
    assert!(err.contains("2 of 3 complete runs of none"), "{err}");
    assert!(figures(&t, 10_000, 2).is_err(), "another flow count");
}

#[test]
fn malformed_lines_are_errors_not_panics() {
    for bad in [
        "CTSCOPE-OVERHEAD-RUN ebpf 1 flows=20000",
        "CTSCOPE-OVERHEAD-RUN ebpf 1 flows=x entries=1 early_drop=0 drop=0 insert_failed=0",
        "CTSCOPE-OVERHEAD-RUN none",
        "CTSCOPE-OVERHEAD-RUN bogus 1 flows=1",
        "CTSCOPE-OVERHEAD-RUN none one flows=1",
        "CTSCOPE-OVERHEAD-CHURN none 1 ctchurn: failed",
        "CTSCOPE-OVERHEAD-GUEST release=x cpus=two",
        "CTSCOPE-OVERHEAD-GUEST",
    ] {
        let err = parse_transcript(bad).expect_err(bad);
        assert!(format!("{err:#}").contains(bad), "{err:#}");
    }
    // Other console lines, and our tag glued to a kernel message, are fine.
    let t = parse_transcript(
        "[ 1.0] random: crng init done\n\
         [ 2.0] oopsCTSCOPE-OVERHEAD-DONE\n\
         CTSCOPE-OVERHEAD-FUTURE whatever\n",
    )
    .expect("parses");
    assert!(t.done);
    assert!(t.runs.is_empty());
}

#[test]
fn lost_lines() {
    let lines = [
        "ctscope v0.1.0 (conntrack-tools compatible): 39990 flow events have been shown.",
        "ctscope: 10 events lost: the ring buffer was full (raise --ring-size)",
        "ctscope: events were lost in 2 receive buffer overruns (ENOBUFS); ctnetlink does not say how many",
        "WARNING: We have hit ENOBUFS! We are losing events.",
        "something else entirely",
    ]
    .map(str::to_owned);
    let lost = lost_of(&lines);
    assert_eq!(
        lost,
        Lost {
            ring_full: 10,
            overruns: 2,
            enobufs_warnings: 1,
            shown: Some(39_990),
        }
    );
    assert_eq!(
        lost_cell(&lost),
        "10 ring-full, 2 ENOBUFS overruns, 1 ENOBUFS warnings"
    );
    assert_eq!(lost_of(&[]), Lost::default());
}

#[test]
fn settings_from_the_environment() {
    let none = |_: &str| None;
    let defaults = Settings::from_lookup(none).expect("defaults");
    assert_eq!(
        defaults,
        Settings {
            kernels: vec!["6.1".into(), "6.12".into()],
            flows: 20_000,
            rounds: 3,
            icount: true,
            modes: vec![
                "none",
                "ebpf",
                "ebpf-json",
                "netlink",
                "conntrack",
                "ebpf-updates"
            ],
        }
    );
    assert_eq!(defaults.env_prefix(), "");

    let set = |key: &str| match key {
        "CTSCOPE_OVERHEAD_FLOWS" => Some("5000".to_owned()),
        "CTSCOPE_OVERHEAD_ROUNDS" => Some("2".to_owned()),
        "CTSCOPE_OVERHEAD_KERNELS" => Some(" 6.12 ,".to_owned()),
        "CTSCOPE_OVERHEAD_ICOUNT" => Some("0".to_owned()),
        "CTSCOPE_OVERHEAD_MODES" => Some("ebpf, none".to_owned()),
        _ => None,
    };
    let s = Settings::from_lookup(set).expect("settings");
    assert_eq!((s.flows, s.rounds, s.icount), (5_000, 2, false));
    assert_eq!(s.kernels, ["6.12"]);
    // In the table's order, whatever the order asked.
    assert_eq!(s.modes, ["none", "ebpf"]);
    assert_eq!(
        s.env_prefix(),
        "CTSCOPE_OVERHEAD_FLOWS=5000 CTSCOPE_OVERHEAD_ROUNDS=2 CTSCOPE_OVERHEAD_KERNELS=6.12 \
         CTSCOPE_OVERHEAD_ICOUNT=0 CTSCOPE_OVERHEAD_MODES=none,ebpf "
    );

    for (key, value) in [
        ("CTSCOPE_OVERHEAD_FLOWS", "0"),
        ("CTSCOPE_OVERHEAD_FLOWS", "lots"),
        ("CTSCOPE_OVERHEAD_ROUNDS", "41"),
        ("CTSCOPE_OVERHEAD_KERNELS", ","),
        ("CTSCOPE_OVERHEAD_ICOUNT", "yes"),
        ("CTSCOPE_OVERHEAD_MODES", "ebpf"),
        ("CTSCOPE_OVERHEAD_MODES", "none,fast"),
    ] {
        let err = Settings::from_lookup(|k| (k == key).then(|| value.to_owned())).expect_err(value);
        assert!(err.to_string().contains(key), "{err}");
    }
}

#[test]
fn delivery_latency_is_read_and_noted() {
    let text = REAL_612.replace(
        "CTSCOPE-OVERHEAD-DONE",
        "CTSCOPE-OVERHEAD-DELIVERY pace=full flows=20000 count=20000 p50=52000000 p99=101500000 max=104000000\n\
         CTSCOPE-OVERHEAD-DELIVERY pace=200/s flows=400 count=400 p50=48000000 p99=99000000 max=100200000\n\
         CTSCOPE-OVERHEAD-DONE",
    );
    let t = parse_transcript(&text).expect("parses");
    assert_eq!(t.delivery.len(), 2);
    assert_eq!(t.delivery[1].pace, "200/s");
    assert_eq!(
        (
            t.delivery[0].count,
            t.delivery[0].p99_ns,
            t.delivery[1].max_ns
        ),
        (20_000, 101_500_000, 100_200_000)
    );
    let k = figures(&t, 20_000, 1).expect("figures");
    let notes = kernel_notes(&k, &t, Duration::from_secs(1));
    assert!(
        notes.contains(
            "churn at full (20,000 flows, 20,000 records): p50 52.0 ms, p99 101.5 ms, max 104.0 \
             ms; at 200/s (400 flows, 400 records): p50 48.0 ms, p99 99.0 ms"
        ),
        "{notes}"
    );
    // A line missing a figure is an error, not a zero.
    let bad = REAL_612.replace(
        "CTSCOPE-OVERHEAD-DONE",
        "CTSCOPE-OVERHEAD-DELIVERY pace=full flows=20000 count=20000 p50=1\nCTSCOPE-OVERHEAD-DONE",
    );
    assert!(parse_transcript(&bad).is_err());
}
