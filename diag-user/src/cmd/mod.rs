//! The command layer: one file per subcommand. Each picks a source,
//! builds its sinks and runs [`crate::sink::drive`]; clap parsed the
//! arguments, the aggregation core computes, the views draw.

pub mod bench;
pub mod check;
pub mod conns;
pub mod export;
pub mod record;
pub mod replay;
pub mod report;
pub mod runq;
pub mod serve;
pub mod tail;
pub mod threads;
pub mod top;

use std::process::ExitCode;

use crate::cli::{Cli, Command};

/// Run the parsed command line. `Ok` carries the exit code.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command.unwrap_or_default() {
        Command::Check(args) => Ok(check::run(&args)),
        Command::Tail(args) => tail::run(args),
        Command::Conns(args) => conns::run(args),
        Command::Top(args) => top::run(args),
        Command::Record(args) => record::run(args),
        Command::Replay(args) => replay::run(args),
        Command::Report(args) => report::run(args),
        Command::Export(args) => export::run(args),
        Command::BenchPipeline(args) => bench::run(args),
        Command::Runq(args) => runq::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Threads(args) => threads::run(args),
    }
}

/// The runtime every command runs on: one thread (the sinks are cheap;
/// procfs reads go to the blocking pool).
pub(crate) fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}
