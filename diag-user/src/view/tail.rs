//! `diag tail`: one line per event, text or JSON.

use std::io::{self, Write};

use std::collections::HashMap;

use diag_common::{
    EventKind,
    lock::LockWaitEvent,
    memory::{MemStallEvent, stall_kind},
    oom::{OomKillEvent, constraint, memcg_how},
    proc::{ProcExitEvent, exit_flags},
    sched::StallEvent,
    tcp::{
        AF_INET6, TcpCloseEvent, TcpDropEvent, TcpSockEvent, TcpStateEvent, attribution, closed_by,
        drop_cause, state_name,
    },
    user::AnyEvent,
};

pub use crate::aggregate::filter::{Filter, class_of};
use crate::{
    aggregate::oom::OomStats,
    bus::Health,
    bus::{End, Msg, new_losses},
    cli::{EventClass, TailView},
    clock::WallClock,
    enrich::oom::OomContext,
    placement::Placement,
    sink::{Flow, Sink},
    sys::page_kb,
    view::{
        fmt::{address, endpoint, human_kb, human_ns, human_us},
        out::{Output, flow_of},
    },
};

/// Names the kernel gives to numbers in events, read from tracefs at load
/// time (they change between kernel versions).
#[derive(Debug, Clone, Default)]
pub struct Names {
    pub rst_reasons: HashMap<i64, String>,
    /// `enum skb_drop_reason` (`skb:kfree_skb`).
    pub drop_reasons: HashMap<i64, String>,
}

impl Names {
    /// The names this kernel uses (read from tracefs by the loader).
    pub fn of_env(env: &crate::loader::Env) -> Self {
        Names {
            rst_reasons: env
                .tcp
                .as_ref()
                .map(|t| t.rst_reasons.iter().cloned().collect())
                .unwrap_or_default(),
            drop_reasons: env
                .tcp
                .as_ref()
                .map(|t| t.drop_reasons.iter().cloned().collect())
                .unwrap_or_default(),
        }
    }

    /// The names recorded in a recording's header.
    pub fn of_header(h: &crate::record::RecordingHeader) -> Self {
        Names {
            rst_reasons: h.rst_reasons.iter().cloned().collect(),
            drop_reasons: h.drop_reasons.iter().cloned().collect(),
        }
    }

    pub fn drop_reason(&self, r: u32) -> String {
        self.drop_reasons
            .get(&i64::from(r))
            .cloned()
            .unwrap_or_else(|| r.to_string())
    }

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
        Ok(EventKind::TcpAccepted) if t.reason > 0 => {
            format!("ACCEPTED in {} (was {})", state_name(t.state), t.reason)
        }
        Ok(EventKind::TcpAccepted) => format!("ACCEPTED in {}", state_name(t.state)),
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
        Ok(EventKind::TcpAccepted) => "tcp_accepted",
        _ => "unknown",
    }
}

fn comm_string(comm: &[u8; 16]) -> String {
    crate::text::comm(comm)
}

pub const TEXT_HEADER: &str = "TIME             PID      COMM             LOCAL                    REMOTE                   TRANSITION                 IN-OLD     ATTR";

/// The header when only connection summaries are shown: the first seven
/// columns are the TCP header's (`CLOSED by ...` in TRANSITION, the
/// duration in IN-OLD).
pub const CLOSE_HEADER: &str = "TIME             PID      COMM             LOCAL                    REMOTE                   CLOSED BY                  DURATION             TX           RX RETRANS       RTT";

/// The header when only OOM kills are shown (their lines are free-form
/// after the first three columns; with TCP, the TCP header is used).
pub const OOM_HEADER: &str = "TIME             PID      COMM             OOM KILL";
/// Neither TCP nor OOM: stalls, slow I/O, exits.
pub const EVENT_HEADER: &str = "TIME             PID      COMM             EVENT";
/// The header when only lock waits (and exits) are shown.
pub const LOCK_HEADER: &str = "TIME             PID      COMM             LOCK WAIT";
/// `--events memstall` (with or without exits) alone.
pub const MEMSTALL_HEADER: &str = "TIME             PID      COMM             MEMORY STALL";

fn or_dash(s: &Option<String>) -> &str {
    s.as_deref().unwrap_or("-")
}

/// One OOM kill on one line: victim, sizes, what ran out of memory,
/// cgroup, trigger, and who else was big.
pub fn oom_text(o: &OomKillEvent, ctx: &OomContext, clock: &WallClock) -> String {
    let h = &o.header;
    let scope = match o.constraint {
        constraint::MEMCG => format!(
            "memcg {} limit {} usage {}",
            or_dash(&ctx.oom_cgroup),
            human_kb(o.oom_memcg_limit_pages.saturating_mul(page_kb())),
            human_kb(o.oom_memcg_usage_pages.saturating_mul(page_kb()))
        ),
        c => constraint::name(c).to_string(),
    };
    let trigger = if h.pid == o.victim_pid {
        "itself".to_string()
    } else {
        format!(
            "{} {} cgroup {}",
            h.tgid,
            comm_string(&h.comm),
            or_dash(&ctx.trigger_cgroup)
        )
    };
    let top = if ctx.top.is_empty() {
        "-".to_string()
    } else {
        ctx.top
            .iter()
            .map(|c| format!("{} {} {}", c.pid, c.comm, human_kb(c.rss_kb)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "{:<16} {:<8} {:<16} OOM-KILL ({scope}) rss {} [anon {} file {} shmem {}] vm {} pgtables {} uid {} adj {} | cgroup {} container {} | trigger {trigger} | top in {}: {top}",
        clock.wall(h.ts_ns).format("%H:%M:%S%.6f"),
        o.victim_process(),
        comm_string(&o.victim_comm),
        human_kb(o.rss_kb()),
        human_kb(o.anon_rss_kb),
        human_kb(o.file_rss_kb),
        human_kb(o.shmem_rss_kb),
        human_kb(o.total_vm_kb),
        human_kb(o.pgtables_kb),
        o.victim_uid,
        o.oom_score_adj,
        or_dash(&ctx.victim_cgroup),
        or_dash(&ctx.container_id),
        if ctx.top_scope.is_empty() {
            "-"
        } else {
            &ctx.top_scope
        },
    )
}

/// One OOM kill as a JSON object.
pub fn oom_json(o: &OomKillEvent, ctx: &OomContext, clock: &WallClock) -> serde_json::Value {
    let h = &o.header;
    let pk = page_kb();
    let memcg = o.constraint == constraint::MEMCG;
    serde_json::json!({
        "time": clock.wall(h.ts_ns).to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "ts_ns": h.ts_ns,
        "event": "oom_kill",
        "pid": o.victim_process(),
        "tid": o.victim_pid,
        "comm": comm_string(&o.victim_comm),
        "uid": o.victim_uid,
        "cpu": h.cpu,
        "total_vm_kb": o.total_vm_kb,
        "rss_kb": o.rss_kb(),
        "anon_rss_kb": o.anon_rss_kb,
        "file_rss_kb": o.file_rss_kb,
        "shmem_rss_kb": o.shmem_rss_kb,
        "pgtables_kb": o.pgtables_kb,
        "oom_score_adj": o.oom_score_adj,
        "constraint": constraint::name(o.constraint),
        "oom_cgroup": if memcg { ctx.oom_cgroup.clone() } else { None },
        "oom_cgroup_limit_bytes": if memcg { Some(o.oom_memcg_limit_pages.saturating_mul(pk * 1024)) } else { None },
        "oom_cgroup_usage_bytes": if memcg { Some(o.oom_memcg_usage_pages.saturating_mul(pk * 1024)) } else { None },
        "cgroup": ctx.victim_cgroup,
        "container_id": ctx.container_id,
        "trigger": {
            "pid": h.tgid,
            "tid": h.pid,
            "comm": comm_string(&h.comm),
            "cgroup": ctx.trigger_cgroup,
            "is_victim": h.pid == o.victim_pid,
        },
        "oom_cgroup_found_by": memcg_how::name(o.memcg_how),
        "memcg_ino": {
            "victim": o.victim_memcg_ino,
            "trigger": o.trigger_memcg_ino,
            "oom": o.oom_memcg_ino,
        },
        "top_scope": ctx.top_scope,
        "top": ctx.top.iter().map(|c| serde_json::json!({
            "pid": c.pid, "comm": c.comm, "rss_kb": c.rss_kb,
        })).collect::<Vec<_>>(),
    })
}

pub fn format_text(ev: &AnyEvent, clock: &WallClock, names: &Names) -> String {
    match ev {
        AnyEvent::TcpState(t) => tcp_text(t, clock),
        AnyEvent::OomKill(o) => oom_text(o, &OomContext::default(), clock),
        AnyEvent::Stall(s) => stall_text(s, clock),
        AnyEvent::BlockSlow(b) => block_slow_text(b, clock),
        AnyEvent::MemStall(m) => mem_stall_text(m, &MemStallContext::default(), clock),
        AnyEvent::LockWait(l) => lock_text(l, clock),
        AnyEvent::ProcExit(x) => exit_text(x, clock),
        AnyEvent::TcpDrop(d) => drop_text(d, clock, names),
        AnyEvent::TcpClose(c) => close_text(c, clock),
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

/// How a process ended: `exit 3`, `killed by signal 9`, or unknown.
fn exit_how(x: &ProcExitEvent) -> String {
    match (x.exit_status(), x.signal()) {
        (Some(s), _) => format!("exit {s}"),
        (None, Some(sig)) => format!(
            "killed by signal {sig}{}",
            if x.exit_code & 0x80 != 0 {
                " (core dumped)"
            } else {
                ""
            }
        ),
        (None, None) => "exit status unknown".into(),
    }
}

/// How long it ran, when its start time is on the events' clock.
fn exit_ran_ns(x: &ProcExitEvent) -> Option<u64> {
    x.start_boottime_ns()
        .map(|s| x.header.ts_ns.saturating_sub(s))
}

fn exit_text(x: &ProcExitEvent, clock: &WallClock) -> String {
    let h = &x.header;
    let ran = exit_ran_ns(x)
        .map(|r| format!(" after {}", human_ns(r)))
        .unwrap_or_default();
    let last = if h.pid != h.tgid {
        format!("; last thread {} ({})", h.pid, comm_string(&h.comm))
    } else {
        String::new()
    };
    format!(
        "{:<16} {:<8} {:<16} EXIT {}{ran}{last}",
        clock.wall(h.ts_ns).format("%H:%M:%S%.6f"),
        h.tgid,
        comm_string(&x.comm),
        exit_how(x),
    )
}

fn block_slow_text(b: &diag_common::block::BlockSlowEvent, clock: &WallClock) -> String {
    let h = &b.header;
    let (maj, min) = diag_common::block::dev_parts(b.dev);
    format!(
        "{:<16} {:<8} {:<16} SLOW-IO {} {} B on {maj}:{min} (sector {}) took {}{} (tid {})",
        clock.wall(h.ts_ns).format("%H:%M:%S%.6f"),
        h.tgid,
        comm_string(&h.comm),
        crate::aggregate::block::op_name(b.op),
        b.bytes,
        b.sector,
        human_ns(b.lat_ns),
        if b.error != 0 {
            format!(", error {}", b.error)
        } else {
            String::new()
        },
        h.pid,
    )
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

/// What user space adds to a memory stall: cgroup paths and the biggest
/// memory users then (in the cgroup at its limit, or system-wide).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct MemStallContext {
    pub memcg: Option<String>,
    pub limit_cgroup: Option<String>,
    pub top: Vec<crate::enrich::oom::Consumer>,
    pub top_scope: String,
}

pub fn mem_stall_text(m: &MemStallEvent, ctx: &MemStallContext, clock: &WallClock) -> String {
    let h = &m.header;
    let pages = if m.kind == stall_kind::COMPACT {
        String::new()
    } else {
        format!(", scanned {} reclaimed {} pages", m.scanned, m.reclaimed)
    };
    let throttled = if m.throttled_ns > 0 {
        format!(", throttled {}", human_ns(m.throttled_ns))
    } else {
        String::new()
    };
    let limit = match (&ctx.limit_cgroup, m.limit_ino) {
        (_, 0) => String::new(),
        (Some(p), _) => format!(
            "; at its limit: {p} ({} of {} KiB)",
            m.usage_pages * crate::sys::page_kb(),
            m.limit_pages * crate::sys::page_kb()
        ),
        (None, ino) => format!("; at its limit: memcg ino {ino}"),
    };
    let cg = match (&ctx.memcg, m.memcg_ino) {
        (Some(p), _) => format!(" in {p}"),
        (None, 0) => String::new(),
        (None, ino) => format!(" in memcg ino {ino}"),
    };
    let top = if ctx.top.is_empty() {
        String::new()
    } else {
        format!(
            "; biggest ({}): {}",
            ctx.top_scope,
            ctx.top
                .iter()
                .map(|c| format!("{} {} {} KiB", c.pid, c.comm, c.rss_kb))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    format!(
        "{:<16} {:<8} {:<16} MEMSTALL {} {} (tid {}, order {}){pages}{throttled}{cg}{limit}{top}",
        clock.wall(h.ts_ns).format("%H:%M:%S%.6f"),
        h.tgid,
        comm_string(&h.comm),
        stall_kind::name(m.kind),
        human_ns(m.dur_ns),
        h.pid,
        m.order,
    )
}

pub fn mem_stall_json(
    m: &MemStallEvent,
    ctx: &MemStallContext,
    clock: &WallClock,
) -> serde_json::Value {
    let h = &m.header;
    serde_json::json!({
        "time": clock.wall(h.ts_ns).to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "ts_ns": h.ts_ns,
        "event": "memstall",
        "kind": stall_kind::name(m.kind),
        "pid": h.tgid,
        "tid": h.pid,
        "comm": comm_string(&h.comm),
        "duration_ns": m.dur_ns,
        "order": m.order,
        "scanned": m.scanned,
        "reclaimed": m.reclaimed,
        "throttled_ns": m.throttled_ns,
        "memcg_ino": m.memcg_ino,
        "memcg": ctx.memcg,
        "limit_memcg_ino": (m.limit_ino != 0).then_some(m.limit_ino),
        "limit_memcg": ctx.limit_cgroup,
        "limit_pages": (m.limit_ino != 0).then_some(m.limit_pages),
        "usage_pages": (m.limit_ino != 0).then_some(m.usage_pages),
        "top_scope": ctx.top_scope,
        "top": ctx.top.iter().map(|c| serde_json::json!({
            "pid": c.pid, "comm": c.comm, "rss_kb": c.rss_kb,
        })).collect::<Vec<_>>(),
    })
}

/// Who ended a lock wait, in words.
fn waker_text(l: &LockWaitEvent) -> String {
    if l.waker_pid != 0 {
        format!(
            "woken by {} {} (tid {})",
            l.waker_tgid,
            comm_string(&l.waker_comm),
            l.waker_pid
        )
    } else if i64::from(l.ret) == -diag_common::lock::ETIMEDOUT {
        "timed out".into()
    } else if i64::from(l.ret) == -diag_common::lock::EINTR || (-516..=-512).contains(&l.ret) {
        "interrupted by a signal".into()
    } else {
        "no waker seen".into()
    }
}

fn lock_text(l: &LockWaitEvent, clock: &WallClock) -> String {
    let h = &l.header;
    format!(
        "{:<16} {:<8} {:<16} LOCK waited {} on futex {:#x} (tid {}, {}); {}",
        clock.wall(h.ts_ns).format("%H:%M:%S%.6f"),
        h.tgid,
        comm_string(&h.comm),
        human_ns(l.wait_ns),
        l.uaddr,
        h.pid,
        diag_common::lock::wait_kind::name(l.kind),
        waker_text(l),
    )
}

/// The queue and backlog of a listen-queue drop, `3/2` (`?` unknown).
fn queue_text(d: &TcpDropEvent) -> String {
    let n = |v: u32| {
        if v == u32::MAX {
            "?".to_string()
        } else {
            v.to_string()
        }
    };
    format!("{}/{}", n(d.queue), n(d.backlog))
}

/// A connection lost at a listener: its address and the client's, why,
/// and the accept queue/backlog then (in the duration column).
/// A packet the kernel dropped for a socket: its two ends and the
/// kernel's reason; a count of packets dropped with no socket.
fn drop_text(d: &TcpDropEvent, clock: &WallClock, names: &Names) -> String {
    let h = &d.header;
    let what = match d.cause {
        drop_cause::SYN_ACCEPT_QUEUE_FULL => "SYN DROPPED: queue full".to_string(),
        drop_cause::ACK_ACCEPT_QUEUE_FULL => "ACK DROPPED: queue full".to_string(),
        drop_cause::REQUEST_QUEUE_FULL => "SYN DROPPED: req q full".to_string(),
        drop_cause::SOCKET => format!("DROPPED {}", names.drop_reason(d.reason)),
        drop_cause::UNOWNED => {
            format!("{} DROPPED {}", d.packets(), names.drop_reason(d.reason))
        }
        _ => "DROPPED".to_string(),
    };
    let (local, remote, queue) = match d.cause {
        drop_cause::UNOWNED => ("-".to_string(), "-".to_string(), "-".to_string()),
        drop_cause::SOCKET => (
            endpoint(d.family, &d.addr, d.port),
            endpoint(d.family, &d.raddr, d.rport),
            "-".to_string(),
        ),
        _ => (
            endpoint(d.family, &d.addr, d.port),
            endpoint(d.family, &d.raddr, d.rport),
            queue_text(d),
        ),
    };
    let (pid, comm) = match (d.cause, h.tgid) {
        (drop_cause::UNOWNED, _) => ("-".to_string(), "[no socket]".to_string()),
        (drop_cause::SOCKET, 0) => ("-".to_string(), "[unknown]".to_string()),
        _ => (h.tgid.to_string(), comm_string(&h.comm)),
    };
    format!(
        "{:<16} {:<8} {:<16} {:<24} {:<24} {:<26} {:<10} {}",
        clock.wall(h.ts_ns).format("%H:%M:%S%.6f"),
        pid,
        comm,
        local,
        remote,
        what,
        queue,
        attribution::name(d.attribution),
    )
}

/// A finished connection: who closed it, how long it lived, bytes acked
/// (tx) and received (rx), segments retransmitted, smoothed RTT.
fn close_text(c: &TcpCloseEvent, clock: &WallClock) -> String {
    let h = &c.header;
    let duration = if c.duration_ns == 0 {
        // A socket older than diag: its start was not seen.
        "?".to_string()
    } else {
        human_ns(c.duration_ns)
    };
    let rtt = human_us((c.srtt_us != 0).then_some(c.srtt_us));
    format!(
        "{:<16} {:<8} {:<16} {:<24} {:<24} {:<26} {:<10} {:>12} {:>12} {:>7} {:>9}",
        clock.wall(h.ts_ns).format("%H:%M:%S%.6f"),
        h.tgid,
        comm_string(&h.comm),
        endpoint(c.family, &c.saddr, c.sport),
        endpoint(c.family, &c.daddr, c.dport),
        format!("CLOSED by {}", closed_by::name(c.closed_by)),
        duration,
        c.bytes_acked,
        c.bytes_received,
        c.total_retrans,
        rtt,
    )
}

/// The error a transition to CLOSE carries: always for a failed connect
/// (SYN_SENT -> CLOSE: the errno name, `closed` when the kernel set none,
/// `unknown` when it was not read), else the errno name when the kernel
/// set one.
pub fn close_error(t: &TcpStateEvent) -> Option<String> {
    use crate::aggregate::connfail::{errno_name, failure_name};
    if t.new_state != diag_common::tcp::state::CLOSE {
        return None;
    }
    if t.old_state == diag_common::tcp::state::SYN_SENT {
        return Some(failure_name(t.err_known != 0, t.err));
    }
    (t.err_known != 0 && t.err != 0).then(|| errno_name(t.err.saturating_abs()))
}

fn tcp_text(t: &TcpStateEvent, clock: &WallClock) -> String {
    let line = tcp_text_fields(t, clock);
    match close_error(t) {
        Some(e) => format!("{line} error={e}"),
        None => line,
    }
}

fn tcp_text_fields(t: &TcpStateEvent, clock: &WallClock) -> String {
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

/// The fields every TCP event has, as JSON.
#[allow(clippy::too_many_arguments)]
fn tcp_json(
    event: &str,
    h: &diag_common::EventHeader,
    clock: &WallClock,
    family: u16,
    (saddr, sport): (&[u8; 16], u16),
    (daddr, dport): (&[u8; 16], u16),
    how: u8,
    current_tgid: u32,
    skaddr: u64,
    netns: u32,
) -> serde_json::Value {
    serde_json::json!({
        "time": clock.wall(h.ts_ns).to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "ts_ns": h.ts_ns,
        "event": event,
        "pid": h.tgid,
        "tid": h.pid,
        "comm": comm_string(&h.comm),
        "cpu": h.cpu,
        "family": if family == AF_INET6 { 6 } else { 4 },
        "saddr": address(family, saddr),
        "sport": sport,
        "daddr": address(family, daddr),
        "dport": dport,
        "attribution": attribution::name(how),
        "current_pid": current_tgid,
        "skaddr": format!("{skaddr:#x}"),
        "netns": netns,
    })
}

pub fn format_json(ev: &AnyEvent, clock: &WallClock, names: &Names) -> String {
    json_value(ev, clock, names).to_string()
}

/// [`format_json`], with where the event's process runs (live).
pub fn format_json_placed(
    ev: &AnyEvent,
    clock: &WallClock,
    names: &Names,
    place: &Placement,
) -> String {
    let mut v = json_value(ev, clock, names);
    v["cgroup"] = place.cgroup.clone().into();
    v["container"] = place.container.clone().into();
    v.to_string()
}

fn json_value(ev: &AnyEvent, clock: &WallClock, names: &Names) -> serde_json::Value {
    match ev {
        AnyEvent::ProcExit(x) => {
            let h = &x.header;
            serde_json::json!({
                "time": clock.wall(h.ts_ns).to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "ts_ns": h.ts_ns,
                "event": "exit",
                "pid": h.tgid,
                "comm": comm_string(&x.comm),
                "tid": h.pid,
                "thread_comm": comm_string(&h.comm),
                "start_ns": (x.flags & exit_flags::NO_START == 0).then_some(x.start_ns),
                "start_clock": if x.flags & exit_flags::START_BOOTTIME != 0 { "boottime" } else { "monotonic" },
                "ran_ns": exit_ran_ns(x),
                "exit_status": x.exit_status(),
                "signal": x.signal(),
                "group_dead": x.flags & exit_flags::GROUP_DEAD != 0,
            })
        }
        AnyEvent::OomKill(o) => oom_json(o, &OomContext::default(), clock),
        AnyEvent::MemStall(m) => mem_stall_json(m, &MemStallContext::default(), clock),
        AnyEvent::TcpClose(c) => {
            let mut v = tcp_json(
                "tcp_close",
                &c.header,
                clock,
                c.family,
                (&c.saddr, c.sport),
                (&c.daddr, c.dport),
                c.attribution,
                c.current_tgid,
                c.skaddr,
                c.netns,
            );
            v["duration_ns"] = (c.duration_ns != 0).then_some(c.duration_ns).into();
            v["bytes_acked"] = c.bytes_acked.into();
            v["bytes_sent"] = c.bytes_sent.into();
            v["bytes_received"] = c.bytes_received.into();
            v["total_retrans"] = c.total_retrans.into();
            v["srtt_us"] = (c.srtt_us != 0).then_some(c.srtt_us).into();
            v["closed_by"] = closed_by::name(c.closed_by).into();
            v["old_state"] = state_name(c.old_state).into();
            v
        }
        AnyEvent::TcpDrop(d) if d.cause == drop_cause::UNOWNED => {
            let h = &d.header;
            serde_json::json!({
                "time": clock.wall(h.ts_ns).to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "ts_ns": h.ts_ns,
                "event": "tcp_unowned_drops",
                "reason": names.drop_reason(d.reason),
                "reason_code": d.reason,
                "count": d.packets(),
            })
        }
        AnyEvent::TcpDrop(d) if d.cause == drop_cause::SOCKET => {
            let mut v = drop_json("tcp_drop", d, clock);
            if d.header.tgid == 0 {
                v["pid"] = serde_json::Value::Null;
                v["comm"] = serde_json::Value::Null;
            }
            v["reason"] = names.drop_reason(d.reason).into();
            v["reason_code"] = d.reason.into();
            v["count"] = d.packets().into();
            v
        }
        AnyEvent::TcpDrop(d) => {
            let mut v = drop_json("tcp_listen_drop", d, clock);
            v["cause"] = drop_cause::name(d.cause).into();
            v["overflow"] = drop_cause::is_overflow(d.cause).into();
            v["reason"] = d.reason.into();
            let known = |x: u32| (x != u32::MAX).then_some(x);
            v["queue"] = known(d.queue).into();
            v["backlog"] = known(d.backlog).into();
            v
        }
        AnyEvent::BlockSlow(b) => {
            let h = &b.header;
            let (maj, min) = diag_common::block::dev_parts(b.dev);
            serde_json::json!({
                "time": clock.wall(h.ts_ns).to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "ts_ns": h.ts_ns,
                "event": "slow_io",
                "pid": h.tgid,
                "tid": h.pid,
                "comm": comm_string(&h.comm),
                "dev": format!("{maj}:{min}"),
                "op": crate::aggregate::block::op_name(b.op),
                "bytes": b.bytes,
                "sector": b.sector,
                "lat_ns": b.lat_ns,
                "error": b.error,
            })
        }
        AnyEvent::LockWait(l) => {
            let h = &l.header;
            serde_json::json!({
                "time": clock.wall(h.ts_ns).to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "ts_ns": h.ts_ns,
                "event": "lock_wait",
                "pid": h.tgid,
                "tid": h.pid,
                "comm": comm_string(&h.comm),
                "cpu": h.cpu,
                "uaddr": format!("{:#x}", l.uaddr),
                "wait_ns": l.wait_ns,
                "kind": diag_common::lock::wait_kind::name(l.kind),
                "ret": l.ret,
                "waker_pid": (l.waker_pid != 0).then_some(l.waker_tgid),
                "waker_tid": (l.waker_pid != 0).then_some(l.waker_pid),
                "waker_comm": (l.waker_pid != 0).then(|| comm_string(&l.waker_comm)),
                "waker": waker_text(l),
            })
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
        }
        AnyEvent::TcpSock(t) => {
            let h = &t.header;
            let mut v = tcp_json(
                sock_event_name(t),
                h,
                clock,
                t.family,
                (&t.saddr, t.sport),
                (&t.daddr, t.dport),
                t.attribution,
                t.current_tgid,
                t.skaddr,
                t.netns,
            );
            v["state"] = if t.state == 0 {
                serde_json::Value::Null
            } else {
                state_name(t.state).into()
            };
            match EventKind::try_from(h.kind) {
                Ok(EventKind::TcpResetSent) => v["reason"] = names.rst_reason(t.reason).into(),
                Ok(EventKind::TcpRetransmit) => v["err"] = t.reason.into(),
                Ok(EventKind::TcpAccepted) => {
                    v["previous_pid"] = (t.reason > 0).then_some(t.reason).into();
                }
                _ => {}
            }
            v
        }
        AnyEvent::TcpState(t) => {
            let mut v = tcp_json(
                "tcp_state",
                &t.header,
                clock,
                t.family,
                (&t.saddr, t.sport),
                (&t.daddr, t.dport),
                t.attribution,
                t.current_tgid,
                t.skaddr,
                t.netns,
            );
            v["old_state"] = state_name(t.old_state).into();
            v["new_state"] = state_name(t.new_state).into();
            v["in_old_state_ns"] = if t.in_old_state_ns == 0 {
                serde_json::Value::Null
            } else {
                t.in_old_state_ns.into()
            };
            // A passive open: the listener's accept queue with it, as ss
            // -lnt shows it (Recv-Q, Send-Q).
            if t.listen_queue != diag_common::tcp::NO_FIELD {
                v["accept_queue"] = t.listen_queue.into();
                v["backlog"] = t.listen_backlog.into();
            }
            if t.new_state == diag_common::tcp::state::CLOSE {
                v["error"] = close_error(t).into();
                v["errno"] = (t.err_known != 0 && t.err != 0)
                    .then_some(t.err.saturating_abs())
                    .into();
            }
            v
        }
    }
}

/// A drop event's common JSON fields: the local end is the socket's (or
/// the listener's), the remote end the packet's sender.
fn drop_json(event: &str, d: &TcpDropEvent, clock: &WallClock) -> serde_json::Value {
    tcp_json(
        event,
        &d.header,
        clock,
        d.family,
        (&d.addr, d.port),
        (&d.raddr, d.rport),
        d.attribution,
        d.current_tgid,
        d.skaddr,
        d.netns,
    )
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
    /// OOM kills that passed the filter, waiting for their user-space
    /// context (cgroup paths, top consumers) before they are shown.
    pub oom_queue: Vec<OomKillEvent>,
    /// OOM kill counters.
    pub oom: OomStats,
    /// `--cgroup`: only processes in these cgroups or containers.
    pub cgroups: Vec<String>,
    /// Where each event's process runs, as the live source said (None:
    /// a replay, which does not know). JSON lines carry the cgroup and
    /// container, and `--cgroup` needs them.
    pub placements: Option<HashMap<u32, Placement>>,
    /// Live: cgroup paths and top memory users for memory stalls.
    pub mem_enrich: Option<crate::enrich::memory::MemEnricher>,
}

impl Tail {
    /// Show an OOM kill with what user space learned about it.
    pub fn show_oom(
        &mut self,
        o: &OomKillEvent,
        ctx: &OomContext,
        out: &mut impl Write,
    ) -> io::Result<()> {
        let victim_cgroup = ctx.victim_cgroup.as_deref();
        let victim_container = victim_cgroup.and_then(crate::enrich::container_id);
        if !crate::aggregate::filter::cgroup_matches(
            &self.cgroups,
            victim_cgroup,
            victim_container.as_deref(),
        ) {
            return Ok(());
        }
        self.shown += 1;
        self.oom
            .eat(o, ctx.victim_cgroup.as_deref(), ctx.oom_cgroup.as_deref());
        let line = if self.json {
            oom_json(o, ctx, &self.clock).to_string()
        } else {
            oom_text(o, ctx, &self.clock)
        };
        writeln!(out, "{line}")?;
        out.flush()
    }

    /// Write what `msg` shows; returns a warning for stderr when the
    /// kernel reported new losses.
    pub fn handle(&mut self, msg: &Msg, out: &mut impl Write) -> io::Result<Option<String>> {
        match msg {
            Msg::Events(evs) => {
                for ev in evs {
                    self.seen += 1;
                    if let AnyEvent::OomKill(o) = ev {
                        if self.filter.matches(ev) {
                            self.oom_queue.push(*o);
                        }
                        continue;
                    }
                    if !self.filter.matches(ev) {
                        continue;
                    }
                    let tgid = ev.header().tgid;
                    let place = self
                        .placements
                        .as_ref()
                        .map(|p| p.get(&tgid).cloned().unwrap_or_default());
                    if let AnyEvent::ProcExit(_) = ev
                        && let Some(p) = &mut self.placements
                    {
                        p.remove(&tgid);
                    }
                    if !self.cgroups.is_empty()
                        && !place.as_ref().is_some_and(|p| p.is_in(&self.cgroups))
                    {
                        continue;
                    }
                    self.shown += 1;
                    let mem_ctx = match (ev, self.mem_enrich.as_mut()) {
                        (AnyEvent::MemStall(m), Some(e)) => Some((m, e.context(m))),
                        _ => None,
                    };
                    let line = match (self.json, &place, mem_ctx) {
                        (true, place, Some((m, ctx))) => {
                            let mut v = mem_stall_json(m, &ctx, &self.clock);
                            if let Some(p) = place {
                                v["cgroup"] = p.cgroup.clone().into();
                                v["container"] = p.container.clone().into();
                            }
                            v.to_string()
                        }
                        (false, _, Some((m, ctx))) => mem_stall_text(m, &ctx, &self.clock),
                        (true, Some(p), None) => {
                            format_json_placed(ev, &self.clock, &self.names, p)
                        }
                        (true, None, None) => format_json(ev, &self.clock, &self.names),
                        _ => format_text(ev, &self.clock, &self.names),
                    };
                    writeln!(out, "{line}")?;
                }
                out.flush()?;
                Ok(None)
            }
            Msg::Damage(what) => Ok(Some(what.clone())),
            Msg::Placements(new) => {
                if let Some(p) = &mut self.placements {
                    p.extend(new.iter().cloned());
                }
                Ok(None)
            }
            Msg::Health(h) => {
                let warn = new_losses(&self.health, h);
                self.health = *h;
                Ok((!warn.is_empty()).then(|| format!("WARNING: {}", warn.join("; "))))
            }
            _ => Ok(None),
        }
    }

    /// OOM kills seen, per cgroup and per command, for the exit summary;
    /// None when there were none.
    pub fn oom_summary(&self) -> Option<String> {
        let s = &self.oom;
        if s.total == 0 {
            return None;
        }
        let top = |m: &std::collections::BTreeMap<String, crate::aggregate::oom::KillCount>| {
            let mut v: Vec<_> = m.iter().map(|(k, c)| (c.kills, k.as_str())).collect();
            v.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
            v.iter()
                .take(3)
                .map(|(n, k)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        Some(format!(
            "{} OOM kills ({} memcg, {} global); by cgroup: {}; by command: {}",
            s.total,
            s.memcg,
            s.global,
            top(&s.by_cgroup),
            top(&s.by_comm)
        ))
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
            oom_queue: Vec::new(),
            oom: OomStats::default(),
            cgroups: view.cgroup.clone(),
            placements: None,
            mem_enrich: None,
        }
    }

    /// The closing lines: OOM kills (if any) and the event summary.
    pub fn closing(&self) -> Vec<String> {
        let mut v: Vec<String> = self.oom_summary().into_iter().collect();
        v.push(self.summary());
        v
    }
}

/// The tail sink: lines to standard output (never blocking the loop),
/// warnings and the closing summary to standard error. OOM kills wait
/// for their context (it follows each kill closely, live and in
/// recordings); kills still waiting at the end are shown with what the
/// kernel said.
pub struct TailSink {
    pub tail: Tail,
    out: Output,
    held: std::collections::VecDeque<OomKillEvent>,
}

impl TailSink {
    pub fn new(tail: Tail, out: Output) -> Self {
        TailSink {
            tail,
            out,
            held: Default::default(),
        }
    }

    /// The column header, for text output.
    pub fn header(&mut self) -> anyhow::Result<Flow> {
        if self.tail.json {
            return Ok(Flow::More);
        }
        let f = &self.tail.filter;
        let tcp = f.events.is_empty()
            || f.events.iter().any(|e| {
                matches!(
                    e,
                    EventClass::Tcp
                        | EventClass::Reset
                        | EventClass::Retrans
                        | EventClass::Drop
                        | EventClass::Close
                )
            });
        let only_close = !f.events.is_empty()
            && f.events
                .iter()
                .all(|e| matches!(e, EventClass::Close | EventClass::Exit));
        let only_lock = !f.events.is_empty()
            && f.events.contains(&EventClass::Lock)
            && f.events
                .iter()
                .all(|e| matches!(e, EventClass::Lock | EventClass::Exit));
        let only_memstall = !f.events.is_empty()
            && f.events.contains(&EventClass::Memstall)
            && f.events
                .iter()
                .all(|e| matches!(e, EventClass::Memstall | EventClass::Exit));
        let header = if only_close {
            CLOSE_HEADER
        } else if only_lock {
            LOCK_HEADER
        } else if only_memstall {
            MEMSTALL_HEADER
        } else if tcp {
            TEXT_HEADER
        } else if f.events.contains(&EventClass::Oom) || f.events.is_empty() {
            OOM_HEADER
        } else {
            EVENT_HEADER
        };
        let r = writeln!(self.out, "{header}").and_then(|_| self.out.flush());
        flow_of(r)
    }

    fn show_held(&mut self) -> io::Result<()> {
        while let Some(ev) = self.held.pop_front() {
            self.tail
                .show_oom(&ev, &OomContext::default(), &mut self.out)?;
        }
        Ok(())
    }
}

impl Sink for TailSink {
    fn on_msg(&mut self, msg: &Msg) -> anyhow::Result<Flow> {
        let r = match msg {
            Msg::OomContext(f) => match self.held.iter().position(|k| f.is_for(k)) {
                Some(i) => {
                    let k = self.held.remove(i).expect("found");
                    self.tail.show_oom(&k, &f.ctx, &mut self.out)
                }
                None => Ok(()),
            },
            msg => self.tail.handle(msg, &mut self.out).map(|w| {
                if let Some(warn) = w {
                    tracing::warn!("{warn}");
                }
            }),
        };
        self.held.extend(self.tail.oom_queue.drain(..));
        flow_of(r)
    }

    fn finish(&mut self, end: &End) -> anyhow::Result<Flow> {
        let r = self.show_held();
        self.out.close(std::time::Duration::from_secs(1));
        self.tail.health = end.health;
        for line in self.tail.closing() {
            tracing::info!("{line}");
        }
        if let Some(l) = self.out.losses() {
            tracing::warn!("WARNING: {l}");
        }
        flow_of(r).map(|_| Flow::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Family, Only};
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
            err_known: 0,
            _pad: [0; 2],
            current_tgid: 99,
            netns: 0,
            listen_queue: diag_common::tcp::NO_FIELD,
            listen_backlog: diag_common::tcp::NO_FIELD,
            err: 0,
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

    #[test]
    fn close_lines_text_json_and_class() {
        let clock = WallClock::with_offset_ns(0);
        let c = crate::aggregate::close::close_event(
            100,
            "curl",
            0x10,
            40000,
            443,
            5,
            300_500_000,
            (1002, 2001),
            49,
            closed_by::LOCAL,
        );
        let ev = AnyEvent::TcpClose(c);
        let line = format_text(&ev, &clock, &Names::default());
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            cols[1..],
            [
                "100",
                "curl",
                "127.0.0.1:40000",
                "127.0.0.1:443",
                "CLOSED",
                "by",
                "local",
                "300.50ms",
                "1002",
                "2001",
                "0",
                "49.0us"
            ],
            "{line}"
        );
        // The header's columns line up with the line's.
        assert_eq!(
            CLOSE_HEADER.find("DURATION"),
            line.find("300.50ms"),
            "{CLOSE_HEADER}\n{line}"
        );
        let v: serde_json::Value =
            serde_json::from_str(&format_json(&ev, &clock, &Names::default())).unwrap();
        assert_eq!(v["event"], "tcp_close");
        assert_eq!(v["pid"], 100);
        assert_eq!(v["duration_ns"], 300_500_000);
        assert_eq!(
            (v["bytes_acked"].clone(), v["bytes_received"].clone()),
            (1002.into(), 2001.into())
        );
        assert_eq!(v["bytes_sent"], 1002);
        assert_eq!(
            (v["srtt_us"].clone(), v["total_retrans"].clone()),
            (49.into(), 0.into())
        );
        assert_eq!(v["closed_by"], "local");
        assert_eq!(v["old_state"], "FIN_WAIT2");
        // Older than diag: no duration, none invented; no RTT sample.
        let mut old = c;
        old.duration_ns = 0;
        old.srtt_us = 0;
        let ev_old = AnyEvent::TcpClose(old);
        let line = format_text(&ev_old, &clock, &Names::default());
        assert_eq!(line.split_whitespace().nth(8), Some("?"), "{line}");
        assert!(line.trim_end().ends_with(" -"), "{line}");
        let v: serde_json::Value =
            serde_json::from_str(&format_json(&ev_old, &clock, &Names::default())).unwrap();
        assert!(v["duration_ns"].is_null() && v["srtt_us"].is_null(), "{v}");
        // Off by default; shown when asked for, by port too.
        let default = Filter::from_args(&TailView::default());
        assert!(!default.matches(&ev));
        let close = Filter {
            events: vec![EventClass::Close],
            ports: vec![443],
            ..Default::default()
        };
        assert!(close.matches(&ev));
        assert!(!close.matches(&ev_with_port(c, 8080)));
    }

    fn ev_with_port(mut c: TcpCloseEvent, port: u16) -> AnyEvent {
        c.dport = port;
        AnyEvent::TcpClose(c)
    }

    #[test]
    fn failed_connects_name_their_error() {
        let clock = WallClock::with_offset_ns(0);
        let names = Names::default();
        let close = |old: u8, known: u8, err: i32| match ev(100, "curl", 2, 40000, 9) {
            AnyEvent::TcpState(mut t) => {
                t.old_state = old;
                t.new_state = diag_common::tcp::state::CLOSE;
                t.err_known = known;
                t.err = err;
                AnyEvent::TcpState(t)
            }
            _ => unreachable!(),
        };
        use diag_common::tcp::state::{ESTABLISHED, SYN_SENT};
        let refused = close(SYN_SENT, 1, 111);
        let line = format_text(&refused, &clock, &names);
        assert!(
            line.contains("SYN_SENT -> CLOSE") && line.ends_with(" error=ECONNREFUSED"),
            "{line}"
        );
        let v: serde_json::Value =
            serde_json::from_str(&format_json(&refused, &clock, &names)).unwrap();
        assert_eq!(
            (&v["error"], &v["errno"]),
            (&"ECONNREFUSED".into(), &111.into())
        );
        let v: serde_json::Value =
            serde_json::from_str(&format_json(&close(SYN_SENT, 1, 110), &clock, &names)).unwrap();
        assert_eq!(v["error"], "ETIMEDOUT");
        // The process closed it first; an old recording says nothing.
        let v: serde_json::Value =
            serde_json::from_str(&format_json(&close(SYN_SENT, 1, 0), &clock, &names)).unwrap();
        assert_eq!(
            (&v["error"], &v["errno"]),
            (&"closed".into(), &serde_json::Value::Null)
        );
        let v: serde_json::Value =
            serde_json::from_str(&format_json(&close(SYN_SENT, 0, 0), &clock, &names)).unwrap();
        assert_eq!(v["error"], "unknown");
        // A reset connection; a clean close has no error.
        let line = format_text(&close(ESTABLISHED, 1, 104), &clock, &names);
        assert!(line.ends_with(" error=ECONNRESET"), "{line}");
        let v: serde_json::Value =
            serde_json::from_str(&format_json(&close(ESTABLISHED, 1, 0), &clock, &names)).unwrap();
        assert!(v["error"].is_null(), "{v}");
        let line = format_text(&ev(100, "curl", 2, 40000, 443), &clock, &names);
        assert!(!line.contains("error="), "{line}");
        let v: serde_json::Value = serde_json::from_str(&format_json(
            &ev(100, "curl", 2, 40000, 443),
            &clock,
            &names,
        ))
        .unwrap();
        assert!(v.get("error").is_none(), "{v}");
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
            netns: 0,
            _pad: 0,
        })
    }

    #[test]
    fn accepts_and_namespaces() {
        let names = Names::default();
        let clock = WallClock::with_offset_ns(0);
        let AnyEvent::TcpSock(mut t) = reset(EventKind::TcpAccepted, 1234) else {
            unreachable!()
        };
        t.header.tgid = 77;
        t.header.comm = *b"nginx\0\0\0\0\0\0\0\0\0\0\0";
        t.attribution = attribution::ACCEPTED;
        t.state = diag_common::tcp::state::ESTABLISHED;
        t.netns = 4026531840;
        let acc = AnyEvent::TcpSock(t);
        let line = format_text(&acc, &clock, &names);
        assert!(
            line.contains("ACCEPTED in ESTABLISHED (was 1234)") && line.ends_with("accepted"),
            "{line}"
        );
        let v: serde_json::Value =
            serde_json::from_str(&format_json(&acc, &clock, &names)).unwrap();
        assert_eq!(v["event"], "tcp_accepted");
        assert_eq!(v["pid"], 77);
        assert_eq!(v["previous_pid"], 1234);
        assert_eq!(v["netns"], 4026531840u64);
        assert_eq!(class_of(&acc), EventClass::Tcp);
        let mine = Filter {
            netns: vec![4026531840],
            ..Default::default()
        };
        assert!(mine.matches(&acc));
        assert!(!mine.matches(&ev(1, "a", 2, 1, 2)), "netns 0 is another");
    }

    #[test]
    fn resets_and_classes() {
        let names = Names {
            rst_reasons: [(1, "NO_SOCKET".to_string())].into_iter().collect(),
            drop_reasons: HashMap::new(),
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
        let line = format_text(&s, &clock, &Names::default());
        assert!(
            line.contains("victim") && line.contains("12.50ms"),
            "{line}"
        );
        assert!(
            line.contains("CPU 1") && line.contains("400 hog (tid 401)"),
            "{line}"
        );
        let v: serde_json::Value =
            serde_json::from_str(&format_json(&s, &clock, &Names::default())).unwrap();
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

    /// `--cgroup`: events of processes elsewhere are left out; JSON lines
    /// carry where the process runs (this test process stands in).
    #[test]
    fn cgroup_filter_and_placed_json() {
        let me = std::process::id();
        let here = Placement::of(me).cgroup.expect("this process's cgroup");
        let view = TailView {
            json: true,
            cgroup: vec![here.clone()],
            ..Default::default()
        };
        let mut t = Tail::new(&view, Names::default(), WallClock::with_offset_ns(0));
        t.placements = Some(HashMap::new());
        let mut out = Vec::new();
        let events = vec![ev(me, "me", 2, 1, 443), ev(u32::MAX - 1, "gone", 2, 1, 80)];
        let placed = crate::placement::Placements::default().learn(&events);
        t.handle(&Msg::Placements(placed), &mut out).unwrap();
        t.handle(
            &Msg::Events(vec![
                ev(me, "me", 2, 1, 443),
                ev(u32::MAX - 1, "gone", 2, 1, 80),
            ]),
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["cgroup"], here.as_str());
        assert_eq!(v["pid"], me);
        assert_eq!(t.shown, 1);
    }

    #[test]
    fn health_warnings_and_summary() {
        let mut t = Tail {
            names: Names::default(),
            oom_queue: Vec::new(),
            oom: OomStats::default(),
            filter: Filter {
                ports: vec![443],
                ..Default::default()
            },
            json: false,
            clock: WallClock::with_offset_ns(0),
            seen: 0,
            shown: 0,
            health: Health::default(),
            cgroups: Vec::new(),
            placements: None,
            mem_enrich: None,
        };
        let mut out = Vec::new();
        t.handle(
            &Msg::Events(vec![ev(1, "a", 2, 1, 443), ev(1, "a", 2, 1, 80)]),
            &mut out,
        )
        .unwrap();
        assert_eq!(String::from_utf8(out.clone()).unwrap().lines().count(), 1);
        assert_eq!(
            t.handle(
                &Msg::Health(Health {
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
                &Msg::Health(Health {
                    ringbuf_full: 7,
                    ..Default::default()
                }),
                &mut out,
            )
            .unwrap();
        assert!(w.unwrap().contains("7 events dropped"));
        let w = t
            .handle(
                &Msg::Health(Health {
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

    fn oom(victim: u32, trigger: u32) -> OomKillEvent {
        let mut header = EventHeader::zeroed();
        header.kind = EventKind::OomKill as u32;
        header.ts_ns = 2_000_000_000;
        header.pid = trigger;
        header.tgid = trigger;
        header.comm[..5].copy_from_slice(b"alloc");
        let mut victim_comm = [0u8; 16];
        victim_comm[..4].copy_from_slice(b"java");
        OomKillEvent {
            header,
            victim_pid: victim + 1,
            victim_tgid: victim,
            victim_comm,
            victim_uid: 1000,
            oom_score_adj: 300,
            constraint: constraint::MEMCG,
            memcg_how: memcg_how::OOM_LOCK,
            total_vm_kb: 4 << 20,
            anon_rss_kb: 900 * 1024,
            file_rss_kb: 100 * 1024,
            shmem_rss_kb: 0,
            pgtables_kb: 2048,
            victim_memcg_ino: 11,
            trigger_memcg_ino: 12,
            oom_memcg_ino: 10,
            oom_memcg_limit_pages: (1 << 30) / (page_kb() * 1024),
            oom_memcg_usage_pages: (1 << 30) / (page_kb() * 1024),
        }
    }

    fn ctx() -> OomContext {
        OomContext {
            victim_cgroup: Some("/kubepods/pod1/abc".into()),
            trigger_cgroup: Some("/kubepods/pod1/def".into()),
            oom_cgroup: Some("/kubepods/pod1".into()),
            container_id: Some("0123456789ab".into()),
            top: vec![crate::enrich::oom::Consumer {
                pid: 55,
                comm: "alloc".into(),
                rss_kb: 20 * 1024,
            }],
            top_scope: "/kubepods/pod1".into(),
        }
    }

    #[test]
    fn oom_text_line() {
        let clock = WallClock::with_offset_ns(0);
        let line = oom_text(&oom(100, 55), &ctx(), &clock);
        for want in [
            " 100 ",
            "java",
            "OOM-KILL (memcg /kubepods/pod1 limit 1.00GiB usage 1.00GiB)",
            "rss 1000.0MiB [anon 900.0MiB file 100.0MiB shmem 0KiB]",
            "vm 4.00GiB",
            "pgtables 2.0MiB",
            "uid 1000 adj 300",
            "cgroup /kubepods/pod1/abc container 0123456789ab",
            "trigger 55 alloc cgroup /kubepods/pod1/def",
            "top in /kubepods/pod1: 55 alloc 20.0MiB",
        ] {
            assert!(line.contains(want), "{want:?} not in {line}");
        }
        let mut garbage = oom(1, 2);
        garbage.oom_memcg_limit_pages = u64::MAX;
        garbage.anon_rss_kb = u64::MAX;
        assert!(oom_text(&garbage, &ctx(), &clock).contains("GiB"));
        assert!(oom_json(&garbage, &ctx(), &clock)["oom_cgroup_limit_bytes"].is_u64());
        let own = oom_text(&oom(55, 56), &OomContext::default(), &clock);
        assert!(own.contains("trigger itself"), "{own}");
        assert!(own.contains("cgroup - container -"), "{own}");
        let mut global = oom(1, 2);
        global.constraint = constraint::GLOBAL;
        assert!(oom_text(&global, &ctx(), &clock).contains("OOM-KILL (global)"));
    }

    #[test]
    fn oom_json_object() {
        let clock = WallClock::with_offset_ns(0);
        let v = oom_json(&oom(100, 55), &ctx(), &clock);
        assert_eq!(v["event"], "oom_kill");
        assert_eq!(v["pid"], 100);
        assert_eq!(v["tid"], 101);
        assert_eq!(v["comm"], "java");
        assert_eq!(v["rss_kb"], 1000 * 1024);
        assert_eq!(v["constraint"], "memcg");
        assert_eq!(v["oom_cgroup"], "/kubepods/pod1");
        assert_eq!(v["oom_cgroup_limit_bytes"], 1u64 << 30);
        assert_eq!(v["oom_cgroup_found_by"], "oom_lock");
        assert_eq!(v["container_id"], "0123456789ab");
        assert_eq!(v["trigger"]["pid"], 55);
        assert_eq!(v["trigger"]["comm"], "alloc");
        assert_eq!(v["trigger"]["is_victim"], false);
        assert_eq!(v["top"][0]["pid"], 55);
        let mut global = oom(1, 2);
        global.constraint = constraint::GLOBAL;
        let g = oom_json(&global, &ctx(), &clock);
        assert!(g["oom_cgroup"].is_null() && g["oom_cgroup_limit_bytes"].is_null());
    }

    #[test]
    fn oom_filters_and_queue() {
        let e = AnyEvent::OomKill(oom(100, 55));
        let by_victim = Filter {
            pids: vec![100],
            ..Default::default()
        };
        let by_trigger = Filter {
            pids: vec![55],
            ..Default::default()
        };
        let other = Filter {
            pids: vec![7],
            ..Default::default()
        };
        assert!(by_victim.matches(&e) && by_trigger.matches(&e) && !other.matches(&e));
        let comm = |c: &str| Filter {
            comms: vec![c.into()],
            ..Default::default()
        };
        assert!(comm("java").matches(&e) && comm("alloc").matches(&e) && !comm("x").matches(&e));
        let tcp_only = Filter {
            ports: vec![443],
            family: Some(Family::V6),
            ..Default::default()
        };
        assert!(tcp_only.matches(&e), "port/family filters are TCP's");

        // OOM kills wait for their context; counters count them when shown.
        let view = TailView {
            json: true,
            events: vec![],
            ..Default::default()
        };
        let mut t = Tail::new(&view, Names::default(), WallClock::with_offset_ns(0));
        assert_eq!(t.oom_summary(), None);
        let mut out = Vec::new();
        t.handle(&Msg::Events(vec![e, ev(1, "a", 2, 1, 443)]), &mut out)
            .unwrap();
        assert_eq!(t.oom_queue.len(), 1);
        assert_eq!(String::from_utf8(out.clone()).unwrap().lines().count(), 1);
        let queued = t.oom_queue.remove(0);
        t.show_oom(&queued, &ctx(), &mut out).unwrap();
        assert_eq!(t.oom.total, 1);
        assert_eq!(t.oom.by_cgroup["/kubepods/pod1/abc"].kills, 1);
        assert_eq!(
            t.oom_summary().unwrap(),
            "1 OOM kills (1 memcg, 0 global); by cgroup: /kubepods/pod1/abc 1; by command: java 1"
        );
        assert_eq!((t.seen, t.shown), (2, 2));
    }

    fn proc_exit(pid: u32, tid: u32, comm: &str, thread: &str, code: u32) -> AnyEvent {
        let mut h = EventHeader::zeroed();
        h.kind = EventKind::ProcExit as u32;
        h.pid = tid;
        h.tgid = pid;
        h.ts_ns = 3_500_000_000;
        h.comm[..thread.len()].copy_from_slice(thread.as_bytes());
        let mut c = [0u8; 16];
        c[..comm.len()].copy_from_slice(comm.as_bytes());
        AnyEvent::ProcExit(ProcExitEvent {
            header: h,
            start_ns: 1_000_000_000,
            exit_code: code,
            flags: exit_flags::GROUP_DEAD | exit_flags::START_BOOTTIME,
            comm: c,
        })
    }

    #[test]
    fn exits_show_only_when_asked_for() {
        let e = proc_exit(700, 703, "server", "worker-3", 2 << 8);
        assert_eq!(class_of(&e), EventClass::Exit);
        let default = Filter::from_args(&TailView::default());
        assert!(!default.matches(&e), "not in plain tail");
        let exits = Filter::new(&[EventClass::Exit], &Only::default());
        assert!(exits.matches(&e));
        let by_name = |c: &str| {
            Filter::new(
                &[EventClass::Exit],
                &Only {
                    comm: vec![c.into()],
                    ..Default::default()
                },
            )
        };
        assert!(by_name("server").matches(&e), "the process's name");
        assert!(by_name("worker-3").matches(&e), "the last thread's name");
        assert!(!by_name("other").matches(&e));
        let clock = WallClock::with_offset_ns(0);
        let text = format_text(&e, &clock, &Names::default());
        assert!(
            text.ends_with(
                "700      server           EXIT exit 2 after 2.50s; last thread 703 (worker-3)"
            ),
            "{text}"
        );
        let v: serde_json::Value =
            serde_json::from_str(&format_json(&e, &clock, &Names::default())).unwrap();
        assert_eq!(
            (
                &v["event"],
                &v["pid"],
                &v["tid"],
                &v["comm"],
                &v["exit_status"],
                &v["ran_ns"]
            ),
            (
                &"exit".into(),
                &700.into(),
                &703.into(),
                &"server".into(),
                &2.into(),
                &2_500_000_000u64.into()
            )
        );
        let killed = proc_exit(800, 800, "hog", "hog", 9);
        assert!(
            format_text(&killed, &clock, &Names::default())
                .ends_with("800      hog              EXIT killed by signal 9 after 2.50s")
        );
    }
}
