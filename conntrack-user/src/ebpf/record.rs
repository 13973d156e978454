//! The kernel/user record ABI, user side: a `CtEvent` from the ring buffer
//! into the [`Conntrack`] entry ctnetlink would have reported for the same
//! event.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use conntrack_ebpf::{
    CT_EVENT_SIZE, CtEvent, CtTuple, EVENT_DESTROY, EVENT_NEW, EVENT_UPDATE, FLAG_COUNTERS,
    FLAG_TIMESTAMPS, IPCT_MARK, IPCT_PROTOINFO,
};

use crate::ct::{Conntrack, Counters, EventKind, ProtoState, Tuple, is_icmp, proto};

/// The event a record reports; `None` for a kind no program emits.
pub fn event_kind(ev: &CtEvent) -> Option<EventKind> {
    match ev.event {
        EVENT_NEW => Some(EventKind::New),
        EVENT_UPDATE => Some(EventKind::Update),
        EVENT_DESTROY => Some(EventKind::Destroy),
        _ => None,
    }
}

/// Copies one ring buffer record out; `None` when its size is not ours.
pub fn decode_record(bytes: &[u8]) -> Option<CtEvent> {
    if bytes.len() < CT_EVENT_SIZE {
        return None;
    }
    // SAFETY: CtEvent is plain old data of CT_EVENT_SIZE bytes; the read is
    // unaligned-safe.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<CtEvent>()) })
}

/// Turns ring buffer records into entries, one at a time, reusing one
/// [`Conntrack`]: what [`crate::ebpf::Tracer::drain`] does with each record
/// (and what a replay of records does off the ring, to measure it).
#[derive(Debug)]
pub struct RecordDecoder {
    hz: u32,
    mono_to_real_ns: i128,
    ct: Conntrack,
}

impl RecordDecoder {
    /// A decoder for a kernel of this HZ (timeouts are in jiffies) whose
    /// CLOCK_REALTIME is CLOCK_MONOTONIC + `mono_to_real_ns`.
    pub fn new(hz: u32, mono_to_real_ns: i128) -> Self {
        Self {
            hz,
            mono_to_real_ns,
            ct: Conntrack::default(),
        }
    }

    /// One record: its event, entry, wall time in ns and network
    /// namespace inode; `None` for a record of an unknown size or kind (no
    /// program emits one).
    pub fn decode(&mut self, bytes: &[u8]) -> Option<(EventKind, &Conntrack, u64, u32)> {
        let ev = decode_record(bytes)?;
        let kind = event_kind(&ev)?;
        to_conntrack(&ev, kind, self.hz, &mut self.ct);
        let real = i128::from(ev.ktime_ns) + self.mono_to_real_ns;
        Some((kind, &self.ct, u64::try_from(real).unwrap_or(0), ev.netns))
    }
}

#[inline(always)]
fn addr(family: u8, raw: &[u8; 16]) -> IpAddr {
    if i32::from(family) == libc::AF_INET6 {
        IpAddr::V6(Ipv6Addr::from(*raw))
    } else {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    }
}

/// Sets one direction of an entry from the record's tuple: every field
/// (the destructuring names them all, so a field added to [`Tuple`] must
/// be set here too).
#[inline(always)]
fn set_tuple(t: &mut Tuple, family: u8, l4: u8, icmp: bool, raw: &CtTuple) {
    let Tuple {
        src,
        dst,
        l4proto,
        sport,
        dport,
        icmp_type,
        icmp_code,
        icmp_id,
        zone,
    } = t;
    *src = Some(addr(family, &raw.src));
    *dst = Some(addr(family, &raw.dst));
    *l4proto = Some(l4);
    if icmp {
        (*sport, *dport) = (None, None);
        *icmp_type = Some(raw.icmp_type);
        *icmp_code = Some(raw.icmp_code);
        *icmp_id = Some(raw.sport);
    } else {
        (*sport, *dport) = (Some(raw.sport), Some(raw.dport));
        (*icmp_type, *icmp_code, *icmp_id) = (None, None, None);
    }
    *zone = None;
}

/// Converts a record into the entry ctnetlink would have reported for the
/// same event (NEW: timeout and state; UPDATE: timeout, and the state and
/// mark as its event bits say, as ctnetlink_conntrack_event does; DESTROY:
/// counters and timestamps). Every field of `ct` is set, one by one: this
/// runs per event, and building a whole entry to move it in costs a copy.
#[inline]
pub fn to_conntrack(ev: &CtEvent, kind: EventKind, hz: u32, ct: &mut Conntrack) {
    let timeout = if ev.timeout > i32::MAX as u32 {
        0
    } else {
        ev.timeout / hz.max(1)
    };
    let destroy = kind == EventKind::Destroy;
    // Every field, named (a field added to Conntrack must be set here).
    let Conntrack {
        family,
        orig,
        reply,
        status,
        timeout: ct_timeout,
        mark,
        use_count,
        id,
        zone,
        counters_orig,
        counters_reply,
        timestamp_start,
        timestamp_stop,
        proto_state,
        extra,
    } = ct;
    *family = ev.l3proto;
    let icmp = is_icmp(ev.l4proto);
    set_tuple(orig, ev.l3proto, ev.l4proto, icmp, &ev.orig);
    set_tuple(reply, ev.l3proto, ev.l4proto, icmp, &ev.reply);
    *status = Some(ev.status);
    // ctnetlink leaves the timeout out of DESTROY events once it has run
    // out (ctnetlink_dump_timeout with skip_zero); so do we.
    *ct_timeout = (!destroy || timeout > 0).then_some(timeout);
    // ctnetlink events carry the mark when it is set, or (UPDATE) when
    // it is what changed.
    *mark = (ev.mark != 0 || ev.events & IPCT_MARK != 0).then_some(ev.mark);
    *use_count = None;
    *id = None;
    *zone = (ev.zone != 0).then_some(ev.zone);
    // An UPDATE carries the state only when the state changed.
    *proto_state = (ev.l4proto == proto::TCP
        && (kind != EventKind::Update || ev.events & IPCT_PROTOINFO != 0))
        .then_some(ProtoState::Tcp(ev.proto_state));
    if extra.is_some() {
        *extra = None;
    }
    let counters = destroy && ev.flags & FLAG_COUNTERS != 0;
    *counters_orig = counters.then_some(Counters {
        packets: ev.counters[0],
        bytes: ev.counters[1],
    });
    *counters_reply = counters.then_some(Counters {
        packets: ev.counters[2],
        bytes: ev.counters[3],
    });
    let timestamps = destroy && ev.flags & FLAG_TIMESTAMPS != 0 && ev.start_ns != 0;
    *timestamp_start = timestamps.then_some(ev.start_ns);
    *timestamp_stop = (timestamps && ev.stop_ns != 0).then_some(ev.stop_ns);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_decode_into_entries() {
        let mut ev = CtEvent {
            event: EVENT_DESTROY,
            l3proto: 2,
            l4proto: 17,
            status: 0x8,
            timeout: 250 * 30,
            flags: FLAG_COUNTERS,
            counters: [1, 60, 2, 120],
            ..CtEvent::default()
        };
        ev.orig.src[..4].copy_from_slice(&[10, 0, 0, 1]);
        ev.orig.dst[..4].copy_from_slice(&[10, 0, 0, 2]);
        ev.orig.sport = 1000;
        ev.orig.dport = 53;
        let mut bytes = vec![0u8; CT_EVENT_SIZE];
        // SAFETY: writing a POD record into a buffer of its size.
        unsafe { std::ptr::write_unaligned(bytes.as_mut_ptr().cast::<CtEvent>(), ev) };
        let back = decode_record(&bytes).expect("decodes");
        assert_eq!(back, ev);
        assert_eq!(event_kind(&back), Some(EventKind::Destroy));
        // No program emits any other kind: such a record is malformed.
        let odd = CtEvent { event: 7, ..back };
        assert_eq!(event_kind(&odd), None);
        assert!(decode_record(&bytes[..CT_EVENT_SIZE - 1]).is_none());
        let mut ct = Conntrack::default();
        to_conntrack(&back, EventKind::Destroy, 250, &mut ct);
        assert_eq!(ct.timeout, Some(30));
        assert_eq!(ct.orig.src, Some("10.0.0.1".parse().expect("addr")));
        assert_eq!(ct.orig.dport, Some(53));
        assert_eq!(
            ct.counters_reply,
            Some(Counters {
                packets: 2,
                bytes: 120
            })
        );
        // An expired entry's DESTROY has no timeout, as ctnetlink's.
        let mut expired = back;
        expired.timeout = u32::MAX - 5;
        to_conntrack(&expired, EventKind::Destroy, 250, &mut ct);
        assert_eq!(ct.timeout, None);
        to_conntrack(&expired, EventKind::New, 250, &mut ct);
        assert_eq!(ct.timeout, Some(0));
    }

    /// The entry a record stands for, built whole (as the decoder did
    /// before it set fields in place): the reference it must equal.
    fn reference(ev: &CtEvent, kind: EventKind, hz: u32) -> Conntrack {
        let tuple = |t: &CtTuple| {
            let icmp = is_icmp(ev.l4proto);
            Tuple {
                src: Some(addr(ev.l3proto, &t.src)),
                dst: Some(addr(ev.l3proto, &t.dst)),
                l4proto: Some(ev.l4proto),
                sport: (!icmp).then_some(t.sport),
                dport: (!icmp).then_some(t.dport),
                icmp_type: icmp.then_some(t.icmp_type),
                icmp_code: icmp.then_some(t.icmp_code),
                icmp_id: icmp.then_some(t.sport),
                zone: None,
            }
        };
        let timeout = if ev.timeout > i32::MAX as u32 {
            0
        } else {
            ev.timeout / hz
        };
        let destroy = kind == EventKind::Destroy;
        let counters = destroy && ev.flags & FLAG_COUNTERS != 0;
        let timestamps = destroy && ev.flags & FLAG_TIMESTAMPS != 0 && ev.start_ns != 0;
        Conntrack {
            family: ev.l3proto,
            orig: tuple(&ev.orig),
            reply: tuple(&ev.reply),
            status: Some(ev.status),
            timeout: (!destroy || timeout > 0).then_some(timeout),
            mark: (ev.mark != 0 || ev.events & IPCT_MARK != 0).then_some(ev.mark),
            zone: (ev.zone != 0).then_some(ev.zone),
            proto_state: (ev.l4proto == proto::TCP
                && (kind != EventKind::Update || ev.events & IPCT_PROTOINFO != 0))
                .then_some(ProtoState::Tcp(ev.proto_state)),
            counters_orig: counters.then_some(Counters {
                packets: ev.counters[0],
                bytes: ev.counters[1],
            }),
            counters_reply: counters.then_some(Counters {
                packets: ev.counters[2],
                bytes: ev.counters[3],
            }),
            timestamp_start: timestamps.then_some(ev.start_ns),
            timestamp_stop: (timestamps && ev.stop_ns != 0).then_some(ev.stop_ns),
            ..Conntrack::default()
        }
    }

    /// A record as the ring holds it.
    fn bytes_of(ev: &CtEvent) -> Vec<u8> {
        let mut bytes = vec![0u8; CT_EVENT_SIZE];
        // SAFETY: writing a POD record into a buffer of its size.
        unsafe { std::ptr::write_unaligned(bytes.as_mut_ptr().cast::<CtEvent>(), *ev) };
        bytes
    }

    #[test]
    fn a_reused_entry_is_the_record_s_whole_entry() {
        // The decoder sets every field of its one entry in place: after any
        // record, the entry must equal the one built whole from the record,
        // whatever the record before it set (ICMP keys after ports, IPv6
        // after IPv4, counters and timestamps after none, rare attributes
        // left from elsewhere).
        let mut udp = CtEvent {
            event: EVENT_NEW,
            l3proto: 2,
            l4proto: 17,
            status: 0x8,
            timeout: 250 * 30,
            ..CtEvent::default()
        };
        udp.orig.src[..4].copy_from_slice(&[10, 0, 0, 1]);
        udp.orig.dst[..4].copy_from_slice(&[10, 0, 0, 2]);
        (udp.orig.sport, udp.orig.dport) = (1000, 53);
        udp.reply = CtTuple {
            src: udp.orig.dst,
            dst: udp.orig.src,
            sport: 53,
            dport: 1000,
            ..CtTuple::default()
        };
        let mut icmp = CtEvent { l4proto: 1, ..udp };
        (icmp.orig.icmp_type, icmp.orig.icmp_code, icmp.orig.sport) = (8, 0, 77);
        (icmp.reply.icmp_type, icmp.reply.sport) = (0, 77);
        let mut v6 = CtEvent {
            l3proto: 10,
            l4proto: 6,
            proto_state: 3,
            mark: 5,
            zone: 2,
            ..udp
        };
        v6.orig.src = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        v6.reply.dst = v6.orig.src;
        let gone = CtEvent {
            event: EVENT_DESTROY,
            flags: FLAG_COUNTERS | FLAG_TIMESTAMPS,
            counters: [1, 2, 3, 4],
            start_ns: 5,
            stop_ns: 6,
            ..v6
        };
        let update = CtEvent {
            event: EVENT_UPDATE,
            events: IPCT_MARK,
            ..icmp
        };
        let mut decoder = RecordDecoder::new(250, 1_000);
        decoder.ct = Conntrack {
            use_count: Some(1),
            id: Some(2),
            ..crate::ct::samples::tcp_established()
        };
        decoder.ct.extra_mut().helper = Some("ftp".into());
        for ev in [udp, icmp, gone, v6, udp, update, gone, icmp, udp] {
            let kind = event_kind(&ev).expect("a kind");
            let expected = reference(&ev, kind, 250);
            let (got_kind, got, time_ns, _) = decoder.decode(&bytes_of(&ev)).expect("decodes");
            assert_eq!((got_kind, got), (kind, &expected), "{ev:?}");
            assert_eq!(time_ns, ev.ktime_ns + 1_000);
        }
        // The ICMP entry has keys and no ports; the UDP one the reverse.
        let mut ct = Conntrack::default();
        to_conntrack(&icmp, EventKind::New, 250, &mut ct);
        assert_eq!(
            (ct.orig.icmp_type, ct.orig.icmp_id, ct.orig.sport),
            (Some(8), Some(77), None)
        );
        to_conntrack(&udp, EventKind::New, 250, &mut ct);
        assert_eq!(
            (ct.orig.icmp_type, ct.orig.sport, ct.reply.dport),
            (None, Some(1000), Some(1000))
        );
    }

    #[test]
    fn an_update_carries_what_its_event_bits_say() {
        let ev = CtEvent {
            event: EVENT_UPDATE,
            l3proto: 2,
            l4proto: 6,
            status: 0xe,
            timeout: 250 * 60,
            proto_state: 3,
            ..CtEvent::default()
        };
        assert_eq!(event_kind(&ev), Some(EventKind::Update));
        let mut ct = Conntrack::default();
        // ASSURED only (IPCT_ASSURED, bit 4): no state, no mark of 0.
        to_conntrack(
            &CtEvent {
                events: 1 << 4,
                ..ev
            },
            EventKind::Update,
            250,
            &mut ct,
        );
        assert_eq!(
            (ct.proto_state, ct.mark, ct.timeout),
            (None, None, Some(60))
        );
        assert_eq!(ct.status, Some(0xe));
        // A state change carries the state.
        to_conntrack(
            &CtEvent {
                events: IPCT_PROTOINFO,
                ..ev
            },
            EventKind::Update,
            250,
            &mut ct,
        );
        assert_eq!(ct.proto_state, Some(ProtoState::Tcp(3)));
        // A mark change carries the mark, even 0; a set mark always shows.
        to_conntrack(
            &CtEvent {
                events: IPCT_MARK,
                ..ev
            },
            EventKind::Update,
            250,
            &mut ct,
        );
        assert_eq!(ct.mark, Some(0));
        to_conntrack(
            &CtEvent {
                events: 1 << 4,
                mark: 9,
                ..ev
            },
            EventKind::Update,
            250,
            &mut ct,
        );
        assert_eq!(ct.mark, Some(9));
        // NEW keeps its state whatever the bits.
        to_conntrack(
            &CtEvent {
                event: EVENT_NEW,
                ..ev
            },
            EventKind::New,
            250,
            &mut ct,
        );
        assert_eq!(ct.proto_state, Some(ProtoState::Tcp(3)));
    }
}
