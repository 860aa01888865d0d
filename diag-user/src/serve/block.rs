//! Block I/O families: per cgroup (bounded like the scheduler's), the
//! requests, bytes and I/O time of its processes; per device, iostat's
//! counters (requests, bytes, time, busy time, errors), requests in
//! flight and a latency histogram; and what the kernel side lost.

use std::collections::BTreeMap;

use prometheus_client::registry::Registry;

use super::families::{Families, Labels, counters, counters_f64, gauges, histograms};
use crate::aggregate::{
    block::{BlockFrame, BlockLost, IoFigures},
    histogram::Log2Hist,
};

/// At most this many devices get series (the first named).
pub const MAX_DEVICES: usize = 64;

/// One device's totals since diag started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DevTotals {
    pub io: IoFigures,
    pub busy_ns: u64,
    pub inflight: u64,
    pub hist: Log2Hist,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct BlockMetrics {
    pub by_cgroup: BTreeMap<String, IoFigures>,
    /// By device name (`vda`, or `MAJ:MIN`).
    pub by_device: BTreeMap<String, DevTotals>,
    pub lost: BlockLost,
    /// The block probes are off (--no-io): no families at all.
    pub off: bool,
}

impl BlockMetrics {
    /// Take in one frame; `cgroup_of` gives the (bounded) cgroup label of
    /// a process.
    pub fn eat(&mut self, f: &BlockFrame, mut cgroup_of: impl FnMut(u32) -> String) {
        for p in &f.procs {
            self.by_cgroup
                .entry(cgroup_of(p.pid))
                .or_default()
                .add(&p.io);
        }
        if !f.other.is_zero() {
            self.by_cgroup
                .entry("other".into())
                .or_default()
                .add(&f.other);
        }
        for d in &f.devices {
            let name = d.label().to_string();
            if !self.by_device.contains_key(&name) && self.by_device.len() >= MAX_DEVICES {
                continue;
            }
            let t = self.by_device.entry(name).or_default();
            t.io.add(&d.io);
            t.busy_ns += d.busy_ns;
            t.inflight = d.inflight;
            t.hist.merge(&d.hist());
        }
        // Devices idle in this frame have nothing in flight.
        for (name, t) in self.by_device.iter_mut() {
            if !f.devices.iter().any(|d| d.label() == name) {
                t.inflight = 0;
            }
        }
        self.lost = f.lost;
    }
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// `(op, requests, bytes, ns)` of each kind of request.
fn by_op(io: &IoFigures) -> [(&'static str, u64, u64, u64); 4] {
    [
        ("read", io.reads, io.read_bytes, io.read_ns),
        ("write", io.writes, io.write_bytes, io.write_ns),
        ("discard", io.discards, io.discard_bytes, 0),
        ("flush", io.flushes, 0, 0),
    ]
}

impl Families for BlockMetrics {
    fn register(&self, reg: &mut Registry) {
        if self.off {
            return;
        }
        let mut reqs = Vec::new();
        let mut bytes = Vec::new();
        let mut time = Vec::new();
        for (cg, io) in &self.by_cgroup {
            for (op, n, b, _) in by_op(io) {
                reqs.push((vec![("cgroup", cg.clone()), ("op", op.to_string())], n));
                bytes.push((vec![("cgroup", cg.clone()), ("op", op.to_string())], b));
            }
            time.push((vec![("cgroup", cg.clone())], secs(io.lat_ns())));
        }
        counters(
            reg,
            "diag_block_requests",
            "Block requests completed, by the cgroup of the process that started them (writeback: the kernel thread's) and op",
            &reqs,
        );
        counters(
            reg,
            "diag_block_bytes",
            "Bytes of completed block requests, by cgroup and op",
            &bytes,
        );
        counters_f64(
            reg,
            "diag_block_io_seconds",
            "Time block requests took from their start to their completion, summed, by cgroup (the processes' I/O wait)",
            &time,
        );
        let dev = |d: &String| -> Labels { vec![("device", d.clone())] };
        let mut reqs = Vec::new();
        let mut bytes = Vec::new();
        let mut time = Vec::new();
        for (d, t) in &self.by_device {
            for (op, n, b, ns) in by_op(&t.io) {
                let l = vec![("device", d.clone()), ("op", op.to_string())];
                reqs.push((l.clone(), n));
                bytes.push((l.clone(), b));
                if op == "read" || op == "write" {
                    time.push((l, secs(ns)));
                }
            }
        }
        counters(
            reg,
            "diag_block_device_requests",
            "Block requests completed on a device, by op (iostat's r/s, w/s)",
            &reqs,
        );
        counters(
            reg,
            "diag_block_device_bytes",
            "Bytes completed on a device, by op (iostat's rkB/s, wkB/s)",
            &bytes,
        );
        counters_f64(
            reg,
            "diag_block_device_io_seconds",
            "Start-to-completion time of a device's requests, summed, by op: over diag_block_device_requests_total, iostat's r_await/w_await; its rate is aqu-sz",
            &time,
        );
        counters_f64(
            reg,
            "diag_block_device_busy_seconds",
            "Time a device had a request in flight: its rate is iostat's %util (over 100)",
            &self
                .by_device
                .iter()
                .map(|(d, t)| (dev(d), secs(t.busy_ns)))
                .collect::<Vec<_>>(),
        );
        counters(
            reg,
            "diag_block_device_errors",
            "Block requests that completed with an error, by device",
            &self
                .by_device
                .iter()
                .map(|(d, t)| (dev(d), t.io.errors))
                .collect::<Vec<_>>(),
        );
        gauges(
            reg,
            "diag_block_device_inflight",
            "Requests in flight on a device at the last reading (queue depth)",
            &self
                .by_device
                .iter()
                .map(|(d, t)| (dev(d), i64::try_from(t.inflight).unwrap_or(i64::MAX)))
                .collect::<Vec<_>>(),
        );
        histograms(
            reg,
            "diag_block_device_latency_seconds",
            "Start-to-completion time of a device's requests, per request; buckets are powers of two",
            self.by_device
                .iter()
                .map(|(d, t)| (dev(d), &t.hist, t.io.lat_ns()))
                .collect(),
        );
        let l = &self.lost;
        counters(
            reg,
            "diag_block_lost",
            "Block I/O the kernel side could not count: requests (map of requests in flight full), per-process (map of processes full), devices (map full), slow-I/O events (ring buffer full)",
            &[
                (vec![("what", "requests".to_string())], l.req_map_full),
                (vec![("what", "processes".to_string())], l.proc_map_full),
                (vec![("what", "devices".to_string())], l.dev_map_full),
                (vec![("what", "events".to_string())], l.ringbuf_full),
            ],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::block::{DevInterval, ProcIo};

    #[test]
    fn frames_add_up_per_cgroup_and_device() {
        let mut m = BlockMetrics::default();
        let io = IoFigures {
            reads: 3,
            read_bytes: 3 * 4096,
            read_ns: 3_000_000,
            ..IoFigures::default()
        };
        let mut hist = vec![0u64; 32];
        hist[10] = 3;
        let f = BlockFrame {
            ts_ns: 1,
            interval_ns: 1_000_000_000,
            devices: vec![DevInterval {
                dev: "7:3".into(),
                name: "loop3".into(),
                io,
                busy_ns: 2_000_000,
                inflight: 1,
                hist,
            }],
            procs: vec![ProcIo {
                pid: 42,
                comm: "dd".into(),
                dev: "7:3".into(),
                kthread: false,
                io,
            }],
            ..BlockFrame::default()
        };
        m.eat(&f, |_| "/test".into());
        m.eat(&f, |_| "/test".into());
        assert_eq!(m.by_cgroup["/test"].reads, 6);
        assert_eq!(m.by_device["loop3"].busy_ns, 4_000_000);
        let mut reg = Registry::default();
        m.register(&mut reg);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        assert!(
            text.contains("diag_block_requests_total{cgroup=\"/test\",op=\"read\"} 6"),
            "{text}"
        );
        assert!(
            text.contains("diag_block_device_busy_seconds_total{device=\"loop3\"} 0.004"),
            "{text}"
        );
        assert!(
            text.contains("diag_block_device_inflight{device=\"loop3\"} 1"),
            "{text}"
        );
        assert!(text.contains("diag_block_device_latency_seconds_count{device=\"loop3\"} 6"));
        m.off = true;
        let mut reg = Registry::default();
        m.register(&mut reg);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        assert!(!text.contains("diag_block"), "{text}");
    }
}
