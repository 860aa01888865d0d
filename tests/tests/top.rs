//! `diag top`: the batch snapshots, and the interactive screen driven in a
//! real terminal (tmux, 80x24) during a synthetic incident: connection
//! churn, a CPU hog, a CLOSE_WAIT leak and a memory-cgroup OOM kill, all
//! from processes with known pids.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use diag_tests::{Diag, Gen, MemCgroup, V1_ROOT, diag_bin, require_root, serial};

const LOADGEN: &str = env!("CARGO_BIN_EXE_diag-loadgen");

/// A tmux server of our own (its own socket) with one 80x24 window running
/// a plain shell; killed on drop, whatever happened.
struct Tmux {
    socket: String,
    /// The server's socket file, removed on drop.
    socket_path: Option<String>,
}

impl Tmux {
    fn start() -> Tmux {
        let mut t = Tmux {
            socket: format!("diag-top-test-{}", std::process::id()),
            socket_path: None,
        };
        let st = t
            .cmd()
            .args(["new-session", "-d", "-s", "top", "-x", "80", "-y", "24"])
            .arg("env PS1='READY$ ' bash --norc --noprofile")
            .status()
            .expect("tmux (cargo xtask setup installs it)");
        assert!(st.success(), "tmux new-session failed");
        t.socket_path = Some(t.display("#{socket_path}")).filter(|p| !p.is_empty());
        // The window keeps its size without a client attached.
        let _ = t
            .cmd()
            .args(["resize-window", "-t", "top", "-x", "80", "-y", "24"])
            .status();
        t.wait_for("the shell prompt", Duration::from_secs(10), |s| {
            s.contains("READY$")
        });
        t
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket]);
        c
    }

    fn send(&self, keys: &[&str]) {
        let st = self
            .cmd()
            .args(["send-keys", "-t", "top"])
            .args(keys)
            .status()
            .unwrap();
        assert!(st.success(), "send-keys {keys:?}");
    }

    /// Type text literally (no key names).
    fn type_text(&self, text: &str) {
        let st = self
            .cmd()
            .args(["send-keys", "-t", "top", "-l", text])
            .status()
            .unwrap();
        assert!(st.success(), "send-keys -l {text}");
    }

    fn screen(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-t", "top"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn display(&self, format: &str) -> String {
        let out = self
            .cmd()
            .args(["display-message", "-p", "-t", "top", format])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Wait (bounded) until the screen satisfies `ok`; panic showing it.
    #[track_caller]
    fn wait_for(&self, what: &str, timeout: Duration, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.screen();
            if ok(&s) {
                return s;
            }
            if Instant::now() > deadline {
                panic!("waited {timeout:?} for {what}; the screen:\n{s}");
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").status();
        if let Some(p) = &self.socket_path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The cells of the table row of `pid` (PID COMM CPU% OPN/s CLS/s ESTAB
/// TW CW RST RETX OOM ...), if on screen.
fn row(screen: &str, pid: u32) -> Option<Vec<String>> {
    let p = pid.to_string();
    screen.lines().find_map(|l| {
        let cells: Vec<String> = l.split_whitespace().map(str::to_string).collect();
        (cells.first() == Some(&p) && cells.len() >= 11).then_some(cells)
    })
}

/// Where `pid`'s row is among the table's lines.
fn position(screen: &str, pid: u32) -> Option<usize> {
    let p = pid.to_string();
    screen
        .lines()
        .position(|l| l.split_whitespace().next() == Some(p.as_str()))
}

fn num(cell: &str) -> f64 {
    cell.trim_end_matches(['!', 'k']).parse().unwrap_or(0.0)
}

const CPU: usize = 2;
const OPENS: usize = 3;
const CW: usize = 7;

fn bpf_stats_enabled() -> String {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[test]
fn batch_once_shows_a_churning_process() {
    if !require_root("batch_once_shows_a_churning_process") {
        return;
    }
    let _guard = serial();
    let stats_before = bpf_stats_enabled();
    let mut churn = Gen::spawn(LOADGEN, &["churn", "15"]);
    churn.port();
    let pid = churn.pid();

    // Text, like `top -b`.
    let out = Diag::start(&["top", "--batch", "--once"]).wait_exit(Duration::from_secs(20));
    assert!(out.status.success(), "{:?}", out.stderr);
    let text = out.stdout.join("\n");
    assert!(text.starts_with("diag top "), "{text}");
    assert!(
        text.contains("\nCPU ") && text.contains("\nTCP open "),
        "{text}"
    );
    let cells = row(&text, pid).unwrap_or_else(|| panic!("no row for pid {pid}:\n{text}"));
    assert_eq!(cells[1], "diag-loadgen", "{cells:?}");
    assert!(
        num(&cells[OPENS]) > 0.0,
        "opens/s of the churner: {cells:?}"
    );
    assert!(
        out.stdout
            .iter()
            .any(|l| l.starts_with("PID ") && l.contains("CGROUP")),
        "{text}"
    );

    // JSON: one object, the same row.
    let out = Diag::start(&["top", "--once", "--json"]).wait_exit(Duration::from_secs(20));
    assert!(out.status.success(), "{:?}", out.stderr);
    let snaps = out.json();
    assert_eq!(snaps.len(), 1, "{:?}", out.stdout);
    let s = &snaps[0];
    let r = s["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["pid"] == pid)
        .unwrap_or_else(|| panic!("no row for pid {pid}: {s}"));
    assert!(r["tcp"]["opens_per_s"].as_f64().unwrap() > 0.0, "{r}");
    assert!(s["tcp"]["opens_per_s"].as_f64().unwrap() > 0.0, "{s}");
    assert!(s["host"]["cpu_pct"].as_f64().is_some(), "{s}");
    assert!(s["host"]["loadavg"]["one"].as_f64().is_some(), "{s}");
    assert!(s["diag"]["bpf_programs"].as_u64().unwrap() > 0, "{s}");
    // The kernel counted the run time of diag's programs while it ran.
    assert!(s["diag"]["bpf_cpu_pct"].as_f64().is_some(), "{s}");
    assert_eq!(
        bpf_stats_enabled(),
        stats_before,
        "statistics switched back"
    );

    // --count N: N snapshots.
    let out = Diag::start(&["top", "-b", "-n", "2", "--interval", "300ms", "--json"])
        .wait_exit(Duration::from_secs(20));
    assert!(out.status.success(), "{:?}", out.stderr);
    assert_eq!(out.json().len(), 2);
}

#[test]
fn the_screen_during_an_incident() {
    if !require_root("the_screen_during_an_incident") {
        return;
    }
    let _guard = serial();
    let stats_before = bpf_stats_enabled();
    let mut churn = Gen::spawn(LOADGEN, &["churn", "90"]);
    churn.port();
    let mut spin = Gen::spawn(LOADGEN, &["spin", "90"]);
    assert_eq!(spin.line(), "SPINNING");
    let (churn_pid, spin_pid) = (churn.pid(), spin.pid());

    let tmux = Tmux::start();
    let cmd = format!(
        "{} top --interval 1s --close-wait-threshold 2s",
        diag_bin().display()
    );
    tmux.type_text(&cmd);
    tmux.send(&["Enter"]);
    tmux.wait_for("the top screen", Duration::from_secs(30), |s| {
        s.starts_with("diag top ") && s.contains("PID ")
    });
    assert_eq!(
        tmux.display("#{alternate_on}"),
        "1",
        "on the alternate screen"
    );

    // Only our processes: filter by name.
    tmux.send(&["/"]);
    tmux.type_text("diag-loadgen");
    tmux.send(&["Enter"]);
    let s = tmux.wait_for(
        "the churner with opens/s and the spinner with CPU",
        Duration::from_secs(20),
        |s| {
            row(s, churn_pid).is_some_and(|r| num(&r[OPENS]) > 0.0)
                && row(s, spin_pid).is_some_and(|r| num(&r[CPU]) > 15.0)
        },
    );
    assert!(s.contains("filter 'diag-loadgen'"), "{s}");

    // Sorting by a key reorders.
    tmux.send(&["c"]);
    let s = tmux.wait_for("CPU order", Duration::from_secs(10), |s| {
        s.contains("sort CPU %")
            && position(s, spin_pid)
                .zip(position(s, churn_pid))
                .is_some_and(|(a, b)| a < b)
    });
    assert!(s.contains("CPU%v"), "{s}");
    tmux.send(&["o"]);
    tmux.wait_for("opens order", Duration::from_secs(10), |s| {
        s.contains("sort connection opens/s")
            && position(s, churn_pid)
                .zip(position(s, spin_pid))
                .is_some_and(|(a, b)| a < b)
    });

    // A CLOSE_WAIT leak: the peer closes, the listener never does.
    let mut holder = Gen::spawn(LOADGEN, &["listen-hold", "3", "127.0.0.1:0"]);
    let port = holder.port();
    let mut conn = Gen::spawn(
        LOADGEN,
        &["connect-hold", "3", &format!("127.0.0.1:{port}")],
    );
    assert!(conn.line().starts_with("CONNECTED"));
    assert_eq!(holder.line(), "ACCEPTED");
    drop(conn);
    let holder_pid = holder.pid();
    tmux.send(&["w"]);
    let s = tmux.wait_for(
        "the leak, marked, and its event",
        Duration::from_secs(20),
        |s| {
            row(s, holder_pid).is_some_and(|r| r[CW] == "3!")
                && s.contains(&format!("LEAK   pid {holder_pid} (diag-loadgen)"))
        },
    );
    let leaker = position(&s, holder_pid).unwrap();
    assert!(
        position(&s, churn_pid).is_none_or(|p| leaker < p)
            && position(&s, spin_pid).is_none_or(|p| leaker < p),
        "sorted by CLOSE_WAIT, the leaker comes first:\n{s}"
    );

    // A memory cgroup OOM kill.
    if std::path::Path::new(V1_ROOT)
        .join("memory.limit_in_bytes")
        .exists()
    {
        let cg = MemCgroup::create(V1_ROOT, "top", "memory.limit_in_bytes", 32 << 20);
        let mut victim = cg.spawn(LOADGEN, &["alloc", "256"]);
        let victim_pid = victim.id();
        let _ = victim.wait();
        tmux.wait_for("the OOM kill", Duration::from_secs(20), |s| {
            s.contains(&format!("OOM    pid {victim_pid} (diag-loadgen) killed"))
                && !s.contains("OOM kills 0 ")
        });
    } else {
        eprintln!("the_screen_during_an_incident: no cgroup v1 memory hierarchy, OOM part skipped");
    }

    // Details of the churner (filtered by its pid: other tests on this
    // host may run loadgens too): its connections by peer.
    tmux.send(&["/"]);
    tmux.type_text(&churn_pid.to_string());
    tmux.send(&["Enter"]);
    tmux.wait_for("only the churner", Duration::from_secs(10), |s| {
        row(s, churn_pid).is_some() && row(s, spin_pid).is_none()
    });
    // Keys are read in order: Home, then Enter on the first row.
    tmux.send(&["Home"]);
    tmux.send(&["Enter"]);
    tmux.wait_for("the churner's detail", Duration::from_secs(10), |s| {
        s.contains(&format!("process {churn_pid}"))
            && s.contains("-> 127.0.0.1:")
            && s.contains("Connections by peer")
    });
    tmux.send(&["Escape"]);
    tmux.wait_for("the detail closed", Duration::from_secs(5), |s| {
        !s.contains("Connections by peer")
    });

    // Help, then quit: the shell is back, off the alternate screen.
    tmux.send(&["?"]);
    tmux.wait_for("the help", Duration::from_secs(5), |s| {
        s.contains("who is suffering")
    });
    tmux.send(&["Escape"]);
    tmux.wait_for("the help closed", Duration::from_secs(5), |s| {
        !s.contains("who is suffering")
    });
    tmux.send(&["q"]);
    tmux.assert_restored("q");
    assert_eq!(
        bpf_stats_enabled(),
        stats_before,
        "BPF statistics are back as they were"
    );

    // Ctrl-C, and a panic, restore it too.
    for (how, env) in [
        ("Ctrl-C", ""),
        ("a panic", "DIAG_TOP_PANIC_FOR_TEST=1 RUST_BACKTRACE=0 "),
    ] {
        tmux.type_text(&format!("clear; {env}{cmd}"));
        tmux.send(&["Enter"]);
        if env.is_empty() {
            tmux.wait_for("the top screen", Duration::from_secs(30), |s| {
                s.starts_with("diag top ") && s.contains("PID ")
            });
            tmux.send(&["C-c"]);
        } else {
            // The panic message stays readable, above the prompt.
            tmux.wait_for("the panic message", Duration::from_secs(30), |s| {
                let lines: Vec<&str> = s.trim_end().lines().collect();
                lines.last() == Some(&"READY$")
                    && lines.iter().any(|l| l.contains("deliberate panic"))
            });
        }
        tmux.assert_restored(how);
    }
}

#[test]
fn top_exits_when_its_terminal_disappears() {
    if !require_root("top_exits_when_its_terminal_disappears") {
        return;
    }
    let _guard = serial();
    let tmux = Tmux::start();
    tmux.type_text(&format!("{} top", diag_bin().display()));
    tmux.send(&["Enter"]);
    tmux.wait_for("the top screen", Duration::from_secs(30), |s| {
        s.starts_with("diag top ") && s.contains("PID ")
    });
    let shell = tmux.display("#{pane_pid}");
    let children =
        std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children")).unwrap_or_default();
    let pid: i32 = children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no child of the shell {shell}"));
    assert!(
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap_or_default()
            .starts_with("diag"),
        "pid {pid} is diag"
    );
    // The terminal goes away (as when an ssh session drops).
    drop(tmux);
    let deadline = Instant::now() + Duration::from_secs(15);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    let left = Path::new(&format!("/proc/{pid}")).exists();
    if left {
        // SAFETY: kill(2) of the diag this test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    assert!(!left, "diag top kept running after its terminal was gone");
}

impl Tmux {
    /// diag is gone and the terminal is as it was: the shell's prompt on
    /// the normal screen, raw mode off.
    #[track_caller]
    fn assert_restored(&self, how: &str) {
        let s = self.wait_for(
            &format!("the shell again after {how}"),
            Duration::from_secs(30),
            |s| !s.contains("PID ") && s.trim_end().ends_with("READY$"),
        );
        assert!(!s.contains('\u{1b}'), "{s}");
        assert_eq!(
            self.display("#{alternate_on}"),
            "0",
            "left the alternate screen after {how}"
        );
        assert_eq!(
            self.display("#{pane_current_command}"),
            "bash",
            "after {how}"
        );
        self.type_text("clear; stty -a | tr ' ' '\\n' | grep -x -- '-\\?icanon'");
        self.send(&["Enter"]);
        let s = self.wait_for("stty", Duration::from_secs(10), |s| {
            s.lines()
                .any(|l| l.trim().ends_with("icanon") && !l.contains("grep"))
        });
        assert!(
            s.lines().any(|l| l.trim() == "icanon"),
            "canonical mode (raw mode off) after {how}:\n{s}"
        );
    }
}

#[test]
fn replay_of_a_recording_through_top() {
    if !require_root("replay_of_a_recording_through_top") {
        return;
    }
    let _guard = serial();
    let dir = std::env::temp_dir().join(format!("diag-top-replay-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let file = dir.join("incident.diag");
    let mut churn = Gen::spawn(LOADGEN, &["churn", "10"]);
    churn.port();
    let pid = churn.pid();
    let rec = Command::new(diag_bin())
        .args(["record", "-o", file.to_str().unwrap(), "--duration", "3s"])
        .output()
        .unwrap();
    assert!(
        rec.status.success(),
        "{}",
        String::from_utf8_lossy(&rec.stderr)
    );
    drop(churn);

    let out = Command::new(diag_bin())
        .args(["replay", file.to_str().unwrap(), "top", "--batch", "--json"])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snaps: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        snaps.len() >= 2,
        "a snapshot per second of the recording: {snaps:?}"
    );
    assert!(
        snaps.iter().all(|s| s["host"].is_null()),
        "no host numbers in a recording"
    );
    let busiest = snaps
        .iter()
        .filter_map(|s| {
            s["processes"]
                .as_array()?
                .iter()
                .find(|r| r["pid"] == pid)
                .and_then(|r| r["tcp"]["opens_per_s"].as_f64())
        })
        .fold(0.0, f64::max);
    assert!(
        busiest > 50.0,
        "the churner's opens/s in the replay: {busiest}"
    );
}

#[test]
fn batch_shows_run_queue_latency_next_to_cpu() {
    if !require_root("batch_shows_run_queue_latency_next_to_cpu") {
        return;
    }
    let _guard = serial();
    // More spinners than CPUs: each one waits for a CPU part of the time.
    let spinners: Vec<Child> = (0..3)
        .map(|_| {
            Command::new(LOADGEN)
                .args(["spin", "6"])
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let pids: Vec<u32> = spinners.iter().map(Child::id).collect();
    let run = |extra: &[&str]| -> serde_json::Value {
        let out = Command::new(diag_bin())
            .args(["top", "--batch", "--once", "--json", "--interval", "2s"])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let snap = run(&[]);
    let rows = snap["processes"].as_array().unwrap();
    let spinning: Vec<&serde_json::Value> = rows
        .iter()
        .filter(|r| pids.contains(&(r["pid"].as_u64().unwrap() as u32)))
        .collect();
    assert!(!spinning.is_empty(), "the spinners are listed");
    for r in &spinning {
        assert!(r["cpu_pct"].as_f64().unwrap() > 10.0, "{r}");
        assert!(
            r["sched"]["wait_pct"].as_f64().unwrap() > 0.0,
            "waiting for a CPU: {r}"
        );
        assert!(r["sched"]["runq_p99_ns"].as_u64().unwrap() > 0, "{r}");
    }
    // Without the scheduler probes, the columns are empty.
    let snap = run(&["--no-sched"]);
    assert!(
        snap["processes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["sched"].is_null())
    );
    for mut s in spinners {
        let _ = s.kill();
        let _ = s.wait();
    }
}
