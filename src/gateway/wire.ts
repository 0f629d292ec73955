/**
 * cads-mars-server's wire formats: the pipe-mode request body, control chunks and error replies,
 * the shares-mode WebSocket commands and frames. Mapping of fleet outcomes to what its clients expect.
 */
import { constants as osConstants } from "node:os";
import { z } from "zod";
import type { ErrorRecord } from "../core/errors.js";
import { requestObjectSchema } from "../mars/request.js";

/** Control chunks inside the chunked pipe-mode body: exactly 4 bytes each. */
export const CONTROL = {
  rewind: Buffer.from("RWND"),
  end: Buffer.from("ENDR"),
  error: Buffer.from("EROR"),
} as const;

export const UID_PATTERN = /^[a-f0-9-]{36}$/;

export const pipeBodySchema = z.object({
  request: z.union([requestObjectSchema, z.array(requestObjectSchema).min(1)]),
  environ: z.record(z.string(), z.union([z.string(), z.number(), z.null()])).default({}),
});
export type PipeBody = z.infer<typeof pipeBodySchema>;

export const sharesCommandSchema = z.discriminatedUnion("cmd", [
  z.object({
    cmd: z.literal("start"),
    requests: z.array(requestObjectSchema).min(1),
    environ: z.record(z.string(), z.union([z.string(), z.number(), z.null()])).default({}),
    target: z.string().min(1),
  }),
  z.object({ cmd: z.literal("kill") }),
]);
export type SharesCommand = z.infer<typeof sharesCommandSchema>;

/** The environ as strings, nulls dropped (clients send `"host": null`). */
export function environStrings(environ: Record<string, string | number | null>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(environ)) if (v !== null) out[k] = String(v);
  return out;
}

export function signalNumber(name: unknown): number {
  if (typeof name !== "string") return osConstants.signals.SIGKILL;
  return (osConstants.signals as Record<string, number>)[name] ?? osConstants.signals.SIGKILL;
}

/** How a failed job looks to a cads-mars-server client. */
export type FailureShape =
  | { kind: "exited"; exitCode: number }
  | { kind: "killed"; signal: number; retryNextHost: boolean }
  | { kind: "nodata" };

const RETRY_NEXT_HOST_SIGNALS = new Set([
  osConstants.signals.SIGHUP,
  osConstants.signals.SIGTERM,
  osConstants.signals.SIGQUIT,
]);

export function failureShape(error: ErrorRecord | undefined): FailureShape {
  const details = error?.details ?? {};
  const code = error?.code;
  if (code === "MARS_NO_DATA") return { kind: "nodata" };
  if (code === "MARS_RUNTIME_ERROR" && typeof details["exitCode"] === "number")
    return { kind: "exited", exitCode: details["exitCode"] };
  if (code === "MARS_KILLED" || details["lastCode"] === "MARS_KILLED") {
    const signal = signalNumber(details["signal"]);
    return { kind: "killed", signal, retryNextHost: RETRY_NEXT_HOST_SIGNALS.has(signal) };
  }
  if (code === "JOB_CANCELLED" || code === "JOB_TIMEOUT")
    return { kind: "killed", signal: osConstants.signals.SIGKILL, retryNextHost: false };
  // Infrastructure trouble (no worker could run it): worth another host.
  return { kind: "killed", signal: osConstants.signals.SIGTERM, retryNextHost: true };
}

/** The JSON body cads-mars-server sends for a failure. */
export function failureBody(shape: FailureShape): Record<string, unknown> {
  if (shape.kind === "exited") return { exited: shape.exitCode };
  if (shape.kind === "killed")
    return { killed: shape.signal, retry_next_host: shape.retryNextHost, retry_same_host: false };
  return {};
}

/** Shares mode's `returncode`: MARS's exit code, or minus the signal number (as Python reports it). */
export function returnCode(state: string, error: ErrorRecord | undefined): number {
  if (state === "succeeded") return 0;
  const shape = failureShape(error);
  if (shape.kind === "nodata") return 0;
  if (shape.kind === "exited") return shape.exitCode;
  return -shape.signal;
}
