//! Block I/O, from two `tp_btf` programs (typed raw tracepoints: they
//! carry the `struct request *`, the key of a request in flight).
//!
//! - `block_io_start(rq)`: the block layer accounts a new request
//!   (`blk_account_io_start`), in the task that submits it for almost
//!   every path (writeback runs in kernel threads, whose I/O is theirs).
//!   The request is noted in `BLOCK_REQS` with that task, its device (from
//!   `rq->q->disk`) and what it does; the device's in-flight count and
//!   busy time move.
//! - `block_rq_complete(rq, error, nr_bytes)`: (part of) a request
//!   completed, usually in interrupt context. When the last bytes are
//!   done, its latency, bytes and error are added to its device and to
//!   the process that started it, and a request slower than the threshold
//!   is sent as an event.
//! - `block_rq_merge(rq)`: a request merged into another (the block
//!   layer frees it without a completion; the other carries its bytes):
//!   forgotten, no longer in flight.
//!
//! Busy time is counted like the kernel's `io_ticks`: at every start and
//! completion on a device, the time since the previous one is busy if a
//! request was in flight. Two CPUs doing so on one device at the same
//! instant can race on the stamp (a few µs either way, not cumulative).

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns, bpf_ktime_get_ns,
    },
    macros::{btf_tracepoint, map},
    maps::{HashMap, PerCpuArray},
    programs::BtfTracePointContext,
    Global,
};
use diag_common::{
    block::{
        counters, dev_key, hist_slot, op, BlockConfig, BlockCounters, BlockDevStats, BlockProcKey,
        BlockProcStats, BlockReq, BlockSlowEvent, HIST_SLOTS,
    },
    EventHeader, EventKind, TASK_COMM_LEN,
};

use crate::maps::{btf_load, submit_flags, EVENTS};

/// Offsets from BTF and the slow-request threshold, written by user
/// space at load time.
#[unsafe(no_mangle)]
static BLOCK_CONFIG: Global<BlockConfig> = Global::new(BlockConfig::zeroed());

/// Requests in flight, keyed by their `struct request` address. A plain
/// hash (an LRU hash may evict a live entry before it is full, and a
/// request would go uncounted without a word); a full map is counted,
/// and user space drops entries stuck for minutes.
#[map]
static BLOCK_REQS: HashMap<u64, BlockReq> = HashMap::with_max_entries(16_384, 0);

/// Per device.
#[map]
static BLOCK_DEVS: HashMap<u32, BlockDevStats> = HashMap::with_max_entries(1_024, 0);

/// Per process and device.
#[map]
static BLOCK_PROCS: HashMap<BlockProcKey, BlockProcStats> = HashMap::with_max_entries(16_384, 0);

/// What the block programs could not do (see `diag_common::block::counters`).
#[map]
static BLOCK_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counters::LEN, 0);

/// Zeroed values to insert from (too big for the BPF stack).
#[map]
static BLOCK_DEV_TEMPLATE: PerCpuArray<BlockDevStats> = PerCpuArray::with_max_entries(1, 0);
#[map]
static BLOCK_PROC_TEMPLATE: PerCpuArray<BlockProcStats> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn count(slot: u32) {
    if let Some(p) = BLOCK_COUNTERS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn add(p: *mut u64, v: u64) {
    // SAFETY: `p` points into a map value, valid and 8-byte aligned while
    // the program runs; the kernel allows atomic adds on map values.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            p, v,
        )
    };
}

/// The device's stats, created if absent.
#[inline(always)]
fn dev_stats(dev: u32) -> Option<*mut BlockDevStats> {
    if let Some(p) = BLOCK_DEVS.get_ptr_mut(dev) {
        return Some(p);
    }
    let t = BLOCK_DEV_TEMPLATE.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch value, only this program on this CPU uses it.
    unsafe {
        *t = BlockDevStats::zeroed();
        #[allow(clippy::needless_borrows_for_generic_args)]
        let inserted = BLOCK_DEVS.insert(dev, &*t, BPF_NOEXIST as u64);
        if inserted.is_err() && BLOCK_DEVS.get_ptr_mut(dev).is_none() {
            count(counters::DEV_MAP_FULL);
            return None;
        }
    }
    BLOCK_DEVS.get_ptr_mut(dev)
}

/// The process's stats on a device, created if absent.
#[inline(always)]
fn proc_stats(key: &BlockProcKey, comm: &[u8; TASK_COMM_LEN]) -> Option<*mut BlockProcStats> {
    if let Some(p) = BLOCK_PROCS.get_ptr_mut(key) {
        return Some(p);
    }
    let t = BLOCK_PROC_TEMPLATE.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch value, only this program on this CPU uses it.
    unsafe {
        *t = BlockProcStats::zeroed();
        (*t).comm = *comm;
        #[allow(clippy::needless_borrows_for_generic_args)]
        let inserted = BLOCK_PROCS.insert(key, &*t, BPF_NOEXIST as u64);
        if inserted.is_err() && BLOCK_PROCS.get_ptr_mut(key).is_none() {
            count(counters::PROC_MAP_FULL);
            return None;
        }
    }
    BLOCK_PROCS.get_ptr_mut(key)
}

/// A start or completion on a device at `now`: the time since the last
/// one was busy if a request was in flight; then `delta` (+1 or -1) in
/// flight.
#[inline(always)]
fn tick(d: *mut BlockDevStats, now: u64, delta: u64) {
    // SAFETY: map value pointer, valid while we run.
    unsafe {
        if (*d).inflight != 0 {
            add(&raw mut (*d).busy_ns, now.saturating_sub((*d).stamp_ns));
        }
        (*d).stamp_ns = now;
        add(&raw mut (*d).inflight, delta);
    }
}

/// Add one completed request to counters.
#[inline(always)]
fn charge(c: *mut BlockCounters, o: usize, bytes: u64, lat: u64, error: bool) {
    let o = o & (op::LEN - 1);
    let slot = hist_slot(lat) & (HIST_SLOTS - 1);
    // SAFETY: map value pointer, valid while we run; indexes masked.
    unsafe {
        add(&raw mut (*c).ios[o], 1);
        add(&raw mut (*c).bytes[o], bytes);
        add(&raw mut (*c).lat_ns[o], lat);
        add(&raw mut (*c).hist[slot], 1);
        if error {
            add(&raw mut (*c).errors, 1);
        }
    }
}

/// What `cmd_flags` says the request does, as /proc/diskstats groups it.
#[inline(always)]
fn op_of(flags: u32, c: &BlockConfig) -> u32 {
    // REQ_OP_BITS: the op is the low 8 bits of blk_opf_t; bit 0 of the
    // op is its direction (op_is_write).
    let o = flags & 0xff;
    if o == c.op_discard || o == c.op_secure_erase {
        op::DISCARD
    } else if o == c.op_flush {
        op::FLUSH
    } else if o & 1 == 1 {
        op::WRITE
    } else {
        op::READ
    }
}

#[btf_tracepoint(function = "block_io_start")]
pub fn block_io_start(ctx: BtfTracePointContext) -> u32 {
    let c = BLOCK_CONFIG.load();
    if c.valid == 0 {
        return 0;
    }
    // block_io_start(struct request *rq)
    let rq: *const u8 = ctx.arg(0);
    let q = btf_load::<u64>(rq, c.rq_q) as *const u8;
    let disk = btf_load::<u64>(q, c.q_disk) as *const u8;
    let major: u32 = btf_load(disk, c.disk_major);
    let minor: u32 = btf_load(disk, c.disk_first_minor);
    let flags: u32 = btf_load(rq, c.rq_cmd_flags);
    let dev = dev_key(major, minor);
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let pid_tgid = bpf_get_current_pid_tgid();
    let req = BlockReq {
        start_ns: now,
        pid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        dev,
        op: op_of(flags, &c),
        done_bytes: 0,
        comm: bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]),
    };
    if BLOCK_REQS.insert(rq as u64, req, 0).is_err() {
        count(counters::REQ_MAP_FULL);
        return 0;
    }
    count(counters::STARTED);
    if let Some(d) = dev_stats(dev) {
        tick(d, now, 1);
    }
    0
}

#[btf_tracepoint(function = "block_rq_complete")]
pub fn block_rq_complete(ctx: BtfTracePointContext) -> u32 {
    let c = BLOCK_CONFIG.load();
    if c.valid == 0 {
        return 0;
    }
    // block_rq_complete(struct request *rq, blk_status_t error,
    //                   unsigned int nr_bytes)
    let rq: *const u8 = ctx.arg(0);
    let error: u64 = ctx.arg(1);
    let nr_bytes: u64 = ctx.arg(2);
    let key = rq as u64;
    let Some(r) = BLOCK_REQS.get_ptr_mut(key) else {
        count(counters::UNKNOWN_DONE);
        return 0;
    };
    // Bytes left before this completion (blk_update_request traces, then
    // advances the request).
    let left = u64::from(btf_load::<u32>(rq, c.rq_data_len));
    // SAFETY: map value pointer, valid while we run.
    let req = unsafe {
        (*r).done_bytes += nr_bytes & 0xffff_ffff;
        if nr_bytes & 0xffff_ffff < left {
            // A partial completion: the rest follows.
            return 0;
        }
        *r
    };
    let _ = BLOCK_REQS.remove(key);
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let lat = request_time(rq, &req, now, &c);
    let failed = error & 0xff != 0;
    if let Some(d) = dev_stats(req.dev) {
        tick(d, now, u64::MAX);
        // SAFETY: map value pointer.
        charge(
            unsafe { &raw mut (*d).c },
            req.op as usize,
            req.done_bytes,
            lat,
            failed,
        );
    }
    let pk = BlockProcKey {
        tgid: req.tgid,
        dev: req.dev,
    };
    if let Some(p) = proc_stats(&pk, &req.comm) {
        // SAFETY: map value pointer.
        charge(
            unsafe { &raw mut (*p).c },
            req.op as usize,
            req.done_bytes,
            lat,
            failed,
        );
    }
    if lat >= c.slow_ns {
        slow_event(&req, rq, lat, now, error & 0xff, &c);
    }
    0
}

/// Start to completion as the kernel's disk statistics count it: from the
/// request's own `start_time_ns` (set when it was made, which can be well
/// before `block_io_start` fires: a plug's cached clock, a wait for a tag)
/// to now on the same clock. Without that field, or with it unset (I/O
/// statistics off), from `block_io_start`.
#[inline(always)]
fn request_time(rq: *const u8, req: &BlockReq, now: u64, c: &BlockConfig) -> u64 {
    if c.rq_start_time_ns != 0 {
        let start: u64 = btf_load(rq, c.rq_start_time_ns);
        if start != 0 {
            // SAFETY: helper without arguments.
            return unsafe { bpf_ktime_get_ns() }.saturating_sub(start);
        }
    }
    now.saturating_sub(req.start_ns)
}

#[btf_tracepoint(function = "block_rq_merge")]
pub fn block_rq_merge(ctx: BtfTracePointContext) -> u32 {
    let c = BLOCK_CONFIG.load();
    if c.valid == 0 {
        return 0;
    }
    // block_rq_merge(struct request *rq): rq is the one merged away.
    let rq: *const u8 = ctx.arg(0);
    let key = rq as u64;
    let Some(r) = BLOCK_REQS.get_ptr_mut(key) else {
        return 0;
    };
    // SAFETY: map value pointer, valid while we run.
    let dev = unsafe { (*r).dev };
    let _ = BLOCK_REQS.remove(key);
    count(counters::MERGED);
    if let Some(d) = BLOCK_DEVS.get_ptr_mut(dev) {
        // SAFETY: helper without arguments.
        let now = unsafe { bpf_ktime_get_boot_ns() };
        tick(d, now, u64::MAX);
    }
    0
}

#[inline(always)]
fn slow_event(req: &BlockReq, rq: *const u8, lat: u64, now: u64, error: u64, c: &BlockConfig) {
    let Some(mut entry) = EVENTS.reserve::<BlockSlowEvent>(0) else {
        count(counters::RINGBUF_FULL);
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: a reserved, exclusively owned slot of the right size; every
    // field is written before submit.
    unsafe {
        (*ev).header = EventHeader {
            kind: EventKind::BlockSlow as u32,
            cpu: aya_ebpf::helpers::bpf_get_smp_processor_id(),
            ts_ns: now,
            pid: req.pid,
            tgid: req.tgid,
            comm: req.comm,
        };
        (*ev).lat_ns = lat;
        (*ev).sector = btf_load::<u64>(rq, c.rq_sector);
        (*ev).bytes = req.done_bytes;
        (*ev).dev = req.dev;
        (*ev).op = req.op;
        (*ev).error = error as u32;
        (*ev)._pad = 0;
    }
    entry.submit(submit_flags());
    count(counters::SLOW_EVENTS);
    crate::maps::count(diag_common::counters::SUBMITTED);
}
