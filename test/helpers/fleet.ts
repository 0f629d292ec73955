/** A fleet for integration tests: a real nats-server, real worker processes, a shared root. */
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { LocalNatsServer } from "../../src/broker/local-server.js";
import assert from "node:assert/strict";
import { jetstream } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { subjects } from "../../src/broker/subjects.js";
import type { Fleet } from "../../src/client/fleet.js";
import type { JobHandle } from "../../src/client/job.js";
import { Gateway } from "../../src/gateway/gateway.js";
import { eventually } from "./proc.js";
import { SIMULATOR_SCRIPT } from "../../src/sim/command.js";
import { LocalFleet, type Settings } from "../../src/worker/local-fleet.js";

/** Short intervals so heartbeats and redelivery take hundreds of milliseconds. */
export const FAST: Settings = {
  heartbeatInterval: "250ms",
  retryDelay: "100ms",
  killGrace: "300ms",
  requestTimeout: "5s",
  drainGrace: "10s",
};

export class TestFleet extends LocalFleet {
  private readonly gateways: Gateway[] = [];

  private constructor(
    server: LocalNatsServer,
    sharedRoot: string,
    readonly countFile: string,
    readonly countingMars: string,
  ) {
    super(server, sharedRoot, FAST, "debug");
  }

  static async start(): Promise<TestFleet> {
    const [server, sharedRoot] = await LocalFleet.resources();
    const countFile = join(sharedRoot, ".invocations");
    const countingMars = join(sharedRoot, ".counting-mars.sh");
    // A MARS command that records each invocation, then runs the simulator: how often did MARS run?
    await writeFile(
      countingMars,
      `#!/bin/sh\necho "$MARS_ENVIRON_REQUEST_ID" >> "${countFile}"\nexec "${process.execPath}" "${SIMULATOR_SCRIPT}" "$@"\n`,
      { mode: 0o755 },
    );
    return new TestFleet(server, sharedRoot, countFile, countingMars);
  }

  /** A gateway on free loopback ports (the system picks them), closed by dispose(). */
  async gateway(settings: Settings): Promise<Gateway> {
    const g = await Gateway.start({
      config: this.config({ ...settings, pipePort: 0, sharesPort: 0, gatewayHost: "127.0.0.1" }),
    });
    this.gateways.push(g);
    return g;
  }

  override async dispose(): Promise<void> {
    await Promise.all(this.gateways.map((g) => g.close()));
    await super.dispose();
  }

  /**
   * Publish a message on a queue as an attacker or a broken client would (no record, no checks),
   * and, when it is a job, wait until the worker that claims it has built its record.
   */
  async publishRaw(
    queue: string,
    body: Uint8Array | ({ id: string } & Record<string, unknown>),
    fleet?: Fleet,
  ): Promise<JobHandle | undefined> {
    const nc = await connect({ servers: this.server.url });
    try {
      const data = body instanceof Uint8Array ? body : new TextEncoder().encode(JSON.stringify(body));
      await jetstream(nc).publish(subjects.jobs(queue), data);
    } finally {
      await nc.close();
    }
    if (body instanceof Uint8Array || !fleet) return undefined;
    const found = await eventually(
      async () =>
        fleet.job(body.id).then(
          () => true,
          () => false,
        ),
      10_000,
    );
    assert.ok(found, `no record for the raw job ${body.id} after 10 s: no worker claimed it`);
    return fleet.job(body.id);
  }

  /** How many times MARS ran for each request id (through the counting command). */
  async invocations(): Promise<Map<string, number>> {
    const text = await readFile(this.countFile, "utf8").catch(() => "");
    const counts = new Map<string, number>();
    for (const id of text.split("\n").filter(Boolean)) counts.set(id, (counts.get(id) ?? 0) + 1);
    return counts;
  }
}
