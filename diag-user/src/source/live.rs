//! The live source: drains the kernel ring buffer onto the bus.
//!
//! The kernel side submits without waking us (a wakeup costs microseconds
//! per event in a VM) unless a quarter of the buffer is waiting, so we
//! drain on a short timer as well as on wakeups. Latency to the screen is
//! at most one tick.

use std::time::Duration;

use aya::maps::{MapData, PerCpuArray, RingBuf};
use diag_common::{
    counters,
    tcp::{TcpDropEvent, UNOWNED_REASON_SLOTS, attribution, drop_cause},
    user::{AnyEvent, decode_record},
};
use tokio::{io::unix::AsyncFd, sync::mpsc};
use tokio_util::sync::CancellationToken;

use crate::{
    bus::{End, Msg, OomContextFrame, ProcInfo, ProcsFrame},
    clock::boot_ns,
    enrich::{self, oom::Enricher},
    error::LoadError,
    host::{HostReader, SchedFeed},
    loader::Tracer,
    placement::Placements,
    source::{Health, Source, cancel_on_signal},
};

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
        // Absent in a build without the drop program: no unowned drops.
        let unowned = match tracer.ebpf.take_map("UNOWNED_DROPS") {
            Some(m) => Some(PerCpuArray::try_from(m).map_err(|e| LoadError::Load(e.to_string()))?),
            None => None,
        };
        Ok(Live {
            tracer,
            ring,
            drainer: Drainer {
                counters,
                health: Health::default(),
                placements: None,
                unowned,
                unowned_seen: vec![0; UNOWNED_REASON_SLOTS as usize],
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
        mut enricher: Option<Enricher>,
    ) -> std::io::Result<Health> {
        let Live {
            mut tracer,
            ring,
            drainer: mut me,
        } = self;
        // The kernel programs' own log, when asked for: records become
        // diag's warnings (through `log` into `tracing`).
        if let Some(logger) = tracer.logger.take() {
            let cancel = cancel.clone();
            // SAFETY: the logger owns its ring buffer's fd and keeps it
            // open, unchanged, for as long as the AsyncFd (which owns the
            // logger) lives.
            match unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
            {
                Ok(mut logger) => {
                    tokio::spawn(async move {
                        loop {
                            tokio::select! {
                                _ = cancel.cancelled() => break,
                                guard = logger.readable_mut() => {
                                    let Ok(mut guard) = guard else { break };
                                    guard.get_inner_mut().flush();
                                    guard.clear_ready();
                                }
                            }
                        }
                        logger.get_mut().flush();
                    });
                }
                Err(e) => tracing::warn!("cannot read the kernel programs' log: {e}"),
            }
        }
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
                    if !me.drain(guard.get_inner_mut(), &tx, &enricher).await { break; }
                    guard.clear_ready();
                }
                _ = tick.tick() => {
                    if !me.drain(afd.get_mut(), &tx, &enricher).await { break; }
                }
                _ = health_tick.tick() => {
                    // A barrier: every event submitted before the reading's
                    // time is on the bus before it (serve trusts a cgroup
                    // read only once a reading has passed it).
                    let at = crate::clock::boot_ns();
                    if !me.drain(afd.get_mut(), &tx, &enricher).await { break; }
                    let unowned = me.read_unowned(at);
                    if !unowned.is_empty() && tx.send(Msg::Events(unowned)).await.is_err() { break; }
                    let h = me.read_health(at);
                    if tx.send(Msg::Health(h)).await.is_err() { break; }
                }
            }
        }
        // Whatever the kernel wrote before we stopped is still shown.
        let at = crate::clock::boot_ns();
        me.drain(afd.get_mut(), &tx, &enricher).await;
        let unowned = me.read_unowned(at);
        if !unowned.is_empty() {
            let _ = tx.send(Msg::Events(unowned)).await;
        }
        let h = me.read_health(at);
        let _ = tx.send(Msg::Health(h)).await;
        // The enricher finishes the kills it has, then its results end.
        if let Some(e) = &mut enricher {
            e.close();
        }
        drop(afd);
        drop(tracer);
        Ok(h)
    }
}

struct Drainer {
    counters: PerCpuArray<MapData, u64>,
    health: Health,
    /// Where the processes events name run, when asked for.
    placements: Option<Placements>,
    /// The kernel's per-reason count of TCP packets dropped with no
    /// socket, and the sums already sent.
    unowned: Option<PerCpuArray<MapData, u64>>,
    unowned_seen: Vec<u64>,
}

impl Drainer {
    fn counter(&self, slot: u32) -> u64 {
        self.counters
            .get(&slot, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    /// The unowned drops counted since the last reading, one event per
    /// reason that grew (time `at`, pid 0, the packets in `count`).
    fn read_unowned(&mut self, at: u64) -> Vec<AnyEvent> {
        let Some(map) = &self.unowned else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (slot, seen) in self.unowned_seen.iter_mut().enumerate() {
            let Ok(per_cpu) = map.get(&(slot as u32), 0) else {
                continue;
            };
            let total: u64 = per_cpu.iter().sum();
            if total <= *seen {
                continue;
            }
            // A count above u32::MAX in one second goes out in pieces.
            let mut left = total - *seen;
            *seen = total;
            while left > 0 {
                let n = left.min(u64::from(u32::MAX));
                left -= n;
                out.push(AnyEvent::TcpDrop(unowned_event(at, slot as u32, n as u32)));
            }
        }
        out
    }

    /// The counters now; `at` is the reading's time, taken before the
    /// drain that precedes it.
    fn read_health(&mut self, at: u64) -> Health {
        self.health.ts_ns = at;
        self.health.submitted = self.counter(counters::SUBMITTED);
        self.health.ringbuf_full = self.counter(counters::RINGBUF_FULL);
        self.health.sock_map_full = self.counter(counters::SOCK_MAP_FULL);
        self.health.listen_map_full = self.counter(counters::LISTEN_MAP_FULL);
        self.health.read_errors = self.counter(counters::READ_ERROR);
        self.health.listen_unreadable = self.counter(counters::LISTEN_UNREADABLE);
        self.health.oom_no_victim_task = self.counter(counters::OOM_NO_VICTIM_TASK);
        self.health.oom_read_errors = self.counter(counters::OOM_READ_ERROR);
        self.health.sched_task_map_full = self.counter(counters::SCHED_TASK_MAP_FULL);
        self.health.sched_proc_map_full = self.counter(counters::SCHED_PROC_MAP_FULL);
        self.health.sched_read_errors = self.counter(counters::SCHED_READ_ERROR);
        self.health.mem_map_full = self.counter(counters::MEM_PROC_MAP_FULL)
            + self.counter(counters::MEM_CGROUP_MAP_FULL)
            + self.counter(counters::MEM_TASK_MAP_FULL);
        self.health.mem_bio_map_full = self.counter(counters::MEM_BIO_MAP_FULL);
        self.health.lock_map_full = [
            counters::LOCK_WAIT_MAP_FULL,
            counters::LOCK_STATS_MAP_FULL,
            counters::LOCK_PROC_MAP_FULL,
            counters::LOCK_KWAIT_MAP_FULL,
        ]
        .iter()
        .map(|&s| self.counter(s))
        .sum();
        self.health
    }

    /// Returns false when the receiver is gone.
    async fn drain(
        &mut self,
        ring: &mut RingBuf<MapData>,
        tx: &mpsc::Sender<Msg>,
        enricher: &Option<Enricher>,
    ) -> bool {
        loop {
            let mut batch = Vec::new();
            while batch.len() < BATCH {
                let Some(item) = ring.next() else { break };
                self.health.received += 1;
                match decode_record(&item) {
                    Ok((ev, more)) => {
                        batch.push(ev);
                        if let Some(ev) = more {
                            // A closing connection's record holds two.
                            self.health.received += 1;
                            batch.push(ev);
                        }
                    }
                    Err(_) => self.health.decode_errors += 1,
                }
            }
            if batch.is_empty() {
                return true;
            }
            let full = batch.len() >= BATCH;
            // Every OOM kill gets its context: from the enricher, or
            // (its queue full) at once, empty, so no sink waits for it.
            let refused: Vec<OomContextFrame> = match enricher {
                Some(en) => batch
                    .iter()
                    .filter_map(|e| match e {
                        diag_common::user::AnyEvent::OomKill(o) if !en.submit(*o) => {
                            Some(OomContextFrame::of(o, Default::default()))
                        }
                        _ => None,
                    })
                    .collect(),
                None => Vec::new(),
            };
            if let Some(p) = &mut self.placements {
                let new = p.learn(&batch);
                if !new.is_empty() && tx.send(Msg::Placements(new)).await.is_err() {
                    return false;
                }
            }
            if tx.send(Msg::Events(batch)).await.is_err() {
                return false;
            }
            for f in refused {
                if tx.send(Msg::OomContext(f)).await.is_err() {
                    return false;
                }
            }
            if !full {
                return true;
            }
        }
    }
}

/// An event standing for `count` TCP packets dropped with no socket for
/// `reason`, read at `at`.
pub fn unowned_event(at: u64, reason: u32, count: u32) -> TcpDropEvent {
    let mut header = diag_common::EventHeader::zeroed();
    header.kind = diag_common::EventKind::TcpDrop as u32;
    header.ts_ns = at;
    TcpDropEvent {
        header,
        skaddr: 0,
        addr: [0; 16],
        raddr: [0; 16],
        port: 0,
        rport: 0,
        family: 0,
        cause: drop_cause::UNOWNED,
        attribution: attribution::KERNEL,
        reason,
        netns: 0,
        queue: u32::MAX,
        backlog: u32::MAX,
        current_tgid: 0,
        count,
    }
}

/// What the live source puts on the bus besides the ring buffer's events
/// and health, each read off the event path on its own schedule.
#[derive(Default)]
pub struct Feeds {
    /// The kernel's TCP socket table: once at start (after the probes
    /// were attached, so no socket falls between), then this often.
    pub tables: Option<Duration>,
    /// The process table, this often (recordings).
    pub procs: Option<Duration>,
    /// A procfs sample of the host this often, the first at once (top).
    pub host: Option<(Duration, HostReader)>,
    /// The scheduler's per-process numbers this often (serve).
    pub sched: Option<(Duration, SchedFeed)>,
    /// The lock maps this often (record, serve).
    pub locks: Option<(Duration, crate::source::lock::LockFeed)>,
    /// The pressure files (PSI) this often.
    pub pressure: Option<(Duration, crate::source::pressure::PressureFeed)>,
    /// The block programs' maps this often (serve, record).
    pub block: Option<(Duration, crate::source::block::BlockFeed)>,
    /// The memory programs' maps this often.
    pub memory: Option<(Duration, crate::source::memory::MemoryFeed)>,
    /// Read each OOM kill's context (cgroup paths, top memory users) and
    /// send it after the kill.
    pub oom_context: bool,
    /// Where each process that events name runs (cgroup, container,
    /// network namespace), read once per process, sent before its first
    /// events.
    pub placements: bool,
}

/// Start draining `live`, and the pollers of `feeds`, onto a new bus.
/// Signal handlers are in place when this returns. Call inside a tokio
/// runtime.
pub fn start(live: Live, feeds: Feeds) -> Source {
    let cancel = CancellationToken::new();
    let (tx, rx) = mpsc::channel::<Msg>(1024);
    let attached = live.attached().to_vec();
    if let Some(every) = feeds.tables {
        // Where the socket table's processes run, for the placements feed:
        // processes holding sockets older than diag may send no event.
        let placements = feeds.placements;
        poll(
            &tx,
            &cancel,
            every,
            move || placements.then(Placements::default),
            |mut places: Option<Placements>| {
                let rows = enrich::tcp_table();
                let mut msgs = Vec::new();
                if let Some(p) = &mut places {
                    let new =
                        p.learn_pids(rows.iter().filter_map(|r| r.owner.as_ref().map(|o| o.0)));
                    if !new.is_empty() {
                        msgs.push(Msg::Placements(new));
                    }
                }
                msgs.push(Msg::Table {
                    ts_ns: boot_ns(),
                    rows,
                });
                (places, msgs)
            },
        );
    }
    if let Some(every) = feeds.procs {
        poll(
            &tx,
            &cancel,
            every,
            || (),
            |()| ((), vec![Msg::Procs(process_table())]),
        );
    }
    if let Some((every, reader)) = feeds.host {
        poll(
            &tx,
            &cancel,
            every,
            move || reader,
            |mut r: HostReader| {
                let s = r.sample();
                (r, vec![Msg::Host(Box::new(s))])
            },
        );
    }
    if let Some((every, feed)) = feeds.sched {
        poll(
            &tx,
            &cancel,
            every,
            move || feed,
            |mut f: SchedFeed| {
                let ts_ns = boot_ns();
                let procs = f.read(ts_ns);
                (f, vec![Msg::Sched { ts_ns, procs }])
            },
        );
    }
    if let Some((every, feed)) = feeds.locks {
        poll(
            &tx,
            &cancel,
            every,
            move || feed,
            |mut f: crate::source::lock::LockFeed| {
                let frame = f.read();
                (f, vec![Msg::Locks(Box::new(frame))])
            },
        );
    }
    if let Some((every, feed)) = feeds.pressure {
        poll(
            &tx,
            &cancel,
            every,
            move || feed,
            |mut f: crate::source::pressure::PressureFeed| {
                let frame = f.read();
                (f, vec![Msg::Pressure(Box::new(frame))])
            },
        );
    }
    if let Some((every, feed)) = feeds.block {
        poll_to_end(
            &tx,
            &cancel,
            every,
            move || feed,
            |mut f: crate::source::block::BlockFeed| {
                let frame = f.read();
                (f, vec![Msg::Block(Box::new(frame))])
            },
        );
    }
    if let Some((every, feed)) = feeds.memory {
        poll(
            &tx,
            &cancel,
            every,
            move || feed,
            |mut f: crate::source::memory::MemoryFeed| {
                let frame = f.read();
                (f, vec![Msg::Memory(Box::new(frame))])
            },
        );
    }
    let enricher = if feeds.oom_context {
        let (e, mut results) = Enricher::start(true);
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some((ev, ctx)) = results.recv().await {
                if tx
                    .send(Msg::OomContext(OomContextFrame::of(&ev, ctx)))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        Some(e)
    } else {
        None
    };
    let mut live = live;
    if feeds.placements {
        live.drainer.placements = Some(Placements::default());
    }
    let task = tokio::spawn(live.run(tx, cancel.clone(), enricher));
    cancel_on_signal(&cancel);
    Source {
        rx,
        cancel,
        done: Box::pin(async move {
            let health = task.await??;
            Ok(End {
                health,
                replay: None,
            })
        }),
        attached,
    }
}

/// Every `every` (the first at once), until `cancel`: run `read` on the
/// blocking pool (procfs reads can take a while on a busy host, and the
/// ring buffer keeps draining meanwhile) and send its message. `read`
/// gets back the state it returned the last time.
fn poll<S: Send + 'static>(
    tx: &mpsc::Sender<Msg>,
    cancel: &CancellationToken,
    every: Duration,
    init: impl FnOnce() -> S + Send + 'static,
    read: fn(S) -> (S, Vec<Msg>),
) {
    poll_with(tx, cancel, every, init, read, false);
}

/// [`poll`], and a last read when `cancel` comes: for feeds of
/// intervals (block I/O), whose last part would be lost otherwise.
fn poll_to_end<S: Send + 'static>(
    tx: &mpsc::Sender<Msg>,
    cancel: &CancellationToken,
    every: Duration,
    init: impl FnOnce() -> S + Send + 'static,
    read: fn(S) -> (S, Vec<Msg>),
) {
    poll_with(tx, cancel, every, init, read, true);
}

fn poll_with<S: Send + 'static>(
    tx: &mpsc::Sender<Msg>,
    cancel: &CancellationToken,
    every: Duration,
    init: impl FnOnce() -> S + Send + 'static,
    read: fn(S) -> (S, Vec<Msg>),
    read_at_end: bool,
) {
    let tx = tx.clone();
    let cancel = cancel.clone();
    tokio::spawn(async move {
        let mut state = Some(init());
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let last = tokio::select! {
                _ = cancel.cancelled() => true,
                _ = tick.tick() => false,
            };
            if last && !read_at_end {
                break;
            }
            let Some(s) = state.take() else { break };
            let Ok((s, msgs)) = tokio::task::spawn_blocking(move || read(s)).await else {
                break;
            };
            state = Some(s);
            for msg in msgs {
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
            if last {
                break;
            }
        }
    });
}

/// Every process now, for naming short-lived processes on replay.
pub fn process_table() -> ProcsFrame {
    let ts_ns = boot_ns();
    let mut procs = Vec::new();
    if let Ok(all) = procfs::process::all_processes() {
        for p in all.flatten() {
            let Ok(stat) = p.stat() else { continue };
            let cmdline = crate::text::owned(p.cmdline().map(|c| c.join(" ")).unwrap_or_default());
            let cgroup = enrich::cgroup_of(stat.pid as u32).unwrap_or_default();
            procs.push(ProcInfo {
                pid: stat.pid as u32,
                start_time: stat.starttime,
                comm: crate::text::owned(stat.comm),
                cmdline,
                cgroup,
            });
        }
    }
    ProcsFrame { ts_ns, procs }
}
