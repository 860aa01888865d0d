//! `diag bench-pipeline` (hidden): the user-space pipeline's ceiling,
//! without a kernel. A synthetic producer makes the ring-buffer records a
//! busy host would (processes opening and closing connections), and they go
//! through what live events go through: decode, the TCP aggregation, and
//! the recording writer. Prints one JSON object: events per second and
//! peak RSS. `cargo xtask bench` runs it.

use std::{process::ExitCode, time::Instant};

use diag_common::{
    EventHeader, EventKind,
    tcp::{AF_INET, TcpStateEvent, attribution, state},
    user::{AnyEvent, as_bytes, decode},
};

use crate::{
    aggregate::tcp::{TcpAggregate, TcpConfig},
    record::{
        RecordingHeader,
        writer::{Writer, WriterOptions},
    },
};

pub use crate::cli::BenchPipelineArgs;

/// The i-th synthetic event: socket `i / 5 % sockets`, owned by process
/// `sock % procs`, going through an active open and close.
pub fn synthetic(i: u64, procs: u32, sockets: u64) -> TcpStateEvent {
    let conn = i / 5;
    let sock = conn % sockets.max(1);
    let pid = 1000 + (sock % u64::from(procs.max(1))) as u32;
    let (old, new) = match i % 5 {
        0 => (state::CLOSE, state::SYN_SENT),
        1 => (state::SYN_SENT, state::ESTABLISHED),
        2 => (state::ESTABLISHED, state::FIN_WAIT1),
        3 => (state::FIN_WAIT1, state::FIN_WAIT2),
        _ => (state::FIN_WAIT2, state::CLOSE),
    };
    let mut header = EventHeader::zeroed();
    header.kind = EventKind::TcpState as u32;
    header.ts_ns = 1_000_000_000 + i * 1_000;
    header.pid = pid;
    header.tgid = pid;
    header.comm[..6].copy_from_slice(b"worker");
    let mut saddr = [0u8; 16];
    // A host has few addresses; its clients talk to a few servers.
    saddr[..4].copy_from_slice(&[10, 0, 0, (sock % 4) as u8]);
    let mut daddr = [0u8; 16];
    daddr[..4].copy_from_slice(&[10, 1, 0, (conn % 16) as u8]);
    TcpStateEvent {
        header,
        skaddr: 0xffff_8880_0000_0000 + sock * 2048,
        in_old_state_ns: 1_000,
        saddr,
        daddr,
        sport: if i.is_multiple_of(5) {
            0
        } else {
            32768 + (conn % 28000) as u16
        },
        dport: 5432,
        family: AF_INET,
        old_state: old,
        new_state: new,
        attribution: attribution::SYSCALL,
        err_known: 0,
        _pad: [0; 2],
        current_tgid: pid,
        netns: 0,
        listen_queue: diag_common::tcp::NO_FIELD,
        listen_backlog: diag_common::tcp::NO_FIELD,
        err: 0,
    }
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub fn run(args: BenchPipelineArgs) -> anyhow::Result<ExitCode> {
    // The records, as the ring buffer would hand them over.
    let n = args.events;
    let mut agg = TcpAggregate::new(TcpConfig::default());
    let mut writer = match &args.record {
        Some(p) => Some(Writer::create(
            p,
            RecordingHeader::default(),
            WriterOptions::default(),
        )?),
        None => None,
    };
    // Grow the state first: every socket open at once.
    let warm = args.sockets * 2;
    for i in 0..warm {
        let e = synthetic((i / 2) * 5 + (i % 2), args.procs, args.sockets);
        agg.on_event(&AnyEvent::TcpState(e));
    }
    let rss_with_state = peak_rss_kib();
    let start = Instant::now();
    let mut batch = Vec::with_capacity(4096);
    let mut decode_errors = 0u64;
    for i in 0..n {
        let e = synthetic(i, args.procs, args.sockets);
        match decode(as_bytes(&e)) {
            Ok(ev) => batch.push(ev),
            Err(_) => decode_errors += 1,
        }
        if batch.len() == 4096 || i + 1 == n {
            for ev in &batch {
                agg.on_event(ev);
            }
            // A snapshot every interval, as the views take them.
            if i % 262_144 < 4096 {
                agg.snapshot(1_000_000_000 + i * 1_000);
            }
            if let Some(w) = &mut writer {
                w.events(&batch)?;
            }
            batch.clear();
        }
    }
    if let Some(w) = writer.take() {
        w.finish("bench")?;
    }
    let snap = agg.snapshot(1_000_000_000 + n * 1_000);
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "events": n,
            "seconds": secs,
            "events_per_sec": n as f64 / secs,
            "decode_errors": decode_errors,
            "processes_tracked": snap.processes.len(),
            "sockets": args.sockets,
            "peak_rss_kib_with_state": rss_with_state,
            "peak_rss_kib": peak_rss_kib(),
            "recorded": args.record.is_some(),
        })
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_connections_are_whole() {
        let mut agg = TcpAggregate::new(TcpConfig::default());
        for i in 0..5 * 30 {
            agg.on_event(&AnyEvent::TcpState(synthetic(i, 3, 10)));
        }
        let s = agg.snapshot(10_000_000_000);
        assert_eq!(s.totals.active_opens, 30);
        assert_eq!(s.totals.closes, 30);
        assert_eq!(s.processes.len(), 3);
    }
}
