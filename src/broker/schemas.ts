/** Message schemas of the wire contract. Every body is validated with these on receipt. */
import { z } from "zod";
import { errorRecordSchema } from "../core/index.js";
import { jobMarsEnvSchema, MARS_VERBS, MAX_SPLIT_PARTS } from "../mars/index.js";
import { isToken } from "./subjects.js";

export const PROTOCOL_VERSION = 1;

const token = z.string().refine(isToken, "must be letters, digits, - or _ (at most 128)");
/** The client's environ: names that make `MARS_ENVIRON_<KEY>` variables, one-line values. */
export const environSchema = z
  .record(
    z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, "environ keys are letters, digits and _"),
    z.string().regex(/^[^\u0000\n\r]*$/, "no newline or NUL"),
  )
  .default({});
export const marsRequestSchema = z.object({
  verb: z.enum(MARS_VERBS),
  params: z.record(z.string(), z.array(z.string()).min(1)),
});

/**
 * Who submitted a job: the environ's `user_id` (the end user, as the data store names them) and the
 * NATS identity the submitting service authenticated as (user name or nkey public key).
 */
export const submitterSchema = z.object({
  user: z.string().max(256).optional(),
  nats: z.string().max(256).optional(),
});
export type Submitter = z.infer<typeof submitterSchema>;

/** Where a part of a split job belongs (#27). */
export const partOfSchema = z.object({
  parent: token,
  index: z.number().int().min(1),
  total: z.number().int().min(2).max(MAX_SPLIT_PARTS),
});
export type PartOf = z.infer<typeof partOfSchema>;

/** The work-queue message: everything a worker needs to run the job. */
export const jobMessageSchema = z.object({
  v: z.literal(PROTOCOL_VERSION),
  id: token,
  queue: token,
  requests: z.array(marsRequestSchema).min(1),
  /** Target path relative to the shared root (each host mounts the root where it likes). */
  target: z.string().min(1),
  environ: environSchema,
  timeoutMs: z.number().int().min(0).default(0),
  /** The job's retry policy (broker/retry-policy.ts): attempts in all, and the delay unit. */
  maxAttempts: z.number().int().min(1).optional(),
  retryDelayMs: z.number().int().min(0).optional(),
  submittedAt: z.number(),
  /** Where the result goes: the shared root (default), or the results object store. */
  deliver: z.enum(["share", "objectstore"]).default("share"),
  /** MARS settings for this job, from a short allow-list (e.g. `MARS_AUTO_SPLIT_BY_DATES`). */
  marsEnv: jobMarsEnvSchema.optional(),
  submittedBy: submitterSchema.optional(),
  /** A part of a split job (#27): its parent's id, its place (1-based) and how many parts there are. */
  part: partOfSchema.optional(),
});
export type JobMessage = z.infer<typeof jobMessageSchema>;

export const JOB_STATES = ["queued", "running", "retrying", "succeeded", "failed", "cancelled"] as const;
export type JobState = (typeof JOB_STATES)[number];
export const TERMINAL_STATES: ReadonlySet<JobState> = new Set(["succeeded", "failed", "cancelled"]);

/** Whether a job has ended with no result (failed or cancelled): a split job's parts are then not wanted. */
export function endedWithoutResult(record: Pick<JobRecord, "state">): boolean {
  return TERMINAL_STATES.has(record.state) && record.state !== "succeeded";
}

export const jobResultSchema = z.object({
  target: z.string(),
  /** Name in the results object store, when the job delivered there. */
  object: z.string().optional(),
  bytes: z.number().int().min(0),
  elapsedMs: z.number().min(0),
  /** Served from the result cache (#28): the entry's key, and the MARS time it saved. */
  cached: z.object({ key: z.string(), savedMs: z.number().min(0) }).optional(),
});
export type JobResult = z.infer<typeof jobResultSchema>;

/** The job record in the jobs bucket, changed only by compare-and-set. */

export const jobRecordSchema = z.object({
  id: token,
  queue: token,
  state: z.enum(JOB_STATES),
  attempt: z.number().int().min(0),
  maxAttempts: z.number().int().min(1),
  /** Stream sequence of the work message that owns this job (set at first claim). */
  seq: z.number().int().optional(),
  worker: z.string().optional(),
  target: z.string(),
  requests: z.array(marsRequestSchema),
  environ: environSchema,
  timeoutMs: z.number().int().min(0).default(0),
  cancelRequested: z.boolean().default(false),
  /** The pipe protocol's DELETE: the log is no longer shown (its events expire with the stream's max age). */
  logDropped: z.boolean().optional(),
  submittedAt: z.number(),
  startedAt: z.number().optional(),
  finishedAt: z.number().optional(),
  updatedAt: z.number(),
  result: jobResultSchema.optional(),
  error: errorRecordSchema.optional(),
  submittedBy: submitterSchema.optional(),
  /**
   * Set by the fence of an attempt about to move its output into place: the part file's inode and
   * size. A later attempt that finds this inode at the target adopts it instead of running again.
   */
  committing: z
    .object({
      attempt: z.number().int(),
      ino: z.number(),
      bytes: z.number().int(),
      elapsedMs: z.number(),
      /** The claim of the attempt that fenced (see `claim`). */
      claim: z.string().optional(),
    })
    .optional(),
  /**
   * A token of the attempt that claimed the record, unique to it: two deliveries of one message
   * may carry the same delivery count (after a consumer leader change), so the attempt number
   * alone does not tell two attempts apart.
   */
  claim: z.string().max(64).optional(),
  /** A split job (#27): how it was split and into how many parts (`<id>-p1` ... `<id>-pN`). */
  split: z.object({ by: z.array(z.string()).min(1), parts: z.number().int().min(2) }).optional(),
  /** A part of a split job. */
  part: partOfSchema.optional(),
  /**
   * A split job's fan-in, held by the attempt of its last part that assembles the parts (fenced
   * like a commit: it holds while the record names that attempt).
   */
  fanIn: z
    .object({ by: token, attempt: z.number().int(), worker: z.string(), seq: z.number().int() })
    .optional(),
});
export type JobRecord = z.infer<typeof jobRecordSchema>;

/** A batch of consecutive log lines of one attempt (`first` is the sequence of lines[0]). */
export const logBatchSchema = z.object({
  attempt: z.number().int().min(1),
  first: z.number().int().min(1),
  lines: z.array(z.string()),
  /** Time stamp (ms) of each line. */
  at: z.array(z.number()),
});
export type LogBatch = z.infer<typeof logBatchSchema>;

export const progressSchema = z.object({
  attempt: z.number().int().min(1),
  bytes: z.number().int().min(0),
  total: z.number().int().min(0),
  at: z.number(),
});
export type ProgressEvent = z.infer<typeof progressSchema>;

export const stateEventSchema = z.object({
  state: z.enum(JOB_STATES),
  /** Why, where the state alone does not say it (`handed back` by a worker shutting down). */
  reason: z.string().optional(),
  attempt: z.number().int().min(0),
  worker: z.string().optional(),
  /** With `running`: the MARS process (group leader) that started. */
  pid: z.number().int().optional(),
  at: z.number(),
  result: jobResultSchema.optional(),
  error: errorRecordSchema.optional(),
});
export type StateEvent = z.infer<typeof stateEventSchema>;

export const heartbeatSchema = z.object({
  worker: z.string(),
  attempt: z.number().int().min(1),
  pid: z.number().int(),
  bytes: z.number().int().min(0),
  at: z.number(),
});
export type Heartbeat = z.infer<typeof heartbeatSchema>;

/** `failed`: the broker connection ended for good; the worker stopped its jobs and must be restarted. */
export const WORKER_STATES = ["starting", "running", "draining", "stopped", "failed"] as const;
export type WorkerState = (typeof WORKER_STATES)[number];

export const workerInfoSchema = z.object({
  id: z.string(),
  host: z.string(),
  pid: z.number().int(),
  queue: z.string(),
  slots: z.number().int().min(1),
  running: z.array(z.string()),
  state: z.enum(WORKER_STATES),
  version: z.string(),
  startedAt: z.number(),
  lastSeen: z.number(),
  /** The worker process's own use (not its MARS processes'): CPU since its last entry, memory now. */
  usage: z.object({ cpuPercent: z.number().min(0), rssMb: z.number().min(0) }).optional(),
  /** Jobs it pulled that wait for a QoS limit (holding no slot), and why. */
  /** Jobs held aside for a limit: why, and the lane each was pulled from ("" for a lane-less job). */
  waiting: z.array(z.object({ job: z.string(), reason: z.string(), lane: z.string().optional() })).optional(),
});
export type WorkerInfo = z.infer<typeof workerInfoSchema>;

/** A dead-letter entry: the original message (base64 when it was not valid) and why it died. */
export const deadLetterSchema = z.object({
  reason: z.string(),
  jobId: z.string().optional(),
  streamSeq: z.number().int().optional(),
  deliveries: z.number().int().optional(),
  error: errorRecordSchema.optional(),
  /** The message, or its first bytes when the whole would not fit in a dead letter (`truncated`). */
  payloadBase64: z.string(),
  /** Size of the whole message in bytes. */
  size: z.number().int().min(0).optional(),
  truncated: z.boolean().optional(),
  headers: z.record(z.string(), z.array(z.string())).optional(),
  at: z.number(),
});
export type DeadLetter = z.infer<typeof deadLetterSchema>;

/** The record a job starts with, a function of its message: client and worker build the same one. */
export function initialRecord(message: JobMessage, maxAttempts: number): JobRecord {
  return {
    id: message.id,
    queue: message.queue,
    state: "queued",
    attempt: 0,
    maxAttempts: message.maxAttempts ?? maxAttempts,
    target: message.target,
    requests: message.requests,
    environ: message.environ,
    timeoutMs: message.timeoutMs,
    cancelRequested: false,
    submittedAt: message.submittedAt,
    updatedAt: message.submittedAt,
    ...(message.submittedBy && { submittedBy: message.submittedBy }),
    ...(message.part && { part: message.part }),
  };
}
