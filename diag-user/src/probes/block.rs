//! Block I/O: `tp_btf` programs on `block_io_start` and
//! `block_rq_complete`, and the maps they fill.

use std::path::Path;

use aya::{
    Btf, Ebpf,
    maps::{HashMap, MapData, PerCpuArray},
};
use diag_common::block::{
    BlockConfig, BlockDevStats, BlockProcKey, BlockProcStats, BlockReq, counters,
};

use crate::{
    aggregate::block::Reading as BlockReading,
    btf,
    error::{EnvError, LoadError},
};

/// The raw tracepoints, in attach order (completions before starts: a
/// request noted at its start always finds its completion program).
pub const TRACEPOINTS: &[&str] = &["block_rq_complete", "block_rq_merge", "block_io_start"];

/// For messages: what is attached.
pub const TRACEPOINT_NAMES: &[&str] = &[
    "tp_btf:block_rq_complete",
    "tp_btf:block_rq_merge",
    "tp_btf:block_io_start",
];

/// Maps only the block programs use: shrunk to one entry when they are
/// not attached.
pub const MAPS: &[&str] = &["BLOCK_REQS", "BLOCK_DEVS", "BLOCK_PROCS"];

/// The offsets on the running kernel, from its BTF; `slow_ns`: the
/// slow-request event threshold (`u64::MAX`: no events).
pub fn layout(btf_path: &Path, slow_ns: u64) -> Result<BlockConfig, EnvError> {
    let bad = |why: String| EnvError::TracepointFormat {
        name: "struct request (kernel BTF)".into(),
        why,
    };
    let btf = btf::Btf::from_file(btf_path).map_err(bad)?;
    layout_from(&btf, slow_ns).map_err(bad)
}

pub fn layout_from(btf: &btf::Btf, slow_ns: u64) -> Result<BlockConfig, String> {
    for (tp, args) in [
        ("block_io_start", 1),
        ("block_rq_merge", 1),
        ("block_rq_complete", 3),
    ] {
        let n = btf.tp_btf_args(tp)?;
        if n != args {
            return Err(format!(
                "the raw tracepoint {tp} has {n} arguments, diag expects {args}"
            ));
        }
    }
    let op = |name: &str| -> Result<u32, String> {
        u32::try_from(btf.enum_value(name)?).map_err(|_| format!("{name} is out of range"))
    };
    Ok(BlockConfig {
        valid: 1,
        rq_q: btf.sized_member("request", "q", 8)?,
        rq_cmd_flags: btf.sized_member("request", "cmd_flags", 4)?,
        rq_data_len: btf.sized_member("request", "__data_len", 4)?,
        rq_sector: btf.sized_member("request", "__sector", 8)?,
        q_disk: btf.sized_member("request_queue", "disk", 8)?,
        disk_major: btf.sized_member("gendisk", "major", 4)?,
        disk_first_minor: btf.sized_member("gendisk", "first_minor", 4)?,
        op_discard: op("REQ_OP_DISCARD")?,
        op_secure_erase: op("REQ_OP_SECURE_ERASE")?,
        op_flush: op("REQ_OP_FLUSH")?,
        // Optional: without it, latency runs from `block_io_start`.
        rq_start_time_ns: btf.sized_member("request", "start_time_ns", 8).unwrap_or(0),
        slow_ns,
    })
}

/// Load and attach the block programs.
pub fn attach(
    ebpf: &mut Ebpf,
    btf: &Btf,
    attached: &mut Vec<&'static str>,
) -> Result<(), LoadError> {
    for (tp, name) in TRACEPOINTS.iter().zip(TRACEPOINT_NAMES) {
        super::attach_tp_btf(ebpf, tp, tp, btf, name)?;
        attached.push(name);
    }
    Ok(())
}

/// Handles on the block maps, for readers.
pub struct BlockMaps {
    reqs: HashMap<MapData, u64, BlockReq>,
    devs: HashMap<MapData, u32, BlockDevStats>,
    procs: HashMap<MapData, BlockProcKey, BlockProcStats>,
    counters: PerCpuArray<MapData, u64>,
    stale: u64,
}

/// A request in flight this long is taken for one the kernel freed
/// without a completion diag saw: removed, counted.
pub const STALE_NS: u64 = 120_000_000_000;

impl BlockMaps {
    /// Take the maps out of the loaded object.
    pub fn take(ebpf: &mut Ebpf) -> Result<BlockMaps, LoadError> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| LoadError::Missing(format!("map {name}")))
        };
        let load = |e: aya::maps::MapError| LoadError::Load(e.to_string());
        Ok(BlockMaps {
            reqs: HashMap::try_from(take("BLOCK_REQS")?).map_err(load)?,
            devs: HashMap::try_from(take("BLOCK_DEVS")?).map_err(load)?,
            procs: HashMap::try_from(take("BLOCK_PROCS")?).map_err(load)?,
            counters: PerCpuArray::try_from(take("BLOCK_COUNTERS")?).map_err(load)?,
            stale: 0,
        })
    }

    /// One reading, as of `now_ns` (boot time); entries that vanish
    /// while we iterate are skipped. Requests in flight longer than
    /// [`STALE_NS`] (freed by the kernel without a completion diag saw)
    /// are removed from the map and counted.
    pub fn read(&mut self, now_ns: u64) -> BlockReading {
        let mut inflight: std::collections::HashMap<u32, u64> = std::collections::HashMap::new();
        let mut stale = Vec::new();
        for (k, r) in self.reqs.iter().filter_map(Result::ok) {
            if now_ns.saturating_sub(r.start_ns) > STALE_NS && r.start_ns != 0 {
                stale.push(k);
            } else {
                *inflight.entry(r.dev).or_default() += 1;
            }
        }
        for k in &stale {
            let _ = self.reqs.remove(k);
        }
        self.stale += stale.len() as u64;
        let mut counters = [0u64; counters::LEN as usize];
        for (i, c) in counters.iter_mut().enumerate() {
            *c = self
                .counters
                .get(&(i as u32), 0)
                .map(|v| v.iter().sum())
                .unwrap_or(0);
        }
        BlockReading {
            devs: self.devs.iter().filter_map(Result::ok).collect(),
            procs: self.procs.iter().filter_map(Result::ok).collect(),
            counters,
            inflight,
            stale: self.stale,
        }
    }

    /// Forget processes that are gone (after their last reading).
    pub fn forget(&mut self, keys: &[BlockProcKey]) {
        for k in keys {
            let _ = self.procs.remove(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The offsets diag reads on the running kernel, checked against the
    /// kernel's BTF as bpftool prints it would be circular; instead: they
    /// resolve, are distinct and lie within the structs.
    #[test]
    fn layout_on_the_running_kernel() {
        let Some(path) = btf::running_kernel_btf("block layout_on_the_running_kernel") else {
            return;
        };
        let c = layout(&path, 5).unwrap();
        assert_eq!(c.valid, 1);
        assert_eq!(c.slow_ns, 5);
        assert_eq!(c.rq_q, 0, "request.q is the first member");
        assert!(c.rq_cmd_flags > 0 && c.rq_data_len > c.rq_cmd_flags);
        assert!(c.rq_sector > c.rq_data_len);
        assert_eq!(c.disk_first_minor, c.disk_major + 4);
        assert_ne!(c.op_flush, c.op_discard);
    }
}
