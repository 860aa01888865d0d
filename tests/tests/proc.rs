//! Process exits: the kernel reports the end of each process (thread
//! group) once, with its pid, name and start time, so that a later process
//! with the same pid is never taken for it. Checked against /proc while
//! the process runs, and against what the test did to it.

use std::process::Command;

use diag_tests::{Diag, Gen, require_root, serial};
use serde_json::Value;

const LOADGEN: &str = env!("CARGO_BIN_EXE_diag-loadgen");
const CPUHOG: &str = env!("CARGO_BIN_EXE_diag-cpuhog");

/// Field 22 of /proc/PID/stat (starttime, clock ticks since boot) and
/// /proc/PID/comm, read while the process runs.
fn start_ticks_and_comm(pid: u32) -> (u64, String) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The name is in parentheses and may hold spaces: count after it.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    // `after` starts at field 3 (state); starttime is field 22.
    let ticks = after.split(' ').nth(22 - 3).unwrap().parse().unwrap();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    (ticks, comm.trim_end().to_string())
}

fn clock_ticks_per_s() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    assert!(hz > 0);
    hz as u64
}

fn exits_of(events: &[Value], pid: u32) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e["event"] == "exit" && e["pid"] == pid)
        .collect()
}

#[test]
fn a_process_that_connected_is_reported_once_when_it_ends() {
    if !require_root("a_process_that_connected_is_reported_once_when_it_ends") {
        return;
    }
    let _guard = serial();
    let diag = Diag::start(&["tail", "--json", "--events", "tcp,exit"]);
    let mut server = Gen::spawn(LOADGEN, &["listen-hold", "1", "127.0.0.1:0"]);
    let port = server.port();
    let mut client = Gen::spawn(
        LOADGEN,
        &["connect-hold", "1", &format!("127.0.0.1:{port}")],
    );
    assert_eq!(client.line(), "CONNECTED 1");
    let pid = client.pid();
    let (ticks, comm) = start_ticks_and_comm(pid);
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    drop(client); // reaps it
    // No wait: stopping diag drains what the kernel wrote first.
    let out = diag.stop(libc::SIGINT);
    assert!(
        out.status.success(),
        "diag: {} {:?}",
        out.status,
        out.stderr
    );
    drop(server);
    let events = out.json();

    let exits = exits_of(&events, pid);
    assert_eq!(exits.len(), 1, "exactly one exit for {pid}: {exits:?}");
    let e = exits[0];
    assert_eq!(e["comm"], comm.as_str(), "{e}");
    assert_eq!(comm, "diag-loadgen");
    assert_eq!(e["tid"], pid, "single-threaded: the leader ends it: {e}");
    assert_eq!(e["signal"], 9, "killed by SIGKILL: {e}");
    assert_eq!(e["exit_status"], Value::Null, "{e}");
    assert_eq!(e["start_clock"], "boottime", "{e}");
    let start_ns = e["start_ns"].as_u64().expect("a start time");
    let tick_ns = 1_000_000_000 / clock_ticks_per_s();
    assert_eq!(
        start_ns / tick_ns,
        ticks,
        "the start time is /proc/{pid}/stat's starttime ({ticks} ticks): {e}"
    );
    let ts = e["ts_ns"].as_u64().unwrap();
    assert_eq!(e["ran_ns"].as_u64(), Some(ts - start_ns));

    // Its connection's events came first, under the same pid.
    let pos = |pred: &dyn Fn(&Value) -> bool| events.iter().position(pred);
    let connect = pos(&|v: &Value| {
        v["event"] == "tcp_state"
            && v["pid"] == pid
            && v["old_state"] == "CLOSE"
            && v["new_state"] == "SYN_SENT"
    })
    .expect("the client's connect");
    let exit = pos(&|v: &Value| v["event"] == "exit" && v["pid"] == pid).unwrap();
    assert!(connect < exit, "connect at {connect}, exit at {exit}");
    assert!(events[connect]["ts_ns"].as_u64().unwrap() > start_ns);
}

#[test]
fn a_process_is_reported_once_when_its_last_thread_ends() {
    if !require_root("a_process_is_reported_once_when_its_last_thread_ends") {
        return;
    }
    let _guard = serial();
    let diag = Diag::start(&["tail", "--json", "--events", "exit"]);
    let child = Command::new(CPUHOG)
        .args(["threads", "20"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let st = child.wait_with_output().unwrap().status;
    assert!(st.success(), "{st}");
    // No wait: stopping diag drains what the kernel wrote first.
    let out = diag.stop(libc::SIGINT);
    assert!(
        out.status.success(),
        "diag: {} {:?}",
        out.status,
        out.stderr
    );
    let events = out.json();
    let exits = exits_of(&events, pid);
    assert_eq!(exits.len(), 1, "one exit for 21 threads: {exits:?}");
    let e = exits[0];
    assert_eq!(e["comm"], "diag-cpuhog", "{e}");
    assert_eq!(e["exit_status"], 0, "{e}");
    assert_eq!(e["signal"], Value::Null, "{e}");
    assert!(
        events.iter().all(|v| v["event"] == "exit"),
        "only exits were asked for"
    );
}

#[test]
fn plain_tail_does_not_show_exits() {
    if !require_root("plain_tail_does_not_show_exits") {
        return;
    }
    let _guard = serial();
    let diag = Diag::start(&["tail", "--json"]);
    let st = Command::new("true").status().unwrap();
    assert!(st.success());
    // No wait: stopping diag drains what the kernel wrote first.
    let out = diag.stop(libc::SIGINT);
    assert!(out.status.success());
    assert!(
        out.stderr
            .iter()
            .any(|l| l.contains("tracing") && l.contains("sched_process_exit")),
        "exits are traced with TCP events, to keep processes apart: {:?}",
        out.stderr
    );
    let events = out.json();
    assert!(
        events.iter().all(|v| v["event"] != "exit"),
        "exits only when asked for: {events:?}"
    );
}

/// Issue 13: with `--kernel-log`, the kernel programs say why an event was
/// lost (aya-log), naming it; without it they say nothing. The losses are
/// made real: diag is stopped while 25,000 processes exit into a 1 MiB
/// ring buffer.
#[test]
fn kernel_log_names_what_the_kernel_side_lost() {
    if !require_root("kernel_log_names_what_the_kernel_side_lost") {
        return;
    }
    let _guard = serial();
    let run = |extra: &[&str]| {
        let mut args = vec!["tail", "--events", "exit", "--ring-mib", "1"];
        args.extend_from_slice(extra);
        let diag = Diag::start(&args);
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(diag.pid() as i32, libc::SIGSTOP) };
        let st = Command::new(LOADGEN).args(["forks", "25000"]).status();
        unsafe { libc::kill(diag.pid() as i32, libc::SIGCONT) };
        assert!(st.unwrap().success());
        let out = diag.stop(libc::SIGINT);
        assert!(out.status.success(), "{:?}", out.stderr);
        out.stderr
    };
    let with = run(&["--kernel-log"]);
    let named: Vec<&String> = with
        .iter()
        .filter(|l| l.contains("ring buffer full: the exit of process"))
        .collect();
    let summary = with.iter().find(|l| l.contains("events seen")).unwrap();
    assert!(
        !named.is_empty() && !summary.contains(" 0 dropped"),
        "no kernel log of the drops: {summary}"
    );
    let without = run(&[]);
    assert!(
        !without
            .iter()
            .any(|l| l.contains("ring buffer full: the exit")),
        "the kernel log is on by default"
    );
}
