/**
 * Job records in the jobs bucket, read and changed only by compare-and-set. A job has two keys (see
 * RECORD_KEYS): the submission, written by the submitter, and the status, written by workers. The
 * record is the status when there is one, else the submission; a cancel request in the submission
 * counts either way.
 */
import type { KV, KvEntry } from "@nats-io/kv";
import type { Logger } from "pino";
import type { JetStreamManager } from "@nats-io/jetstream";
import type { Msg, NatsConnection, Subscription } from "@nats-io/transport-node";
import { BrokerError, JobCancelledError, JobNotFoundError, MessageInvalidError } from "../core/index.js";
import { decode, encode } from "./codec.js";
import { isCasConflict } from "./nats-errors.js";
import { streamGoneCheck, withRetry } from "./transient.js";
import { RecordIndex } from "./record-index.js";
import { bucketKeys, replayStored, unseenWritesOf } from "./stream-reads.js";
import { TERMINAL_STATES, jobRecordSchema, type JobRecord, type JobState } from "./schemas.js";
import { JOBS_BUCKET, RECORD_KEYS, kvStream, kvSubject } from "./subjects.js";

export interface VersionedRecord {
  record: JobRecord;
  /** Revision of the key it was read from; for a job's record, its status key's (0: none yet). */
  revision: number;
  /**
   * For a record a write returned (mutate): the last revision that write is known to have seen.
   * Writes after it and before this one may have gone unseen (`writesBetween`): it is the revision
   * the write was compared against, or, for the write that created the key (which even a cluster
   * checks as it stores it), the write itself.
   */
  seenUpTo?: number;
}

const MAX_CAS_TRIES = 50;
/** What a submission may say: a submitter cannot claim that a job ran. */
const SUBMISSION_STATES: ReadonlySet<JobState> = new Set(["queued", "failed"]);

const submissionKey = (id: string): string => `${id}.${RECORD_KEYS.submitted}`;
const statusKey = (id: string): string => `${id}.${RECORD_KEYS.status}`;

function parseEntry(entry: KvEntry | null, key: string): VersionedRecord | undefined {
  if (!entry || entry.operation !== "PUT" || entry.length === 0) return undefined;
  return { record: decode(jobRecordSchema, entry.value, `job record ${key}`), revision: entry.revision };
}

function checkSubmission(sub: VersionedRecord, id: string): VersionedRecord {
  if (sub.record.id !== id || !SUBMISSION_STATES.has(sub.record.state) || sub.record.result) {
    const says = `job ${id}: its submission says ${sub.record.state}, which only a worker may`;
    throw new MessageInvalidError(says, { jobId: id });
  }
  return sub;
}

/** The record as readers see it, from the two keys. */
export function mergeRecord(
  submission: JobRecord | undefined,
  status: JobRecord | undefined,
): JobRecord | undefined {
  const cancelRequested = (submission?.cancelRequested ?? false) || (status?.cancelRequested ?? false);
  const base0 = status ?? submission;
  if (!base0) return undefined;
  // Hiding the log is the submitter's to say: it is in the submission, whatever the status holds.
  const base = submission?.logDropped ? { ...base0, logDropped: true } : base0;
  // A job waiting for a worker (queued, or between attempts) whose cancel was requested never runs
  // again: it is cancelled now, whoever looks, and the worker that gets its message drops it.
  if ((base.state === "queued" || base.state === "retrying") && cancelRequested) {
    const at = submission?.updatedAt ?? base.updatedAt;
    const error = new JobCancelledError("the job was cancelled while it waited for a worker", {
      jobId: base.id,
    }).toRecord();
    return { ...base, state: "cancelled", cancelRequested, error, finishedAt: at, updatedAt: at };
  }
  return { ...base, cancelRequested };
}

/** Whether a write seen on a record's subject may have made it final (a cancel request may too). */
function mayBeFinal(msg: Msg): boolean {
  if (msg.headers?.get("KV-Operation")) return true; // a delete or purge: look
  try {
    const r = JSON.parse(new TextDecoder().decode(msg.data)) as {
      state?: JobState;
      cancelRequested?: boolean;
    };
    return (r.state !== undefined && TERMINAL_STATES.has(r.state)) || r.cancelRequested === true;
  } catch {
    return true; // unreadable here: the bucket will say
  }
}

/** Call `f` after every reconnect, until the returned function is called (JobStore.afterReconnect). */
type ReconnectHook = (f: () => void) => () => void;

/** A record read after a nudge that was not final yet is read once more after this. */
const REREAD_SOON_MS = 250;
/** A record followed to its end is read at least this often, whatever is heard (see rereadEveryMs). */
const REREAD_EVERY_MS = 10_000;
/**
 * The timed reads of all the records one store follows to their end, at most this many a second on
 * average: a client waiting on 20,000 jobs would otherwise read 2,000 records a second (two message
 * gets each; 33 gets per job in bench scenario 15's 20,000-user run, against 5 with this bound).
 */
const REREADS_PER_S = 100;

/**
 * How long a record followed to its end goes without a timed read, when `following` records are:
 * REREAD_EVERY_MS, or longer once that many reads would pass REREADS_PER_S. These reads only cover
 * a change whose nudge was lost (a reconnect reads every record at once in any case).
 */
export function rereadEveryMs(following: number): number {
  return Math.max(REREAD_EVERY_MS, (following / REREADS_PER_S) * 1000);
}

/**
 * A core subscription to a job's two record keys, remembering what to read next: both keys (at
 * first unless told otherwise, after a reconnect, when the submission changed), or the status only
 * (a worker's write looked final: a final status is the record). Hints only; the bucket decides.
 */
export class RecordWatch {
  private next: "both" | "status" | undefined;
  private wake: () => void = () => undefined;
  private readonly sub: Subscription;
  private readonly stopWatching: () => void;

  constructor(nc: NatsConnection, id: string, afterReconnect: ReconnectHook, readFirst: boolean) {
    this.next = readFirst ? "both" : undefined;
    this.sub = nc.subscribe(kvSubject(JOBS_BUCKET, `${id}.*`), {
      callback: (err, msg) => {
        if (err) return this.nudge("both");
        if (mayBeFinal(msg)) this.nudge(msg.subject.endsWith(`.${RECORD_KEYS.status}`) ? "status" : "both");
      },
    });
    this.stopWatching = afterReconnect(() => this.nudge("both"));
  }

  nudge(what: "both" | "status"): void {
    this.next = this.next === "both" ? "both" : what;
    this.wake();
  }

  /** What to read now (and forget it), or undefined: wait for a nudge. */
  take(): "both" | "status" | undefined {
    const what = this.next;
    this.next = undefined;
    return what;
  }

  /** Resolves true when nudged, false when `timeoutMs` passed first. */
  nudged(timeoutMs: number): Promise<boolean> {
    return new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), timeoutMs);
      this.wake = () => {
        clearTimeout(timer);
        resolve(true);
      };
    });
  }

  close(): void {
    this.sub.unsubscribe();
    this.stopWatching();
  }
}

/**
 * A worker's watch of a job's submission while an attempt runs (a core subscription made before
 * the claim reads it): whether it may have changed since, by a write seen or a reconnect (core
 * messages may have been lost meanwhile). Unchanged, a cancel request cannot have come since the
 * claim, and the fence need not read the submission again.
 */
export class SubmissionWatch {
  private seen = false;
  private readonly sub: Subscription;
  private readonly stopWatching: () => void;

  constructor(nc: NatsConnection, id: string, afterReconnect: ReconnectHook) {
    const mark = (): void => {
      this.seen = true;
    };
    this.sub = nc.subscribe(kvSubject(JOBS_BUCKET, submissionKey(id)), { callback: mark });
    this.stopWatching = afterReconnect(mark);
  }

  get changed(): boolean {
    return this.seen;
  }

  close(): void {
    this.sub.unsubscribe();
    this.stopWatching();
  }
}

export class JobStore {
  private readonly onReconnect = new Set<() => void>();
  /** Every record, for list(): made on the first listing. */
  private index: RecordIndex<JobRecord> | undefined;
  private statusLoop: Promise<void> | undefined;
  /** Records followed to their end now (finalRecord): how often each is read regardless (rereadEveryMs). */
  private followingToEnd = 0;

  private readonly nc: NatsConnection;
  private readonly jsm: JetStreamManager;
  /** Whether the records' bucket is gone (a write no stream takes: withRetry's streamGone). */
  private readonly bucketGone: () => Promise<boolean>;
  /** The writes a compare-and-set on the bucket may have let through unseen (see writesBetween). */
  private readonly unseen: ReturnType<typeof unseenWritesOf>;

  constructor(
    private readonly kv: KV,
    conn: { nc: NatsConnection; jsm: JetStreamManager },
    private readonly log: Logger,
  ) {
    this.nc = conn.nc;
    this.jsm = conn.jsm;
    this.bucketGone = streamGoneCheck(conn.jsm, kvStream(JOBS_BUCKET));
    this.unseen = unseenWritesOf(conn.jsm, kvStream(JOBS_BUCKET));
  }

  /** Create the submission; its revision, or undefined when a job with this id already exists. */
  async create(record: JobRecord): Promise<number | undefined> {
    try {
      return await withRetry(() => this.kv.create(submissionKey(record.id), encode(record)), {
        passThrough: isCasConflict,
        what: `create job record ${record.id}`,
        streamGone: this.bucketGone,
      });
    } catch (err) {
      if (isCasConflict(err)) return undefined;
      throw err;
    }
  }

  private async read(key: string): Promise<VersionedRecord | undefined> {
    return parseEntry(await withRetry(() => this.kv.get(key), { what: `read job record ${key}` }), key);
  }

  private async readSubmission(id: string): Promise<VersionedRecord | undefined> {
    const key = submissionKey(id);
    const entry = await withRetry(() => this.kv.get(key), { what: `read job record ${key}` });
    try {
      const sub = parseEntry(entry, key);
      return sub && checkSubmission(sub, id);
    } catch (err) {
      if (!(err instanceof MessageInvalidError) || !entry) throw err;
      return this.lastValidSubmission(id, entry.revision, err);
    }
  }

  /**
   * A submission update that no reader accepts (a submitter may write garbage, or claim a state only
   * a worker may) is skipped: the last valid one before it stands, at the invalid one's revision, so
   * that a change compares-and-sets against what is there. Found with message gets over the key's
   * short history; none left (an invalid first write, or history gone): no record.
   */
  private async lastValidSubmission(
    id: string,
    revision: number,
    err: MessageInvalidError,
  ): Promise<VersionedRecord | undefined> {
    let valid: JobRecord | undefined;
    const subject = kvSubject(JOBS_BUCKET, submissionKey(id));
    for await (const m of replayStored(this.jsm, kvStream(JOBS_BUCKET), subject)) {
      if (m.seq >= revision) break;
      try {
        const record = decode(jobRecordSchema, m.data, `job record ${id}`);
        valid = checkSubmission({ record, revision: m.seq }, id).record;
      } catch {
        // An earlier invalid update (or a delete marker): skipped as well.
      }
    }
    this.log.warn(
      { err, jobId: id, revision, kept: valid !== undefined },
      "skipped an invalid submission update",
    );
    return valid && { record: valid, revision };
  }

  /** Both keys of a job, read at once. */
  private async readKeys(
    id: string,
  ): Promise<{ submission: VersionedRecord | undefined; status: VersionedRecord | undefined }> {
    const [submission, status] = await Promise.all([this.readSubmission(id), this.read(statusKey(id))]);
    return { submission, status };
  }

  async get(id: string): Promise<VersionedRecord | undefined> {
    const { submission, status } = await this.readKeys(id);
    const record = mergeRecord(submission?.record, status?.record);
    return record && { record, revision: status?.revision ?? 0 };
  }

  /**
   * The record when it is final without a worker having made it so (refused at submit, or cancelled
   * while it waited): no worker will publish its terminal event. Undefined otherwise.
   */
  async endedWithoutWorker(id: string): Promise<JobRecord | undefined> {
    const { submission, status } = await this.readKeys(id);
    const record = mergeRecord(submission?.record, status?.record);
    if (!record || !TERMINAL_STATES.has(record.state)) return undefined;
    return status && TERMINAL_STATES.has(status.record.state) ? undefined : record;
  }

  /**
   * The record as the submission alone makes it, with status revision 0: what a first claim works
   * from (if a worker did write a status, the claim's create conflicts and it reads both keys).
   */
  async submission(id: string): Promise<VersionedRecord | undefined> {
    const sub = await this.readSubmission(id);
    return sub && { record: mergeRecord(sub.record, undefined)!, revision: 0 };
  }

  async require(id: string): Promise<VersionedRecord> {
    const found = await this.get(id);
    if (!found) throw new JobNotFoundError(id);
    return found;
  }

  /**
   * A worker's change to a record, by compare-and-set on the status key: `change` gets the current
   * record and returns the new one, or undefined to leave it as it is. Re-reads and retries when
   * another writer got there first.
   */
  async mutate(
    id: string,
    change: (current: JobRecord) => JobRecord | undefined,
    /** The record as last seen: tried first, saving a read when nobody changed it since. */
    known?: VersionedRecord,
  ): Promise<VersionedRecord> {
    for (let tries = 0; tries < MAX_CAS_TRIES; tries++) {
      const current = tries === 0 && known ? known : await this.require(id);
      const next = change(current.record);
      if (!next) return current;
      const updated = { ...next, updatedAt: Date.now() };
      const key = statusKey(id);
      try {
        const revision = await withRetry(
          () =>
            current.revision === 0
              ? this.kv.create(key, encode(updated))
              : this.kv.update(key, encode(updated), current.revision),
          {
            passThrough: isCasConflict,
            what: `update job record ${id}`,
            streamGone: this.bucketGone,
          },
        );
        return { record: updated, revision, seenUpTo: current.revision === 0 ? revision : current.revision };
      } catch (err) {
        if (!isCasConflict(err)) throw err;
      }
    }
    throw new BrokerError(`job ${id}: too many concurrent changes to its record`, { jobId: id });
  }

  /**
   * The writes to a job's status stored after revision `after` and before revision `before`,
   * oldest first, on a bucket whose compare-and-sets can let two writes through (a nats-server 2.9
   * cluster: `unseenWritesOf`); none elsewhere, without a read. Read over the key's short history
   * (the bucket keeps 5 revisions of a key).
   */
  async writesBetween(id: string, after: number, before: number): Promise<VersionedRecord[]> {
    const stored = await this.unseen(kvSubject(JOBS_BUCKET, statusKey(id)), after, before);
    return stored.flatMap((m) => {
      try {
        return [{ record: decode(jobRecordSchema, m.data, `job record ${id}`), revision: m.seq }];
      } catch {
        return []; // a delete marker or an unreadable write: nothing of an attempt's in it
      }
    });
  }

  /**
   * A submitter's change to its submission (a cancel request, or the failure of a job that never
   * reached the queue), by compare-and-set on the submission key. Returns the record as readers see
   * it afterwards.
   */
  async mutateSubmission(
    id: string,
    change: (submission: JobRecord, current: JobRecord) => JobRecord | undefined,
  ): Promise<JobRecord> {
    for (let tries = 0; tries < MAX_CAS_TRIES; tries++) {
      const { submission, status } = await this.readKeys(id);
      if (!submission) throw new JobNotFoundError(id);
      const current = mergeRecord(submission.record, status?.record)!;
      const next = change(submission.record, current);
      if (!next) return current;
      const updated = { ...next, updatedAt: Date.now() };
      try {
        await withRetry(() => this.kv.update(submissionKey(id), encode(updated), submission.revision), {
          passThrough: isCasConflict,
          what: `update job submission ${id}`,
        });
        return mergeRecord(updated, status?.record)!;
      } catch (err) {
        if (!isCasConflict(err)) throw err;
      }
    }
    throw new BrokerError(`job ${id}: too many concurrent changes to its submission`, { jobId: id });
  }

  /**
   * Every job record (skips entries that do not parse). The keys come from the bucket's stream
   * information (its subjects), one request that makes no consumer (stream-reads.ts).
   */
  async list(): Promise<JobRecord[]> {
    this.index ??= this.startIndex();
    return this.index.list();
  }

  /** The records kept for list(): read whole once, then as their keys are heard to change. */
  private startIndex(): RecordIndex<JobRecord> {
    // The subscription is made before the first reading, and known to the server (flushed) before
    // it starts: a write between the two is then heard, not missed for good.
    let subscribed: Promise<void> | undefined;
    const index = new RecordIndex<JobRecord>({
      keys: async () => {
        await (subscribed ??= this.nc.flush());
        return bucketKeys(this.jsm, JOBS_BUCKET);
      },
      read: async (id) => {
        try {
          return (await this.get(id))?.record;
        } catch (err) {
          if (err instanceof MessageInvalidError) return undefined; // from an incompatible version: not listed
          throw err;
        }
      },
    });
    const prefix = kvSubject(JOBS_BUCKET, "");
    const sub = this.nc.subscribe(`${prefix}*.*`, {
      callback: (err, msg) => (err ? index.dead() : index.changed(msg.subject.slice(prefix.length))),
    });
    // Ended (not allowed to this role, or the connection closed): listings read everything.
    void sub.closed.then(
      () => index.dead(),
      () => index.dead(),
    );
    this.afterReconnect(() => index.lost());
    return index;
  }

  /**
   * Follow a job's record from now on (see finalRecord). `readFirst`: the record may already have
   * changed (an existing job); false only when the watch starts before the job exists, so that
   * finalRecord() reads nothing until a write looks final.
   */
  watch(id: string, readFirst: boolean): RecordWatch {
    return new RecordWatch(this.nc, id, (f) => this.afterReconnect(f), readFirst);
  }

  /** Call `f` after every reconnect of this store's connection, until the returned function is called. */
  afterReconnect(f: () => void): () => void {
    this.watchReconnects();
    this.onReconnect.add(f);
    return () => void this.onReconnect.delete(f);
  }

  /** Watch a job's submission from now on (see SubmissionWatch). */
  watchSubmission(id: string): SubmissionWatch {
    return new SubmissionWatch(this.nc, id, (f) => this.afterReconnect(f));
  }

  /**
   * The record once it is final (succeeded, failed or cancelled), as the bucket holds it. The job's
   * two keys are followed with a core subscription (`$KV.mars-jobs.<id>.*`, a RecordWatch), made
   * before the first read so that no change in between is missed; it creates nothing on the
   * server. What arrives on it is only a hint (a write the bucket refused by compare-and-set is
   * delivered too): one that looks final, or that cannot be read, sends us to the bucket again, as
   * does every reconnect (core messages may have been lost meanwhile). A watch started before the
   * job existed (`watch`, from submit) has seen every write, so nothing is read until one looks
   * final. The watch is closed on return. Throws the abort reason when `signal` aborts.
   */
  async finalRecord(id: string, signal?: AbortSignal, watch?: RecordWatch): Promise<JobRecord> {
    const w = watch ?? this.watch(id, true);
    this.followingToEnd++;
    const all = (): void => w.nudge("both");
    signal?.addEventListener("abort", all, { once: true });
    // A read after a nudge that finds the record not final is made again soon: in a cluster, the
    // replica that answers a direct get may not have the write that nudged yet. And the record is
    // read now and then whatever is heard, in case the nudge itself was lost (test/netns-worker-partitioned.test.ts).
    let nudged = true; // the first read counts as one
    let soon = false;
    try {
      for (;;) {
        signal?.throwIfAborted();
        const what = w.take();
        if (what === "status") {
          const status = await this.read(statusKey(id));
          if (status && TERMINAL_STATES.has(status.record.state)) return status.record;
          w.nudge("both"); // not final after all (a refused write, a lagging replica): look at both again
        } else if (what === "both") {
          const current = await this.require(id);
          if (TERMINAL_STATES.has(current.record.state)) return current.record;
          soon = nudged; // once after a nudge; after a timed read, the long wait
        } else {
          // Spread over ±25%: records followed from one moment on are not all read at the same one.
          const timed = rereadEveryMs(this.followingToEnd) * (0.75 + Math.random() / 2);
          nudged = await w.nudged(soon ? REREAD_SOON_MS : timed);
          soon = false;
          if (!nudged) w.nudge("both");
        }
      }
    } finally {
      this.followingToEnd--;
      w.close();
      signal?.removeEventListener("abort", all);
    }
  }

  /** One loop over the connection's status for all followers: after a reconnect they read again. */
  private watchReconnects(): void {
    if (this.statusLoop) return;
    this.statusLoop = (async () => {
      for await (const s of this.nc.status()) {
        if (s.type === "reconnect") for (const f of this.onReconnect) f();
      }
    })();
  }
}

/**
 * Of the writes stored between a writer's compare-and-set and a later one of its own (see
 * JobStore.writesBetween), those of other writers (none: undefined), and the first of theirs that
 * fenced a commit (wrote `committing`): a writer knows its own writes by `mine`.
 */
export function othersUnseen(
  between: readonly VersionedRecord[],
  mine: (record: JobRecord) => boolean,
): { revisions: number[]; fence: VersionedRecord | undefined } | undefined {
  const others = between.filter((w) => !mine(w.record));
  if (others.length === 0) return undefined;
  return {
    revisions: others.map((w) => w.revision),
    fence: others.find((w) => w.record.committing !== undefined),
  };
}
