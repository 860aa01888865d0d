//! Formatting shared by the views: addresses, durations, sizes.

use std::net::{Ipv4Addr, Ipv6Addr};

use diag_common::tcp::AF_INET6;

/// An address and port as people write them: `1.2.3.4:80`, `[::1]:80`.
pub fn endpoint(family: u16, addr: &[u8; 16], port: u16) -> String {
    if family == AF_INET6 {
        format!("[{}]:{port}", Ipv6Addr::from(*addr))
    } else {
        format!(
            "{}:{port}",
            Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3])
        )
    }
}

/// Just the address.
pub fn address(family: u16, addr: &[u8; 16]) -> String {
    if family == AF_INET6 {
        Ipv6Addr::from(*addr).to_string()
    } else {
        Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]).to_string()
    }
}

/// A duration in the unit that reads best: 850ns, 12.3us, 4.56ms, 1.23s.
pub fn human_ns(ns: u64) -> String {
    match ns {
        0 => "-".into(),
        n if n < 1_000 => format!("{n}ns"),
        n if n < 1_000_000 => format!("{:.1}us", n as f64 / 1e3),
        n if n < 1_000_000_000 => format!("{:.2}ms", n as f64 / 1e6),
        n => format!("{:.2}s", n as f64 / 1e9),
    }
}

/// Microseconds as [`human_ns`] does them; `-` when unknown.
pub fn human_us(us: Option<u32>) -> String {
    us.map_or("-".to_string(), |u| human_ns(u64::from(u) * 1000))
}

/// A size in KiB in the unit that reads best: 120KiB, 31.9MiB, 1.50GiB.
pub fn human_kb(kb: u64) -> String {
    match kb {
        k if k < 1024 => format!("{k}KiB"),
        k if k < 1024 * 1024 => format!("{:.1}MiB", k as f64 / 1024.0),
        k => format!("{:.2}GiB", k as f64 / (1024.0 * 1024.0)),
    }
}

/// A byte count in the unit that reads best: 850B, 12.3KiB, 4.56MiB.
pub fn human_bytes(b: u64) -> String {
    match b {
        b if b < 1024 => format!("{b}B"),
        b if b < 1024 * 1024 => format!("{:.1}KiB", b as f64 / 1024.0),
        b if b < 1024 * 1024 * 1024 => format!("{:.2}MiB", b as f64 / (1024.0 * 1024.0)),
        b => format!("{:.2}GiB", b as f64 / (1024.0 * 1024.0 * 1024.0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(human_bytes(850), "850B");
        assert_eq!(human_bytes(12_595), "12.3KiB");
        assert_eq!(human_bytes(4_781_506), "4.56MiB");
    }

    #[test]
    fn durations() {
        assert_eq!(human_ns(0), "-");
        assert_eq!(human_ns(850), "850ns");
        assert_eq!(human_ns(12_300), "12.3us");
        assert_eq!(human_ns(4_560_000), "4.56ms");
        assert_eq!(human_ns(1_230_000_000), "1.23s");
    }
}
