/**
 * Writes to one job's record as the fence's check for unseen writes reads them (JobStore.writesBetween):
 * three writes to its status key, with another job's write between each, on whatever server the
 * configuration names. Used on a single server (test/unseen-writes.test.ts) and on a cluster
 * (test/fleet-cluster.test.ts).
 */
import { randomUUID } from "node:crypto";
import { Kvm } from "@nats-io/kv";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { JobStore, type VersionedRecord } from "../../src/broker/records.js";
import { initialRecord, type JobMessage, type JobRecord } from "../../src/broker/schemas.js";
import { JOBS_BUCKET } from "../../src/broker/subjects.js";
import { silentLogger } from "../../src/core/index.js";

export interface WritesAround {
  /** The three writes, in order: claims "a", then "b" (with a fence of its own), then "a" again. */
  writes: [VersionedRecord, VersionedRecord, VersionedRecord];
  /** writesBetween(first, third): what a fence that is the third write finds. */
  between: VersionedRecord[];
  /** writesBetween(first, second): nothing can lie between two writes when the other job's did not count. */
  adjacent: VersionedRecord[];
}

/** A job message of its own for a record (the queue "unseen"). */
export const job = (id: string): JobMessage => ({
  v: 1,
  id,
  queue: "unseen",
  requests: [{ verb: "retrieve", params: { param: ["2t"] } }],
  target: `${id}.grib`,
  environ: {},
  timeoutMs: 0,
  submittedAt: Date.now(),
  deliver: "share",
});

/** A record change that claims it for `claim`. */
export const claimed =
  (claim: string) =>
  (r: JobRecord): JobRecord => ({ ...r, state: "running", claim });

/** A job store of its own connection to `servers`; `close` ends it. */
export async function storeOn(servers: string[]): Promise<{ store: JobStore; close: () => Promise<void> }> {
  const nc = await connect({ servers });
  const jsm = await jetstreamManager(nc);
  const store = new JobStore(await new Kvm(nc).open(JOBS_BUCKET), { nc, jsm }, silentLogger());
  return { store, close: () => nc.close() };
}

/** The bucket must exist (the topology provisioned) on `servers`. */
export async function writesAround(servers: string[]): Promise<WritesAround> {
  const { store, close } = await storeOn(servers);
  try {
    const id = `unseen-${randomUUID()}`;
    const other = `unseen-other-${randomUUID()}`;
    const first = await store.mutate(id, claimed("a"), { record: initialRecord(job(id), 3), revision: 0 });
    let between = await store.mutate(other, claimed("x"), {
      record: initialRecord(job(other), 3),
      revision: 0,
    });
    const fence = { attempt: 2, ino: 7, bytes: 10, elapsedMs: 1, claim: "b" };
    const second = await store.mutate(id, (r) => ({ ...claimed("b")(r), committing: fence }), first);
    between = await store.mutate(other, claimed("y"), between);
    const third = await store.mutate(id, claimed("a"), second);
    return {
      writes: [first, second, third],
      between: await store.writesBetween(id, first.revision, third.revision),
      adjacent: await store.writesBetween(id, first.revision, second.revision),
    };
  } finally {
    await close();
  }
}
