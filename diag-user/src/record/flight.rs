//! The flight recorder: the last few minutes in memory, a file written
//! only around incidents (OOM kills, reset storms, port pressure), so
//! diag can stay on for weeks without filling the disk.

use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
};

use diag_common::{EventKind, user::AnyEvent};

use super::{
    OomContextFrame, RecordingHeader, TableFrame,
    writer::{RecordError, Writer, WriterOptions},
};
use crate::{
    aggregate::tcp::{TcpAggregate, TcpConfig},
    bus::Health,
    cli::Trigger,
};

/// What is kept in memory, in order.
#[derive(Debug, Clone)]
enum Kept {
    Events(Vec<AnyEvent>),
    Health(Health),
    Table(TableFrame),
    OomContext(OomContextFrame),
}

/// Detects incidents and keeps the window. Pure but for [`Flight::write`].
pub struct Flight {
    triggers: Vec<Trigger>,
    before_ns: u64,
    after_ns: u64,
    reset_storm: u64,
    max_events: usize,
    buf: VecDeque<(u64, Kept)>,
    events_held: usize,
    /// The newest table older than the window: seeds a file's gauges.
    base_table: Option<TableFrame>,
    agg: TcpAggregate,
    next_sample: u64,
    /// Resets in the current second: (second, count).
    resets: (u64, u64),
    /// An incident being recorded: (when, what), written once `after` passed.
    pub armed: Option<(u64, String)>,
    /// Events dropped from memory to stay under `max_events`.
    pub shortened: u64,
}

impl Flight {
    pub fn new(
        triggers: Vec<Trigger>,
        before_ns: u64,
        after_ns: u64,
        reset_storm: u64,
        max_events: usize,
        tcp: TcpConfig,
    ) -> Self {
        Flight {
            triggers,
            before_ns,
            after_ns,
            reset_storm,
            max_events,
            buf: VecDeque::new(),
            events_held: 0,
            base_table: None,
            agg: TcpAggregate::new(tcp),
            next_sample: 0,
            resets: (0, 0),
            armed: None,
            shortened: 0,
        }
    }

    fn arm(&mut self, ts: u64, what: String) {
        if self.armed.is_none() {
            self.armed = Some((ts, what));
        }
    }

    pub fn events(&mut self, evs: Vec<AnyEvent>) {
        let Some(last) = evs.last().map(|e| e.header().ts_ns) else {
            return;
        };
        for e in &evs {
            let ts = e.header().ts_ns;
            match e {
                AnyEvent::OomKill(o) if self.triggers.contains(&Trigger::Oom) => {
                    let comm = String::from_utf8_lossy(diag_common::comm_bytes(&o.victim_comm))
                        .into_owned();
                    self.arm(ts, format!("oom-{}-{comm}", o.victim_process()));
                }
                AnyEvent::TcpSock(s)
                    if matches!(
                        EventKind::try_from(s.header.kind),
                        Ok(EventKind::TcpResetSent | EventKind::TcpResetReceived)
                    ) =>
                {
                    let sec = ts / 1_000_000_000;
                    if self.resets.0 != sec {
                        self.resets = (sec, 0);
                    }
                    self.resets.1 += 1;
                    if self.resets.1 == self.reset_storm
                        && self.triggers.contains(&Trigger::ResetStorm)
                    {
                        self.arm(ts, "reset-storm".into());
                    }
                }
                _ => {}
            }
            if self.triggers.contains(&Trigger::PortPressure) {
                if ts >= self.next_sample {
                    self.next_sample = ts + 1_000_000_000;
                    let snap = self.agg.snapshot(ts);
                    if let Some(p) = snap.pressure.iter().find(|p| p.warning) {
                        self.arm(ts, format!("port-pressure-{}", p.destination.remote.port()));
                    }
                }
                self.agg.on_event(e);
            }
        }
        self.events_held += evs.len();
        self.buf.push_back((last, Kept::Events(evs)));
        self.trim(last);
    }

    pub fn health(&mut self, h: Health) {
        self.buf.push_back((h.ts_ns, Kept::Health(h)));
        self.trim(h.ts_ns);
    }

    /// An OOM kill's user-space context (it follows the kill closely).
    pub fn oom_context(&mut self, c: OomContextFrame) {
        self.buf.push_back((c.ts_ns, Kept::OomContext(c)));
    }

    pub fn table(&mut self, t: TableFrame) {
        if self.triggers.contains(&Trigger::PortPressure) {
            if self.next_sample == 0 {
                self.agg.seed(&t.rows, t.ts_ns);
                self.next_sample = t.ts_ns + 1_000_000_000;
            } else {
                self.agg.reconcile(&t.rows, t.ts_ns);
            }
        }
        self.buf.push_back((t.ts_ns, Kept::Table(t)));
    }

    /// Drop what is older than the window (unless an armed incident needs
    /// it), or beyond the memory bound.
    fn trim(&mut self, now: u64) {
        let keep_from = match &self.armed {
            Some((t, _)) => t.saturating_sub(self.before_ns),
            None => now.saturating_sub(self.before_ns),
        };
        while let Some((ts, _)) = self.buf.front() {
            let too_old = *ts < keep_from;
            let too_many = self.events_held > self.max_events && self.buf.len() > 1;
            if !too_old && !too_many {
                break;
            }
            let (_, kept) = self.buf.pop_front().expect("front exists");
            match kept {
                Kept::Events(e) => {
                    self.events_held -= e.len();
                    if !too_old {
                        self.shortened += e.len() as u64;
                    }
                }
                Kept::Table(t) => self.base_table = Some(t),
                Kept::Health(_) | Kept::OomContext(_) => {}
            }
        }
    }

    /// The incident to write now (its `after` has passed), if any.
    pub fn due(&self, now: u64) -> Option<(u64, String)> {
        self.armed.clone().filter(|(t, _)| now >= t + self.after_ns)
    }

    /// Write the window around the armed incident to `path`.
    pub fn write(
        &mut self,
        path: &Path,
        header: &RecordingHeader,
        opts: WriterOptions,
    ) -> Result<u64, RecordError> {
        let Some((t, _)) = self.armed.take() else {
            return Ok(0);
        };
        let from = t.saturating_sub(self.before_ns);
        let mut w = Writer::create(
            path,
            header.clone(),
            WriterOptions {
                max_size: None,
                ..opts
            },
        )?;
        if let Some(b) = &self.base_table {
            // A table from long before the window (a long --reconcile) is
            // written as of the window's start: a reader takes a jump of
            // more than MAX_JUMP_NS for damage.
            let ts = if b.ts_ns < from.saturating_sub(super::reader::MAX_JUMP_NS / 2) {
                from
            } else {
                b.ts_ns
            };
            w.table(ts, &b.rows)?;
        }
        for (ts, kept) in &self.buf {
            match kept {
                Kept::Events(evs) => {
                    let evs: Vec<AnyEvent> = evs
                        .iter()
                        .filter(|e| e.header().ts_ns >= from)
                        .copied()
                        .collect();
                    w.events(&evs)?;
                }
                Kept::Health(h) if *ts >= from => w.health(h)?,
                Kept::OomContext(c) if *ts >= from => w.oom_context(c)?,
                Kept::OomContext(_) => {}
                Kept::Table(tb) => w.table(tb.ts_ns, &tb.rows)?,
                Kept::Health(_) => {}
            }
        }
        w.finish("incident")
    }
}

/// Whether `name` is `diag-YYYYmmdd-HHMMSS-WHAT.diag` (WHAT of letters,
/// digits, `-` and `_`), as [`incident_path`] makes them.
fn incident_name(name: &str) -> bool {
    let Some(rest) = name
        .strip_prefix("diag-")
        .and_then(|r| r.strip_suffix(".diag"))
    else {
        return false;
    };
    let b = rest.as_bytes();
    b.len() > 16
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'-'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'-'
        && b[16..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
}

/// Whether `path` is an incident file the flight recorder wrote (in this
/// session or an earlier one): its name has the incident pattern, it is a
/// regular file of ours with one link, and it is a diag recording whose
/// header says it was made by `diag record --trigger`. Nothing else in
/// the directory is ever removed: not another user's files, not
/// recordings made by hand, not files that merely look like ours.
fn written_by_flight(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    if !incident_name(name) {
        return false;
    }
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return false;
    };
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !meta.file_type().is_file() || meta.uid() != me || meta.nlink() != 1 {
        return false;
    }
    super::reader::Reader::open(path).is_ok_and(|r| {
        r.header
            .command_line
            .iter()
            .any(|a| a == "--trigger" || a.starts_with("--trigger="))
    })
}

/// `DIR/diag-YYYYmmdd-HHMMSS-WHAT.diag`, and the oldest incident files
/// the flight recorder wrote there removed beyond `keep` (see
/// [`written_by_flight`]: no other file is touched).
pub fn incident_path(
    dir: &Path,
    when: chrono::DateTime<chrono::Local>,
    what: &str,
    keep: usize,
) -> PathBuf {
    let safe: String = what
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let path = dir.join(format!("diag-{}-{safe}.diag", when.format("%Y%m%d-%H%M%S")));
    if let Ok(rd) = std::fs::read_dir(dir) {
        let mut old: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| written_by_flight(p))
            .collect();
        old.sort();
        while old.len() >= keep.max(1) {
            let _ = std::fs::remove_file(old.remove(0));
        }
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;
    use diag_common::{
        EventHeader,
        tcp::{AF_INET, TcpSockEvent, attribution},
    };

    fn reset(ts: u64) -> AnyEvent {
        let mut h = EventHeader::zeroed();
        h.kind = EventKind::TcpResetReceived as u32;
        h.ts_ns = ts;
        AnyEvent::TcpSock(TcpSockEvent {
            header: h,
            skaddr: 1,
            saddr: [0; 16],
            daddr: [0; 16],
            sport: 1,
            dport: 2,
            family: AF_INET,
            state: 0,
            attribution: attribution::SOCKET,
            reason: 0,
            current_tgid: 0,
            netns: 0,
            _pad: 0,
        })
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_reset_storm_arms_once_and_the_window_is_kept() {
        let mut f = Flight::new(
            vec![Trigger::ResetStorm],
            5 * S,
            2 * S,
            10,
            1000,
            TcpConfig::default(),
        );
        // Quiet resets long before: trimmed away later.
        f.events(vec![reset(S)]);
        assert!(f.armed.is_none());
        // A storm at 100 s: 10 in one second.
        f.events((0..10).map(|i| reset(100 * S + i * 1000)).collect());
        assert_eq!(f.armed.as_ref().map(|a| a.1.as_str()), Some("reset-storm"));
        assert_eq!(f.due(101 * S), None);
        assert!(f.due(102 * S + S / 2).is_some());
        // More while armed: one incident.
        f.events((0..20).map(|i| reset(101 * S + i)).collect());
        assert_eq!(
            f.armed.as_ref().unwrap().0,
            100 * S + 9000,
            "armed by the 10th reset"
        );
        assert_eq!(f.events_held, 30, "the event from 1 s was trimmed");
    }

    #[test]
    fn rotation_removes_only_the_flight_recorders_own_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("diag-flight-rot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let flight_header = RecordingHeader {
            command_line: ["diag", "record", "--trigger", "oom", "-o", "d"]
                .map(String::from)
                .to_vec(),
            ..Default::default()
        };
        let write = |name: &str, header: &RecordingHeader| {
            let p = dir.join(name);
            Writer::create(&p, header.clone(), WriterOptions::default())
                .unwrap()
                .finish("incident")
                .unwrap();
            p
        };
        // Ours, from an earlier session: removed when over --max-files.
        let old = write("diag-20200101-000000-oom-1-a.diag", &flight_header);
        // Not ours: a name that only looks alike, a recording made by
        // hand with the incident pattern, a symlink, plain data.
        let alike = dir.join("diag-zzz.diag");
        std::fs::write(&alike, b"someone else's").unwrap();
        let by_hand = write("diag-20200101-000001-x.diag", &RecordingHeader::default());
        let data = dir.join("diag-20200101-000002-y.diag");
        std::fs::write(&data, b"DIAGREC\0 not really").unwrap();
        let link = dir.join("diag-20200101-000003-z.diag");
        std::os::unix::fs::symlink(&old, &link).unwrap();
        // SAFETY: geteuid has no preconditions.
        let other_user = if unsafe { libc::geteuid() } == 0 {
            let p = write("diag-20200101-000004-oom-2-b.diag", &flight_header);
            std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
            Some(p)
        } else {
            None
        };
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        let new = incident_path(&dir, chrono::Local::now(), "oom-3-c", 1);
        assert!(!old.exists(), "our old incident file is rotated away");
        for p in [&alike, &by_hand, &data, &link] {
            assert!(
                std::fs::symlink_metadata(p).is_ok(),
                "{} is kept",
                p.display()
            );
        }
        if let Some(p) = other_user {
            assert!(p.exists(), "another user's incident file is kept");
        }
        assert!(!new.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn memory_is_bounded() {
        let mut f = Flight::new(
            vec![Trigger::Oom],
            500 * S,
            S,
            10,
            100,
            TcpConfig::default(),
        );
        for i in 0..50 {
            f.events((0..10).map(|j| reset(S + i * 1000 + j)).collect());
        }
        assert!(f.events_held <= 110);
        assert!(f.shortened >= 390);
    }
}
