/** Running one MARS invocation: process group, output lines, progress, atomic target. */
export { DEFAULT_KILL_GRACE, MarsRun, checkEnviron, startMars } from "./runner.js";
export type { RunEvent, RunOptions, RunOutcome, RunStatus } from "./runner.js";
export { errorForOutcome } from "./outcome.js";
