//! Scheduler families, per cgroup (bounded like the TCP ones): run-queue
//! latency as a Prometheus histogram (from the kernel's log2 histograms),
//! run-queue wait, blocked, CPU and stall counters.

use std::{collections::BTreeMap, sync::Mutex};

use prometheus_client::{
    encoding::{EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{MetricType, TypedMetric, family::Family},
    registry::Registry,
};

use super::families::{Families, Labels, counters};
use crate::aggregate::sched::ProcInterval;

/// One cgroup's scheduler totals since diag started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupSched {
    /// Waits per log2 bucket: bucket i holds waits in [2^i, 2^(i+1)) ns.
    pub buckets: Vec<u64>,
    pub waits: u64,
    pub wait_ns: u64,
    pub blocked_ns: u64,
    pub cpu_ns: u64,
    pub stalls: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchedMetrics {
    pub by_cgroup: BTreeMap<String, CgroupSched>,
}

impl SchedMetrics {
    /// Add one process's interval to its cgroup (a label value, already
    /// bounded).
    pub fn eat(&mut self, cgroup: String, p: &ProcInterval) {
        let c = self.by_cgroup.entry(cgroup).or_default();
        for (i, &n) in p.hist.counts.iter().enumerate() {
            if n > 0 {
                if c.buckets.len() <= i {
                    c.buckets.resize(i + 1, 0);
                }
                c.buckets[i] += n;
                c.waits += n;
            }
        }
        c.wait_ns += p.runq_ns;
        c.blocked_ns += p.blocked_ns;
        c.cpu_ns += p.cpu_ns;
        c.stalls += p.stalls;
    }
}

/// Sum, count and per-bucket counts by upper bound.
type HistValues = (f64, u64, Vec<(f64, u64)>);

/// A histogram whose bucket counts are already known.
#[derive(Debug, Default)]
struct Known(Mutex<HistValues>);

impl TypedMetric for Known {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Known {
    fn encode(&self, mut e: MetricEncoder) -> Result<(), std::fmt::Error> {
        let g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        e.encode_histogram::<NoLabelSet>(g.0, g.1, &g.2, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// `le` bounds in seconds and per-bucket counts, ending with +Inf.
pub fn buckets_seconds(buckets: &[u64]) -> Vec<(f64, u64)> {
    let mut v: Vec<(f64, u64)> = buckets
        .iter()
        .enumerate()
        .map(|(i, &n)| ((1u64 << (i + 1).min(63)) as f64 / 1e9, n))
        .collect();
    v.push((f64::INFINITY, 0));
    v
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

impl Families for SchedMetrics {
    fn register(&self, reg: &mut Registry) {
        let label = |cg: &String| -> Labels { vec![("cgroup", cg.clone())] };
        let hist = Family::<Labels, Known>::default();
        for (cg, c) in &self.by_cgroup {
            let h = hist.get_or_create(&label(cg));
            *h.0.lock().unwrap_or_else(|p| p.into_inner()) =
                (secs(c.wait_ns), c.waits, buckets_seconds(&c.buckets));
        }
        reg.register(
            "diag_runq_latency_seconds",
            "Time runnable tasks waited for a CPU (run-queue latency), per wait, by cgroup; buckets are powers of two",
            hist,
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
            let fam = Family::<
                Labels,
                prometheus_client::metrics::counter::Counter<f64, std::sync::atomic::AtomicU64>,
            >::default();
            for (cg, c) in &self.by_cgroup {
                fam.get_or_create(&label(cg)).inc_by(secs(get(c)));
            }
            reg.register(name, help, fam);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::histogram::Log2Hist;

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
    fn histogram_and_counters_are_exposed() {
        let mut m = SchedMetrics::default();
        m.eat("/svc".into(), &interval(&[(10, 3), (20, 1)]));
        m.eat("/svc".into(), &interval(&[(10, 1)]));
        let c = &m.by_cgroup["/svc"];
        assert_eq!(
            (c.waits, c.buckets[10], c.buckets[20], c.stalls),
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
        // 2^11 ns = 2.048 us: the 4 waits of bucket 10 are at or below it.
        assert!(
            text.contains("diag_runq_latency_seconds_bucket{le=\"0.000002048\",cgroup=\"/svc\"} 4"),
            "{text}"
        );
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
