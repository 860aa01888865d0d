//! Who owns a connection: the process that holds it. Pre-fork servers
//! (a made-up one and a real nginx), accept-then-fork (a made-up one and
//! a real PostgreSQL), sockets passed with
//! SCM_RIGHTS and listeners on the same port in two network namespaces,
//! checked against `ss -tnp`, /proc/PID/ns/net and /proc/net/snmp.

use std::{
    collections::HashMap,
    process::{Command, Stdio},
    time::Duration,
};

use diag_tests::{
    Diag, Gen, Netns, Nginx, Output, free_port, in_ci, require_root, require_tool, scrape_metrics,
    serial, skipped, ss_per_pid, tcp_snmp,
};
use serde_json::Value;

const LOADGEN: &str = env!("CARGO_BIN_EXE_diag-loadgen");

fn netns_of(pid: u32) -> u64 {
    let l = std::fs::read_link(format!("/proc/{pid}/ns/net")).expect("ns/net");
    let s = l.to_string_lossy();
    s.trim_start_matches("net:[")
        .trim_end_matches(']')
        .parse()
        .unwrap()
}

fn last_snapshot(out: &Output) -> Value {
    let snaps = out.json();
    let last = snaps
        .last()
        .unwrap_or_else(|| panic!("no snapshot: {:?}", out.stderr))
        .clone();
    assert_eq!(last["final"], true, "{last}");
    last
}

fn row(snap: &Value, pid: u32) -> Option<Value> {
    snap["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["pid"] == u64::from(pid))
        .cloned()
}

#[track_caller]
fn n(v: &Value) -> i64 {
    v.as_i64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// A counter or gauge of a process row, 0 when it has no row.
fn get(snap: &Value, pid: u32, group: &str, field: &str) -> i64 {
    row(snap, pid).map(|r| n(&r[group][field])).unwrap_or(0)
}

/// The value of serve's series `m` (a name and `{`) for `pid` whose labels
/// hold `label` (up to its closing quote), from one scrape.
fn series(metrics_port: u16, m: &str, pid: u32, label: &str) -> Option<i64> {
    let (want_pid, want_label) = (format!("pid=\"{pid}\""), format!("{label}\""));
    scrape_metrics(metrics_port).lines().find_map(|l| {
        (l.starts_with(m) && l.contains(&want_pid) && l.contains(&want_label))
            .then(|| l.rsplit(' ').next()?.parse().ok())?
    })
}

fn owners_fixed(snap: &Value) -> i64 {
    n(&snap["corrections"]["owners_fixed"])
}

/// Events of a tail on `port` (local side), by (event, new state or
/// "", pid).
fn tail_events(out: &Output) -> Vec<Value> {
    out.json()
}

fn is_transition(e: &Value, old: &str, new: &str) -> bool {
    e["event"] == "tcp_state" && e["old_state"] == old && e["new_state"] == new
}

fn conns_watch(extra: &[&str]) -> Diag {
    let mut args = vec![
        "conns",
        "--json",
        "--watch",
        "--interval",
        "1s",
        "--reconcile",
        "1s",
        "--close-wait-threshold",
        "1s",
        "--top",
        "0",
    ];
    args.extend_from_slice(extra);
    Diag::start(&args)
}

/// Read `want` lines starting with `prefix` from `g`, returning the pids
/// they name (other lines are skipped).
fn pids_from(g: &mut Gen, prefix: &str, want: usize) -> Vec<u32> {
    let mut out = Vec::new();
    while out.len() < want {
        let l = g.line();
        if let Some(p) = l.strip_prefix(prefix) {
            out.push(p.trim().parse().unwrap());
        }
    }
    out
}

/// Workers that try a read of each connection (nothing has come) and leak
/// it: the read names the worker, with the default probes.
#[test]
fn prefork_workers_own_their_connections_and_close_wait_leaks() {
    if !require_root("prefork_workers_own_their_connections_and_close_wait_leaks") {
        return;
    }
    prefork_case("hold", &[]);
}

/// Workers that accept and never read or write: `--accept-probe` names
/// them at accept().
#[test]
fn prefork_silent_workers_are_named_with_the_accept_probe() {
    if !require_root("prefork_silent_workers_are_named_with_the_accept_probe") {
        return;
    }
    prefork_case("hold-silent", &["--accept-probe"]);
}

/// A pre-fork server whose workers hold K connections each (`mode` as
/// diag-loadgen's prefork), every diag started with `extra`.
fn prefork_case(mode: &str, extra: &[&str]) {
    let _guard = serial();
    const W: usize = 2;
    const K: usize = 10;
    let mut conns = conns_watch(extra);
    let rec = std::env::temp_dir().join(format!("diag-owners-{}.diag", std::process::id()));
    let _ = std::fs::remove_file(&rec);
    let rec_path = rec.to_str().unwrap().to_string();
    let mut rec_args = vec!["record", "-o", &rec_path, "--reconcile", "1s"];
    rec_args.extend_from_slice(extra);
    let recorder = Diag::start(&rec_args);
    let metrics_port = free_port();
    let listen = format!("127.0.0.1:{metrics_port}");
    let mut serve_args = vec![
        "serve",
        "--listen",
        &listen,
        "--reconcile",
        "1s",
        "--close-wait-threshold",
        "1s",
        "--no-sched",
    ];
    serve_args.extend_from_slice(extra);
    let serve = Diag::start(&serve_args);
    let mut server = Gen::spawn(
        LOADGEN,
        &[
            "prefork",
            &W.to_string(),
            &K.to_string(),
            "127.0.0.1:0",
            mode,
        ],
    );
    let port = server.port();
    let port_s = port.to_string();
    let mut tail_args = vec!["tail", "--json", "--port", &port_s];
    tail_args.extend_from_slice(extra);
    let tail = Diag::start(&tail_args);
    let parent = server.pid();
    let workers = pids_from(&mut server, "WORKER ", W);
    // Every worker accepts K and holds them; then the client goes: K
    // sockets in CLOSE_WAIT per worker, nobody closes them.
    let mut client = Gen::spawn(
        LOADGEN,
        &[
            "connect-hold",
            &(W * K).to_string(),
            &format!("127.0.0.1:{port}"),
        ],
    );
    assert_eq!(client.line(), format!("CONNECTED {}", W * K));
    let done = pids_from(&mut server, "DONE ", W);
    assert_eq!(done.len(), W);
    drop(client);
    // Several reconcile rounds, and the leaks past their threshold.
    conns.wait_json(Duration::from_secs(20), "reconciled leaks", |v| {
        n(&v["corrections"]["runs"]) >= 2
            && workers
                .iter()
                .all(|&w| row(v, w).is_some_and(|r| n(&r["leaks"]) == K as i64))
    });
    let ss = ss_per_pid("close-wait", port);
    // serve: the workers' series, as ss says.
    let series = |m: &str, pid: u32, label: &str| series(metrics_port, m, pid, label);
    diag_tests::wait_until(Duration::from_secs(20), "serve's CLOSE-WAIT series", || {
        workers
            .iter()
            .all(|&w| series("diag_tcp_sockets{", w, "state=\"CLOSE-WAIT") == Some(K as i64))
    });
    for &w in &workers {
        assert_eq!(
            series("diag_tcp_opens_total{", w, "direction=\"passive"),
            Some(K as i64),
            "serve: worker {w}"
        );
    }
    assert_eq!(
        series("diag_tcp_opens_total{", parent, "direction=\"passive").unwrap_or(0),
        0,
        "serve: the parent"
    );
    assert_eq!(
        series("diag_tcp_sockets{", parent, "state=\"CLOSE-WAIT"),
        None
    );
    drop(serve);
    let tail_out = tail.stop(libc::SIGINT);
    let out = conns.stop(libc::SIGINT);
    assert!(recorder.stop(libc::SIGINT).status.success());

    // The recording replays the same owners (the accept events decode).
    let replay = |args: &[&str]| {
        let o = Command::new(diag_tests::diag_bin())
            .arg("replay")
            .arg(&rec)
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let replayed = replay(&["tail", "--json", "--port", &port.to_string()]);
    let accepts: Vec<Value> = replayed
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["event"] == "tcp_accepted")
        .collect();
    assert_eq!(accepts.len(), W * K);
    assert!(
        accepts
            .iter()
            .all(|e| e["netns"].as_u64() == Some(netns_of(parent)))
    );
    let replayed = replay(&[
        "conns",
        "--json",
        "--close-wait-threshold",
        "1s",
        "--top",
        "0",
    ]);
    let snap: Value = serde_json::from_str(replayed.lines().last().unwrap()).unwrap();
    for &w in &workers {
        assert_eq!(
            get(&snap, w, "states", "close_wait"),
            K as i64,
            "replayed worker {w}"
        );
    }
    assert_eq!(get(&snap, parent, "totals", "passive_opens"), 0);
    let _ = std::fs::remove_file(&rec);

    // ss: K per worker, none for the parent.
    for w in &workers {
        assert_eq!(ss.get(w).copied(), Some(K), "ss per pid: {ss:?}");
    }
    assert_eq!(ss.get(&parent), None, "{ss:?}");

    // tail: K accepts and K ESTABLISHED -> CLOSE_WAIT per worker.
    let evs = tail_events(&tail_out);
    for &w in &workers {
        let accepted = evs
            .iter()
            .filter(|e| e["event"] == "tcp_accepted" && e["pid"] == w)
            .count();
        assert_eq!(accepted, K, "accepts by worker {w}");
        let cw: Vec<&Value> = evs
            .iter()
            .filter(|e| is_transition(e, "ESTABLISHED", "CLOSE_WAIT") && e["pid"] == w)
            .collect();
        assert_eq!(cw.len(), K, "CLOSE_WAIT of worker {w}");
        assert!(cw.iter().all(|e| e["attribution"] == "accepted"), "{cw:?}");
    }
    assert!(
        evs.iter()
            .filter(|e| e["event"] == "tcp_accepted")
            .all(|e| e["previous_pid"] == parent),
        "accepted from the parent's listener"
    );
    assert!(
        !evs.iter()
            .any(|e| is_transition(e, "ESTABLISHED", "CLOSE_WAIT") && e["pid"] == parent),
        "no CLOSE_WAIT charged to the parent"
    );
    // Passive opens name the listener's owner until the accept.
    let syn_recv: Vec<&Value> = evs
        .iter()
        .filter(|e| is_transition(e, "LISTEN", "SYN_RECV"))
        .collect();
    assert_eq!(syn_recv.len(), W * K);
    assert!(
        syn_recv
            .iter()
            .all(|e| e["attribution"] == "listener" && e["pid"] == parent)
    );

    // conns (started before): the workers, as ss says; nothing corrected.
    let snap = last_snapshot(&out);
    assert_eq!(snap["health"]["dropped"], 0);
    for &w in &workers {
        assert_eq!(
            get(&snap, w, "states", "close_wait"),
            K as i64,
            "worker {w}"
        );
        assert_eq!(get(&snap, w, "totals", "passive_opens"), K as i64);
        assert_eq!(n(&row(&snap, w).unwrap()["leaks"]), K as i64);
    }
    assert_eq!(get(&snap, parent, "states", "close_wait"), 0);
    assert_eq!(get(&snap, parent, "totals", "passive_opens"), 0);
    assert_eq!(get(&snap, parent, "states", "listen"), 1);
    assert_eq!(owners_fixed(&snap), 0, "steady state: no owner corrections");
    assert!(n(&snap["corrections"]["runs"]) >= 2);

    // conns started after the traffic: the same owners from /proc.
    let mut after_args = vec!["conns", "--json", "--interval", "1s", "--top", "0"];
    after_args.extend_from_slice(extra);
    let after = Diag::start(&after_args);
    let out = after.wait_exit(Duration::from_secs(20));
    let snap = last_snapshot(&out);
    for &w in &workers {
        assert_eq!(
            get(&snap, w, "states", "close_wait"),
            K as i64,
            "worker {w}"
        );
    }
    assert_eq!(get(&snap, parent, "states", "close_wait"), 0);
    drop(server);
}

#[test]
fn nginx_workers_own_the_passive_opens() {
    let test = "nginx_workers_own_the_passive_opens";
    if !require_root(test)
        || !require_tool(test, "nginx", "nginx-light")
        || !require_tool(test, "ab", "apache2-utils")
    {
        return;
    }
    let _guard = serial();
    const REQUESTS: i64 = 600;
    let port = free_port();
    let conns = conns_watch(&[]);
    let tail = Diag::start(&["tail", "--json", "--port", &port.to_string()]);
    let nginx = Nginx::start(port);
    let master = nginx.pid();
    let workers = nginx.workers(port);
    let before = tcp_snmp();
    let ab = Command::new("ab")
        .args(["-q", "-n", &REQUESTS.to_string(), "-c", "4"])
        .arg(format!("http://127.0.0.1:{port}/"))
        .stdout(Stdio::null())
        .status()
        .expect("ab");
    assert!(ab.success());
    let after = tcp_snmp();
    let tail_out = tail.stop(libc::SIGINT);
    let out = conns.stop(libc::SIGINT);
    drop(nginx);

    let passive = after["PassiveOpens"] - before["PassiveOpens"];
    assert!(passive >= REQUESTS, "PassiveOpens {passive}");
    let snap = last_snapshot(&out);
    assert_eq!(snap["health"]["dropped"], 0);
    let per_worker: Vec<i64> = workers
        .iter()
        .map(|&w| get(&snap, w, "totals", "passive_opens"))
        .collect();
    assert_eq!(
        per_worker.iter().sum::<i64>(),
        passive,
        "workers {workers:?}: {per_worker:?}"
    );
    assert_eq!(
        get(&snap, master, "totals", "passive_opens"),
        0,
        "the master"
    );
    assert_eq!(owners_fixed(&snap), 0, "steady state: no owner corrections");

    // The events, by attribution (the figures the README quotes).
    let evs = tail_events(&tail_out);
    let mut by_attr: HashMap<String, usize> = HashMap::new();
    for e in &evs {
        *by_attr
            .entry(format!(
                "{}/{}",
                e["event"].as_str().unwrap(),
                e["attribution"].as_str().unwrap()
            ))
            .or_default() += 1;
    }
    eprintln!("nginx: events by kind/attribution: {by_attr:?}");
    let accepted = evs.iter().filter(|e| e["event"] == "tcp_accepted").count() as i64;
    assert_eq!(accepted, passive, "one accept event per connection");
    // The master's: its listener, and each connection until a worker
    // took it (read or wrote it), said as a guess ("listener"): the
    // handshake, and at the end of a run a connection `ab` opened and
    // closed before a worker read it (its CLOSE_WAIT).
    let masters: Vec<&Value> = evs.iter().filter(|e| e["pid"] == master).collect();
    for e in &masters {
        let listener = is_transition(e, "CLOSE", "LISTEN") || is_transition(e, "LISTEN", "CLOSE");
        assert!(
            e["attribution"] == "listener" || listener,
            "the master's after a worker took it: {e}"
        );
    }
    let taken_late = masters
        .iter()
        .filter(|e| {
            !is_transition(e, "LISTEN", "SYN_RECV") && !is_transition(e, "SYN_RECV", "ESTABLISHED")
        })
        .filter(|e| !is_transition(e, "CLOSE", "LISTEN") && !is_transition(e, "LISTEN", "CLOSE"))
        .count();
    assert!(
        taken_late <= 8,
        "{taken_late} events before a worker took them"
    );
    assert_eq!(
        masters
            .iter()
            .filter(|e| is_transition(e, "LISTEN", "SYN_RECV"))
            .count() as i64,
        passive
    );
}

#[test]
fn same_port_listeners_in_two_network_namespaces_stay_apart() {
    let test = "same_port_listeners_in_two_network_namespaces_stay_apart";
    if !require_root(test) {
        return;
    }
    let _guard = serial();
    let (Some(a), Some(b)) = (Netns::create("diag-own-a"), Netns::create("diag-own-b")) else {
        if in_ci() {
            panic!("{test}: `ip netns add` failed");
        }
        skipped(test, "cannot create network namespaces (ip netns add)");
        return;
    };
    const K: usize = 8;
    const PORT: u16 = 18080;
    let mut conns = conns_watch(&[]);
    let tail = Diag::start(&["tail", "--json", "--port", &PORT.to_string()]);
    let addr = format!("127.0.0.1:{PORT}");
    let listen = |ns: &Netns| {
        let mut g = Gen::spawn(
            "ip",
            &[
                "netns",
                "exec",
                &ns.0,
                LOADGEN,
                "listen-hold",
                &K.to_string(),
                &addr,
            ],
        );
        assert_eq!(g.port(), PORT);
        g
    };
    let mut la = listen(&a);
    let mut lb = listen(&b);
    let (ia, ib) = (netns_of(la.pid()), netns_of(lb.pid()));
    assert_ne!(ia, ib);
    let filtered = Diag::start(&[
        "tail",
        "--json",
        "--events",
        "tcp,reset",
        "--netns",
        &ia.to_string(),
    ]);
    // Clients in both namespaces at once.
    let clients: Vec<_> = [&a, &b]
        .iter()
        .map(|ns| {
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &ns.0,
                    LOADGEN,
                    "connect",
                    &K.to_string(),
                    &addr,
                ])
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in clients {
        assert!(c.wait().unwrap().success());
    }
    assert_eq!(la.line(), "ACCEPTED");
    assert_eq!(lb.line(), "ACCEPTED");
    // A connect to a closed port in the first namespace: the kernel's
    // reset has no socket, and its packet's device names the namespace.
    let refused = Command::new("ip")
        .args(["netns", "exec", &a.0, LOADGEN, "try-connect", "1"])
        .arg(format!("127.0.0.1:{}", PORT + 1))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&refused.stdout).trim(), "REFUSED 1");
    // Reconciled with each namespace's table, CLOSE_WAIT everywhere.
    let (pa, pb) = (la.pid(), lb.pid());
    conns.wait_json(Duration::from_secs(20), "reconciled namespaces", |v| {
        n(&v["corrections"]["runs"]) >= 2
            && [pa, pb]
                .iter()
                .all(|&p| row(v, p).is_some_and(|r| n(&r["states"]["close_wait"]) == K as i64))
    });
    let tail_out = tail.stop(libc::SIGINT);
    let filtered_out = filtered.stop(libc::SIGINT);
    let out = conns.stop(libc::SIGINT);

    let evs = tail_events(&tail_out);
    let listener_of = |ns: u64| if ns == ia { la.pid() } else { lb.pid() };
    let syn_recv: Vec<&Value> = evs
        .iter()
        .filter(|e| is_transition(e, "LISTEN", "SYN_RECV"))
        .collect();
    assert_eq!(syn_recv.len(), 2 * K);
    for e in &syn_recv {
        let ns = e["netns"].as_u64().unwrap();
        assert!(ns == ia || ns == ib, "{e}");
        assert_eq!(e["pid"], listener_of(ns), "{e}");
        assert_eq!(e["attribution"], "listener");
    }
    for (ns, pid) in [(ia, la.pid()), (ib, lb.pid())] {
        let cw = evs
            .iter()
            .filter(|e| is_transition(e, "ESTABLISHED", "CLOSE_WAIT") && e["netns"] == ns)
            .collect::<Vec<_>>();
        assert_eq!(cw.len(), K);
        assert!(cw.iter().all(|e| e["pid"] == pid), "{cw:?}");
    }
    // --netns: only the first namespace's events, the kernel's reset too.
    let f = filtered_out.json();
    assert!(!f.is_empty());
    assert!(f.iter().all(|e| e["netns"] == ia), "{f:?}");
    let kernel_resets: Vec<&Value> = f
        .iter()
        .filter(|e| {
            e["event"] == "tcp_reset_sent"
                && e["attribution"] == "kernel"
                && e["sport"] == u64::from(PORT + 1)
        })
        .collect();
    assert_eq!(kernel_resets.len(), 1, "{f:?}");
    assert_eq!(
        f.iter()
            .filter(|e| is_transition(e, "LISTEN", "SYN_RECV"))
            .count(),
        K
    );

    // conns: each listener its own, reconciled with its namespace's table.
    let snap = last_snapshot(&out);
    for pid in [la.pid(), lb.pid()] {
        assert_eq!(
            get(&snap, pid, "totals", "passive_opens"),
            K as i64,
            "pid {pid}"
        );
        assert_eq!(
            get(&snap, pid, "states", "close_wait"),
            K as i64,
            "pid {pid}"
        );
    }
    assert_eq!(n(&snap["corrections"]["sockets_removed"]), 0);
    assert_eq!(owners_fixed(&snap), 0);
    drop((la, lb, a, b));
}

#[test]
fn accept_then_fork_the_child_holds_and_closes() {
    let test = "accept_then_fork_the_child_holds_and_closes";
    if !require_root(test) {
        return;
    }
    let _guard = serial();
    const K: usize = 3;
    let mut conns = conns_watch(&[]);
    let mut server = Gen::spawn(
        LOADGEN,
        &["accept-fork", &K.to_string(), "127.0.0.1:0", "1500"],
    );
    let port = server.port();
    let tail = Diag::start(&["tail", "--json", "--port", &port.to_string()]);
    let parent = server.pid();
    let mut client = Gen::spawn(
        LOADGEN,
        &["connect-hold", &K.to_string(), &format!("127.0.0.1:{port}")],
    );
    assert_eq!(client.line(), format!("CONNECTED {K}"));
    let children = pids_from(&mut server, "CHILD ", K);
    // Reconciliation finds each connection in its child's fds.
    conns.wait_json(
        Duration::from_secs(20),
        "owners moved to the children",
        |v| owners_fixed(v) == K as i64,
    );
    let ss = ss_per_pid("established", port);
    for c in &children {
        assert_eq!(ss.get(c).copied(), Some(1), "{ss:?}");
    }
    // The client goes; each child sees EOF, waits, closes.
    drop(client);
    server.wait();
    // Both drain what the kernel wrote when they stop.
    let tail_out = tail.stop(libc::SIGINT);
    let out = conns.stop(libc::SIGINT);

    // tail: the close (CLOSE_WAIT -> LAST_ACK, in close()) is the child's.
    let evs = tail_events(&tail_out);
    for &c in &children {
        let closes = evs
            .iter()
            .filter(|e| is_transition(e, "CLOSE_WAIT", "LAST_ACK") && e["pid"] == c)
            .count();
        assert_eq!(closes, 1, "child {c}");
    }
    let snap = last_snapshot(&out);
    for &c in &children {
        assert_eq!(get(&snap, c, "totals", "closes"), 1, "child {c}");
    }
    assert_eq!(get(&snap, parent, "totals", "closes"), 0);
    assert_eq!(
        owners_fixed(&snap),
        K as i64,
        "each connection moved to its child by reconciliation"
    );
}

#[test]
fn sockets_passed_with_scm_rights_are_corrected_to_the_holder() {
    let test = "sockets_passed_with_scm_rights_are_corrected_to_the_holder";
    if !require_root(test) {
        return;
    }
    let _guard = serial();
    const K: usize = 3;
    // The sockets exist before diag starts; they change hands after both
    // diags have read the socket table (their owner is the parent then).
    let mut server = Gen::spawn(LOADGEN, &["pass-fds", &K.to_string(), "127.0.0.1:0"]);
    let holder = pids_from(&mut server, "HOLDER ", 1)[0];
    let port = server.port();
    let parent = server.pid();
    let mut client = Gen::spawn(
        LOADGEN,
        &["connect-hold", &K.to_string(), &format!("127.0.0.1:{port}")],
    );
    assert_eq!(client.line(), format!("CONNECTED {K}"));
    assert_eq!(server.line(), "ACCEPTED");
    let mut conns = conns_watch(&[]);
    let metrics_port = free_port();
    let serve = Diag::start(&[
        "serve",
        "--listen",
        &format!("127.0.0.1:{metrics_port}"),
        "--reconcile",
        "1s",
    ]);
    conns.wait_json(Duration::from_secs(20), "the parent's connections", |v| {
        get(v, parent, "states", "established") == K as i64
    });
    diag_tests::wait_until(Duration::from_secs(20), "serve's parent series", || {
        series(metrics_port, "diag_tcp_sockets{", parent, "state=\"ESTAB") == Some(K as i64)
    });
    // SAFETY: a signal to the child we spawned.
    assert_eq!(unsafe { libc::kill(parent as i32, libc::SIGUSR1) }, 0);
    assert_eq!(server.line(), "PASSED");
    let corrected = format!("diag_tcp_reconcile_corrections_total{{kind=\"owner\"}} {K}");
    conns.wait_json(Duration::from_secs(20), "owners moved to the holder", |v| {
        owners_fixed(v) == K as i64
    });
    diag_tests::wait_until(Duration::from_secs(20), "serve's owner corrections", || {
        scrape_metrics(metrics_port).lines().any(|l| l == corrected)
    });
    let ss = ss_per_pid("established", port);
    let out = conns.stop(libc::SIGINT);
    let metrics = scrape_metrics(metrics_port);
    drop(serve);
    drop(client);
    assert!(
        metrics
            .lines()
            .any(|l| l == format!("diag_tcp_reconcile_corrections_total{{kind=\"owner\"}} {K}")),
        "{metrics}"
    );
    assert_eq!(ss.get(&holder).copied(), Some(K), "{ss:?}");
    assert_eq!(ss.get(&parent), None);
    let snap = last_snapshot(&out);
    assert_eq!(get(&snap, holder, "states", "established"), K as i64);
    assert_eq!(get(&snap, parent, "states", "established"), 0);
    assert_eq!(owners_fixed(&snap), K as i64);
}

/// Two "containers": memory cgroups named as docker names them (a 64-hex
/// id), each with its own network namespace, each running a pre-fork
/// server and a client that holds K connections. `diag conns --group
/// container` sums each container's processes, every row carries its
/// cgroup, container id and network namespace (checked against
/// /proc/PID/ns/net and the cgroup diag was given), `--cgroup ID` keeps
/// one container's, and the sums match `ss` in each namespace.
#[test]
fn containers_are_told_apart_by_cgroup_netns_and_container_id() {
    use diag_tests::{MemCgroup, V1_ROOT};
    use std::io::{BufRead, BufReader};
    let test = "containers_are_told_apart_by_cgroup_netns_and_container_id";
    if !require_root(test) {
        return;
    }
    let _guard = serial();
    let (Some(na), Some(nb)) = (Netns::create("diag-ctr-a"), Netns::create("diag-ctr-b")) else {
        if in_ci() {
            panic!("{test}: `ip netns add` failed");
        }
        skipped(test, "cannot create network namespaces (ip netns add)");
        return;
    };
    if !std::path::Path::new(V1_ROOT).exists() {
        if in_ci() {
            panic!("{test}: no cgroup v1 memory hierarchy at {V1_ROOT}");
        }
        skipped(test, "no cgroup v1 memory hierarchy");
        return;
    }
    const K: usize = 6;
    let parent = MemCgroup::create(V1_ROOT, "ctr", "memory.limit_in_bytes", 1 << 30);
    let container = |id: &str| {
        let dir = parent.dir.join(id);
        std::fs::create_dir(&dir).unwrap();
        MemCgroup {
            dir,
            rel: format!("{}/{id}", parent.rel),
        }
    };
    let (ida, idb) = ("a1".repeat(32), "b2".repeat(32));
    let (ca, cb) = (container(&ida), container(&idb));
    let grouped = conns_watch(&["--group", "container"]);
    let filtered = conns_watch(&["--cgroup", &ida[..12]]);
    let tail_a = Diag::start(&["tail", "--json", "--cgroup", &ida[..12]]);

    // (server, client, server pid, worker pid, client pid)
    let start = |cg: &MemCgroup, ns: &Netns| {
        let k = K.to_string();
        let mut server = cg.spawn_with_env(
            "ip",
            &[
                "netns",
                "exec",
                &ns.0,
                LOADGEN,
                "prefork",
                "1",
                &k,
                "127.0.0.1:0",
                "hold",
            ],
            &[],
        );
        let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
        let mut next = || lines.next().unwrap().unwrap();
        let port = next().strip_prefix("PORT ").unwrap().to_string();
        let worker: u32 = next().strip_prefix("WORKER ").unwrap().parse().unwrap();
        let mut client = cg.spawn_with_env(
            "ip",
            &[
                "netns",
                "exec",
                &ns.0,
                LOADGEN,
                "connect-hold",
                &k,
                &format!("127.0.0.1:{port}"),
            ],
            &[],
        );
        let mut cl = BufReader::new(client.stdout.take().unwrap()).lines();
        assert_eq!(cl.next().unwrap().unwrap(), format!("CONNECTED {K}"));
        assert_eq!(next(), format!("DONE {worker}"));
        let (sp, cp) = (server.id(), client.id());
        (server, client, sp, worker, cp)
    };
    let a = start(&ca, &na);
    let b = start(&cb, &nb);
    let established = |ns: &Netns| {
        let o = Command::new("ip")
            .args(["netns", "exec", &ns.0, "ss", "-tnH", "state", "established"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).lines().count() as i64
    };
    let (ss_a, ss_b) = (established(&na), established(&nb));
    // The final snapshots (taken at the stop) read where each runs.
    let out = grouped.stop(libc::SIGINT);
    let only_a = filtered.stop(libc::SIGINT);
    let tail_out = tail_a.stop(libc::SIGINT);

    let snap = last_snapshot(&out);
    let groups = snap["groups"].as_array().expect("groups with --group");
    for (id, pids, ss, cg) in [
        (&ida, [a.2, a.3, a.4], ss_a, &ca),
        (&idb, [b.2, b.3, b.4], ss_b, &cb),
    ] {
        let g = groups
            .iter()
            .find(|g| g["group"] == id[..12])
            .unwrap_or_else(|| panic!("no group {}: {groups:?}", &id[..12]));
        assert_eq!(n(&g["processes"]), 3, "{g}");
        assert_eq!(n(&g["totals"]["passive_opens"]), K as i64, "{g}");
        assert_eq!(n(&g["totals"]["active_opens"]), K as i64, "{g}");
        assert_eq!(ss, 2 * K as i64, "ss in the namespace");
        assert_eq!(n(&g["states"]["established"]), ss, "{g}");
        assert_eq!(n(&g["states"]["listen"]), 1, "{g}");
        for pid in pids {
            let r = row(&snap, pid).unwrap_or_else(|| panic!("no row for {pid}"));
            assert_eq!(r["container"], id[..12], "{r}");
            assert_eq!(r["cgroup"], cg.rel, "{r}");
            assert_eq!(r["netns"].as_u64(), Some(netns_of(pid)), "{r}");
        }
    }
    assert_ne!(netns_of(a.2), netns_of(b.2));
    // The worker, not the server's parent, holds the connections.
    assert_eq!(get(&snap, a.3, "totals", "passive_opens"), K as i64);
    assert_eq!(get(&snap, a.2, "totals", "passive_opens"), 0);

    let snap = last_snapshot(&only_a);
    let rows = snap["processes"].as_array().unwrap();
    let pids: Vec<u64> = rows.iter().map(|r| r["pid"].as_u64().unwrap()).collect();
    for pid in [a.2, a.3, a.4] {
        assert!(pids.contains(&u64::from(pid)), "{pid} in {pids:?}");
    }
    assert!(rows.iter().all(|r| r["container"] == ida[..12]), "{rows:?}");

    // tail --cgroup: container A's events only, each saying where it ran.
    let evs = tail_events(&tail_out);
    assert!(
        evs.iter().all(|e| e["container"] == ida[..12]
            && e["cgroup"] == ca.rel
            && e["netns"].as_u64() == Some(netns_of(a.2))),
        "{evs:?}"
    );
    let named = |pid: u32| evs.iter().filter(|e| e["pid"] == pid).count();
    // The client's K connects; the worker's K taken from the listener.
    assert!(named(a.4) >= 2 * K, "the client's events");
    assert_eq!(
        evs.iter()
            .filter(|e| e["event"] == "tcp_accepted" && e["pid"] == a.3)
            .count(),
        K
    );
    for pid in [b.2, b.3, b.4] {
        assert_eq!(named(pid), 0, "container B's {pid}");
    }
    drop((a, b));
}

/// Debian's PostgreSQL server binaries (`/usr/lib/postgresql/N/bin`, the
/// newest), or None.
fn pg_bin() -> Option<std::path::PathBuf> {
    let mut dirs: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("postgres").exists() && b.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop()
}

/// A real PostgreSQL made for a test (initdb in a temporary directory,
/// TCP on 127.0.0.1 only, run as the `postgres` user), stopped and
/// removed on drop, even on failure.
struct Postgres {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Postgres {
    fn start(bin: &std::path::Path, port: u16) -> Postgres {
        let dir = std::env::temp_dir().join(format!("diag-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let chown = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&dir)
            .status()
            .expect("chown");
        assert!(chown.success(), "chown postgres {dir:?}");
        // setpriv execs (runuser and su fork): the child is the postmaster.
        let as_postgres = || {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid",
                "postgres",
                "--regid",
                "postgres",
                "--init-groups",
            ]);
            c
        };
        let data = dir.join("data");
        let init = as_postgres()
            .arg(bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("initdb");
        assert!(init.success(), "initdb {data:?}");
        let child = as_postgres()
            .arg(bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(&dir)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "shared_buffers=16MB",
                "-c",
                "max_connections=20",
                "-c",
                "fsync=off",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn postgres");
        let pg = Postgres { child, dir };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let listening = Command::new("ss")
                .args(["-Htln", &format!("( sport = :{port} )")])
                .output()
                .unwrap();
            if !listening.stdout.is_empty() {
                return pg;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "postgres did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT: PostgreSQL's fast shutdown.
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A real accept-then-fork server: the postmaster accepts each connection
/// and forks a backend that reads and writes it. Each connection is its
/// backend's from its first read (one `tcp_accepted` event), with no
/// correction by reconciliation: held connections per pid equal `ss -tnp`,
/// the backends each open and close one (in `diag conns` after they
/// exited), the postmaster none; the pids psql's own `pg_backend_pid()`
/// names are the ones `ss` shows.
#[test]
fn postgres_backends_own_their_connections() {
    let test = "postgres_backends_own_their_connections";
    if !require_root(test) || !require_tool(test, "psql", "postgresql") {
        return;
    }
    let Some(bin) = pg_bin() else {
        if in_ci() {
            panic!("{test}: needs Debian's postgresql (/usr/lib/postgresql/N/bin)");
        }
        skipped(test, "needs postgresql (apt-get install postgresql)");
        return;
    };
    let _guard = serial();
    const K: usize = 4;
    let port = free_port();
    let pg = Postgres::start(&bin, port);
    let postmaster = pg.pid();
    let mut conns = conns_watch(&[]);
    let tail = Diag::start(&["tail", "--json", "--port", &port.to_string()]);
    let clients: Vec<std::process::Child> = (0..K)
        .map(|_| {
            Command::new("psql")
                .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                .args(["-U", "postgres", "-d", "postgres", "-At", "-c"])
                .arg("select pg_backend_pid(), pg_sleep(4)")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("psql")
        })
        .collect();
    // While the queries sleep: K held connections, one per backend.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let ss = loop {
        let ss = ss_per_pid("established", port);
        if ss.values().sum::<usize>() == K {
            break ss;
        }
        assert!(std::time::Instant::now() < deadline, "ss: {ss:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        !ss.contains_key(&postmaster),
        "the postmaster holds none: {ss:?}"
    );
    assert!(ss.values().all(|&n| n == 1), "{ss:?}");
    let snap = conns.wait_json(
        Duration::from_secs(10),
        "each backend holding its connection",
        |v| ss.keys().all(|&p| get(v, p, "states", "established") == 1),
    );
    assert_eq!(get(&snap, postmaster, "states", "established"), 0);
    let mut named: Vec<u32> = Vec::new();
    for c in clients {
        let out = c.wait_with_output().expect("psql");
        assert!(
            out.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        named.push(
            text.trim()
                .split('|')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("pg_backend_pid: {text:?}")),
        );
    }
    let mut backends: Vec<u32> = ss.keys().copied().collect();
    backends.sort_unstable();
    named.sort_unstable();
    assert_eq!(named, backends, "pg_backend_pid() against ss -tnp");
    // Let the backends finish closing.
    std::thread::sleep(Duration::from_millis(500));
    let tail_out = tail.stop(libc::SIGINT);
    let out = conns.stop(libc::SIGINT);
    drop(pg);

    let evs = tail_events(&tail_out);
    for &b in &backends {
        let accepted = evs
            .iter()
            .filter(|e| e["event"] == "tcp_accepted" && e["pid"] == b)
            .count();
        assert_eq!(accepted, 1, "backend {b}: {evs:?}");
    }
    // The server side's close (in the backend's close(), or the client's
    // FIN arriving first) is the backend's, never the postmaster's.
    let server_closes: Vec<&Value> = evs
        .iter()
        .filter(|e| {
            e["event"] == "tcp_state"
                && e["sport"] == port
                && (is_transition(e, "ESTABLISHED", "FIN_WAIT1")
                    || is_transition(e, "ESTABLISHED", "CLOSE_WAIT"))
        })
        .collect();
    assert_eq!(server_closes.len(), K, "{server_closes:?}");
    for e in &server_closes {
        assert!(
            backends.contains(&(e["pid"].as_u64().unwrap() as u32)),
            "{e}"
        );
    }
    let snap = last_snapshot(&out);
    assert_eq!(snap["health"]["dropped"], 0);
    for &b in &backends {
        assert_eq!(get(&snap, b, "totals", "passive_opens"), 1, "backend {b}");
        assert_eq!(get(&snap, b, "totals", "closes"), 1, "backend {b}");
    }
    assert_eq!(get(&snap, postmaster, "totals", "passive_opens"), 0);
    assert_eq!(get(&snap, postmaster, "totals", "closes"), 0);
    assert_eq!(owners_fixed(&snap), 0, "no owner needed a correction");
}
