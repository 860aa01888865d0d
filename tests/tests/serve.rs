//! `diag serve`: the Prometheus exporter, scraped over real HTTP while
//! loadgen makes known connections and a child is OOM-killed in a memory
//! cgroup; then a real Prometheus server scrapes it and answers PromQL;
//! then 500 short-lived processes must not blow up the series count.

use std::{
    collections::BTreeMap,
    io::Write,
    net::TcpStream,
    os::unix::process::ExitStatusExt,
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use diag_tests::{
    Diag, Gen, MemCgroup, Prometheus, V1_ROOT, free_port, http_get, require_root, serial,
};
use serde_json::Value;

const LOADGEN: &str = env!("CARGO_BIN_EXE_diag-loadgen");

/// One sample of the text exposition format.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A strict parser of the Prometheus text format 0.0.4: HELP and TYPE
/// before a family's samples, valid names, quoted label values with
/// escapes, numeric values, no duplicate series.
fn parse_exposition(text: &str) -> Vec<Sample> {
    let valid_name = |n: &str| {
        !n.is_empty()
            && !n.starts_with(|c: char| c.is_ascii_digit())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut typed: BTreeMap<String, String> = BTreeMap::new();
    let mut helped = std::collections::BTreeSet::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(valid_name(name), "{line}");
            helped.insert(name.to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').unwrap();
            assert!(valid_name(name), "{line}");
            assert!(["counter", "gauge", "histogram"].contains(&ty), "{line}");
            if ty == "counter" {
                assert!(name.ends_with("_total"), "counter without _total: {line}");
            }
            typed.insert(name.to_string(), ty.to_string());
            continue;
        }
        assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
        let (name, labels, rest) = match line.find('{') {
            Some(i) => {
                let end = line.rfind('}').unwrap_or_else(|| panic!("{line}"));
                (&line[..i], &line[i + 1..end], line[end + 1..].trim())
            }
            None => {
                let (n, v) = line.split_once(' ').unwrap();
                (n, "", v.trim())
            }
        };
        assert!(valid_name(name), "{line}");
        // A histogram's samples carry suffixes on its declared name.
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suf| {
                name.strip_suffix(suf)
                    .filter(|b| typed.get(*b).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(name);
        assert!(typed.contains_key(base), "no TYPE before {line}");
        assert!(helped.contains(base), "no HELP before {line}");
        let value: f64 = rest
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let mut map = BTreeMap::new();
        let mut chars = labels.chars().peekable();
        while chars.peek().is_some() {
            let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
            assert!(valid_name(&key), "bad label name {key:?}: {line}");
            assert_eq!(chars.next(), Some('"'), "{line}");
            let mut v = String::new();
            loop {
                match chars.next() {
                    Some('\\') => match chars.next() {
                        Some('n') => v.push('\n'),
                        Some(c @ ('\\' | '"')) => v.push(c),
                        other => panic!("bad escape {other:?}: {line}"),
                    },
                    Some('"') => break,
                    Some(c) => v.push(c),
                    None => panic!("unterminated label value: {line}"),
                }
            }
            assert!(map.insert(key, v).is_none(), "duplicate label: {line}");
            match chars.next() {
                Some(',') | None => {}
                other => panic!("unexpected {other:?}: {line}"),
            }
        }
        assert!(
            seen.insert(format!("{name}{map:?}")),
            "duplicate series: {line}"
        );
        out.push(Sample {
            name: name.to_string(),
            labels: map,
            value,
        });
    }
    out
}

/// Scrape `/metrics` and parse it.
fn scrape(port: u16) -> Vec<Sample> {
    let (status, body) = http_get(port, "/metrics").expect("scrape /metrics");
    assert_eq!(status, 200, "{body}");
    parse_exposition(&body)
}

/// The value of the one series of `name` whose labels include `want`.
fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> Option<f64> {
    let hits: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && want
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert!(
        hits.len() <= 1,
        "several series match {name} {want:?}: {hits:?}"
    );
    hits.first().map(|s| s.value)
}

/// Scrape until `check` passes (returning its last scrape), or panic
/// after `timeout` with the last failure.
fn scrape_until(
    port: u16,
    timeout: Duration,
    check: impl Fn(&[Sample]) -> Result<(), String>,
) -> Vec<Sample> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = scrape(port);
        match check(&s) {
            Ok(()) => return s,
            Err(why) if Instant::now() > deadline => panic!("after {timeout:?}: {why}"),
            Err(_) => thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn run_ok(args: &[&str]) -> u32 {
    let mut c = Command::new(LOADGEN)
        .args(args)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = c.id();
    assert!(c.wait().unwrap().success(), "{args:?}");
    pid
}

const LIMIT_MIB: u64 = 32;

/// `promtool check metrics` on a scrape, when promtool is installed
/// (`cargo xtask setup` installs it with the prometheus package).
fn promtool_check(port: u16) {
    let (_, body) = http_get(port, "/metrics").unwrap();
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        panic!("promtool not found: run `cargo xtask setup` (it installs the prometheus package)");
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metrics_count_loadgen_churn_and_an_oom_kill_exactly() {
    if !require_root("metrics_count_loadgen_churn_and_an_oom_kill_exactly") {
        return;
    }
    let _guard = serial();
    const N: usize = 40;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let diag = Diag::start(&["serve", "--listen", &addr, "--top", "500"]);
    // Healthy once the live source has reported (within a second or two).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = http_get(port, "/healthz").unwrap();
        if status == 200 {
            assert_eq!(body, "ok\n");
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(body.starts_with("unhealthy: "), "{body}");
        assert!(Instant::now() < deadline, "still unhealthy: {body}");
        thread::sleep(Duration::from_millis(100));
    }

    let mut listener = Gen::spawn(LOADGEN, &["listen", &N.to_string(), "127.0.0.1:0"]);
    let lport = listener.port();
    let target = format!("127.0.0.1:{lport}");
    let connector = run_ok(&["connect", &N.to_string(), &target]).to_string();
    listener.wait();
    let lpid = listener.pid().to_string();

    // Every count is exact for the test's own processes.
    let n = N as f64;
    let m = scrape_until(port, Duration::from_secs(10), |s| {
        let got = value(s, "diag_tcp_closes_total", &[("pid", &lpid)]);
        let got_c = value(s, "diag_tcp_closes_total", &[("pid", &connector)]);
        (got == Some(n) && got_c == Some(n))
            .then_some(())
            .ok_or(format!("closes: listener {got:?}, connector {got_c:?}"))
    });
    let pv = |pid: &str, name: &str, extra: &[(&str, &str)]| {
        let mut want = vec![("pid", pid), ("comm", "diag-loadgen")];
        want.extend_from_slice(extra);
        value(&m, name, &want)
    };
    let (l, c) = (lpid.as_str(), connector.as_str());
    assert_eq!(
        pv(l, "diag_tcp_opens_total", &[("direction", "passive")]),
        Some(n)
    );
    assert_eq!(
        pv(l, "diag_tcp_opens_total", &[("direction", "active")]),
        Some(0.0)
    );
    assert_eq!(
        pv(c, "diag_tcp_opens_total", &[("direction", "active")]),
        Some(n)
    );
    assert_eq!(
        pv(c, "diag_tcp_opens_total", &[("direction", "passive")]),
        Some(0.0)
    );
    for who in [l, c] {
        assert_eq!(pv(who, "diag_tcp_failed_connects_total", &[]), Some(0.0));
        assert_eq!(
            pv(who, "diag_tcp_resets_total", &[("direction", "sent")]),
            Some(0.0)
        );
        assert_eq!(
            pv(who, "diag_tcp_resets_total", &[("direction", "received")]),
            Some(0.0)
        );
        assert_eq!(pv(who, "diag_tcp_retransmits_total", &[]), Some(0.0));
        assert_eq!(pv(who, "diag_tcp_close_wait_leaks", &[]), Some(0.0));
    }
    // The connector closed first: its sockets wait in TIME-WAIT.
    assert_eq!(
        pv(c, "diag_tcp_sockets", &[("state", "TIME-WAIT")]),
        Some(n)
    );
    // Per-process series carry the process's cgroup.
    let cg = m
        .iter()
        .find(|s| s.labels.get("pid") == Some(&lpid))
        .and_then(|s| s.labels.get("cgroup"))
        .cloned()
        .unwrap();
    assert!(!cg.is_empty(), "cgroup label");

    // An OOM kill in a memory cgroup of our own.
    let memcg = MemCgroup::create(
        V1_ROOT,
        "serve-metrics",
        "memory.limit_in_bytes",
        LIMIT_MIB << 20,
    );
    let mut child = memcg.spawn(LOADGEN, &["alloc", "256"]);
    let st = child.wait().unwrap();
    assert_eq!(
        st.signal(),
        Some(libc::SIGKILL),
        "the child should be OOM-killed"
    );
    let rel = memcg.rel.clone();
    let m = scrape_until(port, Duration::from_secs(10), |s| {
        let k = value(
            s,
            "diag_oom_kills_total",
            &[("cgroup", &rel), ("constraint", "memcg")],
        );
        (k == Some(1.0))
            .then_some(())
            .ok_or(format!("OOM kills in {rel}: {k:?}"))
    });
    assert_eq!(
        value(
            &m,
            "diag_oom_kills_total",
            &[("cgroup", &rel), ("constraint", "global")]
        ),
        None
    );

    // diag's own health.
    assert_eq!(value(&m, "diag_events_dropped_total", &[]), Some(0.0));
    assert!(value(&m, "diag_events_total", &[]).unwrap() > 0.0);
    assert!(value(&m, "diag_probes_attached", &[]).unwrap() >= 1.0);
    assert_eq!(
        value(&m, "diag_map_full_total", &[("map", "sock")]),
        Some(0.0)
    );
    // The scheduler: run-queue waits happen on this host (counted when a
    // thread leaves the CPU, so give it a reading or two), as a histogram
    // whose +Inf bucket is its count, and CPU time is spent.
    let sum = |s: &[Sample], pick: &dyn Fn(&Sample) -> bool| -> f64 {
        s.iter().filter(|x| pick(x)).map(|x| x.value).sum()
    };
    let m = scrape_until(port, Duration::from_secs(10), |s| {
        let waits = sum(s, &|x| x.name == "diag_runq_latency_seconds_count");
        let cpu = sum(s, &|x| x.name == "diag_cpu_seconds_total");
        (waits > 0.0 && cpu > 0.0)
            .then_some(())
            .ok_or(format!("run-queue waits {waits}, CPU seconds {cpu}"))
    });
    let waits = sum(&m, &|x| x.name == "diag_runq_latency_seconds_count");
    let inf = sum(&m, &|x| {
        x.name == "diag_runq_latency_seconds_bucket"
            && x.labels.get("le").map(String::as_str) == Some("+Inf")
    });
    assert_eq!(waits, inf, "the +Inf bucket holds every wait");
    promtool_check(port);

    let out = diag.stop(libc::SIGTERM);
    assert!(out.status.success(), "{} {:?}", out.status, out.stderr);
    assert!(
        out.stderr.last().unwrap().contains("stopped serving"),
        "{:?}",
        out.stderr
    );
    // Nothing listens any more.
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn refuses_a_port_in_use_in_one_sentence_and_notes_non_loopback() {
    if !require_root("refuses_a_port_in_use_in_one_sentence_and_notes_non_loopback") {
        return;
    }
    let _guard = serial();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(diag_tests::diag_bin())
        .args(["serve", "--listen", &addr])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&addr) && err.contains("already in use") && err.contains("--listen"),
        "{err}"
    );
    drop(taken);

    let port = free_port();
    let diag = Diag::start(&["serve", "--listen", &format!("0.0.0.0:{port}")]);
    let out = diag.stop(libc::SIGINT);
    assert!(out.status.success());
    assert!(
        out.stderr
            .iter()
            .any(|l| l.contains("not a loopback address")),
        "{:?}",
        out.stderr
    );
}

#[test]
fn a_prometheus_server_scrapes_diag_and_answers_promql() {
    if !require_root("a_prometheus_server_scrapes_diag_and_answers_promql") {
        return;
    }
    let _guard = serial();
    const N: usize = 30;
    let port = free_port();
    let diag = Diag::start(&[
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--top",
        "500",
    ]);
    let prom = Prometheus::start(port);
    prom.wait_for(r#"up{job="diag"}"#, 1.0, Duration::from_secs(20));

    let mut listener = Gen::spawn(LOADGEN, &["listen", &N.to_string(), "127.0.0.1:0"]);
    let target = format!("127.0.0.1:{}", listener.port());
    let lpid = listener.pid().to_string();
    // The listener (a LISTEN socket) has its series before it accepts, so
    // Prometheus sees its counter go up.
    let passive = format!(r#"diag_tcp_opens_total{{pid="{lpid}",direction="passive"}}"#);
    prom.wait_for(&passive, 0.0, Duration::from_secs(20));
    let connector = run_ok(&["connect", &N.to_string(), &target]).to_string();
    listener.wait();

    let n = N as f64;
    prom.wait_for(
        &format!(r#"diag_tcp_opens_total{{pid="{lpid}",direction="passive"}}"#),
        n,
        Duration::from_secs(20),
    );
    prom.wait_for(
        &format!(r#"sum by (pid) (diag_tcp_opens_total{{pid="{connector}"}})"#),
        n,
        Duration::from_secs(20),
    );
    prom.wait_for(
        &format!(r#"diag_tcp_sockets{{pid="{connector}",state="TIME-WAIT"}}"#),
        n,
        Duration::from_secs(20),
    );
    // The README's queries are valid PromQL and see diag's series.
    let increase = prom.scalar(&format!("increase({passive}[1m])")).unwrap();
    assert!(
        increase > 0.0,
        "increase of the listener's opens: {increase}"
    );
    let churn = prom.query(r#"topk(5, sum by (comm) (rate(diag_tcp_opens_total[1m])))"#);
    assert!(!churn.is_empty(), "churn by process: {churn:?}");
    prom.query(r#"sum by (instance, comm) (diag_tcp_close_wait_leaks) > 0"#);
    prom.query(r#"sum by (instance, cgroup) (increase(diag_oom_kills_total[1h])) > 0"#);
    let p99 = prom.query(
        r#"histogram_quantile(0.99, sum by (le, cgroup) (rate(diag_runq_latency_seconds_bucket[1m])))"#,
    );
    assert!(!p99.is_empty(), "run-queue p99 by cgroup: {p99:?}");
    assert_eq!(prom.scalar("diag_events_dropped_total"), Some(0.0));
    drop(prom);
    let out = diag.stop(libc::SIGTERM);
    assert!(out.status.success(), "{} {:?}", out.status, out.stderr);
}

#[test]
fn five_hundred_short_lived_processes_stay_within_the_series_bound() {
    if !require_root("five_hundred_short_lived_processes_stay_within_the_series_bound") {
        return;
    }
    let _guard = serial();
    const PROCS: usize = 500;
    const TOP: usize = 20;
    let port = free_port();
    let diag = Diag::start(&[
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--top",
        &TOP.to_string(),
        "--exit-grace",
        "2s",
    ]);
    let process_series = |s: &[Sample]| -> usize {
        let pids: std::collections::BTreeSet<&String> = s
            .iter()
            .filter(|x| x.name.starts_with("diag_tcp_"))
            // Listeners (any on the host) are bounded on their own.
            .filter(|x| !x.name.starts_with("diag_tcp_listen_queue_high"))
            .filter(|x| !x.name.starts_with("diag_tcp_listen_backlog"))
            .filter_map(|x| x.labels.get("pid"))
            .filter(|p| p.as_str() != "other")
            .collect();
        pids.len()
    };
    let mut listener = Gen::spawn(LOADGEN, &["listen", &PROCS.to_string(), "127.0.0.1:0"]);
    let target = format!("127.0.0.1:{}", listener.port());
    // Scrape all along while the processes come and go.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut max = 0;
            let mut scrapes = 0;
            let mut host_closes = 0.0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let s = scrape(port);
                max = max.max(process_series(&s));
                // The host-level counter never goes down while series go.
                let h = value(&s, "diag_host_tcp_closes_total", &[]).unwrap();
                assert!(
                    h >= host_closes,
                    "host closes went from {host_closes} to {h}"
                );
                host_closes = h;
                let own = value(&s, "diag_exporter_process_series", &[]).unwrap();
                assert!(own <= TOP as f64, "{own}");
                scrapes += 1;
                thread::sleep(Duration::from_millis(100));
            }
            (max, scrapes)
        })
    };
    let started = Instant::now();
    let mut connectors = std::collections::BTreeSet::new();
    for _ in 0..PROCS {
        connectors.insert(run_ok(&["connect", "1", &target]).to_string());
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "spawning took too long"
        );
    }
    listener.wait();
    let lpid = listener.pid().to_string();
    // Every connect is counted: the listener (one busy process) exactly,
    // the connectors in their own series or `other`.
    let m = scrape_until(port, Duration::from_secs(10), |s| {
        let got = value(
            s,
            "diag_tcp_opens_total",
            &[("pid", &lpid), ("direction", "passive")],
        );
        (got == Some(PROCS as f64))
            .then_some(())
            .ok_or(format!("listener passive opens {got:?}"))
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (max, scrapes) = watcher.join().unwrap();
    eprintln!(
        "{PROCS} processes in {:?}: at most {max} per-process series in {scrapes} scrapes (bound {TOP}); {} series in the last scrape",
        started.elapsed(),
        m.len()
    );
    assert!(scrapes >= 5, "{scrapes}");
    assert!(max <= TOP, "{max} per-process series, bound {TOP}");
    assert!(process_series(&m) <= TOP);
    // The exited connectors' series go after the grace period.
    let leftover = |port| {
        scrape(port)
            .iter()
            .filter(|s| s.name == "diag_tcp_closes_total")
            .filter(|s| connectors.contains(&s.labels["pid"]))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut left = leftover(port);
    while left > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(250));
        left = leftover(port);
    }
    assert_eq!(left, 0, "exited connectors still have series");
    // Their closes stay in the host-level counter: the listener's and the
    // connectors' (and whatever else the host closed).
    let host = value(&scrape(port), "diag_host_tcp_closes_total", &[]).unwrap();
    assert!(host >= (2 * PROCS) as f64, "host-level closes {host}");
    let out = diag.stop(libc::SIGTERM);
    assert!(out.status.success(), "{} {:?}", out.status, out.stderr);
}

#[test]
fn serve_and_record_at_once() {
    if !require_root("serve_and_record_at_once") {
        return;
    }
    let _guard = serial();
    const N: usize = 20;
    let file = std::env::temp_dir().join(format!("diag-serve-rec-{}.diag", std::process::id()));
    let _ = std::fs::remove_file(&file);
    struct Remove(PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _cleanup = Remove(file.clone());
    let port = free_port();
    let diag = Diag::start(&[
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--record",
        file.to_str().unwrap(),
    ]);
    let mut listener = Gen::spawn(LOADGEN, &["listen", &N.to_string(), "127.0.0.1:0"]);
    let target = format!("127.0.0.1:{}", listener.port());
    let connector = run_ok(&["connect", &N.to_string(), &target]).to_string();
    listener.wait();
    scrape_until(port, Duration::from_secs(10), |s| {
        let got = value(s, "diag_tcp_closes_total", &[("pid", &connector)]);
        (got == Some(N as f64))
            .then_some(())
            .ok_or(format!("connector closes {got:?}"))
    });
    let out = diag.stop(libc::SIGTERM);
    assert!(out.status.success(), "{} {:?}", out.status, out.stderr);
    assert!(
        out.stderr.iter().any(|l| l.contains("recorded")),
        "{:?}",
        out.stderr
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    // The recording replays with the same counts.
    let replay = Command::new(diag_tests::diag_bin())
        .args([
            "replay",
            file.to_str().unwrap(),
            "conns",
            "--json",
            "--top",
            "0",
        ])
        .output()
        .unwrap();
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let text = String::from_utf8_lossy(&replay.stdout);
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    let row = last["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["pid"].as_u64().map(|p| p.to_string()).as_deref() == Some(connector.as_str()))
        .unwrap_or_else(|| panic!("no row for {connector}: {last}"))
        .clone();
    assert_eq!(row["totals"]["active_opens"], N as u64, "{row}");
    assert_eq!(row["totals"]["closes"], N as u64, "{row}");
}
