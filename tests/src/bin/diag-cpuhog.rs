//! CPU contention for diag's scheduler tests, bounded in time. Every mode
//! prints `PID <pid>` first and, at the end, `RUN_DELAY_NS <n>`,
//! `CPU_NS <n>` and `SLICES <n>`: the kernel's own run-queue wait, CPU time
//! and number of times on a CPU (schedstat's three fields) summed over all
//! of its threads, each read by the thread itself just before it exits.
//!
//! diag-cpuhog hog THREADS SECS [CPU]
//!     THREADS busy loops for SECS seconds (pinned to CPU if given).
//! diag-cpuhog victim SECS [CPU] [idle]
//!     Sleep 1 ms, work about 50 us, repeat for SECS seconds; `idle` runs it
//!     under SCHED_IDLE so that any busy task on its CPU makes it wait.
//! diag-cpuhog threads N
//!     Start N short-lived threads (each sleeps 1 ms), 50 at a time.
//! diag-cpuhog fsync SECS DIR
//!     Write 4 KiB and fsync a file in DIR, repeatedly (uninterruptible
//!     sleep, D state, while the disk works).

use std::{
    io::Write,
    process::ExitCode,
    time::{Duration, Instant},
};

/// schedstat of threads: on-CPU ns, run-queue wait ns, times on a CPU.
#[derive(Debug, Default, Clone, Copy)]
struct Stat {
    cpu_ns: u64,
    delay_ns: u64,
    slices: u64,
}

impl std::ops::AddAssign for Stat {
    fn add_assign(&mut self, o: Stat) {
        self.cpu_ns += o.cpu_ns;
        self.delay_ns += o.delay_ns;
        self.slices += o.slices;
    }
}

/// schedstat of the calling thread.
fn own_schedstat() -> Stat {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let mut f = text
        .split_whitespace()
        .map(|v| v.parse::<u64>().unwrap_or(0));
    Stat {
        cpu_ns: f.next().unwrap_or(0),
        delay_ns: f.next().unwrap_or(0),
        slices: f.next().unwrap_or(0),
    }
}

fn pin(cpu: Option<usize>) -> std::io::Result<()> {
    let Some(cpu) = cpu else { return Ok(()) };
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn spin_until(deadline: Instant) {
    let mut x = 0u64;
    while Instant::now() < deadline {
        for i in 0..1000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
    }
}

fn hog(threads: usize, secs: f64, cpu: Option<usize>) -> std::io::Result<Stat> {
    pin(cpu)?;
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let _ = pin(cpu);
                spin_until(deadline);
                own_schedstat()
            })
        })
        .collect();
    let mut total = Stat::default();
    for h in handles {
        total += h
            .join()
            .map_err(|_| std::io::Error::other("thread panicked"))?;
    }
    total += own_schedstat();
    Ok(total)
}

fn victim(secs: f64, cpu: Option<usize>, idle: bool) -> std::io::Result<Stat> {
    pin(cpu)?;
    if idle {
        let p = libc::sched_param { sched_priority: 0 };
        // SAFETY: valid pointer to a sched_param.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &p) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
        spin_until(Instant::now() + Duration::from_micros(50));
    }
    Ok(own_schedstat())
}

fn threads(n: usize) -> std::io::Result<Stat> {
    let mut total = Stat::default();
    for batch in (0..n).collect::<Vec<_>>().chunks(50) {
        let handles: Vec<_> = batch
            .iter()
            .map(|_| {
                std::thread::spawn(|| {
                    std::thread::sleep(Duration::from_millis(1));
                    own_schedstat()
                })
            })
            .collect();
        for h in handles {
            total += h
                .join()
                .map_err(|_| std::io::Error::other("thread panicked"))?;
        }
    }
    total += own_schedstat();
    Ok(total)
}

fn fsync_loop(secs: f64, dir: &str) -> std::io::Result<Stat> {
    let path = std::path::Path::new(dir).join(format!("diag-cpuhog-{}", std::process::id()));
    let mut f = std::fs::File::create(&path)?;
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let block = [0x5au8; 4096];
    let mut n = 0u64;
    while Instant::now() < deadline {
        f.write_all(&block)?;
        f.sync_all()?;
        n += 1;
    }
    drop(f);
    let _ = std::fs::remove_file(&path);
    eprintln!("diag-cpuhog: {n} fsyncs");
    Ok(own_schedstat())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| args.get(i).and_then(|v| v.parse::<f64>().ok());
    let cpu = |i: usize| args.get(i).and_then(|v| v.parse::<usize>().ok());
    println!("PID {}", std::process::id());
    let _ = std::io::stdout().flush();
    let r = match (args.first().map(String::as_str), num(1)) {
        (Some("hog"), Some(threads)) => match num(2) {
            Some(secs) => hog(threads as usize, secs, cpu(3)),
            None => Err(std::io::Error::other("hog THREADS SECS [CPU]")),
        },
        (Some("victim"), Some(secs)) => victim(secs, cpu(2), args.iter().any(|a| a == "idle")),
        (Some("threads"), Some(n)) => threads(n as usize),
        (Some("fsync"), Some(secs)) => match args.get(2) {
            Some(dir) => fsync_loop(secs, dir),
            None => Err(std::io::Error::other("fsync SECS DIR")),
        },
        _ => Err(std::io::Error::other(
            "usage: diag-cpuhog hog THREADS SECS [CPU] | victim SECS [CPU] [idle] | threads N | fsync SECS DIR",
        )),
    };
    match r {
        Ok(st) => {
            println!("RUN_DELAY_NS {}", st.delay_ns);
            println!("CPU_NS {}", st.cpu_ns);
            println!("SLICES {}", st.slices);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("diag-cpuhog: {e}");
            ExitCode::FAILURE
        }
    }
}
