//! diag as a user meets it: privileges, checks, clean exit.

use std::process::Command;

use diag_tests::{
    Diag, assert_released, bpf_object_exists, bpf_objects_of, diag_bin, require_root, serial,
};

#[test]
fn check_passes_as_root() {
    if !require_root("check_passes_as_root") {
        return;
    }
    let out = Command::new(diag_bin()).arg("check").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for name in [
        "privileges",
        "kernel",
        "BTF",
        "tracefs",
        "tracepoints",
        "ring buffer",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("OK") && l.contains(name)),
            "no OK line for {name}: {text}"
        );
    }
}

#[test]
fn missing_btf_is_one_clear_sentence() {
    if !require_root("missing_btf_is_one_clear_sentence") {
        return;
    }
    let out = Command::new(diag_bin())
        .args(["tail", "--btf", "/nonexistent/vmlinux"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("BTF is missing") && err.contains("/nonexistent/vmlinux"),
        "{err}"
    );
    let out = Command::new(diag_bin())
        .args(["check", "--btf", "/nonexistent/vmlinux"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.starts_with("FAIL") && l.contains("BTF"))
    );
}

fn as_nobody(args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(diag_bin())
        .args(args)
        .output()
        .expect("setpriv (util-linux)")
}

#[test]
fn non_root_is_told_it_needs_root() {
    if !require_root("non_root_is_told_it_needs_root") {
        return;
    }
    let out = as_nobody(&["tail"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("needs root") && err.contains("CAP_BPF") && err.contains("CAP_PERFMON"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one sentence, no Debug dump: {err}");
    assert!(!err.contains("panicked"));

    let out = as_nobody(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("FAIL") && l.contains("privileges")),
        "{text}"
    );
}

fn leaves_nothing_behind(signal: i32) {
    let _guard = serial();
    let diag = Diag::start(&["tail", "--json"]);
    let held = bpf_objects_of(diag.pid());
    assert!(
        !held.progs.is_empty() && !held.links.is_empty() && !held.maps.is_empty(),
        "{held:?}"
    );
    for &id in &held.progs {
        assert!(
            bpf_object_exists("prog", id),
            "bpftool sees program {id} while diag runs"
        );
    }
    let out = diag.stop(signal);
    assert!(
        out.status.success(),
        "exit after signal {signal}: {} {:?}",
        out.status,
        out.stderr
    );
    assert!(
        out.stderr.last().unwrap().contains("events seen"),
        "summary line: {:?}",
        out.stderr
    );
    assert_released(&held, &format!("after signal {signal}"));
}

#[test]
fn sigint_detaches_everything() {
    if require_root("sigint_detaches_everything") {
        leaves_nothing_behind(libc::SIGINT);
    }
}

#[test]
fn sigterm_detaches_everything() {
    if require_root("sigterm_detaches_everything") {
        leaves_nothing_behind(libc::SIGTERM);
    }
}

#[test]
fn sighup_detaches_everything() {
    if require_root("sighup_detaches_everything") {
        leaves_nothing_behind(libc::SIGHUP);
    }
}

#[test]
fn sigkill_leaves_nothing_either() {
    if !require_root("sigkill_leaves_nothing_either") {
        return;
    }
    let _guard = serial();
    let diag = Diag::start(&["tail"]);
    let held = bpf_objects_of(diag.pid());
    assert!(!held.progs.is_empty());
    let out = diag.stop(libc::SIGKILL);
    assert_eq!(out.status.code(), None, "killed by a signal");
    assert_released(&held, "after SIGKILL");
}

#[test]
fn bad_flags_are_usage_errors() {
    for args in [
        &["tail", "--port", "0"][..],
        &["tail", "--events", "bogus"],
        &["tail", "--ring-mib", "3"],
        &["nosuch"],
    ] {
        let out = Command::new(diag_bin()).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("error:"), "{args:?}: {err}");
        assert!(!err.contains("panicked"));
    }
}
