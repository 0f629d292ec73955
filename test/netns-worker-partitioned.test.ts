/**
 * Several hosts, for real (#26): a worker host partitioned past the ack wait. Three nats-server nodes, two worker
 * hosts and a client host in network namespaces (helpers/netns-fleet.ts). One fault per file, so
 * that each file stays inside the suite's per-file time limit. Figures are printed as diagnostics,
 * not asserted (docs/PROTOCOL.md, "Faults across hosts").
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { childrenMatching } from "./helpers/proc.js";
import { type Done, unavailable, withSetup } from "./helpers/netns-fleet.js";

describe("several hosts", { skip: unavailable ?? false, timeout: 175_000 }, () => {
  it("a worker host partitioned past the ack wait: another takes its job over, the result is moved into place once, and its MARS is stopped", async (t) => {
    await withSetup(t, async (s) => {
      const stale = await s.worker("w1", { MARS_SIM_FIELD_DELAY_MS: "400" });
      const c = s.client(["one"]);
      const running = JSON.parse(
        await c.out.waitFor((l) => l.includes('"t":"running"'), 60_000, "the job running"),
      ) as { worker: string };
      assert.equal(running.worker, stale.id);
      const taker = await s.worker("w2", { MARS_SIM_FIELD_DELAY_MS: "400" });
      const faultAt = Date.now();
      await s.lab.partition("w1");
      await sleep(5000); // the ack wait is 1.5 s (three heartbeats of 500 ms)
      await s.lab.heal("w1");
      const done = JSON.parse(
        await c.out.waitFor((l) => l.includes('"t":"done"'), 110_000, "the job done"),
      ) as Done;
      assert.equal(done.state, "succeeded");
      assert.equal(done.worker, taker.id, "the job was not finished by the other worker");
      assert.ok(done.attempt >= 2);
      assert.equal(done.fileBytes, done.bytes);
      const lostAt = Date.now();
      const lost = await (async () => {
        while (Date.now() - lostAt < 30_000) {
          // It learns either at its next write (the lease is a newer attempt's) or when its
          // heartbeats could not reach the broker past the lease: then it gives the attempt up.
          const msgs = stale.logs.map((l) => String(l["msg"]));
          if (msgs.some((m) => m.startsWith("lost the lease") || m.startsWith("attempt abandoned")))
            return true;
          await sleep(200);
        }
        return false;
      })();
      assert.ok(lost, "the partitioned worker never noticed it lost the job");
      // Its MARS is stopped, and its output never replaced the result.
      const deadline = Date.now() + 15_000;
      while (childrenMatching(stale.proc.pid!, "sim").length > 0 && Date.now() < deadline) await sleep(200);
      assert.deepEqual(childrenMatching(stale.proc.pid!, "sim"), [], "the stale MARS is still running");
      // Moved into place once: by the taker, or by the stale attempt if it passed its fence before
      // the taker claimed (the taker then adopts that file, as the record's worker).
      assert.equal(s.commits().get(done.id), 1, "the result was not moved into place exactly once");
      const takenAt = taker.logs.find((l) => l["msg"] === "job started" && l["jobId"] === done.id)?.["time"];
      t.diagnostic(
        `worker partitioned: the job started again ${Number(takenAt) - faultAt} ms and finished ${done.at - faultAt} ms after the fault`,
      );
    });
  });
});
