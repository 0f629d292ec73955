/** `mars-fleet worker`: the daemon, with two-stage signal handling. */
import type { FleetConfig } from "../config/index.js";
import { createLogger } from "../core/index.js";
import { Worker } from "../worker/index.js";

/**
 * Exit status of the worker daemon: 0 drained cleanly; 3 forced (second signal or grace period
 * over); 4 the broker connection ended for good (a supervisor should restart it).
 */
export const WORKER_EXIT = { drained: 0, forced: 3, failed: 4 } as const;

export async function runWorker(config: FleetConfig, workerId?: string): Promise<number> {
  const logger = createLogger({ level: config.logLevel, name: "mars-fleet-worker" });
  const worker = await Worker.start({ config, logger, ...(workerId !== undefined && { workerId }) });
  const removeHandlers = worker.handleSignals();
  let code: number;
  try {
    code = WORKER_EXIT[await worker.run()];
  } catch (err) {
    logger.error({ err }, "worker failed");
    code = WORKER_EXIT.failed;
  } finally {
    removeHandlers();
  }
  logger.flush();
  return code;
}
