/**
 * src/broker: the wire contract: names, schemas, provisioning, roles, records, events, the pull loop.
 * Other folders import it from here; two modules are loaded on demand instead (import()):
 * results.ts (the object store client) and credentials.ts (`broker auth`).
 */
export { inboxPrefixFor } from "./auth.js";
export {
  callbackRequestSchema,
  callbackStateSchema,
  publicCallback,
  readCallback,
  registerCallback,
} from "./callbacks.js";
export type { CallbackState } from "./callbacks.js";
export { decode, encode } from "./codec.js";
export { connectBroker, connectWithConfig } from "./connection.js";
export type { BrokerConnection } from "./connection.js";
export { JobEventPublisher } from "./events.js";
export { type FollowedEntry, KeyFollower } from "./kv-follow.js";
export {
  askForLane,
  KEEPER_GROUP,
  KEEPER_TIMEOUT_MS,
  keepLane,
  LaneKeeper,
  isLaneAsWanted,
  laneConsumerConfig,
} from "./keeper.js";
export type { LaneAsk } from "./keeper.js";
export { isAlreadyExists, isCasConflict, isTopologyMissing } from "./nats-errors.js";
export {
  ACK_WAIT_HEARTBEATS,
  ackWaitMs,
  CALLBACKS_CONSUMER,
  connectProvisioned,
  consumerConfig,
  provision,
  topologyOf,
} from "./provision.js";
export type { ProvisionReport, TopologyOptions } from "./provision.js";
export { Puller } from "./pull.js";
export type { JobMsg } from "./pull.js";
export { JobStore, othersUnseen } from "./records.js";
export type { RecordWatch, SubmissionWatch, VersionedRecord } from "./records.js";
export { afterFailure, checkRetry, policyOf } from "./retry-policy.js";
export type { RetryPolicy } from "./retry-policy.js";
export type { Role } from "./roles.js";
export {
  deadLetterSchema,
  endedWithoutResult,
  environSchema,
  heartbeatSchema,
  initialRecord,
  JOB_STATES,
  jobMessageSchema,
  jobRecordSchema,
  logBatchSchema,
  marsRequestSchema,
  progressSchema,
  PROTOCOL_VERSION,
  stateEventSchema,
  TERMINAL_STATES,
  workerInfoSchema,
} from "./schemas.js";
export type {
  DeadLetter,
  Heartbeat,
  JobMessage,
  JobRecord,
  JobResult,
  JobState,
  LogBatch,
  PartOf,
  ProgressEvent,
  StateEvent,
  Submitter,
  WorkerInfo,
  WorkerState,
} from "./schemas.js";
export { hasValidSignature, signatureSchema } from "./signing.js";
export type { RecordAuthority } from "./signing.js";
export { bucketKeys, recentStored, replayStored, unseenWritesOf } from "./stream-reads.js";
export {
  API_JOBS_BUCKET,
  API_KEYS_BUCKET,
  CALLBACKS_BUCKET,
  consumerName,
  DEAD_STREAM,
  eventJobId,
  eventKind,
  EVENTS_STREAM,
  isToken,
  JOBS_BUCKET,
  JOBS_STREAM,
  jsApi,
  kvStream,
  kvSubject,
  laneConsumerName,
  laneOfAdvisory,
  laneOfConsumer,
  QOS_BUCKET,
  QOS_RULES_KEY,
  queueOfSubject,
  subjects,
  WORKERS_BUCKET,
} from "./subjects.js";
export { streamGoneCheck, withRetry } from "./transient.js";
