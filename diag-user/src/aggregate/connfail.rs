//! Failed connects with their cause: active opens that went from
//! SYN_SENT to CLOSE, counted per process, destination and error. The
//! error is the socket's `sk_err` as the kernel program read it on that
//! transition (the kernel stores it before closing the socket), named as
//! errno names it. Pure.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
};

use serde::Serialize;

use super::hint::{Hint, HintKind};

use super::process::ProcKey;

/// Most (process, destination, error) entries kept; more are counted as
/// overflow.
pub const MAX_ENTRIES: usize = 4096;
/// Error names per process kept with counts of their own (the exporter's
/// `error` label); more are counted under [`OTHER`].
pub const MAX_ERRORS_PER_PROCESS: usize = 8;
/// The error name of the errors beyond [`MAX_ERRORS_PER_PROCESS`].
pub const OTHER: &str = "other";
/// The error name when the kernel stored none on the socket: the process
/// closed it before an answer came, or connect() failed before a SYN was
/// sent (and returned its error itself, e.g. EADDRNOTAVAIL).
pub const CLOSED: &str = "closed";
/// The error name when it was not read (a recording made before diag
/// read it, a kernel whose BTF lacks `sock.sk_err`).
pub const UNKNOWN: &str = "unknown";

/// The errno name of a positive error number (Linux numbering, the same
/// on every architecture diag runs on); unknown numbers as the number.
pub fn errno_name(err: i32) -> String {
    let name = match err {
        1 => "EPERM",
        13 => "EACCES",
        32 => "EPIPE",
        71 => "EPROTO",
        90 => "EMSGSIZE",
        92 => "ENOPROTOOPT",
        99 => "EADDRNOTAVAIL",
        100 => "ENETDOWN",
        101 => "ENETUNREACH",
        103 => "ECONNABORTED",
        104 => "ECONNRESET",
        110 => "ETIMEDOUT",
        111 => "ECONNREFUSED",
        112 => "EHOSTDOWN",
        113 => "EHOSTUNREACH",
        _ => return err.to_string(),
    };
    name.to_string()
}

/// Why a connect failed, from a SYN_SENT -> CLOSE event's `err_known`
/// and `err`.
pub fn failure_name(err_known: bool, err: i32) -> String {
    match (err_known, err) {
        (false, _) => UNKNOWN.to_string(),
        (true, 0) => CLOSED.to_string(),
        (true, e) => errno_name(e.saturating_abs()),
    }
}

/// Failed connects of one process to one destination with one error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedConnect {
    pub pid: u32,
    pub comm: String,
    /// Which life of `pid` (see [`super::process`]).
    #[serde(skip)]
    pub life: u32,
    pub remote: SocketAddr,
    pub error: String,
    /// Since diag started.
    pub count: u64,
    /// In the current interval.
    pub interval: u64,
}

#[derive(Debug, Clone)]
struct Entry {
    comm: String,
    count: u64,
    interval: u64,
}

type Key = (ProcKey, SocketAddr, String);

/// Failed connects per process, destination and error.
#[derive(Debug, Clone, Default)]
pub struct ConnectFailures {
    by: HashMap<Key, Entry>,
    /// Failed connects not kept per destination (too many entries).
    pub overflow: u64,
}

impl ConnectFailures {
    /// A connect of process `key` (named `comm`) to `remote` failed with
    /// `error`.
    pub fn record(&mut self, key: ProcKey, comm: &str, remote: SocketAddr, error: &str) {
        let k = (key, remote, error.to_string());
        if self.by.len() >= MAX_ENTRIES && !self.by.contains_key(&k) {
            self.overflow += 1;
            return;
        }
        let e = self.by.entry(k).or_insert_with(|| Entry {
            comm: comm.to_string(),
            count: 0,
            interval: 0,
        });
        if e.comm != comm {
            e.comm = comm.to_string();
        }
        e.count += 1;
        e.interval += 1;
    }

    /// The `n` entries with the most failures this interval, then since
    /// diag started.
    pub fn rows(&self, n: usize) -> Vec<FailedConnect> {
        let mut v: Vec<FailedConnect> = self
            .by
            .iter()
            .map(|(((pid, life), remote, error), e)| FailedConnect {
                pid: *pid,
                comm: e.comm.clone(),
                life: *life,
                remote: *remote,
                error: error.clone(),
                count: e.count,
                interval: e.interval,
            })
            .collect();
        v.sort_by(|a, b| {
            (b.interval, b.count)
                .cmp(&(a.interval, a.count))
                .then((a.pid, a.life, a.remote, &a.error).cmp(&(b.pid, b.life, b.remote, &b.error)))
        });
        v.truncate(n);
        v
    }

    /// A new interval starts.
    pub fn close_interval(&mut self) {
        for e in self.by.values_mut() {
            e.interval = 0;
        }
    }

    /// Forget the processes `keep` says no: the aggregate forgot them.
    pub fn retain(&mut self, mut keep: impl FnMut(&ProcKey) -> bool) {
        self.by.retain(|(k, _, _), _| keep(k));
    }
}

/// A process's failed connects per error name, bounded: beyond
/// [`MAX_ERRORS_PER_PROCESS`] names, under [`OTHER`].
pub fn count_error(errors: &mut BTreeMap<String, u64>, error: &str) {
    let name = if errors.contains_key(error) || errors.len() < MAX_ERRORS_PER_PROCESS {
        error
    } else {
        OTHER
    };
    *errors.entry(name.to_string()).or_default() += 1;
}

/// What an error says about the destination, for the hints.
fn meaning(error: &str) -> Option<&'static str> {
    Some(match error {
        "ECONNREFUSED" => "nothing listens there (the host answered the SYN with a reset)",
        "ETIMEDOUT" => "SYNs unanswered: a firewall drops them or the host is down",
        "EHOSTUNREACH" | "ENETUNREACH" | "EHOSTDOWN" | "ENETDOWN" => {
            "no way there: an ICMP unreachable (no route, the host down, or a firewall rejecting)"
        }
        "ECONNRESET" => "reset during the handshake",
        CLOSED => {
            "no error from the peer: the process closed the socket before an answer came (its own connect timeout?), or connect() failed before sending (no free local port?)"
        }
        _ => return None,
    })
}

/// Hints for the failed connects of the current interval.
pub fn hints(rows: &[FailedConnect]) -> Vec<Hint> {
    rows.iter()
        .filter(|f| f.interval > 0)
        .take(5)
        .map(|f| {
            let mut h = format!(
                "pid {} ({}) could not connect to {}: {} {}",
                f.pid, f.comm, f.remote, f.interval, f.error
            );
            if let Some(m) = meaning(&f.error) {
                h.push_str(" — ");
                h.push_str(m);
            }
            Hint::new(
                HintKind::ConnectFailed,
                Some(f.pid),
                format!("{} {}", f.remote, f.error),
                f.interval as f64,
                h,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(errno_name(111), "ECONNREFUSED");
        assert_eq!(errno_name(110), "ETIMEDOUT");
        assert_eq!(errno_name(113), "EHOSTUNREACH");
        assert_eq!(errno_name(101), "ENETUNREACH");
        assert_eq!(errno_name(104), "ECONNRESET");
        assert_eq!(errno_name(4242), "4242");
        assert_eq!(failure_name(true, 111), "ECONNREFUSED");
        assert_eq!(failure_name(true, -111), "ECONNREFUSED");
        assert_eq!(failure_name(true, 0), CLOSED);
        assert_eq!(failure_name(false, 111), UNKNOWN);
        assert_eq!(failure_name(false, 0), UNKNOWN);
    }

    #[test]
    fn counted_per_process_destination_and_error_and_bounded() {
        let mut f = ConnectFailures::default();
        let a: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:5432".parse().unwrap();
        for _ in 0..3 {
            f.record((7, 0), "curl", a, "ECONNREFUSED");
        }
        f.record((7, 0), "curl", b, "ETIMEDOUT");
        f.record((8, 0), "psql", b, "ETIMEDOUT");
        let rows = f.rows(10);
        assert_eq!(rows.len(), 3);
        assert_eq!(
            (rows[0].pid, rows[0].remote, rows[0].error.as_str()),
            (7, a, "ECONNREFUSED")
        );
        assert_eq!((rows[0].count, rows[0].interval), (3, 3));
        let h = hints(&rows);
        assert_eq!(h.len(), 3);
        assert!(
            h[0].text.starts_with("pid 7 (curl) could not connect to 127.0.0.1:9: 3 ECONNREFUSED — nothing listens there"),
            "{h:?}"
        );
        assert!(h[1].text.contains("SYNs unanswered"), "{h:?}");
        f.close_interval();
        assert!(f.rows(10).iter().all(|r| r.interval == 0));
        assert!(hints(&f.rows(10)).is_empty());
        f.record((8, 0), "psql", b, "ETIMEDOUT");
        let rows = f.rows(10);
        assert_eq!((rows[0].pid, rows[0].count, rows[0].interval), (8, 2, 1));
        f.retain(|k| k.0 != 7);
        assert_eq!(f.rows(10).len(), 1);
        for i in 0..(MAX_ENTRIES as u16 + 3) {
            f.record(
                (9, 0),
                "x",
                SocketAddr::from(([10, 1, 0, 0], i)),
                "ETIMEDOUT",
            );
        }
        assert_eq!(f.overflow, 4);
        assert_eq!(f.rows(20).len(), 20);
    }

    #[test]
    fn error_names_per_process_are_bounded() {
        let mut m = BTreeMap::new();
        for e in 0..(MAX_ERRORS_PER_PROCESS as i32 + 3) {
            count_error(&mut m, &errno_name(1000 + e));
        }
        count_error(&mut m, "1000");
        assert_eq!(m.len(), MAX_ERRORS_PER_PROCESS + 1);
        assert_eq!(m[OTHER], 3);
        assert_eq!(m["1000"], 2);
    }
}
