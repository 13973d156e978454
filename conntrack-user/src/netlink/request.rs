//! The attributes of the requests that write entries: create (`-I`) and
//! update (`-U`), encoded as conntrack 1.4.7 (through
//! libnetfilter_conntrack 1.0.9) encodes them, so the kernel makes the same
//! entry of them.
use std::net::IpAddr;

use super::{codec::AttrWriter, cta};
use crate::ct::{ProtoState, Tuple, ips};

/// `IP_CT_TCP_FLAG_SACK_PERM`.
const TCP_FLAG_SACK_PERM: u8 = 0x02;
/// `IP_CT_TCP_FLAG_CLOSE_INIT`.
const TCP_FLAG_CLOSE_INIT: u8 = 0x04;
/// `IP_CT_TCP_FLAG_BE_LIBERAL`: no window tracking, as the entry never saw
/// the handshake that would set it up.
const TCP_FLAG_BE_LIBERAL: u8 = 0x08;
/// `TCP_CONNTRACK_TIME_WAIT`: from here on a connection is closing.
const TCP_TIME_WAIT: u8 = 7;

/// Where a NAT rule maps a direction to (`-n`/`-g ADDR[:PORT]` with `-I`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatTarget {
    /// The address the entry is mapped to.
    pub addr: IpAddr,
    /// The port, for protocols with ports.
    pub port: Option<u16>,
}

/// Labels to write: the bitmap, and the mask of the bits it changes
/// (`None`: the bitmap replaces every label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LabelChange {
    /// Bit i = label i.
    pub bits: [u8; 16],
    /// Bits to change; the others keep their value.
    pub mask: Option<[u8; 16]>,
}

/// The protocol details of a new state (`CTA_PROTOINFO`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProtoInfo {
    /// The state to set.
    pub state: ProtoState,
    /// SCTP verification tags (original, reply), which the kernel needs
    /// with an SCTP state.
    pub sctp_vtags: Option<(u32, u32)>,
    /// DCCP role: 0 client, 1 server.
    pub dccp_role: Option<u8>,
}

/// A create or update request: the entry's tuples and what to set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EntryRequest {
    /// The original tuple, which names the entry.
    pub orig: Tuple,
    /// The reply tuple (create only).
    pub reply: Option<Tuple>,
    /// Zone of both directions (`-w`).
    pub zone: Option<u16>,
    /// `IPS_*` bits to have (CONFIRMED is added, as the kernel wants it
    /// unchanged on an update).
    pub status: Option<u32>,
    /// Seconds to live.
    pub timeout: Option<u32>,
    /// The whole new mark.
    pub mark: Option<u32>,
    /// A new protocol state.
    pub protoinfo: Option<ProtoInfo>,
    /// Source NAT (create only).
    pub src_nat: Option<NatTarget>,
    /// Destination NAT (create only).
    pub dst_nat: Option<NatTarget>,
    /// Labels.
    pub labels: Option<LabelChange>,
}

impl EntryRequest {
    /// The request's attributes.
    pub fn encode(&self) -> AttrWriter {
        let mut w = AttrWriter::new();
        w.tuple(cta::TUPLE_ORIG, &self.orig);
        if let Some(reply) = &self.reply {
            w.tuple(cta::TUPLE_REPLY, reply);
        }
        if let Some(status) = self.status {
            // libnetfilter_conntrack always adds CONFIRMED: an update that
            // changed it would be refused (EBUSY), a create ignores it.
            w.be32(cta::STATUS, status | ips::CONFIRMED);
        }
        if let Some(t) = self.timeout {
            w.be32(cta::TIMEOUT, t);
        }
        if let Some(m) = self.mark {
            w.be32(cta::MARK, m);
        }
        if let Some(p) = &self.protoinfo {
            w.protoinfo(p);
        }
        for (kind, nat) in [(cta::NAT_SRC, &self.src_nat), (cta::NAT_DST, &self.dst_nat)] {
            if let Some(nat) = nat {
                w.nat(kind, nat);
            }
        }
        if let Some(z) = self.zone {
            w.be16(cta::ZONE, z);
        }
        if let Some(l) = &self.labels {
            // Always all 16 bytes: the kernel clears the labels past the
            // end of a shorter bitmap (nf_connlabels_replace).
            w.bytes(cta::LABELS, &l.bits);
            if let Some(mask) = &l.mask {
                w.bytes(cta::LABELS_MASK, mask);
            }
        }
        w
    }
}

impl AttrWriter {
    /// `CTA_PROTOINFO` with a state. TCP also gets conntrack's window
    /// flags (SACK permitted, be liberal; closing states: close init), in
    /// both directions.
    pub fn protoinfo(&mut self, p: &ProtoInfo) {
        let outer = self.begin_nest(cta::PROTOINFO);
        match p.state {
            ProtoState::Tcp(state) => {
                let n = self.begin_nest(cta::PROTOINFO_TCP);
                self.u8(cta::PROTOINFO_STATE, state);
                let mut flags = TCP_FLAG_SACK_PERM | TCP_FLAG_BE_LIBERAL;
                if state >= TCP_TIME_WAIT {
                    flags |= TCP_FLAG_CLOSE_INIT;
                }
                // struct nf_ct_tcp_flags: the flags, then the mask of those set.
                self.bytes(cta::PROTOINFO_TCP_FLAGS_ORIGINAL, &[flags, flags]);
                self.bytes(cta::PROTOINFO_TCP_FLAGS_REPLY, &[flags, flags]);
                self.end_nest(n);
            }
            ProtoState::Sctp(state) => {
                let n = self.begin_nest(cta::PROTOINFO_SCTP);
                self.u8(cta::PROTOINFO_STATE, state);
                if let Some((orig, reply)) = p.sctp_vtags {
                    self.be32(cta::PROTOINFO_SCTP_VTAG_ORIGINAL, orig);
                    self.be32(cta::PROTOINFO_SCTP_VTAG_REPLY, reply);
                }
                self.end_nest(n);
            }
            ProtoState::Dccp(state) => {
                let n = self.begin_nest(cta::PROTOINFO_DCCP);
                self.u8(cta::PROTOINFO_STATE, state);
                if let Some(role) = p.dccp_role {
                    self.u8(cta::PROTOINFO_DCCP_ROLE, role);
                }
                self.end_nest(n);
            }
        }
        self.end_nest(outer);
    }

    /// `CTA_NAT_SRC` or `CTA_NAT_DST`: one address (and port), the range's
    /// minimum; the kernel takes the maximum to be the same.
    pub fn nat(&mut self, kind: u16, nat: &NatTarget) {
        let n = self.begin_nest(kind);
        match nat.addr {
            IpAddr::V4(a) => self.bytes(cta::NAT_V4_MINIP, &a.octets()),
            IpAddr::V6(a) => self.bytes(cta::NAT_V6_MINIP, &a.octets()),
        }
        if let Some(port) = nat.port {
            let p = self.begin_nest(cta::NAT_PROTO);
            self.be16(cta::PROTONAT_PORT_MIN, port);
            self.be16(cta::PROTONAT_PORT_MAX, port);
            self.end_nest(p);
        }
        self.end_nest(n);
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{NlaBuffer, NlasIterator};

    use super::*;
    use crate::{
        ct::{Conntrack, proto, samples::flow},
        netlink::codec::decode_conntrack,
    };

    /// (kind without flags, value) of each top-level attribute.
    fn top_level(bytes: &[u8]) -> Vec<(u16, Vec<u8>)> {
        NlasIterator::new(bytes)
            .map(|nla: Result<NlaBuffer<&[u8]>, _>| {
                let nla = nla.expect("well formed");
                (
                    nla.kind() & netlink_packet_core::NLA_TYPE_MASK,
                    nla.value().to_vec(),
                )
            })
            .collect()
    }

    fn value_of(bytes: &[u8], kind: u16) -> Option<Vec<u8>> {
        top_level(bytes)
            .into_iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, v)| v)
    }

    #[test]
    fn a_create_round_trips_through_the_decoder() {
        let ct = flow("10.0.0.1", "10.0.0.2", proto::TCP, 1234, 80);
        let req = EntryRequest {
            orig: Tuple {
                zone: Some(3),
                ..ct.orig
            },
            reply: Some(ct.orig.inverted()),
            zone: Some(5),
            status: Some(ips::ASSURED),
            timeout: Some(3600),
            mark: Some(0x10ff),
            protoinfo: Some(ProtoInfo {
                state: ProtoState::Tcp(3),
                sctp_vtags: None,
                dccp_role: None,
            }),
            ..EntryRequest::default()
        };
        let mut back = Conntrack::default();
        decode_conntrack(libc::AF_INET as u8, req.encode().as_bytes(), &mut back).expect("decodes");
        assert_eq!(back.orig, req.orig);
        assert_eq!(back.reply, ct.reply);
        assert_eq!(back.zone, Some(5));
        assert_eq!(back.status, Some(ips::ASSURED | ips::CONFIRMED));
        assert_eq!((back.timeout, back.mark), (Some(3600), Some(0x10ff)));
        assert_eq!(back.proto_state, Some(ProtoState::Tcp(3)));
    }

    #[test]
    fn tcp_protoinfo_carries_conntracks_window_flags() {
        let mut w = AttrWriter::new();
        for (state, flags) in [(3, 0x0a), (7, 0x0e), (8, 0x0e)] {
            w = AttrWriter::new();
            w.protoinfo(&ProtoInfo {
                state: ProtoState::Tcp(state),
                sctp_vtags: None,
                dccp_role: None,
            });
            // PROTOINFO { TCP { STATE, FLAGS_ORIGINAL, FLAGS_REPLY } }, as
            // conntrack 1.4.7 sends it (captured with strace).
            let want: Vec<u8> = [
                &[32, 0, 4, 0x80, 28, 0, 1, 0x80][..],
                &[5, 0, 1, 0, state, 0, 0, 0],
                &[6, 0, 4, 0, flags, flags, 0, 0],
                &[6, 0, 5, 0, flags, flags, 0, 0],
            ]
            .concat();
            assert_eq!(w.as_bytes(), &want[..], "state {state}");
        }
        assert!(!w.as_bytes().is_empty());
    }

    #[test]
    fn sctp_and_dccp_protoinfo() {
        let mut w = AttrWriter::new();
        w.protoinfo(&ProtoInfo {
            state: ProtoState::Sctp(4),
            sctp_vtags: Some((1, 2)),
            dccp_role: None,
        });
        let want: Vec<u8> = [
            &[32, 0, 4, 0x80, 28, 0, 3, 0x80][..],
            &[5, 0, 1, 0, 4, 0, 0, 0],
            &[8, 0, 2, 0, 0, 0, 0, 1],
            &[8, 0, 3, 0, 0, 0, 0, 2],
        ]
        .concat();
        assert_eq!(w.as_bytes(), &want[..]);
        let mut w = AttrWriter::new();
        w.protoinfo(&ProtoInfo {
            state: ProtoState::Dccp(4),
            sctp_vtags: None,
            dccp_role: Some(0),
        });
        let want: Vec<u8> = [
            &[24, 0, 4, 0x80, 20, 0, 2, 0x80][..],
            &[5, 0, 1, 0, 4, 0, 0, 0],
            &[5, 0, 2, 0, 0, 0, 0, 0],
        ]
        .concat();
        assert_eq!(w.as_bytes(), &want[..]);
    }

    #[test]
    fn nat_targets_as_conntrack_sends_them() {
        let mut w = AttrWriter::new();
        w.nat(
            cta::NAT_SRC,
            &NatTarget {
                addr: "10.0.0.8".parse().expect("address"),
                port: Some(66),
            },
        );
        let want: Vec<u8> = [
            &[32, 0, 6, 0x80][..],
            &[8, 0, 1, 0, 10, 0, 0, 8],
            &[20, 0, 3, 0x80],
            &[6, 0, 1, 0, 0, 66, 0, 0],
            &[6, 0, 2, 0, 0, 66, 0, 0],
        ]
        .concat();
        assert_eq!(w.as_bytes(), &want[..]);
        let mut w = AttrWriter::new();
        w.nat(
            cta::NAT_DST,
            &NatTarget {
                addr: "2001:db8::9".parse().expect("address"),
                port: None,
            },
        );
        let bytes = w.as_bytes();
        assert_eq!(bytes.len(), 24);
        assert_eq!(&bytes[..8], &[24, 0, 13, 0x80, 20, 0, 4, 0]);
    }

    #[test]
    fn status_gets_confirmed_and_labels_are_whole() {
        let mut bits = [0u8; 16];
        bits[0] = 0b101;
        let mut mask = [0u8; 16];
        mask[0] = 0b100;
        let req = EntryRequest {
            orig: flow("10.0.0.1", "10.0.0.2", proto::UDP, 1, 2).orig,
            status: Some(0),
            labels: Some(LabelChange {
                bits,
                mask: Some(mask),
            }),
            ..EntryRequest::default()
        };
        let bytes = req.encode();
        let bytes = bytes.as_bytes();
        assert_eq!(value_of(bytes, cta::STATUS), Some(vec![0, 0, 0, 8]));
        assert_eq!(value_of(bytes, cta::LABELS), Some(bits.to_vec()));
        assert_eq!(value_of(bytes, cta::LABELS_MASK), Some(mask.to_vec()));
        // Nothing that was not asked for: no reply tuple, timeout, mark.
        for kind in [cta::TUPLE_REPLY, cta::TIMEOUT, cta::MARK, cta::ZONE] {
            assert_eq!(value_of(bytes, kind), None, "{kind}");
        }
    }
}
