/** AbortSignal on the calls that wait on the broker: Fleet.connect, submit, Worker.start. */
import assert from "node:assert/strict";
import { createServer, type Socket } from "node:net";
import { after, before, describe, it } from "node:test";
import { untilAborted } from "../src/core/abort.js";
import { Fleet } from "../src/client/fleet.js";
import { Worker } from "../src/worker/worker.js";
import { errorCode } from "./helpers/errors.js";
import { TestFleet } from "./helpers/fleet.js";

const isAbort = (err: unknown): boolean => err instanceof Error && err.name === "AbortError";

describe("untilAborted", () => {
  it("gives the value, or the abort at once, and disposes of what comes too late", async () => {
    assert.equal(
      await untilAborted(Promise.resolve(7), AbortSignal.abort(), () => undefined).catch(() => "aborted"),
      "aborted",
    );
    assert.equal(await untilAborted(Promise.resolve(7), new AbortController().signal, () => undefined), 7);
    const ac = new AbortController();
    let resolveLate!: (v: string) => void;
    const disposed: string[] = [];
    const waiting = untilAborted(new Promise<string>((r) => (resolveLate = r)), ac.signal, (v) =>
      disposed.push(v),
    );
    ac.abort();
    await assert.rejects(waiting, isAbort);
    resolveLate("late connection");
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(disposed, ["late connection"]);
  });
});

describe("abort signals", { timeout: 60_000 }, () => {
  let tf: TestFleet;
  before(async () => {
    tf = await TestFleet.start();
  });
  after(async () => {
    await tf.dispose();
  });

  it("Fleet.connect gives up when its signal aborts, even on a server that never answers", async () => {
    const config = tf.config({ queue: TestFleet.queue("abort") });
    await assert.rejects(Fleet.connect({ config, signal: AbortSignal.abort() }), isAbort);
    // A listener that accepts and says nothing: the NATS handshake never completes.
    const held: Socket[] = [];
    const mute = createServer((s) => void held.push(s));
    await new Promise<void>((r) => mute.listen(0, "127.0.0.1", r));
    try {
      const port = (mute.address() as { port: number }).port;
      const silent = { ...config, servers: [`nats://127.0.0.1:${port}`], requestTimeout: 30_000 };
      await assert.rejects(
        Fleet.connect({ config: silent, signal: AbortSignal.timeout(300) }),
        (err: unknown) => err instanceof Error && (err.name === "TimeoutError" || err.name === "AbortError"),
      );
    } finally {
      for (const s of held) s.destroy();
      mute.close();
    }
  });

  it("submit with an aborted signal creates nothing; Worker.start gives up too", async () => {
    const queue = TestFleet.queue("abort-submit");
    const fleet = await tf.client({ queue });
    const ac = new AbortController();
    ac.abort();
    await assert.rejects(
      fleet.submit({ param: "2t", date: "20240101" }, { requestId: "never-made", signal: ac.signal }),
      isAbort,
    );
    assert.equal(await errorCode(fleet.job("never-made").then((j) => j.status())), "JOB_NOT_FOUND");
    await assert.rejects(
      Worker.start({ config: tf.config({ queue }, "worker"), signal: ac.signal }),
      isAbort,
    );
  });
});
