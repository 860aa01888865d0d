//! `diag serve`: Prometheus metrics over HTTP.
//!
//! The metric building is pure ([`exporter::Exporter`], fed with aggregate
//! snapshots; one module per family: [`tcp`], [`oom`], [`own`]). The edges
//! are here: the live session, the procfs lookups, the optional recording
//! and the HTTP server. The HTTP handlers own no state: they ask the bus
//! loop, which answers with a fresh snapshot, so what a scrape shows is
//! everything the loop had received when the request arrived.

pub mod exporter;
pub mod families;
pub mod oom;
pub mod own;
pub mod sched;
pub mod series;
pub mod tcp;

use std::{
    net::SocketAddr,
    process::ExitCode,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use diag_common::{oom::OomKillEvent, user::AnyEvent};
use tokio::sync::{mpsc, oneshot};

use crate::{
    Msg,
    aggregate::tcp::{TcpAggregate, TcpConfig},
    cli::{EventClass, ServeArgs},
    clock::boot_ns,
    enrich, loader,
    record::{self, ProcsFrame, writer},
    source::live::Live,
    view::LiveSession,
};
use exporter::{CONTENT_TYPE, Exporter, health_check};
use series::{Bounds, ProcessInfo};

/// How often the TCP aggregate is snapshotted when nobody scrapes (so
/// series of exited processes age out, and rates stay short-term).
const UPDATE_EVERY: Duration = Duration::from_secs(1);
/// How often the process table is recorded (with --record).
const PROCS_EVERY: Duration = Duration::from_secs(10);
/// A handler waits this long for the bus loop before giving up.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// What the HTTP side asks the bus loop.
enum Request {
    Metrics(oneshot::Sender<String>),
    Health(oneshot::Sender<Result<(), String>>),
}

/// procfs, for the bounded series.
struct Procfs;

impl ProcessInfo for Procfs {
    fn cgroup_of(&mut self, pid: u32) -> Option<String> {
        enrich::cgroup_of(pid)
    }
    fn alive(&mut self, pid: u32, _comm: &str) -> bool {
        // Threads may carry other names than the process: the pid decides.
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    }
}

/// The one-sentence error for an address diag cannot listen on.
fn bind_error(addr: SocketAddr, e: std::io::Error) -> anyhow::Error {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => anyhow::anyhow!(
            "cannot serve on {addr}: the address is already in use (another diag serve or exporter?); stop it or choose another with --listen"
        ),
        std::io::ErrorKind::AddrNotAvailable => anyhow::anyhow!(
            "cannot serve on {addr}: no interface of this host has that address; choose another with --listen"
        ),
        _ => anyhow::anyhow!("cannot serve on {addr}: {e}; choose another address with --listen"),
    }
}

async fn metrics(State(tx): State<mpsc::Sender<Request>>) -> axum::response::Response {
    let (otx, orx) = oneshot::channel();
    if tx.send(Request::Metrics(otx)).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "diag is stopping\n").into_response();
    }
    match tokio::time::timeout(ANSWER_WITHIN, orx).await {
        Ok(Ok(text)) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "diag did not answer in time: the event pipeline is stuck\n",
        )
            .into_response(),
    }
}

async fn healthz(State(tx): State<mpsc::Sender<Request>>) -> axum::response::Response {
    let (otx, orx) = oneshot::channel();
    let answer = match tx.send(Request::Health(otx)).await {
        Err(_) => Err("diag is stopping".to_string()),
        Ok(()) => match tokio::time::timeout(ANSWER_WITHIN, orx).await {
            Ok(Ok(r)) => r,
            _ => Err("the event pipeline did not answer in time".into()),
        },
    };
    match answer {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()).into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {why}\n"),
        )
            .into_response(),
    }
}

async fn index() -> &'static str {
    "diag: metrics at /metrics, health at /healthz\n"
}

/// The victim's memory cgroup path, from what the kernel captured, else
/// from procfs. Blocking.
fn victim_cgroup(ev: &OomKillEvent, index: &mut enrich::oom::CgroupIndex) -> Option<String> {
    index.path(ev.victim_memcg_ino).or_else(|| {
        std::fs::read_to_string(format!("/proc/{}/cgroup", ev.victim_process()))
            .ok()
            .and_then(|t| enrich::oom::memory_cgroup_of(&t))
    })
}

/// `diag serve`.
pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut classes = vec![
        EventClass::Tcp,
        EventClass::Reset,
        EventClass::Retrans,
        EventClass::Oom,
    ];
    if !args.no_sched {
        classes.push(EventClass::Stall);
    }
    let mut env = loader::require_for(&args.probe, &classes)?;
    env.keep_sched_procs();
    // Bind and create the recording first: a port in use or a bad path
    // fails before anything is loaded into the kernel.
    let listener =
        std::net::TcpListener::bind(args.listen).map_err(|e| bind_error(args.listen, e))?;
    listener.set_nonblocking(true)?;
    let mut rec = match &args.record {
        Some(path) => Some(writer::Writer::create(
            path,
            record::header_now(&env),
            writer::WriterOptions {
                compress: true,
                max_size: None,
                max_files: 10,
            },
        )?),
        None => None,
    };
    let mut tracer = loader::load(&env, &args.probe)?;
    let mut sched_feed = match env.sched {
        Some(_) => Some(crate::host::SchedFeed::new(
            crate::probes::sched::SchedMaps::take(&mut tracer.ebpf)?,
        )),
        None => None,
    };
    let live = Live::new(tracer)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let mut session = LiveSession::start(live, Some(args.reconcile));
        // Let the session's tasks run once, so its signal handlers are in
        // place before we say we are tracing.
        tokio::task::yield_now().await;
        let bounds = Bounds {
            top: usize::try_from(args.top).unwrap_or(usize::MAX),
            cgroups: usize::try_from(args.max_cgroups).unwrap_or(usize::MAX),
            grace_ns: u64::try_from(args.exit_grace.as_nanos()).unwrap_or(u64::MAX),
        };
        let mut exporter = Exporter::new(bounds, session.attached.len());
        let mut agg = TcpAggregate::new(TcpConfig {
            close_wait_threshold_ns: u64::try_from(args.close_wait_threshold.as_nanos())
                .unwrap_or(u64::MAX),
            port_range: enrich::local_port_range().unwrap_or(TcpConfig::default().port_range),
            ..TcpConfig::default()
        });
        let (req_tx, mut req_rx) = mpsc::channel::<Request>(64);
        let app = Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(healthz))
            .route("/", get(index))
            .with_state(req_tx);
        let stop = session.cancel.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        });
        if !args.listen.ip().is_loopback() {
            eprintln!(
                "diag: note: {} is not a loopback address: other hosts can read these metrics, which name processes and cgroups",
                args.listen
            );
        }
        eprintln!(
            "diag: tracing {}; serving metrics on http://{}/metrics{}; Ctrl-C to stop",
            session.attached.join(", "),
            args.listen,
            args.record
                .as_ref()
                .map(|p| format!(", recording to {}", p.display()))
                .unwrap_or_default()
        );

        // OOM kills get their cgroup from cgroupfs, off the loop.
        let (oom_tx, mut oom_rx) = mpsc::unbounded_channel::<(OomKillEvent, Option<String>)>();
        let index = Arc::new(Mutex::new(None::<enrich::oom::CgroupIndex>));
        {
            // Index the cgroups before the first kill, so a cgroup removed
            // right after one still resolves.
            let index = index.clone();
            tokio::task::spawn_blocking(move || {
                let built = enrich::oom::CgroupIndex::new();
                if let Ok(mut i) = index.lock() {
                    i.get_or_insert(built);
                }
            });
        }

        let mut update = tokio::time::interval(UPDATE_EVERY);
        update.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut procs = tokio::time::interval(PROCS_EVERY);
        let mut seeded = false;
        let mut last_health_ns: Option<u64> = None;
        let mut failure: Option<writer::RecordError> = None;
        let mut stopping = false;
        loop {
            let result = tokio::select! {
                msg = session.rx.recv() => match msg {
                    None => break,
                    Some(Msg::Events(evs)) => {
                        exporter.own.events += evs.len() as u64;
                        for e in &evs {
                            agg.on_event(e);
                            if let AnyEvent::OomKill(o) = e {
                                let (o, index, tx) = (*o, index.clone(), oom_tx.clone());
                                tokio::task::spawn_blocking(move || {
                                    let cg = match index.lock() {
                                        Ok(mut i) => {
                                            let i = i.get_or_insert_with(enrich::oom::CgroupIndex::new);
                                            victim_cgroup(&o, i)
                                        }
                                        Err(_) => None,
                                    };
                                    let _ = tx.send((o, cg));
                                });
                            }
                        }
                        match (&mut rec, &failure) {
                            (Some(w), None) => w.events(&evs),
                            _ => Ok(()),
                        }
                    }
                    Some(Msg::Health(h)) => {
                        if h.ringbuf_full > exporter.own.health.ringbuf_full {
                            eprintln!(
                                "diag: WARNING: {} events dropped (ring buffer full; raise --ring-mib); diag_events_dropped_total counts them",
                                h.ringbuf_full - exporter.own.health.ringbuf_full
                            );
                        }
                        exporter.on_health(h);
                        last_health_ns = Some(h.ts_ns);
                        match (&mut rec, &failure) {
                            (Some(w), None) => w.health(&h),
                            _ => Ok(()),
                        }
                    }
                    Some(Msg::Table { ts_ns, rows }) => {
                        if seeded {
                            agg.reconcile(&rows, ts_ns);
                        } else {
                            seeded = true;
                            agg.seed(&rows, ts_ns);
                        }
                        match (&mut rec, &failure) {
                            (Some(w), None) => w.table(ts_ns, &rows),
                            _ => Ok(()),
                        }
                    }
                    Some(Msg::OomContext(_)) => Ok(()),
                    Some(Msg::Damage(what)) => {
                        eprintln!("diag: {what}");
                        Ok(())
                    }
                },
                Some((ev, cg)) = oom_rx.recv() => {
                    exporter.on_oom(ev.constraint, cg);
                    Ok(())
                }
                Some(req) = req_rx.recv() => {
                    match req {
                        Request::Metrics(reply) => {
                            exporter.update_tcp(&agg.snapshot(boot_ns()), &mut Procfs);
                            let _ = reply.send(exporter.render());
                        }
                        Request::Health(reply) => {
                            let _ = reply.send(health_check(
                                session.attached.len(),
                                last_health_ns,
                                stopping || session.cancel.is_cancelled(),
                                boot_ns(),
                            ));
                        }
                    }
                    Ok(())
                }
                _ = update.tick() => {
                    exporter.update_tcp(&agg.snapshot(boot_ns()), &mut Procfs);
                    if let Some(feed) = &mut sched_feed {
                        exporter.update_sched(&feed.read(boot_ns()), &mut Procfs);
                    }
                    Ok(())
                }
                _ = procs.tick(), if rec.is_some() && failure.is_none() => {
                    let frame = tokio::task::spawn_blocking(record::process_table)
                        .await
                        .unwrap_or(ProcsFrame { ts_ns: boot_ns(), procs: vec![] });
                    match &mut rec {
                        Some(w) => w.procs(&frame),
                        None => Ok(()),
                    }
                }
            };
            if let Err(e) = result {
                stopping = true;
                session.cancel.cancel();
                failure = Some(e);
            }
        }
        let final_health = session.source.await??;
        // In-flight scrapes may finish; a client holding a connection
        // open does not keep diag from exiting.
        match tokio::time::timeout(Duration::from_secs(2), server).await {
            Ok(Ok(Ok(()))) | Err(_) => {}
            Ok(Ok(Err(e))) => eprintln!("diag: the HTTP server failed: {e}"),
            Ok(Err(e)) => eprintln!("diag: the HTTP server stopped: {e}"),
        }
        if let Some(e) = failure {
            return Err(e.into());
        }
        if let Some(mut w) = rec {
            w.health(&final_health)?;
            let bytes = w.finish("stopped")?;
            eprintln!(
                "diag: recorded {:.1} MiB to {}",
                bytes as f64 / (1024.0 * 1024.0),
                args.record.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
            );
        }
        eprintln!(
            "diag: stopped serving; {} events seen, {} dropped by the kernel",
            final_health.received, final_health.ringbuf_full
        );
        Ok(ExitCode::SUCCESS)
    });
    // Do not wait for cgroup lookups still running on the blocking pool.
    rt.shutdown_background();
    result
}
