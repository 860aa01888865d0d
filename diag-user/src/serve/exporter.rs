//! The exporter's state and its rendering: pure (no kernel, no socket),
//! driven by aggregate snapshots, OOM kills and health counters.

use prometheus_client::{encoding::prometheus_text, registry::Registry};

use super::{
    families::{Births, Families, HostTotals},
    oom::{OomMetrics, constraint_label},
    own::OwnMetrics,
    sched::SchedMetrics,
    series::{Bounds, ProcessInfo},
    tcp::TcpMetrics,
};
use crate::{aggregate::tcp::TcpSnapshot, bus::Health};

/// The `Content-Type` of `/metrics`: the Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// `/healthz` fails when the live source has sent no health counters for
/// this long: the event pipeline is stuck (or gone).
pub const STALE_NS: u64 = 5_000_000_000;

#[derive(Debug, Clone)]
pub struct Exporter {
    pub tcp: TcpMetrics,
    pub oom: OomMetrics,
    pub own: OwnMetrics,
    pub sched: SchedMetrics,
    pub pressure: super::pressure::PressureMetrics,
    pub block: super::block::BlockMetrics,
    pub memory: super::memory::MemoryMetrics,
    pub locks: super::lock::LockMetrics,
    /// The host-level families, which never go down.
    pub hosts: HostTotals,
    /// Counter series shown at 0 before their first value, per scraper.
    pub births: Births,
}

impl Exporter {
    pub fn new(bounds: Bounds, probes_attached: usize) -> Self {
        Exporter {
            tcp: TcpMetrics::new(bounds),
            oom: OomMetrics::default(),
            sched: SchedMetrics::default(),
            pressure: Default::default(),
            block: Default::default(),
            memory: Default::default(),
            locks: Default::default(),
            own: OwnMetrics {
                probes_attached,
                top: bounds.top,
                ..Default::default()
            },
            hosts: HostTotals::default(),
            births: Births::default(),
        }
    }

    /// Take in a TCP snapshot of every process.
    pub fn update_tcp(&mut self, snap: &TcpSnapshot, info: &mut impl ProcessInfo) {
        self.tcp.update(snap, info);
        self.own.process_series = self.tcp.series.process_series();
    }

    /// Count an OOM kill of [`diag_common::oom::constraint`] `constraint`;
    /// `victim_cgroup` is the victim's memory cgroup path when known.
    pub fn on_oom(&mut self, constraint: u8, victim_cgroup: Option<String>) {
        let cg = self.tcp.series.cgroup_label(victim_cgroup);
        self.oom.eat(cg, constraint_label(constraint));
    }

    /// Take in the scheduler's numbers for one interval, per process.
    pub fn update_sched(
        &mut self,
        procs: &[crate::aggregate::sched::ProcInterval],
        info: &mut impl ProcessInfo,
    ) {
        for p in procs {
            let cg = self.tcp.series.cgroup_label(info.cgroup_of(p.pid));
            self.sched.eat(cg, p);
        }
    }

    /// Take in one block I/O frame.
    pub fn update_block(
        &mut self,
        f: &crate::aggregate::block::BlockFrame,
        info: &mut impl ProcessInfo,
    ) {
        let series = &mut self.tcp.series;
        self.block
            .eat(f, |pid| series.cgroup_label(info.cgroup_of(pid)));
    }

    /// Take in the memory frame of one interval.
    pub fn update_memory(
        &mut self,
        m: &crate::aggregate::memory::MemInterval,
        info: &mut impl ProcessInfo,
    ) {
        for p in &m.processes {
            let cg = self.tcp.series.cgroup_label(info.cgroup_of(p.pid));
            self.memory.eat(cg, p);
        }
        self.memory.eat_frame(m);
    }

    /// Take in one lock frame (`serve --locks`).
    pub fn update_locks(
        &mut self,
        frame: &crate::aggregate::lock::LockFrame,
        info: &mut impl ProcessInfo,
    ) {
        for p in &frame.procs {
            let cg = self.tcp.series.cgroup_label(info.cgroup_of(p.pid));
            self.locks.eat(cg, p);
        }
    }

    pub fn on_health(&mut self, h: Health) {
        self.own.health = h;
    }

    /// Every family, in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut reg = Registry::default();
        let families: [&dyn Families; 8] = [
            &self.tcp,
            &self.oom,
            &self.sched,
            &self.pressure,
            &self.block,
            &self.memory,
            &self.locks,
            &self.own,
        ];
        for f in families {
            f.register(&mut reg);
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &reg);
        out
    }
}

impl Exporter {
    /// What `scraper` (its address and user agent) gets at `now_ns`: the
    /// families with their host-level twins ([`HostTotals`]), counter
    /// series it has not seen yet at 0 once ([`Births`]).
    pub fn scrape(&mut self, scraper: &str, now_ns: u64) -> String {
        let text = self.hosts.apply(&self.render());
        self.births.apply(&text, scraper, now_ns)
    }
}

/// Whether diag is healthy for `/healthz`: probes attached, and health
/// counters from the live source within [`STALE_NS`]. `Err` says why not.
pub fn health_check(
    probes_attached: usize,
    last_health_ns: Option<u64>,
    stopping: bool,
    now_ns: u64,
) -> Result<(), String> {
    if stopping {
        return Err("diag is stopping".into());
    }
    if probes_attached == 0 {
        return Err("no kernel probes are attached".into());
    }
    match last_health_ns {
        None => Err("the live source has not reported yet".into()),
        Some(t) if now_ns.saturating_sub(t) > STALE_NS => Err(format!(
            "the live source last reported {:.1} s ago: the event pipeline is stuck",
            now_ns.saturating_sub(t) as f64 / 1e9
        )),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::tcp::{Counters, ProcRow, Rates, StateCounts, TcpAggregate, TcpConfig};
    use std::collections::BTreeMap;

    struct Fake;
    impl ProcessInfo for Fake {
        fn cgroup_of(&mut self, pid: u32) -> Option<String> {
            Some(if pid == 7 { "/svc/a" } else { "/svc/b" }.into())
        }
        fn alive(&mut self, _: u32, _: &str) -> bool {
            true
        }
    }

    fn row(pid: u32, comm: &str, c: Counters, s: StateCounts, leaks: u64) -> ProcRow {
        ProcRow {
            pid,
            comm: comm.into(),
            exited: false,
            exited_ns: None,
            life: 0,
            totals: c,
            rates: Rates::default(),
            states: s,
            lifetime_p50_ns: 0,
            lifetime_p99_ns: 0,
            lifetime_max_ns: 0,
            connects: 0,
            connect_p50_ns: 0,
            connect_p99_ns: 0,
            connect_max_ns: 0,
            leaks,
            cgroup: None,
            container: None,
            netns: None,
            listen_ports: Vec::new(),
            connect_errors: Vec::new(),
            kernel_drops: Vec::new(),
        }
    }

    fn snapshot(rows: Vec<ProcRow>) -> TcpSnapshot {
        let mut s = TcpAggregate::new(TcpConfig::default()).snapshot(1);
        for r in &rows {
            s.states.established += r.states.established;
            s.states.close_wait += r.states.close_wait;
        }
        s.processes = rows;
        s
    }

    /// A strict reader of the text format: every sample line is
    /// `name{labels} value`, every family has HELP and TYPE first.
    fn parse(text: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        let mut typed = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split(' ');
                let name = it.next().unwrap().to_string();
                let ty = it.next().unwrap();
                assert!(["counter", "gauge", "histogram"].contains(&ty), "{line}");
                if ty == "counter" {
                    assert!(name.ends_with("_total"), "{line}");
                }
                typed.insert(name);
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            assert!(!line.starts_with('#'), "{line}");
            let (series, value) = line.rsplit_once(' ').unwrap();
            let name = series.split('{').next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
                .unwrap_or(name);
            assert!(typed.contains(family), "no TYPE for {line}");
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{line}"
            );
            let v: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
            assert!(out.insert(series.to_string(), v).is_none(), "dup {line}");
        }
        out
    }

    #[test]
    fn renders_conventional_families() {
        let mut e = Exporter::new(Bounds::default(), 6);
        let c = Counters {
            active_opens: 5,
            passive_opens: 2,
            closes: 6,
            resets_sent: 1,
            retransmits: 3,
            ..Default::default()
        };
        let s = StateCounts {
            established: 2,
            close_wait: 1,
            ..Default::default()
        };
        e.update_tcp(&snapshot(vec![row(7, "api", c, s, 1)]), &mut Fake);
        e.on_health(Health {
            received: 40,
            ringbuf_full: 2,
            ..Default::default()
        });
        // A scraper sees every new counter series at 0 first, then its value.
        let first = parse(&e.scrape("prom", 1));
        let m = parse(&e.scrape("prom", 2));
        let p = r#"pid="7",comm="api",cgroup="/svc/a""#;
        assert_eq!(
            first[&format!("diag_tcp_opens_total{{{p},direction=\"active\"}}")],
            0.0
        );
        assert_eq!(
            m[&format!("diag_tcp_opens_total{{{p},direction=\"active\"}}")],
            5.0
        );
        assert_eq!(
            m[&format!("diag_tcp_opens_total{{{p},direction=\"passive\"}}")],
            2.0
        );
        assert_eq!(m[&format!("diag_tcp_closes_total{{{p}}}")], 6.0);
        assert_eq!(
            m[&format!("diag_tcp_resets_total{{{p},direction=\"sent\"}}")],
            1.0
        );
        assert_eq!(m[&format!("diag_tcp_retransmits_total{{{p}}}")], 3.0);
        assert_eq!(m[&format!("diag_tcp_sockets{{{p},state=\"ESTAB\"}}")], 2.0);
        assert_eq!(
            m[&format!("diag_tcp_sockets{{{p},state=\"CLOSE-WAIT\"}}")],
            1.0
        );
        assert!(!m.contains_key(&format!("diag_tcp_sockets{{{p},state=\"LISTEN\"}}")));
        assert_eq!(m[&format!("diag_tcp_close_wait_leaks{{{p}}}")], 1.0);
        assert_eq!(m["diag_events_total"], 40.0);
        assert_eq!(m["diag_events_dropped_total"], 2.0);
        assert_eq!(m["diag_probes_attached"], 6.0);
        assert_eq!(m["diag_exporter_process_series"], 1.0);
        assert_eq!(m["diag_exporter_process_series_limit"], 50.0);
        assert_eq!(m["diag_healthy"], 0.0, "until a scrape finds it healthy");
        assert_eq!(m["diag_tcp_ephemeral_ports_warning_ratio"], 0.0);
        // Host-level twins of the per-process counters.
        assert_eq!(m[r#"diag_host_tcp_opens_total{direction="active"}"#], 5.0);
        assert_eq!(m["diag_host_tcp_closes_total"], 6.0);
        assert_eq!(m[r#"diag_host_oom_kills_total{constraint="memcg"}"#], 0.0);
    }

    #[test]
    fn listen_overflows_by_port() {
        let mut e = Exporter::new(Bounds::default(), 6);
        let c = Counters {
            passive_opens: 3,
            listen_overflows: 5,
            ..Default::default()
        };
        let mut r = row(7, "api", c, StateCounts::default(), 0);
        r.listen_ports = vec![(0, 1), (8080, 4)];
        e.update_tcp(&snapshot(vec![r.clone()]), &mut Fake);
        let p = r#"pid="7",comm="api",cgroup="/svc/a""#;
        let m = parse(&e.render());
        assert_eq!(
            m[&format!("diag_tcp_listen_overflows_total{{{p},port=\"8080\"}}")],
            4.0
        );
        assert_eq!(
            m[&format!("diag_tcp_listen_overflows_total{{{p},port=\"other\"}}")],
            1.0
        );
        // Later: only the increase is credited, the total stays exact.
        r.totals.listen_overflows = 7;
        r.listen_ports = vec![(0, 1), (8080, 6)];
        e.update_tcp(&snapshot(vec![r]), &mut Fake);
        let m = parse(&e.render());
        assert_eq!(
            m[&format!("diag_tcp_listen_overflows_total{{{p},port=\"8080\"}}")],
            6.0
        );
    }

    #[test]
    fn accept_queue_peaks_last_a_window() {
        use crate::aggregate::listen::ListenRow;
        let listen = |high: u32| ListenRow {
            netns: 1,
            local: "127.0.0.1:8080".parse().unwrap(),
            pid: Some(7),
            comm: Some("api".into()),
            overflows: 0,
            overflows_interval: 0,
            drops: 0,
            drops_interval: 0,
            queue: Some(high),
            backlog: Some(128),
            queue_max: 120,
            queue_high_interval: high,
            opens: 1,
            opens_interval: 1,
            last_ns: 1,
        };
        let mut e = Exporter::new(Bounds::default(), 6);
        let l = r#"pid="7",comm="api",cgroup="/svc/a",address="127.0.0.1:8080""#;
        let c = Counters {
            passive_opens: 1,
            ..Default::default()
        };
        let at = |e: &mut Exporter, ts: u64, high: u32| {
            let mut s = snapshot(vec![row(7, "api", c, StateCounts::default(), 0)]);
            s.ts_ns = ts;
            s.listen = vec![listen(high)];
            e.update_tcp(&s, &mut Fake);
            parse(&e.render())
        };
        let m = at(&mut e, 1_000_000_000, 120);
        assert_eq!(m[&format!("diag_tcp_listen_queue_high{{{l}}}")], 120.0);
        assert_eq!(m[&format!("diag_tcp_listen_backlog{{{l}}}")], 128.0);
        // A quieter second does not hide the peak of the window...
        let m = at(&mut e, 2_000_000_000, 3);
        assert_eq!(m[&format!("diag_tcp_listen_queue_high{{{l}}}")], 120.0);
        // ...which ends 15 s later.
        let m = at(&mut e, 17_000_000_000, 0);
        assert_eq!(m[&format!("diag_tcp_listen_queue_high{{{l}}}")], 3.0);
        let m = at(&mut e, 18_000_000_001, 0);
        assert_eq!(m[&format!("diag_tcp_listen_queue_high{{{l}}}")], 0.0);
        // A listener whose owner has no series of its own goes with
        // pid="other".
        let mut s = snapshot(Vec::new());
        s.ts_ns = 19_000_000_000;
        let mut web = listen(5);
        (web.pid, web.comm) = (Some(8), Some("web".into()));
        s.listen = vec![web];
        e.update_tcp(&s, &mut Fake);
        let m = parse(&e.render());
        let other = r#"pid="other",comm="other",cgroup="other",address="127.0.0.1:8080""#;
        assert_eq!(m[&format!("diag_tcp_listen_queue_high{{{other}}}")], 5.0);
    }

    #[test]
    fn connect_failures_by_error() {
        let mut e = Exporter::new(Bounds::default(), 6);
        let c = Counters {
            active_opens: 5,
            failed_connects: 5,
            ..Default::default()
        };
        let mut r = row(7, "api", c, StateCounts::default(), 0);
        r.connect_errors = vec![("ECONNREFUSED".into(), 3), ("ETIMEDOUT".into(), 2)];
        e.update_tcp(&snapshot(vec![r.clone()]), &mut Fake);
        let p = r#"pid="7",comm="api",cgroup="/svc/a""#;
        let m = parse(&e.render());
        let key = |err: &str| format!("diag_tcp_connect_failures_total{{{p},error=\"{err}\"}}");
        assert_eq!(m[&key("ECONNREFUSED")], 3.0);
        assert_eq!(m[&key("ETIMEDOUT")], 2.0);
        // Later: only the increase is credited, the total stays exact.
        r.totals.failed_connects = 9;
        r.connect_errors = vec![("ECONNREFUSED".into(), 7), ("ETIMEDOUT".into(), 2)];
        e.update_tcp(&snapshot(vec![r]), &mut Fake);
        let m = parse(&e.render());
        assert_eq!(m[&key("ECONNREFUSED")], 7.0);
        assert_eq!(m[&key("ETIMEDOUT")], 2.0);
        assert_eq!(m[&format!("diag_tcp_failed_connects_total{{{p}}}")], 9.0);
    }

    #[test]
    fn kernel_drops_by_reason_and_unowned_host_wide() {
        let mut e = Exporter::new(Bounds::default(), 6);
        let c = Counters {
            passive_opens: 1,
            ..Default::default()
        };
        let mut r = row(7, "api", c, StateCounts::default(), 0);
        r.kernel_drops = vec![("TCP_OLD_SEQUENCE".into(), 3), ("other".into(), 2)];
        let mut snap = snapshot(vec![r.clone()]);
        snap.unowned_drops = vec![crate::aggregate::drops::UnownedDropRow {
            reason: "NO_SOCKET".into(),
            reason_code: 3,
            count: 25,
            count_interval: 25,
        }];
        e.update_tcp(&snap, &mut Fake);
        let p = r#"pid="7",comm="api",cgroup="/svc/a""#;
        let m = parse(&e.render());
        assert_eq!(
            m[&format!("diag_tcp_drops_total{{{p},reason=\"TCP_OLD_SEQUENCE\"}}")],
            3.0
        );
        assert_eq!(
            m[&format!("diag_tcp_drops_total{{{p},reason=\"other\"}}")],
            2.0
        );
        assert_eq!(
            m[r#"diag_tcp_unowned_drops_total{reason="NO_SOCKET"}"#],
            25.0
        );
        // Later: only the increase is credited.
        r.kernel_drops = vec![("TCP_OLD_SEQUENCE".into(), 10), ("other".into(), 2)];
        e.update_tcp(&snapshot(vec![r]), &mut Fake);
        let m = parse(&e.render());
        assert_eq!(
            m[&format!("diag_tcp_drops_total{{{p},reason=\"TCP_OLD_SEQUENCE\"}}")],
            10.0
        );
    }

    #[test]
    fn other_series_and_oom_kills() {
        let mut e = Exporter::new(
            Bounds {
                top: 1,
                ..Bounds::default()
            },
            1,
        );
        let c = |n| Counters {
            active_opens: n,
            ..Default::default()
        };
        e.update_tcp(
            &snapshot(vec![
                row(7, "api", c(9), StateCounts::default(), 0),
                row(8, "cron", c(1), StateCounts::default(), 0),
                row(9, "cron", c(2), StateCounts::default(), 0),
            ]),
            &mut Fake,
        );
        let memcg = diag_common::oom::constraint::MEMCG;
        e.on_oom(memcg, Some("/svc/a".into()));
        e.on_oom(memcg, None);
        let m = parse(&e.render());
        assert_eq!(
            m[r#"diag_tcp_opens_total{pid="7",comm="api",cgroup="/svc/a",direction="active"}"#],
            9.0
        );
        assert_eq!(
            m[r#"diag_tcp_opens_total{pid="other",comm="other",cgroup="/svc/b",direction="active"}"#],
            3.0
        );
        assert_eq!(
            m[r#"diag_oom_kills_total{cgroup="/svc/a",constraint="memcg"}"#],
            1.0
        );
        assert_eq!(
            m[r#"diag_oom_kills_total{cgroup="unknown",constraint="memcg"}"#],
            1.0
        );
        let per_process = m
            .keys()
            .filter(|k| k.starts_with("diag_tcp_closes_total{") && !k.contains("pid=\"other\""))
            .count();
        assert_eq!(per_process, 1);
    }

    #[test]
    fn health() {
        let s = 1_000_000_000;
        assert!(health_check(3, Some(10 * s), false, 12 * s).is_ok());
        assert!(
            health_check(3, Some(10 * s), false, 16 * s)
                .unwrap_err()
                .contains("stuck")
        );
        assert!(health_check(0, Some(10 * s), false, 10 * s).is_err());
        assert!(health_check(3, None, false, 10 * s).is_err());
        assert!(health_check(3, Some(10 * s), true, 10 * s).is_err());
    }
}
