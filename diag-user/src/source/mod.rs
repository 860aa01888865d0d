//! Producers of the [`crate::bus::Msg`] bus: the live ring buffer with its
//! pollers ([`live`]), and recordings ([`replay`]). A [`Source`] is what a
//! command hands to [`crate::sink::drive`].

pub mod block;
pub mod live;
pub mod lock;
pub mod memory;
pub mod pressure;
pub mod replay;
pub mod sched;
pub mod threads;

use std::{future::Future, pin::Pin};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use crate::bus::Health;
use crate::bus::{End, Msg};

/// A running source: its messages, the token that stops it (also
/// cancelled by SIGINT, SIGTERM or SIGHUP), and what it returns once it
/// has drained and let go of everything (the kernel programs, the file).
pub struct Source {
    pub rx: mpsc::Receiver<Msg>,
    pub cancel: CancellationToken,
    pub done: Pin<Box<dyn Future<Output = anyhow::Result<End>>>>,
    /// What is traced (live), for the start-up line.
    pub attached: Vec<&'static str>,
}

/// Cancel `cancel` on SIGINT, SIGTERM or SIGHUP. The handlers are in place
/// when this returns (before diag says it is ready), so an early signal
/// still ends diag cleanly. Call inside a tokio runtime.
pub fn cancel_on_signal(cancel: &CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let streams = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    );
    let cancel = cancel.clone();
    tokio::spawn(async move {
        // Without handlers the default action (exit) still applies, and the
        // kernel releases everything diag loaded.
        let (Ok(mut int), Ok(mut term), Ok(mut hup)) = streams else {
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
            _ = hup.recv() => {}
        }
        cancel.cancel();
    });
}
