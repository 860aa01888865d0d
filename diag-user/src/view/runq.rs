//! `diag runq`: a per-process table of run-queue latency, CPU time,
//! blocked time and delay suffered/caused, every interval.
//!
//! The edge: reads the kernel maps, /proc and the clock, feeds the pure
//! core (`aggregate::sched`) and prints what it returns.

use std::{
    collections::{HashMap, HashSet},
    io::{self, Write},
    process::ExitCode,
};

use aya::maps::{MapData, PerCpuArray};
use diag_common::counters;

use crate::{
    aggregate::{
        histogram::Log2Hist,
        sched::{Interval, ProcCounters, ProcInterval, SchedAgg, SortKey, combine, sort},
    },
    cli::{RunqArgs, RunqSort},
    clock::{self, WallClock},
    error::LoadError,
    loader,
    probes::sched::SchedMaps,
    source::Health,
    view::tail::human_ns,
};

/// vmstat's `r` and `b`: runnable and blocked (D) tasks, from /proc/stat.
pub fn parse_proc_stat(text: &str) -> (Option<u64>, Option<u64>) {
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
    };
    (get("procs_running "), get("procs_blocked "))
}

fn sort_key(s: RunqSort) -> SortKey {
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
#[derive(Debug, Clone, Copy, Default)]
pub struct HostState {
    pub procs_running: Option<u64>,
    pub procs_blocked: Option<u64>,
}

pub const TABLE_HEADER: &str = "PID      COMM             WAIT%   RUNQ-P50  RUNQ-P99  RUNQ-MAX  WAITS    CPU%    BLOCKED-D  SLEEP-S    CAUSED    STALLS";

fn row(p: &ProcInterval) -> String {
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
    out.push('\n');
    let shown = if limit == 0 {
        iv.processes.len()
    } else {
        limit.min(iv.processes.len())
    };
    for p in &iv.processes[..shown] {
        out.push_str(&row(p));
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
            out.push_str(&row(t));
            out.push('\n');
        }
    }
    if let Some((what, h)) = hist {
        out.push_str(&format!("\nrun-queue latency, {what}:\n"));
        out.push_str(&h.render(40));
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

fn proc_comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

fn thread_comm(pid: u32, tid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

fn exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

struct Counters(PerCpuArray<MapData, u64>);

impl Counters {
    fn get(&self, slot: u32) -> u64 {
        self.0.get(&slot, 0).map(|v| v.iter().sum()).unwrap_or(0)
    }

    fn health(&self) -> Health {
        Health {
            submitted: self.get(counters::SUBMITTED),
            ringbuf_full: self.get(counters::RINGBUF_FULL),
            sched_task_map_full: self.get(counters::SCHED_TASK_MAP_FULL),
            sched_proc_map_full: self.get(counters::SCHED_PROC_MAP_FULL),
            sched_read_errors: self.get(counters::SCHED_READ_ERROR),
            ..Health::default()
        }
    }
}

/// `diag runq`.
pub fn run(args: RunqArgs) -> anyhow::Result<ExitCode> {
    let mut env = loader::require_for(&args.probe, &[crate::cli::EventClass::Stall])?;
    env.keep_sched_procs();
    // runq reads the scheduler's maps, never the ring buffer: process
    // exit events would only fill it.
    env.proc = None;
    let mut tracer = loader::load(&env, &args.probe)?;
    let start_ns = clock::boot_ns();
    let mut maps = SchedMaps::take(&mut tracer.ebpf)?;
    let counters = tracer
        .ebpf
        .take_map("COUNTERS")
        .ok_or_else(|| LoadError::Missing("map COUNTERS".into()))?;
    let counters =
        Counters(PerCpuArray::try_from(counters).map_err(|e| LoadError::Load(e.to_string()))?);
    eprintln!(
        "diag: tracing {}; Ctrl-C to stop",
        tracer.attached.join(", ")
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let clock = WallClock::now();
    let key = sort_key(args.sort);
    let pids: HashSet<u32> = args.pid.iter().copied().collect();
    let mut agg = SchedAgg::new();
    let mut thread_agg = SchedAgg::new();
    let mut gone_last_time: Vec<u32> = Vec::new();
    let mut health = Health::default();
    let mut comms: HashMap<u32, String> = HashMap::new();
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let mut printed = 0u64;

    let result: anyhow::Result<()> = rt.block_on(async {
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + args.interval, args.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let cancel = tokio_util::sync::CancellationToken::new();
        crate::view::cancel_on_signal(&cancel);
        let stop = cancel.cancelled();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = tick.tick() => {}
            }
            // Read the kernel's cumulative counters.
            let now_ns = clock::boot_ns();
            let r = maps.read();
            let mut reading = combine(&r, now_ns);
            for (pid, c) in reading.iter_mut() {
                // The process's name from /proc (the kernel's entry holds
                // an exiting thread's); kept once the process is gone.
                if let Some(name) = proc_comm(*pid) {
                    comms.insert(*pid, name);
                }
                if let Some(name) = comms.get(pid).filter(|n| !n.is_empty()) {
                    c.comm = name.clone();
                }
            }
            let mut iv = agg.update(now_ns, start_ns, reading);
            // Processes seen gone at the previous reading have now been
            // read once more after their last switch: drop their entries.
            maps.forget(&gone_last_time);
            agg.forget(&gone_last_time);
            for p in &gone_last_time {
                comms.remove(p);
            }
            gone_last_time = r.procs.keys().copied().filter(|&p| !exists(p)).collect();

            if !pids.is_empty() {
                iv.processes.retain(|p| pids.contains(&p.pid));
            }
            sort(&mut iv.processes, key);
            let host = {
                let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
                let (r, b) = parse_proc_stat(&text);
                HostState {
                    procs_running: r,
                    procs_blocked: b,
                }
            };
            let hist_of = if args.hist {
                if pids.is_empty() {
                    Some(("all processes".to_string(), iv.hist))
                } else {
                    let mut h = Log2Hist::default();
                    for p in &iv.processes {
                        h.merge(&p.hist);
                    }
                    let list: Vec<String> = args.pid.iter().map(|p| p.to_string()).collect();
                    Some((format!("pid {}", list.join(", ")), h))
                }
            } else {
                None
            };
            let hist = hist_of.as_ref().map(|(w, h)| (w.as_str(), h));
            // Per thread, for the --pid processes: the same statistics.
            let mut threads = Vec::new();
            if !pids.is_empty() {
                let mut tgid_of = HashMap::new();
                let reading: HashMap<u32, ProcCounters> = r
                    .tasks
                    .iter()
                    .filter(|(_, t)| pids.contains(&t.tgid))
                    .map(|(tid, t)| {
                        tgid_of.insert(*tid, t.tgid);
                        let mut c = r.thread(*tid, t, now_ns);
                        c.comm = thread_comm(t.tgid, *tid).unwrap_or_default();
                        (*tid, c)
                    })
                    .collect();
                let keys: HashSet<u32> = reading.keys().copied().collect();
                let mut tiv = thread_agg.update(now_ns, start_ns, reading);
                thread_agg.keep_only(&keys);
                sort(&mut tiv.processes, key);
                threads = tiv
                    .processes
                    .into_iter()
                    .map(|row| (tgid_of.get(&row.pid).copied().unwrap_or(0), row))
                    .collect();
            }
            let text = if args.json {
                format_json(&iv, &host, &clock, hist, &threads) + "\n"
            } else {
                let shown: &[(u32, ProcInterval)] = if args.threads { &threads } else { &[] };
                format_text(&iv, &host, &clock, args.limit, hist, shown) + "\n"
            };
            match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => break,
                Err(e) => return Err(anyhow::Error::new(e).context("writing to standard output")),
            }
            let h = counters.health();
            if let Some(w) = new_losses(&health, &h) {
                eprintln!("diag: WARNING: {w}");
            }
            health = h;
            printed += 1;
            if args.count.is_some_and(|c| printed >= c) {
                break;
            }
        }
        Ok(())
    });
    result?;
    drop(tracer);
    let mut summary = format!("diag: {printed} intervals");
    if let Some(l) = health.losses() {
        summary.push_str(&format!(" ({l})"));
    }
    eprintln!("{summary}");
    Ok(ExitCode::SUCCESS)
}

/// A warning for what was lost since the last reading, if anything.
pub fn new_losses(before: &Health, now: &Health) -> Option<String> {
    let mut w = Vec::new();
    let t = now
        .sched_task_map_full
        .saturating_sub(before.sched_task_map_full);
    if t > 0 {
        w.push(format!(
            "{t} thread updates not tracked: the scheduler task map is full"
        ));
    }
    let p = now
        .sched_proc_map_full
        .saturating_sub(before.sched_proc_map_full);
    if p > 0 {
        w.push(format!(
            "{p} process updates lost: the scheduler process map is full"
        ));
    }
    let r = now
        .sched_read_errors
        .saturating_sub(before.sched_read_errors);
    if r > 0 {
        w.push(format!("{r} task_struct reads failed"));
    }
    if w.is_empty() {
        None
    } else {
        Some(w.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diag_common::sched::SchedCounters;

    #[test]
    fn proc_stat() {
        let text = "cpu  1 2 3\nprocs_running 3\nprocs_blocked 1\nsoftirq 0\n";
        assert_eq!(parse_proc_stat(text), (Some(3), Some(1)));
        assert_eq!(parse_proc_stat("garbage"), (None, None));
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
        assert!(new_losses(&a, &b).unwrap().contains("5 thread updates"));
        assert_eq!(new_losses(&b, &b), None);
    }
}
