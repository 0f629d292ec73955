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
