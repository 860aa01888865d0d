//! What the report page needs beyond the text: each process's activity
//! per interval, so the page can narrow its tables to a time window.

use std::collections::HashMap;

use crate::aggregate::tcp::{ProcRow, TcpSnapshot};

/// Per-process counters the page shows, in this order: the first
/// [`COUNTERS`] are deltas over an interval, the rest gauges (the value at
/// the interval's end).
pub const FIELDS: [&str; 10] = [
    "opens",
    "closes",
    "resets",
    "retrans",
    "failed",
    "drops",
    "bytes",
    "established",
    "time_wait",
    "close_wait",
];
pub const COUNTERS: usize = 7;

/// One process (one life of a pid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcId {
    pub pid: u32,
    pub life: u32,
    pub comm: String,
}

/// One process's change over one interval ending at `ts_ns`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcDelta {
    pub ts_ns: u64,
    /// The interval's length, seconds.
    pub secs: f64,
    pub proc: usize,
    pub v: [u64; FIELDS.len()],
}

/// Every process's activity, interval by interval. An interval in which
/// a process did nothing and its gauges did not move costs nothing, so
/// this grows with the events read, not with time.
#[derive(Debug, Clone, Default)]
pub struct ProcSeries {
    index: HashMap<(u32, u32), usize>,
    pub procs: Vec<ProcId>,
    /// Cumulative counters and gauges at the last interval, per process.
    last: Vec<[u64; FIELDS.len()]>,
    pub deltas: Vec<ProcDelta>,
}

fn values(p: &ProcRow) -> [u64; FIELDS.len()] {
    let t = &p.totals;
    let kernel_drops: u64 = p.kernel_drops.iter().map(|(_, n)| n).sum();
    [
        t.active_opens + t.passive_opens,
        t.closes,
        t.resets_sent + t.resets_received,
        t.retransmits,
        t.failed_connects,
        t.listen_overflows + kernel_drops,
        t.bytes_acked + t.bytes_received,
        p.states.established,
        p.states.time_wait,
        p.states.close_wait,
    ]
}

impl ProcSeries {
    /// The process index of (pid, life), added with `comm` if new.
    pub fn index_of(&mut self, pid: u32, life: u32, comm: &str) -> usize {
        if let Some(&i) = self.index.get(&(pid, life)) {
            if self.procs[i].comm != comm && !comm.is_empty() {
                self.procs[i].comm = comm.to_string();
            }
            return i;
        }
        self.procs.push(ProcId {
            pid,
            life,
            comm: comm.to_string(),
        });
        self.last.push([0; FIELDS.len()]);
        self.index.insert((pid, life), self.procs.len() - 1);
        self.procs.len() - 1
    }

    /// The newest life of `pid`, if any process with it was seen.
    pub fn latest(&self, pid: u32) -> Option<usize> {
        self.index
            .iter()
            .filter(|((p, _), _)| *p == pid)
            .max_by_key(|((_, life), _)| *life)
            .map(|(_, &i)| i)
    }

    /// Take the snapshot closing the interval that ends at `ts_ns`.
    pub fn sample(&mut self, ts_ns: u64, s: &TcpSnapshot) {
        for p in &s.processes {
            let i = self.index_of(p.pid, p.life, &p.comm);
            let now = values(p);
            let before = self.last[i];
            let mut v = now;
            for k in 0..COUNTERS {
                // A process forgotten and seen again starts from zero.
                v[k] = now[k].checked_sub(before[k]).unwrap_or(now[k]);
            }
            if v[..COUNTERS].iter().any(|&x| x > 0) || now[COUNTERS..] != before[COUNTERS..] {
                self.deltas.push(ProcDelta {
                    ts_ns,
                    secs: s.interval_s,
                    proc: i,
                    v,
                });
            }
            self.last[i] = now;
        }
    }
}
