import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { OPEN_FLEET } from "../src/broker/signing.js";
import { ApiKeys } from "../src/api/keys.js";
import { startApi, type ApiServer } from "../src/api/server.js";
import { accounting } from "../src/client/usage.js";
import {
  acceptedSchema,
  jobListSchema,
  jobSchema,
  queuesSchema,
  usageSchema,
  workersSchema,
} from "../src/api/schemas.js";
import type { JobRecord } from "../src/broker/schemas.js";
import type { z } from "zod";
import { cli } from "./helpers/cli.js";
import { TestFleet } from "./helpers/fleet.js";
import { ApiClient, type CallOptions } from "./helpers/api.js";

const TIMEOUT = 120_000;
let tf: TestFleet;
let api: ApiServer;
let base: string;
const tokens: Record<"alice" | "bob" | "admin", string> = { alice: "", bob: "", admin: "" };
const queue = TestFleet.queue("api");

before(async () => {
  tf = await TestFleet.start();
  await tf.worker({ queue, concurrency: 2 }, { MARS_SIM_FIELD_DELAY_MS: "50" });
  api = await startApi({ config: tf.config({ queue }), port: 0, host: "127.0.0.1" });
  base = `http://127.0.0.1:${api.port}`;
  const nc = await tf.connectAs("admin");
  try {
    const keys = await ApiKeys.open(nc, OPEN_FLEET);
    tokens.alice = (await keys.add("alice", "user")).token;
    tokens.bob = (await keys.add("bob", "user")).token;
    tokens.admin = (await keys.add("ops", "admin")).token;
    client = new ApiClient(base, tokens);
  } finally {
    await nc.close();
  }
});
after(async () => {
  await api?.close();
  await tf.dispose();
});

// Calls as a named key, problems checked as RFC 9457, and waits for a job's end: the shared client.
let client: ApiClient;
const call = (path: string, opts?: CallOptions): Promise<Response> => client.call(path, opts);
const problem = (res: Response, status: number): ReturnType<ApiClient["problem"]> =>
  client.problem(res, status);
const finished = (id: string, as: keyof typeof tokens): Promise<Record<string, unknown>> =>
  client.finished(id, as);

/** A JSON answer, checked against the schema its OpenAPI description was made from. */
async function checked<S extends z.ZodType>(schema: S, res: Response, status = 200): Promise<z.infer<S>> {
  assert.equal(res.status, status, await res.clone().text());
  const parsed = schema.safeParse(await res.json());
  assert.ok(
    parsed.success,
    `answer does not match its documented schema: ${JSON.stringify(parsed.error?.issues)}`,
  );
  return parsed.data;
}

const REQUEST = { param: "2t", date: "20240101/to/20240103", grid: "10/10" };

describe("REST API: accounting", () => {
  it("sums finished jobs per user and UTC day, MARS seconds and bytes, cache hits apart, within from/to", () => {
    const rec = (
      user: string,
      finishedAt: string,
      state: JobRecord["state"],
      elapsedMs: number,
      bytes: number,
    ) =>
      ({
        id: `${user}-${finishedAt}-${elapsedMs}`,
        queue: "q",
        state,
        attempt: 1,
        maxAttempts: 3,
        target: "t",
        requests: [],
        environ: { user_id: user },
        timeoutMs: 0,
        cancelRequested: false,
        submittedAt: 0,
        startedAt: Date.parse(finishedAt) - elapsedMs,
        finishedAt: Date.parse(finishedAt),
        updatedAt: 0,
        ...(state === "succeeded" && { result: { target: "t", bytes, elapsedMs } }),
      }) as JobRecord;
    const rows = accounting(
      [
        rec("a", "2026-11-01T10:00:00Z", "succeeded", 2000, 100),
        rec("a", "2026-11-01T23:59:00Z", "failed", 500, 0),
        rec("a", "2026-11-02T00:01:00Z", "succeeded", 1000, 50),
        rec("b", "2026-11-01T12:00:00Z", "succeeded", 3000, 7),
        { ...rec("b", "2026-11-01T12:00:00Z", "running", 0, 0), finishedAt: undefined } as JobRecord,
        // Served from the result cache: no MARS time of its own, the time it saved counted apart.
        (() => {
          const r = rec("b", "2026-11-01T13:00:00Z", "succeeded", 20, 7);
          return { ...r, result: { ...r.result!, cached: { key: "k", savedMs: 3000 } } };
        })(),
      ],
      { from: "2026-11-01", to: "2026-11-01" },
    );
    const noCache = { cacheHits: 0, cacheBytes: 0, marsSecondsSaved: 0 };
    assert.deepEqual(rows, [
      { user: "a", day: "2026-11-01", jobs: 2, succeeded: 1, marsSeconds: 2.5, bytes: 100, ...noCache },
      {
        user: "b",
        day: "2026-11-01",
        jobs: 2,
        succeeded: 2,
        marsSeconds: 3,
        bytes: 14,
        cacheHits: 1,
        cacheBytes: 7,
        marsSecondsSaved: 3,
      },
    ]);
  });
});

describe("REST API", { timeout: TIMEOUT }, () => {
  it("refuses calls without a valid key (401), but serves its OpenAPI document and docs page", async () => {
    assert.equal((await problem(await call("/v1/jobs"), 401)).code, "API_AUTH");
    const bad = await call("/v1/jobs", {
      headers: { authorization: "Bearer mfk_000000000000_" + "x".repeat(32) },
    });
    assert.equal((await problem(bad, 401)).code, "API_AUTH");
    const doc = (await (await call("/openapi.json")).json()) as {
      openapi: string;
      paths: Record<string, object>;
    };
    assert.equal(doc.openapi, "3.1.0");
    assert.ok(doc.paths["/v1/jobs/{id}/result"]);
    const page = await (await call("/docs")).text();
    assert.match(page, /<th scope="col">method<\/th>/);
  });

  it("submits (202, Location, idempotent on requestId), reads, lists and streams a job's result with Range", async () => {
    const res = await call("/v1/jobs", {
      as: "alice",
      method: "POST",
      body: { request: REQUEST, requestId: "api-one" },
    });
    const { id, state } = await checked(acceptedSchema, res, 202);
    assert.equal(res.headers.get("location"), `/v1/jobs/${id}`);
    assert.equal(state, "queued");
    const again = await call("/v1/jobs", {
      as: "alice",
      method: "POST",
      body: { request: REQUEST, requestId: "api-one" },
    });
    assert.equal(((await again.json()) as { id: string }).id, id, "the same requestId made a second job");

    const rec = await finished(id, "alice");
    assert.equal(rec["state"], "succeeded");
    await checked(jobSchema, await call(`/v1/jobs/${id}`, { as: "alice" }));
    await checked(jobSchema, await call(`/v1/jobs/${id}`, { as: "alice" }));
    assert.equal((rec["environ"] as Record<string, string>)["user_id"], "alice");

    const full = await call(`/v1/jobs/${id}/result`, { as: "alice" });
    assert.equal(full.status, 200);
    const bytes = Buffer.from(await full.arrayBuffer());
    const onDisk = await readFile(join(tf.sharedRoot, (rec["result"] as { target: string }).target));
    assert.deepEqual(bytes, onDisk);
    assert.equal(full.headers.get("content-length"), String(onDisk.length));
    const etag = full.headers.get("etag");
    assert.ok(etag, "no ETag");
    const part = await call(`/v1/jobs/${id}/result`, { as: "alice", headers: { range: "bytes=4-13" } });
    assert.equal(part.status, 206);
    assert.deepEqual(Buffer.from(await part.arrayBuffer()), onDisk.subarray(4, 14));
    const out = await call(`/v1/jobs/${id}/result`, {
      as: "alice",
      headers: { range: `bytes=${onDisk.length + 10}-` },
    });
    assert.equal((await problem(out, 416)).code, "RANGE_INVALID");

    const list = await checked(jobListSchema, await call("/v1/jobs?limit=1", { as: "alice" }));
    assert.deepEqual(
      list.jobs.map((j) => j.id),
      [id],
    );
    const log = await (await call(`/v1/jobs/${id}/logs`, { as: "alice" })).text();
    assert.match(log, /No errors reported/);
  });

  it("submits a split job (#27): one job in the list, its parts in its record; a split it cannot take is a 400", async () => {
    const res = await call("/v1/jobs", {
      as: "alice",
      method: "POST",
      body: { request: { ...REQUEST, param: "2t/msl" }, split: ["param"] },
    });
    const { id } = await checked(acceptedSchema, res, 202);
    const rec = await finished(id, "alice");
    assert.equal(rec["state"], "succeeded");
    const view = await checked(jobSchema, await call(`/v1/jobs/${id}`, { as: "alice" }));
    assert.deepEqual(
      view.parts?.map((p) => [p.index, p.state]),
      [
        [1, "succeeded"],
        [2, "succeeded"],
      ],
    );
    const bytes = Buffer.from(await (await call(`/v1/jobs/${id}/result`, { as: "alice" })).arrayBuffer());
    assert.equal(bytes.length, view.result?.bytes);
    const ids = async (query: string) =>
      (await checked(jobListSchema, await call(`/v1/jobs?limit=500${query}`, { as: "alice" }))).jobs.map(
        (j) => j.id,
      );
    const listed = await ids("");
    assert.ok(listed.includes(id) && !listed.some((j) => j.startsWith(`${id}-p`)), "parts listed as jobs");
    assert.ok((await ids("&parts=true")).includes(`${id}-p1`), "parts=true does not list the parts");
    const bad = await call("/v1/jobs", {
      as: "alice",
      method: "POST",
      body: { request: REQUEST, split: ["levelist"] },
    });
    assert.equal((await problem(bad, 400)).code, "SPLIT_INVALID");
  });

  it("says which field is wrong (400), and hides other users' jobs (404) from user keys, not from admin", async () => {
    const bad = await call("/v1/jobs", {
      as: "alice",
      method: "POST",
      body: { requests: [], environ: { x: 1 } },
    });
    const p = await problem(bad, 400);
    assert.equal(p.code, "MESSAGE_INVALID");
    assert.ok(
      p.errors?.some((e) => e.field === "requests"),
      JSON.stringify(p.errors),
    );
    const marsBad = await call("/v1/jobs", {
      as: "alice",
      method: "POST",
      body: { request: { param: "2t", "bad key": "x" } },
    });
    assert.equal((await problem(marsBad, 400)).code, "MARS_REQUEST_INVALID");

    const res = await call("/v1/jobs", { as: "alice", method: "POST", body: { request: REQUEST } });
    const { id } = (await res.json()) as { id: string };
    assert.equal((await problem(await call(`/v1/jobs/${id}`, { as: "bob" }), 404)).code, "JOB_NOT_FOUND");
    assert.equal(
      (await problem(await call(`/v1/jobs/${id}`, { as: "bob", method: "DELETE" }), 404)).code,
      "JOB_NOT_FOUND",
    );
    assert.equal((await call(`/v1/jobs/${id}`, { as: "admin" })).status, 200);
    const bobs = (await (await call("/v1/jobs", { as: "bob" })).json()) as { jobs: unknown[] };
    assert.equal(bobs.jobs.length, 0);
    const all = (await (await call("/v1/jobs?user=alice", { as: "admin" })).json()) as { jobs: unknown[] };
    assert.ok(all.jobs.length >= 2);
    await finished(id, "alice");
    assert.equal(
      (await problem(await call(`/v1/jobs/${id}`, { as: "alice", method: "DELETE" }), 409)).code,
      "WRONG_STATE",
    );
  });

  it("streams a job's events as SSE until its final state, and resumes after Last-Event-ID", async () => {
    const res = await call("/v1/jobs", { as: "bob", method: "POST", body: { request: REQUEST } });
    const { id } = (await res.json()) as { id: string };
    const read = async (headers: Record<string, string>): Promise<Array<{ id: number; event: string }>> => {
      const sse = await call(`/v1/jobs/${id}/logs`, {
        as: "bob",
        headers: { accept: "text/event-stream", ...headers },
      });
      assert.equal(sse.status, 200);
      assert.match(sse.headers.get("content-type") ?? "", /text\/event-stream/);
      const text = await sse.text(); // the server ends the stream after the final state
      return text
        .split("\n\n")
        .filter((b) => b.includes("event:"))
        .map((b) => ({ id: Number(/^id: (\d+)/m.exec(b)?.[1]), event: /^event: (\w+)/m.exec(b)![1]! }));
    };
    // Stored events (log, progress, state) carry ids; live heartbeats come between them without one.
    const stored = (list: Array<{ id: number; event: string }>) =>
      list.filter((e) => e.event !== "heartbeat");
    const events = stored(await read({}));
    assert.ok(events.some((e) => e.event === "log"));
    assert.equal(events[events.length - 1]!.event, "state");
    assert.deepEqual(
      events.map((e) => e.id),
      events.map((_, i) => i + 1),
    );
    const resumed = stored(await read({ "last-event-id": String(events[2]!.id) }));
    assert.deepEqual(resumed, events.slice(3));
  });

  it("cancels a job (111 dates: still going when the DELETE comes), lists workers and queues; keys are managed with the CLI", async () => {
    const res = await call("/v1/jobs", {
      as: "alice",
      method: "POST",
      body: { request: { ...REQUEST, date: "20240101/to/20240420" } },
    });
    const { id } = (await res.json()) as { id: string };
    const cancel = await call(`/v1/jobs/${id}`, { as: "alice", method: "DELETE" });
    assert.equal(cancel.status, 202);
    assert.equal((await finished(id, "alice"))["state"], "cancelled");
    const workers = await checked(workersSchema, await call("/v1/workers", { as: "bob" }));
    assert.ok(workers.workers.some((w) => w.queue === queue));
    const queues = await checked(queuesSchema, await call("/v1/queues", { as: "bob" }));
    assert.ok(queues.queues.some((q) => q.queue === queue));

    // Accounting: a user sees its own rows; an admin anyone's.
    const mine = await checked(usageSchema, await call("/v1/usage", { as: "alice" }));
    assert.ok(mine.usage.length > 0 && mine.usage.every((u) => u.user === "alice"));
    // A user key cannot widen its view by asking for another user: refused, not answered about itself.
    assert.equal(
      (await problem(await call("/v1/usage?user=bob", { as: "alice" }), 403)).code,
      "API_FORBIDDEN",
    );
    assert.equal(
      (await problem(await call("/v1/jobs?user=bob", { as: "alice" }), 403)).code,
      "API_FORBIDDEN",
    );
    const ownJobs = await checked(jobListSchema, await call("/v1/jobs?user=alice", { as: "alice" }));
    assert.ok(ownJobs.jobs.length > 0 && ownJobs.jobs.every((j) => j.environ["user_id"] === "alice"));
    const sum = (k: "jobs" | "succeeded" | "marsSeconds" | "bytes"): number =>
      mine.usage.reduce((n, u) => n + u[k], 0);
    const today = {
      jobs: sum("jobs"),
      succeeded: sum("succeeded"),
      marsSeconds: sum("marsSeconds"),
      bytes: sum("bytes"),
    };
    assert.ok(
      today.jobs >= 3 && today.succeeded >= 2 && today.marsSeconds > 0 && today.bytes > 0,
      JSON.stringify(today),
    );
    const bobs = await checked(usageSchema, await call("/v1/usage?user=bob", { as: "admin" }));
    assert.ok(bobs.usage.every((u) => u.user === "bob") && bobs.usage.length > 0);
    const badDay = await problem(await call("/v1/usage?from=yesterday", { as: "alice" }), 400);
    assert.ok(badDay.errors?.some((e) => e.field === "from"));

    const env = tf.env({ queue }, "admin");
    const added = await cli(["api", "keys", "add", "--user", "carol", "--json"], env);
    assert.equal(added.code, 0, added.stderr);
    const { token, id: keyId } = JSON.parse(added.stdout) as { token: string; id: string };
    const ok = await fetch(`${base}/v1/jobs`, { headers: { authorization: `Bearer ${token}` } });
    assert.equal(ok.status, 200);
    const listed = await cli(["api", "keys", "list", "--json"], env);
    assert.ok(
      (JSON.parse(listed.stdout) as Array<{ id: string; hash?: string }>).some(
        (k) => k.id === keyId && !k.hash,
      ),
    );
    assert.equal((await cli(["api", "keys", "revoke", keyId], env)).code, 0);
    const gone = await fetch(`${base}/v1/jobs`, { headers: { authorization: `Bearer ${token}` } });
    assert.equal(gone.status, 401);
  });
});
