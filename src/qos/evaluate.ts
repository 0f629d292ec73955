/**
 * What the rules say about one job: whether it is denied, its priority, which limits it counts
 * against, and its fairness lane. Pure: the client (at submit), the worker (at dispatch and claim)
 * and `mars-fleet status` (explaining a wait) all call these on the same facts.
 */
import { createHash } from "node:crypto";
import { z } from "zod";
import { expandDates, expandIntegers, expandTimes } from "../mars/index.js";
import { environSchema, isToken, marsRequestSchema } from "../broker/index.js";
import { parseDuration } from "../core/index.js";
import {
  isCache,
  isSplit,
  isDeny,
  isLimit,
  isPriority,
  type CacheRule,
  type SplitRule,
  type Condition,
  type DenyRule,
  type LimitRule,
  type QosRules,
  type Selector,
} from "./rules.js";

/** What is read of a queued job message to place it: enough for the rules, nothing trusted. */
export const queuedJobSchema = z.object({
  id: z.string(),
  queue: z.string(),
  submittedAt: z.number(),
  environ: environSchema,
  requests: z.array(marsRequestSchema),
});

/** The part of a job the rules look at. */
export interface JobShape {
  queue: string;
  environ: Record<string, string>;
  requests: Array<{ verb: string; params: Record<string, string[]> }>;
}

/** A job as the rules see it: values lower-cased, the field count computed once. */
export interface JobFacts {
  queue: string;
  environ: Record<string, string>;
  /** Request key → every value any of the job's requests gives it (lower case). */
  params: Map<string, Set<string>>;
  /** How many fields the job asks for (param × date × time × step × level × member, summed). */
  fields: number;
}

export function factsOf(job: JobShape): JobFacts {
  const params = new Map<string, Set<string>>();
  let fields = 0;
  let inherited: Record<string, string[]> = {};
  for (const req of job.requests) {
    inherited = { ...inherited, ...req.params };
    for (const [key, values] of Object.entries(req.params)) {
      const set = params.get(key) ?? new Set<string>();
      for (const v of values) set.add(v.toLowerCase());
      params.set(key, set);
    }
    fields += fieldCount(inherited);
  }
  return { queue: job.queue, environ: job.environ, params, fields };
}

/** Fields a request asks for; a value the expansion cannot read counts as one token each. */
export function fieldCount(params: Record<string, string[]>): number {
  const count = (key: string, expand: (t: string[]) => unknown[], dflt: string[]): number => {
    const tokens = params[key] ?? dflt;
    try {
      return expand(tokens).length;
    } catch {
      // Not ours to reject (MARS does): an unreadable value counts as what it literally lists.
      return tokens.length;
    }
  };
  return (
    (params["param"]?.length ?? 1) *
    count("date", (t) => expandDates(t), ["-1"]) *
    count("time", expandTimes, ["0"]) *
    count("step", (t) => expandIntegers("step", t), ["0"]) *
    count("levelist", (t) => expandIntegers("levelist", t), ["0"]) *
    count("number", (t) => expandIntegers("number", t), ["0"])
  );
}

/** The values a job has for a selector key (empty when it has none). */
export function valuesOf(facts: JobFacts, key: string): string[] {
  if (key === "user") {
    const u = facts.environ["user_id"];
    return u === undefined ? [] : [u.toLowerCase()];
  }
  if (key === "queue") return [facts.queue.toLowerCase()];
  if (key === "fields") return [String(facts.fields)];
  if (key.startsWith("environ.")) {
    const v = facts.environ[key.slice("environ.".length)];
    return v === undefined ? [] : [v.toLowerCase()];
  }
  return [...(facts.params.get(key) ?? [])];
}

function holds(facts: JobFacts, key: string, cond: Condition): boolean {
  if (typeof cond === "object" && !Array.isArray(cond)) {
    const n = key === "fields" ? facts.fields : Number(valuesOf(facts, key)[0]);
    return (
      !Number.isNaN(n) &&
      (cond.min === undefined || n >= cond.min) &&
      (cond.max === undefined || n <= cond.max)
    );
  }
  const wanted = Array.isArray(cond) ? cond : [cond];
  return valuesOf(facts, key).some((v) => wanted.includes(v));
}

/** Whether every key of the selector holds (an absent selector matches every job). */
export function matches(facts: JobFacts, sel: Selector | undefined): boolean {
  if (!sel) return true;
  return Object.entries(sel).every(([key, cond]) => holds(facts, key, cond));
}

/** The first deny rule that matches, if any. */
/**
 * What the result cache may do for a job: `off` (neither serve nor keep its result, nor coalesce
 * it), a time to live in ms from the first matching cache rule, or undefined (the worker's default).
 */
export function cachePolicy(rules: QosRules, facts: JobFacts): "off" | number | undefined {
  const rule = rules.rules.find((r): r is CacheRule => isCache(r) && matches(facts, r.match));
  if (!rule) return undefined;
  return rule.cache === "off" ? "off" : parseDuration(rule.cache);
}

/** The split the first matching `split` rule gives a job submitted without one (#27). */
export function splitBy(rules: QosRules, facts: JobFacts): SplitRule | undefined {
  return rules.rules.find((r): r is SplitRule => isSplit(r) && matches(facts, r.match));
}

export function deniedBy(rules: QosRules, facts: JobFacts): DenyRule | undefined {
  return rules.rules.find((r): r is DenyRule => isDeny(r) && matches(facts, r.match));
}

const tops = new WeakMap<QosRules, number>();

/** The highest priority any rule gives: aging lifts a waiting job up to it, never past it. */
export function topPriority(rules: QosRules): number {
  let top = tops.get(rules);
  if (top === undefined) {
    top = rules.rules.reduce((t, r) => (isPriority(r) ? Math.max(t, r.priority) : t), 0);
    tops.set(rules, top);
  }
  return top;
}

/** Sum of the matching priority rules (0 when none match). */
export function basePriority(rules: QosRules, facts: JobFacts): number {
  return rules.rules.reduce(
    (sum, r) => (isPriority(r) && matches(facts, r.match) ? sum + r.priority : sum),
    0,
  );
}

/**
 * Priority after waiting `waitedMs`: the base plus `agingPerMinute` a minute, capped at the top
 * rule priority. Capped so that aging only rescues low-priority work from starvation: among jobs
 * that reached the top, free slots go round-robin, and an old backlog never outranks a newcomer.
 */
export function effectivePriority(rules: QosRules, base: number, waitedMs: number): number {
  const top = topPriority(rules);
  if (base >= top) return base;
  return Math.min(top, base + Math.floor((rules.agingPerMinute * Math.max(0, waitedMs)) / 60_000));
}

/** One limit a job counts against, and the counter (KV key part) it shares with other jobs. */
export interface LimitSlot {
  rule: LimitRule;
  /** The value counted by (`per`), or undefined for a limit in total. */
  value: string | undefined;
  /** Key part `<rule>.<value token>` naming the counter. */
  key: string;
  /**
   * Set when the job's lane consumer holds this limit (see `heldByLane`): the lane whose
   * in-flight messages are its count. Such a limit takes no slot, for jobs pulled from that lane.
   */
  lane?: string;
}

/**
 * Whether the lanes' consumers hold a limit: one counted per value of the fairness key, of at
 * least 1, for every job of the queues it applies to (a selector on `queue` alone, or none). Each
 * lane is one value of that key in one queue, so the lane consumer's `max_ack_pending` is the
 * limit, enforced by the server: no slot to take or give back, and a crashed worker's job keeps its
 * place until it is redelivered, as a slot would.
 */
export function heldByLane(rules: QosRules, r: LimitRule): boolean {
  return (
    r.per !== undefined &&
    r.per === rules.fairShare &&
    r.limit >= 1 &&
    Object.keys(r.match ?? {}).every((key) => key === "queue")
  );
}

/**
 * Whether a limit holds alike every job of a lane: it is counted per lane (per the fairness key) or
 * in one count for all, and its selector tests nothing but the lane's own key and the queue. When
 * it is full, none of the lane's jobs may start: the lane is passed over whole, so its jobs start in
 * the order they were queued. (A limit that holds only some of a lane's jobs holds those aside, so
 * that the lane's others can go.)
 */
export function coversLane(rules: QosRules, r: LimitRule): boolean {
  return (
    (r.per === undefined || r.per === rules.fairShare) &&
    Object.keys(r.match ?? {}).every((key) => key === "queue" || key === rules.fairShare)
  );
}

/**
 * The `max_ack_pending` of the queue's lane consumers under these rules: the lowest limit the lanes
 * hold there, or none.
 */
export function laneCap(rules: QosRules, queue: string): number | undefined {
  const held = laneLimits(rules, queue);
  return held.length === 0 ? undefined : Math.min(...held.map((r) => r.limit));
}

/**
 * The `max_ack_pending` of one lane's consumer: the cap every lane has (laneCap), or lower, a limit
 * in total on this lane's own value alone (`match: { user: alice }`, on the queue or none). Such a
 * limit is still counted by slots too (values that differ only in case are one value to a rule but
 * two lanes); the lane's cap is what keeps that value's jobs in the order they were queued: no
 * worker can pull one of them while the limit's places are taken, so none is held aside and later
 * overtaken by a pull of another worker.
 */
export function laneCapOf(rules: QosRules, queue: string, lane: string): number | undefined {
  const caps = rules.rules
    .filter((r): r is LimitRule => isLimit(r) && pinsLane(rules, r, queue, lane))
    .map((r) => r.limit);
  const all = laneCap(rules, queue);
  if (all !== undefined) caps.push(all);
  return caps.length === 0 ? undefined : Math.min(...caps);
}

/** Whether `r` is a limit in total on one value of the fairness key, and that value is `lane`'s. */
function pinsLane(rules: QosRules, r: LimitRule, queue: string, lane: string): boolean {
  if (r.per !== undefined || r.limit < 1 || !r.match) return false;
  const value = r.match[rules.fairShare];
  if (typeof value !== "string" || !isToken(value) || lane.toLowerCase() !== value) return false;
  const onQueue: JobFacts = { queue, environ: {}, params: new Map(), fields: 0 };
  return Object.keys(r.match).every(
    (key) => key === rules.fairShare || (key === "queue" && matches(onQueue, { queue: r.match!["queue"]! })),
  );
}

/** The limits the lanes of `queue` hold under these rules. */
export function laneLimits(rules: QosRules, queue: string): LimitRule[] {
  const facts: JobFacts = { queue, environ: {}, params: new Map(), fields: 0 };
  return rules.rules.filter(
    (r): r is LimitRule => isLimit(r) && heldByLane(rules, r) && matches(facts, r.match),
  );
}

export function limitsFor(rules: QosRules, facts: JobFacts): LimitSlot[] {
  const out: LimitSlot[] = [];
  for (const r of rules.rules) {
    if (!isLimit(r) || !matches(facts, r.match)) continue;
    const value = r.per === undefined ? undefined : valuesOf(facts, r.per).sort().join("/") || "(none)";
    const key = `${r.name}.${value === undefined ? "all" : tokenFor(value)}`;
    out.push(
      heldByLane(rules, r) ? { rule: r, value, key, lane: laneOf(rules, facts) } : { rule: r, value, key },
    );
  }
  return out;
}

/** The limits a job pulled from `lane` takes slots of: all but those its lane consumer holds. */
export function slotLimits(limits: LimitSlot[], lane: string): LimitSlot[] {
  return lane === "" ? limits : limits.filter((s) => s.lane === undefined);
}

/** A value as one subject token / KV key part: itself when it can be, else a stable hash. */
export function tokenFor(value: string): string {
  if (isToken(value) && value.length <= 64 && !value.startsWith("h-")) return value;
  return `h-${createHash("sha256").update(value).digest("hex").slice(0, 24)}`;
}

/** The job's fairness lane: its value of the fairShare key, as a subject token (`_` for none). */
export function laneOf(rules: QosRules, facts: JobFacts): string {
  const value = valuesOf(facts, rules.fairShare).sort().join("/");
  return value === "" ? "_" : tokenFor(value);
}
