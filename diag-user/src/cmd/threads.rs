//! `diag threads PID`: procfs samples one interval apart, through the
//! thread-dump view; with `--locks`, the futex probes' maps name the
//! thread last seen releasing each futex.

use std::{collections::HashMap, io::Write, process::ExitCode};

use crate::{
    cli::{EventClass, ThreadsArgs},
    loader,
    probes::lock::LockMaps,
    source::threads,
    view::threads::{ThreadDump, json, text},
};

/// Per futex address of `pid`, the waker that ended the most waits.
fn released_by(maps: &LockMaps, pid: u32) -> HashMap<u64, (u32, String)> {
    let mut best: HashMap<u64, (u64, u32, String)> = HashMap::new();
    for (k, s) in maps.read().stats {
        if k.tgid != pid || k.waker_tid == 0 {
            continue;
        }
        let e = best.entry(k.uaddr).or_insert((0, 0, String::new()));
        if s.waits > e.0 {
            *e = (
                s.waits,
                k.waker_tid,
                String::from_utf8_lossy(diag_common::comm_bytes(&s.waker_comm)).into_owned(),
            );
        }
    }
    best.into_iter().map(|(a, (_, t, c))| (a, (t, c))).collect()
}

pub fn run(args: ThreadsArgs) -> anyhow::Result<ExitCode> {
    // The probes first (when asked): they see the waits of the interval.
    let mut probes = None;
    if args.locks {
        let mut env = loader::require_for(&args.probe, &[EventClass::Lock])?;
        // Only the maps are read: no exit events, no lock-wait events.
        env.proc = None;
        if let Some(l) = env.lock.as_mut() {
            l.threshold_ns = u64::MAX;
        }
        let mut tracer = loader::load(&env, &args.probe)?;
        let maps = LockMaps::take(&mut tracer.ebpf)?;
        probes = Some((tracer, maps));
    }
    let mut dump = ThreadDump::default();
    let first = threads::sample(args.pid)?;
    dump.feed(first);
    let count = if args.watch { args.count } else { Some(1) };
    let mut shown = 0u64;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signals::SIGINT, signals::SIGTERM] {
        signals::on(sig, stop.clone());
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
        let Some(mut d) = dump.feed(s) else { continue };
        if let Some((_, maps)) = &probes {
            d.released_by = Some(released_by(maps, args.pid));
        }
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
    drop(probes);
    Ok(ExitCode::SUCCESS)
}

/// SIGINT/SIGTERM set a flag (the loop ends after its sleep, cleanly).
mod signals {
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
