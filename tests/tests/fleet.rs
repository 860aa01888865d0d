//! diag across a fleet: a real Prometheus (Debian's) scraping a real
//! `diag serve` must see the first increment of every counter: the first
//! OOM kill in a cgroup, the first reset of a process, the first stall in a
//! cgroup.

use std::{
    io::{BufRead, BufReader},
    os::unix::process::ExitStatusExt,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use diag_tests::{
    Diag, Gen, MemCgroup, Prometheus, V1_ROOT, cgroup2_root, free_port, loopback_churn,
    require_root, serial, wait_until,
};

const LOADGEN: &str = env!("CARGO_BIN_EXE_diag-loadgen");
const CPUHOG: &str = env!("CARGO_BIN_EXE_diag-cpuhog");

/// `q` answered by Prometheus, as one number (None: no series).
fn num(prom: &Prometheus, q: &str) -> Option<f64> {
    prom.scalar(q)
}

/// A counter series as Prometheus stored it over the last two minutes:
/// its first stored value is 0 (born at 0), and `increase()` counts its
/// whole value (the first increment is not lost). Returns its last value.
fn seen_from_zero(prom: &Prometheus, series: &str, want: impl Fn(f64) -> bool) -> f64 {
    let mut last = (None, None, None);
    wait_until(
        Duration::from_secs(30),
        &format!("{series} seen going up from 0"),
        || {
            let max = num(prom, &format!("max_over_time({series}[2m])"));
            let min = num(prom, &format!("min_over_time({series}[2m])"));
            let inc = num(prom, &format!("increase({series}[2m])"));
            last = (min, max, inc);
            matches!((min, max, inc), (Some(mn), Some(mx), Some(i)) if mn == 0.0 && want(mx) && i >= mx)
        },
    );
    let (min, max, inc) = last;
    eprintln!("{series}: min {min:?} max {max:?} increase {inc:?}");
    max.unwrap()
}

/// The kernel's own count of OOM kills in a v1 memory cgroup.
fn kernel_oom_kills(cg: &MemCgroup) -> f64 {
    let text = std::fs::read_to_string(cg.dir.join("memory.oom_control")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .unwrap_or_else(|| panic!("no oom_kill in memory.oom_control: {text}"))
        .trim()
        .parse()
        .unwrap()
}

/// A cgroup of our own in the unified (cgroup2) hierarchy, which diag
/// names a process by first; no controller is needed to be in it.
fn unified_cgroup(name: &str) -> MemCgroup {
    let root = cgroup2_root().unwrap_or_else(|| {
        panic!("cgroup2 is not mounted: the stall test needs a cgroup of its own")
    });
    let name = format!("diag-fleet-{name}-{}", std::process::id());
    let dir = PathBuf::from(root).join(&name);
    let _ = std::fs::remove_dir(&dir);
    std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    MemCgroup {
        dir,
        rel: format!("/{name}"),
    }
}

#[test]
fn increase_sees_the_first_oom_kill_reset_and_stall() {
    if !require_root("increase_sees_the_first_oom_kill_reset_and_stall") {
        return;
    }
    let _guard = serial();
    let port = free_port();
    let diag = Diag::start(&[
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--top",
        "500",
        "--stall-threshold",
        "5ms",
    ]);
    let prom = Prometheus::start(port);
    prom.wait_for(r#"up{job="diag"}"#, 1.0, Duration::from_secs(20));
    // Host-level series are there from the first scrape, before anything
    // of this test happened.
    for q in [
        r#"diag_host_oom_kills_total{constraint="memcg"}"#,
        r#"diag_host_oom_kills_total{constraint="global"}"#,
        r#"diag_host_tcp_resets_total{direction="sent"}"#,
        r#"diag_host_tcp_failed_connects_total"#,
        r#"diag_host_stalls_total"#,
    ] {
        wait_until(Duration::from_secs(10), q, || num(&prom, q).is_some());
    }
    let host_kills_before = num(&prom, r#"diag_host_oom_kills_total{constraint="memcg"}"#).unwrap();

    // The first OOM kill in a new memory cgroup.
    let memcg = MemCgroup::create(V1_ROOT, "fleet", "memory.limit_in_bytes", 32 << 20);
    let mut child = memcg.spawn(LOADGEN, &["alloc", "256"]);
    let st = child.wait().unwrap();
    assert_eq!(
        st.signal(),
        Some(libc::SIGKILL),
        "the child should be OOM-killed"
    );
    let kernel = kernel_oom_kills(&memcg);
    assert_eq!(kernel, 1.0, "the kernel counted one kill");
    let kills = seen_from_zero(
        &prom,
        &format!(
            r#"diag_oom_kills_total{{cgroup="{}",constraint="memcg"}}"#,
            memcg.rel
        ),
        |v| v >= 1.0,
    );
    assert_eq!(kills, kernel, "diag's count vs memory.oom_control");
    let q = r#"diag_host_oom_kills_total{constraint="memcg"}"#;
    wait_until(Duration::from_secs(10), "the host-level kill", || {
        num(&prom, q) == Some(host_kills_before + kernel)
    });
    let host_inc = num(&prom, &format!("increase({q}[2m])")).unwrap();
    assert!(host_inc >= kernel, "host-level increase {host_inc}");

    // The first reset of a new process: it aborts one connection (its own
    // number: one RST).
    let mut listener = Gen::spawn(LOADGEN, &["listen-hold", "1", "127.0.0.1:0"]);
    let target = format!("127.0.0.1:{}", listener.port());
    let aborter = Command::new(LOADGEN)
        .args(["abort", "1", &target])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let apid = aborter.id();
    assert!(aborter.wait_with_output().unwrap().status.success());
    assert_eq!(listener.line(), "ACCEPTED");
    let resets = seen_from_zero(
        &prom,
        &format!(r#"diag_tcp_resets_total{{pid="{apid}",direction="sent"}}"#),
        |v| v >= 1.0,
    );
    assert_eq!(resets, 1.0, "the aborter sent one reset");
    drop(listener);

    // The first stalls in a new cgroup: an idle-priority victim behind a
    // busy thread on one CPU.
    let cg = unified_cgroup("stall");
    let cpu = (std::thread::available_parallelism().map_or(1, |n| n.get()) - 1).to_string();
    let mut hog = cg.spawn(CPUHOG, &["hog", "1", "2", &cpu]);
    let mut victim = cg.spawn(CPUHOG, &["victim", "2", &cpu, "idle"]);
    let mut delay_ns = 0u64;
    for c in [&mut hog, &mut victim] {
        for line in BufReader::new(c.stdout.take().unwrap()).lines() {
            if let Some(v) = line.unwrap().strip_prefix("RUN_DELAY_NS ") {
                delay_ns += v.parse::<u64>().unwrap();
            }
        }
        assert!(c.wait().unwrap().success());
    }
    let stalls = seen_from_zero(
        &prom,
        &format!(r#"diag_stalls_total{{cgroup="{}"}}"#, cg.rel),
        |v| v >= 1.0,
    );
    // Each stall is a wait of 5 ms or more: the kernel's own run-queue
    // wait of the cgroup's threads (schedstat) holds them all.
    assert!(
        stalls * 5e6 <= delay_ns as f64,
        "{stalls} stalls of 5 ms or more in {delay_ns} ns of waiting"
    );
    drop(prom);
    let out = diag.stop(libc::SIGTERM);
    assert!(out.status.success(), "{} {:?}", out.status, out.stderr);
}

/// The repository's `dist/` directory.
fn dist(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../dist")
        .join(file)
}

/// `promtool ARGS` in `dist/`: it must succeed.
fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dist(""))
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool: {e}: run `cargo xtask setup` (it installs the prometheus package)")
        });
    assert!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_shipped_rules_pass_promtool_check_and_their_unit_tests() {
    promtool(&["check", "rules", "diag.rules.yml"]);
    promtool(&["test", "rules", "diag.rules.test.yml"]);
}

/// Every alert name of the shipped rules.
fn alert_names() -> Vec<String> {
    let text = std::fs::read_to_string(dist("diag.rules.yml")).unwrap();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(|s| s.trim().to_string())
        .collect()
}

/// Alerts no scenario here makes fire (the README says why): DiagUnhealthy
/// needs diag scrapeable while its event pipeline is stuck, DiagAbsent a
/// Prometheus without any diag target (it may fire by chance before the
/// first scrape). `promtool test rules` covers them.
const CANNOT_FIRE_HERE: [&str; 2] = ["DiagUnhealthy", "DiagAbsent"];

/// A dashboard query as Grafana sends it, with its variables at "all"
/// and the rate interval at 1 minute.
fn grafana_to_promql(q: &str) -> String {
    q.replace("$__rate_interval", "1m")
        .replace("$__range", "1h")
        .replace("$instance", ".*")
        .replace("$cgroup", ".*")
}

/// Every panel query and template variable query of the shipped
/// dashboard, against a Prometheus scraping a live diag: each returns
/// series.
fn check_dashboard(prom: &Prometheus) {
    let text = std::fs::read_to_string(dist("diag.dashboard.json")).unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let panels = d["panels"].as_array().expect("panels");
    let mut exprs = Vec::new();
    for p in panels {
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        let targets = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{}", p["title"]));
        assert!(!targets.is_empty(), "{}", p["title"]);
        for t in targets {
            exprs.push((
                p["title"].to_string(),
                t["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    assert!(exprs.len() >= 20, "{} queries", exprs.len());
    // label_values(METRIC, LABEL): the values Grafana offers.
    for v in d["templating"]["list"].as_array().unwrap() {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"].as_str().unwrap();
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{q}"));
        let (metric, label) = inner.rsplit_once(',').unwrap();
        exprs.push((
            format!("variable {}", v["name"]),
            format!("count by ({}) ({metric})", label.trim()),
        ));
    }
    let mut empty = Vec::new();
    for (title, e) in &exprs {
        let q = grafana_to_promql(e);
        assert!(!q.contains('$'), "{title}: a variable left in {q}");
        let got = prom.query(&q);
        eprintln!("{title}: {q}: {} series", got.len());
        if got.is_empty() {
            empty.push(format!("{title}: {q}"));
        }
    }
    assert!(empty.is_empty(), "queries without series: {empty:#?}");
}

/// SIGCONT for a stopped diag, even when the test fails.
struct Stopped(u32);

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.0 as i32, libc::SIGCONT) };
    }
}

#[test]
fn every_shipped_rule_fires_against_a_live_diag() {
    if !require_root("every_shipped_rule_fires_against_a_live_diag") {
        return;
    }
    let _guard = serial();
    // The shipped rules, with their `for:` durations at 0 (promtool's unit
    // tests check those): the expressions must fire on diag's real series.
    let tmp = diag_tests::TempDir::new("fleet-rules");
    let rules = tmp.path("diag.rules.yml");
    let text = std::fs::read_to_string(dist("diag.rules.yml")).unwrap();
    let text: String = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("for: ") {
                let indent = &l[..l.len() - l.trim_start().len()];
                format!("{indent}for: 0s\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&rules, text).unwrap();

    let port = free_port();
    let diag = Diag::start(&[
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--top",
        "500",
        "--stall-threshold",
        "5ms",
        "--close-wait-threshold",
        "1s",
        "--pressure-warn",
        "1",
        "--ring-mib",
        "1",
    ]);
    let prom = Prometheus::with_rules(port, &[&rules]);
    prom.wait_for(r#"up{job="diag"}"#, 1.0, Duration::from_secs(20));
    let mut fired = std::collections::BTreeSet::new();
    let mut wait_fire = |prom: &Prometheus, alert: &str, secs: u64| {
        wait_until(
            Duration::from_secs(secs),
            &format!("{alert} firing"),
            || {
                fired.extend(prom.firing());
                fired.contains(alert)
            },
        );
    };

    // An OOM kill.
    let memcg = MemCgroup::create(V1_ROOT, "fleet-rules", "memory.limit_in_bytes", 32 << 20);
    let mut child = memcg.spawn(LOADGEN, &["alloc", "256"]);
    assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
    wait_fire(&prom, "DiagOOMKill", 30);

    // A socket left in CLOSE_WAIT: the server never closes it.
    let mut holder = Gen::spawn(LOADGEN, &["listen-hold", "1", "127.0.0.1:0"]);
    let target = format!("127.0.0.1:{}", holder.port());
    let c = Command::new(LOADGEN)
        .args(["connect", "1", &target])
        .status()
        .unwrap();
    assert!(c.success());
    assert_eq!(holder.line(), "ACCEPTED");
    wait_fire(&prom, "DiagCloseWaitLeak", 30);

    // An accept queue that fills (backlog 8, nobody accepts) and overflows.
    let mut full = Gen::spawn(LOADGEN, &["listen-full", "127.0.0.1:0", "8"]);
    let target = format!("127.0.0.1:{}", full.port());
    let c = Command::new(LOADGEN)
        .args(["connect-timeout", "30", "1500", &target])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(c.success());
    wait_fire(&prom, "DiagListenOverflows", 30);
    wait_fire(&prom, "DiagAcceptQueueNearlyFull", 30);
    drop(full);

    // Ephemeral ports toward one destination above --pressure-warn (1 %
    // of the range), growing: connections in TIME-WAIT, in steps.
    let range: Vec<u64> = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .unwrap()
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    let step = ((range[1] - range[0] + 1) / 100 / 2).max(50);
    let mut sink = Gen::spawn(LOADGEN, &["listen", &(step * 6).to_string(), "127.0.0.1:0"]);
    let sink_port = sink.port();
    let target = format!("127.0.0.1:{sink_port}");
    // The truth is what ss shows toward the sink, not step * i: on
    // loopback (net.ipv4.tcp_tw_reuse=2) a connect may take over a port
    // whose TIME-WAIT is over a second old, so a few ports serve twice.
    let ports_toward_sink = || -> u64 {
        let out = Command::new("ss")
            .args(["-tanH", "dst", &target])
            .output()
            .expect("ss");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let ports: std::collections::BTreeSet<&str> = text
            .lines()
            .filter_map(|l| l.split_whitespace().nth(3))
            .filter_map(|local| local.rsplit(':').next())
            .collect();
        ports.len() as u64
    };
    let mut before = 0;
    for i in 1..=6u64 {
        let c = Command::new(LOADGEN)
            .args(["connect", &step.to_string(), &target])
            .status()
            .unwrap();
        assert!(c.success());
        let now = ports_toward_sink();
        assert!(
            now >= before + step / 2,
            "step {i}: ss shows {now} ports toward the sink after {before}: the connects did not add ports (tw_reuse took over {})",
            before + step - now
        );
        before = now;
        // Toward the sink: other destinations (the tests before) have
        // ports of their own.
        let q = format!(r#"max(diag_tcp_ephemeral_ports_used{{remote="{target}"}})"#);
        let q = q.as_str();
        // Generous: a loaded CI host once took over 10 s from the
        // connects to the scrape that showed them.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let seen = num(&prom, q);
            // ss read after the scrape: ports only go (TIME-WAIT ends),
            // none come, so diag's figure must be at least ss's; and
            // never more than the connects made.
            let truth = ports_toward_sink();
            if let Some(v) = seen {
                if v > (step * i) as f64 {
                    // What might say why: events lost, the table's fixes.
                    let why = |q: &str| num(&prom, q);
                    panic!(
                        "step {i}: {q} is {v}, more than the {} connects made; ss shows {truth}; events dropped {:?}, TIME-WAIT added from the table {:?}, sockets removed {:?}",
                        step * i,
                        why("sum(diag_events_dropped_total)"),
                        why(r#"diag_tcp_reconcile_corrections_total{kind="time_wait_added"}"#),
                        why(r#"diag_tcp_reconcile_corrections_total{kind="socket_removed"}"#),
                    );
                }
                if v >= truth as f64 {
                    break;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "step {i}: {q} is {seen:?} after 30 s; ss shows {truth} ports toward the sink"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    sink.wait();
    wait_fire(&prom, "DiagEphemeralPortsHigh", 30);
    wait_fire(&prom, "DiagEphemeralPortsExhaustionSoon", 30);

    // Run-queue latency: an idle-priority victim behind busy threads on
    // one CPU. The victim is alone in its cgroup, the rule's unit: with
    // the busy threads in it too, their thousands of 4 ms waits made
    // nearly all of the cgroup's histogram, and its p99 hung on whether 1 %
    // of the samples were the victim's waits of 40-50 ms (CI once saw it
    // stay under 50 ms). Three busy threads: the victim waits about 20 ms
    // per busy thread each time it wakes (schedstat here: 45 ms behind
    // two). Only the label differs: the unified hierarchy has no cpu
    // controller on these hosts, so every process here shares one run
    // queue (checked below).
    let cg = unified_cgroup("rules");
    let hogs = unified_cgroup("rules-hogs");
    let controllers = std::fs::read_to_string(
        PathBuf::from(cgroup2_root().unwrap()).join("cgroup.subtree_control"),
    )
    .unwrap_or_default();
    assert!(
        !controllers.split_whitespace().any(|c| c == "cpu"),
        "cgroup2's cpu controller is on ({controllers:?}): the victim's cgroup would get a CPU share of its own"
    );
    let cpu = (std::thread::available_parallelism().map_or(1, |n| n.get()) - 1).to_string();
    let mut hog = hogs.spawn(CPUHOG, &["hog", "3", "6", &cpu]);
    let mut victim = cg.spawn(CPUHOG, &["victim", "6", &cpu, "idle"]);
    wait_fire(&prom, "DiagRunQueueLatencyHigh", 60);
    let q = format!(
        r#"max(diag:runq_latency_seconds:p99_5m{{cgroup="{}"}})"#,
        cg.rel
    );
    eprintln!("the victim's cgroup: {q} = {:?}", num(&prom, &q));
    assert!(hog.wait().unwrap().success() && victim.wait().unwrap().success());

    // Every query of the dashboard returns series now.
    check_dashboard(&prom);

    // diag stopped: it cannot be scraped, and the kernel drops what it
    // cannot take in meanwhile.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(diag.pid() as i32, libc::SIGSTOP) };
    let stopped = Stopped(diag.pid());
    let churn = loopback_churn(LOADGEN, 1500);
    let _ = churn.port;
    wait_fire(&prom, "DiagDown", 30);
    drop(stopped);
    wait_fire(&prom, "DiagEventsDropped", 30);

    // Every shipped alert fired but those that cannot here.
    let names = alert_names();
    assert!(names.len() >= 11, "{names:?}");
    eprintln!("fired: {fired:?}");
    for a in names {
        if !CANNOT_FIRE_HERE.contains(&a.as_str()) {
            assert!(fired.contains(&a), "{a} never fired; fired: {fired:?}");
        }
    }
    drop(prom);
    let out = diag.stop(libc::SIGTERM);
    assert!(out.status.success(), "{} {:?}", out.status, out.stderr);
}
