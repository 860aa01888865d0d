//! `diag runq`: a per-process table of run-queue latency, CPU time,
//! blocked time and delay suffered/caused, every interval.
//!
//! The sink: readings of the scheduler's maps (from `source::sched`) fed
//! to the pure core (`aggregate::sched`), a table printed for each.

use std::collections::{HashMap, HashSet};

use crate::{
    aggregate::{
        histogram::Log2Hist,
        lock::{LockAgg, LockInterval},
        sched::{Interval, ProcCounters, ProcInterval, SchedAgg, SortKey, combine, sort},
    },
    bus::Health,
    bus::{End, Msg, RunqReading, new_losses},
    cli::{RunqArgs, RunqSort},
    clock::WallClock,
    sink::{Flow, Sink},
    view::{
        fmt::human_ns,
        out::{Output, flow_of},
    },
};

pub fn sort_key(s: RunqSort) -> SortKey {
    match s {
        RunqSort::Wait => SortKey::Wait,
        RunqSort::P99 => SortKey::P99,
        RunqSort::Max => SortKey::Max,
        RunqSort::Cpu => SortKey::Cpu,
        RunqSort::Blocked => SortKey::Blocked,
        RunqSort::Sleep => SortKey::Sleep,
        RunqSort::Caused => SortKey::Caused,
        RunqSort::Pid => SortKey::Pid,
    }
}

fn opt_ns(v: Option<u64>) -> String {
    v.map(human_ns).unwrap_or_else(|| "-".into())
}

/// What one interval shows, besides the aggregate.
#[derive(Debug, Clone, Default)]
pub struct HostState {
    pub procs_running: Option<u64>,
    pub procs_blocked: Option<u64>,
    /// With --locks: what the interval added to each process's lock
    /// waits, and the most contended locks.
    pub locks: Option<LockInterval>,
}

/// Locks shown under the table (with --locks).
const LOCK_ROWS: usize = 5;

/// The LOCK column of process `pid`: its futex wait in the interval.
fn lock_cell(host: &HostState, pid: u32) -> Option<String> {
    let l = host.locks.as_ref()?;
    Some(
        l.proc(pid)
            .map(|p| human_ns(p.wait_ns))
            .unwrap_or_else(|| "-".into()),
    )
}

/// The most contended locks, with their holders, as text lines.
fn lock_lines(l: &LockInterval) -> String {
    let mut out = String::new();
    if l.locks.is_empty() {
        return out;
    }
    out.push_str(
        "\nlocks (futex waits in the interval; holders: the threads whose wakeups ended them):\n",
    );
    for k in l.locks.iter().take(LOCK_ROWS) {
        let holders: Vec<String> = k
            .holders
            .iter()
            .take(3)
            .map(|h| {
                if h.tid == 0 {
                    format!(
                        "no waker (signal or no sleep) {} waits {}",
                        h.waits,
                        human_ns(h.wait_ns)
                    )
                } else {
                    format!(
                        "tid {} {} {} waits {}",
                        h.tid,
                        h.comm,
                        h.waits,
                        human_ns(h.wait_ns)
                    )
                }
            })
            .collect();
        out.push_str(&format!(
            "  pid {} futex {:#x}: {} waits {} (max {}) by tids {:?}; held by {}\n",
            k.pid,
            k.uaddr,
            k.waits,
            human_ns(k.wait_ns),
            human_ns(k.max_ns),
            k.waiters,
            holders.join(", ")
        ));
    }
    if l.locks.len() > LOCK_ROWS {
        out.push_str(&format!(
            "  ... {} more locks (--json lists them all)\n",
            l.locks.len() - LOCK_ROWS
        ));
    }
    out
}

pub const TABLE_HEADER: &str = "PID      COMM             WAIT%   RUNQ-P50  RUNQ-P99  RUNQ-MAX  WAITS    CPU%    BLOCKED-D  SLEEP-S    CAUSED    STALLS";

fn row(p: &ProcInterval, host: &HostState) -> String {
    let r = row_sched(p);
    match lock_cell(host, p.pid) {
        Some(c) => {
            let pad = 6usize.saturating_sub(p.stalls.to_string().len());
            format!("{r}{}  {c}", " ".repeat(pad))
        }
        None => r,
    }
}

fn row_sched(p: &ProcInterval) -> String {
    format!(
        "{:<8} {:<16} {:>6.1}  {:<9} {:<9} {:<9} {:<8} {:>6.1}  {:<10} {:<10} {:<9} {}",
        p.pid,
        p.comm.chars().take(16).collect::<String>(),
        p.wait_pct,
        opt_ns(p.p50_ns),
        opt_ns(p.p99_ns),
        opt_ns(p.max_ns),
        p.runq_count,
        p.cpu_pct,
        human_ns(p.blocked_ns),
        human_ns(p.sleep_ns),
        human_ns(p.caused_ns),
        p.stalls,
    )
}

/// The text for one interval: a summary line, the table, and, when asked,
/// the histogram.
pub fn format_text(
    iv: &Interval,
    host: &HostState,
    clock: &WallClock,
    limit: usize,
    hist: Option<(&str, &Log2Hist)>,
    threads: &[(u32, ProcInterval)],
) -> String {
    let n = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "?".into());
    let mut out = format!(
        "{}  interval {}  R {}  B {}  run-queue wait {} in {} waits (p50 {}, p99 {})\n",
        clock.wall(iv.end_ns).format("%H:%M:%S"),
        human_ns(iv.interval_ns),
        n(host.procs_running),
        n(host.procs_blocked),
        human_ns(iv.runq_ns),
        iv.runq_count,
        opt_ns(iv.p50_ns),
        opt_ns(iv.p99_ns),
    );
    out.push_str(TABLE_HEADER);
    if host.locks.is_some() {
        out.push_str("  LOCK");
    }
    out.push('\n');
    let shown = if limit == 0 {
        iv.processes.len()
    } else {
        limit.min(iv.processes.len())
    };
    for p in &iv.processes[..shown] {
        out.push_str(&row(p, host));
        out.push('\n');
    }
    if shown < iv.processes.len() {
        out.push_str(&format!(
            "... {} more (--limit 0 shows all)\n",
            iv.processes.len() - shown
        ));
    }
    if !threads.is_empty() {
        out.push_str("\nthreads (TID instead of PID):\n");
        out.push_str(&TABLE_HEADER.replacen("PID ", "TID ", 1));
        out.push('\n');
        for (_, t) in threads {
            out.push_str(&row_sched(t));
            out.push('\n');
        }
    }
    if let Some(l) = &host.locks {
        out.push_str(&lock_lines(l));
    }
    if let Some((what, h)) = hist {
        out.push_str(&format!("\nrun-queue latency, {what}:\n"));
        out.push_str(&h.render(40));
        if let Some(l) = &host.locks {
            let mut lh = Log2Hist::default();
            for p in &l.procs {
                lh.merge(&p.log2());
            }
            out.push_str(&format!("\nfutex wait times, {what}:\n"));
            out.push_str(&lh.render(40));
        }
    }
    out
}

pub fn format_json(
    iv: &Interval,
    host: &HostState,
    clock: &WallClock,
    hist: Option<(&str, &Log2Hist)>,
    threads: &[(u32, ProcInterval)],
) -> String {
    let mut v = serde_json::json!({
        "time": clock.wall(iv.end_ns).to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "end_ns": iv.end_ns,
        "interval_ns": iv.interval_ns,
        "procs_running": host.procs_running,
        "procs_blocked": host.procs_blocked,
        "runq_ns": iv.runq_ns,
        "runq_count": iv.runq_count,
        "p50_ns": iv.p50_ns,
        "p99_ns": iv.p99_ns,
        "processes": iv.processes,
    });
    if let Some((what, h)) = hist {
        v["hist"] = serde_json::json!({
            "of": what,
            "unit": "log2 usecs: bucket 0 < 1us, bucket k in [2^(k-1), 2^k) us",
            "counts": h.counts.to_vec(),
        });
    }
    if let Some(l) = &host.locks {
        v["lock_procs"] = serde_json::to_value(&l.procs).unwrap_or_default();
        v["locks"] = serde_json::to_value(&l.locks).unwrap_or_default();
        if let Some(ps) = v["processes"].as_array_mut() {
            for p in ps {
                let pid = p["pid"].as_u64().unwrap_or(0) as u32;
                let lp = l.proc(pid);
                p["lock_wait_ns"] = lp.map(|x| x.wait_ns).unwrap_or(0).into();
                p["lock_waits"] = lp.map(|x| x.waits).unwrap_or(0).into();
            }
        }
    }
    if !threads.is_empty() {
        let rows = threads
            .iter()
            .map(|(tgid, t)| {
                let mut r = serde_json::to_value(t).unwrap_or_default();
                r["tid"] = t.pid.into();
                r["pid"] = (*tgid).into();
                r
            })
            .collect();
        v["threads"] = serde_json::Value::Array(rows);
    }
    v.to_string()
}

/// `diag runq`'s table, one per reading.
pub struct RunqSink {
    args: RunqArgs,
    key: SortKey,
    pids: HashSet<u32>,
    clock: WallClock,
    start_ns: u64,
    agg: SchedAgg,
    thread_agg: SchedAgg,
    locks: Option<LockAgg>,
    /// Process names, kept once the process is gone (until forgotten).
    comms: HashMap<u32, String>,
    health: Health,
    printed: u64,
    out: Output,
}

impl RunqSink {
    pub fn new(args: RunqArgs, clock: WallClock, start_ns: u64, out: Output) -> Self {
        let locks = args.locks;
        RunqSink {
            key: sort_key(args.sort),
            pids: args.pid.iter().copied().collect(),
            args,
            clock,
            start_ns,
            agg: SchedAgg::new(),
            thread_agg: SchedAgg::new(),
            locks: locks.then(LockAgg::default),
            comms: HashMap::new(),
            health: Health::default(),
            printed: 0,
            out,
        }
    }

    fn on_reading(&mut self, r: &RunqReading) -> String {
        let now_ns = r.ts_ns;
        let mut reading = combine(&r.reading, now_ns);
        self.comms
            .extend(r.comms.iter().map(|(p, n)| (*p, n.clone())));
        for (pid, c) in reading.iter_mut() {
            if let Some(name) = self.comms.get(pid).filter(|n| !n.is_empty()) {
                c.comm = name.clone();
            }
        }
        let mut iv = self.agg.update(now_ns, self.start_ns, reading);
        // Processes seen gone at the previous reading have now been read
        // once more after their last switch: drop their entries.
        self.agg.forget(&r.gone);
        for p in &r.gone {
            self.comms.remove(p);
        }
        if !self.pids.is_empty() {
            iv.processes.retain(|p| self.pids.contains(&p.pid));
        }
        sort(&mut iv.processes, self.key);
        let locks = match (&mut self.locks, &r.locks) {
            (Some(agg), Some(l)) => {
                let mut iv = agg.update(&l.procs, &l.stats);
                agg.forget(&r.gone);
                if !self.pids.is_empty() {
                    iv.procs.retain(|p| self.pids.contains(&p.pid));
                    iv.locks.retain(|p| self.pids.contains(&p.pid));
                }
                Some(iv)
            }
            _ => None,
        };
        let host = HostState {
            procs_running: r.procs_running,
            procs_blocked: r.procs_blocked,
            locks,
        };
        let hist_of = if self.args.hist {
            if self.pids.is_empty() {
                Some(("all processes".to_string(), iv.hist))
            } else {
                let mut h = Log2Hist::default();
                for p in &iv.processes {
                    h.merge(&p.hist);
                }
                let list: Vec<String> = self.args.pid.iter().map(|p| p.to_string()).collect();
                Some((format!("pid {}", list.join(", ")), h))
            }
        } else {
            None
        };
        let hist = hist_of.as_ref().map(|(w, h)| (w.as_str(), h));
        // Per thread, for the --pid processes: the same statistics.
        let mut threads = Vec::new();
        if !self.pids.is_empty() {
            let mut tgid_of = HashMap::new();
            let reading: HashMap<u32, ProcCounters> = r
                .reading
                .tasks
                .iter()
                .filter(|(_, t)| self.pids.contains(&t.tgid))
                .map(|(tid, t)| {
                    tgid_of.insert(*tid, t.tgid);
                    let mut c = r.reading.thread(*tid, t, now_ns);
                    c.comm = r.thread_comms.get(tid).cloned().unwrap_or_default();
                    (*tid, c)
                })
                .collect();
            let keys: HashSet<u32> = reading.keys().copied().collect();
            let mut tiv = self.thread_agg.update(now_ns, self.start_ns, reading);
            self.thread_agg.keep_only(&keys);
            sort(&mut tiv.processes, self.key);
            threads = tiv
                .processes
                .into_iter()
                .map(|row| (tgid_of.get(&row.pid).copied().unwrap_or(0), row))
                .collect();
        }
        if self.args.json {
            format_json(&iv, &host, &self.clock, hist, &threads) + "\n"
        } else {
            let shown: &[(u32, ProcInterval)] = if self.args.threads { &threads } else { &[] };
            format_text(&iv, &host, &self.clock, self.args.limit, hist, shown) + "\n"
        }
    }
}

impl Sink for RunqSink {
    fn on_msg(&mut self, msg: &Msg) -> anyhow::Result<Flow> {
        match msg {
            Msg::Runq(r) => {
                let text = self.on_reading(r);
                use std::io::Write;
                if flow_of(
                    self.out
                        .write_all(text.as_bytes())
                        .and_then(|_| self.out.flush()),
                )? == Flow::Done
                {
                    return Ok(Flow::Done);
                }
                self.printed += 1;
                if self.args.count.is_some_and(|c| self.printed >= c) {
                    return Ok(Flow::Done);
                }
            }
            Msg::Health(h) => {
                let new = new_losses(&self.health, h);
                if !new.is_empty() {
                    tracing::warn!("WARNING: {}", new.join("; "));
                }
                self.health = *h;
            }
            _ => {}
        }
        Ok(Flow::More)
    }

    fn finish(&mut self, end: &End) -> anyhow::Result<Flow> {
        self.out.close(std::time::Duration::from_secs(1));
        let mut summary = format!("{} intervals", self.printed);
        if let Some(l) = end.health.losses() {
            summary.push_str(&format!(" ({l})"));
        }
        tracing::info!("{summary}");
        Ok(Flow::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::sched::{ProcCounters, SchedAgg};
    use diag_common::sched::SchedCounters;
    use std::collections::HashMap;

    #[test]
    fn proc_stat() {
        let text = "cpu  1 2 3\nprocs_running 3\nprocs_blocked 1\nsoftirq 0\n";
        assert_eq!(crate::host::parse_proc_stat(text), (Some(3), Some(1)));
        assert_eq!(crate::host::parse_proc_stat("garbage"), (None, None));
    }

    #[test]
    fn text_and_json() {
        let mut agg = SchedAgg::new();
        let mut r = HashMap::new();
        let mut c = ProcCounters {
            comm: "victim".into(),
            c: SchedCounters {
                runq_ns: 30_000_000,
                runq_count: 3,
                runq_max_ns: 20_000_000,
                cpu_ns: 100_000_000,
                blocked_ns: 5_000_000,
                ..Default::default()
            },
            ..Default::default()
        };
        c.hist.record(5_000_000);
        c.hist.record(5_000_000);
        c.hist.record(20_000_000);
        r.insert(42, c);
        let iv = agg.update(2_000_000_000, 1_000_000_000, r);
        let host = HostState {
            procs_running: Some(3),
            procs_blocked: Some(1),
            locks: None,
        };
        let clock = WallClock::with_offset_ns(0);
        let threads = vec![(42, iv.processes[0].clone())];
        let text = format_text(
            &iv,
            &host,
            &clock,
            20,
            Some(("all processes", &iv.hist)),
            &threads,
        );
        assert!(text.contains("threads (TID"), "{text}");
        assert!(text.contains("R 3  B 1"), "{text}");
        let line = text.lines().find(|l| l.starts_with("42 ")).unwrap();
        assert!(line.contains("victim") && line.contains("3.0"), "{line}");
        assert!(
            line.contains("20.00ms") && line.contains("5.00ms"),
            "{line}"
        );
        assert!(text.contains("distribution"));
        let v: serde_json::Value =
            serde_json::from_str(&format_json(&iv, &host, &clock, None, &threads)).unwrap();
        assert_eq!(v["threads"][0]["tid"], 42);
        assert_eq!(v["procs_blocked"], 1);
        assert_eq!(v["processes"][0]["pid"], 42);
        assert_eq!(v["processes"][0]["runq_ns"], 30_000_000);
        assert_eq!(v["processes"][0]["blocked_ns"], 5_000_000);
        assert!(v.get("hist").is_none());
    }

    #[test]
    fn losses_warn_once() {
        let a = Health::default();
        let b = Health {
            sched_task_map_full: 5,
            ..Default::default()
        };
        assert!(new_losses(&a, &b).join("; ").contains("5 thread updates"));
        assert!(new_losses(&b, &b).is_empty());
    }
}
