//! diag's own messages: `tracing` events, printed to standard error as
//! `diag: message` (warnings and errors as they are worded). `RUST_LOG`
//! (e.g. `RUST_LOG=diag_user=debug`) or `-v` shows more. While the `top`
//! screen is up, messages are held (the last [`HELD_MAX`]) and printed
//! when the terminal is given back, so nothing is drawn over the screen
//! and nothing is lost.

use std::{
    io::{self, Write},
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use tracing_subscriber::{EnvFilter, fmt::MakeWriter};

/// Messages held while the screen is up, at most.
pub const HELD_MAX: usize = 1000;

static HOLDING: AtomicBool = AtomicBool::new(false);
static HELD: Mutex<(Vec<Vec<u8>>, u64)> = Mutex::new((Vec::new(), 0));

/// Set up logging: `verbose` 0 is info, 1 debug, 2 and more trace;
/// `RUST_LOG` overrides.
pub fn init(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Stderr)
        .with_target(verbose > 0)
        .with_level(verbose > 0)
        .without_time()
        .with_ansi(false)
        .event_format(Format { verbose })
        .try_init();
}

/// `diag: ` and the message (with -v: the level and the module too).
struct Format {
    verbose: u8,
}

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for Format
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut w: tracing_subscriber::fmt::format::Writer<'_>,
        ev: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        write!(w, "diag: ")?;
        if self.verbose > 0 {
            let m = ev.metadata();
            write!(w, "{} {}: ", m.level(), m.target())?;
        }
        ctx.field_format().format_fields(w.by_ref(), ev)?;
        writeln!(w)
    }
}

/// Standard error, or the held messages while the screen is up.
#[derive(Clone, Copy)]
struct Stderr;

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Line;
    fn make_writer(&'a self) -> Line {
        Line(Vec::new())
    }
}

/// One message, written whole when dropped.
struct Line(Vec<u8>);

impl Write for Line {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        let line = std::mem::take(&mut self.0);
        if HOLDING.load(Ordering::Relaxed) {
            let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
            if held.0.len() < HELD_MAX {
                held.0.push(line);
            } else {
                held.1 += 1;
            }
            return;
        }
        let _ = io::stderr().write_all(&line);
    }
}

/// Hold messages until the guard is dropped (after the terminal is given
/// back), then print them.
pub fn hold_while_screen_is_up() -> HoldGuard {
    HOLDING.store(true, Ordering::Relaxed);
    HoldGuard
}

pub struct HoldGuard;

impl Drop for HoldGuard {
    fn drop(&mut self) {
        HOLDING.store(false, Ordering::Relaxed);
        let (lines, lost) = {
            let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
            (std::mem::take(&mut held.0), std::mem::take(&mut held.1))
        };
        let mut err = io::stderr().lock();
        for l in lines {
            let _ = err.write_all(&l);
        }
        if lost > 0 {
            let _ = writeln!(
                err,
                "diag: {lost} more messages while the screen was up were not kept"
            );
        }
    }
}
