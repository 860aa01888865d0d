//! `diag tail`: one line per event, text or JSON.

use std::{
    io::{self, Write},
    net::{Ipv4Addr, Ipv6Addr},
    process::ExitCode,
};

use diag_common::{
    comm_bytes,
    sched::StallEvent,
    tcp::{AF_INET6, TcpStateEvent, attribution, state_name},
    user::AnyEvent,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    Msg,
    cli::{EventClass, Family, TailArgs},
    clock::WallClock,
    loader, probes,
    source::{Health, live::Live},
};

/// Which events `tail` shows.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
    pub ports: Vec<u16>,
    pub family: Option<Family>,
}

impl Filter {
    pub fn from_args(a: &TailArgs) -> Self {
        Filter {
            pids: a.pid.clone(),
            comms: a.comm.clone(),
            ports: a.port.clone(),
            family: a.family,
        }
    }

    pub fn matches(&self, ev: &AnyEvent) -> bool {
        let h = ev.header();
        // A stall also matches its villain's pid.
        let villain = match ev {
            AnyEvent::Stall(s) => [s.villain_tgid, s.villain_pid],
            _ => [h.tgid, h.pid],
        };
        if !self.pids.is_empty()
            && !self
                .pids
                .iter()
                .any(|&p| p == h.tgid || p == h.pid || villain.contains(&p))
        {
            return false;
        }
        if !self.comms.is_empty() {
            let comm = comm_bytes(&h.comm);
            if !self.comms.iter().any(|c| c.as_bytes() == comm) {
                return false;
            }
        }
        match ev {
            AnyEvent::TcpState(t) => {
                if !self.ports.is_empty()
                    && !self.ports.iter().any(|&p| p == t.sport || p == t.dport)
                {
                    return false;
                }
                match self.family {
                    Some(Family::V4) => t.family != AF_INET6,
                    Some(Family::V6) => t.family == AF_INET6,
                    None => true,
                }
            }
            AnyEvent::Stall(_) => true,
        }
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

pub fn format_text(ev: &AnyEvent, clock: &WallClock) -> String {
    match ev {
        AnyEvent::TcpState(t) => tcp_text(t, clock),
        AnyEvent::Stall(s) => stall_text(s, clock),
    }
}

fn stall_text(s: &StallEvent, clock: &WallClock) -> String {
    let h = &s.header;
    let villain = if s.villain_pid == 0 {
        "the CPU was idle".to_string()
    } else {
        format!(
            "ran: {} {} (tid {})",
            s.villain_tgid,
            comm_string(&s.villain_comm),
            s.villain_pid
        )
    };
    format!(
        "{:<16} {:<8} {:<16} STALL waited {} for CPU {} (tid {}); before it {}",
        clock.wall(h.ts_ns).format("%H:%M:%S%.6f"),
        h.tgid,
        comm_string(&h.comm),
        human_ns(s.wait_ns),
        h.cpu,
        h.pid,
        villain,
    )
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

pub fn format_json(ev: &AnyEvent, clock: &WallClock) -> String {
    match ev {
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
        AnyEvent::Stall(s) => {
            let h = &s.header;
            serde_json::json!({
                "time": clock.wall(h.ts_ns).to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "ts_ns": h.ts_ns,
                "event": "stall",
                "pid": h.tgid,
                "tid": h.pid,
                "comm": comm_string(&h.comm),
                "cpu": h.cpu,
                "wait_ns": s.wait_ns,
                "villain_pid": s.villain_tgid,
                "villain_tid": s.villain_pid,
                "villain_comm": comm_string(&s.villain_comm),
            })
            .to_string()
        }
    }
}

/// The tail sink's state: pure, driven by messages.
pub struct Tail {
    pub filter: Filter,
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
                            format_json(ev, &self.clock)
                        } else {
                            format_text(ev, &self.clock)
                        };
                        writeln!(out, "{line}")?;
                    }
                }
                out.flush()?;
                Ok(None)
            }
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
                let new_sched = (h.sched_task_map_full + h.sched_proc_map_full)
                    .saturating_sub(before.sched_task_map_full + before.sched_proc_map_full);
                if new_sched > 0 {
                    warn.push(format!(
                        "{new_sched} scheduler updates not tracked: task or process map full"
                    ));
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

/// Resolves on SIGINT, SIGTERM or SIGHUP.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
        _ = hup.recv() => {}
    }
}

/// `diag tail`.
pub fn run(args: TailArgs) -> anyhow::Result<ExitCode> {
    let env = loader::require(&args.probe)?;
    let sched = if args.events.contains(&EventClass::Stall) {
        let threshold = u64::try_from(args.stall_threshold.as_nanos()).unwrap_or(u64::MAX);
        Some(probes::sched::layout(&args.probe.btf, threshold)?)
    } else {
        None
    };
    let families = loader::Families {
        tcp: args.events.contains(&EventClass::Tcp),
        sched,
    };
    let tracer = loader::load_families(&env, &args.probe, &families)?;
    let live = Live::new(tracer)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let cancel = CancellationToken::new();
        let (tx, mut rx) = mpsc::channel::<Msg>(1024);
        eprintln!(
            "diag: tracing {}; Ctrl-C to stop",
            live.attached().join(", ")
        );
        let source = tokio::spawn(live.run(tx, cancel.clone()));
        let sig = cancel.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            sig.cancel();
        });

        let mut tail = Tail {
            filter: Filter::from_args(&args),
            json: args.json,
            clock: WallClock::now(),
            seen: 0,
            shown: 0,
            health: Health::default(),
        };
        let stdout = io::stdout();
        let mut out = io::BufWriter::new(stdout.lock());
        if !args.json && args.events.contains(&EventClass::Tcp) {
            writeln!(out, "{TEXT_HEADER}")?;
            out.flush()?;
        }
        let mut broken_pipe = false;
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
        source.await??;
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
        let line = format_text(&ev(100, "curl", 2, 40000, 443), &clock);
        assert!(line.contains(" 100 "), "{line}");
        assert!(line.contains("curl"));
        assert!(line.contains("127.0.0.1:40000"));
        assert!(line.contains("10.0.0.5:443"));
        assert!(line.contains("SYN_SENT -> ESTABLISHED"));
        assert!(line.contains("2.50ms"));
        assert!(line.ends_with("socket"));
        let line6 = format_text(&ev(1, "x", AF_INET6, 80, 51000), &clock);
        assert!(
            line6.contains("[::1]:80") && line6.contains("[::1]:51000"),
            "{line6}"
        );
    }

    #[test]
    fn json_line() {
        let clock = WallClock::with_offset_ns(1_700_000_000_000_000_000);
        let v: serde_json::Value =
            serde_json::from_str(&format_json(&ev(100, "curl", 2, 40000, 443), &clock)).unwrap();
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

    #[test]
    fn stall_lines() {
        let mut header = EventHeader::zeroed();
        header.kind = EventKind::Stall as u32;
        header.tgid = 300;
        header.pid = 301;
        header.cpu = 1;
        header.comm[..6].copy_from_slice(b"victim");
        let mut villain_comm = [0u8; 16];
        villain_comm[..3].copy_from_slice(b"hog");
        let s = AnyEvent::Stall(StallEvent {
            header,
            wait_ns: 12_500_000,
            villain_pid: 401,
            villain_tgid: 400,
            villain_comm,
        });
        let clock = WallClock::with_offset_ns(0);
        let line = format_text(&s, &clock);
        assert!(
            line.contains("victim") && line.contains("12.50ms"),
            "{line}"
        );
        assert!(
            line.contains("CPU 1") && line.contains("400 hog (tid 401)"),
            "{line}"
        );
        let v: serde_json::Value = serde_json::from_str(&format_json(&s, &clock)).unwrap();
        assert_eq!(v["event"], "stall");
        assert_eq!(v["pid"], 300);
        assert_eq!(v["wait_ns"], 12_500_000);
        assert_eq!(v["villain_pid"], 400);
        assert_eq!(v["villain_comm"], "hog");
        let by_villain = Filter {
            pids: vec![400],
            ..Default::default()
        };
        assert!(by_villain.matches(&s));
        let other = Filter {
            pids: vec![7],
            ..Default::default()
        };
        assert!(!other.matches(&s));
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
