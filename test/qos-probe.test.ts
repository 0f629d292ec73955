/**
 * What an operator's QoS probe found (#26), each tried the way it was found: a worker holding aside
 * more jobs than it has slots; a limit on one user by name starting her jobs out of order; and
 * `qos show` counting held-aside jobs as running, with a held-aside list that lagged.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { JobHandle } from "../src/client/job.js";
import { eventually } from "./helpers/proc.js";
import { QosLab } from "./helpers/qos-lab.js";
import { TestFleet } from "./helpers/fleet.js";

const TIMEOUT = 120_000;
let lab: QosLab;
let tf: TestFleet;

before(async () => {
  lab = await QosLab.start();
  tf = lab.tf;
});
after(async () => {
  await lab?.dispose();
});

const REQUEST = { param: "2t/msl", date: "20240101", grid: "10/10" };

const apply = (text: string): Promise<void> => lab.apply(text);
const inFlight = (queue: string, lane: string): Promise<number> => lab.inFlight(queue, lane);

/** One job after another (each submitted once the last is queued: a strict submission order). */
async function submitInOrder(
  fleet: Awaited<ReturnType<TestFleet["client"]>>,
  user: string,
  n: number,
  tag: string,
): Promise<JobHandle[]> {
  const jobs: JobHandle[] = [];
  for (let i = 0; i < n; i++)
    jobs.push(
      await fleet.submit(REQUEST, {
        targetDir: tag,
        targetFname: `${user}-${i}.grib`,
        environ: { user_id: user, request_id: `${tag}-${user}-${i}` },
      }),
    );
  return jobs;
}

describe("QoS probe findings (#26)", { timeout: TIMEOUT }, () => {
  it("a worker holds aside at most as many jobs as it has slots, even when one lane has them all", async () => {
    const queue = TestFleet.queue("aside-cap");
    // Every job matches; one runs at a time; the rest wait (not a limit that covers the lane: held aside).
    await apply(`rules:\n  - name: one-2t\n    match: { queue: ${queue}, param: 2t }\n    limit: 1\n`);
    const settings = { queue, concurrency: 3 };
    await tf.worker(settings, { MARS_SIM_FIELD_DELAY_MS: "200" });
    const fleet = await tf.client(settings);
    let worst = 0;
    let samples = 0;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        worst = Math.max(worst, await inFlight(queue, "alice"));
        samples++;
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    const jobs = await submitInOrder(fleet, "alice", 10, "aside-cap");
    await Promise.all(jobs.map((j) => j.result()));
    sampling = false;
    await sampler;
    assert.ok(samples > 20, `only ${samples} samples`);
    // One running and at most three held aside (its slots).
    assert.ok(worst <= 4, `the worker held ${worst} of the lane's jobs at once, with 3 slots and 1 running`);
    assert.ok(worst >= 3, `never more than ${worst} held: the test proves nothing`);
  });

  it("a limit on one user by name starts her jobs in the order she submitted them, over several workers", async () => {
    const queue = TestFleet.queue("byname");
    await apply(`rules:\n  - name: alice-one\n    match: { queue: ${queue}, user: alice }\n    limit: 1\n`);
    const settings = { queue, concurrency: 3 };
    await Promise.all([0, 1].map(() => tf.worker(settings, { MARS_SIM_FIELD_DELAY_MS: "100" })));
    const fleet = await tf.client(settings);
    const [alice, bob] = await Promise.all([
      submitInOrder(fleet, "alice", 8, "byname"),
      submitInOrder(fleet, "bob", 4, "byname"),
    ]);
    await Promise.all([...alice!, ...bob!].map((j) => j.result()));
    const records = await Promise.all(alice!.map((j) => j.status()));
    const out = records
      .map((r, i) => ({ i, startedAt: r.startedAt! }))
      .filter((r, k, all) => k > 0 && r.startedAt < all[k - 1]!.startedAt)
      .map((r) => r.i);
    assert.deepEqual(out, [], `alice's jobs started out of submission order at ${JSON.stringify(out)}`);
    for (const [k, r] of records.entries())
      if (k > 0)
        assert.ok(r.startedAt! >= records[k - 1]!.finishedAt!, `alice's job ${k} ran beside ${k - 1}`);
  });

  it("qos show counts held-aside jobs apart from running ones, and lists them within a second", async () => {
    const queue = TestFleet.queue("show-aside");
    await apply(`rules:\n  - name: one-2t\n    match: { queue: ${queue}, param: 2t }\n    limit: 1\n`);
    const settings = { queue, concurrency: 3 };
    await tf.worker(settings, { MARS_SIM_FIELD_DELAY_MS: "1500" });
    const fleet = await tf.client(settings);
    // Three users, three lanes: one job each; one runs, two are held aside.
    const jobs = (
      await Promise.all(["alice", "bob", "carol"].map((u) => submitInOrder(fleet, u, 1, "show-aside")))
    ).flat();
    const settled = async (): Promise<boolean> => {
      const states = await Promise.all(jobs.map(async (j) => (await j.status()).state));
      return states.filter((s) => s === "running").length === 1;
    };
    assert.ok(await eventually(settled, 10_000), "no job ran");
    const state = async (): Promise<{ running: number; held: number; listed: number }> => {
      const s = await fleet.qosState(queue);
      return {
        running: s.lanes.reduce((n, l) => n + l.running, 0),
        held: s.lanes.reduce((n, l) => n + (l.heldAside ?? 0), 0),
        listed: s.waiting.length,
      };
    };
    assert.ok(
      await eventually(async () => {
        const s = await state();
        return s.running === 1 && s.held === 2 && s.listed === 2;
      }, 1500),
      `qos show: ${JSON.stringify(await state())}, want 1 running, 2 held aside and listed`,
    );
    const [summary] = (await fleet.queues()).filter((q) => q.queue === queue);
    assert.equal(summary?.running, 1, "queues(): running");
    assert.equal(summary?.heldAside, 2, "queues(): held aside");
    await Promise.all(jobs.map((j) => j.result()));
  });
});

describe("QoS probe findings (#26): a freed place is used at once", { timeout: TIMEOUT }, () => {
  it("under a per-user limit the lanes hold, a user's next job starts as soon as one of hers ends, on any worker", async () => {
    const queue = TestFleet.queue("freed");
    await apply(`rules:\n  - name: per-user\n    match: { queue: ${queue} }\n    limit: 2\n    per: user\n`);
    const settings = { queue, concurrency: 4 };
    await Promise.all([0, 1, 2].map(() => tf.worker(settings, { MARS_SIM_FIELD_DELAY_MS: "100" })));
    const fleet = await tf.client(settings);
    // Alice's backlog, and four users beside her filling slots of all three workers.
    const [alice, ...others] = await Promise.all([
      submitInOrder(fleet, "alice", 10, "freed"),
      ...["bob", "carol", "dave", "erin"].map((u) => submitInOrder(fleet, u, 4, "freed")),
    ]);
    await Promise.all([...alice!, ...others.flat()].map((j) => j.result()));
    const records = (await Promise.all(alice!.map((j) => j.status()))).sort(
      (a, b) => a.startedAt! - b.startedAt!,
    );
    const ends = records.map((r) => r.finishedAt!).sort((a, b) => a - b);
    // Under a limit of 2, each of her jobs after the first two starts once one of hers ended: from
    // that end to the start, a worker's pull, not its next count of the lanes (a second later).
    const gaps = records.slice(2).map((r, k) => r.startedAt! - ends[k]!);
    // The median: a pull that loses a race now and then may still wait (PROTOCOL.md, pulls); before
    // the fix, most of her jobs waited for a count (medians of 470 to 550 ms).
    const median = [...gaps].sort((a, b) => a - b)[Math.floor(gaps.length / 2)]!;
    assert.ok(median < 150, `alice's next job waited ${JSON.stringify(gaps)} ms after one of hers ended`);
  });
});
