//! TCP families: per-process (bounded) counters and socket gauges,
//! ephemeral-port pressure per destination, and the aggregate's own
//! bookkeeping.

use prometheus_client::registry::Registry;

use super::{
    families::{Families, Labels, counter, counters, g, gauges, gauges_f64, histograms},
    series::{Bounds, ProcessInfo, Series, SeriesKey},
};
use std::{collections::HashMap, net::SocketAddr};

use crate::aggregate::{
    histogram::Log2Hist,
    listen::ListenRow,
    tcp::{Corrections, Pressure, StateCounts, TcpSnapshot},
};

/// Destinations with port-pressure series (the most used ones).
pub const TOP_DESTINATIONS: usize = 20;
/// Listeners with accept-queue series (the fullest ones).
pub const TOP_LISTENERS: usize = 20;
/// The accept-queue gauge is the highest fill over this window, so a
/// scrape every 15 s sees every peak.
pub const QUEUE_WINDOW_NS: u64 = 15_000_000_000;

/// A listener by network namespace, address and owner.
type ListenerKey = (u32, SocketAddr, Option<u32>);

/// One listener's recent accept-queue peaks.
#[derive(Debug, Clone, Default)]
struct QueuePeaks {
    comm: String,
    backlog: Option<u32>,
    /// (snapshot time, high-water mark of its interval), oldest first.
    highs: std::collections::VecDeque<(u64, u32)>,
}

impl QueuePeaks {
    fn high(&self) -> u32 {
        self.highs.iter().map(|h| h.1).max().unwrap_or(0)
    }
}

#[derive(Debug, Clone, Default)]
pub struct TcpMetrics {
    pub series: Series,
    pressure: Vec<Pressure>,
    kernel_resets_sent: u64,
    corrections: Corrections,
    /// Every connect (log2 buckets) and their sum, ns.
    connects: (Log2Hist, u64),
    /// The listeners of the last snapshot, with their peaks.
    queues: HashMap<ListenerKey, QueuePeaks>,
    /// TCP packets dropped with no socket, per reason name, cumulative.
    unowned_drops: Vec<(String, u64)>,
}

/// The state names, as `ss` shows them.
pub const STATES: [&str; 10] = [
    "ESTAB",
    "SYN-SENT",
    "SYN-RECV",
    "FIN-WAIT-1",
    "FIN-WAIT-2",
    "CLOSE-WAIT",
    "LAST-ACK",
    "CLOSING",
    "TIME-WAIT",
    "LISTEN",
];

fn by_state(s: &StateCounts) -> [u64; 10] {
    [
        s.established,
        s.syn_sent,
        s.syn_recv,
        s.fin_wait1,
        s.fin_wait2,
        s.close_wait,
        s.last_ack,
        s.closing,
        s.time_wait,
        s.listen,
    ]
}

fn with(mut l: Labels, k: &'static str, v: &str) -> Labels {
    l.push((k, v.to_string()));
    l
}

impl TcpMetrics {
    pub fn new(bounds: Bounds) -> Self {
        TcpMetrics {
            series: Series::new(bounds),
            ..Default::default()
        }
    }

    /// Take in a snapshot (of every process: unfiltered, uncut).
    pub fn update(&mut self, snap: &TcpSnapshot, info: &mut impl ProcessInfo) {
        self.series.update(
            &snap.processes,
            &snap.states,
            snap.leaks.len() as u64,
            snap.ts_ns,
            info,
        );
        self.pressure = snap
            .pressure
            .iter()
            .take(TOP_DESTINATIONS)
            .cloned()
            .collect();
        self.kernel_resets_sent = snap.kernel_resets_sent;
        self.corrections = snap.corrections;
        self.connects = snap.connect_all;
        let mut unowned: Vec<(String, u64)> = snap
            .unowned_drops
            .iter()
            .map(|d| (d.reason.clone(), d.count))
            .collect();
        unowned.sort();
        self.unowned_drops = unowned;
        self.update_queues(&snap.listen, snap.ts_ns);
    }

    /// Keep each listener's accept-queue peaks of the last
    /// [`QUEUE_WINDOW_NS`]; listeners the aggregate forgot go.
    fn update_queues(&mut self, rows: &[ListenRow], now_ns: u64) {
        let mut next = HashMap::with_capacity(rows.len());
        for r in rows {
            let key = (r.netns, r.local, r.pid);
            let mut q = self.queues.remove(&key).unwrap_or_default();
            q.comm = r.comm.clone().unwrap_or_default();
            q.backlog = r.backlog.or(q.backlog);
            if r.queue_high_interval > 0 {
                q.highs.push_back((now_ns, r.queue_high_interval));
            }
            while q
                .highs
                .front()
                .is_some_and(|h| h.0.saturating_add(QUEUE_WINDOW_NS) < now_ns)
            {
                q.highs.pop_front();
            }
            // Peeks between two ticks add a point each: keep it bounded.
            if q.highs.len() > 64 {
                let high = q.high();
                q.highs.clear();
                q.highs.push_back((now_ns, high));
            }
            next.insert(key, q);
        }
        self.queues = next;
    }
}

impl Families for TcpMetrics {
    fn register(&self, reg: &mut Registry) {
        let mut opens = Vec::new();
        let mut closes = Vec::new();
        let mut failed = Vec::new();
        let mut resets = Vec::new();
        let mut retrans = Vec::new();
        let mut sent = Vec::new();
        let mut received = Vec::new();
        let mut socks = Vec::new();
        let mut leaks = Vec::new();
        for (k, v) in &self.series.values {
            let l = k.labels();
            let c = &v.counters;
            opens.push((with(l.clone(), "direction", "active"), c.active_opens));
            opens.push((with(l.clone(), "direction", "passive"), c.passive_opens));
            closes.push((l.clone(), c.closes));
            failed.push((l.clone(), c.failed_connects));
            resets.push((with(l.clone(), "direction", "sent"), c.resets_sent));
            resets.push((with(l.clone(), "direction", "received"), c.resets_received));
            retrans.push((l.clone(), c.retransmits));
            sent.push((l.clone(), c.bytes_acked));
            received.push((l.clone(), c.bytes_received));
            for (name, n) in STATES.iter().zip(by_state(&v.states)) {
                if n > 0 {
                    socks.push((with(l.clone(), "state", name), g(n)));
                }
            }
            leaks.push((l, g(v.leaks)));
        }
        counters(
            reg,
            "diag_tcp_opens",
            "TCP connections opened: direction=active (connect) or passive (accept)",
            &opens,
        );
        counters(reg, "diag_tcp_closes", "TCP connections closed", &closes);
        histograms(
            reg,
            "diag_tcp_connect_seconds",
            "Time from SYN sent to ESTABLISHED, per connect (host-wide); buckets are powers of two; about 1 s and more: SYNs were lost",
            vec![(Vec::new(), &self.connects.0, self.connects.1)],
        );
        counters(
            reg,
            "diag_tcp_failed_connects",
            "Connects that never reached ESTABLISHED",
            &failed,
        );
        counters(
            reg,
            "diag_tcp_resets",
            "TCP resets: direction=sent or received",
            &resets,
        );
        counters(
            reg,
            "diag_tcp_retransmits",
            "TCP segments retransmitted (SYN-ACKs included)",
            &retrans,
        );
        counters(
            reg,
            "diag_tcp_bytes_sent",
            "Bytes sent and acknowledged by the peer on closed connections (tcp_sock.bytes_acked at the close, as ss -ti shows bytes_acked: the SYN of a connect and a FIN acked count one each), credited at the close",
            &sent,
        );
        counters(
            reg,
            "diag_tcp_bytes_received",
            "Bytes received on closed connections (tcp_sock.bytes_received at the close, as ss -ti shows it: a FIN received counts one), credited at the close",
            &received,
        );
        gauges(
            reg,
            "diag_tcp_sockets",
            "TCP sockets by state (states with no socket are absent); TIME-WAIT is charged to the process that closed first",
            &socks,
        );
        gauges(
            reg,
            "diag_tcp_close_wait_leaks",
            "Sockets in CLOSE_WAIT for longer than --close-wait-threshold: the process received FIN and never called close()",
            &leaks,
        );
        let overflows: Vec<(Labels, u64)> = self
            .series
            .listen_ports
            .iter()
            .map(|((k, port), n)| {
                let port = if *port == 0 {
                    super::series::OTHER.to_string()
                } else {
                    port.to_string()
                };
                (with(k.labels(), "port", &port), *n)
            })
            .collect();
        let drops: Vec<(Labels, u64)> = self
            .series
            .kernel_drops
            .iter()
            .map(|((k, reason), n)| (with(k.labels(), "reason", reason), *n))
            .collect();
        counters(
            reg,
            "diag_tcp_drops",
            "Packets the kernel dropped for a process's TCP sockets (skb:kfree_skb with the socket), by the kernel's drop reason (reason=other: a process's reasons beyond the first 8)",
            &drops,
        );
        let unowned: Vec<(Labels, u64)> = self
            .unowned_drops
            .iter()
            .map(|(reason, n)| (vec![("reason", reason.clone())], *n))
            .collect();
        counters(
            reg,
            "diag_tcp_unowned_drops",
            "TCP packets the kernel dropped with no socket (NO_SOCKET: to a port nobody listens on, ...), host-wide, by the kernel's drop reason",
            &unowned,
        );
        counters(
            reg,
            "diag_tcp_listen_overflows",
            "Connection attempts a process's listener lost because its accept queue was full (the kernel's ListenOverflows), by listening port (port=other: a process's ports beyond the first 8)",
            &overflows,
        );
        // The fullest listeners (by share of their backlog), labelled like
        // their owner's series (pid="other" when it has none, so the
        // bound on per-process series holds); listeners that share labels
        // are merged (the highest queue and backlog).
        let mut queues: Vec<(&ListenerKey, &QueuePeaks)> = self.queues.iter().collect();
        let share = |q: &QueuePeaks| f64::from(q.high()) / f64::from(q.backlog.unwrap_or(0).max(1));
        queues.sort_by(|a, b| share(b.1).total_cmp(&share(a.1)).then(a.0.cmp(b.0)));
        queues.truncate(TOP_LISTENERS);
        let mut by_labels: std::collections::BTreeMap<Labels, (u32, Option<u32>)> =
            std::collections::BTreeMap::new();
        for (k, q) in queues {
            let owner = self.series.values.keys().find(|s| {
                matches!(s, SeriesKey::Process { pid, comm, .. } if Some(*pid) == k.2 && *comm == q.comm)
            });
            let mut labels = match owner {
                Some(s) => s.labels(),
                None => SeriesKey::Other {
                    cgroup: super::series::OTHER.to_string(),
                }
                .labels(),
            };
            labels.push(("address", k.1.to_string()));
            let e = by_labels.entry(labels).or_default();
            e.0 = e.0.max(q.high());
            e.1 = e.1.max(q.backlog);
        }
        gauges(
            reg,
            "diag_tcp_listen_queue_high",
            "Highest accept queue of a listener (connections not yet accept()ed, ss -lnt's Recv-Q) over the last 15 s, seen at each passive open and drop; the 20 fullest listeners",
            &by_labels
                .iter()
                .map(|(l, (high, _))| (l.clone(), i64::from(*high)))
                .collect::<Vec<_>>(),
        );
        gauges(
            reg,
            "diag_tcp_listen_backlog",
            "A listener's listen() backlog (ss -lnt's Send-Q): past it, the kernel drops connection attempts",
            &by_labels
                .iter()
                .filter_map(|(l, (_, b))| Some((l.clone(), i64::from((*b)?))))
                .collect::<Vec<_>>(),
        );
        let connect_errors: Vec<(Labels, u64)> = self
            .series
            .connect_errors
            .iter()
            .map(|((k, error), n)| (with(k.labels(), "error", error), *n))
            .collect();
        counters(
            reg,
            "diag_tcp_connect_failures",
            "Connects that failed (SYN_SENT -> CLOSE), by the error the kernel stored on the socket: ECONNREFUSED (a reset: nothing listens), ETIMEDOUT (SYNs unanswered), EHOSTUNREACH/ENETUNREACH (ICMP), closed (no error stored: the process gave up first, or connect() failed before sending), unknown (not read); error=other: a process's errors beyond the first 8",
            &connect_errors,
        );
        let dest = |p: &Pressure| -> Labels {
            vec![
                ("local", p.destination.local.to_string()),
                ("remote", p.destination.remote.to_string()),
            ]
        };
        gauges_f64(
            reg,
            "diag_tcp_ephemeral_ports_usage_ratio",
            "Share of net.ipv4.ip_local_port_range in use toward one destination (local address, remote address:port); 1 means connect() fails",
            &self
                .pressure
                .iter()
                .map(|p| (dest(p), p.ratio))
                .collect::<Vec<_>>(),
        );
        gauges(
            reg,
            "diag_tcp_ephemeral_ports_used",
            "Ephemeral ports in use toward one destination, TIME-WAIT included",
            &self
                .pressure
                .iter()
                .map(|p| (dest(p), g(p.ports_used)))
                .collect::<Vec<_>>(),
        );
        counter(
            reg,
            "diag_tcp_kernel_resets_sent",
            "Resets the kernel sent for no socket (e.g. to a closed port)",
            self.kernel_resets_sent,
        );
        let c = &self.corrections;
        counters(
            reg,
            "diag_tcp_reconcile_corrections",
            "Corrections made when diag's socket states and owners were reconciled with the kernel's table and /proc/PID/fd",
            &[
                (vec![("kind", "time_wait_added".into())], c.time_wait_added),
                (
                    vec![("kind", "time_wait_removed".into())],
                    c.time_wait_removed,
                ),
                (vec![("kind", "socket_removed".into())], c.sockets_removed),
                (vec![("kind", "state_fixed".into())], c.states_fixed),
                (vec![("kind", "owner".into())], c.owners_fixed),
            ],
        );
    }
}
