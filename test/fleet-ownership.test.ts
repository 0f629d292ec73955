/**
 * One attempt, one owner: each defect found under chaos, reproduced against a real nats-server and
 * real worker processes, plus the library's waits that must honour an abort at once.
 */
import assert from "node:assert/strict";
import { mkdir, readdir, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { deadLetterSchema } from "../src/broker/schemas.js";
import { DEAD_STREAM, EVENTS_STREAM, JOBS_BUCKET, subjects } from "../src/broker/subjects.js";
import { Kvm } from "@nats-io/kv";
import { SIMULATOR_SCRIPT } from "../src/sim/command.js";
import { Worker } from "../src/worker/worker.js";
import type { JobEvent } from "../src/client/job.js";
import { rejection } from "./helpers/errors.js";
import { TestFleet } from "./helpers/fleet.js";
import { eventually } from "./helpers/proc.js";

const TIMEOUT = 90_000;
const SMALL = { param: "2t", date: "20240101", grid: "10/10" };
let tf: TestFleet;
before(async () => {
  tf = await TestFleet.start();
});
after(async () => {
  await tf.dispose();
});

const rawJob = (id: string, queue: string, extra: object = {}) => ({
  v: 1,
  id,
  queue,
  requests: [{ verb: "retrieve", params: { param: ["2t"], date: ["20240101"], grid: ["10/10"] } }],
  target: `own/${id}.grib`,
  environ: { request_id: id },
  timeoutMs: 0,
  submittedAt: Date.now(),
  ...extra,
});

describe("ownership: runner errors are job errors, final when final", { timeout: TIMEOUT }, () => {
  it("a target that is a directory fails at once with TARGET_INVALID; MARS never runs, nothing is left", async () => {
    const queue = TestFleet.queue("dirtarget");
    await tf.worker({ queue, marsCommand: tf.countingMars });
    const fleet = await tf.client({ queue });
    await mkdir(join(tf.sharedRoot, "own", "isdir.grib"), { recursive: true });
    const job = await fleet.submit(SMALL, {
      targetDir: "own",
      targetFname: "isdir.grib",
      environ: { request_id: "isdir" },
    });
    assert.equal((await rejection(job.result())).code, "TARGET_INVALID");
    const rec = await job.status();
    assert.equal(rec.attempt, 1);
    assert.equal((await tf.invocations()).get("isdir"), undefined, "MARS ran for a directory target");
    assert.deepEqual(
      (await readdir(join(tf.sharedRoot, "own"))).filter((n) => n.endsWith(".mars-part")),
      [],
    );
  });

  it("a target name with a quote works; with both kinds it is refused at submit", async () => {
    const queue = TestFleet.queue("quotename");
    await tf.worker({ queue });
    const fleet = await tf.client({ queue });
    const job = await fleet.submit(SMALL, { targetDir: "own", targetFname: 'say "hi".grib' });
    const result = await job.result();
    assert.ok((await stat(result.target)).size > 0);
    assert.equal(
      (await rejection(fleet.submit(SMALL, { targetDir: "own", targetFname: `it's "x".grib` }))).code,
      "TARGET_INVALID",
    );
  });

  it("a huge environ is refused at submit; off the wire it fails once with ENVIRON_INVALID", async () => {
    const queue = TestFleet.queue("bigenv");
    await tf.worker({ queue, marsCommand: tf.countingMars });
    const fleet = await tf.client({ queue });
    const huge = { request_id: "bigenv", note: "x".repeat(200 * 1024) };
    assert.equal((await rejection(fleet.submit(SMALL, { environ: huge }))).code, "ENVIRON_INVALID");
    const raw = rawJob("bigenv-raw", queue, { environ: { request_id: "bigenv-raw", note: huge.note } });
    const job = (await tf.publishRaw(queue, raw, fleet))!;
    assert.equal((await rejection(job.result())).code, "ENVIRON_INVALID");
    assert.equal((await job.status()).attempt, 1);
    assert.equal((await tf.invocations()).get("bigenv-raw"), undefined);
  });
});

describe("ownership: one bad message does not stall the fleet", { timeout: TIMEOUT }, () => {
  it("an oversized garbage message is terminated at once and dead-lettered with what fits", async () => {
    const queue = TestFleet.queue("garbage");
    await tf.worker({ queue, concurrency: 1 });
    const fleet = await tf.client({ queue });
    const garbage = new Uint8Array(900 * 1024).fill(0x7b);
    await tf.publishRaw(queue, garbage);
    const job = await fleet.submit(SMALL, { targetDir: "own", targetFname: "after-garbage.grib" });
    await job.result({ signal: AbortSignal.timeout(15_000) });
    const nc = await connect({ servers: tf.server.url });
    try {
      const jsm = await jetstreamManager(nc);
      // The job and the garbage sit in different lanes, so either may be taken first: the letter
      // may still be on its way when the job's result is in.
      const read = () => jsm.streams.getMessage(DEAD_STREAM, { last_by_subj: subjects.dead(queue) });
      assert.ok(await eventually(async () => (await read()) !== null, 10_000), "no dead letter after 10 s");
      const stored = await read();
      assert.ok(stored, "no dead letter");
      const letter = deadLetterSchema.parse(stored.json());
      assert.equal(letter.size, garbage.length);
      assert.equal(letter.truncated, true);
      assert.equal(letter.error?.code, "MESSAGE_INVALID");
      assert.ok(Buffer.from(letter.payloadBase64, "base64").length < garbage.length);
    } finally {
      await nc.close();
    }
  });
});

describe("ownership: permanent broker errors fail at once, with a code", { timeout: TIMEOUT }, () => {
  it("a request over max_payload, and a submit after the streams were deleted", async () => {
    const queue = TestFleet.queue("permanent");
    const fleet = await tf.client({ queue });
    // Over what a job may carry: refused by the client before the broker sees it.
    const big = { ...SMALL, note: Array.from({ length: 150_000 }, (_, i) => `v${i}`).join("/") };
    const tooBig = await rejection(fleet.submit(big));
    assert.equal(tooBig.code, "REQUEST_TOO_LARGE");
    assert.equal(tooBig.retryable, false);

    // A separate server, with a small max_payload (and whose streams are deleted below, which must
    // not disturb the other tests): a message over it is a permanent broker error.
    const { LocalNatsServer } = await import("../src/local/server.js");
    const server = await LocalNatsServer.start({ extraConfig: ["max_payload: 16384"] });
    try {
      const own = await (
        await import("../src/client/fleet.js")
      ).Fleet.connect({ config: { ...tf.config({ queue }), servers: [server.url] } });
      const overPayload = { ...SMALL, note: "x".repeat(30_000) };
      const refused = await rejection(own.submit(overPayload));
      assert.equal(refused.code, "BROKER_ERROR");
      assert.equal(refused.retryable, false);
      const nc = await connect({ servers: server.url });
      const jsm = await jetstreamManager(nc);
      for await (const s of jsm.streams.names()) await jsm.streams.delete(s);
      const started = Date.now();
      const gone = await rejection(own.submit(SMALL));
      // The same error as a process meets at start (#25): TOPOLOGY_MISSING, at runtime too.
      assert.equal(gone.code, "TOPOLOGY_MISSING");
      assert.equal(gone.retryable, false);
      assert.ok(Date.now() - started < 20_000, "a permanent error was retried for the whole deadline");
      await nc.close();
      await own.close();
    } finally {
      await server.dispose();
    }
  });
});

describe("ownership: waits honour an abort at once", { timeout: TIMEOUT }, () => {
  it("result() and events() of a queued job return when their signal aborts", async () => {
    const queue = TestFleet.queue("abort"); // no worker: the job stays queued
    const fleet = await tf.client({ queue });
    const job = await fleet.submit(SMALL);
    const started = Date.now();
    await assert.rejects(job.result({ signal: AbortSignal.timeout(300) }), { name: "TimeoutError" });
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 300);
    for await (const ev of job.events({ signal: ac.signal })) void ev;
    assert.ok(Date.now() - started < 10_000, "an aborted wait did not return");
  });
});

describe("ownership: the stale attempt never touches the target", { timeout: TIMEOUT }, () => {
  it("a worker frozen between MARS's exit and its commit discards its output after SIGCONT", async () => {
    const queue = TestFleet.queue("stale");
    const settings = { queue, concurrency: 1 };
    const marker = join(tf.sharedRoot, `.froze-${queue}`);
    // MARS that, the first time only, freezes its worker (its parent) as it exits: the worker wakes
    // up with finished output long after its lease ran out.
    const freezing = join(tf.sharedRoot, `.freezing-mars-${queue}.sh`);
    await writeFile(
      freezing,
      `#!/bin/sh\n"${process.execPath}" "${SIMULATOR_SCRIPT}" "$@" || exit $?\n` +
        `if [ ! -e "${marker}" ]; then touch "${marker}"; kill -STOP $PPID; fi\n`,
      { mode: 0o755 },
    );
    // Debug: "result committed" is a debug line, and the stale worker must be seen not to log it.
    const stale = await tf.worker({ ...settings, marsCommand: freezing }, { MARS_LOG_LEVEL: "debug" });
    const fleet = await tf.client(settings);
    const job = await fleet.submit(SMALL, { targetDir: "own", targetFname: "stale.grib" });
    await eventually(
      async () =>
        await stat(marker).then(
          () => true,
          () => false,
        ),
      20_000,
    );
    await tf.worker({ ...settings, marsCommand: freezing }); // takes the job after the ack wait
    const result = await job.result({ signal: AbortSignal.timeout(30_000) });
    assert.equal((await job.status()).attempt, 2);
    await rm(result.target); // the client has its data and cleans up
    stale.kill("SIGCONT");
    assert.ok(
      await eventually(() => stale.logs.some((l) => String(l["msg"]).startsWith("lost the lease")), 15_000),
      "the stale worker did not notice it lost the job",
    );
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(
      await stat(result.target).then(
        () => "there",
        () => "gone",
      ),
      "gone",
      "the stale output reappeared",
    );
    assert.equal(
      stale.logs.filter((l) => l["msg"] === "result committed").length,
      0,
      "the stale attempt committed",
    );
    assert.deepEqual(
      (await readdir(join(tf.sharedRoot, "own"))).filter((n) => n.startsWith(".stale.grib")),
      [],
    );
  });
});

describe("ownership: a message delivered again to the worker that runs it", { timeout: TIMEOUT }, () => {
  // After a consumer leader change (seen in a partitioned cluster) the server may deliver a message
  // again, even with the same delivery count, to the worker that still runs it. A second attempt
  // there would own the same record (same worker, attempt, sequence): two commits. A worker frozen
  // past the ack wait while its MARS runs on makes the server deliver again to the same worker.
  it("keeps the attempt that runs: one MARS run, one commit, attempt 1", async () => {
    const queue = TestFleet.queue("again");
    const worker = await tf.worker(
      { queue, concurrency: 2 },
      { MARS_SIM_FIELD_DELAY_MS: "300", MARS_LOG_LEVEL: "debug" }, // "result committed" is a debug line
    );
    const fleet = await tf.client({ queue });
    const job = await fleet.submit(
      { ...SMALL, param: "2t/10u/10v/msl", step: "0/6/12/18" },
      { targetDir: "own", targetFname: "again.grib" },
    );
    const of = (msg: string) => worker.logs.filter((l) => l["msg"] === msg && l["jobId"] === job.id);
    assert.ok(await eventually(() => of("job started").length > 0, 20_000), "the job did not start");
    worker.kill("SIGSTOP");
    // Past the ack wait (750 ms here); a second job makes the worker pull again when it wakes, and
    // the server hands out the expired message first.
    const second = await fleet.submit(SMALL, { targetDir: "own", targetFname: "again-2.grib" });
    await new Promise((r) => setTimeout(r, 2500));
    worker.kill("SIGCONT");
    const result = await job.result({ signal: AbortSignal.timeout(40_000) });
    await second.result({ signal: AbortSignal.timeout(40_000) });
    assert.equal((await job.status()).attempt, 1, "a second attempt took the job over");
    assert.equal(of("job started").length, 1, "MARS ran again");
    assert.equal(of("result committed").length, 1);
    assert.equal((await stat(result.target)).size, result.bytes);
    assert.ok(
      worker.logs.some((l) => String(l["msg"]).startsWith("delivered again while this worker has it")),
      "the server did not deliver the job again, so this test showed nothing",
    );
  });
});

describe("ownership: a server restart does not stall or duplicate a job", { timeout: TIMEOUT }, () => {
  it("jobs running across a ~2 s restart finish once each, with every log line once", async () => {
    const queue = TestFleet.queue("restart");
    await tf.worker({ queue, marsCommand: tf.countingMars }, { MARS_SIM_FIELD_DELAY_MS: "200" });
    const fleet = await tf.client({ queue });
    const jobs = await Promise.all(
      ["rs-1", "rs-2"].map((id) =>
        fleet.submit(
          { ...SMALL, date: "20240101/to/20240110" },
          { targetDir: "own", targetFname: `${id}.grib`, environ: { request_id: id } },
        ),
      ),
    );
    await eventually(async () => (await jobs[0]!.status()).state === "running", 10_000);
    await tf.server.restart({ downMs: 2000 });
    for (const job of jobs) await job.result({ signal: AbortSignal.timeout(60_000) });
    const counts = await tf.invocations();
    assert.equal(counts.get("rs-1"), 1, "MARS ran twice");
    assert.equal(counts.get("rs-2"), 1, "MARS ran twice");
    for (const job of jobs) {
      const seqs = (await job.storedLog()).length;
      const events: number[] = [];
      for await (const ev of job.events()) if (ev.type === "log") events.push(ev.seq);
      assert.deepEqual(
        events,
        Array.from({ length: events.length }, (_, i) => i + 1),
        "gaps or repeats",
      );
      assert.ok(seqs >= events.length);
    }
  });
});

describe("ownership: events followed from submit across a restart", { timeout: TIMEOUT }, () => {
  it("shows every line and state once, in order: the stream is replayed after the reconnect", async () => {
    const queue = TestFleet.queue("liverestart");
    await tf.worker({ queue }, { MARS_SIM_FIELD_DELAY_MS: "200" });
    const fleet = await tf.client({ queue });
    const job = await fleet.submit(
      { ...SMALL, date: "20240101/to/20240110" },
      { targetDir: "own", targetFname: "live.grib", watchEvents: true },
    );
    const seen: JobEvent[] = [];
    const following = (async () => {
      for await (const ev of job.events()) if (ev.type !== "heartbeat") seen.push(ev);
    })();
    await eventually(async () => seen.some((e) => e.type === "log"), 10_000);
    await tf.server.restart({ downMs: 2000 });
    await following;
    const lines = seen.flatMap((e) => (e.type === "log" ? [e.seq] : []));
    assert.deepEqual(
      lines,
      lines.map((_, i) => i + 1),
      "gaps or repeats",
    );
    assert.equal(lines.length, (await job.storedLog()).length, "lines missing against the stored log");
    const states = seen.flatMap((e) => (e.type === "state" ? [`${e.state}/${e.attempt}`] : []));
    assert.equal(new Set(states).size, states.length, `a state shown twice: ${states.join(", ")}`);
    assert.equal(states.at(-1), "succeeded/1");
  });
});

describe("ownership: the worker fails loudly when its connection ends for good", { timeout: TIMEOUT }, () => {
  it("run() rejects with BROKER_ERROR and the state is failed", async () => {
    const queue = TestFleet.queue("closed");
    const worker = await Worker.start({
      config: tf.config({ queue }),
      journalDir: join(tmpdir(), `journal-${queue}`),
    });
    assert.equal(worker.state, "running");
    // What an ended connection looks like from inside (credentials revoked, server gone for good).
    await (worker as unknown as { conn: { nc: { close(): Promise<void> } } }).conn.nc.close();
    const err = await rejection(worker.run());
    assert.equal(err.code, "BROKER_ERROR");
    assert.equal(worker.state, "failed");
    await worker.closed(); // follows the connection: resolved, never rejected
  });
});

describe("ownership: records expire", { timeout: TIMEOUT }, () => {
  it("the jobs bucket keeps records for MARS_RETENTION", async () => {
    const { LocalNatsServer } = await import("../src/local/server.js");
    const server = await LocalNatsServer.start();
    try {
      const { Fleet } = await import("../src/client/fleet.js");
      const fleet = await Fleet.connect({
        config: { ...tf.config({ queue: "retention", retention: "2s" }), servers: [server.url] },
      });
      const job = await fleet.submit(SMALL);
      assert.equal((await job.status()).state, "queued");
      assert.ok(
        await eventually(
          async () =>
            !(await fleet.job(job.id).then(
              () => true,
              () => false,
            )),
          10_000,
        ),
        "the record did not expire",
      );
      const nc = await connect({ servers: server.url });
      assert.ok((await (await jetstreamManager(nc)).streams.info(EVENTS_STREAM)).config);
      await nc.close();
      await fleet.close();
    } finally {
      await server.dispose();
    }
  });
});

describe("ownership: a cancel whose announcement was missed", { timeout: TIMEOUT }, () => {
  it("is found by the fence: the job ends cancelled and nothing reaches the target", async () => {
    const queue = TestFleet.queue("silentcancel");
    await tf.worker({ queue }, { MARS_SIM_FIELD_DELAY_MS: "150" });
    const fleet = await tf.client({ queue });
    const job = await fleet.submit(
      { param: "2t/msl", date: "20240101/to/20240105", grid: "10/10" },
      { targetDir: "own", targetFname: "silent-cancel.grib" },
    );
    assert.ok(await eventually(async () => (await job.status()).state === "running", 10_000), "never ran");
    // As a client that wrote its cancel request and died before announcing it on mars.cancel.<id>.
    const nc = await connect({ servers: tf.server.url });
    try {
      const kv = await new Kvm(nc).open(JOBS_BUCKET);
      const entry = (await kv.get(`${job.id}.submitted`))!;
      const sub = entry.json<Record<string, unknown>>();
      await kv.update(
        `${job.id}.submitted`,
        JSON.stringify({ ...sub, cancelRequested: true }),
        entry.revision,
      );
    } finally {
      await nc.close();
    }
    assert.equal((await rejection(job.result())).code, "JOB_CANCELLED");
    assert.equal((await job.status()).state, "cancelled");
    await assert.rejects(stat(join(tf.sharedRoot, "own", "silent-cancel.grib")), { code: "ENOENT" });
  });
});
