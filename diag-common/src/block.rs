//! Block I/O per process and per device (`tp_btf` programs on
//! `block_io_start` and `block_rq_complete`).
//!
//! A request is noted when the block layer accounts its start
//! (`block_io_start`, in the submitting task for almost every path: the
//! task it is charged to) and counted when it completes
//! (`block_rq_complete`, usually in interrupt context). Per-request data
//! never travels as events: the kernel adds it up per device
//! ([`BlockDevStats`], map `BLOCK_DEVS`) and per process and device
//! ([`BlockProcStats`], map `BLOCK_PROCS`); only requests slower than a
//! threshold are sent, as [`BlockSlowEvent`]s.
//!
//! Bio-based devices (zram, device-mapper, md) have no requests: their
//! I/O is seen on the request-based devices below them, if any.

use crate::{EventHeader, TASK_COMM_LEN};

pub use crate::sched::{hist_slot, slot_high_ns, slot_low_ns, HIST_SLOTS};

/// A device as diag keys it: `major << 20 | minor` (what the kernel's
/// `dev_t` of a tracepoint record holds too).
#[inline(always)]
pub const fn dev_key(major: u32, minor: u32) -> u32 {
    (major << 20) | (minor & 0xF_FFFF)
}

/// (major, minor) of a [`dev_key`].
pub const fn dev_parts(dev: u32) -> (u32, u32) {
    (dev >> 20, dev & 0xF_FFFF)
}

/// What a request does, as `/proc/diskstats` groups it.
pub mod op {
    pub const READ: u32 = 0;
    pub const WRITE: u32 = 1;
    pub const DISCARD: u32 = 2;
    pub const FLUSH: u32 = 3;
    /// Number of groups.
    pub const LEN: usize = 4;
}

/// Offsets into `struct request`, `struct request_queue` and `struct
/// gendisk`, and the `enum req_op` values, resolved by user space from the
/// kernel's BTF at load time: the read-only global `BLOCK_CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockConfig {
    /// 1 once user space filled this in; the programs do nothing otherwise.
    pub valid: u32,
    /// `request.q`
    pub rq_q: u32,
    /// `request.cmd_flags` (`blk_opf_t`: the op in its low 8 bits).
    pub rq_cmd_flags: u32,
    /// `request.__data_len`: bytes left to complete.
    pub rq_data_len: u32,
    /// `request.__sector`
    pub rq_sector: u32,
    /// `request_queue.disk`
    pub q_disk: u32,
    /// `gendisk.major`
    pub disk_major: u32,
    /// `gendisk.first_minor`
    pub disk_first_minor: u32,
    /// `REQ_OP_DISCARD`, `REQ_OP_SECURE_ERASE`, `REQ_OP_FLUSH`.
    pub op_discard: u32,
    pub op_secure_erase: u32,
    pub op_flush: u32,
    /// `request.start_time_ns` (u64, CLOCK_MONOTONIC): the kernel's own
    /// start of the request, which its disk statistics count from; 0 when
    /// the kernel has none (the start at `block_io_start` is used).
    pub rq_start_time_ns: u32,
    /// A request at least this slow (start to completion) is sent as a
    /// [`BlockSlowEvent`]; `u64::MAX`: none are.
    pub slow_ns: u64,
}
const _: () = assert!(core::mem::size_of::<BlockConfig>() == 56);

impl BlockConfig {
    pub const fn zeroed() -> Self {
        BlockConfig {
            valid: 0,
            rq_q: 0,
            rq_cmd_flags: 0,
            rq_data_len: 0,
            rq_sector: 0,
            q_disk: 0,
            disk_major: 0,
            disk_first_minor: 0,
            op_discard: 0,
            op_secure_erase: 0,
            op_flush: 0,
            rq_start_time_ns: 0,
            slow_ns: u64::MAX,
        }
    }
}

/// A request in flight (map `BLOCK_REQS`, keyed by its `struct request`
/// address): who started it, when, on which device.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockReq {
    /// Boot-time ns at `block_io_start`.
    pub start_ns: u64,
    pub pid: u32,
    pub tgid: u32,
    /// [`dev_key`]
    pub dev: u32,
    /// One of [`op`].
    pub op: u32,
    /// Bytes completed so far (partial completions).
    pub done_bytes: u64,
    pub comm: [u8; TASK_COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<BlockReq>() == 48);

/// Cumulative counters of completed requests, since diag started.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockCounters {
    /// Requests completed, per [`op`].
    pub ios: [u64; op::LEN],
    /// Bytes completed, per [`op`].
    pub bytes: [u64; op::LEN],
    /// Sum of start-to-completion times, ns, per [`op`].
    pub lat_ns: [u64; op::LEN],
    /// Requests completed with an error.
    pub errors: u64,
    pub _pad: u64,
    /// Start-to-completion latency histogram (reads and writes), see
    /// [`hist_slot`].
    pub hist: [u64; HIST_SLOTS],
}
const _: () = assert!(core::mem::size_of::<BlockCounters>() == 368);

impl BlockCounters {
    pub const fn zeroed() -> Self {
        BlockCounters {
            ios: [0; op::LEN],
            bytes: [0; op::LEN],
            lat_ns: [0; op::LEN],
            errors: 0,
            _pad: 0,
            hist: [0; HIST_SLOTS],
        }
    }
}

impl Default for BlockCounters {
    fn default() -> Self {
        Self::zeroed()
    }
}

/// Per device (map `BLOCK_DEVS`, keyed by [`dev_key`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockDevStats {
    pub c: BlockCounters,
    /// Requests started and not completed yet (that diag saw start).
    pub inflight: u64,
    /// Time with at least one request in flight, ns (iostat's %util, the
    /// kernel's `io_ticks`), up to `stamp_ns`.
    pub busy_ns: u64,
    /// Boot-time ns of the last start or completion on the device.
    pub stamp_ns: u64,
    pub _pad: u64,
}
const _: () = assert!(core::mem::size_of::<BlockDevStats>() == 400);

impl BlockDevStats {
    pub const fn zeroed() -> Self {
        BlockDevStats {
            c: BlockCounters::zeroed(),
            inflight: 0,
            busy_ns: 0,
            stamp_ns: 0,
            _pad: 0,
        }
    }
}

/// Key of map `BLOCK_PROCS`: a process on a device.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockProcKey {
    pub tgid: u32,
    /// [`dev_key`]
    pub dev: u32,
}
const _: () = assert!(core::mem::size_of::<BlockProcKey>() == 8);

/// Per process and device (map `BLOCK_PROCS`): the requests its threads
/// started. The kernel only adds; user space diffs two readings and
/// deletes the entries of processes that are gone once it has read them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockProcStats {
    pub c: BlockCounters,
    /// `comm` of the thread that started the first request.
    pub comm: [u8; TASK_COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<BlockProcStats>() == 384);

impl BlockProcStats {
    pub const fn zeroed() -> Self {
        BlockProcStats {
            c: BlockCounters::zeroed(),
            comm: [0; TASK_COMM_LEN],
        }
    }
}

/// Indexes into the kernel's per-CPU `BLOCK_COUNTERS`: what the block
/// programs could not do.
pub mod counters {
    /// A request could not be noted (`BLOCK_REQS` full): not counted.
    pub const REQ_MAP_FULL: u32 = 0;
    /// A process could not be tracked (`BLOCK_PROCS` full): its requests
    /// count for the device only.
    pub const PROC_MAP_FULL: u32 = 1;
    /// A device could not be tracked (`BLOCK_DEVS` full).
    pub const DEV_MAP_FULL: u32 = 2;
    /// Completions of requests diag did not see start (started before
    /// diag, or not noted): not counted.
    pub const UNKNOWN_DONE: u32 = 3;
    /// Slow-request events submitted.
    pub const SLOW_EVENTS: u32 = 4;
    /// Slow-request events lost to a full ring buffer.
    pub const RINGBUF_FULL: u32 = 5;
    /// Requests noted at their start.
    pub const STARTED: u32 = 6;
    /// Requests merged into another before they were issued (counted
    /// with the one they joined, as /proc/diskstats does).
    pub const MERGED: u32 = 7;
    pub const LEN: u32 = 8;
}

/// A request slower than the threshold (`tail --events io`). The header
/// names the task that started it (its time is the completion's).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSlowEvent {
    pub header: EventHeader,
    /// Start to completion, ns.
    pub lat_ns: u64,
    /// First sector.
    pub sector: u64,
    /// Bytes completed.
    pub bytes: u64,
    /// [`dev_key`]
    pub dev: u32,
    /// One of [`op`].
    pub op: u32,
    /// The completion's `blk_status_t` (0: success).
    pub error: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<BlockSlowEvent>() == 80);
