//! `diag top`: the live source with host samples (and the scheduler's
//! numbers), one top sink: the screen, or snapshots.

use std::{process::ExitCode, time::Duration};

use crate::{
    cli::{EventClass, TopArgs},
    clock::{WallClock, boot_ns},
    enrich,
    host::{BpfStats, HostReader, SchedFeed},
    loader,
    probes::sched::SchedMaps,
    sink::drive,
    source::live::{self, Feeds, Live},
    view::{
        conns::Timebase,
        top::{Frames, TopBatch, TopTui, is_batch, new_state},
    },
};

pub fn run(args: TopArgs) -> anyhow::Result<ExitCode> {
    let batch = is_batch(&args.view);
    // Run-queue latency and blocked time come from the scheduler probes,
    // unless --no-sched leaves them (and their cost) out.
    let mut classes = vec![EventClass::Tcp, EventClass::Oom];
    if !args.no_sched {
        classes.push(EventClass::Stall);
        // Memory stalls and swap-ins (MEM, SWPIN, a details line).
        classes.push(EventClass::Memstall);
    }
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
    let mut tracer = loader::load(&env, &args.probe)?;
    let mut reader = HostReader::new();
    reader.pressure = Some(crate::source::pressure::PressureFeed::new());
    if env.sched.is_some() {
        reader.sched = Some(SchedFeed::new(SchedMaps::take(&mut tracer.ebpf)?));
    }
    if env.block.is_some() {
        reader.block = Some(crate::source::block::BlockFeed::new(
            &mut tracer.ebpf,
            boot_ns(),
        )?);
    }
    if env.memory.is_some() {
        reader.memory = Some(crate::source::memory::MemoryFeed::new(
            crate::probes::memory::MemMaps::take(&mut tracer.ebpf)?,
        ));
    }
    if env.lock.is_some() {
        reader.locks = Some(crate::source::lock::LockFeed::new(
            crate::probes::lock::LockMaps::take(&mut tracer.ebpf)?,
        ));
    }
    let live = Live::new(tracer)?;
    // While top runs, the kernel counts the run time of BPF programs.
    let bpf_stats = BpfStats::enable();
    let result = super::runtime()?.block_on(async {
        let interval: Duration = args.view.interval;
        let feeds = Feeds {
            tables: Some(args.view.tcp.reconcile),
            host: Some((interval, reader)),
            oom_context: true,
            ..Feeds::default()
        };
        let source = live::start(live, feeds);
        tracing::info!(
            "tracing {}; {}",
            source.attached.join(", "),
            if batch {
                format!("a snapshot every {}", humantime::format_duration(interval))
            } else {
                "q quits, ? helps".to_string()
            }
        );
        if !bpf_stats.enabled {
            tracing::warn!(
                "BPF run-time statistics could not be switched on: diag's own CPU use is not shown"
            );
        }
        let mut st = new_state(
            &args.view,
            enrich::local_port_range(),
            WallClock::now(),
            Timebase::Live,
        );
        st.agg.set_drop_reason_names(&drop_reasons);
        // The baseline for the first interval's rates.
        st.start(boot_ns());
        if batch {
            let mut sink = TopBatch::new(st, Frames::Host, &args.view);
            drive(source, &mut [&mut sink], None).await
        } else {
            let (mut sink, keys) = match TopTui::start(st, Frames::Host) {
                Ok(t) => t,
                Err(e) => {
                    source.cancel.cancel();
                    drive(source, &mut [], None).await?;
                    return Err(e);
                }
            };
            let _logs = crate::logging::hold_while_screen_is_up();
            drive(source, &mut [&mut sink], Some(keys)).await
        }
    });
    drop(bpf_stats);
    result?;
    Ok(ExitCode::SUCCESS)
}
