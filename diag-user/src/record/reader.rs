//! Reading recordings, streaming, reporting damage instead of failing.

use std::{
    collections::VecDeque,
    fs::File,
    io::Read,
    path::{Path, PathBuf},
};

use diag_common::user::{AnyEvent, decode};
use thiserror::Error;

use super::{
    EndFrame, OomContextFrame, ProcsFrame, RecordingHeader, TableFrame,
    format::{
        Damage, FILE_HEADER_LEN, Frame, FrameKind, HeaderError, Item, Parser, check_file_header,
        split_events,
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
    pub header: RecordingHeader,
    pub version: u16,
    /// Damage seen so far (also yielded as `Record::Damage`).
    pub damage: Vec<Damage>,
    /// Event records of unknown kinds skipped.
    pub unknown_events: u64,
    /// Whether an End frame was seen (a clean finish).
    pub ended: bool,
}

const CHUNK: usize = 1 << 20;

impl Reader {
    pub fn open(path: &Path) -> Result<Reader, ReadError> {
        let p = path.display().to_string();
        let mut file = File::open(path).map_err(|source| ReadError::Open {
            path: p.clone(),
            source,
        })?;
        let mut head = [0u8; FILE_HEADER_LEN];
        let mut got = 0;
        while got < FILE_HEADER_LEN {
            let n = file
                .read(&mut head[got..])
                .map_err(|source| ReadError::Io {
                    path: p.clone(),
                    source,
                })?;
            if n == 0 {
                break;
            }
            got += n;
        }
        let version = check_file_header(&head[..got]).map_err(|what| ReadError::Header {
            path: p.clone(),
            what,
        })?;
        let mut r = Reader {
            path: path.to_path_buf(),
            file,
            parser: Parser::new(FILE_HEADER_LEN as u64),
            queue: VecDeque::new(),
            eof: false,
            header: RecordingHeader::default(),
            version,
            damage: Vec::new(),
            unknown_events: 0,
            ended: false,
        };
        // The first frame must be the header.
        {
            match r.next_item().map_err(|source| ReadError::Io {
                path: p.clone(),
                source,
            })? {
                Some(Item::Frame(f)) if f.kind == FrameKind::Header => {
                    r.header =
                        serde_json::from_slice(&f.payload).map_err(|e| ReadError::NoHeader {
                            path: p.clone(),
                            why: e.to_string(),
                        })?;
                    Ok(r)
                }
                Some(Item::Frame(f)) => Err(ReadError::NoHeader {
                    path: p,
                    why: format!("the first frame is {:?}", f.kind),
                }),
                Some(Item::Damage(d)) => Err(ReadError::NoHeader {
                    path: p,
                    why: d.to_string(),
                }),
                None => Err(ReadError::NoHeader {
                    path: p,
                    why: "the file ends before it".into(),
                }),
            }
        }
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

    fn convert(&mut self, f: Frame) -> Record {
        let bad = |what: &str, e: serde_json::Error| {
            Record::Damage(format!(
                "{what} frame at byte {} is unreadable ({e}): skipped",
                f.offset
            ))
        };
        match f.kind {
            FrameKind::Events => {
                let (raw, tail) = split_events(&f.payload);
                let mut evs = Vec::with_capacity(raw.len());
                for r in raw {
                    match decode(r) {
                        Ok(e) => evs.push(e),
                        Err(_) => self.unknown_events += 1,
                    }
                }
                if let Some(t) = tail {
                    self.queue.push_back(Record::Damage(format!(
                        "events frame at byte {}: {t}",
                        f.offset
                    )));
                }
                Record::Events(evs)
            }
            FrameKind::Health => serde_json::from_slice(&f.payload)
                .map(Record::Health)
                .unwrap_or_else(|e| bad("health", e)),
            FrameKind::Table => serde_json::from_slice(&f.payload)
                .map(Record::Table)
                .unwrap_or_else(|e| bad("table", e)),
            FrameKind::Procs => serde_json::from_slice(&f.payload)
                .map(Record::Procs)
                .unwrap_or_else(|e| bad("process", e)),
            FrameKind::OomContext => serde_json::from_slice(&f.payload)
                .map(Record::OomContext)
                .unwrap_or_else(|e| bad("OOM context", e)),
            FrameKind::End => {
                self.ended = true;
                serde_json::from_slice(&f.payload)
                    .map(Record::End)
                    .unwrap_or_else(|e| bad("end", e))
            }
            // A second header: rotated files concatenated; nothing to do.
            FrameKind::Header => Record::Events(Vec::new()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Iterator for Reader {
    type Item = Record;
    fn next(&mut self) -> Option<Record> {
        if let Some(r) = self.queue.pop_front() {
            return Some(r);
        }
        match self.next_item() {
            Ok(Some(Item::Frame(f))) => Some(self.convert(f)),
            Ok(Some(Item::Damage(d))) => {
                let words = format!("{}: {d}", self.path.display());
                self.damage.push(d);
                Some(Record::Damage(words))
            }
            Ok(None) => None,
            Err(e) => {
                self.eof = true;
                Some(Record::Damage(format!(
                    "reading {} failed: {e}",
                    self.path.display()
                )))
            }
        }
    }
}
