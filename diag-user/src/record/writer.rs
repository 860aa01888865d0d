//! Writing recordings: one `write` per frame, `fdatasync` once a second,
//! mode 0600, size-based rotation to numbered files.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    time::Instant,
};

use diag_common::user::AnyEvent;
use thiserror::Error;

use super::{
    RecordingHeader,
    format::{FrameKind, encode_frame, file_header, push_event},
};
use crate::{aggregate::tcp::TableRow, bus::Health};

#[derive(Debug, Error)]
pub enum RecordError {
    #[error("cannot create the recording {path}: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "the disk is full writing {path}: the recording so far ({bytes} bytes) is readable; free some space and record again"
    )]
    DiskFull { path: String, bytes: u64 },
    #[error(
        "writing the recording {path} failed after {bytes} bytes: {source}; what was written so far is readable"
    )]
    Write {
        path: String,
        bytes: u64,
        source: std::io::Error,
    },
    #[error("cannot rotate {path}: {source}")]
    Rotate {
        path: String,
        source: std::io::Error,
    },
}

/// How recordings are written.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    pub compress: bool,
    /// Start a new file once the current one reaches this size.
    pub max_size: Option<u64>,
    /// Rotated files kept besides the current one (FILE.1 ... FILE.N).
    pub max_files: usize,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            compress: true,
            max_size: None,
            max_files: 10,
        }
    }
}

/// Flush buffered events once this many bytes are waiting.
const EVENT_FLUSH_BYTES: usize = 1 << 20;

pub struct Writer {
    path: PathBuf,
    file: File,
    size: u64,
    opts: WriterOptions,
    header: RecordingHeader,
    /// Buffered events, written as one frame by `flush`.
    pending: Vec<u8>,
    last_sync: Instant,
    /// The newest socket table, repeated at the start of a rotated file so
    /// that each file stands on its own.
    last_table: Option<(u64, Vec<TableRow>)>,
    /// Total bytes over every file.
    pub total_bytes: u64,
    pub rotations: u64,
}

fn create_file(path: &Path) -> Result<File, RecordError> {
    let err = |source| RecordError::Create {
        path: path.display().to_string(),
        source,
    };
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    // An existing file keeps its old mode through open(): fix it.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(err)?;
    Ok(file)
}

impl Writer {
    pub fn create(
        path: &Path,
        header: RecordingHeader,
        opts: WriterOptions,
    ) -> Result<Writer, RecordError> {
        let file = create_file(path)?;
        let mut w = Writer {
            path: path.to_path_buf(),
            file,
            size: 0,
            opts,
            header,
            pending: Vec::new(),
            last_sync: Instant::now(),
            last_table: None,
            total_bytes: 0,
            rotations: 0,
        };
        w.start_file()?;
        Ok(w)
    }

    fn start_file(&mut self) -> Result<(), RecordError> {
        self.write_raw(&file_header())?;
        let header = serde_json::to_vec(&self.header).expect("header serializes");
        self.write_frame(FrameKind::Header, &header)?;
        if let Some((ts_ns, rows)) = self.last_table.clone() {
            self.write_table_frame(ts_ns, &rows)?;
        }
        Ok(())
    }

    fn write_raw(&mut self, bytes: &[u8]) -> Result<(), RecordError> {
        if let Err(e) = self.file.write_all(bytes) {
            let path = self.path.display().to_string();
            let bytes = self.total_bytes;
            return Err(
                if e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT)
                {
                    RecordError::DiskFull { path, bytes }
                } else {
                    RecordError::Write {
                        path,
                        bytes,
                        source: e,
                    }
                },
            );
        }
        self.size += bytes.len() as u64;
        self.total_bytes += bytes.len() as u64;
        Ok(())
    }

    fn write_frame(&mut self, kind: FrameKind, payload: &[u8]) -> Result<(), RecordError> {
        let frame = encode_frame(kind, payload, self.opts.compress);
        self.write_raw(&frame)
    }

    /// Queue events; they are written as one frame by [`Writer::flush`]
    /// (at least once a second) or when enough are waiting.
    pub fn events(&mut self, evs: &[AnyEvent]) -> Result<(), RecordError> {
        for e in evs {
            push_event(&mut self.pending, e.to_bytes());
        }
        if self.pending.len() >= EVENT_FLUSH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Write queued events, sync to disk once a second, rotate if due.
    pub fn flush(&mut self) -> Result<(), RecordError> {
        if !self.pending.is_empty() {
            let payload = std::mem::take(&mut self.pending);
            self.write_frame(FrameKind::Events, &payload)?;
        }
        if self.last_sync.elapsed().as_millis() >= 1000 {
            self.sync()?;
        }
        if self.opts.max_size.is_some_and(|m| self.size >= m) {
            self.rotate()?;
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), RecordError> {
        self.last_sync = Instant::now();
        self.file.sync_data().map_err(|source| RecordError::Write {
            path: self.path.display().to_string(),
            bytes: self.total_bytes,
            source,
        })
    }

    pub fn health(&mut self, h: &Health) -> Result<(), RecordError> {
        self.flush()?;
        let payload = serde_json::to_vec(h).expect("health serializes");
        self.write_frame(FrameKind::Health, &payload)
    }

    fn write_table_frame(&mut self, ts_ns: u64, rows: &[TableRow]) -> Result<(), RecordError> {
        let payload = serde_json::to_vec(&super::TableFrame {
            ts_ns,
            rows: rows.to_vec(),
        })
        .expect("serializes");
        self.write_frame(FrameKind::Table, &payload)
    }

    pub fn table(&mut self, ts_ns: u64, rows: &[TableRow]) -> Result<(), RecordError> {
        // Events before the table go first, so replay sees the same order.
        self.flush()?;
        self.write_table_frame(ts_ns, rows)?;
        self.last_table = Some((ts_ns, rows.to_vec()));
        Ok(())
    }

    pub fn procs(&mut self, frame: &super::ProcsFrame) -> Result<(), RecordError> {
        self.flush()?;
        let payload = serde_json::to_vec(frame).expect("serializes");
        self.write_frame(FrameKind::Procs, &payload)
    }

    /// An OOM kill's user-space context, after the kill's events.
    pub fn oom_context(&mut self, frame: &super::OomContextFrame) -> Result<(), RecordError> {
        self.flush()?;
        let payload = serde_json::to_vec(frame).expect("serializes");
        self.write_frame(FrameKind::OomContext, &payload)
    }

    /// Rotated file `n` (1 = the newest).
    pub fn rotated_path(&self, n: usize) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    }

    fn rotate(&mut self) -> Result<(), RecordError> {
        self.end("rotated")?;
        let err = |source| RecordError::Rotate {
            path: self.path.display().to_string(),
            source,
        };
        let keep = self.opts.max_files;
        if keep == 0 {
            std::fs::remove_file(&self.path).map_err(err)?;
        } else {
            let _ = std::fs::remove_file(self.rotated_path(keep));
            for n in (1..keep).rev() {
                let from = self.rotated_path(n);
                if from.exists() {
                    std::fs::rename(&from, self.rotated_path(n + 1)).map_err(err)?;
                }
            }
            std::fs::rename(&self.path, self.rotated_path(1)).map_err(err)?;
        }
        self.file = create_file(&self.path)?;
        self.size = 0;
        self.rotations += 1;
        self.start_file()
    }

    fn end(&mut self, reason: &str) -> Result<(), RecordError> {
        self.flush_events_only()?;
        let payload = serde_json::to_vec(&super::EndFrame {
            ts_ns: crate::clock::boot_ns(),
            reason: reason.to_string(),
        })
        .expect("serializes");
        self.write_frame(FrameKind::End, &payload)?;
        self.sync()
    }

    fn flush_events_only(&mut self) -> Result<(), RecordError> {
        if !self.pending.is_empty() {
            let payload = std::mem::take(&mut self.pending);
            self.write_frame(FrameKind::Events, &payload)?;
        }
        Ok(())
    }

    /// Write what is queued and the end marker, and sync.
    pub fn finish(mut self, reason: &str) -> Result<u64, RecordError> {
        self.end(reason)?;
        Ok(self.total_bytes)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
