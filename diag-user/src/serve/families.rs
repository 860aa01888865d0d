//! Small helpers for building metric families from values. Every family
//! module (tcp, oom, own, ...) turns its state into families on a fresh
//! registry at each scrape; nothing here keeps state.

use prometheus_client::{
    encoding::{EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{MetricType, TypedMetric, counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use std::sync::{Mutex, atomic::AtomicU64};

use diag_common::sched::{HIST_SLOTS, slot_high_ns};

use crate::aggregate::histogram::Log2Hist;

pub type Labels = Vec<(&'static str, String)>;

/// What a family module does: register its families, with their values,
/// on the registry being scraped.
pub trait Families {
    fn register(&self, reg: &mut Registry);
}

/// A counter family. `name` without `_total` (the encoder adds it).
pub fn counters(reg: &mut Registry, name: &str, help: &str, values: &[(Labels, u64)]) {
    let f = Family::<Labels, Counter>::default();
    for (l, v) in values {
        f.get_or_create(l).inc_by(*v);
    }
    reg.register(name, help, f);
}

/// A counter without labels.
pub fn counter(reg: &mut Registry, name: &str, help: &str, value: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(value);
    reg.register(name, help, c);
}

/// A gauge family of whole numbers.
pub fn gauges(reg: &mut Registry, name: &str, help: &str, values: &[(Labels, i64)]) {
    let f = Family::<Labels, Gauge>::default();
    for (l, v) in values {
        f.get_or_create(l).set(*v);
    }
    reg.register(name, help, f);
}

/// A gauge without labels.
pub fn gauge(reg: &mut Registry, name: &str, help: &str, value: i64) {
    let g = Gauge::<i64>::default();
    g.set(value);
    reg.register(name, help, g);
}

/// A gauge family of fractions.
pub fn gauges_f64(reg: &mut Registry, name: &str, help: &str, values: &[(Labels, f64)]) {
    let f = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    for (l, v) in values {
        f.get_or_create(l).set(*v);
    }
    reg.register(name, help, f);
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

/// `le` bounds in seconds (the log2 buckets' upper bounds) and
/// per-bucket counts; the last bucket is open-ended, so it is +Inf.
pub fn buckets_seconds(h: &Log2Hist) -> Vec<(f64, u64)> {
    h.counts
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let le = if i == HIST_SLOTS - 1 {
                f64::INFINITY
            } else {
                slot_high_ns(i) as f64 / 1e9
            };
            (le, n)
        })
        .collect()
}

/// A histogram family of nanosecond log2 histograms, with the sum of
/// what they counted (ns), as seconds.
pub fn histograms(
    reg: &mut Registry,
    name: &str,
    help: &str,
    values: Vec<(Labels, &Log2Hist, u64)>,
) {
    let f = Family::<Labels, Known>::default();
    for (l, h, sum_ns) in values {
        *f.get_or_create(&l)
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner()) =
            (sum_ns as f64 / 1e9, h.total(), buckets_seconds(h));
    }
    reg.register(name, help, f);
}

/// Saturating u64 to i64 for gauges.
pub fn g(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
