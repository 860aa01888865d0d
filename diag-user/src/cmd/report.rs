//! `diag report FILE [--html OUT]`: the review reads the recording itself
//! (it needs every frame kind, in order).

use std::process::ExitCode;

use crate::cli::ReportArgs;

pub fn run(args: ReportArgs) -> anyhow::Result<ExitCode> {
    crate::view::report::run(args)
}
