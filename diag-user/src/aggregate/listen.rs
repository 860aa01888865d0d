//! Listen queues: each listener's accept queue (its fill at every passive
//! open and drop, and the high-water mark per interval) and the
//! connections it lost because the accept queue (or request queue) was
//! full, per listener and owning process. Part of the TCP family (fed by
//! [`super::tcp::TcpAggregate`], shown in its snapshot); pure, no I/O.

use std::{collections::HashMap, net::SocketAddr};

use diag_common::{
    EventHeader,
    tcp::{TcpDropEvent, TcpStateEvent, attribution, drop_cause},
};
use serde::Serialize;

use super::hint::{Hint, HintKind};

use super::process::Comm;

/// Bound on the listeners tracked; beyond it, drops are counted in
/// [`ListenQueues::overflow`].
pub const MAX_LISTENERS: usize = 4096;
/// Snapshots in a row without a drop before a listener's row is forgotten
/// (10 minutes at one a second).
pub const FORGET_AFTER_IDLE_SNAPSHOTS: u32 = 600;
/// A listener whose accept queue reaches this share of its backlog (and
/// whose backlog is at least [`NEAR_FULL_MIN_BACKLOG`]) gets a hint.
pub const NEAR_FULL_PCT: u64 = 80;
pub const NEAR_FULL_MIN_BACKLOG: u32 = 8;

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
    /// The highest queue seen since the interval began.
    queue_high: u32,
    /// Passive opens seen (connections that joined the accept queue), and
    /// their count at the last snapshot.
    opens: u64,
    opens_at_snapshot: u64,
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
    /// passive open or drop, as `ss -lnt` shows them (Recv-Q, Send-Q); the
    /// highest queue seen since start, and in the interval (the
    /// high-water mark).
    pub queue: Option<u32>,
    pub backlog: Option<u32>,
    pub queue_max: u32,
    pub queue_high_interval: u32,
    /// Connections that joined the accept queue, in total and in the
    /// interval.
    pub opens: u64,
    pub opens_interval: u64,
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

impl Listener {
    fn fill(&mut self, queue: u32, backlog: u32, ts: u64) {
        if let Some(q) = known(queue) {
            self.queue = Some(q);
            self.queue_max = self.queue_max.max(q);
            self.queue_high = self.queue_high.max(q);
        }
        if let Some(b) = known(backlog) {
            self.backlog = Some(b);
        }
        self.last_ns = self.last_ns.max(ts);
    }
}

impl ListenQueues {
    /// The listener's row (None: over [`MAX_LISTENERS`], counted).
    fn listener(&mut self, key: Key, header: &EventHeader, owned: bool) -> Option<&mut Listener> {
        if self.listeners.len() >= MAX_LISTENERS && !self.listeners.contains_key(&key) {
            self.overflow += 1;
            return None;
        }
        let l = self.listeners.entry(key).or_default();
        if owned {
            l.comm = Some(Comm::from_kernel(&header.comm));
        }
        Some(l)
    }

    pub fn on_drop(&mut self, e: &TcpDropEvent, local: SocketAddr) {
        let owned = e.attribution == attribution::LISTENER;
        let pid = if owned { e.header.tgid } else { 0 };
        let Some(l) = self.listener((e.netns, local, pid), &e.header, owned) else {
            return;
        };
        l.drops += 1;
        if drop_cause::is_overflow(e.cause) {
            l.overflows += 1;
        }
        l.fill(e.queue, e.backlog, e.header.ts_ns);
    }

    /// A passive open (LISTEN -> SYN_RECV) that read its listener's accept
    /// queue: the connection joins the queue.
    pub fn on_passive_open(&mut self, e: &TcpStateEvent, local: SocketAddr) {
        if known(e.listen_queue).is_none() {
            return;
        }
        let owned = e.attribution == attribution::LISTENER;
        let pid = if owned { e.header.tgid } else { 0 };
        let Some(l) = self.listener((e.netns, local, pid), &e.header, owned) else {
            return;
        };
        l.opens += 1;
        l.fill(e.listen_queue, e.listen_backlog, e.header.ts_ns);
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
                queue_high_interval: l.queue_high,
                opens: l.opens,
                opens_interval: l.opens.saturating_sub(l.opens_at_snapshot),
                last_ns: l.last_ns,
            })
            .collect();
        rows.sort_by(|a, b| {
            (b.overflows_interval, b.overflows, b.queue_high_interval)
                .cmp(&(a.overflows_interval, a.overflows, a.queue_high_interval))
                .then(a.local.port().cmp(&b.local.port()))
                .then(a.pid.cmp(&b.pid))
        });
        rows
    }

    /// Hints for listeners that overflowed in the last interval, or whose
    /// accept queue came near its maximum (at least [`NEAR_FULL_PCT`] % of
    /// a backlog of [`NEAR_FULL_MIN_BACKLOG`] or more).
    pub fn hints(rows: &[ListenRow]) -> Vec<Hint> {
        rows.iter()
            .filter_map(|r| {
                let who = match (r.pid, &r.comm) {
                    (Some(p), Some(c)) => format!("pid {p} ({c})"),
                    (Some(p), None) => format!("pid {p}"),
                    _ => "an unknown process".to_string(),
                };
                let port = r.local.port();
                let high = r.queue_high_interval;
                let subject = r.local.to_string();
                if r.overflows_interval > 0 {
                    let fill = match r.backlog {
                        Some(b) => format!(" (queue {high}, backlog {b})"),
                        None => String::new(),
                    };
                    return Some(Hint::new(
                        HintKind::ListenOverflow,
                        r.pid,
                        subject,
                        r.overflows_interval as f64,
                        format!(
                            "{who} port {port}: accept queue full{fill}, {} connection attempts dropped in the last interval: its accept() loop is behind",
                            r.overflows_interval
                        ),
                    ));
                }
                let b = r.backlog?;
                (b >= NEAR_FULL_MIN_BACKLOG && u64::from(high) * 100 >= u64::from(b) * NEAR_FULL_PCT)
                    .then(|| {
                        Hint::new(
                            HintKind::ListenNearFull,
                            r.pid,
                            subject,
                            f64::from(high),
                            format!(
                                "{who} port {port}: accept queue reached {high} of its backlog {b} in the last interval: its accept() loop is falling behind (the kernel drops connection attempts past {b})"
                            ),
                        )
                    })
            })
            .collect()
    }

    /// Close the interval: move the baselines, forget long-idle rows.
    pub fn close_interval(&mut self) {
        for l in self.listeners.values_mut() {
            let moved = (l.overflows, l.drops) != l.at_snapshot || l.opens != l.opens_at_snapshot;
            l.at_snapshot = (l.overflows, l.drops);
            l.opens_at_snapshot = l.opens;
            l.queue_high = 0;
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
pub(crate) mod tests {
    use super::*;

    fn texts(h: Vec<Hint>) -> Vec<String> {
        h.into_iter().map(|h| h.text).collect()
    }
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
        let hints = texts(ListenQueues::hints(&rows));
        assert_eq!(
            hints,
            vec![
                "pid 10 (srv) port 8080: accept queue full (queue 3, backlog 2), 3 connection attempts dropped in the last interval: its accept() loop is behind"
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

    fn passive_open(pid: u32, port: u16, queue: u32, backlog: u32) -> TcpStateEvent {
        let d = drop_event(pid, port, drop_cause::SYN_ACCEPT_QUEUE_FULL, 0, 0);
        let mut header = d.header;
        header.kind = EventKind::TcpState as u32;
        TcpStateEvent {
            header,
            skaddr: 0xffff_2000,
            in_old_state_ns: 0,
            saddr: d.addr,
            daddr: d.raddr,
            sport: port,
            dport: 40000,
            family: AF_INET,
            old_state: diag_common::tcp::state::LISTEN,
            new_state: diag_common::tcp::state::SYN_RECV,
            attribution: attribution::LISTENER,
            err_known: 0,
            _pad: [0; 2],
            current_tgid: 1,
            netns: 7,
            err: 0,
            listen_queue: queue,
            listen_backlog: backlog,
        }
    }

    #[test]
    fn passive_opens_give_the_fill_and_its_high_water_mark() {
        let mut q = ListenQueues::default();
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        for fill in [1, 5, 9, 3] {
            q.on_passive_open(&passive_open(10, 8080, fill, 10), local);
        }
        // Unknown fill (an old recording): not a row.
        q.on_passive_open(&passive_open(10, 9090, u32::MAX, u32::MAX), local);
        let rows = q.rows();
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!((r.queue, r.backlog), (Some(3), Some(10)));
        assert_eq!((r.queue_high_interval, r.queue_max), (9, 9));
        assert_eq!((r.opens, r.opens_interval, r.overflows), (4, 4, 0));
        assert_eq!(
            texts(ListenQueues::hints(&rows)),
            vec![
                "pid 10 (srv) port 8080: accept queue reached 9 of its backlog 10 in the last interval: its accept() loop is falling behind (the kernel drops connection attempts past 10)"
            ]
        );
        // The next interval starts its own high-water mark.
        q.close_interval();
        q.on_passive_open(&passive_open(10, 8080, 2, 10), local);
        let r = &q.rows()[0];
        assert_eq!(
            (r.queue_high_interval, r.queue_max, r.opens_interval),
            (2, 9, 1)
        );
        assert!(ListenQueues::hints(&q.rows()).is_empty());
        // A drop on the same listener lands in the same row, and its
        // hint says how full the queue got.
        q.on_drop(
            &drop_event(10, 8080, drop_cause::SYN_ACCEPT_QUEUE_FULL, 11, 10),
            local,
        );
        let rows = q.rows();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            texts(ListenQueues::hints(&rows)),
            vec![
                "pid 10 (srv) port 8080: accept queue full (queue 11, backlog 10), 1 connection attempts dropped in the last interval: its accept() loop is behind"
            ]
        );
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
