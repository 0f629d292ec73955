/**
 * The wire contract's names: streams, subjects, consumers and buckets. Worker and client import
 * these; nobody spells a subject by hand. Names are chosen to read well in the `nats` CLI.
 */

/**
 * Work queue: one message per job, subject `mars.jobs.<queue>.<lane>`, the lane being the job's
 * fairness key (its user, by default). `mars.jobs.<queue>` alone is the lane-less subject of
 * earlier clients, still served.
 */
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
/** QoS (KV): key `rules` (the applied rules), keys `slots.<rule>.<value>` (who holds a limit's slots). */
export const QOS_BUCKET = "mars-qos";
export const QOS_RULES_KEY = "rules";
/** Results delivered through the broker (object store), for clients without the shared filesystem. */
export const RESULTS_BUCKET = "mars-results";
/** API keys of the HTTP face, under their id (signed by the admin: broker/signing.ts). */
export const API_KEYS_BUCKET = "mars-api-keys";
/**
 * Jobs submitted through the API, kept ten times as long as job records, so that one whose record
 * expired answers 410 Gone, not 404: `{user, submittedAt}` under the job id.
 */
export const API_JOBS_BUCKET = "mars-api-jobs";
export const API_JOBS_RETENTION_FACTOR = 10;
/** The API's completion callbacks: `{url, secret, attempts, delivered, gaveUp}` under the job id. */
export const CALLBACKS_BUCKET = "mars-callbacks";

/** The stream that holds a KV bucket. */
export function kvStream(bucket: string): string {
  return `KV_${bucket}`;
}

/** The subject a KV bucket's key is written on (what a put publishes, what a watch hears). */
export function kvSubject(bucket: string, key: string): string {
  return `$KV.${bucket}.${key}`;
}

/** The JetStream API and ack subjects the fleet sends on itself (the client library sends the rest). */
export const jsApi = {
  /** A pull request to a consumer. */
  msgNext: (stream: string, consumer: string): string => `$JS.API.CONSUMER.MSG.NEXT.${stream}.${consumer}`,
  /** A stream's message get (by sequence, last or next of a subject). */
  msgGet: (stream: string): string => `$JS.API.STREAM.MSG.GET.${stream}`,
};

/** The delivery info in a JetStream ack subject (`$JS.ACK.<stream>.<consumer>.<delivered>.<seq>...`), or undefined. */
export function ackTokens(reply: string): string[] | undefined {
  const t = reply.split(".");
  return t[0] === "$JS" && t[1] === "ACK" ? t : undefined;
}

const TOKEN = /^[A-Za-z0-9_-]+$/;

/** Whether `s` can be one subject token and one KV key (job ids, queue names, worker ids). */
export function isToken(s: string): boolean {
  return TOKEN.test(s) && s.length <= 128;
}

export const subjects = {
  /** All work queues (the stream's subjects): lane-less (earlier clients) and laned. */
  allJobs: ["mars.jobs.*", "mars.jobs.*.*"],
  jobs: (queue: string): string => `mars.jobs.${queue}`,
  /** One fairness lane of a queue. */
  lane: (queue: string, lane: string): string => `mars.jobs.${queue}.${lane}`,
  /** Every lane of a queue (what workers listen to for new jobs, and count per lane). */
  lanes: (queue: string): string => `mars.jobs.${queue}.*`,
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
  /** A worker's entry in the registry bucket, as a subject (what a registration publishes). */
  registry: (workerId: string): string => `$KV.${WORKERS_BUCKET}.${workerId}`,
  /**
   * Core NATS, among a queue's workers: a job of this lane was settled, so its place under the
   * lane's cap (a per-user limit) is free. Workers that passed the lane over at its cap pull again.
   */
  laneFreed: (queue: string, lane: string): string => `mars.freed.${queue}.${lane}`,
  lanesFreed: (queue: string): string => `mars.freed.${queue}.*`,
  allLanesFreed: "mars.freed.*.*",
  /**
   * Core NATS, to a queue's free workers (their wake group): a wake-up passed on. A worker woken
   * for more jobs than it had free slots passes the rest to another free worker.
   */
  laneWake: (queue: string, lane: string): string => `mars.wake.${queue}.${lane}`,
  lanesWake: (queue: string): string => `mars.wake.${queue}.*`,
  allLanesWake: "mars.wake.*.*",
  /**
   * Core NATS request to the lane keepers (broker/keeper.ts): make this lane's consumer, or give it
   * the cap and idle time asked for. Workers ask; only keepers make lane consumers.
   */
  keeper: (queue: string, lane: string): string => `mars.keeper.lane.${queue}.${lane}`,
  allKeeper: "mars.keeper.lane.*.*",
  dead: (queue: string): string => `mars.dead.${queue}`,
  allDead: "mars.dead.>",
  /** Server advisories when a consumer of the work queue is removed (a lane's, idle: MARS_LANE_IDLE). */
  consumersDeleted: `$JS.EVENT.ADVISORY.CONSUMER.DELETED.${JOBS_STREAM}.*`,
  /** Server advisories when a consumer of the work queue is made (what the bench counts). */
  consumersCreated: `$JS.EVENT.ADVISORY.CONSUMER.CREATED.${JOBS_STREAM}.*`,
  /** Server advisory when a job message ran out of deliveries. */
  maxDeliveries: (consumer: string): string =>
    `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.${JOBS_STREAM}.${consumer}`,
} as const;

/**
 * The durable pull consumer all workers of a queue share for its lane-less subject; it also holds
 * the queue's settings (ack wait, deliveries) that lane consumers copy.
 */
export function consumerName(queue: string): string {
  return `workers-${queue}`;
}

/** The durable pull consumer of one lane, shared by the queue's workers (`=` appears in no token). */
export function laneConsumerName(queue: string, lane: string): string {
  return `workers-${queue}=${lane}`;
}

/** The lane of a consumer of `queue`: "" for the lane-less one, undefined for another queue's. */
export function laneOfConsumer(queue: string, name: string): string | undefined {
  if (name === consumerName(queue)) return "";
  const prefix = `${consumerName(queue)}=`;
  return name.startsWith(prefix) ? name.slice(prefix.length) : undefined;
}

/** The lane of the consumer a work-queue advisory (`consumersDeleted`, `consumersCreated`) is about. */
export function laneOfAdvisory(queue: string, subject: string): string | undefined {
  return laneOfConsumer(queue, subject.slice(subject.lastIndexOf(".") + 1));
}

/** The queue a job message's subject belongs to. */
export function queueOfSubject(subject: string): string | undefined {
  const parts = subject.split(".");
  return parts.length >= 3 && parts[0] === "mars" && parts[1] === "jobs" ? parts[2] : undefined;
}

/** The job id of an event subject, `mars.job.<id>.<kind>`. */
export function eventJobId(subject: string): string | undefined {
  const parts = subject.split(".");
  return parts.length === 4 && parts[0] === "mars" && parts[1] === "job" ? parts[2] : undefined;
}

/** Which part of `mars.job.<id>.<kind>` a stored event is. */
export function eventKind(subject: string): string | undefined {
  const parts = subject.split(".");
  return parts.length === 4 && parts[0] === "mars" && parts[1] === "job" ? parts[3] : undefined;
}
