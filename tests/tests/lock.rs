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
/// signals, DELAY later; the signaller is named every time.
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
        assert!((45_000_000..=55_000_000).contains(&wait), "{wait} ({v})");
        assert!(wait <= *own, "diag's {wait} within the waiter's own {own}");
    }
}
