//! Load generator for diag's integration tests: real loopback connections
//! from a process with a known pid and comm.
//!
//! diag-loadgen listen COUNT ADDR...
//!     Bind each ADDR (port 0 picks one), print `PORT <n>` per ADDR, then
//!     accept COUNT connections on each; read each to EOF, then close it.
//!     Exits when all are done.
//! diag-loadgen connect COUNT ADDR:PORT...
//!     For each target, COUNT times: connect, write one byte, close.
//! diag-loadgen listen-hold COUNT ADDR
//!     Like listen, but never close accepted sockets (a CLOSE_WAIT leak
//!     once the peer closes); print `ACCEPTED` and wait to be killed.
//! diag-loadgen connect-hold COUNT ADDR:PORT
//!     Open COUNT connections and keep them; print `CONNECTED` and wait.
//! diag-loadgen try-connect COUNT ADDR:PORT
//!     COUNT connects that may be refused; print `REFUSED <n>`.
//! diag-loadgen connect-errors COUNT ADDR:PORT
//!     COUNT blocking connects one after another, each closed at once;
//!     print the client's own tally: `RESULT ok=<n> <errno>=<n>...`
//!     (errno numbers, ascending).
//! diag-loadgen abort COUNT ADDR:PORT
//!     COUNT connections closed with a reset (SO_LINGER 0).
//! diag-loadgen listen-full ADDR [BACKLOG]
//!     Listen with backlog BACKLOG (default 0) and never accept: SYNs
//!     beyond the first BACKLOG + 1 connections are dropped (and
//!     retransmitted by the client). Print `PORT <n>` and wait to be
//!     killed.
//! diag-loadgen ack-overflow MILLIS
//!     A full accept queue met by a handshake's last segment: listen on
//!     127.0.0.1 with backlog 0 and TCP_DEFER_ACCEPT (print `PORT <n>`),
//!     connect twice (both handshakes end in the listener's request
//!     queue), send a byte on the first (its connection fills the accept
//!     queue), then one on the second, which the listener drops as a
//!     listen overflow (and again at each retransmission) for MILLIS;
//!     print `DONE` and exit.
//! diag-loadgen listen-late MILLIS COUNT ADDR
//!     Listen with backlog 1 (print `PORT <n>`), accept nothing for
//!     MILLIS, then accept COUNT connections, reading each to EOF: connects
//!     beyond the full queue lose their SYN and wait for its
//!     retransmission.
//! diag-loadgen connect-timed COUNT ADDR:PORT
//!     COUNT connects one after another, each timed: print `CONNECT_NS
//!     <ns>` (connect() alone), write one byte, close.
//! diag-loadgen connect-timeout COUNT MILLIS ADDR:PORT
//!     COUNT concurrent connects, each given up after MILLIS.
//! diag-loadgen listen-close COUNT ADDR / connect-eof COUNT ADDR:PORT
//!     The server reads a byte and closes first; the client waits for it.
//! diag-loadgen alloc MIB [hold]
//!     Allocate MIB MiB, touching every page (so it is resident), print
//!     `ALLOCATED`; with `hold`, then sleep until killed. In a memory
//!     cgroup with a smaller limit, this is an OOM kill on demand.
//! diag-loadgen churn SECONDS
//!     One process that is both ends: listen on 127.0.0.1 (print `PORT
//!     <n>`), then connect, write one byte and close, about 200 times a
//!     second for SECONDS, accepting each (read to EOF, close).
//! diag-loadgen spin SECONDS
//!     Burn one CPU for SECONDS (print `SPINNING`).
//! diag-loadgen prefork WORKERS COUNT ADDR [hold|hold-silent]
//!     A pre-fork server: the parent listens (prints `PORT <n>`), forks
//!     WORKERS workers (prints `WORKER <pid>` for each) and accepts
//!     nothing; each worker accepts COUNT connections, reads each to EOF
//!     and closes it, or with `hold` tries one non-blocking read of each
//!     and never closes them (a CLOSE_WAIT leak once the peer closes); `hold-silent`
//!     holds them without a read or write. A worker prints `DONE <pid>` after its
//!     COUNT accepts. The parent waits for its workers (killed with it).
//! diag-loadgen accept-fork COUNT ADDR HOLD_MS
//!     Accept-then-fork (as postgres): the parent accepts COUNT
//!     connections; for each it forks a child (prints `CHILD <pid>`) that
//!     holds the connection, and closes its own copy. A child reads to
//!     EOF, waits HOLD_MS, then closes. The parent exits when all children
//!     have.
//! diag-loadgen pass-fds COUNT ADDR
//!     SCM_RIGHTS: the parent forks a holder (prints `HOLDER <pid>`, then
//!     `PORT <n>`), accepts COUNT connections (prints `ACCEPTED`), waits
//!     for a SIGUSR1, passes each to the holder over a unix socket and
//!     closes its own copy (prints `PASSED`); the holder keeps them until
//!     killed.
//!
//! diag-loadgen exchange-server M ADDR
//!     Listen on ADDR (print `PORT <n>`), accept one connection, read it
//!     to EOF, answer exactly M bytes and close; print `RECEIVED <n>`
//!     (the bytes it read) and exit.
//! diag-loadgen exchange K ADDR:PORT MILLIS
//!     Connect, wait MILLIS, write exactly K bytes, shutdown(SHUT_WR)
//!     (this side closes first), read to EOF, take the socket's TCP_INFO
//!     and close. Print one line: `EXCHANGE sport <p> received <m>
//!     duration_ns <d> bytes_acked <a> bytes_sent <s> bytes_received <r>
//!     total_retrans <t> rtt_us <u> state <st>`: its own clock from
//!     before connect() to EOF, and the kernel's counters as TCP_INFO
//!     gave them after EOF (the socket already CLOSE: its final ones).
//!
//! diag-loadgen forks COUNT
//!     Fork COUNT children that exit at once, one after another.
//!
//! With `DIAG_LOADGEN_COMM=NAME` in the environment, it runs as NAME.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::ExitCode,
};

fn listen(count: usize, addrs: &[String]) -> std::io::Result<()> {
    let mut listeners = Vec::new();
    for a in addrs {
        let l = TcpListener::bind(a.as_str())?;
        println!("PORT {}", l.local_addr()?.port());
        listeners.push(l);
    }
    std::io::stdout().flush()?;
    let handles: Vec<_> = listeners
        .into_iter()
        .map(|l| {
            std::thread::spawn(move || -> std::io::Result<()> {
                for _ in 0..count {
                    let (mut s, _) = l.accept()?;
                    let mut buf = [0u8; 64];
                    while s.read(&mut buf)? > 0 {}
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().expect("listener thread")?;
    }
    Ok(())
}

fn connect(count: usize, targets: &[String]) -> std::io::Result<()> {
    for t in targets {
        let addr: SocketAddr = t
            .parse()
            .map_err(|e| std::io::Error::other(format!("{t}: {e}")))?;
        for _ in 0..count {
            let mut s = TcpStream::connect(addr)?;
            s.write_all(b"x")?;
        }
    }
    Ok(())
}

fn wait_forever() -> std::io::Result<()> {
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

fn listen_hold(count: usize, addr: &str) -> std::io::Result<()> {
    let l = TcpListener::bind(addr)?;
    println!("PORT {}", l.local_addr()?.port());
    std::io::stdout().flush()?;
    let mut held = Vec::new();
    for _ in 0..count {
        held.push(l.accept()?.0);
    }
    println!("ACCEPTED");
    std::io::stdout().flush()?;
    wait_forever()
}

/// A receiver that never reads: a listener on `addr` whose receive
/// buffer is `rcvbuf` bytes (set before listen(), so the window the
/// connection advertises is that small), accepting one connection and
/// holding it unread. Its sender fills the window and then probes the
/// zero window; the kernel drops what does not fit, for this socket.
fn stall_receiver(rcvbuf: usize, addr: &str) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let sock = socket2_listener(addr, rcvbuf)?;
    say(&format!("PORT {}", sock.local_addr()?.port()));
    let (held, peer) = sock.accept()?;
    say(&format!("ACCEPTED {peer} {}", held.as_raw_fd()));
    wait_forever()
}

/// A bound, listening socket with SO_RCVBUF set before listen().
fn socket2_listener(addr: &str, rcvbuf: usize) -> std::io::Result<TcpListener> {
    use std::os::fd::FromRawFd;
    let a: SocketAddr = target(addr)?;
    let SocketAddr::V4(v4) = a else {
        return Err(std::io::Error::other(
            "stall-receiver takes an IPv4 address",
        ));
    };
    // SAFETY: plain socket calls on a descriptor we own; the sockaddr is
    // built in full.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let l = TcpListener::from_raw_fd(fd);
        let size = rcvbuf as libc::c_int;
        if libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(v4.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        if libc::bind(
            fd,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ) != 0
            || libc::listen(fd, 1) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(l)
    }
}

/// `count` packets to a closed port on 127.0.0.1, each freed by the
/// kernel with a drop reason (NO_SOCKET): `udp` datagrams (sendto, the
/// cheapest packet the kernel drops) or `tcp` SYNs (a connect() that the
/// reset refuses). Prints `RATE <packets per second>`.
fn closed_flood(count: usize, kind: &str, port: u16) -> std::io::Result<()> {
    let to = SocketAddr::from(([127, 0, 0, 1], port));
    let start = std::time::Instant::now();
    match kind {
        "udp" => {
            let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
            let buf = [0u8; 16];
            for _ in 0..count {
                // ICMP port-unreachable answers may fail a later send:
                // still one packet dropped each.
                let _ = s.send_to(&buf, to);
            }
        }
        "tcp" => {
            for _ in 0..count {
                if std::net::TcpStream::connect(to).is_ok() {
                    return Err(std::io::Error::other(format!("port {port} is open")));
                }
            }
        }
        _ => return Err(std::io::Error::other("closed-flood takes udp or tcp")),
    }
    let secs = start.elapsed().as_secs_f64();
    say(&format!("RATE {:.0}", count as f64 / secs.max(1e-9)));
    Ok(())
}

fn target(t: &str) -> std::io::Result<SocketAddr> {
    t.parse()
        .map_err(|e| std::io::Error::other(format!("{t}: {e}")))
}

fn connect_hold(count: usize, t: &str) -> std::io::Result<()> {
    let addr = target(t)?;
    let held: Vec<TcpStream> = (0..count)
        .map(|_| TcpStream::connect(addr))
        .collect::<Result<_, _>>()?;
    println!("CONNECTED {}", held.len());
    std::io::stdout().flush()?;
    wait_forever()
}

fn try_connect(count: usize, t: &str) -> std::io::Result<()> {
    let addr = target(t)?;
    let refused = (0..count)
        .filter(|_| matches!(TcpStream::connect(addr), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused))
        .count();
    println!("REFUSED {refused}");
    Ok(())
}

fn connect_errors(count: usize, t: &str) -> std::io::Result<()> {
    let addr = target(t)?;
    let mut ok = 0;
    let mut errors = std::collections::BTreeMap::<i32, usize>::new();
    for _ in 0..count {
        match TcpStream::connect(addr) {
            Ok(_) => ok += 1,
            Err(e) => *errors.entry(e.raw_os_error().unwrap_or(-1)).or_default() += 1,
        }
    }
    let mut line = format!("RESULT ok={ok}");
    for (errno, n) in errors {
        line.push_str(&format!(" {errno}={n}"));
    }
    println!("{line}");
    Ok(())
}

fn abort(count: usize, t: &str) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let addr = target(t)?;
    for _ in 0..count {
        let s = TcpStream::connect(addr)?;
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: valid fd and a properly sized linger struct.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        drop(s); // close() with linger 0 sends a reset
    }
    Ok(())
}

/// A listener on `addr` with this accept-queue backlog.
fn listen_backlog(addr: &str, backlog: i32) -> std::io::Result<TcpListener> {
    use std::os::fd::AsRawFd;
    let l = TcpListener::bind(addr)?;
    // Listening again just changes the backlog.
    // SAFETY: valid listening fd.
    if unsafe { libc::listen(l.as_raw_fd(), backlog) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(l)
}

fn listen_late(millis: u64, count: usize, addr: &str) -> std::io::Result<()> {
    let l = listen_backlog(addr, 1)?;
    say(&format!("PORT {}", l.local_addr()?.port()));
    std::thread::sleep(std::time::Duration::from_millis(millis));
    for _ in 0..count {
        let (mut s, _) = l.accept()?;
        let mut buf = [0u8; 64];
        while s.read(&mut buf)? > 0 {}
    }
    Ok(())
}

fn connect_timed(count: usize, t: &str) -> std::io::Result<()> {
    let addr: SocketAddr = t
        .parse()
        .map_err(|e| std::io::Error::other(format!("{t}: {e}")))?;
    for _ in 0..count {
        let at = std::time::Instant::now();
        let mut s = TcpStream::connect(addr)?;
        say(&format!("CONNECT_NS {}", at.elapsed().as_nanos()));
        s.write_all(b"x")?;
    }
    Ok(())
}

fn listen_full(addr: &str, backlog: i32) -> std::io::Result<()> {
    let l = listen_backlog(addr, backlog)?;
    println!("PORT {}", l.local_addr()?.port());
    std::io::stdout().flush()?;
    wait_forever()
}

/// A socket's TCP_INFO.
fn tcp_info(fd: std::os::fd::RawFd) -> std::io::Result<libc::tcp_info> {
    // SAFETY: tcp_info is plain data; the kernel fills at most `len` bytes.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: valid fd, buffer and length.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(info)
}

/// The accept queue of a listener and its maximum (TCP_INFO's
/// `tcpi_unacked` and `tcpi_sacked` for a listening socket).
fn accept_queue(l: &TcpListener) -> std::io::Result<(u32, u32)> {
    use std::os::fd::AsRawFd;
    let info = tcp_info(l.as_raw_fd())?;
    Ok((info.tcpi_unacked, info.tcpi_sacked))
}

fn ack_overflow(millis: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let l = TcpListener::bind("127.0.0.1:0")?;
    let secs: libc::c_int = 30;
    // SAFETY: valid fd and option value; listening again sets the backlog.
    unsafe {
        if libc::setsockopt(
            l.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&secs as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) != 0
            || libc::listen(l.as_raw_fd(), 0) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    let addr = l.local_addr()?;
    println!("PORT {}", addr.port());
    std::io::stdout().flush()?;
    let mut a = TcpStream::connect(addr)?;
    let mut b = TcpStream::connect(addr)?;
    a.write_all(b"a")?;
    // The first connection is in the accept queue once its byte is in.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while accept_queue(&l)?.0 == 0 {
        if std::time::Instant::now() > deadline {
            return Err(std::io::Error::other("the accept queue never filled"));
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    b.write_all(b"b")?;
    std::thread::sleep(std::time::Duration::from_millis(millis));
    drop(l);
    println!("DONE");
    std::io::stdout().flush()?;
    Ok(())
}

fn connect_timeout(count: usize, millis: u64, t: &str) -> std::io::Result<()> {
    let addr = target(t)?;
    let timeout = std::time::Duration::from_millis(millis);
    let threads: Vec<_> = (0..count)
        .map(|_| std::thread::spawn(move || TcpStream::connect_timeout(&addr, timeout).is_ok()))
        .collect();
    let ok = threads
        .into_iter()
        .filter_map(|t| t.join().ok())
        .filter(|&ok| ok)
        .count();
    println!("CONNECTED {ok}");
    Ok(())
}

/// Accept COUNT connections; read one byte from each and close it first
/// (the TIME_WAIT lands here, on the listening port, not on the client's
/// ephemeral ports: a steady workload for benchmarks).
fn listen_close(count: usize, addr: &str) -> std::io::Result<()> {
    let l = TcpListener::bind(addr)?;
    println!("PORT {}", l.local_addr()?.port());
    std::io::stdout().flush()?;
    let mut b = [0u8; 1];
    for _ in 0..count {
        let (mut s, _) = l.accept()?;
        let _ = s.read(&mut b)?;
    }
    Ok(())
}

/// COUNT times: connect, write one byte, wait for the server's close.
fn connect_eof(count: usize, t: &str) -> std::io::Result<()> {
    let addr = target(t)?;
    let mut buf = [0u8; 16];
    for _ in 0..count {
        let mut s = TcpStream::connect(addr)?;
        s.write_all(b"x")?;
        while s.read(&mut buf)? > 0 {}
    }
    Ok(())
}

fn alloc(mib: usize, hold: bool) -> std::io::Result<()> {
    const MIB: usize = 1 << 20;
    let mut chunks: Vec<Vec<u8>> = Vec::with_capacity(mib);
    for i in 0..mib {
        let mut chunk = vec![0u8; MIB];
        // vec! of zeros may map lazily: write one byte per page.
        for page in chunk.chunks_mut(4096) {
            page[0] = (i as u8) | 1;
        }
        chunks.push(chunk);
    }
    println!("ALLOCATED");
    std::io::stdout().flush()?;
    if hold {
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    // Keep the memory alive until here.
    std::hint::black_box(&chunks);
    Ok(())
}

/// Short connections for `secs` seconds to `dests` listeners of its own
/// (one `PORT` line each), in turn, one every 5 ms.
fn churn(secs: u64, dests: usize) -> std::io::Result<()> {
    let mut addrs = Vec::new();
    for _ in 0..dests.max(1) {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let addr = l.local_addr()?;
        println!("PORT {}", addr.port());
        addrs.push(addr);
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let mut buf = [0u8; 64];
                while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
            }
        });
    }
    std::io::stdout().flush()?;
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    for addr in addrs.iter().cycle() {
        if std::time::Instant::now() >= end {
            break;
        }
        let mut s = TcpStream::connect(addr)?;
        s.write_all(b"x")?;
        drop(s);
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Ok(())
}

fn spin(secs: u64) -> std::io::Result<()> {
    println!("SPINNING");
    std::io::stdout().flush()?;
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let mut x = 0u64;
    while std::time::Instant::now() < end {
        for i in 0..10_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
    }
    Ok(())
}

/// `DIAG_LOADGEN_COMM`: the name to run under (any bytes a process may
/// give itself, escape sequences included).
fn set_comm_from_env() {
    if let Some(name) = std::env::var_os("DIAG_LOADGEN_COMM") {
        use std::os::unix::ffi::OsStrExt;
        let mut buf = [0u8; 16];
        let b = name.as_bytes();
        let n = b.len().min(15);
        buf[..n].copy_from_slice(&b[..n]);
        // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16
        // bytes; `buf` is one.
        unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr()) };
    }
}

fn forks(count: usize) -> std::io::Result<()> {
    for _ in 0..count {
        // SAFETY: the child only calls _exit.
        match unsafe { libc::fork() } {
            -1 => return Err(std::io::Error::last_os_error()),
            0 => unsafe { libc::_exit(0) },
            pid => {
                let mut status = 0;
                // SAFETY: waiting for our own child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
            }
        }
    }
    Ok(())
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// fork(2): Some(child pid) in the parent, None in the child.
fn fork() -> std::io::Result<Option<i32>> {
    // SAFETY: this program is single-threaded where it forks.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()),
        0 => Ok(None),
        pid => Ok(Some(pid)),
    }
}

/// Kill the forked children when the parent goes (tests kill the parent).
fn die_with_parent() {
    // SAFETY: prctl with an integer signal.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
}

fn wait_children() {
    loop {
        // SAFETY: wait(2) with a null status pointer.
        if unsafe { libc::wait(std::ptr::null_mut()) } < 0 {
            break;
        }
    }
}

/// `mode`: "" reads each connection to its end; "hold" tries one
/// non-blocking read of each (as an event loop does: nothing has come)
/// and holds it; "hold-silent" holds it untouched.
fn prefork(workers: usize, count: usize, addr: &str, mode: &str) -> std::io::Result<()> {
    let hold = mode.starts_with("hold");
    let greet = mode == "hold";
    let l = TcpListener::bind(addr)?;
    say(&format!("PORT {}", l.local_addr()?.port()));
    let mut pids = Vec::new();
    for _ in 0..workers {
        match fork()? {
            Some(pid) => pids.push(pid),
            None => {
                die_with_parent();
                let me = std::process::id();
                let mut held = Vec::new();
                for _ in 0..count {
                    let (mut s, _) = l.accept()?;
                    if hold {
                        if greet {
                            // An event loop's first try: nothing yet.
                            s.set_nonblocking(true)?;
                            let mut buf = [0u8; 64];
                            match s.read(&mut buf) {
                                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                                other => return Err(std::io::Error::other(format!("{other:?}"))),
                            }
                        }
                        held.push(s);
                    } else {
                        let mut buf = [0u8; 64];
                        while s.read(&mut buf)? > 0 {}
                    }
                }
                say(&format!("DONE {me}"));
                if hold {
                    wait_forever()?;
                }
                std::process::exit(0);
            }
        }
    }
    for pid in pids {
        say(&format!("WORKER {pid}"));
    }
    wait_children();
    Ok(())
}

fn accept_fork(count: usize, addr: &str, hold_ms: u64) -> std::io::Result<()> {
    let l = TcpListener::bind(addr)?;
    say(&format!("PORT {}", l.local_addr()?.port()));
    for _ in 0..count {
        let (mut s, _) = l.accept()?;
        match fork()? {
            Some(pid) => {
                say(&format!("CHILD {pid}"));
                drop(s);
            }
            None => {
                die_with_parent();
                drop(l);
                let mut buf = [0u8; 64];
                while s.read(&mut buf)? > 0 {}
                std::thread::sleep(std::time::Duration::from_millis(hold_ms));
                drop(s);
                std::process::exit(0);
            }
        }
    }
    wait_children();
    Ok(())
}

/// Send `fd` over the unix socket `via` (SCM_RIGHTS).
fn send_fd(via: i32, fd: i32) -> std::io::Result<()> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    // SAFETY: a zeroed msghdr is valid; the pointers set below outlive the
    // call, and the control buffer is large enough for one fd.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<i32>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<i32>(), fd);
        if libc::sendmsg(via, &msg, 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Receive one fd sent with [`send_fd`].
fn recv_fd(via: i32) -> std::io::Result<i32> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: as in send_fd.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    // SAFETY: as in send_fd; the kernel fills the control buffer.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        if libc::recvmsg(via, &mut msg, 0) <= 0 {
            return Err(std::io::Error::last_os_error());
        }
        let c = libc::CMSG_FIRSTHDR(&msg);
        if c.is_null() || (*c).cmsg_type != libc::SCM_RIGHTS {
            return Err(std::io::Error::other("no fd received"));
        }
        Ok(std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<i32>()))
    }
}

fn pass_fds(count: usize, addr: &str) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SIGUSR1 is blocked from here on, so one sent at any time after
    // `ACCEPTED` waits for the sigwait below.
    // SAFETY: a zeroed sigset_t filled by the libc calls.
    let mut usr1: libc::sigset_t = unsafe { std::mem::zeroed() };
    // pthread_sigmask and sigwait return their error instead of setting errno.
    let rc = unsafe {
        libc::sigemptyset(&mut usr1);
        libc::sigaddset(&mut usr1, libc::SIGUSR1);
        libc::pthread_sigmask(libc::SIG_BLOCK, &usr1, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    let mut pair = [0i32; 2];
    // SAFETY: socketpair into a 2-element array.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, pair.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let l = TcpListener::bind(addr)?;
    match fork()? {
        None => {
            die_with_parent();
            drop(l);
            let mut held = Vec::new();
            for _ in 0..count {
                held.push(recv_fd(pair[1])?);
            }
            wait_forever()
        }
        Some(holder) => {
            say(&format!("HOLDER {holder}"));
            say(&format!("PORT {}", l.local_addr()?.port()));
            let accepted: Vec<TcpStream> = (0..count)
                .map(|_| l.accept().map(|(s, _)| s))
                .collect::<Result<_, _>>()?;
            say("ACCEPTED");
            let mut sig = 0;
            // SAFETY: the set above; sig is written by sigwait.
            let rc = unsafe { libc::sigwait(&usr1, &mut sig) };
            if rc != 0 {
                return Err(std::io::Error::from_raw_os_error(rc));
            }
            for s in accepted {
                send_fd(pair[0], s.as_raw_fd())?;
                drop(s);
            }
            say("PASSED");
            wait_forever()
        }
    }
}

fn exchange_server(m: usize, addr: &str) -> std::io::Result<()> {
    let l = TcpListener::bind(addr)?;
    say(&format!("PORT {}", l.local_addr()?.port()));
    let (mut s, _) = l.accept()?;
    let mut got = 0usize;
    let mut buf = [0u8; 65536];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    s.write_all(&vec![b'y'; m])?;
    drop(s);
    say(&format!("RECEIVED {got}"));
    Ok(())
}

fn exchange(k: usize, target: &str, millis: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let addr: SocketAddr = target
        .parse()
        .map_err(|e| std::io::Error::other(format!("{target}: {e}")))?;
    let t0 = std::time::Instant::now();
    let mut s = TcpStream::connect(addr)?;
    std::thread::sleep(std::time::Duration::from_millis(millis));
    s.write_all(&vec![b'x'; k])?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut got = 0usize;
    let mut buf = [0u8; 65536];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    let elapsed = t0.elapsed();
    let info = tcp_info(s.as_raw_fd())?;
    let sport = s.local_addr()?.port();
    drop(s);
    say(&format!(
        "EXCHANGE sport {sport} received {got} duration_ns {} bytes_acked {} bytes_sent {} bytes_received {} total_retrans {} rtt_us {} state {}",
        elapsed.as_nanos(),
        info.tcpi_bytes_acked,
        info.tcpi_bytes_sent,
        info.tcpi_bytes_received,
        info.tcpi_total_retrans,
        info.tcpi_rtt,
        info.tcpi_state,
    ));
    Ok(())
}

/// `memhog MIB PASSES`: fill MIB MiB of anonymous memory with data that
/// is not zero (the kernel keeps zero-filled pages out of swap) and
/// touch every page PASSES times: in a memory cgroup smaller than that,
/// pages are swapped out and in again.
fn memhog(mib: usize, passes: usize) -> std::io::Result<()> {
    let len = mib << 20;
    let mut v = vec![0u8; len];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        for (b, s) in chunk.iter_mut().zip(x.to_ne_bytes()) {
            *b = s | 1;
        }
    }
    let mut sum: u64 = 0;
    for _ in 1..passes.max(1) {
        for page in v.chunks(4096) {
            sum = sum.wrapping_add(u64::from(page[0]));
        }
    }
    println!("memhog {mib} MiB, {passes} passes, sum {sum}");
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    println!("MAJFLT {}", ru.ru_majflt);
    std::hint::black_box(&v);
    Ok(())
}

/// `reread N PATH`: read the file N times, start to end.
fn reread(times: usize, path: &str) -> std::io::Result<()> {
    use std::io::Read;
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    for _ in 0..times {
        let mut f = std::fs::File::open(path)?;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
    }
    println!("reread {total} bytes");
    Ok(())
}

fn main() -> ExitCode {
    set_comm_from_env();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let count = if args.first().map(String::as_str) == Some("listen-full") {
        Some(0)
    } else {
        args.get(1).and_then(|c| c.parse().ok())
    };
    let (Some(mode), Some(count)) = (args.first(), count) else {
        eprintln!("usage: diag-loadgen MODE COUNT ARGS... (see the source for the modes)");
        return ExitCode::from(2);
    };
    let rest = &args[2..];
    let first = rest.first().map(String::as_str).unwrap_or("");
    let r = match mode.as_str() {
        "memhog" => memhog(count, first.parse().unwrap_or(2)),
        "reread" => reread(count, first),
        "listen" => listen(count, rest),
        "connect" => connect(count, rest),
        "listen-hold" => listen_hold(count, first),
        "listen-late" => listen_late(
            count as u64,
            rest.first().and_then(|c| c.parse().ok()).unwrap_or(1),
            rest.get(1).map(String::as_str).unwrap_or(""),
        ),
        "connect-timed" => connect_timed(count, first),
        "connect-hold" => connect_hold(count, first),
        "try-connect" => try_connect(count, first),
        "connect-errors" => connect_errors(count, first),
        "abort" => abort(count, first),
        "ack-overflow" => ack_overflow(count as u64),
        "listen-full" => listen_full(
            &args[1],
            args.get(2).and_then(|b| b.parse().ok()).unwrap_or(0),
        ),
        "connect-timeout" => {
            let millis = first.parse().unwrap_or(1000);
            connect_timeout(count, millis, rest.get(1).map(String::as_str).unwrap_or(""))
        }
        "listen-close" => listen_close(count, first),
        "exchange-server" => exchange_server(count, first),
        "exchange" => exchange(
            count,
            first,
            rest.get(1).and_then(|m| m.parse().ok()).unwrap_or(0),
        ),
        "stall-receiver" => stall_receiver(count, first),
        "closed-flood" => closed_flood(
            count,
            first,
            rest.get(1).and_then(|p| p.parse().ok()).unwrap_or(9),
        ),
        "connect-eof" => connect_eof(count, first),
        "alloc" => alloc(count, rest.first().is_some_and(|h| h == "hold")),
        "churn" => churn(count as u64, first.parse().unwrap_or(1)),
        "spin" => spin(count as u64),
        "forks" => forks(count),
        "prefork" => prefork(
            count,
            rest.first().and_then(|c| c.parse().ok()).unwrap_or(1),
            rest.get(1).map(String::as_str).unwrap_or(""),
            rest.get(2).map(String::as_str).unwrap_or(""),
        ),
        "accept-fork" => accept_fork(
            count,
            first,
            rest.get(1).and_then(|m| m.parse().ok()).unwrap_or(0),
        ),
        "pass-fds" => pass_fds(count, first),
        _ => {
            eprintln!("unknown mode {mode}");
            return ExitCode::from(2);
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("diag-loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}
