//! Locks: futex waits (system-call tracepoints), their wakers
//! (`tp_btf` `sched_waking`) and kernel lock contention (`tp_btf`
//! `contention_begin/end`), and the maps they fill.
//!
//! Any system-call tracepoint makes every system call of every task a
//! little slower (the kernel takes its slow path for all of them): these
//! programs attach only in the views that show locks (`tail --events
//! lock`, `threads --probe`, `runq --locks`, `top --locks`, `serve
//! --locks`, `record --events lock`).

use std::path::Path;

use aya::{
    Btf, Ebpf,
    maps::{HashMap, MapData},
    programs::TracePoint,
};
use diag_common::{
    lock::{LockConfig, LockKey, LockProc, LockStat},
    tcp::NO_FIELD,
};

pub use crate::aggregate::lock::LockReading;
use crate::{
    btf,
    error::{EnvError, LoadError, flatten},
    tracefs::Format,
};

/// For messages and `diag check`.
pub const TRACEPOINT_NAMES: &[&str] = &[
    "syscalls:sys_enter_futex",
    "syscalls:sys_exit_futex",
    "syscalls:sys_enter_futex_wait",
    "syscalls:sys_exit_futex_wait",
    "syscalls:sys_enter_futex_waitv",
    "syscalls:sys_exit_futex_waitv",
    "tp_btf:sched_waking",
    "tp_btf:sched_process_exit",
    "tp_btf:contention_begin",
    "tp_btf:contention_end",
];

/// Maps only the lock programs use: shrunk to one entry when they are not
/// attached.
pub const MAPS: &[&str] = &["LOCK_WAITING", "LOCK_STATS", "LOCK_PROCS", "LOCK_KWAITING"];

/// The offsets on the running kernel (tracefs formats, BTF).
pub fn layout(tracefs: &Path, btf_path: &Path, threshold_ns: u64) -> Result<LockConfig, EnvError> {
    let what = "futex waits";
    let enter = Format::read(tracefs, "syscalls", "sys_enter_futex", what)?;
    let exit = Format::read(tracefs, "syscalls", "sys_exit_futex", what)?;
    let bad = |name: &str, why: String| EnvError::TracepointFormat {
        name: name.into(),
        why,
    };
    // Optional: futex_wait(2) is Linux 6.7+, futex_waitv(2) 5.16+.
    let opt = |name: &str, field: &str| -> u32 {
        Format::read(tracefs, "syscalls", name, what)
            .ok()
            .and_then(|f| f.offset(field, 8).ok())
            .unwrap_or(NO_FIELD)
    };
    let b = btf::Btf::from_file(btf_path).map_err(|e| bad("task_struct (kernel BTF)", e))?;
    let task = |name: &str| {
        b.sized_member("task_struct", name, 4)
            .map_err(|e| bad("task_struct (kernel BTF)", e))
    };
    Ok(LockConfig {
        valid: 1,
        futex_uaddr: enter
            .offset("uaddr", 8)
            .map_err(|e| bad("syscalls:sys_enter_futex", e))?,
        futex_op: enter
            .offset("op", 8)
            .map_err(|e| bad("syscalls:sys_enter_futex", e))?,
        wait_uaddr: opt("sys_enter_futex_wait", "uaddr"),
        waitv_waiters: opt("sys_enter_futex_waitv", "waiters"),
        exit_ret: exit
            .offset("ret", 8)
            .map_err(|e| bad("syscalls:sys_exit_futex", e))?,
        task_pid: task("pid")?,
        task_tgid: task("tgid")?,
        threshold_ns,
        self_tgid: std::process::id(),
        _pad: 0,
    })
}

fn attach_syscall(
    ebpf: &mut Ebpf,
    prog: &str,
    names: &[&'static str],
    attached: &mut Vec<&'static str>,
) -> Result<(), LoadError> {
    let program: &mut TracePoint = ebpf
        .program_mut(prog)
        .ok_or_else(|| LoadError::Missing(format!("program {prog}")))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| LoadError::Load(flatten(&e)))?;
    program
        .load()
        .map_err(|e| LoadError::Load(format!("{prog}: {}", flatten(&e))))?;
    for name in names {
        program
            .attach("syscalls", name)
            .map_err(|e| LoadError::Attach {
                tracepoint: format!("syscalls:{name}"),
                why: flatten(&e),
            })?;
        attached.push(match *name {
            "sys_enter_futex" => "syscalls:sys_enter_futex",
            "sys_exit_futex" => "syscalls:sys_exit_futex",
            "sys_enter_futex_wait" => "syscalls:sys_enter_futex_wait",
            "sys_exit_futex_wait" => "syscalls:sys_exit_futex_wait",
            "sys_enter_futex_waitv" => "syscalls:sys_enter_futex_waitv",
            _ => "syscalls:sys_exit_futex_waitv",
        });
    }
    Ok(())
}

/// Load and attach the lock programs: the waker and exit programs first,
/// then the exits, then the entries (so no noted wait misses its end).
/// Kernel lock contention only where the kernel has the tracepoints.
pub fn attach(
    ebpf: &mut Ebpf,
    config: &LockConfig,
    btf: &Btf,
    attached: &mut Vec<&'static str>,
) -> Result<(), LoadError> {
    super::attach_tp_btf(
        ebpf,
        "lock_task_exit",
        "sched_process_exit",
        btf,
        "tp_btf:sched_process_exit",
    )?;
    attached.push("tp_btf:sched_process_exit");
    super::attach_tp_btf(
        ebpf,
        "lock_waking",
        "sched_waking",
        btf,
        "tp_btf:sched_waking",
    )?;
    attached.push("tp_btf:sched_waking");
    let mut exits = vec!["sys_exit_futex"];
    if config.wait_uaddr != NO_FIELD {
        exits.push("sys_exit_futex_wait");
    }
    if config.waitv_waiters != NO_FIELD {
        exits.push("sys_exit_futex_waitv");
    }
    attach_syscall(ebpf, "lock_exit_futex", &exits, attached)?;
    attach_syscall(ebpf, "lock_enter_futex", &["sys_enter_futex"], attached)?;
    if config.wait_uaddr != NO_FIELD {
        attach_syscall(
            ebpf,
            "lock_enter_futex_wait",
            &["sys_enter_futex_wait"],
            attached,
        )?;
    }
    if config.waitv_waiters != NO_FIELD {
        attach_syscall(
            ebpf,
            "lock_enter_futex_waitv",
            &["sys_enter_futex_waitv"],
            attached,
        )?;
    }
    for (prog, tp, name) in [
        (
            "lock_contention_begin",
            "contention_begin",
            "tp_btf:contention_begin",
        ),
        (
            "lock_contention_end",
            "contention_end",
            "tp_btf:contention_end",
        ),
    ] {
        match super::attach_tp_btf(ebpf, prog, tp, btf, name) {
            Ok(()) => attached.push(name),
            Err(e) => tracing::warn!("note: no kernel lock contention ({e})"),
        }
    }
    Ok(())
}

/// Handles on the lock maps, for readers.
pub struct LockMaps {
    stats: HashMap<MapData, LockKey, LockStat>,
    procs: HashMap<MapData, u32, LockProc>,
}

impl LockMaps {
    pub fn take(ebpf: &mut Ebpf) -> Result<LockMaps, LoadError> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| LoadError::Missing(format!("map {name}")))
        };
        let stats =
            HashMap::try_from(take("LOCK_STATS")?).map_err(|e| LoadError::Load(e.to_string()))?;
        let procs =
            HashMap::try_from(take("LOCK_PROCS")?).map_err(|e| LoadError::Load(e.to_string()))?;
        Ok(LockMaps { stats, procs })
    }

    /// Every entry now (entries that vanish while we iterate are skipped).
    pub fn read(&self) -> LockReading {
        LockReading {
            stats: self.stats.iter().filter_map(Result::ok).collect(),
            procs: self.procs.iter().filter_map(Result::ok).collect(),
        }
    }

    /// Forget processes that are gone (after their last reading).
    pub fn forget(&mut self, tgids: &[u32]) {
        for t in tgids {
            let _ = self.procs.remove(t);
        }
        let keys: Vec<LockKey> = self
            .stats
            .keys()
            .filter_map(Result::ok)
            .filter(|k| tgids.contains(&k.tgid))
            .collect();
        for k in keys {
            let _ = self.stats.remove(&k);
        }
    }
}
