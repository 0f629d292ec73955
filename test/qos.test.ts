import assert from "node:assert/strict";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import type { KV } from "@nats-io/kv";
import type { JetStreamManager } from "@nats-io/jetstream";
import type { JobRecord } from "../src/broker/schemas.js";
import { JOBS_STREAM, laneConsumerName } from "../src/broker/subjects.js";
import type { JobHandle } from "../src/client/job.js";
import { cli } from "./helpers/cli.js";
import { rejection } from "./helpers/errors.js";
import { TestFleet } from "./helpers/fleet.js";
import { eventually } from "./helpers/proc.js";
import { QosLab } from "./helpers/qos-lab.js";
import { RawWebSocket } from "./helpers/ws-client.js";

const TIMEOUT = 120_000;
let lab: QosLab;
let tf: TestFleet;
let qos: KV;
let jsm: JetStreamManager;

before(async () => {
  lab = await QosLab.start();
  tf = lab.tf;
  qos = lab.qos;
  jsm = lab.jsm;
});
after(async () => {
  await lab?.dispose();
});

const REQUEST = { param: "2t/msl", date: "20240101", grid: "10/10" };
const SLOW = { MARS_SIM_FIELD_DELAY_MS: "150" };

const apply = (text: string): Promise<void> => lab.apply(text);

/** How many jobs hold a slot of a limit counter now. */
async function holding(key: string): Promise<number> {
  const e = await qos.get(`slots.${key}`);
  if (!e || e.operation !== "PUT" || e.length === 0) return 0;
  return Object.keys((e.json() as { holders: object }).holders).length;
}

/** How many of the user's jobs the server counts in flight on the user's lane (a limit the lane holds). */
const inFlight = (queue: string, user: string): Promise<number> => lab.inFlight(queue, user);

/** Most jobs whose [startedAt, finishedAt] overlap at one instant. */
function maxOverlap(records: JobRecord[]): number {
  const points = records
    .flatMap((r) => [[r.startedAt!, 1] as const, [r.finishedAt!, -1] as const])
    .sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let open = 0;
  let max = 0;
  for (const [, d] of points) max = Math.max(max, (open += d));
  return max;
}

function submitAs(
  fleet: Awaited<ReturnType<TestFleet["client"]>>,
  user: string,
  n: number,
  tag: string,
): Promise<JobHandle[]> {
  return Promise.all(
    Array.from({ length: n }, (_, i) =>
      fleet.submit(REQUEST, {
        targetDir: tag,
        targetFname: `${user}-${i}.grib`,
        environ: { user_id: user, request_id: `${tag}-${user}-${i}` },
      }),
    ),
  );
}

describe("QoS: limits, fair share, hot reload, deny", { timeout: TIMEOUT }, () => {
  // Held by the lanes' consumers (a selector on the queue alone), or by slots in the broker
  // (another selector key, which every job here matches): the same limit, two mechanisms.
  for (const held of ["lane", "slots"] as const)
    it(`a per-user limit of 2 over 3 workers x 4 slots holds at every sample while other users fill the slots (held by ${held})`, async () => {
      const queue = TestFleet.queue(`peruser${held}`);
      const match = held === "lane" ? `{ queue: ${queue} }` : `{ queue: ${queue}, param: 2t }`;
      await apply(`rules:\n  - name: per-user\n    match: ${match}\n    limit: 2\n    per: user\n`);
      const count = (u: string): Promise<number> =>
        held === "lane" ? inFlight(queue, u) : holding(`per-user.${u}`);
      const settings = { queue, concurrency: 4 };
      await Promise.all([0, 1, 2].map(() => tf.worker(settings, SLOW)));
      const fleet = await tf.client(settings);
      const users = ["alice", "bob", "carol", "dave", "erin"];
      let samples = 0;
      let worst = 0;
      let sampling = true;
      const sampler = (async () => {
        while (sampling) {
          const counts = await Promise.all(users.map(count));
          worst = Math.max(worst, ...counts);
          samples++;
          await new Promise((r) => setTimeout(r, 20));
        }
      })();
      const jobs = (
        await Promise.all([
          submitAs(fleet, "alice", 10, `peruser${held}`),
          ...users.slice(1).map((u) => submitAs(fleet, u, 4, `peruser${held}`)),
        ])
      ).flat();
      await Promise.all(jobs.map((j) => j.result()));
      sampling = false;
      await sampler;
      assert.ok(samples > 20, `only ${samples} samples`);
      assert.ok(worst <= 2, `a user had ${worst} jobs counted at once`);
      assert.ok(worst === 2, "the limit was never reached: the test proves nothing");
      const records = await Promise.all(jobs.map((j) => j.status()));
      for (const u of users) {
        const mine = records.filter((r) => r.environ["user_id"] === u);
        assert.ok(maxOverlap(mine) <= 2, `${u} ran ${maxOverlap(mine)} at once`);
      }
      assert.ok(
        maxOverlap(records) >= 6,
        `other users did not fill the free slots: ${maxOverlap(records)} at once`,
      );
      const odd = records.filter((r) => r.state !== "succeeded" || r.attempt !== 1);
      assert.deepEqual(
        odd.map((r) => ({ id: r.id, state: r.state, attempt: r.attempt, error: r.error })),
        [],
        "every job succeeds at its first attempt",
      );
      // Every place is given back (shortly after each job's record is final).
      const counted = async (): Promise<number[]> => Promise.all(users.map(count));
      assert.ok(
        await eventually(async () => (await counted()).every((n) => n === 0), 3000),
        `still counted: ${JSON.stringify(await counted())}`,
      );
    });

  it("a split rule splits big requests for everyone, through the shares gateway too; others run whole", async () => {
    const queue = TestFleet.queue("splitrule");
    await apply(
      `rules:\n  - name: by-month\n    match: { queue: ${queue}, fields: { min: 40 } }\n    split: [date:month]\n`,
    );
    await Promise.all([0, 1].map(() => tf.worker({ queue, concurrency: 2 })));
    const fleet = await tf.client({ queue });
    const big = await fleet.submit(
      { param: "2t", date: "20240115/to/20240310", grid: "10/10" },
      { targetDir: "splitrule", targetFname: "big.grib" },
    );
    await big.result();
    assert.deepEqual((await big.status()).split, { by: ["date:month"], parts: 3 });
    const small = await fleet.submit(
      { param: "2t", date: "20240101/to/20240110", grid: "10/10" },
      { targetDir: "splitrule", targetFname: "small.grib" },
    );
    await small.result();
    assert.equal((await small.status()).split, undefined, "a request under the rule's size was split");
    // Over the size, but one month: the split does not fit, and the job runs whole.
    const oneMonth = await fleet.submit(
      { param: "2t/msl", date: "20240101/to/20240131", grid: "10/10" },
      { targetDir: "splitrule", targetFname: "one-month.grib" },
    );
    await oneMonth.result();
    assert.equal((await oneMonth.status()).split, undefined);
    // A cads-mars-server client, unchanged: the same answer, from parts.
    const g = await tf.gateway({ queue });
    await mkdir(join(tf.sharedRoot, "splitrule"), { recursive: true });
    const ws = await RawWebSocket.open(g.sharesPort);
    ws.send(
      JSON.stringify({
        cmd: "start",
        requests: [{ param: "2t", date: "20240115/to/20240310", grid: "10/10" }],
        environ: { request_id: "split-ws", user_id: "u1", namespace: "n", host: null, username: "u1" },
        target: "/splitrule/ws.grib",
      }),
    );
    const finished = await ws.waitFor((f) => f["status"] === "finished");
    assert.equal(finished?.["returncode"], 0);
    assert.ok(ws.frames.some((f) => f["type"] === "log" && String(f["line"]).includes("No errors reported")));
    const viaGateway = (await fleet.jobs()).find((r) => r.target === "splitrule/ws.grib");
    assert.equal(viaGateway?.split?.parts, 3, "the gateway's job was not split");
    const whole = await readFile((await big.result()).target);
    assert.ok((await readFile(join(tf.sharedRoot, "splitrule", "ws.grib"))).equals(whole));
  });

  it("a split job's parts are the user's jobs: held to her per-user limit, while the job succeeds", async () => {
    const queue = TestFleet.queue("splitlimit");
    await apply(`rules:\n  - name: per-user\n    match: { queue: ${queue} }\n    limit: 2\n    per: user\n`);
    const settings = { queue, concurrency: 4 };
    await Promise.all([0, 1].map(() => tf.worker(settings, SLOW)));
    const fleet = await tf.client(settings);
    const job = await fleet.submit(
      { param: "2t/msl/10u/10v", date: "20240130/to/20240202", grid: "10/10" },
      { targetDir: "splitlimit", environ: { user_id: "alice" }, split: ["date:month", "param"] },
    );
    await job.result();
    const parts = await job.parts();
    assert.equal(parts.length, 8);
    assert.ok(parts.every((p) => p.state === "succeeded" && p.environ["user_id"] === "alice"));
    assert.equal(maxOverlap(parts), 2, `alice's parts ran ${maxOverlap(parts)} at once (limit 2)`);
  });

  it("a kill -9 leaks no place under a limit: the user's next job starts after the killed one was redelivered and finished", async () => {
    const queue = TestFleet.queue("qoskill");
    await apply(`rules:\n  - name: per-user\n    match: { queue: ${queue} }\n    limit: 1\n    per: user\n`);
    const settings = { queue, concurrency: 2 };
    const slow = { MARS_SIM_FIELD_DELAY_MS: "400" };
    const first = await tf.worker(settings, slow);
    const fleet = await tf.client(settings);
    // Long enough (12 fields of 400 ms) to be still running when its worker is killed.
    const one = await fleet.submit(
      { param: "2t/msl", date: "20240101/to/20240106", grid: "10/10" },
      {
        targetDir: "qoskill",
        targetFname: "alice-one.grib",
        environ: { user_id: "alice", request_id: "qoskill-one" },
      },
    );
    assert.ok(
      await eventually(async () => (await one.status()).state === "running", 10_000),
      "job 1 never ran",
    );
    const second = await tf.worker(settings, slow);
    const two = await fleet.submit(REQUEST, {
      targetDir: "qoskill",
      targetFname: "alice-two.grib",
      environ: { user_id: "alice", request_id: "qoskill-two" },
    });
    // Two free slots on two workers, and still it waits, and says why.
    await new Promise((r) => setTimeout(r, 500));
    assert.equal((await two.status()).state, "queued");
    const why = await fleet.explain(two.id);
    assert.ok(
      why.some((w) => w === "limit per-user for alice: 1/1 running"),
      `explanation: ${why.join(" | ")}`,
    );
    assert.equal(
      (await one.status()).state,
      "running",
      "job 1 ended before the kill: the test proves nothing",
    );
    first.kill("SIGKILL");
    await Promise.all([one.result(), two.result()]);
    const [r1, r2] = await Promise.all([one.status(), two.status()]);
    assert.equal(r1.attempt, 2, "job 1 was redelivered");
    assert.equal(r1.worker, second.id);
    assert.ok(r2.startedAt! >= r1.finishedAt!, "job 2 started while job 1 still held the user's only slot");
    assert.ok(
      await eventually(async () => (await inFlight(queue, "alice")) === 0, 3000),
      "a place under the limit was leaked",
    );
  });

  it("rules applied with the CLI take effect within a second while jobs run; an invalid file changes nothing and names its line", async () => {
    const queue = TestFleet.queue("reload");
    const env = tf.env({ queue }, "admin");
    const good = join(tf.sharedRoot, "rules-good.yaml");
    const wider = join(tf.sharedRoot, "rules-wider.yaml");
    const bad = join(tf.sharedRoot, "rules-bad.yaml");
    const rule = (n: number): string =>
      `rules:\n  - name: per-user\n    match: { queue: ${queue} }\n    limit: ${n}\n    per: user\n`;
    await writeFile(good, rule(1));
    await writeFile(wider, rule(3));
    await writeFile(bad, `rules:\n  - name: per-user\n    limit: lots\n    per: user\n`);
    const applied = await cli(["qos", "apply", good], env);
    assert.equal(applied.code, 0, applied.stderr);
    await tf.worker({ queue, concurrency: 4 }, { MARS_SIM_FIELD_DELAY_MS: "1500" });
    const fleet = await tf.client({ queue });
    const jobs = await submitAs(fleet, "alice", 4, "reload");
    assert.ok(await eventually(async () => (await inFlight(queue, "alice")) === 1, 10_000), "nothing ran");

    const refused = await cli(["qos", "apply", bad], env);
    assert.equal(refused.code, 2, refused.stderr);
    assert.match(refused.stderr, /QOS_RULES_INVALID/);
    assert.match(refused.stderr, /rules-bad\.yaml:3:\d+: rules\.0\.limit/);
    const shown = await cli(["qos", "show", "--json"], env);
    assert.equal(shown.code, 0, shown.stderr);
    const after = JSON.parse(shown.stdout) as {
      rules: { rules: Array<{ limit: number }> };
      limits: Array<{ key: string; running: number; limit: number | null }>;
    };
    assert.equal(after.rules.rules[0]!.limit, 1, "the invalid file changed the rules");
    assert.deepEqual(
      after.limits.filter((l) => l.key === "per-user.alice").map((l) => l.running),
      [1],
    );
    assert.deepEqual(
      after.limits.filter((l) => l.key === "per-user.alice").map((l) => l.limit),
      [1],
      "qos show gives each limit's value beside its running count",
    );
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(await inFlight(queue, "alice"), 1, "the invalid file changed the limit");

    const widened = await cli(["qos", "apply", wider], env);
    assert.equal(widened.code, 0, widened.stderr);
    assert.ok(
      await eventually(async () => (await inFlight(queue, "alice")) === 3, 1000, 20),
      "the wider limit did not take effect within a second",
    );
    await Promise.all(jobs.map((j) => j.result()));
  });

  it("a lane consumer that lost its per-user cap (an older worker, an operator's edit) gets it back", async () => {
    const queue = TestFleet.queue("recap");
    await apply(`rules:\n  - name: per-user\n    match: { queue: ${queue} }\n    limit: 2\n    per: user\n`);
    const settings = { queue, concurrency: 2 };
    await tf.worker(settings);
    const fleet = await tf.client(settings);
    await (await submitAs(fleet, "alice", 1, "recap"))[0]!.result();
    const name = laneConsumerName(queue, "alice");
    const cap = async (): Promise<number | undefined> =>
      (await jsm.consumers.info(JOBS_STREAM, name)).config.max_ack_pending;
    assert.equal(await cap(), 2, "the lane consumer was made without the cap");
    // What a worker from before the lane cap does when it makes the lane's consumer.
    await jsm.consumers.update(JOBS_STREAM, name, { max_ack_pending: -1 });
    assert.equal(await cap(), -1);
    assert.ok(await eventually(async () => (await cap()) === 2, 5000), "the cap was not set again");
  });

  it("deny rules refuse at submit with their message; a job forged past the client is refused by the worker", async () => {
    const queue = TestFleet.queue("deny");
    await apply(
      `rules:\n  - name: closed\n    match: { queue: ${queue}, environ.namespace: cerra }\n    deny: CERRA is closed for maintenance until Monday\n`,
    );
    await tf.worker({ queue, marsCommand: tf.countingMars });
    const fleet = await tf.client({ queue });
    const err = await rejection(
      fleet.submit(REQUEST, {
        environ: { user_id: "alice", namespace: "cerra", request_id: "denied-1" },
        requestId: "denied-1",
      }),
    );
    assert.equal(err.code, "QOS_DENIED");
    assert.equal(err.message, "CERRA is closed for maintenance until Monday");
    assert.equal((await rejection(fleet.job("denied-1"))).code, "JOB_NOT_FOUND");
    const ok = await fleet.submit(REQUEST, {
      environ: { user_id: "alice", namespace: "era5", request_id: "allowed-1" },
    });
    await ok.result();

    const forged = {
      v: 1,
      id: "denied-raw",
      queue,
      requests: [{ verb: "retrieve", params: { param: ["2t"], date: ["20240101"] } }],
      target: "deny/raw.grib",
      environ: { user_id: "alice", namespace: "cerra", request_id: "denied-raw" },
      timeoutMs: 0,
      submittedAt: Date.now(),
    };
    const job = (await tf.publishRaw(queue, forged, fleet))!;
    assert.equal((await rejection(job.result())).code, "QOS_DENIED");
    assert.equal((await tf.invocations()).get("denied-raw"), undefined, "MARS ran a denied job");
  });

  it("a job waiting for a dataset cap is held aside, so its user's next job runs, and says why it waits", async () => {
    const queue = TestFleet.queue("aside");
    await apply(`rules:\n  - name: d1-cap\n    match: { queue: ${queue}, dataset: d1 }\n    limit: 1\n`);
    await tf.worker({ queue, concurrency: 3 }, { MARS_SIM_FIELD_DELAY_MS: "600" });
    const fleet = await tf.client({ queue });
    const job = (dataset: string, name: string): Promise<JobHandle> =>
      fleet.submit(
        { ...REQUEST, dataset },
        {
          targetDir: "aside",
          targetFname: `${name}.grib`,
          environ: { user_id: "alice", request_id: `aside-${name}` },
        },
      );
    const a = await job("d1", "a");
    assert.ok(await eventually(async () => (await a.status()).state === "running", 10_000), "a never ran");
    const b = await job("d1", "b");
    const c = await job("d2", "c");
    assert.ok(
      await eventually(
        async () =>
          (await fleet.explain(b.id)).some((w) =>
            /held by worker .*: limit d1-cap in total: 1\/1 running/.test(w),
          ),
        5000,
      ),
      `b's explanation: ${(await fleet.explain(b.id)).join(" | ")}`,
    );
    await Promise.all([a.result(), b.result(), c.result()]);
    const [ra, rb, rc] = await Promise.all([a.status(), b.status(), c.status()]);
    assert.ok(rc.startedAt! < ra.finishedAt!, "c waited behind b, which waited for the d1 cap");
    assert.ok(rb.startedAt! >= ra.finishedAt!, "b ran while a held the d1 cap");
  });

  it("fair share: a user with two jobs gets slots at once, not after another user's backlog", async () => {
    const queue = TestFleet.queue("fair");
    const settings = { queue, concurrency: 2 };
    await tf.worker(settings, SLOW);
    const fleet = await tf.client(settings);
    const backlog = await submitAs(fleet, "alice", 10, "fair");
    const mine = await submitAs(fleet, "bob", 2, "fair");
    await Promise.all([...backlog, ...mine].map((j) => j.result()));
    const aliceStarts = (await Promise.all(backlog.map((j) => j.status())))
      .map((r) => r.startedAt!)
      .sort((a, b) => a - b);
    const bobStarts = (await Promise.all(mine.map((j) => j.status()))).map((r) => r.startedAt!);
    // Round-robin between the two users: bob's jobs start among alice's first five, not after her ten.
    for (const s of bobStarts)
      assert.ok(s < aliceStarts[4]!, `bob started at ${s}, alice's 5th at ${aliceStarts[4]}`);
  });
});
