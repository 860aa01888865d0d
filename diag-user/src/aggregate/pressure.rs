//! Pressure stall information (PSI): the kernel's own accounting of the
//! wall time during which tasks waited for a CPU, for memory or for I/O,
//! host-wide and per cgroup v2 directory.
//!
//! Pure: [`PressureAgg`] takes readings of the pressure files (parsed at
//! the edge, `source::pressure`) and makes [`PressureFrame`]s, the
//! figures every view shows and recordings keep: some/full averages,
//! totals, and the stall time of each interval (the totals' deltas),
//! with the cgroups bounded to the [`FRAME_CGROUPS`] that stalled most.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// A frame names at most this many cgroups (those with the most stall
/// time in its interval); the rest are summed into
/// [`PressureFrame::others`].
pub const FRAME_CGROUPS: usize = 50;
/// The longest cgroup path a frame read from a file may hold.
pub const MAX_CGROUP_PATH: usize = 4096;

/// The three resources, in the kernel's order and words.
pub const RESOURCES: [&str; 3] = ["cpu", "memory", "io"];

/// One line of a pressure file (`some avg10=0.00 avg60=0.00 avg300=0.00
/// total=0`): averages in percent, total in µs since the cgroup was
/// made (the host's: since boot).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PsiLine {
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
    pub total_us: u64,
}

/// One pressure file: `some` (at least one task stalled) and `full` (all
/// non-idle tasks stalled at once; absent in old kernels' `cpu`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Psi {
    pub some: Option<PsiLine>,
    pub full: Option<PsiLine>,
}

/// The three pressure files of one place (the host or a cgroup).
pub type PsiFiles = [Option<Psi>; 3];

/// One reading of every pressure file, as read at the edge.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PressureReading {
    pub ts_ns: u64,
    pub host: PsiFiles,
    /// Each cgroup v2 directory by its path under the hierarchy's root
    /// (`/` is the root itself).
    pub cgroups: Vec<(String, PsiFiles)>,
    /// Pressure files that could not be read or parsed, skipped.
    pub skipped: u64,
}

/// One line's figures over an interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PsiFig {
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
    /// The kernel's total, µs.
    pub total_us: u64,
    /// Stall time in the interval (the total's growth), µs; 0 in the
    /// first reading.
    pub stall_us: u64,
}

/// `some` and `full` of one resource.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ResPsi {
    pub some: Option<PsiFig>,
    pub full: Option<PsiFig>,
}

/// The three resources of one place.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Pressures {
    pub cpu: ResPsi,
    pub memory: ResPsi,
    pub io: ResPsi,
}

impl Pressures {
    pub fn get(&self, i: usize) -> &ResPsi {
        match i {
            0 => &self.cpu,
            1 => &self.memory,
            _ => &self.io,
        }
    }

    fn get_mut(&mut self, i: usize) -> &mut ResPsi {
        match i {
            0 => &mut self.cpu,
            1 => &mut self.memory,
            _ => &mut self.io,
        }
    }

    /// Every (resource, kind, figures) there is.
    pub fn each(&self) -> impl Iterator<Item = (&'static str, &'static str, &PsiFig)> {
        (0..3).flat_map(move |i| {
            let r = self.get(i);
            [("some", &r.some), ("full", &r.full)]
                .into_iter()
                .filter_map(move |(k, f)| f.as_ref().map(|f| (RESOURCES[i], k, f)))
        })
    }

    /// The `some` stall time of the three resources, µs: how a cgroup is
    /// ranked.
    pub fn stall_us(&self) -> u64 {
        (0..3)
            .filter_map(|i| self.get(i).some.map(|f| f.stall_us))
            .fold(0u64, u64::saturating_add)
    }

    /// No stall in the interval and every average 0.
    pub fn quiet(&self) -> bool {
        self.each()
            .all(|(_, _, f)| f.stall_us == 0 && f.avg10 == 0.0 && f.avg60 == 0.0 && f.avg300 == 0.0)
    }

    /// Add `o` in: stall times and totals summed, averages the highest.
    fn add(&mut self, o: &Pressures) {
        for i in 0..3 {
            let (a, b) = (self.get_mut(i), o.get(i));
            for (x, y) in [(&mut a.some, &b.some), (&mut a.full, &b.full)] {
                if let Some(y) = y {
                    let x = x.get_or_insert_with(PsiFig::default);
                    x.avg10 = x.avg10.max(y.avg10);
                    x.avg60 = x.avg60.max(y.avg60);
                    x.avg300 = x.avg300.max(y.avg300);
                    x.total_us = x.total_us.saturating_add(y.total_us);
                    x.stall_us = x.stall_us.saturating_add(y.stall_us);
                }
            }
        }
    }
}

/// One cgroup's figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CgroupPressure {
    pub cgroup: String,
    #[serde(flatten)]
    pub psi: Pressures,
}

/// The pressure figures of one interval: what `record` writes once a
/// second, `serve` exports and `top` shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PressureFrame {
    /// The interval's end (boot-time ns) and length (0: the first
    /// reading, no stall times yet).
    pub ts_ns: u64,
    pub interval_ns: u64,
    pub host: Pressures,
    /// At most [`FRAME_CGROUPS`], the most stall time first.
    pub cgroups: Vec<CgroupPressure>,
    /// The cgroups beyond those, summed, and how many they were.
    pub others: Pressures,
    pub others_count: u64,
    /// Cgroups that were quiet (no stall in the interval, every average
    /// 0): counted, not named.
    #[serde(default)]
    pub quiet_count: u64,
    /// Pressure files skipped in this reading (unreadable or malformed).
    pub skipped: u64,
}

impl PressureFrame {
    /// What is wrong with a frame read from a file, if anything.
    pub fn damage(&self) -> Option<String> {
        if self.cgroups.len() > FRAME_CGROUPS {
            return Some(format!(
                "{} cgroups, over the {FRAME_CGROUPS} diag writes",
                self.cgroups.len()
            ));
        }
        let places = std::iter::once(("the host", &self.host))
            .chain(self.cgroups.iter().map(|c| (c.cgroup.as_str(), &c.psi)));
        for (name, p) in places {
            if name.len() > MAX_CGROUP_PATH {
                return Some(format!(
                    "a cgroup path of {} bytes, over {MAX_CGROUP_PATH}",
                    name.len()
                ));
            }
            for (res, kind, f) in p.each() {
                for a in [f.avg10, f.avg60, f.avg300] {
                    if !(0.0..=100.0).contains(&a) {
                        return Some(format!(
                            "{name}: {res} {kind} has an average of {a}, not a percentage"
                        ));
                    }
                }
                if f.stall_us > f.total_us {
                    return Some(format!(
                        "{name}: {res} {kind} stalled {} us in the interval, over its total {} us",
                        f.stall_us, f.total_us
                    ));
                }
            }
        }
        None
    }

    /// The figures of `cgroup`, when the frame names it.
    pub fn cgroup(&self, cgroup: &str) -> Option<&Pressures> {
        self.cgroups
            .iter()
            .find(|c| c.cgroup == cgroup)
            .map(|c| &c.psi)
    }
}

/// Makes frames from readings: keeps the previous totals of every place.
#[derive(Debug, Default)]
pub struct PressureAgg {
    last_ns: Option<u64>,
    host: [[Option<u64>; 2]; 3],
    cgroups: HashMap<String, [[Option<u64>; 2]; 3]>,
}

/// The figures of one place's files, against its previous totals (which
/// become these). A total that went down (a cgroup removed and made
/// again under the same name) counts from zero.
fn figures(files: &PsiFiles, prev: &mut [[Option<u64>; 2]; 3]) -> Pressures {
    let mut out = Pressures::default();
    for i in 0..3 {
        let Some(psi) = files[i] else {
            prev[i] = [None, None];
            continue;
        };
        let r = out.get_mut(i);
        for (k, (line, slot)) in [(psi.some, &mut r.some), (psi.full, &mut r.full)]
            .into_iter()
            .enumerate()
        {
            let Some(l) = line else {
                prev[i][k] = None;
                continue;
            };
            let stall_us = match prev[i][k] {
                Some(p) if p <= l.total_us => l.total_us - p,
                Some(_) => l.total_us,
                None => 0,
            };
            prev[i][k] = Some(l.total_us);
            *slot = Some(PsiFig {
                avg10: l.avg10,
                avg60: l.avg60,
                avg300: l.avg300,
                total_us: l.total_us,
                stall_us,
            });
        }
    }
    out
}

impl PressureAgg {
    pub fn new() -> Self {
        Self::default()
    }

    /// The frame of `r`, against the reading before.
    pub fn update(&mut self, r: &PressureReading) -> PressureFrame {
        let interval_ns = self.last_ns.map_or(0, |t| r.ts_ns.saturating_sub(t));
        let first = self.last_ns.is_none();
        self.last_ns = Some(r.ts_ns);
        let host = figures(&r.host, &mut self.host);
        let mut seen = HashMap::with_capacity(r.cgroups.len());
        let mut all: Vec<CgroupPressure> = Vec::with_capacity(r.cgroups.len());
        for (path, files) in &r.cgroups {
            let mut prev = self.cgroups.remove(path).unwrap_or_default();
            // A cgroup made since the last reading: its whole total
            // fell in the interval.
            if !first && prev == <[[Option<u64>; 2]; 3]>::default() {
                prev = [[Some(0); 2]; 3];
            }
            let psi = figures(files, &mut prev);
            seen.insert(path.clone(), prev);
            all.push(CgroupPressure {
                cgroup: path.clone(),
                psi,
            });
        }
        // Cgroups that are gone are forgotten.
        self.cgroups = seen;
        let before = all.len();
        all.retain(|c| !c.psi.quiet());
        let quiet_count = (before - all.len()) as u64;
        all.sort_by(|a, b| {
            b.psi
                .stall_us()
                .cmp(&a.psi.stall_us())
                .then_with(|| a.cgroup.cmp(&b.cgroup))
        });
        let rest = all.split_off(all.len().min(FRAME_CGROUPS));
        let mut others = Pressures::default();
        for c in &rest {
            others.add(&c.psi);
        }
        PressureFrame {
            ts_ns: r.ts_ns,
            interval_ns,
            host,
            cgroups: all,
            others,
            others_count: rest.len() as u64,
            quiet_count,
            skipped: r.skipped,
        }
    }
}

/// At most this many cgroups are summed over a recording; frames naming
/// more are counted in [`PressureSummary::cgroups_left_off`].
pub const SUMMARY_CGROUPS: usize = 10_000;

/// The pressure of a whole recording (or window): what the report says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PressureSummary {
    /// Frames read.
    pub frames: u64,
    /// The time the frames' intervals cover, ns.
    pub covered_ns: u64,
    /// Host stall time per (resource, kind), µs, over the frames.
    pub host_stall_us: BTreeMap<(&'static str, &'static str), u64>,
    /// The highest host avg10 per (resource, kind) and when.
    pub peak_avg10: BTreeMap<(&'static str, &'static str), (f64, u64)>,
    /// Each named cgroup's `some` stall time per resource, µs.
    pub cgroups: BTreeMap<String, [u64; 3]>,
    /// Stall time of cgroups the frames did not name, µs, per resource.
    pub others_us: [u64; 3],
    pub cgroups_left_off: u64,
    /// Pressure files skipped when the frames were read.
    pub skipped: u64,
}

impl PressureSummary {
    pub fn add(&mut self, f: &PressureFrame) {
        self.frames += 1;
        self.covered_ns = self.covered_ns.saturating_add(f.interval_ns);
        self.skipped = self.skipped.saturating_add(f.skipped);
        for (r, k, fig) in f.host.each() {
            let s = self.host_stall_us.entry((r, k)).or_default();
            *s = s.saturating_add(fig.stall_us);
            let p = self
                .peak_avg10
                .entry((r, k))
                .or_insert((fig.avg10, f.ts_ns));
            if fig.avg10 > p.0 {
                *p = (fig.avg10, f.ts_ns);
            }
        }
        for c in &f.cgroups {
            if c.psi.stall_us() == 0 {
                continue;
            }
            if !self.cgroups.contains_key(&c.cgroup) && self.cgroups.len() >= SUMMARY_CGROUPS {
                self.cgroups_left_off += 1;
                continue;
            }
            let e = self.cgroups.entry(c.cgroup.clone()).or_default();
            for (i, v) in e.iter_mut().enumerate() {
                *v = v.saturating_add(c.psi.get(i).some.map_or(0, |x| x.stall_us));
            }
        }
        for (i, v) in self.others_us.iter_mut().enumerate() {
            *v = v.saturating_add(f.others.get(i).some.map_or(0, |x| x.stall_us));
        }
    }

    /// The `n` cgroups with the most stall time (all resources), most first.
    pub fn top_cgroups(&self, n: usize) -> Vec<(&str, [u64; 3])> {
        let mut v: Vec<(&str, [u64; 3])> =
            self.cgroups.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        let sum = |a: &[u64; 3]| a.iter().fold(0u64, |x, y| x.saturating_add(*y));
        v.sort_by(|a, b| sum(&b.1).cmp(&sum(&a.1)).then(a.0.cmp(b.0)));
        v.truncate(n);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn psi(some_total: u64) -> Option<Psi> {
        Some(Psi {
            some: Some(PsiLine {
                avg10: 1.0,
                avg60: 2.0,
                avg300: 3.0,
                total_us: some_total,
            }),
            full: None,
        })
    }

    #[test]
    fn stall_time_is_the_totals_growth() {
        let mut agg = PressureAgg::new();
        let reading = |ts_ns, host, cg| PressureReading {
            ts_ns,
            host: [psi(host), None, None],
            cgroups: vec![("/a".to_string(), [psi(cg), None, None])],
            skipped: 0,
        };
        let f = agg.update(&reading(1_000, 500, 100));
        assert_eq!(f.interval_ns, 0);
        assert_eq!(f.host.cpu.some.unwrap().stall_us, 0, "nothing to diff yet");
        assert_eq!(f.host.cpu.some.unwrap().total_us, 500);
        let f = agg.update(&reading(2_000, 1_700, 400));
        assert_eq!(f.interval_ns, 1_000);
        assert_eq!(f.host.cpu.some.unwrap().stall_us, 1_200);
        assert_eq!(f.cgroup("/a").unwrap().cpu.some.unwrap().stall_us, 300);
        assert_eq!(f.host.memory, ResPsi::default());
        // /a removed and made again: its total starts over.
        let f = agg.update(&reading(3_000, 1_700, 50));
        assert_eq!(f.cgroup("/a").unwrap().cpu.some.unwrap().stall_us, 50);
        assert_eq!(f.damage(), None);
    }

    #[test]
    fn cgroups_are_bounded_to_those_that_stalled_most() {
        let mut agg = PressureAgg::new();
        let reading = |ts_ns, mult: u64| PressureReading {
            ts_ns,
            host: [psi(0), None, None],
            cgroups: (0..120u64)
                .map(|i| (format!("/c{i:03}"), [psi(i * mult), psi(mult), None]))
                .collect(),
            skipped: 3,
        };
        agg.update(&reading(0, 0));
        let f = agg.update(&reading(1_000_000_000, 10));
        assert_eq!(f.cgroups.len(), FRAME_CGROUPS);
        assert_eq!(f.cgroups[0].cgroup, "/c119", "the most stall time first");
        assert_eq!(f.cgroups[0].psi.stall_us(), 1190 + 10);
        assert_eq!(f.cgroups[49].cgroup, "/c070");
        assert_eq!(f.others_count, 70, "c000 to c069");
        let others_cpu: u64 = (0..70).map(|i| i * 10).sum();
        assert_eq!(f.others.cpu.some.unwrap().stall_us, others_cpu);
        assert_eq!(f.others.memory.some.unwrap().stall_us, 700);
        assert_eq!(f.skipped, 3);
        assert_eq!(f.damage(), None);
        assert_eq!(f.quiet_count, 0);
        // A new cgroup's whole total is in its first interval.
        let mut r = reading(2_000_000_000, 10);
        r.cgroups.push(("/new".into(), [psi(5_000), None, None]));
        let f = agg.update(&r);
        assert_eq!(f.cgroups[0].cgroup, "/new");
        assert_eq!(f.cgroups[0].psi.stall_us(), 5_000);
        // Quiet cgroups (no stall, averages 0) are counted, not named.
        let quiet = |ts_ns| PressureReading {
            ts_ns,
            host: [psi(0), None, None],
            cgroups: vec![
                (
                    "/idle".into(),
                    [
                        Some(Psi {
                            some: Some(PsiLine {
                                total_us: 9,
                                ..PsiLine::default()
                            }),
                            full: None,
                        }),
                        None,
                        None,
                    ],
                ),
                ("/busy".into(), [psi(7), None, None]),
            ],
            skipped: 0,
        };
        let mut agg = PressureAgg::new();
        agg.update(&quiet(0));
        let f = agg.update(&quiet(1));
        assert_eq!(f.cgroups.len(), 1);
        assert_eq!(f.cgroups[0].cgroup, "/busy", "its averages are not 0");
        assert_eq!((f.quiet_count, f.others_count), (1, 0));
    }

    #[test]
    fn hostile_frames_are_damage() {
        let mut agg = PressureAgg::new();
        let r = PressureReading {
            ts_ns: 5,
            host: [psi(10), None, None],
            cgroups: vec![("/a".into(), [psi(1), None, None])],
            skipped: 0,
        };
        let good = agg.update(&r);
        let mut bad = good.clone();
        bad.host.cpu.some.as_mut().unwrap().avg10 = f64::INFINITY;
        assert!(bad.damage().unwrap().contains("not a percentage"));
        let mut bad = good.clone();
        bad.cgroups[0].psi.cpu.some.as_mut().unwrap().stall_us = 2;
        assert!(bad.damage().unwrap().contains("over its total"));
        let mut bad = good.clone();
        bad.cgroups = vec![bad.cgroups[0].clone(); FRAME_CGROUPS + 1];
        assert!(bad.damage().unwrap().contains("over the 50"));
        let mut bad = good;
        bad.cgroups[0].cgroup = "x".repeat(MAX_CGROUP_PATH + 1);
        assert!(bad.damage().unwrap().contains("cgroup path"));
    }

    #[test]
    fn a_recording_is_summed_with_its_peaks() {
        let mut agg = PressureAgg::new();
        let mut sum = PressureSummary::default();
        for (i, (host, a, b)) in [(0, 0, 0), (1_000, 600, 10), (3_000, 900, 20)]
            .into_iter()
            .enumerate()
        {
            let mut r = PressureReading {
                ts_ns: i as u64 * 1_000_000_000,
                host: [psi(host), None, None],
                cgroups: vec![
                    ("/a".into(), [psi(a), None, None]),
                    ("/b".into(), [psi(b), None, psi(b)]),
                ],
                skipped: 1,
            };
            if i == 1 {
                r.host[0].as_mut().unwrap().some.as_mut().unwrap().avg10 = 7.5;
            }
            sum.add(&agg.update(&r));
        }
        assert_eq!(sum.frames, 3);
        assert_eq!(sum.covered_ns, 2_000_000_000);
        assert_eq!(sum.host_stall_us[&("cpu", "some")], 3_000);
        assert_eq!(sum.peak_avg10[&("cpu", "some")], (7.5, 1_000_000_000));
        assert_eq!(sum.top_cgroups(1), vec![("/a", [900, 0, 0])]);
        assert_eq!(sum.cgroups["/b"], [20, 0, 20]);
        assert_eq!(sum.skipped, 3);
    }
}
