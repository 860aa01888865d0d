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
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Live-tail kernel events, one line each, until Ctrl-C (the default)
    #[command(long_about = TAIL_ABOUT, after_help = TAIL_EXAMPLES)]
    Tail(TailArgs),
    /// Check that this host can run diag, one line per requirement
    #[command(long_about = CHECK_ABOUT)]
    Check(CheckArgs),
    /// Per-process run-queue latency, blocked time, CPU time, and the
    /// delay processes cause each other, every interval
    #[command(long_about = RUNQ_ABOUT, after_help = RUNQ_EXAMPLES)]
    Runq(RunqArgs),
}

impl Default for Command {
    fn default() -> Self {
        Command::Tail(TailArgs::default())
    }
}

const TAIL_ABOUT: &str = "\
Live-tail kernel events, one line each, until Ctrl-C or SIGTERM.

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

On exit, diag prints how many events it saw and how many the kernel dropped. \
Drops are also reported as they happen: nothing is lost silently.";

const TAIL_EXAMPLES: &str = "\
Examples:
  diag tail                          every TCP transition on the host
  diag tail --port 5432              connections to or from port 5432
  diag tail --comm nginx --family 6  IPv6 transitions of nginx processes
  diag tail --json | jq .            JSON lines, one object per event";

const CHECK_ABOUT: &str = "\
Check that this host can run diag: kernel version, BTF, tracefs (mounted if \
absent), the tracepoints diag uses, privileges, and BPF ring buffer support. \
One line per check, OK or FAIL with a hint. Exits 0 only when diag can run.";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EventClass {
    /// TCP state transitions (sock:inet_sock_set_state)
    Tcp,
    /// Run-queue waits longer than --stall-threshold, with the task that
    /// held the CPU (scheduler tracepoints)
    Stall,
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

#[derive(Debug, Clone, Args)]
pub struct TailArgs {
    /// Print JSON lines instead of text
    #[arg(long)]
    pub json: bool,

    /// Which events to show (comma separated)
    #[arg(long, value_enum, value_delimiter = ',', default_value = "tcp")]
    pub events: Vec<EventClass>,

    /// Only events of this process id or thread id (repeatable)
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

    /// With `--events stall`: report run-queue waits at least this long
    /// (e.g. 10ms, 500us, 1s)
    #[arg(long, value_name = "DURATION", default_value = "10ms", value_parser = parse_positive_duration)]
    pub stall_threshold: std::time::Duration,

    #[command(flatten)]
    pub probe: ProbeArgs,
}

impl Default for TailArgs {
    fn default() -> Self {
        TailArgs {
            json: false,
            events: vec![EventClass::Tcp],
            pid: vec![],
            comm: vec![],
            port: vec![],
            family: None,
            stall_threshold: std::time::Duration::from_millis(10),
            probe: ProbeArgs::default(),
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
}

impl Default for ProbeArgs {
    fn default() -> Self {
        ProbeArgs {
            ring_mib: 4,
            btf: "/sys/kernel/btf/vmlinux".into(),
            tracefs: "/sys/kernel/tracing".into(),
        }
    }
}

const RUNQ_ABOUT: &str = "\
Per-process scheduler statistics, every --interval: how long each process \
waited for a CPU (run-queue latency: p50, p99, max, and WAIT%, the wait as a \
share of the interval summed over threads, so it can exceed 100 like top's \
%CPU), its CPU time, its time blocked in uninterruptible sleep (D, usually \
I/O) and in voluntary sleep (S), and the delay it suffered and caused.

A wait starts when a thread is woken (sched_wakeup, sched_wakeup_new) or \
preempted while runnable, and ends when it is switched in (sched_switch). \
The kernel aggregates waits into per-thread log2 histograms, summed per \
process by diag: user space never sees one event per context switch. p50/p99 are read from the \
histogram (accurate to a factor of 2); MAX is the upper bound of the highest \
bucket used in the interval, capped by the longest wait seen. Waits, \
sleeps and runs still going on count for the part already elapsed, so a \
process stuck in D shows up every interval, not once when it wakes.

CAUSED approximates \"delay caused to others\": each wait is charged, whole, \
to the task that was on the CPU just before the waiter got it. R and B in \
the header are the host's runnable and blocked task counts (vmstat's r and \
b, from /proc/stat).

Full kernel maps are counted and reported: nothing is lost silently.";

const RUNQ_EXAMPLES: &str = "\
Examples:
  diag runq                        a table every second, worst waiters first
  diag runq --count 1 --interval 5s   one 5-second table, then exit
  diag runq --sort caused          the processes that delay others most
  diag runq --hist --pid 1234      run-queue latency histogram of one process
  diag runq --pid 1234 --threads   and a row per thread
  diag runq --json | jq .          one JSON object per interval";

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
    /// Process id
    Pid,
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

    /// Print a log2 histogram of run-queue latency (whole host, or --pid)
    #[arg(long)]
    pub hist: bool,

    /// With --pid: also a row per thread (JSON output always has them)
    #[arg(long, requires = "pid")]
    pub threads: bool,

    /// Rows in the text table (0: all)
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub limit: usize,

    /// Count waits at least this long as stalls (STALLS column)
    #[arg(long, value_name = "DURATION", default_value = "10ms", value_parser = parse_positive_duration)]
    pub stall_threshold: std::time::Duration,

    /// Print one JSON object per interval instead of a table
    #[arg(long)]
    pub json: bool,

    /// Attach the scheduler programs but let them return at once: the
    /// cost of the attachment alone (for `cargo xtask bench`)
    #[arg(long, hide = true)]
    pub empty_programs: bool,

    #[command(flatten)]
    pub probe: ProbeArgs,
}

#[derive(Debug, Clone, Args, Default)]
pub struct CheckArgs {
    #[command(flatten)]
    pub probe: ProbeArgs,
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
        other => {
            return Err(format!(
                "`{other}` in `{s}` is not a unit diag knows: use ns, us, ms, s or m"
            ));
        }
    };
    let secs = v * scale;
    if !secs.is_finite() || secs > 86_400.0 * 365.0 {
        return Err(format!("`{s}` is too long"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

fn parse_positive_duration(s: &str) -> Result<std::time::Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("`{s}`: the duration must be greater than zero"));
    }
    Ok(d)
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
    fn ring_size_is_validated() {
        assert!(Cli::try_parse_from(["diag", "tail", "--ring-mib", "3"]).is_err());
        assert!(Cli::try_parse_from(["diag", "tail", "--ring-mib", "0"]).is_err());
        assert!(Cli::try_parse_from(["diag", "tail", "--ring-mib", "16"]).is_ok());
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
        assert_eq!(r.stall_threshold, Duration::from_millis(10));
        assert!(Cli::try_parse_from(["diag", "runq", "--count", "0"]).is_err());
        let t = Cli::try_parse_from(["diag", "tail", "--events", "tcp,stall"]).unwrap();
        let Some(Command::Tail(t)) = t.command else {
            panic!()
        };
        assert_eq!(t.events, vec![EventClass::Tcp, EventClass::Stall]);
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
        assert_eq!(t.port, vec![80, 443]);
        assert_eq!(t.family, Some(Family::V6));
    }
}
