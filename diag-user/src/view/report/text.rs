//! The report as text, in the USE method's order.

use super::*;

pub fn render_text(r: &Review, file: &str) -> String {
    let clock = r.clock();
    let t = |ns: u64| clock.wall(ns).format("%H:%M:%S").to_string();
    let mut o = String::new();
    let h = &r.header;
    let first = r.first_ts.unwrap_or(h.started_ts_ns);
    // A recording without events ends where it starts, not at boot.
    let last = r.last_ts.max(first);
    let _ = writeln!(o, "diag report: {file}");
    if r.window.is_some() {
        let _ = writeln!(
            o,
            "Host {}, kernel {}, {} CPUs; recording started {}; diag {}",
            h.hostname,
            h.kernel,
            h.cpus,
            clock
                .wall(r.span.map_or(h.started_ts_ns, |s| {
                    crate::source::replay::recording_start(h, s.0)
                }))
                .format("%Y-%m-%d %H:%M:%S %Z"),
            h.diag_version
        );
        let _ = writeln!(
            o,
            "WINDOW: {} to {} ({}) only; the counts below are of this window (sockets and owners from before it)",
            t(first),
            t(last),
            human_ns(last - first)
        );
    } else {
        let _ = writeln!(
            o,
            "Host {}, kernel {}, {} CPUs; recorded {} to {} ({}); diag {}",
            h.hostname,
            h.kernel,
            h.cpus,
            clock.wall(first).format("%Y-%m-%d %H:%M:%S %Z"),
            t(last),
            human_ns(last - first),
            h.diag_version
        );
    }
    let _ = writeln!(o, "Events: {}; probes: {}", r.events, h.probes.join(", "));
    let mut complete = true;
    for (ts, n) in &r.drops {
        complete = false;
        let _ = writeln!(
            o,
            "INCOMPLETE: {n} events dropped by the kernel in the second before {} (ring buffer full)",
            t(*ts)
        );
    }
    if r.drops_before > 0 {
        complete = false;
        let _ = writeln!(
            o,
            "INCOMPLETE: {} events dropped by the kernel before the window (ring buffer full): the states of the sockets it starts with may be off",
            r.drops_before
        );
    }
    for d in &r.damage {
        complete = false;
        let _ = writeln!(o, "DAMAGED: {d}");
    }
    if !r.ended {
        complete = false;
        let _ = writeln!(
            o,
            "NOT FINISHED: the recording ends at its last complete frame (diag was killed or the file was cut)"
        );
    }
    if complete {
        let _ = writeln!(o, "Complete: no events were lost.");
    }

    let empty = Vec::new();
    let rows = r.last.as_ref().map(|s| &s.processes).unwrap_or(&empty);
    let _ = writeln!(o, "\n1. ERRORS");
    let _ = writeln!(o, "  OOM kills: {}", r.oom.len());
    for k in &r.oom {
        let _ = writeln!(o, "    {}", oom_text(k, r.context_of(k), &clock));
    }
    if let Some(s) = &r.last {
        let tot = &s.totals;
        let _ = writeln!(
            o,
            "  TCP resets: sent {} (+{} by the kernel for closed ports), received {}; retransmits {}; failed connects {}; aborted connections {}",
            tot.resets_sent,
            s.kernel_resets_sent,
            tot.resets_received,
            tot.retransmits,
            tot.failed_connects,
            tot.aborts
        );
        for p in top_by(rows, 5, |c| {
            c.resets_sent + c.resets_received + c.retransmits + c.failed_connects
        }) {
            let _ = writeln!(
                o,
                "    pid {:<7} {:<16} resets in {} out {}, retransmits {}, failed connects {}",
                p.pid,
                p.comm,
                p.totals.resets_received,
                p.totals.resets_sent,
                p.totals.retransmits,
                p.totals.failed_connects
            );
        }
        for (addr, e) in s.remote_errors.iter().take(5) {
            let _ = writeln!(
                o,
                "    remote {:<24} resets in {} out {}, retransmits {}, failed connects {}",
                addr.to_string(),
                e.resets_received,
                e.resets_sent,
                e.retransmits,
                e.failed_connects
            );
        }
        for f in s.connect_failures.iter().take(10) {
            let _ = writeln!(
                o,
                "    failed connects: pid {:<7} {:<16} to {:<24} {} {}",
                f.pid,
                f.comm,
                f.remote.to_string(),
                f.count,
                f.error
            );
        }
    }

    if let Some(s) = &r.last {
        kernel_drops_text(&mut o, s);
    }
    if r.block.frames > 0 {
        let errs: u64 = r.block.devices.iter().map(|d| d.io.errors).sum();
        let _ = writeln!(
            o,
            "  Block I/O errors (requests completed with an error): {errs}"
        );
        for d in r.block.devices.iter().filter(|d| d.io.errors > 0) {
            let _ = writeln!(o, "    {} ({}): {}", d.name, d.dev, d.io.errors);
        }
    }

    let _ = writeln!(o, "\n2. SATURATION");
    if r.stalls.is_empty() {
        let _ = writeln!(
            o,
            "  No stalls recorded (record with --events ...,stall to capture run-queue waits over --stall-threshold)."
        );
    } else {
        let comm = crate::text::comm;
        let _ = writeln!(
            o,
            "  Stalls (run-queue waits over the threshold): {}",
            r.stalls.len()
        );
        let mut worst: Vec<&StallEvent> = r.stalls.iter().collect();
        worst.sort_by_key(|s| std::cmp::Reverse(s.wait_ns));
        for st in worst.iter().take(5) {
            let _ = writeln!(
                o,
                "    {}  pid {} ({}) waited {} for CPU {}; {} ({}) held it",
                t(st.header.ts_ns),
                st.header.tgid,
                comm(&st.header.comm),
                human_ns(st.wait_ns),
                st.header.cpu,
                st.villain_tgid,
                comm(&st.villain_comm)
            );
        }
        let mut villains: std::collections::BTreeMap<(u32, String), (u64, u64)> =
            std::collections::BTreeMap::new();
        for st in &r.stalls {
            let v = villains
                .entry((st.villain_tgid, comm(&st.villain_comm)))
                .or_default();
            v.0 += 1;
            v.1 += st.wait_ns;
        }
        let mut v: Vec<_> = villains.into_iter().collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.1.1));
        let _ = writeln!(
            o,
            "  Who held the CPU meanwhile (villains, by delay caused):"
        );
        for ((pid, c), (n, ns)) in v.iter().take(5) {
            let _ = writeln!(
                o,
                "    pid {pid:<7} {c:<16} {n} stalls, {} of waiting caused",
                human_ns(*ns)
            );
        }
    }

    saturation_psi(&mut o, &r.psi, &t);
    block_use(&mut o, &r.block, &t);
    saturation_memory(&mut o, r, &t);
    saturation_locks(&mut o, r, &t);

    if let Some(s) = &r.last {
        saturation_tcp(&mut o, s);
    }

    let _ = writeln!(o, "\n3. CHURN");
    let _ = writeln!(
        o,
        "  Connection lifetimes: {} closed, p50 {}, p99 {}, max {}",
        r.lifetimes.count,
        human_ns(r.lifetimes.quantile(0.5)),
        human_ns(r.lifetimes.quantile(0.99)),
        human_ns(r.lifetimes.max)
    );
    let secs = (r.last_ts.saturating_sub(first) as f64 / 1e9).max(1e-9);
    let _ = writeln!(o, "  Top churners (connections opened):");
    for p in top_by(rows, 5, |c| c.active_opens + c.passive_opens) {
        let _ = writeln!(
            o,
            "    pid {:<7} {:<16} opened {} (active {}, passive {}), {:.1}/s; closed {}; TIME_WAIT created {}",
            p.pid,
            p.comm,
            p.totals.active_opens + p.totals.passive_opens,
            p.totals.active_opens,
            p.totals.passive_opens,
            (p.totals.active_opens + p.totals.passive_opens) as f64 / secs,
            p.totals.closes,
            p.totals.time_waits
        );
    }
    // A peak of 0 has no moment; a peak's moment is within the review
    // (its samples are).
    let peak = |(ts, n): (u64, u64)| {
        if n == 0 {
            "none".to_string()
        } else {
            format!("{n} at {}", t(ts.clamp(first, last)))
        }
    };
    let _ = writeln!(o, "  TIME_WAIT peak: {}", peak(r.tw_peak));
    let _ = writeln!(o, "  CLOSE_WAIT peak: {}", peak(r.cw_peak));
    if let Some(s) = &r.last
        && !s.leaks.is_empty()
    {
        let _ = writeln!(o, "  CLOSE_WAIT leaks at the end: {}", s.leaks.len());
        for l in s.leaks.iter().take(5) {
            let who = l
                .pid
                .map(|p| format!("pid {p} ({})", l.comm.clone().unwrap_or_default()))
                .unwrap_or("owner unknown".into());
            let _ = writeln!(
                o,
                "    {who} {} <- {} for {}",
                l.local,
                l.remote,
                human_ns(l.age_ns)
            );
        }
    }
    match &r.pressure_peak {
        Some((ts, p)) => {
            let _ = writeln!(
                o,
                "  Ephemeral ports, worst destination: {} -> {} {} used ({:.1} % of {}) at {}",
                p.destination.local,
                p.destination.remote,
                p.ports_used,
                p.ratio * 100.0,
                p.range_size,
                t(*ts)
            );
        }
        None => {
            let _ = writeln!(o, "  Ephemeral ports: no outgoing connections seen");
        }
    }
    if !r.hints.is_empty() {
        let _ = writeln!(
            o,
            "  Hints (one per process and destination, in the words of its peak interval):"
        );
        let mut hints: Vec<&MergedHint> = r.hints.values().collect();
        hints.sort_by_key(|h| (h.first_ts, h.peak_ts));
        for h in hints {
            let when = if h.intervals <= 1 {
                format!("at {}", t(h.peak_ts))
            } else {
                format!(
                    "peak at {}; given in {} intervals from {} to {}",
                    t(h.peak_ts),
                    h.intervals,
                    t(h.first_ts),
                    t(h.last_ts)
                )
            };
            let _ = writeln!(o, "    {} ({when})", h.text);
        }
    }
    connections_text(&mut o, r.last.as_ref(), &t);
    o
}

/// Where TCP load piled up: listen queues that overflowed, and connects
/// that took long (a lost SYN costs a second).
/// Lock waits: the processes that waited most, the most contended locks
/// with their holders, and the longest waits (events, naming the waker).
fn saturation_locks(o: &mut String, r: &Review, t: &dyn Fn(u64) -> String) {
    use std::fmt::Write;
    let l = &r.locks;
    if l.frames == 0 && r.lock_waits.is_empty() {
        return;
    }
    let _ = writeln!(o, "  Lock waits (futex; record with --events ...,lock):");
    for p in l.top_procs(5) {
        let _ = writeln!(
            o,
            "    pid {:<7} {:<16} {} waits, {} waiting ({} over the threshold); kernel lock contention {} waits, {}",
            p.pid,
            p.comm,
            p.waits,
            human_ns(p.wait_ns),
            p.long_waits,
            p.kernel_waits,
            human_ns(p.kernel_wait_ns)
        );
    }
    for k in l.top_locks(5) {
        let holders: Vec<String> = k
            .holders
            .iter()
            .take(3)
            .map(|h| {
                if h.tid == 0 {
                    format!("no waker: {}", human_ns(h.wait_ns))
                } else {
                    format!("tid {} {}: {}", h.tid, h.comm, human_ns(h.wait_ns))
                }
            })
            .collect();
        let _ = writeln!(
            o,
            "    lock {:#x} in pid {}: {} waits, {} (max {}); holders by delay caused: {}",
            k.uaddr,
            k.pid,
            k.waits,
            human_ns(k.wait_ns),
            human_ns(k.max_ns),
            holders.join(", ")
        );
    }
    if l.locks_omitted > 0 {
        let _ = writeln!(
            o,
            "    ({} lock entries beyond the {} kept per second were counted, not kept)",
            l.locks_omitted,
            crate::aggregate::lock::FRAME_LOCKS
        );
    }
    let mut worst: Vec<&diag_common::lock::LockWaitEvent> = r.lock_waits.iter().collect();
    worst.sort_by_key(|w| std::cmp::Reverse(w.wait_ns));
    if !worst.is_empty() {
        let _ = writeln!(
            o,
            "  Longest lock waits ({} over the threshold):",
            worst.len()
        );
    }
    for w in worst.iter().take(5) {
        let _ = writeln!(
            o,
            "    {}  pid {} tid {} ({}) waited {} on {:#x}; woken by {}",
            t(w.header.ts_ns),
            w.header.tgid,
            w.header.pid,
            crate::text::comm(&w.header.comm),
            human_ns(w.wait_ns),
            w.uaddr,
            if w.waker_pid == 0 {
                "nobody (a signal)".to_string()
            } else {
                format!(
                    "tid {} ({}, pid {})",
                    w.waker_pid,
                    crate::text::comm(&w.waker_comm),
                    w.waker_tgid
                )
            }
        );
    }
}

fn saturation_tcp(o: &mut String, s: &TcpSnapshot) {
    let overflowed: Vec<_> = s.listen.iter().filter(|l| l.drops > 0).collect();
    if overflowed.is_empty() {
        let _ = writeln!(
            o,
            "  Listen queues: no connection attempt dropped at a listener"
        );
    } else {
        let _ = writeln!(
            o,
            "  Listen queues: {} listeners dropped connection attempts",
            overflowed.len()
        );
        for l in overflowed.iter().take(5) {
            let who = match (l.pid, &l.comm) {
                (Some(p), Some(c)) => format!("pid {p:<7} {c:<16}"),
                _ => format!("{:<24}", "owner unknown"),
            };
            let q = |v: Option<u32>| v.map_or("-".to_string(), |v| v.to_string());
            let _ = writeln!(
                o,
                "    {who} {:<22} {} overflows, {} drops; accept queue {}/{} at the last drop, highest {}",
                l.local.to_string(),
                l.overflows,
                l.drops,
                q(l.queue),
                q(l.backlog),
                l.queue_max
            );
        }
    }
    let all = &s.connect_all.0;
    let (Some(p50), Some(p99)) = (all.quantile(0.5), all.quantile(0.99)) else {
        let _ = writeln!(o, "  Connect time: no outgoing connect completed");
        return;
    };
    let max = s
        .processes
        .iter()
        .map(|p| p.connect_max_ns)
        .max()
        .unwrap_or(0);
    let _ = writeln!(
        o,
        "  Connect time: {} connects, p50 {}, p99 {}, max {}",
        all.total(),
        human_ns(p50),
        human_ns(p99),
        human_ns(max)
    );
    for d in s.connect_latency.iter().take(5) {
        let _ = writeln!(
            o,
            "    -> {:<24} {} connects, p50 {}, p99 {}, max {}; {} took a second or more",
            d.remote.to_string(),
            d.connects,
            human_ns(d.p50_ns),
            human_ns(d.p99_ns),
            human_ns(d.max_ns),
            d.slow
        );
    }
}

/// Section 4: finished connections, from their close summaries.
fn connections_text(o: &mut String, s: Option<&TcpSnapshot>, t: &dyn Fn(u64) -> String) {
    let _ = writeln!(o, "\n4. CONNECTIONS");
    let Some(s) = s.filter(|s| s.closed > 0) else {
        let _ = writeln!(
            o,
            "  No connection summaries recorded (recordings keep them with --events ...,close, the default)."
        );
        return;
    };
    let dur = |c: &Closed| c.duration_ns.map_or("?".to_string(), human_ns);
    let line = |c: &Closed| {
        format!(
            "{}  pid {:<7} {:<16} {} -> {}  {} tx {} rx {} retrans {} rtt {} closed by {}",
            t(c.ts_ns),
            c.pid,
            c.comm,
            c.local,
            c.remote,
            dur(c),
            human_bytes(c.bytes_acked),
            human_bytes(c.bytes_received),
            c.total_retrans,
            human_us(c.srtt_us),
            c.closed_by,
        )
    };
    let _ = writeln!(o, "  Connections closed with a summary: {}", s.closed);
    for (title, list) in [
        ("Heaviest (bytes acked + received)", &s.heaviest),
        ("Longest-lived", &s.longest),
        ("Slowest (smoothed RTT at close)", &s.slowest_rtt),
    ] {
        if list.is_empty() {
            continue;
        }
        let _ = writeln!(o, "  {title}:");
        for c in list.iter().take(5) {
            let _ = writeln!(o, "    {}", line(c));
        }
    }
    if !s.close_rtt.is_empty() {
        let _ = writeln!(
            o,
            "  RTT by destination (median smoothed RTT at close), highest first:"
        );
        for d in s.close_rtt.iter().take(5) {
            let _ = writeln!(
                o,
                "    {:<28} {} closed, rtt p50 {} max {}, tx {} rx {}, retrans {}",
                d.remote.to_string(),
                d.closed,
                human_us(d.rtt_p50_us),
                human_us(d.rtt_max_us),
                human_bytes(d.bytes_acked),
                human_bytes(d.bytes_received),
                d.retrans,
            );
        }
    }
}

/// The packets the kernel dropped (by its reasons): for which process and
/// remote end, and with no socket, host-wide.
fn kernel_drops_text(o: &mut String, s: &TcpSnapshot) {
    let owned: u64 = s.socket_drops.iter().map(|d| d.count).sum();
    let unowned: u64 = s.unowned_drops.iter().map(|d| d.count).sum();
    if owned == 0 && unowned == 0 {
        return;
    }
    let _ = writeln!(
        o,
        "  Kernel drops: {owned} packets dropped for TCP sockets, {unowned} TCP packets with no socket"
    );
    let mut rows: Vec<_> = s.socket_drops.iter().collect();
    rows.sort_by_key(|b| std::cmp::Reverse(b.count));
    for d in rows.iter().take(5) {
        let _ = writeln!(
            o,
            "    pid {:<7} {:<16} from {:<24} {:<24} {}",
            d.pid.map_or("-".to_string(), |p| p.to_string()),
            d.comm.as_deref().unwrap_or("-"),
            d.remote.to_string(),
            d.reason,
            d.count
        );
    }
    let mut rows: Vec<_> = s.unowned_drops.iter().collect();
    rows.sort_by_key(|b| std::cmp::Reverse(b.count));
    for d in rows.iter().take(5) {
        let _ = writeln!(o, "    no socket {:<38} {:<24} {}", "", d.reason, d.count);
    }
}

/// The width of the terminal on standard output, if it is one.
pub fn terminal_width() -> Option<usize> {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() {
        return None;
    }
    terminal_size::terminal_size_of(std::io::stdout()).map(|(w, _)| usize::from(w.0))
}

/// The narrowest wrapping that still leaves room for words.
const MIN_WIDTH: usize = 20;

/// `text` with every line longer than `width` columns wrapped at spaces
/// (a word longer than a line is split, never cut), the continuation lines
/// indented two columns under their first. `width` 0: unchanged.
pub fn wrap(text: &str, width: usize) -> String {
    if width == 0 {
        return text.to_string();
    }
    let width = width.max(MIN_WIDTH);
    let mut o = String::with_capacity(text.len() + text.len() / 16);
    for line in text.split_inclusive('\n') {
        let (body, nl) = match line.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (line, ""),
        };
        if textwrap::core::display_width(body) <= width {
            o.push_str(line);
            continue;
        }
        let trimmed = body.trim_start();
        let indent = &body[..body.len() - trimmed.len()];
        // Past half the width, an indent would leave too little room.
        let indent = if indent.len() * 2 > width { "" } else { indent };
        let more = format!("{indent}  ");
        let opts = textwrap::Options::new(width)
            .initial_indent(indent)
            .subsequent_indent(&more)
            .word_separator(textwrap::WordSeparator::AsciiSpace)
            // Options such as --stall-threshold stay whole.
            .word_splitter(textwrap::WordSplitter::NoHyphenation)
            .wrap_algorithm(textwrap::WrapAlgorithm::FirstFit)
            .break_words(true);
        let lines = textwrap::wrap(trimmed.trim_end(), &opts);
        o.push_str(&lines.join("\n"));
        o.push_str(nl);
    }
    o
}

/// The memory block: time stalled in reclaim and compaction, pages
/// scanned and reclaimed, swap and major faults; the processes and memory
/// cgroups that stalled most; the longest memory stalls.
fn saturation_memory(o: &mut String, r: &Review, t: &dyn Fn(u64) -> String) {
    let m = &r.mem;
    if m.frames == 0 {
        let _ = writeln!(
            o,
            "  No memory stalls recorded (recordings of diag record --events ...,memstall and serve --record have them)."
        );
        return;
    }
    let f = &m.total;
    let b = &m.background;
    let _ = writeln!(
        o,
        "  Memory stalls over {:.0}s: {} in {} episodes (direct reclaim {} in {}, memory cgroup reclaim {} in {}, compaction {} in {}; throttled {} times, {}); {} pages scanned, {} reclaimed in them",
        m.covered_ns as f64 / 1e9,
        human_ns(f.stall_ns),
        f.episodes(),
        human_ns(f.direct_ns),
        f.direct_count,
        human_ns(f.memcg_ns),
        f.memcg_count,
        human_ns(f.compact_ns),
        f.compact_count,
        f.throttle_count,
        human_ns(f.throttle_ns),
        f.scanned,
        f.reclaimed,
    );
    let v = &m.vmstat;
    let _ = writeln!(
        o,
        "  Kernel threads (kswapd, kcompactd): {} pages scanned, {} reclaimed; swapped in {} pages, out {}; major faults {} (vmstat: pgscan {}, pgsteal {}, allocstall {}, pswpin {}, pswpout {}, pgmajfault {})",
        b.scanned,
        b.reclaimed,
        f.swapin_pages + b.swapin_pages,
        f.swapout_pages + b.swapout_pages,
        m.majflt,
        v.pgscan,
        v.pgsteal,
        v.allocstall,
        v.pswpin,
        v.pswpout,
        v.pgmajfault,
    );
    let top = m.top_procs(5);
    if !top.is_empty() {
        let _ = writeln!(o, "  Processes stalled longest in memory:");
        for (pid, comm, f, majflt) in top {
            let _ = writeln!(
                o,
                "    pid {pid:<7} {comm:<16} {} in {} episodes, {} swap-ins ({} of I/O), {} major faults",
                human_ns(f.stall_ns),
                f.episodes(),
                f.swapin_pages,
                human_ns(f.swapin_ns),
                majflt
            );
        }
    }
    let cgs = m.top_cgroups(5);
    if !cgs.is_empty() {
        let _ = writeln!(o, "  Memory cgroups stalled longest:");
        for (cg, f) in cgs {
            let _ = writeln!(
                o,
                "    {cg}  {} in {} episodes ({} forced by a limit), {} pages reclaimed, {} swap-ins",
                human_ns(f.stall_ns),
                f.episodes(),
                f.memcg_count,
                f.reclaimed,
                f.swapin_pages
            );
        }
    }
    if !r.mem_stalls.is_empty() {
        let comm = crate::text::comm;
        let _ = writeln!(
            o,
            "  Memory stalls over the threshold: {}; the longest:",
            r.mem_stalls.len()
        );
        let mut worst: Vec<_> = r.mem_stalls.iter().collect();
        worst.sort_by_key(|s| std::cmp::Reverse(s.dur_ns));
        for s in worst.iter().take(5) {
            let _ = writeln!(
                o,
                "    {}  pid {} ({}) {} {}{}",
                t(s.header.ts_ns),
                s.header.tgid,
                comm(&s.header.comm),
                diag_common::memory::stall_kind::name(s.kind),
                human_ns(s.dur_ns),
                if s.limit_ino != 0 {
                    format!(", memory cgroup ino {} at its limit", s.limit_ino)
                } else {
                    String::new()
                }
            );
        }
    }
}

/// The PSI block: the host's stall time per resource, the peak avg10s,
/// the cgroups that stalled most.
/// Block I/O in the USE order, per device: utilization (%util),
/// saturation (queue depth, await), errors; then who did the I/O, and
/// the slowest requests.
fn block_use(o: &mut String, b: &crate::aggregate::block::BlockSummary, t: &dyn Fn(u64) -> String) {
    if b.frames == 0 {
        let _ = writeln!(
            o,
            "  No block I/O recorded (record with --events io: diag record --events tcp,drop,oom,io)."
        );
        return;
    }
    let span = b.span_ns.max(1);
    let _ = writeln!(
        o,
        "  Block I/O over {:.0}s (requests from the block layer's start to their completion), per device:",
        span as f64 / 1e9
    );
    let mut devs: Vec<&crate::aggregate::block::DevSummary> = b.devices.iter().collect();
    devs.sort_by(|a, b| b.busy_ns.cmp(&a.busy_ns).then(a.dev.cmp(&b.dev)));
    for d in devs.iter().take(10) {
        let label = if d.name.is_empty() { &d.dev } else { &d.name };
        let secs = span as f64 / 1e9;
        let _ = writeln!(
            o,
            "    {label:<10} utilization {:.1} % (peak {:.1} % at {}); saturation: queue depth {:.2} (peak {:.2}, {} in flight at most), await {}; errors {}",
            d.busy_ns as f64 * 100.0 / span as f64,
            d.peak_util_pct.min(100.0),
            t(d.peak_util_ts),
            d.io.lat_ns() as f64 / span as f64,
            d.peak_depth,
            d.max_inflight,
            d.io.await_ns().map(human_ns).unwrap_or_else(|| "-".into()),
            d.io.errors
        );
        let _ = writeln!(
            o,
            "               {} reads ({:.1}/s, {} KiB), {} writes ({:.1}/s, {} KiB), {} discards, {} flushes",
            d.io.reads,
            d.io.reads as f64 / secs,
            d.io.read_bytes / 1024,
            d.io.writes,
            d.io.writes as f64 / secs,
            d.io.write_bytes / 1024,
            d.io.discards,
            d.io.flushes
        );
    }
    let procs = b.sorted_procs();
    if !procs.is_empty() {
        let _ = writeln!(
            o,
            "  Who did the I/O (by bytes; [kernel threads] do writeback and I/O on behalf of others):"
        );
        for p in procs.iter().take(5) {
            let comm = if p.kthread {
                format!("[{}]", p.comm)
            } else {
                p.comm.clone()
            };
            let _ = writeln!(
                o,
                "    pid {:<7} {:<18} read {} KiB in {}, wrote {} KiB in {}; I/O wait {}",
                p.pid,
                comm,
                p.io.read_bytes / 1024,
                p.io.reads,
                p.io.write_bytes / 1024,
                p.io.writes,
                human_ns(p.io.lat_ns())
            );
        }
    }
    if b.slow_seen > 0 {
        let _ = writeln!(
            o,
            "  Slow requests (over --io-threshold): {}; the slowest:",
            b.slow_seen
        );
        for e in b.slow.iter().take(5) {
            let (maj, min) = diag_common::block::dev_parts(e.dev);
            let _ = writeln!(
                o,
                "    {}  pid {} ({}) {} {} B on {maj}:{min} took {}",
                t(e.header.ts_ns),
                e.header.tgid,
                crate::text::comm(&e.header.comm),
                crate::aggregate::block::op_name(e.op),
                e.bytes,
                human_ns(e.lat_ns)
            );
        }
    }
    let l = &b.lost;
    if l.lost() > 0 {
        let _ = writeln!(
            o,
            "  INCOMPLETE block I/O: {} requests not noted (map full), {} not charged to a process, {} devices not tracked, {} slow-I/O events lost",
            l.req_map_full, l.proc_map_full, l.dev_map_full, l.ringbuf_full
        );
    }
}

fn saturation_psi(
    o: &mut String,
    p: &crate::aggregate::pressure::PressureSummary,
    t: &dyn Fn(u64) -> String,
) {
    use crate::aggregate::pressure::RESOURCES;
    let secs = |us: u64| format!("{:.2}s", us as f64 / 1e6);
    if p.frames == 0 {
        let _ = writeln!(
            o,
            "  No pressure (PSI) recorded (recordings of diag record and serve --record have it)."
        );
        return;
    }
    let _ = writeln!(
        o,
        "  Pressure (PSI, the kernel's stall accounting) over {:.0}s, host stall time:",
        p.covered_ns as f64 / 1e9
    );
    for r in RESOURCES {
        let part = |k: &'static str| {
            let Some(us) = p.host_stall_us.get(&(r, k)) else {
                return format!("{k} -");
            };
            let peak = match p.peak_avg10.get(&(r, k)) {
                Some((a, ts)) if *a > 0.0 => format!(" (avg10 peak {a:.2}% at {})", t(*ts)),
                _ => " (avg10 peak none)".to_string(),
            };
            format!("{k} {}{peak}", secs(*us))
        };
        let _ = writeln!(o, "    {r:<7} {}; {}", part("some"), part("full"));
    }
    let top = p.top_cgroups(5);
    if top.is_empty() {
        let _ = writeln!(o, "  No cgroup stalled.");
    } else {
        let _ = writeln!(
            o,
            "  Cgroups with the most stall time (some: cpu / memory / io):"
        );
        for (cg, s) in top {
            let _ = writeln!(
                o,
                "    {cg}  {} / {} / {}",
                secs(s[0]),
                secs(s[1]),
                secs(s[2])
            );
        }
    }
    let others: u64 = p.others_us.iter().sum();
    if others > 0 || p.cgroups_left_off > 0 {
        let _ = writeln!(
            o,
            "    other cgroups (beyond the 50 named each second): {} in all",
            secs(others)
        );
    }
    if p.skipped > 0 {
        let _ = writeln!(
            o,
            "  {} pressure file readings could not be read or parsed and were skipped.",
            p.skipped
        );
    }
}
