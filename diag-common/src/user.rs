//! User-space only: `aya::Pod` impls and decoding of ring-buffer records.

use crate::block::{
    BlockConfig, BlockDevStats, BlockProcKey, BlockProcStats, BlockReq, BlockSlowEvent,
};
use crate::lock::{KernelWaitKey, LockConfig, LockKey, LockProc, LockStat, LockWaitEvent, Waiting};
use crate::memory::{MemCgStats, MemConfig, MemHost, MemStallEvent, MemStats, MemTask, SwapBio};
use crate::oom::{MarkVictimLayout, MemcgLayout, OomKillEvent, VictimTask};
use crate::proc::{ProcConfig, ProcExitEvent};
use crate::sched::{OnCpu, ProcStats, SchedConfig, StallEvent, TaskState};
use crate::tcp::{
    InetSockSetStateLayout, ListenKey, OwnerLayout, SockBtfLayout, SockOwner, TcpCloseEvent,
    TcpCloseLayout, TcpDropEvent, TcpDropLayout, TcpSockEvent, TcpSockLayout, TcpStateEvent,
    NO_FIELD, TCP_SOCK_EVENT_V1_LEN, TCP_STATE_EVENT_V1_LEN,
};
use crate::{EventHeader, EventKind, RingConfig};

// SAFETY: all of these are `#[repr(C)]`, `Copy`, made only of integers and
// byte arrays, with explicit padding: every bit pattern is valid.
unsafe impl aya::Pod for InetSockSetStateLayout {}
unsafe impl aya::Pod for SockBtfLayout {}
unsafe impl aya::Pod for RingConfig {}
unsafe impl aya::Pod for SockOwner {}
unsafe impl aya::Pod for ListenKey {}
unsafe impl aya::Pod for OwnerLayout {}
unsafe impl aya::Pod for TcpSockLayout {}
unsafe impl aya::Pod for TcpDropLayout {}
unsafe impl aya::Pod for TcpCloseLayout {}
unsafe impl aya::Pod for MarkVictimLayout {}
unsafe impl aya::Pod for MemcgLayout {}
unsafe impl aya::Pod for VictimTask {}
unsafe impl aya::Pod for SchedConfig {}
unsafe impl aya::Pod for TaskState {}
unsafe impl aya::Pod for ProcStats {}
unsafe impl aya::Pod for OnCpu {}
unsafe impl aya::Pod for ProcConfig {}
unsafe impl aya::Pod for BlockConfig {}
unsafe impl aya::Pod for BlockReq {}
unsafe impl aya::Pod for BlockDevStats {}
unsafe impl aya::Pod for BlockProcKey {}
unsafe impl aya::Pod for BlockProcStats {}
unsafe impl aya::Pod for MemConfig {}
unsafe impl aya::Pod for MemStats {}
unsafe impl aya::Pod for MemCgStats {}
unsafe impl aya::Pod for MemHost {}
unsafe impl aya::Pod for MemTask {}
unsafe impl aya::Pod for SwapBio {}
unsafe impl aya::Pod for LockConfig {}
unsafe impl aya::Pod for LockKey {}
unsafe impl aya::Pod for LockStat {}
unsafe impl aya::Pod for LockProc {}
unsafe impl aya::Pod for Waiting {}
unsafe impl aya::Pod for KernelWaitKey {}

/// Any event diag's kernel programs emit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnyEvent {
    TcpState(TcpStateEvent),
    /// Kinds TcpResetSent, TcpResetReceived, TcpRetransmit, TcpRetransmitSynack.
    TcpSock(TcpSockEvent),
    /// Kind TcpDrop: a connection lost at a full listen queue.
    TcpDrop(TcpDropEvent),
    /// Kind TcpClose: a connection's summary at its close.
    TcpClose(TcpCloseEvent),
    OomKill(OomKillEvent),
    Stall(StallEvent),
    ProcExit(ProcExitEvent),
    /// A block request slower than the threshold.
    BlockSlow(BlockSlowEvent),
    /// Kind MemStall: a long reclaim or compaction episode.
    MemStall(MemStallEvent),
    /// A futex wait over the threshold, with its waker.
    LockWait(LockWaitEvent),
}

impl AnyEvent {
    /// The event's bytes as the kernel wrote them (for recordings).
    pub fn to_bytes(&self) -> &[u8] {
        match self {
            AnyEvent::TcpState(e) => as_bytes(e),
            AnyEvent::TcpSock(e) => as_bytes(e),
            AnyEvent::TcpDrop(e) => as_bytes(e),
            AnyEvent::TcpClose(e) => as_bytes(e),
            AnyEvent::OomKill(e) => as_bytes(e),
            AnyEvent::Stall(e) => as_bytes(e),
            AnyEvent::ProcExit(e) => as_bytes(e),
            AnyEvent::BlockSlow(e) => as_bytes(e),
            AnyEvent::MemStall(e) => as_bytes(e),
            AnyEvent::LockWait(e) => as_bytes(e),
        }
    }

    pub fn header(&self) -> &EventHeader {
        match self {
            AnyEvent::TcpState(e) => &e.header,
            AnyEvent::TcpSock(e) => &e.header,
            AnyEvent::TcpDrop(e) => &e.header,
            AnyEvent::TcpClose(e) => &e.header,
            AnyEvent::OomKill(e) => &e.header,
            AnyEvent::Stall(e) => &e.header,
            AnyEvent::ProcExit(e) => &e.header,
            AnyEvent::BlockSlow(e) => &e.header,
            AnyEvent::MemStall(e) => &e.header,
            AnyEvent::LockWait(e) => &e.header,
        }
    }
}

/// Why a ring-buffer record could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than the header, or than its kind's payload.
    TooShort {
        kind: Option<u32>,
        len: usize,
        need: usize,
    },
    /// A kind this build does not know (newer kernel object?).
    UnknownKind(u32),
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DecodeError::TooShort {
                kind: Some(k),
                len,
                need,
            } => {
                write!(f, "event of kind {k} is {len} bytes, expected {need}")
            }
            DecodeError::TooShort {
                kind: None,
                len,
                need,
            } => {
                write!(
                    f,
                    "record of {len} bytes is shorter than an event header ({need})"
                )
            }
            DecodeError::UnknownKind(k) => write!(f, "unknown event kind {k}"),
        }
    }
}

fn read<T: Copy>(buf: &[u8], kind: Option<u32>) -> Result<T, DecodeError> {
    let need = core::mem::size_of::<T>();
    if buf.len() < need {
        return Err(DecodeError::TooShort {
            kind,
            len: buf.len(),
            need,
        });
    }
    // SAFETY: length checked above; T is a plain-old-data repr(C) type for
    // which every bit pattern is valid; read_unaligned has no alignment need.
    Ok(unsafe { core::ptr::read_unaligned(buf.as_ptr().cast::<T>()) })
}

/// Like [`read`], but a record of at least `old_len` bytes (the size the
/// type had before fields were added at its end) reads with the missing
/// fields zero: recordings of older versions stay readable.
fn read_grown<T: Copy>(buf: &[u8], kind: u32, old_len: usize) -> Result<T, DecodeError> {
    let need = core::mem::size_of::<T>();
    if buf.len() >= need || buf.len() < old_len {
        return read(buf, Some(kind)).map_err(|e| match e {
            DecodeError::TooShort { kind, len, .. } if len < old_len => DecodeError::TooShort {
                kind,
                len,
                need: old_len,
            },
            e => e,
        });
    }
    // SAFETY: T is a plain-old-data repr(C) type (all zeros is valid); we
    // copy `buf.len() < size_of::<T>()` bytes into it.
    unsafe {
        let mut v: T = core::mem::zeroed();
        core::ptr::copy_nonoverlapping(buf.as_ptr(), (&mut v as *mut T).cast::<u8>(), buf.len());
        Ok(v)
    }
}

/// Decode one ring-buffer record.
pub fn decode(buf: &[u8]) -> Result<AnyEvent, DecodeError> {
    let header: EventHeader = read(buf, None)?;
    match EventKind::try_from(header.kind).map_err(DecodeError::UnknownKind)? {
        EventKind::TcpState => {
            let mut e: TcpStateEvent = read_grown(buf, header.kind, TCP_STATE_EVENT_V1_LEN)?;
            if buf.len() < core::mem::size_of::<TcpStateEvent>() {
                // Written before the listen queue was: not known.
                e.listen_queue = NO_FIELD;
                e.listen_backlog = NO_FIELD;
            }
            Ok(AnyEvent::TcpState(e))
        }
        EventKind::TcpResetSent
        | EventKind::TcpResetReceived
        | EventKind::TcpRetransmit
        | EventKind::TcpRetransmitSynack
        | EventKind::TcpAccepted => Ok(AnyEvent::TcpSock(read_grown(
            buf,
            header.kind,
            TCP_SOCK_EVENT_V1_LEN,
        )?)),
        EventKind::TcpDrop => Ok(AnyEvent::TcpDrop(read(buf, Some(header.kind))?)),
        EventKind::TcpClose => Ok(AnyEvent::TcpClose(read(buf, Some(header.kind))?)),
        EventKind::OomKill => Ok(AnyEvent::OomKill(read(buf, Some(header.kind))?)),
        EventKind::Stall => Ok(AnyEvent::Stall(read(buf, Some(header.kind))?)),
        EventKind::ProcExit => Ok(AnyEvent::ProcExit(read(buf, Some(header.kind))?)),
        EventKind::BlockSlow => Ok(AnyEvent::BlockSlow(read(buf, Some(header.kind))?)),
        EventKind::MemStall => Ok(AnyEvent::MemStall(read(buf, Some(header.kind))?)),
        EventKind::LockWait => Ok(AnyEvent::LockWait(read(buf, Some(header.kind))?)),
    }
}

/// Decode one ring-buffer record into the events it holds: one, or for a
/// [`TcpStateCloseEvent`] (a connection's last transition with its
/// summary) two, the transition first.
pub fn decode_record(buf: &[u8]) -> Result<(AnyEvent, Option<AnyEvent>), DecodeError> {
    let first = decode(buf)?;
    if matches!(first, AnyEvent::TcpState(_))
        && buf.len() == core::mem::size_of::<crate::tcp::TcpStateCloseEvent>()
    {
        let rest = &buf[core::mem::size_of::<TcpStateEvent>()..];
        let header: EventHeader = read(rest, None)?;
        if header.kind != EventKind::TcpClose as u32 {
            return Err(DecodeError::UnknownKind(header.kind));
        }
        return Ok((
            first,
            Some(AnyEvent::TcpClose(read(rest, Some(header.kind))?)),
        ));
    }
    Ok((first, None))
}

/// The bytes of a POD value, e.g. to build test records.
pub fn as_bytes<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: T is Copy POD (callers use the repr(C) types of this crate);
    // we only view its bytes for its own lifetime.
    unsafe { core::slice::from_raw_parts((v as *const T).cast::<u8>(), core::mem::size_of::<T>()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp::TcpStateEvent;

    fn sample() -> TcpStateEvent {
        let mut header = EventHeader::zeroed();
        header.kind = EventKind::TcpState as u32;
        header.pid = 7;
        header.tgid = 7;
        TcpStateEvent {
            header,
            skaddr: 0xffff_0000_1234,
            in_old_state_ns: 5,
            saddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            daddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            sport: 40000,
            dport: 80,
            family: crate::tcp::AF_INET,
            old_state: 7,
            new_state: 2,
            attribution: 1,
            err_known: 1,
            _pad: [0; 2],
            current_tgid: 7,
            netns: 4026531840,
            listen_queue: NO_FIELD,
            listen_backlog: NO_FIELD,
            err: 111,
        }
    }

    #[test]
    fn round_trip() {
        let e = sample();
        assert_eq!(decode(as_bytes(&e)), Ok(AnyEvent::TcpState(e)));
        let any = AnyEvent::TcpState(e);
        assert_eq!(decode(any.to_bytes()), Ok(any));
    }

    #[test]
    fn a_closing_record_splits_into_the_transition_and_its_summary() {
        let state = sample();
        let mut close: crate::tcp::TcpCloseEvent = unsafe { core::mem::zeroed() };
        close.header = state.header;
        close.header.kind = EventKind::TcpClose as u32;
        close.skaddr = state.skaddr;
        close.bytes_acked = 1234;
        let pair = crate::tcp::TcpStateCloseEvent { state, close };
        assert_eq!(
            decode_record(as_bytes(&pair)),
            Ok((AnyEvent::TcpState(state), Some(AnyEvent::TcpClose(close))))
        );
        // A lone transition is one event.
        assert_eq!(
            decode_record(as_bytes(&state)),
            Ok((AnyEvent::TcpState(state), None))
        );
        // A pair whose second half is not a summary is damage, not two
        // events.
        let mut bad = pair;
        bad.close.header.kind = 9999;
        assert_eq!(
            decode_record(as_bytes(&bad)),
            Err(DecodeError::UnknownKind(9999))
        );
        // Cut short: the transition alone is not claimed to be whole.
        let cut = &as_bytes(&pair)[..core::mem::size_of::<crate::tcp::TcpStateCloseEvent>() - 8];
        assert_eq!(decode_record(cut), Ok((AnyEvent::TcpState(state), None)));
    }

    #[test]
    fn older_state_records_decode_without_a_listen_queue() {
        let mut e = sample();
        e.listen_queue = 3;
        e.listen_backlog = 16;
        assert_eq!(decode(as_bytes(&e)), Ok(AnyEvent::TcpState(e)));
        // Written before the listen queue (112 bytes) and before netns
        // (104 bytes): the queue is unknown, not 0/0.
        for len in [112, 104] {
            let Ok(AnyEvent::TcpState(old)) = decode(&as_bytes(&e)[..len]) else {
                panic!("a {len}-byte record decodes");
            };
            assert_eq!((old.listen_queue, old.listen_backlog), (NO_FIELD, NO_FIELD));
            assert_eq!(old.skaddr, e.skaddr);
        }
    }

    #[test]
    fn tcp_close_round_trip() {
        let mut header = EventHeader::zeroed();
        header.kind = EventKind::TcpClose as u32;
        header.tgid = 43;
        let e = crate::tcp::TcpCloseEvent {
            header,
            skaddr: 0xffff_4321,
            duration_ns: 300_000_000,
            bytes_acked: 1000,
            bytes_sent: 1000,
            bytes_received: 2000,
            saddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            daddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            sport: 40000,
            dport: 8080,
            family: crate::tcp::AF_INET,
            old_state: crate::tcp::state::FIN_WAIT2,
            closed_by: crate::tcp::closed_by::LOCAL,
            attribution: crate::tcp::attribution::SOCKET,
            _pad: [0; 3],
            total_retrans: 1,
            srtt_us: 40,
            netns: 4026531840,
            current_tgid: 43,
            _pad2: 0,
        };
        assert_eq!(decode(as_bytes(&e)), Ok(AnyEvent::TcpClose(e)));
        assert_eq!(AnyEvent::TcpClose(e).header().tgid, 43);
        assert!(matches!(
            decode(&as_bytes(&e)[..100]),
            Err(DecodeError::TooShort { need: 144, .. })
        ));
    }

    #[test]
    fn tcp_drop_round_trip() {
        let mut header = EventHeader::zeroed();
        header.kind = EventKind::TcpDrop as u32;
        header.tgid = 42;
        let e = crate::tcp::TcpDropEvent {
            header,
            skaddr: 0xffff_1234,
            addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            raddr: [127, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            port: 8080,
            rport: 50000,
            family: crate::tcp::AF_INET,
            cause: crate::tcp::drop_cause::SYN_ACCEPT_QUEUE_FULL,
            attribution: crate::tcp::attribution::LISTENER,
            reason: 0,
            netns: 4026531840,
            queue: 3,
            backlog: 2,
            current_tgid: 9,
            count: 1,
        };
        assert_eq!(decode(as_bytes(&e)), Ok(AnyEvent::TcpDrop(e)));
        assert_eq!(AnyEvent::TcpDrop(e).header().tgid, 42);
        assert_eq!(
            decode(&as_bytes(&e)[..100]),
            Err(DecodeError::TooShort {
                kind: Some(7),
                len: 100,
                need: 112
            })
        );
    }

    #[test]
    fn mem_stall_round_trip() {
        let mut header = EventHeader::zeroed();
        header.kind = EventKind::MemStall as u32;
        header.pid = 11;
        let e = MemStallEvent {
            header,
            kind: crate::memory::stall_kind::MEMCG,
            order: 0,
            dur_ns: 25_000_000,
            scanned: 64,
            reclaimed: 32,
            throttled_ns: 0,
            memcg_ino: 77,
            limit_ino: 77,
            limit_pages: 4096,
            usage_pages: 4090,
        };
        assert_eq!(decode(as_bytes(&e)), Ok(AnyEvent::MemStall(e)));
        assert!(matches!(
            decode(&as_bytes(&e)[..100]),
            Err(DecodeError::TooShort { kind: Some(40), .. })
        ));
    }

    #[test]
    fn stall_round_trip() {
        let mut header = EventHeader::zeroed();
        header.kind = EventKind::Stall as u32;
        header.pid = 11;
        header.tgid = 10;
        let e = StallEvent {
            header,
            wait_ns: 12_000_000,
            villain_pid: 21,
            villain_tgid: 20,
            villain_comm: *b"hog\0\0\0\0\0\0\0\0\0\0\0\0\0",
        };
        assert_eq!(decode(as_bytes(&e)), Ok(AnyEvent::Stall(e)));
        assert_eq!(
            decode(&as_bytes(&e)[..60]),
            Err(DecodeError::TooShort {
                kind: Some(20),
                len: 60,
                need: 72
            })
        );
    }

    #[test]
    fn proc_exit_round_trip_and_fields() {
        use crate::proc::exit_flags;
        let mut header = EventHeader::zeroed();
        header.kind = EventKind::ProcExit as u32;
        header.pid = 12;
        header.tgid = 10;
        let mut e = ProcExitEvent {
            header,
            start_ns: 123_456_789,
            exit_code: 3 << 8,
            flags: exit_flags::GROUP_DEAD | exit_flags::START_BOOTTIME,
            comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
        };
        assert_eq!(decode(as_bytes(&e)), Ok(AnyEvent::ProcExit(e)));
        assert_eq!(AnyEvent::ProcExit(e).header().tgid, 10);
        assert_eq!((e.exit_status(), e.signal()), (Some(3), None));
        assert_eq!(e.start_boottime_ns(), Some(123_456_789));
        e.exit_code = 9; // SIGKILL
        assert_eq!((e.exit_status(), e.signal()), (None, Some(9)));
        e.flags |= exit_flags::NO_START | exit_flags::NO_EXIT_CODE;
        assert_eq!((e.exit_status(), e.signal()), (None, None));
        assert_eq!(e.start_boottime_ns(), None);
        assert_eq!(
            decode(&as_bytes(&e)[..71]),
            Err(DecodeError::TooShort {
                kind: Some(30),
                len: 71,
                need: 72
            })
        );
    }

    #[test]
    fn block_slow_round_trip() {
        let mut header = EventHeader::zeroed();
        header.kind = EventKind::BlockSlow as u32;
        header.pid = 12;
        header.tgid = 10;
        let e = BlockSlowEvent {
            header,
            lat_ns: 25_000_000,
            sector: 2048,
            bytes: 65536,
            dev: crate::block::dev_key(7, 3),
            op: crate::block::op::WRITE,
            error: 0,
            _pad: 0,
        };
        assert_eq!(decode(as_bytes(&e)), Ok(AnyEvent::BlockSlow(e)));
        assert_eq!(crate::block::dev_parts(e.dev), (7, 3));
        assert_eq!(
            decode(&as_bytes(&e)[..79]),
            Err(DecodeError::TooShort {
                kind: Some(50),
                len: 79,
                need: 80
            })
        );
    }

    #[test]
    fn short_and_unknown() {
        let e = sample();
        let b = as_bytes(&e);
        assert_eq!(
            decode(&b[..10]),
            Err(DecodeError::TooShort {
                kind: None,
                len: 10,
                need: 40
            })
        );
        assert_eq!(
            decode(&b[..50]),
            Err(DecodeError::TooShort {
                kind: Some(1),
                len: 50,
                need: 104
            })
        );
        // A record of the size before `netns` (an old recording) decodes
        // with netns 0 (and err 0; its err_known was padding, written 0).
        let mut old = e;
        old.netns = 0;
        old.err = 0;
        assert_eq!(decode(&b[..104]), Ok(AnyEvent::TcpState(old)));
        let mut bad = e;
        bad.header.kind = 99;
        assert_eq!(decode(as_bytes(&bad)), Err(DecodeError::UnknownKind(99)));
    }

    #[test]
    fn oom_round_trip_and_short() {
        let mut header = EventHeader::zeroed();
        header.kind = EventKind::OomKill as u32;
        header.pid = 10;
        header.tgid = 10;
        let e = OomKillEvent {
            header,
            victim_pid: 11,
            victim_tgid: 11,
            victim_comm: *b"memhog\0\0\0\0\0\0\0\0\0\0",
            victim_uid: 1000,
            oom_score_adj: -17,
            constraint: crate::oom::constraint::MEMCG,
            memcg_how: crate::oom::memcg_how::OOM_LOCK,
            total_vm_kb: 1,
            anon_rss_kb: 2,
            file_rss_kb: 3,
            shmem_rss_kb: 4,
            pgtables_kb: 5,
            victim_memcg_ino: 6,
            trigger_memcg_ino: 7,
            oom_memcg_ino: 8,
            oom_memcg_limit_pages: 9,
            oom_memcg_usage_pages: 10,
        };
        assert_eq!(decode(as_bytes(&e)), Ok(AnyEvent::OomKill(e)));
        assert_eq!(e.rss_kb(), 9);
        assert_eq!(
            decode(&as_bytes(&e)[..100]),
            Err(DecodeError::TooShort {
                kind: Some(10),
                len: 100,
                need: 152
            })
        );
    }
}
