//! Memory stalls, from `tp_btf` programs on the `vmscan:`, `compaction:`
//! and `block:` tracepoints.
//!
//! - `mm_vmscan_direct_reclaim_begin/end`, `mm_vmscan_memcg_reclaim_begin/end`:
//!   a reclaim episode of the current task (the allocating or charging
//!   task stalls in it), paired per thread in `MEM_TASKS`.
//! - `mm_compaction_begin/end`: one zone's compaction run; in a user task
//!   that is direct compaction (kcompactd is a kernel thread).
//! - `mm_vmscan_throttled`: reclaim slept this long (usec_delayed).
//! - `mm_vmscan_lru_isolate` (inactive lists) and
//!   `mm_vmscan_lru_shrink_inactive`: pages scanned and reclaimed, the
//!   values the kernel adds to pgscan_* and pgsteal_*, charged to the open
//!   episode of the current task, or to the host's background.
//! - `block_bio_queue` / `block_bio_complete` on the swap devices user
//!   space put in `MEM_SWAP_DEVS`: pages swapped in and out by the current
//!   task, and the swap-in I/O's time.
//!
//! Kernel threads' work (kswapd, kcompactd, kworkers) goes to the per-CPU
//! `MEM_HOST` background, never to a process: it stalls nobody directly.
//! None of these fire in the scheduler's hot path; the swap programs see
//! every bio of the host (one hash lookup each), so only views that show
//! swap attach them.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_boot_ns,
    },
    macros::{btf_tracepoint, map},
    maps::{HashMap, PerCpuArray},
    programs::BtfTracePointContext,
    Global,
};
use diag_common::{
    counters,
    memory::{
        hist_slot, stall_kind, MemCgStats, MemConfig, MemCounters, MemHost, MemStallEvent,
        MemStats, MemTask, SwapBio, HIST_SLOTS, MAX_BIOS, MAX_CGROUPS, MAX_PROCS, MAX_SWAP_DEVS,
        MAX_TASKS, PF_KTHREAD,
    },
    oom::MAX_MEMCG_DEPTH,
    EventKind,
};

use crate::{
    maps::{btf_load, count, current_header, submit_flags, EVENTS},
    oom::{css_ino, kread, task_memcg},
};

#[unsafe(no_mangle)]
static MEM_CONFIG: Global<MemConfig> = Global::new(MemConfig::zeroed());

#[map]
static MEM_PROCS: HashMap<u32, MemStats> = HashMap::with_max_entries(MAX_PROCS, 0);

#[map]
static MEM_CGROUPS: HashMap<u64, MemCgStats> = HashMap::with_max_entries(MAX_CGROUPS, 0);

#[map]
static MEM_TASKS: HashMap<u32, MemTask> = HashMap::with_max_entries(MAX_TASKS, 0);

#[map]
static MEM_HOST: PerCpuArray<MemHost> = PerCpuArray::with_max_entries(1, 0);

/// Swap devices (the kernel's dev_t), filled by user space from /proc/swaps.
#[map]
static MEM_SWAP_DEVS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_SWAP_DEVS, 0);

/// Swap-in bios in flight, by address.
#[map]
static MEM_BIOS: HashMap<u64, SwapBio> = HashMap::with_max_entries(MAX_BIOS, 0);

/// A zeroed value to insert from (too big for the BPF stack).
#[map]
static MEM_PROC_TEMPLATE: PerCpuArray<MemStats> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn add(p: *mut u64, v: u64) {
    if v == 0 {
        return;
    }
    // SAFETY: `p` points into a map value, valid and 8-byte aligned while
    // the program runs; the kernel allows atomic adds on map values.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            p, v,
        )
    };
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_boot_ns() }
}

#[inline(always)]
fn current_task() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_get_current_task() }
}

/// Whether the current task is a kernel thread.
#[inline(always)]
fn is_kthread(c: &MemConfig) -> bool {
    let flags: u32 = kread(current_task(), c.task_flags).unwrap_or(0);
    flags & PF_KTHREAD != 0
}

/// The process's stats, created if absent.
#[inline(always)]
fn proc_stats(tgid: u32) -> Option<*mut MemStats> {
    if let Some(p) = MEM_PROCS.get_ptr_mut(tgid) {
        return Some(p);
    }
    let t = MEM_PROC_TEMPLATE.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch value, only this program on this CPU uses it.
    unsafe {
        *t = MemStats::zeroed();
        (*t).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        #[allow(clippy::needless_borrows_for_generic_args)]
        let inserted = MEM_PROCS.insert(tgid, &*t, BPF_NOEXIST as u64);
        if inserted.is_err() && MEM_PROCS.get_ptr_mut(tgid).is_none() {
            count(counters::MEM_PROC_MAP_FULL);
            return None;
        }
    }
    MEM_PROCS.get_ptr_mut(tgid)
}

/// The memory cgroup's stats, created if absent.
#[inline(always)]
fn cg_stats(ino: u64) -> Option<*mut MemCgStats> {
    if ino == 0 {
        return None;
    }
    if let Some(p) = MEM_CGROUPS.get_ptr_mut(ino) {
        return Some(p);
    }
    let zero = MemCgStats::default();
    if MEM_CGROUPS.insert(ino, zero, BPF_NOEXIST as u64).is_err()
        && MEM_CGROUPS.get_ptr_mut(ino).is_none()
    {
        count(counters::MEM_CGROUP_MAP_FULL);
        return None;
    }
    MEM_CGROUPS.get_ptr_mut(ino)
}

/// What to add for one finished episode or throttle.
struct Charge {
    kind: u32,
    dur_ns: u64,
    scanned: u64,
    reclaimed: u64,
    /// Throttled time inside the episode (or the throttle itself).
    throttled_ns: u64,
    /// A throttle outside any episode.
    outside: bool,
}

/// Add `ch` to counters `k` (atomically: other CPUs add too). Returns
/// whether the episode is a stall.
#[inline(always)]
fn add_counters(k: *mut MemCounters, ch: &Charge, stall: bool) {
    // SAFETY: `k` points into a map value.
    unsafe {
        match ch.kind {
            stall_kind::DIRECT => {
                add(&raw mut (*k).direct_count, 1);
                add(&raw mut (*k).direct_ns, ch.dur_ns);
            }
            stall_kind::MEMCG => {
                add(&raw mut (*k).memcg_count, 1);
                add(&raw mut (*k).memcg_ns, ch.dur_ns);
            }
            stall_kind::COMPACT => {
                add(&raw mut (*k).compact_count, 1);
                add(&raw mut (*k).compact_ns, ch.dur_ns);
            }
            _ => {
                add(&raw mut (*k).throttle_count, 1);
            }
        }
        add(&raw mut (*k).throttle_ns, ch.throttled_ns);
        if ch.outside {
            add(&raw mut (*k).throttle_outside_ns, ch.throttled_ns);
        }
        add(&raw mut (*k).scanned, ch.scanned);
        add(&raw mut (*k).reclaimed, ch.reclaimed);
        if ch.kind != stall_kind::THROTTLE && ch.dur_ns > (*k).max_ns {
            (*k).max_ns = ch.dur_ns;
        }
        if stall {
            add(&raw mut (*k).stalls, 1);
        }
    }
}

/// Charge a finished episode (or a throttle) of the current task: to the
/// background if it is a kernel thread, else to its process and memory
/// cgroup; a long one is sent as a stall event.
#[inline(always)]
fn charge(ch: &Charge, t: &MemTask, c: &MemConfig) {
    if is_kthread(c) {
        if let Some(h) = MEM_HOST.get_ptr_mut(0) {
            add_counters(unsafe { &raw mut (*h).background }, ch, false);
        }
        return;
    }
    let stall = ch.kind != stall_kind::THROTTLE && ch.dur_ns >= c.stall_threshold_ns;
    if c.keep_stats == 0 {
        if stall {
            stall_event(ch, t);
        }
        return;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Some(p) = proc_stats(tgid) {
        // SAFETY: map value pointer.
        unsafe {
            add_counters(&raw mut (*p).counters, ch, stall);
            if ch.kind != stall_kind::THROTTLE {
                let slot = hist_slot(ch.dur_ns) & (HIST_SLOTS - 1);
                add(&raw mut (*p).hist[slot], 1);
            }
        }
    }
    let cg = if ch.kind == stall_kind::MEMCG && t.limit_ino != 0 {
        t.limit_ino
    } else {
        t.memcg_ino
    };
    if let Some(g) = cg_stats(cg) {
        // SAFETY: map value pointer.
        add_counters(unsafe { &raw mut (*g).counters }, ch, stall);
    }
    if stall {
        stall_event(ch, t);
    }
}

#[inline(always)]
fn stall_event(ch: &Charge, t: &MemTask) {
    let Some(mut entry) = EVENTS.reserve::<MemStallEvent>(0) else {
        count(counters::RINGBUF_FULL);
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: a reserved, exclusively owned slot; every field is written.
    unsafe {
        (*ev).header = current_header(EventKind::MemStall as u32);
        (*ev).kind = ch.kind;
        (*ev).order = t.order;
        (*ev).dur_ns = ch.dur_ns;
        (*ev).scanned = ch.scanned;
        (*ev).reclaimed = ch.reclaimed;
        (*ev).throttled_ns = ch.throttled_ns;
        (*ev).memcg_ino = t.memcg_ino;
        (*ev).limit_ino = t.limit_ino;
        (*ev).limit_pages = t.limit_pages;
        (*ev).usage_pages = t.usage_pages;
    }
    entry.submit(submit_flags());
    count(counters::SUBMITTED);
    count(counters::MEM_STALLS);
}

/// The current task's memory cgroup, and the nearest one (it or an
/// ancestor) at its limit: a charge of up to 512 pages did not fit.
#[inline(always)]
fn note_cgroups(t: *mut MemTask, c: &MemConfig, want_limit: bool) {
    let l = &c.memcg;
    if l.valid == 0 {
        return;
    }
    let first = task_memcg(l, current_task());
    // SAFETY: `t` is a map value pointer.
    unsafe {
        (*t).memcg_ino = css_ino(l, first);
        (*t).limit_ino = 0;
        (*t).limit_pages = 0;
        (*t).usage_pages = 0;
    }
    if !want_limit {
        return;
    }
    let mut css = first;
    for _ in 0..MAX_MEMCG_DEPTH {
        if css == 0 {
            break;
        }
        let usage: u64 = kread(css, l.memcg_usage).unwrap_or(0);
        let max: u64 = kread(css, l.memcg_max).unwrap_or(u64::MAX);
        if max < (1u64 << 62) && usage.saturating_add(512) >= max {
            // SAFETY: as above.
            unsafe {
                (*t).limit_ino = css_ino(l, css);
                (*t).limit_pages = max;
                (*t).usage_pages = usage;
            }
            return;
        }
        css = kread(css, l.css_parent).unwrap_or(0);
    }
}

/// The current thread's entry, created if absent.
#[inline(always)]
fn task_entry(pid: u32) -> Option<*mut MemTask> {
    if let Some(t) = MEM_TASKS.get_ptr_mut(pid) {
        return Some(t);
    }
    let zero = MemTask::default();
    if MEM_TASKS.insert(pid, zero, BPF_NOEXIST as u64).is_err()
        && MEM_TASKS.get_ptr_mut(pid).is_none()
    {
        count(counters::MEM_TASK_MAP_FULL);
        return None;
    }
    MEM_TASKS.get_ptr_mut(pid)
}

#[inline(always)]
fn reclaim_begin(kind: u32, order: i32) -> u32 {
    let c = MEM_CONFIG.load();
    if c.valid == 0 {
        return 0;
    }
    let pid = bpf_get_current_pid_tgid() as u32;
    let Some(t) = task_entry(pid) else {
        return 0;
    };
    // SAFETY: map value pointer, only this thread writes it.
    unsafe {
        (*t).reclaim_ns = now();
        (*t).kind = kind;
        (*t).order = order;
        (*t).scanned = 0;
        (*t).reclaimed = 0;
        (*t).throttled_ns = 0;
    }
    note_cgroups(t, &c, kind == stall_kind::MEMCG);
    0
}

#[inline(always)]
fn reclaim_end(kind: u32) -> u32 {
    let c = MEM_CONFIG.load();
    if c.valid == 0 {
        return 0;
    }
    let pid = bpf_get_current_pid_tgid() as u32;
    let Some(t) = MEM_TASKS.get_ptr_mut(pid) else {
        // Began before diag attached.
        return 0;
    };
    // SAFETY: map value pointer, only this thread writes it.
    unsafe {
        if (*t).reclaim_ns != 0 && (*t).kind == kind {
            let ch = Charge {
                kind,
                dur_ns: now().saturating_sub((*t).reclaim_ns),
                scanned: (*t).scanned,
                reclaimed: (*t).reclaimed,
                throttled_ns: (*t).throttled_ns,
                outside: false,
            };
            charge(&ch, &*t, &c);
        }
        (*t).reclaim_ns = 0;
        (*t).scanned = 0;
        (*t).reclaimed = 0;
        (*t).throttled_ns = 0;
        if (*t).compact_ns == 0 {
            let _ = MEM_TASKS.remove(pid);
        }
    }
    0
}

/// mm_vmscan_direct_reclaim_begin(int order, gfp_t gfp_flags)
#[btf_tracepoint(function = "mm_vmscan_direct_reclaim_begin")]
pub fn mem_direct_begin(ctx: BtfTracePointContext) -> u32 {
    let order: i32 = ctx.arg(0);
    reclaim_begin(stall_kind::DIRECT, order)
}

/// mm_vmscan_direct_reclaim_end(unsigned long nr_reclaimed)
#[btf_tracepoint(function = "mm_vmscan_direct_reclaim_end")]
pub fn mem_direct_end(_ctx: BtfTracePointContext) -> u32 {
    reclaim_end(stall_kind::DIRECT)
}

/// mm_vmscan_memcg_reclaim_begin(int order, gfp_t gfp_flags)
#[btf_tracepoint(function = "mm_vmscan_memcg_reclaim_begin")]
pub fn mem_memcg_begin(ctx: BtfTracePointContext) -> u32 {
    let order: i32 = ctx.arg(0);
    reclaim_begin(stall_kind::MEMCG, order)
}

/// mm_vmscan_memcg_reclaim_end(unsigned long nr_reclaimed)
#[btf_tracepoint(function = "mm_vmscan_memcg_reclaim_end")]
pub fn mem_memcg_end(_ctx: BtfTracePointContext) -> u32 {
    reclaim_end(stall_kind::MEMCG)
}

/// mm_compaction_begin(struct compact_control *cc, unsigned long
/// zone_start, unsigned long zone_end, bool sync)
#[btf_tracepoint(function = "mm_compaction_begin")]
pub fn mem_compact_begin(_ctx: BtfTracePointContext) -> u32 {
    let c = MEM_CONFIG.load();
    if c.valid == 0 {
        return 0;
    }
    let pid = bpf_get_current_pid_tgid() as u32;
    let Some(t) = task_entry(pid) else {
        return 0;
    };
    // SAFETY: map value pointer, only this thread writes it.
    unsafe {
        (*t).compact_ns = now();
        if (*t).reclaim_ns == 0 {
            (*t).order = 0;
            (*t).scanned = 0;
            (*t).reclaimed = 0;
            (*t).throttled_ns = 0;
            note_cgroups(t, &c, false);
        }
    }
    0
}

/// mm_compaction_end(struct compact_control *cc, unsigned long zone_start,
/// unsigned long zone_end, bool sync, int status)
#[btf_tracepoint(function = "mm_compaction_end")]
pub fn mem_compact_end(_ctx: BtfTracePointContext) -> u32 {
    let c = MEM_CONFIG.load();
    if c.valid == 0 {
        return 0;
    }
    let pid = bpf_get_current_pid_tgid() as u32;
    let Some(t) = MEM_TASKS.get_ptr_mut(pid) else {
        return 0;
    };
    // SAFETY: map value pointer, only this thread writes it.
    unsafe {
        if (*t).compact_ns != 0 {
            let inside_reclaim = (*t).reclaim_ns != 0;
            let ch = Charge {
                kind: stall_kind::COMPACT,
                dur_ns: now().saturating_sub((*t).compact_ns),
                scanned: 0,
                reclaimed: 0,
                throttled_ns: if inside_reclaim { 0 } else { (*t).throttled_ns },
                outside: false,
            };
            charge(&ch, &*t, &c);
            if !inside_reclaim {
                (*t).throttled_ns = 0;
            }
        }
        (*t).compact_ns = 0;
        if (*t).reclaim_ns == 0 {
            let _ = MEM_TASKS.remove(pid);
        }
    }
    0
}

/// mm_vmscan_throttled(int nid, int usec_timeout, int usec_delayed, int
/// reason): fires after the sleep.
#[btf_tracepoint(function = "mm_vmscan_throttled")]
pub fn mem_throttled(ctx: BtfTracePointContext) -> u32 {
    let c = MEM_CONFIG.load();
    if c.valid == 0 {
        return 0;
    }
    let delayed: i32 = ctx.arg(2);
    let ns = (delayed.max(0) as u64) * 1000;
    let pid = bpf_get_current_pid_tgid() as u32;
    let open = MEM_TASKS.get_ptr_mut(pid);
    // In an open episode: its time includes the sleep; counted there too.
    if let Some(t) = open {
        // SAFETY: map value pointer, only this thread writes it.
        unsafe {
            if (*t).reclaim_ns != 0 || (*t).compact_ns != 0 {
                (*t).throttled_ns += ns;
                let ch = Charge {
                    kind: stall_kind::THROTTLE,
                    dur_ns: ns,
                    scanned: 0,
                    reclaimed: 0,
                    throttled_ns: 0,
                    outside: false,
                };
                // Only the count here: the time goes with the episode.
                charge(&ch, &*t, &c);
                return 0;
            }
        }
    }
    let mut t = MemTask::default();
    note_cgroups(&raw mut t, &c, false);
    let ch = Charge {
        kind: stall_kind::THROTTLE,
        dur_ns: ns,
        scanned: 0,
        reclaimed: 0,
        throttled_ns: ns,
        outside: true,
    };
    charge(&ch, &t, &c);
    0
}

/// Pages scanned or reclaimed by the current task: into its open episode,
/// or the host's background.
#[inline(always)]
fn lru_pages(scanned: u64, reclaimed: u64) {
    let pid = bpf_get_current_pid_tgid() as u32;
    if let Some(t) = MEM_TASKS.get_ptr_mut(pid) {
        // SAFETY: map value pointer, only this thread writes it.
        unsafe {
            if (*t).reclaim_ns != 0 {
                (*t).scanned += scanned;
                (*t).reclaimed += reclaimed;
                return;
            }
        }
    }
    if let Some(h) = MEM_HOST.get_ptr_mut(0) {
        // SAFETY: per-CPU value; tracepoints do not nest on a CPU here.
        unsafe {
            (*h).background.scanned += scanned;
            (*h).background.reclaimed += reclaimed;
        }
    }
}

/// mm_vmscan_lru_isolate(int highest_zoneidx, int order, unsigned long
/// nr_requested, unsigned long nr_scanned, unsigned long nr_skipped,
/// unsigned long nr_taken, int lru)
#[btf_tracepoint(function = "mm_vmscan_lru_isolate")]
pub fn mem_lru_isolate(ctx: BtfTracePointContext) -> u32 {
    let c = MEM_CONFIG.load();
    if c.valid == 0 {
        return 0;
    }
    let lru: i32 = ctx.arg(6);
    let lru = lru as u32;
    if lru != c.lru_inactive_anon && lru != c.lru_inactive_file {
        // The active lists: refill, not a scan for reclaim.
        return 0;
    }
    let scanned: u64 = ctx.arg(3);
    lru_pages(scanned, 0);
    0
}

/// mm_vmscan_lru_shrink_inactive(int nid, unsigned long nr_scanned,
/// unsigned long nr_reclaimed, struct reclaim_stat *stat, int priority,
/// int file)
#[btf_tracepoint(function = "mm_vmscan_lru_shrink_inactive")]
pub fn mem_shrink_inactive(ctx: BtfTracePointContext) -> u32 {
    let c = MEM_CONFIG.load();
    if c.valid == 0 {
        return 0;
    }
    let reclaimed: u64 = ctx.arg(2);
    lru_pages(0, reclaimed);
    0
}

/// The kernel's `REQ_OP_MASK`, `REQ_OP_READ`, `REQ_OP_WRITE`
/// (`include/linux/blk_types.h`, stable since 4.10).
const REQ_OP_MASK: u32 = 0xff;
const REQ_OP_READ: u32 = 0;
const REQ_OP_WRITE: u32 = 1;

/// block_bio_queue(struct bio *bio): a bio submitted by the current task.
#[btf_tracepoint(function = "block_bio_queue")]
pub fn mem_bio_queue(ctx: BtfTracePointContext) -> u32 {
    let c = MEM_CONFIG.load();
    if c.valid == 0 || c.swap == 0 {
        return 0;
    }
    let bio: *const u8 = ctx.arg(0);
    let bdev: *const u8 = btf_load(bio, c.bio_bdev);
    if bdev.is_null() {
        return 0;
    }
    let dev: u32 = btf_load(bdev, c.bdev_dev);
    // SAFETY: a plain lookup; the value is not kept.
    if unsafe { MEM_SWAP_DEVS.get(dev) }.is_none() {
        return 0;
    }
    let op = btf_load::<u32>(bio, c.bio_opf) & REQ_OP_MASK;
    if op != REQ_OP_READ && op != REQ_OP_WRITE {
        return 0;
    }
    let bytes: u32 = btf_load(bio, c.bio_size);
    let pages = u64::from(bytes >> (c.page_shift & 31));
    let mut ch = MemCounters::zeroed();
    if op == REQ_OP_READ {
        ch.swapin_pages = pages;
    } else {
        ch.swapout_pages = pages;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let kthread = is_kthread(&c);
    if kthread {
        if let Some(h) = MEM_HOST.get_ptr_mut(0) {
            // SAFETY: per-CPU value.
            unsafe {
                (*h).background.swapin_pages += ch.swapin_pages;
                (*h).background.swapout_pages += ch.swapout_pages;
            }
        }
    } else {
        if let Some(p) = proc_stats(tgid) {
            // SAFETY: map value pointer.
            unsafe {
                add(&raw mut (*p).counters.swapin_pages, ch.swapin_pages);
                add(&raw mut (*p).counters.swapout_pages, ch.swapout_pages);
            }
        }
        let l = &c.memcg;
        if l.valid != 0 {
            let ino = css_ino(l, task_memcg(l, current_task()));
            if let Some(g) = cg_stats(ino) {
                // SAFETY: map value pointer.
                unsafe {
                    add(&raw mut (*g).counters.swapin_pages, ch.swapin_pages);
                    add(&raw mut (*g).counters.swapout_pages, ch.swapout_pages);
                }
            }
        }
    }
    if op == REQ_OP_READ && !kthread {
        let b = SwapBio {
            start_ns: now(),
            tgid,
            _pad: 0,
        };
        if MEM_BIOS.insert(bio as u64, b, 0).is_err() {
            count(counters::MEM_BIO_MAP_FULL);
        }
    }
    0
}

/// block_bio_complete(struct request_queue *q, struct bio *bio)
#[btf_tracepoint(function = "block_bio_complete")]
pub fn mem_bio_complete(ctx: BtfTracePointContext) -> u32 {
    let c = MEM_CONFIG.load();
    if c.valid == 0 || c.swap == 0 {
        return 0;
    }
    let bio: *const u8 = ctx.arg(1);
    let key = bio as u64;
    // SAFETY: the value is copied out at once.
    let Some(b) = (unsafe { MEM_BIOS.get(key) }).copied() else {
        return 0;
    };
    let _ = MEM_BIOS.remove(key);
    if let Some(p) = MEM_PROCS.get_ptr_mut(b.tgid) {
        // SAFETY: map value pointer.
        unsafe {
            add(
                &raw mut (*p).counters.swapin_ns,
                now().saturating_sub(b.start_ns),
            )
        };
    }
    0
}
