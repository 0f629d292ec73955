/**
 * Scenario 9, heavy MARS: a stand-in that costs ~20 ms of CPU per run by spawning short processes,
 * 200 jobs through 2 workers x 2 slots with the library client (`submit` then `result()`), against a
 * direct pool of 4 runners of the same stand-in, on the same cores. What the fleet spends per job
 * (worker, client, nats-server, from /proc) competes with MARS itself, so it shows in throughput.
 */
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { normaliseRequests } from "../src/mars/request.js";
import { startMars } from "../src/runner/runner.js";
import { BenchEnv, CpuMeter, childrenCpuMs, pool, strayConsumers } from "./env.js";
import { round, target, type ScenarioResult } from "./report.js";
import { peerUnavailable, runBullmq, type PeerResult } from "./peers.js";

async function bullmqPeer(
  command: string,
  scratch: string,
  jobs: number,
): Promise<{ result?: PeerResult; skipped?: string }> {
  const why = await peerUnavailable();
  if (why) return { skipped: why };
  return { result: await runBullmq(command, scratch, jobs, 2, 2) };
}

const REQUEST = { param: "2t", date: "20240101", grid: "10/10" };

export async function heavyMars(env: BenchEnv, jobs: number, peers: boolean): Promise<ScenarioResult> {
  const command = await env.heavyMars();
  const queue = BenchEnv.queue("heavy");
  const settings = { queue, concurrency: 2, marsCommand: command };
  const workers = await Promise.all([env.worker(settings), env.worker(settings)]);
  const fleet = await env.client(settings);
  await (await fleet.submit(REQUEST, { targetDir: "heavy", targetFname: "warm.grib" })).result();
  const meter = await CpuMeter.start(
    workers.map((w) => w.proc.pid!),
    env.server.pid!,
  );
  const t0 = Date.now();
  await pool(
    Array.from({ length: jobs }, (_, i) => i),
    64,
    async (i) => (await fleet.submit(REQUEST, { targetDir: "heavy", targetFname: `${i}.grib` })).result(),
  );
  const fleetMs = Date.now() - t0;
  const cpu = await meter.perJob(jobs);
  await fleet.close();
  const stray = await strayConsumers(await env.nc());
  await env.killWorkers(workers);

  await mkdir(join(env.sharedRoot, "heavy-direct"), { recursive: true });
  const before = await childrenCpuMs(process.pid);
  const t1 = Date.now();
  await pool(
    Array.from({ length: jobs }, (_, i) => i),
    4,
    async (i) => {
      const run = startMars({
        requests: normaliseRequests(REQUEST),
        targetPath: join(env.sharedRoot, "heavy-direct", `${i}.grib`),
        command: [command],
      });
      const outcome = await run.outcome;
      if (outcome.status !== "succeeded") throw new Error(`direct heavy run ${outcome.status}`);
    },
  );
  const directMs = Date.now() - t1;
  const fleetRate = jobs / (fleetMs / 1000);
  const directRate = jobs / (directMs / 1000);
  const ratio = fleetRate / directRate;
  const marsCpu = ((await childrenCpuMs(process.pid)) - before) / jobs;
  const peer = peers ? await bullmqPeer(command, env.sharedRoot, jobs) : undefined;
  return {
    scenario: "9 heavy MARS",
    figures: {
      "jobs/s": fleetRate,
      "worker cpu ms/job": cpu.worker,
      "client cpu ms/job": cpu.client,
      "nats-server cpu ms/job": cpu.server,
      "fleet cpu ms/job": cpu.total,
      "consumers left": stray,
      ...(peer?.result && {
        "BullMQ jobs/s": peer.result.jobsPerSec,
        "BullMQ / direct": peer.result.jobsPerSec / directRate,
        "BullMQ cpu ms/job (worker+client+redis)": peer.result.cpu.total,
        "fleet / BullMQ": fleetRate / peer.result.jobsPerSec,
      }),
    },
    baseline: { "jobs/s": directRate, "MARS cpu ms/job": marsCpu },
    ratios: { "jobs/s": ratio },
    targets: [
      target("throughput / direct pool", round(ratio, 3), "x", ">=", 0.93),
      target("consumers left after the client closed", stray, "", "<=", 0),
      ...(peer?.result
        ? [target("fleet throughput / BullMQ's", round(fleetRate / peer.result.jobsPerSec, 3), "x", ">=", 1)]
        : []),
    ],
    notes: [
      `${jobs} jobs, 2 workers x 2 slots, library client (submit + result()) vs a local pool of 4 runners; the stand-in costs ${round(marsCpu, 1)} ms of CPU per run`,
      ...(peer?.result
        ? [
            `BullMQ peer: 2 workers x 2 on Redis; CPU per job worker ${round(peer.result.cpu.worker, 2)} ms, client ${round(peer.result.cpu.client, 2)} ms, redis ${round(peer.result.cpu.server, 2)} ms`,
          ]
        : []),
      ...(peer?.skipped ? [peer.skipped] : []),
      ...(peers ? [] : ["peers not run (npm run bench -- --peers)"]),
    ],
  };
}
