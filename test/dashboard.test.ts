import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { after, before, describe, it } from "node:test";
import { chromium, type Browser } from "playwright-core";
import { OPEN_FLEET } from "../src/broker/signing.js";
import { ApiKeys } from "../src/api/keys.js";
import { startApi, type ApiServer } from "../src/api/server.js";
import { TestFleet } from "./helpers/fleet.js";
import { eventually } from "./helpers/proc.js";

/** Debian's chromium (scripts/setup.sh installs it for the tests); no browser is downloaded. */
const CHROMIUM = process.env["CHROMIUM_PATH"] ?? "/usr/bin/chromium";
/** Screenshots go to docs/ (the README shows one) with MARS_SCREENSHOTS=1, else to a temporary folder. */
const SHOTS =
  process.env["MARS_SCREENSHOTS"] === "1"
    ? fileURLToPath(new URL("../../docs/", import.meta.url))
    : `${tmpdir()}/`;
const TIMEOUT = 170_000;
const queue = TestFleet.queue("dash");
let tf: TestFleet;
let api: ApiServer;
let browser: Browser;
let token = "";
let workerId = "";

before(async () => {
  assert.ok(existsSync(CHROMIUM), `no browser at ${CHROMIUM}: run bash scripts/setup.sh test`);
  tf = await TestFleet.start();
  workerId = (
    await tf.worker(
      { queue, concurrency: 2 },
      { MARS_SIM_FIELD_DELAY_MS: "150", MARS_SIM_LOG_LINES: "40", MARS_SIM_LOG_INTERVAL_MS: "100" },
    )
  ).id;
  // The charts' history sampled twice a second, so that a test sees them drawn.
  api = await startApi({ config: tf.config({ queue }), port: 0, host: "127.0.0.1", historyEveryMs: 500 });
  const nc = await tf.connectAs("admin");
  try {
    token = (await (await ApiKeys.open(nc, OPEN_FLEET)).add("alice", "user")).token;
  } finally {
    await nc.close();
  }
  // Root in CI: Chromium's sandbox needs user namespaces it may not get there.
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
});
after(async () => {
  await browser?.close();
  await api?.close();
  await tf?.dispose();
});

/** A job's request as MARS text, as the API gives it. */
async function fetchRequestText(base: string, id: string): Promise<string> {
  const res = await fetch(`${base}/v1/jobs/${id}`, { headers: { authorization: `Bearer ${token}` } });
  return ((await res.json()) as { requestText: string }).requestText;
}

describe("dashboard, in a real browser", { timeout: TIMEOUT }, () => {
  it("shows the worker and a running job's progress, then the job's live log, and cancels it", async () => {
    const base = `http://127.0.0.1:${api.port}`;
    const page = await browser.newPage({ viewport: { width: 1200, height: 800 } });
    // Generous: a CI machine runs this beside another test file, with Chromium starting.
    page.setDefaultTimeout(45_000);
    // The page runs under its Content-Security-Policy: anything it refuses fails the test.
    const refused: string[] = [];
    page.on("console", (m) => {
      if (/Content Security Policy|Refused to/i.test(m.text())) refused.push(m.text());
    });
    const served = await page.goto(`${base}/`);
    const csp = served?.headers()["content-security-policy"] ?? "";
    assert.match(csp, /frame-ancestors 'none'/);
    assert.match(csp, /script-src 'sha256-/);
    assert.doesNotMatch(csp, /unsafe-inline/);
    await page.getByLabel("API key").fill(token);
    await page.getByRole("button", { name: "Open" }).click();
    await page
      .getByRole("cell", { name: workerId, exact: true }) // one row: a worker is listed once
      .waitFor()
      .catch(async (err: unknown) => {
        const said = await page.locator("#status").textContent();
        const shown = (await page.locator("main").innerHTML()).slice(0, 1500);
        throw new Error(`worker ${workerId} not shown; status "${said}"; page: ${shown}`, { cause: err });
      });

    // A long job: 2 params x 101 dates, 150 ms a field: still running when the test cancels it.
    const res = await fetch(`${base}/v1/jobs`, {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: JSON.stringify({ request: { param: "2t/msl", date: "20240101/to/20240410", grid: "10/10" } }),
    });
    const { id } = (await res.json()) as { id: string };
    // Open the job while the overview's stream keeps sending (the job runs: its progress changes
    // every second): a late overview event must not draw the job list over the job's page.
    await page.getByRole("link", { name: id }).waitFor();
    await page.getByRole("link", { name: id }).click();
    await page.locator("pre#log").waitFor();
    await sleep(2500);
    assert.equal(await page.locator("pre#log").count(), 1, "a late refresh drew the job list over the job");
    // The simulator prints 40 lines 100 ms apart, then writes 80 fields 150 ms apart.
    const log = page.locator("pre#log");
    const lines = async (): Promise<number> =>
      ((await log.textContent()) ?? "").split("\n").filter(Boolean).length;
    assert.ok(await eventually(async () => (await lines()) >= 2, 45_000), "no log lines on the job page");
    const linesBefore = await lines();
    assert.ok(
      await eventually(async () => (await lines()) > linesBefore, 45_000),
      "no live log lines appeared",
    );
    await page.screenshot({ path: `${SHOTS}dashboard-job.png` });

    await page.getByRole("link", { name: "All jobs" }).click();
    const bar = page.getByRole("progressbar", { name: `progress of ${id}` });
    const value = async (): Promise<number> =>
      Number((await bar.getAttribute("value", { timeout: 1000 }).catch(() => null)) ?? 0);
    assert.ok(await eventually(async () => (await value()) > 0, 45_000), "no progress shown");
    const first = await value();
    assert.ok(
      await eventually(async () => (await value()) > first, 45_000),
      "the progress bar did not advance",
    );
    await page.screenshot({ path: `${SHOTS}dashboard.png` });

    await page.getByRole("link", { name: id }).click();
    await page.locator("#job-state", { hasText: "running" }).waitFor();
    assert.equal(
      await page.locator("#job-state").textContent(),
      "running",
      "the job ended before the cancel",
    );
    // The job's page has its request as MARS text, its details and its history so far.
    assert.match((await page.locator("pre#request").textContent()) ?? "", /^retrieve,/);
    assert.match((await page.locator("#details").textContent()) ?? "", /attempt1 of \d+/);
    await page.locator("#history li", { hasText: "running" }).first().waitFor();
    // Cancel asks first, then shows the API's answer.
    await page.getByRole("button", { name: "Cancel job" }).click();
    assert.equal(await page.locator("#job-state").textContent(), "running", "cancelled without asking");
    await page.getByRole("button", { name: "Yes, cancel" }).click();
    await page.locator("#answer", { hasText: "cancel requested" }).waitFor();
    await page.locator("#job-state", { hasText: "cancelled" }).waitFor();
    assert.equal(await page.getByRole("button", { name: "Cancel job" }).isHidden(), true);
    // An ended job can be retried: a new job with the same request, linked to this one.
    await page.getByRole("button", { name: "Retry" }).click();
    await page.getByRole("button", { name: "Yes, retry" }).click();
    const again = page.locator("#answer a");
    await again.waitFor();
    const retryId = (await again.textContent()) ?? "";
    assert.notEqual(retryId, id);
    await again.click();
    await page.locator("#details", { hasText: `retry of${id}` }).waitFor();
    assert.equal(await page.locator("pre#request").textContent(), await fetchRequestText(base, id));
    await fetch(`${base}/v1/jobs/${retryId}`, {
      method: "DELETE",
      headers: { authorization: `Bearer ${token}` },
    });
    assert.deepEqual(refused, [], "the page did something its policy refuses");
    const docs = await fetch(`${base}/docs`);
    assert.match(docs.headers.get("content-security-policy") ?? "", /frame-ancestors 'none'/);
    assert.equal(docs.headers.get("x-frame-options"), "DENY");
    await page.close();
  });

  it("stays live with 10 jobs running: one stream for the page, none per job, rows updated in place", async () => {
    const base = `http://127.0.0.1:${api.port}`;
    // Room for all ten at once, beside the first test's worker.
    await tf.worker({ queue, concurrency: 10 }, { MARS_SIM_FIELD_DELAY_MS: "300" });
    const submit = async (i: number): Promise<string> => {
      const res = await fetch(`${base}/v1/jobs`, {
        method: "POST",
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
        // 2 params x 20 dates of 300 ms: 12 s each, all running at once.
        body: JSON.stringify({
          request: { param: "2t/msl", date: "20240101/to/20240120", grid: "10/10" },
          requestId: `dashmany-${i}`,
        }),
      });
      const body = (await res.json()) as { id: string };
      assert.equal(res.status, 202, JSON.stringify(body));
      return body.id;
    };
    const ids = await Promise.all(Array.from({ length: 10 }, (_, i) => submit(i)));
    const page = await browser.newPage({ viewport: { width: 1200, height: 800 } });
    page.setDefaultTimeout(45_000);
    const perJob: string[] = [];
    let streams = 0;
    page.on("request", (r) => {
      const path = new URL(r.url()).pathname;
      if (/^\/v1\/jobs\/[^/]+\/logs$/.test(path)) perJob.push(path);
      if (path === "/v1/stream") streams++;
    });
    await page.goto(`${base}/`);
    await page.getByLabel("API key").fill(token);
    await page.getByRole("button", { name: "Open" }).click();
    const bars = page.getByRole("progressbar");
    assert.ok(
      await eventually(async () => (await bars.count()) >= 10, 45_000),
      `${await bars.count()} progress bars with 10 jobs running`,
    );
    // A row kept across updates is the same element: mark one and see it survive.
    const row = page.locator(`tr[data-key="${ids[0]}"]`);
    await row.evaluate((el) => el.setAttribute("data-marked", "1"));
    const status = page.locator("#status");
    const seen = new Set<string>();
    assert.ok(
      await eventually(async () => {
        seen.add((await status.textContent()) ?? "");
        return [...seen].filter((t) => t.startsWith("live, updated")).length >= 3;
      }, 20_000),
      `the page did not stay live: ${[...seen].join(" | ")}`,
    );
    assert.equal(await row.getAttribute("data-marked"), "1", "the row was drawn again, not updated");
    // The last hour's charts (uPlot, from this server: the page's policy allows no other script).
    const charts = page.locator("#charts figure canvas");
    assert.ok(
      await eventually(async () => (await charts.count()) >= 2, 15_000),
      `charts drawn: ${await charts.count()}; ${await page.locator("#charts").textContent()}`,
    );
    assert.deepEqual(perJob, [], "the overview opened a stream per job");
    assert.equal(streams, 1, "one stream for the page");

    // A phone: the page is as wide as the screen; the tables scroll sideways inside it.
    await page.setViewportSize({ width: 390, height: 800 });
    const width = await page.evaluate<number>("document.documentElement.scrollWidth");
    assert.ok(width <= 390, `the page is ${width} px wide on a 390 px screen`);
    // Dark mode: a dark page with light text, not a transparent one.
    await page.emulateMedia({ colorScheme: "dark" });
    // (Evaluated in the page: this test is compiled without the DOM's types.)
    const colours = await page.evaluate<{ background: string; text: string }>(
      "({ background: getComputedStyle(document.body).backgroundColor, text: getComputedStyle(document.body).color })",
    );
    const luminance = (rgb: string): number => {
      const [r, g, b, a] = (rgb.match(/[\d.]+/g) ?? []).map(Number);
      assert.ok(a === undefined || a === 1, `a transparent colour: ${rgb}`);
      return (0.2126 * r! + 0.7152 * g! + 0.0722 * b!) / 255;
    };
    assert.ok(luminance(colours.background) < 0.2, `dark mode background ${colours.background}`);
    assert.ok(luminance(colours.text) > 0.7, `dark mode text ${colours.text}`);
    await page.close();
    for (const id of ids)
      await fetch(`${base}/v1/jobs/${id}`, {
        method: "DELETE",
        headers: { authorization: `Bearer ${token}` },
      });
  });

  it("shows failed jobs by error code, filters the jobs by a code and finds one by its id", async () => {
    const base = `http://127.0.0.1:${api.port}`;
    const res = await fetch(`${base}/v1/jobs`, {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: JSON.stringify({ request: { param: "nosuchparam", date: "20240101" } }),
    });
    const { id } = (await res.json()) as { id: string };
    const page = await browser.newPage({ viewport: { width: 1200, height: 800 } });
    page.setDefaultTimeout(45_000);
    await page.goto(`${base}/`);
    await page.getByLabel("API key").fill(token);
    await page.getByRole("button", { name: "Open" }).click();
    // The QoS section (a user key: its own lane only), and no dead letters for a user key.
    await page.locator("#qos", { hasText: "Lanes:" }).waitFor();
    assert.equal(await page.locator("#dead-section").isHidden(), true, "a user key was shown dead letters");
    // Usage by user and day: a user key's own only (earlier tests ended alice's jobs).
    await page.locator("#usage-body tr").first().waitFor();
    const usageUsers = await page.locator("#usage-body tr td:nth-child(1)").allTextContents();
    assert.deepEqual([...new Set(usageUsers)], ["alice"], `usage rows of ${usageUsers.join(", ")}`);
    await page.getByRole("button", { name: "MARS_RUNTIME_ERROR" }).click();
    const jobRows = page.locator("#jobs-body tr");
    await page.locator(`#jobs-body tr[data-key="${id}"]`).waitFor();
    const states = await page.locator("#jobs-body tr td:nth-child(3)").allTextContents();
    assert.ok(states.length > 0 && states.every((s) => s === "failed"), `states shown: ${states.join(", ")}`);
    assert.equal(await page.getByLabel("state").inputValue(), "failed");
    await page.getByLabel("id or request id").fill(id.slice(2, 14));
    await page.getByRole("button", { name: "Filter" }).click();
    assert.ok(
      await eventually(async () => (await jobRows.count()) === 1, 10_000),
      `${await jobRows.count()} rows for one id`,
    );
    assert.equal(await jobRows.first().getAttribute("data-key"), id);
    await page.close();
  });

  it("shows a user key only that user's jobs (not in the list, not by search, not by a job's address), and downloads and copies its own", async () => {
    const base = `http://127.0.0.1:${api.port}`;
    const nc = await tf.connectAs("admin");
    const bob = await (async () => {
      try {
        return (await (await ApiKeys.open(nc, OPEN_FLEET)).add("bob", "user")).token;
      } finally {
        await nc.close();
      }
    })();
    const submit = async (as: string, requestId: string): Promise<string> => {
      const res = await fetch(`${base}/v1/jobs`, {
        method: "POST",
        headers: { authorization: `Bearer ${as}`, "content-type": "application/json" },
        body: JSON.stringify({ request: { param: "2t", date: "20240101", grid: "10/10" }, requestId }),
      });
      const body = (await res.json()) as { id: string };
      assert.equal(res.status, 202, JSON.stringify(body));
      return body.id;
    };
    const alices = await submit(token, "tenant-alice");
    const bobs = await submit(bob, "tenant-bob");
    const page = await browser.newPage({
      viewport: { width: 1200, height: 800 },
      permissions: ["clipboard-read", "clipboard-write"],
    });
    page.setDefaultTimeout(45_000);
    const answers: string[] = [];
    page.on(
      "response",
      (r) =>
        void r.text().then(
          (t) => answers.push(t),
          () => undefined,
        ),
    );
    await page.goto(`${base}/`);
    await page.getByLabel("API key").fill(bob);
    await page.getByRole("button", { name: "Open" }).click();
    await page.locator(`#jobs-body tr[data-key="${bobs}"]`).waitFor();
    const users = await page.locator("#jobs-body tr td:nth-child(2)").allTextContents();
    assert.deepEqual([...new Set(users)], ["bob"], "bob's overview lists other users' jobs");
    // Alice's id and her request id, searched for: nothing.
    for (const q of [alices, "tenant-alice"]) {
      await page.getByLabel("id or request id").fill(q);
      await page.getByRole("button", { name: "Filter" }).click();
      await page.locator("#status", { hasText: "live, updated" }).waitFor();
      await sleep(1500); // a second live update, with the filter in force
      assert.equal(await page.locator("#jobs-body tr").count(), 0, `bob found ${q}`);
    }
    // Her job's own address: no request, no details.
    await page.goto(`${base}/#/job/${alices}`);
    await page.locator("#job-id").waitFor();
    await sleep(1500);
    assert.equal(await page.locator("#request").textContent(), "", "bob was shown alice's request");
    assert.equal(await page.locator("#details").textContent(), "", "bob was shown alice's job");
    // His own job, finished: its result downloads, and its request copies as MARS text.
    await page.goto(`${base}/#/job/${bobs}`);
    await page.locator("#job-state", { hasText: "succeeded" }).waitFor();
    const [download] = await Promise.all([
      page.waitForEvent("download"),
      page.getByRole("button", { name: "Download" }).click(),
    ]);
    const saved = `${tmpdir()}/dash-download-${process.pid}.grib`;
    await download.saveAs(saved);
    const res = await fetch(`${base}/v1/jobs/${bobs}`, { headers: { authorization: `Bearer ${bob}` } });
    const record = (await res.json()) as { result: { bytes: number } };
    const { size } = await stat(saved);
    await rm(saved, { force: true });
    assert.equal(size, record.result.bytes, "the download is not the job's result");
    await page.getByRole("button", { name: "Copy as MARS text" }).click();
    await page.locator("#answer", { hasText: "request copied" }).waitFor();
    assert.match(await page.evaluate<string>("navigator.clipboard.readText()"), /^retrieve,/);
    // Nothing the server sent this page names her job or her user, but for the "no job <id>" that
    // echoes the id asked for, as for an id no one has (test/api-tenants.test.ts compares the two).
    const leaked = answers.filter(
      (a) => (a.includes(alices) && !a.includes('"code":"JOB_NOT_FOUND"')) || a.includes("alice"),
    );
    assert.deepEqual(
      leaked.map((a) => a.slice(0, 200)),
      [],
      "answers to bob's page that name alice's job",
    );
    await page.close();
  });

  it("has no serious or critical accessibility violation (axe-core), on the overview and a job's page, light and dark", async () => {
    const base = `http://127.0.0.1:${api.port}`;
    // A job of this key's, so that the lists and a job's page have something in them.
    await fetch(`${base}/v1/jobs`, {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: JSON.stringify({ request: { param: "2t", date: "20240101", grid: "10/10" } }),
    });
    // axe is put into the page by the test: past the page's own policy, which allows no script of ours.
    const page = await browser.newPage({ viewport: { width: 1200, height: 800 }, bypassCSP: true });
    page.setDefaultTimeout(45_000);
    await page.goto(`${base}/`);
    await page.getByLabel("API key").fill(token);
    await page.getByRole("button", { name: "Open" }).click();
    await page.locator("#jobs-body tr").first().waitFor();
    await page.locator("#qos", { hasText: "Lanes:" }).waitFor();
    const axe = fileURLToPath(new URL("../../node_modules/axe-core/axe.min.js", import.meta.url));
    const check = async (what: string): Promise<void> => {
      await page.addScriptTag({ path: axe });
      const found = await page.evaluate<Array<{ id: string; impact: string; nodes: number; help: string }>>(
        "axe.run(document, { resultTypes: ['violations'] }).then((r) => r.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.length, help: v.help })))",
      );
      const bad = found.filter((v) => v.impact === "serious" || v.impact === "critical");
      assert.deepEqual(bad, [], `${what}: ${JSON.stringify(bad)}`);
    };
    for (const scheme of ["light", "dark"] as const) {
      await page.emulateMedia({ colorScheme: scheme });
      await page.goto(`${base}/#/`);
      await page.locator("#jobs-body tr").first().waitFor();
      await check(`overview, ${scheme}`);
      await page.screenshot({ path: `${SHOTS}dashboard-${scheme}.png`, fullPage: true });
      await page.locator("#jobs-body a").first().click();
      await page.locator("pre#request").waitFor();
      await check(`a job's page, ${scheme}`);
      await page.screenshot({ path: `${SHOTS}dashboard-job-${scheme}.png`, fullPage: true });
    }
    await page.close();
  });
});
