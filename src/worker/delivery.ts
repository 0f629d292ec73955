/** One message from the work queue: garbage is terminated and dead-lettered; a job runs as a JobAttempt. */
import {
  decode,
  JobEventPublisher,
  type JobMessage,
  jobMessageSchema,
  type JobMsg,
} from "../broker/index.js";
import { asFleetError, type MarsFleetError } from "../core/index.js";
import { JobAttempt, type AttemptEnd, type AttemptEnv } from "./attempt.js";
import { DEFAULT_MAX_PAYLOAD, deadLetterPayload, publishDeadLetter } from "./dead-letter.js";

/** What the dispatcher learnt of a delivery before handing it over. */
export interface Admitted {
  /** Its body, when the dispatcher validated it already. */
  job?: JobMessage;
  /** The QoS rule that refuses it: the attempt fails the job with this error. */
  denied?: MarsFleetError;
  /** Holds the attempt while it runs (how cancels and hand-backs reach it). */
  attempts: Set<JobAttempt>;
}

/** Handle one delivered message; resolves with how its attempt settled it (see JobAttempt.execute). Never throws. */
export async function handleDelivery(
  ctx: AttemptEnv,
  msg: JobMsg,
  { job: parsed, denied, attempts }: Admitted,
): Promise<AttemptEnd | undefined> {
  let job: JobMessage;
  try {
    job = parsed ?? decode(jobMessageSchema, msg.data, "job message");
  } catch (err) {
    await deadLetterGarbage(ctx, msg, err);
    return undefined;
  }
  const events = new JobEventPublisher(
    ctx.js,
    job.id,
    ctx.log.child({ jobId: job.id }),
    ctx.nc.info?.max_payload,
  );
  const attempt = new JobAttempt(ctx, msg, job, events, denied);
  attempts.add(attempt);
  try {
    return await attempt.execute();
  } finally {
    attempts.delete(attempt);
  }
}

/** A message that is no job: terminated at once (never redelivered), then kept in MARS_DEAD as far as it fits. */
async function deadLetterGarbage(ctx: AttemptEnv, msg: JobMsg, err: unknown): Promise<void> {
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
