//! The incident review of a real recording: the text report (wrapped, one
//! hint per process and destination with its peak, every time within the
//! recording), `replay ... conns --at` against what `ss` showed at that
//! moment, and `report --from/--to` against the exported events.

use std::{
    process::Command,
    thread::sleep,
    time::{Duration, Instant},
};

use diag_tests::{Diag, Gen, TempDir, diag_bin, require_root, require_tool, serial, ss_per_pid};
use serde_json::Value;

const LOADGEN: &str = env!("CARGO_BIN_EXE_diag-loadgen");
const CPUHOG: &str = env!("CARGO_BIN_EXE_diag-cpuhog");
const WIDTH: usize = 100;

fn diag(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(diag_bin()).args(args).output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The wall clock now, as RFC 3339 in UTC with microseconds, from date(1).
fn now_rfc3339() -> String {
    let o = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%S.%6NZ"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// An RFC 3339 time as the local HH:MM:SS the report prints, from date(1).
fn local_hms(rfc3339: &str) -> String {
    let o = Command::new("date")
        .args(["-d", rfc3339, "+%H:%M:%S"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// One second before the RFC 3339 time `t`, in UTC with microseconds.
fn second_before(t: &str) -> String {
    let o = Command::new("date")
        .args([
            "-u",
            "-d",
            &format!("{t} - 1 second"),
            "+%Y-%m-%dT%H:%M:%S.%6NZ",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// `secs` after the RFC 3339 time `t`, to the whole second, in UTC.
fn plus_secs(t: &str, secs: i64) -> String {
    let o = Command::new("date")
        .args([
            "-u",
            "-d",
            &format!("{t} + {secs} seconds"),
            "+%Y-%m-%dT%H:%M:%SZ",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// The number right after `before` in `text` (up to the next space).
fn number_after(text: &str, before: &str) -> Option<f64> {
    let rest = &text[text.find(before)? + before.len()..];
    rest.split(' ').next()?.parse().ok()
}

/// The report's hints, continuation lines joined to their first.
fn hints_of(report: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut inside = false;
    for l in report.lines() {
        if l.starts_with("  Hints") {
            inside = true;
            continue;
        }
        if !inside {
            continue;
        }
        if let Some(more) = l.strip_prefix("      ") {
            let last = out.last_mut().expect("a continuation after a hint");
            last.push(' ');
            last.push_str(more.trim_start());
        } else if let Some(h) = l.strip_prefix("    ") {
            out.push(h.to_string());
        } else {
            break;
        }
    }
    out
}

fn pids_from(g: &mut Gen, prefix: &str, n: usize) -> Vec<u32> {
    (0..n)
        .map(|_| {
            let l = g.line();
            l.strip_prefix(prefix)
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("expected {prefix}PID, got {l}"))
        })
        .collect()
}

/// Churn from one process to two destinations and a CLOSE_WAIT leak in
/// two forked workers, in two waves; `ss` is sampled after each wave.
#[test]
fn the_review_of_a_real_recording_is_exact_and_readable() {
    let test = "the_review_of_a_real_recording_is_exact_and_readable";
    if !require_root(test) || !require_tool(test, "ss", "iproute2") {
        return;
    }
    let _guard = serial();
    const W: usize = 2;
    const K: usize = 4;
    let dir = TempDir::new("review");
    let file = dir.path("incident.diag");
    let f = file.to_str().unwrap();
    let recorder = Diag::start(&[
        "record",
        "-o",
        f,
        "--reconcile",
        "1s",
        "--events",
        "tcp,oom,stall",
    ]);
    let started = Instant::now();
    // Run-queue stalls: a busy loop and a SCHED_IDLE victim on CPU 0.
    let spawn = |args: &[&str]| {
        Command::new(CPUHOG)
            .args(args)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn diag-cpuhog")
    };
    let mut hog = spawn(&["hog", "1", "6", "0"]);
    let mut victim = spawn(&["victim", "6", "0", "idle"]);
    let mut churn = Gen::spawn(LOADGEN, &["churn", "40", "2"]);
    let churn_pid = churn.pid();
    let (pa, pb) = (churn.port(), churn.port());
    let mut server = Gen::spawn(
        LOADGEN,
        &[
            "prefork",
            &W.to_string(),
            &K.to_string(),
            "127.0.0.1:0",
            "hold",
        ],
    );
    let port = server.port();
    let workers = pids_from(&mut server, "WORKER ", W);
    let target = format!("127.0.0.1:{port}");
    let half = (W * K / 2).to_string();

    // Wave 1: half the connections, accepted and held, then the client
    // goes: the workers hold them in CLOSE_WAIT.
    let mut client = Gen::spawn(LOADGEN, &["connect-hold", &half, &target]);
    assert_eq!(client.line(), format!("CONNECTED {half}"));
    sleep(Duration::from_millis(500));
    drop(client);
    sleep(Duration::from_secs(2));
    let t1 = now_rfc3339();
    let ss1 = ss_per_pid("close-wait", port);
    assert_eq!(ss1.values().sum::<usize>(), W * K / 2, "{ss1:?}");

    // Wave 2: the other half; every worker then holds K.
    let mut client = Gen::spawn(LOADGEN, &["connect-hold", &half, &target]);
    assert_eq!(client.line(), format!("CONNECTED {half}"));
    assert_eq!(pids_from(&mut server, "DONE ", W).len(), W);
    sleep(Duration::from_millis(500));
    drop(client);
    sleep(Duration::from_secs(2));
    let t2 = now_rfc3339();
    let ss2 = ss_per_pid("close-wait", port);
    for w in &workers {
        assert_eq!(ss2.get(w).copied(), Some(K), "{ss2:?}");
    }
    // Both waves past the report's 10 s CLOSE_WAIT threshold.
    sleep(Duration::from_secs(17).saturating_sub(started.elapsed()));
    assert!(hog.wait().unwrap().success() && victim.wait().unwrap().success());
    let rec = recorder.stop(libc::SIGINT);
    assert!(rec.status.success(), "{:?}", rec.stderr);
    drop(churn);
    drop(server);

    // The recording's span and events, from the export.
    let (ok, jsonl, err) = diag(&["export", f, "--format", "jsonl"]);
    assert!(ok, "{err}");
    let lines: Vec<Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let times: Vec<&str> = lines.iter().filter_map(|l| l["time"].as_str()).collect();
    let (first, last) = (*times.iter().min().unwrap(), *times.iter().max().unwrap());
    let not_events = [
        "recording",
        "health",
        "socket_table",
        "process_table",
        "oom_context",
        "sched",
        "pressure",
        "end",
        "damage",
    ];
    let events: Vec<&Value> = lines
        .iter()
        .filter(|l| {
            l["event"]
                .as_str()
                .is_some_and(|e| !not_events.contains(&e))
        })
        .collect();

    // The text report, wrapped.
    let width = WIDTH.to_string();
    let (ok, report, err) = diag(&["report", f, "--width", &width]);
    assert!(ok, "{err}");
    eprintln!("{report}");
    for l in report.lines() {
        assert!(l.chars().count() <= WIDTH, "longer than {WIDTH}: {l:?}");
    }
    assert!(
        report.lines().any(|l| l.starts_with("      ")),
        "wrapped:\n{report}"
    );
    // Every time it names is within the recording.
    let (lo, hi) = (local_hms(first), local_hms(last));
    if lo <= hi {
        for w in report.split(|c: char| !(c.is_ascii_digit() || c == ':')) {
            if w.len() == 8 && w.as_bytes()[2] == b':' && w.as_bytes()[5] == b':' {
                assert!(
                    w >= lo.as_str() && w <= hi.as_str(),
                    "{w} is outside the recording ({lo} to {hi}):\n{report}"
                );
            }
        }
    }

    // One hint per process, destination and kind, each with its peak: the
    // largest value of any whole interval in a replay's snapshots.
    let (ok, watch, err) = diag(&["replay", f, "conns", "--watch", "--json", "--top", "0"]);
    assert!(ok, "{err}");
    let snaps: Vec<Value> = watch
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|s: &Value| s["interval_s"].as_f64().is_some_and(|i| i >= 0.5))
        .collect();
    let peak = |has: &dyn Fn(&str) -> bool, before: &str| -> Option<f64> {
        snaps
            .iter()
            .flat_map(|s| s["hints"].as_array().unwrap().iter())
            .filter_map(|h| h.as_str())
            .filter(|h| has(h))
            .filter_map(|h| number_after(h, before))
            .reduce(f64::max)
    };
    let hints = hints_of(&report);
    let mut wanted = Vec::new();
    for p in [pa, pb] {
        let who = format!("pid {churn_pid} (diag-loadgen) opened ");
        let dest = format!("conns/s to 127.0.0.1:{p},");
        wanted.push((who, dest, "opened "));
    }
    for w in &workers {
        let who = format!("pid {w} (diag-loadgen) has ");
        wanted.push((who, "sockets in CLOSE_WAIT".to_string(), "has "));
    }
    for (who, what, before) in &wanted {
        let is = |h: &str| h.contains(who.as_str()) && h.contains(what.as_str());
        let mine: Vec<&String> = hints.iter().filter(|h| is(h)).collect();
        assert_eq!(mine.len(), 1, "one hint for {who}{what}:\n{report}");
        let want = peak(&is, before).unwrap_or_else(|| panic!("no {who}{what} in\n{watch}"));
        assert_eq!(
            number_after(mine[0], before),
            Some(want),
            "{who}{what}: the peak of the replay's intervals:\n{report}"
        );
        assert!(
            mine[0].contains("peak at ") || mine[0].contains("(at "),
            "{}",
            mine[0]
        );
    }
    // No other hint repeats either.
    let mut seen = std::collections::HashSet::new();
    for h in &hints {
        let key = h
            .split(" (peak at")
            .next()
            .unwrap()
            .split(" (at ")
            .next()
            .unwrap();
        assert!(seen.insert(key.to_string()), "repeated: {h}\n{report}");
    }

    // The state at an instant: CLOSE_WAIT per worker as ss showed it then.
    for (t, ss) in [(&t1, &ss1), (&t2, &ss2)] {
        let (ok, at, err) = diag(&["replay", f, "conns", "--json", "--top", "0", "--at", t]);
        assert!(ok, "{err}");
        let snaps: Vec<Value> = at
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(snaps.len(), 1, "one snapshot: {at}");
        // The stalls of the second before it, as exported.
        let before = second_before(t);
        let stalls = events
            .iter()
            .filter(|e| {
                let et = e["time"].as_str().unwrap();
                e["event"] == "stall" && et >= before.as_str() && et <= t.as_str()
            })
            .count();
        assert_eq!(snaps[0]["stalls"]["count"], stalls, "from {before} to {t}");
        for w in &workers {
            let cw = snaps[0]["processes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["pid"] == *w)
                .map_or(0, |r| r["states"]["close_wait"].as_u64().unwrap());
            assert_eq!(
                cw,
                ss.get(w).copied().unwrap_or(0) as u64,
                "worker {w} at {t}: ss {ss:?}"
            );
        }
    }
    // Half a second after a stall the hog caused in the first half of its
    // second (not at a fixed time: a loaded host may let the victim run in
    // any one second; and not at a stall's own time, which the export
    // gives to the microsecond and diag to the nanosecond).
    let t1 = events
        .iter()
        .filter(|e| e["event"] == "stall")
        .filter_map(|e| e["time"].as_str())
        .filter_map(|t| t.split_once('.'))
        .filter(|(_, frac)| frac.as_bytes().first().is_some_and(|d| *d < b'5'))
        .map(|(whole, _)| format!("{whole}.500000Z"))
        .next_back()
        .expect("the hog made its victim wait: no stall in the recording");
    let (ok, at, err) = diag(&["replay", f, "conns", "--at", &t1]);
    assert!(ok, "{err}");
    eprintln!("{at}");
    // The stalls of the second before it, as exported.
    let before = second_before(&t1);
    let stalls = events
        .iter()
        .filter(|e| {
            let t = e["time"].as_str().unwrap();
            e["event"] == "stall" && t >= before.as_str() && t <= t1.as_str()
        })
        .count();
    assert!(
        stalls > 0,
        "the hog made its victim wait in the second before {t1}"
    );
    assert!(
        at.contains(&format!(
            "Run-queue stalls in the 1.00s before {}: {stalls}\n",
            local_hms(&t1)
        )),
        "{stalls} stalls from {before} to {t1}:\n{at}"
    );
    assert_eq!(at.matches("diag conns  ").count(), 1, "{at}");
    let (ok, _, err) = diag(&["replay", f, "conns", "--at", &plus_secs(last, 3600)]);
    assert!(
        !ok && err.contains("is after the recording: it spans"),
        "{err}"
    );

    // A window: the counts are the exported events inside it.
    let (from, to) = (plus_secs(first, 5), plus_secs(first, 10));
    let (ok, win, err) = diag(&["report", f, "--from", &from, "--to", &to]);
    assert!(ok, "{err}");
    eprintln!("{win}");
    let bound = |t: &str| t.replace('Z', ".000000Z");
    let (fb, tb) = (bound(&from), bound(&to));
    // The export's times are whole microseconds, diag's bounds
    // nanoseconds (both ends included): an event in --to's own
    // microsecond may lie at it or just after, so diag may count it or
    // not; every other event is in or out by its exported time alone.
    let inside: Vec<&&Value> = events
        .iter()
        .filter(|e| {
            let t = e["time"].as_str().unwrap();
            t >= fb.as_str() && t < tb.as_str()
        })
        .collect();
    let at_to: Vec<&&Value> = events
        .iter()
        .filter(|e| e["time"].as_str() == Some(tb.as_str()))
        .collect();
    let counted = |n: usize, edge: usize, line: &dyn Fn(usize) -> String| {
        (n..=n + edge).any(|k| win.contains(&line(k)))
    };
    assert!(
        counted(inside.len(), at_to.len(), &|k| format!("Events: {k};")),
        "{} events in the window ({} more in --to's microsecond):\n{win}",
        inside.len(),
        at_to.len()
    );
    let stall = |e: &&&&Value| e["event"] == "stall";
    let stalls = inside.iter().filter(stall).count();
    assert!(
        counted(stalls, at_to.iter().filter(stall).count(), &|k| format!(
            "Stalls (run-queue waits over the threshold): {k}\n"
        )),
        "{stalls} stalls in the window:\n{win}"
    );
    assert!(
        win.contains(&format!(
            "WINDOW: {} to {} (5.00s) only",
            local_hms(&from),
            local_hms(&to)
        )),
        "{win}"
    );
    let open = |e: &&&&Value| {
        e["event"] == "tcp_state"
            && e["pid"] == churn_pid
            && e["old_state"] == "CLOSE"
            && e["new_state"] == "SYN_SENT"
    };
    let opened = inside.iter().filter(open).count();
    assert!(opened > 100, "churn in the window: {opened}");
    let opens_at_to = at_to.iter().filter(open).count();
    assert!(
        (opened..=opened + opens_at_to).any(|k| win
            .lines()
            .any(|l| l.contains(&format!("pid {churn_pid} "))
                && l.contains(&format!("(active {k}, ")))),
        "{opened} active opens of pid {churn_pid}:\n{win}"
    );
    // Bad windows are refused, naming the recording's span.
    let (ok, _, err) = diag(&["report", f, "--from", &to, "--to", &from]);
    assert!(!ok && err.contains("is later than --to"), "{err}");
    let (ok, _, err) = diag(&["report", f, "--from", &plus_secs(first, -3600)]);
    assert!(
        !ok && err.contains("is before the recording: it spans"),
        "{err}"
    );
}
