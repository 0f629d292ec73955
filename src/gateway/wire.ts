/**
 * cads-mars-server's wire formats: the pipe-mode request body, control chunks and error replies,
 * the shares-mode WebSocket commands and frames. Mapping of fleet outcomes to what its clients expect.
 */
import { constants as osConstants } from "node:os";
import { z } from "zod";
import { describeZodError, type ErrorRecord } from "../core/index.js";
import { requestObjectSchema } from "../mars/index.js";

/** Control chunks inside the chunked pipe-mode body: exactly 4 bytes each. */
export const CONTROL = {
  rewind: Buffer.from("RWND"),
  end: Buffer.from("ENDR"),
  error: Buffer.from("EROR"),
} as const;

export const UID_PATTERN = /^[a-f0-9-]{36}$/;

const environValue = z.union([z.string(), z.number(), z.boolean(), z.null()]);

export const pipeBodySchema = z.object({
  request: z.union([requestObjectSchema, z.array(requestObjectSchema).min(1)]),
  environ: z.record(z.string(), environValue).default({}),
});
export type PipeBody = z.infer<typeof pipeBodySchema>;

/** The environ fields a shares-mode `start` must hold, as cads-mars-server requires them. */
export const SHARES_ENVIRON_FIELDS = ["request_id", "user_id", "namespace", "host", "username"] as const;

const sharesStartSchema = z.object({
  cmd: z.literal("start"),
  /** One request or a list (the original accepts both). */
  requests: z.union([requestObjectSchema, z.array(requestObjectSchema).min(1)]),
  environ: z.record(z.string(), environValue),
  target: z.string().min(1),
});
export type SharesStart = z.infer<typeof sharesStartSchema>;
export type SharesCommand = SharesStart | { cmd: "kill" };

/**
 * Read one shares-mode command. Refusals carry cads-mars-server's own texts ("Invalid JSON",
 * "Missing 'target' field in message", "Missing 'request_id' in environ"), which clients may match.
 */
export function parseSharesCommand(text: string): SharesCommand | { error: string } {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    return { error: "Invalid JSON" };
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) return { error: "Invalid message" };
  const message = raw as Record<string, unknown>;
  if (message["cmd"] === "kill") return { cmd: "kill" };
  if (message["cmd"] !== "start")
    return { error: `Unknown command ${JSON.stringify(message["cmd"] ?? null)}` };
  for (const field of ["requests", "environ", "target"]) {
    if (message[field] === undefined) return { error: `Missing '${field}' field in message` };
  }
  const environ = message["environ"];
  if (typeof environ === "object" && environ !== null && !Array.isArray(environ)) {
    for (const field of SHARES_ENVIRON_FIELDS) {
      if (!(field in environ)) return { error: `Missing '${field}' in environ` };
    }
  }
  const parsed = sharesStartSchema.safeParse(message);
  if (!parsed.success) return { error: `Invalid message: ${describeZodError(parsed.error)}` };
  return parsed.data;
}

/** The environ as strings, nulls dropped (clients send `"host": null`). */
export function environStrings(
  environ: Record<string, string | number | boolean | null>,
): Record<string, string> {
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
