//! The expectation table over ctnetlink (`NFNL_SUBSYS_CTNETLINK_EXP`):
//! decoding `CTA_EXPECT_*` messages into [`Expect`], the attributes of
//! requests, and the requests themselves on the one [`CtSocket`].
use super::{
    IPCTNL_MSG_EXP_DELETE, IPCTNL_MSG_EXP_GET, IPCTNL_MSG_EXP_GET_STATS_CPU, IPCTNL_MSG_EXP_NEW,
    codec::{self, AttrWriter, CodecError, StatsCpu, attrs, be_u16, be_u32, decode_tuple, string},
    cta_exp, exp_msg_type,
    socket::{
        CtSocket, DumpSummary, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NetlinkError,
        exists,
    },
};
use crate::{ct::Tuple, expect::Expect};

/// Decodes the attributes of an expectation message (after the nfgenmsg
/// header) into `exp`, which is cleared first.
pub fn decode_expect(family: u8, buf: &[u8], exp: &mut Expect) -> Result<(), CodecError> {
    *exp = Expect {
        family,
        ..Expect::default()
    };
    let mut has_tuple = false;
    for nla in attrs(buf) {
        let nla = nla?;
        let v = nla.value();
        match nla.kind() {
            cta_exp::MASTER => decode_tuple(v, &mut exp.master)?,
            cta_exp::TUPLE => {
                decode_tuple(v, &mut exp.tuple)?;
                has_tuple = true;
            }
            cta_exp::MASK => decode_tuple(v, &mut exp.mask)?,
            cta_exp::TIMEOUT => exp.timeout = Some(be_u32(v, "CTA_EXPECT_TIMEOUT")?),
            cta_exp::ID => exp.id = Some(be_u32(v, "CTA_EXPECT_ID")?),
            cta_exp::HELP_NAME => exp.helper = Some(string(v)),
            cta_exp::ZONE => exp.zone = Some(be_u16(v, "CTA_EXPECT_ZONE")?),
            cta_exp::FLAGS => exp.flags = Some(be_u32(v, "CTA_EXPECT_FLAGS")?),
            cta_exp::CLASS => exp.class = Some(be_u32(v, "CTA_EXPECT_CLASS")?),
            cta_exp::FN => exp.func = Some(string(v)),
            _ => {}
        }
    }
    if !has_tuple || exp.tuple.src.is_none() {
        return Err(CodecError::NoExpectTuple);
    }
    if exp.family == 0 {
        exp.family = match exp.tuple.src {
            Some(std::net::IpAddr::V6(_)) => libc::AF_INET6 as u8,
            _ => libc::AF_INET as u8,
        };
    }
    Ok(())
}

/// An expectation to create (`-I expect`): the connection that owns it,
/// the tuple it expects and which bits of it count.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExpectRequest {
    /// The original tuple of the master connection, which must exist and
    /// have a helper.
    pub master: Tuple,
    /// The expected tuple.
    pub tuple: Tuple,
    /// The mask: addresses as netmasks, ports as port masks.
    pub mask: Tuple,
    /// Seconds to live. ctnetlink_create_expect (6.18) lets the master's
    /// helper policy set the timeout; it is sent, as conntrack sends it.
    pub timeout: u32,
}

impl ExpectRequest {
    /// The request's attributes, in the order conntrack 1.4.7 sends them.
    pub fn encode(&self) -> AttrWriter {
        let mut w = AttrWriter::new();
        w.tuple(cta_exp::TUPLE, &self.tuple);
        w.tuple(cta_exp::MASTER, &self.master);
        // The kernel parses the mask as a tuple: it needs the protocol
        // number, which is the expected tuple's.
        let mask = Tuple {
            l4proto: self.tuple.l4proto,
            ..self.mask
        };
        w.tuple(cta_exp::MASK, &mask);
        w.be32(cta_exp::TIMEOUT, self.timeout);
        w
    }
}

/// The attributes that name the expectation a connection with `tuple`
/// would match (`-G expect`, `-D expect`): the kernel compares `tuple`
/// with every expectation under its mask.
pub fn tuple_attrs(tuple: &Tuple) -> AttrWriter {
    let mut w = AttrWriter::new();
    w.tuple(cta_exp::TUPLE, tuple);
    w
}

impl CtSocket {
    /// Dumps the expectations of `family` (0: every family), handing each
    /// to `on_expect`, which returns false to stop early.
    pub fn dump_expect(
        &mut self,
        family: u8,
        mut on_expect: impl FnMut(&Expect) -> bool,
    ) -> Result<DumpSummary, NetlinkError> {
        let mut summary = DumpSummary::default();
        let mut exp = Expect::default();
        let result = self.transact(
            "dump expectations",
            exp_msg_type(IPCTNL_MSG_EXP_GET),
            NLM_F_DUMP,
            family,
            &[],
            |_, payload| {
                let decoded = codec::split_nfgenmsg(payload)
                    .and_then(|(head, body)| decode_expect(head.family, body, &mut exp));
                if decoded.is_err() {
                    summary.malformed += 1;
                    return Ok(());
                }
                summary.entries += 1;
                if on_expect(&exp) {
                    Ok(())
                } else {
                    Err(NetlinkError::Stopped)
                }
            },
        );
        match result {
            Ok(()) | Err(NetlinkError::Stopped) => Ok(summary),
            Err(e) => Err(e),
        }
    }

    /// Gets the expectation `attrs` name; `None` when there is none.
    pub fn get_expect(&mut self, family: u8, attrs: &[u8]) -> Result<Option<Expect>, NetlinkError> {
        let mut found = None;
        let result = self.transact(
            "get expectation",
            exp_msg_type(IPCTNL_MSG_EXP_GET),
            0,
            family,
            attrs,
            |_, payload| {
                let (head, body) = codec::split_nfgenmsg(payload)?;
                let mut exp = Expect::default();
                decode_expect(head.family, body, &mut exp)?;
                found = Some(exp);
                Ok(())
            },
        );
        Ok(if exists(result)? { found } else { None })
    }

    /// Deletes the expectation `attrs` name; false when there is none.
    pub fn delete_expect(&mut self, family: u8, attrs: &[u8]) -> Result<bool, NetlinkError> {
        exists(self.transact(
            "delete expectation",
            exp_msg_type(IPCTNL_MSG_EXP_DELETE),
            NLM_F_ACK,
            family,
            attrs,
            |_, _| Ok(()),
        ))
    }

    /// Creates an expectation. The kernel answers ENOENT when the master
    /// connection does not exist, EOPNOTSUPP when it has no helper.
    pub fn create_expect(&mut self, family: u8, attrs: &[u8]) -> Result<(), NetlinkError> {
        self.transact(
            "create expectation",
            exp_msg_type(IPCTNL_MSG_EXP_NEW),
            NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK,
            family,
            attrs,
            |_, _| Ok(()),
        )
    }

    /// Deletes every expectation: ctnetlink_del_expect without a tuple or
    /// helper name flushes the whole table, whatever the family.
    pub fn flush_expect(&mut self, family: u8) -> Result<(), NetlinkError> {
        self.transact(
            "flush expectations",
            exp_msg_type(IPCTNL_MSG_EXP_DELETE),
            NLM_F_ACK,
            family,
            &[],
            |_, _| Ok(()),
        )
    }

    /// Per-CPU expectation statistics (`CTA_STATS_EXP_*`), one element
    /// per CPU.
    pub fn expect_stats_cpu(&mut self) -> Result<Vec<StatsCpu>, NetlinkError> {
        let mut out = Vec::new();
        self.transact(
            "expectation stats",
            exp_msg_type(IPCTNL_MSG_EXP_GET_STATS_CPU),
            NLM_F_DUMP,
            0,
            &[],
            |_, payload| {
                out.push(codec::decode_stats_cpu(payload)?);
                Ok(())
            },
        )?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(src: &str, dst: &str, sport: u16, dport: u16) -> Tuple {
        Tuple {
            src: Some(src.parse().expect("addr")),
            dst: Some(dst.parse().expect("addr")),
            l4proto: Some(6),
            sport: Some(sport),
            dport: Some(dport),
            ..Tuple::default()
        }
    }

    /// An ftp helper's expectation, encoded as ctnetlink_exp_dump_expect
    /// sends it (the attributes conntrack decodes).
    fn ftp_expectation() -> (Vec<u8>, Expect) {
        let exp = Expect {
            family: libc::AF_INET as u8,
            master: tcp("10.0.0.1", "10.0.0.2", 40000, 21),
            tuple: tcp("10.0.0.2", "10.0.0.1", 0, 51210),
            mask: tcp("255.255.255.255", "255.255.255.255", 0, 65535),
            timeout: Some(299),
            id: Some(0xdead_beef),
            helper: Some("ftp".into()),
            flags: Some(0),
            class: Some(0),
            ..Expect::default()
        };
        let mut w = AttrWriter::new();
        w.tuple(cta_exp::MASTER, &exp.master);
        w.tuple(cta_exp::TUPLE, &exp.tuple);
        w.tuple(cta_exp::MASK, &exp.mask);
        w.be32(cta_exp::TIMEOUT, 299);
        w.be32(cta_exp::ID, 0xdead_beef);
        w.bytes(cta_exp::HELP_NAME, b"ftp\0");
        w.be32(cta_exp::FLAGS, 0);
        w.be32(cta_exp::CLASS, 0);
        (w.as_bytes().to_vec(), exp)
    }

    #[test]
    fn decodes_what_the_kernel_sends() {
        let (bytes, want) = ftp_expectation();
        let mut exp = Expect::default();
        decode_expect(libc::AF_INET as u8, &bytes, &mut exp).expect("decodes");
        assert_eq!(exp, want);
        // A family-less header takes the tuple's family.
        decode_expect(0, &bytes, &mut exp).expect("decodes");
        assert_eq!(exp.family, libc::AF_INET as u8);
    }

    #[test]
    fn short_or_odd_input_is_an_error_never_a_panic() {
        let (bytes, _) = ftp_expectation();
        let mut exp = Expect::default();
        for cut in 0..bytes.len() {
            let _ = decode_expect(2, &bytes[..cut], &mut exp);
        }
        for i in 0..bytes.len() {
            for v in [0u8, 1, 3, 0x7f, 0xff] {
                let mut b = bytes.clone();
                b[i] = v;
                let _ = decode_expect(2, &b, &mut exp);
            }
        }
        assert_eq!(
            decode_expect(2, &[], &mut exp),
            Err(CodecError::NoExpectTuple)
        );
        let mut w = AttrWriter::new();
        w.tuple(cta_exp::TUPLE, &tcp("1.1.1.1", "2.2.2.2", 1, 2));
        w.bytes(cta_exp::TIMEOUT, &[0, 1]);
        assert_eq!(
            decode_expect(2, w.as_bytes(), &mut exp),
            Err(CodecError::BadAttribute {
                name: "CTA_EXPECT_TIMEOUT"
            })
        );
    }

    #[test]
    fn a_create_request_carries_the_mask_with_the_tuple_protocol() {
        let req = ExpectRequest {
            master: tcp("10.0.0.1", "10.0.0.2", 40000, 21),
            tuple: tcp("10.0.0.2", "10.0.0.1", 0, 5000),
            mask: Tuple {
                l4proto: None,
                ..tcp("255.255.255.255", "255.255.255.255", 0, 65535)
            },
            timeout: 60,
        };
        let bytes = req.encode();
        let mut seen = Vec::new();
        for nla in attrs(bytes.as_bytes()) {
            let nla = nla.expect("well formed");
            let kind = nla.kind() & !netlink_packet_core::NLA_F_NESTED;
            if kind == cta_exp::TIMEOUT {
                assert_eq!(be_u32(nla.value(), "t"), Ok(60));
            } else {
                let mut t = Tuple::default();
                decode_tuple(nla.value(), &mut t).expect("a tuple");
                seen.push((kind, t));
            }
        }
        assert_eq!(
            seen,
            vec![
                (cta_exp::TUPLE, req.tuple),
                (cta_exp::MASTER, req.master),
                (
                    cta_exp::MASK,
                    tcp("255.255.255.255", "255.255.255.255", 0, 65535)
                ),
            ]
        );
        // The get/delete tuple is the one nest.
        let w = tuple_attrs(&req.tuple);
        let first = attrs(w.as_bytes()).next().expect("one").expect("ok");
        assert_eq!(
            first.kind() & !netlink_packet_core::NLA_F_NESTED,
            cta_exp::TUPLE
        );
    }
}
