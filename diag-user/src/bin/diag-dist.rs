//! What a package of diag ships besides the binary, generated from its
//! command line: a man page per subcommand (clap_mangen) and shell
//! completions (clap_complete). Used by `cargo xtask dist`:
//!
//! diag-dist OUT_DIR
//!     writes OUT_DIR/man/diag.1, diag-serve.1, ... and
//!     OUT_DIR/completions/diag.bash, _diag (zsh), diag.fish

use std::{path::PathBuf, process::ExitCode};

use clap::CommandFactory;
use clap_complete::Shell;
use diag_user::cli::Cli;

fn generate(out: &std::path::Path) -> std::io::Result<()> {
    let man = out.join("man");
    let completions = out.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    clap_mangen::generate_to(Cli::command(), &man)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = Cli::command();
        clap_complete::generate_to(shell, &mut cmd, "diag", &completions)?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        eprintln!("usage: diag-dist OUT_DIR");
        return ExitCode::from(2);
    };
    let out = PathBuf::from(out);
    match generate(&out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("diag-dist: {}: {e}", out.display());
            ExitCode::FAILURE
        }
    }
}
