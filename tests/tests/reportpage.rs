//! The report page in a real browser: a real-kernel incident recorded
//! with `diag record` (churn, a CLOSE_WAIT leak, a CPU hog and its stalls,
//! refused connects, a memory-cgroup OOM kill), `diag report --html`, then
//! Debian's headless Chromium loads the page, which drives itself
//! (`#selftest`): sorting, filtering, narrowing to a process and a moment.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use diag_tests::{
    Diag, Gen, MemCgroup, TempDir, V1_ROOT, diag_bin, loopback_churn, recorded, require_root,
    require_tool, serial, wait_until,
};
use serde_json::Value;

const LOADGEN: &str = env!("CARGO_BIN_EXE_diag-loadgen");
const CPUHOG: &str = env!("CARGO_BIN_EXE_diag-cpuhog");

/// Start `diag-cpuhog ARGS`; its pid (its first line).
fn cpuhog(args: &[&str]) -> (std::process::Child, u32) {
    use std::io::BufRead;
    let mut child = Command::new(CPUHOG)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn diag-cpuhog");
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    let pid = first.trim().strip_prefix("PID ").unwrap().parse().unwrap();
    (child, pid)
}

/// Headless Chromium on `url`, with `args`; (stdout, stderr). Root needs
/// --no-sandbox; a fresh profile each time.
fn chromium(profile: &Path, args: &[&str], url: &str) -> (String, String) {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(out.status.success(), "chromium failed: {out:?}");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The text of `<pre id="selftest">` in a dumped DOM, as JSON.
fn selftest(dom: &str) -> Value {
    let start = dom
        .find("<pre id=\"selftest\">")
        .expect("the selftest block")
        + 19;
    let end = start + dom[start..].find("</pre>").unwrap();
    let text = dom[start..end]
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&amp;", "&");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// The page's embedded data.
fn page_data(page: &str) -> Value {
    let start = page
        .find("<script type=\"application/json\" id=\"data\">")
        .unwrap()
        + 42;
    let end = start + page[start..].find("</script>").unwrap();
    serde_json::from_str(&page[start..end]).unwrap()
}

fn pids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap() as u32)
        .collect()
}

fn texts(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_report_page_works_in_a_real_browser() {
    let test = "the_report_page_works_in_a_real_browser";
    if !require_root(test) || !require_tool(test, "chromium", "chromium") {
        return;
    }
    let _guard = serial();
    const N: usize = 300;
    const K: usize = 4;
    const H: usize = 6;
    const REFUSED: usize = 25;
    let dir = TempDir::new("reportpage");
    let file = dir.path("incident.diag");
    let f = file.to_str().unwrap();
    let recorder = Diag::start(&[
        "record",
        "-o",
        f,
        "--events",
        "tcp,reset,retrans,drop,close,oom,stall",
        "--stall-threshold",
        "5ms",
    ]);

    // Connections that stay up all along, churn, then a CLOSE_WAIT leak.
    let mut holder = Gen::spawn(LOADGEN, &["listen-hold", &H.to_string(), "127.0.0.1:0"]);
    let (hold_port, holder_pid) = (holder.port(), holder.pid());
    let mut held = Gen::spawn(
        LOADGEN,
        &[
            "connect-hold",
            &H.to_string(),
            &format!("127.0.0.1:{hold_port}"),
        ],
    );
    assert_eq!(held.line(), format!("CONNECTED {H}"));
    let churn = loopback_churn(LOADGEN, N);
    let mut leaker = Gen::spawn(LOADGEN, &["listen-hold", &K.to_string(), "127.0.0.1:0"]);
    let (leak_port, leaker_pid) = (leaker.port(), leaker.pid());
    let leak_client = Command::new(LOADGEN)
        .args(["connect", &K.to_string(), &format!("127.0.0.1:{leak_port}")])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(leak_client.success());
    std::thread::sleep(Duration::from_secs(3));
    // A CPU hog and a SCHED_IDLE victim on one CPU: stalls.
    let cpu = (std::thread::available_parallelism().map_or(1, |n| n.get()) - 1).to_string();
    let (mut hog, hog_pid) = cpuhog(&["hog", "1", "3", &cpu]);
    let (mut victim, victim_pid) = cpuhog(&["victim", "3", &cpu, "idle"]);
    assert!(hog.wait().unwrap().success() && victim.wait().unwrap().success());
    // Refused connects: the churn's listener is gone.
    let refuser = Command::new(LOADGEN)
        .args([
            "try-connect",
            &REFUSED.to_string(),
            &format!("127.0.0.1:{}", churn.port),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let refuser_pid = refuser.id();
    let said = refuser.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&said.stdout).trim(),
        format!("REFUSED {REFUSED}")
    );
    // A memory-cgroup OOM kill.
    let cg = MemCgroup::create(V1_ROOT, "reportpage", "memory.limit_in_bytes", 32 << 20);
    let mut oom_victim = cg.spawn(LOADGEN, &["alloc", "256"]);
    let oom_pid = oom_victim.id();
    let _ = oom_victim.wait();
    wait_until(Duration::from_secs(15), "the OOM kill recorded", || {
        !recorded(&file, &["--events", "oom"]).is_empty()
    });
    let out = recorder.stop(libc::SIGINT);
    drop(cg);
    assert!(out.status.success(), "{:?}", out.stderr);
    drop((leaker, holder, held));

    // The independent facts: the recording's own events, exported.
    let jsonl = Command::new(diag_bin())
        .args(["export", f, "--format", "jsonl"])
        .output()
        .unwrap();
    assert!(jsonl.status.success());
    let events: Vec<Value> = String::from_utf8_lossy(&jsonl.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let connects_of = |pid: u32| {
        events
            .iter()
            .filter(|e| {
                e["event"] == "tcp_state"
                    && e["pid"] == pid
                    && e["old_state"] == "CLOSE"
                    && e["new_state"] == "SYN_SENT"
            })
            .count()
    };
    assert_eq!(connects_of(churn.client), N);
    let stalls: Vec<&Value> = events.iter().filter(|e| e["event"] == "stall").collect();
    let victim_stalls = stalls.iter().filter(|e| e["pid"] == victim_pid).count();
    assert!(victim_stalls > 0, "the victim stalled");
    // The scheduler's frames: every process's waits, each second.
    let sched: Vec<&Value> = events.iter().filter(|e| e["event"] == "sched").collect();
    assert!(
        sched.len() >= 5,
        "a scheduler frame a second: {}",
        sched.len()
    );
    let victim_waits: u64 = sched
        .iter()
        .flat_map(|f| f["processes"].as_array().unwrap())
        .filter(|p| p["pid"] == victim_pid)
        .map(|p| p["waits"].as_u64().unwrap())
        .sum();
    // (Not all of its stalls need be among them: a frame keeps the 64
    // processes that waited longest, and sums the others.)
    assert!(victim_waits > 0, "the victim's waits are recorded");

    // The page.
    let html = dir.path("incident.html");
    let report = Command::new(diag_bin())
        .args(["report", f, "--html", html.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(report.status.success(), "{report:?}");
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(!page.contains("src=\"http") && !page.contains("href=\"http"));
    let data = page_data(&page);
    assert_eq!(data["oom"].as_array().unwrap().len(), 1, "{}", data["oom"]);
    assert_eq!(data["oom"][0][1], oom_pid);
    assert_eq!(data["stalls"].as_array().unwrap().len(), stalls.len());
    let gauge_max = |col: usize| {
        data["pts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[col].as_u64().unwrap())
            .max()
            .unwrap()
    };
    // (The host's gauges count other sockets too.)
    assert!(gauge_max(7) >= K as u64, "CLOSE_WAIT: the leak");
    assert!(gauge_max(5) >= 2 * H as u64, "ESTABLISHED: both ends held");
    // The middle of the interval in which the churn client opened its
    // connections: where the test clicks.
    let client_ix = data["procs"]
        .as_array()
        .unwrap()
        .iter()
        .position(|p| p[0] == churn.client)
        .expect("the client is a process of the page");
    let churn_at = data["pd"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r[2] == client_ix && r[3].as_u64().unwrap() > 0)
        .map(|r| r[0].as_f64().unwrap() - r[1].as_f64().unwrap() / 2.0)
        .unwrap();

    let profile = dir.path("profile");
    let url = format!("file://{}", html.display());
    let (dom, log) = chromium(
        &profile,
        &["--dump-dom"],
        &format!("{url}#selftest&comm=diag-cpuhog&pid={victim_pid}&at={churn_at}"),
    );
    let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:#?}");
    let st = selftest(&dom);
    eprintln!("selftest: {st:#}");
    assert_eq!(st["errors"], serde_json::json!([]), "script errors");

    // Every plot has data.
    for plot in [
        "timeline",
        "errors",
        "heatmap",
        "state-close_wait",
        "state-time_wait",
        "state-established",
        "churn",
        "lifetimes",
    ] {
        assert!(
            st["plots"][plot].as_u64().unwrap_or(0) > 0,
            "plot {plot} has no data: {}",
            st["plots"]
        );
    }

    // The table: one row per process that did anything, among them every
    // process of the scenario.
    let rows = pids(&st["rows"]);
    // (A pid may have two rows: two processes, as diag tells them apart.)
    let set: BTreeSet<u32> = rows.iter().copied().collect();
    for (what, pid) in [
        ("churn client", churn.client),
        ("churn listener", churn.listener),
        ("leaking listener", leaker_pid),
        ("holding listener", holder_pid),
        ("refused client", refuser_pid),
        ("stalled victim", victim_pid),
    ] {
        assert!(
            set.contains(&pid),
            "no row for the {what} ({pid}): {rows:?}"
        );
    }
    // Each process's numbers, against what the processes did themselves
    // and the recording's events.
    // (Rows are sorted by opens: a pid's busiest row first.)
    let cell = |k: &str, pid: u32| -> u64 {
        let i = rows.iter().position(|&p| p == pid).unwrap();
        st["table"][k][i].as_str().unwrap().parse().unwrap()
    };
    assert_eq!(cell("opens", churn.client), N as u64);
    assert_eq!(cell("opens", churn.listener), N as u64);
    assert_eq!(cell("close_wait", leaker_pid), K as u64, "the leak");
    assert_eq!(cell("failed", refuser_pid), REFUSED as u64);
    assert_eq!(cell("stalls", victim_pid), victim_stalls as u64);
    assert_eq!(cell("waits", victim_pid), victim_waits);
    // Every process still alive has its name (from the kernel's maps, or
    // /proc for those they name none for: long-lived kernel threads).
    let comms = texts(&st["table"]["comm"]);
    let nameless: Vec<u32> = rows
        .iter()
        .zip(&comms)
        .filter(|(p, c)| c.is_empty() && std::path::Path::new(&format!("/proc/{p}")).exists())
        .map(|(p, _)| *p)
        .collect();
    assert!(
        nameless.is_empty(),
        "live processes without a command: {nameless:?}"
    );
    // And only processes the recording's events name.
    let named: BTreeSet<u32> = events
        .iter()
        .filter_map(|e| e["pid"].as_u64())
        .chain(
            sched
                .iter()
                .flat_map(|f| f["processes"].as_array().unwrap())
                .filter_map(|p| p["pid"].as_u64()),
        )
        .map(|p| p as u32)
        .collect();
    assert!(
        set.is_subset(&named),
        "rows not named by the recording: {:?}",
        set.difference(&named).collect::<Vec<_>>()
    );

    // Sorted by opens (descending): the churn's two ends first, N each
    // (ties by pid), then no row with more.
    let by_pid = pids(&st["sorted_by_pid"]["pids"]);
    // (Ascending; a pid with two rows, two processes, is two equal keys.)
    assert!(by_pid.windows(2).all(|w| w[0] <= w[1]), "{by_pid:?}");
    let by_opens = &st["sorted_by_opens"];
    assert!(
        by_opens["header"].as_str().unwrap().ends_with('\u{25bc}'),
        "{by_opens}"
    );
    let top2: BTreeSet<u32> = pids(&by_opens["pids"]).into_iter().take(2).collect();
    assert_eq!(top2, BTreeSet::from([churn.client, churn.listener]));
    let opens: Vec<u64> = texts(&by_opens["opens"])
        .iter()
        .map(|o| o.parse().unwrap())
        .collect();
    assert_eq!(&opens[..2], &[N as u64, N as u64], "{opens:?}");
    assert!(opens.windows(2).all(|w| w[0] >= w[1]), "{opens:?}");
    let asc: Vec<u64> = texts(&st["sorted_by_opens_asc"]["opens"])
        .iter()
        .map(|o| o.parse().unwrap())
        .collect();
    assert!(asc.windows(2).all(|w| w[0] <= w[1]), "{asc:?}");
    assert_ne!(
        pids(&st["sorted_by_opens_asc"]["pids"]),
        pids(&by_opens["pids"])
    );

    // Filtered by a command: only its rows remain.
    let comms = texts(&st["filtered"]["comms"]);
    assert!(!comms.is_empty() && comms.len() < rows.len(), "{comms:?}");
    assert!(comms.iter().all(|c| c == "diag-cpuhog"), "{comms:?}");
    assert!(pids(&st["filtered"]["pids"]).contains(&victim_pid));

    // Narrowed to the stalled victim: its stalls, no churn of its own.
    let np = &st["narrowed_to_pid"];
    assert!(
        np["scope"]
            .as_str()
            .unwrap()
            .contains(&format!("pid {victim_pid} (diag-cpuhog)")),
        "{np}"
    );
    assert!(np["plots"]["heatmap"].as_u64().unwrap() > 0, "{np}");
    assert_eq!(np["plots"]["churn"], 0, "{np}");
    // The hog held the victim's CPU (pinned together).
    assert!(
        pids(&st["villains"]).contains(&hog_pid),
        "the hog among the tasks that held the CPU: {}",
        st["villains"]
    );

    // Narrowed to the busiest churn second: the churn's processes, not
    // the victim that stalled seconds later; fewer opens than in all.
    let nt = &st["narrowed_to_time"];
    let in_window = pids(&nt["rows"]);
    assert!(nt["window"].is_array(), "{nt}");
    assert!(in_window.contains(&churn.client), "{nt}");
    assert!(!in_window.contains(&victim_pid), "{nt}");
    let cleared = &st["cleared"];
    assert_eq!(cleared["rows"].as_u64().unwrap() as usize, rows.len());
    assert!(
        cleared["scope"]
            .as_str()
            .unwrap()
            .contains("whole recording")
    );

    // A screenshot for CI (and the README's copy).
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
    let png = target.join("report-page.png");
    let _ = std::fs::remove_file(&png);
    let (_, log) = chromium(
        &profile,
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1200,3300",
        ],
        &url,
    );
    let shot = std::fs::read(&png).unwrap_or_else(|e| panic!("{e}: {log}"));
    assert!(shot.starts_with(b"\x89PNG"), "a PNG");
    assert!(shot.len() > 20_000, "a PNG with something drawn");
}
