/**
 * The console holds up with 10 jobs running (#29, helpers/dashboard-live.ts): for a minute, the
 * overview's "updated" time and the progress it shows each move at least every 2 s.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { BusyConsole } from "./helpers/dashboard-live.js";
import { eventually } from "./helpers/proc.js";

const N = 10;

describe("dashboard, in a real browser, on a busy day", { timeout: 175_000 }, () => {
  it(`stays live for a minute with ${N} jobs running`, async (t) => {
    // A per-user limit that holds none back (at most 2 jobs a user), so that the QoS view has one to show.
    const busy = await BusyConsole.start(N, "rules:\n  - name: per-user\n    limit: 5\n    per: user\n");
    try {
      await busy.run(N);
      const page = await busy.overview(N);
      await busy.assertStaysLive(page, N, t);
      // An admin's view of the fleet: the worker with its CPU and memory, each user's running count
      // beside the limit, and the dead letters.
      const worker = page.locator("#workers-body tr").first();
      assert.equal(await worker.locator("td").nth(3).textContent(), `${N} / ${N}`, "slots used");
      assert.match((await worker.locator("td").nth(4).textContent()) ?? "", /^\d+(\.\d+)?$/, "CPU %");
      assert.match((await worker.locator("td").nth(5).textContent()) ?? "", /^\d+(\.\d+)?$/, "RSS MB");
      await page.locator("#qos", { hasText: "per-user.user0: 2 of 5 running" }).waitFor();
      assert.equal(
        await page.locator("#dead-section").isVisible(),
        true,
        "an admin key is shown no dead letters",
      );
      // An admin filters by user (user3 has one of the ten jobs: the fourth).
      await page.getByLabel("user", { exact: true }).fill("user3");
      await page.getByRole("button", { name: "Filter" }).click();
      const rows = page.locator("#jobs-body tr");
      assert.ok(
        await eventually(async () => (await rows.count()) === 1, 10_000),
        `${await rows.count()} rows for user3`,
      );
      assert.equal(await rows.first().getAttribute("data-key"), busy.ids[3]);
    } finally {
      await busy.dispose();
    }
  });
});
