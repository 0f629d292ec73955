import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import { connect } from "@nats-io/transport-node";
import { jetstream, jetstreamManager, RetentionPolicy, StorageType } from "@nats-io/jetstream";
import { LocalNatsCluster, LocalNatsServer } from "../src/broker/local-server.js";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname } from "node:path";
import { eventually, processAlive } from "./helpers/proc.js";

/**
 * A process that starts a server and then `ends` (after its opt-in to SIGTERM clean-up): the
 * server's pid and store directory, and the child, once it has started the server.
 */
async function serverOfChild(
  ends: string,
): Promise<{ pid: number; store: string; child: ReturnType<typeof spawn> }> {
  const module = JSON.stringify(new URL("../src/broker/local-server.js", import.meta.url).href);
  const script = `
    import { LocalNatsServer, stopLocalServersOnSigterm } from ${module};
    stopLocalServersOnSigterm();
    const server = await LocalNatsServer.start();
    process.stdout.write(JSON.stringify({ pid: server.pid, store: server.storeDir }) + "\\n");
    ${ends}
  `;
  const child = spawn(process.execPath, ["--input-type=module", "-e", script], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const started = await new Promise<{ pid: number; store: string }>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("the child did not start a server within 15 s")), 15_000);
    child.stdout!.once("data", (d: Buffer) => {
      clearTimeout(timer);
      resolve(JSON.parse(d.toString()) as { pid: number; store: string });
    });
  });
  return { ...started, child };
}

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

  it(
    "takes its nats-server down when the process is stopped (SIGTERM, as node --test does) or exits without disposing",
    { timeout: 40_000 },
    async () => {
      const stopped = await serverOfChild("setInterval(() => {}, 60_000);");
      assert.ok(processAlive(stopped.pid), "no server to begin with");
      stopped.child.kill("SIGTERM");
      assert.ok(await eventually(() => !processAlive(stopped.pid), 10_000), "the server outlived a SIGTERM");
      assert.ok(!existsSync(dirname(stopped.store)), "its temporary store was left behind");

      const exited = await serverOfChild("setTimeout(() => process.exit(0), 100);");
      assert.ok(
        await eventually(() => !processAlive(exited.pid), 10_000),
        "the server outlived process.exit()",
      );
    },
  );

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
