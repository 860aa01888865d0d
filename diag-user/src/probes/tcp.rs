//! TCP state transitions: `sock:inet_sock_set_state`.

use std::path::Path;

use aya::{Ebpf, maps::HashMap};
use diag_common::{
    TASK_COMM_LEN,
    tcp::{InetSockSetStateLayout, SockOwner},
};

use crate::{
    enrich,
    error::{EnvError, LoadError},
    tracefs::Format,
};

pub const TRACEPOINT_NAMES: &[&str] = &["sock:inet_sock_set_state"];

/// Field offsets of `sock:inet_sock_set_state` on the running kernel.
pub fn layout(tracefs: &Path) -> Result<InetSockSetStateLayout, EnvError> {
    let fmt = Format::read(tracefs, "sock", "inet_sock_set_state", "TCP state changes")?;
    layout_from(&fmt).map_err(|why| EnvError::TracepointFormat {
        name: "sock:inet_sock_set_state".into(),
        why,
    })
}

pub fn layout_from(fmt: &Format) -> Result<InetSockSetStateLayout, String> {
    Ok(InetSockSetStateLayout {
        skaddr: fmt.offset("skaddr", 8)?,
        oldstate: fmt.offset("oldstate", 4)?,
        newstate: fmt.offset("newstate", 4)?,
        sport: fmt.offset("sport", 2)?,
        dport: fmt.offset("dport", 2)?,
        family: fmt.offset("family", 2)?,
        protocol: fmt.offset("protocol", 2)?,
        saddr: fmt.offset("saddr", 4)?,
        daddr: fmt.offset("daddr", 4)?,
        saddr_v6: fmt.offset("saddr_v6", 16)?,
        daddr_v6: fmt.offset("daddr_v6", 16)?,
        valid: 1,
    })
}

/// Tell the kernel program who owns the sockets that were listening before
/// diag started, so passive opens on them are attributed from the first
/// connection. Returns how many were seeded.
pub fn seed_listeners(ebpf: &mut Ebpf) -> Result<usize, LoadError> {
    let map = ebpf
        .map_mut("LISTENERS")
        .ok_or_else(|| LoadError::Missing("map LISTENERS".into()))?;
    let mut map: HashMap<_, u16, SockOwner> =
        HashMap::try_from(map).map_err(|e| LoadError::Load(e.to_string()))?;
    let mut n = 0;
    for (port, holder) in enrich::listener_owners() {
        let mut comm = [0u8; TASK_COMM_LEN];
        let b = holder.comm.as_bytes();
        let len = b.len().min(TASK_COMM_LEN - 1);
        comm[..len].copy_from_slice(&b[..len]);
        let owner = SockOwner {
            pid: holder.pid,
            tgid: holder.pid,
            comm,
            last_ts_ns: 0,
            skaddr: 0,
        };
        // BPF_NOEXIST: a listener the program saw itself wins.
        if map.insert(port, owner, 1).is_ok() {
            n += 1;
        }
    }
    Ok(n)
}

pub fn attach(ebpf: &mut Ebpf, attached: &mut Vec<&'static str>) -> Result<(), LoadError> {
    super::attach_tracepoint(ebpf, "inet_sock_set_state", "sock", "inet_sock_set_state")?;
    attached.push(TRACEPOINT_NAMES[0]);
    Ok(())
}
