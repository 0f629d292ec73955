/** src/worker: the worker daemon (worker/metrics.ts, prom-client, is loaded on demand). Other folders import it from here. */
export type { StopReason } from "./attempt.js";
export { startWorkerProcess } from "./process.js";
export type { WorkerProcess } from "./process.js";
export { Worker, WORKER_VERSION } from "./worker.js";
export type { StopKind, WorkerOptions } from "./worker.js";
