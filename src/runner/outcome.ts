import {
  formatDuration,
  JobCancelledError,
  JobTimeoutError,
  type MarsFleetError,
  MarsKilledError,
  MarsNoDataError,
  MarsRuntimeError,
  MarsSpawnError,
} from "../core/index.js";
import type { RunOutcome } from "./runner.js";

/** The typed error a failed run stands for; undefined when it succeeded. */
export function errorForOutcome(outcome: RunOutcome, timeoutMs?: number): MarsFleetError | undefined {
  const details = { exitCode: outcome.exitCode, signal: outcome.signal, errorLines: outcome.errorLines };
  switch (outcome.status) {
    case "succeeded":
      return undefined;
    case "no_data":
      return new MarsNoDataError("MARS returned no data for this request", details);
    case "mars_error": {
      const reason =
        outcome.errorLines.length > 0 ? outcome.errorLines.join("\n") : outcome.tail.slice(-5).join("\n");
      return new MarsRuntimeError(`MARS failed with exit code ${outcome.exitCode}:\n${reason}`, details);
    }
    case "killed":
      return new MarsKilledError(`MARS was killed by ${outcome.signal}`, details);
    case "timeout":
      return new JobTimeoutError(
        `MARS did not finish within ${timeoutMs !== undefined ? formatDuration(timeoutMs) : "its time limit"} and was stopped`,
        details,
      );
    case "cancelled":
      return new JobCancelledError("the MARS run was cancelled", details);
    case "rejected":
      return outcome.error ?? new MarsSpawnError("the MARS run could not be set up", details);
    case "spawn_failed":
      return new MarsSpawnError(outcome.message ?? "the MARS command could not be started", details);
  }
}
