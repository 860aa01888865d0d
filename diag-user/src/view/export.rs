//! `diag export`: a recording as JSON lines or a Chrome trace.

use std::process::ExitCode;

use crate::cli::ExportArgs;

pub fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let _ = args;
    anyhow::bail!("diag export is not implemented yet")
}
