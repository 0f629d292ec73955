/** The fleet client: submit MARS jobs to the work queue, reattach to jobs, list jobs and workers. */
import { setTimeout as sleep } from "node:timers/promises";
import { createHash, randomUUID } from "node:crypto";
import { resolve } from "node:path";
import type { Logger } from "pino";
import {
  type BrokerConnection,
  bucketKeys,
  callbackRequestSchema,
  CALLBACKS_BUCKET,
  checkRetry,
  connectProvisioned,
  consumerName,
  decode,
  encode,
  initialRecord,
  isToken,
  type JobMessage,
  type JobRecord,
  JOBS_STREAM,
  type JobState,
  JobStore,
  PROTOCOL_VERSION,
  type ProvisionReport,
  registerCallback,
  type RetryPolicy,
  subjects,
  type Submitter,
  withRetry,
  streamGoneCheck,
  type WorkerInfo,
  workerInfoSchema,
  WORKERS_BUCKET,
} from "../broker/index.js";
import { type FleetConfig, loadConfig } from "../config/index.js";
import {
  BrokerError,
  describeZodError,
  type MarsFleetError,
  MessageInvalidError,
  QosDeniedError,
  RequestTooLargeError,
  silentLogger,
  untilAborted,
} from "../core/index.js";
import { Kvm } from "@nats-io/kv";
import {
  deniedBy,
  splitBy,
  explainWait,
  factsOf,
  laneCounts,
  laneHead,
  laneOf,
  type QosRules,
  queuedJobSchema,
  queueSummary,
  type QueueSummary,
  RulesFollower,
  SlotTable,
  UsageTable,
  usedWithin,
  withFleetCap,
} from "../qos/index.js";
import { LiveWorkers } from "./live-workers.js";
import { applyQosRules, qosStateOf, type QosState } from "./qos.js";
import { checkEnviron, jobTarget } from "../runner/index.js";
import { JobHandle, LiveEvents } from "./job.js";
import { toRequests, type MarsRequestInput } from "./request-input.js";
import {
  checkJobMarsEnv,
  type JobMarsEnv,
  MAX_SPLIT_PARTS,
  parseSplit,
  partId,
  partTarget,
  planSplit,
  SplitInvalidError,
  type SplitSpec,
  splitSpecSchema,
  splitWords,
} from "../mars/index.js";

export interface FleetConnectOptions {
  /** A loaded configuration; default: loadConfig() with `overrides`. */
  config?: FleetConfig;
  overrides?: Partial<FleetConfig>;
  logger?: Logger;
  /** Give up connecting when this aborts (a connection made after that is closed). */
  signal?: AbortSignal;
}

export interface SubmitOptions {
  /** Directory of the result: absolute inside the shared root, or relative to it. Default: the root. */
  targetDir?: string;
  targetFname?: string;
  environ?: Record<string, string>;
  queue?: string;
  /** Wall-clock limit of the MARS run in milliseconds (final, not retried). Default: config jobTimeout. */
  timeoutMs?: number;
  /** Idempotency key: the same id within the jobs bucket returns the existing job, never a second run. */
  requestId?: string;
  /** This job's retry policy; default: the configuration's max_retries and retry_delay. */
  retry?: Partial<RetryPolicy>;
  /**
   * Give up submitting when this aborts: nothing is created if it aborts before the job's record
   * is; once that is being written, submit completes, so that no half-made job is left behind.
   */
  signal?: AbortSignal;
  /**
   * Split the job (#27): its parts run on the fleet's workers at once, and are assembled into this
   * job's target when the last one ends (`["date:month", "param"]`, or a spec). The job keeps one
   * id, one record and one target; `<id>-p1`... are its parts.
   */
  split?: readonly string[] | SplitSpec;
  /**
   * Where the worker puts the result: the shared root (default), or the results object store for a
   * client without the shared filesystem (then targetDir/targetFname are ignored).
   */
  deliver?: "share" | "objectstore";
  /** MARS settings for this job only (allowed: MARS_AUTO_SPLIT_BY_DATES, MARS_MAX_RETRIEVE_SIZE, MARS_DEBUG). */
  marsEnv?: JobMarsEnv;
  /**
   * POST the job's record to `url` when it ends, signed with `secret` (one is made when none is
   * given: `handle.callbackSecret`). Delivered by the fleet's `mars-fleet api` processes.
   */
  callback?: { url: string; secret?: string };
  /**
   * Follow the job's record from before it exists, for a `result()` called soon (within 10 s): it
   * then reads nothing until the job ends. Default true; false for a job followed otherwise
   * (`events()`) or not at all, which then costs no subscription.
   */
  watchResult?: boolean;
  /**
   * Follow the job's events from before it exists, for an `events()` called soon (within 10 s): it
   * then needs no consumer on the server, unless the connection is re-established meanwhile.
   * Default false.
   */
  watchEvents?: boolean;
}

/** A job id from a request id: kept when it is a safe token, else a stable hash of it. */
/**
 * The most a job's requests may weigh, as JSON: a year of daily dates with every hour and a dozen
 * parameters is a few KiB; far larger is a mistake or an attack on every reader of the record.
 */
export const MAX_REQUEST_BYTES = 64 * 1024;

/**
 * How long a submit keeps trying to reach the queue (and the QoS rules) through transient trouble
 * before it fails. Each try is bounded by the request timeout; this spans several, because a
 * stream whose leader was partitioned away takes no publish until a new one is elected, which took
 * up to 33 s across hosts (docs/PROTOCOL.md, "Faults across hosts").
 */
const SUBMIT_DEADLINE_MS = 60_000;

/** How long close() waits for the connection to drain before it closes it. */
const CLOSE_DRAIN_MS = 5000;

export function jobIdFor(requestId: string | undefined): string {
  if (requestId === undefined) return randomUUID();
  if (isToken(requestId)) return requestId;
  return `r-${createHash("sha256").update(requestId).digest("hex").slice(0, 40)}`;
}

export class Fleet {
  private closing: Promise<void> | undefined;
  private liveWorkers: Promise<LiveWorkers> | undefined;
  private rulesFollower: Promise<RulesFollower> | undefined;
  /** Whether the work queue's stream is gone (a publish no stream takes: withRetry's streamGone). */
  private readonly queueGone: () => Promise<boolean>;

  private constructor(
    private readonly conn: BrokerConnection,
    readonly config: FleetConfig,
    private readonly store: JobStore,
    readonly provisionReport: ProvisionReport,
    private readonly log: Logger,
  ) {
    this.queueGone = streamGoneCheck(conn.js, JOBS_STREAM);
  }

  /** Connect and make sure the topology for the configured queue exists. */
  static async connect(opts: FleetConnectOptions = {}): Promise<Fleet> {
    opts.signal?.throwIfAborted();
    const config = opts.config ?? loadConfig({ overrides: opts.overrides ?? {} });
    const log = opts.logger ?? silentLogger();
    const connecting = connectProvisioned(config, "mars-fleet-client", async (conn, report) => {
      for (const line of report.drift) log.debug({ drift: line }, "broker configuration drift");
      return new Fleet(conn, config, new JobStore(await conn.jobsKv(), conn, log), report, log);
    });
    return untilAborted(connecting, opts.signal, (fleet) => fleet.close());
  }

  /** The broker connection (for components built on the fleet, such as the gateway). */
  get connection(): BrokerConnection {
    return this.conn;
  }

  /** Path of a target relative to the shared root, rejecting anything outside it. */
  targetFor(targetDir: string | undefined, targetFname: string | undefined): string {
    return jobTarget(this.config.sharedRoot, { dir: targetDir, file: targetFname });
  }

  /** Put a job on the queue. Validates everything first; returns the existing job for a known requestId. */
  async submit(request: MarsRequestInput, opts: SubmitOptions = {}): Promise<JobHandle> {
    opts.signal?.throwIfAborted();
    const message = this.jobMessage(request, opts);
    let split = opts.split && this.splitOf(message, opts.split);
    const { id, queue } = message;
    const rules = (await this.qosRules()).rules;
    const facts = factsOf(message);
    const denied = deniedBy(rules, facts);
    if (denied) throw new QosDeniedError(denied.deny, { rule: denied.name });
    // A split rule splits a job submitted without one (the gateways' clients get it unchanged),
    // when its request can take that split; one that cannot (a single month) runs whole.
    const ruled = opts.split === undefined ? splitBy(rules, facts) : undefined;
    if (ruled) {
      try {
        split = this.splitOf(message, ruled.split);
      } catch (err) {
        if (!(err instanceof SplitInvalidError)) throw err;
        this.log.debug(
          { jobId: id, rule: ruled.name, why: err.message },
          "the split rule does not fit: run whole",
        );
      }
    }
    const subject = subjects.lane(queue, laneOf(rules, facts));
    // The last moment to give up: from here on the job is made whole.
    opts.signal?.throwIfAborted();
    // Registered before the job exists, so that its end cannot come first.
    const callbackSecret = opts.callback && (await this.registerCallback(id, opts.callback));
    let submitted = initialRecord(message, this.config.maxRetries);
    if (split) submitted = { ...submitted, split: { by: splitWords(split.spec), parts: split.parts.length } };
    // Followed from before the job exists: result() then reads nothing until a write looks final.
    const watch = opts.watchResult === false ? undefined : this.store.watch(id, false);
    const live = opts.watchEvents === true ? new LiveEvents(this.conn.nc, id, this.store) : undefined;
    const unwatch = (): void => {
      watch?.close();
      live?.close();
    };
    let revision: number | undefined;
    try {
      revision = await this.store.create(submitted);
    } catch (err) {
      unwatch();
      throw err;
    }
    if (revision === undefined) {
      unwatch(); // an existing job, with a history of its own: result() and events() read it first
      const existing = await this.store.require(id);
      submitted = existing.record;
      // Queued but maybe never published (a crash between the two): publish again; the
      // Nats-Msg-Id dedupe window drops it if it was, and the worker drops duplicates by sequence.
      if (existing.record.state !== "queued") return this.handle(id, submitted);
    }
    try {
      // A split job is never queued itself: its parts are, and the last one's worker assembles it.
      if (split) await this.submitParts(split.parts, subject);
      else await this.publishJob(subject, message);
    } catch (err) {
      if (revision !== undefined) unwatch();
      throw err;
    }
    const handle = this.handle(id, submitted);
    if (revision !== undefined && watch) handle.followFromSubmit(watch);
    if (revision !== undefined && live) handle.followEventsFromSubmit(live);
    if (callbackSecret !== undefined) handle.callbackSecret = callbackSecret;
    return handle;
  }

  /** A split job's parts, planned and checked before anything is written. */
  private splitOf(
    parent: JobMessage,
    given: readonly string[] | SplitSpec,
  ): { spec: SplitSpec; parts: JobMessage[] } {
    const spec = Array.isArray(given)
      ? parseSplit(given as readonly string[])
      : (() => {
          const parsed = splitSpecSchema.safeParse(given);
          if (!parsed.success)
            throw new SplitInvalidError(`invalid split: ${describeZodError(parsed.error)}`, {});
          return parsed.data;
        })();
    if (parent.deliver !== "share")
      throw new SplitInvalidError("a split job delivers to the shared root, not the object store", {});
    if (!isToken(partId(parent.id, MAX_SPLIT_PARTS)))
      throw new SplitInvalidError(
        "the job id leaves no room for its parts' ids (-pN): use a shorter request id",
        {
          jobId: parent.id,
        },
      );
    const parts = planSplit(parent.requests, spec).map((requests, i): JobMessage => ({
      ...parent,
      id: partId(parent.id, i + 1),
      requests,
      target: partTarget(parent.target, parent.id, i + 1),
      part: { parent: parent.id, index: i + 1, total: 0 },
    }));
    for (const p of parts) p.part!.total = parts.length;
    return { spec, parts };
  }

  /** Create and queue each part of a split job (each idempotent, like any job, by its id). */
  private async submitParts(parts: readonly JobMessage[], subject: string): Promise<void> {
    for (const part of parts) {
      const created = await this.store.create(initialRecord(part, this.config.maxRetries));
      if (created === undefined && (await this.store.require(part.id)).record.state !== "queued") continue;
      await this.publishJob(subject, part);
    }
  }

  /** The job message for a request, every part of it checked (size, target, environ, retry policy). */
  private jobMessage(request: MarsRequestInput, opts: SubmitOptions): JobMessage {
    const requests = toRequests(request);
    const size = Buffer.byteLength(JSON.stringify(requests));
    if (size > MAX_REQUEST_BYTES)
      throw new RequestTooLargeError(
        `the request is ${size} bytes; a job may carry at most ${MAX_REQUEST_BYTES} (split it, or list fewer values)`,
        { bytes: size, max: MAX_REQUEST_BYTES },
      );
    const deliver = opts.deliver ?? "share";
    const id = jobIdFor(opts.requestId);
    // Object-store results are written on the worker's own disk first, under its root.
    const target =
      deliver === "objectstore" ? `.objects/${id}.grib` : this.targetFor(opts.targetDir, opts.targetFname);
    const environ = opts.environ ?? {};
    checkEnviron(environ);
    if (opts.retry) checkRetry(opts.retry);
    return {
      v: PROTOCOL_VERSION,
      id,
      queue: opts.queue ?? this.config.queue,
      requests,
      target,
      environ,
      timeoutMs: opts.timeoutMs ?? this.config.jobTimeout,
      maxAttempts: opts.retry?.maxAttempts ?? this.config.maxRetries,
      retryDelayMs: opts.retry?.delayMs ?? this.config.retryDelay,
      submittedAt: Date.now(),
      deliver,
      ...(opts.marsEnv && { marsEnv: checkJobMarsEnv(opts.marsEnv) }),
      submittedBy: this.submitter(environ),
    };
  }

  /**
   * Publish a job message (deduplicated by its id). When it cannot be queued, its record is
   * marked failed: no record claims a job is queued when it never reached the queue.
   */
  private async publishJob(subject: string, message: JobMessage): Promise<void> {
    const id = message.id;
    try {
      await withRetry(() => this.conn.js.publish(subject, encode(message), { msgID: id }), {
        deadlineMs: Math.max(SUBMIT_DEADLINE_MS, this.config.requestTimeout),
        what: "queue the job",
        streamGone: this.queueGone,
      });
    } catch (err) {
      const error = new BrokerError(
        `the job could not be queued: ${(err as Error).message}`,
        { jobId: id },
        err,
      );
      await this.store
        .mutateSubmission(id, (sub, current) =>
          current.state === "queued" && sub.state === "queued"
            ? { ...sub, state: "failed", error: error.toRecord(), finishedAt: Date.now() }
            : undefined,
        )
        .catch((recordErr: unknown) =>
          this.log.warn({ err: recordErr, jobId: id }, "could not mark the job failed"),
        );
      throw error;
    }
  }

  private async registerCallback(id: string, cb: { url: string; secret?: string }): Promise<string> {
    const parsed = callbackRequestSchema.safeParse(cb);
    if (!parsed.success)
      throw new MessageInvalidError(`invalid callback: ${describeZodError(parsed.error)}`, {
        field: "callback",
      });
    const kv = await new Kvm(this.conn.js).open(CALLBACKS_BUCKET);
    return registerCallback(kv, id, parsed.data);
  }

  /** The QoS rules in force, followed from the first submit on (deny rules refuse here; the lane is the rules' fairness key). */
  qosRules(): Promise<RulesFollower> {
    this.rulesFollower ??= withRetry(
      async () =>
        RulesFollower.start(
          this.conn.nc,
          { kv: await this.conn.qosKv(), jsm: this.conn.jsm, authority: this.conn.authority },
          this.log,
        ),
      { deadlineMs: Math.max(SUBMIT_DEADLINE_MS, this.config.requestTimeout), what: "read the QoS rules" },
    ).catch((err: unknown) => {
      this.rulesFollower = undefined; // the next submit tries again
      throw err;
    });
    return this.rulesFollower;
  }

  /**
   * Why a queued job waits (empty when it does not wait): full limits, a worker holding it for
   * one, its lane and the lanes ahead of it. See src/qos/explain.ts.
   */
  async explain(id: string): Promise<string[]> {
    const { record } = await this.store.require(id);
    if (record.state !== "queued" && record.state !== "retrying") return [];
    const { jsm } = this.conn;
    const template = await jsm.consumers.info(JOBS_STREAM, consumerName(record.queue));
    const rules = withFleetCap(
      (await this.qosRules()).rules,
      Math.max(0, template.config.max_ack_pending ?? 0),
    );
    const qosKv = await this.conn.qosKv();
    const slots = new SlotTable(jsm, qosKv, () => Promise.resolve(false), this.log);
    const usage = new UsageTable(qosKv, this.log);
    return explainWait(record, {
      rules,
      holders: async (key) => (await slots.holders(key)).length,
      workers: await this.workers(),
      lanes: await laneCounts(jsm, record.queue),
      head: async (lane) => {
        try {
          const body = await laneHead(this.conn.nc, record.queue, lane);
          if (body === undefined) return undefined;
          const job = queuedJobSchema.parse(body);
          return { submittedAt: job.submittedAt, facts: factsOf(job) };
        } catch {
          // A server that cannot look a lane's next message up: the explanation leaves that lane out.
          return undefined;
        }
      },
      used: async (lane, windowMs) => usedWithin(await usage.read(lane), Date.now(), windowMs),
    });
  }

  /** Who submits: the environ's user and the identity this connection authenticated as. */
  private submitter(environ: Record<string, string>): Submitter | undefined {
    const user = environ["user_id"];
    const nats = this.conn.identity;
    if (user === undefined && nats === undefined) return undefined;
    return { ...(user !== undefined && { user }), ...(nats !== undefined && { nats }) };
  }

  /** Reattach to a job by id (from any process). */
  async job(id: string): Promise<JobHandle> {
    return (await this.lookup(id)).job;
  }

  /** Reattach to a job by id, with its record as read to check it exists (one read, not two). */
  async lookup(id: string): Promise<{ job: JobHandle; record: JobRecord }> {
    const { record } = await this.store.require(id);
    return { job: this.handle(id), record };
  }

  private handle(id: string, submitted?: JobRecord): JobHandle {
    const handle = new JobHandle(id, this.conn, this.store, resolve(this.config.sharedRoot));
    if (submitted) handle.submitted = submitted;
    return handle;
  }

  /** Job records, newest first, optionally only those in one state. */
  async jobs(filter: { state?: JobState } = {}): Promise<JobRecord[]> {
    const all = await this.store.list();
    return all
      .filter((r) => filter.state === undefined || r.state === filter.state)
      .sort((a, b) => b.submittedAt - a.submittedAt);
  }

  /** Each queue this client or a live worker serves: its jobs queued and running, per lane. */
  async queues(known?: WorkerInfo[]): Promise<QueueSummary[]> {
    // `known`: the registry as the caller just read it (no second listing).
    const workers = known ?? (await this.workers());
    const names = new Set([this.config.queue, ...workers.map((w) => w.queue)]);
    return Promise.all([...names].sort().map((q) => queueSummary(this.conn.jsm, q, workers)));
  }

  /** Validate QoS rules and put them in force (admin credentials; signed where the fleet has a trust key). */
  applyQosRules(text: string, source = "rules"): Promise<{ revision: number; rules: QosRules }> {
    return applyQosRules(this.conn, text, source);
  }

  /** The QoS rules in force and what they hold now, with `queue`'s lanes (default: this client's). */
  async qosState(queue = this.config.queue): Promise<QosState> {
    return qosStateOf(this.conn, queue, await this.workers());
  }

  /** Live workers (entries expire when a worker stops heart-beating). */
  workers(): Promise<WorkerInfo[]> {
    return workerEntries(this.conn);
  }

  /**
   * Workers that take jobs from `queue` now (running, registry entry fresh). Kept current by one
   * watch of the registry opened on first use, so asking again costs nothing.
   */
  async servingWorkers(queue = this.config.queue): Promise<WorkerInfo[]> {
    this.liveWorkers ??= this.conn
      .workersKv()
      .then((kv) =>
        LiveWorkers.open(this.conn.nc, this.conn.jsm, kv, (f) => this.store.afterReconnect(f), this.log),
      );
    return (await this.liveWorkers).serving(queue);
  }

  /**
   * Record a request refused before it reached the queue (a gateway's 400): a failed job record
   * under `requestId` whose log shows the reason, so that whoever looks the id up learns why.
   */
  async recordRefusal(
    error: MarsFleetError,
    opts: { requestId: string; environ?: Record<string, string>; queue?: string },
  ): Promise<void> {
    const id = jobIdFor(opts.requestId);
    const now = Date.now();
    const record: JobRecord = {
      id,
      queue: opts.queue ?? this.config.queue,
      state: "failed",
      attempt: 0,
      maxAttempts: this.config.maxRetries,
      target: "",
      requests: [],
      environ: opts.environ ?? {},
      timeoutMs: 0,
      cancelRequested: false,
      submittedAt: now,
      finishedAt: now,
      updatedAt: now,
      error: error.toRecord(),
    };
    const submittedBy = this.submitter(opts.environ ?? {});
    if (submittedBy) record.submittedBy = submittedBy;
    // Taken already: say nothing over it. Its log is the record's reason (JobHandle.storedLog): only
    // workers write job events.
    await this.store.create(record);
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      // A registry view that never opened has no watch to stop.
      if (this.liveWorkers) (await this.liveWorkers.catch(() => undefined))?.stop();
      if (this.rulesFollower) (await this.rulesFollower.catch(() => undefined))?.close();
      // A drain waits for the server to answer its flush: bounded, so that a close never hangs on
      // a server that went away (then the connection is simply closed).
      const drained = await Promise.race([
        this.conn.nc.drain().then(
          () => true,
          () => false,
        ),
        sleep(CLOSE_DRAIN_MS, false, { ref: false }), // unref: a process exits once drained
      ]);
      if (!drained) await this.conn.nc.close();
    })();
    return this.closing;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/** The registry's live entries, by worker id (entries expire when a worker stops heart-beating). */
export async function workerEntries(conn: BrokerConnection): Promise<WorkerInfo[]> {
  const kv = await conn.workersKv();
  const out: WorkerInfo[] = [];
  for (const key of await bucketKeys(conn.jsm, WORKERS_BUCKET)) {
    const entry = await kv.get(key);
    if (!entry || entry.operation !== "PUT") continue;
    try {
      out.push(decode(workerInfoSchema, entry.value, "worker entry"));
    } catch {
      // An entry from an incompatible version: not listed.
    }
  }
  return out.sort((a, b) => a.id.localeCompare(b.id));
}
