//! Load generator for diag's integration tests: real loopback connections
//! from a process with a known pid and comm.
//!
//! diag-loadgen listen COUNT ADDR...
//!     Bind each ADDR (port 0 picks one), print `PORT <n>` per ADDR, then
//!     accept COUNT connections on each; read each to EOF, then close it.
//!     Exits when all are done.
//! diag-loadgen connect COUNT ADDR:PORT...
//!     For each target, COUNT times: connect, write one byte, close.
//! diag-loadgen alloc MIB [hold]
//!     Allocate MIB MiB, touching every page (so it is resident), print
//!     `ALLOCATED`; with `hold`, then sleep until killed. In a memory
//!     cgroup with a smaller limit, this is an OOM kill on demand.

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

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(mode), Some(count)) = (args.first(), args.get(1).and_then(|c| c.parse().ok())) else {
        eprintln!("usage: diag-loadgen listen|connect COUNT ADDR... | alloc MIB [hold]");
        return ExitCode::from(2);
    };
    let rest = &args[2..];
    let r = match mode.as_str() {
        "listen" => listen(count, rest),
        "connect" => connect(count, rest),
        "alloc" => alloc(count, rest.first().is_some_and(|h| h == "hold")),
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
