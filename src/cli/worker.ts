/** `mars-fleet worker`: the daemon, with two-stage signal handling. */
import type { FleetConfig } from "../config/load.js";
import { createLogger } from "../core/logging.js";
import { Worker } from "../worker/worker.js";

/** Exit status of the worker daemon: 0 drained cleanly; 3 forced (second signal or grace period over). */
export const WORKER_EXIT = { drained: 0, forced: 3 } as const;

export async function runWorker(config: FleetConfig, workerId?: string): Promise<number> {
  const logger = createLogger({ level: config.logLevel, name: "mars-fleet-worker" });
  const worker = await Worker.start({ config, logger, ...(workerId !== undefined && { workerId }) });
  let signals = 0;
  const done = new Promise<number>((resolve) => {
    const onSignal = (signal: NodeJS.Signals): void => {
      signals++;
      if (signals === 1) {
        logger.info(
          { signal, graceMs: config.drainGrace },
          "draining; send the signal again to stop at once",
        );
        void worker.drain().then((kind) => resolve(WORKER_EXIT[kind]));
      } else {
        logger.warn({ signal }, "stopping now: running jobs are handed back to the queue");
        void worker.stop().then(() => resolve(WORKER_EXIT.forced));
      }
    };
    process.on("SIGTERM", onSignal);
    process.on("SIGINT", onSignal);
  });
  const code = await done;
  logger.flush();
  return code;
}
