/**
 * Provisioning: create the streams, the per-queue consumer and the buckets if missing. Idempotent
 * and safe from many processes at once (creation races end in "exists", which is fine). Existing
 * objects are not changed: differences from the wanted configuration are reported as drift. A
 * connection whose role may not create (a worker, a submitter) only checks, and says what is missing.
 */
import {
  AckPolicy,
  DeliverPolicy,
  DiscardPolicy,
  RetentionPolicy,
  StorageType,
  type ConsumerConfig,
  type JetStreamManager,
  type StreamConfig,
} from "@nats-io/jetstream";
import { setTimeout as sleep } from "node:timers/promises";
import { Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import type { FleetConfig } from "../config/index.js";
import { connectWithConfig, type BrokerConnection } from "./connection.js";
import {
  isAlreadyExists,
  isClusterForming,
  isCreatedConcurrently,
  isNotFound,
  isPermissionDenied,
} from "./nats-errors.js";
import { BrokerError, MINUTE, TopologyMissingError } from "../core/index.js";
import { RESULTS_MAX_AGE_MS } from "./results.js";
import {
  DEAD_STREAM,
  EVENTS_STREAM,
  JOBS_BUCKET,
  JOBS_STREAM,
  QOS_BUCKET,
  RESULTS_BUCKET,
  WORKERS_BUCKET,
  consumerName,
  kvStream,
  subjects,
  API_JOBS_BUCKET,
  API_JOBS_RETENTION_FACTOR,
  API_KEYS_BUCKET,
  CALLBACKS_BUCKET,
} from "./subjects.js";

export const DUPLICATE_WINDOW = 15 * MINUTE;
export const EVENTS_MAX_BYTES = 1024 * 1024 * 1024;
export const EVENTS_DUPLICATE_WINDOW = 2 * MINUTE;
export const DEAD_MAX_AGE = 30 * 24 * 60 * MINUTE;
/** Ack wait = this many heartbeats: a worker that misses them is presumed dead. */
export const ACK_WAIT_HEARTBEATS = 3;

export interface TopologyOptions {
  queue: string;
  replicas: 1 | 3;
  heartbeatMs: number;
  maxDeliver: number;
  /** Fleet-wide cap on running jobs for the queue; 0 = none. */
  maxAckPending: number;
  eventsMaxAgeMs: number;
  /** How long a job record is kept after its last change (the jobs bucket's TTL). */
  retentionMs: number;
}

/** The topology a configuration asks for. */
export function topologyOf(config: FleetConfig): TopologyOptions {
  return {
    queue: config.queue,
    replicas: config.streamReplicas,
    heartbeatMs: config.heartbeatInterval,
    maxDeliver: config.maxRetries,
    maxAckPending: config.maxConcurrentConnections,
    eventsMaxAgeMs: config.eventsMaxAge,
    retentionMs: config.retention,
  };
}

export interface ProvisionReport {
  created: string[];
  existing: string[];
  /** Human-readable differences between what exists and what this configuration wants. */
  drift: string[];
  /** Missing, and this connection may not create them. */
  missing: string[];
}

/** Create `what` with `create`; a permissions denial puts it on the missing list instead. */
async function createOrNote(
  what: string,
  report: ProvisionReport,
  create: () => Promise<unknown>,
): Promise<void> {
  try {
    await create();
    report.created.push(what);
  } catch (err) {
    if (!isPermissionDenied(err)) throw err;
    report.missing.push(what);
  }
}

const ms = (n: number): number => n * 1_000_000; // JetStream durations are nanoseconds

function streamConfigs(
  t: TopologyOptions,
): Array<Partial<StreamConfig> & { name: string; subjects: string[] }> {
  return [
    {
      name: JOBS_STREAM,
      subjects: [...subjects.allJobs],
      retention: RetentionPolicy.Workqueue,
      storage: StorageType.File,
      num_replicas: t.replicas,
      duplicate_window: ms(DUPLICATE_WINDOW),
      discard: DiscardPolicy.Old,
    },
    {
      name: EVENTS_STREAM,
      subjects: [...subjects.storedEvents],
      retention: RetentionPolicy.Limits,
      storage: StorageType.File,
      num_replicas: t.replicas,
      max_age: ms(t.eventsMaxAgeMs),
      max_bytes: EVENTS_MAX_BYTES,
      // Event publishers re-send after a lost ack with the same message id: the copy is dropped.
      duplicate_window: ms(Math.min(EVENTS_DUPLICATE_WINDOW, t.eventsMaxAgeMs)),
      discard: DiscardPolicy.Old,
    },
    {
      name: DEAD_STREAM,
      subjects: [subjects.allDead],
      retention: RetentionPolicy.Limits,
      storage: StorageType.File,
      num_replicas: t.replicas,
      max_age: ms(DEAD_MAX_AGE),
    },
  ];
}

export function ackWaitMs(heartbeatMs: number): number {
  return heartbeatMs * ACK_WAIT_HEARTBEATS;
}

export function consumerConfig(t: TopologyOptions): Partial<ConsumerConfig> & { durable_name: string } {
  return {
    durable_name: consumerName(t.queue),
    filter_subject: subjects.jobs(t.queue),
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.All,
    ack_wait: ms(ackWaitMs(t.heartbeatMs)),
    max_deliver: t.maxDeliver,
    max_ack_pending: t.maxAckPending > 0 ? t.maxAckPending : -1,
    num_replicas: 0,
  };
}

/** Keys of `wanted` whose value differs in `actual`. */
function differences(kind: string, wanted: object, actual: object): string[] {
  const out: string[] = [];
  for (const [key, value] of Object.entries(wanted)) {
    if (key === "num_replicas" && value === 0) continue;
    const have = (actual as Record<string, unknown>)[key];
    if (JSON.stringify(have) !== JSON.stringify(value)) {
      out.push(
        `${kind}: ${key} is ${JSON.stringify(have)}, this configuration wants ${JSON.stringify(value)}`,
      );
    }
  }
  return out;
}

/** How long provisioning waits for a cluster that is still forming to know its peers. */
const CLUSTER_FORMING_MS = 30_000;

/**
 * Look a piece of the topology up (`look` throws not-found when it is missing), create it when
 * missing, and look again when the create says another process made it at the same moment
 * (`raced`: nats-server 2.9 may say so as overlapping subjects, before it sees the name). Three
 * rounds: a create that still conflicts after them is a real conflict, and is thrown. A cluster
 * still forming ("no suitable peers") is asked again for up to CLUSTER_FORMING_MS.
 */
async function ensureExists(
  what: string,
  report: ProvisionReport,
  look: () => Promise<void>,
  create: () => Promise<unknown>,
  raced: (err: unknown) => boolean,
): Promise<void> {
  const formingUntil = Date.now() + CLUSTER_FORMING_MS;
  for (let round = 1; ; round++) {
    try {
      await look();
      return;
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
    try {
      await createOrNote(what, report, create);
      return;
    } catch (err) {
      if (isClusterForming(err) && Date.now() < formingUntil) {
        await sleep(500); // a cluster just started: asked again until it knows its peers
        round--;
        continue;
      }
      if (!raced(err) || round >= 3) throw err;
    }
  }
}

function ensureStream(
  jsm: JetStreamManager,
  cfg: Partial<StreamConfig> & { name: string },
  report: ProvisionReport,
): Promise<void> {
  const what = `stream ${cfg.name}`;
  const look = async (): Promise<void> => {
    const info = await jsm.streams.info(cfg.name);
    report.existing.push(what);
    const lacking = cfg.subjects?.filter((s) => !info.config.subjects.includes(s)) ?? [];
    if (lacking.length > 0) {
      // A stream from an earlier version lacks subjects this one publishes on (the queue lanes):
      // adding subjects changes nothing stored, so it is done, not reported.
      const subjectsNow = [...info.config.subjects, ...lacking];
      await createOrNote(`subjects ${lacking.join(", ")} of ${what}`, report, () =>
        jsm.streams.update(cfg.name, { ...info.config, subjects: subjectsNow }),
      );
    }
    const { subjects: _wanted, ...rest } = cfg;
    report.drift.push(...differences(what, rest, info.config));
  };
  return ensureExists(what, report, look, () => jsm.streams.add(cfg), isCreatedConcurrently);
}

function ensureConsumer(
  jsm: JetStreamManager,
  stream: string,
  cfg: Partial<ConsumerConfig> & { durable_name: string },
  report: ProvisionReport,
): Promise<void> {
  const what = `consumer ${stream}/${cfg.durable_name}`;
  const look = async (): Promise<void> => {
    const info = await jsm.consumers.info(stream, cfg.durable_name);
    report.existing.push(what);
    report.drift.push(...differences(what, cfg, info.config));
  };
  return ensureExists(what, report, look, () => jsm.consumers.add(stream, cfg), isAlreadyExists);
}

/**
 * Every bucket and object store of the topology, with its settings: provisioning makes them from
 * this table, and the roles (roles.ts) grant access to them from it.
 */
export const BUCKETS: ReadonlyArray<
  | { name: string; kind: "kv"; settings: (t: TopologyOptions) => { history: number; ttl?: number } }
  | { name: string; kind: "obj" }
> = [
  { name: JOBS_BUCKET, kind: "kv", settings: (t) => ({ history: 5, ttl: t.retentionMs }) },
  { name: WORKERS_BUCKET, kind: "kv", settings: (t) => ({ history: 1, ttl: workerTtlMs(t.heartbeatMs) }) },
  { name: QOS_BUCKET, kind: "kv", settings: () => ({ history: 5 }) },
  { name: API_KEYS_BUCKET, kind: "kv", settings: () => ({ history: 1 }) },
  {
    name: API_JOBS_BUCKET,
    kind: "kv",
    settings: (t) => ({ history: 1, ttl: t.retentionMs * API_JOBS_RETENTION_FACTOR }),
  },
  { name: CALLBACKS_BUCKET, kind: "kv", settings: (t) => ({ history: 1, ttl: t.retentionMs }) },
  { name: RESULTS_BUCKET, kind: "obj" },
];

/** The stream behind a bucket or object store. */
export function bucketStream(b: { name: string; kind: "kv" | "obj" }): string {
  return `${b.kind === "kv" ? "KV" : "OBJ"}_${b.name}`;
}

/** Every stream of the topology, the buckets' included: what every process looks up at start. */
export const FLEET_STREAMS: readonly string[] = [
  JOBS_STREAM,
  EVENTS_STREAM,
  DEAD_STREAM,
  ...BUCKETS.map(bucketStream),
];

/** The REST API's completion callbacks: its processes share this consumer of terminal states. */
export const CALLBACKS_CONSUMER = "api-callbacks";
/** After this, a callback attempt whose api process died is made again by another. */
export const CALLBACKS_ACK_WAIT_MS = 15_000;

/**
 * Made at `broker init` (the API runs as a submitter, which makes no consumers): the API's share of
 * every state event from its creation on, settled one by one.
 */
export function callbacksConsumerConfig(): Partial<ConsumerConfig> & { durable_name: string } {
  return {
    durable_name: CALLBACKS_CONSUMER,
    filter_subject: subjects.state("*"),
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.New,
    ack_wait: CALLBACKS_ACK_WAIT_MS * 1_000_000,
    max_deliver: -1,
  };
}

/**
 * A bucket or object store: its stream looked up, created when missing (by `create`), looked up
 * again after a race with another process (see ensureExists). `drift` reports how an existing one
 * differs from this configuration.
 */
function ensureStore(
  jsm: JetStreamManager,
  stream: string,
  what: string,
  report: ProvisionReport,
  create: () => Promise<unknown>,
  drift?: (config: StreamConfig) => string | undefined,
): Promise<void> {
  const look = async (): Promise<void> => {
    const info = await jsm.streams.info(stream);
    report.existing.push(what);
    const differs = drift?.(info.config);
    if (differs) report.drift.push(`${what}: ${differs}`);
  };
  return ensureExists(what, report, look, create, isCreatedConcurrently);
}

function ensureBucket(
  nc: NatsConnection,
  jsm: JetStreamManager,
  name: string,
  opts: { replicas: number; history: number; ttl?: number },
  report: ProvisionReport,
): Promise<void> {
  const create = (): Promise<unknown> =>
    new Kvm(nc).create(name, {
      replicas: opts.replicas,
      history: opts.history,
      ...(opts.ttl !== undefined && { ttl: opts.ttl }),
    });
  return ensureStore(jsm, kvStream(name), `bucket ${name}`, report, create, (config) => {
    const ttl = config.max_age / 1_000_000;
    return opts.ttl !== undefined && ttl !== opts.ttl
      ? `ttl is ${ttl} ms, this configuration wants ${opts.ttl} ms`
      : undefined;
  });
}

function ensureObjectStore(
  nc: NatsConnection,
  jsm: JetStreamManager,
  name: string,
  replicas: number,
  report: ProvisionReport,
): Promise<void> {
  return ensureStore(jsm, `OBJ_${name}`, `object store ${name}`, report, () =>
    // The object store client is loaded to create the store only (every process looks, one creates).
    import("@nats-io/obj").then(({ Objm }) =>
      new Objm(nc).create(name, { replicas, ttl: RESULTS_MAX_AGE_MS * 1_000_000 }),
    ),
  );
}

/** Ensure the whole topology for one queue exists; returns what was created and any drift. */
export async function provision(
  nc: NatsConnection,
  jsm: JetStreamManager,
  t: TopologyOptions,
): Promise<ProvisionReport> {
  const report: ProvisionReport = { created: [], existing: [], drift: [], missing: [] };
  try {
    for (const cfg of streamConfigs(t)) await ensureStream(jsm, cfg, report);
    await ensureConsumer(jsm, JOBS_STREAM, consumerConfig(t), report);
    await ensureConsumer(jsm, EVENTS_STREAM, callbacksConsumerConfig(), report);
    for (const b of BUCKETS) {
      if (b.kind === "obj") await ensureObjectStore(nc, jsm, b.name, t.replicas, report);
      else await ensureBucket(nc, jsm, b.name, { replicas: t.replicas, ...b.settings(t) }, report);
    }
  } catch (err) {
    if (isPermissionDenied(err)) {
      throw new BrokerError(
        `provisioning failed: this connection may not even look the topology up (${(err as Error).message})`,
        {},
        err,
        { retryable: false },
      );
    }
    throw new BrokerError(`provisioning failed: ${(err as Error).message}`, {}, err);
  }
  if (report.missing.length > 0) throw new TopologyMissingError(report.missing);
  return report;
}

/** A worker's registry entry expires after this long without a heartbeat. */
export function workerTtlMs(heartbeatMs: number): number {
  return Math.max(1000, heartbeatMs * ACK_WAIT_HEARTBEATS);
}

/**
 * Connect with the configuration's servers, ensure its topology, and hand the connection to `use`;
 * the connection is closed again if anything fails before `use` returns.
 */
export async function connectProvisioned<T>(
  config: FleetConfig,
  name: string,
  use: (conn: BrokerConnection, report: ProvisionReport) => Promise<T>,
): Promise<T> {
  const conn = await connectWithConfig(config, name);
  try {
    return await use(conn, await provision(conn.nc, conn.jsm, topologyOf(config)));
  } catch (err) {
    await conn.nc.close();
    throw err;
  }
}
