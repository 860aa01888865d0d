//! TCP state transitions (`sock:inet_sock_set_state`).

use crate::{EventHeader, TASK_COMM_LEN};

/// TCP states as the kernel numbers them (`include/net/tcp_states.h`).
pub mod state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    pub const NEW_SYN_RECV: u8 = 12;
}

/// The kernel's name for a TCP state, as `ss` and the tracepoint print it.
pub fn state_name(s: u8) -> &'static str {
    match s {
        state::ESTABLISHED => "ESTABLISHED",
        state::SYN_SENT => "SYN_SENT",
        state::SYN_RECV => "SYN_RECV",
        state::FIN_WAIT1 => "FIN_WAIT1",
        state::FIN_WAIT2 => "FIN_WAIT2",
        state::TIME_WAIT => "TIME_WAIT",
        state::CLOSE => "CLOSE",
        state::CLOSE_WAIT => "CLOSE_WAIT",
        state::LAST_ACK => "LAST_ACK",
        state::LISTEN => "LISTEN",
        state::CLOSING => "CLOSING",
        state::NEW_SYN_RECV => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;

/// How the kernel program chose the process an event is attributed to.
pub mod attribution {
    /// The transition ran inside the owner's own system call (connect,
    /// listen, close, shutdown): the current task is the owner.
    pub const SYSCALL: u8 = 1;
    /// The owner remembered for this socket from an earlier transition.
    pub const SOCKET: u8 = 2;
    /// A passive open: the owner of the listening socket on the local port.
    pub const LISTENER: u8 = 3;
    /// Nothing better known (e.g. a socket older than diag): the task that
    /// happened to be on the CPU, which may not be the owner.
    pub const CURRENT: u8 = 4;
    /// No socket at all: the kernel answered on its own (e.g. a reset for
    /// a closed port). pid 0.
    pub const KERNEL: u8 = 5;
    /// The process that accepted the connection (learned in its own
    /// accept()/accept4() call), remembered for the socket since.
    pub const ACCEPTED: u8 = 6;

    pub fn name(a: u8) -> &'static str {
        match a {
            SYSCALL => "syscall",
            SOCKET => "socket",
            LISTENER => "listener",
            CURRENT => "current",
            KERNEL => "kernel",
            ACCEPTED => "accepted",
            _ => "unknown",
        }
    }
}

/// Byte offsets of the `inet_sock_set_state` tracepoint's fields, read by
/// user space from tracefs (`events/sock/inet_sock_set_state/format`) and
/// written into the kernel program's globals at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InetSockSetStateLayout {
    pub skaddr: u32,
    pub oldstate: u32,
    pub newstate: u32,
    pub sport: u32,
    pub dport: u32,
    pub family: u32,
    pub protocol: u32,
    pub saddr: u32,
    pub daddr: u32,
    pub saddr_v6: u32,
    pub daddr_v6: u32,
    /// 1 once user space filled this in; the program does nothing otherwise.
    pub valid: u32,
}
const _: () = assert!(core::mem::size_of::<InetSockSetStateLayout>() == 48);

impl InetSockSetStateLayout {
    pub const fn zeroed() -> Self {
        InetSockSetStateLayout {
            skaddr: 0,
            oldstate: 0,
            newstate: 0,
            sport: 0,
            dport: 0,
            family: 0,
            protocol: 0,
            saddr: 0,
            daddr: 0,
            saddr_v6: 0,
            daddr_v6: 0,
            valid: 0,
        }
    }
}

/// Byte offsets into `struct sock`, read by user space from the kernel's
/// BTF, for the `tp_btf` program on `inet_sock_set_state` (which gets the
/// socket itself, not a record: the same facts the tracepoint's record
/// holds, read where it reads them, without the record being built).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockBtfLayout {
    /// `sk_protocol` (u16).
    pub protocol: u32,
    /// `__sk_common.skc_family` (u16).
    pub family: u32,
    /// `__sk_common.skc_num`: the local port, host order (u16).
    pub num: u32,
    /// `__sk_common.skc_dport`: the remote port, network order (u16).
    pub dport: u32,
    /// `__sk_common.skc_rcv_saddr` (IPv4, 4 bytes).
    pub saddr: u32,
    /// `__sk_common.skc_daddr` (IPv4, 4 bytes).
    pub daddr: u32,
    /// `__sk_common.skc_v6_rcv_saddr` (16 bytes).
    pub saddr_v6: u32,
    /// `__sk_common.skc_v6_daddr` (16 bytes).
    pub daddr_v6: u32,
    /// `inet_sock.inet_sport`: the local port, network order (u16); what
    /// the tracepoint's record shows, still set when `skc_num` was cleared
    /// (on the way to CLOSE). Past the end of `struct sock`, so read by a
    /// helper, only then.
    pub inet_sport: u32,
    /// 1 once user space filled this in; the program does nothing otherwise.
    pub valid: u32,
}
const _: () = assert!(core::mem::size_of::<SockBtfLayout>() == 40);

impl SockBtfLayout {
    pub const fn zeroed() -> Self {
        SockBtfLayout {
            protocol: 0,
            family: 0,
            num: 0,
            dport: 0,
            saddr: 0,
            daddr: 0,
            saddr_v6: 0,
            daddr_v6: 0,
            inet_sport: 0,
            valid: 0,
        }
    }
}

/// One TCP state transition. The header's pid/tgid/comm are the socket's
/// owner as far as the kernel program could tell (see [`attribution`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpStateEvent {
    pub header: EventHeader,
    /// Kernel address of the `struct sock`: identifies the socket while it lives.
    pub skaddr: u64,
    /// Time spent in `old_state`, 0 when unknown (first transition seen).
    pub in_old_state_ns: u64,
    /// Local address: IPv4 in the first 4 bytes, or IPv6.
    pub saddr: [u8; 16],
    /// Remote address, same encoding.
    pub daddr: [u8; 16],
    /// Local port (host order).
    pub sport: u16,
    /// Remote port (host order).
    pub dport: u16,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    pub old_state: u8,
    pub new_state: u8,
    /// One of [`attribution`].
    pub attribution: u8,
    /// 1 when `err` was read: on every transition to CLOSE, when the
    /// kernel's BTF names `sock.sk_err`. 0 otherwise (other transitions,
    /// recordings made before diag read it).
    pub err_known: u8,
    pub _pad: [u8; 2],
    /// tgid of the task that was on the CPU when the transition ran.
    pub current_tgid: u32,
    /// Inode of the socket's network namespace (as `readlink
    /// /proc/PID/ns/net` shows it), 0 when unknown (recordings made before
    /// diag read it).
    pub netns: u32,
    /// The socket's `sk_err` (a positive errno, 0: none) on a transition
    /// to CLOSE, when `err_known`: the kernel stores a failed connect's
    /// error there before it closes the socket (`tcp_done_with_error`:
    /// ECONNREFUSED from a reset in SYN_SENT, ETIMEDOUT when the SYN
    /// retries run out, EHOSTUNREACH... from ICMP).
    pub err: i32,
    /// A passive open (LISTEN -> SYN_RECV) only: the listener's accept
    /// queue with this connection in it, and its maximum (listen()'s
    /// backlog), as `ss -lnt` shows them in Recv-Q and Send-Q right after.
    /// [`NO_FIELD`] otherwise, when unreadable, and in records from
    /// before these fields.
    pub listen_queue: u32,
    pub listen_backlog: u32,
}
const _: () = assert!(core::mem::size_of::<TcpStateEvent>() == 120);
/// Size of a [`TcpStateEvent`] before `netns` was added: recordings hold
/// such records, which decode with `netns` 0.
pub const TCP_STATE_EVENT_V1_LEN: usize = 104;

/// What the kernel remembers per socket (map `SOCK_OWNERS`, keyed by skaddr)
/// and per listening socket (map `LISTENERS`, keyed by [`ListenKey`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockOwner {
    pub pid: u32,
    pub tgid: u32,
    pub comm: [u8; TASK_COMM_LEN],
    /// Boot-time ns of the last transition (for `in_old_state_ns`); 0
    /// when unknown (an entry made at accept() for a socket older than
    /// diag).
    pub last_ts_ns: u64,
    /// skaddr of the listening socket (LISTENERS only).
    pub skaddr: u64,
    /// The socket's network namespace inode, 0 when unknown.
    pub netns: u32,
    /// How the owner was learned, for the socket's later events: 0 (an
    /// earlier transition: [`attribution::SOCKET`]),
    /// [`attribution::LISTENER`] (a passive open, not accepted yet) or
    /// [`attribution::ACCEPTED`].
    pub how: u8,
    /// Who closed first, once known ([`closed_by`]; 0 while open):
    /// SOCK_OWNERS only.
    pub closer: u8,
    pub _pad: [u8; 2],
    /// Boot-time ns of the socket's first transition diag saw (its
    /// connect(), or a passive open's child), 0 when unknown (a socket
    /// older than diag): SOCK_OWNERS only.
    pub born_ns: u64,
}
const _: () = assert!(core::mem::size_of::<SockOwner>() == 56);

/// Key of map `LISTENERS`: a listening socket by network namespace,
/// family, local address (all zeros for a wildcard bind) and port, so
/// listeners on the same port in other namespaces or on other addresses
/// never collide. A passive open looks up its own local address first,
/// then the wildcard.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListenKey {
    pub netns: u32,
    pub port: u16,
    pub family: u16,
    /// IPv4 in the first 4 bytes, or IPv6.
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<ListenKey>() == 24);

/// Offsets for following an accept()'s new file descriptor to its socket
/// and for reading a socket's network namespace: `ret` from the tracefs
/// format of `syscalls:sys_exit_accept4` (and `sys_exit_accept`), the rest
/// from the kernel's BTF. Read with `bpf_probe_read_kernel`, so they work
/// from classic tracepoints too.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OwnerLayout {
    /// `sys_exit_accept4`'s `ret` (the new fd, or -errno; 8 bytes).
    pub ret: u32,
    /// `task_struct.files`.
    pub task_files: u32,
    /// `files_struct.fdt`.
    pub files_fdt: u32,
    /// `fdtable.fd` (`struct file **`).
    pub fdt_fd: u32,
    /// `fdtable.max_fds`.
    pub fdt_max_fds: u32,
    /// `file.private_data` (a socket's `struct socket *`).
    pub file_private_data: u32,
    /// `socket.sk`.
    pub socket_sk: u32,
    /// `sock.__sk_common.skc_net.net` (`struct net *`).
    pub sk_net: u32,
    /// `net.ns.inum`.
    pub net_inum: u32,
    /// `sock.sk_protocol` (u16).
    pub sk_protocol: u32,
    /// `sock.__sk_common.skc_family` (u16).
    pub sk_family: u32,
    /// `sock.__sk_common.skc_state` (u8).
    pub sk_state: u32,
    /// `skc_num` (u16, host order), `skc_dport` (u16, network order).
    pub sk_num: u32,
    pub sk_dport: u32,
    /// `skc_rcv_saddr`, `skc_daddr` (IPv4), `skc_v6_rcv_saddr`,
    /// `skc_v6_daddr` (16 bytes).
    pub sk_saddr: u32,
    pub sk_daddr: u32,
    pub sk_saddr_v6: u32,
    pub sk_daddr_v6: u32,
    /// 1 when the namespace offsets are filled in.
    pub net_valid: u32,
    /// 1 when the accept program may run (everything filled in).
    pub valid: u32,
    /// `sk_buff.dev` and `net_device.nd_net.net`: a packet's namespace
    /// (for resets sent without a socket).
    pub skb_dev: u32,
    pub dev_net: u32,
    /// 1 when `skb_dev` and `dev_net` are filled in.
    pub skb_net_valid: u32,
    /// `sock.sk_ack_backlog`, `sock.sk_max_ack_backlog` (u32): a
    /// listener's accept queue, read at each passive open.
    pub sk_ack_backlog: u32,
    pub sk_max_ack_backlog: u32,
    /// 1 when the two above are filled in.
    pub backlog_valid: u32,
    /// `sock.sk_err` (int), read on transitions to CLOSE; 0 when the
    /// kernel's BTF lacks it (offset 0 is never `sk_err`).
    pub sk_err: u32,
}
const _: () = assert!(core::mem::size_of::<OwnerLayout>() == 108);

impl OwnerLayout {
    pub const fn zeroed() -> Self {
        OwnerLayout {
            ret: 0,
            task_files: 0,
            files_fdt: 0,
            fdt_fd: 0,
            fdt_max_fds: 0,
            file_private_data: 0,
            socket_sk: 0,
            sk_net: 0,
            net_inum: 0,
            sk_protocol: 0,
            sk_family: 0,
            sk_state: 0,
            sk_num: 0,
            sk_dport: 0,
            sk_saddr: 0,
            sk_daddr: 0,
            sk_saddr_v6: 0,
            sk_daddr_v6: 0,
            net_valid: 0,
            valid: 0,
            skb_dev: 0,
            dev_net: 0,
            skb_net_valid: 0,
            sk_ack_backlog: 0,
            sk_max_ack_backlog: 0,
            backlog_valid: 0,
            sk_err: 0,
        }
    }
}

/// Offset value meaning "this tracepoint has no such field".
pub const NO_FIELD: u32 = u32::MAX;

/// Field offsets of a per-socket TCP tracepoint (`tcp:tcp_send_reset`,
/// `tcp:tcp_receive_reset`, `tcp:tcp_retransmit_skb`,
/// `tcp:tcp_retransmit_synack`), from tracefs. Fields a tracepoint lacks
/// are [`NO_FIELD`]. Where the kernel gives addresses as `struct
/// sockaddr_in`/`sockaddr_in6` (28 bytes), `sockaddr` is 1 and
/// `saddr`/`daddr` point at those.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSockLayout {
    pub skaddr: u32,
    pub state: u32,
    pub sport: u32,
    pub dport: u32,
    pub family: u32,
    pub saddr: u32,
    pub daddr: u32,
    pub saddr_v6: u32,
    pub daddr_v6: u32,
    /// `reason` (send_reset) or `err` (retransmit_skb).
    pub reason: u32,
    pub sockaddr: u32,
    /// `skbaddr` (send_reset, receive_reset... ; 8 bytes): the packet, whose
    /// device says the namespace of a reset sent without a socket.
    pub skbaddr: u32,
    /// 1 once user space filled this in.
    pub valid: u32,
}
const _: () = assert!(core::mem::size_of::<TcpSockLayout>() == 52);

impl TcpSockLayout {
    pub const fn zeroed() -> Self {
        TcpSockLayout {
            skaddr: NO_FIELD,
            state: NO_FIELD,
            sport: NO_FIELD,
            dport: NO_FIELD,
            family: NO_FIELD,
            saddr: NO_FIELD,
            daddr: NO_FIELD,
            saddr_v6: NO_FIELD,
            daddr_v6: NO_FIELD,
            reason: NO_FIELD,
            sockaddr: 0,
            skbaddr: NO_FIELD,
            valid: 0,
        }
    }
}

/// A reset sent or received, or a retransmission, on one socket; or
/// (kind `TcpAccepted`) a connection accepted by a process other than the
/// one it was attributed to. The header names the socket's owner (see
/// [`attribution`]; for an accept, the accepting task); kind says which.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSockEvent {
    pub header: EventHeader,
    /// 0 when there is no socket (a reset for a closed port).
    pub skaddr: u64,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    /// The socket's TCP state, 0 when the tracepoint does not say.
    pub state: u8,
    pub attribution: u8,
    /// send_reset: `enum sk_rst_reason`; retransmit: `err`; accepted:
    /// the tgid the socket was attributed to before (0: none); else 0.
    pub reason: i32,
    pub current_tgid: u32,
    /// The socket's network namespace inode, 0 when unknown (no socket,
    /// or a recording made before diag read it).
    pub netns: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<TcpSockEvent>() == 104);
/// Size of a [`TcpSockEvent`] before `netns` was added (old recordings).
pub const TCP_SOCK_EVENT_V1_LEN: usize = 96;

/// Why a connection to a listener was lost ([`TcpDropEvent::cause`]).
pub mod drop_cause {
    /// A SYN arrived while the listener's accept queue was full and was
    /// dropped (`tcp_conn_request`: the kernel's ListenOverflows; the
    /// kernel frees the SYN with `consume_skb`, so no drop reason).
    pub const SYN_ACCEPT_QUEUE_FULL: u8 = 1;
    /// The handshake's last ACK arrived while the accept queue was full
    /// (`skb:kfree_skb` reason `TCP_LISTEN_OVERFLOW`; ListenOverflows too).
    pub const ACK_ACCEPT_QUEUE_FULL: u8 = 2;
    /// The SYN (request) queue was full (`skb:kfree_skb` reason
    /// `TCP_REQQFULLDROP`, on kernels that have it).
    pub const REQUEST_QUEUE_FULL: u8 = 3;
    /// Any other packet the kernel dropped for a TCP socket (`skb:kfree_skb`
    /// with `rx_sk` a TCP socket): `reason` says why. The event names the
    /// socket (`skaddr`), its local (`addr`, `port`) and remote (`raddr`,
    /// `rport`) ends, and its owner (attribution SOCKET/LISTENER/ACCEPTED;
    /// 0 and pid 0 when diag does not know the socket).
    pub const SOCKET: u8 = 4;
    /// Packets dropped with no socket (`NO_SOCKET`, ...), host-wide: not a
    /// ring-buffer event per packet but the kernel's per-reason count,
    /// read by user space each second and put on the bus as one event
    /// with `count` packets (pid 0, attribution KERNEL, addresses 0).
    pub const UNOWNED: u8 = 5;

    pub fn name(c: u8) -> &'static str {
        match c {
            SYN_ACCEPT_QUEUE_FULL => "syn_accept_queue_full",
            ACK_ACCEPT_QUEUE_FULL => "ack_accept_queue_full",
            REQUEST_QUEUE_FULL => "request_queue_full",
            SOCKET => "socket",
            UNOWNED => "unowned",
            _ => "unknown",
        }
    }

    /// Whether a cause counts toward the kernel's ListenOverflows.
    pub const fn is_overflow(cause: u8) -> bool {
        cause == SYN_ACCEPT_QUEUE_FULL || cause == ACK_ACCEPT_QUEUE_FULL
    }

    /// Whether a cause is a listen-queue drop (the listen-queue views).
    pub const fn is_listen(cause: u8) -> bool {
        cause == SYN_ACCEPT_QUEUE_FULL
            || cause == ACK_ACCEPT_QUEUE_FULL
            || cause == REQUEST_QUEUE_FULL
    }
}

/// Slots of the kernel's per-reason count of unowned drops (map
/// `UNOWNED_DROPS`, indexed by the kernel's `enum skb_drop_reason`
/// number); a reason beyond counts in the last slot.
pub const UNOWNED_REASON_SLOTS: u32 = 256;

/// How many kernel drop reasons the drop program watches.
pub const DROP_REASONS: usize = 4;

/// What the listen-queue drop programs need: field offsets of
/// `skb:kfree_skb` and `skb:consume_skb` (tracefs), the drop-reason
/// numbers to watch (from the format's `__print_symbolic` table, unused
/// slots [`NO_FIELD`]), the address range of `tcp_rcv_state_process`
/// (where a listener's SYNs are consumed, from /proc/kallsyms), and
/// `struct sock`, `sk_buff` and `net_device` offsets (BTF).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpDropLayout {
    pub kfree_skbaddr: u32,
    pub kfree_rx_sk: u32,
    pub kfree_reason: u32,
    /// `skb:kfree_skb`'s `protocol`: the packet's ethertype, host order
    /// (u16).
    pub kfree_protocol: u32,
    /// Kernel `enum skb_drop_reason` numbers watched, and the
    /// [`drop_cause`] each stands for.
    pub reasons: [u32; DROP_REASONS],
    pub causes: [u32; DROP_REASONS],
    pub consume_skbaddr: u32,
    pub consume_location: u32,
    /// `[syn_lo, syn_hi)`: code addresses of `tcp_rcv_state_process`.
    pub syn_lo: u64,
    pub syn_hi: u64,
    /// `sock.sk_ack_backlog`, `sock.sk_max_ack_backlog` (u32).
    pub sk_ack_backlog: u32,
    pub sk_max_ack_backlog: u32,
    /// `sk_buff.head` (pointer), `.network_header`, `.transport_header`
    /// (u16), `._skb_refdst` (the route, low bit a flag).
    pub skb_head: u32,
    pub skb_network_header: u32,
    pub skb_transport_header: u32,
    pub skb_refdst: u32,
    /// `dst_entry.dev`.
    pub dst_dev: u32,
    /// `net_device.nd_net.net`.
    pub dev_net: u32,
    /// 1 when the kfree_skb program may run.
    pub kfree_valid: u32,
    /// 1 when the consume_skb (SYN) program may run.
    pub syn_valid: u32,
    /// Drop reasons up to this number (`NOT_SPECIFIED` and below: not
    /// dropped, consumed) are not counted by the general drop path.
    pub skip_reasons_upto: u32,
    /// 1 when the general drop path runs (drops for TCP sockets as
    /// events, unowned drops counted per reason).
    pub sock_valid: u32,
    /// Further reasons the general drop path skips (NO_FIELD: none):
    /// `QUEUE_PURGE`, the queued skbs a closing socket frees, one or more
    /// per connection, which say nothing about the network.
    pub quiet_reasons: [u32; 2],
}
const _: () = assert!(core::mem::size_of::<TcpDropLayout>() == 128);

impl TcpDropLayout {
    pub const fn zeroed() -> Self {
        TcpDropLayout {
            kfree_skbaddr: 0,
            kfree_rx_sk: 0,
            kfree_reason: 0,
            kfree_protocol: 0,
            reasons: [NO_FIELD; DROP_REASONS],
            causes: [0; DROP_REASONS],
            consume_skbaddr: 0,
            consume_location: 0,
            syn_lo: 0,
            syn_hi: 0,
            sk_ack_backlog: 0,
            sk_max_ack_backlog: 0,
            skb_head: 0,
            skb_network_header: 0,
            skb_transport_header: 0,
            skb_refdst: 0,
            dst_dev: 0,
            dev_net: 0,
            kfree_valid: 0,
            syn_valid: 0,
            skip_reasons_upto: 0,
            sock_valid: 0,
            quiet_reasons: [NO_FIELD; 2],
        }
    }
}

/// A packet the kernel dropped ([`drop_cause`]): a connection lost at a
/// listener (its accept queue or request queue was full: the header names
/// the listener's owner, see [`attribution`], LISTENER when known, else
/// CURRENT), a packet dropped for a TCP socket ([`drop_cause::SOCKET`]:
/// the socket's owner) or a count of packets dropped with no socket
/// ([`drop_cause::UNOWNED`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpDropEvent {
    pub header: EventHeader,
    /// The listening socket, 0 when unknown.
    pub skaddr: u64,
    /// The listener's address (the packet's destination): IPv4 in the
    /// first 4 bytes, or IPv6.
    pub addr: [u8; 16],
    /// The client's address, same encoding.
    pub raddr: [u8; 16],
    /// The listener's port and the client's (host order).
    pub port: u16,
    pub rport: u16,
    pub family: u16,
    /// One of [`drop_cause`].
    pub cause: u8,
    pub attribution: u8,
    /// The kernel's `enum skb_drop_reason` number (0: the SYN path,
    /// which has none).
    pub reason: u32,
    /// The listener's network namespace inode, 0 when unknown.
    pub netns: u32,
    /// The listener's accept queue (`sk_ack_backlog`) and its maximum
    /// (`sk_max_ack_backlog`, the listen() backlog) at the drop;
    /// u32::MAX when unknown.
    pub queue: u32,
    pub backlog: u32,
    pub current_tgid: u32,
    /// How many packets this event stands for: 1 for a ring-buffer event
    /// (0 in recordings made before the field: read as 1), the packets
    /// since the last reading for an [`drop_cause::UNOWNED`] count.
    pub count: u32,
}
const _: () = assert!(core::mem::size_of::<TcpDropEvent>() == 112);

/// Who closed a connection first ([`TcpCloseEvent::closed_by`]).
pub mod closed_by {
    /// Not known (a socket older than diag that went to CLOSE from a state
    /// that does not say).
    pub const UNKNOWN: u8 = 0;
    /// This side: the socket went ESTABLISHED -> FIN_WAIT1 (close() or
    /// shutdown(SHUT_WR) here first).
    pub const LOCAL: u8 = 1;
    /// The peer: the socket went ESTABLISHED -> CLOSE_WAIT (its FIN came
    /// first).
    pub const REMOTE: u8 = 2;
    /// Neither sent a FIN first: the connection went from ESTABLISHED
    /// straight to CLOSE (a reset sent or received, an abort).
    pub const RESET: u8 = 3;

    pub fn name(c: u8) -> &'static str {
        match c {
            LOCAL => "local",
            REMOTE => "remote",
            RESET => "reset",
            _ => "unknown",
        }
    }
}

/// Byte offsets into `struct tcp_sock`, read by user space from the
/// kernel's BTF, for the close summary: read (by helper) only on a
/// connection's last transition, to CLOSE.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpCloseLayout {
    /// `tcp_sock.bytes_acked` (u64): bytes of ours the peer acknowledged.
    pub bytes_acked: u32,
    /// `tcp_sock.bytes_sent` (u64): bytes sent, retransmissions included.
    pub bytes_sent: u32,
    /// `tcp_sock.bytes_received` (u64): bytes received in order.
    pub bytes_received: u32,
    /// `tcp_sock.total_retrans` (u32): segments retransmitted.
    pub total_retrans: u32,
    /// `tcp_sock.srtt_us` (u32): smoothed RTT in microseconds, << 3.
    pub srtt_us: u32,
    /// 1 once user space filled this in: no close events otherwise.
    pub valid: u32,
}
const _: () = assert!(core::mem::size_of::<TcpCloseLayout>() == 24);

impl TcpCloseLayout {
    pub const fn zeroed() -> Self {
        TcpCloseLayout {
            bytes_acked: 0,
            bytes_sent: 0,
            bytes_received: 0,
            total_retrans: 0,
            srtt_us: 0,
            valid: 0,
        }
    }
}

/// A connection that was ESTABLISHED reached CLOSE (kind `TcpClose`): its
/// summary, what bcc's tcplife prints and more. The header names the
/// socket's owner (see [`attribution`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpCloseEvent {
    pub header: EventHeader,
    pub skaddr: u64,
    /// From the socket's first transition diag saw to CLOSE; 0 when
    /// unknown (a socket older than diag).
    pub duration_ns: u64,
    /// `tcp_sock.bytes_acked`, `.bytes_sent`, `.bytes_received` at CLOSE
    /// (the kernel's counts, as `ss -ti` and `TCP_INFO` show them).
    pub bytes_acked: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Local address: IPv4 in the first 4 bytes, or IPv6.
    pub saddr: [u8; 16],
    /// Remote address, same encoding.
    pub daddr: [u8; 16],
    /// Local and remote port (host order).
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    /// The state the socket left for CLOSE.
    pub old_state: u8,
    /// One of [`closed_by`].
    pub closed_by: u8,
    /// One of [`attribution`].
    pub attribution: u8,
    pub _pad: [u8; 3],
    /// `tcp_sock.total_retrans`: segments retransmitted.
    pub total_retrans: u32,
    /// Smoothed RTT in microseconds (`tcp_sock.srtt_us >> 3`), 0 when the
    /// connection never had an RTT sample.
    pub srtt_us: u32,
    /// The socket's network namespace inode, 0 when unknown.
    pub netns: u32,
    /// tgid of the task that was on the CPU at the close.
    pub current_tgid: u32,
    pub _pad2: u32,
}
const _: () = assert!(core::mem::size_of::<TcpCloseEvent>() == 144);

/// A socket's last transition and its summary in one ring-buffer record:
/// a connection that was ESTABLISHED reaching CLOSE costs one reservation,
/// not two. User space splits it into the two events (see
/// `user::decode_record`); recordings hold them as two records.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpStateCloseEvent {
    pub state: TcpStateEvent,
    pub close: TcpCloseEvent,
}
const _: () = assert!(
    core::mem::size_of::<TcpStateCloseEvent>()
        == core::mem::size_of::<TcpStateEvent>() + core::mem::size_of::<TcpCloseEvent>()
);
impl TcpDropEvent {
    /// The packets this event stands for (at least 1).
    pub fn packets(&self) -> u64 {
        u64::from(self.count.max(1))
    }
}
