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
