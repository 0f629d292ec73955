/** src/runner: running MARS: process groups, output, targets inside the shared root. Other folders import it from here. */
export { LineSplitter } from "./lines.js";
export { errorForOutcome } from "./outcome.js";
export { signalGroup, startedForRun } from "./process-group.js";
export { checkEnviron, DEFAULT_KILL_GRACE, MarsRun, REQUEST_FILE_PATTERN, startMars } from "./runner.js";
export type { RunEvent, RunOptions, RunOutcome, RunStatus } from "./runner.js";
export { ResultCache, sha256Of } from "./result-cache.js";
export { assembleParts, FIELD_ORDER, gribKey } from "./fan-in.js";
export type { Assembled, FieldKey } from "./fan-in.js";
export type { CacheEntry, CacheEvent, CacheStats, ResultCacheOptions, RunLease } from "./result-cache.js";
export {
  attemptRunId,
  CACHE_DIR,
  commitDurablePart,
  commitPart,
  checkFileName,
  discardPart,
  earlierAttemptParts,
  isDirectory,
  isPartFile,
  landsBy,
  jobTarget,
  partPathFor,
  prepareTargetDir,
  removeLocalFile,
  resolveInside,
} from "./target.js";
