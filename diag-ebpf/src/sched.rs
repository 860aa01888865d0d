//! The scheduler, from `tp_btf` programs (raw tracepoints with typed
//! arguments: cheaper than plain tracepoints, and they carry the
//! `task_struct`s, so the next task's process id is at hand).
//!
//! Per thread (`SCHED_TASKS`): what it is doing since when. Per process
//! (`SCHED_PROCS`): cumulative run-queue wait with a log2 histogram, CPU
//! time, D and S sleep, and the wait it caused others. Only waits longer
//! than the stall threshold travel as events.
//!
//! - `sched_wakeup`/`sched_wakeup_new`: the thread becomes runnable; the
//!   sleep that ends here is charged (D or S).
//! - `sched_switch`: prev leaves the CPU (runnable if preempted, else
//!   asleep); next gets it, ending its run-queue wait, which is charged to
//!   next's process and, as "caused", to prev's process.
//! - `sched_process_exit` (and a switch-out in TASK_DEAD): forget the thread.
//!
//! Counters are added with atomic adds: two CPUs may update one process.

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

/// Per process, keyed by tgid.
#[map]
static SCHED_PROCS: HashMap<u32, ProcStats> = HashMap::with_max_entries(16_384, 0);

/// Who is on each CPU since when, for CPU time.
#[map]
static SCHED_ONCPU: PerCpuArray<OnCpu> = PerCpuArray::with_max_entries(1, 0);

/// A zeroed `ProcStats` to insert from (too big for the BPF stack).
#[map]
static SCHED_PROC_TEMPLATE: PerCpuArray<ProcStats> = PerCpuArray::with_max_entries(1, 0);

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
fn ids(task: *const u8, c: &SchedConfig) -> Result<(u32, u32), u32> {
    // SAFETY: offsets come from the running kernel's BTF; the helper
    // checks the address.
    let r = unsafe {
        if c.task_tgid == c.task_pid + 4 {
            bpf_probe_read_kernel(task.add(c.task_pid as usize) as *const u64)
                .map(|v| (v as u32, (v >> 32) as u32))
        } else {
            match (
                bpf_probe_read_kernel(task.add(c.task_pid as usize) as *const u32),
                bpf_probe_read_kernel(task.add(c.task_tgid as usize) as *const u32),
            ) {
                (Ok(p), Ok(t)) => Ok((p, t)),
                _ => Err(0),
            }
        }
    };
    r.map_err(|_| {
        count(counters::SCHED_READ_ERROR);
        0
    })
}

#[inline(always)]
fn comm_of(task: *const u8, c: &SchedConfig) -> [u8; TASK_COMM_LEN] {
    // SAFETY: as in `ids`.
    unsafe { bpf_probe_read_kernel(task.add(c.task_comm as usize) as *const [u8; TASK_COMM_LEN]) }
        .unwrap_or([0; TASK_COMM_LEN])
}

/// The process's stats, created if absent (`comm` is only read then).
#[inline(always)]
fn proc_stats(tgid: u32, comm: impl FnOnce() -> [u8; TASK_COMM_LEN]) -> Option<*mut ProcStats> {
    if let Some(p) = SCHED_PROCS.get_ptr_mut(tgid) {
        return Some(p);
    }
    let t = SCHED_PROC_TEMPLATE.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch value, only this program on this CPU uses it.
    unsafe {
        *t = ProcStats::zeroed();
        (*t).comm = comm();
        // By reference: a copy of the value would not fit on the BPF stack.
        #[allow(clippy::needless_borrows_for_generic_args)]
        let inserted = SCHED_PROCS.insert(tgid, &*t, BPF_NOEXIST as u64);
        if inserted.is_err() && SCHED_PROCS.get_ptr_mut(tgid).is_none() {
            count(counters::SCHED_PROC_MAP_FULL);
            return None;
        }
    }
    SCHED_PROCS.get_ptr_mut(tgid)
}

#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> u32 {
    match try_sched_switch(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

fn try_sched_switch(ctx: &BtfTracePointContext) -> Result<u32, u32> {
    let c = SCHED_CONFIG.load();
    if c.valid == 0 {
        return Ok(0);
    }
    // sched_switch(bool preempt, task_struct *prev, task_struct *next,
    //              unsigned int prev_state)
    let preempt: u64 = ctx.arg(0);
    let next: *const u8 = ctx.arg(2);
    let prev_state: u64 = ctx.arg(3);
    // The tracepoint runs before the switch: current is still prev.
    let prev_ids = bpf_get_current_pid_tgid();
    let prev_pid = prev_ids as u32;
    let prev_tgid = (prev_ids >> 32) as u32;
    let (next_pid, next_tgid) = ids(next, &c)?;
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

    // prev leaves the CPU.
    if prev_pid != 0 {
        if prev_state & task_state::DEAD != 0 {
            let _ = SCHED_TASKS.remove(prev_pid);
        } else {
            let state = if preempt != 0 || prev_state == task_state::RUNNING {
                run_state::RUNQ
            } else if prev_state & task_state::UNINTERRUPTIBLE != 0
                && prev_state & task_state::NOLOAD == 0
            {
                run_state::BLOCKED
            } else {
                run_state::SLEEP
            };
            match SCHED_TASKS.get_ptr_mut(prev_pid) {
                // SAFETY: map value pointer, valid while we run.
                Some(t) => unsafe {
                    (*t).ts_ns = now;
                    (*t).state = state;
                },
                None => {
                    let t = TaskState {
                        ts_ns: now,
                        state,
                        tgid: prev_tgid,
                        runq_ns: 0,
                        runq_count: 0,
                    };
                    if SCHED_TASKS.insert(prev_pid, t, BPF_ANY as u64).is_err() {
                        count(counters::SCHED_TASK_MAP_FULL);
                    }
                }
            }
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
                }
                (*t).state = run_state::ON_CPU;
                (*t).ts_ns = now;
            }
        }
        // No entry: a thread diag has not seen wake up; nothing to charge.
    }
    if wait != 0 {
        let stall = wait >= c.stall_threshold_ns;
        if let Some(p) = proc_stats(next_tgid, || comm_of(next, &c)) {
            // SAFETY: map value pointer; fields are updated atomically or
            // (the maximum) with a benign race.
            unsafe {
                add(&raw mut (*p).runq_ns, wait);
                add(&raw mut (*p).runq_count, 1);
                let slot = hist_slot(wait) & (HIST_SLOTS - 1);
                add(&raw mut (*p).hist[slot], 1);
                if wait > (*p).runq_max_ns {
                    (*p).runq_max_ns = wait;
                }
                if stall {
                    add(&raw mut (*p).stalls, 1);
                }
            }
        }
        if stall {
            stall_event(
                next, next_pid, next_tgid, prev_pid, prev_tgid, wait, now, &c,
            );
        }
    }

    // Charge prev: its CPU time, and the wait it caused next.
    if prev_pid != 0 && (cpu_ns != 0 || wait != 0) {
        if let Some(p) = proc_stats(prev_tgid, || bpf_get_current_comm().unwrap_or([0; 16])) {
            // SAFETY: map value pointer.
            unsafe {
                if cpu_ns != 0 {
                    add(&raw mut (*p).cpu_ns, cpu_ns);
                }
                if wait != 0 {
                    add(&raw mut (*p).caused_ns, wait);
                    add(&raw mut (*p).caused_count, 1);
                }
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
fn try_wakeup(ctx: &BtfTracePointContext) -> Result<u32, u32> {
    let c = SCHED_CONFIG.load();
    if c.valid == 0 {
        return Ok(0);
    }
    let p: *const u8 = ctx.arg(0);
    let (pid, tgid) = ids(p, &c)?;
    if pid == 0 {
        return Ok(0);
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let mut slept: u64 = 0;
    let mut was: u32 = run_state::ON_CPU;
    match SCHED_TASKS.get_ptr_mut(pid) {
        // SAFETY: map value pointer, valid while we run.
        Some(t) => unsafe {
            was = (*t).state;
            if was == run_state::SLEEP || was == run_state::BLOCKED {
                if now > (*t).ts_ns {
                    slept = now - (*t).ts_ns;
                }
                (*t).state = run_state::RUNQ;
                (*t).ts_ns = now;
            }
            // RUNQ: already waiting, the wait started earlier. ON_CPU:
            // running (e.g. it woke itself); its switch-out will tell.
        },
        None => {
            let t = TaskState {
                ts_ns: now,
                state: run_state::RUNQ,
                tgid,
                runq_ns: 0,
                runq_count: 0,
            };
            if SCHED_TASKS.insert(pid, t, BPF_ANY as u64).is_err() {
                count(counters::SCHED_TASK_MAP_FULL);
            }
        }
    }
    if slept != 0 {
        if let Some(s) = proc_stats(tgid, || comm_of(p, &c)) {
            // SAFETY: map value pointer.
            unsafe {
                if was == run_state::BLOCKED {
                    add(&raw mut (*s).blocked_ns, slept);
                } else {
                    add(&raw mut (*s).sleep_ns, slept);
                }
            }
        }
    }
    Ok(0)
}

#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(ctx: BtfTracePointContext) -> u32 {
    let c = SCHED_CONFIG.load();
    if c.valid == 0 {
        return 0;
    }
    // sched_process_exit(task_struct *p, bool group_dead): p is current.
    let pid = bpf_get_current_pid_tgid() as u32;
    let _ = ctx;
    let _ = SCHED_TASKS.remove(pid);
    0
}
