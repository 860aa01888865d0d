//! `cargo xtask bench`, the memory part: what diag's memory probes cost
//! on a reclaim loop.
//!
//! The workload: `diag-loadgen reread` reads a 64 MiB file 12 times in a
//! memory cgroup limited to 16 MiB (v1 `memory.limit_in_bytes`, or v2
//! `memory.max`), its cache dropped before each round: every read charges
//! the cgroup and runs memory cgroup reclaim, so the reclaim tracepoints
//! (begin/end, the LRU scans) fire as often as they can. It runs with no
//! tracer, with `diag tail --events memstall` (the memory probes), with
//! `diag runq` (everything runq attaches: the scheduler, memory and swap
//! probes) and with the memory probes attached but returning at once
//! (`--empty-programs`: the floor), interleaved; medians of the MiB read
//! per second of the workload's CPU time are compared.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{bench_tcp::Bg, stats::stats};

const FILE_MIB: usize = 64;
const LIMIT: &str = "16777216";
const READS: usize = 12;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tracer {
    None,
    Empty,
    Memstall,
    Runq,
}

impl Tracer {
    fn name(self) -> &'static str {
        match self {
            Tracer::None => "baseline (no tracer)",
            Tracer::Empty => "empty programs (floor)",
            Tracer::Memstall => "diag tail --events memstall",
            Tracer::Runq => "diag runq (sched+memory+swap)",
        }
    }
    fn key(self) -> &'static str {
        match self {
            Tracer::None => "baseline",
            Tracer::Empty => "empty_programs",
            Tracer::Memstall => "diag_memstall",
            Tracer::Runq => "diag_runq",
        }
    }
}

fn start(t: Tracer, diag: &Path) -> Result<Option<Bg>> {
    let mut c = Command::new(diag);
    match t {
        Tracer::None => return Ok(None),
        Tracer::Empty => c.args(["tail", "--events", "memstall", "--empty-programs"]),
        Tracer::Memstall => c.args(["tail", "--events", "memstall"]),
        Tracer::Runq => c.args(["runq", "--interval", "1s"]),
    };
    Bg::start(c, "tracing", true).map(Some)
}

/// A memory cgroup for the bench, removed on drop.
struct Cgroup(PathBuf);

impl Cgroup {
    fn create() -> Result<Cgroup> {
        let v1 = Path::new("/sys/fs/cgroup/memory");
        let (dir, limit) = if v1.join("memory.limit_in_bytes").exists() {
            (v1.join("diag-bench-memory"), "memory.limit_in_bytes")
        } else {
            (
                Path::new("/sys/fs/cgroup/diag-bench-memory").to_path_buf(),
                "memory.max",
            )
        };
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let cg = Cgroup(dir);
        std::fs::write(cg.0.join(limit), LIMIT)
            .with_context(|| format!("{} <- {LIMIT}", cg.0.join(limit).display()))?;
        let swappiness = cg.0.join("memory.swappiness");
        if swappiness.exists() {
            let _ = std::fs::write(swappiness, "0");
        }
        Ok(cg)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// The file, written once and synced (its pages clean, so that they can
/// be dropped from the page cache before each round).
fn make_file(path: &Path) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..FILE_MIB {
        for c in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_ne_bytes());
        }
        f.write_all(&buf)?;
    }
    f.sync_all()?;
    Ok(())
}

fn drop_cache(path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path)?;
    // SAFETY: fadvise on our own open file.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        bail!("posix_fadvise: {rc}");
    }
    Ok(())
}

/// One reclaim-bound run: MiB per second of the workload's own CPU time
/// (user + system, from wait4: the reclaim and the probes in its context
/// are system time). On a shared host the CPU time is steadier than the
/// wall time, which other tasks' load moves.
fn run_workload(loadgen: &Path, cg: &Cgroup, file: &Path) -> Result<f64> {
    drop_cache(file)?;
    let procs = cg.0.join("cgroup.procs");
    let child = Command::new("sh")
        .arg("-c")
        .arg(r#"echo $$ > "$1" && exec "$2" reread "$3" "$4" > /dev/null"#)
        .args(["sh"])
        .arg(&procs)
        .arg(loadgen)
        .arg(READS.to_string())
        .arg(file)
        .spawn()?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: wait4 on our own child, with valid out-pointers.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    if rc != pid {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        bail!("the reclaim loop failed: status {status}");
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let cpu = tv(ru.ru_utime) + tv(ru.ru_stime);
    Ok((FILE_MIB * READS) as f64 / cpu.max(1e-6))
}

/// Memory overhead: Markdown and JSON for the report.
pub fn memory_overhead(
    diag: &Path,
    loadgen: &Path,
    dir: &Path,
    reps: usize,
) -> Result<crate::bench_tcp::Section> {
    let file = PathBuf::from(format!(
        "/var/tmp/diag-bench-memory-{}.bin",
        std::process::id()
    ));
    make_file(&file)?;
    let result = (|| {
        let cg = Cgroup::create()?;
        let tracers = [Tracer::None, Tracer::Memstall, Tracer::Runq, Tracer::Empty];
        let mut results: Vec<Vec<f64>> = vec![Vec::new(); tracers.len()];
        let mut tallies = vec![crate::progstats::Tally::default(); tracers.len()];
        println!(
            "xtask: bench: reread a {FILE_MIB} MiB file {READS} times in a 16 MiB memory cgroup, {reps} rounds of {}",
            tracers.map(|t| t.name()).join(" / ")
        );
        // One warm-up run: the first charge of the cgroup is not a round.
        run_workload(loadgen, &cg, &file)?;
        for rep in 0..reps {
            for k in 0..tracers.len() {
                let i = (k + rep) % tracers.len();
                let t = tracers[i];
                // diag's rows run with the kernel's per-program statistics on.
                let _stats = (t != Tracer::None).then(crate::progstats::StatsOn::new);
                let running = start(t, diag)?;
                let r = run_workload(loadgen, &cg, &file);
                if let Some(r) = running {
                    tallies[i].add_pid(r.pid());
                    r.stop()?;
                }
                let mibs = r?;
                println!(
                    "xtask:   round {}: {:<30} {mibs:>8.1} MiB per CPU second",
                    rep + 1,
                    t.name()
                );
                results[i].push(mibs);
            }
        }
        Ok::<_, anyhow::Error>((tracers, results, tallies))
    })();
    let _ = std::fs::remove_file(&file);
    let (tracers, results, tallies) = result?;
    let base = stats(&results[0]);
    let mut md = String::from(
        "| tracer | MiB per CPU-s min | median | max | vs baseline | loss |\n|---|---:|---:|---:|---:|---:|\n",
    );
    let mut rows = serde_json::Map::new();
    for (i, t) in tracers.iter().enumerate() {
        let s = stats(&results[i]);
        let ratio = if base.median > 0.0 {
            s.median / base.median
        } else {
            0.0
        };
        md.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.3} | {:.1} % |\n",
            t.name(),
            s.min,
            s.median,
            s.max,
            ratio,
            (1.0 - ratio) * 100.0
        ));
        rows.insert(
            t.key().into(),
            serde_json::json!({
                "mib_per_cpu_sec": results[i],
                "min": s.min, "median": s.median, "max": s.max,
                "ratio_to_baseline": ratio,
                "loss_pct": (1.0 - ratio) * 100.0,
            }),
        );
    }
    md.push_str(&format!(
        "\nWorkload: `diag-loadgen reread {READS}` of a {FILE_MIB} MiB file (its cache dropped first) in a memory cgroup limited to 16 MiB: every read runs memory cgroup reclaim. The figure is MiB read per second of the workload's own CPU time (user + system from wait4: reclaim and the probes that fire in its context are its system time; diag's user-space work is not in it). {reps} interleaved rounds, medians compared.\n"
    ));
    md.push_str(&crate::progstats::section(
        &[
            (Tracer::Memstall.name(), &tallies[1]),
            (Tracer::Runq.name(), &tallies[2]),
            (Tracer::Empty.name(), &tallies[3]),
        ],
        reps,
        Some(Tracer::Empty.name()),
    ));
    let _ = dir;
    Ok(crate::bench_tcp::Section {
        markdown: md,
        json: serde_json::json!({
            "workload": format!("reread {READS} x {FILE_MIB} MiB in a 16 MiB memory cgroup"),
            "rounds": reps,
            "results": rows,
            "programs": {
                Tracer::Memstall.key(): tallies[1].json(),
                Tracer::Runq.key(): tallies[2].json(),
                Tracer::Empty.key(): tallies[3].json(),
            },
        }),
    })
}
