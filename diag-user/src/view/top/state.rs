//! The state of `diag top`: pure, fed by [`Msg`]s, host samples (procfs
//! numbers read elsewhere) and a clock. Rendering reads it; keys change
//! its UI part. No I/O here.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use diag_common::{
    oom::{OomKillEvent, constraint},
    user::AnyEvent,
};
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use serde::Serialize;

use crate::{
    aggregate::{
        oom::OomStats,
        tcp::{PeerConns, Pressure, TcpAggregate, TcpConfig, TcpSnapshot},
    },
    bus::{Health, Msg, new_losses},
    clock::WallClock,
    host::{HostSample, LoadAvg, ProcCpu},
    sys::page_kb,
    view::{conns::Timebase, fmt::human_kb},
};

/// Notable events kept for the event pane.
pub const MAX_EVENTS: usize = 200;
/// A process that is gone stays on screen this long after its last activity.
pub const GONE_LINGER_NS: u64 = 60_000_000_000;

/// Tunables of the top view.
#[derive(Debug, Clone)]
pub struct TopConfig {
    pub interval_ns: u64,
    pub tcp: TcpConfig,
    /// Resets per second (sent plus received) of one process that make a burst.
    pub reset_burst_per_s: f64,
    /// diag's own pid (live), for what watching costs in user space.
    pub self_pid: Option<u32>,
}

impl Default for TopConfig {
    fn default() -> Self {
        TopConfig {
            interval_ns: 1_000_000_000,
            tcp: TcpConfig::default(),
            reset_burst_per_s: 10.0,
            self_pid: None,
        }
    }
}

/// Scheduler columns of a row, filled by the scheduler module when it is
/// there (shown as `-` while `None`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct SchedCols {
    /// Run-queue latency p99 over the interval, ns.
    pub runq_p99_ns: u64,
    /// Share of the interval spent runnable but waiting for a CPU, %.
    pub wait_pct: f64,
    /// Time blocked (uninterruptible sleep) in the interval, ns.
    pub blocked_ns: u64,
}

/// Memory columns of a row over the last interval, filled from the memory
/// frame (shown as `-` while `None`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct MemCols {
    /// Reclaim, compaction and throttling, ns.
    pub stall_ns: u64,
    pub episodes: u64,
    pub direct_ns: u64,
    pub memcg_ns: u64,
    pub compact_ns: u64,
    pub scanned: u64,
    pub reclaimed: u64,
    pub swapin_pages: u64,
    pub swapin_ns: u64,
    pub swapout_pages: u64,
    pub majflt: u64,
}

impl From<&crate::aggregate::memory::MemProcInterval> for MemCols {
    fn from(p: &crate::aggregate::memory::MemProcInterval) -> Self {
        MemCols {
            stall_ns: p.f.stall_ns,
            episodes: p.f.episodes(),
            direct_ns: p.f.direct_ns,
            memcg_ns: p.f.memcg_ns,
            compact_ns: p.f.compact_ns,
            scanned: p.f.scanned,
            reclaimed: p.f.reclaimed,
            swapin_pages: p.f.swapin_pages,
            swapin_ns: p.f.swapin_ns,
            swapout_pages: p.f.swapout_pages,
            majflt: p.majflt,
        }
    }
}

/// TCP columns of a row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct TcpCols {
    pub opens_per_s: f64,
    pub closes_per_s: f64,
    pub established: u64,
    pub time_wait: u64,
    pub close_wait: u64,
    /// CLOSE_WAIT sockets older than the leak threshold.
    pub leaks: u64,
    /// Resets sent plus received, since start.
    pub resets: u64,
    /// Retransmitted segments, since start.
    pub retransmits: u64,
    pub resets_per_s: f64,
    pub retransmits_per_s: f64,
    /// Active opens that reached ESTABLISHED since start, and how long
    /// they took (SYN sent to ESTABLISHED).
    pub connects: u64,
    pub connect_p50_ns: u64,
    pub connect_p99_ns: u64,
    pub connect_max_ns: u64,
    /// Connection attempts lost at this process's listeners because the
    /// accept queue was full, since start and in the last interval.
    pub listen_overflows: u64,
    pub listen_overflows_interval: u64,
    /// The fullest of its listeners' accept queues in the interval, as a
    /// share of that listener's backlog: (queue, backlog).
    pub listen_queue_high: Option<(u32, u32)>,
    /// Connects that failed (SYN_SENT -> CLOSE), since start; their
    /// errors are in `diag conns` and the hints.
    #[serde(default)]
    pub failed_connects: u64,
    #[serde(default)]
    pub failed_connects_per_s: f64,
    /// Packets the kernel dropped for its sockets (every reason), and
    /// the bytes of its closed connections (acked, received), since
    /// start.
    #[serde(default)]
    pub kernel_drops: u64,
    #[serde(default)]
    pub bytes_acked: u64,
    #[serde(default)]
    pub bytes_received: u64,
}

/// One process on screen.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub pid: u32,
    pub comm: String,
    pub cgroup: Option<String>,
    /// CPU use over the interval, % of one CPU (None: no procfs numbers).
    pub cpu_pct: Option<f64>,
    /// Still in /proc.
    pub alive: bool,
    pub tcp: Option<TcpCols>,
    pub oom_kills: u64,
    pub sched: Option<SchedCols>,
    /// Block I/O wait (its requests' start-to-completion time, summed)
    /// over the last interval, ns, when the block probes are attached.
    pub io_ns: Option<u64>,
    /// Memory stalls and swap in the last interval.
    #[serde(default)]
    pub mem: Option<MemCols>,
    /// Futex wait over the interval, ns, summed over threads (`top
    /// --locks`; None without the lock probes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock_ns: Option<u64>,
}

/// Whole-host numbers over the last interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct HostView {
    pub loadavg: Option<LoadAvg>,
    pub running: u64,
    pub blocked: u64,
    pub cpus: u32,
    /// Busy share of all CPUs, %; with its parts.
    pub cpu_pct: Option<f64>,
    pub user_pct: f64,
    pub system_pct: f64,
    pub iowait_pct: f64,
    pub steal_pct: f64,
    pub mem_total_kb: u64,
    pub mem_available_kb: u64,
    pub swap_total_kb: u64,
    pub swap_used_kb: u64,
    /// Pages per second.
    pub swap_in_per_s: f64,
    pub swap_out_per_s: f64,
}

/// Host-wide TCP numbers.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TcpTotals {
    pub opens_per_s: f64,
    pub closes_per_s: f64,
    pub established: u64,
    pub time_wait: u64,
    pub close_wait: u64,
    pub resets_per_s: f64,
    pub retransmits_per_s: f64,
    /// The destination using the most ephemeral ports.
    pub worst_pressure: Option<Pressure>,
}

/// diag's own health: whether to trust the screen, and what watching costs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct DiagView {
    pub events_per_s: f64,
    pub dropped: u64,
    pub map_full: u64,
    pub decode_errors: u64,
    /// CPU used by diag's BPF programs, % of one CPU (None: statistics off).
    pub bpf_cpu_pct: Option<f64>,
    pub bpf_programs: u32,
    /// CPU used by diag itself in user space, % of one CPU.
    pub self_cpu_pct: Option<f64>,
    /// Sockets given to another owner by reconciliation (their holder in
    /// /proc/PID/fd), since the start.
    pub owners_fixed: u64,
}

/// What kind of notable event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotableKind {
    OomKill,
    CloseWaitLeak,
    ResetBurst,
    PortPressure,
    Drops,
    Damage,
}

impl NotableKind {
    pub fn label(self) -> &'static str {
        match self {
            NotableKind::OomKill => "OOM",
            NotableKind::CloseWaitLeak => "LEAK",
            NotableKind::ResetBurst => "RESETS",
            NotableKind::PortPressure => "PORTS",
            NotableKind::Drops => "DROPS",
            NotableKind::Damage => "DAMAGE",
        }
    }
}

/// A line of the event pane.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notable {
    pub ts_ns: u64,
    pub kind: NotableKind,
    pub pid: Option<u32>,
    pub text: String,
}

/// Everything one frame shows, computed at each tick.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Model {
    pub ts_ns: u64,
    pub interval_s: f64,
    pub host: Option<HostView>,
    pub tcp: TcpTotals,
    pub oom_kills: u64,
    pub diag: DiagView,
    pub rows: Vec<Row>,
    pub hints: Vec<String>,
}

/// Columns the table can be sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SortKey {
    Pid,
    Comm,
    Cpu,
    Opens,
    Closes,
    Estab,
    TimeWait,
    CloseWait,
    Resets,
    Retrans,
    Oom,
    RunqP99,
    WaitPct,
    Blocked,
}

impl SortKey {
    /// In column order.
    pub const ALL: [SortKey; 14] = [
        SortKey::Pid,
        SortKey::Comm,
        SortKey::Cpu,
        SortKey::Opens,
        SortKey::Closes,
        SortKey::Estab,
        SortKey::TimeWait,
        SortKey::CloseWait,
        SortKey::Resets,
        SortKey::Retrans,
        SortKey::Oom,
        SortKey::RunqP99,
        SortKey::WaitPct,
        SortKey::Blocked,
    ];

    /// The key that sorts by this column.
    pub fn key(self) -> char {
        match self {
            SortKey::Pid => 'n',
            SortKey::Comm => 'm',
            SortKey::Cpu => 'c',
            SortKey::Opens => 'o',
            SortKey::Closes => 'x',
            SortKey::Estab => 'e',
            SortKey::TimeWait => 't',
            SortKey::CloseWait => 'w',
            SortKey::Resets => 'r',
            SortKey::Retrans => 'R',
            SortKey::Oom => 'k',
            SortKey::RunqP99 => 'l',
            SortKey::WaitPct => 'W',
            SortKey::Blocked => 'b',
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SortKey::Pid => "pid",
            SortKey::Comm => "command name",
            SortKey::Cpu => "CPU %",
            SortKey::Opens => "connection opens/s",
            SortKey::Closes => "connection closes/s",
            SortKey::Estab => "ESTABLISHED sockets",
            SortKey::TimeWait => "TIME_WAIT sockets",
            SortKey::CloseWait => "CLOSE_WAIT sockets",
            SortKey::Resets => "resets",
            SortKey::Retrans => "retransmits",
            SortKey::Oom => "OOM kills",
            SortKey::RunqP99 => "run-queue latency p99",
            SortKey::WaitPct => "% time waiting for a CPU",
            SortKey::Blocked => "blocked time",
        }
    }

    fn value(self, r: &Row) -> f64 {
        let t = r.tcp.unwrap_or_default();
        let s = r.sched;
        match self {
            SortKey::Pid => -(r.pid as f64),
            SortKey::Comm => 0.0,
            SortKey::Cpu => r.cpu_pct.unwrap_or(-1.0),
            SortKey::Opens => t.opens_per_s,
            SortKey::Closes => t.closes_per_s,
            SortKey::Estab => t.established as f64,
            SortKey::TimeWait => t.time_wait as f64,
            SortKey::CloseWait => t.close_wait as f64,
            SortKey::Resets => t.resets as f64,
            SortKey::Retrans => t.retransmits as f64,
            SortKey::Oom => r.oom_kills as f64,
            SortKey::RunqP99 => s.map_or(-1.0, |s| s.runq_p99_ns as f64),
            SortKey::WaitPct => s.map_or(-1.0, |s| s.wait_pct),
            SortKey::Blocked => s.map_or(-1.0, |s| s.blocked_ns as f64),
        }
    }
}

/// Order rows by `key`, biggest first (pid and name: ascending); `reverse`
/// turns it around.
pub fn sort_rows(rows: &mut [&Row], key: SortKey, reverse: bool) {
    rows.sort_by(|a, b| {
        let o = if key == SortKey::Comm {
            a.comm.cmp(&b.comm)
        } else {
            key.value(b).total_cmp(&key.value(a))
        };
        let o = o.then(a.pid.cmp(&b.pid));
        if reverse { o.reverse() } else { o }
    });
}

/// The interactive part: what the user asked to see.
#[derive(Debug, Clone, PartialEq)]
pub struct Ui {
    pub sort: SortKey,
    pub reverse: bool,
    /// Rows whose pid or command name contains this.
    pub filter: String,
    /// The `/` prompt is open.
    pub editing_filter: bool,
    /// Index of the highlighted row among the visible ones.
    pub cursor: usize,
    /// The process the user moved the cursor to: the cursor follows it
    /// when rows are re-sorted or refreshed.
    pub selected_pid: Option<u32>,
    pub paused: bool,
    pub help: bool,
    /// The process whose detail is shown.
    pub detail: Option<u32>,
}

impl Default for Ui {
    fn default() -> Self {
        Ui {
            sort: SortKey::Cpu,
            reverse: false,
            filter: String::new(),
            editing_filter: false,
            cursor: 0,
            selected_pid: None,
            paused: false,
            help: false,
            detail: None,
        }
    }
}

/// What a key asks of the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    None,
    Quit,
}

/// The whole state of `diag top`.
#[derive(Debug, Clone)]
pub struct TopState {
    pub config: TopConfig,
    pub clock: WallClock,
    pub timebase: Timebase,
    pub agg: TcpAggregate,
    pub oom: OomStats,
    pub health: Health,
    /// What is on screen (frozen while paused).
    pub model: Model,
    /// The newest model computed while paused.
    pending: Option<Model>,
    /// Notable events, newest first.
    pub events: VecDeque<Notable>,
    pub ui: Ui,
    /// The detail process's connections, grouped by peer.
    pub detail_peers: Vec<PeerConns>,
    /// Scheduler numbers per pid, from the scheduler module.
    pub sched: HashMap<u32, SchedCols>,
    /// Futex wait per pid over the last interval (`--locks`).
    pub locks: Option<HashMap<u32, (u64, String)>>,
    /// Run-queue latency histograms per pid, from the scheduler module.
    pub runq_hist: HashMap<u32, crate::aggregate::histogram::Log2Hist>,
    /// Memory cgroup paths by directory inode, from the OOM kills'
    /// contexts.
    pub memcg_paths: HashMap<u64, String>,
    /// OOM kills waiting for their context (their cgroups' paths).
    pending_oom: Vec<OomKillEvent>,
    /// Whether the host part is known at all (live: procfs; replay: no).
    pub host_known: bool,
    /// Pressure stall information (PSI) of the last interval (live: read
    /// with the host sample; replay: the recorded frames).
    pub pressure: Option<crate::aggregate::pressure::PressureFrame>,
    /// Block I/O of the last interval (live: read with the host sample),
    /// and per process.
    pub block: Option<crate::aggregate::block::BlockFrame>,
    pub io: HashMap<u32, crate::aggregate::block::IoFigures>,
    /// Memory numbers per pid over the last interval (the memory frame).
    pub memory: HashMap<u32, MemCols>,
    host_prev: Option<HostSample>,
    host_now: Option<HostSample>,
    events_since_tick: u64,
    last_tick_ns: Option<u64>,
    baselined: bool,
    baseline_ns: Option<u64>,
    next_due: Option<u64>,
    last_ts: u64,
    /// Last activity of each pid seen (boot ns), and its last known row.
    last_seen: HashMap<u32, (u64, Row)>,
    leaks_reported: HashMap<u32, u64>,
    bursting: HashSet<u32>,
    ports_warned: HashSet<String>,
    kernel_resets_prev: u64,
    pub ticks: u64,
}

fn comm_of(c: &[u8; 16]) -> String {
    crate::text::comm(c)
}

impl TopState {
    pub fn new(config: TopConfig, clock: WallClock, timebase: Timebase) -> Self {
        let ui = Ui {
            // A recording has no CPU numbers.
            sort: match timebase {
                Timebase::Live => SortKey::Cpu,
                Timebase::Events => SortKey::Opens,
            },
            ..Ui::default()
        };
        TopState {
            agg: TcpAggregate::new(config.tcp.clone()),
            config,
            clock,
            timebase,
            oom: OomStats::default(),
            health: Health::default(),
            model: Model::default(),
            pending: None,
            events: VecDeque::new(),
            ui,
            detail_peers: Vec::new(),
            sched: HashMap::new(),
            locks: None,
            runq_hist: HashMap::new(),
            memcg_paths: HashMap::new(),
            pending_oom: Vec::new(),
            host_known: timebase == Timebase::Live,
            pressure: None,
            block: None,
            io: HashMap::new(),
            memory: HashMap::new(),
            host_prev: None,
            host_now: None,
            events_since_tick: 0,
            last_tick_ns: None,
            baselined: false,
            baseline_ns: None,
            next_due: None,
            last_ts: 0,
            last_seen: HashMap::new(),
            leaks_reported: HashMap::new(),
            bursting: HashSet::new(),
            ports_warned: HashSet::new(),
            kernel_resets_prev: 0,
            ticks: 0,
        }
    }

    fn notable(&mut self, ts_ns: u64, kind: NotableKind, pid: Option<u32>, text: String) {
        self.events.push_front(Notable {
            ts_ns,
            kind,
            pid,
            text,
        });
        self.events.truncate(MAX_EVENTS);
    }

    /// Feed one message from the bus. With [`Timebase::Events`], the
    /// events' own time drives the ticks: `on_tick` sees the state after
    /// each one.
    pub fn on_msg(&mut self, msg: &Msg, on_tick: &mut dyn FnMut(&TopState)) {
        match msg {
            Msg::Events(evs) => {
                for e in evs {
                    let ts = e.header().ts_ns;
                    if self.timebase == Timebase::Events {
                        self.start_clock(ts);
                        // Through a gap: the frame due and one at the
                        // gap's last boundary, not one per interval.
                        let interval = self.config.interval_ns;
                        for due in crate::view::conns::catch_up(&mut self.next_due, ts, interval) {
                            self.tick(due);
                            on_tick(self);
                        }
                    }
                    self.last_ts = self.last_ts.max(ts);
                    self.events_since_tick += 1;
                    self.on_event(e);
                }
            }
            Msg::Health(h) => {
                // One line per loss in the event pane, in the words every
                // sink uses.
                for loss in new_losses(&self.health, h) {
                    self.notable(
                        h.ts_ns,
                        NotableKind::Drops,
                        None,
                        format!("{loss}; counts are incomplete"),
                    );
                }
                if self.timebase == Timebase::Events {
                    self.last_ts = self.last_ts.max(h.ts_ns);
                }
                self.health = *h;
            }
            Msg::Table { ts_ns, rows } => {
                let ts_ns = *ts_ns;
                if self.agg.on_table(rows, ts_ns).is_none() {
                    // The baseline for the first interval's rates, unless
                    // taken at the start (the table can take a while to
                    // read on a busy host: events counted meanwhile belong
                    // to the first interval).
                    if !self.baselined {
                        self.agg.advance(ts_ns);
                        self.baselined = true;
                        self.baseline_ns = Some(ts_ns);
                        // Events before the baseline are not in its rates.
                        self.events_since_tick = 0;
                    }
                    self.start_clock(ts_ns);
                }
                self.last_ts = self.last_ts.max(ts_ns);
            }
            Msg::Pressure(p) => self.pressure = Some((**p).clone()),
            Msg::Memory(m) => {
                self.memory = m
                    .processes
                    .iter()
                    .map(|p| (p.pid, MemCols::from(p)))
                    .collect();
            }
            // Replay: the recorded block I/O frames.
            Msg::Block(b) => {
                self.io = b.by_pid();
                self.block = Some((**b).clone());
            }
            Msg::Damage(what) => {
                let ts = self.last_ts;
                self.notable(ts, NotableKind::Damage, None, what.clone());
            }
            Msg::OomContext(f) => {
                if let Some(i) = self.pending_oom.iter().position(|k| f.is_for(k)) {
                    let o = self.pending_oom.remove(i);
                    for (ino, path) in [
                        (o.victim_memcg_ino, &f.ctx.victim_cgroup),
                        (o.oom_memcg_ino, &f.ctx.oom_cgroup),
                    ] {
                        if let (true, Some(p)) = (ino != 0, path) {
                            self.memcg_paths.insert(ino, p.clone());
                        }
                    }
                    self.on_oom(&o);
                }
            }
            _ => {}
        }
    }

    /// OOM kills still waiting for their context at `now_ns` (over 5 s, or
    /// every one with `all`) are shown with what the kernel said.
    pub fn flush_oom(&mut self, now_ns: u64, all: bool) {
        let (late, wait): (Vec<_>, Vec<_>) = self
            .pending_oom
            .drain(..)
            .partition(|k| all || k.header.ts_ns.saturating_add(5_000_000_000) <= now_ns);
        self.pending_oom = wait;
        for o in late {
            self.on_oom(&o);
        }
    }

    fn start_clock(&mut self, ts: u64) {
        if self.next_due.is_none() {
            self.next_due = Some(ts + self.config.interval_ns);
        }
    }

    /// Live: the baseline for the first interval's rates, taken when the
    /// probes are attached (before any event).
    pub fn start(&mut self, now_ns: u64) {
        self.agg.advance(now_ns);
        self.baselined = true;
        self.baseline_ns = Some(now_ns);
    }

    /// A host sample has been taken (live: the first is the baseline).
    pub fn host_sampled(&self) -> bool {
        self.host_now.is_some()
    }

    /// The last event time seen (replay: where the end is).
    pub fn last_ts(&self) -> u64 {
        self.last_ts
    }

    fn on_event(&mut self, e: &AnyEvent) {
        match e {
            // Shown once the context names its cgroups, unless they are
            // known already.
            AnyEvent::OomKill(o) => {
                let known = |ino: u64| ino == 0 || self.memcg_paths.contains_key(&ino);
                if known(o.victim_memcg_ino) && known(o.oom_memcg_ino) {
                    self.on_oom(o)
                } else {
                    self.pending_oom.push(*o)
                }
            }
            _ => self.agg.on_event(e),
        }
    }

    fn on_oom(&mut self, o: &OomKillEvent) {
        let victim_cg = self.memcg_paths.get(&o.victim_memcg_ino).cloned();
        let oom_cg = self.memcg_paths.get(&o.oom_memcg_ino).cloned();
        self.oom.eat(o, victim_cg.as_deref(), oom_cg.as_deref());
        let pid = o.victim_process();
        let comm = comm_of(&o.victim_comm);
        let scope = match o.constraint {
            constraint::MEMCG => format!(
                "memcg {} at its limit {}",
                oom_cg.as_deref().unwrap_or("?"),
                human_kb(o.oom_memcg_limit_pages.saturating_mul(page_kb()))
            ),
            constraint::GLOBAL => "the host ran out of memory".into(),
            c => constraint::name(c).to_string(),
        };
        let trigger = if o.header.pid == o.victim_pid {
            String::new()
        } else {
            format!(
                ", allocating: {} ({})",
                o.header.tgid,
                comm_of(&o.header.comm)
            )
        };
        self.notable(
            o.header.ts_ns,
            NotableKind::OomKill,
            Some(pid),
            format!(
                "pid {pid} ({comm}) killed, rss {}: {scope}{trigger}",
                human_kb(o.rss_kb())
            ),
        );
        // The victim is gone: remember it for its row.
        self.last_seen
            .entry(pid)
            .and_modify(|(ts, _)| *ts = o.header.ts_ns)
            .or_insert((
                o.header.ts_ns,
                Row {
                    pid,
                    comm,
                    cgroup: victim_cg,
                    cpu_pct: None,
                    alive: false,
                    tcp: None,
                    oom_kills: 0,
                    sched: None,
                    io_ns: None,
                    mem: None,
                    lock_ns: None,
                },
            ));
    }

    /// A new procfs sample of the host (live only).
    pub fn on_host(&mut self, mut s: HostSample) {
        if let Some(procs) = s.sched.take() {
            // The scheduler's view of this interval replaces the last one.
            self.sched.clear();
            self.runq_hist.clear();
            for p in procs {
                let cols = SchedCols {
                    runq_p99_ns: p.p99_ns.unwrap_or(0),
                    wait_pct: p.wait_pct,
                    blocked_ns: p.blocked_ns,
                };
                self.set_sched(p.pid, cols, Some(p.hist));
            }
        }
        if let Some(p) = s.pressure.take() {
            self.pressure = Some(p);
        }
        if let Some(b) = s.block.take() {
            self.io = b.by_pid();
            self.block = Some(b);
        }
        if let Some(m) = s.memory.take() {
            // This interval's memory frame replaces the last one.
            self.memory = m
                .processes
                .iter()
                .map(|p| (p.pid, MemCols::from(p)))
                .collect();
        }
        if let Some(l) = s.locks.take() {
            // The lock frame of this interval replaces the last one.
            self.locks = Some(
                l.procs
                    .iter()
                    .map(|p| (p.pid, (p.wait_ns, p.comm.clone())))
                    .collect(),
            );
        }
        self.host_known = true;
        self.host_prev = self.host_now.take();
        self.host_now = Some(s);
    }

    /// Scheduler numbers for a process (for the scheduler module).
    pub fn set_sched(
        &mut self,
        pid: u32,
        cols: SchedCols,
        hist: Option<crate::aggregate::histogram::Log2Hist>,
    ) {
        self.sched.insert(pid, cols);
        if let Some(h) = hist {
            self.runq_hist.insert(pid, h);
        }
    }

    fn host_view(&self) -> (Option<HostView>, HashMap<u32, (f64, &ProcCpu)>) {
        let mut cpu = HashMap::new();
        let Some(now) = &self.host_now else {
            return (None, cpu);
        };
        let mut v = HostView {
            loadavg: now.loadavg,
            mem_total_kb: now.mem.total_kb,
            mem_available_kb: now.mem.available_kb,
            swap_total_kb: now.mem.swap_total_kb,
            swap_used_kb: now.mem.swap_total_kb.saturating_sub(now.mem.swap_free_kb),
            ..Default::default()
        };
        if let Some(st) = &now.stat {
            v.running = st.procs_running;
            v.blocked = st.procs_blocked;
            v.cpus = st.cpus;
        }
        if let Some(prev) = &self.host_prev {
            let secs = now.ts_ns.saturating_sub(prev.ts_ns) as f64 / 1e9;
            if let (Some(a), Some(b)) = (&prev.stat, &now.stat) {
                let total = b.cpu.total().saturating_sub(a.cpu.total()) as f64;
                if total > 0.0 {
                    let pct = |x: u64, y: u64| y.saturating_sub(x) as f64 * 100.0 / total;
                    v.user_pct = pct(a.cpu.user + a.cpu.nice, b.cpu.user + b.cpu.nice);
                    v.system_pct = pct(
                        a.cpu.system + a.cpu.irq + a.cpu.softirq,
                        b.cpu.system + b.cpu.irq + b.cpu.softirq,
                    );
                    v.iowait_pct = pct(a.cpu.iowait, b.cpu.iowait);
                    v.steal_pct = pct(a.cpu.steal, b.cpu.steal);
                    v.cpu_pct =
                        Some(100.0 - pct(a.cpu.idle + a.cpu.iowait, b.cpu.idle + b.cpu.iowait));
                }
            }
            if secs > 0.0 {
                v.swap_in_per_s = now.swap.pswpin.saturating_sub(prev.swap.pswpin) as f64 / secs;
                v.swap_out_per_s = now.swap.pswpout.saturating_sub(prev.swap.pswpout) as f64 / secs;
                let before: HashMap<(u32, u64), u64> = prev
                    .procs
                    .iter()
                    .map(|p| ((p.pid, p.start), p.ticks))
                    .collect();
                let hz = now.hz.max(1) as f64;
                for p in &now.procs {
                    // A process born in the interval used all its time in it.
                    let was = before.get(&(p.pid, p.start)).copied().unwrap_or(0);
                    let pct = p.ticks.saturating_sub(was) as f64 / hz / secs * 100.0;
                    cpu.insert(p.pid, (pct, p));
                }
            }
        } else {
            for p in &now.procs {
                cpu.insert(p.pid, (f64::NAN, p));
            }
        }
        (Some(v), cpu)
    }

    fn diag_view(&self) -> DiagView {
        let h = self.health;
        let mut d = DiagView {
            dropped: h.ringbuf_full,
            map_full: h.sock_map_full + h.listen_map_full,
            decode_errors: h.decode_errors,
            ..Default::default()
        };
        if let Some(now) = &self.host_now
            && let Some(bpf) = now.bpf
        {
            d.bpf_programs = bpf.programs;
            if let Some(prev) = &self.host_prev
                && let Some(b0) = prev.bpf
                && now.ts_ns > prev.ts_ns
                && bpf.run_time_ns >= b0.run_time_ns
            {
                d.bpf_cpu_pct = Some(
                    (bpf.run_time_ns - b0.run_time_ns) as f64 * 100.0
                        / (now.ts_ns - prev.ts_ns) as f64,
                );
            }
        }
        d
    }

    /// A new frame at `now_ns` (boot-time ns; replay: event time): rates
    /// over the interval since the last one, notable events detected.
    pub fn tick(&mut self, now_ns: u64) {
        self.flush_oom(now_ns, false);
        self.ticks += 1;
        let snap = self.agg.snapshot(now_ns);
        let diag = DiagView {
            owners_fixed: snap.corrections.owners_fixed,
            ..self.diag_view()
        };
        let (host, cpu) = self.host_view();
        let host_known = host.is_some();
        let mut rows: BTreeMap<u32, Row> = BTreeMap::new();
        for (&pid, &(pct, p)) in &cpu {
            rows.insert(
                pid,
                Row {
                    pid,
                    comm: p.comm.clone(),
                    cgroup: p.cgroup.clone(),
                    cpu_pct: (!pct.is_nan()).then_some(pct),
                    alive: true,
                    tcp: None,
                    oom_kills: 0,
                    sched: None,
                    io_ns: None,
                    mem: None,
                    lock_ns: None,
                },
            );
        }
        // Running processes first: a process that has exited shows only
        // when nothing else has its pid now (else its numbers would be
        // taken for the new process's).
        let (running, exited): (Vec<_>, Vec<_>) = snap.processes.iter().partition(|p| !p.exited);
        let listen_of = |pid: u32| {
            snap.listen
                .iter()
                .filter(|l| l.pid == Some(pid))
                .fold((0, 0), |(t, i), l| {
                    (t + l.overflows, i + l.overflows_interval)
                })
        };
        let fullest_of = |pid: u32| {
            snap.listen
                .iter()
                .filter(|l| l.pid == Some(pid) && l.queue_high_interval > 0)
                .filter_map(|l| Some((l.queue_high_interval, l.backlog?)))
                .max_by(|a, b| {
                    (u64::from(a.0) * u64::from(b.1.max(1)))
                        .cmp(&(u64::from(b.0) * u64::from(a.1.max(1))))
                })
        };
        for p in running.into_iter().chain(exited.into_iter().rev()) {
            if p.exited && rows.contains_key(&p.pid) {
                continue;
            }
            let r = rows.entry(p.pid).or_insert_with(|| Row {
                pid: p.pid,
                comm: p.comm.clone(),
                cgroup: p.cgroup.clone(),
                cpu_pct: None,
                alive: !host_known,
                tcp: None,
                oom_kills: 0,
                sched: None,
                io_ns: None,
                mem: None,
                lock_ns: None,
            });
            r.tcp = Some(TcpCols {
                opens_per_s: p.rates.active_opens + p.rates.passive_opens,
                closes_per_s: p.rates.closes,
                established: p.states.established,
                time_wait: p.states.time_wait,
                close_wait: p.states.close_wait,
                leaks: p.leaks,
                resets: p.totals.resets_sent + p.totals.resets_received,
                retransmits: p.totals.retransmits,
                resets_per_s: p.rates.resets_sent + p.rates.resets_received,
                retransmits_per_s: p.rates.retransmits,
                connects: p.connects,
                connect_p50_ns: p.connect_p50_ns,
                connect_p99_ns: p.connect_p99_ns,
                connect_max_ns: p.connect_max_ns,
                listen_overflows: listen_of(p.pid).0,
                listen_overflows_interval: listen_of(p.pid).1,
                listen_queue_high: fullest_of(p.pid),
                failed_connects: p.totals.failed_connects,
                failed_connects_per_s: p.rates.failed_connects,
                kernel_drops: p.kernel_drops.iter().map(|(_, n)| n).sum(),
                bytes_acked: p.totals.bytes_acked,
                bytes_received: p.totals.bytes_received,
            });
        }
        for (k, c) in &self.oom.by_victim {
            if let Some(r) = rows.get_mut(&k.pid) {
                // Still exiting; a different name is a reused pid.
                if r.comm == k.comm {
                    r.oom_kills += c.kills;
                }
            } else if let Some((_, r)) = self.last_seen.get(&k.pid) {
                let mut r = r.clone();
                r.oom_kills = c.kills;
                r.alive = false;
                r.cpu_pct = None;
                rows.insert(k.pid, r);
            }
        }
        for (pid, s) in &self.sched {
            if let Some(r) = rows.get_mut(pid) {
                r.sched = Some(*s);
            }
        }
        if self.block.is_some() {
            for r in rows.values_mut() {
                r.io_ns = Some(self.io.get(&r.pid).map_or(0, |f| f.lat_ns()));
            }
        }
        for (pid, m) in &self.memory {
            if let Some(r) = rows.get_mut(pid) {
                r.mem = Some(*m);
            }
        }
        if let Some(locks) = &self.locks {
            // A process that waited on locks is shown even without CPU use.
            for (pid, (ns, comm)) in locks {
                if *ns > 0 {
                    rows.entry(*pid).or_insert_with(|| Row {
                        pid: *pid,
                        comm: comm.clone(),
                        cgroup: None,
                        cpu_pct: Some(0.0),
                        alive: true,
                        tcp: None,
                        oom_kills: 0,
                        sched: None,
                        io_ns: None,
                        mem: None,
                        lock_ns: None,
                    });
                }
            }
            for r in rows.values_mut() {
                r.lock_ns = Some(locks.get(&r.pid).map_or(0, |l| l.0));
            }
        }
        // Processes that are gone leave after a while without activity.
        for r in rows.values() {
            let active = r.cpu_pct.is_some_and(|c| c > 0.0)
                || r.tcp.is_some_and(|t| {
                    t.opens_per_s + t.closes_per_s + t.resets_per_s > 0.0
                        || t.established + t.time_wait + t.close_wait > 0
                })
                || !self.last_seen.contains_key(&r.pid);
            if active {
                self.last_seen.insert(r.pid, (now_ns, r.clone()));
            } else if let Some(e) = self.last_seen.get_mut(&r.pid) {
                e.1 = r.clone();
            }
        }
        rows.retain(|pid, r| {
            r.alive
                || self
                    .last_seen
                    .get(pid)
                    .is_some_and(|(t, _)| now_ns.saturating_sub(*t) < GONE_LINGER_NS)
        });
        self.last_seen.retain(|pid, (t, _)| {
            rows.contains_key(pid) || now_ns.saturating_sub(*t) < GONE_LINGER_NS
        });
        let mut diag = diag;
        // Events that reached user space, per second since the last frame.
        if let Some(t0) = self.last_tick_ns.or(self.baseline_ns)
            && now_ns > t0
        {
            diag.events_per_s = self.events_since_tick as f64 / ((now_ns - t0) as f64 / 1e9);
        }
        self.events_since_tick = 0;
        self.last_tick_ns = Some(now_ns);
        diag.self_cpu_pct = self
            .config
            .self_pid
            .and_then(|p| rows.get(&p))
            .and_then(|r| r.cpu_pct);
        let rows: Vec<Row> = rows.into_values().collect();
        self.detect(&snap, &rows, now_ns);

        let s = &snap.states;
        let model = Model {
            ts_ns: now_ns,
            interval_s: snap.interval_s,
            host,
            tcp: TcpTotals {
                opens_per_s: snap.rates.active_opens + snap.rates.passive_opens,
                closes_per_s: snap.rates.closes,
                established: s.established,
                time_wait: s.time_wait,
                close_wait: s.close_wait,
                resets_per_s: snap.rates.resets_sent + snap.rates.resets_received,
                retransmits_per_s: snap.rates.retransmits,
                worst_pressure: snap.pressure.first().cloned(),
            },
            oom_kills: self.oom.total,
            diag,
            rows,
            hints: snap.hints.clone(),
        };
        if self.ui.paused {
            self.pending = Some(model);
        } else {
            self.model = model;
            self.refresh_detail();
            self.follow_selection();
        }
    }

    /// Put the cursor on the selected process, wherever it is now (or keep
    /// it within the rows when that process is not shown).
    fn follow_selection(&mut self) {
        let rows = self.visible_rows();
        let at = self
            .ui
            .selected_pid
            .and_then(|pid| rows.iter().position(|r| r.pid == pid));
        let n = rows.len();
        match at {
            Some(i) => self.ui.cursor = i,
            None => self.ui.cursor = self.ui.cursor.min(n.saturating_sub(1)),
        }
    }

    /// Notable events found by comparing this interval with the last.
    fn detect(&mut self, snap: &TcpSnapshot, rows: &[Row], now_ns: u64) {
        for r in rows {
            let Some(t) = r.tcp else { continue };
            let before = self.leaks_reported.get(&r.pid).copied().unwrap_or(0);
            if t.leaks > before {
                let example = snap
                    .leaks
                    .iter()
                    .find(|l| l.pid == Some(r.pid))
                    .map(|l| format!(", e.g. {} <- {}", l.local, l.remote))
                    .unwrap_or_default();
                self.notable(
                    now_ns,
                    NotableKind::CloseWaitLeak,
                    Some(r.pid),
                    format!(
                        "pid {} ({}) has {} sockets in CLOSE_WAIT for over {:.0} s: it never calls close(){example}",
                        r.pid,
                        r.comm,
                        t.leaks,
                        self.config.tcp.close_wait_threshold_ns as f64 / 1e9
                    ),
                );
            }
            self.leaks_reported.insert(r.pid, t.leaks);
            let burst = t.resets_per_s >= self.config.reset_burst_per_s;
            if burst && self.bursting.insert(r.pid) {
                self.notable(
                    now_ns,
                    NotableKind::ResetBurst,
                    Some(r.pid),
                    format!("pid {} ({}) {:.0} resets/s", r.pid, r.comm, t.resets_per_s),
                );
            } else if !burst {
                self.bursting.remove(&r.pid);
            }
        }
        if snap.interval_s > 0.0 {
            let k = snap
                .kernel_resets_sent
                .saturating_sub(self.kernel_resets_prev) as f64
                / snap.interval_s;
            let burst = k >= self.config.reset_burst_per_s;
            if burst && self.bursting.insert(0) {
                self.notable(
                    now_ns,
                    NotableKind::ResetBurst,
                    None,
                    format!("the kernel sent {k:.0} resets/s for closed ports (NO_SOCKET)"),
                );
            } else if !burst {
                self.bursting.remove(&0);
            }
        }
        self.kernel_resets_prev = snap.kernel_resets_sent;
        for p in snap.pressure.iter().filter(|p| p.warning) {
            let key = format!("{} -> {}", p.destination.local, p.destination.remote);
            if self.ports_warned.insert(key.clone()) {
                self.notable(
                    now_ns,
                    NotableKind::PortPressure,
                    None,
                    format!(
                        "{:.0} % of ephemeral ports {key} in use ({} in TIME_WAIT)",
                        p.ratio * 100.0,
                        p.in_time_wait
                    ),
                );
            }
        }
    }

    fn refresh_detail(&mut self) {
        if let Some(pid) = self.ui.detail {
            self.detail_peers = self.agg.connections_of(pid);
        }
    }

    /// The rows shown, filtered and sorted.
    pub fn visible_rows(&self) -> Vec<&Row> {
        let f = self.ui.filter.to_lowercase();
        let mut rows: Vec<&Row> = self
            .model
            .rows
            .iter()
            .filter(|r| {
                f.is_empty() || r.comm.to_lowercase().contains(&f) || r.pid.to_string() == f
            })
            .collect();
        sort_rows(&mut rows, self.ui.sort, self.ui.reverse);
        rows
    }

    /// The highlighted row.
    pub fn selected(&self) -> Option<&Row> {
        self.visible_rows().get(self.ui.cursor).copied()
    }

    /// The detail process's row, if on screen.
    pub fn detail_row(&self) -> Option<&Row> {
        let pid = self.ui.detail?;
        self.model.rows.iter().find(|r| r.pid == pid)
    }

    /// Events about one process, newest first.
    pub fn events_of(&self, pid: u32) -> impl Iterator<Item = &Notable> {
        self.events.iter().filter(move |e| e.pid == Some(pid))
    }

    fn set_pause(&mut self, paused: bool) {
        self.ui.paused = paused;
        if !paused && let Some(m) = self.pending.take() {
            self.model = m;
            self.refresh_detail();
            self.follow_selection();
        }
    }

    /// Handle a key. Pure: only the UI state changes.
    pub fn on_key(&mut self, k: KeyEvent) -> Action {
        let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && matches!(k.code, KeyCode::Char('c') | KeyCode::Char('d')) {
            return Action::Quit;
        }
        if self.ui.editing_filter {
            match k.code {
                KeyCode::Enter => self.ui.editing_filter = false,
                KeyCode::Esc => {
                    self.ui.editing_filter = false;
                    self.ui.filter.clear();
                }
                KeyCode::Backspace => {
                    self.ui.filter.pop();
                }
                KeyCode::Char(c) if !ctrl && self.ui.filter.len() < 64 => self.ui.filter.push(c),
                _ => {}
            }
            self.follow_selection();
            return Action::None;
        }
        if self.ui.help {
            match k.code {
                KeyCode::Char('q') => return Action::Quit,
                _ => self.ui.help = false,
            }
            return Action::None;
        }
        let n = self.visible_rows().len();
        match k.code {
            KeyCode::Char('q') => return Action::Quit,
            KeyCode::Char('?') | KeyCode::Char('h') | KeyCode::F(1) => self.ui.help = true,
            KeyCode::Char('p') | KeyCode::Char(' ') => self.set_pause(!self.ui.paused),
            KeyCode::Char('/') => {
                self.ui.editing_filter = true;
                self.ui.filter.clear();
                self.ui.cursor = 0;
            }
            KeyCode::Esc | KeyCode::Backspace | KeyCode::Left if self.ui.detail.is_some() => {
                self.ui.detail = None;
            }
            KeyCode::Enter if self.ui.detail.is_some() => self.ui.detail = None,
            KeyCode::Esc => self.ui.filter.clear(),
            KeyCode::Enter | KeyCode::Right => {
                if let Some(pid) = self.selected().map(|r| r.pid) {
                    self.ui.detail = Some(pid);
                    self.detail_peers = self.agg.connections_of(pid);
                }
            }
            KeyCode::Up
            | KeyCode::Down
            | KeyCode::PageUp
            | KeyCode::PageDown
            | KeyCode::Home
            | KeyCode::End => {
                let last = n.saturating_sub(1);
                let c = self.ui.cursor;
                self.ui.cursor = match k.code {
                    KeyCode::Up => c.saturating_sub(1),
                    KeyCode::Down => (c + 1).min(last),
                    KeyCode::PageUp => c.saturating_sub(10),
                    KeyCode::PageDown => (c + 10).min(last),
                    KeyCode::Home => 0,
                    _ => last,
                };
                self.ui.selected_pid = self.selected().map(|r| r.pid);
                return Action::None;
            }
            KeyCode::Char('i') => self.ui.reverse = !self.ui.reverse,
            KeyCode::Char('<') | KeyCode::Char('>') => {
                let i = SortKey::ALL
                    .iter()
                    .position(|&s| s == self.ui.sort)
                    .unwrap_or(0);
                let len = SortKey::ALL.len();
                let j = if k.code == KeyCode::Char('>') {
                    (i + 1) % len
                } else {
                    (i + len - 1) % len
                };
                self.ui.sort = SortKey::ALL[j];
            }
            KeyCode::Char(c) => {
                if let Some(s) = SortKey::ALL.iter().find(|s| s.key() == c) {
                    self.ui.sort = *s;
                }
            }
            _ => {}
        }
        self.follow_selection();
        Action::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{CpuTimes, MemInfo, Stat};

    pub(crate) fn proc_cpu(pid: u32, comm: &str, ticks: u64) -> ProcCpu {
        ProcCpu {
            pid,
            comm: comm.into(),
            ticks,
            start: 1,
            cgroup: Some("/svc".into()),
        }
    }

    fn sample(ts_s: u64, busy: u64, procs: Vec<ProcCpu>) -> HostSample {
        HostSample {
            ts_ns: ts_s * 1_000_000_000,
            loadavg: Some(LoadAvg {
                one: 1.5,
                five: 1.0,
                fifteen: 0.5,
            }),
            stat: Some(Stat {
                cpu: CpuTimes {
                    user: busy,
                    idle: 1000 * ts_s - busy,
                    ..Default::default()
                },
                cpus: 2,
                procs_running: 3,
                procs_blocked: 1,
            }),
            mem: MemInfo {
                total_kb: 4 << 20,
                available_kb: 3 << 20,
                ..Default::default()
            },
            procs,
            hz: 100,
            ..Default::default()
        }
    }

    #[test]
    fn cpu_percent_from_tick_deltas() {
        let mut s = TopState::new(
            TopConfig::default(),
            WallClock::with_offset_ns(0),
            Timebase::Live,
        );
        s.on_host(sample(
            1,
            100,
            vec![proc_cpu(10, "hog", 100), proc_cpu(11, "idle", 5)],
        ));
        s.tick(1_000_000_000);
        s.on_host(sample(
            2,
            700,
            vec![proc_cpu(10, "hog", 200), proc_cpu(11, "idle", 5)],
        ));
        s.tick(2_000_000_000);
        let hog = s.model.rows.iter().find(|r| r.pid == 10).unwrap();
        assert!((hog.cpu_pct.unwrap() - 100.0).abs() < 1e-6, "{hog:?}");
        let h = s.model.host.unwrap();
        assert!((h.cpu_pct.unwrap() - 60.0).abs() < 1e-6, "{h:?}");
        assert_eq!((h.running, h.blocked), (3, 1));
        let vis: Vec<u32> = s.visible_rows().iter().map(|r| r.pid).collect();
        assert_eq!(vis, vec![10, 11]);
    }

    #[test]
    fn the_cursor_follows_the_selected_process() {
        let mut s = TopState::new(
            TopConfig::default(),
            WallClock::with_offset_ns(0),
            Timebase::Live,
        );
        s.on_host(sample(
            1,
            0,
            vec![
                proc_cpu(1, "a", 0),
                proc_cpu(2, "b", 0),
                proc_cpu(3, "c", 0),
            ],
        ));
        s.tick(1_000_000_000);
        s.on_host(sample(
            2,
            0,
            vec![
                proc_cpu(1, "a", 50),
                proc_cpu(2, "b", 20),
                proc_cpu(3, "c", 10),
            ],
        ));
        s.tick(2_000_000_000);
        let down = KeyEvent::new(KeyCode::Down, KeyModifiers::NONE);
        s.on_key(down);
        assert_eq!(s.selected().map(|r| r.pid), Some(2));
        // Now 2 uses the least CPU: the cursor moves with it.
        s.on_host(sample(
            3,
            0,
            vec![
                proc_cpu(1, "a", 100),
                proc_cpu(2, "b", 21),
                proc_cpu(3, "c", 60),
            ],
        ));
        s.tick(3_000_000_000);
        assert_eq!(s.ui.cursor, 2);
        assert_eq!(s.selected().map(|r| r.pid), Some(2));
        // And when sorted by pid.
        s.on_key(KeyEvent::new(KeyCode::Char('n'), KeyModifiers::NONE));
        assert_eq!(s.selected().map(|r| r.pid), Some(2));
    }

    #[test]
    fn keys_sort_filter_pause_and_quit() {
        let mut s = TopState::new(
            TopConfig::default(),
            WallClock::with_offset_ns(0),
            Timebase::Live,
        );
        let key = |c: char| KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE);
        s.on_key(key('n'));
        assert_eq!(s.ui.sort, SortKey::Pid);
        s.on_key(key('>'));
        assert_eq!(s.ui.sort, SortKey::Comm);
        s.on_key(key('/'));
        for c in "hog".chars() {
            s.on_key(key(c));
        }
        assert_eq!(s.ui.filter, "hog");
        assert_eq!(
            s.ui.sort,
            SortKey::Comm,
            "typing in the prompt does not sort"
        );
        s.on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
        assert!(!s.ui.editing_filter);
        s.on_key(key('p'));
        assert!(s.ui.paused);
        s.tick(1);
        assert_eq!(s.model.ts_ns, 0, "paused: the screen stays");
        s.on_key(key(' '));
        assert_eq!(s.model.ts_ns, 1);
        s.on_key(key('?'));
        assert!(s.ui.help);
        s.on_key(key('x'));
        assert!(!s.ui.help, "any key closes the help");
        assert_eq!(s.on_key(key('q')), Action::Quit);
        assert_eq!(
            s.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Action::Quit
        );
    }

    #[test]
    fn events_feed_rows_and_the_event_pane() {
        use diag_common::{EventHeader, EventKind, tcp::state as tcp_state};
        const SEC: u64 = 1_000_000_000;
        let mut s = TopState::new(
            TopConfig {
                tcp: TcpConfig {
                    close_wait_threshold_ns: 2 * SEC,
                    ..TcpConfig::default()
                },
                ..TopConfig::default()
            },
            WallClock::with_offset_ns(0),
            Timebase::Live,
        );
        let a = |p: u16| std::net::SocketAddr::from(([127, 0, 0, 1], p));
        // A process holding three sockets in CLOSE_WAIT, seen in the table.
        let rows = (0..3)
            .map(|i| crate::aggregate::tcp::TableRow {
                local: a(8080),
                remote: a(40000 + i),
                state: tcp_state::CLOSE_WAIT,
                owner: Some((42, "leaker".into())),
                netns: 0,
                holders: vec![],
            })
            .collect();
        s.on_msg(&Msg::Table { ts_ns: SEC, rows }, &mut |_| {});
        s.on_host(sample(1, 0, vec![proc_cpu(42, "leaker", 0)]));
        s.tick(2 * SEC);
        assert!(s.events.is_empty(), "not a leak yet: {:?}", s.events);
        // An OOM kill in a memory cgroup the edge resolved.
        let mut header = EventHeader::zeroed();
        header.kind = EventKind::OomKill as u32;
        header.ts_ns = 3 * SEC;
        header.pid = 77;
        header.tgid = 77;
        let mut victim_comm = [0u8; 16];
        victim_comm[..4].copy_from_slice(b"hogs");
        let oom = OomKillEvent {
            header,
            victim_pid: 77,
            victim_tgid: 77,
            victim_comm,
            victim_uid: 0,
            oom_score_adj: 0,
            constraint: constraint::MEMCG,
            memcg_how: 0,
            total_vm_kb: 0,
            anon_rss_kb: 2048,
            file_rss_kb: 0,
            shmem_rss_kb: 0,
            pgtables_kb: 0,
            victim_memcg_ino: 9,
            trigger_memcg_ino: 9,
            oom_memcg_ino: 9,
            oom_memcg_limit_pages: 8,
            oom_memcg_usage_pages: 8,
        };
        s.memcg_paths.insert(9, "/jobs/batch".into());
        s.on_msg(&Msg::Events(vec![AnyEvent::OomKill(oom)]), &mut |_| {});
        s.on_host(sample(4, 0, vec![proc_cpu(42, "leaker", 0)]));
        s.tick(4 * SEC);
        let leaker = s.model.rows.iter().find(|r| r.pid == 42).unwrap();
        let t = leaker.tcp.unwrap();
        assert_eq!((t.close_wait, t.leaks), (3, 3), "{leaker:?}");
        let victim = s.model.rows.iter().find(|r| r.pid == 77).unwrap();
        assert_eq!(victim.oom_kills, 1);
        assert!(!victim.alive);
        assert_eq!(victim.cgroup.as_deref(), Some("/jobs/batch"));
        assert_eq!(s.model.oom_kills, 1);
        let kinds: Vec<NotableKind> = s.events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            vec![NotableKind::CloseWaitLeak, NotableKind::OomKill],
            "newest first"
        );
        assert!(
            s.events[1]
                .text
                .contains("pid 77 (hogs) killed, rss 2.0MiB: memcg /jobs/batch")
        );
        assert!(
            s.events[0]
                .text
                .contains("pid 42 (leaker) has 3 sockets in CLOSE_WAIT")
        );
        // Reported once, not every interval.
        s.tick(5 * SEC);
        assert_eq!(s.events.len(), 2);
        // Sorting by CLOSE_WAIT puts the leaker first, by OOM kills the victim.
        s.ui.sort = SortKey::CloseWait;
        assert_eq!(s.visible_rows()[0].pid, 42);
        s.ui.sort = SortKey::Oom;
        assert_eq!(s.visible_rows()[0].pid, 77);
    }
}
