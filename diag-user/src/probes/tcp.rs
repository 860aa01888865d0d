//! TCP state transitions (`inet_sock_set_state`: the raw tracepoint with
//! `struct sock` offsets from BTF when the kernel's BTF has them, else the
//! classic tracepoint with field offsets from tracefs), resets and
//! retransmissions (classic tracepoints).

use std::path::Path;

use aya::{Btf as AyaBtf, Ebpf, maps::HashMap};
use diag_common::{
    TASK_COMM_LEN,
    tcp::{
        DROP_REASONS, InetSockSetStateLayout, ListenKey, NO_FIELD, OwnerLayout, SockBtfLayout,
        SockOwner, TcpCloseLayout, TcpDropLayout, TcpSockLayout, drop_cause,
    },
};

use crate::{
    btf::Btf,
    enrich,
    error::{EnvError, LoadError},
    tracefs::Format,
};

pub const TRACEPOINT_NAMES: &[&str] = &[
    "sock:inet_sock_set_state",
    "tcp:tcp_send_reset",
    "tcp:tcp_receive_reset",
    "tcp:tcp_retransmit_skb",
    "tcp:tcp_retransmit_synack",
];

/// The per-socket TCP tracepoints: (tracepoint name in category `tcp`,
/// the kernel program's global that takes its layout).
pub const SOCK_TRACEPOINTS: &[(&str, &str)] = &[
    ("tcp_send_reset", "TCP_SEND_RESET"),
    ("tcp_receive_reset", "TCP_RECEIVE_RESET"),
    ("tcp_retransmit_skb", "TCP_RETRANSMIT_SKB"),
    ("tcp_retransmit_synack", "TCP_RETRANSMIT_SYNACK"),
];

/// Layouts of every TCP tracepoint diag uses, read from the running kernel.
#[derive(Debug, Clone)]
pub struct Layouts {
    pub state: InetSockSetStateLayout,
    /// `struct sock` offsets for the raw tracepoint, or why not.
    pub state_btf: Result<SockBtfLayout, String>,
    /// Same order as [`SOCK_TRACEPOINTS`].
    pub sock: Vec<TcpSockLayout>,
    /// Names of `enum sk_rst_reason` values, from the kernel's own format.
    pub rst_reasons: Vec<(i64, String)>,
    /// Offsets for the accept program and network namespaces, or why not
    /// (then passive opens stay with the listener's owner, namespaces 0).
    pub owner: Result<OwnerLayout, String>,
    /// The listen-queue drop programs' layout, or why they stay out.
    pub drop: Result<TcpDropLayout, String>,
    /// `struct tcp_sock` offsets for the close summaries, or why there
    /// are none.
    pub close: Result<TcpCloseLayout, String>,
    /// Names of `enum skb_drop_reason` values, from the kernel's own
    /// `skb:kfree_skb` format (empty when it cannot be read).
    pub drop_reasons: Vec<(i64, String)>,
}

/// The accept tracepoints (category `syscalls`): one program on both.
pub const ACCEPT_TRACEPOINTS: &[&str] = &["sys_exit_accept4", "sys_exit_accept"];

pub fn layouts(tracefs: &Path, btf: &Path) -> Result<Layouts, EnvError> {
    let state = layout(tracefs)?;
    let parsed = Btf::from_file(btf);
    let state_btf = parsed
        .as_ref()
        .map_err(Clone::clone)
        .and_then(sock_btf_layout);
    // Without the syscall tracepoints (a kernel without
    // CONFIG_FTRACE_SYSCALLS) namespaces are still read; only the accept
    // program stays out.
    let ret = accept_ret(tracefs);
    let drop = parsed
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|b| drop_layout(tracefs, b, Path::new(KALLSYMS)));
    let close = parsed.as_ref().map_err(Clone::clone).and_then(close_layout);
    let owner = parsed.and_then(|b| owner_layout(&b, ret.ok()));
    let drop_reasons = Format::read(tracefs, "skb", "kfree_skb", "drop reasons")
        .map(|f| f.symbols("REC->reason"))
        .unwrap_or_default();
    let mut sock = Vec::new();
    let mut rst_reasons = Vec::new();
    for (name, _) in SOCK_TRACEPOINTS {
        let fmt = Format::read(tracefs, "tcp", name, "TCP resets and retransmissions")?;
        if *name == "tcp_send_reset" {
            rst_reasons = fmt.symbols("REC->reason");
        }
        sock.push(
            sock_layout_from(&fmt).map_err(|why| EnvError::TracepointFormat {
                name: format!("tcp:{name}"),
                why,
            })?,
        );
    }
    Ok(Layouts {
        state,
        state_btf,
        sock,
        rst_reasons,
        owner,
        drop,
        close,
        drop_reasons,
    })
}

/// Where the kernel lists its symbols.
pub const KALLSYMS: &str = "/proc/kallsyms";

/// The kernel's drop reasons that mean a listener lost a connection, and
/// the cause each stands for. Names absent from the running kernel's
/// `skb:kfree_skb` format are left out.
pub const DROP_REASON_NAMES: &[(&str, u8)] = &[
    ("TCP_LISTEN_OVERFLOW", drop_cause::ACK_ACCEPT_QUEUE_FULL),
    ("TCP_REQQFULLDROP", drop_cause::REQUEST_QUEUE_FULL),
];

/// The last drop reason that says nothing (the kernel's table starts with
/// "not dropped" and "consumed" before it): it and those below are not
/// counted.
pub const SKIP_REASONS_UPTO: &str = "NOT_SPECIFIED";

/// Reasons not counted either, though past [`SKIP_REASONS_UPTO`]: what a
/// closing socket frees from its queues (every connection has some).
pub const QUIET_REASONS: &[&str] = &["QUEUE_PURGE"];

/// The function whose `consume_skb` frees a listener's SYNs, answered or
/// dropped.
pub const SYN_FUNCTION: &str = "tcp_rcv_state_process";

/// The listen-queue drop programs' layout: `skb:kfree_skb` and
/// `skb:consume_skb` field offsets and drop-reason numbers (tracefs),
/// `struct sock`, `sk_buff` and `net_device` offsets (BTF), and the code
/// range of [`SYN_FUNCTION`] (`kallsyms`; without it, only the
/// kfree_skb program runs).
pub fn drop_layout(tracefs: &Path, btf: &Btf, kallsyms: &Path) -> Result<TcpDropLayout, String> {
    let kfree =
        Format::read(tracefs, "skb", "kfree_skb", "listen queues").map_err(|e| e.to_string())?;
    let consume =
        Format::read(tracefs, "skb", "consume_skb", "listen queues").map_err(|e| e.to_string())?;
    let mut l = drop_layout_from(&kfree, &consume, btf)?;
    match std::fs::read_to_string(kallsyms)
        .map_err(|e| format!("{}: {e}", kallsyms.display()))
        .and_then(|text| symbol_range(&text, SYN_FUNCTION))
    {
        Ok((lo, hi)) => {
            l.syn_lo = lo;
            l.syn_hi = hi;
            l.syn_valid = 1;
        }
        Err(why) => tracing::info!(
            "note: SYNs dropped at a full accept queue are not seen ({why}); handshakes dropped there are"
        ),
    }
    Ok(l)
}

/// [`drop_layout`] without the code range.
pub fn drop_layout_from(
    kfree: &Format,
    consume: &Format,
    btf: &Btf,
) -> Result<TcpDropLayout, String> {
    let mut l = TcpDropLayout::zeroed();
    l.kfree_skbaddr = kfree.offset("skbaddr", 8)?;
    l.kfree_rx_sk = kfree.offset("rx_sk", 8)?;
    l.kfree_reason = kfree.offset("reason", 4)?;
    l.kfree_protocol = kfree.offset("protocol", 2)?;
    l.consume_skbaddr = consume.offset("skbaddr", 8)?;
    l.consume_location = consume.offset("location", 8)?;
    let names = kfree.symbols("REC->reason");
    let mut i = 0;
    for (name, cause) in DROP_REASON_NAMES {
        if let Some((n, _)) = names.iter().find(|(_, s)| s == name)
            && i < DROP_REASONS
        {
            l.reasons[i] = u32::try_from(*n).map_err(|_| format!("drop reason {name} is {n}"))?;
            l.causes[i] = u32::from(*cause);
            i += 1;
        }
    }
    let sized = |strct: &str, name: &str, size: u32| btf.sized_member(strct, name, size);
    l.sk_ack_backlog = sized("sock", "sk_ack_backlog", 4)?;
    l.sk_max_ack_backlog = sized("sock", "sk_max_ack_backlog", 4)?;
    l.skb_head = sized("sk_buff", "head", 8)?;
    l.skb_network_header = sized("sk_buff", "network_header", 2)?;
    l.skb_transport_header = sized("sk_buff", "transport_header", 2)?;
    l.skb_refdst = sized("sk_buff", "_skb_refdst", 8)?;
    l.dst_dev = sized("dst_entry", "dev", 8)?;
    l.dev_net = btf.offset("net_device", "nd_net.net")?;
    // Drops for sockets and unowned drops, past the reasons that say
    // nothing (not dropped, consumed, `NOT_SPECIFIED`: the numbers up to
    // NOT_SPECIFIED's in this kernel's table).
    match names.iter().find(|(_, s)| s == SKIP_REASONS_UPTO) {
        Some((n, _)) => {
            l.skip_reasons_upto =
                u32::try_from(*n).map_err(|_| format!("drop reason {SKIP_REASONS_UPTO} is {n}"))?;
            l.sock_valid = 1;
        }
        None => tracing::info!(
            "note: drops for sockets are not traced (no {SKIP_REASONS_UPTO} in skb:kfree_skb's reasons)"
        ),
    }
    for (slot, name) in l.quiet_reasons.iter_mut().zip(QUIET_REASONS) {
        if let Some((n, _)) = names.iter().find(|(_, s)| s == name) {
            *slot = u32::try_from(*n).map_err(|_| format!("drop reason {name} is {n}"))?;
        }
    }
    // Without a watched reason the kfree_skb program has nothing to do.
    l.kfree_valid = u32::from(i > 0 || l.sock_valid != 0);
    Ok(l)
}

/// `[start, end)` of function `name` in a kallsyms listing: from its
/// address to the next higher symbol's.
pub fn symbol_range(kallsyms: &str, name: &str) -> Result<(u64, u64), String> {
    let mut start = None;
    let mut addrs = Vec::new();
    for line in kallsyms.lines() {
        let mut it = line.split_whitespace();
        let (Some(a), Some(_), Some(sym)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        let Ok(a) = u64::from_str_radix(a, 16) else {
            continue;
        };
        // Symbols of modules have a fourth column.
        if sym == name && it.next().is_none() {
            start = Some(a);
        }
        addrs.push(a);
    }
    let start = start.ok_or_else(|| format!("no {name} in kallsyms"))?;
    if start == 0 {
        return Err("kallsyms hides addresses (kernel.kptr_restrict)".to_string());
    }
    let end = addrs
        .into_iter()
        .filter(|&a| a > start)
        .min()
        .ok_or_else(|| format!("no symbol after {name} in kallsyms"))?;
    Ok((start, end))
}

/// The offset of `ret` in `syscalls:sys_exit_accept4` and
/// `sys_exit_accept` (one program runs on both, so they must agree).
fn accept_ret(tracefs: &Path) -> Result<u32, String> {
    let mut ret = None;
    for name in ACCEPT_TRACEPOINTS {
        let fmt = Format::read(tracefs, "syscalls", name, "accept()").map_err(|e| e.to_string())?;
        let off = fmt.offset("ret", 8)?;
        if ret.is_some_and(|r| r != off) {
            return Err("sys_exit_accept and sys_exit_accept4 differ".to_string());
        }
        ret = Some(off);
    }
    ret.ok_or_else(|| "no accept tracepoints".to_string())
}

/// Offsets for following an accepted fd to its socket and a socket to its
/// network namespace, from BTF; `ret` is the accept tracepoints' return
/// value field (None: namespaces only, no accept program).
pub fn owner_layout(btf: &Btf, ret: Option<u32>) -> Result<OwnerLayout, String> {
    let sized = |strct: &str, name: &str, size: u32| btf.sized_member(strct, name, size);
    let common = btf.member("sock", "__sk_common")?.offset;
    let c = |name: &str, size: u32| sized("sock_common", name, size).map(|o| common + o);
    let mut l = OwnerLayout {
        ret: ret.unwrap_or(0),
        task_files: sized("task_struct", "files", 8)?,
        files_fdt: sized("files_struct", "fdt", 8)?,
        fdt_fd: sized("fdtable", "fd", 8)?,
        fdt_max_fds: sized("fdtable", "max_fds", 4)?,
        file_private_data: sized("file", "private_data", 8)?,
        socket_sk: sized("socket", "sk", 8)?,
        sk_net: common + btf.offset("sock_common", "skc_net.net")?,
        net_inum: btf.offset("net", "ns.inum")?,
        sk_protocol: sized("sock", "sk_protocol", 2)?,
        sk_family: c("skc_family", 2)?,
        sk_state: c("skc_state", 1)?,
        sk_num: c("skc_num", 2)?,
        sk_dport: c("skc_dport", 2)?,
        sk_saddr: c("skc_rcv_saddr", 4)?,
        sk_daddr: c("skc_daddr", 4)?,
        sk_saddr_v6: c("skc_v6_rcv_saddr", 16)?,
        sk_daddr_v6: c("skc_v6_daddr", 16)?,
        net_valid: 1,
        valid: 0,
        skb_dev: 0,
        dev_net: 0,
        skb_net_valid: 0,
        sk_ack_backlog: 0,
        sk_max_ack_backlog: 0,
        backlog_valid: 0,
        sk_err: 0,
    };
    // A listener's accept queue at each passive open; optional.
    if let (Ok(q), Ok(max)) = (
        sized("sock", "sk_ack_backlog", 4),
        sized("sock", "sk_max_ack_backlog", 4),
    ) {
        l.sk_ack_backlog = q;
        l.sk_max_ack_backlog = max;
        l.backlog_valid = 1;
    }
    // A packet's namespace, for resets sent without a socket; optional.
    if let (Ok(dev), Ok(net)) = (
        sized("sk_buff", "dev", 8),
        btf.offset("net_device", "nd_net.net"),
    ) {
        l.skb_dev = dev;
        l.dev_net = net;
        l.skb_net_valid = 1;
    }
    // A closing socket's error (failed connects); optional.
    if let Ok(err) = sized("sock", "sk_err", 4) {
        l.sk_err = err;
    }
    if ret.is_some() {
        l.valid = 1;
    }
    Ok(l)
}

/// Layout of a per-socket TCP tracepoint. Newer kernels give
/// `tcp_send_reset` addresses as 28-byte sockaddrs; older ones (and the
/// other tracepoints) as sport/dport/family/saddr/daddr fields.
pub fn sock_layout_from(fmt: &Format) -> Result<TcpSockLayout, String> {
    let opt = |name: &str, size: u32| -> Result<u32, String> {
        match fmt.field(name) {
            None => Ok(NO_FIELD),
            Some(_) => fmt.offset(name, size),
        }
    };
    let mut l = TcpSockLayout::zeroed();
    l.skaddr = fmt.offset("skaddr", 8)?;
    l.skbaddr = opt("skbaddr", 8)?;
    l.state = opt("state", 4)?;
    l.reason = match fmt.field("reason") {
        Some(_) => fmt.offset("reason", 4)?,
        None => opt("err", 4)?,
    };
    if fmt.field("saddr").is_some_and(|f| f.size == 28) {
        l.sockaddr = 1;
        l.saddr = fmt.offset("saddr", 28)?;
        l.daddr = fmt.offset("daddr", 28)?;
    } else {
        l.sport = fmt.offset("sport", 2)?;
        l.dport = fmt.offset("dport", 2)?;
        l.family = fmt.offset("family", 2)?;
        l.saddr = fmt.offset("saddr", 4)?;
        l.daddr = fmt.offset("daddr", 4)?;
        l.saddr_v6 = fmt.offset("saddr_v6", 16)?;
        l.daddr_v6 = fmt.offset("daddr_v6", 16)?;
    }
    l.valid = 1;
    Ok(l)
}

/// `struct sock` offsets on the running kernel, from its BTF.
pub fn sock_btf_layout(btf: &Btf) -> Result<SockBtfLayout, String> {
    let sized = |strct: &str, name: &str, size: u32| btf.sized_member(strct, name, size);
    let common = btf.member("sock", "__sk_common")?.offset;
    let c = |name: &str, size: u32| sized("sock_common", name, size).map(|o| common + o);
    Ok(SockBtfLayout {
        protocol: sized("sock", "sk_protocol", 2)?,
        family: c("skc_family", 2)?,
        num: c("skc_num", 2)?,
        dport: c("skc_dport", 2)?,
        saddr: c("skc_rcv_saddr", 4)?,
        daddr: c("skc_daddr", 4)?,
        saddr_v6: c("skc_v6_rcv_saddr", 16)?,
        daddr_v6: c("skc_v6_daddr", 16)?,
        inet_sport: sized("inet_sock", "inet_sport", 2)?,
        valid: 1,
    })
}

/// `struct tcp_sock` offsets on the running kernel, from its BTF, for the
/// close summaries.
pub fn close_layout(btf: &Btf) -> Result<TcpCloseLayout, String> {
    let m = |name: &str, size: u32| btf.sized_member("tcp_sock", name, size);
    Ok(TcpCloseLayout {
        bytes_acked: m("bytes_acked", 8)?,
        bytes_sent: m("bytes_sent", 8)?,
        bytes_received: m("bytes_received", 8)?,
        total_retrans: m("total_retrans", 4)?,
        srtt_us: m("srtt_us", 4)?,
        valid: 1,
    })
}

/// Field offsets of `sock:inet_sock_set_state` on the running kernel.
pub fn layout(tracefs: &Path) -> Result<InetSockSetStateLayout, EnvError> {
    let fmt = Format::read(tracefs, "sock", "inet_sock_set_state", "TCP state changes")?;
    layout_from(&fmt).map_err(|why| EnvError::TracepointFormat {
        name: "sock:inet_sock_set_state".into(),
        why,
    })
}

pub fn layout_from(fmt: &Format) -> Result<InetSockSetStateLayout, String> {
    // The kernel program copies the first RECORD_MAX bytes of the record
    // at once: every field it reads must end within them.
    let end = fmt
        .fields
        .iter()
        .map(|f| f.offset + f.size)
        .max()
        .unwrap_or(0);
    if end as usize > diag_common::RECORD_MAX {
        return Err(format!(
            "the record is {end} bytes; diag reads the first {}",
            diag_common::RECORD_MAX
        ));
    }
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
/// diag started (in every network namespace a process is in), so passive
/// opens on them are attributed from the first connection. Returns how
/// many were seeded.
pub fn seed_listeners(ebpf: &mut Ebpf) -> Result<usize, LoadError> {
    let map = ebpf
        .map_mut("LISTENERS")
        .ok_or_else(|| LoadError::Missing("map LISTENERS".into()))?;
    let mut map: HashMap<_, ListenKey, SockOwner> =
        HashMap::try_from(map).map_err(|e| LoadError::Load(e.to_string()))?;
    let mut n = 0;
    for (l, holder) in enrich::listener_owners() {
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
            netns: l.netns,
            how: 0,
            closer: 0,
            _pad: [0; 2],
            born_ns: 0,
        };
        let (family, addr) = match l.local.ip() {
            std::net::IpAddr::V4(a) => {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&a.octets());
                (diag_common::tcp::AF_INET, b)
            }
            std::net::IpAddr::V6(a) => (diag_common::tcp::AF_INET6, a.octets()),
        };
        let key = ListenKey {
            netns: l.netns,
            port: l.local.port(),
            family,
            addr,
        };
        // BPF_NOEXIST: a listener the program saw itself wins.
        if map.insert(key, owner, 1).is_ok() {
            n += 1;
        }
    }
    Ok(n)
}

/// Fill in the `struct sock` of the listeners [`seed_listeners`] seeded
/// (from /proc, which does not show it), so the SYN-drop program can read
/// their accept queues: one pass of the kernel's TCP socket iterator
/// (`iter/tcp`, diag's own network namespace), which then goes. Returns
/// why not, if it could not (those listeners' SYN drops are then not seen;
/// their handshake drops are).
pub fn seed_listener_socks(ebpf: &mut Ebpf, btf: Option<&AyaBtf>) -> Result<(), String> {
    use std::io::Read;
    let btf = btf.ok_or("no kernel BTF")?;
    let prog: &mut aya::programs::Iter = ebpf
        .program_mut("seed_listener_socks")
        .ok_or("no program seed_listener_socks")?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| e.to_string())?;
    prog.load("tcp", btf)
        .map_err(|e| crate::error::flatten(&e))?;
    let link = prog.attach().map_err(|e| crate::error::flatten(&e))?;
    let link = prog
        .take_link(link)
        .map_err(|e| crate::error::flatten(&e))?;
    let mut file = link.into_file().map_err(|e| crate::error::flatten(&e))?;
    // Reading runs the program over every socket; it writes nothing.
    let mut sink = Vec::new();
    file.read_to_end(&mut sink)
        .map_err(|e| format!("reading the socket iterator: {e}"))?;
    prog.unload().map_err(|e| crate::error::flatten(&e))?;
    Ok(())
}

/// For messages: the raw tracepoint, when it is the one attached.
pub const STATE_BTF_NAME: &str = "tp_btf:inet_sock_set_state";

/// Attach the programs: for state changes the raw tracepoint when its
/// layout and the kernel's BTF are at hand (no record is built for it, so
/// it costs less), else the classic one.
pub fn attach(
    ebpf: &mut Ebpf,
    layouts: &Layouts,
    btf: Option<&AyaBtf>,
    accept_probe: bool,
    attached: &mut Vec<&'static str>,
) -> Result<(), LoadError> {
    let raw = match (&layouts.state_btf, btf) {
        (Ok(_), Some(btf)) => match attach_state_btf(ebpf, btf) {
            Ok(()) => true,
            Err(e) => {
                tracing::info!("note: {e}; using the classic tracepoint sock:inet_sock_set_state");
                false
            }
        },
        _ => false,
    };
    if raw {
        attached.push(STATE_BTF_NAME);
    } else {
        super::attach_tracepoint(ebpf, "inet_sock_set_state", "sock", "inet_sock_set_state")?;
        attached.push(TRACEPOINT_NAMES[0]);
    }
    for (i, (name, _)) in SOCK_TRACEPOINTS.iter().enumerate() {
        super::attach_tracepoint(ebpf, name, "tcp", name)?;
        attached.push(TRACEPOINT_NAMES[i + 1]);
    }
    match &layouts.drop {
        Ok(d) => attach_drops(ebpf, d, attached)?,
        Err(why) => tracing::warn!("note: listen-queue drops are not traced ({why})"),
    }
    let missing = match (&layouts.owner, btf) {
        (Ok(_), Some(btf)) => attach_holders(ebpf, btf, attached)
            .err()
            .map(|e| e.to_string()),
        (Ok(_), None) => Some("no kernel BTF for the read/write probes".to_string()),
        (Err(why), _) => Some(why.clone()),
    };
    if let Some(why) = missing {
        tracing::warn!("note: connections stay with the listener's owner until reconciled ({why})");
    }
    if accept_probe {
        match &layouts.owner {
            Ok(l) if l.valid != 0 => attach_accept(ebpf, attached)?,
            Ok(_) => tracing::warn!(
                "note: --accept-probe: this kernel has no syscalls:sys_exit_accept4 tracepoint"
            ),
            Err(why) => tracing::warn!("note: --accept-probe: cannot follow accept() ({why})"),
        }
    }
    Ok(())
}

/// The listen-queue drop programs (classic tracepoints `skb:kfree_skb`,
/// `skb:consume_skb`), those whose layout is complete.
fn attach_drops(
    ebpf: &mut Ebpf,
    l: &TcpDropLayout,
    attached: &mut Vec<&'static str>,
) -> Result<(), LoadError> {
    if l.kfree_valid != 0 {
        super::attach_tracepoint(ebpf, "kfree_skb", "skb", "kfree_skb")?;
        attached.push("skb:kfree_skb");
    }
    if l.syn_valid != 0 {
        super::attach_tracepoint(ebpf, "consume_skb", "skb", "consume_skb")?;
        attached.push("skb:consume_skb");
    }
    Ok(())
}

/// The read and write programs: tp_btf on `sock_recv_length` and
/// `sock_send_length`.
fn attach_holders(
    ebpf: &mut Ebpf,
    btf: &AyaBtf,
    attached: &mut Vec<&'static str>,
) -> Result<(), LoadError> {
    for (prog, tp, shown) in HOLDER_PROGRAMS {
        super::attach_tp_btf(ebpf, prog, tp, btf, shown)?;
        attached.push(shown);
    }
    Ok(())
}

/// (program, tracepoint, shown name) of the read and write programs.
pub const HOLDER_PROGRAMS: &[(&str, &str, &str)] = &[
    (
        "sock_recv_length_btf",
        "sock_recv_length",
        "sock:sock_recv_length (tp_btf)",
    ),
    (
        "sock_send_length_btf",
        "sock_send_length",
        "sock:sock_send_length (tp_btf)",
    ),
];

/// The accept program, on `sys_exit_accept4` and `sys_exit_accept`.
fn attach_accept(ebpf: &mut Ebpf, attached: &mut Vec<&'static str>) -> Result<(), LoadError> {
    use aya::programs::TracePoint;
    let prog = "sys_exit_accept";
    let program: &mut TracePoint = ebpf
        .program_mut(prog)
        .ok_or_else(|| LoadError::Missing(format!("program {prog}")))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| LoadError::Load(e.to_string()))?;
    program
        .load()
        .map_err(|e| LoadError::Load(format!("{prog}: {}", crate::error::flatten(&e))))?;
    for (name, shown) in ACCEPT_TRACEPOINTS.iter().zip(ACCEPT_NAMES) {
        program
            .attach("syscalls", name)
            .map_err(|e| LoadError::Attach {
                tracepoint: shown.to_string(),
                why: crate::error::flatten(&e),
            })?;
        attached.push(shown);
    }
    Ok(())
}

/// [`ACCEPT_TRACEPOINTS`] as `category:name`.
pub const ACCEPT_NAMES: &[&str] = &["syscalls:sys_exit_accept4", "syscalls:sys_exit_accept"];

fn attach_state_btf(ebpf: &mut Ebpf, btf: &AyaBtf) -> Result<(), LoadError> {
    super::attach_tp_btf(
        ebpf,
        "inet_sock_set_state_btf",
        "inet_sock_set_state",
        btf,
        STATE_BTF_NAME,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `struct sock` like the kernel's: the addresses and ports in
    /// anonymous unions of `sock_common`, `inet_sport` past the end of
    /// `struct sock` in `inet_sock`.
    fn sock_btf() -> Vec<u8> {
        use crate::btf::tests::Builder;
        use crate::btf::{KIND_STRUCT, KIND_UNION};
        let mut b = Builder::new();
        let u16t = b.int("unsigned short", 2);
        let u32t = b.int("unsigned int", 4);
        let u8t = b.int("unsigned char", 1);
        let in6 = b.array(u8t, u32t, 16);
        let in6_addr = b.strukt(KIND_STRUCT, "in6_addr", 16, &[("s6_addr", in6, 0, 0)]);
        let pair = b.strukt(
            KIND_STRUCT,
            "",
            8,
            &[("skc_daddr", u32t, 0, 0), ("skc_rcv_saddr", u32t, 32, 0)],
        );
        let addrpair = b.strukt(KIND_UNION, "", 8, &[("", pair, 0, 0)]);
        let ports = b.strukt(
            KIND_STRUCT,
            "",
            4,
            &[("skc_dport", u16t, 0, 0), ("skc_num", u16t, 16, 0)],
        );
        let portpair = b.strukt(KIND_UNION, "", 4, &[("", ports, 0, 0)]);
        let common = b.strukt(
            KIND_STRUCT,
            "sock_common",
            136,
            &[
                ("", addrpair, 0, 0),
                ("", portpair, 96, 0),
                ("skc_family", u16t, 128, 0),
                ("skc_v6_daddr", in6_addr, 448, 0),
                ("skc_v6_rcv_saddr", in6_addr, 576, 0),
            ],
        );
        let sock = b.strukt(
            KIND_STRUCT,
            "sock",
            760,
            &[
                ("__sk_common", common, 0, 0),
                ("sk_protocol", u16t, 4112, 0),
            ],
        );
        b.strukt(
            KIND_STRUCT,
            "inet_sock",
            976,
            &[("sk", sock, 0, 0), ("inet_sport", u16t, 6224, 0)],
        );
        b.build()
    }

    #[test]
    fn symbol_ranges() {
        let k = "ffffffff82022bc0 T tcp_rcv_state_process\n\
                 ffffffff82024200 T tcp_conn_request\n\
                 ffffffff82020000 t before\n\
                 ffffffffc0001000 t tcp_rcv_state_process [some_module]\n";
        assert_eq!(
            symbol_range(k, "tcp_rcv_state_process"),
            Ok((0xffffffff82022bc0, 0xffffffff82024200))
        );
        assert!(symbol_range(k, "nothing").is_err());
        let hidden = "0000000000000000 T tcp_rcv_state_process\n0000000000000000 T x\n";
        assert!(symbol_range(hidden, "tcp_rcv_state_process").is_err());
    }

    #[test]
    fn drop_layout_from_the_running_kernel() {
        let tracefs = Path::new("/sys/kernel/tracing");
        let path = Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() || !tracefs.join("events/skb/kfree_skb/format").exists() {
            eprintln!("no kernel BTF or tracefs here; skipped");
            return;
        }
        let btf = Btf::from_file(path).unwrap();
        let kfree = Format::read(tracefs, "skb", "kfree_skb", "t").unwrap();
        let consume = Format::read(tracefs, "skb", "consume_skb", "t").unwrap();
        let l = drop_layout_from(&kfree, &consume, &btf).unwrap();
        // The reason number is the format's, whatever it is.
        let names = kfree.symbols("REC->reason");
        let n = names
            .iter()
            .find(|(_, s)| s == "TCP_LISTEN_OVERFLOW")
            .unwrap()
            .0;
        assert_eq!(l.reasons[0], n as u32);
        assert_eq!(l.causes[0], u32::from(drop_cause::ACK_ACCEPT_QUEUE_FULL));
        assert_eq!(l.kfree_valid, 1);
        assert!(l.sk_max_ack_backlog > 0 && l.skb_transport_header > 0 && l.dev_net > 0);
        // The general path: past NOT_SPECIFIED, QUEUE_PURGE left out.
        let num = |want: &str| {
            names
                .iter()
                .find(|(_, s)| s == want)
                .map(|(n, _)| *n as u32)
        };
        assert_eq!(l.sock_valid, 1);
        assert_eq!(Some(l.skip_reasons_upto), num("NOT_SPECIFIED"));
        if let Some(q) = num("QUEUE_PURGE") {
            assert_eq!(l.quiet_reasons[0], q);
        }
        assert!(l.kfree_protocol > 0);
    }

    #[test]
    fn close_offsets_from_btf() {
        use crate::btf::KIND_STRUCT;
        use crate::btf::tests::Builder;
        let mut b = Builder::new();
        let u32t = b.int("unsigned int", 4);
        let u64t = b.int("unsigned long long", 8);
        b.strukt(
            KIND_STRUCT,
            "tcp_sock",
            2048,
            &[
                ("srtt_us", u32t, 8 * 100, 0),
                ("bytes_received", u64t, 8 * 200, 0),
                ("bytes_sent", u64t, 8 * 208, 0),
                ("bytes_acked", u64t, 8 * 216, 0),
                ("total_retrans", u32t, 8 * 300, 0),
            ],
        );
        let btf = Btf::parse(&b.build()).unwrap();
        assert_eq!(
            close_layout(&btf),
            Ok(TcpCloseLayout {
                bytes_acked: 216,
                bytes_sent: 208,
                bytes_received: 200,
                total_retrans: 300,
                srtt_us: 100,
                valid: 1,
            })
        );
        // A field of another size is refused, not read wrong.
        let mut b = Builder::new();
        let u32t = b.int("unsigned int", 4);
        b.strukt(KIND_STRUCT, "tcp_sock", 64, &[("bytes_acked", u32t, 0, 0)]);
        let btf = Btf::parse(&b.build()).unwrap();
        assert!(close_layout(&btf).unwrap_err().contains("bytes_acked"));
        // The running kernel has them all.
        let path = Path::new("/sys/kernel/btf/vmlinux");
        if path.exists() {
            let l = close_layout(&Btf::from_file(path).unwrap()).unwrap();
            assert!(l.bytes_acked > 0 && l.srtt_us > 0 && l.total_retrans > 0);
        }
    }

    #[test]
    fn sock_offsets_from_btf() {
        let btf = Btf::parse(&sock_btf()).unwrap();
        assert_eq!(
            sock_btf_layout(&btf),
            Ok(SockBtfLayout {
                protocol: 514,
                family: 16,
                num: 14,
                dport: 12,
                saddr: 4,
                daddr: 0,
                saddr_v6: 72,
                daddr_v6: 56,
                inet_sport: 778,
                valid: 1,
            })
        );
    }

    #[test]
    fn owner_offsets_from_the_running_kernel() {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            eprintln!("no kernel BTF here; skipped");
            return;
        }
        let btf = Btf::from_file(path).unwrap();
        let sock = sock_btf_layout(&btf).unwrap();
        let l = owner_layout(&btf, Some(16)).unwrap();
        assert_eq!((l.valid, l.net_valid, l.ret), (1, 1, 16));
        // The same struct sock fields as the state-change program's.
        assert_eq!(
            (l.sk_family, l.sk_num, l.sk_dport, l.sk_saddr_v6),
            (sock.family, sock.num, sock.dport, sock.saddr_v6)
        );
        assert!(l.task_files > 0 && l.fdt_fd > 0 && l.socket_sk > 0 && l.net_inum > 0);
        // A closing socket's error: `struct sock` has it on every kernel
        // diag runs on.
        assert!(l.sk_err > 0, "sock.sk_err not found in BTF");
        assert_eq!(owner_layout(&btf, None).unwrap().valid, 0);
    }

    fn fmt(fields: &[(&str, u32, u32)]) -> Format {
        Format {
            name: "t".into(),
            print_fmt: String::new(),
            fields: fields
                .iter()
                .map(|&(n, o, s)| crate::tracefs::Field {
                    name: n.into(),
                    offset: o,
                    size: s,
                })
                .collect(),
        }
    }

    #[test]
    fn send_reset_with_sockaddrs() {
        let f = fmt(&[
            ("skbaddr", 8, 8),
            ("skaddr", 16, 8),
            ("state", 24, 4),
            ("reason", 28, 4),
            ("saddr", 32, 28),
            ("daddr", 60, 28),
        ]);
        let l = sock_layout_from(&f).unwrap();
        assert_eq!(
            (l.skaddr, l.state, l.reason, l.sockaddr, l.saddr, l.daddr),
            (16, 24, 28, 1, 32, 60)
        );
        assert_eq!(l.sport, NO_FIELD);
    }

    #[test]
    fn receive_reset_with_fields() {
        let f = fmt(&[
            ("skaddr", 8, 8),
            ("sport", 16, 2),
            ("dport", 18, 2),
            ("family", 20, 2),
            ("saddr", 22, 4),
            ("daddr", 26, 4),
            ("saddr_v6", 30, 16),
            ("daddr_v6", 46, 16),
        ]);
        let l = sock_layout_from(&f).unwrap();
        assert_eq!((l.sport, l.dport, l.family, l.saddr_v6), (16, 18, 20, 30));
        assert_eq!((l.state, l.reason, l.sockaddr), (NO_FIELD, NO_FIELD, 0));
        let bad = fmt(&[("skaddr", 8, 4)]);
        assert!(sock_layout_from(&bad).is_err());
    }
}
