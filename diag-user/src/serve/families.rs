//! Small helpers for building metric families from values. Every family
//! module (tcp, oom, own, ...) turns its state into families on a fresh
//! registry at each scrape; nothing here keeps state but [`Births`].
//!
//! No lost first increment, for every counter built here:
//! - [`counters`] and [`counters_f64`] add, to every family counted per
//!   process, cgroup, port or address ([`ENTITY_LABELS`]), a host-level
//!   family `diag_host_...` summed over those labels; [`HostTotals`] adds
//!   what series that left the exposition had counted, so it never goes
//!   down. It exists from the first scrape at 0 (per value of its
//!   [`HOST_DIMENSIONS`]), so `increase()` on it sees every increment, the
//!   first one included.
//! - [`Births`] makes every counter series (histograms too) that appears
//!   later show 0 to each scraper once before its real value, so a series
//!   that is born counting (a cgroup's first OOM kill) is still seen to
//!   go up.

use prometheus_client::{
    encoding::{EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{MetricType, TypedMetric, counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Mutex, atomic::AtomicU64},
};

use diag_common::sched::{HIST_SLOTS, slot_high_ns};

use crate::aggregate::histogram::Log2Hist;

pub type Labels = Vec<(&'static str, String)>;

/// What a family module does: register its families, with their values,
/// on the registry being scraped.
pub trait Families {
    fn register(&self, reg: &mut Registry);
}

/// Labels that say who counted: a host-level family sums them away.
pub const ENTITY_LABELS: &[&str] = &[
    "pid", "comm", "cgroup", "port", "address", "local", "remote",
];

/// The other labels of per-entity counter families, with every value they
/// take: their host-level series exist at 0 for each from the first
/// scrape. A family not listed gets its host-level series by the
/// non-entity labels its values carry (one unlabelled series while it has
/// none); list a new family's labels here when they are known up front.
pub const HOST_DIMENSIONS: &[(&str, &str, &[&str])] = &[
    (
        "diag_oom_kills",
        "constraint",
        &["memcg", "global", "other"],
    ),
    ("diag_tcp_opens", "direction", &["active", "passive"]),
    ("diag_tcp_resets", "direction", &["sent", "received"]),
    (
        "diag_tcp_connect_failures",
        "error",
        &[
            "ECONNREFUSED",
            "ETIMEDOUT",
            "EHOSTUNREACH",
            "ENETUNREACH",
            "closed",
        ],
    ),
];

/// The host-level family's name: `diag_tcp_opens` -> `diag_host_tcp_opens`.
pub fn host_name(name: &str) -> String {
    match name.strip_prefix("diag_") {
        Some(rest) => format!("diag_host_{rest}"),
        None => format!("host_{name}"),
    }
}

/// The host-level series of a counter family (the sums of its series
/// now; [`HostTotals`] adds what series that left had counted), or None
/// when it needs none (its values carry no entity label: it is
/// host-level already).
fn host_series<V: Copy + Default + std::ops::AddAssign>(
    name: &str,
    values: &[(Labels, V)],
) -> Option<Vec<(Labels, V)>> {
    let entity = |k: &str| ENTITY_LABELS.contains(&k);
    if !values.is_empty() && !values.iter().any(|(l, _)| l.iter().any(|(k, _)| entity(k))) {
        return None;
    }
    let mut sums: BTreeMap<Vec<(&'static str, String)>, V> = BTreeMap::new();
    if let Some((_, label, all)) = HOST_DIMENSIONS.iter().find(|d| d.0 == name) {
        for v in *all {
            sums.insert(vec![(*label, v.to_string())], V::default());
        }
    }
    for (l, v) in values {
        let key: Labels = l.iter().filter(|(k, _)| !entity(k)).cloned().collect();
        *sums.entry(key).or_default() += *v;
    }
    if sums.is_empty() {
        sums.insert(Vec::new(), V::default());
    }
    Some(sums.into_iter().collect())
}

const HOST_HELP: &str = "; the whole host: every series summed, with what series that left had counted (from the first scrape)";

/// A counter family, and its host-level family when it is counted per
/// entity. `name` without `_total` (the encoder adds it).
pub fn counters(reg: &mut Registry, name: &str, help: &str, values: &[(Labels, u64)]) {
    let make = |values: &[(Labels, u64)]| {
        let f = Family::<Labels, Counter>::default();
        for (l, v) in values {
            f.get_or_create(l).inc_by(*v);
        }
        f
    };
    reg.register(name, help, make(values));
    if let Some(host) = host_series(name, values) {
        reg.register(host_name(name), format!("{help}{HOST_HELP}"), make(&host));
    }
}

/// A counter family of fractions (seconds), with its host-level family.
pub fn counters_f64(reg: &mut Registry, name: &str, help: &str, values: &[(Labels, f64)]) {
    let make = |values: &[(Labels, f64)]| {
        let f = Family::<Labels, Counter<f64, AtomicU64>>::default();
        for (l, v) in values {
            f.get_or_create(l).inc_by(*v);
        }
        f
    };
    reg.register(name, help, make(values));
    if let Some(host) = host_series(name, values) {
        reg.register(host_name(name), format!("{help}{HOST_HELP}"), make(&host));
    }
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

/// A sample: name, labels (key, escaped value), value.
type Sample<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);

/// One sample line of the text format: name, labels (raw `k="v"`
/// pairs, values still escaped), value. None for anything else.
fn sample(line: &str) -> Option<Sample<'_>> {
    if line.starts_with('#') || line.is_empty() {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let Some((name, mut rest)) = series.split_once('{') else {
        return Some((series, Vec::new(), value));
    };
    let mut labels = Vec::new();
    loop {
        rest = rest.trim_start_matches(',');
        if rest.starts_with('}') || rest.is_empty() {
            break;
        }
        let (key, after) = rest.split_once("=\"")?;
        // The value ends at the first quote not escaped.
        let bytes = after.as_bytes();
        let mut i = 0;
        while i < bytes.len() && bytes[i] != b'"' {
            i += if bytes[i] == b'\\' { 2 } else { 1 };
        }
        if i >= bytes.len() {
            return None;
        }
        labels.push((key, &after[..i]));
        rest = &after[i + 1..];
    }
    Some((name, labels, value))
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 9e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// What series that left the exposition had counted, added to the
/// host-level families [`counters`] makes: an exited or displaced
/// process's series goes, and with it its count; a series that went down
/// is a new life behind the same labels. So a host-level series never goes
/// down. Bounded: the series of the last exposition, and one number per
/// host-level series.
#[derive(Debug, Clone, Default)]
pub struct HostTotals {
    /// Per-entity series of the last exposition: their host-level series
    /// and value.
    last: HashMap<String, (String, f64)>,
    /// What series that left had counted, per host-level series.
    retired: BTreeMap<String, f64>,
}

impl HostTotals {
    /// `text` (the text format) with the host-level series made whole.
    pub fn apply(&mut self, text: &str) -> String {
        let entity = |k: &str| ENTITY_LABELS.contains(&k);
        // The per-entity counter series now, by their host-level series.
        let mut now: HashMap<String, (String, f64)> = HashMap::with_capacity(self.last.len());
        let mut family: Option<&str> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                family = rest
                    .strip_suffix(" counter")
                    .filter(|n| !n.starts_with("diag_host_"))
                    .map(|n| n.strip_suffix("_total").unwrap_or(n));
                continue;
            }
            let (Some(fam), Some((_, labels, value))) = (family, sample(line)) else {
                continue;
            };
            if !labels.iter().any(|(k, _)| entity(k)) {
                continue;
            }
            let kept: Vec<String> = labels
                .iter()
                .filter(|(k, _)| !entity(k))
                .map(|(k, v)| format!("{k}=\"{v}\""))
                .collect();
            let host = host_name(fam);
            let key = if kept.is_empty() {
                format!("{host}_total")
            } else {
                format!("{host}_total{{{}}}", kept.join(","))
            };
            let series = line.rsplit_once(' ').map_or(line, |x| x.0).to_string();
            now.insert(series, (key, value.parse().unwrap_or(0.0)));
        }
        for (series, (key, before)) in &self.last {
            match now.get(series) {
                Some((_, v)) if v >= before => {}
                // Gone, or down (a new life): what it had counted stays.
                _ => *self.retired.entry(key.clone()).or_default() += before,
            }
        }
        self.last = now;

        // The host-level lines with the retired counts; a host-level series
        // that has only retired counts left is added to its family.
        let mut out = String::with_capacity(text.len() + 256);
        let mut shown: Vec<&str> = Vec::new();
        let mut host_family: Option<String> = None;
        let flush = |out: &mut String, fam: &Option<String>, shown: &[&str]| {
            let Some(f) = fam else { return };
            let prefix = format!("{f}_total");
            for (k, r) in &self.retired {
                if key_host(k) == f && k.starts_with(&prefix) && !shown.contains(&k.as_str()) {
                    out.push_str(&format!("{k} {}\n", number(*r)));
                }
            }
        };
        for line in text.lines() {
            if line.starts_with("# HELP ") || line.starts_with("# EOF") {
                flush(&mut out, &host_family, &shown);
                host_family = None;
                shown.clear();
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                host_family = rest
                    .strip_suffix(" counter")
                    .filter(|n| n.starts_with("diag_host_"))
                    .map(|n| n.strip_suffix("_total").unwrap_or(n).to_string());
            }
            if host_family.is_some()
                && let Some((series, value)) = line.rsplit_once(' ')
                && !line.starts_with('#')
                && let Some(r) = self.retired.get(series)
            {
                let v: f64 = value.parse().unwrap_or(0.0);
                out.push_str(&format!("{series} {}\n", number(v + r)));
                shown.push(series);
                continue;
            }
            out.push_str(line);
            out.push('\n');
        }
        flush(&mut out, &host_family, &shown);
        out
    }
}

/// The host-level family of a host-level series key.
fn key_host(key: &str) -> &str {
    let series = key.split('{').next().unwrap_or(key);
    series.strip_suffix("_total").unwrap_or(series)
}

/// How long a new counter series is shown at 0 to scrapers that have not
/// seen it yet, and how long a scraper counts as one after its last
/// scrape.
pub const BIRTH_WINDOW_NS: u64 = 300_000_000_000;
/// Most scrapers told apart (more: the least recent is forgotten).
pub const MAX_SCRAPERS: usize = 16;
/// Most series remembered after they left the exposition.
pub const MAX_GONE: usize = 20_000;

/// Counter families that are the kernel's own totals (since boot, or
/// since a cgroup was made), not counts from diag's start: served as they
/// are, never at 0 first (Prometheus takes a counter's first sample as
/// its start, as for node_exporter's).
pub const KERNEL_TOTALS: &[&str] = &[
    "diag_pressure_stall_seconds_total",
    "diag_cgroup_pressure_stall_seconds_total",
];

/// `series` (a sample's name and labels) is of a [`KERNEL_TOTALS`] family.
fn kernel_total(series: &str) -> bool {
    KERNEL_TOTALS.iter().any(|f| {
        series
            .strip_prefix(f)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('{'))
    })
}

#[derive(Debug, Clone)]
struct Born {
    first_ns: u64,
    last_ns: u64,
    /// Scrapers (indexes into [`Births::scrapers`]' ids) served it at 0.
    shown: u16,
}

/// Counter series born at 0: each scraper (an address and user agent: a
/// Prometheus server) that has not seen a counter series yet gets 0 for
/// it once, then its value. So Prometheus stores a 0 before the series'
/// first value, and `increase()` counts that first value. Only for
/// [`BIRTH_WINDOW_NS`] after the series appeared (a scraper that comes
/// later sees the value at once, as a new scraper sees everything).
/// Bounded: series that left the exposition are forgotten after the
/// window or beyond [`MAX_GONE`], scrapers beyond [`MAX_SCRAPERS`].
#[derive(Debug, Clone, Default)]
pub struct Births {
    series: HashMap<String, Born>,
    /// Scraper ids by slot, with their last scrape time.
    scrapers: Vec<(String, u64)>,
}

impl Births {
    /// The slot of `scraper`, taking the least recent one's when full (its
    /// bit is cleared everywhere).
    fn slot(&mut self, scraper: &str, now_ns: u64) -> usize {
        if let Some(i) = self.scrapers.iter().position(|s| s.0 == scraper) {
            self.scrapers[i].1 = now_ns;
            return i;
        }
        if self.scrapers.len() < MAX_SCRAPERS {
            self.scrapers.push((scraper.to_string(), now_ns));
            return self.scrapers.len() - 1;
        }
        let (i, _) = self
            .scrapers
            .iter()
            .enumerate()
            .min_by_key(|(_, s)| s.1)
            .unwrap_or((0, &self.scrapers[0]));
        self.scrapers[i] = (scraper.to_string(), now_ns);
        for b in self.series.values_mut() {
            b.shown &= !(1 << i);
        }
        i
    }

    /// `text` (the text format) as `scraper` is to see it at `now_ns`.
    pub fn apply(&mut self, text: &str, scraper: &str, now_ns: u64) -> String {
        let bit = 1u16 << self.slot(scraper, now_ns);
        let mut out = String::with_capacity(text.len());
        let mut counting = false;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                counting = rest.ends_with(" counter") || rest.ends_with(" histogram");
            }
            let sample = if counting && !line.starts_with('#') {
                line.rsplit_once(' ')
            } else {
                None
            };
            let Some((series, value)) = sample.filter(|(s, _)| !kernel_total(s)) else {
                out.push_str(line);
                out.push('\n');
                continue;
            };
            let b = self.series.entry(series.to_string()).or_insert(Born {
                first_ns: now_ns,
                last_ns: now_ns,
                shown: 0,
            });
            b.last_ns = now_ns;
            let young = now_ns.saturating_sub(b.first_ns) < BIRTH_WINDOW_NS;
            let zero = young && b.shown & bit == 0 && value != "0" && value != "0.0";
            b.shown |= bit;
            out.push_str(series);
            out.push(' ');
            out.push_str(if zero { "0" } else { value });
            out.push('\n');
        }
        self.series
            .retain(|_, b| now_ns.saturating_sub(b.last_ns) < BIRTH_WINDOW_NS);
        // Series that left the exposition are kept for the window (one that
        // came back would otherwise count its value twice), but at most
        // MAX_GONE of them, the most recently seen.
        let gone = self.series.values().filter(|b| b.last_ns < now_ns).count();
        if gone > MAX_GONE {
            let mut seen: Vec<u64> = self
                .series
                .values()
                .filter(|b| b.last_ns < now_ns)
                .map(|b| b.last_ns)
                .collect();
            seen.sort_unstable();
            let cut = seen[gone - MAX_GONE];
            let mut over = gone - MAX_GONE;
            self.series.retain(|_, b| {
                if over > 0 && b.last_ns < now_ns && b.last_ns <= cut {
                    over -= 1;
                    return false;
                }
                true
            });
        }
        out
    }

    /// Series remembered (for the bound).
    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }
}

/// Saturating u64 to i64 for gauges.
pub fn g(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::prometheus_text;

    fn text(build: impl Fn(&mut Registry)) -> String {
        let mut reg = Registry::default();
        build(&mut reg);
        let mut out = String::new();
        prometheus_text::encode(&mut out, &reg).unwrap();
        out
    }

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .filter_map(|l| l.rsplit_once(' '))
            .find(|(s, _)| *s == series)
            .map(|(_, v)| v.parse().unwrap())
    }

    fn kills(v: &[(&str, &str, u64)]) -> Vec<(Labels, u64)> {
        v.iter()
            .map(|(cg, c, n)| {
                (
                    vec![("cgroup", cg.to_string()), ("constraint", c.to_string())],
                    *n,
                )
            })
            .collect()
    }

    /// The text with its host-level families.
    fn hosted(h: &mut HostTotals, build: impl Fn(&mut Registry)) -> String {
        h.apply(&text(build))
    }

    #[test]
    fn host_level_series_exist_at_zero_from_the_start() {
        let mut h = HostTotals::default();
        let t = hosted(&mut h, |r| counters(r, "diag_oom_kills", "kills", &[]));
        assert_eq!(
            value(&t, r#"diag_host_oom_kills_total{constraint="memcg"}"#),
            Some(0.0),
            "{t}"
        );
        assert_eq!(
            value(&t, r#"diag_host_oom_kills_total{constraint="global"}"#),
            Some(0.0)
        );
        assert!(
            t.contains("# TYPE diag_host_oom_kills_total counter"),
            "{t}"
        );
        // Undeclared families: one unlabelled host series.
        let t = hosted(&mut h, |r| counters(r, "diag_tcp_closes", "closes", &[]));
        assert_eq!(value(&t, "diag_host_tcp_closes_total"), Some(0.0), "{t}");
        // Sums over the entity labels.
        let mut h = HostTotals::default();
        let t = hosted(&mut h, |r| {
            let v = kills(&[("/a", "memcg", 2), ("/b", "memcg", 3), ("/b", "global", 1)]);
            counters(r, "diag_oom_kills", "kills", &v)
        });
        assert_eq!(
            value(&t, r#"diag_host_oom_kills_total{constraint="memcg"}"#),
            Some(5.0)
        );
        assert_eq!(
            value(&t, r#"diag_host_oom_kills_total{constraint="global"}"#),
            Some(1.0)
        );
        // A family without entity labels is host-level already.
        let t = hosted(&mut h, |r| {
            counters(
                r,
                "diag_map_full",
                "full",
                &[(vec![("map", "sock".into())], 1)],
            )
        });
        assert!(!t.contains("diag_host_map_full"), "{t}");
        // Fractions too.
        let t = hosted(&mut h, |r| {
            counters_f64(
                r,
                "diag_cpu_seconds",
                "cpu",
                &[
                    (vec![("cgroup", "/a".into())], 1.5),
                    (vec![("cgroup", "/b".into())], 1.0),
                ],
            )
        });
        assert_eq!(value(&t, "diag_host_cpu_seconds_total"), Some(2.5), "{t}");
    }

    #[test]
    fn host_level_series_never_go_down_when_series_leave() {
        let mut h = HostTotals::default();
        let proc = |pid: &str, comm: &str, n: u64| -> (Labels, u64) {
            (
                vec![
                    ("pid", pid.to_string()),
                    ("comm", comm.to_string()),
                    ("direction", "active".to_string()),
                ],
                n,
            )
        };
        let opens = |h: &mut HostTotals, v: Vec<(Labels, u64)>| {
            let t = hosted(h, |r| counters(r, "diag_tcp_opens", "opens", &v));
            value(&t, r#"diag_host_tcp_opens_total{direction="active"}"#).unwrap()
        };
        assert_eq!(
            opens(&mut h, vec![proc("1", "a", 5), proc("2", "b\\\"x,y", 3)]),
            8.0
        );
        // 1 exits and its series goes; 2 connects once more.
        assert_eq!(opens(&mut h, vec![proc("2", "b\\\"x,y", 4)]), 9.0);
        // A new process behind pid 2's labels starts from 1.
        assert_eq!(opens(&mut h, vec![proc("2", "b\\\"x,y", 1)]), 10.0);
        assert_eq!(opens(&mut h, vec![]), 10.0);
        // The passive side was there at 0 all along.
        let t = hosted(&mut h, |r| counters(r, "diag_tcp_opens", "opens", &[]));
        assert_eq!(
            value(&t, r#"diag_host_tcp_opens_total{direction="passive"}"#),
            Some(0.0)
        );
    }

    #[test]
    fn samples_are_parsed_with_escaped_label_values() {
        let (name, labels, value) = sample(r#"diag_x_total{comm="a\"b,c}",pid="7"} 3"#).unwrap();
        assert_eq!(name, "diag_x_total");
        assert_eq!(labels, vec![("comm", r#"a\"b,c}"#), ("pid", "7")]);
        assert_eq!(value, "3");
        assert_eq!(sample("diag_y_total 1.5").unwrap().2, "1.5");
        assert!(sample("# TYPE x counter").is_none());
        assert!(sample(r#"x{a="unterminated} 1"#).is_none());
    }

    #[test]
    fn a_series_born_counting_shows_zero_to_each_scraper_once() {
        let mut b = Births::default();
        let s = 1_000_000_000;
        let before = text(|r| counters(r, "diag_oom_kills", "kills", &[]));
        let t = b.apply(&before, "prom-a", s);
        assert_eq!(t, before, "nothing new that counted");
        let one = text(|r| counters(r, "diag_oom_kills", "kills", &kills(&[("/x", "memcg", 1)])));
        let k = r#"diag_oom_kills_total{cgroup="/x",constraint="memcg"}"#;
        let host = r#"diag_host_oom_kills_total{constraint="memcg"}"#;
        let mut h = HostTotals::default();
        let before = h.apply(&before);
        b.apply(&before, "prom-a", s);
        let one = h.apply(&one);
        let t = b.apply(&one, "prom-a", 2 * s);
        assert_eq!(value(&t, k), Some(0.0), "born at 0: {t}");
        assert_eq!(value(&t, host), Some(1.0), "the host series was there");
        assert_eq!(value(&b.apply(&one, "prom-a", 3 * s), k), Some(1.0));
        // A second Prometheus gets its own 0 first.
        assert_eq!(value(&b.apply(&one, "prom-b", 3 * s), k), Some(0.0));
        assert_eq!(value(&b.apply(&one, "prom-b", 4 * s), k), Some(1.0));
        assert_eq!(value(&b.apply(&one, "prom-a", 4 * s), k), Some(1.0));
        // Later than the window, a new scraper sees the value at once.
        let late = 2 * s + BIRTH_WINDOW_NS;
        assert_eq!(value(&b.apply(&one, "prom-c", late), k), Some(1.0));
        // Gauges are left alone.
        let g = text(|r| {
            gauges(
                r,
                "diag_tcp_sockets",
                "s",
                &[(vec![("pid", "1".into())], 4)],
            )
        });
        assert_eq!(b.apply(&g, "prom-a", late), g);
        // Histograms: a new cgroup's buckets, sum and count are all 0 once.
        let mut h = Log2Hist::default();
        h.counts[3] = 2;
        let ht = text(|r| {
            histograms(
                r,
                "diag_runq_latency_seconds",
                "h",
                vec![(vec![("cgroup", "/y".into())], &h, 10)],
            )
        });
        let t = b.apply(&ht, "prom-a", late + s);
        let samples: Vec<&str> = t.lines().filter(|l| !l.starts_with('#')).collect();
        assert!(!samples.is_empty());
        assert!(samples.iter().all(|l| l.ends_with(" 0")), "{t}");
        let t = b.apply(&ht, "prom-a", late + 2 * s);
        assert_eq!(
            value(&t, r#"diag_runq_latency_seconds_count{cgroup="/y"}"#),
            Some(2.0),
            "{t}"
        );
    }

    #[test]
    fn births_stay_bounded() {
        let mut b = Births::default();
        let s = 1_000_000_000;
        for i in 0..1000u64 {
            let v = kills(&[(&format!("/c{i}"), "memcg", 1)]);
            let t = text(|r| counters(r, "diag_oom_kills", "kills", &v));
            b.apply(&t, &format!("scraper {}", i % 40), i * s);
        }
        // Series gone for the window are forgotten; scrapers are bounded.
        assert!(b.len() <= 300 + 4, "{}", b.len());
        assert!(b.scrapers.len() <= MAX_SCRAPERS);
        // Fast churn within the window: the series gone are bounded too.
        let mut b = Births::default();
        for i in 0..(MAX_GONE as u64 + 5000) / 100 {
            let names: Vec<String> = (0..100).map(|j| format!("/c{i}-{j}")).collect();
            let v: Vec<(&str, &str, u64)> =
                names.iter().map(|n| (n.as_str(), "memcg", 1)).collect();
            let t = text(|r| counters(r, "diag_oom_kills", "kills", &kills(&v)));
            b.apply(&t, "prom", i * 1_000_000);
        }
        assert!(b.len() <= MAX_GONE + 100 + 4, "{}", b.len());
    }
}
