//! `cargo xtask bench --only lock`: what diag's lock probes cost.
//!
//! The workload is a mutex ping-pong (`diag-lockgen pingpong N`, pinned to
//! one CPU with `taskset -c 1`): two threads hand a turn to each other
//! through a pthread mutex and condition variable, so every hand-over is
//! futex waits and wakes, the hot path of these probes (the futex
//! system-call tracepoints and sched_waking). It runs with no tracer, with
//! `diag tail --events lock` (output to /dev/null), and with diag's lock
//! programs attached but returning at once (the floor: what the
//! system-call tracepoints cost before any work), interleaved and
//! repeated. Ratios compare medians of the same run.

use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};

use crate::{bench_tcp::Bg, stats::stats};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tracer {
    None,
    Empty,
    Diag,
}

impl Tracer {
    fn name(self) -> &'static str {
        match self {
            Tracer::None => "baseline (no tracer)",
            Tracer::Empty => "empty programs (floor)",
            Tracer::Diag => "diag tail --events lock",
        }
    }
    fn key(self) -> &'static str {
        match self {
            Tracer::None => "baseline",
            Tracer::Empty => "empty_programs",
            Tracer::Diag => "diag",
        }
    }
}

fn start(t: Tracer, diag: &Path) -> Result<Option<Bg>> {
    let mut c = Command::new(diag);
    match t {
        Tracer::None => return Ok(None),
        Tracer::Diag => c.args(["tail", "--events", "lock"]),
        Tracer::Empty => c.args(["tail", "--events", "lock", "--empty-programs"]),
    };
    Bg::start(c, "tracing", true).map(Some)
}

/// Hand-overs per second from `diag-lockgen pingpong N` (`ELAPSED_NS`).
pub fn parse_rate(text: &str, n: u64) -> Option<f64> {
    let ns: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("ELAPSED_NS "))?
        .trim()
        .parse()
        .ok()?;
    (ns > 0.0).then(|| 2.0 * n as f64 / (ns / 1e9))
}

fn run_workload(lockgen: &Path, n: u64, cpu: usize) -> Result<f64> {
    let out = Command::new("taskset")
        .args(["-c", &cpu.to_string()])
        .arg(lockgen)
        .args(["pingpong", &n.to_string()])
        .output()
        .context("cannot run taskset/diag-lockgen")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("diag-lockgen failed ({})", out.status);
    }
    parse_rate(&text, n).with_context(|| format!("no ELAPSED_NS in: {text}"))
}

/// Lock-probe overhead: Markdown and JSON for the report.
pub fn lock_overhead(
    diag: &Path,
    lockgen: &Path,
    reps: usize,
    n: u64,
) -> Result<crate::bench_tcp::Section> {
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu = if ncpu > 1 { 1 } else { 0 };
    let tracers = [Tracer::None, Tracer::Diag, Tracer::Empty];
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); tracers.len()];
    let mut tallies = vec![crate::progstats::Tally::default(); tracers.len()];
    println!(
        "xtask: bench: `taskset -c {cpu} diag-lockgen pingpong {n}`, {reps} rounds of {}",
        tracers.map(|t| t.name()).join(" / ")
    );
    for rep in 0..reps {
        for k in 0..tracers.len() {
            let i = (k + rep) % tracers.len();
            // diag's rows run with the kernel's per-program statistics on.
            let _stats = (tracers[i] != Tracer::None).then(crate::progstats::StatsOn::new);
            let running = start(tracers[i], diag)?;
            let r = run_workload(lockgen, n, cpu);
            if let Some(r) = running {
                tallies[i].add_pid(r.pid());
                r.stop()?;
            }
            let rate = r?;
            println!(
                "xtask:   round {}: {:<26} {rate:>10.0} hand-overs/s",
                rep + 1,
                tracers[i].name()
            );
            results[i].push(rate);
        }
    }
    let base = stats(&results[0]).median;
    let mut md = String::from(
        "| tracer | hand-overs/s min | median | max | vs baseline | loss |\n|---|---:|---:|---:|---:|---:|\n",
    );
    let mut rows = serde_json::Map::new();
    for (i, t) in tracers.iter().enumerate() {
        let s = stats(&results[i]);
        let ratio = if base > 0.0 { s.median / base } else { 0.0 };
        md.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.3} | {:.1} % |\n",
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
                "per_sec": results[i], "min": s.min, "median": s.median, "max": s.max,
                "ratio_to_baseline": ratio, "loss_pct": (1.0 - ratio) * 100.0,
            }),
        );
    }
    md.push_str(&format!(
        "\nWorkload: `taskset -c {cpu} diag-lockgen pingpong {n}` (a pthread mutex and condition \
         variable handed between two threads: futex waits and wakes on every hand-over), {reps} \
         interleaved rounds, medians compared.\n"
    ));
    md.push_str(&crate::progstats::section(
        &[
            (Tracer::Diag.name(), &tallies[1]),
            (Tracer::Empty.name(), &tallies[2]),
        ],
        reps,
        Some(Tracer::Empty.name()),
    ));
    Ok(crate::bench_tcp::Section {
        markdown: md,
        json: serde_json::json!({
            "workload": format!("taskset -c {cpu} diag-lockgen pingpong {n}"),
            "rounds": reps,
            "results": rows,
            "programs": {
                Tracer::Diag.key(): tallies[1].json(),
                Tracer::Empty.key(): tallies[2].json(),
            },
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_rate() {
        assert_eq!(parse_rate("PID 1\nELAPSED_NS 1000000000\n", 10), Some(20.0));
        assert_eq!(parse_rate("nothing", 10), None);
    }
}
