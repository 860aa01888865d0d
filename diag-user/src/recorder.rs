//! The sinks that write recordings: [`Recorder`] (everything, into one
//! file) and [`FlightSink`] (the flight recorder: a file per incident).

use std::{io::IsTerminal, path::PathBuf};

use crate::{
    aggregate::filter::Filter,
    bus::{End, Msg, new_losses},
    clock::boot_ns,
    record::{
        RecordingHeader, TableFrame,
        flight::{Flight, incident_path},
        writer::{Writer, WriterOptions},
    },
    sink::{Flow, Sink},
};

/// The recorder: every message that passes the filter, into a file.
pub struct Recorder {
    w: Option<Writer>,
    filter: Filter,
    pub events: u64,
    health: crate::source::Health,
    /// What the closing line names (`recording to ...`).
    what: String,
    /// When the scheduler was last read.
    sched_ns: Option<u64>,
}

impl Recorder {
    pub fn new(w: Writer, filter: Filter, what: String) -> Self {
        Recorder {
            w: Some(w),
            filter,
            events: 0,
            health: Default::default(),
            what,
            sched_ns: None,
        }
    }

    fn writer(&mut self) -> &mut Writer {
        self.w.as_mut().expect("the recorder is finished once")
    }
}

impl Sink for Recorder {
    fn on_msg(&mut self, msg: &Msg) -> anyhow::Result<Flow> {
        match msg {
            Msg::Events(evs) => {
                let kept = kept(&self.filter, evs);
                self.events += kept.len() as u64;
                self.writer().events(&kept)?;
            }
            Msg::Health(h) => {
                let new = new_losses(&self.health, h);
                if !new.is_empty() {
                    tracing::warn!("WARNING: {}; the recording notes it", new.join("; "));
                }
                self.health = *h;
                self.writer().health(h)?;
            }
            Msg::Table { ts_ns, rows } => self.writer().table(*ts_ns, rows)?,
            Msg::Procs(p) => self.writer().procs(p)?,
            Msg::OomContext(f) => self.writer().oom_context(f)?,
            Msg::Sched { ts_ns, procs } => {
                let interval = self.sched_ns.map_or(0, |t| ts_ns.saturating_sub(t));
                self.sched_ns = Some(*ts_ns);
                let frame = crate::record::SchedFrame::new(*ts_ns, interval, procs);
                self.writer().sched(&frame)?;
            }
            Msg::Pressure(p) => self.writer().pressure(p)?,
            Msg::Block(f) => self.writer().block(f)?,
            Msg::Memory(m) => self.writer().memory(m)?,
            Msg::Locks(l) => self.writer().locks(l)?,
            Msg::Damage(_) | Msg::Host(_) | Msg::Runq(_) | Msg::Placements(_) => {}
        }
        Ok(Flow::More)
    }

    fn finish(&mut self, end: &End) -> anyhow::Result<Flow> {
        let mut w = self.w.take().expect("finished once");
        w.health(&end.health)?;
        let rotations = w.rotations;
        let path = w.path().to_path_buf();
        let bytes = w.finish("stopped")?;
        tracing::info!(
            "recorded {} events ({:.1} MiB{}) to {}; {} dropped by the kernel",
            self.events,
            bytes as f64 / (1024.0 * 1024.0),
            if rotations > 0 {
                format!(", {rotations} rotations")
            } else {
                String::new()
            },
            self.what,
            end.health.ringbuf_full
        );
        if std::io::stderr().is_terminal() {
            tracing::info!("review it with `diag report {}`", path.display());
        }
        Ok(Flow::Done)
    }
}

/// The flight recorder on the bus: incidents checked four times a second.
pub struct FlightSink {
    flight: Flight,
    filter: Filter,
    dir: PathBuf,
    header: RecordingHeader,
    opts: WriterOptions,
    buffer_events: usize,
    before: std::time::Duration,
    next_check: u64,
    warned_short: u64,
    pub written: u64,
}

/// The events of `evs` that `filter` keeps.
fn kept(filter: &Filter, evs: &[diag_common::user::AnyEvent]) -> Vec<diag_common::user::AnyEvent> {
    evs.iter().filter(|e| filter.matches(e)).copied().collect()
}

/// How often the flight recorder looks for an incident to write.
const CHECK_EVERY_NS: u64 = 250_000_000;

impl FlightSink {
    pub fn new(
        flight: Flight,
        filter: Filter,
        dir: PathBuf,
        header: RecordingHeader,
        opts: WriterOptions,
        buffer_events: usize,
        before: std::time::Duration,
    ) -> Self {
        FlightSink {
            flight,
            filter,
            dir,
            header,
            opts,
            buffer_events,
            before,
            next_check: boot_ns() + CHECK_EVERY_NS,
            warned_short: 0,
            written: 0,
        }
    }

    fn write_due(&mut self, force: bool) -> anyhow::Result<()> {
        let due = if force {
            self.flight.armed.clone()
        } else {
            self.flight.due(boot_ns())
        };
        if let Some((t, what)) = due {
            let clock = self.header.clock();
            let path = incident_path(&self.dir, clock.wall(t), &what, self.opts.max_files);
            let bytes = self.flight.write(&path, &self.header, self.opts.clone())?;
            self.written += 1;
            tracing::info!(
                "incident {what} at {}: wrote {} ({:.1} KiB)",
                clock.wall(t).format("%H:%M:%S"),
                path.display(),
                bytes as f64 / 1024.0
            );
        }
        Ok(())
    }
}

impl Sink for FlightSink {
    fn on_msg(&mut self, msg: &Msg) -> anyhow::Result<Flow> {
        match msg {
            Msg::Events(evs) => {
                let kept = kept(&self.filter, evs);
                self.flight.events(kept)
            }
            Msg::Health(h) => {
                self.flight.health(*h);
                if self.flight.shortened > self.warned_short {
                    self.warned_short = self.flight.shortened;
                    tracing::warn!(
                        "WARNING: more than {} events in the last {}: the oldest were dropped from memory (raise --buffer-events)",
                        self.buffer_events,
                        humantime::format_duration(self.before)
                    );
                }
            }
            Msg::Table { ts_ns, rows } => self.flight.table(TableFrame {
                ts_ns: *ts_ns,
                rows: rows.clone(),
            }),
            Msg::OomContext(f) => self.flight.oom_context(f.clone()),
            _ => {}
        }
        Ok(Flow::More)
    }

    fn due(&self) -> Option<u64> {
        Some(self.next_check)
    }

    fn on_tick(&mut self, now_ns: u64) -> anyhow::Result<Flow> {
        self.next_check = now_ns + CHECK_EVERY_NS;
        self.write_due(false)?;
        Ok(Flow::More)
    }

    fn finish(&mut self, _end: &End) -> anyhow::Result<Flow> {
        // Stopped during an incident's "after": write what there is.
        self.write_due(true)?;
        tracing::info!(
            "{} incident files written to {}",
            self.written,
            self.dir.display()
        );
        Ok(Flow::Done)
    }
}
