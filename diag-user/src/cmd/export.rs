//! `diag export FILE --format jsonl|chrome-trace`: the exporter reads the
//! recording itself (every frame kind, in order).

use std::process::ExitCode;

use crate::cli::ExportArgs;

pub fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    crate::view::export::run(args)
}
