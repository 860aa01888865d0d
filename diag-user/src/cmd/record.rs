//! `diag record`: the live source with socket and process tables and OOM
//! context, into a recorder sink (a file) or a flight-recorder sink (a
//! file per incident).

use std::process::ExitCode;

use crate::{
    aggregate::filter::Filter,
    cli::{EventClass, RecordArgs},
    host::SchedFeed,
    loader,
    probes::sched::SchedMaps,
    record::{self, PROCS_EVERY, flight, writer},
    recorder::{FlightSink, Recorder},
    sink::{Sink, drive},
    source::{
        Source,
        live::{self, Feeds, Live},
    },
};

pub fn run(args: RecordArgs) -> anyhow::Result<ExitCode> {
    let mut env = loader::require_for(&args.probe, &args.events)?;
    // With stalls, every process's run-queue waits too (once a second,
    // the kernel's histograms): the report's latency heatmap. Not in the
    // flight recorder, which keeps events only.
    let sched = args.events.contains(&EventClass::Stall) && args.trigger.is_empty();
    if sched {
        env.keep_sched_procs();
    }
    // With memory stalls, a memory frame once a second (every process's
    // reclaim, compaction, swap): not in the flight recorder either.
    let memory = args.events.contains(&EventClass::Memstall) && args.trigger.is_empty();
    if memory {
        env.with_swap();
    }
    let filter = Filter::new(&EventClass::with_exits(&args.events), &args.only);
    let header = record::header_now(&env);
    let mut feeds = Feeds {
        tables: Some(args.tcp.reconcile),
        procs: args.trigger.is_empty().then_some(PROCS_EVERY),
        // The kernel's stall accounting (PSI), once a second; not in the
        // flight recorder, which keeps events only.
        pressure: args.trigger.is_empty().then(|| {
            (
                crate::source::pressure::PRESSURE_EVERY,
                crate::source::pressure::PressureFeed::new(),
            )
        }),
        // What user space learns about each OOM kill (cgroup paths, top
        // memory users) is recorded too, in a frame after the kill's.
        oom_context: args.events.contains(&EventClass::Oom),
        ..Feeds::default()
    };
    let mut sink: Box<dyn Sink> = if args.trigger.is_empty() {
        // Create the file first: a bad path fails before anything is loaded.
        let opts = writer::WriterOptions {
            compress: !args.no_compress,
            max_size: args.max_size,
            max_files: args.max_files,
        };
        let w = writer::Writer::create(&args.output, header, opts)?;
        Box::new(Recorder::new(w, filter, args.output.display().to_string()))
    } else {
        record::prepare_incident_dir(&args.output)?;
        let mut tcp = crate::aggregate::tcp::TcpConfig::from_args(&args.tcp, header.port_range);
        tcp.drop_reasons = header.drop_reasons.clone();
        let flight = flight::Flight::new(
            args.trigger.clone(),
            args.before.as_nanos() as u64,
            args.after.as_nanos() as u64,
            args.reset_storm,
            args.buffer_events,
            tcp,
        );
        let opts = writer::WriterOptions {
            compress: !args.no_compress,
            max_size: None,
            max_files: args.max_files,
        };
        Box::new(FlightSink::new(
            flight,
            filter,
            args.output.clone(),
            header,
            opts,
            args.buffer_events,
            args.before,
        ))
    };
    let mut tracer = loader::load(&env, &args.probe)?;
    if sched && env.sched.is_some() {
        feeds.sched = Some((
            record::SCHED_EVERY,
            SchedFeed::new(SchedMaps::take(&mut tracer.ebpf)?),
        ));
    }
    // With io events (slow requests), block I/O per device and process
    // too, once a second (the report's USE block); not in the flight
    // recorder.
    if env.block.is_some() && args.trigger.is_empty() {
        feeds.block = Some((
            crate::source::block::BLOCK_EVERY,
            crate::source::block::BlockFeed::new(&mut tracer.ebpf, crate::clock::boot_ns())?,
        ));
    }
    if memory && env.memory.is_some() {
        feeds.memory = Some((
            crate::source::memory::MEMORY_EVERY,
            crate::source::memory::MemoryFeed::new(crate::probes::memory::MemMaps::take(
                &mut tracer.ebpf,
            )?),
        ));
    }
    if args.trigger.is_empty() && env.lock.is_some() {
        feeds.locks = Some((
            crate::source::lock::LOCK_EVERY,
            crate::source::lock::LockFeed::new(crate::probes::lock::LockMaps::take(
                &mut tracer.ebpf,
            )?),
        ));
    }
    let live = Live::new(tracer)?;
    super::runtime()?.block_on(async move {
        let source = live::start(live, feeds);
        stop_after(&source, args.duration);
        let until = args
            .duration
            .map(|d| format!(" for {}", humantime::format_duration(d)))
            .unwrap_or_default();
        if args.trigger.is_empty() {
            tracing::info!(
                "recording {} to {}{until}; Ctrl-C to stop",
                source.attached.join(", "),
                args.output.display(),
            );
        } else {
            let kinds: Vec<String> = args
                .trigger
                .iter()
                .filter_map(|t| {
                    clap::ValueEnum::to_possible_value(t).map(|v| v.get_name().to_string())
                })
                .collect();
            tracing::info!(
                "recording {} in memory (the last {}); a file in {} for each incident: {}{until}; Ctrl-C to stop",
                source.attached.join(", "),
                humantime::format_duration(args.before),
                args.output.display(),
                kinds.join(", ")
            );
        }
        drive(source, &mut [sink.as_mut()], None).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Stop `source` after `duration`, if given.
pub(crate) fn stop_after(source: &Source, duration: Option<std::time::Duration>) {
    if let Some(d) = duration {
        let cancel = source.cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            cancel.cancel();
        });
    }
}
