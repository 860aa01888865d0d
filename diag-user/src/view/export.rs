//! `diag export`: a recording as JSON lines (for jq, pandas) or as a
//! Chrome trace-event file (a timeline in Perfetto's UI).

use std::{
    collections::{BTreeMap, HashMap},
    io::{self, Write},
    process::ExitCode,
};

use diag_common::{
    EventKind,
    tcp::{AF_INET6, state, state_name},
    user::AnyEvent,
};
use serde_json::{Value, json};

use crate::{
    cli::{ExportArgs, ExportFormat},
    clock::WallClock,
    enrich::oom::OomContext,
    record::{RecordingHeader, reader::Record},
    source::replay::open,
    view::{
        fmt::endpoint,
        tail::{Names, format_json, oom_text},
    },
};

/// One JSON line per record. Pure.
pub fn jsonl_lines(rec: &Record, clock: &WallClock, names: &Names) -> Vec<String> {
    match rec {
        Record::Events(evs) => evs.iter().map(|e| format_json(e, clock, names)).collect(),
        Record::Health(h) => {
            vec![json!({"event": "health", "time": time(clock, h.ts_ns), "health": h}).to_string()]
        }
        Record::Table(t) => {
            vec![json!({"event": "socket_table", "time": time(clock, t.ts_ns), "ts_ns": t.ts_ns, "rows": t.rows}).to_string()]
        }
        Record::Procs(p) => {
            vec![json!({"event": "process_table", "time": time(clock, p.ts_ns), "ts_ns": p.ts_ns, "processes": p.procs}).to_string()]
        }
        Record::OomContext(c) => vec![
            json!({
                "event": "oom_context",
                "time": time(clock, c.ts_ns),
                "ts_ns": c.ts_ns,
                "tid": c.tid,
                "context": c.ctx,
            })
            .to_string(),
        ],
        Record::Sched(s) => vec![
            json!({
                "event": "sched",
                "time": time(clock, s.ts_ns),
                "ts_ns": s.ts_ns,
                "interval_ns": s.interval_ns,
                "processes": s.procs,
                "others": s.others,
                "others_count": s.others_count,
            })
            .to_string(),
        ],
        Record::Locks(l) => vec![
            json!({
                "event": "locks",
                "time": time(clock, l.ts_ns),
                "ts_ns": l.ts_ns,
                "interval_ns": l.interval_ns,
                "processes": l.procs,
                "locks": l.locks.iter().map(|k| {
                    let mut v = serde_json::to_value(k).unwrap_or_default();
                    v["uaddr"] = format!("{:#x}", k.uaddr).into();
                    v
                }).collect::<Vec<_>>(),
                "locks_omitted": l.locks_omitted,
            })
            .to_string(),
        ],
        Record::Pressure(p) => vec![
            json!({
                "event": "pressure",
                "time": time(clock, p.ts_ns),
                "ts_ns": p.ts_ns,
                "interval_ns": p.interval_ns,
                "host": p.host,
                "cgroups": p.cgroups,
                "others": p.others,
                "others_count": p.others_count,
                "quiet_count": p.quiet_count,
                "skipped": p.skipped,
            })
            .to_string(),
        ],
        Record::Block(b) => {
            let mut v = crate::view::runq::block_json(b);
            v["event"] = "block".into();
            v["time"] = time(clock, b.ts_ns).into();
            vec![v.to_string()]
        }
        Record::Memory(m) => {
            let mut v = serde_json::to_value(m).unwrap_or_default();
            v["event"] = "memory".into();
            v["time"] = time(clock, m.end_ns).into();
            vec![v.to_string()]
        }
        Record::End(e) => vec![
            json!({"event": "end", "time": time(clock, e.ts_ns), "reason": e.reason}).to_string(),
        ],
        Record::Damage(d) => vec![json!({"event": "damage", "what": d}).to_string()],
    }
}

fn time(clock: &WallClock, ts: u64) -> String {
    clock
        .wall(ts)
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn comm(c: &[u8; 16]) -> String {
    crate::text::comm(c)
}

/// Builds a Chrome trace: connections as complete ("X") slices on their
/// owner's track, resets and retransmissions as instant events on it, OOM
/// kills as global instant events, process names as metadata.
pub struct ChromeTrace {
    t0: Option<u64>,
    events: Vec<Value>,
    open: HashMap<u64, (u64, u32, String, Vec<String>)>,
    names: BTreeMap<u32, String>,
    clock: WallClock,
}

impl ChromeTrace {
    pub fn new(clock: WallClock) -> Self {
        ChromeTrace {
            t0: None,
            events: Vec::new(),
            open: HashMap::new(),
            names: BTreeMap::new(),
            clock,
        }
    }

    fn us(&mut self, ts: u64) -> f64 {
        let t0 = *self.t0.get_or_insert(ts);
        ts.saturating_sub(t0) as f64 / 1000.0
    }

    pub fn eat(&mut self, e: &AnyEvent) {
        let h = e.header();
        let ts = self.us(h.ts_ns);
        if h.tgid != 0 {
            self.names.entry(h.tgid).or_insert_with(|| comm(&h.comm));
        }
        match e {
            AnyEvent::TcpState(t) => {
                let opening = matches!(
                    (t.old_state, t.new_state),
                    (state::CLOSE, state::SYN_SENT) | (state::LISTEN, state::SYN_RECV)
                );
                if opening {
                    let kind = if t.new_state == state::SYN_SENT {
                        "connect"
                    } else {
                        "accept"
                    };
                    self.open.insert(
                        t.skaddr,
                        (
                            h.ts_ns,
                            h.tgid,
                            kind.to_string(),
                            vec![state_name(t.new_state).into()],
                        ),
                    );
                } else if let Some(o) = self.open.get_mut(&t.skaddr) {
                    o.3.push(state_name(t.new_state).into());
                }
                if t.new_state == state::CLOSE
                    && let Some((start, pid, kind, states)) = self.open.remove(&t.skaddr)
                {
                    let begin = self.us(start);
                    let family = if t.family == AF_INET6 { "tcp6" } else { "tcp" };
                    self.events.push(json!({
                        "name": format!("{kind} {}", endpoint(t.family, &t.daddr, t.dport)),
                        "cat": family,
                        "ph": "X",
                        "ts": begin,
                        "dur": (ts - begin).max(0.001),
                        "pid": pid,
                        "tid": pid,
                        "args": {
                            "local": endpoint(t.family, &t.saddr, t.sport),
                            "remote": endpoint(t.family, &t.daddr, t.dport),
                            "states": states.join(" > "),
                        },
                    }));
                }
            }
            AnyEvent::TcpSock(s) => {
                let name = match EventKind::try_from(s.header.kind) {
                    Ok(EventKind::TcpResetSent) => "RST sent",
                    Ok(EventKind::TcpResetReceived) => "RST received",
                    Ok(EventKind::TcpRetransmitSynack) => "SYN-ACK retransmit",
                    Ok(EventKind::TcpAccepted) => "accepted",
                    _ => "retransmit",
                };
                self.events.push(json!({
                    "name": name, "cat": "tcp", "ph": "i", "s": "t", "ts": ts, "pid": h.tgid, "tid": h.tgid,
                    "args": {"local": endpoint(s.family, &s.saddr, s.sport), "remote": endpoint(s.family, &s.daddr, s.dport)},
                }));
            }
            AnyEvent::TcpClose(c) => {
                self.events.push(json!({
                    "name": format!("closed by {}", diag_common::tcp::closed_by::name(c.closed_by)),
                    "cat": "tcp", "ph": "i", "s": "t", "ts": ts, "pid": h.tgid, "tid": h.tgid,
                    "args": {"local": endpoint(c.family, &c.saddr, c.sport), "remote": endpoint(c.family, &c.daddr, c.dport),
                        "duration_ns": c.duration_ns, "bytes_acked": c.bytes_acked, "bytes_received": c.bytes_received,
                        "total_retrans": c.total_retrans, "srtt_us": c.srtt_us},
                }));
            }
            AnyEvent::TcpDrop(d) => {
                self.events.push(json!({
                    "name": if diag_common::tcp::drop_cause::is_listen(d.cause) {
                        format!("listen drop ({})", diag_common::tcp::drop_cause::name(d.cause))
                    } else {
                        format!("kernel drop ({}, reason {}, {} packets)", diag_common::tcp::drop_cause::name(d.cause), d.reason, d.packets())
                    },
                    "cat": "tcp", "ph": "i", "s": "t", "ts": ts, "pid": h.tgid, "tid": h.tgid,
                    "args": {"local": endpoint(d.family, &d.addr, d.port), "remote": endpoint(d.family, &d.raddr, d.rport), "queue": d.queue, "backlog": d.backlog},
                }));
            }
            AnyEvent::BlockSlow(b) => {
                // The request ended now: a slice on the starting thread's track.
                let dur = b.lat_ns as f64 / 1000.0;
                let (maj, min) = diag_common::block::dev_parts(b.dev);
                self.events.push(json!({
                    "name": format!("slow {} {} B on {maj}:{min}", crate::aggregate::block::op_name(b.op), b.bytes),
                    "cat": "io", "ph": "X", "ts": (ts - dur).max(0.0), "dur": dur, "pid": h.tgid, "tid": h.pid,
                    "args": {"dev": format!("{maj}:{min}"), "lat_ns": b.lat_ns, "bytes": b.bytes, "sector": b.sector, "error": b.error},
                }));
            }
            AnyEvent::Stall(st) => {
                // The wait ended now: a slice on the waiting thread's track.
                let dur = st.wait_ns as f64 / 1000.0;
                self.names
                    .entry(st.villain_tgid)
                    .or_insert_with(|| comm(&st.villain_comm));
                self.events.push(json!({
                    "name": format!("waiting for a CPU (ran: {} {})", st.villain_tgid, comm(&st.villain_comm)),
                    "cat": "stall", "ph": "X", "ts": (ts - dur).max(0.0), "dur": dur, "pid": h.tgid, "tid": h.pid,
                    "args": {"cpu": h.cpu, "wait_ns": st.wait_ns, "villain_pid": st.villain_tgid, "villain_tid": st.villain_pid},
                }));
            }
            AnyEvent::MemStall(m) => {
                // The episode ended now: a slice on the stalled thread's track.
                let dur = m.dur_ns as f64 / 1000.0;
                self.events.push(json!({
                    "name": format!("memory stall: {}", diag_common::memory::stall_kind::name(m.kind)),
                    "cat": "memstall", "ph": "X", "ts": (ts - dur).max(0.0), "dur": dur, "pid": h.tgid, "tid": h.pid,
                    "args": {"duration_ns": m.dur_ns, "scanned": m.scanned, "reclaimed": m.reclaimed,
                        "memcg_ino": m.memcg_ino, "limit_memcg_ino": m.limit_ino},
                }));
            }
            AnyEvent::LockWait(l) => {
                // The wait began at the header's time: a slice on the
                // waiting thread's track.
                let dur = l.wait_ns as f64 / 1000.0;
                if l.waker_tgid != 0 {
                    self.names
                        .entry(l.waker_tgid)
                        .or_insert_with(|| comm(&l.waker_comm));
                }
                self.events.push(json!({
                    "name": format!("lock wait on {:#x} (woken by {})", l.uaddr, if l.waker_pid == 0 { "nobody".to_string() } else { format!("tid {} {}", l.waker_pid, comm(&l.waker_comm)) }),
                    "cat": "lock", "ph": "X", "ts": ts, "dur": dur, "pid": h.tgid, "tid": h.pid,
                    "args": {"uaddr": format!("{:#x}", l.uaddr), "wait_ns": l.wait_ns, "waker_pid": l.waker_tgid, "waker_tid": l.waker_pid, "kind": diag_common::lock::wait_kind::name(l.kind), "ret": l.ret},
                }));
            }
            AnyEvent::ProcExit(x) => {
                self.names.entry(h.tgid).or_insert_with(|| comm(&x.comm));
                self.events.push(json!({
                    "name": format!("exit {} ({})", h.tgid, comm(&x.comm)),
                    "cat": "proc", "ph": "i", "s": "p", "ts": ts, "pid": h.tgid, "tid": h.pid,
                    "args": {"exit_status": x.exit_status(), "signal": x.signal(), "start_ns": x.start_boottime_ns()},
                }));
            }
            AnyEvent::OomKill(o) => {
                self.names
                    .entry(o.victim_process())
                    .or_insert_with(|| comm(&o.victim_comm));
                self.events.push(json!({
                    "name": format!("OOM kill {} ({})", o.victim_process(), comm(&o.victim_comm)),
                    "cat": "oom", "ph": "i", "s": "g", "ts": ts, "pid": o.victim_process(), "tid": o.victim_pid,
                    "args": {"what": oom_text(o, &OomContext::default(), &self.clock), "rss_kb": o.rss_kb(), "trigger_pid": h.tgid},
                }));
            }
        }
    }

    /// The finished trace. Connections still open at the end are shown
    /// up to the last event.
    pub fn finish(mut self, last_ts: u64) -> Value {
        let end = self.us(last_ts);
        let open: Vec<_> = self.open.drain().collect();
        for (_, (start, pid, kind, states)) in open {
            let begin = self.us(start);
            self.events.push(json!({
                "name": format!("{kind} (still open)"), "cat": "tcp", "ph": "X", "ts": begin, "dur": (end - begin).max(0.001),
                "pid": pid, "tid": pid, "args": {"states": states.join(" > ")},
            }));
        }
        for (pid, name) in &self.names {
            self.events.push(json!({"name": "process_name", "ph": "M", "pid": pid, "args": {"name": format!("{name} ({pid})")}}));
        }
        json!({"traceEvents": self.events, "displayTimeUnit": "ms"})
    }
}

fn writer(args: &ExportArgs) -> anyhow::Result<Box<dyn Write>> {
    Ok(match &args.output {
        Some(p) => Box::new(io::BufWriter::new(
            crate::record::outfile::create_private(p, crate::record::outfile::Lock::None)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", p.display()))?,
        )),
        None => Box::new(io::BufWriter::new(io::stdout().lock())),
    })
}

fn names_of(h: &RecordingHeader) -> Names {
    Names::of_header(h)
}

/// `diag export FILE --format jsonl|chrome-trace`.
pub fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let mut reader = open(&args.file)?;
    let header = reader.header.clone();
    let clock = header.clock();
    let names = names_of(&header);
    let mut out = writer(&args)?;
    let broken = |e: io::Error| -> anyhow::Result<()> {
        if e.kind() == io::ErrorKind::BrokenPipe {
            Ok(())
        } else {
            Err(anyhow::Error::new(e).context("writing the export"))
        }
    };
    let mut damage = 0;
    match args.format {
        ExportFormat::Jsonl => {
            let head = json!({"event": "recording", "header": header}).to_string();
            if let Err(e) = writeln!(out, "{head}") {
                broken(e)?;
                return Ok(ExitCode::SUCCESS);
            }
            for rec in reader.by_ref() {
                if let Record::Damage(d) = &rec {
                    damage += 1;
                    eprintln!("diag: {d}");
                }
                for line in jsonl_lines(&rec, &clock, &names) {
                    if let Err(e) = writeln!(out, "{line}") {
                        broken(e)?;
                        return Ok(ExitCode::SUCCESS);
                    }
                }
            }
        }
        ExportFormat::ChromeTrace => {
            let mut trace = ChromeTrace::new(clock);
            let mut last = header.started_ts_ns;
            for rec in reader.by_ref() {
                match rec {
                    Record::Events(evs) => {
                        for e in &evs {
                            last = last.max(e.header().ts_ns);
                            trace.eat(e);
                        }
                    }
                    Record::Damage(d) => {
                        damage += 1;
                        eprintln!("diag: {d}");
                    }
                    _ => {}
                }
            }
            if let Err(e) = serde_json::to_writer(&mut out, &trace.finish(last)) {
                return Err(anyhow::Error::new(e).context("writing the trace"));
            }
        }
    }
    if let Err(e) = out.flush() {
        broken(e)?;
    }
    if damage > 0 {
        tracing::warn!("{damage} damaged parts of the recording were skipped");
    }
    if !reader.ended {
        tracing::warn!(
            "the recording was not finished cleanly (diag was killed or the file was cut): the export ends at its last complete frame"
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use diag_common::{
        EventHeader,
        tcp::{AF_INET, TcpStateEvent, attribution},
    };

    fn st(ts: u64, old: u8, new: u8) -> AnyEvent {
        let mut h = EventHeader::zeroed();
        h.kind = EventKind::TcpState as u32;
        h.ts_ns = ts;
        h.tgid = 42;
        h.pid = 42;
        h.comm[..3].copy_from_slice(b"api");
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[10, 0, 0, 1]);
        AnyEvent::TcpState(TcpStateEvent {
            header: h,
            skaddr: 9,
            in_old_state_ns: 0,
            saddr: a,
            daddr: a,
            sport: 40000,
            dport: 5432,
            family: AF_INET,
            old_state: old,
            new_state: new,
            attribution: attribution::SYSCALL,
            err_known: 0,
            _pad: [0; 2],
            current_tgid: 42,
            netns: 0,
            listen_queue: diag_common::tcp::NO_FIELD,
            listen_backlog: diag_common::tcp::NO_FIELD,
            err: 0,
        })
    }

    #[test]
    fn connections_become_slices() {
        let mut t = ChromeTrace::new(WallClock::with_offset_ns(0));
        t.eat(&st(1_000_000, state::CLOSE, state::SYN_SENT));
        t.eat(&st(1_500_000, state::SYN_SENT, state::ESTABLISHED));
        t.eat(&st(3_000_000, state::FIN_WAIT2, state::CLOSE));
        let v = t.finish(3_000_000);
        let evs = v["traceEvents"].as_array().unwrap();
        let x = evs.iter().find(|e| e["ph"] == "X").unwrap();
        assert_eq!(x["pid"], 42);
        assert_eq!(x["ts"], 0.0);
        assert_eq!(x["dur"], 2000.0);
        assert_eq!(x["name"], "connect 10.0.0.1:5432");
        assert_eq!(x["args"]["states"], "SYN_SENT > ESTABLISHED > CLOSE");
        assert!(
            evs.iter()
                .any(|e| e["ph"] == "M" && e["args"]["name"] == "api (42)")
        );
    }

    #[test]
    fn jsonl_is_one_object_per_line() {
        let rec = Record::Events(vec![st(1, state::CLOSE, state::SYN_SENT)]);
        let lines = jsonl_lines(&rec, &WallClock::with_offset_ns(0), &Names::default());
        assert_eq!(lines.len(), 1);
        let v: Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(v["event"], "tcp_state");
        let d = jsonl_lines(
            &Record::Damage("x".into()),
            &WallClock::with_offset_ns(0),
            &Names::default(),
        );
        assert_eq!(
            serde_json::from_str::<Value>(&d[0]).unwrap()["event"],
            "damage"
        );
    }
}
