/**
 * The fleet's NATS roles and the narrowest permissions that still let each one work. This table is
 * the source of the authorization block `mars-fleet broker auth` writes and of docs/SECURITY.md.
 */
import {
  DEAD_STREAM,
  EVENTS_STREAM,
  JOBS_BUCKET,
  JOBS_STREAM,
  QOS_BUCKET,
  QOS_RULES_KEY,
  RESULTS_BUCKET,
  WORKERS_BUCKET,
  RECORD_KEYS,
  subjects,
} from "./subjects.js";
import { API_JOBS_BUCKET, API_KEYS_BUCKET } from "../api/keys.js";
import { CALLBACKS_BUCKET } from "../api/callbacks.js";

export const ROLES = ["admin", "worker", "submitter", "observer"] as const;
export type Role = (typeof ROLES)[number];

export interface Permission {
  subject: string;
  why: string;
}

export interface RolePermissions {
  publish: Permission[];
  subscribe: Permission[];
}

const kvStream = (bucket: string): string => `KV_${bucket}`;
const objStream = (bucket: string): string => `OBJ_${bucket}`;
const FLEET_STREAMS = [
  JOBS_STREAM,
  EVENTS_STREAM,
  DEAD_STREAM,
  kvStream(JOBS_BUCKET),
  kvStream(WORKERS_BUCKET),
  kvStream(QOS_BUCKET),
  kvStream(API_KEYS_BUCKET),
  kvStream(API_JOBS_BUCKET),
  kvStream(CALLBACKS_BUCKET),
  objStream(RESULTS_BUCKET),
];

function p(subject: string, why: string): Permission {
  return { subject, why };
}

/** Look the topology up (no change): every process checks it at start. */
const topologyInfo = (): Permission[] => [
  p("$JS.API.INFO", "JetStream account information (the object store client checks the API level)"),
  ...FLEET_STREAMS.map((s) => p(`$JS.API.STREAM.INFO.${s}`, "check the topology exists; open buckets")),
  p(`$JS.API.CONSUMER.INFO.${JOBS_STREAM}.*`, "check a queue's consumer exists"),
];

/** Read single messages (KV get, object info, a dead-lettered job) from a stream. */
const directReads = (stream: string): Permission[] => [
  p(`$JS.API.DIRECT.GET.${stream}`, `read single messages of ${stream}`),
  p(`$JS.API.DIRECT.GET.${stream}.>`, `read the last message of a subject of ${stream}`),
  p(`$JS.API.STREAM.MSG.GET.${stream}`, `read single messages of ${stream} (servers without direct get)`),
];

/** Replay a stream through ordered consumers (KV watch and keys, a job's events, an object's chunks). */
const orderedReads = (stream: string): Permission[] => [
  p(`$JS.API.CONSUMER.CREATE.${stream}`, `replay ${stream} with an ephemeral ordered consumer`),
  p(`$JS.API.CONSUMER.CREATE.${stream}.>`, `same, with a subject filter (nats-server 2.9+)`),
  p(`$JS.API.CONSUMER.INFO.${stream}.*`, `follow its ordered consumers`),
  p(`$JS.API.CONSUMER.MSG.NEXT.${stream}.*`, `pull from its ordered consumers`),
  p(
    `$JS.API.CONSUMER.DELETE.${stream}.*`,
    `drop its own ordered consumers when done (ephemeral only in practice)`,
  ),
];

const flowControl = p("$JS.FC.>", "answer flow control of ordered consumers");
const status = (s: string): string => `$KV.${JOBS_BUCKET}.*.${s}`;

/** The permissions of a role, for a user whose replies come to `inbox` (see auth.ts). */
export function rolePermissions(role: Role, inbox: string): RolePermissions {
  const replies = p(`${inbox}.>`, "replies to its own requests, and nobody else's");
  switch (role) {
    case "admin":
      return {
        publish: [p(">", "provisioning (`broker init`) and repairs")],
        subscribe: [p(">", "everything")],
      };
    case "worker":
      return {
        publish: [
          ...topologyInfo(),
          p(`$JS.API.CONSUMER.MSG.NEXT.${JOBS_STREAM}.*`, "pull jobs from its queue's consumers"),
          p(
            `$JS.API.CONSUMER.CREATE.${JOBS_STREAM}.*.${subjects.lane("*", "*")}`,
            "create a lane's consumer when the lane first has jobs, and set its cap (a per-user limit) when the rules change: only consumers filtered on a lane (never the queue's own; no deletion)",
          ),
          p(`$JS.ACK.${JOBS_STREAM}.>`, "ack, nak, term and in-progress of its jobs"),
          p(`$JS.API.STREAM.MSG.GET.${JOBS_STREAM}`, "read a job that ran out of deliveries"),
          p(`$JS.API.STREAM.MSG.DELETE.${JOBS_STREAM}`, "remove that job once dead-lettered"),
          ...directReads(kvStream(JOBS_BUCKET)),
          p(`${status(RECORD_KEYS.status)}`, "update job records (compare-and-set)"),
          p(`$KV.${WORKERS_BUCKET}.*`, "register itself in the worker registry"),
          ...directReads(kvStream(QOS_BUCKET)),
          ...orderedReads(kvStream(QOS_BUCKET)),
          flowControl,
          p(`$KV.${QOS_BUCKET}.slots.>`, "take and give back QoS limit slots (compare-and-set)"),
          p(subjects.log("*"), "publish job logs"),
          p(subjects.progress("*"), "publish job progress"),
          p(subjects.state("*"), "publish job state changes"),
          p(subjects.allHeartbeats, "heartbeats of running jobs"),
          p(subjects.allDead, "dead-letter jobs"),
          ...directReads(objStream(RESULTS_BUCKET)),
          p(`$O.${RESULTS_BUCKET}.>`, "upload results for gateways without the shared filesystem"),
          p(`$JS.API.STREAM.PURGE.${objStream(RESULTS_BUCKET)}`, "replace a result a failed attempt left"),
        ],
        subscribe: [
          replies,
          p(subjects.cancel("*"), "stop a running job at once when it is cancelled"),
          p(status(RECORD_KEYS.submitted), "see a running job's submission change (a cancel: then read it)"),
          p(subjects.maxDeliveries("*"), "fail jobs that ran out of deliveries"),
          ...subjects.allJobs.map((s) =>
            p(s, "hear new jobs on its queue's lanes (to choose whom to serve)"),
          ),
          p(`$KV.${QOS_BUCKET}.${QOS_RULES_KEY}`, "hear the QoS rules change (re-read at once)"),
        ],
      };
    case "submitter":
      return {
        publish: [
          ...topologyInfo(),
          ...subjects.allJobs.map((s) => p(s, "publish jobs (on its queue's lanes, or lane-less)")),
          p(`${status(RECORD_KEYS.submitted)}`, "create job records (the submission)"),
          ...directReads(kvStream(JOBS_BUCKET)),
          ...orderedReads(kvStream(JOBS_BUCKET)),
          ...directReads(kvStream(WORKERS_BUCKET)),
          ...orderedReads(kvStream(WORKERS_BUCKET)),
          ...directReads(kvStream(QOS_BUCKET)),
          ...directReads(kvStream(API_KEYS_BUCKET)),
          ...directReads(kvStream(CALLBACKS_BUCKET)),
          ...directReads(kvStream(API_JOBS_BUCKET)),
          p(
            `$KV.${API_JOBS_BUCKET}.*`,
            "the api: remember the jobs it took, to tell an expired one (410) from none (404)",
          ),
          p(
            `$KV.${CALLBACKS_BUCKET}.*`,
            "the api: register a job's completion callback, record its attempts",
          ),
          p(`$JS.ACK.${EVENTS_STREAM}.api-callbacks.>`, "the api: settle the state events it calls back for"),
          ...orderedReads(EVENTS_STREAM),
          p(subjects.cancel("*"), "request a cancel"),
          p(`$JS.API.STREAM.MSG.GET.${JOBS_STREAM}`, "explain a wait: read the next job of each lane"),
          p(subjects.log("*"), "the log of a request refused before it was queued"),
          p(subjects.state("*"), "the state of a request refused before it was queued"),
          p(`$JS.API.STREAM.PURGE.${EVENTS_STREAM}`, "drop a job's log (the pipe protocol's DELETE)"),
          ...directReads(objStream(RESULTS_BUCKET)),
          ...orderedReads(objStream(RESULTS_BUCKET)),
          flowControl,
        ],
        subscribe: [
          replies,
          p(subjects.allHeartbeats, "heartbeats of its jobs"),
          p(subjects.jobEvents("*"), "follow its new jobs' events live (what a replay would give)"),
          p(`$KV.${JOBS_BUCKET}.*.*`, "hear its jobs' records change (then read them)"),
          p(`$KV.${QOS_BUCKET}.${QOS_RULES_KEY}`, "hear the QoS rules change (deny rules apply at submit)"),
          p(`$KV.${API_KEYS_BUCKET}.*`, "the api: hear an API key revoked (forget it at once)"),
        ],
      };
    case "observer":
      return {
        publish: [
          p("$JS.API.INFO", "account information"),
          p("$JS.API.STREAM.NAMES", "list streams"),
          p("$JS.API.STREAM.LIST", "list streams"),
          p("$JS.API.STREAM.INFO.*", "stream information"),
          p("$JS.API.CONSUMER.NAMES.*", "list consumers"),
          p("$JS.API.CONSUMER.LIST.*", "list consumers"),
          p("$JS.API.CONSUMER.INFO.*.*", "consumer information"),
          p(`$JS.API.STREAM.MSG.GET.${JOBS_STREAM}`, "explain a wait: read the next job of each lane"),
          ...[
            EVENTS_STREAM,
            DEAD_STREAM,
            kvStream(JOBS_BUCKET),
            kvStream(WORKERS_BUCKET),
            kvStream(QOS_BUCKET),
          ].flatMap((s) => [...directReads(s), ...orderedReads(s)]),
          flowControl,
        ],
        subscribe: [
          replies,
          p(subjects.allHeartbeats, "heartbeats"),
          p("$JS.EVENT.>", "JetStream advisories"),
        ],
      };
  }
}

/** A string as nats-server's configuration language reads it, literally. */
function quote(s: string): string {
  return JSON.stringify(s);
}

export interface AuthUser {
  role: Role;
  /** An nkey user's public key, or a user name with a bcrypt password hash. */
  nkey?: string;
  user?: string;
  passwordHash?: string;
  inbox: string;
}

/** nats-server's `authorization {}` block for these users. */
export function authorizationBlock(users: AuthUser[]): string {
  const lines = ["authorization {", "  users = ["];
  for (const u of users) {
    const perms = rolePermissions(u.role, u.inbox);
    const who = u.nkey
      ? `nkey: ${quote(u.nkey)}`
      : `user: ${quote(u.user!)}, password: ${quote(u.passwordHash!)}`;
    const list = (ps: Permission[]): string => ps.map((x) => quote(x.subject)).join(", ");
    lines.push(`    # role: ${u.role}`);
    lines.push(`    { ${who}`);
    lines.push(`      permissions: {`);
    lines.push(`        publish: { allow: [${list(perms.publish)}] }`);
    lines.push(`        subscribe: { allow: [${list(perms.subscribe)}] }`);
    lines.push(`      } }`);
  }
  lines.push("  ]", "}");
  return lines.join("\n") + "\n";
}

/** docs/SECURITY.md's tables of what each role may publish and subscribe to, and why. */
export function permissionsMarkdown(): string {
  const out: string[] = [];
  for (const role of ROLES) {
    const perms = rolePermissions(role, "_INBOX.<identity>");
    out.push(`#### ${role}`, "", "| direction | subject | why |", "| --- | --- | --- |");
    for (const [dir, list] of [
      ["publish", perms.publish],
      ["subscribe", perms.subscribe],
    ] as const) {
      for (const x of list) out.push(`| ${dir} | \`${x.subject}\` | ${x.why} |`);
    }
    out.push("");
  }
  return out.join("\n");
}
