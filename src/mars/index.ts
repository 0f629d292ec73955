/** src/mars: the MARS request language: parsing, normalising, writing request files, log lines. Other folders import it from here. */
export { checkJobMarsEnv, jobMarsEnvSchema, parseJobMarsEnv } from "./environment.js";
export type { JobMarsEnv } from "./environment.js";
export { expandDates, expandIntegers, expandTimes } from "./expand.js";
export { formatLogLine, isErrorLine, parseLogLine, transferBytes } from "./log.js";
export type { MarsLogLevel } from "./log.js";
export { lookupParam, PARAMS } from "./params.js";
export { requestKey } from "./request-key.js";
export {
  MAX_SPLIT_PARTS,
  parseSplit,
  partId,
  partIds,
  partTarget,
  planSplit,
  SplitInvalidError,
  splitSpecSchema,
  splitWords,
} from "./split.js";
export type { SplitSpec } from "./split.js";
export type { ParamInfo } from "./params.js";
export {
  canonicalKey,
  KNOWN_KEYWORDS,
  MARS_VERBS,
  normaliseRequest,
  normaliseRequests,
  requestObjectSchema,
  withParam,
} from "./request.js";
export type { MarsRequest, MarsRequestObject, MarsVerb } from "./request.js";
export { formatRequest, formatRequests, parseRequests } from "./text.js";
