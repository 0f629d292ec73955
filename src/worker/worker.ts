/**
 * The worker daemon: pulls jobs from its queue's shared durable consumer only when a slot is free,
 * runs them (see job.ts), keeps its registry entry fresh, and shuts down in two stages.
 */
import { hostname } from "node:os";
import { randomBytes } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import type { ConsumerConfig } from "@nats-io/jetstream";
import type { Subscription } from "@nats-io/transport-node";
import type { Logger } from "pino";
import {
  ACK_WAIT_HEARTBEATS,
  askForLane,
  type BrokerConnection,
  connectProvisioned,
  consumerName,
  encode,
  endedWithoutResult,
  inboxPrefixFor,
  JobEventPublisher,
  type JobMessage,
  JOBS_STREAM,
  JobStore,
  KEEPER_TIMEOUT_MS,
  LaneKeeper,
  type ProvisionReport,
  subjects,
  TERMINAL_STATES,
  type WorkerInfo,
  type WorkerState,
} from "../broker/index.js";
import type { ObjectStore } from "@nats-io/obj";
import type { WorkerMetrics } from "./metrics.js";
import { cachePolicy, factsOf, RulesFollower, SlotTable, UsageTable } from "../qos/index.js";
import { Dispatcher } from "./dispatcher.js";
import { type FleetConfig, marsCommandArgv } from "../config/index.js";
import { BrokerError, silentLogger, untilAborted, WrongStateError } from "../core/index.js";
import { watchMaxDeliveries } from "./dead-letter.js";
import type { AttemptEnv, JobAttempt } from "./attempt.js";
import { Journal } from "./journal.js";
import { ResultCache } from "../runner/index.js";
import { preflight } from "./preflight.js";

export const WORKER_VERSION = "0.1.0";
const REGISTRY_MIN_INTERVAL_MS = 1000;
const NO_ATTEMPTS: ReadonlySet<JobAttempt> = new Set();
const SERVER_DEFAULT_ACK_WAIT_NS = 30_000_000_000;

export interface WorkerOptions {
  config: FleetConfig;
  logger?: Logger;
  workerId?: string;
  journalDir?: string;
  /** Give up starting when this aborts (a worker that started after that is stopped). */
  signal?: AbortSignal;
}

/** How a worker stopped: every job finished or handed back in the grace period, or forced. */
export type StopKind = "drained" | "forced";

export class Worker {
  readonly id: string;
  private stateValue: WorkerState = "starting";
  private readonly ended: Promise<StopKind>;
  private settleEnded!: { resolve: (kind: StopKind) => void; reject: (err: unknown) => void };
  private dispatcher: Dispatcher | undefined;
  /** The lane keeper this worker runs on its own connection (MARS_KEEPER), if any. */
  private keeper: LaneKeeper | undefined;
  private rules: RulesFollower | undefined;
  private slots: SlotTable | undefined;
  private registryTimer: NodeJS.Timeout | undefined;
  private advisorySub: Subscription | undefined;
  private cancelSub: Subscription | undefined;
  private lastRegistryAt = 0;
  private registryPending: NodeJS.Timeout | undefined;
  /** CPU time and wall time of the last registry entry, for the CPU share since then. */
  private lastUsage = { cpu: process.cpuUsage(), at: Date.now() };
  private results: Promise<ObjectStore> | undefined;
  private resultCache: ResultCache | undefined;
  private metrics: WorkerMetrics | undefined;
  private metricsPortValue: number | undefined;
  private stopping: Promise<StopKind> | undefined;
  private forceRequested = false;
  private readonly startedAt = Date.now();
  private readonly log: Logger;
  /** The queue's own consumer's settings: ack wait and deliveries, copied by every lane consumer. */
  private template!: ConsumerConfig;

  private constructor(
    private readonly conn: BrokerConnection,
    private readonly opts: WorkerOptions,
    readonly provisionReport: ProvisionReport,
  ) {
    this.id = opts.workerId ?? `${hostname()}-${process.pid}-${randomBytes(2).toString("hex")}`;
    this.ended = new Promise<StopKind>((resolve, reject) => (this.settleEnded = { resolve, reject }));
    this.ended.catch(() => undefined); // observed through run(); an unobserved failure must not crash the process
    this.log = (opts.logger ?? silentLogger()).child({
      component: "worker",
      workerId: this.id,
      queue: opts.config.queue,
    });
  }

  /** Connect, provision (idempotent), clean up after a previous crash, and start pulling. */
  static async start(opts: WorkerOptions): Promise<Worker> {
    opts.signal?.throwIfAborted();
    await preflight(opts.config);
    const starting = connectProvisioned(opts.config, "mars-fleet-worker", async (conn, report) => {
      const worker = new Worker(conn, opts, report);
      await worker.begin();
      return worker;
    });
    return untilAborted(starting, opts.signal, (worker) => worker.stop());
  }

  /** The attempts running now (the dispatcher holds them). */
  private get attempts(): ReadonlySet<JobAttempt> {
    return this.dispatcher?.attempts ?? NO_ATTEMPTS;
  }

  get state(): WorkerState {
    return this.stateValue;
  }

  /** Jobs running now. */
  get runningJobs(): string[] {
    return [...this.attempts].map((a) => a.job.id);
  }

  /**
   * Resolves with how the worker stopped (drain or stop); rejects with a BrokerError when the
   * broker connection ended for good, after the worker stopped its jobs (state `failed`): a
   * supervisor should restart it.
   */
  run(): Promise<StopKind> {
    return this.ended;
  }

  /** Resolves when the worker has stopped, however it stopped (never rejects): see `state` for how. */
  closed(): Promise<void> {
    return this.ended.then(
      () => undefined,
      () => undefined,
    );
  }

  /**
   * Two-stage signal handling, as the CLI does it: the first signal drains, the second stops at
   * once (running jobs handed back). Returns a function that removes the handlers.
   */
  handleSignals(signals: NodeJS.Signals[] = ["SIGTERM", "SIGINT"]): () => void {
    let received = 0;
    const onSignal = (signal: NodeJS.Signals): void => {
      received++;
      if (received === 1) {
        this.log.info({ signal }, "draining; send the signal again to stop at once");
        void this.drain();
      } else {
        this.log.warn({ signal }, "stopping now: running jobs are handed back to the queue");
        void this.stop();
      }
    };
    for (const s of signals) process.on(s, onSignal);
    return () => {
      for (const s of signals) process.off(s, onSignal);
    };
  }

  private async begin(): Promise<void> {
    const { config } = this.opts;
    for (const line of this.provisionReport.drift)
      this.log.warn({ drift: line }, "broker configuration drift");
    const journal = new Journal(this.opts.journalDir);
    const recovered = await journal.recover();
    if (recovered.length > 0)
      this.log.warn({ recovered: recovered.map((r) => r.jobId) }, "cleaned up after a previous crash");
    this.template = (await this.conn.jsm.consumers.info(JOBS_STREAM, consumerName(config.queue))).config;
    const { heartbeatMs, registryMs } = await this.effectiveIntervals();
    const store = new JobStore(await this.conn.jobsKv(), this.conn, this.log);
    const qosKv = await this.conn.qosKv();
    const rules = (this.rules = await RulesFollower.start(
      this.conn.nc,
      { kv: qosKv, jsm: this.conn.jsm, authority: this.conn.authority },
      this.log,
    ));
    const slots = (this.slots = new SlotTable(
      this.conn.jsm,
      qosKv,
      async (jobId) => {
        const found = await store.get(jobId);
        return !found || TERMINAL_STATES.has(found.record.state);
      },
      this.log,
    ));
    const env = this.attemptEnv(store, journal, heartbeatMs);
    if (this.keepsLanes()) this.keeper = new LaneKeeper(this.conn.nc, this.conn.jsm, this.log);
    if (config.metricsPort > 0) await this.startMetrics(config.metricsPort);
    this.listen(store);
    void this.watchConnection();
    this.stateValue = "running";
    await this.publishRegistry();
    this.registryTimer = setInterval(() => void this.publishRegistry(), registryMs);
    this.registryTimer.unref();
    await this.startDispatcher(env, rules, slots, heartbeatMs);
    this.log.info(
      { slots: config.concurrency, sharedRoot: config.sharedRoot, metricsPort: this.metricsPortValue },
      "worker started",
    );
  }

  /** The result cache under the shared root (MARS_CACHE_MAX_BYTES > 0). */
  private cache(): ResultCache {
    const { config } = this.opts;
    this.resultCache ??= new ResultCache(config.sharedRoot, {
      maxBytes: config.cacheMaxBytes,
      ttlMs: config.cacheTtl,
      onEvent: (ev) => {
        if (ev.type === "linked") return;
        this.metrics?.cache(ev.type, "bytes" in ev ? ev.bytes : 0);
        if (ev.type === "dropped") this.log.warn({ key: ev.key, why: ev.why }, "result cache entry dropped");
        else if (ev.type === "evicted")
          this.log.debug({ key: ev.key, bytes: ev.bytes }, "result cache entry evicted");
      },
    });
    return this.resultCache;
  }

  /** What every attempt of this worker runs with. */
  private attemptEnv(store: JobStore, journal: Journal, heartbeatMs: number): AttemptEnv {
    const { config } = this.opts;
    const command = marsCommandArgv(config);
    return {
      nc: this.conn.nc,
      js: this.conn.js,
      store,
      journal,
      workerId: this.id,
      queue: config.queue,
      sharedRoot: config.sharedRoot,
      heartbeatMs,
      requestTimeoutMs: config.requestTimeout,
      killGraceMs: config.killGrace,
      maxAttempts: config.maxRetries,
      retryDelayMs: config.retryDelay,
      ...(command && { command }),
      // Loaded on first use: most workers never deliver to the object store.
      results: () =>
        (this.results ??= import("../broker/results.js").then((m) => m.resultsStore(this.conn.nc))),
      ...(config.cacheMaxBytes > 0 && {
        cache: this.cache(),
        cachePolicy: (job: JobMessage) =>
          this.rules ? cachePolicy(this.rules.rules, factsOf(job)) : undefined,
      }),
      log: this.log,
    };
  }

  /** Jobs that ran out of deliveries (the server's advisory), and cancels of the jobs running here. */
  private listen(store: JobStore): void {
    const { config } = this.opts;
    this.advisorySub = watchMaxDeliveries({
      nc: this.conn.nc,
      js: this.conn.js,
      jsm: this.conn.jsm,
      store,
      queue: config.queue,
      log: this.log,
      events: (jobId) =>
        new JobEventPublisher(this.conn.js, jobId, this.log.child({ jobId }), this.conn.nc.info?.max_payload),
    });
    // One subscription for all cancels: find the job among ours, and stop it if its records ask
    // for that (a cancel request, or the end of its split job): the announcement alone is not enough.
    this.cancelSub = this.conn.nc.subscribe(subjects.allCancels, {
      callback: (_err, msg) => {
        const jobId = msg.subject.slice(subjects.allCancels.length - 1);
        const ours = [...this.attempts].filter((a) => a.job.id === jobId);
        if (ours.length === 0) return;
        void cancelWanted(store, ours[0]!.job)
          .then((wanted) => {
            if (wanted) for (const a of ours) a.stop("cancelled");
            else this.log.warn({ jobId }, "a cancel that no record asks for: ignored");
          })
          .catch((err: unknown) =>
            // The record could not be read: the fence reads it again before anything is committed.
            this.log.warn({ err, jobId }, "could not read the record of a cancelled job"),
          );
      },
    });
  }

  private async startDispatcher(
    env: AttemptEnv,
    rules: RulesFollower,
    slots: SlotTable,
    heartbeatMs: number,
  ): Promise<void> {
    const { config } = this.opts;
    this.dispatcher = new Dispatcher({
      nc: this.conn.nc,
      inboxPrefix: inboxPrefixFor(this.conn.identity),
      jsm: this.conn.jsm,
      queue: config.queue,
      workerId: this.id,
      concurrency: config.concurrency,
      heartbeatMs,
      template: this.template,
      rules,
      slots,
      usage: new UsageTable(await this.conn.qosKv(), this.log),
      log: this.log,
      env,
      laneIdleMs: this.laneIdleMs(heartbeatMs),
      // A worker that keeps lanes keeps its own (LaneKeeper.keep); one that does not asks a keeper.
      keepLane: (lane, ask) =>
        this.keeper
          ? this.keeper.keep(config.queue, lane, ask)
          : askForLane(
              this.conn.nc,
              config.queue,
              lane,
              ask,
              Math.min(config.requestTimeout, KEEPER_TIMEOUT_MS),
            ),
    });
    this.dispatcher.observe({
      started: (running) => this.metrics?.setRunning(running),
      settled: (end, running) => {
        if (end) this.metrics?.settled(end.state, end.elapsedMs);
        this.metrics?.setRunning(running);
        this.registrySoon();
      },
      // Jobs held aside are in the entry (`qos show`, why a job waits): told within a second.
      parked: () => this.registrySoon(),
    });
    await this.dispatcher.start();
  }

  /**
   * Whether this worker answers lane requests itself (MARS_KEEPER). `auto`: on an open server,
   * where any process may make consumers anyway; not with credentials, where the worker role may
   * make none and `mars-fleet keeper` runs with the keeper role (docs/SECURITY.md).
   */
  private keepsLanes(): boolean {
    const { keeper } = this.opts.config;
    return keeper === "on" || (keeper === "auto" && this.conn.identity === undefined);
  }

  /**
   * How long a lane consumer may go unused before the server removes it. Every running or held
   * job's `working()` (each heartbeat) counts as use, so the lane of a job in hand is never
   * removed; a threshold shorter than three heartbeats is raised to that.
   */
  private laneIdleMs(heartbeatMs: number): number {
    const wanted = this.opts.config.laneIdle;
    if (wanted <= 0 || wanted >= 3 * heartbeatMs) return wanted;
    this.log.warn(
      { wantedMs: wanted, laneIdleMs: 3 * heartbeatMs },
      "lane idle time raised to three heartbeats",
    );
    return 3 * heartbeatMs;
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
    const ackWaitMs = (this.template.ack_wait ?? SERVER_DEFAULT_ACK_WAIT_NS) / 1_000_000;
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

  /** CPU share (percent of one core) since the last call, and resident memory. */
  private usage(): NonNullable<WorkerInfo["usage"]> {
    const now = Date.now();
    const cpu = process.cpuUsage(this.lastUsage.cpu);
    const wallMs = Math.max(1, now - this.lastUsage.at);
    this.lastUsage = { cpu: process.cpuUsage(), at: now };
    const cpuPercent = Math.round(((cpu.user + cpu.system) / 1000 / wallMs) * 1000) / 10;
    return { cpuPercent, rssMb: Math.round(process.memoryUsage.rss() / 1e5) / 10 };
  }

  /**
   * The registry entry changed (a job ended, one was held aside): write it now, or at the end of
   * the current second: `mars-fleet workers` stays current without a write per job under load.
   */
  private registrySoon(): void {
    if (this.registryPending) return;
    const wait = this.lastRegistryAt + REGISTRY_MIN_INTERVAL_MS - Date.now();
    if (wait <= 0) {
      void this.publishRegistry();
      return;
    }
    this.registryPending = setTimeout(() => {
      this.registryPending = undefined;
      void this.publishRegistry();
    }, wait);
    this.registryPending.unref();
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
      usage: this.usage(),
    };
    const parked = this.dispatcher?.parked ?? [];
    if (parked.length > 0)
      info.waiting = parked.map((p) => ({ job: p.job.id, reason: p.reason, lane: p.lane }));
    try {
      const kv = await this.conn.workersKv();
      if (this.stateValue === "stopped") await kv.delete(this.id);
      else await kv.put(this.id, encode(info));
    } catch (err) {
      // The next renewal tries again; an entry that lapses meanwhile only hides the worker from listings.
      this.log.debug({ err }, "registry update failed");
    }
  }

  /**
   * Stop pulling and let running jobs finish within `graceMs`; then stop the rest and hand them
   * back to the queue. Resolves to how it ended. Calling it again returns the same promise.
   */
  drain(graceMs = this.opts.config.drainGrace): Promise<StopKind> {
    if (this.stateValue === "starting") throw new WrongStateError("the worker has not started yet");
    if (this.stateValue === "failed") return this.ended;
    this.stopping ??= this.shutdown(graceMs);
    return this.stopping;
  }

  /** Stop now: running jobs are killed and handed back to the queue. */
  stop(): Promise<StopKind> {
    if (this.stateValue === "failed") return this.ended;
    this.forceRequested = true;
    for (const a of this.attempts) a.stop("handed back");
    return this.drain(0);
  }

  /**
   * Follow the connection: after a reconnect, each attempt checks its record for a cancel or a
   * takeover it may have missed; when the connection ends for good, the worker fails.
   */
  private async watchConnection(): Promise<void> {
    const { nc } = this.conn;
    void (async () => {
      for await (const status of nc.status()) {
        if (status.type !== "reconnect") continue;
        this.log.info({ running: this.runningJobs }, "reconnected: checking running jobs");
        this.dispatcher?.recount();
        for (const a of this.attempts) {
          void a.recheck().catch((err: unknown) => this.log.warn({ err, jobId: a.job.id }, "recheck failed"));
        }
      }
    })();
    const err = await nc.closed();
    if (this.stateValue === "stopped" || this.stopping) return; // our own close at the end of a shutdown
    this.stateValue = "failed";
    this.log.error({ err }, "the broker connection ended for good: stopping every job");
    for (const a of this.attempts) a.stop("connection lost");
    await this.dispatcher?.stopPulling();
    await this.dispatcher?.settled();
    this.releaseResources();
    this.settleEnded.reject(new BrokerError("the broker connection ended for good", {}, err ?? undefined));
  }

  private releaseResources(): void {
    clearInterval(this.registryTimer);
    clearTimeout(this.registryPending);
    this.rules?.close();
    this.slots?.close();
    this.advisorySub?.unsubscribe();
    this.cancelSub?.unsubscribe();
    // Requests in flight are answered (or their askers time out and ask another keeper).
    void this.keeper?.close();
  }

  private async shutdown(graceMs: number): Promise<StopKind> {
    this.stateValue = "draining";
    this.log.info({ graceMs, running: this.runningJobs }, "draining");
    await this.publishRegistry();
    const loops = (async () => {
      await this.dispatcher?.stopPulling();
      await this.dispatcher?.settled();
    })();
    let forced = this.forceRequested;
    if (!forced) {
      const timer = sleep(graceMs, "timeout" as const, { ref: false });
      forced =
        (await Promise.race([loops.then(() => "done" as const), timer])) === "timeout" || this.forceRequested;
    }
    if (forced) {
      for (const a of this.attempts) a.stop("handed back");
      this.log.warn({ handedBack: this.runningJobs }, "grace period over: handing running jobs back");
    }
    await loops;
    this.releaseResources();
    await this.metrics?.close();
    this.stateValue = "stopped";
    await this.publishRegistry();
    // A drain that fails (the connection already closed) leaves nothing to flush: close is enough.
    await this.conn.nc.drain().catch(() => this.conn.nc.close());
    const kind: StopKind = forced ? "forced" : "drained";
    this.log.info({ kind }, "worker stopped");
    this.settleEnded.resolve(kind);
    return kind;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }
}

/** Whether a job's records ask for it to stop: its cancel request, or its split job's end (#27). */
async function cancelWanted(store: JobStore, job: JobMessage): Promise<boolean> {
  const own = await store.get(job.id);
  if (own?.record.cancelRequested) return true;
  if (!job.part) return false;
  const parent = (await store.get(job.part.parent))?.record;
  return parent !== undefined && (parent.cancelRequested || endedWithoutResult(parent));
}
