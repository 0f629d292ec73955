import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { OPEN_FLEET } from "../src/broker/signing.js";
import { ApiKeys } from "../src/api/keys.js";
import { startApi, type ApiServer } from "../src/api/server.js";
import { TestFleet } from "./helpers/fleet.js";
import { eventually } from "./helpers/proc.js";

// A fleet of its own whose job records expire a second after their last change.
const queue = TestFleet.queue("expiry");
const settings = { queue, retention: "1s" };
let tf: TestFleet;
let api: ApiServer;
const tokens = { alice: "", bob: "" };

before(async () => {
  tf = await TestFleet.start();
  await tf.worker(settings); // the first to provision: the jobs bucket gets this retention
  api = await startApi({ config: tf.config(settings), port: 0, host: "127.0.0.1" });
  const nc = await tf.connectAs("admin");
  try {
    const keys = await ApiKeys.open(nc, OPEN_FLEET);
    tokens.alice = (await keys.add("alice", "user")).token;
    tokens.bob = (await keys.add("bob", "user")).token;
  } finally {
    await nc.close();
  }
});
after(async () => {
  await api?.close();
  await tf?.dispose();
});

describe("REST API: expired jobs", { timeout: 60_000 }, () => {
  it("answers 410 Gone for a job whose record expired, 404 for one that never was (and to other users)", async () => {
    const base = `http://127.0.0.1:${api.port}`;
    const as = (who: keyof typeof tokens) => ({ authorization: `Bearer ${tokens[who]}` });
    const res = await fetch(`${base}/v1/jobs`, {
      method: "POST",
      headers: { ...as("alice"), "content-type": "application/json" },
      body: JSON.stringify({ request: { param: "2t", date: "20240101" } }),
    });
    assert.equal(res.status, 202);
    const { id } = (await res.json()) as { id: string };
    const status = async (path: string, who: keyof typeof tokens = "alice"): Promise<number> =>
      (await fetch(`${base}${path}`, { headers: as(who) })).status;
    assert.ok(await eventually(async () => (await status(`/v1/jobs/${id}`)) === 410, 20_000), "never 410");
    const gone = await fetch(`${base}/v1/jobs/${id}/result`, { headers: as("alice") });
    assert.equal(gone.status, 410);
    assert.equal(((await gone.json()) as { code: string }).code, "JOB_EXPIRED");
    assert.equal(await status(`/v1/jobs/${id}`, "bob"), 404, "another user learns that the job existed");
    assert.equal(await status("/v1/jobs/never-was"), 404);
  });
});
