//! What procfs knows and the kernel events lack: which process owns a
//! socket that existed before diag started.

pub mod memory;
pub mod oom;

use std::collections::{BTreeMap, HashMap};

use procfs::{
    net::TcpState,
    process::{FDTarget, all_processes},
};

/// The process holding a socket open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketHolder {
    pub pid: u32,
    pub comm: String,
}

/// What one scan of /proc/PID/fd finds: every process holding each socket
/// inode (lowest pid first), and one process in each network namespace
/// (by namespace inode) whose /proc/PID/net/tcp shows that namespace.
#[derive(Debug, Default)]
pub struct Holders {
    pub sockets: HashMap<u64, Vec<SocketHolder>>,
    pub namespaces: BTreeMap<u32, u32>,
    /// diag's own network namespace.
    pub own_netns: u32,
}

/// The inode of a network namespace link (`net:[4026531840]`).
fn ns_inode(link: &std::path::Path) -> Option<u32> {
    let target = std::fs::read_link(link).ok()?;
    let s = target.to_str()?;
    s.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// diag's own network namespace inode, 0 when unknown.
pub fn own_netns() -> u32 {
    ns_inode(std::path::Path::new("/proc/self/ns/net")).unwrap_or(0)
}

/// One pass over /proc: socket holders and network namespaces.
pub fn holders() -> Holders {
    let mut h = Holders {
        own_netns: own_netns(),
        ..Default::default()
    };
    let Ok(procs) = all_processes() else {
        return h;
    };
    for p in procs.flatten() {
        let Ok(fds) = p.fd() else { continue };
        let pid = p.pid as u32;
        if let Some(ns) = ns_inode(
            &std::path::Path::new("/proc")
                .join(pid.to_string())
                .join("ns/net"),
        ) {
            h.namespaces.entry(ns).or_insert(pid);
        }
        let mut comm = None;
        for fd in fds.flatten() {
            if let FDTarget::Socket(inode) = fd.target {
                let comm = comm
                    .get_or_insert_with(|| {
                        crate::text::owned(p.stat().map(|s| s.comm).unwrap_or_default())
                    })
                    .clone();
                let v = h.sockets.entry(inode).or_default();
                // A process holding one socket twice counts once.
                if v.last().is_none_or(|x: &SocketHolder| x.pid != pid) {
                    v.push(SocketHolder { pid, comm });
                }
            }
        }
    }
    h
}

/// A TCP socket in LISTEN state: network namespace, local address and
/// port, socket inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listening {
    pub netns: u32,
    pub local: std::net::SocketAddr,
    pub inode: u64,
}

/// The TCP tables (IPv4 and IPv6) of every network namespace in `h`
/// (diag's own from /proc/net, the others through one of their processes),
/// with each row's namespace.
fn tables(h: &Holders) -> Vec<(u32, procfs::net::TcpNetEntry)> {
    let mut out = Vec::new();
    for e in [procfs::net::tcp(), procfs::net::tcp6()]
        .into_iter()
        .flatten()
        .flatten()
    {
        out.push((h.own_netns, e));
    }
    for (&ns, &pid) in &h.namespaces {
        if ns == h.own_netns {
            continue;
        }
        let Ok(p) = procfs::process::Process::new(pid as i32) else {
            continue;
        };
        for e in [p.tcp(), p.tcp6()].into_iter().flatten().flatten() {
            out.push((ns, e));
        }
    }
    out
}

fn listening_in(h: &Holders) -> Vec<Listening> {
    tables(h)
        .into_iter()
        .filter(|(_, e)| e.state == TcpState::Listen)
        .map(|(netns, e)| Listening {
            netns,
            local: e.local_address,
            inode: e.inode,
        })
        .collect()
}

/// Listening sockets in every network namespace with their owners (the
/// lowest pid holding them), for seeding the kernel's listener map.
pub fn listener_owners() -> Vec<(Listening, SocketHolder)> {
    let h = holders();
    listening_in(&h)
        .into_iter()
        .filter_map(|l| {
            h.sockets
                .get(&l.inode)
                .and_then(|v| v.first())
                .map(|o| (l, o.clone()))
        })
        .collect()
}

/// The kernel's TCP socket table (IPv4 and IPv6) in every network
/// namespace a process is in, with the processes holding each socket where
/// any do (TIME_WAIT sockets belong to none). One scan of /proc.
pub fn tcp_table() -> Vec<crate::aggregate::tcp::TableRow> {
    let h = holders();
    let mut rows = Vec::new();
    for (netns, e) in tables(&h) {
        let held = (e.inode != 0)
            .then(|| h.sockets.get(&e.inode))
            .flatten()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        rows.push(crate::aggregate::tcp::TableRow {
            local: unmap(e.local_address),
            remote: unmap(e.remote_address),
            state: tcp_state_number(&e.state),
            owner: held.first().map(|o| (o.pid, o.comm.clone())),
            netns,
            holders: held.iter().skip(1).map(|o| o.pid).collect(),
        });
    }
    rows
}

/// IPv4-mapped IPv6 addresses as plain IPv4, as the aggregation keys them.
fn unmap(a: std::net::SocketAddr) -> std::net::SocketAddr {
    match a.ip() {
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => std::net::SocketAddr::new(v4.into(), a.port()),
            None => a,
        },
        _ => a,
    }
}

fn tcp_state_number(s: &TcpState) -> u8 {
    use diag_common::tcp::state;
    match s {
        TcpState::Established => state::ESTABLISHED,
        TcpState::SynSent => state::SYN_SENT,
        TcpState::SynRecv => state::SYN_RECV,
        TcpState::FinWait1 => state::FIN_WAIT1,
        TcpState::FinWait2 => state::FIN_WAIT2,
        TcpState::TimeWait => state::TIME_WAIT,
        TcpState::Close => state::CLOSE,
        TcpState::CloseWait => state::CLOSE_WAIT,
        TcpState::LastAck => state::LAST_ACK,
        TcpState::Listen => state::LISTEN,
        TcpState::Closing => state::CLOSING,
        TcpState::NewSynRecv => state::NEW_SYN_RECV,
    }
}

/// `net.ipv4.ip_local_port_range` (also used for IPv6).
pub fn local_port_range() -> Option<(u16, u16)> {
    let s = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = s.split_whitespace().map(|v| v.parse::<u16>());
    match (it.next(), it.next()) {
        (Some(Ok(lo)), Some(Ok(hi))) if lo <= hi => Some((lo, hi)),
        _ => None,
    }
}

/// The cgroup a process is in, as one path: the unified (v2) path when it
/// is set, else the memory controller's (v1), else systemd's. `None` when
/// the process is gone.
pub fn cgroup_of(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    Some(crate::text::owned(pick_cgroup(&text)))
}

/// See [`cgroup_of`]; `text` is a /proc/PID/cgroup file.
pub fn pick_cgroup(text: &str) -> String {
    let mut unified = None;
    let mut memory = None;
    let mut systemd = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrl, path) = (
            parts.next(),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        match ctrl {
            "" => unified = Some(path),
            "name=systemd" => systemd = Some(path),
            c if c.split(',').any(|x| x == "memory") => memory = Some(path),
            _ => {}
        }
    }
    [unified, memory, systemd]
        .into_iter()
        .flatten()
        .find(|p| *p != "/")
        .unwrap_or("/")
        .to_string()
}

/// The inode of a running process's network namespace (what
/// `readlink /proc/PID/ns/net` shows as `net:[INODE]`).
pub fn netns_of(pid: u32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino())
}

/// A container id in a cgroup path: the last 64-hex-digit component (as
/// docker, containerd and podman name their cgroups), if any.
pub fn container_id(cgroup: &str) -> Option<String> {
    cgroup
        .split(['/', '-', '.', ':'])
        .rev()
        .find(|c| c.len() == 64 && c.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(|c| c[..12].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_paths() {
        let v1 = "9:name=systemd:/\n4:memory:/process_api/7766\n0::/\n";
        assert_eq!(pick_cgroup(v1), "/process_api/7766");
        let v2 = "0::/system.slice/nginx.service\n";
        assert_eq!(pick_cgroup(v2), "/system.slice/nginx.service");
        assert_eq!(pick_cgroup("0::/\n"), "/");
        let docker = format!("/system.slice/docker-{}.scope", "ab".repeat(32));
        assert_eq!(container_id(&docker).as_deref(), Some("abababababab"));
        assert_eq!(container_id("/user.slice"), None);
    }
}
