import assert from "node:assert/strict";
import { mkdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { executeMarsLocally } from "../src/client/execute.js";
import type { Gateway } from "../src/gateway/gateway.js";
import { gribLs } from "./helpers/grib.js";
import { TestFleet } from "./helpers/fleet.js";
import { assemble, rawHttp } from "./helpers/http-chunked.js";
import { eventually, helperPids, processAlive } from "./helpers/proc.js";
import { RawWebSocket } from "./helpers/ws-client.js";

let tf: TestFleet;
before(async () => {
  tf = await TestFleet.start();
});
after(async () => {
  await tf.dispose();
});

const gateway = (settings: Record<string, string | number>): Promise<Gateway> => tf.gateway(settings);

async function expected(request: object | object[], name: string): Promise<Buffer> {
  const r = await executeMarsLocally(request as never, {
    targetDir: join(tf.sharedRoot, "expected"),
    targetFname: name,
  });
  return readFile(r.target);
}

/** What cads-adaptors sends as the environ. */
const ENVIRON = { request_id: "req-1", user_id: "u-1", namespace: "ns", host: "h", username: "ns:u" };

const post = (port: number, body: unknown, onChunk?: Parameters<typeof rawHttp>[1]["onChunk"]) =>
  rawHttp(port, { method: "POST", path: "/", body: JSON.stringify(body), ...(onChunk && { onChunk }) });

describe("gateway: pipe mode (HTTP)", () => {
  it("answers the ping and streams a byte-exact result ending with ENDR", async () => {
    const queue = TestFleet.queue("pipe");
    await tf.worker({ queue, marsCommand: tf.countingMars });
    const g = await gateway({ queue });
    assert.equal((await rawHttp(g.pipePort, { method: "HEAD", path: "/" })).status, 204);
    const request = { param: "2t/msl", date: "20240101/to/20240102", grid: "5/5" };
    const res = await post(g.pipePort, { request, environ: { request_id: "r-1", user_id: "u" } });
    assert.equal(res.status, 200);
    assert.equal(res.headers["content-type"], "application/binary");
    assert.match(res.headers["x-mars-uid"] ?? "", /^[a-f0-9-]{36}$/);
    const body = assemble(res.chunks);
    assert.ok(body.ended, "no ENDR");
    assert.equal(res.chunks.at(-1)!.toString(), "ENDR");
    assert.deepEqual(body.data, await expected(request, "pipe.grib"));
    assert.equal((await tf.invocations()).get("r-1"), 1, "the environ's request_id did not reach MARS");

    const uid = res.headers["x-mars-uid"]!;
    const log = await rawHttp(g.pipePort, { method: "GET", path: `/${uid}` });
    assert.equal(log.status, 200);
    assert.match(Buffer.concat(log.chunks).toString(), /No errors reported/);
    assert.equal((await rawHttp(g.pipePort, { method: "DELETE", path: `/${uid}` })).status, 204);
    assert.equal((await rawHttp(g.pipePort, { method: "GET", path: `/${uid}` })).status, 404);
    assert.equal((await rawHttp(g.pipePort, { method: "GET", path: "/not-a-uid" })).status, 404);
  });

  it("appends a list of requests into one result", async () => {
    const queue = TestFleet.queue("pipelist");
    await tf.worker({ queue });
    const g = await gateway({ queue });
    const request = [{ param: "2t", date: "20240101", grid: "5/5" }, { param: "msl" }];
    const res = await post(g.pipePort, { request, environ: {} });
    const body = assemble(res.chunks);
    assert.ok(body.ended);
    assert.deepEqual(body.data, await expected(request, "list.grib"));
  });

  it("answers a MARS user error with 400, X-MARS-EXIT-CODE and {exited}", async () => {
    const queue = TestFleet.queue("pipeerr");
    await tf.worker({ queue });
    const g = await gateway({ queue });
    const res = await post(g.pipePort, { request: { param: "nosuch" }, environ: {} });
    assert.equal(res.status, 400);
    assert.equal(res.headers["x-mars-exit-code"], "1");
    assert.equal(res.headers["content-type"], "application/json");
    assert.deepEqual(JSON.parse(Buffer.concat(res.chunks).toString()), { exited: 1 });
    const bad = await post(g.pipePort, { request: { param: "2t\ntarget=x" }, environ: {} });
    assert.equal(bad.status, 400);
  });

  it("reports a failure after data with EROR and a JSON chunk", async () => {
    const queue = TestFleet.queue("eror");
    await tf.worker(
      { queue },
      { MARS_SIM_BYTES_PER_SEC: String(100 * 1024), MARS_SIM_FAIL_AFTER_BYTES: "150000" },
    );
    const g = await gateway({ queue });
    const res = await post(g.pipePort, {
      request: { param: "2t", date: "20240101/to/20240105", grid: "2/2" },
      environ: {},
    });
    assert.equal(res.status, 200);
    const body = assemble(res.chunks);
    assert.ok(body.data.length > 0, "no data before the failure");
    assert.equal(body.ended, false);
    assert.deepEqual(body.error, { exited: 4 });
  });

  it("answers a job killed before any data with 500, X-MARS-SIGNAL and no retry for SIGKILL", async () => {
    const queue = TestFleet.queue("killed");
    const settings = { queue, maxRetries: 1 };
    await tf.worker(settings, { MARS_SIM_KILL_AFTER_BYTES: "1" });
    const g = await gateway(settings);
    const res = await post(g.pipePort, { request: { param: "2t", date: "20240101" }, environ: {} });
    assert.equal(res.status, 500);
    assert.equal(res.headers["x-mars-signal"], "9");
    assert.equal(res.headers["x-mars-retry-next-host"], "0");
    assert.equal(res.headers["x-mars-retry-same-host"], "0");
    assert.deepEqual(JSON.parse(Buffer.concat(res.chunks).toString()), {
      killed: 9,
      retry_next_host: false,
      retry_same_host: false,
    });
  });

  it("sends RWND and then the complete result when the worker dies mid-transfer", async () => {
    const queue = TestFleet.queue("rwnd");
    const settings = { queue, concurrency: 1 };
    const slow = { MARS_SIM_BYTES_PER_SEC: String(40 * 1024) };
    const first = await tf.worker(settings, slow);
    const g = await gateway(settings);
    const request = { param: "2t/msl", date: "20240101/to/20240104", grid: "5/5" };
    let second: Promise<unknown> | undefined;
    const res = await post(g.pipePort, { request, environ: {} }, (_chunk, i) => {
      if (i === 0) {
        // Killed at its first chunk, before a second worker is up to take the job over: waiting
        // for that worker to start let a loaded machine finish the transfer first (no RWND).
        first.kill("SIGKILL");
        second = tf.worker(settings, slow);
      }
    });
    await second;
    const body = assemble(res.chunks);
    assert.ok(body.rewinds >= 1, "no RWND chunk");
    assert.ok(body.ended);
    assert.deepEqual(body.data, await expected(request, "rwnd.grib"));
  });

  it("cancels the job and kills MARS when the client disconnects", async () => {
    const queue = TestFleet.queue("disconnect");
    await tf.worker({ queue }, { MARS_SIM_BYTES_PER_SEC: String(20 * 1024), MARS_SIM_SPAWN_CHILD: "1" });
    const g = await gateway({ queue });
    const res = await post(
      g.pipePort,
      { request: { param: "2t", date: "20240101/to/20240110", grid: "2/2" }, environ: {} },
      () => "abort",
    );
    assert.ok(res.aborted);
    const uid = res.headers["x-mars-uid"]!;
    const fleet = await tf.client({ queue });
    const job = await fleet.job(uid);
    assert.ok(
      await eventually(async () => (await job.status()).state === "cancelled", 5000),
      "job not cancelled",
    );
    const [helper] = helperPids(await job.storedLog());
    assert.ok(helper);
    assert.ok(await eventually(() => !processAlive(helper), 3000), "MARS survived the disconnect");
  });

  it("streams through the object store when gateway and workers share no filesystem", async () => {
    const queue = TestFleet.queue("objstore");
    await tf.worker({ queue });
    const g = await gateway({ queue, gatewayData: "objectstore" });
    const request = { param: "10u/10v", date: "20240101", grid: "5/5" };
    const res = await post(g.pipePort, { request, environ: {} });
    const body = assemble(res.chunks);
    assert.equal(res.status, 200);
    assert.ok(body.ended);
    assert.deepEqual(body.data, await expected(request, "obj.grib"));
  });
});

describe("gateway: shares mode (WebSocket)", () => {
  it("runs a job: started, live logs, heartbeats, finished, result under the shared root", async () => {
    const queue = TestFleet.queue("ws");
    await tf.worker({ queue }, { MARS_SIM_FIELD_DELAY_MS: "200" });
    const g = await gateway({ queue });
    await mkdir(join(tf.sharedRoot, "ws"), { recursive: true });
    const ws = await RawWebSocket.open(g.sharesPort);
    ws.send(
      JSON.stringify({
        cmd: "start",
        requests: [{ param: "2t", date: "20240101/to/20240105", grid: "5/5" }],
        environ: { ...ENVIRON, request_id: "ws-1" },
        target: "/ws/data.grib",
      }),
    );
    const finished = await ws.waitFor((f) => f["status"] === "finished");
    assert.equal(finished?.["returncode"], 0);
    assert.equal(await ws.closed, 1000);
    const types = ws.frames.map((f) =>
      f["type"] === "state" ? `state:${String(f["status"])}` : String(f["type"]),
    );
    assert.equal(types.filter((t) => t.startsWith("state:")).join(), "state:started,state:finished");
    assert.equal(finished?.["job_id"], "ws-1");
    assert.ok(types.includes("log"));
    assert.ok(types.includes("heartbeat"));
    assert.ok(ws.frames.some((f) => f["type"] === "log" && String(f["line"]).includes("No errors reported")));
    assert.equal((await gribLs(join(tf.sharedRoot, "ws", "data.grib"), ["shortName"])).length, 5);
  });

  it("kills a running job on {cmd: kill}", async () => {
    const queue = TestFleet.queue("wskill");
    await tf.worker({ queue }, { MARS_SIM_FIELD_DELAY_MS: "500", MARS_SIM_SPAWN_CHILD: "1" });
    const g = await gateway({ queue });
    const ws = await RawWebSocket.open(g.sharesPort);
    ws.send(
      JSON.stringify({
        cmd: "start",
        requests: [{ param: "2t", date: "20240101/to/20240120" }],
        environ: ENVIRON,
        target: "/kill.grib",
      }),
    );
    const helperLine = await ws.waitFor(
      (f) => f["type"] === "log" && /Started helper process/.test(String(f["line"])),
    );
    const [helper] = helperPids([String(helperLine?.["line"])]);
    ws.send(JSON.stringify({ cmd: "kill" }));
    assert.ok(await ws.waitFor((f) => f["status"] === "killed"));
    assert.ok(await eventually(() => !processAlive(helper!), 3000));
  });

  it("closes with 1008 over the connection limit", async () => {
    const queue = TestFleet.queue("wscap");
    await tf.worker({ queue });
    const g = await gateway({ queue, maxConcurrentConnections: 1 });
    const first = await RawWebSocket.open(g.sharesPort);
    const second = await RawWebSocket.open(g.sharesPort);
    assert.equal(await second.closed, 1008);
    first.destroy();
  });
});
