/**
 * Security against a real nats-server configured by `mars-fleet broker auth` (nkey users per role)
 * with TLS from a throwaway CA: the fleet's main paths work with nothing but each process's role,
 * and every forbidden act is refused with a permissions error and changes nothing.
 */
import assert from "node:assert/strict";
import { mkdir, mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { AckPolicy, jetstream, jetstreamManager, type JetStreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import { errors, type NatsConnection } from "@nats-io/transport-node";
import { createHash } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { connectBroker, connectWithConfig } from "../src/broker/connection.js";
import { createUser } from "@nats-io/nkeys";
import { writeFile } from "node:fs/promises";
import { OPEN_FLEET, recordAuthority } from "../src/broker/signing.js";
import { writeRules } from "../src/qos/store.js";
import { parseRules } from "../src/qos/rules.js";
import { ApiKeys } from "../src/api/keys.js";
import { eventually } from "./helpers/proc.js";
import { isPermissionDenied } from "../src/broker/nats-errors.js";
import {
  JOBS_STREAM,
  EVENTS_STREAM,
  JOBS_BUCKET,
  QOS_RULES_KEY,
  WORKERS_BUCKET,
  API_KEYS_BUCKET,
  consumerName,
  laneConsumerName,
  subjects,
} from "../src/broker/subjects.js";
import { askForLane } from "../src/broker/keeper.js";
import { Fleet } from "../src/client/fleet.js";
import { errorCode } from "./helpers/errors.js";
import { TestFleet } from "./helpers/fleet.js";
import { rawHttp, assemble } from "./helpers/http-chunked.js";
import { helperPids } from "./helpers/proc.js";
import { RawWebSocket } from "./helpers/ws-client.js";
import { makeTls } from "./helpers/tls.js";

const SMALL = { param: "2t", date: "20240101", grid: "10/10" };

let tf: TestFleet;
before(async () => {
  tf = await TestFleet.start({ secure: true });
});
const otherKeys: string[] = [];
after(async () => {
  await tf.dispose();
  for (const d of otherKeys) await rm(d, { recursive: true, force: true });
});

/** A signing key of someone else's, in a file. */
async function otherSigningKey(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "mars-other-"));
  otherKeys.push(dir);
  const file = join(dir, "other.nk");
  await writeFile(file, new TextDecoder().decode(createUser().getSeed()), { mode: 0o600 });
  return file;
}

/** `op` fails with a NATS permissions violation (the error itself, or as a request's cause). */
async function denied(what: string, op: () => Promise<unknown>): Promise<void> {
  try {
    await op();
  } catch (err) {
    assert.ok(isPermissionDenied(err), `${what}: expected a permissions violation, got ${String(err)}`);
    return;
  }
  assert.fail(`${what}: was allowed`);
}

/** A subscription the server refuses: the subscription ends with a permissions violation. */
async function subscriptionDenied(nc: NatsConnection, subject: string): Promise<void> {
  const sub = nc.subscribe(subject);
  const outcome = await Promise.race([
    (async () => {
      try {
        for await (const m of sub) void m;
        return "ended";
      } catch (err) {
        return err instanceof errors.PermissionViolationError ? "denied" : String(err);
      }
    })(),
    new Promise<string>((r) => setTimeout(() => r("no answer within 3 s"), 3000)),
  ]);
  assert.equal(outcome, "denied", `subscribing to ${subject}`);
}

async function counts(jsm: JetStreamManager): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const s of [JOBS_STREAM, EVENTS_STREAM, `KV_${JOBS_BUCKET}`, `KV_${WORKERS_BUCKET}`])
    out[s] = (await jsm.streams.info(s)).state.messages;
  return out;
}

describe("security: per-role credentials over TLS", { timeout: 120_000 }, () => {
  it("runs, records, cancels and fails over with nothing but each role's rights", async () => {
    const queue = TestFleet.queue("sec");
    const settings = { queue, concurrency: 1 };
    await tf.worker(settings);
    const fleet = await tf.client(settings);
    const job = await fleet.submit(SMALL, {
      targetDir: "sec",
      environ: { user_id: "alice", request_id: "sec-1" },
    });
    const result = await job.result();
    assert.ok((await readFile(result.target)).length > 0);
    const rec = await job.status();
    assert.equal(rec.state, "succeeded");
    // Who asked: the end user from the environ, and the NATS identity of the submitting service.
    assert.equal(rec.submittedBy?.user, "alice");
    assert.match(rec.submittedBy?.nats ?? "", /^U[A-Z2-7]{55}$/);

    // A queued job (no worker on its queue) is cancelled at once; a running one is stopped.
    const idle = TestFleet.queue("sec-idle");
    const idleFleet = await tf.client({ queue: idle });
    const queued = await idleFleet.submit(SMALL, { targetDir: "sec" });
    assert.equal(await queued.cancel(), true);
    assert.equal(await errorCode(queued.result()), "JOB_CANCELLED");

    // Failover: the worker running a job is killed with SIGKILL; another takes it over.
    const slow = { MARS_SIM_FIELD_DELAY_MS: "300", MARS_SIM_SPAWN_CHILD: "1" };
    const kq = TestFleet.queue("sec-kill");
    const first = await tf.worker({ queue: kq, concurrency: 1 }, slow);
    const kfleet = await tf.client({ queue: kq });
    const long = await kfleet.submit({ param: "2t", date: "20240101/to/20240106" }, { targetDir: "sec" });
    const lines: string[] = [];
    for await (const ev of long.events()) {
      if (ev.type === "log") lines.push(ev.line);
      if (helperPids(lines).length > 0) break;
    }
    await tf.worker({ queue: kq, concurrency: 1 }, slow);
    first.kill("SIGKILL");
    await long.result();
    assert.equal((await long.status()).attempt, 2);

    const running = await kfleet.submit({ param: "2t", date: "20240101/to/20240120" }, { targetDir: "sec" });
    for await (const ev of running.events()) if (ev.type === "log") break;
    assert.equal(await running.cancel(), true);
    assert.equal(await errorCode(running.result()), "JOB_CANCELLED");
  });

  it("serves the pipe and shares gateways as a submitter", async () => {
    const queue = TestFleet.queue("sec-gw");
    await tf.worker({ queue });
    const g = await tf.gateway({ queue });
    const res = await rawHttp(g.pipePort, {
      method: "POST",
      path: "/",
      body: JSON.stringify({ request: SMALL, environ: { request_id: "sec-pipe", user_id: "bob" } }),
    });
    assert.equal(res.status, 200);
    assert.ok(assemble(res.chunks).ended, "no ENDR");
    // Through the results object store: the worker uploads, the gateway downloads.
    const og = await tf.gateway({ queue, gatewayData: "objectstore" });
    const viaStore = await rawHttp(og.pipePort, {
      method: "POST",
      path: "/",
      body: JSON.stringify({ request: SMALL, environ: { request_id: "sec-obj", user_id: "bob" } }),
    });
    assert.equal(viaStore.status, 200);
    assert.deepEqual(assemble(viaStore.chunks).data, assemble(res.chunks).data);

    await mkdir(join(tf.sharedRoot, "secws"), { recursive: true });
    const ws = await RawWebSocket.open(g.sharesPort);
    ws.send(
      JSON.stringify({
        cmd: "start",
        requests: [SMALL],
        environ: { request_id: "sec-ws", user_id: "bob", namespace: "ns", host: "h", username: "ns:bob" },
        target: "/secws/data.grib",
      }),
    );
    const finished = await ws.waitFor((f) => f["status"] === "finished", "the finished frame");
    assert.equal(finished["returncode"], 0);
  });

  it("needed no right beyond each role's on those paths (the server logged no violation)", () => {
    assert.deepEqual(tf.server.violations, []);
  });

  it("lets an observer look (status, jobs, logs) and nothing more", async () => {
    const queue = TestFleet.queue("sec-obs");
    await tf.worker({ queue });
    const submitted = await (await tf.client({ queue })).submit(SMALL, { targetDir: "sec" });
    await submitted.result();
    const observer = await Fleet.connect({ config: tf.config({ queue }, "observer") });
    try {
      const job = await observer.job(submitted.id);
      assert.equal((await job.status()).state, "succeeded");
      assert.ok((await observer.jobs()).some((r) => r.id === submitted.id));
      assert.ok((await job.storedLog()).some((l) => l.includes("No errors reported")));
      assert.equal(await errorCode(observer.submit(SMALL, { targetDir: "sec" })), "PERMISSION_DENIED");
    } finally {
      await observer.close();
    }
  });

  it("never writes a credential into a log", async () => {
    const seeds = await Promise.all(
      (["worker", "submitter"] as const).map(async (r) =>
        (await readFile(tf.config({}, r).creds, "utf8")).trim(),
      ),
    );
    const logged = JSON.stringify(tf.workers.map((w) => w.logs));
    assert.ok(logged.includes("worker started"), "no worker logs to look at");
    for (const seed of seeds) assert.ok(!logged.includes(seed), "a seed is in a worker's log");
  });

  it("refuses each role what its table forbids, and nothing changes", async () => {
    const queue = TestFleet.queue("sec-deny");
    await tf.provisionFor({ queue });
    const fleet = await tf.client({ queue });
    const victim = await fleet.submit(SMALL, { targetDir: "sec" }); // no worker: stays queued
    const admin = await tf.connectAs("admin");
    const adminJsm = await jetstreamManager(admin);
    const before = await counts(adminJsm);
    const consumerBefore = await adminJsm.consumers.info(JOBS_STREAM, consumerName(queue));

    const submitter = await tf.connectAs("submitter");
    const worker = await tf.connectAs("worker");
    const observer = await tf.connectAs("observer");
    try {
      // Submitter: may not consume the work queue, forge a record's state, touch the registry, delete.
      const sjs = jetstream(submitter);
      const sjsm = await jetstreamManager(submitter, { checkAPI: false });
      await denied("submitter pulls a job", () =>
        submitter.request(`$JS.API.CONSUMER.MSG.NEXT.${JOBS_STREAM}.${consumerName(queue)}`, "", {
          timeout: 2000,
        }),
      );
      await denied("submitter acks a job", () =>
        submitter.request(`$JS.ACK.${JOBS_STREAM}.${consumerName(queue)}.1.1.1.1.0`, "", { timeout: 2000 }),
      );
      const skv = await new Kvm(sjs).open(JOBS_BUCKET);
      const forged = {
        ...(await victim.status()),
        state: "succeeded",
        result: { target: "/etc/passwd", bytes: 1, elapsedMs: 1 },
      };
      await denied("submitter forges a record's state", () =>
        skv.put(`${victim.id}.status`, JSON.stringify(forged)),
      );
      const wkv = await new Kvm(sjs).open(WORKERS_BUCKET);
      await denied("submitter registers a worker", () => wkv.put("fake-worker", "{}"));
      await denied("submitter deletes the jobs stream", () => sjsm.streams.delete(JOBS_STREAM));
      await denied("submitter deletes the jobs bucket", () => sjsm.streams.delete(`KV_${JOBS_BUCKET}`));
      await denied("submitter deletes the queue's consumer", () =>
        sjsm.consumers.delete(JOBS_STREAM, consumerName(queue)),
      );
      await denied("submitter forges a max-deliveries advisory", () =>
        submitter.request(subjects.maxDeliveries(consumerName(queue)), "{}", { timeout: 2000 }),
      );
      await denied("submitter purges the events stream", () => sjsm.streams.purge(EVENTS_STREAM));
      await denied("submitter purges one job's events", () =>
        sjsm.streams.purge(EVENTS_STREAM, { filter: subjects.jobEvents(victim.id) }),
      );
      await denied("submitter writes a job's event", () =>
        sjs.publish(subjects.state(victim.id), JSON.stringify({ state: "succeeded", attempt: 1, at: 1 })),
      );
      await denied("submitter makes a consumer (its deliveries could be aimed)", () =>
        sjsm.consumers.add(EVENTS_STREAM, { ack_policy: AckPolicy.None, deliver_subject: "anywhere" }),
      );

      // Worker: may not publish jobs, create or delete streams, consumers or buckets.
      const wjs = jetstream(worker);
      const wjsm = await jetstreamManager(worker, { checkAPI: false });
      await denied("worker publishes a job", () => wjs.publish(subjects.jobs(queue), "{}"));
      await denied("worker deletes the events stream", () => wjsm.streams.delete(EVENTS_STREAM));
      await denied("worker deletes the jobs bucket", () => wjsm.streams.delete(`KV_${JOBS_BUCKET}`));
      await denied("worker deletes the queue's consumer", () =>
        wjsm.consumers.delete(JOBS_STREAM, consumerName(queue)),
      );
      await denied("worker creates a consumer that is not a lane's", () =>
        wjsm.consumers.add(JOBS_STREAM, {
          durable_name: "rogue",
          filter_subject: subjects.jobs(`${queue}-other`),
          ack_policy: AckPolicy.Explicit,
        }),
      );
      await denied("worker creates a stream", () =>
        wjsm.streams.add({ name: "ROGUE", subjects: ["rogue.>"] }),
      );
      await denied("worker writes a submission", async () => {
        const kv = await new Kvm(wjs).open(JOBS_BUCKET);
        await kv.put(`${victim.id}.submitted`, "{}");
      });

      // Observer: reads, and nothing else (no cancel, no record write, no job).
      const ojs = jetstream(observer);
      const okv = await new Kvm(ojs).open(JOBS_BUCKET);
      assert.ok(await okv.get(`${victim.id}.submitted`), "the observer cannot read records");
      await denied("observer publishes a job", () => ojs.publish(subjects.jobs(queue), "{}"));
      await denied("observer writes a record", () => okv.put(`${victim.id}.status`, "{}"));
      await denied("observer cancels", () =>
        observer.request(subjects.cancel(victim.id), "", { timeout: 2000 }),
      );
      const ojsm = await jetstreamManager(observer, { checkAPI: false });
      await denied("observer reads a queued job's message", () =>
        ojsm.streams.getMessage(JOBS_STREAM, { last_by_subj: `${subjects.jobs(queue)}.>` }),
      );
      await denied("observer makes a consumer", () =>
        ojsm.consumers.add(`KV_${JOBS_BUCKET}`, { ack_policy: AckPolicy.None, deliver_subject: "anywhere" }),
      );
      await subscriptionDenied(observer, "_INBOX.>"); // other users' replies
      await subscriptionDenied(submitter, subjects.allCancels);
      await subscriptionDenied(worker, "_INBOX.>"); // a worker hears new jobs, but not others' replies
    } finally {
      await Promise.all([submitter, worker, observer].map((nc) => nc.close()));
    }
    assert.ok(tf.server.violations.length > 0, "the server logged none of these violations");
    // Nothing changed: read back as admin.
    assert.deepEqual(await counts(adminJsm), before);
    const consumerAfter = await adminJsm.consumers.info(JOBS_STREAM, consumerName(queue));
    assert.equal(consumerAfter.num_pending, consumerBefore.num_pending);
    assert.equal(consumerAfter.delivered.stream_seq, consumerBefore.delivered.stream_seq);
    const rec = await victim.status();
    assert.equal(rec.state, "queued");
    assert.equal(rec.cancelRequested, false);
    await admin.close();
  });

  // NATS permissions match a consumer's name and filter tokens as wildcards, so a role allowed to
  // make lane consumers could name the queue's own consumer or a literal `*` lane. Workers may make
  // none: they ask the keeper, which checks both (broker/keeper.ts).
  it("a worker cannot re-point the queue's consumer nor make one over every lane, itself or through the keeper", async () => {
    const queue = TestFleet.queue("sec-repoint");
    await tf.provisionFor({ queue });
    const worker = await tf.connectAs("worker");
    const adminNc = await tf.connectAs("admin");
    const admin = await jetstreamManager(adminNc);
    try {
      const name = consumerName(queue);
      const filter = subjects.lane(queue, "x");
      const create = (durable: string, filterSubject: string): Promise<unknown> =>
        worker.request(
          `$JS.API.CONSUMER.CREATE.${JOBS_STREAM}.${durable}.${filterSubject}`,
          JSON.stringify({
            stream_name: JOBS_STREAM,
            config: { durable_name: durable, filter_subject: filterSubject, ack_policy: "explicit" },
          }),
          { timeout: 2000 },
        );
      await denied("worker re-points the queue's consumer", () => create(name, filter));
      await denied("worker makes a consumer over every lane", () => create("rogue", subjects.lanes(queue)));
      await denied("worker makes a lane's consumer itself", () =>
        create(laneConsumerName(queue, "x"), filter),
      );
      // Through the keeper: a wildcard lane, a bad cap, and a name taken by a consumer of another filter.
      const ask = { cap: -1, idleMs: 0 };
      assert.equal(await errorCode(askForLane(worker, queue, "*", ask, 5000)), "MESSAGE_INVALID");
      assert.equal(await errorCode(askForLane(worker, queue, ">", ask, 5000)), "MESSAGE_INVALID");
      const raw = await worker.request(subjects.keeper(queue, "x"), JSON.stringify({ cap: 0, idleMs: 0 }), {
        timeout: 5000,
      });
      assert.equal(
        (JSON.parse(new TextDecoder().decode(raw.data)) as { error: { code: string } }).error.code,
        "MESSAGE_INVALID",
      );
      await admin.consumers.add(JOBS_STREAM, {
        durable_name: laneConsumerName(queue, "y"),
        filter_subject: subjects.lane(queue, "z"),
        ack_policy: AckPolicy.Explicit,
      });
      assert.equal(await errorCode(askForLane(worker, queue, "y", ask, 5000)), "CONFIG_INVALID");
      // Read back as admin: the queue's consumer and the hand-made one are as they were, and no
      // consumer of the queue has a wildcard filter.
      assert.equal(
        (await admin.consumers.info(JOBS_STREAM, name)).config.filter_subject,
        subjects.jobs(queue),
      );
      assert.equal(
        (await admin.consumers.info(JOBS_STREAM, laneConsumerName(queue, "y"))).config.filter_subject,
        subjects.lane(queue, "z"),
      );
      assert.equal(await admin.consumers.info(JOBS_STREAM, "rogue").catch(() => undefined), undefined);
      const filters: string[] = [];
      for await (const c of admin.consumers.list(JOBS_STREAM))
        if (c.name.startsWith(name)) filters.push(c.config.filter_subject ?? "");
      assert.deepEqual(
        filters.filter((f) => f.includes("*") || f.includes(">")),
        [],
      );
      // Control: a good request is answered, and makes the lane's consumer with the queue's settings.
      await askForLane(worker, queue, "x", { cap: 2, idleMs: 60_000 }, 5000);
      const made = await admin.consumers.info(JOBS_STREAM, laneConsumerName(queue, "x"));
      assert.equal(made.config.filter_subject, filter);
      assert.equal(made.config.max_ack_pending, 2);
      assert.equal(made.config.ack_wait, (await admin.consumers.info(JOBS_STREAM, name)).config.ack_wait);
    } finally {
      await Promise.all([worker.close(), adminNc.close()]);
    }
  });

  it("keeps a record readable when a submitter writes an invalid submission over it", async () => {
    const queue = TestFleet.queue("sec-garbage");
    await tf.worker({ queue });
    const fleet = await tf.client({ queue });
    const done = await fleet.submit(SMALL, { targetDir: "sec" });
    await done.result();
    const idle = await tf.client({ queue: TestFleet.queue("sec-garbage-idle") });
    const queued = await idle.submit(SMALL, { targetDir: "sec" });
    const submitter = await tf.connectAs("submitter");
    try {
      const kv = await new Kvm(jetstream(submitter)).open(JOBS_BUCKET);
      await kv.put(`${done.id}.submitted`, "{not json");
      const claim = { ...(await queued.status()), state: "succeeded" };
      await kv.put(`${queued.id}.submitted`, JSON.stringify(claim));
    } finally {
      await submitter.close();
    }
    const observer = await Fleet.connect({ config: tf.config({ queue }, "observer") });
    try {
      // Everyone still reads each record: the status, or the last valid submission.
      assert.equal((await (await observer.job(done.id)).status()).state, "succeeded");
      assert.equal((await (await observer.job(queued.id)).status()).state, "queued");
      assert.ok((await observer.jobs()).some((r) => r.id === queued.id));
    } finally {
      await observer.close();
    }
    // And the next change is made over the invalid entry.
    assert.equal(await queued.cancel(), true);
    assert.equal((await queued.status()).state, "cancelled");
  });

  it("puts in force only the QoS rules and API keys the admin signed", async () => {
    const queue = TestFleet.queue("sec-signed");
    await tf.provisionFor({ queue });
    const admin = await connectWithConfig(tf.config({ queue }, "admin"), "t-admin");
    const fleet = await tf.client({ queue });
    const follower = await fleet.qosRules();
    const qos = await admin.qosKv();
    const text = "rules:\n  - name: no-rain\n    match: { param: tp }\n    deny: no rain today\n";
    const signed = { text, rules: parseRules(text), appliedAt: Date.now() };
    await writeRules(qos, admin.authority, signed);
    assert.ok(
      await eventually(() => follower.rules.rules.length === 1, 5000),
      "the signed rules never came in force",
    );

    // Writes that reach the bucket another way: unsigned, signed by another key, garbage.
    const other = recordAuthority({ trustKey: "", signingKey: await otherSigningKey() }, false);
    const empty = { text: "", rules: parseRules(""), appliedAt: Date.now() };
    await writeRules(qos, other, empty);
    await writeRules(qos, OPEN_FLEET, empty);
    await qos.put(QOS_RULES_KEY, "{}");
    await sleep(500);
    assert.equal(follower.rules.rules.length, 1, "a forged write changed the rules in force");
    assert.equal(
      await errorCode(fleet.submit({ ...SMALL, param: "tp" }, { targetDir: "sec" })),
      "QOS_DENIED",
    );

    // API keys: the admin's opens; an unsigned one, and a signed one moved to another id, do not.
    const asAdmin = await ApiKeys.open(admin.js, admin.authority);
    const { token } = await asAdmin.add("alice", "user");
    const asApi = await ApiKeys.open(fleet.connection.js, fleet.connection.authority);
    assert.equal((await asApi.verify(token))?.user, "alice");
    const keysKv = await new Kvm(admin.js).open(API_KEYS_BUCKET);
    const secret = "s".repeat(32);
    const hash = createHash("sha256").update(secret).digest("hex");
    await keysKv.put(
      "aaaaaaaaaaaa",
      JSON.stringify({ id: "aaaaaaaaaaaa", user: "mallory", role: "admin", hash, createdAt: 1 }),
    );
    assert.equal(await asApi.verify(`mfk_aaaaaaaaaaaa_${secret}`), undefined, "an unsigned key opened");
    const realId = token.split("_")[1]!;
    const real = JSON.parse(new TextDecoder().decode((await keysKv.get(realId))!.value)) as Record<
      string,
      unknown
    >;
    await keysKv.put("bbbbbbbbbbbb", JSON.stringify({ ...real, id: "bbbbbbbbbbbb", hash }));
    assert.equal(await asApi.verify(`mfk_bbbbbbbbbbbb_${secret}`), undefined, "a moved key opened");
    assert.deepEqual(
      (await asAdmin.list()).map((k) => k.user),
      ["alice"],
    );
    await admin.nc.close();

    // A process with credentials and no trust key does not start: it would trust any record.
    const noTrust = { ...tf.config({ queue }), trustKey: "" };
    assert.equal(await errorCode(Fleet.connect({ config: noTrust })), "CONFIG_INVALID");
  });

  it("refuses a connection without credentials, with wrong credentials, or without the server's CA", async () => {
    await assert.rejects(
      tf.connectAs("anonymous"),
      (err: unknown) => err instanceof errors.AuthorizationError,
    );
    const config = tf.config({ queue: "q" });
    const dir = await mkdtemp(join(tmpdir(), "mars-wrong-"));
    try {
      const other = await makeTls(dir, "other");
      const wrongCa = connectBroker({
        servers: config.servers,
        name: "t",
        timeoutMs: 5000,
        security: { ...config, tlsCa: other.ca },
      });
      assert.equal(await errorCode(wrongCa), "BROKER_AUTH");
      const noCreds = connectBroker({
        servers: config.servers,
        name: "t",
        timeoutMs: 5000,
        security: { ...config, creds: "" },
      });
      assert.equal(await errorCode(noCreds), "BROKER_AUTH");
      const userPass = connectBroker({
        servers: config.servers,
        name: "t",
        timeoutMs: 5000,
        security: { ...config, creds: "", natsUser: "mars-admin", natsPassword: "guess" },
      });
      assert.equal(await errorCode(userPass), "BROKER_AUTH");
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("says the topology is missing when a worker or client may not create it", async () => {
    const queue = TestFleet.queue("sec-missing"); // never provisioned by an admin
    const client = Fleet.connect({ config: tf.config({ queue }) });
    assert.equal(await errorCode(client), "TOPOLOGY_MISSING");
    await assert.rejects(client, /run `mars-fleet broker init` with admin credentials/);
    const w = await import("../src/worker/worker.js");
    const worker = w.Worker.start({ config: tf.config({ queue }, "worker"), workerId: "w-missing" });
    assert.equal(await errorCode(worker), "TOPOLOGY_MISSING");
  });
});
