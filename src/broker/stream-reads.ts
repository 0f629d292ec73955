/**
 * Reading streams without consumers: the subjects a stream holds (a bucket's keys), the last
 * message of one subject, and one subject family's messages in order, each by a single request.
 *
 * Why: a consumer's configuration names where the server delivers its messages, and nats-server
 * delivers there with its own rights, whatever the creator may publish to (docs/SECURITY.md,
 * "Replies and deliveries cannot be aimed"). So submitters and observers create no consumers at
 * all; what they read, they read with these.
 */
import type { JetStreamManager, MsgRequest, StoredMsg } from "@nats-io/jetstream";
import { kvStream, kvSubject } from "./subjects.js";
import { withRetry } from "./transient.js";

/** The subjects of `stream` matching `filter` that hold a message now (a bucket's live keys). */
export async function subjectsOf(jsm: JetStreamManager, stream: string, filter: string): Promise<string[]> {
  const info = await withRetry(() => jsm.streams.info(stream, { subjects_filter: filter }), {
    what: `list the subjects of ${stream}`,
  });
  return Object.keys(info.state.subjects ?? {});
}

/**
 * The messages of `stream` on `filter` from sequence `from` on, in order, as they are now: each one
 * request (the stream's message get, which every stream answers, with `next_by_subj`).
 */
export async function* replayStored(
  jsm: JetStreamManager,
  stream: string,
  filter: string,
  from = 1,
): AsyncGenerator<StoredMsg> {
  for (let seq = from; ;) {
    // nats-server (2.9 on) answers `next_by_subj`: the first message on the filter from `seq` on.
    // The client's type lists only the other forms of the request.
    const query = { seq, next_by_subj: filter } as unknown as MsgRequest;
    const m = await withRetry(() => jsm.streams.getMessage(stream, query), { what: `read ${stream}` });
    if (!m) return;
    yield m;
    seq = m.seq + 1;
  }
}

/** The last (at most) `n` messages of `stream` on `filter`, oldest first: a stream info, then message gets. */
export async function recentStored(
  jsm: JetStreamManager,
  stream: string,
  filter: string,
  n: number,
): Promise<StoredMsg[]> {
  const info = await withRetry(() => jsm.streams.info(stream), { what: `read ${stream}'s state` });
  const out: StoredMsg[] = [];
  if (info.state.messages === 0) return out;
  const from = Math.max(info.state.first_seq, info.state.last_seq - n + 1);
  for await (const m of replayStored(jsm, stream, filter, from)) out.push(m);
  return out.slice(-n);
}

/** The keys of a KV bucket that hold a value now (or a delete marker), under `prefix` if given. */
export async function bucketKeys(jsm: JetStreamManager, bucket: string, prefix = ""): Promise<string[]> {
  const base = kvSubject(bucket, "");
  const subjects = await subjectsOf(jsm, kvStream(bucket), `${base}${prefix}>`);
  return subjects.map((s) => s.slice(base.length));
}

/**
 * A reader of the writes on one of `stream`'s subjects stored after sequence `after` and before
 * `before`, oldest first: the writes a compare-and-set between those two may have let through
 * unseen. nats-server 2.9 checks a clustered write's expected revision only when the stream's
 * leader proposes it, against the writes applied so far, never when it applies it: two writes
 * compared against the same revision and proposed before the first is applied are both stored
 * (test/fleet-cluster.test.ts pauses the leader to make it happen). 2.10 checks again as it
 * applies a write; 2.11 also closed what remained just after a leader change (its commit
 * 469f834b). A single server checks each write as it stores it: there the reader gives none,
 * without a read. Whether the stream is clustered is asked once (again after a failure); the
 * writes are read from the stream's leader, one message get each.
 */
export function unseenWritesOf(
  jsm: JetStreamManager,
  stream: string,
): (subject: string, after: number, before: number) => Promise<StoredMsg[]> {
  let clustered: Promise<boolean> | undefined;
  const isClustered = (): Promise<boolean> =>
    (clustered ??= withRetry(() => jsm.streams.info(stream), { what: `read ${stream}'s placement` }).then(
      // A single server answers with no cluster name; a cluster's members always have one.
      (info) => Boolean(info.cluster?.name),
      (err: unknown) => {
        clustered = undefined; // asked again next time
        throw err;
      },
    ));
  return async (subject, after, before) => {
    const found: StoredMsg[] = [];
    if (before <= after + 1 || !(await isClustered())) return found;
    for await (const m of replayStored(jsm, stream, subject, after + 1)) {
      if (m.seq >= before) break;
      found.push(m);
    }
    return found;
  };
}
