//! The lock feed: the kernel's lock maps read every interval into lock
//! frames (record, serve, top).

use crate::{
    aggregate::lock::{LockAgg, LockFrame},
    probes::lock::LockMaps,
};

/// How often the lock maps are read for recordings and serve.
pub const LOCK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

pub struct LockFeed {
    maps: LockMaps,
    agg: LockAgg,
    last_ns: u64,
    gone_last_time: Vec<u32>,
}

impl std::fmt::Debug for LockFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LockFeed")
    }
}

impl LockFeed {
    pub fn new(maps: LockMaps) -> LockFeed {
        LockFeed {
            maps,
            agg: LockAgg::default(),
            last_ns: crate::clock::boot_ns(),
            gone_last_time: Vec::new(),
        }
    }

    /// What the interval since the last read added.
    pub fn read(&mut self) -> LockFrame {
        let now = crate::clock::boot_ns();
        let r = self.maps.read();
        let iv = self.agg.update(&r.procs, &r.stats);
        // Gone last time and read once more since: forget them.
        self.maps.forget(&self.gone_last_time);
        self.agg.forget(&self.gone_last_time);
        self.gone_last_time = r
            .procs
            .iter()
            .map(|(p, _)| *p)
            .filter(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
            .collect();
        let f = LockFrame::of(now, now.saturating_sub(self.last_ns), iv);
        self.last_ns = now;
        f
    }
}
