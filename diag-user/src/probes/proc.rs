//! Process lifetimes: a `tp_btf` program on `sched_process_exit` that
//! reports each process (thread group) that ends, with its start time, so
//! a later process with the same pid is never taken for it. Attached with
//! the TCP and the scheduler programs (process exits are rare: it costs
//! next to nothing).

use std::path::Path;

use aya::{Btf as AyaBtf, Ebpf};
use diag_common::{proc::ProcConfig, tcp::NO_FIELD};

use crate::{
    btf::Btf,
    error::{EnvError, LoadError},
};

/// The raw tracepoint.
pub const TRACEPOINT: &str = "sched_process_exit";
/// For messages: what is attached.
pub const TRACEPOINT_NAME: &str = "tp_btf:sched_process_exit (process exits)";
/// The program's name in the kernel object.
const PROGRAM: &str = "proc_exit";

/// The `task_struct` offsets and the tracepoint's arguments on the
/// running kernel, from its BTF.
pub fn config(btf_path: &Path) -> Result<ProcConfig, EnvError> {
    let bad = |why: String| EnvError::TracepointFormat {
        name: "process exits (kernel BTF)".into(),
        why,
    };
    let btf = Btf::from_file(btf_path).map_err(bad)?;
    config_from(&btf).map_err(bad)
}

pub fn config_from(btf: &Btf) -> Result<ProcConfig, String> {
    let field = |name: &str, size: u32| btf.sized_member("task_struct", name, size);
    // start_boottime (Linux 5.5 and later) is what /proc/PID/stat shows,
    // on the clock of event timestamps; start_time before that.
    let (task_start, start_is_boottime) = match field("start_boottime", 8) {
        Ok(off) => (off, 1),
        Err(_) => (field("start_time", 8)?, 0),
    };
    let args = btf.tp_btf_args(TRACEPOINT)?;
    Ok(ProcConfig {
        task_group_leader: field("group_leader", 8)?,
        task_start,
        task_comm: field("comm", diag_common::TASK_COMM_LEN as u32)?,
        task_exit_code: field("exit_code", 4).unwrap_or(NO_FIELD),
        start_is_boottime,
        has_group_dead: u32::from(args >= 2),
        valid: 1,
        _pad: 0,
    })
}

/// Load and attach the program.
pub fn attach(
    ebpf: &mut Ebpf,
    btf: &AyaBtf,
    attached: &mut Vec<&'static str>,
) -> Result<(), LoadError> {
    super::attach_tp_btf(ebpf, PROGRAM, TRACEPOINT, btf, TRACEPOINT_NAME)?;
    attached.push(TRACEPOINT_NAME);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btf::tests::Builder;

    const STRUCT: u32 = 4;

    /// A miniature kernel: task_struct with (or without) start_boottime
    /// and exit_code, and the tracepoint with one or two arguments.
    fn kernel(boottime: bool, exit_code: bool, group_dead: bool) -> Btf {
        let mut b = Builder::new();
        let int = b.int("int", 4);
        let u64t = b.int("long long unsigned int", 8);
        let ch = b.int("char", 1);
        let comm = b.array(ch, int, 16);
        let fwd_task = b.strukt(STRUCT, "task_struct_fwd", 0, &[]);
        let task_ptr = b.ptr(fwd_task);
        let mut members = vec![
            ("exit_code", int, 800, 0),
            ("group_leader", task_ptr, 1600, 0),
            ("start_time", u64t, 3200, 0),
            ("start_boottime", u64t, 3264, 0),
            ("comm", comm, 4000, 0),
        ];
        if !boottime {
            members.retain(|m| m.0 != "start_boottime");
        }
        if !exit_code {
            members.retain(|m| m.0 != "exit_code");
        }
        b.strukt(STRUCT, "task_struct", 1000, &members);
        let vptr = b.ptr(0);
        let bool_t = b.int("_Bool", 1);
        let proto = if group_dead {
            b.func_proto(&[vptr, task_ptr, bool_t])
        } else {
            b.func_proto(&[vptr, task_ptr])
        };
        let p = b.ptr(proto);
        b.typedef("btf_trace_sched_process_exit", p);
        Btf::parse(&b.build()).unwrap()
    }

    #[test]
    fn config_from_btf() {
        assert_eq!(
            config_from(&kernel(true, true, true)),
            Ok(ProcConfig {
                task_group_leader: 200,
                task_start: 408,
                task_comm: 500,
                task_exit_code: 100,
                start_is_boottime: 1,
                has_group_dead: 1,
                valid: 1,
                _pad: 0,
            })
        );
    }

    #[test]
    fn older_kernels_fall_back() {
        let c = config_from(&kernel(false, false, false)).unwrap();
        assert_eq!((c.task_start, c.start_is_boottime), (400, 0), "start_time");
        assert_eq!(c.task_exit_code, NO_FIELD);
        assert_eq!(
            c.has_group_dead, 0,
            "the leader's exit stands for the group's"
        );
    }

    #[test]
    fn running_kernel() {
        let Some(path) = crate::btf::running_kernel_btf("probes::proc::running_kernel") else {
            return;
        };
        let c = config(&path).unwrap();
        assert_eq!(c.valid, 1);
        assert_ne!(c.task_exit_code, NO_FIELD);
        assert!(c.task_group_leader > 0 && c.task_start > 0 && c.task_comm > 0);
    }
}
