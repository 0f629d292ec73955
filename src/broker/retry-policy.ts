/**
 * The retry policy, carried by the job: how many attempts it gets and how long a retryable failure
 * waits before the next. Set at submit (the client's configuration, or per job), it travels in the
 * job message, and the worker that runs the job honours it, whatever its own configuration says.
 * The queue consumer's `max_deliver` is only a backstop under it (docs/PROTOCOL.md).
 */
import { ConfigError, type ErrorRecord } from "../core/index.js";

/** The most attempts a job may ask for (as max_retries allows). */
export const MAX_ATTEMPTS = 100;

/** A per-job policy as given, checked: whole attempts from 1 to MAX_ATTEMPTS, a delay of 0 or more ms. */
export function checkRetry(retry: { maxAttempts?: number; delayMs?: number }): void {
  const { maxAttempts, delayMs } = retry;
  if (
    maxAttempts !== undefined &&
    !(Number.isInteger(maxAttempts) && maxAttempts >= 1 && maxAttempts <= MAX_ATTEMPTS)
  )
    throw new ConfigError(`retry.maxAttempts must be a whole number from 1 to ${MAX_ATTEMPTS}`);
  if (delayMs !== undefined && !(Number.isInteger(delayMs) && delayMs >= 0))
    throw new ConfigError("retry.delayMs must be a whole number of milliseconds, 0 or more");
}

export interface RetryPolicy {
  /** Attempts in all, the first included (at least 1). */
  maxAttempts: number;
  /** Wait before attempt n+1 after a retryable failure of attempt n: `delayMs × n`. */
  delayMs: number;
}

/** The policy a job message carries, its missing parts from `fallback` (a message of an older client). */
export function policyOf(
  job: { maxAttempts?: number | undefined; retryDelayMs?: number | undefined },
  fallback: RetryPolicy,
): RetryPolicy {
  return {
    maxAttempts: job.maxAttempts ?? fallback.maxAttempts,
    delayMs: job.retryDelayMs ?? fallback.delayMs,
  };
}

/** What becomes of a failed attempt. */
export type FailureVerdict =
  | { kind: "cancelled" }
  | { kind: "failed"; final: "error" | "attempts" }
  | { kind: "retry"; delayMs: number };

/**
 * Retry or fail, from the error and the attempt: a cancel is a cancel; an error that is not
 * retryable (a MARS user error, a SIGKILL) fails the job; a retryable one is offered again while the
 * policy has attempts left, and fails the job (out of attempts) after its last.
 */
export function afterFailure(
  error: Pick<ErrorRecord, "code" | "retryable">,
  attempt: number,
  policy: RetryPolicy,
): FailureVerdict {
  if (error.code === "JOB_CANCELLED") return { kind: "cancelled" };
  if (!error.retryable) return { kind: "failed", final: "error" };
  if (attempt < policy.maxAttempts) return { kind: "retry", delayMs: policy.delayMs * attempt };
  return { kind: "failed", final: "attempts" };
}
