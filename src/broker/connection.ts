import { jetstream, jetstreamManager, type JetStreamClient, type JetStreamManager } from "@nats-io/jetstream";
import { Kvm, type KV } from "@nats-io/kv";
import { connect, errors, type NatsConnection } from "@nats-io/transport-node";
import { BrokerAuthError, BrokerError } from "../core/index.js";
import type { FleetConfig } from "../config/index.js";
import { NO_SECURITY, connectionSecurity, type SecuritySettings } from "./auth.js";
import { recordAuthority, type RecordAuthority } from "./signing.js";
import { JOBS_BUCKET, QOS_BUCKET, WORKERS_BUCKET } from "./subjects.js";

export const DEFAULT_SERVER = "nats://127.0.0.1:4222";
const RECONNECT_WAIT_MS = 250;
/**
 * A ping each 2 s, and the connection counts as dead after two go unanswered: a node cut off by
 * the network (no reset, packets just lost) is left for another within 4–6 s, not the client
 * library's default of four minutes, and well inside one request's retries (MARS_REQUEST_TIMEOUT)
 * so that a submit in flight rides through (test/netns-client-cut.test.ts).
 */
const PING_INTERVAL_MS = 2000;
const MAX_PINGS_OUT = 2;
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
  /** The QoS bucket: rules and limit slots. */
  qosKv(): Promise<KV>;
  /** Who the broker authenticated: a user name or an nkey public key; undefined on an open server. */
  identity: string | undefined;
  /** Who must have signed the QoS rules and API keys this process reads, and its signer if any. */
  authority: RecordAuthority;
}

export interface ConnectOptions {
  servers: string[];
  /** Connection name, shown by `nats server report connections`. */
  name: string;
  /** Timeout of connect and of each JetStream API request. */
  timeoutMs: number;
  /** Credentials and TLS; none by default (an open local server). */
  security?: SecuritySettings;
}

/** TLS failures Node reports by code: the server's certificate is not one this CA vouches for. */
const TLS_VERIFY_CODES = new Set([
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "CERT_HAS_EXPIRED",
  "ERR_TLS_CERT_ALTNAME_INVALID",
]);

function tlsCode(err: unknown): string | undefined {
  for (let e: unknown = err; e instanceof Error; e = e.cause) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code && TLS_VERIFY_CODES.has(code)) return code;
  }
  return undefined;
}

/** A refused connect as an error that says what to fix. */
function connectError(err: unknown, servers: string[]): Error {
  const where = servers.join(", ");
  if (err instanceof errors.AuthorizationError || err instanceof errors.UserAuthenticationExpiredError)
    return new BrokerAuthError(
      `NATS at ${where} refused these credentials (check MARS_NATS_CREDS, or MARS_NATS_USER and MARS_NATS_PASSWORD)`,
      { servers },
      err,
    );
  const tls = tlsCode(err);
  if (tls)
    return new BrokerAuthError(
      `NATS at ${where}: the server's TLS certificate is not trusted (${tls}); check MARS_NATS_TLS_CA`,
      { servers, tls },
      err,
    );
  return new BrokerError(`cannot connect to NATS at ${where}: ${(err as Error).message}`, { servers }, err);
}

/** Connect with a configuration's servers, timeout, credentials and TLS. */
export function connectWithConfig(
  config: Pick<FleetConfig, "servers" | "requestTimeout"> & SecuritySettings,
  name: string,
): Promise<BrokerConnection> {
  return connectBroker({ servers: config.servers, name, timeoutMs: config.requestTimeout, security: config });
}

/** Connect, reconnecting forever (a worker must outlive a server restart). */
export async function connectBroker(opts: ConnectOptions): Promise<BrokerConnection> {
  const security = connectionSecurity(
    opts.servers.length > 0 ? opts.servers : [DEFAULT_SERVER],
    opts.security ?? NO_SECURITY,
  );
  const servers = security.servers;
  // Checked before connecting: a fleet with credentials and no trust key is a configuration error.
  const authority = recordAuthority(opts.security ?? NO_SECURITY, security.identity !== undefined);
  let nc: NatsConnection;
  try {
    nc = await connect({
      ...security.options,
      servers,
      name: opts.name,
      timeout: opts.timeoutMs,
      maxReconnectAttempts: -1,
      reconnectTimeWait: RECONNECT_WAIT_MS,
      reconnectJitter: 100,
      pingInterval: PING_INTERVAL_MS,
      maxPingOut: MAX_PINGS_OUT,
      waitOnFirstConnect: false,
      // A stack captured up front for every request costs ~0.2 ms of CPU each (docs/PERFORMANCE.md);
      // errors keep their own stacks and, through withRetry, say what was being done.
      noAsyncTraces: true,
    });
  } catch (err) {
    throw connectError(err, servers);
  }
  const js = jetstream(nc, { timeout: Math.min(opts.timeoutMs, JS_OPERATION_TIMEOUT_MS) });
  const jsm = await jetstreamManager(nc, { timeout: opts.timeoutMs, checkAPI: false });
  const kvm = new Kvm(js);
  let jobs: Promise<KV> | undefined;
  let workers: Promise<KV> | undefined;
  let qos: Promise<KV> | undefined;
  return {
    nc,
    js,
    jsm,
    jobsKv: () => (jobs ??= kvm.open(JOBS_BUCKET)),
    workersKv: () => (workers ??= kvm.open(WORKERS_BUCKET)),
    qosKv: () => (qos ??= kvm.open(QOS_BUCKET)),
    identity: security.identity,
    authority,
  };
}
