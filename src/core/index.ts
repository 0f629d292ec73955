/** src/core: errors with stable codes, logging, time, channels, abort helpers. Other folders import it from here. */
export { untilAborted } from "./abort.js";
export { Channel } from "./channel.js";
export {
  asFleetError,
  BrokerAuthError,
  BrokerError,
  ConfigError,
  describeZodError,
  EnvironError,
  errorFromRecord,
  errorRecordSchema,
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
} from "./errors.js";
export type { ErrorCode, ErrorRecord } from "./errors.js";
export { createLogger, silentLogger } from "./logging.js";
export { own } from "./owned.js";
export { formatDuration, HOUR, MINUTE, parseDuration, SECOND } from "./time.js";
export { yaml } from "./yaml.js";
