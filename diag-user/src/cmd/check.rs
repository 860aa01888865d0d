//! `diag check`: can diag run here, and with what.

use std::process::ExitCode;

use crate::{cli::CheckArgs, loader};

/// `diag check`.
pub fn run(args: &CheckArgs) -> ExitCode {
    let lines = loader::check_all(&args.probe);
    let mut ok = true;
    for l in &lines {
        match &l.result {
            Ok(detail) => println!("OK    {:<12} {detail}", l.name),
            Err(e) => {
                ok = false;
                println!("FAIL  {:<12} {e}", l.name);
            }
        }
    }
    if ok {
        println!("diag can run on this host.");
        ExitCode::SUCCESS
    } else {
        println!("diag cannot run on this host until the failures above are fixed.");
        ExitCode::FAILURE
    }
}
