//! Running without full root: `diag serve` and `diag record` as the
//! unprivileged user nobody, with only the capabilities the README lists
//! (setpriv drops every other one, from the bounding set too). The kernel
//! says which capabilities the process has (/proc/PID/status); the counts
//! are checked against the test's own processes; a missing required
//! capability is refused in one sentence.

use std::{
    os::unix::fs::chown,
    process::{Command, Stdio},
    time::Duration,
};

use diag_tests::{
    Diag, Gen, TempDir, diag_bin, free_port, loopback_churn, recorded, require_root,
    scrape_metrics, serial, wait_until,
};

const LOADGEN: &str = env!("CARGO_BIN_EXE_diag-loadgen");

/// What `diag serve` and `diag record` need (the README's table), as
/// setpriv names them, with their capability numbers.
const NEEDED: &[(&str, u32)] = &[
    ("bpf", 39),
    ("perfmon", 38),
    ("dac_read_search", 2),
    ("sys_ptrace", 19),
    ("syslog", 34),
];

const NOBODY: u32 = 65534;

/// setpriv running `diag ARGS` as nobody with exactly `caps` (ambient, so
/// they survive the exec; nothing else in the bounding set).
fn as_nobody_with(caps: &[&str], args: &[&str]) -> Command {
    let list: String = std::iter::once("-all".to_string())
        .chain(caps.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = Command::new("setpriv");
    cmd.args([
        format!("--reuid={NOBODY}"),
        format!("--regid={NOBODY}"),
        "--clear-groups".into(),
        format!("--inh-caps={list}"),
        format!("--ambient-caps={list}"),
        format!("--bounding-set={list}"),
    ])
    .arg(diag_bin())
    .args(args);
    cmd
}

fn names() -> Vec<&'static str> {
    NEEDED.iter().map(|c| c.0).collect()
}

/// The kernel's view of a process: (real uid, effective capability mask).
fn uid_and_caps(pid: u32) -> (u32, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or_else(|| panic!("no {k} in {status}"))
            .trim()
            .to_string()
    };
    let uid = field("Uid:")
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let eff = u64::from_str_radix(&field("CapEff:"), 16).unwrap();
    (uid, eff)
}

fn expected_mask() -> u64 {
    NEEDED.iter().map(|c| 1u64 << c.1).sum()
}

/// The value of the series `name{labels...}` in a scrape (labels in any
/// order), if it is there.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, ""));
        (n == name
            && labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
        .then(|| value.parse().ok())
        .flatten()
    })
}

#[test]
fn serve_runs_as_nobody_with_only_the_listed_capabilities() {
    if !require_root("serve_runs_as_nobody_with_only_the_listed_capabilities") {
        return;
    }
    let _guard = serial();
    const N: usize = 20;
    const K: usize = 4;
    // Connections of root's processes from before diag started: only
    // their /proc/PID/fd can tell diag who holds them.
    let mut server = Gen::spawn(LOADGEN, &["listen-hold", &K.to_string(), "127.0.0.1:0"]);
    let sport = server.port();
    let mut holder = Gen::spawn(
        LOADGEN,
        &[
            "connect-hold",
            &K.to_string(),
            &format!("127.0.0.1:{sport}"),
        ],
    );
    assert_eq!(holder.line(), format!("CONNECTED {K}"));
    assert_eq!(server.line(), "ACCEPTED");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let diag = Diag::start_cmd(as_nobody_with(
        &names(),
        &["serve", "--listen", &addr, "--top", "500"],
    ));
    assert_eq!(
        uid_and_caps(diag.pid()),
        (NOBODY, expected_mask()),
        "nobody, with exactly the listed capabilities"
    );
    let churn = loopback_churn(LOADGEN, N);
    let (client, listener) = (churn.client.to_string(), churn.listener.to_string());
    let n = N as f64;
    let mut last = String::new();
    wait_until(Duration::from_secs(15), "the churn in the metrics", || {
        last = scrape_metrics(port);
        metric(
            &last,
            "diag_tcp_opens_total",
            &[("pid", &client), ("direction", "active")],
        ) == Some(n)
            && metric(
                &last,
                "diag_tcp_opens_total",
                &[("pid", &listener), ("direction", "passive")],
            ) == Some(n)
    });
    assert_eq!(metric(&last, "diag_healthy", &[]), Some(1.0));
    let held = |pid: u32| {
        metric(
            &scrape_metrics(port),
            "diag_tcp_sockets",
            &[("pid", &pid.to_string()), ("state", "ESTAB")],
        )
    };
    wait_until(
        Duration::from_secs(15),
        "the held connections' owners (from /proc/PID/fd)",
        || held(holder.pid()) == Some(K as f64) && held(server.pid()) == Some(K as f64),
    );
    assert_eq!(metric(&last, "diag_events_dropped_total", &[]), Some(0.0));
    let out = diag.stop(libc::SIGTERM);
    assert!(out.status.success(), "{} {:?}", out.status, out.stderr);
    // Nothing was given up for the missing root: no feature notes.
    assert!(
        !out.stderr.iter().any(|l| l.contains("not seen")),
        "{:?}",
        out.stderr
    );
}

#[test]
fn record_runs_as_nobody_with_only_the_listed_capabilities() {
    if !require_root("record_runs_as_nobody_with_only_the_listed_capabilities") {
        return;
    }
    let _guard = serial();
    const N: usize = 15;
    let dir = TempDir::new("caps-record");
    chown(&dir.0, Some(NOBODY), Some(NOBODY)).unwrap();
    let file = dir.path("nobody.diag");
    let f = file.to_str().unwrap();
    let diag = Diag::start_cmd(as_nobody_with(&names(), &["record", "-o", f]));
    assert_eq!(uid_and_caps(diag.pid()), (NOBODY, expected_mask()));
    let churn = loopback_churn(LOADGEN, N);
    let out = diag.stop(libc::SIGINT);
    assert!(out.status.success(), "{} {:?}", out.status, out.stderr);
    let client = u64::from(churn.client);
    let events = recorded(&file, &[]);
    let opens = events
        .iter()
        .filter(|e| {
            e["event"] == "tcp_state"
                && e["pid"] == client
                && e["old_state"] == "SYN_SENT"
                && e["new_state"] == "ESTABLISHED"
        })
        .count();
    assert_eq!(opens, N, "the client's connects in the recording");
    // As much as root records: five transitions per connection.
    let all = recorded(&file, &["--pid", &client.to_string()]).len();
    assert_eq!(all, 5 * N, "the client's transitions");
}

#[test]
fn a_missing_required_capability_is_refused_in_one_sentence() {
    if !require_root("a_missing_required_capability_is_refused_in_one_sentence") {
        return;
    }
    let _guard = serial();
    for missing in ["bpf", "perfmon", "dac_read_search"] {
        let caps: Vec<&str> = names().into_iter().filter(|c| *c != missing).collect();
        let port = free_port().to_string();
        let out = as_nobody_with(&caps, &["serve", "--listen", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "without {missing}: {err}");
        assert_eq!(err.lines().count(), 1, "without {missing}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        // It names what to give it.
        let hint = if missing == "dac_read_search" {
            "CAP_DAC_READ_SEARCH"
        } else {
            "CAP_BPF and CAP_PERFMON"
        };
        assert!(err.contains(hint), "without {missing}: {err}");
    }
}
