//! `diag conns`: per-process TCP analytics checked against the kernel's own
//! accounting: `ss` for socket states, /proc/net/snmp for counters.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use diag_tests::{Diag, Gen, loopback_churn, require_root, serial, tcp_snmp};
use serde_json::Value;

const LOADGEN: &str = env!("CARGO_BIN_EXE_diag-loadgen");

fn run(args: &[&str]) -> String {
    let out = Command::new(LOADGEN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Sockets `ss` shows in `state` with `port` on either side.
fn ss_count(state: &str, port: u16) -> usize {
    let filter = format!("( sport = :{port} or dport = :{port} )");
    let out = Command::new("ss")
        .args(["-Htan", "state", state, &filter])
        .output()
        .expect("ss (iproute2)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

/// The last (final) snapshot diag printed.
fn last_snapshot(out: &diag_tests::Output) -> Value {
    let snaps = out.json();
    let last = snaps
        .last()
        .unwrap_or_else(|| panic!("no snapshot: {:?}", out.stderr))
        .clone();
    assert_eq!(last["final"], true, "{last}");
    last
}

fn proc_row(snap: &Value, pid: impl Into<u64>) -> Value {
    let pid: u64 = pid.into();
    snap["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["pid"] == pid)
        .unwrap_or_else(|| panic!("no row for pid {pid}: {}", snap["processes"]))
        .clone()
}

#[track_caller]
fn n(v: &Value) -> i64 {
    match v.as_i64() {
        Some(x) => x,
        None => panic!("not a number: {v}"),
    }
}

#[test]
fn churn_time_wait_resets_agree_with_ss_and_snmp() {
    if !require_root("churn_time_wait_resets_agree_with_ss_and_snmp") {
        return;
    }
    let _guard = serial();
    const N: usize = 200;
    let before = tcp_snmp();
    let diag = Diag::start(&[
        "conns",
        "--json",
        "--watch",
        "--interval",
        "1s",
        "--top",
        "0",
    ]);

    // Churn: N connections, the client closes first (its TIME_WAIT).
    let churn = loopback_churn(LOADGEN, N);
    let (port, listener_pid, client_pid) = (churn.port, churn.listener, u64::from(churn.client));

    // A refused connect (a reset for no socket, received by the client)
    // and two aborted connections (resets sent from ESTABLISHED).
    let mut closed = Gen::spawn(LOADGEN, &["listen-hold", "2", "127.0.0.1:0"]);
    let abort_port = closed.port();
    let prober = Command::new(LOADGEN)
        .args(["try-connect", "1", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let prober_pid = u64::from(prober.id());
    let out = prober.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "REFUSED 1");
    let aborter = Command::new(LOADGEN)
        .args(["abort", "2", &format!("127.0.0.1:{abort_port}")])
        .spawn()
        .unwrap();
    let aborter_pid = u64::from(aborter.id());
    assert!(aborter.wait_with_output().unwrap().status.success());
    assert_eq!(closed.line(), "ACCEPTED");

    let tw_ss = ss_count("time-wait", port);
    let out = diag.stop(libc::SIGINT);
    let after = tcp_snmp();
    drop(closed);
    assert!(out.status.success(), "{:?}", out.stderr);
    let snap = last_snapshot(&out);
    assert_eq!(snap["health"]["dropped"], 0);

    let c = proc_row(&snap, client_pid);
    assert_eq!(c["comm"], "diag-loadgen");
    assert_eq!(n(&c["totals"]["active_opens"]), N as i64);
    assert_eq!(n(&c["totals"]["closes"]), N as i64);
    assert_eq!(n(&c["totals"]["passive_opens"]), 0);
    assert_eq!(
        n(&c["totals"]["time_waits"]),
        N as i64,
        "the client closed first"
    );
    // TIME_WAIT now: what ss shows for the test's port (tw_reuse may have
    // recycled a few, so compare with ss, not with N).
    assert_eq!(
        n(&c["states"]["time_wait"]),
        tw_ss as i64,
        "TIME_WAIT vs ss"
    );
    assert!(tw_ss > N / 2, "ss shows {tw_ss} TIME_WAIT");
    assert!(n(&c["lifetime_max_ns"]) > 0);

    let l = proc_row(&snap, listener_pid);
    assert_eq!(n(&l["totals"]["passive_opens"]), N as i64);
    assert_eq!(n(&l["totals"]["closes"]), N as i64);
    assert_eq!(n(&l["states"]["time_wait"]), 0);

    let p = proc_row(&snap, prober_pid);
    assert_eq!(n(&p["totals"]["resets_received"]), 1);
    assert_eq!(n(&p["totals"]["failed_connects"]), 1);
    let a = proc_row(&snap, aborter_pid);
    assert_eq!(n(&a["totals"]["resets_sent"]), 2);
    assert_eq!(n(&a["totals"]["aborts"]), 2);

    // The kernel's counters over a window that contains diag's.
    let d = |k: &str| after[k] - before[k];
    let t = &snap["totals"];
    assert_eq!(d("ActiveOpens"), n(&t["active_opens"]), "ActiveOpens");
    assert_eq!(d("PassiveOpens"), n(&t["passive_opens"]), "PassiveOpens");
    assert_eq!(
        d("OutRsts"),
        n(&t["resets_sent"]) + n(&snap["kernel_resets_sent"]),
        "OutRsts"
    );
    assert_eq!(d("EstabResets"), n(&t["aborts"]), "EstabResets");
    assert_eq!(d("RetransSegs"), n(&t["retransmits"]), "RetransSegs");
    assert!(d("ActiveOpens") >= N as i64 + 3);
}

#[test]
fn close_wait_leak_is_reported_with_owner_and_age() {
    if !require_root("close_wait_leak_is_reported_with_owner_and_age") {
        return;
    }
    let _guard = serial();
    const K: usize = 5;
    let diag = Diag::start(&[
        "conns",
        "--json",
        "--interval",
        "3s",
        "--close-wait-threshold",
        "1s",
        "--top",
        "0",
    ]);
    let mut server = Gen::spawn(LOADGEN, &["listen-hold", &K.to_string(), "127.0.0.1:0"]);
    let port = server.port();
    run(&["connect", &K.to_string(), &format!("127.0.0.1:{port}")]);
    assert_eq!(server.line(), "ACCEPTED");
    // One snapshot after 3 s: the leaks are then more than 1 s old.
    let out = diag.wait_exit(Duration::from_secs(20));
    assert!(out.status.success(), "{:?}", out.stderr);
    let snap = last_snapshot(&out);
    let s = proc_row(&snap, server.pid());
    assert_eq!(n(&s["states"]["close_wait"]), K as i64);
    assert_eq!(n(&s["leaks"]), K as i64);
    assert_eq!(ss_count("close-wait", port), K, "ss agrees");
    let leaks: Vec<&Value> = snap["leaks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["pid"] == server.pid())
        .collect();
    assert_eq!(leaks.len(), K);
    for l in leaks {
        assert!(n(&l["age_ns"]) >= 1_000_000_000, "{l}");
        assert_eq!(l["age_is_lower_bound"], false);
        assert!(l["local"].as_str().unwrap().ends_with(&format!(":{port}")));
    }
    let hint = format!(
        "pid {} (diag-loadgen) has {K} sockets in CLOSE_WAIT",
        server.pid()
    );
    assert!(
        snap["hints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h.as_str().unwrap().starts_with(&hint)),
        "{}",
        snap["hints"]
    );
}

#[test]
fn sockets_older_than_diag_are_counted_from_the_start() {
    if !require_root("sockets_older_than_diag_are_counted_from_the_start") {
        return;
    }
    let _guard = serial();
    const K: usize = 3;
    let mut server = Gen::spawn(LOADGEN, &["listen-hold", &K.to_string(), "127.0.0.1:0"]);
    let port = server.port();
    let mut client = Gen::spawn(
        LOADGEN,
        &["connect-hold", &K.to_string(), &format!("127.0.0.1:{port}")],
    );
    assert_eq!(client.line(), format!("CONNECTED {K}"));
    assert_eq!(server.line(), "ACCEPTED");
    let diag = Diag::start(&["conns", "--json", "--interval", "1s", "--top", "0"]);
    let out = diag.wait_exit(Duration::from_secs(20));
    assert!(out.status.success(), "{:?}", out.stderr);
    let snap = last_snapshot(&out);
    let s = proc_row(&snap, server.pid());
    assert_eq!(n(&s["states"]["established"]), K as i64);
    assert_eq!(n(&s["states"]["listen"]), 1);
    let c = proc_row(&snap, client.pid());
    assert_eq!(n(&c["states"]["established"]), K as i64);
    assert_eq!(ss_count("established", port), 2 * K);
}

#[test]
fn syn_retransmits_are_counted_like_the_kernel() {
    if !require_root("syn_retransmits_are_counted_like_the_kernel") {
        return;
    }
    let _guard = serial();
    let mut full = Gen::spawn(LOADGEN, &["listen-full", "127.0.0.1:0"]);
    let port = full.port();
    let before = tcp_snmp();
    let diag = Diag::start(&["conns", "--json", "--watch", "--top", "0"]);
    // The first connection fills the accept queue; the SYNs of the other
    // two are dropped and retransmitted after the initial RTO (1 s).
    let client = Command::new(LOADGEN)
        .args(["connect-timeout", "3", "2500", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let client_pid = u64::from(client.id());
    let out = client.wait_with_output().unwrap();
    assert!(out.status.success());
    // No wait: stopping diag drains what the kernel wrote first.
    let out = diag.stop(libc::SIGINT);
    let after = tcp_snmp();
    drop(full);
    let snap = last_snapshot(&out);
    let c = proc_row(&snap, client_pid);
    assert!(n(&c["totals"]["retransmits"]) >= 2, "{c}");
    assert_eq!(
        after["RetransSegs"] - before["RetransSegs"],
        n(&snap["totals"]["retransmits"]),
        "RetransSegs"
    );
}

/// A TcpExt counter of /proc/net/netstat.
fn tcp_ext(name: &str) -> i64 {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap();
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no TcpExt {name}"))
}

/// The `CONNECT_NS` lines of a connect-timed client.
fn connect_times(out: &str) -> Vec<u64> {
    out.lines()
        .filter_map(|l| l.strip_prefix("CONNECT_NS ")?.parse().ok())
        .collect()
}

/// Connect latency: to a healthy listener connects take microseconds; to
/// one whose accept queue is full (backlog 1, accepting only after
/// 500 ms) the connect beyond the queue loses its SYN, which the kernel
/// retransmits after its initial 1 s timeout. diag's times (the kernel's
/// time in SYN_SENT) match the client's own clock, the queue's
/// overflows show in ListenOverflows, and serve's histogram counts them.
#[test]
fn connect_latency_shows_the_lost_syn() {
    if !require_root("connect_latency_shows_the_lost_syn") {
        return;
    }
    let _guard = serial();
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{metrics_port}");
    let serve = Diag::start(&["serve", "--no-sched", "--listen", &listen]);
    let conns = Diag::start(&["conns", "--json", "--watch", "--top", "0"]);
    let overflows = tcp_ext("ListenOverflows");

    let mut fast = Gen::spawn(LOADGEN, &["listen", "20", "127.0.0.1:0"]);
    let fast_port = fast.port();
    let fast_times = connect_times(&run(&[
        "connect-timed",
        "20",
        &format!("127.0.0.1:{fast_port}"),
    ]));
    fast.wait();
    let mut slow = Gen::spawn(LOADGEN, &["listen-late", "500", "4", "127.0.0.1:0"]);
    let slow_port = slow.port();
    let client = Command::new(LOADGEN)
        .args(["connect-timed", "4", &format!("127.0.0.1:{slow_port}")])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let client_pid = client.id();
    let out = client.wait_with_output().unwrap();
    assert!(out.status.success());
    let slow_times = connect_times(&String::from_utf8_lossy(&out.stdout));
    slow.wait();
    let overflowed = tcp_ext("ListenOverflows") - overflows;

    let scrape_now = || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut t = String::new();
        s.read_to_string(&mut t).unwrap();
        t
    };
    let value = |scrape: &str, prefix: &str| -> Option<f64> {
        scrape
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    // serve's histogram: every connect (the last events may still be on
    // their way from the ring buffer), the slow ones past 0.5 s.
    let over_half = |scrape: &str| -> Option<f64> {
        let count = value(scrape, "diag_tcp_connect_seconds_count")?;
        let under = scrape
            .lines()
            .filter(|l| l.starts_with("diag_tcp_connect_seconds_bucket{le=\""))
            .filter_map(|l| {
                let le: f64 = l.split('"').nth(1)?.parse().ok()?;
                (le < 0.5).then(|| l.rsplit(' ').next()?.parse::<f64>().ok())?
            })
            .fold(0.0, f64::max);
        (count >= 24.0).then_some(count - under)
    };
    let slow_client = slow_times.iter().filter(|&&t| t >= 900_000_000).count() as u64;
    let mut scrape = String::new();
    diag_tests::wait_until(Duration::from_secs(10), "serve's histogram", || {
        scrape = scrape_now();
        over_half(&scrape).is_some_and(|n| n >= slow_client as f64)
    });
    drop(serve);
    let snap = last_snapshot(&conns.stop(libc::SIGINT));

    // The client's own clock: one connect waited for the retransmission.
    assert_eq!(slow_times.len(), 4);
    let client_max = *slow_times.iter().max().unwrap();
    assert!(
        (900_000_000..2_500_000_000).contains(&client_max),
        "{slow_times:?}"
    );
    assert!(overflowed >= 1, "ListenOverflows +{overflowed}");
    let dest = |port: u16| -> Value {
        snap["connect_latency"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["remote"] == format!("127.0.0.1:{port}"))
            .unwrap_or_else(|| panic!("no destination :{port}: {}", snap["connect_latency"]))
            .clone()
    };
    let n = |v: &Value| v.as_u64().unwrap();
    let s = dest(slow_port);
    assert_eq!(n(&s["connects"]), 4, "{s}");
    assert_eq!(n(&s["slow"]), slow_client, "{s} {slow_times:?}");
    // The kernel's SYN_SENT time and the client's connect() agree.
    let diff = n(&s["max_ns"]).abs_diff(client_max);
    assert!(diff < client_max / 20, "diag {s} client {client_max}");
    let f = dest(fast_port);
    assert_eq!(n(&f["connects"]), 20, "{f}");
    assert_eq!(n(&f["slow"]), 0, "{f}");
    assert!(n(&f["max_ns"]) < 50_000_000, "{f} {fast_times:?}");
    let row = proc_row(&snap, client_pid);
    assert_eq!(n(&row["connects"]), 4);
    assert_eq!(n(&row["connect_max_ns"]), n(&s["max_ns"]));
    assert!(
        snap["hints"].as_array().unwrap().iter().any(|h| h
            .as_str()
            .unwrap()
            .contains(&format!("127.0.0.1:{slow_port}"))),
        "{}",
        snap["hints"]
    );

    assert_eq!(over_half(&scrape), Some(slow_client as f64), "{scrape}");
}
