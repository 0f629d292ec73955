/**
 * Split fan-out and ordered fan-in (#27): a job's parts run as ordinary jobs on many workers at
 * once, and the worker of the last part assembles them into the job's target, which then holds
 * exactly what one MARS run over the whole request writes (compared byte for byte, message by
 * message). Planning and its refusals are pure and tested first.
 */
import assert from "node:assert/strict";
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import type { Fleet } from "../src/client/fleet.js";
import type { JobEvent } from "../src/client/job.js";
import { accounting } from "../src/client/usage.js";
import { jobRecordSchema } from "../src/broker/schemas.js";
import { JOBS_BUCKET, RECORD_KEYS, subjects } from "../src/broker/subjects.js";
import { normaliseRequests } from "../src/mars/request.js";
import { parseSplit, planSplit, partTarget } from "../src/mars/split.js";
import { lookupParam } from "../src/mars/params.js";
import { assembleParts } from "../src/runner/fan-in.js";
import { SIMULATOR_SCRIPT } from "../src/sim/command.js";
import { planGrid } from "../src/sim/fields.js";
import { encodeGrib2 } from "../src/sim/grib.js";
import { rejection } from "./helpers/errors.js";
import { TestFleet } from "./helpers/fleet.js";
import { eventually } from "./helpers/proc.js";

const plan = (request: Record<string, string>, words: string[], maxParts?: number) =>
  planSplit(normaliseRequests([{ verb: "retrieve", ...request }]), parseSplit(words, maxParts));

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return (err as { code?: string }).code;
  }
  return undefined;
}

describe("split planning", () => {
  it("splits by calendar month, by N days and by a keyword's values, the first split outermost", () => {
    const months = plan({ param: "2t", date: "20240130/to/20240302" }, ["date:month"]);
    assert.deepEqual(
      months.map((p) => p[0]!.params["date"]),
      [
        ["20240130", "20240131"],
        Array.from({ length: 29 }, (_, i) => `202402${String(i + 1).padStart(2, "0")}`),
        ["20240301", "20240302"],
      ],
    );
    const weeks = plan({ param: "2t", date: "20240101/to/20240110" }, ["date:7"]);
    assert.deepEqual(
      weeks.map((p) => p[0]!.params["date"]!.length),
      [7, 3],
    );
    const both = plan({ param: "2t/msl", date: "20240101/to/20240220", grid: "1/1" }, [
      "date:month",
      "param",
    ]);
    assert.deepEqual(
      both.map((p) => `${p[0]!.params["date"]![0]} ${p[0]!.params["param"]!.join("/")}`),
      ["20240101 2t", "20240101 msl", "20240201 2t", "20240201 msl"],
    );
    assert.deepEqual(both[0]![0]!.params["grid"], ["1", "1"], "other keywords stay as they are");
    const steps = plan({ param: "2t", step: "0/to/12/by/6" }, ["step"]);
    assert.deepEqual(
      steps.map((p) => p[0]!.params["step"]),
      [["0"], ["6"], ["12"]],
    );
  });

  it("refuses splits that make no sense, with SPLIT_INVALID", () => {
    const req = { param: "2t/msl", date: "20240101/to/20240103" };
    assert.equal(
      codeOf(() => plan(req, ["step"])),
      "SPLIT_INVALID",
      "a keyword the request lacks",
    );
    assert.equal(
      codeOf(() => plan(req, ["date:month"])),
      "SPLIT_INVALID",
      "one month: one part",
    );
    assert.equal(
      codeOf(() => plan({ ...req, date: "20240101/to/20241231" }, ["date:1"])),
      "SPLIT_INVALID",
      "366 parts",
    );
    assert.equal(
      codeOf(() => plan(req, ["param", "date:1"], 4)),
      "SPLIT_INVALID",
      "over the given cap",
    );
    assert.equal(
      codeOf(() => parseSplit(["colour"])),
      "SPLIT_INVALID",
    );
    assert.equal(
      codeOf(() => parseSplit(["date:0"])),
      "SPLIT_INVALID",
    );
    assert.equal(
      codeOf(() => parseSplit(["param", "param"])),
      "SPLIT_INVALID",
    );
    assert.equal(
      codeOf(() => parseSplit([])),
      "SPLIT_INVALID",
    );
    assert.equal(plan(req, ["param", "date:1"]).length, 6);
  });

  it("assembles parts in the field order (parameter, then date...), and takes what is not GRIB2 whole, in part order", async () => {
    const dir = await mkdtemp(join(tmpdir(), "fan-in-"));
    try {
      const grid = planGrid({ verb: "retrieve", params: { grid: ["30", "30"] } });
      const field = (short: string, date: number) =>
        encodeGrib2({
          param: lookupParam(short)!,
          date,
          time: 0,
          step: 0,
          typeOfData: 0,
          grid,
          values: new Float64Array(grid.ni * grid.nj).fill(1),
        });
      // Split by date: each part holds both parameters of its day, as a run of that day writes them.
      const [t1, m1, t2, m2] = [
        field("2t", 20240101),
        field("msl", 20240101),
        field("2t", 20240102),
        field("msl", 20240102),
      ];
      await writeFile(join(dir, "p1"), Buffer.concat([m1, t1]));
      await writeFile(join(dir, "p2"), Buffer.concat([m2, t2]));
      const out = join(dir, "out");
      const done = await assembleParts([join(dir, "p1"), join(dir, "p2")], out);
      assert.equal(done.messages, 4);
      assert.equal(done.reordered, true);
      // msl (151) before 2t (167), each by date: one run's order.
      assert.ok((await readFile(out)).equals(Buffer.concat([m1, m2, t1, t2])));
      await writeFile(join(dir, "x1"), "not GRIB at all");
      await writeFile(join(dir, "x2"), "nor this");
      const whole = await assembleParts([join(dir, "x1"), join(dir, "x2")], out);
      assert.equal(whole.reordered, false);
      assert.equal(await readFile(out, "utf8"), "not GRIB at allnor this");
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("counts a split job once in a user's usage, with its parts' MARS time", () => {
    const base = {
      queue: "q",
      maxAttempts: 3,
      target: "t",
      requests: [],
      environ: { user_id: "ann" },
      timeoutMs: 0,
      cancelRequested: false,
      submittedAt: 0,
      updatedAt: 0,
      finishedAt: Date.UTC(2026, 0, 1),
      state: "succeeded" as const,
      attempt: 1,
    };
    const part = (i: number, ms: number) => ({
      ...base,
      id: `j-p${i}`,
      part: { parent: "j", index: i, total: 2 },
      result: { target: "x", bytes: 50, elapsedMs: ms },
    });
    const rows = accounting(
      [
        {
          ...base,
          id: "j",
          split: { by: ["param"], parts: 2 },
          result: { target: "t", bytes: 100, elapsedMs: 5000 },
        },
        part(1, 2000),
        part(2, 3000),
      ],
      {},
    );
    assert.deepEqual(
      rows.map((r) => [r.user, r.jobs, r.succeeded, r.bytes, r.marsSeconds]),
      [["ann", 1, 1, 100, 5]],
    );
  });

  it("puts a part's output beside the target, hidden, named by the job and the part", () => {
    assert.equal(partTarget("a/b/out.grib", "j1", 3), "a/b/.out.grib.j1.p3");
    assert.equal(partTarget("out.grib", "j1", 1), ".out.grib.j1.p1");
  });
});

let tf: TestFleet;
let fleet: Fleet;
const queue = TestFleet.queue("split");
/** MARS that is killed by a signal (retryable) the first time it is asked for tp, then runs normally. */
let flakyMars: string;

before(async () => {
  tf = await TestFleet.start();
  flakyMars = join(tf.sharedRoot, ".flaky-mars.sh");
  const marker = join(tf.sharedRoot, ".flaky-once");
  await writeFile(
    flakyMars,
    // The request file is MARS's last argument.
    `#!/bin/sh\nfor last; do :; done\n` +
      `if grep -qi 'param *= *tp' "$last" && [ ! -e "${marker}" ]; then touch "${marker}"; kill -TERM $$; fi\n` +
      `exec "${process.execPath}" "${SIMULATOR_SCRIPT}" "$@"\n`,
    { mode: 0o755 },
  );
  // Two workers: the parts run on both at once.
  const settings = { queue, concurrency: 3, marsCommand: flakyMars, maxRetries: 3, retryDelay: 100 };
  await tf.worker(settings, { MARS_SIM_FIELD_DELAY_MS: "20" });
  await tf.worker(settings, { MARS_SIM_FIELD_DELAY_MS: "20" });
  fleet = await tf.client({ queue });
});
after(async () => {
  await tf?.dispose();
});

const REQUEST = { param: "2t/msl/10u", date: "20240125/to/20240305", grid: "10/10" };

async function whole(request: Record<string, string>, name: string): Promise<Buffer> {
  const job = await fleet.submit(request, { targetDir: "split", targetFname: name });
  return readFile((await job.result({ signal: AbortSignal.timeout(60_000) })).target);
}

/** GRIB messages of a file (each carries its length), as buffers. */
function messages(buf: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let at = 0; at < buf.length;) {
    assert.equal(buf.toString("latin1", at, at + 4), "GRIB", `no GRIB message at ${at}`);
    const length = Number(buf.readBigUInt64BE(at + 8));
    out.push(buf.subarray(at, at + length));
    at += length;
  }
  return out;
}

describe("split jobs on a fleet", { timeout: 150_000 }, () => {
  for (const words of [["date:month"], ["param"], ["date:month", "param"]]) {
    it(`split by ${words.join(" and ")}: one job, its parts on both workers, the same file as one run`, async () => {
      const name = `by-${words.join("-").replace(":", "")}`;
      const expected = await whole(REQUEST, `${name}-whole.grib`);
      const job = await fleet.submit(REQUEST, {
        targetDir: "split",
        targetFname: `${name}.grib`,
        split: words,
      });
      const events: JobEvent[] = [];
      for await (const ev of job.events({ signal: AbortSignal.timeout(60_000) })) events.push(ev);
      const result = await job.result({ signal: AbortSignal.timeout(10_000) });
      const got = await readFile(result.target);
      const [a, b] = [messages(expected), messages(got)];
      assert.equal(b.length, a.length, "not the same number of fields");
      for (let i = 0; i < a.length; i++) assert.ok(a[i]!.equals(b[i]!), `field ${i} differs`);
      assert.ok(got.equals(expected));
      const record = await job.status();
      assert.equal(record.state, "succeeded");
      assert.equal(record.result?.bytes, expected.length);
      const parts = await job.parts();
      assert.equal(parts.length, record.split?.parts);
      assert.ok(parts.every((p) => p.state === "succeeded"));
      // At once: some parts ran at the same time (on both workers when there are more than 3).
      const overlap = parts.some((p, i) =>
        parts.some((q, j) => i !== j && p.startedAt! < q.finishedAt! && q.startedAt! < p.finishedAt!),
      );
      assert.ok(overlap, "the parts ran one after another");
      if (parts.length > 3) assert.equal(new Set(parts.map((p) => p.worker)).size, 2, "one worker ran all");
      // The log: each part's lines, marked, in part order; the job's own end last.
      const marks = events.flatMap((e) =>
        e.type === "log" ? [Number(/^\[part (\d+)\//.exec(e.line)?.[1])] : [],
      );
      assert.ok(
        marks.length > 0 && marks.every((m, i) => m >= (marks[i - 1] ?? 1)),
        "lines not in part order",
      );
      assert.equal(new Set(marks).size, parts.length);
      assert.equal(events.at(-1)?.type === "state" && events.at(-1)!.type, "state");
      // Nothing but the two targets is left in the directory (the parts' files are gone).
      const left = (await readdir(join(tf.sharedRoot, "split"))).filter((n) => n.includes(name));
      assert.deepEqual(left.sort(), [`${name}-whole.grib`, `${name}.grib`].sort());
    });
  }

  it("a part whose MARS was killed is retried alone; the job succeeds", async () => {
    // The tp part's first run is killed (SIGTERM: retryable); the other runs once.
    const job = await fleet.submit(
      { param: "2t/tp", date: "20240101/to/20240102", grid: "10/10" },
      { targetDir: "split", targetFname: "retried.grib", split: ["param"] },
    );
    await job.result({ signal: AbortSignal.timeout(60_000) });
    const parts = await job.parts();
    assert.deepEqual(
      parts.map((p) => p.attempt),
      [1, 2],
      "only the killed part (tp, part 2) ran again",
    );
  });

  it("a part that fails for good fails the job with its code and names the part", async () => {
    const job = await fleet.submit(
      // Part 1 (2t) takes seconds; part 2 fails at once: part 1 does not run on to its end.
      { param: "2t/nosuchparam", date: "20230101/to/20230720", grid: "10/10" },
      { targetDir: "split", targetFname: "failed.grib", split: ["param"] },
    );
    const err = await rejection(job.result({ signal: AbortSignal.timeout(60_000) }));
    const record = await job.status();
    assert.equal(record.state, "failed");
    const part = (await job.parts())[1]!;
    assert.equal(part.state, "failed");
    assert.equal(err.code, part.error?.code, "not the part's error code");
    assert.match(record.error?.message ?? "", /^part 2 of 2/);
    assert.equal(record.error?.details["part"], 2);
    assert.ok(
      await eventually(async () => (await job.parts())[0]!.state === "cancelled", 10_000),
      "the other part ran on after the job failed",
    );
    assert.ok(
      await eventually(
        async () => (await readdir(join(tf.sharedRoot, "split"))).every((n) => !n.includes(job.id)),
        10_000,
      ),
      "a part's output was left behind",
    );
  });

  it("cancelling the job cancels every part: queued ones never run, running ones stop", async () => {
    const job = await fleet.submit(
      { param: "2t/msl/10u/10v", date: "20240101/to/20240430", grid: "5/5" },
      { targetDir: "split", targetFname: "cancelled.grib", split: ["date:month", "param"] },
    );
    const parts = () => job.parts();
    assert.ok(
      await eventually(async () => (await parts()).some((p) => p.state === "running"), 20_000),
      "no part started",
    );
    assert.equal(await job.cancel(), true);
    await assert.rejects(job.result({ signal: AbortSignal.timeout(30_000) }), { code: "JOB_CANCELLED" });
    assert.ok(
      await eventually(
        async () => (await parts()).every((p) => p.state === "cancelled" || p.state === "succeeded"),
        30_000,
      ),
      "a part went on after the cancel",
    );
    const states = (await parts()).map((p) => p.state);
    assert.ok(
      states.filter((s) => s === "cancelled").length >= states.length - 6,
      `too many ran: ${states.join(",")}`,
    );
    assert.ok(
      await eventually(
        async () => (await readdir(join(tf.sharedRoot, "split"))).every((n) => !n.includes("cancelled")),
        10_000,
      ),
      "the target or a part's output is there",
    );
  });

  it("a worker killed (-9) in the middle of a fan-in: another finishes it, nothing half-written stays", async (t) => {
    // Two workers of their own, one slot each; parts big enough (2 × 31 MB) that assembling them
    // takes a while. The worker that takes the fan-in (its record says which) is killed at once.
    const own = TestFleet.queue("fanin-kill");
    const workers = await Promise.all([
      tf.worker({ queue: own, concurrency: 1 }),
      tf.worker({ queue: own, concurrency: 1 }),
    ]);
    const client = await tf.client({ queue: own });
    const big = { param: "2t", date: "20240101/to/20240229", grid: "0.5/0.5" };
    const job = await client.submit(big, {
      targetDir: "split",
      targetFname: "killed.grib",
      split: ["date:month"],
    });
    const nc = await tf.connectAs("admin");
    let killedAt: string | undefined;
    const sub = nc.subscribe(`$KV.${JOBS_BUCKET}.${job.id}.${RECORD_KEYS.status}`, {
      callback: (_err, msg) => {
        const rec = jobRecordSchema.safeParse(JSON.parse(new TextDecoder().decode(msg.data)));
        if (!rec.success || killedAt !== undefined || rec.data.state !== "running") return;
        const holder = rec.data.fanIn?.worker;
        const w = workers.find((x) => x.id === holder);
        if (!w) return;
        w.kill("SIGKILL");
        killedAt = holder;
      },
    });
    try {
      const result = await job.result({ signal: AbortSignal.timeout(90_000) });
      assert.ok(killedAt, "no fan-in was seen to start");
      const record = await job.status();
      assert.notEqual(record.fanIn?.worker, killedAt, "the killed worker is recorded as having assembled it");
      const killed = workers.find((w) => w.id === killedAt)!;
      assert.equal(
        killed.logs.filter((l) => l["msg"] === "split job assembled").length,
        0,
        "the fan-in ended before the kill: this test showed nothing",
      );
      const expected = await (async () => {
        const one = await client.submit(big, { targetDir: "split", targetFname: "killed-whole.grib" });
        return readFile((await one.result({ signal: AbortSignal.timeout(90_000) })).target);
      })();
      assert.ok((await readFile(result.target)).equals(expected), "the assembled file is not one run's");
      const left = (await readdir(join(tf.sharedRoot, "split"))).filter((n) => n.includes(job.id));
      assert.deepEqual(left, [], "a part's output or a half-made file is left");
      t.diagnostic(`fan-in holder ${killedAt} killed; finished by ${record.fanIn?.worker}`);
    } finally {
      sub.unsubscribe();
      await nc.close();
    }
  });

  it("a cancel announced with no record asking for it stops nothing", async () => {
    const job = await fleet.submit(
      { param: "2t", date: "20230101/to/20230220", grid: "10/10" },
      { targetDir: "split", targetFname: "not-cancelled.grib" },
    );
    assert.ok(
      await eventually(async () => (await job.status()).state === "running", 20_000),
      "the job did not start",
    );
    const nc = await tf.connectAs("worker");
    try {
      nc.publish(subjects.cancel(job.id)); // as a worker announcing a split job's end would
      await nc.flush();
    } finally {
      await nc.close();
    }
    const result = await job.result({ signal: AbortSignal.timeout(60_000) });
    assert.ok(result.bytes > 0);
    assert.equal((await job.status()).state, "succeeded");
  });

  it("refuses a split the request cannot take, at submit, with SPLIT_INVALID", async () => {
    const err = await rejection(fleet.submit({ param: "2t", date: "20240101" }, { split: ["param"] }));
    assert.equal(err.code, "SPLIT_INVALID");
    const deliver = await rejection(fleet.submit(REQUEST, { split: ["param"], deliver: "objectstore" }));
    assert.equal(deliver.code, "SPLIT_INVALID");
  });
});
