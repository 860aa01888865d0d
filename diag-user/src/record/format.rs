//! The recording file format: a file header, then self-delimiting,
//! checksummed frames. Pure: encoding and parsing work on byte slices.
//!
//! ```text
//! file header (16 bytes): "DIAGREC\0" | version u16 LE | 6 reserved bytes
//! frame header (16 bytes): sync u32 LE (FRAME_SYNC) | kind u8 | flags u8 |
//!                          reserved u16 | len u32 LE | crc32 u32 LE
//! payload (len bytes, zstd-compressed when flags & COMPRESSED)
//! ```
//!
//! The checksum covers the header's kind, flags and length, and the stored
//! payload. A reader that meets a bad checksum skips that frame and goes on
//! at the next sync marker (the length may be the damaged part); one that
//! meets garbage searches for the next sync marker; a length that runs past
//! the end of the file is a damaged length when a frame starts later, and
//! a truncation (how much is missing is reported) when none does.
//! Everything before and after the damage still reads.
//!
//! Bounds a reader can rely on, whatever the file holds (the writer keeps
//! to them; a frame beyond them is damage): a stored frame is at most
//! [`MAX_FRAME`] bytes, its payload at most [`MAX_PAYLOAD`] bytes once
//! decompressed and at most [`MAX_RATIO`] times its stored size, an Events
//! payload at most [`MAX_EVENTS_PAYLOAD`] bytes.
//!
//! The Header frame comes first and again as the second frame, and every
//! [`HEADER_EVERY`] of recording, so that one damaged frame never leaves a
//! file without its header (readers of format version 1 skip the copies,
//! so the layout and the version are unchanged).

use std::fmt;

pub const FILE_MAGIC: &[u8; 8] = b"DIAGREC\0";
/// The format version this build writes. Readers read every version up to
/// and including it.
///
/// - 1: TCP state, reset, retransmit and socket events, OOM kills, stalls,
///   exits, tables, health, OOM context.
/// - 2: adds the TCP drop (listen queues and drop reasons), connection
///   close and failed-connect events. A version-1 reader refuses these
///   files ("use a newer diag") rather than skipping what it cannot read.
/// - 3: adds scheduler frames ([`FrameKind::Sched`]: every process's
///   run-queue waits each second, when stalls are recorded) and pressure
///   frames ([`FrameKind::Pressure`]: PSI once a second). Files of
///   versions 1 and 2 read as before.
/// - 4: adds block I/O frames ([`FrameKind::Block`]: per device and per
///   process, once a second, when block I/O is recorded) and slow-I/O
///   events (kind 50); memory frames ([`FrameKind::Memory`]: memory stalls
///   and swap once a second) and memory stall events (kind 40); lock-wait
///   events (kind 60) and lock frames ([`FrameKind::Locks`]: futex waits
///   per process and per lock once a second, when lock events are
///   recorded). Files of versions 1 to 3 read as before.
pub const VERSION: u16 = 4;
pub const FILE_HEADER_LEN: usize = 16;
pub const FRAME_SYNC: u32 = 0xD1A6_F4A3;
pub const FRAME_HEADER_LEN: usize = 16;
/// No frame is bigger than this; a larger length is damage.
pub const MAX_FRAME: u32 = 64 << 20;
/// No payload is bigger than this once decompressed; a frame that expands
/// further is damage (and is never expanded further).
pub const MAX_PAYLOAD: usize = 64 << 20;
/// A compressed payload expands to at most this many times its stored
/// size. zstd can make 4 stored bytes of 128 KiB of zeros; diag's real
/// frames compress about 10 times (events) to 20 times (socket tables).
/// The writer stores a payload that would compress better uncompressed.
/// With it, what a file can expand to is bounded by its size.
pub const MAX_RATIO: usize = 1024;
/// The writer's Events frames hold at most this many payload bytes.
pub const MAX_EVENTS_PAYLOAD: usize = 1 << 20;
/// The largest zstd window a reader accepts (2^26 = [`MAX_PAYLOAD`]).
pub const WINDOW_LOG_MAX: u32 = 26;
/// The Header frame is written again this often (and as the second frame).
pub const HEADER_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
pub const COMPRESSED: u8 = 1;

/// What a frame holds.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// JSON [`super::RecordingHeader`]: host facts, probes, names.
    Header = 1,
    /// Raw kernel events: repeated (u16 LE length, record bytes).
    Events = 2,
    /// JSON health counters at a moment (drops, map-full).
    Health = 3,
    /// JSON socket table rows at a moment (seed and reconciliation).
    Table = 4,
    /// JSON process table at a moment.
    Procs = 5,
    /// JSON end marker: the recording was finished cleanly.
    End = 6,
    /// JSON [`super::OomContextFrame`]: an OOM kill's user-space context.
    OomContext = 7,
    /// JSON [`super::SchedFrame`]: every process's run-queue waits over
    /// one interval (log2 buckets), recorded with stalls (version 3).
    Sched = 8,
    /// JSON [`crate::aggregate::pressure::PressureFrame`]: pressure stall
    /// information (PSI) of the host and its cgroups over one interval
    /// (version 3: a reader that does not know it skips it, as damage).
    Pressure = 9,
    /// JSON [`crate::aggregate::block::BlockFrame`]: block I/O per device
    /// and per process over one interval (version 4).
    Block = 11,
    /// JSON [`crate::aggregate::memory::MemInterval`]: memory stalls and
    /// swap per process, per memory cgroup and host-wide over one interval
    /// (version 4).
    Memory = 10,
    /// JSON [`crate::aggregate::lock::LockFrame`]: futex waits per process
    /// and the most contended locks with their holders over one interval
    /// (version 4).
    Locks = 12,
}

impl TryFrom<u8> for FrameKind {
    type Error = u8;
    fn try_from(v: u8) -> Result<Self, u8> {
        Ok(match v {
            1 => FrameKind::Header,
            2 => FrameKind::Events,
            3 => FrameKind::Health,
            4 => FrameKind::Table,
            5 => FrameKind::Procs,
            6 => FrameKind::End,
            7 => FrameKind::OomContext,
            8 => FrameKind::Sched,
            9 => FrameKind::Pressure,
            11 => FrameKind::Block,
            10 => FrameKind::Memory,
            12 => FrameKind::Locks,
            other => return Err(other),
        })
    }
}

/// The 16-byte file header.
pub fn file_header() -> [u8; FILE_HEADER_LEN] {
    let mut h = [0u8; FILE_HEADER_LEN];
    h[..8].copy_from_slice(FILE_MAGIC);
    h[8..10].copy_from_slice(&VERSION.to_le_bytes());
    h
}

/// Why a file cannot be read at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    NotARecording,
    TooNew(u16),
    Empty,
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::NotARecording => {
                write!(f, "this is not a diag recording (no DIAGREC header)")
            }
            HeaderError::TooNew(v) => write!(
                f,
                "this recording uses format version {v}, newer than this diag reads ({VERSION}): use a newer diag"
            ),
            HeaderError::Empty => write!(f, "the file is empty or shorter than a recording header"),
        }
    }
}

/// Check the file header; returns the format version.
pub fn check_file_header(b: &[u8]) -> Result<u16, HeaderError> {
    if b.len() < FILE_HEADER_LEN {
        return Err(if b.len() >= 8 && &b[..8] != FILE_MAGIC {
            HeaderError::NotARecording
        } else {
            HeaderError::Empty
        });
    }
    if &b[..8] != FILE_MAGIC {
        return Err(HeaderError::NotARecording);
    }
    let v = u16::from_le_bytes([b[8], b[9]]);
    if v == 0 || v > VERSION {
        return Err(HeaderError::TooNew(v));
    }
    Ok(v)
}

/// Encode one frame. Payloads over 512 bytes are compressed when `compress`.
pub fn encode_frame(kind: FrameKind, payload: &[u8], compress: bool) -> Vec<u8> {
    let (flags, stored) = if compress && payload.len() > 512 {
        match zstd::bulk::compress(payload, 3) {
            Ok(c) if c.len() < payload.len() && c.len() * MAX_RATIO >= payload.len() => {
                (COMPRESSED, c)
            }
            _ => (0, payload.to_vec()),
        }
    } else {
        (0, payload.to_vec())
    };
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + stored.len());
    out.extend_from_slice(&FRAME_SYNC.to_le_bytes());
    out.push(kind as u8);
    out.push(flags);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(stored.len() as u32).to_le_bytes());
    let crc = frame_crc(&out[4..12], &stored);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&stored);
    out
}

/// The checksum covers the header's kind, flags and length, and the
/// stored payload.
fn frame_crc(header_middle: &[u8], stored: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(header_middle);
    h.update(stored);
    h.finalize()
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub payload: Vec<u8>,
    /// Byte offset of the frame in the file.
    pub offset: u64,
}

/// Something wrong in the file, and what the reader did about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// A frame's checksum did not match: the frame was skipped.
    BadChecksum { offset: u64, len: u32 },
    /// Bytes that are not a frame were skipped to the next sync marker.
    Garbage { offset: u64, skipped: u64 },
    /// A frame whose payload could not be decompressed was skipped.
    BadPayload { offset: u64, why: String },
    /// A frame of a kind this build does not know was skipped.
    UnknownKind { offset: u64, kind: u8 },
    /// The file ends in the middle of a frame.
    Truncated { offset: u64, missing: u64 },
    /// A frame's length runs past the end of the file (or over
    /// [`MAX_FRAME`]) but another frame starts later: the length was
    /// damaged; skipped to that frame.
    BadLength { offset: u64, len: u32, skipped: u64 },
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Damage::BadChecksum { offset, len } => {
                write!(
                    f,
                    "frame at byte {offset} ({len} bytes) has a bad checksum: skipped"
                )
            }
            Damage::Garbage { offset, skipped } => {
                write!(
                    f,
                    "{skipped} unreadable bytes at byte {offset}: skipped to the next frame"
                )
            }
            Damage::BadPayload { offset, why } => write!(
                f,
                "frame at byte {offset} cannot be decoded ({why}): skipped"
            ),
            Damage::UnknownKind { offset, kind } => {
                write!(
                    f,
                    "frame at byte {offset} is of unknown kind {kind} (newer diag?): skipped"
                )
            }
            Damage::Truncated { offset, missing } => write!(
                f,
                "the file is truncated: the frame at byte {offset} lacks {missing} bytes (diag was killed, or the file was cut)"
            ),
            Damage::BadLength {
                offset,
                len,
                skipped,
            } => write!(
                f,
                "frame at byte {offset} has a damaged length ({len} bytes, past the end of the file or over the largest frame): skipped {skipped} bytes to the next frame"
            ),
        }
    }
}

/// One step of parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Frame(Frame),
    Damage(Damage),
}

/// Incremental frame parser over a buffer that holds the file from
/// `base` on (without the file header).
pub struct Parser {
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    base: u64,
    pos: usize,
}

fn find_sync(b: &[u8]) -> Option<usize> {
    let sync = FRAME_SYNC.to_le_bytes();
    b.windows(4).position(|w| w == sync)
}

impl Parser {
    pub fn new(base: u64) -> Self {
        Parser {
            buf: Vec::new(),
            base,
            pos: 0,
        }
    }

    /// The file offset parsing has reached.
    pub fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// Add the next bytes of the file.
    pub fn feed(&mut self, more: &[u8]) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.base += self.pos as u64;
            self.pos = 0;
        }
        self.buf.extend_from_slice(more);
    }

    /// The next frame or damage, or None when more input is needed.
    /// Call [`Parser::finish`] at the end of the file.
    pub fn next_item(&mut self) -> Option<Item> {
        {
            let rest = &self.buf[self.pos..];
            let offset = self.base + self.pos as u64;
            if rest.len() < 4 {
                return None;
            }
            if rest[..4] != FRAME_SYNC.to_le_bytes() {
                // Skip to the next sync marker (keep 3 bytes: it may start there).
                return match find_sync(rest) {
                    Some(n) => {
                        self.pos += n;
                        Some(Item::Damage(Damage::Garbage {
                            offset,
                            skipped: n as u64,
                        }))
                    }
                    None => {
                        let n = rest.len().saturating_sub(3);
                        if n == 0 {
                            return None;
                        }
                        self.pos += n;
                        Some(Item::Damage(Damage::Garbage {
                            offset,
                            skipped: n as u64,
                        }))
                    }
                };
            }
            if rest.len() < FRAME_HEADER_LEN {
                return None;
            }
            let kind = rest[4];
            let flags = rest[5];
            let len = u32::from_le_bytes(rest[8..12].try_into().expect("4 bytes"));
            let crc = u32::from_le_bytes(rest[12..16].try_into().expect("4 bytes"));
            if len > MAX_FRAME {
                // A damaged header: resync past this marker.
                self.pos += 1;
                let skipped = find_sync(&self.buf[self.pos..]).map(|n| n + 1);
                match skipped {
                    Some(n) => {
                        self.pos += n - 1;
                        return Some(Item::Damage(Damage::BadLength {
                            offset,
                            len,
                            skipped: n as u64,
                        }));
                    }
                    None => {
                        self.pos -= 1;
                        return None;
                    }
                }
            }
            let total = FRAME_HEADER_LEN + len as usize;
            if rest.len() < total {
                return None;
            }
            let stored = &rest[FRAME_HEADER_LEN..total];
            if frame_crc(&rest[4..12], stored) != crc {
                // The length may be the damaged part: resync from the next
                // marker after this header rather than trusting it.
                let after = &rest[4..];
                let jump = find_sync(after).map(|n| n + 4).unwrap_or(total).min(total);
                self.pos += jump;
                return Some(Item::Damage(Damage::BadChecksum { offset, len }));
            }
            self.pos += total;
            let kind = match FrameKind::try_from(kind) {
                Ok(k) => k,
                Err(k) => return Some(Item::Damage(Damage::UnknownKind { offset, kind: k })),
            };
            let payload = if flags & COMPRESSED != 0 {
                match decompress(stored) {
                    Ok(p) => p,
                    Err(why) => return Some(Item::Damage(Damage::BadPayload { offset, why })),
                }
            } else {
                stored.to_vec()
            };
            Some(Item::Frame(Frame {
                kind,
                payload,
                offset,
            }))
        }
    }

    /// At the end of the file: what is left over is a truncated frame (or
    /// garbage), or a frame with a damaged length when another frame starts
    /// after its header: then the parser goes on there, and
    /// [`Parser::next_item`] has more to give (call both until both say
    /// None).
    pub fn finish(&mut self) -> Option<Damage> {
        let rest = &self.buf[self.pos..];
        if rest.is_empty() {
            return None;
        }
        let offset = self.base + self.pos as u64;
        if rest.len() >= FRAME_HEADER_LEN
            && rest[..4] == FRAME_SYNC.to_le_bytes()
            && let Some(n) = find_sync(&rest[4..])
        {
            let len = u32::from_le_bytes(rest[8..12].try_into().expect("4"));
            self.pos += n + 4;
            return Some(Damage::BadLength {
                offset,
                len,
                skipped: n as u64 + 4,
            });
        }
        let d = if rest.len() >= 4 && rest[..4] == FRAME_SYNC.to_le_bytes() {
            let need = if rest.len() >= FRAME_HEADER_LEN {
                FRAME_HEADER_LEN as u64
                    + u64::from(u32::from_le_bytes(rest[8..12].try_into().expect("4")))
            } else {
                FRAME_HEADER_LEN as u64
            };
            Damage::Truncated {
                offset,
                missing: need.saturating_sub(rest.len() as u64),
            }
        } else {
            Damage::Garbage {
                offset,
                skipped: rest.len() as u64,
            }
        };
        self.pos = self.buf.len();
        Some(d)
    }
}

/// Decompress a stored payload, expanding it no further than the format's
/// bounds ([`MAX_PAYLOAD`], [`MAX_RATIO`] times the stored size).
pub fn decompress(stored: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let limit = MAX_PAYLOAD.min(stored.len().saturating_mul(MAX_RATIO));
    let mut d = zstd::stream::read::Decoder::with_buffer(stored).map_err(|e| e.to_string())?;
    d.window_log_max(WINDOW_LOG_MAX)
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    d.take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| e.to_string())?;
    if out.len() > limit {
        return Err(format!(
            "it expands past {limit} bytes, more than a diag frame can ({} stored bytes)",
            stored.len()
        ));
    }
    Ok(out)
}

/// Parse a whole file held in memory: the version, then frames and damage.
pub fn parse_all(file: &[u8]) -> Result<(u16, Vec<Item>), HeaderError> {
    let version = check_file_header(file)?;
    let mut p = Parser::new(FILE_HEADER_LEN as u64);
    p.feed(&file[FILE_HEADER_LEN..]);
    let mut items = Vec::new();
    loop {
        while let Some(i) = p.next_item() {
            items.push(i);
        }
        match p.finish() {
            Some(d) => items.push(Item::Damage(d)),
            None => break,
        }
    }
    Ok((version, items))
}

/// The event record at `*pos` of an Events payload (advancing `pos`), None
/// at the end, or what is wrong with a malformed tail (then `pos` is at the
/// end).
pub fn next_event<'a>(payload: &'a [u8], pos: &mut usize) -> Option<Result<&'a [u8], String>> {
    let p = &payload[(*pos).min(payload.len())..];
    if p.is_empty() {
        return None;
    }
    *pos = payload.len();
    if p.len() < 2 {
        return Some(Err("a dangling byte after the last event".into()));
    }
    let n = u16::from_le_bytes([p[0], p[1]]) as usize;
    if p.len() < 2 + n {
        return Some(Err(format!(
            "an event of {n} bytes with only {} left",
            p.len() - 2
        )));
    }
    *pos = payload.len() - p.len() + 2 + n;
    Some(Ok(&p[2..2 + n]))
}

/// Split an Events payload into records; a malformed tail is reported.
pub fn split_events(payload: &[u8]) -> (Vec<&[u8]>, Option<String>) {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(r) = next_event(payload, &mut pos) {
        match r {
            Ok(rec) => out.push(rec),
            Err(e) => return (out, Some(e)),
        }
    }
    (out, None)
}

/// Append one event record to an Events payload.
pub fn push_event(payload: &mut Vec<u8>, record: &[u8]) {
    let n = record.len().min(u16::MAX as usize);
    payload.extend_from_slice(&(n as u16).to_le_bytes());
    payload.extend_from_slice(&record[..n]);
}

/// Hostile inputs for tests.
#[cfg(test)]
pub(crate) mod hostile {
    use super::*;

    /// A zstd frame that expands to `bytes` zeros: RLE blocks of 128 KiB,
    /// 4 stored bytes each (made by hand: compressing that much would take
    /// the test as long as the bomb takes a reader).
    pub fn zstd_bomb(bytes: u64) -> Vec<u8> {
        const BLOCK: u64 = 128 << 10;
        // Magic, a descriptor without content size, a 128 KiB window.
        let mut z = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x38];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(BLOCK);
            left -= n;
            let last = u32::from(left == 0);
            let h = ((n as u32) << 3) | (1 << 1) | last;
            z.extend_from_slice(&h.to_le_bytes()[..3]);
            z.push(0);
        }
        z
    }

    /// A frame with a valid checksum around any stored bytes and flags.
    pub fn raw_frame(kind: u8, flags: u8, stored: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&FRAME_SYNC.to_le_bytes());
        out.push(kind);
        out.push(flags);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(stored.len() as u32).to_le_bytes());
        let crc = frame_crc(&out[4..12], stored);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(stored);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample_file(frames: &[(FrameKind, Vec<u8>)], compress: bool) -> Vec<u8> {
        let mut f = file_header().to_vec();
        for (k, p) in frames {
            f.extend(encode_frame(*k, p, compress));
        }
        f
    }

    fn frames_of(items: &[Item]) -> Vec<(FrameKind, Vec<u8>)> {
        items
            .iter()
            .filter_map(|i| match i {
                Item::Frame(f) => Some((f.kind, f.payload.clone())),
                _ => None,
            })
            .collect()
    }

    fn damages(items: &[Item]) -> Vec<&Damage> {
        items
            .iter()
            .filter_map(|i| match i {
                Item::Damage(d) => Some(d),
                _ => None,
            })
            .collect()
    }

    fn frames() -> Vec<(FrameKind, Vec<u8>)> {
        vec![
            (FrameKind::Header, br#"{"host":"h"}"#.to_vec()),
            (FrameKind::Events, vec![7u8; 5000]),
            (FrameKind::Health, b"{}".to_vec()),
            (FrameKind::Events, (0..3000u32).map(|i| i as u8).collect()),
            (FrameKind::End, b"{}".to_vec()),
        ]
    }

    #[test]
    fn round_trip_plain_and_compressed() {
        for compress in [false, true] {
            let f = sample_file(&frames(), compress);
            let (v, items) = parse_all(&f).unwrap();
            assert_eq!(v, VERSION);
            assert_eq!(frames_of(&items), frames());
            assert!(damages(&items).is_empty());
        }
        // Compression really happens on repetitive payloads.
        assert!(sample_file(&frames(), true).len() < sample_file(&frames(), false).len() / 2);
    }

    #[test]
    fn truncated_file_keeps_everything_before() {
        let f = sample_file(&frames(), false);
        let cut = f.len() - 1;
        let (_, items) = parse_all(&f[..cut]).unwrap();
        assert_eq!(frames_of(&items), frames()[..4].to_vec());
        match damages(&items)[..] {
            [Damage::Truncated { missing, .. }] => assert_eq!(*missing, 1),
            ref d => panic!("{d:?}"),
        }
    }

    #[test]
    fn bad_checksum_is_skipped_and_the_rest_reads() {
        let mut f = sample_file(&frames(), false);
        // Flip a byte inside the second frame's payload.
        let second = FILE_HEADER_LEN + FRAME_HEADER_LEN + 12 + FRAME_HEADER_LEN + 100;
        f[second] ^= 0xff;
        let (_, items) = parse_all(&f).unwrap();
        let got = frames_of(&items);
        assert_eq!(got.len(), 4);
        assert_eq!(got[0], frames()[0]);
        assert_eq!(got[1..], frames()[2..]);
        assert!(matches!(damages(&items)[..], [Damage::BadChecksum { .. }]));
    }

    #[test]
    fn headers_are_checked() {
        assert_eq!(check_file_header(b""), Err(HeaderError::Empty));
        assert_eq!(
            check_file_header(b"hello world, not a recording"),
            Err(HeaderError::NotARecording)
        );
        let mut h = file_header();
        h[8] = 9;
        assert_eq!(check_file_header(&h), Err(HeaderError::TooNew(9)));
        assert!(HeaderError::TooNew(9).to_string().contains("newer"));
    }

    #[test]
    fn incremental_feeding_matches_whole_parsing() {
        let f = sample_file(&frames(), true);
        let mut p = Parser::new(FILE_HEADER_LEN as u64);
        let mut items = Vec::new();
        for chunk in f[FILE_HEADER_LEN..].chunks(7) {
            p.feed(chunk);
            while let Some(i) = p.next_item() {
                items.push(i);
            }
        }
        assert_eq!(p.finish(), None);
        assert_eq!(frames_of(&items), frames());
    }

    #[test]
    fn a_zstd_bomb_is_not_expanded() {
        // 4 GiB of zeros in 128 KiB of stored bytes: refused at the bound,
        // at once, without the memory.
        let bomb = hostile::zstd_bomb(4 << 30);
        assert!(bomb.len() < 140 << 10);
        let mut f = file_header().to_vec();
        f.extend(hostile::raw_frame(FrameKind::Header as u8, 0, b"{}"));
        f.extend(hostile::raw_frame(
            FrameKind::Events as u8,
            COMPRESSED,
            &bomb,
        ));
        f.extend(hostile::raw_frame(FrameKind::End as u8, 0, b"{}"));
        let t = std::time::Instant::now();
        let (_, items) = parse_all(&f).unwrap();
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
        assert_eq!(frames_of(&items).len(), 2);
        match damages(&items)[..] {
            [Damage::BadPayload { why, .. }] => assert!(why.contains("expands past"), "{why}"),
            ref d => panic!("{d:?}"),
        }
        // Under MAX_PAYLOAD but over the ratio: refused too; ordinary
        // compressed data expands.
        assert!(decompress(&hostile::zstd_bomb(1 << 20)).is_err());
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i * 7919).to_le_bytes())
            .collect();
        let c = zstd::bulk::compress(&data, 3).unwrap();
        assert_eq!(decompress(&c).unwrap(), data);
        // The writer never makes such a frame: it stores it as it is.
        let zeros = vec![0u8; 4 << 20];
        let frame = encode_frame(FrameKind::Events, &zeros, true);
        let (_, items) = parse_all(&[&file_header()[..], &frame].concat()).unwrap();
        assert_eq!(frames_of(&items), vec![(FrameKind::Events, zeros)]);
    }

    #[test]
    fn a_damaged_length_past_the_end_costs_one_frame() {
        let clean = sample_file(&frames(), true);
        let second = FILE_HEADER_LEN + FRAME_HEADER_LEN + 12;
        for bit in [20u32, 24, 25, 30] {
            let mut f = clean.clone();
            let len = u32::from_le_bytes(f[second + 8..second + 12].try_into().unwrap());
            f[second + 8..second + 12].copy_from_slice(&(len ^ (1 << bit)).to_le_bytes());
            let (_, items) = parse_all(&f).unwrap();
            let got = frames_of(&items);
            assert_eq!(got.len(), 4, "bit {bit}: {:?}", damages(&items));
            assert_eq!(got[0], frames()[0]);
            assert_eq!(got[1..], frames()[2..]);
            assert!(
                !damages(&items)
                    .iter()
                    .any(|d| matches!(d, Damage::Truncated { .. })),
                "bit {bit}: not called a truncation: {:?}",
                damages(&items)
            );
            // The same streamed in chunks, as the reader does.
            let mut p = Parser::new(FILE_HEADER_LEN as u64);
            let mut n = 0;
            for chunk in f[FILE_HEADER_LEN..].chunks(1000) {
                p.feed(chunk);
                while let Some(i) = p.next_item() {
                    n += usize::from(matches!(i, Item::Frame(_)));
                }
            }
            loop {
                while let Some(i) = p.next_item() {
                    n += usize::from(matches!(i, Item::Frame(_)));
                }
                if p.finish().is_none() {
                    break;
                }
            }
            assert_eq!(n, 4, "bit {bit} streamed");
        }
    }

    #[test]
    fn event_payloads() {
        let mut p = Vec::new();
        push_event(&mut p, b"abc");
        push_event(&mut p, b"");
        push_event(&mut p, &[1; 300]);
        let (evs, err) = split_events(&p);
        assert_eq!(evs.len(), 3);
        assert_eq!(evs[0], b"abc");
        assert_eq!(evs[2].len(), 300);
        assert!(err.is_none());
        let (evs, err) = split_events(&p[..p.len() - 1]);
        assert_eq!(evs.len(), 2);
        assert!(err.unwrap().contains("300 bytes"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Arbitrary bytes never panic the reader.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let mut f = file_header().to_vec();
            f.extend(&bytes);
            let _ = parse_all(&f);
            let _ = parse_all(&bytes);
        }

        /// A real file with bytes flipped and a random cut: never panics,
        /// and every frame it returns is one that was written.
        #[test]
        fn mutated_files_read_back_what_survives(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
            cut in any::<prop::sample::Index>(),
            compress in any::<bool>(),
        ) {
            let mut f = sample_file(&frames(), compress);
            for (i, x) in flips {
                let at = FILE_HEADER_LEN + i.index(f.len() - FILE_HEADER_LEN);
                f[at] ^= x | 1;
            }
            let end = FILE_HEADER_LEN + cut.index(f.len() - FILE_HEADER_LEN + 1);
            if let Ok((_, items)) = parse_all(&f[..end]) {
                for (k, p) in frames_of(&items) {
                    prop_assert!(frames().contains(&(k, p)));
                }
            }
        }
    }
}
