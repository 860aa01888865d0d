//! Rendering is a pure function of the state: drawn on ratatui's
//! `TestBackend` from fixed states.

use ratatui::{
    Terminal,
    backend::TestBackend,
    crossterm::event::{KeyCode, KeyEvent, KeyModifiers},
};

use super::{
    render,
    state::{
        DiagView, HostView, Model, Notable, NotableKind, Row, SchedCols, SortKey, TcpCols,
        TcpTotals, TopConfig, TopState,
    },
};
use crate::{clock::WallClock, host::LoadAvg, view::conns::Timebase};

fn row(pid: u32, comm: &str, cpu: f64, opens: f64, cw: u64, leaks: u64) -> Row {
    Row {
        pid,
        comm: comm.into(),
        cgroup: Some(format!("/system.slice/{comm}.service")),
        cpu_pct: Some(cpu),
        alive: true,
        tcp: Some(TcpCols {
            opens_per_s: opens,
            closes_per_s: opens,
            established: 3,
            time_wait: 40,
            close_wait: cw,
            leaks,
            resets: 2,
            retransmits: 1,
            resets_per_s: 0.0,
            retransmits_per_s: 0.0,
            failed_connects: 4,
            failed_connects_per_s: 0.5,
            ..TcpCols::default()
        }),
        oom_kills: 0,
        sched: None,
        io_ns: None,
        mem: None,
        lock_ns: None,
    }
}

fn state() -> TopState {
    let mut st = TopState::new(
        TopConfig::default(),
        WallClock::with_offset_ns(0),
        Timebase::Live,
    );
    st.model = Model {
        ts_ns: 5_000_000_000,
        interval_s: 1.0,
        host: Some(HostView {
            loadavg: Some(LoadAvg {
                one: 2.5,
                five: 1.25,
                fifteen: 0.5,
            }),
            running: 4,
            blocked: 2,
            cpus: 2,
            cpu_pct: Some(73.5),
            user_pct: 60.0,
            system_pct: 13.5,
            mem_total_kb: 4 << 20,
            mem_available_kb: 1 << 20,
            ..Default::default()
        }),
        tcp: TcpTotals {
            opens_per_s: 250.0,
            closes_per_s: 240.0,
            established: 12,
            time_wait: 340,
            close_wait: 5,
            resets_per_s: 3.0,
            retransmits_per_s: 0.0,
            worst_pressure: None,
        },
        oom_kills: 1,
        diag: DiagView {
            events_per_s: 1200.0,
            dropped: 0,
            map_full: 0,
            decode_errors: 0,
            bpf_cpu_pct: Some(0.42),
            bpf_programs: 8,
            self_cpu_pct: Some(2.5),
            owners_fixed: 0,
        },
        rows: vec![
            row(100, "churner", 20.0, 250.0, 0, 0),
            row(200, "spinner", 99.0, 0.0, 0, 0),
            row(300, "leaker", 1.0, 0.5, 5, 5),
        ],
        hints: vec![],
    };
    st.events.push_front(Notable {
        ts_ns: 4_000_000_000,
        kind: NotableKind::CloseWaitLeak,
        pid: Some(300),
        text: "pid 300 (leaker) has 5 sockets in CLOSE_WAIT".into(),
    });
    st
}

fn draw(st: &TopState, w: u16, h: u16) -> Vec<String> {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| render::draw(f, st)).unwrap();
    let buf = t.backend().buffer().clone();
    (0..h)
        .map(|y| {
            (0..w)
                .map(|x| buf[(x, y)].symbol().to_string())
                .collect::<String>()
        })
        .collect()
}

fn key(c: char) -> KeyEvent {
    KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
}

fn row_order(screen: &[String]) -> Vec<u32> {
    screen
        .iter()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

#[test]
fn header_shows_host_tcp_oom_and_diag_health() {
    let s = draw(&state(), 100, 30);
    let all = s.join("\n");
    assert!(all.contains("load 2.50 1.25 0.50"), "{all}");
    assert!(all.contains("tasks run 4 blocked 2"), "{all}");
    assert!(all.contains("CPU 73.5%"), "{all}");
    assert!(all.contains("MEM 75% of 4.00GiB  swap none"), "{all}");
    assert!(
        all.contains("TCP open 250/s close 240/s  ESTAB 12 TW 340 CW 5  RST 3.0/s"),
        "{all}"
    );
    assert!(all.contains("OOM kills 1  ports -"), "{all}");
    assert!(
        all.contains("diag: 1200 ev/s dropped 0 map-full 0  bpf 0.42% cpu, user 2.5%"),
        "{all}"
    );
    // Every header line fits in 80 columns.
    for l in render::header_lines(&state()) {
        assert!(l.chars().count() <= 80, "{l}");
    }
}

#[test]
fn a_known_row_and_the_event_pane() {
    let s = draw(&state(), 100, 30);
    let churner = s
        .iter()
        .find(|l| l.starts_with("100 "))
        .unwrap_or_else(|| panic!("{}", s.join("\n")));
    let cells: Vec<&str> = churner.split_whitespace().collect();
    assert_eq!(
        &cells[..5],
        &["100", "churner", "20.0", "250", "250"],
        "{churner}"
    );
    let leaker = s.iter().find(|l| l.starts_with("300 ")).unwrap();
    assert!(leaker.contains(" 5!"), "leaks are marked: {leaker}");
    let all = s.join("\n");
    assert!(all.contains("events, newest first"), "{all}");
    assert!(
        all.contains("LEAK   pid 300 (leaker) has 5 sockets"),
        "{all}"
    );
    // Scheduler columns show `-` while absent (when wide enough for them).
    let wide = draw(&state(), 110, 30).join("\n");
    assert!(wide.contains("RQ-p99"), "{wide}");
}

#[test]
fn sorting_by_a_key_reorders_rows() {
    let mut st = state();
    // Default: CPU, biggest first.
    assert_eq!(row_order(&draw(&st, 100, 30)), vec![200, 100, 300]);
    st.on_key(key('o'));
    assert_eq!(st.ui.sort, SortKey::Opens);
    assert_eq!(row_order(&draw(&st, 100, 30)), vec![100, 300, 200]);
    st.on_key(key('w'));
    assert_eq!(row_order(&draw(&st, 100, 30)), vec![300, 100, 200]);
    st.on_key(key('i'));
    assert_eq!(row_order(&draw(&st, 100, 30)), vec![200, 100, 300]);
    st.on_key(key('n'));
    st.on_key(key('i'));
    assert_eq!(row_order(&draw(&st, 100, 30)), vec![100, 200, 300]);
}

#[test]
fn filter_keeps_matching_rows() {
    let mut st = state();
    st.on_key(key('/'));
    for c in "leak".chars() {
        st.on_key(key(c));
    }
    let s = draw(&st, 80, 24);
    assert_eq!(row_order(&s), vec![300]);
    assert!(s.join("\n").contains("filter (name or pid"), "prompt shown");
    st.on_key(KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE));
    assert_eq!(row_order(&draw(&st, 80, 24)).len(), 3);
}

#[test]
fn help_overlay() {
    let mut st = state();
    st.on_key(key('?'));
    let all = draw(&st, 80, 24).join("\n");
    assert!(all.contains("diag top: who is suffering"), "{all}");
    assert!(all.contains("c CPU %"), "{all}");
    assert!(all.contains("pause / resume"), "{all}");
}

#[test]
fn detail_view_of_the_selected_process() {
    let mut st = state();
    st.on_key(KeyEvent::new(KeyCode::Down, KeyModifiers::NONE));
    st.on_key(KeyEvent::new(KeyCode::Down, KeyModifiers::NONE));
    st.model.hints = vec!["pid 300 (leaker) has 5 sockets in CLOSE_WAIT for over 10 s".into()];
    st.on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
    assert_eq!(st.ui.detail, Some(300));
    let lines = render::detail_lines(&st, 300);
    assert!(lines.iter().any(|l| l == "Hints:"), "{lines:?}");
    assert!(!lines[0].contains("container"), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("failed connects 4 (0.5/s)")),
        "{lines:?}"
    );
    let all = draw(&st, 80, 24).join("\n");
    assert!(all.contains("process 300"), "{all}");
    assert!(all.contains("pid 300 (leaker)"), "{all}");
    assert!(all.contains("Recent events:"), "{all}");
    // A process in a container: its id, as `docker ps` shows it.
    let id = "3f".repeat(32);
    for r in st.model.rows.iter_mut().filter(|r| r.pid == 300) {
        r.cgroup = Some(format!("/system.slice/docker-{id}.scope"));
    }
    let lines = render::detail_lines(&st, 300);
    assert!(
        lines[0].contains(&format!("container {}", &id[..12])),
        "{lines:?}"
    );
    let all = draw(&st, 80, 24).join("\n");
    assert!(all.contains("pid 300 (leaker)"), "{all}");
    // Where its load piles up: connect times and listen overflows, only
    // when there are any.
    assert!(
        !lines.iter().any(|l| l.starts_with("Connect time")),
        "{lines:?}"
    );
    for r in st.model.rows.iter_mut().filter(|r| r.pid == 300) {
        let t = r.tcp.as_mut().unwrap();
        t.connects = 12;
        t.connect_p50_ns = 40_000;
        t.connect_p99_ns = 1_100_000_000;
        t.connect_max_ns = 1_200_000_000;
        t.listen_overflows = 7;
        t.listen_overflows_interval = 2;
        t.listen_queue_high = Some((129, 128));
        t.kernel_drops = 9;
        t.bytes_acked = 2048;
        t.bytes_received = 3 << 20;
    }
    let lines = render::detail_lines(&st, 300);
    let line = lines
        .iter()
        .find(|l| l.starts_with("Connect time"))
        .expect("a connect line");
    assert!(line.contains("(12 connects)"), "{line}");
    assert!(
        line.contains("listen overflows 7 (2 in the interval)"),
        "{line}"
    );
    assert!(line.contains("accept queue up to 129 of 128"), "{line}");
    let line = lines
        .iter()
        .find(|l| l.starts_with("Kernel drops"))
        .expect("a drops and bytes line");
    assert!(
        line.contains("Kernel drops 9 ") && line.contains("tx 2.0KiB rx 3.00MiB"),
        "{line}"
    );
    st.on_key(KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE));
    assert_eq!(st.ui.detail, None);
}

#[test]
fn small_and_odd_sizes_do_not_panic() {
    let mut st = state();
    let s = draw(&st, 80, 24);
    assert!(s[0].starts_with("diag top"), "{}", s[0]);
    assert!(s.iter().any(|l| l.starts_with("200 ")), "{}", s.join("\n"));
    // At 80 columns the table fits, CGROUP included.
    assert!(s.iter().any(|l| l.contains("CGROUP")), "{}", s.join("\n"));
    for (w, h) in [(1, 1), (10, 3), (40, 10), (80, 5), (200, 60)] {
        draw(&st, w, h);
        st.on_key(key('?'));
        draw(&st, w, h);
        st.on_key(key('?'));
    }
    st.model.rows.clear();
    let all = draw(&st, 80, 24).join("\n");
    assert!(all.contains("no processes yet"), "{all}");
}

#[test]
fn scheduler_columns_fill_from_the_optional_struct() {
    let mut st = state();
    st.model.rows[0].sched = Some(SchedCols {
        runq_p99_ns: 4_000_000,
        wait_pct: 12.5,
        blocked_ns: 0,
    });
    let s = draw(&st, 110, 30);
    let line = s.iter().find(|l| l.starts_with("100 ")).unwrap();
    assert!(line.contains("4.00ms") && line.contains("12.5"), "{line}");
    let other = s.iter().find(|l| l.starts_with("200 ")).unwrap();
    assert!(other.contains(" - "), "{other}");
}

#[test]
fn text_and_json_snapshots() {
    let st = state();
    let t = render::render_text(&st);
    assert!(t.starts_with("diag top"), "{t}");
    let line = t.lines().find(|l| l.starts_with("100 ")).unwrap();
    assert!(line.contains("churner") && line.contains(" 250 "), "{line}");
    assert!(t.contains("Events, newest first:"), "{t}");
    let j: serde_json::Value = serde_json::from_str(&render::render_json(&st)).unwrap();
    assert_eq!(j["processes"][0]["pid"], 200);
    assert_eq!(j["tcp"]["time_wait"], 340);
    assert_eq!(j["diag"]["bpf_cpu_pct"], 0.42);
    assert_eq!(j["events"][0]["kind"], "close_wait_leak");
}

#[test]
fn new_losses_become_events_in_the_common_words() {
    use crate::bus::{Health, Msg};
    let mut st = TopState::new(
        TopConfig::default(),
        WallClock::with_offset_ns(0),
        Timebase::Live,
    );
    let h = Health {
        ts_ns: 1_000,
        ringbuf_full: 7,
        listen_map_full: 2,
        ..Health::default()
    };
    st.on_msg(&Msg::Health(h), &mut |_| {});
    let texts: Vec<&str> = st.events.iter().map(|n| n.text.as_str()).collect();
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(st.events.iter().all(|n| n.kind == NotableKind::Drops));
    assert!(
        texts.contains(
            &"7 events dropped: the ring buffer was full (raise --ring-mib); counts are incomplete"
        ),
        "{texts:?}"
    );
    assert!(
        texts.contains(&"2 listeners not tracked (map full); counts are incomplete"),
        "{texts:?}"
    );
    // The same reading again: nothing new.
    st.on_msg(&Msg::Health(h), &mut |_| {});
    assert_eq!(st.events.len(), 2);
}

#[test]
fn pressure_in_the_header_and_the_details() {
    use crate::aggregate::pressure::{CgroupPressure, PressureFrame, Pressures, PsiFig, ResPsi};
    let fig = |avg10, stall_us| {
        Some(PsiFig {
            avg10,
            total_us: 9_000_000,
            stall_us,
            ..PsiFig::default()
        })
    };
    let mut st = state();
    let host = Pressures {
        cpu: ResPsi {
            some: fig(12.5, 400_000),
            full: fig(0.0, 0),
        },
        memory: ResPsi {
            some: fig(1.25, 1),
            full: fig(0.5, 1),
        },
        io: ResPsi::default(),
    };
    st.pressure = Some(PressureFrame {
        host,
        cgroups: vec![CgroupPressure {
            cgroup: "/system.slice/leaker.service".into(),
            psi: host,
        }],
        ..PressureFrame::default()
    });
    st.on_key(KeyEvent::new(KeyCode::Down, KeyModifiers::NONE));
    st.on_key(KeyEvent::new(KeyCode::Down, KeyModifiers::NONE));
    st.on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
    let header = render::header_lines(&st);
    assert!(
        header
            .iter()
            .any(|l| l == "PSI avg10 some/full %  cpu 12.50/0.00  mem 1.25/0.50  io -/-"),
        "{header:?}"
    );
    for l in &header {
        assert!(l.chars().count() <= 80, "{l}");
    }
    let lines = render::detail_lines(&st, 300);
    assert!(
        lines.iter().any(|l| l.starts_with(
            "Pressure of cgroup /system.slice/leaker.service (avg10 some/full, stalled in the interval):  cpu 12.50%/0.00% 400.00ms"
        )),
        "{lines:?}"
    );
    // A cgroup the frame does not name, when it left some out, is said.
    if let Some(p) = st.pressure.as_mut() {
        p.cgroups.clear();
        p.others_count = 3;
    }
    let lines = render::detail_lines(&st, 300);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("not among the 0 that stalled most")),
        "{lines:?}"
    );
}

#[test]
fn why_slow_names_the_largest_part_and_what_d_time_is_left() {
    use super::state::{MemCols, SchedCols};
    let sched = SchedCols {
        runq_p99_ns: 0,
        wait_pct: 10.0,
        blocked_ns: 600_000_000,
    };
    let mem = MemCols {
        stall_ns: 50_000_000,
        swapin_ns: 100_000_000,
        ..MemCols::default()
    };
    let line = super::render::why_slow(
        1_000_000_000,
        Some(sched),
        Some(mem),
        Some(400_000_000),
        Some(20_000_000),
    )
    .unwrap();
    assert!(line.contains("waiting for a CPU 100.00ms"), "{line}");
    assert!(line.contains("memory reclaim/compaction 50.00ms"), "{line}");
    assert!(line.contains("swap-in I/O 100.00ms"), "{line}");
    assert!(line.contains("disk I/O 400.00ms"), "{line}");
    assert!(line.contains("futex waits 20.00ms"), "{line}");
    // 600 ms of D less 400 ms of I/O and 100 ms of swap-ins.
    assert!(line.contains("other D (blocked) 100.00ms"), "{line}");
    assert!(line.ends_with("=> mostly disk I/O"), "{line}");
    // Only the families attached; nothing at all: no line.
    let only_io = super::render::why_slow(1_000_000_000, None, None, Some(0), None).unwrap();
    assert!(!only_io.contains("mostly"), "{only_io}");
    assert!(super::render::why_slow(1_000_000_000, None, None, None, None).is_none());
}
