/**
 * One delivery of one job on this worker, from claim to settle. A JobAttempt owns everything the
 * attempt does: its claim on the record, one heartbeat that runs until the message is settled, its
 * MARS run, one way to be stopped (`stop(reason)`), and every effect on the target, which happens
 * only after a fenced check that the attempt still owns the job.
 */
import { createWriteStream, type WriteStream } from "node:fs";
import { readdir, rm, stat } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";
import { randomUUID } from "node:crypto";
import { dirname, join, resolve } from "node:path";
import type { JetStreamClient } from "@nats-io/jetstream";
import {
  afterFailure,
  encode,
  initialRecord,
  type JobEventPublisher,
  type JobMessage,
  type JobMsg,
  type JobRecord,
  type JobState,
  type JobStore,
  othersUnseen,
  policyOf,
  subjects,
  type SubmissionWatch,
  TERMINAL_STATES,
  type VersionedRecord,
} from "../broker/index.js";
import type { ObjectStore } from "@nats-io/obj";
import type { NatsConnection } from "@nats-io/transport-node";
import type { Logger } from "pino";
import {
  asFleetError,
  errorFromRecord,
  errorRecordSchema,
  type ErrorRecord,
  JobCancelledError,
  JobFailedError,
  JobNotFoundError,
  type MarsFleetError,
} from "../core/index.js";
import { requestKey } from "../mars/index.js";
import {
  attemptRunId,
  commitDurablePart,
  discardPart,
  earlierAttemptParts,
  errorForOutcome,
  landsBy,
  type MarsRun,
  partPathFor,
  prepareTargetDir,
  resolveInside,
  type ResultCache,
  type RunLease,
  type RunOutcome,
  startMars,
} from "../runner/index.js";
import { DEFAULT_MAX_PAYLOAD, deadLetterPayload, publishDeadLetter } from "./dead-letter.js";
import type { Journal } from "./journal.js";
import { afterPart, checkPart, isPart } from "./fan-in.js";

/**
 * How long an attempt that finds an earlier attempt's fence waits for that attempt's file to land
 * before it runs MARS again (or, past its own fence, before it moves its own copy into place).
 */
const LANDING_GRACE_MS = 2000;

/** The most log lines kept with a cached result (replayed to the jobs it serves). */
const MAX_KEPT_LINES = 10_000;

/**
 * What an attempt works with: the broker, this host's places and the worker's timings. Plain
 * services and values, the same for every attempt; nothing in it calls back into the worker.
 */
export interface AttemptEnv {
  nc: NatsConnection;
  js: JetStreamClient;
  store: JobStore;
  journal: Journal;
  workerId: string;
  queue: string;
  sharedRoot: string;
  heartbeatMs: number;
  /** How long a request to the broker may take before the client gives up on it (the fence's bound). */
  requestTimeoutMs: number;
  killGraceMs: number;
  /** The retry policy of a job that carries none (from before jobs carried theirs). */
  maxAttempts: number;
  retryDelayMs: number;
  command?: readonly string[];
  /** The results object store (opened on first use). */
  results: () => Promise<ObjectStore>;
  /** The result cache under the shared root, when one is configured (MARS_CACHE_MAX_BYTES). */
  cache?: ResultCache;
  /** What the QoS rules in force say of caching a job's result: `off`, a time to live, or nothing. */
  cachePolicy?: (job: JobMessage) => "off" | number | undefined;
  log: Logger;
}

/** After a part's end could not be followed up (the broker): its message comes back after this. */
const PART_RETRY_MS = 1000;

/** A run that never started because its attempt was stopped first (while waiting for another run). */
function stoppedOutcome(): RunOutcome {
  return {
    status: "cancelled",
    bytes: 0,
    elapsedMs: 0,
    exitCode: null,
    signal: null,
    errorLines: [],
    tail: [],
    lines: 0,
  };
}

/** What the fenced commit moves into place: a MARS run's part file, or a cache entry linked there. */
type Output = Pick<MarsRun, "partPath" | "commit" | "discard">;

/** How an attempt ended, for those who observe settlements (metrics, the registry). */
export interface AttemptEnd {
  state: JobState;
  /** How long MARS ran, when it did. */
  elapsedMs: number | undefined;
  /** Handed back (nak): pullable again after this long (its retry delay; 0 at once). */
  againAfterMs?: number;
}

/**
 * Why an attempt is told to stop: a client cancelled the job; the worker shuts down and hands it
 * back; another attempt owns the job now; the broker connection is gone for good.
 */
export type StopReason = "cancelled" | "handed back" | "lease lost" | "connection lost";

/** What an attempt ends with: a state for the record, and what to do with the message. */
interface Settlement {
  state: JobState;
  settle: "ack" | "term" | "nak";
  /** How long MARS ran, when it did. */
  elapsedMs?: number;
  error?: ErrorRecord;
  result?: JobRecord["result"];
  nakDelayMs?: number;
  deadLetter?: boolean;
  /** Said with the state event (`handed back`). */
  reason?: string;
}

/** The attempt no longer owns the job, or cannot reach the broker: it records and settles nothing. */
interface Abandoned {
  abandoned: "lease lost" | "connection lost";
}

type ClaimOutcome =
  | { kind: "run"; version: VersionedRecord }
  | { kind: "skip"; why: "terminal" | "duplicate" | "cancelled"; record: JobRecord };

export class JobAttempt {
  private readonly stopper = new AbortController();
  /** The record as this attempt last wrote it: the revision every later change is checked against. */
  private version: VersionedRecord | undefined;
  /** The fence an earlier attempt left in the record, as this attempt's fence found it (see commit). */
  private earlierFence: JobRecord["committing"];
  /**
   * This attempt's claim token (the record's `claim` while it owns the job), and when the claim's
   * write was answered: any write ordered before it was answered before it, or not at all, within
   * one JetStream request's wait (see commit).
   */
  private readonly claimId = randomUUID();
  private claimedAt = 0;
  /** The last revision of the record this attempt's claim had seen (VersionedRecord.seenUpTo). */
  private claimSeenUpTo: number | undefined;
  /** The earlier fence was found among writes this attempt's fence did not see (see fence). */
  private earlierFenceUnseen = false;
  private heartbeat: NodeJS.Timeout | undefined;
  private pid = -1;
  /** The time to live the QoS rules give this job's cached result (undefined: the worker's). */
  private cacheTtlMs: number | undefined;
  /** The key whose run this attempt holds (coalescing: other jobs may wait on its result). */
  private leadingKey: string | undefined;
  /** Cancelled while other jobs wait on this run: MARS goes on for them until none is left. */
  private cancelledForOthers = false;
  /** The run's log lines as published (kept with a cached result, replayed to the jobs it serves). */
  private readonly runLines: string[] = [];
  /** Lines of another job's run this attempt published while it waited on it (coalescing). */
  private followedLines = 0;
  /** While this attempt holds a key's run: its live log, which the jobs waiting on it follow. */
  private liveLog: WriteStream | undefined;
  private bytes = 0;
  private submissionWatch: SubmissionWatch | undefined;
  private readonly log: Logger;
  /** The shared root as MARS sees it, with its slash: taken out of what users may see (rootRelative). */
  private readonly rootPrefix: string;

  constructor(
    private readonly ctx: AttemptEnv,
    private readonly msg: JobMsg,
    readonly job: JobMessage,
    private readonly events: JobEventPublisher,
    /** The QoS rule that refuses the job, found by the dispatcher before the attempt (checked again here: the client did too). */
    private readonly denied?: MarsFleetError,
  ) {
    this.log = ctx.log.child({ jobId: job.id, attempt: this.attempt, streamSeq: msg.info.streamSequence });
    this.rootPrefix = `${resolve(ctx.sharedRoot)}/`;
  }

  get attempt(): number {
    return this.msg.info.deliveryCount;
  }

  get stopReason(): StopReason | undefined {
    return this.stopper.signal.aborted ? (this.stopper.signal.reason as StopReason) : undefined;
  }

  /** Stop the attempt: MARS is stopped (SIGTERM, then SIGKILL), and `reason` decides what follows. */
  stop(reason: StopReason): void {
    if (this.stopper.signal.aborted) return;
    if (reason === "cancelled" && this.leadingKey !== undefined) {
      if (!this.cancelledForOthers) void this.cancelShared(this.leadingKey);
      return;
    }
    this.log.info({ reason }, "attempt stopping");
    this.stopper.abort(reason);
  }

  /**
   * A cancel of the job whose run others wait on (coalescing): the run goes on for them, and this
   * job ends cancelled when it does (its own target untouched); once no job waits any more, MARS
   * is stopped as for any cancel.
   */
  private async cancelShared(key: string): Promise<void> {
    this.cancelledForOthers = true;
    const staleMs = 3 * this.ctx.heartbeatMs;
    let told = false;
    while (!this.stopper.signal.aborted && this.leadingKey === key) {
      const waiting = await this.ctx.cache!.waiting(key, staleMs).catch(() => 0); // unreadable: none known
      if (waiting === 0) {
        this.log.info({ reason: "cancelled" }, "attempt stopping");
        this.stopper.abort("cancelled");
        return;
      }
      if (!told) this.log.info({ key, waiting }, "cancelled; the run goes on for the jobs waiting on it");
      told = true;
      await sleep(Math.min(1000, staleMs));
    }
  }

  /**
   * After a reconnect: a cancel published meanwhile was lost (core NATS), and the job may have been
   * redelivered to another worker. The record says both.
   */
  async recheck(): Promise<void> {
    const current = await this.ctx.store.get(this.job.id);
    if (!current || !this.owns(current.record)) this.stop("lease lost");
    else if (current.record.cancelRequested) this.stop("cancelled");
  }

  /**
   * Claim, run, settle; resolves with how the message was settled, or undefined when this attempt
   * settled nothing of its own (skipped, abandoned, or the broker could not be reached). Never
   * throws: a problem the attempt cannot record leaves the message to be redelivered.
   */
  async execute(): Promise<AttemptEnd | undefined> {
    // Made before the claim reads the submission: a cancel written after that read is seen.
    this.submissionWatch = this.ctx.store.watchSubmission(this.job.id);
    try {
      const claim = await this.claim();
      if (claim.kind === "skip") {
        await this.skip(claim);
        return undefined;
      }
      this.version = claim.version;
      this.startHeartbeat();
      try {
        const end = (await this.adoptCommitted()) ?? (await this.run());
        if (!("abandoned" in end)) return await this.settle(end);
        this.log.warn({ reason: end.abandoned }, "attempt abandoned: nothing recorded, nothing committed");
        await this.events.flush();
      } finally {
        clearInterval(this.heartbeat);
      }
    } catch (err) {
      // The broker could not be reached within the retries: the message stays unacked, and another
      // delivery (after the ack wait) takes the job up again. Nothing was committed.
      this.log.error({ err }, "attempt could not be recorded; the job will be redelivered");
    } finally {
      this.submissionWatch.close();
    }
    return undefined;
  }

  private owns(record: JobRecord): boolean {
    return (
      record.claim === this.claimId &&
      record.attempt === this.attempt &&
      record.worker === this.ctx.workerId &&
      record.seq === this.msg.info.streamSequence &&
      !TERMINAL_STATES.has(record.state)
    );
  }

  /** Claim the record by compare-and-set; skip a job that is finished, cancelled or a duplicate message. */
  private async claim(): Promise<ClaimOutcome> {
    const { ctx, job } = this;
    const seq = this.msg.info.streamSequence;
    let skip: Extract<ClaimOutcome, { kind: "skip" }> | undefined;
    const change = (rec: JobRecord): JobRecord | undefined => {
      skip = undefined;
      if (TERMINAL_STATES.has(rec.state)) skip = { kind: "skip", why: "terminal", record: rec };
      else if (rec.seq !== undefined && rec.seq !== seq)
        skip = { kind: "skip", why: "duplicate", record: rec };
      if (skip) return undefined;
      if (rec.cancelRequested) {
        const cancelled = { ...rec, state: "cancelled" as const, seq, finishedAt: Date.now() };
        skip = { kind: "skip", why: "cancelled", record: cancelled };
        return cancelled;
      }
      const startedAt = Date.now();
      return {
        ...rec,
        state: "running",
        attempt: this.attempt,
        seq,
        worker: ctx.workerId,
        startedAt,
        claim: this.claimId,
      };
    };
    // A first delivery finds no status yet, so the submission alone is read (one read, not two).
    const known = this.attempt === 1 ? await ctx.store.submission(job.id) : undefined;
    let claimed: VersionedRecord;
    try {
      claimed = await ctx.store.mutate(job.id, change, known);
    } catch (err) {
      if (!(err instanceof JobNotFoundError)) throw err;
      // The record is gone (expired, or the message was published by hand): rebuild it from the message.
      claimed = await ctx.store.mutate(job.id, change, {
        record: initialRecord(job, ctx.maxAttempts),
        revision: 0,
      });
    }
    this.claimedAt = Date.now();
    this.claimSeenUpTo = claimed.seenUpTo;
    return skip ?? { kind: "run", version: claimed };
  }

  private async skip(claim: Extract<ClaimOutcome, { kind: "skip" }>): Promise<void> {
    this.log.info({ why: claim.why, state: claim.record.state }, "job skipped");
    if (claim.why === "cancelled") {
      this.events.state({ state: "cancelled", attempt: claim.record.attempt, at: Date.now() });
      await this.events.flush();
    }
    // A part that ended before its worker could finish what follows (the fan-in, or ending its
    // split job): done now, under a heartbeat, before the message goes.
    const partEnd = claim.why === "terminal" || claim.why === "cancelled";
    if (partEnd && isPart(this.job)) {
      this.startHeartbeat();
      try {
        if (!(await this.partEnded(claim.record.state, claim.record.error))) return;
      } finally {
        clearInterval(this.heartbeat);
      }
    }
    this.msg.term();
  }

  /**
   * What a part's end starts (fan-in.ts); false when the broker stood in the way and the message was
   * handed back for a later attempt to do it.
   */
  private async partEnded(state: JobState, error: ErrorRecord | undefined): Promise<boolean> {
    const owner = { attempt: this.attempt, seq: this.msg.info.streamSequence };
    if (!isPart(this.job)) return true;
    try {
      await afterPart(this.ctx, this.job, { state, ...(error && { error }) }, owner, this.log);
      return true;
    } catch (err) {
      this.log.warn({ err }, "could not finish the part's split job; the message comes back for it");
      this.msg.nak(PART_RETRY_MS);
      return false;
    }
  }

  /** `working()` and a heartbeat every interval, from the claim until the message is settled. */
  private startHeartbeat(): void {
    this.heartbeat = setInterval(() => {
      this.msg.working();
      const beat = { worker: this.ctx.workerId, attempt: this.attempt, pid: this.pid, bytes: this.bytes };
      this.ctx.nc.publish(subjects.heartbeat(this.job.id), encode({ ...beat, at: Date.now() }));
    }, this.ctx.heartbeatMs);
  }

  /** Run MARS and decide how the attempt ends. Never throws: every failure becomes a settlement. */
  private async run(): Promise<Settlement | Abandoned> {
    const { ctx, job, attempt } = this;
    if (attempt > 1) this.events.state({ state: "retrying", attempt, worker: ctx.workerId, at: Date.now() });
    let targetPath: string;
    try {
      if (this.denied) throw this.denied;
      if (isPart(job) && (await checkPart(ctx, job)) === "ended")
        throw new JobCancelledError("its split job has ended; the part is not run");
      targetPath = resolveInside(ctx.sharedRoot, job.target);
      await prepareTargetDir(ctx.sharedRoot, targetPath);
      if (attempt > 1) await removeEarlierParts(targetPath, job.id, attempt);
    } catch (err) {
      return this.failure(asFleetError(err), true);
    }
    const runId = attemptRunId(job.id, attempt);
    const policy = ctx.cache?.enabled ? ctx.cachePolicy?.(job) : undefined;
    this.cacheTtlMs = typeof policy === "number" ? policy : undefined;
    const cacheable = ctx.cache?.enabled && job.deliver === "share" && policy !== "off";
    const key = cacheable ? requestKey(job.requests) : undefined;
    let lease: RunLease | undefined;
    if (key) {
      const joined = await this.leadOrJoin(key, targetPath, runId);
      if ("settled" in joined) return joined.settled;
      lease = joined.lease;
      if (lease) {
        this.leadingKey = key;
        this.liveLog = createWriteStream(ctx.cache!.liveLogPath(key));
        // A live log that cannot be written leaves the waiting jobs the whole log at the end.
        this.liveLog.on("error", (err) => this.log.debug({ err, key }, "could not write the live log"));
      }
    }
    try {
      return await this.runMars(key, targetPath, runId);
    } finally {
      this.leadingKey = undefined;
      if (this.liveLog) {
        const live = this.liveLog;
        this.liveLog = undefined;
        await new Promise<void>((done) => live.end(done));
        await rm(ctx.cache!.liveLogPath(key!), { force: true });
      }
      await lease?.release().catch((err: unknown) => {
        // Left behind, the run file goes stale and a waiter takes over after its stale time.
        this.log.warn({ err, key }, "could not release the run of this key");
      });
    }
  }

  /**
   * A job whose key another job is running waits for that run's result instead of running MARS
   * again (coalescing): a hit from the cache, or else the right to run MARS for the key. Waiting,
   * it keeps its slot and its heartbeat; when the other run ends without a result (it failed, or
   * its worker died and its run file went stale) one of the waiters runs MARS.
   */
  private async leadOrJoin(
    key: string,
    targetPath: string,
    runId: string,
  ): Promise<{ settled: Settlement | Abandoned } | { lease: RunLease | undefined }> {
    const cache = this.ctx.cache!;
    const timing = { touchMs: this.ctx.heartbeatMs, staleMs: 3 * this.ctx.heartbeatMs };
    let waitingSince: number | undefined;
    let liveFrom = 0; // how far this job followed the run's live log
    for (let waited = false; ; waited = true) {
      if (waitingSince !== undefined) {
        // The run waited on failed for good: the same error, without running MARS into it again.
        const told = errorRecordSchema.safeParse(await cache.failureSince(key, waitingSince));
        if (told.success) {
          this.log.info(
            { key, code: told.data.code },
            "the identical request's run failed: so does this job",
          );
          return { settled: this.failure(errorFromRecord(told.data), true) };
        }
      }
      const hit = await this.fromCache(key, targetPath, runId);
      if (hit) return { settled: hit };
      let lease: RunLease | undefined;
      try {
        lease = await cache.lead(key, `${this.job.id}/${this.attempt}`, timing);
      } catch (err) {
        // The run file could not be made (a read-only cache folder): run MARS without coalescing.
        this.log.warn({ err, key }, "could not take the run of this key; MARS runs uncoalesced");
        return { lease: undefined };
      }
      if (lease) return { lease };
      if (!waited) this.log.info({ key }, "an identical request is running: waiting for its result");
      waitingSince ??= Date.now();
      try {
        // The run's log, live, as this job's own (its first lines too: the live log starts with the run).
        await cache.awaitRun(key, {
          staleMs: timing.staleMs,
          signal: this.stopper.signal,
          waiter: `${this.job.id}.${this.attempt}`,
          onPoll: async () => {
            const read = await cache
              .readLive(key, liveFrom)
              .catch(() => ({ lines: [] as string[], next: liveFrom }));
            liveFrom = read.next;
            for (const line of read.lines)
              this.events.line(this.attempt, ++this.followedLines, line, Date.now());
          },
        });
      } catch {
        // Stopped while waiting (cancelled, handed back, lease lost): settled as a stopped run.
        return { settled: this.settlementFor(stoppedOutcome()) };
      }
    }
  }

  private async runMars(
    key: string | undefined,
    targetPath: string,
    runId: string,
  ): Promise<Settlement | Abandoned> {
    const { ctx, job } = this;
    const run = startMars({
      requests: job.requests,
      targetPath,
      runId,
      environ: job.environ,
      ...(job.marsEnv && { env: job.marsEnv as Record<string, string> }),
      timeoutMs: job.timeoutMs,
      killGraceMs: ctx.killGraceMs,
      signal: this.stopper.signal,
      deferCommit: true,
      targetChecked: true, // prepareTargetDir above
      ...(ctx.command && { command: ctx.command }),
    });
    await this.follow(run, runId);
    const outcome = await run.outcome;
    await ctx.journal.remove(runId);
    this.log.debug(
      { status: outcome.status, exitCode: outcome.exitCode, signal: outcome.signal, bytes: outcome.bytes },
      "MARS finished",
    );
    if (outcome.status !== "succeeded") {
      const settled = this.settlementFor(outcome);
      if (key && "state" in settled && settled.state === "failed" && settled.error)
        await ctx.cache!.failed(key, settled.error).catch((err: unknown) => {
          // Not told: the waiting jobs run MARS themselves, one after another, and fail likewise.
          this.log.warn({ err, key }, "could not tell the waiting jobs that this run failed");
        });
      // Its own job was cancelled while the run went on for others: it ends cancelled, not failed.
      if (this.cancelledForOthers) return this.failure(new JobCancelledError("the job was cancelled"), true);
      return settled;
    }
    const settled = await this.commit(run, outcome);
    if (key && "state" in settled && settled.state === "succeeded") await this.keep(key, targetPath, outcome);
    return settled;
  }

  /**
   * The result from the cache, when it holds this job's key: linked into this attempt's part file,
   * checked, then committed behind the same fence as MARS's output. Undefined: a miss, MARS runs.
   */
  private async fromCache(
    key: string,
    targetPath: string,
    runId: string,
  ): Promise<Settlement | Abandoned | undefined> {
    const { ctx, attempt } = this;
    const partPath = partPathFor(targetPath, runId);
    const started = Date.now();
    const entry = await ctx.cache!.deliver(key, partPath, this.cacheTtlMs).catch((err: unknown) => {
      // The cache is an optimisation: an entry that cannot be read is a miss, and MARS runs.
      this.log.warn({ err, key }, "could not read the result cache; MARS runs");
      return undefined;
    });
    if (!entry) return undefined;
    this.log.info({ key, bytes: entry.bytes, savedMs: entry.marsMs }, "served from the result cache");
    this.events.state({ state: "running", attempt, worker: ctx.workerId, at: Date.now() });
    // The log of the run that made the result, then a line that says where it came from.
    const replayed = await ctx.cache!.log(key).catch(() => [] as string[]); // none kept: the note alone
    // Lines followed live while this job waited on the run are not sent again.
    for (const [i, line] of replayed.entries())
      if (i >= this.followedLines) this.events.line(attempt, i + 1, line, Date.now());
    this.events.line(
      attempt,
      Math.max(replayed.length, this.followedLines) + 1,
      `mars-fleet: served from the result cache (${entry.bytes} bytes; the log above is the run that made it)`,
      Date.now(),
    );
    this.events.progress({ attempt, bytes: entry.bytes, total: entry.bytes, at: Date.now() });
    const output: Output = {
      partPath,
      commit: () => commitDurablePart(partPath, targetPath),
      discard: () => discardPart(partPath),
    };
    // (The fence reads the part file's inode itself.)
    const settled = await this.commit(output, { bytes: entry.bytes, elapsedMs: Date.now() - started });
    if ("state" in settled && settled.state === "succeeded" && settled.result)
      settled.result = { ...settled.result, cached: { key, savedMs: entry.marsMs } };
    return settled;
  }

  /** Keep a committed result in the cache (best effort: the job has succeeded either way). */
  private async keep(
    key: string,
    targetPath: string,
    outcome: Pick<RunOutcome, "elapsedMs">,
    uncommitted = false,
  ): Promise<void> {
    try {
      await this.ctx.cache!.store(key, targetPath, {
        jobId: this.job.id,
        marsMs: outcome.elapsedMs,
        sync: uncommitted,
        log: this.runLines,
        ...(this.cacheTtlMs !== undefined && { ttlMs: this.cacheTtlMs }),
      });
    } catch (err) {
      // Not kept: a later job with this key runs MARS again; nothing else depends on the entry.
      this.log.warn({ err, key }, "could not keep the result in the cache");
    }
  }

  /**
   * An earlier attempt passed the fence and moved its output into place, but its success never
   * reached the record (it lost the broker, or was frozen, past its lease). That output is the
   * result: moving a second copy into place would complete the job twice.
   */
  private async adoptCommitted(
    committing = this.version?.record.committing,
    /** How long to give the earlier attempt's rename: by default a moment, at the fence longer. */
    until = Date.now() + LANDING_GRACE_MS,
  ): Promise<Settlement | undefined> {
    if (!committing || this.job.deliver !== "share") return undefined;
    const targetPath = resolveInside(this.ctx.sharedRoot, this.job.target);
    // The earlier attempt passed its fence, so it renames next, unless it died first: give it a
    // moment (a stalled process, a slow shared filesystem) before running MARS again.
    if (!(await landsBy(targetPath, committing, until))) {
      const found = await stat(targetPath).catch(() => undefined); // none: nothing was moved there
      this.log.info(
        {
          committedBy: committing.attempt,
          expected: { ino: committing.ino, bytes: committing.bytes },
          found: found && { ino: found.ino, bytes: found.size, mtimeMs: found.mtimeMs },
        },
        "an earlier attempt's fence is recorded, but its result is not in place",
      );
      return undefined;
    }
    this.log.info({ committedBy: committing.attempt }, "an earlier attempt's result is in place: adopted");
    const result = { target: this.job.target, bytes: committing.bytes, elapsedMs: committing.elapsedMs };
    return { state: "succeeded", settle: "ack", elapsedMs: committing.elapsedMs, result };
  }

  /** Publish what MARS prints and writes while it runs. */
  private async follow(run: MarsRun, runId: string): Promise<void> {
    const { ctx, job, attempt } = this;
    for await (const ev of run.events()) {
      if (ev.type === "log") {
        const line = this.rootRelative(ev.line);
        // After lines followed from another job's run (that then died), this run's own come next.
        this.events.line(attempt, this.followedLines + ev.seq, line, ev.at);
        if (this.ctx.cache?.enabled && this.runLines.length < MAX_KEPT_LINES) this.runLines.push(line);
        this.liveLog?.write(line + "\n");
      } else if (ev.type === "progress") {
        this.bytes = ev.bytes;
        this.events.progress({ attempt, bytes: ev.bytes, total: ev.total, at: ev.at });
      } else if (ev.type === "spawned") {
        this.pid = ev.pid;
        // "running" means MARS runs: followers (the shares gateway's `started`) learn it and its pid.
        this.events.state({ state: "running", attempt, worker: ctx.workerId, pid: ev.pid, at: ev.at });
        this.log.info({ pid: ev.pid }, "job started");
        const entry = {
          workerPid: process.pid,
          pgid: run.processGroup,
          partPath: run.partPath,
          jobId: job.id,
        };
        await ctx.journal.add(runId, entry).catch((err: unknown) => {
          // The run goes on; only a crash of this worker would leave its part file to a later sweep.
          this.log.warn({ err }, "could not write the journal entry");
        });
      }
    }
  }

  /**
   * The fence: before anything reaches the target, a compare-and-set on the record proves that this
   * attempt still owns the job. A stale attempt (frozen past its lease, another attempt took over)
   * discards its output instead.
   */
  private async commit(
    run: Output,
    outcome: Pick<RunOutcome, "bytes" | "elapsedMs" | "partIno">,
  ): Promise<Settlement | Abandoned> {
    const { ctx, job } = this;
    const ino = outcome.partIno ?? (await stat(run.partPath)).ino;
    const fence = await this.fence({
      attempt: this.attempt,
      ino,
      bytes: outcome.bytes,
      elapsedMs: outcome.elapsedMs,
    });
    if (fence !== "owned") {
      if (fence === "cancelled" && this.cancelledForOthers && this.leadingKey)
        await this.keep(this.leadingKey, run.partPath, outcome, true);
      await run.discard();
      if (fence === "cancelled") return this.failure(new JobCancelledError("the job was cancelled"), true);
      this.log.warn("lost the lease on this job to a newer attempt; its output is discarded");
      return { abandoned: "lease lost" };
    }
    // An earlier attempt passed its fence before this one's claim, but its file was not in place
    // when this attempt looked (adoptCommitted at the start): it may have landed since. Then it is
    // the result, and this attempt's copy is not moved over it.
    // Before moving its own output over that place, it waits as long as the earlier attempt could
    // still learn that its fence held. That fence's write was applied before this attempt's claim,
    // so it was sent before the claim was answered (claimedAt), and its answer is taken within one
    // request's wait of being sent, or never (then that attempt reads the record again, finds this
    // claim and discards its output). The claim's own sending time is no bound: a claim resent
    // after a timeout may be applied long after it was first sent, and an earlier fence just before.
    // An earlier fence this attempt's own did not see was stored before it: sent before this
    // fence was answered, which is now.
    const since = this.earlierFenceUnseen ? Date.now() : this.claimedAt;
    const until = Math.max(Date.now(), since + this.ctx.requestTimeoutMs) + LANDING_GRACE_MS;
    const landed = this.earlierFence && (await this.adoptCommitted(this.earlierFence, until));
    if (landed) {
      await run.discard();
      return landed;
    }
    const result = { target: job.target, bytes: outcome.bytes, elapsedMs: outcome.elapsedMs };
    const elapsedMs = outcome.elapsedMs;
    try {
      if (job.deliver === "objectstore") {
        const { uploadResult } = await import("../broker/results.js");
        await uploadResult(await ctx.results(), job.id, run.partPath);
        await run.discard();
        return { state: "succeeded", settle: "ack", elapsedMs, result: { ...result, object: job.id } };
      }
      await run.commit();
      // The revisions say which writes this attempt's claim and fence had seen.
      const revisions = {
        claimSeenUpTo: this.claimSeenUpTo,
        fence: this.version?.revision,
        fenceSeenUpTo: this.version?.seenUpTo,
      };
      this.log.debug({ target: job.target, bytes: outcome.bytes, revisions }, "result committed");
      return { state: "succeeded", settle: "ack", elapsedMs, result };
    } catch (err) {
      await run.discard();
      const error = asFleetError(err);
      this.log.warn({ err }, "could not deliver the result");
      // A broker that would not take the object may take it on another attempt; a filesystem error
      // on the target (e.g. it turned into a directory) will not go away.
      return this.failure(error, error.code !== "BROKER_ERROR" && error.code !== "INTERNAL");
    }
  }

  /** Compare-and-set on the record: `owned` while it still names this attempt and nobody cancelled the job. */
  private async fence(
    committing: NonNullable<JobRecord["committing"]>,
  ): Promise<"owned" | "cancelled" | "lost"> {
    let verdict: "owned" | "cancelled" | "lost" = "lost";
    // A cancel lives in the submission, which the status write below does not read: its
    // announcement (core NATS) may have been missed, so the fence looks for itself, unless the
    // submission is known unchanged since the claim read it (and found no cancel there).
    const requested =
      this.submissionWatch === undefined || this.submissionWatch.changed
        ? ((await this.ctx.store.submission(this.job.id))?.record.cancelRequested ?? false)
        : false;
    this.version = await this.ctx.store.mutate(
      this.job.id,
      (rec) => {
        verdict = !this.owns(rec) ? "lost" : rec.cancelRequested || requested ? "cancelled" : "owned";
        this.earlierFence = rec.committing?.claim === this.claimId ? undefined : rec.committing;
        return verdict === "owned"
          ? { ...rec, committing: { ...committing, claim: this.claimId } }
          : undefined;
      },
      this.version,
    );
    const found = verdict as "owned" | "cancelled" | "lost"; // set in the change above
    return found === "owned" ? this.unseenWrites() : found;
  }

  /**
   * After a fence that held: writes to the record stored between this attempt's claim and its
   * fence that neither compare-and-set saw (a cluster can let them through, see
   * JobStore.writesBetween). Another attempt's fence among them came first: its output is the
   * result, as with an earlier fence found in the record. Another attempt's claim alone: that
   * attempt owns the job, and this one has lost it.
   */
  private async unseenWrites(): Promise<"owned" | "lost"> {
    if (this.claimSeenUpTo === undefined || !this.version) return "owned";
    const between = await this.ctx.store.writesBetween(
      this.job.id,
      this.claimSeenUpTo,
      this.version.revision,
    );
    const found = othersUnseen(between, (r) => r.claim === this.claimId);
    if (!found) return "owned";
    this.log.warn(
      { revisions: found.revisions, fence: found.fence?.revision },
      "the record holds writes of another attempt that this attempt's compare-and-set did not see",
    );
    if (!found.fence) return "lost";
    this.earlierFence = found.fence.record.committing;
    this.earlierFenceUnseen = true;
    return "owned";
  }

  private settlementFor(outcome: RunOutcome): Settlement | Abandoned {
    const elapsedMs = outcome.elapsedMs;
    const reason = this.stopReason;
    if (reason === "handed back" && outcome.status === "cancelled") {
      // The worker is shutting down: another worker takes the job; this attempt did not fail.
      return { state: "retrying", settle: "nak", nakDelayMs: 0, elapsedMs, reason };
    }
    if (reason === "lease lost" || reason === "connection lost") return { abandoned: reason };
    const error = errorForOutcome(outcome, this.job.timeoutMs)!;
    return { ...this.failure(error, !error.retryable), elapsedMs };
  }

  /**
   * A failed attempt: final errors end the job; retryable ones are offered again after a delay
   * growing with the attempt, until the last attempt, which fails the job and dead-letters it.
   */
  private failure(error: MarsFleetError, final: boolean): Settlement {
    const { attempt } = this;
    const policy = policyOf(this.job, { maxAttempts: this.ctx.maxAttempts, delayMs: this.ctx.retryDelayMs });
    const record = this.recordWithoutRoot(error.toRecord());
    const verdict = afterFailure({ code: error.code, retryable: error.retryable && !final }, attempt, policy);
    if (verdict.kind === "cancelled") return { state: "cancelled", settle: "term", error: record };
    if (verdict.kind === "retry")
      return { state: "retrying", settle: "nak", nakDelayMs: verdict.delayMs, error: record };
    if (verdict.final === "error")
      return { state: "failed", settle: "term", error: { ...record, retryable: false } };
    const last = new JobFailedError(`failed after ${attempt} attempts; last: ${record.message}`, {
      ...record.details,
      lastCode: error.code,
    });
    return { state: "failed", settle: "term", error: last.toRecord(), deadLetter: true };
  }

  /**
   * A line as users may see it: paths under the shared root relative to it (MARS echoes its
   * target, a part file under the root); no path of this server's reaches a record or a log.
   */
  private rootRelative(text: string): string {
    return text.replaceAll(this.rootPrefix, "");
  }

  private recordWithoutRoot(rec: ErrorRecord): ErrorRecord {
    const details = Object.fromEntries(
      Object.entries(rec.details).map(([k, v]) => [k, typeof v === "string" ? this.rootRelative(v) : v]),
    );
    return { ...rec, message: this.rootRelative(rec.message), details };
  }

  /** Record the end, publish it, settle the message; a stale attempt writes nothing. */
  private async settle(s: Settlement): Promise<AttemptEnd | undefined> {
    const { ctx, job, msg, attempt, events } = this;
    const terminal = TERMINAL_STATES.has(s.state);
    let stale = false;
    // Every log line and progress event is stored before the record says how the attempt ended:
    // whoever sees that record (result() returns on it) finds the whole log.
    await events.flush();
    await ctx.store.mutate(
      job.id,
      (rec) => {
        stale = !this.owns(rec);
        if (stale) return undefined;
        const next: JobRecord = { ...rec, state: s.state };
        if (s.error) next.error = s.error;
        if (s.result) next.result = s.result;
        if (terminal) next.finishedAt = Date.now();
        return next;
      },
      this.version,
    );
    if (stale) {
      this.log.warn("lost the lease on this job to a newer attempt; its result is not recorded");
      await events.flush();
      return undefined;
    }
    events.state({
      state: s.state,
      attempt,
      worker: ctx.workerId,
      at: Date.now(),
      ...(s.reason && { reason: s.reason }),
      ...(s.result && { result: s.result }),
      ...(s.error && { error: s.error }),
    });
    await events.flush();
    if (s.deadLetter) {
      await publishDeadLetter(ctx.js, ctx.queue, {
        reason: "failed on its last attempt",
        jobId: job.id,
        streamSeq: msg.info.streamSequence,
        deliveries: attempt,
        ...(s.error && { error: s.error }),
        ...deadLetterPayload(msg.data, msg.headers, ctx.nc.info?.max_payload ?? DEFAULT_MAX_PAYLOAD),
        at: Date.now(),
      }).catch((err: unknown) =>
        this.log.error({ err }, "could not dead-letter the job; it is recorded failed"),
      );
    }
    if (terminal && isPart(job) && !(await this.partEnded(s.state, s.error))) {
      return { state: s.state, elapsedMs: s.elapsedMs, againAfterMs: PART_RETRY_MS };
    }
    if (s.settle === "ack") msg.ack();
    else if (s.settle === "term") msg.term();
    else msg.nak(s.nakDelayMs);
    this.log.info(
      {
        state: s.state,
        settle: s.settle,
        code: s.error?.code,
        elapsedMs: s.elapsedMs,
        ...(s.result && { target: s.result.target, bytes: s.result.bytes }),
      },
      "job settled",
    );
    return {
      state: s.state,
      elapsedMs: s.elapsedMs,
      ...(s.settle === "nak" && { againAfterMs: s.nakDelayMs ?? 0 }),
    };
  }
}

/** Remove part files of earlier attempts of this job (a dead worker's leftovers) beside the target. */
async function removeEarlierParts(targetPath: string, jobId: string, attempt: number): Promise<void> {
  const names = await readdir(dirname(targetPath)).catch(() => [] as string[]); // no directory, no parts
  await Promise.all(
    earlierAttemptParts(names, targetPath, jobId, attempt).map((n) =>
      discardPart(join(dirname(targetPath), n)),
    ),
  );
}
