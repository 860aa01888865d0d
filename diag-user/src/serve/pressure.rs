//! Pressure stall information (PSI) families: the kernel's stall totals
//! in seconds, host-wide and per cgroup v2 directory (the cgroups of the
//! latest frames: those that stalled most), and the host's avg10.

use std::{collections::BTreeMap, sync::atomic::AtomicU64};

use prometheus_client::{
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use super::families::{Labels, gauges_f64};
use crate::aggregate::pressure::{PressureFrame, Pressures, RESOURCES};

/// A cgroup not named by a frame for this long leaves the exposition.
pub const CGROUP_KEEP_NS: u64 = 60_000_000_000;
/// At most this many cgroups are exported (the most recently named).
pub const MAX_CGROUPS: usize = 200;

#[derive(Debug, Clone, Default)]
pub struct PressureMetrics {
    pub host: Pressures,
    /// Each cgroup's figures and when a frame last named it.
    pub cgroups: BTreeMap<String, (u64, Pressures)>,
    /// Pressure files skipped (unreadable or malformed), in total.
    pub skipped: u64,
}

impl PressureMetrics {
    pub fn eat(&mut self, f: &PressureFrame) {
        self.host = f.host;
        self.skipped = self.skipped.saturating_add(f.skipped);
        for c in &f.cgroups {
            self.cgroups.insert(c.cgroup.clone(), (f.ts_ns, c.psi));
        }
        self.cgroups
            .retain(|_, (t, _)| f.ts_ns.saturating_sub(*t) <= CGROUP_KEEP_NS);
        if self.cgroups.len() > MAX_CGROUPS {
            let mut by_age: Vec<(u64, String)> = self
                .cgroups
                .iter()
                .map(|(k, (t, _))| (*t, k.clone()))
                .collect();
            by_age.sort();
            for (_, k) in by_age.iter().take(self.cgroups.len() - MAX_CGROUPS) {
                self.cgroups.remove(k);
            }
        }
    }
}

/// The kernel's totals of `p`, in seconds, by resource and kind.
fn totals(p: &Pressures) -> Vec<(Labels, f64)> {
    p.each()
        .map(|(r, k, f)| {
            (
                vec![("resource", r.to_string()), ("kind", k.to_string())],
                f.total_us as f64 / 1e6,
            )
        })
        .collect()
}

fn seconds_counters(reg: &mut Registry, name: &str, help: &str, values: &[(Labels, f64)]) {
    let f = Family::<Labels, Counter<f64, AtomicU64>>::default();
    for (l, v) in values {
        f.get_or_create(l).inc_by(*v);
    }
    reg.register(name, help, f);
}

impl super::families::Families for PressureMetrics {
    fn register(&self, reg: &mut Registry) {
        // The host's series exist from the first scrape (at 0 until the
        // first reading), for every resource and kind.
        let mut host: BTreeMap<(String, String), f64> = RESOURCES
            .iter()
            .flat_map(|r| ["some", "full"].map(|k| ((r.to_string(), k.to_string()), 0.0)))
            .collect();
        let mut avg: Vec<(Labels, f64)> = Vec::new();
        for (r, k, f) in self.host.each() {
            host.insert((r.to_string(), k.to_string()), f.total_us as f64 / 1e6);
            avg.push((
                vec![("resource", r.to_string()), ("kind", k.to_string())],
                f.avg10,
            ));
        }
        let host: Vec<(Labels, f64)> = host
            .into_iter()
            .map(|((r, k), v)| (vec![("resource", r), ("kind", k)], v))
            .collect();
        seconds_counters(
            reg,
            "diag_pressure_stall_seconds",
            "Pressure stall information (PSI) of the host, from /proc/pressure: the wall time during which some (at least one) or full (all non-idle) tasks stalled on the resource, since boot",
            &host,
        );
        gauges_f64(
            reg,
            "diag_pressure_avg10_ratio",
            "The host's PSI avg10: the share of the last 10 s some or full tasks stalled on the resource, 0 to 1",
            &avg.into_iter()
                .map(|(l, v)| (l, v / 100.0))
                .collect::<Vec<_>>(),
        );
        let mut cg = Vec::new();
        for (name, (_, p)) in &self.cgroups {
            for (mut l, v) in totals(p) {
                l.insert(0, ("cgroup", name.clone()));
                cg.push((l, v));
            }
        }
        seconds_counters(
            reg,
            "diag_cgroup_pressure_stall_seconds",
            "PSI of a cgroup v2 directory (its *.pressure files), since the cgroup was made: the cgroups that stalled most in the last minute, at most 50 a second",
            &cg,
        );
        super::families::counter(
            reg,
            "diag_pressure_files_skipped",
            "Pressure files diag could not read or parse, skipped",
            self.skipped,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        aggregate::pressure::{CgroupPressure, PsiFig, ResPsi},
        serve::families::Families,
    };

    fn fig(total_us: u64) -> Option<PsiFig> {
        Some(PsiFig {
            avg10: 50.0,
            total_us,
            ..PsiFig::default()
        })
    }

    fn text(m: &PressureMetrics) -> String {
        let mut reg = Registry::default();
        m.register(&mut reg);
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &reg).unwrap();
        out
    }

    #[test]
    fn host_series_exist_from_the_first_scrape() {
        let t = text(&PressureMetrics::default());
        for r in RESOURCES {
            for k in ["some", "full"] {
                let s =
                    format!("diag_pressure_stall_seconds_total{{resource=\"{r}\",kind=\"{k}\"}} 0");
                assert!(t.contains(&s), "{s} in\n{t}");
            }
        }
    }

    #[test]
    fn totals_in_seconds_and_cgroups_age_out() {
        let mut m = PressureMetrics::default();
        let psi = Pressures {
            cpu: ResPsi {
                some: fig(2_500_000),
                full: None,
            },
            ..Pressures::default()
        };
        m.eat(&PressureFrame {
            ts_ns: 1,
            host: psi,
            cgroups: vec![CgroupPressure {
                cgroup: "/job".into(),
                psi,
            }],
            skipped: 2,
            ..PressureFrame::default()
        });
        let t = text(&m);
        assert!(t.contains(r#"diag_pressure_stall_seconds_total{resource="cpu",kind="some"} 2.5"#));
        assert!(t.contains(r#"diag_pressure_avg10_ratio{resource="cpu",kind="some"} 0.5"#));
        assert!(t.contains(
            r#"diag_cgroup_pressure_stall_seconds_total{cgroup="/job",resource="cpu",kind="some"} 2.5"#
        ));
        assert!(t.contains("diag_pressure_files_skipped_total 2"));
        // The kernel's totals are served as they are, never at 0 first:
        // a first 0 would make increase() count the time since boot.
        let mut births = crate::serve::families::Births::default();
        let served = births.apply(&t, "prometheus", 1);
        assert!(served.contains(
            r#"diag_cgroup_pressure_stall_seconds_total{cgroup="/job",resource="cpu",kind="some"} 2.5"#
        ));
        assert!(
            served.contains(r#"diag_pressure_stall_seconds_total{resource="cpu",kind="some"} 2.5"#)
        );
        assert!(
            served.contains("diag_pressure_files_skipped_total 0"),
            "diag's own counts are born at 0"
        );
        m.eat(&PressureFrame {
            ts_ns: 2 + CGROUP_KEEP_NS,
            ..PressureFrame::default()
        });
        assert!(m.cgroups.is_empty());
    }
}
