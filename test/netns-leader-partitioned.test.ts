/**
 * Several hosts, for real (#26): the work queue's stream leader partitioned away under load. Three nats-server nodes, two worker
 * hosts and a client host in network namespaces (helpers/netns-fleet.ts). One fault per file, so
 * that each file stays inside the suite's per-file time limit. Figures are printed as diagnostics,
 * not asserted (docs/PROTOCOL.md, "Faults across hosts").
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { JOBS_STREAM } from "../src/broker/subjects.js";
import { gapBefore, NODES, stallAfter, unavailable, withSetup } from "./helpers/netns-fleet.js";

describe("several hosts", { skip: unavailable ?? false, timeout: 175_000 }, () => {
  it("the work queue's stream leader partitioned away under load: a new one takes over, no job lost", async (t) => {
    await withSetup(t, async (s) => {
      const c = await s.load(30, 150);
      await c.out.waitFor((l) => l.includes('"t":"done"'), 60_000, "a first job done");
      const leader = await s.leader(JOBS_STREAM);
      assert.ok(NODES.includes(leader), `no leader named: ${leader}`);
      const faultAt = Date.now();
      await s.lab.partition(leader);
      const next = await (async () => {
        const until = Date.now() + 30_000;
        while (Date.now() < until) {
          const now = await s.leader(JOBS_STREAM).catch(() => "");
          if (now && now !== leader) return now;
          await sleep(250);
        }
        return "";
      })();
      const electedAfter = Date.now() - faultAt;
      assert.ok(next && next !== leader, "no new leader within 30 s");
      await sleep(3000);
      await s.lab.heal(leader);
      const done = await c.finished();
      t.diagnostic(
        `leader ${leader} partitioned: ${next} leads within ${electedAfter} ms; longest wait for a completion ${stallAfter(done, faultAt)} ms (median gap before: ${gapBefore(done, faultAt)} ms)`,
      );
    });
  });
});
