//! `diag conns`: per-process TCP analytics, one snapshot per interval.

use std::{
    collections::HashMap,
    fmt::Write as _,
    io::{self, IsTerminal, Write},
};

use serde::Serialize;

use crate::placement::Placement;

use crate::{
    aggregate::tcp::{Counters, ProcRow, Rates, StateCounts, TcpAggregate, TcpSnapshot},
    bus::Health,
    bus::{End, Msg},
    cli::{ConnsGroup, ConnsSort, ConnsView},
    clock::WallClock,
    sink::{Flow, Sink},
    view::{
        fmt::{human_bytes, human_ns, human_us},
        out::{Output, flow_of},
    },
};

/// Order rows by `key`, biggest first (pid: ascending).
pub fn sort_rows(rows: &mut [ProcRow], key: ConnsSort) {
    let k = |r: &ProcRow| -> f64 {
        match key {
            ConnsSort::Churn => r.rates.active_opens + r.rates.passive_opens + r.rates.closes,
            ConnsSort::Opens => r.rates.active_opens + r.rates.passive_opens,
            ConnsSort::Closes => r.rates.closes,
            ConnsSort::Estab => r.states.established as f64,
            ConnsSort::TimeWait => r.states.time_wait as f64,
            ConnsSort::CloseWait => r.states.close_wait as f64,
            ConnsSort::Resets => (r.totals.resets_sent + r.totals.resets_received) as f64,
            ConnsSort::Retrans => r.totals.retransmits as f64,
            ConnsSort::Failed => r.totals.failed_connects as f64,
            ConnsSort::Pid => -(r.pid as f64),
        }
    };
    rows.sort_by(|a, b| k(b).total_cmp(&k(a)).then(a.pid.cmp(&b.pid)));
}

/// Which processes to show.
#[derive(Debug, Clone, Default)]
pub struct RowFilter {
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
    /// cgroup path prefixes or container id prefixes; empty: all.
    pub cgroups: Vec<String>,
}

impl RowFilter {
    pub fn keeps(&self, pid: Option<u32>, comm: Option<&str>) -> bool {
        (self.pids.is_empty() || pid.is_some_and(|p| self.pids.contains(&p)))
            && (self.comms.is_empty() || comm.is_some_and(|c| self.comms.iter().any(|x| x == c)))
    }

    /// A row's cgroup path or container id is one of the wanted ones.
    pub fn keeps_cgroup(&self, cgroup: Option<&str>, container: Option<&str>) -> bool {
        crate::aggregate::filter::cgroup_matches(&self.cgroups, cgroup, container)
    }
}

/// Apply the filter, sort and cut to `top` rows (0: all).
pub fn select(snap: &mut TcpSnapshot, filter: &RowFilter, sort: ConnsSort, top: usize) {
    snap.processes.retain(|r| {
        filter.keeps(Some(r.pid), Some(&r.comm))
            && filter.keeps_cgroup(r.cgroup.as_deref(), r.container.as_deref())
    });
    let kept: std::collections::HashSet<u32> = snap.processes.iter().map(|r| r.pid).collect();
    snap.leaks.retain(|l| {
        filter.keeps(l.pid, l.comm.as_deref())
            && (filter.cgroups.is_empty() || l.pid.is_some_and(|p| kept.contains(&p)))
    });
    snap.listen.retain(|l| {
        filter.keeps(l.pid, l.comm.as_deref())
            && (filter.cgroups.is_empty() || l.pid.is_some_and(|p| kept.contains(&p)))
    });
    snap.connect_failures.retain(|f| {
        filter.keeps(Some(f.pid), Some(&f.comm))
            && (filter.cgroups.is_empty() || kept.contains(&f.pid))
    });
    snap.socket_drops.retain(|l| {
        filter.keeps(l.pid, l.comm.as_deref())
            && (filter.cgroups.is_empty() || l.pid.is_some_and(|p| kept.contains(&p)))
    });
    sort_rows(&mut snap.processes, sort);
    if top > 0 {
        snap.processes.truncate(top);
    }
}

/// One container's (or cgroup's) processes summed, for `--group`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GroupRow {
    /// The container id, or the cgroup path ("-": unknown).
    pub group: String,
    /// The cgroup path of its first process.
    pub cgroup: Option<String>,
    pub processes: usize,
    pub rates: Rates,
    pub totals: Counters,
    pub states: StateCounts,
    pub leaks: u64,
}

/// Sum rows per container (`ConnsGroup::Container`; processes outside any
/// container per cgroup) or per cgroup, busiest (opens and closes per
/// second) first.
pub fn group_rows(rows: &[ProcRow], by: ConnsGroup) -> Vec<GroupRow> {
    let mut groups: Vec<GroupRow> = Vec::new();
    for r in rows {
        let key = match (by, &r.container, &r.cgroup) {
            (ConnsGroup::Container, Some(id), _) => id.clone(),
            (_, _, Some(cg)) => cg.clone(),
            _ => "-".to_string(),
        };
        let g = match groups.iter().position(|g| g.group == key) {
            Some(i) => &mut groups[i],
            None => {
                groups.push(GroupRow {
                    group: key,
                    cgroup: r.cgroup.clone(),
                    ..Default::default()
                });
                groups.last_mut().expect("pushed")
            }
        };
        g.processes += 1;
        g.rates += &r.rates;
        g.totals += &r.totals;
        g.states += &r.states;
        g.leaks += r.leaks;
    }
    let churn = |g: &GroupRow| g.rates.active_opens + g.rates.passive_opens + g.rates.closes;
    groups.sort_by(|a, b| churn(b).total_cmp(&churn(a)).then(a.group.cmp(&b.group)));
    groups
}

fn rate(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v < 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// The snapshot as text tables. Pure.
pub fn render_text(snap: &TcpSnapshot, health: &Health, clock: &WallClock) -> String {
    let mut o = String::new();
    let s = &snap.states;
    let r = &snap.rates;
    let _ = writeln!(
        o,
        "diag conns  {}  interval {:.2}s  dropped {}  reconciled {}x ({} corrections, {} owners)",
        clock.wall(snap.ts_ns).format("%H:%M:%S"),
        snap.interval_s,
        health.ringbuf_full,
        snap.corrections.runs,
        snap.corrections.state_total(),
        snap.corrections.owners_fixed,
    );
    let _ = writeln!(
        o,
        "TCP  opens {}/s (active {}, passive {})  closes {}/s  failed {}/s  resets in {}/s out {}/s  retrans {}/s",
        rate(r.active_opens + r.passive_opens),
        rate(r.active_opens),
        rate(r.passive_opens),
        rate(r.closes),
        rate(r.failed_connects),
        rate(r.resets_received),
        rate(r.resets_sent),
        rate(r.retransmits),
    );
    let _ = writeln!(
        o,
        "     ESTAB {}  SYN_SENT {}  SYN_RECV {}  FIN_WAIT {}  CLOSE_WAIT {}  LAST_ACK {}  TIME_WAIT {}  LISTEN {}",
        s.established,
        s.syn_sent,
        s.syn_recv,
        s.fin_wait1 + s.fin_wait2 + s.closing,
        s.close_wait,
        s.last_ack,
        s.time_wait,
        s.listen
    );
    o.push('\n');
    let _ = writeln!(
        o,
        "{:<8} {:<16} {:>7} {:>7} {:>7} {:>6} {:>6} {:>5} {:>4} {:>9} {:>9} {:>9} {:>6} {:>6} {:>7} {:>6}  CGROUP",
        "PID",
        "COMM",
        "CONN/s",
        "ACC/s",
        "CLOSE/s",
        "ESTAB",
        "TW",
        "CW",
        "LEAK",
        "LIFE-p50",
        "LIFE-p99",
        "LIFE-max",
        "RST-IN",
        "RSTOUT",
        "RETRANS",
        "FAILED",
    );
    for p in &snap.processes {
        let _ = writeln!(
            o,
            "{:<8} {:<16} {:>7} {:>7} {:>7} {:>6} {:>6} {:>5} {:>4} {:>9} {:>9} {:>9} {:>6} {:>6} {:>7} {:>6}  {}",
            p.pid,
            p.comm,
            rate(p.rates.active_opens),
            rate(p.rates.passive_opens),
            rate(p.rates.closes),
            p.states.established,
            p.states.time_wait,
            p.states.close_wait,
            if p.leaks > 0 {
                format!("{}!", p.leaks)
            } else {
                "0".into()
            },
            human_ns(p.lifetime_p50_ns),
            human_ns(p.lifetime_p99_ns),
            human_ns(p.lifetime_max_ns),
            p.totals.resets_received,
            p.totals.resets_sent,
            p.totals.retransmits,
            p.totals.failed_connects,
            p.cgroup.as_deref().unwrap_or("-"),
        );
    }
    if snap.processes.is_empty() {
        o.push_str("(no TCP activity seen yet)\n");
    }
    if !snap.leaks.is_empty() {
        let _ = writeln!(o, "\nCLOSE_WAIT leaks ({}):", snap.leaks.len());
        for l in snap.leaks.iter().take(10) {
            let who = match (l.pid, &l.comm) {
                (Some(p), Some(c)) => format!("pid {p} ({c})"),
                _ => "owner unknown".into(),
            };
            let _ = writeln!(
                o,
                "  {who:<28} {} <- {}  in CLOSE_WAIT for {}{}",
                l.local,
                l.remote,
                if l.age_is_lower_bound {
                    "at least "
                } else {
                    ""
                },
                human_ns(l.age_ns)
            );
        }
        if snap.leaks.len() > 10 {
            let _ = writeln!(o, "  ... and {} more", snap.leaks.len() - 10);
        }
    }
    if let Some(first) = snap.pressure.first() {
        let _ = writeln!(
            o,
            "\nEphemeral ports per destination (range of {} ports):",
            first.range_size
        );
        for p in snap.pressure.iter().take(5) {
            let eta = match p.exhausted_in_s {
                Some(s) => format!("  full in {}", human_ns((s * 1e9) as u64)),
                None => String::new(),
            };
            let _ = writeln!(
                o,
                "  {} -> {:<24} {:>6} used ({:.1} %), {} in TIME_WAIT, {:+.0}/s{eta}{}",
                p.destination.local,
                p.destination.remote.to_string(),
                p.ports_used,
                p.ratio * 100.0,
                p.in_time_wait,
                p.growth_per_s,
                if p.warning { "  WARNING" } else { "" }
            );
        }
    }
    if !snap.listen.is_empty() {
        let _ = writeln!(
            o,
            "\nListen queues (accept queue as ss -lnt shows it, high-water mark in the interval, attempts dropped at a full queue):"
        );
        let _ = writeln!(
            o,
            "  {:<28} {:>8} {:<16} {:>13} {:>7} {:>8} {:>9} {:>10} {:>9}",
            "LISTENER",
            "PID",
            "COMM",
            "QUEUE/BACKLOG",
            "HIGH",
            "HIGHEST",
            "OPENS",
            "OVERFLOWS",
            "LAST"
        );
        for l in snap.listen.iter().take(10) {
            let n = |v: Option<u32>| v.map_or("?".to_string(), |v| v.to_string());
            let _ = writeln!(
                o,
                "  {:<28} {:>8} {:<16} {:>13} {:>7} {:>8} {:>9} {:>10} {:>9}",
                l.local.to_string(),
                l.pid.map_or("-".to_string(), |p| p.to_string()),
                l.comm.as_deref().unwrap_or("-"),
                format!("{}/{}", n(l.queue), n(l.backlog)),
                l.queue_high_interval,
                l.queue_max,
                l.opens_interval,
                l.overflows,
                l.overflows_interval,
            );
        }
        if snap.listen.len() > 10 {
            let _ = writeln!(o, "  ... and {} more", snap.listen.len() - 10);
        }
    }
    if !snap.socket_drops.is_empty() || !snap.unowned_drops.is_empty() {
        let _ = writeln!(
            o,
            "\nKernel drops (packets the kernel dropped, by its reason):"
        );
    }
    if !snap.socket_drops.is_empty() {
        let _ = writeln!(
            o,
            "  {:>8} {:<16} {:<28} {:<24} {:>9} {:>9}",
            "PID", "COMM", "REMOTE", "REASON", "COUNT", "LAST"
        );
        for d in snap.socket_drops.iter().take(10) {
            let _ = writeln!(
                o,
                "  {:>8} {:<16} {:<28} {:<24} {:>9} {:>9}",
                d.pid.map_or("-".to_string(), |p| p.to_string()),
                d.comm.as_deref().unwrap_or("-"),
                d.remote.to_string(),
                d.reason,
                d.count,
                d.count_interval,
            );
        }
        if snap.socket_drops.len() > 10 {
            let _ = writeln!(o, "  ... and {} more", snap.socket_drops.len() - 10);
        }
    }
    if !snap.unowned_drops.is_empty() {
        let _ = writeln!(o, "  No socket (host-wide):");
        for d in snap.unowned_drops.iter().take(10) {
            let _ = writeln!(
                o,
                "  {:>8} {:<16} {:<28} {:<24} {:>9} {:>9}",
                "-", "-", "-", d.reason, d.count, d.count_interval,
            );
        }
    }
    let errs: Vec<_> = snap.remote_errors.iter().take(5).collect();
    if !errs.is_empty() {
        let _ = writeln!(o, "\nErrors by remote endpoint:");
        for (addr, e) in errs {
            let _ = writeln!(
                o,
                "  {:<28} resets in {}  out {}  retrans {}  failed connects {}",
                addr.to_string(),
                e.resets_received,
                e.resets_sent,
                e.retransmits,
                e.failed_connects
            );
        }
    }
    let slow: Vec<_> = snap.connect_latency.iter().take(5).collect();
    if !slow.is_empty() {
        let _ = writeln!(
            o,
            "\nConnect time by destination (SYN sent to ESTABLISHED), slowest first:"
        );
        for d in slow {
            let _ = writeln!(
                o,
                "  {:<28} {:>6} connects  p50 {:>9}  p99 {:>9}  max {:>9}{}",
                d.remote.to_string(),
                d.connects,
                human_ns(d.p50_ns),
                human_ns(d.p99_ns),
                human_ns(d.max_ns),
                if d.slow > 0 {
                    format!("  {} over 0.9 s", d.slow)
                } else {
                    String::new()
                }
            );
        }
    }
    let rtt: Vec<_> = snap.close_rtt.iter().take(5).collect();
    if !rtt.is_empty() {
        let _ = writeln!(
            o,
            "\nClosed connections by destination (smoothed RTT at close, median of the last {}), highest first:",
            crate::aggregate::close::RTT_SAMPLES
        );
        for d in rtt {
            let _ = writeln!(
                o,
                "  {:<28} {:>6} closed  rtt p50 {:>9}  max {:>9}  tx {:>9}  rx {:>9}  retrans {}",
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
    let mut heavy: Vec<&ProcRow> = snap
        .processes
        .iter()
        .filter(|p| p.totals.bytes_acked + p.totals.bytes_received > 0)
        .collect();
    if !heavy.is_empty() {
        heavy.sort_by_key(|p| {
            std::cmp::Reverse(p.totals.bytes_acked.saturating_add(p.totals.bytes_received))
        });
        let _ = writeln!(o, "\nBytes of closed connections by process, most first:");
        for p in heavy.iter().take(5) {
            let _ = writeln!(
                o,
                "  pid {:<8} {:<16} tx {:>9}  rx {:>9}",
                p.pid,
                p.comm,
                human_bytes(p.totals.bytes_acked),
                human_bytes(p.totals.bytes_received),
            );
        }
    }
    if !snap.connect_failures.is_empty() {
        let _ = writeln!(
            o,
            "\nFailed connects (SYN_SENT -> CLOSE) by process, destination and error:"
        );
        let _ = writeln!(
            o,
            "  {:>8} {:<16} {:<28} {:<14} {:>8} {:>9}",
            "PID", "COMM", "DESTINATION", "ERROR", "COUNT", "INTERVAL"
        );
        for f in snap.connect_failures.iter().take(10) {
            let _ = writeln!(
                o,
                "  {:>8} {:<16} {:<28} {:<14} {:>8} {:>9}",
                f.pid,
                f.comm,
                f.remote.to_string(),
                f.error,
                f.count,
                f.interval
            );
        }
        if snap.connect_failures.len() > 10 {
            let _ = writeln!(o, "  ... and {} more", snap.connect_failures.len() - 10);
        }
    }
    if snap.kernel_resets_sent > 0 {
        let _ = writeln!(
            o,
            "Resets sent by the kernel for no socket (closed ports): {}",
            snap.kernel_resets_sent
        );
    }
    if !snap.hints.is_empty() {
        let _ = writeln!(o, "\nHints:");
        for h in &snap.hints {
            let _ = writeln!(o, "  {h}");
        }
    }
    if let Some(l) = health.losses() {
        let _ = writeln!(o, "\nINCOMPLETE: {l}");
    }
    o
}

#[derive(Serialize)]
struct JsonSnapshot<'a> {
    time: String,
    #[serde(rename = "final")]
    last: bool,
    health: JsonHealth,
    /// With `--group`: the rows summed per container or cgroup.
    #[serde(skip_serializing_if = "Option::is_none")]
    groups: Option<&'a [GroupRow]>,
    #[serde(flatten)]
    snapshot: &'a TcpSnapshot,
}

/// The `--group` table. Pure.
pub fn render_groups(groups: &[GroupRow], by: Option<ConnsGroup>) -> String {
    let mut o = String::new();
    let title = match by {
        Some(ConnsGroup::Container) => "CONTAINER (or CGROUP)",
        _ => "CGROUP",
    };
    let _ = writeln!(
        o,
        "{:<40} {:>5} {:>7} {:>7} {:>7} {:>6} {:>6} {:>5} {:>4} {:>6} {:>6} {:>7} {:>6}",
        title,
        "PROCS",
        "CONN/s",
        "ACC/s",
        "CLOSE/s",
        "ESTAB",
        "TW",
        "CW",
        "LEAK",
        "RST-IN",
        "RSTOUT",
        "RETRANS",
        "FAILED",
    );
    for g in groups {
        let _ = writeln!(
            o,
            "{:<40} {:>5} {:>7} {:>7} {:>7} {:>6} {:>6} {:>5} {:>4} {:>6} {:>6} {:>7} {:>6}",
            g.group,
            g.processes,
            rate(g.rates.active_opens),
            rate(g.rates.passive_opens),
            rate(g.rates.closes),
            g.states.established,
            g.states.time_wait,
            g.states.close_wait,
            g.leaks,
            g.totals.resets_received,
            g.totals.resets_sent,
            g.totals.retransmits,
            g.totals.failed_connects,
        );
    }
    o
}

#[derive(Serialize)]
struct JsonHealth {
    events: u64,
    dropped: u64,
    sock_map_full: u64,
    decode_errors: u64,
}

pub fn render_json(
    snap: &TcpSnapshot,
    groups: Option<&[GroupRow]>,
    health: &Health,
    clock: &WallClock,
    last: bool,
) -> String {
    serde_json::to_string(&JsonSnapshot {
        groups,
        time: clock
            .wall(snap.ts_ns)
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        last,
        health: JsonHealth {
            events: health.received,
            dropped: health.ringbuf_full,
            sock_map_full: health.sock_map_full,
            decode_errors: health.decode_errors,
        },
        snapshot: snap,
    })
    .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// How a sink learns the time: from a wall timer (live) or from the
/// events themselves (replay, at any speed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timebase {
    Live,
    Events,
}

/// The `conns` sink: aggregates what arrives on the bus and prints
/// snapshots. Shared by live and replay.
pub struct ConnsSink {
    view: ConnsView,
    pub agg: TcpAggregate,
    clock: WallClock,
    timebase: Timebase,
    interval_ns: u64,
    next_due: Option<u64>,
    last_ts: u64,
    printed: u64,
    limit: u64,
    pub health: Health,
    /// Where each process runs (cgroup, container, network namespace),
    /// keyed by pid, comm and life, so a reused pid is looked up afresh.
    /// Live only.
    cgroups: Option<HashMap<(u32, String, u32), Placement>>,
    /// The latest placement of each pid, as the live source said.
    placed: HashMap<u32, Placement>,
    clear: bool,
    /// `replay --at`: the one instant to show (see [`ConnsSink::at`]).
    at: Option<At>,
}

/// The state at one instant of a replay: the interval before it, and the
/// run-queue stalls in that interval.
#[derive(Debug, Clone, Default)]
pub struct At {
    pub ts: u64,
    /// The rates' interval has begun (at `ts` minus one interval).
    begun: bool,
    pub stalls: Vec<diag_common::sched::StallEvent>,
    /// Stalls in the interval past the ones kept.
    pub stalls_more: u64,
}

/// Stalls kept for `--at` (the rest are counted).
const AT_STALLS: usize = 4096;

impl ConnsSink {
    pub fn new(
        view: ConnsView,
        port_range: Option<(u16, u16)>,
        clock: WallClock,
        timebase: Timebase,
    ) -> Self {
        let config = crate::aggregate::tcp::TcpConfig::from_args(&view.tcp, port_range);
        let limit = match (view.count, view.watch, timebase) {
            (Some(n), _, _) => n,
            (None, true, _) => u64::MAX,
            (None, false, Timebase::Live) => 1,
            // A replay without --watch prints one snapshot, at the end.
            (None, false, Timebase::Events) => 0,
        };
        ConnsSink {
            interval_ns: view.interval.as_nanos() as u64,
            clear: view.watch
                && !view.json
                && timebase == Timebase::Live
                && io::stdout().is_terminal(),
            cgroups: (timebase == Timebase::Live).then(HashMap::new),
            placed: HashMap::new(),
            agg: TcpAggregate::new(config),
            view,
            clock,
            timebase,
            next_due: None,
            last_ts: 0,
            printed: 0,
            limit,
            health: Health::default(),
            at: None,
        }
    }

    /// Show only the state at `ts` (event time): one snapshot there, with
    /// the rates, hints and stalls of the interval before it. The source
    /// must stop at `ts` (a replay window ending there).
    pub fn at(mut self, ts: u64) -> Self {
        self.limit = 0;
        self.at = Some(At {
            ts,
            ..At::default()
        });
        self
    }

    /// The interval before `--at` begins at `begin`: rates count from here.
    fn begin_at(&mut self, ts: u64) {
        if let Some(at) = &mut self.at
            && !at.begun
        {
            let begin = at.ts.saturating_sub(self.interval_ns);
            if ts >= begin {
                at.begun = true;
                self.agg.advance(begin);
            }
        }
    }

    /// All snapshots asked for are printed.
    pub fn done(&self) -> bool {
        self.limit > 0 && self.printed >= self.limit
    }

    fn print(&mut self, mut snap: TcpSnapshot, last: bool, out: &mut impl Write) -> io::Result<()> {
        if let Some(cache) = &mut self.cgroups {
            for r in &mut snap.processes {
                // Read while the process ran (the source reads a process
                // as its first events are drained); an exited process
                // first seen now stays unknown (its pid may be another's).
                let p = cache
                    .entry((r.pid, r.comm.clone(), r.life))
                    .or_insert_with(|| match self.placed.get(&r.pid) {
                        Some(p) if !r.exited => p.clone(),
                        _ => Placement::default(),
                    });
                r.cgroup = p.cgroup.clone();
                r.container = p.container.clone();
                r.netns = p.netns;
            }
        }
        select(
            &mut snap,
            &RowFilter {
                pids: self.view.pid.clone(),
                comms: self.view.comm.clone(),
                cgroups: self.view.cgroup.clone(),
            },
            self.view.sort,
            self.view.top,
        );
        let groups = self.view.group.map(|by| group_rows(&snap.processes, by));
        let text = if self.view.json {
            render_json(&snap, groups.as_deref(), &self.health, &self.clock, last) + "\n"
        } else {
            let mut t = render_text(&snap, &self.health, &self.clock);
            if let Some(g) = &groups {
                t = render_groups(g, self.view.group) + "\n" + &t;
            }
            if self.clear {
                format!("\x1b[2J\x1b[H{t}")
            } else {
                t + "\n"
            }
        };
        out.write_all(text.as_bytes())?;
        out.flush()
    }

    /// A snapshot now (live: boot-time ns; replay: event time).
    pub fn tick(&mut self, now_ns: u64, out: &mut impl Write) -> io::Result<()> {
        if self.done() {
            return Ok(());
        }
        let snap = self.agg.snapshot(now_ns);
        self.printed += 1;
        let last = self.done();
        self.print(snap, last, out)
    }

    /// Feed one message from the bus.
    pub fn on_msg(&mut self, msg: &Msg, out: &mut impl Write) -> io::Result<()> {
        match msg {
            Msg::Events(evs) => {
                for e in evs {
                    let ts = e.header().ts_ns;
                    if self.timebase == Timebase::Events {
                        if self.next_due.is_none() {
                            // Events before the first socket table: the
                            // rates start here, as in `diag report`.
                            self.agg.advance(ts);
                        }
                        self.start_clock(ts);
                        // Through a gap of many intervals: the snapshot
                        // due, one at the gap's last boundary, then on (a
                        // forged file can hold many long gaps).
                        for due in catch_up(&mut self.next_due, ts, self.interval_ns) {
                            if self.limit > 0 {
                                self.tick(due, out)?;
                            }
                        }
                    }
                    self.last_ts = self.last_ts.max(ts);
                    self.begin_at(ts);
                    if let (Some(at), diag_common::user::AnyEvent::Stall(st)) = (&mut self.at, e)
                        && at.begun
                    {
                        if at.stalls.len() < AT_STALLS {
                            at.stalls.push(*st);
                        } else {
                            at.stalls_more += 1;
                        }
                    }
                    self.agg.on_event(e);
                    if let diag_common::user::AnyEvent::ProcExit(x) = e {
                        self.placed.remove(&x.header.tgid);
                    }
                }
            }
            Msg::Health(h) => {
                let new = crate::bus::new_losses(&self.health, h);
                if !new.is_empty() {
                    tracing::warn!(
                        "WARNING: {} around {}; counts are incomplete",
                        new.join("; "),
                        self.clock.wall(h.ts_ns).format("%H:%M:%S"),
                    );
                }
                if self.timebase == Timebase::Events {
                    self.last_ts = self.last_ts.max(h.ts_ns);
                }
                self.health = *h;
            }
            Msg::Table { ts_ns, rows } => {
                let ts_ns = *ts_ns;
                if self.agg.on_table(rows, ts_ns).is_none() {
                    // The baseline for the first interval's rates, unless
                    // a replay's events came first (they are).
                    let started = self.timebase == Timebase::Events && self.next_due.is_some();
                    if !started {
                        self.agg.advance(ts_ns);
                    }
                    self.start_clock(ts_ns);
                }
                self.last_ts = self.last_ts.max(ts_ns);
            }
            Msg::Damage(what) => tracing::warn!("{what}"),
            Msg::Placements(new) => self.placed.extend(new.iter().cloned()),
            _ => {}
        }
        Ok(())
    }

    pub fn start_clock(&mut self, ts: u64) {
        if self.next_due.is_none() {
            self.next_due = Some(ts + self.interval_ns);
        }
    }

    /// At the end of the stream: one last snapshot unless all were printed.
    pub fn finish(&mut self, now_ns: u64, out: &mut impl Write) -> io::Result<()> {
        if let Some(ts) = self.at.as_ref().map(|a| a.ts) {
            self.begin_at(ts);
            let snap = self.agg.snapshot(ts);
            if self.view.json {
                // The snapshot's object, with the stalls of the interval.
                let mut line = Vec::new();
                self.print(snap, true, &mut line)?;
                let mut v: serde_json::Value =
                    serde_json::from_slice(&line).map_err(io::Error::other)?;
                if let Some(at) = &self.at {
                    v["stalls"] = stalls_json(at, self.interval_ns, &self.clock);
                }
                out.write_all(format!("{v}\n").as_bytes())?;
                out.flush()?;
            } else {
                self.print(snap, true, out)?;
                if let Some(at) = &self.at {
                    let text = stalls_text(at, self.interval_ns, &self.clock);
                    out.write_all(text.as_bytes())?;
                    out.flush()?;
                }
            }
        } else if !self.done() {
            let now = if self.timebase == Timebase::Events {
                self.last_ts
            } else {
                now_ns
            };
            let snap = self.agg.snapshot(now);
            self.print(snap, true, out)?;
        }
        if let Some(l) = self.health.losses() {
            tracing::warn!("incomplete: {l}");
        }
        Ok(())
    }
}

/// The run-queue stalls of the interval before `--at`: how many, the
/// longest, and who held the CPU.
pub fn stalls_text(at: &At, interval_ns: u64, clock: &WallClock) -> String {
    let comm = crate::text::comm;
    let mut o = String::new();
    let n = at.stalls.len() as u64 + at.stalls_more;
    let _ = writeln!(
        o,
        "Run-queue stalls in the {} before {}: {n}{}",
        human_ns(interval_ns),
        clock.wall(at.ts).format("%H:%M:%S"),
        if n == 0 {
            " (recordings have them with --events ...,stall)"
        } else {
            ""
        }
    );
    let mut worst: Vec<_> = at.stalls.iter().collect();
    worst.sort_by_key(|s| std::cmp::Reverse(s.wait_ns));
    for st in worst.iter().take(5) {
        let _ = writeln!(
            o,
            "  {}  pid {} ({}) waited {} for CPU {}; {} ({}) held it",
            clock.wall(st.header.ts_ns).format("%H:%M:%S%.3f"),
            st.header.tgid,
            comm(&st.header.comm),
            human_ns(st.wait_ns),
            st.header.cpu,
            st.villain_tgid,
            comm(&st.villain_comm)
        );
    }
    if at.stalls_more > 0 {
        let _ = writeln!(o, "  ({} more not kept)", at.stalls_more);
    }
    o
}

/// [`stalls_text`] as JSON: the interval, how many, and the longest
/// (at most 20), longest first.
pub fn stalls_json(at: &At, interval_ns: u64, clock: &WallClock) -> serde_json::Value {
    let comm = crate::text::comm;
    let mut worst: Vec<_> = at.stalls.iter().collect();
    worst.sort_by_key(|s| std::cmp::Reverse(s.wait_ns));
    let longest: Vec<serde_json::Value> = worst
        .iter()
        .take(20)
        .map(|st| {
            serde_json::json!({
                "time": clock.wall(st.header.ts_ns).to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "ts_ns": st.header.ts_ns,
                "pid": st.header.tgid,
                "tid": st.header.pid,
                "comm": comm(&st.header.comm),
                "cpu": st.header.cpu,
                "wait_ns": st.wait_ns,
                "villain_pid": st.villain_tgid,
                "villain_comm": comm(&st.villain_comm),
            })
        })
        .collect();
    serde_json::json!({
        "interval_s": interval_ns as f64 / 1e9,
        "count": at.stalls.len() as u64 + at.stalls_more,
        "longest": longest,
    })
}

/// The interval boundaries to show when event time reaches `ts`, with
/// the next one due at `next` (advanced past `ts`): none, the one due, or
/// the one due and the last boundary before `ts` (a gap of many intervals
/// costs two snapshots, not one per interval).
pub fn catch_up(next: &mut Option<u64>, ts: u64, interval_ns: u64) -> Vec<u64> {
    let Some(due) = next.filter(|&d| d <= ts) else {
        return Vec::new();
    };
    let interval = interval_ns.max(1);
    let behind = (ts - due) / interval;
    let last = due.saturating_add(behind.saturating_mul(interval));
    *next = Some(last.saturating_add(interval));
    if behind == 0 {
        vec![due]
    } else {
        vec![due, last]
    }
}

/// [`ConnsSink`] on the bus, printing to standard output.
pub struct ConnsOut {
    pub sink: ConnsSink,
    pub out: Output,
    /// `replay --at`: the words given and the time, checked at the end
    /// against what the recording holds.
    pub at_words: Option<(String, u64, crate::record::RecordingHeader)>,
}

impl ConnsOut {
    /// Live: the first snapshot is due one interval from `now_ns`.
    pub fn new(mut sink: ConnsSink, now_ns: Option<u64>) -> Self {
        if let Some(now) = now_ns {
            sink.start_clock(now);
        }
        ConnsOut {
            sink,
            out: Output::stdout(),
            at_words: None,
        }
    }
}

impl Sink for ConnsOut {
    fn on_msg(&mut self, msg: &Msg) -> anyhow::Result<Flow> {
        let r = self.sink.on_msg(msg, &mut self.out);
        match flow_of(r)? {
            Flow::More if self.sink.done() => Ok(Flow::Done),
            f => Ok(f),
        }
    }

    fn due(&self) -> Option<u64> {
        match self.sink.timebase {
            Timebase::Live if !self.sink.done() => self.sink.next_due,
            _ => None,
        }
    }

    fn on_tick(&mut self, now_ns: u64) -> anyhow::Result<Flow> {
        self.sink.next_due = Some(now_ns + self.sink.interval_ns);
        let r = self.sink.tick(now_ns, &mut self.out);
        match flow_of(r)? {
            Flow::More if self.sink.done() => Ok(Flow::Done),
            f => Ok(f),
        }
    }

    fn finish(&mut self, end: &End) -> anyhow::Result<Flow> {
        if self.sink.timebase == Timebase::Live {
            self.sink.health = end.health;
        }
        if let (Some((words, ts, header)), Some(stats)) = (&self.at_words, &end.replay) {
            crate::source::replay::check_at(words, *ts, stats, header)?;
        }
        let r = self.sink.finish(crate::clock::boot_ns(), &mut self.out);
        flow_of(r)?;
        self.out.close(std::time::Duration::from_secs(1));
        Ok(Flow::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::tcp::TcpConfig;

    #[test]
    fn a_long_gap_costs_two_snapshots() {
        let mut next = Some(10);
        assert_eq!(catch_up(&mut next, 5, 10), Vec::<u64>::new());
        assert_eq!(catch_up(&mut next, 12, 10), vec![10]);
        assert_eq!(next, Some(20));
        assert_eq!(catch_up(&mut next, 10_000_005, 10), vec![20, 10_000_000]);
        assert_eq!(next, Some(10_000_010));
        let mut far = Some(1);
        assert_eq!(catch_up(&mut far, u64::MAX, 1_000_000_000).len(), 2);
    }
    use crate::aggregate::tcp::{Counters, Rates, StateCounts};

    fn row(pid: u32, comm: &str, opens: f64, tw: u64) -> ProcRow {
        ProcRow {
            pid,
            comm: comm.into(),
            exited: false,
            exited_ns: None,
            life: 0,
            totals: Counters {
                active_opens: 7,
                ..Default::default()
            },
            rates: Rates {
                active_opens: opens,
                ..Default::default()
            },
            states: StateCounts {
                time_wait: tw,
                ..Default::default()
            },
            lifetime_p50_ns: 1_000_000,
            lifetime_p99_ns: 8_000_000,
            lifetime_max_ns: 20_000_000,
            connects: 0,
            connect_p50_ns: 0,
            connect_p99_ns: 0,
            connect_max_ns: 0,
            leaks: 0,
            cgroup: Some("/svc".into()),
            container: None,
            netns: None,
            listen_ports: Vec::new(),
            connect_errors: Vec::new(),
            kernel_drops: Vec::new(),
        }
    }

    fn snap() -> TcpSnapshot {
        let mut agg = TcpAggregate::new(TcpConfig::default());
        let mut s = agg.snapshot(0);
        s.processes = vec![
            row(1, "a", 5.0, 100),
            row(2, "b", 50.0, 1),
            row(3, "c", 0.0, 7),
        ];
        s.hints = vec!["pid 2 (b) opened 50 conns/s".into()];
        s
    }

    #[test]
    fn sorting_filtering_and_top() {
        let mut s = snap();
        select(&mut s, &RowFilter::default(), ConnsSort::Churn, 0);
        assert_eq!(
            s.processes.iter().map(|r| r.pid).collect::<Vec<_>>(),
            vec![2, 1, 3]
        );
        select(&mut s, &RowFilter::default(), ConnsSort::TimeWait, 2);
        assert_eq!(
            s.processes.iter().map(|r| r.pid).collect::<Vec<_>>(),
            vec![1, 3]
        );
        let mut s = snap();
        select(
            &mut s,
            &RowFilter {
                comms: vec!["c".into()],
                ..Default::default()
            },
            ConnsSort::Pid,
            0,
        );
        assert_eq!(s.processes.len(), 1);
        let mut s = snap();
        select(
            &mut s,
            &RowFilter {
                pids: vec![1, 2],
                ..Default::default()
            },
            ConnsSort::Pid,
            0,
        );
        assert_eq!(
            s.processes.iter().map(|r| r.pid).collect::<Vec<_>>(),
            vec![1, 2]
        );
    }

    #[test]
    fn cgroup_filter_and_groups() {
        let f = RowFilter {
            cgroups: vec!["/svc".into(), "abcdef".into()],
            ..Default::default()
        };
        assert!(f.keeps_cgroup(Some("/svc"), None));
        assert!(f.keeps_cgroup(Some("/svc/a"), None));
        assert!(!f.keeps_cgroup(Some("/svcx"), None));
        assert!(f.keeps_cgroup(Some("/docker/x"), Some("abcdef123456")));
        assert!(!f.keeps_cgroup(None, None));
        assert!(RowFilter::default().keeps_cgroup(None, None));

        let mut a = row(1, "web", 2.0, 1);
        a.container = Some("abcdef123456".into());
        let mut b = row(2, "web", 3.0, 2);
        b.container = Some("abcdef123456".into());
        let mut c = row(3, "cron", 1.0, 0);
        c.cgroup = Some("/system.slice/cron.service".into());
        let g = group_rows(&[a, b, c.clone()], ConnsGroup::Container);
        assert_eq!(g.len(), 2);
        assert_eq!(
            (g[0].group.as_str(), g[0].processes, g[0].states.time_wait),
            ("abcdef123456", 2, 3)
        );
        assert_eq!(g[0].rates.active_opens, 5.0);
        assert_eq!(g[0].totals.active_opens, 14);
        assert_eq!(g[1].group, "/system.slice/cron.service");
        let by_cg = group_rows(&[c], ConnsGroup::Cgroup);
        assert_eq!(by_cg[0].group, "/system.slice/cron.service");
        assert!(render_groups(&g, Some(ConnsGroup::Container)).contains("abcdef123456"));
    }

    #[test]
    fn text_has_table_and_hints() {
        let s = snap();
        let t = render_text(&s, &Health::default(), &WallClock::with_offset_ns(0));
        assert!(t.contains("PID"), "{t}");
        let line = t.lines().find(|l| l.starts_with("2 ")).unwrap();
        assert!(
            line.contains(" 50 ") && line.contains("1.00ms") && line.contains("20.00ms"),
            "{line}"
        );
        assert!(t.contains("Hints:\n  pid 2 (b) opened 50 conns/s"));
        assert!(!t.contains("INCOMPLETE"));
        let lossy = Health {
            ringbuf_full: 3,
            ..Default::default()
        };
        assert!(
            render_text(&s, &lossy, &WallClock::with_offset_ns(0))
                .contains("INCOMPLETE: 3 events dropped")
        );
    }

    #[test]
    fn listen_queues_section() {
        let mut s = snap();
        s.listen = vec![crate::aggregate::listen::ListenRow {
            netns: 1,
            local: "127.0.0.1:8080".parse().unwrap(),
            pid: Some(2),
            comm: Some("b".into()),
            overflows: 141,
            overflows_interval: 47,
            drops: 141,
            drops_interval: 47,
            queue: Some(3),
            backlog: Some(2),
            queue_max: 3,
            queue_high_interval: 3,
            opens: 9,
            opens_interval: 4,
            last_ns: 1,
        }];
        let t = render_text(&s, &Health::default(), &WallClock::with_offset_ns(0));
        assert!(t.contains("Listen queues"), "{t}");
        let line = t.lines().find(|l| l.contains("127.0.0.1:8080")).unwrap();
        assert!(
            line.contains(" 3/2 ") && line.contains(" 141 ") && line.contains(" 47"),
            "{line}"
        );
        let j = render_json(
            &s,
            None,
            &Health::default(),
            &WallClock::with_offset_ns(0),
            false,
        );
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["listen"][0]["overflows"], 141);
        assert_eq!(v["listen"][0]["backlog"], 2);
        // Another process's listener goes with --pid.
        let f = RowFilter {
            pids: vec![9],
            ..Default::default()
        };
        select(&mut s, &f, ConnsSort::Opens, 0);
        assert!(s.listen.is_empty());
    }

    #[test]
    fn kernel_drops_section() {
        let mut s = snap();
        s.socket_drops = vec![crate::aggregate::drops::SocketDropRow {
            pid: Some(2),
            comm: Some("b".into()),
            netns: 1,
            local: Some("127.0.0.1:8080".parse().unwrap()),
            remote: "10.0.0.7:41234".parse().unwrap(),
            reason: "TCP_ZEROWINDOW".into(),
            reason_code: 32,
            count: 12,
            count_interval: 5,
            last_ns: 1,
        }];
        s.unowned_drops = vec![crate::aggregate::drops::UnownedDropRow {
            reason: "NO_SOCKET".into(),
            reason_code: 3,
            count: 99,
            count_interval: 4,
        }];
        let t = render_text(&s, &Health::default(), &WallClock::with_offset_ns(0));
        assert!(t.contains("Kernel drops"), "{t}");
        let line = t.lines().find(|l| l.contains("10.0.0.7:41234")).unwrap();
        assert!(
            line.contains("TCP_ZEROWINDOW") && line.contains(" 12 ") && line.contains(" b "),
            "{line}"
        );
        assert!(t.contains("No socket (host-wide)"), "{t}");
        let line = t.lines().find(|l| l.contains("NO_SOCKET")).unwrap();
        assert!(line.contains(" 99 "), "{line}");
        let j = render_json(
            &s,
            None,
            &Health::default(),
            &WallClock::with_offset_ns(0),
            false,
        );
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["socket_drops"][0]["reason"], "TCP_ZEROWINDOW");
        assert_eq!(v["unowned_drops"][0]["count"], 99);
        // Another process's drops go with --pid; the host's stay.
        let f = RowFilter {
            pids: vec![9],
            ..Default::default()
        };
        select(&mut s, &f, ConnsSort::Opens, 0);
        assert!(s.socket_drops.is_empty());
        assert_eq!(s.unowned_drops.len(), 1);
    }

    #[test]
    fn failed_connects_section() {
        let mut s = snap();
        s.connect_failures = vec![crate::aggregate::connfail::FailedConnect {
            pid: 2,
            comm: "b".into(),
            life: 0,
            remote: "127.0.0.1:9".parse().unwrap(),
            error: "ECONNREFUSED".into(),
            count: 12,
            interval: 5,
        }];
        let t = render_text(&s, &Health::default(), &WallClock::with_offset_ns(0));
        assert!(t.contains("Failed connects"), "{t}");
        let line = t.lines().find(|l| l.contains("127.0.0.1:9")).unwrap();
        assert!(
            line.contains(" ECONNREFUSED ") && line.contains(" 12 ") && line.ends_with(" 5"),
            "{line}"
        );
        let j = render_json(
            &s,
            None,
            &Health::default(),
            &WallClock::with_offset_ns(0),
            false,
        );
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        let f = &v["connect_failures"][0];
        assert_eq!(
            (
                &f["pid"],
                &f["remote"],
                &f["error"],
                &f["count"],
                &f["interval"]
            ),
            (
                &2.into(),
                &"127.0.0.1:9".into(),
                &"ECONNREFUSED".into(),
                &12.into(),
                &5.into()
            )
        );
        let f = RowFilter {
            pids: vec![9],
            ..Default::default()
        };
        select(&mut s, &f, ConnsSort::Opens, 0);
        assert!(s.connect_failures.is_empty());
    }

    #[test]
    fn json_is_one_object() {
        let s = snap();
        let j: serde_json::Value = serde_json::from_str(&render_json(
            &s,
            None,
            &Health::default(),
            &WallClock::with_offset_ns(0),
            true,
        ))
        .unwrap();
        assert_eq!(j["final"], true);
        assert_eq!(j["processes"][1]["pid"], 2);
        assert_eq!(j["processes"][1]["totals"]["active_opens"], 7);
        assert_eq!(j["health"]["dropped"], 0);
    }
}

#[cfg(test)]
mod at_tests {
    use super::*;
    use clap::Parser;
    use diag_common::{EventHeader, EventKind, sched::StallEvent, user::AnyEvent};

    #[derive(Parser)]
    struct V {
        #[command(flatten)]
        v: ConnsView,
    }

    fn stall(ts: u64, wait_ns: u64) -> AnyEvent {
        let mut h = EventHeader::zeroed();
        h.kind = EventKind::Stall as u32;
        h.ts_ns = ts;
        h.tgid = 42;
        h.pid = 42;
        h.comm[..3].copy_from_slice(b"web");
        let mut villain = [0u8; 16];
        villain[..3].copy_from_slice(b"hog");
        AnyEvent::Stall(StallEvent {
            header: h,
            wait_ns,
            villain_pid: 9,
            villain_tgid: 9,
            villain_comm: villain,
        })
    }

    /// `replay --at`: one snapshot at the instant, and only the stalls of
    /// the interval before it.
    #[test]
    fn at_prints_one_snapshot_at_the_instant_with_the_stalls_before_it() {
        let view = V::parse_from(["x"]).v;
        let clock = WallClock::with_offset_ns(1_700_000_000_000_000_000);
        let at = 10_500_000_000;
        let mut sink = ConnsSink::new(view, None, clock, Timebase::Events).at(at);
        let mut out = Vec::new();
        let evs = vec![
            stall(5_000_000_000, 40_000_000),
            stall(9_400_000_000, 30_000_000),
            stall(9_600_000_000, 20_000_000),
            stall(10_400_000_000, 25_000_000),
        ];
        sink.on_msg(&Msg::Events(evs), &mut out).unwrap();
        sink.finish(0, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let hms = |ns: u64| clock.wall(ns).format("%H:%M:%S").to_string();
        assert_eq!(text.matches("diag conns  ").count(), 1, "{text}");
        assert!(
            text.contains(&format!("diag conns  {}  interval 1.00s", hms(at))),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "Run-queue stalls in the 1.00s before {}: 2\n",
                hms(at)
            )),
            "{text}"
        );
        // Longest first; the 30 ms one was before the interval.
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("waited")).collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].contains("pid 42 (web) waited 25.00ms"), "{text}");
        assert!(lines[0].contains("9 (hog) held it"), "{text}");
        assert!(lines[1].contains("waited 20.00ms"), "{text}");
    }

    #[test]
    fn at_in_json_carries_the_stalls_of_the_interval() {
        let view = V::parse_from(["x", "--json"]).v;
        let clock = WallClock::with_offset_ns(1_700_000_000_000_000_000);
        let mut sink = ConnsSink::new(view, None, clock, Timebase::Events).at(10_500_000_000);
        let mut out = Vec::new();
        let evs = vec![
            stall(9_400_000_000, 30_000_000),
            stall(10_400_000_000, 25_000_000),
        ];
        sink.on_msg(&Msg::Events(evs), &mut out).unwrap();
        sink.finish(0, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["stalls"]["count"], 1, "{v}");
        assert_eq!(v["stalls"]["longest"][0]["wait_ns"], 25_000_000, "{v}");
        assert_eq!(v["stalls"]["longest"][0]["villain_comm"], "hog", "{v}");
        assert_eq!(v["interval_s"], 1.0, "{v}");
    }
}
