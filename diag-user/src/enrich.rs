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
        let comm = p.stat().map(|s| s.comm).unwrap_or_default();
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
