//! `diag tail`: one line per event, text or JSON.

use std::{
    io::{self, Write},
    net::{Ipv4Addr, Ipv6Addr},
    process::ExitCode,
};

use std::collections::HashMap;

use diag_common::{
    EventKind, comm_bytes,
    tcp::{AF_INET6, TcpSockEvent, TcpStateEvent, attribution, state_name},
    user::AnyEvent,
};

use crate::{
    Msg,
    cli::{EventClass, Family, TailArgs, TailView},
    clock::WallClock,
    loader,
    source::{Health, live::Live},
    view::LiveSession,
};

/// Which events `tail` shows.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Empty: every class.
    pub events: Vec<EventClass>,
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
    pub ports: Vec<u16>,
    pub family: Option<Family>,
}

impl Filter {
    pub fn from_args(a: &TailView) -> Self {
        Filter {
            events: a.events.clone(),
            pids: a.pid.clone(),
            comms: a.comm.clone(),
            ports: a.port.clone(),
            family: a.family,
        }
    }

    pub fn matches(&self, ev: &AnyEvent) -> bool {
        if !self.events.is_empty() && !self.events.contains(&class_of(ev)) {
            return false;
        }
        let h = ev.header();
        if !self.pids.is_empty() && !self.pids.iter().any(|&p| p == h.tgid || p == h.pid) {
            return false;
        }
        if !self.comms.is_empty() {
            let comm = comm_bytes(&h.comm);
            if !self.comms.iter().any(|c| c.as_bytes() == comm) {
                return false;
            }
        }
        let (family, sport, dport) = match ev {
            AnyEvent::TcpState(t) => (t.family, t.sport, t.dport),
            AnyEvent::TcpSock(t) => (t.family, t.sport, t.dport),
        };
        if !self.ports.is_empty() && !self.ports.iter().any(|&p| p == sport || p == dport) {
            return false;
        }
        match self.family {
            Some(Family::V4) => family != AF_INET6,
            Some(Family::V6) => family == AF_INET6,
            None => true,
        }
    }
}

/// The `--events` class an event belongs to.
pub fn class_of(ev: &AnyEvent) -> EventClass {
    match ev {
        AnyEvent::TcpState(_) => EventClass::Tcp,
        AnyEvent::TcpSock(t) => match EventKind::try_from(t.header.kind) {
            Ok(EventKind::TcpResetSent | EventKind::TcpResetReceived) => EventClass::Reset,
            _ => EventClass::Retrans,
        },
    }
}

/// Names the kernel gives to numbers in events, read from tracefs at load
/// time (they change between kernel versions).
#[derive(Debug, Clone, Default)]
pub struct Names {
    pub rst_reasons: HashMap<i64, String>,
}

impl Names {
    pub fn rst_reason(&self, r: i32) -> String {
        self.rst_reasons
            .get(&i64::from(r))
            .cloned()
            .unwrap_or_else(|| r.to_string())
    }
}

/// What a per-socket event is, in words: `RST sent (NO_SOCKET)`.
pub fn sock_event_what(t: &TcpSockEvent, names: &Names) -> String {
    match EventKind::try_from(t.header.kind) {
        Ok(EventKind::TcpResetSent) => format!("RST sent ({})", names.rst_reason(t.reason)),
        Ok(EventKind::TcpResetReceived) => "RST received".into(),
        Ok(EventKind::TcpRetransmit) => format!("RETRANSMIT in {}", state_name(t.state)),
        Ok(EventKind::TcpRetransmitSynack) => "SYN-ACK RETRANSMIT".into(),
        _ => "?".into(),
    }
}

/// The JSON `event` name of a per-socket event.
pub fn sock_event_name(t: &TcpSockEvent) -> &'static str {
    match EventKind::try_from(t.header.kind) {
        Ok(EventKind::TcpResetSent) => "tcp_reset_sent",
        Ok(EventKind::TcpResetReceived) => "tcp_reset_received",
        Ok(EventKind::TcpRetransmit) => "tcp_retransmit",
        Ok(EventKind::TcpRetransmitSynack) => "tcp_retransmit_synack",
        _ => "unknown",
    }
}

/// An address and port as people write them: `1.2.3.4:80`, `[::1]:80`.
pub fn endpoint(family: u16, addr: &[u8; 16], port: u16) -> String {
    if family == AF_INET6 {
        format!("[{}]:{port}", Ipv6Addr::from(*addr))
    } else {
        format!(
            "{}:{port}",
            Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3])
        )
    }
}

/// Just the address.
pub fn address(family: u16, addr: &[u8; 16]) -> String {
    if family == AF_INET6 {
        Ipv6Addr::from(*addr).to_string()
    } else {
        Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]).to_string()
    }
}

/// A duration in the unit that reads best: 850ns, 12.3us, 4.56ms, 1.23s.
pub fn human_ns(ns: u64) -> String {
    match ns {
        0 => "-".into(),
        n if n < 1_000 => format!("{n}ns"),
        n if n < 1_000_000 => format!("{:.1}us", n as f64 / 1e3),
        n if n < 1_000_000_000 => format!("{:.2}ms", n as f64 / 1e6),
        n => format!("{:.2}s", n as f64 / 1e9),
    }
}

fn comm_string(comm: &[u8; 16]) -> String {
    String::from_utf8_lossy(comm_bytes(comm)).into_owned()
}

pub const TEXT_HEADER: &str = "TIME             PID      COMM             LOCAL                    REMOTE                   TRANSITION                 IN-OLD     ATTR";

pub fn format_text(ev: &AnyEvent, clock: &WallClock, names: &Names) -> String {
    match ev {
        AnyEvent::TcpState(t) => tcp_text(t, clock),
        AnyEvent::TcpSock(t) => {
            let h = &t.header;
            format!(
                "{:<16} {:<8} {:<16} {:<24} {:<24} {:<26} {:<10} {}",
                clock.wall(h.ts_ns).format("%H:%M:%S%.6f"),
                h.tgid,
                if t.attribution == attribution::KERNEL {
                    "[kernel]".into()
                } else {
                    comm_string(&h.comm)
                },
                endpoint(t.family, &t.saddr, t.sport),
                endpoint(t.family, &t.daddr, t.dport),
                sock_event_what(t, names),
                "-",
                attribution::name(t.attribution),
            )
        }
    }
}

fn tcp_text(t: &TcpStateEvent, clock: &WallClock) -> String {
    let h = &t.header;
    format!(
        "{:<16} {:<8} {:<16} {:<24} {:<24} {:<26} {:<10} {}",
        clock.wall(h.ts_ns).format("%H:%M:%S%.6f"),
        h.tgid,
        comm_string(&h.comm),
        endpoint(t.family, &t.saddr, t.sport),
        endpoint(t.family, &t.daddr, t.dport),
        format!("{} -> {}", state_name(t.old_state), state_name(t.new_state)),
        human_ns(t.in_old_state_ns),
        attribution::name(t.attribution),
    )
}

pub fn format_json(ev: &AnyEvent, clock: &WallClock, names: &Names) -> String {
    match ev {
        AnyEvent::TcpSock(t) => {
            let h = &t.header;
            let mut v = serde_json::json!({
                "time": clock.wall(h.ts_ns).to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "ts_ns": h.ts_ns,
                "event": sock_event_name(t),
                "pid": h.tgid,
                "tid": h.pid,
                "comm": comm_string(&h.comm),
                "cpu": h.cpu,
                "family": if t.family == AF_INET6 { 6 } else { 4 },
                "saddr": address(t.family, &t.saddr),
                "sport": t.sport,
                "daddr": address(t.family, &t.daddr),
                "dport": t.dport,
                "state": if t.state == 0 { None } else { Some(state_name(t.state)) },
                "attribution": attribution::name(t.attribution),
                "current_pid": t.current_tgid,
                "skaddr": format!("{:#x}", t.skaddr),
            });
            match EventKind::try_from(h.kind) {
                Ok(EventKind::TcpResetSent) => v["reason"] = names.rst_reason(t.reason).into(),
                Ok(EventKind::TcpRetransmit) => v["err"] = t.reason.into(),
                _ => {}
            }
            v.to_string()
        }
        AnyEvent::TcpState(t) => {
            let h = &t.header;
            serde_json::json!({
                "time": clock.wall(h.ts_ns).to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "ts_ns": h.ts_ns,
                "event": "tcp_state",
                "pid": h.tgid,
                "tid": h.pid,
                "comm": comm_string(&h.comm),
                "cpu": h.cpu,
                "family": if t.family == AF_INET6 { 6 } else { 4 },
                "saddr": address(t.family, &t.saddr),
                "sport": t.sport,
                "daddr": address(t.family, &t.daddr),
                "dport": t.dport,
                "old_state": state_name(t.old_state),
                "new_state": state_name(t.new_state),
                "in_old_state_ns": if t.in_old_state_ns == 0 { None } else { Some(t.in_old_state_ns) },
                "attribution": attribution::name(t.attribution),
                "current_pid": t.current_tgid,
                "skaddr": format!("{:#x}", t.skaddr),
            })
            .to_string()
        }
    }
}

/// The tail sink's state: pure, driven by messages.
pub struct Tail {
    pub filter: Filter,
    pub names: Names,
    pub json: bool,
    pub clock: WallClock,
    pub seen: u64,
    pub shown: u64,
    pub health: Health,
}

impl Tail {
    /// Write what `msg` shows; returns a warning for stderr when the
    /// kernel reported new losses.
    pub fn handle(&mut self, msg: Msg, out: &mut impl Write) -> io::Result<Option<String>> {
        match msg {
            Msg::Events(evs) => {
                for ev in &evs {
                    self.seen += 1;
                    if self.filter.matches(ev) {
                        self.shown += 1;
                        let line = if self.json {
                            format_json(ev, &self.clock, &self.names)
                        } else {
                            format_text(ev, &self.clock, &self.names)
                        };
                        writeln!(out, "{line}")?;
                    }
                }
                out.flush()?;
                Ok(None)
            }
            Msg::Table { .. } => Ok(None),
            Msg::Damage(what) => Ok(Some(what)),
            Msg::Health(h) => {
                let before = self.health;
                self.health = h;
                let new_drops = h.ringbuf_full.saturating_sub(before.ringbuf_full);
                let new_map = (h.sock_map_full + h.listen_map_full)
                    .saturating_sub(before.sock_map_full + before.listen_map_full);
                let mut warn = Vec::new();
                if new_drops > 0 {
                    warn.push(format!(
                        "{new_drops} events dropped: the ring buffer was full (raise --ring-mib)"
                    ));
                }
                if new_map > 0 {
                    warn.push(format!("{new_map} sockets not tracked: owner map full"));
                }
                Ok(if warn.is_empty() {
                    None
                } else {
                    Some(format!("WARNING: {}", warn.join("; ")))
                })
            }
        }
    }

    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} events seen, {} shown, {} dropped",
            self.seen, self.shown, self.health.ringbuf_full
        );
        if let Some(l) = self.health.losses() {
            s.push_str(&format!(" ({l})"));
        }
        s
    }
}

/// `diag tail`.
/// Print what arrives on `rx` until it closes; `cancel` stops the source
/// when output is no longer wanted (a closed pipe). Returns the sink for
/// its summary.
pub async fn drain_to_stdout(
    mut tail: Tail,
    rx: &mut tokio::sync::mpsc::Receiver<Msg>,
    cancel: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<Tail> {
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let mut broken_pipe = false;
    if !tail.json
        && let Err(e) = writeln!(out, "{TEXT_HEADER}").and_then(|_| out.flush())
    {
        broken_pipe = e.kind() == io::ErrorKind::BrokenPipe;
        if !broken_pipe {
            return Err(anyhow::Error::new(e).context("writing to standard output"));
        }
        cancel.cancel();
    }
    while let Some(msg) = rx.recv().await {
        if broken_pipe {
            continue;
        }
        match tail.handle(msg, &mut out) {
            Ok(Some(warn)) => eprintln!("diag: {warn}"),
            Ok(None) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                broken_pipe = true;
                cancel.cancel();
            }
            Err(e) => {
                cancel.cancel();
                return Err(anyhow::Error::new(e).context("writing to standard output"));
            }
        }
    }
    Ok(tail)
}

impl Tail {
    pub fn new(view: &TailView, names: Names, clock: WallClock) -> Self {
        Tail {
            filter: Filter::from_args(view),
            names,
            json: view.json,
            clock,
            seen: 0,
            shown: 0,
            health: Health::default(),
        }
    }
}

/// `diag tail`.
pub fn run(args: TailArgs) -> anyhow::Result<ExitCode> {
    let env = loader::require(&args.probe)?;
    let names = Names {
        rst_reasons: env.tcp.rst_reasons.iter().cloned().collect(),
    };
    let tracer = loader::load(&env, &args.probe)?;
    let live = Live::new(tracer)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut session = LiveSession::start(live, None);
        eprintln!(
            "diag: tracing {}; Ctrl-C to stop",
            session.attached.join(", ")
        );
        let tail = Tail::new(&args.view, names, WallClock::now());
        let tail = drain_to_stdout(tail, &mut session.rx, &session.cancel).await?;
        session.source.await??;
        eprintln!("diag: {}", tail.summary());
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use diag_common::{EventHeader, EventKind, tcp::state};

    fn ev(tgid: u32, comm: &str, family: u16, sport: u16, dport: u16) -> AnyEvent {
        let mut header = EventHeader::zeroed();
        header.kind = EventKind::TcpState as u32;
        header.tgid = tgid;
        header.pid = tgid + 1;
        header.ts_ns = 1_500_000_000;
        header.comm[..comm.len()].copy_from_slice(comm.as_bytes());
        let mut saddr = [0u8; 16];
        let mut daddr = [0u8; 16];
        if family == AF_INET6 {
            saddr[15] = 1;
            daddr[15] = 1;
        } else {
            saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
            daddr[..4].copy_from_slice(&[10, 0, 0, 5]);
        }
        AnyEvent::TcpState(TcpStateEvent {
            header,
            skaddr: 0xffff_8880_0000_1000,
            in_old_state_ns: 2_500_000,
            saddr,
            daddr,
            sport,
            dport,
            family,
            old_state: state::SYN_SENT,
            new_state: state::ESTABLISHED,
            attribution: attribution::SOCKET,
            _pad: [0; 3],
            current_tgid: 99,
        })
    }

    #[test]
    fn filters() {
        let e4 = ev(100, "curl", 2, 40000, 443);
        let e6 = ev(200, "nginx", AF_INET6, 80, 51000);
        let all = Filter::default();
        assert!(all.matches(&e4) && all.matches(&e6));
        let by_port = Filter {
            ports: vec![443],
            ..Default::default()
        };
        assert!(by_port.matches(&e4) && !by_port.matches(&e6));
        let by_local_port = Filter {
            ports: vec![80],
            ..Default::default()
        };
        assert!(by_local_port.matches(&e6));
        let by_pid = Filter {
            pids: vec![200],
            ..Default::default()
        };
        assert!(!by_pid.matches(&e4) && by_pid.matches(&e6));
        let by_tid = Filter {
            pids: vec![101],
            ..Default::default()
        };
        assert!(by_tid.matches(&e4));
        let by_comm = Filter {
            comms: vec!["curl".into()],
            ..Default::default()
        };
        assert!(by_comm.matches(&e4) && !by_comm.matches(&e6));
        let prefix_is_not_enough = Filter {
            comms: vec!["cur".into()],
            ..Default::default()
        };
        assert!(!prefix_is_not_enough.matches(&e4));
        let v6 = Filter {
            family: Some(Family::V6),
            ..Default::default()
        };
        assert!(!v6.matches(&e4) && v6.matches(&e6));
        let v4 = Filter {
            family: Some(Family::V4),
            ..Default::default()
        };
        assert!(v4.matches(&e4) && !v4.matches(&e6));
    }

    #[test]
    fn text_line() {
        let clock = WallClock::with_offset_ns(0);
        let line = format_text(&ev(100, "curl", 2, 40000, 443), &clock, &Names::default());
        assert!(line.contains(" 100 "), "{line}");
        assert!(line.contains("curl"));
        assert!(line.contains("127.0.0.1:40000"));
        assert!(line.contains("10.0.0.5:443"));
        assert!(line.contains("SYN_SENT -> ESTABLISHED"));
        assert!(line.contains("2.50ms"));
        assert!(line.ends_with("socket"));
        let line6 = format_text(&ev(1, "x", AF_INET6, 80, 51000), &clock, &Names::default());
        assert!(
            line6.contains("[::1]:80") && line6.contains("[::1]:51000"),
            "{line6}"
        );
    }

    #[test]
    fn json_line() {
        let clock = WallClock::with_offset_ns(1_700_000_000_000_000_000);
        let v: serde_json::Value = serde_json::from_str(&format_json(
            &ev(100, "curl", 2, 40000, 443),
            &clock,
            &Names::default(),
        ))
        .unwrap();
        assert_eq!(v["pid"], 100);
        assert_eq!(v["tid"], 101);
        assert_eq!(v["comm"], "curl");
        assert_eq!(v["family"], 4);
        assert_eq!(v["saddr"], "127.0.0.1");
        assert_eq!(v["dport"], 443);
        assert_eq!(v["old_state"], "SYN_SENT");
        assert_eq!(v["new_state"], "ESTABLISHED");
        assert_eq!(v["in_old_state_ns"], 2_500_000);
        assert_eq!(v["attribution"], "socket");
        assert!(
            v["time"]
                .as_str()
                .unwrap()
                .starts_with("2023-11-14T22:13:21.5")
        );
    }

    fn reset(kind: EventKind, reason: i32) -> AnyEvent {
        let mut header = EventHeader::zeroed();
        header.kind = kind as u32;
        AnyEvent::TcpSock(TcpSockEvent {
            header,
            skaddr: 0,
            saddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            daddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            sport: 9,
            dport: 40000,
            family: 2,
            state: 0,
            attribution: attribution::KERNEL,
            reason,
            current_tgid: 5,
        })
    }

    #[test]
    fn resets_and_classes() {
        let names = Names {
            rst_reasons: [(1, "NO_SOCKET".to_string())].into_iter().collect(),
        };
        let clock = WallClock::with_offset_ns(0);
        let sent = reset(EventKind::TcpResetSent, 1);
        let line = format_text(&sent, &clock, &names);
        assert!(
            line.contains("RST sent (NO_SOCKET)") && line.contains("[kernel]"),
            "{line}"
        );
        let v: serde_json::Value =
            serde_json::from_str(&format_json(&sent, &clock, &names)).unwrap();
        assert_eq!(v["event"], "tcp_reset_sent");
        assert_eq!(v["reason"], "NO_SOCKET");
        assert_eq!(v["pid"], 0);
        assert_eq!(names.rst_reason(77), "77");
        let retrans = reset(EventKind::TcpRetransmit, 0);
        assert_eq!(class_of(&sent), EventClass::Reset);
        assert_eq!(
            class_of(&reset(EventKind::TcpResetReceived, 0)),
            EventClass::Reset
        );
        assert_eq!(class_of(&retrans), EventClass::Retrans);
        let only_tcp = Filter {
            events: vec![EventClass::Tcp],
            ..Default::default()
        };
        assert!(!only_tcp.matches(&sent));
        assert!(only_tcp.matches(&ev(1, "a", 2, 1, 2)));
        let resets = Filter {
            events: vec![EventClass::Reset],
            ports: vec![9],
            ..Default::default()
        };
        assert!(resets.matches(&sent) && !resets.matches(&retrans));
    }

    #[test]
    fn durations() {
        assert_eq!(human_ns(0), "-");
        assert_eq!(human_ns(850), "850ns");
        assert_eq!(human_ns(12_300), "12.3us");
        assert_eq!(human_ns(4_560_000), "4.56ms");
        assert_eq!(human_ns(1_230_000_000), "1.23s");
    }

    #[test]
    fn health_warnings_and_summary() {
        let mut t = Tail {
            names: Names::default(),
            filter: Filter {
                ports: vec![443],
                ..Default::default()
            },
            json: false,
            clock: WallClock::with_offset_ns(0),
            seen: 0,
            shown: 0,
            health: Health::default(),
        };
        let mut out = Vec::new();
        t.handle(
            Msg::Events(vec![ev(1, "a", 2, 1, 443), ev(1, "a", 2, 1, 80)]),
            &mut out,
        )
        .unwrap();
        assert_eq!(String::from_utf8(out.clone()).unwrap().lines().count(), 1);
        assert_eq!(
            t.handle(
                Msg::Health(Health {
                    ringbuf_full: 0,
                    ..Default::default()
                }),
                &mut out
            )
            .unwrap(),
            None
        );
        let w = t
            .handle(
                Msg::Health(Health {
                    ringbuf_full: 7,
                    ..Default::default()
                }),
                &mut out,
            )
            .unwrap();
        assert!(w.unwrap().contains("7 events dropped"));
        let w = t
            .handle(
                Msg::Health(Health {
                    ringbuf_full: 7,
                    ..Default::default()
                }),
                &mut out,
            )
            .unwrap();
        assert_eq!(w, None, "only new drops warn");
        let s = t.summary();
        assert!(s.starts_with("2 events seen, 1 shown, 7 dropped"), "{s}");
    }
}
