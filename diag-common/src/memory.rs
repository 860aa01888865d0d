//! Memory stalls: direct reclaim, memory cgroup reclaim, direct
//! compaction and reclaim throttling (`tp_btf` programs on the `vmscan:`
//! and `compaction:` tracepoints), pages scanned and reclaimed, and
//! swap-ins and swap-outs (`block:block_bio_queue` / `block_bio_complete`
//! on the swap devices).
//!
//! The begin/end tracepoints fire in the stalled task itself (current), so
//! an episode is paired per thread ([`MemTask`], map `MEM_TASKS`, an entry
//! only while the thread is inside one). Counts and totals go per process
//! ([`MemStats`], map `MEM_PROCS`) and per memory cgroup ([`MemCgStats`],
//! map `MEM_CGROUPS`); kernel threads (kswapd, kcompactd, kworkers) are the
//! host's background work ([`MemHost`], per CPU), never a victim's stall.
//! Episodes longer than a threshold are sent as [`MemStallEvent`]s.

use crate::{oom::MemcgLayout, EventHeader, TASK_COMM_LEN};

pub use crate::sched::{hist_slot, slot_high_ns, slot_low_ns, HIST_SLOTS};

/// What kind of memory stall an episode is.
pub mod stall_kind {
    /// Direct reclaim in the page allocator
    /// (`mm_vmscan_direct_reclaim_begin/end`).
    pub const DIRECT: u32 = 1;
    /// Reclaim forced by a memory cgroup's limit
    /// (`mm_vmscan_memcg_reclaim_begin/end`).
    pub const MEMCG: u32 = 2;
    /// Direct compaction (`mm_compaction_begin/end`, per zone).
    pub const COMPACT: u32 = 3;
    /// Reclaim throttling (`mm_vmscan_throttled`, which gives the time
    /// slept).
    pub const THROTTLE: u32 = 4;

    pub fn name(k: u32) -> &'static str {
        match k {
            DIRECT => "direct-reclaim",
            MEMCG => "memcg-reclaim",
            COMPACT => "compaction",
            THROTTLE => "throttled",
            _ => "?",
        }
    }
}

/// `PF_KTHREAD` of `task_struct.flags` (`include/linux/sched.h`, part of
/// the ABI tracing tools rely on; unchanged since 2.6).
pub const PF_KTHREAD: u32 = 0x0020_0000;

/// Most swap devices diag watches at once (`MEM_SWAP_DEVS`).
pub const MAX_SWAP_DEVS: u32 = 16;

/// Offsets from BTF and the tunables: the read-only global `MEM_CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemConfig {
    /// Offset of `task_struct.flags` (u32).
    pub task_flags: u32,
    /// Offset of `bio.bi_bdev` (a pointer).
    pub bio_bdev: u32,
    /// Offset of `block_device.bd_dev` (u32, the kernel's dev_t).
    pub bdev_dev: u32,
    /// Offset of `bio.bi_opf` (u32).
    pub bio_opf: u32,
    /// Offset of `bio.bi_iter.bi_size` (u32, bytes).
    pub bio_size: u32,
    /// log2 of the page size.
    pub page_shift: u32,
    /// 1 once user space filled this in; the programs do nothing otherwise.
    pub valid: u32,
    /// 1: the swap programs (block:*) are attached and count.
    pub swap: u32,
    /// `LRU_INACTIVE_ANON` and `LRU_INACTIVE_FILE` (`enum lru_list`, from
    /// BTF): the lists whose scans the kernel counts as pgscan.
    pub lru_inactive_anon: u32,
    pub lru_inactive_file: u32,
    /// 1: count per process and per memory cgroup (`MEM_PROCS`,
    /// `MEM_CGROUPS`: views that read and clear them); 0: stall events
    /// only, so those maps never fill (`tail`).
    pub keep_stats: u32,
    pub _pad: u32,
    /// An episode at least this long is sent as a [`MemStallEvent`].
    pub stall_threshold_ns: u64,
    /// Following the current task to its memory cgroup.
    pub memcg: MemcgLayout,
}
const _: () = assert!(core::mem::size_of::<MemConfig>() == 104);

impl MemConfig {
    pub const fn zeroed() -> Self {
        MemConfig {
            task_flags: 0,
            bio_bdev: 0,
            bdev_dev: 0,
            bio_opf: 0,
            bio_size: 0,
            page_shift: 12,
            valid: 0,
            swap: 0,
            lru_inactive_anon: 0,
            lru_inactive_file: 2,
            keep_stats: 0,
            _pad: 0,
            stall_threshold_ns: 0,
            memcg: MemcgLayout::zeroed(),
        }
    }
}

/// Cumulative memory-stall counters of a process, a memory cgroup or the
/// host's background, since diag started. The kernel only adds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemCounters {
    /// Direct reclaim episodes and their time, ns.
    pub direct_count: u64,
    pub direct_ns: u64,
    /// Memory cgroup reclaim episodes and their time, ns.
    pub memcg_count: u64,
    pub memcg_ns: u64,
    /// Compaction runs (one per zone) and their time, ns.
    pub compact_count: u64,
    pub compact_ns: u64,
    /// Reclaim throttling: times and the time slept, ns (mostly inside a
    /// reclaim episode, whose time includes it).
    pub throttle_count: u64,
    pub throttle_ns: u64,
    /// Throttling outside any episode, ns (added to the stall total).
    pub throttle_outside_ns: u64,
    /// Longest single episode, ns.
    pub max_ns: u64,
    /// Episodes longer than the stall threshold.
    pub stalls: u64,
    /// Pages scanned on the inactive LRU lists during its episodes
    /// (`mm_vmscan_lru_isolate`: the kernel's pgscan_*).
    pub scanned: u64,
    /// Pages reclaimed from the LRU lists during its episodes
    /// (`mm_vmscan_lru_shrink_inactive`: the kernel's pgsteal_*).
    pub reclaimed: u64,
    /// Pages swapped in (read from a swap device) and the I/O's time, ns.
    pub swapin_pages: u64,
    pub swapin_ns: u64,
    /// Pages swapped out (written to a swap device).
    pub swapout_pages: u64,
}
const _: () = assert!(core::mem::size_of::<MemCounters>() == 128);

impl MemCounters {
    pub const fn zeroed() -> Self {
        MemCounters {
            direct_count: 0,
            direct_ns: 0,
            memcg_count: 0,
            memcg_ns: 0,
            compact_count: 0,
            compact_ns: 0,
            throttle_count: 0,
            throttle_ns: 0,
            throttle_outside_ns: 0,
            max_ns: 0,
            stalls: 0,
            scanned: 0,
            reclaimed: 0,
            swapin_pages: 0,
            swapin_ns: 0,
            swapout_pages: 0,
        }
    }

    /// Time stalled: reclaim, compaction and throttling outside those, ns.
    pub fn stall_ns(&self) -> u64 {
        self.direct_ns + self.memcg_ns + self.compact_ns + self.throttle_outside_ns
    }

    /// Episodes: reclaim and compaction.
    pub fn episodes(&self) -> u64 {
        self.direct_count + self.memcg_count + self.compact_count
    }

    /// Add `o` (the longest episode is the larger one).
    pub fn add(&mut self, o: &MemCounters) {
        self.direct_count += o.direct_count;
        self.direct_ns += o.direct_ns;
        self.memcg_count += o.memcg_count;
        self.memcg_ns += o.memcg_ns;
        self.compact_count += o.compact_count;
        self.compact_ns += o.compact_ns;
        self.throttle_count += o.throttle_count;
        self.throttle_ns += o.throttle_ns;
        self.throttle_outside_ns += o.throttle_outside_ns;
        self.max_ns = self.max_ns.max(o.max_ns);
        self.stalls += o.stalls;
        self.scanned += o.scanned;
        self.reclaimed += o.reclaimed;
        self.swapin_pages += o.swapin_pages;
        self.swapin_ns += o.swapin_ns;
        self.swapout_pages += o.swapout_pages;
    }

    /// `self - before`, counter-wise (saturating; the longest episode is
    /// `self`'s).
    pub fn since(&self, b: &MemCounters) -> MemCounters {
        MemCounters {
            direct_count: self.direct_count.saturating_sub(b.direct_count),
            direct_ns: self.direct_ns.saturating_sub(b.direct_ns),
            memcg_count: self.memcg_count.saturating_sub(b.memcg_count),
            memcg_ns: self.memcg_ns.saturating_sub(b.memcg_ns),
            compact_count: self.compact_count.saturating_sub(b.compact_count),
            compact_ns: self.compact_ns.saturating_sub(b.compact_ns),
            throttle_count: self.throttle_count.saturating_sub(b.throttle_count),
            throttle_ns: self.throttle_ns.saturating_sub(b.throttle_ns),
            throttle_outside_ns: self
                .throttle_outside_ns
                .saturating_sub(b.throttle_outside_ns),
            max_ns: self.max_ns,
            stalls: self.stalls.saturating_sub(b.stalls),
            scanned: self.scanned.saturating_sub(b.scanned),
            reclaimed: self.reclaimed.saturating_sub(b.reclaimed),
            swapin_pages: self.swapin_pages.saturating_sub(b.swapin_pages),
            swapin_ns: self.swapin_ns.saturating_sub(b.swapin_ns),
            swapout_pages: self.swapout_pages.saturating_sub(b.swapout_pages),
        }
    }
}

/// Per process (map `MEM_PROCS`, keyed by tgid). User space diffs two
/// readings and deletes the entries of processes that are gone.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemStats {
    pub counters: MemCounters,
    /// `comm` of the thread that created the entry.
    pub comm: [u8; TASK_COMM_LEN],
    /// Episode latency histogram (reclaim and compaction), see
    /// [`hist_slot`].
    pub hist: [u64; HIST_SLOTS],
}
const _: () = assert!(core::mem::size_of::<MemStats>() == 400);

impl MemStats {
    pub const fn zeroed() -> Self {
        MemStats {
            counters: MemCounters::zeroed(),
            comm: [0; TASK_COMM_LEN],
            hist: [0; HIST_SLOTS],
        }
    }
}

/// Per memory cgroup (map `MEM_CGROUPS`, keyed by the inode number of its
/// directory): memory cgroup reclaim is charged to the cgroup whose limit
/// forced it, everything else to the task's own memory cgroup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemCgStats {
    pub counters: MemCounters,
}
const _: () = assert!(core::mem::size_of::<MemCgStats>() == 128);

/// The host's background memory work (map `MEM_HOST`, per CPU, slot 0):
/// what kernel threads (kswapd, kcompactd, kworkers) did, and pages
/// scanned/reclaimed outside any episode.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemHost {
    pub background: MemCounters,
}
const _: () = assert!(core::mem::size_of::<MemHost>() == 128);

/// Per thread while it is inside an episode (map `MEM_TASKS`, keyed by
/// thread id; removed at the episode's end).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemTask {
    /// Boot-time ns when the reclaim episode began (0: none open).
    pub reclaim_ns: u64,
    /// Boot-time ns when the compaction run began (0: none open).
    pub compact_ns: u64,
    /// Pages scanned and reclaimed so far in the open episode.
    pub scanned: u64,
    pub reclaimed: u64,
    /// Time throttled in the open episode, ns.
    pub throttled_ns: u64,
    /// [`stall_kind`] of the open reclaim episode.
    pub kind: u32,
    /// Allocation order (reclaim begin).
    pub order: i32,
    /// The task's memory cgroup, and the one at its limit (see
    /// [`MemStallEvent`]), when the episode began.
    pub memcg_ino: u64,
    pub limit_ino: u64,
    pub limit_pages: u64,
    pub usage_pages: u64,
}
const _: () = assert!(core::mem::size_of::<MemTask>() == 80);

/// A reclaim or compaction episode longer than the threshold. The header
/// names the stalled task (current when it ended) and the time it ended.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemStallEvent {
    pub header: EventHeader,
    /// One of [`stall_kind`].
    pub kind: u32,
    /// Allocation order (reclaim; 0 for compaction).
    pub order: i32,
    pub dur_ns: u64,
    /// Pages scanned and reclaimed in the episode (reclaim).
    pub scanned: u64,
    pub reclaimed: u64,
    /// Of that time, throttled, ns.
    pub throttled_ns: u64,
    /// Inode of the task's memory cgroup directory (0: unknown).
    pub memcg_ino: u64,
    /// Inode of the memory cgroup at its limit, nearest the task (the one
    /// whose limit forced the reclaim; 0: none at its limit, or unknown).
    pub limit_ino: u64,
    /// That cgroup's limit and usage then, pages.
    pub limit_pages: u64,
    pub usage_pages: u64,
}
const _: () = assert!(core::mem::size_of::<MemStallEvent>() == 112);

/// Most swap-in bios in flight diag times at once (`MEM_BIOS`).
pub const MAX_BIOS: u32 = 4096;

/// A swap-in bio in flight (map `MEM_BIOS`, keyed by the bio's address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwapBio {
    pub start_ns: u64,
    pub tgid: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<SwapBio>() == 16);

/// Bounds of the kernel maps.
pub const MAX_PROCS: u32 = 8192;
pub const MAX_CGROUPS: u32 = 4096;
pub const MAX_TASKS: u32 = 8192;
