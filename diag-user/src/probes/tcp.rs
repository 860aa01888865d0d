//! TCP state transitions: `sock:inet_sock_set_state`.

use std::path::Path;

use aya::Ebpf;
use diag_common::tcp::InetSockSetStateLayout;

use crate::{
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

pub fn attach(ebpf: &mut Ebpf, attached: &mut Vec<&'static str>) -> Result<(), LoadError> {
    super::attach_tracepoint(ebpf, "inet_sock_set_state", "sock", "inet_sock_set_state")?;
    attached.push(TRACEPOINT_NAMES[0]);
    Ok(())
}
