/**
 * Scenario 18, split fan-out and ordered fan-in (#27): a year of daily fields, the simulator
 * sleeping a fixed time per field, as one run on one worker (the baseline) and split by month on
 * 4 workers x 1 slot; the same split on 1 worker x 1 slot (what splitting costs when nothing runs
 * beside); and the fan-in's assembly of 12 parts against `cat` of the same files, in the same run.
 */
import { execFile } from "node:child_process";
import { mkdir, open, readFile, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { assembleParts } from "../src/runner/fan-in.js";
import { lookupParam } from "../src/mars/index.js";
import { encodeGrib2 } from "../src/sim/grib.js";
import { planGrid } from "../src/sim/fields.js";
import { BenchEnv } from "./env.js";
import { round, target, type ScenarioResult } from "./report.js";

const run = promisify(execFile);
/** The simulator's time per field: the whole year is 365 of them. */
const FIELD_MS = 120;
const YEAR = { param: "2t", date: "20230101/to/20231231", grid: "10/10" };

async function timedJob(
  env: BenchEnv,
  workers: number,
  name: string,
  split: string[] | undefined,
): Promise<{ seconds: number; bytes: Buffer }> {
  const queue = BenchEnv.queue(name);
  const settings = { queue, concurrency: 1 };
  const extra = { MARS_SIM_FIELD_DELAY_MS: String(FIELD_MS) };
  await Promise.all(Array.from({ length: workers }, () => env.worker(settings, extra)));
  const fleet = await env.client({ queue });
  const started = performance.now();
  const job = await fleet.submit(YEAR, {
    targetDir: "split-bench",
    targetFname: `${name}.grib`,
    ...(split && { split }),
  });
  const result = await job.result();
  const seconds = (performance.now() - started) / 1000;
  return { seconds, bytes: await readFile(result.target) };
}

/** `parts` files of about `mb` MB each, of real GRIB2 messages (one field, its date changed). */
async function partFiles(dir: string, parts: number, mb: number): Promise<string[]> {
  await mkdir(dir, { recursive: true });
  const grid = planGrid({ verb: "retrieve", params: { grid: ["0.25", "0.25"] } });
  const param = lookupParam("2t")!;
  const one = encodeGrib2({
    param,
    date: 20230101,
    time: 0,
    step: 0,
    grid,
    typeOfData: 0,
    values: new Float64Array(grid.ni * grid.nj).fill(280),
  });
  const perPart = Math.max(1, Math.round((mb * 1024 * 1024) / one.length));
  const paths: string[] = [];
  for (let p = 0; p < parts; p++) {
    const path = join(dir, `part-${p + 1}.grib`);
    const fh = await open(path, "w");
    for (let i = 0; i < perPart; i++) {
      const day = p * perPart + i;
      const date = 20230000 + (1 + Math.floor(day / 28)) * 100 + (1 + (day % 28));
      one.writeUInt16BE(Math.floor(date / 10000), 16 + 12);
      one[16 + 14] = Math.floor(date / 100) % 100;
      one[16 + 15] = date % 100;
      await fh.write(one);
    }
    await fh.close();
    paths.push(path);
  }
  return paths;
}

/** Best of `n` timings of `fn` (seconds): the page cache warm for both, as it is after MARS wrote. */
async function best(n: number, fn: () => Promise<void>): Promise<number> {
  let min = Infinity;
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await fn();
    min = Math.min(min, (performance.now() - t0) / 1000);
  }
  return min;
}

export async function splitScenario(env: BenchEnv, quick: boolean): Promise<ScenarioResult> {
  const one = await timedJob(env, 1, "split-whole", undefined);
  const fanned = await timedJob(env, 4, "split-4", ["date:month"]);
  const alone = await timedJob(env, 1, "split-1", ["date:month"]);
  if (!fanned.bytes.equals(one.bytes) || !alone.bytes.equals(one.bytes))
    throw new Error("a split job's file is not the one run's");
  const speedup = one.seconds / fanned.seconds;
  const cost = alone.seconds / one.seconds;

  const mb = quick ? 10 : 50;
  const dir = join(env.sharedRoot, "fan-in-bench");
  const parts = await partFiles(dir, 12, mb);
  const total = (await Promise.all(parts.map(async (p) => (await stat(p)).size))).reduce((a, b) => a + b, 0);
  const out = join(dir, "out.grib");
  const catSeconds = await best(3, async () => {
    await run("sh", ["-c", `cat "$@" > "${out}"`, "cat", ...parts]);
    await rm(out);
  });
  const fanInSeconds = await best(3, async () => {
    await assembleParts(parts, out);
    await rm(out);
  });
  await rm(dir, { recursive: true, force: true });
  const mbOf = (s: number) => total / 1024 / 1024 / s;
  return {
    scenario: "18 split fan-out and fan-in",
    figures: {
      "a year split by month, 4 workers x 1 slot: s": fanned.seconds,
      "the same split, 1 worker x 1 slot: s": alone.seconds,
      "fan-in MB/s (12 parts)": mbOf(fanInSeconds),
    },
    baseline: {
      "a year split by month, 4 workers x 1 slot: s": one.seconds,
      "the same split, 1 worker x 1 slot: s": one.seconds,
      "fan-in MB/s (12 parts)": mbOf(catSeconds),
    },
    ratios: {
      "speed-up, split on 4 workers": speedup,
      "split alone / one run": cost,
      "fan-in / cat": catSeconds / fanInSeconds,
    },
    targets: [
      target("a year split by month on 4 workers, speed-up over one run", round(speedup, 2), "x", ">=", 3.3),
      target("the split on 1 worker x 1 slot / one run", round(cost, 2), "x", "<=", 1.1),
      target("fan-in throughput / cat", round(catSeconds / fanInSeconds, 2), "x", ">=", 0.8),
    ],
    notes: [
      `365 daily fields of 2t, the simulator sleeping ${FIELD_MS} ms a field; baseline: one run on one worker x 1 slot`,
      "split by month: 12 parts of 28-31 days; on 4 workers x 1 slot, three rounds, the longest month (31 days) in each: 4 x 365/372 = 3.9x at best, less the parts' MARS start-up and the fan-in",
      `fan-in: 12 parts of ${mb} MB of 0.25° GRIB2 fields in date order, against cat of the same files to the same disk; best of 3 each, page cache warm`,
    ],
  };
}
