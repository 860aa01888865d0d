//! `diag replay FILE VIEW`: a recording as the source, the view's sink.

use std::process::ExitCode;

use crate::{
    cli::{ReplayArgs, ReplayView},
    sink::drive,
    source::replay::{self, closing_words},
    view::{
        conns::{ConnsOut, ConnsSink, Timebase},
        out::Output,
        tail::{Names, Tail, TailSink},
        top::{Frames, TopBatch, TopTui, is_batch, new_state},
    },
};

pub fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let reader = replay::open(&args.file)?;
    let header = reader.header.clone();
    let mut window = replay::window(args.from.as_deref(), args.to.as_deref(), &header)?;
    let at = args
        .at
        .as_deref()
        .map(|s| replay::parse_time(s, &header).map(|ts| (s.to_string(), ts)))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    if let Some((_, ts)) = &at {
        if args.from.is_some() || args.to.is_some() {
            anyhow::bail!(
                "--at is one instant and --from/--to a stretch of time: give one or the other"
            );
        }
        if !matches!(args.view, ReplayView::Conns(_)) {
            anyhow::bail!(
                "--at shows the state at one instant, which `replay FILE conns --at TIME` prints; tail and top play a stretch of time: use --from and --to with them"
            );
        }
        window.to = Some(*ts);
    }
    let clock = header.clock();
    // Recordings from before process exits were traced: guess pid reuse.
    let guess_pid_reuse = !header.has_exits();
    super::runtime()?.block_on(async move {
        tracing::info!(
            "replaying {} (host {}, kernel {}, recorded {})",
            args.file.display(),
            header.hostname,
            header.kernel,
            clock
                .wall(header.started_ts_ns)
                .format("%Y-%m-%d %H:%M:%S %Z")
        );
        let source = replay::start(reader, window, args.speed);
        let end = match args.view {
            ReplayView::Tail(view) => {
                if !view.cgroup.is_empty() {
                    anyhow::bail!(
                        "--cgroup reads where processes run from /proc, which a recording does not keep for TCP processes: use it with a live `diag tail`"
                    );
                }
                let tail = Tail::new(&view, Names::of_header(&header), clock);
                let mut sink = TailSink::new(tail, Output::stdout());
                sink.header()?;
                drive(source, &mut [&mut sink], None).await?
            }
            ReplayView::Conns(view) => {
                if !view.cgroup.is_empty() || view.group.is_some() {
                    anyhow::bail!(
                        "--cgroup and --group read where processes run from /proc, which a recording does not keep for TCP processes: use them with a live `diag conns`"
                    );
                }
                if at.is_some() && (view.watch || view.count.is_some()) {
                    anyhow::bail!(
                        "--at prints one snapshot, at that instant: leave out --watch and --count"
                    );
                }
                let mut sink = ConnsSink::new(view, header.port_range, clock, Timebase::Events);
                if let Some((_, ts)) = &at {
                    sink = sink.at(*ts);
                }
                sink.agg.config.guess_pid_reuse = guess_pid_reuse;
                sink.agg.set_drop_reason_names(&header.drop_reasons);
                let mut sink = ConnsOut::new(sink, None);
                sink.at_words = at.clone().map(|(w, ts)| (w, ts, header.clone()));
                drive(source, &mut [&mut sink], None).await?
            }
            ReplayView::Top(view) => {
                let mut st = new_state(&view, header.port_range, clock, Timebase::Events);
                st.agg.config.guess_pid_reuse = guess_pid_reuse;
                st.agg.set_drop_reason_names(&header.drop_reasons);
                if is_batch(&view) {
                    let mut sink = TopBatch::new(st, Frames::Events, &view);
                    drive(source, &mut [&mut sink], None).await?
                } else {
                    let (mut sink, keys) = TopTui::start(st, Frames::Events)?;
                    let _logs = crate::logging::hold_while_screen_is_up();
                    drive(source, &mut [&mut sink], Some(keys)).await?
                }
            }
        };
        if let Some(w) = end.replay.as_ref().and_then(closing_words) {
            tracing::info!("{w}");
        }
        Ok(ExitCode::SUCCESS)
    })
}
