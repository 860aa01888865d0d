//! Listen queues: connections each listener lost because its accept queue
//! (or request queue) was full, per listener and owning process, with the
//! queue's fill at the drops. Part of the TCP family (fed by
//! [`super::tcp::TcpAggregate`], shown in its snapshot); pure, no I/O.

use std::{collections::HashMap, net::SocketAddr};

use diag_common::tcp::{TcpDropEvent, attribution, drop_cause};
use serde::Serialize;

use super::process::Comm;

/// Bound on the listeners tracked; beyond it, drops are counted in
/// [`ListenQueues::overflow`].
pub const MAX_LISTENERS: usize = 4096;
/// Snapshots in a row without a drop before a listener's row is forgotten
/// (10 minutes at one a second).
pub const FORGET_AFTER_IDLE_SNAPSHOTS: u32 = 600;

/// A listener: network namespace, local address and port, owner's pid
/// (0: unknown).
type Key = (u32, SocketAddr, u32);

#[derive(Debug, Clone, Default)]
struct Listener {
    comm: Option<Comm>,
    overflows: u64,
    drops: u64,
    /// Totals at the last snapshot.
    at_snapshot: (u64, u64),
    queue: Option<u32>,
    backlog: Option<u32>,
    queue_max: u32,
    last_ns: u64,
    idle_snapshots: u32,
}

/// One listener in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListenRow {
    pub netns: u32,
    pub local: SocketAddr,
    /// The listener's owner (None: the kernel could not tell).
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// Connection attempts lost because the accept queue was full (the
    /// kernel's ListenOverflows), in total and in the last interval.
    pub overflows: u64,
    pub overflows_interval: u64,
    /// Every connection attempt lost at this listener (overflows and
    /// request-queue drops), in total and in the last interval.
    pub drops: u64,
    pub drops_interval: u64,
    /// The accept queue and its maximum (listen()'s backlog) at the last
    /// drop, and the highest queue seen at a drop.
    pub queue: Option<u32>,
    pub backlog: Option<u32>,
    pub queue_max: u32,
    pub last_ns: u64,
}

/// Per-listener drop counts.
#[derive(Debug, Clone, Default)]
pub struct ListenQueues {
    listeners: HashMap<Key, Listener>,
    /// Drops not tracked per listener because of [`MAX_LISTENERS`].
    pub overflow: u64,
}

fn known(v: u32) -> Option<u32> {
    (v != u32::MAX).then_some(v)
}

impl ListenQueues {
    pub fn on_drop(&mut self, e: &TcpDropEvent, local: SocketAddr) {
        let owned = e.attribution == attribution::LISTENER;
        let pid = if owned { e.header.tgid } else { 0 };
        let key = (e.netns, local, pid);
        if self.listeners.len() >= MAX_LISTENERS && !self.listeners.contains_key(&key) {
            self.overflow += 1;
            return;
        }
        let l = self.listeners.entry(key).or_default();
        if owned {
            l.comm = Some(Comm::from_kernel(&e.header.comm));
        }
        l.drops += 1;
        if drop_cause::is_overflow(e.cause) {
            l.overflows += 1;
        }
        if let Some(q) = known(e.queue) {
            l.queue = Some(q);
            l.queue_max = l.queue_max.max(q);
        }
        if let Some(b) = known(e.backlog) {
            l.backlog = Some(b);
        }
        l.last_ns = l.last_ns.max(e.header.ts_ns);
    }

    /// The rows, most overflows in the last interval first.
    pub fn rows(&self) -> Vec<ListenRow> {
        let mut rows: Vec<ListenRow> = self
            .listeners
            .iter()
            .map(|(&(netns, local, pid), l)| ListenRow {
                netns,
                local,
                pid: (pid != 0).then_some(pid),
                comm: l.comm.map(|c| c.to_string()),
                overflows: l.overflows,
                overflows_interval: l.overflows.saturating_sub(l.at_snapshot.0),
                drops: l.drops,
                drops_interval: l.drops.saturating_sub(l.at_snapshot.1),
                queue: l.queue,
                backlog: l.backlog,
                queue_max: l.queue_max,
                last_ns: l.last_ns,
            })
            .collect();
        rows.sort_by(|a, b| {
            (b.overflows_interval, b.overflows)
                .cmp(&(a.overflows_interval, a.overflows))
                .then(a.local.port().cmp(&b.local.port()))
                .then(a.pid.cmp(&b.pid))
        });
        rows
    }

    /// Hints for listeners that overflowed in the last interval.
    pub fn hints(rows: &[ListenRow]) -> Vec<String> {
        rows.iter()
            .filter(|r| r.overflows_interval > 0)
            .map(|r| {
                let who = match (r.pid, &r.comm) {
                    (Some(p), Some(c)) => format!("pid {p} ({c})"),
                    (Some(p), None) => format!("pid {p}"),
                    _ => "an unknown process".to_string(),
                };
                let backlog = r
                    .backlog
                    .map(|b| format!(" (backlog {b})"))
                    .unwrap_or_default();
                format!(
                    "{who} port {}: accept queue full{backlog}, {} connection attempts dropped in the last interval: its accept() loop is behind",
                    r.local.port(),
                    r.overflows_interval
                )
            })
            .collect()
    }

    /// Close the interval: move the baselines, forget long-idle rows.
    pub fn close_interval(&mut self) {
        for l in self.listeners.values_mut() {
            let moved = (l.overflows, l.drops) != l.at_snapshot;
            l.at_snapshot = (l.overflows, l.drops);
            l.idle_snapshots = if moved {
                0
            } else {
                l.idle_snapshots.saturating_add(1)
            };
        }
        self.listeners
            .retain(|_, l| l.idle_snapshots < FORGET_AFTER_IDLE_SNAPSHOTS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diag_common::{EventHeader, EventKind, tcp::AF_INET};

    pub fn drop_event(pid: u32, port: u16, cause: u8, queue: u32, backlog: u32) -> TcpDropEvent {
        let mut header = EventHeader::zeroed();
        header.kind = EventKind::TcpDrop as u32;
        header.tgid = pid;
        header.pid = pid;
        header.comm[..3].copy_from_slice(b"srv");
        header.ts_ns = 5;
        TcpDropEvent {
            header,
            skaddr: 0xffff_1000,
            addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            raddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            port,
            rport: 40000,
            family: AF_INET,
            cause,
            attribution: attribution::LISTENER,
            reason: 0,
            netns: 7,
            queue,
            backlog,
            current_tgid: 1,
            count: 1,
        }
    }

    #[test]
    fn counts_per_listener_and_interval() {
        let mut q = ListenQueues::default();
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        for _ in 0..3 {
            q.on_drop(
                &drop_event(10, 8080, drop_cause::SYN_ACCEPT_QUEUE_FULL, 3, 2),
                local,
            );
        }
        q.on_drop(
            &drop_event(10, 8080, drop_cause::REQUEST_QUEUE_FULL, u32::MAX, u32::MAX),
            local,
        );
        let rows = q.rows();
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!((r.pid, r.comm.as_deref()), (Some(10), Some("srv")));
        assert_eq!((r.overflows, r.overflows_interval, r.drops), (3, 3, 4));
        assert_eq!((r.queue, r.backlog, r.queue_max), (Some(3), Some(2), 3));
        let hints = ListenQueues::hints(&rows);
        assert_eq!(
            hints,
            vec![
                "pid 10 (srv) port 8080: accept queue full (backlog 2), 3 connection attempts dropped in the last interval: its accept() loop is behind"
            ]
        );
        q.close_interval();
        let rows = q.rows();
        assert_eq!((rows[0].overflows, rows[0].overflows_interval), (3, 0));
        assert!(ListenQueues::hints(&rows).is_empty());
        for _ in 0..FORGET_AFTER_IDLE_SNAPSHOTS {
            q.close_interval();
        }
        assert!(q.rows().is_empty());
    }

    #[test]
    fn bounded() {
        let mut q = ListenQueues::default();
        for i in 0..(MAX_LISTENERS as u32 + 5) {
            let local = SocketAddr::from(([127, 0, 0, 1], 1000));
            q.on_drop(
                &drop_event(i + 1, 1000, drop_cause::SYN_ACCEPT_QUEUE_FULL, 1, 0),
                local,
            );
        }
        assert_eq!(q.rows().len(), MAX_LISTENERS);
        assert_eq!(q.overflow, 5);
    }
}
