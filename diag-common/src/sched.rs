//! The scheduler: run-queue latency, blocked time, CPU time, stalls
//! (`tp_btf` programs on `sched_switch`, `sched_wakeup_new`,
//! `sched_process_exit`).
//!
//! Per-switch data never travels as events: the kernel aggregates it per
//! process ([`ProcStats`], map `SCHED_PROCS`) and per thread ([`TaskState`],
//! map `SCHED_TASKS`); only waits longer than a threshold are sent, as
//! [`StallEvent`]s.

use crate::{EventHeader, TASK_COMM_LEN};

/// Number of log2 buckets in a run-queue latency histogram.
///
/// Bucket 0 holds waits under 1 µs; bucket `k >= 1` holds waits in
/// `[2^(k-1), 2^k)` µs; the last bucket also holds everything longer.
pub const HIST_SLOTS: usize = 32;

/// The histogram bucket of a wait of `ns` nanoseconds. Loop-free (the
/// kernel program uses it on every context switch).
#[inline(always)]
pub fn hist_slot(ns: u64) -> usize {
    let us = ns / 1000;
    if us == 0 {
        return 0;
    }
    // floor(log2(us)) by binary search over the bit positions.
    let mut v = us;
    let mut r: u64 = 0;
    let mut s: u64 = ((v > 0xFFFF_FFFF) as u64) << 5;
    v >>= s;
    r |= s;
    s = ((v > 0xFFFF) as u64) << 4;
    v >>= s;
    r |= s;
    s = ((v > 0xFF) as u64) << 3;
    v >>= s;
    r |= s;
    s = ((v > 0xF) as u64) << 2;
    v >>= s;
    r |= s;
    s = ((v > 0x3) as u64) << 1;
    v >>= s;
    r |= s;
    r |= v >> 1;
    let slot = r + 1;
    if slot >= HIST_SLOTS as u64 {
        HIST_SLOTS - 1
    } else {
        slot as usize
    }
}

/// Lower bound of histogram bucket `slot`, in ns.
pub const fn slot_low_ns(slot: usize) -> u64 {
    if slot == 0 {
        0
    } else {
        (1u64 << (slot - 1)) * 1000
    }
}

/// Upper bound (exclusive) of histogram bucket `slot`, in ns.
pub const fn slot_high_ns(slot: usize) -> u64 {
    (1u64 << slot) * 1000
}

/// Bits of a task's `__state` (`include/linux/sched.h`). These values are
/// part of the scheduler's ABI towards tracing tools (they are printed by
/// `sched_switch` and have not changed since Linux 4.14); struct layouts,
/// by contrast, always come from the running kernel's BTF.
pub mod task_state {
    pub const RUNNING: u64 = 0x0000;
    pub const INTERRUPTIBLE: u64 = 0x0001;
    pub const UNINTERRUPTIBLE: u64 = 0x0002;
    pub const DEAD: u64 = 0x0080;
    /// With UNINTERRUPTIBLE: `TASK_IDLE`, an idle kernel thread, not
    /// counted as blocked (like the load average does).
    pub const NOLOAD: u64 = 0x0400;
}

/// Why a thread left the CPU, as the kernel program last saw it
/// ([`TaskState::state`]): what its time off the CPU since then is,
/// apart from the run-queue wait that ends it.
pub mod run_state {
    /// Runnable (preempted, or new): all of its time off the CPU is
    /// run-queue wait.
    pub const RUNQ: u32 = 1;
    /// Voluntary sleep (S: interruptible, idle).
    pub const SLEEP: u32 = 2;
    /// Uninterruptible sleep (D), usually I/O.
    pub const BLOCKED: u32 = 3;
}

/// Offsets into `struct task_struct`, resolved by user space from the
/// kernel's BTF at load time, and the tunables: the read-only global
/// `SCHED_CONFIG` of the kernel object.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedConfig {
    /// Offset of `task_struct.pid` (the thread id).
    pub task_pid: u32,
    /// Offset of `task_struct.tgid` (the process id).
    pub task_tgid: u32,
    /// Offset of `task_struct.comm`.
    pub task_comm: u32,
    /// 1 once user space filled this in; the programs do nothing otherwise.
    pub valid: u32,
    /// A run-queue wait at least this long is sent as a [`StallEvent`].
    pub stall_threshold_ns: u64,
    /// Offset of `task_struct.sched_info.run_delay`: the kernel's own
    /// total run-queue wait of the thread (what `/proc/PID/schedstat`
    /// shows), ns.
    pub task_run_delay: u32,
    /// Offset of `task_struct.se.sum_exec_runtime`: the kernel's own
    /// total CPU time of the thread, ns.
    pub task_exec_runtime: u32,
    /// 1: add exited threads' counters to `SCHED_PROCS` (for views that
    /// read and then clear it); 0: drop them (views that only want stall
    /// events, so the map never fills).
    pub keep_procs: u32,
    /// Offsets of `task_struct.se.cfs_rq`, `cfs_rq.rq` and `rq.clock`:
    /// the run queue's clock, which the scheduler brings up to date as a
    /// switch begins, read with three loads instead of a clock helper
    /// (see `OnCpu::clock_off_ns`). 0: not on this kernel (no
    /// CONFIG_FAIR_GROUP_SCHED), the helper every time.
    pub task_cfs_rq: u32,
    pub cfs_rq_rq: u32,
    pub rq_clock: u32,
}
const _: () = assert!(core::mem::size_of::<SchedConfig>() == 48);

impl SchedConfig {
    pub const fn zeroed() -> Self {
        SchedConfig {
            task_pid: 0,
            task_tgid: 0,
            task_comm: 0,
            valid: 0,
            stall_threshold_ns: 0,
            task_run_delay: 0,
            task_exec_runtime: 0,
            keep_procs: 0,
            task_cfs_rq: 0,
            cfs_rq_rq: 0,
            rq_clock: 0,
        }
    }
}

/// The cumulative scheduler counters of a thread ([`TaskState`]) or of a
/// process's exited threads ([`ProcStats`]), since diag started.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedCounters {
    /// Total run-queue wait, ns (the kernel's `run_delay` of schedstat).
    pub runq_ns: u64,
    /// Number of run-queue waits.
    pub runq_count: u64,
    /// Longest single wait, ns (since diag started).
    pub runq_max_ns: u64,
    /// Time on a CPU, ns (the kernel's `sum_exec_runtime`).
    pub cpu_ns: u64,
    /// Time in uninterruptible sleep (D), ns.
    pub blocked_ns: u64,
    /// Time in voluntary sleep (S), ns.
    pub sleep_ns: u64,
    /// Run-queue wait of other tasks that ended when this one left the
    /// CPU ("delay caused to others"), ns. An approximation: the whole wait
    /// is charged to the task that ran just before the waiter got the CPU.
    pub caused_ns: u64,
    /// Waits charged in `caused_ns`.
    pub caused_count: u64,
    /// Waits longer than the stall threshold.
    pub stalls: u64,
}
const _: () = assert!(core::mem::size_of::<SchedCounters>() == 72);

impl SchedCounters {
    pub const fn zeroed() -> Self {
        SchedCounters {
            runq_ns: 0,
            runq_count: 0,
            runq_max_ns: 0,
            cpu_ns: 0,
            blocked_ns: 0,
            sleep_ns: 0,
            caused_ns: 0,
            caused_count: 0,
            stalls: 0,
        }
    }

    /// Add `o`'s counters (the longest wait is the larger one).
    pub fn add(&mut self, o: &SchedCounters) {
        self.runq_ns += o.runq_ns;
        self.runq_count += o.runq_count;
        self.runq_max_ns = self.runq_max_ns.max(o.runq_max_ns);
        self.cpu_ns += o.cpu_ns;
        self.blocked_ns += o.blocked_ns;
        self.sleep_ns += o.sleep_ns;
        self.caused_ns += o.caused_ns;
        self.caused_count += o.caused_count;
        self.stalls += o.stalls;
    }

    /// Counter-wise maximum.
    pub fn high_water(&mut self, o: &SchedCounters) {
        self.runq_ns = self.runq_ns.max(o.runq_ns);
        self.runq_count = self.runq_count.max(o.runq_count);
        self.runq_max_ns = self.runq_max_ns.max(o.runq_max_ns);
        self.cpu_ns = self.cpu_ns.max(o.cpu_ns);
        self.blocked_ns = self.blocked_ns.max(o.blocked_ns);
        self.sleep_ns = self.sleep_ns.max(o.sleep_ns);
        self.caused_ns = self.caused_ns.max(o.caused_ns);
        self.caused_count = self.caused_count.max(o.caused_count);
        self.stalls = self.stalls.max(o.stalls);
    }
}

/// Per thread (map `SCHED_TASKS`, keyed by thread id): why it last left
/// the CPU and when, the kernel's own totals for it then, and its counters
/// since diag started. Written only at the thread's own switch-outs (and
/// its creation and exit), so the hot path needs no atomics; `caused_*`,
/// which other threads' switch-outs add to, is added atomically. When the
/// thread exits, its counters are added to its process's [`ProcStats`] and
/// the entry is removed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskState {
    /// Boot-time ns when the thread last left the CPU (or was created).
    pub ts_ns: u64,
    /// One of [`run_state`].
    pub state: u32,
    /// Process id of the thread.
    pub tgid: u32,
    /// The kernel's `sched_info.run_delay` of the thread at `ts_ns`.
    pub run_delay_ns: u64,
    /// The kernel's `se.sum_exec_runtime` of the thread at `ts_ns`.
    pub exec_ns: u64,
    pub counters: SchedCounters,
    /// Run-queue latency histogram, see [`hist_slot`].
    pub hist: [u32; HIST_SLOTS],
}
const _: () = assert!(core::mem::size_of::<TaskState>() == 232);

impl TaskState {
    pub const fn zeroed() -> Self {
        TaskState {
            ts_ns: 0,
            state: 0,
            tgid: 0,
            run_delay_ns: 0,
            exec_ns: 0,
            counters: SchedCounters::zeroed(),
            hist: [0; HIST_SLOTS],
        }
    }
}

/// Per process (map `SCHED_PROCS`, keyed by tgid): the counters of its
/// threads that have exited, since diag started. A process's totals are
/// this plus its live threads' [`TaskState`]s. The kernel only adds; user
/// space diffs two readings (a reset from user space would race with the
/// kernel and lose counts) and deletes the entries of processes that are
/// gone once it has read them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStats {
    pub counters: SchedCounters,
    /// `comm` of the thread that created the entry (may be a thread name).
    pub comm: [u8; TASK_COMM_LEN],
    /// Run-queue latency histogram, see [`hist_slot`].
    pub hist: [u64; HIST_SLOTS],
}
const _: () = assert!(core::mem::size_of::<ProcStats>() == 344);

impl ProcStats {
    pub const fn zeroed() -> Self {
        ProcStats {
            counters: SchedCounters::zeroed(),
            comm: [0; TASK_COMM_LEN],
            hist: [0; HIST_SLOTS],
        }
    }
}

/// Per CPU (map `SCHED_ONCPU`): who got the CPU and when, and who had it
/// before (the task its wait is charged to).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OnCpu {
    /// Boot-time ns when `pid` got the CPU.
    pub since_ns: u64,
    pub pid: u32,
    pub tgid: u32,
    /// The task that left the CPU then (0: the CPU was idle).
    pub prev_pid: u32,
    pub prev_tgid: u32,
    pub prev_comm: [u8; TASK_COMM_LEN],
    /// Waits this CPU's tasks had behind thread `debt_pid` (of process
    /// `debt_tgid`) not yet added to its `caused_*` counters: they are
    /// added when it next leaves this CPU (its entry is at hand then), or
    /// when a wait behind another thread needs the slot. Readers add
    /// them to its counters (read after `SCHED_TASKS`: a debt settled in
    /// between is missed once, never counted twice).
    pub debt_pid: u32,
    pub debt_tgid: u32,
    pub debt_ns: u64,
    pub debt_count: u64,
    /// Boot time minus this CPU's run-queue clock (wrapping), from one
    /// boot-clock read when `clock_synced` (the run-queue clock then) is
    /// more than [`CLOCK_RESYNC_NS`] old: between reads, a switch's boot
    /// time is its run-queue clock plus this.
    pub clock_off_ns: u64,
    pub clock_synced: u64,
}
const _: () = assert!(core::mem::size_of::<OnCpu>() == 80);

/// How often (run-queue clock ns) a CPU's switches read the boot clock to
/// re-anchor the run-queue clock: the two run at rates that may differ
/// by up to NTP's 500 ppm, so a switch's time is off by at most 5 us.
pub const CLOCK_RESYNC_NS: u64 = 10_000_000;

/// A run-queue wait longer than the threshold. The header names the
/// waiting task (the victim), the CPU it finally ran on and when it got
/// it; `villain_*` is the task that left that CPU then (`sched_switch`'s
/// prev): the likely culprit, not necessarily the only one. The wait is
/// the kernel's own (`sched_info.run_delay`), so the event is sent when
/// the victim leaves the CPU again: its header time can be earlier than
/// that of events sent before it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StallEvent {
    pub header: EventHeader,
    /// How long the victim waited for a CPU, ns.
    pub wait_ns: u64,
    /// Thread id of the task that held the CPU (0: the CPU was idle).
    pub villain_pid: u32,
    /// Its process id.
    pub villain_tgid: u32,
    pub villain_comm: [u8; TASK_COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<StallEvent>() == 72);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots() {
        assert_eq!(hist_slot(0), 0);
        assert_eq!(hist_slot(999), 0);
        assert_eq!(hist_slot(1_000), 1);
        assert_eq!(hist_slot(1_999), 1);
        assert_eq!(hist_slot(2_000), 2);
        assert_eq!(hist_slot(3_999), 2);
        assert_eq!(hist_slot(4_000), 3);
        assert_eq!(hist_slot(1_000_000), 10); // 1000 us in [512, 1024)
        assert_eq!(hist_slot(u64::MAX), HIST_SLOTS - 1);
        for us in 1..100_000u64 {
            let s = hist_slot(us * 1000);
            let expect = (64 - us.leading_zeros()) as usize;
            assert_eq!(s, expect.min(HIST_SLOTS - 1), "{us}");
            assert!(slot_low_ns(s) <= us * 1000 && us * 1000 < slot_high_ns(s));
        }
    }
}
