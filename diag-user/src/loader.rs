//! Environment checks, loading the embedded kernel object, attaching.
//! Detaching is dropping the [`Tracer`]: diag pins nothing, so when it
//! exits (or is killed) the kernel releases every program and map.

use std::path::{Path, PathBuf};

use aya::{Btf as AyaBtf, Ebpf, EbpfLoader};
use diag_common::{
    RingConfig,
    block::BlockConfig,
    oom::{MarkVictimLayout, MemcgLayout},
    proc::ProcConfig,
    sched::SchedConfig,
    tcp::{InetSockSetStateLayout, SockBtfLayout, TcpSockLayout},
};

use crate::{
    cli::{EventClass, ProbeArgs},
    error::{EnvError, LoadError, flatten},
    probes, tracefs,
};

/// The kernel programs, built by build.rs and embedded in the binary.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/diag.bpf.o"));

/// What the checks learned, needed to load.
#[derive(Debug, Clone)]
pub struct Env {
    pub tracefs: PathBuf,
    /// tracefs as diag mounted it (None: it was there): unmounted when
    /// the last copy of the environment is gone, at exit.
    pub tracefs_mount: Option<std::sync::Arc<tracefs::Mounted>>,
    /// TCP layouts, when TCP events (tcp, reset, retrans) were asked for.
    pub tcp: Option<probes::tcp::Layouts>,
    /// OOM layouts, when OOM events were asked for.
    pub oom: Option<probes::oom::OomLayouts>,
    /// The scheduler's configuration (task_struct offsets, stall
    /// threshold), when stalls or run-queue latency were asked for.
    pub sched: Option<SchedConfig>,
    /// task_struct offsets for process exits, when TCP events, stalls or
    /// exits were asked for: aggregates then tell a process from a later
    /// one with the same pid.
    pub proc: Option<ProcConfig>,
    /// Block I/O offsets (struct request, from BTF) and the slow-request
    /// threshold, when slow I/O events were asked for or a view reads
    /// the block maps ([`Env::want_block`]).
    pub block: Option<BlockConfig>,
    /// The memory programs' configuration, when memory stalls were asked
    /// for.
    pub memory: Option<diag_common::memory::MemConfig>,
    /// Futex waits and kernel lock contention, when lock events or a
    /// lock view were asked for.
    pub lock: Option<diag_common::lock::LockConfig>,
}

impl Env {
    /// This view reads the block I/O maps (per process and device):
    /// attach the block programs even without slow-I/O events.
    pub fn want_block(&mut self, args: &ProbeArgs) -> Result<(), EnvError> {
        if self.block.is_none() {
            self.block = Some(probes::block::layout(&args.btf, u64::MAX)?);
        }
        Ok(())
    }

    /// This view reads the per-process map of exited threads (and clears
    /// it): have the kernel fill it. Others leave it out, so that it never
    /// fills up with processes nobody reads.
    pub fn keep_sched_procs(&mut self) {
        if let Some(c) = self.sched.as_mut() {
            c.keep_procs = 1;
        }
    }

    /// This view reads the memory maps (per process and per memory
    /// cgroup, which the kernel then fills) and shows swap-ins and
    /// swap-outs: attach the block-layer programs too (they see every bio
    /// of the host). Others (tail) get stall events only.
    pub fn with_swap(&mut self) {
        if let Some(c) = self.memory.as_mut() {
            c.swap = 1;
            c.keep_stats = 1;
        }
    }
}

/// The outcome of one check, for `diag check`.
pub struct CheckLine {
    pub name: &'static str,
    pub result: Result<String, EnvError>,
}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

fn effective_caps() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0)
}

fn check_privileges() -> Result<String, EnvError> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let caps = effective_caps();
    let has = |c: u32| caps & (1u64 << c) != 0;
    if euid == 0 && has(CAP_SYS_ADMIN) {
        Ok("running as root".into())
    } else if has(CAP_BPF) && has(CAP_PERFMON) {
        Ok("CAP_BPF and CAP_PERFMON".into())
    } else if has(CAP_SYS_ADMIN) {
        Ok("CAP_SYS_ADMIN".into())
    } else {
        Err(EnvError::NotPrivileged)
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// (major, minor) of a release string such as `6.18.44-fc`.
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

fn check_kernel() -> Result<String, EnvError> {
    kernel_supported(kernel_release())
}

/// A kernel `release` diag runs on (5.8 and later: the BPF ring buffer).
fn kernel_supported(release: String) -> Result<String, EnvError> {
    match parse_release(&release) {
        Some(v) if v >= (5, 8) => Ok(release),
        _ => Err(EnvError::KernelTooOld(release)),
    }
}

fn check_btf(path: &Path) -> Result<String, EnvError> {
    match std::fs::metadata(path) {
        Ok(m) if m.len() > 0 => Ok(format!("{} ({} KiB)", path.display(), m.len() / 1024)),
        _ => Err(EnvError::NoBtf(path.display().to_string())),
    }
}

fn check_ringbuf() -> Result<String, EnvError> {
    match aya::sys::is_map_supported(aya::maps::MapType::RingBuf) {
        Ok(true) => Ok("supported".into()),
        Ok(false) => Err(EnvError::NoRingBuf(
            "the kernel does not know the map type".into(),
        )),
        Err(e) => Err(EnvError::NoRingBuf(flatten(&e))),
    }
}

/// Run every check, for `diag check`: later checks run even when earlier
/// ones fail, where they can.
pub fn check_all(args: &ProbeArgs) -> Vec<CheckLine> {
    let mut lines = vec![
        CheckLine {
            name: "privileges",
            result: check_privileges(),
        },
        CheckLine {
            name: "kernel",
            result: check_kernel(),
        },
        CheckLine {
            name: "BTF",
            result: check_btf(&args.btf),
        },
    ];
    let mounted = tracefs::ensure_mounted(&args.tracefs);
    let tracefs_line = match &mounted {
        Ok((p, Some(_))) => Ok(format!(
            "{} (diag mounted it, and unmounts it)",
            p.display()
        )),
        Ok((p, None)) => Ok(p.display().to_string()),
        Err(e) => Err(clone_env_error(e)),
    };
    lines.push(CheckLine {
        name: "tracefs",
        result: tracefs_line,
    });
    if let Ok((path, _)) = &mounted {
        lines.push(CheckLine {
            name: "tracepoints",
            result: probes::tcp::layouts(path, &args.btf).map(|l| {
                let names = probes::tcp::TRACEPOINT_NAMES.join(", ");
                let holders: Vec<&str> =
                    probes::tcp::HOLDER_PROGRAMS.iter().map(|p| p.2).collect();
                let owners = match &l.owner {
                    Ok(o) => format!(
                        "; owners: {} (reads and writes; network namespaces, from BTF){}",
                        holders.join(", "),
                        if o.valid == 0 {
                            "; no syscalls:sys_exit_accept4 for --accept-probe"
                        } else {
                            ""
                        }
                    ),
                    Err(why) => format!(
                        "; no owner probes ({why}): connections stay with the listener's owner until reconciled"
                    ),
                };
                let drops = match &l.drop {
                    Ok(d) => format!(
                        "; listen queues: {}{}",
                        if d.kfree_valid != 0 {
                            "skb:kfree_skb (TCP_LISTEN_OVERFLOW)"
                        } else {
                            "no watched skb:kfree_skb reason"
                        },
                        if d.syn_valid != 0 {
                            ", skb:consume_skb (SYNs, tcp_rcv_state_process from kallsyms)"
                        } else {
                            ", no SYN drops (tcp_rcv_state_process not in kallsyms)"
                        }
                    ),
                    Err(why) => format!("; no listen-queue drops ({why})"),
                };
                let drops = match &l.close {
                    Ok(_) => format!("{drops}; close summaries: struct tcp_sock from BTF"),
                    Err(why) => format!("{drops}; no close summaries ({why})"),
                };
                match l.state_btf {
                    Ok(_) => {
                        format!("{names} (state changes by tp_btf, struct sock from BTF){owners}{drops}")
                    }
                    Err(why) => {
                        format!("{names} (state changes by the classic tracepoint: {why}){owners}{drops}")
                    }
                }
            }),
        });
        lines.push(CheckLine {
            name: "oom",
            result: probes::oom::layouts(path, &args.btf).map(|(_, memcg)| match memcg {
                Ok(()) => format!(
                    "{} (+ tp_btf; memory cgroups from BTF)",
                    probes::oom::TRACEPOINT_NAMES.join(", ")
                ),
                Err(why) => format!(
                    "{} (kills are reported, but without memory cgroup facts from the kernel: {why})",
                    probes::oom::TRACEPOINT_NAMES.join(", ")
                ),
            }),
        });
    }
    lines.push(CheckLine {
        name: "exits",
        result: probes::proc::config(&args.btf).map(|c| {
            format!(
                "tp_btf sched_process_exit; a process ends {}; start time from task_struct.{}",
                if c.has_group_dead == 1 {
                    "with its last thread (group_dead)"
                } else {
                    "with its group leader"
                },
                if c.start_is_boottime == 1 {
                    "start_boottime"
                } else {
                    "start_time"
                }
            )
        }),
    });
    if let Ok((path, _)) = &mounted {
        lines.push(CheckLine {
            name: "locks",
            result: probes::lock::layout(path, &args.btf, 0).map(|c| {
                format!(
                    "syscalls:sys_enter_futex/sys_exit_futex{}{}, tp_btf sched_waking (wakers), lock:contention_begin/end (attached only by the lock views)",
                    if c.wait_uaddr != diag_common::tcp::NO_FIELD { ", futex_wait" } else { "" },
                    if c.waitv_waiters != diag_common::tcp::NO_FIELD { ", futex_waitv" } else { "" },
                )
            }),
        });
    }
    lines.push(CheckLine {
        name: "block I/O",
        result: probes::block::layout(&args.btf, u64::MAX).map(|_| {
            "struct request offsets from BTF; tp_btf block_io_start, block_rq_complete".into()
        }),
    });
    lines.push(CheckLine {
        name: "scheduler",
        result: probes::sched::layout(&args.btf, 0)
            .map(|_| "task_struct offsets from BTF; tp_btf sched_switch, sched_wakeup_new".into()),
    });
    lines.push(CheckLine {
        name: "memory",
        result: probes::memory::layout(&args.btf, 0, true).map(|c| {
            format!(
                "tp_btf vmscan (reclaim, LRU scans, throttling), compaction, block_bio_queue/complete on swap devices; struct offsets from BTF{}",
                if c.memcg.valid == 0 {
                    " (no memory cgroup layout: per-cgroup figures missing)"
                } else {
                    ""
                }
            )
        }),
    });
    let privileged = lines[0].result.is_ok();
    if privileged {
        lines.push(CheckLine {
            name: "ring buffer",
            result: check_ringbuf(),
        });
    }
    lines
}

fn clone_env_error(e: &EnvError) -> EnvError {
    match e {
        EnvError::Tracefs { path, why } => EnvError::Tracefs {
            path: path.clone(),
            why: why.clone(),
        },
        EnvError::TracefsRefused { path, why } => EnvError::TracefsRefused {
            path: path.clone(),
            why: why.clone(),
        },
        EnvError::TracefsUnreadable { path, mode } => EnvError::TracefsUnreadable {
            path: path.clone(),
            mode: *mode,
        },
        other => EnvError::TracepointFormat {
            name: "tracefs".into(),
            why: other.to_string(),
        },
    }
}

/// The checks every tracing subcommand runs first: the first failure is
/// the error the user sees.
pub fn require(args: &ProbeArgs) -> Result<Env, EnvError> {
    require_for(args, &[EventClass::Tcp, EventClass::Close])
}

/// [`require`] for the given event classes only.
pub fn require_for(args: &ProbeArgs, events: &[EventClass]) -> Result<Env, EnvError> {
    check_privileges()?;
    check_kernel()?;
    check_btf(&args.btf)?;
    let (tracefs, tracefs_mount) = tracefs::ensure_mounted(&args.tracefs)?;
    let wants_tcp = events.iter().any(|e| {
        matches!(
            e,
            EventClass::Tcp
                | EventClass::Reset
                | EventClass::Retrans
                | EventClass::Drop
                | EventClass::Close
        )
    });
    let tcp = if wants_tcp {
        let mut l = probes::tcp::layouts(&tracefs, &args.btf)?;
        if args.classic_tcp {
            l.state_btf = Err("--classic-tcp".into());
        }
        // Close summaries cost a ring-buffer record per connection: sent
        // only when asked for (tail --events close, record, conns, serve).
        if !events.contains(&EventClass::Close) && l.close.is_ok() {
            l.close = Err("not asked for (--events close)".into());
        }
        Some(l)
    } else {
        None
    };
    let oom = if events.contains(&EventClass::Oom) {
        Some(probes::oom::layouts(&tracefs, &args.btf)?.0)
    } else {
        None
    };
    let sched = if events.contains(&EventClass::Stall) {
        let threshold = u64::try_from(args.stall_threshold.as_nanos()).unwrap_or(u64::MAX);
        Some(probes::sched::layout(&args.btf, threshold)?)
    } else {
        None
    };
    let proc = if EventClass::with_exits(events).contains(&EventClass::Exit) {
        Some(probes::proc::config(&args.btf)?)
    } else {
        None
    };
    let block = if events.contains(&EventClass::Io) {
        let threshold = u64::try_from(args.io_threshold.as_nanos()).unwrap_or(u64::MAX);
        Some(probes::block::layout(&args.btf, threshold)?)
    } else {
        None
    };
    let memory = if events.contains(&EventClass::Memstall) {
        let threshold = u64::try_from(args.mem_stall_threshold.as_nanos()).unwrap_or(u64::MAX);
        Some(probes::memory::layout(&args.btf, threshold, false)?)
    } else {
        None
    };
    let lock = if events.contains(&EventClass::Lock) {
        let threshold = u64::try_from(args.lock_threshold.as_nanos()).unwrap_or(u64::MAX);
        Some(probes::lock::layout(&tracefs, &args.btf, threshold)?)
    } else {
        None
    };
    check_ringbuf()?;
    Ok(Env {
        block,
        tracefs,
        tracefs_mount,
        tcp,
        oom,
        sched,
        proc,
        memory,
        lock,
    })
}

/// Loaded and attached kernel programs. Dropping it detaches them.
pub struct Tracer {
    pub ebpf: Ebpf,
    /// `category:name` of every attached tracepoint.
    pub attached: Vec<&'static str>,
    /// The kernel programs' own log (`--kernel-log`).
    pub logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

fn raise_memlock() {
    // Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: valid pointer to an rlimit.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) };
}

/// Load the embedded object with the layouts learned from this kernel and
/// attach the programs of the families `env` has. Programs and maps of the
/// others stay out of the kernel: users pay only for what they look at.
pub fn load(env: &Env, args: &ProbeArgs) -> Result<Tracer, LoadError> {
    raise_memlock();
    let ring_bytes = args.ring_mib * 1024 * 1024;
    let ring = RingConfig {
        wakeup_bytes: u64::from(ring_bytes / 4),
    };
    let mut sched = env.sched.unwrap_or(SchedConfig::zeroed());
    let mut proc = env.proc.unwrap_or(ProcConfig::zeroed());
    let mut block = env.block.unwrap_or(BlockConfig::zeroed());
    let mut memory = env
        .memory
        .unwrap_or(diag_common::memory::MemConfig::zeroed());
    let mut lock = env.lock.unwrap_or(diag_common::lock::LockConfig::zeroed());
    let oom = env.oom.unwrap_or(probes::oom::OomLayouts {
        mark_victim: MarkVictimLayout::zeroed(),
        memcg: MemcgLayout::zeroed(),
    });
    let no_tcp = probes::tcp::Layouts {
        state: InetSockSetStateLayout::zeroed(),
        state_btf: Err("no TCP probes".into()),
        sock: vec![TcpSockLayout::zeroed(); probes::tcp::SOCK_TRACEPOINTS.len()],
        rst_reasons: Vec::new(),
        owner: Err("no TCP probes".into()),
        drop: Err("no TCP probes".into()),
        close: Err("no TCP probes".into()),
        drop_reasons: Vec::new(),
    };
    let mut tcp = env.tcp.as_ref().unwrap_or(&no_tcp).clone();
    if args.empty_programs {
        // The programs see no layout and return at once.
        sched.valid = 0;
        proc.valid = 0;
        block.valid = 0;
        memory.valid = 0;
        lock.valid = 0;
        tcp.state.valid = 0;
        for l in &mut tcp.sock {
            l.valid = 0;
        }
        if let Ok(d) = &mut tcp.drop {
            d.kfree_valid = 0;
            d.syn_valid = 0;
        }
    }
    if args.no_drop_reasons
        && let Ok(d) = &mut tcp.drop
    {
        d.sock_valid = 0;
        d.kfree_valid = u32::from(d.reasons[0] != diag_common::tcp::NO_FIELD);
    }
    let sock_btf = match &tcp.state_btf {
        Ok(l) if !args.empty_programs => *l,
        _ => SockBtfLayout::zeroed(),
    };
    let kernel_log = u32::from(args.kernel_log);
    let owner_layout = match &tcp.owner {
        Ok(l) if !args.empty_programs => *l,
        _ => diag_common::tcp::OwnerLayout::zeroed(),
    };
    let close_layout = match &tcp.close {
        Ok(l) if !args.empty_programs => *l,
        _ => diag_common::tcp::TcpCloseLayout::zeroed(),
    };
    let drop_layout = match &tcp.drop {
        Ok(l) => *l,
        Err(_) => diag_common::tcp::TcpDropLayout::zeroed(),
    };
    let mut loader = EbpfLoader::new();
    loader
        .override_global("INET_SOCK_SET_STATE", &tcp.state, true)
        .override_global("SOCK_BTF", &sock_btf, true)
        .override_global("OWNER_LAYOUT", &owner_layout, true)
        .override_global("TCP_DROP", &drop_layout, true)
        .override_global("TCP_CLOSE", &close_layout, true)
        .override_global("MARK_VICTIM", &oom.mark_victim, true)
        .override_global("MEMCG_LAYOUT", &oom.memcg, true)
        .override_global("RING_CONFIG", &ring, true)
        .override_global("SCHED_CONFIG", &sched, true)
        .override_global("PROC_CONFIG", &proc, true)
        .override_global("BLOCK_CONFIG", &block, true)
        .override_global("MEM_CONFIG", &memory, true)
        .override_global("LOCK_CONFIG", &lock, true)
        .override_global("KERNEL_LOG", &kernel_log, true)
        .map_max_entries("EVENTS", ring_bytes);
    for ((_, global), layout) in probes::tcp::SOCK_TRACEPOINTS.iter().zip(&tcp.sock) {
        loader.override_global(global, layout, true);
    }
    if env.sched.is_none() {
        // Unused maps take no memory.
        for map in probes::sched::MAPS {
            loader.map_max_entries(map, 1);
        }
    } else if sched.keep_procs == 0 {
        loader.map_max_entries(probes::sched::PROCS_MAP, 1);
    }
    if env.block.is_none() {
        for map in probes::block::MAPS {
            loader.map_max_entries(map, 1);
        }
    }
    if env.memory.is_none() {
        for map in probes::memory::MAPS {
            loader.map_max_entries(map, 1);
        }
    } else {
        if memory.swap == 0 {
            loader.map_max_entries("MEM_BIOS", 1);
        }
        if memory.keep_stats == 0 {
            loader.map_max_entries("MEM_PROCS", 1);
            loader.map_max_entries("MEM_CGROUPS", 1);
        }
    }
    if env.lock.is_none() {
        for map in probes::lock::MAPS {
            loader.map_max_entries(map, 1);
        }
    }
    let mut ebpf = loader
        .load(OBJECT)
        .map_err(|e| LoadError::Load(flatten(&e)))?;
    let mut attached = Vec::new();
    // The kernel's BTF for the tp_btf programs, parsed once for all of them.
    let wants_btf = env.sched.is_some()
        || env.block.is_some()
        || env.memory.is_some()
        || env.proc.is_some()
        || env.lock.is_some()
        || env.oom.as_ref().is_some_and(|o| o.memcg.valid != 0)
        || env
            .tcp
            .as_ref()
            .is_some_and(|t| t.state_btf.is_ok() || t.owner.is_ok());
    let kernel_btf = if wants_btf {
        AyaBtf::parse_file(&args.btf, aya::Endianness::default())
            .map_err(|e| LoadError::Load(format!("{}: {}", args.btf.display(), flatten(&e))))
    } else {
        Err(LoadError::Load("the kernel's BTF is not needed".into()))
    };
    // Attach first, then seed: a listener opened in between is seen by the
    // program, and seeding never overwrites what the program recorded.
    // Process exits first: a ProcExit then precedes, in the one ring
    // buffer, every event of a later process with the same pid.
    if env.proc.is_some() {
        let btf = kernel_btf
            .as_ref()
            .map_err(|e| LoadError::Load(e.to_string()))?;
        probes::proc::attach(&mut ebpf, btf, &mut attached)?;
    }
    if let Some(tcp) = &env.tcp {
        probes::tcp::attach(
            &mut ebpf,
            tcp,
            kernel_btf.as_ref().ok(),
            args.accept_probe,
            &mut attached,
        )?;
        probes::tcp::seed_listeners(&mut ebpf)?;
        if tcp.drop.as_ref().is_ok_and(|d| d.syn_valid != 0)
            && let Err(why) = probes::tcp::seed_listener_socks(&mut ebpf, kernel_btf.as_ref().ok())
        {
            tracing::warn!("note: SYNs dropped at listeners older than diag are not seen ({why})");
        }
    }
    if let Some(oom) = &env.oom {
        probes::oom::attach(&mut ebpf, oom, kernel_btf.as_ref(), &mut attached)?;
    }
    if env.sched.is_some() {
        let btf = kernel_btf
            .as_ref()
            .map_err(|e| LoadError::Load(e.to_string()))?;
        probes::sched::attach(&mut ebpf, btf, &mut attached)?;
    }
    if env.block.is_some() {
        let btf = kernel_btf
            .as_ref()
            .map_err(|e| LoadError::Load(e.to_string()))?;
        probes::block::attach(&mut ebpf, btf, &mut attached)?;
    }
    if let Some(m) = &env.memory {
        let btf = kernel_btf
            .as_ref()
            .map_err(|e| LoadError::Load(e.to_string()))?;
        probes::memory::attach(&mut ebpf, btf, m.swap != 0, &mut attached)?;
    }
    if let Some(l) = &env.lock {
        let btf = kernel_btf
            .as_ref()
            .map_err(|e| LoadError::Load(e.to_string()))?;
        probes::lock::attach(&mut ebpf, l, btf, &mut attached)?;
    }
    if wants_btf {
        // Parsing the kernel's BTF took tens of MiB that are free now: give
        // them back to the system.
        drop(kernel_btf);
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim has no preconditions.
        unsafe {
            libc::malloc_trim(0);
        }
    }
    // Kernel-side diagnostics, when asked for: read by the live source.
    let logger =
        if args.kernel_log {
            Some(aya_log::EbpfLogger::init(&mut ebpf).map_err(|e| {
                LoadError::Load(format!("the kernel programs' log: {}", flatten(&e)))
            })?)
        } else {
            None
        };
    Ok(Tracer {
        ebpf,
        attached,
        logger,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases() {
        assert_eq!(parse_release("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(parse_release("5.4.0"), Some((5, 4)));
        assert_eq!(parse_release("garbage"), None);
        let ok = |r: &str| kernel_supported(r.to_string()).is_ok();
        assert!(ok("5.8.0") && ok("5.10.0-21-amd64") && ok("6.1.0") && ok("6.18.44-fc-v657"));
        assert!(!ok("5.4.0-150-generic") && !ok("4.19.0") && !ok("garbage"));
        assert!(
            kernel_supported("5.7.19".into())
                .unwrap_err()
                .to_string()
                .contains("5.7.19")
        );
    }
}
