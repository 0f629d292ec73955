/** mars-fleet's public API. */
export {
  executeMars,
  executeMarsLocally,
  type ExecuteMarsOptions,
  type ExecuteOptions,
  type ExecuteResult,
  Fleet,
  type FleetConnectOptions,
  type FleetJobResult,
  IMPORTANT_LINE,
  type JobControl,
  type JobEvent,
  JobHandle,
  jobIdFor,
  LogFilter,
  type LogHandler,
  type MarsRequestInput,
  type SubmitOptions,
} from "./client/index.js";
export { type StopKind, Worker, type WorkerOptions } from "./worker/index.js";
export { LocalFleet, LocalNatsCluster, LocalNatsServer } from "./local/index.js";
export { Gateway, type GatewayOptions } from "./gateway/index.js";
export { type FleetConfig, loadConfig } from "./config/index.js";
export {
  type RunEvent,
  type RunOptions,
  type RunOutcome,
  type RunStatus,
  startMars,
} from "./runner/index.js";
export {
  formatRequests,
  type MarsRequest,
  type MarsRequestObject,
  normaliseRequest,
  normaliseRequests,
  parseRequests,
} from "./mars/index.js";
export {
  BrokerAuthError,
  BrokerError,
  ConfigError,
  EnvironError,
  type ErrorCode,
  type ErrorRecord,
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
  NoKeeperError,
  NoWorkerError,
  PermissionDeniedError,
  QosDeniedError,
  QosRulesError,
  RequestTooLargeError,
  TargetError,
  TopologyMissingError,
  WrongStateError,
} from "./core/index.js";
export { verifyCallbackSignature } from "./api/index.js";
export type { JobRecord, JobState, WorkerInfo } from "./broker/index.js";
