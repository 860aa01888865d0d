//! Small helpers for building metric families from values. Every family
//! module (tcp, oom, own, ...) turns its state into families on a fresh
//! registry at each scrape; nothing here keeps state.

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use std::sync::atomic::AtomicU64;

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

/// Saturating u64 to i64 for gauges.
pub fn g(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
