//! Kernel struct offsets from the running kernel's BTF, handed to the eBPF
//! programs as load-time globals (Rust eBPF has no CO-RE relocations).
//!
//! Hand-written reader, and why: aya-obj parses BTF but keeps its type and
//! member accessors crate-private; btf-rs is LGPL-2.1, which does not sit
//! well with statically linking into an MIT/Apache-2.0 binary. We need only
//! struct member offsets and enum values, from vmlinux and, when
//! nf_conntrack is a module, its split BTF, so a reader of the BTF type
//! section (a stable, documented format: Documentation/bpf/btf.rst) is small.
//! It never panics: every read is bounds-checked.
use std::path::Path;

use conntrack_ebpf::{ABSENT, Offsets};

/// Why offsets could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    /// No BTF file (kernel built without CONFIG_DEBUG_INFO_BTF).
    #[error("no kernel BTF at {0} (the kernel needs CONFIG_DEBUG_INFO_BTF)")]
    Missing(String),
    /// The file is not BTF or is cut short.
    #[error("malformed BTF in {0}")]
    Malformed(String),
    /// A type or member the programs need is not in this kernel.
    #[error("this kernel's BTF has no {0}")]
    NoField(String),
}

const BTF_MAGIC: u16 = 0xeb9f;
/// The most of `struct nf_conn` the programs copy per record.
const CT_COPY_MAX: u32 = 512;
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// One member of a struct or union. Names are offsets into the string
/// section: start-up parses ~150,000 vmlinux types and compares only the
/// few names the programs need, so nothing is copied out per type.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Member {
    name: u32,
    type_id: u32,
    /// Offset in bits.
    bit_offset: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Type {
    Composite {
        name: u32,
        size: u32,
        members: Vec<Member>,
    },
    Enum {
        variants: Vec<(u32, i64)>,
    },
    /// typedef, const, volatile...: refers to another type.
    Alias(u32),
    /// A function (what fentry/fexit programs attach to), by name.
    Func(u32),
    Other,
}

/// Types from vmlinux BTF plus, optionally, a module's split BTF.
#[derive(Debug, Default)]
pub struct KernelBtf {
    types: Vec<Type>,
    /// The string sections, base first (split BTF's offsets continue it).
    strings: Vec<u8>,
    /// Type ids below this are vmlinux's (void included).
    base_types: usize,
    /// Bytes of vmlinux's string section (split BTF's offsets go on from
    /// there).
    base_strings: usize,
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn cstr(strings: &[u8], off: u32) -> &[u8] {
    let Some(tail) = strings.get(off as usize..) else {
        return &[];
    };
    let end = memchr::memchr(0, tail).unwrap_or(tail.len());
    &tail[..end]
}

impl KernelBtf {
    /// Reads /sys/kernel/btf/vmlinux and, if present, the split BTF of the
    /// nf_conntrack module.
    pub fn load_running() -> Result<Self, BtfError> {
        let vmlinux = Path::new("/sys/kernel/btf/vmlinux");
        let data =
            std::fs::read(vmlinux).map_err(|_| BtfError::Missing(vmlinux.display().to_string()))?;
        let mut btf = Self::default();
        btf.parse(&data, "vmlinux")?;
        let module = Path::new("/sys/kernel/btf/nf_conntrack");
        if let Ok(data) = std::fs::read(module) {
            btf.parse(&data, "nf_conntrack")?;
        }
        Ok(btf)
    }

    /// Parses one BTF blob, appending its types and strings (split BTF
    /// continues the base's ids and string offsets).
    pub fn parse(&mut self, data: &[u8], what: &str) -> Result<(), BtfError> {
        let bad = || BtfError::Malformed(what.to_string());
        // Type ids count from 1: id 0 is void, in every blob's numbering.
        let base = self.types.is_empty();
        if base {
            self.types.push(Type::Other);
        }
        if u16_at(data, 0) != Some(BTF_MAGIC) {
            return Err(bad());
        }
        let hdr_len = u32_at(data, 4).ok_or_else(bad)? as usize;
        let type_off = u32_at(data, 8).ok_or_else(bad)? as usize;
        let type_len = u32_at(data, 12).ok_or_else(bad)? as usize;
        let str_off = u32_at(data, 16).ok_or_else(bad)? as usize;
        let str_len = u32_at(data, 20).ok_or_else(bad)? as usize;
        let types = data
            .get(hdr_len.checked_add(type_off).ok_or_else(bad)?..)
            .and_then(|t| t.get(..type_len))
            .ok_or_else(bad)?;
        let own_strings = data
            .get(hdr_len.checked_add(str_off).ok_or_else(bad)?..)
            .and_then(|s| s.get(..str_len))
            .ok_or_else(bad)?;
        let mut off = 0;
        while off < types.len() {
            let name_off = u32_at(types, off).ok_or_else(bad)?;
            let info = u32_at(types, off + 4).ok_or_else(bad)?;
            let size_or_type = u32_at(types, off + 8).ok_or_else(bad)?;
            off += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let ty = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => {
                    off += 4;
                    Type::Other
                }
                KIND_ARRAY => {
                    off += 12;
                    Type::Other
                }
                KIND_STRUCT | KIND_UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        let m_name = u32_at(types, off).ok_or_else(bad)?;
                        let m_type = u32_at(types, off + 4).ok_or_else(bad)?;
                        let m_off = u32_at(types, off + 8).ok_or_else(bad)?;
                        off += 12;
                        members.push(Member {
                            name: m_name,
                            type_id: m_type,
                            bit_offset: if kind_flag {
                                m_off & 0x00ff_ffff
                            } else {
                                m_off
                            },
                        });
                    }
                    Type::Composite {
                        name: name_off,
                        size: size_or_type,
                        members,
                    }
                }
                KIND_ENUM => {
                    let mut variants = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        let v_name = u32_at(types, off).ok_or_else(bad)?;
                        let v = u32_at(types, off + 4).ok_or_else(bad)? as i32;
                        off += 8;
                        variants.push((v_name, i64::from(v)));
                    }
                    Type::Enum { variants }
                }
                KIND_ENUM64 => {
                    let mut variants = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        let v_name = u32_at(types, off).ok_or_else(bad)?;
                        let lo = u32_at(types, off + 4).ok_or_else(bad)?;
                        let hi = u32_at(types, off + 8).ok_or_else(bad)?;
                        off += 12;
                        variants.push((v_name, ((u64::from(hi) << 32) | u64::from(lo)) as i64));
                    }
                    Type::Enum { variants }
                }
                KIND_FUNC_PROTO => {
                    off += 8 * vlen;
                    Type::Other
                }
                KIND_DATASEC => {
                    off += 12 * vlen;
                    Type::Other
                }
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    Type::Alias(size_or_type)
                }
                KIND_FUNC => Type::Func(name_off),
                // PTR, FWD, FLOAT: nothing follows the header.
                2 | 7 | 16 => Type::Other,
                _ => return Err(bad()),
            };
            self.types.push(ty);
        }
        self.strings.extend_from_slice(own_strings);
        if base {
            self.base_types = self.types.len();
            self.base_strings = self.strings.len();
        }
        Ok(())
    }

    fn name(&self, off: u32) -> &[u8] {
        cstr(&self.strings, off)
    }

    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            match self.types.get(id as usize)? {
                Type::Alias(next) => id = *next,
                t => return Some(t),
            }
        }
        None
    }

    /// The first struct or union of this name that has members (not a
    /// forward declaration).
    fn composite(&self, name: &str) -> Option<u32> {
        self.types
            .iter()
            .position(|t| {
                matches!(t, Type::Composite { name: n, members, .. }
                if !members.is_empty() && self.name(*n) == name.as_bytes())
            })
            .and_then(|id| u32::try_from(id).ok())
    }

    /// Byte offset of a member path inside a named struct, e.g.
    /// `("nf_conn", &["tuplehash"])`. Anonymous unions and structs are
    /// searched through.
    pub fn offset_of(&self, type_name: &str, path: &[&str]) -> Result<u32, BtfError> {
        let missing = || BtfError::NoField(format!("struct {type_name}.{}", path.join(".")));
        let mut id = self.composite(type_name).ok_or_else(missing)?;
        let mut total_bits = 0u32;
        for field in path {
            let (bits, next) = self.find_member(id, field).ok_or_else(missing)?;
            total_bits = total_bits.saturating_add(bits);
            id = next;
        }
        Ok(total_bits / 8)
    }

    fn find_member(&self, id: u32, field: &str) -> Option<(u32, u32)> {
        let Type::Composite { members, .. } = self.resolve(id)? else {
            return None;
        };
        for m in members {
            if self.name(m.name) == field.as_bytes() {
                return Some((m.bit_offset, m.type_id));
            }
        }
        for m in members.iter().filter(|m| self.name(m.name).is_empty()) {
            if let Some((bits, ty)) = self.find_member(m.type_id, field) {
                return Some((m.bit_offset.saturating_add(bits), ty));
            }
        }
        None
    }

    /// Size in bytes of a named struct or union.
    pub fn size_of(&self, type_name: &str) -> Result<u32, BtfError> {
        let id = self
            .composite(type_name)
            .ok_or_else(|| BtfError::NoField(format!("struct {type_name}")))?;
        match self.resolve(id) {
            Some(Type::Composite { size, .. }) => Ok(*size),
            _ => Err(BtfError::NoField(format!("struct {type_name}"))),
        }
    }

    /// The BTF id of a function, and whether it is in the module's split BTF
    /// (ids past vmlinux's) rather than in vmlinux.
    pub fn function(&self, name: &str) -> Option<(u32, bool)> {
        let id = self
            .types
            .iter()
            .position(|t| matches!(t, Type::Func(n) if self.name(*n) == name.as_bytes()))?;
        Some((u32::try_from(id).ok()?, id >= self.base_types))
    }

    /// The BTF id of a function of `module` (a kernel module, whose split
    /// BTF continues vmlinux's ids), and whether it is in that module
    /// rather than in vmlinux (a built-in module). The nf_conntrack module
    /// is already read; another is read now, its types numbered after
    /// vmlinux's as the kernel numbers them.
    pub fn module_function(
        &self,
        module: &str,
        name: &str,
    ) -> Result<Option<(u32, bool)>, BtfError> {
        match self.function(name) {
            Some((id, false)) => return Ok(Some((id, false))),
            Some((id, true)) if module == "nf_conntrack" => return Ok(Some((id, true))),
            _ if module == "nf_conntrack" => return Ok(None),
            _ => {}
        }
        let path = format!("/sys/kernel/btf/{module}");
        let Ok(data) = std::fs::read(&path) else {
            return Ok(None);
        };
        let mut split = Self {
            // Placeholders: only the module's own types are looked at.
            types: vec![Type::Other; self.base_types],
            strings: self
                .strings
                .get(..self.base_strings)
                .unwrap_or_default()
                .to_vec(),
            base_types: self.base_types,
            base_strings: self.base_strings,
        };
        split.parse(&data, module)?;
        Ok(split.function(name).filter(|(_, in_module)| *in_module))
    }

    /// The value of an enumerator, searched in every enum.
    pub fn enum_value(&self, variant: &str) -> Option<i64> {
        self.types.iter().find_map(|t| match t {
            Type::Enum { variants } => variants
                .iter()
                .find(|(n, _)| self.name(*n) == variant.as_bytes())
                .map(|(_, v)| *v),
            _ => None,
        })
    }

    /// Everything the programs need, or the first missing piece by name.
    pub fn conntrack_offsets(&self) -> Result<Offsets, BtfError> {
        let optional = |r: Result<u32, BtfError>| r.unwrap_or(ABSENT);
        let ext_id = |name: &str| {
            self.enum_value(name)
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(ABSENT)
        };
        let mut o = Offsets {
            skb_nfct: self.offset_of("sk_buff", &["_nfct"])?,
            ct_status: self.offset_of("nf_conn", &["status"])?,
            ct_timeout: self.offset_of("nf_conn", &["timeout"])?,
            ct_mark: optional(self.offset_of("nf_conn", &["mark"])),
            ct_zone: optional(self.offset_of("nf_conn", &["zone", "id"])),
            ct_net: self.offset_of("nf_conn", &["ct_net", "net"])?,
            net_inum: self.offset_of("net", &["ns", "inum"])?,
            ct_ext: self.offset_of("nf_conn", &["ext"])?,
            ct_tcp_state: optional(self.offset_of("nf_conn", &["proto", "tcp", "state"])),
            ct_tuplehash: self.offset_of("nf_conn", &["tuplehash"])?,
            tuplehash_size: self.size_of("nf_conntrack_tuple_hash")?,
            hash_tuple: self.offset_of("nf_conntrack_tuple_hash", &["tuple"])?,
            tuple_src_u3: self.offset_of("nf_conntrack_tuple", &["src", "u3"])?,
            tuple_src_u: self.offset_of("nf_conntrack_tuple", &["src", "u"])?,
            tuple_src_l3num: self.offset_of("nf_conntrack_tuple", &["src", "l3num"])?,
            tuple_dst_u3: self.offset_of("nf_conntrack_tuple", &["dst", "u3"])?,
            tuple_dst_u: self.offset_of("nf_conntrack_tuple", &["dst", "u"])?,
            tuple_dst_protonum: self.offset_of("nf_conntrack_tuple", &["dst", "protonum"])?,
            ext_offset: optional(self.offset_of("nf_ct_ext", &["offset"])),
            ext_acct_id: ext_id("NF_CT_EXT_ACCT"),
            ext_tstamp_id: ext_id("NF_CT_EXT_TSTAMP"),
            event_ct: optional(self.offset_of("nf_ct_event", &["ct"])),
            ..Offsets::default()
        };
        // The programs copy the entry's first bytes in one read and take
        // each field from the copy: every field must lie in the copy.
        let tuple_end = o
            .ct_tuplehash
            .saturating_add(o.tuplehash_size.saturating_mul(2));
        // The scalar fields the programs read, with their widths (which are
        // also their natural alignments).
        let scalars = [
            (o.ct_status, 8),
            (o.ct_timeout, 4),
            (o.ct_mark, 4),
            (o.ct_zone, 2),
            (o.ct_net, 8),
            (o.ct_ext, 8),
            (o.ct_tcp_state, 1),
        ];
        let field_end = scalars
            .into_iter()
            .filter(|(off, _)| *off != ABSENT)
            .map(|(off, width)| off.saturating_add(width))
            .chain([tuple_end])
            .max()
            .unwrap_or(0);
        if field_end > CT_COPY_MAX {
            return Err(BtfError::NoField(format!(
                "struct nf_conn fields within its first {CT_COPY_MAX} bytes (they end at {field_end})"
            )));
        }
        // The programs read each field with a load of its own width (and a
        // tuple's addresses as four 32-bit words): the kernel lays them out
        // naturally aligned, which this checks rather than assumes.
        let tuple = |field: u32| {
            o.ct_tuplehash
                .saturating_add(o.hash_tuple)
                .saturating_add(field)
        };
        let tuple_fields = [
            (o.tuplehash_size, 4),
            (tuple(o.tuple_src_u3), 4),
            (tuple(o.tuple_dst_u3), 4),
            (tuple(o.tuple_src_u), 2),
            (tuple(o.tuple_dst_u), 2),
            (tuple(o.tuple_src_l3num), 2),
        ];
        if let Some((off, align)) = scalars
            .into_iter()
            .chain(tuple_fields)
            .find(|(off, align)| *off != ABSENT && off % align != 0)
        {
            return Err(BtfError::NoField(format!(
                "naturally aligned struct nf_conn fields (one of {align} bytes is at {off})"
            )));
        }
        o.ct_size = self.size_of("nf_conn")?.clamp(field_end, CT_COPY_MAX);
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob with `struct pair { int a; union { int b; int c; }; }`.
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0pair\0a\0b\0c\0E\0V1\0".to_vec();
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                types.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int (name "int" at 1), size 4, encoding word.
        push(&[1, KIND_INT << 24, 4, 32]);
        // 2: anonymous union { b; c } size 4.
        push(&[0, (KIND_UNION << 24) | 2, 4, 12, 1, 0, 14, 1, 0]);
        // 3: struct pair { a @0; <anon> @32 } size 8.
        push(&[5, (KIND_STRUCT << 24) | 2, 8, 10, 1, 0, 0, 2, 32]);
        // 4: enum E { V1 = 7 }.
        push(&[16, (KIND_ENUM << 24) | 1, 4, 18, 7]);
        let mut blob = Vec::new();
        blob.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        blob.extend_from_slice(&[1, 0]);
        for w in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            blob.extend_from_slice(&w.to_le_bytes());
        }
        blob.extend_from_slice(&types);
        blob.extend_from_slice(&strings);
        blob
    }

    fn parsed(blob: &[u8]) -> Result<KernelBtf, BtfError> {
        let mut btf = KernelBtf::default();
        btf.parse(blob, "sample")?;
        Ok(btf)
    }

    #[test]
    fn offsets_through_anonymous_unions_and_enums() {
        let btf = parsed(&sample()).expect("parses");
        assert_eq!(btf.offset_of("pair", &["a"]), Ok(0));
        assert_eq!(btf.offset_of("pair", &["c"]), Ok(4));
        assert_eq!(btf.size_of("pair"), Ok(8));
        assert_eq!(btf.enum_value("V1"), Some(7));
        assert!(matches!(
            btf.offset_of("pair", &["z"]),
            Err(BtfError::NoField(_))
        ));
    }

    #[test]
    fn truncated_or_corrupt_blobs_are_errors_not_panics() {
        let blob = sample();
        for cut in 0..blob.len() {
            let _ = parsed(&blob[..cut]);
        }
        for i in 0..blob.len() {
            let mut b = blob.clone();
            b[i] ^= 0xff;
            let _ = parsed(&b);
        }
        assert!(parsed(&blob[..10]).is_err());
    }

    #[test]
    fn the_running_kernel_has_every_offset_the_programs_need() {
        // Real kernel BTF: the host (6.18, nf_conntrack built in) and the
        // qemu guests (nf_conntrack a module with split BTF).
        let btf = KernelBtf::load_running().expect("kernel BTF");
        let o = btf.conntrack_offsets().expect("offsets");
        // struct nf_conn starts with its refcount and lock; tuplehash
        // follows, and the two directions are one tuple_hash apart.
        assert!(o.ct_tuplehash > 0 && o.tuplehash_size >= 40, "{o:?}");
        assert_eq!(o.tuple_src_u3, 0);
        assert_ne!(o.ext_acct_id, ABSENT);
        // The whole entry fits the programs' one copy, fields included.
        assert!(o.ct_size > o.ct_status && o.ct_size <= 512, "{o:?}");
        assert_eq!(Ok(o.ct_size), btf.size_of("nf_conn"));
    }

    #[test]
    fn the_fentry_targets_are_functions_of_the_running_kernel() {
        // The host has nf_conntrack built in: its functions are in vmlinux
        // BTF (in the guests they are in the module's split BTF, which the
        // guest suite attaches to).
        let btf = KernelBtf::load_running().expect("kernel BTF");
        for name in ["__nf_conntrack_hash_insert", "nf_ct_delete"] {
            let (id, in_module) = btf.function(name).expect(name);
            assert!(id > 0, "{name}");
            assert_eq!(
                in_module,
                std::path::Path::new("/sys/kernel/btf/nf_conntrack").exists()
            );
        }
        assert_eq!(btf.function("no_such_function_here"), None);
        // A struct is not a function.
        assert_eq!(btf.function("nf_conn"), None);
        // The UPDATE hook, in nf_conntrack_netlink: built in here or a
        // module with its own split BTF (the guests).
        let module = std::path::Path::new("/sys/kernel/btf/nf_conntrack_netlink").exists();
        let found = btf
            .module_function("nf_conntrack_netlink", "ctnetlink_conntrack_event")
            .expect("parses");
        assert!(
            matches!(found, Some((id, in_module)) if id > 0 && in_module == module),
            "{found:?}"
        );
        assert_eq!(
            btf.module_function("nf_conntrack_netlink", "no_such_function_here"),
            Ok(None)
        );
        // The entry an event is about is nf_ct_event's first member.
        assert_eq!(btf.conntrack_offsets().expect("offsets").event_ct, 0);
    }
}
