//! OOM kill counters per process and per cgroup, for the top view,
//! recordings and the Prometheus exporter. Pure: fed with decoded events
//! and the cgroup paths user space resolved for them.

use std::collections::BTreeMap;

use diag_common::{oom::OomKillEvent, oom::constraint};

/// A process as OOM counters know it: pids are reused, so the command
/// name is part of the key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProcessKey {
    pub pid: u32,
    pub comm: String,
}

/// Kills counted for one key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KillCount {
    pub kills: u64,
    /// Boot-time ns of the latest kill.
    pub last_ts_ns: u64,
    /// RSS of the latest victim, KiB.
    pub last_rss_kb: u64,
}

impl KillCount {
    fn add(&mut self, ts_ns: u64, rss_kb: u64) {
        self.kills += 1;
        if ts_ns >= self.last_ts_ns {
            self.last_ts_ns = ts_ns;
            self.last_rss_kb = rss_kb;
        }
    }
}

/// The cgroup key used when a path is not known.
pub const UNKNOWN_CGROUP: &str = "?";

/// Every OOM kill seen, counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OomStats {
    pub total: u64,
    pub global: u64,
    pub memcg: u64,
    /// Per victim process.
    pub by_victim: BTreeMap<ProcessKey, KillCount>,
    /// Per victim command name (pids change, names stay).
    pub by_comm: BTreeMap<String, KillCount>,
    /// Per victim memory cgroup path.
    pub by_cgroup: BTreeMap<String, KillCount>,
    /// Per cgroup that ran out of memory (memcg OOMs only).
    pub by_oom_cgroup: BTreeMap<String, KillCount>,
    /// Per trigger process: who was allocating when the killer ran.
    pub by_trigger: BTreeMap<ProcessKey, u64>,
}

fn comm(c: &[u8; 16]) -> String {
    crate::text::comm(c)
}

impl OomStats {
    /// Count one kill. `victim_cgroup` and `oom_cgroup` are the paths user
    /// space resolved (None when unknown).
    pub fn eat(
        &mut self,
        ev: &OomKillEvent,
        victim_cgroup: Option<&str>,
        oom_cgroup: Option<&str>,
    ) {
        let ts = ev.header.ts_ns;
        let rss = ev.rss_kb();
        self.total += 1;
        match ev.constraint {
            constraint::GLOBAL => self.global += 1,
            constraint::MEMCG => self.memcg += 1,
            _ => {}
        }
        let victim = ProcessKey {
            pid: ev.victim_process(),
            comm: comm(&ev.victim_comm),
        };
        self.by_comm
            .entry(victim.comm.clone())
            .or_default()
            .add(ts, rss);
        self.by_victim.entry(victim).or_default().add(ts, rss);
        self.by_cgroup
            .entry(victim_cgroup.unwrap_or(UNKNOWN_CGROUP).to_string())
            .or_default()
            .add(ts, rss);
        if ev.constraint == constraint::MEMCG {
            self.by_oom_cgroup
                .entry(oom_cgroup.unwrap_or(UNKNOWN_CGROUP).to_string())
                .or_default()
                .add(ts, rss);
        }
        *self
            .by_trigger
            .entry(ProcessKey {
                pid: ev.header.tgid,
                comm: comm(&ev.header.comm),
            })
            .or_default() += 1;
    }

    /// Kills in a cgroup path and all cgroups below it.
    pub fn kills_under(&self, cgroup: &str) -> u64 {
        let prefix = format!("{}/", cgroup.trim_end_matches('/'));
        self.by_cgroup
            .iter()
            .filter(|(p, _)| p.as_str() == cgroup || p.starts_with(&prefix) || cgroup == "/")
            .map(|(_, c)| c.kills)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diag_common::{EventHeader, EventKind};

    fn kill(ts: u64, victim: u32, vcomm: &str, trigger: u32, c: u8, rss_kb: u64) -> OomKillEvent {
        let mut header = EventHeader::zeroed();
        header.kind = EventKind::OomKill as u32;
        header.ts_ns = ts;
        header.pid = trigger;
        header.tgid = trigger;
        header.comm[..4].copy_from_slice(b"trig");
        let mut victim_comm = [0u8; 16];
        victim_comm[..vcomm.len()].copy_from_slice(vcomm.as_bytes());
        OomKillEvent {
            header,
            victim_pid: victim,
            victim_tgid: victim,
            victim_comm,
            victim_uid: 0,
            oom_score_adj: 0,
            constraint: c,
            memcg_how: 0,
            total_vm_kb: 0,
            anon_rss_kb: rss_kb,
            file_rss_kb: 0,
            shmem_rss_kb: 0,
            pgtables_kb: 0,
            victim_memcg_ino: 0,
            trigger_memcg_ino: 0,
            oom_memcg_ino: 0,
            oom_memcg_limit_pages: 0,
            oom_memcg_usage_pages: 0,
        }
    }

    #[test]
    fn counts_per_process_and_cgroup() {
        let mut s = OomStats::default();
        s.eat(
            &kill(10, 100, "java", 100, constraint::MEMCG, 500),
            Some("/k8s/a"),
            Some("/k8s/a"),
        );
        s.eat(
            &kill(20, 101, "java", 7, constraint::MEMCG, 600),
            Some("/k8s/a"),
            Some("/k8s"),
        );
        s.eat(
            &kill(30, 200, "postgres", 200, constraint::GLOBAL, 900),
            Some("/db"),
            None,
        );
        s.eat(&kill(40, 300, "x", 300, constraint::UNKNOWN, 1), None, None);
        assert_eq!((s.total, s.memcg, s.global), (4, 2, 1));
        assert_eq!(s.by_comm["java"].kills, 2);
        assert_eq!(s.by_comm["java"].last_rss_kb, 600);
        assert_eq!(s.by_comm["java"].last_ts_ns, 20);
        assert_eq!(s.by_victim.len(), 4);
        assert_eq!(s.by_cgroup["/k8s/a"].kills, 2);
        assert_eq!(s.by_cgroup[UNKNOWN_CGROUP].kills, 1);
        assert_eq!(s.by_oom_cgroup["/k8s/a"].kills, 1);
        assert_eq!(s.by_oom_cgroup["/k8s"].kills, 1);
        assert!(
            !s.by_oom_cgroup.contains_key("/db"),
            "global OOMs have no OOM cgroup"
        );
        assert_eq!(
            s.by_trigger[&ProcessKey {
                pid: 7,
                comm: "trig".into()
            }],
            1
        );
        assert_eq!(s.kills_under("/k8s"), 2);
        assert_eq!(
            s.kills_under("/k8"),
            0,
            "a prefix of a name is not a parent"
        );
        assert_eq!(s.kills_under("/"), 4);
    }

    #[test]
    fn out_of_order_timestamps_keep_the_latest() {
        let mut s = OomStats::default();
        s.eat(
            &kill(50, 1, "a", 1, constraint::MEMCG, 5),
            Some("/c"),
            Some("/c"),
        );
        s.eat(
            &kill(40, 1, "a", 1, constraint::MEMCG, 4),
            Some("/c"),
            Some("/c"),
        );
        let k = s.by_comm["a"];
        assert_eq!((k.kills, k.last_ts_ns, k.last_rss_kb), (2, 50, 5));
    }
}
