//! The scheduler: `tp_btf` programs on `sched_switch`, `sched_wakeup_new`
//! and `sched_process_exit`, and the maps they fill.

use std::path::Path;

use aya::{
    Btf, Ebpf,
    maps::{HashMap, MapData, PerCpuArray},
};
use diag_common::sched::{OnCpu, ProcStats, SchedConfig, TaskState};

use crate::{
    aggregate::sched::{Debt, Reading},
    btf,
    error::{EnvError, LoadError},
};

/// The raw tracepoints, in attach order (new threads before switches, so
/// a new thread's first switch-out finds its entry).
pub const TRACEPOINTS: &[&str] = &["sched_process_exit", "sched_wakeup_new", "sched_switch"];

/// For messages: what is attached.
pub const TRACEPOINT_NAMES: &[&str] = &[
    "tp_btf:sched_process_exit",
    "tp_btf:sched_wakeup_new",
    "tp_btf:sched_switch",
];

/// Maps that only the scheduler programs use: shrunk to one entry when
/// they are not attached, so TCP-only users do not pay their memory.
pub const MAPS: &[&str] = &["SCHED_TASKS", PROCS_MAP];

/// Exited threads per process: only for views that read and clear it
/// (`SchedConfig::keep_procs`).
pub const PROCS_MAP: &str = "SCHED_PROCS";

/// The `task_struct` offsets on the running kernel, from its BTF.
pub fn layout(btf_path: &Path, stall_threshold_ns: u64) -> Result<SchedConfig, EnvError> {
    let bad = |why: String| EnvError::TracepointFormat {
        name: "task_struct (kernel BTF)".into(),
        why,
    };
    let btf = btf::Btf::from_file(btf_path).map_err(bad)?;
    layout_from(&btf, stall_threshold_ns).map_err(bad)
}

pub fn layout_from(btf: &btf::Btf, stall_threshold_ns: u64) -> Result<SchedConfig, String> {
    let field = |name: &str, size: u32| btf.sized_member("task_struct", name, size);
    // The kernel's own per-thread totals (CONFIG_SCHED_INFO, which
    // schedstats and delay accounting select: /proc/PID/schedstat).
    let nested = |outer: &str, ty: &str, name: &str| -> Result<u32, String> {
        let o = btf.member("task_struct", outer).map_err(|e| {
            format!("{e} (the kernel lacks CONFIG_SCHED_INFO: diag's scheduler probes need it)")
        })?;
        Ok(o.offset + btf.sized_member(ty, name, 8)?)
    };
    // The run queue's clock, through the thread's `cfs_rq` (group
    // scheduling); without it the programs read the clock helper.
    let clock = (|| -> Result<(u32, u32, u32), String> {
        let se = btf.member("task_struct", "se")?.offset;
        Ok((
            se + btf.sized_member("sched_entity", "cfs_rq", 8)?,
            btf.sized_member("cfs_rq", "rq", 8)?,
            btf.sized_member("rq", "clock", 8)?,
        ))
    })()
    .unwrap_or((0, 0, 0));
    Ok(SchedConfig {
        task_pid: field("pid", 4)?,
        task_tgid: field("tgid", 4)?,
        task_comm: field("comm", diag_common::TASK_COMM_LEN as u32)?,
        valid: 1,
        stall_threshold_ns,
        task_run_delay: nested("sched_info", "sched_info", "run_delay")?,
        task_exec_runtime: nested("se", "sched_entity", "sum_exec_runtime")?,
        keep_procs: 0,
        task_cfs_rq: clock.0,
        cfs_rq_rq: clock.1,
        rq_clock: clock.2,
    })
}

/// Load and attach the scheduler programs.
pub fn attach(
    ebpf: &mut Ebpf,
    btf: &Btf,
    attached: &mut Vec<&'static str>,
) -> Result<(), LoadError> {
    for (tp, name) in TRACEPOINTS.iter().zip(TRACEPOINT_NAMES) {
        super::attach_tp_btf(ebpf, tp, tp, btf, name)?;
        attached.push(name);
    }
    Ok(())
}

/// Handles on the scheduler maps, for readers (`diag runq`).
pub struct SchedMaps {
    procs: HashMap<MapData, u32, ProcStats>,
    tasks: HashMap<MapData, u32, TaskState>,
    on_cpu: PerCpuArray<MapData, OnCpu>,
}

impl SchedMaps {
    /// Take the maps out of the loaded object.
    pub fn take(ebpf: &mut Ebpf) -> Result<SchedMaps, LoadError> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| LoadError::Missing(format!("map {name}")))
        };
        let procs =
            HashMap::try_from(take("SCHED_PROCS")?).map_err(|e| LoadError::Load(e.to_string()))?;
        let tasks =
            HashMap::try_from(take("SCHED_TASKS")?).map_err(|e| LoadError::Load(e.to_string()))?;
        let on_cpu = PerCpuArray::try_from(take("SCHED_ONCPU")?)
            .map_err(|e| LoadError::Load(e.to_string()))?;
        Ok(SchedMaps {
            procs,
            tasks,
            on_cpu,
        })
    }

    /// One reading: the exited threads of each process (`SCHED_PROCS`),
    /// then every live thread (`SCHED_TASKS`), in that order: a thread
    /// that exits in between is then missing from both for this reading
    /// (the aggregate treats the dip as no progress), never counted twice.
    /// Entries that vanish while we iterate are skipped. Last, which
    /// thread is on each CPU since when.
    pub fn read(&self) -> Reading {
        let procs = self.procs.iter().filter_map(Result::ok).collect();
        let tasks = self.tasks.iter().filter_map(Result::ok).collect();
        let per_cpu: Vec<OnCpu> = self
            .on_cpu
            .get(&0, 0)
            .map(|per_cpu| per_cpu.iter().copied().collect())
            .unwrap_or_default();
        let on_cpu = per_cpu
            .iter()
            .filter(|o| o.pid != 0 && o.since_ns != 0)
            .map(|o| (o.pid, o.since_ns))
            .collect();
        let debts = per_cpu
            .iter()
            .filter(|o| o.debt_pid != 0 && o.debt_count != 0)
            .map(|o| Debt {
                tid: o.debt_pid,
                tgid: o.debt_tgid,
                ns: o.debt_ns,
                count: o.debt_count,
            })
            .collect();
        Reading {
            procs,
            tasks,
            on_cpu,
            debts,
        }
    }

    /// Forget processes that are gone (after their last reading).
    pub fn forget(&mut self, tgids: &[u32]) {
        for t in tgids {
            let _ = self.procs.remove(t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_from_btf() {
        let b = btf::Btf::parse(&btf::tests::task_btf()).unwrap();
        let c = layout_from(&b, 10_000_000).unwrap();
        assert_eq!(
            c,
            SchedConfig {
                task_pid: 1264,
                task_tgid: 1268,
                task_comm: 1752,
                valid: 1,
                stall_threshold_ns: 10_000_000,
                task_run_delay: 1032,
                task_exec_runtime: 144,
                keep_procs: 0,
                task_cfs_rq: 128 + 24,
                cfs_rq_rq: 16,
                rq_clock: 32,
            }
        );
    }
}
