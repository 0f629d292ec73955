/**
 * The console holds up with 100 jobs running (#29, helpers/dashboard-live.ts): for a minute, the
 * overview's "updated" time and the progress it shows each move at least every 2 s.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { BusyConsole, MAX_STILL_MS, WATCH_MS } from "./helpers/dashboard-live.js";

const N = 100;

describe("dashboard, in a real browser, on a busy day", { timeout: 175_000 }, () => {
  it(`stays live for a minute with ${N} jobs running`, async (t) => {
    const busy = await BusyConsole.start(N);
    try {
      await busy.run(N);
      const page = await busy.overview(N);
      const seen = await busy.watch(page, WATCH_MS);
      t.diagnostic(JSON.stringify(seen));
      assert.ok(seen.bars.min >= N, `the page showed ${seen.bars.min} of ${N} running jobs at one time`);
      assert.ok(
        seen.statusStill <= MAX_STILL_MS,
        `"updated" stood still for ${Math.round(seen.statusStill)} ms`,
      );
      assert.ok(
        seen.progressStill <= MAX_STILL_MS,
        `progress stood still for ${Math.round(seen.progressStill)} ms`,
      );
      assert.match((await page.locator("#status").textContent()) ?? "", /^live, updated/);
      await busy.screenshot(page, "dashboard-busy");
    } finally {
      await busy.dispose();
    }
  });
});
