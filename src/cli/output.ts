/** CLI output: exit codes scripts can rely on, progress bars, error reports. */
import { createRequire } from "node:module";
import type cliProgress from "cli-progress";
import type { JobEvent, LogPresenter } from "../client/index.js";
import { type ErrorCode, MarsFleetError } from "../core/index.js";

/** Exit codes of the `mars-fleet` command. */
export const EXIT = {
  ok: 0,
  internal: 1,
  usage: 2,
  requestInvalid: 3,
  marsError: 4,
  noData: 5,
  retryable: 6,
  cancelled: 7,
  timeout: 8,
  notFound: 9,
} as const;

const EXIT_BY_CODE: Partial<Record<ErrorCode, number>> = {
  MARS_REQUEST_INVALID: EXIT.requestInvalid,
  REQUEST_TOO_LARGE: EXIT.requestInvalid,
  SPLIT_INVALID: EXIT.requestInvalid,
  TARGET_INVALID: EXIT.requestInvalid,
  ENVIRON_INVALID: EXIT.requestInvalid,
  MESSAGE_INVALID: EXIT.requestInvalid,
  QOS_DENIED: EXIT.requestInvalid,
  QOS_RULES_INVALID: EXIT.usage,
  MARS_RUNTIME_ERROR: EXIT.marsError,
  JOB_FAILED: EXIT.marsError,
  MARS_NO_DATA: EXIT.noData,
  MARS_KILLED: EXIT.retryable,
  MARS_SPAWN_FAILED: EXIT.retryable,
  BROKER_ERROR: EXIT.retryable,
  NO_WORKER: EXIT.retryable,
  NO_KEEPER: EXIT.retryable,
  JOB_CANCELLED: EXIT.cancelled,
  JOB_TIMEOUT: EXIT.timeout,
  JOB_NOT_FOUND: EXIT.notFound,
  CONFIG_INVALID: EXIT.usage,
  BROKER_AUTH: EXIT.usage,
  PERMISSION_DENIED: EXIT.usage,
  TOPOLOGY_MISSING: EXIT.usage,
  WRONG_STATE: EXIT.usage,
};

/** A command's answer: JSON with --json, else the human text. */
export function print(json: boolean, value: unknown, human: () => string): void {
  process.stdout.write(json ? JSON.stringify(value) + "\n" : human() + "\n");
}

export function exitCodeFor(err: unknown): number {
  return err instanceof MarsFleetError ? (EXIT_BY_CODE[err.code] ?? EXIT.internal) : EXIT.internal;
}

/** Print an error for people (or as JSON) on stderr and return the exit code. */
export function reportError(err: unknown, json: boolean): number {
  const code = exitCodeFor(err);
  if (json) {
    const record =
      err instanceof MarsFleetError ? err.toRecord() : { code: "INTERNAL", message: String(err) };
    process.stderr.write(JSON.stringify({ error: record }) + "\n");
  } else if (err instanceof MarsFleetError) {
    process.stderr.write(`mars-fleet: ${err.code}: ${err.message}\n`);
  } else {
    process.stderr.write(`mars-fleet: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  }
  return code;
}

const LABEL_WIDTH = 16;
const requireHere = createRequire(import.meta.url);

function mb(bytes: number): string {
  return (bytes / 1024 / 1024).toFixed(2);
}

/** Progress bars on stderr when it is a terminal (one per job); log lines print above them. */
export class ProgressDisplay {
  private readonly multi: cliProgress.MultiBar | undefined;
  private readonly bars = new Map<string, cliProgress.SingleBar>();

  constructor(enabled = process.stderr.isTTY === true) {
    // Loaded only when bars are drawn: the worker shares this module (for reportError) and needs none.
    const bars = enabled ? (requireHere("cli-progress") as typeof cliProgress) : undefined;
    this.multi = bars
      ? new bars.MultiBar(
          {
            format: "{label} [{bar}] {percentage}% | {done}/{all} MB | {eta_formatted}",
            stream: process.stderr,
            hideCursor: true,
            forceRedraw: true,
            clearOnComplete: false,
          },
          bars.Presets.shades_classic,
        )
      : undefined;
  }

  update(label: string, bytes: number, total: number): void {
    if (!this.multi || total <= 0) return;
    const payload = { label: label.padEnd(LABEL_WIDTH), done: mb(bytes), all: mb(total) };
    let bar = this.bars.get(label);
    if (!bar) {
      bar = this.multi.create(total, bytes, payload);
      this.bars.set(label, bar);
    }
    bar.setTotal(total);
    bar.update(bytes, payload);
  }

  log(line: string): void {
    if (this.multi && this.bars.size > 0) this.multi.log(`${line.padEnd(process.stderr.columns ?? 80)}\n`);
    else process.stderr.write(`${line}\n`);
  }

  stop(): void {
    this.multi?.stop();
  }
}

/** Show one job event: its log line through the presenter, progress as a bar, state changes as a line. */
export function showJobEvent(
  ev: JobEvent,
  presenter: LogPresenter,
  display: ProgressDisplay,
  label: string,
): void {
  if (ev.type === "log") presenter.line(ev.line);
  else if (ev.type === "progress") display.update(label, ev.bytes, ev.total);
  else if (ev.type === "state") {
    const who = ev.worker ? ` on ${ev.worker}` : "";
    display.log(
      `[${label}] ${ev.state} (attempt ${ev.attempt}${who})${ev.error ? `: ${ev.error.message}` : ""}`,
    );
  }
}
