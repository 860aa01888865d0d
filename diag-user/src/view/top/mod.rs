//! `diag top`: the live USE view of the host, per process.
//!
//! [`state`] is the model (pure, fed by messages, procfs samples and a
//! clock), [`render`] draws it (pure). This module is the edge: the
//! terminal, the keyboard, procfs, the live source.

pub mod render;
pub mod state;

use std::{
    io::{self, IsTerminal, Write},
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use diag_common::user::AnyEvent;
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
    Msg,
    aggregate::tcp::TcpConfig,
    cli::{EventClass, TopArgs, TopSort, TopView},
    clock::{WallClock, boot_ns},
    enrich::{self, oom::CgroupIndex},
    host::{BpfStats, HostReader},
    loader,
    source::live::Live,
    view::{
        LiveSession,
        conns::{Timebase, ignore_broken_pipe},
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
        tcp: TcpConfig {
            close_wait_threshold_ns: view.close_wait_threshold.as_nanos() as u64,
            port_range: port_range.unwrap_or(TcpConfig::default().port_range),
            pressure_warn: view.pressure_warn / 100.0,
            ..TcpConfig::default()
        },
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

/// Tell the state the memory cgroup paths of the OOM kills in `msg`
/// (procfs: the kernel reports them as directory inode numbers).
fn learn_memcgs(index: &mut CgroupIndex, msg: &Msg, st: &mut TopState) {
    let Msg::Events(evs) = msg else { return };
    for e in evs {
        if let AnyEvent::OomKill(o) = e {
            for ino in [o.victim_memcg_ino, o.oom_memcg_ino] {
                if ino != 0
                    && !st.memcg_paths.contains_key(&ino)
                    && let Some(p) = index.path(ino)
                {
                    st.memcg_paths.insert(ino, p);
                }
            }
        }
    }
}

/// A procfs sample, read off the runtime's thread (thousands of files on
/// a busy host) so the live source keeps draining meanwhile.
async fn sample(reader: &mut HostReader) -> crate::host::HostSample {
    let mut r = std::mem::take(reader);
    match tokio::task::spawn_blocking(move || {
        let s = r.sample();
        (r, s)
    })
    .await
    {
        Ok((r, s)) => {
            *reader = r;
            s
        }
        Err(_) => {
            *reader = HostReader::new();
            crate::host::HostSample::default()
        }
    }
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
    rx: mpsc::UnboundedReceiver<Event>,
    stop: Arc<AtomicBool>,
}

impl Input {
    fn start() -> Input {
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
        Input { rx, stop }
    }
}

impl Drop for Input {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The interactive screen, until `q`, Ctrl-C or a signal. Live (`host`
/// given): a frame every interval with procfs numbers. Replay: the
/// events' time drives the frames, and the screen stays after the end of
/// the recording until `q`.
async fn drive_tui(
    rx: &mut mpsc::Receiver<Msg>,
    cancel: &tokio_util::sync::CancellationToken,
    st: &mut TopState,
    mut host: Option<(&mut HostReader, &mut CgroupIndex)>,
) -> anyhow::Result<()> {
    let mut guard = TerminalGuard::enter()
        .map_err(|e| anyhow::anyhow!("cannot set up the terminal ({e}); try --batch"))?;
    let mut input = Input::start();
    let interval = Duration::from_nanos(st.config.interval_ns);
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval_at(start + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let live = host.is_some();
    let mut source_open = true;
    let mut dirty = true;
    // For the tests: a panic with the screen up must give the terminal back.
    let panic_for_test = std::env::var_os("DIAG_TOP_PANIC_FOR_TEST").is_some();
    loop {
        if dirty {
            guard.terminal.draw(|f| render::draw(f, st))?;
            dirty = false;
            if panic_for_test {
                panic!("DIAG_TOP_PANIC_FOR_TEST is set: a deliberate panic");
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            msg = rx.recv(), if source_open => match msg {
                Some(m) => {
                    if let Some((_, index)) = host.as_mut() {
                        learn_memcgs(index, &m, st);
                    }
                    let mut ticked = false;
                    st.on_msg(m, &mut |_| ticked = true);
                    dirty |= ticked;
                }
                None if live => break,
                None => {
                    // The end of the recording: its last part, then browse.
                    source_open = false;
                    st.tick(st.last_ts());
                    dirty = true;
                }
            },
            _ = tick.tick(), if live => {
                if let Some((reader, _)) = host.as_mut() {
                    st.on_host(sample(reader).await);
                    st.tick(boot_ns());
                    dirty = true;
                }
            }
            ev = input.rx.recv() => match ev {
                Some(Event::Key(k)) if k.kind != KeyEventKind::Release => {
                    if st.on_key(k) == Action::Quit {
                        break;
                    }
                    dirty = true;
                }
                Some(Event::Resize(..)) => {
                    guard.terminal.autoresize()?;
                    dirty = true;
                }
                Some(_) => {}
                // The keyboard is gone (the terminal closed).
                None => break,
            },
        }
    }
    cancel.cancel();
    drop(input);
    drop(guard);
    Ok(())
}

/// Snapshots to stdout, like `top -b`.
async fn drive_batch(
    session: &mut LiveSession,
    st: &mut TopState,
    reader: &mut HostReader,
    index: &mut CgroupIndex,
    view: &TopView,
) -> anyhow::Result<()> {
    let limit = if view.once {
        1
    } else {
        view.count.unwrap_or(u64::MAX)
    };
    let interval = view.interval;
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval_at(start + interval, interval);
    let mut printed = 0;
    let mut out = io::stdout();
    loop {
        tokio::select! {
            msg = session.rx.recv() => match msg {
                Some(m) => {
                    learn_memcgs(index, &m, st);
                    st.on_msg(m, &mut |_| {});
                }
                None => break,
            },
            _ = tick.tick() => {
                st.on_host(sample(reader).await);
                st.tick(boot_ns());
                printed += 1;
                if let Err(e) = print_snapshot(st, view.json, &mut out) {
                    session.cancel.cancel();
                    ignore_broken_pipe(e)?;
                    break;
                }
                if printed >= limit {
                    break;
                }
            }
        }
    }
    Ok(())
}

/// `diag top`.
pub fn run(args: TopArgs) -> anyhow::Result<ExitCode> {
    let batch = is_batch(&args.view);
    // Run-queue latency and blocked time come from the scheduler probes,
    // unless --no-sched leaves them (and their cost) out.
    let mut classes = vec![EventClass::Tcp, EventClass::Oom];
    if !args.no_sched {
        classes.push(EventClass::Stall);
    }
    let mut env = loader::require_for(&args.probe, &classes)?;
    env.keep_sched_procs();
    let mut tracer = loader::load(&env, &args.probe)?;
    let sched_feed = match env.sched {
        Some(_) => Some(crate::host::SchedFeed::new(
            crate::probes::sched::SchedMaps::take(&mut tracer.ebpf)?,
        )),
        None => None,
    };
    let live = Live::new(tracer)?;
    // While top runs, the kernel counts the run time of BPF programs.
    let bpf_stats = BpfStats::enable();
    let mut index = CgroupIndex::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let mut session = LiveSession::start(live, Some(args.view.reconcile));
        eprintln!(
            "diag: tracing {}; {}",
            session.attached.join(", "),
            if batch {
                format!(
                    "a snapshot every {}",
                    humantime::format_duration(args.view.interval)
                )
            } else {
                "q quits, ? helps".to_string()
            }
        );
        if !bpf_stats.enabled {
            eprintln!(
                "diag: BPF run-time statistics could not be switched on: diag's own CPU use is not shown"
            );
        }
        let mut st = new_state(
            &args.view,
            enrich::local_port_range(),
            WallClock::now(),
            Timebase::Live,
        );
        let mut reader = HostReader::new();
        reader.sched = sched_feed;
        // The baselines for the first interval's rates and CPU numbers.
        st.start(boot_ns());
        st.on_host(reader.sample());
        let r = if batch {
            drive_batch(&mut session, &mut st, &mut reader, &mut index, &args.view).await
        } else {
            drive_tui(
                &mut session.rx,
                &session.cancel,
                &mut st,
                Some((&mut reader, &mut index)),
            )
            .await
        };
        session.cancel.cancel();
        // Drain and detach whatever happens above.
        while session.rx.recv().await.is_some() {}
        let health = session.source.await;
        r?;
        let health = health??;
        if let Some(l) = health.losses() {
            eprintln!("diag: incomplete: {l}");
        }
        Ok::<_, anyhow::Error>(())
    });
    drop(bpf_stats);
    result?;
    Ok(ExitCode::SUCCESS)
}

/// `diag replay FILE top`: on a terminal, the screen (paced by --speed;
/// it stays after the end until `q`). Otherwise snapshots of the
/// recording, every --interval of its time with --batch (up to --count),
/// else one at its end.
pub async fn replay(
    view: &TopView,
    port_range: Option<(u16, u16)>,
    guess_pid_reuse: bool,
    clock: WallClock,
    rx: &mut mpsc::Receiver<Msg>,
    cancel: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let mut st = new_state(view, port_range, clock, Timebase::Events);
    st.agg.config.guess_pid_reuse = guess_pid_reuse;
    if !is_batch(view) {
        return drive_tui(rx, cancel, &mut st, None).await;
    }
    let limit = match (view.once, view.count, view.batch) {
        (true, _, _) => 1,
        (false, Some(n), _) => n,
        (false, None, true) => u64::MAX,
        // Only the final snapshot.
        (false, None, false) => 0,
    };
    let mut out = io::stdout();
    let mut printed = 0u64;
    let mut failed: Option<io::Error> = None;
    while let Some(msg) = rx.recv().await {
        st.on_msg(msg, &mut |s| {
            if printed < limit && failed.is_none() {
                printed += 1;
                if let Err(e) = print_snapshot(s, view.json, &mut out) {
                    failed = Some(e);
                }
            }
        });
        if failed.is_some() || (limit > 0 && printed >= limit) {
            cancel.cancel();
            break;
        }
    }
    if let Some(e) = failed {
        ignore_broken_pipe(e)?;
        return Ok(());
    }
    if printed < limit.max(1) {
        let end = st.last_ts();
        st.tick(end);
        print_snapshot(&st, view.json, &mut out).or_else(ignore_broken_pipe)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
