/**
 * A split job's parts, seen from the worker (#27). A part is an ordinary job on the queue; this
 * module checks it belongs to the parent it names, ends the parent when a part ends for good
 * without a result, and, for the attempt whose part was the last to succeed, assembles the parts
 * into the parent's target.
 *
 * There is no coordinator: the last part to record its success sees every other part succeeded
 * (each reads the others after its own write), takes the parent's record by compare-and-set
 * (`fanIn`), assembles, fences like any commit, renames once and records the parent's success.
 * Its part's message stays unacknowledged meanwhile: if its worker dies, the message comes back,
 * and the new attempt of the same part takes the fan-in over (a part's own later attempt may; a
 * sibling may not, while another holds it).
 */
import { readdir, rm, stat } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import type { JetStreamClient } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import type { Logger } from "pino";
import {
  endedWithoutResult,
  type JobMessage,
  type JobRecord,
  JobEventPublisher,
  type JobStore,
  othersUnseen,
  type PartOf,
  subjects,
  TERMINAL_STATES,
  type VersionedRecord,
} from "../broker/index.js";
import { asFleetError, type ErrorRecord, JobCancelledError, MarsFleetError } from "../core/index.js";
import { partId, partIds, partTarget, SplitInvalidError } from "../mars/index.js";
import {
  assembleParts,
  commitPart,
  discardPart,
  isPartFile,
  landsBy,
  partPathFor,
  prepareTargetDir,
  resolveInside,
} from "../runner/index.js";

/** What the fan-in needs of the worker (a part of the attempt's environment). */
export interface FanInEnv {
  nc: NatsConnection;
  js: JetStreamClient;
  store: JobStore;
  workerId: string;
  sharedRoot: string;
  /** How long a request to the broker may take (bounds the wait for another fan-in's rename). */
  requestTimeoutMs: number;
}

/** After the longest a fan-in's fence answer can take, the time given to its rename. */
const LANDING_GRACE_MS = 2000;

/** The attempt that may hold a fan-in: a part's attempt, named as the record names its owner. */
export interface FanInOwner {
  attempt: number;
  seq: number;
}

type Part = JobMessage & { part: PartOf };

export function isPart(job: JobMessage): job is Part {
  return job.part !== undefined;
}

/**
 * Check that a part is the part it says of a split job that exists (same id, target and submitter
 * as its parent makes them): nothing on the wire decides where a part writes or what a fan-in
 * reads. Returns `ended` when the parent has ended already (the part is not worth running).
 */
export async function checkPart(ctx: FanInEnv, job: Part): Promise<"run" | "ended"> {
  const { parent, index, total } = job.part;
  const found = await ctx.store.get(parent);
  const rec = found?.record;
  const fits =
    rec?.split !== undefined &&
    rec.split.parts === total &&
    index <= total &&
    job.id === partId(parent, index) &&
    job.target === partTarget(rec.target, parent, index) &&
    rec.queue === job.queue &&
    JSON.stringify(rec.submittedBy ?? {}) === JSON.stringify(job.submittedBy ?? {});
  if (!fits)
    throw new SplitInvalidError(`job ${job.id} is no part ${index} of ${total} of a split job ${parent}`, {
      parent,
      index,
    });
  return TERMINAL_STATES.has(rec.state) || rec.cancelRequested ? "ended" : "run";
}

/** The shared-root paths of a parent's target and of its parts' outputs. */
function paths(ctx: FanInEnv, parentId: string, parent: JobRecord) {
  const total = parent.split?.parts ?? 0;
  return {
    target: resolveInside(ctx.sharedRoot, parent.target),
    parts: Array.from({ length: total }, (_, i) =>
      resolveInside(ctx.sharedRoot, partTarget(parent.target, parentId, i + 1)),
    ),
  };
}

/** Remove the parts' outputs (those not there yet are removed as their parts end). */
async function removeParts(parts: string[]): Promise<void> {
  await Promise.all(parts.map((p) => rm(p, { force: true })));
}

/** Publish the parent's final state as its record now says it (its events' last). */
async function announceEnd(ctx: FanInEnv, parentId: string, rec: JobRecord, log: Logger): Promise<void> {
  const events = new JobEventPublisher(ctx.js, parentId, log, ctx.nc.info?.max_payload);
  events.state({
    state: rec.state,
    attempt: rec.attempt,
    worker: ctx.workerId,
    at: Date.now(),
    ...(rec.error && { error: rec.error }),
    ...(rec.result && { result: rec.result }),
  });
  await events.flush();
}

/**
 * After a part's attempt recorded how it ended: the last success assembles the parent; a part
 * that failed or was cancelled for good ends the parent with its error, naming the part. Throws
 * only what a later attempt of this part may get past (the broker): the caller then leaves its
 * message to come back.
 */
export async function afterPart(
  ctx: FanInEnv,
  job: Part,
  end: { state: JobRecord["state"]; error?: ErrorRecord },
  owner: FanInOwner,
  log: Logger,
): Promise<void> {
  const { parent, total } = job.part;
  if (end.state !== "succeeded") {
    await endParent(ctx, job, end.state === "cancelled" ? "cancelled" : "failed", end.error, log);
    return;
  }
  const [parentNow, ...parts] = await Promise.all([
    ctx.store.require(parent),
    ...partIds(parent, total).map((id) => ctx.store.get(id)),
  ]);
  if (TERMINAL_STATES.has(parentNow!.record.state)) {
    // Ended while this part ran (another part failed, or it was cancelled): its output is not wanted.
    if (endedWithoutResult(parentNow!.record)) await removeParts([resolveInside(ctx.sharedRoot, job.target)]);
    return;
  }
  const done = parts.filter((p) => p?.record.state === "succeeded").length;
  log.info({ parent, done, total }, "part done");
  if (done < total) return;
  try {
    await fanIn(ctx, job, owner, parts as VersionedRecord[], log);
  } catch (err) {
    const error = asFleetError(err);
    // The broker: a later attempt of this part (its message comes back) tries the fan-in again.
    if (error.code === "BROKER_ERROR") throw error;
    log.error({ err, parent }, "the fan-in failed");
    await endParent(ctx, job, "failed", error.toRecord(), log);
  }
}

/** End the parent for a part that ended without a result; the parts' outputs so far are removed. */
async function endParent(
  ctx: FanInEnv,
  job: Part,
  state: "failed" | "cancelled",
  error: ErrorRecord | undefined,
  log: Logger,
): Promise<void> {
  const { parent, index, total } = job.part;
  let ended: JobRecord | undefined;
  const cause = error ?? new JobCancelledError(`part ${index} was cancelled`, { jobId: job.id }).toRecord();
  const updated = await ctx.store.mutate(parent, (rec) => {
    ended = undefined;
    if (TERMINAL_STATES.has(rec.state)) return undefined;
    ended = {
      ...rec,
      state,
      error: {
        ...cause,
        message: `part ${index} of ${total} (${job.id}): ${cause.message}`,
        details: { ...cause.details, part: index, partJob: job.id },
      },
      finishedAt: Date.now(),
    };
    return ended;
  });
  if (ended) {
    log.warn({ parent, part: index, code: cause.code }, "a part ended without a result: its split job ends");
    // The other parts stop now (their workers check the parent's record first); queued ones are
    // not run when they come up (checkPart).
    for (const id of partIds(parent, total)) if (id !== job.id) ctx.nc.publish(subjects.cancel(id));
    await announceEnd(ctx, parent, ended, log);
  }
  // Whoever ended it, the parts' outputs are no longer wanted (later ones are removed as they end).
  await removeParts(paths(ctx, parent, updated.record).parts);
}

/**
 * After a fan-in's fence held: another holder's fence among the parent's writes that neither of
 * this fan-in's compare-and-sets saw (a cluster can let them through: JobStore.writesBetween). It
 * was stored first, so its file is the result once it lands. Another holder's take alone leaves
 * the commit to this one: that holder, if it fences, finds this fence among its own unseen writes.
 */
async function unseenFanIn(
  ctx: FanInEnv,
  parentId: string,
  takeSeenUpTo: number | undefined,
  fenceRevision: number,
  me: NonNullable<JobRecord["fanIn"]>,
  log: Logger,
): Promise<JobRecord["committing"]> {
  if (takeSeenUpTo === undefined) return undefined;
  const mine = (r: JobRecord): boolean => sameHolder(r.fanIn, me);
  const found = othersUnseen(await ctx.store.writesBetween(parentId, takeSeenUpTo, fenceRevision), mine);
  if (!found) return undefined;
  log.warn(
    { parent: parentId, revisions: found.revisions, fence: found.fence?.revision },
    "the parent's record holds writes of another fan-in that this fan-in's compare-and-set did not see",
  );
  return found.fence?.record.committing;
}

/**
 * Whether the parent's record names this attempt as its fan-in and is not final (a cancel is the
 * fence's to judge: after the rename the result is in place, and a cancel comes too late).
 */
function holds(rec: JobRecord, job: Part, owner: FanInOwner, workerId: string): boolean {
  const me = { by: job.id, attempt: owner.attempt, worker: workerId, seq: owner.seq };
  return sameHolder(rec.fanIn, me) && !TERMINAL_STATES.has(rec.state);
}

/** Whether a record's fan-in holder is `me`: the same part, attempt, message and worker. */
function sameHolder(f: JobRecord["fanIn"], me: NonNullable<JobRecord["fanIn"]>): boolean {
  return f?.by === me.by && f.attempt === me.attempt && f.seq === me.seq && f.worker === me.worker;
}

async function fanIn(
  ctx: FanInEnv,
  job: Part,
  owner: FanInOwner,
  parts: VersionedRecord[],
  log: Logger,
): Promise<void> {
  const parentId = job.part.parent;
  const me = { by: job.id, attempt: owner.attempt, worker: ctx.workerId, seq: owner.seq };
  let taken = false;
  let version = await ctx.store.mutate(parentId, (rec) => {
    taken = false;
    if (TERMINAL_STATES.has(rec.state) || rec.cancelRequested) return undefined;
    // Another part's attempt holds it (both saw every part done): that one assembles. This part's
    // own earlier attempt may have died doing it: this one takes it over.
    if (rec.fanIn && rec.fanIn.by !== job.id) return undefined;
    taken = true;
    return {
      ...rec,
      state: "running",
      attempt: Math.max(rec.attempt, 1),
      worker: ctx.workerId,
      startedAt: rec.startedAt ?? Date.now(),
      fanIn: me,
    };
  });
  if (!taken) {
    if (endedWithoutResult(version.record)) await removeParts(paths(ctx, parentId, version.record).parts);
    return;
  }
  const takeSeenUpTo = version.seenUpTo;
  const parent = version.record;
  const where = paths(ctx, parentId, parent);
  const started = Date.now();
  const marsMs = parts.reduce((sum, p) => sum + (p.record.result?.elapsedMs ?? 0), 0);
  // An earlier attempt of this part fenced and renamed, then died before recording: its file is it
  // (one look, not a wait: until now).
  let bytes: number;
  if (parent.committing && (await landsBy(where.target, parent.committing, Date.now()))) {
    bytes = parent.committing.bytes;
    log.info({ parent: parentId }, "an earlier fan-in's result is in place: adopted");
  } else {
    const events = new JobEventPublisher(ctx.js, parentId, log, ctx.nc.info?.max_payload);
    events.state({ state: "running", attempt: parent.attempt, worker: ctx.workerId, at: started });
    await prepareTargetDir(ctx.sharedRoot, where.target);
    // What an earlier holder (killed, or fenced out since) left half-written goes first.
    const mark = `.${basename(where.target)}.${parentId}-fanin-`;
    for (const name of await readdir(dirname(where.target)))
      if (name.startsWith(mark) && isPartFile(name))
        await rm(join(dirname(where.target), name), { force: true });
    const tmp = partPathFor(where.target, `${parentId}-fanin-${owner.attempt}-${owner.seq}`);
    let assembled;
    try {
      assembled = await assembleParts(where.parts, tmp);
    } catch (err) {
      await discardPart(tmp);
      // A part's output gone or unreadable: the split job cannot be assembled, whoever tries. The
      // record says why by the system's code, not by a message that names this server's paths.
      log.error({ err, parent: parentId }, "could not assemble the parts");
      const why = (err as NodeJS.ErrnoException).code ?? "unreadable";
      const error = new MarsFleetError("INTERNAL", `could not assemble the parts (${why})`, {
        details: { parent: parentId },
      }).toRecord();
      await endParent(ctx, job, "failed", error, log);
      return;
    }
    const ino = (await stat(tmp)).ino;
    // The fence: still this attempt's fan-in, and not cancelled. A cancel that came while it
    // assembled ends the job here (no part is left to do it).
    let verdict = "lost" as "owned" | "cancelled" | "lost";
    version = await ctx.store.mutate(parentId, (rec) => {
      verdict = !holds(rec, job, owner, ctx.workerId) ? "lost" : rec.cancelRequested ? "cancelled" : "owned";
      if (verdict === "owned")
        return {
          ...rec,
          committing: { attempt: owner.attempt, ino, bytes: assembled.bytes, elapsedMs: marsMs },
        };
      if (verdict === "cancelled") {
        const error = new JobCancelledError("the job was cancelled", { jobId: parentId }).toRecord();
        return { ...rec, state: "cancelled", error, finishedAt: Date.now() };
      }
      return undefined;
    });
    if (verdict !== "owned") {
      await discardPart(tmp);
      if (verdict === "cancelled") {
        await announceEnd(ctx, parentId, version.record, log);
        await removeParts(where.parts);
      }
      log.warn({ parent: parentId, verdict }, "the fan-in ends without committing");
      return;
    }
    const earlier = await unseenFanIn(ctx, parentId, takeSeenUpTo, version.revision, me, log);
    const until = Date.now() + ctx.requestTimeoutMs + LANDING_GRACE_MS;
    if (earlier && (await landsBy(where.target, earlier, until))) {
      // Another fan-in fenced first, unseen by this one's compare-and-sets: its file is the result.
      await discardPart(tmp);
      bytes = earlier.bytes;
      log.info({ parent: parentId }, "an earlier fan-in's result is in place: adopted");
    } else {
      await commitPart(tmp, where.target);
      bytes = assembled.bytes;
    }
    log.info(
      {
        parent: parentId,
        bytes,
        messages: assembled.messages,
        reordered: assembled.reordered,
        fanInMs: Date.now() - started,
      },
      "split job assembled",
    );
  }
  const result = { target: parent.target, bytes, elapsedMs: marsMs };
  let recorded = false;
  const done = await ctx.store.mutate(parentId, (rec) => {
    recorded = holds(rec, job, owner, ctx.workerId);
    if (!recorded) return undefined;
    return { ...rec, state: "succeeded", result, finishedAt: Date.now() };
  });
  if (!recorded) return;
  await announceEnd(ctx, parentId, done.record, log);
  await removeParts(where.parts);
}
