/**
 * One job on one worker: claim the record by compare-and-set, run MARS through the runner, stream
 * events and heartbeats, then record the outcome and settle the message (ack, term or nak).
 */
import { mkdir, readdir, rm } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import type { JetStreamClient, JsMsg } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import type { Logger } from "pino";
import { decode, encode } from "../broker/codec.js";
import type { JobStore, VersionedRecord } from "../broker/records.js";
import {
  initialRecord,
  jobMessageSchema,
  TERMINAL_STATES,
  type JobMessage,
  type JobRecord,
  type JobState,
} from "../broker/schemas.js";
import { subjects } from "../broker/subjects.js";
import {
  asFleetError,
  BrokerError,
  JobFailedError,
  JobNotFoundError,
  type ErrorRecord,
} from "../core/errors.js";
import type { ObjectStore } from "@nats-io/obj";
import { errorForOutcome } from "../runner/outcome.js";
import { startMars, type MarsRun, type RunOutcome } from "../runner/runner.js";
import { discardPart, isPartFile, resolveInside } from "../runner/target.js";
import { publishDeadLetter } from "./dead-letter.js";
import { JobEventPublisher } from "../broker/events.js";
import type { Journal } from "./journal.js";

export interface WorkerContext {
  nc: NatsConnection;
  js: JetStreamClient;
  store: JobStore;
  journal: Journal;
  workerId: string;
  queue: string;
  sharedRoot: string;
  heartbeatMs: number;
  killGraceMs: number;
  maxAttempts: number;
  retryDelayMs: number;
  command?: readonly string[];
  /** Told of every settled attempt (for metrics). */
  onSettled?: (state: JobState, elapsedMs: number | undefined) => void;
  /** The results object store (opened on first use). */
  results: () => Promise<ObjectStore>;
  log: Logger;
}

/** A run the worker may have to stop when it shuts down (then the job is handed back, not cancelled). */
export interface ActiveJob {
  jobId: string;
  run?: MarsRun;
  handBack: boolean;
  /** A client asked to cancel (on `mars.cancel.<id>`). */
  cancelRequested?: boolean;
}

type ClaimDecision =
  | { kind: "run"; record: JobRecord }
  | { kind: "skip"; why: "terminal" | "duplicate" | "cancelled"; record: JobRecord };
type Claim = ClaimDecision & { version: VersionedRecord };

/** Claim the job for this attempt; skip it when it is finished, cancelled or a duplicate message. */
async function claim(ctx: WorkerContext, job: JobMessage, seq: number, attempt: number): Promise<Claim> {
  let outcome: ClaimDecision | undefined;
  const change = (rec: JobRecord): JobRecord | undefined => {
    if (TERMINAL_STATES.has(rec.state)) {
      outcome = { kind: "skip", why: "terminal", record: rec };
      return undefined;
    }
    if (rec.seq !== undefined && rec.seq !== seq) {
      outcome = { kind: "skip", why: "duplicate", record: rec };
      return undefined;
    }
    if (rec.cancelRequested) {
      const cancelled = { ...rec, state: "cancelled" as const, seq, finishedAt: Date.now() };
      outcome = { kind: "skip", why: "cancelled", record: cancelled };
      return cancelled;
    }
    const running = {
      ...rec,
      state: "running" as const,
      attempt,
      seq,
      worker: ctx.workerId,
      startedAt: Date.now(),
    };
    outcome = { kind: "run", record: running };
    return running;
  };
  // First delivery of a message the client published: the record is as the client created it.
  const known =
    attempt === 1 && job.revision !== undefined
      ? { record: initialRecord(job, ctx.maxAttempts), revision: job.revision }
      : undefined;
  let claimed: VersionedRecord;
  try {
    claimed = await ctx.store.mutate(job.id, change, known);
  } catch (err) {
    if (!(err instanceof JobNotFoundError)) throw err;
    // The record is gone (expired, or the message was published by hand): rebuild it from the message.
    await ctx.store.create(initialRecord(job, ctx.maxAttempts));
    claimed = await ctx.store.mutate(job.id, change);
  }
  const result: ClaimDecision = outcome ?? { kind: "skip", why: "terminal", record: claimed.record };
  return { ...result, version: claimed };
}

/** Remove part files of earlier attempts of this job (a dead worker's leftovers) beside the target. */
async function removeEarlierParts(targetPath: string, jobId: string): Promise<void> {
  const prefix = `.${basename(targetPath)}.${jobId}-a`;
  const names = await readdir(dirname(targetPath)).catch(() => [] as string[]);
  await Promise.all(
    names
      .filter((n) => n.startsWith(prefix) && isPartFile(n))
      .map((n) => discardPart(join(dirname(targetPath), n))),
  );
}

/** One delivery of one job on this worker. */
interface Attempt {
  ctx: WorkerContext;
  msg: JsMsg;
  job: JobMessage;
  attempt: number;
  events: JobEventPublisher;
  log: Logger;
  /** The record as this attempt's claim left it. */
  claimed: VersionedRecord;
}

interface Settlement {
  state: JobState;
  /** How long MARS ran, when it did. */
  elapsedMs?: number;
  error?: ErrorRecord;
  result?: JobRecord["result"];
  /** What to do with the message. */
  settle: "ack" | "term" | "nak";
  nakDelayMs?: number;
  deadLetter?: boolean;
}

function settlementFor(
  ctx: WorkerContext,
  outcome: RunOutcome,
  job: JobMessage,
  attempt: number,
  handBack: boolean,
): Settlement {
  if (outcome.status === "succeeded") {
    return {
      state: "succeeded",
      settle: "ack",
      result: { target: job.target, bytes: outcome.bytes, elapsedMs: outcome.elapsedMs },
    };
  }
  if (outcome.status === "cancelled" && handBack) {
    // The worker is shutting down: another worker takes the job; this attempt does not count as failed.
    return { state: "retrying", settle: "nak", nakDelayMs: 0 };
  }
  const error = errorForOutcome(outcome, job.timeoutMs)!;
  if (outcome.status === "cancelled") return { state: "cancelled", settle: "term", error: error.toRecord() };
  if (!error.retryable) return { state: "failed", settle: "term", error: error.toRecord() };
  if (attempt < ctx.maxAttempts) {
    return {
      state: "retrying",
      settle: "nak",
      nakDelayMs: ctx.retryDelayMs * attempt,
      error: error.toRecord(),
    };
  }
  const final = new JobFailedError(`failed after ${attempt} attempts; last: ${error.message}`, {
    ...error.details,
    lastCode: error.code,
  });
  return { state: "failed", settle: "term", error: final.toRecord(), deadLetter: true };
}

/** Handle one delivered job message. Never throws: every problem ends recorded and settled. */
export async function handleJob(ctx: WorkerContext, msg: JsMsg, active: ActiveJob): Promise<void> {
  const seq = msg.info.streamSequence;
  const attempt = msg.info.deliveryCount;
  let log = ctx.log.child({ streamSeq: seq, attempt });
  let job: JobMessage;
  try {
    job = decode(jobMessageSchema, msg.data, "job message");
  } catch (err) {
    const error = asFleetError(err);
    log.warn({ err: error.message }, "invalid job message: terminated and dead-lettered");
    await publishDeadLetter(ctx.js, ctx.queue, {
      reason: "invalid job message",
      streamSeq: seq,
      deliveries: attempt,
      error: error.toRecord(),
      payloadBase64: Buffer.from(msg.data).toString("base64"),
      at: Date.now(),
    }).catch((e: unknown) => log.error({ err: String(e) }, "dead-letter publish failed"));
    msg.term();
    return;
  }
  active.jobId = job.id;
  log = log.child({ jobId: job.id });
  const events = new JobEventPublisher(ctx.js, job.id, log, ctx.nc.info?.max_payload);
  try {
    await runClaimed(ctx, msg, job, attempt, active, events, log);
  } catch (err) {
    // Broker trouble beyond retries: leave the message unacked so it is redelivered after ack_wait.
    log.error({ err: String(err) }, "job handling failed; the job will be redelivered");
  }
}

async function runClaimed(
  ctx: WorkerContext,
  msg: JsMsg,
  job: JobMessage,
  attempt: number,
  active: ActiveJob,
  events: JobEventPublisher,
  log: Logger,
): Promise<void> {
  const claimed = await claim(ctx, job, msg.info.streamSequence, attempt);
  if (claimed.kind === "skip") {
    log.info({ why: claimed.why, state: claimed.record.state }, "job skipped");
    if (claimed.why === "cancelled") {
      events.state({ state: "cancelled", attempt: claimed.record.attempt, at: Date.now() });
      await events.flush();
    }
    msg.term();
    return;
  }
  const current: Attempt = { ctx, msg, job, attempt, events, log, claimed: claimed.version };
  if (attempt > 1) events.state({ state: "retrying", attempt, worker: ctx.workerId, at: Date.now() });

  let targetPath: string;
  try {
    targetPath = resolveInside(ctx.sharedRoot, job.target);
    await mkdir(dirname(targetPath), { recursive: true });
  } catch (err) {
    const error = asFleetError(err);
    await finish(current, {
      state: "failed",
      settle: "term",
      error: { ...error.toRecord(), retryable: false },
    });
    return;
  }
  if (attempt > 1) await removeEarlierParts(targetPath, job.id);
  const runId = `${job.id}-a${attempt}`;
  const run = startMars({
    requests: job.requests,
    targetPath,
    runId,
    environ: job.environ,
    ...(job.marsEnv && { env: job.marsEnv as Record<string, string> }),
    timeoutMs: job.timeoutMs,
    killGraceMs: ctx.killGraceMs,
    ...(ctx.command && { command: ctx.command }),
  });
  active.run = run;
  if (active.handBack || active.cancelRequested) run.cancel(); // arrived while we were claiming
  let bytes = 0;
  let pid = -1;
  const beat = setInterval(() => {
    msg.working();
    ctx.nc.publish(
      subjects.heartbeat(job.id),
      encode({ worker: ctx.workerId, attempt, pid, bytes, at: Date.now() }),
    );
    // A cancel published while we were disconnected is still in the record.
    void ctx.store.get(job.id).then(
      (r) => r?.record.cancelRequested && run.cancel(),
      () => undefined,
    );
  }, ctx.heartbeatMs);
  try {
    for await (const ev of run.events()) {
      if (ev.type === "log") events.line(attempt, ev.seq, ev.line, ev.at);
      else if (ev.type === "progress") {
        bytes = ev.bytes;
        events.progress({ attempt, bytes: ev.bytes, total: ev.total, at: ev.at });
      } else if (ev.type === "spawned") {
        pid = ev.pid;
        // "running" means MARS runs: followers (the shares gateway's `started`) learn it and its pid.
        events.state({ state: "running", attempt, worker: ctx.workerId, pid, at: ev.at });
        log.info({ pid }, "job started");
        await ctx.journal
          .add(runId, {
            workerPid: process.pid,
            pgid: run.processGroup,
            partPath: run.partPath,
            jobId: job.id,
          })
          .catch(() => undefined);
      }
    }
  } finally {
    clearInterval(beat);
  }
  const outcome = await run.outcome;
  await ctx.journal.remove(runId);
  log.debug(
    {
      status: outcome.status,
      exitCode: outcome.exitCode,
      signal: outcome.signal,
      bytes: outcome.bytes,
      elapsedMs: outcome.elapsedMs,
    },
    "MARS finished",
  );
  let settlement: Settlement = {
    ...settlementFor(ctx, outcome, job, attempt, active.handBack),
    elapsedMs: outcome.elapsedMs,
  };
  if (settlement.state === "succeeded" && job.deliver === "objectstore") {
    settlement = await deliverToObjectStore(ctx, job, targetPath, settlement, log);
  }
  await finish(current, settlement);
}

/** Put the result into the results object store and drop the local file; a failure is retried elsewhere. */
async function deliverToObjectStore(
  ctx: WorkerContext,
  job: JobMessage,
  targetPath: string,
  settlement: Settlement,
  log: Logger,
): Promise<Settlement> {
  try {
    const { uploadResult } = await import("../broker/results.js");
    await uploadResult(await ctx.results(), job.id, targetPath);
    return { ...settlement, result: { ...settlement.result!, object: job.id } };
  } catch (err) {
    log.warn({ err: String(err) }, "could not put the result into the object store");
    const error = new BrokerError(`could not store the result: ${String(err)}`).toRecord();
    return { state: "retrying", settle: "nak", nakDelayMs: ctx.retryDelayMs, error };
  } finally {
    await rm(targetPath, { force: true });
  }
}

async function finish(
  { ctx, msg, job, attempt, events, log, claimed }: Attempt,
  s: Settlement,
): Promise<void> {
  const terminal = TERMINAL_STATES.has(s.state);
  let lostLease = false;
  await ctx.store.mutate(
    job.id,
    (rec) => {
      if (rec.attempt !== attempt || rec.worker !== ctx.workerId) {
        lostLease = true; // a newer attempt owns the job: do not overwrite its record
        return undefined;
      }
      const next: JobRecord = { ...rec, state: s.state };
      if (s.error) next.error = s.error;
      if (s.result) next.result = s.result;
      if (terminal) next.finishedAt = Date.now();
      return next;
    },
    claimed,
  );
  if (lostLease) {
    log.warn("lost the lease on this job to a newer attempt; its result is not recorded");
    await events.flush();
    return;
  }
  events.state({
    state: s.state,
    attempt,
    worker: ctx.workerId,
    at: Date.now(),
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
      payloadBase64: Buffer.from(msg.data).toString("base64"),
      at: Date.now(),
    });
  }
  if (s.settle === "ack") msg.ack();
  else if (s.settle === "term") msg.term();
  else msg.nak(s.nakDelayMs);
  ctx.onSettled?.(s.state, s.elapsedMs);
  log.info({ state: s.state, settle: s.settle, code: s.error?.code, elapsedMs: s.elapsedMs }, "job settled");
}
