//! `diag threads PID`: a thread dump from the kernel's side. Pure: built
//! from procfs samples ([`crate::source::threads`]), drawn as text or JSON.
//!
//! For each thread: its state and how long it has been in it (a lower
//! bound: the time it has kept that state without running, over the
//! samples seen), what it waits on (a futex and the thread holding it, a
//! pipe, a socket, a file, a sleep, a poll), wchan, its kernel stack, and
//! its CPU time and run-queue wait over the last interval. Threads that
//! wait on each other's locks in a cycle are flagged as a deadlock.

use std::collections::{BTreeSet, HashMap};

use serde_json::{Value, json};

use crate::{
    source::threads::{ProcessSample, Syscall, Target, ThreadSample},
    view::fmt::human_ns,
};

/// `FUTEX_TID_MASK` (uapi): the owner's tid in a PI futex word.
const FUTEX_TID_MASK: u32 = 0x3fff_ffff;

/// How a lock's holder was learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HolderHow {
    /// glibc's `pthread_mutex_t.__owner`, 8 bytes after the futex word,
    /// when it names a thread of the process and the word says locked.
    GlibcOwner,
    /// A priority-inheritance futex's word holds its owner's tid (kernel ABI).
    PiWord,
    /// The futex word is a thread's tid: `pthread_join` waits on the
    /// joined thread's tid word (CLONE_CHILD_CLEARTID) until it exits.
    Join,
}

impl HolderHow {
    pub fn name(self) -> &'static str {
        match self {
            HolderHow::GlibcOwner => "glibc mutex owner",
            HolderHow::PiWord => "PI futex owner",
            HolderHow::Join => "pthread_join",
        }
    }
}

/// What a thread waits on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wait {
    /// On a CPU, or runnable.
    Nothing,
    Futex {
        uaddr: u64,
        holder: Option<(u32, HolderHow)>,
    },
    Pipe {
        fd: u64,
        link: String,
    },
    Socket {
        fd: u64,
        link: String,
    },
    File {
        fd: u64,
        link: Option<String>,
    },
    Sleep(&'static str),
    Poll(&'static str),
    /// Uninterruptible sleep outside a known wait: usually I/O (disk).
    Disk,
    /// Some other system call.
    Syscall(String),
    /// Blocked, but not in a system call (a page fault, a stop).
    Kernel,
    /// `syscall` was unreadable.
    Unknown,
}

/// A system call's name, for the ones a blocked thread is often in.
pub fn syscall_name(nr: i64) -> Option<&'static str> {
    let mut v: Vec<(i64, &'static str)> = vec![
        (libc::SYS_futex, "futex"),
        (libc::SYS_futex_waitv, "futex_waitv"),
        (libc::SYS_read, "read"),
        (libc::SYS_readv, "readv"),
        (libc::SYS_pread64, "pread64"),
        (libc::SYS_write, "write"),
        (libc::SYS_writev, "writev"),
        (libc::SYS_nanosleep, "nanosleep"),
        (libc::SYS_clock_nanosleep, "clock_nanosleep"),
        (libc::SYS_epoll_pwait, "epoll_pwait"),
        (libc::SYS_ppoll, "ppoll"),
        (libc::SYS_pselect6, "pselect6"),
        (libc::SYS_accept, "accept"),
        (libc::SYS_accept4, "accept4"),
        (libc::SYS_recvfrom, "recvfrom"),
        (libc::SYS_recvmsg, "recvmsg"),
        (libc::SYS_sendto, "sendto"),
        (libc::SYS_sendmsg, "sendmsg"),
        (libc::SYS_connect, "connect"),
        (libc::SYS_wait4, "wait4"),
        (libc::SYS_waitid, "waitid"),
        (libc::SYS_fsync, "fsync"),
        (libc::SYS_fdatasync, "fdatasync"),
        (libc::SYS_flock, "flock"),
        (libc::SYS_fcntl, "fcntl"),
        (libc::SYS_ioctl, "ioctl"),
        (libc::SYS_rt_sigtimedwait, "rt_sigtimedwait"),
        (libc::SYS_rt_sigsuspend, "rt_sigsuspend"),
        (libc::SYS_io_getevents, "io_getevents"),
        (libc::SYS_io_uring_enter, "io_uring_enter"),
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([
        (libc::SYS_poll, "poll"),
        (libc::SYS_select, "select"),
        (libc::SYS_epoll_wait, "epoll_wait"),
        (libc::SYS_pause, "pause"),
    ]);
    v.into_iter().find(|(n, _)| *n == nr).map(|(_, s)| s)
}

/// What `t` waits on; `tids` are the process's threads (a holder must be
/// one of them).
pub fn wait_of(t: &ThreadSample, tids: &BTreeSet<u32>) -> Wait {
    let Some(sc) = &t.syscall else {
        return Wait::Unknown;
    };
    let nr = match sc {
        Syscall::Running => return Wait::Nothing,
        Syscall::NotInSyscall => {
            return if t.state == 'D' {
                Wait::Disk
            } else if t.state == 'R' {
                Wait::Nothing
            } else {
                Wait::Kernel
            };
        }
        Syscall::In { nr, .. } => *nr,
    };
    if t.state == 'R' {
        return Wait::Nothing;
    }
    let name = syscall_name(nr);
    match &t.target {
        Some(Target::Futex {
            uaddr,
            op,
            word,
            owner_word,
        }) => {
            let cmd = op & diag_common::lock::futex_op::CMD_MASK;
            let pi = matches!(
                cmd,
                diag_common::lock::futex_op::LOCK_PI | diag_common::lock::futex_op::LOCK_PI2
            );
            let holder = if pi {
                word.map(|w| w & FUTEX_TID_MASK)
                    .filter(|o| tids.contains(o))
                    .map(|o| (o, HolderHow::PiWord))
            } else {
                match (word, owner_word) {
                    (Some(w), Some(o)) if *w != 0 && tids.contains(o) && *o != t.tid => {
                        Some((*o, HolderHow::GlibcOwner))
                    }
                    (Some(w), _) if tids.contains(w) && *w != t.tid => Some((*w, HolderHow::Join)),
                    _ => None,
                }
            };
            return Wait::Futex {
                uaddr: *uaddr,
                holder,
            };
        }
        Some(Target::Fd { fd, link }) => {
            return match link.as_deref() {
                Some(l) if l.starts_with("pipe:") => Wait::Pipe {
                    fd: *fd,
                    link: l.to_string(),
                },
                Some(l) if l.starts_with("socket:") => Wait::Socket {
                    fd: *fd,
                    link: l.to_string(),
                },
                _ if name.is_some_and(|n| n.starts_with("epoll")) => {
                    Wait::Poll(name.unwrap_or("epoll"))
                }
                l => Wait::File {
                    fd: *fd,
                    link: l.map(str::to_string),
                },
            };
        }
        None => {}
    }
    match name {
        Some(n @ ("nanosleep" | "clock_nanosleep" | "pause" | "rt_sigsuspend")) => Wait::Sleep(n),
        Some(
            n @ ("poll" | "ppoll" | "select" | "pselect6" | "epoll_wait" | "epoll_pwait"
            | "io_getevents" | "io_uring_enter" | "rt_sigtimedwait"),
        ) => Wait::Poll(n),
        Some(n) => Wait::Syscall(n.to_string()),
        None if t.state == 'D' => Wait::Disk,
        None => Wait::Syscall(format!("syscall {nr}")),
    }
}

impl Wait {
    pub fn text(&self) -> String {
        match self {
            Wait::Nothing => "-".into(),
            Wait::Futex {
                uaddr,
                holder: Some((h, HolderHow::Join)),
            } => format!("join: thread {h} to exit (futex {uaddr:#x})"),
            Wait::Futex {
                uaddr,
                holder: Some((h, how)),
            } => format!("futex {uaddr:#x} held by {h} ({})", how.name()),
            Wait::Futex {
                uaddr,
                holder: None,
            } => format!("futex {uaddr:#x}"),
            Wait::Pipe { fd, link } => format!("{link} (fd {fd})"),
            Wait::Socket { fd, link } => format!("{link} (fd {fd})"),
            Wait::File { fd, link } => {
                format!("{} (fd {fd})", link.as_deref().unwrap_or("?"))
            }
            Wait::Sleep(n) => format!("sleep ({n})"),
            Wait::Poll(n) => format!("poll ({n})"),
            Wait::Disk => "disk/uninterruptible".into(),
            Wait::Syscall(n) => n.clone(),
            Wait::Kernel => "in the kernel (not a system call)".into(),
            Wait::Unknown => "? (task/TID/syscall unreadable)".into(),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Wait::Nothing => "none",
            Wait::Futex { .. } => "futex",
            Wait::Pipe { .. } => "pipe",
            Wait::Socket { .. } => "socket",
            Wait::File { .. } => "file",
            Wait::Sleep(_) => "sleep",
            Wait::Poll(_) => "poll",
            Wait::Disk => "disk",
            Wait::Syscall(_) => "syscall",
            Wait::Kernel => "kernel",
            Wait::Unknown => "unknown",
        }
    }
}

/// One thread of a dump.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub tid: u32,
    pub comm: String,
    pub state: char,
    /// It has been in this state, without running, at least this long
    /// (0: it changed state or ran during the last interval).
    pub state_for_ns: u64,
    pub cpu: i32,
    /// CPU time and run-queue wait over the last interval.
    pub cpu_ns: u64,
    pub runq_ns: u64,
    pub wchan: String,
    pub syscall: Option<String>,
    pub wait: Wait,
    pub stack: Vec<String>,
}

/// Threads waiting on each other's locks in a cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deadlock {
    /// (waiter, lock address, holder), in cycle order from the lowest tid.
    pub edges: Vec<(u32, u64, u32)>,
}

/// Every cycle of the wait-for graph (waiter -> holder of its futex).
pub fn deadlocks(rows: &[Row]) -> Vec<Deadlock> {
    let edge: HashMap<u32, (u64, u32)> = rows
        .iter()
        .filter_map(|r| match r.wait {
            Wait::Futex {
                uaddr,
                holder: Some((h, _)),
            } => Some((r.tid, (uaddr, h))),
            _ => None,
        })
        .collect();
    let mut seen: BTreeSet<Vec<u32>> = BTreeSet::new();
    let mut out = Vec::new();
    let mut starts: Vec<u32> = edge.keys().copied().collect();
    starts.sort_unstable();
    for start in starts {
        let mut path = vec![start];
        let mut cur = start;
        while let Some(&(_, next)) = edge.get(&cur) {
            if next == start {
                let mut key = path.clone();
                key.sort_unstable();
                if seen.insert(key) {
                    let low = *path.iter().min().unwrap_or(&start);
                    let i = path.iter().position(|&t| t == low).unwrap_or(0);
                    path.rotate_left(i);
                    let edges = path
                        .iter()
                        .map(|t| {
                            let (a, h) = edge[t];
                            (*t, a, h)
                        })
                        .collect();
                    out.push(Deadlock { edges });
                }
                break;
            }
            if path.contains(&next) || path.len() > rows.len() {
                break;
            }
            path.push(next);
            cur = next;
        }
    }
    out
}

/// The dump's state across samples (for --watch): since when each thread
/// has kept its state without running.
#[derive(Debug, Default)]
pub struct ThreadDump {
    prev: Option<ProcessSample>,
    /// tid -> (state, boot ns since which it is known in it, not running).
    since: HashMap<u32, (char, u64)>,
}

/// One dump: the rows and what they add up to.
#[derive(Debug, Clone, PartialEq)]
pub struct Dump {
    pub pid: u32,
    pub comm: String,
    pub interval_ns: u64,
    pub rows: Vec<Row>,
    pub deadlocks: Vec<Deadlock>,
    pub vanished: u64,
    pub stacks_readable: bool,
    /// With the futex probes (`--locks`): per futex address, the thread
    /// whose wakeups ended the most waits on it since diag attached.
    pub released_by: Option<HashMap<u64, (u32, String)>>,
}

impl ThreadDump {
    /// Feed a sample: the first only sets the baseline (None).
    pub fn feed(&mut self, s: ProcessSample) -> Option<Dump> {
        let Some(prev) = self.prev.replace(s.clone()) else {
            for t in &s.threads {
                self.since.insert(t.tid, (t.state, s.ts_ns));
            }
            return None;
        };
        let before: HashMap<u32, &ThreadSample> = prev.threads.iter().map(|t| (t.tid, t)).collect();
        let tids: BTreeSet<u32> = s.threads.iter().map(|t| t.tid).collect();
        let mut since = HashMap::new();
        let rows: Vec<Row> = s
            .threads
            .iter()
            .map(|t| {
                let b = before.get(&t.tid);
                let still =
                    b.is_some_and(|b| b.state == t.state && b.slices == t.slices && t.state != 'R');
                let from = match self.since.get(&t.tid) {
                    Some(&(st, from)) if still && st == t.state => from,
                    _ => s.ts_ns,
                };
                since.insert(t.tid, (t.state, from));
                let (cpu_ns, runq_ns) = b
                    .map(|b| {
                        (
                            t.cpu_ns.saturating_sub(b.cpu_ns),
                            t.runq_ns.saturating_sub(b.runq_ns),
                        )
                    })
                    .unwrap_or((t.cpu_ns, t.runq_ns));
                Row {
                    tid: t.tid,
                    comm: t.comm.clone(),
                    state: t.state,
                    state_for_ns: s.ts_ns.saturating_sub(from),
                    cpu: t.cpu,
                    cpu_ns,
                    runq_ns,
                    wchan: t.wchan.clone(),
                    syscall: match &t.syscall {
                        Some(Syscall::In { nr, .. }) => Some(
                            syscall_name(*nr)
                                .map(str::to_string)
                                .unwrap_or_else(|| format!("syscall {nr}")),
                        ),
                        _ => None,
                    },
                    wait: wait_of(t, &tids),
                    stack: t.stack.clone(),
                }
            })
            .collect();
        self.since = since;
        let deadlocks = deadlocks(&rows);
        Some(Dump {
            pid: s.pid,
            comm: s.comm.clone(),
            interval_ns: s.ts_ns.saturating_sub(prev.ts_ns),
            rows,
            deadlocks,
            vanished: s.vanished,
            stacks_readable: s.stacks_readable,
            released_by: None,
        })
    }
}

/// A state letter in words.
pub fn state_name(c: char) -> &'static str {
    match c {
        'R' => "running",
        'S' => "sleeping",
        'D' => "uninterruptible",
        'T' => "stopped",
        't' => "traced",
        'Z' => "zombie",
        'X' => "dead",
        'I' => "idle",
        'P' => "parked",
        _ => "unknown",
    }
}

fn pct(ns: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        ns as f64 * 100.0 / of as f64
    }
}

fn for_text(r: &Row, interval: u64) -> String {
    if r.state == 'R' || r.state_for_ns == 0 {
        format!("<{}", human_ns(interval))
    } else {
        format!(">={}", human_ns(r.state_for_ns))
    }
}

pub fn text(d: &Dump, stacks: bool) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "PID {} {}: {} threads, CPU and run-queue wait over {}",
        d.pid,
        d.comm,
        d.rows.len(),
        human_ns(d.interval_ns)
    );
    let _ = writeln!(
        s,
        "{:<8} {:<16} {:<2} {:<10} {:>6} {:>9} {:>3} {:<24} WAITS ON",
        "TID", "COMM", "ST", "FOR", "CPU%", "RUNQ", "CPU", "WCHAN"
    );
    for r in &d.rows {
        let _ = writeln!(
            s,
            "{:<8} {:<16} {:<2} {:<10} {:>6.1} {:>9} {:>3} {:<24} {}",
            r.tid,
            r.comm,
            r.state,
            for_text(r, d.interval_ns),
            pct(r.cpu_ns, d.interval_ns),
            human_ns(r.runq_ns),
            r.cpu,
            if r.wchan.is_empty() || r.wchan == "0" {
                "-"
            } else {
                &r.wchan
            },
            match (&r.wait, &d.released_by) {
                (
                    Wait::Futex {
                        uaddr,
                        holder: None,
                    },
                    Some(rel),
                ) => match rel.get(uaddr) {
                    Some((tid, comm)) =>
                        format!("{} (last released by {tid} {comm})", r.wait.text()),
                    None => r.wait.text(),
                },
                _ => r.wait.text(),
            }
        );
    }
    for dl in &d.deadlocks {
        let parts: Vec<String> = dl
            .edges
            .iter()
            .map(|(w, a, h)| format!("{w} waits for futex {a:#x} held by {h}"))
            .collect();
        let _ = writeln!(s, "DEADLOCK: {}", parts.join("; "));
    }
    if d.vanished > 0 {
        let _ = writeln!(s, "({} threads ended while being read)", d.vanished);
    }
    if stacks {
        if d.stacks_readable {
            let _ = writeln!(s, "Kernel stacks (innermost first):");
            for r in d.rows.iter().filter(|r| !r.stack.is_empty()) {
                let _ = writeln!(s, "  {} {}: {}", r.tid, r.comm, r.stack.join(" <- "));
            }
        } else {
            let _ = writeln!(
                s,
                "(kernel stacks need root: /proc/PID/task/TID/stack is unreadable)"
            );
        }
    }
    s
}

pub fn json(d: &Dump) -> Value {
    json!({
        "pid": d.pid,
        "comm": d.comm,
        "interval_ns": d.interval_ns,
        "threads": d.rows.iter().map(|r| {
            let (uaddr, holder, holder_how, fd, link) = match &r.wait {
                Wait::Futex { uaddr, holder } => (
                    Some(format!("{uaddr:#x}")),
                    holder.map(|h| h.0),
                    holder.map(|h| h.1.name()),
                    None,
                    None,
                ),
                Wait::Pipe { fd, link } | Wait::Socket { fd, link } => {
                    (None, None, None, Some(*fd), Some(link.clone()))
                }
                Wait::File { fd, link } => (None, None, None, Some(*fd), link.clone()),
                _ => (None, None, None, None, None),
            };
            let released = match (&r.wait, &d.released_by) {
                (Wait::Futex { uaddr, .. }, Some(rel)) => rel.get(uaddr).map(|x| x.0),
                _ => None,
            };
            json!({
                "tid": r.tid,
                "comm": r.comm,
                "state": r.state.to_string(),
                "state_name": state_name(r.state),
                "state_for_ns_at_least": r.state_for_ns,
                "cpu": r.cpu,
                "cpu_ns": r.cpu_ns,
                "runq_ns": r.runq_ns,
                "wchan": r.wchan,
                "syscall": r.syscall,
                "wait": {
                    "kind": r.wait.kind(),
                    "text": r.wait.text(),
                    "uaddr": uaddr,
                    "holder_tid": holder,
                    "holder_how": holder_how,
                    "fd": fd,
                    "target": link,
                    "last_released_by_tid": released,
                },
                "stack": r.stack,
            })
        }).collect::<Vec<_>>(),
        "deadlocks": d.deadlocks.iter().map(|dl| json!({
            "tids": dl.edges.iter().map(|e| e.0).collect::<Vec<_>>(),
            "locks": dl.edges.iter().map(|e| format!("{:#x}", e.1)).collect::<Vec<_>>(),
            "edges": dl.edges.iter().map(|(w, a, h)| json!({
                "waiter": w, "uaddr": format!("{a:#x}"), "holder": h,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "vanished": d.vanished,
        "stacks_readable": d.stacks_readable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn futex_thread(tid: u32, uaddr: u64, owner: u32) -> ThreadSample {
        ThreadSample {
            tid,
            comm: "t".into(),
            state: 'S',
            syscall: Some(Syscall::In {
                nr: libc::SYS_futex,
                args: [uaddr, 0x80, 2, 0, 0, 0],
            }),
            target: Some(Target::Futex {
                uaddr,
                op: 0x80,
                word: Some(2),
                owner_word: Some(owner),
            }),
            ..ThreadSample::default()
        }
    }

    fn sample(ts: u64, threads: Vec<ThreadSample>) -> ProcessSample {
        ProcessSample {
            pid: 1,
            comm: "p".into(),
            ts_ns: ts,
            threads,
            ..ProcessSample::default()
        }
    }

    #[test]
    fn a_cycle_of_two_is_a_deadlock() {
        let mut d = ThreadDump::default();
        let t = vec![futex_thread(10, 0x1000, 11), futex_thread(11, 0x2000, 10)];
        assert!(d.feed(sample(0, t.clone())).is_none());
        let dump = d.feed(sample(1_000_000_000, t)).unwrap();
        assert_eq!(
            dump.deadlocks,
            vec![Deadlock {
                edges: vec![(10, 0x1000, 11), (11, 0x2000, 10)]
            }]
        );
        assert_eq!(dump.rows[0].state_for_ns, 1_000_000_000);
        let txt = text(&dump, false);
        assert!(
            txt.contains("DEADLOCK: 10 waits for futex 0x1000 held by 11"),
            "{txt}"
        );
    }

    #[test]
    fn a_holder_outside_the_process_or_unlocked_is_not_named() {
        let tids: BTreeSet<u32> = [10, 11].into();
        let mut t = futex_thread(10, 0x1000, 99);
        assert_eq!(
            wait_of(&t, &tids),
            Wait::Futex {
                uaddr: 0x1000,
                holder: None
            }
        );
        t.target = Some(Target::Futex {
            uaddr: 0x1000,
            op: 0x80,
            word: Some(0),
            owner_word: Some(11),
        });
        assert!(matches!(
            wait_of(&t, &tids),
            Wait::Futex { holder: None, .. }
        ));
        // A chain without a cycle is no deadlock.
        let rows = vec![futex_thread(10, 1, 11), futex_thread(11, 2, 12)];
        let mut d = ThreadDump::default();
        d.feed(sample(0, rows.clone()));
        assert!(d.feed(sample(1, rows)).unwrap().deadlocks.is_empty());
    }

    #[test]
    fn state_time_resets_when_the_thread_runs() {
        let mut d = ThreadDump::default();
        let mut t = futex_thread(10, 1, 0);
        d.feed(sample(0, vec![t.clone()]));
        assert_eq!(
            d.feed(sample(5, vec![t.clone()])).unwrap().rows[0].state_for_ns,
            5
        );
        t.slices = 1;
        assert_eq!(
            d.feed(sample(9, vec![t.clone()])).unwrap().rows[0].state_for_ns,
            0
        );
        assert_eq!(d.feed(sample(12, vec![t])).unwrap().rows[0].state_for_ns, 3);
    }
}
