//! Recordings: a session's events, health and socket tables in a file,
//! replayed later through the same views, on any host, without root.

pub mod flight;
pub mod format;
pub mod outfile;
pub mod reader;
pub mod writer;

use serde::{Deserialize, Serialize};

pub use crate::bus::{OomContextFrame, ProcInfo, ProcsFrame};
use crate::{
    aggregate::tcp::TableRow,
    clock::{WallClock, boot_ns},
    enrich, loader,
};

/// Host facts and what was traced, at the start of every file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RecordingHeader {
    pub format_version: u16,
    pub diag_version: String,
    pub command_line: Vec<String>,
    pub hostname: String,
    pub kernel: String,
    pub cpus: usize,
    /// Boot time, seconds since the epoch (/proc/stat btime).
    pub boot_time_s: Option<u64>,
    /// CLOCK_REALTIME - CLOCK_BOOTTIME at the start, ns: event times
    /// (boot-time ns) plus this are wall-clock times.
    pub clock_offset_ns: i64,
    pub port_range: Option<(u16, u16)>,
    pub probes: Vec<String>,
    /// Names of the kernel's reset reasons.
    pub rst_reasons: Vec<(i64, String)>,
    /// Names of the kernel's drop reasons (`skb:kfree_skb`); empty in
    /// recordings made before diag read them.
    #[serde(default)]
    pub drop_reasons: Vec<(i64, String)>,
    pub started_ts_ns: u64,
}

impl RecordingHeader {
    pub fn clock(&self) -> WallClock {
        WallClock::with_offset_ns(i128::from(self.clock_offset_ns))
    }

    /// The recording has process exits (made by a diag that traced them
    /// with TCP events): aggregates need not guess pid reuse.
    pub fn has_exits(&self) -> bool {
        self.probes
            .iter()
            .any(|p| p == crate::probes::proc::TRACEPOINT_NAME)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableFrame {
    pub ts_ns: u64,
    pub rows: Vec<TableRow>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndFrame {
    pub ts_ns: u64,
    pub reason: String,
}

fn boot_time_s() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// The header for a recording started now.
pub fn header_now(env: &loader::Env) -> RecordingHeader {
    let mut probes: Vec<&str> = Vec::new();
    if env.tcp.is_some() {
        probes.extend(crate::probes::tcp::TRACEPOINT_NAMES);
    }
    if env.oom.is_some() {
        probes.extend(crate::probes::oom::TRACEPOINT_NAMES);
    }
    if env.proc.is_some() {
        probes.push(crate::probes::proc::TRACEPOINT_NAME);
    }
    let clock = WallClock::now();
    RecordingHeader {
        format_version: format::VERSION,
        diag_version: env!("CARGO_PKG_VERSION").to_string(),
        command_line: std::env::args().collect(),
        hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        boot_time_s: boot_time_s(),
        clock_offset_ns: clock.offset_ns() as i64,
        port_range: enrich::local_port_range(),
        probes: probes.iter().map(|p| p.to_string()).collect(),
        rst_reasons: env
            .tcp
            .as_ref()
            .map(|t| t.rst_reasons.clone())
            .unwrap_or_default(),
        drop_reasons: env
            .tcp
            .as_ref()
            .map(|t| t.drop_reasons.clone())
            .unwrap_or_default(),
        started_ts_ns: boot_ns(),
    }
}

/// Make `dir` ready for incident files (created 0700 if missing), or say
/// why it cannot be.
pub fn prepare_incident_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| anyhow::anyhow!("cannot create the directory {}: {e}", dir.display()))?;
    }
    let probe_file = dir.join(".diag-write-test");
    outfile::create_private(&probe_file, outfile::Lock::None).map_err(|e| {
        anyhow::anyhow!(
            "cannot write in {}: {e}; give a directory diag may write to",
            dir.display()
        )
    })?;
    let _ = std::fs::remove_file(&probe_file);
    Ok(())
}

/// How often the process table is written.
pub const PROCS_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

#[cfg(test)]
mod tests {
    /// A scheduler frame keeps the processes that waited longest, sums
    /// the others, and leaves out those that did not wait.
    #[test]
    fn sched_frames_are_bounded() {
        use super::{SCHED_FRAME_PROCS, SchedFrame};
        use crate::aggregate::{histogram::Log2Hist, sched::ProcInterval};
        let proc = |pid: u32, waits: u64| {
            let mut hist = Log2Hist::default();
            for _ in 0..waits {
                hist.record(u64::from(pid) * 1000);
            }
            ProcInterval {
                pid,
                comm: format!("p{pid}"),
                runq_ns: u64::from(pid) * 1000 * waits,
                runq_count: waits,
                p50_ns: None,
                p99_ns: None,
                max_ns: None,
                wait_pct: 0.0,
                cpu_ns: 0,
                cpu_pct: 0.0,
                blocked_ns: 0,
                sleep_ns: 0,
                caused_ns: 0,
                caused_count: 0,
                stalls: 0,
                hist,
            }
        };
        let mut procs: Vec<ProcInterval> = (1..=100).map(|p| proc(p, 2)).collect();
        procs.push(proc(500, 0));
        let f = SchedFrame::new(10, 1, &procs);
        assert_eq!(f.procs.len(), SCHED_FRAME_PROCS);
        assert_eq!(f.procs[0].pid, 100, "the longest waits first");
        assert_eq!(f.procs[63].pid, 37);
        assert_eq!(f.others_count, 36, "pids 1 to 36");
        assert_eq!(f.others.waits, 72);
        assert_eq!(f.procs[0].waits, 2);
        // 100 us: bucket 7, [64, 128) us; no empty buckets after it.
        assert_eq!(f.procs[0].hist.len(), 8);
        assert_eq!(f.procs[0].hist[7], 2);
        assert_eq!(f.damage(), None);
        let mut bad = f.clone();
        bad.procs[0].hist[7] = 3;
        assert!(bad.damage().unwrap().contains("do not add up"));
    }

    use diag_common::{
        EventHeader, EventKind,
        proc::{ProcExitEvent, exit_flags},
        user::AnyEvent,
    };

    use super::{
        RecordingHeader,
        reader::{Reader, Record},
        writer::{Writer, WriterOptions},
    };

    #[test]
    fn exits_are_recorded_and_unknown_kinds_are_skipped_and_counted() {
        let mut header = EventHeader::zeroed();
        header.kind = EventKind::ProcExit as u32;
        header.pid = 4242;
        header.tgid = 4242;
        header.ts_ns = 9_000;
        let exit = AnyEvent::ProcExit(ProcExitEvent {
            header,
            start_ns: 1_000,
            exit_code: 3 << 8,
            flags: exit_flags::GROUP_DEAD | exit_flags::START_BOOTTIME,
            comm: *b"worker\0\0\0\0\0\0\0\0\0\0",
        });
        // An event of a kind this build does not know, as an older diag
        // sees a ProcExit: written the same way, by its raw bytes.
        let mut newer = exit;
        if let AnyEvent::ProcExit(e) = &mut newer {
            e.header.kind = 99;
        }
        let path = std::env::temp_dir().join(format!("diag-proc-{}.diag", std::process::id()));
        let mut w =
            Writer::create(&path, RecordingHeader::default(), WriterOptions::default()).unwrap();
        w.events(&[exit, newer, exit]).unwrap();
        w.finish("test").unwrap();
        let mut r = Reader::open(&path).unwrap();
        let mut events = Vec::new();
        for rec in r.by_ref() {
            match rec {
                Record::Events(e) => events.extend(e),
                Record::Damage(d) => panic!("{d}"),
                _ => {}
            }
        }
        let _ = std::fs::remove_file(&path);
        assert_eq!(events, vec![exit, exit]);
        assert_eq!(r.unknown_events, 1);
    }
}

/// A scheduler frame holds at most this many processes (those that
/// waited longest); the rest are summed into [`SchedFrame::others`].
pub const SCHED_FRAME_PROCS: usize = 64;
/// How often `record --events ...,stall` writes a scheduler frame.
pub const SCHED_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// One process's run-queue waits over one interval.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedProc {
    pub pid: u32,
    pub comm: String,
    /// Waits that ended in the interval, and their sum, ns.
    pub waits: u64,
    pub wait_ns: u64,
    /// The waits by log2 bucket (the kernel histograms' buckets,
    /// [`diag_common::sched::hist_slot`]), without the empty buckets at
    /// the end.
    pub hist: Vec<u64>,
}

/// The run-queue waits of every process over one interval: the kernel's
/// per-process histograms, bounded to [`SCHED_FRAME_PROCS`] processes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedFrame {
    /// The interval's end (boot-time ns) and length (0: unknown, the
    /// first reading).
    pub ts_ns: u64,
    pub interval_ns: u64,
    pub procs: Vec<SchedProc>,
    /// The processes beyond [`SCHED_FRAME_PROCS`], summed (pid 0), and
    /// how many they were.
    pub others: SchedProc,
    pub others_count: u64,
}

impl SchedProc {
    fn of(p: &crate::aggregate::sched::ProcInterval) -> SchedProc {
        let mut hist = p.hist.counts.to_vec();
        while hist.last() == Some(&0) {
            hist.pop();
        }
        SchedProc {
            pid: p.pid,
            comm: p.comm.clone(),
            // The histogram's own count (read with it).
            waits: hist.iter().fold(0u64, |a, &b| a.saturating_add(b)),
            wait_ns: p.runq_ns,
            hist,
        }
    }

    fn add(&mut self, o: &SchedProc) {
        self.waits = self.waits.saturating_add(o.waits);
        self.wait_ns = self.wait_ns.saturating_add(o.wait_ns);
        if self.hist.len() < o.hist.len() {
            self.hist.resize(o.hist.len(), 0);
        }
        for (a, b) in self.hist.iter_mut().zip(&o.hist) {
            *a = a.saturating_add(*b);
        }
    }
}

impl SchedFrame {
    /// The frame of one reading: processes that waited, the longest
    /// waiting first.
    pub fn new(
        ts_ns: u64,
        interval_ns: u64,
        procs: &[crate::aggregate::sched::ProcInterval],
    ) -> SchedFrame {
        let mut all: Vec<SchedProc> = procs
            .iter()
            .map(SchedProc::of)
            .filter(|p| p.waits > 0)
            .collect();
        all.sort_by(|a, b| b.wait_ns.cmp(&a.wait_ns).then(a.pid.cmp(&b.pid)));
        let mut others = SchedProc::default();
        let rest = all.split_off(all.len().min(SCHED_FRAME_PROCS));
        for p in &rest {
            others.add(p);
        }
        SchedFrame {
            ts_ns,
            interval_ns,
            procs: all,
            others,
            others_count: rest.len() as u64,
        }
    }

    /// What is wrong with a frame read from a file, if anything: more
    /// processes or buckets than diag writes, or histograms that do not
    /// add up to their counts.
    pub fn damage(&self) -> Option<String> {
        if self.procs.len() > SCHED_FRAME_PROCS {
            return Some(format!(
                "{} processes, over the {SCHED_FRAME_PROCS} diag writes",
                self.procs.len()
            ));
        }
        for p in self.procs.iter().chain(std::iter::once(&self.others)) {
            if p.hist.len() > diag_common::sched::HIST_SLOTS {
                return Some(format!(
                    "pid {}: {} buckets, over the {}",
                    p.pid,
                    p.hist.len(),
                    diag_common::sched::HIST_SLOTS
                ));
            }
            let sum = p.hist.iter().try_fold(0u64, |a, &b| a.checked_add(b));
            if sum != Some(p.waits) {
                return Some(format!(
                    "pid {}: its buckets do not add up to its {} waits",
                    p.pid, p.waits
                ));
            }
        }
        None
    }
}
