/** mars-fleet's public API. */
export { executeMars, executeMarsLocally } from "./client/execute.js";
export type { ExecuteMarsOptions, ExecuteOptions, ExecuteResult } from "./client/execute.js";
export { Fleet, jobIdFor } from "./client/fleet.js";
export type { FleetConnectOptions, SubmitOptions } from "./client/fleet.js";
export { JobHandle } from "./client/job.js";
export type { FleetJobResult, JobEvent } from "./client/job.js";
export { LogFilter, IMPORTANT_LINE } from "./client/log-filter.js";
export type { JobControl, LogHandler } from "./client/log-filter.js";
export type { MarsRequestInput } from "./client/request-input.js";
export { Worker } from "./worker/worker.js";
export type { StopKind, WorkerOptions } from "./worker/worker.js";
export { loadConfig } from "./config/load.js";
export type { FleetConfig } from "./config/load.js";
export { startMars } from "./runner/runner.js";
export type { RunEvent, RunOptions, RunOutcome, RunStatus } from "./runner/runner.js";
export { normaliseRequest, normaliseRequests } from "./mars/request.js";
export type { MarsRequest, MarsRequestObject } from "./mars/request.js";
export { formatRequests, parseRequests } from "./mars/text.js";
export {
  BrokerError,
  ConfigError,
  JobCancelledError,
  JobFailedError,
  JobNotFoundError,
  JobTimeoutError,
  MarsFleetError,
  MarsKilledError,
  MarsNoDataError,
  MarsRequestError,
  MarsRuntimeError,
  MarsSpawnError,
  MessageInvalidError,
  TargetError,
  WrongStateError,
} from "./core/errors.js";
export type { ErrorCode, ErrorRecord } from "./core/errors.js";
export { LocalNatsServer, LocalNatsCluster } from "./broker/local-server.js";
export type { JobRecord, JobState, WorkerInfo } from "./broker/schemas.js";
