import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { OPEN_FLEET } from "../src/broker/signing.js";
import { ApiKeys } from "../src/api/keys.js";
import { verifyCallbackSignature } from "../src/api/callback-post.js";
import { startApi, type ApiServer } from "../src/api/server.js";
import { CLI, cli } from "./helpers/cli.js";
import { TestFleet } from "./helpers/fleet.js";
import { eventually } from "./helpers/proc.js";

const TIMEOUT = 120_000;
const queue = TestFleet.queue("callbacks");
let tf: TestFleet;
let token = "";

interface Received {
  body: string;
  signature: string;
  delivery: string;
  job: string;
  answered: number;
}

/** A local receiver: answers each POST with the next status of `plan` (the last one repeats). */
async function receiver(plan: number[]): Promise<{ url: string; got: Received[]; server: Server }> {
  const got: Received[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const answered = plan[Math.min(got.length, plan.length - 1)]!;
      got.push({
        body: Buffer.concat(chunks).toString("utf8"),
        signature: String(req.headers["x-mars-signature"]),
        delivery: String(req.headers["x-mars-delivery"]),
        job: String(req.headers["x-mars-job"]),
        answered,
      });
      res.writeHead(answered).end();
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const addr = server.address() as { port: number };
  return { url: `http://127.0.0.1:${addr.port}/hook`, got, server };
}

/** The receiver's check: a valid, recent `t=…,v1=…` signature of the body (not an old one). */
function signedNow(g: Received, secret: string): boolean {
  return /^t=\d+,v1=[0-9a-f]{64}$/.test(g.signature) && verifyCallbackSignature(g.signature, g.body, secret);
}

/** The test's receivers are on loopback, which callbacks may not reach unless allowed. */
const LOOPBACK_ALLOWED = ["127.0.0.1/32"];

/** `mars-fleet api` as a real process; resolves with its port once it listens. */
async function apiProcess(): Promise<{ proc: ChildProcess; port: number }> {
  const proc = spawn(
    process.execPath,
    [CLI, "api", "--port", "0", "--host", "127.0.0.1", "--callback-backoff", "1s"],
    {
      env: { ...process.env, ...tf.env({ queue }), MARS_CALLBACK_ALLOW: LOOPBACK_ALLOWED.join(",") },
      stdio: ["ignore", "ignore", "pipe"],
    },
  );
  let err = "";
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`mars-fleet api did not listen within 20 s: ${err}`)),
      20_000,
    );
    proc.stderr!.on("data", (d: Buffer) => {
      err += d.toString();
      const m = /listening on http:\/\/[^:]+:(\d+)/.exec(err);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
    proc.on("exit", (code) => reject(new Error(`mars-fleet api exited (${code}): ${err}`)));
  });
  return { proc, port };
}

before(async () => {
  tf = await TestFleet.start();
  await tf.worker({ queue }, { MARS_SIM_FIELD_DELAY_MS: "20" });
  const nc = await tf.connectAs("admin");
  try {
    token = (await (await ApiKeys.open(nc, OPEN_FLEET)).add("alice", "user")).token;
  } finally {
    await nc.close();
  }
});
after(async () => {
  await tf.dispose();
});

describe("REST API: completion callbacks", { timeout: TIMEOUT }, () => {
  it("signs, retries after two 500s, and is delivered once although the api process was killed mid-backoff", async () => {
    const hook = await receiver([500, 500, 200]);
    const secret = "a-secret-of-enough-length";
    const first = await apiProcess();
    let second: ApiServer | undefined;
    try {
      const res = await fetch(`http://127.0.0.1:${first.port}/v1/jobs`, {
        method: "POST",
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
        body: JSON.stringify({
          request: { param: "2t", date: "20240101" },
          callback: { url: hook.url, secret },
        }),
      });
      assert.equal(res.status, 202, await res.clone().text());
      const { id } = (await res.json()) as { id: string };
      assert.ok(await eventually(() => hook.got.length >= 1, 30_000), "no first attempt");
      // Mid-backoff: its failed attempt recorded (and the message handed back with a delay).
      const recorded = async (): Promise<number> => {
        const r = await fetch(`http://127.0.0.1:${first.port}/v1/jobs/${id}`, {
          headers: { authorization: `Bearer ${token}` },
        });
        return ((await r.json()) as { callback?: { attempts: unknown[] } }).callback?.attempts.length ?? 0;
      };
      assert.ok(await eventually(async () => (await recorded()) === 1, 10_000), "attempt 1 never recorded");
      first.proc.kill("SIGKILL"); // the retry is the server's to redeliver, to whoever pulls
      second = await startApi({
        config: tf.config({ queue }),
        port: 0,
        host: "127.0.0.1",
        callbacks: { backoffMs: 1000, maxAgeMs: 60_000, allow: LOOPBACK_ALLOWED },
      });
      // The retry reaches the second process after the backoff, or, when the server had handed it
      // to the killed process's waiting pull, after the consumer's ack wait (15 s).
      assert.ok(await eventually(() => hook.got.some((g) => g.answered === 200), 60_000), "never delivered");
      await new Promise((r) => setTimeout(r, 2500)); // anything more would come now
      assert.deepEqual(
        hook.got.map((g) => [g.answered, g.delivery, g.job]),
        [
          [500, "1", id],
          [500, "2", id],
          [200, "3", id],
        ],
      );
      for (const g of hook.got) {
        assert.ok(signedNow(g, secret), `bad signature ${g.signature}`);
        const record = JSON.parse(g.body) as { id: string; state: string };
        assert.equal(record.id, id);
        assert.equal(record.state, "succeeded");
      }
      const view = (await (
        await fetch(`http://127.0.0.1:${second.port}/v1/jobs/${id}`, {
          headers: { authorization: `Bearer ${token}` },
        })
      ).json()) as { callback: { delivered: boolean; attempts: Array<{ status: number }>; secret?: string } };
      assert.equal(view.callback.delivered, true);
      assert.deepEqual(
        view.callback.attempts.map((a) => a.status),
        [500, 500, 200],
      );
      assert.equal(view.callback.secret, undefined, "the record shows the secret");
    } finally {
      first.proc.kill("SIGKILL");
      await second?.close();
      hook.server.close();
    }
  });

  it("`mars-fleet submit --callback` makes a secret, prints it, and the api delivers with it", async () => {
    const hook = await receiver([200]);
    const api = await startApi({
      config: tf.config({ queue }),
      port: 0,
      host: "127.0.0.1",
      callbacks: { backoffMs: 1000, maxAgeMs: 60_000, allow: LOOPBACK_ALLOWED },
    });
    try {
      const file = join(tf.sharedRoot, "callback-request.mars");
      await writeFile(file, 'retrieve, param=2t, date=20240101, grid=10/10, target="x.grib"\n');
      const out = await cli(
        ["submit", file, "--target", "cb/x.grib", "--callback", hook.url, "--json"],
        tf.env({ queue }),
      );
      assert.equal(out.code, 0, out.stderr);
      const secret = /callback secret \(X-Mars-Signature key\): (\S+)/.exec(out.stderr)?.[1];
      assert.ok(secret, out.stderr);
      assert.ok(await eventually(() => hook.got.length === 1, 30_000), "not delivered");
      assert.ok(signedNow(hook.got[0]!, secret), hook.got[0]!.signature);
      const bad = await cli(
        ["submit", file, "--target", "cb/y.grib", "--callback", "ftp://nope"],
        tf.env({ queue }),
      );
      assert.equal(bad.code, 3, bad.stderr);
      assert.match(bad.stderr, /MESSAGE_INVALID: invalid callback/);
    } finally {
      await api.close();
      hook.server.close();
    }
  });

  it("never calls back to a loopback or private address unless the operator allows it", async () => {
    const hook = await receiver([200]);
    const api = await startApi({ config: tf.config({ queue }), port: 0, host: "127.0.0.1" });
    try {
      const ids: string[] = [];
      // By number, by name (resolved to loopback where the connection is made), and the metadata address.
      const port = new URL(hook.url).port;
      for (const url of [
        hook.url,
        `http://localhost:${port}/hook`,
        "http://169.254.169.254/latest/meta-data",
      ]) {
        const res = await fetch(`http://127.0.0.1:${api.port}/v1/jobs`, {
          method: "POST",
          headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
          body: JSON.stringify({ request: { param: "2t", date: "20240101" }, callback: { url } }),
        });
        assert.equal(res.status, 202, await res.clone().text());
        ids.push(((await res.json()) as { id: string }).id);
      }
      const attempts = async (id: string): Promise<Array<{ error?: string; status?: number }>> => {
        const r = await fetch(`http://127.0.0.1:${api.port}/v1/jobs/${id}`, {
          headers: { authorization: `Bearer ${token}` },
        });
        return (
          ((await r.json()) as { callback?: { attempts: Array<{ error?: string }> } }).callback?.attempts ??
          []
        );
      };
      for (const id of ids) {
        assert.ok(
          await eventually(async () => (await attempts(id)).length > 0, 30_000),
          `no attempt for ${id}`,
        );
        const [first] = await attempts(id);
        assert.equal(first!.status, undefined);
        assert.match(first!.error ?? "", /refused: .* is not an address callbacks may reach/);
      }
      assert.equal(hook.got.length, 0, "a callback reached the loopback receiver");
    } finally {
      await api.close();
      hook.server.close();
    }
  });
});
