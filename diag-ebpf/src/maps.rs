//! Maps and globals shared by every probe family.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id,
        bpf_ktime_get_boot_ns,
    },
    macros::map,
    maps::{PerCpuArray, RingBuf},
    programs::TracePointContext,
    EbpfContext, Global,
};
use diag_common::{counters, EventHeader, RingConfig};

/// Every event goes through this one ring buffer. User space may resize it
/// at load time (`--ring-size`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Per-CPU counters of things that went wrong (see `diag_common::counters`).
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counters::LEN, 0);

#[unsafe(no_mangle)]
pub static RING_CONFIG: Global<RingConfig> = Global::new(RingConfig {
    wakeup_bytes: 1 << 20,
});

/// Non-zero: the programs say why they skip or lose an event, through
/// aya-log (`diag --kernel-log`). Off by default: a log record costs a
/// ring-buffer write of its own.
#[unsafe(no_mangle)]
pub static KERNEL_LOG: Global<u32> = Global::new(0);

/// Whether kernel-side diagnostics are on.
#[inline(always)]
pub fn log_on() -> bool {
    KERNEL_LOG.load() != 0
}

#[inline(always)]
pub fn count(slot: u32) {
    count_n(slot, 1);
}

#[inline(always)]
pub fn count_n(slot: u32, n: u64) {
    if let Some(p) = COUNTERS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *p += n };
    }
}

/// Flags for a submit: no wakeup unless enough data is waiting, so the
/// reader (which also drains on a short timer) is woken rarely.
#[inline(always)]
pub fn submit_flags() -> u64 {
    let waiting = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    if waiting >= RING_CONFIG.load().wakeup_bytes {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// A header for an event of `kind`, naming the current task.
#[inline(always)]
pub fn current_header(kind: u32) -> EventHeader {
    let pid_tgid = bpf_get_current_pid_tgid();
    EventHeader {
        kind,
        // SAFETY: plain helper calls without arguments.
        cpu: unsafe { bpf_get_smp_processor_id() },
        ts_ns: unsafe { bpf_ktime_get_boot_ns() },
        pid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    }
}

/// A field of a classic tracepoint's record at `offset` (from its tracefs
/// `format`); a failed read is counted.
#[inline(always)]
pub fn field<T>(ctx: &TracePointContext, offset: u32) -> Result<T, u32> {
    // SAFETY: the offset comes from the tracepoint's own format file.
    unsafe { ctx.read_at::<T>(offset as usize) }.map_err(|_| {
        count(counters::READ_ERROR);
        0
    })
}

/// Per-CPU room for one tracepoint record (the BPF stack is too small to
/// hold it next to an event).
#[map]
static RECORD: PerCpuArray<[u8; diag_common::RECORD_MAX]> = PerCpuArray::with_max_entries(1, 0);

/// The first bytes of a classic tracepoint's record, copied with one
/// helper call, so that each field after that is a plain load instead of a
/// helper call of its own. User space checks that the fields it asks for
/// end within [`diag_common::RECORD_MAX`].
pub struct Record {
    buf: *const [u8; diag_common::RECORD_MAX],
}

impl Record {
    #[inline(always)]
    pub fn copy(ctx: &TracePointContext) -> Result<Record, u32> {
        let Some(buf) = RECORD.get_ptr_mut(0) else {
            return Err(0);
        };
        // SAFETY: `buf` is this CPU's slot of the map, of the right size;
        // the helper checks the kernel memory it reads.
        let rc = unsafe {
            aya_ebpf::helpers::generated::bpf_probe_read_kernel(
                buf.cast(),
                diag_common::RECORD_MAX as u32,
                ctx.as_ptr() as *const core::ffi::c_void,
            )
        };
        if rc != 0 {
            count(counters::READ_ERROR);
            return Err(0);
        }
        Ok(Record { buf })
    }

    /// The field at `offset` (bounds-checked: a bad offset is counted).
    #[inline(always)]
    pub fn get<T: Copy>(&self, offset: u32) -> Result<T, u32> {
        let off = offset as usize;
        if off + core::mem::size_of::<T>() > diag_common::RECORD_MAX {
            count(counters::READ_ERROR);
            return Err(0);
        }
        // SAFETY: in bounds (checked above) of this CPU's slot, which only
        // this program touches while it runs; any bit pattern is a valid T
        // for the integer and byte-array fields read here.
        Ok(unsafe { core::ptr::read_unaligned(self.buf.cast::<u8>().add(off).cast::<T>()) })
    }
}

/// A field of a kernel struct by a plain load: `base` is a BTF pointer
/// from a `tp_btf` program's arguments (a `task_struct`, a `sock`) and
/// `offset` a constant of a frozen config global (from the running
/// kernel's BTF), so the verifier checks the access against BTF and makes
/// it fault-safe (a bad address reads as 0).
#[inline(always)]
pub fn btf_load<T: Copy>(base: *const u8, offset: u32) -> T {
    // SAFETY: see above.
    unsafe { core::ptr::read_volatile(base.add(offset as usize) as *const T) }
}

/// A 16-byte field (a `comm`, an IPv6 address) by two 8-byte plain loads
/// inside it (see [`btf_load`]).
#[inline(always)]
pub fn btf_load_16(base: *const u8, offset: u32) -> [u8; 16] {
    let lo: u64 = btf_load(base, offset);
    let hi: u64 = btf_load(base, offset + 8);
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&lo.to_ne_bytes());
    b[8..].copy_from_slice(&hi.to_ne_bytes());
    b
}
