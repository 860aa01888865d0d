//! Memory stalls over an interval, from cumulative kernel readings: per
//! process and per memory cgroup, time in direct reclaim, memory cgroup
//! reclaim, direct compaction and throttling, pages scanned and
//! reclaimed, swap-ins (with their I/O time) and swap-outs; for the host,
//! what kernel threads did (kswapd, kcompactd) and /proc/vmstat's own
//! counters over the same interval.
//!
//! Pure: the caller reads the maps, /proc and the clock.

use std::collections::HashMap;

use diag_common::memory::{MemCgStats, MemCounters, MemHost, MemStats};
use serde::{Deserialize, Serialize};

use super::histogram::Log2Hist;

/// /proc/vmstat counters diag shows and checks itself against.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vmstat {
    /// pgscan_anon + pgscan_file: pages scanned by every reclaimer.
    pub pgscan: u64,
    /// pgsteal_anon + pgsteal_file: pages reclaimed.
    pub pgsteal: u64,
    pub pgscan_kswapd: u64,
    pub pgsteal_kswapd: u64,
    /// allocstall_*: direct reclaim episodes (not memory cgroup reclaim).
    pub allocstall: u64,
    pub compact_stall: u64,
    pub pswpin: u64,
    pub pswpout: u64,
    pub pgmajfault: u64,
}

/// Parse /proc/vmstat (missing counters read as 0).
pub fn parse_vmstat(text: &str) -> Vmstat {
    let mut v = Vmstat::default();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(k), Some(n)) = (f.next(), f.next().and_then(|n| n.parse::<u64>().ok())) else {
            continue;
        };
        match k {
            "pgscan_anon" | "pgscan_file" => v.pgscan += n,
            "pgsteal_anon" | "pgsteal_file" => v.pgsteal += n,
            "pgscan_kswapd" => v.pgscan_kswapd = n,
            "pgsteal_kswapd" => v.pgsteal_kswapd = n,
            "compact_stall" => v.compact_stall = n,
            "pswpin" => v.pswpin = n,
            "pswpout" => v.pswpout = n,
            "pgmajfault" => v.pgmajfault = n,
            k if k.starts_with("allocstall_") => v.allocstall += n,
            _ => {}
        }
    }
    v
}

/// Major faults of a process (`/proc/PID/stat` field 12, majflt: all its
/// threads, not its children). The comm is in parentheses and may hold
/// spaces and parentheses: the last `)` ends it.
/// Also its start time (field 22), clock ticks since boot.
pub fn pid_majflt(stat: &str) -> Option<(u64, u64)> {
    let close = stat.rfind(')')?;
    let f: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    Some((f.get(12 - 3)?.parse().ok()?, f.get(22 - 3)?.parse().ok()?))
}

/// Whether a process that started `start_ticks` after boot (clock ticks
/// of `hz`) started after `since_ns` (boot time).
pub fn started_after(start_ticks: u64, hz: u64, since_ns: u64) -> bool {
    let ns = u128::from(start_ticks) * 1_000_000_000 / u128::from(hz.max(1));
    ns >= u128::from(since_ns)
}

impl Vmstat {
    pub fn since(&self, b: &Vmstat) -> Vmstat {
        Vmstat {
            pgscan: self.pgscan.saturating_sub(b.pgscan),
            pgsteal: self.pgsteal.saturating_sub(b.pgsteal),
            pgscan_kswapd: self.pgscan_kswapd.saturating_sub(b.pgscan_kswapd),
            pgsteal_kswapd: self.pgsteal_kswapd.saturating_sub(b.pgsteal_kswapd),
            allocstall: self.allocstall.saturating_sub(b.allocstall),
            compact_stall: self.compact_stall.saturating_sub(b.compact_stall),
            pswpin: self.pswpin.saturating_sub(b.pswpin),
            pswpout: self.pswpout.saturating_sub(b.pswpout),
            pgmajfault: self.pgmajfault.saturating_sub(b.pgmajfault),
        }
    }
}

/// The figures of one process, cgroup or the background over an
/// interval (or cumulative), with names for JSON and recordings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MemFigures {
    /// Reclaim, compaction and throttling outside those, ns.
    pub stall_ns: u64,
    pub direct_count: u64,
    pub direct_ns: u64,
    pub memcg_count: u64,
    pub memcg_ns: u64,
    pub compact_count: u64,
    pub compact_ns: u64,
    pub throttle_count: u64,
    pub throttle_ns: u64,
    pub stalls: u64,
    pub scanned: u64,
    pub reclaimed: u64,
    pub swapin_pages: u64,
    pub swapin_ns: u64,
    pub swapout_pages: u64,
}

impl From<&MemCounters> for MemFigures {
    fn from(c: &MemCounters) -> Self {
        MemFigures {
            stall_ns: c.stall_ns(),
            direct_count: c.direct_count,
            direct_ns: c.direct_ns,
            memcg_count: c.memcg_count,
            memcg_ns: c.memcg_ns,
            compact_count: c.compact_count,
            compact_ns: c.compact_ns,
            throttle_count: c.throttle_count,
            throttle_ns: c.throttle_ns,
            stalls: c.stalls,
            scanned: c.scanned,
            reclaimed: c.reclaimed,
            swapin_pages: c.swapin_pages,
            swapin_ns: c.swapin_ns,
            swapout_pages: c.swapout_pages,
        }
    }
}

impl MemFigures {
    /// Reclaim and compaction episodes.
    pub fn episodes(&self) -> u64 {
        self.direct_count + self.memcg_count + self.compact_count
    }

    pub fn is_zero(&self) -> bool {
        *self == MemFigures::default()
    }

    pub fn add(&mut self, o: &MemFigures) {
        self.stall_ns += o.stall_ns;
        self.direct_count += o.direct_count;
        self.direct_ns += o.direct_ns;
        self.memcg_count += o.memcg_count;
        self.memcg_ns += o.memcg_ns;
        self.compact_count += o.compact_count;
        self.compact_ns += o.compact_ns;
        self.throttle_count += o.throttle_count;
        self.throttle_ns += o.throttle_ns;
        self.stalls += o.stalls;
        self.scanned += o.scanned;
        self.reclaimed += o.reclaimed;
        self.swapin_pages += o.swapin_pages;
        self.swapin_ns += o.swapin_ns;
        self.swapout_pages += o.swapout_pages;
    }
}

/// One process over one interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemProcInterval {
    pub pid: u32,
    pub comm: String,
    #[serde(flatten)]
    pub f: MemFigures,
    /// Major page faults in the interval (from /proc/PID/stat: swap-ins
    /// and file pages read from disk).
    pub majflt: u64,
    /// Stall time as a share of the interval, %.
    pub stall_pct: f64,
    /// Episode latency quantiles and maximum (histogram resolution).
    pub p99_ns: Option<u64>,
    pub max_ns: Option<u64>,
    #[serde(skip)]
    pub hist: Log2Hist,
}

/// One memory cgroup over one interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemCgInterval {
    /// Inode number of its directory.
    pub ino: u64,
    /// Its path under the memory hierarchy's mount ("" if not found).
    pub path: String,
    #[serde(flatten)]
    pub f: MemFigures,
}

/// The host over one interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemInterval {
    pub end_ns: u64,
    pub interval_ns: u64,
    /// Processes with any memory stall or swap traffic.
    pub processes: Vec<MemProcInterval>,
    pub cgroups: Vec<MemCgInterval>,
    /// Sum over processes.
    pub total: MemFigures,
    /// Major faults of all processes read (see `MemProcInterval::majflt`).
    pub majflt: u64,
    /// Kernel threads (kswapd, kcompactd, kworkers), and pages scanned and
    /// reclaimed outside any process's episode.
    pub background: MemFigures,
    /// /proc/vmstat over the same interval (None on the first reading).
    pub vmstat: Option<Vmstat>,
    pub p99_ns: Option<u64>,
    /// Processes left out of `processes` (a frame holds the ones stalled
    /// longest, bounded).
    #[serde(default)]
    pub omitted: u64,
    #[serde(skip)]
    pub hist: Log2Hist,
}

/// Bounds a recorded frame must respect (more is damage).
pub const MAX_FRAME_ROWS: usize = 100_000;

impl MemInterval {
    /// Why a frame read from a file cannot be right, if it cannot.
    pub fn damage(&self) -> Option<String> {
        if self.processes.len() > MAX_FRAME_ROWS || self.cgroups.len() > MAX_FRAME_ROWS {
            return Some(format!(
                "{} processes and {} cgroups, more than {MAX_FRAME_ROWS}",
                self.processes.len(),
                self.cgroups.len()
            ));
        }
        if self.interval_ns == 0 || self.end_ns < self.interval_ns {
            return Some(format!(
                "interval {} ns ending at {} ns",
                self.interval_ns, self.end_ns
            ));
        }
        let over = |f: &MemFigures| f.stall_ns > self.interval_ns.saturating_mul(4096);
        if over(&self.total) || self.processes.iter().any(|p| over(&p.f)) {
            return Some("a stall time longer than the interval allows".into());
        }
        None
    }
}

/// One reading: the maps plus /proc/vmstat.
#[derive(Debug, Clone, Default)]
pub struct MemSnapshot {
    pub procs: HashMap<u32, MemStats>,
    pub cgroups: HashMap<u64, MemCgStats>,
    pub host: MemHost,
    pub vmstat: Option<Vmstat>,
    /// Memory cgroup paths by directory inode (those the source found).
    pub paths: HashMap<u64, String>,
    /// Major faults per process since it started (/proc/PID/stat), for
    /// the processes of the scheduler's reading.
    pub majflt: HashMap<u32, u64>,
    /// Processes that started after the probes were attached: all their
    /// major faults count (for the others, the first reading is a
    /// baseline).
    pub new_pids: std::collections::HashSet<u32>,
    /// /proc/vmstat when the probes were attached (first reading only):
    /// the first interval compares with it.
    pub vmstat_start: Option<Vmstat>,
}

#[derive(Debug, Clone, Default)]
struct Prev {
    c: MemCounters,
    hist: Log2Hist,
}

/// Turns cumulative readings into intervals.
#[derive(Debug, Default)]
pub struct MemAgg {
    procs: HashMap<u32, Prev>,
    cgroups: HashMap<u64, MemCounters>,
    majflt: HashMap<u32, u64>,
    host: MemCounters,
    vmstat: Option<Vmstat>,
    prev_ns: Option<u64>,
    /// Cumulative per process since the first reading (for totals and
    /// tests), kept for processes that are gone.
    totals: HashMap<u32, MemFigures>,
    cg_totals: HashMap<u64, MemFigures>,
    bg_total: MemFigures,
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

impl MemAgg {
    pub fn new() -> Self {
        MemAgg::default()
    }

    /// Feed a reading taken at `now_ns`; `comms` names processes (the
    /// kernel's entry holds the comm of the thread that created it);
    /// the snapshot's `paths` name memory cgroups.
    pub fn update(
        &mut self,
        now_ns: u64,
        start_ns: u64,
        r: &MemSnapshot,
        comms: &HashMap<u32, String>,
    ) -> MemInterval {
        let interval_ns = now_ns.saturating_sub(self.prev_ns.unwrap_or(start_ns));
        let mut processes = Vec::new();
        let mut hist = Log2Hist::default();
        let mut total = MemFigures::default();
        let majflt: HashMap<u32, u64> = r
            .majflt
            .iter()
            .map(|(pid, &n)| {
                // First seen: the baseline (its faults before diag are not
                // this interval's), unless it started since.
                let first = if r.new_pids.contains(pid) { 0 } else { n };
                let before = self.majflt.get(pid).copied().unwrap_or(first);
                (*pid, n.saturating_sub(before))
            })
            .collect();
        self.majflt = r.majflt.clone();
        let empty = MemStats::zeroed();
        let mem_pids: Vec<u32> = r
            .procs
            .keys()
            .copied()
            .chain(majflt.iter().filter(|(_, n)| **n > 0).map(|(p, _)| *p))
            .collect::<std::collections::BTreeSet<u32>>()
            .into_iter()
            .collect();
        for pid in mem_pids {
            let s = r.procs.get(&pid).unwrap_or(&empty);
            let faults = majflt.get(&pid).copied().unwrap_or(0);
            let before = self.procs.get(&pid).cloned().unwrap_or_default();
            let h_now = Log2Hist::from_counts(s.hist);
            let d = s.counters.since(&before.c);
            let h = h_now.since_saturating(&before.hist);
            let f = MemFigures::from(&d);
            if r.procs.contains_key(&pid) {
                self.procs.insert(
                    pid,
                    Prev {
                        c: s.counters,
                        hist: h_now,
                    },
                );
            }
            if f.is_zero() && faults == 0 {
                continue;
            }
            self.totals.entry(pid).or_default().add(&f);
            total.add(&f);
            hist.merge(&h);
            let max_ns = h.max_bound().map(|b| b.min(s.counters.max_ns.max(1)));
            let comm = comms
                .get(&pid)
                .filter(|n| !n.is_empty())
                .cloned()
                .unwrap_or_else(|| crate::text::comm(&s.comm));
            processes.push(MemProcInterval {
                pid,
                comm,
                f,
                majflt: faults,
                stall_pct: pct(f.stall_ns, interval_ns),
                p99_ns: h.quantile(0.99).map(|v| max_ns.map_or(v, |m| v.min(m))),
                max_ns,
                hist: h,
            });
        }
        processes.sort_by(|a, b| {
            (b.f.stall_ns, b.f.swapin_pages)
                .cmp(&(a.f.stall_ns, a.f.swapin_pages))
                .then(a.pid.cmp(&b.pid))
        });
        let mut cgroups = Vec::new();
        for (&ino, s) in &r.cgroups {
            let before = self.cgroups.get(&ino).copied().unwrap_or_default();
            let f = MemFigures::from(&s.counters.since(&before));
            self.cgroups.insert(ino, s.counters);
            if f.is_zero() {
                continue;
            }
            self.cg_totals.entry(ino).or_default().add(&f);
            cgroups.push(MemCgInterval {
                ino,
                path: r.paths.get(&ino).cloned().unwrap_or_default(),
                f,
            });
        }
        cgroups.sort_by(|a, b| b.f.stall_ns.cmp(&a.f.stall_ns).then(a.ino.cmp(&b.ino)));
        let background = MemFigures::from(&r.host.background.since(&self.host));
        self.host = r.host.background;
        self.bg_total.add(&background);
        if self.vmstat.is_none() {
            self.vmstat = r.vmstat_start;
        }
        let vmstat = match (&r.vmstat, &self.vmstat) {
            (Some(now), Some(before)) => Some(now.since(before)),
            _ => None,
        };
        if r.vmstat.is_some() {
            self.vmstat = r.vmstat;
        }
        self.prev_ns = Some(now_ns);
        MemInterval {
            end_ns: now_ns,
            interval_ns,
            processes,
            cgroups,
            total,
            majflt: majflt.values().sum(),
            background,
            vmstat,
            p99_ns: hist.quantile(0.99),
            omitted: 0,
            hist,
        }
    }

    /// Forget processes that are gone (their kernel entries were deleted).
    pub fn forget(&mut self, pids: &[u32]) {
        for p in pids {
            self.procs.remove(p);
        }
    }

    /// Cumulative figures of `pid` since the first reading.
    pub fn total_of(&self, pid: u32) -> MemFigures {
        self.totals.get(&pid).copied().unwrap_or_default()
    }

    /// Cumulative figures of a memory cgroup since the first reading.
    pub fn cgroup_total(&self, ino: u64) -> MemFigures {
        self.cg_totals.get(&ino).copied().unwrap_or_default()
    }

    /// Cumulative background figures since the first reading.
    pub fn background_total(&self) -> MemFigures {
        self.bg_total
    }
}

/// Most processes and cgroups a [`MemSummary`] keeps apart (the rest
/// are summed in `others`).
pub const SUMMARY_MAX: usize = 10_000;

/// Memory frames of a recording, summed (for `report`).
#[derive(Debug, Clone, Default)]
pub struct MemSummary {
    pub frames: u64,
    pub covered_ns: u64,
    pub total: MemFigures,
    pub background: MemFigures,
    pub vmstat: Vmstat,
    pub majflt: u64,
    /// Per process (pid, latest comm).
    pub procs: HashMap<u32, (String, MemFigures, u64)>,
    /// Per memory cgroup path.
    pub cgroups: HashMap<String, MemFigures>,
    /// Of processes and cgroups beyond the bounds.
    pub others: MemFigures,
}

impl MemSummary {
    pub fn add(&mut self, m: &MemInterval) {
        self.frames += 1;
        self.covered_ns += m.interval_ns;
        self.total.add(&m.total);
        self.background.add(&m.background);
        self.majflt += m.majflt;
        if let Some(v) = &m.vmstat {
            let s = &mut self.vmstat;
            s.pgscan += v.pgscan;
            s.pgsteal += v.pgsteal;
            s.pgscan_kswapd += v.pgscan_kswapd;
            s.pgsteal_kswapd += v.pgsteal_kswapd;
            s.allocstall += v.allocstall;
            s.compact_stall += v.compact_stall;
            s.pswpin += v.pswpin;
            s.pswpout += v.pswpout;
            s.pgmajfault += v.pgmajfault;
        }
        for p in &m.processes {
            let full = self.procs.len() >= SUMMARY_MAX;
            match self.procs.get_mut(&p.pid) {
                Some(e) => {
                    e.0 = p.comm.clone();
                    e.1.add(&p.f);
                    e.2 += p.majflt;
                }
                None if full => self.others.add(&p.f),
                None => {
                    self.procs.insert(p.pid, (p.comm.clone(), p.f, p.majflt));
                }
            }
        }
        for c in &m.cgroups {
            let name = if c.path.is_empty() {
                format!("ino {}", c.ino)
            } else {
                c.path.clone()
            };
            let full = self.cgroups.len() >= SUMMARY_MAX;
            match self.cgroups.get_mut(&name) {
                Some(e) => e.add(&c.f),
                None if full => {}
                None => {
                    self.cgroups.insert(name, c.f);
                }
            }
        }
    }

    /// The `n` processes stalled longest (then by swap-ins).
    pub fn top_procs(&self, n: usize) -> Vec<(u32, &str, &MemFigures, u64)> {
        let mut v: Vec<_> = self
            .procs
            .iter()
            .map(|(pid, (c, f, mf))| (*pid, c.as_str(), f, *mf))
            .collect();
        v.sort_by(|a, b| {
            (b.2.stall_ns, b.2.swapin_pages, b.3)
                .cmp(&(a.2.stall_ns, a.2.swapin_pages, a.3))
                .then(a.0.cmp(&b.0))
        });
        v.truncate(n);
        v
    }

    /// The `n` memory cgroups stalled longest.
    pub fn top_cgroups(&self, n: usize) -> Vec<(&str, &MemFigures)> {
        let mut v: Vec<_> = self.cgroups.iter().map(|(k, f)| (k.as_str(), f)).collect();
        v.sort_by(|a, b| b.1.stall_ns.cmp(&a.1.stall_ns).then(a.0.cmp(b.0)));
        v.truncate(n);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diag_common::memory::hist_slot;

    fn stats(comm: &str, memcg_ms: &[u64], swapin: u64) -> MemStats {
        let mut s = MemStats::zeroed();
        s.comm[..comm.len()].copy_from_slice(comm.as_bytes());
        for ms in memcg_ms {
            let ns = ms * 1_000_000;
            s.counters.memcg_count += 1;
            s.counters.memcg_ns += ns;
            s.counters.max_ns = s.counters.max_ns.max(ns);
            s.hist[hist_slot(ns)] += 1;
        }
        s.counters.swapin_pages = swapin;
        s
    }

    #[test]
    fn damaged_frames_are_told() {
        let mut agg = MemAgg::new();
        let mut r = MemSnapshot::default();
        r.procs.insert(10, stats("cat", &[2], 0));
        let good = agg.update(2_000_000_000, 1_000_000_000, &r, &HashMap::new());
        assert_eq!(good.damage(), None);
        let json = serde_json::to_string(&good).unwrap();
        let back: MemInterval = serde_json::from_str(&json).unwrap();
        assert_eq!(back.processes[0].f, good.processes[0].f);
        let mut bad = good.clone();
        bad.interval_ns = 0;
        assert!(bad.damage().is_some());
        let mut bad = good.clone();
        bad.total.stall_ns = u64::MAX;
        assert!(bad.damage().is_some());
    }

    #[test]
    fn majflt_field() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 7 0 5 6 0 0 20 0 1 0 99 0 0";
        assert_eq!(pid_majflt(stat), Some((7, 99)));
        assert_eq!(pid_majflt("garbage"), None);
    }

    #[test]
    fn vmstat() {
        let v = parse_vmstat(
            "pgscan_anon 5\npgscan_file 10\npgsteal_anon 1\npgsteal_file 2\nallocstall_dma 1\nallocstall_normal 3\npswpin 7\nbogus\n",
        );
        assert_eq!((v.pgscan, v.pgsteal, v.allocstall, v.pswpin), (15, 3, 4, 7));
        let w = Vmstat { pswpin: 9, ..v };
        assert_eq!(w.since(&v).pswpin, 2);
    }

    #[test]
    fn intervals_are_differences() {
        let mut agg = MemAgg::new();
        let mut r = MemSnapshot::default();
        r.paths.insert(5, "/x".into());
        r.procs.insert(10, stats("cat", &[2, 2], 0));
        r.procs.insert(11, stats("idle", &[], 0));
        r.cgroups.insert(
            5,
            MemCgStats {
                counters: r.procs[&10].counters,
            },
        );
        r.vmstat = Some(Vmstat::default());
        let i = agg.update(2_000_000_000, 1_000_000_000, &r, &HashMap::new());
        assert_eq!(i.processes.len(), 1);
        let p = &i.processes[0];
        assert_eq!(
            (p.pid, p.comm.as_str(), p.f.memcg_count, p.f.stall_ns),
            (10, "cat", 2, 4_000_000)
        );
        assert!((p.stall_pct - 0.4).abs() < 1e-9);
        assert_eq!(i.cgroups[0].path, "/x");
        assert!(i.vmstat.is_none());
        r.procs.insert(10, stats("cat", &[2, 2, 8], 5));
        r.vmstat = Some(Vmstat {
            pswpin: 5,
            ..Vmstat::default()
        });
        let mut comms = HashMap::new();
        comms.insert(10, "reader".to_string());
        let i = agg.update(3_000_000_000, 0, &r, &comms);
        let p = &i.processes[0];
        assert_eq!(
            (p.comm.as_str(), p.f.memcg_count, p.f.memcg_ns),
            ("reader", 1, 8_000_000)
        );
        assert_eq!(p.f.swapin_pages, 5);
        assert_eq!(p.max_ns, Some(8_000_000));
        assert_eq!(i.vmstat.unwrap().pswpin, 5);
        assert!(i.cgroups.is_empty(), "no change in the cgroup");
        assert_eq!(agg.total_of(10).memcg_count, 3);
        assert_eq!(agg.cgroup_total(5).memcg_count, 2);
    }
}
