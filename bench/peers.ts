/**
 * Peers in the same run (`npm run bench -- --peers`): the heavy-MARS workload on BullMQ and Redis
 * (Debian's redis-server, started and stopped here), from `bench/peers/` with its own dependencies.
 * Without redis-server or those dependencies, the peer is skipped and the reason is reported.
 */
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { createConnection } from "node:net";
import { createInterface } from "node:readline";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { setTimeout as sleep } from "node:timers/promises";
import { freePort } from "../src/local/server.js";
import { WARM_JOBS, cpuMs } from "./env.js";
import { round } from "./report.js";

const PEERS_DIR = fileURLToPath(new URL("../../bench/peers/", import.meta.url));
const SCRIPT = join(PEERS_DIR, "bullmq.mjs");
const READY_MS = 20_000;

export interface PeerResult {
  /** Its shape: worker processes, and jobs at once in each. */
  workers: number;
  slots: number;
  jobsPerSec: number;
  cpu: { worker: number; client: number; server: number; total: number };
}

/** Why the peer cannot run here, or undefined when it can (installing its dependencies if needed). */
export async function peerUnavailable(): Promise<string | undefined> {
  const redis = await promisify(execFile)("sh", ["-c", "command -v redis-server"]).catch(() => undefined);
  if (!redis) return "redis-server is not installed (apt-get install redis-server): BullMQ peer skipped";
  if (!existsSync(join(PEERS_DIR, "node_modules", "bullmq"))) {
    try {
      await promisify(execFile)("npm", ["install", "--no-audit", "--no-fund"], {
        cwd: PEERS_DIR,
        timeout: 180_000,
      });
    } catch (err) {
      return `bench/peers dependencies could not be installed (${(err as Error).message.split("\n")[0]}): BullMQ peer skipped`;
    }
  }
  return undefined;
}

async function redisReady(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = createConnection({ port, host: "127.0.0.1" });
    const done = (ok: boolean): void => {
      sock.destroy();
      resolve(ok);
    };
    sock.once("connect", () => sock.write("PING\r\n"));
    sock.once("data", (d) => done(d.toString().startsWith("+PONG")));
    sock.once("error", () => done(false));
    sock.setTimeout(1000, () => done(false));
  });
}

function waitForLine(proc: ChildProcess, what: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let out = "";
    const timer = setTimeout(() => reject(new Error(`${what}: nothing after ${READY_MS} ms`)), READY_MS);
    proc.stdout!.on("data", (d: Buffer) => {
      out += d.toString();
      const nl = out.indexOf("\n");
      if (nl >= 0) {
        clearTimeout(timer);
        resolve(out.slice(0, nl));
      }
    });
    proc.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`${what} exited ${code}`));
    });
  });
}

/**
 * `jobs` runs of `command` through BullMQ: `workers` worker processes of `slots` each, measured
 * after `warm` warm-up jobs (the fleet's warm-up request: bench/env.ts WARM_JOBS).
 */
export async function runBullmq(
  command: string,
  scratch: string,
  jobs: number,
  workers: number,
  slots: number,
  warm: number,
): Promise<PeerResult> {
  const port = await freePort();
  const redis = spawn(
    "redis-server",
    ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
    { stdio: "ignore" },
  );
  const procs: ChildProcess[] = [redis];
  try {
    const deadline = Date.now() + READY_MS;
    while (!(await redisReady(port))) {
      if (Date.now() > deadline) throw new Error("redis-server did not answer PING");
      await sleep(50);
    }
    await mkdir(join(scratch, "bullmq"), { recursive: true });
    const queue = `heavy-${port}`;
    const started = Array.from({ length: workers }, () =>
      spawn(process.execPath, [SCRIPT, "worker", String(port), queue, String(slots), command, scratch], {
        stdio: ["ignore", "pipe", "inherit"],
      }),
    );
    procs.push(...started);
    await Promise.all(started.map((p, i) => waitForLine(p, `BullMQ worker ${i + 1}`)));
    const client = spawn(
      process.execPath,
      [SCRIPT, "client", String(port), queue, String(jobs), join(scratch, "bullmq"), String(warm)],
      { stdio: ["pipe", "pipe", "inherit"] },
    );
    procs.push(client);
    const lines = clientLines(client);
    if (warm > 0 && (await lines.next()).value !== "warm") throw new Error("BullMQ client: no warm-up");
    const workersCpu = async (): Promise<number> =>
      (await Promise.all(started.map((p) => cpuMs(p.pid!)))).reduce((a, b) => a + b, 0);
    const before = { workers: await workersCpu(), server: await cpuMs(redis.pid!) };
    client.stdin!.end(warm > 0 ? "go\n" : "");
    const report = JSON.parse((await lines.next()).value ?? "null") as { ms: number; cpuMs: number };
    const workerCpu = (await workersCpu()) - before.workers;
    const serverCpu = (await cpuMs(redis.pid!)) - before.server;
    const cpu = { worker: workerCpu / jobs, client: report.cpuMs / jobs, server: serverCpu / jobs };
    return {
      workers,
      slots,
      jobsPerSec: jobs / (report.ms / 1000),
      cpu: { ...cpu, total: cpu.worker + cpu.client + cpu.server },
    };
  } finally {
    for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill("SIGTERM");
    await sleep(100);
    for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
  }
}

/** The client's lines on stdout, one at a time; each is waited for at most 5 minutes. */
async function* clientLines(client: ChildProcess): AsyncGenerator<string, void> {
  const lines = createInterface({ input: client.stdout! })[Symbol.asyncIterator]();
  for (;;) {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error("BullMQ client: no line for 5 minutes")), 300_000);
    });
    const next = await Promise.race([lines.next(), timeout]).finally(() => clearTimeout(timer));
    if (next.done) throw new Error(`BullMQ client ended (exit ${client.exitCode}) before its report`);
    yield next.value;
  }
}

/** BullMQ in the same run as a fleet scenario, or why it was skipped; undefined when peers were not asked for. */
export type PeerRun = { result?: PeerResult; skipped?: string } | undefined;

/** The same workload on BullMQ, `workers` x `slots`, after as many warm-up jobs as the fleet's. */
export async function bullmqPeer(
  command: string,
  scratch: string,
  jobs: number,
  workers: number,
  slots: number,
): Promise<NonNullable<PeerRun>> {
  const why = await peerUnavailable();
  if (why) return { skipped: why };
  return { result: await runBullmq(command, scratch, jobs, workers, slots, WARM_JOBS) };
}

/** The peer's figures beside the fleet's: its throughput, against the same direct pool, and its CPU. */
export function peerFigures(peer: PeerRun, fleetRate: number, directRate: number): Record<string, number> {
  if (!peer?.result) return {};
  return {
    "BullMQ jobs/s": peer.result.jobsPerSec,
    "BullMQ / direct": peer.result.jobsPerSec / directRate,
    "BullMQ cpu ms/job (worker+client+redis)": peer.result.cpu.total,
    "fleet / BullMQ": fleetRate / peer.result.jobsPerSec,
  };
}

export function peerNotes(peer: PeerRun): string[] {
  if (!peer) return ["peers not run (npm run bench -- --peers)"];
  if (!peer.result) return [peer.skipped ?? "BullMQ peer skipped"];
  const { cpu, workers, slots } = peer.result;
  return [
    `BullMQ peer: ${workers} workers x ${slots} on Redis; CPU per job worker ${round(cpu.worker, 2)} ms, client ${round(cpu.client, 2)} ms, redis ${round(cpu.server, 2)} ms`,
  ];
}
