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
  kvStream,
  API_JOBS_BUCKET,
  API_KEYS_BUCKET,
  CALLBACKS_BUCKET,
  subjects,
} from "./subjects.js";
import { CALLBACKS_CONSUMER, FLEET_STREAMS } from "./provision.js";

export const ROLES = ["admin", "worker", "keeper", "submitter", "observer"] as const;
export type Role = (typeof ROLES)[number];

export interface Permission {
  subject: string;
  why: string;
  /**
   * A subscribe right heard across accounts on these narrower subjects (default: the subject
   * itself), so that no part of it is also one of the role's own publish rights (see roleImports).
   */
  heardAs?: string[];
}

export interface RolePermissions {
  publish: Permission[];
  subscribe: Permission[];
  /**
   * Requests this role answers (a service it runs): the roles that may send them import them from
   * this role's account, and its users may answer on the reply subjects they arrive with.
   */
  serves?: Permission[];
}

const objStream = (bucket: string): string => `OBJ_${bucket}`;

function p(subject: string, why: string, heardAs?: string[]): Permission {
  return { subject, why, ...(heardAs && { heardAs }) };
}

/** Look the topology up (no change): every process checks it at start. */
const topologyInfo = (): Permission[] => [
  p("$JS.API.INFO", "JetStream account information (the object store client checks the API level)"),
  ...FLEET_STREAMS.map((s) => p(`$JS.API.STREAM.INFO.${s}`, "check the topology exists; open buckets")),
  p(`$JS.API.CONSUMER.INFO.${JOBS_STREAM}.*`, "check a queue's consumer exists"),
  p(
    `$JS.API.CONSUMER.INFO.${EVENTS_STREAM}.${CALLBACKS_CONSUMER}`,
    "check the API's callbacks consumer exists",
  ),
];

/** Read single messages (KV get, object info, a dead-lettered job) from a stream. */
const directReads = (stream: string): Permission[] => [
  p(`$JS.API.DIRECT.GET.${stream}`, `read single messages of ${stream}`),
  p(`$JS.API.DIRECT.GET.${stream}.>`, `read the last message of a subject of ${stream}`),
  p(`$JS.API.STREAM.MSG.GET.${stream}`, `read single messages of ${stream} (servers without direct get)`),
];

/**
 * Replay a stream through ordered consumers (a KV watch). Workers only: a consumer's configuration
 * names where its messages are delivered, which the server does with its own rights (see
 * stream-reads.ts); submitters and observers read with single requests instead.
 */
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
            subjects.allKeeper,
            "ask a lane keeper for a lane's consumer when the lane first has jobs, and for its cap (a per-user limit) when the rules change: workers make no consumer",
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
          p(
            `$KV.${QOS_BUCKET}.usage.*`,
            "add the MARS time of the jobs it ran to their user's recent use (fair share by use; compare-and-set)",
          ),
          p(subjects.log("*"), "publish job logs"),
          p(subjects.progress("*"), "publish job progress"),
          p(subjects.state("*"), "publish job state changes"),
          p(subjects.allHeartbeats, "heartbeats of running jobs"),
          p(
            subjects.allLanesFreed,
            "tell the queue's other workers that a capped lane has room again, or that a job was handed back",
          ),
          p(subjects.allLanesWake, "pass on a wake-up for a job it had no free slot for"),
          p(
            subjects.allCancels,
            "stop the other parts of a split job that ended (the workers running them check the records first)",
          ),
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
          p(
            subjects.consumersDeleted,
            "learn that the server removed an idle lane's consumer (made again before its next pull)",
          ),
          ...subjects.allJobs.map((s) =>
            p(s, "hear new jobs on its queue's lanes (to choose whom to serve)"),
          ),
          p(`$KV.${QOS_BUCKET}.${QOS_RULES_KEY}`, "hear the QoS rules change (re-read at once)"),
          p(subjects.allLanesWake, "be woken for a job another worker had no free slot for"),
          p(
            subjects.allLanesFreed,
            "hear that a capped lane has room again, or a job was handed back (pull from it at once)",
          ),
        ],
      };
    case "keeper":
      return {
        publish: [
          ...topologyInfo(),
          p(
            `$JS.API.CONSUMER.CREATE.${JOBS_STREAM}.*.${subjects.lane("*", "*")}`,
            "make a lane's consumer, or give it a cap and idle time, when a worker asks: after checking the lane is one literal token and the consumer by that name is the lane's (broker/keeper.ts)",
          ),
        ],
        subscribe: [replies],
        serves: [
          p(subjects.allKeeper, "workers' requests for a lane's consumer (one queue group of keepers)"),
        ],
      };
    case "submitter":
      return {
        publish: [
          ...topologyInfo(),
          ...subjects.allJobs.map((s) => p(s, "publish jobs (on its queue's lanes, or lane-less)")),
          p(`${status(RECORD_KEYS.submitted)}`, "create job records (the submission)"),
          ...directReads(kvStream(JOBS_BUCKET)),
          ...directReads(kvStream(WORKERS_BUCKET)),
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
          p(
            `$JS.API.CONSUMER.MSG.NEXT.${EVENTS_STREAM}.${CALLBACKS_CONSUMER}`,
            "the api: take the state events it calls back for",
          ),
          p(
            `$JS.ACK.${EVENTS_STREAM}.${CALLBACKS_CONSUMER}.>`,
            "the api: settle the state events it calls back for",
          ),
          p(`$JS.API.STREAM.MSG.GET.${EVENTS_STREAM}`, "replay a job's events (one message get each)"),
          p(subjects.cancel("*"), "request a cancel"),
          p(`$JS.API.STREAM.MSG.GET.${JOBS_STREAM}`, "explain a wait: read the next job of each lane"),
          ...directReads(objStream(RESULTS_BUCKET)),
        ],
        subscribe: [
          replies,
          p(subjects.allHeartbeats, "heartbeats of its jobs"),
          p(subjects.registry("*"), "hear workers register (which serve a queue now)"),
          p(subjects.jobEvents("*"), "follow its new jobs' events live (what a replay would give)"),
          p(`$KV.${JOBS_BUCKET}.*.*`, "hear its jobs' records change (then read them)", [
            status(RECORD_KEYS.status),
            status(RECORD_KEYS.submitted),
          ]),
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
          ...[
            EVENTS_STREAM,
            DEAD_STREAM,
            kvStream(JOBS_BUCKET),
            kvStream(WORKERS_BUCKET),
            kvStream(QOS_BUCKET),
          ].flatMap((s) => directReads(s)),
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

/**
 * The account that holds the streams, buckets and consumers. Only admins log into it; every other
 * role has an account of its own that imports from this one just what the role's table allows.
 */
export const FLEET_ACCOUNT = "MARS";

/** The account a role's users log into. */
export function roleAccount(role: Role): string {
  return role === "admin" ? FLEET_ACCOUNT : `MARS_${role.toUpperCase()}`;
}

export interface AuthUser {
  role: Role;
  /** An nkey user's public key, or a user name with a bcrypt password hash. */
  nkey?: string;
  user?: string;
  passwordHash?: string;
  inbox: string;
}

/** Requests whose answer is several messages (a pull's batch): the import must keep the route open. */
const streamedAnswer = (subject: string): boolean => subject.includes(".CONSUMER.MSG.NEXT.");

/** The subjects two subject patterns both match, as one pattern; undefined when none. */
export function subjectIntersection(a: string, b: string): string | undefined {
  const meet = (x: string[], y: string[]): string[] | undefined => {
    if (x[0] === ">") return y.length > 0 ? y : undefined;
    if (y[0] === ">") return x.length > 0 ? x : undefined;
    if (x.length === 0 || y.length === 0) return x.length === y.length ? [] : undefined;
    const [hx, hy] = [x[0]!, y[0]!];
    const head = hx === "*" ? hy : hy === "*" || hx === hy ? hx : undefined;
    if (head === undefined) return undefined;
    const rest = meet(x.slice(1), y.slice(1));
    return rest && [head, ...rest];
  };
  return meet(a.split("."), b.split("."))?.join(".");
}

/** Whether every subject `inner` matches, `outer` matches too. */
function covers(outer: string, inner: string): boolean {
  return subjectIntersection(outer, inner) === inner;
}

interface Imports {
  /** Subject → the account it is imported from as a service. */
  services: Map<string, string>;
  /** Subject → the accounts it is imported from. */
  streams: Map<string, Set<string>>;
}

/**
 * What each role's account imports. Services: the role's publish rights, from the fleet account,
 * or from the account of the role that serves them (a keeper's lane requests). Streams: what the
 * role may hear, from the account where it is published. The server never passes
 * a message that entered an account through a service import on to another account's stream
 * import (nats-server client.go: "do not re-export to an exported stream"), so a worker's record
 * change reaches a submitter from the worker's account, not through the fleet's. And a subject an
 * account imports as a service is never also a stream import there: a message arriving by the
 * stream would go on through the service import and be stored a second time. Such a role hears
 * that subject only from its own account (its own connections).
 */
function roleImports(users: AuthUser[]): Map<string, Imports> {
  const permsOf = new Map(users.map((u) => [u.role, rolePermissions(u.role, u.inbox)]));
  const servedBy = (subject: string): string => {
    for (const [role, perms] of permsOf)
      if (perms.serves?.some((x) => covers(x.subject, subject))) return roleAccount(role);
    return FLEET_ACCOUNT;
  };
  const out = new Map<string, Imports>();
  for (const u of users) {
    if (u.role === "admin") continue;
    const perms = permsOf.get(u.role)!;
    const imports: Imports = {
      services: new Map(perms.publish.map((x) => [x.subject, servedBy(x.subject)])),
      streams: new Map(),
    };
    const addStream = (subject: string, from: string): void => {
      for (const own of imports.services.keys()) {
        if (subjectIntersection(own, subject) === undefined) continue;
        if (covers(own, subject)) return;
        throw new Error(`${roleAccount(u.role)} would import ${subject} both ways (it publishes ${own})`);
      }
      const set = imports.streams.get(subject) ?? new Set<string>();
      imports.streams.set(subject, set.add(from));
    };
    // Push consumers: a KV watch's ordered consumer (lane consumers, a keeper's, are pull consumers).
    const pushed = perms.publish.some((x) => x.subject.startsWith("$JS.API.CONSUMER.CREATE.KV_"));
    for (const subject of perms.subscribe.flatMap((x) => x.heardAs ?? [x.subject])) {
      if (subject.startsWith(`${u.inbox}.`)) {
        // Answers come back through the service imports; only a push consumer's deliveries (a
        // worker's KV watch) reach the inbox from the fleet account, and only for a role that
        // may make one.
        if (pushed) addStream(subject, FLEET_ACCOUNT);
        continue;
      }
      addStream(subject, FLEET_ACCOUNT); // the admin's and the server's own messages
      for (const [role, other] of permsOf) {
        if (role === "admin" || role === u.role) continue;
        for (const p of other.publish) {
          const both = subjectIntersection(p.subject, subject);
          if (both !== undefined && !both.startsWith("$JS.")) addStream(both, roleAccount(role));
        }
      }
    }
    out.set(roleAccount(u.role), imports);
  }
  return out;
}

/**
 * nats-server's `accounts {}` block for these users.
 *
 * Why accounts (docs/SECURITY.md, "Replies cannot be aimed"): the server answers a JetStream or KV
 * request on whatever reply subject the request names, with its own rights. In one account that
 * lets a role make the server publish where the role itself may not (a direct get whose reply is
 * the work queue). Here the streams live in the fleet's account, which only admins log into, and
 * every other role's publish right is a service import from it: the server answers such a request
 * inside the requester's own account, whatever reply it names, and that account holds no stream.
 * The subject permissions stay on each user as well, so a forbidden publish is refused (and
 * logged) at once.
 */
export function accountsBlock(users: AuthUser[]): string {
  const imports = roleImports(users);
  const userLines = (u: AuthUser): string[] => {
    const perms = rolePermissions(u.role, u.inbox);
    const who = u.nkey
      ? `nkey: ${quote(u.nkey)}`
      : `user: ${quote(u.user!)}, password: ${quote(u.passwordHash!)}`;
    const list = (ps: Permission[]): string => ps.map((x) => quote(x.subject)).join(", ");
    const serves = perms.serves ?? [];
    return [
      `      # role: ${u.role}`,
      `      { ${who}`,
      `        permissions: {`,
      `          publish: { allow: [${list(perms.publish)}] }`,
      `          subscribe: { allow: [${list([...perms.subscribe, ...serves])}] }`,
      // A service's answers go to the reply subject each request came with, and nowhere else.
      ...(serves.length > 0 ? ["          allow_responses: true"] : []),
      `        } }`,
    ];
  };
  /** Exports by exporting account: services and streams, each with who may import. */
  const services = new Map<string, Map<string, Set<string>>>();
  const streams = new Map<string, Map<string, Set<string>>>();
  for (const [account, imp] of imports) {
    for (const [subject, from] of imp.services) {
      const bySubject = services.get(from) ?? new Map<string, Set<string>>();
      bySubject.set(subject, (bySubject.get(subject) ?? new Set()).add(account));
      services.set(from, bySubject);
    }
    for (const [subject, froms] of imp.streams)
      for (const from of froms) {
        const bySubject = streams.get(from) ?? new Map<string, Set<string>>();
        bySubject.set(subject, (bySubject.get(subject) ?? new Set()).add(account));
        streams.set(from, bySubject);
      }
  }
  const list = (set: Set<string>): string => [...set].map(quote).join(", ");
  const streamExports = (account: string): string[] =>
    [...(streams.get(account) ?? new Map<string, Set<string>>())].map(
      ([subject, to]) => `      { stream: ${quote(subject)}, accounts: [${list(to)}] }`,
    );
  const accounts = [FLEET_ACCOUNT, ...imports.keys()];
  const lines = ["accounts {"];
  for (const account of accounts) {
    lines.push(`  ${account}: {`);
    if (account === FLEET_ACCOUNT) lines.push("    jetstream: enabled");
    lines.push("    users: [");
    for (const u of users) if (roleAccount(u.role) === account) lines.push(...userLines(u));
    lines.push("    ]", "    exports: [");
    for (const [subject, to] of services.get(account) ?? []) {
      const answer = streamedAnswer(subject) ? ", response_type: stream" : "";
      lines.push(`      { service: ${quote(subject)}, accounts: [${list(to)}]${answer} }`);
    }
    lines.push(...streamExports(account), "    ]");
    const imp = imports.get(account);
    if (imp) {
      lines.push("    imports: [");
      for (const [s, from] of imp.services)
        lines.push(`      { service: { account: ${from}, subject: ${quote(s)} } }`);
      for (const [subject, froms] of imp.streams)
        for (const from of froms)
          lines.push(`      { stream: { account: ${from}, subject: ${quote(subject)} } }`);
      lines.push("    ]");
    }
    lines.push("  }");
  }
  lines.push("}");
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
      ["serve", perms.serves ?? []],
    ] as const) {
      for (const x of list) out.push(`| ${dir} | \`${x.subject}\` | ${x.why} |`);
    }
    out.push("");
  }
  return out.join("\n");
}
