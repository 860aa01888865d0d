//! `diag runq`: a per-process table of run-queue latency, CPU time,
//! blocked time and delay suffered/caused, every interval.
//!
//! The sink: readings of the scheduler's maps (from `source::sched`) fed
//! to the pure core (`aggregate::sched`), a table printed for each.

use std::collections::{HashMap, HashSet};

use crate::{
    aggregate::{
        block::{BlockFrame, ProcIo},
        histogram::Log2Hist,
        lock::{LockAgg, LockInterval},
        memory::{MemAgg, MemInterval, MemProcInterval},
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
        // Sorted again by the memory figures (see `sort_by_memory`).
        RunqSort::Mem | RunqSort::Swap => SortKey::Wait,
        RunqSort::Pid => SortKey::Pid,
        // Sorted by the view, which has the I/O figures.
        RunqSort::Io => SortKey::Wait,
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

pub const TABLE_HEADER: &str = "PID      COMM             WAIT%   RUNQ-P50  RUNQ-P99  RUNQ-MAX  WAITS    CPU%    BLOCKED-D  SLEEP-S    CAUSED    STALLS  MEM        SWAPIN   MAJFLT";

/// The IO column, after the run-queue ones (block I/O attached).
pub const IO_HEADER: &str = "  IO";

/// Per device, like iostat -x.
pub const DEV_HEADER: &str = "DEVICE       r/s      w/s      rkB/s      wkB/s     r_await   w_await   aqu-sz  %util   INFLIGHT  ERRORS";

/// Processes' I/O per device.
pub const PROC_IO_HEADER: &str =
    "PID      COMM             DEVICE       READS    WRITES   READ-KB    WRITE-KB   AWAIT     IO";

fn per_s(n: u64, interval_ns: u64) -> f64 {
    if interval_ns == 0 {
        0.0
    } else {
        n as f64 * 1e9 / interval_ns as f64
    }
}

fn await_ms(ns: u64, n: u64) -> String {
    if n == 0 {
        "-".into()
    } else {
        format!("{:.2}", ns as f64 / n as f64 / 1e6)
    }
}

/// The device table's rows.
pub fn dev_rows(f: &BlockFrame) -> Vec<String> {
    f.devices
        .iter()
        .map(|d| {
            let iv = f.interval_ns;
            format!(
                "{:<10} {:>7.1}  {:>7.1}  {:>9.1}  {:>9.1}   {:<9} {:<9} {:>6.2}  {:>5.1}   {:<9} {}",
                d.label(),
                per_s(d.io.reads, iv),
                per_s(d.io.writes, iv),
                per_s(d.io.read_bytes, iv) / 1024.0,
                per_s(d.io.write_bytes, iv) / 1024.0,
                await_ms(d.io.read_ns, d.io.reads),
                await_ms(d.io.write_ns, d.io.writes),
                d.queue_depth(iv),
                d.util_pct(iv).min(100.0),
                d.inflight,
                d.io.errors,
            )
        })
        .collect()
}

/// The block I/O part of an interval's text: devices, then processes.
pub fn block_text(f: &BlockFrame, pids: &HashSet<u32>, limit: usize) -> String {
    let mut out = String::new();
    if f.devices.is_empty() {
        out.push_str("\nblock I/O: no requests\n");
    } else {
        out.push_str("\nblock I/O per device (await in ms):\n");
        out.push_str(DEV_HEADER);
        out.push('\n');
        for r in dev_rows(f) {
            out.push_str(&r);
            out.push('\n');
        }
    }
    let names: HashMap<&str, &str> = f
        .devices
        .iter()
        .map(|d| (d.dev.as_str(), d.label()))
        .collect();
    let rows: Vec<&ProcIo> = f
        .procs
        .iter()
        .filter(|p| pids.is_empty() || pids.contains(&p.pid))
        .collect();
    if !rows.is_empty() {
        out.push_str(
            "\nblock I/O per process (kernel threads in [brackets]: I/O on behalf of others):\n",
        );
        out.push_str(PROC_IO_HEADER);
        out.push('\n');
        let shown = if limit == 0 {
            rows.len()
        } else {
            limit.min(rows.len())
        };
        for p in &rows[..shown] {
            let comm = if p.kthread {
                format!("[{}]", p.comm)
            } else {
                p.comm.clone()
            };
            out.push_str(&format!(
                "{:<8} {:<16} {:<12} {:<8} {:<8} {:<10} {:<10} {:<9} {}\n",
                p.pid,
                comm.chars().take(16).collect::<String>(),
                names.get(p.dev.as_str()).copied().unwrap_or(p.dev.as_str()),
                p.io.reads,
                p.io.writes,
                p.io.read_bytes / 1024,
                p.io.write_bytes / 1024,
                opt_ns(p.io.await_ns()),
                human_ns(p.io.lat_ns()),
            ));
        }
        if shown < rows.len() {
            out.push_str(&format!("... {} more\n", rows.len() - shown));
        }
    }
    if f.procs_omitted > 0 {
        out.push_str(&format!(
            "{} more processes with I/O summed: {} requests, {} KiB\n",
            f.procs_omitted,
            f.other.ios(),
            f.other.bytes() / 1024
        ));
    }
    let l = &f.lost;
    if l.stale > 0 {
        out.push_str(&format!(
            "note: {} requests in flight for over 2 minutes were dropped from diag's map (freed without a completion diag saw)\n",
            l.stale
        ));
    }
    if l.lost() > 0 {
        out.push_str(&format!(
            "WARNING: block I/O not counted since start: {} requests (in-flight map full), {} by process (process map full), {} devices (device map full), {} slow-I/O events (ring buffer full)\n",
            l.req_map_full, l.proc_map_full, l.dev_map_full, l.ringbuf_full
        ));
    }
    out
}

/// The memory columns: stall time (reclaim, compaction, throttling) and
/// pages swapped in.
fn mem_cols(m: Option<&MemProcInterval>) -> String {
    match m {
        Some(m) => format!(
            "{:<10} {:<8} {}",
            if m.f.stall_ns == 0 {
                "-".to_string()
            } else {
                human_ns(m.f.stall_ns)
            },
            m.f.swapin_pages,
            m.majflt
        ),
        None => format!("{:<10} {:<8} {}", "-", 0, 0),
    }
}

/// Re-sort rows by a memory figure (largest first).
fn sort_by_memory(rows: &mut [ProcInterval], mem: &HashMap<u32, MemProcInterval>, s: RunqSort) {
    let k = |p: &ProcInterval| -> u64 {
        mem.get(&p.pid).map_or(0, |m| match s {
            RunqSort::Swap => m.f.swapin_pages,
            _ => m.f.stall_ns,
        })
    };
    rows.sort_by(|a, b| k(b).cmp(&k(a)).then(a.pid.cmp(&b.pid)));
}

/// The memory summary line and one line per memory cgroup.
pub fn format_memory(m: &MemInterval) -> String {
    let t = &m.total;
    let b = &m.background;
    let mut out = format!(
        "memory: stalls {} in {} episodes (direct reclaim {}/{}, memcg reclaim {}/{}, compaction {}/{}; throttled {}x {}), scanned {} reclaimed {} pages; kernel threads: scanned {} reclaimed {}; swap in {} out {} pages; major faults {}",
        human_ns(t.stall_ns),
        t.episodes(),
        t.direct_count,
        human_ns(t.direct_ns),
        t.memcg_count,
        human_ns(t.memcg_ns),
        t.compact_count,
        human_ns(t.compact_ns),
        t.throttle_count,
        human_ns(t.throttle_ns),
        t.scanned,
        t.reclaimed,
        b.scanned,
        b.reclaimed,
        t.swapin_pages + b.swapin_pages,
        t.swapout_pages + b.swapout_pages,
        m.majflt,
    );
    if let Some(v) = &m.vmstat {
        out.push_str(&format!(
            " (vmstat: pgscan {} pgsteal {} allocstall {} pswpin {} pswpout {} pgmajfault {})",
            v.pgscan, v.pgsteal, v.allocstall, v.pswpin, v.pswpout, v.pgmajfault
        ));
    }
    out.push('\n');
    for c in &m.cgroups {
        out.push_str(&format!(
            "  memcg {} (ino {}): stalls {} in {} episodes (memcg reclaim {}), scanned {} reclaimed {}, swap in {} out {}\n",
            if c.path.is_empty() { "?" } else { &c.path },
            c.ino,
            human_ns(c.f.stall_ns),
            c.f.episodes(),
            c.f.memcg_count,
            c.f.scanned,
            c.f.reclaimed,
            c.f.swapin_pages,
            c.f.swapout_pages,
        ));
    }
    out
}

fn row(p: &ProcInterval, m: Option<&MemProcInterval>) -> String {
    format!(
        "{:<8} {:<16} {:>6.1}  {:<9} {:<9} {:<9} {:<8} {:>6.1}  {:<10} {:<10} {:<9} {:<7} {}",
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
        mem_cols(m),
    )
}

/// The text for one interval: a summary line, the table, and, when asked,
/// the histogram; with block I/O, its column and tables.
#[allow(clippy::too_many_arguments)]
pub fn format_text(
    iv: &Interval,
    host: &HostState,
    clock: &WallClock,
    limit: usize,
    hist: Option<(&str, &Log2Hist)>,
    threads: &[(u32, ProcInterval)],
    io: Option<&BlockFrame>,
    pids: &HashSet<u32>,
    mem: Option<&MemInterval>,
) -> String {
    let by_pid: HashMap<u32, &MemProcInterval> = mem
        .map(|m| m.processes.iter().map(|p| (p.pid, p)).collect())
        .unwrap_or_default();
    let io_of = io.map(|f| f.by_pid());
    let io_cell = |pid: u32| -> String {
        match &io_of {
            Some(m) => format!(
                "  {}",
                m.get(&pid)
                    .map(|f| human_ns(f.lat_ns()))
                    .unwrap_or_else(|| "-".into())
            ),
            None => String::new(),
        }
    };
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
    if let Some(m) = mem {
        out.push_str(&format_memory(m));
    }
    out.push_str(TABLE_HEADER);
    if io.is_some() {
        out.push_str(IO_HEADER);
    }
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
        out.push_str(&row(p, by_pid.get(&p.pid).copied()));
        out.push_str(&io_cell(p.pid));
        if let Some(c) = lock_cell(host, p.pid) {
            out.push_str("  ");
            out.push_str(&c);
        }
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
            out.push_str(&row(t, None));
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
    if let Some(f) = io {
        out.push_str(&block_text(f, pids, limit));
    }
    out
}

pub fn format_json(
    iv: &Interval,
    host: &HostState,
    clock: &WallClock,
    hist: Option<(&str, &Log2Hist)>,
    threads: &[(u32, ProcInterval)],
    io: Option<&BlockFrame>,
    mem: Option<&MemInterval>,
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
    if let Some(f) = io {
        let by_pid = f.by_pid();
        if let Some(rows) = v["processes"].as_array_mut() {
            for r in rows {
                let pid = r["pid"].as_u64().unwrap_or(0) as u32;
                r["io"] = serde_json::to_value(by_pid.get(&pid).copied().unwrap_or_default())
                    .unwrap_or_default();
                r["io_ns"] = by_pid.get(&pid).map(|f| f.lat_ns()).unwrap_or(0).into();
            }
        }
        v["block"] = block_json(f);
    }
    if let Some(m) = mem {
        v["memory"] = serde_json::to_value(m).unwrap_or_default();
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

/// A block frame with iostat's derived figures per device.
pub fn block_json(f: &BlockFrame) -> serde_json::Value {
    let mut v = serde_json::to_value(f).unwrap_or_default();
    if let Some(devs) = v["devices"].as_array_mut() {
        for (j, d) in devs.iter_mut().zip(&f.devices) {
            let iv = f.interval_ns;
            j["r_per_s"] = per_s(d.io.reads, iv).into();
            j["w_per_s"] = per_s(d.io.writes, iv).into();
            j["await_ns"] = d.io.await_ns().into();
            j["util_pct"] = d.util_pct(iv).into();
            j["queue_depth"] = d.queue_depth(iv).into();
        }
    }
    v
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
    mem_agg: MemAgg,
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
            mem_agg: MemAgg::new(),
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
        let mut miv = r.memory.as_ref().map(|snap| {
            self.mem_agg
                .update(now_ns, self.start_ns, snap, &self.comms)
        });
        self.mem_agg.forget(&r.memory_gone);
        if let Some(m) = miv.as_mut() {
            if !self.pids.is_empty() {
                m.processes.retain(|p| self.pids.contains(&p.pid));
            }
            if matches!(self.args.sort, RunqSort::Mem | RunqSort::Swap) {
                let by_pid: HashMap<u32, MemProcInterval> =
                    m.processes.iter().map(|p| (p.pid, p.clone())).collect();
                sort_by_memory(&mut iv.processes, &by_pid, self.args.sort);
            }
        }
        let io = r.block.as_deref();
        if self.args.sort == RunqSort::Io
            && let Some(f) = io
        {
            let m = f.by_pid();
            let t = |pid: u32| m.get(&pid).map(|f| f.lat_ns()).unwrap_or(0);
            iv.processes
                .sort_by(|a, b| t(b.pid).cmp(&t(a.pid)).then(a.pid.cmp(&b.pid)));
        }
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
            format_json(&iv, &host, &self.clock, hist, &threads, io, miv.as_ref()) + "\n"
        } else {
            let shown: &[(u32, ProcInterval)] = if self.args.threads { &threads } else { &[] };
            format_text(
                &iv,
                &host,
                &self.clock,
                self.args.limit,
                hist,
                shown,
                io,
                &self.pids,
                miv.as_ref(),
            ) + "\n"
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
            None,
            &HashSet::new(),
            None,
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
            serde_json::from_str(&format_json(&iv, &host, &clock, None, &threads, None, None))
                .unwrap();
        assert_eq!(v["threads"][0]["tid"], 42);
        assert_eq!(v["procs_blocked"], 1);
        assert_eq!(v["processes"][0]["pid"], 42);
        assert_eq!(v["processes"][0]["runq_ns"], 30_000_000);
        assert_eq!(v["processes"][0]["blocked_ns"], 5_000_000);
        assert!(v.get("hist").is_none());
    }

    #[test]
    fn memory_line_cgroups_and_columns() {
        use crate::aggregate::memory::{MemCgInterval, MemFigures, Vmstat};
        let f = MemFigures {
            stall_ns: 25_000_000,
            memcg_count: 3,
            memcg_ns: 25_000_000,
            scanned: 100,
            reclaimed: 40,
            swapin_pages: 7,
            ..MemFigures::default()
        };
        let m = MemInterval {
            end_ns: 2_000_000_000,
            interval_ns: 1_000_000_000,
            processes: vec![MemProcInterval {
                pid: 42,
                comm: "victim".into(),
                f,
                majflt: 9,
                stall_pct: 2.5,
                p99_ns: None,
                max_ns: None,
                hist: Log2Hist::default(),
            }],
            cgroups: vec![MemCgInterval {
                ino: 77,
                path: "/job".into(),
                f,
            }],
            total: f,
            majflt: 9,
            background: MemFigures::default(),
            vmstat: Some(Vmstat {
                pgscan: 100,
                pswpin: 7,
                ..Vmstat::default()
            }),
            p99_ns: None,
            omitted: 0,
            hist: Log2Hist::default(),
        };
        let text = format_memory(&m);
        assert!(text.contains("memcg reclaim 3/25.00ms"), "{text}");
        assert!(text.contains("vmstat: pgscan 100"), "{text}");
        assert!(
            text.contains("memcg /job (ino 77): stalls 25.00ms"),
            "{text}"
        );
        assert_eq!(
            mem_cols(m.processes.first()),
            format!("{:<10} {:<8} {}", "25.00ms", 7, 9)
        );
        assert!(mem_cols(None).starts_with('-'));
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
