/** mars-fleet's public API. */
export {
  Fleet,
  IMPORTANT_LINE,
  JobHandle,
  LogFilter,
  executeMars,
  executeMarsLocally,
  jobIdFor,
} from "./client/index.js";
export type {
  ExecuteMarsOptions,
  ExecuteOptions,
  ExecuteResult,
  FleetConnectOptions,
  FleetJobResult,
  JobControl,
  JobEvent,
  LogHandler,
  MarsRequestInput,
  SubmitOptions,
} from "./client/index.js";
export { LocalFleet, Worker } from "./worker/index.js";
export type { StopKind, WorkerOptions } from "./worker/index.js";
export { Gateway } from "./gateway/index.js";
export type { GatewayOptions } from "./gateway/index.js";
export { loadConfig } from "./config/load.js";
export type { FleetConfig } from "./config/load.js";
export { startMars } from "./runner/index.js";
export type { RunEvent, RunOptions, RunOutcome, RunStatus } from "./runner/index.js";
export { formatRequests, normaliseRequest, normaliseRequests, parseRequests } from "./mars/index.js";
export type { MarsRequest, MarsRequestObject } from "./mars/index.js";
export {
  BrokerAuthError,
  BrokerError,
  ConfigError,
  EnvironError,
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
  NoWorkerError,
  PermissionDeniedError,
  QosDeniedError,
  QosRulesError,
  RequestTooLargeError,
  TargetError,
  TopologyMissingError,
  WrongStateError,
} from "./core/errors.js";
export type { ErrorCode, ErrorRecord } from "./core/errors.js";
export { verifyCallbackSignature } from "./api/callback-post.js";
export { LocalNatsCluster, LocalNatsServer } from "./broker/index.js";
export type { JobRecord, JobState, WorkerInfo } from "./broker/index.js";
