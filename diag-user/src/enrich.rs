//! What procfs knows and the kernel events lack: which process owns a
//! socket that existed before diag started.

pub mod oom;

use std::collections::HashMap;

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

/// Socket inode -> the (first, lowest-pid) process holding it.
pub fn socket_holders() -> HashMap<u64, SocketHolder> {
    let mut map = HashMap::new();
    let Ok(procs) = all_processes() else {
        return map;
    };
    for p in procs.flatten() {
        let Ok(fds) = p.fd() else { continue };
        let comm = crate::text::owned(p.stat().map(|s| s.comm).unwrap_or_default());
        for fd in fds.flatten() {
            if let FDTarget::Socket(inode) = fd.target {
                map.entry(inode).or_insert_with(|| SocketHolder {
                    pid: p.pid as u32,
                    comm: comm.clone(),
                });
            }
        }
    }
    map
}

/// A TCP socket in LISTEN state: local port and socket inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listening {
    pub port: u16,
    pub inode: u64,
}

/// Every listening TCP socket (IPv4 and IPv6) in diag's network namespace.
pub fn listening_sockets() -> Vec<Listening> {
    let mut out = Vec::new();
    for table in [procfs::net::tcp(), procfs::net::tcp6()] {
        for e in table.into_iter().flatten() {
            if e.state == TcpState::Listen {
                out.push(Listening {
                    port: e.local_address.port(),
                    inode: e.inode,
                });
            }
        }
    }
    out
}

/// Listening ports with their owners, for seeding the kernel's listener map.
pub fn listener_owners() -> Vec<(u16, SocketHolder)> {
    let holders = socket_holders();
    listening_sockets()
        .into_iter()
        .filter_map(|l| holders.get(&l.inode).map(|h| (l.port, h.clone())))
        .collect()
}

/// The kernel's TCP socket table (IPv4 and IPv6), with the process holding
/// each socket where one does (TIME_WAIT sockets belong to none).
pub fn tcp_table() -> Vec<crate::aggregate::tcp::TableRow> {
    let holders = socket_holders();
    let mut rows = Vec::new();
    for table in [procfs::net::tcp(), procfs::net::tcp6()] {
        for e in table.into_iter().flatten() {
            let owner = (e.inode != 0)
                .then(|| holders.get(&e.inode))
                .flatten()
                .map(|h| (h.pid, h.comm.clone()));
            rows.push(crate::aggregate::tcp::TableRow {
                local: unmap(e.local_address),
                remote: unmap(e.remote_address),
                state: tcp_state_number(&e.state),
                owner,
            });
        }
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
