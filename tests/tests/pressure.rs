//! Pressure stall information (PSI): CPU hogs in a cgroup v2 directory of
//! their own, more busy threads than the one CPU they are pinned to, while
//! `diag serve` and `diag record` run. diag's totals for that cgroup and
//! for the host must lie between the kernel's own pressure files read
//! before and after, and have grown by the hogs' stall time.

use std::{path::PathBuf, process::Command, time::Duration};

use diag_tests::{
    Diag, MemCgroup, TempDir, cgroup2_root, diag_bin, free_port, require_root, scrape_metrics,
    serial, wait_until,
};
use serde_json::Value;

const CPUHOG: &str = env!("CARGO_BIN_EXE_diag-cpuhog");

/// The `total=` (µs) of a pressure file's `some` line.
fn some_total(path: &str) -> u64 {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .find_map(|l| l.strip_prefix("some "))
        .and_then(|l| l.split_whitespace().find_map(|f| f.strip_prefix("total=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no some total in {path}: {text}"))
}

/// The value of one exposition series, if there.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn cpu_pressure_of_a_cgroup_agrees_with_its_files() {
    if !require_root("cpu_pressure_of_a_cgroup_agrees_with_its_files") {
        return;
    }
    let _guard = serial();
    let root = cgroup2_root().unwrap_or_else(|| {
        panic!("cgroup2 is not mounted: the PSI test needs a cgroup of its own")
    });
    let name = format!("diag-psi-{}", std::process::id());
    let dir = PathBuf::from(&root).join(&name);
    let _ = std::fs::remove_dir(&dir);
    std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    let cg = MemCgroup {
        dir,
        rel: format!("/{name}"),
    };
    let cg_file = cg.dir.join("cpu.pressure").to_str().unwrap().to_string();
    let host_file = "/proc/pressure/cpu";

    let port = free_port();
    let serve = Diag::start(&[
        "serve",
        "--no-sched",
        "--listen",
        &format!("127.0.0.1:{port}"),
    ]);
    let tmp = TempDir::new("pressure");
    let file = tmp.path("psi.diag");
    let f = file.to_str().unwrap();
    let recorder = Diag::start(&["record", "-o", f]);
    let cg_series = format!(
        r#"diag_cgroup_pressure_stall_seconds_total{{cgroup="{}",resource="cpu",kind="some"}}"#,
        cg.rel
    );
    let host_series = r#"diag_pressure_stall_seconds_total{resource="cpu",kind="some"}"#;
    // Both read the pressure files (the cgroup is quiet until the hogs
    // start: counted, not named).
    wait_until(
        Duration::from_secs(20),
        "the host's PSI in diag serve",
        || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                && metric(&scrape_metrics(port), host_series).is_some_and(|v| v > 0.0)
        },
    );
    std::thread::sleep(Duration::from_millis(1500));

    let cg_before = some_total(&cg_file);
    let host_before = some_total(host_file);
    // Three busy threads on one CPU for 3 s: at every moment at least one
    // of the cgroup's tasks waits for it.
    let cpu = (std::thread::available_parallelism().map_or(1, |n| n.get()) - 1).to_string();
    let mut hog = cg.spawn(CPUHOG, &["hog", "3", "3", &cpu]);
    let mut hog_out = String::new();
    std::io::Read::read_to_string(&mut hog.stdout.take().unwrap(), &mut hog_out).unwrap();
    assert!(hog.wait().unwrap().success());
    // The kernel's run-queue wait of the hogs' threads (schedstat).
    let run_delay_ns: u64 = hog_out
        .lines()
        .find_map(|l| l.strip_prefix("RUN_DELAY_NS "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no RUN_DELAY_NS in {hog_out:?}"));
    // A reading after the hogs ended (once a second).
    std::thread::sleep(Duration::from_millis(2500));

    let text = scrape_metrics(port);
    let serve_cg = metric(&text, &cg_series).unwrap_or_else(|| panic!("no {cg_series} in\n{text}"));
    let serve_host =
        metric(&text, host_series).unwrap_or_else(|| panic!("no {host_series} in\n{text}"));
    let rec_out = recorder.stop(libc::SIGINT);
    assert!(
        rec_out.status.success(),
        "{} {:?}",
        rec_out.status,
        rec_out.stderr
    );
    let cg_after = some_total(&cg_file);
    let host_after = some_total(host_file);
    let out = serve.stop(libc::SIGTERM);
    assert!(out.status.success(), "{} {:?}", out.status, out.stderr);
    eprintln!(
        "cgroup some total {cg_before} -> {cg_after} us, serve {serve_cg} s; host {host_before} -> {host_after} us, serve {serve_host} s"
    );
    assert!(
        cg_after >= cg_before + 1_000_000,
        "the hogs stalled their cgroup at least 1 s: {cg_before} -> {cg_after}"
    );

    // PSI counts the time at least one task waited: the threads' waits
    // overlap (two wait while one runs), so their sum is larger.
    let psi_ns = (cg_after - cg_before) * 1000;
    eprintln!(
        "run-queue wait of the hogs {run_delay_ns} ns, PSI some {psi_ns} ns ({:.2}x)",
        run_delay_ns as f64 / psi_ns as f64
    );
    assert!(
        run_delay_ns as f64 >= 0.95 * psi_ns as f64,
        "the threads' waits {run_delay_ns} ns hold PSI's {psi_ns} ns"
    );

    // serve: the kernel's totals, in seconds, read between the two.
    let s = |us: u64| us as f64 / 1e6;
    assert!(
        serve_cg >= s(cg_before) + 1.0 && serve_cg <= s(cg_after),
        "serve's {serve_cg} s is not within [{} + 1, {}]",
        s(cg_before),
        s(cg_after)
    );
    assert!(
        serve_host >= s(host_before) + 1.0 && serve_host <= s(host_after),
        "serve's host {serve_host} s is not within [{} + 1, {}]",
        s(host_before),
        s(host_after)
    );

    // The recording: a frame a second, the cgroup's totals in them.
    let export = Command::new(diag_bin())
        .args(["export", f, "--format", "jsonl"])
        .output()
        .unwrap();
    assert!(export.status.success(), "{:?}", export);
    let frames: Vec<Value> = String::from_utf8_lossy(&export.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == "pressure")
        .collect();
    assert!(frames.len() >= 6, "{} pressure frames", frames.len());
    assert!(
        frames.iter().any(|f| f["quiet_count"].as_u64() > Some(0)),
        "the cgroup was quiet before the hogs, and counted"
    );
    // (total, stall in the interval) of the cgroup's cpu some, per frame.
    let mine: Vec<(u64, u64)> = frames
        .iter()
        .filter_map(|fr| {
            let c = fr["cgroups"]
                .as_array()?
                .iter()
                .find(|c| c["cgroup"] == cg.rel.as_str())?;
            let some = &c["cpu"]["some"];
            Some((some["total_us"].as_u64()?, some["stall_us"].as_u64()?))
        })
        .collect();
    assert!(mine.len() >= 4, "the cgroup in {} frames", mine.len());
    let (last_total, _) = *mine.last().unwrap();
    assert!(
        last_total >= cg_before + 1_000_000 && last_total <= cg_after,
        "the recording's last total {last_total} is not within [{cg_before} + 1 s, {cg_after}]"
    );
    // Each frame's stall time is its total's growth: together they are
    // the growth from the first frame to the last, exactly.
    let grown: u64 = mine[1..].iter().map(|m| m.1).sum();
    assert_eq!(grown, last_total - mine[0].0, "{mine:?}");
    // The host's totals too.
    let host_last = frames.last().unwrap()["host"]["cpu"]["some"]["total_us"]
        .as_u64()
        .unwrap();
    assert!(
        host_last >= host_before + 1_000_000 && host_last <= host_after,
        "host {host_last} not within [{host_before} + 1 s, {host_after}]"
    );

    // The report names the cgroup among the most pressured.
    let report = Command::new(diag_bin())
        .args(["report", f, "--width", "0"])
        .output()
        .unwrap();
    assert!(report.status.success(), "{:?}", report);
    let text = String::from_utf8_lossy(&report.stdout);
    let block: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("  Cgroups with the most stall time"))
        .skip(1)
        .take_while(|l| l.starts_with("    "))
        .collect();
    assert!(
        block
            .iter()
            .any(|l| l.trim_start().starts_with(&format!("{} ", cg.rel))),
        "{} not among {block:?} in\n{text}",
        cg.rel
    );
    let cpu_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("cpu ") && l.contains("avg10 peak"))
        .unwrap_or_else(|| panic!("no host cpu pressure line in\n{text}"));
    assert!(cpu_line.contains("some "), "{cpu_line}");
}
