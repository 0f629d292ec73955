import assert from "node:assert/strict";
import { existsSync } from "node:fs";
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
  api = await startApi({ config: tf.config({ queue }), port: 0, host: "127.0.0.1" });
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
    // Open the job while a refresh of the job list is on its way (held here until the click): the
    // late refresh must not draw the list over the job's page.
    await page.getByRole("link", { name: id }).waitFor();
    const jobList = (url: URL): boolean => url.pathname === "/v1/jobs" && url.search === "?limit=50";
    let release: () => void = () => undefined;
    let released: Promise<void> | undefined;
    const held = new Promise<void>((resolve) => {
      void page.route(jobList, async (route) => {
        if (released) return route.continue(); // only the first is held
        released = new Promise<void>((r) => (release = r)).then(() => route.continue());
        resolve();
      });
    });
    await held;
    await page.getByRole("link", { name: id }).click();
    await page.locator("pre#log").waitFor();
    release();
    await released;
    await page.unroute(jobList);
    await sleep(300);
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
    await page.getByRole("button", { name: "Cancel job" }).click();
    await page.locator("#job-state", { hasText: "cancelled" }).waitFor();
    assert.equal(await page.getByRole("button", { name: "Cancel job" }).isHidden(), true);
    assert.deepEqual(refused, [], "the page did something its policy refuses");
    const docs = await fetch(`${base}/docs`);
    assert.match(docs.headers.get("content-security-policy") ?? "", /frame-ancestors 'none'/);
    assert.equal(docs.headers.get("x-frame-options"), "DENY");
    await page.close();
  });
});
