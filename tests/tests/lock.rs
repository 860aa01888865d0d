//! Locks: futex waits with their wakers, and the thread dump, against a
//! helper (diag-lockgen) that names its own threads (gettid), its locks
//! (their addresses) and measures its own waits (CLOCK_MONOTONIC).

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::Duration,
};

use diag_tests::{Diag, require_root, serial};
use serde_json::Value;

const LOCKGEN: &str = env!("CARGO_BIN_EXE_diag-lockgen");

/// Rounds of a 50 ms mutex helper that outlasts the test (a minute, and
/// diag takes seconds to start in a debug build): killed when it ends.
const UNTIL_KILLED: &str = "1200";

/// A running diag-lockgen and the `KEY VALUE` lines it printed.
struct Gen {
    child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
    facts: HashMap<String, Vec<String>>,
}

impl Gen {
    fn start(args: &[&str]) -> Gen {
        let mut child = Command::new(LOCKGEN)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn diag-lockgen");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Gen {
            child,
            lines,
            facts: HashMap::new(),
        }
    }

    /// Read lines until `last` (a key) was printed.
    fn until(&mut self, last: &str) {
        for line in self.lines.by_ref() {
            let line = line.expect("diag-lockgen output");
            let (k, v) = line.split_once(' ').unwrap_or((line.as_str(), ""));
            self.facts
                .entry(k.to_string())
                .or_default()
                .push(v.to_string());
            if k == last {
                return;
            }
        }
        panic!("diag-lockgen ended before {last}: {:?}", self.facts);
    }

    fn one(&self, k: &str) -> &str {
        &self.facts[k][0]
    }

    fn num(&self, k: &str) -> u64 {
        self.one(k).parse().unwrap()
    }

    fn all(&self, k: &str) -> Vec<u64> {
        self.facts[k].iter().map(|v| v.parse().unwrap()).collect()
    }
}

impl Drop for Gen {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn addr(v: &str) -> u64 {
    u64::from_str_radix(v.trim_start_matches("0x"), 16).unwrap()
}

fn lock_waits(out: &[Value], pid: u64) -> Vec<&Value> {
    out.iter()
        .filter(|v| v["event"] == "lock_wait" && v["pid"] == pid)
        .collect()
}

/// Two threads on one mutex: the holder keeps it 50 ms, K times. The
/// waiter's waits are K waits of about 50 ms (within 10 %, and within 2 %
/// of its own measure of each), each ended by the holder.
#[test]
fn mutex_waits_name_the_holder() {
    if !require_root("mutex_waits_name_the_holder") {
        return;
    }
    let _g = serial();
    const K: usize = 6;
    let diag = Diag::start(&[
        "tail",
        "--events",
        "lock",
        "--json",
        "--lock-threshold",
        "20ms",
    ]);
    let mut lg = Gen::start(&["mutex", &K.to_string(), "50"]);
    lg.until("DONE");
    let pid = lg.num("PID");
    let mutex = addr(lg.one("MUTEX"));
    let (holder, waiter) = (lg.num("HOLDER"), lg.num("WAITER"));
    let measured = lg.all("WAITED");
    std::thread::sleep(Duration::from_millis(300));
    let out = diag.stop(libc::SIGINT);
    let all = out.json();
    let on_mutex: Vec<&Value> = lock_waits(&all, pid)
        .into_iter()
        .filter(|v| addr(v["uaddr"].as_str().unwrap()) == mutex)
        .collect();
    assert_eq!(
        on_mutex.len(),
        K,
        "one wait per round on the mutex {mutex:#x}: {on_mutex:?}"
    );
    for (v, own) in on_mutex.iter().zip(&measured) {
        let wait = v["wait_ns"].as_u64().unwrap();
        assert_eq!(v["tid"], waiter, "{v}");
        assert_eq!(v["waker_tid"], holder, "the holder woke the waiter: {v}");
        assert_eq!(v["waker_pid"], pid, "{v}");
        assert!(
            (45_000_000..=55_000_000).contains(&wait),
            "about 50 ms: {wait} ns ({v})"
        );
        let own = *own as f64;
        assert!(
            (wait as f64 - own).abs() <= own * 0.02,
            "diag's {wait} ns against the waiter's own {own} ns"
        );
    }
}

/// A condition variable: the waiter's wait ends when the signaller
/// signals, at least DELAY later (the signaller's sleep, which a busy or
/// stolen CPU can stretch); the signaller is named every time, and each
/// wait agrees with the waiter's own clock.
#[test]
fn condvar_waits_name_the_signaller() {
    if !require_root("condvar_waits_name_the_signaller") {
        return;
    }
    let _g = serial();
    const K: usize = 4;
    let diag = Diag::start(&[
        "tail",
        "--events",
        "lock",
        "--json",
        "--lock-threshold",
        "20ms",
    ]);
    let mut lg = Gen::start(&["cond", &K.to_string(), "50"]);
    lg.until("DONE");
    let pid = lg.num("PID");
    // pthread_cond_t is 48 bytes: glibc waits on a word inside it.
    let cond = addr(lg.one("COND"));
    let (signaller, waiter) = (lg.num("SIGNALLER"), lg.num("WAITER"));
    let measured = lg.all("WAITED");
    std::thread::sleep(Duration::from_millis(300));
    let out = diag.stop(libc::SIGINT);
    let all = out.json();
    let on_cond: Vec<&Value> = lock_waits(&all, pid)
        .into_iter()
        .filter(|v| (cond..cond + 48).contains(&addr(v["uaddr"].as_str().unwrap())))
        .collect();
    assert_eq!(on_cond.len(), K, "one wait per round: {on_cond:?}");
    for (v, own) in on_cond.iter().zip(&measured) {
        let wait = v["wait_ns"].as_u64().unwrap();
        assert_eq!(v["tid"], waiter, "{v}");
        assert_eq!(v["waker_tid"], signaller, "{v}");
        assert!(wait >= 45_000_000, "{wait} ns, under DELAY ({v})");
        // The waiter's clock adds only glibc's work around the futex: the
        // mutex released before, taken back after.
        assert!(
            wait <= *own && *own - wait <= *own / 50,
            "diag's {wait} ns against the waiter's own {own} ns ({v})"
        );
    }
}

/// /proc/PID/task/TID/{stat,wchan} now: (state, wchan).
fn proc_state(pid: u64, tid: u64) -> (String, String) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let state = after.split_whitespace().next().unwrap().to_string();
    let wchan = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/wchan")).unwrap();
    (state, wchan.trim().to_string())
}

fn threads_json(pid: u64) -> Value {
    let out = Command::new(diag_tests::diag_bin())
        .args(["threads", &pid.to_string(), "--json", "--interval", "500ms"])
        .output()
        .expect("run diag threads");
    assert!(
        out.status.success(),
        "diag threads failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

fn thread(dump: &Value, tid: u64) -> &Value {
    dump["threads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tid"] == tid)
        .unwrap_or_else(|| panic!("thread {tid} in {dump}"))
}

/// A spinning thread, one in nanosleep, one reading a pipe, one waiting
/// on a mutex the main thread holds: every thread's state and wchan as
/// /proc shows them right after, and each wait's reason: the pipe's inode
/// as /proc/PID/fd names it, the mutex's address and holder as the
/// program printed them.
#[test]
fn thread_dump_matches_proc() {
    if !require_root("thread_dump_matches_proc") {
        return;
    }
    let _g = serial();
    let mut lg = Gen::start(&["dump"]);
    lg.until("READY");
    let pid = lg.num("PID");
    let dump = threads_json(pid);
    let n = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count();
    assert_eq!(dump["threads"].as_array().unwrap().len(), n, "{dump}");
    // Every thread but the spinner stays put: state and wchan as /proc says.
    for t in dump["threads"].as_array().unwrap() {
        let tid = t["tid"].as_u64().unwrap();
        if tid == lg.num("SPIN") {
            continue;
        }
        let (state, wchan) = proc_state(pid, tid);
        assert_eq!(t["state"], state.as_str(), "thread {tid}: {t}");
        assert_eq!(t["wchan"], wchan.as_str(), "thread {tid}: {t}");
        assert!(
            t["state_for_ns_at_least"].as_u64().unwrap() >= 400_000_000,
            "it has not moved over the interval: {t}"
        );
        assert!(
            !t["stack"].as_array().unwrap().is_empty(),
            "a kernel stack: {t}"
        );
    }
    let spin = thread(&dump, lg.num("SPIN"));
    assert_eq!(spin["state"], "R", "{spin}");
    assert!(spin["cpu_ns"].as_u64().unwrap() > 100_000_000, "{spin}");
    let sleep = thread(&dump, lg.num("SLEEP"));
    assert_eq!(sleep["state"], "S");
    assert_eq!(sleep["wait"]["kind"], "sleep", "{sleep}");
    assert!(sleep["syscall"].as_str().unwrap().contains("nanosleep"));
    let pipe = thread(&dump, lg.num("PIPE"));
    let fd = lg.num("PIPEFD");
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
    assert_eq!(pipe["wait"]["kind"], "pipe", "{pipe}");
    assert_eq!(pipe["wait"]["fd"], fd);
    assert_eq!(pipe["wait"]["target"], link.display().to_string().as_str());
    let mw = thread(&dump, lg.num("MUTEXWAIT"));
    assert_eq!(mw["wait"]["kind"], "futex", "{mw}");
    assert_eq!(
        addr(mw["wait"]["uaddr"].as_str().unwrap()),
        addr(lg.one("MUTEX"))
    );
    assert_eq!(mw["wait"]["holder_tid"], lg.num("MAIN"), "{mw}");
    assert_eq!(mw["wait"]["holder_how"], "glibc mutex owner");
    assert_eq!(dump["deadlocks"].as_array().unwrap().len(), 0, "{dump}");
}

/// Two threads each holding the mutex the other wants: one deadlock,
/// with both tids and both lock addresses as the program printed them.
#[test]
fn deadlock_cycle_is_flagged() {
    if !require_root("deadlock_cycle_is_flagged") {
        return;
    }
    let _g = serial();
    let mut lg = Gen::start(&["deadlock"]);
    lg.until("READY");
    let pid = lg.num("PID");
    let dump = threads_json(pid);
    let dl = dump["deadlocks"].as_array().unwrap();
    assert_eq!(dl.len(), 1, "{dump}");
    let (a, b) = (lg.num("A"), lg.num("B"));
    let (ma, mb) = (addr(lg.one("MA")), addr(lg.one("MB")));
    let edges: Vec<(u64, u64, u64)> = dl[0]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["waiter"].as_u64().unwrap(),
                addr(e["uaddr"].as_str().unwrap()),
                e["holder"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut want = vec![(a, mb, b), (b, ma, a)];
    want.sort();
    let mut got = edges.clone();
    got.sort();
    assert_eq!(got, want, "A waits for MB held by B, B for MA held by A");
    // The text dump says it in a sentence.
    let out = Command::new(diag_tests::diag_bin())
        .args(["threads", &pid.to_string(), "--interval", "200ms"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("DEADLOCK: {} waits for futex", a.min(b))),
        "{text}"
    );
}

/// `runq --locks`: the per-interval lock table sums, for the mutex, to
/// the waiter's own measure of its waits (within 2 %), held by the
/// holder; the process's LOCK figure covers at least that.
#[test]
fn runq_lock_column_sums_the_waits() {
    if !require_root("runq_lock_column_sums_the_waits") {
        return;
    }
    let _g = serial();
    const K: usize = 10;
    let diag = Diag::start(&[
        "runq",
        "--locks",
        "--json",
        "--interval",
        "1s",
        "--count",
        "3",
    ]);
    let mut lg = Gen::start(&["mutex", &K.to_string(), "50"]);
    lg.until("DONE");
    let pid = lg.num("PID");
    let mutex = addr(lg.one("MUTEX"));
    let own: u64 = lg.all("WAITED").iter().sum();
    let out = diag.wait_exit(Duration::from_secs(10));
    let intervals = out.json();
    assert_eq!(intervals.len(), 3, "{:?}", out.stderr);
    let mut on_mutex = 0u64;
    let mut waits = 0u64;
    let mut proc_total = 0u64;
    let mut slot_50ms = 0u64;
    for iv in &intervals {
        for l in iv["locks"].as_array().unwrap() {
            if l["pid"] == pid && l["uaddr"].as_u64() == Some(mutex) {
                on_mutex += l["wait_ns"].as_u64().unwrap();
                waits += l["waits"].as_u64().unwrap();
                assert_eq!(l["holders"][0]["tid"], lg.num("HOLDER"), "{l}");
                assert_eq!(l["waiters"], serde_json::json!([lg.num("WAITER")]), "{l}");
            }
        }
        for p in iv["lock_procs"].as_array().unwrap() {
            if p["pid"] == pid {
                proc_total += p["wait_ns"].as_u64().unwrap();
                let hist: Vec<u64> = p["hist"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap())
                    .collect();
                assert_eq!(
                    hist.iter().sum::<u64>(),
                    p["waits"].as_u64().unwrap(),
                    "{p}"
                );
                // 32768-65535 us: the 50 ms waits.
                slot_50ms += hist[16];
            }
        }
    }
    assert_eq!(waits, K as u64, "one wait per round");
    let diff = (on_mutex as f64 - own as f64).abs();
    assert!(
        diff <= own as f64 * 0.02,
        "diag's {on_mutex} ns on the mutex against the waiter's own {own} ns"
    );
    assert!(proc_total >= on_mutex, "{proc_total} >= {on_mutex}");
    assert!(
        slot_50ms >= K as u64,
        "the mutex waits in the 32-65 ms bucket: {slot_50ms}"
    );
}

/// `serve --locks --record`: the lock counters of a cgroup that holds
/// only the helper, and the recording's lock frames, export and report,
/// against the waiter's own measure and the holder's tid.
#[test]
fn serve_and_record_count_the_waits() {
    if !require_root("serve_and_record_count_the_waits") {
        return;
    }
    let _g = serial();
    const K: usize = 8;
    let root = diag_tests::cgroup2_root()
        .unwrap_or_else(|| panic!("cgroup2 is not mounted: the lock serve test needs a cgroup"));
    let name = format!("diag-lock-{}", std::process::id());
    let dir = std::path::PathBuf::from(&root).join(&name);
    let _ = std::fs::remove_dir(&dir);
    std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    let cg = diag_tests::MemCgroup {
        dir,
        rel: format!("/{name}"),
    };
    let port = diag_tests::free_port();
    let tmp = diag_tests::TempDir::new("lock");
    let file = tmp.path("lock.diag");
    let serve = Diag::start(&[
        "serve",
        "--no-sched",
        "--locks",
        "--lock-threshold",
        "20ms",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--record",
        file.to_str().unwrap(),
    ]);
    let mut child = cg.spawn(LOCKGEN, &["mutex", &K.to_string(), "50", "3000"]);
    let mut lg = Gen {
        lines: BufReader::new(child.stdout.take().unwrap()).lines(),
        child,
        facts: HashMap::new(),
    };
    lg.until("DONE");
    let pid = lg.num("PID");
    let mutex = addr(lg.one("MUTEX"));
    let own: u64 = lg.all("WAITED").iter().sum();
    let series = |name: &str| format!(r#"{name}{{cgroup="{}"}}"#, cg.rel);
    let metric = |body: &str, name: &str| -> Option<f64> {
        let s = series(name);
        body.lines()
            .find(|l| l.starts_with(&s))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let body = loop {
        let body = diag_tests::scrape_metrics(port);
        if metric(&body, "diag_lock_long_waits_total").is_some_and(|v| v >= K as f64) {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {} >= {K}: {body}",
            series("diag_lock_long_waits_total")
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    // The mutex's K waits, and pthread_join's waits of the main thread
    // for the holder and the waiter (at most two more over the threshold).
    let long = metric(&body, "diag_lock_long_waits_total").unwrap();
    assert!((K as f64..=K as f64 + 2.0).contains(&long), "{long}");
    let secs = metric(&body, "diag_lock_wait_seconds_total").unwrap();
    let own_s = own as f64 / 1e9;
    assert!(
        secs >= own_s * 0.98 && secs <= own_s * 2.0 + 0.1,
        "{secs} s waited in the cgroup against the waiter's own {own_s} s (and the join)"
    );
    let holder = lg.num("HOLDER");
    drop(lg);
    let out = serve.stop(libc::SIGINT);
    assert!(out.status.success(), "{:?}", out.stderr);
    // The recording: lock frames and events.
    let export = Command::new(diag_tests::diag_bin())
        .args(["export", "--format", "jsonl"])
        .arg(&file)
        .output()
        .unwrap();
    let lines: Vec<Value> = String::from_utf8_lossy(&export.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let mut on_mutex = 0u64;
    for f in lines.iter().filter(|v| v["event"] == "locks") {
        for l in f["locks"].as_array().unwrap() {
            if l["pid"] == pid && addr(l["uaddr"].as_str().unwrap()) == mutex {
                on_mutex += l["wait_ns"].as_u64().unwrap();
                assert_eq!(l["holders"][0]["tid"], holder, "{l}");
            }
        }
    }
    assert!(
        (on_mutex as f64 - own as f64).abs() <= own as f64 * 0.02,
        "recorded {on_mutex} ns on the mutex against the waiter's own {own} ns"
    );
    let waits = lock_waits(&lines, pid)
        .into_iter()
        .filter(|v| addr(v["uaddr"].as_str().unwrap()) == mutex)
        .count();
    assert_eq!(waits, K, "lock-wait events recorded");
    assert_eq!(
        lg_holder(&lines, pid, mutex),
        holder,
        "the events name the holder"
    );
    let report = Command::new(diag_tests::diag_bin())
        .arg("report")
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&report.stdout);
    // The report lists the 5 locks with the most wait on the host: ours,
    // or (other processes on a busy host waited more) 5 with more wait.
    let ours = format!("lock {mutex:#x} in pid {pid}: {K} waits");
    if !text.contains(&ours) {
        let listed: Vec<f64> = text
            .lines()
            .filter(|l| l.trim_start().starts_with("lock 0x"))
            .filter_map(|l| l.split(" waits, ").nth(1)?.split(' ').next().map(secs_of))
            .collect();
        assert!(
            listed.len() == 5 && listed.iter().all(|&t| t >= on_mutex as f64 / 1e9 * 0.99),
            "{ours} missing, yet fewer than 5 locks waited more: {text}"
        );
    }
}

/// `502.41ms`, `1.75s`, `12.3us`, `850ns` in seconds.
fn secs_of(v: &str) -> f64 {
    let v = v.trim_end_matches([',', ';']);
    for (unit, f) in [("ns", 1e-9), ("us", 1e-6), ("ms", 1e-3), ("s", 1.0)] {
        if let Some(n) = v.strip_suffix(unit) {
            return n.parse::<f64>().unwrap_or(f64::NAN) * f;
        }
    }
    f64::NAN
}

/// The holder the lock-wait events of the recording name (every one the
/// same thread), for the frames to agree with.
fn lg_holder(lines: &[Value], pid: u64, mutex: u64) -> Value {
    let wakers: std::collections::BTreeSet<u64> = lock_waits(lines, pid)
        .into_iter()
        .filter(|v| addr(v["uaddr"].as_str().unwrap()) == mutex)
        .map(|v| v["waker_tid"].as_u64().unwrap())
        .collect();
    assert_eq!(wakers.len(), 1, "one holder: {wakers:?}");
    (*wakers.iter().next().unwrap()).into()
}

/// `top --locks --once --json`: the helper's row has its futex wait over
/// the interval: at most the interval (one waiter at a time, plus the
/// main thread's join), at least most of the waiter's own measure in it.
/// The helper runs until killed and is checked to be still waiting when
/// the snapshot is taken.
#[test]
fn top_lock_column_shows_the_waiter() {
    if !require_root("top_lock_column_shows_the_waiter") {
        return;
    }
    let _g = serial();
    let mut lg = Gen::start(&["mutex", UNTIL_KILLED, "50"]);
    lg.until("WAITED");
    let out = Command::new(diag_tests::diag_bin())
        .args(["top", "--locks", "--once", "--json", "--interval", "1s"])
        .output()
        .unwrap();
    assert!(
        lg.child.try_wait().unwrap().is_none(),
        "diag-lockgen ended before the snapshot was taken"
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snap: Value = serde_json::from_slice(&out.stdout).unwrap();
    let pid = lg.num("PID");
    let row = snap["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == pid)
        .unwrap_or_else(|| panic!("no row for {pid}: {snap}"));
    let ns = row["lock_ns"].as_u64().unwrap();
    let interval = (snap["interval_s"].as_f64().unwrap() * 1e9) as u64;
    // The waiter waits ~50 of every ~50.5 ms; the main thread joins all along.
    assert!(
        ns >= interval * 8 / 10 && ns <= interval * 21 / 10,
        "{ns} ns of lock wait over {interval} ns: {row}"
    );
}

/// `diag threads --watch`: each dump one interval after the last; a thread
/// that does not move keeps its state and its FOR grows by the interval.
#[test]
fn threads_watch_grows_the_time_in_state() {
    if !require_root("threads_watch_grows_the_time_in_state") {
        return;
    }
    let _g = serial();
    let mut lg = Gen::start(&["dump"]);
    lg.until("READY");
    let pid = lg.num("PID");
    let out = Command::new(diag_tests::diag_bin())
        .args(["threads", &pid.to_string(), "--watch", "--count", "3"])
        .args(["--json", "--interval", "400ms"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dumps: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(dumps.len(), 3);
    let sleeper = lg.num("SLEEP");
    let fors: Vec<u64> = dumps
        .iter()
        .map(|d| {
            thread(d, sleeper)["state_for_ns_at_least"]
                .as_u64()
                .unwrap()
        })
        .collect();
    for w in fors.windows(2) {
        let grew = w[1] - w[0];
        assert!(
            (380_000_000..=700_000_000).contains(&grew),
            "FOR grows by about one interval: {fors:?}"
        );
    }
    assert!(fors[2] >= 1_150_000_000, "{fors:?}");
}

/// `diag threads --locks`: the futex probes name the thread last seen
/// releasing the futex a thread waits on: for the mutex waiter, the
/// holder (the same thread glibc's owner field names).
#[test]
fn threads_with_probes_name_the_last_releaser() {
    if !require_root("threads_with_probes_name_the_last_releaser") {
        return;
    }
    let _g = serial();
    // Longer than the tries below take (each one starts diag).
    let mut lg = Gen::start(&["mutex", UNTIL_KILLED, "50"]);
    // Both threads named, one round done.
    lg.until("WAITED");
    let (pid, holder, waiter) = (lg.num("PID"), lg.num("HOLDER"), lg.num("WAITER"));
    let mutex = addr(lg.one("MUTEX"));
    // The waiter is in the mutex's futex about 99 % of the time: a few
    // tries find it there.
    for _ in 0..5 {
        let out = Command::new(diag_tests::diag_bin())
            .args([
                "threads",
                &pid.to_string(),
                "--locks",
                "--json",
                "--interval",
                "600ms",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dump: Value = serde_json::from_slice(&out.stdout).unwrap();
        let w = thread(&dump, waiter);
        if w["wait"]["kind"] != "futex" {
            continue;
        }
        assert_eq!(addr(w["wait"]["uaddr"].as_str().unwrap()), mutex, "{w}");
        assert_eq!(w["wait"]["holder_tid"], holder, "{w}");
        assert_eq!(w["wait"]["last_released_by_tid"], holder, "{w}");
        return;
    }
    panic!("the waiter was never seen in its futex wait");
}
