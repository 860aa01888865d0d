//! Kernel drop reasons: packets the kernel dropped for a known socket,
//! attributed to the socket's owner and its remote end with the reason
//! names the kernel prints, and TCP packets dropped with no socket, per
//! reason host-wide. Cross-checked against the kernel's own text output of
//! the same tracepoint (`skb:kfree_skb`) read through a tracefs instance
//! of our own, over the same window.

use std::{
    collections::BTreeMap,
    io::Write,
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    time::Duration,
};

use diag_tests::{
    Diag, Gen, TempDir, free_port, recorded, require_root, scrape_metrics, serial, wait_until,
};
use serde_json::Value;

const LOADGEN: &str = env!("CARGO_BIN_EXE_diag-loadgen");
const TRACEFS: &str = "/sys/kernel/tracing";

/// The kernel's drop reasons, name -> number, from the tracepoint's
/// format (the same table diag reads; the test reads it on its own).
fn reason_numbers() -> BTreeMap<String, u32> {
    let f = std::fs::read_to_string(format!("{TRACEFS}/events/skb/kfree_skb/format"))
        .expect("skb:kfree_skb format (diag mounts tracefs)");
    let table = f
        .split_once("__print_symbolic(REC->reason,")
        .expect("a reason table")
        .1;
    let mut out = BTreeMap::new();
    for entry in table.split('{').skip(1) {
        let Some((n, rest)) = entry.split_once(',') else {
            continue;
        };
        let name = rest.split('"').nth(1).unwrap_or("");
        if let Ok(n) = n.trim().parse() {
            out.insert(name.to_string(), n);
        }
    }
    out
}

/// A tracefs instance of our own with `skb:kfree_skb` enabled under a
/// filter, raw pointers (`hash-ptr` off) and the boot clock; disabled and
/// removed on drop.
struct Instance {
    dir: PathBuf,
}

impl Instance {
    fn new(name: &str, filter: &str) -> Instance {
        let dir = PathBuf::from(format!(
            "{TRACEFS}/instances/diag-test-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).expect("create a tracefs instance");
        let i = Instance { dir };
        i.write("options/hash-ptr", "0");
        i.write("buffer_size_kb", "4096");
        i.write("events/skb/kfree_skb/filter", filter);
        i.write("trace", "");
        i.write("events/skb/kfree_skb/enable", "1");
        i
    }

    fn write(&self, file: &str, v: &str) {
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(self.dir.join(file))
            .and_then(|mut f| f.write_all(v.as_bytes()))
            .unwrap_or_else(|e| panic!("write {v} to {}/{file}: {e}", self.dir.display()));
    }

    fn stop(&self) {
        self.write("events/skb/kfree_skb/enable", "0");
    }

    /// The recorded `kfree_skb` lines, after checking none was lost.
    fn lines(&self) -> Vec<String> {
        let text = std::fs::read_to_string(self.dir.join("trace")).unwrap();
        let head = text
            .lines()
            .find(|l| l.contains("entries-in-buffer/entries-written"))
            .unwrap_or("");
        let counts: Vec<&str> = head
            .rsplit(' ')
            .find(|w| w.contains('/'))
            .unwrap_or("0/0")
            .split('/')
            .collect();
        assert_eq!(
            counts.first(),
            counts.get(1),
            "the tracefs instance lost entries: {head}"
        );
        text.lines()
            .filter(|l| l.contains("kfree_skb:"))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("events/skb/kfree_skb/enable"), "0");
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A field `key=value` (or `reason: NAME`) of a kfree_skb trace line.
fn trace_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    if key == "reason" {
        return line.rsplit_once("reason: ").map(|x| x.1.trim());
    }
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
}

/// The count per reason name in `lines` for which `keep` holds.
fn per_reason(lines: &[String], keep: impl Fn(&str) -> bool) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for l in lines.iter().filter(|l| keep(l)) {
        if let Some(r) = trace_field(l, "reason") {
            *out.entry(r.to_string()).or_default() += 1;
        }
    }
    out
}

/// diag's `tcp_drop` events for socket `skaddr` (as `0x...`), per reason.
fn diag_per_reason(events: &[Value], skaddr: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for e in events
        .iter()
        .filter(|e| e["event"] == "tcp_drop" && e["skaddr"] == skaddr)
    {
        *out.entry(e["reason"].as_str().unwrap().to_string())
            .or_default() += e["count"].as_u64().unwrap();
    }
    out
}

/// A receiver (diag-loadgen) that never reads from a 2 KiB receive
/// buffer, and a sender (this process) that fills it; the kernel drops the
/// sender's zero-window probes for the receiver's socket. Every drop for
/// that socket that the kernel prints in our tracefs instance is in
/// diag's events, with the same reason names, the receiver's pid and the
/// sender's address, and in a recording of the same run.
#[test]
fn drops_for_a_socket_are_the_owners_with_the_kernels_reasons() {
    if !require_root("drops_for_a_socket_are_the_owners_with_the_kernels_reasons") {
        return;
    }
    let _guard = serial();
    let dir = TempDir::new("drops-socket");
    let file = dir.path("drops.diag");
    let f = file.to_str().unwrap();
    let recorder = Diag::start(&["record", "-o", f]);
    let mut diag = Diag::start(&["tail", "--events", "drop", "--json"]);
    let reasons = reason_numbers();
    let skip = reasons["NOT_SPECIFIED"];
    let trace = Instance::new("socket", &format!("reason > {skip} && rx_sk != 0"));

    let mut receiver = Gen::spawn(LOADGEN, &["stall-receiver", "2048", "127.0.0.1:0"]);
    let port = receiver.port();
    let pid = receiver.pid();
    let mut sender = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let sender_addr: SocketAddr = sender.local_addr().unwrap();
    assert!(receiver.line().starts_with("ACCEPTED"));
    sender.set_nonblocking(true).unwrap();
    // Fill the window: writes stop being taken once it is closed.
    let chunk = vec![0u8; 65536];
    let mut refused = 0;
    while refused < 20 {
        match sender.write(&chunk) {
            Ok(_) => refused = 0,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                refused += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("sender: {e}"),
        }
    }
    // The probes come at the retransmission timer's pace: 0.2 s, 0.6 s,
    // 1.4 s... after the window closed. Three drops for the receiver.
    let mut events: Vec<Value> = Vec::new();
    let mut skaddr = String::new();
    let mut seen = 0;
    diag.wait_line(
        Duration::from_secs(20),
        "three drops for the receiver's socket",
        |l| {
            let Ok(v) = serde_json::from_str::<Value>(l) else {
                return false;
            };
            if v["event"] == "tcp_drop" && v["pid"] == u64::from(pid) {
                skaddr = v["skaddr"].as_str().unwrap().to_string();
                seen += 1;
            }
            events.push(v);
            seen >= 3
        },
    );
    // The receiver goes (its close resets the connection: no more drops
    // for that socket), then the window closes.
    drop(receiver);
    wait_until(
        Duration::from_secs(10),
        "the sender to see the reset",
        || {
            let mut b = [0u8; 1];
            matches!(
                std::io::Read::read(&mut sender, &mut b),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset
            )
        },
    );
    trace.stop();
    let lines = trace.lines();
    let raw = skaddr.trim_start_matches("0x").to_string();
    let kernel = per_reason(&lines, |l| {
        trace_field(l, "rx_sk").is_some_and(|s| s.trim_start_matches('0') == raw)
    });
    assert!(
        kernel.values().sum::<u64>() >= 3,
        "the kernel printed {kernel:?} for socket {skaddr}; lines: {lines:?}"
    );
    // Everything the kernel printed for the socket reaches diag (within
    // its drain interval).
    let mut last = BTreeMap::new();
    wait_until(
        Duration::from_secs(10),
        "diag's drops for the socket to equal the kernel's",
        || {
            while let Some(l) = diag.next_line(Duration::from_millis(50)) {
                if let Ok(v) = serde_json::from_str(&l) {
                    events.push(v);
                }
            }
            last = diag_per_reason(&events, &skaddr);
            last == kernel
        },
    );
    assert_eq!(last, kernel, "diag (left) and the kernel's own trace");
    for e in events
        .iter()
        .filter(|e| e["event"] == "tcp_drop" && e["skaddr"] == skaddr.as_str())
    {
        assert_eq!(e["pid"], u64::from(pid), "{e}");
        assert_eq!(e["comm"], "diag-loadgen", "{e}");
        assert_eq!(e["sport"], u64::from(port), "{e}");
        assert_eq!(e["daddr"], sender_addr.ip().to_string(), "{e}");
        assert_eq!(e["dport"], u64::from(sender_addr.port()), "{e}");
        let name = e["reason"].as_str().unwrap();
        assert_eq!(
            u64::from(reasons[name]),
            e["reason_code"].as_u64().unwrap(),
            "{e}"
        );
        assert!(reasons[name] > skip, "{e}");
    }
    drop(diag);

    // The recording: the same drops on replay, and in conns' "Kernel
    // drops" rows for the receiver and the sender's end.
    let out = recorder.stop(libc::SIGINT);
    assert!(out.status.success(), "{:?}", out.stderr);
    let replayed = recorded(&file, &["--events", "drop"]);
    assert_eq!(diag_per_reason(&replayed, &skaddr), kernel);
    let conns = std::process::Command::new(diag_tests::diag_bin())
        .args(["replay", f, "conns", "--json", "--top", "0"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&conns.stdout);
    let snap: Value = text
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no conns snapshot: {text}"));
    let rows: Vec<&Value> = snap["socket_drops"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["pid"] == u64::from(pid))
        .collect();
    let mut from_rows = BTreeMap::new();
    for r in &rows {
        assert_eq!(r["remote"], sender_addr.to_string(), "{r}");
        assert_eq!(r["comm"], "diag-loadgen", "{r}");
        *from_rows
            .entry(r["reason"].as_str().unwrap().to_string())
            .or_insert(0u64) += r["count"].as_u64().unwrap();
    }
    assert_eq!(from_rows, kernel, "replayed conns rows: {rows:?}");
}

/// Connects to a closed port: one SYN each that the kernel drops with no
/// socket (NO_SOCKET). diag's host-wide count (`diag serve`) grows by as
/// many as the client sent, and as many as the kernel printed for
/// `tcp_v4_rcv` in our tracefs instance over the same window.
#[test]
fn packets_to_a_closed_port_are_unowned_no_socket_drops() {
    if !require_root("packets_to_a_closed_port_are_unowned_no_socket_drops") {
        return;
    }
    let _guard = serial();
    const N: u64 = 25;
    let mport = free_port();
    let _diag = Diag::start(&["serve", "--listen", &format!("127.0.0.1:{mport}")]);
    let reasons = reason_numbers();
    let no_socket = reasons["NO_SOCKET"];
    let trace = Instance::new("closed", &format!("reason == {no_socket}"));
    let metric = || {
        scrape_metrics(mport)
            .lines()
            .find(|l| l.starts_with("diag_tcp_unowned_drops_total{reason=\"NO_SOCKET\"}"))
            .and_then(|l| l.rsplit_once(' '))
            .and_then(|(_, v)| v.parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    };
    // Anything counted from here on is in the instance's window too.
    let before = metric();
    let closed = free_port();
    for _ in 0..N {
        let e = TcpStream::connect(("127.0.0.1", closed)).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    }
    let mut now = 0;
    wait_until(
        Duration::from_secs(15),
        "diag_tcp_unowned_drops_total{reason=NO_SOCKET} to grow by N",
        || {
            now = metric();
            now >= before + N
        },
    );
    trace.stop();
    let lines = trace.lines();
    let kernel = per_reason(&lines, |l| {
        trace_field(l, "location").is_some_and(|s| s.starts_with("tcp_v4_rcv"))
    });
    assert_eq!(
        kernel.get("NO_SOCKET").copied(),
        Some(N),
        "the kernel's own trace: {lines:?}"
    );
    assert_eq!(now - before, N, "diag's host-wide NO_SOCKET count");
}
