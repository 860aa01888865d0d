//! The memory feed: reads the memory programs' maps, /proc/vmstat and
//! the names that go with them (the I/O, at the edge) once an interval,
//! and makes frames of them with [`crate::aggregate::memory::MemAgg`]
//! (`record`, `serve`, `top`; `runq` reads the same maps in its own
//! source).

use std::collections::HashMap;

use crate::{
    aggregate::memory::{MemAgg, MemInterval, MemSnapshot, parse_vmstat, pid_majflt},
    clock::boot_ns,
    enrich::oom::CgroupIndex,
    host::read_comm,
    probes::memory::MemMaps,
};

/// How often `record`, `serve` and `top` read the memory maps.
pub const MEMORY_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// At most this many processes go into one frame (the ones stalled
/// longest); the rest are counted in `omitted`.
pub const MAX_ROWS: usize = 1000;

pub struct MemoryFeed {
    maps: MemMaps,
    agg: MemAgg,
    index: CgroupIndex,
    start_ns: u64,
    vmstat_start: Option<crate::aggregate::memory::Vmstat>,
    gone: Vec<u32>,
    comms: HashMap<u32, String>,
    /// Clock ticks per second (USER_HZ), for /proc/PID/stat's start time.
    hz: u64,
}

/// Clock ticks per second of /proc's times.
pub fn user_hz() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as u64 } else { 100 }
}

impl std::fmt::Debug for MemoryFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryFeed")
    }
}

fn exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

impl MemoryFeed {
    /// Right after the probes were attached.
    pub fn new(mut maps: MemMaps) -> Self {
        maps.refresh_swap_devs();
        MemoryFeed {
            maps,
            agg: MemAgg::new(),
            index: CgroupIndex::new(),
            start_ns: boot_ns(),
            vmstat_start: std::fs::read_to_string("/proc/vmstat")
                .ok()
                .map(|t| parse_vmstat(&t)),
            gone: Vec::new(),
            comms: HashMap::new(),
            hz: user_hz(),
        }
    }

    /// One interval, from the previous reading (or the start) to now.
    pub fn read(&mut self) -> MemInterval {
        self.maps.refresh_swap_devs();
        let r = self.maps.read();
        let ts_ns = boot_ns();
        // Gone at the previous reading: read once more since (above), so
        // forgotten now in the kernel, and in the aggregate after this
        // update (before it, their counters would count again from zero).
        self.maps.forget(&self.gone);
        let gone = std::mem::replace(
            &mut self.gone,
            r.procs.keys().copied().filter(|&p| !exists(p)).collect(),
        );
        let mut majflt = HashMap::new();
        let mut new_pids = std::collections::HashSet::new();
        for &pid in r.procs.keys() {
            if let std::collections::hash_map::Entry::Vacant(e) = self.comms.entry(pid)
                && let Some(name) = read_comm(&format!("/proc/{pid}/comm"))
            {
                e.insert(name);
            }
            if let Some(n) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|t| pid_majflt(&t))
            {
                majflt.insert(pid, n.0);
                if crate::aggregate::memory::started_after(n.1, self.hz, self.start_ns) {
                    new_pids.insert(pid);
                }
            }
        }
        let paths = r
            .cgroups
            .keys()
            .filter_map(|&ino| self.index.path(ino).map(|p| (ino, p)))
            .collect();
        let snap = MemSnapshot {
            procs: r.procs,
            cgroups: r.cgroups,
            host: r.host,
            vmstat: std::fs::read_to_string("/proc/vmstat")
                .ok()
                .map(|t| parse_vmstat(&t)),
            paths,
            majflt,
            new_pids,
            vmstat_start: self.vmstat_start.take(),
        };
        let mut iv = self.agg.update(ts_ns, self.start_ns, &snap, &self.comms);
        self.agg.forget(&gone);
        for p in &gone {
            self.comms.remove(p);
        }
        if iv.processes.len() > MAX_ROWS {
            iv.omitted = (iv.processes.len() - MAX_ROWS) as u64;
            iv.processes.truncate(MAX_ROWS);
        }
        iv
    }
}
