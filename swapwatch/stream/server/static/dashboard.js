// swapwatch dashboard: tiles per stream, alerts, latency chart and event log, live from the event feed.
//
// Auth: the token is typed once, kept in sessionStorage (gone when the tab closes) and sent as an
// `Authorization: Bearer` header on API calls. EventSource cannot send headers, so the feed is opened
// with a short-lived ticket from POST /api/ticket (never with the token itself); when the feed drops,
// a new ticket is fetched and the feed reopened. With auth off on the server, no token is asked for.
//
// Everything a test needs is in stable attributes: tiles are `.tile[data-stream=NAME]` with
// data-state (clear|suspicious|alert), data-source-state and data-node (cluster: the node running it); faces are `.face[data-track][data-state][data-score]`;
// events are `#event-log li[data-type][data-stream][data-state]`; `#alerts[data-count]`; `#conn[data-state]`.
"use strict";

const TOKEN_KEY = "swapwatch.token";
const MAX_LOG = 300;
const CHART_SECONDS = 120;
const COLORS = ["#4a90d9", "#e0a526", "#3fb37f", "#c678dd", "#e5484d", "#56b6c2", "#d19a66", "#98c379"];

const $ = (sel) => document.querySelector(sel);
let token = sessionStorage.getItem(TOKEN_KEY) || "";
let feed = null;
let retryTimer = null;
let eventCount = 0;
const series = new Map();   // stream -> [{t, p50, p95}]
const colors = new Map();   // stream -> color
const alerts = new Map();   // "stream#track" -> {stream, track, score, time}

// --- API --------------------------------------------------------------------------------------------------

class AuthError extends Error {}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token) headers["Authorization"] = "Bearer " + token;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) throw new AuthError("the server refused the token");
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  }
  return body;
}

function setConn(state, text) {
  const el = $("#conn");
  el.dataset.state = state;
  el.textContent = text || state;
}

function askForToken(message) {
  closeFeed();
  setConn("auth", "token needed");
  $("#login").hidden = false;
  $("#logout").hidden = true;
  $("#login-error").textContent = message || "";
  $("#token").focus();
}

// --- the feed ---------------------------------------------------------------------------------------------

function closeFeed() {
  if (feed) { feed.close(); feed = null; }
  if (retryTimer) { clearTimeout(retryTimer); retryTimer = null; }
}

async function openFeed() {
  closeFeed();
  setConn("connecting", "connecting");
  let query = "backlog=200";
  try {
    const status = await api("/api/status");
    renderStatus(status);
    if (status.server && status.server.auth) {
      const t = await api("/api/ticket", { method: "POST" });
      query += "&ticket=" + encodeURIComponent(t.ticket);
    }
  } catch (err) {
    if (err instanceof AuthError) { askForToken(token ? "wrong token" : ""); return; }
    setConn("offline", "offline");
    retryTimer = setTimeout(openFeed, 3000);
    return;
  }
  $("#login").hidden = true;
  $("#logout").hidden = !token;
  const source = new EventSource("/api/events/stream?" + query);
  feed = source;
  source.onopen = () => setConn("live", "live");
  source.addEventListener("status", (m) => renderStatus(JSON.parse(m.data)));
  source.addEventListener("event", (m) => onEvent(JSON.parse(m.data)));
  source.addEventListener("dropped", (m) => {
    const d = JSON.parse(m.data);
    logLine({ type: "notice", stream: "-", state: "clear", text: `the feed dropped ${d.dropped} messages (slow connection)` });
  });
  source.onerror = () => {
    // A closed EventSource will not retry by itself (e.g. 401 on an expired ticket): reopen with a new one.
    if (source.readyState === EventSource.CLOSED || feed !== source) {
      setConn("offline", "reconnecting");
      closeFeed();
      retryTimer = setTimeout(openFeed, 2000);
    } else {
      setConn("connecting", "reconnecting");
    }
  };
}

// --- tiles ------------------------------------------------------------------------------------------------

function tileFor(name) {
  for (const el of document.querySelectorAll("#tiles .tile")) {
    if (el.dataset.stream === name) return el;
  }
  const node = $("#tile-template").content.firstElementChild.cloneNode(true);
  node.dataset.stream = name;
  node.id = "tile-" + name.replace(/[^A-Za-z0-9_-]/g, "_");
  node.querySelector(".name").textContent = name;
  node.querySelector(".remove").addEventListener("click", () => removeStream(name));
  $("#tiles").appendChild(node);
  return node;
}

const fmt = (v, digits = 3) => (v === null || v === undefined ? "-" : Number(v).toFixed(digits));

function renderFaces(tile, tracks) {
  const list = tile.querySelector(".faces");
  list.replaceChildren();
  for (const t of tracks) {
    const li = document.createElement("li");
    li.className = "face";
    li.dataset.track = t.track;
    li.dataset.state = t.state;
    li.dataset.score = t.score === null ? "" : t.score;
    const label = document.createElement("span");
    label.textContent = `#${t.track} ${t.state}`;
    const bar = document.createElement("span");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = `${Math.round(100 * Math.max(0, Math.min(1, t.score || 0)))}%`;
    bar.appendChild(fill);
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = fmt(t.score);
    li.append(label, bar, score);
    list.appendChild(li);
  }
}

function renderStatus(status) {
  const streams = status.streams || {};
  const names = Object.keys(streams);
  for (const el of document.querySelectorAll("#tiles .tile")) {
    if (!(el.dataset.stream in streams)) el.remove();
  }
  const now = Date.now() / 1000;
  for (const name of names) {
    const s = streams[name];
    const tile = tileFor(name);
    tile.dataset.state = s.state || "clear";
    tile.dataset.sourceState = s.source_state || "connecting";
    tile.dataset.running = s.running ? "true" : "false";
    tile.querySelector(".source-state").textContent = s.source_state || "";
    tile.querySelector(".verdict").textContent = s.state || "clear";
    // In a cluster every node shows every stream; the badge says which node runs it (none: pending).
    const nodeBadge = tile.querySelector(".node");
    const owner = status.cluster ? (s.node || status.cluster.node) : null;
    nodeBadge.hidden = !status.cluster;
    nodeBadge.textContent = owner ? `on ${owner}` : "unassigned";
    tile.dataset.node = owner || "";
    tile.querySelector(".fps").textContent = fmt(s.fps, 1);
    const lat = s.latency_recent_ms || s.latency_ms;
    tile.querySelector(".latency").textContent = lat ? `${fmt(lat.p50, 0)} / ${fmt(lat.p95, 0)} ms` : "-";
    tile.querySelector(".frames").textContent = s.frames || 0;
    tile.querySelector(".top-score").textContent = fmt(s.top_score);
    tile.querySelector(".error-text").textContent = s.error || "";
    renderFaces(tile, s.tracks || []);
    if (s.latency_recent_ms) {
      if (!series.has(name)) series.set(name, []);
      series.get(name).push({ t: now, p50: s.latency_recent_ms.p50, p95: s.latency_recent_ms.p95 });
    }
    // An alert stays listed while the track is in alert.
    for (const key of [...alerts.keys()]) {
      const [stream, track] = key.split("#");
      if (stream !== name) continue;
      const t = (s.tracks || []).find((x) => String(x.track) === track);
      if (!t || t.state !== "alert") alerts.delete(key);
    }
    for (const t of s.tracks || []) {
      if (t.state === "alert") alerts.set(`${name}#${t.track}`, { stream: name, track: t.track, score: t.score });
    }
  }
  for (const key of [...alerts.keys()]) {
    if (!(key.split("#")[0] in streams)) alerts.delete(key);
  }
  for (const name of [...series.keys()]) {
    if (!(name in streams)) series.delete(name);
    else series.set(name, series.get(name).filter((p) => p.t >= now - CHART_SECONDS));
  }
  $("#tiles").dataset.count = names.length;
  $("#stream-count").textContent = names.length;
  $("#no-streams").hidden = names.length > 0;
  renderAlerts();
  drawChart();
}

function renderAlerts() {
  const list = $("#alert-list");
  list.replaceChildren();
  for (const a of alerts.values()) {
    const li = document.createElement("li");
    li.dataset.stream = a.stream;
    li.dataset.track = a.track;
    li.textContent = `ALERT ${a.stream}: face #${a.track}, score ${fmt(a.score)}`;
    list.appendChild(li);
  }
  $("#alerts").dataset.count = alerts.size;
  $("#alerts").hidden = alerts.size === 0;
}

async function removeStream(name) {
  try {
    await api("/api/streams/" + encodeURIComponent(name), { method: "DELETE" });
  } catch (err) {
    if (err instanceof AuthError) askForToken("wrong token");
  }
}

// --- events -----------------------------------------------------------------------------------------------

function describe(e) {
  const time = (e.time || "").slice(11, 23);
  if (e.type === "stream") return `${time} ${e.stream} source ${e.source_state}${e.reason ? ": " + e.reason : ""}`;
  if (e.type === "summary") {
    return `${time} ${e.stream} summary: ${e.state}, ${e.tracks} face(s), top ${fmt(e.score)}, ${fmt(e.fps, 1)} fps`;
  }
  const what = e.ended ? "ended" : `${e.previous_state} -> ${e.state}`;
  return `${time} ${e.stream} face #${e.track} ${what}, score ${fmt(e.score)} (raw ${fmt(e.raw_score)})` +
    (e.latency_ms !== null && e.latency_ms !== undefined ? `, ${fmt(e.latency_ms, 0)} ms` : "");
}

function logLine(e) {
  const log = $("#event-log");
  const li = document.createElement("li");
  li.dataset.type = e.type;
  li.dataset.stream = e.stream;
  li.dataset.state = e.state;
  if (e.track !== null && e.track !== undefined) li.dataset.track = e.track;
  if (e.id) li.dataset.id = e.id;
  if (e.ended) li.dataset.ended = "true";
  li.textContent = e.text || describe(e);
  log.prepend(li);
  while (log.children.length > MAX_LOG) log.lastElementChild.remove();
  eventCount += 1;
  log.dataset.count = eventCount;
  $("#event-count").textContent = eventCount;
}

function onEvent(e) {
  logLine(e);
  if (e.type === "state") {
    const key = `${e.stream}#${e.track}`;
    if (e.state === "alert" && !e.ended) alerts.set(key, { stream: e.stream, track: e.track, score: e.score });
    else alerts.delete(key);
    renderAlerts();
    const tile = tileFor(e.stream);
    if (!e.ended && e.state === "alert") tile.dataset.state = "alert";
  } else if (e.type === "stream") {
    tileFor(e.stream).dataset.sourceState = e.source_state;
    tileFor(e.stream).querySelector(".source-state").textContent = e.source_state;
  }
}

// --- latency chart ------------------------------------------------------------------------------------------

function colorOf(name) {
  if (!colors.has(name)) colors.set(name, COLORS[colors.size % COLORS.length]);
  return colors.get(name);
}

function drawChart() {
  const canvas = $("#latency-chart");
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, left = 44, bottom = 20;
  ctx.clearRect(0, 0, w, h);
  let top = 50;
  for (const points of series.values()) for (const p of points) top = Math.max(top, p.p95 || 0);
  top = Math.ceil(top / 50) * 50;
  const now = Date.now() / 1000;
  const x = (t) => left + (w - left - 8) * (1 - (now - t) / CHART_SECONDS);
  const y = (v) => (h - bottom) - (h - bottom - 8) * (v / top);
  ctx.strokeStyle = "#2c3540"; ctx.fillStyle = "#8a96a3"; ctx.font = "11px sans-serif"; ctx.lineWidth = 1;
  for (let v = 0; v <= top; v += top / 4) {
    ctx.beginPath(); ctx.moveTo(left, y(v)); ctx.lineTo(w - 8, y(v)); ctx.stroke();
    ctx.fillText(`${Math.round(v)} ms`, 2, y(v) + 4);
  }
  ctx.fillText(`-${CHART_SECONDS} s`, left, h - 4);
  ctx.fillText("now", w - 30, h - 4);
  const legend = $("#latency-legend");
  legend.replaceChildren();
  for (const [name, points] of series) {
    const color = colorOf(name);
    ctx.strokeStyle = color; ctx.lineWidth = 2; ctx.beginPath();
    points.forEach((p, i) => (i ? ctx.lineTo(x(p.t), y(p.p95)) : ctx.moveTo(x(p.t), y(p.p95))));
    ctx.stroke();
    const li = document.createElement("li");
    li.dataset.stream = name;
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = color;
    const last = points[points.length - 1];
    li.append(sw, document.createTextNode(`${name} p95 ${last ? fmt(last.p95, 0) : "-"} ms`));
    legend.appendChild(li);
  }
}

// --- forms ----------------------------------------------------------------------------------------------

function init() {
  $("#login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = $("#token").value.trim();
    $("#token").value = "";
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    openFeed();
  });
  $("#logout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    token = "";
    askForToken("");
  });
  $("#hide-summaries").addEventListener("change", (ev) => {
    $("#event-log").classList.toggle("hide-summaries", ev.target.checked);
  });
  $("#event-log").classList.toggle("hide-summaries", $("#hide-summaries").checked);
  $("#add-stream").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = { url: $("#add-url").value.trim() };
    const name = $("#add-name").value.trim();
    if (name) body.name = name;
    $("#add-error").textContent = "";
    try {
      await api("/api/streams", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      $("#add-url").value = ""; $("#add-name").value = "";
    } catch (err) {
      if (err instanceof AuthError) askForToken("wrong token");
      else $("#add-error").textContent = err.message;
    }
  });
  setInterval(drawChart, 1000);
  openFeed();
}

document.addEventListener("DOMContentLoaded", init);
