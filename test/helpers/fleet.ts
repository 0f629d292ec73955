/** A fleet for integration tests: a real nats-server, real worker processes, a shared root. */
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { LocalNatsServer } from "../../src/local/server.js";
import { NO_SECURITY, connectionSecurity } from "../../src/broker/auth.js";
import { generateAuth } from "../../src/broker/credentials.js";
import type { Role } from "../../src/broker/roles.js";
import { makeTls } from "./tls.js";
import assert from "node:assert/strict";
import { jetstream } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { subjects } from "../../src/broker/subjects.js";
import type { Fleet } from "../../src/client/fleet.js";
import type { JobHandle } from "../../src/client/job.js";
import { Gateway } from "../../src/gateway/gateway.js";
import { eventually } from "./proc.js";
import { SIMULATOR_SCRIPT } from "../../src/sim/command.js";
import { LocalFleet, type FleetSecurity, type Settings } from "../../src/local/fleet.js";

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

  /** Where a secure fleet keeps its CA, certificates and credentials. */
  private secretsDir: string | undefined;

  /**
   * A fleet on a fresh server. `secure`: the server requires login with the roles of
   * `mars-fleet broker auth` and TLS (a throwaway CA), and each process gets its role's credentials.
   */
  static async start(opts: { secure?: boolean } = {}): Promise<TestFleet> {
    let security: FleetSecurity | undefined;
    let secretsDir: string | undefined;
    let server: LocalNatsServer;
    let sharedRoot: string;
    if (opts.secure) {
      secretsDir = await mkdtemp(join(tmpdir(), "mars-secrets-"));
      const tls = await makeTls(secretsDir);
      const auth = await generateAuth({ dir: secretsDir });
      const creds = Object.fromEntries(auth.roles.map((r) => [r.role, r.file])) as Record<Role, string>;
      security = { creds, tlsCa: tls.ca, trustKey: auth.trustKey, signingKey: auth.signingKey };
      server = await LocalNatsServer.start({
        extraConfig: [
          await readFile(auth.authConf, "utf8"),
          `tls { cert_file: "${tls.cert}", key_file: "${tls.key}" }`,
        ],
      });
      sharedRoot = await mkdtemp(join(tmpdir(), "mars-share-"));
    } else {
      [server, sharedRoot] = await LocalFleet.resources();
    }
    const countFile = join(sharedRoot, ".invocations");
    const countingMars = join(sharedRoot, ".counting-mars.sh");
    // A MARS command that records each invocation, then runs the simulator: how often did MARS run?
    await writeFile(
      countingMars,
      `#!/bin/sh\necho "$MARS_ENVIRON_REQUEST_ID" >> "${countFile}"\nexec "${process.execPath}" "${SIMULATOR_SCRIPT}" "$@"\n`,
      { mode: 0o755 },
    );
    const tf = new TestFleet(server, sharedRoot, countFile, countingMars);
    tf.security = security;
    tf.secretsDir = secretsDir;
    return tf;
  }

  /** A raw connection with a role's credentials (on an open server, anonymous whatever the role). */
  async connectAs(role: Role | "anonymous"): Promise<NatsConnection> {
    const sec = this.security
      ? connectionSecurity([this.server.url], {
          ...NO_SECURITY,
          creds: role === "anonymous" ? "" : this.security.creds[role],
          tlsCa: this.security.tlsCa ?? "",
        }).options
      : {};
    return connect({ servers: this.server.url, ...sec, timeout: 5000 });
  }

  /** A gateway on free loopback ports (the system picks them), closed by dispose(). */
  async gateway(settings: Settings): Promise<Gateway> {
    await this.provisionFor(settings);
    const g = await Gateway.start({
      config: this.config({ ...settings, pipePort: 0, sharesPort: 0, gatewayHost: "127.0.0.1" }),
    });
    this.gateways.push(g);
    return g;
  }

  override async dispose(): Promise<void> {
    await Promise.all(this.gateways.map((g) => g.close()));
    await super.dispose();
    if (this.secretsDir) await rm(this.secretsDir, { recursive: true, force: true });
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
    const nc = await this.connectAs("submitter");
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
