//! Project tasks: `cargo xtask setup | build | run | test | dist | bench`.
//!
//! Every task first makes sure the machine has what it needs (Debian
//! packages, a project-local bpf-linker, tracefs and bpffs mounted),
//! printing what it installs, and is quick when everything is there.

use std::{
    ffi::OsString,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

mod bench;
mod bench_block;
mod bench_lock;
mod bench_memory;
mod bench_tcp;
mod dist;
mod progstats;
mod stats;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "diag's project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (Debian packages, bpf-linker,
    /// mounts); quick when all is there
    Setup,
    /// Set up, then build diag (debug, or --release)
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Set up, build diag (release) and run it as root: `cargo xtask run -- tail --port 80`
    Run {
        /// Arguments for diag (default: `tail`)
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Set up, then run every gate: fmt, clippy (host and eBPF), all tests
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter)
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Set up, build diag (release, or --debug) and make a Debian package
    /// of it: the binary, man pages, shell completions, the alerting rules
    /// and dashboard, systemd units (target/dist/diag_VERSION_ARCH.deb)
    Dist {
        /// Package the debug build (quick; what the package test uses)
        #[arg(long)]
        debug: bool,
        /// Write the package into this directory
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Measure what diag costs and how far it goes, against baselines run
    /// in the same invocation (installs linux-perf and bpftrace; builds
    /// release); writes target/bench/report.{json,md}
    Bench {
        /// Interleaved rounds of each measurement (medians are compared)
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// perf bench sched pipe operations per run
        #[arg(long, default_value_t = 300_000)]
        loops: u64,
        /// Connections per TCP churn run
        #[arg(long, default_value_t = 20000)]
        conns: u64,
        /// Run only these parts (comma-separated); the report then holds
        /// only them
        #[arg(long, value_enum, value_delimiter = ',')]
        only: Vec<Part>,
        /// How long the soak part churns connections while `diag tail`
        /// runs, in seconds (map occupancy is compared before and after)
        #[arg(long, default_value_t = 600)]
        soak_secs: u64,
    },
}

/// The parts of `cargo xtask bench`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
enum Part {
    /// Scheduler probes: `perf bench sched pipe` with and without tracers
    Sched,
    /// TCP probes: loopback churn with and without tracers
    Tcp,
    /// Block I/O probes: a direct-I/O loop on a loop device with and without diag
    Block,
    /// User-space pipeline ceiling, real events while recording, memory
    Pipeline,
    /// Launch to probes attached
    Startup,
    /// Long connection and process churn: kernel map occupancy before and after
    Soak,
    /// Memory probes: a memory cgroup reclaim loop with and without tracers
    Memory,
    /// Lock probes: a mutex ping-pong with and without diag's futex probes
    Lock,
}

/// Debian packages the build needs (`run`, `build` and every other task).
const BUILD_PACKAGES: &[(&str, &str)] = &[
    ("rustc-web", "Rust 1.96 with LLVM 22, builds the eBPF crate"),
    ("cargo-web", "its cargo"),
    (
        "libstd-rust-web-dev-bpf",
        "prebuilt core for bpfel-unknown-none",
    ),
    ("llvm-22-dev", "LLVM 22, for bpf-linker"),
];

/// Debian packages the gates and the tests need besides (`setup`, `test`,
/// `dist`, `bench`): a first `run` does not wait for a browser.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("rust-web-clippy", "clippy for the eBPF crate"),
    ("bpftool", "tests check no programs are left behind"),
    ("iproute2", "ss, for tests"),
    (
        "nftables",
        "nft, a DROP rule for the blackholed-connect test",
    ),
    (
        "util-linux",
        "setpriv, for the non-root test; mkswap, swapon, swapoff for the zram swap test",
    ),
    ("mount", "losetup, for the block I/O test's loop device"),
    ("procps", "ps, for tests"),
    (
        "nginx-light",
        "a real pre-fork server (master + workers), for the owner tests",
    ),
    ("apache2-utils", "ab, the HTTP load for the nginx test"),
    (
        "postgresql",
        "a real accept-then-fork server (postmaster + backends) and psql, for the owner tests",
    ),
    ("tmux", "a terminal for the `diag top` screen tests"),
    (
        "prometheus",
        "a real Prometheus server and promtool, for the serve tests",
    ),
    ("binutils", "strip, for `cargo xtask dist`"),
    (
        "chromium",
        "headless Chromium, renders the report page in its test",
    ),
    ("fonts-liberation", "fonts for the report page's screenshot"),
    (
        "systemd",
        "systemd-analyze verify on the package's units, for the package test",
    ),
    (
        "man-db",
        "man, for the package test (and systemd-analyze's man: links)",
    ),
];

const BPF_LINKER_VERSION: &str = "0.13.0";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn cargo() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{:?} failed ({status})", cmd);
    }
    Ok(())
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// What every task needs; with `tests`, what the gates and tests need too.
fn setup(tests: bool) -> Result<()> {
    install_packages(BUILD_PACKAGES)?;
    if tests {
        install_packages(TEST_PACKAGES)?;
    }
    setup_tools()
}

/// Install the packages of `packages` that are missing, saying which and why.
fn install_packages(packages: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(p, _)| !installed(p))
        .map(|(p, _)| *p)
        .collect();
    if !missing.is_empty() {
        println!("xtask: installing Debian packages:");
        for (p, why) in packages.iter().filter(|(p, _)| missing.contains(p)) {
            println!("xtask:   {p:<24} {why}");
        }
        if !is_root() {
            bail!(
                "installing packages needs root: run as root, or `apt-get install {}`",
                missing.join(" ")
            );
        }
        run(Command::new("apt-get").args(["update", "-q"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    Ok(())
}

/// bpf-linker in .tools, and the mounts.
fn setup_tools() -> Result<()> {
    let tools = root().join(".tools");
    let linker = tools.join("bin/bpf-linker");
    let have = Command::new(&linker)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
        .unwrap_or(false);
    if !have {
        println!(
            "xtask: installing bpf-linker {BPF_LINKER_VERSION} (LLVM 22) into {} (about 80 s)",
            tools.display()
        );
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![PathBuf::from("/usr/lib/llvm-22/bin")];
        paths.extend(std::env::split_paths(&path));
        run(Command::new(cargo())
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args([
                "--no-default-features",
                "--features",
                "llvm-22",
                "--force",
                "--root",
            ])
            .arg(&tools)
            .env("PATH", std::env::join_paths(paths)?))?;
    }

    if is_root() {
        ensure_mount("tracefs", "/sys/kernel/tracing", |m| {
            m.contains(" /sys/kernel/tracing tracefs ")
        })?;
        ensure_mount("bpf", "/sys/fs/bpf", |m| m.contains(" /sys/fs/bpf bpf "))?;
    }
    Ok(())
}

fn ensure_mount(fstype: &str, at: &str, present: impl Fn(&str) -> bool) -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if present(&mounts) {
        return Ok(());
    }
    println!("xtask: mounting {fstype} at {at}");
    run(Command::new("mount").args(["-t", fstype, fstype, at]))
}

fn build(release: bool) -> Result<PathBuf> {
    let mut cmd = Command::new(cargo());
    cmd.current_dir(root()).args([
        "build",
        "--locked",
        "--package",
        "diag-user",
        "--bin",
        "diag",
    ]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)?;
    Ok(root()
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("diag"))
}

/// cargo from Debian, for the eBPF crate's own gates.
fn debian_cargo(args: &[&str]) -> Command {
    let mut cmd = Command::new("/usr/bin/cargo");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![PathBuf::from("/usr/bin"), root().join(".tools/bin")];
    paths.extend(std::env::split_paths(&path));
    cmd.current_dir(root().join("diag-ebpf"))
        .args(args)
        .env("PATH", std::env::join_paths(paths).unwrap())
        .env("RUSTC", "/usr/bin/rustc")
        .env("RUSTC_BOOTSTRAP", "1")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO");
    cmd
}

fn test(extra: &[OsString]) -> Result<()> {
    let root = root();
    println!("xtask: fmt");
    run(Command::new(cargo())
        .current_dir(&root)
        .args(["fmt", "--all", "--check"]))?;
    run(Command::new(cargo()).current_dir(&root).args([
        "fmt",
        "--manifest-path",
        "diag-ebpf/Cargo.toml",
        "--check",
    ]))?;
    println!("xtask: clippy (eBPF crate)");
    let ebpf_target = root.join("target/ebpf-clippy");
    run(debian_cargo(&[
        "clippy",
        "--locked",
        "--release",
        "--target",
        "bpfel-unknown-none",
        "--target-dir",
    ])
    .arg(&ebpf_target)
    .args(["--", "-D", "warnings"]))?;
    println!("xtask: clippy (host crates)");
    run(Command::new(cargo()).current_dir(&root).args([
        "clippy",
        "--locked",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    let bin = build(false)?;
    println!("xtask: tests");
    let skip_log = root.join("target/skipped-tests.txt");
    let _ = std::fs::remove_file(&skip_log);
    let mut cmd = Command::new(cargo());
    cmd.current_dir(&root)
        .args(["test", "--locked", "--workspace"])
        .args(extra)
        .env("DIAG_BIN", &bin)
        .env("DIAG_SKIP_LOG", &skip_log);
    run_tests(cmd, &skip_log)
}

/// Run `cargo test`, passing its output through, and close with one line
/// of totals over every test binary.
fn run_tests(mut cmd: Command, skip_log: &Path) -> Result<()> {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("cannot start cargo test")?;
    let stderr = child.stderr.take().unwrap();
    let skips = std::thread::spawn(move || {
        let mut skipped = 0u64;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("SKIPPED ") {
                skipped += 1;
            }
            eprintln!("{line}");
        }
        skipped
    });
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(['.', ';']) {
                let mut words = part.split_whitespace();
                if let (Some(n), Some(what)) = (words.next(), words.next()) {
                    let n: u64 = n.parse().unwrap_or(0);
                    match what {
                        "passed" => passed += n,
                        "failed" => failed += n,
                        _ => {}
                    }
                }
            }
        }
    }
    let status = child.wait()?;
    // Skips seen on stderr (tests that failed show their output) or logged
    // by the tests themselves (cargo hides a passing test's output).
    let seen = skips.join().unwrap_or(0);
    let logged: Vec<String> = std::fs::read_to_string(skip_log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    for l in &logged {
        println!("xtask: skipped: {l}");
    }
    let skipped = seen.max(logged.len() as u64);
    // A skipped test returned early and counted as passed.
    let passed = passed.saturating_sub(skipped);
    println!("tests: {passed} passed, {failed} failed, {skipped} skipped");
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    setup(!matches!(cli.task, Task::Run { .. } | Task::Build { .. }))?;
    match cli.task {
        Task::Setup => {
            println!("xtask: everything is in place");
            Ok(())
        }
        Task::Build { release } => {
            let bin = build(release)?;
            println!("xtask: built {}", bin.display());
            Ok(())
        }
        Task::Run { args } => {
            let bin = build(true)?;
            let args = if args.is_empty() {
                vec![OsString::from("tail")]
            } else {
                args
            };
            let err = Command::new(&bin).args(&args).exec();
            bail!("cannot run {}: {err}", bin.display())
        }
        Task::Test { args } => test(&args),
        Task::Dist { debug, out } => dist::dist(debug, out).map(|_| ()),
        Task::Bench {
            rounds,
            loops,
            conns,
            only,
            soak_secs,
        } => {
            if !is_root() {
                bail!("the bench loads BPF programs: run it as root");
            }
            if rounds == 0 || loops == 0 || conns == 0 || soak_secs == 0 {
                bail!("--rounds, --loops, --conns and --soak-secs must be at least 1");
            }
            run_bench(rounds, loops, conns, &only, soak_secs)
        }
    }
}

/// `readme` with the text between `<!-- bench:KEY -->` and `<!--
/// /bench:KEY -->` replaced by `body`; None without those marks.
fn splice(readme: &str, key: &str, body: &str) -> Option<String> {
    let open = format!("<!-- bench:{key} -->\n");
    let close = format!("<!-- /bench:{key} -->");
    let a = readme.find(&open)? + open.len();
    let b = a + readme[a..].find(&close)?;
    Some(format!(
        "{}{}\n{}",
        &readme[..a],
        body.trim_end(),
        &readme[b..]
    ))
}

fn run_bench(reps: usize, loops: u64, conns: u64, only: &[Part], soak_secs: u64) -> Result<()> {
    let wanted = |p: Part| only.is_empty() || only.contains(&p);
    install_packages(bench::PACKAGES)?;
    let root = root();
    run(Command::new(cargo())
        .current_dir(&root)
        .args([
            "build",
            "--locked",
            "--release",
            "-p",
            "diag-user",
            "--bin",
            "diag",
            "-p",
            "diag-tests",
        ])
        .args(["--bin", "diag-loadgen", "--bin", "diag-lockgen"]))?;
    let diag = root.join("target/release/diag");
    let loadgen = root.join("target/release/diag-loadgen");
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let mut parts: Vec<(&str, &str, bench_tcp::Section)> = Vec::new();
    if wanted(Part::Sched) {
        let s = bench::sched_overhead(&diag, &root, reps, loops)?;
        parts.push(("Scheduler overhead", "sched_overhead", s));
    }
    if wanted(Part::Tcp) {
        let s = bench_tcp::tcp_overhead(&diag, &loadgen, &dir, reps, conns)?;
        parts.push(("TCP overhead", "tcp_overhead", s));
        let s = bench_tcp::drop_flood(&diag, &loadgen, reps)?;
        parts.push(("Drops under a packet flood", "drop_flood", s));
    }
    if wanted(Part::Block) {
        let s = bench_block::block_overhead(&diag, &dir, reps)?;
        parts.push(("Block I/O overhead", "block_overhead", s));
    }
    if wanted(Part::Pipeline) {
        let s = bench_tcp::pipeline(&diag, &loadgen, &dir)?;
        parts.push(("Pipeline throughput and memory", "pipeline", s));
    }
    if wanted(Part::Startup) {
        let s = bench_tcp::startup(&diag, reps)?;
        parts.push(("Start-up", "startup", s));
    }
    if wanted(Part::Memory) {
        let s = bench_memory::memory_overhead(&diag, &loadgen, &dir, reps)?;
        parts.push(("Memory overhead", "memory_overhead", s));
    }
    if wanted(Part::Lock) {
        let lockgen = root.join("target/release/diag-lockgen");
        let s = bench_lock::lock_overhead(&diag, &lockgen, reps, loops)?;
        parts.push(("Lock probes overhead", "lock_overhead", s));
    }
    if wanted(Part::Soak) {
        let s = bench_tcp::soak(&diag, &loadgen, soak_secs)?;
        parts.push(("Long run: kernel map occupancy", "soak", s));
    }
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let date = String::from_utf8_lossy(
        &Command::new("date")
            .arg("-u")
            .arg("+%Y-%m-%d")
            .output()?
            .stdout,
    )
    .trim()
    .to_string();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let args = if only.is_empty() {
        format!("--rounds {reps}")
    } else {
        let parts: Vec<String> = only
            .iter()
            .map(|p| format!("{p:?}").to_lowercase())
            .collect();
        format!("--rounds {reps} --only {}", parts.join(","))
    };
    let mut md = format!(
        "Measured {date} on Linux {}, {cpus} CPUs, by `cargo xtask bench {args}`.\n",
        kernel.trim()
    );
    let mut json = serde_json::json!({
        "date": date, "kernel": kernel.trim(), "cpus": cpus, "reps": reps,
    });
    let measured = md.trim_end().to_string();
    let readme_path = root.join("README.md");
    let mut readme = std::fs::read_to_string(&readme_path)?;
    for (title, key, section) in parts {
        md.push_str(&format!("\n### {title}\n\n{}", section.markdown));
        match splice(&readme, key, &format!("{measured}\n\n{}", section.markdown)) {
            Some(r) => readme = r,
            None => println!("xtask: README.md has no <!-- bench:{key} --> block: not updated"),
        }
        json[key] = section.json;
    }
    std::fs::write(&readme_path, &readme)?;
    println!("xtask: README.md's bench tables regenerated");
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    std::fs::write(dir.join("report.md"), &md)?;
    println!("\n{md}");
    println!(
        "xtask: wrote {} and {}",
        dir.join("report.json").display(),
        dir.join("report.md").display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_tables_are_spliced_between_their_marks() {
        let r = "a\n<!-- bench:tcp -->\nold\n<!-- /bench:tcp -->\nb\n";
        assert_eq!(
            splice(r, "tcp", "new\n\n").as_deref(),
            Some("a\n<!-- bench:tcp -->\nnew\n<!-- /bench:tcp -->\nb\n")
        );
        assert_eq!(splice(r, "sched", "x"), None);
    }
}
