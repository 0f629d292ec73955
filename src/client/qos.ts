/**
 * The QoS rules as the library applies and shows them (the CLI's `qos apply` and `qos show` print
 * what these return): putting rules in force, and what they hold now.
 */
import type { BrokerConnection, WorkerInfo } from "../broker/index.js";
import { silentLogger } from "../core/index.js";
import {
  activeLanes,
  heldAsideByLane,
  isLimit,
  laneCounts,
  type LaneRow,
  laneLimits,
  parseRules,
  type QosRules,
  readRules,
  SlotTable,
  UsageTable,
  usagePenalty,
  usageWindowMs,
  usedWithin,
  writeRules,
} from "../qos/index.js";

/** The QoS rules in force and what they hold now. */
export interface QosState {
  rules: QosRules | null;
  appliedAt: number | null;
  appliedBy: string | null;
  /**
   * Each limit held now: `<rule>.<value>`, how many run under it, the rule's limit (null when the
   * rule is no longer in force), and which jobs (none for a lane-held one).
   */
  limits: Array<{ key: string; running: number; limit: number | null; jobs: string[] }>;
  /** The queue's lanes holding jobs. */
  lanes: LaneRow[];
  /** Jobs workers hold aside for a limit, and why. */
  waiting: Array<{ worker: string; job: string; reason: string; lane?: string }>;
  /** Under `usage` rules: each lane's recent MARS time (seconds in the window) and the priority it costs. */
  usage: Array<{ lane: string; seconds: number; penalty: number }>;
}

/**
 * Validate `text` whole (QOS_RULES_INVALID with every line at fault), then put it in force, signed
 * with the admin's key where the fleet has one: every worker follows within a round trip.
 */
export async function applyQosRules(
  conn: BrokerConnection,
  text: string,
  source = "rules",
): Promise<{ revision: number; rules: QosRules }> {
  const rules = parseRules(text, source);
  const appliedBy = conn.identity;
  const revision = await writeRules(await conn.qosKv(), conn.authority, {
    text,
    rules,
    appliedAt: Date.now(),
    ...(appliedBy && { appliedBy }),
  });
  return { revision, rules };
}

/** The rules in force, each limit's running count per value, `queue`'s lanes, held-aside jobs. */
export async function qosStateOf(
  conn: BrokerConnection,
  queue: string,
  workers: WorkerInfo[],
): Promise<QosState> {
  const kv = await conn.qosKv();
  const stored = await readRules({ kv, jsm: conn.jsm, authority: conn.authority }, silentLogger());
  const slots = new SlotTable(conn.jsm, kv, () => Promise.resolve(false), silentLogger());
  const held = await slots.all();
  const lanes = activeLanes(await laneCounts(conn.jsm, queue), heldAsideByLane(workers, queue));
  // A slot's key is `<rule>.<value>`, and rule names hold no dot.
  const limitOf = (key: string): number | null => {
    const rule = stored?.rules.rules.find((r) => r.name === key.split(".")[0]);
    return rule && isLimit(rule) ? rule.limit : null;
  };
  const limits: QosState["limits"] = [...held]
    .filter(([, holders]) => holders.length > 0)
    .map(([key, holders]) => ({
      key,
      running: holders.length,
      limit: limitOf(key),
      jobs: holders.map((h) => h.job),
    }));
  // Limits the lanes' consumers hold: each lane's jobs in flight are its count (no job list).
  for (const rule of stored ? laneLimits(stored.rules, queue) : [])
    for (const l of lanes.filter((row) => row.running > 0 && row.lane !== "(none)"))
      limits.push({ key: `${rule.name}.${l.lane}`, running: l.running, limit: rule.limit, jobs: [] });
  const windowMs = stored ? usageWindowMs(stored.rules) : undefined;
  const table = new UsageTable(kv, silentLogger());
  const usage =
    windowMs === undefined
      ? []
      : await Promise.all(
          lanes
            .filter((l) => l.lane !== "(none)")
            .map(async ({ lane }) => {
              const seconds = usedWithin(await table.read(lane), Date.now(), windowMs);
              return { lane, seconds, penalty: usagePenalty(stored!.rules, seconds) };
            }),
        );
  return {
    usage,
    rules: stored?.rules ?? null,
    appliedAt: stored?.appliedAt ?? null,
    appliedBy: stored?.appliedBy ?? null,
    limits,
    lanes,
    waiting: workers.flatMap((w) => (w.waiting ?? []).map((x) => ({ worker: w.id, ...x }))),
  };
}
