//! `diag report`: a recording reviewed in the USE method's order: errors,
//! saturation, then churn, each with times; plain text, and optionally a
//! self-contained HTML page with plots (inline SVG, no scripts).

use std::{collections::BTreeSet, fmt::Write as _, process::ExitCode};

use diag_common::{oom::OomKillEvent, sched::StallEvent, user::AnyEvent};
use serde::Serialize;

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
                        agg.advance(t.ts_ns);
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
pub fn render_text(r: &Review, file: &str) -> String {
    let clock = r.clock();
    let t = |ns: u64| clock.wall(ns).format("%H:%M:%S").to_string();
    let mut o = String::new();
    let h = &r.header;
    let first = r.first_ts.unwrap_or(h.started_ts_ns);
    // A recording without events ends where it starts, not at boot.
    let last = r.last_ts.max(first);
    let _ = writeln!(o, "diag report: {file}");
    let _ = writeln!(
        o,
        "Host {}, kernel {}, {} CPUs; recorded {} to {} ({}); diag {}",
        h.hostname,
        h.kernel,
        h.cpus,
        clock.wall(first).format("%Y-%m-%d %H:%M:%S %Z"),
        t(last),
        human_ns(last - first),
        h.diag_version
    );
    let _ = writeln!(o, "Events: {}; probes: {}", r.events, h.probes.join(", "));
    let mut complete = true;
    for (ts, n) in &r.drops {
        complete = false;
        let _ = writeln!(
            o,
            "INCOMPLETE: {n} events dropped by the kernel in the second before {} (ring buffer full)",
            t(*ts)
        );
    }
    for d in &r.damage {
        complete = false;
        let _ = writeln!(o, "DAMAGED: {d}");
    }
    if !r.ended {
        complete = false;
        let _ = writeln!(
            o,
            "NOT FINISHED: the recording ends at its last complete frame (diag was killed or the file was cut)"
        );
    }
    if complete {
        let _ = writeln!(o, "Complete: no events were lost.");
    }

    let empty = Vec::new();
    let rows = r.last.as_ref().map(|s| &s.processes).unwrap_or(&empty);
    let _ = writeln!(o, "\n1. ERRORS");
    let _ = writeln!(o, "  OOM kills: {}", r.oom.len());
    for k in &r.oom {
        let _ = writeln!(o, "    {}", oom_text(k, r.context_of(k), &clock));
    }
    if let Some(s) = &r.last {
        let tot = &s.totals;
        let _ = writeln!(
            o,
            "  TCP resets: sent {} (+{} by the kernel for closed ports), received {}; retransmits {}; failed connects {}; aborted connections {}",
            tot.resets_sent,
            s.kernel_resets_sent,
            tot.resets_received,
            tot.retransmits,
            tot.failed_connects,
            tot.aborts
        );
        for p in top_by(rows, 5, |c| {
            c.resets_sent + c.resets_received + c.retransmits + c.failed_connects
        }) {
            let _ = writeln!(
                o,
                "    pid {:<7} {:<16} resets in {} out {}, retransmits {}, failed connects {}",
                p.pid,
                p.comm,
                p.totals.resets_received,
                p.totals.resets_sent,
                p.totals.retransmits,
                p.totals.failed_connects
            );
        }
        for (addr, e) in s.remote_errors.iter().take(5) {
            let _ = writeln!(
                o,
                "    remote {:<24} resets in {} out {}, retransmits {}, failed connects {}",
                addr.to_string(),
                e.resets_received,
                e.resets_sent,
                e.retransmits,
                e.failed_connects
            );
        }
        for f in s.connect_failures.iter().take(10) {
            let _ = writeln!(
                o,
                "    failed connects: pid {:<7} {:<16} to {:<24} {} {}",
                f.pid,
                f.comm,
                f.remote.to_string(),
                f.count,
                f.error
            );
        }
    }

    if let Some(s) = &r.last {
        kernel_drops_text(&mut o, s);
    }

    let _ = writeln!(o, "\n2. SATURATION");
    if r.stalls.is_empty() {
        let _ = writeln!(
            o,
            "  No stalls recorded (record with --events ...,stall to capture run-queue waits over --stall-threshold)."
        );
    } else {
        let comm = crate::text::comm;
        let _ = writeln!(
            o,
            "  Stalls (run-queue waits over the threshold): {}",
            r.stalls.len()
        );
        let mut worst: Vec<&StallEvent> = r.stalls.iter().collect();
        worst.sort_by_key(|s| std::cmp::Reverse(s.wait_ns));
        for st in worst.iter().take(5) {
            let _ = writeln!(
                o,
                "    {}  pid {} ({}) waited {} for CPU {}; {} ({}) held it",
                t(st.header.ts_ns),
                st.header.tgid,
                comm(&st.header.comm),
                human_ns(st.wait_ns),
                st.header.cpu,
                st.villain_tgid,
                comm(&st.villain_comm)
            );
        }
        let mut villains: std::collections::BTreeMap<(u32, String), (u64, u64)> =
            std::collections::BTreeMap::new();
        for st in &r.stalls {
            let v = villains
                .entry((st.villain_tgid, comm(&st.villain_comm)))
                .or_default();
            v.0 += 1;
            v.1 += st.wait_ns;
        }
        let mut v: Vec<_> = villains.into_iter().collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.1.1));
        let _ = writeln!(
            o,
            "  Who held the CPU meanwhile (villains, by delay caused):"
        );
        for ((pid, c), (n, ns)) in v.iter().take(5) {
            let _ = writeln!(
                o,
                "    pid {pid:<7} {c:<16} {n} stalls, {} of waiting caused",
                human_ns(*ns)
            );
        }
    }

    if let Some(s) = &r.last {
        saturation_tcp(&mut o, s);
    }

    let _ = writeln!(o, "\n3. CHURN");
    let _ = writeln!(
        o,
        "  Connection lifetimes: {} closed, p50 {}, p99 {}, max {}",
        r.lifetimes.count,
        human_ns(r.lifetimes.quantile(0.5)),
        human_ns(r.lifetimes.quantile(0.99)),
        human_ns(r.lifetimes.max)
    );
    let secs = (r.last_ts.saturating_sub(first) as f64 / 1e9).max(1e-9);
    let _ = writeln!(o, "  Top churners (connections opened):");
    for p in top_by(rows, 5, |c| c.active_opens + c.passive_opens) {
        let _ = writeln!(
            o,
            "    pid {:<7} {:<16} opened {} (active {}, passive {}), {:.1}/s; closed {}; TIME_WAIT created {}",
            p.pid,
            p.comm,
            p.totals.active_opens + p.totals.passive_opens,
            p.totals.active_opens,
            p.totals.passive_opens,
            (p.totals.active_opens + p.totals.passive_opens) as f64 / secs,
            p.totals.closes,
            p.totals.time_waits
        );
    }
    // A peak of 0 has no moment.
    let peak = |(ts, n): (u64, u64)| {
        if n == 0 {
            "0".to_string()
        } else {
            format!("{n} at {}", t(ts))
        }
    };
    let _ = writeln!(o, "  TIME_WAIT peak: {}", peak(r.tw_peak));
    let _ = writeln!(o, "  CLOSE_WAIT peak: {}", peak(r.cw_peak));
    if let Some(s) = &r.last
        && !s.leaks.is_empty()
    {
        let _ = writeln!(o, "  CLOSE_WAIT leaks at the end: {}", s.leaks.len());
        for l in s.leaks.iter().take(5) {
            let who = l
                .pid
                .map(|p| format!("pid {p} ({})", l.comm.clone().unwrap_or_default()))
                .unwrap_or("owner unknown".into());
            let _ = writeln!(
                o,
                "    {who} {} <- {} for {}",
                l.local,
                l.remote,
                human_ns(l.age_ns)
            );
        }
    }
    match &r.pressure_peak {
        Some((ts, p)) => {
            let _ = writeln!(
                o,
                "  Ephemeral ports, worst destination: {} -> {} {} used ({:.1} % of {}) at {}",
                p.destination.local,
                p.destination.remote,
                p.ports_used,
                p.ratio * 100.0,
                p.range_size,
                t(*ts)
            );
        }
        None => {
            let _ = writeln!(o, "  Ephemeral ports: no outgoing connections seen");
        }
    }
    if !r.hints.is_empty() {
        let _ = writeln!(o, "  Hints:");
        for h in &r.hints {
            let _ = writeln!(o, "    {h}");
        }
    }
    connections_text(&mut o, r.last.as_ref(), &t);
    o
}

/// Where TCP load piled up: listen queues that overflowed, and connects
/// that took long (a lost SYN costs a second).
fn saturation_tcp(o: &mut String, s: &TcpSnapshot) {
    let overflowed: Vec<_> = s.listen.iter().filter(|l| l.drops > 0).collect();
    if overflowed.is_empty() {
        let _ = writeln!(
            o,
            "  Listen queues: no connection attempt dropped at a listener"
        );
    } else {
        let _ = writeln!(
            o,
            "  Listen queues: {} listeners dropped connection attempts",
            overflowed.len()
        );
        for l in overflowed.iter().take(5) {
            let who = match (l.pid, &l.comm) {
                (Some(p), Some(c)) => format!("pid {p:<7} {c:<16}"),
                _ => format!("{:<24}", "owner unknown"),
            };
            let q = |v: Option<u32>| v.map_or("-".to_string(), |v| v.to_string());
            let _ = writeln!(
                o,
                "    {who} {:<22} {} overflows, {} drops; accept queue {}/{} at the last drop, highest {}",
                l.local.to_string(),
                l.overflows,
                l.drops,
                q(l.queue),
                q(l.backlog),
                l.queue_max
            );
        }
    }
    let all = &s.connect_all.0;
    let (Some(p50), Some(p99)) = (all.quantile(0.5), all.quantile(0.99)) else {
        let _ = writeln!(o, "  Connect time: no outgoing connect completed");
        return;
    };
    let max = s
        .processes
        .iter()
        .map(|p| p.connect_max_ns)
        .max()
        .unwrap_or(0);
    let _ = writeln!(
        o,
        "  Connect time: {} connects, p50 {}, p99 {}, max {}",
        all.total(),
        human_ns(p50),
        human_ns(p99),
        human_ns(max)
    );
    for d in s.connect_latency.iter().take(5) {
        let _ = writeln!(
            o,
            "    -> {:<24} {} connects, p50 {}, p99 {}, max {}; {} took a second or more",
            d.remote.to_string(),
            d.connects,
            human_ns(d.p50_ns),
            human_ns(d.p99_ns),
            human_ns(d.max_ns),
            d.slow
        );
    }
}

/// Section 4: finished connections, from their close summaries.
fn connections_text(o: &mut String, s: Option<&TcpSnapshot>, t: &dyn Fn(u64) -> String) {
    let _ = writeln!(o, "\n4. CONNECTIONS");
    let Some(s) = s.filter(|s| s.closed > 0) else {
        let _ = writeln!(
            o,
            "  No connection summaries recorded (recordings keep them with --events ...,close, the default)."
        );
        return;
    };
    let dur = |c: &Closed| c.duration_ns.map_or("?".to_string(), human_ns);
    let line = |c: &Closed| {
        format!(
            "{}  pid {:<7} {:<16} {} -> {}  {} tx {} rx {} retrans {} rtt {} closed by {}",
            t(c.ts_ns),
            c.pid,
            c.comm,
            c.local,
            c.remote,
            dur(c),
            human_bytes(c.bytes_acked),
            human_bytes(c.bytes_received),
            c.total_retrans,
            human_us(c.srtt_us),
            c.closed_by,
        )
    };
    let _ = writeln!(o, "  Connections closed with a summary: {}", s.closed);
    for (title, list) in [
        ("Heaviest (bytes acked + received)", &s.heaviest),
        ("Longest-lived", &s.longest),
        ("Slowest (smoothed RTT at close)", &s.slowest_rtt),
    ] {
        if list.is_empty() {
            continue;
        }
        let _ = writeln!(o, "  {title}:");
        for c in list.iter().take(5) {
            let _ = writeln!(o, "    {}", line(c));
        }
    }
    if !s.close_rtt.is_empty() {
        let _ = writeln!(
            o,
            "  RTT by destination (median smoothed RTT at close), highest first:"
        );
        for d in s.close_rtt.iter().take(5) {
            let _ = writeln!(
                o,
                "    {:<28} {} closed, rtt p50 {} max {}, tx {} rx {}, retrans {}",
                d.remote.to_string(),
                d.closed,
                human_us(d.rtt_p50_us),
                human_us(d.rtt_max_us),
                human_bytes(d.bytes_acked),
                human_bytes(d.bytes_received),
                d.retrans,
            );
        }
    }
}

/// The packets the kernel dropped (by its reasons): for which process and
/// remote end, and with no socket, host-wide.
fn kernel_drops_text(o: &mut String, s: &TcpSnapshot) {
    let owned: u64 = s.socket_drops.iter().map(|d| d.count).sum();
    let unowned: u64 = s.unowned_drops.iter().map(|d| d.count).sum();
    if owned == 0 && unowned == 0 {
        return;
    }
    let _ = writeln!(
        o,
        "  Kernel drops: {owned} packets dropped for TCP sockets, {unowned} TCP packets with no socket"
    );
    let mut rows: Vec<_> = s.socket_drops.iter().collect();
    rows.sort_by_key(|b| std::cmp::Reverse(b.count));
    for d in rows.iter().take(5) {
        let _ = writeln!(
            o,
            "    pid {:<7} {:<16} from {:<24} {:<24} {}",
            d.pid.map_or("-".to_string(), |p| p.to_string()),
            d.comm.as_deref().unwrap_or("-"),
            d.remote.to_string(),
            d.reason,
            d.count
        );
    }
    let mut rows: Vec<_> = s.unowned_drops.iter().collect();
    rows.sort_by_key(|b| std::cmp::Reverse(b.count));
    for d in rows.iter().take(5) {
        let _ = writeln!(o, "    no socket {:<38} {:<24} {}", "", d.reason, d.count);
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One line of a chart: name, colour, (x, y) points.
pub type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// A line chart as inline SVG: x is time, one polyline per series,
/// vertical markers (OOM kills) in red.
pub fn svg_chart(
    title: &str,
    series: &[Series<'_>],
    markers: &[(f64, String)],
    x0: f64,
    x1: f64,
) -> String {
    let (w, h, pad) = (760.0, 220.0, 40.0);
    let ymax = series
        .iter()
        .flat_map(|(_, _, v)| v.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        .max(1.0);
    let span = (x1 - x0).max(1e-9);
    let sx = |x: f64| pad + (x - x0) / span * (w - 2.0 * pad);
    let sy = |y: f64| h - pad - y / ymax * (h - 2.0 * pad);
    let mut s = format!(
        "<figure><figcaption>{}</figcaption><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">",
        esc(title)
    );
    let _ = write!(
        s,
        "<rect x=\"{pad}\" y=\"{pad}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#ccc\"/>",
        w - 2.0 * pad,
        h - 2.0 * pad
    );
    let _ = write!(
        s,
        "<text x=\"2\" y=\"{}\" font-size=\"10\">{:.0}</text>",
        pad + 4.0,
        ymax
    );
    let _ = write!(
        s,
        "<text x=\"2\" y=\"{}\" font-size=\"10\">0</text>",
        h - pad
    );
    let _ = write!(
        s,
        "<text x=\"{pad}\" y=\"{}\" font-size=\"10\">+0s</text>",
        h - pad + 14.0
    );
    let _ = write!(
        s,
        "<text x=\"{}\" y=\"{}\" font-size=\"10\">+{:.0}s</text>",
        w - pad - 30.0,
        h - pad + 14.0,
        span
    );
    for (x, label) in markers {
        let _ = write!(
            s,
            "<line class=\"oom\" x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{pad}\" y2=\"{1}\" stroke=\"red\"><title>{2}</title></line>",
            sx(*x),
            h - pad,
            esc(label)
        );
    }
    for (i, (name, color, pts)) in series.iter().enumerate() {
        let path: Vec<String> = pts
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let _ = write!(
            s,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>",
            path.join(" ")
        );
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" font-size=\"11\" fill=\"{color}\">{}</text>",
            pad + 10.0 + i as f64 * 130.0,
            pad - 8.0,
            esc(name)
        );
    }
    s.push_str("</svg></figure>\n");
    s
}

/// A histogram of connection lifetimes (log2 buckets) as inline SVG bars.
pub fn svg_histogram(title: &str, hist: &Log2Hist) -> String {
    let (w, h, pad) = (760.0, 200.0, 40.0);
    let n = hist.buckets.len().max(1);
    let max = hist.buckets.iter().copied().max().unwrap_or(0).max(1) as f64;
    let bw = (w - 2.0 * pad) / n as f64;
    let mut s = format!(
        "<figure><figcaption>{}</figcaption><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\">",
        esc(title)
    );
    for (i, &c) in hist.buckets.iter().enumerate() {
        let bh = c as f64 / max * (h - 2.0 * pad);
        let _ = write!(
            s,
            "<rect class=\"bar\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#4a7\"><title>{} - {}: {c}</title></rect>",
            pad + i as f64 * bw,
            h - pad - bh,
            (bw - 1.0).max(1.0),
            bh,
            human_ns(1u64 << i),
            human_ns((1u64 << (i + 1).min(63)) - 1)
        );
    }
    s.push_str("</svg></figure>\n");
    s
}

/// The report as one self-contained HTML page. Pure.
pub fn render_html(r: &Review, file: &str) -> String {
    let first = r.first_ts.unwrap_or(r.header.started_ts_ns);
    let x = |ts: u64| ts.saturating_sub(first) as f64 / 1e9;
    let x1 = x(r.last_ts).max(1.0);
    let clock = r.clock();
    let markers: Vec<(f64, String)> = r
        .oom
        .iter()
        .map(|k| (x(k.header.ts_ns), oom_text(k, r.context_of(k), &clock)))
        .collect();
    let series = |f: &dyn Fn(&Point) -> f64| -> Vec<(f64, f64)> {
        r.timeline.iter().map(|p| (x(p.ts_ns), f(p))).collect()
    };
    let mut body = String::new();
    body.push_str(&svg_chart(
        "Connection churn (per second)",
        &[
            ("opens/s", "#1f77b4", series(&|p| p.opens_per_s)),
            ("closes/s", "#ff7f0e", series(&|p| p.closes_per_s)),
        ],
        &markers,
        0.0,
        x1,
    ));
    body.push_str(&svg_chart(
        "Sockets by state",
        &[
            ("ESTABLISHED", "#2ca02c", series(&|p| p.established as f64)),
            ("TIME_WAIT", "#9467bd", series(&|p| p.time_wait as f64)),
            ("CLOSE_WAIT", "#d62728", series(&|p| p.close_wait as f64)),
        ],
        &markers,
        0.0,
        x1,
    ));
    body.push_str(&svg_chart(
        "Errors (per second)",
        &[
            ("resets/s", "#8c564b", series(&|p| p.resets_per_s)),
            ("retransmits/s", "#e377c2", series(&|p| p.retrans_per_s)),
        ],
        &markers,
        0.0,
        x1,
    ));
    body.push_str(&svg_histogram(
        "Connection lifetimes (log2 buckets)",
        &r.lifetimes,
    ));
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>diag report: {t}</title>\n<style>body{{font-family:sans-serif;max-width:900px;margin:auto}}pre{{background:#f6f6f6;padding:8px;overflow-x:auto}}figcaption{{font-weight:bold}}</style></head>\n<body><h1>diag report</h1>\n<p>Red vertical lines mark OOM kills; hover for details.</p>\n{body}<h2>Review</h2><pre>{text}</pre></body></html>\n",
        t = esc(file),
        text = esc(&render_text(r, file)),
    )
}

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

    fn review() -> Review {
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

    #[test]
    fn html_has_plots() {
        let html = render_html(&review(), "x<y>.diag");
        assert!(html.starts_with("<!doctype html>"));
        assert_eq!(html.matches("<svg").count(), 4);
        assert!(html.contains("<polyline") && html.contains("class=\"bar\""));
        assert!(html.contains("x&lt;y&gt;.diag"));
        assert!(!html.contains("<script"));
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
