//! `diag conns`: the live source with the socket table, one conns sink.

use std::process::ExitCode;

use crate::{
    cli::ConnsArgs,
    clock::{WallClock, boot_ns},
    enrich, loader,
    sink::drive,
    source::live::{self, Feeds, Live},
    view::conns::{ConnsOut, ConnsSink, Timebase},
};

pub fn run(args: ConnsArgs) -> anyhow::Result<ExitCode> {
    let env = loader::require(&args.probe)?;
    let drop_reasons = env
        .tcp
        .as_ref()
        .map(|t| t.drop_reasons.clone())
        .unwrap_or_default();
    let live = Live::new(loader::load(&env, &args.probe)?)?;
    super::runtime()?.block_on(async move {
        let feeds = Feeds {
            tables: Some(args.view.tcp.reconcile),
            placements: true,
            ..Feeds::default()
        };
        let source = live::start(live, feeds);
        let interval = args.view.interval;
        tracing::info!(
            "tracing {}; a snapshot every {}{}",
            source.attached.join(", "),
            humantime::format_duration(interval),
            if args.view.watch {
                ", Ctrl-C to stop"
            } else {
                ""
            }
        );
        let sink = ConnsSink::new(
            args.view,
            enrich::local_port_range(),
            WallClock::now(),
            Timebase::Live,
        );
        let mut sink = sink;
        sink.agg.set_drop_reason_names(&drop_reasons);
        let mut sink = ConnsOut::new(sink, Some(boot_ns()));
        drive(source, &mut [&mut sink], None).await?;
        Ok(ExitCode::SUCCESS)
    })
}
