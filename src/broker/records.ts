/** Job records in the jobs bucket, read and changed only by compare-and-set. */
import type { KV } from "@nats-io/kv";
import { BrokerError, JobNotFoundError, MessageInvalidError } from "../core/errors.js";
import { decode, encode } from "./codec.js";
import { isCasConflict } from "./nats-errors.js";
import { withRetry } from "./retry.js";
import { jobRecordSchema, type JobRecord } from "./schemas.js";

export interface VersionedRecord {
  record: JobRecord;
  revision: number;
}

const MAX_CAS_TRIES = 50;

export class JobStore {
  constructor(private readonly kv: KV) {}

  /** Create the record; its revision, or undefined when a job with this id already exists. */
  async create(record: JobRecord): Promise<number | undefined> {
    try {
      return await withRetry(() => this.kv.create(record.id, encode(record)), {
        passThrough: isCasConflict,
        what: `create job record ${record.id}`,
      });
    } catch (err) {
      if (isCasConflict(err)) return undefined;
      throw err;
    }
  }

  async get(id: string): Promise<VersionedRecord | undefined> {
    const entry = await withRetry(() => this.kv.get(id), { what: `read job record ${id}` });
    if (!entry || entry.operation !== "PUT" || entry.length === 0) return undefined;
    return { record: decode(jobRecordSchema, entry.value, `job record ${id}`), revision: entry.revision };
  }

  async require(id: string): Promise<VersionedRecord> {
    const found = await this.get(id);
    if (!found) throw new JobNotFoundError(id);
    return found;
  }

  /**
   * Change a record by compare-and-set: `change` gets the current record and returns the new one,
   * or undefined to leave it as it is. Re-reads and retries when another writer got there first.
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
      try {
        const revision = await withRetry(() => this.kv.update(id, encode(updated), current.revision), {
          passThrough: isCasConflict,
          what: `update job record ${id}`,
        });
        return { record: updated, revision };
      } catch (err) {
        if (!isCasConflict(err)) throw err;
      }
    }
    throw new BrokerError(`job ${id}: too many concurrent changes to its record`, { jobId: id });
  }

  /** Every job record (skips entries that do not parse). */
  async list(): Promise<JobRecord[]> {
    const keys: string[] = [];
    for await (const key of await this.kv.keys()) keys.push(key);
    const records = await Promise.all(
      keys.map((k) =>
        this.get(k).catch((err: unknown) => {
          if (err instanceof MessageInvalidError) return undefined; // from an incompatible version: not listed
          throw err;
        }),
      ),
    );
    return records.flatMap((r) => (r ? [r.record] : []));
  }

  /**
   * The record now and at every change, until the caller stops iterating or `signal` aborts (then it
   * throws the abort reason at once). Survives reconnects and server restarts: a broken watch is
   * opened again, and it starts with the current value.
   */
  async *watch(id: string, signal?: AbortSignal): AsyncGenerator<JobRecord> {
    for (;;) {
      signal?.throwIfAborted();
      const watcher = await withRetry(() => this.kv.watch({ key: id }), {
        what: `watch job record ${id}`,
        ...(signal && { signal }),
      });
      const stop = (): void => watcher.stop();
      signal?.addEventListener("abort", stop, { once: true });
      try {
        for await (const entry of watcher) {
          if (entry.operation !== "PUT") continue;
          yield decode(jobRecordSchema, entry.value, `job record ${id}`);
        }
      } catch (err) {
        if (err instanceof MessageInvalidError) throw err;
        // Otherwise the watch broke (connection trouble): open it again.
      } finally {
        signal?.removeEventListener("abort", stop);
        watcher.stop();
      }
    }
  }
}
