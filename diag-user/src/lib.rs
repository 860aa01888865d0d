//! diag's user-space side: environment checks, loading the kernel programs,
//! reading their events, and the views built on them.
//!
//! The flow: `source` (live ring buffer) -> [`Msg`] bus -> a sink in `view`.

pub mod aggregate;
pub mod btf;
pub mod cli;
pub mod clock;
pub mod enrich;
pub mod error;
pub mod host;
pub mod loader;
pub mod probes;
pub mod record;
pub mod selftest;
pub mod serve;
pub mod source;
pub mod tracefs;
pub mod view;

use std::process::ExitCode;

use diag_common::user::AnyEvent;

/// What travels on the bus from a source to a sink.
#[derive(Debug, Clone)]
pub enum Msg {
    /// Decoded events, in ring-buffer order.
    Events(Vec<AnyEvent>),
    /// The kernel side's health counters, cumulative since start.
    Health(source::Health),
    /// The kernel's TCP socket table at a moment: the first one seeds the
    /// TCP gauges, later ones reconcile them.
    Table {
        ts_ns: u64,
        rows: Vec<aggregate::tcp::TableRow>,
    },
    /// Part of a recording could not be read: what and where.
    Damage(String),
    /// From a recording: what user space learned about an OOM kill when it
    /// was recorded (live, the views read it themselves).
    OomContext(record::OomContextFrame),
}

/// Run the parsed command line. `Ok` carries the exit code.
pub fn run(cli: cli::Cli) -> anyhow::Result<ExitCode> {
    match cli.command.unwrap_or_default() {
        cli::Command::Check(args) => Ok(loader::run_check(&args)),
        cli::Command::Tail(args) => view::tail::run(args),
        cli::Command::Conns(args) => view::conns::run(args),
        cli::Command::Top(args) => view::top::run(args),
        cli::Command::Record(args) => record::run(args),
        cli::Command::Replay(args) => source::replay::run(args),
        cli::Command::Report(args) => view::report::run(args),
        cli::Command::Export(args) => view::export::run(args),
        cli::Command::BenchPipeline(args) => selftest::run(args),
        cli::Command::Runq(args) => view::runq::run(args),
        cli::Command::Serve(args) => serve::run(args),
    }
}
