import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { connect } from "@nats-io/transport-node";
import { jetstreamManager } from "@nats-io/jetstream";
import { LocalNatsCluster } from "../src/local/server.js";
import { EVENTS_STREAM, JOBS_STREAM } from "../src/broker/subjects.js";
import { Fleet } from "../src/client/fleet.js";
import { loadConfig } from "../src/config/load.js";
import { startWorkerProcess, type WorkerProcess } from "../src/worker/process.js";
import { gribLs } from "./helpers/grib.js";
import { writesAround } from "./helpers/unseen-writes.js";

let cluster: LocalNatsCluster;
let sharedRoot: string;
let worker: WorkerProcess | undefined;
before(async () => {
  cluster = await LocalNatsCluster.start(3);
  sharedRoot = await mkdtemp(join(tmpdir(), "mars-cluster-"));
});
after(async () => {
  worker?.kill("SIGKILL");
  await worker?.exited;
  await cluster.dispose();
  await rm(sharedRoot, { recursive: true, force: true });
});

describe("fleet on a 3-node JetStream cluster", () => {
  it("replicates the topology three times and finishes a job while one node is down", async () => {
    const env = {
      MARS_NATS_SERVERS: cluster.servers.join(","),
      MARS_SHARED_ROOT: sharedRoot,
      MARS_STREAM_REPLICAS: "3",
      MARS_HEARTBEAT_INTERVAL: "500ms",
      MARS_REQUEST_TIMEOUT: "10s",
      MARS_CONFIG_FILE: "",
    };
    worker = await startWorkerProcess("cluster-worker", {
      ...process.env,
      ...env,
      MARS_SIM_FIELD_DELAY_MS: "300",
    });
    const fleet = await Fleet.connect({ config: loadConfig({ env }) });
    try {
      const nc = await connect({ servers: cluster.servers });
      const jsm = await jetstreamManager(nc);
      for (const stream of [JOBS_STREAM, EVENTS_STREAM])
        assert.equal((await jsm.streams.info(stream)).config.num_replicas, 3);
      await nc.close();

      const job = await fleet.submit(
        { param: "2t", date: "20240101/to/20240110", grid: "10/10" },
        { targetDir: "cluster" },
      );
      for await (const ev of job.events()) if (ev.type === "state" && ev.state === "running") break;
      await cluster.nodes[2]!.stop();
      const result = await job.result();
      assert.equal((await gribLs(result.target, ["shortName"])).length, 10);
    } finally {
      await fleet.close();
    }
  });
});

describe("job records on a cluster", { timeout: 60_000 }, () => {
  it("a split job's parts and fan-in fence on the cluster, each reading its unseen writes, and commit once", async () => {
    const env = {
      MARS_NATS_SERVERS: cluster.servers.join(","),
      MARS_SHARED_ROOT: sharedRoot,
      MARS_STREAM_REPLICAS: "3",
      MARS_REQUEST_TIMEOUT: "10s",
      MARS_CONFIG_FILE: "",
    };
    const fleet = await Fleet.connect({ config: loadConfig({ env }) });
    try {
      const job = await fleet.submit(
        { param: "2t/msl", date: "20240101/to/20240103", grid: "10/10" },
        { targetDir: "cluster", targetFname: "split.grib", split: ["param"] },
      );
      const result = await job.result({ signal: AbortSignal.timeout(45_000) });
      assert.equal((await gribLs(result.target, ["shortName"])).length, 6);
      const logs = worker!.logs.filter((l) => String(l["msg"]).includes("did not see"));
      assert.deepEqual(logs, [], "no write went unseen on a cluster with every node up");
    } finally {
      await fleet.close();
    }
  });

  it("a fence reads the writes stored between its claim and itself, oldest first (what a cluster may let through unseen)", async () => {
    const env = { MARS_NATS_SERVERS: cluster.servers.join(","), MARS_CONFIG_FILE: "" };
    await (await Fleet.connect({ config: loadConfig({ env }) })).close(); // the topology, if not there yet
    const found = await writesAround(cluster.servers);
    const [first, second, third] = found.writes;
    assert.equal(third.base, second.revision);
    assert.deepEqual(
      found.between.map((w) => [w.revision, w.record.claim, w.record.committing?.claim]),
      [[second.revision, "b", "b"]],
    );
    assert.ok(first.revision < second.revision && second.revision < third.revision);
    assert.deepEqual(found.adjacent, [], "nothing lies between two writes of the key");
  });
});
