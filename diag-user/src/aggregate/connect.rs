//! Connect latency: how long active opens take from SYN sent to
//! ESTABLISHED, per destination (and, in the TCP aggregate, per process).
//! A connect that takes about a second has lost its first SYN (the
//! initial retransmission timeout is 1 s): a full accept queue at the
//! peer, or loss on the way. Pure.

use std::{collections::HashMap, net::SocketAddr};

use serde::Serialize;

use super::hint::{Hint, HintKind};

use super::histogram::ValueHist;

/// Most destinations remembered; more are counted as overflow.
pub const MAX_DESTINATIONS: usize = 4096;
/// A connect this slow is a hint: at least one SYN was lost.
pub const SLOW_CONNECT_NS: u64 = 900_000_000;

/// Connect times to one destination, since diag started.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DestLatency {
    pub remote: SocketAddr,
    pub connects: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
    /// Connects that took at least [`SLOW_CONNECT_NS`].
    pub slow: u64,
}

#[derive(Debug, Clone, Default)]
struct Dest {
    hist: ValueHist,
    slow: u64,
}

/// Connect times per destination, and of every connect.
#[derive(Debug, Clone, Default)]
pub struct ConnectLatency {
    by_dest: HashMap<SocketAddr, Dest>,
    /// Every connect (the exporter's histogram), and their sum.
    pub all: super::histogram::Log2Hist,
    pub all_sum_ns: u64,
    /// Connects not kept per destination (too many destinations).
    pub overflow: u64,
}

impl ConnectLatency {
    /// A connect to `remote` took `ns`.
    pub fn record(&mut self, remote: SocketAddr, ns: u64) {
        self.all.record(ns);
        self.all_sum_ns = self.all_sum_ns.saturating_add(ns);
        if self.by_dest.len() >= MAX_DESTINATIONS && !self.by_dest.contains_key(&remote) {
            self.overflow += 1;
            return;
        }
        let d = self.by_dest.entry(remote).or_default();
        d.hist.record(ns);
        if ns >= SLOW_CONNECT_NS {
            d.slow += 1;
        }
    }

    /// The `n` destinations with the slowest connects (p99, then max).
    pub fn slowest(&self, n: usize) -> Vec<DestLatency> {
        let mut v: Vec<DestLatency> = self
            .by_dest
            .iter()
            .map(|(remote, d)| DestLatency {
                remote: *remote,
                connects: d.hist.count,
                p50_ns: d.hist.quantile(0.5),
                p99_ns: d.hist.quantile(0.99),
                max_ns: d.hist.max,
                slow: d.slow,
            })
            .collect();
        v.sort_by(|a, b| {
            (b.p99_ns, b.max_ns)
                .cmp(&(a.p99_ns, a.max_ns))
                .then(a.remote.cmp(&b.remote))
        });
        v.truncate(n);
        v
    }
}

/// The hint for destinations whose connects lost SYNs.
pub fn hints(slowest: &[DestLatency]) -> Vec<Hint> {
    slowest
        .iter()
        .filter(|d| d.slow > 0)
        .map(|d| {
            let text = format!(
                "{} of {} connects to {} took over {:.1} s (max {:.2} s): SYNs were lost (the peer's accept queue full, or loss on the way); the first SYN is retransmitted after 1 s",
                d.slow,
                d.connects,
                d.remote,
                SLOW_CONNECT_NS as f64 / 1e9,
                d.max_ns as f64 / 1e9
            );
            Hint::new(
                HintKind::SlowConnects,
                None,
                d.remote.to_string(),
                d.slow as f64,
                text,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slowest_destinations_first_and_bounded() {
        let mut c = ConnectLatency::default();
        let fast: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let slow: SocketAddr = "10.0.0.2:5432".parse().unwrap();
        for _ in 0..99 {
            c.record(fast, 50_000);
        }
        c.record(slow, 40_000);
        c.record(slow, 1_030_000_000);
        let v = c.slowest(10);
        assert_eq!(v[0].remote, slow);
        assert_eq!(
            (v[0].connects, v[0].slow, v[0].max_ns),
            (2, 1, 1_030_000_000)
        );
        assert!(v[0].p99_ns >= 1_000_000_000);
        assert_eq!((v[1].connects, v[1].slow), (99, 0));
        assert!(v[1].p99_ns < 100_000);
        let h = hints(&v);
        assert_eq!(h.len(), 1);
        assert!(
            h[0].text.contains("10.0.0.2:5432") && h[0].text.contains("1 of 2"),
            "{h:?}"
        );
        for i in 0..(MAX_DESTINATIONS as u16 + 5) {
            c.record(SocketAddr::from(([10, 1, 0, 0], i)), 1);
        }
        assert_eq!(c.overflow, 7);
        assert_eq!(c.slowest(3).len(), 3);
    }
}
