//! The report as one self-contained HTML page: the review's data as one
//! JSON blob, drawn by inline script (SVG), no network.

use serde_json::{Value, json};

use super::*;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// At most this many run-queue stalls are drawn (the page says how many
/// more there were); the text report below counts them all.
pub const MAX_STALLS: usize = 100_000;
/// At most this many per-process intervals are embedded (said likewise),
/// and as many of the scheduler's.
pub const MAX_DELTAS: usize = 1_000_000;

/// JSON that can sit inside `<script type="application/json">`: no `<`,
/// `>` or `&` (so no `</script>` nor `<!--`), nor the two line separators
/// that older script parsers took for line ends; all escaped as `\uXXXX`
/// inside strings, the only place JSON can hold them.
pub fn script_json(v: &Value) -> String {
    let s = v.to_string();
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// Seconds since `first`, rounded to the millisecond.
fn secs(ts: u64, first: u64) -> f64 {
    (ts.saturating_sub(first) as f64 / 1e6).round() / 1e3
}

/// Everything the page draws. Pure.
pub fn page_data(r: &Review, file: &str) -> Value {
    let first = r.first_ts.unwrap_or(r.header.started_ts_ns);
    let t = |ts: u64| secs(ts, first);
    let clock = r.clock();
    let wall = clock.wall(first);
    let t0_ms = (first as i128 + clock.offset_ns()) / 1_000_000;
    let tz_ms = i64::from(wall.offset().local_minus_utc()) * 1000;

    let pts: Vec<Value> = r
        .timeline
        .iter()
        .map(|p| {
            json!([
                t(p.ts_ns),
                p.opens_per_s,
                p.closes_per_s,
                p.resets_per_s,
                p.retrans_per_s,
                p.established,
                p.time_wait,
                p.close_wait
            ])
        })
        .collect();

    // Processes: those with TCP activity, then stall victims not among them.
    let mut procs = r.per_proc.clone();
    let mut villains: Vec<(u32, String)> = Vec::new();
    let mut villain_index: std::collections::HashMap<(u32, String), usize> =
        std::collections::HashMap::new();
    let mut stalls = Vec::with_capacity(r.stalls.len().min(MAX_STALLS));
    for s in r.stalls.iter().take(MAX_STALLS) {
        let comm = crate::text::comm(&s.header.comm);
        let tgid = s.header.tgid;
        let i = match procs.latest(tgid) {
            Some(i) => i,
            None => procs.index_of(tgid, 0, &comm),
        };
        let vcomm = crate::text::comm(&s.villain_comm);
        let key = (s.villain_tgid, vcomm);
        let vi = *villain_index.entry(key.clone()).or_insert_with(|| {
            villains.push(key);
            villains.len() - 1
        });
        stalls.push(json!([
            t(s.header.ts_ns),
            i,
            s.wait_ns,
            diag_common::sched::hist_slot(s.wait_ns),
            vi
        ]));
    }
    // The scheduler's frames: one row per process and interval (index -1:
    // the processes beyond the frame's bound, summed).
    let mut sched = Vec::new();
    let mut sched_left_off = 0usize;
    for f in &r.sched {
        if sched.len() >= MAX_DELTAS {
            sched_left_off += f.procs.len() + 1;
            continue;
        }
        let (at, secs) = (t(f.ts_ns), f.interval_ns as f64 / 1e9);
        for p in &f.procs {
            let i = match procs.latest(p.pid) {
                Some(i) => i,
                None => procs.index_of(p.pid, 0, &p.comm),
            };
            sched.push(json!([at, secs, i, p.wait_ns, p.waits, p.hist]));
        }
        if f.others.waits > 0 {
            sched.push(json!([
                at,
                secs,
                -1,
                f.others.wait_ns,
                f.others.waits,
                f.others.hist
            ]));
        }
    }
    // A process the scheduler's maps name without a command may have held
    // the CPU during a stall, which names it.
    let named: std::collections::HashMap<u32, &str> = villains
        .iter()
        .filter(|(_, c)| !c.is_empty())
        .map(|(p, c)| (*p, c.as_str()))
        .collect();
    let proc_list: Vec<Value> = procs
        .procs
        .iter()
        .map(|p| {
            let comm = match (p.comm.is_empty(), named.get(&p.pid)) {
                (true, Some(c)) => c,
                _ => p.comm.as_str(),
            };
            json!([p.pid, comm])
        })
        .collect();
    let pd: Vec<Value> = procs
        .deltas
        .iter()
        .take(MAX_DELTAS)
        .map(|d| {
            let mut row = vec![json!(t(d.ts_ns)), json!(d.secs), json!(d.proc)];
            row.extend(d.v.iter().map(|&x| json!(x)));
            Value::Array(row)
        })
        .collect();
    let oom: Vec<Value> = r
        .oom
        .iter()
        .map(|k| {
            json!([
                t(k.header.ts_ns),
                k.victim_process(),
                crate::text::comm(&k.victim_comm),
                oom_text(k, r.context_of(k), &clock)
            ])
        })
        .collect();
    let lost: Vec<Value> = r.drops.iter().map(|&(ts, n)| json!([t(ts), n])).collect();
    let life: Vec<Value> = r
        .lifetimes
        .buckets
        .iter()
        .enumerate()
        .map(|(i, &n)| json!([1u64 << i.min(63), n]))
        .collect();
    json!({
        "file": file,
        "host": r.header.hostname,
        "t0_ms": t0_ms as i64,
        "tz_ms": tz_ms,
        "span": t(r.last_ts).max(1.0),
        "events": r.events,
        "fields": page::FIELDS,
        "pts": pts,
        "procs": proc_list,
        "pd": pd,
        "pd_left_off": procs.deltas.len().saturating_sub(MAX_DELTAS),
        "stalls": stalls,
        "sched": sched,
        "sched_left_off": sched_left_off,
        "stalls_left_off": r.stalls.len().saturating_sub(MAX_STALLS),
        "villains": villains.iter().map(|(p, c)| json!([p, c])).collect::<Vec<_>>(),
        "oom": oom,
        "lost": lost,
        "life": life,
        // The run-queue buckets' bounds, ns (the kernel histograms' own).
        "slots": (0..diag_common::sched::HIST_SLOTS)
            .map(|i| json!([diag_common::sched::slot_low_ns(i), diag_common::sched::slot_high_ns(i)]))
            .collect::<Vec<_>>(),
        "damage": r.damage,
        "ended": r.ended,
    })
}

const STYLE: &str = include_str!("page.css");
const SCRIPT: &str = include_str!("page.js");

/// The report as one self-contained HTML page. Pure.
pub fn render_html(r: &Review, file: &str) -> String {
    let data = script_json(&page_data(r, file));
    let mut s = String::with_capacity(data.len() + STYLE.len() + SCRIPT.len() + 8192);
    s.push_str("<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>diag report: ");
    s.push_str(&esc(file));
    s.push_str("</title>\n<style>");
    s.push_str(STYLE);
    s.push_str("</style></head>\n<body>\n<h1>diag report: ");
    s.push_str(&esc(file));
    s.push_str("</h1>\n<div id=\"bar\"><span id=\"scope\"></span> <button id=\"clear\" type=\"button\">clear</button></div>\n<noscript><p>The plots and tables need JavaScript; the text report is below.</p></noscript>\n<div id=\"app\"></div>\n<h2>Review (text)</h2>\n<pre id=\"text\">");
    s.push_str(&esc(&render_text(r, file)));
    s.push_str("</pre>\n<pre id=\"selftest\" hidden></pre>\n<script type=\"application/json\" id=\"data\">");
    s.push_str(&data);
    s.push_str("</script>\n<script>");
    s.push_str(SCRIPT);
    s.push_str("</script>\n</body></html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use diag_common::{EventHeader, EventKind, oom::OomKillEvent, sched::StallEvent};

    fn comm(s: &str) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[..s.len()].copy_from_slice(s.as_bytes());
        c
    }

    /// The report fixture (churn, refused connects) with two stalls and
    /// an OOM kill, whose names try to break out of the page.
    fn review() -> Review {
        let mut r = super::super::tests::review();
        let mut h = EventHeader::zeroed();
        h.kind = EventKind::Stall as u32;
        h.ts_ns = 2_500_000_000;
        h.pid = 91;
        h.tgid = 90;
        h.comm = comm("</script><b>x");
        let stall = StallEvent {
            header: h,
            wait_ns: 12_000_000,
            villain_pid: 81,
            villain_tgid: 80,
            villain_comm: comm("hog\u{2028}<!--"),
        };
        r.stalls = vec![stall, stall];
        let mut h = EventHeader::zeroed();
        h.kind = EventKind::OomKill as u32;
        h.ts_ns = 3_000_000_000;
        h.pid = 70;
        h.tgid = 70;
        h.comm = comm("alloc");
        r.oom = vec![OomKillEvent {
            header: h,
            victim_pid: 71,
            victim_tgid: 71,
            victim_comm: comm("java&<x>"),
            victim_uid: 0,
            oom_score_adj: 0,
            constraint: 0,
            memcg_how: 0,
            total_vm_kb: 1024,
            anon_rss_kb: 512,
            file_rss_kb: 0,
            shmem_rss_kb: 0,
            pgtables_kb: 4,
            victim_memcg_ino: 0,
            trigger_memcg_ino: 0,
            oom_memcg_ino: 0,
            oom_memcg_limit_pages: 0,
            oom_memcg_usage_pages: 0,
        }];
        r
    }

    #[test]
    fn script_json_cannot_end_the_script_and_reads_back() {
        let v = json!({"comm": "</script><!--\u{2028}\u{2029}&x", "n": [1, 2]});
        let s = script_json(&v);
        for bad in ['<', '>', '&', '\u{2028}', '\u{2029}'] {
            assert!(!s.contains(bad), "{bad:?} in {s}");
        }
        assert!(
            s.contains(r"\u003c/script\u003e\u003c!--\u2028\u2029\u0026x"),
            "{s}"
        );
        let back: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn the_page_embeds_hostile_names_inertly() {
        let page = render_html(&review(), "x<y>.diag");
        assert!(page.starts_with("<!doctype html>"));
        assert!(page.contains("<title>diag report: x&lt;y&gt;.diag</title>"));
        // The data block and the script each end once; nothing else does.
        assert_eq!(page.matches("</script>").count(), 2, "{page}");
        assert!(!SCRIPT.contains("</script") && !SCRIPT.contains("<!--"));
        assert!(!page.contains("<b>x") && !page.contains("java&<x>"));
        // No network: nothing loaded from elsewhere.
        for bad in ["src=", "href=", "http://", "https://", "@import", "url("] {
            assert!(
                !page.replace("http://www.w3.org/2000/svg", "").contains(bad),
                "{bad}"
            );
        }
        let start = page.find("id=\"data\">").unwrap() + 10;
        let end = start + page[start..].find("</script>").unwrap();
        let data: Value = serde_json::from_str(&page[start..end]).unwrap();
        assert_eq!(data, page_data(&review(), "x<y>.diag"));
        assert!(
            data["procs"]
                .as_array()
                .unwrap()
                .contains(&json!([90, "</script><b>x"])),
            "{}",
            data["procs"]
        );
        assert_eq!(data["villains"], json!([[80, "hog\u{2028}<!--"]]));
        assert_eq!(data["oom"][0][1], 71, "the victim, not the trigger");
        assert_eq!(data["oom"][0][2], "java&<x>");
        // The text report is below, escaped, in a block that wraps.
        assert!(page.contains("<pre id=\"text\">") && page.contains("1. ERRORS"));
        assert!(STYLE.contains("white-space:pre-wrap"));
    }

    /// Every plot of the page has something to draw from the fixture.
    #[test]
    fn every_plot_gets_data() {
        let d = page_data(&review(), "x.diag");
        let pts = d["pts"].as_array().unwrap();
        let col_max = |c: usize| {
            pts.iter()
                .map(|p| p[c].as_f64().unwrap())
                .fold(0.0, f64::max)
        };
        // churn (opens, closes), TIME_WAIT.
        assert!(col_max(1) > 0.0 && col_max(2) > 0.0 && col_max(6) > 0.0);
        // Per-process intervals: the churn's 30 opens and the 2 refused
        // connects, in the fields' order.
        let fields = d["fields"].as_array().unwrap();
        let col = |name: &str| 3 + fields.iter().position(|f| f == name).unwrap();
        let sum = |name: &str| -> u64 {
            d["pd"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r[col(name)].as_u64().unwrap())
                .sum()
        };
        assert_eq!(sum("opens"), 32);
        assert_eq!(sum("failed"), 2);
        assert_eq!(sum("closes"), 32);
        // Every interval's length is known and positive.
        assert!(
            d["pd"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r[1].as_f64().unwrap() > 0.0)
        );
        // The heatmap: two stalls in the 8-16 ms bucket (log2 of us).
        let stalls = d["stalls"].as_array().unwrap();
        assert_eq!(stalls.len(), 2);
        assert_eq!(stalls[0][3], 14, "12 ms is in [8.2 ms, 16.4 ms)");
        assert_eq!(d["slots"][14], json!([8_192_000, 16_384_000]));
        assert_eq!(stalls[0][0], 1.5, "seconds since the first event");
        // The lifetime histogram, the OOM marker.
        let life: u64 = d["life"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b[1].as_u64().unwrap())
            .sum();
        assert_eq!(life, 32);
        assert_eq!(d["oom"].as_array().unwrap().len(), 1);
        assert_eq!(d["stalls_left_off"], 0);
        assert_eq!(d["pd_left_off"], 0);
    }
}
