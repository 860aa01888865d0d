//! The scheduler, from `tp_btf` programs (raw tracepoints with typed
//! arguments: cheaper than plain tracepoints, and they carry the
//! `task_struct`s).
//!
//! The kernel already keeps, per thread, its total run-queue wait
//! (`sched_info.run_delay`, what `/proc/PID/schedstat` shows) and its CPU
//! time (`se.sum_exec_runtime`). So the hot path is one program on
//! `sched_switch` that, when a thread leaves the CPU, reads both with
//! plain loads (offsets from BTF, constants of the frozen `SCHED_CONFIG`)
//! and compares them with what they were when it last left: the
//! difference is the one wait that ended its time off the CPU and the CPU
//! time it just had; the rest of that time off the CPU was sleep (S) or
//! blocked (D), as it said when it left. No program runs on wakeups.
//!
//! Per switch: one hash lookup (prev's `SCHED_TASKS` entry) and the
//! per-CPU `SCHED_ONCPU` slot. The wait is charged to the task that held
//! the CPU before as a debt kept in that slot, added to the task's entry
//! when it next leaves this CPU (its entry at hand then: two threads
//! taking turns need no other lookup), or by a second lookup when a wait
//! behind another task needs the slot. A thread's own entry is written
//! only at its own switch-outs, except for those `caused_*` additions,
//! which are atomic. When a thread exits, its counters are added to its
//! process's entry in `SCHED_PROCS` (if user space reads it; atomically:
//! threads of one process may exit on two CPUs at once).
//!
//! - `sched_switch`: prev leaves the CPU: it is charged as above; next
//!   gets it, noted per CPU with prev as the task its wait is charged to.
//! - `sched_wakeup_new`: a new thread, whose kernel totals start at zero:
//!   its first wait is counted too.
//! - `sched_process_exit`, and the final switch-out in TASK_DEAD: fold the
//!   thread into its process and forget it.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id,
        bpf_ktime_get_boot_ns,
    },
    macros::{btf_tracepoint, map},
    maps::{HashMap, PerCpuArray},
    programs::BtfTracePointContext,
    Global,
};
use diag_common::{
    counters,
    sched::{
        hist_slot, run_state, task_state, OnCpu, ProcStats, SchedConfig, SchedCounters, StallEvent,
        TaskState, CLOCK_RESYNC_NS, HIST_SLOTS,
    },
    EventHeader, EventKind, TASK_COMM_LEN,
};

use crate::maps::{btf_load, btf_load_16, count, submit_flags, EVENTS};

/// task_struct offsets from BTF and the stall threshold, written by user
/// space at load time.
#[unsafe(no_mangle)]
static SCHED_CONFIG: Global<SchedConfig> = Global::new(SchedConfig::zeroed());

/// Per thread, keyed by thread id. User space shrinks it to one entry when
/// no scheduler view is asked for.
#[map]
static SCHED_TASKS: HashMap<u32, TaskState> = HashMap::with_max_entries(65_536, 0);

/// Per process, keyed by tgid: its exited threads.
#[map]
static SCHED_PROCS: HashMap<u32, ProcStats> = HashMap::with_max_entries(16_384, 0);

/// Who is on each CPU since when, and who had it before.
#[map]
static SCHED_ONCPU: PerCpuArray<OnCpu> = PerCpuArray::with_max_entries(1, 0);

/// Zeroed values to insert from (too big for the BPF stack).
#[map]
static SCHED_PROC_TEMPLATE: PerCpuArray<ProcStats> = PerCpuArray::with_max_entries(1, 0);
#[map]
static SCHED_TASK_TEMPLATE: PerCpuArray<TaskState> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn add(p: *mut u64, v: u64) {
    // `core::sync::atomic` has no read-modify-write operations for the BPF
    // target (no compare-and-swap); the intrinsic lowers to BPF's atomic add.
    // SAFETY: `p` points into a map value, valid and 8-byte aligned while
    // the program runs; the kernel allows atomic adds on map values.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            p, v,
        )
    };
}

/// (pid, tgid) of a task.
#[inline(always)]
fn ids(task: *const u8, c: &SchedConfig) -> (u32, u32) {
    (btf_load(task, c.task_pid), btf_load(task, c.task_tgid))
}

/// The process's stats, created if absent.
#[inline(always)]
fn proc_stats(tgid: u32) -> Option<*mut ProcStats> {
    if let Some(p) = SCHED_PROCS.get_ptr_mut(tgid) {
        return Some(p);
    }
    let t = SCHED_PROC_TEMPLATE.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch value, only this program on this CPU uses it.
    unsafe {
        *t = ProcStats::zeroed();
        (*t).comm = bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]);
        // By reference: a copy of the value would crowd the BPF stack.
        #[allow(clippy::needless_borrows_for_generic_args)]
        let inserted = SCHED_PROCS.insert(tgid, &*t, BPF_NOEXIST as u64);
        if inserted.is_err() && SCHED_PROCS.get_ptr_mut(tgid).is_none() {
            count(counters::SCHED_PROC_MAP_FULL);
            return None;
        }
    }
    SCHED_PROCS.get_ptr_mut(tgid)
}

/// Add a thread's counters to its process (when user space reads
/// processes) and zero them. Runs in the exiting thread itself (current),
/// so `comm` is its own.
#[inline(always)]
fn fold(t: *mut TaskState, c: &SchedConfig) {
    // SAFETY: `t` is a map value pointer, valid while we run.
    unsafe {
        let p = if c.keep_procs != 0 {
            proc_stats((*t).tgid)
        } else {
            None
        };
        if let Some(p) = p {
            let (pc, tc) = (&raw mut (*p).counters, &raw const (*t).counters);
            add(&raw mut (*pc).runq_ns, (*tc).runq_ns);
            add(&raw mut (*pc).runq_count, (*tc).runq_count);
            add(&raw mut (*pc).cpu_ns, (*tc).cpu_ns);
            add(&raw mut (*pc).blocked_ns, (*tc).blocked_ns);
            add(&raw mut (*pc).sleep_ns, (*tc).sleep_ns);
            add(&raw mut (*pc).caused_ns, (*tc).caused_ns);
            add(&raw mut (*pc).caused_count, (*tc).caused_count);
            add(&raw mut (*pc).stalls, (*tc).stalls);
            if (*tc).runq_max_ns > (*pc).runq_max_ns {
                (*pc).runq_max_ns = (*tc).runq_max_ns;
            }
            let mut i = 0;
            while i < HIST_SLOTS {
                let n = (*t).hist[i];
                if n != 0 {
                    add(&raw mut (*p).hist[i], u64::from(n));
                }
                i += 1;
            }
        }
        (*t).counters = SchedCounters::zeroed();
        (*t).hist = [0; HIST_SLOTS];
    }
}

/// A fresh entry for a thread: its kernel totals now, nothing charged.
#[inline(always)]
fn new_entry(task: *const u8, pid: u32, tgid: u32, state: u32, now: u64, c: &SchedConfig) {
    let Some(t) = SCHED_TASK_TEMPLATE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch value, only this program on this CPU uses it.
    unsafe {
        *t = TaskState::zeroed();
        (*t).tgid = tgid;
        (*t).state = state;
        (*t).ts_ns = now;
        (*t).run_delay_ns = btf_load::<u64>(task, c.task_run_delay);
        (*t).exec_ns = btf_load::<u64>(task, c.task_exec_runtime);
        #[allow(clippy::needless_borrows_for_generic_args)]
        if SCHED_TASKS.insert(pid, &*t, BPF_ANY as u64).is_err() {
            count(counters::SCHED_TASK_MAP_FULL);
        }
    }
}

/// What leaving the CPU with `prev_state` makes of a thread's time off it.
#[inline(always)]
fn leaving_state(preempt: u64, prev_state: u64) -> u32 {
    if preempt != 0 || prev_state == task_state::RUNNING {
        run_state::RUNQ
    } else if prev_state & task_state::UNINTERRUPTIBLE != 0 && prev_state & task_state::NOLOAD == 0
    {
        run_state::BLOCKED
    } else {
        run_state::SLEEP
    }
}

#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> u32 {
    match try_sched_switch(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

#[inline(always)]
fn try_sched_switch(ctx: &BtfTracePointContext) -> Result<u32, u32> {
    let c = SCHED_CONFIG.load();
    if c.valid == 0 {
        return Ok(0);
    }
    // sched_switch(bool preempt, task_struct *prev, task_struct *next,
    //              unsigned int prev_state)
    let preempt: u64 = ctx.arg(0);
    let prev: *const u8 = ctx.arg(1);
    let next: *const u8 = ctx.arg(2);
    let prev_state: u64 = ctx.arg(3);
    let (prev_pid, prev_tgid) = ids(prev, &c);
    let oc = SCHED_ONCPU.get_ptr_mut(0).ok_or(0u32)?;
    let now = switch_time(prev, oc, &c);
    if prev_pid != 0 {
        switch_out(prev, prev_pid, prev_tgid, preempt, prev_state, now, oc, &c);
    }
    // next gets the CPU; prev is the one its wait is charged to.
    let (next_pid, next_tgid) = ids(next, &c);
    // SAFETY: per-CPU value; the scheduler does not nest on a CPU.
    unsafe {
        (*oc).since_ns = now;
        (*oc).pid = next_pid;
        (*oc).tgid = next_tgid;
        (*oc).prev_pid = prev_pid;
        (*oc).prev_tgid = prev_tgid;
        // For a stall event of next's.
        (*oc).prev_comm = btf_load_16(prev, c.task_comm);
    }
    Ok(0)
}

/// Boot time of this switch. The scheduler brought its run queue's clock
/// up to date as the switch began: three loads (prev's `se.cfs_rq`, its
/// `rq`, the `clock`) plus this CPU's offset to the boot clock, which one
/// helper call renews every [`CLOCK_RESYNC_NS`] of it. A helper call
/// costs about a third of this program; the loads, a few ns.
#[inline(always)]
fn switch_time(prev: *const u8, oc: *mut OnCpu, c: &SchedConfig) -> u64 {
    if c.task_cfs_rq != 0 {
        let cfs_rq = btf_load::<u64>(prev, c.task_cfs_rq) as *const u8;
        if !cfs_rq.is_null() {
            let rq = btf_load::<u64>(cfs_rq, c.cfs_rq_rq) as *const u8;
            if !rq.is_null() {
                let clock = btf_load::<u64>(rq, c.rq_clock);
                // SAFETY: this CPU's slot (see `switch_out`).
                unsafe {
                    let synced = (*oc).clock_synced;
                    if synced != 0 && clock >= synced && clock - synced < CLOCK_RESYNC_NS {
                        return clock.wrapping_add((*oc).clock_off_ns);
                    }
                    // SAFETY: helper without arguments.
                    let boot = bpf_ktime_get_boot_ns();
                    (*oc).clock_off_ns = boot.wrapping_sub(clock);
                    (*oc).clock_synced = clock;
                    return boot;
                }
            }
        }
    }
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_boot_ns() }
}

/// prev leaves the CPU: charge what it did since it last left.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn switch_out(
    prev: *const u8,
    pid: u32,
    tgid: u32,
    preempt: u64,
    prev_state: u64,
    now: u64,
    oc: *mut OnCpu,
    c: &SchedConfig,
) {
    let dead = prev_state & task_state::DEAD != 0;
    let Some(t) = SCHED_TASKS.get_ptr_mut(pid) else {
        // A thread diag has not seen leave the CPU yet: from now on.
        if !dead {
            new_entry(prev, pid, tgid, leaving_state(preempt, prev_state), now, c);
        }
        return;
    };
    let run_delay = btf_load::<u64>(prev, c.task_run_delay);
    let exec = btf_load::<u64>(prev, c.task_exec_runtime);
    // SAFETY: map value pointer, valid while we run; `oc` is this CPU's
    // slot, which only the switch on this CPU writes.
    unsafe {
        // What prev is owed for waits it caused here, with its entry at
        // hand (before a final fold).
        if (*oc).debt_pid == pid && (*oc).debt_count != 0 {
            pay(oc, Some(t));
        }
        let wait = run_delay.saturating_sub((*t).run_delay_ns);
        let cpu = exec.saturating_sub((*t).exec_ns);
        let off = now
            .saturating_sub((*t).ts_ns)
            .saturating_sub(wait)
            .saturating_sub(cpu);
        let k = &raw mut (*t).counters;
        if (*t).state == run_state::BLOCKED {
            (*k).blocked_ns += off;
        } else if (*t).state == run_state::SLEEP {
            (*k).sleep_ns += off;
        }
        (*k).cpu_ns += cpu;
        (*k).runq_ns += wait;
        (*k).runq_count += 1;
        let slot = hist_slot(wait) & (HIST_SLOTS - 1);
        (*t).hist[slot] += 1;
        if wait > (*k).runq_max_ns {
            (*k).runq_max_ns = wait;
        }
        // The task that had this CPU before prev got it caused the wait:
        // owed to it in this CPU's slot (see `OnCpu::debt_pid`), so that
        // a ping-pong of two threads needs no second lookup.
        let on_this_cpu = (*oc).pid == pid;
        let villain = (*oc).prev_pid;
        if wait != 0 && on_this_cpu && villain != 0 {
            if (*oc).debt_count != 0 && (*oc).debt_pid != villain {
                pay(oc, SCHED_TASKS.get_ptr_mut((*oc).debt_pid));
            }
            (*oc).debt_pid = villain;
            (*oc).debt_tgid = (*oc).prev_tgid;
            (*oc).debt_ns += wait;
            (*oc).debt_count += 1;
        }
        if wait >= c.stall_threshold_ns {
            (*k).stalls += 1;
            stall_event(pid, tgid, wait, now, oc, on_this_cpu);
        }
        (*t).run_delay_ns = run_delay;
        (*t).exec_ns = exec;
        (*t).ts_ns = now;
        (*t).state = leaving_state(preempt, prev_state);
        if dead {
            fold(t, c);
            let _ = SCHED_TASKS.remove(pid);
        }
    }
}

/// Add this CPU's debt to the entry of the thread it is owed to (`None`:
/// the thread is gone, and is not charged), and clear it.
#[inline(always)]
fn pay(oc: *mut OnCpu, to: Option<*mut TaskState>) {
    // SAFETY: this CPU's slot (see `switch_out`); `to` is a map value
    // pointer, valid while we run, added to atomically (other CPUs may
    // pay the same thread at the same time).
    unsafe {
        if let Some(v) = to {
            add(&raw mut (*v).counters.caused_ns, (*oc).debt_ns);
            add(&raw mut (*v).counters.caused_count, (*oc).debt_count);
        }
        (*oc).debt_ns = 0;
        (*oc).debt_count = 0;
    }
}

/// A stall of the current task (prev), which is leaving the CPU after a
/// long wait for it; the villain is the task it took the CPU from.
#[inline(always)]
fn stall_event(pid: u32, tgid: u32, wait: u64, now: u64, oc: *const OnCpu, on_this_cpu: bool) {
    let Some(mut entry) = EVENTS.reserve::<StallEvent>(0) else {
        count(counters::RINGBUF_FULL);
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: a reserved, exclusively owned slot of the right size; every
    // field is written before submit. `oc` is this CPU's slot.
    unsafe {
        (*ev).header = EventHeader {
            kind: EventKind::Stall as u32,
            cpu: bpf_get_smp_processor_id(),
            ts_ns: if on_this_cpu { (*oc).since_ns } else { now },
            pid,
            tgid,
            comm: bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]),
        };
        (*ev).wait_ns = wait;
        if on_this_cpu {
            (*ev).villain_pid = (*oc).prev_pid;
            (*ev).villain_tgid = (*oc).prev_tgid;
            (*ev).villain_comm = (*oc).prev_comm;
        } else {
            (*ev).villain_pid = 0;
            (*ev).villain_tgid = 0;
            (*ev).villain_comm = [0; TASK_COMM_LEN];
        }
    }
    let flags = submit_flags();
    entry.submit(flags);
    count(counters::SUBMITTED);
    count(counters::SCHED_STALLS);
}

/// sched_wakeup_new(task_struct *p): a new thread, first queued now.
#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn sched_wakeup_new(ctx: BtfTracePointContext) -> u32 {
    let c = SCHED_CONFIG.load();
    if c.valid == 0 {
        return 0;
    }
    let p: *const u8 = ctx.arg(0);
    let (pid, tgid) = ids(p, &c);
    if pid != 0 {
        // SAFETY: helper without arguments.
        let now = unsafe { bpf_ktime_get_boot_ns() };
        new_entry(p, pid, tgid, run_state::RUNQ, now, &c);
    }
    0
}

#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(ctx: BtfTracePointContext) -> u32 {
    let c = SCHED_CONFIG.load();
    if c.valid == 0 {
        return 0;
    }
    let _ = ctx;
    // sched_process_exit(task_struct *p, ...): p is current. Fold what the
    // thread did so far; the entry stays for its last switches and goes
    // at the final switch-out (TASK_DEAD).
    let pid = bpf_get_current_pid_tgid() as u32;
    if let Some(t) = SCHED_TASKS.get_ptr_mut(pid) {
        fold(t, &c);
    }
    0
}
