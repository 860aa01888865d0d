//! Drawing `diag top`: pure functions of [`TopState`] — a ratatui frame
//! for the terminal, plain text and JSON for batch mode.

use std::fmt::Write as _;

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Clear, Paragraph, Row as TRow, Table, TableState, Wrap},
};
use serde::Serialize;

use super::state::{Model, Notable, Row, SortKey, TopState};
use crate::view::fmt::{human_kb, human_ns};

/// A rate per second in few characters: 0, 3.5, 120, 12k.
pub fn rate(v: f64) -> String {
    if v <= 0.0 {
        "0".into()
    } else if v < 10.0 {
        format!("{v:.1}")
    } else if v < 10_000.0 {
        format!("{v:.0}")
    } else {
        format!("{:.0}k", v / 1000.0)
    }
}

fn count(v: u64) -> String {
    if v < 100_000 {
        v.to_string()
    } else {
        format!("{}k", v / 1000)
    }
}

/// A table column.
#[derive(Debug, Clone, Copy)]
pub struct Col {
    pub title: &'static str,
    pub width: u16,
    pub right: bool,
    pub sort: Option<SortKey>,
    pub sched: bool,
    /// Shown when there is room to spare (block I/O).
    pub io: bool,
    /// A memory column (reclaim stalls, swap-ins): shown after the
    /// scheduler ones, with room to spare.
    pub mem: bool,
}

const fn col(title: &'static str, width: u16, right: bool, sort: Option<SortKey>) -> Col {
    Col {
        title,
        width,
        right,
        sort,
        sched: false,
        io: false,
        mem: false,
    }
}

/// Every column, in order; CGROUP last (it takes what is left).
pub const COLUMNS: [Col; 19] = [
    col("PID", 7, false, Some(SortKey::Pid)),
    col("COMM", 13, false, Some(SortKey::Comm)),
    col("CPU%", 5, true, Some(SortKey::Cpu)),
    col("OPN/s", 5, true, Some(SortKey::Opens)),
    col("CLS/s", 5, true, Some(SortKey::Closes)),
    col("ESTAB", 5, true, Some(SortKey::Estab)),
    col("TW", 5, true, Some(SortKey::TimeWait)),
    col("CW", 4, true, Some(SortKey::CloseWait)),
    col("RST", 4, true, Some(SortKey::Resets)),
    col("RETX", 4, true, Some(SortKey::Retrans)),
    col("OOM", 3, true, Some(SortKey::Oom)),
    Col {
        sched: true,
        ..col("RQ-p99", 7, true, Some(SortKey::RunqP99))
    },
    Col {
        sched: true,
        ..col("WAIT%", 5, true, Some(SortKey::WaitPct))
    },
    Col {
        sched: true,
        ..col("BLOCKED", 7, true, Some(SortKey::Blocked))
    },
    // Memory stalls (reclaim, compaction) and pages swapped in, last
    // interval: shown with the scheduler columns when they fit.
    Col {
        mem: true,
        ..col("MEM", 7, true, None)
    },
    Col {
        mem: true,
        ..col("SWPIN", 5, true, None)
    },
    Col {
        io: true,
        ..col("IO", 7, true, None)
    },
    // Only with `top --locks` (see fit_columns_with).
    col("LOCK", 7, true, None),
    col("CGROUP", 6, false, None),
];

const CGROUP: usize = COLUMNS.len() - 1;
/// The LOCK column (`top --locks`).
const LOCK: usize = COLUMNS.len() - 2;

/// The text of one cell.
pub fn cell(i: usize, r: &Row) -> String {
    let t = r.tcp;
    let s = r.sched;
    let dash = || "-".to_string();
    match i {
        0 => r.pid.to_string(),
        1 => r.comm.clone(),
        2 => r.cpu_pct.map_or_else(dash, |c| format!("{c:.1}")),
        3 => t.map_or_else(dash, |t| rate(t.opens_per_s)),
        4 => t.map_or_else(dash, |t| rate(t.closes_per_s)),
        5 => t.map_or_else(dash, |t| count(t.established)),
        6 => t.map_or_else(dash, |t| count(t.time_wait)),
        7 => t.map_or_else(dash, |t| {
            if t.leaks > 0 {
                format!("{}!", count(t.close_wait))
            } else {
                count(t.close_wait)
            }
        }),
        8 => t.map_or_else(dash, |t| count(t.resets)),
        9 => t.map_or_else(dash, |t| count(t.retransmits)),
        10 => {
            if r.oom_kills > 0 {
                r.oom_kills.to_string()
            } else {
                dash()
            }
        }
        11 => s.map_or_else(dash, |s| human_ns(s.runq_p99_ns)),
        12 => s.map_or_else(dash, |s| format!("{:.1}", s.wait_pct)),
        13 => s.map_or_else(dash, |s| human_ns(s.blocked_ns)),
        14 => r
            .mem
            .filter(|m| m.stall_ns > 0)
            .map_or_else(dash, |m| human_ns(m.stall_ns)),
        15 => r
            .mem
            .filter(|m| m.swapin_pages > 0)
            .map_or_else(dash, |m| count(m.swapin_pages)),
        16 => r
            .io_ns
            .map_or_else(dash, |n| if n == 0 { dash() } else { human_ns(n) }),
        17 => r.lock_ns.map_or_else(dash, human_ns),
        _ => r.cgroup.clone().unwrap_or_else(dash),
    }
}

/// The columns that fit in `width`: all but the scheduler ones and CGROUP
/// always; then the scheduler columns when they fit (first when some row
/// has scheduler numbers); CGROUP with what is left.
pub fn fit_columns(width: u16, any_sched: bool) -> Vec<usize> {
    fit_columns_with(width, any_sched, false)
}

/// [`fit_columns`], with the LOCK column when some row has lock numbers.
pub fn fit_columns_with(width: u16, any_sched: bool, any_lock: bool) -> Vec<usize> {
    let base: Vec<usize> = (0..CGROUP)
        .filter(|&i| {
            !COLUMNS[i].sched && !COLUMNS[i].io && !COLUMNS[i].mem && (i != LOCK || any_lock)
        })
        .collect();
    let used = |cols: &[usize]| -> u16 { cols.iter().map(|&i| COLUMNS[i].width + 1).sum() };
    let mut cols = base;
    let sched: Vec<usize> = (0..CGROUP).filter(|&i| COLUMNS[i].sched).collect();
    let sched_w: u16 = sched.iter().map(|&i| COLUMNS[i].width + 1).sum();
    let cg_min = COLUMNS[CGROUP].width + 4;
    let room = width.saturating_sub(used(&cols));
    if room >= sched_w + if any_sched { 0 } else { cg_min } {
        cols.extend(&sched);
    }
    // Memory and block I/O only with room to spare: CGROUP keeps its
    // width.
    for i in (0..CGROUP).filter(|&i| COLUMNS[i].io || COLUMNS[i].mem) {
        if width.saturating_sub(used(&cols)) >= COLUMNS[i].width + 1 + cg_min {
            cols.push(i);
        }
    }
    // In the table's order (LOCK, in the base set, after the others).
    cols.sort_unstable();
    if width.saturating_sub(used(&cols)) >= COLUMNS[CGROUP].width {
        cols.push(CGROUP);
    }
    cols
}

/// The last `max` characters of a path, marked when cut.
fn tail_of(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max || max < 2 {
        return s.to_string();
    }
    let keep: String = s.chars().skip(n - (max - 1)).collect();
    format!("…{keep}")
}

/// The header lines (shared by the terminal and text output).
pub fn header_lines(st: &TopState) -> Vec<String> {
    let m = &st.model;
    let mut v = Vec::new();
    let when = if m.ts_ns == 0 {
        "--:--:--".to_string()
    } else {
        st.clock.wall(m.ts_ns).format("%H:%M:%S").to_string()
    };
    let every = format!("{:.3}", st.config.interval_ns as f64 / 1e9);
    let every = every.trim_end_matches('0').trim_end_matches('.');
    let mut l1 = format!("diag top {when} every {every}s");
    match &m.host {
        Some(h) => {
            if let Some(l) = h.loadavg {
                let _ = write!(l1, "  load {:.2} {:.2} {:.2}", l.one, l.five, l.fifteen);
            }
            let _ = write!(l1, "  tasks run {} blocked {}", h.running, h.blocked);
        }
        None if st.host_known => l1.push_str("  (first sample in one interval)"),
        None => l1.push_str("  host: not recorded"),
    }
    if st.ui.paused {
        l1.push_str("  PAUSED");
    }
    v.push(l1);
    if let Some(h) = &m.host {
        let used = h.mem_total_kb.saturating_sub(h.mem_available_kb);
        let mem_pct = if h.mem_total_kb > 0 {
            used as f64 * 100.0 / h.mem_total_kb as f64
        } else {
            0.0
        };
        let swap = if h.swap_total_kb == 0 {
            "swap none".to_string()
        } else {
            format!(
                "swap {:.0}% in {} out {} pg/s",
                h.swap_used_kb as f64 * 100.0 / h.swap_total_kb as f64,
                rate(h.swap_in_per_s),
                rate(h.swap_out_per_s)
            )
        };
        v.push(format!(
            "CPU {} us {:.0} sy {:.0} io {:.0} st {:.0} ({} cpus)  MEM {:.0}% of {}  {swap}",
            h.cpu_pct.map_or("-".into(), |c| format!("{c:.1}%")),
            h.user_pct,
            h.system_pct,
            h.iowait_pct,
            h.steal_pct,
            h.cpus,
            mem_pct,
            human_kb(h.mem_total_kb),
        ));
    }
    if let Some(p) = &st.pressure {
        v.push(pressure_header(&p.host));
    }
    let t = &m.tcp;
    v.push(format!(
        "TCP open {}/s close {}/s  ESTAB {} TW {} CW {}  RST {}/s RETX {}/s",
        rate(t.opens_per_s),
        rate(t.closes_per_s),
        t.established,
        t.time_wait,
        t.close_wait,
        rate(t.resets_per_s),
        rate(t.retransmits_per_s),
    ));
    let ports = match &t.worst_pressure {
        Some(p) => format!(
            "ports {:.0}% used{} to {}",
            p.ratio * 100.0,
            if p.warning { " (WARNING)" } else { "" },
            p.destination.remote
        ),
        None => "ports -".into(),
    };
    v.push(format!("OOM kills {}  {ports}", m.oom_kills));
    let d = &m.diag;
    let mut bpf = match d.bpf_cpu_pct {
        Some(p) => format!("  bpf {p:.2}% cpu"),
        None if st.host_known => "  bpf cpu -".to_string(),
        None => String::new(),
    };
    if let Some(p) = d.self_cpu_pct {
        let _ = write!(bpf, ", user {p:.1}%");
    }
    let owners = if d.owners_fixed > 0 {
        format!("  owners fixed {}", d.owners_fixed)
    } else {
        String::new()
    };
    v.push(format!(
        "diag: {} ev/s dropped {} map-full {}{owners}{bpf}",
        rate(d.events_per_s),
        d.dropped,
        d.map_full,
    ));
    v
}

/// The host's PSI line: avg10 of some and full per resource, %.
fn pressure_header(p: &crate::aggregate::pressure::Pressures) -> String {
    let avg = |f: &Option<crate::aggregate::pressure::PsiFig>| {
        f.map_or("-".to_string(), |f| format!("{:.2}", f.avg10))
    };
    format!(
        "PSI avg10 some/full %  cpu {}/{}  mem {}/{}  io {}/{}",
        avg(&p.cpu.some),
        avg(&p.cpu.full),
        avg(&p.memory.some),
        avg(&p.memory.full),
        avg(&p.io.some),
        avg(&p.io.full)
    )
}

/// A cgroup's PSI for the details: avg10 and the stall time of the
/// interval per resource.
fn pressure_detail(cgroup: &str, p: &crate::aggregate::pressure::Pressures) -> String {
    let mut s = format!("Pressure of cgroup {cgroup} (avg10 some/full, stalled in the interval):");
    for (i, r) in crate::aggregate::pressure::RESOURCES.iter().enumerate() {
        let x = p.get(i);
        let avg = |f: &Option<crate::aggregate::pressure::PsiFig>| {
            f.map_or("-".to_string(), |f| format!("{:.2}%", f.avg10))
        };
        let stalled = x.some.map_or("-".to_string(), |f| {
            human_ns(f.stall_us.saturating_mul(1000))
        });
        let _ = write!(s, "  {r} {}/{} {stalled}", avg(&x.some), avg(&x.full));
    }
    s
}

fn notable_line(st: &TopState, e: &Notable) -> String {
    format!(
        "{} {:<6} {}",
        st.clock.wall(e.ts_ns).format("%H:%M:%S"),
        e.kind.label(),
        e.text
    )
}

fn cell_style(i: usize, r: &Row) -> Style {
    match i {
        7 if r.tcp.is_some_and(|t| t.leaks > 0) => {
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
        }
        10 if r.oom_kills > 0 => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        2 if r.cpu_pct.is_some_and(|c| c >= 80.0) => Style::new().fg(Color::Yellow),
        _ => Style::new(),
    }
}

/// Draw the whole screen.
pub fn draw(f: &mut Frame, st: &TopState) {
    let area = f.area();
    let header = header_lines(st);
    let header_h = (header.len() as u16).min(area.height);
    // The PSI header line takes its row from the event pane, so the
    // table and the details keep theirs on an 80x24 screen.
    let events_h = if area.height >= 20 {
        6 - u16::from(st.pressure.is_some())
    } else if area.height >= 14 {
        3
    } else {
        0
    };
    let footer_h = u16::from(area.height > header_h + 2);
    let [head, body, events, footer] = Layout::vertical([
        Constraint::Length(header_h),
        Constraint::Min(1),
        Constraint::Length(events_h),
        Constraint::Length(footer_h),
    ])
    .areas(area);
    let head_lines: Vec<Line> = header
        .into_iter()
        .map(|l| {
            let warn = (l.starts_with("OOM") && !l.starts_with("OOM kills 0 "))
                || l.contains("(WARNING)")
                || (l.starts_with("diag:") && !l.contains("dropped 0 map-full 0"));
            let style = if warn {
                Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD)
            } else {
                Style::new()
            };
            Line::styled(l, style)
        })
        .collect();
    f.render_widget(Paragraph::new(head_lines), head);
    match st.ui.detail {
        Some(pid) => draw_detail(f, body, st, pid),
        None => draw_table(f, body, st),
    }
    if events_h > 0 {
        let lines: Vec<Line> = st
            .events
            .iter()
            .take(events_h.saturating_sub(1) as usize)
            .map(|e| {
                let style = match e.kind {
                    super::state::NotableKind::OomKill => Style::new().fg(Color::Red),
                    super::state::NotableKind::Drops => Style::new().fg(Color::Yellow),
                    _ => Style::new(),
                };
                Line::styled(notable_line(st, e), style)
            })
            .collect();
        let lines = if lines.is_empty() {
            vec![Line::from("(nothing notable yet)")]
        } else {
            lines
        };
        f.render_widget(
            Paragraph::new(lines).block(
                Block::new()
                    .borders(Borders::TOP)
                    .title(" events, newest first "),
            ),
            events,
        );
    }
    if footer_h > 0 {
        let text = if st.ui.editing_filter {
            format!(
                "filter (name or pid, Enter keeps, Esc clears): {}_",
                st.ui.filter
            )
        } else {
            let mut s = String::new();
            if !st.ui.filter.is_empty() {
                let _ = write!(s, "filter '{}'  ", st.ui.filter);
            }
            let _ = write!(
                s,
                "sort {}{} | q quit ? help / filter p pause Enter details < > sort",
                st.ui.sort.name(),
                if st.ui.reverse { " (inverted)" } else { "" }
            );
            s
        };
        f.render_widget(
            Paragraph::new(Line::styled(
                text,
                Style::new().add_modifier(Modifier::REVERSED),
            )),
            footer,
        );
    }
    if st.ui.help {
        draw_help(f, area);
    }
}

fn draw_table(f: &mut Frame, area: Rect, st: &TopState) {
    let rows = st.visible_rows();
    let any_sched = rows.iter().any(|r| r.sched.is_some());
    let any_lock = rows.iter().any(|r| r.lock_ns.is_some());
    let cols = fit_columns_with(area.width, any_sched, any_lock);
    let fixed: u16 = cols
        .iter()
        .filter(|&&i| i != CGROUP)
        .map(|&i| COLUMNS[i].width + 1)
        .sum();
    let cg_w = area.width.saturating_sub(fixed) as usize;
    let widths: Vec<Constraint> = cols
        .iter()
        .map(|&i| {
            if i == CGROUP {
                Constraint::Min(COLUMNS[i].width)
            } else {
                Constraint::Length(COLUMNS[i].width)
            }
        })
        .collect();
    let header = TRow::new(cols.iter().map(|&i| {
        let c = COLUMNS[i];
        let title = if c.sort == Some(st.ui.sort) {
            format!("{}{}", c.title, if st.ui.reverse { "^" } else { "v" })
        } else {
            c.title.to_string()
        };
        let text = if c.right {
            format!("{title:>w$}", w = c.width as usize)
        } else {
            title
        };
        let style = if c.sort == Some(st.ui.sort) {
            Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED)
        } else {
            Style::new().add_modifier(Modifier::BOLD)
        };
        Cell::from(text).style(style)
    }));
    let body: Vec<TRow> = rows
        .iter()
        .map(|r| {
            TRow::new(cols.iter().map(|&i| {
                let c = COLUMNS[i];
                let mut text = cell(i, r);
                if i == CGROUP {
                    text = tail_of(&text, cg_w);
                } else if i == 1 && !r.alive {
                    let keep = (c.width as usize).saturating_sub(2);
                    text = format!("[{}]", text.chars().take(keep).collect::<String>());
                }
                let text = if c.right {
                    format!("{text:>w$}", w = c.width as usize)
                } else {
                    text
                };
                Cell::from(text).style(cell_style(i, r))
            }))
        })
        .collect();
    let empty = body.is_empty();
    let table = Table::new(body, widths)
        .header(header)
        .column_spacing(1)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let mut ts = TableState::default();
    if !empty {
        ts.select(Some(st.ui.cursor.min(rows.len() - 1)));
    }
    f.render_stateful_widget(table, area, &mut ts);
    if empty && area.height > 1 {
        let msg = if st.ui.filter.is_empty() {
            "(no processes yet: the first numbers come after one interval)"
        } else {
            "(no process matches the filter; Esc clears it)"
        };
        f.render_widget(
            Paragraph::new(msg),
            Rect {
                y: area.y + 1,
                height: 1,
                ..area
            },
        );
    }
}

/// The detail lines of one process (shared with text output).
/// "Why is this process slow": where its threads' time went in the last
/// interval (summed over threads), from each family that is attached:
/// waiting for a CPU (scheduler), memory reclaim and compaction and
/// swap-in I/O (memory), block I/O (block), futex waits (`--locks`), and
/// the rest of its uninterruptible (D) time. The parts overlap in places
/// (reclaim runs on the CPU or sleeps in D; a swap-in is D time; a block
/// request can be in flight while the thread runs), so "other D" is what D
/// time is left after I/O and swap-ins, never below 0. None when no
/// family has a figure for the process.
pub fn why_slow(
    interval_ns: u64,
    sched: Option<super::state::SchedCols>,
    mem: Option<super::state::MemCols>,
    io_ns: Option<u64>,
    lock_ns: Option<u64>,
) -> Option<String> {
    let mut parts: Vec<(&str, u64)> = Vec::new();
    if let Some(s) = sched {
        let wait = (s.wait_pct / 100.0 * interval_ns as f64).round().max(0.0) as u64;
        parts.push(("waiting for a CPU", wait));
    }
    if let Some(m) = mem {
        parts.push(("memory reclaim/compaction", m.stall_ns));
        parts.push(("swap-in I/O", m.swapin_ns));
    }
    if let Some(io) = io_ns {
        parts.push(("disk I/O", io));
    }
    if let Some(l) = lock_ns {
        parts.push(("futex waits", l));
    }
    if let Some(s) = sched {
        let io = io_ns.unwrap_or(0) + mem.map_or(0, |m| m.swapin_ns);
        parts.push(("other D (blocked)", s.blocked_ns.saturating_sub(io)));
    }
    if parts.is_empty() {
        return None;
    }
    let worst = parts
        .iter()
        .filter(|(_, ns)| *ns > 0)
        .max_by_key(|(_, ns)| *ns)
        .map(|(what, _)| *what);
    let list: Vec<String> = parts
        .iter()
        .map(|(what, ns)| format!("{what} {}", human_ns(*ns)))
        .collect();
    Some(format!(
        "Why slow (last {}, summed over threads): {}{}",
        human_ns(interval_ns),
        list.join(" · "),
        worst
            .map(|w| format!("  => mostly {w}"))
            .unwrap_or_default()
    ))
}

pub fn detail_lines(st: &TopState, pid: u32) -> Vec<String> {
    let mut v = Vec::new();
    let row = st.detail_row();
    match row {
        Some(r) => {
            let container = r
                .cgroup
                .as_deref()
                .and_then(crate::enrich::container_id)
                .map(|id| format!("  container {id}"))
                .unwrap_or_default();
            v.push(format!(
                "pid {} ({}){}  cgroup {}{container}  CPU {}",
                r.pid,
                r.comm,
                if r.alive { "" } else { " [gone]" },
                r.cgroup.as_deref().unwrap_or("-"),
                r.cpu_pct.map_or("-".into(), |c| format!("{c:.1}%")),
            ));
            match r.tcp {
                Some(t) => v.push(format!(
                    "TCP opens {}/s closes {}/s  ESTAB {} TIME_WAIT {} CLOSE_WAIT {} (leaked {})  resets {} ({}/s)  retransmits {} ({}/s)  failed connects {} ({}/s)",
                    rate(t.opens_per_s),
                    rate(t.closes_per_s),
                    t.established,
                    t.time_wait,
                    t.close_wait,
                    t.leaks,
                    t.resets,
                    rate(t.resets_per_s),
                    t.retransmits,
                    rate(t.retransmits_per_s),
                    t.failed_connects,
                    rate(t.failed_connects_per_s)
                )),
                None => v.push("TCP: no activity seen".into()),
            }
            if let Some(t) = r
                .tcp
                .filter(|t| t.kernel_drops > 0 || t.bytes_acked + t.bytes_received > 0)
            {
                v.push(format!(
                    "Kernel drops {} (reasons in diag conns and the hints)  closed connections tx {} rx {}",
                    t.kernel_drops,
                    crate::view::fmt::human_bytes(t.bytes_acked),
                    crate::view::fmt::human_bytes(t.bytes_received)
                ));
            }
            if let Some(t) = r.tcp.filter(|t| {
                t.connects > 0 || t.listen_overflows > 0 || t.listen_queue_high.is_some()
            }) {
                let queue = t
                    .listen_queue_high
                    .map(|(q, b)| format!("  accept queue up to {q} of {b}"))
                    .unwrap_or_default();
                v.push(format!(
                    "Connect time ({} connects) p50 {} p99 {} max {}  listen overflows {} ({} in the interval){queue}",
                    t.connects,
                    human_ns(t.connect_p50_ns),
                    human_ns(t.connect_p99_ns),
                    human_ns(t.connect_max_ns),
                    t.listen_overflows,
                    t.listen_overflows_interval
                ));
            }
            v.push(format!(
                "OOM kills {}  run queue p99 {}  waiting for CPU {}  blocked {}",
                r.oom_kills,
                r.sched.map_or("-".into(), |s| human_ns(s.runq_p99_ns)),
                r.sched
                    .map_or("-".into(), |s| format!("{:.1}%", s.wait_pct)),
                r.sched.map_or("-".into(), |s| human_ns(s.blocked_ns)),
            ));
            // Only with I/O in the interval: the details keep their rows
            // for the connections on a small screen.
            if let Some(io) = st.io.get(&r.pid).filter(|io| !io.is_zero()) {
                v.push(format!(
                    "Block I/O in the interval: {} reads ({}), {} writes ({}), I/O wait {} (await {}){}",
                    io.reads,
                    crate::view::fmt::human_bytes(io.read_bytes),
                    io.writes,
                    crate::view::fmt::human_bytes(io.write_bytes),
                    human_ns(io.lat_ns()),
                    io.await_ns().map(human_ns).unwrap_or_else(|| "-".into()),
                    if io.errors > 0 {
                        format!(", {} errors", io.errors)
                    } else {
                        String::new()
                    }
                ));
            }
            // Only with memory activity (the details keep their rows for
            // connections on 80x24).
            if let Some(m) = r
                .mem
                .filter(|m| m.stall_ns + m.swapin_pages + m.swapout_pages + m.majflt > 0)
            {
                v.push(format!(
                    "Memory reclaim / swap (last interval): stalled {} in {} episodes (direct reclaim {}, memcg reclaim {}, compaction {}), scanned {} reclaimed {} pages; swapped in {} pages ({} of I/O), out {}; major faults {}",
                    human_ns(m.stall_ns),
                    m.episodes,
                    human_ns(m.direct_ns),
                    human_ns(m.memcg_ns),
                    human_ns(m.compact_ns),
                    m.scanned,
                    m.reclaimed,
                    m.swapin_pages,
                    human_ns(m.swapin_ns),
                    m.swapout_pages,
                    m.majflt
                ));
            }
            if let (Some(frame), Some(cg)) = (&st.pressure, r.cgroup.as_deref()) {
                match frame.cgroup(cg) {
                    Some(p) => v.push(pressure_detail(cg, p)),
                    None if frame.others_count > 0 => v.push(format!(
                        "Pressure of cgroup {cg}: not among the {} that stalled most",
                        frame.cgroups.len()
                    )),
                    None => {}
                }
            }
        }
        None => v.push(format!("pid {pid}: no longer on screen")),
    }
    v.push(String::new());
    if st.detail_peers.is_empty() {
        v.push("Connections: none held now".into());
    } else {
        v.push(format!("Connections by peer ({}):", st.detail_peers.len()));
        v.push(format!(
            "  {:<34} {:>6} {:>6} {:>6} {:>6} {:>6}",
            "PEER", "ESTAB", "TW", "CW", "other", "total"
        ));
        for p in st.detail_peers.iter().take(50) {
            let peer = match (p.remote_port, p.local_port) {
                (Some(rp), _) => format!("-> {}", std::net::SocketAddr::new(p.remote_ip, rp)),
                (None, Some(lp)) => format!("<- {} to :{lp}", p.remote_ip),
                (None, None) => format!("{}", p.remote_ip),
            };
            let s = &p.states;
            let other = p.total - s.established - s.time_wait - s.close_wait;
            v.push(format!(
                "  {peer:<34} {:>6} {:>6} {:>6} {:>6} {:>6}",
                s.established, s.time_wait, s.close_wait, other, p.total
            ));
        }
    }
    // Why it is slow, after its connections (which come first on an
    // 80x24 screen).
    if let Some(why) =
        row.and_then(|r| why_slow(st.config.interval_ns, r.sched, r.mem, r.io_ns, r.lock_ns))
    {
        v.push(String::new());
        v.push(why);
    }
    let tag = format!("pid {pid} (");
    let hints: Vec<&String> = st
        .model
        .hints
        .iter()
        .filter(|h| h.starts_with(&tag))
        .collect();
    if !hints.is_empty() {
        v.push(String::new());
        v.push("Hints:".into());
        for h in hints {
            v.push(format!("  {h}"));
        }
    }
    v.push(String::new());
    let evs: Vec<&Notable> = st.events_of(pid).take(10).collect();
    if evs.is_empty() {
        v.push("Recent events: none".into());
    } else {
        v.push("Recent events:".into());
        for e in evs {
            v.push(format!("  {}", notable_line(st, e)));
        }
    }
    v.push(String::new());
    match st.runq_hist.get(&pid) {
        Some(h) if h.total() > 0 => {
            use diag_common::sched::{slot_high_ns, slot_low_ns};
            v.push(format!("Run-queue latency ({} samples):", h.total()));
            let max = h.counts.iter().copied().max().unwrap_or(1).max(1);
            for (i, &n) in h.counts.iter().enumerate().filter(|(_, n)| **n > 0) {
                let bar = "#".repeat(((n * 30).div_ceil(max)) as usize);
                v.push(format!(
                    "  {:>9} .. {:>9} {n:>8} {bar}",
                    human_ns(slot_low_ns(i)),
                    human_ns(slot_high_ns(i) - 1)
                ));
            }
        }
        _ => v.push("Run-queue latency: - (needs the scheduler probes)".into()),
    }
    v
}

fn draw_detail(f: &mut Frame, area: Rect, st: &TopState, pid: u32) {
    let lines: Vec<Line> = detail_lines(st, pid).into_iter().map(Line::from).collect();
    f.render_widget(
        Paragraph::new(lines).wrap(Wrap { trim: false }).block(
            Block::new()
                .borders(Borders::TOP)
                .title(format!(" process {pid} (Esc: back) ")),
        ),
        area,
    );
}

/// The help text.
pub fn help_lines() -> Vec<String> {
    let mut v = vec![
        "diag top: who is suffering, who is causing it".to_string(),
        String::new(),
        "q Ctrl-C   quit".into(),
        "? h        this help (any key closes it)".into(),
        "p space    pause / resume the screen".into(),
        "/          filter by name or pid (Enter keeps, Esc clears)".into(),
        "Up Down PgUp PgDn Home End   move".into(),
        "Enter      details of a process; Esc back".into(),
        "< >        sort by the previous / next column".into(),
        "i          invert the order".into(),
        String::new(),
        "Sort by:".into(),
    ];
    let keys: Vec<String> = SortKey::ALL
        .iter()
        .map(|s| format!("{} {}", s.key(), s.name()))
        .collect();
    for pair in keys.chunks(2) {
        v.push(format!(
            "  {:<30}{}",
            pair[0],
            pair.get(1).map(String::as_str).unwrap_or("")
        ));
    }
    v.push(String::new());
    v.push("CW! marks CLOSE_WAIT leaks; [name]: the process is gone".into());
    v
}

fn draw_help(f: &mut Frame, area: Rect) {
    let lines = help_lines();
    let w =
        (lines.iter().map(|l| l.chars().count()).max().unwrap_or(20) as u16 + 4).min(area.width);
    let h = (lines.len() as u16 + 2).min(area.height);
    let r = Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    };
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines.into_iter().map(Line::from).collect::<Vec<_>>()).block(
            Block::bordered().title(Span::styled(
                " help ",
                Style::new().add_modifier(Modifier::BOLD),
            )),
        ),
        r,
    );
}

/// One snapshot as plain text, like `top -b`: header, every row with every
/// column, the latest events.
pub fn render_text(st: &TopState) -> String {
    let mut o = String::new();
    for l in header_lines(st) {
        o.push_str(&l);
        o.push('\n');
    }
    o.push('\n');
    let line = |o: &mut String, cells: Vec<(String, &Col)>| {
        let mut s = String::new();
        for (i, (text, c)) in cells.iter().enumerate() {
            if i > 0 {
                s.push(' ');
            }
            if c.right {
                let _ = write!(s, "{text:>w$}", w = c.width as usize);
            } else if i + 1 == cells.len() {
                s.push_str(text);
            } else {
                let cut: String = text.chars().take(c.width as usize).collect();
                let _ = write!(s, "{cut:<w$}", w = c.width as usize);
            }
        }
        o.push_str(s.trim_end());
        o.push('\n');
    };
    line(
        &mut o,
        COLUMNS.iter().map(|c| (c.title.to_string(), c)).collect(),
    );
    for r in st.visible_rows() {
        line(
            &mut o,
            COLUMNS
                .iter()
                .enumerate()
                .map(|(i, c)| (cell(i, r), c))
                .collect(),
        );
    }
    if !st.events.is_empty() {
        o.push_str("\nEvents, newest first:\n");
        for e in st.events.iter().take(20) {
            o.push_str("  ");
            o.push_str(&notable_line(st, e));
            o.push('\n');
        }
    }
    if !st.model.hints.is_empty() {
        o.push_str("\nHints:\n");
        for h in &st.model.hints {
            let _ = writeln!(o, "  {h}");
        }
    }
    o
}

#[derive(Serialize)]
struct JsonSnapshot<'a> {
    time: String,
    #[serde(flatten)]
    model: JsonModel<'a>,
    events: Vec<&'a Notable>,
}

#[derive(Serialize)]
struct JsonModel<'a> {
    ts_ns: u64,
    interval_s: f64,
    host: &'a Option<super::state::HostView>,
    tcp: &'a super::state::TcpTotals,
    oom_kills: u64,
    diag: &'a super::state::DiagView,
    processes: Vec<&'a Row>,
    hints: &'a [String],
    /// The host's PSI (the pressure files) over the last interval.
    pressure: Option<&'a crate::aggregate::pressure::Pressures>,
}

/// One snapshot as one JSON object.
pub fn render_json(st: &TopState) -> String {
    let m: &Model = &st.model;
    serde_json::to_string(&JsonSnapshot {
        time: st
            .clock
            .wall(m.ts_ns)
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        model: JsonModel {
            ts_ns: m.ts_ns,
            interval_s: m.interval_s,
            host: &m.host,
            tcp: &m.tcp,
            oom_kills: m.oom_kills,
            diag: &m.diag,
            processes: st.visible_rows(),
            hints: &m.hints,
            pressure: st.pressure.as_ref().map(|p| &p.host),
        },
        events: st.events.iter().collect(),
    })
    .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}
