//! The command line. `diag` alone is `diag tail`.

use clap::{Args, Parser, Subcommand, ValueEnum};

const ABOUT: &str = "Who is the victim and who is the villain? Live answers from the kernel.";

const LONG_ABOUT: &str = "\
diag traces a struggling Linux server from the kernel itself, per process, \
following the USE method (utilization, saturation, errors).

It loads small eBPF programs on kernel tracepoints and streams their events \
to this program. It must run as root (or with CAP_BPF and CAP_PERFMON). \
Run `diag check` first on a new host.

Without a subcommand, diag runs `diag tail`.";

#[derive(Debug, Parser)]
#[command(name = "diag", version, about = ABOUT, long_about = LONG_ABOUT)]
pub struct Cli {
    /// More of diag's own messages (-v debug, -vv trace); RUST_LOG
    /// (e.g. RUST_LOG=diag_user=debug) sets them per module
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Live-tail kernel events, one line each, until Ctrl-C (the default)
    #[command(long_about = TAIL_ABOUT, after_help = TAIL_EXAMPLES)]
    Tail(TailArgs),
    /// Per-process TCP analytics: churn, states, TIME_WAIT/CLOSE_WAIT, port pressure
    #[command(long_about = CONNS_ABOUT, after_help = CONNS_EXAMPLES)]
    Conns(ConnsArgs),
    /// The stall view, every interval, per process: run-queue latency,
    /// blocked time, CPU time and the delay processes cause each other;
    /// memory reclaim, swap-ins, block I/O (per device too) and, with
    /// --locks, futex waits
    #[command(long_about = RUNQ_ABOUT, after_help = RUNQ_EXAMPLES)]
    Runq(RunqArgs),
    /// The live USE view of the host, per process, like top (q quits, ? helps)
    #[command(long_about = TOP_ABOUT, after_help = TOP_EXAMPLES)]
    Top(TopArgs),
    /// Record a session to a file for later review (replay, report, export)
    #[command(long_about = RECORD_ABOUT, after_help = RECORD_EXAMPLES)]
    Record(RecordArgs),
    /// Play a recording through tail, conns or top (no root needed)
    #[command(long_about = REPLAY_ABOUT)]
    Replay(ReplayArgs),
    /// Review a recording in the USE method's order (text, or --html)
    Report(ReportArgs),
    /// Convert a recording to JSON lines or a Chrome/Perfetto trace
    Export(ExportArgs),
    /// Serve Prometheus metrics (TCP churn, states, leaks, port pressure, OOM kills, run queues,
    /// memory stalls, block I/O, pressure, with --locks lock waits) over HTTP
    #[command(long_about = SERVE_ABOUT, after_help = SERVE_EXAMPLES)]
    Serve(ServeArgs),
    /// A thread dump of a process from the kernel's side: each thread's
    /// state, what it waits on (a lock and its holder, a pipe, a socket),
    /// its kernel stack, CPU and run-queue wait; deadlocks flagged
    #[command(long_about = THREADS_ABOUT, after_help = THREADS_EXAMPLES)]
    Threads(ThreadsArgs),
    /// Check that this host can run diag, one line per requirement
    #[command(long_about = CHECK_ABOUT)]
    Check(CheckArgs),
    /// The user-space pipeline's ceiling, without a kernel (for `cargo xtask bench`)
    #[command(hide = true)]
    BenchPipeline(BenchPipelineArgs),
}

const RECORD_ABOUT: &str = "\
Record every event (TCP transitions, resets, retransmits) to a file, with \
host facts, the kernel's socket table at the start and every --reconcile, a \
process table every 10 s, and diag's drop counters each second, so a replay \
knows what it missed.

The file is a sequence of checksummed frames, zstd-compressed, written at \
least once a second: if diag is killed (even with SIGKILL) everything up to \
the last frame reads back. Ctrl-C or SIGTERM finish the file cleanly. Files \
are created with mode 0600: they name processes, addresses and ports.";

const RECORD_EXAMPLES: &str = "\
Flight recorder: with --trigger, diag keeps the last --before of events in
memory and writes DIR/diag-DATE-TIME-KIND.diag with --before and --after
around each incident, keeping at most --max-files of them: it can stay on
for weeks without filling the disk.

Examples:
  diag record --trigger oom,reset-storm,port-pressure -o /var/lib/diag --before 5m
  diag record -o /var/tmp/incident.diag --duration 10m
  diag record -o big.diag --max-size 100M --max-files 5   rotate: big.diag.1 ...
  diag report /var/tmp/incident.diag";

const REPLAY_ABOUT: &str = "\
Play a recording through the same views as live: `diag replay FILE tail`, \
`diag replay FILE conns` or `diag replay FILE top`, with their usual flags. As fast as possible by \
default, or at --speed N times the recorded pace. --from and --to cut a \
window (HH:MM[:SS] on the recording's day, or RFC 3339); --at TIME prints \
the state at one instant (conns, top --batch). Damage in the file \
(truncation, bad checksums) is reported where it is, and the rest still \
plays. Needs no root.";

impl Default for Command {
    fn default() -> Self {
        Command::Tail(TailArgs::default())
    }
}

const TAIL_ABOUT: &str = "\
Live-tail kernel events, one line each, until Ctrl-C or SIGTERM.

Event classes (--events): tcp, reset, retrans.

tcp: every TCP state transition (IPv4 and IPv6), with the process that owns \
the socket, even when the transition ran in softirq context: the connecting \
process for active opens, the owner of the listening socket for passive opens, \
the closing process for closes. IN-OLD is the time the socket spent in its \
previous state.

The ATTR column says how the owner was found: `syscall` (the transition ran in \
the owner's own connect/listen/close), `socket` (remembered from an earlier \
transition of this socket), `listener` (the owner of the listening port), or \
`current` (unknown, e.g. a socket opened before diag started: the task that \
happened to be on the CPU).

oom: every OOM kill, the moment it happens, on one line: the victim (pid, \
command, uid, RSS split into anon/file/shmem, virtual size, page tables, \
oom_score_adj), whether a memory cgroup hit its limit (which one, its limit \
and usage) or the whole system ran out (`global`), the victim's cgroup and \
container id, the trigger (the task whose allocation made the OOM killer run, \
`itself` when it was the victim), and the biggest other memory users in that \
cgroup (or system-wide) right after the kill. --pid and --comm match the \
victim or the trigger; --port and --family apply to TCP events only.

On exit, diag prints how many events it saw and how many the kernel dropped. \
Drops are also reported as they happen: nothing is lost silently.

reset: a reset sent (with the kernel's reason, e.g. NO_SOCKET for a closed \
port; such resets belong to no process and show pid 0) or received. \
retrans: a retransmitted segment, with the socket's state.

lock (not in the default set: it attaches the futex system-call \
tracepoints, which cost every system call on the host a little, and \
sched_waking): every futex wait at least --lock-threshold long (10ms by \
default), when it ends: the waiting thread, the futex address, the wait, and \
the thread whose wakeup ended it (`woken by PID COMM (tid T)`: the thread \
that released the mutex, signalled the condition variable, or exited for a \
join), learned in the kernel at the wakeup itself. Waits that time out are \
timed sleeps, not events; waits ended by a signal say so. diag's own waits \
are not traced.";

const TAIL_EXAMPLES: &str = "\
Examples:
  diag tail                          every TCP transition and OOM kill on the host
  diag tail --events oom             OOM kills only
  diag tail --events lock --lock-threshold 50ms   threads stuck on locks, and who held them
  diag tail --port 5432              connections to or from port 5432
  diag tail --comm nginx --family 6  IPv6 transitions of nginx processes
  diag tail --json | jq .            JSON lines, one object per event
  diag tail --events reset,retrans   only resets and retransmissions";

const CONNS_ABOUT: &str = "\
Per-process TCP connection analytics, from the kernel's state transitions.

For each process: connection opens per second, active (connect) and passive \
(accept); closes per second; connection lifetime (p50/p99/max); sockets by \
state (ESTAB, SYN_SENT, SYN_RECV, FIN_WAIT, CLOSE_WAIT, LAST_ACK, TIME_WAIT, \
LISTEN); resets sent and received; retransmissions; failed connects.

TIME_WAIT is charged to the process that closed first. CLOSE_WAIT sockets \
older than --close-wait-threshold are listed as leaks: the process received \
FIN and never called close(). Ephemeral-port pressure is shown per \
destination (local address, remote address:port), as a share of \
net.ipv4.ip_local_port_range, with a forecast of when it runs out. Hints \
name the patterns (no keepalive, leaks, port exhaustion).

Sockets that existed before diag started are read from the kernel's socket \
table at start, and the gauges are reconciled with it every --reconcile \
(corrections are counted and shown), so the numbers are true from the first \
second and cannot drift.

By default diag watches for one --interval and prints one snapshot; \
--watch prints one per interval until Ctrl-C (and a last one then).";

const CONNS_EXAMPLES: &str = "\
Examples:
  diag conns                        one snapshot after 1 s
  diag conns --watch --interval 5s  a snapshot every 5 s
  diag conns --sort time-wait       who holds the most TIME_WAIT sockets
  diag conns --json | jq .hints     machine-readable";

const TOP_ABOUT: &str = "\
One screen that answers \"who is suffering and who is causing it\" during an \
incident, refreshed every --interval.

The header: load averages, runnable and blocked tasks, CPU use, memory and \
swapping, TCP totals (opens/s, closes/s, ESTABLISHED, TIME_WAIT, CLOSE_WAIT, \
resets/s, retransmits/s), the worst ephemeral-port pressure, OOM kills since \
start, and diag's own health: events/s, drops, map-full counts, and the CPU \
its BPF programs use (BPF run-time statistics are switched on while top runs).

One row per process: CPU %, connection opens/s and closes/s, ESTABLISHED, \
TIME_WAIT and CLOSE_WAIT sockets (CW! marks leaks), resets, retransmits, OOM \
kills, cgroup; with --locks, LOCK (futex wait over the interval, summed over \
the process's threads). Below, the latest notable events: OOM kills, CLOSE_WAIT leaks, \
reset bursts, port pressure, drops.

Keys: ? help, q quit, / filter, p or space pause, < > or a column's letter \
sort (c CPU, o opens, t TIME_WAIT, w CLOSE_WAIT, r resets, ...), arrows and \
Enter show a process's connections by peer and its events.

When standard output is not a terminal, or with --batch, --once or --json, \
top prints plain snapshots instead, like `top -b`.";

const TOP_EXAMPLES: &str = "\
Examples:
  diag top                              the interactive screen
  diag top --once                       one snapshot after one interval
  diag top --batch --count 5 --interval 2s > top.txt
  diag top --once --json | jq '.processes[0]'";

const CHECK_ABOUT: &str = "\
Check that this host can run diag: kernel version, BTF, tracefs (mounted if \
absent), the tracepoints diag uses, privileges, and BPF ring buffer support. \
One line per check, OK or FAIL with a hint. Exits 0 only when diag can run.";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EventClass {
    /// TCP state transitions (sock:inet_sock_set_state)
    Tcp,
    /// TCP resets sent and received (tcp:tcp_send_reset, tcp:tcp_receive_reset)
    Reset,
    /// TCP retransmissions, SYN-ACKs included (tcp:tcp_retransmit_skb, tcp:tcp_retransmit_synack)
    Retrans,
    /// Connections a listener lost because its accept queue was full
    /// (skb:kfree_skb, skb:consume_skb): the kernel's ListenOverflows,
    /// per listener and owner
    Drop,
    /// One line per finished connection (it was ESTABLISHED and reached
    /// CLOSE): duration, bytes acked and received, segments
    /// retransmitted, smoothed RTT, who closed first (struct tcp_sock
    /// read at the close). Not shown by default (nor sent by the kernel):
    /// a busy host closes many connections a second; recordings keep them
    Close,
    /// OOM kills: victim, trigger, memory and cgroup (oom:mark_victim)
    Oom,
    /// Run-queue waits longer than --stall-threshold, with the task that
    /// held the CPU (scheduler tracepoints)
    Stall,
    /// Block requests slower than --io-threshold: device, pid, bytes,
    /// latency (tp_btf block_io_start, block_rq_merge, block_rq_complete:
    /// they run on every block request, so they are attached only when
    /// asked for). `record` then also records block I/O per device and
    /// process once a second (the report's block I/O figures)
    Io,
    /// Memory stalls: direct reclaim, memory cgroup reclaim and direct
    /// compaction episodes longer than --mem-stall-threshold, with the
    /// memory cgroup whose limit forced the reclaim and the biggest memory
    /// users then (vmscan:, compaction: tracepoints)
    Memstall,
    /// Futex waits longer than --lock-threshold: waiter, lock address,
    /// wait, and the thread whose wakeup ended it (the holder that
    /// released the lock). Not shown by default: it attaches system-call
    /// tracepoints (futex), which slow every system call a little
    Lock,
    /// Processes that ended: pid, name, start time, exit status
    /// (tp_btf sched_process_exit; always traced with tcp and stall, so
    /// a reused pid is never taken for the process that had it)
    Exit,
}

impl EventClass {
    /// `events` and the process exits that come with them: TCP events and
    /// stalls are per process, and exits tell a process from a later one
    /// with the same pid (so recordings keep them too).
    pub fn with_exits(events: &[EventClass]) -> Vec<EventClass> {
        let mut v = events.to_vec();
        let per_process = events.iter().any(|e| {
            matches!(
                e,
                EventClass::Tcp
                    | EventClass::Reset
                    | EventClass::Retrans
                    | EventClass::Drop
                    | EventClass::Close
                    | EventClass::Stall
                    | EventClass::Io
                    | EventClass::Memstall
                    | EventClass::Lock
            )
        });
        if per_process && !v.contains(&EventClass::Exit) {
            v.push(EventClass::Exit);
        }
        v
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Family {
    /// IPv4 only
    #[value(name = "4")]
    V4,
    /// IPv6 only
    #[value(name = "6")]
    V6,
}

/// `diag tail`: what to show, and how the kernel side is set up.
#[derive(Debug, Clone, Args, Default)]
pub struct TailArgs {
    #[command(flatten)]
    pub view: TailView,
    #[command(flatten)]
    pub probe: ProbeArgs,
}

/// What `tail` shows (live or replayed).
#[derive(Debug, Clone, Args)]
pub struct TailView {
    /// Print JSON lines instead of text
    #[arg(long)]
    pub json: bool,

    /// Which events to show (comma separated)
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "tcp,drop,oom"
    )]
    pub events: Vec<EventClass>,

    #[command(flatten)]
    pub only: Only,

    /// Only events of processes in this cgroup (a path prefix as
    /// /proc/PID/cgroup shows it) or container (an id prefix, as `docker
    /// ps` shows it); OOM kills by the victim's cgroup; repeatable. Live
    /// only
    #[arg(long, value_name = "PATH|ID")]
    pub cgroup: Vec<String>,
}

/// Which events to keep, beyond their class: shared by tail and record.
#[derive(Debug, Clone, Args, Default)]
pub struct Only {
    /// Only events of this process id or thread id (repeatable; for OOM
    /// kills, the victim or the trigger)
    #[arg(long, value_name = "PID")]
    pub pid: Vec<u32>,

    /// Only events of processes with this command name (exact, as in
    /// /proc/PID/comm; repeatable)
    #[arg(long, value_name = "NAME")]
    pub comm: Vec<String>,

    /// Only connections with this port on either side (repeatable)
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Vec<u16>,

    /// Only IPv4 or only IPv6
    #[arg(long, value_enum)]
    pub family: Option<Family>,

    /// Only TCP events of sockets in this network namespace (its inode, as
    /// `readlink /proc/PID/ns/net` shows it; repeatable)
    #[arg(long, value_name = "INODE")]
    pub netns: Vec<u32>,
}

impl Default for TailView {
    fn default() -> Self {
        TailView {
            json: false,
            events: vec![EventClass::Tcp, EventClass::Drop, EventClass::Oom],
            only: Only::default(),
            cgroup: Vec::new(),
        }
    }
}

/// How the kernel side is set up; shared by every tracing subcommand.
#[derive(Debug, Clone, Args)]
pub struct ProbeArgs {
    /// Size of the kernel ring buffer, in MiB (a power of two). Raise it if
    /// diag reports dropped events.
    #[arg(long, value_name = "MIB", default_value_t = 4, value_parser = parse_ring_mib)]
    pub ring_mib: u32,

    /// Where the kernel's BTF is (checked before loading)
    #[arg(
        long,
        value_name = "PATH",
        env = "DIAG_BTF",
        default_value = "/sys/kernel/btf/vmlinux",
        hide_env_values = true
    )]
    pub btf: std::path::PathBuf,

    /// Where tracefs is mounted (mounted there if absent)
    #[arg(
        long,
        value_name = "PATH",
        env = "DIAG_TRACEFS",
        default_value = "/sys/kernel/tracing",
        hide_env_values = true
    )]
    pub tracefs: std::path::PathBuf,

    /// Scheduler: a run-queue wait at least this long is a stall (stall
    /// events, STALLS column), e.g. 10ms, 500us, 1s
    #[arg(long, value_name = "DURATION", default_value = "10ms", value_parser = parse_positive_duration)]
    pub stall_threshold: std::time::Duration,

    /// Block I/O: a request at least this slow, from its start to its
    /// completion, is a slow-I/O event (tail --events io), e.g. 10ms
    #[arg(long, value_name = "DURATION", default_value = "10ms", value_parser = parse_positive_duration)]
    pub io_threshold: std::time::Duration,
    /// Memory: a reclaim or compaction episode at least this long is a
    /// memory stall (memstall events, MSTALLS), e.g. 10ms, 1ms
    #[arg(long, value_name = "DURATION", default_value = "10ms", value_parser = parse_positive_duration)]
    pub mem_stall_threshold: std::time::Duration,
    /// Locks: a futex wait at least this long is an event (`tail
    /// --events lock`), e.g. 10ms, 500us
    #[arg(long, value_name = "DURATION", default_value = "10ms", value_parser = parse_positive_duration)]
    pub lock_threshold: std::time::Duration,

    /// TCP state changes from the classic tracepoint (a record built for
    /// each), not the raw one with `struct sock` offsets from BTF (the
    /// default when the kernel's BTF has them)
    #[arg(long, hide = true)]
    pub classic_tcp: bool,

    /// Show why the kernel programs skip or lose an event (a full ring
    /// buffer, an OOM kill without its task's note...), as warnings among
    /// diag's own messages (aya-log; off by default: each costs a write)
    #[arg(long)]
    pub kernel_log: bool,

    /// Also learn who holds a passively opened connection in accept()
    /// itself (syscalls:sys_exit_accept4), not only at its first read or
    /// write: exact for workers that accept and never read or write, but
    /// any system-call tracepoint slows every system call on the host
    /// (see the README's bench table)
    #[arg(long)]
    pub accept_probe: bool,

    /// Attach the TCP, scheduler and block programs but let them return at once:
    /// the cost of the attachment alone (for `cargo xtask bench`)
    #[arg(long, hide = true)]
    pub empty_programs: bool,

    /// Leave out the kernel's drop reasons for TCP sockets and unowned TCP
    /// drops (skb:kfree_skb keeps only the listen-queue reasons)
    #[arg(long)]
    pub no_drop_reasons: bool,
}

impl Default for ProbeArgs {
    fn default() -> Self {
        ProbeArgs {
            ring_mib: 4,
            btf: "/sys/kernel/btf/vmlinux".into(),
            tracefs: "/sys/kernel/tracing".into(),
            stall_threshold: std::time::Duration::from_millis(10),
            io_threshold: std::time::Duration::from_millis(10),
            mem_stall_threshold: std::time::Duration::from_millis(10),
            lock_threshold: std::time::Duration::from_millis(10),
            classic_tcp: false,
            empty_programs: false,
            kernel_log: false,
            accept_probe: false,
            no_drop_reasons: false,
        }
    }
}

/// What `diag conns --group` sums by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConnsGroup {
    /// The container id in the cgroup path (docker, containerd, podman);
    /// processes outside a container by their cgroup
    Container,
    /// The cgroup path
    Cgroup,
}

/// Columns `diag conns` can sort by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConnsSort {
    /// Opens plus closes per second
    Churn,
    /// Active plus passive opens per second
    Opens,
    /// Closes per second
    Closes,
    /// ESTABLISHED sockets
    Estab,
    /// TIME_WAIT sockets
    TimeWait,
    /// CLOSE_WAIT sockets
    CloseWait,
    /// Resets sent plus received (total)
    Resets,
    /// Retransmissions (total)
    Retrans,
    /// Failed connects (total)
    Failed,
    /// Process id
    Pid,
}

/// `diag conns`: what to show, and how the kernel side is set up.
#[derive(Debug, Clone, Args)]
pub struct ConnsArgs {
    #[command(flatten)]
    pub view: ConnsView,
    #[command(flatten)]
    pub probe: ProbeArgs,
}

/// What `conns` shows (live or replayed).
#[derive(Debug, Clone, Args)]
pub struct ConnsView {
    /// Length of one interval: rates are per second over it
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_positive_duration)]
    pub interval: std::time::Duration,

    /// Print a snapshot every interval until Ctrl-C
    #[arg(long)]
    pub watch: bool,

    /// Stop after this many snapshots (default: 1, or unlimited with --watch)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,

    /// Sort processes by
    #[arg(long, value_enum, default_value = "churn")]
    pub sort: ConnsSort,

    /// Show at most this many processes (0: all)
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub top: usize,

    /// Only this process id (repeatable)
    #[arg(long, value_name = "PID")]
    pub pid: Vec<u32>,

    /// Only processes with this command name (repeatable)
    #[arg(long, value_name = "NAME")]
    pub comm: Vec<String>,

    /// Only processes in this cgroup (a path prefix as /proc/PID/cgroup
    /// shows it, e.g. /system.slice/nginx.service) or container (an id
    /// prefix, as `docker ps` shows it); repeatable. Live only
    #[arg(long, value_name = "PATH|ID")]
    pub cgroup: Vec<String>,

    /// Also sum the processes per container (processes outside one per
    /// cgroup) or per cgroup, in a table above the processes ("groups" in
    /// JSON). Live only
    #[arg(long, value_enum, value_name = "BY")]
    pub group: Option<ConnsGroup>,

    #[command(flatten)]
    pub tcp: TcpArgs,

    /// Print JSON (one object per snapshot) instead of tables
    #[arg(long)]
    pub json: bool,
}

/// `diag bench-pipeline`.
#[derive(Debug, Clone, Args)]
pub struct BenchPipelineArgs {
    /// Events to push through
    #[arg(long, default_value_t = 2_000_000)]
    pub events: u64,
    /// Distinct processes making connections
    #[arg(long, default_value_t = 10_000)]
    pub procs: u32,
    /// Sockets open at once (each lives through 5 transitions)
    #[arg(long, default_value_t = 100_000)]
    pub sockets: u64,
    /// Also write a recording here (compressed, as `diag record` does)
    #[arg(long)]
    pub record: Option<std::path::PathBuf>,
}

/// The TCP flags `conns`, `top`, `serve` and `record` share.
#[derive(Debug, Clone, Args)]
pub struct TcpArgs {
    /// A socket in CLOSE_WAIT for longer than this is a leak
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_positive_duration)]
    pub close_wait_threshold: std::time::Duration,

    /// How often the TCP gauges are reconciled with the kernel's socket
    /// table (recordings: how often it is written)
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_positive_duration)]
    pub reconcile: std::time::Duration,

    /// Warn when a destination uses this percentage of the ephemeral ports
    /// (the flight recorder: a port-pressure incident)
    #[arg(long, value_name = "PERCENT", default_value_t = 70.0, value_parser = parse_percent)]
    pub pressure_warn: f64,
}

/// Columns `diag top` can sort by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TopSort {
    /// CPU %
    Cpu,
    /// Connection opens per second
    Opens,
    /// Connection closes per second
    Closes,
    /// ESTABLISHED sockets
    Estab,
    /// TIME_WAIT sockets
    TimeWait,
    /// CLOSE_WAIT sockets
    CloseWait,
    /// Resets sent plus received
    Resets,
    /// Retransmissions
    Retrans,
    /// OOM kills
    Oom,
    /// Process id
    Pid,
    /// Command name
    Name,
}

/// `diag top`: what to show, and how the kernel side is set up.
#[derive(Debug, Clone, Args)]
pub struct TopArgs {
    /// Leave out the scheduler probes (run-queue latency, WAIT%, blocked
    /// time): they fire on every context switch and cost the most
    #[arg(long)]
    pub no_sched: bool,
    /// Leave out the block I/O probes (the IO column, a process's I/O in
    /// its details; tp_btf block_io_start, block_rq_merge,
    /// block_rq_complete: they run on every block request)
    #[arg(long)]
    pub no_io: bool,
    /// Add a LOCK column: futex wait time per process over the interval
    /// (summed over its threads). Attaches the futex system-call
    /// tracepoints and sched_waking, which slow every system call a little
    #[arg(long)]
    pub locks: bool,
    #[command(flatten)]
    pub view: TopView,
    #[command(flatten)]
    pub probe: ProbeArgs,
}

/// What `top` shows (live or replayed).
#[derive(Debug, Clone, Args)]
pub struct TopView {
    /// Refresh every DURATION: rates are per second over it
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_positive_duration)]
    pub interval: std::time::Duration,

    /// Print plain snapshots instead of the interactive screen (the default
    /// when standard output is not a terminal)
    #[arg(short, long)]
    pub batch: bool,

    /// One snapshot after one interval, then exit (implies --batch)
    #[arg(long, conflicts_with = "count")]
    pub once: bool,

    /// With --batch: stop after N snapshots (default: until Ctrl-C)
    #[arg(short = 'n', long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,

    /// Print snapshots as JSON, one object per line (implies --batch)
    #[arg(long)]
    pub json: bool,

    /// Sort processes by (keys change it on the screen; default: cpu, or
    /// opens for a replay)
    #[arg(long, value_enum)]
    pub sort: Option<TopSort>,

    /// Only processes whose name contains TEXT, or with this pid (`/` on
    /// the screen)
    #[arg(long, value_name = "TEXT")]
    pub filter: Option<String>,

    #[command(flatten)]
    pub tcp: TcpArgs,
}

/// `diag record`.
#[derive(Debug, Clone, Args)]
pub struct RecordArgs {
    /// The file to write (created with mode 0600); with --trigger, a
    /// directory for one file per incident
    #[arg(short, long, value_name = "FILE|DIR")]
    pub output: std::path::PathBuf,

    /// Flight recorder: keep the last --before in memory and write a file
    /// only around each of these incidents (comma separated)
    #[arg(long, value_enum, value_delimiter = ',', value_name = "KINDS")]
    pub trigger: Vec<Trigger>,

    /// Flight recorder: how much before an incident to keep
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = parse_positive_duration)]
    pub before: std::time::Duration,

    /// Flight recorder: how much after an incident to keep
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_positive_duration)]
    pub after: std::time::Duration,

    /// Flight recorder: resets per second (sent and received) that make a storm
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub reset_storm: u64,

    /// Flight recorder: most events held in memory (the window shortens
    /// beyond it, and diag says so)
    #[arg(long, value_name = "N", default_value_t = 2_000_000,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub buffer_events: usize,

    /// Stop after this long (default: until Ctrl-C)
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration)]
    pub duration: Option<std::time::Duration>,

    /// Start a new file when this one reaches SIZE (e.g. 100M, 2G); the
    /// old ones become FILE.1, FILE.2, ...
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_size: Option<u64>,

    /// Rotated files to keep
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub max_files: usize,

    /// Write frames uncompressed
    #[arg(long)]
    pub no_compress: bool,

    #[command(flatten)]
    pub tcp: TcpArgs,

    /// Which events to record (comma separated)
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "tcp,reset,retrans,drop,close,oom"
    )]
    pub events: Vec<EventClass>,

    #[command(flatten)]
    pub only: Only,

    #[command(flatten)]
    pub probe: ProbeArgs,
}

/// What starts a flight-recorder file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Trigger {
    /// An OOM kill
    Oom,
    /// A destination over --pressure-warn of the ephemeral ports
    PortPressure,
    /// More than --reset-storm resets in a second
    ResetStorm,
}

/// `diag replay`.
#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// A recording made by `diag record`
    #[arg(value_name = "FILE")]
    pub file: std::path::PathBuf,

    /// Pace: N times the recorded speed (1 = as recorded); 0 = as fast as possible
    #[arg(long, value_name = "N", default_value_t = 0.0, value_parser = parse_speed)]
    pub speed: f64,

    /// Start of the window (HH:MM[:SS] on the recording's day, or RFC 3339)
    #[arg(long, value_name = "TIME", global = true)]
    pub from: Option<String>,

    /// End of the window
    #[arg(long, value_name = "TIME", global = true)]
    pub to: Option<String>,

    /// The state at this instant (conns, and top --batch): replay up to
    /// TIME and print one snapshot of it, its rates, stalls and hints
    /// over the --interval before it
    #[arg(long, value_name = "TIME", global = true, conflicts_with_all = ["from", "to"])]
    pub at: Option<String>,

    #[command(subcommand)]
    pub view: ReplayView,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ReplayView {
    /// Events one line each, as `diag tail`
    Tail(TailView),
    /// Per-process TCP analytics, as `diag conns`
    Conns(ConnsView),
    /// The per-process view of `diag top`, as text or JSON snapshots (no
    /// host numbers: they are not recorded)
    Top(TopView),
}

/// `diag report`.
#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// A recording made by `diag record`
    #[arg(value_name = "FILE")]
    pub file: std::path::PathBuf,

    /// Also write a self-contained HTML page with plots to OUT
    #[arg(long, value_name = "OUT")]
    pub html: Option<std::path::PathBuf>,

    /// Review only from this time (HH:MM[:SS] on the recording's day, or
    /// RFC 3339); what came before gives the sockets and their owners
    #[arg(long, value_name = "TIME")]
    pub from: Option<String>,

    /// Review only up to this time
    #[arg(long, value_name = "TIME")]
    pub to: Option<String>,

    /// Wrap the text at N columns, continuation lines indented under
    /// their first (0: no wrapping; default: the terminal's width, or no
    /// wrapping when the output is not a terminal)
    #[arg(long, value_name = "N")]
    pub width: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// One JSON object per line: events, health, tables
    Jsonl,
    /// Chrome trace-event JSON: open it in Perfetto's UI or chrome://tracing
    ChromeTrace,
}

/// `diag export`.
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// A recording made by `diag record`
    #[arg(value_name = "FILE")]
    pub file: std::path::PathBuf,

    #[arg(long, value_enum)]
    pub format: ExportFormat,

    /// Where to write (default: standard output)
    #[arg(short, long, value_name = "OUT")]
    pub output: Option<std::path::PathBuf>,
}

/// A size such as `100M`, `2G`, `512K` or plain bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let unit = t[i..].to_ascii_uppercase();
            let m = match unit.trim_end_matches("IB").trim_end_matches('B') {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                "T" => 1 << 40,
                _ => {
                    return Err(format!(
                        "`{s}`: unknown unit; write sizes like 512K, 100M, 2G"
                    ));
                }
            };
            (&t[..i], m)
        }
        None => (t, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a size; write it like 512K, 100M, 2G"))?;
    let v = n
        .checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))?;
    if v < 64 * 1024 {
        return Err(format!(
            "`{s}` is too small: a recording file needs at least 64K"
        ));
    }
    Ok(v)
}

fn parse_speed(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!(
            "{s}: the speed must be 0 (as fast as possible) or more"
        ));
    }
    Ok(v)
}

/// A duration with a unit: `500us`, `10ms`, `1s`, `1.5s`, `250ns`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b == b'0') {
        return Ok(std::time::Duration::ZERO);
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("`{s}` has no unit: write e.g. 10ms, 500us or 1s"))?;
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration: write e.g. 10ms, 500us or 1s"))?;
    let scale = match unit.trim() {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        other => {
            // Compound durations: 1h30m, 2m 30s.
            return humantime::parse_duration(t).map_err(|_| {
                format!(
                    "`{other}` in `{s}` is not a unit diag knows: use ns, us, ms, s, m, h or d (or e.g. 1h30m)"
                )
            });
        }
    };
    let secs = v * scale;
    if !secs.is_finite() || secs > 86_400.0 * 365.0 {
        return Err(format!("`{s}` is too long"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

pub fn parse_positive_duration(s: &str) -> Result<std::time::Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("`{s}`: the duration must be greater than zero"));
    }
    Ok(d)
}

fn parse_percent(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("`{s}` is not a percentage"))?;
    if !(0.0..=100.0).contains(&v) || v == 0.0 {
        return Err(format!(
            "{v}: the percentage must be above 0 and at most 100"
        ));
    }
    Ok(v)
}

const RUNQ_ABOUT: &str = "\
Per-process scheduler statistics, every --interval: how long each process \
waited for a CPU (run-queue latency: p50, p99, max, and WAIT%, the wait as a \
share of the interval summed over threads, so it can exceed 100 like top's \
%CPU), its CPU time, its time blocked in uninterruptible sleep (D, usually \
I/O) and in voluntary sleep (S), and the delay it suffered and caused.

Waits and CPU time are the kernel's own per-thread accounting (what \
/proc/PID/schedstat shows), read at sched_switch when a thread leaves the \
CPU: the wait that ended its time off the CPU and the run it just had are \
exact; the rest of its time off the CPU is sleep (S) or blocked (D), as it \
said when it left. The kernel aggregates waits into per-thread log2 histograms, summed per \
process by diag: user space never sees one event per context switch. p50/p99 are read from the \
histogram (accurate to a factor of 2); MAX is the upper bound of the highest \
bucket used in the interval, capped by the longest wait seen. Waits, \
sleeps and runs still going on count for the part already elapsed, so a \
process stuck in D shows up every interval, not once when it wakes.

CAUSED approximates \"delay caused to others\": each wait is charged, whole, \
to the task that was on the CPU just before the waiter got it. R and B in \
the header are the host's runnable and blocked task counts (vmstat's r and \
b, from /proc/stat).

Block I/O (unless --no-io; tp_btf block_io_start and block_rq_complete, \
attached only by the views that show it: they run on every request): IO is \
the time the process's block requests took in the interval, from the block \
layer's start of each request to its completion, summed (its I/O wait). A \
request is charged to the task that started it (writeback and the loop \
driver's backing I/O to the kernel threads doing it). Below the table, per \
device like iostat: r/s w/s rkB/s wkB/s, await (mean start-to-completion \
time), aqu-sz (average requests in flight: the time requests took over the \
interval), %util (time with a request in flight), requests in flight at \
the reading, and errors; and the processes' I/O per device. Bio-based \
devices (zram, device-mapper, md) have no requests and are not shown; the \
devices under them are.

Memory stalls (MEM, SWAPIN columns, the memory: line and one line per \
memory cgroup): time the process spent in direct reclaim, memory cgroup \
reclaim (forced by a cgroup's limit) and direct compaction, timed per thread \
between the vmscan:/compaction: begin and end tracepoints (tp_btf), with \
reclaim throttling (mm_vmscan_throttled); pages scanned and reclaimed in \
those episodes (the values the kernel adds to pgscan_*/pgsteal_*); kernel \
threads' work (kswapd, kcompactd) is the host's background, not a process's \
stall. SWAPIN is pages read from a swap device by the process (its I/O time \
in JSON), from block:block_bio_queue/block_bio_complete on the devices in \
/proc/swaps: those two programs see every bio of the host, so only runq \
attaches them. The memory: line also shows /proc/vmstat over the same \
interval (pgscan, pgsteal, pswpin, pswpout) as a cross-check.

Full kernel maps are counted and reported: nothing is lost silently.";

const RUNQ_EXAMPLES: &str = "\
Examples:
  diag runq                        a table every second, worst waiters first
  diag runq --count 1 --interval 5s   one 5-second table, then exit
  diag runq --sort caused          the processes that delay others most
  diag runq --hist --pid 1234      run-queue latency histogram of one process
  diag runq --pid 1234 --threads   and a row per thread
  diag runq --json | jq .          one JSON object per interval
  diag runq --sort io              the processes that wait most for block I/O
  diag runq --sort mem             the processes stalled longest in memory reclaim";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum RunqSort {
    /// Run-queue wait (delay suffered)
    #[default]
    Wait,
    /// 99th percentile run-queue latency
    P99,
    /// Longest run-queue wait
    Max,
    /// CPU time
    Cpu,
    /// Uninterruptible sleep (D)
    Blocked,
    /// Voluntary sleep (S)
    Sleep,
    /// Delay caused to others
    Caused,
    /// Memory stall time (reclaim, compaction, throttling)
    Mem,
    /// Pages swapped in
    Swap,
    /// Process id
    Pid,
    /// Block I/O time (IO)
    Io,
}

/// `diag threads`.
#[derive(Debug, Clone, Args)]
pub struct ThreadsArgs {
    /// The process
    #[arg(value_name = "PID")]
    pub pid: u32,

    /// The interval CPU and run-queue wait are measured over
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_positive_duration)]
    pub interval: std::time::Duration,

    /// Refresh every interval until Ctrl-C (or --count dumps)
    #[arg(long)]
    pub watch: bool,

    /// Stop after this many dumps (with --watch)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,

    /// One JSON object per dump
    #[arg(long)]
    pub json: bool,

    /// Leave out the kernel stacks in the text dump
    #[arg(long)]
    pub no_stacks: bool,

    /// Also attach the futex probes while diag watches, to name the
    /// thread last seen releasing each futex a thread waits on (`last
    /// released by`: for locks that keep no owner, such as condition
    /// variables or Rust's std Mutex). They slow every system call on the
    /// host a little while they are attached; needs root
    #[arg(long)]
    pub locks: bool,

    #[command(flatten)]
    pub probe: ProbeArgs,
}

#[derive(Debug, Clone, Args)]
pub struct RunqArgs {
    /// Length of each interval (e.g. 1s, 500ms)
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_positive_duration)]
    pub interval: std::time::Duration,

    /// Stop after this many intervals (1: one-shot); default: until Ctrl-C
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,

    /// Sort the table by
    #[arg(long, value_enum, default_value = "wait")]
    pub sort: RunqSort,

    /// Only these processes (repeatable); with --hist, their histogram
    #[arg(long, value_name = "PID")]
    pub pid: Vec<u32>,

    /// Print a log2 histogram of run-queue latency (whole host, or --pid);
    /// with --locks, one of futex wait times too
    #[arg(long)]
    pub hist: bool,

    /// With --pid: also a row per thread (JSON output always has them)
    #[arg(long, requires = "pid")]
    pub threads: bool,

    /// Rows in the text table (0: all)
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub limit: usize,

    /// Print one JSON object per interval instead of a table
    #[arg(long)]
    pub json: bool,

    /// Leave out block I/O (the IO column, the device and process I/O
    /// tables): its programs (tp_btf block_io_start, block_rq_complete)
    /// run on every block request
    #[arg(long)]
    pub no_io: bool,
    /// Add a LOCK column: futex wait time per process in the interval
    /// (summed over its threads), and the most contended locks with the
    /// threads that held them. Attaches the futex system-call tracepoints
    /// and sched_waking, which slow every system call and wakeup a little
    #[arg(long)]
    pub locks: bool,

    #[command(flatten)]
    pub probe: ProbeArgs,
}

const THREADS_ABOUT: &str = "\
A thread dump of process PID from the kernel's side, for any language: one \
row per thread with its state (R running, S sleeping, D uninterruptible...), \
how long it has been in it (FOR: a lower bound, the time it kept that state \
without running while diag looked; `<1s` when it ran or changed in the last \
interval), its CPU use and run-queue wait over the interval (schedstat), \
wchan, and what it waits on: a futex address and the thread holding it, a \
pipe, a socket, a file, a sleep or a poll. Below the table: threads waiting \
on each other's locks in a cycle (DEADLOCK, with both tids and lock \
addresses), then each thread's kernel stack.

Everything comes from procfs (task/TID/stat, schedstat, wchan, syscall, \
stack) and the process's memory (/proc/PID/mem): no probes are attached \
(unless --locks), so it costs the process nothing. The holder of a lock is read from the lock \
itself: glibc's pthread_mutex_t keeps its owner's tid (`__owner`, 8 bytes \
after the futex word); a priority-inheritance futex holds its owner's tid. \
Other futexes (condition variables, semaphores, Rust's std Mutex, Go) show \
their address without a holder; with --locks, the futex probes watch while \
diag samples and name the thread last seen releasing each of them (`last \
released by`), as `diag tail --events lock` names the thread whose wakeup \
ended each wait. Kernel stacks and other processes' memory need \
root.";

const THREADS_EXAMPLES: &str = "\
Examples:
  diag threads 1234                      one dump, CPU over 1 s
  diag threads 1234 --watch --interval 2s
  diag threads 1234 --json | jq '.deadlocks'";

const SERVE_ABOUT: &str = "\
Serve diag's aggregates as Prometheus metrics, for a fleet: /metrics in the \
Prometheus text format, /healthz (200 while the probes are attached and \
events flow, 503 otherwise). Runs until Ctrl-C or SIGTERM.

Metrics (counters end in _total): diag_tcp_opens_total{direction=active|passive}, \
diag_tcp_closes_total, diag_tcp_failed_connects_total, \
diag_tcp_resets_total{direction=sent|received}, diag_tcp_retransmits_total, \
diag_tcp_sockets{state}, diag_tcp_close_wait_leaks, all with the labels \
pid, comm and cgroup; diag_tcp_ephemeral_ports_usage_ratio{local,remote}; \
diag_oom_kills_total{cgroup,constraint}; per cgroup, the run-queue latency \
histogram diag_runq_latency_seconds and diag_runq_wait_seconds_total, \
diag_blocked_seconds_total, diag_cpu_seconds_total, diag_stalls_total (unless \
--no-sched); block I/O (unless --no-io) per cgroup, \
diag_block_requests_total{cgroup,op}, diag_block_bytes_total{cgroup,op}, \
diag_block_io_seconds_total{cgroup}, and per device (iostat: rates of these \
give r/s w/s rkB/s wkB/s, await, aqu-sz and %util), \
diag_block_device_requests_total{device,op}, diag_block_device_bytes_total, \
diag_block_device_io_seconds_total, diag_block_device_busy_seconds_total, \
diag_block_device_errors_total, diag_block_device_inflight, \
diag_block_device_latency_seconds, diag_block_lost_total{what}; pressure stall information (PSI) in seconds, \
diag_pressure_stall_seconds_total{resource,kind} for the host and \
diag_cgroup_pressure_stall_seconds_total{cgroup,resource,kind} for the 50 \
cgroups v2 that stalled most; memory stalls per cgroup: \
diag_memory_stall_seconds_total{cgroup,kind=direct|memcg|compaction|throttled}, \
diag_memory_stall_episodes_total, diag_memory_stall_latency_seconds, \
diag_memory_pages_scanned_total, diag_memory_pages_reclaimed_total, \
diag_memory_swapin_pages_total, diag_memory_swapout_pages_total, \
diag_memory_major_faults_total, and per memory cgroup \
diag_memcg_stall_seconds_total{memcg} and diag_memcg_limit_reclaims_total \
(the reclaim probes run only while the kernel reclaims; the swap probes, \
block_bio_queue/complete, see every bio); and diag's own health: \
diag_events_total, diag_events_dropped_total, diag_map_full_total{map}.

Cardinality is bounded: only the --top busiest processes get series of \
their own; everything else is summed per cgroup into series with \
pid=\"other\", comm=\"other\": every increase is counted in exactly one \
series, so sum(rate(...)) is the host's rate. At most --max-cgroups cgroup values are used; more become \
cgroup=\"other\". A process that exited keeps its series for --exit-grace.

The address is loopback by default: the metrics name processes and \
cgroups. Binding another address is your choice (diag notes it). \
With --record FILE, everything is also recorded as by `diag record`.";

const SERVE_EXAMPLES: &str = "\
Examples:
  diag serve                              http://127.0.0.1:9464/metrics
  diag serve --listen 0.0.0.0:9464 --top 20
  diag serve --record /var/tmp/diag.rec   serve and record at once
  curl -s localhost:9464/metrics | grep diag_tcp_opens_total

Prometheus scrape config (prometheus.yml):
  scrape_configs:
    - job_name: diag
      scrape_interval: 15s
      static_configs:
        - targets: ['localhost:9464']

PromQL:
  topk(5, sum by (comm) (rate(diag_tcp_opens_total[5m])))   churn by process
  sum by (instance, comm) (diag_tcp_close_wait_leaks) > 0    CLOSE_WAIT leaks
  sum by (instance, cgroup) (increase(diag_oom_kills_total[1h])) > 0   OOM kills
  histogram_quantile(0.99, sum by (le, cgroup) (rate(diag_runq_latency_seconds_bucket[5m])))   run-queue p99";

/// `diag serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address and port to serve on (a non-loopback address exposes
    /// process names to the network)
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9464")]
    pub listen: std::net::SocketAddr,

    /// Processes with series of their own, the busiest (the rest is summed
    /// per cgroup as pid="other"); 0: none
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub top: u64,

    /// Most distinct cgroup label values (more become cgroup="other")
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub max_cgroups: u64,

    /// How long an exited process keeps its series
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_positive_duration)]
    pub exit_grace: std::time::Duration,

    #[command(flatten)]
    pub tcp: TcpArgs,

    /// Also record everything to FILE (as `diag record -o FILE`)
    #[arg(long, value_name = "FILE")]
    pub record: Option<std::path::PathBuf>,

    /// Leave out the scheduler probes (run-queue latency, blocked and CPU
    /// time per cgroup): they fire on every context switch and cost the most
    #[arg(long)]
    pub no_sched: bool,

    /// Leave out the block I/O probes (tp_btf block_io_start,
    /// block_rq_merge, block_rq_complete: they run on every block request)
    /// and their families
    #[arg(long)]
    pub no_io: bool,
    /// Also serve lock counters per cgroup (diag_lock_waits_total,
    /// diag_lock_wait_seconds_total, diag_lock_long_waits_total, kernel
    /// lock contention): attaches the futex system-call tracepoints and
    /// sched_waking, which slow every system call and wakeup a little
    #[arg(long)]
    pub locks: bool,

    #[command(flatten)]
    pub probe: ProbeArgs,
}

#[derive(Debug, Clone, Args, Default)]
pub struct CheckArgs {
    #[command(flatten)]
    pub probe: ProbeArgs,
}

fn parse_ring_mib(s: &str) -> Result<u32, String> {
    let v: u32 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a whole number of MiB"))?;
    if v == 0 || !v.is_power_of_two() || v > 1024 {
        return Err(format!(
            "{v} MiB: the ring buffer size must be a power of two between 1 and 1024 MiB"
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_to_tail() {
        let cli = Cli::try_parse_from(["diag"]).unwrap();
        assert!(cli.command.is_none());
        assert!(matches!(Command::default(), Command::Tail(_)));
    }

    #[test]
    fn events_default_to_tcp_drops_and_oom() {
        let Some(Command::Tail(t)) = Cli::try_parse_from(["diag", "tail"]).unwrap().command else {
            panic!()
        };
        assert_eq!(
            t.view.events,
            vec![EventClass::Tcp, EventClass::Drop, EventClass::Oom]
        );
        assert_eq!(TailArgs::default().view.events, t.view.events);
        let Some(Command::Tail(t)) = Cli::try_parse_from(["diag", "tail", "--events", "oom"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert_eq!(t.view.events, vec![EventClass::Oom]);
    }

    #[test]
    fn ring_size_is_validated() {
        assert!(Cli::try_parse_from(["diag", "tail", "--ring-mib", "3"]).is_err());
        assert!(Cli::try_parse_from(["diag", "tail", "--ring-mib", "0"]).is_err());
        assert!(Cli::try_parse_from(["diag", "tail", "--ring-mib", "16"]).is_ok());
    }

    #[test]
    fn durations_and_percentages() {
        assert!(Cli::try_parse_from(["diag", "conns", "--interval", "0"]).is_err());
        assert!(Cli::try_parse_from(["diag", "conns", "--interval", "10xs"]).is_err());
        assert!(Cli::try_parse_from(["diag", "conns", "--pressure-warn", "120"]).is_err());
        assert!(Cli::try_parse_from(["diag", "conns", "--count", "0"]).is_err());
        let ok = Cli::try_parse_from([
            "diag",
            "conns",
            "--sort",
            "time-wait",
            "--pressure-warn",
            "50%",
            "--interval",
            "2m",
        ])
        .unwrap();
        let Some(Command::Conns(c)) = ok.command else {
            panic!()
        };
        assert_eq!(c.view.sort, ConnsSort::TimeWait);
        assert_eq!(c.view.tcp.pressure_warn, 50.0);
        assert_eq!(c.view.interval, std::time::Duration::from_secs(120));
    }

    #[test]
    fn durations() {
        use std::time::Duration;
        assert_eq!(parse_duration("10ms"), Ok(Duration::from_millis(10)));
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("500us"), Ok(Duration::from_micros(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("10xs").unwrap_err().contains("not a unit"));
        assert!(parse_duration("10").unwrap_err().contains("no unit"));
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("1e99s").is_err());
        for bad in ["0", "0ms", "10xs", "-1s"] {
            assert!(
                Cli::try_parse_from(["diag", "tail", "--stall-threshold", bad]).is_err(),
                "{bad}"
            );
            assert!(
                Cli::try_parse_from(["diag", "runq", "--interval", bad]).is_err(),
                "{bad}"
            );
        }
        let ok = Cli::try_parse_from([
            "diag",
            "runq",
            "--interval",
            "200ms",
            "--count",
            "3",
            "--sort",
            "caused",
        ])
        .unwrap();
        let Some(Command::Runq(r)) = ok.command else {
            panic!()
        };
        assert_eq!(r.interval, Duration::from_millis(200));
        assert_eq!(r.count, Some(3));
        assert_eq!(r.sort, RunqSort::Caused);
        assert_eq!(r.probe.stall_threshold, Duration::from_millis(10));
        assert!(Cli::try_parse_from(["diag", "runq", "--count", "0"]).is_err());
        let t = Cli::try_parse_from(["diag", "tail", "--events", "tcp,stall"]).unwrap();
        let Some(Command::Tail(t)) = t.command else {
            panic!()
        };
        assert_eq!(t.view.events, vec![EventClass::Tcp, EventClass::Stall]);
    }

    #[test]
    fn sizes_and_record_flags() {
        assert_eq!(parse_size("100M"), Ok(100 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("65536"), Ok(65536));
        assert!(parse_size("10").unwrap_err().contains("too small"));
        assert!(parse_size("5Q").unwrap_err().contains("unknown unit"));
        assert!(parse_size("lots").is_err());
        assert!(
            Cli::try_parse_from(["diag", "record"]).is_err(),
            "-o is required"
        );
        let ok =
            Cli::try_parse_from(["diag", "record", "-o", "x.diag", "--max-size", "1M"]).unwrap();
        let Some(Command::Record(r)) = ok.command else {
            panic!()
        };
        assert_eq!(r.max_size, Some(1 << 20));
        assert!(
            Cli::try_parse_from(["diag", "replay", "f.diag", "--speed", "-1", "tail"]).is_err()
        );
        assert!(Cli::try_parse_from(["diag", "replay", "f.diag", "conns", "--watch"]).is_ok());
        assert!(Cli::try_parse_from(["diag", "export", "f.diag", "--format", "pdf"]).is_err());
    }

    #[test]
    fn top_flags() {
        let Some(Command::Top(t)) = Cli::try_parse_from(["diag", "top"]).unwrap().command else {
            panic!()
        };
        assert!(!t.view.batch && !t.view.once && t.view.count.is_none());
        assert_eq!(t.view.interval, std::time::Duration::from_secs(1));
        assert!(Cli::try_parse_from(["diag", "top", "--once", "--count", "2"]).is_err());
        assert!(Cli::try_parse_from(["diag", "top", "--count", "0"]).is_err());
        assert!(Cli::try_parse_from(["diag", "top", "-b", "-n", "3", "--json"]).is_ok());
        assert!(Cli::try_parse_from(["diag", "top", "--sort", "close-wait"]).is_ok());
        assert!(Cli::try_parse_from(["diag", "top", "--sort", "bogus"]).is_err());
        assert!(Cli::try_parse_from(["diag", "replay", "f.diag", "top", "--json"]).is_ok());
    }

    #[test]
    fn serve_flags() {
        let Some(Command::Serve(s)) = Cli::try_parse_from(["diag", "serve"]).unwrap().command
        else {
            panic!()
        };
        assert_eq!(s.listen, "127.0.0.1:9464".parse().unwrap());
        assert_eq!((s.top, s.max_cgroups), (50, 100));
        assert!(s.record.is_none());
        assert!(Cli::try_parse_from(["diag", "serve", "--listen", "localhost"]).is_err());
        assert!(Cli::try_parse_from(["diag", "serve", "--listen", "1.2.3.4:99999"]).is_err());
        assert!(Cli::try_parse_from(["diag", "serve", "--top", "-1"]).is_err());
        assert!(Cli::try_parse_from(["diag", "serve", "--max-cgroups", "0"]).is_err());
        assert!(Cli::try_parse_from(["diag", "serve", "--exit-grace", "0s"]).is_err());
        assert!(
            Cli::try_parse_from(["diag", "serve", "--listen", "[::1]:9000", "--top", "0"]).is_ok()
        );
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Cli::try_parse_from(["diag", "tail", "--port", "0"]).is_err());
        assert!(Cli::try_parse_from(["diag", "tail", "--port", "70000"]).is_err());
        assert!(Cli::try_parse_from(["diag", "tail", "--family", "5"]).is_err());
        assert!(Cli::try_parse_from(["diag", "tail", "--events", "bogus"]).is_err());
        let ok = Cli::try_parse_from([
            "diag", "tail", "--port", "80", "--port", "443", "--family", "6",
        ])
        .unwrap();
        let Some(Command::Tail(t)) = ok.command else {
            panic!()
        };
        assert_eq!(t.view.only.port, vec![80, 443]);
        assert_eq!(t.view.only.family, Some(Family::V6));
    }

    #[test]
    fn durations_people_write() {
        let d = |s| parse_duration(s).unwrap().as_secs();
        assert_eq!(d("1h"), 3600);
        assert_eq!(d("2d"), 172_800);
        assert_eq!(d("1h30m"), 5400);
        assert_eq!(d("90s"), 90);
        assert!(
            parse_duration("3 fortnights")
                .unwrap_err()
                .contains("h or d")
        );
        assert!(Cli::try_parse_from(["diag", "record", "-o", "x", "--duration", "1h"]).is_ok());
        assert!(
            Cli::try_parse_from([
                "diag",
                "record",
                "-o",
                "x",
                "--trigger",
                "oom",
                "--buffer-events",
                "0"
            ])
            .is_err()
        );
    }
}
