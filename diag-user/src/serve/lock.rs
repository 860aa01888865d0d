//! Lock families, per cgroup (bounded like the TCP ones): futex waits and
//! their time, long waits, and kernel lock contention (`serve --locks`).

use std::collections::BTreeMap;

use prometheus_client::registry::Registry;

use super::families::{Families, Labels, counters, counters_f64, histograms};
use crate::aggregate::{histogram::Log2Hist, lock::ProcLocks};

/// One cgroup's lock totals since diag started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupLocks {
    /// Waits per bucket of the kernel's log2 histogram.
    pub hist: Log2Hist,
    pub waits: u64,
    pub wait_ns: u64,
    pub long_waits: u64,
    pub kernel_waits: u64,
    pub kernel_wait_ns: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockMetrics {
    pub by_cgroup: BTreeMap<String, CgroupLocks>,
    /// The lock probes are attached (`serve --locks`): without them, no
    /// families at all (not zeros that would claim nothing waited).
    pub on: bool,
}

impl LockMetrics {
    /// Add one process's interval to its cgroup (a bounded label value).
    pub fn eat(&mut self, cgroup: String, p: &ProcLocks) {
        let c = self.by_cgroup.entry(cgroup).or_default();
        c.waits += p.waits;
        c.wait_ns += p.wait_ns;
        c.long_waits += p.long_waits;
        c.kernel_waits += p.kernel_waits;
        c.kernel_wait_ns += p.kernel_wait_ns;
        c.hist.merge(&p.log2());
    }
}

impl Families for LockMetrics {
    fn register(&self, reg: &mut Registry) {
        if !self.on {
            return;
        }
        let label = |cg: &String| -> Labels { vec![("cgroup", cg.clone())] };
        let f = |get: &dyn Fn(&CgroupLocks) -> u64| -> Vec<(Labels, u64)> {
            self.by_cgroup
                .iter()
                .map(|(cg, c)| (label(cg), get(c)))
                .collect()
        };
        histograms(
            reg,
            "diag_lock_wait_duration_seconds",
            "Futex wait times, per wait, by cgroup; buckets are powers of two",
            self.by_cgroup
                .iter()
                .map(|(cg, c)| (label(cg), &c.hist, c.wait_ns))
                .collect(),
        );
        counters(
            reg,
            "diag_lock_waits",
            "Futex waits that ended (a thread blocked on a lock, condition variable or other futex; timed-out waits excluded), by cgroup",
            &f(&|c| c.waits),
        );
        counters(
            reg,
            "diag_lock_long_waits",
            "Futex waits at least --lock-threshold long, by cgroup",
            &f(&|c| c.long_waits),
        );
        counters(
            reg,
            "diag_kernel_lock_contentions",
            "Kernel lock contentions (lock:contention_begin/end), by cgroup",
            &f(&|c| c.kernel_waits),
        );
        for (name, help, get) in [
            (
                "diag_lock_wait_seconds",
                "Time threads spent blocked in futex waits, summed over threads, by cgroup",
                (|c: &CgroupLocks| c.wait_ns) as fn(&CgroupLocks) -> u64,
            ),
            (
                "diag_kernel_lock_wait_seconds",
                "Time threads spent in kernel lock contention, by cgroup",
                |c| c.kernel_wait_ns,
            ),
        ] {
            let values: Vec<(Labels, f64)> = self
                .by_cgroup
                .iter()
                .map(|(cg, c)| (label(cg), get(c) as f64 / 1e9))
                .collect();
            counters_f64(reg, name, help, &values);
        }
    }
}
