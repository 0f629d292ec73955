/**
 * Drop-in behaviour: what the real cads-mars-server clients can tell apart, tested with clients
 * written from the protocol description (raw chunked HTTP, raw RFC 6455), not the project's own.
 */
import assert from "node:assert/strict";
import { mkdir, readFile, readdir, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { SIMULATOR_SCRIPT } from "../src/sim/command.js";
import { TestFleet } from "./helpers/fleet.js";
import { assemble, rawHttp } from "./helpers/http-chunked.js";
import { eventually } from "./helpers/proc.js";
import { RawWebSocket } from "./helpers/ws-client.js";

const TEST_TIMEOUT = 60_000;
let tf: TestFleet;
/** Where the recording MARS leaves each run's request file and environment. */
let records: string;
let recordingMars: string;

before(async () => {
  tf = await TestFleet.start();
  records = join(tf.sharedRoot, ".records");
  await mkdir(records);
  recordingMars = join(tf.sharedRoot, ".recording-mars.sh");
  // A MARS that keeps what it was given (request file, environment), then runs the simulator.
  await writeFile(
    recordingMars,
    `#!/bin/sh\nid="$MARS_ENVIRON_REQUEST_ID"\ncp "$1" "${records}/$id.req"\nenv > "${records}/$id.env"\n` +
      `echo "$id" >> "${tf.countFile}"\nexec "${process.execPath}" "${SIMULATOR_SCRIPT}" "$@"\n`,
    { mode: 0o755 },
  );
});
after(async () => {
  await tf.dispose();
});

/** The environ cads-adaptors sends. */
const environ = (requestId: string): Record<string, string | null> => ({
  request_id: requestId,
  user_id: "u-1",
  namespace: "cds:test",
  host: null,
  username: "cds:test:u-1",
});
const SMALL = { param: "2t", date: "20240101", grid: "10/10" };

const post = (port: number, body: unknown, path = "/") =>
  rawHttp(port, { method: "POST", path, body: JSON.stringify(body) });
const json = (res: { chunks: Buffer[] }): Record<string, unknown> =>
  JSON.parse(Buffer.concat(res.chunks).toString()) as Record<string, unknown>;
const text = (res: { chunks: Buffer[] }): string => Buffer.concat(res.chunks).toString();

function start(ws: RawWebSocket, body: Record<string, unknown>): void {
  ws.send(JSON.stringify({ cmd: "start", ...body }));
}

async function envOf(requestId: string): Promise<Map<string, string>> {
  const lines = (await readFile(join(records, `${requestId}.env`), "utf8")).split("\n");
  return new Map(lines.map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]));
}

describe("drop-in: shares mode target mapping", { timeout: TEST_TIMEOUT }, () => {
  it("joins the client's absolute target onto the root, and refuses .. and relative targets", async () => {
    const queue = TestFleet.queue("map");
    await tf.worker({ queue });
    const g = await tf.gateway({ queue });
    await mkdir(join(tf.sharedRoot, "jobs", "j1"), { recursive: true });
    const ws = await RawWebSocket.open(g.sharesPort);
    start(ws, { requests: [SMALL], environ: environ("map-1"), target: "/jobs/j1/data.grib" });
    const finished = await ws.waitFor((f) => f["status"] === "finished", "finished");
    assert.equal(finished["returncode"], 0);
    assert.ok((await stat(join(tf.sharedRoot, "jobs", "j1", "data.grib"))).size > 0);

    // The root's own path, sent as a client path, lands under the root again (as the original does).
    const nested = join(tf.sharedRoot, "jobs", "j1", "data.grib");
    for (const [target, error] of [
      [nested, `Workdir ${join(tf.sharedRoot, tf.sharedRoot, "jobs", "j1")} does not exist`],
      ["/../escape.grib", undefined],
      ["/jobs/../../escape.grib", undefined],
      ["jobs/j1/data.grib", "Target jobs/j1/data.grib is not an absolute path"],
    ] as const) {
      const bad = await RawWebSocket.open(g.sharesPort);
      start(bad, { requests: [SMALL], environ: environ("map-bad"), target });
      const frame = await bad.waitFor((f) => f["status"] === "error", `an error frame for ${target}`);
      if (error) assert.equal(frame["error"], error);
      else assert.match(String(frame["error"]), /outside the shared root/);
      bad.destroy();
    }
    assert.deepEqual(
      (await readdir(join(tf.sharedRoot, ".."))).filter((n) => n === "escape.grib"),
      [],
      "something was written outside the root",
    );
  });
});

describe("drop-in: MARS killed with SIGKILL is final", { timeout: TEST_TIMEOUT }, () => {
  it("pipe: 500 with X-MARS-SIGNAL 9 and no retry at once; EROR + {killed: 9} after data; MARS ran once", async () => {
    const queue = TestFleet.queue("sigkill");
    // Default max retries (5): only the SIGKILL rule keeps MARS from running again.
    await tf.worker({ queue, marsCommand: recordingMars }, { MARS_SIM_KILL_AFTER_BYTES: "1" });
    const g = await tf.gateway({ queue });
    const res = await post(g.pipePort, { request: SMALL, environ: environ("kill-early") });
    assert.equal(res.status, 500);
    assert.equal(res.headers["x-mars-signal"], "9");
    assert.equal(res.headers["x-mars-retry-next-host"], "0");
    assert.equal(res.headers["x-mars-retry-same-host"], "0");
    assert.deepEqual(json(res), { killed: 9, retry_next_host: false, retry_same_host: false });
    assert.equal((await tf.invocations()).get("kill-early"), 1, "a SIGKILLed MARS was run again");

    const late = TestFleet.queue("sigkill-late");
    await tf.worker(
      { queue: late, marsCommand: recordingMars },
      { MARS_SIM_KILL_AFTER_BYTES: "100000", MARS_SIM_BYTES_PER_SEC: String(200 * 1024) },
    );
    const g2 = await tf.gateway({ queue: late });
    const request = { param: "2t", date: "20240101/to/20240105", grid: "1/1" };
    const afterData = await post(g2.pipePort, { request, environ: environ("kill-late") });
    assert.equal(afterData.status, 200);
    const body = assemble(afterData.chunks);
    assert.ok(body.data.length > 0);
    assert.equal(body.ended, false);
    assert.equal(body.rewinds, 0);
    assert.deepEqual(body.error, { killed: 9, retry_next_host: false, retry_same_host: false });
    assert.equal((await tf.invocations()).get("kill-late"), 1);
  });

  it("shares: finished with returncode -9, MARS ran once; SIGTERM still goes to another attempt", async () => {
    const queue = TestFleet.queue("wskill9");
    await tf.worker({ queue, marsCommand: recordingMars }, { MARS_SIM_KILL_AFTER_BYTES: "1" });
    const g = await tf.gateway({ queue });
    const ws = await RawWebSocket.open(g.sharesPort);
    start(ws, { requests: [SMALL], environ: environ("ws-kill9"), target: "/ws-kill9.grib" });
    const finished = await ws.waitFor((f) => f["status"] === "finished", "finished");
    assert.equal(finished["returncode"], -9);
    assert.equal((await tf.invocations()).get("ws-kill9"), 1);

    const term = TestFleet.queue("wskill15");
    const settings = { queue: term, marsCommand: recordingMars, maxRetries: 2 };
    await tf.worker(settings, { MARS_SIM_KILL_AFTER_BYTES: "1", MARS_SIM_KILL_SIGNAL: "SIGTERM" });
    const g2 = await tf.gateway(settings);
    const ws2 = await RawWebSocket.open(g2.sharesPort);
    start(ws2, { requests: [SMALL], environ: environ("ws-kill15"), target: "/ws-kill15.grib" });
    const finished2 = await ws2.waitFor((f) => f["status"] === "finished", "finished");
    assert.equal(finished2["returncode"], -15);
    assert.equal((await tf.invocations()).get("ws-kill15"), 2, "SIGTERM should be retried elsewhere");
  });
});

describe("drop-in: no worker, no job", { timeout: TEST_TIMEOUT }, () => {
  it("refuses at once in the ways the clients read as 'try another server'", async () => {
    const queue = TestFleet.queue("noworker");
    const g = await tf.gateway({ queue });
    const res = await post(g.pipePort, { request: SMALL, environ: environ("nw-1") });
    assert.equal(res.status, 503);
    assert.equal(res.headers["x-mars-retry-same-host"], "0");
    assert.equal(res.headers["x-mars-retry-next-host"], "1");
    assert.equal(json(res)["code"], "NO_WORKER");
    await assert.rejects(RawWebSocket.open(g.sharesPort), /bad handshake: HTTP\/1.1 503/);

    // A worker arrives: served. It stops for good: refused again once its registry entry is stale.
    const w = await tf.worker({ queue });
    const ok = await post(g.pipePort, { request: SMALL, environ: environ("nw-2") });
    assert.equal(ok.status, 200);
    w.kill("SIGKILL");
    await w.exited;
    const fleet = await tf.client({ queue });
    assert.ok(
      await eventually(async () => (await fleet.servingWorkers()).length === 0, 10_000),
      "a worker killed with SIGKILL still counts as serving after its registry TTL",
    );
    const refused = await post(g.pipePort, { request: SMALL, environ: environ("nw-3") });
    assert.equal(refused.status, 503);
  });

  it("shares: heartbeats say idle while the job waits in the queue; started only when MARS starts", async () => {
    const queue = TestFleet.queue("idle");
    const settings = { queue, concurrency: 1 };
    await tf.worker(settings, { MARS_SIM_FIELD_DELAY_MS: "300" });
    const g = await tf.gateway(settings);
    const fleet = await tf.client(settings);
    const blocker = await fleet.submit({ param: "2t", date: "20240101/to/20240106" }, { targetDir: "." });
    const ws = await RawWebSocket.open(g.sharesPort);
    start(ws, { requests: [SMALL], environ: environ("idle-1"), target: "/idle.grib" });
    await ws.waitFor((f) => f["type"] === "heartbeat" && f["job_status"] === "idle", "an idle heartbeat");
    assert.equal(
      ws.frames.some((f) => f["status"] === "started"),
      false,
      "started while the job was still queued",
    );
    await blocker.result();
    await ws.waitFor((f) => f["status"] === "finished", "finished");
    const startedAt = ws.frames.findIndex((f) => f["status"] === "started");
    assert.ok(startedAt > 0, "no started frame");
    assert.ok(
      ws.frames.slice(0, startedAt).every((f) => f["type"] !== "log"),
      "logs before started",
    );
    const firstRunning = ws.frames.slice(startedAt).find((f) => f["type"] === "heartbeat");
    assert.equal(firstRunning?.["job_status"], "running");
    assert.equal(typeof firstRunning?.["pid"], "number", "the first heartbeat after started has no pid");
    assert.ok(Number(firstRunning?.["pid"]) > 0);
  });
});

describe("drop-in: pipe-mode server URLs with a path", { timeout: TEST_TIMEOUT }, () => {
  it("accepts any path for HEAD and POST, and finds the log by the last path segment", async () => {
    const queue = TestFleet.queue("paths");
    await tf.worker({ queue });
    const g = await tf.gateway({ queue });
    for (const base of ["/", "/mars", "/mars/"]) {
      assert.equal((await rawHttp(g.pipePort, { method: "HEAD", path: base })).status, 204);
      const res = await post(g.pipePort, { request: SMALL, environ: environ(`p${base.length}`) }, base);
      assert.equal(res.status, 200, `POST ${base}`);
      assert.ok(assemble(res.chunks).ended);
      const uid = res.headers["x-mars-uid"]!;
      // The client fetches `url + "/" + uid`: `//uid` for `http://host:9000/`, `/mars/uid` for `.../mars`.
      const logPath = `${base.replace(/\/$/, "")}/${uid}`.replace(/^(?!\/)/, "/");
      for (const path of [logPath, `/${logPath}`]) {
        const log = await rawHttp(g.pipePort, { method: "GET", path });
        assert.equal(log.status, 200, `GET ${path}`);
        assert.match(text(log), /No errors reported/);
      }
      assert.equal((await rawHttp(g.pipePort, { method: "DELETE", path: `/${logPath}` })).status, 204);
      assert.equal((await rawHttp(g.pipePort, { method: "GET", path: logPath })).status, 404);
    }
  });
});

describe("drop-in: values are quoted, not refused", { timeout: TEST_TIMEOUT }, () => {
  it("passes , = ' \" and \\ to MARS as one quoted value each; refuses only what cannot be quoted, in the log", async () => {
    const queue = TestFleet.queue("quote");
    await tf.worker({ queue, marsCommand: recordingMars });
    const g = await tf.gateway({ queue });
    const note = `it's, target=x \\ ok`;
    const res = await post(g.pipePort, {
      request: { ...SMALL, note, title: 'say "hi"' },
      environ: environ("q-1"),
    });
    assert.equal(res.status, 200);
    assert.ok(assemble(res.chunks).ended);
    const request = await readFile(join(records, "q-1.req"), "utf8");
    assert.ok(request.includes(`note="${note}"`), request);
    assert.ok(request.includes(`title='say "hi"'`), request);
    assert.equal(request.match(/target=/g)?.length, 2, `one target key and the note's text: ${request}`);

    // Both quote kinds: no quoting holds it. The pipe client reads the reason from the log only.
    const refused = await post(g.pipePort, {
      request: { ...SMALL, note: `it's "x"` },
      environ: environ("q-2"),
    });
    assert.equal(refused.status, 400);
    assert.equal(json(refused)["code"], "MARS_REQUEST_INVALID");
    const uid = refused.headers["x-mars-uid"]!;
    assert.match(uid, /^[a-f0-9-]{36}$/);
    const log = await rawHttp(g.pipePort, { method: "GET", path: `/${uid}` });
    assert.equal(log.status, 200);
    assert.match(text(log), /mars - ERROR .*"note".*both ' and "/);

    // A body that is not JSON at all: the same, with the uid the client needs.
    const garbage = await rawHttp(g.pipePort, { method: "POST", path: "/", body: "{nope" });
    assert.equal(garbage.status, 400);
    const garbageLog = await rawHttp(g.pipePort, {
      method: "GET",
      path: `/${garbage.headers["x-mars-uid"]!}`,
    });
    assert.match(text(garbageLog), /mars - ERROR .*invalid request body/);

    // Shares mode: the refusal is the error frame.
    const ws = await RawWebSocket.open(g.sharesPort);
    start(ws, { requests: { ...SMALL, note: `a'b"c` }, environ: environ("q-3"), target: "/q3.grib" });
    const frame = await ws.waitFor((f) => f["status"] === "error", "an error frame");
    assert.match(String(frame["error"]), /"note".*both ' and "/);
  });
});

describe("drop-in: MARS environment", { timeout: TEST_TIMEOUT }, () => {
  it("shares jobs run with MARS_AUTO_SPLIT_BY_DATES=1; pipe jobs without a request id get the uid", async () => {
    const queue = TestFleet.queue("env");
    await tf.worker({ queue, marsCommand: recordingMars });
    const g = await tf.gateway({ queue });
    const ws = await RawWebSocket.open(g.sharesPort);
    start(ws, { requests: [SMALL], environ: environ("env-ws"), target: "/env.grib" });
    await ws.waitFor((f) => f["status"] === "finished", "finished");
    const wsEnv = await envOf("env-ws");
    assert.equal(wsEnv.get("MARS_AUTO_SPLIT_BY_DATES"), "1");
    assert.equal(wsEnv.get("MARS_ENVIRON_USER_ID"), "u-1");

    const res = await post(g.pipePort, { request: SMALL, environ: { user_id: "u-2" } });
    assert.equal(res.status, 200);
    const uid = res.headers["x-mars-uid"]!;
    const pipeEnv = await envOf(uid);
    assert.equal(pipeEnv.get("MARS_ENVIRON_REQUEST_ID"), uid);
    assert.equal(pipeEnv.get("MARS_AUTO_SPLIT_BY_DATES"), undefined);

    const off = TestFleet.queue("env-off");
    const settings = {
      queue: off,
      marsCommand: recordingMars,
      gatewaySharesEnv: "",
      gatewayPipeRequestId: 0,
    };
    await tf.worker(settings);
    const g2 = await tf.gateway(settings);
    const ws2 = await RawWebSocket.open(g2.sharesPort);
    start(ws2, { requests: [SMALL], environ: environ("env-ws-off"), target: "/env-off.grib" });
    await ws2.waitFor((f) => f["status"] === "finished", "finished");
    assert.equal((await envOf("env-ws-off")).get("MARS_AUTO_SPLIT_BY_DATES"), undefined);
    const res2 = await post(g2.pipePort, { request: SMALL, environ: { user_id: "u-3" } });
    assert.equal(res2.status, 200);
    assert.equal((await tf.invocations()).get(res2.headers["x-mars-uid"]!), undefined);
  });
});

describe("drop-in: shares-mode protocol details", { timeout: TEST_TIMEOUT }, () => {
  it("reports the environ's request_id as job_id and accepts one request object", async () => {
    const queue = TestFleet.queue("jobid");
    await tf.worker({ queue });
    const g = await tf.gateway({ queue });
    const ws = await RawWebSocket.open(g.sharesPort);
    start(ws, { requests: SMALL, environ: environ("c3cc4ee4-88b4"), target: "/jobid.grib" });
    const finished = await ws.waitFor((f) => f["status"] === "finished", "finished");
    assert.equal(finished["returncode"], 0);
    const started = await ws.waitFor((f) => f["status"] === "started", "started");
    assert.equal(started["job_id"], "c3cc4ee4-88b4");
    assert.equal(finished["job_id"], "c3cc4ee4-88b4");
    assert.ok(ws.frames.filter((f) => f["type"] === "heartbeat" && f["job_status"] === "running").length > 0);
  });

  it("answers bad commands with the original's texts and keeps the connection open for the next", async () => {
    const queue = TestFleet.queue("texts");
    await tf.worker({ queue });
    const g = await tf.gateway({ queue });
    const ws = await RawWebSocket.open(g.sharesPort);
    const { request_id: _omitted, ...noRequestId } = environ("x");
    const cases: Array<[string, string]> = [
      ["{not json", "Invalid JSON"],
      [JSON.stringify({ cmd: "kill" }), "No running job"],
      [
        JSON.stringify({ cmd: "start", requests: [SMALL], environ: environ("t") }),
        "Missing 'target' field in message",
      ],
      [
        JSON.stringify({ cmd: "start", environ: environ("t"), target: "/t.grib" }),
        "Missing 'requests' field in message",
      ],
      [
        JSON.stringify({ cmd: "start", requests: [SMALL], target: "/t.grib" }),
        "Missing 'environ' field in message",
      ],
      [
        JSON.stringify({ cmd: "start", requests: [SMALL], environ: noRequestId, target: "/t.grib" }),
        "Missing 'request_id' in environ",
      ],
      [
        JSON.stringify({ cmd: "start", requests: [SMALL], environ: environ("t"), target: "/no/such/t.grib" }),
        `Workdir ${join(tf.sharedRoot, "no", "such")} does not exist`,
      ],
    ];
    for (const field of ["user_id", "namespace", "host", "username"]) {
      const partial: Record<string, unknown> = { ...environ("t") };
      delete partial[field];
      cases.push([
        JSON.stringify({ cmd: "start", requests: [SMALL], environ: partial, target: "/t.grib" }),
        `Missing '${field}' in environ`,
      ]);
    }
    for (const [i, [message, expected]] of cases.entries()) {
      ws.send(message);
      await ws.waitFor(() => ws.frames.length > i, `the answer to ${message}`);
      const frame = ws.frames[i]!;
      assert.equal(frame["status"], "error");
      assert.equal(frame["error"], expected);
    }
    // Still open: a good command now runs.
    start(ws, { requests: [SMALL], environ: environ("after-errors"), target: "/after.grib" });
    const finished = await ws.waitFor((f) => f["status"] === "finished", "finished");
    assert.equal(finished["returncode"], 0);
  });

  it("kill: killed, then finished with returncode -15", async () => {
    const queue = TestFleet.queue("killfin");
    await tf.worker({ queue }, { MARS_SIM_FIELD_DELAY_MS: "400" });
    const g = await tf.gateway({ queue });
    const ws = await RawWebSocket.open(g.sharesPort);
    start(ws, {
      requests: [{ ...SMALL, date: "20240101/to/20240120" }],
      environ: environ("kf"),
      target: "/kf.grib",
    });
    await ws.waitFor((f) => f["type"] === "log", "a log line");
    ws.send(JSON.stringify({ cmd: "kill" }));
    const finished = await ws.waitFor((f) => f["status"] === "finished", "finished");
    const states = ws.frames.filter((f) => f["type"] === "state").map((f) => f["status"]);
    assert.deepEqual(states, ["started", "killed", "finished"]);
    assert.equal(finished["returncode"], -15);
    assert.equal(finished["job_id"], "kf");
  });
});

describe("drop-in: log shape as on a pty", { timeout: TEST_TIMEOUT }, () => {
  it("a carriage return ends a line, and stdout and stderr lines keep their order", async () => {
    const queue = TestFleet.queue("pty");
    const noisy = join(tf.sharedRoot, ".noisy-mars.sh");
    await writeFile(
      noisy,
      `#!/bin/sh\nprintf 'progress 10%%\\rprogress 20%%\\r'\ni=0\nwhile [ $i -lt 40 ]; do echo "out $i"; echo "err $i" >&2; i=$((i+1)); done\n` +
        `exec "${process.execPath}" "${SIMULATOR_SCRIPT}" "$@"\n`,
      { mode: 0o755 },
    );
    await tf.worker({ queue, marsCommand: noisy });
    const g = await tf.gateway({ queue });
    const ws = await RawWebSocket.open(g.sharesPort);
    start(ws, { requests: [SMALL], environ: environ("pty"), target: "/pty.grib" });
    await ws.waitFor((f) => f["status"] === "finished", "finished");
    const lines = ws.frames.filter((f) => f["type"] === "log").map((f) => String(f["line"]));
    const expected = ["progress 10%", "progress 20%"];
    for (let i = 0; i < 40; i++) expected.push(`out ${i}`, `err ${i}`);
    assert.deepEqual(lines.slice(0, expected.length), expected);
  });
});
