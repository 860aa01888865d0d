//! Locks: futex waits per thread, per process and per lock address, with
//! the thread whose wakeup ended each wait (the holder that released the
//! lock), and kernel lock contention per process.
//!
//! Kernel side: classic tracepoints `syscalls:sys_enter_futex`,
//! `sys_enter_futex_wait`, `sys_enter_futex_waitv` note a wait per thread
//! (map `LOCK_WAITING`); a `tp_btf` program on `sched_waking` (which runs
//! in the waker's own context) names the waker of a noted thread; the
//! `sys_exit_*` tracepoints end the wait: its time goes to a per
//! (process, waiter, lock, waker) entry ([`LockStat`], map `LOCK_STATS`)
//! and a per-process entry with a histogram ([`LockProc`], map
//! `LOCK_PROCS`); a wait at least `threshold_ns` long is also sent as a
//! [`LockWaitEvent`]. `lock:contention_begin/end` (tp_btf) add kernel
//! lock contention to [`LockProc`].

use crate::{sched::HIST_SLOTS, EventHeader, TASK_COMM_LEN};

/// `futex(2)` operations and flags (`include/uapi/linux/futex.h`: a
/// system-call ABI, not a kernel layout).
pub mod futex_op {
    pub const WAIT: u32 = 0;
    pub const WAKE: u32 = 1;
    pub const LOCK_PI: u32 = 6;
    pub const UNLOCK_PI: u32 = 7;
    pub const TRYLOCK_PI: u32 = 8;
    pub const WAIT_BITSET: u32 = 9;
    pub const WAIT_REQUEUE_PI: u32 = 11;
    pub const LOCK_PI2: u32 = 13;
    pub const PRIVATE_FLAG: u32 = 128;
    pub const CLOCK_REALTIME: u32 = 256;
    pub const CMD_MASK: u32 = !(PRIVATE_FLAG | CLOCK_REALTIME);

    /// The wait kind ([`super::wait_kind`]) of a `futex()` op, 0 when
    /// the op does not block.
    #[inline(always)]
    pub fn wait_kind(op: u32) -> u32 {
        match op & CMD_MASK {
            WAIT | WAIT_BITSET => super::wait_kind::FUTEX_WAIT,
            LOCK_PI | LOCK_PI2 => super::wait_kind::FUTEX_LOCK_PI,
            WAIT_REQUEUE_PI => super::wait_kind::FUTEX_WAIT_REQUEUE_PI,
            _ => 0,
        }
    }
}

/// Which system call a wait was.
pub mod wait_kind {
    /// `futex(FUTEX_WAIT | FUTEX_WAIT_BITSET)`: glibc mutexes,
    /// condition variables, rwlocks, semaphores, Rust's std locks.
    pub const FUTEX_WAIT: u32 = 1;
    /// `futex(FUTEX_LOCK_PI | FUTEX_LOCK_PI2)`: priority-inheritance mutexes.
    pub const FUTEX_LOCK_PI: u32 = 2;
    /// `futex(FUTEX_WAIT_REQUEUE_PI)`: a condition variable of a PI mutex.
    pub const FUTEX_WAIT_REQUEUE_PI: u32 = 3;
    /// `futex_wait(2)` (Linux 6.7+).
    pub const FUTEX_WAIT2: u32 = 4;
    /// `futex_waitv(2)` (Linux 5.16+): the address is the first futex's.
    pub const FUTEX_WAITV: u32 = 5;

    pub fn name(k: u32) -> &'static str {
        match k {
            FUTEX_WAIT => "futex_wait",
            FUTEX_LOCK_PI => "futex_lock_pi",
            FUTEX_WAIT_REQUEUE_PI => "futex_wait_requeue_pi",
            FUTEX_WAIT2 => "futex_wait2",
            FUTEX_WAITV => "futex_waitv",
            _ => "futex",
        }
    }
}

/// Offsets learned at load time (tracefs formats of the system-call
/// tracepoints, BTF of `task_struct`) and the threshold: the read-only
/// global `LOCK_CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LockConfig {
    /// 1 once user space filled this in; the programs do nothing otherwise.
    pub valid: u32,
    /// `sys_enter_futex`: `uaddr`, `op`.
    pub futex_uaddr: u32,
    pub futex_op: u32,
    /// `sys_enter_futex_wait`: `uaddr` (NO_FIELD when absent).
    pub wait_uaddr: u32,
    /// `sys_enter_futex_waitv`: `waiters` (NO_FIELD when absent).
    pub waitv_waiters: u32,
    /// `sys_exit_*`: `ret` (the same in every system call's exit record).
    pub exit_ret: u32,
    /// `task_struct.pid`, `.tgid`, `.comm` (for `sched_waking`'s task).
    pub task_pid: u32,
    pub task_tgid: u32,
    /// A wait at least this long is sent as a [`LockWaitEvent`] (unless
    /// it timed out: a timed wait that runs out is a sleep, counted in
    /// [`LockStat::timeouts`], not an event).
    pub threshold_ns: u64,
    /// diag's own process: its waits are not traced.
    pub self_tgid: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<LockConfig>() == 48);

impl LockConfig {
    pub const fn zeroed() -> Self {
        LockConfig {
            valid: 0,
            futex_uaddr: 0,
            futex_op: 0,
            wait_uaddr: 0,
            waitv_waiters: 0,
            exit_ret: 0,
            task_pid: 0,
            task_tgid: 0,
            threshold_ns: 0,
            self_tgid: 0,
            _pad: 0,
        }
    }
}

/// A thread in a futex wait now (map `LOCK_WAITING`, keyed by tid).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Waiting {
    /// The futex's user-space address.
    pub uaddr: u64,
    /// When the wait began (boot-time ns).
    pub start_ns: u64,
    /// The last task that woke this one during the wait (0: none yet).
    pub waker_pid: u32,
    pub waker_tgid: u32,
    pub waker_comm: [u8; TASK_COMM_LEN],
    /// A [`wait_kind`].
    pub kind: u32,
    /// Wakeups seen during the wait.
    pub wakes: u32,
}
const _: () = assert!(core::mem::size_of::<Waiting>() == 48);

/// Key of [`LockStat`]: one waiter thread on one lock, woken by one
/// thread (0: no waker: a timeout, a signal, or a wait that did not
/// sleep).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LockKey {
    pub uaddr: u64,
    pub tgid: u32,
    pub tid: u32,
    pub waker_tid: u32,
    pub waker_tgid: u32,
}
const _: () = assert!(core::mem::size_of::<LockKey>() == 24);

/// Cumulative waits of a [`LockKey`] since diag started. Only the waiter
/// itself writes its entries (at its own system-call exits).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LockStat {
    pub waits: u64,
    pub wait_ns: u64,
    pub max_ns: u64,
    /// Waits that ended with no waker (a signal, `-EINTR`). Waits that
    /// timed out are not lock waits (they are timed sleeps): they count
    /// only in [`LockProc::timeouts`].
    pub no_waker: u64,
    /// The waker's command name, as last seen.
    pub waker_comm: [u8; TASK_COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<LockStat>() == 48);

/// Per process (map `LOCK_PROCS`, keyed by tgid): futex waits (those that
/// did not time out) and kernel lock contention since diag started.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockProc {
    pub waits: u64,
    pub wait_ns: u64,
    pub max_ns: u64,
    /// Waits at least the threshold long (events sent or dropped).
    pub long_waits: u64,
    /// Kernel lock contention (`lock:contention_begin/end`).
    pub kernel_waits: u64,
    pub kernel_wait_ns: u64,
    /// Futex waits that timed out (timed sleeps, not in `waits`).
    pub timeouts: u64,
    pub timeout_ns: u64,
    pub comm: [u8; TASK_COMM_LEN],
    /// Futex wait times, log2 µs buckets ([`crate::sched::hist_slot`]).
    pub hist: [u64; HIST_SLOTS],
}
const _: () = assert!(core::mem::size_of::<LockProc>() == 80 + 256);

impl LockProc {
    pub const fn zeroed() -> Self {
        LockProc {
            waits: 0,
            wait_ns: 0,
            max_ns: 0,
            long_waits: 0,
            kernel_waits: 0,
            kernel_wait_ns: 0,
            timeouts: 0,
            timeout_ns: 0,
            comm: [0; TASK_COMM_LEN],
            hist: [0; HIST_SLOTS],
        }
    }
}

impl Default for LockProc {
    fn default() -> Self {
        LockProc::zeroed()
    }
}

/// Key of a kernel lock contention in progress (map `LOCK_KWAITING`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelWaitKey {
    pub lock: u64,
    pub tid: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<KernelWaitKey>() == 16);

/// A futex wait at least the threshold long (kind `LockWait`). The header
/// names the waiter (current at its system call's exit).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockWaitEvent {
    pub header: EventHeader,
    pub uaddr: u64,
    pub wait_ns: u64,
    /// The thread whose wakeup ended the wait (0: none: timeout, signal).
    pub waker_pid: u32,
    pub waker_tgid: u32,
    pub waker_comm: [u8; TASK_COMM_LEN],
    /// A [`wait_kind`].
    pub kind: u32,
    /// The system call's return value (0, or -errno: -110 timed out,
    /// -4 interrupted, -11 the value had changed).
    pub ret: i32,
}
const _: () = assert!(core::mem::size_of::<LockWaitEvent>() == 88);

/// `-ETIMEDOUT`, `-EINTR`: the wait ended without a waker.
pub const ETIMEDOUT: i64 = 110;
pub const EINTR: i64 = 4;
