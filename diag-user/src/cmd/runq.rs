//! `diag runq`: the scheduler programs alone; their kernel maps read
//! every interval into the pure core, a table printed each time.

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
        sched::{ProcCounters, ProcInterval, SchedAgg, combine, sort},
    },
    cli::RunqArgs,
    clock::{self, WallClock},
    error::LoadError,
    loader,
    probes::sched::SchedMaps,
    source::Health,
    view::runq::{HostState, format_json, format_text, new_losses, parse_proc_stat, sort_key},
};

fn proc_comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| crate::text::printable(s.trim_end()).into_owned())
}

fn thread_comm(pid: u32, tid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
        .ok()
        .map(|s| crate::text::printable(s.trim_end()).into_owned())
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
        crate::source::cancel_on_signal(&cancel);
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
