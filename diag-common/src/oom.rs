//! OOM kills (`oom:mark_victim`, plus a `tp_btf` program on the same
//! tracepoint for the victim's task).
//!
//! `mark_victim` runs in the context of the task whose allocation made the
//! OOM killer run (the *trigger*): inside `out_of_memory()`, called from
//! the page allocator or from the memory cgroup charge path. So the event
//! header names the trigger; the victim has its own fields.

use crate::{EventHeader, TASK_COMM_LEN};

/// Byte offsets of the `oom:mark_victim` tracepoint's fields, read by user
/// space from tracefs (`events/oom/mark_victim/format`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MarkVictimLayout {
    pub pid: u32,
    /// A `__data_loc char[]`: a u32 holding `(len << 16) | offset` of the
    /// string within the record.
    pub comm: u32,
    pub total_vm: u32,
    pub anon_rss: u32,
    pub file_rss: u32,
    pub shmem_rss: u32,
    pub uid: u32,
    pub pgtables: u32,
    pub oom_score_adj: u32,
    /// 1 once user space filled this in; the program does nothing otherwise.
    pub valid: u32,
}
const _: () = assert!(core::mem::size_of::<MarkVictimLayout>() == 40);

impl MarkVictimLayout {
    pub const fn zeroed() -> Self {
        MarkVictimLayout {
            pid: 0,
            comm: 0,
            total_vm: 0,
            anon_rss: 0,
            file_rss: 0,
            shmem_rss: 0,
            uid: 0,
            pgtables: 0,
            oom_score_adj: 0,
            valid: 0,
        }
    }
}

/// Offsets into kernel structs, resolved by user space from the kernel's
/// BTF (`/sys/kernel/btf/vmlinux`) at load time, so the kernel programs can
/// follow `task->cgroups->subsys[memory]` to the memory cgroup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemcgLayout {
    /// `task_struct.cgroups` (`struct css_set *`).
    pub task_cgroups: u32,
    /// `task_struct.pid`.
    pub task_pid: u32,
    /// `task_struct.tgid`.
    pub task_tgid: u32,
    /// `css_set.subsys[memory_cgrp_id]`.
    pub cset_memory: u32,
    /// `cgroup_subsys_state.cgroup`.
    pub css_cgroup: u32,
    /// `cgroup_subsys_state.parent`.
    pub css_parent: u32,
    /// `cgroup.kn`.
    pub cgroup_kn: u32,
    /// `kernfs_node.id` (the cgroup directory's inode number).
    pub kn_id: u32,
    /// `mem_cgroup.memory.usage` (pages), from the css pointer.
    pub memcg_usage: u32,
    /// `mem_cgroup.memory.max` (pages), from the css pointer.
    pub memcg_max: u32,
    /// `mem_cgroup.oom_lock` (a bool), from the css pointer; [`NO_FIELD`]
    /// when the kernel lacks it (no cgroup v1 support built in).
    pub memcg_oom_lock: u32,
    /// 1 once user space filled this in; memcg facts are left 0 otherwise.
    pub valid: u32,
}
const _: () = assert!(core::mem::size_of::<MemcgLayout>() == 48);

/// A [`MemcgLayout`] offset for a field this kernel does not have.
pub const NO_FIELD: u32 = u32::MAX;

impl MemcgLayout {
    pub const fn zeroed() -> Self {
        MemcgLayout {
            task_cgroups: 0,
            task_pid: 0,
            task_tgid: 0,
            cset_memory: 0,
            css_cgroup: 0,
            css_parent: 0,
            cgroup_kn: 0,
            kn_id: 0,
            memcg_usage: 0,
            memcg_max: 0,
            memcg_oom_lock: NO_FIELD,
            valid: 0,
        }
    }
}

/// How far up the memory cgroup tree the kernel program looks for the
/// cgroup that ran out of memory.
pub const MAX_MEMCG_DEPTH: u32 = 8;

/// What kind of OOM it was.
pub mod constraint {
    /// Not known (the kernel's BTF lacked what diag needs).
    pub const UNKNOWN: u8 = 0;
    /// The whole system ran out of memory.
    pub const GLOBAL: u8 = 1;
    /// A memory cgroup hit its limit.
    pub const MEMCG: u8 = 2;

    pub fn name(c: u8) -> &'static str {
        match c {
            GLOBAL => "global",
            MEMCG => "memcg",
            _ => "unknown",
        }
    }
}

/// How the kernel program found the OOM cgroup.
pub mod memcg_how {
    /// `mem_cgroup.oom_lock`: while the kernel handles a memory cgroup's
    /// OOM, it holds this flag on that cgroup and all its descendants; the
    /// topmost flagged ancestor of the trigger's cgroup is the one.
    pub const OOM_LOCK: u8 = 1;
    /// Kernels without `oom_lock`: the nearest ancestor whose usage is at
    /// its limit.
    pub const AT_LIMIT: u8 = 2;

    pub fn name(h: u8) -> &'static str {
        match h {
            OOM_LOCK => "oom_lock",
            AT_LIMIT => "at_limit",
            _ => "none",
        }
    }
}

/// Facts the `tp_btf` program learns from the victim's `task_struct` and
/// leaves, per CPU, for the `mark_victim` tracepoint program that runs
/// right after it on the same CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VictimTask {
    /// Boot-time ns when it was written: only a fresh note is used.
    pub ts_ns: u64,
    pub pid: u32,
    pub tgid: u32,
    /// Inode number of the victim's memory cgroup directory, 0 if unknown.
    pub memcg_ino: u64,
}
const _: () = assert!(core::mem::size_of::<VictimTask>() == 24);

/// One OOM kill. The header names the **trigger**: the task that was
/// allocating when the OOM killer ran.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OomKillEvent {
    pub header: EventHeader,
    /// The victim's thread id (the tracepoint's `pid`).
    pub victim_pid: u32,
    /// The victim's process id, 0 if unknown.
    pub victim_tgid: u32,
    pub victim_comm: [u8; TASK_COMM_LEN],
    pub victim_uid: u32,
    pub oom_score_adj: i16,
    /// One of [`constraint`].
    pub constraint: u8,
    /// One of [`memcg_how`], 0 when no OOM cgroup was found.
    pub memcg_how: u8,
    /// The victim's sizes in KiB, as the tracepoint reports them.
    pub total_vm_kb: u64,
    pub anon_rss_kb: u64,
    pub file_rss_kb: u64,
    pub shmem_rss_kb: u64,
    pub pgtables_kb: u64,
    /// Inode numbers of memory cgroup directories (0 = unknown): the
    /// victim's, the trigger's, and the one that ran out of memory.
    pub victim_memcg_ino: u64,
    pub trigger_memcg_ino: u64,
    pub oom_memcg_ino: u64,
    /// The OOM cgroup's limit and usage in pages when the kill happened.
    pub oom_memcg_limit_pages: u64,
    pub oom_memcg_usage_pages: u64,
}
const _: () = assert!(core::mem::size_of::<OomKillEvent>() == 152);

impl OomKillEvent {
    /// Resident set size (anon + file + shmem) in KiB.
    pub fn rss_kb(&self) -> u64 {
        self.anon_rss_kb
            .saturating_add(self.file_rss_kb)
            .saturating_add(self.shmem_rss_kb)
    }

    /// The victim's process id: tgid when known, else its thread id.
    pub fn victim_process(&self) -> u32 {
        if self.victim_tgid != 0 {
            self.victim_tgid
        } else {
            self.victim_pid
        }
    }
}
