//! Standard output that never blocks the bus loop.
//!
//! A slow reader (`diag tail | slow-consumer`, a terminal on a stalled
//! ssh session) must not stop diag from draining the ring buffer, counting
//! drops and serving signals. Lines go through a bounded queue to a writer
//! thread; what does not fit is dropped, counted and named in the summary.

use std::{
    io::{self, Write},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc,
    },
    time::Duration,
};

/// What a write means for the loop: a closed pipe (`diag tail | head`)
/// ends output quietly, any other error fails.
pub fn flow_of(r: io::Result<()>) -> anyhow::Result<crate::sink::Flow> {
    match r {
        Ok(()) => Ok(crate::sink::Flow::More),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(crate::sink::Flow::Done),
        Err(e) => Err(anyhow::Error::new(e).context("writing to standard output")),
    }
}

/// At most this many bytes wait for the reader; more are dropped.
pub const MAX_QUEUED: usize = 8 << 20;

struct Shared {
    queued: AtomicUsize,
    /// The reader went away (EPIPE) or writing failed.
    closed: AtomicBool,
}

/// Buffered standard output behind a bounded queue. `flush` hands what was
/// written to the writer thread, or drops it when the queue is full.
pub struct Output {
    tx: Option<mpsc::Sender<Vec<u8>>>,
    buf: Vec<u8>,
    shared: Arc<Shared>,
    done: mpsc::Receiver<()>,
    /// Lines dropped because the reader did not keep up.
    pub lost_lines: u64,
}

impl Output {
    /// Standard output.
    pub fn stdout() -> Output {
        Output::to(io::stdout())
    }

    /// Any writer (tests).
    pub fn to(mut w: impl Write + Send + 'static) -> Output {
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        let (done_tx, done) = mpsc::channel();
        let shared = Arc::new(Shared {
            queued: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            for chunk in rx {
                let r = w.write_all(&chunk).and_then(|()| w.flush());
                s.queued.fetch_sub(chunk.len(), Ordering::Relaxed);
                if r.is_err() {
                    s.closed.store(true, Ordering::Relaxed);
                    break;
                }
            }
            let _ = done_tx.send(());
        });
        Output {
            tx: Some(tx),
            buf: Vec::new(),
            shared,
            done,
            lost_lines: 0,
        }
    }

    /// The reader is gone: nothing more can be shown.
    pub fn closed(&self) -> bool {
        self.shared.closed.load(Ordering::Relaxed)
    }

    /// Hand over what is buffered and wait up to `grace` for the reader to
    /// take it (a blocked reader does not keep diag from exiting).
    pub fn close(&mut self, grace: Duration) {
        let _ = self.flush();
        self.tx = None;
        let _ = self.done.recv_timeout(grace);
    }

    /// The summary's words for what the reader missed, if anything.
    pub fn losses(&self) -> Option<String> {
        (self.lost_lines > 0).then(|| {
            format!(
                "{} lines not written: standard output was blocked (a slow reader)",
                self.lost_lines
            )
        })
    }
}

impl Write for Output {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.closed() {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 64 << 10 {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.closed() {
            self.buf.clear();
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::take(&mut self.buf);
        let queued = self.shared.queued.load(Ordering::Relaxed);
        if queued + chunk.len() > MAX_QUEUED {
            self.lost_lines += chunk.iter().filter(|&&b| b == b'\n').count().max(1) as u64;
            return Ok(());
        }
        self.shared.queued.fetch_add(chunk.len(), Ordering::Relaxed);
        match &self.tx {
            Some(tx) if tx.send(chunk).is_ok() => Ok(()),
            _ => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        self.close(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that never reads.
    struct Stuck(mpsc::Receiver<()>);
    impl Write for Stuck {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            let _ = self.0.recv();
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_reader_costs_lines_not_time() {
        let (_hold, rx) = mpsc::channel();
        let mut out = Output::to(Stuck(rx));
        let line = vec![b'x'; 1023];
        let t = std::time::Instant::now();
        for _ in 0..20_000 {
            out.write_all(&line).unwrap();
            out.write_all(b"\n").unwrap();
            out.flush().unwrap();
        }
        assert!(out.lost_lines > 10_000, "{}", out.lost_lines);
        assert!(out.losses().unwrap().contains("blocked"));
        out.close(Duration::from_millis(10));
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_closed_pipe_is_a_broken_pipe() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut out = Output::to(Closed);
        out.write_all(b"a\n").unwrap();
        out.flush().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !out.closed() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            out.write_all(b"b\n").unwrap_err().kind(),
            io::ErrorKind::BrokenPipe
        );
    }
}
