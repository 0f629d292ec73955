/**
 * Scenario 17, the result cache (#28): a skewed workload, submissions drawn from a set of distinct
 * requests with Zipf(1.1) popularity, 8 in flight, the simulator taking a fixed time per field;
 * the same submissions with the cache off (the baseline) and on, in the same run.
 */
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { Gateway } from "../src/gateway/gateway.js";
import { SIMULATOR_SCRIPT } from "../src/sim/command.js";
import type { Fleet } from "../src/client/fleet.js";
import { BenchEnv, percentile, pool } from "./env.js";
import { sharesJob } from "./gateway.js";
import { round, target, type ScenarioResult } from "./report.js";

const IN_FLIGHT = 8;
/** The simulator's time per field (each request is one field): MARS's own cost, fixed. */
const FIELD_MS = 200;

/** A seeded generator (mulberry32): the same submissions in both runs. */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** `n` draws of request numbers 0..distinct-1 with Zipf(s) popularity. */
export function zipfDraws(n: number, distinct: number, s: number, seed = 42): number[] {
  const weights = Array.from({ length: distinct }, (_, k) => 1 / (k + 1) ** s);
  const total = weights.reduce((a, b) => a + b, 0);
  const cumulative: number[] = [];
  let acc = 0;
  for (const w of weights) cumulative.push((acc += w / total));
  const next = random(seed);
  return Array.from({ length: n }, () => {
    const u = next();
    const i = cumulative.findIndex((c) => u <= c);
    return i < 0 ? distinct - 1 : i;
  });
}

const requestOf = (i: number, offset = 0): Record<string, string> => ({
  param: "2t",
  date: new Date(Date.UTC(2020, 0, 1 + i + offset)).toISOString().slice(0, 10).replaceAll("-", ""),
  grid: "10/10",
});

interface Pass {
  seconds: number;
  marsRuns: number;
  hitLatency: number[];
  missLatency: number[];
}

/** How many MARS runs the counting wrapper has recorded so far. */
async function runsSoFar(countFile: string): Promise<number> {
  return (await readFile(countFile, "utf8").catch(() => "")).split("\n").filter(Boolean).length; // none yet
}

/** Run `job` for each draw, `inFlight` at a time: the seconds it took and the MARS runs it made. */
async function timed(
  draws: number[],
  countFile: string,
  inFlight: number,
  job: (draw: number, i: number) => Promise<void>,
): Promise<{ seconds: number; marsRuns: number }> {
  const before = await runsSoFar(countFile);
  const started = performance.now();
  await pool(draws, inFlight, job);
  return { seconds: (performance.now() - started) / 1000, marsRuns: (await runsSoFar(countFile)) - before };
}

async function pass(
  fleet: Fleet,
  draws: number[],
  countFile: string,
  tag: string,
  inFlight = IN_FLIGHT,
): Promise<Pass> {
  const hitLatency: number[] = [];
  const missLatency: number[] = [];
  const { seconds, marsRuns } = await timed(draws, countFile, inFlight, async (draw, i) => {
    const t0 = performance.now();
    const job = await fleet.submit(requestOf(draw), {
      targetDir: `cache-bench-${tag}`,
      targetFname: `${i}.grib`,
      environ: { user_id: `u${i % 20}` },
    });
    await job.result();
    const ms = performance.now() - t0;
    ((await job.status()).result?.cached ? hitLatency : missLatency).push(ms);
  });
  return { seconds, marsRuns, hitLatency, missLatency };
}

/**
 * The same draws through the shares gateway, as cads-mars-server's clients send them (on requests
 * of their own, `offset` days later, so that the library's passes left nothing in the cache).
 */
async function sharesPass(
  env: BenchEnv,
  queue: string,
  draws: number[],
  countFile: string,
  tag: string,
): Promise<Pass> {
  const gateway = await Gateway.start({
    config: env.config({ queue, pipePort: 0, sharesPort: 0, gatewayHost: "127.0.0.1" }),
  });
  try {
    await mkdir(join(env.sharedRoot, tag), { recursive: true });
    const latency: number[] = [];
    const { seconds, marsRuns } = await timed(draws, countFile, IN_FLIGHT, async (draw, i) => {
      latency.push(await sharesJob(gateway.sharesPort, `/${tag}/${i}.grib`, requestOf(draw, SHARES_OFFSET)));
    });
    return { seconds, marsRuns, hitLatency: [], missLatency: latency };
  } finally {
    await gateway.close();
  }
}

/** Days between the library's requests and the shares gateway's: distinct keys. */
const SHARES_OFFSET = 1000;

export async function resultCache(
  env: BenchEnv,
  submissions: number,
  distinct: number,
): Promise<ScenarioResult> {
  const countFile = join(env.sharedRoot, ".cache-bench-runs");
  const mars = join(env.sharedRoot, ".cache-bench-mars.sh");
  await writeFile(
    mars,
    `#!/bin/sh\necho x >> "${countFile}"\nexec "${process.execPath}" "${SIMULATOR_SCRIPT}" "$@"\n`,
    { mode: 0o755 },
  );
  const draws = zipfDraws(submissions, distinct, 1.1);
  const used = new Set(draws).size;
  let onFleet: Fleet | undefined;
  const queues: Record<string, string> = {};
  const run = async (name: string, cacheMaxBytes: number): Promise<Pass> => {
    const queue = BenchEnv.queue(name);
    queues[name] = queue;
    const settings = { queue, concurrency: 4, marsCommand: mars, cacheMaxBytes };
    const extra = { MARS_SIM_FIELD_DELAY_MS: String(FIELD_MS) };
    await Promise.all([env.worker(settings, extra), env.worker(settings, extra)]);
    const fleet = await env.client({ queue });
    if (cacheMaxBytes > 0) onFleet = fleet;
    return pass(fleet, draws, countFile, name);
  };
  const off = await run("cacheoff", 0);
  const on = await run("cacheon", 1 << 30);
  // A hit on its own: the drawn requests once more, one at a time, with no MARS run beside.
  const alone = await pass(onFleet!, [...new Set(draws)].slice(0, 50), countFile, "alone", 1);
  if (alone.missLatency.length > 0) throw new Error(`${alone.missLatency.length} cached requests missed`);
  const sharesOff = await sharesPass(env, queues["cacheoff"]!, draws, countFile, "cache-shares-off");
  const sharesOn = await sharesPass(env, queues["cacheon"]!, draws, countFile, "cache-shares-on");
  const sharesRatio = sharesOff.seconds / sharesOn.seconds;
  const throughputOff = submissions / off.seconds;
  const throughputOn = submissions / on.seconds;
  const hitP50 = percentile(alone.hitLatency, 50);
  return {
    scenario: "17 result cache",
    figures: {
      "jobs/s, cache on": throughputOn,
      "MARS runs, cache on": on.marsRuns,
      "distinct requests drawn": used,
      "cache hits": on.hitLatency.length,
      "hit submit -> result p50 ms, alone": hitP50,
      "hit submit -> result p50 ms, under the load": percentile(on.hitLatency, 50),
      "miss submit -> result p50 ms": percentile(on.missLatency, 50),
      "shares gateway jobs/s, cache on": submissions / sharesOn.seconds,
      "shares gateway MARS runs, cache on": sharesOn.marsRuns,
    },
    baseline: {
      "jobs/s, cache on": throughputOff,
      "MARS runs, cache on": off.marsRuns,
      "shares gateway jobs/s, cache on": submissions / sharesOff.seconds,
      "shares gateway MARS runs, cache on": sharesOff.marsRuns,
    },
    ratios: {
      "jobs/s, cache on": throughputOn / throughputOff,
      "shares gateway jobs/s, cache on": sharesRatio,
    },
    targets: [
      target("throughput, cache on / off", round(throughputOn / throughputOff, 2), "x", ">=", 5),
      target("MARS runs - distinct requests", on.marsRuns - used, "runs", "<=", 0),
      target("cache hit p50, submit to result", round(hitP50, 1), "ms", "<=", 20),
      target("shares gateway throughput, cache on / off", round(sharesRatio, 2), "x", ">=", 4),
    ],
    notes: [
      `${submissions} submissions of ${distinct} distinct one-field requests, Zipf(1.1) (${used} drawn), ${IN_FLIGHT} in flight, 2 workers x 4 slots, the simulator at ${FIELD_MS} ms a field; baseline: the same submissions with the cache off`,
      "MARS runs counted by a wrapper around the simulator; a run may exceed the distinct requests by the retries it needed",
      "a hit alone: up to 50 of the drawn requests again, one at a time, after the load (under the load, hits share the 2 cores with the simulator's runs)",
    ],
  };
}
