/** One message from the work queue: garbage is terminated and dead-lettered; a job runs as a JobAttempt. */
import type { JobMsg } from "../broker/pull.js";
import { decode } from "../broker/codec.js";
import { JobEventPublisher } from "../broker/events.js";
import { jobMessageSchema, type JobMessage } from "../broker/schemas.js";
import { asFleetError } from "../core/errors.js";
import { JobAttempt, type WorkerContext } from "./attempt.js";
import { DEFAULT_MAX_PAYLOAD, deadLetterPayload, publishDeadLetter } from "./dead-letter.js";

/** Handle one delivered message (`parsed`: its body, when the caller validated it already). Never throws. `attempts` holds the attempt while it runs. */
export async function handleDelivery(
  ctx: WorkerContext,
  msg: JobMsg,
  attempts: Set<JobAttempt>,
  parsed?: JobMessage,
): Promise<void> {
  let job: JobMessage;
  try {
    job = parsed ?? decode(jobMessageSchema, msg.data, "job message");
  } catch (err) {
    await deadLetterGarbage(ctx, msg, err);
    return;
  }
  const events = new JobEventPublisher(
    ctx.js,
    job.id,
    ctx.log.child({ jobId: job.id }),
    ctx.nc.info?.max_payload,
  );
  const attempt = new JobAttempt(ctx, msg, job, events);
  attempts.add(attempt);
  try {
    await attempt.execute();
  } finally {
    attempts.delete(attempt);
  }
}

/** A message that is no job: terminated at once (never redelivered), then kept in MARS_DEAD as far as it fits. */
async function deadLetterGarbage(ctx: WorkerContext, msg: JobMsg, err: unknown): Promise<void> {
  const seq = msg.info.streamSequence;
  const error = asFleetError(err);
  msg.term();
  ctx.log.warn(
    { streamSeq: seq, size: msg.data.length, code: error.code },
    "invalid job message: terminated",
  );
  await publishDeadLetter(ctx.js, ctx.queue, {
    reason: "invalid job message",
    streamSeq: seq,
    deliveries: msg.info.deliveryCount,
    error: error.toRecord(),
    ...deadLetterPayload(msg.data, msg.headers, ctx.nc.info?.max_payload ?? DEFAULT_MAX_PAYLOAD),
    at: Date.now(),
  }).catch((e: unknown) =>
    ctx.log.error({ err: e, streamSeq: seq }, "could not dead-letter an invalid message"),
  );
}
