//! `diag`: parse the command line, set up logging, hand over to the
//! command layer.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = diag_user::cli::Cli::parse();
    diag_user::logging::init(cli.verbose);
    match diag_user::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("diag: {}", diag_user::error::render(&err));
            ExitCode::FAILURE
        }
    }
}
