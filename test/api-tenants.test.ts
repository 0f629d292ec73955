/**
 * HTTP tenants: two user keys and an admin key. A user key writes only under its own prefix, sees
 * only its own jobs and counts, and learns nothing about another user's jobs or request ids; every
 * refusal is a problem+json with its own code and no server path in it.
 */
import assert from "node:assert/strict";
import { mkdir, readFile, stat } from "node:fs/promises";
import { connect as tcpConnect } from "node:net";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { ApiKeys } from "../src/api/keys.js";
import { startApi, type ApiServer } from "../src/api/server.js";
import { OPEN_FLEET } from "../src/broker/signing.js";
import { ApiClient, liveOverview } from "./helpers/api.js";
import { TestFleet } from "./helpers/fleet.js";
import { eventually } from "./helpers/proc.js";

const REQUEST = { param: "2t", date: "20240101", grid: "10/10" };
const queue = TestFleet.queue("tenants");
let tf: TestFleet;
let api: ApiServer;
let client: ApiClient;
/** Every answer body this test read, to look for server paths in at the end. */
const seen: string[] = [];

before(async () => {
  tf = await TestFleet.start();
  await tf.worker({ queue, concurrency: 2 }, { MARS_SIM_FIELD_DELAY_MS: "20" });
  api = await startApi({ config: tf.config({ queue }), port: 0, host: "127.0.0.1" });
  const nc = await tf.connectAs("admin");
  try {
    const keys = await ApiKeys.open(nc, OPEN_FLEET);
    const tokens: Record<string, string> = {};
    for (const [name, role] of [
      ["alice", "user"],
      ["bob", "user"],
      ["ops", "admin"],
    ] as const)
      tokens[name] = (await keys.add(name, role)).token;
    client = new ApiClient(`http://127.0.0.1:${api.port}`, tokens);
  } finally {
    await nc.close();
  }
});
after(async () => {
  await tf.dispose();
});

/** A call whose answer body is kept for the path check. */
async function call(path: string, opts: Parameters<ApiClient["call"]>[1] = {}): Promise<Response> {
  const res = await client.call(path, opts);
  seen.push(await res.clone().text());
  return res;
}

async function submit(as: string, body: Record<string, unknown>): Promise<string> {
  const res = await call("/v1/jobs", { as, method: "POST", body: { request: REQUEST, ...body } });
  assert.equal(res.status, 202, await res.clone().text());
  return ((await res.json()) as { id: string }).id;
}

/** A raw HTTP exchange (for what fetch will not send): the status line and the headers. */
function raw(request: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tcpConnect(api.port, "127.0.0.1", () => socket.end(request));
    let got = "";
    socket.on("data", (d) => (got += d.toString("latin1")));
    socket.on("end", () => resolve(got));
    socket.on("error", reject);
    socket.setTimeout(10_000, () => socket.destroy(new Error("no answer within 10 s")));
  });
}

describe("REST API: tenants", { timeout: 120_000 }, () => {
  it("writes a user's results under its own prefix only; an admin anywhere in the root", async () => {
    const mine = await submit("alice", { target: "era5/2t.grib" });
    const rec = await client.finished(mine, "alice");
    assert.equal((rec["result"] as { target: string }).target, "users/alice/era5/2t.grib");
    // MARS echoes its target (a part file under the root): the log shows it relative to the root.
    const log = await (await call(`/v1/jobs/${mine}/logs`, { as: "alice" })).text();
    assert.match(log, /TARGET\s+= "users\/alice\/era5\/\.2t\.grib\./);
    const path = join(tf.sharedRoot, "users/alice/era5/2t.grib");
    const before = await stat(path);
    const bytes = await readFile(path);

    // Bob aims at Alice's file every way a path can: refused, or kept inside his own prefix.
    for (const target of [
      "../alice/era5/2t.grib",
      "../../users/alice/era5/2t.grib",
      "/../users/alice/era5/2t.grib",
    ]) {
      const res = await call("/v1/jobs", { as: "bob", method: "POST", body: { request: REQUEST, target } });
      assert.equal((await client.problem(res, 400)).code, "TARGET_INVALID", target);
    }
    const inside = await submit("bob", { target: "/users/alice/era5/2t.grib" });
    const bobs = await client.finished(inside, "bob");
    assert.equal((bobs["result"] as { target: string }).target, "users/bob/users/alice/era5/2t.grib");
    const after = await stat(path);
    assert.equal(after.mtimeMs, before.mtimeMs, "alice's result was rewritten");
    assert.deepEqual(await readFile(path), bytes);

    const admins = await submit("ops", { target: "shared/climatology.grib" });
    assert.equal(
      ((await client.finished(admins, "ops"))["result"] as { target: string }).target,
      "shared/climatology.grib",
    );
  });

  it("refuses a target that is a directory at submit", async () => {
    const slash = await call("/v1/jobs", {
      as: "alice",
      method: "POST",
      body: { request: REQUEST, target: "era5/" },
    });
    assert.equal((await client.problem(slash, 400)).code, "TARGET_INVALID");
    await mkdir(join(tf.sharedRoot, "users/alice/adir"), { recursive: true });
    const dir = await call("/v1/jobs", {
      as: "alice",
      method: "POST",
      body: { request: REQUEST, target: "adir" },
    });
    assert.equal((await client.problem(dir, 400)).code, "TARGET_INVALID");
  });

  it("answers another user's job exactly as a missing one, on every route", async () => {
    const alices = await submit("alice", {});
    await client.finished(alices, "alice");
    const missing = "0f0f0f0f-0000-4000-8000-000000000000";
    for (const [method, suffix] of [
      ["GET", ""],
      ["DELETE", ""],
      ["GET", "/logs"],
      ["GET", "/result"],
      ["POST", "/retry"],
    ] as const) {
      const theirs = await call(`/v1/jobs/${alices}${suffix}`, { as: "bob", method });
      const none = await call(`/v1/jobs/${missing}${suffix}`, { as: "bob", method });
      assert.equal(theirs.status, 404, `${method} ${suffix}`);
      assert.equal(none.status, 404);
      const a = (await theirs.text()).replaceAll(alices, "<id>");
      const b = (await none.text()).replaceAll(missing, "<id>");
      assert.equal(a, b, `${method} ${suffix}: another user's job answers unlike a missing one`);
    }
  });

  it("retries an ended job of the key's own as a new job linked to it, and refuses one still running", async () => {
    const first = await submit("alice", {});
    await client.finished(first, "alice");
    const res = await call(`/v1/jobs/${first}/retry`, { as: "alice", method: "POST" });
    assert.equal(res.status, 202);
    const again = (await res.json()) as { id: string; retryOf: string };
    assert.notEqual(again.id, first);
    assert.equal(again.retryOf, first);
    await client.finished(again.id, "alice");
    const rec = (await (await call(`/v1/jobs/${again.id}`, { as: "alice" })).json()) as {
      retryOf: string;
      requestText: string;
      target: string;
      environ: Record<string, string>;
    };
    const orig = (await (await call(`/v1/jobs/${first}`, { as: "alice" })).json()) as typeof rec;
    assert.equal(rec.retryOf, first);
    assert.equal(rec.requestText, orig.requestText);
    assert.notEqual(rec.target, orig.target, "the retry wrote over the first job's result");
    assert.equal(rec.environ["user_id"], "alice");
    const running = await submit("alice", { request: { ...REQUEST, date: "20240101/to/20240301" } });
    const early = await call(`/v1/jobs/${running}/retry`, { as: "alice", method: "POST" });
    assert.equal(early.status, 409);
    assert.equal(((await early.json()) as { code: string }).code, "WRONG_STATE");
    await call(`/v1/jobs/${running}`, { as: "alice", method: "DELETE" });
  });

  it("lists jobs by queue, dataset, error code, id or request id and submitted days, either order, and failures by code", async () => {
    const era5 = await submit("alice", {
      request: { ...REQUEST, dataset: "era5" },
      requestId: "filter-era5",
    });
    const cerra = await submit("alice", { request: { ...REQUEST, dataset: "cerra" } });
    const bad = await submit("alice", { request: { param: "nosuchparam", date: "20240101" } });
    for (const id of [era5, cerra, bad]) await client.finished(id, "alice");
    const ids = async (query: string, as = "alice"): Promise<string[]> => {
      const res = await call(`/v1/jobs?limit=500&${query}`, { as });
      assert.equal(res.status, 200, query);
      return ((await res.json()) as { jobs: Array<{ id: string }> }).jobs.map((j) => j.id);
    };
    assert.deepEqual(await ids("dataset=ERA5"), [era5]);
    assert.ok((await ids("dataset=cerra")).includes(cerra));
    assert.ok(!(await ids("dataset=cerra")).includes(era5));
    const failed = await ids("code=MARS_RUNTIME_ERROR");
    assert.ok(failed.includes(bad) && !failed.includes(era5));
    assert.deepEqual(await ids(`q=${bad.slice(2, 12)}`), [bad]);
    // The requestId the user gave it finds the job too (another user's same one finds theirs).
    assert.deepEqual(await ids("q=filter-era5"), [era5]);
    assert.deepEqual(await ids("q=filter-era5", "bob"), []);
    assert.deepEqual(await ids(`queue=${queue}&q=${era5}`), [era5]);
    assert.deepEqual(await ids("queue=nosuchqueue"), []);
    const today = new Date().toISOString().slice(0, 10);
    assert.ok((await ids(`from=${today}&to=${today}`)).includes(era5));
    assert.deepEqual(await ids("from=2099-01-01"), []);
    // Oldest first is the newest-first list reversed; a cursor keeps to its order.
    const newest = await ids("");
    assert.deepEqual(await ids("order=oldest"), [...newest].reverse());
    const first = (await (await call("/v1/jobs?order=oldest&limit=2", { as: "alice" })).json()) as {
      jobs: Array<{ id: string }>;
      next: string;
    };
    const second = (await (
      await call(`/v1/jobs?order=oldest&limit=2&cursor=${first.next}`, { as: "alice" })
    ).json()) as { jobs: Array<{ id: string }> };
    assert.deepEqual(
      [...first.jobs, ...second.jobs].map((j) => j.id),
      [...newest].reverse().slice(0, 4),
    );
    const badDay = await call("/v1/jobs?from=2024-02-30", { as: "alice" });
    assert.equal(badDay.status, 400);
    assert.equal(((await badDay.json()) as { code: string }).code, "MESSAGE_INVALID");
    // Failures by error code, scoped as the lists are.
    type Failures = { failures: Array<{ code: string; count: number; jobs: string[] }> };
    const mine = (await (await call("/v1/failures", { as: "alice" })).json()) as Failures;
    const runtime = mine.failures.find((f) => f.code === "MARS_RUNTIME_ERROR");
    assert.ok(runtime && runtime.count >= 1 && runtime.jobs.includes(bad), JSON.stringify(mine));
    const bobs = (await (await call("/v1/failures", { as: "bob" })).json()) as Failures;
    assert.ok(
      bobs.failures.every((f) => !f.jobs.includes(bad)),
      "bob sees alice's failure",
    );
    assert.equal((await call("/v1/failures?user=alice", { as: "bob" })).status, 403);
  });

  it("shows QoS as the key may see it, and dead letters to admin keys only", async () => {
    const running = await submit("alice", { request: { ...REQUEST, date: "20240101/to/20240301" } });
    type Qos = { rules: unknown; lanes: Array<{ lane: string }>; waiting: unknown[] };
    const lanesOf = async (as: string): Promise<string[]> => {
      const res = await call("/v1/qos", { as });
      assert.equal(res.status, 200);
      return ((await res.json()) as Qos).lanes.map((l) => l.lane);
    };
    assert.ok(
      await eventually(async () => (await lanesOf("ops")).includes("alice"), 10_000),
      "the admin never saw alice's lane",
    );
    assert.ok(!(await lanesOf("bob")).includes("alice"), "bob sees alice's lane");
    assert.equal(((await (await call("/v1/qos", { as: "bob" })).json()) as Qos).rules, null);
    await call(`/v1/jobs/${running}`, { as: "alice", method: "DELETE" });
    // Something that is no job reaches the queue: the worker dead-letters it.
    await tf.publishRaw(queue, new TextEncoder().encode("not a job"));
    type Dead = { dead: Array<{ reason: string; queue: string; payloadBase64?: string }> };
    let dead: Dead = { dead: [] };
    assert.ok(
      await eventually(async () => {
        dead = (await (await call("/v1/dead", { as: "ops" })).json()) as Dead;
        return dead.dead.some((d) => d.reason === "invalid job message");
      }, 10_000),
      `no dead letter listed: ${JSON.stringify(dead)}`,
    );
    assert.ok(
      dead.dead.every((d) => d.payloadBase64 === undefined),
      "a dead letter's payload was listed",
    );
    assert.equal(dead.dead.find((d) => d.reason === "invalid job message")?.queue, queue);
    // The charts' history: the queues' counts (everyone's jobs) for admin keys only.
    type History = { workers: Record<string, unknown[]>; queues?: Record<string, unknown[]> };
    const opsHistory = (await (await call("/v1/history", { as: "ops" })).json()) as History;
    const bobHistory = (await (await call("/v1/history", { as: "bob" })).json()) as History;
    assert.ok(opsHistory.queues !== undefined, "the admin's history has no queues");
    assert.equal(bobHistory.queues, undefined, "a user key sees the queues' history");
    assert.ok(bobHistory.workers !== undefined);
    const bobs = await call("/v1/dead", { as: "bob" });
    assert.equal(bobs.status, 403);
    assert.equal(((await bobs.json()) as { code: string }).code, "API_FORBIDDEN");
  });

  it("scopes request ids per user: the same one makes two jobs, and neither reveals the other", async () => {
    const a = await submit("alice", { requestId: "nightly-run" });
    const b = await submit("bob", { requestId: "nightly-run" });
    assert.notEqual(a, b);
    assert.equal(await submit("alice", { requestId: "nightly-run" }), a, "not idempotent for alice");
    const theirs = await call(`/v1/jobs/${a}`, { as: "bob" });
    assert.equal(theirs.status, 404);
  });

  it("shows a user key its own jobs and counts only, in workers, queues, usage and lists", async () => {
    // Bob's own jobs of the earlier tests have ended: any running count bob sees below is alice's.
    const bobBusy = async (): Promise<number> => {
      const res = await call("/v1/jobs?limit=500", { as: "bob" });
      const jobs = ((await res.json()) as { jobs: Array<{ state: string }> }).jobs;
      return jobs.filter((j) => ["queued", "running", "retrying"].includes(j.state)).length;
    };
    const deadline = Date.now() + 30_000;
    while ((await bobBusy()) > 0) {
      assert.ok(Date.now() < deadline, "bob's earlier jobs did not end within 30 s");
      await new Promise((r) => setTimeout(r, 100));
    }
    const running = await submit("alice", { request: { ...REQUEST, date: "20240101/to/20240301" } });
    let seenRunning = false;
    for (let i = 0; i < 100 && !seenRunning; i++) {
      const w = (await (await call("/v1/workers", { as: "ops" })).json()) as {
        workers: Array<{ running: string[] }>;
      };
      seenRunning = w.workers.some((x) => x.running.includes(running));
      if (!seenRunning) await new Promise((r) => setTimeout(r, 50));
    }
    assert.ok(seenRunning, "the admin never saw alice's job running");
    const bobWorkers = (await (await call("/v1/workers", { as: "bob" })).json()) as {
      workers: Array<{ running: string[] }>;
    };
    assert.ok(bobWorkers.workers.length > 0);
    assert.ok(
      bobWorkers.workers.every((w) => !w.running.includes(running)),
      "bob sees alice's running job",
    );
    const bobQueues = (await (await call("/v1/queues", { as: "bob" })).json()) as {
      queues: Array<{ queue: string; running: number; lanes: unknown[] }>;
    };
    const q = bobQueues.queues.find((x) => x.queue === queue)!;
    assert.equal(q.running, 0, "bob counts alice's running job");
    assert.deepEqual(q.lanes, []);
    // The live view is scoped the same way: the admin's shows alice's job running (with its
    // progress once it has some), bob's shows none of it.
    const ops = await liveOverview(client, "ops", (o) =>
      o.jobs.some((j) => j.id === running && j.state === "running"),
    );
    assert.ok(ops.workers.some((w) => w.running.includes(running)));
    const bobLive = await liveOverview(client, "bob");
    assert.ok(
      bobLive.jobs.length > 0,
      "bob's live view lists none of his own jobs: the check proves nothing",
    );
    assert.ok(
      bobLive.jobs.every((j) => j.environ["user_id"] === "bob"),
      "bob's live view lists another user's job",
    );
    assert.ok(
      bobLive.workers.every((w) => !w.running.includes(running)),
      "bob sees alice's running job live",
    );
    assert.equal(bobLive.progress[running], undefined, "bob sees alice's job's progress");
    assert.equal(bobLive.queues.find((x) => x.queue === queue)?.running, 0);
    await call(`/v1/jobs/${running}`, { as: "alice", method: "DELETE" });

    const bobJobs = (await (await call("/v1/jobs?limit=500", { as: "bob" })).json()) as {
      jobs: Array<{ environ: Record<string, string> }>;
    };
    assert.ok(bobJobs.jobs.length > 0 && bobJobs.jobs.every((j) => j.environ["user_id"] === "bob"));
    const forbidden = await call("/v1/jobs?user=alice", { as: "bob" });
    assert.equal((await client.problem(forbidden, 403)).code, "API_FORBIDDEN");
    assert.equal(
      (await client.problem(await call("/v1/usage?user=alice", { as: "bob" }), 403)).code,
      "API_FORBIDDEN",
    );
    const usage = (await (await call("/v1/usage", { as: "bob" })).json()) as {
      usage: Array<{ user: string }>;
    };
    assert.ok(usage.usage.every((u) => u.user === "bob"));
  });

  it("keeps a cursor's place when the job it points at changes state", async () => {
    const ids = [];
    for (let i = 0; i < 3; i++)
      ids.push(await submit("alice", { request: { ...REQUEST, date: "20240101/to/20240110" } }));
    const first = (await (await call("/v1/jobs?limit=1", { as: "alice" })).json()) as {
      jobs: Array<{ id: string }>;
      next: string;
    };
    assert.equal(first.jobs[0]!.id, ids[2]);
    await client.finished(ids[2]!, "alice"); // the job under the cursor changes state
    const second = (await (await call(`/v1/jobs?limit=1&cursor=${first.next}`, { as: "alice" })).json()) as {
      jobs: Array<{ id: string }>;
    };
    assert.equal(second.jobs[0]!.id, ids[1]);
    const bad = await call("/v1/jobs?cursor=not-a-cursor", { as: "alice" });
    assert.equal((await client.problem(bad, 400)).code, "MESSAGE_INVALID");
  });

  it("answers odd ids, bad dates, bodies and headers with problems that have their own codes", async () => {
    for (const id of ["..%2F..", "%20", "a*b", ">", "%00", "a.b"]) {
      const res = await call(`/v1/jobs/${id}`, { as: "alice" });
      const body = await client.problem(res, 400);
      assert.equal(body.code, "MESSAGE_INVALID", id);
      assert.doesNotMatch(body.detail, /\$KV|mars-jobs|KV_/, id);
    }
    for (const q of ["from=2026-13-45", "to=2026-02-30", "from=2026-02-02&to=2026-02-01"]) {
      const res = await call(`/v1/usage?${q}`, { as: "alice" });
      assert.equal((await client.problem(res, 400)).code, "MESSAGE_INVALID", q);
    }
    const big = await call("/v1/jobs", {
      as: "alice",
      method: "POST",
      body: { request: { ...REQUEST, note: "x".repeat(2 * 1024 * 1024) } },
    });
    assert.equal((await client.problem(big, 413)).code, "REQUEST_TOO_LARGE");
    // Under the body limit, over what one job may carry.
    const heavy = await call("/v1/jobs", {
      as: "alice",
      method: "POST",
      body: { request: { ...REQUEST, note: "x".repeat(900 * 1024) } },
    });
    assert.equal((await client.problem(heavy, 413)).code, "REQUEST_TOO_LARGE");
    const text = await call("/v1/jobs", {
      as: "alice",
      method: "POST",
      body: JSON.stringify({ request: REQUEST }),
      headers: { "content-type": "text/plain" },
    });
    assert.equal((await client.problem(text, 415)).code, "MEDIA_TYPE_UNSUPPORTED");

    const lower = await fetch(`${client.base}/v1/jobs`, {
      headers: { authorization: `bearer ${client.tokens["alice"]}` },
    });
    assert.equal(lower.status, 200, "a lower-case bearer scheme was refused");

    const url = await raw(
      `GET /v1/jobs/${"a".repeat(5_000)} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`,
    );
    assert.match(url, /^HTTP\/1\.1 414 /);
    assert.match(url, /content-type: application\/problem\+json/i);
    const longUrl = await raw(
      `GET /v1/jobs/${"a".repeat(20_000)} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`,
    );
    assert.match(longUrl, /^HTTP\/1\.1 431 /);
    assert.match(longUrl, /content-type: application\/problem\+json/i);
    const hugeHeader = await raw(
      `GET /v1/jobs HTTP/1.1\r\nHost: x\r\nX-Big: ${"b".repeat(20_000)}\r\nConnection: close\r\n\r\n`,
    );
    assert.match(hugeHeader, /^HTTP\/1\.1 431 /);
    assert.match(hugeHeader, /content-type: application\/problem\+json/i);
  });

  it("serves results as private, and a 416 with its Content-Range", async () => {
    const id = await submit("alice", {});
    const rec = await client.finished(id, "alice");
    const res = await call(`/v1/jobs/${id}/result`, { as: "alice" });
    assert.equal(res.status, 200);
    assert.match(res.headers.get("cache-control") ?? "", /private/);
    assert.doesNotMatch(res.headers.get("cache-control") ?? "", /public/);
    const bytes = (rec["result"] as { bytes: number }).bytes;
    const out = await call(`/v1/jobs/${id}/result`, {
      as: "alice",
      headers: { range: `bytes=${bytes + 5}-` },
    });
    assert.equal(out.status, 416);
    assert.equal(out.headers.get("content-range"), `bytes */${bytes}`);
  });

  it("closes once however often asked, and as an async disposable", async () => {
    await Promise.all([api.close(), api[Symbol.asyncDispose](), api.close()]);
    await api.close();
    await assert.rejects(fetch(`${client.base}/`), "still listening after close");
    {
      await using again = await startApi({ config: tf.config({ queue }), port: 0, host: "127.0.0.1" });
      assert.equal((await fetch(`http://127.0.0.1:${again.port}/openapi.json`)).status, 200);
    }
  });

  it("shows no server path in any answer", () => {
    assert.ok(seen.length > 30, "too few answers were looked at");
    for (const body of seen)
      assert.ok(!body.includes(tf.sharedRoot), `a server path in: ${body.slice(0, 300)}`);
  });
});
