//! `cargo xtask dist`: a Debian package of diag, built with dpkg-deb (the
//! Debian tool every other packaging tool ends in) from a staged tree:
//! the binary, a man page per subcommand and shell completions (both
//! generated from diag's command line by `diag-dist`), the alerting rules
//! and the Grafana dashboard under /usr/share/diag/, and systemd units.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{cargo, root, run};

/// What the package holds, from the repository: (source, destination in
/// the package, mode).
const FILES: &[(&str, &str, u32)] = &[
    (
        "dist/diag.rules.yml",
        "usr/share/diag/diag.rules.yml",
        0o644,
    ),
    (
        "dist/diag.rules.test.yml",
        "usr/share/diag/diag.rules.test.yml",
        0o644,
    ),
    (
        "dist/diag.dashboard.json",
        "usr/share/diag/diag.dashboard.json",
        0o644,
    ),
    (
        "dist/diag.service",
        "lib/systemd/system/diag.service",
        0o644,
    ),
    (
        "dist/diag-recorder.service",
        "lib/systemd/system/diag-recorder.service",
        0o644,
    ),
    ("dist/default", "etc/default/diag", 0o644),
    ("README.md", "usr/share/doc/diag/README.md", 0o644),
];

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::copy(from, to).with_context(|| format!("{} -> {}", from.display(), to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// The Debian packages that hold the shared libraries `bin` needs.
fn depends(bin: &Path) -> Result<Vec<String>> {
    let ldd = output(Command::new("ldd").arg(bin))?;
    let mut pkgs = Vec::new();
    for line in ldd.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)"
        let Some((_, right)) = line.split_once("=> ") else {
            continue;
        };
        let Some(path) = right.split_whitespace().next() else {
            continue;
        };
        let owner = output(Command::new("dpkg").args(["-S", path]))
            .or_else(|_| {
                // /lib is /usr/lib on merged-/usr systems.
                let alt = path
                    .strip_prefix("/usr")
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("/usr{path}"));
                output(Command::new("dpkg").args(["-S", &alt]))
            })
            .with_context(|| format!("which package holds {path}"))?;
        let pkg = owner
            .split(':')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        if !pkg.is_empty() && !pkgs.contains(&pkg) {
            pkgs.push(pkg);
        }
    }
    Ok(pkgs)
}

/// Build the package into `out` (default target/dist); returns its path.
pub fn dist(debug: bool, out: Option<PathBuf>) -> Result<PathBuf> {
    let root = root();
    let profile = if debug { "debug" } else { "release" };
    let mut build = Command::new(cargo());
    build.current_dir(&root).args([
        "build",
        "--locked",
        "--package",
        "diag-user",
        "--bin",
        "diag",
        "--bin",
        "diag-dist",
    ]);
    if !debug {
        build.arg("--release");
    }
    run(&mut build)?;
    let bins = root.join("target").join(profile);
    let version = env!("CARGO_PKG_VERSION");
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_string();
    let name = format!("diag_{version}_{arch}");
    let work = root.join("target/dist");
    let stage = work.join(&name);
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir_all(&stage)?;

    // The binary, without its debug information.
    let bin = stage.join("usr/bin/diag");
    copy(&bins.join("diag"), &bin, 0o755)?;
    run(Command::new("strip").arg("--strip-debug").arg(&bin))?;

    // Man pages and completions from diag's command line.
    let generated = work.join("generated");
    let _ = std::fs::remove_dir_all(&generated);
    run(Command::new(bins.join("diag-dist")).arg(&generated))?;
    let man = stage.join("usr/share/man/man1");
    std::fs::create_dir_all(&man)?;
    let mut pages = 0;
    for e in std::fs::read_dir(generated.join("man"))? {
        let p = e?.path();
        let to = man.join(p.file_name().unwrap());
        copy(&p, &to, 0o644)?;
        run(Command::new("gzip").args(["-9", "-n", "-f"]).arg(&to))?;
        pages += 1;
    }
    let completions = generated.join("completions");
    for (from, to) in [
        ("diag.bash", "usr/share/bash-completion/completions/diag"),
        ("_diag", "usr/share/zsh/vendor-completions/_diag"),
        ("diag.fish", "usr/share/fish/vendor_completions.d/diag.fish"),
    ] {
        copy(&completions.join(from), &stage.join(to), 0o644)?;
    }
    for (from, to, mode) in FILES {
        copy(&root.join(from), &stage.join(to), *mode)?;
    }
    let doc = stage.join("usr/share/doc/diag");
    std::fs::write(
        doc.join("copyright"),
        format!(
            "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: diag\n\nFiles: *\nLicense: {}\n",
            env!("CARGO_PKG_LICENSE")
        ),
    )?;

    // Control files.
    let size_kib = output(Command::new("du").args(["-sk"]).arg(&stage))?
        .split_whitespace()
        .next()
        .unwrap_or("0")
        .to_string();
    let deps = depends(&bin)?;
    let control = format!(
        "Package: diag\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: diag developers <diag@example.invalid>\n\
         Section: admin\n\
         Priority: optional\n\
         Installed-Size: {size_kib}\n\
         Depends: {}\n\
         Description: eBPF tracer: who is the victim and who is the villain\n \
         diag traces TCP connections, OOM kills and run queues from the kernel\n \
         (tracepoints and BTF), per process and cgroup. It ships a Prometheus\n \
         exporter (diag serve, as the systemd unit diag.service), alerting rules\n \
         and a Grafana dashboard under /usr/share/diag/, and a flight recorder\n \
         (diag-recorder.service).\n",
        deps.join(", ")
    );
    let debian = stage.join("DEBIAN");
    std::fs::create_dir_all(&debian)?;
    std::fs::write(debian.join("control"), control)?;
    std::fs::write(debian.join("conffiles"), "/etc/default/diag\n")?;

    let out = out.unwrap_or(work);
    std::fs::create_dir_all(&out)?;
    let deb = out.join(format!("{name}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "-z6", "--build"])
        .arg(&stage)
        .arg(&deb))?;
    println!(
        "xtask: built {} ({pages} man pages; depends on {})",
        deb.display(),
        deps.join(", ")
    );
    Ok(deb)
}
