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
    // Not while another test unmounts tracefs under it.
    let _g = serial();
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

fn tracefs_mounts() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .filter(|l| l.split_whitespace().nth(2) == Some("tracefs"))
        .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
        .collect()
}

/// Issue 15, item 1: `--tracefs PATH` (and DIAG_TRACEFS) never mounts
/// over PATH: a directory that is not tracefs is refused with one clear
/// sentence, and stays as it was.
#[test]
fn tracefs_elsewhere_is_refused_never_mounted_over() {
    if !require_root("tracefs_elsewhere_is_refused_never_mounted_over") {
        return;
    }
    let _g = serial();
    let dir = std::env::temp_dir().join(format!("diag-tracefs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("precious"), b"keep me").unwrap();
    let d = dir.to_str().unwrap();
    // A diag that mounted anyway would trace on: `timeout` ends it (124).
    let out = Command::new("timeout")
        .arg("20")
        .arg(diag_bin())
        .args(["tail", "--tracefs", d])
        .output()
        .unwrap();
    let _ = Command::new("umount").arg(d).status();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not tracefs"), "{err}");
    let out = Command::new(diag_bin())
        .arg("check")
        .env("DIAG_TRACEFS", "/proc")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("FAIL") && l.contains("/proc is not tracefs")),
        "{text}"
    );
    let mounts = tracefs_mounts();
    assert!(
        !mounts.iter().any(|m| m == d || m == "/proc"),
        "diag mounted over a directory: {mounts:?}"
    );
    assert!(std::path::Path::new("/proc/self/stat").exists());
    assert_eq!(std::fs::read(dir.join("precious")).unwrap(), b"keep me");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Puts tracefs back at its place, whatever the test did.
struct Remount;

impl Drop for Remount {
    fn drop(&mut self) {
        if !tracefs_mounts().iter().any(|m| m == "/sys/kernel/tracing") {
            let _ = Command::new("mount")
                .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
                .status();
        }
    }
}

/// Issue 15, item 1: what diag mounts, it unmounts when it exits.
#[test]
fn diag_unmounts_the_tracefs_it_mounted() {
    if !require_root("diag_unmounts_the_tracefs_it_mounted") {
        return;
    }
    let _g = serial();
    let _back = Remount;
    let st = Command::new("umount")
        .args(["-l", "/sys/kernel/tracing"])
        .status()
        .unwrap();
    assert!(st.success(), "cannot unmount tracefs for the test");
    assert!(!tracefs_mounts().iter().any(|m| m == "/sys/kernel/tracing"));
    let out = Command::new(diag_bin()).arg("check").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("OK") && l.contains("diag mounted it")),
        "{text}"
    );
    assert!(
        !tracefs_mounts().iter().any(|m| m == "/sys/kernel/tracing"),
        "check left tracefs mounted"
    );
    let d = Diag::start(&["tail"]);
    assert!(tracefs_mounts().iter().any(|m| m == "/sys/kernel/tracing"));
    let out = d.stop(libc::SIGTERM);
    assert!(out.status.success(), "{:?}", out.stderr);
    assert!(
        !tracefs_mounts().iter().any(|m| m == "/sys/kernel/tracing"),
        "tail left tracefs mounted"
    );
}

/// Issue 15, item 13: without root, `check` says tracefs is there but not
/// readable, not that it is missing.
#[test]
fn non_root_check_tells_unreadable_from_missing() {
    if !require_root("non_root_check_tells_unreadable_from_missing") {
        return;
    }
    let _g = serial();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata("/sys/kernel/tracing")
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o077,
        0,
        "tracefs is readable by others here: {mode:o}"
    );
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(diag_bin())
        .arg("check")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("tracefs"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.starts_with("FAIL") && line.contains("not readable for this user"),
        "{line}"
    );
    assert!(!line.contains("not mounted"), "{line}");
}
