//! The scheduler, from `tp_btf` programs (raw tracepoints with typed
//! arguments: cheaper than plain tracepoints, and they carry the
//! `task_struct`s, so the next task's process id is at hand).
//!
//! The hot path (every switch and wakeup) touches only per-thread state
//! (`SCHED_TASKS`) and a per-CPU slot: one hash lookup per wakeup, two per
//! switch, no atomics (a thread's entry is only written under its
//! run-queue lock), and `task_struct` fields read with plain loads (the
//! verifier checks them against BTF: the offsets are constants of the
//! frozen read-only `SCHED_CONFIG`). When a thread exits, its counters
//! are added to its process's entry in `SCHED_PROCS` (atomically: threads
//! of one process may exit on two CPUs at once).
//!
//! - `sched_wakeup`/`sched_wakeup_new`: the thread becomes runnable; the
//!   sleep that ends here is charged (D or S).
//! - `sched_switch`: prev leaves the CPU (runnable if preempted, else
//!   asleep) and is charged its CPU time; next gets the CPU, ending its
//!   run-queue wait, charged to next and, as "caused", to prev.
//! - `sched_process_exit`, and the final switch-out in TASK_DEAD: fold the
//!   thread into its process and forget it.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id,
        bpf_ktime_get_boot_ns, bpf_probe_read_kernel,
    },
    macros::{btf_tracepoint, map},
    maps::{HashMap, PerCpuArray},
    programs::BtfTracePointContext,
    Global,
};
use diag_common::{
    counters,
    sched::{
        hist_slot, run_state, task_state, OnCpu, ProcStats, SchedConfig, StallEvent, TaskState,
        HIST_SLOTS,
    },
    EventHeader, EventKind, TASK_COMM_LEN,
};

use crate::maps::{count, submit_flags, EVENTS};

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

/// Who is on each CPU since when, for CPU time.
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

/// A u32 field of a task, by a plain load. `task` is a BTF pointer from
/// the tracepoint's arguments and `offset` a constant of the frozen
/// config, so the verifier checks the access against BTF and turns it
/// into a fault-safe load.
#[inline(always)]
fn task_u32(task: *const u8, offset: u32) -> u32 {
    // SAFETY: see above; a bad address reads as 0 instead of faulting.
    unsafe { core::ptr::read_volatile(task.add(offset as usize) as *const u32) }
}

/// (pid, tgid) of a task.
#[inline(always)]
fn ids(task: *const u8, c: &SchedConfig) -> (u32, u32) {
    (task_u32(task, c.task_pid), task_u32(task, c.task_tgid))
}

#[inline(always)]
fn comm_of(task: *const u8, c: &SchedConfig) -> [u8; TASK_COMM_LEN] {
    // SAFETY: the offset comes from the running kernel's BTF; the helper
    // checks the address.
    unsafe { bpf_probe_read_kernel(task.add(c.task_comm as usize) as *const [u8; TASK_COMM_LEN]) }
        .unwrap_or_else(|_| {
            count(counters::SCHED_READ_ERROR);
            [0; TASK_COMM_LEN]
        })
}

/// The thread's state, created (zeroed, with `tgid`) if absent.
#[inline(always)]
fn task_entry(pid: u32, tgid: u32) -> Option<*mut TaskState> {
    if let Some(t) = SCHED_TASKS.get_ptr_mut(pid) {
        return Some(t);
    }
    let t = SCHED_TASK_TEMPLATE.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch value, only this program on this CPU uses it.
    unsafe {
        *t = TaskState::zeroed();
        (*t).tgid = tgid;
        // By reference: a copy of the value would crowd the BPF stack.
        #[allow(clippy::needless_borrows_for_generic_args)]
        let inserted = SCHED_TASKS.insert(pid, &*t, BPF_ANY as u64);
        if inserted.is_err() {
            count(counters::SCHED_TASK_MAP_FULL);
            return None;
        }
    }
    SCHED_TASKS.get_ptr_mut(pid)
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
        #[allow(clippy::needless_borrows_for_generic_args)]
        let inserted = SCHED_PROCS.insert(tgid, &*t, BPF_NOEXIST as u64);
        if inserted.is_err() && SCHED_PROCS.get_ptr_mut(tgid).is_none() {
            count(counters::SCHED_PROC_MAP_FULL);
            return None;
        }
    }
    SCHED_PROCS.get_ptr_mut(tgid)
}

/// Add a thread's counters to its process and zero them. Runs in the
/// exiting thread itself (current), so `comm` is its own.
#[inline(always)]
fn fold(t: *mut TaskState) {
    // SAFETY: `t` is a map value pointer, valid while we run.
    unsafe {
        let Some(p) = proc_stats((*t).tgid) else {
            return;
        };
        add(&raw mut (*p).runq_ns, (*t).runq_ns);
        add(&raw mut (*p).runq_count, (*t).runq_count);
        add(&raw mut (*p).cpu_ns, (*t).cpu_ns);
        add(&raw mut (*p).blocked_ns, (*t).blocked_ns);
        add(&raw mut (*p).sleep_ns, (*t).sleep_ns);
        add(&raw mut (*p).caused_ns, (*t).caused_ns);
        add(&raw mut (*p).caused_count, (*t).caused_count);
        add(&raw mut (*p).stalls, (*t).stalls);
        if (*t).runq_max_ns > (*p).runq_max_ns {
            (*p).runq_max_ns = (*t).runq_max_ns;
        }
        let mut i = 0;
        while i < HIST_SLOTS {
            let n = (*t).hist[i];
            if n != 0 {
                add(&raw mut (*p).hist[i], u64::from(n));
            }
            i += 1;
        }
        let ts = (*t).ts_ns;
        let state = (*t).state;
        let tgid = (*t).tgid;
        *t = TaskState::zeroed();
        (*t).ts_ns = ts;
        (*t).state = state;
        (*t).tgid = tgid;
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
    let (next_pid, next_tgid) = ids(next, &c);
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };

    // CPU time of prev.
    let mut cpu_ns: u64 = 0;
    if let Some(oc) = SCHED_ONCPU.get_ptr_mut(0) {
        // SAFETY: per-CPU value; the scheduler does not nest on a CPU.
        unsafe {
            if (*oc).pid == prev_pid && (*oc).since_ns != 0 && now > (*oc).since_ns {
                cpu_ns = now - (*oc).since_ns;
            }
            (*oc).since_ns = now;
            (*oc).pid = next_pid;
            (*oc).tgid = next_tgid;
        }
    }

    // next gets the CPU: its run-queue wait ends.
    let mut wait: u64 = 0;
    if next_pid != 0 {
        if let Some(t) = SCHED_TASKS.get_ptr_mut(next_pid) {
            // SAFETY: map value pointer, valid while we run.
            unsafe {
                if (*t).state == run_state::RUNQ && now > (*t).ts_ns {
                    wait = now - (*t).ts_ns;
                    (*t).runq_ns += wait;
                    (*t).runq_count += 1;
                    let slot = hist_slot(wait) & (HIST_SLOTS - 1);
                    (*t).hist[slot] += 1;
                    if wait > (*t).runq_max_ns {
                        (*t).runq_max_ns = wait;
                    }
                    if wait >= c.stall_threshold_ns {
                        (*t).stalls += 1;
                    }
                }
                (*t).state = run_state::ON_CPU;
                (*t).ts_ns = now;
            }
        }
        // No entry: a thread diag has not seen wake up; nothing to charge.
    }
    if wait != 0 && wait >= c.stall_threshold_ns {
        stall_event(
            next, next_pid, next_tgid, prev_pid, prev_tgid, wait, now, &c,
        );
    }

    // prev leaves the CPU: its CPU time, the wait it caused next, and
    // what it is going to do.
    if prev_pid != 0 {
        let Some(t) = task_entry(prev_pid, prev_tgid) else {
            return Ok(0);
        };
        // SAFETY: map value pointer, valid while we run.
        unsafe {
            (*t).cpu_ns += cpu_ns;
            if wait != 0 {
                (*t).caused_ns += wait;
                (*t).caused_count += 1;
            }
            if prev_state & task_state::DEAD != 0 {
                fold(t);
                let _ = SCHED_TASKS.remove(prev_pid);
            } else {
                (*t).state = if preempt != 0 || prev_state == task_state::RUNNING {
                    run_state::RUNQ
                } else if prev_state & task_state::UNINTERRUPTIBLE != 0
                    && prev_state & task_state::NOLOAD == 0
                {
                    run_state::BLOCKED
                } else {
                    run_state::SLEEP
                };
                (*t).ts_ns = now;
            }
        }
    }
    Ok(0)
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn stall_event(
    next: *const u8,
    next_pid: u32,
    next_tgid: u32,
    prev_pid: u32,
    prev_tgid: u32,
    wait: u64,
    now: u64,
    c: &SchedConfig,
) {
    let Some(mut entry) = EVENTS.reserve::<StallEvent>(0) else {
        count(counters::RINGBUF_FULL);
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: a reserved, exclusively owned slot of the right size; every
    // field is written before submit.
    unsafe {
        (*ev).header = EventHeader {
            kind: EventKind::Stall as u32,
            cpu: bpf_get_smp_processor_id(),
            ts_ns: now,
            pid: next_pid,
            tgid: next_tgid,
            comm: comm_of(next, c),
        };
        (*ev).wait_ns = wait;
        (*ev).villain_pid = prev_pid;
        (*ev).villain_tgid = prev_tgid;
        (*ev).villain_comm = bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]);
    }
    let flags = submit_flags();
    entry.submit(flags);
    count(counters::SUBMITTED);
    count(counters::SCHED_STALLS);
}

#[btf_tracepoint(function = "sched_wakeup")]
pub fn sched_wakeup(ctx: BtfTracePointContext) -> u32 {
    match try_wakeup(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn sched_wakeup_new(ctx: BtfTracePointContext) -> u32 {
    match try_wakeup(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

/// sched_wakeup(task_struct *p), sched_wakeup_new(task_struct *p).
#[inline(always)]
fn try_wakeup(ctx: &BtfTracePointContext) -> Result<u32, u32> {
    let c = SCHED_CONFIG.load();
    if c.valid == 0 {
        return Ok(0);
    }
    let p: *const u8 = ctx.arg(0);
    let (pid, tgid) = ids(p, &c);
    if pid == 0 {
        return Ok(0);
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let Some(t) = task_entry(pid, tgid) else {
        return Ok(0);
    };
    // SAFETY: map value pointer, valid while we run.
    unsafe {
        let state = (*t).state;
        if state == run_state::SLEEP || state == run_state::BLOCKED {
            if now > (*t).ts_ns {
                let slept = now - (*t).ts_ns;
                if state == run_state::BLOCKED {
                    (*t).blocked_ns += slept;
                } else {
                    (*t).sleep_ns += slept;
                }
            }
            (*t).state = run_state::RUNQ;
            (*t).ts_ns = now;
        } else if state == run_state::ON_CPU && (*t).ts_ns == 0 {
            // A new entry (zeroed): the thread starts waiting now.
            (*t).state = run_state::RUNQ;
            (*t).ts_ns = now;
        }
        // RUNQ: already waiting, the wait started earlier. ON_CPU:
        // running (e.g. it woke itself); its switch-out will tell.
    }
    Ok(0)
}

#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(ctx: BtfTracePointContext) -> u32 {
    let c = SCHED_CONFIG.load();
    if c.valid == 0 {
        return 0;
    }
    let _ = ctx;
    // sched_process_exit(task_struct *p, bool group_dead): p is current.
    // Fold what the thread did so far; the entry stays for its last
    // switches and goes at the final switch-out (TASK_DEAD).
    let pid = bpf_get_current_pid_tgid() as u32;
    if let Some(t) = SCHED_TASKS.get_ptr_mut(pid) {
        fold(t);
    }
    0
}
