//! Kernel timestamps (`bpf_ktime_get_boot_ns`) to wall-clock time.

use chrono::{DateTime, Local, TimeZone};

/// Converts boot-time nanoseconds to wall-clock time, using the offset
/// between CLOCK_REALTIME and CLOCK_BOOTTIME taken once at start.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    /// realtime - boottime, in ns.
    offset_ns: i128,
}

fn now_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; the clock ids are constants.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// Nanoseconds since boot, on the same clock as the kernel's events.
pub fn boot_ns() -> u64 {
    now_ns(libc::CLOCK_BOOTTIME) as u64
}

impl WallClock {
    pub fn now() -> Self {
        let boot = now_ns(libc::CLOCK_BOOTTIME);
        let real = now_ns(libc::CLOCK_REALTIME);
        WallClock {
            offset_ns: real - boot,
        }
    }

    /// A fixed offset, for tests.
    pub fn with_offset_ns(offset_ns: i128) -> Self {
        WallClock { offset_ns }
    }

    /// realtime - boottime, ns.
    pub fn offset_ns(&self) -> i128 {
        self.offset_ns
    }

    /// Boot-time ns of a wall-clock time.
    pub fn boot_of(&self, wall: DateTime<Local>) -> u64 {
        let t = i128::from(wall.timestamp()) * 1_000_000_000
            + i128::from(wall.timestamp_subsec_nanos());
        (t - self.offset_ns).max(0) as u64
    }

    pub fn wall(&self, boot_ns: u64) -> DateTime<Local> {
        let t = boot_ns as i128 + self.offset_ns;
        let secs = t.div_euclid(1_000_000_000) as i64;
        let nanos = t.rem_euclid(1_000_000_000) as u32;
        Local
            .timestamp_opt(secs, nanos)
            .single()
            .unwrap_or_default()
    }
}
