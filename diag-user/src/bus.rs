//! The message bus between sources (live ring buffer, recordings) and
//! sinks (the views, the recorder, the exporter): what travels on it.
//!
//! Everything a sink needs arrives here, so a sink never reads the kernel
//! or procfs itself, and the same sink works live and on a recording.

use serde::{Deserialize, Serialize};

use crate::{aggregate::tcp::TableRow, enrich::oom::OomContext, host::HostSample};

/// What travels on the bus from a source to its sinks.
#[derive(Debug, Clone)]
pub enum Msg {
    /// Decoded events, in ring-buffer order.
    Events(Vec<diag_common::user::AnyEvent>),
    /// Where processes first named by the next `Events` run (live, when
    /// asked for: read from /proc as their first events were drained).
    Placements(Vec<(u32, crate::placement::Placement)>),
    /// The kernel side's health counters, cumulative since start.
    Health(Health),
    /// The kernel's TCP socket table at a moment: the first one seeds the
    /// TCP gauges, later ones reconcile them.
    Table { ts_ns: u64, rows: Vec<TableRow> },
    /// Part of a recording could not be read: what and where.
    Damage(String),
    /// What user space learned about an OOM kill (live: read right after
    /// the kill by the source's enricher; replay: the recorded frame). It
    /// follows its kill closely; every kill gets one while OOM context is
    /// gathered.
    OomContext(OomContextFrame),
    /// Every process now (live, for recordings: names short-lived
    /// processes on replay).
    Procs(ProcsFrame),
    /// A procfs sample of the host (live `top`), with the scheduler's
    /// per-process numbers when its programs are attached.
    Host(Box<HostSample>),
    /// The scheduler's per-process numbers over the last interval, read
    /// from its kernel maps (live `serve`).
    Sched {
        ts_ns: u64,
        procs: Vec<crate::aggregate::sched::ProcInterval>,
    },
    /// Pressure stall information (PSI) over the last interval, host-wide
    /// and per cgroup (live: read from the pressure files; replay: the
    /// recorded frame).
    Pressure(Box<crate::aggregate::pressure::PressureFrame>),
    /// Block I/O per device and process over the last interval (live:
    /// read from the block programs' maps; replay: the recorded frame).
    Block(Box<crate::aggregate::block::BlockFrame>),
    /// Memory stalls and swap over the last interval, per process, per
    /// memory cgroup and host-wide (live: the memory feed; replay: the
    /// recorded frame).
    Memory(Box<crate::aggregate::memory::MemInterval>),
    /// A raw reading of the scheduler's kernel maps, with the names and
    /// host counts that go with it (`runq`).
    Runq(Box<RunqReading>),
    /// Futex waits over the last interval, per process and per lock with
    /// its holders (live: the lock maps; replay: the recorded frame).
    Locks(Box<crate::aggregate::lock::LockFrame>),
}

/// What `runq` needs of one reading of the scheduler's maps.
#[derive(Debug, Clone, Default)]
pub struct RunqReading {
    pub ts_ns: u64,
    pub reading: crate::aggregate::sched::Reading,
    /// Processes gone since the reading before, read once more after
    /// their last switch: forget them after this one.
    pub gone: Vec<u32>,
    /// Process names from /proc (the kernel's entry holds an exiting
    /// thread's), for the processes in the reading that still exist.
    pub comms: std::collections::HashMap<u32, String>,
    /// Thread names, for the threads of the processes asked about.
    pub thread_comms: std::collections::HashMap<u32, String>,
    /// vmstat's r and b, from /proc/stat.
    pub procs_running: Option<u64>,
    pub procs_blocked: Option<u64>,
    /// Block I/O over the same interval, when the block programs are
    /// attached.
    pub block: Option<Box<crate::aggregate::block::BlockFrame>>,
    /// The memory maps and /proc/vmstat, when the memory probes are on.
    pub memory: Option<crate::aggregate::memory::MemSnapshot>,
    /// Memory processes gone since the reading before (forget after this).
    pub memory_gone: Vec<u32>,
    /// The lock maps, when the lock probes are attached (`runq --locks`).
    pub locks: Option<crate::aggregate::lock::LockReading>,
}

/// What user space learned about an OOM kill (cgroup paths, top memory
/// users), for the kill whose header has this time and thread id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OomContextFrame {
    pub ts_ns: u64,
    pub tid: u32,
    pub ctx: OomContext,
}

impl OomContextFrame {
    /// The context of `ev`.
    pub fn of(ev: &diag_common::oom::OomKillEvent, ctx: OomContext) -> Self {
        OomContextFrame {
            ts_ns: ev.header.ts_ns,
            tid: ev.header.pid,
            ctx,
        }
    }

    /// This is the context of `ev`.
    pub fn is_for(&self, ev: &diag_common::oom::OomKillEvent) -> bool {
        ev.header.ts_ns == self.ts_ns && ev.header.pid == self.tid
    }
}

/// How a source ended: its last health reading and, for a recording, what
/// the reader found.
#[derive(Debug, Clone, Default)]
pub struct End {
    pub health: Health,
    pub replay: Option<ReplayStats>,
}

/// What a replay found, for the closing words.
#[derive(Debug, Default, Clone)]
pub struct ReplayStats {
    pub frames_damaged: usize,
    pub unknown_events: u64,
    pub ended_cleanly: bool,
    /// The replay was stopped (Ctrl-C, or no sink wanted more) before the
    /// end of the file.
    pub stopped_early: bool,
    pub events: u64,
    /// The first and last times read (events outside the window too).
    pub span: Option<(u64, u64)>,
    /// Reading stopped at the window's end, with more in the file.
    pub past_window: bool,
}

impl ReplayStats {
    /// A time read from the file.
    pub fn read(&mut self, ts: u64) {
        let s = self.span.get_or_insert((ts, ts));
        s.0 = s.0.min(ts);
        s.1 = s.1.max(ts);
    }
}

/// A process in the periodic process-table snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcInfo {
    pub pid: u32,
    /// Start time, clock ticks after boot (with pid: a unique identity).
    pub start_time: u64,
    pub comm: String,
    pub cmdline: String,
    pub cgroup: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcsFrame {
    pub ts_ns: u64,
    pub procs: Vec<ProcInfo>,
}

/// diag's own health: what the kernel side counted (cumulative since
/// start, summed over CPUs) and what user space saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
// Recordings from older builds lack newer counters: they read as zero.
#[serde(default)]
pub struct Health {
    /// When these were read (boot-time ns). Live: the ring buffer was
    /// drained after this time and before the reading was sent, so every
    /// event the kernel submitted before it is on the bus ahead of it.
    #[serde(default)]
    pub ts_ns: u64,
    /// Events the kernel submitted to the ring buffer.
    pub submitted: u64,
    /// Events lost because the ring buffer was full.
    pub ringbuf_full: u64,
    /// Sockets whose owner could not be remembered (owner map full).
    pub sock_map_full: u64,
    /// Listening sockets that could not be remembered (map full).
    pub listen_map_full: u64,
    /// Tracepoint fields the kernel program failed to read.
    pub read_errors: u64,
    /// OOM kills reported without the victim's tgid and memory cgroup
    /// (the tp_btf program's note was missing).
    pub oom_no_victim_task: u64,
    /// Kernel struct reads that failed on the OOM path.
    pub oom_read_errors: u64,
    /// Scheduler: threads not tracked (task map full).
    pub sched_task_map_full: u64,
    /// Scheduler: processes not tracked (process map full).
    pub sched_proc_map_full: u64,
    /// Scheduler: task_struct fields the kernel program failed to read.
    pub sched_read_errors: u64,
    /// Locks: waits or entries not tracked because a lock map was full.
    #[serde(default)]
    pub lock_map_full: u64,
    /// SYNs at listeners whose accept queue diag could not read (older
    /// than diag and out of the socket iterator's reach): their drops may
    /// be missing.
    #[serde(default)]
    pub listen_unreadable: u64,
    /// Memory: processes, cgroups or episodes not tracked (a map full).
    #[serde(default)]
    pub mem_map_full: u64,
    /// Memory: swap-ins whose time was not measured (bio map full).
    #[serde(default)]
    pub mem_bio_map_full: u64,
    /// Records received by user space.
    pub received: u64,
    /// Records user space could not decode.
    pub decode_errors: u64,
}

impl Health {
    /// Everything that makes the output incomplete, in one sentence, or
    /// None when nothing was lost.
    pub fn losses(&self) -> Option<String> {
        let mut parts = Vec::new();
        if self.ringbuf_full > 0 {
            parts.push(format!(
                "{} events dropped (ring buffer full: raise --ring-mib)",
                self.ringbuf_full
            ));
        }
        if self.sock_map_full > 0 {
            parts.push(format!(
                "{} socket owners not tracked (map full)",
                self.sock_map_full
            ));
        }
        if self.listen_map_full > 0 {
            parts.push(format!(
                "{} listeners not tracked (map full)",
                self.listen_map_full
            ));
        }
        if self.read_errors > 0 {
            parts.push(format!("{} tracepoint read errors", self.read_errors));
        }
        if self.oom_no_victim_task > 0 {
            parts.push(format!(
                "{} OOM kills without the victim's memory cgroup from the kernel",
                self.oom_no_victim_task
            ));
        }
        if self.oom_read_errors > 0 {
            parts.push(format!(
                "{} OOM memory cgroup read errors",
                self.oom_read_errors
            ));
        }
        if self.sched_task_map_full > 0 {
            parts.push(format!(
                "{} thread switches not tracked (scheduler task map full)",
                self.sched_task_map_full
            ));
        }
        if self.sched_proc_map_full > 0 {
            parts.push(format!(
                "{} scheduler updates lost (process map full)",
                self.sched_proc_map_full
            ));
        }
        if self.sched_read_errors > 0 {
            parts.push(format!(
                "{} task_struct read errors",
                self.sched_read_errors
            ));
        }
        if self.lock_map_full > 0 {
            parts.push(format!(
                "{} lock waits not tracked (a lock map was full)",
                self.lock_map_full
            ));
        }
        if self.listen_unreadable > 0 {
            parts.push(format!(
                "{} SYNs at listeners older than diag whose accept queue could not be read (their drops may be missing)",
                self.listen_unreadable
            ));
        }
        if self.mem_map_full > 0 {
            parts.push(format!(
                "{} memory stall updates lost (memory map full)",
                self.mem_map_full
            ));
        }
        if self.mem_bio_map_full > 0 {
            parts.push(format!(
                "{} swap-ins not timed (bio map full)",
                self.mem_bio_map_full
            ));
        }
        if self.decode_errors > 0 {
            parts.push(format!("{} records not decoded", self.decode_errors));
        }
        if parts.is_empty() {
            None
        } else {
            Some(parts.join(", "))
        }
    }
}

/// What is new in `now` since `before`: the losses to warn about as they
/// happen, one clause each (empty when nothing new was lost).
pub fn new_losses(before: &Health, now: &Health) -> Vec<String> {
    let mut v = Vec::new();
    let drops = now.ringbuf_full.saturating_sub(before.ringbuf_full);
    if drops > 0 {
        v.push(format!(
            "{drops} events dropped: the ring buffer was full (raise --ring-mib)"
        ));
    }
    let socks = now.sock_map_full.saturating_sub(before.sock_map_full);
    if socks > 0 {
        v.push(format!("{socks} socket owners not tracked (map full)"));
    }
    let listeners = now.listen_map_full.saturating_sub(before.listen_map_full);
    if listeners > 0 {
        v.push(format!("{listeners} listeners not tracked (map full)"));
    }
    let t = now
        .sched_task_map_full
        .saturating_sub(before.sched_task_map_full);
    if t > 0 {
        v.push(format!(
            "{t} thread updates not tracked: the scheduler task map is full"
        ));
    }
    let p = now
        .sched_proc_map_full
        .saturating_sub(before.sched_proc_map_full);
    if p > 0 {
        v.push(format!(
            "{p} process updates lost: the scheduler process map is full"
        ));
    }
    let r = now
        .sched_read_errors
        .saturating_sub(before.sched_read_errors);
    if r > 0 {
        v.push(format!("{r} task_struct reads failed"));
    }
    let m = now.mem_map_full.saturating_sub(before.mem_map_full);
    if m > 0 {
        v.push(format!(
            "{m} memory stall updates lost: a memory map is full"
        ));
    }
    let l = now.lock_map_full.saturating_sub(before.lock_map_full);
    if l > 0 {
        v.push(format!("{l} lock waits not tracked: a lock map is full"));
    }
    v
}
