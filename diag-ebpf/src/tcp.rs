//! `sock:inet_sock_set_state`: every TCP state transition, attributed to
//! the process that owns the socket.
//!
//! Many transitions run in softirq context, where the current task is
//! whoever was interrupted. So the owner is learned where it is certain
//! (inside connect/listen/close/shutdown, which run in the owner's own
//! system call), remembered per socket in `SOCK_OWNERS`, and, for passive
//! opens, taken from the listening socket's owner in `LISTENERS`.

use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id,
        bpf_ktime_get_boot_ns, bpf_probe_read_kernel,
    },
    macros::{btf_tracepoint, map, tracepoint},
    maps::HashMap,
    programs::{BtfTracePointContext, TracePointContext},
    Global,
};
use diag_common::{
    counters,
    tcp::{
        attribution, state, InetSockSetStateLayout, SockBtfLayout, SockOwner, TcpSockEvent,
        TcpSockLayout, TcpStateEvent, AF_INET, AF_INET6, IPPROTO_TCP, NO_FIELD,
    },
    EventHeader, EventKind, TASK_COMM_LEN,
};

use crate::maps::{
    btf_load, btf_load_16, count, current_header, field, submit_flags, Record, EVENTS,
};

/// Field offsets from tracefs, written by user space at load time.
#[unsafe(no_mangle)]
static INET_SOCK_SET_STATE: Global<InetSockSetStateLayout> =
    Global::new(InetSockSetStateLayout::zeroed());

/// Owner of each live socket, keyed by `struct sock` address. Entries go
/// when the socket reaches CLOSE. Bounded; a full map is counted.
#[map]
static SOCK_OWNERS: HashMap<u64, SockOwner> = HashMap::with_max_entries(262_144, 0);

/// Owner of each listening socket, keyed by local port.
#[map]
static LISTENERS: HashMap<u16, SockOwner> = HashMap::with_max_entries(16_384, 0);

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    match try_inet_sock_set_state(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

/// Transitions that only happen inside the owner's own system call.
#[inline(always)]
fn in_owner_syscall(old: u8, new: u8) -> bool {
    matches!(
        (old, new),
        (state::CLOSE, state::SYN_SENT)          // connect()
            | (state::CLOSE, state::LISTEN)          // listen()
            | (state::LISTEN, state::CLOSE)          // close() of a listener
            | (state::ESTABLISHED, state::FIN_WAIT1) // close()/shutdown(), we close first
            | (state::CLOSE_WAIT, state::LAST_ACK) // close() after the peer closed
    )
}

/// One transition, as both programs read it.
struct Transition {
    skaddr: u64,
    old: u8,
    new: u8,
    sport: u16,
    dport: u16,
    family: u16,
    saddr: [u8; 16],
    daddr: [u8; 16],
}

fn try_inet_sock_set_state(ctx: &TracePointContext) -> Result<u32, u32> {
    let l = INET_SOCK_SET_STATE.load();
    if l.valid == 0 {
        return Ok(0);
    }
    // One copy of the record, then plain loads.
    let rec = Record::copy(ctx)?;
    let protocol: u16 = rec.get(l.protocol)?;
    if protocol != IPPROTO_TCP {
        return Ok(0);
    }
    let family: u16 = rec.get(l.family)?;
    let (saddr, daddr) = record_addresses(&rec, &l, family);
    let t = Transition {
        skaddr: rec.get(l.skaddr)?,
        old: rec.get::<i32>(l.oldstate)? as u8,
        new: rec.get::<i32>(l.newstate)? as u8,
        sport: rec.get(l.sport)?,
        dport: rec.get(l.dport).unwrap_or(0),
        family,
        saddr,
        daddr,
    };
    on_transition(&t)
}

/// `struct sock` offsets from BTF, written by user space at load time.
#[unsafe(no_mangle)]
static SOCK_BTF: Global<SockBtfLayout> = Global::new(SockBtfLayout::zeroed());

/// The same transitions from the raw tracepoint: its arguments are the
/// socket and the two states, and the socket's fields are read with plain
/// loads (the verifier checks them against BTF; the offsets are constants
/// of the frozen `SOCK_BTF`). No record is built or copied.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_btf(ctx: BtfTracePointContext) -> u32 {
    let l = SOCK_BTF.load();
    if l.valid == 0 {
        return 0;
    }
    // inet_sock_set_state(const struct sock *sk, const int oldstate,
    //                     const int newstate)
    let sk: *const u8 = ctx.arg(0);
    let old: u64 = ctx.arg(1);
    let new: u64 = ctx.arg(2);
    if btf_load::<u16>(sk, l.protocol) != IPPROTO_TCP {
        return 0;
    }
    let family = btf_load::<u16>(sk, l.family);
    let mut saddr = [0u8; 16];
    let mut daddr = [0u8; 16];
    if family == AF_INET6 {
        saddr = btf_load_16(sk, l.saddr_v6);
        daddr = btf_load_16(sk, l.daddr_v6);
    } else if family == AF_INET {
        saddr[..4].copy_from_slice(&btf_load::<u32>(sk, l.saddr).to_ne_bytes());
        daddr[..4].copy_from_slice(&btf_load::<u32>(sk, l.daddr).to_ne_bytes());
    }
    let t = Transition {
        skaddr: sk as u64,
        old: old as u8,
        new: new as u8,
        sport: local_port(sk, &l),
        dport: u16::from_be(btf_load::<u16>(sk, l.dport)),
        family,
        saddr,
        daddr,
    };
    match on_transition(&t) {
        Ok(v) | Err(v) => v,
    }
}

/// The local port: `skc_num`, or once that is cleared (the socket left
/// its port on the way to CLOSE), `inet_sport`, as the tracepoint shows.
#[inline(always)]
fn local_port(sk: *const u8, l: &SockBtfLayout) -> u16 {
    let num = btf_load::<u16>(sk, l.num);
    if num != 0 {
        return num;
    }
    // SAFETY: the offset is from BTF (`struct inet_sock`, which starts
    // with the `struct sock`); the helper checks the address.
    let sport = unsafe { bpf_probe_read_kernel(sk.add(l.inet_sport as usize) as *const u16) };
    u16::from_be(sport.unwrap_or(0))
}

/// Attribute a transition to the socket's owner, remember the owner, and
/// send the event.
#[inline(always)]
fn on_transition(t: &Transition) -> Result<u32, u32> {
    let (skaddr, old, new, sport) = (t.skaddr, t.old, t.new, t.sport);
    let pid_tgid = bpf_get_current_pid_tgid();
    let current_pid = pid_tgid as u32;
    let current_tgid = (pid_tgid >> 32) as u32;
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };

    // The socket's entry, looked up once and then updated in place (no
    // new map element per transition).
    let known = SOCK_OWNERS.get_ptr_mut(skaddr);
    let passive_open = old == state::LISTEN && new == state::SYN_RECV;
    let mut in_old_state_ns: u64 = 0;
    let mut owner = SockOwner {
        pid: current_pid,
        tgid: current_tgid,
        comm: [0; TASK_COMM_LEN],
        last_ts_ns: now,
        skaddr,
    };
    let how = if in_owner_syscall(old, new) {
        attribution::SYSCALL
    } else if passive_open {
        // A new child socket (any entry is a stale one from a freed
        // socket): its owner is whoever owns the listener on this port.
        match unsafe { LISTENERS.get(sport) } {
            Some(o) => {
                owner.pid = o.pid;
                owner.tgid = o.tgid;
                owner.comm = o.comm;
                attribution::LISTENER
            }
            None => attribution::CURRENT,
        }
    } else if let Some(k) = known {
        // SAFETY: a map value pointer, valid while we run; a concurrent
        // delete can at worst give us a stale copy.
        unsafe {
            owner.pid = (*k).pid;
            owner.tgid = (*k).tgid;
            owner.comm = (*k).comm;
            if (*k).last_ts_ns <= now {
                in_old_state_ns = now - (*k).last_ts_ns;
            }
        }
        attribution::SOCKET
    } else {
        attribution::CURRENT
    };
    if how == attribution::SYSCALL || how == attribution::CURRENT {
        owner.comm = bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]);
    }

    if new == state::CLOSE {
        if known.is_some() {
            let _ = SOCK_OWNERS.remove(skaddr);
        }
        if old == state::LISTEN {
            if let Some(o) = unsafe { LISTENERS.get(sport) } {
                if o.skaddr == skaddr {
                    let _ = LISTENERS.remove(sport);
                }
            }
        }
    } else {
        match known {
            // SAFETY: as above; a socket's transitions are serialised by
            // its lock, so nobody else writes this entry meanwhile.
            Some(k) => unsafe { *k = owner },
            None => {
                if SOCK_OWNERS.insert(skaddr, owner, BPF_ANY as u64).is_err() {
                    count(counters::SOCK_MAP_FULL);
                }
            }
        }
        if new == state::LISTEN && LISTENERS.insert(sport, owner, BPF_ANY as u64).is_err() {
            count(counters::LISTEN_MAP_FULL);
        }
    }

    let header = EventHeader {
        kind: EventKind::TcpState as u32,
        // SAFETY: helper without arguments.
        cpu: unsafe { bpf_get_smp_processor_id() },
        ts_ns: now,
        pid: owner.pid,
        tgid: owner.tgid,
        comm: owner.comm,
    };

    let Some(mut entry) = EVENTS.reserve::<TcpStateEvent>(0) else {
        count(counters::RINGBUF_FULL);
        return Ok(0);
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `entry` is a reserved, exclusively owned slot of the right size;
    // every field is written before submit.
    unsafe {
        (*ev).header = header;
        (*ev).skaddr = skaddr;
        (*ev).in_old_state_ns = in_old_state_ns;
        (*ev).saddr = t.saddr;
        (*ev).daddr = t.daddr;
        (*ev).sport = sport;
        (*ev).dport = t.dport;
        (*ev).family = t.family;
        (*ev).old_state = old;
        (*ev).new_state = new;
        (*ev).attribution = how;
        (*ev)._pad = [0; 3];
        (*ev).current_tgid = current_tgid;
    }
    let flags = submit_flags();
    entry.submit(flags);
    count(counters::SUBMITTED);
    Ok(0)
}

/// Local and remote address from a copied record, IPv4 in the first 4 bytes.
#[inline(always)]
fn record_addresses(rec: &Record, l: &InetSockSetStateLayout, family: u16) -> ([u8; 16], [u8; 16]) {
    let mut saddr = [0u8; 16];
    let mut daddr = [0u8; 16];
    if family == AF_INET6 {
        saddr = rec.get(l.saddr_v6).unwrap_or([0; 16]);
        daddr = rec.get(l.daddr_v6).unwrap_or([0; 16]);
    } else if family == AF_INET {
        let s: [u8; 4] = rec.get(l.saddr).unwrap_or([0; 4]);
        let d: [u8; 4] = rec.get(l.daddr).unwrap_or([0; 4]);
        saddr[..4].copy_from_slice(&s);
        daddr[..4].copy_from_slice(&d);
    }
    (saddr, daddr)
}

/// Local and remote address, IPv4 in the first 4 bytes.
#[inline(always)]
fn addresses(
    ctx: &TracePointContext,
    l: &InetSockSetStateLayout,
    family: u16,
) -> ([u8; 16], [u8; 16]) {
    let mut saddr = [0u8; 16];
    let mut daddr = [0u8; 16];
    if family == AF_INET6 {
        saddr = field(ctx, l.saddr_v6).unwrap_or([0; 16]);
        daddr = field(ctx, l.daddr_v6).unwrap_or([0; 16]);
    } else if family == AF_INET {
        let s: [u8; 4] = field(ctx, l.saddr).unwrap_or([0; 4]);
        let d: [u8; 4] = field(ctx, l.daddr).unwrap_or([0; 4]);
        saddr[..4].copy_from_slice(&s);
        daddr[..4].copy_from_slice(&d);
    }
    (saddr, daddr)
}

// ---------------------------------------------------------------------------
// Resets and retransmissions: one event per occurrence, attributed to the
// socket's owner.

#[unsafe(no_mangle)]
static TCP_SEND_RESET: Global<TcpSockLayout> = Global::new(TcpSockLayout::zeroed());
#[unsafe(no_mangle)]
static TCP_RECEIVE_RESET: Global<TcpSockLayout> = Global::new(TcpSockLayout::zeroed());
#[unsafe(no_mangle)]
static TCP_RETRANSMIT_SKB: Global<TcpSockLayout> = Global::new(TcpSockLayout::zeroed());
#[unsafe(no_mangle)]
static TCP_RETRANSMIT_SYNACK: Global<TcpSockLayout> = Global::new(TcpSockLayout::zeroed());

#[tracepoint]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    match try_sock_event(&ctx, TCP_SEND_RESET.load(), EventKind::TcpResetSent) {
        Ok(v) | Err(v) => v,
    }
}

#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    match try_sock_event(&ctx, TCP_RECEIVE_RESET.load(), EventKind::TcpResetReceived) {
        Ok(v) | Err(v) => v,
    }
}

#[tracepoint]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    match try_sock_event(&ctx, TCP_RETRANSMIT_SKB.load(), EventKind::TcpRetransmit) {
        Ok(v) | Err(v) => v,
    }
}

#[tracepoint]
pub fn tcp_retransmit_synack(ctx: TracePointContext) -> u32 {
    match try_sock_event(
        &ctx,
        TCP_RETRANSMIT_SYNACK.load(),
        EventKind::TcpRetransmitSynack,
    ) {
        Ok(v) | Err(v) => v,
    }
}

/// Family, ports and addresses from a `struct sockaddr_in`/`sockaddr_in6`
/// copied into a tracepoint record (28 bytes).
#[inline(always)]
fn from_sockaddr(b: &[u8; 28]) -> (u16, u16, [u8; 16]) {
    let family = u16::from_ne_bytes([b[0], b[1]]);
    let port = u16::from_be_bytes([b[2], b[3]]);
    let mut addr = [0u8; 16];
    if family == AF_INET6 {
        addr.copy_from_slice(&b[8..24]);
    } else {
        addr[..4].copy_from_slice(&b[4..8]);
    }
    (family, port, addr)
}

#[inline(always)]
fn try_sock_event(ctx: &TracePointContext, l: TcpSockLayout, kind: EventKind) -> Result<u32, u32> {
    if l.valid == 0 {
        return Ok(0);
    }
    let skaddr: u64 = if l.skaddr != NO_FIELD {
        field(ctx, l.skaddr)?
    } else {
        0
    };
    let state: u8 = if l.state != NO_FIELD {
        field::<i32>(ctx, l.state)? as u8
    } else {
        0
    };
    let reason: i32 = if l.reason != NO_FIELD {
        field(ctx, l.reason)?
    } else {
        0
    };
    let family: u16;
    let sport: u16;
    let dport: u16;
    let saddr: [u8; 16];
    let daddr: [u8; 16];
    if l.sockaddr == 1 {
        let s: [u8; 28] = field(ctx, l.saddr)?;
        let d: [u8; 28] = field(ctx, l.daddr)?;
        let (f, sp, sa) = from_sockaddr(&s);
        let (_, dp, da) = from_sockaddr(&d);
        family = f;
        sport = sp;
        dport = dp;
        saddr = sa;
        daddr = da;
    } else {
        family = field(ctx, l.family)?;
        sport = field(ctx, l.sport)?;
        dport = field(ctx, l.dport)?;
        let tp = InetSockSetStateLayout {
            saddr: l.saddr,
            daddr: l.daddr,
            saddr_v6: l.saddr_v6,
            daddr_v6: l.daddr_v6,
            ..InetSockSetStateLayout::zeroed()
        };
        (saddr, daddr) = addresses(ctx, &tp, family);
    }

    let mut header = current_header(kind as u32);
    let current_tgid = header.tgid;
    let mut how = attribution::CURRENT;
    if skaddr == 0 {
        how = attribution::KERNEL;
        header.pid = 0;
        header.tgid = 0;
        header.comm = [0; 16];
    } else if let Some(o) = unsafe { SOCK_OWNERS.get(skaddr) } {
        how = attribution::SOCKET;
        header.pid = o.pid;
        header.tgid = o.tgid;
        header.comm = o.comm;
    } else if let Some(o) = unsafe { LISTENERS.get(sport) } {
        // A listener's SYN-ACK, or a socket we never saw: the listener on
        // the local port is the best owner there is.
        how = attribution::LISTENER;
        header.pid = o.pid;
        header.tgid = o.tgid;
        header.comm = o.comm;
    }

    let Some(mut entry) = EVENTS.reserve::<TcpSockEvent>(0) else {
        count(counters::RINGBUF_FULL);
        return Ok(0);
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: reserved, exclusively owned slot; every field is written.
    unsafe {
        (*ev).header = header;
        (*ev).skaddr = skaddr;
        (*ev).saddr = saddr;
        (*ev).daddr = daddr;
        (*ev).sport = sport;
        (*ev).dport = dport;
        (*ev).family = family;
        (*ev).state = state;
        (*ev).attribution = how;
        (*ev).reason = reason;
        (*ev).current_tgid = current_tgid;
    }
    let flags = submit_flags();
    entry.submit(flags);
    count(counters::SUBMITTED);
    Ok(0)
}
