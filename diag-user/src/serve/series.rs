//! Bounded per-process series: which processes get series of their own,
//! and where everything else is counted. Pure.
//!
//! Every process diag has seen is a key (pid, comm): pids are reused, so
//! the command name is part of it. Each update, the increase of a key's
//! counters since the last update is credited to exactly one series: its
//! own when it is one of the (at most `top`) selected processes, else the
//! `other` series of its cgroup. So every series only ever goes up,
//! `sum(rate(...))` over the series is exactly the host's rate, and the
//! number of per-process series never exceeds `top`. (A dropped series'
//! count leaves the exposition with it: Prometheus has already stored it.)
//!
//! A process gets a series of its own when there is room, or by taking the
//! place of a selected process that was idle for the last interval and is
//! less active overall. A selected process that has exited keeps its
//! series for `grace` (so the last increase is scraped), then it is
//! dropped.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::aggregate::tcp::{Counters, ProcRow, StateCounts};

/// The label value for anything not resolved or not selected.
pub const OTHER: &str = "other";
/// The cgroup label when the process's cgroup could not be read (it had
/// exited before diag looked).
pub const UNKNOWN: &str = "unknown";

/// What the bounding needs from the host (procfs at the edge, a fake in
/// tests).
pub trait ProcessInfo {
    /// The cgroup path of a running process.
    fn cgroup_of(&mut self, pid: u32) -> Option<String>;
    /// Whether the process (pid with this comm) still runs.
    fn alive(&mut self, pid: u32, comm: &str) -> bool;
    /// The time now (boot-time ns), taken after a [`Self::cgroup_of`].
    fn now_ns(&mut self) -> u64 {
        0
    }
    /// Every event the kernel submitted before this time (boot-time ns)
    /// has been taken in: the exit of a process that ended before it is
    /// known. A cgroup read is only trusted once this passes the read, so
    /// a process that ended (and whose pid went to another) just before
    /// the read, with its exit still in the ring buffer, never gets the
    /// next owner's cgroup.
    fn drained_to_ns(&self) -> u64 {
        u64::MAX
    }
}

/// Which series a process's numbers go to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SeriesKey {
    /// A selected process.
    Process {
        pid: u32,
        comm: String,
        cgroup: String,
    },
    /// Everything else in a cgroup.
    Other { cgroup: String },
}

impl SeriesKey {
    /// The label set: `pid`, `comm`, `cgroup` (pid and comm are `other`
    /// for the rest of a cgroup).
    pub fn labels(&self) -> Vec<(&'static str, String)> {
        match self {
            SeriesKey::Process { pid, comm, cgroup } => vec![
                ("pid", pid.to_string()),
                ("comm", comm.clone()),
                ("cgroup", cgroup.clone()),
            ],
            SeriesKey::Other { cgroup } => vec![
                ("pid", OTHER.to_string()),
                ("comm", OTHER.to_string()),
                ("cgroup", cgroup.clone()),
            ],
        }
    }
}

/// Bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Most processes with series of their own.
    pub top: usize,
    /// Most distinct cgroup label values; more are counted as `other`.
    pub cgroups: usize,
    /// How long an exited process keeps its series, ns.
    pub grace_ns: u64,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            top: 50,
            cgroups: 100,
            grace_ns: 60_000_000_000,
        }
    }
}

/// pid, comm and which life of the pid (the aggregate's: a process that
/// ended and a later one with its pid are two keys).
type Key = (u32, String, u32);

#[derive(Debug, Clone)]
struct Seen {
    /// Counters already credited.
    credited: Counters,
    /// Listen overflows per port already credited.
    credited_ports: Vec<(u16, u64)>,
    /// Failed connects per error name already credited.
    credited_errors: Vec<(String, u64)>,
    /// Kernel drops per reason already credited.
    credited_drops: Vec<(String, u64)>,
    cgroup: String,
    /// Opens, closes, resets, retransmits: all-time, for ranking.
    activity: u64,
    /// Found exited: never selected again.
    gone: bool,
}

#[derive(Debug, Clone, Copy)]
struct Member {
    /// When it was first seen gone, ns.
    exited_at: Option<u64>,
}

/// One series' numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeriesValues {
    pub counters: Counters,
    pub states: StateCounts,
    pub leaks: u64,
}

/// The state behind the bounded series.
#[derive(Debug, Clone, Default)]
pub struct Series {
    pub bounds: Bounds,
    seen: HashMap<Key, Seen>,
    members: BTreeMap<Key, Member>,
    cgroups: BTreeSet<String>,
    /// Counters per series, cumulative; gauges as of the last update.
    pub values: BTreeMap<SeriesKey, SeriesValues>,
    /// Listen overflows per series and listening port (0: the ports
    /// beyond the aggregate's bound), cumulative; they add up to the
    /// series' `listen_overflows`.
    pub listen_ports: BTreeMap<(SeriesKey, u16), u64>,
    /// Failed connects per series and error name (a small set: errno
    /// names, bounded per process by the aggregate), cumulative; they add
    /// up to the series' `failed_connects`.
    pub connect_errors: BTreeMap<(SeriesKey, String), u64>,
    /// Packets the kernel dropped per series and reason name (`other`:
    /// a process's reasons beyond the aggregate's bound), cumulative.
    pub kernel_drops: BTreeMap<(SeriesKey, String), u64>,
    /// What dropped series had counted.
    retired: Counters,
    /// cgroup reads waiting for the events before them to be taken in:
    /// the read and when it was made.
    pending: HashMap<Key, (Option<String>, u64)>,
}

fn activity(c: &Counters) -> u64 {
    c.active_opens
        + c.passive_opens
        + c.closes
        + c.resets_sent
        + c.resets_received
        + c.retransmits
        + c.listen_overflows
        + c.bytes_acked
        + c.bytes_received
}

fn sub_states(a: &StateCounts, d: &StateCounts) -> StateCounts {
    StateCounts {
        established: a.established.saturating_sub(d.established),
        syn_sent: a.syn_sent.saturating_sub(d.syn_sent),
        syn_recv: a.syn_recv.saturating_sub(d.syn_recv),
        fin_wait1: a.fin_wait1.saturating_sub(d.fin_wait1),
        fin_wait2: a.fin_wait2.saturating_sub(d.fin_wait2),
        close_wait: a.close_wait.saturating_sub(d.close_wait),
        last_ack: a.last_ack.saturating_sub(d.last_ack),
        closing: a.closing.saturating_sub(d.closing),
        time_wait: a.time_wait.saturating_sub(d.time_wait),
        listen: a.listen.saturating_sub(d.listen),
    }
}

/// `now - before`, or None when any counter went down (a new process
/// behind a reused key: count it from zero).
fn delta(now: &Counters, before: &Counters) -> Option<Counters> {
    let pairs = [
        (now.active_opens, before.active_opens),
        (now.passive_opens, before.passive_opens),
        (now.closes, before.closes),
        (now.failed_connects, before.failed_connects),
        (now.resets_sent, before.resets_sent),
        (now.resets_received, before.resets_received),
        (now.retransmits, before.retransmits),
        (now.time_waits, before.time_waits),
        (now.aborts, before.aborts),
        (now.listen_overflows, before.listen_overflows),
        (now.bytes_acked, before.bytes_acked),
        (now.bytes_received, before.bytes_received),
    ];
    if pairs.iter().any(|(n, b)| n < b) {
        return None;
    }
    Some(Counters {
        active_opens: now.active_opens - before.active_opens,
        passive_opens: now.passive_opens - before.passive_opens,
        closes: now.closes - before.closes,
        failed_connects: now.failed_connects - before.failed_connects,
        resets_sent: now.resets_sent - before.resets_sent,
        resets_received: now.resets_received - before.resets_received,
        retransmits: now.retransmits - before.retransmits,
        time_waits: now.time_waits - before.time_waits,
        aborts: now.aborts - before.aborts,
        listen_overflows: now.listen_overflows - before.listen_overflows,
        bytes_acked: now.bytes_acked - before.bytes_acked,
        bytes_received: now.bytes_received - before.bytes_received,
    })
}

/// Sockets a process holds, TIME-WAIT (which outlives it) left out.
fn sockets(s: &StateCounts) -> u64 {
    s.established
        + s.syn_sent
        + s.syn_recv
        + s.fin_wait1
        + s.fin_wait2
        + s.close_wait
        + s.last_ack
        + s.closing
        + s.listen
}

impl Series {
    pub fn new(bounds: Bounds) -> Self {
        Series {
            bounds,
            ..Default::default()
        }
    }

    /// A cgroup label value within the bound (first come, first kept).
    pub fn cgroup_label(&mut self, cgroup: Option<String>) -> String {
        let Some(cg) = cgroup.filter(|c| !c.is_empty()) else {
            return UNKNOWN.to_string();
        };
        if self.cgroups.contains(&cg) {
            return cg;
        }
        if self.cgroups.len() < self.bounds.cgroups {
            self.cgroups.insert(cg.clone());
            return cg;
        }
        OTHER.to_string()
    }

    /// The cgroup of a row's process: Some(None) when it cannot be known
    /// (the process ended before it was read: its pid may be another's),
    /// None while the read waits for the events before it.
    fn checked_cgroup(
        &mut self,
        key: &Key,
        r: &ProcRow,
        info: &mut impl ProcessInfo,
    ) -> Option<Option<String>> {
        let (cg, read_ns) = match self.pending.remove(key) {
            Some(p) => p,
            // Its exit is known: the pid may be another's by now.
            None if r.exited => return Some(None),
            None => {
                let cg = info.cgroup_of(r.pid);
                (cg, info.now_ns())
            }
        };
        if info.drained_to_ns() < read_ns {
            self.pending.insert(key.clone(), (cg, read_ns));
            return None;
        }
        match r.exited_ns {
            Some(ended) if ended <= read_ns => Some(None),
            _ => Some(cg),
        }
    }

    /// Processes with series of their own now.
    pub fn process_series(&self) -> usize {
        self.members.len()
    }

    fn key_of(&self, k: &Key) -> SeriesKey {
        let cgroup = self
            .seen
            .get(k)
            .map(|s| s.cgroup.clone())
            .unwrap_or_else(|| UNKNOWN.to_string());
        if self.members.contains_key(k) {
            SeriesKey::Process {
                pid: k.0,
                comm: k.1.clone(),
                cgroup,
            }
        } else {
            SeriesKey::Other { cgroup }
        }
    }

    /// Take in a snapshot's process rows (all processes the aggregate
    /// knows), and the host-wide socket counts and leak count (which
    /// include sockets of unknown owner). `now_ns` is the snapshot time.
    pub fn update(
        &mut self,
        rows: &[ProcRow],
        host_states: &StateCounts,
        host_leaks: u64,
        now_ns: u64,
        info: &mut impl ProcessInfo,
    ) {
        // Increases since the last update, per key.
        let mut deltas: Vec<(Key, Counters, &ProcRow)> = Vec::with_capacity(rows.len());
        let mut port_deltas: Vec<(Key, Vec<(u16, u64)>)> = Vec::new();
        let mut error_deltas: Vec<(Key, Vec<(String, u64)>)> = Vec::new();
        let mut drop_deltas: Vec<(Key, Vec<(String, u64)>)> = Vec::new();
        for r in rows {
            let key = (r.pid, r.comm.clone(), r.life);
            let d = match self.seen.get(&key).map(|s| delta(&r.totals, &s.credited)) {
                Some(Some(d)) => d,
                Some(None) => {
                    // Counters went down: a new process behind the same key.
                    self.seen.remove(&key);
                    r.totals
                }
                None => r.totals,
            };
            let credited: &[(u16, u64)] = self
                .seen
                .get(&key)
                .map(|s| s.credited_ports.as_slice())
                .unwrap_or(&[]);
            let ports: Vec<(u16, u64)> = r
                .listen_ports
                .iter()
                .map(|&(port, n)| {
                    let before = credited.iter().find(|c| c.0 == port).map_or(0, |c| c.1);
                    (port, n.saturating_sub(before))
                })
                .filter(|&(_, n)| n > 0)
                .collect();
            let credited: &[(String, u64)] = self
                .seen
                .get(&key)
                .map(|s| s.credited_errors.as_slice())
                .unwrap_or(&[]);
            let errors: Vec<(String, u64)> = r
                .connect_errors
                .iter()
                .map(|(error, n)| {
                    let before = credited.iter().find(|c| c.0 == *error).map_or(0, |c| c.1);
                    (error.clone(), n.saturating_sub(before))
                })
                .filter(|(_, n)| *n > 0)
                .collect();
            let credited: &[(String, u64)] = self
                .seen
                .get(&key)
                .map(|s| s.credited_drops.as_slice())
                .unwrap_or(&[]);
            let drops: Vec<(String, u64)> = r
                .kernel_drops
                .iter()
                .map(|(reason, n)| {
                    let before = credited.iter().find(|c| c.0 == *reason).map_or(0, |c| c.1);
                    (reason.clone(), n.saturating_sub(before))
                })
                .filter(|(_, n)| *n > 0)
                .collect();
            if !self.seen.contains_key(&key) {
                let Some(cg) = self.checked_cgroup(&key, r, info) else {
                    // Not known yet: the row waits (its counts are
                    // credited in full once it is).
                    continue;
                };
                let cgroup = self.cgroup_label(cg);
                self.seen.insert(
                    key.clone(),
                    Seen {
                        credited: Counters::default(),
                        credited_ports: Vec::new(),
                        credited_errors: Vec::new(),
                        credited_drops: Vec::new(),
                        cgroup,
                        activity: 0,
                        gone: false,
                    },
                );
            }
            let s = self.seen.get_mut(&key).expect("inserted above");
            s.credited = r.totals;
            s.credited_ports.clone_from(&r.listen_ports);
            s.credited_errors.clone_from(&r.connect_errors);
            if !ports.is_empty() {
                port_deltas.push((key.clone(), ports));
            }
            if !errors.is_empty() {
                error_deltas.push((key.clone(), errors));
            }
            s.credited_drops.clone_from(&r.kernel_drops);
            if !drops.is_empty() {
                drop_deltas.push((key.clone(), drops));
            }
            s.activity += activity(&d);
            deltas.push((key, d, r));
        }

        let rows_now: BTreeSet<Key> = rows
            .iter()
            .map(|r| (r.pid, r.comm.clone(), r.life))
            .collect();
        self.pending.retain(|k, _| rows_now.contains(k));

        // Exited members: dropped after the grace period.
        let present: BTreeSet<&Key> = deltas.iter().map(|(k, _, _)| k).collect();
        let ended: BTreeSet<&Key> = deltas
            .iter()
            .filter(|(_, _, r)| r.exited)
            .map(|(k, _, _)| k)
            .collect();
        let mut expired = Vec::new();
        for (k, m) in self.members.iter_mut() {
            let alive = present.contains(k) && !ended.contains(k) && info.alive(k.0, &k.1);
            if alive {
                m.exited_at = None;
            } else {
                if let Some(s) = self.seen.get_mut(k) {
                    s.gone = true;
                }
                let at = *m.exited_at.get_or_insert(now_ns);
                if now_ns.saturating_sub(at) >= self.bounds.grace_ns {
                    expired.push(k.clone());
                }
            }
        }
        for k in expired {
            self.retire(&k);
        }

        // Newcomers: the busiest first, into free places or the places of
        // idle members.
        let busy: BTreeSet<&Key> = deltas
            .iter()
            .filter(|(_, d, r)| activity(d) > 0 || sockets(&r.states) > 0)
            .map(|(k, _, _)| k)
            .collect();
        let mut candidates: Vec<(&Key, u64)> = Vec::new();
        for (k, d, r) in &deltas {
            if self.members.contains_key(k) || (activity(d) == 0 && sockets(&r.states) == 0) {
                continue;
            }
            let Some(seen) = self.seen.get_mut(k) else {
                continue;
            };
            if seen.gone {
                // Its series was dropped when it exited: what it still
                // does (late events) is `other`.
                continue;
            }
            if self.members.keys().any(|m| m.0 == k.0 && m.1 == k.1) {
                // An earlier process with this pid and name still has its
                // series (it exited, and waits out the grace period): one
                // series per pid and name at a time; this one's counts go
                // to `other` until then.
                continue;
            }
            candidates.push((k, activity(d) + sockets(&r.states)));
        }
        candidates.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        // Idle members, least active (all time) first: exited ones first.
        let mut idle: Vec<(Key, bool, u64)> = self
            .members
            .iter()
            .filter(|(k, _)| !busy.contains(k))
            .map(|(k, m)| {
                (
                    k.clone(),
                    m.exited_at.is_none(),
                    self.seen.get(k).map(|s| s.activity).unwrap_or(0),
                )
            })
            .collect();
        idle.sort_by(|a, b| a.1.cmp(&b.1).then(a.2.cmp(&b.2)).then(a.0.cmp(&b.0)));
        let mut idle = idle.into_iter().peekable();
        for (k, score) in candidates {
            if self.bounds.top == 0 {
                break;
            }
            if self.members.len() >= self.bounds.top {
                // An exited member makes room; a running one only for a
                // newcomer busier now than it ever was.
                let Some((out, _, _)) =
                    idle.next_if(|(_, running, all_time)| !running || score > *all_time)
                else {
                    break;
                };
                // Its series goes; what it does from now on is `other`.
                self.retire(&out);
            }
            self.members.insert(k.clone(), Member { exited_at: None });
        }

        // Credit the increases; gauges afresh.
        for v in self.values.values_mut() {
            v.states = StateCounts::default();
            v.leaks = 0;
        }
        let mut owned_states = StateCounts::default();
        let mut owned_leaks = 0;
        for (k, d, r) in &deltas {
            let sk = self.key_of(k);
            let v = self.values.entry(sk).or_default();
            v.counters += d;
            v.states += &r.states;
            v.leaks += r.leaks;
            owned_states += &r.states;
            owned_leaks += r.leaks;
        }
        for (k, ports) in port_deltas {
            let sk = self.key_of(&k);
            for (port, n) in ports {
                *self.listen_ports.entry((sk.clone(), port)).or_default() += n;
            }
        }
        for (k, errors) in error_deltas {
            let sk = self.key_of(&k);
            for (error, n) in errors {
                *self.connect_errors.entry((sk.clone(), error)).or_default() += n;
            }
        }
        for (k, drops) in drop_deltas {
            let sk = self.key_of(&k);
            for (reason, n) in drops {
                *self.kernel_drops.entry((sk.clone(), reason)).or_default() += n;
            }
        }
        // Sockets no process is known for.
        let rest = sub_states(host_states, &owned_states);
        let rest_leaks = host_leaks.saturating_sub(owned_leaks);
        if sockets(&rest) + rest.time_wait > 0 || rest_leaks > 0 {
            let v = self
                .values
                .entry(SeriesKey::Other {
                    cgroup: UNKNOWN.to_string(),
                })
                .or_default();
            v.states += &rest;
            v.leaks += rest_leaks;
        }
        // Keys the aggregate no longer reports are forgotten.
        if self.seen.len() > rows.len() {
            self.seen.retain(|k, _| present.contains(k));
        }
    }

    fn retire(&mut self, k: &Key) {
        let sk = self.key_of(k);
        self.members.remove(k);
        if let Some(v) = self.values.remove(&sk) {
            self.retired += &v.counters;
        }
        self.listen_ports.retain(|(s, _), _| *s != sk);
        self.connect_errors.retain(|(s, _), _| *s != sk);
        self.kernel_drops.retain(|(s, _), _| *s != sk);
    }

    /// The sum over all series, dropped ones included (for checks).
    pub fn total(&self) -> Counters {
        let mut t = self.retired;
        for v in self.values.values() {
            t += &v.counters;
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::tcp::Rates;

    #[derive(Default)]
    struct Fake {
        dead: BTreeSet<u32>,
    }

    impl ProcessInfo for Fake {
        fn cgroup_of(&mut self, pid: u32) -> Option<String> {
            (!self.dead.contains(&pid)).then(|| format!("/cg{}", pid % 3))
        }
        fn alive(&mut self, pid: u32, _comm: &str) -> bool {
            !self.dead.contains(&pid)
        }
    }

    fn row(pid: u32, opens: u64, estab: u64) -> ProcRow {
        ProcRow {
            pid,
            comm: format!("p{pid}"),
            exited: false,
            exited_ns: None,
            life: 0,
            totals: Counters {
                active_opens: opens,
                closes: opens,
                ..Default::default()
            },
            rates: Rates::default(),
            states: StateCounts {
                established: estab,
                ..Default::default()
            },
            lifetime_p50_ns: 0,
            lifetime_p99_ns: 0,
            lifetime_max_ns: 0,
            connects: 0,
            connect_p50_ns: 0,
            connect_p99_ns: 0,
            connect_max_ns: 0,
            leaks: 0,
            cgroup: None,
            container: None,
            netns: None,
            listen_ports: Vec::new(),
            connect_errors: Vec::new(),
            kernel_drops: Vec::new(),
        }
    }

    fn bounds(top: usize) -> Bounds {
        Bounds {
            top,
            cgroups: 10,
            grace_ns: 10,
        }
    }

    fn proc_value(s: &Series, pid: u32) -> Option<SeriesValues> {
        s.values
            .iter()
            .find(|(k, _)| matches!(k, SeriesKey::Process { pid: p, .. } if *p == pid))
            .map(|(_, v)| *v)
    }

    fn other(s: &Series, cg: &str) -> Counters {
        s.values
            .get(&SeriesKey::Other { cgroup: cg.into() })
            .map(|v| v.counters)
            .unwrap_or_default()
    }

    #[test]
    fn a_later_life_of_a_pid_waits_for_the_earlier_series_to_go() {
        let mut s = Series::new(bounds(5));
        let mut f = Fake::default();
        let host = StateCounts::default();
        s.update(&[row(1, 4, 0)], &host, 0, 0, &mut f);
        // Pid 1 exits; a later process with its pid and name closes one.
        f.dead.insert(1);
        let mut old = row(1, 4, 0);
        old.exited = true;
        let mut new = row(1, 0, 0);
        new.life = 1;
        new.totals.closes = 1;
        s.update(&[old.clone(), new.clone()], &host, 0, 1, &mut f);
        let pid1 = s
            .values
            .keys()
            .filter(|k| matches!(k, SeriesKey::Process { pid: 1, .. }))
            .count();
        assert_eq!(pid1, 1, "one series for pid 1: {:?}", s.values.keys());
        assert_eq!(proc_value(&s, 1).unwrap().counters.active_opens, 4);
        assert_eq!(
            other(&s, UNKNOWN).closes,
            1,
            "the later one's close is not lost"
        );
    }

    /// Issue 15, item 8: a process first seen after it exited does not
    /// get the cgroup of the process that has its pid now.
    #[test]
    fn an_exited_process_never_gets_the_cgroup_of_its_pids_next_owner() {
        let mut s = Series::new(bounds(5));
        // The fake host answers for pid 4 (another process now has it).
        let mut f = Fake::default();
        let mut gone = row(4, 3, 0);
        gone.exited = true;
        s.update(&[gone], &StateCounts::default(), 0, 0, &mut f);
        let (k, _) = s
            .values
            .iter()
            .find(|(k, _)| matches!(k, SeriesKey::Process { pid: 4, .. }))
            .unwrap();
        assert_eq!(k.labels()[2], ("cgroup", UNKNOWN.to_string()));
    }

    /// A host whose ring buffer has been taken in up to `drained`, with
    /// the clock at `now`.
    struct Lagging {
        cgroup: &'static str,
        now: u64,
        drained: u64,
    }

    impl ProcessInfo for Lagging {
        fn cgroup_of(&mut self, _: u32) -> Option<String> {
            Some(self.cgroup.into())
        }
        fn alive(&mut self, _: u32, _: &str) -> bool {
            true
        }
        fn now_ns(&mut self) -> u64 {
            self.now
        }
        fn drained_to_ns(&self) -> u64 {
            self.drained
        }
    }

    fn cgroup_of_pid(s: &Series, pid: u32) -> Option<String> {
        s.values.keys().find_map(|k| match k {
            SeriesKey::Process { pid: p, cgroup, .. } if *p == pid => Some(cgroup.clone()),
            _ => None,
        })
    }

    /// Issue 15, item 8, the race CI found: the process ended and its pid
    /// went to a process in another cgroup while its exit was still in the
    /// ring buffer. The read (the other's cgroup) waits until the events
    /// before it are in; the exit then shows the read came too late.
    #[test]
    fn a_cgroup_read_waits_for_the_exit_still_in_the_ring_buffer() {
        let mut s = Series::new(bounds(5));
        let host = StateCounts::default();
        let mut f = Lagging {
            cgroup: "/next-owner",
            now: 100,
            drained: 90,
        };
        s.update(&[row(4, 3, 0)], &host, 0, 100, &mut f);
        assert_eq!(cgroup_of_pid(&s, 4), None, "no series before the barrier");
        // The next drain brings its exit, from before the read.
        f.drained = 200;
        let mut ended = row(4, 3, 0);
        ended.exited = true;
        ended.exited_ns = Some(95);
        s.update(&[ended], &host, 0, 200, &mut f);
        assert_eq!(cgroup_of_pid(&s, 4).as_deref(), Some(UNKNOWN));
        assert_eq!(proc_value(&s, 4).unwrap().counters.active_opens, 3);

        // A process that ends after the read keeps what was read.
        let mut f = Lagging {
            cgroup: "/svc",
            now: 300,
            drained: 250,
        };
        s.update(&[row(5, 2, 0)], &host, 0, 300, &mut f);
        f.drained = 400;
        let mut later = row(5, 2, 0);
        later.exited = true;
        later.exited_ns = Some(350);
        s.update(&[later], &host, 0, 400, &mut f);
        assert_eq!(cgroup_of_pid(&s, 5).as_deref(), Some("/svc"));
    }

    #[test]
    fn room_for_all_means_exact_per_process_totals() {
        let mut s = Series::new(bounds(5));
        let mut f = Fake::default();
        let host = StateCounts {
            established: 4,
            ..Default::default()
        };
        s.update(&[row(1, 4, 1), row(2, 7, 2)], &host, 0, 0, &mut f);
        assert_eq!(proc_value(&s, 1).unwrap().counters.active_opens, 4);
        assert_eq!(proc_value(&s, 2).unwrap().states.established, 2);
        s.update(&[row(1, 10, 1), row(2, 7, 2)], &host, 0, 1, &mut f);
        assert_eq!(proc_value(&s, 1).unwrap().counters.active_opens, 10);
        assert_eq!(s.total().active_opens, 17);
        assert_eq!(s.process_series(), 2);
        // Labels: the cgroup is read once, when the process is first seen.
        let (k, _) = s.values.iter().next().unwrap();
        assert_eq!(
            k.labels(),
            vec![
                ("pid", "1".to_string()),
                ("comm", "p1".into()),
                ("cgroup", "/cg1".into())
            ]
        );
        // The one socket without a known owner is `other` in `unknown`.
        let unowned = s
            .values
            .get(&SeriesKey::Other {
                cgroup: UNKNOWN.into(),
            })
            .unwrap();
        assert_eq!(unowned.states.established, 1);
    }

    #[test]
    fn beyond_top_goes_to_other_per_cgroup_and_sums_stay_exact() {
        let mut s = Series::new(bounds(2));
        let mut f = Fake::default();
        let rows: Vec<ProcRow> = (1..=6).map(|p| row(p, p as u64, 0)).collect();
        s.update(&rows, &StateCounts::default(), 0, 0, &mut f);
        assert_eq!(s.process_series(), 2);
        // The two busiest got series.
        assert!(proc_value(&s, 6).is_some() && proc_value(&s, 5).is_some());
        // 1 and 4 are in /cg1, 2 in /cg2, 3 in /cg0.
        assert_eq!(other(&s, "/cg1").active_opens, 1 + 4);
        assert_eq!(other(&s, "/cg2").active_opens, 2);
        assert_eq!(other(&s, "/cg0").active_opens, 3);
        assert_eq!(s.total().active_opens, 21);
        // 1 becomes the busiest: it takes the place of an idle member; the
        // increase is credited from then on, so nothing goes down.
        let before = s.values.clone();
        let mut rows2 = rows.clone();
        rows2[0] = row(1, 101, 0);
        s.update(&rows2, &StateCounts::default(), 0, 1, &mut f);
        assert_eq!(s.process_series(), 2);
        assert_eq!(proc_value(&s, 1).unwrap().counters.active_opens, 100);
        assert_eq!(s.total().active_opens, 121);
        for (k, v) in &before {
            if let Some(now) = s.values.get(k) {
                assert!(
                    now.counters.active_opens >= v.counters.active_opens,
                    "{k:?}"
                );
            }
        }
    }

    #[test]
    fn an_idle_running_process_keeps_its_series_against_small_newcomers() {
        let mut s = Series::new(bounds(1));
        let mut f = Fake::default();
        s.update(&[row(1, 500, 0)], &StateCounts::default(), 0, 0, &mut f);
        // 1 is idle now; 2 does a little: not enough to take the place.
        s.update(
            &[row(1, 500, 0), row(2, 3, 0)],
            &StateCounts::default(),
            0,
            1,
            &mut f,
        );
        assert!(proc_value(&s, 1).is_some() && proc_value(&s, 2).is_none());
        // 3 does more now than 1 ever did: it takes the place.
        s.update(
            &[row(1, 500, 0), row(2, 3, 0), row(3, 600, 0)],
            &StateCounts::default(),
            0,
            2,
            &mut f,
        );
        assert!(proc_value(&s, 1).is_none() && proc_value(&s, 3).is_some());
        // Unowned TIME-WAIT sockets are `other` in `unknown`.
        let host = StateCounts {
            time_wait: 7,
            ..Default::default()
        };
        s.update(&[row(3, 600, 0)], &host, 0, 3, &mut f);
        let unowned = s.values[&SeriesKey::Other {
            cgroup: UNKNOWN.into(),
        }];
        assert_eq!(unowned.states.time_wait, 7);
    }

    #[test]
    fn busy_members_are_not_displaced() {
        let mut s = Series::new(bounds(1));
        let mut f = Fake::default();
        s.update(&[row(1, 5, 0)], &StateCounts::default(), 0, 0, &mut f);
        s.update(
            &[row(1, 6, 0), row(2, 50, 0)],
            &StateCounts::default(),
            0,
            1,
            &mut f,
        );
        assert!(proc_value(&s, 1).is_some());
        assert!(proc_value(&s, 2).is_none());
        assert_eq!(other(&s, "/cg2").active_opens, 50);
    }

    #[test]
    fn exited_processes_are_dropped_after_the_grace_period() {
        let mut s = Series::new(bounds(3));
        let mut f = Fake::default();
        s.update(&[row(1, 5, 0)], &StateCounts::default(), 0, 0, &mut f);
        f.dead.insert(1);
        s.update(&[row(1, 5, 0)], &StateCounts::default(), 0, 5, &mut f);
        assert!(proc_value(&s, 1).is_some(), "within the grace period");
        s.update(&[row(1, 5, 0)], &StateCounts::default(), 0, 15, &mut f);
        assert!(proc_value(&s, 1).is_none(), "after it");
        assert_eq!(s.process_series(), 0);
        // A reused pid with the same name counting from zero is new.
        f.dead.clear();
        s.update(&[row(1, 2, 0)], &StateCounts::default(), 0, 20, &mut f);
        assert_eq!(proc_value(&s, 1).unwrap().counters.active_opens, 2);
    }

    #[test]
    fn many_short_lived_processes_stay_within_the_bound() {
        let mut s = Series::new(bounds(20));
        let mut f = Fake::default();
        let mut rows = Vec::new();
        for i in 0..500u32 {
            let pid = 1000 + i;
            rows.push(row(pid, 1, 0));
            s.update(&rows, &StateCounts::default(), 0, u64::from(i), &mut f);
            f.dead.insert(pid);
            assert!(s.process_series() <= 20);
            let procs = s
                .values
                .keys()
                .filter(|k| matches!(k, SeriesKey::Process { .. }))
                .count();
            assert!(procs <= 20, "{procs}");
        }
        assert_eq!(s.total().active_opens, 500);
        // Series: at most 20 processes plus one `other` per cgroup.
        assert!(s.values.len() <= 20 + 4, "{}", s.values.len());
    }

    #[test]
    fn cgroup_labels_are_bounded() {
        let mut s = Series::new(Bounds {
            cgroups: 2,
            ..bounds(5)
        });
        assert_eq!(s.cgroup_label(Some("/a".into())), "/a");
        assert_eq!(s.cgroup_label(Some("/b".into())), "/b");
        assert_eq!(s.cgroup_label(Some("/c".into())), OTHER);
        assert_eq!(s.cgroup_label(Some("/a".into())), "/a");
        assert_eq!(s.cgroup_label(None), UNKNOWN);
    }

    #[test]
    fn top_zero_means_only_other() {
        let mut s = Series::new(bounds(0));
        let mut f = Fake::default();
        s.update(&[row(1, 5, 0)], &StateCounts::default(), 0, 0, &mut f);
        assert_eq!(s.process_series(), 0);
        assert_eq!(other(&s, "/cg1").active_opens, 5);
    }
}
