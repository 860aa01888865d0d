//! TCP connection analytics per process: churn, socket states, TIME_WAIT
//! and CLOSE_WAIT, ephemeral-port pressure, resets and retransmits.
//!
//! Pure: fed decoded events, socket-table rows (read elsewhere from
//! /proc/net/tcp{,6}) and a clock (boot-time ns). No I/O.
//!
//! Sockets are tracked by their kernel address (`skaddr`) from the first
//! event; sockets that existed before diag are seeded from the socket table
//! by 4-tuple and adopted by the first event that matches. TIME_WAIT never
//! shows as a transition (the first closer's socket goes FIN_WAIT2 ->
//! CLOSE and a timewait socket takes its place), so it is inferred from
//! that, expires after the kernel's 60 s, and is reconciled against the
//! socket table periodically.
//!
//! Processes are keyed by pid and *life* ([`super::process`]): a process
//! that ended is kept, marked exited, until it has been idle for
//! [`FORGET_AFTER_IDLE_SNAPSHOTS`]; sockets it still held stay its own.
//! Recordings made before diag traced exits fall back to a guess
//! ([`TcpConfig::guess_pid_reuse`]): a new name and no sockets.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use diag_common::{
    EventHeader, EventKind,
    proc::ProcExitEvent,
    tcp::{
        AF_INET6, TcpCloseEvent, TcpDropEvent, TcpSockEvent, TcpStateEvent, attribution, closed_by,
        drop_cause, state,
    },
    user::AnyEvent,
};
use serde::Serialize;

use super::{
    close::{CloseStats, Closed, DestRtt},
    connect::{ConnectLatency, DestLatency},
    connfail::{ConnectFailures, FailedConnect},
    drops::{KernelDrops, SocketDropRow, UnownedDropRow},
    hint::{Hint, HintKind},
    histogram::ValueHist,
    listen::{ListenQueues, ListenRow},
    process::{Comm, ExitInfo, Kept, Lives, ProcKey},
};

/// How long the kernel keeps a socket in TIME_WAIT (TCP_TIMEWAIT_LEN).
pub const TIME_WAIT_NS: u64 = 60_000_000_000;
/// A connection closed within this is "short-lived" for churn hints.
pub const SHORT_LIVED_NS: u64 = 50_000_000;
/// Snapshots in a row a process may stay idle (no sockets, no activity)
/// before it is forgotten: 10 minutes at one a second.
pub const FORGET_AFTER_IDLE_SNAPSHOTS: u32 = 600;
/// Reconciliation leaves sockets that changed this recently alone.
pub const RECONCILE_GRACE_NS: u64 = 1_000_000_000;
/// Bound on per-destination bookkeeping; beyond it, counted as overflow.
pub const MAX_DESTINATIONS: usize = 16_384;

/// Tunables of the TCP aggregation.
#[derive(Debug, Clone)]
pub struct TcpConfig {
    /// A socket in CLOSE_WAIT for longer than this is reported as a leak.
    pub close_wait_threshold_ns: u64,
    /// `net.ipv4.ip_local_port_range`, inclusive.
    pub port_range: (u16, u16),
    /// Warn when a destination uses more than this fraction of the range.
    pub pressure_warn: f64,
    /// Hint when a process opens at least this many connections per second
    /// to one destination, most of them short-lived.
    pub churn_hint_per_s: f64,
    /// The source has no process exits (a recording made before diag
    /// traced them): guess pid reuse from a new name on a pid with no
    /// sockets left, until an exit arrives. Live sources and newer
    /// recordings report exits, so nothing is guessed.
    pub guess_pid_reuse: bool,
    /// The kernel's drop reason names (number, name), from its
    /// `skb:kfree_skb` format or a recording's header.
    pub drop_reasons: Vec<(i64, String)>,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            close_wait_threshold_ns: 10_000_000_000,
            port_range: (32768, 60999),
            pressure_warn: 0.70,
            churn_hint_per_s: 10.0,
            guess_pid_reuse: false,
            drop_reasons: Vec::new(),
        }
    }
}

/// A row of the kernel's socket table (/proc/net/tcp{,6}), with the
/// process holding it where known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct TableRow {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: u8,
    /// The (lowest-pid) process holding the socket.
    pub owner: Option<(u32, String)>,
    /// The socket's network namespace inode (0: unknown, as in recordings
    /// made before diag read it).
    #[serde(default)]
    pub netns: u32,
    /// Other processes holding the socket too (a listener shared by
    /// pre-fork workers, a connection inherited by a child).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holders: Vec<u32>,
}

/// Cumulative counters of one process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub active_opens: u64,
    pub passive_opens: u64,
    pub closes: u64,
    pub failed_connects: u64,
    pub resets_sent: u64,
    pub resets_received: u64,
    pub retransmits: u64,
    pub time_waits: u64,
    /// Connections closed straight from ESTABLISHED or CLOSE_WAIT (a reset
    /// sent or received, or an abort): the kernel's EstabResets.
    pub aborts: u64,
    /// Connection attempts its listeners lost because their accept queue
    /// was full: the kernel's ListenOverflows.
    #[serde(default)]
    pub listen_overflows: u64,
    /// Bytes of its closed connections, as the kernel counted them at the
    /// close (`tcp_sock.bytes_acked`: sent and acknowledged;
    /// `.bytes_received`): credited when a connection closes.
    #[serde(default)]
    pub bytes_acked: u64,
    #[serde(default)]
    pub bytes_received: u64,
}

impl Counters {
    fn minus(&self, o: &Counters) -> Counters {
        Counters {
            active_opens: self.active_opens.saturating_sub(o.active_opens),
            passive_opens: self.passive_opens.saturating_sub(o.passive_opens),
            closes: self.closes.saturating_sub(o.closes),
            failed_connects: self.failed_connects.saturating_sub(o.failed_connects),
            resets_sent: self.resets_sent.saturating_sub(o.resets_sent),
            resets_received: self.resets_received.saturating_sub(o.resets_received),
            retransmits: self.retransmits.saturating_sub(o.retransmits),
            time_waits: self.time_waits.saturating_sub(o.time_waits),
            aborts: self.aborts.saturating_sub(o.aborts),
            listen_overflows: self.listen_overflows.saturating_sub(o.listen_overflows),
            bytes_acked: self.bytes_acked.saturating_sub(o.bytes_acked),
            bytes_received: self.bytes_received.saturating_sub(o.bytes_received),
        }
    }
}

/// Per (process, destination) churn within the current interval.
#[derive(Debug, Clone, Copy, Default)]
struct DestChurn {
    opens: u64,
    short_lived: u64,
    closed: u64,
    failed: u64,
}

#[derive(Debug, Clone)]
struct Proc {
    comm: String,
    counters: Counters,
    lifetimes: ValueHist,
    /// SYN sent to ESTABLISHED, for its active opens.
    connects: ValueHist,
    /// Counters at the last snapshot, for rates.
    at_snapshot: Counters,
    /// Per destination (remote endpoint), this interval.
    churn: HashMap<SocketAddr, DestChurn>,
    /// Sockets currently attributed to this process.
    live: u64,
    /// Snapshots in a row with no activity and no sockets.
    idle_snapshots: u32,
    /// The kernel reported its end.
    exited: Option<ExitInfo>,
    /// Accept-queue overflows per listening port, cumulative (bounded by
    /// [`MAX_LISTEN_PORTS`]; beyond, under port 0).
    listen_ports: BTreeMap<u16, u64>,
    /// Failed connects per error name, cumulative (bounded by
    /// [`super::connfail::MAX_ERRORS_PER_PROCESS`]).
    connect_errors: BTreeMap<String, u64>,
    /// Packets the kernel dropped for this process's sockets per drop
    /// reason number, cumulative (bounded by [`MAX_DROP_REASONS`];
    /// beyond, under [`OTHER_REASON`]).
    drop_reasons: BTreeMap<u32, u64>,
}

/// Listening ports per process with overflow counts of their own.
pub const MAX_LISTEN_PORTS: usize = 8;
/// Drop reasons per process with counts of their own.
pub const MAX_DROP_REASONS: usize = 8;
/// The key of a process's drops beyond its first [`MAX_DROP_REASONS`]
/// reasons.
pub const OTHER_REASON: u32 = u32::MAX;

impl Proc {
    fn new(comm: String) -> Self {
        Proc {
            comm,
            counters: Counters::default(),
            lifetimes: ValueHist::default(),
            connects: ValueHist::default(),
            at_snapshot: Counters::default(),
            churn: HashMap::new(),
            live: 0,
            idle_snapshots: 0,
            exited: None,
            listen_ports: BTreeMap::new(),
            connect_errors: BTreeMap::new(),
            drop_reasons: BTreeMap::new(),
        }
    }
}

/// The process a socket belongs to, as known to diag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Owner {
    pub pid: u32,
    pub comm: Comm,
    /// Which life of `pid` (see [`super::process`]).
    pub life: u32,
}

impl Owner {
    fn key(&self) -> ProcKey {
        (self.pid, self.life)
    }
}

#[derive(Debug, Clone)]
struct Sock {
    owner: Option<Owner>,
    /// The owner was set by reconciliation (the kernel's attribution was
    /// stale, e.g. a socket passed to another process): only a fresh
    /// attribution (the holder's own system call, an accept) replaces it.
    owner_fixed: bool,
    /// When an event last changed the owner.
    owner_ts: u64,
    netns: u32,
    state: u8,
    local: SocketAddr,
    remote: SocketAddr,
    opened_ns: Option<u64>,
    since_ns: u64,
    /// True when `since_ns` is only a lower bound (seeded from the table).
    since_is_lower_bound: bool,
    active: bool,
    established: bool,
    /// The process that closed first (its ESTABLISHED -> FIN_WAIT1).
    closer: Option<Owner>,
}

/// A timewait socket: what replaces a closed socket's 4-tuple. Its
/// substate is TIME_WAIT, or FIN_WAIT2 for an orphan whose peer has not
/// closed yet (the kernel's table shows which; events cannot).
#[derive(Debug, Clone)]
struct TimeWait {
    owner: Option<Owner>,
    since_ns: u64,
    substate: u8,
}

/// A socket's network namespace, local and remote endpoint: unique among
/// the kernel's sockets.
type FourTuple = (u32, SocketAddr, SocketAddr);

/// Counts per remote endpoint of things that went wrong.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RemoteErrors {
    pub resets_sent: u64,
    pub resets_received: u64,
    pub retransmits: u64,
    pub failed_connects: u64,
}

/// The TCP aggregation core.
#[derive(Debug, Clone)]
pub struct TcpAggregate {
    pub config: TcpConfig,
    /// Socket tables seen ([`TcpAggregate::on_table`]).
    tables_seen: u64,
    socks: HashMap<u64, Sock>,
    /// Sockets from the table that no event has claimed yet, by 4-tuple.
    seeded: HashMap<FourTuple, Sock>,
    timewait: HashMap<FourTuple, TimeWait>,
    procs: HashMap<ProcKey, Proc>,
    /// The current life of every pid.
    lives: Lives,
    remote_errors: HashMap<SocketAddr, RemoteErrors>,
    /// Connect times per destination.
    connect: ConnectLatency,
    /// Failed connects per process, destination and error.
    connect_failures: ConnectFailures,
    /// Resets sent by the kernel for no socket (closed ports).
    kernel_resets_sent: u64,
    /// Per-destination bookkeeping refused because of the bound.
    overflow: u64,
    /// Port-pressure usage per destination at the last snapshot.
    last_usage: HashMap<Destination, (u64, u64)>,
    last_snapshot_ns: Option<u64>,
    /// Corrections made by reconciliation, cumulative.
    corrections: Corrections,
    /// Sockets whose owner disagreed with the processes holding them at
    /// the last reconciliation, with the holder then: corrected when the
    /// next one agrees (an event on its way may still fix it).
    owner_suspects: HashMap<FourTuple, u32>,
    /// Connections lost at full listen queues, per listener.
    listen: ListenQueues,
    /// Finished connections: RTT per destination, the heaviest, longest
    /// and slowest.
    closes: CloseStats,
    /// The last socket that went to CLOSE and its owner then: its close
    /// summary follows at once and goes to the same process.
    last_closed: Option<(u64, Owner)>,
    drops: KernelDrops,
}

/// What reconciliation against the kernel's table changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Corrections {
    /// TIME_WAIT sockets the kernel has that diag had not inferred.
    pub time_wait_added: u64,
    /// TIME_WAIT sockets diag had that the kernel no longer has.
    pub time_wait_removed: u64,
    /// Tracked sockets the kernel no longer has (a missed close).
    pub sockets_removed: u64,
    /// Tracked sockets whose state differed from the kernel's.
    pub states_fixed: u64,
    /// Tracked sockets whose owner was not among the processes holding
    /// them (/proc/PID/fd), given to the holder.
    #[serde(default)]
    pub owners_fixed: u64,
    pub runs: u64,
}

impl Corrections {
    /// Corrections of socket states and TIME_WAIT entries (owners apart).
    pub fn state_total(&self) -> u64 {
        self.time_wait_added + self.time_wait_removed + self.sockets_removed + self.states_fixed
    }
}

/// Local address and remote endpoint: one pool of ephemeral ports (a
/// local port can be reused toward other destinations).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Destination {
    pub local: IpAddr,
    pub remote: SocketAddr,
}

/// Socket counts by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StateCounts {
    pub established: u64,
    pub syn_sent: u64,
    pub syn_recv: u64,
    pub fin_wait1: u64,
    pub fin_wait2: u64,
    pub close_wait: u64,
    pub last_ack: u64,
    pub closing: u64,
    pub time_wait: u64,
    pub listen: u64,
}

impl StateCounts {
    fn add(&mut self, s: u8) {
        match s {
            state::ESTABLISHED => self.established += 1,
            state::SYN_SENT => self.syn_sent += 1,
            state::SYN_RECV => self.syn_recv += 1,
            state::FIN_WAIT1 => self.fin_wait1 += 1,
            state::FIN_WAIT2 => self.fin_wait2 += 1,
            state::CLOSE_WAIT => self.close_wait += 1,
            state::LAST_ACK => self.last_ack += 1,
            state::CLOSING => self.closing += 1,
            state::TIME_WAIT => self.time_wait += 1,
            state::LISTEN => self.listen += 1,
            _ => {}
        }
    }
}

/// Per-second rates over the last interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Rates {
    pub active_opens: f64,
    pub passive_opens: f64,
    pub closes: f64,
    pub failed_connects: f64,
    pub resets_sent: f64,
    pub resets_received: f64,
    pub retransmits: f64,
}

impl Rates {
    fn from(d: &Counters, secs: f64) -> Rates {
        let r = |v: u64| if secs > 0.0 { v as f64 / secs } else { 0.0 };
        Rates {
            active_opens: r(d.active_opens),
            passive_opens: r(d.passive_opens),
            closes: r(d.closes),
            failed_connects: r(d.failed_connects),
            resets_sent: r(d.resets_sent),
            resets_received: r(d.resets_received),
            retransmits: r(d.retransmits),
        }
    }
}

/// One process in a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcRow {
    pub pid: u32,
    pub comm: String,
    /// The process has ended; its pid may belong to another process by
    /// now, with a row of its own.
    pub exited: bool,
    /// When it ended (boot-time ns), if it has.
    #[serde(skip)]
    pub exited_ns: Option<u64>,
    /// Which life of `pid` (0: the first diag saw): rows of one pid are
    /// different processes.
    #[serde(skip)]
    pub life: u32,
    pub totals: Counters,
    pub rates: Rates,
    pub states: StateCounts,
    pub lifetime_p50_ns: u64,
    pub lifetime_p99_ns: u64,
    pub lifetime_max_ns: u64,
    /// Active opens that reached ESTABLISHED, and how long they took.
    pub connects: u64,
    pub connect_p50_ns: u64,
    pub connect_p99_ns: u64,
    pub connect_max_ns: u64,
    pub leaks: u64,
    /// Filled in by the edge (procfs), not by the core.
    pub cgroup: Option<String>,
    /// The container id in `cgroup` (12 hex digits), if any; edge-filled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The process's network namespace inode; edge-filled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<u64>,
    /// `totals.listen_overflows` per listening port (0: the ports beyond
    /// [`MAX_LISTEN_PORTS`]), cumulative.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub listen_ports: Vec<(u16, u64)>,
    /// `totals.failed_connects` per error name (`ECONNREFUSED`,
    /// `ETIMEDOUT`, ...; see [`super::connfail`]), cumulative.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub connect_errors: Vec<(String, u64)>,
    /// Packets the kernel dropped for this process's sockets, per reason
    /// name (`other`: the reasons beyond [`MAX_DROP_REASONS`]),
    /// cumulative.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kernel_drops: Vec<(String, u64)>,
}

/// A socket stuck in CLOSE_WAIT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Leak {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub age_ns: u64,
    /// The socket predates diag: its age is at least `age_ns`.
    pub age_is_lower_bound: bool,
}

/// Ephemeral-port use toward one destination.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pressure {
    pub destination: Destination,
    pub ports_used: u64,
    pub in_time_wait: u64,
    pub range_size: u64,
    pub ratio: f64,
    /// Net ports taken per second since the last snapshot.
    pub growth_per_s: f64,
    /// At the current growth, seconds until the range is exhausted.
    pub exhausted_in_s: Option<f64>,
    pub warning: bool,
}

/// Everything the views show, at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TcpSnapshot {
    pub ts_ns: u64,
    pub interval_s: f64,
    pub processes: Vec<ProcRow>,
    pub totals: Counters,
    pub rates: Rates,
    /// Every tracked socket by state, owners known or not.
    pub states: StateCounts,
    pub leaks: Vec<Leak>,
    pub pressure: Vec<Pressure>,
    /// The hints' sentences ([`TcpSnapshot::hint_facts`] in words).
    pub hints: Vec<String>,
    /// The hints with what they are about, for merging across intervals.
    #[serde(skip)]
    pub hint_facts: Vec<Hint>,
    pub remote_errors: Vec<(SocketAddr, RemoteErrors)>,
    /// The destinations with the slowest connects (SYN sent to
    /// ESTABLISHED), since diag started.
    pub connect_latency: Vec<DestLatency>,
    /// Every connect since diag started (log2 buckets), and their sum.
    #[serde(skip)]
    pub connect_all: (super::histogram::Log2Hist, u64),
    pub kernel_resets_sent: u64,
    pub corrections: Corrections,
    pub overflow: u64,
    /// Listeners that lost connections because a queue was full.
    pub listen: Vec<ListenRow>,
    /// Finished connections since diag started: the destinations with
    /// the highest median smoothed RTT at close, and the heaviest (bytes),
    /// longest and slowest (RTT) connections.
    pub close_rtt: Vec<DestRtt>,
    pub heaviest: Vec<Closed>,
    pub longest: Vec<Closed>,
    pub slowest_rtt: Vec<Closed>,
    /// Connections closed since diag started (with a summary).
    pub closed: u64,
    /// Failed connects per process, destination and error, the most in
    /// this interval first.
    pub connect_failures: Vec<FailedConnect>,
    /// Packets the kernel dropped for TCP sockets, per owner, remote end
    /// and reason.
    pub socket_drops: Vec<SocketDropRow>,
    /// TCP packets dropped with no socket, per reason, host-wide.
    pub unowned_drops: Vec<UnownedDropRow>,
}

fn ip(family: u16, a: &[u8; 16]) -> IpAddr {
    if family == AF_INET6 {
        let v6 = Ipv6Addr::from(*a);
        // IPv4-mapped peers of dual-stack sockets show as IPv4, as in ss.
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    } else {
        IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
    }
}

impl TcpAggregate {
    pub fn new(config: TcpConfig) -> Self {
        let mut drops = KernelDrops::default();
        drops.set_names(&config.drop_reasons);
        TcpAggregate {
            config,
            socks: HashMap::new(),
            seeded: HashMap::new(),
            tables_seen: 0,
            timewait: HashMap::new(),
            procs: HashMap::new(),
            lives: Lives::new(),
            remote_errors: HashMap::new(),
            connect: ConnectLatency::default(),
            connect_failures: ConnectFailures::default(),
            kernel_resets_sent: 0,
            overflow: 0,
            last_usage: HashMap::new(),
            last_snapshot_ns: None,
            corrections: Corrections::default(),
            owner_suspects: HashMap::new(),
            listen: ListenQueues::default(),
            closes: CloseStats::default(),
            last_closed: None,
            drops,
        }
    }

    /// The running kernel's drop reason names (number, name), from its
    /// `skb:kfree_skb` format or a recording's header.
    pub fn set_drop_reason_names(&mut self, names: &[(i64, String)]) {
        self.drops.set_names(names);
    }

    /// The current life of `pid`.
    fn life_of(&self, pid: u32) -> u32 {
        self.lives.life_of(pid)
    }

    /// The process entry of `owner` (created if new; renamed by exec).
    fn proc_mut(&mut self, owner: Owner) -> &mut Proc {
        let comm = owner.comm.as_str();
        let comm: &str = &comm;
        let p = self
            .procs
            .entry(owner.key())
            .or_insert_with(|| Proc::new(comm.to_string()));
        if p.comm != comm {
            p.comm = comm.to_string();
        }
        p
    }

    /// The process an event's header names, for a socket diag does not
    /// know yet. `opening`: the event starts something (a connect, a
    /// listen, an accepted connection), which only a running process does.
    fn owner_for(&mut self, h: &EventHeader, opening: bool) -> Owner {
        let pid = h.tgid;
        let comm = Comm::from_kernel(&h.comm);
        let name = comm.as_str();
        let procs = &self.procs;
        let r = self
            .lives
            .resolve(pid, opening, self.config.guess_pid_reuse, |key| {
                procs.get(&key).map(|p| Kept {
                    same_name: p.comm == *name,
                    holds: p.live > 0,
                    exited: p.exited.is_some(),
                })
            });
        if let Some(ended) = r.guessed_end
            && let Some(p) = self.procs.get_mut(&(pid, ended))
        {
            p.exited = Some(ExitInfo {
                ts_ns: h.ts_ns,
                start_ns: None,
            });
        }
        Owner {
            pid,
            comm,
            life: r.life,
        }
    }

    /// A known socket's owner for an event about it: the kernel had to
    /// guess (the task on the CPU), or named the same pid (the socket's
    /// process, whose name may have changed), or another process. `fixed`:
    /// reconciliation set the owner, which only a fresh attribution (the
    /// holder's own system call) overrides.
    fn owner_of_known(&mut self, known: Owner, h: &EventHeader, how: u8, fixed: bool) -> Owner {
        if how == attribution::CURRENT
            || (fixed && how != attribution::SYSCALL && known.pid != h.tgid)
        {
            known
        } else if known.pid == h.tgid {
            // The socket keeps its process's life: an exited process's
            // sockets stay its own, a later process with the pid never
            // takes them over.
            Owner {
                comm: Comm::from_kernel(&h.comm),
                ..known
            }
        } else {
            self.owner_for(h, false)
        }
    }

    /// A process ended: the next one with its pid starts a new life.
    fn on_exit(&mut self, e: &ProcExitEvent) {
        let pid = e.header.tgid;
        let p = self.procs.get_mut(&(pid, self.lives.life_of(pid)));
        let kept = p.is_some();
        if let Some(p) = p {
            p.exited = Some(ExitInfo {
                ts_ns: e.header.ts_ns,
                start_ns: e.start_boottime_ns(),
            });
        }
        self.lives.on_exit(pid, kept);
    }

    fn set_owner(&mut self, old: &Option<Owner>, new: &Option<Owner>) {
        if old == new {
            return;
        }
        if let Some(o) = old
            && let Some(p) = self.procs.get_mut(&o.key())
        {
            p.live = p.live.saturating_sub(1);
        }
        if let Some(n) = new {
            self.proc_mut(*n).live += 1;
        }
    }

    fn churn_mut(&mut self, key: ProcKey, remote: SocketAddr) -> Option<&mut DestChurn> {
        let p = self.procs.get_mut(&key)?;
        let n = p.churn.len();
        if n >= MAX_DESTINATIONS && !p.churn.contains_key(&remote) {
            self.overflow += 1;
            return None;
        }
        Some(p.churn.entry(remote).or_default())
    }

    fn remote_errors_mut(&mut self, remote: SocketAddr) -> Option<&mut RemoteErrors> {
        if self.remote_errors.len() >= MAX_DESTINATIONS && !self.remote_errors.contains_key(&remote)
        {
            self.overflow += 1;
            return None;
        }
        Some(self.remote_errors.entry(remote).or_default())
    }

    /// Feed one event.
    pub fn on_event(&mut self, ev: &AnyEvent) {
        match ev {
            AnyEvent::TcpState(e) => self.on_state(e),
            AnyEvent::TcpSock(e) if e.header.kind == EventKind::TcpAccepted as u32 => {
                self.on_accepted(e)
            }
            AnyEvent::TcpSock(e) => self.on_sock_event(e),
            AnyEvent::TcpDrop(e) => self.on_drop(e),
            AnyEvent::TcpClose(e) => self.on_close(e),
            AnyEvent::ProcExit(e) => self.on_exit(e),
            AnyEvent::OomKill(_)
            | AnyEvent::Stall(_)
            | AnyEvent::BlockSlow(_)
            | AnyEvent::MemStall(_)
            | AnyEvent::LockWait(_) => {}
        }
    }

    fn on_state(&mut self, e: &TcpStateEvent) {
        let ts = e.header.ts_ns;
        let local = SocketAddr::new(ip(e.family, &e.saddr), e.sport);
        let remote = SocketAddr::new(ip(e.family, &e.daddr), e.dport);
        let (old, new) = (e.old_state, e.new_state);
        if old == state::LISTEN && new == state::SYN_RECV {
            self.listen.on_passive_open(e, local);
        }

        // Find the socket: by address, or a seeded one by 4-tuple.
        let mut sock = match self.socks.remove(&e.skaddr) {
            Some(s)
                if !(old == state::CLOSE || (old == state::LISTEN && new == state::SYN_RECV)) =>
            {
                s
            }
            stale => {
                // A new socket at a reused address, or one never seen.
                if let Some(s) = stale {
                    self.set_owner(&s.owner, &None);
                }
                match self.seeded.remove(&(e.netns, local, remote)) {
                    Some(s) => s,
                    None => Sock {
                        owner: None,
                        owner_fixed: false,
                        owner_ts: ts,
                        netns: e.netns,
                        state: old,
                        local,
                        remote,
                        opened_ns: None,
                        since_ns: ts,
                        since_is_lower_bound: true,
                        active: false,
                        established: false,
                        closer: None,
                    },
                }
            }
        };

        // Who owns it: the kernel's attribution, unless it had to guess
        // (the task on the CPU) and the socket table told us better.
        let opening = matches!(
            (old, new),
            (state::CLOSE, _) | (state::LISTEN, state::SYN_RECV)
        );
        let owner = match sock.owner {
            Some(known) => self.owner_of_known(known, &e.header, e.attribution, sock.owner_fixed),
            None => self.owner_for(&e.header, opening),
        };
        let prev_owner = sock.owner;
        self.set_owner(&prev_owner, &Some(owner));
        if prev_owner != Some(owner) {
            sock.owner_fixed = false;
            sock.owner_ts = ts;
        }
        sock.owner = Some(owner);
        // Keep the table's knowledge of the ports current.
        if e.sport != 0 {
            sock.local = local;
        }
        if e.dport != 0 {
            sock.remote = remote;
        }
        // A connection opening on a 4-tuple in TIME-WAIT took it over
        // (tcp_tw_reuse, or a SYN the timewait socket accepted): the
        // kernel's timewait socket is gone.
        if matches!(
            (old, new),
            (state::SYN_SENT, _) | (state::LISTEN, state::SYN_RECV)
        ) && sock.local.port() != 0
            && sock.remote.port() != 0
        {
            self.timewait.remove(&(sock.netns, sock.local, sock.remote));
        }

        match (old, new) {
            (state::CLOSE, state::SYN_SENT) => {
                sock.active = true;
                sock.opened_ns = Some(ts);
                self.proc_mut(owner).counters.active_opens += 1;
                if let Some(c) = self.churn_mut(owner.key(), remote) {
                    c.opens += 1;
                }
            }
            (state::LISTEN, state::SYN_RECV) => {
                sock.opened_ns = Some(ts);
                self.proc_mut(owner).counters.passive_opens += 1;
            }
            (state::SYN_SENT, state::ESTABLISHED) => {
                sock.established = true;
                // The kernel's time in SYN_SENT, else ours.
                let took = match e.in_old_state_ns {
                    0 => sock.opened_ns.map(|o| ts.saturating_sub(o)),
                    ns => Some(ns),
                };
                if let Some(ns) = took {
                    self.proc_mut(owner).connects.record(ns);
                    self.connect.record(remote, ns);
                }
            }
            (_, state::ESTABLISHED) => sock.established = true,
            (state::ESTABLISHED, state::FIN_WAIT1) => sock.closer = Some(owner),
            _ => {}
        }
        sock.state = new;
        sock.since_ns = ts;
        // We saw it enter this state: its age in it is exact from now on.
        sock.since_is_lower_bound = false;

        if new != state::CLOSE {
            self.socks.insert(e.skaddr, sock);
            return;
        }

        // The socket is gone.
        self.last_closed = Some((e.skaddr, owner));
        self.set_owner(&sock.owner, &None);
        if old == state::LISTEN {
            return;
        }
        let lifetime = sock.opened_ns.map(|o| ts.saturating_sub(o));
        let failed = old == state::SYN_SENT && !sock.established;
        {
            let p = self.proc_mut(owner);
            p.counters.closes += 1;
            if failed {
                p.counters.failed_connects += 1;
            }
            if matches!(old, state::ESTABLISHED | state::CLOSE_WAIT) {
                p.counters.aborts += 1;
            }
            if let Some(l) = lifetime {
                p.lifetimes.record(l);
            }
        }
        if failed && let Some(r) = self.remote_errors_mut(sock.remote) {
            r.failed_connects += 1;
        }
        if failed {
            // The error the kernel stored before closing the socket.
            let error = super::connfail::failure_name(e.err_known != 0, e.err);
            let p = self.proc_mut(owner);
            super::connfail::count_error(&mut p.connect_errors, &error);
            let comm = p.comm.clone();
            self.connect_failures
                .record(owner.key(), &comm, sock.remote, &error);
        }
        if sock.active
            && let Some(c) = self.churn_mut(owner.key(), sock.remote)
        {
            c.closed += 1;
            if failed {
                c.failed += 1;
            } else if lifetime.is_some_and(|l| l < SHORT_LIVED_NS) {
                c.short_lived += 1;
            }
        }
        // The first closer's socket becomes a timewait socket.
        if matches!(old, state::FIN_WAIT2 | state::CLOSING) {
            let tw_owner = sock.closer.unwrap_or(owner);
            self.proc_mut(tw_owner).counters.time_waits += 1;
            self.timewait.insert(
                (sock.netns, sock.local, sock.remote),
                TimeWait {
                    owner: Some(tw_owner),
                    since_ns: ts,
                    substate: state::TIME_WAIT,
                },
            );
        }
    }

    fn on_sock_event(&mut self, e: &TcpSockEvent) {
        let remote = SocketAddr::new(ip(e.family, &e.daddr), e.dport);
        let kind = EventKind::try_from(e.header.kind);
        let owner = if e.attribution == attribution::KERNEL {
            None
        } else {
            // Prefer what we know of the socket when the kernel guessed.
            let known = self
                .socks
                .get(&e.skaddr)
                .and_then(|s| s.owner.map(|o| (o, s.owner_fixed)));
            Some(match known {
                Some((k, fixed)) => self.owner_of_known(k, &e.header, e.attribution, fixed),
                None => self.owner_for(&e.header, false),
            })
        };
        let bump = |c: &mut Counters| match kind {
            Ok(EventKind::TcpResetSent) => c.resets_sent += 1,
            Ok(EventKind::TcpResetReceived) => c.resets_received += 1,
            _ => c.retransmits += 1,
        };
        match owner {
            Some(o) => bump(&mut self.proc_mut(o).counters),
            None => self.kernel_resets_sent += 1,
        }
        if let Some(r) = self.remote_errors_mut(remote) {
            match kind {
                Ok(EventKind::TcpResetSent) => r.resets_sent += 1,
                Ok(EventKind::TcpResetReceived) => r.resets_received += 1,
                _ => r.retransmits += 1,
            }
        }
    }

    /// A finished connection's summary: its bytes credited to its owner
    /// (the one its transition to CLOSE, just before, went to), its RTT
    /// to its destination.
    fn on_close(&mut self, e: &TcpCloseEvent) {
        let owner = match self.last_closed.take() {
            Some((sk, o)) if sk == e.skaddr => o,
            _ => self.owner_for(&e.header, false),
        };
        let c = Closed {
            pid: owner.pid,
            comm: owner.comm.as_str().to_string(),
            local: SocketAddr::new(ip(e.family, &e.saddr), e.sport),
            remote: SocketAddr::new(ip(e.family, &e.daddr), e.dport),
            ts_ns: e.header.ts_ns,
            duration_ns: (e.duration_ns != 0).then_some(e.duration_ns),
            bytes_acked: e.bytes_acked,
            bytes_received: e.bytes_received,
            total_retrans: e.total_retrans,
            srtt_us: (e.srtt_us != 0).then_some(e.srtt_us),
            closed_by: closed_by::name(e.closed_by),
        };
        self.closes.record(&c);
        let p = self.proc_mut(owner);
        p.counters.bytes_acked = p.counters.bytes_acked.saturating_add(e.bytes_acked);
        p.counters.bytes_received = p.counters.bytes_received.saturating_add(e.bytes_received);
    }

    /// A connection lost at a listener: counted for the listener and, when
    /// it overflowed the accept queue, for the listener's process.
    fn on_drop(&mut self, e: &TcpDropEvent) {
        let local = SocketAddr::new(ip(e.family, &e.addr), e.port);
        if !drop_cause::is_listen(e.cause) {
            let remote = SocketAddr::new(ip(e.family, &e.raddr), e.rport);
            self.drops.on_drop(e, local, remote);
            if e.cause == drop_cause::SOCKET && e.header.tgid != 0 {
                let owner = self.owner_for(&e.header, false);
                let p = self.proc_mut(owner);
                let reason = if p.drop_reasons.len() < MAX_DROP_REASONS
                    || p.drop_reasons.contains_key(&e.reason)
                {
                    e.reason
                } else {
                    OTHER_REASON
                };
                *p.drop_reasons.entry(reason).or_default() += e.packets();
            }
            return;
        }
        self.listen.on_drop(e, local);
        if e.attribution == attribution::LISTENER && drop_cause::is_overflow(e.cause) {
            let owner = self.owner_for(&e.header, false);
            let p = self.proc_mut(owner);
            p.counters.listen_overflows += 1;
            let port = if p.listen_ports.len() < MAX_LISTEN_PORTS
                || p.listen_ports.contains_key(&e.port)
            {
                e.port
            } else {
                0
            };
            *p.listen_ports.entry(port).or_default() += 1;
        }
    }

    /// A socket table from the source: the first seeds the gauges, later
    /// ones reconcile them. Returns the corrections (None: it seeded).
    pub fn on_table(&mut self, rows: &[TableRow], now_ns: u64) -> Option<Corrections> {
        if self.tables_seen == 0 {
            self.tables_seen = 1;
            self.seed(rows, now_ns);
            None
        } else {
            self.tables_seen += 1;
            Some(self.reconcile(rows, now_ns))
        }
    }

    /// A process accepted a connection that the kernel had attributed to
    /// another (the listener's owner): the socket, and its passive open,
    /// are the accepter's from now on.
    fn on_accepted(&mut self, e: &TcpSockEvent) {
        let ts = e.header.ts_ns;
        let local = SocketAddr::new(ip(e.family, &e.saddr), e.sport);
        let remote = SocketAddr::new(ip(e.family, &e.daddr), e.dport);
        let owner = self.owner_for(&e.header, true);
        let mut sock = match self.socks.remove(&e.skaddr) {
            Some(s) => s,
            None => match self.seeded.remove(&(e.netns, local, remote)) {
                Some(s) => s,
                // A connection diag never saw open (older than diag, not
                // in the table read at the start).
                None => Sock {
                    owner: None,
                    owner_fixed: false,
                    owner_ts: ts,
                    netns: e.netns,
                    state: e.state,
                    local,
                    remote,
                    opened_ns: None,
                    since_ns: ts,
                    since_is_lower_bound: true,
                    active: false,
                    established: matches!(e.state, state::ESTABLISHED | state::CLOSE_WAIT),
                    closer: None,
                },
            },
        };
        let prev = sock.owner;
        if prev.map(|p| p.key()) != Some(owner.key())
            && let Some(opened) = sock.opened_ns
            && !sock.active
        {
            // The passive open moves to the accepter. When an earlier
            // snapshot already counted it, it moves in the baseline too, so
            // no rate goes negative or counts it twice.
            let counted = self.last_snapshot_ns.is_some_and(|t| opened <= t);
            if let Some(p) = prev
                && let Some(pp) = self.procs.get_mut(&p.key())
            {
                pp.counters.passive_opens = pp.counters.passive_opens.saturating_sub(1);
                if counted {
                    pp.at_snapshot.passive_opens = pp.at_snapshot.passive_opens.saturating_sub(1);
                }
            }
            let np = self.proc_mut(owner);
            np.counters.passive_opens += 1;
            if counted {
                np.at_snapshot.passive_opens += 1;
            }
        }
        self.set_owner(&prev, &Some(owner));
        sock.owner = Some(owner);
        sock.owner_fixed = false;
        sock.owner_ts = ts;
        if e.state != 0 && e.state != sock.state && sock.since_is_lower_bound {
            sock.state = e.state;
        }
        self.socks.insert(e.skaddr, sock);
    }

    /// Seed with the sockets that exist now (call once at start, after the
    /// probes are attached). Listening and connected sockets become
    /// `seeded` until an event claims them; TIME_WAIT rows become timewait
    /// entries of unknown owner.
    pub fn seed(&mut self, rows: &[TableRow], now_ns: u64) {
        for r in rows {
            let owner = r.owner.as_ref().map(|(pid, comm)| Owner {
                pid: *pid,
                comm: Comm::new(comm),
                life: self.life_of(*pid),
            });
            if r.state == state::TIME_WAIT {
                self.timewait
                    .entry((r.netns, r.local, r.remote))
                    .or_insert(TimeWait {
                        owner: None,
                        since_ns: now_ns,
                        substate: state::TIME_WAIT,
                    });
                continue;
            }
            if self
                .socks
                .values()
                .any(|s| s.netns == r.netns && s.local == r.local && s.remote == r.remote)
            {
                continue;
            }
            self.set_owner(&None, &owner);
            self.seeded.insert(
                (r.netns, r.local, r.remote),
                Sock {
                    owner,
                    owner_fixed: false,
                    owner_ts: now_ns,
                    netns: r.netns,
                    state: r.state,
                    local: r.local,
                    remote: r.remote,
                    opened_ns: None,
                    since_ns: now_ns,
                    since_is_lower_bound: true,
                    active: false,
                    established: matches!(
                        r.state,
                        state::ESTABLISHED
                            | state::FIN_WAIT1
                            | state::FIN_WAIT2
                            | state::CLOSE_WAIT
                    ),
                    closer: None,
                },
            );
        }
    }

    /// Make the gauges agree with the kernel's table: TIME_WAIT entries
    /// follow the table (keeping the owners diag inferred), sockets the
    /// kernel no longer has are dropped, states are fixed. Returns what
    /// this run changed.
    pub fn reconcile(&mut self, rows: &[TableRow], now_ns: u64) -> Corrections {
        // Events for the last moments may still be on their way from the
        // ring buffer: leave what changed within the grace period alone.
        let settled = |since: u64| now_ns.saturating_sub(since) >= RECONCILE_GRACE_NS;
        let mut c = Corrections {
            runs: 1,
            ..Default::default()
        };
        // Timewait sockets: TIME_WAIT rows, and orphans (no inode, so no
        // owner) in FIN_WAIT2 that no tracked socket accounts for.
        // Only the network namespaces the table shows are checked (a
        // namespace whose processes are gone cannot be read).
        let covered: HashSet<u32> = rows.iter().map(|r| r.netns).collect();
        // The tracked sockets, with the time of their last event.
        let tracked: HashMap<FourTuple, u64> = self
            .socks
            .values()
            .map(|s| ((s.netns, s.local, s.remote), s.since_ns))
            .collect();
        // A TIME_WAIT row for a socket whose last event is recent is its
        // close, read from the table before the events that bring it
        // (counting both would count the port twice).
        let arriving = |k: &FourTuple| tracked.get(k).is_some_and(|&since| !settled(since));
        let key = |r: &TableRow| (r.netns, r.local, r.remote);
        let kernel_tw: HashMap<FourTuple, u8> = rows
            .iter()
            .filter(|r| {
                r.state == state::TIME_WAIT
                    || (r.state == state::FIN_WAIT2
                        && r.owner.is_none()
                        && !tracked.contains_key(&key(r))
                        && !self.seeded.contains_key(&key(r)))
            })
            .map(|r| (key(r), r.state))
            .collect();
        let kernel_socks: HashMap<FourTuple, &TableRow> = rows
            .iter()
            .filter(|r| !kernel_tw.contains_key(&key(r)))
            .map(|r| (key(r), r))
            .collect();
        let before = self.timewait.len();
        self.timewait.retain(|k, t| {
            kernel_tw.contains_key(k) || !settled(t.since_ns) || !covered.contains(&k.0)
        });
        c.time_wait_removed = (before - self.timewait.len()) as u64;
        for (k, &sub) in &kernel_tw {
            match self.timewait.get_mut(k) {
                Some(t) => {
                    if t.substate != sub {
                        t.substate = sub;
                        c.states_fixed += 1;
                    }
                }
                None if arriving(k) => {}
                None => {
                    self.timewait.insert(
                        *k,
                        TimeWait {
                            owner: None,
                            since_ns: now_ns,
                            substate: sub,
                        },
                    );
                    c.time_wait_added += 1;
                }
            }
        }
        // Connected and listening sockets. Sockets in transient states (no
        // local port yet) are left alone.
        let mut gone = Vec::new();
        let mut owners: Vec<(FourTuple, u32, String)> = Vec::new();
        for (addr, s) in self.socks.iter_mut() {
            if s.local.port() == 0 || !settled(s.since_ns) || !covered.contains(&s.netns) {
                continue;
            }
            let k = (s.netns, s.local, s.remote);
            match kernel_socks.get(&k) {
                None => gone.push(*addr),
                Some(r) => {
                    if r.state != s.state {
                        s.state = r.state;
                        c.states_fixed += 1;
                    }
                    if settled(s.owner_ts)
                        && let Some(h) = wrong_owner(s, r)
                    {
                        owners.push((k, h.0, h.1));
                    }
                }
            }
        }
        for addr in gone {
            if let Some(s) = self.socks.remove(&addr) {
                self.set_owner(&s.owner, &None);
                c.sockets_removed += 1;
            }
        }
        let seeded_gone: Vec<FourTuple> = self
            .seeded
            .keys()
            .filter(|k| covered.contains(&k.0) && !kernel_socks.contains_key(k))
            .copied()
            .collect();
        for k in seeded_gone {
            if let Some(s) = self.seeded.remove(&k) {
                self.set_owner(&s.owner, &None);
                c.sockets_removed += 1;
            }
        }
        for (k, s) in self.seeded.iter_mut() {
            if let Some(r) = kernel_socks.get(k) {
                if r.state != s.state {
                    s.state = r.state;
                    c.states_fixed += 1;
                }
                if let Some(h) = wrong_owner(s, r) {
                    owners.push((*k, h.0, h.1));
                }
            }
        }
        // Owners: a socket none of whose holders is its owner goes to its
        // (lowest-pid) holder, once two reconciliations in a row agree.
        let mut suspects = HashMap::new();
        let by_tuple: HashMap<FourTuple, u64> = self
            .socks
            .iter()
            .map(|(a, s)| ((s.netns, s.local, s.remote), *a))
            .collect();
        for (k, pid, comm) in owners {
            if self.owner_suspects.get(&k) != Some(&pid) {
                suspects.insert(k, pid);
                continue;
            }
            let new = Owner {
                pid,
                comm: Comm::new(&comm),
                life: self.life_of(pid),
            };
            let old = match by_tuple.get(&k).and_then(|a| self.socks.get_mut(a)) {
                Some(s) => s.owner.replace(new),
                None => match self.seeded.get_mut(&k) {
                    Some(s) => s.owner.replace(new),
                    None => continue,
                },
            };
            if let Some(s) = by_tuple.get(&k).and_then(|a| self.socks.get_mut(a)) {
                s.owner_fixed = true;
            } else if let Some(s) = self.seeded.get_mut(&k) {
                s.owner_fixed = true;
            }
            self.set_owner(&old, &Some(new));
            c.owners_fixed += 1;
        }
        self.owner_suspects = suspects;
        let cu = &mut self.corrections;
        cu.time_wait_added += c.time_wait_added;
        cu.time_wait_removed += c.time_wait_removed;
        cu.sockets_removed += c.sockets_removed;
        cu.states_fixed += c.states_fixed;
        cu.owners_fixed += c.owners_fixed;
        cu.runs += 1;
        c
    }

    fn expire_time_wait(&mut self, now_ns: u64) {
        self.timewait
            .retain(|_, t| now_ns.saturating_sub(t.since_ns) < TIME_WAIT_NS);
    }

    fn all_socks(&self) -> impl Iterator<Item = &Sock> {
        self.socks.values().chain(self.seeded.values())
    }

    /// Take a snapshot and close the interval: [`TcpAggregate::peek`],
    /// then [`TcpAggregate::advance`].
    pub fn snapshot(&mut self, now_ns: u64) -> TcpSnapshot {
        let (snap, closing) = self.look(now_ns);
        self.close_interval(now_ns, closing);
        snap
    }

    /// Look without moving anything: gauges at `now_ns`, rates since the
    /// last [`TcpAggregate::advance`] (a scrape that only reads).
    pub fn peek(&self, now_ns: u64) -> TcpSnapshot {
        self.look(now_ns).0
    }

    /// Close the interval at `now_ns`: expire TIME_WAIT, move the rate
    /// baselines there, reset the per-interval churn, and count idle
    /// processes toward being forgotten.
    pub fn advance(&mut self, now_ns: u64) {
        let (_, closing) = self.look(now_ns);
        self.close_interval(now_ns, closing);
    }

    /// Forget what was counted and keep what is: the sockets (with their
    /// states, owners and ages), the timewait entries and the processes'
    /// identities stay; every counter, histogram, listener, close summary
    /// and drop count starts again, and the first interval at `now_ns`.
    /// A window of a recording (`report --from`) counts from here.
    pub fn restart_counts(&mut self, now_ns: u64) {
        for p in self.procs.values_mut() {
            let mut fresh = Proc::new(std::mem::take(&mut p.comm));
            fresh.live = p.live;
            fresh.exited = p.exited.take();
            *p = fresh;
        }
        self.remote_errors.clear();
        self.connect = ConnectLatency::default();
        self.connect_failures = ConnectFailures::default();
        self.kernel_resets_sent = 0;
        self.overflow = 0;
        self.corrections = Corrections::default();
        self.listen = ListenQueues::default();
        self.closes = CloseStats::default();
        self.drops.restart();
        self.advance(now_ns);
    }

    /// The timewait sockets not yet expired at `now_ns`.
    fn timewait_at(&self, now_ns: u64) -> impl Iterator<Item = (&FourTuple, &TimeWait)> {
        self.timewait
            .iter()
            .filter(move |(_, t)| now_ns.saturating_sub(t.since_ns) < TIME_WAIT_NS)
    }

    /// The snapshot at `now_ns`, and what closing the interval there needs.
    fn look(&self, now_ns: u64) -> (TcpSnapshot, Closing) {
        let secs = self
            .last_snapshot_ns
            .map(|t| now_ns.saturating_sub(t) as f64 / 1e9)
            .unwrap_or(0.0);

        // Gauges per owner.
        let mut per_pid: HashMap<ProcKey, StateCounts> = HashMap::new();
        let mut leaks_per_pid: HashMap<ProcKey, u64> = HashMap::new();
        let mut states = StateCounts::default();
        let mut leaks = Vec::new();
        let listening_ports: HashSet<u16> = self
            .all_socks()
            .filter(|s| s.state == state::LISTEN)
            .map(|s| s.local.port())
            .collect();
        for s in self.all_socks() {
            states.add(s.state);
            if let Some(o) = &s.owner {
                per_pid.entry(o.key()).or_default().add(s.state);
            }
            if s.state == state::CLOSE_WAIT {
                let age = now_ns.saturating_sub(s.since_ns);
                if age >= self.config.close_wait_threshold_ns {
                    if let Some(o) = &s.owner {
                        *leaks_per_pid.entry(o.key()).or_default() += 1;
                    }
                    leaks.push(Leak {
                        pid: s.owner.as_ref().map(|o| o.pid),
                        comm: s.owner.as_ref().map(|o| o.comm.to_string()),
                        local: s.local,
                        remote: s.remote,
                        age_ns: age,
                        age_is_lower_bound: s.since_is_lower_bound,
                    });
                }
            }
        }
        for (_, t) in self.timewait_at(now_ns) {
            states.add(t.substate);
            if let Some(o) = &t.owner {
                per_pid.entry(o.key()).or_default().add(t.substate);
            }
        }
        leaks.sort_by_key(|l| std::cmp::Reverse(l.age_ns));

        // Ephemeral ports per destination.
        let (lo, hi) = self.config.port_range;
        let range_size = u64::from(hi.saturating_sub(lo)) + 1;
        let ephemeral = |local: &SocketAddr, remote: &SocketAddr| {
            (lo..=hi).contains(&local.port())
                && remote.port() != 0
                && !listening_ports.contains(&local.port())
        };
        let mut usage: HashMap<Destination, (u64, u64)> = HashMap::new();
        for s in self.all_socks() {
            if s.state != state::LISTEN && ephemeral(&s.local, &s.remote) {
                usage
                    .entry(Destination {
                        local: s.local.ip(),
                        remote: s.remote,
                    })
                    .or_default()
                    .0 += 1;
            }
        }
        for ((_, local, remote), t) in self.timewait_at(now_ns) {
            if ephemeral(local, remote) {
                let u = usage
                    .entry(Destination {
                        local: local.ip(),
                        remote: *remote,
                    })
                    .or_default();
                u.0 += 1;
                if t.substate == state::TIME_WAIT {
                    u.1 += 1;
                }
            }
        }
        let mut pressure: Vec<Pressure> = usage
            .iter()
            .map(|(d, &(used, tw))| {
                let prev = self.last_usage.get(d).map(|p| p.0).unwrap_or(0);
                let growth = if secs > 0.0 {
                    (used as f64 - prev as f64) / secs
                } else {
                    0.0
                };
                let ratio = used as f64 / range_size as f64;
                let free = range_size.saturating_sub(used) as f64;
                Pressure {
                    destination: *d,
                    ports_used: used,
                    in_time_wait: tw,
                    range_size,
                    ratio,
                    growth_per_s: growth,
                    exhausted_in_s: (growth > 0.0).then(|| free / growth),
                    warning: ratio >= self.config.pressure_warn,
                }
            })
            .collect();
        pressure.sort_by(|a, b| {
            b.ports_used
                .cmp(&a.ports_used)
                .then(a.destination.cmp(&b.destination))
        });

        // Rates, rows and hints.
        let mut rows = Vec::new();
        let mut hints = Vec::new();
        let mut totals = Counters::default();
        let mut delta_total = Counters::default();
        let mut idle_procs = HashSet::new();
        // By pid, then life: an exited process before the one that took
        // its pid.
        let mut keys: Vec<ProcKey> = self.procs.keys().copied().collect();
        keys.sort_unstable();
        for key in keys {
            let pid = key.0;
            let p = &self.procs[&key];
            let d = p.counters.minus(&p.at_snapshot);
            for (k, v) in [
                (&mut totals.active_opens, p.counters.active_opens),
                (&mut totals.passive_opens, p.counters.passive_opens),
                (&mut totals.closes, p.counters.closes),
                (&mut totals.failed_connects, p.counters.failed_connects),
                (&mut totals.resets_sent, p.counters.resets_sent),
                (&mut totals.resets_received, p.counters.resets_received),
                (&mut totals.retransmits, p.counters.retransmits),
                (&mut totals.time_waits, p.counters.time_waits),
                (&mut totals.aborts, p.counters.aborts),
                (&mut totals.bytes_acked, p.counters.bytes_acked),
                (&mut totals.bytes_received, p.counters.bytes_received),
            ] {
                *k += v;
            }
            for (k, v) in [
                (&mut delta_total.active_opens, d.active_opens),
                (&mut delta_total.passive_opens, d.passive_opens),
                (&mut delta_total.closes, d.closes),
                (&mut delta_total.failed_connects, d.failed_connects),
                (&mut delta_total.resets_sent, d.resets_sent),
                (&mut delta_total.resets_received, d.resets_received),
                (&mut delta_total.retransmits, d.retransmits),
            ] {
                *k += v;
            }
            if secs > 0.0 {
                let mut churn: Vec<(&SocketAddr, &DestChurn)> = p.churn.iter().collect();
                churn.sort_by(|a, b| b.1.opens.cmp(&a.1.opens).then(a.0.cmp(b.0)));
                for (dest, c) in churn.into_iter().take(3) {
                    let per_s = c.opens as f64 / secs;
                    if per_s < self.config.churn_hint_per_s || c.closed == 0 {
                        continue;
                    }
                    let short = c.short_lived as f64 / c.closed as f64;
                    let failed = c.failed as f64 / c.closed as f64;
                    if failed >= 0.5 {
                        hints.push(Hint::new(
                            HintKind::FailingConnects,
                            Some(pid),
                            dest.to_string(),
                            per_s,
                            format!(
                                "pid {pid} ({}) fails {:.0} % of {per_s:.0} connects/s to {dest}: is the service down or refusing?",
                                p.comm,
                                failed * 100.0
                            ),
                        ));
                    } else if short >= 0.5 {
                        hints.push(Hint::new(
                            HintKind::Churn,
                            Some(pid),
                            dest.to_string(),
                            per_s,
                            format!(
                                "pid {pid} ({}) opened {per_s:.0} conns/s to {dest}, {:.0} % closed within {} ms: consider keepalive or a connection pool",
                                p.comm,
                                short * 100.0,
                                SHORT_LIVED_NS / 1_000_000
                            ),
                        ));
                    }
                }
            }
            let st = per_pid.get(&key).copied().unwrap_or_default();
            let idle = d == Counters::default() && st == StateCounts::default() && p.live == 0;
            if idle {
                idle_procs.insert(key);
            }
            if idle && p.counters == Counters::default() {
                continue;
            }
            rows.push(ProcRow {
                pid,
                comm: p.comm.clone(),
                exited: p.exited.is_some(),
                exited_ns: p.exited.as_ref().map(|x| x.ts_ns),
                life: key.1,
                totals: p.counters,
                rates: Rates::from(&d, secs),
                states: st,
                lifetime_p50_ns: p.lifetimes.quantile(0.5),
                lifetime_p99_ns: p.lifetimes.quantile(0.99),
                lifetime_max_ns: p.lifetimes.max,
                connects: p.connects.count,
                connect_p50_ns: p.connects.quantile(0.5),
                connect_p99_ns: p.connects.quantile(0.99),
                connect_max_ns: p.connects.max,
                leaks: leaks_per_pid.get(&key).copied().unwrap_or(0),
                cgroup: None,
                container: None,
                netns: None,
                listen_ports: p.listen_ports.iter().map(|(k, v)| (*k, *v)).collect(),
                connect_errors: p
                    .connect_errors
                    .iter()
                    .map(|(k, v)| (k.clone(), *v))
                    .collect(),
                kernel_drops: p
                    .drop_reasons
                    .iter()
                    .map(|(r, n)| {
                        let name = if *r == OTHER_REASON {
                            "other".to_string()
                        } else {
                            self.drops.name(*r)
                        };
                        (name, *n)
                    })
                    .collect(),
            });
        }
        let mut leak_pids: BTreeMap<u32, (String, u64)> = BTreeMap::new();
        for lk in &leaks {
            if let (Some(pid), Some(comm)) = (lk.pid, &lk.comm) {
                leak_pids.entry(pid).or_insert((comm.clone(), 0)).1 += 1;
            }
        }
        for (pid, (comm, n)) in leak_pids {
            hints.push(Hint::new(
                HintKind::CloseWaitLeak,
                Some(pid),
                "",
                n as f64,
                format!(
                    "pid {pid} ({comm}) has {n} sockets in CLOSE_WAIT for over {:.0} s: it received FIN and never called close()",
                    self.config.close_wait_threshold_ns as f64 / 1e9
                ),
            ));
        }
        for pr in pressure.iter().filter(|p| p.warning) {
            hints.push(Hint::new(
                HintKind::PortPressure,
                None,
                format!("{} -> {}", pr.destination.local, pr.destination.remote),
                pr.ratio * 100.0,
                format!(
                    "{:.0} % of ephemeral ports from {} to {} are in use ({} in TIME_WAIT): connect() will fail with EADDRNOTAVAIL when they run out",
                    pr.ratio * 100.0,
                    pr.destination.local,
                    pr.destination.remote,
                    pr.in_time_wait
                ),
            ));
        }
        let listen = self.listen.rows();
        hints.extend(ListenQueues::hints(&listen));
        let socket_drops = self.drops.socket_rows();
        let unowned_drops = self.drops.unowned_rows();
        hints.extend(KernelDrops::hints(&socket_drops, &unowned_drops));
        let mut remote_errors: Vec<(SocketAddr, RemoteErrors)> =
            self.remote_errors.iter().map(|(k, v)| (*k, *v)).collect();
        remote_errors.sort_by(|a, b| {
            let t = |r: &RemoteErrors| {
                r.resets_sent + r.resets_received + r.retransmits + r.failed_connects
            };
            t(&b.1).cmp(&t(&a.1)).then(a.0.cmp(&b.0))
        });
        remote_errors.truncate(20);
        let connect_latency = self.connect.slowest(20);
        hints.extend(super::connect::hints(&connect_latency));
        let connect_failures = self.connect_failures.rows(20);
        hints.extend(super::connfail::hints(&connect_failures));
        let snap = TcpSnapshot {
            ts_ns: now_ns,
            interval_s: secs,
            processes: rows,
            totals,
            rates: Rates::from(&delta_total, secs),
            states,
            leaks,
            pressure,
            hints: hints.iter().map(|h| h.text.clone()).collect(),
            hint_facts: hints,
            remote_errors,
            connect_latency,
            connect_all: (self.connect.all, self.connect.all_sum_ns),
            kernel_resets_sent: self.kernel_resets_sent,
            corrections: self.corrections,
            overflow: self.overflow
                + self.listen.overflow
                + self.closes.overflow
                + self.connect_failures.overflow
                + self.drops.overflow,
            listen,
            close_rtt: self.closes.by_destination(20),
            heaviest: self.closes.heaviest().to_vec(),
            longest: self.closes.longest().to_vec(),
            slowest_rtt: self.closes.slowest().to_vec(),
            closed: self.closes.closed,
            connect_failures,
            socket_drops,
            unowned_drops,
        };
        let closing = Closing {
            usage,
            idle: idle_procs,
        };
        (snap, closing)
    }

    fn close_interval(&mut self, now_ns: u64, closing: Closing) {
        self.expire_time_wait(now_ns);
        self.listen.close_interval();
        self.connect_failures.close_interval();
        self.drops.close_interval();
        for (key, p) in &mut self.procs {
            p.at_snapshot = p.counters;
            // Freed, not cleared: thousands of idle processes keep no capacity.
            p.churn = HashMap::new();
            p.idle_snapshots = if closing.idle.contains(key) {
                p.idle_snapshots.saturating_add(1)
            } else {
                0
            };
        }
        // A process with no sockets and nothing new for a long while is
        // forgotten, so memory does not grow with every pid ever seen.
        self.procs
            .retain(|_, p| p.idle_snapshots < FORGET_AFTER_IDLE_SNAPSHOTS);
        let procs = &self.procs;
        self.connect_failures.retain(|k| procs.contains_key(k));
        if !self.lives.is_empty() {
            // Pids with nothing left start from life 0 again.
            let known: HashSet<u32> = self.procs.keys().map(|k| k.0).collect();
            self.lives.retain(|pid| known.contains(&pid));
        }
        self.last_usage = closing.usage;
        self.last_snapshot_ns = Some(now_ns);
    }
}

/// What closing an interval needs of the look at its end.
struct Closing {
    /// Port usage per destination: the next interval's growth is from it.
    usage: HashMap<Destination, (u64, u64)>,
    /// Processes with no sockets and nothing new in the interval.
    idle: HashSet<ProcKey>,
}

/// The holder a socket should have when its owner is none of the
/// processes holding it (`row`, from /proc/PID/fd); None when it is one of
/// them, or nobody holds it (closed, orphaned).
fn wrong_owner(s: &Sock, row: &TableRow) -> Option<(u32, String)> {
    let (first, comm) = row.owner.as_ref()?;
    match &s.owner {
        Some(o) if o.pid == *first || row.holders.contains(&o.pid) => None,
        _ => Some((*first, comm.clone())),
    }
}

/// One process's sockets toward one peer: outbound connections by remote
/// endpoint, inbound ones by remote address and local (listening) port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerConns {
    pub remote_ip: IpAddr,
    /// Outbound: the remote port. Inbound: None (clients use many ports).
    pub remote_port: Option<u16>,
    /// Inbound: the local port they came to.
    pub local_port: Option<u16>,
    pub states: StateCounts,
    pub total: u64,
}

impl TcpAggregate {
    /// The sockets process `pid` holds now (TIME_WAIT: those it closed
    /// first), grouped by peer, most first. Listening sockets are left out.
    /// Of several processes that had the pid, the latest.
    pub fn connections_of(&self, pid: u32) -> Vec<PeerConns> {
        let life = self
            .procs
            .keys()
            .filter(|k| k.0 == pid)
            .map(|k| k.1)
            .max()
            .unwrap_or_else(|| self.life_of(pid));
        let key = (pid, life);
        let listening: HashSet<u16> = self
            .all_socks()
            .filter(|s| s.state == state::LISTEN)
            .map(|s| s.local.port())
            .collect();
        let mut groups: BTreeMap<(IpAddr, Option<u16>, Option<u16>), StateCounts> = BTreeMap::new();
        let mut add = |local: &SocketAddr, remote: &SocketAddr, st: u8| {
            let key = if listening.contains(&local.port()) {
                (remote.ip(), None, Some(local.port()))
            } else {
                (remote.ip(), Some(remote.port()), None)
            };
            groups.entry(key).or_default().add(st);
        };
        for s in self.all_socks() {
            if s.state != state::LISTEN && s.owner.as_ref().is_some_and(|o| o.key() == key) {
                add(&s.local, &s.remote, s.state);
            }
        }
        for ((_, local, remote), t) in &self.timewait {
            if t.owner.as_ref().is_some_and(|o| o.key() == key) {
                add(local, remote, t.substate);
            }
        }
        let mut out: Vec<PeerConns> = groups
            .into_iter()
            .map(|((remote_ip, remote_port, local_port), states)| {
                let c = &states;
                let total = c.established
                    + c.syn_sent
                    + c.syn_recv
                    + c.fin_wait1
                    + c.fin_wait2
                    + c.close_wait
                    + c.last_ack
                    + c.closing
                    + c.time_wait;
                PeerConns {
                    remote_ip,
                    remote_port,
                    local_port,
                    states,
                    total,
                }
            })
            .collect();
        out.sort_by_key(|p| std::cmp::Reverse(p.total));
        out
    }
}

impl TcpConfig {
    /// The settings the TCP flags give, with this host's (or the
    /// recording's) ephemeral port range.
    pub fn from_args(args: &crate::cli::TcpArgs, port_range: Option<(u16, u16)>) -> TcpConfig {
        let d = TcpConfig::default();
        TcpConfig {
            close_wait_threshold_ns: u64::try_from(args.close_wait_threshold.as_nanos())
                .unwrap_or(u64::MAX),
            port_range: port_range.unwrap_or(d.port_range),
            pressure_warn: args.pressure_warn / 100.0,
            ..d
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diag_common::{EventHeader, tcp::AF_INET};

    const SEC: u64 = 1_000_000_000;

    struct Gen {
        ts: u64,
    }

    fn header(kind: EventKind, pid: u32, comm: &str, ts: u64) -> EventHeader {
        let mut h = EventHeader::zeroed();
        h.kind = kind as u32;
        h.pid = pid;
        h.tgid = pid;
        h.ts_ns = ts;
        h.comm[..comm.len()].copy_from_slice(comm.as_bytes());
        h
    }

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut x = [0u8; 16];
        x[..4].copy_from_slice(&a);
        x
    }

    impl Gen {
        #[allow(clippy::too_many_arguments)]
        fn st(
            &mut self,
            pid: u32,
            comm: &str,
            sk: u64,
            sport: u16,
            dport: u16,
            old: u8,
            new: u8,
            how: u8,
        ) -> AnyEvent {
            self.ts += 1_000_000; // 1 ms apart
            AnyEvent::TcpState(TcpStateEvent {
                header: header(EventKind::TcpState, pid, comm, self.ts),
                skaddr: sk,
                in_old_state_ns: 0,
                saddr: v4([127, 0, 0, 1]),
                daddr: v4([127, 0, 0, 1]),
                sport,
                dport,
                family: AF_INET,
                old_state: old,
                new_state: new,
                attribution: how,
                err_known: 0,
                _pad: [0; 2],
                current_tgid: pid,
                netns: 0,
                listen_queue: diag_common::tcp::NO_FIELD,
                listen_backlog: diag_common::tcp::NO_FIELD,
                err: 0,
            })
        }

        /// Client `pid`'s socket `sk` connects from port `cp` to port 80:
        /// CLOSE -> SYN_SENT (no port yet) -> ESTABLISHED.
        fn connect(&mut self, agg: &mut TcpAggregate, pid: u32, sk: u64, cp: u16) {
            use state::*;
            let opened = self.st(
                pid,
                "client",
                sk,
                0,
                80,
                CLOSE,
                SYN_SENT,
                attribution::SYSCALL,
            );
            agg.on_event(&opened);
            let up = self.st(
                pid,
                "client",
                sk,
                cp,
                80,
                SYN_SENT,
                ESTABLISHED,
                attribution::SOCKET,
            );
            agg.on_event(&up);
        }

        /// A whole loopback connection: client `c` (port cp) to server `s`
        /// (port 80); the client closes first.
        fn connection(&mut self, agg: &mut TcpAggregate, c: u32, s: u32, cp: u16, n: u64) {
            use state::*;
            let (csk, ssk) = (0x1000 + n * 2, 0x1001 + n * 2);
            let evs = [
                self.st(
                    c,
                    "client",
                    csk,
                    0,
                    80,
                    CLOSE,
                    SYN_SENT,
                    attribution::SYSCALL,
                ),
                self.st(
                    c,
                    "client",
                    csk,
                    cp,
                    80,
                    SYN_SENT,
                    ESTABLISHED,
                    attribution::SOCKET,
                ),
                self.st(
                    s,
                    "server",
                    ssk,
                    80,
                    cp,
                    LISTEN,
                    SYN_RECV,
                    attribution::LISTENER,
                ),
                self.st(
                    s,
                    "server",
                    ssk,
                    80,
                    cp,
                    SYN_RECV,
                    ESTABLISHED,
                    attribution::SOCKET,
                ),
                self.st(
                    c,
                    "client",
                    csk,
                    cp,
                    80,
                    ESTABLISHED,
                    FIN_WAIT1,
                    attribution::SYSCALL,
                ),
                self.st(
                    s,
                    "server",
                    ssk,
                    80,
                    cp,
                    ESTABLISHED,
                    CLOSE_WAIT,
                    attribution::SOCKET,
                ),
                self.st(
                    c,
                    "client",
                    csk,
                    cp,
                    80,
                    FIN_WAIT1,
                    FIN_WAIT2,
                    attribution::SOCKET,
                ),
                self.st(
                    s,
                    "server",
                    ssk,
                    80,
                    cp,
                    CLOSE_WAIT,
                    LAST_ACK,
                    attribution::SYSCALL,
                ),
                self.st(
                    c,
                    "client",
                    csk,
                    cp,
                    80,
                    FIN_WAIT2,
                    CLOSE,
                    attribution::SOCKET,
                ),
                self.st(
                    s,
                    "server",
                    ssk,
                    80,
                    cp,
                    LAST_ACK,
                    CLOSE,
                    attribution::SOCKET,
                ),
            ];
            for e in &evs {
                agg.on_event(e);
            }
        }
    }

    /// Some hint of `s` contains every one of `needles`.
    fn assert_hint(s: &TcpSnapshot, needles: &[&str]) {
        assert!(
            s.hints
                .iter()
                .any(|h| needles.iter().all(|n| h.contains(n))),
            "{needles:?} not in {:?}",
            s.hints
        );
    }

    fn row(s: &TcpSnapshot, pid: u32) -> &ProcRow {
        s.processes
            .iter()
            .find(|r| r.pid == pid)
            .unwrap_or_else(|| panic!("no row for {pid}: {s:#?}"))
    }

    /// The last row of `pid`: its latest life.
    fn current(s: &TcpSnapshot, pid: u32) -> &ProcRow {
        s.processes
            .iter()
            .rfind(|r| r.pid == pid)
            .unwrap_or_else(|| panic!("no row for {pid}: {s:#?}"))
    }

    fn exit(pid: u32, comm: &str, ts: u64) -> AnyEvent {
        use diag_common::proc::{ProcExitEvent, exit_flags};
        let mut c = [0u8; 16];
        c[..comm.len()].copy_from_slice(comm.as_bytes());
        AnyEvent::ProcExit(ProcExitEvent {
            header: header(EventKind::ProcExit, pid, comm, ts),
            start_ns: 5,
            exit_code: 0,
            flags: exit_flags::GROUP_DEAD | exit_flags::START_BOOTTIME,
            comm: c,
        })
    }

    #[test]
    fn churn_counts_opens_closes_and_time_wait() {
        let mut agg = TcpAggregate::new(TcpConfig::default());
        let mut g = Gen { ts: SEC };
        agg.snapshot(SEC);
        for n in 0..20 {
            g.connection(&mut agg, 100, 200, 40000 + n as u16, n);
        }
        let s = agg.snapshot(2 * SEC);
        let c = row(&s, 100);
        assert_eq!(c.totals.active_opens, 20);
        assert_eq!(c.totals.passive_opens, 0);
        assert_eq!(c.totals.closes, 20);
        assert_eq!(c.totals.time_waits, 20);
        assert_eq!(
            c.states.time_wait, 20,
            "the client closed first: its TIME_WAITs"
        );
        assert_eq!(c.states.established, 0);
        assert!((c.rates.active_opens - 20.0).abs() < 1e-9);
        // Each connection lived 8 ms (9 events 1 ms apart from SYN_SENT... close).
        assert!(
            c.lifetime_p50_ns >= 4_000_000 && c.lifetime_max_ns <= 16_000_000,
            "{c:?}"
        );
        let srv = row(&s, 200);
        assert_eq!(srv.totals.passive_opens, 20);
        assert_eq!(srv.totals.closes, 20);
        assert_eq!(srv.states.time_wait, 0);
        assert_eq!(s.totals.active_opens, 20);
        assert_hint(&s, &["pid 100 (client)", "keepalive"]);
        // TIME_WAIT expires after 60 s.
        let later = agg.snapshot(2 * SEC + TIME_WAIT_NS);
        assert_eq!(later.states.time_wait, 0);
        assert_eq!(row(&later, 100).rates.active_opens, 0.0);
        assert!(later.hints.is_empty());
    }

    #[test]
    fn peeking_moves_nothing() {
        let mut agg = TcpAggregate::new(TcpConfig::default());
        let mut g = Gen { ts: SEC };
        agg.advance(SEC);
        for n in 0..20 {
            g.connection(&mut agg, 100, 200, 40000 + n as u16, n);
        }
        let mut untouched = agg.clone();
        // Peeks (scrapes) between the ticks, TIME_WAIT expiry included.
        let p = agg.peek(2 * SEC);
        assert_eq!(p, agg.peek(2 * SEC));
        assert!((row(&p, 100).rates.active_opens - 20.0).abs() < 1e-9);
        assert_hint(&p, &["pid 100 (client)", "keepalive"]);
        assert_eq!(agg.peek(2 * SEC + TIME_WAIT_NS).states.time_wait, 0);
        // The tick sees what it would have without them.
        let s = agg.snapshot(2 * SEC);
        assert_eq!(s, p);
        assert_eq!(s, untouched.snapshot(2 * SEC));
        assert_eq!(
            agg.peek(2 * SEC + TIME_WAIT_NS),
            agg.snapshot(2 * SEC + TIME_WAIT_NS)
        );
    }

    #[test]
    fn connections_of_groups_by_peer() {
        let mut agg = TcpAggregate::new(TcpConfig::default());
        let mut g = Gen { ts: SEC };
        for n in 0..3 {
            g.connection(&mut agg, 100, 200, 40000 + n as u16, n);
        }
        let c = agg.connections_of(100);
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(c[0].remote_port, Some(80));
        assert_eq!(c[0].states.time_wait, 3);
        assert_eq!(c[0].total, 3);
        assert!(agg.connections_of(200).is_empty(), "the server holds none");
        assert!(agg.connections_of(999).is_empty());
    }

    #[test]
    fn close_wait_leak_is_reported_after_threshold() {
        use state::*;
        let mut agg = TcpAggregate::new(TcpConfig {
            close_wait_threshold_ns: 5 * SEC,
            ..Default::default()
        });
        let mut g = Gen { ts: SEC };
        for (i, sk) in [0x10u64, 0x20, 0x30].iter().enumerate() {
            let cp = 50000 + i as u16;
            for e in [
                g.st(
                    300,
                    "server",
                    *sk,
                    80,
                    cp,
                    LISTEN,
                    SYN_RECV,
                    attribution::LISTENER,
                ),
                g.st(
                    300,
                    "server",
                    *sk,
                    80,
                    cp,
                    SYN_RECV,
                    ESTABLISHED,
                    attribution::SOCKET,
                ),
                // The peer closes; softirq on the peer's CPU, but the
                // socket's owner is remembered.
                g.st(
                    300,
                    "server",
                    *sk,
                    80,
                    cp,
                    ESTABLISHED,
                    CLOSE_WAIT,
                    attribution::SOCKET,
                ),
            ] {
                agg.on_event(&e);
            }
        }
        let early = agg.snapshot(2 * SEC);
        assert_eq!(row(&early, 300).states.close_wait, 3);
        assert!(early.leaks.is_empty());
        let late = agg.snapshot(10 * SEC);
        assert_eq!(late.leaks.len(), 3);
        assert_eq!(row(&late, 300).leaks, 3);
        assert!(
            late.leaks
                .iter()
                .all(|l| l.pid == Some(300) && l.age_ns > 5 * SEC && !l.age_is_lower_bound)
        );
        assert_hint(&late, &["3 sockets in CLOSE_WAIT"]);
    }

    /// A close summary goes to the process its transition to CLOSE went
    /// to; its bytes are credited to that process, its RTT to its
    /// destination.
    #[test]
    fn close_summaries_credit_bytes_and_rtt() {
        use state::*;
        let mut agg = TcpAggregate::new(TcpConfig::default());
        let mut g = Gen { ts: SEC };
        for (i, rtt) in [(0u64, 40u32), (1, 60), (2, 50)] {
            let sk = 0x70 + i;
            let sport = 41000 + i as u16;
            agg.on_event(&g.st(
                100,
                "client",
                sk,
                0,
                5432,
                CLOSE,
                SYN_SENT,
                attribution::SYSCALL,
            ));
            agg.on_event(&g.st(
                100,
                "client",
                sk,
                sport,
                5432,
                SYN_SENT,
                ESTABLISHED,
                attribution::SOCKET,
            ));
            let close = g.st(
                100,
                "client",
                sk,
                sport,
                5432,
                ESTABLISHED,
                CLOSE,
                attribution::SOCKET,
            );
            let ts = close.header().ts_ns;
            agg.on_event(&close);
            // The summary's header may name another task (the kernel's
            // guess); the aggregate keeps the transition's owner.
            let e = super::super::close::close_event(
                999,
                "softirq",
                sk,
                sport,
                5432,
                ts,
                2_000_000,
                (1000 * (i + 1), 10),
                rtt,
                closed_by::RESET,
            );
            agg.on_event(&AnyEvent::TcpClose(e));
        }
        let s = agg.snapshot(2 * SEC);
        let c = row(&s, 100);
        assert_eq!((c.totals.bytes_acked, c.totals.bytes_received), (6000, 30));
        assert_eq!((s.totals.bytes_acked, s.totals.bytes_received), (6000, 30));
        assert!(s.processes.iter().all(|p| p.pid != 999));
        assert_eq!(s.closed, 3);
        let d = &s.close_rtt[0];
        assert_eq!(
            (d.remote.port(), d.closed, d.rtt_p50_us),
            (5432, 3, Some(50))
        );
        assert_eq!(s.heaviest[0].bytes_acked, 3000);
        assert_eq!(s.heaviest[0].pid, 100);
        assert_eq!(s.slowest_rtt[0].srtt_us, Some(60));
        assert_eq!(s.longest[0].duration_ns, Some(2_000_000));
    }

    /// SYN sent to ESTABLISHED: the kernel's time in SYN_SENT when it
    /// gives one, else the events' timestamps; per process and per
    /// destination, with a hint for a connect that lost its first SYN.
    #[test]
    fn connect_latency_per_process_and_destination() {
        use state::*;
        let mut agg = TcpAggregate::new(TcpConfig::default());
        let mut g = Gen { ts: SEC };
        for (sk, dport, kernel_ns) in [(0x60, 80u16, 0u64), (0x61, 5432, 1_020_000_000)] {
            agg.on_event(&g.st(
                100,
                "client",
                sk,
                0,
                dport,
                CLOSE,
                SYN_SENT,
                attribution::SYSCALL,
            ));
            let mut up = g.st(
                100,
                "client",
                sk,
                40000,
                dport,
                SYN_SENT,
                ESTABLISHED,
                attribution::SOCKET,
            );
            if let AnyEvent::TcpState(t) = &mut up {
                t.in_old_state_ns = kernel_ns;
            }
            agg.on_event(&up);
        }
        let s = agg.snapshot(g.ts + SEC);
        let c = s.processes.iter().find(|p| p.pid == 100).unwrap();
        assert_eq!(c.connects, 2);
        assert_eq!(c.connect_max_ns, 1_020_000_000);
        let slow = &s.connect_latency[0];
        assert_eq!((slow.remote.port(), slow.connects, slow.slow), (5432, 1, 1));
        // The other took the 1 ms between its two events.
        let fast = &s.connect_latency[1];
        assert_eq!((fast.remote.port(), fast.max_ns), (80, 1_000_000));
        assert!(
            s.hints
                .iter()
                .any(|h| h.contains("127.0.0.1:5432") && h.contains("SYNs were lost")),
            "{:?}",
            s.hints
        );
    }

    #[test]
    fn failed_connects_and_resets() {
        use state::*;
        let mut agg = TcpAggregate::new(TcpConfig::default());
        let mut g = Gen { ts: SEC };
        agg.on_event(&g.st(
            100,
            "client",
            0x50,
            0,
            9,
            CLOSE,
            SYN_SENT,
            attribution::SYSCALL,
        ));
        let mut rst = TcpSockEvent {
            header: header(EventKind::TcpResetSent, 0, "", g.ts),
            skaddr: 0,
            saddr: v4([127, 0, 0, 1]),
            daddr: v4([127, 0, 0, 1]),
            sport: 9,
            dport: 41000,
            family: AF_INET,
            state: 0,
            attribution: attribution::KERNEL,
            reason: 1,
            current_tgid: 100,
            netns: 0,
            _pad: 0,
        };
        agg.on_event(&AnyEvent::TcpSock(rst));
        rst.header = header(EventKind::TcpResetReceived, 100, "client", g.ts);
        rst.skaddr = 0x50;
        rst.attribution = attribution::SOCKET;
        rst.sport = 41000;
        rst.dport = 9;
        agg.on_event(&AnyEvent::TcpSock(rst));
        // The kernel stored ECONNREFUSED before closing the socket.
        let with_err = |ev: AnyEvent, known: u8, err: i32| match ev {
            AnyEvent::TcpState(mut t) => {
                t.err_known = known;
                t.err = err;
                AnyEvent::TcpState(t)
            }
            other => other,
        };
        agg.on_event(&with_err(
            g.st(
                100,
                "client",
                0x50,
                41000,
                9,
                SYN_SENT,
                CLOSE,
                attribution::SOCKET,
            ),
            1,
            111,
        ));
        // Two that time out (to port 10), one from an old recording
        // (no error read).
        for (sk, known, err) in [(0x60, 1, 110), (0x61, 1, 110), (0x62, 0, 0)] {
            agg.on_event(&g.st(
                100,
                "client",
                sk,
                0,
                10,
                CLOSE,
                SYN_SENT,
                attribution::SYSCALL,
            ));
            agg.on_event(&with_err(
                g.st(
                    100,
                    "client",
                    sk,
                    41001,
                    10,
                    SYN_SENT,
                    CLOSE,
                    attribution::SOCKET,
                ),
                known,
                err,
            ));
        }
        let s = agg.snapshot(2 * SEC);
        let c = row(&s, 100);
        assert_eq!(c.totals.failed_connects, 4);
        assert_eq!(c.totals.resets_received, 1);
        assert_eq!(c.totals.resets_sent, 0);
        assert_eq!(s.kernel_resets_sent, 1);
        let dest: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let e = s.remote_errors.iter().find(|(a, _)| *a == dest).unwrap().1;
        assert_eq!((e.failed_connects, e.resets_received), (1, 1));
        assert_eq!(
            c.connect_errors,
            vec![
                ("ECONNREFUSED".to_string(), 1),
                ("ETIMEDOUT".to_string(), 2),
                ("unknown".to_string(), 1)
            ]
        );
        let f: Vec<(u32, String, &str, u64, u64)> = s
            .connect_failures
            .iter()
            .map(|f| {
                (
                    f.pid,
                    f.remote.to_string(),
                    f.error.as_str(),
                    f.count,
                    f.interval,
                )
            })
            .collect();
        assert_eq!(
            f,
            vec![
                (100, "127.0.0.1:10".into(), "ETIMEDOUT", 2, 2),
                (100, "127.0.0.1:9".into(), "ECONNREFUSED", 1, 1),
                (100, "127.0.0.1:10".into(), "unknown", 1, 1),
            ]
        );
        assert!(
            s.hints.iter().any(|h| h
                .starts_with("pid 100 (client) could not connect to 127.0.0.1:9: 1 ECONNREFUSED")),
            "{:?}",
            s.hints
        );
        // The next interval: counts stay, the interval's are 0.
        let s = agg.snapshot(3 * SEC);
        assert!(s.connect_failures.iter().all(|f| f.interval == 0));
        assert_eq!(s.connect_failures.iter().map(|f| f.count).sum::<u64>(), 4);
    }

    #[test]
    fn seeded_sockets_count_from_the_start_and_fix_guessed_owners() {
        use state::*;
        let mut agg = TcpAggregate::new(TcpConfig::default());
        let l: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let r: SocketAddr = "127.0.0.1:45000".parse().unwrap();
        let rows = vec![
            TableRow {
                local: l,
                remote: "0.0.0.0:0".parse().unwrap(),
                state: LISTEN,
                owner: Some((300, "server".into())),
                netns: 0,
                holders: vec![],
            },
            TableRow {
                local: l,
                remote: r,
                state: ESTABLISHED,
                owner: Some((300, "server".into())),
                netns: 0,
                holders: vec![],
            },
            TableRow {
                local: r,
                remote: l,
                state: ESTABLISHED,
                owner: Some((100, "client".into())),
                netns: 0,
                holders: vec![],
            },
            TableRow {
                local: "127.0.0.1:45001".parse().unwrap(),
                remote: l,
                state: TIME_WAIT,
                owner: None,
                netns: 0,
                holders: vec![],
            },
        ];
        agg.seed(&rows, SEC);
        let s = agg.snapshot(SEC);
        assert_eq!(row(&s, 300).states.established, 1);
        assert_eq!(row(&s, 300).states.listen, 1);
        assert_eq!(row(&s, 100).states.established, 1);
        assert_eq!(s.states.time_wait, 1);
        // The peer's FIN runs in softirq on the client's CPU: the kernel
        // can only guess (current = client); the table knew the server.
        let mut g = Gen { ts: 2 * SEC };
        agg.on_event(&g.st(
            100,
            "client",
            0x77,
            80,
            45000,
            ESTABLISHED,
            CLOSE_WAIT,
            attribution::CURRENT,
        ));
        let s = agg.snapshot(3 * SEC);
        assert_eq!(row(&s, 300).states.close_wait, 1);
        assert_eq!(row(&s, 300).states.established, 0);
        assert_eq!(row(&s, 100).states.close_wait, 0);
    }

    fn accepted(
        g: &mut Gen,
        pid: u32,
        sk: u64,
        sport: u16,
        dport: u16,
        st: u8,
        was: u32,
    ) -> AnyEvent {
        g.ts += 1_000_000;
        AnyEvent::TcpSock(TcpSockEvent {
            header: header(EventKind::TcpAccepted, pid, "worker", g.ts),
            skaddr: sk,
            saddr: v4([127, 0, 0, 1]),
            daddr: v4([127, 0, 0, 1]),
            sport,
            dport,
            family: AF_INET,
            state: st,
            attribution: attribution::ACCEPTED,
            reason: was as i32,
            current_tgid: pid,
            netns: 0,
            _pad: 0,
        })
    }

    #[test]
    fn an_accept_moves_the_socket_and_its_passive_open_to_the_worker() {
        use state::*;
        let mut agg = TcpAggregate::new(TcpConfig::default());
        let mut g = Gen { ts: SEC };
        let listen = g.st(
            10,
            "master",
            0x10,
            80,
            0,
            CLOSE,
            LISTEN,
            attribution::SYSCALL,
        );
        agg.on_event(&listen);
        // Two connections, opened under the listener's owner.
        for (sk, cp) in [(0x20, 40000), (0x21, 40001)] {
            agg.on_event(&g.st(
                10,
                "master",
                sk,
                80,
                cp,
                LISTEN,
                SYN_RECV,
                attribution::LISTENER,
            ));
            agg.on_event(&g.st(
                10,
                "master",
                sk,
                80,
                cp,
                SYN_RECV,
                ESTABLISHED,
                attribution::LISTENER,
            ));
        }
        // The first is accepted before a snapshot, the second after one.
        agg.on_event(&accepted(&mut g, 11, 0x20, 80, 40000, ESTABLISHED, 10));
        let s = agg.snapshot(2 * SEC);
        assert_eq!(row(&s, 10).totals.passive_opens, 1);
        assert_eq!(row(&s, 11).totals.passive_opens, 1);
        assert_eq!(row(&s, 11).states.established, 1);
        g.ts = 2 * SEC;
        agg.on_event(&accepted(&mut g, 12, 0x21, 80, 40001, ESTABLISHED, 10));
        // The peer closes: the kernel names the accepter.
        agg.on_event(&g.st(
            12,
            "worker",
            0x21,
            80,
            40001,
            ESTABLISHED,
            CLOSE_WAIT,
            attribution::ACCEPTED,
        ));
        let s = agg.snapshot(3 * SEC);
        assert_eq!(row(&s, 10).totals.passive_opens, 0);
        assert_eq!(row(&s, 10).states.established, 0);
        assert_eq!(row(&s, 10).states.listen, 1);
        assert_eq!(row(&s, 12).totals.passive_opens, 1);
        assert_eq!(row(&s, 12).states.close_wait, 1);
        // The move happened in a counted interval: no rate for anyone.
        assert_eq!(row(&s, 10).rates.passive_opens, 0.0);
        assert_eq!(row(&s, 12).rates.passive_opens, 0.0);
        assert_eq!(s.totals.passive_opens, 2);
    }

    #[test]
    fn reconcile_gives_sockets_to_their_holders_and_keeps_them() {
        use state::*;
        let mut agg = TcpAggregate::new(TcpConfig::default());
        let mut g = Gen { ts: SEC };
        agg.on_event(&g.st(
            10,
            "server",
            0x10,
            80,
            0,
            CLOSE,
            LISTEN,
            attribution::SYSCALL,
        ));
        agg.on_event(&g.st(
            10,
            "server",
            0x20,
            80,
            40000,
            LISTEN,
            SYN_RECV,
            attribution::LISTENER,
        ));
        agg.on_event(&g.st(
            10,
            "server",
            0x20,
            80,
            40000,
            SYN_RECV,
            ESTABLISHED,
            attribution::LISTENER,
        ));
        let l: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let r: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let rows = |holder: u32, others: Vec<u32>| {
            vec![
                TableRow {
                    local: l,
                    remote: "127.0.0.1:0".parse().unwrap(),
                    state: LISTEN,
                    owner: Some((10, "server".into())),
                    netns: 0,
                    holders: vec![20],
                },
                TableRow {
                    local: l,
                    remote: r,
                    state: ESTABLISHED,
                    owner: Some((holder, "holder".into())),
                    netns: 0,
                    holders: others,
                },
            ]
        };
        // Held by the owner too: nothing to correct.
        assert_eq!(agg.reconcile(&rows(5, vec![10]), 3 * SEC).owners_fixed, 0);
        // Passed to 20 (SCM_RIGHTS): corrected once two runs agree.
        assert_eq!(agg.reconcile(&rows(20, vec![]), 4 * SEC).owners_fixed, 0);
        assert_eq!(agg.reconcile(&rows(20, vec![]), 5 * SEC).owners_fixed, 1);
        assert_eq!(agg.reconcile(&rows(20, vec![]), 6 * SEC).owners_fixed, 0);
        // The kernel still remembers the old owner: its events no longer
        // take the socket back; the holder's own close() does name it.
        g.ts = 6 * SEC;
        agg.on_event(&g.st(
            10,
            "server",
            0x20,
            80,
            40000,
            ESTABLISHED,
            CLOSE_WAIT,
            attribution::ACCEPTED,
        ));
        let s = agg.snapshot(7 * SEC);
        assert_eq!(row(&s, 20).states.close_wait, 1);
        assert_eq!(row(&s, 10).states.close_wait, 0);
        assert_eq!(s.corrections.owners_fixed, 1);
        agg.on_event(&g.st(
            20,
            "holder",
            0x20,
            80,
            40000,
            CLOSE_WAIT,
            LAST_ACK,
            attribution::SYSCALL,
        ));
        agg.on_event(&g.st(
            20,
            "holder",
            0x20,
            80,
            40000,
            LAST_ACK,
            CLOSE,
            attribution::SOCKET,
        ));
        let s = agg.snapshot(8 * SEC);
        assert_eq!(row(&s, 20).totals.closes, 1);
        assert_eq!(s.corrections.state_total(), 0);
    }

    #[test]
    fn namespaces_keep_equal_four_tuples_apart() {
        use state::*;
        let mut agg = TcpAggregate::new(TcpConfig::default());
        let l: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let r: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let row_in = |netns: u32, pid: u32| TableRow {
            local: l,
            remote: r,
            state: ESTABLISHED,
            owner: Some((pid, "server".into())),
            netns,
            holders: vec![],
        };
        agg.seed(&[row_in(1, 100), row_in(2, 200)], SEC);
        let s = agg.snapshot(SEC);
        assert_eq!(row(&s, 100).states.established, 1);
        assert_eq!(row(&s, 200).states.established, 1);
        // Only namespace 1 is in the table now: namespace 2's socket is
        // not taken for gone.
        let c = agg.reconcile(&[row_in(1, 100)], 3 * SEC);
        assert_eq!((c.sockets_removed, c.owners_fixed), (0, 0));
        let s = agg.snapshot(3 * SEC);
        assert_eq!(row(&s, 200).states.established, 1);
    }

    #[test]
    fn reconcile_follows_the_kernel_table() {
        let mut agg = TcpAggregate::new(TcpConfig::default());
        let mut g = Gen { ts: SEC };
        g.connection(&mut agg, 100, 200, 40000, 0);
        g.connection(&mut agg, 100, 200, 40001, 1);
        let l: SocketAddr = "127.0.0.1:80".parse().unwrap();
        // The kernel reused one TIME_WAIT early and has one diag never saw.
        let rows = vec![
            TableRow {
                local: "127.0.0.1:40000".parse().unwrap(),
                remote: l,
                state: state::TIME_WAIT,
                owner: None,
                netns: 0,
                holders: vec![],
            },
            TableRow {
                local: "127.0.0.1:40999".parse().unwrap(),
                remote: l,
                state: state::TIME_WAIT,
                owner: None,
                netns: 0,
                holders: vec![],
            },
        ];
        // Within the grace period nothing diag saw is removed.
        let c = agg.reconcile(&rows, SEC + 100_000_000);
        assert_eq!((c.time_wait_added, c.time_wait_removed), (1, 0));
        let c = agg.reconcile(&rows, 3 * SEC);
        assert_eq!((c.time_wait_added, c.time_wait_removed), (0, 1));
        let s = agg.snapshot(3 * SEC);
        assert_eq!(s.states.time_wait, 2);
        assert_eq!(
            row(&s, 100).states.time_wait,
            1,
            "the owner inferred for 40000 is kept"
        );
        assert_eq!(s.corrections.runs, 2);
        // A missed close: the kernel no longer has an ESTABLISHED socket.
        g.ts = 3 * SEC;
        g.connect(&mut agg, 100, 0x999, 42000);
        assert_eq!(agg.snapshot(3 * SEC).states.established, 1);
        let c = agg.reconcile(&rows, 5 * SEC);
        assert_eq!(c.sockets_removed, 1);
        assert_eq!(agg.snapshot(5 * SEC).states.established, 0);
    }

    /// Ports in use toward 127.0.0.1:80 in `s`.
    fn ports_toward_80(s: &TcpSnapshot) -> u64 {
        let l: SocketAddr = "127.0.0.1:80".parse().unwrap();
        s.pressure
            .iter()
            .filter(|p| p.destination.remote == l)
            .map(|p| p.ports_used)
            .sum()
    }

    #[test]
    fn a_table_read_ahead_of_the_events_counts_each_port_once() {
        use state::*;
        let mut agg = TcpAggregate::new(TcpConfig::default());
        let mut g = Gen { ts: SEC };
        let (sk, cp) = (0x777, 40000);
        g.connect(&mut agg, 100, sk, cp);
        // The table already shows the close whose events are still in
        // the ring buffer.
        let rows = vec![TableRow {
            local: format!("127.0.0.1:{cp}").parse().unwrap(),
            remote: "127.0.0.1:80".parse().unwrap(),
            state: TIME_WAIT,
            owner: None,
            netns: 0,
            holders: vec![],
        }];
        let c = agg.reconcile(&rows, g.ts + 1_000_000);
        assert_eq!(c.time_wait_added, 0, "{c:?}");
        let s = agg.peek(g.ts + 1_000_000);
        assert_eq!(ports_toward_80(&s), 1, "{:?}", s.pressure);
        assert_eq!((s.states.established, s.states.time_wait), (1, 0));
        // The events arrive: the same port, now in TIME_WAIT, the client's.
        for (old, new) in [
            (ESTABLISHED, FIN_WAIT1),
            (FIN_WAIT1, FIN_WAIT2),
            (FIN_WAIT2, CLOSE),
        ] {
            agg.on_event(&g.st(100, "client", sk, cp, 80, old, new, attribution::SOCKET));
        }
        let s = agg.peek(g.ts);
        assert_eq!(ports_toward_80(&s), 1, "{:?}", s.pressure);
        assert_eq!(row(&s, 100).states.time_wait, 1);
        // Settled, the table agrees and nothing changes.
        let c = agg.reconcile(&rows, g.ts + 2 * SEC);
        assert_eq!(c.state_total(), 0, "{c:?}");
    }

    #[test]
    fn a_connection_that_takes_over_a_time_wait_port_is_one_port() {
        let mut agg = TcpAggregate::new(TcpConfig::default());
        let mut g = Gen { ts: SEC };
        g.connection(&mut agg, 100, 200, 40000, 0);
        let s = agg.peek(g.ts);
        assert_eq!((ports_toward_80(&s), s.states.time_wait), (1, 1));
        // tcp_tw_reuse: a new connect gets 40000 toward the same remote.
        g.connect(&mut agg, 100, 0x888, 40000);
        let s = agg.peek(g.ts);
        assert_eq!(ports_toward_80(&s), 1, "{:?}", s.pressure);
        assert_eq!((s.states.established, s.states.time_wait), (1, 0));
    }

    #[test]
    fn orphaned_fin_wait2_is_not_time_wait() {
        let mut agg = TcpAggregate::new(TcpConfig::default());
        let mut g = Gen { ts: SEC };
        g.connection(&mut agg, 100, 200, 40000, 0);
        assert_eq!(row(&agg.snapshot(2 * SEC), 100).states.time_wait, 1);
        // The peer never closed: the kernel shows the timewait socket as
        // FIN_WAIT2 (no inode), and one more diag never saw.
        let l: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let rows = vec![
            TableRow {
                local: "127.0.0.1:40000".parse().unwrap(),
                remote: l,
                state: state::FIN_WAIT2,
                owner: None,
                netns: 0,
                holders: vec![],
            },
            TableRow {
                local: "127.0.0.1:40005".parse().unwrap(),
                remote: l,
                state: state::FIN_WAIT2,
                owner: None,
                netns: 0,
                holders: vec![],
            },
        ];
        let c = agg.reconcile(&rows, 3 * SEC);
        assert_eq!(
            (c.states_fixed, c.time_wait_added, c.time_wait_removed),
            (1, 1, 0)
        );
        let s = agg.snapshot(3 * SEC);
        let r = row(&s, 100);
        assert_eq!((r.states.time_wait, r.states.fin_wait2), (0, 1));
        assert_eq!((s.states.time_wait, s.states.fin_wait2), (0, 2));
        assert_eq!(s.pressure[0].in_time_wait, 0);
        assert_eq!(s.pressure[0].ports_used, 2);
    }

    #[test]
    fn pid_reuse_starts_fresh_and_out_of_order_is_tolerated() {
        use state::*;
        // A recording without exits: reuse is guessed.
        let mut agg = TcpAggregate::new(TcpConfig {
            guess_pid_reuse: true,
            ..Default::default()
        });
        let mut g = Gen { ts: SEC };
        g.connection(&mut agg, 100, 200, 40000, 0);
        // pid 100 is reused by another program with no sockets left.
        agg.on_event(&g.st(
            100,
            "other",
            0x555,
            0,
            80,
            CLOSE,
            SYN_SENT,
            attribution::SYSCALL,
        ));
        let s = agg.snapshot(2 * SEC);
        let r = current(&s, 100);
        assert_eq!(r.comm, "other");
        assert_eq!(
            r.totals.active_opens, 1,
            "the old process's counts are not inherited"
        );
        assert_eq!(r.states.time_wait, 0, "nor its TIME_WAIT");
        let old = row(&s, 100);
        assert_eq!((old.comm.as_str(), old.exited), ("client", true));
        assert_eq!((old.totals.active_opens, old.states.time_wait), (1, 1));
        // A transition for a socket never seen, with a timestamp going back.
        g.ts = SEC / 2;
        agg.on_event(&g.st(
            400,
            "late",
            0x666,
            5000,
            80,
            ESTABLISHED,
            FIN_WAIT1,
            attribution::SYSCALL,
        ));
        agg.on_event(&g.st(
            400,
            "late",
            0x666,
            5000,
            80,
            FIN_WAIT1,
            FIN_WAIT2,
            attribution::SOCKET,
        ));
        agg.on_event(&g.st(
            400,
            "late",
            0x666,
            5000,
            80,
            FIN_WAIT2,
            CLOSE,
            attribution::SOCKET,
        ));
        let s = agg.snapshot(3 * SEC);
        let r = row(&s, 400);
        assert_eq!(r.totals.closes, 1);
        assert_eq!(r.states.time_wait, 1);
        assert_eq!(r.lifetime_max_ns, 0, "lifetime unknown, not invented");
    }

    #[test]
    fn a_reused_pid_after_an_exit_is_a_new_process() {
        use state::*;
        let mut agg = TcpAggregate::new(TcpConfig::default());
        let mut g = Gen { ts: SEC };
        // pid 100 ("client") makes a connection (left in TIME_WAIT) and
        // holds another one open; it ends.
        g.connection(&mut agg, 100, 200, 40000, 0);
        for (old, new, how, sport) in [
            (CLOSE, SYN_SENT, attribution::SYSCALL, 0),
            (SYN_SENT, ESTABLISHED, attribution::SOCKET, 40001),
        ] {
            agg.on_event(&g.st(100, "client", 0x500, sport, 80, old, new, how));
        }
        agg.on_event(&exit(100, "client", g.ts + 1));
        // After its exit the kernel closes its files, in its context: a
        // socket diag never saw goes to it, not to a new process.
        g.ts += 10;
        for (old, new) in [(ESTABLISHED, FIN_WAIT1), (FIN_WAIT1, CLOSE)] {
            agg.on_event(&g.st(
                100,
                "client",
                0x777,
                41000,
                81,
                old,
                new,
                attribution::SYSCALL,
            ));
        }
        // A new process gets pid 100, with the same name, and connects.
        agg.on_event(&g.st(
            100,
            "client",
            0x600,
            0,
            80,
            CLOSE,
            SYN_SENT,
            attribution::SYSCALL,
        ));
        agg.on_event(&g.st(
            100,
            "client",
            0x600,
            40002,
            80,
            SYN_SENT,
            ESTABLISHED,
            attribution::SOCKET,
        ));
        // The old process's open socket gets the peer's FIN later (softirq:
        // the kernel names the socket's owner, pid 100).
        agg.on_event(&g.st(
            100,
            "client",
            0x500,
            40001,
            80,
            ESTABLISHED,
            CLOSE_WAIT,
            attribution::SOCKET,
        ));
        let s = agg.snapshot(2 * SEC);
        let rows: Vec<&ProcRow> = s.processes.iter().filter(|r| r.pid == 100).collect();
        assert_eq!(rows.len(), 2, "two processes had pid 100: {rows:#?}");
        let (old, new) = (rows[0], rows[1]);
        assert!(old.exited && !new.exited);
        assert_eq!(
            (
                old.totals.active_opens,
                old.totals.closes,
                old.totals.aborts
            ),
            (2, 2, 0),
            "the old one keeps all it did, its last close included"
        );
        assert_eq!(
            (
                old.states.time_wait,
                old.states.close_wait,
                old.states.established
            ),
            (1, 1, 0),
            "and its sockets"
        );
        assert_eq!(
            (
                new.totals.active_opens,
                new.totals.closes,
                new.totals.time_waits
            ),
            (1, 0, 0),
            "the new one starts from zero"
        );
        assert_eq!(
            (
                new.states.established,
                new.states.time_wait,
                new.states.close_wait
            ),
            (1, 0, 0)
        );
        assert_eq!(
            (s.totals.active_opens, s.totals.passive_opens),
            (3, 1),
            "totals count both processes, each once"
        );
        // Its details are the new process's.
        let conns = agg.connections_of(100);
        assert_eq!(conns.len(), 1);
        assert_eq!((conns[0].states.established, conns[0].total), (1, 1));
        // The old one goes once idle for long enough; the new one stays.
        agg.on_event(&g.st(
            100,
            "client",
            0x500,
            40001,
            80,
            CLOSE_WAIT,
            LAST_ACK,
            attribution::SYSCALL,
        ));
        agg.on_event(&g.st(
            100,
            "client",
            0x500,
            40001,
            80,
            LAST_ACK,
            CLOSE,
            attribution::SOCKET,
        ));
        let s = agg.snapshot(3 * SEC);
        assert_eq!(
            row(&s, 100).totals.closes,
            3,
            "the late close is the old one's"
        );
        assert_eq!(current(&s, 100).totals.closes, 0);
        let mut t = 70 * SEC; // TIME_WAIT expired
        for _ in 0..FORGET_AFTER_IDLE_SNAPSHOTS + 1 {
            agg.snapshot(t);
            t += SEC;
        }
        let left: Vec<_> = agg.procs.keys().filter(|k| k.0 == 100).copied().collect();
        assert_eq!(left, vec![(100, 1)], "only the running one is left");
    }

    #[test]
    fn live_sources_never_guess_reuse_from_names() {
        use state::*;
        // Live (exits traced), before any exit arrived: a softirq
        // transition of someone else's old socket, charged to whatever
        // ran (pid 100 before its exec, under its parent's thread name),
        // then pid 100 connects under its own name. One process.
        let mut agg = TcpAggregate::new(TcpConfig::default());
        let mut g = Gen { ts: SEC };
        agg.on_event(&g.st(
            100,
            "test-thread",
            0x999,
            8080,
            5555,
            ESTABLISHED,
            CLOSE_WAIT,
            attribution::CURRENT,
        ));
        agg.on_event(&g.st(
            100,
            "test-thread",
            0x999,
            8080,
            5555,
            CLOSE_WAIT,
            CLOSE,
            attribution::CURRENT,
        ));
        g.connection(&mut agg, 100, 200, 40000, 0);
        g.connection(&mut agg, 100, 200, 40001, 1);
        let s = agg.snapshot(2 * SEC);
        let rows: Vec<&ProcRow> = s.processes.iter().filter(|r| r.pid == 100).collect();
        assert_eq!(rows.len(), 1, "{rows:#?}");
        assert_eq!(
            (
                rows[0].comm.as_str(),
                rows[0].totals.active_opens,
                rows[0].totals.closes
            ),
            ("client", 2, 3)
        );
        // The same from a recording without exits: guessed apart.
        let mut agg = TcpAggregate::new(TcpConfig {
            guess_pid_reuse: true,
            ..Default::default()
        });
        agg.on_event(&g.st(
            100,
            "test-thread",
            0x999,
            8080,
            5555,
            CLOSE_WAIT,
            CLOSE,
            attribution::CURRENT,
        ));
        g.connection(&mut agg, 100, 200, 40002, 2);
        let s = agg.snapshot(3 * SEC);
        assert_eq!(s.processes.iter().filter(|r| r.pid == 100).count(), 2);
    }

    #[test]
    fn exits_of_unknown_pids_leave_nothing_and_exec_is_not_reuse() {
        use state::*;
        let mut agg = TcpAggregate::new(TcpConfig::default());
        let mut g = Gen { ts: SEC };
        for pid in 1..1000 {
            agg.on_event(&exit(pid, "sh", SEC));
        }
        assert!(agg.procs.is_empty() && agg.lives.is_empty());
        // With exits known, a new name without an exit is exec(), the
        // same process: no split.
        g.connection(&mut agg, 100, 200, 40000, 0);
        agg.on_event(&g.st(
            100,
            "python3",
            0x555,
            0,
            80,
            CLOSE,
            SYN_SENT,
            attribution::SYSCALL,
        ));
        let s = agg.snapshot(2 * SEC);
        let rows: Vec<&ProcRow> = s.processes.iter().filter(|r| r.pid == 100).collect();
        assert_eq!(rows.len(), 1, "{rows:#?}");
        assert_eq!(
            (rows[0].comm.as_str(), rows[0].totals.active_opens),
            ("python3", 2)
        );
        // A pid whose process ended, then another that made no connection
        // ended too: a third one's first events are its own, not the first's.
        agg.on_event(&exit(100, "python3", 3 * SEC));
        agg.on_event(&exit(100, "sh", 4 * SEC));
        agg.on_event(&g.st(
            100,
            "python3",
            0x888,
            42000,
            80,
            ESTABLISHED,
            FIN_WAIT1,
            attribution::SYSCALL,
        ));
        let s = agg.snapshot(5 * SEC);
        let rows: Vec<&ProcRow> = s.processes.iter().filter(|r| r.pid == 100).collect();
        assert_eq!(rows.len(), 2, "{rows:#?}");
        assert!(rows[0].exited && !rows[1].exited);
        assert_eq!(rows[1].life, 2);
    }

    #[test]
    fn port_pressure_per_destination() {
        use state::*;
        let cfg = TcpConfig {
            port_range: (40000, 40099),
            ..Default::default()
        };
        let mut agg = TcpAggregate::new(cfg);
        let mut g = Gen { ts: SEC };
        agg.snapshot(SEC);
        for n in 0..80u64 {
            g.connection(&mut agg, 100, 200, 40000 + n as u16, n);
        }
        // A connection elsewhere does not count toward 127.0.0.1:80.
        agg.on_event(&g.st(
            100,
            "client",
            0x9999,
            0,
            443,
            CLOSE,
            SYN_SENT,
            attribution::SYSCALL,
        ));
        agg.on_event(&g.st(
            100,
            "client",
            0x9999,
            40090,
            443,
            SYN_SENT,
            ESTABLISHED,
            attribution::SOCKET,
        ));
        let s = agg.snapshot(2 * SEC);
        let p = &s.pressure[0];
        assert_eq!(
            p.destination.remote,
            "127.0.0.1:80".parse::<SocketAddr>().unwrap()
        );
        assert_eq!((p.ports_used, p.in_time_wait, p.range_size), (80, 80, 100));
        assert!((p.ratio - 0.8).abs() < 1e-9 && p.warning);
        assert!((p.growth_per_s - 80.0).abs() < 1e-9);
        assert!((p.exhausted_in_s.unwrap() - 0.25).abs() < 1e-9);
        assert_eq!(s.pressure[1].ports_used, 1);
        assert_hint(&s, &["80 % of ephemeral ports"]);
    }

    #[test]
    fn idle_dead_processes_are_forgotten() {
        let mut agg = TcpAggregate::new(TcpConfig::default());
        let mut g = Gen { ts: SEC };
        g.connection(&mut agg, 100, 200, 40000, 0);
        let mut t = 2 * SEC;
        for _ in 0..FORGET_AFTER_IDLE_SNAPSHOTS - 1 {
            agg.snapshot(t);
            t += SEC;
        }
        // Still there (the client holds a TIME_WAIT, counted in its row).
        assert!(agg.procs.contains_key(&(100, 0)) && agg.procs.contains_key(&(200, 0)));
        for _ in 0..80 {
            agg.snapshot(t);
            t += SEC;
        }
        assert!(
            agg.procs.is_empty(),
            "gone after 10 idle minutes: {:?}",
            agg.procs.keys().collect::<Vec<_>>()
        );
    }
}
