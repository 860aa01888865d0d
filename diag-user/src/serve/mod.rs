//! `diag serve`: Prometheus metrics over HTTP.
//!
//! The metric building is pure ([`exporter::Exporter`], fed with aggregate
//! snapshots; one module per family: [`tcp`], [`oom`], [`own`]). Here are
//! the sink ([`ExporterSink`]) and the HTTP routes over its state.

pub mod block;
pub mod exporter;
pub mod families;
pub mod lock;
pub mod memory;
pub mod oom;
pub mod own;
pub mod pressure;
pub mod sched;
pub mod series;
pub mod tcp;

use std::{
    collections::HashMap,
    net::SocketAddr,
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
use diag_common::user::AnyEvent;
use tokio_util::sync::CancellationToken;

use crate::{
    aggregate::tcp::{TcpAggregate, TcpConfig},
    bus::{End, Msg, new_losses},
    clock::boot_ns,
    enrich,
    sink::{Flow, Sink},
};
use exporter::{CONTENT_TYPE, Exporter, health_check};
use series::{Bounds, ProcessInfo};

/// How often the TCP aggregate is snapshotted when nobody scrapes (so
/// series of exited processes age out, and rates stay short-term).
const UPDATE_EVERY: Duration = Duration::from_secs(1);
/// procfs, for the bounded series. `drained_to_ns`: the last health
/// reading's time (the live source drains the ring buffer just before it).
struct Procfs {
    drained_to_ns: u64,
}

impl Procfs {
    fn at(last_health_ns: Option<u64>) -> Self {
        Procfs {
            drained_to_ns: last_health_ns.unwrap_or(0),
        }
    }
}

impl ProcessInfo for Procfs {
    fn cgroup_of(&mut self, pid: u32) -> Option<String> {
        enrich::cgroup_of(pid)
    }
    fn alive(&mut self, pid: u32, _comm: &str) -> bool {
        // Threads may carry other names than the process: the pid decides.
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    }
    fn now_ns(&mut self) -> u64 {
        boot_ns()
    }
    fn drained_to_ns(&self) -> u64 {
        self.drained_to_ns
    }
}

/// The one-sentence error for an address diag cannot listen on.
pub fn bind_error(addr: SocketAddr, e: std::io::Error) -> anyhow::Error {
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

/// What the exporter knows, shared by the bus loop (which feeds it) and
/// the HTTP handlers (which render it): a scrape shows everything the
/// loop had received when the request arrived.
pub struct ServeState {
    exporter: Exporter,
    agg: TcpAggregate,
    last_health_ns: Option<u64>,
    attached: usize,
    stopping: CancellationToken,
    /// OOM kills waiting for their context (the victim's cgroup): their
    /// constraint, by (time, thread).
    kills: HashMap<(u64, u32), u8>,
}

type Shared = Arc<Mutex<ServeState>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, ServeState> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// The exporter on the bus.
pub struct ExporterSink {
    state: Shared,
    next_update: u64,
}

impl ExporterSink {
    /// `stopping`: the source's token (health says so once it fires).
    pub fn new(
        bounds: Bounds,
        tcp: TcpConfig,
        attached: usize,
        stopping: CancellationToken,
    ) -> Self {
        let mut exporter = Exporter::new(bounds, attached);
        exporter.own.pressure_warn = tcp.pressure_warn;
        ExporterSink {
            state: Arc::new(Mutex::new(ServeState {
                exporter,
                agg: TcpAggregate::new(tcp),
                last_health_ns: None,
                attached,
                stopping,
                kills: HashMap::new(),
            })),
            next_update: boot_ns() + UPDATE_EVERY.as_nanos() as u64,
        }
    }

    /// The scheduler probes are not loaded (--no-sched): leave their
    /// families out.
    pub fn without_sched(&mut self) {
        lock(&self.state).exporter.sched.off = true;
    }

    /// No block I/O probes (--no-io): no block families.
    pub fn without_block(&mut self) {
        lock(&self.state).exporter.block.off = true;
    }

    /// The lock probes are attached: serve their families.
    pub fn with_locks(&mut self) {
        lock(&self.state).exporter.locks.on = true;
    }

    /// The HTTP routes, over this sink's state.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(healthz))
            .route("/", get(index))
            .with_state(self.state.clone())
    }
}

impl Sink for ExporterSink {
    fn on_msg(&mut self, msg: &Msg) -> anyhow::Result<Flow> {
        let mut s = lock(&self.state);
        let s = &mut *s;
        match msg {
            Msg::Events(evs) => {
                s.exporter.own.events += evs.len() as u64;
                for e in evs {
                    s.agg.on_event(e);
                    if let AnyEvent::OomKill(o) = e {
                        s.kills.insert((o.header.ts_ns, o.header.pid), o.constraint);
                    }
                }
            }
            Msg::OomContext(f) => {
                if let Some(c) = s.kills.remove(&(f.ts_ns, f.tid)) {
                    s.exporter.on_oom(c, f.ctx.victim_cgroup.clone());
                }
            }
            Msg::Health(h) => {
                let new = new_losses(&s.exporter.own.health, h);
                if !new.is_empty() {
                    tracing::warn!(
                        "WARNING: {}; diag_events_dropped_total and diag_map_full_total count them",
                        new.join("; ")
                    );
                }
                s.exporter.on_health(*h);
                s.last_health_ns = Some(h.ts_ns);
            }
            Msg::Table { ts_ns, rows } => {
                s.agg.on_table(rows, *ts_ns);
            }
            Msg::Sched { procs, .. } => s
                .exporter
                .update_sched(procs, &mut Procfs::at(s.last_health_ns)),
            Msg::Pressure(p) => s.exporter.pressure.eat(p),
            Msg::Block(f) => s
                .exporter
                .update_block(f, &mut Procfs::at(s.last_health_ns)),
            Msg::Memory(m) => s
                .exporter
                .update_memory(m, &mut Procfs::at(s.last_health_ns)),
            Msg::Locks(l) => s
                .exporter
                .update_locks(l, &mut Procfs::at(s.last_health_ns)),
            Msg::Damage(what) => tracing::warn!("{what}"),
            Msg::Procs(_) | Msg::Host(_) | Msg::Runq(_) | Msg::Placements(_) => {}
        }
        Ok(Flow::More)
    }

    fn due(&self) -> Option<u64> {
        Some(self.next_update)
    }

    /// Snapshot the TCP aggregate even when nobody scrapes (so series of
    /// exited processes age out, and rates stay short-term).
    fn on_tick(&mut self, now_ns: u64) -> anyhow::Result<Flow> {
        self.next_update = now_ns + UPDATE_EVERY.as_nanos() as u64;
        let mut s = lock(&self.state);
        let s = &mut *s;
        s.exporter
            .update_tcp(&s.agg.snapshot(now_ns), &mut Procfs::at(s.last_health_ns));
        Ok(Flow::More)
    }

    fn finish(&mut self, end: &End) -> anyhow::Result<Flow> {
        let mut s = lock(&self.state);
        s.stopping.cancel();
        // Kills whose context never came still count, without a cgroup.
        for (_, c) in std::mem::take(&mut s.kills) {
            s.exporter.on_oom(c, None);
        }
        tracing::info!(
            "stopped serving; {} events seen, {} dropped by the kernel",
            end.health.received,
            end.health.ringbuf_full
        );
        Ok(Flow::Done)
    }
}

/// The address a connection came from (set by [`serve_bounded`]).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::IpAddr);

/// Who scrapes: the peer's address and its user agent (two Prometheus
/// servers on one host are told apart by their versions at least).
fn scraper_id(peer: Option<Peer>, headers: &axum::http::HeaderMap) -> String {
    let ua = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let ip = peer.map_or("?".to_string(), |p| p.0.to_string());
    format!("{ip} {ua}")
}

async fn metrics(
    State(state): State<Shared>,
    peer: Option<axum::Extension<Peer>>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    let scraper = scraper_id(peer.map(|p| p.0), &headers);
    let text = {
        let mut s = lock(&state);
        let s = &mut *s;
        // A look: the tick moves the rate baselines and ages processes,
        // however often Prometheus scrapes.
        let now = boot_ns();
        s.exporter
            .update_tcp(&s.agg.peek(now), &mut Procfs::at(s.last_health_ns));
        s.exporter.own.healthy =
            health_check(s.attached, s.last_health_ns, s.stopping.is_cancelled(), now).is_ok();
        s.exporter.scrape(&scraper, now)
    };
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}

async fn healthz(State(state): State<Shared>) -> axum::response::Response {
    let answer = {
        let s = lock(&state);
        health_check(
            s.attached,
            s.last_health_ns,
            s.stopping.is_cancelled(),
            boot_ns(),
        )
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

/// How long a client may take to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a connection lives (a scraper that keeps its connection
/// reconnects; an idle one is closed).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Connections served at once; more are closed at once (and counted), so
/// idle clients can never take the file descriptors `/healthz` needs.
pub const MAX_CONNECTIONS: usize = 64;

/// Serve `app` on `listener` until `stop`, with the bounds above.
/// Returns how many connections were refused at the limit.
pub async fn serve_bounded(
    listener: tokio::net::TcpListener,
    app: Router,
    stop: CancellationToken,
) -> std::io::Result<u64> {
    use hyper_util::{
        rt::{TokioIo, TokioTimer},
        service::TowerToHyperService,
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut refused = 0u64;
    let mut last_warned: Option<std::time::Instant> = None;
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(s) => s,
            // Out of file descriptors and the like: wait, then go on.
            Err(e) => {
                tracing::warn!("accepting a connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused += 1;
            if last_warned.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                last_warned = Some(std::time::Instant::now());
                tracing::warn!(
                    "WARNING: {MAX_CONNECTIONS} HTTP connections open: new ones are closed ({refused} so far)"
                );
            }
            drop(stream);
            continue;
        };
        let svc = TowerToHyperService::new(app.clone().layer(axum::Extension(Peer(peer.ip()))));
        let stop = stop.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = tokio::time::timeout(CONNECTION_LIFETIME, conn) => {}
                _ = stop.cancelled() => {}
            }
            drop(slot);
        });
    }
    Ok(refused)
}
