//! One module per probe family: its tracepoints, layouts and attach code.

pub mod block;
pub mod lock;
pub mod memory;
pub mod oom;
pub mod proc;
pub mod sched;
pub mod tcp;

use aya::{
    Btf, Ebpf,
    programs::{BtfTracePoint, TracePoint},
};

use crate::error::{LoadError, flatten};

/// Load and attach the tracepoint program `prog` to `category:name`.
pub(crate) fn attach_tracepoint(
    ebpf: &mut Ebpf,
    prog: &str,
    category: &'static str,
    name: &'static str,
) -> Result<(), LoadError> {
    let tp = format!("{category}:{name}");
    let program: &mut TracePoint = ebpf
        .program_mut(prog)
        .ok_or_else(|| LoadError::Missing(format!("program {prog}")))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| LoadError::Load(flatten(&e)))?;
    program
        .load()
        .map_err(|e| LoadError::Load(format!("{prog}: {}", flatten(&e))))?;
    program
        .attach(category, name)
        .map_err(|e| LoadError::Attach {
            tracepoint: tp,
            why: flatten(&e),
        })?;
    Ok(())
}

/// Load the `tp_btf` program `prog` for the raw tracepoint `tracepoint`
/// (typed by the kernel's `btf`) and attach it; `name` is what messages
/// call it.
pub(crate) fn attach_tp_btf(
    ebpf: &mut Ebpf,
    prog: &str,
    tracepoint: &str,
    btf: &Btf,
    name: &str,
) -> Result<(), LoadError> {
    let program: &mut BtfTracePoint = ebpf
        .program_mut(prog)
        .ok_or_else(|| LoadError::Missing(format!("program {prog}")))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| LoadError::Load(flatten(&e)))?;
    program
        .load(tracepoint, btf)
        .map_err(|e| LoadError::Load(format!("{prog}: {}", flatten(&e))))?;
    program.attach().map_err(|e| LoadError::Attach {
        tracepoint: name.to_string(),
        why: flatten(&e),
    })?;
    Ok(())
}
