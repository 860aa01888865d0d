//! Memory stall families: per cgroup (the process's cgroup label, bounded
//! like the scheduler's), time in direct reclaim, memory cgroup reclaim,
//! compaction and throttling, episodes, pages scanned and reclaimed,
//! swap-ins and swap-outs, the episode latency histogram; per memory
//! cgroup (the cgroup whose limit forced the reclaim; bounded, the most
//! recently active); and what kernel threads (kswapd, kcompactd) did.

use std::collections::BTreeMap;

use prometheus_client::registry::Registry;

use super::families::{Families, Labels, counters, counters_f64, histograms};
use crate::aggregate::{
    histogram::Log2Hist,
    memory::{MemFigures, MemInterval, MemProcInterval},
};

/// A memory cgroup not active for this long leaves the exposition.
pub const MEMCG_KEEP_NS: u64 = 600_000_000_000;
/// At most this many memory cgroups are exported (the most recently active).
pub const MAX_MEMCGS: usize = 200;

/// One cgroup's memory totals since diag started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupMemory {
    pub f: MemFigures,
    pub majflt: u64,
    pub hist: Log2Hist,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryMetrics {
    pub by_cgroup: BTreeMap<String, CgroupMemory>,
    /// Memory cgroups: figures since diag started and when last active.
    pub memcgs: BTreeMap<String, (u64, MemFigures)>,
    pub background: MemFigures,
    /// No memory probes: no families at all.
    pub off: bool,
}

impl MemoryMetrics {
    /// Add one process's interval to its cgroup (a label value, already
    /// bounded).
    pub fn eat(&mut self, cgroup: String, p: &MemProcInterval) {
        let c = self.by_cgroup.entry(cgroup).or_default();
        c.f.add(&p.f);
        c.majflt += p.majflt;
        c.hist.merge(&p.hist);
    }

    /// The host-level and memory cgroup parts of a frame.
    pub fn eat_frame(&mut self, m: &MemInterval) {
        self.background.add(&m.background);
        for c in &m.cgroups {
            let name = if c.path.is_empty() {
                format!("ino {}", c.ino)
            } else {
                c.path.clone()
            };
            let e = self.memcgs.entry(name).or_default();
            e.0 = m.end_ns;
            e.1.add(&c.f);
        }
        self.memcgs
            .retain(|_, (t, _)| m.end_ns.saturating_sub(*t) <= MEMCG_KEEP_NS);
        if self.memcgs.len() > MAX_MEMCGS {
            let mut by_age: Vec<(u64, String)> = self
                .memcgs
                .iter()
                .map(|(k, (t, _))| (*t, k.clone()))
                .collect();
            by_age.sort();
            for (_, k) in by_age.iter().take(self.memcgs.len() - MAX_MEMCGS) {
                self.memcgs.remove(k);
            }
        }
    }
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// (count, ns) of one kind of episode.
type KindOf = fn(&MemFigures) -> (u64, u64);

const KINDS: [(&str, KindOf); 3] = [
    ("direct", |f| (f.direct_count, f.direct_ns)),
    ("memcg", |f| (f.memcg_count, f.memcg_ns)),
    ("compaction", |f| (f.compact_count, f.compact_ns)),
];

impl Families for MemoryMetrics {
    fn register(&self, reg: &mut Registry) {
        if self.off {
            return;
        }
        let label = |cg: &String| -> Labels { vec![("cgroup", cg.clone())] };
        histograms(
            reg,
            "diag_memory_stall_latency_seconds",
            "Duration of each reclaim or compaction episode a task stalled in, by cgroup; buckets are powers of two",
            self.by_cgroup
                .iter()
                .map(|(cg, c)| (label(cg), &c.hist, c.f.stall_ns))
                .collect(),
        );
        let mut secs_by_kind = Vec::new();
        let mut eps_by_kind = Vec::new();
        for (cg, c) in &self.by_cgroup {
            for (k, get) in KINDS {
                let (n, ns) = get(&c.f);
                secs_by_kind.push((
                    vec![("cgroup", cg.clone()), ("kind", k.to_string())],
                    secs(ns),
                ));
                eps_by_kind.push((vec![("cgroup", cg.clone()), ("kind", k.to_string())], n));
            }
            secs_by_kind.push((
                vec![("cgroup", cg.clone()), ("kind", "throttled".to_string())],
                secs(c.f.throttle_ns),
            ));
        }
        counters_f64(
            reg,
            "diag_memory_stall_seconds",
            "Time tasks spent in direct reclaim, memory cgroup reclaim (forced by a cgroup's limit), direct compaction, and reclaim throttling (mostly inside the reclaim time), by cgroup and kind",
            &secs_by_kind,
        );
        counters(
            reg,
            "diag_memory_stall_episodes",
            "Reclaim and compaction episodes tasks stalled in, by cgroup and kind",
            &eps_by_kind,
        );
        let f = |get: &dyn Fn(&CgroupMemory) -> u64| -> Vec<(Labels, u64)> {
            self.by_cgroup
                .iter()
                .map(|(cg, c)| (label(cg), get(c)))
                .collect()
        };
        for (name, help, get) in [
            (
                "diag_memory_stalls",
                "Reclaim and compaction episodes longer than --mem-stall-threshold, by cgroup",
                (&|c: &CgroupMemory| c.f.stalls) as &dyn Fn(&CgroupMemory) -> u64,
            ),
            (
                "diag_memory_pages_scanned",
                "Pages scanned on the inactive LRU lists during tasks' reclaim (the kernel's pgscan), by cgroup",
                &|c: &CgroupMemory| c.f.scanned,
            ),
            (
                "diag_memory_pages_reclaimed",
                "Pages reclaimed during tasks' reclaim (the kernel's pgsteal), by cgroup",
                &|c: &CgroupMemory| c.f.reclaimed,
            ),
            (
                "diag_memory_swapin_pages",
                "Pages read from a swap device by tasks (swap-ins), by cgroup",
                &|c: &CgroupMemory| c.f.swapin_pages,
            ),
            (
                "diag_memory_swapout_pages",
                "Pages written to a swap device by tasks (swap-outs), by cgroup",
                &|c: &CgroupMemory| c.f.swapout_pages,
            ),
            (
                "diag_memory_major_faults",
                "Major page faults of the processes diag saw stall or swap (/proc/PID/stat), by cgroup",
                &|c: &CgroupMemory| c.majflt,
            ),
        ] {
            counters(reg, name, help, &f(get));
        }
        counters_f64(
            reg,
            "diag_memory_swapin_io_seconds",
            "Time swap-in reads took on the swap device, by cgroup",
            &self
                .by_cgroup
                .iter()
                .map(|(cg, c)| (label(cg), secs(c.f.swapin_ns)))
                .collect::<Vec<_>>(),
        );
        let mut memcg_secs = Vec::new();
        let mut memcg_eps = Vec::new();
        for (name, (_, f)) in &self.memcgs {
            memcg_secs.push((vec![("memcg", name.clone())], secs(f.stall_ns)));
            memcg_eps.push((vec![("memcg", name.clone())], f.memcg_count));
        }
        counters_f64(
            reg,
            "diag_memcg_stall_seconds",
            "Memory stall time charged to a memory cgroup: reclaim forced by its limit, and its tasks' other stalls (the most recently active memory cgroups)",
            &memcg_secs,
        );
        counters(
            reg,
            "diag_memcg_limit_reclaims",
            "Reclaim episodes forced by the memory cgroup's limit",
            &memcg_eps,
        );
        let b = &self.background;
        let none: Labels = Vec::new();
        for (name, help, v) in [
            (
                "diag_memory_kernel_pages_scanned",
                "Pages scanned by kernel threads (kswapd) and outside any task's reclaim",
                b.scanned,
            ),
            (
                "diag_memory_kernel_pages_reclaimed",
                "Pages reclaimed by kernel threads (kswapd) and outside any task's reclaim",
                b.reclaimed,
            ),
            (
                "diag_memory_kernel_swapout_pages",
                "Pages written to swap by kernel threads (kswapd)",
                b.swapout_pages,
            ),
        ] {
            counters(reg, name, help, &[(none.clone(), v)]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families() {
        let mut m = MemoryMetrics::default();
        let p = MemProcInterval {
            pid: 1,
            comm: "x".into(),
            f: MemFigures {
                memcg_count: 2,
                memcg_ns: 1_500_000_000,
                stall_ns: 1_500_000_000,
                swapin_pages: 7,
                ..MemFigures::default()
            },
            majflt: 3,
            stall_pct: 0.0,
            p99_ns: None,
            max_ns: None,
            hist: Log2Hist::default(),
        };
        m.eat("/job".into(), &p);
        m.eat("/job".into(), &p);
        let mut reg = Registry::default();
        m.register(&mut reg);
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &reg).unwrap();
        assert!(
            out.contains(r#"diag_memory_stall_seconds_total{cgroup="/job",kind="memcg"} 3.0"#),
            "{out}"
        );
        assert!(
            out.contains(r#"diag_memory_stall_episodes_total{cgroup="/job",kind="memcg"} 4"#),
            "{out}"
        );
        assert!(
            out.contains(r#"diag_memory_swapin_pages_total{cgroup="/job"} 14"#),
            "{out}"
        );
        assert!(
            out.contains(r#"diag_memory_major_faults_total{cgroup="/job"} 6"#),
            "{out}"
        );
        assert!(
            out.contains("diag_memory_kernel_pages_scanned_total 0"),
            "{out}"
        );
    }
}
