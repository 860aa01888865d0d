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

oom: every OOM kill, the moment it happens, on one line: the victim (pid, \
command, uid, RSS split into anon/file/shmem, virtual size, page tables, \
oom_score_adj), whether a memory cgroup hit its limit (which one, its limit \
and usage) or the whole system ran out (`global`), the victim's cgroup and \
container id, the trigger (the task whose allocation made the OOM killer run, \
`itself` when it was the victim), and the biggest other memory users in that \
cgroup (or system-wide) right after the kill. --pid and --comm match the \
victim or the trigger; --port and --family apply to TCP events only.

On exit, diag prints how many events it saw and how many the kernel dropped. \
Drops are also reported as they happen: nothing is lost silently.";

const TAIL_EXAMPLES: &str = "\
Examples:
  diag tail                          every TCP transition and OOM kill on the host
  diag tail --events oom             OOM kills only
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
    /// OOM kills: victim, trigger, memory and cgroup (oom:mark_victim)
    Oom,
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
    #[arg(long, value_enum, value_delimiter = ',', default_value = "tcp,oom")]
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

    #[command(flatten)]
    pub probe: ProbeArgs,
}

impl Default for TailArgs {
    fn default() -> Self {
        TailArgs {
            json: false,
            events: vec![EventClass::Tcp, EventClass::Oom],
            pid: vec![],
            comm: vec![],
            port: vec![],
            family: None,
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
    fn events_default_to_tcp_and_oom() {
        let Some(Command::Tail(t)) = Cli::try_parse_from(["diag", "tail"]).unwrap().command else {
            panic!()
        };
        assert_eq!(t.events, vec![EventClass::Tcp, EventClass::Oom]);
        assert_eq!(TailArgs::default().events, t.events);
        let Some(Command::Tail(t)) = Cli::try_parse_from(["diag", "tail", "--events", "oom"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert_eq!(t.events, vec![EventClass::Oom]);
    }

    #[test]
    fn ring_size_is_validated() {
        assert!(Cli::try_parse_from(["diag", "tail", "--ring-mib", "3"]).is_err());
        assert!(Cli::try_parse_from(["diag", "tail", "--ring-mib", "0"]).is_err());
        assert!(Cli::try_parse_from(["diag", "tail", "--ring-mib", "16"]).is_ok());
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
