//! `diag runq`: the scheduler programs alone, their maps read every
//! interval (the scheduler source) into the runq sink.

use std::process::ExitCode;

use crate::{
    cli::{EventClass, RunqArgs},
    clock::{WallClock, boot_ns},
    loader,
    sink::drive,
    source::sched,
    view::{out::Output, runq::RunqSink},
};

pub fn run(args: RunqArgs) -> anyhow::Result<ExitCode> {
    let classes: &[EventClass] = if args.locks {
        &[EventClass::Stall, EventClass::Memstall, EventClass::Lock]
    } else {
        &[EventClass::Stall, EventClass::Memstall]
    };
    let mut env = loader::require_for(&args.probe, classes)?;
    env.keep_sched_procs();
    let block = !args.no_io;
    if block {
        env.want_block(&args.probe)?;
    }
    env.with_swap();
    let memory = env.memory.is_some();
    // runq reads the scheduler's maps, never the ring buffer: process
    // exit events would only fill it.
    env.proc = None;
    let tracer = loader::load(&env, &args.probe)?;
    let start_ns = boot_ns();
    super::runtime()?.block_on(async move {
        let source = sched::start(
            tracer,
            args.interval,
            args.pid.iter().copied().collect(),
            block,
            memory,
            args.locks,
        )?;
        tracing::info!("tracing {}; Ctrl-C to stop", source.attached.join(", "));
        let mut sink = RunqSink::new(args, WallClock::now(), start_ns, Output::stdout());
        drive(source, &mut [&mut sink], None).await?;
        Ok(ExitCode::SUCCESS)
    })
}
