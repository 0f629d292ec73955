import { z } from "zod";

/** Stable error codes: check errors by `code`, never by message text. */
export const ERROR_CODES = [
  "MARS_REQUEST_INVALID",
  "REQUEST_TOO_LARGE",
  "SPLIT_INVALID",
  "MARS_RUNTIME_ERROR",
  "MARS_NO_DATA",
  "MARS_KILLED",
  "MARS_SPAWN_FAILED",
  "JOB_CANCELLED",
  "JOB_TIMEOUT",
  "JOB_NOT_FOUND",
  "JOB_FAILED",
  "CONFIG_INVALID",
  "TARGET_INVALID",
  "ENVIRON_INVALID",
  "MESSAGE_INVALID",
  "BROKER_ERROR",
  "NO_WORKER",
  "NO_KEEPER",
  "BROKER_AUTH",
  "PERMISSION_DENIED",
  "TOPOLOGY_MISSING",
  "QOS_RULES_INVALID",
  "QOS_DENIED",
  "API_AUTH",
  "API_FORBIDDEN",
  "MEDIA_TYPE_UNSUPPORTED",
  "JOB_EXPIRED",
  "RANGE_INVALID",
  "WRONG_STATE",
  "INTERNAL",
] as const;
export type ErrorCode = (typeof ERROR_CODES)[number];

export interface ErrorDetails {
  [key: string]: unknown;
}

/** Base of every error mars-fleet throws on purpose. */
export class MarsFleetError extends Error {
  readonly code: ErrorCode;
  /** Whether another attempt (on another worker) may succeed. */
  readonly retryable: boolean;
  readonly details: ErrorDetails;

  constructor(
    code: ErrorCode,
    message: string,
    opts: { retryable?: boolean; details?: ErrorDetails; cause?: unknown } = {},
  ) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = new.target.name;
    this.code = code;
    this.retryable = opts.retryable ?? false;
    this.details = opts.details ?? {};
  }

  toRecord(): ErrorRecord {
    return { code: this.code, message: this.message, retryable: this.retryable, details: this.details };
  }
}

/** The request is malformed or unsafe (injection, unknown verb...). Never retried. */
export class MarsRequestError extends MarsFleetError {
  constructor(message: string, details: ErrorDetails = {}, cause?: unknown) {
    super("MARS_REQUEST_INVALID", message, { details, cause });
  }
}

/**
 * The request is larger than a job may carry (MAX_REQUEST_BYTES, its requests as JSON): refused at
 * submit by every entry point, never queued.
 */
export class RequestTooLargeError extends MarsFleetError {
  constructor(message: string, details: ErrorDetails = {}) {
    super("REQUEST_TOO_LARGE", message, { details });
  }
}

/** MARS ran and reported an error (exit code 1..127). The message carries its ERROR lines. */
export class MarsRuntimeError extends MarsFleetError {
  constructor(message: string, details: ErrorDetails = {}) {
    super("MARS_RUNTIME_ERROR", message, { details });
  }
  get errorLines(): string[] {
    const lines = this.details["errorLines"];
    return Array.isArray(lines) ? lines.map(String) : [];
  }
}

/** MARS exited 0 but wrote nothing: the request matches no data. */
export class MarsNoDataError extends MarsFleetError {
  constructor(message = "MARS returned no data for this request", details: ErrorDetails = {}) {
    super("MARS_NO_DATA", message, { details });
  }
}

/**
 * MARS was killed by a signal. HUP, TERM, QUIT... are infrastructure trouble: another attempt may
 * succeed. SIGKILL is final, as with cads-mars-server: it is how operators (and the OOM killer) stop
 * a job for good. A worker that dies is another matter: its job is redelivered.
 */
export class MarsKilledError extends MarsFleetError {
  constructor(message: string, details: ErrorDetails = {}) {
    super("MARS_KILLED", message, { retryable: details["signal"] !== "SIGKILL", details });
  }
}

/** The MARS command could not be started (missing binary, permissions). */
export class MarsSpawnError extends MarsFleetError {
  constructor(message: string, details: ErrorDetails = {}, cause?: unknown) {
    super("MARS_SPAWN_FAILED", message, { retryable: true, details, cause });
  }
}

export class JobCancelledError extends MarsFleetError {
  constructor(message = "the job was cancelled", details: ErrorDetails = {}) {
    super("JOB_CANCELLED", message, { details });
  }
}

export class JobTimeoutError extends MarsFleetError {
  constructor(message: string, details: ErrorDetails = {}) {
    super("JOB_TIMEOUT", message, { details });
  }
}

export class JobNotFoundError extends MarsFleetError {
  constructor(jobId: string) {
    super("JOB_NOT_FOUND", `no job with id ${jobId}`, { details: { jobId } });
  }
}

/** A job ended in failure for a reason that has no more specific class (e.g. too many attempts). */
export class JobFailedError extends MarsFleetError {
  constructor(message: string, details: ErrorDetails = {}) {
    super("JOB_FAILED", message, { details });
  }
}

export class ConfigError extends MarsFleetError {
  constructor(message: string, details: ErrorDetails = {}, cause?: unknown) {
    super("CONFIG_INVALID", message, { details, cause });
  }
}

/** The target path is invalid or escapes the shared root. */
export class TargetError extends MarsFleetError {
  constructor(message: string, details: ErrorDetails = {}) {
    super("TARGET_INVALID", message, { details });
  }
}

/** The environ cannot be given to MARS (a bad variable name, a newline, too large for the system). */
export class EnvironError extends MarsFleetError {
  constructor(message: string, details: ErrorDetails = {}, cause?: unknown) {
    super("ENVIRON_INVALID", message, { details, cause });
  }
}

/** A message on the wire did not match its schema. */
export class MessageInvalidError extends MarsFleetError {
  constructor(message: string, details: ErrorDetails = {}, cause?: unknown) {
    super("MESSAGE_INVALID", message, { details, cause });
  }
}

/** Trouble with the broker. Retryable (the default) when it was transient and may pass. */
export class BrokerError extends MarsFleetError {
  constructor(
    message: string,
    details: ErrorDetails = {},
    cause?: unknown,
    opts: { retryable?: boolean } = {},
  ) {
    super("BROKER_ERROR", message, { retryable: opts.retryable ?? true, details, cause });
  }
}

/** The broker refused this connection's credentials or its TLS peer. Final: fix the configuration. */
export class BrokerAuthError extends MarsFleetError {
  constructor(message: string, details: ErrorDetails = {}, cause?: unknown) {
    super("BROKER_AUTH", message, { details, cause });
  }
}

/** The connection's role may not do this (a NATS permissions violation). Final. */
export class PermissionDeniedError extends MarsFleetError {
  constructor(message: string, details: ErrorDetails = {}, cause?: unknown) {
    super("PERMISSION_DENIED", message, { details, cause });
  }
}

/** Streams, consumers or buckets the fleet needs do not exist, and this connection may not create them. */
export class TopologyMissingError extends MarsFleetError {
  constructor(missing: string[], cause?: unknown) {
    super(
      "TOPOLOGY_MISSING",
      `the topology is missing (${missing.join(", ")}): run \`mars-fleet broker init\` with admin credentials`,
      { details: { missing }, cause },
    );
  }
}

/** A QoS rules file that cannot be applied; `details.errors` lists each problem with its line. */
export class QosRulesError extends MarsFleetError {
  constructor(message: string, details: ErrorDetails = {}) {
    super("QOS_RULES_INVALID", message, { details });
  }
}

/** A QoS `deny` rule refuses the job; the message is the rule's, written for the user. */
export class QosDeniedError extends MarsFleetError {
  constructor(message: string, details: ErrorDetails = {}) {
    super("QOS_DENIED", message, { details });
  }
}

/** No worker serves the queue now: a job put on it would only wait. Try another fleet, or later. */
export class NoWorkerError extends MarsFleetError {
  constructor(message: string, details: ErrorDetails = {}) {
    super("NO_WORKER", message, { retryable: true, details });
  }
}

/**
 * No lane keeper answered a worker's request for a lane: none runs, or the worker's account does
 * not reach one. Retryable: the jobs wait in the stream until a keeper answers.
 */
export class NoKeeperError extends MarsFleetError {
  constructor(message: string, details: ErrorDetails = {}) {
    super("NO_KEEPER", message, { retryable: true, details });
  }
}

/** A call was made while the object was in a state that does not allow it. */
export class WrongStateError extends MarsFleetError {
  constructor(message: string, details: ErrorDetails = {}) {
    super("WRONG_STATE", message, { details });
  }
}

/** How an error travels on the wire. */
export const errorRecordSchema = z.object({
  code: z.enum(ERROR_CODES),
  message: z.string(),
  retryable: z.boolean(),
  details: z.record(z.string(), z.unknown()).default({}),
});
export type ErrorRecord = z.infer<typeof errorRecordSchema>;

const classByCode: { [C in ErrorCode]?: (msg: string, details: ErrorDetails) => MarsFleetError } = {
  MARS_REQUEST_INVALID: (m, d) => new MarsRequestError(m, d),
  REQUEST_TOO_LARGE: (m, d) => new RequestTooLargeError(m, d),
  MARS_RUNTIME_ERROR: (m, d) => new MarsRuntimeError(m, d),
  MARS_NO_DATA: (m, d) => new MarsNoDataError(m, d),
  MARS_KILLED: (m, d) => new MarsKilledError(m, d),
  MARS_SPAWN_FAILED: (m, d) => new MarsSpawnError(m, d),
  JOB_CANCELLED: (m, d) => new JobCancelledError(m, d),
  JOB_TIMEOUT: (m, d) => new JobTimeoutError(m, d),
  JOB_FAILED: (m, d) => new JobFailedError(m, d),
  CONFIG_INVALID: (m, d) => new ConfigError(m, d),
  TARGET_INVALID: (m, d) => new TargetError(m, d),
  ENVIRON_INVALID: (m, d) => new EnvironError(m, d),
  MESSAGE_INVALID: (m, d) => new MessageInvalidError(m, d),
  BROKER_ERROR: (m, d) => new BrokerError(m, d),
  NO_WORKER: (m, d) => new NoWorkerError(m, d),
  NO_KEEPER: (m, d) => new NoKeeperError(m, d),
  QOS_DENIED: (m, d) => new QosDeniedError(m, d),
  WRONG_STATE: (m, d) => new WrongStateError(m, d),
};

/** Rebuild a typed error from its wire record. */
export function errorFromRecord(record: ErrorRecord): MarsFleetError {
  const make = classByCode[record.code];
  if (make) return make(record.message, record.details);
  return new MarsFleetError(record.code, record.message, {
    retryable: record.retryable,
    details: record.details,
  });
}

/** Coerce anything thrown into a MarsFleetError (unknown throwables become INTERNAL). */
export function asFleetError(err: unknown): MarsFleetError {
  if (err instanceof MarsFleetError) return err;
  if (err instanceof Error)
    return new MarsFleetError("INTERNAL", err.message, { cause: err, retryable: true });
  return new MarsFleetError("INTERNAL", String(err), { retryable: true });
}

/** Turn a zod error into one readable line naming the offending paths. */
export function describeZodError(err: z.ZodError): string {
  return err.issues
    .map((issue) => {
      const where = issue.path.length > 0 ? issue.path.join(".") : "(root)";
      return `${where}: ${issue.message}`;
    })
    .join("; ");
}
