//! The report as one self-contained HTML page.

use super::*;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One line of a chart: name, colour, (x, y) points.
pub type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// A line chart as inline SVG: x is time, one polyline per series,
/// vertical markers (OOM kills) in red.
pub fn svg_chart(
    title: &str,
    series: &[Series<'_>],
    markers: &[(f64, String)],
    x0: f64,
    x1: f64,
) -> String {
    let (w, h, pad) = (760.0, 220.0, 40.0);
    let ymax = series
        .iter()
        .flat_map(|(_, _, v)| v.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        .max(1.0);
    let span = (x1 - x0).max(1e-9);
    let sx = |x: f64| pad + (x - x0) / span * (w - 2.0 * pad);
    let sy = |y: f64| h - pad - y / ymax * (h - 2.0 * pad);
    let mut s = format!(
        "<figure><figcaption>{}</figcaption><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">",
        esc(title)
    );
    let _ = write!(
        s,
        "<rect x=\"{pad}\" y=\"{pad}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#ccc\"/>",
        w - 2.0 * pad,
        h - 2.0 * pad
    );
    let _ = write!(
        s,
        "<text x=\"2\" y=\"{}\" font-size=\"10\">{:.0}</text>",
        pad + 4.0,
        ymax
    );
    let _ = write!(
        s,
        "<text x=\"2\" y=\"{}\" font-size=\"10\">0</text>",
        h - pad
    );
    let _ = write!(
        s,
        "<text x=\"{pad}\" y=\"{}\" font-size=\"10\">+0s</text>",
        h - pad + 14.0
    );
    let _ = write!(
        s,
        "<text x=\"{}\" y=\"{}\" font-size=\"10\">+{:.0}s</text>",
        w - pad - 30.0,
        h - pad + 14.0,
        span
    );
    for (x, label) in markers {
        let _ = write!(
            s,
            "<line class=\"oom\" x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{pad}\" y2=\"{1}\" stroke=\"red\"><title>{2}</title></line>",
            sx(*x),
            h - pad,
            esc(label)
        );
    }
    for (i, (name, color, pts)) in series.iter().enumerate() {
        let path: Vec<String> = pts
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let _ = write!(
            s,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>",
            path.join(" ")
        );
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" font-size=\"11\" fill=\"{color}\">{}</text>",
            pad + 10.0 + i as f64 * 130.0,
            pad - 8.0,
            esc(name)
        );
    }
    s.push_str("</svg></figure>\n");
    s
}

/// A histogram of connection lifetimes (log2 buckets) as inline SVG bars.
pub fn svg_histogram(title: &str, hist: &Log2Hist) -> String {
    let (w, h, pad) = (760.0, 200.0, 40.0);
    let n = hist.buckets.len().max(1);
    let max = hist.buckets.iter().copied().max().unwrap_or(0).max(1) as f64;
    let bw = (w - 2.0 * pad) / n as f64;
    let mut s = format!(
        "<figure><figcaption>{}</figcaption><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\">",
        esc(title)
    );
    for (i, &c) in hist.buckets.iter().enumerate() {
        let bh = c as f64 / max * (h - 2.0 * pad);
        let _ = write!(
            s,
            "<rect class=\"bar\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#4a7\"><title>{} - {}: {c}</title></rect>",
            pad + i as f64 * bw,
            h - pad - bh,
            (bw - 1.0).max(1.0),
            bh,
            human_ns(1u64 << i),
            human_ns((1u64 << (i + 1).min(63)) - 1)
        );
    }
    s.push_str("</svg></figure>\n");
    s
}

/// The report as one self-contained HTML page. Pure.
pub fn render_html(r: &Review, file: &str) -> String {
    let first = r.first_ts.unwrap_or(r.header.started_ts_ns);
    let x = |ts: u64| ts.saturating_sub(first) as f64 / 1e9;
    let x1 = x(r.last_ts).max(1.0);
    let clock = r.clock();
    let markers: Vec<(f64, String)> = r
        .oom
        .iter()
        .map(|k| (x(k.header.ts_ns), oom_text(k, r.context_of(k), &clock)))
        .collect();
    let series = |f: &dyn Fn(&Point) -> f64| -> Vec<(f64, f64)> {
        r.timeline.iter().map(|p| (x(p.ts_ns), f(p))).collect()
    };
    let mut body = String::new();
    body.push_str(&svg_chart(
        "Connection churn (per second)",
        &[
            ("opens/s", "#1f77b4", series(&|p| p.opens_per_s)),
            ("closes/s", "#ff7f0e", series(&|p| p.closes_per_s)),
        ],
        &markers,
        0.0,
        x1,
    ));
    body.push_str(&svg_chart(
        "Sockets by state",
        &[
            ("ESTABLISHED", "#2ca02c", series(&|p| p.established as f64)),
            ("TIME_WAIT", "#9467bd", series(&|p| p.time_wait as f64)),
            ("CLOSE_WAIT", "#d62728", series(&|p| p.close_wait as f64)),
        ],
        &markers,
        0.0,
        x1,
    ));
    body.push_str(&svg_chart(
        "Errors (per second)",
        &[
            ("resets/s", "#8c564b", series(&|p| p.resets_per_s)),
            ("retransmits/s", "#e377c2", series(&|p| p.retrans_per_s)),
        ],
        &markers,
        0.0,
        x1,
    ));
    body.push_str(&svg_histogram(
        "Connection lifetimes (log2 buckets)",
        &r.lifetimes,
    ));
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>diag report: {t}</title>\n<style>body{{font-family:sans-serif;max-width:900px;margin:auto}}pre{{background:#f6f6f6;padding:8px;overflow-x:auto}}figcaption{{font-weight:bold}}</style></head>\n<body><h1>diag report</h1>\n<p>Red vertical lines mark OOM kills; hover for details.</p>\n{body}<h2>Review</h2><pre>{text}</pre></body></html>\n",
        t = esc(file),
        text = esc(&render_text(r, file)),
    )
}
