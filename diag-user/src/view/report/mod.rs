//! `diag report`: a recording reviewed in the USE method's order: errors,
//! saturation, then churn, each with times; plain text, and optionally a
//! self-contained HTML page with plots (inline SVG, no scripts).

use std::{collections::BTreeMap, fmt::Write as _, process::ExitCode};

use diag_common::{oom::OomKillEvent, sched::StallEvent, user::AnyEvent};
use serde::Serialize;

mod html;
mod page;
mod text;

pub use html::render_html;
pub use text::{render_text, wrap};

use crate::{
    aggregate::{
        close::Closed,
        hint::{Hint, HintKind},
        histogram::ValueHist,
        tcp::{Counters, Pressure, ProcRow, TcpAggregate, TcpConfig, TcpSnapshot},
    },
    cli::ReportArgs,
    clock::WallClock,
    enrich::oom::OomContext,
    record::{RecordingHeader, reader::Record},
    source::replay::{Window, open, window},
    view::{
        fmt::{human_bytes, human_ns, human_us},
        tail::oom_text,
    },
};

/// One point of the timelines (one interval).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Point {
    pub ts_ns: u64,
    pub opens_per_s: f64,
    pub closes_per_s: f64,
    pub resets_per_s: f64,
    pub retrans_per_s: f64,
    pub established: u64,
    pub time_wait: u64,
    pub close_wait: u64,
}

/// Everything the report says, computed from a recording. Pure.
#[derive(Debug, Clone, Default)]
pub struct Review {
    pub header: RecordingHeader,
    pub first_ts: Option<u64>,
    pub last_ts: u64,
    pub events: u64,
    pub timeline: Vec<Point>,
    pub oom: Vec<OomKillEvent>,
    /// What user space learned about each kill when it was recorded, by
    /// the kill's (time, thread id).
    pub oom_context: std::collections::HashMap<(u64, u32), OomContext>,
    /// Run-queue waits over the stall threshold.
    pub stalls: Vec<StallEvent>,
    /// Memory stalls over the memory stall threshold.
    pub mem_stalls: Vec<diag_common::memory::MemStallEvent>,
    /// Futex waits over the lock threshold.
    pub lock_waits: Vec<diag_common::lock::LockWaitEvent>,
    pub last: Option<TcpSnapshot>,
    /// (when, how many) each time the kernel reported new drops.
    pub drops: Vec<(u64, u64)>,
    pub damage: Vec<String>,
    pub ended: bool,
    pub tw_peak: (u64, u64),
    pub cw_peak: (u64, u64),
    pub pressure_peak: Option<(u64, Pressure)>,
    /// The hints of every whole interval, merged: one per kind, process
    /// and destination, with its peak.
    pub hints: BTreeMap<(HintKind, Option<u32>, String), MergedHint>,
    pub lifetimes: ValueHist,
    /// Each process's activity per interval, for the page's tables.
    pub per_proc: page::ProcSeries,
    /// The scheduler's run-queue waits per interval (recordings made
    /// with stalls, format version 3).
    pub sched: Vec<crate::record::SchedFrame>,
    /// Pressure stall information (PSI) over the recording.
    pub psi: crate::aggregate::pressure::PressureSummary,
    /// Block I/O per device and process over the recording (format
    /// version 4), and its slowest requests.
    pub block: crate::aggregate::block::BlockSummary,
    /// Memory frames (version 4), summed.
    pub mem: crate::aggregate::memory::MemSummary,
    /// Lock frames summed (version 4).
    pub locks: crate::aggregate::lock::LockSummary,
    /// `--from`/`--to`: the review covers only this window (boot-time ns),
    /// and `first_ts`/`last_ts` are its ends.
    pub window: Option<(u64, u64)>,
    /// The first and last times read from the recording (within a
    /// window: up to the first past its end).
    pub span: Option<(u64, u64)>,
    /// The recording went on past the window's end.
    pub past_window: bool,
    /// Events the kernel dropped before the window (its sockets' states
    /// may be off).
    pub drops_before: u64,
}

/// One hint over the intervals it was given in: the sentence of its
/// peak interval, when that was, and how often and from when to when it
/// was given.
#[derive(Debug, Clone, PartialEq)]
pub struct MergedHint {
    pub text: String,
    pub peak: f64,
    pub peak_ts: u64,
    pub first_ts: u64,
    pub last_ts: u64,
    pub intervals: u64,
}

impl MergedHint {
    /// Fold the hint `h`, given in the interval ending at `ts`.
    fn add(&mut self, h: &Hint, ts: u64) {
        if h.value > self.peak {
            self.peak = h.value;
            self.peak_ts = ts;
            self.text = h.text.clone();
        }
        self.first_ts = self.first_ts.min(ts);
        self.last_ts = self.last_ts.max(ts);
        self.intervals += 1;
    }
}

/// Merge the hints of one interval (ending at `ts`) into `into`.
pub fn merge_hints(
    into: &mut BTreeMap<(HintKind, Option<u32>, String), MergedHint>,
    hints: &[Hint],
    ts: u64,
) {
    // One count per interval for a key given twice in it.
    let mut seen = std::collections::HashSet::new();
    for h in hints {
        let key = h.key();
        let m = into.entry(key.clone()).or_insert_with(|| MergedHint {
            text: h.text.clone(),
            peak: h.value,
            peak_ts: ts,
            first_ts: ts,
            last_ts: ts,
            intervals: 0,
        });
        if seen.insert(key) {
            m.add(h, ts);
        } else if h.value > m.peak {
            m.peak = h.value;
            m.peak_ts = ts;
            m.text = h.text.clone();
        }
    }
}

/// Timeline resolution.
pub const STEP_NS: u64 = 1_000_000_000;

impl Review {
    /// The recorded context of kill `k` (empty when none was recorded).
    pub fn context_of(&self, k: &OomKillEvent) -> &OomContext {
        static NONE: std::sync::OnceLock<OomContext> = std::sync::OnceLock::new();
        self.oom_context
            .get(&(k.header.ts_ns, k.header.pid))
            .unwrap_or_else(|| NONE.get_or_init(OomContext::default))
    }

    /// Fold a recording (its records in order) into a review.
    pub fn build(
        header: RecordingHeader,
        records: impl Iterator<Item = Record>,
        ended: impl Fn() -> bool,
    ) -> Review {
        Review::build_window(header, records, ended, Window::default())
    }

    /// Fold a recording into a review of `window` only: what came before
    /// it gives the state (sockets, owners), not the counts; reading stops
    /// past its end.
    pub fn build_window(
        header: RecordingHeader,
        records: impl Iterator<Item = Record>,
        ended: impl Fn() -> bool,
        window: Window,
    ) -> Review {
        let config = TcpConfig {
            port_range: header.port_range.unwrap_or(TcpConfig::default().port_range),
            guess_pid_reuse: !header.has_exits(),
            drop_reasons: header.drop_reasons.clone(),
            ..TcpConfig::default()
        };
        let mut agg = TcpAggregate::new(config);
        let mut r = Review {
            header,
            window: window
                .from
                .or(window.to)
                .map(|_| (window.from.unwrap_or(0), window.to.unwrap_or(u64::MAX))),
            ..Review::default()
        };
        // Before the window: state only. From its start: counted.
        let mut counting = window.from.is_none();
        let start = |r: &mut Review, agg: &mut TcpAggregate, next_due: &mut Option<u64>, f: u64| {
            agg.restart_counts(f);
            r.first_ts = Some(f);
            *next_due = Some(f.saturating_add(STEP_NS));
        };
        let mut seeded = false;
        let mut next_due: Option<u64> = None;
        let mut last_drops = 0u64;
        let mut opened: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
        let past = |ts: u64| window.to.is_some_and(|t| ts > t);
        // The last time a replay's views see (events, tables, health).
        let mut sample_end = 0u64;
        for rec in records {
            if let Some(ts) = record_ts(&rec) {
                r.read(ts);
            }
            match rec {
                Record::Events(evs) => {
                    let frame_past = evs.last().is_some_and(|e| past(e.header().ts_ns));
                    for e in &evs {
                        let ts = e.header().ts_ns;
                        r.read(ts);
                        if past(ts) {
                            r.past_window = true;
                            continue;
                        }
                        if !counting {
                            match window.from {
                                Some(f) if ts >= f => {
                                    counting = true;
                                    start(&mut r, &mut agg, &mut next_due, f);
                                }
                                _ => {
                                    if let AnyEvent::TcpState(t) = e {
                                        track_lifetime(&mut opened, t, ts, None);
                                    }
                                    agg.on_event(e);
                                    continue;
                                }
                            }
                        }
                        if r.first_ts.is_none() {
                            // Events before the first socket table (the
                            // recorder reads it after attaching): the
                            // rates start here, not at the table.
                            agg.advance(ts);
                        }
                        r.first_ts.get_or_insert(ts);
                        let due = *next_due.get_or_insert(ts.saturating_add(STEP_NS));
                        if ts >= due {
                            next_due = Some(r.catch_up(&mut agg, due, ts));
                        }
                        r.last_ts = r.last_ts.max(ts);
                        sample_end = sample_end.max(ts);
                        r.events += 1;
                        match e {
                            AnyEvent::OomKill(o) => r.oom.push(*o),
                            AnyEvent::TcpState(t) => {
                                track_lifetime(&mut opened, t, ts, Some(&mut r.lifetimes));
                            }
                            AnyEvent::TcpSock(_)
                            | AnyEvent::TcpDrop(_)
                            | AnyEvent::TcpClose(_)
                            | AnyEvent::ProcExit(_) => {}
                            AnyEvent::BlockSlow(b) => r.block.slow_event(b),
                            AnyEvent::Stall(st) => r.stalls.push(*st),
                            AnyEvent::MemStall(m) => r.mem_stalls.push(*m),
                            AnyEvent::LockWait(l) => r.lock_waits.push(*l),
                        }
                        agg.on_event(e);
                    }
                    if frame_past {
                        break;
                    }
                }
                Record::Table(t) => {
                    if past(t.ts_ns) {
                        r.past_window = true;
                        break;
                    }
                    if !counting && window.from.is_some_and(|f| t.ts_ns >= f) {
                        counting = true;
                        start(&mut r, &mut agg, &mut next_due, window.from.unwrap_or(0));
                    }
                    if seeded {
                        agg.reconcile(&t.rows, t.ts_ns);
                    } else {
                        seeded = true;
                        agg.seed(&t.rows, t.ts_ns);
                        if r.first_ts.is_none() {
                            agg.advance(t.ts_ns);
                        }
                        if counting {
                            r.first_ts.get_or_insert(t.ts_ns);
                            next_due.get_or_insert(t.ts_ns.saturating_add(STEP_NS));
                        }
                    }
                    if counting {
                        r.last_ts = r.last_ts.max(t.ts_ns);
                        sample_end = sample_end.max(t.ts_ns);
                    }
                }
                Record::Health(h) => {
                    if past(h.ts_ns) {
                        r.past_window = true;
                        continue;
                    }
                    if h.ringbuf_full > last_drops {
                        let n = h.ringbuf_full - last_drops;
                        if counting {
                            r.drops.push((h.ts_ns, n));
                        } else {
                            r.drops_before += n;
                        }
                        last_drops = h.ringbuf_full;
                    }
                    if counting {
                        r.last_ts = r.last_ts.max(h.ts_ns);
                        sample_end = sample_end.max(h.ts_ns);
                    }
                }
                Record::OomContext(c) => {
                    r.oom_context.insert((c.ts_ns, c.tid), c.ctx);
                }
                Record::Sched(s) => {
                    if past(s.ts_ns) {
                        r.past_window = true;
                        continue;
                    }
                    if counting {
                        r.last_ts = r.last_ts.max(s.ts_ns);
                        r.sched.push(s);
                    }
                }
                Record::Pressure(p) => {
                    if past(p.ts_ns) {
                        r.past_window = true;
                        continue;
                    }
                    if counting {
                        r.last_ts = r.last_ts.max(p.ts_ns);
                        r.psi.add(&p);
                    }
                }
                Record::Block(b) => {
                    if past(b.ts_ns) {
                        r.past_window = true;
                        continue;
                    }
                    if counting {
                        r.last_ts = r.last_ts.max(b.ts_ns);
                        r.block.eat(&b);
                    }
                }
                Record::Memory(m) => {
                    if past(m.end_ns) {
                        r.past_window = true;
                        continue;
                    }
                    if counting {
                        r.last_ts = r.last_ts.max(m.end_ns);
                        r.mem.add(&m);
                    }
                }
                Record::Locks(l) => {
                    if past(l.ts_ns) {
                        r.past_window = true;
                        continue;
                    }
                    if counting {
                        r.last_ts = r.last_ts.max(l.ts_ns);
                        r.locks.add(&l);
                    }
                }
                Record::Procs(_) | Record::End(_) => {}
                Record::Damage(d) => r.damage.push(d),
            }
        }
        if let (true, Some(t)) = (r.past_window, window.to) {
            // The window ends at its end, not at its last event.
            r.last_ts = t;
        }
        if counting {
            let end = r.last_ts.max(r.first_ts.unwrap_or(0));
            r.last_ts = end;
            // The last interval ends where a replay's does: at the last
            // event, table or health reading (a scheduler frame after
            // them widens the span, not the interval).
            let sampled = if r.past_window {
                end
            } else {
                sample_end.max(r.first_ts.unwrap_or(0))
            };
            r.sample(&mut agg, sampled.min(end));
        }
        // A window read up to its end, not to the file's: what comes
        // after it is not its business.
        r.ended = ended() || r.past_window;
        r
    }

    /// A time read from the recording, counted or not.
    fn read(&mut self, ts: u64) {
        let s = self.span.get_or_insert((ts, ts));
        s.0 = s.0.min(ts);
        s.1 = s.1.max(ts);
    }

    /// The window asked for, checked against what the recording holds.
    /// `from`/`to` are the words the user gave, for the message.
    pub fn check_window(&self, from: Option<&str>, to: Option<&str>) -> anyhow::Result<()> {
        let Some((f, t)) = self.window else {
            return Ok(());
        };
        let Some((a, b)) = self.span else {
            anyhow::bail!("the recording holds nothing to narrow to a window");
        };
        let a = crate::source::replay::recording_start(&self.header, a);
        let spans = crate::source::replay::span_words(&self.header, a, b, self.past_window);
        // Times are given to the second: a recording that starts at
        // 10:02:05.4 has 10:02:05 in it.
        if let Some(w) = from
            && f.saturating_add(STEP_NS) <= a
        {
            anyhow::bail!("--from {w} is before the recording: {spans}");
        }
        if let Some(w) = to
            && t.saturating_add(STEP_NS) <= a
        {
            anyhow::bail!("--to {w} is before the recording: {spans}");
        }
        if !self.past_window {
            if let Some(w) = from
                && f >= b.saturating_add(STEP_NS)
            {
                anyhow::bail!("--from {w} is after the recording: {spans}");
            }
            if let Some(w) = to
                && t >= b.saturating_add(STEP_NS)
            {
                anyhow::bail!("--to {w} is after the recording: {spans}");
            }
        }
        if let (Some(x), Some(y)) = (from, to)
            && f == t
        {
            anyhow::bail!("--from {x} and --to {y} are the same time: the window is empty");
        }
        Ok(())
    }

    /// Samples from `due` up to `ts`; returns the next due time. An idle
    /// gap costs three samples (its first second, which ends the rates,
    /// and its end), not one per second: the timeline is sized by what
    /// was read, not by the span between two times.
    fn catch_up(&mut self, agg: &mut TcpAggregate, due: u64, ts: u64) -> u64 {
        let mut d = due;
        for _ in 0..2 {
            if d > ts {
                return d;
            }
            self.sample(agg, d);
            d = d.saturating_add(STEP_NS);
        }
        if d <= ts {
            // The last step boundary at or before ts.
            let last = d + (ts - d) / STEP_NS * STEP_NS;
            self.sample(agg, last);
            d = last.saturating_add(STEP_NS);
        }
        d
    }

    fn sample(&mut self, agg: &mut TcpAggregate, ts: u64) {
        let s = agg.snapshot(ts);
        let p = Point {
            ts_ns: ts,
            opens_per_s: s.rates.active_opens + s.rates.passive_opens,
            closes_per_s: s.rates.closes,
            resets_per_s: s.rates.resets_sent + s.rates.resets_received,
            retrans_per_s: s.rates.retransmits,
            established: s.states.established,
            time_wait: s.states.time_wait,
            close_wait: s.states.close_wait,
        };
        // Peaks are of samples within what was read (a sample is never
        // before the first time nor after the last).
        if p.time_wait > self.tw_peak.1 {
            self.tw_peak = (ts, p.time_wait);
        }
        if p.close_wait > self.cw_peak.1 {
            self.cw_peak = (ts, p.close_wait);
        }
        if let Some(top) = s.pressure.first()
            && self
                .pressure_peak
                .as_ref()
                .is_none_or(|(_, best)| top.ratio > best.ratio)
        {
            self.pressure_peak = Some((ts, top.clone()));
        }
        // Rates over a sliver of time (the last, partial interval) would
        // make hints shout: only whole intervals give them.
        if s.interval_s * 1e9 >= STEP_NS as f64 * 0.5 {
            merge_hints(&mut self.hints, &s.hint_facts, ts);
        }
        if s.interval_s > 0.0 {
            self.timeline.push(p);
        }
        self.per_proc.sample(ts, &s);
        self.last = Some(s);
    }

    fn clock(&self) -> WallClock {
        self.header.clock()
    }
}

/// The time of a record that is not events.
fn record_ts(rec: &Record) -> Option<u64> {
    match rec {
        Record::Health(h) => Some(h.ts_ns),
        Record::Table(t) => Some(t.ts_ns),
        Record::Procs(p) => Some(p.ts_ns),
        Record::End(e) => Some(e.ts_ns),
        Record::Sched(s) => Some(s.ts_ns),
        Record::Pressure(p) => Some(p.ts_ns),
        Record::Block(b) => Some(b.ts_ns),
        Record::Memory(m) => Some(m.end_ns),
        Record::Locks(l) => Some(l.ts_ns),
        Record::Events(_) | Record::OomContext(_) | Record::Damage(_) => None,
    }
}

/// A connection's lifetime, from its open to its CLOSE (into
/// `lifetimes` when it is counted).
fn track_lifetime(
    opened: &mut std::collections::HashMap<u64, u64>,
    t: &diag_common::tcp::TcpStateEvent,
    ts: u64,
    lifetimes: Option<&mut ValueHist>,
) {
    use diag_common::tcp::state;
    if matches!(
        (t.old_state, t.new_state),
        (state::CLOSE, state::SYN_SENT) | (state::LISTEN, state::SYN_RECV)
    ) {
        opened.insert(t.skaddr, ts);
    } else if t.new_state == state::CLOSE
        && let Some(o) = opened.remove(&t.skaddr)
        && let Some(l) = lifetimes
    {
        l.record(ts.saturating_sub(o));
    }
}

fn top_by(rows: &[ProcRow], n: usize, key: impl Fn(&Counters) -> u64) -> Vec<&ProcRow> {
    let mut v: Vec<&ProcRow> = rows.iter().filter(|r| key(&r.totals) > 0).collect();
    v.sort_by(|a, b| key(&b.totals).cmp(&key(&a.totals)).then(a.pid.cmp(&b.pid)));
    v.truncate(n);
    v
}

/// The report as text. Pure.
/// `diag report FILE [--html OUT]`.
pub fn run(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let reader = open(&args.file)?;
    let header = reader.header.clone();
    let ended = std::rc::Rc::new(std::cell::Cell::new(false));
    let flag = ended.clone();
    let mut reader = reader;
    let records = std::iter::from_fn(move || {
        let r = reader.next();
        flag.set(reader.ended);
        r
    });
    let w = window(args.from.as_deref(), args.to.as_deref(), &header)?;
    let review = Review::build_window(header, records, || ended.get(), w);
    review.check_window(args.from.as_deref(), args.to.as_deref())?;
    let name = args.file.display().to_string();
    let width = match args.width {
        Some(n) => n,
        None => text::terminal_width().unwrap_or(0),
    };
    print!("{}", wrap(&render_text(&review, &name), width));
    if let Some(out) = &args.html {
        crate::record::outfile::create_private(out, crate::record::outfile::Lock::None)
            .and_then(|mut f| {
                std::io::Write::write_all(&mut f, render_html(&review, &name).as_bytes())
            })
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
        eprintln!("diag: wrote {}", out.display());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::EndFrame;
    use diag_common::{
        EventHeader, EventKind,
        tcp::{AF_INET, TcpStateEvent, attribution, state},
    };

    fn st(ts: u64, sk: u64, sport: u16, old: u8, new: u8) -> AnyEvent {
        let mut h = EventHeader::zeroed();
        h.kind = EventKind::TcpState as u32;
        h.ts_ns = ts;
        h.pid = 7;
        h.tgid = 7;
        h.comm[..3].copy_from_slice(b"api");
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[127, 0, 0, 1]);
        AnyEvent::TcpState(TcpStateEvent {
            header: h,
            skaddr: sk,
            in_old_state_ns: 0,
            saddr: a,
            daddr: a,
            sport,
            dport: 5432,
            family: AF_INET,
            old_state: old,
            new_state: new,
            attribution: attribution::SYSCALL,
            err_known: 0,
            _pad: [0; 2],
            current_tgid: 7,
            netns: 0,
            listen_queue: diag_common::tcp::NO_FIELD,
            listen_backlog: diag_common::tcp::NO_FIELD,
            err: 0,
        })
    }

    fn review_records() -> (RecordingHeader, Vec<Record>) {
        use state::*;
        let mut evs = Vec::new();
        for i in 0..30u64 {
            let ts = 1_000_000_000 + i * 100_000_000;
            let sport = 40000 + i as u16;
            evs.push(st(ts, 0x100 + i, 0, CLOSE, SYN_SENT));
            evs.push(st(ts + 1_000, 0x100 + i, sport, SYN_SENT, ESTABLISHED));
            evs.push(st(ts + 2_000, 0x100 + i, sport, ESTABLISHED, FIN_WAIT1));
            evs.push(st(ts + 3_000, 0x100 + i, sport, FIN_WAIT1, FIN_WAIT2));
            evs.push(st(ts + 4_000, 0x100 + i, sport, FIN_WAIT2, CLOSE));
            evs.push(AnyEvent::TcpClose(crate::aggregate::close::close_event(
                7,
                "api",
                0x100 + i,
                sport,
                5432,
                ts + 4_000,
                4_000,
                (1000 + i, 10),
                30 + i as u32,
                diag_common::tcp::closed_by::LOCAL,
            )));
        }
        // Two connects refused.
        for i in 0..2u64 {
            let ts = 4_500_000_000 + i * 1_000;
            evs.push(st(ts, 0x200 + i, 0, CLOSE, SYN_SENT));
            if let AnyEvent::TcpState(mut t) = st(ts + 500, 0x200 + i, 41000, SYN_SENT, CLOSE) {
                t.err_known = 1;
                t.err = 111;
                evs.push(AnyEvent::TcpState(t));
            }
        }
        let header = RecordingHeader {
            hostname: "h".into(),
            cpus: 2,
            started_ts_ns: 1_000_000_000,
            ..Default::default()
        };
        let records = vec![
            Record::Events(evs),
            Record::Damage("frame at byte 99 has a bad checksum: skipped".into()),
            Record::End(EndFrame {
                ts_ns: 5_000_000_000,
                reason: "stopped".into(),
            }),
        ];
        (header, records)
    }

    pub(super) fn review() -> Review {
        let (header, records) = review_records();
        Review::build(header, records.into_iter(), || true)
    }

    /// One short connection of pid 7 to 127.0.0.1:`dport` at `ts`.
    fn conn(evs: &mut Vec<AnyEvent>, ts: u64, sk: u64, dport: u16) {
        use state::*;
        let sport = 30000 + (sk % 30000) as u16;
        for (i, (old, new)) in [
            (CLOSE, SYN_SENT),
            (SYN_SENT, ESTABLISHED),
            (ESTABLISHED, FIN_WAIT1),
            (FIN_WAIT1, FIN_WAIT2),
            (FIN_WAIT2, CLOSE),
        ]
        .into_iter()
        .enumerate()
        {
            let sp = if i == 0 { 0 } else { sport };
            if let AnyEvent::TcpState(mut t) = st(ts + i as u64 * 1_000, sk, sp, old, new) {
                t.dport = dport;
                evs.push(AnyEvent::TcpState(t));
            }
        }
    }

    /// Three seconds of churn to two destinations at rates that change:
    /// (second, connections to :5432, connections to :6000).
    fn churn_review() -> Review {
        let mut evs = Vec::new();
        let mut sk = 0x1000;
        for (sec, a, b) in [(1u64, 20u64, 12u64), (2, 40, 0), (3, 15, 30)] {
            for (dport, n) in [(5432, a), (6000, b)] {
                for i in 0..n {
                    let ts = sec * 1_000_000_000 + 10_000_000 + i * 20_000_000 / (n + 1) * 40;
                    conn(
                        &mut evs,
                        ts.min(sec * 1_000_000_000 + 990_000_000),
                        sk,
                        dport,
                    );
                    sk += 1;
                }
            }
        }
        evs.sort_by_key(|e| e.header().ts_ns);
        let header = RecordingHeader {
            started_ts_ns: 1_000_000_000,
            ..Default::default()
        };
        let records = vec![
            Record::Table(crate::record::TableFrame {
                ts_ns: 1_000_000_000,
                rows: Vec::new(),
            }),
            Record::Events(evs),
            // The recording's last second, idle.
            Record::Health(crate::bus::Health {
                ts_ns: 4_000_000_000,
                ..Default::default()
            }),
        ];
        Review::build(header, records.into_iter(), || true)
    }

    /// Issue 21: one hint per process, destination and kind, with its
    /// peak (the largest per-interval value) and the peak's time.
    #[test]
    fn hints_merge_per_process_and_destination_with_their_peak() {
        let r = churn_review();
        let churn: Vec<&MergedHint> = r
            .hints
            .iter()
            .filter(|(k, _)| k.0 == HintKind::Churn && k.1 == Some(7))
            .map(|(_, m)| m)
            .collect();
        assert_eq!(churn.len(), 2, "{:?}", r.hints);
        let a = &r.hints[&(HintKind::Churn, Some(7), "127.0.0.1:5432".to_string())];
        assert_eq!(a.intervals, 3, "{a:?}");
        assert_eq!(a.peak, 40.0, "{a:?}");
        assert_eq!(a.peak_ts, 3_000_000_000, "{a:?}");
        assert!(a.text.contains("opened 40 conns/s"), "{a:?}");
        let b = &r.hints[&(HintKind::Churn, Some(7), "127.0.0.1:6000".to_string())];
        assert_eq!(
            (b.intervals, b.peak, b.peak_ts),
            (2, 30.0, 4_000_000_000),
            "{b:?}"
        );
        let text = render_text(&r, "x.diag");
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("conns/s to")).collect();
        assert_eq!(lines.len(), 2, "{text}");
        let t = |ns: u64| r.clock().wall(ns).format("%H:%M:%S").to_string();
        assert!(
            lines[0].contains("opened 40 conns/s to 127.0.0.1:5432")
                && lines[0].contains(&format!(
                    "peak at {}; given in 3 intervals",
                    t(3_000_000_000)
                )),
            "{text}"
        );
        assert!(
            lines[1].contains("opened 30 conns/s to 127.0.0.1:6000"),
            "{text}"
        );
    }

    /// Merging counts a key once per interval and keeps the words of the
    /// peak.
    #[test]
    fn merging_keeps_the_peak_words() {
        let h = |v: f64| {
            Hint::new(
                HintKind::CloseWaitLeak,
                Some(3),
                "",
                v,
                format!("{v} leaked"),
            )
        };
        let mut m = BTreeMap::new();
        merge_hints(&mut m, &[h(2.0)], 10);
        merge_hints(&mut m, &[h(5.0), h(4.0)], 20);
        merge_hints(&mut m, &[h(3.0)], 30);
        assert_eq!(m.len(), 1);
        let v = m.values().next().unwrap();
        assert_eq!(
            (
                v.text.as_str(),
                v.peak,
                v.peak_ts,
                v.first_ts,
                v.last_ts,
                v.intervals
            ),
            ("5 leaked", 5.0, 20, 10, 30, 3)
        );
    }

    /// Every time the text names is within the recording (or the window).
    fn times_in(text: &str) -> Vec<String> {
        text.split(|c: char| !(c.is_ascii_digit() || c == ':'))
            .filter(|w| w.len() == 8 && w.as_bytes()[2] == b':' && w.as_bytes()[5] == b':')
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn peaks_and_times_are_inside_the_recording() {
        let r = churn_review();
        let text = render_text(&r, "x.diag");
        let t = |ns: u64| r.clock().wall(ns).format("%H:%M:%S").to_string();
        let (first, last) = (t(1_000_000_000), t(4_000_000_000));
        let times = times_in(&text);
        assert!(!times.is_empty());
        for w in &times {
            assert!(
                *w >= first && *w <= last,
                "{w} outside {first}..{last}:\n{text}"
            );
        }
        assert!(text.contains("TIME_WAIT peak: "), "{text}");
        assert!(text.contains("CLOSE_WAIT peak: none\n"), "{text}");
    }

    #[test]
    fn a_window_narrows_the_counts_and_says_so() {
        let (header, records) = review_records();
        let all: Vec<AnyEvent> = records
            .iter()
            .filter_map(|r| match r {
                Record::Events(e) => Some(e.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        let (f, t) = (2_000_000_000, 3_000_000_000);
        let w = Window {
            from: Some(f),
            to: Some(t),
        };
        let r = Review::build_window(header, records.into_iter(), || true, w);
        r.check_window(Some("a"), Some("b")).unwrap();
        let inside = all
            .iter()
            .filter(|e| (f..=t).contains(&e.header().ts_ns))
            .count() as u64;
        assert_eq!(r.events, inside);
        assert_eq!((r.first_ts, r.last_ts), (Some(f), t));
        let rows = &r.last.as_ref().unwrap().processes;
        let p = rows.iter().find(|p| p.pid == 7).unwrap();
        // Connections 10 to 20 open at 2.0 s to 3.0 s (a window holds
        // both its ends).
        assert_eq!(p.totals.active_opens, 11);
        assert_eq!(p.totals.failed_connects, 0, "the refusals are after it");
        let text = render_text(&r, "x.diag");
        let hms = |ns: u64| r.clock().wall(ns).format("%H:%M:%S").to_string();
        assert!(
            text.contains(&format!("WINDOW: {} to {} (1.00s) only", hms(f), hms(t))),
            "{text}"
        );
        assert!(text.contains(&format!("Events: {inside};")), "{text}");
    }

    /// Drops before a window are said (without a time outside it); those
    /// inside it with theirs.
    #[test]
    fn drops_before_a_window_are_not_lost() {
        let (header, mut records) = review_records();
        let health = |ts_ns: u64, ringbuf_full: u64| {
            Record::Health(crate::bus::Health {
                ts_ns,
                ringbuf_full,
                ..Default::default()
            })
        };
        // Frames of a second, with the health frames between them.
        let Record::Events(evs) = records.remove(0) else {
            panic!("events first")
        };
        let frame = |lo: u64, hi: u64| {
            Record::Events(
                evs.iter()
                    .filter(|e| (lo..hi).contains(&e.header().ts_ns))
                    .copied()
                    .collect(),
            )
        };
        let s = 1_000_000_000;
        let mut frames = vec![
            frame(0, 2 * s),
            health(s + s / 2, 5),
            frame(2 * s, 3 * s),
            health(2 * s + s / 2, 7),
            frame(3 * s, u64::MAX),
        ];
        frames.append(&mut records);
        let records = frames;
        let w = Window {
            from: Some(2_000_000_000),
            to: Some(3_000_000_000),
        };
        let r = Review::build_window(header, records.into_iter(), || true, w);
        let text = render_text(&r, "x.diag");
        assert!(
            text.contains("INCOMPLETE: 5 events dropped by the kernel before the window"),
            "{text}"
        );
        assert!(
            text.contains("INCOMPLETE: 2 events dropped by the kernel in the second before"),
            "{text}"
        );
        assert!(!text.contains("Complete:"), "{text}");
    }

    #[test]
    fn a_window_outside_the_recording_is_refused_naming_its_span() {
        let check = |from: Option<u64>, to: Option<u64>| {
            let (header, records) = review_records();
            let r = Review::build_window(header, records.into_iter(), || true, Window { from, to });
            r.check_window(from.map(|_| "F"), to.map(|_| "T"))
                .map_err(|e| e.to_string())
        };
        let before = check(Some(0), Some(2_000_000_000)).unwrap_err();
        assert!(
            before.contains("--from F is before the recording: it starts at"),
            "{before}"
        );
        let after = check(Some(2_000_000_000), Some(9_000_000_000)).unwrap_err();
        assert!(
            after.contains("--to T is after the recording: it spans"),
            "{after}"
        );
        let late = check(Some(8_000_000_000), None).unwrap_err();
        assert!(
            late.contains("--from F is after the recording: it spans"),
            "{late}"
        );
        let empty = check(Some(2_000_000_000), Some(2_000_000_000)).unwrap_err();
        assert!(empty.contains("the window is empty"), "{empty}");
        // To the second: the recording ends at 5.0 s.
        assert!(check(Some(1_500_000_000), Some(5_900_000_000)).is_ok());
    }

    #[test]
    fn wrapping_keeps_every_word_and_indents_continuations() {
        let text = "short line\n    pid 7 (api) opened 40 conns/s to 127.0.0.1:5432, 100 % closed within 100 ms: consider keepalive\nx\n";
        let w = wrap(text, 30);
        for l in w.lines() {
            assert!(l.chars().count() <= 30, "{l:?}");
        }
        let words = |s: &str| s.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        assert_eq!(words(&w), words(text));
        let lines: Vec<&str> = w.lines().collect();
        assert_eq!(lines[0], "short line");
        assert!(lines[1].starts_with("    pid 7"), "{w}");
        assert!(
            lines[2].starts_with("      ") && !lines[2].starts_with("       "),
            "{w}"
        );
        assert_eq!(*lines.last().unwrap(), "x");
        assert!(w.ends_with("x\n"));
        // A word longer than a line is split, not cut.
        let long = format!("  {}", "a".repeat(70));
        let w = wrap(&long, 25);
        assert_eq!(w.replace(['\n', ' '], ""), "a".repeat(70));
        assert!(w.lines().all(|l| l.chars().count() <= 25), "{w}");
        assert_eq!(wrap(text, 0), text);
        // Hyphenated words are not split at their hyphens.
        let w = wrap(
            "  record with --events tcp,stall to capture waits over --stall-threshold",
            30,
        );
        assert!(w.lines().any(|l| l.ends_with(" --stall-threshold")), "{w}");
    }

    #[test]
    fn kernel_drops_are_reported_with_the_recorded_reason_names() {
        use diag_common::tcp::{AF_INET, TcpDropEvent, attribution, drop_cause};
        let mut header = diag_common::EventHeader::zeroed();
        header.kind = diag_common::EventKind::TcpDrop as u32;
        header.tgid = 42;
        header.pid = 42;
        header.comm[..4].copy_from_slice(b"recv");
        header.ts_ns = 2_000_000_000;
        let d = TcpDropEvent {
            header,
            skaddr: 0xffff_3000,
            addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            raddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            port: 8080,
            rport: 40001,
            family: AF_INET,
            cause: drop_cause::SOCKET,
            attribution: attribution::SOCKET,
            reason: 41,
            netns: 1,
            queue: u32::MAX,
            backlog: u32::MAX,
            current_tgid: 0,
            count: 1,
        };
        let mut u = crate::source::live::unowned_event(3_000_000_000, 3, 17);
        u.header.ts_ns = 3_000_000_000;
        let header = RecordingHeader {
            started_ts_ns: 1_000_000_000,
            drop_reasons: vec![(41, "TCP_OLD_SEQUENCE".into()), (3, "NO_SOCKET".into())],
            ..Default::default()
        };
        let records = vec![Record::Events(vec![
            AnyEvent::TcpDrop(d),
            AnyEvent::TcpDrop(d),
            AnyEvent::TcpDrop(u),
        ])];
        let r = Review::build(header, records.into_iter(), || true);
        let text = render_text(&r, "x.diag");
        assert!(
            text.contains(
                "Kernel drops: 2 packets dropped for TCP sockets, 17 TCP packets with no socket"
            ),
            "{text}"
        );
        assert!(text.contains("127.0.0.1:40001"), "{text}");
        assert!(text.contains("TCP_OLD_SEQUENCE"), "{text}");
        assert!(text.contains("NO_SOCKET"), "{text}");
    }

    #[test]
    fn review_counts_and_text() {
        let r = review();
        assert_eq!(r.events, 184);
        assert_eq!(
            r.lifetimes.count, 32,
            "30 connections and the 2 refused connects"
        );
        assert_eq!(r.tw_peak.1, 30);
        assert!(r.timeline.len() >= 2);
        let text = render_text(&r, "x.diag");
        for want in [
            "1. ERRORS",
            "2. SATURATION",
            "3. CHURN",
            "pid 7",
            "TIME_WAIT peak: 30",
            "DAMAGED: frame at byte 99",
            "4. CONNECTIONS",
            "Connections closed with a summary: 30",
            "Heaviest (bytes acked + received):",
            "pid 7       api              127.0.0.1:40029 -> 127.0.0.1:5432  4.0us tx 1.0KiB rx 10B retrans 0 rtt 59.0us closed by local",
            "127.0.0.1:5432               30 closed, rtt p50 44.0us max 59.0us",
            "failed connects: pid 7       api              to 127.0.0.1:5432           2 ECONNREFUSED",
        ] {
            assert!(text.contains(want), "{want} missing:\n{text}");
        }
        assert!(!text.contains("Complete: no events were lost."));
    }

    #[test]
    fn saturation_names_the_overflowing_listener_and_the_connect_times() {
        use crate::aggregate::listen::tests::drop_event;
        let text = render_text(&review(), "x.diag");
        assert!(
            text.contains("Listen queues: no connection attempt dropped at a listener"),
            "{text}"
        );
        // The fixture's 30 connects each take 1 us (SYN_SENT at ts, ESTABLISHED at ts + 1000).
        assert!(text.contains("Connect time: 30 connects, p50 "), "{text}");
        assert!(text.contains("-> 127.0.0.1:5432"), "{text}");

        let mut evs = Vec::new();
        for i in 0..3u64 {
            let mut d = drop_event(
                41,
                8080,
                diag_common::tcp::drop_cause::SYN_ACCEPT_QUEUE_FULL,
                3,
                2,
            );
            d.header.ts_ns = 1_000_000_000 + i;
            evs.push(AnyEvent::TcpDrop(d));
        }
        let header = RecordingHeader {
            started_ts_ns: 1_000_000_000,
            ..Default::default()
        };
        let r = Review::build(header, vec![Record::Events(evs)].into_iter(), || true);
        let text = render_text(&r, "x.diag");
        assert!(
            text.contains("Listen queues: 1 listeners dropped connection attempts"),
            "{text}"
        );
        assert!(
            text.contains("pid 41      srv              127.0.0.1:8080         3 overflows, 3 drops; accept queue 3/2 at the last drop, highest 3"),
            "{text}"
        );
        assert!(
            text.contains("Connect time: no outgoing connect completed"),
            "{text}"
        );
    }

    #[test]
    fn the_timeline_is_sized_by_what_was_read_not_by_the_span() {
        use state::*;
        // Two events eleven days apart: a handful of points, not a
        // million (and no time spent stepping through the gap).
        let header = RecordingHeader {
            started_ts_ns: 1_000_000_000,
            ..Default::default()
        };
        let records = vec![Record::Events(vec![
            st(1_000_000_000, 1, 0, CLOSE, SYN_SENT),
            st(
                1_000_000_000 + 1_000_000 * STEP_NS,
                1,
                9,
                SYN_SENT,
                ESTABLISHED,
            ),
            st(u64::MAX - 1, 2, 0, CLOSE, SYN_SENT),
        ])];
        let t = std::time::Instant::now();
        let r = Review::build(header, records.into_iter(), || true);
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
        assert!(r.timeline.len() <= 8, "{}", r.timeline.len());
        // An idle gap still reads as idle: the rates end one step after
        // the last events, and the gap's end is a point.
        assert_eq!(r.timeline[1].opens_per_s, 0.0);
        let _ = render_html(&r, "x");
    }

    /// Issue 15, item 13: a recording without events ends where it starts
    /// (not at boot), and a peak of nothing has no moment.
    #[test]
    fn an_empty_recording_tells_no_lies() {
        let header = RecordingHeader {
            clock_offset_ns: 1_700_000_000_000_000_000,
            started_ts_ns: 5_000_000_000,
            ..Default::default()
        };
        let r = Review::build(header, std::iter::empty(), || true);
        let text = render_text(&r, "empty.diag");
        assert!(!text.contains("peak: 0 at"), "{text}");
        assert!(text.contains("CLOSE_WAIT peak: none\n"), "{text}");
        let line = text.lines().find(|l| l.contains("recorded")).unwrap();
        let times: Vec<&str> = line
            .split([' ', ';', '('])
            .filter(|w| w.len() == 8 && w.as_bytes()[2] == b':')
            .collect();
        assert_eq!(times.len(), 2, "{line}");
        assert_eq!(times[0], times[1], "{line}");
    }
}
