import assert from "node:assert/strict";
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { connect } from "@nats-io/transport-node";
import { jetstreamManager } from "@nats-io/jetstream";
import { DEAD_STREAM, subjects } from "../src/broker/subjects.js";
import { executeMarsLocally } from "../src/client/execute.js";
import type { JobEvent, JobHandle } from "../src/client/job.js";
import { MarsFleetError } from "../src/core/errors.js";
import { TestFleet } from "./helpers/fleet.js";
import { eventually, groupMembers, helperPids, processAlive } from "./helpers/proc.js";

let tf: TestFleet;
before(async () => {
  tf = await TestFleet.start();
});
after(async () => {
  await tf.dispose();
});

const REQUEST = { param: "2t/msl", date: "20240101/to/20240106", grid: "5/5" };

/** Follow a job's events until `until` holds; keeps collecting in the background afterwards. */
function follow(job: JobHandle): {
  events: JobEvent[];
  done: Promise<void>;
  until(pred: (e: JobEvent[]) => boolean): Promise<void>;
} {
  const events: JobEvent[] = [];
  const waiters: Array<{ pred: (e: JobEvent[]) => boolean; resolve: () => void }> = [];
  const done = (async () => {
    for await (const e of job.events()) {
      events.push(e);
      for (const w of waiters.filter((x) => x.pred(events))) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve();
      }
    }
  })();
  return {
    events,
    done,
    until: (pred) =>
      pred(events) ? Promise.resolve() : new Promise((resolve) => waiters.push({ pred, resolve })),
  };
}

const lines = (events: JobEvent[]): string[] => events.flatMap((e) => (e.type === "log" ? [e.line] : []));
const states = (events: JobEvent[]): string[] => events.flatMap((e) => (e.type === "state" ? [e.state] : []));

async function expectedBytes(name: string): Promise<Buffer> {
  const local = await executeMarsLocally(REQUEST, {
    targetDir: join(tf.sharedRoot, "expected"),
    targetFname: name,
  });
  return readFile(local.target);
}

async function noParts(dir: string): Promise<void> {
  assert.deepEqual(
    (await readdir(dir)).filter((n) => n.endsWith(".mars-part")),
    [],
  );
}

describe("fleet: failures", () => {
  it("redelivers a job whose worker was killed with SIGKILL; its MARS group dies with it", async () => {
    const queue = TestFleet.queue("kill9");
    const settings = { queue, concurrency: 1 };
    const slow = { MARS_SIM_FIELD_DELAY_MS: "250", MARS_SIM_SPAWN_CHILD: "1" };
    const first = await tf.worker(settings, slow);
    const fleet = await tf.client(settings);
    const job = await fleet.submit(REQUEST, { targetDir: "kill9", targetFname: "data.grib" });
    const f = follow(job);
    let pgid = 0;
    await f.until(
      (ev) =>
        helperPids(lines(ev)).length > 0 && ev.some((e) => e.type === "heartbeat" && (pgid = e.pid) > 0),
    );
    const [helper] = helperPids(lines(f.events));
    const second = await tf.worker(settings, slow);
    first.kill("SIGKILL");
    assert.ok(
      await eventually(() => !processAlive(helper!) && groupMembers(pgid).length === 0, 5000),
      "the dead worker's MARS survived",
    );
    const result = await job.result();
    await f.done;
    assert.ok(states(f.events).includes("retrying"), `states seen: ${states(f.events).join(",")}`);
    const rec = await job.status();
    assert.equal(rec.attempt, 2);
    assert.equal(rec.worker, second.id);
    assert.deepEqual(await readFile(result.target), await expectedBytes("kill9.grib"));
    await noParts(join(tf.sharedRoot, "kill9"));
  });

  it("finishes jobs across a nats-server restart without losing events", async () => {
    const queue = TestFleet.queue("restart");
    const settings = { queue };
    await tf.worker(settings, { MARS_SIM_FIELD_DELAY_MS: "150" });
    const fleet = await tf.client(settings);
    const job = await fleet.submit(REQUEST, { targetDir: "restart" });
    const f = follow(job);
    await f.until((ev) => lines(ev).some((l) => l.includes("Transfering")));
    await tf.server.restart();
    const result = await job.result();
    await f.done;
    assert.deepEqual(await readFile(result.target), await expectedBytes("restart.grib"));
    const rec = await job.status();
    const finalAttempt = f.events.filter((e) => e.type === "log" && e.attempt === rec.attempt);
    assert.deepEqual(
      finalAttempt.map((e) => (e.type === "log" ? e.seq : 0)),
      finalAttempt.map((_, i) => i + 1),
      "log lines lost or reordered",
    );
    assert.ok(lines(f.events).some((l) => l.endsWith("No errors reported")));
    assert.equal(states(f.events).at(-1), "succeeded");
  });

  it("drains: a long grace lets the running job finish on the same worker", async () => {
    const queue = TestFleet.queue("drain-long");
    const settings = { queue, drainGrace: "20s" };
    const worker = await tf.worker(settings, { MARS_SIM_FIELD_DELAY_MS: "150" });
    const fleet = await tf.client(settings);
    const job = await fleet.submit(REQUEST, { targetDir: "drain", targetFname: "long.grib" });
    const f = follow(job);
    await f.until((ev) => states(ev).includes("running"));
    worker.kill("SIGTERM");
    await job.result();
    assert.equal(await worker.exited, 0);
    const rec = await job.status();
    assert.equal(rec.worker, worker.id);
    assert.equal(rec.attempt, 1);
  });

  it("drains: a short grace kills the job and hands it to another worker", async () => {
    const queue = TestFleet.queue("drain-short");
    const settings = { queue, drainGrace: "300ms" };
    const slow = { MARS_SIM_FIELD_DELAY_MS: "300", MARS_SIM_SPAWN_CHILD: "1" };
    const first = await tf.worker(settings, slow);
    const fleet = await tf.client(settings);
    const job = await fleet.submit(REQUEST, { targetDir: "drain", targetFname: "short.grib" });
    const f = follow(job);
    await f.until((ev) => helperPids(lines(ev)).length > 0);
    const [helper] = helperPids(lines(f.events));
    const second = await tf.worker(settings, slow);
    first.kill("SIGTERM");
    assert.equal(await first.exited, 3, "a forced drain exits 3");
    assert.ok(!processAlive(helper!), "MARS survived the forced drain");
    const result = await job.result();
    const rec = await job.status();
    assert.equal(rec.worker, second.id);
    assert.equal(rec.attempt, 2);
    assert.deepEqual(await readFile(result.target), await expectedBytes("short.grib"));
    await noParts(join(tf.sharedRoot, "drain"));
  });

  it("a second signal stops at once and hands the job back", async () => {
    const queue = TestFleet.queue("drain-twice");
    const settings = { queue, drainGrace: "60s" };
    const slow = { MARS_SIM_FIELD_DELAY_MS: "300" };
    const first = await tf.worker(settings, slow);
    const fleet = await tf.client(settings);
    const job = await fleet.submit(REQUEST, { targetDir: "drain", targetFname: "twice.grib" });
    const f = follow(job);
    await f.until((ev) => states(ev).includes("running"));
    const second = await tf.worker(settings, slow);
    first.kill("SIGTERM");
    await new Promise((r) => setTimeout(r, 200));
    first.kill("SIGTERM");
    assert.equal(await first.exited, 3);
    await job.result();
    assert.equal((await job.status()).worker, second.id);
  });

  it("a worker that lost its lease does not overwrite the newer attempt's record", async () => {
    const queue = TestFleet.queue("lease");
    const settings = { queue, concurrency: 1 };
    const slow = { MARS_SIM_FIELD_DELAY_MS: "250" };
    const stale = await tf.worker(settings, slow);
    const fleet = await tf.client(settings);
    const job = await fleet.submit(REQUEST, { targetDir: "lease", targetFname: "data.grib" });
    const f = follow(job);
    await f.until((ev) => states(ev).includes("running"));
    stale.kill("SIGSTOP"); // alive but silent: no heartbeats, its MARS runs on
    const fresh = await tf.worker(settings, slow);
    const result = await job.result();
    stale.kill("SIGCONT");
    assert.ok(
      await eventually(() => stale.logs.some((l) => String(l["msg"]).startsWith("lost the lease")), 10_000),
      "the stale worker did not notice it lost the job",
    );
    const rec = await job.status();
    assert.equal(rec.state, "succeeded");
    assert.equal(rec.worker, fresh.id);
    assert.equal(rec.attempt, 2);
    assert.deepEqual(await readFile(result.target), await expectedBytes("lease.grib"));
    await noParts(join(tf.sharedRoot, "lease"));
  });

  it("fails a poison job after max deliveries, dead-letters it, and tells the waiting client", async () => {
    const queue = TestFleet.queue("poison");
    const settings = { queue, maxRetries: 3 };
    await tf.worker(settings, { MARS_SIM_KILL_AFTER_BYTES: "500", MARS_SIM_KILL_SIGNAL: "SIGTERM" });
    const fleet = await tf.client(settings);
    const job = await fleet.submit(REQUEST, { targetDir: "poison" });
    let error: MarsFleetError | undefined;
    try {
      await job.result();
    } catch (err) {
      error = err as MarsFleetError;
    }
    assert.equal(error?.code, "JOB_FAILED");
    assert.equal(error?.details["lastCode"], "MARS_KILLED");
    const rec = await job.status();
    assert.equal(rec.state, "failed");
    assert.equal(rec.attempt, 3);
    const nc = await connect({ servers: tf.server.url });
    const jsm = await jetstreamManager(nc);
    const dead = await jsm.streams.getMessage(DEAD_STREAM, { last_by_subj: subjects.dead(queue) });
    const entry = JSON.parse(dead!.string()) as { jobId: string; deliveries: number };
    assert.equal(entry.jobId, job.id);
    assert.equal(entry.deliveries, 3);
    await nc.close();
  });

  it("dead-letters a job whose workers die on every delivery (MAX_DELIVERIES advisory)", async () => {
    const queue = TestFleet.queue("advisory");
    const settings = { queue, maxRetries: 2 };
    const slow = { MARS_SIM_FIELD_DELAY_MS: "300" };
    const fleet = await tf.client(settings);
    const job = await fleet.submit(REQUEST, { targetDir: "advisory" });
    const f = follow(job);
    for (let attempt = 1; attempt <= 2; attempt++) {
      const w = await tf.worker(settings, slow);
      await f.until((ev) =>
        ev.some((e) => e.type === "state" && e.state === "running" && e.attempt === attempt),
      );
      w.kill("SIGKILL");
      await w.exited;
    }
    await tf.worker(settings, slow); // a healthy worker: it handles the advisory
    await assert.rejects(
      job.result(),
      (e: MarsFleetError) => e.code === "JOB_FAILED" && /gave up after 2 deliveries/.test(e.message),
    );
    await f.done;
    assert.equal(states(f.events).at(-1), "failed");
  });
});
