//! Block I/O per device and per process over an interval, from
//! cumulative kernel readings: requests, bytes, start-to-completion
//! latency (iostat's await), busy time (%util), average queue depth
//! (aqu-sz) and requests in flight, and errors.
//!
//! Pure: the caller reads the maps, /sys and /proc, and feeds readings
//! in; the frame it makes is what runq, top, serve, recordings and the
//! report show.

use std::collections::{HashMap, HashSet};

use diag_common::block::{
    BlockCounters, BlockDevStats, BlockProcKey, BlockProcStats, HIST_SLOTS, counters, dev_parts, op,
};
use serde::{Deserialize, Serialize};

use super::histogram::Log2Hist;

/// Processes with a row of their own in a frame; the rest are summed
/// into [`BlockFrame::other`].
pub const MAX_PROCS: usize = 256;
/// Devices in a frame (more are counted, not shown).
pub const MAX_DEVICES: usize = 256;

/// `read`, `write`, `discard`, `flush`.
pub fn op_name(o: u32) -> &'static str {
    match o {
        op::READ => "read",
        op::WRITE => "write",
        op::DISCARD => "discard",
        op::FLUSH => "flush",
        _ => "other",
    }
}

/// `MAJ:MIN` of a device key.
pub fn dev_name(dev: u32) -> String {
    let (maj, min) = dev_parts(dev);
    format!("{maj}:{min}")
}

/// One reading of the kernel's block maps.
#[derive(Debug, Default, Clone)]
pub struct Reading {
    pub devs: HashMap<u32, BlockDevStats>,
    pub procs: Vec<(BlockProcKey, BlockProcStats)>,
    /// The kernel's `BLOCK_COUNTERS`, summed over CPUs.
    pub counters: [u64; counters::LEN as usize],
    /// Requests in flight per device, counted in the map of requests
    /// (the device counters' in-flight count is only trusted up to it).
    pub inflight: HashMap<u32, u64>,
    /// Requests removed from that map as stale, since start.
    pub stale: u64,
}

/// Completed requests over an interval (or cumulative).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct IoFigures {
    pub reads: u64,
    pub writes: u64,
    pub discards: u64,
    pub flushes: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub discard_bytes: u64,
    /// Sums of start-to-completion times, ns.
    pub read_ns: u64,
    pub write_ns: u64,
    /// Of discards and flushes.
    pub other_ns: u64,
    /// Requests that completed with an error.
    pub errors: u64,
}

impl IoFigures {
    pub fn from_counters(c: &BlockCounters) -> Self {
        IoFigures {
            reads: c.ios[op::READ as usize],
            writes: c.ios[op::WRITE as usize],
            discards: c.ios[op::DISCARD as usize],
            flushes: c.ios[op::FLUSH as usize],
            read_bytes: c.bytes[op::READ as usize],
            write_bytes: c.bytes[op::WRITE as usize],
            discard_bytes: c.bytes[op::DISCARD as usize],
            read_ns: c.lat_ns[op::READ as usize],
            write_ns: c.lat_ns[op::WRITE as usize],
            other_ns: c.lat_ns[op::DISCARD as usize] + c.lat_ns[op::FLUSH as usize],
            errors: c.errors,
        }
    }

    /// Field-wise `self - before`; a field that went down (the entry was
    /// deleted and made anew) counts from zero.
    pub fn since(&self, before: &IoFigures) -> IoFigures {
        let d = |a: u64, b: u64| if a >= b { a - b } else { a };
        IoFigures {
            reads: d(self.reads, before.reads),
            writes: d(self.writes, before.writes),
            discards: d(self.discards, before.discards),
            flushes: d(self.flushes, before.flushes),
            read_bytes: d(self.read_bytes, before.read_bytes),
            write_bytes: d(self.write_bytes, before.write_bytes),
            discard_bytes: d(self.discard_bytes, before.discard_bytes),
            read_ns: d(self.read_ns, before.read_ns),
            write_ns: d(self.write_ns, before.write_ns),
            other_ns: d(self.other_ns, before.other_ns),
            errors: d(self.errors, before.errors),
        }
    }

    pub fn add(&mut self, o: &IoFigures) {
        self.reads += o.reads;
        self.writes += o.writes;
        self.discards += o.discards;
        self.flushes += o.flushes;
        self.read_bytes += o.read_bytes;
        self.write_bytes += o.write_bytes;
        self.discard_bytes += o.discard_bytes;
        self.read_ns += o.read_ns;
        self.write_ns += o.write_ns;
        self.other_ns += o.other_ns;
        self.errors += o.errors;
    }

    /// Requests of every kind.
    pub fn ios(&self) -> u64 {
        self.reads + self.writes + self.discards + self.flushes
    }

    /// Bytes read and written.
    pub fn bytes(&self) -> u64 {
        self.read_bytes + self.write_bytes
    }

    /// Time requests took, summed (the I/O wait they add up to), ns.
    pub fn lat_ns(&self) -> u64 {
        self.read_ns + self.write_ns + self.other_ns
    }

    /// Mean start-to-completion time (iostat's await), ns.
    pub fn await_ns(&self) -> Option<u64> {
        let n = self.ios();
        (n > 0).then(|| self.lat_ns() / n)
    }

    pub fn is_zero(&self) -> bool {
        *self == IoFigures::default()
    }
}

/// One device over one interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DevInterval {
    /// `MAJ:MIN`
    pub dev: String,
    /// From /sys/dev/block/MAJ:MIN/uevent (empty: unknown).
    pub name: String,
    #[serde(flatten)]
    pub io: IoFigures,
    /// Time with a request in flight, ns (%util is this over the interval).
    pub busy_ns: u64,
    /// Requests in flight at the end of the interval.
    pub inflight: u64,
    /// Latency histogram of the interval's requests (log2 µs buckets).
    pub hist: Vec<u64>,
}

impl DevInterval {
    /// iostat's %util.
    pub fn util_pct(&self, interval_ns: u64) -> f64 {
        pct(self.busy_ns, interval_ns)
    }

    /// Average requests in flight (iostat's aqu-sz): the time requests
    /// took, over the interval.
    pub fn queue_depth(&self, interval_ns: u64) -> f64 {
        if interval_ns == 0 {
            0.0
        } else {
            self.io.lat_ns() as f64 / interval_ns as f64
        }
    }

    pub fn hist(&self) -> Log2Hist {
        let mut h = Log2Hist::default();
        for (a, b) in h.counts.iter_mut().zip(&self.hist) {
            *a = *b;
        }
        h
    }

    /// `loop3` or, unnamed, `7:3`.
    pub fn label(&self) -> &str {
        if self.name.is_empty() {
            &self.dev
        } else {
            &self.name
        }
    }
}

/// One process on one device over one interval.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcIo {
    pub pid: u32,
    pub comm: String,
    /// `MAJ:MIN`
    pub dev: String,
    /// A kernel thread (writeback, the loop driver's workers...): its I/O
    /// is done on behalf of others.
    pub kthread: bool,
    #[serde(flatten)]
    pub io: IoFigures,
}

/// What the kernel side could not count, cumulative since diag started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BlockLost {
    /// Requests not noted (map of requests in flight full).
    pub req_map_full: u64,
    /// Requests counted for their device only (map of processes full).
    pub proc_map_full: u64,
    pub dev_map_full: u64,
    /// Completions of requests that started before diag.
    pub unknown_done: u64,
    /// Slow-I/O events lost to a full ring buffer.
    pub ringbuf_full: u64,
    pub slow_events: u64,
    /// Requests noted at their start.
    pub started: u64,
    /// Requests merged into another one before they were issued.
    pub merged: u64,
    /// Requests in flight for minutes (freed by the kernel without a
    /// completion diag saw), removed.
    pub stale: u64,
}

impl BlockLost {
    pub fn from_counters(c: &[u64; counters::LEN as usize]) -> Self {
        BlockLost {
            req_map_full: c[counters::REQ_MAP_FULL as usize],
            proc_map_full: c[counters::PROC_MAP_FULL as usize],
            dev_map_full: c[counters::DEV_MAP_FULL as usize],
            unknown_done: c[counters::UNKNOWN_DONE as usize],
            ringbuf_full: c[counters::RINGBUF_FULL as usize],
            slow_events: c[counters::SLOW_EVENTS as usize],
            started: c[counters::STARTED as usize],
            merged: c[counters::MERGED as usize],
            stale: 0,
        }
    }

    /// Requests or events diag lost (not the ones that predate it).
    pub fn lost(&self) -> u64 {
        self.req_map_full + self.proc_map_full + self.dev_map_full + self.ringbuf_full
    }
}

/// Block I/O over one interval: recorded once a second (frame kind 11).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BlockFrame {
    /// End of the interval, boot-time ns.
    pub ts_ns: u64,
    pub interval_ns: u64,
    /// Devices with requests, in flight or done, sorted by name.
    pub devices: Vec<DevInterval>,
    /// Processes with I/O, by device, busiest first.
    pub procs: Vec<ProcIo>,
    /// Processes beyond [`MAX_PROCS`]: how many, and their sum.
    pub procs_omitted: u64,
    pub other: IoFigures,
    pub devices_omitted: u64,
    pub lost: BlockLost,
}

impl BlockFrame {
    /// Per process, summed over its devices.
    pub fn by_pid(&self) -> HashMap<u32, IoFigures> {
        let mut out: HashMap<u32, IoFigures> = HashMap::new();
        for p in &self.procs {
            out.entry(p.pid).or_default().add(&p.io);
        }
        out
    }

    /// The whole host (all devices).
    pub fn total(&self) -> IoFigures {
        let mut t = IoFigures::default();
        for d in &self.devices {
            t.add(&d.io);
        }
        t
    }

    /// Whether a frame read from a file makes sense: bounded, and
    /// histograms of the kernel's shape.
    pub fn check(&self) -> Result<(), String> {
        if self.devices.len() > MAX_DEVICES || self.procs.len() > MAX_PROCS {
            return Err(format!(
                "{} devices and {} processes, more than diag writes",
                self.devices.len(),
                self.procs.len()
            ));
        }
        if let Some(d) = self.devices.iter().find(|d| d.hist.len() > HIST_SLOTS) {
            return Err(format!(
                "device {} has a histogram of {} buckets",
                d.dev,
                d.hist.len()
            ));
        }
        if let Some(d) = self
            .devices
            .iter()
            .find(|d| self.interval_ns > 0 && d.busy_ns > self.interval_ns.saturating_mul(2))
        {
            return Err(format!(
                "device {} was busy {} ns in an interval of {} ns",
                d.dev, d.busy_ns, self.interval_ns
            ));
        }
        Ok(())
    }
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// What user space knows about the names in a reading.
#[derive(Debug, Default, Clone)]
pub struct Names {
    /// Device key -> name (`loop3`).
    pub devs: HashMap<u32, String>,
    /// Process names from /proc (the kernel's is the first thread's).
    pub comms: HashMap<u32, String>,
    pub kthreads: HashSet<u32>,
}

/// Device counters as of a moment: the busy time of requests still in
/// flight (`inflight` of them) is counted up to then.
fn dev_now(d: &BlockDevStats, inflight: u64, now_ns: u64) -> (IoFigures, u64, Log2Hist) {
    let mut busy = d.busy_ns;
    if inflight != 0 && d.stamp_ns != 0 {
        busy += now_ns.saturating_sub(d.stamp_ns);
    }
    (
        IoFigures::from_counters(&d.c),
        busy,
        Log2Hist::from_counts(d.c.hist),
    )
}

/// Turns successive cumulative readings into frames.
#[derive(Debug, Default)]
pub struct BlockAgg {
    prev_devs: HashMap<u32, (IoFigures, u64, Log2Hist)>,
    prev_procs: HashMap<BlockProcKey, IoFigures>,
    prev_ns: Option<u64>,
    start_ns: u64,
}

impl BlockAgg {
    /// `start_ns`: when the programs were attached (the first interval
    /// starts there: the kernel's counters start at zero then).
    pub fn new(start_ns: u64) -> Self {
        BlockAgg {
            start_ns,
            ..BlockAgg::default()
        }
    }

    /// The interval since the previous reading (or the start).
    pub fn frame(&mut self, ts_ns: u64, r: &Reading, names: &Names) -> BlockFrame {
        let since = self.prev_ns.unwrap_or(self.start_ns);
        let interval_ns = ts_ns.saturating_sub(since);
        self.prev_ns = Some(ts_ns);
        let mut devices = Vec::new();
        let mut prev_devs = HashMap::new();
        for (&dev, d) in &r.devs {
            // The kernel's count, up to the requests the map holds.
            let kernel = if d.inflight < (1 << 32) {
                d.inflight
            } else {
                0
            };
            let inflight = kernel.min(r.inflight.get(&dev).copied().unwrap_or(0));
            let now = dev_now(d, inflight, ts_ns);
            let (io, busy, hist) = match self.prev_devs.get(&dev) {
                Some(p) => (
                    now.0.since(&p.0),
                    now.1.saturating_sub(p.1),
                    now.2.since(&p.2),
                ),
                None => now,
            };
            if !io.is_zero() || busy != 0 || inflight != 0 {
                devices.push(DevInterval {
                    dev: dev_name(dev),
                    name: names.devs.get(&dev).cloned().unwrap_or_default(),
                    io,
                    busy_ns: busy.min(interval_ns),
                    inflight,
                    hist: hist.counts.to_vec(),
                });
            }
            prev_devs.insert(dev, now);
        }
        self.prev_devs = prev_devs;
        devices.sort_by(|a, b| a.label().cmp(b.label()).then(a.dev.cmp(&b.dev)));
        let devices_omitted = devices.len().saturating_sub(MAX_DEVICES) as u64;
        devices.truncate(MAX_DEVICES);

        let mut procs = Vec::new();
        let mut prev_procs = HashMap::new();
        for (k, s) in &r.procs {
            let now = IoFigures::from_counters(&s.c);
            let io = match self.prev_procs.get(k) {
                Some(p) => now.since(p),
                None => now,
            };
            prev_procs.insert(*k, now);
            if io.is_zero() {
                continue;
            }
            let comm = names
                .comms
                .get(&k.tgid)
                .cloned()
                .unwrap_or_else(|| crate::text::comm(&s.comm));
            procs.push(ProcIo {
                pid: k.tgid,
                comm,
                dev: dev_name(k.dev),
                kthread: names.kthreads.contains(&k.tgid),
                io,
            });
        }
        self.prev_procs = prev_procs;
        procs.sort_by(|a, b| {
            (b.io.bytes(), b.io.ios(), b.io.lat_ns())
                .cmp(&(a.io.bytes(), a.io.ios(), a.io.lat_ns()))
                .then(a.pid.cmp(&b.pid))
                .then(a.dev.cmp(&b.dev))
        });
        let mut other = IoFigures::default();
        let mut procs_omitted = HashSet::new();
        for p in procs.iter().skip(MAX_PROCS) {
            other.add(&p.io);
            procs_omitted.insert(p.pid);
        }
        procs.truncate(MAX_PROCS);
        BlockFrame {
            ts_ns,
            interval_ns,
            devices,
            procs,
            procs_omitted: procs_omitted.len() as u64,
            other,
            devices_omitted,
            lost: BlockLost {
                stale: r.stale,
                ..BlockLost::from_counters(&r.counters)
            },
        }
    }

    /// Entries the source deleted from the kernel map: a later entry
    /// of the same key starts from zero.
    pub fn forget(&mut self, keys: &[BlockProcKey]) {
        for k in keys {
            self.prev_procs.remove(k);
        }
    }
}

/// Slow-I/O events a summary keeps (the slowest).
pub const MAX_SLOW: usize = 20;

/// One device over a whole recording.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DevSummary {
    pub dev: String,
    pub name: String,
    pub io: IoFigures,
    pub busy_ns: u64,
    /// The busiest interval's %util and when it ended.
    pub peak_util_pct: f64,
    pub peak_util_ts: u64,
    /// The deepest interval's average queue depth.
    pub peak_depth: f64,
    /// Most requests in flight seen at a reading.
    pub max_inflight: u64,
    pub hist: Vec<u64>,
}

/// One process over a whole recording (all devices).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProcSummary {
    pub pid: u32,
    pub comm: String,
    pub kthread: bool,
    pub io: IoFigures,
}

/// Block I/O over a recording, for the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BlockSummary {
    pub frames: u64,
    /// Time the frames cover, ns.
    pub span_ns: u64,
    pub devices: Vec<DevSummary>,
    pub procs: Vec<ProcSummary>,
    /// I/O of processes the frames did not name one by one.
    pub other: IoFigures,
    /// The last frame's kernel-side losses (cumulative).
    pub lost: BlockLost,
    /// The slowest requests (events), slowest first.
    #[serde(skip)]
    pub slow: Vec<diag_common::block::BlockSlowEvent>,
    pub slow_seen: u64,
}

impl BlockSummary {
    pub fn eat(&mut self, f: &BlockFrame) {
        self.frames += 1;
        self.span_ns += f.interval_ns;
        for d in &f.devices {
            let s = match self.devices.iter_mut().position(|s| s.dev == d.dev) {
                Some(i) => &mut self.devices[i],
                None => {
                    self.devices.push(DevSummary {
                        dev: d.dev.clone(),
                        name: d.name.clone(),
                        hist: vec![0; HIST_SLOTS],
                        ..DevSummary::default()
                    });
                    self.devices.last_mut().expect("just pushed")
                }
            };
            s.io.add(&d.io);
            s.busy_ns += d.busy_ns;
            let u = d.util_pct(f.interval_ns);
            if u > s.peak_util_pct {
                s.peak_util_pct = u;
                s.peak_util_ts = f.ts_ns;
            }
            s.peak_depth = s.peak_depth.max(d.queue_depth(f.interval_ns));
            s.max_inflight = s.max_inflight.max(d.inflight);
            for (a, b) in s.hist.iter_mut().zip(&d.hist) {
                *a += b;
            }
        }
        for p in &f.procs {
            let full = self.procs.len() >= 4 * MAX_PROCS;
            match self
                .procs
                .iter_mut()
                // A kernel worker's name says what it works on now
                // (kworker/u8:0-loop0): the same thread all the same.
                .find(|s| s.pid == p.pid && (s.comm == p.comm || (s.kthread && p.kthread)))
            {
                Some(s) => s.io.add(&p.io),
                None if !full => self.procs.push(ProcSummary {
                    pid: p.pid,
                    comm: p.comm.clone(),
                    kthread: p.kthread,
                    io: p.io,
                }),
                None => self.other.add(&p.io),
            }
        }
        self.other.add(&f.other);
        self.lost = f.lost;
    }

    pub fn slow_event(&mut self, e: &diag_common::block::BlockSlowEvent) {
        self.slow_seen += 1;
        self.slow.push(*e);
        self.slow.sort_by_key(|e| std::cmp::Reverse(e.lat_ns));
        self.slow.truncate(MAX_SLOW);
    }

    /// Processes by bytes, then requests.
    pub fn sorted_procs(&self) -> Vec<&ProcSummary> {
        let mut v: Vec<&ProcSummary> = self.procs.iter().collect();
        v.sort_by(|a, b| {
            (b.io.bytes(), b.io.ios())
                .cmp(&(a.io.bytes(), a.io.ios()))
                .then(a.pid.cmp(&b.pid))
        });
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diag_common::block::dev_key;

    fn counters(reads: u64, read_bytes: u64, read_ns: u64) -> BlockCounters {
        let mut c = BlockCounters::zeroed();
        c.ios[op::READ as usize] = reads;
        c.bytes[op::READ as usize] = read_bytes;
        c.lat_ns[op::READ as usize] = read_ns;
        c.hist[7] = reads;
        c
    }

    fn reading(reads: u64, inflight: u64, busy: u64, stamp: u64) -> Reading {
        let dev = dev_key(7, 3);
        let mut d = BlockDevStats::zeroed();
        d.c = counters(reads, reads * 4096, reads * 100_000);
        d.inflight = inflight;
        d.busy_ns = busy;
        d.stamp_ns = stamp;
        let mut p = BlockProcStats::zeroed();
        p.c = counters(reads, reads * 4096, reads * 100_000);
        p.comm = *b"dd\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
        Reading {
            devs: [(dev, d)].into_iter().collect(),
            procs: vec![(BlockProcKey { tgid: 42, dev }, p)],
            counters: [0; counters::LEN as usize],
            inflight: [(dev, inflight)].into_iter().collect(),
            stale: 0,
        }
    }

    #[test]
    fn intervals_from_cumulative_readings() {
        let mut names = Names::default();
        names.devs.insert(dev_key(7, 3), "loop3".into());
        names.kthreads.insert(7);
        let mut agg = BlockAgg::new(1_000_000_000);
        // First: since the start.
        let f = agg.frame(
            2_000_000_000,
            &reading(10, 0, 1_000_000, 1_900_000_000),
            &names,
        );
        assert_eq!(f.interval_ns, 1_000_000_000);
        assert_eq!(f.devices.len(), 1);
        let d = &f.devices[0];
        assert_eq!((d.label(), d.dev.as_str()), ("loop3", "7:3"));
        assert_eq!(
            (d.io.reads, d.io.read_bytes, d.busy_ns),
            (10, 40960, 1_000_000)
        );
        assert_eq!(d.io.await_ns(), Some(100_000));
        assert!((d.util_pct(f.interval_ns) - 0.1).abs() < 1e-9);
        assert!((d.queue_depth(f.interval_ns) - 0.001).abs() < 1e-9);
        assert_eq!(f.procs[0].pid, 42);
        assert_eq!(f.procs[0].comm, "dd");
        assert!(!f.procs[0].kthread);
        // Second: the difference; a request in flight since 2.5 s is busy
        // up to the reading.
        let f = agg.frame(
            3_000_000_000,
            &reading(15, 1, 3_000_000, 2_500_000_000),
            &names,
        );
        let d = &f.devices[0];
        assert_eq!(d.io.reads, 5);
        assert_eq!(d.busy_ns, 2_000_000 + 500_000_000);
        assert_eq!(d.inflight, 1);
        assert_eq!(d.hist[7], 5);
        assert_eq!(f.by_pid()[&42].reads, 5);
        // Nothing new: no process row, the device still has one in flight.
        let f = agg.frame(
            4_000_000_000,
            &reading(15, 1, 3_000_000, 2_500_000_000),
            &names,
        );
        assert!(f.procs.is_empty());
        assert_eq!(f.devices[0].busy_ns, 1_000_000_000);
        // The entry deleted and made anew: counts from zero.
        agg.forget(&[BlockProcKey {
            tgid: 42,
            dev: dev_key(7, 3),
        }]);
        let f = agg.frame(
            5_000_000_000,
            &reading(2, 0, 3_000_000, 4_500_000_000),
            &names,
        );
        assert_eq!(f.procs[0].io.reads, 2);
        assert!(f.check().is_ok());
    }

    /// A device counter that says a request is in flight when the map of
    /// requests holds none (a request freed without a completion): not
    /// busy, nothing in flight.
    #[test]
    fn in_flight_is_only_what_the_map_holds() {
        let mut r = reading(10, 1, 1_000_000, 1_500_000_000);
        r.inflight.clear();
        let f = BlockAgg::new(1_000_000_000).frame(2_000_000_000, &r, &Names::default());
        assert_eq!(
            (f.devices[0].inflight, f.devices[0].busy_ns),
            (0, 1_000_000)
        );
    }

    #[test]
    fn many_processes_are_bounded_and_summed() {
        let dev = dev_key(254, 0);
        let mut r = Reading::default();
        for pid in 1..=(MAX_PROCS as u32 + 10) {
            let mut p = BlockProcStats::zeroed();
            p.c = counters(1, u64::from(pid), 1);
            r.procs.push((BlockProcKey { tgid: pid, dev }, p));
        }
        let f = BlockAgg::new(0).frame(1, &r, &Names::default());
        assert_eq!(f.procs.len(), MAX_PROCS);
        assert_eq!(f.procs_omitted, 10);
        assert_eq!(f.other.reads, 10);
        assert_eq!(f.other.read_bytes, (1..=10).sum::<u64>());
        assert_eq!(f.procs[0].pid, MAX_PROCS as u32 + 10, "busiest first");
    }

    #[test]
    fn hostile_frames_are_refused() {
        let mut f = BlockFrame {
            interval_ns: 1_000,
            ..BlockFrame::default()
        };
        f.devices.push(DevInterval {
            busy_ns: 5_000,
            ..DevInterval::default()
        });
        assert!(f.check().unwrap_err().contains("busy"));
        f.devices[0].busy_ns = 0;
        f.devices[0].hist = vec![0; 40];
        assert!(f.check().unwrap_err().contains("histogram"));
        let json = serde_json::to_string(&BlockFrame::default()).unwrap();
        let back: BlockFrame = serde_json::from_str(&json).unwrap();
        assert_eq!(back, BlockFrame::default());
    }
}
