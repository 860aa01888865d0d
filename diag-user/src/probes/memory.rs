//! Memory stalls: `tp_btf` programs on the reclaim, compaction and
//! throttling tracepoints, and (for views that show swap) on the block
//! layer's bio queue/complete, filtered to the swap devices.

use std::{collections::HashMap as StdHashMap, path::Path};

use aya::{
    Btf, Ebpf,
    maps::{HashMap, MapData, PerCpuArray},
};
use diag_common::memory::{MemCgStats, MemConfig, MemHost, MemStats};

use crate::{
    btf,
    error::{EnvError, LoadError},
};

/// Reclaim, compaction and throttling: (program, raw tracepoint).
pub const TRACEPOINTS: &[(&str, &str)] = &[
    ("mem_lru_isolate", "mm_vmscan_lru_isolate"),
    ("mem_shrink_inactive", "mm_vmscan_lru_shrink_inactive"),
    ("mem_throttled", "mm_vmscan_throttled"),
    ("mem_direct_end", "mm_vmscan_direct_reclaim_end"),
    ("mem_direct_begin", "mm_vmscan_direct_reclaim_begin"),
    ("mem_memcg_end", "mm_vmscan_memcg_reclaim_end"),
    ("mem_memcg_begin", "mm_vmscan_memcg_reclaim_begin"),
    ("mem_compact_end", "mm_compaction_end"),
    ("mem_compact_begin", "mm_compaction_begin"),
];

/// For messages.
pub const TRACEPOINT_NAMES: &[&str] = &[
    "tp_btf:mm_vmscan_lru_isolate",
    "tp_btf:mm_vmscan_lru_shrink_inactive",
    "tp_btf:mm_vmscan_throttled",
    "tp_btf:mm_vmscan_direct_reclaim_end",
    "tp_btf:mm_vmscan_direct_reclaim_begin",
    "tp_btf:mm_vmscan_memcg_reclaim_end",
    "tp_btf:mm_vmscan_memcg_reclaim_begin",
    "tp_btf:mm_compaction_end",
    "tp_btf:mm_compaction_begin",
];

/// Swap-ins and swap-outs: every bio of the host passes through these.
pub const SWAP_TRACEPOINTS: &[(&str, &str)] = &[
    ("mem_bio_complete", "block_bio_complete"),
    ("mem_bio_queue", "block_bio_queue"),
];
pub const SWAP_TRACEPOINT_NAMES: &[&str] = &["tp_btf:block_bio_complete", "tp_btf:block_bio_queue"];

/// Maps only the memory programs use: shrunk to one entry when they are
/// not attached.
pub const MAPS: &[&str] = &["MEM_PROCS", "MEM_CGROUPS", "MEM_TASKS", "MEM_BIOS"];

/// The offsets the programs need, from the kernel's BTF.
pub fn layout(btf_path: &Path, stall_threshold_ns: u64, swap: bool) -> Result<MemConfig, EnvError> {
    let bad = |why: String| EnvError::TracepointFormat {
        name: "memory probes (kernel BTF)".into(),
        why,
    };
    let b = btf::Btf::from_file(btf_path).map_err(bad)?;
    layout_from(&b, stall_threshold_ns, swap).map_err(bad)
}

pub fn layout_from(b: &btf::Btf, stall_threshold_ns: u64, swap: bool) -> Result<MemConfig, String> {
    let bi_iter = b.member("bio", "bi_iter")?.offset;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let page_shift = if page > 0 {
        (page as u64).trailing_zeros()
    } else {
        12
    };
    // Memory cgroups are optional: without them the per-cgroup figures
    // are missing, not the per-process ones.
    let memcg = match super::oom::memcg_layout(b) {
        Ok(l) => l,
        Err(why) => {
            tracing::warn!("note: memory stalls without memory cgroups ({why})");
            diag_common::oom::MemcgLayout::zeroed()
        }
    };
    let lru = |name: &str| -> Result<u32, String> {
        let v = b.enum_value(name)?;
        u32::try_from(v).map_err(|_| format!("{name} = {v}"))
    };
    Ok(MemConfig {
        task_flags: b.sized_member("task_struct", "flags", 4)?,
        bio_bdev: b.sized_member("bio", "bi_bdev", 8)?,
        bdev_dev: b.sized_member("block_device", "bd_dev", 4)?,
        bio_opf: b.sized_member("bio", "bi_opf", 4)?,
        bio_size: bi_iter + b.sized_member("bvec_iter", "bi_size", 4)?,
        page_shift,
        valid: 1,
        swap: u32::from(swap),
        lru_inactive_anon: lru("LRU_INACTIVE_ANON")?,
        lru_inactive_file: lru("LRU_INACTIVE_FILE")?,
        keep_stats: u32::from(swap),
        _pad: 0,
        stall_threshold_ns,
        memcg,
    })
}

/// Load and attach the memory programs (the swap ones when `swap`).
pub fn attach(
    ebpf: &mut Ebpf,
    btf: &Btf,
    swap: bool,
    attached: &mut Vec<&'static str>,
) -> Result<(), LoadError> {
    for ((prog, tp), name) in TRACEPOINTS.iter().zip(TRACEPOINT_NAMES) {
        super::attach_tp_btf(ebpf, prog, tp, btf, name)?;
        attached.push(name);
    }
    if swap {
        for ((prog, tp), name) in SWAP_TRACEPOINTS.iter().zip(SWAP_TRACEPOINT_NAMES) {
            super::attach_tp_btf(ebpf, prog, tp, btf, name)?;
            attached.push(name);
        }
    }
    Ok(())
}

/// One reading of the memory maps.
#[derive(Debug, Default, Clone)]
pub struct MemReading {
    /// Per process (tgid).
    pub procs: StdHashMap<u32, MemStats>,
    /// Per memory cgroup (directory inode).
    pub cgroups: StdHashMap<u64, MemCgStats>,
    /// Kernel threads' work, summed over CPUs.
    pub host: MemHost,
}

/// The kernel's dev_t of a device number as user space sees it
/// (`st_rdev`): MKDEV(major, minor) = major << 20 | minor.
pub fn kernel_dev(rdev: u64) -> u32 {
    let major = libc::major(rdev);
    let minor = libc::minor(rdev);
    (major << 20) | (minor & 0xf_ffff)
}

/// The swap devices in `/proc/swaps` (block devices only: a swap file's
/// I/O is its filesystem's and is not told apart), as kernel dev_t.
pub fn swap_devices(proc_swaps: &str) -> Vec<(String, u32)> {
    use std::os::unix::fs::MetadataExt;
    proc_swaps
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let path = f.next()?;
            let kind = f.next()?;
            if kind != "partition" {
                return None;
            }
            let m = std::fs::metadata(path).ok()?;
            Some((path.to_string(), kernel_dev(m.rdev())))
        })
        .collect()
}

/// Handles on the memory maps, for readers.
pub struct MemMaps {
    procs: HashMap<MapData, u32, MemStats>,
    cgroups: HashMap<MapData, u64, MemCgStats>,
    host: PerCpuArray<MapData, MemHost>,
    swap_devs: HashMap<MapData, u32, u32>,
    known_devs: Vec<u32>,
}

impl MemMaps {
    pub fn take(ebpf: &mut Ebpf) -> Result<MemMaps, LoadError> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| LoadError::Missing(format!("map {name}")))
        };
        let e = |e: aya::maps::MapError| LoadError::Load(e.to_string());
        Ok(MemMaps {
            procs: HashMap::try_from(take("MEM_PROCS")?).map_err(e)?,
            cgroups: HashMap::try_from(take("MEM_CGROUPS")?).map_err(e)?,
            host: PerCpuArray::try_from(take("MEM_HOST")?).map_err(e)?,
            swap_devs: HashMap::try_from(take("MEM_SWAP_DEVS")?).map_err(e)?,
            known_devs: Vec::new(),
        })
    }

    /// Watch the swap devices now in /proc/swaps (called every interval:
    /// a swapon after diag started is seen from then on).
    pub fn refresh_swap_devs(&mut self) {
        let text = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
        let now: Vec<u32> = swap_devices(&text).into_iter().map(|(_, d)| d).collect();
        for d in &now {
            if !self.known_devs.contains(d)
                && let Err(e) = self.swap_devs.insert(d, 1, 0)
            {
                tracing::warn!("cannot watch swap device {d:#x}: {e}");
            }
        }
        for d in &self.known_devs {
            if !now.contains(d) {
                let _ = self.swap_devs.remove(d);
            }
        }
        self.known_devs = now;
    }

    pub fn read(&self) -> MemReading {
        let host = self
            .host
            .get(&0, 0)
            .map(|per_cpu| {
                let mut h = MemHost::default();
                for v in per_cpu.iter() {
                    h.background.add(&v.background);
                }
                h
            })
            .unwrap_or_default();
        MemReading {
            procs: self.procs.iter().filter_map(Result::ok).collect(),
            cgroups: self.cgroups.iter().filter_map(Result::ok).collect(),
            host,
        }
    }

    /// Forget processes that are gone (after their last reading).
    pub fn forget(&mut self, tgids: &[u32]) {
        for t in tgids {
            let _ = self.procs.remove(t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_numbers() {
        // 252:0 as glibc encodes it.
        let rdev = libc::makedev(252, 0);
        assert_eq!(kernel_dev(rdev), 252 << 20);
        assert_eq!(kernel_dev(libc::makedev(8, 17)), (8 << 20) | 17);
    }

    #[test]
    fn swaps_skip_files_and_header() {
        let text = "Filename\tType\tSize\tUsed\tPriority\n/swapfile file 100 0 -2\n";
        assert!(swap_devices(text).is_empty());
    }

    #[test]
    fn running_kernel_btf() {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            return;
        }
        let c = layout(path, 1, true).unwrap();
        assert_eq!(c.valid, 1);
        assert!(c.bio_size > c.bio_opf || c.bio_size > 0);
        assert_eq!((c.lru_inactive_anon, c.lru_inactive_file), (0, 2));
    }
}
