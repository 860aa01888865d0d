//! Sinks over the event bus. Formatting is pure; I/O is at the edge.

pub mod conns;
pub mod export;
pub mod report;
pub mod runq;
pub mod tail;
pub mod top;

use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{
    Msg,
    source::{Health, live::Live},
};

/// A running live source: its messages, the token that stops it (also
/// cancelled by SIGINT, SIGTERM or SIGHUP), and its task, which returns the
/// final health once it has drained the ring buffer and detached.
pub struct LiveSession {
    pub rx: mpsc::Receiver<Msg>,
    pub cancel: CancellationToken,
    pub source: JoinHandle<std::io::Result<Health>>,
    pub attached: Vec<&'static str>,
}

impl LiveSession {
    /// Start draining `live` onto a new bus. With `tables`, the kernel's
    /// TCP socket table is also put on the bus: once now (after the probes
    /// were attached, so no socket falls between) and then every `tables`.
    /// Call inside a tokio runtime.
    pub fn start(live: Live, tables: Option<std::time::Duration>) -> LiveSession {
        let cancel = CancellationToken::new();
        let (tx, rx) = mpsc::channel::<Msg>(1024);
        let attached = live.attached().to_vec();
        if let Some(every) = tables {
            let tx = tx.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tick.tick() => {
                            let ts_ns = crate::clock::boot_ns();
                            let rows = tokio::task::spawn_blocking(crate::enrich::tcp_table)
                                .await
                                .unwrap_or_default();
                            if tx.send(Msg::Table { ts_ns, rows }).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
        let source = tokio::spawn(live.run(tx, cancel.clone()));
        cancel_on_signal(&cancel);
        LiveSession {
            rx,
            cancel,
            source,
            attached,
        }
    }
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
