/**
 * Chaos, bounded: 120 jobs on 3 workers × 2 slots while workers are killed with SIGKILL and
 * replaced, one is frozen past its lease and thawed, and the nats-server restarts. Every job must
 * succeed exactly once, and no target may be written after its success was recorded.
 */
import assert from "node:assert/strict";
import { readdir, readFileSync } from "node:fs";
import { readFile, readdir as readdirP, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import type { WorkerProcess } from "../src/worker/process.js";
import { TestFleet } from "./helpers/fleet.js";

const JOBS = 120;
const SETTINGS = { concurrency: 2, maxRetries: 20, retryDelay: "50ms" };
let tf: TestFleet;
before(async () => {
  tf = await TestFleet.start();
});
after(async () => {
  await tf.dispose();
});

/** Live processes whose command line contains `text` (a MARS run of ours names its request file). */
async function processesWith(text: string): Promise<number[]> {
  const entries = await promisify(readdir)("/proc");
  return entries
    .filter((e) => /^\d+$/.test(e))
    .filter((pid) => {
      try {
        const cmd = readFileSync(`/proc/${pid}/cmdline`, "utf8");
        const state = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.[0];
        return cmd.includes(text) && state !== "Z";
      } catch {
        return false; // gone while we looked
      }
    })
    .map(Number);
}

describe("chaos", { timeout: 240_000 }, () => {
  it("every job succeeds once under kill -9, SIGSTOP past the lease, a server restart and duplicate submissions", async (t) => {
    const queue = TestFleet.queue("chaos");
    const settings = { ...SETTINGS, queue, marsCommand: tf.countingMars };
    const slow = { MARS_SIM_FIELD_DELAY_MS: "60" };
    const workers: WorkerProcess[] = [];
    for (let i = 0; i < 3; i++) workers.push(await tf.worker(settings, slow));
    const fleet = await tf.client(settings);
    const ids = Array.from({ length: JOBS }, (_, i) => `${queue}-j${i}`);
    const submit = (id: string) =>
      fleet.submit(
        { param: "2t", date: "20240101/to/20240104", grid: "10/10" },
        { targetDir: queue, targetFname: `${id}.grib`, requestId: id, environ: { request_id: id } },
      );
    const jobs = await Promise.all(ids.map(submit));
    // A split job (#27) in the same storm: four parts, and a fan-in that any worker may be doing
    // when it is killed.
    const SPLIT_REQUEST = { param: "2t/msl", date: "20240101/to/20240104", grid: "10/10" };
    const splitJob = await fleet.submit(SPLIT_REQUEST, {
      targetDir: queue,
      targetFname: "split.grib",
      requestId: `${queue}-split`,
      split: ["param", "date:2"],
    });
    const splitResult = splitJob.result({ signal: AbortSignal.timeout(180_000) });
    // Duplicate submissions (a client that retries): the same request ids again, while the chaos
    // goes on; each must name its first job, and that job must still be committed once.
    const duplicates: Array<Promise<string>> = [];
    const resubmit = (): void => {
      for (const id of ids.slice(0, 5)) duplicates.push(submit(id).then((job) => job.id));
    };
    const results = Promise.all([
      ...jobs.map((job) => job.result({ signal: AbortSignal.timeout(180_000) })),
      splitResult,
    ]).then((all) => all.slice(0, JOBS));
    let finished = false;
    void results.finally(() => (finished = true));

    // The chaos, while jobs run.
    const live = (): WorkerProcess[] => workers.filter((w) => w.proc.exitCode === null && !w.proc.signalCode);
    const pick = (): WorkerProcess => live()[Math.floor(Math.random() * live().length)]!;
    let kills = 0;
    for (let round = 0; round < 12 && !finished; round++) {
      await sleep(400);
      if (round === 1 || round === 7) resubmit();
      if (round === 3) {
        const frozen = pick();
        frozen.kill("SIGSTOP");
        await sleep(1500); // the ack wait is 750 ms: its jobs go to other workers
        frozen.kill("SIGCONT");
      } else if (round === 6) {
        await tf.server.restart({ downMs: 1500 });
      } else {
        const victim = pick();
        victim.kill("SIGKILL");
        await victim.exited;
        kills++;
        workers.push(await tf.worker(settings, slow));
      }
    }
    const done = await results;
    assert.equal(done.length, JOBS);
    const again = await Promise.all(duplicates);
    assert.ok(again.length >= 5, `${again.length} duplicate submissions made`);
    assert.deepEqual(
      again,
      again.map((_, i) => jobs[i % 5]!.id),
      "a duplicate submission named a job other than its first",
    );
    assert.ok(kills >= 3, `only ${kills} kills happened before the jobs were done: make the jobs longer`);

    await sleep(1000); // a stale worker, if any, would rename now
    const committed = new Map<string, number>();
    for (const w of workers) {
      for (const l of w.logs) {
        if (l["msg"] === "result committed") {
          const id = String(l["jobId"]);
          committed.set(id, (committed.get(id) ?? 0) + 1);
        }
      }
    }
    let retried = 0;
    for (const [i, job] of jobs.entries()) {
      const rec = await job.status();
      if (rec.attempt > 1) retried++;
      assert.equal(rec.state, "succeeded", `${job.id}: ${rec.state}`);
      assert.ok(
        (committed.get(job.id) ?? 0) <= 1,
        `${job.id} was renamed into place ${committed.get(job.id)} times`,
      );
      const written = await stat(done[i]!.target);
      assert.ok(
        written.ctimeMs <= rec.finishedAt! + 5,
        `${job.id}: target written ${written.ctimeMs - rec.finishedAt!} ms after its success was recorded`,
      );
    }
    // The split job: assembled once, the same bytes as one run of its request, no part left.
    const split = await splitJob.status();
    assert.equal(split.state, "succeeded", `split job: ${split.state} ${split.error?.message ?? ""}`);
    const assembled = workers.flatMap((w) => w.logs.filter((l) => l["msg"] === "split job assembled"));
    assert.ok(assembled.length <= 1, `the split job was assembled ${assembled.length} times`);
    const whole = await fleet.submit(SPLIT_REQUEST, { targetDir: queue, targetFname: "split-whole.grib" });
    const wholeBytes = await readFile((await whole.result({ signal: AbortSignal.timeout(60_000) })).target);
    assert.ok(
      (await readFile((await splitResult).target)).equals(wholeBytes),
      "the split job's file is not one run's",
    );
    assert.deepEqual(
      (await readdirP(join(tf.sharedRoot, queue))).filter((n) => n.startsWith(".split.grib.")),
      [],
      "a part's output was left behind",
    );
    t.diagnostic(`${kills} workers killed, ${retried} jobs needed more than one attempt`);
    assert.ok(retried > 0, "the chaos hit no running job");
    assert.deepEqual(
      (await readdirP(join(tf.sharedRoot, queue))).filter((n) => n.endsWith(".mars-part")),
      [],
      "part files left behind",
    );
    assert.deepEqual(await processesWith(`mars-request-${queue}`), [], "orphan MARS processes");
    // A dead worker's request files are removed by the journal recovery of the next worker on the host.
    assert.deepEqual(
      (await readdirP(tmpdir())).filter((n) => n.startsWith(`mars-request-${queue}`)),
      [],
      "request files left behind",
    );
  });
});
