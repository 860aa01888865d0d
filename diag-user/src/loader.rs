//! Environment checks, loading the embedded kernel object, attaching.
//! Detaching is dropping the [`Tracer`]: diag pins nothing, so when it
//! exits (or is killed) the kernel releases every program and map.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use aya::{Ebpf, EbpfLoader};
use diag_common::{RingConfig, sched::SchedConfig, tcp::InetSockSetStateLayout};

use crate::{
    cli::{CheckArgs, ProbeArgs},
    error::{EnvError, LoadError, flatten},
    probes, tracefs,
};

/// The kernel programs, built by build.rs and embedded in the binary.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/diag.bpf.o"));

/// What the checks learned, needed to load.
#[derive(Debug, Clone)]
pub struct Env {
    pub tracefs: PathBuf,
    pub tcp_layout: InetSockSetStateLayout,
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
    let release = kernel_release();
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
        Ok((p, true)) => Ok(format!("{} (diag mounted it)", p.display())),
        Ok((p, false)) => Ok(p.display().to_string()),
        Err(e) => Err(clone_env_error(e)),
    };
    lines.push(CheckLine {
        name: "tracefs",
        result: tracefs_line,
    });
    if let Ok((path, _)) = &mounted {
        lines.push(CheckLine {
            name: "tracepoints",
            result: probes::tcp::layout(path).map(|_| probes::tcp::TRACEPOINT_NAMES.join(", ")),
        });
    }
    lines.push(CheckLine {
        name: "scheduler",
        result: probes::sched::layout(&args.btf, 0)
            .map(|_| "task_struct offsets from BTF; tp_btf sched_switch, sched_wakeup".into()),
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
        other => EnvError::TracepointFormat {
            name: "tracefs".into(),
            why: other.to_string(),
        },
    }
}

/// `diag check`.
pub fn run_check(args: &CheckArgs) -> ExitCode {
    let lines = check_all(&args.probe);
    let mut ok = true;
    for l in &lines {
        match &l.result {
            Ok(detail) => println!("OK    {:<12} {detail}", l.name),
            Err(e) => {
                ok = false;
                println!("FAIL  {:<12} {e}", l.name);
            }
        }
    }
    if ok {
        println!("diag can run on this host.");
        ExitCode::SUCCESS
    } else {
        println!("diag cannot run on this host until the failures above are fixed.");
        ExitCode::FAILURE
    }
}

/// The checks every tracing subcommand runs first: the first failure is
/// the error the user sees.
pub fn require(args: &ProbeArgs) -> Result<Env, EnvError> {
    check_privileges()?;
    check_kernel()?;
    check_btf(&args.btf)?;
    let (tracefs, _) = tracefs::ensure_mounted(&args.tracefs)?;
    let tcp_layout = probes::tcp::layout(&tracefs)?;
    check_ringbuf()?;
    Ok(Env {
        tracefs,
        tcp_layout,
    })
}

/// Loaded and attached kernel programs. Dropping it detaches them.
pub struct Tracer {
    pub ebpf: Ebpf,
    /// `category:name` of every attached tracepoint.
    pub attached: Vec<&'static str>,
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

/// Which probe families a command needs. Programs of the others are not
/// loaded, so users do not pay for what they do not look at.
#[derive(Debug, Clone, Copy)]
pub struct Families {
    pub tcp: bool,
    /// The scheduler's configuration (task_struct offsets, threshold).
    pub sched: Option<SchedConfig>,
}

impl Default for Families {
    fn default() -> Self {
        Families {
            tcp: true,
            sched: None,
        }
    }
}

/// Load the embedded object with the layouts learned from this kernel and
/// attach the TCP programs.
pub fn load(env: &Env, args: &ProbeArgs) -> Result<Tracer, LoadError> {
    load_families(env, args, &Families::default())
}

/// Load the embedded object and attach the programs of `families`.
pub fn load_families(
    env: &Env,
    args: &ProbeArgs,
    families: &Families,
) -> Result<Tracer, LoadError> {
    raise_memlock();
    let ring_bytes = args.ring_mib * 1024 * 1024;
    let ring = RingConfig {
        wakeup_bytes: u64::from(ring_bytes / 4),
    };
    let sched = families.sched.unwrap_or(SchedConfig::zeroed());
    let mut loader = EbpfLoader::new();
    loader
        .override_global("INET_SOCK_SET_STATE", &env.tcp_layout, true)
        .override_global("RING_CONFIG", &ring, true)
        .override_global("SCHED_CONFIG", &sched, true)
        .map_max_entries("EVENTS", ring_bytes);
    if families.sched.is_none() {
        for map in probes::sched::MAPS {
            loader.map_max_entries(map, 1);
        }
    }
    let mut ebpf = loader
        .load(OBJECT)
        .map_err(|e| LoadError::Load(flatten(&e)))?;
    let mut attached = Vec::new();
    if families.tcp {
        // Attach first, then seed: a listener opened in between is seen by
        // the program, and seeding never overwrites what it recorded.
        probes::tcp::attach(&mut ebpf, &mut attached)?;
        probes::tcp::seed_listeners(&mut ebpf)?;
    }
    if families.sched.is_some() {
        probes::sched::attach(&mut ebpf, &args.btf, &mut attached)?;
    }
    Ok(Tracer { ebpf, attached })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases() {
        assert_eq!(parse_release("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(parse_release("5.4.0"), Some((5, 4)));
        assert_eq!(parse_release("garbage"), None);
        assert!((5, 4) < (5, 8) && (6, 1) >= (5, 8));
    }
}
