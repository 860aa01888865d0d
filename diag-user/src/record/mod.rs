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
