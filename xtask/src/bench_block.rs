//! `cargo xtask bench`, the block part: what diag's block I/O probes cost.
//!
//! The workload is a direct-I/O loop: `dd` reading 4 KiB blocks with
//! O_DIRECT from a loop device (made for the bench on a file in tmpfs,
//! /dev/shm, so that no disk shared with anything else sets the pace;
//! detached at the end), so every call is one block request, and the
//! request rate is as high as one process makes it (tens of thousands a
//! second): the worst case for a per-request tracer. It runs with no tracer, with the block
//! programs attached by `diag tail --events io` (a threshold no request
//! reaches: the per-request work of every view that shows block I/O, no
//! events), and with the same programs returning at once
//! (`--empty-programs`: the cost of the attachment alone), interleaved
//! and repeated; medians are compared. In the diag rounds the kernel's
//! BPF run-time statistics (kernel.bpf_stats_enabled, restored after)
//! give the programs' own time per run: the cost without the noise of
//! whatever else the machine runs.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::{bench_tcp::Bg, stats::stats};

/// Blocks of 4 KiB read per run.
pub const BLOCKS: u64 = 50_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tracer {
    None,
    Diag,
    Empty,
}

impl Tracer {
    fn name(self) -> &'static str {
        match self {
            Tracer::None => "baseline (no tracer)",
            Tracer::Diag => "diag tail --events io",
            Tracer::Empty => "empty programs (floor)",
        }
    }
    fn key(self) -> &'static str {
        match self {
            Tracer::None => "baseline",
            Tracer::Diag => "diag",
            Tracer::Empty => "empty_programs",
        }
    }
}

/// A loop device on a file, detached on drop.
struct LoopDev {
    dev: String,
    file: PathBuf,
}

impl LoopDev {
    fn create(dir: &Path, blocks: u64) -> Result<LoopDev> {
        // In memory when there is a tmpfs: the request rate is then the
        // CPU's, not a shared disk's.
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() { shm } else { dir };
        let file = dir.join(format!("diag-block-bench-{}.img", std::process::id()));
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&file)?;
            let mib = vec![0u8; 1 << 20];
            for _ in 0..(blocks * 4096).div_ceil(1 << 20) {
                f.write_all(&mib)?;
            }
            f.sync_all()?;
        }
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&file)
            .output()
            .context("cannot run losetup (Debian's mount package)")?;
        if !out.status.success() {
            bail!("losetup: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(LoopDev {
            dev: String::from_utf8_lossy(&out.stdout).trim().to_string(),
            file,
        })
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
        let _ = std::fs::remove_file(&self.file);
    }
}

fn start(t: Tracer, diag: &Path) -> Result<Option<Bg>> {
    let mut c = Command::new(diag);
    c.args(["tail", "--events", "io", "--io-threshold", "1h"]);
    match t {
        Tracer::None => return Ok(None),
        Tracer::Diag => {}
        Tracer::Empty => {
            c.arg("--empty-programs");
        }
    }
    Bg::start(c, "tracing", true).map(Some)
}

/// The kernel's run-time statistics of the block programs (`bpftool prog
/// show`, with kernel.bpf_stats_enabled on): (ns, runs) summed over
/// block_io_start, block_rq_merge and block_rq_complete.
fn block_prog_stats() -> Option<(u64, u64)> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let mut ns = 0;
    let mut runs = 0;
    for p in v.as_array()? {
        let name = p["name"].as_str().unwrap_or("");
        if name.starts_with("block_io_start") || name.starts_with("block_rq_") {
            ns += p["run_time_ns"].as_u64().unwrap_or(0);
            runs += p["run_cnt"].as_u64().unwrap_or(0);
        }
    }
    Some((ns, runs))
}

/// Requests per second of one direct-I/O run.
fn run_workload(dev: &str) -> Result<f64> {
    let t = Instant::now();
    let out = Command::new("dd")
        .arg(format!("if={dev}"))
        .args(["of=/dev/null", "bs=4096", "iflag=direct"])
        .arg(format!("count={BLOCKS}"))
        .output()
        .context("cannot run dd")?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("dd failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(BLOCKS as f64 / secs.max(1e-9))
}

/// Block I/O overhead: Markdown and JSON for the report.
pub fn block_overhead(diag: &Path, dir: &Path, reps: usize) -> Result<crate::bench_tcp::Section> {
    let lo = LoopDev::create(dir, BLOCKS)?;
    let tracers = [Tracer::None, Tracer::Diag, Tracer::Empty];
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); tracers.len()];
    // The programs' own time per run, from the kernel's BPF statistics,
    // in the diag rounds, a figure per round (the statistics are on in
    // the diag and empty-program rounds: they cost a little).
    let mut prog_ns_per_run: Vec<f64> = Vec::new();
    let mut tallies = vec![crate::progstats::Tally::default(); tracers.len()];
    println!(
        "xtask: bench: dd of {BLOCKS} direct 4 KiB reads from {}, {reps} rounds of {}",
        lo.dev,
        tracers.map(|t| t.name()).join(" / ")
    );
    for rep in 0..reps {
        for k in 0..tracers.len() {
            let i = (k + rep) % tracers.len();
            let running = start(tracers[i], diag)?;
            // diag's rows (the floor among them) run with the kernel's
            // per-program statistics on.
            let _stats = (tracers[i] != Tracer::None).then(crate::progstats::StatsOn::new);
            let diag_round = tracers[i] == Tracer::Diag;
            let before = diag_round.then(block_prog_stats).flatten();
            let r = run_workload(&lo.dev);
            if let (Some((ns0, n0)), Some((ns1, n1))) =
                (before, diag_round.then(block_prog_stats).flatten())
                && n1 > n0
            {
                prog_ns_per_run.push((ns1 - ns0) as f64 / (n1 - n0) as f64);
            }
            if let Some(r) = running {
                tallies[i].add_pid(r.pid());
                r.stop()?;
            }
            let v = r?;
            println!(
                "xtask:   round {}: {:<24} {v:>10.0} requests/s",
                rep + 1,
                tracers[i].name()
            );
            results[i].push(v);
        }
    }
    let base = stats(&results[0]).median.max(1.0);
    let mut md = String::from(
        "| tracer | requests/s min | median | max | vs baseline | loss |\n|---|---:|---:|---:|---:|---:|\n",
    );
    let mut rows = serde_json::Map::new();
    let mut medians = Vec::new();
    for (i, t) in tracers.iter().enumerate() {
        let s = stats(&results[i]);
        let ratio = s.median / base;
        medians.push(s.median);
        md.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.0} | {ratio:.3} | {:.1} % |\n",
            t.name(),
            s.min,
            s.median,
            s.max,
            (1.0 - ratio) * 100.0
        ));
        rows.insert(
            t.key().into(),
            serde_json::json!({
                "requests_per_sec": results[i],
                "min": s.min, "median": s.median, "max": s.max,
                "ratio_to_baseline": ratio,
                "loss_pct": (1.0 - ratio) * 100.0,
            }),
        );
    }
    // Per request: the time diag adds, from the medians.
    let per_req_ns = |m: f64| (1e9 / m.max(1.0) - 1e9 / base).max(0.0);
    let prog = stats(&prog_ns_per_run);
    md.push_str(&format!(
        "\nThe block programs' own run time (the kernel's BPF statistics, in the diag rounds): median {:.0} ns per program run, two runs per request (start and completion).\n",
        prog.median
    ));
    let added = |m: f64| {
        if m >= base {
            "nothing measurable".to_string()
        } else {
            format!("about {:.1} µs", per_req_ns(m) / 1000.0)
        }
    };
    md.push_str(&format!(
        "\nWorkload: `dd if=LOOP of=/dev/null bs=4096 iflag=direct count={BLOCKS}` on a loop device (backed by a file in tmpfs), {reps} interleaved rounds, medians compared. \
         diag adds {} per request, the programs returning at once {}{}.\n",
        added(medians[1]),
        added(medians[2]),
        if medians[1] >= base || medians[2] >= base {
            " (a row faster than the baseline is this run's noise: the per-program times below are the measure)"
        } else {
            ""
        },
    ));
    md.push_str(&crate::progstats::section(
        &[
            (Tracer::Diag.name(), &tallies[1]),
            (Tracer::Empty.name(), &tallies[2]),
        ],
        reps,
        Some(Tracer::Empty.name()),
    ));
    let json = serde_json::json!({
        "workload": format!("dd if=LOOP of=/dev/null bs=4096 iflag=direct count={BLOCKS}"),
        "rounds": reps,
        "results": rows,
        "diag_ns_per_request": per_req_ns(medians[1]),
        "empty_programs_ns_per_request": per_req_ns(medians[2]),
        "program_ns_per_run": prog_ns_per_run,
        "program_ns_per_run_median": prog.median,
        "programs": {
            Tracer::Diag.key(): tallies[1].json(),
            Tracer::Empty.key(): tallies[2].json(),
        },
    });
    Ok(crate::bench_tcp::Section { markdown: md, json })
}
