// Kairos status page. Reads only the public API, with the token typed in (kept in this
// browser session), and refreshes every 1.5 s. No framework, no build step.
"use strict";

const REFRESH_MS = 1500;
const TOKEN_KEY = "kairos-token";
const $ = (id) => document.getElementById(id);

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

async function api(method, path, body) {
  const headers = {};
  if (token()) headers["authorization"] = "Bearer " + token();
  const init = { method, headers };
  if (body !== undefined) {
    headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  const text = await resp.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { json = null; }
  if (!resp.ok) {
    const why = (json && json.error) || text || resp.statusText;
    const err = new Error(`${method} ${path}: ${resp.status} ${why}`);
    err.status = resp.status;
    throw err;
  }
  return json;
}

// Builds an element: el("td", {class: "num"}, "text", child, ...).
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(e.dataset, v);
    else e.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function fill(tbody, rows, empty) {
  tbody.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 9, class: "muted" }, empty))]));
}

function when(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleString();
}

function ms(v) {
  if (v === null || v === undefined) return "–";
  return v >= 10000 ? (v / 1000).toFixed(0) + " s" : v >= 1000 ? (v / 1000).toFixed(1) + " s" : v + " ms";
}

function showError(msg) {
  const e = $("error");
  e.hidden = !msg;
  e.textContent = msg || "";
}

// ---- overview ----

function renderStats(s) {
  $("node").textContent = "node " + s.node_id;
  $("rate").textContent = s.finished_per_s.toFixed(1);
  $("lateness").textContent = ms(s.lateness_p50_ms) + " / " + ms(s.lateness_p99_ms);
  $("slots").textContent = s.slots.in_use + " / " + s.slots.total;
  for (const state of ["scheduled", "running", "retrying", "dead", "cancelled", "succeeded"]) {
    $("count-" + state).textContent = s.counts[state];
  }
  drawChart(s.recent.points);
}

function drawChart(points) {
  const svg = $("chart");
  const W = 600, H = 120, n = points.length;
  const maxLate = Math.max(1, ...points.map((p) => p.lateness_p99_ms || 0));
  const maxDone = Math.max(1, ...points.map((p) => p.finished));
  const x = (i) => (i + 0.5) * (W / n);
  const y = (v) => H - 4 - (v / maxLate) * (H - 12);
  const ns = "http://www.w3.org/2000/svg";
  const parts = [];
  points.forEach((p, i) => {
    if (!p.finished) return;
    const h = (p.finished / maxDone) * (H - 8);
    const r = document.createElementNS(ns, "rect");
    r.setAttribute("x", x(i) - W / n / 2 + 1);
    r.setAttribute("width", Math.max(1, W / n - 2));
    r.setAttribute("y", H - h);
    r.setAttribute("height", h);
    r.setAttribute("fill", "#cdd5e3");
    parts.push(r);
  });
  for (const [field, color] of [["lateness_p50_ms", "#2f5bd3"], ["lateness_p99_ms", "#b54708"]]) {
    const pts = points.map((p, i) => (p[field] === null ? null : `${x(i).toFixed(1)},${y(p[field]).toFixed(1)}`)).filter(Boolean);
    if (!pts.length) continue;
    const l = document.createElementNS(ns, "polyline");
    l.setAttribute("points", pts.join(" "));
    l.setAttribute("fill", "none");
    l.setAttribute("stroke", color);
    l.setAttribute("stroke-width", "2");
    l.setAttribute("vector-effect", "non-scaling-stroke");
    parts.push(l);
  }
  svg.replaceChildren(...parts);
  $("chart-max").textContent = "lateness scale " + ms(maxLate) + ", at most " + maxDone + " attempts per bucket";
}

// ---- dead tasks and paused keys ----

// Details (the last attempt's log lines) of dead tasks, by `id@updated_at`.
const detailCache = new Map();

async function details(t) {
  const k = t.id + "@" + t.updated_at;
  if (!detailCache.has(k)) {
    if (detailCache.size > 500) detailCache.clear();
    detailCache.set(k, await api("GET", "/v1/tasks/" + encodeURIComponent(t.id)));
  }
  return detailCache.get(k);
}

async function act(method, path, body, thenShow) {
  try {
    await api(method, path, body);
    showError("");
    if (thenShow) await showTask(thenShow);
    await refresh();
  } catch (e) {
    showError(e.message);
  }
}

async function renderDead(dead, paused) {
  const rows = [];
  for (const t of dead) {
    const d = await details(t).catch(() => null);
    const last = d && d.history && d.history.length ? d.history[d.history.length - 1] : null;
    const buttons = [
      el("button", { class: "retry", onclick: () => act("POST", `/v1/tasks/${encodeURIComponent(t.id)}/retry`, {}, t.id) }, "Retry"),
      el("button", { class: "cancel", onclick: () => act("DELETE", `/v1/tasks/${encodeURIComponent(t.id)}`) }, "Cancel"),
    ];
    if (t.park_on_dead) {
      buttons.push(el("button", { class: "resume", onclick: () => act("POST", `/v1/keys/${encodeURIComponent(t.key)}/resume`) }, "Resume key"));
    }
    rows.push(el("tr", { dataset: { taskId: t.id } },
      el("td", {}, el("a", { class: "mono", onclick: () => showTask(t.id) }, t.id.slice(0, 13))),
      el("td", {}, t.plugin),
      el("td", { class: "mono" }, t.key),
      el("td", { class: "num" }, t.attempts + " / " + t.max_attempts),
      el("td", { class: "err" }, t.last_error || ""),
      el("td", {}, el("pre", {}, (last && last.logs) || "")),
      el("td", {}, buttons)));
  }
  fill($("dead-rows"), rows, "no dead tasks");
  $("paused").replaceChildren(...(paused.length ? paused.map((k) => el("li", { dataset: { key: k } },
    el("span", { class: "mono" }, k), " ",
    el("button", { class: "resume", onclick: () => act("POST", `/v1/keys/${encodeURIComponent(k)}/resume`) }, "Resume")))
    : [el("li", { class: "muted" }, "none")]));
}

// ---- plugins, partitions, schedules ----

function renderPlugins(plugins) {
  fill($("plugin-rows"), plugins.map((p) => el("tr", { dataset: { plugin: p.name } },
    el("td", {}, p.name),
    el("td", { class: "mono", title: p.digest || "" }, p.digest ? p.digest.slice(0, 12) : "–"),
    el("td", {}, p.loaded ? when(new Date(p.loaded_at_ms).toISOString()) : el("span", { class: "badge dead" }, "not loaded")),
    el("td", {}, p.loaded ? [
      "from: " + p.source, el("br"),
      "hosts: " + (p.allowed_hosts.length ? p.allowed_hosts.join(", ") : "none"),
      el("br"), "may schedule: " + (p.may_schedule.length ? p.may_schedule.join(", ") : "itself"),
      el("br"), `memory ${p.limits.memory_mb} MiB, timeout ${ms(p.limits.timeout_ms)}`,
    ] : "–"),
    el("td", { class: "num" }, p.runs ? p.runs.succeeded : "–"),
    el("td", { class: "num" }, p.runs ? p.runs.failed : "–"),
    el("td", { class: "num" }, p.runs ? ms(p.runs.run_p99_ms) : "–"),
    el("td", { class: "err" }, p.last_error || ""))), "no plugins loaded");
}

function renderPartitions(v) {
  $("nodes").replaceChildren(...v.nodes.map((n) => el("span", { class: "badge" + (n.reachable ? "" : " dead") },
    `${n.node_id}: ` + (n.reachable ? `${n.partitions.length} partitions` : `unreachable (${n.error})`))).flatMap((b) => [b, " "]),
    `${v.count} partitions, ${v.moving} moving`);
  const owners = [...new Set(v.partitions.map((p) => p.owner).filter(Boolean))].sort();
  $("partition-grid").replaceChildren(...v.partitions.map((p) => el("div", {
    class: "tile" + (p.moving ? " moving" : "") + " owner-" + (owners.indexOf(p.owner) % 6),
    dataset: { partition: p.partition },
    title: `partition ${p.partition}: owner ${p.owner || "none"}, epoch ${p.epoch ?? "–"}, next due ${when(p.next_due)}`,
  },
    el("b", {}, p.partition), " ", el("span", { class: "muted" }, p.owner || "no owner"), el("br"),
    p.moving ? el("span", { class: "badge moving" }, "moving") : `${p.window} in window`, el("br"),
    el("span", { class: "muted" }, p.next_due ? "next " + new Date(p.next_due).toLocaleTimeString() : "nothing due"))));
}

function renderSchedules(list) {
  fill($("schedule-rows"), list.map((s) => el("tr", {},
    el("td", {}, s.name),
    el("td", { class: "mono" }, s.cron + (s.timezone ? " (" + s.timezone + ")" : "")),
    el("td", {}, s.plugin),
    el("td", { class: "mono" }, s.key),
    el("td", {}, s.next_runs.flatMap((t, i) => [i ? " · " : "", el("span", { class: "occurrence" }, when(t))])))), "no schedules");
}

// ---- one task: its attempts as a timeline ----

let shown = null; // the id or key in the task view

function timeline(t) {
  const h = t.history || [];
  const t0 = h.length ? Date.parse(h[0].started_at) : 0;
  const t1 = h.length ? Math.max(...h.map((a) => Date.parse(a.ended_at))) : 1;
  const span = Math.max(1, t1 - t0);
  return el("div", { class: "timeline" }, h.length ? h.map((a) => {
    const s = Date.parse(a.started_at), e = Date.parse(a.ended_at);
    const bar = el("span", { class: a.outcome });
    bar.style.left = (((s - t0) / span) * 100).toFixed(2) + "%";
    bar.style.width = (((e - s) / span) * 100).toFixed(2) + "%";
    return el("div", { class: "attempt", dataset: { attempt: a.attempt } },
      el("div", {}, `attempt ${a.attempt}`, el("br"), el("span", { class: "badge " + a.outcome }, a.outcome)),
      el("div", {}, el("div", { class: "bar" }, bar),
        `${when(a.started_at)} · ran ${ms(e - s)}`, a.plugin_digest ? el("span", { class: "mono muted" }, " · " + a.plugin_digest.slice(0, 12)) : "",
        a.error ? el("div", { class: "err" }, a.error) : "",
        a.logs ? el("pre", {}, a.logs) : ""));
  }) : el("p", { class: "muted" }, "no attempts yet"));
}

function taskCard(t) {
  return el("div", { class: "task", dataset: { taskId: t.id } },
    el("p", {}, el("span", { class: "mono" }, t.id), " ",
      el("span", { class: "badge " + t.state, id: shown === t.id ? "task-state" : null }, t.state),
      ` ${t.plugin} · key `, el("span", { class: "mono" }, t.key),
      ` · due ${when(t.run_at)} · attempts ${t.attempts} / ${t.max_attempts}`,
      t.last_error ? el("span", { class: "err" }, " · " + t.last_error) : ""),
    timeline(t));
}

async function renderTask() {
  if (!shown) return;
  let tasks;
  try {
    tasks = [await api("GET", "/v1/tasks/" + encodeURIComponent(shown))];
  } catch (e) {
    if (e.status !== 404) throw e;
    const list = await api("GET", "/v1/tasks?limit=20&key=" + encodeURIComponent(shown));
    tasks = await Promise.all(list.map((t) => api("GET", "/v1/tasks/" + encodeURIComponent(t.id))));
  }
  $("task").replaceChildren(...(tasks.length ? tasks.map(taskCard) : [el("p", { class: "muted" }, "no task with that id or key")]));
}

async function showTask(idOrKey) {
  shown = idOrKey;
  $("find-input").value = idOrKey;
  await renderTask().catch((e) => showError(e.message));
}

// ---- refresh loop ----

let busy = false;

async function refresh() {
  if (busy) return;
  busy = true;
  try {
    const [stats, parts, plugins, dead, paused, schedules] = await Promise.all([
      api("GET", "/v1/stats"),
      api("GET", "/v1/partitions"),
      api("GET", "/v1/plugins"),
      api("GET", "/v1/tasks?state=dead&limit=50"),
      api("GET", "/v1/keys/paused"),
      api("GET", "/v1/schedules"),
    ]);
    renderStats(stats);
    renderPartitions(parts);
    renderPlugins(plugins);
    renderSchedules(schedules);
    await renderDead(dead, paused.paused);
    await renderTask();
    showError("");
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    document.body.dataset.ready = "true";
  } catch (e) {
    showError(e.status === 401 || e.status === 403 ? "Sign in with an API token that has the read scope (" + e.message + ")" : e.message);
  } finally {
    busy = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    refresh();
  });
  $("logout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    refresh();
  });
  $("find").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const v = $("find-input").value.trim();
    if (v) showTask(v);
  });
  refresh();
  setInterval(refresh, REFRESH_MS);
});
