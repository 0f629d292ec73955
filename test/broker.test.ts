import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { jetstreamManager } from "@nats-io/jetstream";
import { LocalNatsServer } from "../src/local/server.js";
import { provision, type TopologyOptions } from "../src/broker/provision.js";
import { JOBS_STREAM, consumerName } from "../src/broker/subjects.js";

let server: LocalNatsServer;
before(async () => {
  server = await LocalNatsServer.start();
});
after(async () => {
  await server.dispose();
});

const topology: TopologyOptions = {
  queue: "prov",
  replicas: 1,
  heartbeatMs: 1000,
  maxDeliver: 4,
  maxAckPending: 7,
  eventsMaxAgeMs: 60_000,
  retentionMs: 3_600_000,
};

describe("provisioning", () => {
  it("is idempotent and safe from many connections at once", async () => {
    const conns: NatsConnection[] = await Promise.all(
      Array.from({ length: 6 }, () => connect({ servers: server.url })),
    );
    const reports = await Promise.all(
      conns.map(async (nc) => provision(nc, await jetstreamManager(nc), topology)),
    );
    assert.deepEqual(
      reports.flatMap((r) => r.drift),
      [],
    );
    const jsm = await jetstreamManager(conns[0]!);
    const streams: string[] = [];
    for await (const name of jsm.streams.names()) streams.push(name);
    assert.deepEqual(streams.filter((n) => n.startsWith("MARS_")).sort(), [
      "MARS_DEAD",
      "MARS_EVENTS",
      "MARS_JOBS",
    ]);
    const consumers: string[] = [];
    for await (const c of jsm.consumers.list(JOBS_STREAM)) consumers.push(c.name);
    assert.deepEqual(consumers, [consumerName("prov")]);
    const info = await jsm.consumers.info(JOBS_STREAM, consumerName("prov"));
    assert.equal(info.config.max_ack_pending, 7);
    assert.equal(info.config.max_deliver, 4);
    assert.equal(info.config.ack_wait, 3000 * 1_000_000);
    await Promise.all(conns.map((nc) => nc.close()));
  });

  it("reports configuration drift instead of changing what exists", async () => {
    const nc = await connect({ servers: server.url });
    const jsm = await jetstreamManager(nc);
    await provision(nc, jsm, topology);
    const report = await provision(nc, jsm, { ...topology, heartbeatMs: 2000, maxAckPending: 0 });
    assert.ok(
      report.drift.some((d) => d.includes("ack_wait")),
      report.drift.join("\n"),
    );
    assert.ok(report.drift.some((d) => d.includes("max_ack_pending")));
    assert.equal((await jsm.consumers.info(JOBS_STREAM, consumerName("prov"))).config.max_ack_pending, 7);
    await nc.close();
  });
});

describe("submission", () => {
  it("marks the record failed when the job cannot reach the queue", async () => {
    const { Fleet } = await import("../src/client/fleet.js");
    const { loadConfig } = await import("../src/config/load.js");
    const { mkdtemp } = await import("node:fs/promises");
    const { tmpdir } = await import("node:os");
    const root = await mkdtemp(`${tmpdir()}/mars-submit-`);
    const env = {
      MARS_NATS_SERVERS: server.url,
      MARS_SHARED_ROOT: root,
      MARS_REQUEST_TIMEOUT: "1s",
      MARS_QUEUE: "lost",
    };
    const fleet = await Fleet.connect({ config: loadConfig({ env }) });
    const nc = await connect({ servers: server.url });
    await (await jetstreamManager(nc)).streams.delete(JOBS_STREAM); // the queue is gone
    await nc.close();
    await assert.rejects(
      fleet.submit({ param: "2t" }, { requestId: "lost-1" }),
      (e: { code?: string }) => e.code === "BROKER_ERROR",
    );
    const record = await (await fleet.job("lost-1")).status();
    assert.equal(record.state, "failed");
    assert.equal(record.error?.code, "BROKER_ERROR");
    await fleet.close();
    await (await import("node:fs/promises")).rm(root, { recursive: true, force: true });
  });
});
