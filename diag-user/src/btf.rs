//! A small reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`): just
//! enough to find a struct's members, their offsets and sizes, so the
//! kernel programs read `task_struct` fields at the running kernel's
//! offsets (aya-ebpf has no CO-RE relocations, and aya-obj's `Btf` does not
//! expose members).
//!
//! Format: `include/uapi/linux/btf.h` and the kernel's `Documentation/bpf/btf.rst`.

use std::collections::HashMap;

const MAGIC: u16 = 0xeb9f;

// BTF kinds.
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

#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    name: String,
    type_id: u32,
    /// Offset in bits from the start of the struct.
    bit_offset: u32,
    /// Non-zero for a bitfield.
    bitfield_size: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Type {
    /// int, enum, float, struct, union: something with a size.
    Sized {
        size: u32,
    },
    Struct {
        name: String,
        size: u32,
        members: Vec<Member>,
    },
    Array {
        elem: u32,
        len: u32,
    },
    /// typedef, const, volatile, restrict, type tag: refers to `to`.
    Alias {
        to: u32,
    },
    Ptr,
    Other,
}

/// Types of one BTF blob, indexed by type id (id 0 is `void`).
#[derive(Debug, Clone)]
pub struct Btf {
    types: Vec<Type>,
    structs: HashMap<String, u32>,
}

/// Where a member is: byte offset and size, both in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, String> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or_else(|| format!("truncated at byte {at}"))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, String> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| format!("truncated at byte {at}"))
}

fn string_at(strings: &[u8], off: u32) -> Result<String, String> {
    let s = strings
        .get(off as usize..)
        .ok_or_else(|| format!("string offset {off} out of range"))?;
    let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
    Ok(String::from_utf8_lossy(&s[..end]).into_owned())
}

impl Btf {
    /// Read and parse a BTF file.
    pub fn from_file(path: &std::path::Path) -> Result<Btf, String> {
        let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Btf::parse(&data).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parse a little-endian BTF blob (split BTF is not needed for vmlinux).
    pub fn parse(data: &[u8]) -> Result<Btf, String> {
        if u16_at(data, 0)? != MAGIC {
            return Err("not BTF (bad magic, or big-endian)".into());
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let types_at = hdr_len
            .checked_add(type_off)
            .ok_or("bad header: type section offset")?;
        let strs_at = hdr_len
            .checked_add(str_off)
            .ok_or("bad header: string section offset")?;
        let tsec = data
            .get(types_at..types_at.saturating_add(type_len))
            .filter(|s| s.len() == type_len)
            .ok_or("type section out of range")?;
        let strings = data
            .get(strs_at..strs_at.saturating_add(str_len))
            .filter(|s| s.len() == str_len)
            .ok_or("string section out of range")?;

        let mut types = vec![Type::Other]; // id 0: void
        let mut structs = HashMap::new();
        let mut at = 0usize;
        while at < tsec.len() {
            let name_off = u32_at(tsec, at)?;
            let info = u32_at(tsec, at + 4)?;
            let size_or_type = u32_at(tsec, at + 8)?;
            at += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            let ty = match kind {
                KIND_INT => {
                    at += 4;
                    Type::Sized { size: size_or_type }
                }
                KIND_ENUM => {
                    at += 8 * vlen;
                    Type::Sized { size: size_or_type }
                }
                KIND_ENUM64 => {
                    at += 12 * vlen;
                    Type::Sized { size: size_or_type }
                }
                KIND_FLOAT => Type::Sized { size: size_or_type },
                KIND_PTR => Type::Ptr,
                KIND_ARRAY => {
                    let elem = u32_at(tsec, at)?;
                    let len = u32_at(tsec, at + 8)?;
                    at += 12;
                    Type::Array { elem, len }
                }
                KIND_STRUCT | KIND_UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        let m_name = u32_at(tsec, at)?;
                        let m_type = u32_at(tsec, at + 4)?;
                        let m_off = u32_at(tsec, at + 8)?;
                        at += 12;
                        let (bit_offset, bitfield_size) = if kind_flag {
                            (m_off & 0x00ff_ffff, m_off >> 24)
                        } else {
                            (m_off, 0)
                        };
                        members.push(Member {
                            name: string_at(strings, m_name)?,
                            type_id: m_type,
                            bit_offset,
                            bitfield_size,
                        });
                    }
                    let name = string_at(strings, name_off)?;
                    if kind == KIND_STRUCT && !name.is_empty() {
                        structs.entry(name.clone()).or_insert(types.len() as u32);
                    }
                    Type::Struct {
                        name,
                        size: size_or_type,
                        members,
                    }
                }
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    Type::Alias { to: size_or_type }
                }
                KIND_FWD | KIND_FUNC => Type::Other,
                KIND_FUNC_PROTO => {
                    at += 8 * vlen;
                    Type::Other
                }
                KIND_VAR | KIND_DECL_TAG => {
                    at += 4;
                    Type::Other
                }
                KIND_DATASEC => {
                    at += 12 * vlen;
                    Type::Other
                }
                other => return Err(format!("unknown BTF kind {other} (newer kernel?)")),
            };
            types.push(ty);
        }
        if at != tsec.len() {
            return Err("type section ends inside a type".into());
        }
        Ok(Btf { types, structs })
    }

    /// Size in bytes of type `id`, following typedefs and qualifiers.
    pub fn size_of(&self, mut id: u32) -> Option<u32> {
        for _ in 0..32 {
            match self.types.get(id as usize)? {
                Type::Sized { size } | Type::Struct { size, .. } => return Some(*size),
                Type::Ptr => return Some(8),
                Type::Array { elem, len } => return self.size_of(*elem).map(|s| s * len),
                Type::Alias { to } => id = *to,
                Type::Other => return None,
            }
        }
        None
    }

    /// Offset and size of `member` in `struct name`, searching anonymous
    /// struct and union members too (as C does).
    pub fn member(&self, name: &str, member: &str) -> Result<Field, String> {
        let id = *self
            .structs
            .get(name)
            .ok_or_else(|| format!("no struct {name} in the kernel's BTF"))?;
        let (bits, ty) = self
            .find(id, member, 0)
            .ok_or_else(|| format!("struct {name} has no member {member}"))?;
        if bits % 8 != 0 {
            return Err(format!("{name}.{member} is a bitfield"));
        }
        let size = self
            .size_of(ty)
            .ok_or_else(|| format!("{name}.{member} has no size"))?;
        Ok(Field {
            offset: bits / 8,
            size,
        })
    }

    fn find(&self, id: u32, member: &str, depth: u32) -> Option<(u32, u32)> {
        if depth > 8 {
            return None;
        }
        let Type::Struct { members, .. } = self.resolve(id)? else {
            return None;
        };
        for m in members {
            if m.name == member && m.bitfield_size == 0 {
                return Some((m.bit_offset, m.type_id));
            }
        }
        for m in members.iter().filter(|m| m.name.is_empty()) {
            if let Some((bits, ty)) = self.find(m.type_id, member, depth + 1) {
                return Some((m.bit_offset + bits, ty));
            }
        }
        None
    }

    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            match self.types.get(id as usize)? {
                Type::Alias { to } => id = *to,
                t => return Some(t),
            }
        }
        None
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Build a BTF blob from (kind, name, info-vlen, size_or_type, extra words).
    pub(crate) struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl Builder {
        pub(crate) fn new() -> Self {
            Builder {
                types: Vec::new(),
                strings: vec![0],
                next_id: 1,
            }
        }
        fn s(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            off
        }
        fn raw(
            &mut self,
            name: &str,
            kind: u32,
            vlen: u32,
            kflag: bool,
            st: u32,
            extra: &[u32],
        ) -> u32 {
            let n = self.s(name);
            let info = (kind << 24) | vlen | if kflag { 1 << 31 } else { 0 };
            for w in [n, info, st].iter().chain(extra) {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
            self.next_id += 1;
            self.next_id - 1
        }
        pub(crate) fn int(&mut self, name: &str, size: u32) -> u32 {
            self.raw(name, KIND_INT, 0, false, size, &[size * 8])
        }
        pub(crate) fn typedef(&mut self, name: &str, to: u32) -> u32 {
            self.raw(name, KIND_TYPEDEF, 0, false, to, &[])
        }
        pub(crate) fn array(&mut self, elem: u32, index: u32, len: u32) -> u32 {
            self.raw("", KIND_ARRAY, 0, false, 0, &[elem, index, len])
        }
        pub(crate) fn func_proto(&mut self, params: &[u32]) -> u32 {
            let mut extra = Vec::new();
            for p in params {
                extra.extend([0, *p]);
            }
            self.raw("", KIND_FUNC_PROTO, params.len() as u32, false, 0, &extra)
        }
        /// members: (name, type, bit offset, bitfield size)
        pub(crate) fn strukt(
            &mut self,
            kind: u32,
            name: &str,
            size: u32,
            members: &[(&str, u32, u32, u32)],
        ) -> u32 {
            let kflag = members.iter().any(|m| m.3 != 0);
            let mut extra = Vec::new();
            for (mname, ty, off, bits) in members {
                let n = self.s(mname);
                let o = if kflag { (bits << 24) | off } else { *off };
                extra.extend([n, *ty, o]);
            }
            self.raw(name, kind, members.len() as u32, kflag, size, &extra)
        }
        pub(crate) fn build(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&MAGIC.to_le_bytes());
            out.push(1); // version
            out.push(0); // flags
            for w in [
                24u32,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&w.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// A miniature `task_struct`: `__state`, then an anonymous struct
    /// (as randstruct builds make) holding pid and tgid, a bitfield, comm.
    pub(crate) fn task_btf() -> Vec<u8> {
        let mut b = Builder::new();
        let int = b.int("int", 4);
        let uint = b.int("unsigned int", 4);
        let pid_t = b.typedef("pid_t", int);
        let ch = b.int("char", 1);
        let comm = b.array(ch, int, 16);
        b.func_proto(&[int, uint]);
        let anon = b.strukt(
            KIND_STRUCT,
            "",
            8,
            &[("pid", pid_t, 0, 0), ("tgid", pid_t, 32, 0)],
        );
        let u = b.strukt(KIND_UNION, "", 8, &[("", anon, 0, 0), ("both", int, 0, 0)]);
        b.strukt(
            KIND_STRUCT,
            "task_struct",
            3264,
            &[
                ("__state", uint, 192, 0),
                ("flag", uint, 224, 1),
                ("", u, 10112, 0),
                ("comm", comm, 14016, 0),
            ],
        );
        b.build()
    }

    #[test]
    fn finds_task_struct_members() {
        let btf = Btf::parse(&task_btf()).unwrap();
        assert_eq!(
            btf.member("task_struct", "__state"),
            Ok(Field {
                offset: 24,
                size: 4
            })
        );
        assert_eq!(
            btf.member("task_struct", "pid"),
            Ok(Field {
                offset: 1264,
                size: 4
            })
        );
        assert_eq!(
            btf.member("task_struct", "tgid"),
            Ok(Field {
                offset: 1268,
                size: 4
            })
        );
        assert_eq!(
            btf.member("task_struct", "comm"),
            Ok(Field {
                offset: 1752,
                size: 16
            })
        );
        assert!(
            btf.member("task_struct", "flag")
                .unwrap_err()
                .contains("no member")
        );
        assert!(
            btf.member("task_struct", "nope")
                .unwrap_err()
                .contains("no member")
        );
        assert!(
            btf.member("sock", "x")
                .unwrap_err()
                .contains("no struct sock")
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(&[]).is_err());
        assert!(Btf::parse(&[0x9f, 0xeb, 1, 0]).is_err());
        assert!(Btf::parse(b"hello world, this is not BTF at all").is_err());
        let mut good = task_btf();
        good.truncate(good.len() - 20);
        assert!(Btf::parse(&good).is_err(), "truncated");
        let mut bad_kind = task_btf();
        bad_kind[24 + 7] = 30; // first type's kind byte
        assert!(
            Btf::parse(&bad_kind)
                .unwrap_err()
                .contains("unknown BTF kind")
        );
    }

    #[test]
    fn reads_the_running_kernel() {
        let path = std::path::Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            eprintln!("no kernel BTF here; skipped");
            return;
        }
        let btf = Btf::from_file(path).unwrap();
        let pid = btf.member("task_struct", "pid").unwrap();
        let tgid = btf.member("task_struct", "tgid").unwrap();
        let comm = btf.member("task_struct", "comm").unwrap();
        assert_eq!((pid.size, tgid.size, comm.size), (4, 4, 16));
        assert!(pid.offset > 0 && comm.offset > 0);
    }
}
