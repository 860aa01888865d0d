//! Recordings: record a real scenario, replay it without root, compare with
//! what diag showed live; kill the recorder; damage the file; fill the disk.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use diag_tests::{
    Diag, Gen, MemCgroup, TempDir, V1_ROOT, diag_bin, diag_bounded, loopback_churn, recorded,
    require_root, serial, wait_until,
};
use serde_json::Value;

const LOADGEN: &str = env!("CARGO_BIN_EXE_diag-loadgen");

fn diag(args: &[&str]) -> Output {
    Command::new(diag_bin()).args(args).output().unwrap()
}

/// A recording's frames so far as `diag export --format jsonl` prints
/// them (one still being written reads up to its last whole frame).
fn exported(file: &str) -> Vec<Value> {
    text(&diag(&["export", file, "--format", "jsonl"]).stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Wait until the recording holds the context of the kill of `tid`.
fn wait_oom_context(file: &str, tid: u32) {
    wait_until(
        Duration::from_secs(15),
        "the OOM kill's context in the recording",
        || {
            exported(file)
                .iter()
                .any(|l| l["event"] == "oom_context" && l["tid"] == tid)
        },
    );
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
    let mut live = Diag::start(&[
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
    // The kill's context recorded; the leak past its threshold live.
    wait_oom_context(f, victim_pid);
    live.wait_json(Duration::from_secs(15), "the CLOSE_WAIT leak", |v| {
        v["leaks"].as_array().is_some_and(|l| l.len() >= K)
    });

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
    // The page's data holds the kill (tests/tests/reportpage.rs draws it
    // in a browser).
    let page = std::fs::read_to_string(&html).unwrap();
    let data = page
        .split_once("<script type=\"application/json\" id=\"data\">")
        .and_then(|(_, rest)| rest.split_once("</script>"))
        .map(|(json, _)| serde_json::from_str::<Value>(json).unwrap())
        .expect("the page's data");
    assert_eq!(data["oom"][0][1], victim_pid, "{}", data["oom"]);
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
    // Frames are written at least once a second: the churn on disk.
    let pid = client_pid.to_string();
    wait_until(
        Duration::from_secs(15),
        "the churn in the recording",
        || recorded(&file, &["--pid", &pid]).len() == 5 * N,
    );
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

/// Replay, replay as a table and report a damaged file: no panic, JSON
/// lines stay JSON, and either one sentence saying why it cannot be read
/// (exit 1) or a replay that says what was damaged (exit 0). Returns
/// whether every command read it.
fn check_damaged(path: &Path) -> bool {
    let p = path.to_str().unwrap();
    let mut read = true;
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
                if args[0] == "report" {
                    let o = text(&out.stdout);
                    assert!(
                        o.contains("DAMAGED: ") || o.contains("NOT FINISHED"),
                        "{args:?}: the report says nothing of the damage:\n{o}"
                    );
                    assert!(!o.contains("Complete: no events were lost."), "{o}");
                } else {
                    assert!(
                        ["skipped", "truncated", "damaged", "not finished cleanly"]
                            .iter()
                            .any(|w| err.contains(w)),
                        "{args:?}: the damage is not reported: {err}"
                    );
                }
            }
            Some(1) => {
                read = false;
                assert_eq!(err.lines().count(), 1, "unreadable: one sentence: {err}")
            }
            other => panic!("{args:?}: exit {other:?}: {err}"),
        }
    }
    read
}

/// The frames of a recording: (offset, kind, stored length).
fn frames_of(file: &[u8]) -> Vec<(usize, u8, usize)> {
    let mut out = Vec::new();
    let mut at = 16;
    while at + 16 <= file.len() {
        assert_eq!(
            file[at..at + 4],
            FRAME_SYNC.to_le_bytes(),
            "a frame at {at}"
        );
        let len = u32::from_le_bytes(file[at + 8..at + 12].try_into().unwrap()) as usize;
        out.push((at, file[at + 4], len));
        at += 16 + len;
    }
    out
}

/// Events in an uncompressed Events frame's payload.
fn events_in(payload: &[u8]) -> usize {
    let (mut n, mut p) = (0, payload);
    while p.len() >= 2 {
        let len = u16::from_le_bytes([p[0], p[1]]) as usize;
        p = &p[(2 + len).min(p.len())..];
        n += 1;
    }
    n
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
    // The churn in a frame of its own, before the last frames of the stop.
    wait_until(
        Duration::from_secs(15),
        "the churn in the recording",
        || recorded(&file, &[]).len() >= 500,
    );
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
        assert!(
            check_damaged(&v),
            "one damaged byte (at {at}) never loses the file"
        );
    }
    // Anywhere in the header frame (or its copy): the file still reads,
    // all of it.
    let frames = frames_of(&good);
    assert_eq!(
        (frames[0].1, frames[1].1),
        (1, 1),
        "the header, then its copy"
    );
    for _ in 0..6 {
        let mut bad = good.clone();
        let at = 16 + rng.next(frames[1].0 + 16 + frames[1].2 - 16);
        bad[at] ^= 1 << rng.next(8);
        std::fs::write(&v, &bad).unwrap();
        assert!(check_damaged(&v), "a flip at {at} in the header frames");
        let out = diag(&["replay", v.to_str().unwrap(), "tail", "--json"]);
        assert_eq!(text(&out.stdout).lines().count(), all, "flip at {at}");
    }
    // A flipped bit in a frame's length costs that frame, not what comes
    // after it (the length runs past the end of the file: not a truncation).
    let (at, _, len) = *frames.iter().find(|f| f.1 == 2).expect("an events frame");
    let lost = events_in(&good[at + 16..at + 16 + len]);
    for bit in [20, 23, 27] {
        let mut bad = good.clone();
        bad[at + 8 + bit / 8] ^= 1 << (bit % 8);
        std::fs::write(&v, &bad).unwrap();
        assert!(check_damaged(&v));
        let out = diag(&["replay", v.to_str().unwrap(), "tail", "--json"]);
        let err = text(&out.stderr);
        // (tail shows no process exits: they may be part of the frame.)
        let n = text(&out.stdout).lines().count();
        assert!(
            n >= all.saturating_sub(lost) && n <= all,
            "bit {bit} of the length at {at}: {n} of {all} read, only that frame ({lost} events) may be lost: {err}"
        );
        assert!(
            !err.contains("truncated") && !err.contains("not finished"),
            "{err}"
        );
        // A length that runs past the end of the file is known to be
        // damaged; one that still lands inside it (a big recording) is
        // found by the frame's checksum. Either way: skipped, and said.
        let past_end = at + 16 + (len ^ (1 << bit)) > good.len();
        if past_end {
            assert!(err.contains("damaged length"), "{err}");
        } else {
            assert!(
                err.contains("damaged length") || err.contains("bad checksum"),
                "{err}"
            );
        }
    }
    // A damaged magic, with intact frames after it: read, and said.
    let mut bad = good.clone();
    bad[2] ^= 0x20;
    std::fs::write(&v, &bad).unwrap();
    let out = diag(&["replay", v.to_str().unwrap(), "tail", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), all);
    assert!(
        text(&out.stderr).contains("first 16 bytes are damaged"),
        "{}",
        text(&out.stderr)
    );
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
            .args(["-t", "tmpfs", "-o", "size=512k", "tmpfs"])
            .arg(&mnt)
            .status()
            .unwrap()
            .success()
    );
    let small = SmallFs(mnt.clone());
    let file = mnt.join("full.diag");
    let f = file.to_str().unwrap();
    let recorder = Diag::start(&["record", "-o", f, "--no-compress"]);
    // 512 KiB: with 96 KiB, a large early frame (uncompressed) sometimes
    // filled the disk before the first churn was on it (seen in CI).
    // A little first, on disk within a second; then enough to fill it
    // (diag then exits by itself).
    loopback_churn(LOADGEN, 20);
    wait_until(Duration::from_secs(15), "the first churn on disk", || {
        recorded(&file, &[]).len() >= 100
    });
    loopback_churn(LOADGEN, 1500);
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
    let second = dir.path("rot.diag.2");
    wait_until(Duration::from_secs(15), "two rotations", || second.exists());
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
    // The OOM incident written (its --after passed) before the next one.
    let incident = |what: &str, events: &str, enough: &dyn Fn(&[Value]) -> bool| {
        wait_until(Duration::from_secs(20), what, || {
            std::fs::read_dir(&out_dir)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().contains(what))
                .any(|p| enough(&recorded(&p, &["--events", events])))
        });
    };
    let oom_name = format!("oom-{victim_pid}-diag-loadgen");
    incident(&oom_name, "oom", &|evs| !evs.is_empty());
    // A reset storm: connects to a closed port.
    let storm = loadgen(&["try-connect", "100", &format!("127.0.0.1:{port}")]);
    assert!(storm.wait_with_output().unwrap().status.success());
    incident("reset-storm", "reset", &|evs| evs.len() >= 100);
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

// Recordings made by hand, as a hostile user would: the format's frames
// with valid checksums around whatever contents.

const FRAME_SYNC: u32 = 0xD1A6_F4A3;
const COMPRESSED: u8 = 1;
const S: u64 = 1_000_000_000;

fn crc32(parts: &[&[u8]]) -> u32 {
    let mut c = !0u32;
    for b in parts.iter().flat_map(|p| p.iter()) {
        c ^= u32::from(*b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn frame(kind: u8, flags: u8, stored: &[u8]) -> Vec<u8> {
    let mut f = FRAME_SYNC.to_le_bytes().to_vec();
    f.extend([kind, flags, 0, 0]);
    f.extend((stored.len() as u32).to_le_bytes());
    let crc = crc32(&[&f[4..12], stored]);
    f.extend(crc.to_le_bytes());
    f.extend(stored);
    f
}

fn header_json(started_ts_ns: u64, command_line: &[&str]) -> Vec<u8> {
    serde_json::json!({
        "format_version": 1, "diag_version": "0", "command_line": command_line,
        "hostname": "hostile", "kernel": "6", "cpus": 1, "boot_time_s": null,
        "clock_offset_ns": 1_700_000_000_000_000_000i64, "port_range": [32768, 60999],
        "probes": [], "rst_reasons": [], "started_ts_ns": started_ts_ns,
    })
    .to_string()
    .into_bytes()
}

/// An Events payload of TCP state events (CLOSE -> SYN_SENT) at these times.
fn tcp_events(times: &[u64]) -> Vec<u8> {
    let mut p = Vec::new();
    for (i, ts) in times.iter().enumerate() {
        let mut e = [0u8; 104];
        e[0..4].copy_from_slice(&1u32.to_le_bytes());
        e[8..16].copy_from_slice(&ts.to_le_bytes());
        e[16..20].copy_from_slice(&7u32.to_le_bytes());
        e[20..24].copy_from_slice(&7u32.to_le_bytes());
        e[24..28].copy_from_slice(b"evil");
        e[40..48].copy_from_slice(&(0x1000 + i as u64).to_le_bytes());
        e[92] = 2; // AF_INET
        e[95] = 2; // SYN_SENT
        p.extend((e.len() as u16).to_le_bytes());
        p.extend(e);
    }
    p
}

/// A zstd frame of `bytes` zeros in RLE blocks of 128 KiB (4 bytes each).
fn zstd_bomb(bytes: u64) -> Vec<u8> {
    let mut z = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x38];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(128 << 10);
        left -= n;
        let h = ((n as u32) << 3) | 2 | u32::from(left == 0);
        z.extend(&h.to_le_bytes()[..3]);
        z.push(0);
    }
    z
}

fn recording(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut f = b"DIAGREC\0\x01\0\0\0\0\0\0\0".to_vec();
    for fr in frames {
        f.extend(fr);
    }
    f
}

const GIB: u64 = 1 << 30;

/// Item 2 and 3 of issue 15: a 130 KB file that expands to 4 GiB, and a
/// 1 KB file whose second event is at 2^63 ns, read as nobody with 1 GiB of
/// address space: every command ends within seconds and says what was
/// damaged.
#[test]
fn hostile_recordings_cost_bounded_memory_and_time_without_root() {
    let dir = TempDir::new("hostile");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let hdr = frame(1, 0, &header_json(S, &["diag", "record"]));
    let end = frame(6, 0, br#"{"ts_ns":3000000000,"reason":"stopped"}"#);
    let bomb = recording(&[
        hdr.clone(),
        frame(2, 0, &tcp_events(&[S + 1])),
        frame(2, COMPRESSED, &zstd_bomb(4 * GIB)),
        end.clone(),
    ]);
    assert!(bomb.len() < 140 << 10, "{}", bomb.len());
    let far = recording(&[
        hdr.clone(),
        frame(2, 0, &tcp_events(&[2 * S, 1 << 63])),
        end.clone(),
    ]);
    assert!(far.len() < 1024, "{}", far.len());
    for (name, bytes, damage) in [
        ("bomb.diag", &bomb, "expands past"),
        ("far.diag", &far, "impossibly late"),
    ] {
        let path = dir.path(name);
        std::fs::write(&path, bytes).unwrap();
        let p = path.to_str().unwrap();
        for args in [
            vec!["report", p],
            vec!["replay", p, "tail", "--json"],
            vec!["replay", p, "top", "--batch"],
            vec!["replay", p, "conns", "--watch"],
            vec!["replay", p, "conns", "--json"],
            vec!["export", p, "--format", "jsonl"],
            vec!["export", p, "--format", "chrome-trace"],
        ] {
            let out = diag_bounded(&args, GIB, Duration::from_secs(60));
            assert!(
                out.status.is_some(),
                "{args:?} did not end within 60 s: {}",
                out.stderr
            );
            assert!(
                out.status.unwrap().success(),
                "{args:?}: {:?} in {:?}: {}",
                out.status,
                out.elapsed,
                out.stderr
            );
            assert!(
                out.elapsed < Duration::from_secs(20),
                "{args:?} took {:?}",
                out.elapsed
            );
            let said = format!("{}{}", out.stdout, out.stderr);
            assert!(said.contains(damage), "{args:?} says nothing of it: {said}");
            if args[0] == "replay" && args[2] == "tail" {
                assert_eq!(
                    out.stdout.lines().count(),
                    1,
                    "the good event: {}",
                    out.stdout
                );
            }
        }
    }
}

/// Item 5 of issue 15: as root, in a directory anyone may write to, a
/// symlink or a device at the output path is refused and left as it was;
/// outputs are created 0600.
#[test]
fn outputs_never_follow_symlinks_nor_touch_devices() {
    if !require_root("outputs_never_follow_symlinks_nor_touch_devices") {
        return;
    }
    let _guard = serial();
    let dir = TempDir::new("outputs");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let target = dir.path("precious");
    std::fs::write(&target, b"precious").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
    let link = dir.path("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let dev = dir.path("null");
    assert!(
        Command::new("mknod")
            .args(["-m", "666"])
            .arg(&dev)
            .args(["c", "1", "3"])
            .status()
            .unwrap()
            .success()
    );
    let theirs = dir.path("theirs.diag");
    std::fs::write(&theirs, b"nobody's").unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    let rec = dir.path("in.diag");
    std::fs::write(
        &rec,
        recording(&[
            frame(1, 0, &header_json(S, &["diag", "record"])),
            frame(2, 0, &tcp_events(&[2 * S])),
        ]),
    )
    .unwrap();
    let r = rec.to_str().unwrap();
    let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
    for (out, why) in [
        (&link, "symbolic link"),
        (&dev, "character device"),
        (&theirs, "belongs to uid 65534"),
    ] {
        let o = out.to_str().unwrap();
        for args in [
            vec!["record", "-o", o, "--duration", "1s"],
            vec!["export", r, "--format", "jsonl", "-o", o],
            vec!["report", r, "--html", o],
        ] {
            let res = diag(&args);
            let err = text(&res.stderr);
            assert_eq!(res.status.code(), Some(1), "{args:?}: {err}");
            assert!(err.contains(why) && err.contains(o), "{args:?}: {err}");
        }
    }
    assert_eq!(std::fs::read(&target).unwrap(), b"precious");
    assert_eq!(mode(&target), 0o644);
    assert_eq!(mode(&dev), 0o666);
    assert_eq!(std::fs::read(&theirs).unwrap(), b"nobody's");
    // New outputs are private.
    let (json, html) = (dir.path("out.jsonl"), dir.path("out.html"));
    let o = diag(&[
        "export",
        r,
        "--format",
        "jsonl",
        "-o",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = diag(&["report", r, "--html", html.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(mode(&json), 0o600);
    assert_eq!(mode(&html), 0o600);
}

/// Item 6 of issue 15: a second `diag record` on a file being recorded is
/// refused, naming the file and the other diag, and the first recording
/// stays whole.
#[test]
fn a_second_recorder_on_the_same_file_is_refused() {
    if !require_root("a_second_recorder_on_the_same_file_is_refused") {
        return;
    }
    let _guard = serial();
    let dir = TempDir::new("twice");
    let file = dir.path("one.diag");
    let f = file.to_str().unwrap();
    let first = Diag::start(&["record", "-o", f]);
    let second = Command::new(diag_bin())
        .args(["record", "-o", f, "--duration", "3s"])
        .output()
        .unwrap();
    let err = text(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{err}");
    assert!(
        err.contains(f) && err.contains(&format!("another diag (pid {})", first.pid())),
        "{err}"
    );
    let churn = loopback_churn(LOADGEN, 20);
    let pid = churn.client.to_string();
    wait_until(
        Duration::from_secs(15),
        "the churn in the recording",
        || recorded(&file, &["--pid", &pid]).len() == 100,
    );
    let out = first.stop(libc::SIGINT);
    assert!(out.status.success(), "{:?}", out.stderr);
    let replay = diag(&[
        "replay",
        f,
        "tail",
        "--json",
        "--pid",
        &churn.client.to_string(),
    ]);
    assert!(replay.status.success(), "{}", text(&replay.stderr));
    assert_eq!(text(&replay.stdout).lines().count(), 100);
    assert!(!text(&replay.stderr).contains("damaged"));
}

/// Item 12 of issue 15: `--max-files 1` removes the flight recorder's own
/// older incident files, and nothing else in the directory.
#[test]
fn flight_recorder_rotation_removes_only_its_own_files() {
    if !require_root("flight_recorder_rotation_removes_only_its_own_files") {
        return;
    }
    let _guard = serial();
    let dir = TempDir::new("flight-rot");
    let out_dir = dir.path("incidents");
    std::fs::create_dir(&out_dir).unwrap();
    let tiny = |cmd: &[&str]| {
        recording(&[
            frame(1, 0, &header_json(S, cmd)),
            frame(2, 0, &tcp_events(&[2 * S])),
            frame(6, 0, br#"{"ts_ns":3000000000,"reason":"incident"}"#),
        ])
    };
    let foreign = out_dir.join("diag-zzz.diag");
    std::fs::write(&foreign, b"another user's").unwrap();
    std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
    let by_hand = out_dir.join("diag-20200101-000000-by-hand.diag");
    std::fs::write(&by_hand, tiny(&["diag", "record", "-o", "x"])).unwrap();
    let nobodys = out_dir.join("diag-20200101-000001-oom-1-x.diag");
    std::fs::write(&nobodys, tiny(&["diag", "record", "--trigger", "oom"])).unwrap();
    std::os::unix::fs::chown(&nobodys, Some(65534), Some(65534)).unwrap();
    let ours = out_dir.join("diag-20200101-000002-reset-storm.diag");
    std::fs::write(&ours, tiny(&["diag", "record", "--trigger", "reset-storm"])).unwrap();
    let recorder = Diag::start(&[
        "record",
        "--trigger",
        "reset-storm",
        "-o",
        out_dir.to_str().unwrap(),
        "--before",
        "2s",
        "--after",
        "500ms",
        "--reset-storm",
        "20",
        "--max-files",
        "1",
    ]);
    let port = loopback_churn(LOADGEN, 2).port;
    let storm = loadgen(&["try-connect", "50", &format!("127.0.0.1:{port}")]);
    assert!(storm.wait_with_output().unwrap().status.success());
    wait_until(Duration::from_secs(20), "the storm's incident file", || {
        std::fs::read_dir(&out_dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().contains("reset-storm") && *p != ours)
            .any(|p| recorded(&p, &["--events", "reset"]).len() >= 20)
    });
    let out = recorder.stop(libc::SIGINT);
    assert!(out.status.success(), "{:?}", out.stderr);
    for p in [&foreign, &by_hand, &nobodys] {
        assert!(p.exists(), "{} was removed: {:?}", p.display(), out.stderr);
    }
    assert!(
        !ours.exists(),
        "our own older incident file is rotated away"
    );
    let written: Vec<PathBuf> = std::fs::read_dir(&out_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains("reset-storm") && *p != ours)
        .collect();
    assert_eq!(written.len(), 1, "{written:?} {:?}", out.stderr);
}

/// Scheduler frames (format version 3): one reads back in the export and
/// the report page; each kind of hostile one costs only itself, with a
/// sentence naming it. No root needed.
#[test]
fn scheduler_frames_read_back_and_hostile_ones_are_refused() {
    let dir = TempDir::new("schedframes");
    let proc_json = |pid: u32, hist: &[u64], waits: u64| serde_json::json!({"pid": pid, "comm": "evil", "waits": waits, "wait_ns": 3_000_000, "hist": hist});
    let none = proc_json(0, &[], 0);
    let sched = |ts: u64, procs: Vec<Value>| {
        let j = serde_json::json!({"ts_ns": ts, "interval_ns": S, "procs": procs, "others": none, "others_count": 0});
        frame(8, 0, j.to_string().as_bytes())
    };
    let many: Vec<Value> = (1..=65).map(|p| proc_json(p, &[1], 1)).collect();
    let mut file = b"DIAGREC\0\x03\0\0\0\0\0\0\0".to_vec();
    for f in [
        frame(1, 0, &header_json(S, &["diag", "record"])),
        sched(2 * S, vec![proc_json(7, &[0, 1, 2], 3)]),
        sched(3 * S, many),
        sched(3 * S, vec![proc_json(8, &[1; 33], 33)]),
        sched(3 * S, vec![proc_json(9, &[1], 5)]),
        sched(1 << 62, vec![proc_json(10, &[1], 1)]),
        frame(8, 0, br#"{"ts_ns": 3"#),
        frame(6, 0, br#"{"ts_ns":4000000000,"reason":"stopped"}"#),
    ] {
        file.extend(f);
    }
    let path = dir.path("sched.diag");
    std::fs::write(&path, &file).unwrap();
    let p = path.to_str().unwrap();
    let out = diag(&["export", p, "--format", "jsonl"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let good: Vec<&Value> = lines.iter().filter(|l| l["event"] == "sched").collect();
    assert_eq!(good.len(), 1, "{lines:?}");
    assert_eq!(good[0]["processes"][0]["pid"], 7);
    assert_eq!(
        good[0]["processes"][0]["hist"],
        serde_json::json!([0, 1, 2])
    );
    let damage: Vec<String> = lines
        .iter()
        .filter(|l| l["event"] == "damage")
        .map(|l| l["what"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(damage.len(), 5, "{damage:#?}");
    for (i, want) in [
        "65 processes, over the 64 diag writes",
        "pid 8: 33 buckets, over the 32",
        "pid 9: its buckets do not add up to its 5 waits",
        "after the recording's latest time",
        "scheduler frame at byte",
    ]
    .iter()
    .enumerate()
    {
        assert!(damage[i].contains(want), "{want}: {}", damage[i]);
        assert!(damage[i].contains("scheduler"), "{}", damage[i]);
    }
    assert!(damage[4].contains("unreadable"), "{}", damage[4]);
    // The report page draws the good one.
    let html = dir.path("sched.html");
    let report = diag(&["report", p, "--html", html.to_str().unwrap()]);
    assert!(report.status.success(), "{}", text(&report.stderr));
    assert!(text(&report.stdout).contains("DAMAGED: scheduler frame at byte"));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        page.contains(r#""sched":[[1.0,1.0,0,3000000,3,[0,1,2]]]"#),
        "{page}"
    );
}

/// Pressure frames (PSI, kind 9 of format version 3): one reads back in
/// the export and the report; each kind of hostile one costs only itself,
/// with a sentence naming it. No root needed.
#[test]
fn pressure_frames_read_back_and_hostile_ones_are_refused() {
    let dir = TempDir::new("psiframes");
    let fig = |avg10: f64, total: u64, stall: u64| serde_json::json!({"avg10": avg10, "avg60": 0.0, "avg300": 0.0, "total_us": total, "stall_us": stall});
    let res = |some: Value| serde_json::json!({"some": some, "full": null});
    let place = |some: Value| serde_json::json!({"cpu": res(some), "memory": res(Value::Null), "io": res(Value::Null)});
    let pressure = |ts: u64, host: Value, cgroups: Vec<Value>| {
        let j = serde_json::json!({
            "ts_ns": ts, "interval_ns": S, "host": host, "cgroups": cgroups,
            "others": place(Value::Null), "others_count": 0, "skipped": 0
        });
        frame(9, 0, j.to_string().as_bytes())
    };
    let cgroup = |name: &str, some: Value| {
        let mut c = place(some);
        c["cgroup"] = Value::from(name);
        c
    };
    let many: Vec<Value> = (0..51)
        .map(|i| cgroup(&format!("/c{i}"), fig(0.0, 1, 0)))
        .collect();
    let mut file = b"DIAGREC\0\x03\0\0\0\0\0\0\0".to_vec();
    for f in [
        frame(1, 0, &header_json(S, &["diag", "record"])),
        pressure(
            2 * S,
            place(fig(12.5, 9_000_000, 700_000)),
            vec![cgroup("/batch", fig(40.0, 3_000_000, 900_000))],
        ),
        pressure(3 * S, place(fig(150.0, 1, 0)), vec![]),
        pressure(3 * S, place(fig(1.0, 1, 0)), many),
        pressure(3 * S, place(fig(1.0, 5, 9)), vec![]),
        pressure(1 << 62, place(fig(1.0, 5, 0)), vec![]),
        frame(9, 0, br#"{"ts_ns": 3"#),
        frame(6, 0, br#"{"ts_ns":4000000000,"reason":"stopped"}"#),
    ] {
        file.extend(f);
    }
    let path = dir.path("psi.diag");
    std::fs::write(&path, &file).unwrap();
    let p = path.to_str().unwrap();
    let out = diag(&["export", p, "--format", "jsonl"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let good: Vec<&Value> = lines.iter().filter(|l| l["event"] == "pressure").collect();
    assert_eq!(good.len(), 1, "{lines:?}");
    assert_eq!(good[0]["host"]["cpu"]["some"]["total_us"], 9_000_000);
    assert_eq!(good[0]["cgroups"][0]["cgroup"], "/batch");
    assert_eq!(good[0]["cgroups"][0]["cpu"]["some"]["stall_us"], 900_000);
    let damage: Vec<String> = lines
        .iter()
        .filter(|l| l["event"] == "damage")
        .map(|l| l["what"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(damage.len(), 5, "{damage:#?}");
    for (i, want) in [
        "the host: cpu some has an average of 150, not a percentage",
        "51 cgroups, over the 50 diag writes",
        "stalled 9 us in the interval, over its total 5 us",
        "after the recording's latest time",
        "pressure frame at byte",
    ]
    .iter()
    .enumerate()
    {
        assert!(damage[i].contains(want), "{want}: {}", damage[i]);
        assert!(damage[i].contains("pressure"), "{}", damage[i]);
    }
    assert!(damage[4].contains("unreadable"), "{}", damage[4]);
    // The report's PSI block says the good one.
    let report = diag(&["report", p, "--width", "0"]);
    assert!(report.status.success(), "{}", text(&report.stderr));
    let r = text(&report.stdout);
    assert!(r.contains("DAMAGED: pressure frame at byte"), "{r}");
    assert!(
        r.contains("    cpu     some 0.70s (avg10 peak 12.50% at "),
        "{r}"
    );
    assert!(r.contains("    /batch  0.90s / 0.00s / 0.00s"), "{r}");
}
