//! Scheduler families, per cgroup (bounded like the TCP ones): run-queue
//! latency as a Prometheus histogram (from the kernel's log2 histograms),
//! run-queue wait, blocked, CPU and stall counters.

use std::collections::BTreeMap;

use prometheus_client::registry::Registry;

use super::families::{Families, Labels, counters, counters_f64, histograms};
use crate::aggregate::{histogram::Log2Hist, sched::ProcInterval};

/// One cgroup's scheduler totals since diag started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupSched {
    /// Waits per bucket of the kernel's histogram (see
    /// `diag_common::sched::hist_slot`).
    pub hist: Log2Hist,
    pub wait_ns: u64,
    pub blocked_ns: u64,
    pub cpu_ns: u64,
    pub stalls: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchedMetrics {
    pub by_cgroup: BTreeMap<String, CgroupSched>,
    /// The scheduler probes are off (--no-sched): no families at all, not
    /// host-level zeros that would claim nothing waited.
    pub off: bool,
}

impl SchedMetrics {
    /// Add one process's interval to its cgroup (a label value, already
    /// bounded).
    pub fn eat(&mut self, cgroup: String, p: &ProcInterval) {
        let c = self.by_cgroup.entry(cgroup).or_default();
        c.hist.merge(&p.hist);
        c.wait_ns += p.runq_ns;
        c.blocked_ns += p.blocked_ns;
        c.cpu_ns += p.cpu_ns;
        c.stalls += p.stalls;
    }
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

impl Families for SchedMetrics {
    fn register(&self, reg: &mut Registry) {
        if self.off {
            return;
        }
        let label = |cg: &String| -> Labels { vec![("cgroup", cg.clone())] };
        histograms(
            reg,
            "diag_runq_latency_seconds",
            "Time runnable tasks waited for a CPU (run-queue latency), per wait, by cgroup; buckets are powers of two",
            self.by_cgroup
                .iter()
                .map(|(cg, c)| (label(cg), &c.hist, c.wait_ns))
                .collect(),
        );
        let f = |get: &dyn Fn(&CgroupSched) -> u64| -> Vec<(Labels, u64)> {
            self.by_cgroup
                .iter()
                .map(|(cg, c)| (label(cg), get(c)))
                .collect()
        };
        counters(
            reg,
            "diag_stalls",
            "Run-queue waits longer than --stall-threshold, by cgroup",
            &f(&|c| c.stalls),
        );
        // Seconds as float counters.
        for (name, help, get) in [
            (
                "diag_runq_wait_seconds",
                "Time spent runnable but waiting for a CPU, by cgroup",
                (|c: &CgroupSched| c.wait_ns) as fn(&CgroupSched) -> u64,
            ),
            (
                "diag_blocked_seconds",
                "Time in uninterruptible sleep (D state, usually I/O), by cgroup",
                |c| c.blocked_ns,
            ),
            (
                "diag_cpu_seconds",
                "CPU time, by cgroup (from the scheduler's switches)",
                |c| c.cpu_ns,
            ),
        ] {
            let values: Vec<(Labels, f64)> = self
                .by_cgroup
                .iter()
                .map(|(cg, c)| (label(cg), secs(get(c))))
                .collect();
            counters_f64(reg, name, help, &values);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interval(counts: &[(usize, u64)]) -> ProcInterval {
        let mut hist = Log2Hist::default();
        for &(i, n) in counts {
            hist.counts[i] = n;
        }
        ProcInterval {
            pid: 1,
            comm: "x".into(),
            runq_ns: 3_000_000,
            runq_count: counts.iter().map(|c| c.1).sum(),
            p50_ns: None,
            p99_ns: None,
            max_ns: None,
            wait_pct: 0.0,
            cpu_ns: 2_000_000_000,
            cpu_pct: 0.0,
            blocked_ns: 500_000_000,
            sleep_ns: 0,
            caused_ns: 0,
            caused_count: 0,
            stalls: 2,
            hist,
        }
    }

    #[test]
    fn no_families_while_the_probes_are_off() {
        let m = SchedMetrics {
            off: true,
            ..Default::default()
        };
        let mut reg = Registry::default();
        m.register(&mut reg);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        assert!(!text.contains("diag_"), "{text}");
        // On, with nothing seen yet: the host-level series are there at 0.
        let mut reg = Registry::default();
        SchedMetrics::default().register(&mut reg);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        let text = super::super::families::HostTotals::default().apply(&text);
        assert!(text.contains("diag_host_stalls_total 0"), "{text}");
        assert!(text.contains("diag_host_cpu_seconds_total 0"), "{text}");
    }

    #[test]
    fn histogram_and_counters_are_exposed() {
        let mut m = SchedMetrics::default();
        m.eat("/svc".into(), &interval(&[(10, 3), (20, 1)]));
        m.eat("/svc".into(), &interval(&[(10, 1)]));
        let c = &m.by_cgroup["/svc"];
        assert_eq!(
            (
                c.hist.total(),
                c.hist.counts[10],
                c.hist.counts[20],
                c.stalls
            ),
            (5, 4, 1, 4)
        );
        let mut reg = Registry::default();
        m.register(&mut reg);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        assert!(
            text.contains("# TYPE diag_runq_latency_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("diag_runq_latency_seconds_count{cgroup=\"/svc\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("diag_runq_latency_seconds_bucket{le=\"+Inf\",cgroup=\"/svc\"} 5"),
            "{text}"
        );
        // Bucket 10 holds waits of [512, 1024) us: all 4 are at or below
        // le=1.024 ms, still 4 at 0.524288 s, and the wait of bucket 20,
        // [0.52, 1.05) s, makes 5 at le=1.048576 s.
        for (le, n) in [("0.001024", 4), ("0.524288", 4), ("1.048576", 5)] {
            let want =
                format!("diag_runq_latency_seconds_bucket{{le=\"{le}\",cgroup=\"/svc\"}} {n}");
            assert!(text.contains(&want), "{want}: {text}");
        }
        assert!(
            text.contains("diag_blocked_seconds_total{cgroup=\"/svc\"} 1.0"),
            "{text}"
        );
        assert!(
            text.contains("diag_stalls_total{cgroup=\"/svc\"} 4"),
            "{text}"
        );
    }
}
