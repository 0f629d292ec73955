/** The worker daemon and the tools to run one (or a local fleet) as child processes. */
export { Worker, WORKER_VERSION } from "./worker.js";
export type { StopKind, WorkerOptions } from "./worker.js";
export type { StopReason } from "./attempt.js";
export { startWorkerProcess } from "./process.js";
export type { WorkerProcess } from "./process.js";
export { LocalFleet } from "./local-fleet.js";
export type { Settings } from "./local-fleet.js";
