//! Errors a user sees, worded to say what is wrong and what to do.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum EnvError {
    #[error(
        "diag needs root, or the CAP_BPF and CAP_PERFMON capabilities, to load its kernel programs: run it as root (for example with sudo)"
    )]
    NotPrivileged,
    #[error("kernel {0} is too old: diag needs Linux 5.8 or newer (for the BPF ring buffer)")]
    KernelTooOld(String),
    #[error(
        "kernel BTF is missing ({0} not found): diag needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    )]
    NoBtf(String),
    #[error(
        "tracefs is not mounted and could not be mounted at {path} ({why}): mount it with `mount -t tracefs tracefs {path}`"
    )]
    Tracefs { path: String, why: String },
    #[error(
        "{path} is not tracefs, and diag mounts tracefs only on the kernel's own empty mount point /sys/kernel/tracing ({why}): mount tracefs there yourself (`mount -t tracefs tracefs {path}`) or leave out --tracefs and DIAG_TRACEFS"
    )]
    TracefsRefused { path: String, why: String },
    #[error(
        "tracefs at {path} is mounted but not readable for this user (mode {mode:o}): run diag as root, or give it CAP_DAC_READ_SEARCH"
    )]
    TracefsUnreadable { path: String, mode: u32 },
    #[error("tracepoint {name} is missing from this kernel ({why}): diag cannot trace {what} here")]
    MissingTracepoint {
        name: String,
        what: &'static str,
        why: String,
    },
    #[error("tracepoint {name} has a format diag does not understand: {why}")]
    TracepointFormat { name: String, why: String },
    #[error("this kernel does not support BPF ring buffers ({0}); diag needs Linux 5.8 or newer")]
    NoRingBuf(String),
}

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("the kernel refused diag's programs: {0}")]
    Load(String),
    #[error("could not attach to tracepoint {tracepoint}: {why}")]
    Attach { tracepoint: String, why: String },
    #[error(
        "diag's kernel object lacks {0}; the build is broken (rebuild with `cargo xtask build`)"
    )]
    Missing(String),
}

/// An error and its causes on one line, without Debug noise.
pub fn render(err: &anyhow::Error) -> String {
    let mut s = err.to_string();
    for cause in err.chain().skip(1) {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
    }
    s
}

/// An error from aya (or any error chain) flattened to one line. The
/// verifier log, when there is one, is kept to its last lines.
pub fn flatten(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut cur = err.source();
    while let Some(c) = cur {
        parts.push(c.to_string());
        cur = c.source();
    }
    let s = parts.join(": ");
    let lines: Vec<&str> = s.lines().collect();
    if lines.len() > 12 {
        format!(
            "{} [...] {}",
            lines[0],
            lines[lines.len() - 8..].join(" | ")
        )
    } else {
        lines.join(" | ")
    }
}
