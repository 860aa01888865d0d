//! A small reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`): enough
//! to find struct members' byte offsets and enum values, so the kernel
//! programs read kernel structs at the running kernel's offsets (aya-ebpf
//! has no CO-RE relocations).

use std::collections::HashMap;

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

#[derive(Debug, Clone)]
struct Member {
    name: String,
    type_id: u32,
    /// Offset in bits.
    bit_offset: u32,
}

#[derive(Debug, Clone)]
struct Type {
    kind: u32,
    name: String,
    /// size, or the referenced type id, depending on kind.
    size_or_type: u32,
    members: Vec<Member>,
    /// Enum values.
    values: Vec<(String, i64)>,
    /// Element count (arrays).
    nelems: u32,
}

/// Parsed BTF: types by id, and struct / enum names to ids.
#[derive(Debug)]
pub struct Btf {
    /// Index 0 is the void type.
    types: Vec<Type>,
    structs: HashMap<String, u32>,
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

fn str_at(strings: &[u8], off: u32) -> String {
    let Some(rest) = strings.get(off as usize..) else {
        return String::new();
    };
    let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end]).into_owned()
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
        let types_bytes = b
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or("type section out of bounds")?;
        let strings = b
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or("string section out of bounds")?;
        let mut types = vec![Type {
            kind: 0,
            name: String::new(),
            size_or_type: 0,
            members: vec![],
            values: vec![],
            nelems: 0,
        }];
        let mut structs = HashMap::new();
        let mut o = 0usize;
        while o < types_bytes.len() {
            let name_off = u32_at(types_bytes, o)?;
            let info = u32_at(types_bytes, o + 4)?;
            let size_or_type = u32_at(types_bytes, o + 8)?;
            o += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kflag = info >> 31 == 1;
            let mut t = Type {
                kind,
                name: str_at(strings, name_off),
                size_or_type,
                members: vec![],
                values: vec![],
                nelems: 0,
            };
            match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => o += 4,
                KIND_ARRAY => {
                    t.size_or_type = u32_at(types_bytes, o)?;
                    t.nelems = u32_at(types_bytes, o + 8)?;
                    o += 12;
                }
                KIND_STRUCT | KIND_UNION => {
                    for _ in 0..vlen {
                        let m_name = u32_at(types_bytes, o)?;
                        let m_type = u32_at(types_bytes, o + 4)?;
                        let m_off = u32_at(types_bytes, o + 8)?;
                        t.members.push(Member {
                            name: str_at(strings, m_name),
                            type_id: m_type,
                            bit_offset: if kflag { m_off & 0xff_ffff } else { m_off },
                        });
                        o += 12;
                    }
                }
                KIND_ENUM => {
                    for _ in 0..vlen {
                        let v_name = u32_at(types_bytes, o)?;
                        let v = u32_at(types_bytes, o + 4)? as i32;
                        t.values.push((str_at(strings, v_name), i64::from(v)));
                        o += 8;
                    }
                }
                KIND_ENUM64 => {
                    for _ in 0..vlen {
                        let v_name = u32_at(types_bytes, o)?;
                        let lo = u32_at(types_bytes, o + 4)?;
                        let hi = u32_at(types_bytes, o + 8)?;
                        let v = ((u64::from(hi) << 32) | u64::from(lo)) as i64;
                        t.values.push((str_at(strings, v_name), v));
                        o += 12;
                    }
                }
                KIND_FUNC_PROTO => o += 8 * vlen,
                KIND_DATASEC => o += 12 * vlen,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => {}
                other => return Err(format!("unknown BTF kind {other}")),
            }
            let id = types.len() as u32;
            if kind == KIND_STRUCT && !t.name.is_empty() && !t.members.is_empty() {
                structs.entry(t.name.clone()).or_insert(id);
            }
            types.push(t);
        }
        Ok(Btf { types, structs })
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

    /// Bit offset of `name` in `t`, looking into anonymous members.
    fn member_bits(&self, t: &Type, name: &str, depth: u32) -> Option<(u32, u32)> {
        for m in &t.members {
            if m.name == name {
                return Some((m.bit_offset, m.type_id));
            }
        }
        if depth > 4 {
            return None;
        }
        for m in t.members.iter().filter(|m| m.name.is_empty()) {
            let inner = self.resolve(m.type_id)?;
            if let Some((off, ty)) = self.member_bits(inner, name, depth + 1) {
                return Some((m.bit_offset + off, ty));
            }
        }
        None
    }

    /// Byte offset of a member path such as `memory.usage` in `struct`.
    pub fn offset(&self, strct: &str, path: &str) -> Result<u32, String> {
        let id = *self
            .structs
            .get(strct)
            .ok_or_else(|| format!("no struct {strct} in the kernel's BTF"))?;
        let mut t = self
            .types
            .get(id as usize)
            .ok_or_else(|| format!("bad type id {id}"))?;
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
        let id = *self
            .structs
            .get(strct)
            .ok_or_else(|| format!("no struct {strct} in the kernel's BTF"))?;
        let t = self
            .types
            .get(id as usize)
            .ok_or_else(|| format!("bad type id {id}"))?;
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
        self.types
            .iter()
            .filter(|t| t.kind == KIND_ENUM || t.kind == KIND_ENUM64)
            .flat_map(|t| t.values.iter())
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .ok_or_else(|| format!("no enumerator {name} in the kernel's BTF"))
    }

    /// Whether a type (e.g. the typedef `btf_trace_mark_victim`) exists.
    pub fn has_type(&self, name: &str) -> bool {
        self.types.iter().any(|t| t.name == name)
    }
}
