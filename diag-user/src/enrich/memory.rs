//! What user space adds to a memory stall event: the memory cgroup paths
//! and the biggest memory users at that moment (in the cgroup at its
//! limit, else system-wide), the likely villains. Reading every process's
//! RSS costs procfs reads: the top list is refreshed at most once a second
//! per scope, and reused for the stalls in between.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use diag_common::memory::MemStallEvent;

use super::oom::{CgroupIndex, Consumer, TOP_N, all_pids, cgroup_pids, top_of};
use crate::view::tail::MemStallContext;

const REFRESH: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub struct MemEnricher {
    index: Option<CgroupIndex>,
    tops: HashMap<String, (Instant, Vec<Consumer>)>,
}

impl MemEnricher {
    pub fn new() -> Self {
        MemEnricher {
            index: Some(CgroupIndex::new()),
            tops: HashMap::new(),
        }
    }

    pub fn context(&mut self, m: &MemStallEvent) -> MemStallContext {
        let Some(index) = self.index.as_mut() else {
            return MemStallContext::default();
        };
        let memcg = index.path(m.memcg_ino);
        let limit_cgroup = index.path(m.limit_ino);
        let root = index.root().map(|r| r.to_path_buf());
        let scope = limit_cgroup.clone().unwrap_or_else(|| "system".to_string());
        let now = Instant::now();
        let fresh = self
            .tops
            .get(&scope)
            .is_some_and(|(at, _)| now.duration_since(*at) < REFRESH);
        if !fresh {
            let top = match (&limit_cgroup, &root) {
                (Some(cg), Some(root)) => {
                    top_of(cgroup_pids(&root.join(cg.trim_start_matches('/'))), TOP_N)
                }
                _ => top_of(all_pids(), TOP_N),
            };
            if self.tops.len() > 64 {
                self.tops.clear();
            }
            self.tops.insert(scope.clone(), (now, top));
        }
        MemStallContext {
            memcg,
            limit_cgroup,
            top: self.tops[&scope].1.clone(),
            top_scope: scope,
        }
    }
}
