import { jetstream, jetstreamManager, type JetStreamClient, type JetStreamManager } from "@nats-io/jetstream";
import { Kvm, type KV } from "@nats-io/kv";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { BrokerError } from "../core/errors.js";
import { JOBS_BUCKET, WORKERS_BUCKET } from "./subjects.js";

export const DEFAULT_SERVER = "nats://127.0.0.1:4222";
const RECONNECT_WAIT_MS = 250;
/**
 * Longest wait for the answer to one JetStream request (publish ack, KV read or update). A request
 * lost in a server restart is sent again after this, through withRetry, instead of waiting out the
 * whole request timeout.
 */
const JS_OPERATION_TIMEOUT_MS = 3000;

/** A connection with its JetStream handles and the two buckets. */
export interface BrokerConnection {
  nc: NatsConnection;
  js: JetStreamClient;
  jsm: JetStreamManager;
  jobsKv(): Promise<KV>;
  workersKv(): Promise<KV>;
}

export interface ConnectOptions {
  servers: string[];
  /** Connection name, shown by `nats server report connections`. */
  name: string;
  /** Timeout of connect and of each JetStream API request. */
  timeoutMs: number;
}

/** Connect, reconnecting forever (a worker must outlive a server restart). */
export async function connectBroker(opts: ConnectOptions): Promise<BrokerConnection> {
  const servers = opts.servers.length > 0 ? opts.servers : [DEFAULT_SERVER];
  let nc: NatsConnection;
  try {
    nc = await connect({
      servers,
      name: opts.name,
      timeout: opts.timeoutMs,
      maxReconnectAttempts: -1,
      reconnectTimeWait: RECONNECT_WAIT_MS,
      reconnectJitter: 100,
      waitOnFirstConnect: false,
    });
  } catch (err) {
    throw new BrokerError(
      `cannot connect to NATS at ${servers.join(", ")}: ${(err as Error).message}`,
      { servers },
      err,
    );
  }
  const js = jetstream(nc, { timeout: Math.min(opts.timeoutMs, JS_OPERATION_TIMEOUT_MS) });
  const jsm = await jetstreamManager(nc, { timeout: opts.timeoutMs, checkAPI: false });
  const kvm = new Kvm(js);
  let jobs: Promise<KV> | undefined;
  let workers: Promise<KV> | undefined;
  return {
    nc,
    js,
    jsm,
    jobsKv: () => (jobs ??= kvm.open(JOBS_BUCKET)),
    workersKv: () => (workers ??= kvm.open(WORKERS_BUCKET)),
  };
}
