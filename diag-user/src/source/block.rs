//! The block I/O feed: the block programs' maps read once an interval,
//! with the names that go with them (devices from /sys/dev/block,
//! processes from /proc), made into a [`BlockFrame`] by the pure core.
//! Used by the runq source and the live source's pollers.

use std::collections::{HashMap, HashSet};

use aya::Ebpf;
use diag_common::block::{BlockProcKey, dev_parts};

use crate::{
    aggregate::block::{BlockAgg, BlockFrame, Names},
    clock::boot_ns,
    error::LoadError,
    host::read_comm,
    probes::block::BlockMaps,
};

/// How often serve and record read the block maps.
pub const BLOCK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The block maps and what turns their readings into frames.
pub struct BlockFeed {
    maps: BlockMaps,
    agg: BlockAgg,
    /// Entries of processes gone at the previous reading.
    gone: Vec<BlockProcKey>,
    devs: HashMap<u32, String>,
    kthreads: HashMap<u32, bool>,
}

/// The device's name (`DEVNAME=` of its uevent), if it has one.
pub fn dev_name_from_sysfs(dev: u32) -> Option<String> {
    let (maj, min) = dev_parts(dev);
    let text = std::fs::read_to_string(format!("/sys/dev/block/{maj}:{min}/uevent")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .map(|n| crate::text::printable(n.trim()).into_owned())
}

/// Whether `pid` is a kernel thread: kthreadd (2) or one of its children
/// (the 4th field of /proc/PID/stat, after the parenthesised name).
pub fn is_kthread(pid: u32) -> Option<bool> {
    if pid == 2 {
        return Some(true);
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
    Some(ppid == 2)
}

impl std::fmt::Debug for BlockFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlockFeed")
    }
}

impl BlockFeed {
    /// Take the block maps out of `ebpf` (loaded with them attached).
    pub fn new(ebpf: &mut Ebpf, start_ns: u64) -> Result<BlockFeed, LoadError> {
        Ok(BlockFeed {
            maps: BlockMaps::take(ebpf)?,
            agg: BlockAgg::new(start_ns),
            gone: Vec::new(),
            devs: HashMap::new(),
            kthreads: HashMap::new(),
        })
    }

    /// The interval since the previous read.
    pub fn read(&mut self) -> BlockFrame {
        let ts_ns = boot_ns();
        let reading = self.maps.read(ts_ns);
        // Gone at the previous reading, read once more since (a request
        // in flight at the exit has completed): forget them now.
        let gone = std::mem::take(&mut self.gone);
        self.maps.forget(&gone);
        let mut names = Names::default();
        for dev in reading.devs.keys() {
            let name = self
                .devs
                .entry(*dev)
                .or_insert_with(|| dev_name_from_sysfs(*dev).unwrap_or_default());
            names.devs.insert(*dev, name.clone());
        }
        let pids: HashSet<u32> = reading.procs.iter().map(|(k, _)| k.tgid).collect();
        let mut alive = HashSet::new();
        for &pid in &pids {
            if let Some(c) = read_comm(&format!("/proc/{pid}/comm")) {
                names.comms.insert(pid, c);
                alive.insert(pid);
            }
            let kt = match self.kthreads.get(&pid) {
                Some(k) => Some(*k),
                None => is_kthread(pid).inspect(|&k| {
                    self.kthreads.insert(pid, k);
                }),
            };
            if kt == Some(true) {
                names.kthreads.insert(pid);
            }
        }
        let frame = self.agg.frame(ts_ns, &reading, &names);
        self.agg.forget(&gone);
        self.gone = reading
            .procs
            .iter()
            .map(|(k, _)| *k)
            .filter(|k| !alive.contains(&k.tgid))
            .collect();
        self.kthreads.retain(|p, _| alive.contains(p));
        frame
    }
}
