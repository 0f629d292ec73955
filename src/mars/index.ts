/** The MARS request language and log format. */
export {
  KNOWN_KEYWORDS,
  MARS_VERBS,
  canonicalKey,
  normaliseRequest,
  normaliseRequests,
  withParam,
} from "./request.js";
export type { MarsRequest, MarsRequestObject, MarsVerb } from "./request.js";
export { formatRequest, formatRequests, parseRequests } from "./text.js";
export { expandDates, expandIntegers, expandTimes } from "./expand.js";
export { PARAMS, lookupParam } from "./params.js";
export type { ParamInfo } from "./params.js";
export { formatLogLine, parseLogLine, transferBytes } from "./log.js";
