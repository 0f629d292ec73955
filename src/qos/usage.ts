/**
 * Fair share by recent use: how much MARS time each value of the fairness key (each user, with
 * lanes by user) used in the last `window`, and the priority that costs its next jobs (`usage` in
 * the rules, docs/QOS.md). A record per value, `usage.<token>` in the QoS bucket, holds the seconds
 * used per period (a 24th of the window): the use "in the last window" is the sum of the periods
 * that started inside it. The worker that ran a job adds its time (compare-and-set); every worker
 * reads the values whose lanes it chooses between; explanations read them too. Nothing central.
 */
import type { KV } from "@nats-io/kv";
import type { Logger } from "pino";
import { z } from "zod";
import { decode, encode, isCasConflict, KeyFollower } from "../broker/index.js";
import type { QosRules } from "./rules.js";

/** How many periods a window is cut into. */
export const USAGE_PERIODS = 24;
/** How long a value read stays good for choosing lanes (a job's use is added when it ends anyway). */
const FRESH_MS = 5000;
const CAS_TRIES = 10;

export const usageRecordSchema = z.object({
  /** [start of a period (ms since the epoch), seconds of MARS time used in it], oldest first. */
  periods: z.array(z.tuple([z.number().int(), z.number().min(0)])),
});
export type UsageRecord = z.infer<typeof usageRecordSchema>;

/** The KV key of a fairness value's record (its lane token). */
export function usageKey(token: string): string {
  return `usage.${token}`;
}

function periodOf(now: number, windowMs: number): number {
  const len = Math.max(1, Math.floor(windowMs / USAGE_PERIODS));
  return Math.floor(now / len) * len;
}

/** Seconds of MARS time in `rec` used in the last `windowMs` before `now`. */
export function usedWithin(rec: UsageRecord | undefined, now: number, windowMs: number): number {
  if (!rec) return 0;
  const from = now - windowMs;
  return rec.periods.reduce((sum, [start, seconds]) => (start > from ? sum + seconds : sum), 0);
}

/**
 * When the use `usedWithin` reads from `rec` next changes by itself, as its oldest counted period
 * leaves the window; undefined when nothing is counted.
 */
export function usageChangesAt(
  rec: UsageRecord | undefined,
  now: number,
  windowMs: number,
): number | undefined {
  const from = now - windowMs;
  let at: number | undefined;
  for (const [start] of rec?.periods ?? [])
    if (start > from && (at === undefined || start + windowMs < at)) at = start + windowMs;
  return at;
}

/** `rec` with `seconds` more used at `now`; periods that left the window are dropped. */
export function addUsage(
  rec: UsageRecord | undefined,
  now: number,
  seconds: number,
  windowMs: number,
): UsageRecord {
  const start = periodOf(now, windowMs);
  const kept = (rec?.periods ?? []).filter(([s]) => s > now - windowMs);
  const last = kept.at(-1);
  if (last && last[0] === start) return { periods: [...kept.slice(0, -1), [start, last[1] + seconds]] };
  return { periods: [...kept, [start, seconds]] };
}

/** The priority a value's recent use costs its jobs under these rules (0 without `usage`). */
export function usagePenalty(rules: QosRules, seconds: number): number {
  if (!rules.usage) return 0;
  return Math.round(((rules.usage.weight * seconds) / 3600) * 10) / 10;
}

/** How an explanation says it: `used 2 h 5 min of MARS time in the last 24 h`. */
export function describeUse(seconds: number): string {
  if (seconds < 60) return `${Math.round(seconds)} s`;
  const min = Math.round(seconds / 60);
  return min < 60 ? `${min} min` : `${Math.floor(min / 60)} h ${min % 60} min`;
}

/** A value's record as known: decoded, or (followed) as it came, decoded when first needed. */
interface Known {
  rec?: UsageRecord | undefined;
  raw?: Uint8Array;
  at: number;
}

/**
 * The records a worker reads: every value's, followed as they change (`follow`), or else each
 * value's as last read, read again in the background when older than a few seconds; and its own
 * additions. Choosing a lane never waits for the broker.
 */
export class UsageTable {
  private readonly cache = new Map<string, Known>();
  private readonly reading = new Set<string>();
  private readonly listeners: Array<(token: string) => void> = [];
  /** Every record's changes as they happen, once followed (see `follow`). */
  private readonly follower: KeyFollower;

  constructor(
    private readonly kv: KV,
    private readonly log: Logger,
  ) {
    this.follower = new KeyFollower(kv, usageKey("*"), "usage; reading values as they age", log);
  }

  /**
   * Keep every record at hand as it changes (a watch of the bucket's `usage.*` keys: one message
   * per job that ends, whatever the number of users), instead of reading each value again when it
   * is a few seconds old (one read per queued user every few seconds). Listeners hear each change.
   */
  follow(): void {
    this.follower.start((e) => {
      const token = e.key.slice(usageKey("").length);
      // Kept as it came: decoded only when a lane of that value is placed (every user who ever
      // ran a job has a record; most have none queued).
      this.cache.set(token, e.value ? { raw: e.value, at: Date.now() } : { rec: undefined, at: Date.now() });
      for (const l of this.listeners) l(token);
    });
  }

  /** Whether the records are followed (`follow`): a value changes only when a listener hears it, or by time (`changesAt`). */
  get following(): boolean {
    return this.follower.following;
  }

  /** Hear each record that changed (followed, or added by this worker). */
  onChange(listener: (token: string) => void): void {
    this.listeners.push(listener);
  }

  stop(): void {
    this.follower.stop();
  }

  /** Seconds `token` used in the window, as far as known now (0 until first read). */
  used(token: string, windowMs: number, now = Date.now()): number {
    const known = this.cache.get(token);
    if (!this.follower.following && (!known || now - known.at > FRESH_MS)) this.refresh(token);
    return usedWithin(this.record(token, known), now, windowMs);
  }

  /** When `used` for `token` next changes by time alone (a period leaving the window). */
  changesAt(token: string, windowMs: number, now: number): number | undefined {
    return usageChangesAt(this.record(token, this.cache.get(token)), now, windowMs);
  }

  /** A known record, decoded on first use; an unreadable one counts as none. */
  private record(token: string, known: Known | undefined): UsageRecord | undefined {
    if (!known?.raw) return known?.rec;
    let rec: UsageRecord | undefined;
    try {
      rec = decode(usageRecordSchema, known.raw, "usage record");
    } catch (err) {
      // Counted as unused until a readable one comes: it costs that user's history, never a job.
      this.log.warn({ err, token }, "unreadable usage record");
    }
    this.cache.set(token, { rec, at: known.at });
    return rec;
  }

  /** Read the record now (for explanations). */
  async read(token: string): Promise<UsageRecord | undefined> {
    const entry = await this.kv.get(usageKey(token));
    const rec =
      entry && entry.operation === "PUT" && entry.length > 0
        ? decode(usageRecordSchema, entry.value, "usage record")
        : undefined;
    this.cache.set(token, { rec, at: Date.now() });
    return rec;
  }

  private refresh(token: string): void {
    if (this.reading.has(token)) return;
    this.reading.add(token);
    void this.read(token)
      .catch((err: unknown) => {
        // Chosen without it meanwhile (as unused); the next choice reads again.
        this.log.debug({ err, token }, "could not read a usage record");
      })
      .finally(() => this.reading.delete(token));
  }

  /** Add `seconds` of MARS time to `token`'s record (compare-and-set, tried again on a conflict). */
  async add(token: string, seconds: number, windowMs: number): Promise<void> {
    const key = usageKey(token);
    for (let i = 0; i < CAS_TRIES; i++) {
      const entry = await this.kv.get(key);
      const live = entry && entry.operation === "PUT" && entry.length > 0;
      let rec: UsageRecord | undefined;
      try {
        rec = live ? decode(usageRecordSchema, entry.value, "usage record") : undefined;
      } catch (err) {
        // An unreadable record is started afresh: it costs some history, never a job.
        this.log.warn({ err, key }, "unreadable usage record: started again");
      }
      const next = addUsage(rec, Date.now(), seconds, windowMs);
      try {
        if (entry) await this.kv.update(key, encode(next), entry.revision);
        else await this.kv.create(key, encode(next));
        this.cache.set(token, { rec: next, at: Date.now() });
        for (const l of this.listeners) l(token);
        return;
      } catch (err) {
        if (!isCasConflict(err)) throw err;
      }
    }
    this.log.warn({ key, seconds }, "usage not recorded: too many concurrent updates");
  }
}
