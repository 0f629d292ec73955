/**
 * Lanes that cost what is active (#26): a lane consumer nobody uses for MARS_LANE_IDLE is removed
 * by the server, made again for the lane's next job; a job in hand keeps its lane; a removal racing
 * a new job loses nothing.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { JetStreamManager } from "@nats-io/jetstream";
import { JOBS_STREAM, laneOfAdvisory, laneOfConsumer, subjects } from "../src/broker/subjects.js";
import type { JobHandle } from "../src/client/job.js";
import { TestFleet } from "./helpers/fleet.js";
import { eventually } from "./helpers/proc.js";
import { QosLab } from "./helpers/qos-lab.js";

let lab: QosLab;
let tf: TestFleet;
let jsm: JetStreamManager;

before(async () => {
  lab = await QosLab.start();
  tf = lab.tf;
  jsm = lab.jsm;
});
after(async () => {
  await lab?.dispose();
});

const REQUEST = { param: "2t", date: "20240101", grid: "10/10" };

/** The lanes of `queue` that have a consumer on the server now. */
async function laneConsumers(queue: string): Promise<string[]> {
  const out: string[] = [];
  for await (const c of jsm.consumers.list(JOBS_STREAM)) {
    // A consumer removed while the list is read comes as null.
    const lane = c ? laneOfConsumer(queue, c.name) : undefined;
    if (lane !== undefined && lane !== "") out.push(lane); // not the queue's own consumer
  }
  return out.sort();
}

describe("lanes cost what is active (#26)", { timeout: 120_000 }, () => {
  it("idle lanes are removed by the server; a user who comes back is served as before", async () => {
    const queue = TestFleet.queue("idle");
    // Short heartbeats so that a short idle time is allowed (it is at least three heartbeats).
    const settings = { queue, concurrency: 4, heartbeatInterval: "300ms", laneIdle: "1s" };
    await tf.worker(settings);
    const fleet = await tf.client(settings);
    const users = Array.from({ length: 20 }, (_, i) => `user${i}`);
    const submit = (user: string, tag: string): Promise<JobHandle> =>
      fleet.submit(REQUEST, {
        targetDir: "idle",
        targetFname: `${user}-${tag}.grib`,
        environ: { user_id: user, request_id: `idle-${user}-${tag}` },
      });
    const first = await Promise.all(users.map((u) => submit(u, "a")));
    await Promise.all(first.map((j) => j.result()));
    assert.ok(
      (await laneConsumers(queue)).length > 0,
      "no lane consumer was ever made: the test proves nothing",
    );
    assert.ok(
      await eventually(async () => (await laneConsumers(queue)).length === 0, 10_000),
      `lane consumers left after their lanes went idle: ${(await laneConsumers(queue)).join(", ")}`,
    );
    // Back after the threshold: served normally, by a consumer made again.
    const back = await submit("user3", "b");
    await back.result();
    assert.equal((await back.status()).attempt, 1);
    assert.deepEqual(await laneConsumers(queue), ["user3"]);
  });

  it("a job running longer than the idle time keeps its lane, and runs once", async () => {
    const queue = TestFleet.queue("longrun");
    const settings = {
      queue,
      heartbeatInterval: "300ms",
      laneIdle: "1s",
      marsCommand: tf.countingMars,
    };
    await tf.worker(settings, { MARS_SIM_FIELD_DELAY_MS: "1000" });
    const fleet = await tf.client(settings);
    // Four fields of a second: four idle times long.
    const job = await fleet.submit(
      { param: "2t/msl", date: "20240101/20240102", grid: "10/10" },
      { targetDir: "longrun", environ: { user_id: "alice", request_id: "longrun-1" } },
    );
    assert.ok(await eventually(async () => (await job.status()).state === "running", 10_000), "never ran");
    let lanes: string[] = [];
    while ((await job.status()).state === "running") {
      lanes = await laneConsumers(queue);
      assert.deepEqual(lanes, ["alice"], "the lane of a running job was removed");
      await new Promise((r) => setTimeout(r, 200));
    }
    await job.result();
    assert.equal((await job.status()).attempt, 1);
    assert.equal((await tf.invocations()).get("longrun-1"), 1, "MARS ran more than once");
  });

  it("a worker full while others ran the jobs it heard of makes none of their lanes again", async () => {
    const queue = TestFleet.queue("stale");
    const settings = { queue, heartbeatInterval: "300ms", laneIdle: "1s" };
    // One slot, busy for about 8 s with one job; meanwhile another worker runs 12 users' jobs,
    // which the busy one hears of too, and their lanes go idle and are removed.
    const busy = await tf.worker({ ...settings, concurrency: 1 }, { MARS_SIM_FIELD_DELAY_MS: "2000" });
    const fleet = await tf.client(settings);
    const long = await fleet.submit(
      { param: "2t/msl", date: "20240101/20240102", grid: "10/10" },
      { targetDir: "stale", targetFname: "long.grib", environ: { user_id: "owner" } },
    );
    assert.ok(await eventually(async () => (await long.status()).state === "running", 10_000), "never ran");
    await tf.worker({ ...settings, concurrency: 4 });
    const users = Array.from({ length: 12 }, (_, i) => `u${i}`);
    const jobs = await Promise.all(
      users.map((u) =>
        fleet.submit(REQUEST, { targetDir: "stale", targetFname: `${u}.grib`, environ: { user_id: u } }),
      ),
    );
    await Promise.all(jobs.map((j) => j.result()));
    assert.ok(
      await eventually(async () => (await laneConsumers(queue)).every((l) => l === "owner"), 10_000),
      "the idle lanes were not removed",
    );
    assert.equal(
      (await long.status()).state,
      "running",
      "the long job ended too soon: the test proves nothing",
    );
    const made: string[] = [];
    const nc = await tf.connectAs("anonymous");
    const sub = nc.subscribe(subjects.consumersCreated, {
      callback: (_err, msg) => {
        const lane = laneOfAdvisory(queue, msg.subject);
        if (lane) made.push(lane);
      },
    });
    try {
      await long.result();
      // The busy worker's slot is free: it chooses among the lanes it knows of.
      await new Promise((r) => setTimeout(r, 2000));
      assert.deepEqual(made, [], "lanes whose jobs ran elsewhere were made again");
      assert.ok(
        busy.logs.some((l) => l["msg"] === "job settled"),
        "the busy worker's job did not settle there",
      );
    } finally {
      sub.unsubscribe();
      await nc.close();
    }
  });

  it("jobs submitted as their lane's consumer goes away are all served, once each", async () => {
    const queue = TestFleet.queue("race");
    const settings = {
      queue,
      concurrency: 2,
      heartbeatInterval: "300ms",
      laneIdle: "1s",
      marsCommand: tf.countingMars,
    };
    await tf.worker(settings);
    const fleet = await tf.client(settings);
    const jobs: JobHandle[] = [];
    let gone = 0;
    // Each new job comes 0.6 to 2.4 s after the last ended, around the idle time (1 s, which the
    // server acts on 0.1 to 1 s late): some find the lane's consumer,
    // some find it gone, some come as the server removes it.
    for (let i = 0; i < 12; i++) {
      if ((await laneConsumers(queue)).length === 0) gone++;
      const job = await fleet.submit(REQUEST, {
        targetDir: "race",
        targetFname: `r-${i}.grib`,
        environ: { user_id: "alice", request_id: `race-${i}` },
      });
      jobs.push(job);
      await job.result();
      await new Promise((r) => setTimeout(r, 600 + ((i * 397) % 1800)));
    }
    assert.ok(
      gone >= 3,
      `the lane's consumer was gone before only ${gone} of 12 jobs: the test proves little`,
    );
    const records = await Promise.all(jobs.map((j) => j.status()));
    assert.deepEqual(
      records.filter((r) => r.state !== "succeeded" || r.attempt !== 1).map((r) => r.id),
      [],
    );
    const runs = await tf.invocations();
    for (let i = 0; i < 12; i++)
      assert.equal(runs.get(`race-${i}`), 1, `race-${i} ran ${runs.get(`race-${i}`)} times`);
  });
});
