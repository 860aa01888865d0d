//! `diag report`: a recording reviewed in the USE method's order: errors,
//! saturation, then churn, each with times; plain text, and optionally a
//! self-contained HTML page with plots (inline SVG, no scripts).

use std::{collections::BTreeSet, fmt::Write as _, process::ExitCode};

use diag_common::{oom::OomKillEvent, sched::StallEvent, user::AnyEvent};
use serde::Serialize;

mod html;
mod page;
mod text;

pub use html::render_html;
pub use text::render_text;

use crate::{
    aggregate::{
        close::Closed,
        tcp::{Counters, Log2Hist, Pressure, ProcRow, TcpAggregate, TcpConfig, TcpSnapshot},
    },
    cli::ReportArgs,
    clock::WallClock,
    enrich::oom::OomContext,
    record::{RecordingHeader, reader::Record},
    source::replay::open,
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
    pub last: Option<TcpSnapshot>,
    /// (when, how many) each time the kernel reported new drops.
    pub drops: Vec<(u64, u64)>,
    pub damage: Vec<String>,
    pub ended: bool,
    pub tw_peak: (u64, u64),
    pub cw_peak: (u64, u64),
    pub pressure_peak: Option<(u64, Pressure)>,
    pub hints: BTreeSet<String>,
    pub lifetimes: Log2Hist,
    /// Each process's activity per interval, for the page's tables.
    pub per_proc: page::ProcSeries,
    /// The scheduler's run-queue waits per interval (recordings made
    /// with stalls, format version 3).
    pub sched: Vec<crate::record::SchedFrame>,
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
        let config = TcpConfig {
            port_range: header.port_range.unwrap_or(TcpConfig::default().port_range),
            guess_pid_reuse: !header.has_exits(),
            drop_reasons: header.drop_reasons.clone(),
            ..TcpConfig::default()
        };
        let mut agg = TcpAggregate::new(config);
        let mut r = Review {
            header,
            ..Review::default()
        };
        let mut seeded = false;
        let mut next_due: Option<u64> = None;
        let mut last_drops = 0u64;
        let mut opened: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
        for rec in records {
            match rec {
                Record::Events(evs) => {
                    for e in &evs {
                        let ts = e.header().ts_ns;
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
                        r.events += 1;
                        match e {
                            AnyEvent::OomKill(o) => r.oom.push(*o),
                            AnyEvent::TcpState(t) => {
                                use diag_common::tcp::state;
                                if matches!(
                                    (t.old_state, t.new_state),
                                    (state::CLOSE, state::SYN_SENT)
                                        | (state::LISTEN, state::SYN_RECV)
                                ) {
                                    opened.insert(t.skaddr, ts);
                                } else if t.new_state == state::CLOSE
                                    && let Some(o) = opened.remove(&t.skaddr)
                                {
                                    r.lifetimes.record(ts.saturating_sub(o));
                                }
                            }
                            AnyEvent::TcpSock(_)
                            | AnyEvent::TcpDrop(_)
                            | AnyEvent::TcpClose(_)
                            | AnyEvent::ProcExit(_) => {}
                            AnyEvent::Stall(st) => r.stalls.push(*st),
                        }
                        agg.on_event(e);
                    }
                }
                Record::Table(t) => {
                    if seeded {
                        agg.reconcile(&t.rows, t.ts_ns);
                    } else {
                        seeded = true;
                        agg.seed(&t.rows, t.ts_ns);
                        if r.first_ts.is_none() {
                            agg.advance(t.ts_ns);
                        }
                        r.first_ts.get_or_insert(t.ts_ns);
                        next_due.get_or_insert(t.ts_ns.saturating_add(STEP_NS));
                    }
                    r.last_ts = r.last_ts.max(t.ts_ns);
                }
                Record::Health(h) => {
                    if h.ringbuf_full > last_drops {
                        r.drops.push((h.ts_ns, h.ringbuf_full - last_drops));
                        last_drops = h.ringbuf_full;
                    }
                    r.last_ts = r.last_ts.max(h.ts_ns);
                }
                Record::OomContext(c) => {
                    r.oom_context.insert((c.ts_ns, c.tid), c.ctx);
                }
                Record::Sched(s) => {
                    r.last_ts = r.last_ts.max(s.ts_ns);
                    r.sched.push(s);
                }
                Record::Procs(_) | Record::End(_) => {}
                Record::Damage(d) => r.damage.push(d),
            }
        }
        let end = r.last_ts;
        r.sample(&mut agg, end);
        r.ended = ended();
        r
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
            self.hints.extend(s.hints.iter().cloned());
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
    let review = Review::build(header, records, || ended.get());
    let name = args.file.display().to_string();
    print!("{}", render_text(&review, &name));
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

    pub(super) fn review() -> Review {
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
        Review::build(header, records.into_iter(), || true)
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
        assert!(text.contains("CLOSE_WAIT peak: 0\n"), "{text}");
        let line = text.lines().find(|l| l.contains("recorded")).unwrap();
        let times: Vec<&str> = line
            .split([' ', ';', '('])
            .filter(|w| w.len() == 8 && w.as_bytes()[2] == b':')
            .collect();
        assert_eq!(times.len(), 2, "{line}");
        assert_eq!(times[0], times[1], "{line}");
    }
}
