/**
 * Broker operations through transient trouble: a request lost in a server restart or a leader
 * election is made again until a deadline; a final error ends it at once. (Not the retry of a job:
 * that is the job's own policy, broker/retry-policy.ts.)
 */
import { setTimeout as sleep } from "node:timers/promises";
import type { JetStreamClient, JetStreamManager } from "@nats-io/jetstream";
import { BrokerError, MarsFleetError, PermissionDeniedError, TopologyMissingError } from "../core/index.js";
import { errorKind, isTopologyMissing, permissionViolation } from "./nats-errors.js";

/** How long a publish that no stream takes is retried (JetStream may be starting) before it is final. */
const NO_STREAM_GRACE_MS = 3000;
const TOPOLOGY_MISSING = "the topology is missing (run `mars-fleet broker init`)";

export interface RetryOptions {
  /** Give up on transient trouble after this long (default 60 s). */
  deadlineMs?: number;
  /** Errors the caller handles itself (a CAS conflict): thrown as they are, at once. */
  passThrough?: (err: unknown) => boolean;
  onRetry?: (err: unknown, attempt: number) => void;
  /** What the operation does, for the error message ("publish the job"). */
  what?: string;
  /** Abandon the retries when this aborts (the error is the abort reason). */
  signal?: AbortSignal;
  /**
   * Whether the stream this operation writes to is gone (streamGoneCheck). A publish no stream
   * takes is final after a short grace only when this says the stream is gone: in a cluster, a
   * stream whose leader died takes no publish either until a new leader is elected, which can
   * take longer than the grace (test/netns-leader-partitioned.test.ts). Without it, the grace alone decides.
   */
  streamGone?: () => Promise<boolean>;
}

/** A check for RetryOptions.streamGone: the stream's information says it does not exist. */
export function streamGoneCheck(
  js: JetStreamClient | JetStreamManager,
  stream: string,
): () => Promise<boolean> {
  return async () => {
    try {
      const jsm = "jetstreamManager" in js ? await js.jetstreamManager(false) : js;
      await jsm.streams.info(stream);
      return false;
    } catch (err) {
      return isTopologyMissing(err); // anything else (no leader yet, a timeout) cannot tell: not gone
    }
  };
}

/**
 * Run a broker operation, retrying only transient trouble (timeouts, a server restarting, no
 * leader) until the deadline. A final error (missing stream, payload too large, closed connection,
 * permission) ends it at once. What it throws is typed: the caller's pass-through errors and
 * mars-fleet errors as they are, everything else a BrokerError (`BROKER_ERROR`) with the NATS error
 * as its cause, retryable only when the trouble was transient.
 */
export async function withRetry<T>(op: () => Promise<T>, opts: RetryOptions = {}): Promise<T> {
  const started = Date.now();
  const deadline = started + (opts.deadlineMs ?? 60_000);
  for (let attempt = 1; ; attempt++) {
    opts.signal?.throwIfAborted();
    try {
      return await op();
    } catch (err) {
      if (err instanceof MarsFleetError || opts.passThrough?.(err)) throw err;
      const kind = errorKind(err);
      if (kind === "denied") throw deniedError(err, opts.what);
      const noStreamFinal =
        kind === "no-stream" &&
        Date.now() - started > NO_STREAM_GRACE_MS &&
        (opts.streamGone ? await opts.streamGone().catch(() => false) : true);
      const final = kind === "final" || noStreamFinal;
      if (final || Date.now() > deadline) throw brokerError(err, kind, final, opts.what);
      opts.onRetry?.(err, attempt);
      await sleep(Math.min(2000, 50 * 2 ** Math.min(attempt, 6)), undefined, {
        ...(opts.signal && { signal: opts.signal }),
      });
    }
  }
}

function deniedError(err: unknown, what: string | undefined): PermissionDeniedError {
  const violation = permissionViolation(err)!;
  const doing = what ? `could not ${what}: ` : "";
  return new PermissionDeniedError(
    `${doing}this connection's NATS user may not ${violation.operation} to ${violation.subject} (see docs/SECURITY.md for what each role may do)`,
    { operation: violation.operation, subject: violation.subject },
    err,
  );
}

function brokerError(err: unknown, kind: string, final: boolean, what: string | undefined): MarsFleetError {
  const cause = err instanceof Error ? err : new Error(String(err));
  // A stream or consumer gone for good (deleted, never made): the same error as at start.
  if (final && kind === "no-stream")
    return new TopologyMissingError([`a stream for ${what ?? "this subject"}`], err);
  if (final && isTopologyMissing(err)) return new TopologyMissingError([cause.message], err);
  const doing = what ? `could not ${what}: ` : "";
  const reason =
    kind === "no-stream"
      ? `no stream takes this subject: ${TOPOLOGY_MISSING}`
      : isTopologyMissing(err)
        ? `${cause.message}: ${TOPOLOGY_MISSING}`
        : cause.message;
  return new BrokerError(`${doing}${reason}`, { nats: cause.name }, cause, { retryable: !final });
}
