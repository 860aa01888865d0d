//! Hints: what a snapshot suggests looking at, as a sentence and as the
//! facts behind it (what kind, which process, which destination, how
//! much), so a review can merge the hints of many intervals into one per
//! process and destination, with its peak.

use serde::Serialize;

/// What a hint is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HintKind {
    /// Most connects to a destination failed (value: connects per second).
    FailingConnects,
    /// Short-lived connections to a destination (value: connects per second).
    Churn,
    /// Sockets left in CLOSE_WAIT (value: how many).
    CloseWaitLeak,
    /// Ephemeral ports toward a destination in use (value: percent).
    PortPressure,
    /// A full accept queue dropped attempts (value: attempts dropped).
    ListenOverflow,
    /// An accept queue near its backlog (value: its length).
    ListenNearFull,
    /// Packets dropped for a socket (value: packets).
    SocketDrops,
    /// Packets dropped with no socket (value: packets).
    UnownedDrops,
    /// Connects that took over a second (value: how many, since the start).
    SlowConnects,
    /// Connects that failed with an error (value: failures in the interval).
    ConnectFailed,
}

/// One hint: its sentence and what it is about.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hint {
    pub kind: HintKind,
    pub pid: Option<u32>,
    /// The destination, listener or reason it is about ("" when none).
    pub subject: String,
    /// The measure the sentence names (see [`HintKind`]): what a peak is.
    pub value: f64,
    pub text: String,
}

impl Hint {
    pub fn new(
        kind: HintKind,
        pid: Option<u32>,
        subject: impl Into<String>,
        value: f64,
        text: String,
    ) -> Hint {
        Hint {
            kind,
            pid,
            subject: subject.into(),
            value,
            text,
        }
    }

    /// What identifies "the same hint" across intervals.
    pub fn key(&self) -> (HintKind, Option<u32>, String) {
        (self.kind, self.pid, self.subject.clone())
    }
}

impl std::fmt::Display for Hint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}
