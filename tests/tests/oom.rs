//! OOM kills: real ones, in a memory cgroup with a small limit, from
//! children with known pids, checked field by field and against the
//! kernel's own log line (`Memory cgroup out of memory: Killed process`).
//!
//! The cgroups are removed afterwards, even when a test fails (a Drop
//! guard), and only processes inside them can be killed.

use std::{
    io::{BufRead, BufReader},
    os::unix::process::ExitStatusExt,
    path::Path,
    process::{Child, Command},
    time::{Duration, Instant},
};

use diag_tests::{Diag, MemCgroup, V1_ROOT, cgroup2_root, require_root, serial};
use serde_json::Value;

const LOADGEN: &str = env!("CARGO_BIN_EXE_diag-loadgen");
const COMM: &str = "diag-loadgen";
const LIMIT_MIB: u64 = 32;

/// The kernel log from now on, read from /dev/kmsg (one record per read).
struct Kmsg {
    fd: i32,
}

impl Kmsg {
    fn from_now() -> Kmsg {
        // SAFETY: open/lseek with a valid NUL-terminated path.
        let fd = unsafe { libc::open(c"/dev/kmsg".as_ptr(), libc::O_RDONLY | libc::O_NONBLOCK) };
        assert!(fd >= 0, "/dev/kmsg: {}", std::io::Error::last_os_error());
        unsafe { libc::lseek(fd, 0, libc::SEEK_END) };
        Kmsg { fd }
    }

    /// Messages logged since, without the `prio,seq,ts,flags;` prefix.
    fn read(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            // SAFETY: valid buffer of the given length.
            let n = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EPIPE) {
                    continue; // records overwritten: go on with the next
                }
                break; // EAGAIN: no more
            }
            if n == 0 {
                break;
            }
            let rec = String::from_utf8_lossy(&buf[..n as usize]).into_owned();
            let msg = rec.split_once(';').map(|(_, m)| m).unwrap_or(&rec);
            out.push(msg.lines().next().unwrap_or("").to_string());
        }
        out
    }
}

impl Drop for Kmsg {
    fn drop(&mut self) {
        // SAFETY: our fd.
        unsafe { libc::close(self.fd) };
    }
}

/// Pids the kernel log says were killed, in order.
fn kmsg_kills(lines: &[String]) -> Vec<(u32, String)> {
    lines
        .iter()
        .filter_map(|l| {
            let rest = l.split_once("Killed process ")?.1;
            let (pid, rest) = rest.split_once(' ')?;
            let comm = rest.strip_prefix('(')?.split_once(')')?.0;
            Some((pid.parse().ok()?, comm.to_string()))
        })
        .collect()
}

fn oom_events(out: &diag_tests::Output) -> Vec<Value> {
    let events = out.json();
    assert!(
        events.iter().all(|e| e["event"] == "oom_kill"),
        "only OOM kills were asked for: {events:?}"
    );
    events
}

fn wait_killed(child: &mut Child) {
    let st = child.wait().unwrap();
    assert_eq!(
        st.signal(),
        Some(libc::SIGKILL),
        "the child should be OOM-killed, it ended with {st}"
    );
}

/// A big, idle process in `cg`: 24 of the 32 MiB, then it just sleeps.
/// Returns once it holds the memory.
fn spawn_hog(cg: &MemCgroup) -> Child {
    let mut hog = cg.spawn(LOADGEN, &["alloc", "24", "hold"]);
    let mut ready = String::new();
    BufReader::new(hog.stdout.as_mut().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ALLOCATED");
    hog
}

/// Check one reported kill of `pid` in `cg`, killed by its own allocation.
fn check_kill(e: &Value, pid: u32, trigger: u32, cg: &MemCgroup) {
    assert_eq!(e["pid"], pid, "{e}");
    assert_eq!(e["comm"], COMM, "{e}");
    assert_eq!(e["uid"], 0, "{e}");
    assert_eq!(e["constraint"], "memcg", "{e}");
    assert_eq!(e["cgroup"], cg.rel.as_str(), "{e}");
    assert_eq!(e["oom_cgroup"], cg.rel.as_str(), "{e}");
    assert_eq!(e["oom_cgroup_limit_bytes"], LIMIT_MIB << 20, "{e}");
    let usage = e["oom_cgroup_usage_bytes"].as_u64().unwrap();
    assert!(
        usage > (LIMIT_MIB << 20) * 9 / 10 && usage <= LIMIT_MIB << 20,
        "usage at the kill should be at the limit: {e}"
    );
    assert_eq!(e["trigger"]["pid"], trigger, "{e}");
    assert_eq!(e["trigger"]["comm"], COMM, "{e}");
    assert_eq!(e["trigger"]["cgroup"], cg.rel.as_str(), "{e}");
    assert_eq!(e["trigger"]["is_victim"], pid == trigger, "{e}");
    assert!(e["container_id"].is_null(), "{e}");
    // The cgroups were captured in the kernel (as directory inode numbers),
    // not read from /proc afterwards, where the victim may be gone.
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&cg.dir).unwrap());
    for who in ["victim", "trigger", "oom"] {
        assert_eq!(e["memcg_ino"][who], ino, "{who}: {e}");
    }
    assert!(
        e["oom_cgroup_found_by"] == "oom_lock" || e["oom_cgroup_found_by"] == "at_limit",
        "{e}"
    );
    let total_vm = e["total_vm_kb"].as_u64().unwrap();
    assert!(total_vm >= e["rss_kb"].as_u64().unwrap(), "{e}");
    assert!(e["pgtables_kb"].as_u64().unwrap() > 0, "{e}");
    assert!(e["time"].as_str().unwrap().ends_with('Z'), "{e}");
}

/// RSS of a victim that allocated until the limit stopped it.
fn check_rss_near_limit(e: &Value) {
    let anon = e["anon_rss_kb"].as_u64().unwrap();
    let limit_kb = LIMIT_MIB * 1024;
    assert!(
        anon > limit_kb / 2 && anon <= limit_kb,
        "anon RSS {anon} KiB should be just under the {limit_kb} KiB limit: {e}"
    );
    let rss = e["rss_kb"].as_u64().unwrap();
    assert_eq!(
        rss,
        anon + e["file_rss_kb"].as_u64().unwrap() + e["shmem_rss_kb"].as_u64().unwrap()
    );
}

#[test]
fn memcg_v1_kill_is_reported_with_victim_trigger_and_cgroup() {
    if !require_root("memcg_v1_kill_is_reported_with_victim_trigger_and_cgroup") {
        return;
    }
    let _guard = serial();
    let cg = MemCgroup::create(V1_ROOT, "one", "memory.limit_in_bytes", LIMIT_MIB << 20);
    let mut kmsg = Kmsg::from_now();
    let mut diag = Diag::start(&["tail", "--json", "--events", "oom"]);

    let mut child = cg.spawn(LOADGEN, &["alloc", "256"]);
    let pid = child.id();
    wait_killed(&mut child);
    let killed_at = Instant::now();
    // Shown within a second of the kill.
    let line = diag
        .next_line(Duration::from_secs(1))
        .unwrap_or_else(|| panic!("no OOM kill shown within 1 s of the kill"));
    eprintln!("shown {:?} after the child was reaped", killed_at.elapsed());
    let out = diag.stop(libc::SIGINT);
    assert!(
        out.status.success(),
        "diag: {} {:?}",
        out.status,
        out.stderr
    );
    let events = oom_events(&out);
    assert_eq!(events.len(), 1, "exactly one kill: {events:?}");
    assert_eq!(serde_json::from_str::<Value>(&line).unwrap(), events[0]);
    let e = &events[0];
    check_kill(e, pid, pid, &cg);
    check_rss_near_limit(e);
    // This kernel has cgroup v1 support, so the kernel's own OOM flag on
    // the cgroup named it.
    assert_eq!(e["oom_cgroup_found_by"], "oom_lock", "{e}");
    // Top consumers are taken right after the kill, in the OOM cgroup,
    // and leave out the victim (nothing else was in there).
    assert_eq!(e["top_scope"], cg.rel.as_str(), "{e}");
    assert_eq!(e["top"], serde_json::json!([]), "{e}");
    let summary = out.stderr.last().unwrap();
    assert!(summary.contains("0 dropped"), "{summary}");

    // The kernel's own account of it.
    let log = kmsg.read();
    let kills = kmsg_kills(&log);
    assert_eq!(kills, vec![(pid, COMM.to_string())], "kernel log: {log:?}");
    assert!(
        log.iter().any(|l| l.contains(&format!(
            "Memory cgroup out of memory: Killed process {pid} ({COMM})"
        ))),
        "{log:?}"
    );
    // The kernel's summary line is rate-limited (10 per 5 s); when it is
    // there, it names the same cgroup.
    for l in log.iter().filter(|l| l.contains("oom-kill:constraint=")) {
        assert!(
            l.contains("CONSTRAINT_MEMCG") && l.contains(&format!("oom_memcg={},", cg.rel)),
            "{l}"
        );
    }
}

#[test]
fn the_trigger_is_the_allocating_task_not_the_victim() {
    if !require_root("the_trigger_is_the_allocating_task_not_the_victim") {
        return;
    }
    let _guard = serial();
    let cg = MemCgroup::create(V1_ROOT, "trigger", "memory.limit_in_bytes", LIMIT_MIB << 20);
    let mut kmsg = Kmsg::from_now();
    let diag = Diag::start(&["tail", "--json", "--events", "oom"]);

    let mut hog = spawn_hog(&cg);
    // A small one whose allocation does not fit: the OOM killer runs in its
    // context and kills the biggest task, the hog.
    let mut small = cg.spawn(LOADGEN, &["alloc", "16"]);
    let small_pid = small.id();
    let st = small.wait().unwrap();
    // Now and then the kernel kills the small one too, when it asks for
    // more before the hog's memory is freed: a second, real kill (the
    // kernel log says so below).
    let second_kill = !st.success();
    assert!(
        st.success() || st.signal() == Some(libc::SIGKILL),
        "the allocating child: {st}"
    );
    wait_killed(&mut hog);
    // No wait: stopping diag drains what the kernel wrote first.
    let out = diag.stop(libc::SIGINT);
    assert!(
        out.status.success(),
        "diag: {} {:?}",
        out.status,
        out.stderr
    );
    let events = oom_events(&out);
    let kills = 1 + usize::from(second_kill);
    assert_eq!(events.len(), kills, "every kill: {events:?}");
    let e = &events[0];
    check_kill(e, hog.id(), small_pid, &cg);
    if second_kill {
        assert_eq!(events[1]["pid"], small_pid, "{events:?}");
    }
    let summary = out.stderr.last().unwrap();
    assert!(
        summary.ends_with(&format!("{kills} events seen, {kills} shown, 0 dropped")),
        "nothing missing, the victim's note included: {summary}"
    );
    let anon = e["anon_rss_kb"].as_u64().unwrap();
    assert!(
        (23 * 1024..=25 * 1024).contains(&anon),
        "the hog holds 24 MiB: {e}"
    );
    assert!(
        e["top"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["pid"] != hog.id()),
        "the victim is not among the others: {e}"
    );
    let mut want = vec![(hog.id(), COMM.to_string())];
    if second_kill {
        want.push((small_pid, COMM.to_string()));
    }
    assert_eq!(kmsg_kills(&kmsg.read()), want);
}

#[test]
fn five_kills_in_a_row_are_all_reported_in_order() {
    if !require_root("five_kills_in_a_row_are_all_reported_in_order") {
        return;
    }
    let _guard = serial();
    let cg = MemCgroup::create(V1_ROOT, "five", "memory.limit_in_bytes", LIMIT_MIB << 20);
    let mut kmsg = Kmsg::from_now();
    let diag = Diag::start(&["tail", "--json", "--events", "oom"]);
    let mut pids = Vec::new();
    for _ in 0..5 {
        let mut child = cg.spawn(LOADGEN, &["alloc", "256"]);
        pids.push(child.id());
        wait_killed(&mut child);
    }
    // No wait: stopping diag drains what the kernel wrote first.
    let out = diag.stop(libc::SIGINT);
    assert!(
        out.status.success(),
        "diag: {} {:?}",
        out.status,
        out.stderr
    );
    let events = oom_events(&out);
    let seen: Vec<u32> = events
        .iter()
        .map(|e| e["pid"].as_u64().unwrap() as u32)
        .collect();
    assert_eq!(seen, pids, "every kill, in order, none lost");
    for (e, &pid) in events.iter().zip(&pids) {
        check_kill(e, pid, pid, &cg);
        check_rss_near_limit(e);
    }
    let ts: Vec<u64> = events
        .iter()
        .map(|e| e["ts_ns"].as_u64().unwrap())
        .collect();
    assert!(ts.windows(2).all(|w| w[0] < w[1]), "{ts:?}");
    let kernel: Vec<u32> = kmsg_kills(&kmsg.read())
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(kernel, pids, "the kernel log agrees");
    let summary = out.stderr.last().unwrap();
    assert!(
        summary.contains("5 events seen, 5 shown, 0 dropped"),
        "{summary}"
    );
}

#[test]
fn memcg_v2_kill_is_reported() {
    if !require_root("memcg_v2_kill_is_reported") {
        return;
    }
    let Some(v2_root) = cgroup2_root() else {
        diag_tests::skipped("memcg_v2_kill_is_reported", "cgroup2 is not mounted");
        return;
    };
    let controllers =
        std::fs::read_to_string(Path::new(&v2_root).join("cgroup.controllers")).unwrap_or_default();
    if !controllers.split_whitespace().any(|c| c == "memory") {
        diag_tests::skipped(
            "memcg_v2_kill_is_reported",
            &format!(
                "the memory controller is not available in the cgroup2 hierarchy at {v2_root} \
                 (controllers: `{}`; it is bound to cgroup v1 here)",
                controllers.trim()
            ),
        );
        return;
    }
    let _guard = serial();
    let subtree = Path::new(&v2_root).join("cgroup.subtree_control");
    let enabled = std::fs::read_to_string(&subtree).unwrap_or_default();
    if !enabled.split_whitespace().any(|c| c == "memory") {
        std::fs::write(&subtree, "+memory").expect("enable the memory controller for children");
    }
    let cg = MemCgroup::create(&v2_root, "v2", "memory.max", LIMIT_MIB << 20);
    if cg.dir.join("memory.swap.max").exists() {
        cg.write("memory.swap.max", "0");
    }
    let mut kmsg = Kmsg::from_now();
    let diag = Diag::start(&["tail", "--json", "--events", "oom"]);
    let mut child = cg.spawn(LOADGEN, &["alloc", "256"]);
    let pid = child.id();
    wait_killed(&mut child);
    // No wait: stopping diag drains what the kernel wrote first.
    let out = diag.stop(libc::SIGINT);
    let events = oom_events(&out);
    assert_eq!(events.len(), 1, "exactly one kill: {events:?}");
    check_kill(&events[0], pid, pid, &cg);
    check_rss_near_limit(&events[0]);
    assert_eq!(kmsg_kills(&kmsg.read()), vec![(pid, COMM.to_string())]);
}

#[test]
fn without_the_oom_tracepoint_tail_and_check_say_so() {
    if !require_root("without_the_oom_tracepoint_tail_and_check_say_so") {
        return;
    }
    // A tracefs look-alike that has the TCP tracepoint but no oom events.
    let fake = std::env::temp_dir().join(format!("diag-fake-tracefs-{}", std::process::id()));
    let tcp = fake.join("events/sock/inet_sock_set_state");
    std::fs::create_dir_all(&tcp).unwrap();
    let real =
        std::fs::read_to_string("/sys/kernel/tracing/events/sock/inet_sock_set_state/format")
            .expect("real tracefs (cargo xtask setup mounts it)");
    std::fs::write(tcp.join("format"), real).unwrap();
    let diag = diag_tests::diag_bin();

    let tail = Command::new(&diag)
        .args(["tail", "--events", "oom", "--tracefs"])
        .arg(&fake)
        .output()
        .unwrap();
    let check = Command::new(&diag)
        .args(["check", "--tracefs"])
        .arg(&fake)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&fake);

    assert!(!tail.status.success());
    let err = String::from_utf8_lossy(&tail.stderr);
    assert_eq!(err.lines().count(), 1, "one sentence: {err}");
    assert!(
        err.contains("tracepoint oom:mark_victim is missing") && err.contains("OOM kills"),
        "{err}"
    );
    assert!(!check.status.success());
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("FAIL") && l.contains("oom:mark_victim")),
        "{text}"
    );
}

/// The kernel calls a tracepoint's probes in registration order, and the
/// classic probe is shared by every perf user of the tracepoint: with
/// another tracer attached first, diag's classic program runs before its
/// tp_btf one. The victim's cgroup must be found either way.
#[test]
fn the_victim_cgroup_is_found_whatever_the_probe_order() {
    if !require_root("the_victim_cgroup_is_found_whatever_the_probe_order") {
        return;
    }
    let _guard = serial();
    let cg = MemCgroup::create(V1_ROOT, "order", "memory.limit_in_bytes", LIMIT_MIB << 20);
    // The first diag registers the classic probe; the second one's tp_btf
    // program then comes after it.
    let first = Diag::start(&["tail", "--json", "--events", "oom"]);
    let second = Diag::start(&["tail", "--json", "--events", "oom"]);
    let mut hog = spawn_hog(&cg);
    let hog_pid = hog.id();
    let mut small = cg.spawn(LOADGEN, &["alloc", "16"]);
    let small_pid = small.id();
    wait_killed(&mut hog);
    let _ = small.wait();
    // No wait: stopping diag drains what the kernel wrote first.
    let mut counts = Vec::new();
    for (name, d) in [("second", second), ("first", first)] {
        let out = d.stop(libc::SIGINT);
        let events = oom_events(&out);
        // Now and then the kernel kills the small one too, when it asks
        // for more before the hog's memory is freed: a second, real kill.
        assert!(
            events
                .iter()
                .all(|e| e["pid"] == hog_pid || e["pid"] == small_pid),
            "{name}: {events:?}"
        );
        counts.push(events.len());
        let events: Vec<&Value> = events.iter().filter(|e| e["pid"] == hog_pid).collect();
        assert_eq!(events.len(), 1, "{name}: {events:?}");
        let e = events[0];
        assert_eq!(e["pid"], hog_pid, "{name}: {e}");
        assert_eq!(
            e["cgroup"],
            cg.rel.as_str(),
            "{name}: the victim's cgroup: {e}"
        );
        assert_ne!(e["memcg_ino"]["victim"], 0, "{name}: {e}");
        assert_eq!(e["trigger"]["is_victim"], false, "{name}: {e}");
    }
    assert_eq!(counts[0], counts[1], "both see every kill");
}
