use super::*;
use crate::ct::{Counters, ips, proto, samples::flow};

fn udp(sport: u16) -> Conntrack {
    Conntrack {
        status: Some(ips::CONFIRMED),
        ..flow("10.0.0.1", "10.0.0.2", proto::UDP, sport, 53)
    }
}

#[test]
fn new_update_destroy() {
    let mut t = Table::new();
    let now = Instant::now();
    t.apply(EventKind::New, &udp(1), now, None);
    t.apply(EventKind::New, &udp(2), now, None);
    let mut marked = udp(1);
    marked.mark = Some(9);
    t.apply(EventKind::Update, &marked, now, None);
    assert_eq!(t.len(), 2);
    assert!(t.entries().iter().any(|e| e.ct.mark == Some(9)));
    t.apply(
        EventKind::Destroy,
        &udp(1),
        now + Duration::from_millis(1500),
        None,
    );
    assert_eq!(t.len(), 1);
    let h = &t.stats.lifetime_ms["udp"];
    assert_eq!(h.len(), 1);
    assert!((1400..=1600).contains(&h.max()), "{}", h.max());
}

#[test]
fn the_ttl_counts_down_from_the_last_report() {
    let mut t = Table::new();
    let start = Instant::now();
    let mut a = udp(1);
    a.timeout = Some(30);
    t.apply(EventKind::New, &a, start, None);
    let mut b = udp(2);
    b.timeout = Some(28);
    t.apply(EventKind::New, &b, start + Duration::from_secs(4), None);
    let at = |t: &Table, sport: u16, secs: u64| {
        let now = t.ms_since_epoch(start + Duration::from_secs(secs));
        let e = t.entries().iter().find(|e| e.ct.orig.sport == Some(sport));
        e.and_then(|e| e.ttl_at(now))
    };
    assert_eq!(at(&t, 1, 0), Some(30));
    assert_eq!(at(&t, 1, 10), Some(20));
    assert_eq!(at(&t, 1, 99), Some(0));
    // Entry 2 runs out at 4 + 28 = 32 s, after entry 1 (30 s).
    let expiry = |sport| {
        t.entries()
            .iter()
            .find(|e| e.ct.orig.sport == Some(sport))
            .and_then(Tracked::expires_at)
    };
    assert!(expiry(2) > expiry(1));
    // A newer report (an event, or a dump) restarts the count.
    a.timeout = Some(120);
    t.apply(EventKind::Update, &a, start + Duration::from_secs(10), None);
    assert_eq!(at(&t, 1, 15), Some(115));
    t.resync(vec![a.clone()], start + Duration::from_secs(20));
    assert_eq!(at(&t, 1, 21), Some(119));
}

#[test]
fn lifetime_from_the_kernel_start_time_a_dump_carried() {
    let mut t = Table::new();
    let now = Instant::now();
    let wall_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // Started 50 s ago, by the kernel's clock; this table saw it now.
    let mut started = udp(3);
    started.timestamp_start = Some(wall_ns - 50_000_000_000);
    t.resync(vec![started], now);
    // Its DESTROY carries no timestamps (nf_conntrack_timestamp was
    // turned on after it started, or the event lost them).
    t.apply(EventKind::Destroy, &udp(3), now, None);
    let h = &t.stats.lifetime_ms["udp"];
    assert!(h.max() >= 49_000, "lifetime {} ms", h.max());
}

#[test]
fn destroy_before_new_and_destroy_without_new() {
    let mut t = Table::new();
    let now = Instant::now();
    // DESTROY delivered before its NEW (another CPU): the late NEW is dropped.
    t.apply(EventKind::Destroy, &udp(7), now, None);
    t.apply(
        EventKind::New,
        &udp(7),
        now + Duration::from_millis(10),
        None,
    );
    assert_eq!(t.len(), 0);
    assert_eq!(t.stats.destroy_unknown, 1);
    // After the window, the same tuple is a new connection.
    t.apply(EventKind::New, &udp(7), now + Duration::from_secs(5), None);
    assert_eq!(t.len(), 1);
}

#[test]
fn a_destroy_the_dump_overtook_still_gives_a_lifetime() {
    let mut t = Table::new();
    let now = Instant::now();
    t.apply(EventKind::New, &udp(1), now, None);
    t.apply(EventKind::New, &udp(2), now, None);
    // A flush ran while the dump was made: 1 is gone from it, and its
    // DESTROY, queued behind the dump, comes after the resync.
    let drift = t.resync([udp(2)], now + Duration::from_secs(1));
    assert_eq!(drift.stale, 1);
    t.apply(
        EventKind::Destroy,
        &udp(1),
        now + Duration::from_secs(3),
        None,
    );
    assert_eq!(t.stats.destroy_unknown, 0);
    let lifetimes = &t.stats.lifetime_ms["udp"];
    assert_eq!(lifetimes.len(), 1);
    assert!(lifetimes.max() >= 2_900, "{}", lifetimes.max());
    // Only until the next resync: then an entry the dump dropped and no
    // DESTROY followed is simply gone.
    t.apply(EventKind::New, &udp(3), now, None);
    t.resync([udp(2)], now + Duration::from_secs(4));
    t.resync([udp(2)], now + Duration::from_secs(6));
    t.apply(
        EventKind::Destroy,
        &udp(3),
        now + Duration::from_secs(7),
        None,
    );
    assert_eq!(t.stats.destroy_unknown, 1);
    assert_eq!(t.stats.lifetime_ms["udp"].len(), 1);
}

#[test]
fn resync_counts_drift_and_rates() {
    let mut t = Table::new();
    let now = Instant::now();
    t.apply(EventKind::New, &udp(1), now, None);
    t.apply(EventKind::New, &udp(2), now, None);
    let mut a = udp(1);
    a.counters_orig = Some(Counters {
        packets: 10,
        bytes: 1000,
    });
    a.counters_reply = Some(Counters {
        packets: 5,
        bytes: 500,
    });
    // The dump has 1 and 3: 3 was missed, 2 was kept too long.
    let drift = t.resync([a.clone(), udp(3)], now);
    assert_eq!(
        drift,
        Drift {
            missed: 1,
            stale: 1
        }
    );
    assert_eq!(t.len(), 2);
    a.counters_orig = Some(Counters {
        packets: 30,
        bytes: 3000,
    });
    a.counters_reply = Some(Counters {
        packets: 5,
        bytes: 500,
    });
    t.resync([a, udp(3)], now + Duration::from_secs(2));
    let e = t
        .entries()
        .iter()
        .find(|e| e.ct.orig.sport == Some(1))
        .expect("entry 1");
    assert!((e.rate_bytes.0 - 1000.0).abs() < 1.0, "{:?}", e.rate_bytes);
    assert!((e.rate_packets.0 - 10.0).abs() < 0.1);
    assert_eq!(e.rate_bytes.1, 0.0);
}

#[test]
fn index_stays_consistent_under_random_churn() {
    // A model (a set of ports) against the table, through inserts and
    // swap-removes in pseudo-random order, then a resync.
    let mut t = Table::new();
    let mut model = std::collections::BTreeSet::new();
    let mut x: u32 = 12345;
    let base = Instant::now();
    for step in 0..20_000u32 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let port = (x % 2000) as u16;
        // Time moves on so the reorder window never hides a NEW.
        let now = base + Duration::from_secs(u64::from(step) * 3);
        if x.is_multiple_of(3) {
            t.apply(EventKind::Destroy, &udp(port), now, None);
            model.remove(&port);
        } else {
            t.apply(EventKind::New, &udp(port), now, None);
            model.insert(port);
        }
        if step % 997 == 0 {
            let held: std::collections::BTreeSet<u16> =
                t.entries().iter().filter_map(|e| e.ct.orig.sport).collect();
            assert_eq!(held, model, "step {step}");
            for &p in model.iter().take(50) {
                assert!(
                    t.find(&Key::of(&udp(p)).expect("key")).is_some(),
                    "lost {p}"
                );
            }
        }
    }
    assert_eq!(t.len(), model.len());
    let dump: Vec<Conntrack> = model.iter().map(|&p| udp(p)).collect();
    let drift = t.resync(dump, base + Duration::from_secs(100_000));
    assert_eq!(drift, Drift::default());
    assert_eq!(t.len(), model.len());
}

#[test]
fn churn_per_protocol_and_tcp_end_state() {
    let mut t = Table::new();
    let now = Instant::now();
    let mut tcp = udp(5);
    tcp.orig.l4proto = Some(6);
    tcp.proto_state = Some(ProtoState::Tcp(ESTABLISHED));
    t.apply(EventKind::New, &tcp, now, None);
    t.apply(EventKind::New, &udp(6), now, None);
    let mut closed = tcp.clone();
    closed.proto_state = Some(ProtoState::Tcp(7));
    t.apply(
        EventKind::Destroy,
        &closed,
        now + Duration::from_millis(40),
        None,
    );
    assert_eq!(t.stats.new_by_proto["tcp"], 1);
    assert_eq!(t.stats.new_by_proto["udp"], 1);
    assert_eq!(t.stats.destroy_by_proto["tcp"], 1);
    assert!(!t.stats.destroy_by_proto.contains_key("udp"));
    assert_eq!(t.stats.tcp_lifetime_ms["TIME_WAIT"].len(), 1);
}

#[test]
fn tcp_setup_time_from_updates() {
    let mut t = Table::new();
    let now = Instant::now();
    let mut syn = udp(9);
    syn.orig.l4proto = Some(6);
    syn.proto_state = Some(ProtoState::Tcp(1));
    t.apply(EventKind::New, &syn, now, None);
    let mut est = syn.clone();
    est.proto_state = Some(ProtoState::Tcp(ESTABLISHED));
    t.apply(
        EventKind::Update,
        &est,
        now + Duration::from_millis(3),
        None,
    );
    assert_eq!(t.stats.tcp_setup_us.len(), 1);
    assert!(t.stats.tcp_setup_us.max() >= 2900);
}
