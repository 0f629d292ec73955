import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import { connect } from "@nats-io/transport-node";
import { jetstream, jetstreamManager, RetentionPolicy, StorageType } from "@nats-io/jetstream";
import { LocalNatsCluster, LocalNatsServer } from "../src/local/server.js";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname } from "node:path";
import { eventually, processAlive } from "./helpers/proc.js";

/**
 * A process that starts a local fleet (a server and a worker) and then `ends`, after its opt-in to
 * SIGTERM clean-up: the server's and the worker's pids, the server's store, and the child.
 */
async function fleetOfChild(
  ends: string,
): Promise<{ server: number; worker: number; store: string; child: ReturnType<typeof spawn> }> {
  const module = (path: string): string => JSON.stringify(new URL(path, import.meta.url).href);
  const script = `
    import { LocalFleet } from ${module("../src/local/fleet.js")};
    import { killOwnedOnSigterm } from ${module("../src/core/owned.js")};
    killOwnedOnSigterm();
    const fleet = await LocalFleet.create();
    const worker = await fleet.worker({ queue: LocalFleet.queue("orphan") });
    const started = { server: fleet.server.pid, worker: worker.proc.pid, store: fleet.server.storeDir };
    process.stdout.write(JSON.stringify(started) + "\\n");
    ${ends}
  `;
  const child = spawn(process.execPath, ["--input-type=module", "-e", script], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const started = await new Promise<{ server: number; worker: number; store: string }>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("the child did not start a fleet within 20 s")), 20_000);
    child.stdout!.once("data", (d: Buffer) => {
      clearTimeout(timer);
      resolve(JSON.parse(d.toString()) as { server: number; worker: number; store: string });
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
    "takes its nats-server and workers down when the process is stopped (SIGTERM, as node --test does) or exits without disposing",
    { timeout: 60_000 },
    async () => {
      const stopped = await fleetOfChild("setInterval(() => {}, 60_000);");
      assert.ok(processAlive(stopped.server) && processAlive(stopped.worker), "no fleet to begin with");
      stopped.child.kill("SIGTERM");
      for (const [what, pid] of [
        ["server", stopped.server],
        ["worker", stopped.worker],
      ] as const)
        assert.ok(await eventually(() => !processAlive(pid), 10_000), `the ${what} outlived a SIGTERM`);
      assert.ok(!existsSync(dirname(stopped.store)), "the server's temporary store was left behind");

      const exited = await fleetOfChild("setTimeout(() => process.exit(0), 100);");
      for (const [what, pid] of [
        ["server", exited.server],
        ["worker", exited.worker],
      ] as const)
        assert.ok(await eventually(() => !processAlive(pid), 10_000), `the ${what} outlived process.exit()`);
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
