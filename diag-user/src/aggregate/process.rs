//! Process identity: which process an event's pid names.
//!
//! Processes are keyed by pid and *life*: the kernel reports the end of
//! every process (`ProcExit`, before its pid can be reused: the one ring
//! buffer keeps the order), and the next process with that pid starts a
//! new life from zero. An aggregate keeps the old one, marked exited, as
//! long as it likes; what it still held stays its own. Recordings made
//! before diag traced exits fall back to a guess: a new name on a pid that
//! holds nothing is another process.
//!
//! [`Lives`] keeps only the numbering; what is kept per process (its name,
//! what it holds, whether it ended) is the aggregate's, and [`Lives`] is
//! told about it ([`Kept`]). Pure: no I/O.

use std::collections::HashMap;

use serde::Serialize;

/// A process: its pid and which life of that pid (0 for the first diag
/// saw, more for later processes that reused the pid).
pub type ProcKey = (u32, u32);

/// What is known of the end of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ExitInfo {
    /// When it ended (or was found replaced), boot-time ns.
    pub ts_ns: u64,
    /// When it started, boot-time ns (as /proc/PID/stat's starttime),
    /// when the kernel said.
    pub start_ns: Option<u64>,
}

/// A command name as the kernel keeps it (at most 15 bytes), stored
/// inline: the aggregation holds one per socket, so no allocation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Comm([u8; 16]);

impl Comm {
    pub fn new(s: &str) -> Self {
        let mut c = [0u8; 16];
        let n = s.len().min(15);
        c[..n].copy_from_slice(&s.as_bytes()[..n]);
        Comm(c)
    }

    pub fn from_kernel(c: &[u8; 16]) -> Self {
        let mut out = *c;
        out[15] = 0;
        Comm(out)
    }

    pub fn as_str(&self) -> std::borrow::Cow<'_, str> {
        std::borrow::Cow::Owned(crate::text::comm(&self.0))
    }
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl std::fmt::Display for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.as_str())
    }
}

impl Serialize for Comm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.as_str())
    }
}

/// What [`Lives::resolve`] is told of a life the aggregate keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kept {
    /// It has the name the event gives.
    pub same_name: bool,
    /// It still holds something (a socket): its pid is not free.
    pub holds: bool,
    /// It ended.
    pub exited: bool,
}

/// Which life of a pid an event names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    pub life: u32,
    /// The life before it was guessed to have ended just now (its pid was
    /// reused): the caller marks it exited.
    pub guessed_end: Option<u32>,
}

/// The current life of every pid, from the exits seen (or guessed).
#[derive(Debug, Clone, Default)]
pub struct Lives {
    /// The current life of pids that had a process end (absent: 0).
    lives: HashMap<u32, u32>,
    /// The source reports process exits: reuse is known, not guessed.
    exits_seen: bool,
}

impl Lives {
    pub fn new() -> Self {
        Lives::default()
    }

    /// The current life of `pid`.
    pub fn life_of(&self, pid: u32) -> u32 {
        self.lives.get(&pid).copied().unwrap_or(0)
    }

    /// No pid has had more than one life (or all were forgotten).
    pub fn is_empty(&self) -> bool {
        self.lives.is_empty()
    }

    /// The life of `pid` an event names, for something the aggregate does
    /// not know yet. `opening`: the event starts something (a connect, a
    /// listen, an accepted connection), which only a running process does.
    /// `guess_reuse`: the source has no exits (see the module doc); only
    /// until the first exit arrives. `kept`: what the aggregate keeps of a
    /// life, None when nothing.
    pub fn resolve(
        &mut self,
        pid: u32,
        opening: bool,
        guess_reuse: bool,
        kept: impl Fn(ProcKey) -> Option<Kept>,
    ) -> Resolved {
        let mut life = self.life_of(pid);
        if guess_reuse && !self.exits_seen {
            // No exit events from this source: guess that the pid was
            // reused when the name changed and nothing is held.
            if kept((pid, life)).is_some_and(|k| !k.holds && !k.same_name) {
                life += 1;
                self.lives.insert(pid, life);
                return Resolved {
                    life,
                    guessed_end: Some(life - 1),
                };
            }
        } else if !opening
            && life > 0
            && kept((pid, life)).is_none()
            && kept((pid, life - 1)).is_some_and(|k| k.exited && k.same_name)
        {
            // The process that has just ended, closing what it held: the
            // kernel closes an exiting process's files after reporting its
            // exit (and its pid is not free before that).
            life -= 1;
        }
        Resolved {
            life,
            guessed_end: None,
        }
    }

    /// A process with `pid` ended: the next one with its pid starts a new
    /// life. `kept`: the aggregate keeps its current life (and marks it
    /// exited).
    pub fn on_exit(&mut self, pid: u32, kept: bool) {
        self.exits_seen = true;
        // A pid diag knows nothing of: nothing to keep apart. Else, also
        // for a later process with the pid that was never kept: skip a
        // number, so the life before it is no longer taken for the one
        // that has just ended.
        if kept || self.lives.contains_key(&pid) {
            let life = self.life_of(pid);
            self.lives.insert(pid, life + 1);
        }
    }

    /// Forget the lives of pids `known` says nothing is kept of: they
    /// start from life 0 again.
    pub fn retain(&mut self, known: impl Fn(u32) -> bool) {
        self.lives.retain(|pid, _| known(*pid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(same_name: bool, holds: bool, exited: bool) -> Option<Kept> {
        Some(Kept {
            same_name,
            holds,
            exited,
        })
    }

    #[test]
    fn exits_number_lives_and_unknown_pids_leave_nothing() {
        let mut l = Lives::new();
        l.on_exit(7, false);
        assert!(l.is_empty(), "a pid never kept is not numbered");
        l.on_exit(100, true);
        assert_eq!(l.life_of(100), 1);
        // The next process with pid 100 was never kept, and ended too.
        l.on_exit(100, false);
        assert_eq!(l.life_of(100), 2);
        l.retain(|pid| pid != 100);
        assert_eq!(l.life_of(100), 0);
        assert!(l.is_empty());
    }

    #[test]
    fn the_process_that_just_ended_closes_what_it_held() {
        let mut l = Lives::new();
        l.on_exit(100, true);
        // Life 1 is not kept yet; life 0 ended under the same name.
        let look = |k: ProcKey| (k == (100, 0)).then(|| kept(true, true, true)).flatten();
        let r = l.resolve(100, false, false, look);
        assert_eq!(r.life, 0);
        assert_eq!(r.guessed_end, None);
        // Opening something is the new process.
        assert_eq!(l.resolve(100, true, false, look).life, 1);
        // So is another name.
        let other = |k: ProcKey| (k == (100, 0)).then(|| kept(false, true, true)).flatten();
        assert_eq!(l.resolve(100, false, false, other).life, 1);
    }

    #[test]
    fn reuse_is_guessed_only_without_exits() {
        let mut l = Lives::new();
        let renamed_idle = |_| kept(false, false, false);
        let r = l.resolve(100, false, true, renamed_idle);
        assert_eq!(
            r,
            Resolved {
                life: 1,
                guessed_end: Some(0)
            }
        );
        assert_eq!(l.life_of(100), 1);
        // Holding something, or the same name: the same process.
        assert_eq!(
            l.resolve(100, false, true, |_| kept(false, true, false))
                .life,
            1
        );
        assert_eq!(
            l.resolve(100, false, true, |_| kept(true, false, false))
                .life,
            1
        );
        // Once an exit arrives, nothing is guessed.
        l.on_exit(200, false);
        assert_eq!(l.resolve(100, true, true, renamed_idle).life, 1);
    }
}
