/** Cancellation of long waits with an AbortSignal, as Node users expect. */

/**
 * `work`'s value, or the signal's reason as soon as it aborts. What `work` still brings after an
 * abort is handed to `dispose` (a connection made too late is closed), so nothing is left open.
 */
export function untilAborted<T>(
  work: Promise<T>,
  signal: AbortSignal | undefined,
  dispose: (late: T) => unknown,
): Promise<T> {
  if (!signal) return work;
  const discard = (): void => {
    // Made after the caller gave up: closed; its failure, if any, no longer has anyone to tell.
    void work.then(dispose, () => undefined);
  };
  if (signal.aborted) {
    discard();
    return Promise.reject(signal.reason);
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => {
      reject(signal.reason);
      discard();
    };
    signal.addEventListener("abort", onAbort, { once: true });
    work.then(
      (value) => {
        signal.removeEventListener("abort", onAbort);
        if (!signal.aborted) resolve(value);
      },
      (err: unknown) => {
        signal.removeEventListener("abort", onAbort);
        if (!signal.aborted) reject(err);
      },
    );
  });
}
