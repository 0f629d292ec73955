/**
 * Scenario 19, many users across hosts (#26): the same tiny-MARS jobs from as many users as jobs,
 * on one nats-server (the baseline) and on three nodes in network namespaces with 5 ms each way in
 * front of every node, streams and buckets at 3 replicas, two worker hosts and a client host
 * (test/helpers/netns-fleet.ts). Needs root and iproute2, as the multi-host tests do; without them
 * the scenario says so and measures nothing.
 */
import { Setup, unavailable } from "../test/helpers/netns-fleet.js";
import { BenchEnv, cpuMs, pool } from "./env.js";
import { round, type ScenarioResult } from "./report.js";

const REQUEST = { param: "2t", date: "20240101", grid: "10/10" };
const IN_FLIGHT = 64;
const SLOTS = 4;

/** jobs/s on one server: 2 workers x 4 slots, `jobs` jobs from `jobs` users, 64 submits in flight. */
async function single(env: BenchEnv, jobs: number): Promise<number> {
  const queue = BenchEnv.queue("hosts1");
  const settings = { queue, concurrency: SLOTS, marsCommand: env.tinyMars, heartbeatInterval: "1s" };
  await Promise.all([0, 1].map(() => env.worker(settings)));
  const fleet = await env.client(settings);
  const t0 = Date.now();
  const handles = await pool(
    Array.from({ length: jobs }, (_, i) => i),
    IN_FLIGHT,
    (i) =>
      fleet.submit(REQUEST, { targetDir: "hosts1", targetFname: `${i}.grib`, environ: { user_id: `u${i}` } }),
  );
  await Promise.all(handles.map((h) => h.result()));
  return jobs / ((Date.now() - t0) / 1000);
}

/** CPU milliseconds used so far by these processes together. */
async function cpuOf(pids: number[]): Promise<number> {
  return (await Promise.all(pids.map(cpuMs))).reduce((a, b) => a + b, 0);
}

/**
 * The same on the namespaced cluster: jobs/s from the client's first submit to the last job's end,
 * and the CPU per job of the two workers and of the three nodes, from the workers' start on.
 */
async function cluster(
  env: BenchEnv,
  jobs: number,
): Promise<{ rate: number; workerCpu: number; serverCpu: number }> {
  const setup = await Setup.start();
  try {
    const run = await setup.load(jobs, 0, {
      users: jobs,
      inFlight: IN_FLIGHT,
      worker: {
        MARS_WORKER_CONCURRENCY: String(SLOTS),
        MARS_COMMAND: env.tinyMars,
        MARS_HEARTBEAT_INTERVAL: "1s",
        MARS_LOG_LEVEL: "debug", // the load's check counts "result committed", a debug line
      },
      timeoutMs: 600_000,
    });
    const workerPids = setup.workers.map((w) => w.proc.pid!);
    const before = { workers: await cpuOf(workerPids), servers: await cpuOf(setup.cluster.serverPids) };
    const done = await run.finished();
    const workerCpu = ((await cpuOf(workerPids)) - before.workers) / jobs;
    const serverCpu = ((await cpuOf(setup.cluster.serverPids)) - before.servers) / jobs;
    const submitted = run.out.json<{ t: string; at: number }>().filter((r) => r.t === "submitted");
    const first = Math.min(...submitted.map((r) => r.at));
    const last = Math.max(...done.map((d) => d.at));
    return { rate: jobs / ((last - first) / 1000), workerCpu, serverCpu };
  } finally {
    await setup.dispose();
  }
}

export async function manyUsersAcrossHosts(env: BenchEnv, jobs: number): Promise<ScenarioResult> {
  if (unavailable)
    return {
      scenario: "19 many users across hosts",
      figures: {},
      baseline: {},
      ratios: {},
      targets: [],
      notes: [`not measured: ${unavailable}`],
    };
  const one = await single(env, jobs);
  const three = await cluster(env, jobs);
  return {
    scenario: "19 many users across hosts",
    figures: {
      "jobs/s, 3 nodes across hosts": three.rate,
      "workers' CPU per job ms, 3 nodes": round(three.workerCpu, 2),
      "nats-servers' CPU per job ms, 3 nodes": round(three.serverCpu, 2),
    },
    baseline: { "jobs/s, 3 nodes across hosts": one },
    ratios: { "jobs/s, 3 nodes across hosts": three.rate / one },
    targets: [],
    notes: [
      `${jobs} tiny-MARS jobs from ${jobs} users (one each), ${IN_FLIGHT} submits in flight, 2 workers x ${SLOTS} slots; baseline: one nats-server on this host; fleet: 3 nodes in network namespaces, 5 ms each way in front of each (a relay: this kernel has no netem), streams and buckets at 3 replicas, workers and client on hosts of their own`,
      `ratio ${round(three.rate / one, 2)}: every submit, claim, commit and settle is a replicated write, each a round trip to the leader and a quorum`,
    ],
  };
}
