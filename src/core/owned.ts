/**
 * Child processes this process owns (local nats-servers, worker processes of a local fleet): killed
 * when it exits, so that a test file, the demo or the benchmark leaves nothing running behind it,
 * even when it ends without cleaning up (an uncaught error, process.exit, a SIGTERM it opted into).
 */
import type { ChildProcess } from "node:child_process";

/** Each owned process, with what else to undo synchronously when it is killed this way. */
const owned = new Map<ChildProcess, (() => void) | undefined>();
let exitHookInstalled = false;

/** Kill `proc` (SIGKILL) if this process exits first; `cleanup` runs then too (synchronous). */
export function own(proc: ChildProcess, cleanup?: () => void): void {
  owned.set(proc, cleanup);
  proc.once("exit", () => owned.delete(proc));
  if (!exitHookInstalled) {
    process.on("exit", killOwned);
    exitHookInstalled = true;
  }
}

/** Kill every owned process now, and run their clean-ups: what an exiting process can still do. */
export function killOwned(): void {
  for (const [proc, cleanup] of owned) {
    proc.kill("SIGKILL");
    cleanup?.();
  }
  owned.clear();
}

/**
 * For test and benchmark processes: a SIGTERM (what `node --test` sends a test file at its
 * time-out) kills the owned processes before this one exits. Opt-in, because a library must not
 * take over a process's signals; a process that handles SIGTERM itself is left alone.
 */
export function killOwnedOnSigterm(): void {
  if (process.listenerCount("SIGTERM") > 0) return;
  process.once("SIGTERM", () => {
    killOwned();
    process.exit(143);
  });
}
