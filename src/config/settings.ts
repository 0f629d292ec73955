/**
 * Every setting in one table: its name in code, in the environment, in the YAML file, its default
 * and what it means. Loading, validation and the README's table all follow this list.
 */
import { HOUR, MINUTE, SECOND } from "../core/index.js";

export type SettingKind = "string" | "int" | "bool" | "duration" | "list";

export interface Setting {
  /** Name in code and the CLI flag (kebab-cased). */
  key: string;
  env: string;
  /** Other environment names accepted for the same setting (lower precedence). */
  envAliases?: string[];
  kind: SettingKind;
  /** Default, in the compiled unit (milliseconds for durations). */
  default: string | number | boolean | string[];
  help: string;
}

export const SETTINGS = [
  {
    key: "servers",
    env: "MARS_NATS_SERVERS",
    envAliases: ["NATS_URL"],
    kind: "list",
    default: [],
    help: "NATS server URLs (comma separated). Set, the client runs jobs through the fleet.",
  },
  {
    key: "creds",
    env: "MARS_NATS_CREDS",
    kind: "string",
    default: "",
    help: "NATS credentials file: a role's nkey seed file from `mars-fleet broker auth`, or a `.creds` file (JWT and seed). Its contents are never logged.",
  },
  {
    key: "natsUser",
    env: "MARS_NATS_USER",
    kind: "string",
    default: "",
    help: "NATS user name, for servers that use passwords (with MARS_NATS_PASSWORD). Credentials in a server URL (nats://user:pass@host) work too.",
  },
  {
    key: "natsPassword",
    env: "MARS_NATS_PASSWORD",
    kind: "string",
    default: "",
    help: "NATS password of MARS_NATS_USER. Prefer the environment or the YAML file to the command line, where other users can see it.",
  },
  {
    key: "tlsCa",
    env: "MARS_NATS_TLS_CA",
    kind: "string",
    default: "",
    help: "PEM file of the CA that signed the NATS server's certificate; set, the connection uses TLS and verifies the server.",
  },
  {
    key: "tlsCert",
    env: "MARS_NATS_TLS_CERT",
    kind: "string",
    default: "",
    help: "PEM client certificate, for servers that verify clients (with MARS_NATS_TLS_KEY).",
  },
  {
    key: "tlsKey",
    env: "MARS_NATS_TLS_KEY",
    kind: "string",
    default: "",
    help: "PEM private key of MARS_NATS_TLS_CERT.",
  },
  {
    key: "trustKey",
    env: "MARS_TRUST_KEY",
    kind: "string",
    default: "",
    help: "The admin's signing public key (an nkey, U…), or the path of trust.pub from `broker auth`. QoS rules and API keys count only when signed by it. Required with credentials.",
  },
  {
    key: "signingKey",
    env: "MARS_SIGNING_KEY",
    kind: "string",
    default: "",
    help: "Admins: the nkey seed file that signs QoS rules and API keys (signing.nk from `broker auth`).",
  },
  {
    key: "callbackBackoff",
    env: "MARS_CALLBACK_BACKOFF",
    kind: "duration",
    default: 1 * SECOND,
    help: "API: first retry delay of a failed completion callback (doubles each time, at most 5 min).",
  },
  {
    key: "callbackMaxAge",
    env: "MARS_CALLBACK_MAX_AGE",
    kind: "duration",
    default: 1 * HOUR,
    help: "API: how long a completion callback is retried.",
  },
  {
    key: "callbackAllow",
    env: "MARS_CALLBACK_ALLOW",
    kind: "list",
    default: [],
    help: "API: address ranges (CIDR, comma separated) completion callbacks may reach although loopback, private, link-local or otherwise special; by default they may not.",
  },
  {
    key: "useShares",
    env: "MARS_USE_SHARES",
    kind: "bool",
    default: false,
    help: "Run executeMars through the fleet (shared filesystem) even without servers set; servers default to nats://127.0.0.1:4222.",
  },
  {
    key: "filterLogs",
    env: "MARS_CLIENT_FILTER_LOGS",
    kind: "bool",
    default: true,
    help: "Show only important MARS log lines and collapse repeats.",
  },
  {
    key: "maxConcurrentConnections",
    env: "MARS_MAX_CONCURRENT_CONNECTIONS",
    kind: "int",
    default: 0,
    help: "Fleet-wide cap on running jobs per queue (consumer max_ack_pending); gateway connection limit. 0 = no cap.",
  },
  {
    key: "requestTimeout",
    env: "MARS_REQUEST_TIMEOUT",
    kind: "duration",
    default: 30 * SECOND,
    help: "Timeout of one request to the broker (connect, publish, lookup). Not a job limit.",
  },
  {
    key: "jobTimeout",
    env: "MARS_JOB_TIMEOUT",
    kind: "duration",
    default: 0,
    help: "Wall-clock limit of one MARS job. 0 = none. Final, not retried.",
  },
  {
    key: "heartbeatInterval",
    env: "MARS_HEARTBEAT_INTERVAL",
    kind: "duration",
    default: 20 * SECOND,
    help: "Worker heartbeat period; the consumer's ack wait is 3x this.",
  },
  {
    key: "laneIdle",
    env: "MARS_LANE_IDLE",
    kind: "duration",
    // Short enough that the server holds lanes for the users of the last few minutes (#26: five
    // minutes after a backlog drained, no more than the active users'); a user back after longer
    // has her lane made again (a few ms on one server, about a second on a cluster).
    default: 2 * MINUTE,
    help: "A lane consumer unused this long is removed by the server; made again for the lane's next job. 0 = kept.",
  },
  {
    key: "keeper",
    env: "MARS_KEEPER",
    kind: "string",
    default: "auto",
    help: "Worker: answer lane requests itself (on), or leave them to `mars-fleet keeper` (off). auto = on for an open server, off with credentials (the worker role may make no consumer).",
  },
  {
    key: "sharedRoot",
    env: "MARS_SHARED_ROOT",
    kind: "string",
    default: "/cache",
    help: "Root of the filesystem shared by workers and clients; every target lies under it.",
  },
  {
    key: "pipePort",
    env: "MARS_PIPE_PORT",
    kind: "int",
    default: 9000,
    help: "Gateway: cads-mars-server pipe (HTTP) port (0 = any free port).",
  },
  {
    key: "sharesPort",
    env: "MARS_SHARES_PORT",
    kind: "int",
    default: 9001,
    help: "Gateway: cads-mars-server shares (WebSocket) port (0 = any free port).",
  },
  {
    key: "metricsPort",
    env: "MARS_METRICS_PORT",
    kind: "int",
    default: 0,
    help: "Worker: serve Prometheus metrics on this port at /metrics. 0 = off.",
  },
  {
    key: "gatewayHost",
    env: "MARS_GATEWAY_HOST",
    kind: "string",
    default: "0.0.0.0",
    help: "Gateway: address the pipe and shares ports listen on.",
  },
  {
    key: "gatewayData",
    env: "MARS_GATEWAY_DATA",
    kind: "string",
    default: "share",
    help: "Gateway pipe mode: how results reach the gateway: share (shared root, streamed while MARS writes) or objectstore (through the broker, after the job).",
  },
  {
    key: "gatewaySharesEnv",
    env: "MARS_GATEWAY_SHARES_ENV",
    kind: "list",
    default: ["MARS_AUTO_SPLIT_BY_DATES=1"],
    help: "Gateway shares mode: MARS settings for its jobs (NAME=VALUE, comma separated), as cads-mars-server's WebSocket server set them.",
  },
  {
    key: "gatewayPipeRequestId",
    env: "MARS_GATEWAY_PIPE_REQUEST_ID",
    kind: "bool",
    default: true,
    help: "Gateway pipe mode: an environ without request_id gets the X-MARS-UID (MARS_ENVIRON_REQUEST_ID), as cads-mars-server's pipe server did.",
  },
  {
    key: "maxRetries",
    env: "MARS_MAX_RETRIES",
    kind: "int",
    default: 5,
    help: "Attempts per job before it is failed (consumer max_deliver).",
  },
  {
    key: "retryDelay",
    env: "MARS_RETRY_DELAY",
    kind: "duration",
    default: 5 * SECOND,
    help: "Delay before a retried job is offered again (grows per attempt).",
  },
  {
    key: "marsCommand",
    env: "MARS_COMMAND",
    kind: "string",
    default: "",
    help: "The MARS executable and leading arguments (space separated). Empty = the bundled simulator.",
  },
  {
    key: "queue",
    env: "MARS_QUEUE",
    kind: "string",
    default: "default",
    help: "Work queue name (subject mars.jobs.<queue>).",
  },
  {
    key: "concurrency",
    env: "MARS_WORKER_CONCURRENCY",
    kind: "int",
    default: 2,
    help: "Worker: job slots (MARS processes at once).",
  },
  {
    key: "drainGrace",
    env: "MARS_DRAIN_GRACE",
    kind: "duration",
    default: 5 * MINUTE,
    help: "Worker: on SIGTERM, how long running jobs may finish before they are killed and handed back.",
  },
  {
    key: "killGrace",
    env: "MARS_KILL_GRACE",
    kind: "duration",
    default: 5 * SECOND,
    help: "Time between SIGTERM and SIGKILL when stopping a MARS process group.",
  },
  {
    key: "streamReplicas",
    env: "MARS_STREAM_REPLICAS",
    kind: "int",
    default: 1,
    help: "Replicas of the JetStream streams and buckets (1 or 3).",
  },
  {
    key: "eventsMaxAge",
    env: "MARS_EVENTS_MAX_AGE",
    kind: "duration",
    default: 24 * HOUR,
    help: "How long job logs and events are kept for replay.",
  },
  {
    key: "retention",
    env: "MARS_RETENTION",
    kind: "duration",
    default: 30 * 24 * HOUR,
    help: "How long a job record is kept after its last change (the jobs bucket's TTL); then it expires.",
  },
  {
    key: "cacheMaxBytes",
    env: "MARS_CACHE_MAX_BYTES",
    kind: "int",
    default: 0,
    help: "Budget of the result cache under the shared root (.cache), in bytes; least recently used entries go first. 0 = no cache.",
  },
  {
    key: "cacheTtl",
    env: "MARS_CACHE_TTL",
    kind: "duration",
    default: 7 * 24 * HOUR,
    help: "How long a result is served from the cache after MARS made it.",
  },
  {
    key: "logLevel",
    env: "MARS_LOG_LEVEL",
    kind: "string",
    default: "info",
    help: "pino log level (trace, debug, info, warn, error, silent).",
  },
] as const satisfies readonly Setting[];

export type SettingKey = (typeof SETTINGS)[number]["key"];

/** `sharedRoot` → `shared_root` in YAML, `shared-root` on the command line. */
export function yamlName(key: string): string {
  return key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}

export function flagName(key: string): string {
  return key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
}
