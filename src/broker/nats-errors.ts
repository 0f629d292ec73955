/**
 * Recognising NATS errors by their type and API code, never by message text: which are worth a
 * retry (the server restarts, a leader is elected) and which are final (a CAS conflict, a missing
 * stream, a payload over max_payload, a closed connection, a permission).
 */
import { JetStreamApiError } from "@nats-io/jetstream";
import { errors } from "@nats-io/transport-node";

/** JetStream API error codes used here (nats-server's `JS*Err` codes). */
export const JS_CODES = {
  streamNotFound: 10059,
  consumerNotFound: 10014,
  streamNameInUse: 10058,
  streamSubjectOverlap: 10065,
  consumerNameInUse: 10013,
  consumerAlreadyExists: 10148,
  wrongLastSequence: 10071,
  wrongLastSequenceUnknown: 10164,
  clusterNoPeers: 10005,
} as const;

function apiCode(err: unknown): number | undefined {
  return err instanceof JetStreamApiError ? err.code : undefined;
}

/** A compare-and-set lost: the key changed (or exists) since the revision given. */
export function isCasConflict(err: unknown): boolean {
  const code = apiCode(err);
  return code === JS_CODES.wrongLastSequence || code === JS_CODES.wrongLastSequenceUnknown;
}

/** A stream or consumer of the fleet's topology does not exist (deleted, or never provisioned). */
export function isTopologyMissing(err: unknown): boolean {
  const code = apiCode(err);
  return code === JS_CODES.streamNotFound || code === JS_CODES.consumerNotFound;
}

/**
 * "No suitable peers for placement": a cluster still forming (its meta leader answers before it
 * knows every peer) cannot place a replicated stream yet. Passes within seconds of a start.
 */
export function isClusterForming(err: unknown): boolean {
  return apiCode(err) === JS_CODES.clusterNoPeers;
}

export function isNotFound(err: unknown): boolean {
  return err instanceof JetStreamApiError && err.status === 404;
}

/**
 * A stream created at the same moment by another process can be refused as overlapping itself
 * (nats-server 2.9 checks subjects before names): look again, it is there.
 */
export function isCreatedConcurrently(err: unknown): boolean {
  return isAlreadyExists(err) || apiCode(err) === JS_CODES.streamSubjectOverlap;
}

export function isAlreadyExists(err: unknown): boolean {
  const code = apiCode(err);
  return (
    code === JS_CODES.streamNameInUse ||
    code === JS_CODES.consumerNameInUse ||
    code === JS_CODES.consumerAlreadyExists
  );
}

/** The connection was closed (on purpose, or for good): nothing on it can succeed any more. */
export function isClosed(err: unknown): boolean {
  return err instanceof errors.ClosedConnectionError || err instanceof errors.DrainingConnectionError;
}

/** A JetStream publish that no stream took (`no responders`): the topology is missing, or JetStream is starting. */
export function isNoStream(err: unknown): boolean {
  // "No responders", as such or as the cause of the JetStream client's own error for it
  // (JetStreamNotEnabled, which the client's public entry does not export).
  for (let e: unknown = err; e instanceof Error; e = e.cause) {
    if (e instanceof errors.NoRespondersError || (e instanceof errors.RequestError && e.isNoResponders()))
      return true;
  }
  return false;
}

/** The connection's permissions do not allow the subject (its role may not do this). */
export function isPermissionDenied(err: unknown): boolean {
  return permissionViolation(err) !== undefined;
}

/** The permissions violation behind `err` (a request fails with it as its cause). */
export function permissionViolation(
  err: unknown,
): InstanceType<typeof errors.PermissionViolationError> | undefined {
  if (err instanceof errors.PermissionViolationError) return err;
  if (err instanceof errors.RequestError && err.cause instanceof errors.PermissionViolationError)
    return err.cause;
  return undefined;
}

export type ErrorKind = "transient" | "no-stream" | "denied" | "final";

/** How an operation that threw `err` should be treated. */
export function errorKind(err: unknown): ErrorKind {
  if (isPermissionDenied(err)) return "denied";
  if (isNoStream(err)) return "no-stream";
  if (err instanceof errors.TimeoutError || err instanceof errors.ConnectionError) return "transient";
  if (err instanceof errors.RequestError) return "transient";
  // 503 (no leader, JetStream temporarily unavailable) and other server-side trouble pass.
  if (err instanceof JetStreamApiError) return err.status >= 500 ? "transient" : "final";
  return "final";
}
