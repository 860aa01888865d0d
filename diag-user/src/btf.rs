//! A small reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`): enough
//! to find struct members' byte offsets and enum values, so the kernel
//! programs read kernel structs at the running kernel's offsets (aya-ebpf
//! has no CO-RE relocations).

const MAGIC: u16 = 0xeb9f;

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

#[derive(Debug, Clone, Copy)]
struct Member {
    name_off: u32,
    type_id: u32,
    /// Offset in bits.
    bit_offset: u32,
}

/// One type, compact: names are offsets into the string section, members
/// and enumerators are ranges of shared vectors (vmlinux has ~150k types).
#[derive(Debug, Clone, Copy)]
struct Type {
    kind: u32,
    name_off: u32,
    /// size, or the referenced type id, depending on kind.
    size_or_type: u32,
    /// Element count (arrays).
    nelems: u32,
    /// First member (structs, unions) or enumerator (enums).
    first: u32,
    vlen: u32,
}

/// Parsed BTF.
#[derive(Debug)]
pub struct Btf {
    /// Index 0 is the void type.
    types: Vec<Type>,
    members: Vec<Member>,
    values: Vec<(u32, i64)>,
    strings: Vec<u8>,
}

fn u16_at(b: &[u8], o: usize) -> Result<u16, String> {
    b.get(o..o + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or_else(|| "truncated".to_string())
}

fn u32_at(b: &[u8], o: usize) -> Result<u32, String> {
    b.get(o..o + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| "truncated".to_string())
}

fn section(
    b: &[u8],
    start: usize,
    len: usize,
    what: &str,
) -> Result<std::ops::Range<usize>, String> {
    let end = start
        .checked_add(len)
        .filter(|&e| e <= b.len())
        .ok_or_else(|| format!("{what} section out of bounds"))?;
    Ok(start..end)
}

impl Btf {
    pub fn from_file(path: &std::path::Path) -> Result<Btf, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Btf::parse(&bytes)
    }

    /// Parse raw (little-endian) BTF.
    pub fn parse(b: &[u8]) -> Result<Btf, String> {
        if u16_at(b, 0)? != MAGIC {
            return Err("not little-endian BTF (bad magic)".into());
        }
        let hdr_len = u32_at(b, 4)? as usize;
        let type_off = u32_at(b, 8)? as usize;
        let type_len = u32_at(b, 12)? as usize;
        let str_off = u32_at(b, 16)? as usize;
        let str_len = u32_at(b, 20)? as usize;
        let types_bytes = &b[section(b, hdr_len.saturating_add(type_off), type_len, "type")?];
        let strings = b[section(b, hdr_len.saturating_add(str_off), str_len, "string")?].to_vec();
        let mut me = Btf {
            types: vec![Type {
                kind: 0,
                name_off: 0,
                size_or_type: 0,
                nelems: 0,
                first: 0,
                vlen: 0,
            }],
            members: Vec::new(),
            values: Vec::new(),
            strings,
        };
        let mut o = 0usize;
        while o < types_bytes.len() {
            let name_off = u32_at(types_bytes, o)?;
            let info = u32_at(types_bytes, o + 4)?;
            let size_or_type = u32_at(types_bytes, o + 8)?;
            o += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = info & 0xffff;
            let kflag = info >> 31 == 1;
            let mut t = Type {
                kind,
                name_off,
                size_or_type,
                nelems: 0,
                first: 0,
                vlen,
            };
            match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => o += 4,
                KIND_ARRAY => {
                    t.size_or_type = u32_at(types_bytes, o)?;
                    t.nelems = u32_at(types_bytes, o + 8)?;
                    o += 12;
                }
                KIND_STRUCT | KIND_UNION => {
                    t.first = me.members.len() as u32;
                    for _ in 0..vlen {
                        let m_off = u32_at(types_bytes, o + 8)?;
                        me.members.push(Member {
                            name_off: u32_at(types_bytes, o)?,
                            type_id: u32_at(types_bytes, o + 4)?,
                            bit_offset: if kflag { m_off & 0xff_ffff } else { m_off },
                        });
                        o += 12;
                    }
                }
                KIND_ENUM => {
                    t.first = me.values.len() as u32;
                    for _ in 0..vlen {
                        let v = u32_at(types_bytes, o + 4)? as i32;
                        me.values.push((u32_at(types_bytes, o)?, i64::from(v)));
                        o += 8;
                    }
                }
                KIND_ENUM64 => {
                    t.first = me.values.len() as u32;
                    for _ in 0..vlen {
                        let lo = u32_at(types_bytes, o + 4)?;
                        let hi = u32_at(types_bytes, o + 8)?;
                        let v = ((u64::from(hi) << 32) | u64::from(lo)) as i64;
                        me.values.push((u32_at(types_bytes, o)?, v));
                        o += 12;
                    }
                }
                KIND_FUNC_PROTO => o += 8 * vlen as usize,
                KIND_DATASEC => o += 12 * vlen as usize,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => {}
                other => return Err(format!("unknown BTF kind {other}")),
            }
            me.types.push(t);
        }
        Ok(me)
    }

    fn name(&self, off: u32) -> &[u8] {
        let Some(rest) = self.strings.get(off as usize..) else {
            return &[];
        };
        let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
        &rest[..end]
    }

    fn members_of(&self, t: &Type) -> &[Member] {
        if t.kind != KIND_STRUCT && t.kind != KIND_UNION {
            return &[];
        }
        let a = t.first as usize;
        self.members.get(a..a + t.vlen as usize).unwrap_or(&[])
    }

    /// The (first complete) struct of this name.
    fn find_struct(&self, name: &str) -> Result<&Type, String> {
        self.types
            .iter()
            .find(|t| {
                t.kind == KIND_STRUCT && t.vlen > 0 && self.name(t.name_off) == name.as_bytes()
            })
            .ok_or_else(|| format!("no struct {name} in the kernel's BTF"))
    }

    /// Skip typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let t = self.types.get(id as usize)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => return Some(t),
            }
        }
        None
    }

    /// Bit offset and type of `name` in `t`, looking into anonymous members.
    fn member_bits(&self, t: &Type, name: &str, depth: u32) -> Option<(u32, u32)> {
        let members = self.members_of(t);
        if let Some(m) = members
            .iter()
            .find(|m| self.name(m.name_off) == name.as_bytes())
        {
            return Some((m.bit_offset, m.type_id));
        }
        if depth > 4 {
            return None;
        }
        for m in members.iter().filter(|m| self.name(m.name_off).is_empty()) {
            let inner = self.resolve(m.type_id)?;
            if let Some((off, ty)) = self.member_bits(inner, name, depth + 1) {
                return Some((m.bit_offset + off, ty));
            }
        }
        None
    }

    /// Byte offset of a member path such as `memory.usage` in `struct`.
    pub fn offset(&self, strct: &str, path: &str) -> Result<u32, String> {
        let mut t = self.find_struct(strct)?;
        let mut bits = 0u32;
        for part in path.split('.') {
            let (off, ty) = self
                .member_bits(t, part, 0)
                .ok_or_else(|| format!("struct {strct} has no member {path}"))?;
            bits += off;
            t = self
                .resolve(ty)
                .ok_or_else(|| format!("cannot resolve the type of {strct}.{path}"))?;
        }
        if !bits.is_multiple_of(8) {
            return Err(format!("{strct}.{path} is a bitfield"));
        }
        Ok(bits / 8)
    }

    /// Element count of an array member (e.g. `css_set.subsys`).
    pub fn array_len(&self, strct: &str, member: &str) -> Result<u32, String> {
        let t = self.find_struct(strct)?;
        let (_, ty) = self
            .member_bits(t, member, 0)
            .ok_or_else(|| format!("struct {strct} has no member {member}"))?;
        let t = self.resolve(ty).ok_or("cannot resolve array type")?;
        if t.kind != KIND_ARRAY {
            return Err(format!("{strct}.{member} is not an array"));
        }
        Ok(t.nelems)
    }

    /// Value of an enumerator, e.g. `memory_cgrp_id`.
    pub fn enum_value(&self, name: &str) -> Result<i64, String> {
        self.values
            .iter()
            .find(|(n, _)| self.name(*n) == name.as_bytes())
            .map(|(_, v)| *v)
            .ok_or_else(|| format!("no enumerator {name} in the kernel's BTF"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny BTF blob: `struct s { int a; struct { long b; }; int c[3]; }`
    /// (the inner struct anonymous) and `enum e { X = 4 }`.
    fn blob() -> Vec<u8> {
        let strings = b"\0s\0a\0b\0c\0int\0long\0e\0X\0".to_vec();
        let off = |n: &str| {
            let pat = format!("\0{n}\0");
            strings
                .windows(pat.len())
                .position(|w| w == pat.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut t = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                t.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int
        push(&[off("int"), KIND_INT << 24, 4, 32]);
        // 2: long
        push(&[off("long"), KIND_INT << 24, 8, 64]);
        // 3: anonymous struct { long b; }
        push(&[0, (KIND_STRUCT << 24) | 1, 8, off("b"), 2, 0]);
        // 4: int[3]
        push(&[0, KIND_ARRAY << 24, 0, 1, 1, 3]);
        // 5: struct s
        push(&[
            off("s"),
            (KIND_STRUCT << 24) | 3,
            32,
            off("a"),
            1,
            0,
            0,
            3,
            64,
            off("c"),
            4,
            128,
        ]);
        // 6: enum e { X = 4 }
        push(&[off("e"), (KIND_ENUM << 24) | 1, 4, off("X"), 4]);
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.extend_from_slice(&[1, 0]); // version, flags
        for w in [
            24u32,
            0,
            t.len() as u32,
            t.len() as u32,
            strings.len() as u32,
        ] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        b.extend_from_slice(&t);
        b.extend_from_slice(&strings);
        b
    }

    #[test]
    fn offsets_enums_and_arrays() {
        let btf = Btf::parse(&blob()).unwrap();
        assert_eq!(btf.offset("s", "a"), Ok(0));
        assert_eq!(
            btf.offset("s", "b"),
            Ok(8),
            "found through the anonymous member"
        );
        assert_eq!(btf.offset("s", "c"), Ok(16));
        assert_eq!(btf.array_len("s", "c"), Ok(3));
        assert!(btf.array_len("s", "a").is_err());
        assert_eq!(btf.enum_value("X"), Ok(4));
        assert!(btf.enum_value("Y").is_err());
        assert!(btf.offset("s", "zz").unwrap_err().contains("no member"));
        assert!(btf.offset("nope", "a").unwrap_err().contains("no struct"));
    }

    #[test]
    fn rejects_bad_input() {
        assert!(Btf::parse(&[]).is_err());
        assert!(Btf::parse(&[0; 24]).unwrap_err().contains("magic"));
        let mut b = blob();
        b.truncate(40);
        assert!(Btf::parse(&b).is_err());
        let mut b = blob();
        b[24 + 7] = 30; // an unknown kind in the first type's info
        assert!(Btf::parse(&b).is_err());
    }
}
