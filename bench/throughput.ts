/** Scenarios 1-3: dispatch latency, per-job overhead, broker capacity. */
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { normaliseRequests } from "../src/mars/request.js";
import { startMars } from "../src/runner/runner.js";
import {
  BenchEnv,
  CpuMeter,
  FleetObserver,
  WARM_JOBS,
  WARM_REQUEST,
  childrenCpuMs,
  percentile,
  pool,
  strayConsumers,
} from "./env.js";
import { bullmqPeer, peerFigures, peerNotes } from "./peers.js";
import { round, target, type ScenarioResult } from "./report.js";

const SHORT_REQUEST = { param: "2t", date: "20240101", grid: "10/10" };

/** Run one request directly through the runner; returns ms from start to the first line and to the end. */
async function direct(
  env: BenchEnv,
  command: string[] | undefined,
  name: string,
  request: Record<string, string> = SHORT_REQUEST,
): Promise<{ firstLineMs: number; totalMs: number }> {
  await mkdir(join(env.sharedRoot, "direct"), { recursive: true });
  const started = Date.now();
  const run = startMars({
    requests: normaliseRequests(request),
    targetPath: join(env.sharedRoot, "direct", name),
    ...(command && { command }),
  });
  let firstLineMs = NaN;
  for await (const ev of run.events())
    if (ev.type === "log" && Number.isNaN(firstLineMs)) firstLineMs = Date.now() - started;
  const outcome = await run.outcome;
  if (outcome.status !== "succeeded") throw new Error(`direct run ${outcome.status}`);
  return { firstLineMs, totalMs: Date.now() - started };
}

/** Started-at (ms) that the tiny MARS command printed as its first line. */
export function spawnedAt(line: string | undefined): number {
  const m = /started (\d+)/.exec(line ?? "");
  return m ? Number(BigInt(m[1]!) / 1000n) / 1000 : NaN;
}

export async function dispatchLatency(env: BenchEnv, jobs: number): Promise<ScenarioResult> {
  const queue = BenchEnv.queue("dispatch");
  const settings = { queue, concurrency: 2, marsCommand: env.tinyMars };
  await Promise.all([env.worker(settings), env.worker(settings)]);
  const fleet = await env.client(settings);
  const observer = await FleetObserver.start(await env.nc());
  const toSpawn: number[] = [];
  const toFirstLine: number[] = [];
  for (let i = 0; i < jobs + 10; i++) {
    const t0 = Date.now();
    const job = await fleet.submit(SHORT_REQUEST, { targetDir: "dispatch", targetFname: `${i}.grib` });
    await observer.finished(job.id);
    if (i < 10) continue; // warm-up
    toSpawn.push(spawnedAt(observer.firstLine.get(job.id)) - t0);
    toFirstLine.push(observer.firstLineAt.get(job.id)! - t0);
  }
  observer.stop();
  await env.killWorkers();
  const baseline: number[] = [];
  for (let i = 0; i < Math.min(jobs, 100); i++)
    baseline.push((await direct(env, env.tinyMars.split(" "), `d${i}.grib`)).firstLineMs);
  const figures = {
    "submit->spawn p50 ms": percentile(toSpawn, 50),
    "submit->spawn p95 ms": percentile(toSpawn, 95),
    "submit->spawn p99 ms": percentile(toSpawn, 99),
    "submit->first line p50 ms": percentile(toFirstLine, 50),
    "submit->first line p95 ms": percentile(toFirstLine, 95),
    "submit->first line p99 ms": percentile(toFirstLine, 99),
  };
  const base = {
    "submit->first line p50 ms": percentile(baseline, 50),
    "submit->first line p99 ms": percentile(baseline, 99),
  };
  return {
    scenario: "1 dispatch",
    figures,
    baseline: base,
    ratios: {
      "submit->first line p50 ms": figures["submit->first line p50 ms"] / base["submit->first line p50 ms"],
      "submit->first line p99 ms": figures["submit->first line p99 ms"] / base["submit->first line p99 ms"],
    },
    targets: [
      target("dispatch p50 (submit to MARS start)", figures["submit->spawn p50 ms"], "ms", "<=", 5),
      target("dispatch p99 (submit to MARS start)", figures["submit->spawn p99 ms"], "ms", "<=", 20),
    ],
    notes: [
      `${jobs} sequential jobs on an idle fleet of 2 workers; baseline: the runner spawning the same command directly`,
    ],
  };
}

export interface FleetVsPool {
  fleetMs: number;
  directMs: number;
  /** The fleet's own CPU per job, by part. */
  cpu: CpuPerJob;
  /** Consumers left on the server once the client closed, beyond the work queues' own. */
  consumersLeft: number;
  /** CPU per job of the MARS command itself, measured on the direct pool. */
  marsCpuMs: number;
  /** CPU per job of the warm-up jobs: fresh processes, V8 still compiling. */
  coldCpu: CpuPerJob;
}

/** N jobs through the fleet (all submitted at once) vs the same N through a local pool of the same width. */
export async function fleetVsPool(
  env: BenchEnv,
  name: string,
  jobs: number,
  workers: number,
  slots: number,
  command: string | undefined,
  opts: {
    /** The environ of job `i` (its user: a lane each). */
    environ?: (i: number) => Record<string, string>;
    /** Called once the workers and client are up, before the timed run (to apply QoS rules). */
    prepare?: () => Promise<void>;
    /** Skip the direct pool (a second fleet run against the same baseline). */
    noDirect?: boolean;
    /** Warm-up jobs through the fleet, and runs through the direct pool, before either is measured. */
    warm?: number;
  } = {},
): Promise<FleetVsPool> {
  const queue = BenchEnv.queue(name);
  const settings = { queue, concurrency: slots, ...(command && { marsCommand: command }) };
  const started = await Promise.all(Array.from({ length: workers }, () => env.worker(settings)));
  const fleet = await env.client(settings);
  await opts.prepare?.();
  const warm = opts.warm ?? 1;
  const pids = started.map((w) => w.proc.pid!);
  const coldMeter = await CpuMeter.start(pids, env.server.pid!);
  await pool(
    Array.from({ length: warm }, (_, i) => i),
    64,
    async (i) =>
      (await fleet.submit(WARM_REQUEST, { targetDir: `${name}-warm`, targetFname: `${i}.grib` })).result(),
  );
  const coldCpu = await coldMeter.perJob(warm);
  const meter = await CpuMeter.start(pids, env.server.pid!);
  const t0 = Date.now();
  // The library client as its users call it: submit, then result() of each job.
  await pool(
    Array.from({ length: jobs }, (_, i) => i),
    64,
    async (i) =>
      (
        await fleet.submit(SHORT_REQUEST, {
          targetDir: name,
          targetFname: `${i}.grib`,
          ...(opts.environ && { environ: opts.environ(i) }),
        })
      ).result(),
  );
  const fleetMs = Date.now() - t0;
  const cpu = await meter.perJob(jobs);
  await fleet.close();
  const consumersLeft = await strayConsumers(await env.nc());
  await env.killWorkers(started);
  if (opts.noDirect) return { fleetMs, directMs: NaN, cpu, coldCpu, consumersLeft, marsCpuMs: NaN };
  await pool(
    Array.from({ length: warm }, (_, i) => i),
    workers * slots,
    (i) => direct(env, command?.split(" "), `${name}-warm-${i}.grib`, WARM_REQUEST),
  );
  const marsBefore = await childrenCpuMs(process.pid);
  const t1 = Date.now();
  await pool(
    Array.from({ length: jobs }, (_, i) => i),
    workers * slots,
    (i) => direct(env, command?.split(" "), `${name}-${i}.grib`),
  );
  const directMs = Date.now() - t1;
  const marsCpuMs = ((await childrenCpuMs(process.pid)) - marsBefore) / jobs;
  return { fleetMs, directMs, cpu, coldCpu, consumersLeft, marsCpuMs };
}

type CpuPerJob = Awaited<ReturnType<CpuMeter["perJob"]>>;

function cpuFigures(cpu: CpuPerJob): Record<string, number> {
  return {
    "worker cpu ms/job": cpu.worker,
    "client cpu ms/job": cpu.client,
    "nats-server cpu ms/job": cpu.server,
    "fleet cpu ms/job": cpu.total,
  };
}

/** What the warm-up jobs cost: fresh worker processes and client code, V8 still compiling. */
export function coldFigures(cpu: CpuPerJob): Record<string, number> {
  return { "fleet cpu ms/job, warm-up jobs": cpu.total };
}

export async function perJobOverhead(env: BenchEnv, jobs: number): Promise<ScenarioResult> {
  const { fleetMs, directMs, cpu } = await fleetVsPool(env, "overhead", jobs, 2, 2, undefined);
  const ratio = fleetMs / directMs;
  return {
    scenario: "2 overhead",
    figures: { "total s": fleetMs / 1000, "per job ms": fleetMs / jobs, ...cpuFigures(cpu) },
    baseline: { "total s": directMs / 1000, "per job ms": directMs / jobs },
    ratios: { "total s": ratio, "per job ms": ratio },
    targets: [target("fleet time / direct time", round(ratio, 3), "x", "<=", 1.1)],
    notes: [`${jobs} simulator jobs, 2 workers x 2 slots vs a local pool of 4 runners`],
  };
}

export async function brokerCapacity(env: BenchEnv, jobs: number, peers: boolean): Promise<ScenarioResult> {
  const { fleetMs, directMs, cpu, coldCpu } = await fleetVsPool(env, "capacity", jobs, 2, 8, env.tinyMars, {
    warm: WARM_JOBS,
  });
  const fleetRate = jobs / (fleetMs / 1000);
  const directRate = jobs / (directMs / 1000);
  // A plain queue on the same near-zero jobs: what a job costs without records, events or fencing.
  const peer = peers ? await bullmqPeer(env.tinyMars, env.sharedRoot, jobs, 2, 8) : undefined;
  return {
    scenario: "3 capacity",
    figures: {
      "jobs/s": fleetRate,
      ...cpuFigures(cpu),
      ...coldFigures(coldCpu),
      ...peerFigures(peer, fleetRate, directRate),
    },
    baseline: { "jobs/s": directRate },
    ratios: { "jobs/s": fleetRate / directRate },
    targets: [
      target("throughput / direct pool", round(fleetRate / directRate, 3), "x", ">=", 0.8),
      target("fleet CPU per job (worker + client + nats-server)", round(cpu.total, 2), "ms", "<=", 3),
    ],
    notes: [
      `${jobs} near-zero jobs, 2 workers x 8 slots vs a local pool of 16 runners, both after ${WARM_JOBS} warm-up jobs`,
      ...peerNotes(peer),
    ],
  };
}
