/**
 * The dashboard at `/` of the api process: one static page, no build step; its charts are drawn
 * by uPlot, a file of that package served by the API (/assets/uplot.js). It calls
 * the same API as everyone (with the API key the visitor types, kept for the browser session).
 * The overview follows one stream, `/v1/stream` (workers, queues, the newest jobs and the running
 * ones' progress, each second something changed), and updates only the rows and cells that
 * changed, so a selection or the focus stays. A job's page follows that job's log stream. Never a
 * stream per job on one page: a browser holds six connections per host.
 */
export function dashboardPage(): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mars-fleet</title>
<link rel="stylesheet" href="/assets/uplot.css">
<script src="/assets/uplot.js"></script>
<style>
  :root { color-scheme: light dark; }
  body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 72rem; padding: 1rem; color: #1b1b1b; background: #fff; }
  h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 1.5rem; }
  table { border-collapse: collapse; width: 100%; } th, td { text-align: left; padding: .3rem .5rem; border-bottom: 1px solid #ddd; vertical-align: top; }
  progress { width: 10rem; } .muted { color: #666; } .state-failed { color: #a00; } .state-succeeded { color: #060; }
  pre#log { background: #f5f5f5; padding: .5rem; max-height: 28rem; overflow: auto; font-size: .85rem; }
  button { font: inherit; padding: .3rem .8rem; } :focus-visible { outline: 3px solid #1a5fb4; }
  .scroll { overflow-x: auto; } td { overflow-wrap: anywhere; }
  figure { display: inline-block; margin: 0 1rem 1rem 0; max-width: 100%; } figcaption { font-size: .9rem; }
  @media (max-width: 40rem) { body { padding: .5rem; } progress { width: 5rem; } th, td { padding: .25rem .3rem; } }
  @media (prefers-color-scheme: dark) {
    body { color: #e4e4e4; background: #141414; } th, td { border-bottom-color: #3a3a3a; }
    .muted { color: #a8a8a8; } .state-failed { color: #ff8a80; } .state-succeeded { color: #8fd694; }
    pre#log { background: #1f1f1f; } a { color: #8ab4f8; } a:visited { color: #c58af9; } :focus-visible { outline-color: #8ab4f8; }
  }
</style>
</head>
<body>
<header><h1>mars-fleet</h1><p class="muted" id="status" role="status"></p></header>
<main id="main"></main>
<script>
"use strict";
const main = document.getElementById("main");
const statusLine = document.getElementById("status");
const key = () => sessionStorage.getItem("mars-fleet-key");
const esc = (s) => String(s ?? "").replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
const api = async (path, opts = {}) => {
  const res = await fetch(path, { ...opts, headers: { authorization: "Bearer " + key(), ...(opts.headers || {}) } });
  if (res.status === 401) { sessionStorage.removeItem("mars-fleet-key"); route(); throw new Error("the API key was refused"); }
  if (!res.ok && res.status !== 202) throw new Error((await res.json()).detail || res.statusText);
  return res.json();
};
const progress = new Map(); // job id -> {bytes, total}

/** Follow an SSE stream (fetch, so the key goes in a header); calls onEvent(type, data). */
async function stream(path, onEvent, signal) {
  const res = await fetch(path, { headers: { authorization: "Bearer " + key(), accept: "text/event-stream" }, signal });
  if (res.status === 401) { sessionStorage.removeItem("mars-fleet-key"); route(); throw new Error("the API key was refused"); }
  if (!res.ok) {
    const problem = await res.json().catch(() => ({}));
    throw Object.assign(new Error(problem.detail || res.statusText), { status: res.status });
  }
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let cut;
    while ((cut = buf.indexOf("\\n\\n")) >= 0) {
      const block = buf.slice(0, cut); buf = buf.slice(cut + 2);
      const type = (/^event: (.*)$/m.exec(block) || [])[1];
      const data = (/^data: (.*)$/m.exec(block) || [])[1];
      if (type && data) onEvent(type, JSON.parse(data));
    }
  }
}
const follow = (id, onEvent, signal) => stream("/v1/jobs/" + encodeURIComponent(id) + "/logs", onEvent, signal);

function keyForm() {
  main.innerHTML = '<form id="keyform"><label for="key">API key</label> <input id="key" type="password" autocomplete="off" required size="50"> <button type="submit">Open</button></form>';
  document.getElementById("keyform").addEventListener("submit", (e) => {
    e.preventDefault(); sessionStorage.setItem("mars-fleet-key", document.getElementById("key").value.trim()); route();
  });
  document.getElementById("key").focus();
}

function bar(id) {
  const p = progress.get(id);
  if (!p || !p.total) return '<progress aria-label="progress of ' + esc(id) + '"></progress>';
  return '<progress aria-label="progress of ' + esc(id) + '" max="' + p.total + '" value="' + p.bytes + '">' + Math.round(100 * p.bytes / p.total) + '%</progress>';
}

/** Rows of a table body made to match items, in order: only changed cells are written again. */
function syncRows(tbody, items, keyOf, cellsOf) {
  const seen = new Set();
  let prev = null;
  for (const item of items) {
    const k = keyOf(item);
    seen.add(k);
    let tr = [...tbody.children].find((r) => r.dataset.key === k);
    const cells = cellsOf(item);
    if (!tr) {
      tr = document.createElement("tr"); tr.dataset.key = k;
      for (let i = 0; i < cells.length; i++) tr.appendChild(document.createElement("td"));
    }
    cells.forEach((html, i) => { const td = tr.children[i]; if (td.dataset.html !== html) { td.innerHTML = html; td.dataset.html = html; } });
    const at = prev ? prev.nextSibling : tbody.firstChild;
    if (at !== tr) tbody.insertBefore(tr, at);
    prev = tr;
  }
  for (const tr of [...tbody.children]) if (!seen.has(tr.dataset.key)) tr.remove();
}

/** A titled table in a region that scrolls sideways on a narrow screen (the page itself does not). */
function table(name, title, columns) {
  return '<h2 id="' + name + '-h">' + title + '</h2><div class="scroll" role="region" tabindex="0" aria-labelledby="' + name + '-h"><table aria-labelledby="' + name + '-h"><thead><tr>' +
    columns.map((c) => '<th scope="col">' + c + '</th>').join("") + '</tr></thead><tbody id="' + name + '-body"></tbody></table></div>';
}

/** The jobs list's filters (the query of /v1/stream and /v1/jobs), kept while the page is open. */
const filters = { state: "", user: "", queue: "", dataset: "", code: "", q: "", from: "", to: "", order: "newest", limit: 50 };
const STATES = ["", "queued", "running", "retrying", "succeeded", "failed", "cancelled"];

function filterForm() {
  const field = (name, label, html) => '<label>' + label + ' ' + html + '</label> ';
  const input = (name, label, type) => field(name, label, '<input name="' + name + '" type="' + (type || "search") + '" value="' + esc(filters[name]) + '" size="12">');
  return '<form id="filters" role="search" aria-label="filter jobs">' +
    field("state", "state", '<select name="state">' + STATES.map((s) => '<option value="' + s + '"' + (filters.state === s ? " selected" : "") + '>' + (s || "any") + '</option>').join("") + '</select>') +
    input("q", "id or request id") + input("user", "user") + input("queue", "queue") + input("dataset", "dataset") + input("code", "error code") +
    input("from", "from", "date") + input("to", "to", "date") +
    field("order", "order", '<select name="order"><option value="newest"' + (filters.order === "newest" ? " selected" : "") + '>newest first</option><option value="oldest"' + (filters.order === "oldest" ? " selected" : "") + '>oldest first</option></select>') +
    '<button type="submit">Filter</button> <button type="button" id="clear-filters">Clear</button></form>';
}

function setFilters(next) {
  Object.assign(filters, next, { limit: 50 });
  stopLive(); main.innerHTML = ""; startLive();
}

function overviewSkeleton() {
  if (document.getElementById("jobs-body")) return;
  main.innerHTML =
    table("workers", "Workers", ["worker", "queue", "state", "slots used", "CPU %", "RSS MB", "running"]) +
    table("queues", "Queues", ["queue", "queued", "running"]) +
    '<h2 id="charts-h">The last hour</h2><div id="charts" class="scroll" role="group" aria-labelledby="charts-h"></div>' +
    '<h2 id="qos-h">QoS</h2><div id="qos" aria-labelledby="qos-h"></div>' +
    table("waiting", "Jobs waiting for a limit", ["job", "worker", "why"]) +
    table("failures", "Failed jobs by error code", ["error code", "jobs", "newest"]) +
    table("usage", "Usage by user and day", ["user", "day", "jobs", "succeeded", "MARS s", "bytes", "cache hits", "MARS s saved"]) +
    '<div id="dead-section" hidden>' + table("dead", "Dead letters", ["when", "queue", "job", "reason", "error"]) + '</div>' +
    '<h2 id="jobs-h">Jobs</h2>' + filterForm() +
    '<div class="scroll" role="region" tabindex="0" aria-labelledby="jobs-h"><table aria-labelledby="jobs-h"><thead><tr>' +
    ["job", "user", "state", "progress", "submitted"].map((c) => '<th scope="col">' + c + '</th>').join("") +
    '</tr></thead><tbody id="jobs-body"></tbody></table></div><p><button type="button" id="more">Show more</button></p>';
  document.getElementById("filters").addEventListener("submit", (e) => {
    e.preventDefault();
    setFilters(Object.fromEntries([...new FormData(e.target)].map(([k, v]) => [k, String(v).trim()])));
  });
  document.getElementById("clear-filters").addEventListener("click", () =>
    setFilters({ state: "", user: "", queue: "", dataset: "", code: "", q: "", from: "", to: "", order: "newest" }));
  document.getElementById("more").addEventListener("click", () => {
    filters.limit = Math.min(200, filters.limit + 50); stopLive(); startLive();
  });
  refreshSlow().catch(() => {}); // then every 5 s
  // A code in the failures table filters the jobs to those that failed with it.
  document.getElementById("failures-body").addEventListener("click", (e) => {
    const code = e.target.closest("button[data-code]")?.dataset.code;
    if (code) setFilters({ ...filters, state: "failed", code });
  });
}

function drawOverview(d) {
  if (location.hash.startsWith("#/job/")) return; // a late event: the job's page stays
  overviewSkeleton();
  for (const [id, p] of Object.entries(d.progress)) progress.set(id, p);
  syncRows(document.getElementById("workers-body"), d.workers, (x) => x.id, (x) => [esc(x.id), esc(x.queue), esc(x.state),
    x.running.length + " / " + x.slots, esc(x.usage ? x.usage.cpuPercent : ""), esc(x.usage ? x.usage.rssMb : ""), x.running.map(esc).join(", ")]);
  syncRows(document.getElementById("queues-body"), d.queues, (x) => x.queue, (x) => [esc(x.queue), String(x.queued), String(x.running)]);
  syncRows(document.getElementById("failures-body"), d.failures, (x) => x.code, (x) => [
    '<button type="button" data-code="' + esc(x.code) + '">' + esc(x.code) + '</button>', String(x.count),
    x.jobs.map((id) => '<a href="#/job/' + encodeURIComponent(id) + '">' + esc(id) + '</a>').join(", ")]);
  document.getElementById("more").hidden = d.jobs.length < filters.limit || filters.limit >= 200;
  syncRows(document.getElementById("jobs-body"), d.jobs, (x) => x.id, (x) => [
    '<a href="#/job/' + encodeURIComponent(x.id) + '">' + esc(x.id) + '</a>', esc(x.environ.user_id),
    '<span class="state-' + esc(x.state) + '">' + esc(x.state) + '</span>', x.state === "running" ? bar(x.id) : "",
    new Date(x.submittedAt).toLocaleTimeString()]);
}

/**
 * What changes slowly or costs more to work out (QoS, dead letters): read every 5 s while the
 * overview is shown, one request each.
 */
/** One chart (uPlot) of series over time: series maps a name to [[ms, value], ...]. */
function chart(title, unit, series) {
  const times = [...new Set(Object.values(series).flatMap((pts) => pts.map(([t]) => t)))].sort((a, b) => a - b);
  if (times.length < 2) return null;
  const names = Object.keys(series);
  const data = [times.map((t) => t / 1000), ...names.map((n) => { const m = new Map(series[n]); return times.map((t) => (m.has(t) ? m.get(t) : null)); })];
  const ink = getComputedStyle(document.body).color;
  const palette = ["#1a73e8", "#d93025", "#188038", "#e37400", "#9334e6", "#12b5cb"];
  const box = document.createElement("figure");
  box.setAttribute("aria-label", title);
  const caption = document.createElement("figcaption"); caption.textContent = title; box.appendChild(caption);
  new uPlot({
    width: Math.min(560, main.clientWidth - 16), height: 180,
    series: [{}, ...names.map((n, i) => ({ label: n, stroke: palette[i % palette.length], width: 2 }))],
    axes: [{ stroke: ink, grid: { stroke: "rgba(128,128,128,.2)" } }, { stroke: ink, label: unit, grid: { stroke: "rgba(128,128,128,.2)" } }],
  }, data, box);
  return box;
}

async function refreshCharts() {
  const h = await api("/v1/history");
  const pick = (src, field) => Object.fromEntries(Object.entries(src || {}).map(([k, pts]) => [k, pts.map((p) => [p.at, p[field]])]));
  const charts = [
    chart("Workers: CPU (% of a core)", "%", pick(h.workers, "cpuPercent")),
    chart("Workers: memory (MB)", "MB", pick(h.workers, "rssMb")),
    ...(h.queues ? [
      chart("Queues: jobs queued", "jobs", pick(h.queues, "queued")),
      chart("Queues: jobs running", "jobs", pick(h.queues, "running")),
      chart("Queues: jobs ended per sample", "jobs", pick(h.queues, "finished")),
    ] : []),
  ].filter(Boolean);
  const el = document.getElementById("charts");
  if (!el) return;
  el.replaceChildren(...charts);
  if (charts.length === 0) el.textContent = "collecting: the charts start after two samples (one each 10 s)";
}

async function refreshSlow() {
  if (!document.getElementById("qos")) return;
  if (typeof uPlot === "function") await refreshCharts().catch((e) => (document.getElementById("charts").textContent = e.message));
  const qos = await api("/v1/qos");
  const rules = qos.rules ? qos.rules.rules.map((r) => "<li>" + esc(r.name) + ": " + esc(JSON.stringify(r)) + "</li>").join("") : "";
  const lanes = qos.lanes.map((l) => {
    const use = qos.usage.find((u) => u.lane === l.lane);
    return "<li>" + esc(l.lane) + ": " + l.queued + " queued, " + l.running + " running" + (l.heldAside ? ", " + l.heldAside + " held aside" : "") +
      (use ? ", recent use " + Math.round(use.seconds) + " s (priority -" + use.penalty + ")" : "") + "</li>";
  }).join("");
  const limits = qos.limits.map((l) => "<li>" + esc(l.key) + ": " + l.running + (l.limit === null ? "" : " of " + l.limit) + " running</li>").join("");
  document.getElementById("qos").innerHTML =
    (qos.rules ? "<p>Rules in force (fair share by " + esc(qos.rules.fairShare) + "):</p><ul>" + (rules || "<li>none</li>") + "</ul>" : "") +
    "<p>Lanes:</p><ul>" + (lanes || "<li>none with jobs</li>") + "</ul><p>Limits held now:</p><ul>" + (limits || "<li>none</li>") + "</ul>";
  syncRows(document.getElementById("waiting-body"), qos.waiting, (x) => x.job, (x) => [
    '<a href="#/job/' + encodeURIComponent(x.job) + '">' + esc(x.job) + "</a>", esc(x.worker), esc(x.reason)]);
  // Usage (a user key: its own), newest day first: what ran, and what the result cache saved.
  const usage = (await api("/v1/usage")).usage.slice().reverse().slice(0, 50);
  syncRows(document.getElementById("usage-body"), usage, (x) => x.user + " " + x.day, (x) => [
    esc(x.user), esc(x.day), esc(x.jobs), esc(x.succeeded), esc(x.marsSeconds), esc(x.bytes), esc(x.cacheHits), esc(x.marsSecondsSaved)]);
  const res = await fetch("/v1/dead?limit=50", { headers: { authorization: "Bearer " + key() } });
  const section = document.getElementById("dead-section");
  if (res.status === 403) { section.hidden = true; return; } // a user key: dead letters are the operators'
  const dead = (await res.json()).dead || [];
  section.hidden = false;
  syncRows(document.getElementById("dead-body"), dead, (x) => String(x.seq), (x) => [
    new Date(x.at).toLocaleString(), esc(x.queue), esc(x.jobId || ""), esc(x.reason), esc(x.error ? x.error.code : "")]);
}
setInterval(() => { if (key() && live) refreshSlow().catch(() => {}); }, 5000);

let live = null; // the overview's stream while it is shown: { ac }
function startLive() {
  if (live) return;
  const ac = new AbortController();
  live = { ac };
  statusLine.textContent = "connecting";
  (async () => {
    let wait = 1000;
    while (!ac.signal.aborted) {
      try {
        const query = new URLSearchParams(Object.entries(filters).filter(([, v]) => v !== "").map(([k, v]) => [k, String(v)]));
        await stream("/v1/stream?" + query, (type, d) => {
          if (type === "overview") {
            wait = 1000; drawOverview(d);
            statusLine.textContent = "live, updated " + new Date().toLocaleTimeString();
          } else if (type === "error") statusLine.textContent = "live, but the broker did not answer: " + d.message;
        }, ac.signal);
      } catch (e) {
        if (ac.signal.aborted) return;
        // A refused filter stays refused: say why instead of asking again.
        if (e.status >= 400 && e.status < 500) { statusLine.textContent = "not shown: " + e.message; if (live?.ac === ac) live = null; return; }
      }
      statusLine.textContent = "reconnecting";
      await new Promise((r) => setTimeout(r, wait));
      wait = Math.min(10000, wait * 2);
    }
  })();
}
function stopLive() { live?.ac.abort(); live = null; }

let jobView = null; // { id, ac, pending }
const ENDED = ["succeeded", "failed", "cancelled"];
const when = (ms) => (ms ? new Date(ms).toLocaleString() : "");

function jobLayout(id) {
  main.innerHTML = '<p><a href="#/">All jobs</a></p><h2>Job <span id="job-id"></span></h2>' +
    '<p>State: <strong id="job-state"></strong> <span id="job-bar"></span></p>' +
    '<p><button id="cancel" type="button" hidden>Cancel job</button> <button id="retry" type="button" hidden>Retry</button> ' +
    '<span id="confirm" hidden><span id="confirm-q"></span> <button id="confirm-yes" type="button"></button> <button id="confirm-no" type="button">No</button></span></p>' +
    '<p id="answer" role="status"></p>' +
    '<h2 id="details-h">Details</h2><dl id="details" aria-labelledby="details-h"></dl>' +
    '<h2 id="request-h">Request</h2><pre id="request" aria-labelledby="request-h"></pre><button id="copy" type="button">Copy as MARS text</button>' +
    '<h2 id="result-h">Result</h2><p id="result"></p>' +
    '<div id="parts-box" hidden><h2 id="parts-h">Parts</h2><p id="parts-sum"></p><div class="scroll" role="region" tabindex="0" aria-labelledby="parts-h"><table aria-labelledby="parts-h"><thead><tr><th scope="col">part</th><th scope="col">state</th><th scope="col">attempt</th><th scope="col">worker</th><th scope="col">bytes</th><th scope="col">error</th></tr></thead><tbody id="parts"></tbody></table></div></div>' +
    '<h2 id="history-h">History</h2><ol id="history" aria-labelledby="history-h"></ol>' +
    '<h2 id="log-h">Log</h2><pre id="log" tabindex="0" aria-labelledby="log-h" aria-live="polite"></pre>';
  document.getElementById("job-id").textContent = id;
  const answer = document.getElementById("answer");
  // Each action asks first, then shows what the API answered.
  const ask = (question, yes, run) => {
    document.getElementById("confirm-q").textContent = question;
    document.getElementById("confirm-yes").textContent = yes;
    document.getElementById("confirm").hidden = false;
    jobView.pending = run;
  };
  document.getElementById("confirm-no").addEventListener("click", () => { document.getElementById("confirm").hidden = true; jobView.pending = null; });
  document.getElementById("confirm-yes").addEventListener("click", async () => {
    document.getElementById("confirm").hidden = true;
    const run = jobView.pending; jobView.pending = null;
    try { await run(); } catch (e) { answer.textContent = "refused: " + e.message; }
  });
  document.getElementById("cancel").addEventListener("click", () => ask("Cancel this job?", "Yes, cancel", async () => {
    const r = await api("/v1/jobs/" + encodeURIComponent(id), { method: "DELETE" });
    answer.textContent = "cancel requested: the job is " + r.state;
  }));
  document.getElementById("retry").addEventListener("click", () => ask("Run this job's request again, as a new job?", "Yes, retry", async () => {
    const r = await api("/v1/jobs/" + encodeURIComponent(id) + "/retry", { method: "POST" });
    answer.innerHTML = 'retried as <a href="#/job/' + encodeURIComponent(r.id) + '">' + esc(r.id) + '</a> (' + esc(r.state) + ')';
  }));
  document.getElementById("copy").addEventListener("click", async () => {
    const text = document.getElementById("request").textContent;
    try { await navigator.clipboard.writeText(text); answer.textContent = "request copied"; }
    catch { answer.textContent = "the browser would not copy: select the request instead"; }
  });
  const log = document.getElementById("log");
  const history = document.getElementById("history");
  follow(id, (type, d) => {
    if (type === "log") { log.textContent += d.line + "\\n"; log.scrollTop = log.scrollHeight; }
    else if (type === "progress") progress.set(id, d);
    else if (type === "state") {
      const li = document.createElement("li");
      li.textContent = new Date(d.at).toLocaleTimeString() + " " + d.state + (d.attempt ? ", attempt " + d.attempt : "") + (d.worker ? " on " + d.worker : "") + (d.error ? ": " + d.error.code : "");
      history.appendChild(li);
    }
  }, jobView.ac.signal).catch(() => {});
}

async function download(id) {
  const res = await fetch("/v1/jobs/" + encodeURIComponent(id) + "/result", { headers: { authorization: "Bearer " + key() } });
  if (!res.ok) throw new Error((await res.json()).detail || res.statusText);
  const a = document.createElement("a");
  a.href = URL.createObjectURL(await res.blob()); a.download = id + ".grib";
  document.body.appendChild(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

function jobDetails(rec) {
  const rows = [
    ["queue", rec.queue], ["user", rec.environ.user_id], ["attempt", rec.attempt + " of " + rec.maxAttempts],
    ["worker", rec.worker], ["submitted", when(rec.submittedAt)], ["started", when(rec.startedAt)], ["finished", when(rec.finishedAt)],
    ["error", rec.error ? rec.error.code + ": " + rec.error.message : ""], ["waits", (rec.waiting || []).join("; ")],
    ["from the cache", rec.result && rec.result.cached ? "yes: no MARS run, " + (rec.result.cached.savedMs / 1000).toFixed(1) + " s of MARS saved" : ""],
  ];
  document.getElementById("details").innerHTML = rows.filter(([, v]) => v).map(([k, v]) => "<dt>" + k + "</dt><dd>" + esc(v) + "</dd>").join("") +
    (rec.retryOf ? '<dt>retry of</dt><dd><a href="#/job/' + encodeURIComponent(rec.retryOf) + '">' + esc(rec.retryOf) + "</a></dd>" : "");
  if (rec.split && rec.parts) {
    // A split job (#27): its parts, each a job of its own, and how far they are.
    document.getElementById("parts-box").hidden = false;
    const done = rec.parts.filter((p) => p.state === "succeeded").length;
    const running = rec.parts.filter((p) => p.state === "running").length;
    document.getElementById("parts-sum").textContent = "split by " + rec.split.by.join(", ") + ": " + done + " of " + rec.parts.length + " done, " + running + " running";
    document.getElementById("parts").innerHTML = rec.parts.map((p) => '<tr><td><a href="#/job/' + encodeURIComponent(p.id) + '">' + esc(p.index) + '</a></td><td class="state-' + esc(p.state) + '">' + esc(p.state) + "</td><td>" + esc(p.attempt) + "</td><td>" + esc(p.worker || "") + "</td><td>" + esc(p.bytes ?? "") + "</td><td>" + esc(p.error ? p.error.code : "") + "</td></tr>").join("");
  }
  const request = document.getElementById("request");
  if (request.textContent !== rec.requestText) request.textContent = rec.requestText || "";
  const result = document.getElementById("result");
  if (rec.state === "succeeded" && rec.result && rec.result.object === undefined) {
    if (!document.getElementById("download")) {
      result.innerHTML = esc(rec.result.bytes) + ' bytes <button id="download" type="button">Download</button>';
      document.getElementById("download").addEventListener("click", () => download(rec.id).catch((e) => (document.getElementById("answer").textContent = e.message)));
    }
  } else result.textContent = rec.result ? rec.result.bytes + " bytes (in the object store)" : "none yet";
}

async function jobPage(id) {
  if (!jobView || jobView.id !== id || !document.getElementById("log")) {
    jobView?.ac.abort();
    jobView = { id, ac: new AbortController(), pending: null };
    jobLayout(id);
  }
  const rec = await api("/v1/jobs/" + encodeURIComponent(id));
  if (jobView?.id !== id) return; // left for another page meanwhile
  const state = document.getElementById("job-state");
  state.textContent = rec.state; state.className = "state-" + rec.state;
  document.getElementById("job-bar").innerHTML = rec.state === "running" ? bar(id) : "";
  document.getElementById("cancel").hidden = ENDED.includes(rec.state);
  document.getElementById("retry").hidden = !ENDED.includes(rec.state);
  jobDetails(rec);
}

async function route() {
  if (!key()) { stopLive(); jobView?.ac.abort(); jobView = null; return keyForm(); }
  const m = /^#\\/job\\/(.+)$/.exec(location.hash);
  try {
    if (m) {
      stopLive();
      await jobPage(decodeURIComponent(m[1]));
      statusLine.textContent = "updated " + new Date().toLocaleTimeString();
    } else {
      jobView?.ac.abort(); jobView = null;
      startLive();
    }
  } catch (e) { statusLine.textContent = e.message; }
}
window.addEventListener("hashchange", route);
// A job's page reads its record each second (its log comes on its own stream); the overview is live.
setInterval(() => { if (key() && location.hash.startsWith("#/job/")) route(); }, 1000);
route();
</script>
</body>
</html>`;
}
