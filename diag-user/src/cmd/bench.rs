//! `diag bench-pipeline`: the user-space pipeline's ceiling, no kernel.

use std::process::ExitCode;

use crate::cli::BenchPipelineArgs;

pub fn run(args: BenchPipelineArgs) -> anyhow::Result<ExitCode> {
    crate::selftest::run(args)
}
