/**
 * The fence's check for writes a compare-and-set let through unseen (JobStore.writesBetween,
 * othersUnseen): a single server checks each write as it stores it, so nothing is read there; what
 * the writes found mean to the attempt. Its reading on a cluster: test/fleet-cluster.test.ts.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { VersionedRecord } from "../src/broker/records.js";
import type { JobRecord } from "../src/broker/schemas.js";
import { othersUnseen } from "../src/broker/records.js";
import { TestFleet } from "./helpers/fleet.js";
import { writesAround } from "./helpers/unseen-writes.js";

const TIMEOUT = 30_000;

const write = (revision: number, claim: string, fenceClaim?: string): VersionedRecord => ({
  revision,
  record: {
    id: "j",
    queue: "q",
    state: "running",
    attempt: 1,
    claim,
    ...(fenceClaim && {
      committing: { attempt: 1, ino: revision, bytes: 1, elapsedMs: 1, claim: fenceClaim },
    }),
  } as JobRecord,
});

describe("writes a compare-and-set did not see", { timeout: TIMEOUT }, () => {
  it("only another writer's writes count; its first fence is the earlier one, a claim alone means the job is lost", () => {
    const claimedBy = (claim: string) => (r: JobRecord) => r.claim === claim;
    assert.equal(othersUnseen([], claimedBy("a")), undefined);
    assert.equal(
      othersUnseen([write(5, "a"), write(9, "a", "a")], claimedBy("a")),
      undefined,
      "its own writes",
    );
    const claimOnly = othersUnseen([write(5, "a"), write(7, "b")], claimedBy("a"));
    assert.deepEqual(claimOnly?.revisions, [7]);
    assert.equal(claimOnly?.fence, undefined);
    const fences = othersUnseen([write(6, "b"), write(7, "b", "b"), write(8, "c", "c")], claimedBy("a"));
    assert.deepEqual(fences?.revisions, [6, 7, 8]);
    assert.equal(fences?.fence?.revision, 7, "the first fence of another writer");
    // A fan-in knows its writes by the record's holder, not its claim.
    const held = (by: string, revision: number, fenced: boolean): VersionedRecord => {
      const w = write(revision, "parent-claim", fenced ? "parent-claim" : undefined);
      return { ...w, record: { ...w.record, fanIn: { by, attempt: 1, worker: "w", seq: 3 } } as JobRecord };
    };
    const mine = (r: JobRecord) => r.fanIn?.by === "p1";
    const fanIn = othersUnseen([held("p1", 4, false), held("p2", 5, true), held("p1", 6, true)], mine);
    assert.deepEqual(fanIn?.revisions, [5]);
    assert.equal(fanIn?.fence?.revision, 5);
  });

  describe("on a single server", () => {
    let tf: TestFleet;
    before(async () => {
      tf = await TestFleet.start();
      await (await tf.client({ queue: TestFleet.queue("unseen") })).close();
    });
    after(async () => {
      await tf.dispose();
    });

    it("reads nothing: the server checked each write as it stored it", async () => {
      const found = await writesAround([tf.server.url]);
      const [first, second, third] = found.writes;
      assert.equal(second.seenUpTo, first.revision, "a write says what it had seen");
      assert.equal(third.seenUpTo, second.revision);
      assert.ok(third.revision > second.revision + 1, "another job's write lies between");
      assert.deepEqual(found.between, []);
    });
  });
});
