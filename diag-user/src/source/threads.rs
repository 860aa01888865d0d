//! The thread-dump source (`diag threads`): one sample of a process's
//! threads from procfs, read in one pass: `/proc/PID/task/TID/stat`
//! (state, CPU), `schedstat` (CPU time, run-queue wait, slices), `wchan`,
//! `syscall` (the system call a blocked thread is in, with its
//! arguments), `stack` (kernel stack: root only), and what a blocked
//! thread's arguments point at: the link of a file descriptor
//! (`/proc/PID/fd/N`: `pipe:[..]`, `socket:[..]`, a path) and the words
//! of a futex and of the glibc mutex around it (`/proc/PID/mem`).
//!
//! No probes, no kernel maps: what the kernel shows any root process.
//! Threads that end while being read are skipped (counted).

use std::{
    fs,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

/// What procfs said about one thread at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThreadSample {
    pub tid: u32,
    pub comm: String,
    /// The state letter of `stat` (R, S, D, T, t, Z, X, I...).
    pub state: char,
    /// The CPU it last ran on.
    pub cpu: i32,
    /// schedstat: CPU time, run-queue wait (ns), slices on a CPU.
    pub cpu_ns: u64,
    pub runq_ns: u64,
    pub slices: u64,
    /// The kernel function it sleeps in (`0`: none).
    pub wchan: String,
    /// `syscall`: None when unreadable, Some(Running) when on a CPU.
    pub syscall: Option<Syscall>,
    /// Kernel stack frames (function+offset), empty when unreadable.
    pub stack: Vec<String>,
    /// What a blocked system call waits on, read from its arguments.
    pub target: Option<Target>,
}

/// `/proc/PID/task/TID/syscall`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Syscall {
    /// The thread is on a CPU: no system call to show.
    Running,
    /// Blocked, but not in a system call (`-1`).
    NotInSyscall,
    /// In system call `nr` with these arguments.
    In { nr: i64, args: [u64; 6] },
}

/// What a blocked system call's arguments point at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A file descriptor and its link (`pipe:[123]`, `socket:[456]`, a path).
    Fd { fd: u64, link: Option<String> },
    /// A futex: its address and op, the word there, and the word 8 bytes
    /// on (glibc's `pthread_mutex_t.__owner`), when readable.
    Futex {
        uaddr: u64,
        op: u32,
        word: Option<u32>,
        owner_word: Option<u32>,
    },
}

/// One sample of a process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessSample {
    pub pid: u32,
    pub comm: String,
    /// Boot-time ns when it was taken.
    pub ts_ns: u64,
    pub threads: Vec<ThreadSample>,
    /// Threads that ended while being read.
    pub vanished: u64,
    /// Whether kernel stacks were readable (root).
    pub stacks_readable: bool,
}

/// Why a process cannot be sampled.
#[derive(Debug, thiserror::Error)]
pub enum ThreadsError {
    #[error("no process {0} (it is not in /proc)")]
    NoProcess(u32),
    #[error("cannot read {path}: {why}")]
    Unreadable { path: String, why: String },
}

fn read(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok()
}

/// `stat`: (comm, state, cpu). comm is between the first '(' and the
/// last ')' (it may hold spaces and parentheses).
pub fn parse_stat(text: &str) -> Option<(String, char, i32)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); field 39 (processor) is rest[36].
    let state = rest.first()?.chars().next()?;
    let cpu = rest.get(36).and_then(|v| v.parse().ok()).unwrap_or(-1);
    Some((comm, state, cpu))
}

/// `schedstat`: (cpu_ns, runq_ns, slices).
pub fn parse_schedstat(text: &str) -> Option<(u64, u64, u64)> {
    let mut it = text.split_whitespace().map(|v| v.parse::<u64>().ok());
    Some((it.next()??, it.next()??, it.next()??))
}

/// `syscall`: `running`, `-1 SP PC`, or `NR A1..A6 SP PC` (hex args).
pub fn parse_syscall(text: &str) -> Option<Syscall> {
    let text = text.trim();
    if text == "running" {
        return Some(Syscall::Running);
    }
    let mut it = text.split_whitespace();
    let nr: i64 = it.next()?.parse().ok()?;
    if nr < 0 {
        return Some(Syscall::NotInSyscall);
    }
    let mut args = [0u64; 6];
    for a in &mut args {
        let v = it.next()?;
        *a = u64::from_str_radix(v.trim_start_matches("0x"), 16).ok()?;
    }
    Some(Syscall::In { nr, args })
}

/// System calls whose first argument is the file descriptor they block on.
pub fn fd_syscall(nr: i64) -> bool {
    let mut v = vec![
        libc::SYS_read,
        libc::SYS_readv,
        libc::SYS_pread64,
        libc::SYS_preadv,
        libc::SYS_write,
        libc::SYS_writev,
        libc::SYS_recvfrom,
        libc::SYS_recvmsg,
        libc::SYS_recvmmsg,
        libc::SYS_sendto,
        libc::SYS_sendmsg,
        libc::SYS_accept,
        libc::SYS_accept4,
        libc::SYS_connect,
        libc::SYS_epoll_pwait,
        libc::SYS_fsync,
        libc::SYS_fdatasync,
        libc::SYS_flock,
        libc::SYS_fcntl,
        libc::SYS_ioctl,
    ];
    #[cfg(target_arch = "x86_64")]
    v.push(libc::SYS_epoll_wait);
    v.contains(&nr)
}

fn read_u32(mem: &fs::File, addr: u64) -> Option<u32> {
    let mut b = [0u8; 4];
    mem.read_exact_at(&mut b, addr).ok()?;
    Some(u32::from_ne_bytes(b))
}

fn target(pid: u32, sc: &Syscall, mem: Option<&fs::File>) -> Option<Target> {
    let Syscall::In { nr, args } = sc else {
        return None;
    };
    if *nr == libc::SYS_futex || *nr == libc::SYS_futex_waitv {
        let (uaddr, op) = if *nr == libc::SYS_futex_waitv {
            // The first futex of the vector: struct futex_waitv { u64 val;
            // u64 uaddr; ... } (uapi).
            let a = mem.and_then(|m| {
                let mut b = [0u8; 8];
                m.read_exact_at(&mut b, args[0] + 8).ok()?;
                Some(u64::from_ne_bytes(b))
            })?;
            (a, 0)
        } else {
            (args[0], args[1] as u32)
        };
        let word = mem.and_then(|m| read_u32(m, uaddr));
        let owner_word = mem.and_then(|m| read_u32(m, uaddr + 8));
        return Some(Target::Futex {
            uaddr,
            op,
            word,
            owner_word,
        });
    }
    if fd_syscall(*nr) {
        let fd = args[0];
        let link = fs::read_link(format!("/proc/{pid}/fd/{fd}"))
            .ok()
            .map(|l| l.display().to_string());
        return Some(Target::Fd { fd, link });
    }
    None
}

fn comm_of(pid: u32) -> String {
    read(Path::new(&format!("/proc/{pid}/comm")))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_default()
}

/// Sample process `pid` now.
pub fn sample(pid: u32) -> Result<ProcessSample, ThreadsError> {
    let base = PathBuf::from(format!("/proc/{pid}"));
    let dir = fs::read_dir(base.join("task")).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ThreadsError::NoProcess(pid)
        } else {
            ThreadsError::Unreadable {
                path: base.join("task").display().to_string(),
                why: e.to_string(),
            }
        }
    })?;
    let mut tids: Vec<u32> = dir
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    let mem = fs::File::open(base.join("mem")).ok();
    let mut out = ProcessSample {
        pid,
        comm: comm_of(pid),
        ts_ns: crate::clock::boot_ns(),
        ..ProcessSample::default()
    };
    for tid in tids {
        let t = base.join("task").join(tid.to_string());
        let Some((comm, state, cpu)) = read(&t.join("stat")).as_deref().and_then(parse_stat) else {
            out.vanished += 1;
            continue;
        };
        let (cpu_ns, runq_ns, slices) = read(&t.join("schedstat"))
            .as_deref()
            .and_then(parse_schedstat)
            .unwrap_or_default();
        let wchan = read(&t.join("wchan")).unwrap_or_default();
        let syscall = read(&t.join("syscall")).as_deref().and_then(parse_syscall);
        let stack: Vec<String> = read(&t.join("stack"))
            .map(|s| {
                s.lines()
                    .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if !stack.is_empty() {
            out.stacks_readable = true;
        }
        let target = syscall.as_ref().and_then(|s| target(pid, s, mem.as_ref()));
        out.threads.push(ThreadSample {
            tid,
            comm,
            state,
            cpu,
            cpu_ns,
            runq_ns,
            slices,
            wchan: wchan.trim().to_string(),
            syscall,
            stack,
            target,
        });
    }
    if out.threads.is_empty() && !base.exists() {
        return Err(ThreadsError::NoProcess(pid));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_comm() {
        let s = "42 (a) b (c)) S 1 42 42 0 -1 4194560 0 0 0 0 3 4 0 0 20 0 2 0 100 0 0 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(parse_stat(s), Some(("a) b (c)".into(), 'S', 1)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn syscall_lines() {
        assert_eq!(parse_syscall("running\n"), Some(Syscall::Running));
        assert_eq!(
            parse_syscall("-1 0x7ffc 0x7f00\n"),
            Some(Syscall::NotInSyscall)
        );
        assert_eq!(
            parse_syscall("202 0x55d0 0x80 0x2 0x0 0x0 0x0 0x7ffd 0x7f12\n"),
            Some(Syscall::In {
                nr: 202,
                args: [0x55d0, 0x80, 2, 0, 0, 0]
            })
        );
        assert_eq!(parse_syscall("202 0x55d0"), None);
        assert_eq!(parse_schedstat("10 20 3\n"), Some((10, 20, 3)));
        assert_eq!(parse_schedstat("x"), None);
    }
}
