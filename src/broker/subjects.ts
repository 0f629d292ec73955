/**
 * The wire contract's names: streams, subjects, consumers and buckets. Worker and client import
 * these; nobody spells a subject by hand. Names are chosen to read well in the `nats` CLI.
 */

/** Work queue: one message per job, subject `mars.jobs.<queue>`. */
export const JOBS_STREAM = "MARS_JOBS";
/** Job logs, progress and state changes, replayable: `mars.job.<id>.log|progress|state`. */
export const EVENTS_STREAM = "MARS_EVENTS";
/** Jobs that could not be run: garbage, or given up after too many attempts. */
export const DEAD_STREAM = "MARS_DEAD";
/**
 * Job records (KV). Each job has two keys, so that permissions can tell their writers apart:
 * `<id>.submitted`, written once by the submitter, and `<id>.status`, every later change, written
 * by workers only. The record is the status when there is one, else the submission.
 */
export const JOBS_BUCKET = "mars-jobs";
export const RECORD_KEYS = { submitted: "submitted", status: "status" } as const;
/** Worker registry (KV): key = worker id; entries expire when a worker stops heart-beating. */
export const WORKERS_BUCKET = "mars-workers";
/** Results delivered through the broker (object store), for clients without the shared filesystem. */
export const RESULTS_BUCKET = "mars-results";

const TOKEN = /^[A-Za-z0-9_-]+$/;

/** Whether `s` can be one subject token and one KV key (job ids, queue names, worker ids). */
export function isToken(s: string): boolean {
  return TOKEN.test(s) && s.length <= 128;
}

export const subjects = {
  /** All work queues (the stream's subjects). */
  allJobs: "mars.jobs.*",
  jobs: (queue: string): string => `mars.jobs.${queue}`,
  /**
   * The events stream keeps `mars.job.<id>.<kind>`. One wildcard subject, so that a per-job filter
   * (`mars.job.<id>.*`) is a subset of it, which nats-server 2.9 requires of consumer filters.
   */
  storedEvents: ["mars.job.*.*"],
  jobEvents: (id: string): string => `mars.job.${id}.*`,
  log: (id: string): string => `mars.job.${id}.log`,
  progress: (id: string): string => `mars.job.${id}.progress`,
  state: (id: string): string => `mars.job.${id}.state`,
  /** Core NATS, not stored (outside the events stream): liveness of a running job. */
  heartbeat: (id: string): string => `mars.hb.${id}`,
  allHeartbeats: "mars.hb.*",
  /**
   * Core NATS: ask the worker running this job to stop it. The request itself is in the job's
   * submission (cancelRequested), where a worker that missed this message finds it.
   */
  cancel: (id: string): string => `mars.cancel.${id}`,
  allCancels: "mars.cancel.*",
  dead: (queue: string): string => `mars.dead.${queue}`,
  allDead: "mars.dead.>",
  /** Server advisory when a job message ran out of deliveries. */
  maxDeliveries: (consumer: string): string =>
    `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.${JOBS_STREAM}.${consumer}`,
} as const;

/** The one durable pull consumer all workers of a queue share. */
export function consumerName(queue: string): string {
  return `workers-${queue}`;
}

/** Which part of `mars.job.<id>.<kind>` a stored event is. */
export function eventKind(subject: string): string | undefined {
  const parts = subject.split(".");
  return parts.length === 4 && parts[0] === "mars" && parts[1] === "job" ? parts[3] : undefined;
}
