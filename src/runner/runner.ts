/**
 * The runner: runs one MARS invocation in its own process group, streams its output lines and
 * progress, enforces cancellation and a wall-clock timeout, and commits the target atomically.
 * Workers and local mode share it unchanged.
 */
import type { ChildProcess } from "node:child_process";
import { randomUUID } from "node:crypto";
import { writeFileSync } from "node:fs";
import { constants as osConstants, tmpdir } from "node:os";
import { dirname, isAbsolute, join } from "node:path";
import {
  asFleetError,
  Channel,
  EnvironError,
  type MarsFleetError,
  MarsRequestError,
  MarsSpawnError,
  SECOND,
  TargetError,
} from "../core/index.js";
import { formatRequests, isErrorLine, type MarsRequest, transferBytes, withParam } from "../mars/index.js";
import { simulatorCommand } from "../sim/index.js";
import { LineSplitter } from "./lines.js";
import { RUN_MARKER, signalGroup, spawnInGroup } from "./process-group.js";
import {
  commitPart,
  discardPart,
  fileIdentity,
  isDirectory,
  partPathFor,
  removeLocalFile,
  sizeOf,
} from "./target.js";

export const DEFAULT_KILL_GRACE = 5 * SECOND;
export const DEFAULT_PROGRESS_INTERVAL = 250;
const TAIL_LINES = 50;
/**
 * MARS runs with stderr on its stdout pipe, so lines reach us in the order it wrote them, as on the
 * pty cads-mars-server used. `exec` replaces the shell: MARS keeps the pid and leads the group. The
 * shell's own complaint about a command it cannot run goes to the redirected stderr too (dash and
 * bash both), so the group's stderr is not read at all (spawnInGroup).
 */
const MERGED_OUTPUT = ["/bin/sh", "-c", 'exec "$@" 2>&1', "mars"] as const;
/** The shell's codes for a command it could not execute or find. */
const EXIT_NOT_EXECUTABLE = 126;
const EXIT_NOT_FOUND = 127;

export interface RunOptions {
  /** Normalised requests; their `target` is replaced by the runner. */
  requests: MarsRequest[];
  /** Absolute path of the final target file; its directory must exist. */
  targetPath: string;
  /** The MARS command and its leading arguments (the request file is appended). Default: the simulator. */
  command?: readonly string[];
  /** The client's environ (`request_id`, `user_id`...), passed as `MARS_ENVIRON_<KEY>`. */
  environ?: Record<string, string>;
  /** Extra environment variables for MARS (e.g. `MARS_SIM_*` knobs). */
  env?: Record<string, string>;
  signal?: AbortSignal;
  /** Wall-clock limit for the whole run; 0 or absent means none. */
  timeoutMs?: number;
  /** Time between SIGTERM and SIGKILL when stopping the group. */
  killGraceMs?: number;
  progressIntervalMs?: number;
  /** Names the temporary file; default a random UUID. */
  runId?: string;
  /**
   * Leave a successful run's output in its part file until commit() or discard(): a worker first
   * makes sure it still owns the job (see worker/attempt.ts).
   */
  deferCommit?: boolean;
  /**
   * The caller has made sure the target is not a directory (the worker's `prepareTargetDir`
   * does, on its way): the runner does not look at it again before MARS starts.
   */
  targetChecked?: boolean;
}

export type RunEvent =
  | { type: "spawned"; pid: number; at: number }
  /** `stream` is always `stdout` now: MARS's stderr is merged into it (MERGED_OUTPUT). */
  | { type: "log"; seq: number; line: string; stream: "stdout" | "stderr"; at: number }
  | { type: "progress"; bytes: number; total: number; at: number };

export type RunStatus =
  | "succeeded"
  | "no_data"
  | "mars_error"
  | "killed"
  | "timeout"
  | "cancelled"
  | "spawn_failed"
  /** The run could not be set up (target, environ, request): `error` says why; MARS did not run. */
  | "rejected";

export interface RunOutcome {
  status: RunStatus;
  /** Final target path (set when succeeded). */
  target?: string;
  bytes: number;
  elapsedMs: number;
  exitCode: number | null;
  /** The signal that ended MARS, directly or as 128+N through its shell. */
  signal: string | null;
  /** MARS's ERROR lines, kept for error messages. */
  errorLines: string[];
  /** The last lines of output, for diagnostics. */
  tail: string[];
  lines: number;
  /** Set for spawn_failed: what went wrong. */
  message?: string;
  /** Set for rejected. */
  error?: MarsFleetError;
  /** The part file's inode number, when a successful output was left for a deferred commit. */
  partIno?: number;
}

const SIGNAL_NAMES = new Map<number, string>(
  Object.entries(osConstants.signals).map(([name, num]) => [num, name] as [number, string]),
);

/** Map an exit to a signal name: a real signal, or 128+N from the shell wrapper. */
export function exitSignal(code: number | null, signal: string | null): string | null {
  if (signal) return signal;
  if (code !== null && code > 128) return SIGNAL_NAMES.get(code - 128) ?? `SIG${code - 128}`;
  return null;
}

let baseEnvironment: NodeJS.ProcessEnv | undefined;

/** Build the environment for MARS: ours, the extras, and `MARS_ENVIRON_<KEY>` from the environ. */
export function marsEnvironment(
  environ: Record<string, string> = {},
  extra: Record<string, string> = {},
): NodeJS.ProcessEnv {
  // Copying process.env is slow (it is not a plain object): copy it once per process.
  baseEnvironment ??= { ...process.env };
  const env: NodeJS.ProcessEnv = { ...baseEnvironment, ...extra };
  for (const [key, value] of Object.entries(checkEnviron(environ)))
    env[`MARS_ENVIRON_${key.toUpperCase()}`] = value;
  return env;
}

/**
 * Total size of the environ: the kernel refuses a single environment string over 128 KiB (E2BIG),
 * and MARS never needs more than a few ids.
 */
export const MAX_ENVIRON_BYTES = 32 * 1024;

/** The client's environ must make valid variable names and one-line values; returns it unchanged. */
export function checkEnviron(environ: Record<string, string>): Record<string, string> {
  let bytes = 0;
  for (const [key, value] of Object.entries(environ)) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(key))
      throw new EnvironError(`invalid environ key "${key}"`, { key });
    if (/[\u0000\n\r]/.test(value)) {
      throw new EnvironError(`environ "${key}" contains a newline or NUL`, { key });
    }
    bytes += Buffer.byteLength(key) + Buffer.byteLength(value) + 16;
  }
  if (bytes > MAX_ENVIRON_BYTES) {
    throw new EnvironError(`the environ is ${bytes} bytes; at most ${MAX_ENVIRON_BYTES} are passed to MARS`, {
      bytes,
    });
  }
  return environ;
}

/** One running MARS invocation. Start it with {@link startMars}. */
export class MarsRun {
  readonly runId: string;
  readonly partPath: string;
  readonly outcome: Promise<RunOutcome>;
  private readonly channel = new Channel<RunEvent>();
  private pgid = -1;
  private stopReason: "cancelled" | "timeout" | undefined;
  private killTimer: NodeJS.Timeout | undefined;
  private readonly killGraceMs: number;

  constructor(private readonly opts: RunOptions) {
    if (!isAbsolute(opts.targetPath))
      throw new MarsRequestError(`target must be an absolute path: ${opts.targetPath}`);
    this.runId = opts.runId ?? randomUUID();
    this.partPath = partPathFor(opts.targetPath, this.runId);
    this.killGraceMs = opts.killGraceMs ?? DEFAULT_KILL_GRACE;
    this.outcome = this.run(); // never rejects: every failure is an outcome
  }

  /** Process group id of the running MARS, -1 before spawn. */
  get processGroup(): number {
    return this.pgid;
  }

  /** Output lines and progress as they happen; ends when the run is over. Iterate once. */
  events(): AsyncIterable<RunEvent> {
    return this.channel;
  }

  /** Stop the run: SIGTERM to the group now, SIGKILL after the grace period. */
  cancel(): void {
    this.stop("cancelled");
  }

  private stop(reason: "cancelled" | "timeout"): void {
    if (this.stopReason) return;
    this.stopReason = reason;
    if (this.pgid > 0) {
      signalGroup(this.pgid, "SIGTERM");
      this.killTimer = setTimeout(() => signalGroup(this.pgid, "SIGKILL"), this.killGraceMs);
      this.killTimer.unref();
    }
  }

  /** Move a deferred successful output into place (fsync, rename, fsync of the directory). */
  async commit(): Promise<void> {
    await commitPart(this.partPath, this.opts.targetPath);
  }

  /** Drop a deferred output. */
  async discard(): Promise<void> {
    await discardPart(this.partPath);
  }

  private async run(): Promise<RunOutcome> {
    const started = Date.now();
    const requestFile = requestFileFor(this.runId);
    try {
      return await this.runIn(requestFile, started);
    } catch (err) {
      // Anything that kept MARS from starting is an outcome like the others, never a throw.
      await discardPart(this.partPath);
      return {
        ...nothingRan(),
        status: "rejected",
        error: asFleetError(err),
        elapsedMs: Date.now() - started,
      };
    } finally {
      this.channel.close();
      if (this.killTimer) clearTimeout(this.killTimer);
      removeLocalFile(requestFile);
    }
  }

  private async runIn(requestFile: string, started: number): Promise<RunOutcome> {
    const { opts } = this;
    const requests = opts.requests.map((r) => withParam(r, "target", this.partPath));
    // A small local file: one synchronous write costs less CPU than three trips through the
    // thread pool (open, write, close), and blocks for microseconds.
    writeFileSync(requestFile, formatRequests(requests));
    if (opts.signal?.aborted)
      return { ...nothingRan(), status: "cancelled", elapsedMs: Date.now() - started };

    // A missing target directory shows as a spawn error (it is MARS's working directory), and is
    // explained there: one look at the target fewer per run.
    if (!opts.targetChecked && (await isDirectory(opts.targetPath))) {
      throw new TargetError(`target ${opts.targetPath} is a directory`, { target: opts.targetPath });
    }
    const env = { ...marsEnvironment(opts.environ, opts.env), [RUN_MARKER]: this.runId };
    const command = [...(opts.command ?? simulatorCommand()), requestFile];
    const { child, pgid, release } = spawnOrExplain(
      [...MERGED_OUTPUT, ...command],
      env,
      dirname(opts.targetPath),
    );
    this.pgid = pgid;
    const onAbort = (): void => this.cancel();
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    // Aborted while the target was checked (after the check above, before the listener): stop now.
    if (opts.signal?.aborted) onAbort();
    const timeout =
      opts.timeoutMs && opts.timeoutMs > 0
        ? setTimeout(() => this.stop("timeout"), opts.timeoutMs)
        : undefined;
    const output = new OutputTally(this.channel);
    const progressTimer = setInterval(
      () => void output.progress(this.partPath),
      opts.progressIntervalMs ?? DEFAULT_PROGRESS_INTERVAL,
    );
    const outputs = output.follow(child);
    const exit = await this.exitOf(child);
    // Whatever MARS left behind in its group (helpers, a wrapper's children) goes with it.
    signalGroup(pgid, "SIGKILL");
    release();
    child.stdin?.destroy();
    await outputs;
    clearInterval(progressTimer);
    if (timeout) clearTimeout(timeout);
    opts.signal?.removeEventListener("abort", onAbort);
    return this.outcomeOf(exit, output, command, started);
  }

  /** How the MARS process ended (or failed to start); tells followers when it started. */
  private exitOf(child: ChildProcess): Promise<Exit> {
    return new Promise((resolve) => {
      child.once("error", (error) => resolve({ code: null, signal: null, error }));
      child.once("spawn", () => this.channel.push({ type: "spawned", pid: child.pid ?? -1, at: Date.now() }));
      child.once("exit", (code, signal) => resolve({ code, signal }));
    });
  }

  /** The run's outcome from how MARS ended and what it wrote: the part file is committed, kept for the caller, or dropped. */
  private async outcomeOf(
    exit: Exit,
    output: OutputTally,
    command: readonly string[],
    started: number,
  ): Promise<RunOutcome> {
    const { opts } = this;
    const part = await fileIdentity(this.partPath);
    const bytes = part.size;
    const signal = exitSignal(exit.code, exit.signal);
    const { errorLines, tail, seq: lines } = output;
    const common = { bytes, exitCode: exit.code, signal, errorLines, tail, lines };
    const elapsedMs = (): number => Date.now() - started;
    const cannotRun = exit.code === EXIT_NOT_EXECUTABLE || exit.code === EXIT_NOT_FOUND;
    if (exit.error || (cannotRun && !this.stopReason)) {
      await discardPart(this.partPath);
      const targetDir = dirname(opts.targetPath);
      const noDir =
        (exit.error as NodeJS.ErrnoException | undefined)?.code === "ENOENT" &&
        !(await isDirectory(targetDir));
      const message = noDir
        ? `target directory ${targetDir} does not exist`
        : (exit.error?.message ?? `cannot run MARS command ${JSON.stringify(command[0])}: ${tail.join(" ")}`);
      return { ...common, status: "spawn_failed", message, elapsedMs: elapsedMs() };
    }
    if (this.stopReason || exit.code !== 0) {
      await discardPart(this.partPath);
      const status: RunStatus = this.stopReason ?? (signal ? "killed" : "mars_error");
      return { ...common, status, elapsedMs: elapsedMs() };
    }
    if (bytes === 0) {
      await discardPart(this.partPath);
      return { ...common, status: "no_data", elapsedMs: elapsedMs() };
    }
    this.channel.push({ type: "progress", bytes, total: Math.max(output.total, bytes), at: Date.now() });
    if (!opts.deferCommit) await this.commit();
    const deferred = opts.deferCommit && part.ino !== undefined ? { partIno: part.ino } : {};
    return { ...common, status: "succeeded", target: opts.targetPath, elapsedMs: elapsedMs(), ...deferred };
  }
}

interface Exit {
  code: number | null;
  signal: string | null;
  error?: Error;
}

/** An outcome's fields when MARS never ran (fresh arrays: an outcome is the caller's to keep). */
function nothingRan(): Pick<RunOutcome, "bytes" | "exitCode" | "signal" | "errorLines" | "tail" | "lines"> {
  return { bytes: 0, exitCode: null, signal: null, errorLines: [], tail: [], lines: 0 };
}

/**
 * What MARS prints, as a run keeps it: each line to the run's followers, counted, error lines and
 * the last TAIL_LINES kept for the outcome, the bytes its transfer lines announce; and the part
 * file's growth as progress.
 */
class OutputTally {
  seq = 0;
  /** Bytes the transfer lines announced so far. */
  total = 0;
  readonly errorLines: string[] = [];
  readonly tail: string[] = [];
  private lastBytes = -1;

  constructor(private readonly channel: Channel<RunEvent>) {}

  line(line: string): void {
    this.seq++;
    if (isErrorLine(line)) this.errorLines.push(line);
    this.tail.push(line);
    if (this.tail.length > TAIL_LINES) this.tail.shift();
    const announced = transferBytes(line);
    if (announced !== undefined) this.total += announced;
    this.channel.push({ type: "log", seq: this.seq, line, stream: "stdout", at: Date.now() });
  }

  /** A progress event when the part file grew since the last one. */
  async progress(partPath: string): Promise<void> {
    const bytes = await sizeOf(partPath);
    if (bytes !== this.lastBytes) {
      this.lastBytes = bytes;
      this.channel.push({ type: "progress", bytes, total: Math.max(this.total, bytes), at: Date.now() });
    }
  }

  /** Every line of the child's output (stderr is on stdout's pipe: MERGED_OUTPUT); resolves when it closes. */
  follow(child: ChildProcess): Promise<void> {
    return new Promise<void>((resolve) => {
      const source = child.stdout;
      if (!source) return resolve();
      const splitter = new LineSplitter();
      source.on("data", (chunk: Buffer) => {
        for (const line of splitter.push(chunk)) this.line(line);
      });
      source.on("close", () => {
        for (const line of splitter.end()) this.line(line);
        resolve();
      });
    });
  }
}

/**
 * The temporary request file of a run, removed when the run ends. Its name carries the pid of the
 * process that wrote it, so that after a crash the next worker on the host finds and removes it
 * (worker/journal.ts) even when the crash came before anything else was recorded.
 */
export function requestFileFor(runId: string): string {
  return join(tmpdir(), `${REQUEST_FILE_PREFIX}${runId}.${process.pid}.mars`);
}

export const REQUEST_FILE_PREFIX = "mars-request-";
/** `mars-request-<runId>.<pid>.mars` → pid. */
export const REQUEST_FILE_PATTERN = /^mars-request-.+\.(\d+)\.mars$/;

/** Spawn, turning the errors the system raises at once into typed ones. */
function spawnOrExplain(
  command: readonly string[],
  env: NodeJS.ProcessEnv,
  cwd: string,
): ReturnType<typeof spawnInGroup> {
  try {
    return spawnInGroup(command, env, cwd);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "E2BIG") {
      throw new EnvironError("the environment or request is too large to start MARS (E2BIG)", {}, err);
    }
    throw new MarsSpawnError(`cannot start MARS: ${(err as Error).message}`, {}, err);
  }
}

/** Start MARS for these requests; follow `run.events()` and await `run.outcome`. */
export function startMars(opts: RunOptions): MarsRun {
  return new MarsRun(opts);
}
