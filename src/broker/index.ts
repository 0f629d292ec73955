/** The wire contract: names, schemas, provisioning. Workers, clients and gateways import it from here. */
export {
  DEAD_STREAM,
  EVENTS_STREAM,
  JOBS_BUCKET,
  JOBS_STREAM,
  WORKERS_BUCKET,
  consumerName,
  isToken,
  subjects,
} from "./subjects.js";
export {
  JOB_STATES,
  PROTOCOL_VERSION,
  TERMINAL_STATES,
  deadLetterSchema,
  heartbeatSchema,
  jobMessageSchema,
  jobRecordSchema,
  logBatchSchema,
  progressSchema,
  stateEventSchema,
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
  ProgressEvent,
  StateEvent,
  WorkerInfo,
} from "./schemas.js";
export { ackWaitMs, consumerConfig, provision } from "./provision.js";
export type { ProvisionReport, TopologyOptions } from "./provision.js";
export { connectBroker } from "./connection.js";
export type { BrokerConnection } from "./connection.js";
export { LocalNatsCluster, LocalNatsServer, freePort } from "./local-server.js";
