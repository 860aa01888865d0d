//! What diag asks the running system for directly (not through procfs).

/// The size of a memory page in KiB (4 if the system will not say).
pub fn page_kb() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as u64 / 1024 } else { 4 }
}
