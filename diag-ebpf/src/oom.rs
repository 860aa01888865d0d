//! OOM kills: `oom:mark_victim`.
//!
//! Two programs hang on the same tracepoint:
//! - `oom_victim_task` (`tp_btf`) gets the victim's `task_struct`: its tgid
//!   and memory cgroup;
//! - `mark_victim` (classic tracepoint, field offsets from tracefs) reads
//!   the record, works out the trigger's memory cgroup and the cgroup that
//!   ran out of memory.
//!
//! Which of the two runs first is not ours to choose: the kernel calls a
//! tracepoint's probes in the order they were registered, and the classic
//! one (shared by every perf user of the tracepoint, e.g. another diag or
//! bpftrace) may have been registered before ours. So whichever runs first
//! leaves its half in a per-CPU slot, and the second one joins both halves
//! and submits one [`OomKillEvent`].
//!
//! `mark_victim` runs in the allocating task's context, so the current task
//! is the trigger. OOM kills are rare: each submit wakes the reader at once.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_RB_FORCE_WAKEUP,
    helpers::{
        bpf_get_current_task, bpf_ktime_get_boot_ns, bpf_probe_read_kernel,
        generated::bpf_probe_read_kernel_str,
    },
    macros::{btf_tracepoint, map, tracepoint},
    maps::{Array, PerCpuArray},
    programs::{BtfTracePointContext, TracePointContext},
    EbpfContext, Global,
};
use diag_common::{
    counters,
    oom::{
        constraint, memcg_how, MarkVictimLayout, MemcgLayout, OomKillEvent, VictimTask,
        MAX_MEMCG_DEPTH, NO_FIELD,
    },
    EventKind, TASK_COMM_LEN,
};

use crate::maps::{count, current_header, field, EVENTS};

/// Field offsets of `oom:mark_victim` from tracefs.
#[unsafe(no_mangle)]
static MARK_VICTIM: Global<MarkVictimLayout> = Global::new(MarkVictimLayout::zeroed());

/// Kernel struct offsets from BTF.
#[unsafe(no_mangle)]
static MEMCG_LAYOUT: Global<MemcgLayout> = Global::new(MemcgLayout::zeroed());

/// The `tp_btf` program's note for the `mark_victim` program, per CPU.
#[map]
static VICTIM_NOTE: PerCpuArray<VictimTask> = PerCpuArray::with_max_entries(1, 0);

/// The `mark_victim` program's event, when it ran first, per CPU. Its
/// header's `kind` is 0 once submitted.
#[map]
static PENDING_KILL: PerCpuArray<OomKillEvent> = PerCpuArray::with_max_entries(1, 0);

/// Slot 0 is 1 once user space attached `oom_victim_task`: only then may
/// `mark_victim` leave an event for it to finish.
#[map]
static OOM_FLAGS: Array<u32> = Array::with_max_entries(1, 0);

/// A half older than this is from another kill.
const NOTE_MAX_AGE_NS: u64 = 1_000_000;

/// Submit a finished kill. Rare and urgent: wake the reader now.
#[inline(always)]
fn submit_kill(ev: *const OomKillEvent) {
    let Some(mut entry) = EVENTS.reserve::<OomKillEvent>(0) else {
        count(counters::RINGBUF_FULL);
        return;
    };
    // SAFETY: `ev` points at a map value of the right type; `entry` is a
    // reserved, exclusively owned slot of the same size.
    unsafe { entry.as_mut_ptr().write(core::ptr::read(ev)) };
    entry.submit(BPF_RB_FORCE_WAKEUP as u64);
    count(counters::SUBMITTED);
}

/// Read a kernel value at `base + off`, or None.
#[inline(always)]
pub(crate) fn kread<T>(base: u64, off: u32) -> Option<T> {
    if base == 0 || off == NO_FIELD {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one errors.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) }.ok()
}

/// The memory cgroup css of a task, 0 if unknown.
#[inline(always)]
pub(crate) fn task_memcg(l: &MemcgLayout, task: u64) -> u64 {
    let cset: u64 = kread(task, l.task_cgroups).unwrap_or(0);
    kread(cset, l.cset_memory).unwrap_or(0)
}

/// Inode number of a css's cgroup directory, 0 if unknown.
#[inline(always)]
pub(crate) fn css_ino(l: &MemcgLayout, css: u64) -> u64 {
    let cgrp: u64 = kread(css, l.css_cgroup).unwrap_or(0);
    let kn: u64 = kread(cgrp, l.cgroup_kn).unwrap_or(0);
    kread(kn, l.kn_id).unwrap_or(0)
}

#[btf_tracepoint(function = "mark_victim")]
pub fn oom_victim_task(ctx: BtfTracePointContext) -> i32 {
    let l = MEMCG_LAYOUT.load();
    if l.valid == 0 {
        return 0;
    }
    let task: *const c_void = ctx.arg(0);
    let task = task as u64;
    let pid: i32 = kread(task, l.task_pid).unwrap_or(0);
    let tgid: i32 = kread(task, l.task_tgid).unwrap_or(0);
    let css = task_memcg(&l, task);
    let note = VictimTask {
        // SAFETY: helper without arguments.
        ts_ns: unsafe { bpf_ktime_get_boot_ns() },
        pid: pid as u32,
        tgid: tgid as u32,
        memcg_ino: css_ino(&l, css),
    };
    // Did `mark_victim` run first and leave this kill for us?
    if let Some(pk) = PENDING_KILL.get_ptr_mut(0) {
        // SAFETY: per-CPU slot; only this CPU touches it while we run.
        unsafe {
            let fresh = (*pk).header.kind == EventKind::OomKill as u32
                && (*pk).victim_pid == note.pid
                && (*pk).header.ts_ns <= note.ts_ns
                && note.ts_ns - (*pk).header.ts_ns < NOTE_MAX_AGE_NS;
            if fresh {
                (*pk).victim_tgid = note.tgid;
                (*pk).victim_memcg_ino = note.memcg_ino;
                submit_kill(pk);
                (*pk).header.kind = 0;
                return 0;
            }
        }
    }
    if let Some(p) = VICTIM_NOTE.get_ptr_mut(0) {
        // SAFETY: per-CPU slot; only this CPU touches it while we run.
        unsafe { *p = note };
    }
    0
}

#[tracepoint]
pub fn mark_victim(ctx: TracePointContext) -> u32 {
    match try_mark_victim(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

/// The string of a `__data_loc char[]` field: `(len << 16) | offset`.
#[inline(always)]
fn data_loc_comm(ctx: &TracePointContext, loc_offset: u32) -> [u8; TASK_COMM_LEN] {
    let mut comm = [0u8; TASK_COMM_LEN];
    let loc: u32 = field(ctx, loc_offset).unwrap_or(0);
    let off = (loc & 0xffff) as usize;
    if off == 0 {
        return comm;
    }
    // SAFETY: the offset is within the record, as the kernel wrote it; the
    // helper stops at the NUL or after TASK_COMM_LEN bytes.
    let rc = unsafe {
        bpf_probe_read_kernel_str(
            comm.as_mut_ptr() as *mut c_void,
            TASK_COMM_LEN as u32,
            (ctx.as_ptr() as *const u8).add(off) as *const c_void,
        )
    };
    if rc < 0 {
        count(counters::READ_ERROR);
    }
    comm
}

/// What the kernel knows about the memory cgroup side of this OOM.
struct MemcgFacts {
    trigger_ino: u64,
    oom_ino: u64,
    limit_pages: u64,
    usage_pages: u64,
    constraint: u8,
    how: u8,
}

/// Walk up from the trigger's memory cgroup. The kernel holds
/// `mem_cgroup.oom_lock` on the OOM cgroup and all its descendants while it
/// picks a victim, so the topmost flagged ancestor is the one. Kernels
/// without that field (no cgroup v1 support): the nearest ancestor whose
/// usage is at its limit.
#[inline(always)]
fn memcg_facts(l: &MemcgLayout) -> MemcgFacts {
    let mut f = MemcgFacts {
        trigger_ino: 0,
        oom_ino: 0,
        limit_pages: 0,
        usage_pages: 0,
        constraint: constraint::UNKNOWN,
        how: 0,
    };
    if l.valid == 0 {
        return f;
    }
    // SAFETY: helper without arguments.
    let task = unsafe { bpf_get_current_task() };
    let first = task_memcg(l, task);
    if first == 0 {
        count(counters::OOM_READ_ERROR);
        return f;
    }
    f.trigger_ino = css_ino(l, first);
    f.constraint = constraint::GLOBAL;
    let use_lock = l.memcg_oom_lock != NO_FIELD;
    let mut css = first;
    let mut locked: u64 = 0;
    let mut locked_limit: u64 = 0;
    let mut locked_usage: u64 = 0;
    let mut full: u64 = 0;
    let mut full_limit: u64 = 0;
    let mut full_usage: u64 = 0;
    for _ in 0..MAX_MEMCG_DEPTH {
        if css == 0 {
            break;
        }
        let usage: u64 = kread(css, l.memcg_usage).unwrap_or(0);
        let max: u64 = kread(css, l.memcg_max).unwrap_or(u64::MAX);
        if use_lock && kread::<u8>(css, l.memcg_oom_lock).unwrap_or(0) != 0 {
            locked = css;
            locked_limit = max;
            locked_usage = usage;
        }
        // A charge of up to 512 pages (a huge page) did not fit.
        if full == 0 && !use_lock && max < (1u64 << 62) && usage.saturating_add(512) >= max {
            full = css;
            full_limit = max;
            full_usage = usage;
        }
        css = kread(css, l.css_parent).unwrap_or(0);
    }
    if locked != 0 {
        f.constraint = constraint::MEMCG;
        f.how = memcg_how::OOM_LOCK;
        f.oom_ino = css_ino(l, locked);
        f.limit_pages = locked_limit;
        f.usage_pages = locked_usage;
    } else if full != 0 {
        f.constraint = constraint::MEMCG;
        f.how = memcg_how::AT_LIMIT;
        f.oom_ino = css_ino(l, full);
        f.limit_pages = full_limit;
        f.usage_pages = full_usage;
    }
    f
}

fn try_mark_victim(ctx: &TracePointContext) -> Result<u32, u32> {
    let l = MARK_VICTIM.load();
    if l.valid == 0 {
        return Ok(0);
    }
    let victim_pid = field::<i32>(ctx, l.pid)? as u32;
    let header = current_header(EventKind::OomKill as u32);

    // The tp_btf program's note, if it ran just before for this victim.
    let mut victim_tgid: u32 = 0;
    let mut victim_memcg_ino: u64 = 0;
    let mut joined = false;
    if let Some(n) = VICTIM_NOTE.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, written only by this CPU.
        let (ts, pid, tgid, ino) = unsafe { ((*n).ts_ns, (*n).pid, (*n).tgid, (*n).memcg_ino) };
        if pid == victim_pid && ts <= header.ts_ns && header.ts_ns - ts < NOTE_MAX_AGE_NS {
            victim_tgid = tgid;
            victim_memcg_ino = ino;
            joined = true;
            // SAFETY: as above; a used note must not join a later kill.
            unsafe { (*n).pid = 0 };
        }
    }
    let ml = MEMCG_LAYOUT.load();
    let facts = memcg_facts(&ml);
    let victim_task_attached = OOM_FLAGS.get(0).is_some_and(|v| *v == 1);
    let mut wait_for_victim_task = false;
    if !joined {
        if victim_pid == header.pid {
            // The trigger killed itself: same task, same cgroup.
            victim_tgid = header.tgid;
            victim_memcg_ino = facts.trigger_ino;
        } else if victim_task_attached {
            // The tp_btf program runs after us this time: it finishes.
            wait_for_victim_task = true;
        } else if ml.valid != 0 {
            count(counters::OOM_NO_VICTIM_TASK);
            if crate::maps::log_on() {
                aya_log_ebpf::warn!(
                    ctx,
                    "OOM kill of pid {}: no note from the victim's task, so its memory cgroup is not known in the kernel",
                    victim_pid
                );
            }
        }
    }

    let Some(ev) = PENDING_KILL.get_ptr_mut(0) else {
        return Ok(0);
    };
    // SAFETY: a per-CPU map value of the right type, only this CPU touches
    // it while we run; every field is written.
    unsafe {
        (*ev).header = header;
        (*ev).victim_pid = victim_pid;
        (*ev).victim_tgid = victim_tgid;
        (*ev).victim_comm = data_loc_comm(ctx, l.comm);
        (*ev).victim_uid = field(ctx, l.uid).unwrap_or(0);
        (*ev).oom_score_adj = field(ctx, l.oom_score_adj).unwrap_or(0);
        (*ev).constraint = facts.constraint;
        (*ev).memcg_how = facts.how;
        (*ev).total_vm_kb = field(ctx, l.total_vm).unwrap_or(0);
        (*ev).anon_rss_kb = field(ctx, l.anon_rss).unwrap_or(0);
        (*ev).file_rss_kb = field(ctx, l.file_rss).unwrap_or(0);
        (*ev).shmem_rss_kb = field(ctx, l.shmem_rss).unwrap_or(0);
        (*ev).pgtables_kb = field(ctx, l.pgtables).unwrap_or(0);
        (*ev).victim_memcg_ino = victim_memcg_ino;
        (*ev).trigger_memcg_ino = facts.trigger_ino;
        (*ev).oom_memcg_ino = facts.oom_ino;
        (*ev).oom_memcg_limit_pages = facts.limit_pages;
        (*ev).oom_memcg_usage_pages = facts.usage_pages;
    }
    if !wait_for_victim_task {
        submit_kill(ev);
        // SAFETY: as above.
        unsafe { (*ev).header.kind = 0 };
    }
    Ok(0)
}
