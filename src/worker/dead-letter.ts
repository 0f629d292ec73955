/**
 * The dead-letter path: garbage on the queue, jobs failed after their last attempt, and jobs whose
 * every delivery died with its worker (found through the MAX_DELIVERIES advisory) are recorded in
 * the MARS_DEAD stream, and their job records are marked failed so no client waits forever.
 */
import type { JetStreamClient, JetStreamManager } from "@nats-io/jetstream";
import type { MsgHdrs, NatsConnection, Subscription } from "@nats-io/transport-node";
import type { Logger } from "pino";
import { z } from "zod";
import {
  type DeadLetter,
  decode,
  encode,
  type JobEventPublisher,
  jobMessageSchema,
  JOBS_STREAM,
  type JobStore,
  queueOfSubject,
  subjects,
  TERMINAL_STATES,
  withRetry,
  DEAD_STREAM,
  streamGoneCheck,
} from "../broker/index.js";
import { JobFailedError } from "../core/index.js";

/** nats-server's default, when the connection has not said. */
export const DEFAULT_MAX_PAYLOAD = 1024 * 1024;
/** Room left in a dead letter for everything but the payload (JSON fields, error, headers). */
const ENVELOPE_BYTES = 16 * 1024;
/** What is kept of a message too large to keep whole. */
const PREFIX_BYTES = 4 * 1024;
/** A dead letter is worth a few seconds of a slot, not more: the message is already settled. */
const DEAD_LETTER_DEADLINE_MS = 5000;

/** The message as a dead letter holds it: whole when it fits in `maxPayload`, else its headers, size and first bytes. */
export function deadLetterPayload(
  data: Uint8Array,
  headers: MsgHdrs | undefined,
  maxPayload: number,
): Pick<DeadLetter, "payloadBase64" | "size" | "truncated" | "headers"> {
  const room = Math.floor(((maxPayload - ENVELOPE_BYTES) * 3) / 4); // base64 takes 4 bytes for 3
  const truncated = data.length > room;
  const kept = truncated ? data.subarray(0, PREFIX_BYTES) : data;
  const out: ReturnType<typeof deadLetterPayload> = {
    payloadBase64: Buffer.from(kept).toString("base64"),
    size: data.length,
    ...(truncated && { truncated }),
  };
  if (headers) {
    const record: Record<string, string[]> = {};
    for (const key of headers.keys()) record[key] = headers.values(key);
    out.headers = record;
  }
  return out;
}

export async function publishDeadLetter(
  js: JetStreamClient,
  queue: string,
  entry: DeadLetter,
): Promise<void> {
  await withRetry(() => js.publish(subjects.dead(queue), encode(entry)), {
    deadlineMs: DEAD_LETTER_DEADLINE_MS,
    what: "publish a dead letter",
    streamGone: streamGoneCheck(js, DEAD_STREAM),
  });
}

const advisorySchema = z.object({ stream_seq: z.number().int(), deliveries: z.number().int() });

export interface DeadLetterDeps {
  nc: NatsConnection;
  js: JetStreamClient;
  jsm: JetStreamManager;
  store: JobStore;
  queue: string;
  log: Logger;
  events: (jobId: string) => JobEventPublisher;
}

/**
 * Listen for MAX_DELIVERIES advisories of every consumer of the work queue (the queue's and its
 * lanes'); one worker of the fleet handles each (queue group), whatever queue the job was on.
 */
export function watchMaxDeliveries(deps: DeadLetterDeps): Subscription {
  return deps.nc.subscribe(subjects.maxDeliveries("*"), {
    queue: "dead-letter",
    callback: (err, msg) => {
      if (err) return;
      void handleAdvisory(deps, msg.data).catch((e: unknown) =>
        deps.log.error({ err: e }, "dead-letter handling failed"),
      );
    },
  });
}

async function handleAdvisory(deps: DeadLetterDeps, data: Uint8Array): Promise<void> {
  const advisory = advisorySchema.parse(JSON.parse(new TextDecoder().decode(data)));
  const stored = await deps.jsm.streams.getMessage(JOBS_STREAM, { seq: advisory.stream_seq });
  if (!stored) return; // already handled by another worker of the queue
  let jobId: string | undefined;
  try {
    jobId = decode(jobMessageSchema, stored.data, "job message").id;
  } catch {
    // Garbage that was never terminated: it still goes to the dead-letter stream.
  }
  const error = new JobFailedError(
    `gave up after ${advisory.deliveries} deliveries: the worker running it stopped responding each time`,
    { deliveries: advisory.deliveries },
  ).toRecord();
  if (jobId) {
    const id = jobId;
    const { record } = await deps.store.mutate(id, (rec) =>
      TERMINAL_STATES.has(rec.state) ? undefined : { ...rec, state: "failed", error, finishedAt: Date.now() },
    );
    if (record.state === "failed" && record.error?.code === error.code) {
      const events = deps.events(id);
      events.state({ state: "failed", attempt: record.attempt, at: Date.now(), error });
      await events.flush();
    }
  }
  await publishDeadLetter(deps.js, queueOfSubject(stored.subject) ?? deps.queue, {
    reason: "max deliveries reached",
    ...(jobId !== undefined && { jobId }),
    streamSeq: advisory.stream_seq,
    deliveries: advisory.deliveries,
    error,
    ...deadLetterPayload(stored.data, stored.header, deps.nc.info?.max_payload ?? DEFAULT_MAX_PAYLOAD),
    at: Date.now(),
  });
  // False or not found: another worker of the queue deleted it first, which is just as good.
  await deps.jsm.streams.deleteMessage(JOBS_STREAM, advisory.stream_seq).catch(() => false);
  deps.log.warn(
    { jobId, streamSeq: advisory.stream_seq, deliveries: advisory.deliveries },
    "job dead-lettered",
  );
}
