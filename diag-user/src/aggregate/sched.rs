//! Per-process scheduler statistics over an interval, from cumulative
//! kernel readings: run-queue latency (p50/p99/max, % of the interval
//! spent waiting), CPU time, blocked (D) and sleeping (S) time, and the
//! delay each process suffered and caused.
//!
//! Pure: the caller reads the maps, /proc and the clock, and feeds
//! readings in; the top view, recordings and the exporter reuse this.

use std::collections::HashMap;

use diag_common::sched::{ProcStats, SchedCounters, TaskState, run_state};
use serde::Serialize;

use super::histogram::Log2Hist;

/// Cumulative counters of one process, as read from the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcCounters {
    pub comm: String,
    pub c: SchedCounters,
    pub hist: Log2Hist,
}

impl From<&ProcStats> for ProcCounters {
    fn from(s: &ProcStats) -> Self {
        ProcCounters {
            comm: crate::text::comm(&s.comm),
            c: s.counters,
            hist: Log2Hist::from_counts(s.hist),
        }
    }
}

impl ProcCounters {
    /// Add a live thread's counters, as of `now_ns` (boot time).
    /// `on_cpu_since` is when it got the CPU it is on, if it is on one.
    ///
    /// The kernel charges a thread's time off the CPU (its sleep and the
    /// wait that ends it) and its run when it next leaves the CPU, so the
    /// part of the current ones that has elapsed is added here: time off
    /// the CPU as the thread said when it left (asleep, blocked, or
    /// runnable), and its run so far. When the kernel charges them, this
    /// part drops to zero: the sum stays continuous (up to the wait that
    /// ends a sleep, which moves from sleep to the run queue then), and a
    /// thread stuck in D for a minute shows up every interval, not once
    /// at the end.
    pub fn add_thread(&mut self, t: &TaskState, on_cpu_since: Option<u64>, now_ns: u64) {
        let (off_until, running) = match on_cpu_since {
            Some(since) if since >= t.ts_ns && since <= now_ns => (since, now_ns - since),
            _ => (now_ns, 0),
        };
        let off = if t.ts_ns != 0 {
            off_until.saturating_sub(t.ts_ns)
        } else {
            0
        };
        let c = &mut self.c;
        match t.state {
            run_state::RUNQ => c.runq_ns += off,
            run_state::BLOCKED => c.blocked_ns += off,
            run_state::SLEEP => c.sleep_ns += off,
            _ => {}
        }
        c.cpu_ns += running;
        c.add(&t.counters);
        for (a, b) in self.hist.counts.iter_mut().zip(t.hist.iter()) {
            *a += u64::from(*b);
        }
    }

    /// Counter-wise maximum: the high-water mark of two readings.
    fn high_water(&mut self, other: &ProcCounters) {
        self.c.high_water(&other.c);
        for (a, b) in self.hist.counts.iter_mut().zip(other.hist.counts.iter()) {
            *a = (*a).max(*b);
        }
    }
}

/// One reading of the kernel's scheduler maps.
#[derive(Debug, Default, Clone)]
pub struct Reading {
    /// Exited threads, per process.
    pub procs: HashMap<u32, ProcStats>,
    /// Live threads: thread id, state.
    pub tasks: Vec<(u32, TaskState)>,
    /// Threads on a CPU: thread id, since when (boot ns).
    pub on_cpu: HashMap<u32, u64>,
    /// Waits caused by a thread that the kernel keeps per CPU until it
    /// adds them to the thread's counters (`OnCpu::debt_pid`).
    pub debts: Vec<Debt>,
}

/// Waits behind one thread not yet in its counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Debt {
    pub tid: u32,
    pub tgid: u32,
    pub ns: u64,
    pub count: u64,
}

impl ProcCounters {
    fn owe(&mut self, d: &Debt) {
        self.c.caused_ns += d.ns;
        self.c.caused_count += d.count;
    }
}

impl Reading {
    /// Counters of one live thread as of `now_ns` (see
    /// [`ProcCounters::add_thread`]).
    pub fn thread(&self, tid: u32, t: &TaskState, now_ns: u64) -> ProcCounters {
        let mut c = ProcCounters::default();
        c.add_thread(t, self.on_cpu.get(&tid).copied(), now_ns);
        for d in self.debts.iter().filter(|d| d.tid == tid) {
            c.owe(d);
        }
        c
    }
}

/// Per-process cumulative counters from one kernel reading: exited
/// threads plus live ones.
pub fn combine(r: &Reading, now_ns: u64) -> HashMap<u32, ProcCounters> {
    let mut out: HashMap<u32, ProcCounters> = r
        .procs
        .iter()
        .map(|(&pid, s)| (pid, ProcCounters::from(s)))
        .collect();
    for (tid, t) in &r.tasks {
        out.entry(t.tgid)
            .or_default()
            .add_thread(t, r.on_cpu.get(tid).copied(), now_ns);
    }
    for d in &r.debts {
        out.entry(d.tgid).or_default().owe(d);
    }
    out
}

/// One process over one interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcInterval {
    pub pid: u32,
    pub comm: String,
    /// Run-queue wait ("delay suffered"), summed over its threads, ns.
    pub runq_ns: u64,
    pub runq_count: u64,
    pub p50_ns: Option<u64>,
    pub p99_ns: Option<u64>,
    /// The longest wait, to the resolution of the histogram: the upper
    /// bound of the highest bucket used this interval, capped by the
    /// longest wait the kernel has seen since diag started.
    pub max_ns: Option<u64>,
    /// Run-queue wait as a share of the interval, in % (over all threads,
    /// so a multi-threaded process can exceed 100, like top's %CPU).
    pub wait_pct: f64,
    pub cpu_ns: u64,
    pub cpu_pct: f64,
    /// Uninterruptible sleep (D), ns, as it goes.
    pub blocked_ns: u64,
    /// Voluntary sleep (S), ns, as it goes.
    pub sleep_ns: u64,
    /// Run-queue wait of others that ended when this process gave up a CPU.
    pub caused_ns: u64,
    pub caused_count: u64,
    pub stalls: u64,
    #[serde(skip)]
    pub hist: Log2Hist,
}

/// The whole host over one interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Interval {
    /// End of the interval, boot-time ns.
    pub end_ns: u64,
    pub interval_ns: u64,
    /// Processes with any activity, sorted as asked.
    pub processes: Vec<ProcInterval>,
    pub runq_ns: u64,
    pub runq_count: u64,
    pub p50_ns: Option<u64>,
    pub p99_ns: Option<u64>,
    #[serde(skip)]
    pub hist: Log2Hist,
}

/// How to sort the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortKey {
    /// Run-queue wait (delay suffered).
    #[default]
    Wait,
    P99,
    Max,
    Cpu,
    Blocked,
    Sleep,
    Caused,
    Pid,
}

fn delta(now: u64, before: u64) -> u64 {
    // Counters of a live process only grow; a lower reading is a thread
    // caught between its exit and the process entry (see
    // `SchedMaps::read`): no progress, and the high-water mark stays.
    now.saturating_sub(before)
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// Turns successive cumulative readings into intervals.
#[derive(Debug, Default)]
pub struct SchedAgg {
    prev: HashMap<u32, ProcCounters>,
    prev_ns: Option<u64>,
    /// Cumulative run-queue wait per process since the first reading, for
    /// totals (kept for processes that are gone too).
    totals: HashMap<u32, u64>,
}

impl SchedAgg {
    pub fn new() -> Self {
        SchedAgg::default()
    }

    /// Feed a reading taken at `now_ns` (boot time). The first reading
    /// yields an interval from `start_ns` (when the probes were attached:
    /// the kernel counted from zero then).
    pub fn update(
        &mut self,
        now_ns: u64,
        start_ns: u64,
        reading: HashMap<u32, ProcCounters>,
    ) -> Interval {
        let since = self.prev_ns.unwrap_or(start_ns);
        let interval_ns = now_ns.saturating_sub(since);
        let zero = ProcCounters::default();
        let mut processes = Vec::new();
        let mut hist = Log2Hist::default();
        let mut reading = reading;
        for (&pid, now) in reading.iter_mut() {
            let before = self.prev.get(&pid).unwrap_or(&zero);
            let h = now.hist.since_saturating(&before.hist);
            let max_ns = h.max_bound().map(|b| b.min(now.c.runq_max_ns.max(1)));
            // Interpolated quantiles never exceed the maximum.
            let cap = |q: Option<u64>| q.map(|v| max_ns.map_or(v, |m| v.min(m)));
            let p = ProcInterval {
                pid,
                comm: now.comm.clone(),
                runq_ns: delta(now.c.runq_ns, before.c.runq_ns),
                runq_count: delta(now.c.runq_count, before.c.runq_count),
                p50_ns: cap(h.quantile(0.50)),
                p99_ns: cap(h.quantile(0.99)),
                max_ns,
                wait_pct: 0.0,
                cpu_ns: delta(now.c.cpu_ns, before.c.cpu_ns),
                cpu_pct: 0.0,
                blocked_ns: delta(now.c.blocked_ns, before.c.blocked_ns),
                sleep_ns: delta(now.c.sleep_ns, before.c.sleep_ns),
                caused_ns: delta(now.c.caused_ns, before.c.caused_ns),
                caused_count: delta(now.c.caused_count, before.c.caused_count),
                stalls: delta(now.c.stalls, before.c.stalls),
                hist: h,
            };
            now.high_water(before);
            // Voluntary sleep alone does not make a row: idle daemons
            // sleep all the time.
            let active = p.runq_ns + p.cpu_ns + p.blocked_ns + p.caused_ns > 0;
            if !active {
                continue;
            }
            *self.totals.entry(pid).or_default() += p.runq_ns;
            hist.merge(&h);
            processes.push(ProcInterval {
                wait_pct: pct(p.runq_ns, interval_ns),
                cpu_pct: pct(p.cpu_ns, interval_ns),
                ..p
            });
        }
        // Merge, not replace: a process missing from one reading (its last
        // thread exited between the two map reads) keeps its high-water
        // mark, so its counters are not counted again when it reappears.
        // Entries go only through `forget`/`keep_only`.
        self.prev.extend(reading);
        self.prev_ns = Some(now_ns);
        let runq_ns = processes.iter().map(|p| p.runq_ns).sum();
        let runq_count = processes.iter().map(|p| p.runq_count).sum();
        Interval {
            end_ns: now_ns,
            interval_ns,
            processes,
            runq_ns,
            runq_count,
            p50_ns: hist.quantile(0.5),
            p99_ns: hist.quantile(0.99),
            hist,
        }
    }

    /// Forget processes that are gone (their entries were deleted).
    pub fn forget(&mut self, pids: &[u32]) {
        for p in pids {
            self.prev.remove(p);
        }
    }

    /// Forget every key not in `keys` (threads that are gone).
    pub fn keep_only(&mut self, keys: &std::collections::HashSet<u32>) {
        self.prev.retain(|k, _| keys.contains(k));
    }

    /// Total run-queue wait of `pid` since the first reading, ns.
    pub fn total_runq_ns(&self, pid: u32) -> u64 {
        self.totals.get(&pid).copied().unwrap_or(0)
    }
}

/// Sort rows, largest first (pid: ascending).
pub fn sort(rows: &mut [ProcInterval], key: SortKey) {
    let k = |p: &ProcInterval| -> u64 {
        match key {
            SortKey::Wait => p.runq_ns,
            SortKey::P99 => p.p99_ns.unwrap_or(0),
            SortKey::Max => p.max_ns.unwrap_or(0),
            SortKey::Cpu => p.cpu_ns,
            SortKey::Blocked => p.blocked_ns,
            SortKey::Sleep => p.sleep_ns,
            SortKey::Caused => p.caused_ns,
            SortKey::Pid => u64::from(p.pid),
        }
    };
    if key == SortKey::Pid {
        rows.sort_by_key(|p| p.pid);
    } else {
        rows.sort_by(|a, b| k(b).cmp(&k(a)).then(a.pid.cmp(&b.pid)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(comm: &str, runq_ms: &[u64], cpu_ns: u64) -> ProcCounters {
        let mut c = ProcCounters {
            comm: comm.into(),
            ..Default::default()
        };
        c.c.cpu_ns = cpu_ns;
        for ms in runq_ms {
            let ns = ms * 1_000_000;
            c.c.runq_ns += ns;
            c.c.runq_count += 1;
            c.c.runq_max_ns = c.c.runq_max_ns.max(ns);
            c.hist.record(ns);
        }
        c
    }

    #[test]
    fn intervals_are_differences() {
        let mut agg = SchedAgg::new();
        let mut r1 = HashMap::new();
        r1.insert(10, counters("victim", &[1, 1, 1], 5_000_000));
        r1.insert(20, counters("idle", &[], 0));
        let i1 = agg.update(2_000_000_000, 1_000_000_000, r1);
        assert_eq!(i1.interval_ns, 1_000_000_000);
        assert_eq!(i1.processes.len(), 1, "inactive processes are left out");
        let v = &i1.processes[0];
        assert_eq!((v.pid, v.runq_ns, v.runq_count), (10, 3_000_000, 3));
        assert!((v.wait_pct - 0.3).abs() < 1e-9);
        assert!((v.cpu_pct - 0.5).abs() < 1e-9);
        assert!(v.p50_ns.unwrap() >= 512_000 && v.p50_ns.unwrap() < 1_024_000);

        let mut r2 = HashMap::new();
        r2.insert(10, counters("victim", &[1, 1, 1, 20], 6_000_000));
        let i2 = agg.update(3_000_000_000, 0, r2);
        let v = &i2.processes[0];
        assert_eq!((v.runq_ns, v.runq_count), (20_000_000, 1));
        assert_eq!(v.cpu_ns, 1_000_000);
        // max: the 20 ms bucket's upper bound, capped by the kernel's max.
        assert_eq!(v.max_ns, Some(20_000_000));
        assert_eq!(i2.runq_ns, 20_000_000);
        assert_eq!(agg.total_runq_ns(10), 23_000_000);
    }

    #[test]
    fn a_dip_is_no_progress() {
        let mut agg = SchedAgg::new();
        let mut r1 = HashMap::new();
        r1.insert(10, counters("a", &[5, 5], 100));
        agg.update(1, 0, r1);
        // A thread exited between the two map reads: lower for a moment.
        let mut r2 = HashMap::new();
        r2.insert(10, counters("a", &[5], 50));
        let i2 = agg.update(2, 0, r2);
        assert!(i2.processes.is_empty(), "{:?}", i2.processes);
        let mut r3 = HashMap::new();
        r3.insert(10, counters("a", &[5, 5, 5], 150));
        let i3 = agg.update(3, 0, r3);
        assert_eq!(i3.processes[0].runq_ns, 5_000_000);
        assert_eq!(i3.processes[0].cpu_ns, 50);
        assert_eq!(agg.total_runq_ns(10), 15_000_000);
    }

    #[test]
    fn a_process_missing_from_one_reading_is_not_counted_twice() {
        let mut agg = SchedAgg::new();
        let mut r1 = HashMap::new();
        r1.insert(10, counters("a", &[5, 5], 100));
        agg.update(1, 0, r1);
        // Its only thread exited between the two map reads: absent.
        agg.update(2, 0, HashMap::new());
        let mut r3 = HashMap::new();
        r3.insert(10, counters("a", &[5, 5, 5], 100));
        let i3 = agg.update(3, 0, r3);
        assert_eq!(i3.processes[0].runq_ns, 5_000_000);
        assert_eq!(agg.total_runq_ns(10), 15_000_000);
        // Threads that are gone are dropped with keep_only.
        agg.keep_only(&std::collections::HashSet::new());
        let mut r4 = HashMap::new();
        r4.insert(10, counters("a", &[1], 0));
        assert_eq!(agg.update(4, 0, r4).processes[0].runq_ns, 1_000_000);
    }

    fn reading(procs: HashMap<u32, ProcStats>, tasks: &[(u32, TaskState)]) -> Reading {
        Reading {
            procs,
            tasks: tasks.to_vec(),
            on_cpu: HashMap::new(),
            debts: Vec::new(),
        }
    }

    #[test]
    fn waits_owed_per_cpu_count_for_the_thread_that_caused_them() {
        let mut t = TaskState::zeroed();
        t.tgid = 7;
        t.counters.caused_ns = 100;
        t.counters.caused_count = 1;
        let mut r = reading(HashMap::new(), &[(70, t)]);
        r.debts.push(Debt {
            tid: 70,
            tgid: 7,
            ns: 40,
            count: 2,
        });
        // One owed by a thread with no entry of its own (yet) counts for
        // its process as well.
        r.debts.push(Debt {
            tid: 71,
            tgid: 7,
            ns: 5,
            count: 1,
        });
        let c = combine(&r, 1_000);
        assert_eq!((c[&7].c.caused_ns, c[&7].c.caused_count), (145, 4));
        let one = r.thread(70, &t, 1_000);
        assert_eq!((one.c.caused_ns, one.c.caused_count), (140, 3));
    }

    #[test]
    fn combines_exited_and_live_threads() {
        let mut procs = HashMap::new();
        let mut p = ProcStats::zeroed();
        p.counters.runq_ns = 100;
        p.comm[..4].copy_from_slice(b"dead");
        procs.insert(7, p);
        let mut t1 = TaskState::zeroed();
        t1.tgid = 7;
        t1.counters.runq_ns = 10;
        t1.hist[3] = 2;
        let mut t2 = TaskState::zeroed();
        t2.tgid = 8;
        t2.counters.cpu_ns = 5;
        let c = combine(&reading(procs, &[(70, t1), (80, t2)]), 1_000);
        assert_eq!(c[&7].c.runq_ns, 110);
        assert_eq!(c[&7].comm, "dead");
        assert_eq!(c[&7].hist.counts[3], 2);
        assert_eq!(c[&8].c.cpu_ns, 5);
    }

    #[test]
    fn ongoing_sleeps_waits_and_runs_count_as_they_go() {
        let mut t = TaskState::zeroed();
        t.tgid = 7;
        t.state = run_state::BLOCKED;
        t.ts_ns = 1_000;
        t.counters.blocked_ns = 50;
        let mut r = reading(HashMap::new(), &[(70, t)]);
        let mut agg = SchedAgg::new();
        let i1 = agg.update(2_000, 0, combine(&r, 2_000));
        assert_eq!(i1.processes[0].blocked_ns, 1_050);
        let i2 = agg.update(3_000, 0, combine(&r, 3_000));
        assert_eq!(i2.processes[0].blocked_ns, 1_000, "still blocked");
        // It woke, and got a CPU at 3500: off the CPU until then, running
        // since.
        r.on_cpu.insert(70, 3_500);
        let i3 = agg.update(4_000, 0, combine(&r, 4_000));
        assert_eq!(i3.processes[0].blocked_ns, 500);
        assert_eq!(i3.processes[0].cpu_ns, 500);
        // It leaves the CPU at 4200, preempted: the kernel charged 2400
        // blocked, 100 waiting and 200 running; since then it waits.
        let mut t2 = t;
        t2.counters.blocked_ns += 2_400;
        t2.counters.runq_ns += 100;
        t2.counters.runq_count += 1;
        t2.counters.cpu_ns += 200;
        t2.state = run_state::RUNQ;
        t2.ts_ns = 4_200;
        let r = reading(HashMap::new(), &[(70, t2)]);
        let i4 = agg.update(5_000, 0, combine(&r, 5_000));
        let p = &i4.processes[0];
        // The 100 of waiting moved from blocked to the run queue.
        assert_eq!((p.blocked_ns, p.cpu_ns, p.runq_count), (0, 0, 1));
        assert_eq!(p.runq_ns, 100 + 800);
        // A fresh entry (ts 0) adds nothing.
        let c = combine(
            &reading(HashMap::new(), &[(80, TaskState::zeroed())]),
            9_000,
        );
        assert_eq!(c[&0].c.cpu_ns, 0);
    }

    #[test]
    fn recreated_entries_count_from_zero() {
        let mut agg = SchedAgg::new();
        let mut r1 = HashMap::new();
        r1.insert(10, counters("a", &[5, 5], 0));
        agg.update(1, 0, r1);
        agg.forget(&[10]);
        let mut r2 = HashMap::new();
        r2.insert(10, counters("b", &[1], 0));
        let i = agg.update(2, 0, r2);
        assert_eq!(i.processes[0].runq_ns, 1_000_000);
        assert_eq!(i.processes[0].comm, "b");
    }

    #[test]
    fn sorting() {
        let mut agg = SchedAgg::new();
        let mut r = HashMap::new();
        r.insert(1, counters("a", &[1], 9));
        r.insert(2, counters("b", &[4], 1));
        r.insert(3, counters("c", &[2], 5));
        let mut rows = agg.update(10, 0, r).processes;
        sort(&mut rows, SortKey::Wait);
        assert_eq!(rows.iter().map(|p| p.pid).collect::<Vec<_>>(), [2, 3, 1]);
        sort(&mut rows, SortKey::Cpu);
        assert_eq!(rows.iter().map(|p| p.pid).collect::<Vec<_>>(), [1, 3, 2]);
        sort(&mut rows, SortKey::Pid);
        assert_eq!(rows.iter().map(|p| p.pid).collect::<Vec<_>>(), [1, 2, 3]);
    }
}
