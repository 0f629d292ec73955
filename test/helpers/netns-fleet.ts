/**
 * A fleet on several hosts for the multi-host tests (netns-nodes, netns-hosts): three nats-server
 * nodes, two worker hosts and a client host, each in its own network namespace (netns.ts), 5 ms of
 * delay each way in front of every node, streams and buckets at 3 replicas, the shared filesystem a
 * directory they all see. Every namespace is removed at the end of each test, failed or not.
 */
import assert from "node:assert/strict";
import type { ChildProcess } from "node:child_process";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { TestContext } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { CLI_SCRIPT, startWorkerProcess, type WorkerProcess } from "../../src/worker/process.js";
import { Lines, NetCluster, NetLab, netLabUnavailable } from "./netns.js";

const CLIENT = fileURLToPath(new URL("./netns-client.js", import.meta.url));
export const HOSTS = ["n1", "n2", "n3", "w1", "w2", "c1"];
export const NODES = ["n1", "n2", "n3"];
const DELAY_MS = 5;
export const unavailable = await netLabUnavailable();

export interface Done {
  t: "done";
  id: string;
  at: number;
  state: string;
  attempt: number;
  worker?: string;
  bytes?: number;
  fileBytes?: number;
  code?: string;
  /** Why a job was not submitted. */
  message?: string;
}

/** One lab: namespaces, the cluster, the fleet's settings, and what to clean up. */
export class Setup {
  readonly workers: WorkerProcess[] = [];
  readonly clients: Array<{ err: Lines }> = [];
  /** The stored writes of each job's status that was not committed exactly once (`history`). */
  readonly histories = new Map<string, string[]>();

  private constructor(
    readonly lab: NetLab,
    readonly cluster: NetCluster,
    readonly root: string,
    readonly env: NodeJS.ProcessEnv,
  ) {}

  static async start(): Promise<Setup> {
    const lab = await NetLab.create(HOSTS);
    let cluster: NetCluster | undefined;
    try {
      cluster = await NetCluster.start(lab, NODES, DELAY_MS);
      const root = await mkdtemp(join(tmpdir(), "mars-netns-share-"));
      const env = {
        ...process.env,
        MARS_NATS_SERVERS: cluster.urls.join(","),
        MARS_SHARED_ROOT: root,
        MARS_QUEUE: "netns",
        MARS_STREAM_REPLICAS: "3",
        MARS_HEARTBEAT_INTERVAL: "500ms",
        MARS_REQUEST_TIMEOUT: "10s",
        MARS_CONFIG_FILE: "",
        MARS_LOG_LEVEL: process.env["NETNS_WORKER_LOG"] ?? "info",
      };
      const setup = new Setup(lab, cluster, root, env);
      await setup.run("c1", [CLIENT, "wait-js"], 40_000);
      await setup.run("c1", [CLI_SCRIPT, "broker", "init"], 60_000);
      return setup;
    } catch (err) {
      await cluster?.dispose();
      await lab.dispose();
      throw err;
    }
  }

  /** Run node with `args` in `host` to its end; fails on a non-zero exit or after `timeoutMs`. */
  async run(host: string, args: string[], timeoutMs: number): Promise<Lines> {
    const proc = this.lab.spawn(host, [process.execPath, ...args], this.env);
    const out = new Lines(proc.stdout!);
    const err = new Lines(proc.stderr!);
    const code = await Promise.race([exitOf(proc), sleep(timeoutMs, "timeout" as const)]);
    if (code !== 0) {
      proc.kill("SIGKILL");
      throw new Error(`${args.join(" ")} in ${host}: ${code}; ${err.all.slice(-5).join(" | ")}`);
    }
    return out;
  }

  /** Start the client driver in c1 (see helpers/netns-client.ts); its stdout as lines. */
  client(args: string[]): { proc: ChildProcess; out: Lines; err: Lines } {
    const proc = this.lab.spawn("c1", [process.execPath, CLIENT, ...args], this.env);
    const c = { proc, out: new Lines(proc.stdout!), err: new Lines(proc.stderr!) };
    this.clients.push(c);
    return c;
  }

  /**
   * A load run: a worker on each worker host, and the client submitting `count` jobs, one each
   * `intervalMs`. `finished()` waits for the run's end and checks every job succeeded, each moved
   * into place once; it gives what came back.
   */
  async load(
    count: number,
    intervalMs: number,
    opts: { users?: number; inFlight?: number; worker?: Record<string, string>; timeoutMs?: number } = {},
  ): Promise<{ out: Lines; finished: () => Promise<Done[]> }> {
    await this.worker("w1", opts.worker);
    await this.worker("w2", opts.worker);
    const c = this.client([
      "load",
      String(count),
      String(intervalMs),
      String(opts.users ?? 4),
      String(opts.inFlight ?? 1),
    ]);
    const finished = async (): Promise<Done[]> => {
      await c.out
        .waitFor((l) => l.includes('"t":"end"'), opts.timeoutMs ?? 110_000, "the load run's end")
        .catch((err: unknown) => {
          throw new Error(`${(err as Error).message}\n${this.outstanding(c.out, count)}`, { cause: err });
        });
      const done = c.out.json<Done>().filter((d) => d.t === "done");
      const commits = this.commits();
      // Each write of a job committed other than once, read back before the lab goes (a failure says them).
      for (const d of done.filter((x) => commits.get(x.id) !== 1))
        this.histories.set(
          d.id,
          (await this.run("c1", [CLIENT, "history", d.id], 20_000).catch(() => undefined))?.all ?? [],
        );
      assertAllSucceeded(this, done, count);
      return done;
    };
    return { out: c.out, finished };
  }

  /** What a load run that did not end still waits for: jobs not submitted or not done, and what workers said of them. */
  private outstanding(out: Lines, count: number): string {
    const records = out.json<{ t: string; id: string }>();
    const submitted = records.filter((r) => r.t === "submitted").map((r) => r.id);
    const done = new Set(records.filter((r) => r.t === "done").map((r) => r.id));
    const missing = submitted.filter((id) => !done.has(id));
    const lines = [
      `${submitted.length} of ${count} submitted, ${done.size} done; not done: ${missing.join(", ") || "none"}`,
    ];
    for (const id of missing) lines.push(...this.trail(id, 6));
    return lines.join("\n");
  }

  /** The last `n` lines each worker logged of job `id`, with their time, attempt and error. */
  trail(id: string, n: number): string[] {
    const writes = (this.histories.get(id) ?? []).map((l) => `  write: ${l}`);
    return writes.concat(
      this.workers.flatMap((w) =>
        w.logs
          .filter((x) => x["jobId"] === id)
          .slice(-n)
          .map((l) => `  ${w.id} ${logLine(l)}`),
      ),
    );
  }

  async worker(host: string, extra: Record<string, string> = {}): Promise<WorkerProcess> {
    const w = await startWorkerProcess(
      `${host}-worker`,
      // Debug: "result committed" is a debug line, and each job's must be counted.
      {
        ...this.env,
        MARS_LOG_LEVEL: "debug",
        MARS_WORKER_CONCURRENCY: "3",
        MARS_SIM_FIELD_DELAY_MS: "150",
        ...extra,
      },
      undefined,
      this.lab.wrap(host),
    );
    this.workers.push(w);
    return w;
  }

  async leader(stream: string): Promise<string> {
    const out = await this.run("c1", [CLIENT, "leader", stream], 20_000);
    return (out.json<{ leader: string }>()[0] ?? { leader: "" }).leader;
  }

  /**
   * How many times each job's output was moved into place ("result committed", logged right after
   * the rename), over every worker's log. An attempt that renamed and then lost its lease counts
   * once; the later attempt that adopts that file ("adopted") renames nothing and does not count.
   */
  commits(): Map<string, number> {
    const n = new Map<string, number>();
    for (const w of this.workers)
      for (const l of w.logs)
        if (l["msg"] === "result committed") n.set(String(l["jobId"]), (n.get(String(l["jobId"])) ?? 0) + 1);
    return n;
  }

  async dispose(): Promise<void> {
    for (const w of this.workers) if (w.proc.exitCode === null) w.kill("SIGKILL");
    await Promise.all(this.workers.map((w) => w.exited));
    await this.cluster.dispose();
    await this.lab.dispose();
    await rm(this.root, { recursive: true, force: true });
  }
}

function exitOf(proc: ChildProcess): Promise<number | null> {
  if (proc.exitCode !== null) return Promise.resolve(proc.exitCode);
  return new Promise((resolve) => proc.once("exit", (code) => resolve(code)));
}

/** Every job of a load run succeeded, once, with the bytes its record names in its file. */
function assertAllSucceeded(setup: Setup, done: Done[], count: number): void {
  assert.equal(done.length, count, `${done.length} of ${count} jobs came back`);
  const failed = done.filter((d) => d.state !== "succeeded");
  assert.deepEqual(
    failed.map((d) => `${d.id}: ${d.state} ${d.code ?? ""} ${d.message ?? ""}`.trimEnd()),
    [],
    "jobs that did not succeed",
  );
  for (const d of done)
    assert.equal(d.fileBytes, d.bytes, `job ${d.id}: its file is not the committed result`);
  const commits = setup.commits();
  const notOnce = done
    .filter((d) => commits.get(d.id) !== 1)
    .map((d) => `${d.id}: ${commits.get(d.id) ?? 0}`);
  assert.deepEqual(
    notOnce,
    [],
    `results not moved into place exactly once:\n${done
      .filter((d) => commits.get(d.id) !== 1)
      .flatMap((d) => setup.trail(d.id, 20))
      .join("\n")}`,
  );
}

/** The longest time with no job completing, from the fault on (ms). */
export function stallAfter(done: Done[], faultAt: number): number {
  const times = [faultAt, ...done.map((d) => d.at).filter((t) => t >= faultAt)].sort((a, b) => a - b);
  let worst = 0;
  for (let i = 1; i < times.length; i++) worst = Math.max(worst, times[i]! - times[i - 1]!);
  return worst;
}

/** Median gap between completions before the fault (ms): the rhythm the stall is compared with. */
export function gapBefore(done: Done[], faultAt: number): number {
  const times = done
    .map((d) => d.at)
    .filter((t) => t < faultAt)
    .sort((a, b) => a - b);
  const gaps = times
    .slice(1)
    .map((t, i) => t - times[i]!)
    .sort((a, b) => a - b);
  return gaps[Math.floor(gaps.length / 2)] ?? 0;
}

/**
 * A worker's log line for a diagnostic: when, what, its error without the stack, then the rest (its
 * job, attempt, revisions, files expected and found). Who logged it is for the caller to say.
 */
function logLine(l: Record<string, unknown>): string {
  const { time, msg, err, level: _l, name: _n, pid: _p, component: _c, workerId: _w, queue: _q, ...rest } = l;
  const e = err as { type?: string; code?: string; message?: string } | undefined;
  const error = e ? ` err ${String(e.type)}${e.code ? ` ${e.code}` : ""}: ${String(e.message)}` : "";
  return `${String(time)} ${String(msg)}${error} ${JSON.stringify(rest).slice(0, 400)}`;
}

export async function withSetup(t: TestContext, body: (s: Setup) => Promise<void>): Promise<void> {
  const setup = await Setup.start();
  try {
    await body(setup);
  } catch (err) {
    // What the workers had to say, to tell a stuck fleet from a slow one.
    for (const w of setup.workers)
      for (const l of w.logs
        // Warnings, and each job's own info lines (claimed, started, lost, settled): what tells a
        // late takeover from a lost one.
        .filter((x) => {
          const level = Number(x["level"]);
          const floor = Number(process.env["NETNS_LOG_LEVEL"] ?? 40);
          return level >= floor || (level >= 30 && x["jobId"] !== undefined);
        })
        .slice(-60))
        t.diagnostic(`${w.id}: ${logLine(l)}`);
    // NETNS_LOG_DIR: every line of every worker, for a failure the last 60 do not explain.
    const dir = process.env["NETNS_LOG_DIR"];
    if (dir) {
      await mkdir(dir, { recursive: true });
      for (const w of setup.workers)
        await writeFile(
          join(dir, `${w.id}-${Date.now()}.ndjson`),
          w.logs.map((l) => JSON.stringify(l)).join("\n"),
        );
    }
    for (const line of setup.clients.flatMap((c) => c.err.all.slice(-5)))
      t.diagnostic(`client: ${line.slice(0, 400)}`);
    throw err;
  } finally {
    await setup.dispose();
  }
  const unseen = setup.workers.flatMap((w) => w.logs.filter((l) => String(l["msg"]).includes("did not see")));
  t.diagnostic(`fences that found writes their compare-and-set did not see: ${unseen.length}`);
  for (const l of unseen)
    t.diagnostic(
      `  ${String(l["workerId"])} on ${String(l["jobId"] ?? l["parent"])} #${String(l["attempt"])}: revisions ${JSON.stringify(l["revisions"])}, another's fence ${String(l["fence"] ?? "none")}`,
    );
  t.diagnostic(`namespaces removed: ${HOSTS.length + 1}`);
}
