/** Scenarios 4-7: log streaming, failover, backlog, footprint. */
import { spawn } from "node:child_process";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { jetstream } from "@nats-io/jetstream";
import { ackWaitMs } from "../src/broker/provision.js";
import { subjects } from "../src/broker/subjects.js";
import { encode } from "../src/broker/codec.js";
import { normaliseRequests } from "../src/mars/request.js";
import { startMars } from "../src/runner/runner.js";
import { parseDuration } from "../src/core/time.js";
import { BenchEnv, FleetObserver, cpuMs, percentile, pool, rssMb } from "./env.js";
import { round, target, type ScenarioResult } from "./report.js";

const REQUEST = { param: "2t", date: "20240101", grid: "10/10" };

export async function logStreaming(env: BenchEnv, lines: number): Promise<ScenarioResult> {
  const knobs = { MARS_SIM_LOG_LINES: String(lines) };
  // Baseline: the runner reading the simulator directly.
  const t0 = Date.now();
  const run = startMars({
    requests: normaliseRequests(REQUEST),
    targetPath: join(env.sharedRoot, "logs-direct.grib"),
    env: knobs,
  });
  let directLines = 0;
  let directFirst = 0;
  for await (const ev of run.events()) {
    if (ev.type !== "log") continue;
    if (directLines++ === 0) directFirst = Date.now();
  }
  const directRate = directLines / ((Date.now() - directFirst) / 1000);
  void t0;

  const queue = BenchEnv.queue("logs");
  const settings = { queue };
  const w = await env.worker(settings, knobs);
  const fleet = await env.client(settings);
  const job = await fleet.submit(REQUEST, { targetDir: "logs", targetFname: "many.grib" });
  let received = 0;
  let inOrder = true;
  let first = 0;
  for await (const ev of job.events()) {
    if (ev.type !== "log") continue;
    if (ev.seq !== received + 1) inOrder = false;
    if (received++ === 0) first = Date.now();
  }
  const fleetRate = received / ((Date.now() - first) / 1000);
  await env.killWorkers([w]);

  // Sparse lines: latency from the simulator's write (time stamp in the line) to the client.
  const sparse = { MARS_SIM_LOG_LINES: "200", MARS_SIM_LOG_INTERVAL_MS: "10" };
  const queue2 = BenchEnv.queue("sparse");
  const w2 = await env.worker({ queue: queue2 }, sparse);
  const fleet2 = await env.client({ queue: queue2 });
  const job2 = await fleet2.submit(REQUEST, { targetDir: "logs", targetFname: "sparse.grib" });
  const latencies: number[] = [];
  for await (const ev of job2.events()) {
    const m = ev.type === "log" ? /\(t=(\d+)\)/.exec(ev.line) : null;
    if (m) latencies.push(Date.now() - Number(m[1]));
  }
  await env.killWorkers([w2]);
  const figures = {
    "lines/s": fleetRate,
    "lines received": received,
    "line latency p50 ms": percentile(latencies, 50),
    "line latency p99 ms": percentile(latencies, 99),
  };
  return {
    scenario: "4 log streaming",
    figures,
    baseline: { "lines/s": directRate, "lines received": directLines },
    ratios: { "lines/s": fleetRate / directRate },
    targets: [
      target("streaming rate / direct rate", round(fleetRate / directRate, 3), "x", ">=", 0.5),
      target(
        "lines lost or reordered",
        received === directLines && inOrder ? 0 : Math.abs(directLines - received) || 1,
        "lines",
        "<=",
        0,
      ),
      target("single-line latency p99", figures["line latency p99 ms"], "ms", "<=", 100),
    ],
    notes: [`${lines} extra lines from one simulator job; sparse: 200 lines 10 ms apart`],
  };
}

async function failoverOnce(
  env: BenchEnv,
  heartbeat: string,
): Promise<{ rerunMs: number; doneMs: number; ackWait: number }> {
  const queue = BenchEnv.queue("failover");
  const settings = { queue, heartbeatInterval: heartbeat, concurrency: 1 };
  const slow = { MARS_SIM_FIELD_DELAY_MS: "200" };
  const a = await env.worker(settings, slow);
  const fleet = await env.client(settings);
  const observer = await FleetObserver.start(await env.nc());
  const job = await fleet.submit({ ...REQUEST, date: "20240101/to/20240110" }, { targetDir: "failover" });
  while (!observer.stateTime(job.id, "running")) await sleep(10);
  await env.worker(settings, slow); // the survivor, idle
  await sleep(300);
  a.kill("SIGKILL");
  const killedAt = Date.now();
  await observer.finished(job.id);
  const rerunAt = observer.stateTime(job.id, "retrying") ?? NaN;
  const doneAt = observer.stateTime(job.id, "succeeded") ?? NaN;
  observer.stop();
  await env.killWorkers();
  return {
    rerunMs: rerunAt - killedAt,
    doneMs: doneAt - killedAt,
    ackWait: ackWaitMs(parseDuration(heartbeat)!),
  };
}

export async function failover(env: BenchEnv, withDefault: boolean): Promise<ScenarioResult> {
  const short = await failoverOnce(env, "500ms");
  const figures: Record<string, number> = {
    "short hb: kill->rerun ms": short.rerunMs,
    "short hb: kill->done ms": short.doneMs,
  };
  const baseline: Record<string, number> = { "short hb: kill->rerun ms": short.ackWait };
  const targets = [
    target("failover at 500 ms heartbeat (ack wait 1.5 s)", short.rerunMs, "ms", "<=", short.ackWait + 1000),
  ];
  if (withDefault) {
    const def = await failoverOnce(env, "20s");
    figures["default hb: kill->rerun ms"] = def.rerunMs;
    figures["default hb: kill->done ms"] = def.doneMs;
    baseline["default hb: kill->rerun ms"] = def.ackWait;
    targets.push(
      target(
        "failover at default 20 s heartbeat (ack wait 60 s)",
        def.rerunMs,
        "ms",
        "<=",
        def.ackWait + 1000,
      ),
    );
  }
  const ratios = Object.fromEntries(Object.keys(baseline).map((k) => [k, figures[k]! / baseline[k]!]));
  return {
    scenario: "5 failover",
    figures,
    baseline,
    ratios,
    targets,
    notes: [
      `baseline: the ack wait (3 x heartbeat), the bound set by the consumer${withDefault ? "" : "; default heartbeat skipped in --quick"}`,
    ],
  };
}

export async function backlog(env: BenchEnv, jobs: number): Promise<ScenarioResult> {
  const queue = BenchEnv.queue("backlog");
  const settings = { queue, concurrency: 8, marsCommand: env.tinyMars };
  const fleet = await env.client(settings);
  // Baseline: raw JetStream publishes of the same messages (no job record), same concurrency.
  const js = jetstream(await env.nc());
  const rawQueue = BenchEnv.queue("raw");
  const body = encode({
    v: 1,
    id: "x",
    queue: rawQueue,
    requests: normaliseRequests(REQUEST),
    target: "x.grib",
    submittedAt: Date.now(),
  });
  const r0 = Date.now();
  await pool(
    Array.from({ length: jobs }, (_, i) => i),
    256,
    (i) => js.publish(subjects.jobs(rawQueue), body, { msgID: `raw-${rawQueue}-${i}` }),
  );
  const rawRate = jobs / ((Date.now() - r0) / 1000);

  const t0 = Date.now();
  const handles = await pool(
    Array.from({ length: jobs }, (_, i) => i),
    256,
    (i) => fleet.submit(REQUEST, { targetDir: "backlog", targetFname: `${i % 100}.grib` }),
  );
  const submitRate = jobs / ((Date.now() - t0) / 1000);
  // The same, from a submitter that will not wait with result() (the API, a gateway, a bulk
  // loader): no record subscription per job. On a queue of its own, never drained.
  const unwatched = Math.ceil(jobs / 5);
  const u0 = Date.now();
  await pool(
    Array.from({ length: unwatched }, (_, i) => i),
    256,
    (i) =>
      fleet.submit(REQUEST, {
        queue: BenchEnv.queue("unwatched"),
        targetDir: "backlog",
        targetFname: `u${i % 100}.grib`,
        watchResult: false,
      }),
  );
  const unwatchedRate = unwatched / ((Date.now() - u0) / 1000);
  const serverRss = await rssMb(env.server.pid!);
  const observer = await FleetObserver.start(await env.nc());
  const d0 = Date.now();
  const workers = await Promise.all([env.worker(settings), env.worker(settings)]);
  await sleep(200);
  const workerRss = Math.max(...(await Promise.all(workers.map((w) => rssMb(w.proc.pid!)))));
  await Promise.all(handles.map((h) => observer.finished(h.id)));
  const drainS = (Date.now() - d0) / 1000;
  observer.stop();
  await env.killWorkers(workers);
  return {
    scenario: "6 backlog",
    figures: {
      "submit jobs/s": submitRate,
      "submit jobs/s, watchResult: false": unwatchedRate,
      "nats-server RSS MB (queued)": serverRss,
      "worker RSS MB": workerRss,
      "drain s": drainS,
      "drain jobs/s": jobs / drainS,
    },
    baseline: { "submit jobs/s": rawRate },
    ratios: { "submit jobs/s": submitRate / rawRate },
    targets: [target("submit rate", round(submitRate, 0), "jobs/s", ">=", 2000)],
    notes: [
      `${jobs} jobs queued before any worker started; baseline: bare js.publish of the same bodies`,
      `${unwatched} more with watchResult: false (no subscription for a later result()), on another queue`,
    ],
  };
}

export async function footprint(env: BenchEnv, running: number): Promise<ScenarioResult> {
  // Baseline: an idle Node.js process.
  const idleNode = spawn(process.execPath, ["-e", "setInterval(() => {}, 1000)"], { stdio: "ignore" });
  await sleep(500);
  const nodeRss = await rssMb(idleNode.pid!);
  idleNode.kill("SIGKILL");

  const queue = BenchEnv.queue("footprint");
  const settings = { queue, concurrency: running };
  const w = await env.worker(settings, { MARS_SIM_FIELD_DELAY_MS: "8000" });
  await sleep(1000);
  const idle = await rssMb(w.proc.pid!);
  const fleet = await env.client(settings);
  const observer = await FleetObserver.start(await env.nc());
  const jobs = await Promise.all(
    Array.from({ length: running }, (_, i) =>
      fleet.submit(REQUEST, { targetDir: "footprint", targetFname: `${i}.grib` }),
    ),
  );
  while (jobs.some((j) => !observer.stateTime(j.id, "running"))) await sleep(20);
  await sleep(1500);
  const busy = await rssMb(w.proc.pid!);
  for (const j of jobs) await j.cancel();
  await Promise.all(jobs.map((j) => observer.finished(j.id)));
  await env.killWorkers([w]);

  // CPU per running job while logs stream: 8 jobs printing 100 lines/s each.
  const streaming = 8;
  const queue2 = BenchEnv.queue("cpu");
  const w2 = await env.worker(
    { queue: queue2, concurrency: streaming },
    { MARS_SIM_LOG_LINES: "1000", MARS_SIM_LOG_INTERVAL_MS: "10" },
  );
  const fleet2 = await env.client({ queue: queue2 });
  const jobs2 = await Promise.all(
    Array.from({ length: streaming }, (_, i) =>
      fleet2.submit(REQUEST, { targetDir: "cpu", targetFname: `${i}.grib` }),
    ),
  );
  while (jobs2.some((j) => !observer.stateTime(j.id, "running"))) await sleep(20);
  await sleep(500);
  const c0 = await cpuMs(w2.proc.pid!);
  const s0 = Date.now();
  await sleep(4000);
  const cpuPerJob = ((await cpuMs(w2.proc.pid!)) - c0) / (Date.now() - s0) / streaming;
  observer.stop();
  await Promise.all(jobs2.map((j) => j.result().catch(() => undefined)));
  await env.killWorkers([w2]);
  const perJob = (busy - idle) / running;
  return {
    scenario: "7 footprint",
    figures: {
      "worker idle RSS MB": idle,
      [`worker RSS MB with ${running} running`]: busy,
      "RSS MB per running job": perJob,
      "CPU % of a core per streaming job": cpuPerJob * 100,
    },
    baseline: { "worker idle RSS MB": nodeRss },
    ratios: { "worker idle RSS MB": idle / nodeRss },
    targets: [
      target("worker idle RSS", round(idle, 1), "MB", "<=", 80),
      target("RSS per running job", round(perJob, 2), "MB", "<=", 2),
    ],
    notes: ["baseline: an idle node process; CPU measured over 4 s with 8 jobs each printing 100 lines/s"],
  };
}
