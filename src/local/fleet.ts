/**
 * A whole fleet on this machine: a nats-server, a shared root and worker processes, configured the
 * way an operator would (environment variables). For tests, the benchmark and demonstrations.
 */
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { LocalNatsServer } from "./server.js";
import {
  type BrokerConnection,
  connectProvisioned,
  connectWithConfig,
  LaneKeeper,
  type Role,
} from "../broker/index.js";
import { Fleet } from "../client/index.js";
import { type FleetConfig, loadConfig, SETTINGS } from "../config/index.js";
import { silentLogger } from "../core/index.js";
import { startWorkerProcess, type WorkerProcess } from "../worker/index.js";

/** Settings by key (`heartbeatInterval: "250ms"`), as they would be given in the environment. */
export type Settings = Record<string, string | number>;

/** A server that requires login (and maybe TLS): each process gets its role's credentials. */
export interface FleetSecurity {
  creds: Record<Role, string>;
  /** CA of the server's certificate; set, every connection uses TLS. */
  tlsCa?: string;
  /** The admin's signing key (`broker auth`): its public half every role trusts; the seed, admins'. */
  trustKey: string;
  signingKey: string;
}

export class LocalFleet {
  readonly workers: WorkerProcess[] = [];
  private readonly clients: Fleet[] = [];
  /** Queues whose topology an admin has provisioned (secure fleets only: others provision themselves). */
  private readonly provisioned = new Set<string>();
  protected security: FleetSecurity | undefined;
  /** A secure fleet's lane keeper (the keeper role; on an open server workers keep lanes). */
  private keeper: Promise<{ conn: BrokerConnection; keeper: LaneKeeper }> | undefined;

  protected constructor(
    readonly server: LocalNatsServer,
    readonly sharedRoot: string,
    /** Settings every worker and client gets unless overridden. */
    private readonly defaults: Settings,
    /** pino level of worker processes. */
    private readonly workerLogLevel: string,
  ) {}

  /** Start a nats-server and make a shared root. */
  static async create(opts: { defaults?: Settings; workerLogLevel?: string } = {}): Promise<LocalFleet> {
    const [server, root] = await LocalFleet.resources();
    return new LocalFleet(server, root, opts.defaults ?? {}, opts.workerLogLevel ?? "info");
  }

  protected static async resources(): Promise<[LocalNatsServer, string]> {
    return [await LocalNatsServer.start(), await mkdtemp(join(tmpdir(), "mars-share-"))];
  }

  /** A fresh queue name, so users of one server cannot see each other's jobs. */
  static queue(prefix = "q"): string {
    return `${prefix}-${randomBytes(3).toString("hex")}`;
  }

  /** Environment variables for these settings, for a process of `role`. */
  env(settings: Settings, role: Role = "submitter"): Record<string, string> {
    const out: Record<string, string> = {
      MARS_NATS_SERVERS: this.server.url,
      MARS_SHARED_ROOT: this.sharedRoot,
      MARS_CONFIG_FILE: "",
    };
    if (this.security) {
      out["MARS_NATS_CREDS"] = this.security.creds[role];
      if (this.security.tlsCa) out["MARS_NATS_TLS_CA"] = this.security.tlsCa;
      out["MARS_TRUST_KEY"] = this.security.trustKey;
      if (role === "admin") out["MARS_SIGNING_KEY"] = this.security.signingKey;
    }
    for (const [key, value] of Object.entries({ ...this.defaults, ...settings })) {
      const setting = SETTINGS.find((s) => s.key === key);
      if (!setting) throw new Error(`unknown setting ${key}`);
      out[setting.env] = String(value);
    }
    return out;
  }

  config(settings: Settings, role: Role = "submitter"): FleetConfig {
    return loadConfig({ env: this.env(settings, role) });
  }

  /**
   * On a secure fleet, provision the settings' queue as an operator would, once, with the admin's
   * credentials (`mars-fleet broker init`): workers and clients may not create the topology.
   */
  async provisionFor(settings: Settings): Promise<void> {
    if (!this.security) return;
    const config = this.config(settings, "admin");
    if (this.provisioned.has(config.queue)) return;
    // As `mars-fleet broker init` does: ensure the topology, then close.
    await connectProvisioned(config, "mars-fleet-admin", (conn) => conn.nc.close());
    this.provisioned.add(config.queue);
    // As `mars-fleet keeper` does, with the keeper role: workers of a secure fleet make no consumer.
    this.keeper ??= connectWithConfig(this.config({}, "keeper"), "mars-fleet-keeper").then((conn) => ({
      conn,
      keeper: new LaneKeeper(conn.nc, conn.jsm, silentLogger()),
    }));
    await this.keeper;
  }

  /** A connected client, closed by dispose(). */
  async client(settings: Settings): Promise<Fleet> {
    await this.provisionFor(settings);
    const fleet = await Fleet.connect({ config: this.config(settings) });
    this.clients.push(fleet);
    return fleet;
  }

  /** Start a worker process and wait until it pulls. `extraEnv` reaches MARS (e.g. MARS_SIM_* knobs). */
  async worker(settings: Settings, extraEnv: Record<string, string> = {}): Promise<WorkerProcess> {
    await this.provisionFor(settings);
    const env = {
      ...process.env,
      ...this.env(settings, "worker"),
      MARS_LOG_LEVEL: this.workerLogLevel,
      ...extraEnv,
    };
    const worker = await startWorkerProcess(`w-${randomBytes(3).toString("hex")}`, env);
    this.workers.push(worker);
    return worker;
  }

  /** Kill (SIGKILL) these workers, or all, and wait for them. */
  async killWorkers(list: WorkerProcess[] = this.workers): Promise<void> {
    for (const w of list) if (w.proc.exitCode === null && w.proc.signalCode === null) w.kill("SIGKILL");
    await Promise.all(list.map((w) => w.exited));
  }

  async dispose(): Promise<void> {
    await this.killWorkers();
    // Disposal goes on: a client whose connection already ended has nothing left to close.
    await Promise.all(this.clients.map((f) => f.close().catch(() => undefined)));
    const keeper = await this.keeper?.catch(() => undefined); // one that never connected: none to stop
    await keeper?.keeper.close();
    await keeper?.conn.nc.close();
    await this.server.dispose();
    await rm(this.sharedRoot, { recursive: true, force: true });
  }
}
