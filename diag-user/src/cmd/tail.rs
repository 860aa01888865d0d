//! `diag tail`: the live source, one tail sink.

use std::process::ExitCode;

use crate::{
    cli::{EventClass, TailArgs},
    clock::WallClock,
    loader,
    sink::drive,
    source::live::{self, Feeds, Live},
    view::{
        out::Output,
        tail::{Names, Tail, TailSink},
    },
};

pub fn run(args: TailArgs) -> anyhow::Result<ExitCode> {
    let env = loader::require_for(&args.probe, &args.view.events)?;
    let names = Names::of_env(&env);
    let live = Live::new(loader::load(&env, &args.probe)?)?;
    let events = &args.view.events;
    let oom_context = events.is_empty() || events.contains(&EventClass::Oom);
    let memstall = events.contains(&EventClass::Memstall);
    super::runtime()?.block_on(async move {
        let placements = args.view.json || !args.view.cgroup.is_empty();
        let source = live::start(
            live,
            Feeds {
                oom_context,
                placements,
                ..Feeds::default()
            },
        );
        tracing::info!("tracing {}; Ctrl-C to stop", source.attached.join(", "));
        let mut tail = Tail::new(&args.view, names, WallClock::now());
        // Live: where each process runs, for JSON lines and --cgroup.
        tail.placements = placements.then(Default::default);
        if memstall {
            tail.mem_enrich = Some(crate::enrich::memory::MemEnricher::new());
        }
        let mut sink = TailSink::new(tail, Output::stdout());
        sink.header()?;
        drive(source, &mut [&mut sink], None).await?;
        Ok(ExitCode::SUCCESS)
    })
}
