//! Log2 latency histograms as the kernel fills them (see
//! `diag_common::sched::hist_slot`): differences between two readings,
//! percentiles, and a terminal rendering like bcc's runqlat.

use diag_common::sched::{HIST_SLOTS, slot_high_ns, slot_low_ns};
use serde::Serialize;

/// A log2 histogram of values recorded one at a time (nanoseconds of
/// connect times and lifetimes): bucket i counts values in [2^i, 2^(i+1)),
/// with their count and the largest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ValueHist {
    pub buckets: Vec<u64>,
    pub count: u64,
    pub max: u64,
}

impl ValueHist {
    pub fn record(&mut self, v: u64) {
        let b = (64 - v.leading_zeros()).saturating_sub(1) as usize;
        if self.buckets.len() <= b {
            self.buckets.resize(b + 1, 0);
        }
        self.buckets[b] += 1;
        self.count += 1;
        self.max = self.max.max(v);
    }

    /// The upper bound of the bucket holding quantile `q` (0..=1), capped
    /// at the maximum seen; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let upper = if i >= 63 {
                    u64::MAX
                } else {
                    (1u64 << (i + 1)) - 1
                };
                return upper.min(self.max);
            }
        }
        self.max
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Log2Hist {
    pub counts: [u64; HIST_SLOTS],
}

impl Default for Log2Hist {
    fn default() -> Self {
        Log2Hist {
            counts: [0; HIST_SLOTS],
        }
    }
}

impl Log2Hist {
    pub fn from_counts(counts: [u64; HIST_SLOTS]) -> Self {
        Log2Hist { counts }
    }

    /// Record one value (for tests and user-space sources).
    pub fn record(&mut self, ns: u64) {
        self.counts[diag_common::sched::hist_slot(ns)] += 1;
    }

    /// What was added between `before` and `self` (two cumulative
    /// readings); a bucket that went down (a reset) counts from zero.
    pub fn since(&self, before: &Log2Hist) -> Log2Hist {
        let mut out = Log2Hist::default();
        for (i, o) in out.counts.iter_mut().enumerate() {
            let (now, was) = (self.counts[i], before.counts[i]);
            *o = if now >= was { now - was } else { now };
        }
        out
    }

    /// Like [`Log2Hist::since`], but a bucket that went down adds nothing.
    pub fn since_saturating(&self, before: &Log2Hist) -> Log2Hist {
        let mut out = Log2Hist::default();
        for (i, o) in out.counts.iter_mut().enumerate() {
            *o = self.counts[i].saturating_sub(before.counts[i]);
        }
        out
    }

    pub fn merge(&mut self, other: &Log2Hist) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The `q`-quantile (0.0..=1.0) in ns, interpolated linearly inside
    /// its bucket; None when empty. Accurate to the bucket (a factor of 2).
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let q = q.clamp(0.0, 1.0);
        // Rank of the wanted value, 1-based.
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0u64;
        for (slot, &c) in self.counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            if seen + c >= rank {
                let lo = slot_low_ns(slot) as f64;
                let hi = slot_high_ns(slot) as f64;
                let frac = (rank - seen) as f64 / c as f64;
                return Some((lo + (hi - lo) * frac) as u64);
            }
            seen += c;
        }
        None
    }

    /// The upper bound of the highest non-empty bucket.
    pub fn max_bound(&self) -> Option<u64> {
        self.counts.iter().rposition(|&c| c > 0).map(slot_high_ns)
    }

    /// Text like bcc's runqlat, in microseconds; empty buckets above the
    /// highest used one are left out.
    pub fn render(&self, width: usize) -> String {
        let Some(last) = self.counts.iter().rposition(|&c| c > 0) else {
            return "     (no run-queue waits)\n".into();
        };
        let peak = self.counts.iter().copied().max().unwrap_or(1).max(1);
        let mut out = format!("{:>24} : {:<8} {}\n", "usecs", "count", "distribution");
        for slot in 0..=last {
            let lo = slot_low_ns(slot) / 1000;
            let hi = slot_high_ns(slot) / 1000 - 1;
            let c = self.counts[slot];
            let stars = ((c as u128 * width as u128) / peak as u128) as usize;
            let range = if slot == HIST_SLOTS - 1 {
                format!("{lo} -> ...")
            } else {
                format!("{lo} -> {hi}")
            };
            out.push_str(&format!(
                "{range:>24} : {c:<8} |{}{}|\n",
                "*".repeat(stars),
                " ".repeat(width - stars)
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_quantiles_are_bucket_bounds_capped_at_the_max() {
        let mut h = ValueHist::default();
        assert_eq!(h.quantile(0.5), 0);
        for v in [1u64, 2, 3, 1000, 1000, 1000, 1_000_000] {
            h.record(v);
        }
        assert_eq!(h.count, 7);
        assert_eq!(h.quantile(0.5), 1023);
        assert_eq!(h.quantile(1.0), 1_000_000);
        assert_eq!(h.max, 1_000_000);
    }

    #[test]
    fn quantiles_and_bounds() {
        let mut h = Log2Hist::default();
        assert_eq!(h.quantile(0.5), None);
        assert_eq!(h.max_bound(), None);
        for _ in 0..99 {
            h.record(1_500); // bucket [1, 2) us
        }
        h.record(20_000_000); // 20 ms: bucket [16384, 32768) us
        assert_eq!(h.total(), 100);
        let p50 = h.quantile(0.5).unwrap();
        assert!((1_000..2_000).contains(&p50), "{p50}");
        let p99 = h.quantile(0.99).unwrap();
        assert!(p99 <= 2_000, "{p99}");
        let p100 = h.quantile(1.0).unwrap();
        assert!((16_384_000..=32_768_000).contains(&p100), "{p100}");
        assert_eq!(h.max_bound(), Some(32_768_000));
    }

    #[test]
    fn differences() {
        let mut a = Log2Hist::default();
        a.record(5_000);
        let mut b = a;
        b.record(5_000);
        b.record(100);
        let d = b.since(&a);
        assert_eq!(d.total(), 2);
        assert_eq!(d.counts[0], 1);
        assert_eq!(d.counts[3], 1);
        // A reading lower than the one before (entry recreated) counts from 0.
        assert_eq!(a.since(&b).total(), 1);
        let mut m = a;
        m.merge(&d);
        assert_eq!(m, b);
    }

    #[test]
    fn renders_like_runqlat() {
        let mut h = Log2Hist::default();
        h.record(500);
        h.record(3_000);
        h.record(3_500);
        let text = h.render(10);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("usecs") && lines[0].contains("distribution"));
        assert_eq!(lines.len(), 1 + 3, "{text}");
        assert!(
            lines[1].contains("0 -> 0") && lines[1].contains("|*****     |"),
            "{text}"
        );
        assert!(
            lines[3].contains("2 -> 3") && lines[3].contains("|**********|"),
            "{text}"
        );
        assert!(
            Log2Hist::default()
                .render(10)
                .contains("no run-queue waits")
        );
    }
}
