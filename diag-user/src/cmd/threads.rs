//! `diag threads PID`: procfs samples one interval apart, through the
//! thread-dump view. No probes.

use std::{io::Write, process::ExitCode};

use crate::{
    cli::ThreadsArgs,
    source::threads,
    view::threads::{ThreadDump, json, text},
};

pub fn run(args: ThreadsArgs) -> anyhow::Result<ExitCode> {
    let mut dump = ThreadDump::default();
    let first = threads::sample(args.pid)?;
    dump.feed(first);
    let count = if args.watch { args.count } else { Some(1) };
    let mut shown = 0u64;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook_like::SIGINT, signal_hook_like::SIGTERM] {
        signal_hook_like::on(sig, stop.clone());
    }
    let mut out = std::io::stdout().lock();
    loop {
        std::thread::sleep(args.interval);
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        let s = match threads::sample(args.pid) {
            Ok(s) => s,
            Err(threads::ThreadsError::NoProcess(pid)) if shown > 0 => {
                writeln!(out, "process {pid} ended")?;
                break;
            }
            Err(e) => return Err(e.into()),
        };
        let Some(d) = dump.feed(s) else { continue };
        if args.json {
            writeln!(out, "{}", json(&d))?;
        } else {
            if shown > 0 {
                writeln!(out)?;
            }
            write!(out, "{}", text(&d, !args.no_stacks))?;
        }
        out.flush()?;
        shown += 1;
        if count.is_some_and(|c| shown >= c) {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// SIGINT/SIGTERM set a flag (the loop ends after its sleep, cleanly).
mod signal_hook_like {
    use std::sync::{Arc, OnceLock, atomic::AtomicBool};

    pub const SIGINT: i32 = libc::SIGINT;
    pub const SIGTERM: i32 = libc::SIGTERM;

    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();

    extern "C" fn handler(_: i32) {
        if let Some(f) = FLAG.get() {
            f.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    pub fn on(sig: i32, flag: Arc<AtomicBool>) {
        let _ = FLAG.set(flag);
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(sig, handler as *const () as libc::sighandler_t) };
    }
}
