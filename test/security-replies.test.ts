/**
 * Replies cannot be aimed: every request each role may send is sent again with its reply subject
 * (and, for consumers, its deliver subject) aimed at each subject the role may not publish to, and
 * the admin reads afterwards that none of those subjects changed. The role table itself
 * (rolePermissions) is the list of requests, so a right added later is tried too.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { AckPolicy, jetstream, jetstreamManager, type JetStreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import { publicKeyOf } from "../src/broker/auth.js";
import { readFileSync } from "node:fs";
import { rolePermissions, subjectIntersection, type Role } from "../src/broker/roles.js";
import {
  DEAD_STREAM,
  EVENTS_STREAM,
  JOBS_BUCKET,
  JOBS_STREAM,
  QOS_BUCKET,
  QOS_RULES_KEY,
  WORKERS_BUCKET,
  laneConsumerName,
  subjects,
  API_JOBS_BUCKET,
  API_KEYS_BUCKET,
  CALLBACKS_BUCKET,
} from "../src/broker/subjects.js";
import { TestFleet } from "./helpers/fleet.js";

const SMALL = { param: "2t", date: "20240101", grid: "10/10" };
const ATTACKERS = ["worker", "keeper", "submitter", "observer"] as const;
type Attacker = (typeof ATTACKERS)[number];

let tf: TestFleet;
before(async () => {
  tf = await TestFleet.start({ secure: true });
});
after(async () => {
  await tf.dispose();
});

/** A protected subject and how the admin tells whether it changed. */
interface Target {
  subject: string;
  /** Stored: the key's revision or the subject's message count, as the admin reads it. */
  read?: (jsm: JetStreamManager) => Promise<number>;
  /** Not stored (core NATS): who would hear it, counting. */
  listener?: Attacker;
}

const identityOf = (role: Role): string =>
  publicKeyOf(readFileSync(tf.config({}, role).creds, "utf8").trim());

/** How many messages of `stream` are on exactly `subject` (0 when none). */
async function countOn(jsm: JetStreamManager, stream: string, subject: string): Promise<number> {
  const info = await jsm.streams.info(stream, { subjects_filter: subject });
  return info.state.subjects?.[subject] ?? 0;
}

/** A KV key's revision (0 when it has none). */
function kvRevision(bucket: string, key: string): (jsm: JetStreamManager) => Promise<number> {
  return async (jsm) => {
    const m = await jsm.streams.getMessage(`KV_${bucket}`, { last_by_subj: `$KV.${bucket}.${key}` }).catch(
      // No such key: nothing was ever written there.
      () => undefined,
    );
    return m?.seq ?? 0;
  };
}

/** The requests a right stands for: a concrete subject and a body the server will act on. */
function requestsFor(
  pattern: string,
  ctx: { content: (stream: string) => string; baitQueue: string },
): Array<{
  subject: string;
  body: string;
}> {
  const t = pattern.split(".");
  const json = (x: unknown): string => JSON.stringify(x);
  if (pattern.startsWith("$JS.API.DIRECT.GET.")) {
    const stream = t[4]!;
    return t.at(-1) === ">"
      ? [{ subject: `$JS.API.DIRECT.GET.${stream}.${ctx.content(stream)}`, body: "" }]
      : [{ subject: pattern, body: json({ last_by_subj: ctx.content(stream) }) }];
  }
  if (pattern.startsWith("$JS.API.STREAM.MSG.GET."))
    return [{ subject: pattern, body: json({ last_by_subj: ctx.content(t[5]!) }) }];
  if (pattern.startsWith(`$JS.API.CONSUMER.CREATE.${JOBS_STREAM}.`)) {
    const name = laneConsumerName(ctx.baitQueue, "bait");
    const filter = subjects.lane(ctx.baitQueue, "bait");
    const config = { durable_name: name, filter_subject: filter, ack_policy: "explicit" };
    return [
      {
        subject: `$JS.API.CONSUMER.CREATE.${JOBS_STREAM}.${name}.${filter}`,
        body: json({ stream_name: JOBS_STREAM, config }),
      },
    ];
  }
  if (pattern.startsWith("$JS.API.CONSUMER.CREATE.")) {
    const stream = t[4]!;
    const config = {
      ack_policy: "none",
      deliver_policy: "last_per_subject",
      filter_subject: ctx.content(stream),
      inactive_threshold: 5e9,
    };
    return [{ subject: `$JS.API.CONSUMER.CREATE.${stream}`, body: json({ stream_name: stream, config }) }];
  }
  if (pattern === subjects.allKeeper)
    // A valid lane request: the keeper acts on it and answers.
    return [{ subject: subjects.keeper(ctx.baitQueue, "bait"), body: json({ cap: -1, idleMs: 0 }) }];
  if (pattern === `$JS.API.CONSUMER.MSG.NEXT.${JOBS_STREAM}.*`)
    // A real job is handed out (from the bait lane's consumer, made before): the answer's content
    // is a job message.
    return [
      {
        subject: `$JS.API.CONSUMER.MSG.NEXT.${JOBS_STREAM}.${laneConsumerName(ctx.baitQueue, "bait")}`,
        body: json({ batch: 1, no_wait: true }),
      },
    ];
  if (pattern.startsWith("$JS.API.STREAM.MSG.DELETE."))
    return [{ subject: pattern, body: json({ seq: 1e9 }) }];
  if (pattern.startsWith("$JS.API.STREAM.PURGE."))
    return [{ subject: pattern, body: json({ filter: "bait.none" }) }];
  if (
    pattern.startsWith("$JS.API.STREAM.INFO.") ||
    pattern.startsWith("$JS.API.CONSUMER.NAMES.") ||
    pattern.startsWith("$JS.API.CONSUMER.LIST.")
  )
    return [{ subject: pattern.replace(/\*$/, `KV_${JOBS_BUCKET}`), body: "" }];
  // Everything else (KV puts, job and event publishes, acks, flow control): bait tokens, a body
  // worth storing. The answer is a publish acknowledgement or nothing.
  const subject = t.map((x) => (x === "*" || x === ">" ? "bait" : x)).join(".");
  return [
    {
      subject: subject.startsWith("mars.jobs.") ? subjects.lane(ctx.baitQueue, "bait") : subject,
      body: "{}",
    },
  ];
}

/** Whether `role` may publish on `subject` itself (then aiming a reply there proves nothing). */
function mayPublish(role: Role, inbox: string, subject: string): boolean {
  return rolePermissions(role, inbox).publish.some(
    (p) => subjectIntersection(p.subject, subject) === subject,
  );
}

describe("security: replies and deliveries cannot be aimed", { timeout: 120_000 }, () => {
  it("no role makes the server publish where the role may not, by reply or by deliver subject", async () => {
    const queue = TestFleet.queue("aim");
    const baitQueue = TestFleet.queue("aim-bait");
    await tf.provisionFor({ queue });
    await tf.provisionFor({ queue: baitQueue });
    const fleet = await tf.client({ queue });
    const victim = await fleet.submit(SMALL, { targetDir: "aim", environ: { user_id: "alice" } }); // no worker: queued
    const bait = await tf.client({ queue: baitQueue });
    for (let i = 0; i < 40; i++) await bait.submit(SMALL, { targetDir: "aim", environ: { user_id: "bait" } });
    // One lane with a job for each push consumer a worker tries (a lane takes one consumer).
    for (let i = 0; i < 40; i++)
      await bait.submit(SMALL, { targetDir: "aim", environ: { user_id: `push${i}` } });

    const admin = await tf.connectAs("admin");
    const adminJsm = await jetstreamManager(admin);
    await adminJsm.consumers.add(JOBS_STREAM, {
      durable_name: laneConsumerName(baitQueue, "bait"),
      filter_subject: subjects.lane(baitQueue, "bait"),
      ack_policy: AckPolicy.Explicit,
    });
    // Content worth copying, readable by some role: the victim's record, the rules, an API key.
    const akv = async (bucket: string) => new Kvm(jetstream(admin)).open(bucket);
    await (await akv(QOS_BUCKET)).put(QOS_RULES_KEY, JSON.stringify({ rules: [], note: "admin's" }));
    await (await akv(API_KEYS_BUCKET)).put("real-key", JSON.stringify({ user: "alice", role: "user" }));
    const content = (stream: string): string =>
      ({
        [`KV_${JOBS_BUCKET}`]: `$KV.${JOBS_BUCKET}.${victim.id}.submitted`,
        [`KV_${QOS_BUCKET}`]: `$KV.${QOS_BUCKET}.${QOS_RULES_KEY}`,
        [`KV_${API_KEYS_BUCKET}`]: `$KV.${API_KEYS_BUCKET}.real-key`,
        [`KV_${WORKERS_BUCKET}`]: `$KV.${WORKERS_BUCKET}.>`,
        [JOBS_STREAM]: subjects.lane(baitQueue, "bait"),
        [EVENTS_STREAM]: `mars.job.>`,
        [DEAD_STREAM]: `mars.dead.>`,
      })[stream] ?? ">";

    const ids = Object.fromEntries(ATTACKERS.map((r) => [r, identityOf(r)])) as Record<Attacker, string>;
    const targets: Target[] = [
      { subject: subjects.jobs(queue), read: (j) => countOn(j, JOBS_STREAM, subjects.jobs(queue)) },
      {
        subject: subjects.lane(queue, "alice"),
        read: (j) => countOn(j, JOBS_STREAM, subjects.lane(queue, "alice")),
      },
      {
        subject: `$KV.${JOBS_BUCKET}.${victim.id}.status`,
        read: kvRevision(JOBS_BUCKET, `${victim.id}.status`),
      },
      {
        subject: `$KV.${JOBS_BUCKET}.${victim.id}.submitted`,
        read: kvRevision(JOBS_BUCKET, `${victim.id}.submitted`),
      },
      { subject: `$KV.${API_KEYS_BUCKET}.forged`, read: kvRevision(API_KEYS_BUCKET, "forged") },
      { subject: `$KV.${QOS_BUCKET}.${QOS_RULES_KEY}`, read: kvRevision(QOS_BUCKET, QOS_RULES_KEY) },
      { subject: `$KV.${WORKERS_BUCKET}.fake-worker`, read: kvRevision(WORKERS_BUCKET, "fake-worker") },
      { subject: `$KV.${CALLBACKS_BUCKET}.${victim.id}`, read: kvRevision(CALLBACKS_BUCKET, victim.id) },
      { subject: `$KV.${API_JOBS_BUCKET}.${victim.id}`, read: kvRevision(API_JOBS_BUCKET, victim.id) },
      { subject: subjects.dead(queue), read: (j) => countOn(j, DEAD_STREAM, subjects.dead(queue)) },
      {
        subject: subjects.state(victim.id),
        read: (j) => countOn(j, EVENTS_STREAM, subjects.state(victim.id)),
      },
      { subject: subjects.log(victim.id), read: (j) => countOn(j, EVENTS_STREAM, subjects.log(victim.id)) },
      { subject: subjects.cancel(victim.id), listener: "worker" },
      { subject: subjects.heartbeat(victim.id), listener: "observer" },
      // A forged lane request reaching the keepers (only workers may ask).
      { subject: subjects.keeper(queue, "aimed"), listener: "keeper" },
      ...ATTACKERS.map((r): Target => ({ subject: `_INBOX.${ids[r]}.bait`, listener: r })),
    ];

    const before = await Promise.all(targets.map((t) => t.read?.(adminJsm)));
    // Listeners: each role on what it may hear (its own inbox included), counting.
    const heard = new Map<string, number>();
    const listeners: Array<{ nc: NatsConnection; sub: Subscription }> = [];
    for (const t of targets.filter((x) => x.listener)) {
      const nc = await tf.connectAs(t.listener!);
      const sub = nc.subscribe(t.subject, {
        callback: () => {
          heard.set(`${t.listener}:${t.subject}`, (heard.get(`${t.listener}:${t.subject}`) ?? 0) + 1);
        },
      });
      await nc.flush();
      listeners.push({ nc, sub });
    }

    // Control: the answers exist, and land in the aiming role's own account. A worker aims at a
    // cancel subject; the workers (its own account) hear it, nobody else does.
    const control = subjects.cancel(`control-${victim.id}`);
    const workerSide = await tf.connectAs("worker");
    let controlHeard = 0;
    workerSide.subscribe(control, { callback: () => void controlHeard++ });
    await workerSide.flush();

    let sent = 0;
    for (const role of ATTACKERS) {
      const nc = await tf.connectAs(role);
      nc.closed().catch(() => undefined);
      const inbox = `_INBOX.${ids[role]}`;
      // A reply aimed at a core subject lands among the aiming identity's own connections (its
      // account): a listener of the same role proves nothing, so only other identities listen.
      const forbidden = targets.filter((t) => !mayPublish(role, inbox, t.subject) && t.listener !== role);
      if (role === "worker")
        for (const req of requestsFor(`$JS.API.DIRECT.GET.KV_${JOBS_BUCKET}.>`, { content, baitQueue }))
          nc.publish(req.subject, req.body, { reply: control });
      for (const right of rolePermissions(role, inbox).publish) {
        for (const req of requestsFor(right.subject, { content, baitQueue })) {
          for (const t of forbidden) {
            nc.publish(req.subject, req.body, { reply: t.subject });
            sent++;
          }
        }
        // A keeper's consumers could push wherever it names: NATS cannot inspect a deliver subject,
        // and making lane consumers is what a keeper is for. So the keeper is trusted like the
        // admin, run where the admin's tools run (docs/SECURITY.md, "Workers make no consumers");
        // its requests' replies are still tried above.
        if (right.subject.startsWith("$JS.API.CONSUMER.CREATE.") && role !== "keeper") {
          // The same right, with the consumer's deliveries aimed at each target.
          for (const req of requestsFor(right.subject, { content, baitQueue })) {
            const parsed = JSON.parse(req.body) as { stream_name: string; config: Record<string, unknown> };
            for (const [i, t] of forbidden.entries()) {
              const config: Record<string, unknown> = { ...parsed.config, deliver_subject: t.subject };
              let subject = `$JS.API.CONSUMER.CREATE.${parsed.stream_name}`;
              if (right.subject.startsWith(`$JS.API.CONSUMER.CREATE.${JOBS_STREAM}.`)) {
                // A lane's consumer as a keeper makes it, but pushing: a fresh lane each time.
                const name = laneConsumerName(baitQueue, `push${i}`);
                const filter = subjects.lane(baitQueue, `push${i}`);
                Object.assign(config, { durable_name: name, filter_subject: filter });
                subject = `$JS.API.CONSUMER.CREATE.${JOBS_STREAM}.${name}.${filter}`;
              } else delete config["durable_name"];
              nc.publish(subject, JSON.stringify({ stream_name: parsed.stream_name, config }), {
                reply: `${inbox}.ignored`,
              });
              sent++;
            }
          }
        }
      }
      await nc.flush();
      await new Promise((r) => setTimeout(r, 500));
      await nc.close();
    }
    assert.ok(sent > 1000, `only ${sent} aimed requests were sent`);
    // Let every answer and delivery land, then read as admin.
    await new Promise((r) => setTimeout(r, 1500));
    const afterRead = await Promise.all(targets.map((t) => t.read?.(adminJsm)));
    const changed = targets.filter((_, i) => before[i] !== afterRead[i]).map((t) => t.subject);
    assert.deepEqual(changed, [], "stored subjects changed");
    // Each listener is another identity than the attackers it was aimed by (see `forbidden`).
    assert.deepEqual([...heard.entries()], [], "core subjects heard an aimed reply");
    assert.ok(controlHeard > 0, "the worker's aimed control answer never came");
    // The worker's push consumers (its KV watch's) were made: its deliveries were tried for real.
    let pushing = 0;
    for await (const c of adminJsm.consumers.list(`KV_${QOS_BUCKET}`))
      if (c.config.deliver_subject) pushing++;
    assert.ok(pushing > 0, "no worker push consumer was made: the delivery cases tried nothing");
    await workerSide.close();
    const rec = await victim.status();
    assert.equal(rec.state, "queued");
    await Promise.all(listeners.map((l) => l.nc.close()));
    await admin.close();
  });
});
