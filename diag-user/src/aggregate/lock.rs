//! Locks, the pure core: cumulative readings of the kernel's lock maps
//! (`LOCK_PROCS`, `LOCK_STATS`) become what each interval added, per
//! process and per lock (with the threads whose wakeups ended the waits:
//! the holders that released it, and the wait they caused).

use std::collections::HashMap;

use diag_common::{
    comm_bytes,
    lock::{LockKey, LockProc, LockStat},
};
use serde::{Deserialize, Serialize};

/// One reading of the kernel's lock maps (cumulative since attach).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockReading {
    pub stats: Vec<(LockKey, LockStat)>,
    pub procs: Vec<(u32, LockProc)>,
}

/// A process's lock waits over an interval (or since start).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcLocks {
    pub pid: u32,
    pub comm: String,
    /// Futex waits that ended, and their total time (ns; summed over
    /// threads: it can exceed the interval).
    pub waits: u64,
    pub wait_ns: u64,
    /// Waits at least the lock threshold long.
    pub long_waits: u64,
    /// Kernel lock contention (lock:contention_begin/end).
    pub kernel_waits: u64,
    pub kernel_wait_ns: u64,
    /// Timed futex waits that ran out (sleeps; not in `waits`).
    #[serde(default)]
    pub timeouts: u64,
    /// The waits' times, log2 µs buckets (`diag_common::sched::hist_slot`:
    /// bucket 0 under 1 µs, bucket k in [2^(k-1), 2^k) µs); empty when
    /// unknown.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hist: Vec<u64>,
}

impl ProcLocks {
    /// The histogram as the kernel's buckets.
    pub fn log2(&self) -> crate::aggregate::histogram::Log2Hist {
        let mut counts = [0u64; diag_common::sched::HIST_SLOTS];
        for (c, v) in counts.iter_mut().zip(&self.hist) {
            *c = *v;
        }
        crate::aggregate::histogram::Log2Hist::from_counts(counts)
    }
}

/// One thread that ended waits on a lock: a holder that released it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// 0: no waker (timeouts, signals, waits that did not sleep).
    pub tid: u32,
    pub pid: u32,
    pub comm: String,
    pub waits: u64,
    /// The wait it ended (the delay it caused), ns.
    pub wait_ns: u64,
}

/// One lock (a futex address in a process) over an interval.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRow {
    pub pid: u32,
    pub uaddr: u64,
    pub waits: u64,
    pub wait_ns: u64,
    pub max_ns: u64,
    /// Waiting threads.
    pub waiters: Vec<u32>,
    /// Most delay caused first.
    pub holders: Vec<Holder>,
}

/// What one interval added.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockInterval {
    /// Most wait first.
    pub procs: Vec<ProcLocks>,
    /// Most wait first.
    pub locks: Vec<LockRow>,
}

impl LockInterval {
    pub fn proc(&self, pid: u32) -> Option<&ProcLocks> {
        self.procs.iter().find(|p| p.pid == pid)
    }
}

fn comm(c: &[u8; 16]) -> String {
    String::from_utf8_lossy(comm_bytes(c)).into_owned()
}

/// Differences between cumulative readings.
#[derive(Debug, Default)]
pub struct LockAgg {
    procs: HashMap<u32, LockProc>,
    stats: HashMap<LockKey, LockStat>,
}

impl LockAgg {
    /// What grew since the last reading (the first reading counts from
    /// zero: the maps start empty when diag attaches).
    pub fn update(
        &mut self,
        procs: &[(u32, LockProc)],
        stats: &[(LockKey, LockStat)],
    ) -> LockInterval {
        let mut iv = LockInterval::default();
        for (pid, p) in procs {
            let before = self.procs.get(pid).copied().unwrap_or_default();
            let d = ProcLocks {
                pid: *pid,
                comm: comm(&p.comm),
                waits: p.waits.saturating_sub(before.waits),
                wait_ns: p.wait_ns.saturating_sub(before.wait_ns),
                long_waits: p.long_waits.saturating_sub(before.long_waits),
                kernel_waits: p.kernel_waits.saturating_sub(before.kernel_waits),
                kernel_wait_ns: p.kernel_wait_ns.saturating_sub(before.kernel_wait_ns),
                timeouts: p.timeouts.saturating_sub(before.timeouts),
                hist: p
                    .hist
                    .iter()
                    .zip(before.hist.iter())
                    .map(|(a, b)| a.saturating_sub(*b))
                    .collect(),
            };
            if d.waits > 0 || d.kernel_waits > 0 {
                iv.procs.push(d);
            }
        }
        self.procs = procs.iter().copied().collect();
        let mut locks: HashMap<(u32, u64), LockRow> = HashMap::new();
        for (k, s) in stats {
            let before = self.stats.get(k).copied().unwrap_or_default();
            let waits = s.waits.saturating_sub(before.waits);
            if waits == 0 {
                continue;
            }
            let wait_ns = s.wait_ns.saturating_sub(before.wait_ns);
            let row = locks.entry((k.tgid, k.uaddr)).or_insert_with(|| LockRow {
                pid: k.tgid,
                uaddr: k.uaddr,
                ..LockRow::default()
            });
            row.waits += waits;
            row.wait_ns += wait_ns;
            row.max_ns = row.max_ns.max(s.max_ns);
            if !row.waiters.contains(&k.tid) {
                row.waiters.push(k.tid);
            }
            match row.holders.iter_mut().find(|h| h.tid == k.waker_tid) {
                Some(h) => {
                    h.waits += waits;
                    h.wait_ns += wait_ns;
                }
                None => row.holders.push(Holder {
                    tid: k.waker_tid,
                    pid: k.waker_tgid,
                    comm: comm(&s.waker_comm),
                    waits,
                    wait_ns,
                }),
            }
        }
        self.stats = stats.iter().copied().collect();
        iv.locks = locks.into_values().collect();
        for l in &mut iv.locks {
            l.waiters.sort_unstable();
            l.holders
                .sort_by(|a, b| b.wait_ns.cmp(&a.wait_ns).then(a.tid.cmp(&b.tid)));
        }
        iv.locks.sort_by(|a, b| {
            b.wait_ns
                .cmp(&a.wait_ns)
                .then((a.pid, a.uaddr).cmp(&(b.pid, b.uaddr)))
        });
        iv.procs
            .sort_by(|a, b| b.wait_ns.cmp(&a.wait_ns).then(a.pid.cmp(&b.pid)));
        iv
    }

    /// Forget processes that are gone.
    pub fn forget(&mut self, pids: &[u32]) {
        self.procs.retain(|p, _| !pids.contains(p));
        self.stats.retain(|k, _| !pids.contains(&k.tgid));
    }
}

/// Locks kept in a frame (most wait first); the rest are counted.
pub const FRAME_LOCKS: usize = 20;
/// Holders kept per lock in a frame.
pub const FRAME_HOLDERS: usize = 8;
/// A frame naming more processes than this is damage.
pub const MAX_FRAME_PROCS: usize = 100_000;

/// The lock frame of a recording (kind 12), once a second: what each
/// process's lock waits added over the interval, and the most contended
/// locks with their holders.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LockFrame {
    /// End of the interval, boot-time ns.
    pub ts_ns: u64,
    pub interval_ns: u64,
    pub procs: Vec<ProcLocks>,
    pub locks: Vec<LockRow>,
    /// Locks that had waits in the interval but are not in `locks`.
    pub locks_omitted: u64,
}

impl LockFrame {
    /// A frame from an interval, bounded.
    pub fn of(ts_ns: u64, interval_ns: u64, mut iv: LockInterval) -> LockFrame {
        let omitted = iv.locks.len().saturating_sub(FRAME_LOCKS) as u64;
        iv.locks.truncate(FRAME_LOCKS);
        for l in &mut iv.locks {
            l.holders.truncate(FRAME_HOLDERS);
            l.waiters.truncate(FRAME_HOLDERS);
        }
        LockFrame {
            ts_ns,
            interval_ns,
            procs: iv.procs,
            locks: iv.locks,
            locks_omitted: omitted,
        }
    }

    /// Why a frame read from a file cannot be right, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.ts_ns == 0 {
            return Err("no time".into());
        }
        if self.procs.len() > MAX_FRAME_PROCS {
            return Err(format!("{} processes", self.procs.len()));
        }
        if self.locks.len() > FRAME_LOCKS {
            return Err(format!(
                "{} locks (at most {FRAME_LOCKS})",
                self.locks.len()
            ));
        }
        if self
            .procs
            .iter()
            .any(|p| p.hist.len() > diag_common::sched::HIST_SLOTS)
        {
            return Err("a histogram with too many buckets".into());
        }
        if self
            .locks
            .iter()
            .any(|l| l.holders.len() > FRAME_HOLDERS || l.waiters.len() > FRAME_HOLDERS)
        {
            return Err("a lock with too many holders or waiters".into());
        }
        Ok(())
    }
}

/// Lock frames summed over a recording (the report).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockSummary {
    pub frames: u64,
    /// pid -> totals.
    pub procs: HashMap<u32, ProcLocks>,
    /// (pid, uaddr) -> totals, from the frames' top locks.
    pub locks: HashMap<(u32, u64), LockRow>,
    pub locks_omitted: u64,
}

impl LockSummary {
    pub fn add(&mut self, f: &LockFrame) {
        self.frames += 1;
        self.locks_omitted += f.locks_omitted;
        for p in &f.procs {
            let e = self.procs.entry(p.pid).or_insert_with(|| ProcLocks {
                pid: p.pid,
                comm: p.comm.clone(),
                ..ProcLocks::default()
            });
            e.waits += p.waits;
            e.wait_ns += p.wait_ns;
            e.long_waits += p.long_waits;
            e.kernel_waits += p.kernel_waits;
            e.kernel_wait_ns += p.kernel_wait_ns;
            e.timeouts += p.timeouts;
            if e.hist.len() < p.hist.len() {
                e.hist.resize(p.hist.len(), 0);
            }
            for (a, b) in e.hist.iter_mut().zip(&p.hist) {
                *a += b;
            }
        }
        for l in &f.locks {
            let e = self
                .locks
                .entry((l.pid, l.uaddr))
                .or_insert_with(|| LockRow {
                    pid: l.pid,
                    uaddr: l.uaddr,
                    ..LockRow::default()
                });
            e.waits += l.waits;
            e.wait_ns += l.wait_ns;
            e.max_ns = e.max_ns.max(l.max_ns);
            for w in &l.waiters {
                if !e.waiters.contains(w) && e.waiters.len() < FRAME_HOLDERS {
                    e.waiters.push(*w);
                }
            }
            for h in &l.holders {
                match e.holders.iter_mut().find(|x| x.tid == h.tid) {
                    Some(x) => {
                        x.waits += h.waits;
                        x.wait_ns += h.wait_ns;
                    }
                    None => e.holders.push(h.clone()),
                }
            }
        }
    }

    /// Processes, most wait first.
    pub fn top_procs(&self, n: usize) -> Vec<&ProcLocks> {
        let mut v: Vec<&ProcLocks> = self.procs.values().collect();
        v.sort_by(|a, b| b.wait_ns.cmp(&a.wait_ns).then(a.pid.cmp(&b.pid)));
        v.truncate(n);
        v
    }

    /// Locks, most wait first, holders most delay first.
    pub fn top_locks(&self, n: usize) -> Vec<LockRow> {
        let mut v: Vec<LockRow> = self.locks.values().cloned().collect();
        v.sort_by(|a, b| {
            b.wait_ns
                .cmp(&a.wait_ns)
                .then((a.pid, a.uaddr).cmp(&(b.pid, b.uaddr)))
        });
        v.truncate(n);
        for l in &mut v {
            l.holders
                .sort_by(|a, b| b.wait_ns.cmp(&a.wait_ns).then(a.tid.cmp(&b.tid)));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tid: u32, uaddr: u64, waker: u32) -> LockKey {
        LockKey {
            uaddr,
            tgid: 1,
            tid,
            waker_tid: waker,
            waker_tgid: 1,
        }
    }

    fn stat(waits: u64, wait_ns: u64) -> LockStat {
        LockStat {
            waits,
            wait_ns,
            max_ns: wait_ns,
            no_waker: 0,
            waker_comm: *b"holder\0\0\0\0\0\0\0\0\0\0",
        }
    }

    #[test]
    fn intervals_are_differences_with_holders() {
        let mut a = LockAgg::default();
        let mut p = LockProc::zeroed();
        p.waits = 2;
        p.wait_ns = 100;
        let iv = a.update(
            &[(1, p)],
            &[
                (key(2, 0x10, 3), stat(1, 60)),
                (key(4, 0x10, 5), stat(1, 40)),
            ],
        );
        assert_eq!(iv.procs[0].wait_ns, 100);
        assert_eq!(iv.locks.len(), 1);
        assert_eq!(iv.locks[0].waiters, vec![2, 4]);
        assert_eq!(iv.locks[0].holders[0].tid, 3);
        assert_eq!(iv.locks[0].holders[0].comm, "holder");
        // Nothing new: nothing shown.
        let iv = a.update(&[(1, p)], &[(key(2, 0x10, 3), stat(1, 60))]);
        assert!(iv.procs.is_empty() && iv.locks.is_empty());
        p.waits = 3;
        p.wait_ns = 130;
        let iv = a.update(&[(1, p)], &[(key(2, 0x10, 3), stat(2, 90))]);
        assert_eq!((iv.procs[0].waits, iv.procs[0].wait_ns), (1, 30));
        assert_eq!(iv.locks[0].wait_ns, 30);
    }
}
