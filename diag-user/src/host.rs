//! Host-wide numbers from procfs for `diag top`: load averages, CPU time,
//! runnable and blocked tasks, memory and swap, per-process CPU time, and
//! the run time of diag's own BPF programs.
//!
//! Pure parsers over procfs text, and a thin [`HostReader`] that reads the
//! files. Nothing here draws or aggregates.

use std::collections::HashMap;

use serde::Serialize;

/// `/proc/loadavg`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LoadAvg {
    pub one: f64,
    pub five: f64,
    pub fifteen: f64,
}

pub fn parse_loadavg(text: &str) -> Option<LoadAvg> {
    let mut it = text.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some(LoadAvg {
        one: it.next()??,
        five: it.next()??,
        fifteen: it.next()??,
    })
}

/// The aggregate `cpu` line of `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CpuTimes {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
}

impl CpuTimes {
    pub fn total(&self) -> u64 {
        self.user
            + self.nice
            + self.system
            + self.idle
            + self.iowait
            + self.irq
            + self.softirq
            + self.steal
    }
}

/// What `/proc/stat` says about the whole host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Stat {
    pub cpu: CpuTimes,
    /// Number of `cpuN` lines.
    pub cpus: u32,
    /// Tasks runnable now (vmstat's `r`).
    pub procs_running: u64,
    /// Tasks blocked on I/O now (vmstat's `b`).
    pub procs_blocked: u64,
}

pub fn parse_stat(text: &str) -> Option<Stat> {
    let mut s = Stat::default();
    let mut have_cpu = false;
    for line in text.lines() {
        let mut it = line.split_whitespace();
        match it.next() {
            Some("cpu") => {
                let v: Vec<u64> = it.map(|x| x.parse().unwrap_or(0)).collect();
                let g = |i: usize| v.get(i).copied().unwrap_or(0);
                s.cpu = CpuTimes {
                    user: g(0),
                    nice: g(1),
                    system: g(2),
                    idle: g(3),
                    iowait: g(4),
                    irq: g(5),
                    softirq: g(6),
                    steal: g(7),
                };
                have_cpu = true;
            }
            Some(c) if c.starts_with("cpu") => s.cpus += 1,
            Some("procs_running") => s.procs_running = it.next()?.parse().ok()?,
            Some("procs_blocked") => s.procs_blocked = it.next()?.parse().ok()?,
            _ => {}
        }
    }
    have_cpu.then_some(s)
}

/// The parts of `/proc/meminfo` top shows, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MemInfo {
    pub total_kb: u64,
    pub available_kb: u64,
    pub swap_total_kb: u64,
    pub swap_free_kb: u64,
}

pub fn parse_meminfo(text: &str) -> MemInfo {
    let mut m = MemInfo::default();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(k), Some(v)) = (it.next(), it.next().and_then(|v| v.parse::<u64>().ok())) else {
            continue;
        };
        match k {
            "MemTotal:" => m.total_kb = v,
            "MemAvailable:" => m.available_kb = v,
            "SwapTotal:" => m.swap_total_kb = v,
            "SwapFree:" => m.swap_free_kb = v,
            _ => {}
        }
    }
    m
}

/// Pages swapped in and out since boot (`/proc/vmstat`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Swapping {
    pub pswpin: u64,
    pub pswpout: u64,
}

pub fn parse_vmstat(text: &str) -> Swapping {
    let mut s = Swapping::default();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        match (it.next(), it.next().and_then(|v| v.parse().ok())) {
            (Some("pswpin"), Some(v)) => s.pswpin = v,
            (Some("pswpout"), Some(v)) => s.pswpout = v,
            _ => {}
        }
    }
    s
}

/// One process's CPU time, from `/proc/PID/stat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcCpu {
    pub pid: u32,
    pub comm: String,
    /// utime + stime, clock ticks.
    pub ticks: u64,
    /// Start time since boot, clock ticks: with the pid, names one process.
    pub start: u64,
    /// Filled in by the reader (procfs), cached per process.
    pub cgroup: Option<String>,
}

/// Parse `/proc/PID/stat`. The command name is in parentheses and may
/// itself contain spaces and parentheses: the last `)` ends it.
pub fn parse_pid_stat(text: &str) -> Option<ProcCpu> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text[..open].trim().parse().ok()?;
    let comm = crate::text::printable(text.get(open + 1..close)?).into_owned();
    // Fields after the comm, numbered from 3 (state) as in proc(5).
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    let field = |n: usize| rest.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some(ProcCpu {
        pid,
        comm,
        ticks: field(14)? + field(15)?,
        start: field(22)?,
        cgroup: None,
    })
}

/// Run time of BPF programs, summed (from their fdinfo).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BpfRun {
    pub programs: u32,
    pub run_time_ns: u64,
    pub run_count: u64,
}

/// `run_time_ns` and `run_cnt` of one `/proc/PID/fdinfo/FD` of a BPF
/// program (absent on kernels before 5.1: zero).
pub fn parse_prog_fdinfo(text: &str) -> (u64, u64) {
    let mut t = 0;
    let mut c = 0;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("run_time_ns:") {
            t = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("run_cnt:") {
            c = v.trim().parse().unwrap_or(0);
        }
    }
    (t, c)
}

/// vmstat's `r` and `b`: runnable and blocked (D) tasks, from /proc/stat.
pub fn parse_proc_stat(text: &str) -> (Option<u64>, Option<u64>) {
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
    };
    (get("procs_running "), get("procs_blocked "))
}

/// Everything read from procfs at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HostSample {
    /// Boot-time ns.
    pub ts_ns: u64,
    pub loadavg: Option<LoadAvg>,
    pub stat: Option<Stat>,
    pub mem: MemInfo,
    pub swap: Swapping,
    pub procs: Vec<ProcCpu>,
    /// diag's own BPF programs; None when unknown.
    pub bpf: Option<BpfRun>,
    /// Clock ticks per second (USER_HZ).
    pub hz: u64,
    /// Scheduler numbers per process over the last interval, when the
    /// scheduler programs are attached.
    pub sched: Option<Vec<crate::aggregate::sched::ProcInterval>>,
    /// Pressure stall information (PSI) over the last interval, when
    /// read.
    pub pressure: Option<crate::aggregate::pressure::PressureFrame>,
    /// Block I/O over the last interval, when the block programs are
    /// attached.
    pub block: Option<crate::aggregate::block::BlockFrame>,
    /// Memory stalls and swap over the last interval, when the memory
    /// programs are attached.
    pub memory: Option<crate::aggregate::memory::MemInterval>,
    /// Lock waits over the last interval, when the lock probes are
    /// attached (`top --locks`).
    pub locks: Option<crate::aggregate::lock::LockFrame>,
}

/// Reads [`HostSample`]s; keeps the cgroup of each process it has seen.
#[derive(Debug)]
pub struct HostReader {
    cgroups: HashMap<(u32, u64), Option<String>>,
    hz: u64,
    /// The scheduler's kernel maps, read with each sample.
    pub sched: Option<SchedFeed>,
    /// The pressure files (PSI), read with each sample.
    pub pressure: Option<crate::source::pressure::PressureFeed>,
    /// The block programs' maps, read with each sample.
    pub block: Option<crate::source::block::BlockFeed>,
    /// The memory programs' maps, read with each sample.
    pub memory: Option<crate::source::memory::MemoryFeed>,
    /// The lock maps, read with each sample (`top --locks`).
    pub locks: Option<crate::source::lock::LockFeed>,
}

/// Reads the scheduler's kernel maps each interval, as `diag runq` does.
pub struct SchedFeed {
    maps: crate::probes::sched::SchedMaps,
    agg: crate::aggregate::sched::SchedAgg,
    start_ns: u64,
    gone_last_time: Vec<u32>,
    /// Names from /proc for processes the kernel maps have none for (a
    /// process whose threads have not ended yet: long-lived kernel
    /// threads, say), read once per process.
    comms: HashMap<u32, String>,
}

impl std::fmt::Debug for SchedFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SchedFeed")
    }
}

impl SchedFeed {
    pub fn new(maps: crate::probes::sched::SchedMaps) -> Self {
        SchedFeed {
            maps,
            agg: crate::aggregate::sched::SchedAgg::new(),
            start_ns: crate::clock::boot_ns(),
            gone_last_time: Vec::new(),
            comms: HashMap::new(),
        }
    }

    /// The processes' numbers since the last reading.
    pub fn read(&mut self, now_ns: u64) -> Vec<crate::aggregate::sched::ProcInterval> {
        let r = self.maps.read();
        let reading = crate::aggregate::sched::combine(&r, now_ns);
        let iv = self.agg.update(now_ns, self.start_ns, reading);
        // Processes seen gone last time were read once more: forget them.
        self.maps.forget(&self.gone_last_time);
        self.agg.forget(&self.gone_last_time);
        for p in &self.gone_last_time {
            self.comms.remove(p);
        }
        let mut processes = iv.processes;
        for p in processes.iter_mut().filter(|p| p.comm.is_empty()) {
            if let Some(c) = self.comms.get(&p.pid) {
                p.comm.clone_from(c);
            } else if let Some(c) = read_comm(&format!("/proc/{}/comm", p.pid)) {
                p.comm.clone_from(&c);
                self.comms.insert(p.pid, c);
            }
        }
        self.gone_last_time = r
            .procs
            .keys()
            .copied()
            .filter(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
            .collect();
        processes
    }
}

/// A process's or thread's name from a /proc `comm` file, printable.
pub fn read_comm(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| crate::text::printable(s.trim_end()).into_owned())
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

impl Default for HostReader {
    fn default() -> Self {
        Self::new()
    }
}

impl HostReader {
    pub fn new() -> Self {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        HostReader {
            cgroups: HashMap::new(),
            hz: if hz > 0 { hz as u64 } else { 100 },
            sched: None,
            pressure: None,
            block: None,
            memory: None,
            locks: None,
        }
    }

    /// Read everything now. Missing files leave their part empty.
    pub fn sample(&mut self) -> HostSample {
        let ts_ns = crate::clock::boot_ns();
        let mut procs = Vec::new();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for e in dir.flatten() {
                let name = e.file_name();
                let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
                    continue;
                };
                let Some(mut p) =
                    read(&format!("/proc/{pid}/stat")).and_then(|t| parse_pid_stat(&t))
                else {
                    continue;
                };
                p.cgroup = self
                    .cgroups
                    .entry((pid, p.start))
                    .or_insert_with(|| crate::enrich::cgroup_of(pid))
                    .clone();
                procs.push(p);
            }
        }
        // Forget processes that are gone.
        let alive: std::collections::HashSet<(u32, u64)> =
            procs.iter().map(|p| (p.pid, p.start)).collect();
        self.cgroups.retain(|k, _| alive.contains(k));
        HostSample {
            ts_ns,
            loadavg: read("/proc/loadavg").and_then(|t| parse_loadavg(&t)),
            stat: read("/proc/stat").and_then(|t| parse_stat(&t)),
            mem: read("/proc/meminfo")
                .map(|t| parse_meminfo(&t))
                .unwrap_or_default(),
            swap: read("/proc/vmstat")
                .map(|t| parse_vmstat(&t))
                .unwrap_or_default(),
            procs,
            bpf: own_bpf_run(),
            hz: self.hz,
            sched: self.sched.as_mut().map(|f| f.read(ts_ns)),
            pressure: self.pressure.as_mut().map(|f| f.read()),
            block: self.block.as_mut().map(|f| f.read()),
            memory: self.memory.as_mut().map(|f| f.read()),
            locks: self.locks.as_mut().map(|f| f.read()),
        }
    }
}

/// The run time of the BPF programs this process holds, from the fdinfo of
/// its program fds. Counted by the kernel only while BPF statistics are
/// enabled (see [`BpfStats`]).
pub fn own_bpf_run() -> Option<BpfRun> {
    let mut r = BpfRun::default();
    for fd in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        if target.as_os_str() != "anon_inode:bpf-prog" {
            continue;
        }
        let Some(info) = read(&format!(
            "/proc/self/fdinfo/{}",
            fd.file_name().to_string_lossy()
        )) else {
            continue;
        };
        let (t, c) = parse_prog_fdinfo(&info);
        r.programs += 1;
        r.run_time_ns += t;
        r.run_count += c;
    }
    Some(r)
}

const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// BPF run-time statistics switched on for as long as this lives: through
/// the BPF_ENABLE_STATS syscall (the kernel switches them off when its fd
/// closes, even if diag is killed), else through the sysctl, restored on
/// drop.
#[derive(Debug)]
pub struct BpfStats {
    _fd: Option<std::os::fd::OwnedFd>,
    restore_sysctl: Option<String>,
    pub enabled: bool,
}

impl BpfStats {
    pub fn enable() -> BpfStats {
        if let Ok(fd) = aya::sys::enable_stats(aya::sys::Stats::RunTime) {
            return BpfStats {
                _fd: Some(fd),
                restore_sysctl: None,
                enabled: true,
            };
        }
        let before = read(STATS_SYSCTL).map(|s| s.trim().to_string());
        match before.as_deref() {
            Some("1") => BpfStats {
                _fd: None,
                restore_sysctl: None,
                enabled: true,
            },
            Some(old) if std::fs::write(STATS_SYSCTL, "1").is_ok() => BpfStats {
                _fd: None,
                restore_sysctl: Some(old.to_string()),
                enabled: true,
            },
            _ => BpfStats {
                _fd: None,
                restore_sysctl: None,
                enabled: false,
            },
        }
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Some(old) = self.restore_sysctl.take() {
            let _ = std::fs::write(STATS_SYSCTL, old);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_procfs_text() {
        let l = parse_loadavg("0.91 1.14 0.99 2/99 11908\n").unwrap();
        assert_eq!((l.one, l.five, l.fifteen), (0.91, 1.14, 0.99));
        assert!(parse_loadavg("garbage").is_none());
        let s = parse_stat(
            "cpu  98451 0 33920 350259 1411 0 350 35 0 0\ncpu0 1 2 3 4\ncpu1 1 2 3 4\nctxt 5\nprocs_running 3\nprocs_blocked 1\n",
        )
        .unwrap();
        assert_eq!(s.cpu.user, 98451);
        assert_eq!(s.cpu.steal, 35);
        assert_eq!(s.cpus, 2);
        assert_eq!((s.procs_running, s.procs_blocked), (3, 1));
        assert_eq!(s.cpu.total(), 98451 + 33920 + 350259 + 1411 + 350 + 35);
        assert!(parse_stat("").is_none());
        let m = parse_meminfo(
            "MemTotal:       24684092 kB\nMemFree: 1 kB\nMemAvailable:   23909484 kB\nSwapTotal: 10 kB\nSwapFree: 4 kB\n",
        );
        assert_eq!(m.total_kb, 24684092);
        assert_eq!(m.available_kb, 23909484);
        assert_eq!((m.swap_total_kb, m.swap_free_kb), (10, 4));
        let v = parse_vmstat("nr_free_pages 5\npswpin 7\npswpout 9\n");
        assert_eq!((v.pswpin, v.pswpout), (7, 9));
    }

    #[test]
    fn pid_stat_with_odd_names() {
        let line = "11913 (a b) c)) R 11905 11905 9325 0 -1 4194304 102 0 0 0 17 4 0 0 20 0 1 0 243336 3133440 418";
        let p = parse_pid_stat(line).unwrap();
        assert_eq!(p.pid, 11913);
        assert_eq!(p.comm, "a b) c)");
        assert_eq!(p.ticks, 21);
        assert_eq!(p.start, 243336);
        assert!(parse_pid_stat("12 (x) R 1").is_none());
        assert!(parse_pid_stat("").is_none());
    }

    #[test]
    fn prog_fdinfo() {
        let t = "pos:\t0\nflags:\t02000002\nprog_type:\t5\nprog_id:\t42\nrun_time_ns:\t123456\nrun_cnt:\t78\n";
        assert_eq!(parse_prog_fdinfo(t), (123456, 78));
        assert_eq!(parse_prog_fdinfo("prog_id: 1\n"), (0, 0));
    }

    #[test]
    fn reads_this_host() {
        let s = HostReader::new().sample();
        assert!(s.stat.is_some() && s.loadavg.is_some());
        assert!(s.procs.iter().any(|p| p.pid == std::process::id()));
        assert!(s.mem.total_kb > 0);
    }
}
