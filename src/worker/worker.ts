/**
 * The worker daemon: pulls jobs from its queue's shared durable consumer only when a slot is free,
 * runs them (see job.ts), keeps its registry entry fresh, and shuts down in two stages.
 */
import { hostname } from "node:os";
import { randomBytes } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import type { Consumer, ConsumerMessages, JsMsg } from "@nats-io/jetstream";
import type { Subscription } from "@nats-io/transport-node";
import type { Logger } from "pino";
import { encode } from "../broker/codec.js";
import type { BrokerConnection } from "../broker/connection.js";
import { ACK_WAIT_HEARTBEATS, connectProvisioned, type ProvisionReport } from "../broker/provision.js";
import { JobStore } from "../broker/records.js";
import type { ObjectStore } from "@nats-io/obj";
import type { WorkerMetrics } from "./metrics.js";
import type { WorkerInfo, WorkerState } from "../broker/schemas.js";
import { JOBS_STREAM, consumerName, subjects } from "../broker/subjects.js";
import { marsCommandArgv, type FleetConfig } from "../config/load.js";
import { WrongStateError } from "../core/errors.js";
import { silentLogger } from "../core/logging.js";
import { watchMaxDeliveries } from "./dead-letter.js";
import { JobEventPublisher } from "../broker/events.js";
import { handleJob, type ActiveJob, type WorkerContext } from "./job.js";
import { Journal } from "./journal.js";
import { preflight } from "./preflight.js";

export const WORKER_VERSION = "0.1.0";
/** How long one pull request waits on the server before it is renewed. */
const PULL_EXPIRES_MS = 5000;
const REGISTRY_MIN_INTERVAL_MS = 1000;
const SERVER_DEFAULT_ACK_WAIT_NS = 30_000_000_000;

export interface WorkerOptions {
  config: FleetConfig;
  logger?: Logger;
  workerId?: string;
  journalDir?: string;
}

/** How a worker stopped: every job finished or handed back in the grace period, or forced. */
export type StopKind = "drained" | "forced";

export class Worker {
  readonly id: string;
  private stateValue: WorkerState = "starting";
  private readonly active = new Set<ActiveJob>();
  private readonly fetches = new Set<ConsumerMessages>();
  private slotLoops: Promise<void>[] = [];
  private registryTimer: NodeJS.Timeout | undefined;
  private advisorySub: Subscription | undefined;
  private cancelSub: Subscription | undefined;
  private lastRegistryAt = 0;
  private results: Promise<ObjectStore> | undefined;
  private metrics: WorkerMetrics | undefined;
  private metricsPortValue: number | undefined;
  private stopping: Promise<StopKind> | undefined;
  private forceRequested = false;
  private readonly startedAt = Date.now();
  private readonly log: Logger;
  private ctx!: WorkerContext;
  private consumer!: Consumer;

  private constructor(
    private readonly conn: BrokerConnection,
    private readonly opts: WorkerOptions,
    readonly provisionReport: ProvisionReport,
  ) {
    this.id = opts.workerId ?? `${hostname()}-${process.pid}-${randomBytes(2).toString("hex")}`;
    this.log = (opts.logger ?? silentLogger()).child({
      component: "worker",
      workerId: this.id,
      queue: opts.config.queue,
    });
  }

  /** Connect, provision (idempotent), clean up after a previous crash, and start pulling. */
  static async start(opts: WorkerOptions): Promise<Worker> {
    await preflight(opts.config);
    return connectProvisioned(opts.config, "mars-fleet-worker", async (conn, report) => {
      const worker = new Worker(conn, opts, report);
      await worker.begin();
      return worker;
    });
  }

  get state(): WorkerState {
    return this.stateValue;
  }

  /** Jobs running now. */
  get runningJobs(): string[] {
    return [...this.active].map((a) => a.jobId).filter(Boolean);
  }

  private async begin(): Promise<void> {
    const { config } = this.opts;
    for (const line of this.provisionReport.drift)
      this.log.warn({ drift: line }, "broker configuration drift");
    const journal = new Journal(this.opts.journalDir);
    const recovered = await journal.recover();
    if (recovered.length > 0)
      this.log.warn({ recovered: recovered.map((r) => r.jobId) }, "cleaned up after a previous crash");
    const command = marsCommandArgv(config);
    this.consumer = await this.conn.js.consumers.get(JOBS_STREAM, consumerName(config.queue));
    const { heartbeatMs, registryMs } = await this.effectiveIntervals();
    this.ctx = {
      nc: this.conn.nc,
      js: this.conn.js,
      store: new JobStore(await this.conn.jobsKv()),
      journal,
      workerId: this.id,
      queue: config.queue,
      sharedRoot: config.sharedRoot,
      heartbeatMs,
      killGraceMs: config.killGrace,
      maxAttempts: config.maxRetries,
      retryDelayMs: config.retryDelay,
      ...(command && { command }),
      // Loaded on first use: most workers never deliver to the object store.
      results: () =>
        (this.results ??= import("../broker/results.js").then((m) =>
          m.resultsStore(this.conn.nc, config.streamReplicas),
        )),
      log: this.log,
      onSettled: (state, elapsedMs) => this.metrics?.settled(state, elapsedMs),
    };
    if (config.metricsPort > 0) await this.startMetrics(config.metricsPort);
    this.advisorySub = watchMaxDeliveries({
      nc: this.conn.nc,
      js: this.conn.js,
      jsm: this.conn.jsm,
      store: this.ctx.store,
      queue: config.queue,
      log: this.log,
      events: (jobId) =>
        new JobEventPublisher(this.conn.js, jobId, this.log.child({ jobId }), this.conn.nc.info?.max_payload),
    });
    // One subscription for all cancels: find the job among ours.
    this.cancelSub = this.conn.nc.subscribe(subjects.allCancels, {
      callback: (_err, msg) => {
        const jobId = msg.subject.slice(subjects.allCancels.length - 1);
        for (const a of this.active) {
          if (a.jobId !== jobId) continue;
          a.cancelRequested = true;
          a.run?.cancel();
        }
      },
    });
    this.stateValue = "running";
    await this.publishRegistry();
    this.registryTimer = setInterval(() => void this.publishRegistry(), registryMs);
    this.registryTimer.unref();
    this.slotLoops = Array.from({ length: config.concurrency }, (_, slot) => this.slotLoop(slot));
    this.log.info(
      { slots: config.concurrency, sharedRoot: config.sharedRoot, metricsPort: this.metricsPortValue },
      "worker started",
    );
  }

  /** Port of the Prometheus endpoint, when metrics are on. */
  get metricsPort(): number | undefined {
    return this.metricsPortValue;
  }

  private async startMetrics(port: number): Promise<void> {
    // Loaded only when asked for: a worker without metrics does not carry prom-client.
    const { WorkerMetrics } = await import("./metrics.js");
    this.metrics = new WorkerMetrics(this.opts.config.queue, this.id);
    this.metrics.setSlots(this.opts.config.concurrency);
    this.metrics.setRunning(0);
    this.metricsPortValue = await this.metrics.serve(port, "0.0.0.0");
  }

  /**
   * Heartbeat and registry periods that fit what exists on the server, which whoever provisioned
   * first configured: a heartbeat slower than a third of the consumer's ack wait would let the
   * server redeliver a job that is still running, and a registry entry must be renewed well
   * within the bucket's TTL.
   */
  private async effectiveIntervals(): Promise<{ heartbeatMs: number; registryMs: number }> {
    const wanted = this.opts.config.heartbeatInterval;
    const ackWaitMs =
      ((await this.consumer.info()).config.ack_wait ?? SERVER_DEFAULT_ACK_WAIT_NS) / 1_000_000;
    const ttlMs = (await (await this.conn.workersKv()).status()).ttl;
    const heartbeatMs = Math.min(wanted, Math.floor(ackWaitMs / ACK_WAIT_HEARTBEATS));
    const registryMs =
      ttlMs > 0 ? Math.min(heartbeatMs, Math.floor(ttlMs / ACK_WAIT_HEARTBEATS)) : heartbeatMs;
    if (heartbeatMs < wanted) {
      this.log.warn(
        { wantedMs: wanted, heartbeatMs, ackWaitMs },
        "heartbeat shortened to fit the consumer's ack wait",
      );
    }
    return { heartbeatMs, registryMs };
  }

  private async slotLoop(slot: number): Promise<void> {
    let failures = 0;
    while (this.stateValue === "running") {
      let msg: JsMsg | null;
      try {
        msg = await this.pullOne();
        failures = 0;
      } catch (err) {
        failures++;
        if (failures === 1) this.log.warn({ slot, err: String(err) }, "pull failed; retrying");
        await sleep(Math.min(2000, 100 * failures));
        continue;
      }
      if (!msg) continue;
      if (this.stateValue !== "running") {
        msg.nak(); // arrived as we began to drain: let another worker have it
        break;
      }
      const active: ActiveJob = { jobId: "", handBack: false };
      this.active.add(active);
      this.metrics?.setRunning(this.active.size);
      try {
        await handleJob(this.ctx, msg, active);
      } finally {
        this.active.delete(active);
        this.metrics?.setRunning(this.active.size);
        // Keep `mars-fleet workers` current without a registry write per job under load.
        if (Date.now() - this.lastRegistryAt > REGISTRY_MIN_INTERVAL_MS) void this.publishRegistry();
      }
    }
  }

  /** One pull request for one message: the worker never holds a job it has no slot for. */
  private async pullOne(): Promise<JsMsg | null> {
    const batch = await this.consumer.fetch({ max_messages: 1, expires: PULL_EXPIRES_MS });
    this.fetches.add(batch);
    try {
      for await (const msg of batch) return msg;
      return null;
    } finally {
      this.fetches.delete(batch);
    }
  }

  private async publishRegistry(): Promise<void> {
    this.lastRegistryAt = Date.now();
    const info: WorkerInfo = {
      id: this.id,
      host: hostname(),
      pid: process.pid,
      queue: this.opts.config.queue,
      slots: this.opts.config.concurrency,
      running: this.runningJobs,
      state: this.stateValue,
      version: WORKER_VERSION,
      startedAt: this.startedAt,
      lastSeen: Date.now(),
    };
    try {
      const kv = await this.conn.workersKv();
      if (this.stateValue === "stopped") await kv.delete(this.id);
      else await kv.put(this.id, encode(info));
    } catch (err) {
      this.log.debug({ err: String(err) }, "registry update failed");
    }
  }

  /**
   * Stop pulling and let running jobs finish within `graceMs`; then stop the rest and hand them
   * back to the queue. Resolves to how it ended. Calling it again returns the same promise.
   */
  drain(graceMs = this.opts.config.drainGrace): Promise<StopKind> {
    if (this.stateValue === "starting") throw new WrongStateError("the worker has not started yet");
    this.stopping ??= this.shutdown(graceMs);
    return this.stopping;
  }

  /** Stop now: running jobs are killed and handed back to the queue. */
  stop(): Promise<StopKind> {
    this.forceRequested = true;
    for (const a of this.active) this.handBack(a);
    return this.drain(0);
  }

  private handBack(a: ActiveJob): void {
    a.handBack = true;
    a.run?.cancel();
  }

  private async shutdown(graceMs: number): Promise<StopKind> {
    this.stateValue = "draining";
    this.log.info({ graceMs, running: this.runningJobs }, "draining");
    await this.publishRegistry();
    for (const f of this.fetches) f.stop();
    const loops = Promise.all(this.slotLoops);
    let forced = this.forceRequested;
    if (!forced) {
      const timer = sleep(graceMs, "timeout" as const, { ref: false });
      forced =
        (await Promise.race([loops.then(() => "done" as const), timer])) === "timeout" || this.forceRequested;
    }
    if (forced) {
      for (const a of this.active) this.handBack(a);
      this.log.warn({ handedBack: this.runningJobs }, "grace period over: handing running jobs back");
    }
    await loops;
    clearInterval(this.registryTimer);
    this.advisorySub?.unsubscribe();
    this.cancelSub?.unsubscribe();
    await this.metrics?.close();
    this.stateValue = "stopped";
    await this.publishRegistry();
    await this.conn.nc.drain().catch(() => this.conn.nc.close());
    this.log.info({ kind: forced ? "forced" : "drained" }, "worker stopped");
    return forced ? "forced" : "drained";
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }
}
