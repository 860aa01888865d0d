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
    /// Cumulative counters and gauges at the last interval, per process,
    /// and the interval it was last in (counting from 1).
    last: Vec<[u64; FIELDS.len()]>,
    seen: Vec<u64>,
    samples: u64,
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
        self.seen.push(0);
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
        let rows = s
            .processes
            .iter()
            .map(|p| (p.pid, p.life, p.comm.as_str(), values(p)));
        self.sample_rows(ts_ns, s.interval_s, rows);
    }

    /// One interval's processes: (pid, life, comm, cumulative counters
    /// and gauges). A process missing from an interval was forgotten (it
    /// had no sockets and did nothing for long): if seen again, its
    /// counters start from zero.
    pub fn sample_rows<'a>(
        &mut self,
        ts_ns: u64,
        secs: f64,
        rows: impl Iterator<Item = (u32, u32, &'a str, [u64; FIELDS.len()])>,
    ) {
        self.samples += 1;
        for (pid, life, comm, now) in rows {
            let i = self.index_of(pid, life, comm);
            if self.seen[i] + 1 != self.samples {
                self.last[i] = [0; FIELDS.len()];
            }
            self.seen[i] = self.samples;
            let before = self.last[i];
            let mut v = now;
            for k in 0..COUNTERS {
                v[k] = now[k].saturating_sub(before[k]);
            }
            if v[..COUNTERS].iter().any(|&x| x > 0) || now[COUNTERS..] != before[COUNTERS..] {
                self.deltas.push(ProcDelta {
                    ts_ns,
                    secs,
                    proc: i,
                    v,
                });
            }
            self.last[i] = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_intervals_cost_nothing_and_forgotten_processes_restart() {
        let mut s = ProcSeries::default();
        let row = |opens: u64, cw: u64| {
            let mut v = [0u64; FIELDS.len()];
            v[0] = opens;
            v[9] = cw;
            v
        };
        s.sample_rows(
            1,
            1.0,
            [(7, 0, "api", row(5, 0)), (8, 0, "db", row(0, 0))].into_iter(),
        );
        // Nothing new for api; db's CLOSE_WAIT gauge moves.
        s.sample_rows(
            2,
            1.0,
            [(7, 0, "api", row(5, 0)), (8, 0, "db", row(0, 2))].into_iter(),
        );
        s.sample_rows(
            3,
            1.0,
            [(7, 0, "api", row(5, 0)), (8, 0, "db", row(0, 2))].into_iter(),
        );
        // api forgotten for an interval, then seen again from zero.
        s.sample_rows(4, 1.0, [(8, 0, "db", row(0, 2))].into_iter());
        s.sample_rows(5, 1.0, [(7, 0, "api-2", row(3, 0))].into_iter());
        let got: Vec<(u64, u32, u64, u64)> = s
            .deltas
            .iter()
            .map(|d| (d.ts_ns, s.procs[d.proc].pid, d.v[0], d.v[9]))
            .collect();
        assert_eq!(got, vec![(1, 7, 5, 0), (2, 8, 0, 2), (5, 7, 3, 0)]);
        assert_eq!(s.procs[0].comm, "api-2", "renamed by exec");
        assert_eq!(s.latest(8), Some(1));
        assert_eq!(s.latest(9), None);
    }
}
