//! `cargo xtask bench`, the scheduler part: what diag's scheduler probes cost.
//!
//! The workload is `perf bench sched pipe` pinned to one CPU (`taskset -c
//! 1`): two processes ping-pong a byte through pipes, so every operation is
//! two wakeups and two context switches, the worst case for a scheduler
//! tracer. It runs with no tracer, with `diag runq` attached (output to
//! /dev/null), and with a bpftrace runqlat-style script (the peer: tracepoint
//! probes, a per-pid hash map and a histogram), and with diag's programs
//! attached but returning at once (the floor: what attaching to these
//! tracepoints costs before any work), interleaved and repeated.
//! Ratios compare medians; the results go into the bench report.

use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};

use crate::{bench_tcp::Bg, stats::stats};

/// What `bench` needs beyond the build: (package, why).
pub const PACKAGES: &[(&str, &str)] = &[
    ("linux-perf", "perf bench sched pipe, the workload"),
    ("bpftrace", "the peer tracer the bench compares against"),
    ("util-linux", "taskset, to pin the workload to one CPU"),
    ("mount", "losetup, a loop device for the block I/O workload"),
    ("coreutils", "dd, the block I/O workload"),
    ("bpftool", "the block programs' run-time statistics"),
];

/// A runqlat-style bpftrace script on the same scheduler tracepoints.
pub const BPFTRACE_RUNQLAT: &str = r#"
tracepoint:sched:sched_wakeup,
tracepoint:sched:sched_wakeup_new
{
    @qtime[args->pid] = nsecs;
}

tracepoint:sched:sched_switch
{
    if (args->prev_state == 0) {
        @qtime[args->prev_pid] = nsecs;
    }
    $ns = @qtime[args->next_pid];
    if ($ns) {
        @usecs = hist((nsecs - $ns) / 1000);
    }
    delete(@qtime[args->next_pid]);
}
"#;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tracer {
    None,
    /// diag's programs attached, returning at once: the floor any
    /// tracer on these tracepoints pays here.
    Empty,
    Diag,
    Bpftrace,
}

impl Tracer {
    fn name(self) -> &'static str {
        match self {
            Tracer::None => "baseline (no tracer)",
            Tracer::Empty => "empty programs (floor)",
            Tracer::Diag => "diag runq",
            Tracer::Bpftrace => "bpftrace runqlat",
        }
    }
    fn key(self) -> &'static str {
        match self {
            Tracer::None => "baseline",
            Tracer::Empty => "empty_programs",
            Tracer::Diag => "diag",
            Tracer::Bpftrace => "bpftrace",
        }
    }
}

/// Start tracer `t` in the background, ready (None: no tracer).
fn start(t: Tracer, diag: &Path, script: &Path) -> Result<Option<Bg>> {
    let (mut cmd, marker, from_stderr) = match t {
        Tracer::None => return Ok(None),
        Tracer::Diag => {
            let mut c = Command::new(diag);
            c.args(["runq", "--interval", "1s"]);
            (c, "tracing", true)
        }
        Tracer::Empty => {
            let mut c = Command::new(diag);
            c.args(["runq", "--interval", "1s", "--empty-programs"]);
            (c, "tracing", true)
        }
        Tracer::Bpftrace => {
            let mut c = Command::new("bpftrace");
            c.arg(script);
            (c, "Attaching", false)
        }
    };
    cmd.stdin(std::process::Stdio::null());
    Bg::start(cmd, marker, from_stderr).map(Some)
}

/// ops/sec from `perf bench sched pipe` output.
pub fn parse_ops(text: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.contains("ops/sec"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn run_workload(loops: u64, cpu: usize) -> Result<f64> {
    let out = Command::new("taskset")
        .args([
            "-c",
            &cpu.to_string(),
            "perf",
            "bench",
            "sched",
            "pipe",
            "-l",
        ])
        .arg(loops.to_string())
        .output()
        .context("cannot run taskset/perf (is linux-perf installed?)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "perf bench failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_ops(&text).with_context(|| format!("no ops/sec in perf output: {text}"))
}

/// Scheduler overhead: Markdown and JSON for the report.
pub fn sched_overhead(
    diag: &Path,
    root: &Path,
    reps: usize,
    loops: u64,
) -> Result<crate::bench_tcp::Section> {
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu = if ncpu > 1 { 1 } else { 0 };
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let script = dir.join("runqlat.bt");
    std::fs::write(&script, BPFTRACE_RUNQLAT)?;
    let tracers = [Tracer::None, Tracer::Diag, Tracer::Bpftrace, Tracer::Empty];
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); tracers.len()];
    let mut tallies = vec![crate::progstats::Tally::default(); tracers.len()];
    println!(
        "xtask: bench: `taskset -c {cpu} perf bench sched pipe -l {loops}`, {reps} rounds of {}",
        tracers.map(|t| t.name()).join(" / ")
    );
    for rep in 0..reps {
        // Rotate the order each round so drift does not favour one.
        for k in 0..tracers.len() {
            let i = (k + rep) % tracers.len();
            let t = tracers[i];
            // diag's rows run with the kernel's per-program statistics on.
            let _stats =
                matches!(t, Tracer::Diag | Tracer::Empty).then(crate::progstats::StatsOn::new);
            let running = start(t, diag, &script)?;
            let r = run_workload(loops, cpu);
            if let Some(r) = running {
                tallies[i].add_pid(r.pid());
                r.stop()?;
            }
            let ops = r?;
            println!(
                "xtask:   round {}: {:<22} {ops:>10.0} ops/s",
                rep + 1,
                t.name()
            );
            results[i].push(ops);
        }
    }
    let base = stats(&results[0]);
    let mut json_rows = Vec::new();
    let mut md = String::from(
        "| tracer | ops/s min | ops/s median | ops/s max | vs baseline | loss |\n|---|---:|---:|---:|---:|---:|\n",
    );
    let mut medians = Vec::new();
    for (i, t) in tracers.iter().enumerate() {
        let s = stats(&results[i]);
        let ratio = if base.median > 0.0 {
            s.median / base.median
        } else {
            0.0
        };
        medians.push(s.median);
        md.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.3} | {:.1} % |\n",
            t.name(),
            s.min,
            s.median,
            s.max,
            ratio,
            (1.0 - ratio) * 100.0
        ));
        json_rows.push(format!(
            "    \"{}\": {{\"ops_per_sec\": [{}], \"min\": {:.1}, \"median\": {:.1}, \"max\": {:.1}, \"ratio_to_baseline\": {:.4}, \"loss_pct\": {:.2}}}",
            t.key(),
            results[i]
                .iter()
                .map(|v| format!("{v:.1}"))
                .collect::<Vec<_>>()
                .join(", "),
            s.min,
            s.median,
            s.max,
            ratio,
            (1.0 - ratio) * 100.0
        ));
    }
    let diag_vs_bpftrace = if medians[2] > 0.0 {
        medians[1] / medians[2]
    } else {
        0.0
    };
    let diag_loss = 1.0 - medians[1] / medians[0].max(1.0);
    let floor_loss = 1.0 - medians[3] / medians[0].max(1.0);
    let bpftrace_loss = 1.0 - medians[2] / medians[0].max(1.0);
    let cost_ratio = if bpftrace_loss > 0.0 {
        diag_loss / bpftrace_loss
    } else {
        0.0
    };
    md.push_str(&format!(
        "\nWorkload: `taskset -c {cpu} perf bench sched pipe -l {loops}`, {reps} interleaved rounds, medians compared.\n\
         diag throughput / bpftrace throughput: {diag_vs_bpftrace:.3}; diag's loss is {:.0} % of bpftrace's.\n\
         Target: at most 5 % loss; diag: {:.1} % ({}). Empty programs on the same tracepoints (the \
         attachment alone, before any work) cost {:.1} % here.\n",
        cost_ratio * 100.0,
        diag_loss * 100.0,
        if diag_loss <= 0.05 { "met" } else { "over target" },
        floor_loss * 100.0
    ));
    md.push_str(&crate::progstats::section(
        &[
            (Tracer::Diag.name(), &tallies[1]),
            (Tracer::Empty.name(), &tallies[3]),
        ],
        reps,
        Some(Tracer::Empty.name()),
    ));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let json = format!(
        "{{\n  \"workload\": \"taskset -c {cpu} perf bench sched pipe -l {loops}\",\n  \"rounds\": {reps},\n  \"kernel\": \"{}\",\n  \"cpus\": {ncpu},\n  \"results\": {{\n{}\n  }},\n  \"diag_over_bpftrace_throughput\": {diag_vs_bpftrace:.4},\n  \"diag_loss_pct\": {:.2},\n  \"bpftrace_loss_pct\": {:.2},\n  \"empty_programs_loss_pct\": {:.2},\n  \"target_loss_pct\": 5.0,\n  \"target_met\": {}\n}}\n",
        kernel.trim(),
        json_rows.join(",\n"),
        diag_loss * 100.0,
        bpftrace_loss * 100.0,
        floor_loss * 100.0,
        diag_loss <= 0.05
    );
    let mut json: serde_json::Value = serde_json::from_str(&json)?;
    json["programs"] = serde_json::json!({
        Tracer::Diag.key(): tallies[1].json(),
        Tracer::Empty.key(): tallies[3].json(),
    });
    Ok(crate::bench_tcp::Section { markdown: md, json })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_perf_output() {
        let text = "# Running 'sched/pipe' benchmark:\n# Executed 100000 pipe operations between two processes\n\n     Total time: 0.410 [sec]\n\n       4.100120 usecs/op\n         243895 ops/sec\n";
        assert_eq!(parse_ops(text), Some(243895.0));
        assert_eq!(parse_ops("nothing"), None);
    }

    #[test]
    fn statistics() {
        let s = stats(&[3.0, 1.0, 2.0]);
        assert_eq!((s.min, s.median, s.max), (1.0, 2.0, 3.0));
        assert_eq!(stats(&[1.0, 2.0, 3.0, 4.0]).median, 2.5);
    }
}
