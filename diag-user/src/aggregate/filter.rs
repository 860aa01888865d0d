//! Which events a view shows or a recording keeps: by class, process,
//! port and address family. Pure.

use diag_common::{EventKind, comm_bytes, tcp::AF_INET6, user::AnyEvent};

use crate::cli::{EventClass, Family, Only, TailView};

/// Which events `tail` shows.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Empty: every class.
    pub events: Vec<EventClass>,
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
    pub ports: Vec<u16>,
    pub family: Option<Family>,
    /// Network namespace inodes; empty: all.
    pub netns: Vec<u32>,
}

impl Filter {
    pub fn from_args(a: &TailView) -> Self {
        Filter::new(&a.events, &a.only)
    }

    pub fn new(events: &[EventClass], only: &Only) -> Self {
        Filter {
            events: events.to_vec(),
            pids: only.pid.clone(),
            comms: only.comm.clone(),
            ports: only.port.clone(),
            family: only.family,
            netns: only.netns.clone(),
        }
    }

    pub fn matches(&self, ev: &AnyEvent) -> bool {
        if !self.events.is_empty() && !self.events.contains(&class_of(ev)) {
            return false;
        }
        let h = ev.header();
        let pid_ok = |pid: u32, tgid: u32| self.pids.iter().any(|&p| p == tgid || p == pid);
        let comm_ok = |comm: &[u8; 16]| {
            let comm = comm_bytes(comm);
            self.comms.iter().any(|c| c.as_bytes() == comm)
        };
        if let AnyEvent::OomKill(o) = ev {
            // Victim or trigger; port and family filters are TCP's.
            if !self.pids.is_empty()
                && !pid_ok(o.victim_pid, o.victim_process())
                && !pid_ok(h.pid, h.tgid)
            {
                return false;
            }
            return self.comms.is_empty() || comm_ok(&o.victim_comm) || comm_ok(&h.comm);
        }
        // A stall also matches its villain's pid.
        let villain_ok = match ev {
            AnyEvent::Stall(st) => pid_ok(st.villain_pid, st.villain_tgid),
            AnyEvent::LockWait(l) => pid_ok(l.waker_pid, l.waker_tgid),
            _ => false,
        };
        if !self.pids.is_empty() && !pid_ok(h.pid, h.tgid) && !villain_ok {
            return false;
        }
        // An exit also matches its process's name (the leader's).
        let leader_ok = match ev {
            AnyEvent::ProcExit(x) => comm_ok(&x.comm),
            _ => false,
        };
        if !self.comms.is_empty() && !comm_ok(&h.comm) && !leader_ok {
            return false;
        }
        let (family, sport, dport, netns) = match ev {
            AnyEvent::TcpState(t) => (t.family, t.sport, t.dport, t.netns),
            AnyEvent::TcpSock(t) => (t.family, t.sport, t.dport, t.netns),
            AnyEvent::TcpDrop(t) => (t.family, t.port, t.rport, t.netns),
            AnyEvent::TcpClose(t) => (t.family, t.sport, t.dport, t.netns),
            AnyEvent::OomKill(_)
            | AnyEvent::Stall(_)
            | AnyEvent::ProcExit(_)
            | AnyEvent::BlockSlow(_)
            | AnyEvent::MemStall(_)
            | AnyEvent::LockWait(_) => return true,
        };
        if !self.netns.is_empty() && !self.netns.contains(&netns) {
            return false;
        }
        if !self.ports.is_empty() && !self.ports.iter().any(|&p| p == sport || p == dport) {
            return false;
        }
        match self.family {
            Some(Family::V4) => family != AF_INET6,
            Some(Family::V6) => family == AF_INET6,
            None => true,
        }
    }
}

/// The class (`--events` value) of an event.
pub fn class_of(ev: &AnyEvent) -> EventClass {
    match ev {
        AnyEvent::TcpState(_) => EventClass::Tcp,
        AnyEvent::OomKill(_) => EventClass::Oom,
        AnyEvent::Stall(_) => EventClass::Stall,
        AnyEvent::BlockSlow(_) => EventClass::Io,
        AnyEvent::LockWait(_) => EventClass::Lock,
        AnyEvent::ProcExit(_) => EventClass::Exit,
        AnyEvent::MemStall(_) => EventClass::Memstall,
        AnyEvent::TcpDrop(_) => EventClass::Drop,
        AnyEvent::TcpClose(_) => EventClass::Close,
        AnyEvent::TcpSock(t) => match EventKind::try_from(t.header.kind) {
            Ok(EventKind::TcpResetSent | EventKind::TcpResetReceived) => EventClass::Reset,
            // A change of owner, shown with the state changes.
            Ok(EventKind::TcpAccepted) => EventClass::Tcp,
            _ => EventClass::Retrans,
        },
    }
}

/// Whether a process in `cgroup` (with container id `container`) is in one
/// of `wants`: a cgroup path prefix (ending at a `/`: `/a` keeps `/a/b`,
/// not `/ab`) or, for a want not starting with `/`, a container id prefix.
/// Empty `wants`: everywhere.
pub fn cgroup_matches(wants: &[String], cgroup: Option<&str>, container: Option<&str>) -> bool {
    wants.is_empty()
        || wants.iter().any(|want| {
            let path = cgroup.is_some_and(|c| {
                c == want
                    || c.strip_prefix(want.trim_end_matches('/'))
                        .is_some_and(|rest| rest.starts_with('/'))
            });
            path || (!want.starts_with('/')
                && container.is_some_and(|id| id.starts_with(want.as_str())))
        })
}
