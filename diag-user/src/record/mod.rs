//! Recordings: a session's events, health and socket tables in a file,
//! replayed later through the same views, on any host, without root.

pub mod flight;
pub mod format;
pub mod outfile;
pub mod reader;
pub mod writer;

use std::{io::IsTerminal, process::ExitCode, time::Duration};

use diag_common::oom::OomKillEvent;
use serde::{Deserialize, Serialize};

use crate::{
    Msg,
    aggregate::tcp::TableRow,
    cli::{EventClass, RecordArgs},
    clock::{WallClock, boot_ns},
    enrich, loader,
    source::live::Live,
    view::{LiveSession, tail::Filter},
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

/// A process in the periodic process-table snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcInfo {
    pub pid: u32,
    /// Start time, clock ticks after boot (with pid: a unique identity).
    pub start_time: u64,
    pub comm: String,
    pub cmdline: String,
    pub cgroup: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcsFrame {
    pub ts_ns: u64,
    pub procs: Vec<ProcInfo>,
}

/// What user space learned about an OOM kill (cgroup paths, top memory
/// users), for the kill whose header has this time and thread id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OomContextFrame {
    pub ts_ns: u64,
    pub tid: u32,
    pub ctx: enrich::oom::OomContext,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndFrame {
    pub ts_ns: u64,
    pub reason: String,
}

fn oom_context_frame(ev: &OomKillEvent, ctx: enrich::oom::OomContext) -> OomContextFrame {
    OomContextFrame {
        ts_ns: ev.header.ts_ns,
        tid: ev.header.pid,
        ctx,
    }
}

/// Every process now, for naming short-lived processes on replay.
pub fn process_table() -> ProcsFrame {
    let ts_ns = boot_ns();
    let mut procs = Vec::new();
    if let Ok(all) = procfs::process::all_processes() {
        for p in all.flatten() {
            let Ok(stat) = p.stat() else { continue };
            let cmdline = p.cmdline().map(|c| c.join(" ")).unwrap_or_default();
            let cgroup = enrich::cgroup_of(stat.pid as u32).unwrap_or_default();
            procs.push(ProcInfo {
                pid: stat.pid as u32,
                start_time: stat.starttime,
                comm: stat.comm,
                cmdline,
                cgroup,
            });
        }
    }
    ProcsFrame { ts_ns, procs }
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
        started_ts_ns: boot_ns(),
    }
}

/// How often the process table is written.
const PROCS_EVERY: Duration = Duration::from_secs(10);

/// `diag record`.
pub fn run(args: RecordArgs) -> anyhow::Result<ExitCode> {
    let env = loader::require_for(&args.probe, &args.events)?;
    if !args.trigger.is_empty() {
        return run_flight(args, env);
    }
    let opts = writer::WriterOptions {
        compress: !args.no_compress,
        max_size: args.max_size,
        max_files: args.max_files,
    };
    // Create the file first: a bad path fails before anything is loaded.
    let mut w = writer::Writer::create(&args.output, header_now(&env), opts)?;
    let tracer = loader::load(&env, &args.probe)?;
    let live = Live::new(tracer)?;
    let filter = Filter::new(&EventClass::with_exits(&args.events), &args.only);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut session = LiveSession::start(live, Some(args.reconcile));
        eprintln!(
            "diag: recording {} to {}{}; Ctrl-C to stop",
            session.attached.join(", "),
            args.output.display(),
            args.duration.map(|d| format!(" for {}", humantime::format_duration(d))).unwrap_or_default()
        );
        let deadline = tokio::time::sleep(args.duration.unwrap_or(Duration::from_secs(u64::MAX / 4)));
        tokio::pin!(deadline);
        let mut procs = tokio::time::interval(PROCS_EVERY);
        let mut events = 0u64;
        let mut health = crate::source::Health::default();
        let mut failure: Option<writer::RecordError> = None;
        // What user space learns about each OOM kill (cgroup paths, top
        // memory users) is recorded too, in a frame after the kill's.
        let (mut enricher, mut enriched) =
            enrich::oom::Enricher::start(args.events.contains(&EventClass::Oom));
        let mut enricher_open = true;
        loop {
            let result = tokio::select! {
                msg = session.rx.recv() => match msg {
                    None => break,
                    Some(_) if failure.is_some() => Ok(()),
                    Some(Msg::Events(evs)) => {
                        let kept: Vec<_> = evs.into_iter().filter(|e| filter.matches(e)).collect();
                        events += kept.len() as u64;
                        enricher.submit_kills(&kept);
                        w.events(&kept)
                    }
                    Some(Msg::Health(h)) => {
                        if h.ringbuf_full > health.ringbuf_full {
                            eprintln!(
                                "diag: WARNING: {} events dropped (ring buffer full; raise --ring-mib); the recording notes it",
                                h.ringbuf_full - health.ringbuf_full
                            );
                        }
                        health = h;
                        w.health(&h)
                    }
                    Some(Msg::Table { ts_ns, rows }) => w.table(ts_ns, &rows),
                    Some(Msg::Damage(_) | Msg::OomContext(_)) => Ok(()),
                },
                done = enriched.recv(), if enricher_open => match done {
                    Some((ev, ctx)) if failure.is_none() => w.oom_context(&oom_context_frame(&ev, ctx)),
                    Some(_) => Ok(()),
                    None => {
                        enricher_open = false;
                        Ok(())
                    }
                },
                _ = procs.tick(), if failure.is_none() => {
                    let frame = tokio::task::spawn_blocking(process_table).await.unwrap_or(ProcsFrame { ts_ns: boot_ns(), procs: vec![] });
                    w.procs(&frame)
                }
                _ = &mut deadline => {
                    session.cancel.cancel();
                    Ok(())
                }
            };
            if let Err(e) = result {
                session.cancel.cancel();
                failure = Some(e);
            }
        }
        let final_health = session.source.await??;
        if let Some(e) = failure {
            return Err(e.into());
        }
        // The kills' contexts still being read: wait for them.
        enricher.close();
        while let Some((ev, ctx)) = enriched.recv().await {
            w.oom_context(&oom_context_frame(&ev, ctx))?;
        }
        w.health(&final_health)?;
        let rotations = w.rotations;
        let bytes = w.finish("stopped")?;
        eprintln!(
            "diag: recorded {events} events ({:.1} MiB{}) to {}; {} dropped by the kernel",
            bytes as f64 / (1024.0 * 1024.0),
            if rotations > 0 { format!(", {rotations} rotations") } else { String::new() },
            args.output.display(),
            final_health.ringbuf_full
        );
        if std::io::stderr().is_terminal() {
            eprintln!("diag: review it with `diag report {}`", args.output.display());
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `diag record --trigger KINDS -o DIR`: the flight recorder.
fn run_flight(args: RecordArgs, env: loader::Env) -> anyhow::Result<ExitCode> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = args.output.clone();
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
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
    let header = header_now(&env);
    let opts = writer::WriterOptions {
        compress: !args.no_compress,
        max_size: None,
        max_files: args.max_files,
    };
    let tracer = loader::load(&env, &args.probe)?;
    let live = Live::new(tracer)?;
    let filter = Filter::new(&EventClass::with_exits(&args.events), &args.only);
    let tcp = crate::aggregate::tcp::TcpConfig {
        port_range: header
            .port_range
            .unwrap_or(crate::aggregate::tcp::TcpConfig::default().port_range),
        pressure_warn: args.pressure_warn / 100.0,
        ..Default::default()
    };
    let mut flight = flight::Flight::new(
        args.trigger.clone(),
        args.before.as_nanos() as u64,
        args.after.as_nanos() as u64,
        args.reset_storm,
        args.buffer_events,
        tcp,
    );
    let clock = header.clock();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut session = LiveSession::start(live, Some(args.reconcile));
        let kinds: Vec<String> = args
            .trigger
            .iter()
            .filter_map(|t| clap::ValueEnum::to_possible_value(t).map(|v| v.get_name().to_string()))
            .collect();
        eprintln!(
            "diag: recording {} in memory (the last {}); a file in {} for each incident: {}; Ctrl-C to stop",
            session.attached.join(", "),
            humantime::format_duration(args.before),
            dir.display(),
            kinds.join(", ")
        );
        let deadline = tokio::time::sleep(args.duration.unwrap_or(Duration::from_secs(u64::MAX / 4)));
        tokio::pin!(deadline);
        let mut check = tokio::time::interval(Duration::from_millis(250));
        let (enricher, mut enriched) =
            enrich::oom::Enricher::start(args.events.contains(&EventClass::Oom));
        let mut enricher_open = true;
        let mut written = 0u64;
        let mut warned_short = 0u64;
        let mut write_due = |flight: &mut flight::Flight, force: bool| -> anyhow::Result<()> {
            let due = if force { flight.armed.clone() } else { flight.due(boot_ns()) };
            if let Some((t, what)) = due {
                let path = flight::incident_path(&dir, clock.wall(t), &what, args.max_files);
                let bytes = flight.write(&path, &header, opts.clone())?;
                written += 1;
                eprintln!(
                    "diag: incident {what} at {}: wrote {} ({:.1} KiB)",
                    clock.wall(t).format("%H:%M:%S"),
                    path.display(),
                    bytes as f64 / 1024.0
                );
            }
            Ok(())
        };
        loop {
            tokio::select! {
                msg = session.rx.recv() => match msg {
                    None => break,
                    Some(Msg::Events(evs)) => {
                        let kept: Vec<_> = evs.into_iter().filter(|e| filter.matches(e)).collect();
                        enricher.submit_kills(&kept);
                        flight.events(kept)
                    }
                    Some(Msg::Health(h)) => {
                        flight.health(h);
                        if flight.shortened > warned_short {
                            warned_short = flight.shortened;
                            eprintln!(
                                "diag: WARNING: more than {} events in the last {}: the oldest were dropped from memory (raise --buffer-events)",
                                args.buffer_events,
                                humantime::format_duration(args.before)
                            );
                        }
                    }
                    Some(Msg::Table { ts_ns, rows }) => flight.table(TableFrame { ts_ns, rows }),
                    Some(Msg::Damage(_) | Msg::OomContext(_)) => {}
                },
                done = enriched.recv(), if enricher_open => match done {
                    Some((ev, ctx)) => flight.oom_context(oom_context_frame(&ev, ctx)),
                    None => enricher_open = false,
                },
                _ = check.tick() => {
                    if let Err(e) = write_due(&mut flight, false) {
                        session.cancel.cancel();
                        let _ = session.source.await;
                        return Err(e);
                    }
                }
                _ = &mut deadline => session.cancel.cancel(),
            }
        }
        session.source.await??;
        // Stopped during an incident's "after": write what there is.
        write_due(&mut flight, true)?;
        eprintln!("diag: {written} incident files written to {}", dir.display());
        Ok(ExitCode::SUCCESS)
    })
}

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
