/**
 * A local nats-server for tests, the demo and the benchmark: free loopback port, temporary
 * JetStream store, readiness polled and raced against early exit, restartable, and a 3-node
 * JetStream cluster on loopback.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, rmSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { createServer, connect as tcpConnect } from "node:net";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { connect } from "@nats-io/transport-node";
import { jetstreamManager } from "@nats-io/jetstream";
import { BrokerError, own } from "../core/index.js";

/** Debian installs nats-server in /usr/sbin, which is not on every user's PATH. */
export const NATS_SERVER_BIN =
  process.env["NATS_SERVER_BIN"] ??
  (existsSync("/usr/sbin/nats-server") ? "/usr/sbin/nats-server" : "nats-server");
const READY_TIMEOUT_MS = 20_000;

/** A free TCP port on loopback (closed again before it is returned). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const address = srv.address();
      const port = typeof address === "object" && address ? address.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

/** Whether the server answering on `port` is the one named `serverName` (not another on that port). */
async function serverAnswers(port: number, serverName: string): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = tcpConnect({ port, host: "127.0.0.1" });
    const done = (ok: boolean): void => {
      sock.destroy();
      resolve(ok);
    };
    sock.once("data", (d) =>
      done(d.toString().startsWith("INFO") && d.toString().includes(`"server_name":"${serverName}"`)),
    );
    sock.once("error", () => done(false));
    sock.setTimeout(1000, () => done(false));
  });
}

function serverNameOf(name: string, baseDir: string): string {
  return `${name}-${basename(baseDir).replace(/[^A-Za-z0-9]/g, "")}`;
}

interface NodeSpec {
  name: string;
  port: number;
  clusterPort?: number;
  routes?: number[];
  /** More configuration lines (an authorization block, `tls {}`). */
  extraConfig?: string[];
}

/** One nats-server process with JetStream, its own store dir, on a fixed port (kept over restarts). */
export class LocalNatsServer {
  private proc: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();
  private stderrTail = "";
  /** Permissions and authorization violations the server logged, since it started. */
  readonly violations: string[] = [];

  private constructor(
    readonly spec: NodeSpec,
    readonly storeDir: string,
    private readonly configPath: string,
    private readonly ownedDir: string | undefined,
  ) {}

  /** Unique per store, stable over restarts, so readiness can tell our server from another one. */
  get serverName(): string {
    return serverNameOf(this.spec.name, dirname(this.storeDir));
  }

  get port(): number {
    return this.spec.port;
  }
  get url(): string {
    return `nats://127.0.0.1:${this.spec.port}`;
  }
  get pid(): number | undefined {
    return this.proc?.pid;
  }

  /** Start one server (or a cluster node when `spec` has cluster settings). */
  static async start(
    opts: Partial<NodeSpec> & { baseDir?: string; wait?: boolean } = {},
  ): Promise<LocalNatsServer> {
    const ownedDir = opts.baseDir === undefined ? await mkdtemp(join(tmpdir(), "mars-nats-")) : undefined;
    const baseDir = opts.baseDir ?? ownedDir!;
    const spec: NodeSpec = { ...opts, name: opts.name ?? "n1", port: opts.port ?? (await freePort()) };
    const storeDir = join(baseDir, spec.name);
    const configPath = join(baseDir, `${spec.name}.conf`);
    const lines = [
      `server_name: ${serverNameOf(spec.name, baseDir)}`,
      `listen: 127.0.0.1:${spec.port}`,
      `jetstream { store_dir: "${storeDir}" }`,
    ];
    if (spec.clusterPort) {
      const routes = (spec.routes ?? []).map((p) => `"nats-route://127.0.0.1:${p}"`).join(", ");
      lines.push(`cluster { name: mars-test, listen: 127.0.0.1:${spec.clusterPort}, routes: [${routes}] }`);
    }
    lines.push(...(spec.extraConfig ?? []));
    await writeFile(configPath, lines.join("\n") + "\n");
    const server = new LocalNatsServer(spec, storeDir, configPath, ownedDir);
    await server.launch(opts.wait ?? true);
    return server;
  }

  private async launch(wait: boolean): Promise<void> {
    const proc = spawn(NATS_SERVER_BIN, ["-c", this.configPath], { stdio: ["ignore", "ignore", "pipe"] });
    this.proc = proc;
    // Taken down with this process however it ends, with its throwaway temporary directory.
    const owned = this.ownedDir;
    own(proc, owned ? () => rmSync(owned, { recursive: true, force: true }) : undefined);
    this.stderrTail = "";
    proc.stderr?.on("data", (d: Buffer) => {
      this.stderrTail = (this.stderrTail + d.toString()).slice(-4000);
      for (const line of d.toString().split("\n"))
        if (/Violation/.test(line)) this.violations.push(line.trim());
    });
    let exitedEarly: Error | undefined;
    this.exited = new Promise((resolve) => {
      proc.once("error", (err) => {
        exitedEarly = new BrokerError(
          `cannot start ${NATS_SERVER_BIN}: ${err.message} (install it: apt-get install nats-server)`,
        );
        resolve();
      });
      proc.once("exit", (code, signal) => {
        exitedEarly ??= new BrokerError(
          `nats-server exited early (${signal ?? code}): ${this.stderrTail.trim()}`,
        );
        resolve();
      });
    });
    if (!wait) return;
    const deadline = Date.now() + READY_TIMEOUT_MS;
    while (Date.now() < deadline) {
      if (exitedEarly) throw exitedEarly;
      if (await serverAnswers(this.spec.port, this.serverName)) return;
      await sleep(50);
    }
    throw new BrokerError(`nats-server on port ${this.spec.port} not ready after ${READY_TIMEOUT_MS} ms`);
  }

  /** Stop the process (SIGTERM, then SIGKILL); the store is kept. */
  async stop(): Promise<void> {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    proc.kill("SIGTERM");
    const killer = setTimeout(() => proc.kill("SIGKILL"), 5000);
    await this.exited;
    clearTimeout(killer);
  }

  /** Stop and start again on the same port with the same store. */
  /** Stop, stay down `downMs` (clients see a real outage), start again with the data kept. */
  async restart(opts: { downMs?: number } = {}): Promise<void> {
    await this.stop();
    if (opts.downMs) await new Promise((r) => setTimeout(r, opts.downMs));
    await this.launch(true);
  }

  /** Stop and delete the store. */
  async dispose(): Promise<void> {
    await this.stop();
    await rm(this.storeDir, { recursive: true, force: true });
    await rm(this.configPath, { force: true });
    if (this.ownedDir) await rm(this.ownedDir, { recursive: true, force: true });
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.dispose();
  }
}

/**
 * Wait until JetStream answers on these servers (a cluster needs its meta leader first). With
 * `replicas` > 1, also until the cluster knows enough peers to place a stream of that many replicas
 * (its meta leader answers before it knows them all): a probe stream is made and deleted.
 */
export async function waitForJetStream(
  servers: string[],
  timeoutMs = READY_TIMEOUT_MS,
  replicas = 1,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  while (Date.now() < deadline) {
    try {
      const nc = await connect({ servers, timeout: 2000 });
      try {
        const jsm = await jetstreamManager(nc, { timeout: 2000 });
        await jsm.getAccountInfo();
        if (replicas > 1) {
          const name = `READY_PROBE_${process.pid}`;
          await jsm.streams.add({ name, subjects: [`ready-probe.${process.pid}`], num_replicas: replicas });
          await jsm.streams.delete(name);
        }
        return;
      } finally {
        await nc.close();
      }
    } catch (err) {
      lastError = err;
      await sleep(200);
    }
  }
  throw new BrokerError(`JetStream not ready: ${String(lastError)}`);
}

/** A 3-node JetStream cluster on loopback. */
export class LocalNatsCluster {
  private constructor(
    readonly nodes: LocalNatsServer[],
    private readonly baseDir: string,
  ) {}

  get servers(): string[] {
    return this.nodes.map((n) => n.url);
  }

  static async start(size = 3): Promise<LocalNatsCluster> {
    const baseDir = await mkdtemp(join(tmpdir(), "mars-nats-cluster-"));
    const ports = await Promise.all(Array.from({ length: size }, () => freePort()));
    const clusterPorts = await Promise.all(Array.from({ length: size }, () => freePort()));
    const nodes = await Promise.all(
      ports.map((port, i) =>
        LocalNatsServer.start({
          name: `n${i + 1}`,
          port,
          clusterPort: clusterPorts[i]!,
          routes: clusterPorts,
          baseDir,
        }),
      ),
    );
    const cluster = new LocalNatsCluster(nodes, baseDir);
    await waitForJetStream(cluster.servers, READY_TIMEOUT_MS, size);
    return cluster;
  }

  async dispose(): Promise<void> {
    await Promise.all(this.nodes.map((n) => n.stop()));
    await rm(this.baseDir, { recursive: true, force: true });
  }
}
