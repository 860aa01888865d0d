//! `cargo xtask dist`: the Debian package installs with apt like any
//! system tool, `diag check` runs from /usr/bin, its man pages,
//! completions, rules, dashboard and systemd units are where they belong
//! (the units pass `systemd-analyze verify`), and it is removed cleanly.
//! Root only (it installs a package); it packages the debug build to stay
//! quick.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use diag_tests::{TempDir, require_root, serial};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{:?}: {e}", cmd.get_program()));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "diag"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Purges the package, even when the test fails.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("apt-get")
            .args(["purge", "-y", "-q", "diag"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output();
    }
}

/// Files of the package, by where they must be.
const SHIPPED: &[&str] = &[
    "/usr/bin/diag",
    "/usr/share/man/man1/diag.1.gz",
    "/usr/share/man/man1/diag-serve.1.gz",
    "/usr/share/man/man1/diag-record.1.gz",
    "/usr/share/man/man1/diag-check.1.gz",
    "/usr/share/bash-completion/completions/diag",
    "/usr/share/zsh/vendor-completions/_diag",
    "/usr/share/fish/vendor_completions.d/diag.fish",
    "/usr/share/diag/diag.rules.yml",
    "/usr/share/diag/diag.rules.test.yml",
    "/usr/share/diag/diag.dashboard.json",
    "/lib/systemd/system/diag.service",
    "/lib/systemd/system/diag-recorder.service",
    "/etc/default/diag",
    "/usr/share/doc/diag/copyright",
];

#[test]
fn the_debian_package_installs_runs_and_is_removed_cleanly() {
    if !require_root("the_debian_package_installs_runs_and_is_removed_cleanly") {
        return;
    }
    let _guard = serial();
    assert!(
        !installed(),
        "a diag package is installed on this host already: remove it (apt-get purge diag) to run this test"
    );
    let tmp = TempDir::new("package");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    ok(Command::new(cargo)
        .current_dir(workspace())
        .args(["run", "--quiet", "--locked", "--package", "xtask", "--"])
        .args(["dist", "--debug", "--out"])
        .arg(&tmp.0));
    let debs: Vec<PathBuf> = std::fs::read_dir(&tmp.0)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "{debs:?}");
    let name = debs[0].file_name().unwrap().to_string_lossy().to_string();
    assert!(name.starts_with("diag_"), "{name}");

    let guard = Installed;
    ok(Command::new("apt-get")
        .current_dir(&tmp.0)
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .arg(format!("./{name}"))
        .env("DEBIAN_FRONTEND", "noninteractive"));
    assert!(installed());
    for f in SHIPPED {
        assert!(Path::new(f).exists(), "{f} not installed");
    }
    // The installed binary checks this host.
    let out = ok(Command::new("/usr/bin/diag").arg("check"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l.contains("OK")), "{text}");
    assert!(!text.contains("FAIL"), "{text}");
    // man finds a page per subcommand.
    for page in ["diag", "diag-serve", "diag-record", "diag-tail", "diag-top"] {
        let out = ok(Command::new("man").args(["-w", page]));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("/usr/share/man/man1/"),
            "{page}"
        );
    }
    // bash completes diag's subcommands.
    let out = ok(Command::new("bash").args([
        "-c",
        "source /usr/share/bash-completion/completions/diag && complete -p diag",
    ]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("diag"));
    // The shipped rules are the repository's, and valid.
    ok(Command::new("promtool").args(["check", "rules", "/usr/share/diag/diag.rules.yml"]));
    // The units.
    ok(Command::new("systemd-analyze").args([
        "verify",
        "/lib/systemd/system/diag.service",
        "/lib/systemd/system/diag-recorder.service",
    ]));
    let unit = std::fs::read_to_string("/lib/systemd/system/diag.service").unwrap();
    for want in [
        "CapabilityBoundingSet=CAP_BPF CAP_PERFMON",
        "ProtectSystem=strict",
        "StateDirectory=diag",
        "NoNewPrivileges=yes",
    ] {
        assert!(unit.contains(want), "diag.service lacks {want}");
    }

    // Removed cleanly: nothing of it is left (the conffile goes with purge).
    ok(Command::new("apt-get")
        .args(["purge", "-y", "-q", "diag"])
        .env("DEBIAN_FRONTEND", "noninteractive"));
    std::mem::forget(guard);
    assert!(!installed());
    for f in SHIPPED {
        assert!(!Path::new(f).exists(), "{f} left after purge");
    }
    assert!(!Path::new("/usr/share/diag").exists());
    let st = Command::new("dpkg-query")
        .args(["-W", "diag"])
        .output()
        .unwrap();
    assert!(!st.status.success(), "dpkg still knows diag");
}
