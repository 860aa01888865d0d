//! Builds the kernel-side crate (`diag-ebpf`) for `bpfel-unknown-none` and
//! hands its object to `include_bytes_aligned!`, so the `diag` binary is
//! all a user copies to a host.
//!
//! The kernel crate is built with Debian's rustc (`/usr/bin/rustc`, which
//! ships a prebuilt `core` for the BPF target) and a project-local
//! `bpf-linker` (`.tools/bin`); `cargo xtask setup` installs both. Set
//! `DIAG_EBPF_OBJ=/path/to/object` to embed a prebuilt object instead.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap()).join("diag.bpf.o");

    println!("cargo:rerun-if-env-changed=DIAG_EBPF_OBJ");
    if let Some(obj) = env::var_os("DIAG_EBPF_OBJ") {
        println!("cargo:rerun-if-changed={}", Path::new(&obj).display());
        std::fs::copy(&obj, &out).unwrap_or_else(|e| {
            panic!(
                "DIAG_EBPF_OBJ={}: cannot copy: {e}",
                Path::new(&obj).display()
            )
        });
        return;
    }
    for p in [
        "diag-ebpf/src",
        "diag-ebpf/Cargo.toml",
        "diag-ebpf/Cargo.lock",
        "diag-common/src",
        "diag-common/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }

    let tools = root.join(".tools/bin");
    let rustc = Path::new("/usr/bin/rustc");
    let cargo = Path::new("/usr/bin/cargo");
    let linker = tools.join("bpf-linker");
    let core = Path::new("/usr/lib/rustlib/bpfel-unknown-none/lib");
    for (what, path) in [
        ("Debian's rustc", rustc),
        ("Debian's cargo", cargo),
        ("bpf-linker", &linker),
        ("the bpfel core library", core),
    ] {
        if !path.exists() {
            panic!(
                "\n\nthe eBPF toolchain is not installed: {what} ({}) is missing.\n\
                 Run `cargo xtask setup` (as root) to install it, then build again.\n\n",
                path.display()
            );
        }
    }

    let target_dir = root.join("target/ebpf");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root.join("diag-ebpf"))
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "bpfel-unknown-none",
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    // Nothing of the outer (host) build may leak into the BPF build.
    for (key, _) in env::vars_os() {
        let k = key.to_string_lossy();
        let keep = k == "CARGO_HOME" || k == "CARGO_NET_OFFLINE";
        if !keep && (k.starts_with("CARGO") || k.starts_with("RUST") || k.starts_with("DEP_")) {
            cmd.env_remove(&key);
        }
    }
    for k in [
        "TARGET",
        "HOST",
        "OUT_DIR",
        "PROFILE",
        "OPT_LEVEL",
        "DEBUG",
        "NUM_JOBS",
    ] {
        cmd.env_remove(k);
    }
    let path = env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![tools];
    paths.extend(env::split_paths(&path));
    cmd.env("PATH", env::join_paths(paths).unwrap())
        .env("RUSTC", rustc)
        // aya-ebpf uses unstable features; Debian's rustc is a stable build.
        .env("RUSTC_BOOTSTRAP", "1")
        // bpf-linker's default `--bpf-expand-memcpy-in-order` also turns
        // every memset (a `[0; 16]`, a struct's padding) into a call to
        // an exported byte loop: a BPF-to-BPF call per zeroed field on the
        // hot paths. Without it LLVM writes them as plain stores.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "-Cdebuginfo=2\x1f-Clink-arg=--btf\x1f-Clink-arg=--disable-expand-memcpy-in-order",
        );
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", cargo.display()));
    if !status.success() {
        panic!("building diag-ebpf for bpfel-unknown-none failed ({status}); see the errors above");
    }
    let obj = target_dir.join("bpfel-unknown-none/release/diag-ebpf");
    std::fs::copy(&obj, &out).unwrap_or_else(|e| panic!("cannot copy {}: {e}", obj.display()));
}
