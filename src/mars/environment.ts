/**
 * MARS settings a job may carry to the worker (`MARS_AUTO_SPLIT_BY_DATES=1`, as cads-mars-server's
 * WebSocket server set for every run). Only these names: the rest of MARS's environment is the
 * worker's own, and a job message must not be able to set `LD_PRELOAD` or `PATH`.
 */
import { z } from "zod";
import { describeZodError, MarsRequestError } from "../core/index.js";

export const JOB_MARS_ENV_NAMES = [
  "MARS_AUTO_SPLIT_BY_DATES",
  "MARS_MAX_RETRIEVE_SIZE",
  "MARS_DEBUG",
] as const;
export type JobMarsEnvName = (typeof JOB_MARS_ENV_NAMES)[number];
export type JobMarsEnv = Partial<Record<JobMarsEnvName, string>>;

export const jobMarsEnvSchema = z.partialRecord(
  z.enum(JOB_MARS_ENV_NAMES),
  z.string().regex(/^[^\u0000\n\r]*$/, "no newline or NUL"),
);

/** Check settings given as an object; throws MARS_REQUEST_INVALID naming what is wrong. */
export function checkJobMarsEnv(env: unknown): JobMarsEnv {
  const parsed = jobMarsEnvSchema.safeParse(env);
  if (!parsed.success) {
    throw new MarsRequestError(
      `invalid MARS settings (allowed: ${JOB_MARS_ENV_NAMES.join(", ")}): ${describeZodError(parsed.error)}`,
      {},
      parsed.error,
    );
  }
  return parsed.data;
}

/** `["MARS_AUTO_SPLIT_BY_DATES=1"]` → `{MARS_AUTO_SPLIT_BY_DATES: "1"}`, checked. */
export function parseJobMarsEnv(assignments: readonly string[]): JobMarsEnv {
  const out: Record<string, string> = {};
  for (const item of assignments) {
    const eq = item.indexOf("=");
    if (eq <= 0) throw new MarsRequestError(`expected NAME=VALUE, got ${JSON.stringify(item)}`);
    out[item.slice(0, eq).trim()] = item.slice(eq + 1);
  }
  return checkJobMarsEnv(out);
}
