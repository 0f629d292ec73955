import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { connect } from "@nats-io/transport-node";
import { jetstreamManager } from "@nats-io/jetstream";
import { LocalNatsCluster } from "../src/local/server.js";
import { Fleet } from "../src/client/fleet.js";
import { loadConfig } from "../src/config/load.js";
import { startWorkerProcess, type WorkerProcess } from "../src/worker/process.js";
import { gribLs } from "./helpers/grib.js";
import { claimed, job, storeOn, writesAround } from "./helpers/unseen-writes.js";
import { othersUnseen } from "../src/broker/records.js";
import { initialRecord, type JobRecord } from "../src/broker/schemas.js";
import { EVENTS_STREAM, JOBS_BUCKET, JOBS_STREAM, QOS_BUCKET, kvStream } from "../src/broker/subjects.js";
import { Kvm } from "@nats-io/kv";
import { SlotTable } from "../src/qos/store.js";
import type { LimitSlot } from "../src/qos/evaluate.js";
import type { LimitRule } from "../src/qos/rules.js";
import { silentLogger } from "../src/core/index.js";

let cluster: LocalNatsCluster;
let sharedRoot: string;
let worker: WorkerProcess | undefined;
before(async () => {
  cluster = await LocalNatsCluster.start(3);
  sharedRoot = await mkdtemp(join(tmpdir(), "mars-cluster-"));
});
after(async () => {
  worker?.kill("SIGKILL");
  await worker?.exited;
  await cluster.dispose();
  await rm(sharedRoot, { recursive: true, force: true });
});

/** The fleet's settings on the cluster: its nodes, the shared root, everything at 3 replicas. */
const clusterEnv = (): Record<string, string> => ({
  MARS_NATS_SERVERS: cluster.servers.join(","),
  MARS_SHARED_ROOT: sharedRoot,
  MARS_STREAM_REPLICAS: "3",
  MARS_HEARTBEAT_INTERVAL: "500ms",
  MARS_REQUEST_TIMEOUT: "10s",
  MARS_CONFIG_FILE: "",
});

describe("fleet on a 3-node JetStream cluster", () => {
  it("replicates the topology three times and finishes a job while one node is down", async () => {
    const env = clusterEnv();
    worker = await startWorkerProcess("cluster-worker", {
      ...process.env,
      ...env,
      MARS_SIM_FIELD_DELAY_MS: "300",
    });
    const fleet = await Fleet.connect({ config: loadConfig({ env }) });
    try {
      const nc = await connect({ servers: cluster.servers });
      const jsm = await jetstreamManager(nc);
      for (const stream of [JOBS_STREAM, EVENTS_STREAM])
        assert.equal((await jsm.streams.info(stream)).config.num_replicas, 3);
      await nc.close();

      const job = await fleet.submit(
        { param: "2t", date: "20240101/to/20240110", grid: "10/10" },
        { targetDir: "cluster" },
      );
      for await (const ev of job.events()) if (ev.type === "state" && ev.state === "running") break;
      await cluster.nodes[2]!.stop();
      const result = await job.result();
      assert.equal((await gribLs(result.target, ["shortName"])).length, 10);
    } finally {
      await fleet.close();
    }
  });
});

/** The server process leading `stream`'s group on the cluster. */
async function leaderOf(stream: string): Promise<{ pid: number; url: string; version: string }> {
  const nc = await connect({ servers: cluster.servers });
  try {
    const name = (await (await jetstreamManager(nc)).streams.info(stream)).cluster?.leader;
    const node = cluster.nodes.find((n) => n.serverName === name);
    assert.ok(node?.pid, `${stream}'s leader ${name} is one of the cluster's nodes`);
    return { pid: node.pid, url: node.url, version: nc.info?.version ?? "" };
  } finally {
    await nc.close();
  }
}

/** Whether nats-server `version` checks a clustered compare-and-set only when proposing it (2.9). */
const checksWhenProposedOnly = (version: string): boolean => /^2\.9\./.test(version);

/** Run `writes` while `pid` is paused (SIGSTOP) for 300 ms: what they send queues there. */
async function whilePaused<T>(pid: number, writes: () => Array<Promise<T>>): Promise<T[]> {
  process.kill(pid, "SIGSTOP");
  let sent: Array<Promise<T>>;
  try {
    sent = writes();
    await new Promise((r) => setTimeout(r, 300));
  } finally {
    process.kill(pid, "SIGCONT");
  }
  return Promise.all(sent);
}

describe("job records on a cluster", { timeout: 60_000 }, () => {
  it("a split job's parts and fan-in fence on the cluster, each reading its unseen writes, and commit once", async () => {
    const env = clusterEnv();
    const fleet = await Fleet.connect({ config: loadConfig({ env }) });
    try {
      const job = await fleet.submit(
        { param: "2t/msl", date: "20240101/to/20240103", grid: "10/10" },
        { targetDir: "cluster", targetFname: "split.grib", split: ["param"] },
      );
      const result = await job.result({ signal: AbortSignal.timeout(45_000) });
      assert.equal((await gribLs(result.target, ["shortName"])).length, 6);
      const logs = worker!.logs.filter((l) => String(l["msg"]).includes("did not see"));
      assert.deepEqual(logs, [], "no write went unseen on a cluster with every node up");
    } finally {
      await fleet.close();
    }
  });

  it("a fence reads the writes stored between its claim and itself, oldest first (what a cluster may let through unseen)", async () => {
    await (await Fleet.connect({ config: loadConfig({ env: clusterEnv() }) })).close(); // the topology, if not there yet
    const found = await writesAround(cluster.servers);
    const [first, second, third] = found.writes;
    assert.equal(third.seenUpTo, second.revision);
    assert.deepEqual(
      found.between.map((w) => [w.revision, w.record.claim, w.record.committing?.claim]),
      [[second.revision, "b", "b"]],
    );
    assert.ok(first.revision < second.revision && second.revision < third.revision);
    assert.deepEqual(found.adjacent, [], "nothing lies between two writes of the key");
  });

  it("two compare-and-sets on one revision that reach a paused leader are both stored (nats-server 2.9); the later one's read finds the other", async () => {
    const leader = await leaderOf(kvStream(JOBS_BUCKET));
    // Two writers, each connected to the leader itself: their writes queue there while it is paused.
    const a = await storeOn([leader.url]);
    const b = await storeOn([leader.url]);
    try {
      const id = `race-${Date.now()}`;
      const first = await a.store.mutate(id, claimed("a"), {
        record: initialRecord(job(id), 3),
        revision: 0,
      });
      const fence = { attempt: 1, ino: 1, bytes: 1, elapsedMs: 1, claim: "a" };
      const [fenced, claimedB] = await whilePaused(leader.pid, () => [
        a.store.mutate(id, (r) => ({ ...r, committing: fence }), first),
        b.store.mutate(id, claimed("b"), first),
      ]);
      const [earlier, later] = [fenced!, claimedB!].sort((x, y) => x.revision - y.revision);
      const raced = earlier!.seenUpTo === first.revision && later!.seenUpTo === first.revision;
      if (checksWhenProposedOnly(leader.version))
        assert.ok(raced, `nats-server ${leader.version} let only one of the two through`);
      // Whoever wrote later reads the write it did not see; a server that checks as it applies
      // made it read again instead (it had seen the other write), and then nothing lies between.
      const mine = (rec: JobRecord): boolean => rec.claim === later!.record.claim;
      const unseen = othersUnseen(await b.store.writesBetween(id, later!.seenUpTo!, later!.revision), mine);
      if (raced) {
        assert.deepEqual(unseen?.revisions, [earlier!.revision]);
        // The claim stored after the fence finds that fence: the commit it would otherwise miss.
        if (later === claimedB) assert.equal(unseen?.fence?.revision, earlier!.revision);
      } else assert.equal(unseen, undefined);
    } finally {
      await a.close();
      await b.close();
    }
  });

  it("a QoS slot with room for one, taken by two workers at a paused leader, ends with one holder", async () => {
    const leader = await leaderOf(kvStream(QOS_BUCKET));
    const tables = await Promise.all(
      [0, 1].map(async () => {
        const nc = await connect({ servers: leader.url });
        const kv = await new Kvm(nc).open(QOS_BUCKET);
        return {
          nc,
          table: new SlotTable(await jetstreamManager(nc), kv, () => Promise.resolve(false), silentLogger()),
        };
      }),
    );
    try {
      const key = `race-${Date.now()}`;
      const slot: LimitSlot = { rule: { name: key, limit: 1 } as LimitRule, value: undefined, key };
      const holder = (job: string) => ({ job, attempt: 1, worker: `w-${job}`, at: Date.now() });
      // The key exists (a first write is checked as it is stored), and both tables know it.
      assert.equal((await tables[0]!.table.acquire([slot], holder("warm"))).ok, true);
      await tables[0]!.table.release([slot], holder("warm"));
      // Read once every replica has that write (a read may be answered by any of them), so that
      // both tables compare-and-set against the same, latest revision.
      await new Promise((r) => setTimeout(r, 500));
      for (const t of tables) await t.table.holders(key);
      const results = await whilePaused(leader.pid, () =>
        tables.map((t, i) => t.table.acquire([slot], holder(`j${i}`))),
      );
      const holders = await tables[0]!.table.holders(key);
      assert.equal(results.filter((r) => r.ok).length, 1, `taken by ${JSON.stringify(results)}`);
      assert.deepEqual(
        holders.map((h) => h.job),
        [`j${results.findIndex((r) => r.ok)}`],
      );
    } finally {
      for (const t of tables) await t.nc.close();
    }
  });
});
