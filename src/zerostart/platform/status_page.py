"""The gateway's status page: ``GET /`` from a browser, one self-contained HTML document.

What an operator sees: every model with its state and replicas, its last
starts as a waterfall of their phases (start path, restore / slot assign /
boot phases, as the starter measured them), the fallbacks taken and why,
requests per second and errors by status, the warm pool's slots and the
pool sizing (the LP's last plan when ``[pool] sizing = "lp"``).

The document holds no data and fetches nothing from outside: its script reads
``GET /status`` (the same JSON API clients use) once a second and draws it
with DOM calls (``textContent`` only: names and error messages from the
platform are never parsed as HTML). A gateway with a key answers ``/status``
only with it, so the page asks for the key once and keeps it in the tab's
``sessionStorage``; the page itself carries nothing secret and is served
without one. ``Content-Security-Policy`` allows exactly this document's own
script and style (by their sha256) and connections to this origin.

No build step: the page is this module's string.

Runtime module (the gateway): standard library only.
"""

from __future__ import annotations

import base64
import hashlib

REFRESH_MS = 1000  # how often the page re-reads /status

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1c2330}
header{background:#1c2330;color:#fff;padding:10px 18px;display:flex;gap:18px;align-items:baseline}
header h1{font-size:17px;margin:0}
header .muted{color:#aab3c2}
main{padding:14px 18px;display:grid;gap:14px}
section{background:#fff;border:1px solid #dde2ea;border-radius:6px;padding:12px 14px}
h2{font-size:15px;margin:0 0 8px}
h3{font-size:13px;margin:10px 0 4px;color:#4a5568}
table{border-collapse:collapse;width:100%;font-size:13px}
td,th{border-bottom:1px solid #eef1f5;padding:3px 6px;text-align:left}
.state{display:inline-block;padding:1px 8px;border-radius:9px;font-size:12px;color:#fff}
.s-zero{background:#718096}.s-starting{background:#d69e2e}.s-ready{background:#38a169}
.s-failed{background:#e53e3e}.s-other{background:#4a5568}
.facts{display:flex;flex-wrap:wrap;gap:14px;font-size:13px;color:#4a5568}
.facts b{color:#1c2330}
.track{width:280px;background:#eef1f5;border-radius:3px}
.wf{display:flex;height:16px;min-width:2px;border-radius:3px;overflow:hidden}
.wf span{display:block;height:100%}
.legend span{display:inline-block;margin-right:10px;font-size:12px}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px;border-radius:2px}
.error{color:#c53030}
.small{font-size:12px;color:#718096}
form{display:flex;gap:8px}
"""

_SCRIPT = """
"use strict";
const REFRESH_MS = __REFRESH_MS__;
const WATERFALL_MS = 5000;  // a start this long fills the bar's track
const COLORS = ["#3182ce","#dd6b20","#38a169","#805ad5","#d53f8c","#319795","#b7791f","#2d3748"];
const phaseColor = {};
function colorOf(name) {
  if (!(name in phaseColor)) phaseColor[name] = COLORS[Object.keys(phaseColor).length % COLORS.length];
  return phaseColor[name];
}
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "style") e.style.cssText = v; else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return e;
}
function fact(label, value) { return el("span", {}, label + " ", el("b", {}, value)); }
function ms(v) { return v == null ? "-" : (v >= 1000 ? (v / 1000).toFixed(2) + " s" : v.toFixed(1) + " ms"); }
function stateClass(s) {
  return "state s-" + (["zero", "starting", "ready", "failed"].includes(s) ? s : "other");
}
let last = null;  // {at, totals: {model: n}} of the previous refresh, for rates
function table(head, rows) {
  return el("table", {}, el("tr", {}, ...head.map(h => el("th", {}, h))),
            ...rows.map(r => el("tr", {}, ...r.map(c => el("td", {}, c)))));
}
function waterfall(start) {
  const phases = Object.entries(start.phases_ms || {});
  const total = Math.max(start.total_ms || 0, phases.reduce((a, [, v]) => a + v, 0), 1e-6);
  const bar = el("div", {class: "wf", style: "width:" + Math.max(2, Math.min(100, 100 * total / WATERFALL_MS)) + "%"});
  for (const [name, v] of phases) {
    bar.append(el("span", {title: name + " " + ms(v),
                           style: "width:" + (100 * v / total) + "%;background:" + colorOf(name)}));
  }
  return el("div", {class: "track"}, bar);
}
function modelSection(name, m, reqs, rate, arrivals) {
  const sec = el("section", {"data-model": name});
  sec.append(el("h2", {}, name + " ", el("span", {class: stateClass(m.state), "data-state": m.state}, m.state)));
  const errors = Object.entries(reqs).filter(([code]) => Number(code) >= 500).reduce((a, [, n]) => a + n, 0);
  const refused = Object.entries(reqs).filter(([code]) => Number(code) >= 400 && Number(code) < 500).reduce((a, [, n]) => a + n, 0);
  sec.append(el("div", {class: "facts"},
    fact("source", m.source ? m.source.kind + " " + m.source.value : "-"),
    fact("device", m.device || "-"),
    fact("replicas", String((m.replicas || []).length) + " / desired " + m.desired),
    fact("starting", m.starting), fact("queued", m.queued), fact("in flight", m.in_flight),
    fact("requests/s", rate == null ? "-" : rate.toFixed(2)),
    fact("arrivals/s (window)", arrivals == null ? "-" : arrivals.toFixed(3)),
    fact("5xx", errors), fact("4xx", refused),
    fact("idle", m.idle_s == null ? "-" : m.idle_s.toFixed(1) + " s")));
  if (m.last_error) sec.append(el("p", {class: "error"}, "last error: " + m.last_error));
  if ((m.replicas || []).length) {
    sec.append(el("h3", {}, "replicas"));
    sec.append(table(["pid", "port", "state", "in flight", "start path", "up"],
      m.replicas.map(r => [r.pid, r.port, r.state, r.in_flight, r.start_path, r.up_s.toFixed(1) + " s"])));
  }
  const starts = m.recent_starts || (m.last_start ? [m.last_start] : []);
  if (starts.length) {
    sec.append(el("h3", {}, "last starts (newest first; the track is 5 s)"));
    const rows = starts.slice().reverse().map(s => [
      new Date(s.at * 1000).toLocaleTimeString(), s.path, ms(s.total_ms), waterfall(s),
      (s.fallbacks || []).map(f => f.path + ": " + f.reason).join("; ") || "-"]);
    sec.append(table(["at", "path", "total", "phases", "fallbacks"], rows));
    const names = new Set(starts.flatMap(s => Object.keys(s.phases_ms || {})));
    sec.append(el("div", {class: "legend"}, ...[...names].map(n =>
      el("span", {}, el("i", {style: "background:" + colorOf(n)}), n))));
  }
  const counts = Object.entries(m.cold_starts || {});
  if (counts.length) sec.append(el("p", {class: "small"}, "starts by path: " + counts.map(([p, n]) => p + " " + n).join(", ")));
  return sec;
}
function poolSection(status) {
  const sec = el("section", {id: "pool"}, el("h2", {}, "warm pool and sizing"));
  const starter = status.starter || {};
  const pool = starter.pool;
  if (pool) {  // per device kind: size, ready, booting and the counters
    const kinds = Object.keys(pool);
    const cols = [...new Set(kinds.flatMap(k => Object.keys(pool[k])))];
    sec.append(table(["slots", ...cols], kinds.map(k => [k, ...cols.map(c => pool[k][c] ?? "-")])));
  } else {
    sec.append(el("p", {class: "small"}, "no warm pool"));
  }
  if (starter.counts) sec.append(el("p", {class: "small"}, "starts and fallbacks: " +
    Object.entries(starter.counts).map(([k, n]) => k + " " + n).join(", ")));
  const sizing = status.pool_sizing || {};
  sec.append(el("h3", {}, "sizing: " + (sizing.sizing || "-")));
  if (sizing.last) {
    sec.append(table(["kind", "slots", "LP slots", "reason"],
      Object.keys(sizing.last.sizes || {}).map(k => [k, sizing.last.sizes[k],
        (sizing.last.lp_slots || {})[k] ?? "-", (sizing.last.reasons || {})[k] ?? "-"])));
    sec.append(el("p", {class: "small"}, "last plan " + new Date(sizing.last.at * 1000).toLocaleTimeString() +
      ", solved in " + ms(1000 * sizing.last.solve_s)));
  } else if (sizing.sizes) {
    sec.append(el("p", {class: "small"}, "fixed sizes: " + JSON.stringify(sizing.sizes)));
  }
  return sec;
}
function render(status) {
  const now = Date.now() / 1000;
  const totals = {};
  const main = el("main", {id: "models"});
  for (const [name, m] of Object.entries(status.models || {}).sort()) {
    const reqs = (status.requests || {})[name] || {};
    totals[name] = Object.values(reqs).reduce((a, n) => a + n, 0);
    const rate = last && name in last.totals ? (totals[name] - last.totals[name]) / Math.max(now - last.at, 1e-3) : null;
    const demand = ((status.demand || {}).models || {})[name] || {};
    main.append(modelSection(name, m, reqs, rate, demand.arrivals_per_s));
  }
  main.append(poolSection(status));
  last = {at: now, totals};
  document.getElementById("models").replaceWith(main);
  document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString() +
    (status.draining ? " - draining" : "");
}
function askForKey(message) {
  const form = el("form", {id: "keyform"}, el("input", {type: "password", id: "key", placeholder: "gateway API key"}),
                  el("button", {type: "submit"}, "show status"));
  form.addEventListener("submit", ev => {
    ev.preventDefault();
    sessionStorage.setItem("zerostart-key", document.getElementById("key").value);
    refresh();
  });
  const main = el("main", {id: "models"}, el("section", {}, el("p", {class: "error"}, message), form));
  document.getElementById("models").replaceWith(main);
}
let timer = null;
let askedWith = null;  // the key form's message while it is shown (redrawn only when it changes)
async function refresh() {
  clearTimeout(timer);
  const key = sessionStorage.getItem("zerostart-key");
  const headers = key ? {"Authorization": "Bearer " + key} : {};
  try {
    const resp = await fetch("/status", {headers, cache: "no-store"});
    if (resp.status === 401) {
      const message = key ? "that key was refused" : "this gateway needs its key";
      if (askedWith !== message) askForKey(message);
      askedWith = message;
      return;
    }
    askedWith = null;
    if (!resp.ok) throw new Error("/status answered " + resp.status);
    render(await resp.json());
  } catch (err) {
    document.getElementById("updated").textContent = "cannot read /status: " + err.message;
  } finally {
    timer = setTimeout(refresh, REFRESH_MS);
  }
}
refresh();
""".replace("__REFRESH_MS__", str(REFRESH_MS))

_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<link rel="icon" href="data:,">
<title>zerostart gateway</title>
<style>__STYLE__</style></head>
<body><header><h1>zerostart gateway</h1><span class="muted" id="updated">loading /status...</span></header>
<main id="models"></main>
<script>__SCRIPT__</script></body></html>
""".replace("__STYLE__", _STYLE).replace("__SCRIPT__", _SCRIPT)


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


PAGE = _HTML.encode()
CONTENT_TYPE = "text/html; charset=utf-8"
HEADERS = [
    (
        "content-security-policy",
        f"default-src 'none'; script-src {_csp_hash(_SCRIPT)}; style-src {_csp_hash(_STYLE)}; "
        "connect-src 'self'; img-src data:; frame-ancestors 'none'; base-uri 'none'; "
        "form-action 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("cache-control", "no-store"),
    ("referrer-policy", "no-referrer"),
]


def wants_html(accept: str) -> bool:
    """True when the ``Accept`` header ranks ``text/html`` above JSON (what a browser sends).

    ``Accept`` is RFC 9110 §12.5.1: media ranges with optional ``q`` weights;
    an API client that sends none, ``*/*`` or ``application/json`` keeps the
    JSON answer.
    """
    best_html, best_json = 0.0, 0.0
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for p in params:
            name, _, value = p.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        media = media.lower()
        if media in ("text/html", "application/xhtml+xml"):
            best_html = max(best_html, q)
        elif media in ("application/json", "*/*"):
            best_json = max(best_json, q * (0.5 if media == "*/*" else 1.0))
    return best_html > 0 and best_html >= best_json
