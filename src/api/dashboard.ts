/**
 * The dashboard at `/` of the api process: one static page, no build step, no library. It calls
 * the same API as everyone (with the API key the visitor types, kept for the browser session):
 * workers, queues and jobs, refreshed every second; running jobs' progress and a job's live log
 * over the SSE stream of `/v1/jobs/<id>/logs`; a cancel button for the job's owner.
 */
export function dashboardPage(): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mars-fleet</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 72rem; padding: 1rem; color: #1b1b1b; }
  h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 1.5rem; }
  table { border-collapse: collapse; width: 100%; } th, td { text-align: left; padding: .3rem .5rem; border-bottom: 1px solid #ddd; vertical-align: top; }
  progress { width: 10rem; } .muted { color: #666; } .state-failed { color: #a00; } .state-succeeded { color: #060; }
  pre#log { background: #f5f5f5; padding: .5rem; max-height: 28rem; overflow: auto; font-size: .85rem; }
  button { font: inherit; padding: .3rem .8rem; } :focus-visible { outline: 3px solid #1a5fb4; }
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
const following = new Map(); // job id -> AbortController

/** Follow a job's SSE stream (fetch, so the key goes in a header); calls onEvent(type, data). */
async function follow(id, onEvent, signal) {
  const res = await fetch("/v1/jobs/" + encodeURIComponent(id) + "/logs", {
    headers: { authorization: "Bearer " + key(), accept: "text/event-stream" }, signal });
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

async function overview() {
  const [w, q, j] = await Promise.all([api("/v1/workers"), api("/v1/queues"), api("/v1/jobs?limit=50")]);
  // Opened a job meanwhile (a click while this refresh waited): its page stays.
  if (location.hash.startsWith("#/job/")) return;
  for (const job of j.jobs) if (job.state === "running" && !following.has(job.id)) {
    const ac = new AbortController(); following.set(job.id, ac);
    follow(job.id, (type, d) => { if (type === "progress") progress.set(job.id, d); }, ac.signal)
      .catch(() => {}).finally(() => following.delete(job.id)); // a stream that ends is picked up again at the next refresh
  }
  main.innerHTML =
    '<h2 id="workers-h">Workers</h2><table aria-labelledby="workers-h"><thead><tr><th scope="col">worker</th><th scope="col">queue</th><th scope="col">state</th><th scope="col">slots used</th><th scope="col">CPU %</th><th scope="col">RSS MB</th><th scope="col">running</th></tr></thead><tbody>' +
    w.workers.map((x) => '<tr><td>' + esc(x.id) + '</td><td>' + esc(x.queue) + '</td><td>' + esc(x.state) + '</td><td>' + x.running.length + ' / ' + x.slots + '</td><td>' + esc(x.usage ? x.usage.cpuPercent : "") + '</td><td>' + esc(x.usage ? x.usage.rssMb : "") + '</td><td>' + x.running.map(esc).join(", ") + '</td></tr>').join("") +
    '</tbody></table><h2 id="queues-h">Queues</h2><table aria-labelledby="queues-h"><thead><tr><th scope="col">queue</th><th scope="col">queued</th><th scope="col">running</th></tr></thead><tbody>' +
    q.queues.map((x) => '<tr><td>' + esc(x.queue) + '</td><td>' + x.queued + '</td><td>' + x.running + '</td></tr>').join("") +
    '</tbody></table><h2 id="jobs-h">Jobs</h2><table aria-labelledby="jobs-h"><thead><tr><th scope="col">job</th><th scope="col">user</th><th scope="col">state</th><th scope="col">progress</th><th scope="col">submitted</th></tr></thead><tbody>' +
    j.jobs.map((x) => '<tr data-job="' + esc(x.id) + '"><td><a href="#/job/' + encodeURIComponent(x.id) + '">' + esc(x.id) + '</a></td><td>' + esc(x.environ.user_id) + '</td><td class="state-' + esc(x.state) + '">' + esc(x.state) + '</td><td>' + (x.state === "running" ? bar(x.id) : "") + '</td><td>' + new Date(x.submittedAt).toLocaleTimeString() + '</td></tr>').join("") +
    '</tbody></table>';
}

let jobView = null; // { id, ac }
async function jobPage(id) {
  if (!jobView || jobView.id !== id || !document.getElementById("log")) {
    jobView?.ac.abort();
    jobView = { id, ac: new AbortController() };
    main.innerHTML = '<p><a href="#/">All jobs</a></p><h2>Job <span id="job-id"></span></h2><p>State: <strong id="job-state"></strong> <span id="job-bar"></span> <button id="cancel" type="button" hidden>Cancel job</button></p><h2 id="log-h">Log</h2><pre id="log" aria-labelledby="log-h" aria-live="polite"></pre>';
    document.getElementById("job-id").textContent = id;
    const log = document.getElementById("log");
    document.getElementById("cancel").addEventListener("click", async () => {
      await api("/v1/jobs/" + encodeURIComponent(id), { method: "DELETE" }).catch((e) => (statusLine.textContent = e.message));
    });
    follow(id, (type, d) => {
      if (type === "log") { log.textContent += d.line + "\\n"; log.scrollTop = log.scrollHeight; }
      else if (type === "progress") progress.set(id, d);
    }, jobView.ac.signal).catch(() => {});
  }
  const rec = await api("/v1/jobs/" + encodeURIComponent(id));
  if (jobView?.id !== id) return; // left for another page meanwhile
  const state = document.getElementById("job-state");
  state.textContent = rec.state; state.className = "state-" + rec.state;
  document.getElementById("job-bar").innerHTML = rec.state === "running" ? bar(id) : "";
  document.getElementById("cancel").hidden = ["succeeded", "failed", "cancelled"].includes(rec.state);
}

async function route() {
  if (!key()) { jobView?.ac.abort(); jobView = null; return keyForm(); }
  const m = /^#\\/job\\/(.+)$/.exec(location.hash);
  try {
    if (m) await jobPage(decodeURIComponent(m[1]));
    else {
      jobView?.ac.abort(); jobView = null;
      // Keyboard users keep their place: no redraw while something in the tables has the focus.
      if (!document.activeElement?.closest("table")) await overview();
    }
    statusLine.textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) { statusLine.textContent = e.message; }
}
window.addEventListener("hashchange", route);
setInterval(() => { if (key()) route(); }, 1000);
route();
</script>
</body>
</html>`;
}
