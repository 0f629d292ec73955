/** No path may leave the shared root, symbolic links included, whatever sends the job. */
import assert from "node:assert/strict";
import { mkdir, mkdtemp, readdir, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { jetstream } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { errorCode } from "./helpers/errors.js";
import { TestFleet } from "./helpers/fleet.js";
import { RawWebSocket } from "./helpers/ws-client.js";

const SMALL = { param: "2t", date: "20240101", grid: "10/10" };
let tf: TestFleet;
let outside: string;
before(async () => {
  tf = await TestFleet.start();
  outside = await mkdtemp(join(tmpdir(), "mars-outside-"));
  await symlink(outside, join(tf.sharedRoot, "link"));
  await mkdir(join(tf.sharedRoot, "own"), { recursive: true });
  await writeFile(join(outside, "victim.grib"), "precious");
  await symlink(join(outside, "victim.grib"), join(tf.sharedRoot, "own", "evil.grib"));
});
after(async () => {
  await tf.dispose();
  await rm(outside, { recursive: true, force: true });
});

describe("security: symbolic links do not lead out of the root", { timeout: 60_000 }, () => {
  it("refuses targets through a link, directories made through a link, and a target that is a link", async () => {
    const queue = TestFleet.queue("links");
    await tf.worker({ queue });
    const fleet = await tf.client({ queue });
    for (const [targetDir, targetFname] of [
      ["link", "via-link.grib"],
      ["link/made/by/mkdir", "deep.grib"],
      ["own", "evil.grib"],
    ] as const) {
      const job = await fleet.submit(SMALL, { targetDir, targetFname });
      assert.equal(await errorCode(job.result()), "TARGET_INVALID", `${targetDir}/${targetFname}`);
      assert.equal((await job.status()).attempt, 1);
    }
    // A raw message, as an attacker would send it: the worker checks on disk, not the client.
    const raw = await tf.publishRaw(
      queue,
      {
        v: 1,
        id: "raw-link",
        queue,
        requests: [{ verb: "retrieve", params: { param: ["2t"] } }],
        target: "link/raw.grib",
        environ: {},
        submittedAt: Date.now(),
      },
      fleet,
    );
    assert.equal(await errorCode(raw!.result()), "TARGET_INVALID");

    assert.deepEqual(
      (await readdir(outside)).sort(),
      ["victim.grib"],
      "something was written outside the root",
    );
    const ok = await fleet.submit(SMALL, { targetDir: "own", targetFname: "fine.grib" });
    assert.ok((await ok.result()).bytes > 0, "the worker stopped serving");
  });

  it("the shares gateway refuses a target whose directory is a link out of the root", async () => {
    const queue = TestFleet.queue("wslinks");
    await tf.worker({ queue });
    const g = await tf.gateway({ queue });
    const ws = await RawWebSocket.open(g.sharesPort);
    const environ = { request_id: "l", user_id: "u", namespace: "n", host: "h", username: "u" };
    ws.send(JSON.stringify({ cmd: "start", requests: [SMALL], environ, target: "/link/x.grib" }));
    const frame = await ws.waitFor((f) => f["status"] === "error", "an error frame");
    assert.match(String(frame["error"]), /symbolic link/);
    assert.deepEqual((await readdir(outside)).sort(), ["victim.grib"]);
  });

  it("result() refuses a record whose result lies outside the root (a forged record)", async () => {
    const queue = TestFleet.queue("forged");
    const fleet = await tf.client({ queue });
    const job = await fleet.submit(SMALL); // no worker: it stays queued
    const nc = await connect({ servers: tf.server.url });
    const { Kvm } = await import("@nats-io/kv");
    const kv = await new Kvm(jetstream(nc)).open("mars-jobs");
    const entry = await kv.get(`${job.id}.submitted`);
    const record = entry!.json<Record<string, unknown>>();
    const forged = {
      ...record,
      state: "succeeded",
      result: { target: "../../../etc/passwd", bytes: 1, elapsedMs: 1 },
    };
    // Forged as a worker would write it (this connection may write anything: an open server).
    await kv.put(`${job.id}.status`, JSON.stringify(forged));
    await nc.close();
    assert.equal(await errorCode(job.result()), "TARGET_INVALID");
  });
});
