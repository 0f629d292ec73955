/** Job records in the jobs bucket, read and changed only by compare-and-set. */
import type { KV } from "@nats-io/kv";
import { JobNotFoundError } from "../core/errors.js";
import { decode, encode } from "./codec.js";
import { withRetry } from "./retry.js";
import { jobRecordSchema, type JobRecord } from "./schemas.js";

export interface VersionedRecord {
  record: JobRecord;
  revision: number;
}

const MAX_CAS_TRIES = 50;

function isCasConflict(err: unknown): boolean {
  return err instanceof Error && /wrong last sequence|key exists/i.test(err.message);
}

export class JobStore {
  constructor(private readonly kv: KV) {}

  /** Create the record; its revision, or undefined when a job with this id already exists. */
  async create(record: JobRecord): Promise<number | undefined> {
    try {
      return await withRetry(() => this.kv.create(record.id, encode(record)), { final: isCasConflict });
    } catch (err) {
      if (isCasConflict(err)) return undefined;
      throw err;
    }
  }

  async get(id: string): Promise<VersionedRecord | undefined> {
    const entry = await withRetry(() => this.kv.get(id));
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
          final: isCasConflict,
        });
        return { record: updated, revision };
      } catch (err) {
        if (!isCasConflict(err)) throw err;
      }
    }
    throw new Error(`job ${id}: too many concurrent changes`);
  }

  /** Every job record (skips entries that do not parse). */
  async list(): Promise<JobRecord[]> {
    const keys: string[] = [];
    for await (const key of await this.kv.keys()) keys.push(key);
    const records = await Promise.all(keys.map((k) => this.get(k).catch(() => undefined)));
    return records.flatMap((r) => (r ? [r.record] : []));
  }

  /**
   * The record now and at every change, until the caller stops iterating. Survives reconnects and
   * server restarts: a broken watch is opened again, and it starts with the current value.
   */
  async *watch(id: string): AsyncGenerator<JobRecord> {
    for (;;) {
      const watcher = await withRetry(() => this.kv.watch({ key: id }));
      try {
        for await (const entry of watcher) {
          if (entry.operation !== "PUT") continue;
          yield decode(jobRecordSchema, entry.value, `job record ${id}`);
        }
      } catch {
        // The watch broke (connection trouble): open it again.
      } finally {
        watcher.stop();
      }
    }
  }
}
