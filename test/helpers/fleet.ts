/** A fleet for integration tests: a real nats-server, real worker processes, a shared root. */
import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { LocalNatsServer } from "../../src/broker/local-server.js";
import { Fleet } from "../../src/client/fleet.js";
import { loadConfig, type FleetConfig } from "../../src/config/load.js";
import { SETTINGS } from "../../src/config/settings.js";
import { SIMULATOR_SCRIPT } from "../../src/sim/command.js";
import { startWorkerProcess, type WorkerProcess } from "../../src/worker/process.js";

/** Short intervals so heartbeats and redelivery take hundreds of milliseconds. */
export const FAST: Partial<Record<keyof FleetConfig, string | number>> = {
  heartbeatInterval: "250ms",
  retryDelay: "100ms",
  killGrace: "300ms",
  requestTimeout: "5s",
  drainGrace: "10s",
};

export class TestFleet {
  readonly workers: WorkerProcess[] = [];
  private readonly fleets: Fleet[] = [];

  private constructor(
    readonly server: LocalNatsServer,
    readonly sharedRoot: string,
    readonly countFile: string,
    readonly countingMars: string,
  ) {}

  static async start(): Promise<TestFleet> {
    const server = await LocalNatsServer.start();
    const sharedRoot = await mkdtemp(join(tmpdir(), "mars-share-"));
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

  /** A fresh queue name so tests sharing a server cannot see each other. */
  static queue(prefix = "q"): string {
    return `${prefix}-${randomBytes(3).toString("hex")}`;
  }

  /** Environment variables for these settings (as a worker process would be configured). */
  env(settings: Record<string, string | number>): Record<string, string> {
    const out: Record<string, string> = {
      MARS_NATS_SERVERS: this.server.url,
      MARS_SHARED_ROOT: this.sharedRoot,
      MARS_CONFIG_FILE: "",
    };
    for (const [key, value] of Object.entries({ ...FAST, ...settings })) {
      const setting = SETTINGS.find((s) => s.key === key);
      if (!setting) throw new Error(`unknown setting ${key}`);
      out[setting.env] = String(value);
    }
    return out;
  }

  config(settings: Record<string, string | number>): FleetConfig {
    return loadConfig({ env: this.env(settings) });
  }

  async client(settings: Record<string, string | number>): Promise<Fleet> {
    const fleet = await Fleet.connect({ config: this.config(settings) });
    this.fleets.push(fleet);
    return fleet;
  }

  /** Start a worker process and wait until it pulls. `extraEnv` reaches MARS (e.g. MARS_SIM_* knobs). */
  async worker(
    settings: Record<string, string | number>,
    extraEnv: Record<string, string> = {},
  ): Promise<WorkerProcess> {
    const id = `w-${randomBytes(3).toString("hex")}`;
    const env = { ...process.env, ...this.env(settings), MARS_LOG_LEVEL: "debug", ...extraEnv };
    const worker = await startWorkerProcess(id, env);
    this.workers.push(worker);
    return worker;
  }

  /** How many times MARS ran for each request id (through the counting command). */
  async invocations(): Promise<Map<string, number>> {
    const text = await readFile(this.countFile, "utf8").catch(() => "");
    const counts = new Map<string, number>();
    for (const id of text.split("\n").filter(Boolean)) counts.set(id, (counts.get(id) ?? 0) + 1);
    return counts;
  }

  async dispose(): Promise<void> {
    for (const w of this.workers)
      if (w.proc.exitCode === null && w.proc.signalCode === null) w.proc.kill("SIGKILL");
    await Promise.all(this.workers.map((w) => w.exited));
    await Promise.all(this.fleets.map((f) => f.close().catch(() => undefined)));
    await this.server.dispose();
    await rm(this.sharedRoot, { recursive: true, force: true });
  }
}
