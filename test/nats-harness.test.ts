import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import { connect } from "@nats-io/transport-node";
import { jetstream, jetstreamManager, RetentionPolicy, StorageType } from "@nats-io/jetstream";
import { LocalNatsCluster, LocalNatsServer } from "../src/broker/local-server.js";
import { processAlive } from "./helpers/proc.js";

describe("nats-server harness", () => {
  const started: Array<{ dispose(): Promise<void> }> = [];
  after(async () => {
    await Promise.all(started.map((s) => s.dispose()));
  });

  it("starts JetStream on a free port and keeps stream data over a restart", async () => {
    const server = await LocalNatsServer.start();
    started.push(server);
    let nc = await connect({ servers: server.url });
    const jsm = await jetstreamManager(nc);
    await jsm.streams.add({
      name: "SMOKE",
      subjects: ["smoke.>"],
      storage: StorageType.File,
      retention: RetentionPolicy.Limits,
    });
    await jetstream(nc).publish("smoke.a", "hello");
    await nc.close();

    const oldPid = server.pid!;
    await server.restart();
    assert.ok(!processAlive(oldPid));
    nc = await connect({ servers: server.url });
    const msg = await (await jetstreamManager(nc)).streams.getMessage("SMOKE", { seq: 1 });
    assert.equal(msg?.string(), "hello");
    await nc.close();
    const pid = server.pid!;
    await server.dispose();
    assert.ok(!processAlive(pid));
  });

  it("fails fast with a clear error when the server cannot start", async () => {
    const first = await LocalNatsServer.start();
    started.push(first);
    await assert.rejects(LocalNatsServer.start({ port: first.port }), /exited early/);
  });

  it("starts a 3-node JetStream cluster with replicated streams", async () => {
    const cluster = await LocalNatsCluster.start(3);
    started.push(cluster);
    const nc = await connect({ servers: cluster.servers });
    const jsm = await jetstreamManager(nc);
    const info = await jsm.streams.add({ name: "REPL", subjects: ["repl.>"], num_replicas: 3 });
    assert.equal(info.config.num_replicas, 3);
    await jetstream(nc).publish("repl.x", "r");
    assert.equal((await jsm.streams.info("REPL")).state.messages, 1);
    await nc.close();
  });
});
