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
use crate::source::Health;

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
    Found(RecordingHeader, bool, u64),
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
                    && !matches!(what, HeaderError::TooNew(v) if (2..=255).contains(&v)) =>
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
                r.header = h;
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
        loop {
            let Some(item) = self.next_item()? else {
                break;
            };
            match item {
                Item::Frame(f) if f.kind == FrameKind::Header => {
                    match serde_json::from_slice(&f.payload) {
                        Ok(h) => return Ok(HeaderSearch::Found(h, first, f.offset)),
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
    fn timed(&mut self, what: &str, offset: u64, ts: u64, health: bool) -> Option<String> {
        match self.clock.check(ts) {
            Verdict::Ok => None,
            Verdict::Far(by) if health && self.clock.confirm_jump(ts) => {
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
        fn json<T: serde::de::DeserializeOwned>(f: &Frame, what: &str) -> Result<T, Record> {
            serde_json::from_slice(&f.payload).map_err(|e| {
                Record::Damage(format!(
                    "{what} frame at byte {} is unreadable ({e}): skipped",
                    f.offset
                ))
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
                Err(d) => d,
            },
            FrameKind::Table => match json::<TableFrame>(&f, "table") {
                Ok(t) => match self.timed("table", f.offset, t.ts_ns, false) {
                    None => Record::Table(t),
                    Some(d) => Record::Damage(d),
                },
                Err(d) => d,
            },
            FrameKind::Procs => serde_json::from_slice(&f.payload)
                .map(Record::Procs)
                .unwrap_or_else(|e| bad("process", e)),
            FrameKind::OomContext => match json::<OomContextFrame>(&f, "OOM context") {
                Ok(c) => match self.timed("OOM context", f.offset, c.ts_ns, false) {
                    None => Record::OomContext(c),
                    Some(d) => Record::Damage(d),
                },
                Err(d) => d,
            },
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
