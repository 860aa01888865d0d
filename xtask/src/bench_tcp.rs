//! `cargo xtask bench`, the TCP and pipeline parts: what diag costs a
//! connection-churning host, how many events per second it keeps up with,
//! its memory, and its start-up time.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// A tcpstates-style bpftrace script: one line per TCP state change.
pub const BPFTRACE_TCPSTATES: &str = r#"
tracepoint:sock:inet_sock_set_state
{
    printf("%d %s %d %d %d %d\n", pid, comm, args->sport, args->dport, args->oldstate, args->newstate);
}
"#;

/// min, median, max.
pub fn stats(v: &[f64]) -> (f64, f64, f64) {
    let s = crate::stats::stats(v);
    (s.min, s.median, s.max)
}

/// Entries in the kernel map `name` held by process `pid` (through its
/// fds' fdinfo and bpftool), or None.
pub fn map_entries(pid: u32, name: &str) -> Option<usize> {
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        let is_map = std::fs::read_link(fd.path())
            .is_ok_and(|t| t.to_string_lossy() == "anon_inode:bpf-map");
        if !is_map {
            continue;
        }
        let Ok(info) = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        )) else {
            continue;
        };
        let Some(id) = info
            .lines()
            .find_map(|l| l.strip_prefix("map_id:"))
            .map(|v| v.trim().to_string())
        else {
            continue;
        };
        let Ok(show) = Command::new("bpftool")
            .args(["map", "show", "id", &id, "--json"])
            .output()
        else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap_or_default();
        if v["name"] == name {
            let dump = Command::new("bpftool")
                .args(["map", "dump", "id", &id, "--json"])
                .output()
                .ok()?;
            let entries: serde_json::Value = serde_json::from_slice(&dump.stdout).ok()?;
            return entries.as_array().map(Vec::len);
        }
    }
    None
}

/// A tracer in the background, ready once it printed `marker`.
pub struct Bg(Child, Duration);

impl Bg {
    pub fn start(mut cmd: Command, marker: &str, from_stderr: bool) -> Result<Bg> {
        let name = format!("{:?}", cmd.get_program());
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(if from_stderr {
                Stdio::null()
            } else {
                Stdio::piped()
            })
            .stderr(if from_stderr {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let started = Instant::now();
        let out: Box<dyn std::io::Read + Send> = if from_stderr {
            Box::new(child.stderr.take().expect("piped"))
        } else {
            Box::new(child.stdout.take().expect("piped"))
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let ready_after = loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(l) if l.contains(marker) => break started.elapsed(),
                Ok(_) => {}
                Err(_) => {
                    if let Some(st) = child.try_wait()? {
                        bail!("{name} exited before it was ready ({st})");
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        bail!("{name} did not get ready within 60 s");
                    }
                }
            }
        };
        // Keep draining its output so it never blocks on a full pipe, and
        // let it settle (diag's first map reads, bpftrace's start-up).
        std::thread::spawn(move || for _ in rx {});
        std::thread::sleep(Duration::from_millis(500));
        Ok(Bg(child, ready_after))
    }

    /// From launch to the ready line.
    pub fn ready_after(&self) -> Duration {
        self.1
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    pub fn stop(mut self) -> Result<()> {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.0.try_wait()?.is_none() {
            if Instant::now() > deadline {
                // Its programs go with it; the measurement is already taken.
                println!("xtask:   (tracer did not stop within 60 s of SIGINT: killed)");
                let _ = self.0.kill();
                let _ = self.0.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

/// Connections per second of `conns` loopback connect / 1-byte write /
/// close cycles from one process to a listener in another, both pinned to
/// CPU `cpu` (cross-CPU wakeups in this VM would drown the difference).
/// The server closes first, so TIME_WAIT sockets pile up on its port, not
/// in the client's ephemeral port space (which would slow later rounds).
pub fn churn_pinned(loadgen: &Path, conns: u64, cpu: usize) -> Result<f64> {
    churn_server_closes(loadgen, conns, Some(cpu))
}

/// [`churn_pinned`], pinned to `cpu` if given. The client waits for the
/// server's close before its next connect, so the listen queue never
/// overflows (an unpaced client gets ahead of `accept`, and a dropped SYN
/// costs a 1 s retransmission).
pub fn churn_server_closes(loadgen: &Path, conns: u64, cpu: Option<usize>) -> Result<f64> {
    // diag-loadgen, under `taskset -c CPU` when pinned.
    let loadgen_cmd = || match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string()]).arg(loadgen);
            c
        }
        None => Command::new(loadgen),
    };
    let mut listener = loadgen_cmd()
        .args(["listen-close", &conns.to_string(), "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start diag-loadgen")?;
    let mut line = String::new();
    BufReader::new(listener.stdout.as_mut().expect("piped")).read_line(&mut line)?;
    let port = line
        .trim()
        .strip_prefix("PORT ")
        .context("no port from diag-loadgen")?
        .to_string();
    let t = Instant::now();
    let st = loadgen_cmd()
        .args([
            "connect-eof",
            &conns.to_string(),
            &format!("127.0.0.1:{port}"),
        ])
        .status()?;
    let secs = t.elapsed().as_secs_f64();
    listener.wait()?;
    if !st.success() {
        bail!("the churn client failed ({st})");
    }
    Ok(conns as f64 / secs)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tcp {
    None,
    Tail,
    Record,
    Bpftrace,
    Empty,
    AcceptProbe,
    TailDefault,
    NoDropReasons,
}

impl Tcp {
    fn name(self) -> &'static str {
        match self {
            Tcp::None => "baseline (no tracer)",
            Tcp::Tail => "diag tail > /dev/null",
            Tcp::Record => "diag record",
            Tcp::Bpftrace => "bpftrace tcpstates",
            Tcp::Empty => "empty programs (floor)",
            Tcp::AcceptProbe => "diag tail --accept-probe",
            Tcp::TailDefault => "diag tail (default events)",
            Tcp::NoDropReasons => "diag tail --no-drop-reasons",
        }
    }
    fn key(self) -> &'static str {
        match self {
            Tcp::None => "baseline",
            Tcp::Tail => "diag_tail",
            Tcp::Record => "diag_record",
            Tcp::Bpftrace => "bpftrace",
            Tcp::Empty => "empty_programs",
            Tcp::AcceptProbe => "diag_tail_accept_probe",
            Tcp::TailDefault => "diag_tail_default",
            Tcp::NoDropReasons => "diag_tail_no_drop_reasons",
        }
    }
    fn start(self, diag: &Path, dir: &Path) -> Result<Option<Bg>> {
        Ok(Some(match self {
            Tcp::None => return Ok(None),
            Tcp::Tail => {
                let mut c = Command::new(diag);
                c.args(["tail", "--events", "tcp,reset,retrans"]);
                Bg::start(c, "tracing", true)?
            }
            Tcp::Empty => {
                let mut c = Command::new(diag);
                c.args(["tail", "--events", "tcp,reset,retrans", "--empty-programs"]);
                Bg::start(c, "tracing", true)?
            }
            Tcp::TailDefault => {
                let mut c = Command::new(diag);
                c.arg("tail").stdout(Stdio::null());
                Bg::start(c, "tracing", true)?
            }
            Tcp::NoDropReasons => {
                let mut c = Command::new(diag);
                c.args(["tail", "--events", "tcp,reset,retrans", "--no-drop-reasons"]);
                Bg::start(c, "tracing", true)?
            }
            Tcp::AcceptProbe => {
                let mut c = Command::new(diag);
                c.args(["tail", "--events", "tcp,reset,retrans", "--accept-probe"]);
                Bg::start(c, "tracing", true)?
            }
            Tcp::Record => {
                let mut c = Command::new(diag);
                c.args(["record", "--events", "tcp,reset,retrans", "-o"])
                    .arg(dir.join("bench.diag"));
                Bg::start(c, "recording", true)?
            }
            Tcp::Bpftrace => {
                let script = dir.join("tcpstates.bt");
                std::fs::write(&script, BPFTRACE_TCPSTATES)?;
                let mut c = Command::new("bpftrace");
                c.arg(&script);
                Bg::start(c, "Attaching", false)?
            }
        }))
    }
}

/// One bench section's results: a Markdown table and a JSON object.
pub struct Section {
    pub markdown: String,
    pub json: serde_json::Value,
}

/// TCP overhead: churn with no tracer, diag tail, diag record, bpftrace.
pub fn tcp_overhead(
    diag: &Path,
    loadgen: &Path,
    dir: &Path,
    reps: usize,
    conns: u64,
) -> Result<Section> {
    let tracers = [
        Tcp::None,
        Tcp::Tail,
        Tcp::Record,
        Tcp::Bpftrace,
        Tcp::Empty,
        Tcp::AcceptProbe,
        Tcp::NoDropReasons,
    ];
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); tracers.len()];
    // Per-socket kernel state must go away with the sockets: SOCK_OWNERS
    // entries of `diag tail` before and after each round's churn.
    let mut occupancy: Vec<(usize, usize)> = Vec::new();
    let mut tallies = vec![crate::progstats::Tally::default(); tracers.len()];
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu = if ncpu > 1 { 1 } else { 0 };
    println!(
        "xtask: bench: loopback churn pinned to CPU {cpu}, {conns} connections (connect, 1-byte write, the server closes), {reps} rounds"
    );
    for rep in 0..reps {
        for k in 0..tracers.len() {
            let i = (k + rep) % tracers.len();
            // diag's rows (the floor among them) run with the kernel's
            // per-program statistics on; bpftrace and the baseline without.
            let _stats = (!matches!(tracers[i], Tcp::None | Tcp::Bpftrace))
                .then(crate::progstats::StatsOn::new);
            let bg = tracers[i].start(diag, dir)?;
            let before = bg
                .as_ref()
                .filter(|_| tracers[i] == Tcp::Tail)
                .and_then(|b| map_entries(b.pid(), "SOCK_OWNERS"));
            let r = churn_pinned(loadgen, conns, cpu);
            if let Some(b) = bg {
                if let (Some(before), Some(after)) = (before, map_entries(b.pid(), "SOCK_OWNERS")) {
                    occupancy.push((before, after));
                }
                tallies[i].add_pid(b.pid());
                b.stop()?;
            }
            let r = r?;
            println!(
                "xtask:   round {}: {:<24} {r:>9.0} conns/s",
                rep + 1,
                tracers[i].name()
            );
            results[i].push(r);
        }
    }
    let base = stats(&results[0]).1;
    let mut md = String::from(
        "| tracer | conns/s min | median | max | vs baseline | cost |\n|---|---:|---:|---:|---:|---:|\n",
    );
    let mut json = serde_json::Map::new();
    for (i, t) in tracers.iter().enumerate() {
        let (min, med, max) = stats(&results[i]);
        let ratio = if base > 0.0 { med / base } else { 0.0 };
        md.push_str(&format!(
            "| {} | {min:.0} | {med:.0} | {max:.0} | {ratio:.3} | {:.1} % |\n",
            t.name(),
            (1.0 - ratio) * 100.0
        ));
        json.insert(
            t.key().into(),
            serde_json::json!({"conns_per_sec": results[i], "min": min, "median": med, "max": max, "ratio_to_baseline": ratio}),
        );
    }
    let tail_cost = 1.0 - stats(&results[1]).1 / base.max(1.0);
    let floor_cost = 1.0 - stats(&results[4]).1 / base.max(1.0);
    let accept_cost = 1.0 - stats(&results[5]).1 / base.max(1.0);
    let no_reasons_cost = 1.0 - stats(&results[6]).1 / base.max(1.0);
    md.push_str(&format!(
        "\nWorkload: client and server pinned to CPU {cpu}, the server closes first; {reps} interleaved rounds, medians compared.\nTarget: diag costs at most 3 % of churn throughput; `diag tail`: {:.1} % ({}). Empty programs on the same tracepoints (the attachment alone) cost {:.1} % here. `--accept-probe` (owners at accept(): a system-call tracepoint, which slows every system call on the host) costs {:.1} %.\n",
        tail_cost * 100.0,
        if tail_cost <= 0.03 {
            "met"
        } else {
            "over target"
        },
        floor_cost * 100.0,
        accept_cost * 100.0
    ));
    md.push_str(&format!(
        "Drop reasons (every `skb:kfree_skb` drop for a TCP socket an event, unowned TCP drops counted in the kernel): `diag tail` {:.1} % against `--no-drop-reasons` (listen-queue reasons only) {:.1} % in the same run: {:+.1} points.\n",
        tail_cost * 100.0,
        no_reasons_cost * 100.0,
        (tail_cost - no_reasons_cost) * 100.0
    ));
    md.push_str(&crate::progstats::section(
        &[
            (Tcp::Tail.name(), &tallies[1]),
            (Tcp::Record.name(), &tallies[2]),
            (Tcp::Empty.name(), &tallies[4]),
        ],
        reps,
        Some(Tcp::Empty.name()),
    ));
    json.insert(
        "programs".into(),
        serde_json::json!({
            Tcp::Tail.key(): tallies[1].json(),
            Tcp::Record.key(): tallies[2].json(),
            Tcp::Empty.key(): tallies[4].json(),
        }),
    );
    if let Some(worst) = occupancy.iter().max_by_key(|(b, a)| a.saturating_sub(*b)) {
        md.push_str(&format!(
            "Kernel state: `SOCK_OWNERS` held {} entries before and {} after {conns} connections (the worst of {} rounds): per-socket state goes with the sockets.\n",
            worst.0,
            worst.1,
            occupancy.len()
        ));
        json.insert(
            "sock_owners_before_after".into(),
            serde_json::json!(occupancy),
        );
    }
    Ok(Section {
        markdown: md,
        json: serde_json::Value::Object(json),
    })
}

/// Packets per second of `count` packets of `kind` (udp, tcp) to a closed
/// loopback port, sent by diag-loadgen pinned to `cpu`.
fn closed_flood(loadgen: &Path, kind: &str, count: u64, cpu: usize) -> Result<f64> {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let tport = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let port = if kind == "tcp" { tport } else { port };
    let out = Command::new("taskset")
        .args(["-c", &cpu.to_string()])
        .arg(loadgen)
        .args(["closed-flood", &count.to_string(), kind, &port.to_string()])
        .output()
        .context("cannot run diag-loadgen closed-flood")?;
    if !out.status.success() {
        bail!(
            "diag-loadgen closed-flood failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("RATE "))
        .and_then(|r| r.trim().parse().ok())
        .with_context(|| format!("no RATE line from closed-flood: {text}"))
}

/// Run time (ns) and runs of the loaded BPF programs named `name`, from
/// the kernel's run-time statistics (`kernel.bpf_stats_enabled`).
fn prog_stats(name: &str) -> (u64, u64) {
    let Ok(out) = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
    else {
        return (0, 0);
    };
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut t = (0, 0);
    for p in v.as_array().into_iter().flatten() {
        if p["name"] == name {
            t.0 += p["run_time_ns"].as_u64().unwrap_or(0);
            t.1 += p["run_cnt"].as_u64().unwrap_or(0);
        }
    }
    t
}

/// The cost of `skb:kfree_skb` under a flood of packets the kernel drops
/// (to a closed port: NO_SOCKET), UDP datagrams (the drop program's
/// cheapest way out: not TCP) and TCP SYNs (counted per reason in the
/// kernel, no event), with no tracer, `diag tail` (default settings:
/// every drop program) and diag's programs empty.
pub fn drop_flood(diag: &Path, loadgen: &Path, reps: usize) -> Result<Section> {
    let tracers = [Tcp::None, Tcp::TailDefault, Tcp::NoDropReasons, Tcp::Empty];
    let floods: [(&str, u64); 2] = [("udp", 400_000), ("tcp", 20_000)];
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu = if ncpu > 1 { 1 } else { 0 };
    let dir = std::env::temp_dir();
    println!(
        "xtask: bench: packets to a closed loopback port (kfree_skb NO_SOCKET), pinned to CPU {cpu}, {reps} rounds"
    );
    let mut results = vec![vec![Vec::new(); tracers.len()]; floods.len()];
    // The kfree_skb program's own time per run, from the kernel's BPF
    // run-time statistics (switched on for this part only): what the
    // throughput medians cannot show on a noisy host.
    let stats_before = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .unwrap_or_else(|_| "0".into());
    let bpf_stats = |on: bool| {
        let v = if on { "1" } else { stats_before.trim() };
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", v);
    };
    let mut per_run = vec![vec![(0u64, 0u64); tracers.len()]; floods.len()];
    for rep in 0..reps {
        for k in 0..tracers.len() {
            let i = (k + rep) % tracers.len();
            let bg = tracers[i].start(diag, &dir)?;
            // Statistics cost a clock read per run: on for diag's rows only.
            bpf_stats(bg.is_some());
            let mut rates = Vec::new();
            for (f, (kind, count)) in floods.iter().enumerate() {
                let before = prog_stats("kfree_skb");
                rates.push(closed_flood(loadgen, kind, *count, cpu));
                let after = prog_stats("kfree_skb");
                per_run[f][i].0 += after.0.saturating_sub(before.0);
                per_run[f][i].1 += after.1.saturating_sub(before.1);
            }
            if let Some(b) = bg {
                b.stop()?;
            }
            for (f, r) in rates.into_iter().enumerate() {
                let r = r?;
                println!(
                    "xtask:   round {}: {:<24} {:>4} {r:>9.0} packets/s",
                    rep + 1,
                    tracers[i].name(),
                    floods[f].0
                );
                results[f][i].push(r);
            }
        }
    }
    bpf_stats(false);
    let mut md = String::from(
        "| flood | tracer | packets/s min | median | max | vs baseline | cost | kfree_skb ns/run |\n|---|---|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut json = serde_json::Map::new();
    for (f, (kind, count)) in floods.iter().enumerate() {
        let base = stats(&results[f][0]).1;
        for (i, t) in tracers.iter().enumerate() {
            let (min, med, max) = stats(&results[f][i]);
            let ratio = if base > 0.0 { med / base } else { 0.0 };
            let (ns, runs) = per_run[f][i];
            let ns_per_run = (runs > 0).then(|| ns as f64 / runs as f64);
            md.push_str(&format!(
                "| {count} {} | {} | {min:.0} | {med:.0} | {max:.0} | {ratio:.3} | {:.1} % | {} |\n",
                if *kind == "udp" {
                    "UDP datagrams"
                } else {
                    "TCP SYNs (connect)"
                },
                t.name(),
                (1.0 - ratio) * 100.0,
                ns_per_run.map_or("-".to_string(), |n| format!("{n:.0}")),
            ));
            json.insert(
                format!("{kind}_{}", t.key()),
                serde_json::json!({"packets_per_sec": results[f][i], "min": min, "median": med, "max": max, "ratio_to_baseline": ratio, "kfree_skb_ns_per_run": ns_per_run}),
            );
        }
    }
    md.push_str(&format!(
        "\nWorkload: one process pinned to CPU {cpu} sends to a closed loopback port (UDP: sendto; TCP: connect(), refused by the kernel's reset); every packet is freed through `skb:kfree_skb` with reason NO_SOCKET. {reps} interleaved rounds, medians compared. kfree_skb ns/run: diag's program's own time per run over all rounds (`kernel.bpf_stats_enabled`), which a loaded host's noise moves far less than throughput (empty programs: the floor of an attached program).\n"
    ));
    Ok(Section {
        markdown: md,
        json: serde_json::Value::Object(json),
    })
}

/// Pipeline ceiling without a kernel (`diag bench-pipeline`), and real
/// events from several churning processes with `diag record`, counting
/// drops.
pub fn pipeline(diag: &Path, loadgen: &Path, dir: &Path) -> Result<Section> {
    let run = |args: &[&str]| -> Result<serde_json::Value> {
        let out = Command::new(diag)
            .arg("bench-pipeline")
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "diag bench-pipeline failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    println!("xtask: bench: the user-space pipeline on synthetic events");
    let plain = run(&["--events", "4000000"])?;
    let rec_path = dir.join("pipeline.diag");
    let recorded = run(&[
        "--events",
        "4000000",
        "--record",
        rec_path.to_str().unwrap_or("pipeline.diag"),
    ])?;
    let memory = run(&[
        "--events",
        "500000",
        "--procs",
        "10000",
        "--sockets",
        "100000",
    ])?;

    // Real events: 4 clients churning at once while diag records.
    println!("xtask: bench: real events, 4 churning clients, diag record");
    let mut c = Command::new(diag);
    c.args(["record", "--events", "tcp,reset,retrans", "-o"])
        .arg(dir.join("real.diag"));
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let err = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let ready = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
    if !ready.contains("recording") {
        bail!("diag record did not start: {ready}");
    }
    let t = Instant::now();
    let per_client = 5000u64;
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let lg = loadgen.to_path_buf();
            std::thread::spawn(move || churn_server_closes(&lg, per_client, None))
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("churn thread"))??;
    }
    let secs = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    child.wait()?;
    let summary: Vec<String> = rx.try_iter().collect();
    let last = summary
        .iter()
        .rev()
        .find(|l| l.contains("recorded"))
        .cloned()
        .unwrap_or_default();
    let nums: Vec<u64> = last
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect();
    let (events, dropped) = (
        nums.first().copied().unwrap_or(0),
        nums.last().copied().unwrap_or(0),
    );
    let rate = events as f64 / secs;
    let mib = |k: &serde_json::Value| k.as_f64().unwrap_or(0.0) / 1024.0;
    let md = format!(
        "| pipeline | events/s | notes |\n|---|---:|---|\n\
         | decode + aggregate (no kernel) | {:.0} | 4 M synthetic TCP events, one core |\n\
         | decode + aggregate + record (no kernel) | {:.0} | zstd frames to a file |\n\
         | real events, diag record | {rate:.0} | 4 churning client/server pairs (the server closes), {events} events, {dropped} dropped |\n\n\
         Memory: peak RSS {:.1} MiB with 10,000 processes and 100,000 sockets tracked ({:.1} MiB before the churn). Target: record keeps up with at least 1,000,000 events/s on one core.\n",
        plain["events_per_sec"].as_f64().unwrap_or(0.0),
        recorded["events_per_sec"].as_f64().unwrap_or(0.0),
        mib(&memory["peak_rss_kib"]),
        mib(&memory["peak_rss_kib_with_state"]),
    );
    let json = serde_json::json!({
        "synthetic": plain, "synthetic_record": recorded, "memory": memory,
        "real_record": {"events": events, "dropped": dropped, "seconds": secs, "events_per_sec": rate},
    });
    Ok(Section { markdown: md, json })
}

/// Start-up: launch to "tracing" (probes attached), repeated.
pub fn startup(diag: &Path, reps: usize) -> Result<Section> {
    let mut v = Vec::new();
    for _ in 0..reps {
        let mut c = Command::new(diag);
        c.args(["tail", "--events", "tcp"]);
        let bg = Bg::start(c, "tracing", true)?;
        v.push(bg.ready_after().as_secs_f64() * 1000.0);
        bg.stop()?;
    }
    let (min, med, max) = stats(&v);
    Ok(Section {
        markdown: format!(
            "Start-up (launch to probes attached, `diag tail`): min {min:.0} ms, median {med:.0} ms, max {max:.0} ms; target under 300 ms ({}).\n",
            if med < 300.0 { "met" } else { "over target" }
        ),
        json: serde_json::json!({"ms": v, "min": min, "median": med, "max": max}),
    })
}

/// Kernel maps whose occupancy the soak follows.
const SOAK_MAPS: &[&str] = &["SOCK_OWNERS", "LISTENERS", "SCHED_TASKS", "SCHED_PROCS"];

/// Occupancy of [`SOAK_MAPS`] in the maps of process `pid`.
fn occupancy(pid: u32) -> Vec<Option<usize>> {
    SOAK_MAPS.iter().map(|m| map_entries(pid, m)).collect()
}

/// A long run: `diag tail` with every probe attached while processes come
/// and go and connections churn for `secs` seconds; kernel map occupancy
/// before, at its highest, and after (per-socket and per-task state must
/// go with the sockets and tasks, so long runs never fill the maps).
pub fn soak(diag: &Path, loadgen: &Path, secs: u64) -> Result<Section> {
    println!(
        "xtask: bench: soak, {secs} s of connection and process churn under `diag tail` (all probes)"
    );
    let mut c = Command::new(diag);
    c.args(["tail", "--events", "tcp,reset,retrans,oom,stall"]);
    let bg = Bg::start(c, "tracing", true)?;
    let before = occupancy(bg.pid());
    let mut peak = before.clone();
    let start = Instant::now();
    let mut next_sample = start;
    let (mut conns, mut procs) = (0u64, 0u64);
    while start.elapsed() < Duration::from_secs(secs) {
        // Two fresh processes (listener and client) per batch; the server
        // closes, so the TIME_WAITs are on its side, not in the client's
        // ephemeral ports.
        churn_server_closes(loadgen, 1000, None)?;
        conns += 1000;
        procs += 2;
        if Instant::now() >= next_sample {
            next_sample += Duration::from_secs(30);
            let now = occupancy(bg.pid());
            for (p, n) in peak.iter_mut().zip(&now) {
                *p = (*p).max(*n);
            }
            println!(
                "xtask:   {:>4} s: {conns} connections, {procs} processes; {}",
                start.elapsed().as_secs(),
                SOAK_MAPS
                    .iter()
                    .zip(&now)
                    .map(|(m, n)| format!("{m} {}", n.map_or("?".into(), |n| n.to_string())))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let secs_run = start.elapsed().as_secs_f64();
    // Let TIME_WAIT sockets expire (60 s) so their entries can go too.
    std::thread::sleep(Duration::from_secs(65));
    let after = occupancy(bg.pid());
    bg.stop()?;
    let show = |n: &Option<usize>| n.map_or("?".to_string(), |n| n.to_string());
    let mut md = String::from("| map | before | highest | after |\n|---|---:|---:|---:|\n");
    let mut json = serde_json::Map::new();
    for (i, m) in SOAK_MAPS.iter().enumerate() {
        md.push_str(&format!(
            "| `{m}` | {} | {} | {} |\n",
            show(&before[i]),
            show(&peak[i]),
            show(&after[i])
        ));
        json.insert(
            (*m).into(),
            serde_json::json!({"before": before[i], "highest": peak[i], "after": after[i]}),
        );
    }
    md.push_str(&format!(
        "\n`diag tail --events tcp,reset,retrans,oom,stall` for {secs_run:.0} s while {conns} loopback connections and {procs} short-lived processes came and went; \"after\" is 65 s after the churn stopped (TIME_WAIT expired).\n"
    ));
    json.insert("seconds".into(), serde_json::json!(secs_run));
    json.insert("connections".into(), serde_json::json!(conns));
    json.insert("processes".into(), serde_json::json!(procs));
    Ok(Section {
        markdown: md,
        json: serde_json::Value::Object(json),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(stats(&[3.0, 1.0, 2.0]), (1.0, 2.0, 3.0));
        assert_eq!(stats(&[4.0, 1.0, 2.0, 3.0]).1, 2.5);
        assert_eq!(stats(&[]), (0.0, 0.0, 0.0));
    }
}

#[cfg(test)]
mod probe_map {
    #[test]
    #[ignore = "needs root and a built diag"]
    fn sock_owners_is_found() {
        let mut c = std::process::Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/release/diag"
        ));
        c.args(["tail", "--events", "tcp,reset,retrans"]);
        let bg = super::Bg::start(c, "tracing", true).unwrap();
        let n = super::map_entries(bg.pid(), "SOCK_OWNERS");
        bg.stop().unwrap();
        assert!(n.is_some(), "{n:?}");
    }
}
