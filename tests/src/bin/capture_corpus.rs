//! Records the seed corpus of ctscope's decoder fuzzing
//! (conntrack-user/tests/corpus) from the running kernel, so the fuzzer
//! starts from real messages rather than only from noise:
//!
//! - `ctnetlink/`: dump replies (one netlink message per file) for the
//!   varied table of the end-to-end tests, one per distinct shape;
//! - `events/`: NEW, UPDATE and DESTROY event datagrams for the same
//!   entries (their creation, a mark change, and a flush);
//! - `stats/`: per-CPU and global statistics replies;
//! - `expect/`: expectation dump replies, event datagrams (NEW, DESTROY)
//!   and per-CPU statistics, from the kernel's ftp (IPv4 and IPv6) and
//!   sip helpers;
//! - `btf/`: the part of /sys/kernel/btf/vmlinux the offsets come from
//!   (struct nf_conn, sk_buff, net, nf_ct_event and what they embed, and the
//!   enum holding NF_CT_EXT_ACCT), cut out as a small, self-contained
//!   blob: pointers become `void *`, other types keep their layout.
//!
//! Usage, as root: `cargo run -p ctscope-e2e --bin capture-corpus -- DIR`.
//! The netlink messages are read with plain sockets here, not with
//! ctscope's code, so the corpus does not depend on the decoder it feeds.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use ctscope_e2e::{HELPER_RULESET, Netns, ftp_session, sip_register};

const NETLINK_NETFILTER: i32 = 12;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET, _GET_STATS_CPU, _GET_STATS.
const CT_GET: u16 = 0x0101;
const CT_GET_STATS_CPU: u16 = 0x0104;
const CT_GET_STATS: u16 = 0x0105;
/// NFNLGRP_CONNTRACK_NEW, _UPDATE and _DESTROY as a bind mask.
const EVENT_GROUPS: u32 = 0b111;
/// (NFNL_SUBSYS_CTNETLINK_EXP << 8) | IPCTNL_MSG_EXP_GET, _GET_STATS_CPU.
const EXP_GET: u16 = 0x0201;
const EXP_GET_STATS_CPU: u16 = 0x0203;
/// NFNLGRP_CONNTRACK_EXP_NEW, _UPDATE and _DESTROY as a bind mask.
const EXP_EVENT_GROUPS: u32 = 0b111_000;
/// At most this many files of one shape.
const PER_SHAPE: usize = 1;

fn main() {
    let Some(dir) = std::env::args().nth(1).map(PathBuf::from) else {
        eprintln!("usage: capture-corpus DIR");
        std::process::exit(2);
    };
    if let Err(e) = capture(&dir) {
        eprintln!("capture-corpus: {e}");
        std::process::exit(1);
    }
}

fn capture(dir: &Path) -> Result<(), String> {
    let mut ns = Netns::new().ok_or("the namespace tests are switched off")?;
    let events = ns.in_netns(|| socket(EVENT_GROUPS))?;
    ns.fill_varied_table();
    let dump = ns.in_netns(|| request(CT_GET, NLM_F_DUMP))?;
    let stats_cpu = ns.in_netns(|| request(CT_GET_STATS_CPU, NLM_F_DUMP))?;
    let stats = ns.in_netns(|| request(CT_GET_STATS, 0))?;
    // Some entries refuse a new mark (EOPNOTSUPP); the rest send UPDATEs.
    let _ = ns.conntrack(&["-U", "-m", "7"]);
    ns.conntrack(&["-F"]).expect_code(0);
    let event_datagrams = drain(&events, Duration::from_secs(1));

    let expect = capture_expectations(&ns)?;

    let mut written = 0;
    written += write_shapes(&dir.join("expect"), "expect", &expect)?;
    written += write_shapes(&dir.join("ctnetlink"), "dump", &dump)?;
    written += write_shapes(&dir.join("events"), "event", &event_datagrams)?;
    written += write_shapes(&dir.join("stats"), "stats", &[stats_cpu, stats].concat())?;
    let btf = std::fs::read("/sys/kernel/btf/vmlinux")
        .map_err(|e| format!("/sys/kernel/btf/vmlinux: {e}"))?;
    let cut = btf_cut(&btf)?;
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_err(|e| format!("osrelease: {e}"))?;
    std::fs::create_dir_all(dir.join("btf")).map_err(|e| e.to_string())?;
    let name = dir.join(format!("btf/vmlinux-{}-conntrack.btf", release.trim()));
    std::fs::write(&name, &cut).map_err(|e| format!("{}: {e}", name.display()))?;
    written += 1;
    eprintln!(
        "capture-corpus: {written} files in {} ({} of {} bytes of BTF kept)",
        dir.display(),
        cut.len(),
        btf.len()
    );
    Ok(())
}

/// Expectations of the ftp and sip helpers: the dump replies, the event
/// datagrams of their making and of a flush, and the per-CPU statistics.
fn capture_expectations(ns: &Netns) -> Result<Vec<Vec<u8>>, String> {
    ns.nft(HELPER_RULESET);
    // Before the sessions: a connection made with no listener gets no
    // event extension, and its expectations no events.
    let events = ns.in_netns(|| socket(EXP_EVENT_GROUPS))?;
    let mut ftp4 = ftp_session(ns, "127.0.0.2");
    ftp4.port(51210);
    let mut ftp6 = ftp_session(ns, "::1");
    ftp6.port(51211);
    sip_register(ns, 5062, false);
    sip_register(ns, 5064, true);
    let dump = ns.in_netns(|| request(EXP_GET, NLM_F_DUMP))?;
    let stats = ns.in_netns(|| request(EXP_GET_STATS_CPU, NLM_F_DUMP))?;
    ns.conntrack(&["-F", "expect"]).expect_code(0);
    let datagrams = drain(&events, Duration::from_secs(1));
    drop((ftp4, ftp6));
    // Events first: a NEW event has the shape of a dump reply, and only
    // the first of a shape is kept. The statistics replies come as
    // NFNL_SUBSYS_CTNETLINK messages (ctnetlink_exp_stat_fill_info, 6.18).
    Ok([datagrams, dump, stats].concat())
}

/// A netlink socket in the calling thread's namespace, bound to `groups`.
fn socket(groups: u32) -> Result<OwnedFd, String> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, NETLINK_NETFILTER) };
    if fd < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh, valid descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_nl is valid; bind reads it.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    addr.nl_groups = groups;
    let len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
    // SAFETY: addr is a valid sockaddr_nl of `len` bytes.
    if unsafe { libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), len) } != 0 {
        return Err(format!("bind: {}", std::io::Error::last_os_error()));
    }
    Ok(fd)
}

/// Sends one ctnetlink request and returns the reply messages (whole
/// netlink messages, header included) up to DONE, or the one answer.
fn request(msg_type: u16, flags: u16) -> Result<Vec<Vec<u8>>, String> {
    let fd = socket(0)?;
    let mut req = Vec::with_capacity(20);
    req.extend_from_slice(&20u32.to_ne_bytes());
    req.extend_from_slice(&msg_type.to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    // SAFETY: sending our own buffer on our own socket (kernel address 0).
    if unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(format!("send: {}", std::io::Error::last_os_error()));
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        // SAFETY: buf is writable for its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(format!("recv: {}", std::io::Error::last_os_error()));
        }
        for msg in messages(&buf[..n as usize]) {
            let kind = u16::from_ne_bytes([msg[4], msg[5]]);
            match kind {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => return Err(format!("request {msg_type:#x}: error reply")),
                _ => out.push(msg.to_vec()),
            }
        }
        if flags & NLM_F_DUMP == 0 && !out.is_empty() {
            return Ok(out);
        }
    }
}

/// Every datagram that arrives on `fd` until it is quiet for `quiet`.
fn drain(fd: &OwnedFd, quiet: Duration) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut last = Instant::now();
    while last.elapsed() < quiet {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, 100) } <= 0 {
            continue;
        }
        // SAFETY: buf is writable for its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n > 0 {
            out.push(buf[..n as usize].to_vec());
            last = Instant::now();
        }
    }
    out
}

/// The netlink messages of a datagram.
fn messages(mut buf: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < 16 || len > buf.len() {
            break;
        }
        out.push(&buf[..len]);
        buf = &buf[((len + 3) & !3).min(buf.len())..];
    }
    out
}

/// What makes two messages alike for the corpus: the message type, the
/// family, and the attribute types at the top level and one level down.
fn shape(datagram: &[u8]) -> Vec<u16> {
    let mut key = Vec::new();
    for msg in messages(datagram) {
        key.push(u16::from_ne_bytes([msg[4], msg[5]]));
        key.push(u16::from(msg.get(16).copied().unwrap_or(0)));
        attr_types(msg.get(20..).unwrap_or_default(), 4, &mut key);
    }
    key
}

fn attr_types(mut buf: &[u8], depth: u32, key: &mut Vec<u16>) {
    while buf.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
        let kind = u16::from_ne_bytes([buf[2], buf[3]]);
        if len < 4 || len > buf.len() {
            return;
        }
        key.push(kind);
        // One-byte values (protocol numbers, TCP and SCTP states) count.
        if len == 5 {
            key.push(u16::from(buf[4]));
        }
        if depth > 1 && kind & 0x8000 != 0 {
            key.push(u16::MAX);
            attr_types(&buf[4..len], depth - 1, key);
            key.push(u16::MAX - 1);
        }
        buf = &buf[((len + 3) & !3).min(buf.len())..];
    }
}

/// Writes one file per distinct shape; returns how many.
fn write_shapes(dir: &Path, prefix: &str, items: &[Vec<u8>]) -> Result<usize, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut seen: HashMap<Vec<u16>, usize> = HashMap::new();
    let mut n = 0;
    for item in items {
        let count = seen.entry(shape(item)).or_default();
        if *count >= PER_SHAPE {
            continue;
        }
        *count += 1;
        let path = dir.join(format!("{prefix}-{n:03}.bin"));
        std::fs::write(&path, item).map_err(|e| format!("{}: {e}", path.display()))?;
        n += 1;
    }
    if n == 0 {
        return Err(format!("nothing captured for {}", dir.display()));
    }
    Ok(n)
}

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// The structs the offsets are read from (see ctscope's btf.rs).
const BTF_ROOTS: &[&str] = &[
    "sk_buff",
    "nf_conn",
    "net",
    "nf_conntrack_tuple_hash",
    "nf_conntrack_tuple",
    "nf_ct_ext",
    "nf_ct_event",
];
const BTF_ENUM_VARIANT: &str = "NF_CT_EXT_ACCT";

/// One type record of a BTF type section.
struct BtfType<'a> {
    kind: u32,
    vlen: usize,
    name_off: u32,
    /// The whole record, trailing data included.
    raw: &'a [u8],
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, String> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| "BTF cut short".to_string())
}

fn cstr(strings: &[u8], off: u32) -> &[u8] {
    let tail = strings.get(off as usize..).unwrap_or_default();
    &tail[..tail.iter().position(|&c| c == 0).unwrap_or(tail.len())]
}

/// Cuts the types reachable from [`BTF_ROOTS`] without passing through a
/// pointer out of a whole vmlinux BTF, renumbered, with their strings.
fn btf_cut(btf: &[u8]) -> Result<Vec<u8>, String> {
    if btf.get(..2) != Some(&0xeb9fu16.to_le_bytes()[..]) {
        return Err("not little-endian BTF".into());
    }
    let hdr_len = u32_at(btf, 4)? as usize;
    let type_off = hdr_len + u32_at(btf, 8)? as usize;
    let type_len = u32_at(btf, 12)? as usize;
    let str_off = hdr_len + u32_at(btf, 16)? as usize;
    let str_len = u32_at(btf, 20)? as usize;
    let types_raw = btf
        .get(type_off..type_off + type_len)
        .ok_or("type section out of bounds")?;
    let strings = btf
        .get(str_off..str_off + str_len)
        .ok_or("string section out of bounds")?;
    // Id 0 is void; ids count from 1.
    let mut types: Vec<Option<BtfType>> = vec![None];
    let mut off = 0;
    while off < types_raw.len() {
        let name_off = u32_at(types_raw, off)?;
        let info = u32_at(types_raw, off + 4)?;
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        let extra = match kind {
            KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
            KIND_ARRAY => 12,
            KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
            KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
            KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
            | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
            k => return Err(format!("unknown BTF kind {k}")),
        };
        let raw = types_raw
            .get(off..off + 12 + extra)
            .ok_or("type record cut short")?;
        types.push(Some(BtfType {
            kind,
            vlen,
            name_off,
            raw,
        }));
        off += 12 + extra;
    }
    // Roots: the first struct or union with members of each name, and the
    // enum that holds the extension ids.
    let mut queue = Vec::new();
    for root in BTF_ROOTS {
        let id = types
            .iter()
            .position(|t| {
                t.as_ref().is_some_and(|t| {
                    matches!(t.kind, KIND_STRUCT | KIND_UNION)
                        && t.vlen > 0
                        && cstr(strings, t.name_off) == root.as_bytes()
                })
            })
            .ok_or_else(|| format!("no struct {root} in this BTF"))?;
        queue.push(id as u32);
    }
    let enum_id = types
        .iter()
        .position(|t| {
            t.as_ref().is_some_and(|t| {
                t.kind == KIND_ENUM
                    && (0..t.vlen).any(|i| {
                        u32_at(t.raw, 12 + 8 * i)
                            .is_ok_and(|n| cstr(strings, n) == BTF_ENUM_VARIANT.as_bytes())
                    })
            })
        })
        .ok_or("no enum with NF_CT_EXT_ACCT")?;
    queue.push(enum_id as u32);
    // Follow every reference but a pointer's.
    let mut keep = BTreeSet::new();
    while let Some(id) = queue.pop() {
        if id == 0 || !keep.insert(id) {
            continue;
        }
        let t = types
            .get(id as usize)
            .and_then(Option::as_ref)
            .ok_or_else(|| format!("type id {id} out of range"))?;
        match t.kind {
            KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                queue.push(u32_at(t.raw, 8)?)
            }
            KIND_ARRAY => {
                queue.push(u32_at(t.raw, 12)?);
                queue.push(u32_at(t.raw, 16)?);
            }
            KIND_STRUCT | KIND_UNION => {
                for i in 0..t.vlen {
                    queue.push(u32_at(t.raw, 12 + 12 * i + 4)?);
                }
            }
            _ => {}
        }
    }
    let new_id: BTreeMap<u32, u32> = keep
        .iter()
        .zip(1u32..)
        .map(|(&old, new)| (old, new))
        .collect();
    let remap = |old: u32| new_id.get(&old).copied().unwrap_or(0);
    let mut out_strings = vec![0u8];
    let mut string_ids: HashMap<Vec<u8>, u32> = HashMap::new();
    let mut intern = |off: u32| -> u32 {
        let s = cstr(strings, off);
        if s.is_empty() {
            return 0;
        }
        *string_ids.entry(s.to_vec()).or_insert_with(|| {
            let at = out_strings.len() as u32;
            out_strings.extend_from_slice(s);
            out_strings.push(0);
            at
        })
    };
    let mut out_types = Vec::new();
    for &id in &keep {
        let Some(t) = types.get(id as usize).and_then(Option::as_ref) else {
            continue;
        };
        let mut rec = t.raw.to_vec();
        let put = |rec: &mut Vec<u8>, at: usize, v: u32| {
            rec[at..at + 4].copy_from_slice(&v.to_le_bytes());
        };
        put(&mut rec, 0, intern(t.name_off));
        match t.kind {
            // A pointer keeps its place and size but points at void.
            KIND_PTR => put(&mut rec, 8, 0),
            KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                put(&mut rec, 8, remap(u32_at(t.raw, 8)?))
            }
            KIND_ARRAY => {
                put(&mut rec, 12, remap(u32_at(t.raw, 12)?));
                put(&mut rec, 16, remap(u32_at(t.raw, 16)?));
            }
            KIND_STRUCT | KIND_UNION => {
                for i in 0..t.vlen {
                    let m = 12 + 12 * i;
                    put(&mut rec, m, intern(u32_at(t.raw, m)?));
                    put(&mut rec, m + 4, remap(u32_at(t.raw, m + 4)?));
                }
            }
            KIND_ENUM => {
                for i in 0..t.vlen {
                    let m = 12 + 8 * i;
                    put(&mut rec, m, intern(u32_at(t.raw, m)?));
                }
            }
            _ => {}
        }
        out_types.extend_from_slice(&rec);
    }
    let mut out = Vec::with_capacity(24 + out_types.len() + out_strings.len());
    out.extend_from_slice(&0xeb9fu16.to_le_bytes());
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&24u32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(out_types.len() as u32).to_le_bytes());
    out.extend_from_slice(&(out_types.len() as u32).to_le_bytes());
    out.extend_from_slice(&(out_strings.len() as u32).to_le_bytes());
    out.extend_from_slice(&out_types);
    out.extend_from_slice(&out_strings);
    Ok(out)
}
