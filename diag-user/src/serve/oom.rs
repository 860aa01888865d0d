//! OOM kill families.

use std::collections::BTreeMap;

use diag_common::oom::constraint;
use prometheus_client::registry::Registry;

use super::families::{Families, counters};

/// OOM kills per (victim memory cgroup label, constraint).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OomMetrics {
    pub kills: BTreeMap<(String, &'static str), u64>,
}

/// The `constraint` label of a kill.
pub fn constraint_label(c: u8) -> &'static str {
    match c {
        constraint::MEMCG => "memcg",
        constraint::GLOBAL => "global",
        _ => "other",
    }
}

impl OomMetrics {
    /// Count one kill; `cgroup` is a label value (already bounded).
    pub fn eat(&mut self, cgroup: String, constraint: &'static str) {
        *self.kills.entry((cgroup, constraint)).or_default() += 1;
    }
}

impl Families for OomMetrics {
    fn register(&self, reg: &mut Registry) {
        let values: Vec<_> = self
            .kills
            .iter()
            .map(|((cg, c), n)| {
                (
                    vec![("cgroup", cg.clone()), ("constraint", c.to_string())],
                    *n,
                )
            })
            .collect();
        counters(
            reg,
            "diag_oom_kills",
            "Processes killed by the OOM killer, by the victim's memory cgroup; constraint=memcg (a cgroup hit its limit) or global (the host ran out)",
            &values,
        );
    }
}
