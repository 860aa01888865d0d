//! `diag serve`: the live source into the exporter sink, and with
//! `--record` into a recorder sink as well, on one loop.

use std::{process::ExitCode, time::Duration};

use crate::{
    aggregate::filter::Filter,
    cli::{EventClass, Only, ServeArgs},
    enrich,
    host::SchedFeed,
    loader,
    probes::sched::SchedMaps,
    record::{self, PROCS_EVERY, writer},
    recorder::Recorder,
    serve::{ExporterSink, bind_error, series::Bounds, serve_bounded},
    sink::{Sink, drive},
    source::live::{self, Feeds, Live},
};

/// How often the scheduler's maps are read.
const SCHED_EVERY: Duration = Duration::from_secs(1);

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut classes = vec![
        EventClass::Tcp,
        EventClass::Reset,
        EventClass::Retrans,
        EventClass::Drop,
        EventClass::Close,
        EventClass::Oom,
    ];
    if !args.no_sched {
        classes.push(EventClass::Stall);
    }
    // Memory stalls and swap: reclaim probes run only while the kernel
    // reclaims; the swap probes see every bio (one hash lookup each).
    classes.push(EventClass::Memstall);
    if args.locks {
        classes.push(EventClass::Lock);
    }
    let mut env = loader::require_for(&args.probe, &classes)?;
    let drop_reasons = env
        .tcp
        .as_ref()
        .map(|t| t.drop_reasons.clone())
        .unwrap_or_default();
    env.keep_sched_procs();
    if !args.no_io {
        env.want_block(&args.probe)?;
    }
    env.with_swap();
    // Bind and create the recording first: a port in use or a bad path
    // fails before anything is loaded into the kernel.
    let listener =
        std::net::TcpListener::bind(args.listen).map_err(|e| bind_error(args.listen, e))?;
    listener.set_nonblocking(true)?;
    let mut recorder = match &args.record {
        Some(path) => {
            let w = writer::Writer::create(
                path,
                record::header_now(&env),
                writer::WriterOptions {
                    compress: true,
                    max_size: None,
                    max_files: 10,
                },
            )?;
            let filter = Filter::new(&EventClass::with_exits(&classes), &Only::default());
            Some(Recorder::new(w, filter, path.display().to_string()))
        }
        None => None,
    };
    let mut tracer = loader::load(&env, &args.probe)?;
    let sched = match env.sched {
        Some(_) => Some((
            SCHED_EVERY,
            SchedFeed::new(SchedMaps::take(&mut tracer.ebpf)?),
        )),
        None => None,
    };
    let block = match env.block {
        Some(_) => Some((
            crate::source::block::BLOCK_EVERY,
            crate::source::block::BlockFeed::new(&mut tracer.ebpf, crate::clock::boot_ns())?,
        )),
        None => None,
    };
    let memory = match env.memory {
        Some(_) => Some((
            crate::source::memory::MEMORY_EVERY,
            crate::source::memory::MemoryFeed::new(crate::probes::memory::MemMaps::take(
                &mut tracer.ebpf,
            )?),
        )),
        None => None,
    };
    let locks = match env.lock {
        Some(_) => Some((
            crate::source::lock::LOCK_EVERY,
            crate::source::lock::LockFeed::new(crate::probes::lock::LockMaps::take(
                &mut tracer.ebpf,
            )?),
        )),
        None => None,
    };
    let live = Live::new(tracer)?;
    let rt = super::runtime()?;
    let result = rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let feeds = Feeds {
            tables: Some(args.tcp.reconcile),
            procs: recorder.is_some().then_some(PROCS_EVERY),
            sched,
            memory,
            locks,
            pressure: Some((
                crate::source::pressure::PRESSURE_EVERY,
                crate::source::pressure::PressureFeed::new(),
            )),
            block,
            oom_context: true,
            ..Feeds::default()
        };
        let source = live::start(live, feeds);
        let bounds = Bounds {
            top: usize::try_from(args.top).unwrap_or(usize::MAX),
            cgroups: usize::try_from(args.max_cgroups).unwrap_or(usize::MAX),
            grace_ns: u64::try_from(args.exit_grace.as_nanos()).unwrap_or(u64::MAX),
        };
        let mut tcp =
            crate::aggregate::tcp::TcpConfig::from_args(&args.tcp, enrich::local_port_range());
        tcp.drop_reasons = drop_reasons;
        let mut exporter =
            ExporterSink::new(bounds, tcp, source.attached.len(), source.cancel.clone());
        if args.no_sched {
            exporter.without_sched();
        }
        if args.no_io {
            exporter.without_block();
        }
        if args.locks {
            exporter.with_locks();
        }
        let app = exporter.router();
        let server = tokio::spawn(serve_bounded(listener, app, source.cancel.clone()));
        if !args.listen.ip().is_loopback() {
            tracing::warn!(
                "note: {} is not a loopback address: other hosts can read these metrics, which name processes and cgroups",
                args.listen
            );
        }
        tracing::info!(
            "tracing {}; serving metrics on http://{}/metrics{}; Ctrl-C to stop",
            source.attached.join(", "),
            args.listen,
            args.record
                .as_ref()
                .map(|p| format!(", recording to {}", p.display()))
                .unwrap_or_default()
        );
        let mut sinks: Vec<&mut dyn Sink> = vec![&mut exporter];
        if let Some(r) = recorder.as_mut() {
            sinks.push(r);
        }
        let r = drive(source, &mut sinks, None).await;
        // The server stops with the source; a client holding a
        // connection open does not keep diag from exiting.
        match tokio::time::timeout(Duration::from_secs(2), server).await {
            Ok(Ok(Ok(_))) | Err(_) => {}
            Ok(Ok(Err(e))) => tracing::warn!("the HTTP server failed: {e}"),
            Ok(Err(e)) => tracing::warn!("the HTTP server stopped: {e}"),
        }
        r.map(|_| ExitCode::SUCCESS)
    });
    // Do not wait for procfs reads still running on the blocking pool.
    rt.shutdown_background();
    result
}
