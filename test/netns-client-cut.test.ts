/**
 * Several hosts, for real (#26): a client cut off from its node. Three nats-server nodes, two worker
 * hosts and a client host in network namespaces (helpers/netns-fleet.ts). One fault per file, so
 * that each file stays inside the suite's per-file time limit. Figures are printed as diagnostics,
 * not asserted (docs/PROTOCOL.md, "Faults across hosts").
 */
import { describe, it } from "node:test";
import { stallAfter, unavailable, withSetup } from "./helpers/netns-fleet.js";

describe("several hosts", { skip: unavailable ?? false, timeout: 175_000 }, () => {
  it("a client cut off from its node carries on through another", async (t) => {
    await withSetup(t, async (s) => {
      const c = await s.load(24, 300);
      const first = JSON.parse(
        await c.out.waitFor((l) => l.includes('"t":"server"'), 30_000, "the client's server"),
      ) as { name: string };
      await c.out.waitFor(
        () => c.out.all.filter((x) => x.includes('"t":"done"')).length >= 3,
        60_000,
        "3 jobs done",
      );
      const faultAt = Date.now();
      await s.lab.cut("c1", first.name);
      const moved = JSON.parse(
        await c.out.waitFor(
          (l) => l.includes('"t":"server"') && !l.includes(`"name":"${first.name}"`),
          60_000,
          "the client on another node",
        ),
      ) as { name: string; at: number };
      const done = await c.finished();
      t.diagnostic(
        `client cut from ${first.name}: on ${moved.name} after ${moved.at - faultAt} ms; longest wait for a completion ${stallAfter(done, faultAt)} ms`,
      );
    });
  });
});
