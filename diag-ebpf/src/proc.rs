//! Process lifetimes: a `tp_btf` program on `sched_process_exit` that
//! sends a `ProcExit` event when a whole process (thread group) ends.
//! Process exits are rare next to socket or scheduler events, so this is
//! attached with either family; user space uses it to tell a process from
//! a later one that reuses its pid.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
    Global,
};
use diag_common::{
    counters,
    proc::{exit_flags, ProcConfig, ProcExitEvent},
    tcp::NO_FIELD,
    EventKind, TASK_COMM_LEN,
};

use crate::maps::{count, current_header, submit_flags, EVENTS};

/// task_struct offsets from BTF, written by user space at load time.
#[unsafe(no_mangle)]
static PROC_CONFIG: Global<ProcConfig> = Global::new(ProcConfig::zeroed());

#[btf_tracepoint(function = "sched_process_exit")]
pub fn proc_exit(ctx: BtfTracePointContext) -> u32 {
    match try_proc_exit(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

/// A value of type `T` at `offset` bytes into the kernel object at `base`
/// (offsets come from the running kernel's BTF; the helper checks the
/// address).
#[inline(always)]
fn read<T>(base: *const u8, offset: u32) -> Result<T, ()> {
    // SAFETY: see above.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize) as *const T) }.map_err(|_| ())
}

/// sched_process_exit(task_struct *p[, bool group_dead]): p is current.
#[inline(always)]
fn try_proc_exit(ctx: &BtfTracePointContext) -> Result<u32, u32> {
    let c = PROC_CONFIG.load();
    if c.valid == 0 {
        return Ok(0);
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let (pid, tgid) = (pid_tgid as u32, (pid_tgid >> 32) as u32);
    // `has_group_dead` is a constant of the frozen config: the verifier
    // only sees the branch taken, so the second argument is read only on
    // kernels whose tracepoint has it.
    let group_dead = if c.has_group_dead != 0 {
        let g: u64 = ctx.arg(1);
        g & 0xff != 0
    } else {
        pid == tgid
    };
    if !group_dead || tgid == 0 {
        return Ok(0);
    }
    let task: *const u8 = ctx.arg(0);
    let mut flags = if c.has_group_dead != 0 {
        exit_flags::GROUP_DEAD
    } else {
        0
    };
    if c.start_is_boottime != 0 {
        flags |= exit_flags::START_BOOTTIME;
    }
    let mut header = current_header(EventKind::ProcExit as u32);
    header.pid = pid;
    header.tgid = tgid;
    // The process's start time and name are its group leader's (the
    // leader may have exited before the last thread, as a zombie its
    // task_struct stays).
    let leader: *const u8 = read(task, c.task_group_leader).unwrap_or(core::ptr::null());
    let (start_ns, comm) = if leader.is_null() {
        flags |= exit_flags::NO_START;
        (0, header.comm)
    } else {
        let start = read::<u64>(leader, c.task_start).unwrap_or_else(|_| {
            flags |= exit_flags::NO_START;
            0
        });
        let comm = read::<[u8; TASK_COMM_LEN]>(leader, c.task_comm).unwrap_or(header.comm);
        (start, comm)
    };
    let exit_code = if c.task_exit_code == NO_FIELD {
        flags |= exit_flags::NO_EXIT_CODE;
        0
    } else {
        read::<u32>(task, c.task_exit_code).unwrap_or_else(|_| {
            flags |= exit_flags::NO_EXIT_CODE;
            0
        })
    };
    let Some(mut entry) = EVENTS.reserve::<ProcExitEvent>(0) else {
        count(counters::RINGBUF_FULL);
        if crate::maps::log_on() {
            aya_log_ebpf::warn!(
                ctx,
                "ring buffer full: the exit of process {} was dropped",
                tgid
            );
        }
        return Ok(0);
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: a reserved, exclusively owned slot of the right size; every
    // field is written before submit.
    unsafe {
        (*ev).header = header;
        (*ev).start_ns = start_ns;
        (*ev).exit_code = exit_code;
        (*ev).flags = flags;
        (*ev).comm = comm;
    }
    entry.submit(submit_flags());
    count(counters::SUBMITTED);
    Ok(0)
}
