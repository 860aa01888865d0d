//! Direct block I/O of a known shape, for diag's block tests.
//!
//! diag-blkio DEVICE SIZE READS WRITES
//!     Open DEVICE with O_DIRECT, print `PID <pid>`, wait for a line on
//!     stdin (diag is ready), then do WRITES writes and READS reads of
//!     SIZE bytes each, one at a time (each waits for its completion: no
//!     two can merge), at distinct SIZE-aligned offsets. Then print
//!     `IO_NS <n>` (the time the read and write calls took, by the
//!     process's own clock), `RUNQ_NS <n>` and `CPU_NS <n>` (the kernel's
//!     run-queue wait and CPU time of the thread over the calls, from
//!     /proc/thread-self/schedstat), `READ_BYTES <n>` and `WRITE_BYTES <n>`
//!     (the change of /proc/self/io's read_bytes and write_bytes over the
//!     I/O), `SLEEPS <n>` and `MAJFLT <n>` (the thread's voluntary context
//!     switches and major faults over the calls, from getrusage: more
//!     sleeps than requests, or a major fault, means it also waited for
//!     something else), and `DONE`, and wait for stdin to close.

use std::{
    io::{BufRead, Write},
    os::unix::{fs::OpenOptionsExt, io::AsRawFd},
    process::ExitCode,
    time::Instant,
};

fn proc_io() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (get("read_bytes:"), get("write_bytes:"))
}

/// (CPU time, run-queue wait) of the calling thread, ns.
fn schedstat() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let mut f = text.split_whitespace().map(|v| v.parse().unwrap_or(0));
    (f.next().unwrap_or(0), f.next().unwrap_or(0))
}

/// (voluntary context switches, major faults) of the calling thread.
fn rusage() -> (u64, u64) {
    // SAFETY: a zeroed rusage is valid; getrusage only writes it.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `r` is a valid, writable rusage.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut r) };
    (r.ru_nvcsw as u64, r.ru_majflt as u64)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: diag-blkio DEVICE SIZE READS WRITES");
        return ExitCode::from(2);
    }
    let (Ok(size), Ok(reads), Ok(writes)) = (
        args[2].parse::<usize>(),
        args[3].parse::<u64>(),
        args[4].parse::<u64>(),
    ) else {
        eprintln!("diag-blkio: SIZE, READS and WRITES are numbers");
        return ExitCode::from(2);
    };
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&args[1])
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("diag-blkio: {}: {e}", args[1]);
            return ExitCode::FAILURE;
        }
    };
    // An aligned buffer (O_DIRECT), filled with a pattern.
    let layout = std::alloc::Layout::from_size_align(size, 4096).expect("layout");
    // SAFETY: non-zero size, checked by the layout; freed at exit.
    let buf = unsafe { std::alloc::alloc(layout) };
    if buf.is_null() {
        return ExitCode::FAILURE;
    }
    // SAFETY: `buf` is `size` bytes, owned here.
    unsafe { std::ptr::write_bytes(buf, 0x5a, size) };
    println!("PID {}", std::process::id());
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    let mut stdin = std::io::stdin().lock();
    let _ = stdin.read_line(&mut line);
    let fd = f.as_raw_fd();
    let before = proc_io();
    let sched_before = schedstat();
    let usage_before = rusage();
    let t = Instant::now();
    for i in 0..writes + reads {
        // Writes first, then reads of the same blocks.
        let off = ((i % writes.max(1)) * size as u64) as libc::off_t;
        // SAFETY: `buf` is `size` bytes; `fd` is open.
        let n = unsafe {
            if i < writes {
                libc::pwrite(fd, buf.cast(), size, off)
            } else {
                libc::pread(fd, buf.cast(), size, off)
            }
        };
        if n != size as isize {
            eprintln!(
                "diag-blkio: I/O {i} at {off}: {n} bytes: {}",
                std::io::Error::last_os_error()
            );
            return ExitCode::FAILURE;
        }
    }
    let io_ns = t.elapsed().as_nanos();
    let usage_after = rusage();
    let sched_after = schedstat();
    let after = proc_io();
    println!("IO_NS {io_ns}");
    println!("CPU_NS {}", sched_after.0 - sched_before.0);
    println!("RUNQ_NS {}", sched_after.1 - sched_before.1);
    println!("READ_BYTES {}", after.0 - before.0);
    println!("WRITE_BYTES {}", after.1 - before.1);
    println!("SLEEPS {}", usage_after.0 - usage_before.0);
    println!("MAJFLT {}", usage_after.1 - usage_before.1);
    println!("DONE");
    let _ = std::io::stdout().flush();
    while stdin.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {}
    ExitCode::SUCCESS
}
