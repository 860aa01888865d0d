//! `diag`: parse the command line and hand over to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = diag_user::cli::Cli::parse();
    match diag_user::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("diag: {}", diag_user::error::render(&err));
            ExitCode::FAILURE
        }
    }
}
