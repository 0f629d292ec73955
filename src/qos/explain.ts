/**
 * Why a queued job waits, in words: the full limits it counts against, a worker holding it for a
 * limit, its lane and the lanes ahead of it. Computed on request from what the broker holds now
 * (the rules, the limit slots, the lane counts, the workers' entries), so it is never stale.
 */
import type { JobRecord, WorkerInfo } from "../broker/index.js";
import {
  basePriority,
  deniedBy,
  effectivePriority,
  factsOf,
  laneOf,
  limitsFor,
  type JobFacts,
  type LimitSlot,
} from "./evaluate.js";
import type { LaneCount } from "./lane-counts.js";
import { usageWindowMs, type QosRules } from "./rules.js";
import { describeUse, usagePenalty } from "./usage.js";

/** A full limit, as workers and `mars-fleet status` say it: "limit per-user for alice: 4/4 running". */
export function limitFull(slot: LimitSlot, running: number): string {
  const who = slot.value === undefined ? "in total" : `for ${slot.value}`;
  return `limit ${slot.rule.name} ${who}: ${running}/${slot.rule.limit} running`;
}

export interface WaitSources {
  rules: QosRules;
  /** How many jobs hold a slot of the limit counter `key` now. */
  holders: (key: string) => Promise<number>;
  workers: WorkerInfo[];
  lanes: Map<string, LaneCount>;
  /** The next queued job of a lane (its submission time and facts), when it can be read. */
  head: (lane: string) => Promise<{ submittedAt: number; facts: JobFacts } | undefined>;
  /** Seconds of MARS time a lane's value used in the window (rules with `usage`). */
  used?: (lane: string, windowMs: number) => Promise<number>;
}

export async function explainWait(record: JobRecord, src: WaitSources, now = Date.now()): Promise<string[]> {
  if (record.state !== "queued" && record.state !== "retrying") return [];
  const reasons: string[] = [];
  const facts = factsOf(record);
  const denied = deniedBy(src.rules, facts);
  if (denied) reasons.push(`denied by rule ${denied.name} (applied after it was queued): ${denied.deny}`);
  for (const w of src.workers)
    for (const x of w.waiting ?? [])
      if (x.job === record.id) reasons.push(`held by worker ${w.id}: ${x.reason}`);
  for (const slot of limitsFor(src.rules, facts)) {
    // A limit the lane's consumer holds counts the lane's jobs in flight; any other, its slot's holders.
    const running =
      slot.lane !== undefined ? (src.lanes.get(slot.lane)?.inFlight ?? 0) : await src.holders(slot.key);
    if (running >= slot.rule.limit) {
      reasons.push(limitFull(slot, running));
    }
  }
  const lane = laneOf(src.rules, facts);
  const own = src.lanes.get(lane)?.queued ?? 0;
  const others = [...src.lanes].filter(([name, c]) => name !== lane && c.queued > 0);
  const windowMs = usageWindowMs(src.rules);
  /** Priority points a lane's recent use costs (fair share by use). */
  const cost = async (name: string): Promise<number> =>
    windowMs === undefined || !src.used ? 0 : usagePenalty(src.rules, await src.used(name, windowMs));
  const base = basePriority(src.rules, facts);
  const penalty = await cost(lane);
  const priority = effectivePriority(src.rules, base, now - record.submittedAt) - penalty;
  let ahead = 0;
  for (const [name] of others) {
    const head = await src.head(name);
    if (!head) continue;
    const p =
      effectivePriority(src.rules, basePriority(src.rules, head.facts), now - head.submittedAt) -
      (await cost(name));
    if (p > priority) ahead++;
  }
  if (windowMs !== undefined && src.used) {
    const seconds = await src.used(lane, windowMs);
    reasons.push(
      `usage: ${lane} used ${describeUse(seconds)} of MARS time in the last ${src.rules.usage!.window}: priority -${penalty}`,
    );
  }
  reasons.push(
    `lane ${lane} (${src.rules.fairShare}): ${own} queued there, served in the order submitted; ` +
      `${others.length} other lane(s) with queued jobs share free slots round-robin`,
  );
  if (ahead > 0)
    reasons.push(`behind ${ahead} lane(s) whose next job has a higher priority than ${priority}`);
  else if (base !== 0 || priority !== base)
    reasons.push(`priority ${priority} (rules give ${base}; it grows while it waits)`);
  return reasons;
}
