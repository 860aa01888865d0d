//! The live source: drains the kernel ring buffer onto the bus.
//!
//! The kernel side submits without waking us (a wakeup costs microseconds
//! per event in a VM) unless a quarter of the buffer is waiting, so we
//! drain on a short timer as well as on wakeups. Latency to the screen is
//! at most one tick.

use std::time::Duration;

use aya::maps::{MapData, PerCpuArray, RingBuf};
use diag_common::{counters, user::decode};
use tokio::{io::unix::AsyncFd, sync::mpsc};
use tokio_util::sync::CancellationToken;

use crate::{Msg, error::LoadError, loader::Tracer, source::Health};

/// How often the ring buffer is drained without a wakeup.
pub const DRAIN_EVERY: Duration = Duration::from_millis(20);
/// How often health counters are read and sent.
pub const HEALTH_EVERY: Duration = Duration::from_secs(1);
/// Most events sent in one message.
const BATCH: usize = 4096;

pub struct Live {
    // Keeps the programs attached; dropped last.
    tracer: Tracer,
    ring: RingBuf<MapData>,
    drainer: Drainer,
}

impl Live {
    pub fn new(mut tracer: Tracer) -> Result<Self, LoadError> {
        let ring = tracer
            .ebpf
            .take_map("EVENTS")
            .ok_or_else(|| LoadError::Missing("map EVENTS".into()))?;
        let ring = RingBuf::try_from(ring).map_err(|e| LoadError::Load(e.to_string()))?;
        let counters = tracer
            .ebpf
            .take_map("COUNTERS")
            .ok_or_else(|| LoadError::Missing("map COUNTERS".into()))?;
        let counters =
            PerCpuArray::try_from(counters).map_err(|e| LoadError::Load(e.to_string()))?;
        Ok(Live {
            tracer,
            ring,
            drainer: Drainer {
                counters,
                health: Health::default(),
            },
        })
    }

    /// What is attached, for messages.
    pub fn attached(&self) -> &[&'static str] {
        &self.tracer.attached
    }

    /// Drain until the channel closes or `cancel` fires; then drain what is
    /// left, send the final health and detach (by dropping the tracer).
    pub async fn run(
        self,
        tx: mpsc::Sender<Msg>,
        cancel: CancellationToken,
    ) -> std::io::Result<Health> {
        let Live {
            tracer,
            ring,
            drainer: mut me,
        } = self;
        // SAFETY: the ring buffer owns its fd and keeps it open, unchanged,
        // for as long as the AsyncFd (which owns the ring buffer) lives.
        let mut afd =
            unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }?;
        let mut tick = tokio::time::interval(DRAIN_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut health_tick = tokio::time::interval(HEALTH_EVERY);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                guard = afd.readable_mut() => {
                    let mut guard = guard?;
                    if !me.drain(guard.get_inner_mut(), &tx).await { break; }
                    guard.clear_ready();
                }
                _ = tick.tick() => {
                    if !me.drain(afd.get_mut(), &tx).await { break; }
                }
                _ = health_tick.tick() => {
                    let h = me.read_health();
                    if tx.send(Msg::Health(h)).await.is_err() { break; }
                }
            }
        }
        // Whatever the kernel wrote before we stopped is still shown.
        me.drain(afd.get_mut(), &tx).await;
        let h = me.read_health();
        let _ = tx.send(Msg::Health(h)).await;
        drop(afd);
        drop(tracer);
        Ok(h)
    }
}

struct Drainer {
    counters: PerCpuArray<MapData, u64>,
    health: Health,
}

impl Drainer {
    fn counter(&self, slot: u32) -> u64 {
        self.counters
            .get(&slot, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    fn read_health(&mut self) -> Health {
        self.health.ts_ns = crate::clock::boot_ns();
        self.health.submitted = self.counter(counters::SUBMITTED);
        self.health.ringbuf_full = self.counter(counters::RINGBUF_FULL);
        self.health.sock_map_full = self.counter(counters::SOCK_MAP_FULL);
        self.health.listen_map_full = self.counter(counters::LISTEN_MAP_FULL);
        self.health.read_errors = self.counter(counters::READ_ERROR);
        self.health.oom_no_victim_task = self.counter(counters::OOM_NO_VICTIM_TASK);
        self.health.oom_read_errors = self.counter(counters::OOM_READ_ERROR);
        self.health.sched_task_map_full = self.counter(counters::SCHED_TASK_MAP_FULL);
        self.health.sched_proc_map_full = self.counter(counters::SCHED_PROC_MAP_FULL);
        self.health.sched_read_errors = self.counter(counters::SCHED_READ_ERROR);
        self.health
    }

    /// Returns false when the receiver is gone.
    async fn drain(&mut self, ring: &mut RingBuf<MapData>, tx: &mpsc::Sender<Msg>) -> bool {
        loop {
            let mut batch = Vec::new();
            while batch.len() < BATCH {
                let Some(item) = ring.next() else { break };
                self.health.received += 1;
                match decode(&item) {
                    Ok(ev) => batch.push(ev),
                    Err(_) => self.health.decode_errors += 1,
                }
            }
            if batch.is_empty() {
                return true;
            }
            let full = batch.len() == BATCH;
            if tx.send(Msg::Events(batch)).await.is_err() {
                return false;
            }
            if !full {
                return true;
            }
        }
    }
}
