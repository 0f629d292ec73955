/**
 * How result() follows a job: a core subscription to the record's keys, creating nothing on the
 * server, where what arrives is only a hint that is checked against the bucket.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { headers } from "@nats-io/transport-node";
import { rereadEveryMs } from "../src/broker/records.js";
import { JOBS_BUCKET, JOBS_STREAM, consumerName } from "../src/broker/subjects.js";
import { MarsFleetError } from "../src/core/errors.js";
import { TestFleet } from "./helpers/fleet.js";
import { eventually } from "./helpers/proc.js";
import { errorCode } from "./helpers/errors.js";

const SMALL = { param: "2t", date: "20240101", grid: "10/10" };

let tf: TestFleet;
before(async () => {
  tf = await TestFleet.start();
});
after(async () => {
  await tf.dispose();
});

async function consumerCount(): Promise<number> {
  const nc = await tf.connectAs("admin");
  try {
    const jsm = await jetstreamManager(nc);
    let n = 0;
    for await (const name of jsm.streams.names()) for await (const c of jsm.consumers.list(name)) if (c) n++;
    return n;
  } finally {
    await nc.close();
  }
}

describe("reads of a job", { timeout: 60_000 }, () => {
  it("leave no consumer on the server: events(), the stored log, the job list", async () => {
    const queue = TestFleet.queue("reads");
    await tf.worker({ queue });
    const fleet = await tf.client({ queue });
    const job = await fleet.submit(SMALL);
    await job.result();
    const before = await consumerCount();
    const states: string[] = [];
    for await (const ev of job.events()) if (ev.type === "state") states.push(ev.state);
    assert.equal(states.at(-1), "succeeded");
    assert.ok((await job.storedLog()).length > 0);
    assert.ok((await fleet.jobs()).some((r) => r.id === job.id));
    // Deletion is asynchronous (best effort): give it a moment, but far less than any server timer.
    const clean = await eventually(async () => (await consumerCount()) === before, 3000);
    assert.ok(clean, `consumers left: ${(await consumerCount()) - before}`);
  });
});

describe("result()", { timeout: 60_000 }, () => {
  it("is not fooled by a write the bucket refused, and leaves no consumer behind", async () => {
    const queue = TestFleet.queue("follow");
    const fleet = await tf.client({ queue });
    const job = await fleet.submit(SMALL); // no worker: it stays queued
    const consumersBefore = await consumerCount();
    let settled: string | undefined;
    const result = job.result().then(
      () => (settled = "succeeded"),
      (err: unknown) => (settled = err instanceof MarsFleetError ? err.code : String(err)),
    );
    await new Promise((r) => setTimeout(r, 200));
    // A compare-and-set write with a wrong revision: JetStream refuses it, but core subscribers of
    // the subject still see it go by.
    const nc = await tf.connectAs("admin");
    const forged = {
      ...(await job.status()),
      state: "succeeded",
      result: { target: "x.grib", bytes: 1, elapsedMs: 1 },
    };
    const h = headers();
    h.set("Nats-Expected-Last-Subject-Sequence", "999999");
    await assert.rejects(
      jetstream(nc).publish(`$KV.${JOBS_BUCKET}.${job.id}.status`, JSON.stringify(forged), { headers: h }),
    );
    await nc.close();
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(settled, undefined, "result() settled on a refused write");
    assert.equal(await consumerCount(), consumersBefore, "result() made a consumer on the server");
    assert.equal(await job.cancel(), true);
    await result;
    assert.equal(settled, "JOB_CANCELLED");
  });

  it("after submit, reads only the final status, even when the job ended before it was called", async () => {
    const queue = TestFleet.queue("early");
    await tf.worker({ queue });
    const fleet = await tf.client({ queue });
    const job = await fleet.submit(SMALL);
    const other = await tf.client({ queue });
    assert.ok(
      await eventually(
        async () => (await other.job(job.id).then((j) => j.status())).state === "succeeded",
        20_000,
      ),
      "the job never succeeded",
    );
    // Only result()'s reads of the jobs bucket from here on (the worker is done with the job).
    const nc = await tf.connectAs("admin");
    let reads = 0;
    const sub = nc.subscribe(`$JS.API.STREAM.MSG.GET.KV_${JOBS_BUCKET}`, {
      callback: () => {
        reads++;
      },
    });
    await nc.flush();
    assert.ok((await job.result()).bytes > 0);
    await nc.flush();
    sub.unsubscribe();
    await nc.close();
    // The watch made before the job existed saw its final write: one read of the status key.
    assert.equal(reads, 1, `result() read the bucket ${reads} times`);
  });

  it("ends with the abort reason when its signal aborts", async () => {
    const fleet = await tf.client({ queue: TestFleet.queue("abort") });
    const job = await fleet.submit(SMALL);
    const ac = new AbortController();
    const pending = job.result({ signal: ac.signal });
    ac.abort(new Error("gave up"));
    await assert.rejects(pending, /gave up/);
  });

  it("cancels a job handed back between attempts at once, and it never runs again", async () => {
    const queue = TestFleet.queue("handback");
    const settings = { queue, drainGrace: "200ms", marsCommand: tf.countingMars };
    const slow = { MARS_SIM_FIELD_DELAY_MS: "300" };
    const worker = await tf.worker(settings, slow);
    const fleet = await tf.client(settings);
    const job = await fleet.submit(
      { param: "2t", date: "20240101/to/20240110" },
      { environ: { request_id: "handback-1" } },
    );
    for await (const ev of job.events()) if (ev.type === "log") break; // MARS runs
    worker.kill("SIGTERM"); // a short drain grace: the job is handed back, no worker is left
    assert.equal(await worker.exited, 3);
    assert.ok(
      await eventually(async () => (await job.status()).state === "retrying", 5000),
      `not handed back: ${(await job.status()).state}`,
    );
    assert.equal(await job.cancel(), true);
    assert.equal((await job.status()).state, "cancelled");
    assert.equal(await errorCode(job.result()), "JOB_CANCELLED");
    await tf.worker(settings, slow); // it gets the message again, and drops it
    const nc = await tf.connectAs("admin");
    const jsm = await jetstreamManager(nc);
    const consumed = await eventually(async () => {
      const info = await jsm.consumers.info(JOBS_STREAM, consumerName(queue));
      return info.num_pending === 0 && info.num_ack_pending === 0;
    }, 10_000);
    await nc.close();
    assert.ok(consumed, "the new worker never took the job's message");
    assert.equal((await tf.invocations()).get("handback-1"), 1, "the cancelled job ran again");
    assert.equal((await job.status()).state, "cancelled");
  });
});

describe("timed reads of records followed to their end", { timeout: 5_000 }, () => {
  it("each is read every 10 s, less often once a client follows so many that reads would pass 100 a second", () => {
    assert.equal(rereadEveryMs(1), 10_000);
    assert.equal(rereadEveryMs(1000), 10_000);
    assert.equal(rereadEveryMs(2000), 20_000);
    assert.equal(rereadEveryMs(20_000), 200_000);
    // The reads a second stay at most 100 however many are followed.
    for (const n of [1, 500, 1000, 5000, 20_000, 100_000]) assert.ok(n / (rereadEveryMs(n) / 1000) <= 100);
  });
});
