//! TCP state transitions: real loopback connections between two processes
//! with known pids, checked transition by transition and against the
//! kernel's own counters (/proc/net/snmp).

use std::{collections::HashMap, process::Command};

use diag_tests::{Diag, Gen, loopback_churn, require_root, serial, tcp_snmp};
use serde_json::Value;

const LOADGEN: &str = env!("CARGO_BIN_EXE_diag-loadgen");
const N: usize = 50;

fn transition(e: &Value) -> String {
    format!(
        "{}->{}",
        e["old_state"].as_str().unwrap(),
        e["new_state"].as_str().unwrap()
    )
}

/// Split events into per-socket histories: by skaddr, a history ending
/// at the transition to CLOSE (the address may then be reused).
fn histories(events: &[Value]) -> Vec<Vec<Value>> {
    let mut open: HashMap<String, Vec<Value>> = HashMap::new();
    let mut done = Vec::new();
    for e in events {
        let key = e["skaddr"].as_str().unwrap().to_string();
        let h = open.entry(key.clone()).or_default();
        h.push(e.clone());
        if e["new_state"] == "CLOSE" {
            done.push(open.remove(&key).unwrap());
        }
    }
    done.extend(open.into_values());
    done
}

#[test]
fn tail_attributes_every_transition_to_the_owner() {
    if !require_root("tail_attributes_every_transition_to_the_owner") {
        return;
    }
    attributes_every_transition(&[], "tp_btf:inet_sock_set_state");
}

/// The same facts from the classic tracepoint (the fallback when the
/// kernel's BTF lacks what the raw one needs).
#[test]
fn classic_tracepoint_attributes_every_transition_too() {
    if !require_root("classic_tracepoint_attributes_every_transition_too") {
        return;
    }
    attributes_every_transition(&["--classic-tcp"], "sock:inet_sock_set_state");
}

fn attributes_every_transition(extra: &[&str], program: &str) {
    let _guard = serial();

    // The listener, owned by one process: one IPv4 and one IPv6 socket.
    let mut listener = Gen::spawn(
        LOADGEN,
        &["listen", &N.to_string(), "127.0.0.1:0", "[::1]:0"],
    );
    let port4: u16 = listener.port();
    let port6: u16 = listener.port();
    let listener_pid = listener.pid();

    let mut args = vec![
        "tail".to_string(),
        "--json".into(),
        "--port".into(),
        port4.to_string(),
        "--port".into(),
        port6.to_string(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let diag = Diag::start(&args);
    let before = tcp_snmp();

    // The client: another process, N connections to each listener.
    let client = Command::new(LOADGEN)
        .args([
            "connect",
            &N.to_string(),
            &format!("127.0.0.1:{port4}"),
            &format!("[::1]:{port6}"),
        ])
        .spawn()
        .unwrap();
    let client_pid = client.id();
    let st = client.wait_with_output().unwrap().status;
    assert!(st.success(), "client failed: {st}");
    listener.wait();
    // The last ACKs are processed right away on loopback, and stopping
    // diag drains what the kernel wrote first: no wait.
    let after = tcp_snmp();
    let out = diag.stop(libc::SIGINT);
    assert!(
        out.status.success(),
        "diag exit: {} {:?}",
        out.status,
        out.stderr
    );

    assert!(
        out.stderr[0].contains(program),
        "{program} is attached: {}",
        out.stderr[0]
    );
    let events = out.json();
    let summary = out.stderr.last().unwrap();
    assert!(summary.contains("0 dropped"), "{summary}");

    let client_side: Vec<&Value> = events.iter().filter(|e| e["pid"] == client_pid).collect();
    let server_side: Vec<&Value> = events.iter().filter(|e| e["pid"] == listener_pid).collect();
    assert_eq!(
        client_side.len() + server_side.len(),
        events.len(),
        "every event is attributed to the client or the listener: {:?}",
        events
            .iter()
            .filter(|e| e["pid"] != client_pid && e["pid"] != listener_pid)
            .take(5)
            .collect::<Vec<_>>()
    );
    for e in &events {
        assert_eq!(e["comm"], "diag-loadgen", "{e}");
    }

    let client_seq = [
        "CLOSE->SYN_SENT",
        "SYN_SENT->ESTABLISHED",
        "ESTABLISHED->FIN_WAIT1",
        "FIN_WAIT1->FIN_WAIT2",
        "FIN_WAIT2->CLOSE",
    ];
    let server_seq = [
        "LISTEN->SYN_RECV",
        "SYN_RECV->ESTABLISHED",
        "ESTABLISHED->CLOSE_WAIT",
        "CLOSE_WAIT->LAST_ACK",
        "LAST_ACK->CLOSE",
    ];

    let mut per_family_side: HashMap<(u64, bool), usize> = HashMap::new();
    let mut listeners_closed = 0;
    for h in histories(&events) {
        let seq: Vec<String> = h.iter().map(transition).collect();
        if seq == ["LISTEN->CLOSE"] {
            // The listening sockets themselves, closed when the listener exits.
            assert_eq!(h[0]["pid"], listener_pid, "{h:?}");
            assert_eq!(h[0]["attribution"], "syscall");
            listeners_closed += 1;
            continue;
        }
        let pid = h[0]["pid"].as_u64().unwrap();
        let family = h[0]["family"].as_u64().unwrap();
        let is_client = pid == client_pid as u64;
        let (expected, listen_port) = if is_client {
            (&client_seq, "dport")
        } else {
            (&server_seq, "sport")
        };
        assert_eq!(seq, expected.to_vec(), "socket history {h:?}");
        for e in &h {
            assert_eq!(e["pid"], h[0]["pid"], "one owner per socket: {h:?}");
            assert_eq!(e["family"], family);
            let port = if family == 4 { port4 } else { port6 };
            assert_eq!(e[listen_port], port, "{e}");
            let loopback = if family == 4 { "127.0.0.1" } else { "::1" };
            assert_eq!(e["daddr"], loopback, "{e}");
        }
        // Ports agree between the two sides.
        if !is_client {
            assert!(h[0]["dport"].as_u64().unwrap() >= 1024);
        }
        *per_family_side.entry((family, is_client)).or_default() += 1;
    }
    assert_eq!(listeners_closed, 2);
    for key in [(4, true), (4, false), (6, true), (6, false)] {
        assert_eq!(
            per_family_side.get(&key),
            Some(&N),
            "connections per (family, client?) {per_family_side:?}"
        );
    }

    // The client ports seen on the server side are exactly the ports the
    // client's sockets had.
    let mut client_ports: Vec<u64> = client_side
        .iter()
        .filter(|e| e["new_state"] == "ESTABLISHED")
        .map(|e| e["sport"].as_u64().unwrap())
        .collect();
    let mut peer_ports: Vec<u64> = server_side
        .iter()
        .filter(|e| e["new_state"] == "ESTABLISHED")
        .map(|e| e["dport"].as_u64().unwrap())
        .collect();
    client_ports.sort();
    peer_ports.sort();
    assert_eq!(client_ports, peer_ports);

    // The kernel's own accounting over the same window.
    let active = events
        .iter()
        .filter(|e| transition(e) == "CLOSE->SYN_SENT")
        .count() as i64;
    let passive = events
        .iter()
        .filter(|e| transition(e) == "LISTEN->SYN_RECV")
        .count() as i64;
    assert_eq!(active, 2 * N as i64);
    assert_eq!(
        after["ActiveOpens"] - before["ActiveOpens"],
        active,
        "ActiveOpens delta vs diag"
    );
    assert_eq!(
        after["PassiveOpens"] - before["PassiveOpens"],
        passive,
        "PassiveOpens delta vs diag"
    );
}

#[test]
fn text_output_names_the_process() {
    if !require_root("text_output_names_the_process") {
        return;
    }
    let _guard = serial();
    // diag first, then the listener: its listen() is seen live this time.
    let diag = Diag::start(&["tail", "--comm", "diag-loadgen"]);
    let churn = loopback_churn(LOADGEN, 1);
    let (port, client_pid) = (churn.port, churn.client.to_string());
    // No wait: stopping diag drains what the kernel wrote first.
    let out = diag.stop(libc::SIGTERM);
    assert!(out.status.success());
    assert!(
        out.stdout[0].starts_with("TIME"),
        "header first: {:?}",
        out.stdout
    );
    let rows = &out.stdout[1..];
    // listen, 5 transitions per side, and the listener closing.
    assert_eq!(rows.len(), 12, "{rows:#?}");
    assert!(rows.iter().all(|l| l.contains("diag-loadgen")), "{rows:#?}");
    let listen = rows.iter().find(|l| l.contains("CLOSE -> LISTEN")).unwrap();
    let listener_pid = churn.listener.to_string();
    assert_eq!(
        listen.split_whitespace().nth(1),
        Some(listener_pid.as_str()),
        "{listen}"
    );
    let syn = rows
        .iter()
        .find(|l| l.contains("CLOSE -> SYN_SENT"))
        .unwrap();
    assert_eq!(
        syn.split_whitespace().nth(1),
        Some(client_pid.as_str()),
        "{syn}"
    );
    assert!(syn.contains(&format!("127.0.0.1:{port}")), "{syn}");
    let passive = rows
        .iter()
        .find(|l| l.contains("LISTEN -> SYN_RECV"))
        .unwrap();
    assert_eq!(
        passive.split_whitespace().nth(1),
        Some(listener_pid.as_str()),
        "{passive}"
    );
    assert!(passive.ends_with("listener"), "{passive}");
    assert!(
        out.stderr.last().unwrap().contains("12 shown"),
        "{:?}",
        out.stderr
    );
}

/// Parse `N events seen, M shown, D dropped` from diag's summary line.
fn summary_counts(line: &str) -> (u64, u64, u64) {
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .take(3)
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(nums.len(), 3, "summary: {line}");
    (nums[0], nums[1], nums[2])
}

#[test]
fn ring_buffer_overflow_is_counted_and_reported() {
    if !require_root("ring_buffer_overflow_is_counted_and_reported") {
        return;
    }
    let _guard = serial();
    const CONNS: usize = 1500;
    // 1 MiB holds about 9,300 TCP events; 1,500 connections make 15,000+
    // while diag is stopped and cannot drain.
    let diag = Diag::start(&[
        "tail",
        "--json",
        "--ring-mib",
        "1",
        "--comm",
        "diag-loadgen",
    ]);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(diag.pid() as i32, libc::SIGSTOP) };
    loopback_churn(LOADGEN, CONNS);
    unsafe { libc::kill(diag.pid() as i32, libc::SIGCONT) };
    // No wait: stopping diag drains what the kernel wrote first.
    let out = diag.stop(libc::SIGINT);
    assert!(out.status.success());
    let expected = (CONNS * 10 + 2) as u64;
    let (seen, shown, dropped) = summary_counts(out.stderr.last().unwrap());
    assert!(
        dropped > 0,
        "a full ring buffer must show drops: {:?}",
        out.stderr
    );
    assert_eq!(shown, out.stdout.len() as u64);
    assert!(shown < expected, "{shown} of {expected}");
    assert!(
        shown + dropped >= expected,
        "every event is either shown or counted as dropped: {shown} + {dropped} < {expected}"
    );
    assert!(seen >= shown);
    assert!(
        out.stderr
            .iter()
            .any(|l| l.contains("WARNING") && l.contains("dropped")),
        "drops are reported as they happen: {:?}",
        out.stderr
    );
}
