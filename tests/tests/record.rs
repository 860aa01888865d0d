//! Recordings: record a real scenario, replay it without root, compare with
//! what diag showed live; kill the recorder; damage the file; fill the disk.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread,
    time::Duration,
};

use diag_tests::{Diag, Gen, MemCgroup, V1_ROOT, diag_bin, loopback_churn, require_root, serial};
use serde_json::Value;

const LOADGEN: &str = env!("CARGO_BIN_EXE_diag-loadgen");

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("diag-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn diag(args: &[&str]) -> Output {
    Command::new(diag_bin()).args(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn loadgen(args: &[&str]) -> std::process::Child {
    Command::new(LOADGEN)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

fn last_json(out: &[u8]) -> Value {
    let t = text(out);
    let line = t.lines().last().unwrap_or_else(|| panic!("no output"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

fn row(snap: &Value, pid: u32) -> Value {
    snap["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["pid"] == pid)
        .unwrap_or_else(|| panic!("no row for {pid}: {}", snap["processes"]))
        .clone()
}

/// Run `diag ARGS` as user nobody.
fn as_nobody(args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(diag_bin())
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn replay_without_root_reproduces_the_live_aggregates() {
    if !require_root("replay_without_root_reproduces_the_live_aggregates") {
        return;
    }
    let _guard = serial();
    const N: usize = 100;
    const K: usize = 3;
    let dir = TempDir::new("replay");
    let file = dir.path("session.diag");
    let f = file.to_str().unwrap();
    let recorder = Diag::start(&["record", "-o", f, "--reconcile", "1s"]);
    let live = Diag::start(&[
        "conns",
        "--json",
        "--watch",
        "--close-wait-threshold",
        "1s",
        "--top",
        "0",
    ]);

    // Churn, a CLOSE_WAIT leak and a memcg OOM kill.
    let client_pid = loopback_churn(LOADGEN, N).client;
    let mut leaker = Gen::spawn(LOADGEN, &["listen-hold", &K.to_string(), "127.0.0.1:0"]);
    let leak_port = leaker.port();
    assert!(
        loadgen(&["connect", &K.to_string(), &format!("127.0.0.1:{leak_port}")])
            .wait()
            .unwrap()
            .success()
    );
    let cg = MemCgroup::create(V1_ROOT, "record", "memory.limit_in_bytes", 32 << 20);
    let mut victim = cg.spawn(LOADGEN, &["alloc", "256"]);
    let victim_pid = victim.id();
    let _ = victim.wait();
    thread::sleep(Duration::from_millis(2200));

    let live_out = live.stop(libc::SIGINT);
    let rec_out = recorder.stop(libc::SIGINT);
    let cg_path = cg.rel.clone();
    drop(cg);
    assert!(
        live_out.status.success() && rec_out.status.success(),
        "{:?} {:?}",
        live_out.stderr,
        rec_out.stderr
    );
    assert!(
        rec_out.stderr.last().unwrap().contains("recorded"),
        "{:?}",
        rec_out.stderr
    );
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "recordings are private");

    // Another "host": a copy nobody may read, replayed as nobody.
    let copy = dir.path("copy.diag");
    std::fs::copy(&file, &copy).unwrap();
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let c = copy.to_str().unwrap();
    Command::new("chown")
        .args(["65534:65534", c])
        .status()
        .unwrap();
    let replayed = as_nobody(&[
        "replay",
        c,
        "conns",
        "--json",
        "--close-wait-threshold",
        "1s",
        "--top",
        "0",
    ]);
    assert!(replayed.status.success(), "{}", text(&replayed.stderr));
    let live_snap = live_out.json().last().unwrap().clone();
    let replay_snap = last_json(&replayed.stdout);
    for pid in [client_pid, leaker.pid()] {
        let (l, r) = (row(&live_snap, pid), row(&replay_snap, pid));
        for k in [
            "active_opens",
            "passive_opens",
            "closes",
            "time_waits",
            "resets_sent",
            "resets_received",
        ] {
            assert_eq!(
                l["totals"][k], r["totals"][k],
                "pid {pid} {k}: live {} replay {}",
                l["totals"], r["totals"]
            );
        }
        for k in ["close_wait", "established", "time_wait"] {
            assert_eq!(l["states"][k], r["states"][k], "pid {pid} {k}");
        }
        assert_eq!(l["leaks"], r["leaks"], "pid {pid} leaks");
    }
    assert_eq!(
        row(&replay_snap, client_pid)["totals"]["active_opens"],
        N as u64
    );
    assert_eq!(row(&replay_snap, leaker.pid())["leaks"], K as u64);

    // The OOM kill replays too.
    let oom = as_nobody(&["replay", c, "tail", "--json", "--events", "oom"]);
    assert!(oom.status.success(), "{}", text(&oom.stderr));
    let kills: Vec<Value> = text(&oom.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(kills.len(), 1, "{kills:?}");
    assert_eq!(kills[0]["pid"], victim_pid);
    // With what user space learned when it was recorded (the cgroup is
    // gone now, and this is another "host").
    assert_eq!(kills[0]["oom_cgroup"], cg_path.as_str(), "{}", kills[0]);
    assert_eq!(kills[0]["cgroup"], cg_path.as_str(), "{}", kills[0]);
    assert_eq!(kills[0]["top_scope"], cg_path.as_str(), "{}", kills[0]);

    // The report and the exports.
    let html = dir.path("report.html");
    let report = diag(&["report", f, "--html", html.to_str().unwrap()]);
    assert!(report.status.success(), "{}", text(&report.stderr));
    let r = text(&report.stdout);
    for want in [
        "1. ERRORS",
        "OOM kills: 1",
        &format!("memcg {cg_path} "),
        "2. SATURATION",
        "3. CHURN",
        "Complete: no events were lost.",
        &format!("pid {client_pid}"),
    ] {
        assert!(r.contains(want), "report lacks {want}:\n{r}");
    }
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        page.matches("<svg").count() >= 4 && page.contains("class=\"oom\""),
        "plots and an OOM marker"
    );
    let jsonl = diag(&["export", f, "--format", "jsonl"]);
    assert!(jsonl.status.success());
    let lines: Vec<Value> = text(&jsonl.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["event"], "recording");
    assert!(
        lines
            .iter()
            .any(|l| l["event"] == "oom_kill" && l["pid"] == victim_pid)
    );
    assert!(
        lines.iter().any(|l| l["event"] == "oom_context"
            && l["tid"] == victim_pid
            && l["context"]["oom_cgroup"] == cg_path.as_str()),
        "the kill's context is exported"
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["event"] == "tcp_state" && l["pid"] == client_pid)
            .count(),
        5 * N
    );
    let trace = diag(&["export", f, "--format", "chrome-trace"]);
    assert!(trace.status.success());
    let t: Value = serde_json::from_slice(&trace.stdout).expect("the Chrome trace is JSON");
    let evs = t["traceEvents"].as_array().unwrap();
    assert_eq!(
        evs.iter()
            .filter(|e| e["ph"] == "X" && e["pid"] == client_pid)
            .count(),
        N,
        "one slice per connection"
    );
    assert!(
        evs.iter()
            .any(|e| e["ph"] == "i" && e["cat"] == "oom" && e["pid"] == victim_pid)
    );
}

#[test]
fn sigkill_leaves_everything_but_the_last_second() {
    if !require_root("sigkill_leaves_everything_but_the_last_second") {
        return;
    }
    let _guard = serial();
    const N: usize = 200;
    let dir = TempDir::new("kill");
    let file = dir.path("killed.diag");
    let f = file.to_str().unwrap();
    let recorder = Diag::start(&["record", "-o", f]);
    let client_pid = loopback_churn(LOADGEN, N).client;
    // Frames are written at least once a second.
    thread::sleep(Duration::from_millis(2500));
    let out = recorder.stop(libc::SIGKILL);
    assert_eq!(out.status.code(), None);
    let replay = diag(&[
        "replay",
        f,
        "tail",
        "--json",
        "--pid",
        &client_pid.to_string(),
    ]);
    assert!(replay.status.success(), "{}", text(&replay.stderr));
    assert_eq!(
        text(&replay.stdout).lines().count(),
        5 * N,
        "every event of the churn reads back"
    );
    assert!(
        text(&replay.stderr).contains("not finished cleanly"),
        "{}",
        text(&replay.stderr)
    );
}

/// A small deterministic generator for damage positions.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n.max(1)
    }
}

fn check_damaged(path: &Path) {
    let p = path.to_str().unwrap();
    for args in [
        vec!["replay", p, "tail", "--json"],
        vec!["replay", p, "conns", "--json"],
        vec!["report", p],
    ] {
        let out = diag(&args);
        let err = text(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        match out.status.code() {
            Some(0) => {
                if args.get(2) == Some(&"tail") {
                    for l in text(&out.stdout).lines() {
                        serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"));
                    }
                }
            }
            Some(1) => assert_eq!(err.lines().count(), 1, "unreadable: one sentence: {err}"),
            other => panic!("{args:?}: exit {other:?}: {err}"),
        }
    }
}

#[test]
fn damaged_recordings_read_up_to_the_damage_and_never_panic() {
    if !require_root("damaged_recordings_read_up_to_the_damage_and_never_panic") {
        return;
    }
    let _guard = serial();
    let dir = TempDir::new("damage");
    let file = dir.path("good.diag");
    let f = file.to_str().unwrap();
    let recorder = Diag::start(&["record", "-o", f, "--no-compress"]);
    loopback_churn(LOADGEN, 50);
    thread::sleep(Duration::from_millis(1200));
    assert!(recorder.stop(libc::SIGINT).status.success());
    let good = std::fs::read(&file).unwrap();
    let full = diag(&["replay", f, "tail", "--json"]);
    let all = text(&full.stdout).lines().count();
    assert!(all >= 500, "{all}");

    let mut rng = Lcg(0x5eed);
    let v = dir.path("v.diag");
    // Truncations keep what comes before them, and say so.
    for _ in 0..8 {
        let cut = 16 + rng.next(good.len() - 16);
        std::fs::write(&v, &good[..cut]).unwrap();
        check_damaged(&v);
        let out = diag(&["replay", v.to_str().unwrap(), "tail", "--json"]);
        if out.status.success() {
            assert!(text(&out.stdout).lines().count() <= all);
            assert!(
                text(&out.stderr).contains("not finished cleanly")
                    || text(&out.stderr).contains("truncated")
            );
        }
    }
    // Bit flips: the frame they hit is skipped and reported, the rest reads.
    for _ in 0..8 {
        let mut bad = good.clone();
        let at = 16 + rng.next(bad.len() - 16);
        bad[at] ^= 0x5a;
        std::fs::write(&v, &bad).unwrap();
        check_damaged(&v);
    }
    // Garbage and foreign files are one clear sentence.
    std::fs::write(&v, b"hello, I am not a recording at all").unwrap();
    let out = diag(&["replay", v.to_str().unwrap(), "tail"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("not a diag recording"),
        "{}",
        text(&out.stderr)
    );
    let mut newer = good.clone();
    newer[8] = 99;
    std::fs::write(&v, &newer).unwrap();
    let out = diag(&["report", v.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("newer"), "{}", text(&out.stderr));
    let out = diag(&["replay", "/nonexistent.diag", "tail"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot open"),
        "{}",
        text(&out.stderr)
    );
}

/// A small tmpfs, unmounted on drop.
struct SmallFs(PathBuf);

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_is_a_clear_error_and_rotation_keeps_numbered_files() {
    if !require_root("a_full_disk_is_a_clear_error_and_rotation_keeps_numbered_files") {
        return;
    }
    let _guard = serial();
    let dir = TempDir::new("disk");
    let mnt = dir.path("small");
    std::fs::create_dir(&mnt).unwrap();
    assert!(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=96k", "tmpfs"])
            .arg(&mnt)
            .status()
            .unwrap()
            .success()
    );
    let small = SmallFs(mnt.clone());
    let file = mnt.join("full.diag");
    let f = file.to_str().unwrap();
    let recorder = Diag::start(&["record", "-o", f, "--no-compress"]);
    // A little first, written within a second; then enough to fill it.
    for n in [20, 1500] {
        loopback_churn(LOADGEN, n);
        thread::sleep(Duration::from_millis(1500));
    }
    let out = recorder.wait_exit(Duration::from_secs(15));
    assert_eq!(out.status.code(), Some(1), "{:?}", out.stderr);
    let err = out.stderr.last().unwrap();
    assert!(
        err.contains("disk is full") && err.contains("readable"),
        "{err}"
    );
    let replay = diag(&["replay", f, "tail", "--json"]);
    assert!(
        replay.status.success(),
        "what was written still reads: {}",
        text(&replay.stderr)
    );
    assert!(
        text(&replay.stdout).lines().count() >= 200,
        "the first connections read back"
    );
    drop(small);

    // Rotation: 64K files, numbered, each readable on its own.
    let rot = dir.path("rot.diag");
    let r = rot.to_str().unwrap();
    let recorder = Diag::start(&[
        "record",
        "-o",
        r,
        "--no-compress",
        "--max-size",
        "64K",
        "--max-files",
        "2",
    ]);
    loopback_churn(LOADGEN, 1500);
    thread::sleep(Duration::from_millis(1500));
    let out = recorder.stop(libc::SIGINT);
    assert!(out.status.success(), "{:?}", out.stderr);
    assert!(
        out.stderr.last().unwrap().contains("rotations"),
        "{:?}",
        out.stderr
    );
    for p in [rot.clone(), dir.path("rot.diag.1"), dir.path("rot.diag.2")] {
        assert!(p.exists(), "{} exists", p.display());
        let o = diag(&["replay", p.to_str().unwrap(), "tail", "--json"]);
        assert!(o.status.success(), "{}: {}", p.display(), text(&o.stderr));
    }
    assert!(
        !dir.path("rot.diag.3").exists(),
        "--max-files 2 keeps two rotated files"
    );
}

#[test]
fn flight_recorder_writes_one_file_per_incident_with_what_came_before() {
    if !require_root("flight_recorder_writes_one_file_per_incident_with_what_came_before") {
        return;
    }
    let _guard = serial();
    let dir = TempDir::new("flight");
    let out_dir = dir.path("incidents");
    let d = out_dir.to_str().unwrap();
    let recorder = Diag::start(&[
        "record",
        "--trigger",
        "oom,reset-storm",
        "-o",
        d,
        "--before",
        "4s",
        "--after",
        "1s",
        "--reset-storm",
        "50",
    ]);
    // Before the incident: churn that the OOM file must also hold.
    let churn = loopback_churn(LOADGEN, 20);
    let (port, client_pid) = (churn.port, churn.client);
    let cg = MemCgroup::create(V1_ROOT, "flight", "memory.limit_in_bytes", 32 << 20);
    let mut victim = cg.spawn(LOADGEN, &["alloc", "256"]);
    let victim_pid = victim.id();
    let _ = victim.wait();
    thread::sleep(Duration::from_millis(2000));
    // A reset storm: connects to a closed port.
    let storm = loadgen(&["try-connect", "100", &format!("127.0.0.1:{port}")]);
    assert!(storm.wait_with_output().unwrap().status.success());
    thread::sleep(Duration::from_millis(2000));
    let out = recorder.stop(libc::SIGINT);
    let cg_path = cg.rel.clone();
    drop(cg);
    assert!(out.status.success(), "{:?}", out.stderr);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&out_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?} {:?}", out.stderr);
    let oom_file = files
        .iter()
        .find(|f| {
            f.to_string_lossy()
                .contains(&format!("oom-{victim_pid}-diag-loadgen"))
        })
        .expect("an OOM file");
    let storm_file = files
        .iter()
        .find(|f| f.to_string_lossy().contains("reset-storm"))
        .expect("a storm file");
    for f in &files {
        assert_eq!(
            std::fs::metadata(f).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let o = oom_file.to_str().unwrap();
    let kills = diag(&["replay", o, "tail", "--json", "--events", "oom"]);
    assert!(
        text(&kills.stdout).contains(&format!("\"pid\":{victim_pid}")),
        "{}",
        text(&kills.stdout)
    );
    // The incident file keeps what user space learned about the kill.
    assert!(
        text(&kills.stdout).contains(&format!("\"oom_cgroup\":\"{cg_path}\"")),
        "{}",
        text(&kills.stdout)
    );
    let before = diag(&[
        "replay",
        o,
        "tail",
        "--json",
        "--pid",
        &client_pid.to_string(),
    ]);
    assert_eq!(
        text(&before.stdout).lines().count(),
        100,
        "the churn before the kill is in the file"
    );
    let s = storm_file.to_str().unwrap();
    let resets = diag(&["replay", s, "tail", "--json", "--events", "reset"]);
    assert!(
        text(&resets.stdout).lines().count() >= 100,
        "{}",
        text(&resets.stderr)
    );
}
