/** The record index's bookkeeping (broker/record-index.ts), over a bucket kept in a Map. */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { RecordIndex } from "../src/broker/record-index.js";

/** A bucket of `<id>.status` keys, counting what the index asks of it. */
class FakeBucket {
  readonly data = new Map<string, string>();
  reads: string[] = [];
  keyListings = 0;
  failNext = false;
  /** Runs inside the next read (a write heard mid-listing). */
  duringRead: (() => void) | undefined;

  async keys(): Promise<string[]> {
    this.keyListings++;
    return [...this.data.keys()].map((id) => `${id}.status`);
  }

  async read(id: string): Promise<string | undefined> {
    this.reads.push(id);
    const during = this.duringRead;
    this.duringRead = undefined;
    during?.();
    if (this.failNext) {
      this.failNext = false;
      throw new Error("broker away");
    }
    return this.data.get(id);
  }
}

function setup(): { bucket: FakeBucket; index: RecordIndex<string>; clock: { now: number } } {
  const bucket = new FakeBucket();
  const clock = { now: 0 };
  const index = new RecordIndex<string>(bucket, () => clock.now, 1000);
  for (const id of ["a", "b", "c"]) bucket.data.set(id, `${id}1`);
  return { bucket, index, clock };
}

const sorted = (xs: string[]): string[] => [...xs].sort();

describe("record index", { timeout: 10_000 }, () => {
  it("reads every record once, then only the ones heard to change", async () => {
    const { bucket, index } = setup();
    assert.deepEqual(sorted(await index.list()), ["a1", "b1", "c1"]);
    assert.deepEqual(sorted(bucket.reads), ["a", "b", "c"]);
    bucket.reads = [];
    assert.deepEqual(sorted(await index.list()), ["a1", "b1", "c1"]);
    assert.deepEqual(bucket.reads, [], "an unchanged bucket was read again");
    bucket.data.set("b", "b2");
    bucket.data.set("d", "d1");
    index.changed("b.status");
    index.changed("d.submitted");
    assert.deepEqual(sorted(await index.list()), ["a1", "b2", "c1", "d1"]);
    assert.deepEqual(sorted(bucket.reads), ["b", "d"]);
    assert.equal(bucket.keyListings, 1, "the keys were listed again before their time");
  });

  it("forgets a deleted record when heard, and an expired one at the next key listing", async () => {
    const { bucket, index, clock } = setup();
    await index.list();
    bucket.data.delete("a");
    index.changed("a.status");
    assert.deepEqual(sorted(await index.list()), ["b1", "c1"]);
    bucket.data.delete("b"); // expired: no message
    assert.deepEqual(sorted(await index.list()), ["b1", "c1"]);
    clock.now = 1000;
    bucket.reads = [];
    assert.deepEqual(sorted(await index.list()), ["c1"]);
    assert.deepEqual(bucket.reads, [], "a key listing read records it already had");
  });

  it("reads everything again after a lost connection, and every time once its subscription is dead", async () => {
    const { bucket, index } = setup();
    await index.list();
    bucket.data.set("a", "a2"); // a write whose message was lost
    index.lost();
    assert.deepEqual(sorted(await index.list()), ["a2", "b1", "c1"]);
    bucket.reads = [];
    await index.list();
    assert.deepEqual(bucket.reads, []);
    index.dead();
    await index.list();
    await index.list();
    assert.equal(bucket.reads.length, 6);
  });

  it("reads again what a failed listing did not, and what changed while it listed", async () => {
    const { bucket, index } = setup();
    await index.list();
    bucket.data.set("a", "a2");
    index.changed("a.status");
    bucket.failNext = true;
    await assert.rejects(index.list(), /broker away/);
    assert.deepEqual(sorted(await index.list()), ["a2", "b1", "c1"]);
    // c changes while a's change is being read: read on the next listing.
    bucket.data.set("a", "a3");
    index.changed("a.status");
    bucket.duringRead = () => {
      bucket.data.set("c", "c2");
      index.changed("c.status");
    };
    assert.deepEqual(sorted(await index.list()), ["a3", "b1", "c1"]);
    assert.deepEqual(sorted(await index.list()), ["a3", "b1", "c2"]);
  });

  it("serves callers one listing at a time, a later caller seeing at least what an earlier one saw", async () => {
    const { bucket, index } = setup();
    const first = index.list();
    bucket.data.set("b", "b2");
    index.changed("b.status");
    const second = index.list();
    assert.equal((await first).length, 3);
    assert.deepEqual(sorted(await second), ["a1", "b2", "c1"], "a caller after a write did not see it");
  });
});
