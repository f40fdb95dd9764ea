// The Sluice dashboard. One WebSocket (/ws) brings a frame of everything about once a second;
// each panel re-renders from the newest frame. No library, no build step: DOM nodes are built
// with `el`, never from HTML strings, so no value from the server is interpreted as markup.
"use strict";

const TOKEN_KEY = "sluice-admin-token";
const STALE_AFTER_MS = 5000;
const RETRY_MAX_MS = 10000;

const state = {
  socket: null,
  retryMs: 1000,
  lastFrameAt: 0,
  frame: null,
};

// ---------------------------------------------------------------- helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    // CSSOM, not a style attribute: the page's content security policy forbids inline styles.
    else if (key === "style") node.style.cssText = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";
function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fmt(value, digits = 1) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return Number(value).toLocaleString(undefined, { maximumFractionDigits: digits });
}

function pct(ratio) {
  return ratio === null || ratio === undefined ? "–" : `${fmt(ratio * 100, 0)}%`;
}

function duration(seconds) {
  const s = Math.floor(seconds);
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (d > 0) return `${d}d ${h}h ${m}m`;
  if (h > 0) return `${h}h ${m}m`;
  if (m > 0) return `${m}m ${s % 60}s`;
  return `${s}s`;
}

function ago(tsMs) {
  const seconds = Math.max(0, (Date.now() - tsMs) / 1000);
  if (seconds < 60) return `${Math.round(seconds)}s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)}m ago`;
  return `${Math.round(seconds / 3600)}h ago`;
}

function clock(tsMs) {
  return new Date(tsMs).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function badge(text, kind) {
  return el("span", { class: `badge ${kind || text}` }, text);
}

function bar(ratio) {
  const width = Math.max(0, Math.min(1, ratio || 0)) * 100;
  return el("div", { class: "bar" }, el("span", { style: `width:${width.toFixed(1)}%` }));
}

/** Replaces a panel's body; `ready` says whether it shows data or an empty state. */
function fill(id, ready, ...content) {
  const panel = document.getElementById(id);
  panel.dataset.state = ready ? "ready" : "empty-state";
  panel.querySelector(".body").replaceChildren(...content.flat());
}

function empty(text) {
  return el("p", { class: "empty" }, text);
}

// ---------------------------------------------------------------- panels

function renderHealth(frame) {
  const o = frame.overview;
  const h = o.health;
  const stats = o.stats;
  fill("health", true,
    el("div", { class: `score ${h.status}`, "data-score": h.score }, String(h.score)),
    el("div", {}, badge(h.status), " ", el("span", { class: "muted" }, `uptime ${duration(o.uptime_s)}`)),
    el("dl", { class: "kv" },
      el("dt", {}, "monitor streams"), el("dd", {}, fmt(stats.downstream_streams_active, 0)),
      el("dt", {}, "upstream streams"), el("dd", {}, fmt(stats.upstream_streams_active, 0)),
      el("dt", {}, "sharing"), el("dd", {}, `${fmt(Math.max(0, stats.shared_subscribers_active - stats.shared_upstreams_active), 0)} monitors ride another's stream`),
      el("dt", {}, "connections"), el("dd", {}, `${o.connections} of ${o.global_cap}`),
      el("dt", {}, "streams failed"), el("dd", {}, fmt(stats.upstream_failures_total, 0)),
    ),
    h.deductions.length
      ? el("ul", { class: "plain" }, h.deductions.map((d) => el("li", {}, `−${fmt(d.points, 0)} `, el("span", { class: "muted" }, d.reason))))
      : el("p", { class: "muted" }, "nothing lowers the score"),
  );
}

function renderEfficiency(frame) {
  const e = frame.overview.efficiency;
  fill("efficiency", e.connections_held > 0,
    e.connections_held > 0 ? [
      el("dl", { class: "kv" },
        el("dt", {}, "connection efficiency"), el("dd", { "data-metric": "connection-efficiency" }, pct(e.connection_efficiency)),
        el("dt", {}, "needed / held"), el("dd", {}, `${e.connections_needed} / ${e.connections_held}`),
        el("dt", {}, "streams per connection"), el("dd", { "data-metric": "streams-per-connection" }, fmt(e.streams_per_connection, 2)),
        el("dt", {}, "idle connections"), el("dd", { "data-metric": "idle" }, pct(e.idle_ratio)),
      ),
      bar(e.connection_efficiency),
    ] : empty("no connections held yet"));
}

// An endpoint's caps with the use against them; "at ..." names those reached now.
function limitsText(l) {
  const caps = [];
  if (l.max_connections != null) caps.push(`${l.connections} / ${l.max_connections} conn.`);
  if (l.max_streams != null) caps.push(`${l.streams} / ${l.max_streams} streams`);
  if (l.max_streams_per_connection != null) caps.push(`${l.max_streams_per_connection} streams per conn.`);
  if (l.connections_per_second != null) caps.push(`${fmt(l.connections_per_second, 1)} conn./s`);
  if (l.streams_per_second != null) caps.push(`${fmt(l.streams_per_second, 1)} new streams/s`);
  if (!caps.length) return "none";
  return caps.join(" · ") + (l.reached.length ? ` (at ${l.reached.join(", ")})` : "");
}

function renderEndpoints(frame) {
  const cards = frame.endpoints.map((e) => {
    const health = e.health.health;
    return el("div", { class: `card ${health}`, "data-endpoint": e.id, "data-health": health, "data-breaker": e.breaker.state },
      el("div", { class: "title" }, el("span", {}, e.id), badge(health)),
      el("div", { class: "muted" }, `region ${e.region} · priority ${e.priority}`),
      el("dl", { class: "kv" },
        el("dt", {}, "load"), el("dd", {}, `${e.streams} / ${e.capacity} streams on ${e.connections} conn.`),
        el("dt", {}, "latency"), el("dd", { "data-metric": "latency" }, e.latency_ms === null ? "–" : `${fmt(e.latency_ms, 1)} ms`),
        el("dt", {}, "breaker"), el("dd", {}, badge(e.breaker.state)),
        el("dt", {}, "limits"), el("dd", { "data-metric": "limits", "data-reached": e.limits.reached.join(" ") }, limitsText(e.limits)),
      ),
      bar(e.capacity ? e.streams / e.capacity : 0),
      e.health.reason ? el("div", { class: "reason" }, e.health.reason) : null,
    );
  });
  fill("endpoints", cards.length > 0, cards.length ? el("div", { class: "cards" }, cards) : empty("no endpoints configured"));
}

function renderBreakers(frame) {
  // Endpoint and monitor breakers always; connection breakers only when they are not closed.
  const shown = frame.breakers.filter((b) => b.scope !== "connection" || b.state !== "closed");
  const order = { endpoint: 0, monitor: 1, connection: 2 };
  shown.sort((a, b) => order[a.scope] - order[b.scope] || a.name.localeCompare(b.name));
  fill("breakers", shown.length > 0, shown.length ? el("div", { class: "scroll" }, el("table", {},
    el("thead", {}, el("tr", {}, el("th", {}, "scope"), el("th", {}, "name"), el("th", {}, "state"), el("th", { class: "num" }, "failures"), el("th", { class: "num" }, "trips"))),
    el("tbody", {}, shown.map((b) => el("tr", { "data-breaker": `${b.scope}/${b.name}`, "data-state": b.state },
      el("td", {}, b.scope), el("td", {}, b.name), el("td", {}, badge(b.state)),
      el("td", { class: "num" }, `${b.window_failures}/${b.window_calls}`), el("td", { class: "num" }, b.trips)))),
  )) : empty("no breakers yet"));
}

const SEVERITY_RANK = { critical: 0, warning: 1, info: 2 };

function renderInsights(frame) {
  const insights = (frame.analytics?.insights || []).slice();
  insights.sort((a, b) => (SEVERITY_RANK[a.severity] ?? 3) - (SEVERITY_RANK[b.severity] ?? 3) || b.last_seen_ms - a.last_seen_ms);
  fill("insights", insights.length > 0, insights.length ? el("div", { class: "scroll" }, insights.slice(0, 12).map((i) =>
    el("div", { class: `insight ${i.severity}`, "data-severity": i.severity },
      el("div", {}, badge(i.severity), " ", i.title, el("span", { class: "muted" }, ` · ${ago(i.last_seen_ms)}${i.occurrences > 1 ? ` · ×${i.occurrences}` : ""}`)),
      el("div", { class: "desc" }, i.description)))) : empty(frame.analytics ? "no insights yet" : "analytics engine not running"));
}

function renderHeatmap(frame) {
  const heat = frame.analytics?.heatmap;
  const rows = heat?.rows || [];
  const values = rows.flatMap((r) => r.values).filter((v) => v !== null);
  if (!values.length) {
    fill("heatmap", false, empty("collecting samples"));
    return;
  }
  const max = Math.max(1, ...values);
  const label = 70, cell = 16, gap = 2, rowHeight = 22;
  const cols = rows[0].values.length;
  const width = label + cols * cell;
  const height = rows.length * rowHeight + 18;
  const nodes = [];
  rows.forEach((row, r) => {
    const y = r * rowHeight;
    nodes.push(svg("text", { x: 0, y: y + 15 }, row.group));
    row.values.forEach((v, c) => {
      const alpha = v === null ? 0 : 0.15 + 0.85 * (v / max);
      nodes.push(svg("rect", {
        x: label + c * cell, y, width: cell - gap, height: rowHeight - 3,
        fill: v === null ? "#26303b" : `rgba(88,166,255,${alpha.toFixed(3)})`,
      }, svg("title", {}, `${row.group} ${clock(heat.start_ms + c * heat.bucket_ms)}: ${v === null ? "no samples" : fmt(v, 1) + " connections"}`)));
    });
  });
  const bottom = rows.length * rowHeight + 12;
  nodes.push(svg("text", { x: label, y: bottom }, "−10 min"));
  nodes.push(svg("text", { x: label + (cols * cell) / 2 - 15, y: bottom }, "−5 min"));
  nodes.push(svg("text", { x: width - 25, y: bottom }, "now"));
  fill("heatmap", true,
    svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "connections per group over time" }, nodes),
    el("div", { class: "legend" }, `darkest = ${fmt(max, 1)} connections; each cell is 10 s`));
}

function renderPrediction(frame) {
  const p = frame.analytics?.prediction;
  if (!p || !p.points.length) {
    fill("prediction", false, empty(frame.analytics ? "collecting history: a forecast needs 2 hours of minute rollups" : "analytics engine not running"));
    return;
  }
  const W = 600, H = 180, left = 36, bottom = 20, top = 8;
  const maxY = Math.max(1, ...p.points.map((pt) => pt.upper)) * 1.1;
  const t0 = p.points[0].ts_ms, t1 = p.points[p.points.length - 1].ts_ms;
  const x = (ts) => left + ((ts - t0) / Math.max(1, t1 - t0)) * (W - left - 8);
  const y = (v) => top + (1 - v / maxY) * (H - top - bottom);
  const upper = p.points.map((pt) => `${x(pt.ts_ms).toFixed(1)},${y(pt.upper).toFixed(1)}`);
  const lower = p.points.slice().reverse().map((pt) => `${x(pt.ts_ms).toFixed(1)},${y(pt.lower).toFixed(1)}`);
  const mean = p.points.map((pt) => `${x(pt.ts_ms).toFixed(1)},${y(pt.mean).toFixed(1)}`);
  const ticks = [];
  for (let i = 0; i < p.points.length; i += 4) {
    ticks.push(svg("text", { x: x(p.points[i].ts_ms) - 12, y: H - 4 }, clock(p.points[i].ts_ms)));
  }
  fill("prediction", true,
    svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "forecast of connections needed" },
      svg("line", { x1: left, y1: y(0), x2: W - 8, y2: y(0), stroke: "#26303b" }),
      svg("text", { x: 0, y: y(maxY / 1.1) + 4 }, fmt(maxY / 1.1, 0)),
      svg("text", { x: 0, y: y(0) }, "0"),
      svg("polygon", { points: upper.concat(lower).join(" "), fill: "rgba(88,166,255,0.18)", stroke: "none", "data-series": "band" }),
      svg("polyline", { points: mean.join(" "), fill: "none", stroke: "#58a6ff", "stroke-width": 2, "data-series": "mean" }),
      ticks),
    el("dl", { class: "kv" },
      el("dt", {}, "next hour"), el("dd", {}, `up to ${fmt(p.next_hour.mean)} (band ${fmt(p.next_hour.lower)}–${fmt(p.next_hour.upper)})`),
      el("dt", {}, "next 6 hours"), el("dd", {}, `up to ${fmt(p.next_6h.mean)} (band ${fmt(p.next_6h.lower)}–${fmt(p.next_6h.upper)})`),
      el("dt", {}, "model"), el("dd", {}, `${p.method} over ${p.history_steps} steps of ${p.step_minutes} min, ${ago(p.generated_ms)}`),
    ));
}

function renderGroups(frame) {
  const scaling = frame.analytics?.scaling || [];
  fill("groups", frame.groups.length > 0,
    el("table", {},
      el("thead", {}, el("tr", {}, el("th", {}, "group"), el("th", { class: "num" }, "held"), el("th", { class: "num" }, "target"), el("th", { class: "num" }, "limit"), el("th", { class: "num" }, "streams"), el("th", { class: "num" }, "waiting"))),
      el("tbody", {}, frame.groups.map((g) => el("tr", { "data-group": g.class },
        el("td", {}, g.class), el("td", { class: "num" }, g.held), el("td", { class: "num" }, g.target || "–"), el("td", { class: "num" }, g.max_connections),
        el("td", { class: "num" }, `${g.streams}/${g.capacity}`), el("td", { class: "num" }, g.waiting))))),
    el("h3", {}, "scaling actions"),
    scaling.length
      ? el("ul", { class: "plain scroll", "data-list": "scaling" }, scaling.slice(0, 8).map((s) => el("li", {},
        el("span", { class: "muted" }, `${clock(s.ts_ms)} `), `${s.class} ${s.applied >= 0 ? "+" : ""}${s.applied} → ${s.to} `,
        el("span", { class: "muted reason-text" }, s.reason))))
      : empty("no scaling actions yet"));
}

function pluginRow(slot) {
  const describe = (p, role) => {
    const info = p.plugin;
    const failures = p.failures.total;
    const agreement = p.shadow.agreement;
    return el("div", { "data-role": role },
      badge(role === "shadow" ? "shadow" : p.disabled ? "disabled" : "active", role === "shadow" ? "shadow" : p.disabled ? "disabled" : "healthy"), " ",
      `${info.name} v${info.version} `,
      el("span", { class: "muted" }, `${fmt(p.calls, 0)} calls · ${fmt(failures, 0)} failures`
        + (role === "shadow" ? ` · agreement ${agreement === null ? "–" : pct(agreement)} of ${fmt(p.shadow.compared, 0)}` : "")));
  };
  return el("tr", { "data-slot": slot.slot },
    el("td", {}, slot.slot),
    el("td", {},
      slot.active ? describe(slot.active, "active") : el("div", { "data-role": "builtin" }, badge("built-in", "info"), " ", slot.builtin),
      slot.shadow ? describe(slot.shadow, "shadow") : null,
      el("div", { class: "muted" }, `${fmt(slot.fallbacks, 0)} answered by the built-in policy`)));
}

/** The router's model: the built-in neutral scorer, or an ONNX model with its counters. */
function scorerRow(scorer) {
  if (!scorer) return null;
  let what;
  if (typeof scorer.model === "string") {
    what = [badge("built-in", "info"), ` ${scorer.model}`];
  } else if (scorer.model) {
    what = [badge("model", "healthy"), ` ${scorer.model.name} ${scorer.model.version} `,
      el("span", { class: "muted" }, `${scorer.model.features} features · ${fmt(scorer.calls, 0)} calls · ${fmt(scorer.failures, 0)} failures · ${fmt(scorer.timeouts, 0)} over deadline`)];
  } else {
    what = [badge("unavailable", "open"), " the router uses its built-in policy"];
  }
  const error = scorer.last_error || scorer.unavailable;
  return el("tr", { "data-scorer": scorer.model ? "ready" : "unavailable" },
    el("td", {}, "scorer"),
    el("td", {}, el("div", {}, what), error ? el("div", { class: "reason" }, error) : null));
}

function renderPlugins(frame) {
  fill("plugins", frame.plugins.length > 0,
    el("table", {}, el("tbody", {}, frame.plugins.map(pluginRow), scorerRow(frame.scorer))));
}

function renderDecisions(frame) {
  const decisions = frame.decisions;
  fill("decisions", decisions.length > 0, decisions.length ? el("div", { class: "scroll" }, el("table", {},
    el("thead", {}, el("tr", {}, el("th", {}, "when"), el("th", {}, "monitor"), el("th", {}, "method"), el("th", { class: "num" }, "connection"), el("th", { class: "num" }, "candidates"), el("th", { class: "num" }, "confidence"), el("th", {}, "policy"), el("th", {}, "reason"))),
    el("tbody", {}, decisions.map((d) => el("tr", { "data-monitor": d.monitor },
      el("td", {}, ago(d.ts_ms)), el("td", {}, d.monitor), el("td", {}, d.method.split("/").pop()),
      el("td", { class: "num" }, `#${d.connection_id}`), el("td", { class: "num" }, d.candidates), el("td", { class: "num" }, pct(d.confidence)),
      el("td", {}, d.policy, d.fallback ? [" ", badge("fallback", "warning")] : null),
      el("td", { class: "reason-text" }, d.reason)))))) : empty("no streams routed yet"));
}

const RENDERERS = [renderHealth, renderEfficiency, renderEndpoints, renderBreakers, renderInsights,
  renderHeatmap, renderPrediction, renderGroups, renderPlugins, renderDecisions];

function render(frame) {
  for (const renderer of RENDERERS) {
    try {
      renderer(frame);
    } catch (error) {
      // One panel's bad day must not blank the others.
      console.error(renderer.name, error);
    }
  }
}

// ---------------------------------------------------------------- connection

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function setLink(status, text) {
  const link = document.getElementById("link");
  link.dataset.state = status;
  link.textContent = text || status;
}

function hex(text) {
  return Array.from(new TextEncoder().encode(text), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Checks the token with a plain request first: a refused WebSocket gives the page no status. */
async function authorized() {
  const headers = token() ? { Authorization: `Bearer ${token()}` } : {};
  try {
    const response = await fetch("/api/v1/stats", { headers, cache: "no-store" });
    if (response.status === 401) return false;
    return true;
  } catch {
    return true; // Unreachable: let the socket's retry loop deal with it.
  }
}

async function connect() {
  setLink(state.frame ? "reconnecting" : "connecting");
  if (!(await authorized())) {
    showLogin(token() ? "That token was refused." : "");
    return;
  }
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const protocols = ["sluice.v1"];
  if (token()) protocols.push(`bearer.${hex(token())}`);
  const socket = new WebSocket(`${scheme}://${location.host}/ws`, protocols);
  state.socket = socket;
  socket.onopen = () => {
    state.retryMs = 1000;
    setLink("live");
  };
  socket.onmessage = (event) => {
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch (error) {
      console.error("unreadable frame", error);
      return;
    }
    if (frame.type !== "tick") return;
    state.frame = frame;
    state.lastFrameAt = Date.now();
    setLink("live");
    document.getElementById("updated").textContent = `updated ${new Date(frame.overview.ts_ms).toLocaleTimeString()}`;
    render(frame);
  };
  socket.onclose = () => {
    if (state.socket !== socket) return;
    state.socket = null;
    const wait = state.retryMs;
    state.retryMs = Math.min(RETRY_MAX_MS, state.retryMs * 2);
    setLink("reconnecting", `reconnecting in ${Math.round(wait / 1000)}s`);
    setTimeout(connect, wait);
  };
}

function showLogin(message) {
  setLink("unauthorized", "token needed");
  document.getElementById("login").hidden = false;
  document.getElementById("login-error").textContent = message;
}

function start() {
  document.getElementById("login").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value);
    document.getElementById("login").hidden = true;
    connect();
  });
  // A socket that stays open but stops delivering (a stalled proxy between) is replaced.
  setInterval(() => {
    if (state.socket && state.lastFrameAt && Date.now() - state.lastFrameAt > STALE_AFTER_MS) {
      setLink("reconnecting", "no data for 5s");
      const stale = state.socket;
      state.lastFrameAt = 0;
      stale.close();
    }
  }, 1000);
  connect();
}

start();
