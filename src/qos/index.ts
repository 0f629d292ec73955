/** src/qos: QoS rules: the language, judging a job, lanes, limit slots, explanations. Other folders import it from here. */
export {
  basePriority,
  coversLane,
  cachePolicy,
  deniedBy,
  splitBy,
  effectivePriority,
  factsOf,
  laneCap,
  laneCapOf,
  laneLimits,
  laneOf,
  limitsFor,
  queuedJobSchema,
  slotLimits,
  tokenFor,
} from "./evaluate.js";
export type { JobFacts, LimitSlot } from "./evaluate.js";
export { explainWait, limitFull } from "./explain.js";
export {
  activeLanes,
  heldAsideByLane,
  laneCounts,
  laneHead,
  laneMessages,
  queueSummary,
} from "./lane-counts.js";
export type { LaneRow, QueueSummary } from "./lane-counts.js";
export { judged, LaneBoard } from "./lanes.js";
export type { PickOptions } from "./lanes.js";
export {
  isCache,
  isDeny,
  isLimit,
  isPriority,
  isSplit,
  parseRules,
  usageWindowMs,
  withFleetCap,
} from "./rules.js";
export type { QosRules, Rule } from "./rules.js";
export { readRules, RulesFollower, SlotTable, writeRules } from "./store.js";
export type { Holder } from "./store.js";
export { describeUse, UsageTable, usagePenalty, usedWithin } from "./usage.js";
