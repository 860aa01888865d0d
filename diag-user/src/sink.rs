//! Sinks and the one loop that drives them.
//!
//! A sink is fed the bus's messages, is woken when its clock is due, and
//! is told when the source ended. [`drive`] runs any number of sinks on
//! one source with one cancellation token: `serve --record` is the
//! exporter and the recorder on one loop.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::{
    bus::{End, Msg},
    clock::boot_ns,
    source::Source,
};

/// Terminal input (keys, resizes) for interactive sinks.
pub type UiEvent = ratatui::crossterm::event::Event;

/// Whether a sink wants more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    More,
    /// This sink is done (a count reached, `q`, a closed pipe): when every
    /// sink is, the source is stopped.
    Done,
}

pub trait Sink {
    /// A message from the source.
    fn on_msg(&mut self, msg: &Msg) -> anyhow::Result<Flow>;

    /// When `on_tick` is next due, in boot-time ns (live sinks with an
    /// interval); None: never (sinks driven by event time).
    fn due(&self) -> Option<u64> {
        None
    }

    /// The clock reached [`Sink::due`].
    fn on_tick(&mut self, _now_ns: u64) -> anyhow::Result<Flow> {
        Ok(Flow::More)
    }

    /// Terminal input, for interactive sinks.
    fn on_input(&mut self, _ev: &UiEvent) -> anyhow::Result<Flow> {
        Ok(Flow::More)
    }

    /// The source ended (drained, detached). `More` keeps the loop going
    /// for input and ticks (a replay's screen stays for browsing) until
    /// the sink says `Done`.
    fn finish(&mut self, end: &End) -> anyhow::Result<Flow>;
}

/// Feed everything `source` produces to `sinks` until it ends, then
/// finish them. The source is stopped when every sink is done, when one
/// fails (its error is returned once the others finished), or on SIGINT,
/// SIGTERM or SIGHUP (the source's token). Returns how the source ended.
pub async fn drive(
    mut source: Source,
    sinks: &mut [&mut dyn Sink],
    mut ui: Option<mpsc::UnboundedReceiver<UiEvent>>,
) -> anyhow::Result<End> {
    let mut st = States::new(sinks.len());
    let mut end: Option<End> = None;
    loop {
        if end.is_none() && st.all_done() {
            source.cancel.cancel();
        }
        if end.is_some() && !st.any_lingering() {
            break;
        }
        let due = sinks
            .iter()
            .enumerate()
            .filter(|(i, _)| st.awake(*i, end.is_some()))
            .filter_map(|(_, s)| s.due())
            .min();
        let sleep = async {
            match due {
                Some(d) => {
                    tokio::time::sleep(Duration::from_nanos(d.saturating_sub(boot_ns()))).await
                }
                None => std::future::pending().await,
            }
        };
        let input = async {
            match &mut ui {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            msg = source.rx.recv(), if end.is_none() => match msg {
                Some(msg) => {
                    for (i, s) in sinks.iter_mut().enumerate() {
                        if st.awake(i, false) {
                            st.apply(i, s.on_msg(&msg));
                        }
                    }
                }
                None => {
                    let e = (&mut source.done).await?;
                    for (i, s) in sinks.iter_mut().enumerate() {
                        if st.failed[i] {
                            continue;
                        }
                        match s.finish(&e) {
                            Ok(Flow::More) => st.lingering[i] = ui.is_some(),
                            Ok(Flow::Done) => {}
                            Err(err) => {
                                st.error.get_or_insert(err);
                            }
                        }
                    }
                    end = Some(e);
                }
            },
            _ = sleep => {
                let now = boot_ns();
                let ended = end.is_some();
                for (i, s) in sinks.iter_mut().enumerate() {
                    if st.awake(i, ended) && s.due().is_some_and(|d| d <= now) {
                        st.apply(i, s.on_tick(now));
                    }
                }
            }
            ev = input => match ev {
                Some(ev) => {
                    let ended = end.is_some();
                    for (i, s) in sinks.iter_mut().enumerate() {
                        if st.awake(i, ended) {
                            st.apply(i, s.on_input(&ev));
                        }
                    }
                }
                // The terminal is gone: nobody is left to look.
                None => {
                    ui = None;
                    st.all_stop();
                }
            },
            _ = source.cancel.cancelled(), if end.is_some() => st.all_stop(),
        }
    }
    match st.error {
        Some(e) => Err(e),
        None => Ok(end.unwrap_or_default()),
    }
}

/// Where each sink of a [`drive`] loop stands.
struct States {
    /// Wants no more messages.
    done: Vec<bool>,
    /// Failed: not finished.
    failed: Vec<bool>,
    /// Finished, but still wants input and ticks.
    lingering: Vec<bool>,
    error: Option<anyhow::Error>,
}

impl States {
    fn new(n: usize) -> Self {
        States {
            done: vec![false; n],
            failed: vec![false; n],
            lingering: vec![false; n],
            error: None,
        }
    }

    fn apply(&mut self, i: usize, r: anyhow::Result<Flow>) {
        match r {
            Ok(Flow::More) => {}
            Ok(Flow::Done) => {
                self.done[i] = true;
                self.lingering[i] = false;
            }
            Err(e) => {
                self.done[i] = true;
                self.failed[i] = true;
                self.lingering[i] = false;
                self.error.get_or_insert(e);
            }
        }
    }

    /// Sink `i` is to be called: before the end while not done, after
    /// it while lingering.
    fn awake(&self, i: usize, ended: bool) -> bool {
        if ended {
            self.lingering[i]
        } else {
            !self.done[i]
        }
    }

    fn all_done(&self) -> bool {
        self.done.iter().all(|&d| d)
    }

    fn any_lingering(&self) -> bool {
        self.lingering.iter().any(|&l| l)
    }

    fn all_stop(&mut self) {
        self.done.iter_mut().for_each(|d| *d = true);
        self.lingering.iter_mut().for_each(|l| *l = false);
    }
}
