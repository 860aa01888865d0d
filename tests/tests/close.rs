//! Per-connection summaries at close (`diag tail --events close`): a
//! client sends exactly K bytes and receives exactly M over loopback; the
//! close records of both ends are checked against the client's own clock
//! and the kernel's own counters for its socket (`TCP_INFO`, read by the
//! client after EOF, when its socket is already CLOSE), and against what
//! each side wrote and read.

use std::{collections::HashMap, time::Duration};

use diag_tests::{Diag, Gen, TempDir, recorded, require_root, serial, wait_until};
use serde_json::Value;

const LOADGEN: &str = env!("CARGO_BIN_EXE_diag-loadgen");
/// Bytes the client sends, and the server answers.
const K: u64 = 123_457;
const M: u64 = 65_539;
/// How long the client waits between connect() and its first write: the
/// connection lasts at least this.
const HOLD_MS: u64 = 300;

/// What the client said about its connection: `EXCHANGE key value ...`.
struct Exchange {
    server_pid: u32,
    client_pid: u32,
    port: u16,
    f: HashMap<String, u64>,
}

impl Exchange {
    fn get(&self, k: &str) -> u64 {
        *self
            .f
            .get(k)
            .unwrap_or_else(|| panic!("no {k} in the client's line"))
    }
}

/// One exchange between an `exchange-server` and an `exchange` client,
/// both of which must finish: K bytes one way, M the other.
fn exchange() -> Exchange {
    exchange_on("127.0.0.1")
}

/// [`exchange`] over loopback address `host` (`[::1]` for IPv6).
fn exchange_on(host: &str) -> Exchange {
    let mut server = Gen::spawn(
        LOADGEN,
        &["exchange-server", &M.to_string(), &format!("{host}:0")],
    );
    let port = server.port();
    let mut client = Gen::spawn(
        LOADGEN,
        &[
            "exchange",
            &K.to_string(),
            &format!("{host}:{port}"),
            &HOLD_MS.to_string(),
        ],
    );
    let line = client.line();
    client.wait();
    assert_eq!(server.line(), format!("RECEIVED {K}"), "the server read K");
    server.wait();
    let words: Vec<&str> = line
        .strip_prefix("EXCHANGE ")
        .unwrap_or_else(|| panic!("not an exchange line: {line}"))
        .split_whitespace()
        .collect();
    let f: HashMap<String, u64> = words
        .chunks(2)
        .map(|kv| (kv[0].to_string(), kv[1].parse().unwrap()))
        .collect();
    let e = Exchange {
        server_pid: server.pid(),
        client_pid: client.pid(),
        port,
        f,
    };
    assert_eq!(e.get("received"), M, "the client read M: {line}");
    // TCP_CLOSE: the socket had reached CLOSE when the client took its
    // counters, so they are the final ones.
    assert_eq!(e.get("state"), 7, "{line}");
    e
}

#[track_caller]
fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// The close event of the client's socket (local port `sport`) and of
/// the server's (local port `port`, remote `sport`).
fn ends<'a>(events: &'a [Value], x: &Exchange) -> (Option<&'a Value>, Option<&'a Value>) {
    let sport = x.get("sport");
    let close = |e: &&Value| e["event"] == "tcp_close";
    let client = events
        .iter()
        .filter(close)
        .find(|e| e["sport"] == sport && e["dport"] == u64::from(x.port));
    let server = events
        .iter()
        .filter(close)
        .find(|e| e["sport"] == u64::from(x.port) && e["dport"] == sport);
    (client, server)
}

/// Both close records against the client's own numbers.
fn check(client: &Value, server: &Value, x: &Exchange) {
    // Owners: each side's own process.
    assert_eq!(client["pid"], u64::from(x.client_pid), "{client}");
    assert_eq!(server["pid"], u64::from(x.server_pid), "{server}");
    assert_eq!(client["comm"], "diag-loadgen", "{client}");
    assert_eq!(server["comm"], "diag-loadgen", "{server}");
    // The client shut down its side first; the server's FIN came after.
    assert_eq!(client["closed_by"], "local", "{client}");
    assert_eq!(server["closed_by"], "remote", "{server}");
    assert_eq!(server["old_state"], "LAST_ACK", "{server}");

    // The client's counters are the kernel's, exactly as TCP_INFO gave
    // them to the client itself.
    for (ours, theirs) in [
        ("bytes_acked", "bytes_acked"),
        ("bytes_sent", "bytes_sent"),
        ("bytes_received", "bytes_received"),
        ("total_retrans", "total_retrans"),
        ("srtt_us", "rtt_us"),
    ] {
        assert_eq!(n(&client[ours]), x.get(theirs), "{ours}: {client}");
    }
    // And what they mean: bytes_sent is the payload written (no
    // retransmission on loopback); bytes_acked and bytes_received count
    // sequence numbers, so the SYN (for the side that connected) and the
    // FIN each count one: the client's K bytes are acked as K + 2 (SYN,
    // FIN) and received by the server as K + 1 (its FIN); the server's M
    // bytes are acked as M + 1 (FIN) and received by the client as M + 1.
    assert_eq!(n(&client["total_retrans"]), 0, "{client}");
    assert_eq!(n(&client["bytes_sent"]), K, "{client}");
    assert_eq!(n(&client["bytes_acked"]), K + 2, "{client}");
    assert_eq!(n(&client["bytes_received"]), M + 1, "{client}");
    assert_eq!(n(&server["bytes_sent"]), M, "{server}");
    assert_eq!(n(&server["bytes_acked"]), M + 1, "{server}");
    assert_eq!(n(&server["bytes_received"]), K + 1, "{server}");
    assert_eq!(n(&server["total_retrans"]), 0, "{server}");
    // A loopback RTT: some microseconds, never zero after data was acked.
    let rtt = n(&server["srtt_us"]);
    assert!(rtt > 0 && rtt < 1_000_000, "{server}");

    // The duration by diag's clock within 5 % of the client's own (from
    // before its connect() to its EOF); the server's socket was born at
    // the handshake and ended at the last ACK, the same span.
    let own = x.get("duration_ns") as f64;
    assert!(own >= (HOLD_MS * 1_000_000) as f64);
    for e in [client, server] {
        let d = n(&e["duration_ns"]) as f64;
        assert!(
            (d - own).abs() <= own * 0.05,
            "duration {d} ns vs the client's {own} ns: {e}"
        );
    }
}

#[test]
fn close_summaries_match_the_kernels_own_counts() {
    if !require_root("close_summaries_match_the_kernels_own_counts") {
        return;
    }
    let _guard = serial();
    // The tp_btf program (the default) and the classic tracepoint's; IPv6.
    for (flags, host) in [
        (&[][..], "127.0.0.1"),
        (&["--classic-tcp"][..], "127.0.0.1"),
        (&[][..], "[::1]"),
    ] {
        let mut args = vec!["tail", "--json", "--events", "close"];
        args.extend_from_slice(flags);
        let mut tail = Diag::start(&args);
        let x = exchange_on(host);
        let sport = x.get("sport");
        let mut seen = Vec::new();
        while {
            let (c, s) = ends(&seen, &x);
            c.is_none() || s.is_none()
        } {
            let e = tail.wait_json(Duration::from_secs(15), "both close events", |e| {
                e["event"] == "tcp_close"
                    && (e["sport"] == sport || e["dport"] == sport)
                    && (e["sport"] == u64::from(x.port) || e["dport"] == u64::from(x.port))
            });
            seen.push(e);
        }
        let (client, server) = ends(&seen, &x);
        let (client, server) = (client.unwrap(), server.unwrap());
        check(client, server, &x);
        let family = if host.starts_with('[') { 6 } else { 4 };
        let addr = host.trim_matches(|c| c == '[' || c == ']');
        for e in [client, server] {
            assert_eq!(e["family"], family, "{flags:?} {e}");
            assert_eq!(
                (e["saddr"].as_str(), e["daddr"].as_str()),
                (Some(addr), Some(addr)),
                "{e}"
            );
        }
        let out = tail.stop(libc::SIGINT);
        // Only close events were shown (everything printed, the lines
        // read above included), one per end.
        let all = out.json();
        assert!(all.iter().all(|e| e["event"] == "tcp_close"), "{all:?}");
        let ours = all
            .iter()
            .filter(|e| e["sport"] == sport || e["dport"] == sport)
            .count();
        assert_eq!(ours, 2, "one summary per end ({flags:?} {host}): {all:?}");
    }
}

#[test]
fn close_summaries_are_recorded_and_replayed() {
    if !require_root("close_summaries_are_recorded_and_replayed") {
        return;
    }
    let _guard = serial();
    let dir = TempDir::new("close");
    let file = dir.path("close.diag");
    // The default recording keeps them.
    let rec = Diag::start(&["record", "-o", file.to_str().unwrap()]);
    let x = exchange();
    wait_until(Duration::from_secs(15), "both close events on disk", || {
        let evs = recorded(&file, &["--events", "close"]);
        let (c, s) = ends(&evs, &x);
        c.is_some() && s.is_some()
    });
    drop(rec);
    let evs = recorded(&file, &["--events", "close"]);
    let (client, server) = ends(&evs, &x);
    check(client.unwrap(), server.unwrap(), &x);

    // The text line of the same record: pid, comm, local, remote,
    // closed by, duration, tx (acked), rx, retrans, rtt.
    let out = std::process::Command::new(diag_tests::diag_bin())
        .arg("replay")
        .arg(&file)
        .args(["tail", "--events", "close", "--port", &x.port.to_string()])
        .output()
        .expect("run diag replay");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let sport = x.get("sport");
    let line = text
        .lines()
        .find(|l| l.contains(&format!("127.0.0.1:{sport} ")) && l.contains("by local"))
        .unwrap_or_else(|| panic!("no close line for the client: {text}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols[1], x.client_pid.to_string(), "{line}");
    assert_eq!(cols[2], "diag-loadgen", "{line}");
    assert_eq!(cols[3], format!("127.0.0.1:{sport}"), "{line}");
    assert_eq!(cols[4], format!("127.0.0.1:{}", x.port), "{line}");
    assert_eq!(cols[5..8], ["CLOSED", "by", "local"], "{line}");
    assert!(cols[8].ends_with("ms"), "{line}");
    assert_eq!(cols[9], (K + 2).to_string(), "{line}");
    assert_eq!(cols[10], (M + 1).to_string(), "{line}");
    assert_eq!(cols[11], "0", "{line}");
    assert!(text.lines().next().unwrap().contains("CLOSED BY"), "{text}");
}

#[test]
fn an_aborted_connection_is_closed_by_reset() {
    if !require_root("an_aborted_connection_is_closed_by_reset") {
        return;
    }
    let _guard = serial();
    let mut tail = Diag::start(&["tail", "--json", "--events", "close"]);
    let mut server = Gen::spawn(LOADGEN, &["listen", "1", "127.0.0.1:0"]);
    let port = server.port();
    let client = std::process::Command::new(LOADGEN)
        .args(["abort", "1", &format!("127.0.0.1:{port}")])
        .status()
        .expect("diag-loadgen abort");
    assert!(client.success());
    // (The server's read may end in ECONNRESET: it is not waited for.)
    // SO_LINGER 0: the client's socket goes ESTABLISHED -> CLOSE with a
    // reset, and so does the server's when it arrives.
    let mut by = Vec::new();
    for _ in 0..2 {
        let e = tail.wait_json(Duration::from_secs(15), "a close by reset", |e| {
            e["event"] == "tcp_close"
                && (e["sport"] == u64::from(port) || e["dport"] == u64::from(port))
        });
        by.push((e["closed_by"].clone(), e["old_state"].clone()));
    }
    assert!(
        by.iter().all(|(c, s)| c == "reset" && s == "ESTABLISHED"),
        "{by:?}"
    );
}

/// The value of the sample `name{...pid="PID"...}` in a scrape.
fn metric(body: &str, name: &str, pid: u32) -> Option<u64> {
    let want = format!("pid=\"{pid}\"");
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(&want))
        .find_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
}

#[test]
fn close_bytes_and_rtt_in_conns_and_serve() {
    if !require_root("close_bytes_and_rtt_in_conns_and_serve") {
        return;
    }
    let _guard = serial();
    let port = diag_tests::free_port();
    let addr = format!("127.0.0.1:{port}");
    let _serve = Diag::start(&["serve", "--listen", &addr, "--top", "500"]);
    let mut conns = Diag::start(&["conns", "--json", "--watch", "--top", "0"]);
    let x = exchange();
    let dest = format!("127.0.0.1:{}", x.port);
    // conns: the client's bytes (its own TCP_INFO's) and the RTT of its
    // one connection to the server's port (a median of one sample: the
    // client's own tcpi_rtt at the close).
    let snap = conns.wait_json(
        Duration::from_secs(15),
        "a snapshot with the exchange's close",
        |s| {
            s["close_rtt"]
                .as_array()
                .is_some_and(|d| d.iter().any(|d| d["remote"] == dest.as_str()))
        },
    );
    let d = snap["close_rtt"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["remote"] == dest.as_str())
        .unwrap();
    assert_eq!(n(&d["closed"]), 1, "{d}");
    assert_eq!(n(&d["rtt_p50_us"]), x.get("rtt_us"), "{d}");
    assert_eq!(n(&d["bytes_acked"]), x.get("bytes_acked"), "{d}");
    assert_eq!(n(&d["bytes_received"]), x.get("bytes_received"), "{d}");
    let row = |pid: u32| {
        snap["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pid"] == u64::from(pid))
            .cloned()
            .unwrap_or_else(|| panic!("no row for pid {pid}: {snap}"))
    };
    let c = row(x.client_pid);
    assert_eq!(n(&c["totals"]["bytes_acked"]), K + 2, "{c}");
    assert_eq!(n(&c["totals"]["bytes_received"]), M + 1, "{c}");
    let s = row(x.server_pid);
    assert_eq!(n(&s["totals"]["bytes_acked"]), M + 1, "{s}");
    assert_eq!(n(&s["totals"]["bytes_received"]), K + 1, "{s}");
    // The heaviest connections list has them.
    assert!(
        snap["heaviest"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["pid"] == u64::from(x.client_pid) && h["remote"] == dest.as_str()),
        "{snap}"
    );

    // serve: the same bytes per process series, credited at the close
    // (a new series shows 0 to a scraper once before its value).
    let mut body = String::new();
    wait_until(Duration::from_secs(15), "the bytes in /metrics", || {
        body = diag_tests::scrape_metrics(port);
        metric(&body, "diag_tcp_bytes_sent_total", x.client_pid) == Some(K + 2)
            && metric(&body, "diag_tcp_bytes_received_total", x.server_pid) == Some(K + 1)
    });
    let sent = |pid| metric(&body, "diag_tcp_bytes_sent_total", pid);
    let received = |pid| metric(&body, "diag_tcp_bytes_received_total", pid);
    assert_eq!(sent(x.client_pid), Some(K + 2), "{body}");
    assert_eq!(received(x.client_pid), Some(M + 1), "{body}");
    assert_eq!(sent(x.server_pid), Some(M + 1), "{body}");
    assert_eq!(received(x.server_pid), Some(K + 1), "{body}");
}
