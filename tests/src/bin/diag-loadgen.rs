//! Load generator for diag's integration tests: real loopback connections
//! from a process with a known pid and comm.
//!
//! diag-loadgen listen COUNT ADDR...
//!     Bind each ADDR (port 0 picks one), print `PORT <n>` per ADDR, then
//!     accept COUNT connections on each; read each to EOF, then close it.
//!     Exits when all are done.
//! diag-loadgen connect COUNT ADDR:PORT...
//!     For each target, COUNT times: connect, write one byte, close.

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

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(mode), Some(count)) = (args.first(), args.get(1).and_then(|c| c.parse().ok())) else {
        eprintln!("usage: diag-loadgen listen|connect COUNT ADDR...");
        return ExitCode::from(2);
    };
    let rest = &args[2..];
    let r = match mode.as_str() {
        "listen" => listen(count, rest),
        "connect" => connect(count, rest),
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
