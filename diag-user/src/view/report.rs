//! `diag report`: a recording reviewed in the USE method's order.

use std::process::ExitCode;

use crate::cli::ReportArgs;

pub fn run(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let _ = args;
    anyhow::bail!("diag report is not implemented yet")
}
