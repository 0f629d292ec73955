/**
 * The console holds up with 100 jobs running (#29, helpers/dashboard-live.ts): for a minute, the
 * overview's "updated" time and the progress it shows each move at least every 2 s.
 */
import { describe, it } from "node:test";
import { BusyConsole } from "./helpers/dashboard-live.js";

const N = 100;

describe("dashboard, in a real browser, on a busy day", { timeout: 175_000 }, () => {
  it(`stays live for a minute with ${N} jobs running`, async (t) => {
    const busy = await BusyConsole.start(N);
    try {
      await busy.run(N);
      const page = await busy.overview(N);
      await busy.assertStaysLive(page, N, t);
      await busy.screenshot(page, "dashboard-busy");
    } finally {
      await busy.dispose();
    }
  });
});
