//! OOM kills: `oom:mark_victim` (classic tracepoint, offsets from tracefs)
//! and a `tp_btf` program on the same tracepoint for the victim's task
//! (kernel struct offsets from BTF).

use std::path::Path;

use aya::{Btf as AyaBtf, Ebpf};
use diag_common::oom::{MarkVictimLayout, MemcgLayout, NO_FIELD};

use crate::{
    btf::Btf,
    error::{EnvError, LoadError, flatten},
    tracefs::Format,
};

pub const TRACEPOINT_NAMES: &[&str] = &["oom:mark_victim"];

/// Everything the OOM programs need from this kernel.
#[derive(Debug, Clone, Copy)]
pub struct OomLayouts {
    pub mark_victim: MarkVictimLayout,
    /// `valid == 0` when the kernel's BTF lacks what diag needs; then the
    /// kill is still reported, without memory cgroup facts from the kernel.
    pub memcg: MemcgLayout,
}

/// What `diag check` prints about memory cgroup support, and the layouts.
pub fn layouts(tracefs: &Path, btf: &Path) -> Result<(OomLayouts, Result<(), String>), EnvError> {
    let mark_victim = mark_victim_layout(tracefs)?;
    let memcg = Btf::from_file(btf).and_then(|b| memcg_layout(&b));
    let (memcg, why) = match memcg {
        Ok(l) => (l, Ok(())),
        Err(e) => (MemcgLayout::zeroed(), Err(e)),
    };
    Ok((OomLayouts { mark_victim, memcg }, why))
}

/// Field offsets of `oom:mark_victim` on the running kernel.
pub fn mark_victim_layout(tracefs: &Path) -> Result<MarkVictimLayout, EnvError> {
    let fmt = Format::read(tracefs, "oom", "mark_victim", "OOM kills")?;
    mark_victim_from(&fmt).map_err(|why| EnvError::TracepointFormat {
        name: "oom:mark_victim".into(),
        why,
    })
}

pub fn mark_victim_from(fmt: &Format) -> Result<MarkVictimLayout, String> {
    Ok(MarkVictimLayout {
        pid: fmt.offset("pid", 4)?,
        comm: fmt.offset("comm", 4)?,
        total_vm: fmt.offset("total_vm", 8)?,
        anon_rss: fmt.offset("anon_rss", 8)?,
        file_rss: fmt.offset("file_rss", 8)?,
        shmem_rss: fmt.offset("shmem_rss", 8)?,
        uid: fmt.offset("uid", 4)?,
        pgtables: fmt.offset("pgtables", 8)?,
        oom_score_adj: fmt.offset("oom_score_adj", 2)?,
        valid: 1,
    })
}

/// Kernel struct offsets for following a task to its memory cgroup.
pub fn memcg_layout(btf: &Btf) -> Result<MemcgLayout, String> {
    let memory_id = btf.enum_value("memory_cgrp_id")?;
    let nsubsys = btf.array_len("css_set", "subsys")?;
    if memory_id < 0 || memory_id >= i64::from(nsubsys) {
        return Err(format!(
            "memory_cgrp_id {memory_id} is outside css_set.subsys[{nsubsys}]"
        ));
    }
    let css_in_memcg = btf.offset("mem_cgroup", "css")?;
    if css_in_memcg != 0 {
        return Err(format!(
            "mem_cgroup.css is at offset {css_in_memcg}, diag expects 0"
        ));
    }
    Ok(MemcgLayout {
        task_cgroups: btf.offset("task_struct", "cgroups")?,
        task_pid: btf.offset("task_struct", "pid")?,
        task_tgid: btf.offset("task_struct", "tgid")?,
        cset_memory: btf.offset("css_set", "subsys")? + 8 * memory_id as u32,
        css_cgroup: btf.offset("cgroup_subsys_state", "cgroup")?,
        css_parent: btf.offset("cgroup_subsys_state", "parent")?,
        cgroup_kn: btf.offset("cgroup", "kn")?,
        kn_id: btf.offset("kernfs_node", "id")?,
        memcg_usage: btf.offset("mem_cgroup", "memory.usage")?,
        memcg_max: btf.offset("mem_cgroup", "memory.max")?,
        memcg_oom_lock: btf.offset("mem_cgroup", "oom_lock").unwrap_or(NO_FIELD),
        valid: 1,
    })
}

/// Attach the victim-task program first (it must run before
/// `mark_victim`, which reads its note), then `mark_victim`. If the kernel
/// refuses the `tp_btf` program, kills are still reported, without the
/// victim's memory cgroup from the kernel (said on stderr now, and counted).
pub fn attach(
    ebpf: &mut Ebpf,
    layouts: &OomLayouts,
    btf: Result<&AyaBtf, &LoadError>,
    attached: &mut Vec<&'static str>,
) -> Result<(), LoadError> {
    if layouts.memcg.valid != 0
        && let Err(e) = btf
            .map_err(|e| LoadError::Load(e.to_string()))
            .and_then(|btf| attach_victim_task(ebpf, btf))
            .and_then(|()| mark_victim_task_attached(ebpf))
    {
        tracing::warn!(
            "warning: {e}; OOM kills are still shown, but a victim's memory cgroup \
             only when it triggered the kill itself or is still in /proc"
        );
    }
    super::attach_tracepoint(ebpf, "mark_victim", "oom", "mark_victim")?;
    attached.push(TRACEPOINT_NAMES[0]);
    Ok(())
}

/// Tell `mark_victim` that `oom_victim_task` runs too, so when the kernel
/// calls the classic program first it leaves the kill for the other one to
/// finish (see diag-ebpf/src/oom.rs).
fn mark_victim_task_attached(ebpf: &mut Ebpf) -> Result<(), LoadError> {
    let map = ebpf
        .map_mut("OOM_FLAGS")
        .ok_or_else(|| LoadError::Missing("map OOM_FLAGS".into()))?;
    let mut flags: aya::maps::Array<_, u32> =
        aya::maps::Array::try_from(map).map_err(|e| LoadError::Load(flatten(&e)))?;
    flags.set(0, 1, 0).map_err(|e| LoadError::Load(flatten(&e)))
}

fn attach_victim_task(ebpf: &mut Ebpf, btf: &AyaBtf) -> Result<(), LoadError> {
    super::attach_tp_btf(
        ebpf,
        "oom_victim_task",
        "mark_victim",
        btf,
        "tp_btf/mark_victim",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORMAT: &str = "name: mark_victim
ID: 609
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int pid;\toffset:8;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] comm;\toffset:12;\tsize:4;\tsigned:0;
\tfield:unsigned long total_vm;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned long anon_rss;\toffset:24;\tsize:8;\tsigned:0;
\tfield:unsigned long file_rss;\toffset:32;\tsize:8;\tsigned:0;
\tfield:unsigned long shmem_rss;\toffset:40;\tsize:8;\tsigned:0;
\tfield:uid_t uid;\toffset:48;\tsize:4;\tsigned:0;
\tfield:unsigned long pgtables;\toffset:56;\tsize:8;\tsigned:0;
\tfield:short oom_score_adj;\toffset:64;\tsize:2;\tsigned:1;

print fmt: \"pid=%d comm=%s\", REC->pid, __get_str(comm)
";

    #[test]
    fn mark_victim_format() {
        let f = Format::parse(FORMAT).unwrap();
        let l = mark_victim_from(&f).unwrap();
        assert_eq!((l.pid, l.comm, l.total_vm), (8, 12, 16));
        assert_eq!(
            (l.uid, l.pgtables, l.oom_score_adj, l.valid),
            (48, 56, 64, 1)
        );
        let older = FORMAT.replace(
            "\tfield:unsigned long pgtables;\toffset:56;\tsize:8;\tsigned:0;\n",
            "",
        );
        let err = mark_victim_from(&Format::parse(&older).unwrap()).unwrap_err();
        assert!(err.contains("pgtables"), "{err}");
    }

    #[test]
    fn running_kernel_btf() {
        // Where the host has BTF, the layout resolves and is plausible.
        let Some(path) = crate::btf::running_kernel_btf("probes::oom::running_kernel_btf") else {
            return;
        };
        let btf = Btf::from_file(&path).unwrap();
        let l = memcg_layout(&btf).unwrap();
        assert_eq!(l.valid, 1);
        assert!(l.memcg_max > l.memcg_usage);
        assert!(l.task_tgid > l.task_pid || l.task_tgid + 4 == l.task_pid);
    }
}
