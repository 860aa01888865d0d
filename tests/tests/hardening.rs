//! Hardening: a bad environment gets one clear sentence, bad flags get a
//! clap error, per-socket kernel state goes away with the sockets.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use diag_tests::{Diag, Gen, bpf_objects_of, diag_bin, loopback_churn, require_root, serial};

const LOADGEN: &str = env!("CARGO_BIN_EXE_diag-loadgen");

fn one_sentence(args: &[&str], want: &[&str]) {
    let out = Command::new(diag_bin()).args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert_eq!(
        err.lines().count(),
        1,
        "{args:?}: one sentence, no Debug dump: {err}"
    );
    assert!(!err.contains("panicked") && !err.contains("Os {"), "{err}");
    for w in want {
        assert!(err.contains(w), "{args:?}: `{w}` not in: {err}");
    }
}

#[test]
fn a_bad_environment_is_one_clear_sentence() {
    if !require_root("a_bad_environment_is_one_clear_sentence") {
        return;
    }
    // tracefs cannot be mounted there.
    one_sentence(
        &["tail", "--tracefs", "/proc/diag-nowhere"],
        &["tracefs", "mount -t tracefs"],
    );
    // A tracefs without the TCP tracepoint.
    let fake = std::env::temp_dir().join(format!("diag-empty-tracefs-{}", std::process::id()));
    std::fs::create_dir_all(fake.join("events")).unwrap();
    let f = fake.to_str().unwrap().to_string();
    one_sentence(
        &["tail", "--events", "tcp", "--tracefs", &f],
        &["tracepoint sock:inet_sock_set_state is missing"],
    );
    one_sentence(&["conns", "--tracefs", &f], &["sock:inet_sock_set_state"]);
    // A format diag does not understand.
    let tp = fake.join("events/sock/inet_sock_set_state");
    std::fs::create_dir_all(&tp).unwrap();
    std::fs::write(tp.join("format"), "name: inet_sock_set_state\nformat:\n\tfield:int oldstate;\toffset:8;\tsize:4;\tsigned:1;\n").unwrap();
    one_sentence(
        &["tail", "--events", "tcp", "--tracefs", &f],
        &["format diag does not understand", "skaddr"],
    );
    let _ = std::fs::remove_dir_all(&fake);
    // No BTF.
    one_sentence(
        &["record", "-o", "/tmp/x.diag", "--btf", "/nonexistent"],
        &["BTF is missing"],
    );
    // An unwritable recording.
    one_sentence(
        &["record", "-o", "/proc/diag.diag"],
        &["cannot create the recording /proc/diag.diag"],
    );
}

#[test]
fn a_low_memlock_limit_is_handled() {
    if !require_root("a_low_memlock_limit_is_handled") {
        return;
    }
    let _guard = serial();
    // Old kernels charge BPF maps to RLIMIT_MEMLOCK; diag raises it, and
    // current ones charge the memory cgroup instead: either way it runs.
    let mut child = Command::new("prlimit")
        .args(["--memlock=65536:65536", "--"])
        .arg(diag_bin())
        .args(["tail", "--json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("prlimit (util-linux)");
    let mut first = String::new();
    BufReader::new(child.stderr.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let st = child.wait().unwrap();
    assert!(
        first.contains("tracing") || first.contains("RLIMIT_MEMLOCK"),
        "{first}"
    );
    assert!(
        st.success() || first.contains("RLIMIT_MEMLOCK"),
        "{st}: {first}"
    );
}

#[test]
fn bad_flag_values_are_clear_usage_errors() {
    for args in [
        &["conns", "--interval", "0"][..],
        &["conns", "--interval", "10xs"],
        &["conns", "--sort", "nonsense"],
        &["tail", "--events", "tcp,bogus"],
        &["tail", "--family", "5"],
        &["record", "-o", "x", "--max-size", "10"],
        &["record", "-o", "x", "--trigger", "earthquake"],
        &["replay", "x.diag", "--speed", "-2", "tail"],
        &["export", "x.diag", "--format", "pdf"],
    ] {
        let out = Command::new(diag_bin()).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.starts_with("error:"), "{args:?}: {err}");
        assert!(!err.contains("panicked"));
    }
}

/// Entries in one of diag's kernel maps, by name, through bpftool.
fn map_entries(pid: u32, name: &str) -> usize {
    for id in bpf_objects_of(pid).maps {
        let show = Command::new("bpftool")
            .args(["map", "show", "id", &id.to_string(), "--json"])
            .output()
            .unwrap();
        assert!(show.status.success(), "bpftool map show failed: {show:?}");
        let v: serde_json::Value = serde_json::from_slice(&show.stdout)
            .unwrap_or_else(|e| panic!("bpftool map show: {e}: {show:?}"));
        if v["name"] == name {
            let dump = Command::new("bpftool")
                .args(["map", "dump", "id", &id.to_string(), "--json"])
                .output()
                .unwrap();
            assert!(dump.status.success(), "bpftool map dump failed: {dump:?}");
            let entries: serde_json::Value = serde_json::from_slice(&dump.stdout)
                .unwrap_or_else(|e| panic!("bpftool map dump: {e}: {dump:?}"));
            return entries
                .as_array()
                .unwrap_or_else(|| panic!("bpftool map dump is not a list: {entries}"))
                .len();
        }
    }
    panic!("no map {name} held by diag");
}

#[test]
fn per_socket_kernel_state_goes_away_with_the_sockets() {
    if !require_root("per_socket_kernel_state_goes_away_with_the_sockets") {
        return;
    }
    let _guard = serial();
    let diag = Diag::start(&[
        "tail",
        "--json",
        "--events",
        "tcp",
        "--comm",
        "nobody-matches",
    ]);
    let before = map_entries(diag.pid(), "SOCK_OWNERS");
    // While 50 connections are held, their owners are in the map (so the
    // count below measures the map, not a bpftool that shows nothing).
    {
        let mut server = Gen::spawn(LOADGEN, &["listen-hold", "50", "127.0.0.1:0"]);
        let port = server.port();
        let mut client = Gen::spawn(
            LOADGEN,
            &["connect-hold", "50", &format!("127.0.0.1:{port}")],
        );
        assert!(client.line().starts_with("CONNECTED"));
        assert!(server.line().starts_with("ACCEPTED"));
        let held = map_entries(diag.pid(), "SOCK_OWNERS");
        assert!(
            held >= before + 50,
            "50 open connections, but SOCK_OWNERS went from {before} to {held}"
        );
    }
    loopback_churn(LOADGEN, 500);
    // The last closes reach the kernel program at once; give the map a
    // few seconds to be back (the held sockets' FIN handshakes).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut after = map_entries(diag.pid(), "SOCK_OWNERS");
    while after > before + 5 && std::time::Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
        after = map_entries(diag.pid(), "SOCK_OWNERS");
    }
    let out = diag.stop(libc::SIGINT);
    assert!(out.status.success());
    // 1,000 sockets came and went; what is left are sockets of other
    // processes that changed state meanwhile.
    assert!(
        after <= before + 5,
        "SOCK_OWNERS grew from {before} to {after}"
    );
}
