import { setTimeout as sleep } from "node:timers/promises";
import { MarsFleetError } from "../core/errors.js";

/**
 * Retry a broker operation through transient trouble (server restart, leader election, timeouts)
 * until `deadlineMs` has passed. Typed mars-fleet errors (invalid message, not found...) are final.
 */
export async function withRetry<T>(
  op: () => Promise<T>,
  opts: {
    deadlineMs?: number;
    final?: (err: unknown) => boolean;
    onRetry?: (err: unknown, attempt: number) => void;
  } = {},
): Promise<T> {
  const deadline = Date.now() + (opts.deadlineMs ?? 60_000);
  for (let attempt = 1; ; attempt++) {
    try {
      return await op();
    } catch (err) {
      if (err instanceof MarsFleetError || isClosed(err) || opts.final?.(err) || Date.now() > deadline)
        throw err;
      opts.onRetry?.(err, attempt);
      await sleep(Math.min(2000, 50 * 2 ** Math.min(attempt, 6)));
    }
  }
}

/** The connection was closed on purpose: retrying cannot help. */
function isClosed(err: unknown): boolean {
  return (
    err instanceof Error && (err.name === "ClosedConnectionError" || err.name === "DrainingConnectionError")
  );
}
