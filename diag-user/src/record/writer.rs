//! Writing recordings: one `write` per frame, `fdatasync` once a second,
//! mode 0600, size-based rotation to numbered files.

use std::{
    fs::File,
    io::Write,
    path::{Path, PathBuf},
    time::Instant,
};

use diag_common::user::AnyEvent;
use thiserror::Error;

use super::{
    RecordingHeader,
    format::{
        FrameKind, HEADER_EVERY, MAX_EVENTS_PAYLOAD, MAX_PAYLOAD, encode_frame, file_header,
        push_event,
    },
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

pub struct Writer {
    path: PathBuf,
    file: File,
    size: u64,
    opts: WriterOptions,
    header: RecordingHeader,
    /// Buffered events, written as one frame by `flush`.
    pending: Vec<u8>,
    last_sync: Instant,
    /// When the Header frame was last written (it is repeated).
    last_header: Instant,
    /// The newest socket table, repeated at the start of a rotated file so
    /// that each file stands on its own.
    last_table: Option<(u64, Vec<TableRow>)>,
    /// Total bytes over every file.
    pub total_bytes: u64,
    pub rotations: u64,
}

fn create_file(path: &Path) -> Result<File, RecordError> {
    super::outfile::create_private(path, super::outfile::Lock::Exclusive).map_err(|source| {
        RecordError::Create {
            path: path.display().to_string(),
            source,
        }
    })
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
            last_header: Instant::now(),
            last_table: None,
            total_bytes: 0,
            rotations: 0,
        };
        w.start_file()?;
        Ok(w)
    }

    fn start_file(&mut self) -> Result<(), RecordError> {
        self.write_raw(&file_header())?;
        // Twice: one damaged frame never leaves the file without it.
        self.write_header()?;
        self.write_header()?;
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

    fn write_header(&mut self) -> Result<(), RecordError> {
        let header = serde_json::to_vec(&self.header).expect("header serializes");
        self.last_header = Instant::now();
        self.write_frame(FrameKind::Header, &header)
    }

    fn write_frame(&mut self, kind: FrameKind, payload: &[u8]) -> Result<(), RecordError> {
        // The writer keeps to the bound readers rely on; a JSON frame
        // beyond it (a socket table of millions of sockets) is not written.
        if payload.len() > MAX_PAYLOAD {
            warn_oversized(kind, payload.len());
            return Ok(());
        }
        let frame = encode_frame(kind, payload, self.opts.compress);
        self.write_raw(&frame)
    }

    /// Queue events; they are written in frames of at most
    /// [`MAX_EVENTS_PAYLOAD`] bytes by [`Writer::flush`] (at least once a
    /// second) or when a frame is full.
    pub fn events(&mut self, evs: &[AnyEvent]) -> Result<(), RecordError> {
        for e in evs {
            let bytes = e.to_bytes();
            if self.pending.len() + 2 + bytes.len() > MAX_EVENTS_PAYLOAD {
                self.flush()?;
            }
            push_event(&mut self.pending, bytes);
        }
        Ok(())
    }

    /// Write queued events, a copy of the header when one is due, sync to
    /// disk once a second, rotate if due.
    pub fn flush(&mut self) -> Result<(), RecordError> {
        self.flush_events_only()?;
        if self.last_header.elapsed() >= HEADER_EVERY {
            self.write_header()?;
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
        let mut rows = rows;
        loop {
            let payload = serde_json::to_vec(&super::TableFrame {
                ts_ns,
                rows: rows.to_vec(),
            })
            .expect("serializes");
            if payload.len() <= MAX_PAYLOAD || rows.is_empty() {
                return self.write_frame(FrameKind::Table, &payload);
            }
            // Over the frame bound (about 700,000 sockets): as many rows
            // as fit.
            eprintln!(
                "diag: WARNING: the socket table of {} rows is over the format's frame bound: the recording keeps part of it",
                rows.len()
            );
            let keep = rows.len() as u128 * MAX_PAYLOAD as u128 / payload.len() as u128;
            rows = &rows[..(keep as usize * 9 / 10).min(rows.len() - 1)];
        }
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

    /// The scheduler's run-queue waits over one interval.
    pub fn sched(&mut self, frame: &super::SchedFrame) -> Result<(), RecordError> {
        self.flush()?;
        let payload = serde_json::to_vec(frame).expect("serializes");
        self.write_frame(FrameKind::Sched, &payload)
    }

    /// Pressure stall information over one interval.
    pub fn pressure(
        &mut self,
        frame: &crate::aggregate::pressure::PressureFrame,
    ) -> Result<(), RecordError> {
        self.flush()?;
        let payload = serde_json::to_vec(frame).expect("serializes");
        self.write_frame(FrameKind::Pressure, &payload)
    }

    /// Block I/O over one interval.
    pub fn block(
        &mut self,
        frame: &crate::aggregate::block::BlockFrame,
    ) -> Result<(), RecordError> {
        self.flush()?;
        let payload = serde_json::to_vec(frame).expect("serializes");
        self.write_frame(FrameKind::Block, &payload)
    }

    /// Memory stalls and swap over one interval.
    pub fn memory(
        &mut self,
        frame: &crate::aggregate::memory::MemInterval,
    ) -> Result<(), RecordError> {
        self.flush()?;
        let payload = serde_json::to_vec(frame).expect("serializes");
        self.write_frame(FrameKind::Memory, &payload)
    }

    /// Lock waits over one interval (version 4).
    pub fn locks(&mut self, frame: &crate::aggregate::lock::LockFrame) -> Result<(), RecordError> {
        self.flush()?;
        let payload = serde_json::to_vec(frame).expect("serializes");
        self.write_frame(FrameKind::Locks, &payload)
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
        debug_assert!(self.pending.len() <= MAX_EVENTS_PAYLOAD);
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

fn warn_oversized(kind: FrameKind, len: usize) {
    eprintln!(
        "diag: WARNING: a {kind:?} frame of {len} bytes is over the format's bound ({MAX_PAYLOAD} bytes): not recorded"
    );
}
