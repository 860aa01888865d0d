//! `diag top`: the live USE view of the host, per process.
//!
//! [`state`] is the model (pure, fed by messages, procfs samples and a
//! clock), [`render`] draws it (pure). This module is the edge: the
//! terminal, the keyboard, procfs, the live source.

pub mod render;
pub mod state;

use std::{
    io::{self, IsTerminal, Write},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use ratatui::{
    Terminal,
    backend::CrosstermBackend,
    crossterm::{
        cursor,
        event::{self, Event, KeyEventKind},
        execute,
        terminal::{self, EnterAlternateScreen, LeaveAlternateScreen},
    },
};
use tokio::sync::mpsc;

use crate::{
    bus::{End, Msg},
    cli::{TopSort, TopView},
    clock::{WallClock, boot_ns},
    sink::{Flow, Sink},
    view::{
        conns::Timebase,
        out::{Output, flow_of},
    },
};
use state::{Action, SortKey, TopConfig, TopState};

/// The state for `view`.
pub fn new_state(
    view: &TopView,
    port_range: Option<(u16, u16)>,
    clock: WallClock,
    timebase: Timebase,
) -> TopState {
    let config = TopConfig {
        interval_ns: view.interval.as_nanos() as u64,
        tcp: crate::aggregate::tcp::TcpConfig::from_args(&view.tcp, port_range),
        self_pid: (timebase == Timebase::Live).then(std::process::id),
        ..TopConfig::default()
    };
    let mut st = TopState::new(config, clock, timebase);
    if let Some(sort) = view.sort {
        st.ui.sort = sort_key(sort);
    }
    if let Some(f) = &view.filter {
        st.ui.filter = f.clone();
    }
    st
}

/// The table column of a `--sort` value.
pub fn sort_key(s: TopSort) -> SortKey {
    match s {
        TopSort::Cpu => SortKey::Cpu,
        TopSort::Opens => SortKey::Opens,
        TopSort::Closes => SortKey::Closes,
        TopSort::Estab => SortKey::Estab,
        TopSort::TimeWait => SortKey::TimeWait,
        TopSort::CloseWait => SortKey::CloseWait,
        TopSort::Resets => SortKey::Resets,
        TopSort::Retrans => SortKey::Retrans,
        TopSort::Oom => SortKey::Oom,
        TopSort::Pid => SortKey::Pid,
        TopSort::Name => SortKey::Comm,
    }
}

/// Batch mode writes snapshots; the terminal is left alone.
pub fn is_batch(view: &TopView) -> bool {
    view.batch || view.once || view.json || view.count.is_some() || !io::stdout().is_terminal()
}

/// One snapshot to `out`, text or JSON.
pub fn print_snapshot(st: &TopState, json: bool, out: &mut impl Write) -> io::Result<()> {
    if json {
        writeln!(out, "{}", render::render_json(st))?;
    } else {
        writeln!(out, "{}", render::render_text(st))?;
    }
    out.flush()
}

/// Puts the terminal in raw mode on the alternate screen, and back when
/// dropped, on panic too.
struct TerminalGuard {
    terminal: Terminal<CrosstermBackend<io::Stdout>>,
}

/// The screen is ours: set while the alternate screen is up.
static SCREEN_TAKEN: AtomicBool = AtomicBool::new(false);

/// Give the terminal back, once (leaving the alternate screen twice would
/// move the cursor back over what was printed in between, e.g. a panic).
fn restore_terminal() {
    if SCREEN_TAKEN.swap(false, Ordering::SeqCst) {
        let _ = terminal::disable_raw_mode();
        let _ = execute!(io::stdout(), LeaveAlternateScreen, cursor::Show);
    }
}

impl TerminalGuard {
    fn enter() -> io::Result<TerminalGuard> {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous(info);
        }));
        SCREEN_TAKEN.store(true, Ordering::SeqCst);
        if let Err(e) = terminal::enable_raw_mode() {
            restore_terminal();
            return Err(e);
        }
        let mut stdout = io::stdout();
        if let Err(e) = execute!(stdout, EnterAlternateScreen, cursor::Hide) {
            restore_terminal();
            return Err(e);
        }
        match Terminal::new(CrosstermBackend::new(stdout)) {
            Ok(terminal) => Ok(TerminalGuard { terminal }),
            Err(e) => {
                restore_terminal();
                Err(e)
            }
        }
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Reads the keyboard in a thread (crossterm blocks) until stopped. The
/// thread is never joined: when the terminal is gone (a closed ssh session,
/// a killed tmux), crossterm's read can spin without returning, and diag
/// must still exit (the thread ends with the process).
struct Input {
    stop: Arc<AtomicBool>,
}

impl Input {
    fn start() -> (Input, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match event::poll(Duration::from_millis(100)) {
                    Ok(true) => match event::read() {
                        Ok(ev) => {
                            if tx.send(ev).is_err() {
                                break;
                            }
                        }
                        Err(_) => break,
                    },
                    Ok(false) => {}
                    Err(_) => break,
                }
            }
        });
        (Input { stop }, rx)
    }
}

impl Drop for Input {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Where `top`'s frames come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frames {
    /// Live: a frame with each host sample (every interval; the first is
    /// the baseline).
    Host,
    /// Replay: the events' time drives the frames.
    Events,
}

/// Fold `msg` into `st`. Live, a host sample is a new frame: returns
/// whether there is a new frame to show (replay: the events' time made
/// one).
fn feed(st: &mut TopState, frames: Frames, msg: &Msg, on_frame: &mut dyn FnMut(&TopState)) {
    match (frames, msg) {
        (Frames::Host, Msg::Host(s)) => {
            let first = !st.host_sampled();
            st.on_host((**s).clone());
            if !first {
                st.tick(boot_ns());
                on_frame(st);
            }
        }
        _ => st.on_msg(msg, on_frame),
    }
}

/// The interactive screen, until `q`, Ctrl-C or a signal. A replay's
/// screen stays after the end of the recording, for browsing, until `q`.
pub struct TopTui {
    pub st: TopState,
    frames: Frames,
    guard: TerminalGuard,
    /// Keeps the keyboard thread; the drive loop gets its events.
    _input: Input,
    panic_for_test: bool,
}

impl TopTui {
    /// Take the terminal; the keyboard's events are for [`crate::sink::drive`].
    pub fn start(
        st: TopState,
        frames: Frames,
    ) -> anyhow::Result<(TopTui, mpsc::UnboundedReceiver<Event>)> {
        let guard = TerminalGuard::enter()
            .map_err(|e| anyhow::anyhow!("cannot set up the terminal ({e}); try --batch"))?;
        let (input, rx) = Input::start();
        let mut tui = TopTui {
            st,
            frames,
            guard,
            _input: input,
            // For the tests: a panic with the screen up must give the
            // terminal back.
            panic_for_test: std::env::var_os("DIAG_TOP_PANIC_FOR_TEST").is_some(),
        };
        tui.draw()?;
        Ok((tui, rx))
    }

    fn draw(&mut self) -> anyhow::Result<()> {
        let st = &self.st;
        self.guard.terminal.draw(|f| render::draw(f, st))?;
        if self.panic_for_test {
            panic!("DIAG_TOP_PANIC_FOR_TEST is set: a deliberate panic");
        }
        Ok(())
    }
}

impl Sink for TopTui {
    fn on_msg(&mut self, msg: &Msg) -> anyhow::Result<Flow> {
        let mut framed = false;
        feed(&mut self.st, self.frames, msg, &mut |_| framed = true);
        if framed {
            self.draw()?;
        }
        Ok(Flow::More)
    }

    fn on_input(&mut self, ev: &Event) -> anyhow::Result<Flow> {
        match ev {
            Event::Key(k) if k.kind != KeyEventKind::Release => {
                if self.st.on_key(*k) == Action::Quit {
                    return Ok(Flow::Done);
                }
            }
            Event::Resize(..) => {
                self.guard.terminal.autoresize()?;
            }
            _ => return Ok(Flow::More),
        }
        self.draw()?;
        Ok(Flow::More)
    }

    fn finish(&mut self, end: &End) -> anyhow::Result<Flow> {
        match self.frames {
            Frames::Host => {
                restore_terminal();
                report_losses(&end.health);
                Ok(Flow::Done)
            }
            Frames::Events => {
                // The end of the recording: its last part, then browse.
                let last = self.st.last_ts();
                self.st.flush_oom(last, true);
                self.st.tick(last);
                self.draw()?;
                Ok(Flow::More)
            }
        }
    }
}

fn report_losses(h: &crate::bus::Health) {
    if let Some(l) = h.losses() {
        tracing::warn!("incomplete: {l}");
    }
}

/// Snapshots to standard output, like `top -b`. Live: one per interval
/// up to --count (--once: one). Replay: every --interval of its time with
/// --batch (up to --count), else one at its end.
pub struct TopBatch {
    pub st: TopState,
    frames: Frames,
    json: bool,
    limit: u64,
    printed: u64,
    out: Output,
}

impl TopBatch {
    pub fn new(st: TopState, frames: Frames, view: &TopView) -> Self {
        let limit = match (frames, view.once, view.count, view.batch) {
            (_, true, _, _) => 1,
            (_, false, Some(n), _) => n,
            (Frames::Host, false, None, _) | (Frames::Events, false, None, true) => u64::MAX,
            // A replay without --batch: only the final snapshot.
            (Frames::Events, false, None, false) => 0,
        };
        TopBatch {
            st,
            frames,
            json: view.json,
            limit,
            printed: 0,
            out: Output::stdout(),
        }
    }
}

impl Sink for TopBatch {
    fn on_msg(&mut self, msg: &Msg) -> anyhow::Result<Flow> {
        let (limit, json) = (self.limit, self.json);
        let (printed, out) = (&mut self.printed, &mut self.out);
        let mut failed = None;
        feed(&mut self.st, self.frames, msg, &mut |s| {
            if *printed < limit && failed.is_none() {
                *printed += 1;
                failed = print_snapshot(s, json, out).err();
            }
        });
        if let Some(e) = failed {
            return flow_of(Err(e));
        }
        Ok(if self.limit > 0 && self.printed >= self.limit {
            Flow::Done
        } else {
            Flow::More
        })
    }

    fn finish(&mut self, end: &End) -> anyhow::Result<Flow> {
        if self.frames == Frames::Events && self.printed < self.limit.max(1) {
            let last = self.st.last_ts();
            self.st.flush_oom(last, true);
            self.st.tick(last);
            flow_of(print_snapshot(&self.st, self.json, &mut self.out))?;
        }
        self.out.close(Duration::from_secs(1));
        if self.frames == Frames::Host {
            report_losses(&end.health);
        }
        Ok(Flow::Done)
    }
}

#[cfg(test)]
mod tests;
