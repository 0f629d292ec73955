/**
 * The lane keeper (broker/keeper.ts): workers make no consumer on the work queue, they ask. With
 * no keeper answering, a lane's jobs wait (NO_KEEPER in the worker's log) and nothing is lost; a
 * `mars-fleet keeper` process started later serves them, and stops cleanly on SIGTERM.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { jetstreamManager } from "@nats-io/jetstream";
import { askForLane, KEEPER_GROUP } from "../src/broker/keeper.js";
import { JOBS_STREAM, laneConsumerName, subjects } from "../src/broker/subjects.js";
import { CLI_SCRIPT } from "../src/worker/process.js";
import { errorCode } from "./helpers/errors.js";
import { TestFleet } from "./helpers/fleet.js";
import { eventually } from "./helpers/proc.js";

const REQUEST = { param: "2t", date: "20240101", grid: "10/10" };

let tf: TestFleet;
before(async () => {
  tf = await TestFleet.start();
});
after(async () => {
  await tf.dispose();
});

describe("lane keeper", { timeout: 90_000 }, () => {
  it("a lane waits while no keeper answers, and a `mars-fleet keeper` process serves it", async () => {
    const queue = TestFleet.queue("keeper");
    const settings = { queue, keeper: "off" };
    const worker = await tf.worker(settings);
    const fleet = await tf.client(settings);
    const job = await fleet.submit(REQUEST, { targetDir: "keeper", environ: { user_id: "alice" } });
    const told = await eventually(
      async () => worker.logs.some((l) => JSON.stringify(l).includes("NO_KEEPER")),
      10_000,
    );
    assert.ok(told, "the worker never said that no keeper answered");
    assert.equal((await job.status()).state, "queued");

    const nc = await tf.connectAs("anonymous");
    const jsm = await jetstreamManager(nc);
    const keeper = spawn(process.execPath, [CLI_SCRIPT, "keeper"], {
      env: { ...process.env, ...tf.env(settings), MARS_LOG_LEVEL: "info" },
      stdio: ["ignore", "ignore", "pipe"],
    });
    let stderr = "";
    keeper.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((resolve) => keeper.on("exit", (code) => resolve(code)));
    try {
      const result = await job.result();
      assert.ok(result.bytes > 0);
      assert.equal((await job.status()).state, "succeeded");
      // Made by the keeper with the queue's own settings.
      const lane = await jsm.consumers.info(JOBS_STREAM, laneConsumerName(queue, "alice"));
      assert.equal(lane.config.filter_subject, `mars.jobs.${queue}.alice`);
      // Refusals come back as typed errors.
      const ask = { cap: -1, idleMs: 0 };
      assert.equal(await errorCode(askForLane(nc, "no-such-queue", "x", ask, 5000)), "TOPOLOGY_MISSING");
      assert.equal(await errorCode(askForLane(nc, queue, "*", ask, 5000)), "MESSAGE_INVALID");
    } finally {
      keeper.kill("SIGTERM");
      const code = await Promise.race([exited, sleep(10_000, "still running" as const)]);
      if (code === "still running") keeper.kill("SIGKILL");
      await nc.close();
      assert.equal(code, 0, `the keeper did not stop on SIGTERM with 0: ${stderr.slice(-500)}`);
    }
    const stopped = stderr
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { msg: string; answered?: number })
      .find((l) => l.msg === "lane keeper stopped");
    assert.ok(stopped && (stopped.answered ?? 0) >= 3, `the keeper's last line: ${stderr.slice(-300)}`);
  });

  it("a worker that keeps lanes keeps its own: a keeper cut off from the group loses none of its asks", async () => {
    // A keeper whose host was cut off still holds its place in the queue group until its server
    // notices (minutes): a request the group hands it is never answered. Here, one that never answers.
    const nc = await tf.connectAs("anonymous");
    let lost = 0;
    const deaf = nc.subscribe(subjects.allKeeper, { queue: KEEPER_GROUP, callback: () => void lost++ });
    await nc.flush();
    const queue = TestFleet.queue("keeps-own");
    const settings = { queue, keeper: "on" };
    const worker = await tf.worker(settings);
    try {
      const fleet = await tf.client(settings);
      const users = ["ann", "bea", "cid", "dot", "eve", "fay"];
      const jobs = await Promise.all(
        users.map((u) =>
          fleet.submit(REQUEST, {
            targetDir: "keeps-own",
            targetFname: `${u}.grib`,
            environ: { user_id: u },
          }),
        ),
      );
      for (const job of jobs) assert.ok((await job.result()).bytes > 0);
      assert.equal(lost, 0, "asks went through the queue group, where a keeper cut off loses them");
      const failed = worker.logs.filter((l) =>
        String(l["msg"]).startsWith("could not have a lane's consumer made"),
      );
      assert.deepEqual(failed, []);
    } finally {
      deaf.unsubscribe();
      await nc.close();
      worker.kill("SIGTERM"); // its keeper would answer the next test's ask
      await worker.exited;
    }
  });

  it("without a keeper, a request for a lane says so (NO_KEEPER)", async () => {
    const nc = await tf.connectAs("anonymous");
    try {
      // Nobody serves this queue's lanes on this server except workers with MARS_KEEPER on; none runs.
      const code = await errorCode(
        askForLane(nc, TestFleet.queue("none"), "x", { cap: -1, idleMs: 0 }, 2000),
      );
      assert.equal(code, "NO_KEEPER");
    } finally {
      await nc.close();
    }
  });
});
