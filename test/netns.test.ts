/**
 * Several hosts, for real (#26): three nats-server nodes, two worker hosts and a client host, each
 * in its own network namespace (helpers/netns.ts), 5 ms of delay each way in front of every node,
 * streams and buckets at 3 replicas, the shared filesystem a directory they all see. Faults: a node
 * killed under load, a worker host partitioned past the ack wait, a client cut off from its node,
 * and the work queue's stream leader partitioned away under load. Every namespace is removed at the
 * end of each test, failed or not. The stalls are printed as diagnostics (figures, not assertions).
 */
import assert from "node:assert/strict";
import type { ChildProcess } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, it, type TestContext } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { JOBS_STREAM } from "../src/broker/subjects.js";
import { CLI_SCRIPT, startWorkerProcess, type WorkerProcess } from "../src/worker/process.js";
import { Lines, NetCluster, NetLab, netLabUnavailable } from "./helpers/netns.js";
import { childrenMatching } from "./helpers/proc.js";

const CLIENT = fileURLToPath(new URL("./helpers/netns-client.js", import.meta.url));
const HOSTS = ["n1", "n2", "n3", "w1", "w2", "c1"];
const NODES = ["n1", "n2", "n3"];
const DELAY_MS = 5;
const unavailable = await netLabUnavailable();

interface Done {
  t: "done";
  id: string;
  at: number;
  state: string;
  attempt: number;
  worker?: string;
  bytes?: number;
  fileBytes?: number;
  code?: string;
}

/** One lab: namespaces, the cluster, the fleet's settings, and what to clean up. */
class Setup {
  readonly workers: WorkerProcess[] = [];
  readonly clients: Array<{ err: Lines }> = [];

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
    failed.map((d) => `${d.id}: ${d.state} ${d.code ?? ""}`),
    [],
    "jobs that did not succeed",
  );
  for (const d of done)
    assert.equal(d.fileBytes, d.bytes, `job ${d.id}: its file is not the committed result`);
  const commits = setup.commits();
  const notOnce = done
    .filter((d) => commits.get(d.id) !== 1)
    .map((d) => `${d.id}: ${commits.get(d.id) ?? 0}`);
  assert.deepEqual(notOnce, [], "results not moved into place exactly once");
}

/** The longest time with no job completing, from the fault on (ms). */
function stallAfter(done: Done[], faultAt: number): number {
  const times = [faultAt, ...done.map((d) => d.at).filter((t) => t >= faultAt)].sort((a, b) => a - b);
  let worst = 0;
  for (let i = 1; i < times.length; i++) worst = Math.max(worst, times[i]! - times[i - 1]!);
  return worst;
}

/** Median gap between completions before the fault (ms): the rhythm the stall is compared with. */
function gapBefore(done: Done[], faultAt: number): number {
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

async function withSetup(t: TestContext, body: (s: Setup) => Promise<void>): Promise<void> {
  const setup = await Setup.start();
  try {
    await body(setup);
  } catch (err) {
    // What the workers had to say, to tell a stuck fleet from a slow one.
    for (const w of setup.workers)
      for (const l of w.logs
        .filter((x) => Number(x["level"]) >= Number(process.env["NETNS_LOG_LEVEL"] ?? 40))
        .slice(-40))
        t.diagnostic(`${w.id}: ${JSON.stringify(l).slice(0, 400)}`);
    for (const line of setup.clients.flatMap((c) => c.err.all.slice(-5)))
      t.diagnostic(`client: ${line.slice(0, 400)}`);
    throw err;
  } finally {
    await setup.dispose();
  }
  t.diagnostic(`namespaces removed: ${HOSTS.length + 1}`);
}

describe("several hosts in network namespaces", { skip: unavailable ?? false, timeout: 240_000 }, () => {
  it("a node killed under load: every job completes, none is committed twice", async (t) => {
    await withSetup(t, async (s) => {
      await s.worker("w1");
      await s.worker("w2");
      const count = 30;
      const c = s.client(["load", String(count), "150"]);
      await c.out.waitFor((l) => l.includes('"t":"done"'), 60_000, "a first job done");
      await sleep(1000);
      const faultAt = Date.now();
      await s.cluster.killNode("n2");
      await c.out.waitFor((l) => l.includes('"t":"end"'), 150_000, "the load run's end");
      const done = c.out.json<Done>().filter((d) => d.t === "done");
      assertAllSucceeded(s, done, count);
      t.diagnostic(
        `node killed: longest wait for a completion ${stallAfter(done, faultAt)} ms (median gap before: ${gapBefore(done, faultAt)} ms)`,
      );
    });
  });

  it("a worker host partitioned past the ack wait: another takes its job over, the result is moved into place once, and its MARS is stopped", async (t) => {
    await withSetup(t, async (s) => {
      const stale = await s.worker("w1", { MARS_SIM_FIELD_DELAY_MS: "400" });
      const c = s.client(["one"]);
      const running = JSON.parse(
        await c.out.waitFor((l) => l.includes('"t":"running"'), 60_000, "the job running"),
      ) as { worker: string };
      assert.equal(running.worker, stale.id);
      const taker = await s.worker("w2", { MARS_SIM_FIELD_DELAY_MS: "400" });
      const faultAt = Date.now();
      await s.lab.partition("w1");
      await sleep(5000); // the ack wait is 1.5 s (three heartbeats of 500 ms)
      await s.lab.heal("w1");
      const done = JSON.parse(
        await c.out.waitFor((l) => l.includes('"t":"done"'), 120_000, "the job done"),
      ) as Done;
      assert.equal(done.state, "succeeded");
      assert.equal(done.worker, taker.id, "the job was not finished by the other worker");
      assert.ok(done.attempt >= 2);
      assert.equal(done.fileBytes, done.bytes);
      const lostAt = Date.now();
      const lost = await (async () => {
        while (Date.now() - lostAt < 30_000) {
          if (stale.logs.some((l) => String(l["msg"]).startsWith("lost the lease"))) return true;
          await sleep(200);
        }
        return false;
      })();
      assert.ok(lost, "the partitioned worker never noticed it lost the job");
      // Its MARS is stopped, and its output never replaced the result.
      const deadline = Date.now() + 15_000;
      while (childrenMatching(stale.proc.pid!, "sim").length > 0 && Date.now() < deadline) await sleep(200);
      assert.deepEqual(childrenMatching(stale.proc.pid!, "sim"), [], "the stale MARS is still running");
      // Moved into place once: by the taker, or by the stale attempt if it passed its fence before
      // the taker claimed (the taker then adopts that file, as the record's worker).
      assert.equal(s.commits().get(done.id), 1, "the result was not moved into place exactly once");
      t.diagnostic(`worker partitioned: the job finished ${done.at - faultAt} ms after the fault`);
    });
  });

  it("a client cut off from its node carries on through another", async (t) => {
    await withSetup(t, async (s) => {
      await s.worker("w1");
      await s.worker("w2");
      const count = 24;
      const c = s.client(["load", String(count), "300"]);
      const first = JSON.parse(
        await c.out.waitFor((l) => l.includes('"t":"server"'), 30_000, "the client's server"),
      ) as { name: string };
      await c.out.waitFor(
        () => c.out.all.filter((x) => x.includes('"t":"done"')).length >= 3,
        60_000,
        "3 jobs done",
      );
      const faultAt = Date.now();
      await s.lab.cut("c1", first.name);
      const moved = JSON.parse(
        await c.out.waitFor(
          (l) => l.includes('"t":"server"') && !l.includes(`"name":"${first.name}"`),
          60_000,
          "the client on another node",
        ),
      ) as { name: string; at: number };
      await c.out.waitFor((l) => l.includes('"t":"end"'), 150_000, "the load run's end");
      const done = c.out.json<Done>().filter((d) => d.t === "done");
      assertAllSucceeded(s, done, count);
      t.diagnostic(
        `client cut from ${first.name}: on ${moved.name} after ${moved.at - faultAt} ms; longest wait for a completion ${stallAfter(done, faultAt)} ms`,
      );
    });
  });

  it("the work queue's stream leader partitioned away under load: a new one takes over, no job lost", async (t) => {
    await withSetup(t, async (s) => {
      await s.worker("w1");
      await s.worker("w2");
      const count = 30;
      const c = s.client(["load", String(count), "150"]);
      await c.out.waitFor((l) => l.includes('"t":"done"'), 60_000, "a first job done");
      const leader = await s.leader(JOBS_STREAM);
      assert.ok(NODES.includes(leader), `no leader named: ${leader}`);
      const faultAt = Date.now();
      await s.lab.partition(leader);
      const next = await (async () => {
        const until = Date.now() + 30_000;
        while (Date.now() < until) {
          const now = await s.leader(JOBS_STREAM).catch(() => "");
          if (now && now !== leader) return now;
          await sleep(250);
        }
        return "";
      })();
      const electedAfter = Date.now() - faultAt;
      assert.ok(next && next !== leader, "no new leader within 30 s");
      await sleep(3000);
      await s.lab.heal(leader);
      await c.out.waitFor((l) => l.includes('"t":"end"'), 150_000, "the load run's end");
      const done = c.out.json<Done>().filter((d) => d.t === "done");
      assertAllSucceeded(s, done, count);
      t.diagnostic(
        `leader ${leader} partitioned: ${next} leads within ${electedAfter} ms; longest wait for a completion ${stallAfter(done, faultAt)} ms (median gap before: ${gapBefore(done, faultAt)} ms)`,
      );
    });
  });
});
