//! The replay source: a recording played onto the same bus as live
//! events, as fast as possible or paced, within an optional window.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use chrono::{Local, NaiveTime, TimeZone};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    bus::{End, Msg, ReplayStats},
    record::{
        RecordingHeader,
        reader::{Reader, Record},
    },
    source::{Health, Source, cancel_on_signal},
};

/// A window of event time, in boot-time ns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    pub from: Option<u64>,
    pub to: Option<u64>,
}

impl Window {
    pub fn contains(&self, ts: u64) -> bool {
        self.from.is_none_or(|f| ts >= f) && self.to.is_none_or(|t| ts <= t)
    }
}

/// A time given on the command line: RFC 3339, or HH:MM[:SS] on the day
/// the recording started (local time).
pub fn parse_time(s: &str, header: &RecordingHeader) -> Result<u64, String> {
    let clock = header.clock();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(clock.boot_of(t.with_timezone(&Local)));
    }
    let tod = NaiveTime::parse_from_str(s, "%H:%M:%S")
        .or_else(|_| NaiveTime::parse_from_str(s, "%H:%M"))
        .map_err(|_| {
            format!("`{s}` is not a time: write HH:MM, HH:MM:SS or an RFC 3339 timestamp")
        })?;
    let day = clock.wall(header.started_ts_ns).date_naive();
    let local = Local
        .from_local_datetime(&day.and_time(tod))
        .earliest()
        .ok_or_else(|| format!("`{s}` does not exist on {day} in the local time zone"))?;
    Ok(clock.boot_of(local))
}

/// Play `reader` onto a new bus (in a thread: file I/O blocks). `speed`
/// 0 is as fast as possible; paced waits end at once on Ctrl-C.
pub fn start(reader: Reader, window: Window, speed: f64) -> Source {
    let cancel = CancellationToken::new();
    // Few messages in flight: one socket table can be tens of MiB.
    let (tx, rx) = mpsc::channel::<Msg>(4);
    cancel_on_signal(&cancel);
    let thread = play(reader, window, speed, tx, cancel.clone());
    Source {
        rx,
        cancel,
        done: Box::pin(async move {
            let stats = tokio::task::spawn_blocking(move || thread.join())
                .await?
                .map_err(|_| anyhow::anyhow!("the replay reader stopped unexpectedly"))?;
            Ok(End {
                health: stats.1,
                replay: Some(stats.0),
            })
        }),
        attached: Vec::new(),
    }
}

/// Sleep `wait`, in slices, unless `cancel` fires; false when it did.
fn paced_wait(wait: Duration, cancel: &CancellationToken) -> bool {
    let until = Instant::now() + wait;
    loop {
        if cancel.is_cancelled() {
            return false;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

fn play(
    mut reader: Reader,
    window: Window,
    speed: f64,
    tx: mpsc::Sender<Msg>,
    cancel: CancellationToken,
) -> std::thread::JoinHandle<(ReplayStats, Health)> {
    std::thread::spawn(move || {
        let mut stats = ReplayStats::default();
        let mut health = Health::default();
        let started = Instant::now();
        let mut first_ts: Option<u64> = None;
        for rec in reader.by_ref() {
            if cancel.is_cancelled() {
                stats.stopped_early = true;
                break;
            }
            let msg = match rec {
                Record::Events(evs) => {
                    let before = evs.len();
                    for e in &evs {
                        stats.read(e.header().ts_ns);
                    }
                    let past_end = evs
                        .last()
                        .is_some_and(|e| window.to.is_some_and(|t| e.header().ts_ns > t));
                    let evs: Vec<_> = evs
                        .into_iter()
                        .filter(|e| window.contains(e.header().ts_ns))
                        .collect();
                    if evs.is_empty() {
                        if past_end && before > 0 {
                            stats.past_window = true;
                            break;
                        }
                        continue;
                    }
                    if speed > 0.0 {
                        let ts = evs[0].header().ts_ns;
                        let t0 = *first_ts.get_or_insert(ts);
                        let due = Duration::from_secs_f64(
                            (ts.saturating_sub(t0) as f64 / speed / 1e9).min(1e9),
                        );
                        if let Some(wait) = due.checked_sub(started.elapsed())
                            && !paced_wait(wait, &cancel)
                        {
                            stats.stopped_early = true;
                            break;
                        }
                    }
                    stats.events += evs.len() as u64;
                    Msg::Events(evs)
                }
                Record::Health(h) => {
                    stats.read(h.ts_ns);
                    health = h;
                    Msg::Health(h)
                }
                Record::Table(t) => {
                    stats.read(t.ts_ns);
                    if window.to.is_some_and(|to| t.ts_ns > to) {
                        stats.past_window = true;
                        continue;
                    }
                    Msg::Table {
                        ts_ns: t.ts_ns,
                        rows: t.rows,
                    }
                }
                Record::Pressure(p) => {
                    stats.read(p.ts_ns);
                    if window.to.is_some_and(|to| p.ts_ns > to) {
                        stats.past_window = true;
                        continue;
                    }
                    Msg::Pressure(p)
                }
                Record::Block(b) => {
                    stats.read(b.ts_ns);
                    if window.to.is_some_and(|to| b.ts_ns > to) {
                        stats.past_window = true;
                        continue;
                    }
                    Msg::Block(b)
                }
                Record::Memory(m) => {
                    stats.read(m.end_ns);
                    if window.to.is_some_and(|to| m.end_ns > to) {
                        stats.past_window = true;
                        continue;
                    }
                    Msg::Memory(m)
                }
                Record::Locks(l) => {
                    stats.read(l.ts_ns);
                    if window.to.is_some_and(|to| l.ts_ns > to) {
                        stats.past_window = true;
                        continue;
                    }
                    Msg::Locks(l)
                }
                Record::Procs(_) | Record::Sched(_) => continue,
                Record::OomContext(f) => Msg::OomContext(f),
                Record::End(e) => {
                    stats.read(e.ts_ns);
                    continue;
                }
                Record::Damage(d) => {
                    stats.frames_damaged += 1;
                    Msg::Damage(d)
                }
            };
            if tx.blocking_send(msg).is_err() {
                stats.stopped_early = true;
                break;
            }
        }
        stats.unknown_events = reader.unknown_events;
        stats.ended_cleanly = reader.ended;
        if reader.unknown_events > 0 {
            let _ = tx.blocking_send(Msg::Damage(format!(
                "{} events of kinds this diag does not know were skipped (recorded by a newer diag?)",
                reader.unknown_events
            )));
        }
        (stats, health)
    })
}

/// Open a recording, with the words a user needs when it cannot be.
pub fn open(path: &Path) -> anyhow::Result<Reader> {
    Ok(Reader::open(path)?)
}

/// The closing words about a replayed file.
pub fn closing_words(stats: &ReplayStats) -> Option<String> {
    let mut parts = Vec::new();
    if stats.frames_damaged > 0 {
        parts.push(format!(
            "{} damaged parts were skipped (see above)",
            stats.frames_damaged
        ));
    }
    if stats.stopped_early {
        parts.push("stopped before the end of the recording".to_string());
    } else if !stats.ended_cleanly && !stats.past_window {
        // (Stopping at a window's end is not reaching the file's.)
        parts.push("the recording was not finished cleanly (diag was killed or the file was cut): it ends at its last complete frame".to_string());
    }
    if parts.is_empty() {
        None
    } else {
        Some(parts.join("; "))
    }
}

/// `--at` (the words `at`, the time `ts`) against what a replay read:
/// an error naming the recording's span when it is outside it. Times are
/// given to the second: a recording that starts at 10:02:05.4 has
/// 10:02:05 in it.
pub fn check_at(
    at: &str,
    ts: u64,
    stats: &ReplayStats,
    header: &RecordingHeader,
) -> anyhow::Result<()> {
    let Some((a, b)) = stats.span else {
        anyhow::bail!("--at {at}: the recording holds nothing");
    };
    let a = recording_start(header, a);
    let spans = span_words(header, a, b, stats.past_window);
    if ts.saturating_add(1_000_000_000) <= a {
        anyhow::bail!("--at {at} is before the recording: {spans}");
    }
    if !stats.past_window && ts >= b.saturating_add(1_000_000_000) {
        anyhow::bail!("--at {at} is after the recording: {spans}");
    }
    Ok(())
}

/// Where a recording starts: its header's start, or its first time read
/// when that is earlier (a flight recorder's file holds what came before).
pub fn recording_start(header: &RecordingHeader, first_read: u64) -> u64 {
    if header.started_ts_ns > 0 {
        first_read.min(header.started_ts_ns)
    } else {
        first_read
    }
}

/// "it spans A to B", or only where it starts when reading
/// stopped early (at a window's end) and its end is not known.
pub fn span_words(header: &RecordingHeader, start: u64, last: u64, stopped_early: bool) -> String {
    let clock = header.clock();
    let hms = |ns: u64| clock.wall(ns).format("%H:%M:%S").to_string();
    if stopped_early {
        format!("it starts at {}", hms(start))
    } else {
        format!("it spans {} to {}", hms(start), hms(last))
    }
}

/// The window `--from`/`--to` give, checked.
pub fn window(
    from: Option<&str>,
    to: Option<&str>,
    header: &RecordingHeader,
) -> anyhow::Result<Window> {
    let w = Window {
        from: from
            .map(|s| parse_time(s, header))
            .transpose()
            .map_err(anyhow::Error::msg)?,
        to: to
            .map(|s| parse_time(s, header))
            .transpose()
            .map_err(anyhow::Error::msg)?,
    };
    if let (Some(f), Some(t)) = (w.from, w.to)
        && f > t
    {
        anyhow::bail!(
            "--from {} is later than --to {}: nothing to replay",
            from.unwrap_or_default(),
            to.unwrap_or_default()
        );
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_and_times() {
        let w = Window {
            from: Some(10),
            to: Some(20),
        };
        assert!(!w.contains(9) && w.contains(10) && w.contains(20) && !w.contains(21));
        assert!(Window::default().contains(0));
        let header = RecordingHeader {
            clock_offset_ns: 1_700_000_000_000_000_000,
            started_ts_ns: 5_000_000_000,
            ..Default::default()
        };
        let t = parse_time("2023-11-14T22:13:25Z", &header).unwrap();
        assert_eq!(t, 5_000_000_000);
        assert!(
            parse_time("yesterday", &header)
                .unwrap_err()
                .contains("not a time")
        );
        let start = header.clock().wall(header.started_ts_ns);
        let hm = start.format("%H:%M:%S").to_string();
        assert_eq!(parse_time(&hm, &header).unwrap(), 5_000_000_000);
    }
}
