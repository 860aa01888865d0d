//! Types shared by diag's kernel programs (`diag-ebpf`) and its user-space
//! side (`diag-user`).
//!
//! Every type here is `#[repr(C)]`, `Copy`, has explicit padding and a
//! compile-time size check, so both sides agree on the bytes. Event kinds
//! are raw `u32`s decoded with [`TryFrom`], never transmuted.
#![no_std]

pub mod block;
pub mod lock;
pub mod memory;
pub mod oom;
pub mod proc;
pub mod sched;
pub mod tcp;

#[cfg(feature = "user")]
pub mod user;

/// How many bytes of a classic tracepoint's record the kernel programs copy
/// at once; the fields diag reads must end within them.
pub const RECORD_MAX: usize = 96;

/// Length of a task's `comm` in the kernel (`TASK_COMM_LEN`).
pub const TASK_COMM_LEN: usize = 16;

/// What kind of record follows the header in the ring buffer.
///
/// Numbers are grouped by family: 1-9 TCP, 10-19 OOM, 20-29 scheduler,
/// 30-39 process lifetimes, 40-49 memory stalls, 50-59 block I/O, 60-69
/// locks.
/// Never reuse a number: recordings keep them.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// [`tcp::TcpStateEvent`]
    TcpState = 1,
    /// [`tcp::TcpSockEvent`]: the kernel sent a reset.
    TcpResetSent = 2,
    /// [`tcp::TcpSockEvent`]: a reset arrived.
    TcpResetReceived = 3,
    /// [`tcp::TcpSockEvent`]: a segment was retransmitted.
    TcpRetransmit = 4,
    /// [`tcp::TcpSockEvent`]: a listener retransmitted a SYN-ACK.
    TcpRetransmitSynack = 5,
    /// [`tcp::TcpSockEvent`]: a process accepted a connection that was
    /// attributed to another (the listener's owner): the socket is its own
    /// from now on.
    TcpAccepted = 6,
    /// [`tcp::TcpDropEvent`]: a connection lost at a full listen queue.
    TcpDrop = 7,
    /// [`tcp::TcpCloseEvent`]: a connection's summary at its close.
    TcpClose = 8,
    /// [`oom::OomKillEvent`]
    OomKill = 10,
    /// [`sched::StallEvent`]
    Stall = 20,
    /// [`proc::ProcExitEvent`]: a whole process ended.
    ProcExit = 30,
    /// [`block::BlockSlowEvent`]: a block request slower than the threshold.
    BlockSlow = 50,
    /// [`memory::MemStallEvent`]: a reclaim or compaction episode longer
    /// than the memory stall threshold.
    MemStall = 40,
    /// [`lock::LockWaitEvent`]: a futex wait over the threshold.
    LockWait = 60,
}

impl TryFrom<u32> for EventKind {
    type Error = u32;
    fn try_from(v: u32) -> Result<Self, u32> {
        match v {
            1 => Ok(EventKind::TcpState),
            2 => Ok(EventKind::TcpResetSent),
            3 => Ok(EventKind::TcpResetReceived),
            4 => Ok(EventKind::TcpRetransmit),
            5 => Ok(EventKind::TcpRetransmitSynack),
            6 => Ok(EventKind::TcpAccepted),
            7 => Ok(EventKind::TcpDrop),
            8 => Ok(EventKind::TcpClose),
            10 => Ok(EventKind::OomKill),
            20 => Ok(EventKind::Stall),
            30 => Ok(EventKind::ProcExit),
            50 => Ok(EventKind::BlockSlow),
            40 => Ok(EventKind::MemStall),
            60 => Ok(EventKind::LockWait),
            other => Err(other),
        }
    }
}

/// Common prefix of every event in the ring buffer.
///
/// `pid`/`tgid`/`comm` name the task the event is *attributed to*, which is
/// not necessarily the task that was on the CPU (see each event's docs).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventHeader {
    /// An [`EventKind`] as a raw number.
    pub kind: u32,
    /// CPU the event was observed on.
    pub cpu: u32,
    /// `bpf_ktime_get_boot_ns()`: nanoseconds since boot, suspend included.
    pub ts_ns: u64,
    /// Thread id (the kernel's `pid`).
    pub pid: u32,
    /// Process id (the kernel's `tgid`).
    pub tgid: u32,
    /// Command name, NUL padded.
    pub comm: [u8; TASK_COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<EventHeader>() == 40);

impl EventHeader {
    pub const fn zeroed() -> Self {
        EventHeader {
            kind: 0,
            cpu: 0,
            ts_ns: 0,
            pid: 0,
            tgid: 0,
            comm: [0; TASK_COMM_LEN],
        }
    }
}

/// Indexes into the kernel's per-CPU `COUNTERS` array: things that went
/// wrong in the kernel and must be shown to the user.
///
/// Slots are grouped by family: 0-9 shared and TCP, 10-19 OOM, 20-31
/// scheduler, 40-47 memory, 60-69 locks.
pub mod counters {
    /// An event was lost because the ring buffer was full.
    pub const RINGBUF_FULL: u32 = 0;
    /// The per-socket owner map was full; attribution fell back to the
    /// current task for that socket.
    pub const SOCK_MAP_FULL: u32 = 1;
    /// The listener map was full; passive opens on that port fall back.
    pub const LISTEN_MAP_FULL: u32 = 2;
    /// A tracepoint field could not be read.
    pub const READ_ERROR: u32 = 3;
    /// Events submitted to the ring buffer.
    pub const SUBMITTED: u32 = 4;
    /// SYNs at a listener whose `struct sock` diag does not know (one
    /// older than diag that the socket iterator could not reach, e.g. in
    /// another network namespace): whether its accept queue was full, and
    /// so whether the SYN was dropped, is not known.
    pub const LISTEN_UNREADABLE: u32 = 5;

    /// OOM kills reported without the victim's task facts (tgid, memory
    /// cgroup): the `tp_btf` program's note was missing or stale.
    pub const OOM_NO_VICTIM_TASK: u32 = 10;
    /// A kernel struct read on the OOM path failed (memory cgroup facts
    /// left unknown).
    pub const OOM_READ_ERROR: u32 = 11;
    /// Scheduler: a thread could not be tracked (`SCHED_TASKS` full); its
    /// waits and sleeps are missing until an entry frees up.
    pub const SCHED_TASK_MAP_FULL: u32 = 20;
    /// Scheduler: a process could not be tracked (`SCHED_PROCS` full).
    pub const SCHED_PROC_MAP_FULL: u32 = 21;
    /// Scheduler: a `task_struct` field could not be read.
    pub const SCHED_READ_ERROR: u32 = 22;
    /// Scheduler: stall events submitted.
    pub const SCHED_STALLS: u32 = 23;
    /// Memory: a process could not be tracked (`MEM_PROCS` full).
    pub const MEM_PROC_MAP_FULL: u32 = 40;
    /// Memory: a memory cgroup could not be tracked (`MEM_CGROUPS` full).
    pub const MEM_CGROUP_MAP_FULL: u32 = 41;
    /// Memory: an episode could not be timed (`MEM_TASKS` full).
    pub const MEM_TASK_MAP_FULL: u32 = 42;
    /// Memory: stall events submitted.
    pub const MEM_STALLS: u32 = 43;
    /// Memory: a swap-in could not be timed (`MEM_BIOS` full); its pages
    /// are counted, its time is not.
    pub const MEM_BIO_MAP_FULL: u32 = 44;
    /// Locks: a thread's futex wait could not be noted (`LOCK_WAITING`
    /// full): that wait is missing.
    pub const LOCK_WAIT_MAP_FULL: u32 = 60;
    /// Locks: a (waiter, lock, waker) entry could not be made
    /// (`LOCK_STATS` full): the wait counts in its process only.
    pub const LOCK_STATS_MAP_FULL: u32 = 61;
    /// Locks: a process could not be tracked (`LOCK_PROCS` full).
    pub const LOCK_PROC_MAP_FULL: u32 = 62;
    /// Locks: a kernel lock contention could not be noted (map full).
    pub const LOCK_KWAIT_MAP_FULL: u32 = 63;
    /// Locks: lock-wait events submitted.
    pub const LOCK_EVENTS: u32 = 64;
    /// Number of slots in `COUNTERS`.
    pub const LEN: u32 = 72;
}

/// Tunables written into the kernel object's read-only globals at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingConfig {
    /// Once this many bytes are waiting in the ring buffer, a submit wakes
    /// the reader; below it, submits don't (each wakeup costs microseconds,
    /// and user space drains on a short timer anyway).
    pub wakeup_bytes: u64,
}
const _: () = assert!(core::mem::size_of::<RingConfig>() == 8);

/// Turn a NUL-padded `comm` into the bytes before the first NUL.
pub fn comm_bytes(comm: &[u8; TASK_COMM_LEN]) -> &[u8] {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(TASK_COMM_LEN);
    &comm[..end]
}
