//! Text from outside diag (process names, command lines, cgroup paths,
//! recordings) made safe to print: any process can name itself
//! `\e]0;...\a\e[2J`, and a terminal would obey it. Control characters
//! become visible escapes (`\x1b`, `\u{9b}`); JSON output escapes them
//! anyway.

use std::{borrow::Cow, fmt::Write};

/// `s` with every control character (C0, DEL, C1) written as an escape.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            c if (c as u32) < 0x80 && c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A kernel `comm` (NUL-padded, maybe not UTF-8) as printable text.
pub fn comm(c: &[u8; 16]) -> String {
    printable(&String::from_utf8_lossy(diag_common::comm_bytes(c))).into_owned()
}

/// Owned `s`, printable.
pub fn owned(s: String) -> String {
    match printable(&s) {
        Cow::Borrowed(_) => s,
        Cow::Owned(o) => o,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_become_visible() {
        assert_eq!(printable("nginx"), "nginx");
        assert_eq!(
            printable("\u{1b}]0;PWNED\u{7}\u{1b}[2J"),
            "\\x1b]0;PWNED\\x07\\x1b[2J"
        );
        assert_eq!(printable("a\u{9b}b\u{7f}"), "a\\u{9b}b\\x7f");
        assert_eq!(printable("tab\there\nnl"), "tab\\x09here\\x0anl");
        let mut c = [0u8; 16];
        c[..5].copy_from_slice(b"\x1b[2Jx");
        assert_eq!(comm(&c), "\\x1b[2Jx");
        assert!(!comm(&c).chars().any(char::is_control));
    }
}
