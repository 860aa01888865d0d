//! Finished connections (`TcpClose` events): the smoothed RTT of the
//! connections closed per destination (median of the last
//! [`RTT_SAMPLES`]), bytes per destination, and the heaviest, longest and
//! slowest connections. Bounded: [`MAX_DESTINATIONS`] destinations (more
//! are counted as overflow), [`TOP`] connections per list. Pure.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
};

use serde::Serialize;

/// Most destinations remembered; more are counted as overflow.
pub const MAX_DESTINATIONS: usize = 4096;
/// RTT samples kept per destination (the most recent).
pub const RTT_SAMPLES: usize = 64;
/// Connections kept in each of the heaviest/longest/slowest lists.
pub const TOP: usize = 10;

/// One finished connection, as the views show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Closed {
    pub pid: u32,
    pub comm: String,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub ts_ns: u64,
    /// None: the socket was older than diag.
    pub duration_ns: Option<u64>,
    pub bytes_acked: u64,
    pub bytes_received: u64,
    pub total_retrans: u32,
    /// None: no RTT sample.
    pub srtt_us: Option<u32>,
    pub closed_by: &'static str,
}

impl Closed {
    pub fn bytes(&self) -> u64 {
        self.bytes_acked.saturating_add(self.bytes_received)
    }
}

/// RTT and bytes of the connections closed to one destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DestRtt {
    pub remote: SocketAddr,
    pub closed: u64,
    /// Median smoothed RTT of the last [`RTT_SAMPLES`] with one, µs.
    pub rtt_p50_us: Option<u32>,
    pub rtt_max_us: Option<u32>,
    pub bytes_acked: u64,
    pub bytes_received: u64,
    pub retrans: u64,
}

#[derive(Debug, Clone, Default)]
struct Dest {
    closed: u64,
    rtts: VecDeque<u32>,
    rtt_max: Option<u32>,
    bytes_acked: u64,
    bytes_received: u64,
    retrans: u64,
}

/// Everything kept about finished connections.
#[derive(Debug, Clone, Default)]
pub struct CloseStats {
    by_dest: HashMap<SocketAddr, Dest>,
    heaviest: Vec<Closed>,
    longest: Vec<Closed>,
    slowest: Vec<Closed>,
    /// Connections closed, in all.
    pub closed: u64,
    /// Connections not kept per destination (too many destinations).
    pub overflow: u64,
}

/// Keep `c` in `list` if it is among the [`TOP`] by `key` (largest first).
fn keep_top(list: &mut Vec<Closed>, c: &Closed, key: impl Fn(&Closed) -> u64) {
    let k = key(c);
    if k == 0 || (list.len() >= TOP && list.last().is_some_and(|l| key(l) >= k)) {
        return;
    }
    let at = list.partition_point(|l| key(l) >= k);
    list.insert(at, c.clone());
    list.truncate(TOP);
}

impl CloseStats {
    pub fn record(&mut self, c: &Closed) {
        self.closed += 1;
        keep_top(&mut self.heaviest, c, Closed::bytes);
        keep_top(&mut self.longest, c, |c| c.duration_ns.unwrap_or(0));
        keep_top(&mut self.slowest, c, |c| u64::from(c.srtt_us.unwrap_or(0)));
        if self.by_dest.len() >= MAX_DESTINATIONS && !self.by_dest.contains_key(&c.remote) {
            self.overflow += 1;
            return;
        }
        let d = self.by_dest.entry(c.remote).or_default();
        d.closed += 1;
        d.bytes_acked = d.bytes_acked.saturating_add(c.bytes_acked);
        d.bytes_received = d.bytes_received.saturating_add(c.bytes_received);
        d.retrans += u64::from(c.total_retrans);
        if let Some(rtt) = c.srtt_us {
            if d.rtts.len() >= RTT_SAMPLES {
                d.rtts.pop_front();
            }
            d.rtts.push_back(rtt);
            d.rtt_max = Some(d.rtt_max.map_or(rtt, |m| m.max(rtt)));
        }
    }

    /// The `n` destinations with the highest median RTT (then most
    /// closed).
    pub fn by_destination(&self, n: usize) -> Vec<DestRtt> {
        let mut v: Vec<DestRtt> = self
            .by_dest
            .iter()
            .map(|(remote, d)| DestRtt {
                remote: *remote,
                closed: d.closed,
                rtt_p50_us: median(&d.rtts),
                rtt_max_us: d.rtt_max,
                bytes_acked: d.bytes_acked,
                bytes_received: d.bytes_received,
                retrans: d.retrans,
            })
            .collect();
        v.sort_by(|a, b| {
            (b.rtt_p50_us, b.closed)
                .cmp(&(a.rtt_p50_us, a.closed))
                .then(a.remote.cmp(&b.remote))
        });
        v.truncate(n);
        v
    }

    /// The connections that moved the most bytes (acked + received).
    pub fn heaviest(&self) -> &[Closed] {
        &self.heaviest
    }

    /// The longest-lived connections (known durations only).
    pub fn longest(&self) -> &[Closed] {
        &self.longest
    }

    /// The connections with the highest smoothed RTT at close.
    pub fn slowest(&self) -> &[Closed] {
        &self.slowest
    }
}

/// The median (the lower middle of an even count), None when empty.
fn median(v: &VecDeque<u32>) -> Option<u32> {
    if v.is_empty() {
        return None;
    }
    let mut s: Vec<u32> = v.iter().copied().collect();
    s.sort_unstable();
    Some(s[(s.len() - 1) / 2])
}

/// A close summary for tests: `pid` (comm `comm`) on socket `sk`,
/// 127.0.0.1:`sport` to 127.0.0.1:`dport`.
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn close_event(
    pid: u32,
    comm: &str,
    sk: u64,
    sport: u16,
    dport: u16,
    ts_ns: u64,
    duration_ns: u64,
    (bytes_acked, bytes_received): (u64, u64),
    srtt_us: u32,
    closer: u8,
) -> diag_common::tcp::TcpCloseEvent {
    let mut header = diag_common::EventHeader::zeroed();
    header.kind = diag_common::EventKind::TcpClose as u32;
    header.pid = pid;
    header.tgid = pid;
    header.ts_ns = ts_ns;
    header.comm[..comm.len()].copy_from_slice(comm.as_bytes());
    let mut lo = [0u8; 16];
    lo[..4].copy_from_slice(&[127, 0, 0, 1]);
    diag_common::tcp::TcpCloseEvent {
        header,
        skaddr: sk,
        duration_ns,
        bytes_acked,
        bytes_sent: bytes_acked,
        bytes_received,
        saddr: lo,
        daddr: lo,
        sport,
        dport,
        family: diag_common::tcp::AF_INET,
        old_state: diag_common::tcp::state::FIN_WAIT2,
        closed_by: closer,
        attribution: diag_common::tcp::attribution::SOCKET,
        _pad: [0; 3],
        total_retrans: 0,
        srtt_us,
        netns: 0,
        current_tgid: pid,
        _pad2: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed(remote: &str, bytes: u64, dur: Option<u64>, rtt: Option<u32>) -> Closed {
        Closed {
            pid: 7,
            comm: "x".into(),
            local: "127.0.0.1:40000".parse().unwrap(),
            remote: remote.parse().unwrap(),
            ts_ns: 1,
            duration_ns: dur,
            bytes_acked: bytes,
            bytes_received: 1,
            total_retrans: 1,
            srtt_us: rtt,
            closed_by: "local",
        }
    }

    #[test]
    fn median_rtt_per_destination_and_bounded_lists() {
        let mut s = CloseStats::default();
        let far = "10.0.0.2:443";
        let near = "10.0.0.1:80";
        for rtt in [100, 300, 200, 50_000] {
            s.record(&closed(far, 10, Some(5), Some(rtt)));
        }
        s.record(&closed(near, 1_000_000, None, Some(20)));
        s.record(&closed(near, 5, Some(1_000_000_000), None));
        let d = s.by_destination(10);
        assert_eq!(d[0].remote, far.parse().unwrap());
        assert_eq!(
            (d[0].closed, d[0].rtt_p50_us, d[0].rtt_max_us),
            (4, Some(200), Some(50_000))
        );
        assert_eq!(d[0].retrans, 4);
        assert_eq!((d[1].closed, d[1].rtt_p50_us), (2, Some(20)));
        assert_eq!(d[1].bytes_acked, 1_000_005);
        assert_eq!(s.heaviest()[0].bytes_acked, 1_000_000);
        assert_eq!(s.longest()[0].duration_ns, Some(1_000_000_000));
        // Unknown durations are not ranked as long.
        assert!(s.longest().iter().all(|c| c.duration_ns.is_some()));
        assert_eq!(s.slowest()[0].srtt_us, Some(50_000));
        for i in 0..100u64 {
            s.record(&closed(near, i, Some(i), Some(i as u32)));
        }
        assert_eq!(s.heaviest().len(), TOP);
        assert_eq!(s.heaviest()[0].bytes_acked, 1_000_000);
        assert!(
            s.longest()
                .windows(2)
                .all(|w| w[0].duration_ns >= w[1].duration_ns)
        );
        // Samples are bounded; destinations too.
        for i in 0..(MAX_DESTINATIONS as u16 + 3) {
            s.record(&closed(&format!("10.1.0.0:{i}"), 1, Some(1), Some(1)));
        }
        assert_eq!(s.overflow, 5);
        assert_eq!(s.by_destination(3).len(), 3);
        assert_eq!(s.by_dest[&near.parse().unwrap()].rtts.len(), RTT_SAMPLES);
    }
}
