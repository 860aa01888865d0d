"use strict";
(function () {
  var errors = [];
  window.addEventListener("error", function (e) { errors.push(String(e.message)); });
  var D = JSON.parse(document.getElementById("data").textContent);
  var NS = "http://www.w3.org/2000/svg";
  var W = 1000, L = 150, R = 16, T = 10, B = 36;
  var F = {};
  D.fields.forEach(function (f, i) { F[f] = 3 + i; });
  // Page state: a time window [a, b) in seconds since the start, a process
  // (index into D.procs), and the tables' filters and sort orders.
  var st = { w: null, p: null, filter: "", sort: { procs: ["opens", -1], villains: ["stalls", -1] } };
  var marks = {};

  function el(tag, attrs, parent, text) {
    var svg = tag === "svg" || parent instanceof SVGElement;
    var e = svg ? document.createElementNS(NS, tag) : document.createElement(tag);
    for (var k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }
  function pad2(n) { return (n < 10 ? "0" : "") + n; }
  function clock(t) {
    var d = new Date(D.t0_ms + D.tz_ms + t * 1000);
    return pad2(d.getUTCHours()) + ":" + pad2(d.getUTCMinutes()) + ":" + pad2(d.getUTCSeconds());
  }
  function human(n) {
    var a = Math.abs(n);
    if (a >= 1e9) return (n / 1e9).toFixed(1) + "G";
    if (a >= 1e6) return (n / 1e6).toFixed(1) + "M";
    if (a >= 1e4) return (n / 1e3).toFixed(1) + "k";
    return (Math.round(n * 10) / 10).toString();
  }
  function bytes(n) {
    var u = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + u[i];
  }
  function dur(ns) {
    if (ns >= 1e9) return (ns / 1e9).toFixed(ns >= 1e10 ? 0 : 1) + "s";
    if (ns >= 1e6) return (ns / 1e6).toFixed(ns >= 1e7 ? 0 : 1) + "ms";
    if (ns >= 1e3) return (ns / 1e3).toFixed(ns >= 1e4 ? 0 : 1) + "us";
    return ns + "ns";
  }
  function procName(i) { return "pid " + D.procs[i][0] + " (" + D.procs[i][1] + ")"; }

  // Does the interval (t - secs, t] meet the window?
  function inWin(t, secs) {
    if (!st.w) return true;
    return t > st.w[0] && t - (secs || 0) < st.w[1];
  }
  function atWin(t) { return !st.w || (t >= st.w[0] && t < st.w[1]); }

  // Host series from the timeline, or the chosen process's from its intervals.
  var prevT = D.pts.map(function (p, i) { return i ? D.pts[i - 1][0] : Math.max(0, p[0] - 1); });
  var hostPd = {};
  D.pd.forEach(function (r) {
    var h = hostPd[r[0]] || (hostPd[r[0]] = { secs: r[1], v: {} });
    D.fields.forEach(function (f) { h.v[f] = (h.v[f] || 0) + r[F[f]]; });
  });
  var hostTimes = Object.keys(hostPd).map(Number).sort(function (a, b) { return a - b; });
  function rate(field) {
    if (st.p !== null) {
      return D.pd.filter(function (r) { return r[2] === st.p; })
        .map(function (r) { return [r[0], r[1] > 0 ? r[F[field]] / r[1] : 0]; });
    }
    var col = { opens: 1, closes: 2, resets: 3, retrans: 4 }[field];
    if (col) return D.pts.map(function (p) { return [p[0], p[col]]; });
    return hostTimes.map(function (t) { var h = hostPd[t]; return [t, h.secs > 0 ? h.v[field] / h.secs : 0]; });
  }
  function gauge(field) {
    if (st.p === null) {
      var col = { established: 5, time_wait: 6, close_wait: 7 }[field];
      return D.pts.map(function (p) { return [p[0], p[col]]; });
    }
    var out = [], last = 0;
    D.pd.forEach(function (r) {
      if (r[2] !== st.p) return;
      out.push([r[0], last]);
      last = r[F[field]];
      out.push([r[0], last]);
    });
    if (out.length) out.push([D.span, last]);
    return out;
  }
  function stallsNow() {
    return D.stalls.filter(function (s) { return st.p === null || s[1] === st.p; });
  }
  // Counts per whole second, for the incident timeline.
  function perSecond(pairs) {
    var m = {};
    pairs.forEach(function (p) { if (p[1] > 0) { var k = Math.floor(p[0]); m[k] = (m[k] || 0) + p[1]; } });
    return Object.keys(m).map(function (k) { return [Math.min(Number(k) + 0.5, D.span), m[k]]; });
  }
  function counts(field) {
    if (st.p !== null) {
      return D.pd.filter(function (r) { return r[2] === st.p; }).map(function (r) { return [r[0] - r[1] / 2, r[F[field]]]; });
    }
    var col = { resets: 3, retrans: 4 }[field];
    if (col) return D.pts.map(function (p, i) { var dt = p[0] - prevT[i]; return [p[0] - dt / 2, Math.round(p[col] * dt)]; });
    return hostTimes.map(function (t) { return [t - hostPd[t].secs / 2, hostPd[t].v[field]]; });
  }

  // One plot frame: axes, labels, the window, OOM lines, click to narrow.
  function frame(parent, id, title, ylabel, height, note) {
    var fig = el("figure", { id: id }, parent);
    el("figcaption", {}, fig, title);
    if (note) el("div", { "class": "note" }, fig, note);
    var svg = el("svg", { "class": "plot", viewBox: "0 0 " + W + " " + height, "data-plot": id }, fig);
    var f = {
      fig: fig, svg: svg, h: height, y0: height - B, y1: T,
      x: function (t) { return L + t / D.span * (W - L - R); },
      t: function (px) { return Math.max(0, Math.min(D.span, (px - L) / (W - L - R) * D.span)); }
    };
    el("line", { "class": "axis", x1: L, x2: W - R, y1: f.y0, y2: f.y0 }, svg);
    el("line", { "class": "axis", x1: L, x2: L, y1: f.y1, y2: f.y0 }, svg);
    var n = Math.max(2, Math.min(10, Math.floor(D.span)));
    for (var i = 0; i <= n; i++) {
      var t = D.span * i / n, x = f.x(t);
      el("line", { "class": "axis", x1: x, x2: x, y1: f.y0, y2: f.y0 + 4 }, svg);
      el("text", { x: x, y: f.y0 + 16, "text-anchor": i === 0 ? "start" : i === n ? "end" : "middle" }, svg, clock(t));
    }
    el("text", { x: (L + W - R) / 2, y: height - 3, "text-anchor": "middle" }, svg, "time (local), seconds since " + clock(0) + " on the x axis");
    var ym = (f.y0 + f.y1) / 2;
    el("text", { x: L - 56, y: ym, "text-anchor": "middle", transform: "rotate(-90 " + (L - 56) + " " + ym + ")" }, svg, ylabel);
    if (st.w) {
      el("rect", { "class": "win", x: f.x(st.w[0]), y: f.y1, width: Math.max(2, f.x(st.w[1]) - f.x(st.w[0])), height: f.y0 - f.y1 }, svg);
    }
    D.oom.forEach(function (k) {
      if (st.p !== null && D.procs[st.p][0] !== k[1]) return;
      var ln = el("line", { "class": "oomline", x1: f.x(k[0]), x2: f.x(k[0]), y1: f.y1, y2: f.y0 }, svg);
      el("title", {}, ln, k[3]);
    });
    var down = null;
    function at(ev) {
      var r = svg.getBoundingClientRect();
      return (ev.clientX - r.left) / r.width * W;
    }
    svg.addEventListener("mousedown", function (ev) { down = at(ev); });
    svg.addEventListener("mouseup", function (ev) {
      if (down === null) return;
      var up = at(ev);
      if (Math.abs(up - down) > 4) {
        narrowTime(f.t(Math.min(up, down)), f.t(Math.max(up, down)));
      } else {
        var t = Math.floor(f.t(up));
        narrowTime(Math.max(0, t - 1), t + 2);
      }
      down = null;
    });
    return f;
  }
  function yScale(f, max, log) {
    max = Math.max(max, log ? 1 : 1e-9);
    var top = log ? Math.pow(10, Math.ceil(Math.log10(max + 1))) : niceMax(max);
    var tr = log ? function (v) { return Math.log10(1 + Math.max(0, v)) / Math.log10(1 + top); } : function (v) { return v / top; };
    var y = function (v) { return f.y0 - tr(v) * (f.y0 - f.y1); };
    var ticks = [];
    if (log) { for (var v = 1; v <= top; v *= 10) ticks.push(v); ticks.unshift(0); }
    else { for (var i = 0; i <= 4; i++) ticks.push(top * i / 4); }
    ticks.forEach(function (v) {
      el("line", { "class": "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }, f.svg);
      el("text", { x: L - 4, y: y(v) + 4, "text-anchor": "end" }, f.svg, human(v));
    });
    return y;
  }
  function niceMax(m) {
    var p = Math.pow(10, Math.floor(Math.log10(m))), r = m / p;
    return (r <= 1 ? 1 : r <= 2 ? 2 : r <= 5 ? 5 : 10) * p;
  }
  function legend(fig, series) {
    var d = el("div", { "class": "legend" }, fig);
    series.forEach(function (s) {
      var sp = el("span", {}, d);
      el("i", { style: "background:" + s.color }, sp);
      sp.appendChild(document.createTextNode(s.name));
    });
  }
  function linePlot(parent, id, title, ylabel, series, log, height, note) {
    var f = frame(parent, id, title, ylabel, height || 200, note);
    var max = 0, n = 0;
    series.forEach(function (s) { s.pts.forEach(function (p) { if (p[1] > max) max = p[1]; if (p[1] > 0) n++; }); });
    var y = yScale(f, max, log);
    series.forEach(function (s) {
      var pts = s.pts.map(function (p) { return f.x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1); });
      el("polyline", { fill: "none", stroke: s.color, "stroke-width": 1.6, points: pts.join(" ") }, f.svg);
    });
    legend(f.fig, series);
    marks[id] = n;
    return f;
  }

  function timelinePlot(parent) {
    var pid = st.p === null ? null : D.procs[st.p][0];
    var lanes = [
      { name: "OOM kills", color: "#d00", pts: D.oom.filter(function (k) { return pid === null || k[1] === pid; }).map(function (k) { return [k[0], 1, k[3]]; }) },
      { name: "run-queue stalls", color: "#e67e22", pts: perSecond(stallsNow().map(function (s) { return [s[0], 1]; })) },
      { name: "resets", color: "#8c564b", pts: perSecond(counts("resets")) },
      { name: "CLOSE_WAIT", color: "#c0392b", pts: gauge("close_wait").filter(function (p) { return p[1] > 0; }) },
      { name: "drops", color: "#7f3fbf", pts: perSecond(counts("drops")) },
      { name: "failed connects", color: "#1f77b4", pts: perSecond(counts("failed")) },
      { name: "retransmits", color: "#e377c2", pts: perSecond(counts("retrans")) }
    ];
    if (pid === null) lanes.push({ name: "lost by diag", color: "#000", pts: D.lost });
    var lh = 22, h = T + lanes.length * lh + B;
    var f = frame(parent, "timeline", "Incident timeline (every family; dot size: count per second)", "", h);
    var n = 0;
    lanes.forEach(function (ln, i) {
      var yy = T + i * lh + lh / 2;
      var gaugeLane = ln.name === "CLOSE_WAIT";
      var total = ln.pts.reduce(function (a, p) { return gaugeLane ? Math.max(a, p[1]) : a + p[1]; }, 0);
      el("line", { "class": "grid", x1: L, x2: W - R, y1: yy, y2: yy }, f.svg);
      el("text", { x: L - 6, y: yy + 4, "text-anchor": "end", fill: total ? "#222" : "#999" }, f.svg,
        ln.name + (gaugeLane ? " (peak " + human(total) + ")" : " (" + human(total) + ")"));
      ln.pts.forEach(function (p) {
        var r = ln.name === "OOM kills" ? 6 : Math.min(8, 2 + 2 * Math.log10(p[1] + 1));
        var c = el("circle", { cx: f.x(p[0]), cy: yy, r: r, fill: ln.color, opacity: 0.75 }, f.svg);
        el("title", {}, c, p[2] || (clock(p[0]) + ": " + human(p[1]) + " " + ln.name));
        n++;
      });
    });
    marks.timeline = n;
  }

  // Cells of the heatmap: (start, width in seconds, bucket) -> waits.
  // From the scheduler's histograms (every wait) when recorded, else
  // from the stalls.
  function heatCells() {
    var cells = {};
    function add(t0, w, b, c) {
      var k = t0 + "/" + w + "/" + b;
      cells[k] = (cells[k] || 0) + c;
    }
    if (D.sched.length) {
      D.sched.forEach(function (r) {
        if (st.p !== null && r[2] !== st.p) return;
        var w = r[1] > 0 ? r[1] : 1;
        r[5].forEach(function (c, b) { if (c > 0) add(Math.max(0, r[0] - w), w, b, c); });
      });
    } else {
      stallsNow().forEach(function (s) { add(Math.floor(s[0]), 1, s[3], 1); });
    }
    return cells;
  }
  function heatmap(parent) {
    var cells = heatCells(), keys = Object.keys(cells);
    var lo = 31, hi = 0, max = 0;
    keys.forEach(function (k) {
      var b = Number(k.split("/")[2]);
      lo = Math.min(lo, b); hi = Math.max(hi, b); max = Math.max(max, cells[k]);
    });
    if (!keys.length) { lo = 0; hi = 0; }
    // At least six buckets, for scale.
    hi = Math.min(31, Math.max(hi, lo + 5));
    var rows = hi - lo + 1, rh = Math.max(10, Math.min(22, 220 / rows));
    var h = T + rows * rh + B;
    var note = D.sched.length
      ? "Every run-queue wait, from the kernel's per-process histograms read each second: count per interval and log2 bucket of the wait; darker: more." +
        (D.sched_left_off ? " " + D.sched_left_off + " later readings are not drawn." : "")
      : "This recording has no scheduler histograms (recorded without stalls, or by an older diag): the waits over the stall threshold only, per second and log2 bucket; darker: more." +
        (D.stalls_left_off ? " " + D.stalls_left_off + " more stalls are not drawn (the text report counts them)." : "");
    var f = frame(parent, "heatmap", "Run-queue latency heatmap" + (D.sched.length ? "" : " (stalls)"), "run-queue wait", h, note);
    for (var b = lo; b <= hi; b++) {
      var yy = f.y0 - (b - lo + 1) * rh;
      el("text", { x: L - 4, y: yy + rh / 2 + 4, "text-anchor": "end" }, f.svg, b === 0 ? "<1us" : dur(D.slots[b][0]));
    }
    var n = 0;
    keys.forEach(function (k) {
      var parts = k.split("/"), t = Number(parts[0]), w = Number(parts[1]), b = Number(parts[2]), c = cells[k];
      var cw = Math.max(2, f.x(t + w) - f.x(t));
      var a = 0.15 + 0.85 * Math.log(1 + c) / Math.log(1 + max);
      var r = el("rect", { x: f.x(t), y: f.y0 - (b - lo + 1) * rh, width: Math.max(1, Math.min(cw, W - R - f.x(t))), height: rh - 1, fill: "rgba(214,39,40," + a.toFixed(2) + ")" }, f.svg);
      el("title", {}, r, clock(t) + ": " + c + " waits of " + dur(D.slots[b][0]) + " to " + dur(D.slots[b][1]));
      n++;
    });
    marks.heatmap = n;
  }

  function histogram(parent) {
    var fig = el("figure", { id: "lifetimes" }, parent);
    el("figcaption", {}, fig, "Connection lifetimes, whole recording (log2 buckets, SYN to CLOSE)");
    var h = 220, svg = el("svg", { "class": "plot", viewBox: "0 0 " + W + " " + h }, fig);
    var y0 = h - B - 10, bs = D.life, max = 1, n = 0;
    bs.forEach(function (b) { max = Math.max(max, b[1]); });
    var top = niceMax(max), bw = (W - L - R) / Math.max(1, bs.length);
    el("line", { "class": "axis", x1: L, x2: W - R, y1: y0, y2: y0 }, svg);
    el("line", { "class": "axis", x1: L, x2: L, y1: T, y2: y0 }, svg);
    [0, 0.5, 1].forEach(function (q) {
      var yy = y0 - q * (y0 - T);
      el("line", { "class": "grid", x1: L, x2: W - R, y1: yy, y2: yy }, svg);
      el("text", { x: L - 4, y: yy + 4, "text-anchor": "end" }, svg, human(top * q));
    });
    bs.forEach(function (b, i) {
      var bh = b[1] / top * (y0 - T);
      var r = el("rect", { x: L + i * bw + 1, y: y0 - bh, width: Math.max(1, bw - 2), height: bh, fill: "#4a7" }, svg);
      el("title", {}, r, dur(b[0]) + " to " + dur(b[0] * 2) + ": " + b[1] + " connections");
      if (i % Math.ceil(bs.length / 12) === 0) el("text", { x: L + i * bw + bw / 2, y: y0 + 14, "text-anchor": "middle" }, svg, dur(b[0]));
      if (b[1] > 0) n++;
    });
    el("text", { x: (L + W - R) / 2, y: h - 6, "text-anchor": "middle" }, svg, "connection lifetime (bucket lower bound)");
    el("text", { x: L - 56, y: (y0 + T) / 2, "text-anchor": "middle", transform: "rotate(-90 " + (L - 56) + " " + (y0 + T) / 2 + ")" }, svg, "connections");
    marks.lifetimes = n;
  }

  // The tables: rows computed for the window, then filtered and sorted.
  function procRows() {
    var rows = D.procs.map(function (p, i) {
      return { i: i, pid: p[0], comm: p[1], opens: 0, closes: 0, resets: 0, retrans: 0, close_wait: 0, failed: 0, drops: 0, bytes: 0, stalls: 0, stall_wait: 0, wait: 0, waits: 0, any: false };
    });
    var before = {};
    D.pd.forEach(function (r) {
      var row = rows[r[2]];
      if (st.w && r[0] <= st.w[0]) { before[r[2]] = r[F.close_wait]; return; }
      if (!inWin(r[0], r[1])) return;
      ["opens", "closes", "resets", "retrans", "failed", "drops", "bytes"].forEach(function (f) { row[f] += r[F[f]]; });
      row.close_wait = Math.max(row.close_wait, r[F.close_wait]);
      row.any = true;
    });
    Object.keys(before).forEach(function (i) { rows[i].close_wait = Math.max(rows[i].close_wait, before[i]); });
    D.stalls.forEach(function (s) {
      if (!atWin(s[0])) return;
      var row = rows[s[1]];
      row.stalls++; row.stall_wait += s[2]; row.any = true;
    });
    D.sched.forEach(function (s) {
      if (s[2] < 0 || !inWin(s[0], s[1])) return;
      var row = rows[s[2]];
      row.wait += s[3]; row.waits += s[4]; row.any = true;
    });
    return rows.filter(function (r) {
      return r.any && (r.opens || r.closes || r.resets || r.retrans || r.close_wait || r.failed || r.drops || r.bytes || r.stalls || r.waits);
    });
  }
  function villainRows() {
    // pid 0: no task held the CPU (it was idle, the wakeup was slow).
    var rows = D.villains.map(function (v, i) { return { i: i, pid: v[0], comm: v[0] === 0 ? "(idle)" : v[1], stalls: 0, wait: 0, max: 0 }; });
    D.stalls.forEach(function (s) {
      if (!atWin(s[0]) || (st.p !== null && s[1] !== st.p)) return;
      var r = rows[s[4]];
      r.stalls++; r.wait += s[2]; r.max = Math.max(r.max, s[2]);
    });
    return rows.filter(function (r) { return r.stalls > 0; });
  }
  function matches(r) {
    var q = st.filter.trim().toLowerCase();
    return !q || String(r.pid) === q || r.comm.toLowerCase().indexOf(q) >= 0;
  }
  function table(parent, id, cols, rows, onRow) {
    var key = st.sort[id];
    rows = rows.filter(matches);
    rows.sort(function (a, b) {
      var x = a[key[0]], y = b[key[0]];
      var c = typeof x === "string" ? x.localeCompare(y) : x - y;
      return c * key[1] || a.pid - b.pid;
    });
    var t = el("table", { id: id }, parent);
    var tr = el("tr", {}, el("thead", {}, t));
    cols.forEach(function (c) {
      var th = el("th", { "class": (c.l ? "l " : "") + (c.k === key[0] ? "sorted" : ""), "data-key": c.k, title: c.title || "" }, tr,
        c.h + (c.k === key[0] ? (key[1] < 0 ? " \u25bc" : " \u25b2") : ""));
      th.addEventListener("click", function () { sortBy(id, c.k); });
    });
    var tb = el("tbody", {}, t);
    rows.forEach(function (r) {
      var row = el("tr", { "data-pid": r.pid, "class": onRow && st.p === r.i ? "sel" : "" }, tb);
      cols.forEach(function (c) {
        el("td", { "class": c.l ? "l" : "" }, row, c.f ? c.f(r[c.k]) : String(r[c.k]));
      });
      if (onRow) row.addEventListener("click", function () { onRow(r); });
    });
    if (!rows.length) el("td", { colspan: cols.length, "class": "l" }, el("tr", {}, tb), "no process in view");
    return rows;
  }

  function render() {
    var app = document.getElementById("app");
    app.textContent = "";
    marks = {};
    var scope = (st.w ? clock(st.w[0]) + " to " + clock(st.w[1]) : "the whole recording (" + clock(0) + " to " + clock(D.span) + ")") +
      (st.p !== null ? ", " + procName(st.p) : ", every process");
    document.getElementById("scope").textContent = "Showing " + scope;
    document.getElementById("clear").disabled = !st.w && st.p === null && !st.filter;
    var intro = el("p", { "class": "note" }, app,
      "Host " + D.host + ", " + D.events + " events. Click a plot to narrow the page to that moment (drag for a range); click a table row to narrow it to that process; clear resets. Red dashed lines: OOM kills (hover for details).");
    if (D.damage.length) el("p", { "class": "warn" }, app, "DAMAGED: " + D.damage.join("; "));
    if (D.lost.length) el("p", { "class": "warn" }, app, "INCOMPLETE: diag lost " + D.lost.reduce(function (a, l) { return a + l[1]; }, 0) + " events (see the timeline).");
    if (D.pd_left_off) el("p", { "class": "warn" }, app, D.pd_left_off + " per-process intervals are not embedded: the tables count only the earlier ones.");
    intro.id = "intro";

    el("h2", {}, app, "1. Errors: the incident timeline");
    timelinePlot(app);
    var kills = D.oom.filter(function (k) { return atWin(k[0]) && (st.p === null || D.procs[st.p][0] === k[1]); });
    if (kills.length) {
      var ul = el("ul", { "class": "oom" }, app);
      kills.forEach(function (k) { el("li", {}, ul, k[3]); });
    }
    linePlot(app, "errors", "Errors per second (log scale)", "per second (log)", [
      { name: "resets/s", color: "#8c564b", pts: rate("resets") },
      { name: "retransmits/s", color: "#e377c2", pts: rate("retrans") },
      { name: "failed connects/s", color: "#1f77b4", pts: rate("failed") },
      { name: "drops and overflows/s", color: "#7f3fbf", pts: rate("drops") }
    ], true);

    el("h2", {}, app, "2. Saturation");
    heatmap(app);
    ["close_wait", "time_wait", "established"].forEach(function (g) {
      var name = g.toUpperCase();
      linePlot(app, "state-" + g, "Sockets in " + name + (st.p !== null ? " (" + procName(st.p) + ")" : ""), "sockets",
        [{ name: name, color: { close_wait: "#d62728", time_wait: "#9467bd", established: "#2ca02c" }[g], pts: gauge(g) }], false, 150,
        g === "close_wait" ? "One panel per state, each with its own scale: a few leaking CLOSE_WAIT sockets stay readable next to a hundred thousand in TIME_WAIT." : "");
    });

    el("h2", {}, app, "3. Churn");
    linePlot(app, "churn", "Connection churn", "connections per second", [
      { name: "opens/s", color: "#1f77b4", pts: rate("opens") },
      { name: "closes/s", color: "#ff7f0e", pts: rate("closes") }
    ], false);
    histogram(app);

    el("h2", {}, app, "4. Processes");
    var filter = el("input", { "class": "filter", id: "filter", type: "search", placeholder: "filter: pid or command", value: st.filter }, app);
    filter.addEventListener("input", function () { st.filter = filter.value; renderTables(); });
    el("div", { id: "tables" }, app);
    renderTables();
  }
  function renderTables() {
    var box = document.getElementById("tables");
    box.textContent = "";
    el("div", { "class": "note" }, box, "Per process" + (st.w ? ", in the window" : "") + ". CLOSE_WAIT: the most sockets at once; run-queue: every wait for a CPU" + (D.sched.length ? "" : " (not in this recording)") + "; stalls: the waits over the threshold.");
    table(box, "procs", [
      { k: "pid", h: "pid" }, { k: "comm", h: "command", l: 1 }, { k: "opens", h: "opens" }, { k: "closes", h: "closes" },
      { k: "resets", h: "resets" }, { k: "retrans", h: "retrans" }, { k: "close_wait", h: "CLOSE_WAIT" },
      { k: "failed", h: "failed connects" }, { k: "drops", h: "drops" }, { k: "bytes", h: "bytes", f: bytes },
      { k: "waits", h: "run-queue waits", title: "waits for a CPU (the kernel's histograms)" },
      { k: "wait", h: "run-queue wait", f: dur, title: "time spent waiting for a CPU" },
      { k: "stalls", h: "stalls", title: "waits over the stall threshold" },
      { k: "stall_wait", h: "stall wait", f: dur }
    ], procRows(), function (r) { narrowProc(st.p === r.i ? null : r.i); });
    el("h3", {}, box, "Who held the CPU during the stalls");
    table(box, "villains", [
      { k: "pid", h: "pid" }, { k: "comm", h: "command", l: 1 }, { k: "stalls", h: "stalls caused" },
      { k: "wait", h: "wait caused", f: dur }, { k: "max", h: "longest", f: dur }
    ], villainRows(), null);
    document.getElementById("clear").disabled = !st.w && st.p === null && !st.filter;
  }
  function sortBy(id, k) {
    var s = st.sort[id];
    st.sort[id] = [k, s[0] === k ? -s[1] : (k === "pid" || k === "comm" ? 1 : -1)];
    renderTables();
  }
  function narrowTime(a, b) { st.w = [a, Math.max(b, a + 0.001)]; render(); }
  function narrowProc(i) { st.p = i; render(); }
  function clear() { st.w = null; st.p = null; st.filter = ""; render(); }
  document.getElementById("clear").addEventListener("click", clear);
  render();

  // page.html#selftest&comm=NAME&pid=PID: the page drives itself as a user
  // would and writes what it saw into <pre id="selftest">.
  if (location.hash.indexOf("#selftest") === 0) {
    var q = {};
    location.hash.slice(1).split("&").forEach(function (kv) { var p = kv.split("="); q[p[0]] = decodeURIComponent(p[1] || ""); });
    var out = { errors: errors };
    function pids() { return Array.prototype.map.call(document.querySelectorAll("#procs tbody tr[data-pid]"), function (r) { return Number(r.getAttribute("data-pid")); }); }
    function col(k) {
      var idx = Array.prototype.map.call(document.querySelectorAll("#procs th"), function (th) { return th.getAttribute("data-key"); }).indexOf(k);
      return Array.prototype.map.call(document.querySelectorAll("#procs tbody tr[data-pid]"), function (r) { return r.children[idx].textContent; });
    }
    function click(e) {
      ["mousedown", "mouseup", "click"].forEach(function (t) {
        var r = e.getBoundingClientRect();
        e.dispatchEvent(new MouseEvent(t, { bubbles: true, clientX: r.left + r.width / 2, clientY: r.top + r.height / 2 }));
      });
    }
    out.plots = JSON.parse(JSON.stringify(marks));
    out.rows = pids();
    out.table = {};
    ["comm", "opens", "close_wait", "failed", "stalls", "waits"].forEach(function (k) { out.table[k] = col(k); });
    out.villains = Array.prototype.map.call(document.querySelectorAll("#villains tbody tr[data-pid]"), function (r) { return Number(r.getAttribute("data-pid")); });
    var th = function (k) { return document.querySelector("#procs th[data-key=" + k + "]"); };
    click(th("pid"));
    out.sorted_by_pid = { header: th("pid").textContent, pids: pids() };
    click(th("opens"));
    out.sorted_by_opens = { header: th("opens").textContent, pids: pids(), opens: col("opens") };
    click(th("opens"));
    out.sorted_by_opens_asc = { pids: pids(), opens: col("opens") };
    var f = document.getElementById("filter");
    f.value = q.comm || "";
    f.dispatchEvent(new Event("input"));
    out.filtered = { pids: pids(), comms: col("comm") };
    f.value = "";
    f.dispatchEvent(new Event("input"));
    var row = document.querySelector("#procs tbody tr[data-pid='" + q.pid + "']");
    if (row) {
      click(row);
      out.narrowed_to_pid = { scope: document.getElementById("scope").textContent, rows: pids(), plots: JSON.parse(JSON.stringify(marks)) };
      click(document.getElementById("clear"));
    }
    // Click the churn plot at second `at`.
    var at = Number(q.at || 0);
    var svg = document.querySelector("svg[data-plot=churn]"), r = svg.getBoundingClientRect();
    var px = r.left + (L + at / D.span * (W - L - R)) / W * r.width;
    ["mousedown", "mouseup"].forEach(function (t) {
      svg.dispatchEvent(new MouseEvent(t, { bubbles: true, clientX: px, clientY: r.top + r.height / 2 }));
    });
    out.narrowed_to_time = { scope: document.getElementById("scope").textContent, window: st.w, rows: pids(), opens: col("opens") };
    click(document.getElementById("clear"));
    out.cleared = { scope: document.getElementById("scope").textContent, rows: pids().length };
    out.errors = errors;
    var pre = document.getElementById("selftest");
    pre.hidden = false;
    pre.textContent = JSON.stringify(out);
  }
})();
