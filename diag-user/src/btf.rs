//! A small reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`): enough
//! to find struct members' byte offsets and enum values, so the kernel
//! programs read kernel structs at the running kernel's offsets (aya-ebpf
//! has no CO-RE relocations).

const MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
pub(crate) const KIND_STRUCT: u32 = 4;
pub(crate) const KIND_UNION: u32 = 5;
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
    /// Bits of a bitfield member, 0 for a whole one.
    bitfield_size: u32,
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

/// Where a member is: byte offset and size, both in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
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
                            bitfield_size: if kflag { m_off >> 24 } else { 0 },
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

    /// Size in bytes of type `id`, following typedefs and qualifiers.
    pub fn size_of(&self, id: u32) -> Option<u32> {
        let t = self.resolve(id)?;
        match t.kind {
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 | KIND_FLOAT => {
                Some(t.size_or_type)
            }
            KIND_PTR => Some(8),
            KIND_ARRAY => self.size_of(t.size_or_type).map(|s| s * t.nelems),
            _ => None,
        }
    }

    /// Byte offset of `member` in `struct strct`, which must be `size`
    /// bytes (what the kernel program reads there).
    pub fn sized_member(&self, strct: &str, member: &str, size: u32) -> Result<u32, String> {
        let f = self.member(strct, member)?;
        if f.size != size {
            return Err(format!(
                "{strct}.{member} is {} bytes, diag expects {size}",
                f.size
            ));
        }
        Ok(f.offset)
    }

    /// Byte offset and size of `member` in `struct strct` (anonymous
    /// members searched too, as C does).
    pub fn member(&self, strct: &str, member: &str) -> Result<Field, String> {
        let t = self.find_struct(strct)?;
        if self
            .members_of(t)
            .iter()
            .any(|m| m.bitfield_size != 0 && self.name(m.name_off) == member.as_bytes())
        {
            return Err(format!(
                "struct {strct} has no member {member} that is not a bitfield"
            ));
        }
        let (bits, ty) = self
            .member_bits(t, member, 0)
            .ok_or_else(|| format!("struct {strct} has no member {member}"))?;
        if !bits.is_multiple_of(8) {
            return Err(format!("{strct}.{member} is a bitfield"));
        }
        let size = self
            .size_of(ty)
            .ok_or_else(|| format!("{strct}.{member} has no size"))?;
        Ok(Field {
            offset: bits / 8,
            size,
        })
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

    /// How many arguments the raw tracepoint `name` passes to a `tp_btf`
    /// program (from the kernel's `btf_trace_<name>` typedef, a pointer to
    /// a function whose first parameter is the tracepoint's data, not an
    /// argument).
    pub fn tp_btf_args(&self, name: &str) -> Result<u32, String> {
        let typedef = format!("btf_trace_{name}");
        let t = self
            .types
            .iter()
            .find(|t| t.kind == KIND_TYPEDEF && self.name(t.name_off) == typedef.as_bytes())
            .ok_or_else(|| format!("no tracepoint {name} in the kernel's BTF"))?;
        let ptr = self
            .resolve(t.size_or_type)
            .filter(|p| p.kind == KIND_PTR)
            .ok_or_else(|| format!("{typedef} is not a function pointer"))?;
        let proto = self
            .resolve(ptr.size_or_type)
            .filter(|p| p.kind == KIND_FUNC_PROTO && p.vlen >= 1)
            .ok_or_else(|| format!("{typedef} is not a function pointer"))?;
        Ok(proto.vlen - 1)
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

/// The running kernel's BTF, for tests that read it. Where there is none:
/// in CI (`CI=true`) a loud failure, elsewhere a skip, said on stderr and
/// in the skip log `cargo xtask test` counts.
#[cfg(test)]
pub(crate) fn running_kernel_btf(test: &str) -> Option<std::path::PathBuf> {
    let path = std::path::PathBuf::from("/sys/kernel/btf/vmlinux");
    if path.exists() {
        return Some(path);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!(
            "{test}: no kernel BTF at {}, and CI must run it",
            path.display()
        );
    }
    eprintln!("SKIPPED {test}: no kernel BTF here");
    if let Some(log) = std::env::var_os("DIAG_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = writeln!(f, "{test}: no kernel BTF here");
        }
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
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

    // Scheduler layouts: a task_struct built with the same encoder the
    // scheduler tests use.

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
        pub(crate) fn ptr(&mut self, to: u32) -> u32 {
            self.raw("", KIND_PTR, 0, false, to, &[])
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
        let u64t = b.int("long long unsigned int", 8);
        let si = b.strukt(
            KIND_STRUCT,
            "sched_info",
            48,
            &[("pcount", u64t, 0, 0), ("run_delay", u64t, 64, 0)],
        );
        // The run queue's clock, through se.cfs_rq -> rq -> clock.
        let rq = b.strukt(KIND_STRUCT, "rq", 64, &[("clock", u64t, 256, 0)]);
        let rq_ptr = b.ptr(rq);
        let cfs_rq = b.strukt(KIND_STRUCT, "cfs_rq", 32, &[("rq", rq_ptr, 128, 0)]);
        let cfs_rq_ptr = b.ptr(cfs_rq);
        let se = b.strukt(
            KIND_STRUCT,
            "sched_entity",
            32,
            &[
                ("exec_start", u64t, 0, 0),
                ("sum_exec_runtime", u64t, 128, 0),
                ("cfs_rq", cfs_rq_ptr, 192, 0),
            ],
        );
        b.strukt(
            KIND_STRUCT,
            "task_struct",
            3264,
            &[
                ("__state", uint, 192, 0),
                ("flag", uint, 224, 1),
                ("se", se, 1024, 0),
                ("sched_info", si, 8192, 0),
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
    fn counts_tracepoint_arguments() {
        let mut b = Builder::new();
        let int = b.int("int", 4);
        let vptr = b.ptr(0);
        let two = b.func_proto(&[vptr, int, int]);
        let p2 = b.ptr(two);
        b.typedef("btf_trace_two", p2);
        let none = b.func_proto(&[vptr]);
        let p0 = b.ptr(none);
        b.typedef("btf_trace_none", p0);
        b.typedef("btf_trace_bad", int);
        let btf = Btf::parse(&b.build()).unwrap();
        assert_eq!(btf.tp_btf_args("two"), Ok(2));
        assert_eq!(btf.tp_btf_args("none"), Ok(0));
        assert!(
            btf.tp_btf_args("bad")
                .unwrap_err()
                .contains("not a function")
        );
        assert!(
            btf.tp_btf_args("nope")
                .unwrap_err()
                .contains("no tracepoint")
        );
    }

    #[test]
    fn reads_the_running_kernel() {
        let Some(path) = running_kernel_btf("btf::reads_the_running_kernel") else {
            return;
        };
        let btf = Btf::from_file(&path).unwrap();
        let pid = btf.member("task_struct", "pid").unwrap();
        let tgid = btf.member("task_struct", "tgid").unwrap();
        let comm = btf.member("task_struct", "comm").unwrap();
        assert_eq!((pid.size, tgid.size, comm.size), (4, 4, 16));
        assert!(pid.offset > 0 && comm.offset > 0);
        // sched_process_exit(p) or, on newer kernels, (p, group_dead).
        let n = btf.tp_btf_args("sched_process_exit").unwrap();
        assert!(n == 1 || n == 2, "{n}");
    }
}
