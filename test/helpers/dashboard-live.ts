/**
 * The console on a busy day (#29): N jobs running at once for over a minute, the overview open in
 * Debian's Chromium, and the page watched from inside for a minute: its "updated" time and the
 * progress it shows must each move at least every 2 s. The jobs run a light MARS stand-in (a
 * shell loop writing a little every 3 s), so that a hundred of them fit on a CI machine beside
 * the browser; the simulator's Node process each would not.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium, type Browser, type Page } from "playwright-core";
import { ApiKeys } from "../../src/api/keys.js";
import { startApi, type ApiServer } from "../../src/api/server.js";
import { OPEN_FLEET } from "../../src/broker/signing.js";
import { TestFleet } from "./fleet.js";
import { eventually } from "./proc.js";

const CHROMIUM = process.env["CHROMIUM_PATH"] ?? "/usr/bin/chromium";
/** How long each stand-in job runs, in seconds: well past the minute watched. */
const JOB_SECONDS = 150;
/** How long the page is watched. */
const WATCH_MS = 60_000;
/** The longest the page may go without its time or its progress moving. */
const MAX_STILL_MS = 2000;

/**
 * A MARS stand-in: reads the target from the request file, announces its size, then appends 240
 * bytes and prints a line every 3 s for JOB_SECONDS (a hundred jobs, started a little apart, still
 * move the page's total every second; one `sleep` process per job each 3 s keeps the machine free
 * for the test file that runs beside this one).
 */
async function slowMars(root: string): Promise<string> {
  const path = join(root, ".slow-mars.sh");
  await writeFile(
    path,
    [
      "#!/bin/sh",
      'while IFS= read -r line; do case "$line" in',
      '  *target=*) target=${line#*target=\\"}; target=${target%%\\"*} ;;',
      'esac; done < "$1"',
      `echo "mars - INFO   - 00000000.000000 - Transfering ${JOB_SECONDS * 80} bytes"`,
      "sleep $(( $$ % 3 ))", // jobs started together write in turn, not all in the same second
      "i=0",
      `while [ $i -lt ${JOB_SECONDS / 3} ]; do`,
      "  printf '%0240d' 0 >> \"$target\"",
      '  echo "mars - INFO   - 00000000.000000 - field $i"',
      "  sleep 3; i=$((i+1))",
      "done",
      "",
    ].join("\n"),
    { mode: 0o755 },
  );
  return path;
}

/** What the page showed while watched: how long each of its moving parts stood still at most. */
export interface Watched {
  /** Longest time the status line's text did not change, in ms. */
  statusStill: number;
  /** Longest time the sum of the progress bars' values did not change, in ms. */
  progressStill: number;
  /** The fewest and most progress bars seen. */
  bars: { min: number; max: number };
  samples: number;
}

/** A fleet running `n` stand-in jobs at once, the API, and a browser; everything stopped by dispose(). */
export class BusyConsole {
  readonly ids: string[] = [];
  private constructor(
    readonly tf: TestFleet,
    readonly api: ApiServer,
    readonly browser: Browser,
    readonly token: string,
  ) {}

  get base(): string {
    return `http://127.0.0.1:${this.api.port}`;
  }

  /** `rules`: QoS rules put in force before the jobs are submitted. */
  static async start(n: number, rules?: string): Promise<BusyConsole> {
    assert.ok(existsSync(CHROMIUM), `no browser at ${CHROMIUM}: run bash scripts/setup.sh test`);
    const tf = await TestFleet.start();
    const queue = TestFleet.queue(`busy${n}`);
    let api: ApiServer | undefined;
    try {
      if (rules) await (await tf.client({ queue })).applyQosRules(rules);
      // Heartbeats every 2 s, not the tests' 250 ms: a hundred jobs beating four times a second would
      // load a CI machine that runs another test file beside this one.
      await tf.worker({
        queue,
        concurrency: n,
        marsCommand: await slowMars(tf.sharedRoot),
        heartbeatInterval: "2s",
      });
      api = await startApi({ config: tf.config({ queue }), port: 0, host: "127.0.0.1" });
      const nc = await tf.connectAs("admin");
      const token = await (async () => {
        try {
          return (await (await ApiKeys.open(nc, OPEN_FLEET)).add("ops", "admin")).token;
        } finally {
          await nc.close();
        }
      })();
      // Root in CI: Chromium's sandbox needs user namespaces it may not get there.
      const browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
      return new BusyConsole(tf, api, browser, token);
    } catch (err) {
      await api?.close();
      await tf.dispose();
      throw err;
    }
  }

  /** Submit `n` jobs through the API and wait until the worker runs them all. */
  async run(n: number): Promise<void> {
    for (let i = 0; i < n; i++) {
      const res = await fetch(`${this.base}/v1/jobs`, {
        method: "POST",
        headers: { authorization: `Bearer ${this.token}`, "content-type": "application/json" },
        body: JSON.stringify({
          request: { param: "2t", date: "20240101", grid: "10/10" },
          environ: { user_id: `user${i % 7}` },
          requestId: `busy-${i}`,
        }),
      });
      const body = (await res.json()) as { id: string };
      assert.equal(res.status, 202, JSON.stringify(body));
      this.ids.push(body.id);
    }
    const running = async (): Promise<number> => {
      const res = await fetch(`${this.base}/v1/jobs?state=running&limit=200`, {
        headers: { authorization: `Bearer ${this.token}` },
      });
      return ((await res.json()) as { jobs: unknown[] }).jobs.length;
    };
    assert.ok(
      await eventually(async () => (await running()) === n, 60_000),
      `${await running()} of ${n} running`,
    );
  }

  /** The overview, opened with the key, showing `rows` jobs (the page shows 50, then 50 more per "Show more"). */
  async overview(rows: number): Promise<Page> {
    const page = await this.browser.newPage({ viewport: { width: 1920, height: 1080 } });
    page.setDefaultTimeout(45_000);
    await page.goto(`${this.base}/`);
    await page.getByLabel("API key").fill(this.token);
    await page.getByRole("button", { name: "Open" }).click();
    const bars = page.getByRole("progressbar");
    await bars.first().waitFor();
    while ((await page.locator("#jobs-body tr").count()) < rows && (await page.locator("#more").isVisible()))
      await page.locator("#more").click();
    assert.ok(
      await eventually(async () => (await bars.count()) >= rows, 30_000),
      `${await bars.count()} progress bars with ${rows} jobs running`,
    );
    return page;
  }

  /**
   * Watch the page from inside for `ms`: every 100 ms a sampler in the page reads the status line
   * and the progress bars, and keeps how long each stood still at most.
   */
  private async watch(page: Page, ms: number): Promise<Watched> {
    // (Evaluated in the page as text: this test is compiled without the DOM's types.)
    return page.evaluate<Watched>(`new Promise((resolve) => {
      const read = () => {
        const bars = [...document.querySelectorAll("#jobs-body progress")];
        return {
          status: document.getElementById("status").textContent,
          progress: bars.reduce((s, b) => s + b.value, 0),
          bars: bars.length,
        };
      };
      const start = performance.now();
      let last = read();
      let statusAt = start, progressAt = start;
      const out = { statusStill: 0, progressStill: 0, bars: { min: last.bars, max: last.bars }, samples: 0 };
      const timer = setInterval(() => {
        const now = performance.now();
        const seen = read();
        out.samples++;
        out.bars.min = Math.min(out.bars.min, seen.bars);
        out.bars.max = Math.max(out.bars.max, seen.bars);
        if (seen.status !== last.status) statusAt = now;
        if (seen.progress !== last.progress) progressAt = now;
        out.statusStill = Math.max(out.statusStill, now - statusAt);
        out.progressStill = Math.max(out.progressStill, now - progressAt);
        last = seen;
        if (now - start >= ${ms}) { clearInterval(timer); resolve(out); }
      }, 100);
    })`);
  }

  /**
   * Watch the overview for WATCH_MS with `n` jobs running, and fail unless every one was shown and
   * the page's "updated" time and progress each moved at least every MAX_STILL_MS.
   */
  async assertStaysLive(page: Page, n: number, t: { diagnostic: (message: string) => void }): Promise<void> {
    const seen = await this.watch(page, WATCH_MS);
    t.diagnostic(JSON.stringify(seen));
    assert.ok(seen.bars.min >= n, `the page showed ${seen.bars.min} of ${n} running jobs at one time`);
    assert.ok(
      seen.statusStill <= MAX_STILL_MS,
      `"updated" stood still for ${Math.round(seen.statusStill)} ms`,
    );
    assert.ok(
      seen.progressStill <= MAX_STILL_MS,
      `progress stood still for ${Math.round(seen.progressStill)} ms`,
    );
    assert.match((await page.locator("#status").textContent()) ?? "", /^live, updated/);
  }

  /** With MARS_SCREENSHOTS=1, the page as it is now into docs/ (the README links it). */
  async screenshot(page: Page, name: string): Promise<void> {
    if (process.env["MARS_SCREENSHOTS"] !== "1") return;
    const docs = fileURLToPath(new URL("../../../docs/", import.meta.url));
    await page.evaluate("window.scrollTo(0, 0)");
    await page.screenshot({ path: `${docs}${name}.png` });
  }

  async dispose(): Promise<void> {
    await Promise.all(
      this.ids.map(
        (id) =>
          fetch(`${this.base}/v1/jobs/${id}`, {
            method: "DELETE",
            headers: { authorization: `Bearer ${this.token}` },
          }).catch(() => undefined), // the fleet is stopped next: a job not cancelled dies with it
      ),
    );
    await this.browser.close();
    await this.api.close();
    await this.tf.dispose();
  }
}
