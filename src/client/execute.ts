/** `executeMars`: run a MARS request and get its result, locally (this module) or through the fleet. */
import { randomUUID } from "node:crypto";
import { mkdir } from "node:fs/promises";
import { join, resolve } from "node:path";
import { checkFileName, errorForOutcome, type RunEvent, startMars } from "../runner/index.js";
import { type FleetConfig, loadConfig } from "../config/index.js";
import { Fleet } from "./fleet.js";
import type { JobEvent } from "./job.js";
import { LogPresenter, type LogHandler } from "./log-filter.js";
import { toRequests, type MarsRequestInput } from "./request-input.js";

export interface ExecuteOptions {
  /** Directory of the result; created if missing. Default: the current directory. */
  targetDir?: string;
  /** File name of the result inside targetDir. Default `data.grib`. */
  targetFname?: string;
  /** The client's environ: request_id, user_id, namespace, host, username... */
  environ?: Record<string, string>;
  /** Custom handling of each MARS line (replaces the standard filter). */
  logHandler?: LogHandler;
  /** Standard filter on (default) or off; ignored when a logHandler is given. */
  filterLogs?: boolean;
  /** Receives each line to show. */
  onLog?: (line: string) => void;
  /** Receives progress: bytes written of the announced total. */
  onProgress?: (progress: { bytes: number; total: number }) => void;
  signal?: AbortSignal;
  /** Wall-clock limit of the job in milliseconds; 0 or absent: none. */
  timeoutMs?: number;
  /** MARS command (default: the bundled simulator) and extra environment for it. */
  command?: readonly string[];
  env?: Record<string, string>;
  killGraceMs?: number;
}

export interface ExecuteMarsOptions extends ExecuteOptions {
  /** Configuration; default loadConfig(). A fleet is used when servers are set or useShares is on. */
  config?: FleetConfig;
  /** An open fleet connection to use (then the fleet is used whatever the configuration). */
  fleet?: Fleet;
  /** Fleet mode: the work queue and an idempotency key. */
  queue?: string;
  requestId?: string;
}

export interface ExecuteResult {
  target: string;
  bytes: number;
  elapsedMs: number;
  /** Every line MARS printed, unfiltered. */
  log: string[];
}

/** Feed log lines to the presenter and progress to `onProgress`; returns the lines of the last attempt. */
async function followOutput(
  events: AsyncIterable<RunEvent | JobEvent>,
  presenter: LogPresenter,
  opts: Pick<ExecuteOptions, "onProgress">,
): Promise<string[]> {
  const log: string[] = [];
  for await (const event of events) {
    if (event.type === "log") {
      log.push(event.line);
      presenter.line(event.line);
    } else if (event.type === "progress") {
      opts.onProgress?.({ bytes: event.bytes, total: event.total });
    } else if (event.type === "state" && event.state === "retrying") {
      log.length = 0; // a new attempt starts its log afresh, as a local rerun would
    }
  }
  presenter.end();
  return log;
}

/** Run MARS on this machine through the runner; throws the typed errors of a failed run. */
export async function executeMarsLocally(
  request: MarsRequestInput,
  opts: ExecuteOptions = {},
): Promise<ExecuteResult> {
  const requests = toRequests(request);
  const targetDir = resolve(opts.targetDir ?? ".");
  const targetPath = join(targetDir, checkFileName(opts.targetFname ?? "data.grib"));
  await mkdir(targetDir, { recursive: true });
  const runId = randomUUID();
  const run = startMars({
    requests,
    targetPath,
    runId,
    ...(opts.command && { command: opts.command }),
    ...(opts.environ && { environ: opts.environ }),
    ...(opts.env && { env: opts.env }),
    ...(opts.signal && { signal: opts.signal }),
    ...(opts.timeoutMs !== undefined && { timeoutMs: opts.timeoutMs }),
    ...(opts.killGraceMs !== undefined && { killGraceMs: opts.killGraceMs }),
  });
  const log = await followOutput(
    run.events(),
    new LogPresenter(opts, { id: runId, cancel: () => run.cancel() }),
    opts,
  );
  const outcome = await run.outcome;
  const error = errorForOutcome(outcome, opts.timeoutMs);
  if (error) throw error;
  return { target: targetPath, bytes: outcome.bytes, elapsedMs: outcome.elapsedMs, log };
}

/**
 * Run a MARS request: through the fleet when one is configured (`MARS_NATS_SERVERS` or
 * `MARS_USE_SHARES=true`), on this machine otherwise; same results and errors either way.
 */
export async function executeMars(
  request: MarsRequestInput,
  opts: ExecuteMarsOptions = {},
): Promise<ExecuteResult> {
  const config = opts.config ?? loadConfig();
  if (!opts.fleet && config.servers.length === 0 && !config.useShares) {
    return executeMarsLocally(request, { filterLogs: config.filterLogs, ...opts });
  }
  const fleet = opts.fleet ?? (await Fleet.connect({ config }));
  try {
    return await executeOnFleet(fleet, request, { filterLogs: config.filterLogs, ...opts });
  } finally {
    if (!opts.fleet) await fleet.close();
  }
}

async function executeOnFleet(
  fleet: Fleet,
  request: MarsRequestInput,
  opts: ExecuteMarsOptions,
): Promise<ExecuteResult> {
  opts.signal?.throwIfAborted();
  const job = await fleet.submit(request, {
    ...(opts.targetDir !== undefined && { targetDir: opts.targetDir }),
    ...(opts.targetFname !== undefined && { targetFname: opts.targetFname }),
    ...(opts.environ && { environ: opts.environ }),
    ...(opts.timeoutMs !== undefined && { timeoutMs: opts.timeoutMs }),
    ...(opts.queue !== undefined && { queue: opts.queue }),
    ...(opts.requestId !== undefined && { requestId: opts.requestId }),
  });
  // The caller stops waiting either way; a cancel that cannot reach the broker leaves the job to run.
  const cancel = (): void => void job.cancel().catch(() => undefined);
  opts.signal?.addEventListener("abort", cancel, { once: true });
  try {
    const log = await followOutput(job.events(), new LogPresenter(opts, { id: job.id, cancel }), opts);
    const result = await job.result();
    return { target: result.target, bytes: result.bytes, elapsedMs: result.elapsedMs, log };
  } finally {
    opts.signal?.removeEventListener("abort", cancel);
  }
}
