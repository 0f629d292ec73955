/** src/client: the library: Fleet, JobHandle, executeMars. Other folders import it from here. */
export { executeMars, executeMarsLocally } from "./execute.js";
export type { ExecuteMarsOptions, ExecuteOptions, ExecuteResult } from "./execute.js";
export { Fleet, jobIdFor, workerEntries } from "./fleet.js";
export type { FleetConnectOptions, SubmitOptions } from "./fleet.js";
export { JobHandle } from "./job.js";
export type { FleetJobResult, JobEvent } from "./job.js";
export { IMPORTANT_LINE, LogFilter, LogPresenter } from "./log-filter.js";
export type { JobControl, LogHandler, PresenterOptions } from "./log-filter.js";
export { toRequests } from "./request-input.js";
export type { MarsRequestInput } from "./request-input.js";
export { accounting } from "./usage.js";
export type { UsageRow } from "./usage.js";
