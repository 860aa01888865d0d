//! The scheduler source (`runq`): no ring buffer, only the scheduler's
//! kernel maps, read every interval with the names and host counts that
//! go with them.

use std::{collections::HashSet, time::Duration};

use aya::maps::{MapData, PerCpuArray};
use diag_common::counters;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    bus::{End, Msg, RunqReading},
    clock::boot_ns,
    error::LoadError,
    host::{parse_proc_stat, read_comm},
    loader::Tracer,
    probes::{memory::MemMaps, sched::SchedMaps},
    source::{Health, Source, cancel_on_signal},
};

/// The kernel side's counters that concern the scheduler programs.
struct Counters(PerCpuArray<MapData, u64>);

impl Counters {
    fn get(&self, slot: u32) -> u64 {
        self.0.get(&slot, 0).map(|v| v.iter().sum()).unwrap_or(0)
    }

    fn lock_map_full(&self) -> u64 {
        [
            counters::LOCK_WAIT_MAP_FULL,
            counters::LOCK_STATS_MAP_FULL,
            counters::LOCK_PROC_MAP_FULL,
            counters::LOCK_KWAIT_MAP_FULL,
        ]
        .iter()
        .map(|&s| self.get(s))
        .sum()
    }

    fn health(&self) -> Health {
        Health {
            ts_ns: boot_ns(),
            submitted: self.get(counters::SUBMITTED),
            ringbuf_full: self.get(counters::RINGBUF_FULL),
            sched_task_map_full: self.get(counters::SCHED_TASK_MAP_FULL),
            sched_proc_map_full: self.get(counters::SCHED_PROC_MAP_FULL),
            sched_read_errors: self.get(counters::SCHED_READ_ERROR),
            mem_map_full: self.get(counters::MEM_PROC_MAP_FULL)
                + self.get(counters::MEM_CGROUP_MAP_FULL)
                + self.get(counters::MEM_TASK_MAP_FULL),
            mem_bio_map_full: self.get(counters::MEM_BIO_MAP_FULL),
            lock_map_full: self.lock_map_full(),
            ..Health::default()
        }
    }
}

fn exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Read the maps of `tracer` every `every` (the first one interval from
/// now) onto a new bus; thread names for the processes in `threads_of`;
/// block I/O too when `block`, memory stalls when `memory`, lock waits
/// when `locks` (their programs attached).
pub fn start(
    mut tracer: Tracer,
    every: Duration,
    threads_of: HashSet<u32>,
    block: bool,
    memory: bool,
    locks: bool,
) -> Result<Source, LoadError> {
    let mut maps = SchedMaps::take(&mut tracer.ebpf)?;
    let mut block = if block {
        Some(crate::source::block::BlockFeed::new(
            &mut tracer.ebpf,
            boot_ns(),
        )?)
    } else {
        None
    };
    let mut mem_maps = if memory {
        let mut m = MemMaps::take(&mut tracer.ebpf)?;
        m.refresh_swap_devs();
        Some(m)
    } else {
        None
    };
    let mut locks = if locks {
        Some(crate::probes::lock::LockMaps::take(&mut tracer.ebpf)?)
    } else {
        None
    };
    let counters = tracer
        .ebpf
        .take_map("COUNTERS")
        .ok_or_else(|| LoadError::Missing("map COUNTERS".into()))?;
    let counters =
        Counters(PerCpuArray::try_from(counters).map_err(|e| LoadError::Load(e.to_string()))?);
    let attached = tracer.attached.clone();
    // The probes are attached: the first interval's vmstat counts from here.
    let started_ns = boot_ns();
    let hz = crate::source::memory::user_hz();
    let vmstat_at_start = memory
        .then(|| std::fs::read_to_string("/proc/vmstat").ok())
        .flatten()
        .map(|t| crate::aggregate::memory::parse_vmstat(&t));
    let cancel = CancellationToken::new();
    let (tx, rx) = mpsc::channel::<Msg>(16);
    let stop = cancel.clone();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut gone: Vec<u32> = Vec::new();
        let mut mem_gone: Vec<u32> = Vec::new();
        let mut cg_index = memory.then(crate::enrich::oom::CgroupIndex::new);
        let mut vmstat_start = vmstat_at_start;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let ts_ns = boot_ns();
            let reading = maps.read();
            // Gone at the previous reading: read once more since, now
            // forgotten in the kernel; the sink forgets them too.
            maps.forget(&gone);
            let lock_reading = locks.as_mut().map(|l| {
                let r = l.read();
                l.forget(&gone);
                r
            });
            let mut r = RunqReading {
                ts_ns,
                gone: std::mem::take(&mut gone),
                ..RunqReading::default()
            };
            for &pid in reading
                .procs
                .keys()
                .chain(reading.tasks.iter().map(|(_, t)| &t.tgid))
            {
                if let std::collections::hash_map::Entry::Vacant(e) = r.comms.entry(pid)
                    && let Some(name) = read_comm(&format!("/proc/{pid}/comm"))
                {
                    e.insert(name);
                }
            }
            for (tid, t) in &reading.tasks {
                if threads_of.contains(&t.tgid)
                    && let Some(name) = read_comm(&format!("/proc/{}/task/{tid}/comm", t.tgid))
                {
                    r.thread_comms.insert(*tid, name);
                }
            }
            gone = reading
                .procs
                .keys()
                .copied()
                .filter(|&p| !exists(p))
                .collect();
            let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
            (r.procs_running, r.procs_blocked) = parse_proc_stat(&stat);
            r.reading = reading;
            r.block = block.as_mut().map(|b| Box::new(b.read()));
            if let Some(m) = mem_maps.as_mut() {
                m.forget(&mem_gone);
                r.memory_gone = std::mem::take(&mut mem_gone);
                m.refresh_swap_devs();
                let mr = m.read();
                let vm = std::fs::read_to_string("/proc/vmstat").ok();
                for &pid in mr.procs.keys() {
                    if let std::collections::hash_map::Entry::Vacant(e) = r.comms.entry(pid)
                        && let Some(name) = read_comm(&format!("/proc/{pid}/comm"))
                    {
                        e.insert(name);
                    }
                }
                mem_gone = mr.procs.keys().copied().filter(|&p| !exists(p)).collect();
                let stats: Vec<(u32, (u64, u64))> = r
                    .comms
                    .keys()
                    .filter_map(|&pid| {
                        let t = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                        Some((pid, crate::aggregate::memory::pid_majflt(&t)?))
                    })
                    .collect();
                let new_pids = stats
                    .iter()
                    .filter(|(_, (_, start))| {
                        crate::aggregate::memory::started_after(*start, hz, started_ns)
                    })
                    .map(|(p, _)| *p)
                    .collect();
                let majflt = stats.into_iter().map(|(p, (n, _))| (p, n)).collect();
                let paths = match cg_index.as_mut() {
                    Some(ix) => mr
                        .cgroups
                        .keys()
                        .filter_map(|&ino| ix.path(ino).map(|p| (ino, p)))
                        .collect(),
                    None => Default::default(),
                };
                r.memory = Some(crate::aggregate::memory::MemSnapshot {
                    procs: mr.procs,
                    cgroups: mr.cgroups,
                    host: mr.host,
                    vmstat: vm.as_deref().map(crate::aggregate::memory::parse_vmstat),
                    paths,
                    majflt,
                    new_pids,
                    vmstat_start: vmstat_start.take(),
                });
            }
            r.locks = lock_reading;
            if tx.send(Msg::Runq(Box::new(r))).await.is_err()
                || tx.send(Msg::Health(counters.health())).await.is_err()
            {
                break;
            }
        }
        let h = counters.health();
        drop(tracer);
        h
    });
    cancel_on_signal(&cancel);
    Ok(Source {
        rx,
        cancel,
        done: Box::pin(async move {
            Ok(End {
                health: task.await?,
                replay: None,
            })
        }),
        attached,
    })
}
