//! Helpers for diag's privileged integration tests: run the real `diag`
//! binary, cause real kernel events, read the kernel's own accounting.

use std::{
    collections::HashMap,
    ffi::CString,
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Mutex, MutexGuard, mpsc},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod prom;
pub use prom::{Prometheus, http_get};

/// Tests that share kernel state (TCP counters, loaded programs) run one
/// at a time.
static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Say that `test` is skipped and why: on stderr, and in the file named by
/// `DIAG_SKIP_LOG` (set by `cargo xtask test`, which counts them: cargo
/// hides the output of tests that pass).
pub fn skipped(test: &str, why: &str) {
    eprintln!("SKIPPED {test}: {why}");
    if let Some(path) = std::env::var_os("DIAG_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{test}: {why}");
        }
    }
}

/// True when the test may go on. Without root: in CI (CI=true) a loud
/// failure, elsewhere a skip with the reason printed.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!(
            "{test}: needs root to load BPF programs, and CI must run it (run the tests as root)"
        );
    }
    skipped(
        test,
        "needs root to load BPF programs (run `cargo xtask test` as root)",
    );
    false
}

/// The `diag` binary under test: `DIAG_BIN` (set by `cargo xtask test`),
/// else next to this test executable.
pub fn diag_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("DIAG_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/tcp-xxxx -> target/debug/diag
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("diag");
    assert!(
        bin.exists(),
        "{} not found: build it first (cargo xtask test does)",
        bin.display()
    );
    bin
}

/// A running `diag` with its output collected in the background.
pub struct Diag {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
    stderr_seen: Vec<String>,
    stdout_seen: Vec<String>,
}

fn pump(r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// What a stopped `diag` printed.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
}

impl Output {
    /// stdout lines parsed as JSON (panics on a line that is not JSON).
    pub fn json(&self) -> Vec<Value> {
        self.stdout
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
}

impl Diag {
    /// Start `diag ARGS` and wait until it says it is tracing.
    pub fn start(args: &[&str]) -> Diag {
        let mut cmd = Command::new(diag_bin());
        cmd.args(args);
        Diag::start_cmd(cmd)
    }

    /// Start `cmd` (diag, maybe behind a wrapper that execs it, such as
    /// setpriv) and wait until it says it is tracing.
    pub fn start_cmd(mut cmd: Command) -> Diag {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn diag");
        let stdout = pump(child.stdout.take().unwrap());
        let stderr = pump(child.stderr.take().unwrap());
        let mut d = Diag {
            child,
            stdout,
            stderr,
            stderr_seen: Vec::new(),
            stdout_seen: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match d.stderr.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    let ready = line.contains("tracing") || line.starts_with("diag: recording");
                    d.stderr_seen.push(line);
                    if ready {
                        return d;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(st)) = d.child.try_wait() {
                        panic!("diag exited early ({st}): {:?}", d.stderr_seen);
                    }
                    assert!(
                        Instant::now() < deadline,
                        "diag did not start: {:?}",
                        d.stderr_seen
                    );
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let st = d.child.wait().unwrap();
                    panic!("diag exited early ({st}): {:?}", d.stderr_seen);
                }
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait (up to 60 s) for diag to exit by itself (e.g. `--count`) and
    /// collect everything it printed.
    pub fn stop_when_done(self) -> Output {
        self.wait_exit(Duration::from_secs(60))
    }

    /// Wait for diag to exit by itself (one-shot modes) and collect its
    /// output; panics after `timeout`.
    pub fn wait_exit(mut self, timeout: Duration) -> Output {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("diag did not exit within {timeout:?}");
            }
            thread::sleep(Duration::from_millis(20));
        };
        let mut stdout = std::mem::take(&mut self.stdout_seen);
        stdout.extend(self.stdout.iter());
        self.stderr_seen.extend(self.stderr.iter());
        Output {
            status,
            stdout,
            stderr: std::mem::take(&mut self.stderr_seen),
        }
    }

    /// Wait up to `timeout` for the next stdout line (kept for [`stop`]'s
    /// output too).
    ///
    /// [`stop`]: Diag::stop
    pub fn next_line(&mut self, timeout: Duration) -> Option<String> {
        let line = self.stdout.recv_timeout(timeout).ok()?;
        self.stdout_seen.push(line.clone());
        Some(line)
    }

    /// Read stdout lines until one satisfies `cond` (it is returned),
    /// panicking with `what` after `timeout`. Every line read is kept for
    /// [`stop`]'s output.
    ///
    /// [`stop`]: Diag::stop
    pub fn wait_line(
        &mut self,
        timeout: Duration,
        what: &str,
        mut cond: impl FnMut(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_line(left) {
                Some(l) if cond(&l) => return l,
                Some(_) => {}
                None => panic!("timed out after {timeout:?} waiting for {what}"),
            }
        }
    }

    /// [`wait_line`] for `--json` snapshots: the first one `cond` accepts.
    ///
    /// [`wait_line`]: Diag::wait_line
    pub fn wait_json(
        &mut self,
        timeout: Duration,
        what: &str,
        mut cond: impl FnMut(&Value) -> bool,
    ) -> Value {
        let l = self.wait_line(timeout, what, |l| {
            serde_json::from_str::<Value>(l).is_ok_and(|v| cond(&v))
        });
        serde_json::from_str(&l).expect("checked above")
    }

    /// The next `--json` interval that ends after `ns` (boot time): lines
    /// printed before then may still wait in the pipe.
    pub fn wait_interval_after(&mut self, ns: u64, what: &str) -> Value {
        self.wait_json(Duration::from_secs(10), what, |v| {
            v["end_ns"].as_u64().is_some_and(|e| e > ns)
        })
    }

    /// Send `signal` and collect everything it printed.
    pub fn stop(self, signal: i32) -> Output {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        self.wait_exit(Duration::from_secs(20))
    }
}

impl Drop for Diag {
    /// A test that fails while diag runs must not leave it running (its
    /// programs would disturb later tests): SIGINT, then SIGKILL.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A `diag-loadgen` child (the test binary; pass its path) whose stdout
/// lines the test reads; killed on drop, whatever happened.
pub struct Gen {
    child: Child,
    out: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Gen {
    pub fn spawn(loadgen: &str, args: &[&str]) -> Gen {
        let mut child = Command::new(loadgen)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn diag-loadgen");
        let out = BufReader::new(child.stdout.take().unwrap()).lines();
        Gen { child, out }
    }

    /// Its next line of output.
    pub fn line(&mut self) -> String {
        self.out.next().expect("loadgen output").unwrap()
    }

    /// The port of its `PORT <n>` line (listener modes print it first).
    pub fn port(&mut self) -> u16 {
        let l = self.line();
        l.strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("not a port line: {l}"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait for it to exit, which it must do successfully.
    pub fn wait(&mut self) {
        assert!(self.child.wait().unwrap().success());
    }
}

impl Drop for Gen {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `n` IPv4 loopback connections between two diag-loadgen processes: a
/// listener on an ephemeral port and a client that connects, both of which
/// must exit successfully. The client closes first (its side ends in
/// TIME_WAIT).
pub fn loopback_churn(loadgen: &str, n: usize) -> Churn {
    let mut listener = Gen::spawn(loadgen, &["listen", &n.to_string(), "127.0.0.1:0"]);
    let port = listener.port();
    let mut client = Command::new(loadgen)
        .args(["connect", &n.to_string(), &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn diag-loadgen");
    let client_pid = client.id();
    assert!(client.wait().unwrap().success(), "the client failed");
    listener.wait();
    Churn {
        listener: listener.pid(),
        client: client_pid,
        port,
    }
}

/// What [`loopback_churn`] did: its two processes and the listening port.
pub struct Churn {
    pub listener: u32,
    pub client: u32,
    pub port: u16,
}

/// The `Tcp:` counters of /proc/net/snmp (shared by IPv4 and IPv6).
pub fn tcp_snmp() -> HashMap<String, i64> {
    let text = std::fs::read_to_string("/proc/net/snmp").expect("/proc/net/snmp");
    tcp_snmp_from(&text)
}

/// The `Tcp:` counters of a /proc/net/snmp text.
pub fn tcp_snmp_from(text: &str) -> HashMap<String, i64> {
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let names = tcp.next().expect("Tcp header");
    let values = tcp.next().expect("Tcp values");
    names
        .split_whitespace()
        .skip(1)
        .zip(values.split_whitespace().skip(1))
        .map(|(n, v)| (n.to_string(), v.parse().unwrap_or(0)))
        .collect()
}

/// The `TcpExt:` counters of /proc/net/netstat (ListenOverflows,
/// ListenDrops, ...).
pub fn tcp_ext() -> HashMap<String, i64> {
    let text = std::fs::read_to_string("/proc/net/netstat").expect("/proc/net/netstat");
    let mut ext = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let names = ext.next().expect("TcpExt header");
    let values = ext.next().expect("TcpExt values");
    names
        .split_whitespace()
        .skip(1)
        .zip(values.split_whitespace().skip(1))
        .map(|(n, v)| (n.to_string(), v.parse().unwrap_or(0)))
        .collect()
}

/// The BPF objects a process holds, from its fds and their fdinfo.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BpfObjects {
    pub progs: Vec<u64>,
    pub maps: Vec<u64>,
    pub links: Vec<u64>,
}

pub fn bpf_objects_of(pid: u32) -> BpfObjects {
    let mut o = BpfObjects::default();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return o;
    };
    for fd in fds.flatten() {
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        let (list, key) = match target.as_str() {
            "anon_inode:bpf-prog" => (&mut o.progs, "prog_id:"),
            "anon_inode:bpf-map" => (&mut o.maps, "map_id:"),
            "anon_inode:bpf_link" => (&mut o.links, "link_id:"),
            _ => continue,
        };
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        if let Some(id) = info
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
            && !list.contains(&id)
        {
            list.push(id);
        }
    }
    o
}

/// Is a BPF object (`prog`, `map` or `link`) with this id still in the kernel?
pub fn bpf_object_exists(kind: &str, id: u64) -> bool {
    let out = Command::new("bpftool")
        .args([kind, "show", "id", &id.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("bpftool (cargo xtask setup installs it)");
    out.success()
}

/// Wait (up to 5 s: the kernel frees BPF objects after an RCU grace period
/// or from a work queue) until none of `objects` is left; panic naming what
/// is still there.
pub fn assert_released(objects: &BpfObjects, after: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut left = Vec::new();
        for (kind, ids) in [
            ("prog", &objects.progs),
            ("map", &objects.maps),
            ("link", &objects.links),
        ] {
            left.extend(
                ids.iter()
                    .filter(|&&id| bpf_object_exists(kind, id))
                    .map(|id| format!("{kind} {id}")),
            );
        }
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still in the kernel {after}: {left:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------
// Memory cgroups for OOM tests.

pub const V1_ROOT: &str = "/sys/fs/cgroup/memory";

/// Where cgroup2 is mounted (/sys/fs/cgroup/unified on hybrid hosts such
/// as this project's, /sys/fs/cgroup on most current ones).
pub fn cgroup2_root() -> Option<String> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mi.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        right
            .starts_with("cgroup2 ")
            .then(|| left.split_whitespace().nth(4).map(str::to_string))?
    })
}

/// A memory cgroup for one test, removed on drop: whatever still runs in
/// it is killed first (it is ours: only our children were put there).
pub struct MemCgroup {
    pub dir: PathBuf,
    /// The path diag should report, relative to the hierarchy's root.
    pub rel: String,
}

impl MemCgroup {
    pub fn create(root: &str, test: &str, limit_file: &str, limit_bytes: u64) -> MemCgroup {
        let name = format!("diag-oom-{test}-{}", std::process::id());
        let dir = Path::new(root).join(&name);
        if dir.exists() {
            // Left over from a crashed earlier run of this same test pid.
            let _ = std::fs::remove_dir(&dir);
        }
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let cg = MemCgroup {
            dir,
            rel: format!("/{name}"),
        };
        cg.write(limit_file, &limit_bytes.to_string());
        if root == V1_ROOT {
            // On a host with swap, anonymous memory would be swapped out
            // instead of hitting the limit: no swapping in this cgroup.
            cg.write("memory.swappiness", "0");
        }
        cg
    }

    pub fn write(&self, file: &str, value: &str) {
        let p = self.dir.join(file);
        std::fs::write(&p, value).unwrap_or_else(|e| panic!("{} <- {value}: {e}", p.display()));
    }

    pub fn procs(&self) -> Vec<i32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Spawn `LOADGEN ARGS` (the test binary `diag-loadgen`) inside this cgroup: the child moves itself
    /// in (writing 0 to cgroup.procs means "me") before it execs.
    pub fn spawn(&self, loadgen: &str, args: &[&str]) -> Child {
        self.spawn_with_env(loadgen, args, &[])
    }

    /// [`MemCgroup::spawn`] with environment variables set for the child.
    pub fn spawn_with_env(&self, loadgen: &str, args: &[&str], env: &[(&str, &str)]) -> Child {
        let procs = CString::new(
            self.dir
                .join("cgroup.procs")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .unwrap();
        let mut cmd = Command::new(loadgen);
        cmd.args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls (open, write, close) on data
        // prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if n != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.spawn().expect("spawn diag-loadgen in the cgroup")
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let procs = self.procs();
            if procs.is_empty() {
                break;
            }
            for pid in procs {
                // SAFETY: kill(2); these pids are in our test cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if Instant::now() > deadline {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        eprintln!("WARNING: could not remove {}", self.dir.display());
    }
}

/// What a bounded run of `diag` did (see [`diag_bounded`]).
pub struct Bounded {
    /// None when it was killed for running past its time.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Run `diag ARGS` as an unprivileged user would: as user nobody when we
/// are root (setpriv), with its address space limited to `max_as` bytes
/// (prlimit) and killed after `timeout`, so that a regression that eats
/// memory or never ends is a failure, not a hung test run. At most 1 MiB
/// of each output is kept.
pub fn diag_bounded(args: &[&str], max_as: u64, timeout: Duration) -> Bounded {
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--as={max_as}")).arg("--");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        cmd.args([
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ]);
    }
    let started = Instant::now();
    let mut child = cmd
        .arg(diag_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn prlimit diag");
    fn keep(mut r: impl std::io::Read + Send + 'static) -> thread::JoinHandle<String> {
        thread::spawn(move || {
            let mut kept = Vec::new();
            let mut buf = [0u8; 65536];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if kept.len() < 1 << 20 {
                    kept.extend_from_slice(&buf[..n]);
                }
            }
            String::from_utf8_lossy(&kept).into_owned()
        })
    }
    let out = keep(child.stdout.take().unwrap());
    let err = keep(child.stderr.take().unwrap());
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let elapsed = started.elapsed();
    Bounded {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        elapsed,
    }
}

/// Wait until `cond` holds (polled every 50 ms), panicking with `what`
/// after `timeout`: a test waits for the condition, never a fixed time.
/// CLOCK_BOOTTIME now, ns: diag's clock (`ts_ns`, `end_ns`).
pub fn boot_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// The events of a recording so far, as `diag replay FILE tail --json
/// ARGS` prints them (a recording still being written reads up to its
/// last whole frame).
pub fn recorded(file: &Path, args: &[&str]) -> Vec<Value> {
    let o = Command::new(diag_bin())
        .arg("replay")
        .arg(file)
        .args(["tail", "--json"])
        .args(args)
        .stderr(Stdio::null())
        .output()
        .expect("run diag replay");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A loopback port nobody listens on (bound and released at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The body of one `GET /metrics` from 127.0.0.1:`port` (HTTP/1.0, read to
/// the end, 5 s at most per read).
pub fn scrape_metrics(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or(out)
}

/// A scratch directory for one test, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("diag-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Running under CI (CI=true): a test that cannot run must fail loudly.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// True when `tool` runs; else in CI a loud failure, elsewhere a skip.
pub fn require_tool(test: &str, tool: &str, package: &str) -> bool {
    let ok = Command::new(tool)
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if ok {
        return true;
    }
    if in_ci() {
        panic!("{test}: needs {tool} (Debian's {package}; `cargo xtask setup` installs it)");
    }
    skipped(
        test,
        &format!("needs {tool} (apt-get install {package}, or cargo xtask setup)"),
    );
    false
}

/// A network namespace made for a test, removed on drop (even on failure).
pub struct Netns(pub String);

impl Netns {
    /// `ip netns add NAME` (a stale one of that name removed first) with
    /// its loopback up; None when that fails.
    pub fn create(name: &str) -> Option<Netns> {
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        let ok = Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return None;
        }
        let ns = Netns(name.to_string());
        let up = Command::new("ip")
            .args(["-n", name, "link", "set", "lo", "up"])
            .status()
            .is_ok_and(|s| s.success());
        up.then_some(ns)
    }

    /// `ip netns exec NAME PROGRAM`: PROGRAM runs in the namespace (with
    /// the pid `ip` had: it execs).
    pub fn exec(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0, program]);
        c
    }

    /// The namespace's inode, as diag's `netns` fields and `readlink
    /// /proc/PID/ns/net` show it (`ip` bind-mounts it here).
    pub fn inode(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/run/netns/{}", self.0))
            .expect("/run/netns entry")
            .ino()
    }

    /// The namespace's own `Tcp:` counters of /proc/net/snmp.
    pub fn tcp_snmp(&self) -> HashMap<String, i64> {
        let o = self
            .exec("cat")
            .arg("/proc/net/snmp")
            .output()
            .expect("ip netns exec cat");
        assert!(o.status.success(), "{o:?}");
        tcp_snmp_from(&String::from_utf8_lossy(&o.stdout))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The pids whose parent is `pid` (from /proc/PID/stat).
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(st) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let after = st.rsplit_once(')').map(|x| x.1).unwrap_or("");
        if after.split_whitespace().nth(1) == Some(&pid.to_string()) {
            out.push(p);
        }
    }
    out.sort_unstable();
    out
}

/// A real nginx, stopped (SIGQUIT, then SIGKILL) on drop.
pub struct Nginx {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Nginx {
    pub fn start(port: u16) -> Nginx {
        Nginx::start_with(port, "")
    }

    /// With `listen_opts` after the listen address (e.g. "backlog=4").
    pub fn start_with(port: u16, listen_opts: &str) -> Nginx {
        let dir = std::env::temp_dir().join(format!("diag-nginx-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.display();
        let conf = format!(
            "master_process on;\nworker_processes 2;\ndaemon off;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log;\nevents {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  keepalive_timeout 0;\n\
             client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             server {{ listen 127.0.0.1:{port} {listen_opts}; location / {{ return 200 \"ok\\n\"; }} }}\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = Command::new("nginx")
            .args(["-p", &d.to_string(), "-e", &format!("{d}/error.log"), "-c"])
            .arg(dir.join("nginx.conf"))
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        Nginx { child, dir }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait until it listens on `port` with both workers started (no
    /// connection to find out); the workers' pids.
    pub fn workers(&self, port: u16) -> Vec<u32> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let listening = Command::new("ss")
                .args(["-Htln", &format!("( sport = :{port} )")])
                .output()
                .unwrap();
            let w = children_of(self.pid());
            if !listening.stdout.is_empty() && w.len() == 2 {
                return w;
            }
            assert!(Instant::now() < deadline, "nginx did not start: {w:?}");
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGQUIT) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = std::fs::remove_dir_all(&self.dir);
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Per pid, the sockets `ss -tnp` shows in `state` (e.g. `close-wait`,
/// `listening`) with local port `port`; a socket several processes hold
/// counts for each.
pub fn ss_per_pid(state: &str, port: u16) -> HashMap<u32, usize> {
    let filter = format!("( sport = :{port} )");
    let out = Command::new("ss")
        .args(["-Htnp", "state", state, &filter])
        .output()
        .expect("ss (iproute2)");
    let mut per = HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut pids: Vec<u32> = line
            .split("pid=")
            .skip(1)
            .filter_map(|p| p.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
            .collect();
        pids.sort_unstable();
        pids.dedup();
        for p in pids {
            *per.entry(p).or_default() += 1;
        }
    }
    per
}
