import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { connect } from "@nats-io/transport-node";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { DEAD_STREAM, JOBS_STREAM, consumerName, subjects } from "../src/broker/subjects.js";
import { executeMars } from "../src/client/execute.js";
import type { JobEvent } from "../src/client/job.js";
import { MarsFleetError, MarsRequestError } from "../src/core/errors.js";
import type { JobRecord } from "../src/broker/schemas.js";
import { gribLs } from "./helpers/grib.js";
import { freePort } from "../src/local/server.js";
import { rejection } from "./helpers/errors.js";
import { TestFleet } from "./helpers/fleet.js";
import { eventually, groupMembers, helperPids, processAlive } from "./helpers/proc.js";

let tf: TestFleet;
before(async () => {
  tf = await TestFleet.start();
});
after(async () => {
  await tf.dispose();
});

async function collect(events: AsyncIterable<JobEvent>): Promise<JobEvent[]> {
  const out: JobEvent[] = [];
  for await (const e of events) out.push(e);
  return out;
}

/** Largest number of [start, end) intervals open at once. */
function maxOverlap(intervals: Array<[number, number]>): number {
  const points = intervals
    .flatMap(([s, e]) => [[s, 1] as const, [e, -1] as const])
    .sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let open = 0;
  let max = 0;
  for (const [, d] of points) max = Math.max(max, (open += d));
  return max;
}

describe("fleet: jobs", () => {
  it("runs 20 jobs over 2 workers x 2 slots: all succeed once, slots and the fleet cap hold", async () => {
    const queue = TestFleet.queue("many");
    const settings = { queue, concurrency: 2, maxConcurrentConnections: 3, marsCommand: tf.countingMars };
    const knobs = { MARS_SIM_FIELD_DELAY_MS: "60" };
    const started = await Promise.all([tf.worker(settings, knobs), tf.worker(settings, knobs)]);
    const fleet = await tf.client(settings);
    const registered = (await fleet.workers()).filter((w) => w.queue === queue);
    assert.deepEqual(registered.map((w) => w.id).sort(), started.map((w) => w.id).sort());
    assert.ok(registered.every((w) => w.slots === 2 && w.state === "running"));
    // Each entry says what the worker process itself uses (for dashboards).
    assert.ok(
      registered.every((w) => w.usage && w.usage.rssMb > 10 && w.usage.cpuPercent >= 0),
      JSON.stringify(registered.map((w) => w.usage)),
    );
    const jobs = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        fleet.submit(
          { param: "2t/msl", date: "20240101/to/20240103", grid: "10/10" },
          { targetDir: "many", targetFname: `job-${i}.grib`, environ: { request_id: `many-${i}` } },
        ),
      ),
    );
    const results = await Promise.all(jobs.map((j) => j.result()));
    for (const r of results) {
      const rows = await gribLs(r.target, ["shortName", "dataDate"]);
      assert.equal(rows.length, 6);
    }
    const invocations = await tf.invocations();
    for (let i = 0; i < 20; i++)
      assert.equal(invocations.get(`many-${i}`), 1, `job ${i} ran ${invocations.get(`many-${i}`)} times`);
    const records = await Promise.all(jobs.map((j) => j.status()));
    assert.ok(records.every((r) => r.state === "succeeded" && r.attempt === 1));
    const span = (r: JobRecord): [number, number] => [r.startedAt!, r.finishedAt!];
    const workers = new Set(records.map((r) => r.worker));
    assert.equal(workers.size, 2, "both workers took jobs");
    for (const w of workers)
      assert.ok(
        maxOverlap(records.filter((r) => r.worker === w).map(span)) <= 2,
        `worker ${w} exceeded its slots`,
      );
    const overall = maxOverlap(records.map(span));
    assert.ok(overall <= 3, `fleet cap exceeded: ${overall} at once`);
    assert.ok(overall >= 2, "jobs ran in parallel");
  });

  it("a worker configured with a slower heartbeat than the consumer allows still runs a job once", async () => {
    const queue = TestFleet.queue("slowhb");
    const fleet = await tf.client({ queue }); // provisions ack wait = 3 x 250 ms
    const worker = await tf.worker(
      { queue, heartbeatInterval: "20s", marsCommand: tf.countingMars },
      { MARS_SIM_FIELD_DELAY_MS: "300" },
    );
    assert.ok(worker.logs.some((l) => l["msg"] === "heartbeat shortened to fit the consumer's ack wait"));
    const job = await fleet.submit(
      { param: "2t", date: "20240101/to/20240106", grid: "10/10" },
      { targetDir: "slowhb", environ: { request_id: "slowhb-1" } },
    );
    await job.result();
    assert.equal((await job.status()).attempt, 1);
    assert.equal((await tf.invocations()).get("slowhb-1"), 1);
  });

  it("serves Prometheus metrics: jobs by outcome, slots, running", async () => {
    const queue = TestFleet.queue("metrics");
    const metricsPort = await freePort();
    await tf.worker({ queue, concurrency: 3, metricsPort });
    const fleet = await tf.client({ queue });
    await (
      await fleet.submit({ param: "2t", date: "20240101", grid: "10/10" }, { targetDir: "metrics" })
    ).result();
    await rejection((await fleet.submit({ param: "nosuch" }, { targetDir: "metrics" })).result());
    const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    const value = (name: string, labels: string): number => {
      const line = text
        .split("\n")
        .find((l) => l.startsWith(name) && labels.split(",").every((x) => l.includes(x)));
      return line ? Number(line.split(" ").at(-1)) : NaN;
    };
    assert.equal(value("mars_fleet_jobs_total", `queue="${queue}",state="succeeded"`), 1);
    assert.equal(value("mars_fleet_jobs_total", `queue="${queue}",state="failed"`), 1);
    assert.equal(value("mars_fleet_slots", `queue="${queue}"`), 3);
    assert.equal(value("mars_fleet_running_jobs", `queue="${queue}"`), 0);
    assert.equal(value("mars_fleet_job_duration_seconds_count", `queue="${queue}",state="succeeded"`), 1);
  });

  it("dedupes by requestId: one job, one execution", async () => {
    const queue = TestFleet.queue("dedupe");
    const settings = { queue, marsCommand: tf.countingMars };
    await tf.worker(settings);
    const fleet = await tf.client(settings);
    const request = { param: "2t", date: "20240101", grid: "10/10" };
    const opts = {
      targetDir: "dedupe",
      requestId: "Same Request/Id 42",
      environ: { request_id: "dedupe-1" },
    };
    const [a, b] = await Promise.all([fleet.submit(request, opts), fleet.submit(request, opts)]);
    assert.equal(a.id, b.id);
    await a.result();
    const c = await fleet.submit(request, opts);
    assert.equal(c.id, a.id);
    await c.result();
    await sleep(500);
    assert.equal((await tf.invocations()).get("dedupe-1"), 1);
  });

  it("fails a MARS user error after one attempt with its ERROR lines; no data and timeout are typed", async () => {
    const queue = TestFleet.queue("errors");
    const settings = { queue };
    await tf.worker(settings, { MARS_SIM_FIELD_DELAY_MS: "400", MARS_SIM_SPAWN_CHILD: "1" });
    const fleet = await tf.client(settings);

    const bad = await fleet.submit({ param: "nosuchparam", date: "20240101" }, { targetDir: "errors" });
    const err = await rejection(bad.result());
    assert.equal(err.code, "MARS_RUNTIME_ERROR");
    assert.match(err.message, /mars - ERROR .*unknown parameter: nosuchparam/);
    const rec = await bad.status();
    assert.equal(rec.state, "failed");
    assert.equal(rec.attempt, 1);

    const none = await fleet.submit({ param: "2t", date: "20990101" }, { targetDir: "errors" });
    assert.equal((await rejection(none.result())).code, "MARS_NO_DATA");

    const slow = await fleet.submit(
      { param: "2t", date: "20240101/to/20240110", grid: "10/10" },
      // Long enough for the simulator to start and print its helper on a loaded machine; far shorter
      // than its 10 fields x 400 ms.
      { targetDir: "errors", timeoutMs: 2000 },
    );
    const events = await collect(slow.events());
    assert.equal((await rejection(slow.result())).code, "JOB_TIMEOUT");
    const [helper] = helperPids(events.flatMap((e) => (e.type === "log" ? [e.line] : [])));
    assert.ok(helper);
    assert.ok(await eventually(() => !processAlive(helper), 3000), "MARS helper survived the timeout");
    assert.equal((await slow.status()).attempt, 1);
  });

  it("tells a request refused before it was queued from its record: its log is the reason", async () => {
    const fleet = await tf.client({ queue: TestFleet.queue("refused") });
    const reason = new MarsRequestError("the request is bad\nand so is this", {});
    await fleet.recordRefusal(reason, { requestId: "refused-1", environ: { user_id: "alice" } });
    const job = await fleet.job("refused-1");
    const events: JobEvent[] = [];
    for await (const ev of job.events()) events.push(ev);
    const lines = events.flatMap((e) => (e.type === "log" ? [e.line] : []));
    assert.equal(lines.length, 2);
    assert.match(lines[0]!, /^mars - ERROR .* - the request is bad$/);
    assert.match(lines[1]!, /- and so is this$/);
    const last = events.at(-1);
    assert.equal(last?.type === "state" && last.state, "failed");
    assert.equal(last?.type === "state" && last.error?.code, "MARS_REQUEST_INVALID");
    assert.deepEqual(await job.storedLog(), lines);
  });

  it("cancels a running job (group killed, no redelivery) and a queued one (never runs)", async () => {
    const queue = TestFleet.queue("cancel");
    const settings = { queue, marsCommand: tf.countingMars };
    const fleet = await tf.client(settings);
    // Queued: no worker yet.
    const queued = await fleet.submit(
      { param: "2t", date: "20240101" },
      { targetDir: "cancel", environ: { request_id: "cancel-queued" } },
    );
    // A follower of the queued job (another handle) sees the cancel end its events. Only workers
    // write events, so that end comes from the record.
    const states = (async () => {
      const seen: string[] = [];
      for await (const ev of (await fleet.job(queued.id)).events())
        if (ev.type === "state") seen.push(ev.state);
      return seen;
    })();
    await sleep(200);
    assert.equal(await queued.cancel(), true);
    assert.equal((await rejection(queued.result())).code, "JOB_CANCELLED");
    assert.deepEqual(await states, ["cancelled"]);

    await tf.worker(settings, { MARS_SIM_FIELD_DELAY_MS: "500", MARS_SIM_SPAWN_CHILD: "1" });
    const running = await fleet.submit(
      { param: "2t", date: "20240101/to/20240120" },
      { targetDir: "cancel", environ: { request_id: "cancel-running" } },
    );
    const lines: string[] = [];
    let pgid = 0;
    for await (const ev of running.events()) {
      if (ev.type === "log") lines.push(ev.line);
      if (ev.type === "heartbeat") pgid = ev.pid;
      if (helperPids(lines).length > 0 && pgid > 0 && ev.type !== "state") {
        await running.cancel();
        break;
      }
    }
    assert.equal((await rejection(running.result())).code, "JOB_CANCELLED");
    const [helper] = helperPids(lines);
    assert.ok(
      await eventually(() => !processAlive(helper!) && groupMembers(pgid).length === 0, 3000),
      "MARS group survived cancel",
    );
    await sleep(1500); // several ack waits: a redelivery would show now
    const rec = await running.status();
    assert.equal(rec.state, "cancelled");
    assert.equal(rec.attempt, 1);
    const invocations = await tf.invocations();
    assert.equal(invocations.get("cancel-running"), 1);
    assert.equal(invocations.get("cancel-queued"), undefined, "the cancelled queued job ran");
    const nc = await connect({ servers: tf.server.url });
    const info = await (await jetstreamManager(nc)).consumers.info(JOBS_STREAM, consumerName(queue));
    assert.equal(info.num_pending + info.num_ack_pending, 0);
    await nc.close();
  });

  it("lets another process reattach: full log replay and the result", async () => {
    const queue = TestFleet.queue("reattach");
    const settings = { queue };
    await tf.worker(settings, { MARS_SIM_FIELD_DELAY_MS: "100" });
    const script = join(tf.sharedRoot, "submit-and-exit.mjs");
    const fleetUrl = new URL("../src/client/fleet.js", import.meta.url).href;
    const configUrl = new URL("../src/config/load.js", import.meta.url).href;
    await writeFile(
      script,
      `import { Fleet } from ${JSON.stringify(fleetUrl)};
       import { loadConfig } from ${JSON.stringify(configUrl)};
       const fleet = await Fleet.connect({ config: loadConfig() });
       const job = await fleet.submit({ param: "2t", date: "20240101/to/20240108", grid: "10/10" }, { targetDir: "reattach" });
       console.log(job.id);
       await fleet.close();`,
    );
    const child = spawn(process.execPath, [script], {
      env: { ...process.env, ...tf.env(settings) },
      stdio: ["ignore", "pipe", "inherit"],
    });
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    assert.equal(await new Promise((r) => child.on("exit", r)), 0);
    const id = out.trim();
    const fleet = await tf.client(settings);
    const job = await fleet.job(id);
    const events = await collect(job.events());
    const logs = events.filter((e) => e.type === "log");
    assert.match(logs[0]!.type === "log" ? logs[0]!.line : "", /mars-fleet MARS simulator/);
    assert.deepEqual(
      logs.map((e) => (e.type === "log" ? e.seq : 0)),
      logs.map((_, i) => i + 1),
    );
    assert.ok(logs.some((e) => e.type === "log" && e.line.endsWith("No errors reported")));
    const result = await job.result();
    assert.equal((await gribLs(result.target, ["shortName"])).length, 8);
    // Replaying a finished job again gives the same story.
    assert.equal((await collect(job.events())).filter((e) => e.type === "log").length, logs.length);
    await assert.rejects(fleet.job("no-such-job"), (e: MarsFleetError) => e.code === "JOB_NOT_FOUND");
  });

  it("executeMars runs through the fleet with the same result and errors as locally", async () => {
    const queue = TestFleet.queue("exec");
    const settings = { queue };
    await tf.worker(settings);
    const config = tf.config(settings);
    const request = { param: "2t/10u", date: "20240101", grid: "10/10" };
    const shown: string[] = [];
    const viaFleet = await executeMars(request, {
      config,
      targetDir: join(tf.sharedRoot, "exec"),
      targetFname: "a.grib",
      onLog: (l) => shown.push(l),
    });
    const local = await executeMars(request, {
      config: { ...config, servers: [] },
      targetDir: join(tf.sharedRoot, "exec"),
      targetFname: "b.grib",
    });
    assert.equal(viaFleet.bytes, local.bytes);
    assert.equal(viaFleet.log.length, local.log.length);
    assert.deepEqual(
      shown,
      viaFleet.log.filter((l) => /error/i.test(l)),
    );
    const errFleet = await rejection(
      executeMars({ param: "bogus" }, { config, targetDir: join(tf.sharedRoot, "exec") }),
    );
    const errLocal = await rejection(
      executeMars(
        { param: "bogus" },
        { config: { ...config, servers: [] }, targetDir: join(tf.sharedRoot, "exec") },
      ),
    );
    assert.equal(errFleet.code, errLocal.code);
    // A custom handler can cancel the job through the fleet.
    const cancelled = await rejection(
      executeMars(
        { param: "2t", date: "20240101/to/20240131" },
        {
          config,
          targetDir: join(tf.sharedRoot, "exec"),
          logHandler: (line, job) => (line.includes("Welcome") ? job.cancel() : undefined),
        },
      ),
    );
    assert.equal(cancelled.code, "JOB_CANCELLED");
  });

  it("rejects bad input with clear errors and keeps serving", async () => {
    const queue = TestFleet.queue("bad");
    const settings = { queue };
    const worker = await tf.worker(settings);
    const fleet = await tf.client(settings);
    assert.equal(
      (await rejection(fleet.submit({ param: "2t\ntarget=/etc/passwd" }))).code,
      "MARS_REQUEST_INVALID",
    );
    assert.equal(
      (await rejection(fleet.submit({ param: "2t" }, { targetDir: "/etc" }))).code,
      "TARGET_INVALID",
    );
    assert.equal(
      (await rejection(fleet.submit({ param: "2t" }, { targetDir: "../../outside" }))).code,
      "TARGET_INVALID",
    );

    const nc = await connect({ servers: tf.server.url });
    const js = jetstream(nc);
    const deadBefore =
      (await (await jetstreamManager(nc)).streams.info(DEAD_STREAM).catch(() => undefined))?.state.messages ??
      0;
    await js.publish(subjects.jobs(queue), new Uint8Array([0xff, 0x00, 0x13, 0x37]));
    const badEnviron = {
      v: 1,
      id: "badenv-1",
      queue,
      requests: [{ verb: "retrieve", params: { param: ["2t"] } }],
      target: "x.grib",
      environ: { "bad key": "x" },
      submittedAt: Date.now(),
    };
    await js.publish(subjects.jobs(queue), JSON.stringify(badEnviron));
    await js.publish(
      subjects.jobs(queue),
      JSON.stringify({
        v: 1,
        id: "escape-1",
        queue,
        requests: [{ verb: "retrieve", params: { param: ["2t"] } }],
        target: "../../../etc/evil.grib",
        submittedAt: Date.now(),
      }),
    );
    const escaped = await fleet.job("escape-1").catch(() => undefined);
    const escapedErr = await rejection((escaped ?? (await eventuallyJob(fleet, "escape-1"))).result());
    assert.equal(escapedErr.code, "TARGET_INVALID");

    const jsm = await jetstreamManager(nc);
    assert.ok(
      await eventually(
        async () => (await jsm.streams.info(DEAD_STREAM)).state.messages >= deadBefore + 2,
        5000,
      ),
    );
    const dead = await jsm.streams.getMessage(DEAD_STREAM, { last_by_subj: subjects.dead(queue) });
    assert.equal(JSON.parse(dead!.string()).reason, "invalid job message");
    await nc.close();

    const ok = await fleet.submit({ param: "2t", grid: "10/10", date: "20240101" }, { targetDir: "bad" });
    assert.ok((await ok.result()).bytes > 0);
    assert.equal(worker.proc.exitCode, null, "the worker is still running");
    const names = await readdir(join(tf.sharedRoot, "bad"));
    assert.deepEqual(
      names.filter((n) => n.endsWith(".mars-part")),
      [],
    );
  });
});

describe("fleet: an idle fleet", () => {
  it(
    "wakes one worker per new job, not all of them: about one pull per job",
    { timeout: 90_000 },
    async (t) => {
      const queue = TestFleet.queue("herd");
      await Promise.all([tf.worker({ queue }), tf.worker({ queue }), tf.worker({ queue })]);
      const fleet = await tf.client({ queue });
      const nc = await tf.connectAs("admin");
      let pulls = 0;
      const sub = nc.subscribe(`$JS.API.CONSUMER.MSG.NEXT.${JOBS_STREAM}.*`, {
        callback: (_err, msg) => {
          if (msg.subject.includes(queue)) pulls++;
        },
      });
      await nc.flush();
      const jobs = 20;
      for (let i = 0; i < jobs; i++) {
        const job = await fleet.submit(
          { param: "2t", date: "20240101", grid: "10/10" },
          { targetDir: "herd" },
        );
        assert.ok((await job.result()).bytes > 0);
      }
      await nc.flush();
      sub.unsubscribe();
      await nc.close();
      // Every free worker pulling for every job would make 3 per job. The counts each second used
      // to add one for each job they found running elsewhere (CI: up to 49); a job whose wake-up
      // went to another worker is left to it now.
      t.diagnostic(`${pulls} pulls for ${jobs} jobs`);
      assert.ok(pulls <= 2 * jobs, `${pulls} pulls for ${jobs} jobs`);
    },
  );
});

describe("fleet: jobs of earlier clients (no lane)", () => {
  it("runs lane-less jobs queued before any worker listened, and after", { timeout: 60_000 }, async () => {
    const queue = TestFleet.queue("laneless");
    const fleet = await tf.client({ queue });
    const job = (id: string) => ({
      v: 1,
      id,
      queue,
      requests: [{ verb: "retrieve", params: { param: ["2t"], date: ["20240101"], grid: ["10", "10"] } }],
      target: `laneless/${id}.grib`,
      submittedAt: Date.now(),
    });
    // Before any worker: no doorbell heard it, the worker's first count must find it.
    await tf.publishRaw(queue, job("laneless-early"));
    await tf.worker({ queue });
    const early = await eventuallyJob(fleet, "laneless-early");
    assert.ok((await early.result()).bytes > 0);
    const late = await tf.publishRaw(queue, job("laneless-late"), fleet);
    assert.ok((await late!.result()).bytes > 0);
  });
});

describe("fleet: odd MARS output", () => {
  it("streams a line longer than a message can hold, truncated, and the rest in order", async () => {
    const queue = TestFleet.queue("longline");
    const script = join(tf.sharedRoot, "long-line-mars.sh");
    const simulator = new URL("../../bin/mars-sim.js", import.meta.url).pathname;
    await writeFile(
      script,
      `#!/bin/sh\nhead -c 3000000 /dev/zero | tr '\\0' x\necho\nexec "${process.execPath}" "${simulator}" "$@"\n`,
      { mode: 0o755 },
    );
    await tf.worker({ queue, marsCommand: script });
    const fleet = await tf.client({ queue });
    const job = await fleet.submit(
      { param: "2t", date: "20240101", grid: "10/10" },
      { targetDir: "longline" },
    );
    const events = await collect(job.events());
    await job.result();
    const logs = events.flatMap((e) => (e.type === "log" ? [e] : []));
    assert.match(logs[0]!.line, /^x+ \.\.\. \(line truncated, 3000000 characters\)$/);
    assert.ok(logs[0]!.line.length < 1_000_000);
    assert.deepEqual(
      logs.map((e) => e.seq),
      logs.map((_, i) => i + 1),
    );
    assert.ok(logs.at(-1)!.line.endsWith("No errors reported"));
  });
});

async function eventuallyJob(fleet: Awaited<ReturnType<TestFleet["client"]>>, id: string) {
  for (let i = 0; i < 100; i++) {
    const job = await fleet.job(id).catch(() => undefined);
    if (job) return job;
    await sleep(50);
  }
  throw new Error(`job ${id} never appeared`);
}
