//! Reading recordings, streaming, reporting damage instead of failing.

use std::{
    collections::VecDeque,
    fs::File,
    io::{Read, Seek, SeekFrom},
    path::{Path, PathBuf},
};

use diag_common::user::{AnyEvent, decode};
use thiserror::Error;

use super::{
    EndFrame, OomContextFrame, ProcsFrame, RecordingHeader, TableFrame,
    format::{
        Damage, FILE_HEADER_LEN, Frame, FrameKind, HeaderError, Item, Parser, VERSION,
        check_file_header, next_event,
    },
};
use crate::bus::Health;

#[derive(Debug, Error)]
pub enum ReadError {
    #[error("cannot open the recording {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    Header { path: String, what: HeaderError },
    #[error("{path}: the recording has no readable header frame ({why}); it is not usable")]
    NoHeader { path: String, why: String },
    #[error("reading {path} failed: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// One thing read from a recording, in file order.
#[derive(Debug, Clone)]
pub enum Record {
    Events(Vec<AnyEvent>),
    Health(Health),
    Table(TableFrame),
    Procs(ProcsFrame),
    OomContext(OomContextFrame),
    /// Run-queue waits over one interval (version 3).
    Sched(super::SchedFrame),
    /// Pressure stall information over one interval (version 3).
    Pressure(Box<crate::aggregate::pressure::PressureFrame>),
    /// Block I/O over one interval (version 4).
    Block(Box<crate::aggregate::block::BlockFrame>),
    /// Memory stalls and swap over one interval (version 4).
    Memory(Box<crate::aggregate::memory::MemInterval>),
    /// Lock waits over one interval (version 4).
    Locks(Box<crate::aggregate::lock::LockFrame>),
    End(EndFrame),
    /// Something could not be read; the words say what and where.
    Damage(String),
}

/// A recording opened for reading.
pub struct Reader {
    path: PathBuf,
    file: File,
    parser: Parser,
    queue: VecDeque<Record>,
    eof: bool,
    /// The Events frame being handed out in chunks.
    events: Option<PendingEvents>,
    clock: TimeCheck,
    pub header: RecordingHeader,
    pub version: u16,
    /// Damage seen so far (also yielded as `Record::Damage`).
    pub damage: Vec<Damage>,
    /// Event records of unknown kinds skipped.
    pub unknown_events: u64,
    /// Events and frames dropped for their impossible times (also
    /// yielded as `Record::Damage`).
    pub out_of_time: u64,
    /// Whether an End frame was seen (a clean finish).
    pub ended: bool,
}

const CHUNK: usize = 1 << 20;

/// At most this many events in one `Record::Events`, whatever a frame
/// holds: what a reader hands on at once is bounded.
pub const EVENTS_PER_RECORD: usize = 4096;

/// A time this far after the newest time read so far is impossible in a
/// recording (diag writes health frames every second) and is damage:
/// dropped, not fed to views that step through time. A host that was
/// suspended longer resumes its recording at the second health frame
/// after the jump.
pub const MAX_JUMP_NS: u64 = 10 * 60 * 1_000_000_000;

/// Times this long before the header's start are impossible too (the
/// header is made before anything is traced).
pub const BEFORE_START_NS: u64 = 60 * 1_000_000_000;

/// No time read is later than this (a hundred years after boot): what is
/// is damage, and every time handed on leaves room for arithmetic.
pub const MAX_TS_NS: u64 = 100 * 365 * 86_400 * 1_000_000_000;

/// How far into a file whose first 16 bytes are damaged a readable Header
/// frame is looked for before saying it is not a recording.
const RECOVER_SCAN: u64 = 4 << 20;

/// An Events frame's payload and how far it was handed out.
struct PendingEvents {
    payload: Vec<u8>,
    pos: usize,
    offset: u64,
    tail: Option<String>,
    early: u64,
    far: u64,
    first_far: Option<(u64, u64)>,
}

/// Whether a time read is plausible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Ok,
    Early,
    /// This far after the newest time so far.
    Far(u64),
}

/// The recording's time so far, to tell impossible times.
#[derive(Debug, Default)]
struct TimeCheck {
    lo: u64,
    latest: Option<u64>,
    /// A health frame's time after a jump: a second one close after it
    /// makes the jump real (a suspended host).
    jumped: Option<u64>,
}

impl TimeCheck {
    fn new(header: &RecordingHeader) -> TimeCheck {
        TimeCheck {
            lo: header.started_ts_ns.saturating_sub(BEFORE_START_NS),
            latest: None,
            jumped: None,
        }
    }

    fn check(&mut self, ts: u64) -> Verdict {
        if ts < self.lo {
            return Verdict::Early;
        }
        if ts > MAX_TS_NS {
            return Verdict::Far(ts - self.latest.unwrap_or(self.lo).min(ts));
        }
        match self.latest {
            Some(l) if ts > l.saturating_add(MAX_JUMP_NS) => Verdict::Far(ts - l),
            Some(l) => {
                self.latest = Some(l.max(ts));
                Verdict::Ok
            }
            None => {
                self.latest = Some(ts);
                Verdict::Ok
            }
        }
    }

    /// A health frame after a jump: true when it confirms an earlier one
    /// (the clock really jumped); then times go on from it.
    fn confirm_jump(&mut self, ts: u64) -> bool {
        match self.jumped {
            Some(j) if ts > j && ts - j <= MAX_JUMP_NS => {
                self.latest = Some(ts);
                self.jumped = None;
                true
            }
            _ => {
                self.jumped = Some(ts);
                false
            }
        }
    }
}

/// What looking for the Header frame found.
enum HeaderSearch {
    /// The header, and whether it was the first frame.
    Found(Box<RecordingHeader>, bool, u64),
    /// No readable header, but other intact frames.
    OnlyOthers,
    /// Nothing readable; why.
    Nothing(String),
}

fn ns_words(ns: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(ns / 1_000_000_000)).to_string()
}

impl Reader {
    pub fn open(path: &Path) -> Result<Reader, ReadError> {
        let p = path.display().to_string();
        let io = |source| ReadError::Io {
            path: p.clone(),
            source,
        };
        let mut file = File::open(path).map_err(|source| ReadError::Open {
            path: p.clone(),
            source,
        })?;
        let mut head = [0u8; FILE_HEADER_LEN];
        let mut got = 0;
        while got < FILE_HEADER_LEN {
            let n = file.read(&mut head[got..]).map_err(io)?;
            if n == 0 {
                break;
            }
            got += n;
        }
        let mut notes = Vec::new();
        // A damaged magic or version (not one a newer diag would write)
        // is forgiven when intact frames follow.
        let (version, damaged_head) = match check_file_header(&head[..got]) {
            Ok(v) => (v, None),
            Err(what @ (HeaderError::NotARecording | HeaderError::TooNew(_)))
                if got == FILE_HEADER_LEN
                    && !matches!(what, HeaderError::TooNew(v) if (VERSION + 1..=255).contains(&v)) =>
            {
                (VERSION, Some(what))
            }
            Err(what) => return Err(ReadError::Header { path: p, what }),
        };
        let mut r = Reader {
            path: path.to_path_buf(),
            file,
            parser: Parser::new(FILE_HEADER_LEN as u64),
            queue: VecDeque::new(),
            eof: false,
            events: None,
            clock: TimeCheck::default(),
            header: RecordingHeader::default(),
            version,
            damage: Vec::new(),
            unknown_events: 0,
            out_of_time: 0,
            ended: false,
        };
        let limit = damaged_head.as_ref().map(|_| RECOVER_SCAN);
        let found = r.find_header(limit).map_err(io)?;
        if let Some(what) = damaged_head {
            if !matches!(found, HeaderSearch::Found(..)) {
                return Err(ReadError::Header { path: p, what });
            }
            notes.push(format!(
                "{p}: the file's first {FILE_HEADER_LEN} bytes are damaged ({what}), but its frames are intact: read as a recording"
            ));
        }
        let rewind = match found {
            HeaderSearch::Found(h, first, offset) => {
                r.header = *h;
                if !first {
                    notes.push(format!(
                        "{p}: the header frame is damaged: its copy at byte {offset} was used"
                    ));
                }
                !first
            }
            HeaderSearch::OnlyOthers => {
                notes.push(format!(
                    "{p}: no readable header frame: the host's facts are unknown, and times are shown as if the host booted in 1970"
                ));
                true
            }
            HeaderSearch::Nothing(why) => return Err(ReadError::NoHeader { path: p, why }),
        };
        if rewind {
            // Read again from the first frame: what came before the
            // header's copy is data too.
            match r.file.seek(SeekFrom::Start(FILE_HEADER_LEN as u64)) {
                Ok(_) => {
                    r.parser = Parser::new(FILE_HEADER_LEN as u64);
                    r.eof = false;
                }
                Err(e) => notes.push(format!(
                    "{p}: cannot read it again from the start ({e}): what comes before the header's copy is skipped"
                )),
            }
        }
        r.clock = TimeCheck::new(&r.header);
        r.queue.extend(notes.into_iter().map(Record::Damage));
        Ok(r)
    }

    /// Read on until a readable Header frame (or `limit` bytes).
    fn find_header(&mut self, limit: Option<u64>) -> std::io::Result<HeaderSearch> {
        let mut first = true;
        let mut others = false;
        let mut why = None;
        while let Some(item) = self.next_item()? {
            match item {
                Item::Frame(f) if f.kind == FrameKind::Header => {
                    match serde_json::from_slice(&f.payload) {
                        Ok(h) => return Ok(HeaderSearch::Found(Box::new(h), first, f.offset)),
                        Err(e) => {
                            why.get_or_insert_with(|| e.to_string());
                        }
                    }
                }
                Item::Frame(f) => {
                    others = true;
                    why.get_or_insert_with(|| format!("the first frame is {:?}", f.kind));
                }
                Item::Damage(d) => {
                    why.get_or_insert_with(|| d.to_string());
                }
            }
            first = false;
            if limit.is_some_and(|l| self.parser.offset() > l) {
                break;
            }
        }
        Ok(if others {
            HeaderSearch::OnlyOthers
        } else {
            HeaderSearch::Nothing(why.unwrap_or_else(|| "the file ends before it".into()))
        })
    }

    fn next_item(&mut self) -> std::io::Result<Option<Item>> {
        loop {
            if let Some(i) = self.parser.next_item() {
                return Ok(Some(i));
            }
            if self.eof {
                return Ok(self.parser.finish().map(Item::Damage));
            }
            let mut buf = vec![0u8; CHUNK];
            let n = self.file.read(&mut buf)?;
            if n == 0 {
                self.eof = true;
            } else {
                self.parser.feed(&buf[..n]);
            }
        }
    }

    /// A timed frame's verdict: None to hand it on, or the damage words.
    /// A once-a-second frame of JSON `T`: read, checked by `damage`, its
    /// time (`ts`) checked against the recording's clock, then `wrap`ped;
    /// anything wrong is damage in one sentence naming `what`.
    fn checked<T: serde::de::DeserializeOwned>(
        &mut self,
        f: &Frame,
        what: &str,
        damage: impl FnOnce(&T) -> Option<String>,
        ts: impl FnOnce(&T) -> u64,
        wrap: impl FnOnce(T) -> Record,
    ) -> Record {
        let v: T = match serde_json::from_slice(&f.payload) {
            Ok(v) => v,
            Err(e) => {
                return Record::Damage(format!(
                    "{what} frame at byte {} is unreadable ({e}): skipped",
                    f.offset
                ));
            }
        };
        if let Some(why) = damage(&v) {
            return Record::Damage(format!(
                "{what} frame at byte {} is damaged ({why}): skipped",
                f.offset
            ));
        }
        match self.timed(what, f.offset, ts(&v), false) {
            None => wrap(v),
            Some(d) => Record::Damage(d),
        }
    }

    fn timed(&mut self, what: &str, offset: u64, ts: u64, health: bool) -> Option<String> {
        match self.clock.check(ts) {
            Verdict::Ok => None,
            Verdict::Far(by) if health && ts <= MAX_TS_NS && self.clock.confirm_jump(ts) => {
                self.queue.push_back(Record::Damage(format!(
                    "{}: the recording's clock jumps forward by {} at byte {offset} (was the host suspended?): read on from there",
                    self.path.display(),
                    ns_words(by)
                )));
                None
            }
            v => {
                self.out_of_time += 1;
                let when = match v {
                    Verdict::Far(by) => {
                        format!("{} after the recording's latest time", ns_words(by))
                    }
                    _ => "before the recording started".to_string(),
                };
                Some(format!(
                    "{}: {what} frame at byte {offset} is dated {when}: skipped",
                    self.path.display()
                ))
            }
        }
    }

    /// The next chunk of the pending Events frame; damage words go to the
    /// queue once the frame is done.
    fn events_chunk(&mut self) -> Option<Vec<AnyEvent>> {
        let p = self.events.as_mut()?;
        let mut evs = Vec::new();
        let mut done = false;
        while evs.len() < EVENTS_PER_RECORD {
            match next_event(&p.payload, &mut p.pos) {
                None => {
                    done = true;
                    break;
                }
                Some(Err(t)) => p.tail = Some(t),
                Some(Ok(raw)) => match decode(raw) {
                    Ok(e) => {
                        let ts = e.header().ts_ns;
                        match self.clock.check(ts) {
                            Verdict::Ok => evs.push(e),
                            Verdict::Early => p.early += 1,
                            Verdict::Far(by) => {
                                p.far += 1;
                                p.first_far.get_or_insert((ts, by));
                            }
                        }
                    }
                    Err(_) => self.unknown_events += 1,
                },
            }
        }
        if done {
            let p = self.events.take().expect("pending");
            let at = format!("{}: events frame at byte {}", self.path.display(), p.offset);
            if let Some(t) = p.tail {
                self.queue.push_back(Record::Damage(format!("{at}: {t}")));
            }
            if p.early > 0 {
                self.out_of_time += p.early;
                self.queue.push_back(Record::Damage(format!(
                    "{at}: {} events dated before the recording started: skipped",
                    p.early
                )));
            }
            if let Some((ts, by)) = p.first_far {
                self.out_of_time += p.far;
                self.queue.push_back(Record::Damage(format!(
                    "{at}: {} events dated impossibly late (the first at {ts} ns, {} after the recording's latest time): skipped",
                    p.far,
                    ns_words(by)
                )));
            }
        }
        Some(evs)
    }

    /// A frame as a record, or None when it has nothing to hand on.
    fn convert(&mut self, f: Frame) -> Option<Record> {
        let bad = |what: &str, e: serde_json::Error| {
            Record::Damage(format!(
                "{what} frame at byte {} is unreadable ({e}): skipped",
                f.offset
            ))
        };
        fn json<T: serde::de::DeserializeOwned>(f: &Frame, what: &str) -> Result<T, String> {
            serde_json::from_slice(&f.payload).map_err(|e| {
                format!(
                    "{what} frame at byte {} is unreadable ({e}): skipped",
                    f.offset
                )
            })
        }
        let rec = match f.kind {
            FrameKind::Events => {
                self.events = Some(PendingEvents {
                    payload: f.payload,
                    pos: 0,
                    offset: f.offset,
                    tail: None,
                    early: 0,
                    far: 0,
                    first_far: None,
                });
                return None;
            }
            FrameKind::Health => match json::<Health>(&f, "health") {
                Ok(h) => match self.timed("health", f.offset, h.ts_ns, true) {
                    None => Record::Health(h),
                    Some(d) => Record::Damage(d),
                },
                Err(d) => Record::Damage(d),
            },
            FrameKind::Table => match json::<TableFrame>(&f, "table") {
                Ok(t) => match self.timed("table", f.offset, t.ts_ns, false) {
                    None => Record::Table(t),
                    Some(d) => Record::Damage(d),
                },
                Err(d) => Record::Damage(d),
            },
            FrameKind::Procs => serde_json::from_slice(&f.payload)
                .map(Record::Procs)
                .unwrap_or_else(|e| bad("process", e)),
            FrameKind::OomContext => match json::<OomContextFrame>(&f, "OOM context") {
                Ok(c) => match self.timed("OOM context", f.offset, c.ts_ns, false) {
                    None => Record::OomContext(c),
                    Some(d) => Record::Damage(d),
                },
                Err(d) => Record::Damage(d),
            },
            FrameKind::Sched => self.checked(
                &f,
                "scheduler",
                |s: &super::SchedFrame| s.damage(),
                |s| s.ts_ns,
                Record::Sched,
            ),
            FrameKind::Pressure => self.checked(
                &f,
                "pressure",
                |p: &crate::aggregate::pressure::PressureFrame| p.damage(),
                |p| p.ts_ns,
                |p| Record::Pressure(Box::new(p)),
            ),
            FrameKind::Block => self.checked(
                &f,
                "block I/O",
                |b: &crate::aggregate::block::BlockFrame| b.check().err(),
                |b| b.ts_ns,
                |b| Record::Block(Box::new(b)),
            ),
            FrameKind::Memory => self.checked(
                &f,
                "memory",
                |m: &crate::aggregate::memory::MemInterval| m.damage(),
                |m| m.end_ns,
                |m| Record::Memory(Box::new(m)),
            ),
            FrameKind::Locks => self.checked(
                &f,
                "lock",
                |l: &crate::aggregate::lock::LockFrame| l.check().err(),
                |l| l.ts_ns,
                |l| Record::Locks(Box::new(l)),
            ),
            FrameKind::End => {
                self.ended = true;
                serde_json::from_slice(&f.payload)
                    .map(Record::End)
                    .unwrap_or_else(|e| bad("end", e))
            }
            // The header's copies (and rotated files concatenated).
            FrameKind::Header => return None,
        };
        Some(rec)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Iterator for Reader {
    type Item = Record;
    fn next(&mut self) -> Option<Record> {
        loop {
            if let Some(r) = self.queue.pop_front() {
                return Some(r);
            }
            if let Some(evs) = self.events_chunk() {
                if evs.is_empty() {
                    continue;
                }
                return Some(Record::Events(evs));
            }
            match self.next_item() {
                Ok(Some(Item::Frame(f))) => {
                    if let Some(r) = self.convert(f) {
                        return Some(r);
                    }
                }
                Ok(Some(Item::Damage(d))) => {
                    let words = format!("{}: {d}", self.path.display());
                    self.damage.push(d);
                    return Some(Record::Damage(words));
                }
                Ok(None) => return None,
                Err(e) => {
                    self.eof = true;
                    return Some(Record::Damage(format!(
                        "reading {} failed: {e}",
                        self.path.display()
                    )));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{
        format::{self, COMPRESSED, encode_frame, file_header, hostile, push_event},
        writer::{Writer, WriterOptions},
    };
    use diag_common::{
        EventHeader, EventKind,
        tcp::{AF_INET, TcpStateEvent, attribution, state},
    };
    use proptest::prelude::*;

    const S: u64 = 1_000_000_000;

    fn ev(ts: u64, sk: u64) -> AnyEvent {
        let mut h = EventHeader::zeroed();
        h.kind = EventKind::TcpState as u32;
        h.ts_ns = ts;
        h.pid = 7;
        h.tgid = 7;
        AnyEvent::TcpState(TcpStateEvent {
            header: h,
            skaddr: sk,
            in_old_state_ns: 0,
            saddr: [0; 16],
            daddr: [0; 16],
            sport: 1,
            dport: 2,
            family: AF_INET,
            old_state: state::CLOSE,
            new_state: state::SYN_SENT,
            attribution: attribution::SYSCALL,
            err_known: 0,
            _pad: [0; 2],
            current_tgid: 7,
            netns: 0,
            listen_queue: diag_common::tcp::NO_FIELD,
            listen_backlog: diag_common::tcp::NO_FIELD,
            err: 0,
        })
    }

    fn header_at(ts: u64) -> RecordingHeader {
        RecordingHeader {
            hostname: "h".into(),
            started_ts_ns: ts,
            command_line: vec!["diag".into(), "record".into()],
            ..Default::default()
        }
    }

    fn events_payload(evs: &[AnyEvent]) -> Vec<u8> {
        let mut p = Vec::new();
        for e in evs {
            push_event(&mut p, e.to_bytes());
        }
        p
    }

    fn health(ts: u64) -> Vec<u8> {
        serde_json::to_vec(&Health {
            ts_ns: ts,
            ..Health::default()
        })
        .unwrap()
    }

    /// A temporary file, removed on drop.
    struct Tmp(PathBuf);
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn tmp_file(name: &str, bytes: &[u8]) -> Tmp {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "diag-reader-{name}-{}-{}.diag",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&p, bytes).unwrap();
        Tmp(p)
    }

    fn file_of(frames: &[(FrameKind, Vec<u8>)]) -> Vec<u8> {
        let mut f = file_header().to_vec();
        for (k, p) in frames {
            f.extend(encode_frame(*k, p, true));
        }
        f
    }

    /// Every record of a file: events, and the damage words.
    fn read_all(path: &Path) -> (Reader, Vec<AnyEvent>, Vec<String>) {
        let mut r = Reader::open(path).unwrap();
        let (mut evs, mut dmg) = (Vec::new(), Vec::new());
        for rec in r.by_ref() {
            match rec {
                Record::Events(e) => {
                    assert!(e.len() <= EVENTS_PER_RECORD);
                    evs.extend(e)
                }
                Record::Damage(d) => dmg.push(d),
                _ => {}
            }
        }
        (r, evs, dmg)
    }

    #[test]
    fn impossible_times_are_damage_and_not_handed_on() {
        let start = 100 * S;
        let f = file_of(&[
            (
                FrameKind::Header,
                serde_json::to_vec(&header_at(start)).unwrap(),
            ),
            (
                FrameKind::Events,
                events_payload(&[ev(start + S, 1), ev(1 << 63, 2), ev(start + 2 * S, 3)]),
            ),
            (FrameKind::Events, events_payload(&[ev(S, 4)])),
            (FrameKind::Health, health(u64::MAX)),
            (FrameKind::Health, health(start + 3 * S)),
            (FrameKind::End, b"{\"ts_ns\":0,\"reason\":\"x\"}".to_vec()),
        ]);
        let t = tmp_file("far", &f);
        let (r, evs, dmg) = read_all(&t.0);
        assert_eq!(
            evs.iter().map(|e| e.header().ts_ns).collect::<Vec<_>>(),
            vec![start + S, start + 2 * S]
        );
        assert_eq!(r.out_of_time, 3, "{dmg:?}");
        assert!(dmg.iter().any(|d| d.contains("impossibly late")), "{dmg:?}");
        assert!(
            dmg.iter()
                .any(|d| d.contains("before the recording started")),
            "{dmg:?}"
        );
        assert!(dmg.iter().any(|d| d.contains("health frame")), "{dmg:?}");
        assert!(r.ended);
    }

    #[test]
    fn a_suspended_host_resumes_at_its_second_health_frame() {
        let start = 100 * S;
        let resume = start + 7200 * S;
        let f = file_of(&[
            (
                FrameKind::Header,
                serde_json::to_vec(&header_at(start)).unwrap(),
            ),
            (FrameKind::Events, events_payload(&[ev(start + S, 1)])),
            (FrameKind::Health, health(start + S)),
            (FrameKind::Health, health(resume)),
            (FrameKind::Health, health(resume + S)),
            (FrameKind::Events, events_payload(&[ev(resume + S + 1, 2)])),
        ]);
        let t = tmp_file("suspend", &f);
        let (_, evs, dmg) = read_all(&t.0);
        assert_eq!(evs.len(), 2, "{dmg:?}");
        assert!(
            dmg.iter().any(|d| d.contains("clock jumps forward by 2h")),
            "{dmg:?}"
        );
    }

    fn written(name: &str, n: u64) -> (Tmp, Vec<u8>) {
        let p =
            std::env::temp_dir().join(format!("diag-reader-w-{name}-{}.diag", std::process::id()));
        let _ = std::fs::remove_file(&p);
        let mut w = Writer::create(&p, header_at(S), WriterOptions::default()).unwrap();
        let evs: Vec<AnyEvent> = (0..n).map(|i| ev(2 * S + i * 1000, i)).collect();
        w.events(&evs).unwrap();
        w.finish("test").unwrap();
        let bytes = std::fs::read(&p).unwrap();
        (Tmp(p), bytes)
    }

    #[test]
    fn the_writer_keeps_to_the_bounds_and_writes_the_header_twice() {
        let (_t, bytes) = written("bounds", 40_000);
        let (_, items) = format::parse_all(&bytes).unwrap();
        let frames: Vec<&Frame> = items
            .iter()
            .map(|i| match i {
                Item::Frame(f) => f,
                Item::Damage(d) => panic!("{d}"),
            })
            .collect();
        assert_eq!(frames[0].kind, FrameKind::Header);
        assert_eq!(frames[1].kind, FrameKind::Header);
        assert_eq!(frames[0].payload, frames[1].payload);
        let ev_frames: Vec<_> = frames
            .iter()
            .filter(|f| f.kind == FrameKind::Events)
            .collect();
        assert!(ev_frames.len() >= 2);
        for f in ev_frames {
            assert!(f.payload.len() <= format::MAX_EVENTS_PAYLOAD);
        }
    }

    #[test]
    fn a_damaged_header_frame_is_read_from_its_copy() {
        let (_t, good) = written("hdr", 20_000);
        let (_, all, _) = read_all(&_t.0);
        assert_eq!(all.len(), 20_000);
        // Every byte of the first header frame, and of its copy.
        let first_len = u32::from_le_bytes(
            good[FILE_HEADER_LEN + 8..FILE_HEADER_LEN + 12]
                .try_into()
                .unwrap(),
        ) as usize;
        let copy_at = FILE_HEADER_LEN + 16 + first_len;
        let copy_len =
            u32::from_le_bytes(good[copy_at + 8..copy_at + 12].try_into().unwrap()) as usize;
        for at in (FILE_HEADER_LEN..copy_at + 16 + copy_len).step_by(3) {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            let t = tmp_file("hdrflip", &bad);
            let (r, evs, dmg) = read_all(&t.0);
            assert_eq!(r.header, header_at(S), "flip at {at}");
            assert_eq!(evs.len(), 20_000, "flip at {at}: {dmg:?}");
            assert!(!dmg.is_empty(), "flip at {at} is reported");
        }
    }

    #[test]
    fn a_damaged_file_header_is_forgiven_when_frames_are_intact() {
        let (_t, good) = written("magic", 100);
        for at in [0usize, 3, 7, 9] {
            let mut bad = good.clone();
            bad[at] ^= 0x40;
            let t = tmp_file("magicflip", &bad);
            let (r, evs, dmg) = read_all(&t.0);
            assert_eq!(evs.len(), 100, "flip at {at}");
            assert_eq!(r.header, header_at(S));
            assert!(dmg[0].contains("first 16 bytes are damaged"), "{dmg:?}");
        }
        // A newer version stays a newer version; other files stay foreign.
        let mut newer = good.clone();
        newer[8] = VERSION as u8 + 1;
        let t = tmp_file("newer", &newer);
        assert!(matches!(
            Reader::open(&t.0),
            Err(ReadError::Header {
                what: HeaderError::TooNew(v),
                ..
            }) if v == VERSION + 1
        ));
        let t = tmp_file("foreign", b"hello, I am not a recording at all, no");
        assert!(matches!(
            Reader::open(&t.0),
            Err(ReadError::Header {
                what: HeaderError::NotARecording,
                ..
            })
        ));
    }

    #[test]
    fn a_version_1_file_without_header_copies_still_reads_when_its_header_is_damaged() {
        let f = file_of(&[
            (
                FrameKind::Header,
                serde_json::to_vec(&header_at(S)).unwrap(),
            ),
            (
                FrameKind::Events,
                events_payload(&[ev(2 * S, 1), ev(3 * S, 2)]),
            ),
        ]);
        let mut bad = f.clone();
        bad[FILE_HEADER_LEN + 20] ^= 1;
        let t = tmp_file("v1", &bad);
        let (r, evs, dmg) = read_all(&t.0);
        assert_eq!(evs.len(), 2);
        assert_eq!(r.header, RecordingHeader::default());
        assert!(
            dmg.iter().any(|d| d.contains("no readable header frame")),
            "{dmg:?}"
        );
    }

    /// Pressure frames read back as written; hostile ones (averages that
    /// are not percentages, too many cgroups, bad JSON, times far off)
    /// are damage, said in a sentence, and the rest of the file reads.
    #[test]
    fn pressure_frames_and_their_damage() {
        use crate::aggregate::pressure::{CgroupPressure, PressureFrame};
        let good = PressureFrame {
            ts_ns: 2 * S,
            interval_ns: S,
            cgroups: vec![CgroupPressure {
                cgroup: "/job".into(),
                ..CgroupPressure::default()
            }],
            ..PressureFrame::default()
        };
        let json = |f: &PressureFrame| serde_json::to_vec(f).unwrap();
        let mut bad_avg = good.clone();
        bad_avg.host.cpu.some = Some(crate::aggregate::pressure::PsiFig {
            avg10: 250.0,
            ..Default::default()
        });
        let mut many = good.clone();
        many.cgroups = vec![good.cgroups[0].clone(); 51];
        let mut late = good.clone();
        late.ts_ns = 1 << 62;
        let f = file_of(&[
            (
                FrameKind::Header,
                serde_json::to_vec(&header_at(S)).unwrap(),
            ),
            (FrameKind::Pressure, json(&good)),
            (FrameKind::Pressure, json(&bad_avg)),
            (FrameKind::Pressure, json(&many)),
            (FrameKind::Pressure, b"{\"ts_ns\": \"soon\"}".to_vec()),
            (FrameKind::Pressure, json(&late)),
            (FrameKind::Events, events_payload(&[ev(3 * S, 1)])),
        ]);
        let t = tmp_file("pressure", &f);
        let mut r = Reader::open(&t.0).unwrap();
        let (mut frames, mut dmg, mut evs) = (Vec::new(), Vec::new(), 0);
        for rec in r.by_ref() {
            match rec {
                Record::Pressure(p) => frames.push(*p),
                Record::Damage(d) => dmg.push(d),
                Record::Events(e) => evs += e.len(),
                _ => {}
            }
        }
        assert_eq!(frames, vec![good]);
        assert_eq!(evs, 1, "the file reads on after the damage");
        assert_eq!(dmg.len(), 4, "{dmg:?}");
        assert!(dmg[0].contains("pressure frame at byte") && dmg[0].contains("not a percentage"));
        assert!(dmg[1].contains("51 cgroups, over the 50"), "{dmg:?}");
        assert!(dmg[2].contains("pressure"), "{dmg:?}");
        assert!(dmg[3].contains("pressure"), "{dmg:?}");
    }

    /// Block I/O frames read back as written; hostile ones (busier than
    /// the interval, histograms of another shape, bad JSON, times far
    /// off) are damage, and the rest of the file reads.
    #[test]
    fn block_frames_and_their_damage() {
        use crate::aggregate::block::{BlockFrame, DevInterval};
        let good = BlockFrame {
            ts_ns: 2 * S,
            interval_ns: S,
            devices: vec![DevInterval {
                dev: "7:0".into(),
                name: "loop0".into(),
                busy_ns: S / 2,
                hist: vec![0; 32],
                ..DevInterval::default()
            }],
            ..BlockFrame::default()
        };
        let json = |f: &BlockFrame| serde_json::to_vec(f).unwrap();
        let mut busy = good.clone();
        busy.devices[0].busy_ns = 5 * S;
        let mut hist = good.clone();
        hist.devices[0].hist = vec![1; 33];
        let mut late = good.clone();
        late.ts_ns = 1 << 62;
        let f = file_of(&[
            (
                FrameKind::Header,
                serde_json::to_vec(&header_at(S)).unwrap(),
            ),
            (FrameKind::Block, json(&good)),
            (FrameKind::Block, json(&busy)),
            (FrameKind::Block, json(&hist)),
            (FrameKind::Block, b"{\"ts_ns\": \"soon\"}".to_vec()),
            (FrameKind::Block, json(&late)),
            (FrameKind::Events, events_payload(&[ev(3 * S, 1)])),
        ]);
        let t = tmp_file("block", &f);
        let mut r = Reader::open(&t.0).unwrap();
        let (mut frames, mut dmg, mut evs) = (Vec::new(), Vec::new(), 0);
        for rec in r.by_ref() {
            match rec {
                Record::Block(b) => frames.push(*b),
                Record::Damage(d) => dmg.push(d),
                Record::Events(e) => evs += e.len(),
                _ => {}
            }
        }
        assert_eq!(frames, vec![good]);
        assert_eq!(evs, 1, "the file reads on after the damage");
        assert_eq!(dmg.len(), 4, "{dmg:?}");
        assert!(dmg[0].contains("block I/O frame at byte") && dmg[0].contains("busy"));
        assert!(dmg[1].contains("histogram of 33 buckets"), "{dmg:?}");
        assert!(dmg[2].contains("block I/O"), "{dmg:?}");
        assert!(dmg[3].contains("block I/O"), "{dmg:?}");
    }

    /// One frame of a hostile file, valid checksum, hostile contents.
    fn hostile_frame() -> impl Strategy<Value = Vec<u8>> {
        let ts = prop_oneof![
            Just(0u64),
            Just(u64::MAX),
            Just(1u64 << 63),
            0u64..1_000 * S,
            any::<u64>(),
        ];
        let kind = prop_oneof![1u8..=12, any::<u8>()];
        prop_oneof![
            // Events with any times, including impossible ones.
            proptest::collection::vec((ts.clone(), any::<u64>()), 0..50).prop_map(|evs| {
                let evs: Vec<AnyEvent> = evs.into_iter().map(|(t, sk)| ev(t, sk)).collect();
                hostile::raw_frame(FrameKind::Events as u8, 0, &events_payload(&evs))
            }),
            // Bad JSON, wrong types, random bytes, of any kind.
            (kind.clone(), proptest::collection::vec(any::<u8>(), 0..200))
                .prop_map(|(k, b)| hostile::raw_frame(k, 0, &b)),
            (kind.clone(), "[ -~]{0,80}").prop_map(|(k, s)| hostile::raw_frame(k, 0, s.as_bytes())),
            // Timed JSON frames at any time.
            (ts.clone(), 3u8..=4).prop_map(|(t, k)| {
                let body = if k == 3 {
                    health(t)
                } else {
                    format!("{{\"ts_ns\":{t},\"rows\":[]}}").into_bytes()
                };
                hostile::raw_frame(k, 0, &body)
            }),
            // Decompression bombs and compressed garbage.
            (kind.clone(), 0u64..(1 << 34)).prop_map(|(k, n)| hostile::raw_frame(
                k,
                COMPRESSED,
                &hostile::zstd_bomb(n)
            )),
            (kind.clone(), proptest::collection::vec(any::<u8>(), 0..100))
                .prop_map(|(k, b)| hostile::raw_frame(k, COMPRESSED, &b)),
            // A header whose length runs far past the end.
            (kind, any::<u32>()).prop_map(|(k, len)| {
                let mut f = hostile::raw_frame(k, 0, b"{}");
                f[8..12].copy_from_slice(&len.to_le_bytes());
                f
            }),
            // A real header.
            Just(hostile::raw_frame(
                FrameKind::Header as u8,
                0,
                &serde_json::to_vec(&header_at(S)).unwrap()
            )),
        ]
    }

    #[test]
    fn lock_frames_read_back_and_hostile_ones_are_damage() {
        use crate::aggregate::lock::{FRAME_LOCKS, LockFrame, LockRow, ProcLocks};
        let good = LockFrame {
            ts_ns: S + 1_000,
            interval_ns: 1_000,
            procs: vec![ProcLocks {
                pid: 7,
                waits: 2,
                wait_ns: 100,
                ..ProcLocks::default()
            }],
            ..LockFrame::default()
        };
        let mut many = good.clone();
        many.locks = vec![LockRow::default(); FRAME_LOCKS + 1];
        let mut f = file_header().to_vec();
        f.extend(hostile::raw_frame(
            FrameKind::Header as u8,
            0,
            &serde_json::to_vec(&header_at(S)).unwrap(),
        ));
        for fr in [&good, &many] {
            f.extend(hostile::raw_frame(
                FrameKind::Locks as u8,
                0,
                &serde_json::to_vec(fr).unwrap(),
            ));
        }
        f.extend(hostile::raw_frame(
            FrameKind::Locks as u8,
            0,
            b"{\"ts_ns\": \"x\"}",
        ));
        let t = tmp_file("locks", &f);
        let mut r = Reader::open(&t.0).unwrap();
        let (mut frames, mut damage) = (Vec::new(), 0);
        for rec in r.by_ref() {
            match rec {
                Record::Locks(l) => frames.push(*l),
                Record::Damage(_) => damage += 1,
                _ => {}
            }
        }
        assert_eq!(frames, vec![good]);
        assert_eq!(damage, 2);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        /// Whole files with the frame structure and hostile contents:
        /// never a panic; what is handed on is bounded (events per record,
        /// times within the rules), and reading is quick.
        #[test]
        fn hostile_files_are_read_within_bounds(
            frames in proptest::collection::vec(hostile_frame(), 0..12),
            good_header in any::<bool>(),
        ) {
            let mut f = file_header().to_vec();
            if good_header {
                f.extend(hostile::raw_frame(
                    FrameKind::Header as u8,
                    0,
                    &serde_json::to_vec(&header_at(S)).unwrap(),
                ));
            }
            for fr in &frames {
                f.extend(fr);
            }
            let t = tmp_file("fuzz", &f);
            let started = std::time::Instant::now();
            if let Ok(mut r) = Reader::open(&t.0) {
                let lo = r.header.started_ts_ns.saturating_sub(BEFORE_START_NS);
                let mut expanded = 0usize;
                let mut latest: Option<u64> = None;
                let mut records = Vec::new();
                for rec in r.by_ref() {
                    let timed = match &rec {
                        Record::Health(h) => Some(h.ts_ns),
                        Record::Table(t) => Some(t.ts_ns),
                        Record::OomContext(c) => Some(c.ts_ns),
                        Record::Pressure(p) => Some(p.ts_ns),
                        Record::Block(b) => Some(b.ts_ns),
                        Record::Memory(m) => Some(m.end_ns),
                        Record::Locks(l) => Some(l.ts_ns),
                        _ => None,
                    };
                    if let Some(ts) = timed {
                        prop_assert!(ts <= MAX_TS_NS);
                        latest = Some(latest.map_or(ts, |l| l.max(ts)));
                    }
                    if let Record::Events(evs) = &rec {
                        prop_assert!(evs.len() <= EVENTS_PER_RECORD);
                        expanded += evs.len() * std::mem::size_of::<AnyEvent>();
                        for e in evs {
                            let ts = e.header().ts_ns;
                            prop_assert!(ts >= lo && ts <= MAX_TS_NS);
                            if let Some(l) = latest {
                                prop_assert!(ts <= l + MAX_JUMP_NS, "{ts} after {l}");
                            }
                            latest = Some(latest.map_or(ts, |l| l.max(ts)));
                        }
                    }
                    records.push(rec);
                }
                // Decoded events are bounded by what the file can expand to.
                prop_assert!(expanded <= f.len() * format::MAX_RATIO * 4);
                // The report over the same records: small, and no panic.
                let review = crate::view::report::Review::build(
                    r.header.clone(),
                    records.into_iter(),
                    || false,
                );
                prop_assert!(review.timeline.len() <= 3 * review.events as usize + 8);
                let _ = crate::view::report::render_text(&review, "fuzz");
            }
            prop_assert!(started.elapsed() < std::time::Duration::from_secs(10));
        }
    }
}
