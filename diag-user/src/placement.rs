//! Where a process runs: its cgroup, the container id in it and its
//! network namespace, read from /proc while it runs. Live views only: a
//! recording does not keep them for TCP processes, and a pid read later
//! may be another process's.

use std::collections::HashMap;

use diag_common::user::AnyEvent;

use crate::enrich;

/// Where one process runs (None: unknown, e.g. it had exited).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    pub cgroup: Option<String>,
    /// The 12-digit container id in `cgroup`, if it names one.
    pub container: Option<String>,
    /// The network namespace inode.
    pub netns: Option<u64>,
}

impl Placement {
    /// Read from /proc now.
    pub fn of(pid: u32) -> Placement {
        let cgroup = enrich::cgroup_of(pid);
        Placement {
            container: cgroup.as_deref().and_then(enrich::container_id),
            netns: enrich::netns_of(pid),
            cgroup,
        }
    }

    /// Whether it is in one of `wants` (cgroup path prefixes, container id
    /// prefixes; empty: everywhere).
    pub fn is_in(&self, wants: &[String]) -> bool {
        crate::aggregate::filter::cgroup_matches(
            wants,
            self.cgroup.as_deref(),
            self.container.as_deref(),
        )
    }
}

/// Most processes remembered; beyond, the cache starts over (bounded
/// memory on a host forking without end).
const MAX_REMEMBERED: usize = 65_536;

/// Placements by process id, read once per process and forgotten when it
/// exits.
#[derive(Debug, Default)]
pub struct Placements {
    by_pid: HashMap<u32, Placement>,
}

impl Placements {
    pub fn get(&mut self, pid: u32) -> &Placement {
        if self.by_pid.len() >= MAX_REMEMBERED && !self.by_pid.contains_key(&pid) {
            self.by_pid.clear();
        }
        self.by_pid.entry(pid).or_insert_with(|| Placement::of(pid))
    }

    /// The process ended: its pid may be another's next.
    pub fn forget(&mut self, pid: u32) {
        self.by_pid.remove(&pid);
    }

    /// The placements of `pids` not placed before; the others are
    /// forgotten (a table of every process there is now).
    pub fn learn_pids(&mut self, pids: impl Iterator<Item = u32>) -> Vec<(u32, Placement)> {
        let pids: std::collections::HashSet<u32> = pids.collect();
        self.by_pid.retain(|p, _| pids.contains(p));
        let mut new = Vec::new();
        for pid in pids {
            if pid != 0 && !self.by_pid.contains_key(&pid) {
                new.push((pid, self.get(pid).clone()));
            }
        }
        new
    }

    /// The placements of processes `events` name for the first time;
    /// those that end in `events` are forgotten after.
    pub fn learn(&mut self, events: &[AnyEvent]) -> Vec<(u32, Placement)> {
        let mut new = Vec::new();
        let mut ended = Vec::new();
        for ev in events {
            let pid = ev.header().tgid;
            if pid != 0 && !self.by_pid.contains_key(&pid) {
                new.push((pid, self.get(pid).clone()));
            }
            if let AnyEvent::ProcExit(_) = ev {
                ended.push(pid);
            }
        }
        for pid in ended {
            self.forget(pid);
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_placed_and_a_forgotten_pid_is_read_again() {
        let me = std::process::id();
        let mut p = Placements::default();
        let here = p.get(me).clone();
        assert!(here.cgroup.is_some(), "{here:?}");
        assert!(here.netns.is_some(), "{here:?}");
        assert!(here.is_in(&[]));
        assert!(here.is_in(&[here.cgroup.clone().unwrap()]));
        p.forget(me);
        assert_eq!(p.get(me), &here);
        assert_eq!(Placement::of(u32::MAX), Placement::default());
    }
}
