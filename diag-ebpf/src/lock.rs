//! Locks: futex waits and who ended them, kernel lock contention.
//!
//! - `syscalls:sys_enter_futex` (a blocking op: WAIT, WAIT_BITSET,
//!   LOCK_PI, LOCK_PI2, WAIT_REQUEUE_PI), `sys_enter_futex_wait`,
//!   `sys_enter_futex_waitv`: note the wait in `LOCK_WAITING` (tid ->
//!   address, start).
//! - `sched_waking` (tp_btf; runs in the waker's context, current is the
//!   waker): if the woken task is noted, current is its waker. This is
//!   exact, where matching FUTEX_WAKE addresses would not be (a wake
//!   names no waiter, requeues move waiters, PI unlocks wake in the
//!   kernel).
//! - `sys_exit_futex`, `sys_exit_futex_wait`, `sys_exit_futex_waitv`: the
//!   wait ends: its time goes to `LOCK_STATS` (waiter, lock, waker) and
//!   `LOCK_PROCS` (per process, with a histogram); one at least the
//!   threshold long is sent as an event.
//! - `sched_process_exit`: a thread that dies in a wait is forgotten.
//! - `lock:contention_begin/end` (tp_btf): kernel lock contention per
//!   process, keyed by (lock, tid) so nested contentions (an interrupt's
//!   spinlock inside a task's mutex wait) do not mix.
//!
//! Every map is bounded; a full one is counted (`counters::LOCK_*`).

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id,
        bpf_ktime_get_boot_ns, bpf_probe_read_user,
    },
    macros::{btf_tracepoint, map, tracepoint},
    maps::{HashMap, PerCpuArray},
    programs::{BtfTracePointContext, TracePointContext},
    Global,
};
use diag_common::{
    counters,
    lock::{
        futex_op, wait_kind, KernelWaitKey, LockConfig, LockKey, LockProc, LockStat, LockWaitEvent,
        Waiting, EINTR, ETIMEDOUT,
    },
    sched::{hist_slot, HIST_SLOTS},
    EventHeader, EventKind, TASK_COMM_LEN,
};

use crate::maps::{btf_load, count, field, submit_flags, EVENTS};

#[unsafe(no_mangle)]
static LOCK_CONFIG: Global<LockConfig> = Global::new(LockConfig::zeroed());

/// Threads in a futex wait now, by tid.
#[map]
static LOCK_WAITING: HashMap<u32, Waiting> = HashMap::with_max_entries(16_384, 0);

/// Cumulative waits per (process, waiter, lock, waker).
#[map]
static LOCK_STATS: HashMap<LockKey, LockStat> = HashMap::with_max_entries(16_384, 0);

/// Cumulative waits per process.
#[map]
static LOCK_PROCS: HashMap<u32, LockProc> = HashMap::with_max_entries(8_192, 0);

/// Kernel lock contentions in progress: (lock, tid) -> start.
#[map]
static LOCK_KWAITING: HashMap<KernelWaitKey, u64> = HashMap::with_max_entries(8_192, 0);

/// A zeroed `LockProc` to insert from (too big for the BPF stack).
#[map]
static LOCK_PROC_TEMPLATE: PerCpuArray<LockProc> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn add(p: *mut u64, v: u64) {
    // SAFETY: `p` points into a map value, valid and 8-byte aligned while
    // the program runs; the intrinsic lowers to BPF's atomic add.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            p, v,
        )
    };
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_boot_ns() }
}

/// Note a wait of the current thread on `uaddr` (not diag's own).
#[inline(always)]
fn begin(uaddr: u64, kind: u32, c: &LockConfig) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if (pid_tgid >> 32) as u32 == c.self_tgid {
        return;
    }
    let tid = pid_tgid as u32;
    let w = Waiting {
        uaddr,
        start_ns: now_ns(),
        waker_pid: 0,
        waker_tgid: 0,
        waker_comm: [0; TASK_COMM_LEN],
        kind,
        wakes: 0,
    };
    if LOCK_WAITING.insert(tid, w, BPF_ANY as u64).is_err() {
        count(counters::LOCK_WAIT_MAP_FULL);
    }
}

#[tracepoint]
pub fn lock_enter_futex(ctx: TracePointContext) -> u32 {
    let c = LOCK_CONFIG.load();
    if c.valid == 0 {
        return 0;
    }
    let Ok(op) = field::<u64>(&ctx, c.futex_op) else {
        return 0;
    };
    let kind = futex_op::wait_kind(op as u32);
    if kind == 0 {
        return 0;
    }
    let Ok(uaddr) = field::<u64>(&ctx, c.futex_uaddr) else {
        return 0;
    };
    begin(uaddr, kind, &c);
    0
}

#[tracepoint]
pub fn lock_enter_futex_wait(ctx: TracePointContext) -> u32 {
    let c = LOCK_CONFIG.load();
    if c.valid == 0 {
        return 0;
    }
    let Ok(uaddr) = field::<u64>(&ctx, c.wait_uaddr) else {
        return 0;
    };
    begin(uaddr, wait_kind::FUTEX_WAIT2, &c);
    0
}

#[tracepoint]
pub fn lock_enter_futex_waitv(ctx: TracePointContext) -> u32 {
    let c = LOCK_CONFIG.load();
    if c.valid == 0 {
        return 0;
    }
    let Ok(waiters) = field::<u64>(&ctx, c.waitv_waiters) else {
        return 0;
    };
    // struct futex_waitv { u64 val; u64 uaddr; u32 flags; u32 __reserved; }
    // (uapi): the first futex's address stands for the wait.
    // SAFETY: the helper checks the user address it reads.
    let uaddr = unsafe { bpf_probe_read_user((waiters + 8) as *const u64) }.unwrap_or(0);
    begin(uaddr, wait_kind::FUTEX_WAITV, &c);
    0
}

/// sched_waking(struct task_struct *p): current wakes p.
#[btf_tracepoint(function = "sched_waking")]
pub fn lock_waking(ctx: BtfTracePointContext) -> u32 {
    let c = LOCK_CONFIG.load();
    if c.valid == 0 {
        return 0;
    }
    let p: *const u8 = ctx.arg(0);
    let pid: u32 = btf_load(p, c.task_pid);
    let Some(w) = LOCK_WAITING.get_ptr_mut(pid) else {
        return 0;
    };
    let me = bpf_get_current_pid_tgid();
    // SAFETY: map value pointer, valid while we run.
    unsafe {
        (*w).waker_pid = me as u32;
        (*w).waker_tgid = (me >> 32) as u32;
        (*w).waker_comm = bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]);
        (*w).wakes += 1;
    }
    0
}

/// The process's entry, created if absent.
#[inline(always)]
fn proc_entry(tgid: u32) -> Option<*mut LockProc> {
    if let Some(p) = LOCK_PROCS.get_ptr_mut(tgid) {
        return Some(p);
    }
    let t = LOCK_PROC_TEMPLATE.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch value, only this program on this CPU uses it.
    unsafe {
        *t = LockProc::zeroed();
        (*t).comm = bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]);
        #[allow(clippy::needless_borrows_for_generic_args)]
        let inserted = LOCK_PROCS.insert(tgid, &*t, BPF_NOEXIST as u64);
        if inserted.is_err() && LOCK_PROCS.get_ptr_mut(tgid).is_none() {
            count(counters::LOCK_PROC_MAP_FULL);
            return None;
        }
    }
    LOCK_PROCS.get_ptr_mut(tgid)
}

#[tracepoint]
pub fn lock_exit_futex(ctx: TracePointContext) -> u32 {
    let c = LOCK_CONFIG.load();
    if c.valid == 0 {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let tgid = (pid_tgid >> 32) as u32;
    let Some(w) = LOCK_WAITING.get_ptr(tid) else {
        return 0;
    };
    // SAFETY: map value pointer; copied out before the entry is removed.
    let w = unsafe { *w };
    let _ = LOCK_WAITING.remove(tid);
    let ret: i64 = field::<i64>(&ctx, c.exit_ret).unwrap_or(0);
    let now = now_ns();
    let wait = now.saturating_sub(w.start_ns);
    if ret == -ETIMEDOUT {
        // A timed wait that ran out: a sleep, not a lock wait.
        if let Some(p) = proc_entry(tgid) {
            // SAFETY: map value pointer; atomic adds (threads of one
            // process on two CPUs).
            unsafe {
                add(&raw mut (*p).timeouts, 1);
                add(&raw mut (*p).timeout_ns, wait);
            }
        }
        return 0;
    }
    // A signal ended it: -EINTR, or a restart (-ERESTARTSYS 512 ..
    // -ERESTART_RESTARTBLOCK 516, seen at the exit before the restart).
    let no_waker = ret == -EINTR || (-516..=-512).contains(&ret);
    let (waker_pid, waker_tgid) = if no_waker {
        (0, 0)
    } else {
        (w.waker_pid, w.waker_tgid)
    };
    let key = LockKey {
        uaddr: w.uaddr,
        tgid,
        tid,
        waker_tid: waker_pid,
        waker_tgid,
    };
    // Only this thread writes its own keys: no atomics needed.
    match LOCK_STATS.get_ptr_mut(key) {
        // SAFETY: map value pointer, valid while we run.
        Some(s) => unsafe {
            (*s).waits += 1;
            (*s).wait_ns += wait;
            if wait > (*s).max_ns {
                (*s).max_ns = wait;
            }
            if no_waker {
                (*s).no_waker += 1;
            }
        },
        None => {
            let s = LockStat {
                waits: 1,
                wait_ns: wait,
                max_ns: wait,
                no_waker: u64::from(no_waker),
                waker_comm: if no_waker {
                    [0; TASK_COMM_LEN]
                } else {
                    w.waker_comm
                },
            };
            if LOCK_STATS.insert(key, s, BPF_NOEXIST as u64).is_err() {
                count(counters::LOCK_STATS_MAP_FULL);
            }
        }
    }
    let long = wait >= c.threshold_ns;
    if let Some(p) = proc_entry(tgid) {
        // SAFETY: map value pointer, valid while we run; threads of one
        // process may update it on two CPUs at once: atomic adds.
        unsafe {
            add(&raw mut (*p).waits, 1);
            add(&raw mut (*p).wait_ns, wait);
            if wait > (*p).max_ns {
                (*p).max_ns = wait;
            }
            if long {
                add(&raw mut (*p).long_waits, 1);
            }
            let slot = hist_slot(wait) & (HIST_SLOTS - 1);
            add(&raw mut (*p).hist[slot], 1);
        }
    }
    if long {
        event(&w, wait, ret, no_waker);
    }
    0
}

#[inline(always)]
fn event(w: &Waiting, wait: u64, ret: i64, no_waker: bool) {
    let Some(mut entry) = EVENTS.reserve::<LockWaitEvent>(0) else {
        count(counters::RINGBUF_FULL);
        return;
    };
    let ev = entry.as_mut_ptr();
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: a reserved, exclusively owned slot of the right size; every
    // field is written before submit.
    unsafe {
        (*ev).header = EventHeader {
            kind: EventKind::LockWait as u32,
            cpu: bpf_get_smp_processor_id(),
            ts_ns: w.start_ns,
            pid: pid_tgid as u32,
            tgid: (pid_tgid >> 32) as u32,
            comm: bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]),
        };
        (*ev).uaddr = w.uaddr;
        (*ev).wait_ns = wait;
        if no_waker {
            (*ev).waker_pid = 0;
            (*ev).waker_tgid = 0;
            (*ev).waker_comm = [0; TASK_COMM_LEN];
        } else {
            (*ev).waker_pid = w.waker_pid;
            (*ev).waker_tgid = w.waker_tgid;
            (*ev).waker_comm = w.waker_comm;
        }
        (*ev).kind = w.kind;
        (*ev).ret = ret as i32;
    }
    entry.submit(submit_flags());
    count(counters::SUBMITTED);
    count(counters::LOCK_EVENTS);
}

/// sched_process_exit: a thread that dies in a wait (killed) is forgotten.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn lock_task_exit(ctx: BtfTracePointContext) -> u32 {
    let _ = ctx;
    if LOCK_CONFIG.load().valid == 0 {
        return 0;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    let _ = LOCK_WAITING.remove(tid);
    0
}

/// contention_begin(void *lock, unsigned int flags)
#[btf_tracepoint(function = "contention_begin")]
pub fn lock_contention_begin(ctx: BtfTracePointContext) -> u32 {
    if LOCK_CONFIG.load().valid == 0 {
        return 0;
    }
    let lock: u64 = ctx.arg(0);
    let tid = bpf_get_current_pid_tgid() as u32;
    if tid == 0 {
        return 0;
    }
    let key = KernelWaitKey { lock, tid, _pad: 0 };
    let now = now_ns();
    if LOCK_KWAITING.insert(key, now, BPF_NOEXIST as u64).is_err()
        && LOCK_KWAITING.get_ptr(key).is_none()
    {
        count(counters::LOCK_KWAIT_MAP_FULL);
    }
    0
}

/// contention_end(void *lock, int ret)
#[btf_tracepoint(function = "contention_end")]
pub fn lock_contention_end(ctx: BtfTracePointContext) -> u32 {
    if LOCK_CONFIG.load().valid == 0 {
        return 0;
    }
    let lock: u64 = ctx.arg(0);
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    if tid == 0 {
        return 0;
    }
    let key = KernelWaitKey { lock, tid, _pad: 0 };
    let Some(start) = LOCK_KWAITING.get_ptr(key) else {
        return 0;
    };
    // SAFETY: map value pointer, read before the remove.
    let start = unsafe { *start };
    let _ = LOCK_KWAITING.remove(key);
    let wait = now_ns().saturating_sub(start);
    if let Some(p) = proc_entry((pid_tgid >> 32) as u32) {
        // SAFETY: map value pointer; atomic adds (see lock_exit_futex).
        unsafe {
            add(&raw mut (*p).kernel_waits, 1);
            add(&raw mut (*p).kernel_wait_ns, wait);
        }
    }
    0
}
