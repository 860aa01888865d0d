//! diag's own health: what it received, dropped and could not track.

use prometheus_client::registry::Registry;

use super::families::{Families, counter, counters, gauge};
use crate::bus::Health;

#[derive(Debug, Clone, Default)]
pub struct OwnMetrics {
    pub health: Health,
    /// Events taken in by the exporter (the health counters lag by up to
    /// a second).
    pub events: u64,
    pub probes_attached: usize,
    pub process_series: usize,
    pub top: usize,
    /// Whether `/healthz` would answer 200 (set at each scrape).
    pub healthy: bool,
    /// --pressure-warn, as a share of the ephemeral port range.
    pub pressure_warn: f64,
}

impl Families for OwnMetrics {
    fn register(&self, reg: &mut Registry) {
        let h = &self.health;
        counter(
            reg,
            "diag_events",
            "Events received from the kernel and counted in these metrics",
            self.events.max(h.received),
        );
        counter(
            reg,
            "diag_events_dropped",
            "Events lost because the ring buffer was full (raise --ring-mib): the counts are incomplete",
            h.ringbuf_full,
        );
        counters(
            reg,
            "diag_map_full",
            "Things the kernel side could not remember because a map was full: map=sock (socket owners), listen (listeners) or lock (futex waits, serve --locks)",
            &[
                (vec![("map", "sock".into())], h.sock_map_full),
                (vec![("map", "listen".into())], h.listen_map_full),
                (vec![("map", "lock".into())], h.lock_map_full),
            ],
        );
        counter(
            reg,
            "diag_read_errors",
            "Tracepoint fields or kernel structs the kernel side failed to read",
            h.read_errors + h.oom_read_errors,
        );
        counter(
            reg,
            "diag_decode_errors",
            "Records user space could not decode",
            h.decode_errors,
        );
        gauge(
            reg,
            "diag_healthy",
            "1 while /healthz answers 200 (probes attached, the live source reporting), else 0",
            i64::from(self.healthy),
        );
        super::families::gauges_f64(
            reg,
            "diag_tcp_ephemeral_ports_warning_ratio",
            "The --pressure-warn level: diag_tcp_ephemeral_ports_usage_ratio at or above it is a warning",
            &[(Vec::new(), self.pressure_warn)],
        );
        gauge(
            reg,
            "diag_probes_attached",
            "Kernel tracepoints diag has attached to",
            self.probes_attached as i64,
        );
        gauge(
            reg,
            "diag_exporter_process_series",
            "Processes with series of their own (at most diag_exporter_process_series_limit)",
            self.process_series as i64,
        );
        gauge(
            reg,
            "diag_exporter_process_series_limit",
            "The --top bound on processes with series of their own",
            self.top as i64,
        );
    }
}
