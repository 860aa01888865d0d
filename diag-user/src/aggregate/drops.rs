//! Kernel drop reasons: packets the kernel dropped for a TCP socket, per
//! owning process, remote endpoint and reason, and TCP packets dropped
//! with no socket, per reason host-wide. Part of the TCP family (fed by
//! [`super::tcp::TcpAggregate`], shown in its snapshot); pure, no I/O.
//! Reason names are the running kernel's (from its `skb:kfree_skb`
//! format, given by the edge in [`KernelDrops::set_names`]); a number
//! without a name shows as the number.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
};

use diag_common::tcp::{TcpDropEvent, drop_cause};
use serde::Serialize;

use super::hint::{Hint, HintKind};

use super::process::Comm;

/// Bound on the (process, remote, reason) rows tracked; beyond it, drops
/// are counted in [`KernelDrops::overflow`].
pub const MAX_ROWS: usize = 4096;
/// Snapshots in a row without a drop before a row is forgotten (10
/// minutes at one a second).
pub const FORGET_AFTER_IDLE_SNAPSHOTS: u32 = 600;

/// Owner's tgid (0: unknown), network namespace, remote end, reason.
type Key = (u32, u32, SocketAddr, u32);

#[derive(Debug, Clone, Default)]
struct Row {
    comm: Option<Comm>,
    local: Option<SocketAddr>,
    count: u64,
    at_snapshot: u64,
    last_ns: u64,
    idle_snapshots: u32,
}

/// Drops for a TCP socket of one process toward one remote end, for one
/// reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SocketDropRow {
    /// The socket's owner (None: a socket diag does not know).
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub netns: u32,
    /// The last local end seen for these drops.
    pub local: Option<SocketAddr>,
    pub remote: SocketAddr,
    /// The kernel's name for the reason (`TCP_OLD_SEQUENCE`), and its
    /// number in this kernel.
    pub reason: String,
    pub reason_code: u32,
    /// Packets dropped, in total and in the last interval.
    pub count: u64,
    pub count_interval: u64,
    pub last_ns: u64,
}

/// TCP packets dropped with no socket, for one reason, host-wide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnownedDropRow {
    pub reason: String,
    pub reason_code: u32,
    pub count: u64,
    pub count_interval: u64,
}

#[derive(Debug, Clone, Default)]
pub struct KernelDrops {
    rows: HashMap<Key, Row>,
    /// Per reason: total, total at the last snapshot.
    unowned: BTreeMap<u32, (u64, u64)>,
    names: HashMap<u32, String>,
    /// Drops not tracked per row because of [`MAX_ROWS`].
    pub overflow: u64,
}

impl KernelDrops {
    /// Forget every count, keep the reason names.
    pub fn restart(&mut self) {
        self.rows.clear();
        self.unowned.clear();
        self.overflow = 0;
    }

    /// The kernel's reason names (number, name), from its tracepoint
    /// format.
    pub fn set_names(&mut self, names: &[(i64, String)]) {
        self.names = names
            .iter()
            .filter_map(|(n, s)| u32::try_from(*n).ok().map(|n| (n, s.clone())))
            .collect();
    }

    pub fn name(&self, reason: u32) -> String {
        self.names
            .get(&reason)
            .cloned()
            .unwrap_or_else(|| reason.to_string())
    }

    /// One drop event of cause [`drop_cause::SOCKET`] or
    /// [`drop_cause::UNOWNED`] (others are ignored); `remote` and `local`
    /// are the socket's ends.
    pub fn on_drop(&mut self, e: &TcpDropEvent, local: SocketAddr, remote: SocketAddr) {
        match e.cause {
            drop_cause::UNOWNED => {
                self.unowned.entry(e.reason).or_default().0 += e.packets();
            }
            drop_cause::SOCKET => {
                let pid = e.header.tgid;
                let key = (pid, e.netns, remote, e.reason);
                if self.rows.len() >= MAX_ROWS && !self.rows.contains_key(&key) {
                    self.overflow += e.packets();
                    return;
                }
                let r = self.rows.entry(key).or_default();
                if pid != 0 {
                    r.comm = Some(Comm::from_kernel(&e.header.comm));
                }
                r.local = Some(local);
                r.count += e.packets();
                r.last_ns = r.last_ns.max(e.header.ts_ns);
            }
            _ => {}
        }
    }

    /// Socket drop rows, most in the last interval first, then most in
    /// total.
    pub fn socket_rows(&self) -> Vec<SocketDropRow> {
        let mut rows: Vec<SocketDropRow> = self
            .rows
            .iter()
            .map(|(&(pid, netns, remote, reason), r)| SocketDropRow {
                pid: (pid != 0).then_some(pid),
                comm: r.comm.map(|c| c.to_string()),
                netns,
                local: r.local,
                remote,
                reason: self.name(reason),
                reason_code: reason,
                count: r.count,
                count_interval: r.count.saturating_sub(r.at_snapshot),
                last_ns: r.last_ns,
            })
            .collect();
        rows.sort_by(|a, b| {
            (b.count_interval, b.count)
                .cmp(&(a.count_interval, a.count))
                .then(a.pid.cmp(&b.pid))
                .then(a.remote.cmp(&b.remote))
                .then(a.reason.cmp(&b.reason))
        });
        rows
    }

    /// Unowned drops per reason, most first.
    pub fn unowned_rows(&self) -> Vec<UnownedDropRow> {
        let mut rows: Vec<UnownedDropRow> = self
            .unowned
            .iter()
            .map(|(&reason, &(count, at))| UnownedDropRow {
                reason: self.name(reason),
                reason_code: reason,
                count,
                count_interval: count.saturating_sub(at),
            })
            .collect();
        rows.sort_by(|a, b| {
            (b.count_interval, b.count)
                .cmp(&(a.count_interval, a.count))
                .then(a.reason_code.cmp(&b.reason_code))
        });
        rows
    }

    /// A hint for the biggest drops of the last interval: the process's
    /// and the host's.
    pub fn hints(socket: &[SocketDropRow], unowned: &[UnownedDropRow]) -> Vec<Hint> {
        let mut hints = Vec::new();
        if let Some(r) = socket.first().filter(|r| r.count_interval > 0) {
            let who = match (r.pid, &r.comm) {
                (Some(p), Some(c)) => format!("pid {p} ({c})"),
                (Some(p), None) => format!("pid {p}"),
                _ => "a socket of an unknown process".to_string(),
            };
            hints.push(Hint::new(
                HintKind::SocketDrops,
                r.pid,
                format!("{} {}", r.remote, r.reason),
                r.count_interval as f64,
                format!(
                    "the kernel dropped {} packets from {} for {who} in the last interval ({}){}",
                    r.count_interval,
                    r.remote,
                    r.reason,
                    reason_hint(&r.reason)
                ),
            ));
        }
        if let Some(r) = unowned.first().filter(|r| r.count_interval > 0) {
            hints.push(Hint::new(
                HintKind::UnownedDrops,
                None,
                r.reason.clone(),
                r.count_interval as f64,
                format!(
                    "the kernel dropped {} TCP packets with no socket in the last interval ({}){}",
                    r.count_interval,
                    r.reason,
                    reason_hint(&r.reason)
                ),
            ));
        }
        hints
    }

    /// Close the interval: move the baselines, forget long-idle rows.
    pub fn close_interval(&mut self) {
        for r in self.rows.values_mut() {
            let moved = r.count != r.at_snapshot;
            r.at_snapshot = r.count;
            r.idle_snapshots = if moved {
                0
            } else {
                r.idle_snapshots.saturating_add(1)
            };
        }
        self.rows
            .retain(|_, r| r.idle_snapshots < FORGET_AFTER_IDLE_SNAPSHOTS);
        for (count, at) in self.unowned.values_mut() {
            *at = *count;
        }
    }
}

/// What a few common reasons usually mean (by the kernel's name; others
/// get none).
fn reason_hint(name: &str) -> &'static str {
    match name {
        "NO_SOCKET" => ": packets to a port nobody listens on (a stopped service, a scan)",
        "TCP_ZEROWINDOW" | "TCP_OLD_SEQUENCE" | "TCP_OVERWINDOW" => {
            ": the receiver's window is closed, its reader is not keeping up"
        }
        "TCP_RCVBUFF" | "SOCKET_RCVBUFF" | "PROTO_MEM" | "TCP_OFO_DROP" | "TCP_OFO_QUEUE_PRUNE" => {
            ": the receive buffer is full, the reader is not keeping up"
        }
        "SOCKET_BACKLOG" => ": the socket's backlog is full while its owner holds the lock",
        "NETFILTER_DROP" => ": a firewall rule dropped them",
        "TCP_CSUM" => ": bad checksums (a broken NIC or path)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diag_common::{
        EventHeader, EventKind,
        tcp::{AF_INET, attribution},
    };

    fn socket_drop(pid: u32, reason: u32) -> TcpDropEvent {
        let mut header = EventHeader::zeroed();
        header.kind = EventKind::TcpDrop as u32;
        header.tgid = pid;
        header.pid = pid;
        header.comm[..4].copy_from_slice(b"recv");
        header.ts_ns = 5;
        TcpDropEvent {
            header,
            skaddr: 0xffff_2000,
            addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            raddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            port: 8080,
            rport: 40000,
            family: AF_INET,
            cause: drop_cause::SOCKET,
            attribution: attribution::SOCKET,
            reason,
            netns: 7,
            queue: u32::MAX,
            backlog: u32::MAX,
            current_tgid: 1,
            count: 1,
        }
    }

    #[test]
    fn counts_per_process_remote_and_reason_with_the_kernel_names() {
        let mut d = KernelDrops::default();
        d.set_names(&[(41, "TCP_OLD_SEQUENCE".into()), (3, "NO_SOCKET".into())]);
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let remote: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        for _ in 0..3 {
            d.on_drop(&socket_drop(10, 41), local, remote);
        }
        d.on_drop(&socket_drop(10, 99), local, remote);
        let mut u = socket_drop(0, 3);
        u.cause = drop_cause::UNOWNED;
        u.count = 500;
        d.on_drop(&u, local, remote);
        // An old recording's event (count 0) is one packet.
        u.count = 0;
        d.on_drop(&u, local, remote);
        let rows = d.socket_rows();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (
                rows[0].pid,
                rows[0].comm.as_deref(),
                rows[0].reason.as_str()
            ),
            (Some(10), Some("recv"), "TCP_OLD_SEQUENCE")
        );
        assert_eq!((rows[0].count, rows[0].count_interval), (3, 3));
        assert_eq!(rows[0].remote, remote);
        assert_eq!(rows[1].reason, "99");
        let unowned = d.unowned_rows();
        assert_eq!(unowned.len(), 1);
        assert_eq!(
            (unowned[0].reason.as_str(), unowned[0].count),
            ("NO_SOCKET", 501)
        );
        let hints = KernelDrops::hints(&rows, &unowned);
        assert_eq!(hints.len(), 2);
        assert!(
            hints[0]
                .text
                .starts_with("the kernel dropped 3 packets from 127.0.0.1:40000 for pid 10 (recv)")
        );
        assert!(hints[1].text.contains("501 TCP packets with no socket"));
        d.close_interval();
        assert_eq!(d.socket_rows()[0].count_interval, 0);
        assert_eq!(d.unowned_rows()[0].count_interval, 0);
        assert!(KernelDrops::hints(&d.socket_rows(), &d.unowned_rows()).is_empty());
        for _ in 0..FORGET_AFTER_IDLE_SNAPSHOTS {
            d.close_interval();
        }
        assert!(d.socket_rows().is_empty());
        assert_eq!(d.unowned_rows()[0].count, 501);
    }

    #[test]
    fn bounded() {
        let mut d = KernelDrops::default();
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        for i in 0..(MAX_ROWS as u32 + 5) {
            let remote = SocketAddr::from(([10, 0, 0, 1], 1000));
            d.on_drop(&socket_drop(i + 1, 41), local, remote);
        }
        assert_eq!(d.socket_rows().len(), MAX_ROWS);
        assert_eq!(d.overflow, 5);
    }
}
