//! `sock:inet_sock_set_state`: every TCP state transition, attributed to
//! the process that owns the socket.
//!
//! Many transitions run in softirq context, where the current task is
//! whoever was interrupted. So the owner is learned where it is certain
//! (inside connect/listen/close/shutdown, which run in the owner's own
//! system call), remembered per socket in `SOCK_OWNERS`, and, for passive
//! opens, taken from the listening socket's owner in `LISTENERS` (keyed by
//! network namespace, address and port) until a process takes the
//! connection: its first read or write (`sock_recv_length`,
//! `sock_send_length`, tp_btf: they run in the reading or writing task)
//! makes the socket that task's. Optionally (`--accept-probe`, it slows
//! every system call on the host) `sys_exit_accept4`/`sys_exit_accept`
//! do the same at accept(), following the new file descriptor to its
//! socket.

use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id,
        bpf_ktime_get_boot_ns, bpf_probe_read_kernel, generated::bpf_skc_to_tcp_sock,
    },
    macros::{btf_tracepoint, map, tracepoint},
    maps::{Array, HashMap, PerCpuArray},
    programs::{BtfTracePointContext, TracePointContext},
    Global,
};
use diag_common::{
    counters,
    tcp::{
        attribution, closed_by, drop_cause, state, InetSockSetStateLayout, ListenKey, OwnerLayout,
        SockBtfLayout, SockOwner, TcpCloseEvent, TcpCloseLayout, TcpDropEvent, TcpDropLayout,
        TcpSockEvent, TcpSockLayout, TcpStateCloseEvent, TcpStateEvent, AF_INET, AF_INET6,
        DROP_REASONS, IPPROTO_TCP, NO_FIELD, UNOWNED_REASON_SLOTS,
    },
    EventHeader, EventKind, TASK_COMM_LEN,
};

use crate::maps::{
    btf_load, btf_load_16, count, count_n, current_header, field, submit_flags, Record, EVENTS,
};

/// Field offsets from tracefs, written by user space at load time.
#[unsafe(no_mangle)]
static INET_SOCK_SET_STATE: Global<InetSockSetStateLayout> =
    Global::new(InetSockSetStateLayout::zeroed());

/// Owner of each live socket, keyed by `struct sock` address. Entries go
/// when the socket reaches CLOSE. Bounded; a full map is counted.
#[map]
static SOCK_OWNERS: HashMap<u64, SockOwner> = HashMap::with_max_entries(262_144, 0);

/// Owner of each listening socket, keyed by network namespace, family,
/// local address and port.
#[map]
static LISTENERS: HashMap<ListenKey, SockOwner> = HashMap::with_max_entries(16_384, 0);

/// Listeners whose accept queue was seen full or nearly (at 80 % of the
/// backlog or within 2 of it), by skaddr, and how many there are: while none is,
/// the consume_skb program returns after its location check, so a SYN a
/// healthy listener answers costs two loads, not a header parse and a
/// listener lookup. A listener leaves when a passive open finds its queue
/// at half its backlog or less (drained; the gap keeps concurrent opens
/// from clearing a queue that just filled) or when it closes. The count
/// only errs towards "some are full" (a failed insert keeps it above 0
/// for good): that costs time, never a drop.
#[map]
static FULL_LISTENERS: HashMap<u64, u8> = HashMap::with_max_entries(4096, 0);
#[map]
static FULL_COUNT: Array<u64> = Array::with_max_entries(1, 0);

/// Listeners marked full (0: none; unreadable counts as some).
#[inline(always)]
fn full_listeners() -> u64 {
    FULL_COUNT.get(0).copied().unwrap_or(1)
}

#[inline(always)]
fn add_full(v: u64) {
    if let Some(p) = FULL_COUNT.get_ptr_mut(0) {
        // SAFETY: a map value pointer, 8-byte aligned, valid while we run;
        // the kernel allows atomic adds on map values (no fetch: BPF v1).
        unsafe {
            core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                p, v,
            )
        };
    }
}

/// A listener's accept queue `queue` (the connections now in it) against
/// its `max`: mark it full, or unmark it once drained.
#[inline(always)]
fn note_fill(listener: u64, queue: u32, max: u32) {
    if queue == NO_FIELD || max == NO_FIELD || listener == 0 {
        return;
    }
    // Marked from 80 % (and within 2 of the backlog): passive opens on
    // other CPUs at the same moment read the queue before each other's
    // connection joins it, so the one that overfills it may never see
    // more than the backlog (seen in CI: 50 concurrent connects on 2 CPUs
    // to a backlog of 2). Marking early costs time, never a drop.
    if queue.saturating_add(2) > max || u64::from(queue) * 5 >= u64::from(max) * 4 {
        match FULL_LISTENERS.insert(listener, 1, aya_ebpf::bindings::BPF_NOEXIST as u64) {
            Ok(()) => add_full(1),
            // Already marked.
            Err(-17) => {}
            // Map full: some stay unmarked, so the gate stays open.
            Err(_) => {
                count(counters::LISTEN_MAP_FULL);
                add_full(1);
            }
        }
    } else if u64::from(queue) * 2 <= u64::from(max) && full_listeners() != 0 {
        unmark_full(listener);
    }
}

#[inline(always)]
fn unmark_full(listener: u64) {
    if FULL_LISTENERS.remove(listener).is_ok() {
        add_full(u64::MAX);
    }
}

/// Offsets for the accept program and for network namespaces (BTF and
/// tracefs), written by user space at load time.
#[unsafe(no_mangle)]
static OWNER_LAYOUT: Global<OwnerLayout> = Global::new(OwnerLayout::zeroed());

/// A kernel value at `addr` by helper (fault-safe); a failed read is
/// counted.
#[inline(always)]
fn kread<T>(addr: u64) -> Result<T, u32> {
    // SAFETY: the helper checks the address.
    unsafe { bpf_probe_read_kernel(addr as *const T) }.map_err(|_| {
        count(counters::READ_ERROR);
        0
    })
}

/// The pointer at `base + offset`, if `base` and it are not null.
#[inline(always)]
fn follow(base: u64, offset: u32) -> Option<u64> {
    if base == 0 {
        return None;
    }
    kread::<u64>(base + offset as u64).ok().filter(|p| *p != 0)
}

/// The inode of a `struct net`, 0 when unknown.
#[inline(always)]
fn net_inum(net: Option<u64>, l: &OwnerLayout) -> u32 {
    net.and_then(|n| kread::<u32>(n + l.net_inum as u64).ok())
        .unwrap_or(0)
}

/// The inode of a socket's network namespace
/// (`sk->__sk_common.skc_net.net->ns.inum`), 0 when unknown.
#[inline(always)]
fn netns_of(sk: u64) -> u32 {
    let l = OWNER_LAYOUT.load();
    if l.net_valid == 0 {
        return 0;
    }
    net_inum(follow(sk, l.sk_net), &l)
}

/// The inode of a packet's network namespace
/// (`skb->dev->nd_net.net->ns.inum`), 0 when unknown.
#[inline(always)]
fn netns_of_skb(skb: u64) -> u32 {
    let l = OWNER_LAYOUT.load();
    if l.skb_net_valid == 0 {
        return 0;
    }
    let net = follow(skb, l.skb_dev).and_then(|dev| follow(dev, l.dev_net));
    net_inum(net, &l)
}

/// A socket's `sk_err` (offset from BTF), as (known, errno); (0, 0) when
/// the offset is unknown or the read failed (counted).
#[inline(always)]
fn sock_err(sk: u64) -> (u8, i32) {
    let off = OWNER_LAYOUT.load().sk_err;
    if off == 0 || sk == 0 {
        return (0, 0);
    }
    match kread::<i32>(sk + off as u64) {
        Ok(e) => (1, e),
        Err(_) => (0, 0),
    }
}

/// The owner of the listener a connection to (`netns`, `family`, `addr`,
/// `port`) came to: one bound to that address, else a wildcard one.
#[inline(always)]
fn listener_of(netns: u32, family: u16, addr: &[u8; 16], port: u16) -> Option<SockOwner> {
    let mut key = ListenKey {
        netns,
        port,
        family,
        addr: *addr,
    };
    // SAFETY: map lookups; values are copied out at once.
    if let Some(o) = unsafe { LISTENERS.get(key) } {
        return Some(*o);
    }
    key.addr = [0; 16];
    unsafe { LISTENERS.get(key) }.copied()
}

/// A closing connection's counters (`struct tcp_sock`).
struct CloseCounts {
    bytes_acked: u64,
    bytes_sent: u64,
    bytes_received: u64,
    total_retrans: u32,
    srtt: u32,
}

/// How a program reads a socket's fields beyond what the transition
/// carries: the classic tracepoint by helper call (its `skaddr` is only a
/// number), the tp_btf one by plain loads through its BTF pointer (no
/// helper call; a fault reads 0). Generic, so each program's code holds
/// only its own kind of read.
trait SockFields {
    /// The socket's network namespace inode, 0 when unknown.
    fn netns(&self) -> u32;
    /// `sk_err` as (known, errno).
    fn err(&self) -> (u8, i32);
    /// The counters of a connection at its close; None without offsets.
    fn close(&self) -> Option<CloseCounts>;
}

/// Reads by `bpf_probe_read_kernel`.
struct ByHelper(u64);

impl SockFields for ByHelper {
    #[inline(always)]
    fn netns(&self) -> u32 {
        netns_of(self.0)
    }

    #[inline(always)]
    fn err(&self) -> (u8, i32) {
        sock_err(self.0)
    }

    #[inline(always)]
    fn close(&self) -> Option<CloseCounts> {
        let l = TCP_CLOSE.load();
        if l.valid == 0 {
            return None;
        }
        let sk = self.0;
        Some(CloseCounts {
            bytes_acked: kread(sk + l.bytes_acked as u64).unwrap_or(0),
            bytes_sent: kread(sk + l.bytes_sent as u64).unwrap_or(0),
            bytes_received: kread(sk + l.bytes_received as u64).unwrap_or(0),
            total_retrans: kread(sk + l.total_retrans as u64).unwrap_or(0),
            srtt: kread(sk + l.srtt_us as u64).unwrap_or(0),
        })
    }
}

/// Plain loads through a tp_btf program's `struct sock *` (offsets are
/// constants of frozen globals, checked by the verifier against BTF).
struct Direct(*const u8);

impl SockFields for Direct {
    #[inline(always)]
    fn netns(&self) -> u32 {
        let l = OWNER_LAYOUT.load();
        if l.net_valid == 0 {
            return 0;
        }
        // `sk->__sk_common.skc_net.net`, then `net->ns.inum`.
        let net: *const u8 = btf_load(self.0, l.sk_net);
        if net.is_null() {
            return 0;
        }
        btf_load::<u32>(net, l.net_inum)
    }

    #[inline(always)]
    fn err(&self) -> (u8, i32) {
        let off = OWNER_LAYOUT.load().sk_err;
        if off == 0 {
            return (0, 0);
        }
        (1, btf_load::<i32>(self.0, off))
    }

    #[inline(always)]
    fn close(&self) -> Option<CloseCounts> {
        let l = TCP_CLOSE.load();
        if l.valid == 0 {
            return None;
        }
        // The `tcp_sock` fields lie past the end of `struct sock`: the
        // helper gives the pointer its full type (or NULL).
        // SAFETY: a BTF socket pointer, as the helper wants.
        let tp = unsafe { bpf_skc_to_tcp_sock(self.0 as *mut core::ffi::c_void) } as *const u8;
        if tp.is_null() {
            return ByHelper(self.0 as u64).close();
        }
        Some(CloseCounts {
            bytes_acked: btf_load(tp, l.bytes_acked),
            bytes_sent: btf_load(tp, l.bytes_sent),
            bytes_received: btf_load(tp, l.bytes_received),
            total_retrans: btf_load(tp, l.total_retrans),
            srtt: btf_load(tp, l.srtt_us),
        })
    }
}

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
    on_transition(&t, &ByHelper(t.skaddr))
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
    match on_transition(&t, &Direct(sk)) {
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
fn on_transition<S: SockFields>(t: &Transition, s: &S) -> Result<u32, u32> {
    let (skaddr, old, new, sport) = (t.skaddr, t.old, t.new, t.sport);
    let pid_tgid = bpf_get_current_pid_tgid();
    let current_pid = pid_tgid as u32;
    let current_tgid = (pid_tgid >> 32) as u32;
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };

    let passive_open = old == state::LISTEN && new == state::SYN_RECV;
    // A new socket (CLOSE -> ..., or a passive open's child) has no
    // entry of its own yet: any entry at its address is a stale one, which
    // the insert below replaces, so it is not looked up. Other sockets'
    // entries are looked up once and then updated in place.
    let fresh = old == state::CLOSE || passive_open;
    let known = if fresh {
        None
    } else {
        SOCK_OWNERS.get_ptr_mut(skaddr)
    };
    let mut in_old_state_ns: u64 = 0;
    let mut listen = (NO_FIELD, NO_FIELD);
    let mut owner = SockOwner {
        pid: current_pid,
        tgid: current_tgid,
        comm: [0; TASK_COMM_LEN],
        last_ts_ns: now,
        skaddr,
        netns: 0,
        how: 0,
        closer: 0,
        _pad: [0; 2],
        born_ns: 0,
    };
    // The namespace never changes: read once, then remembered; so are the
    // socket's birth and who closed first.
    match known {
        // SAFETY: a map value pointer, valid while we run.
        Some(k) => unsafe {
            owner.netns = (*k).netns;
            owner.born_ns = (*k).born_ns;
            owner.closer = (*k).closer;
        },
        None => {
            owner.netns = s.netns();
            if fresh {
                owner.born_ns = now;
            }
        }
    }
    if owner.closer == 0 && old == state::ESTABLISHED {
        if new == state::FIN_WAIT1 {
            owner.closer = closed_by::LOCAL;
        } else if new == state::CLOSE_WAIT {
            owner.closer = closed_by::REMOTE;
        }
    }
    // Whether the current task's name is needed (and not already known).
    let mut need_comm = false;
    let how = if in_owner_syscall(old, new) {
        need_comm = true;
        // Still the process that accepted it: later events say so. The
        // same thread as the entry's: its name is the entry's (a thread
        // renamed since then shows its former name here).
        if let Some(k) = known {
            // SAFETY: as above.
            unsafe {
                if (*k).tgid == current_tgid {
                    owner.how = (*k).how;
                    if (*k).pid == current_pid {
                        owner.comm = (*k).comm;
                        need_comm = false;
                    }
                }
            }
        }
        attribution::SYSCALL
    } else if passive_open {
        // A new child socket: until a process accepts it, its owner is
        // whoever owns the listener it came to.
        match listener_of(owner.netns, t.family, &t.saddr, sport) {
            Some(o) => {
                listen = listener_fill(o.skaddr);
                note_fill(o.skaddr, listen.0, listen.1);
                owner.pid = o.pid;
                owner.tgid = o.tgid;
                owner.comm = o.comm;
                owner.how = attribution::LISTENER;
                attribution::LISTENER
            }
            None => {
                need_comm = true;
                attribution::CURRENT
            }
        }
    } else if let Some(k) = known {
        // SAFETY: a map value pointer, valid while we run; a concurrent
        // delete can at worst give us a stale copy.
        unsafe {
            owner.pid = (*k).pid;
            owner.tgid = (*k).tgid;
            owner.comm = (*k).comm;
            owner.how = (*k).how;
            let last = (*k).last_ts_ns;
            if last != 0 && last <= now {
                in_old_state_ns = now - last;
            }
        }
        if owner.how != 0 {
            owner.how
        } else {
            attribution::SOCKET
        }
    } else {
        need_comm = true;
        attribution::CURRENT
    };
    if need_comm {
        owner.comm = bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]);
    }

    if new == state::CLOSE {
        if known.is_some() {
            let _ = SOCK_OWNERS.remove(skaddr);
        }
        if old == state::LISTEN {
            let key = ListenKey {
                netns: owner.netns,
                port: sport,
                family: t.family,
                addr: t.saddr,
            };
            if let Some(o) = unsafe { LISTENERS.get(key) } {
                if o.skaddr == skaddr {
                    let _ = LISTENERS.remove(key);
                }
            }
            if full_listeners() != 0 {
                unmark_full(skaddr);
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
        if new == state::LISTEN {
            let key = ListenKey {
                netns: owner.netns,
                port: sport,
                family: t.family,
                addr: t.saddr,
            };
            if LISTENERS.insert(key, owner, BPF_ANY as u64).is_err() {
                count(counters::LISTEN_MAP_FULL);
            }
        }
    }

    // A socket closing: the kernel stored its error first (a failed
    // connect's ECONNREFUSED, ETIMEDOUT, EHOSTUNREACH...: see
    // `tcp_done_with_error`). One read, on this transition only.
    let (err_known, err) = if new == state::CLOSE { s.err() } else { (0, 0) };

    let header = EventHeader {
        kind: EventKind::TcpState as u32,
        // SAFETY: helper without arguments.
        cpu: unsafe { bpf_get_smp_processor_id() },
        ts_ns: now,
        pid: owner.pid,
        tgid: owner.tgid,
        comm: owner.comm,
    };
    let state_fields = StateFields {
        in_old_state_ns,
        how,
        err_known,
        err,
        current_tgid,
        netns: owner.netns,
        listen,
    };
    let flags = submit_flags();
    // A connection's last transition: its summary goes in the same record
    // (one reservation, not two).
    let counts = if new == state::CLOSE && was_established(old) {
        s.close()
    } else {
        None
    };
    match counts {
        Some(c) => {
            let Some(mut entry) = EVENTS.reserve::<TcpStateCloseEvent>(0) else {
                count_n(counters::RINGBUF_FULL, 2);
                return Ok(0);
            };
            let ev = entry.as_mut_ptr();
            // SAFETY: reserved, exclusively owned slot of the right size;
            // both halves are written whole before submit.
            unsafe {
                fill_state(&raw mut (*ev).state, t, &header, &state_fields);
                fill_close(
                    &raw mut (*ev).close,
                    t,
                    &header,
                    &owner,
                    how,
                    current_tgid,
                    &c,
                );
            }
            entry.submit(flags);
            count_n(counters::SUBMITTED, 2);
        }
        None => {
            let Some(mut entry) = EVENTS.reserve::<TcpStateEvent>(0) else {
                count(counters::RINGBUF_FULL);
                return Ok(0);
            };
            // SAFETY: as above.
            unsafe { fill_state(entry.as_mut_ptr(), t, &header, &state_fields) };
            entry.submit(flags);
            count(counters::SUBMITTED);
        }
    }
    Ok(0)
}

/// What a state event holds besides the transition and the header.
struct StateFields {
    in_old_state_ns: u64,
    how: u8,
    err_known: u8,
    err: i32,
    current_tgid: u32,
    netns: u32,
    listen: (u32, u32),
}

/// Write every field of a state event at `ev`.
///
/// # Safety
/// `ev` points at a reserved ring-buffer slot of the event's size.
#[inline(always)]
unsafe fn fill_state(
    ev: *mut TcpStateEvent,
    t: &Transition,
    header: &EventHeader,
    f: &StateFields,
) {
    // SAFETY: the caller's.
    unsafe {
        (*ev).header = *header;
        (*ev).skaddr = t.skaddr;
        (*ev).in_old_state_ns = f.in_old_state_ns;
        (*ev).saddr = t.saddr;
        (*ev).daddr = t.daddr;
        (*ev).sport = t.sport;
        (*ev).dport = t.dport;
        (*ev).family = t.family;
        (*ev).old_state = t.old;
        (*ev).new_state = t.new;
        (*ev).attribution = f.how;
        (*ev).err_known = f.err_known;
        (*ev)._pad = [0; 2];
        (*ev).current_tgid = f.current_tgid;
        (*ev).netns = f.netns;
        (*ev).listen_queue = f.listen.0;
        (*ev).listen_backlog = f.listen.1;
        (*ev).err = f.err;
    }
}

/// `struct tcp_sock` offsets from BTF, written by user space at load time.
#[unsafe(no_mangle)]
static TCP_CLOSE: Global<TcpCloseLayout> = Global::new(TcpCloseLayout::zeroed());

/// States a full socket is in only after it was ESTABLISHED: leaving one
/// for CLOSE ends a connection (not a failed connect or handshake).
/// TIME_WAIT is left out: that is a `struct inet_timewait_sock`, with no
/// `tcp_sock` behind it.
#[inline(always)]
fn was_established(old: u8) -> bool {
    matches!(
        old,
        state::ESTABLISHED
            | state::FIN_WAIT1
            | state::FIN_WAIT2
            | state::CLOSING
            | state::CLOSE_WAIT
            | state::LAST_ACK
    )
}

/// The summary of a connection at its last transition, to CLOSE: the full
/// `struct tcp_sock` is still whole here (a TIME_WAIT socket takes over
/// only the 4-tuple; the full one goes FIN_WAIT2/CLOSING -> CLOSE in
/// `tcp_done`). Its counters `c` are read only now.
///
/// # Safety
/// `ev` points at a reserved ring-buffer slot of the event's size.
#[inline(always)]
unsafe fn fill_close(
    ev: *mut TcpCloseEvent,
    t: &Transition,
    header: &EventHeader,
    owner: &SockOwner,
    how: u8,
    current_tgid: u32,
    c: &CloseCounts,
) {
    let now = header.ts_ns;
    let duration_ns = if owner.born_ns != 0 && owner.born_ns <= now {
        now - owner.born_ns
    } else {
        0
    };
    // Who sent the first FIN, as the socket's transitions said; for a
    // socket older than diag, what the state it leaves says.
    let closer = if owner.closer != 0 {
        owner.closer
    } else {
        match t.old {
            state::ESTABLISHED => closed_by::RESET,
            state::FIN_WAIT1 | state::FIN_WAIT2 | state::CLOSING => closed_by::LOCAL,
            state::CLOSE_WAIT | state::LAST_ACK => closed_by::REMOTE,
            _ => closed_by::UNKNOWN,
        }
    };
    let mut h = *header;
    h.kind = EventKind::TcpClose as u32;
    // SAFETY: the caller's.
    unsafe {
        (*ev).header = h;
        (*ev).skaddr = t.skaddr;
        (*ev).duration_ns = duration_ns;
        (*ev).bytes_acked = c.bytes_acked;
        (*ev).bytes_sent = c.bytes_sent;
        (*ev).bytes_received = c.bytes_received;
        (*ev).saddr = t.saddr;
        (*ev).daddr = t.daddr;
        (*ev).sport = t.sport;
        (*ev).dport = t.dport;
        (*ev).family = t.family;
        (*ev).old_state = t.old;
        (*ev).closed_by = closer;
        (*ev).attribution = how;
        (*ev)._pad = [0; 3];
        (*ev).total_retrans = c.total_retrans;
        (*ev).srtt_us = c.srtt >> 3;
        (*ev).netns = owner.netns;
        (*ev).current_tgid = current_tgid;
        (*ev)._pad2 = 0;
    }
}

/// A listener's accept queue with the connection being opened in it, and
/// its maximum: the child joins the queue right after this transition
/// (`inet_csk_complete_hashdance`), and the kernel let it in because the
/// queue was not over the maximum. Unknown: [`NO_FIELD`].
#[inline(always)]
fn listener_fill(listener: u64) -> (u32, u32) {
    let l = OWNER_LAYOUT.load();
    if l.backlog_valid == 0 || listener == 0 {
        return (NO_FIELD, NO_FIELD);
    }
    // The two fields sit side by side in `struct sock`: one read.
    if l.sk_max_ack_backlog == l.sk_ack_backlog + 4 {
        return match kread::<u64>(listener + l.sk_ack_backlog as u64) {
            Ok(v) => ((v as u32).saturating_add(1), (v >> 32) as u32),
            Err(_) => (NO_FIELD, NO_FIELD),
        };
    }
    match (
        kread::<u32>(listener + l.sk_ack_backlog as u64),
        kread::<u32>(listener + l.sk_max_ack_backlog as u64),
    ) {
        (Ok(q), Ok(max)) => (q.saturating_add(1), max),
        _ => (NO_FIELD, NO_FIELD),
    }
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
    let mut netns = 0;
    if skaddr == 0 {
        // No socket: the packet's device says the namespace.
        if l.skbaddr != NO_FIELD {
            netns = netns_of_skb(field::<u64>(ctx, l.skbaddr).unwrap_or(0));
        }
        how = attribution::KERNEL;
        header.pid = 0;
        header.tgid = 0;
        header.comm = [0; 16];
    } else if let Some(o) = unsafe { SOCK_OWNERS.get(skaddr) } {
        how = if o.how != 0 {
            o.how
        } else {
            attribution::SOCKET
        };
        header.pid = o.pid;
        header.tgid = o.tgid;
        header.comm = o.comm;
        netns = o.netns;
    } else {
        netns = netns_of(skaddr);
        if let Some(o) = listener_of(netns, family, &saddr, sport) {
            // A listener's SYN-ACK, or a socket we never saw: the listener
            // it belongs to is the best owner there is.
            how = attribution::LISTENER;
            header.pid = o.pid;
            header.tgid = o.tgid;
            header.comm = o.comm;
        }
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
        (*ev).netns = netns;
        (*ev)._pad = 0;
    }
    let flags = submit_flags();
    entry.submit(flags);
    count(counters::SUBMITTED);
    Ok(0)
}

// ---------------------------------------------------------------------------
// accept(): the process that holds a passively opened connection.

/// `syscalls:sys_exit_accept4` and `syscalls:sys_exit_accept` (one program,
/// attached to both): in the accepting task, after the new file descriptor
/// was installed.
#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    match try_accept(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

/// Follow the returned fd to its socket (`current->files->fdt->fd[fd]->
/// private_data->sk`) and make the socket the accepting task's. Only when
/// that changes its process (a pre-fork worker accepting from its parent's
/// listener) is an event sent: a server that accepts its own connections
/// costs the walk and a map lookup, nothing in the ring buffer.
fn try_accept(ctx: &TracePointContext) -> Result<u32, u32> {
    let l = OWNER_LAYOUT.load();
    if l.valid == 0 {
        return Ok(0);
    }
    let fd: i64 = field(ctx, l.ret)?;
    if fd < 0 {
        return Ok(0);
    }
    // The task and its fd table by plain loads from BTF pointers (the
    // verifier checks the constant offsets against BTF and makes the loads
    // fault-safe); the fd array and what it points to by helper.
    // SAFETY: helper without arguments.
    let task = unsafe { aya_ebpf::helpers::generated::bpf_get_current_task_btf() } as *const u8;
    let files = btf_load::<u64>(task, l.task_files) as *const u8;
    let fdt = btf_load::<u64>(files, l.files_fdt) as *const u8;
    let max_fds: u32 = btf_load(fdt, l.fdt_max_fds);
    if fd as u64 >= max_fds as u64 {
        return Ok(0);
    }
    let fds: u64 = btf_load(fdt, l.fdt_fd);
    let file: u64 = kread(fds + (fd as u64) * 8)?;
    if file == 0 {
        return Ok(0);
    }
    let socket: u64 = kread(file + l.file_private_data as u64)?;
    let sk: u64 = kread(socket + l.socket_sk as u64)?;
    if sk == 0 {
        return Ok(0);
    }
    take_socket(&l, sk)
}

// ---------------------------------------------------------------------------
// Reads and writes: the process that uses a connection holds it.

/// `sock_recv_length(struct sock *sk, int ret, int flags)` (tp_btf): every
/// read from a socket, in the reading task.
#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_length_btf(ctx: BtfTracePointContext) -> u32 {
    holder_io(&ctx)
}

/// `sock_send_length(struct sock *sk, int ret, int flags)` (tp_btf): every
/// write to a socket, in the writing task.
#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_length_btf(ctx: BtfTracePointContext) -> u32 {
    holder_io(&ctx)
}

/// A TCP socket read or written by the current task is its own: a
/// pre-fork worker's first read of a connection from its parent's
/// listener, a forked backend's, a receiver of a passed descriptor. Other
/// sockets (unix, UDP) cost one load. The same process again costs a map
/// lookup and nothing in the ring buffer.
#[inline(always)]
fn holder_io(ctx: &BtfTracePointContext) -> u32 {
    let l = OWNER_LAYOUT.load();
    if l.net_valid == 0 {
        return 0;
    }
    let sk: *const u8 = ctx.arg(0);
    if sk.is_null() || btf_load::<u16>(sk, l.sk_protocol) != IPPROTO_TCP {
        return 0;
    }
    match take_socket(&l, sk as u64) {
        Ok(v) | Err(v) => v,
    }
}

/// Make socket `sk` the current task's (it accepted, read or wrote it),
/// with an event when that changes its process.
#[inline(always)]
fn take_socket(l: &OwnerLayout, sk: u64) -> Result<u32, u32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = pid_tgid as u32;
    let tgid = (pid_tgid >> 32) as u32;
    let prev_tgid: u32;
    let netns: u32;
    match SOCK_OWNERS.get_ptr_mut(sk) {
        Some(k) => {
            // SAFETY: a map value pointer, valid while we run.
            unsafe {
                if (*k).tgid == tgid {
                    // The listener's process took it itself (written only
                    // the first time).
                    if (*k).how == attribution::LISTENER {
                        (*k).how = attribution::ACCEPTED;
                    }
                    return Ok(0);
                }
                let comm = bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]);
                prev_tgid = (*k).tgid;
                netns = (*k).netns;
                (*k).pid = pid;
                (*k).tgid = tgid;
                (*k).comm = comm;
                (*k).how = attribution::ACCEPTED;
            }
        }
        None => {
            // Not a socket diag tracks: not TCP (a unix socket), or a
            // connection older than diag.
            let protocol: u16 = kread(sk + l.sk_protocol as u64)?;
            let family: u16 = kread(sk + l.sk_family as u64)?;
            if protocol != IPPROTO_TCP || (family != AF_INET && family != AF_INET6) {
                return Ok(0);
            }
            // A closed socket (a read after a reset) gets no entry: no
            // transition would ever remove it.
            let st: u8 = kread(sk + l.sk_state as u64)?;
            if st == state::CLOSE || st == state::LISTEN {
                return Ok(0);
            }
            prev_tgid = 0;
            netns = netns_of(sk);
            let comm = bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]);
            let owner = SockOwner {
                pid,
                tgid,
                comm,
                last_ts_ns: 0,
                skaddr: 0,
                netns,
                how: attribution::ACCEPTED,
                closer: 0,
                _pad: [0; 2],
                born_ns: 0,
            };
            if SOCK_OWNERS.insert(sk, owner, BPF_ANY as u64).is_err() {
                count(counters::SOCK_MAP_FULL);
            }
        }
    }
    accepted_event(l, sk, netns, prev_tgid)
}

/// Tell user space that socket `sk` is the current task's now.
#[inline(always)]
fn accepted_event(l: &OwnerLayout, sk: u64, netns: u32, prev_tgid: u32) -> Result<u32, u32> {
    let family: u16 = kread(sk + l.sk_family as u64)?;
    let st: u8 = kread(sk + l.sk_state as u64).unwrap_or(0);
    let sport: u16 = kread(sk + l.sk_num as u64).unwrap_or(0);
    let dport: u16 = u16::from_be(kread(sk + l.sk_dport as u64).unwrap_or(0));
    let mut saddr = [0u8; 16];
    let mut daddr = [0u8; 16];
    if family == AF_INET6 {
        saddr = kread(sk + l.sk_saddr_v6 as u64).unwrap_or([0; 16]);
        daddr = kread(sk + l.sk_daddr_v6 as u64).unwrap_or([0; 16]);
    } else {
        let s: [u8; 4] = kread(sk + l.sk_saddr as u64).unwrap_or([0; 4]);
        let d: [u8; 4] = kread(sk + l.sk_daddr as u64).unwrap_or([0; 4]);
        saddr[..4].copy_from_slice(&s);
        daddr[..4].copy_from_slice(&d);
    }
    let header = current_header(EventKind::TcpAccepted as u32);
    let Some(mut entry) = EVENTS.reserve::<TcpSockEvent>(0) else {
        count(counters::RINGBUF_FULL);
        return Ok(0);
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: reserved, exclusively owned slot; every field is written.
    unsafe {
        (*ev).current_tgid = header.tgid;
        (*ev).header = header;
        (*ev).skaddr = sk;
        (*ev).saddr = saddr;
        (*ev).daddr = daddr;
        (*ev).sport = sport;
        (*ev).dport = dport;
        (*ev).family = family;
        (*ev).state = st;
        (*ev).attribution = attribution::ACCEPTED;
        (*ev).reason = prev_tgid as i32;
        (*ev).netns = netns;
        (*ev)._pad = 0;
    }
    let flags = submit_flags();
    entry.submit(flags);
    count(counters::SUBMITTED);
    Ok(0)
}

// ---------------------------------------------------------------------------
// Listen queues: connections lost because a listener's accept queue (or
// request queue) was full, attributed to the listener's owner.

/// Offsets, reason numbers and the SYN code range, written by user space
/// at load time.
#[unsafe(no_mangle)]
static TCP_DROP: Global<TcpDropLayout> = Global::new(TcpDropLayout::zeroed());

/// `skb:kfree_skb`: every freed-with-a-reason skb on the host. Returns
/// after one field read for the reasons that do not matter (`NOT_SPECIFIED`
/// and below). The few listen-queue reasons (`TCP_LISTEN_OVERFLOW`, ...)
/// go to the listener; any other drop for a TCP socket (`rx_sk`) is an
/// event for the socket's owner; a TCP packet dropped with no socket is
/// counted per reason in `UNOWNED_DROPS` (no event: a flood of them to a
/// closed port costs a few reads each, not a ring-buffer record).
#[tracepoint]
pub fn kfree_skb(ctx: TracePointContext) -> u32 {
    match try_kfree_skb(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

/// Unowned TCP drops per `enum skb_drop_reason` number, per CPU; user
/// space reads and sums them each second.
#[map]
static UNOWNED_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(UNOWNED_REASON_SLOTS, 0);

fn try_kfree_skb(ctx: &TracePointContext) -> Result<u32, u32> {
    let l = TCP_DROP.load();
    if l.kfree_valid == 0 {
        return Ok(0);
    }
    let reason: u32 = field(ctx, l.kfree_reason)?;
    if reason <= l.skip_reasons_upto || reason == l.quiet_reasons[0] || reason == l.quiet_reasons[1]
    {
        return Ok(0);
    }
    let mut cause = 0u8;
    let mut i = 0;
    while i < DROP_REASONS {
        if l.reasons[i] == reason {
            cause = l.causes[i] as u8;
        }
        i += 1;
    }
    let sk: u64 = field(ctx, l.kfree_rx_sk)?;
    if cause == 0 {
        if l.sock_valid == 0 {
            return Ok(0);
        }
        if sk == 0 {
            return unowned_drop(ctx, &l, reason);
        }
        return socket_drop(ctx, &l, sk, reason);
    }
    let skb: u64 = field(ctx, l.kfree_skbaddr)?;
    let o = OWNER_LAYOUT.load();
    if o.net_valid == 0 {
        return Ok(0);
    }
    let Some(p) = parse_syn(&l, skb) else {
        return Ok(0);
    };
    let netns = if sk != 0 { netns_of(sk) } else { p.netns };
    let owner = listener_any(netns, p.family, &p.daddr, p.dport);
    let listener = if sk != 0 {
        sk
    } else {
        owner.map(|o| o.skaddr).unwrap_or(0)
    };
    drop_event(&l, &p, netns, listener, owner, cause, reason)
}

/// Ethertypes of IPv4 and IPv6 (the tracepoint's `protocol`, host order).
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// A packet dropped with no socket: counted for its reason if it is TCP
/// (the IP header says; wire format, not a kernel layout).
#[inline(always)]
fn unowned_drop(ctx: &TracePointContext, l: &TcpDropLayout, reason: u32) -> Result<u32, u32> {
    let ethertype: u16 = field(ctx, l.kfree_protocol)?;
    if ethertype != ETH_P_IP && ethertype != ETH_P_IPV6 {
        return Ok(0);
    }
    let skb: u64 = field(ctx, l.kfree_skbaddr)?;
    if skb == 0 {
        return Ok(0);
    }
    let head: u64 = kread(skb + l.skb_head as u64)?;
    let nh: u16 = kread(skb + l.skb_network_header as u64)?;
    if head == 0 || nh == u16::MAX {
        return Ok(0);
    }
    let ip = head + nh as u64;
    // One read: IPv4's protocol is at 9, IPv6's next header at 6.
    let first: [u8; 10] = kread(ip)?;
    let proto = match first[0] >> 4 {
        4 => first[9],
        6 => first[6],
        _ => return Ok(0),
    };
    if proto as u16 != IPPROTO_TCP {
        return Ok(0);
    }
    let slot = if reason < UNOWNED_REASON_SLOTS {
        reason
    } else {
        UNOWNED_REASON_SLOTS - 1
    };
    if let Some(c) = UNOWNED_DROPS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *c += 1 };
    }
    Ok(0)
}

/// A packet dropped for socket `sk`: if it is a TCP socket, an event for
/// its owner with the socket's two ends and the reason.
#[inline(always)]
fn socket_drop(
    ctx: &TracePointContext,
    l: &TcpDropLayout,
    sk: u64,
    reason: u32,
) -> Result<u32, u32> {
    let o = OWNER_LAYOUT.load();
    if o.net_valid == 0 {
        return Ok(0);
    }
    // `struct sock_common` fields first: a request or time-wait socket
    // (TCP's own kinds) has nothing beyond them.
    let family: u16 = kread(sk + o.sk_family as u64)?;
    if family != AF_INET && family != AF_INET6 {
        return Ok(0);
    }
    let st: u8 = kread(sk + o.sk_state as u64)?;
    if st != state::TIME_WAIT && st != state::NEW_SYN_RECV {
        let protocol: u16 = kread(sk + o.sk_protocol as u64)?;
        if protocol != IPPROTO_TCP {
            return Ok(0);
        }
    }
    let port: u16 = kread(sk + o.sk_num as u64).unwrap_or(0);
    let mut rport: u16 = u16::from_be(kread(sk + o.sk_dport as u64).unwrap_or(0));
    let mut addr = [0u8; 16];
    let mut raddr = [0u8; 16];
    if family == AF_INET6 {
        addr = kread(sk + o.sk_saddr_v6 as u64).unwrap_or([0; 16]);
        raddr = kread(sk + o.sk_daddr_v6 as u64).unwrap_or([0; 16]);
    } else {
        let a: [u8; 4] = kread(sk + o.sk_saddr as u64).unwrap_or([0; 4]);
        let r: [u8; 4] = kread(sk + o.sk_daddr as u64).unwrap_or([0; 4]);
        addr[..4].copy_from_slice(&a);
        raddr[..4].copy_from_slice(&r);
    }
    let mut header = current_header(EventKind::TcpDrop as u32);
    let current_tgid = header.tgid;
    let mut how = 0u8;
    let netns: u32;
    // SAFETY: a map lookup; the value is copied out at once.
    if let Some(k) = unsafe { SOCK_OWNERS.get(sk) }.copied() {
        header.pid = k.pid;
        header.tgid = k.tgid;
        header.comm = k.comm;
        how = if k.how != 0 {
            k.how
        } else {
            attribution::SOCKET
        };
        netns = k.netns;
    } else {
        netns = netns_of(sk);
        if st == state::NEW_SYN_RECV {
            // A connection not accepted yet: the listener's owner.
            if let Some(k) = listener_any(netns, family, &addr, port) {
                header.pid = k.pid;
                header.tgid = k.tgid;
                header.comm = k.comm;
                how = attribution::LISTENER;
            }
        }
    }
    if how == 0 {
        header.pid = 0;
        header.tgid = 0;
        header.comm = [0; TASK_COMM_LEN];
    }
    if st == state::LISTEN {
        // A listener has no remote end: the packet's sender is it (drops
        // at a listener other than its queues: a bad SYN, a stray ACK).
        let skb: u64 = field(ctx, l.kfree_skbaddr)?;
        if let Some(p) = parse_syn(l, skb) {
            raddr = p.saddr;
            rport = p.sport;
        }
    }
    let Some(mut entry) = EVENTS.reserve::<TcpDropEvent>(0) else {
        count(counters::RINGBUF_FULL);
        return Ok(0);
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: reserved, exclusively owned slot; every field is written.
    unsafe {
        (*ev).header = header;
        (*ev).skaddr = sk;
        (*ev).addr = addr;
        (*ev).raddr = raddr;
        (*ev).port = port;
        (*ev).rport = rport;
        (*ev).family = family;
        (*ev).cause = drop_cause::SOCKET;
        (*ev).attribution = how;
        (*ev).reason = reason;
        (*ev).netns = netns;
        (*ev).queue = u32::MAX;
        (*ev).backlog = u32::MAX;
        (*ev).current_tgid = current_tgid;
        (*ev).count = 1;
    }
    let flags = submit_flags();
    entry.submit(flags);
    count(counters::SUBMITTED);
    Ok(0)
}

/// `skb:consume_skb`, for the SYNs a listener drops because its accept
/// queue is full: the kernel counts ListenOverflows and frees them as
/// consumed, from `tcp_rcv_state_process`, like the SYNs it answers.
/// Returns after one field read unless the skb was freed there; then a
/// SYN whose listener's accept queue is full (`sk_ack_backlog >
/// sk_max_ack_backlog`, the kernel's own test a moment before) is a drop.
#[tracepoint]
pub fn consume_skb(ctx: TracePointContext) -> u32 {
    match try_consume_skb(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

fn try_consume_skb(ctx: &TracePointContext) -> Result<u32, u32> {
    let l = TCP_DROP.load();
    if l.syn_valid == 0 {
        return Ok(0);
    }
    let location: u64 = field(ctx, l.consume_location)?;
    if location < l.syn_lo || location >= l.syn_hi {
        return Ok(0);
    }
    // No listener's queue is full: this SYN was answered.
    if full_listeners() == 0 {
        return Ok(0);
    }
    let skb: u64 = field(ctx, l.consume_skbaddr)?;
    let Some(p) = parse_syn(&l, skb) else {
        return Ok(0);
    };
    if !p.syn_only {
        return Ok(0);
    }
    let Some(owner) = listener_any(p.netns, p.family, &p.daddr, p.dport) else {
        return Ok(0);
    };
    let sk = owner.skaddr;
    if sk == 0 {
        // A listener from before diag (seeded from /proc) that the
        // socket iterator did not reach: its queue cannot be read.
        count(counters::LISTEN_UNREADABLE);
        return Ok(0);
    }
    let (queue, max) = accept_queue(&l, sk)?;
    if queue <= max {
        return Ok(0);
    }
    drop_event(
        &l,
        &p,
        p.netns,
        sk,
        Some(owner),
        drop_cause::SYN_ACCEPT_QUEUE_FULL,
        0,
    )
}

/// A listener's accept queue and its maximum (`sk_ack_backlog`,
/// `sk_max_ack_backlog`): in one read when they are neighbours, as in
/// every kernel so far.
#[inline(always)]
fn accept_queue(l: &TcpDropLayout, sk: u64) -> Result<(u32, u32), u32> {
    if l.sk_max_ack_backlog == l.sk_ack_backlog + 4 {
        let both: [u32; 2] = kread(sk + l.sk_ack_backlog as u64)?;
        return Ok((both[0], both[1]));
    }
    let queue: u32 = kread(sk + l.sk_ack_backlog as u64)?;
    let max: u32 = kread(sk + l.sk_max_ack_backlog as u64)?;
    Ok((queue, max))
}

/// What the drop programs read of a TCP packet.
struct Packet {
    family: u16,
    daddr: [u8; 16],
    saddr: [u8; 16],
    dport: u16,
    sport: u16,
    /// SYN set, ACK not: a connection request.
    syn_only: bool,
    /// The receiving device's network namespace.
    netns: u32,
}

/// The IP and TCP headers of a received skb (wire formats, not kernel
/// layouts), and its device's namespace.
#[inline(always)]
fn parse_syn(l: &TcpDropLayout, skb: u64) -> Option<Packet> {
    if skb == 0 {
        return None;
    }
    let head: u64 = kread(skb + l.skb_head as u64).ok()?;
    let nh: u16 = kread(skb + l.skb_network_header as u64).ok()?;
    let th: u16 = kread(skb + l.skb_transport_header as u64).ok()?;
    if head == 0 || th == u16::MAX || nh == u16::MAX {
        return None;
    }
    let ip = head + nh as u64;
    let tcp = head + th as u64;
    // Whole headers in one read each (helper calls are what this path
    // costs): the IPv4 header's 20 bytes (an IPv6 header's addresses in
    // a second read), the TCP header's first 14.
    let first: [u8; 20] = kread(ip).ok()?;
    let mut p = Packet {
        family: 0,
        daddr: [0; 16],
        saddr: [0; 16],
        dport: 0,
        sport: 0,
        syn_only: false,
        netns: 0,
    };
    match first[0] >> 4 {
        4 => {
            // protocol at 9, saddr at 12, daddr at 16
            if first[9] as u16 != IPPROTO_TCP {
                return None;
            }
            p.saddr[..4].copy_from_slice(&first[12..16]);
            p.daddr[..4].copy_from_slice(&first[16..20]);
            p.family = AF_INET;
        }
        6 => {
            // next header at 6, saddr at 8, daddr at 24 (no extension
            // headers before TCP: the transport header says where it is)
            let addrs: [u8; 32] = kread(ip + 8).ok()?;
            p.saddr.copy_from_slice(&addrs[..16]);
            p.daddr.copy_from_slice(&addrs[16..]);
            p.family = AF_INET6;
        }
        _ => return None,
    }
    // Ports at 0 and 2, flags at 13.
    let th: [u8; 14] = kread(tcp).ok()?;
    p.sport = u16::from_be_bytes([th[0], th[1]]);
    p.dport = u16::from_be_bytes([th[2], th[3]]);
    p.syn_only = th[13] & 0x12 == 0x02;
    // TCP has cleared `skb->dev` by now; the route (`skb_dst()`: the
    // low bit of `_skb_refdst` is a flag) still names the device.
    let refdst: u64 = kread(skb + l.skb_refdst as u64).unwrap_or(0) & !1u64;
    let dev: u64 = if refdst != 0 {
        kread(refdst + l.dst_dev as u64).unwrap_or(0)
    } else {
        0
    };
    if dev != 0 {
        let net: u64 = kread(dev + l.dev_net as u64).unwrap_or(0);
        if net != 0 {
            p.netns = kread::<u32>(net + OWNER_LAYOUT.load().net_inum as u64).unwrap_or(0);
        }
    }
    Some(p)
}

/// The listener a packet to (`netns`, `family`, `addr`, `port`) came to,
/// an IPv4 one to a dual-stack IPv6 listener too.
#[inline(always)]
fn listener_any(netns: u32, family: u16, addr: &[u8; 16], port: u16) -> Option<SockOwner> {
    if let Some(o) = listener_of(netns, family, addr, port) {
        return Some(o);
    }
    if family != AF_INET {
        return None;
    }
    let mut mapped = [0u8; 16];
    mapped[10] = 0xff;
    mapped[11] = 0xff;
    mapped[12..].copy_from_slice(&addr[..4]);
    listener_of(netns, AF_INET6, &mapped, port)
}

#[inline(always)]
fn drop_event(
    l: &TcpDropLayout,
    p: &Packet,
    netns: u32,
    sk: u64,
    owner: Option<SockOwner>,
    cause: u8,
    reason: u32,
) -> Result<u32, u32> {
    let (queue, backlog) = if sk != 0 {
        (
            kread::<u32>(sk + l.sk_ack_backlog as u64).unwrap_or(u32::MAX),
            kread::<u32>(sk + l.sk_max_ack_backlog as u64).unwrap_or(u32::MAX),
        )
    } else {
        (u32::MAX, u32::MAX)
    };
    let mut header = current_header(EventKind::TcpDrop as u32);
    let current_tgid = header.tgid;
    let how = match owner {
        Some(o) => {
            header.pid = o.pid;
            header.tgid = o.tgid;
            header.comm = o.comm;
            attribution::LISTENER
        }
        None => attribution::CURRENT,
    };
    let Some(mut entry) = EVENTS.reserve::<TcpDropEvent>(0) else {
        count(counters::RINGBUF_FULL);
        return Ok(0);
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: reserved, exclusively owned slot; every field is written.
    unsafe {
        (*ev).header = header;
        (*ev).skaddr = sk;
        (*ev).addr = p.daddr;
        (*ev).raddr = p.saddr;
        (*ev).port = p.dport;
        (*ev).rport = p.sport;
        (*ev).family = p.family;
        (*ev).cause = cause;
        (*ev).attribution = how;
        (*ev).reason = reason;
        (*ev).netns = netns;
        (*ev).queue = queue;
        (*ev).backlog = backlog;
        (*ev).current_tgid = current_tgid;
        (*ev).count = 1;
    }
    let flags = submit_flags();
    entry.submit(flags);
    count(counters::SUBMITTED);
    Ok(0)
}

// ---------------------------------------------------------------------------
// Listeners from before diag: user space seeds their owners from /proc,
// which cannot tell their `struct sock`; one pass of the TCP socket
// iterator fills it in (the SYN-drop program reads the accept queue
// there).

/// `iter/tcp`: called once per TCP socket of the iterating task's network
/// namespace (`struct bpf_iter__tcp { meta; sk_common; uid; }`), then once
/// with no socket. Writes nothing to the seq file.
#[unsafe(link_section = "iter/tcp")]
#[unsafe(no_mangle)]
pub extern "C" fn seed_listener_socks(ctx: *mut core::ffi::c_void) -> i32 {
    // SAFETY: the kernel checks the context access against BTF: offset 8
    // is `sk_common` (a socket or NULL).
    let sk = unsafe { core::ptr::read_volatile((ctx as *const u64).add(1)) };
    if sk == 0 {
        return 0;
    }
    let l = OWNER_LAYOUT.load();
    if l.net_valid == 0 {
        return 0;
    }
    let Ok(st) = kread::<u8>(sk + l.sk_state as u64) else {
        return 0;
    };
    if st != state::LISTEN {
        return 0;
    }
    let family: u16 = kread(sk + l.sk_family as u64).unwrap_or(0);
    let port: u16 = kread(sk + l.sk_num as u64).unwrap_or(0);
    let mut addr = [0u8; 16];
    if family == AF_INET6 {
        addr = kread(sk + l.sk_saddr_v6 as u64).unwrap_or([0; 16]);
    } else if family == AF_INET {
        let a: [u8; 4] = kread(sk + l.sk_saddr as u64).unwrap_or([0; 4]);
        addr[..4].copy_from_slice(&a);
    } else {
        return 0;
    }
    let key = ListenKey {
        netns: netns_of(sk),
        port,
        family,
        addr,
    };
    if let Some(o) = LISTENERS.get_ptr_mut(key) {
        // SAFETY: a map value pointer, valid while we run.
        unsafe {
            if (*o).skaddr == 0 {
                (*o).skaddr = sk;
            }
        }
        // Full already: its SYN drops must be looked at from the start.
        if l.backlog_valid != 0 {
            if let (Ok(q), Ok(max)) = (
                kread::<u32>(sk + l.sk_ack_backlog as u64),
                kread::<u32>(sk + l.sk_max_ack_backlog as u64),
            ) {
                note_fill(sk, q, max);
            }
        }
    }
    0
}
