// MeshRAG status page: reads this node's JSON routes every 2 s and draws them.
// Everything that comes from the cluster (node names are chosen by operators) goes into the
// DOM through textContent or SVG attributes, never as markup.
"use strict";

const REFRESH_MS = 2000;
const TIMEOUT_MS = 5000;  // a node that takes longer than this to answer counts as not answering
const KEY_STORAGE = "meshrag-api-key";  // sessionStorage: gone when the tab closes
const CLASSES = [["search", "#2f6fd0"], ["ingest", "#2e9e5b"], ["ask", "#b0469b"], ["read", "#c77700"]];
const SVG_NS = "http://www.w3.org/2000/svg";

let lastSuccess = null;  // Date of the last complete refresh
let downSince = null;    // Date the node first failed to answer, while it does not

class AuthError extends Error {}

// ------------------------------------------------------------------ DOM helpers
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== undefined && value !== null) node.setAttribute(name, String(value));
  }
  for (const child of children) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  return node;
}

function badge(text) {
  // The class is a fixed word derived from a known state; anything else gets no class.
  const known = /^[a-z_]+$/.test(text) ? text : "";
  return el("span", {class: "badge " + known}, text);
}

function fillTable(id, rows, emptyText, columns) {
  const body = document.querySelector("#" + id + " tbody");
  body.replaceChildren();
  if (!rows.length) {
    body.append(el("tr", {}, el("td", {class: "empty", colspan: columns}, emptyText)));
    return;
  }
  for (const cells of rows) {
    body.append(el("tr", {}, ...cells.map((cell) => el("td", {}, cell))));
  }
}

function formatMs(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms >= 1000) return (ms / 1000).toFixed(ms >= 10000 ? 0 : 1) + " s";
  return (ms >= 10 ? ms.toFixed(0) : ms.toFixed(1)) + " ms";
}

function formatUptime(seconds) {
  const s = Math.floor(seconds || 0);
  if (s < 120) return s + " s";
  if (s < 7200) return Math.floor(s / 60) + " min";
  return Math.floor(s / 3600) + " h";
}

// ------------------------------------------------------------------ fetching
async function getJson(path) {
  const headers = {"Accept": "application/json"};
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (key) headers["Authorization"] = "Bearer " + key;
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), TIMEOUT_MS);
  try {
    const response = await fetch(path, {headers, cache: "no-store", signal: controller.signal});
    if (response.status === 401 || response.status === 403) {
      const body = await response.json().catch(() => ({}));
      throw new AuthError((body.error && body.error.message) || ("HTTP " + response.status));
    }
    if (!response.ok) throw new Error(path + " answered HTTP " + response.status);
    return await response.json();
  } finally {
    clearTimeout(timer);
  }
}

// ------------------------------------------------------------------ rendering
function renderNode(node) {
  document.getElementById("node-name").textContent = node.name || "";
  document.title = "MeshRAG " + (node.name || "") + " status";
  const facts = [
    node.address, "zone " + (node.zone || "–"), "roles " + (node.roles || []).join(", "),
    "v" + node.version, "up " + formatUptime(node.uptime_s), node.ready ? "ready" : "starting",
  ];
  document.getElementById("node-facts").textContent = facts.join(" · ");
}

function renderMembers(members, ring) {
  const ringNodes = new Map(((ring && ring.nodes) || []).map((n) => [n.id, n]));
  const rows = members.map((m) => {
    const inRing = ringNodes.get(m.id);
    return [
      m.name, m.zone || "–", (m.roles || []).join(", "), badge(m.state),
      inRing ? badge(inRing.status) : "–",
      inRing ? (inRing.partitions === inRing.target_partitions ? String(inRing.partitions) : inRing.partitions + " → " + inRing.target_partitions) : "–",
      m.address,
    ];
  });
  fillTable("members", rows, "no members known yet", 7);
  const counts = {};
  for (const m of members) counts[m.state] = (counts[m.state] || 0) + 1;
  document.getElementById("members-summary").textContent =
    Object.entries(counts).map(([state, n]) => n + " " + state).join(", ");
}

function replicaItem(replica) {
  const classes = ["replica", replica.role];
  if (!replica.alive) classes.push("dead");
  const text = replica.role === "incoming" ? "→" + replica.name : replica.role === "outgoing" ? replica.name + "→" : replica.name;
  return el("li", {class: classes.join(" "), title: replica.name + ": " + replica.role + (replica.alive ? "" : ", not alive")}, text);
}

function renderPartitions(ring) {
  const grid = document.getElementById("partitions");
  const summary = document.getElementById("partitions-summary");
  const table = ring && ring.partition_table;
  if (!table) {
    grid.replaceChildren(el("p", {class: "empty"}, "This node holds no data and keeps no ring (no storage role)."));
    summary.textContent = "";
    return;
  }
  grid.replaceChildren(...table.map((row) => el(
    "div", {class: "cell " + row.health, "data-partition": row.partition, title: "partition " + row.partition + ": " + row.health.replace("_", "-")},
    el("div", {class: "pid"}, "p" + row.partition),
    el("ul", {}, ...row.replicas.map(replicaItem)),
  )));
  const counts = {full: 0, under_replicated: 0, transferring: 0};
  for (const row of table) counts[row.health] = (counts[row.health] || 0) + 1;
  summary.textContent = ring.partitions + " partitions × " + ring.replicas + " replicas: " + counts.full + " full, " +
    counts.under_replicated + " under-replicated, " + counts.transferring + " transferring";
}

function generatorState(g) {
  if (g.breaker === "open") return "unreachable";
  if (g.breaker === "half_open") return "probing";
  return (g.load || 0) >= (g.capacity || 1) ? "busy" : "ready";
}

function renderGenerators(generation) {
  const generators = (generation && generation.generators) || [];
  const rows = generators.map((g) => [
    g.node + (g.local ? " (this node)" : ""), g.backend, g.model, (g.load ?? 0) + " / " + g.capacity,
    String(g.outstanding ?? 0), badge(g.breaker), badge(generatorState(g)),
  ]);
  fillTable("generators", rows, "no generator alive in the cluster: questions get 503", 7);
}

function renderEmbedders(embedding) {
  const embedders = (embedding && embedding.embedders) || [];
  const rows = embedders.map((e) => [
    e.node + (e.local ? " (this node)" : ""), e.model, String(e.dim), Number(e.rate || 0).toFixed(1),
    e.queued + " / " + e.limit, badge(e.breaker),
  ]);
  fillTable("embedders", rows, "no embedder known", 6);
}

// ------------------------------------------------------------------ latency chart
function chartScale(series) {
  // Log scale over whole decades: search answers in milliseconds, ask in seconds.
  let low = Infinity, high = 0;
  for (const buckets of Object.values(series)) {
    for (const b of buckets) { low = Math.min(low, b.p50_ms); high = Math.max(high, b.p99_ms); }
  }
  if (!isFinite(low)) return {lowExp: 0, highExp: 3};
  const lowExp = Math.floor(Math.log10(Math.max(low, 0.1)));
  const highExp = Math.max(lowExp + 1, Math.ceil(Math.log10(Math.max(high, 0.1))));
  return {lowExp, highExp};
}

function drawLatency(latency) {
  const width = 640, height = 220, left = 54, right = 12, top = 10, bottom = 26;
  const root = svg("svg", {width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "request latency chart"});
  const series = latency.classes || {};
  const {lowExp, highExp} = chartScale(series);
  const x = (t) => left + (width - left - right) * (1 - (latency.now - t) / latency.window_s);
  const y = (ms) => {
    const e = Math.log10(Math.max(ms, Math.pow(10, lowExp)));
    return top + (height - top - bottom) * (1 - (e - lowExp) / (highExp - lowExp));
  };
  for (let e = lowExp; e <= highExp; e++) {
    root.append(svg("line", {class: "gridline", x1: left, x2: width - right, y1: y(10 ** e), y2: y(10 ** e)}));
    const label = svg("text", {class: "label", x: left - 6, y: y(10 ** e) + 4, "text-anchor": "end"});
    label.textContent = formatMs(10 ** e);
    root.append(label);
  }
  for (let minutes = 0; minutes <= latency.window_s / 60; minutes++) {
    const px = x(latency.now - minutes * 60);
    const label = svg("text", {class: "label", x: px, y: height - 8, "text-anchor": "middle"});
    label.textContent = minutes === 0 ? "now" : "−" + minutes + " min";
    root.append(label);
  }
  root.append(svg("line", {class: "axis", x1: left, x2: left, y1: top, y2: height - bottom}));
  root.append(svg("line", {class: "axis", x1: left, x2: width - right, y1: height - bottom, y2: height - bottom}));
  let drawn = 0;
  for (const [name, colour] of CLASSES) {
    const buckets = series[name] || [];
    if (!buckets.length) continue;
    drawn++;
    // Each bucket is plotted at its middle: it covers bucket_s seconds from t.
    const mid = (b) => Math.min(latency.now, b.t + latency.bucket_s / 2);
    for (const [field, cls] of [["p50_ms", "p50"], ["p99_ms", "p99"]]) {
      const points = buckets.map((b) => x(mid(b)).toFixed(1) + "," + y(b[field]).toFixed(1)).join(" ");
      root.append(svg("polyline", {class: cls + " series-" + name, points, fill: "none", stroke: colour, "stroke-width": 2}));
    }
    for (const b of buckets) {
      root.append(svg("circle", {cx: x(mid(b)).toFixed(1), cy: y(b.p50_ms).toFixed(1), r: 2.5, fill: colour}));
    }
  }
  if (!drawn) {
    const note = svg("text", {class: "empty", x: width / 2, y: height / 2, "text-anchor": "middle"});
    note.textContent = "no search, ingest, ask or read requests in the last 5 minutes";
    root.append(note);
  }
  document.getElementById("latency-chart").replaceChildren(root);
}

function renderLatency(latency) {
  drawLatency(latency);
  const rows = CLASSES.map(([name]) => {
    const buckets = (latency.classes || {})[name] || [];
    const latest = buckets[buckets.length - 1];
    const count = buckets.reduce((sum, b) => sum + b.count, 0);
    const errors = buckets.reduce((sum, b) => sum + b.errors, 0);
    return [el("span", {}, el("span", {class: "dot dot-" + name}), name), String(count), String(errors), formatMs(latest && latest.p50_ms), formatMs(latest && latest.p99_ms)];
  });
  fillTable("latency", rows, "", 5);
}

// ------------------------------------------------------------------ connection state
function showConnection() {
  const banner = document.getElementById("connection");
  const now = new Date();
  if (downSince) {
    const seconds = Math.round((now - downSince) / 1000);
    banner.className = "connection down";
    banner.textContent = "node not answering for " + seconds + " s" +
      (lastSuccess ? " · last data " + lastSuccess.toLocaleTimeString() : "");
    document.body.classList.add("stale");
  } else {
    banner.className = "connection live";
    banner.textContent = "live";
    document.body.classList.remove("stale");
  }
  document.getElementById("updated").textContent = lastSuccess ? "Last updated " + lastSuccess.toLocaleTimeString() + "." : "";
}

function showAuth(message) {
  document.getElementById("auth").hidden = false;
  document.getElementById("auth-message").textContent = message;
  const banner = document.getElementById("connection");
  banner.className = "connection waiting";
  banner.textContent = "API key needed";
}

// ------------------------------------------------------------------ main loop
async function refresh() {
  try {
    const [cluster, latency] = await Promise.all([getJson("/v1/cluster"), getJson("/v1/cluster/latency")]);
    document.getElementById("auth").hidden = true;
    renderNode(cluster.node || {});
    renderMembers(cluster.members || [], cluster.ring);
    renderPartitions(cluster.ring);
    renderGenerators(cluster.generation);
    renderEmbedders(cluster.embedding);
    renderLatency(latency);
    lastSuccess = new Date();
    downSince = null;
    showConnection();
  } catch (error) {
    if (error instanceof AuthError) {
      showAuth(error.message);
    } else {
      downSince = downSince || new Date();
      showConnection();
    }
  } finally {
    setTimeout(refresh, REFRESH_MS);  // one refresh at a time: the next starts after this one ends
  }
}

function setUpAuthForm() {
  document.getElementById("auth-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = document.getElementById("api-key").value.trim();
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
    document.getElementById("auth-message").textContent = "checking…";
  });
}

setUpAuthForm();
refresh();
