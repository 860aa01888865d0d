//! Hostile input and unlucky operators, on the loop's side: a reader that
//! never reads, processes that name themselves with terminal escapes, a
//! paced replay stopped with Ctrl-C, flags that contradict each other.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use diag_tests::{
    TempDir, diag_bin, free_port, loopback_churn, recorded, require_root, scrape_metrics, serial,
    tcp_snmp, wait_until,
};

const LOADGEN: &str = env!("CARGO_BIN_EXE_diag-loadgen");

/// A `diag` child whose stderr is read in the background; killed on drop.
struct Running {
    child: Child,
    stderr: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    /// Start `diag ARGS` with `stdout` and wait for its ready line.
    fn start(args: &[&str], stdout: Stdio) -> Running {
        let mut child = Command::new(diag_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, stderr) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut r = Running {
            child,
            stderr,
            seen: Vec::new(),
        };
        r.wait_for(
            |l| {
                l.contains("tracing") || l.contains("replaying") || l.starts_with("diag: recording")
            },
            30,
        );
        r
    }

    fn wait_for(&mut self, want: impl Fn(&str) -> bool, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if let Ok(l) = self.stderr.recv_timeout(Duration::from_millis(100)) {
                let ok = want(&l);
                self.seen.push(l);
                if ok {
                    return;
                }
            }
        }
        panic!("diag never said what was expected: {:?}", self.seen);
    }

    /// Send `sig`; the exit must follow within `secs`. Returns stderr.
    fn stop(mut self, sig: i32, secs: u64) -> Vec<String> {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(st.success(), "diag failed ({st}): {:?}", self.seen);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "diag did not exit within {secs} s of signal {sig}: {:?}",
                self.seen
            );
            thread::sleep(Duration::from_millis(20));
        }
        self.seen.extend(self.stderr.iter());
        std::mem::take(&mut self.seen)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `N events seen, N shown, N dropped` from tail's summary.
fn summary_counts(stderr: &[String]) -> (u64, u64, u64) {
    let l = stderr
        .iter()
        .find(|l| l.contains("events seen"))
        .unwrap_or_else(|| panic!("no summary: {stderr:?}"));
    let nums: Vec<u64> = l
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1], nums[2])
}

/// Issue 15, item 4: with standard output blocked (a reader that never
/// reads), diag keeps draining the ring buffer and counting, names the
/// lines the reader missed, and still ends at once on SIGTERM.
#[test]
fn blocked_stdout_costs_lines_not_events_or_signals() {
    if !require_root("blocked_stdout_costs_lines_not_events_or_signals") {
        return;
    }
    let _g = serial();
    // A pipe nobody reads: its 64 KiB fill after a few hundred lines.
    // A ring buffer with room for a busy moment on a loaded machine: the
    // test is about the output, not the ring.
    let mut d = Running::start(&["tail", "--ring-mib", "16"], Stdio::piped());
    let held_pipe = d.child.stdout.take();
    let before = tcp_snmp();
    loopback_churn(LOADGEN, 20_000);
    let opens = tcp_snmp()["ActiveOpens"] - before["ActiveOpens"];
    // Every open is at least two transitions (CLOSE -> SYN_SENT ->
    // ESTABLISHED); diag drains the ring buffer when it stops.
    let stderr = d.stop(libc::SIGTERM, 10);
    drop(held_pipe);
    let (seen, _shown, dropped) = summary_counts(&stderr);
    assert!(
        seen + dropped >= 2 * opens as u64,
        "{seen} seen + {dropped} dropped for {opens} opens: {stderr:?}"
    );
    assert_eq!(dropped, 0, "the ring buffer overflowed: {stderr:?}");
    assert!(
        stderr
            .iter()
            .any(|l| l.contains("lines not written: standard output was blocked")),
        "the lost lines are not named: {stderr:?}"
    );
}

/// Issue 15, item 9: a process named with terminal escapes gets them
/// shown, not obeyed: live `tail`, and `replay` (tail, conns, top) and
/// `report` of a recording, as a user without root would run them.
#[test]
fn escapes_in_process_names_are_shown_not_obeyed() {
    if !require_root("escapes_in_process_names_are_shown_not_obeyed") {
        return;
    }
    let _g = serial();
    let dir = TempDir::new("escapes");
    let file = dir.path("escapes.diag");
    let evil = "\u{1b}]0;PWNED\u{7}\u{1b}[2J";
    let tail_out = dir.path("tail.out");
    let tail = Running::start(
        &["tail"],
        Stdio::from(std::fs::File::create(&tail_out).unwrap()),
    );
    let rec = Running::start(&["record", "-o", file.to_str().unwrap()], Stdio::null());
    let mut listener = Command::new(LOADGEN)
        .args(["listen", "3", "127.0.0.1:0"])
        .env("DIAG_LOADGEN_COMM", evil)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(listener.stdout.take().unwrap()).lines();
    let port = out.next().unwrap().unwrap();
    let port = port.strip_prefix("PORT ").unwrap();
    let st = Command::new(LOADGEN)
        .args(["connect", "3", &format!("127.0.0.1:{port}")])
        .env("DIAG_LOADGEN_COMM", evil)
        .status()
        .unwrap();
    assert!(st.success());
    assert!(listener.wait().unwrap().success());
    // Both drain what the kernel wrote when they stop.
    rec.stop(libc::SIGINT, 10);
    tail.stop(libc::SIGINT, 10);
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let shown = "\\x1b]0;PWNED";
    let live = std::fs::read_to_string(&tail_out).unwrap();
    let check = |what: &str, text: &str| {
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}'),
            "{what} printed a raw escape: {text:?}"
        );
        // top's column is narrower than the escaped name.
        assert!(
            what.contains("top") || text.contains(shown),
            "{what} does not show the name: {text}"
        );
    };
    check("live tail", &live);
    let f = file.to_str().unwrap();
    for args in [
        vec!["replay", f, "tail"],
        vec!["replay", f, "conns", "--top", "0"],
        vec!["replay", f, "top", "--batch"],
        vec!["report", f],
    ] {
        let o = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(diag_bin())
            .args(&args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        check(&args.join(" "), &String::from_utf8_lossy(&o.stdout));
    }
}

/// Issue 15, items 10 and 13: a paced replay waiting for its next event
/// ends at once on Ctrl-C and says it stopped early (not that the file
/// was cut); `--from` later than `--to` is refused.
#[test]
fn paced_replay_stops_at_once_and_says_why() {
    if !require_root("paced_replay_stops_at_once_and_says_why") {
        return;
    }
    let _g = serial();
    let dir = TempDir::new("paced");
    let file = dir.path("paced.diag");
    let f = file.to_str().unwrap().to_string();
    let rec = Running::start(&["record", "-o", &f], Stdio::null());
    loopback_churn(LOADGEN, 5);
    // The second burst a frame later than the first (frames are written
    // within a second).
    wait_until(Duration::from_secs(15), "the first burst on disk", || {
        recorded(&file, &[]).len() >= 25
    });
    loopback_churn(LOADGEN, 5);
    rec.stop(libc::SIGINT, 10);

    // At 0.001x the second burst is due in over 20 minutes.
    let mut replay = Running::start(
        &["replay", &f, "--speed", "0.001", "tail", "--json"],
        Stdio::piped(),
    );
    // The first burst shown: the replay is waiting for the second.
    let mut shown = BufReader::new(replay.child.stdout.take().unwrap()).lines();
    for _ in 0..25 {
        shown.next().unwrap().unwrap();
    }
    let t = Instant::now();
    let stderr = replay.stop(libc::SIGINT, 3);
    assert!(t.elapsed() < Duration::from_secs(3));
    assert!(
        stderr.iter().any(|l| l.contains("stopped before the end")),
        "{stderr:?}"
    );
    assert!(
        !stderr.iter().any(|l| l.contains("not finished cleanly")),
        "a clean file was called damaged: {stderr:?}"
    );

    let o = Command::new(diag_bin())
        .args(["replay", &f, "--from", "23:59", "--to", "00:01", "tail"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("later than --to"), "{err}");
}

/// One HTTP/1.0 GET; the status line, or None when the server did not
/// answer (refused, closed, timed out).
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.lines().next().map(str::to_string)
}

/// Issue 15, item 11: idle and half-sent requests are timed out and the
/// connections bounded, so with few file descriptors and hundreds of
/// idle clients `/healthz` still answers.
#[test]
fn serve_outlasts_idle_clients() {
    if !require_root("serve_outlasts_idle_clients") {
        return;
    }
    let _g = serial();
    use std::io::{Read, Write};
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = Command::new("prlimit")
        .arg("--nofile=256:256")
        .arg(diag_bin())
        .args(["serve", "--no-sched", "--listen", &listen])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for l in err.lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let mut d = Running {
        child,
        stderr: rx,
        seen: Vec::new(),
    };
    d.wait_for(|l| l.contains("serving metrics"), 30);
    // Healthy once the first health reading is in.
    let ok = |l: &Option<String>| l.as_deref().is_some_and(|l| l.contains(" 200 "));
    let t = Instant::now();
    while !ok(&http_get(port, "/healthz")) {
        assert!(t.elapsed() < Duration::from_secs(10), "never healthy");
        thread::sleep(Duration::from_millis(100));
    }
    // 336 clients that send half a request and wait.
    let mut idle = Vec::new();
    for _ in 0..336 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n");
            idle.push(s);
        }
    }
    let t = Instant::now();
    let mut answered = None;
    while t.elapsed() < Duration::from_secs(15) {
        answered = http_get(port, "/healthz");
        if ok(&answered) {
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    assert!(
        ok(&answered),
        "/healthz did not answer within 15 s of 336 idle clients ({answered:?}): {:?}",
        d.seen
    );
    // The half-sent requests were closed by the server.
    let first = &mut idle[0];
    first
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 512];
    let r = first.read(&mut buf);
    assert!(
        r.is_ok() || matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "an idle client was kept open: {r:?}"
    );
    drop(idle);
    let stderr = d.stop(libc::SIGTERM, 10);
    assert!(
        stderr.iter().any(|l| l.contains("HTTP connections open")),
        "the refused connections are not named: {stderr:?}"
    );
}

/// Issue 15, item 13: `export` of a recording without its end frame (the
/// recorder was killed) says so, as `replay` does.
#[test]
fn export_says_when_the_recording_was_cut() {
    if !require_root("export_says_when_the_recording_was_cut") {
        return;
    }
    let _g = serial();
    let dir = TempDir::new("cut");
    let file = dir.path("cut.diag");
    let f = file.to_str().unwrap().to_string();
    let mut rec = Running::start(&["record", "-o", &f], Stdio::null());
    loopback_churn(LOADGEN, 3);
    // Frames are written at least once a second.
    wait_until(Duration::from_secs(15), "the churn on disk", || {
        recorded(&file, &[]).len() >= 15
    });
    rec.child.kill().unwrap();
    rec.child.wait().unwrap();
    let o = Command::new(diag_bin())
        .args(["export", &f, "--format", "jsonl"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not finished cleanly"), "{err}");
    assert!(!String::from_utf8_lossy(&o.stdout).is_empty());
}

/// The `cgroup` label of the first series of `metric` for `pid` and
/// `comm` in a scrape, if there is one.
fn cgroup_label(scrape: &str, metric: &str, pid: u32, comm: &str) -> Option<String> {
    let want = format!("pid=\"{pid}\"");
    let want_comm = format!("comm=\"{comm}\"");
    scrape
        .lines()
        .filter(|l| l.starts_with(metric) && l.contains(&want) && l.contains(&want_comm))
        .find_map(|l| {
            let at = l.find("cgroup=\"")? + 8;
            Some(l[at..at + l[at..].find('"')?].to_string())
        })
}

/// Issue 15, item 8: a process in memory cgroup A that connected and
/// exited at once, whose pid then goes to a process in cgroup B, is never
/// labelled with B (the kernel's ns_last_pid makes the reuse happen).
#[test]
fn a_reused_pid_never_lends_its_cgroup() {
    if !require_root("a_reused_pid_never_lends_its_cgroup") {
        return;
    }
    let _g = serial();
    use diag_tests::{MemCgroup, V1_ROOT};
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let d = Running::start(
        &[
            "serve",
            "--no-sched",
            "--listen",
            &listen,
            "--exit-grace",
            "3600s",
        ],
        Stdio::null(),
    );
    let a = MemCgroup::create(V1_ROOT, "reuse-a", "memory.limit_in_bytes", 1 << 30);
    let b = MemCgroup::create(V1_ROOT, "reuse-b", "memory.limit_in_bytes", 1 << 30);
    let mut listener = Command::new(LOADGEN)
        .args(["listen", "1", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(listener.stdout.take().unwrap()).lines();
    let lport = lines.next().unwrap().unwrap();
    let target = format!("127.0.0.1:{}", lport.strip_prefix("PORT ").unwrap());
    let mut conn = a.spawn_with_env(
        LOADGEN,
        &["connect", "1", &target],
        &[("DIAG_LOADGEN_COMM", "procA")],
    );
    let pid_a = conn.id();
    assert!(conn.wait().unwrap().success());
    assert!(listener.wait().unwrap().success());
    // Hand pid_a to a process in B: the next pid is ns_last_pid + 1 (a
    // few tries, other processes fork too).
    let mut holder = None;
    for _ in 0..50 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid_a - 1).to_string()).unwrap();
        let mut c = b.spawn_with_env(LOADGEN, &["spin", "5"], &[("DIAG_LOADGEN_COMM", "procA")]);
        if c.id() == pid_a {
            holder = Some(c);
            break;
        }
        let _ = c.kill();
        let _ = c.wait();
    }
    let mut holder = holder.expect("pid reuse could not be arranged in 50 tries");
    // The series of the exited procA appears within a couple of updates.
    let deadline = Instant::now() + Duration::from_secs(10);
    let label = loop {
        if let Some(l) = cgroup_label(
            &scrape_metrics(port),
            "diag_tcp_opens_total",
            pid_a,
            "procA",
        ) {
            break l;
        }
        assert!(Instant::now() < deadline, "no series for pid {pid_a}");
        thread::sleep(Duration::from_millis(200));
    };
    let _ = holder.kill();
    let _ = holder.wait();
    d.stop(libc::SIGTERM, 10);
    assert_ne!(
        label, b.rel,
        "the exited process got its pid's next owner's cgroup"
    );
    assert!(label == a.rel || label == "unknown", "{label}");
}
