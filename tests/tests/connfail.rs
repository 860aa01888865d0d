//! Failed connects with their cause, in a network namespace of the test's
//! own (its /proc/net/snmp counts nothing else): connects to a closed port
//! (the peer's reset: ECONNREFUSED) and to a port an nft rule blackholes
//! (the SYN retries run out: ETIMEDOUT), named per process and
//! destination in `diag tail`, `diag conns`, `diag serve` and recordings,
//! and checked against the client's own errno tally and the namespace's
//! Tcp AttemptFails.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use diag_tests::{
    Diag, Netns, TempDir, free_port, in_ci, recorded, require_root, require_tool, scrape_metrics,
    serial, skipped,
};
use serde_json::Value;

const LOADGEN: &str = env!("CARGO_BIN_EXE_diag-loadgen");

/// A namespace for `test`, or None (skipped; in CI a loud failure).
fn netns(test: &str, name: &str) -> Option<Netns> {
    match Netns::create(name) {
        Some(ns) => Some(ns),
        None if in_ci() => panic!("{test}: `ip netns add` failed"),
        None => {
            skipped(test, "cannot create network namespaces (ip netns add)");
            None
        }
    }
}

/// Run `diag-loadgen connect-errors COUNT ADDR` in `ns`: its pid and its
/// own tally (`ok`, then errno numbers with counts).
fn connect_errors(ns: &Netns, count: usize, addr: &str) -> (u32, Vec<(String, u64)>) {
    let child = ns
        .exec(LOADGEN)
        .args(["connect-errors", &count.to_string(), addr])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn loadgen");
    // `ip netns exec` execs the program: the pid is the client's.
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT: {text}"));
    let tally = line
        .split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect();
    (pid, tally)
}

fn attempt_fails(ns: &Netns) -> i64 {
    ns.tcp_snmp()["AttemptFails"]
}

/// `diag conns` rows of failed connects of `pid` to `remote`, by error.
fn failures(snap: &Value, pid: u32, remote: &str) -> Vec<(String, u64, u64)> {
    snap["connect_failures"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["pid"] == u64::from(pid) && f["remote"] == remote)
        .map(|f| {
            (
                f["error"].as_str().unwrap().to_string(),
                f["count"].as_u64().unwrap(),
                f["interval"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn process_row(snap: &Value, pid: u32) -> Option<Value> {
    snap["processes"]
        .as_array()?
        .iter()
        .find(|r| r["pid"] == u64::from(pid))
        .cloned()
}

/// The SYN_SENT -> CLOSE events of `pid` in a tail's (or a replay's)
/// JSON lines.
fn failed_events(evs: &[Value], pid: u32) -> Vec<Value> {
    evs.iter()
        .filter(|e| {
            e["event"] == "tcp_state"
                && e["old_state"] == "SYN_SENT"
                && e["new_state"] == "CLOSE"
                && e["pid"] == u64::from(pid)
        })
        .cloned()
        .collect()
}

fn conns_watch() -> Diag {
    Diag::start(&[
        "conns",
        "--json",
        "--watch",
        "--interval",
        "1s",
        "--top",
        "0",
    ])
}

#[test]
fn connects_to_a_closed_port_are_refused_per_process_and_destination() {
    let test = "connects_to_a_closed_port_are_refused_per_process_and_destination";
    if !require_root(test) {
        return;
    }
    let _guard = serial();
    let Some(ns) = netns(test, "diag-fail-refused") else {
        return;
    };
    const N: usize = 7;
    // A fresh namespace: nothing listens on any port.
    const PORT: u16 = 19009;
    let remote = format!("127.0.0.1:{PORT}");
    let ino = ns.inode();
    let dir = TempDir::new("connfail");
    let file = dir.path("refused.diag");
    let recorder = Diag::start(&["record", "-o", file.to_str().unwrap()]);
    let mut conns = conns_watch();
    let tail = Diag::start(&["tail", "--json", "--netns", &ino.to_string()]);
    let metrics_port = free_port();
    let serve = Diag::start(&[
        "serve",
        "--listen",
        &format!("127.0.0.1:{metrics_port}"),
        "--top",
        "500",
    ]);

    let fails_before = attempt_fails(&ns);
    let (pid, tally) = connect_errors(&ns, N, &remote);
    let fails = attempt_fails(&ns) - fails_before;
    // The client's own tally: every connect refused.
    let refused = libc::ECONNREFUSED.to_string();
    assert_eq!(
        tally,
        vec![("ok".to_string(), 0), (refused, N as u64)],
        "the client's tally"
    );
    // The kernel's own count of connects that failed (tcp_done in
    // SYN_SENT), in this namespace only.
    assert_eq!(fails, N as i64, "AttemptFails delta");

    // conns: per process and destination, with the error.
    let snap = conns.wait_json(Duration::from_secs(15), "the refused connects", |v| {
        failures(v, pid, &remote).iter().map(|f| f.1).sum::<u64>() >= N as u64
    });
    let f = failures(&snap, pid, &remote);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(
        (f[0].0.as_str(), f[0].1),
        ("ECONNREFUSED", N as u64),
        "{f:?}"
    );
    let row = process_row(&snap, pid).expect("the client's row");
    assert_eq!(row["comm"], "diag-loadgen");
    assert_eq!(row["totals"]["failed_connects"], N as u64, "{row}");
    assert_eq!(
        row["connect_errors"],
        serde_json::json!([["ECONNREFUSED", N]]),
        "{row}"
    );
    let hint = format!("pid {pid} (diag-loadgen) could not connect to {remote}: ");
    let hints = |v: &Value| -> Vec<String> {
        v["hints"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|h| h.as_str().map(str::to_string))
            .filter(|h| h.starts_with(&hint))
            .collect()
    };
    // The interval the failures fell in names them (they may span two).
    let with_hint = if hints(&snap).is_empty() {
        conns.wait_json(Duration::from_secs(5), "the hint", |v| !hints(v).is_empty())
    } else {
        snap
    };
    let h = hints(&with_hint);
    assert!(
        h[0].ends_with(
            "ECONNREFUSED — nothing listens there (the host answered the SYN with a reset)"
        ),
        "{h:?}"
    );

    // tail: each failed connect's line names the error.
    let out = tail.stop(libc::SIGINT);
    let evs = failed_events(&out.json(), pid);
    assert_eq!(evs.len(), N, "{evs:?}");
    for e in &evs {
        assert_eq!(e["error"], "ECONNREFUSED", "{e}");
        assert_eq!(e["errno"], libc::ECONNREFUSED, "{e}");
        assert_eq!(e["dport"], u64::from(PORT), "{e}");
        assert_eq!(e["netns"], ino, "{e}");
    }

    // serve: the process's series, by error.
    let want = N as f64;
    let mut last = String::new();
    diag_tests::wait_until(Duration::from_secs(10), "the failures in serve", || {
        last = scrape_metrics(metrics_port);
        let got: f64 = last
            .lines()
            .filter(|l| {
                l.starts_with("diag_tcp_connect_failures_total{")
                    && l.contains(&format!("pid=\"{pid}\""))
                    && l.contains("error=\"ECONNREFUSED\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        got == want
    });
    assert!(
        last.contains("# TYPE diag_tcp_connect_failures_total counter"),
        "{last}"
    );
    drop(serve);

    // The recording keeps them: its replay says the same.
    let pid_s = pid.to_string();
    diag_tests::wait_until(Duration::from_secs(15), "the recording", || {
        failed_events(&recorded(&file, &["--pid", &pid_s]), pid).len() == N
    });
    assert!(recorder.stop(libc::SIGINT).status.success());
    let replayed = failed_events(&recorded(&file, &["--pid", &pid_s]), pid);
    assert!(
        replayed.iter().all(|e| e["error"] == "ECONNREFUSED"),
        "{replayed:?}"
    );
    let o = Command::new(diag_tests::diag_bin())
        .arg("replay")
        .arg(&file)
        .args(["conns", "--json", "--top", "0"])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    let last = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .next_back()
        .unwrap_or_else(|| panic!("no replayed snapshot: {text}"));
    assert_eq!(
        failures(&last, pid, &remote)
            .iter()
            .map(|f| (f.0.as_str(), f.1))
            .collect::<Vec<_>>(),
        vec![("ECONNREFUSED", N as u64)]
    );
    let report = Command::new(diag_tests::diag_bin())
        .arg("report")
        .arg(&file)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&report.stdout);
    assert!(
        report.lines().any(|l| l.contains("failed connects: pid")
            && l.contains(&pid_s)
            && l.contains(&remote)
            && l.trim_end().ends_with(&format!("{N} ECONNREFUSED"))),
        "{report}"
    );
    drop(conns);
    drop(ns);
}

#[test]
fn connects_to_a_blackholed_port_time_out_per_process_and_destination() {
    let test = "connects_to_a_blackholed_port_time_out_per_process_and_destination";
    if !require_root(test) || !require_tool(test, "nft", "nftables") {
        return;
    }
    let _guard = serial();
    let Some(ns) = netns(test, "diag-fail-blackhole") else {
        return;
    };
    const M: usize = 2;
    const PORT: u16 = 19010;
    let remote = format!("127.0.0.1:{PORT}");
    // One SYN retransmission, then ETIMEDOUT: 1 s + 2 s.
    let st = ns
        .exec("sysctl")
        .args(["-qw", "net.ipv4.tcp_syn_retries=1"])
        .status()
        .unwrap();
    assert!(st.success(), "sysctl in the namespace");
    // A firewall that drops the SYNs on their way in.
    let rules = format!(
        "table inet diagfail {{ chain input {{ type filter hook input priority 0; tcp dport {PORT} drop; }}; }}"
    );
    let st = ns.exec("nft").arg(&rules).status().unwrap();
    assert!(st.success(), "nft rules in the namespace");
    let ino = ns.inode();
    let mut conns = conns_watch();
    let tail = Diag::start(&["tail", "--json", "--netns", &ino.to_string()]);

    let fails_before = attempt_fails(&ns);
    let (pid, tally) = connect_errors(&ns, M, &remote);
    let fails = attempt_fails(&ns) - fails_before;
    let timedout = libc::ETIMEDOUT.to_string();
    assert_eq!(
        tally,
        vec![("ok".to_string(), 0), (timedout, M as u64)],
        "the client's tally"
    );
    assert_eq!(fails, M as i64, "AttemptFails delta");

    let snap = conns.wait_json(Duration::from_secs(15), "the timed-out connects", |v| {
        failures(v, pid, &remote).iter().map(|f| f.1).sum::<u64>() >= M as u64
    });
    let f = failures(&snap, pid, &remote);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!((f[0].0.as_str(), f[0].1), ("ETIMEDOUT", M as u64), "{f:?}");
    let row = process_row(&snap, pid).expect("the client's row");
    assert_eq!(row["totals"]["failed_connects"], M as u64, "{row}");
    let out = tail.stop(libc::SIGINT);
    let evs = failed_events(&out.json(), pid);
    assert_eq!(evs.len(), M, "{evs:?}");
    for e in &evs {
        assert_eq!(e["error"], "ETIMEDOUT", "{e}");
        assert_eq!(e["dport"], u64::from(PORT), "{e}");
        // SYN_SENT for the two tries: about 3 s.
        let ns = e["in_old_state_ns"].as_u64().unwrap();
        assert!((2_500_000_000..6_000_000_000).contains(&ns), "{e}");
    }
    drop(conns);
    drop(ns);
}
