/**
 * QoS state in the broker (the `mars-qos` bucket): the applied rules, which every process follows
 * without a server-side consumer, and the limit slots, distributed semaphores held by job id and
 * changed only by compare-and-set.
 */
import type { KV, KvEntry } from "@nats-io/kv";
import type { JetStreamManager } from "@nats-io/jetstream";
import { headers, type NatsConnection, type Subscription } from "@nats-io/transport-node";
import type { Logger } from "pino";
import { z } from "zod";
import {
  bucketKeys,
  decode,
  encode,
  hasValidSignature,
  isCasConflict,
  KeyFollower,
  kvStream,
  kvSubject,
  QOS_BUCKET,
  QOS_RULES_KEY,
  type RecordAuthority,
  replayStored,
  signatureSchema,
  unseenWritesOf,
} from "../broker/index.js";
import { BrokerError, ConfigError } from "../core/index.js";
import type { LimitSlot } from "./evaluate.js";
import { NO_RULES, rulesSchema, type QosRules } from "./rules.js";

/** The rules as stored: the text the operator applied (kept for `qos show`), and the parsed form. */
export const storedRulesSchema = z.object({
  text: z.string(),
  rules: rulesSchema,
  appliedAt: z.number(),
  appliedBy: z.string().optional(),
  /** The admin's signature (broker/signing.ts): rules without a valid one are not in force. */
  signature: signatureSchema.optional(),
});
export type StoredRules = z.infer<typeof storedRulesSchema>;

const qosSubject = (key: string): string => kvSubject(QOS_BUCKET, key);
const SLOTS_PREFIX = "slots.";
const MAX_CAS_TRIES = 20;
/** How long the watch gets to show an unacknowledged give-back before it is made again, acknowledged. */
const CONFIRM_RELEASE_MS = 500;
const CONFIRM_GIVE_UP_MS = 10_000;

function isLive(entry: KvEntry | null): entry is KvEntry {
  return entry !== null && entry.operation === "PUT" && entry.length > 0;
}

/** The KV kind name signatures over the rules carry (broker/signing.ts). */
const RULES_KIND = "qos-rules";

/** Where the rules live and who must have signed them. */
export interface RulesSource {
  kv: KV;
  jsm: JetStreamManager;
  authority: RecordAuthority;
}

/**
 * The rules in force: the latest applied, if the admin signed it. An unsigned or forged write (one
 * that reached the bucket by another path than `qos apply`) has no effect: the last signed rules
 * before it stay in force (from the key's history), or none. Said in a warning.
 */
export async function readRules(src: RulesSource, log: Logger): Promise<StoredRules | undefined> {
  const entry = await src.kv.get(QOS_RULES_KEY);
  const latest = isLive(entry) ? parseSigned(src.authority, entry.value) : undefined;
  if (latest || entry === null || src.authority.trustKey === undefined) return latest;
  let kept: StoredRules | undefined;
  for await (const m of replayStored(src.jsm, kvStream(QOS_BUCKET), qosSubject(QOS_RULES_KEY))) {
    if (m.seq >= entry.revision) break;
    kept = parseSigned(src.authority, m.data) ?? kept;
  }
  log.warn(
    { revision: entry.revision, keptAppliedAt: kept?.appliedAt },
    "the latest QoS rules are not signed by the trust key: not in force",
  );
  return kept;
}

/** Stored rules that parse and carry a valid signature; undefined otherwise. */
function parseSigned(authority: RecordAuthority, raw: Uint8Array): StoredRules | undefined {
  try {
    const stored = decode(storedRulesSchema, raw, "QoS rules");
    return hasValidSignature(authority, RULES_KIND, QOS_RULES_KEY, stored) ? stored : undefined;
  } catch (err) {
    // Unreadable rules on an open fleet are an error to show; under a trust key, a forgery to skip.
    if (authority.trustKey === undefined) throw err;
    return undefined;
  }
}

/** Apply rules: signed with the admin's signing key when this fleet has a trust key. */
export async function writeRules(kv: KV, authority: RecordAuthority, stored: StoredRules): Promise<number> {
  const unsigned = { ...stored, signature: undefined };
  if (authority.sign)
    return kv.put(
      QOS_RULES_KEY,
      encode({ ...unsigned, signature: authority.sign(RULES_KIND, QOS_RULES_KEY, unsigned) }),
    );
  if (authority.trustKey !== undefined)
    throw new ConfigError(
      "applying QoS rules needs the admin's signing key (MARS_SIGNING_KEY, signing.nk from `broker auth`)",
    );
  return kv.put(QOS_RULES_KEY, encode(unsigned));
}

/**
 * The rules in force, kept current: read once, then re-read whenever the key's subject carries a
 * write (a core subscription, so no consumer lives on the server) and after every reconnect. A
 * change reaches every follower within one round trip of being applied.
 */
export class RulesFollower {
  private currentValue: StoredRules | undefined;
  private sub: Subscription | undefined;
  private readonly listeners = new Set<(rules: QosRules) => void>();
  private reading: Promise<void> | undefined;
  private again = false;

  private constructor(
    private readonly src: RulesSource,
    private readonly log: Logger,
  ) {}

  static async start(nc: NatsConnection, src: RulesSource, log: Logger): Promise<RulesFollower> {
    const f = new RulesFollower(src, log);
    f.sub = nc.subscribe(qosSubject(QOS_RULES_KEY), { callback: () => f.refresh() });
    void (async () => {
      for await (const s of nc.status()) if (s.type === "reconnect") f.refresh();
    })();
    await f.read();
    return f;
  }

  get rules(): QosRules {
    return this.currentValue?.rules ?? NO_RULES;
  }

  onChange(listener: (rules: QosRules) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Re-read now (coalescing: a write during a read triggers one more read). */
  refresh(): void {
    if (this.reading) {
      this.again = true;
      return;
    }
    this.reading = this.read()
      .catch((err: unknown) =>
        this.log.warn({ err }, "could not read the QoS rules; keeping the previous ones"),
      )
      .finally(() => {
        this.reading = undefined;
        if (this.again) {
          this.again = false;
          this.refresh();
        }
      });
  }

  private async read(): Promise<void> {
    const next = await readRules(this.src, this.log);
    if (next?.appliedAt === this.currentValue?.appliedAt && next?.text === this.currentValue?.text) return;
    this.currentValue = next;
    this.log.info({ rules: this.rules.rules.length, appliedAt: next?.appliedAt }, "QoS rules in force");
    for (const l of this.listeners) l(this.rules);
  }

  close(): void {
    this.sub?.unsubscribe();
  }
}

/** One holder of a limit slot: the job, the attempt that took it, and its worker. */
export const holderSchema = z.object({ attempt: z.number().int(), worker: z.string(), at: z.number() });
const holdersSchema = z.object({ holders: z.record(z.string(), holderSchema) });
type Holders = z.infer<typeof holdersSchema>;
export type Holder = z.infer<typeof holderSchema> & { job: string };

/** The holder set without `job`. */
function without(h: Holders, job: string): Holders {
  const next = { holders: { ...h.holders } };
  delete next.holders[job];
  return next;
}

export type AcquireResult = { ok: true } | { ok: false; slot: LimitSlot; running: number };

/**
 * Limit slots as holder sets: key `slots.<rule>.<value>` lists the jobs holding one. A slot belongs
 * to a job, not to a worker: a crashed worker's job keeps its slot until the job is redelivered (its
 * next attempt takes the same entry over) or settled, and a full set is checked against the jobs'
 * records, dropping holders whose job is over, so a slot is never leaked.
 */
export class SlotTable {
  /**
   * Each slot key as this table last read, wrote or watched it: a write tries it first
   * (compare-and-set proves it current), saving the read. A decision not to write (a full slot) is
   * never taken on it alone.
   */
  private readonly cache = new Map<string, { revision: number; raw?: Uint8Array; holders?: Holders }>();
  /** Every slot key's changes as they happen, once followed (see `follow`). */
  private readonly follower: KeyFollower;
  private readonly listeners = new Set<() => void>();

  /** The writes a compare-and-set on the bucket may have let through unseen (see `unseenHolders`). */
  private readonly unseen: ReturnType<typeof unseenWritesOf>;

  constructor(
    private readonly jsm: JetStreamManager,
    private readonly kv: KV,
    /** Whether a holder's job is over (its record final or gone): its slot may be taken back. */
    private readonly isOver: (jobId: string) => Promise<boolean>,
    private readonly log: Logger,
  ) {
    this.unseen = unseenWritesOf(jsm, kvStream(QOS_BUCKET));
    this.follower = new KeyFollower(kv, `${SLOTS_PREFIX}>`, "the QoS slots", log);
  }

  /**
   * Follow every slot key with a KV watch (one ordered consumer for this table, started when the
   * rules first have limits): the cache then holds each key's current value and revision, so taking
   * and giving back a slot is one compare-and-set each, and the counts tell which slots are full.
   */
  follow(): void {
    this.follower.start((e) => {
      const key = e.key.slice(SLOTS_PREFIX.length);
      // Kept as it came: decoded only if this worker needs the key (most it never touches).
      if (!e.value) this.remember(key, e.revision, { holders: {} });
      else this.remember(key, e.revision, undefined, e.value);
      for (const l of this.listeners) l();
    });
  }

  /** Note a slot key's value at `revision` (decoded, or raw), unless a later one is known already. */
  private remember(key: string, revision: number, holders: Holders | undefined, raw?: Uint8Array): void {
    const known = this.cache.get(key);
    if (known && known.revision > revision) return;
    this.cache.set(key, { revision, ...(holders && { holders }), ...(raw && { raw }) });
  }

  /** The key's value as last known, decoded on first use; undefined when unknown or unreadable. */
  private known(key: string): { holders: Holders; revision: number } | undefined {
    const k = this.cache.get(key);
    if (!k) return undefined;
    if (!k.holders) {
      try {
        k.holders = decode(holdersSchema, k.raw ?? new Uint8Array(), `QoS slot ${key}`);
      } catch {
        // Unreadable: forgotten here; a read of the key, when needed, says what is wrong.
        this.cache.delete(key);
        return undefined;
      }
    }
    return { holders: k.holders, revision: k.revision };
  }

  onChange(listener: () => void): void {
    this.listeners.add(listener);
  }

  /** Whether the slot's last known holders fill it (a hint; `acquire` decides). */
  seemsFull(slot: LimitSlot): boolean {
    const k = this.known(slot.key);
    return k !== undefined && Object.keys(k.holders.holders).length >= slot.rule.limit;
  }

  /** Read a slot's holders (and remember its count). */
  async holders(key: string): Promise<Holder[]> {
    const { holders } = await this.read(key);
    return Object.entries(holders.holders).map(([job, h]) => ({ job, ...h }));
  }

  private async read(key: string): Promise<{ holders: Holders; revision: number }> {
    const entry = await this.kv.get(SLOTS_PREFIX + key);
    const holders = isLive(entry) ? decode(holdersSchema, entry.value, `QoS slot ${key}`) : { holders: {} };
    const revision = entry?.revision ?? 0;
    if (entry) this.remember(key, revision, holders);
    return { holders, revision };
  }

  /**
   * Change one slot key by compare-and-set; `change` returns undefined to leave it as it is.
   * `restored`: holders that other workers' writes had, which this write replaced unseen (a nats-
   * server 2.9 cluster can let two writes on one revision through: `unseenWritesOf`), and that are
   * now back in the slot beside this change.
   */
  private async change(
    key: string,
    change: (h: Holders) => Promise<Holders | undefined> | Holders | undefined,
  ): Promise<{ holders: Holders; restored: string[] }> {
    for (let tries = 0; tries < MAX_CAS_TRIES; tries++) {
      const cached = tries === 0 ? this.known(key) : undefined;
      const { holders, revision } = cached ?? (await this.read(key));
      const next = await change(holders);
      if (!next) {
        if (cached) continue; // decided on the cached copy: confirm with a read
        return { holders, restored: [] };
      }
      try {
        const raw = JSON.stringify(next);
        const written =
          revision === 0
            ? await this.kv.create(SLOTS_PREFIX + key, raw)
            : await this.kv.update(SLOTS_PREFIX + key, raw, revision);
        this.remember(key, written, next);
        // A first write creates the key, which even a cluster checks as it stores it.
        const lost =
          revision === 0
            ? []
            : await this.unseenHolders(key, revision, written).catch((err: unknown) => {
                // The write stands as taken; only the check for writes it replaced is skipped.
                this.log.warn({ err, slot: key }, "QoS slot: could not read the writes before this one");
                return [];
              });
        const restored = new Map(lost.filter(([job]) => !(job in next.holders) && !(job in holders.holders)));
        if (restored.size === 0) return { holders: next, restored: [] };
        // Holders another worker added unseen come back (one that worker gave back meanwhile is
        // counted until a full slot drops it as over): a slot may be held too long, never overbooked.
        const repaired = { holders: { ...next.holders, ...Object.fromEntries(restored) } };
        const jobs = [...restored.keys()];
        this.log.warn(
          { slot: key, restored: jobs },
          "QoS slot: holders another worker's write added unseen are put back",
        );
        try {
          const again = await this.kv.update(SLOTS_PREFIX + key, JSON.stringify(repaired), written);
          this.remember(key, again, repaired);
          return { holders: repaired, restored: jobs };
        } catch (err) {
          if (!isCasConflict(err)) throw err;
          // Changed since, by a worker that read this write: the change is made again on what is there.
          this.cache.delete(key);
          continue;
        }
      } catch (err) {
        if (!isCasConflict(err)) throw err;
        // Another worker changed the slot since we read it: read again.
        this.cache.delete(key);
      }
    }
    throw new BrokerError(`QoS slot ${key}: too many concurrent changes`, { key });
  }

  /** Holders that other workers' writes to a slot key, stored between two revisions, named. */
  private async unseenHolders(
    key: string,
    after: number,
    before: number,
  ): Promise<Array<[string, Holders["holders"][string]]>> {
    const stored = await this.unseen(qosSubject(SLOTS_PREFIX + key), after, before);
    return stored.flatMap((m) => {
      try {
        return Object.entries(decode(holdersSchema, m.data, `QoS slot ${key}`).holders);
      } catch {
        return []; // a delete marker or an unreadable write: no holders in it
      }
    });
  }

  /**
   * Take one slot of every limit for `holder`'s job, or none: when one is full (after dropping
   * holders whose jobs are over), the slots taken are given back and the full one is returned.
   */
  async acquire(slots: LimitSlot[], holder: Holder): Promise<AcquireResult> {
    const ordered = [...slots].sort((a, b) => a.key.localeCompare(b.key));
    const taken: LimitSlot[] = [];
    for (const slot of ordered) {
      let full = -1;
      const { holders: now, restored } = await this.change(slot.key, async (h) => {
        full = -1;
        const mine = h.holders[holder.job];
        if (mine && mine.attempt === holder.attempt && mine.worker === holder.worker) return undefined;
        let others = Object.keys(h.holders).filter((j) => j !== holder.job);
        let pruned = h;
        if (others.length >= slot.rule.limit && others.length > 0) {
          const over = await Promise.all(others.map((j) => this.isOver(j)));
          const dropped = others.filter((_, i) => over[i]);
          if (dropped.length > 0) {
            this.log.info({ slot: slot.key, dropped }, "QoS slot: dropped holders whose jobs are over");
            pruned = { holders: { ...h.holders } };
            for (const j of dropped) delete pruned.holders[j];
            others = others.filter((_, i) => !over[i]);
          }
        }
        if (others.length >= slot.rule.limit) {
          full = others.length;
          return pruned === h ? undefined : pruned;
        }
        const { job, ...entry } = holder;
        return { holders: { ...pruned.holders, [job]: entry } };
      });
      if (full < 0 && restored.length > 0) {
        // Holders another worker added unseen are back: if they fill the slot, this job waits.
        const others = Object.keys(now.holders).filter((j) => j !== holder.job).length;
        if (others >= slot.rule.limit) full = others;
      }
      if (full >= 0) {
        await this.release(taken, holder);
        // Our own entry, from an earlier attempt of this job, must not keep a slot while we wait.
        await this.release([slot], holder, { anyAttempt: true });
        return { ok: false, slot, running: full };
      }
      taken.push(slot);
    }
    return { ok: true };
  }

  /**
   * Give back `holder`'s slots: only entries that still name its attempt and worker (or any attempt
   * of the job, with `anyAttempt`), so a later attempt that took the job over keeps its slot.
   */
  async release(slots: LimitSlot[], holder: Holder, opts: { anyAttempt?: boolean } = {}): Promise<void> {
    for (const slot of slots) {
      await this.change(slot.key, (h) => {
        const mine = h.holders[holder.job];
        if (!mine) return undefined;
        if (!opts.anyAttempt && (mine.attempt !== holder.attempt || mine.worker !== holder.worker))
          return undefined;
        return without(h, holder.job);
      });
    }
  }

  /**
   * Give back a settled job's slots without waiting for the broker's answer: a compare-and-set
   * publish against the revision this table knows (its watch keeps it current), with no reply. One
   * that loses a race is dropped by the server; the watch shows it (the holder is still there a
   * moment later) and the slot is then given back the acknowledged way. Meanwhile the slot is only
   * held too long, never overbooked. Slots whose current value this table does not know are given
   * back the acknowledged way at once.
   */
  async releaseSettled(nc: NatsConnection, slots: LimitSlot[], holder: Holder): Promise<void> {
    const rest: LimitSlot[] = [];
    for (const slot of slots) {
      const known = this.known(slot.key);
      const mine = known?.holders.holders[holder.job];
      if (!known || !mine || mine.attempt !== holder.attempt || mine.worker !== holder.worker) {
        rest.push(slot);
        continue;
      }
      const next = without(known.holders, holder.job);
      const h = headers();
      h.set("Nats-Expected-Last-Subject-Sequence", String(known.revision));
      nc.publish(qosSubject(SLOTS_PREFIX + slot.key), JSON.stringify(next), { headers: h });
      this.confirmLater(slot, holder, known.revision);
    }
    if (rest.length > 0) await this.release(rest, holder);
  }

  /**
   * After an unacknowledged give-back against `revision`: once the watch shows a later revision of
   * the key, the give-back either is in it or lost a race; a holder still there means it lost, and
   * it is given back again, acknowledged. A watch that lags (a loaded broker) is waited for, up to
   * CONFIRM_GIVE_UP_MS.
   */
  private confirmLater(slot: LimitSlot, holder: Holder, revision: number, waited = 0): void {
    setTimeout(() => {
      const known = this.known(slot.key);
      if (known && known.revision <= revision && waited + CONFIRM_RELEASE_MS < CONFIRM_GIVE_UP_MS) {
        this.confirmLater(slot, holder, revision, waited + CONFIRM_RELEASE_MS);
        return;
      }
      const still = known?.holders.holders[holder.job];
      if (known && (still?.attempt !== holder.attempt || still.worker !== holder.worker)) return;
      this.release([slot], holder).catch((err: unknown) =>
        // Left to the next full check of this slot, which drops holders whose jobs are over.
        this.log.warn({ err, slot: slot.key, jobId: holder.job }, "could not give a QoS slot back"),
      );
    }, CONFIRM_RELEASE_MS).unref();
  }

  /** Every slot key with its holders (for `qos show`). */
  async all(): Promise<Map<string, Holder[]>> {
    const out = new Map<string, Holder[]>();
    for (const k of await bucketKeys(this.jsm, QOS_BUCKET, SLOTS_PREFIX)) {
      const key = k.slice(SLOTS_PREFIX.length);
      out.set(key, await this.holders(key));
    }
    return out;
  }

  close(): void {
    this.follower.stop();
  }
}
