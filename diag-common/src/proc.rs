//! Process lifetimes: the end of a whole process (thread group), from a
//! `tp_btf` program on `sched_process_exit`.
//!
//! A pid is only free for reuse once its process has been reaped, which
//! comes after `sched_process_exit`; and every event travels through the
//! one ring buffer `EVENTS`, in order. So a [`ProcExitEvent`] always
//! arrives before any event of a later process that got the same pid:
//! user space starts a fresh entry for the pid from there.

use crate::{EventHeader, TASK_COMM_LEN};

/// Offsets into `struct task_struct`, resolved by user space from the
/// kernel's BTF at load time: the read-only global `PROC_CONFIG` of the
/// kernel object.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcConfig {
    /// Offset of `task_struct.group_leader` (a pointer).
    pub task_group_leader: u32,
    /// Offset of `task_struct.start_boottime` (ns since boot, suspend
    /// included: `/proc/PID/stat` field 22 is this in clock ticks), or of
    /// `start_time` (monotonic ns) on kernels without it; see
    /// [`ProcConfig::start_is_boottime`].
    pub task_start: u32,
    /// Offset of `task_struct.comm`.
    pub task_comm: u32,
    /// Offset of `task_struct.exit_code` (an int), or
    /// [`crate::tcp::NO_FIELD`].
    pub task_exit_code: u32,
    /// 1: `task_start` is `start_boottime`; 0: `start_time`.
    pub start_is_boottime: u32,
    /// 1: the tracepoint has the `group_dead` argument (newer kernels): a
    /// process ends when its last thread exits. 0: a process is taken to
    /// end when its group leader exits.
    pub has_group_dead: u32,
    /// 1 once user space filled this in; the program does nothing otherwise.
    pub valid: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<ProcConfig>() == 32);

impl ProcConfig {
    pub const fn zeroed() -> Self {
        ProcConfig {
            task_group_leader: 0,
            task_start: 0,
            task_comm: 0,
            task_exit_code: 0,
            start_is_boottime: 0,
            has_group_dead: 0,
            valid: 0,
            _pad: 0,
        }
    }
}

/// Bits of [`ProcExitEvent::flags`].
pub mod exit_flags {
    /// The kernel said the whole thread group is dead (`group_dead`);
    /// without it, the group leader's exit was taken as the process's.
    pub const GROUP_DEAD: u32 = 1;
    /// `start_ns` is boot time (`start_boottime`), the clock of
    /// `/proc/PID/stat` and of event timestamps; else monotonic.
    pub const START_BOOTTIME: u32 = 2;
    /// `start_ns` could not be read (it is 0).
    pub const NO_START: u32 = 4;
    /// `exit_code` could not be read (it is 0).
    pub const NO_EXIT_CODE: u32 = 8;
}

/// A process (thread group) ended (kind `ProcExit`).
///
/// The header names the thread that exited last (on the CPU, so `comm` is
/// its own, which may be a thread's name); `comm` here is the group
/// leader's, as in `/proc/PID/comm`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcExitEvent {
    pub header: EventHeader,
    /// The process's start time (its group leader's), ns: with
    /// [`exit_flags::START_BOOTTIME`], since boot, suspend included.
    pub start_ns: u64,
    /// The exiting thread's `exit_code`, a wait(2) status: exit status in
    /// bits 8-15, or the killing signal in bits 0-6 (core dump: bit 7).
    pub exit_code: u32,
    /// [`exit_flags`].
    pub flags: u32,
    /// The group leader's command name, NUL padded.
    pub comm: [u8; TASK_COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<ProcExitEvent>() == 72);

impl ProcExitEvent {
    /// The exit status (`exit(N)`), when it was not killed by a signal.
    pub fn exit_status(&self) -> Option<u8> {
        (self.flags & exit_flags::NO_EXIT_CODE == 0 && self.exit_code & 0x7f == 0)
            .then_some((self.exit_code >> 8) as u8)
    }

    /// The signal that killed it, if one did.
    pub fn signal(&self) -> Option<u8> {
        let sig = (self.exit_code & 0x7f) as u8;
        (self.flags & exit_flags::NO_EXIT_CODE == 0 && sig != 0).then_some(sig)
    }

    /// The start time, if known and on the boot-time clock.
    pub fn start_boottime_ns(&self) -> Option<u64> {
        (self.flags & (exit_flags::START_BOOTTIME | exit_flags::NO_START)
            == exit_flags::START_BOOTTIME)
            .then_some(self.start_ns)
    }
}
