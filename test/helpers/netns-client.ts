/**
 * The client host of the multi-host tests, run in its namespace (`ip netns exec … node
 * netns-client.js <command>`), configured by the environment like any fleet process. It prints
 * one JSON record per line on stdout:
 *
 * - `wait-js`: returns once JetStream answers and can place a stream on every node;
 * - `leader <stream>`: `{"t":"leader","leader":"n2"}`;
 * - `load <count> <intervalMs> [users] [inFlight]`: submits `count` jobs (from `users` users, 4 by
 *   default; `inFlight` at once, 1 by default), one each interval, and prints
 *   `{"t":"server","name":"n1"}` when connected and after each reconnect,
 *   `{"t":"submitted","id","at"}`, then `{"t":"done","id","at","state","attempt","worker","bytes",
 *   "fileBytes","code"}` for each, and `{"t":"end"}`;
 * - `one`: submits one job and prints `submitted`, `running` (with its worker) and `done`;
 * - `history <job id>`: each write of the job's status key still stored, oldest first, as
 *   `{"t":"write","revision","state","attempt","worker","claim","committing"}` (what a failure says).
 */
import { stat } from "node:fs/promises";
import { jetstreamManager } from "@nats-io/jetstream";
import { replayStored } from "../../src/broker/stream-reads.js";
import { JOBS_BUCKET, kvStream, kvSubject } from "../../src/broker/subjects.js";
import { connect } from "@nats-io/transport-node";
import { Fleet } from "../../src/client/fleet.js";
import type { JobHandle } from "../../src/client/job.js";
import { loadConfig } from "../../src/config/load.js";
import { waitForJetStream } from "../../src/local/server.js";

const out = (record: Record<string, unknown>): void => {
  process.stdout.write(JSON.stringify(record) + "\n");
};

const config = loadConfig({ env: process.env });
const REQUEST = { param: "2t", date: "20240101/20240102", grid: "10/10" };

async function done(job: JobHandle): Promise<void> {
  let code: string | undefined;
  let fileBytes: number | undefined;
  try {
    const result = await job.result();
    fileBytes = (await stat(result.target)).size;
  } catch (err) {
    code = (err as { code?: string }).code ?? String(err);
  }
  const rec = await job.status();
  out({
    t: "done",
    id: job.id,
    at: Date.now(),
    state: rec.state,
    attempt: rec.attempt,
    worker: rec.worker,
    bytes: rec.result?.bytes,
    fileBytes,
    code,
  });
}

async function load(fleet: Fleet, count: number, intervalMs: number, users = 4, inFlight = 1): Promise<void> {
  const nc = fleet.connection.nc;
  out({ t: "server", name: nc.info?.server_name, at: Date.now() });
  void (async () => {
    for await (const s of nc.status())
      if (s.type === "reconnect") out({ t: "server", name: nc.info?.server_name, at: Date.now() });
  })();
  const pending: Array<Promise<void>> = [];
  const submitOne = async (i: number): Promise<void> => {
    const requestId = `netns-${process.pid}-${i}`;
    try {
      // A file of its own: a target the jobs shared would be replaced by each, and a fence could not
      // tell an earlier attempt's file in place from another job's.
      const job = await fleet.submit(REQUEST, {
        targetDir: "netns",
        targetFname: `${requestId}.grib`,
        environ: { user_id: `u${i % users}`, request_id: requestId },
      });
      out({ t: "submitted", id: job.id, at: Date.now() });
      pending.push(done(job));
    } catch (err) {
      // Reported as a job that did not succeed, so that the test says which and why.
      out({
        t: "done",
        id: requestId,
        at: Date.now(),
        state: "not submitted",
        code: (err as { code?: string }).code,
        message: (err as Error).message,
      });
    }
  };
  // `inFlight` submits at once (a bench's open loop), or one each `intervalMs` (the fault tests).
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.max(1, inFlight) }, async () => {
      while (next < count) {
        await submitOne(next++);
        if (intervalMs > 0) await new Promise((r) => setTimeout(r, intervalMs));
      }
    }),
  );
  await Promise.all(pending);
}

async function one(fleet: Fleet): Promise<void> {
  const job = await fleet.submit(
    { param: "2t", date: "20240101/to/20240120", grid: "10/10" },
    { targetDir: "netns", environ: { user_id: "solo", request_id: `netns-one-${process.pid}` } },
  );
  out({ t: "submitted", id: job.id, at: Date.now() });
  for await (const ev of job.events())
    if (ev.type === "state" && ev.state === "running") {
      out({ t: "running", id: job.id, worker: (await job.status()).worker, at: Date.now() });
      break;
    }
  await done(job);
}

async function main(): Promise<void> {
  const [command, ...args] = process.argv.slice(2);
  if (command === "wait-js") {
    await waitForJetStream(config.servers, 30_000, config.servers.length);
    out({ t: "ready" });
    return;
  }
  if (command === "leader") {
    const nc = await connect({ servers: config.servers, timeout: 5000 });
    const info = await (await jetstreamManager(nc)).streams.info(args[0]!);
    out({ t: "leader", leader: info.cluster?.leader });
    await nc.close();
    return;
  }
  if (command === "history") {
    const nc = await connect({ servers: config.servers, timeout: 5000 });
    const jsm = await jetstreamManager(nc);
    for await (const m of replayStored(
      jsm,
      kvStream(JOBS_BUCKET),
      kvSubject(JOBS_BUCKET, `${args[0]}.status`),
    )) {
      const r = m.data.length > 0 ? (m.json<Record<string, unknown>>() ?? {}) : {};
      const { state, attempt, worker, claim, committing } = r;
      out({ t: "write", revision: m.seq, at: m.timestamp, state, attempt, worker, claim, committing });
    }
    await nc.close();
    return;
  }
  const fleet = await Fleet.connect({ config });
  try {
    if (command === "load")
      await load(fleet, Number(args[0]), Number(args[1]), Number(args[2] ?? 4), Number(args[3] ?? 1));
    else if (command === "one") await one(fleet);
    else throw new Error(`unknown command ${command}`);
  } finally {
    await fleet.close();
  }
  out({ t: "end" });
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(
      `netns-client: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
    );
    process.exit(1);
  },
);
