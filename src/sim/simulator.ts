/**
 * The MARS simulator: a stand-in for ECMWF's `mars` client with the same request language,
 * log lines, exit codes and GRIB2 output. Behaviour knobs come from `MARS_SIM_*` variables.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, fsyncSync, openSync, writeSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import { z } from "zod";
import { describeZodError, MarsRequestError } from "../core/index.js";
import { formatLogLine, type MarsLogLevel, type MarsRequest, parseRequests } from "../mars/index.js";
import { fieldValues, planRetrieval } from "./fields.js";
import { encodeGrib2 } from "./grib.js";

const count = z.coerce.number().int().min(0);
/** Behaviour knobs, each from an environment variable `MARS_SIM_<NAME>`. */
export const simKnobsSchema = z.object({
  FIELD_DELAY_MS: count.default(0),
  BYTES_PER_SEC: count.default(0),
  LOG_LINES: count.default(0),
  LOG_INTERVAL_MS: count.default(0),
  FAIL_AFTER_BYTES: count.optional(),
  KILL_AFTER_BYTES: count.optional(),
  /** The signal KILL_AFTER_BYTES kills with: SIGKILL (an operator's kill) by default. */
  KILL_SIGNAL: z.enum(["SIGKILL", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGSEGV"]).default("SIGKILL"),
  HANG: z.enum(["0", "1", "true", "false"]).default("0"),
  SPAWN_CHILD: z.enum(["0", "1", "true", "false"]).default("0"),
});
export type SimKnobs = z.infer<typeof simKnobsSchema>;

export function readKnobs(env: NodeJS.ProcessEnv): SimKnobs {
  const raw: Record<string, string> = {};
  for (const [name, value] of Object.entries(env)) {
    if (name.startsWith("MARS_SIM_") && value !== undefined && value !== "") raw[name.slice(9)] = value;
  }
  const parsed = simKnobsSchema.strict().safeParse(raw);
  if (!parsed.success)
    throw new MarsRequestError(`invalid MARS_SIM_* setting: ${describeZodError(parsed.error)}`);
  return parsed.data;
}

const yes = (v: string): boolean => v === "1" || v === "true";
const WRITE_CHUNK = 64 * 1024;
/** Exit code for request errors, as the real client uses. */
export const EXIT_REQUEST_ERROR = 1;

export interface SimIo {
  /** Request text, when not read from a file argument. */
  readStdin: () => Promise<string>;
  readFile: (path: string) => Promise<string>;
  write: (text: string) => void;
  env: NodeJS.ProcessEnv;
  now?: () => Date;
}

class Output {
  private pending: string[] = [];
  constructor(private readonly io: SimIo) {}
  log(level: MarsLogLevel, message: string): void {
    this.pending.push(formatLogLine(level, message, this.io.now?.() ?? new Date()));
    if (this.pending.length >= 512) this.flush();
  }
  raw(line: string): void {
    this.pending.push(line);
  }
  flush(): void {
    if (this.pending.length === 0) return;
    this.io.write(this.pending.join("\n") + "\n");
    this.pending = [];
  }
}

function echoRequest(out: Output, req: MarsRequest): void {
  out.raw(`${req.verb.toUpperCase()},`);
  const entries = Object.entries(req.params);
  entries.forEach(([key, tokens], i) => {
    const value = key === "target" ? `"${tokens.join("/")}"` : tokens.join("/").toUpperCase();
    out.raw(`    ${key.toUpperCase().padEnd(10)} = ${value}${i < entries.length - 1 ? "," : ""}`);
  });
}

function mbytes(bytes: number): string {
  return (bytes / (1024 * 1024)).toFixed(2);
}

function rate(bytes: number, ms: number): string {
  const secs = ms / 1000;
  const when = secs < 1 ? "< 1 sec" : `${secs.toFixed(0)} secs`;
  return `${mbytes(bytes)} Mbyte(s) in ${when} [${(bytes / (1024 * 1024) / Math.max(secs, 0.001)).toFixed(2)} Mbyte/sec]`;
}

/** Thrown inside the run to stop with an ERROR line and an exit code. */
class SimFailure extends Error {
  constructor(
    message: string,
    readonly exitCode: number,
  ) {
    super(message);
  }
}

class TargetWriter {
  private fds = new Map<string, number>();
  written = 0;
  private startedAt = Date.now();
  constructor(private readonly knobs: SimKnobs) {}

  async write(path: string, data: Buffer): Promise<void> {
    let fd = this.fds.get(path);
    if (fd === undefined) {
      fd = openSync(path, "w");
      this.fds.set(path, fd);
    }
    for (let off = 0; off < data.length; off += WRITE_CHUNK) {
      const chunk = data.subarray(off, Math.min(data.length, off + WRITE_CHUNK));
      await this.beforeWrite(chunk.length);
      writeSync(fd, chunk);
      this.written += chunk.length;
    }
  }

  private async beforeWrite(size: number): Promise<void> {
    const { FAIL_AFTER_BYTES: failAt, KILL_AFTER_BYTES: killAt, BYTES_PER_SEC: bps } = this.knobs;
    // Throttle first: a failure strikes when the next chunk is due, so what was written stays readable meanwhile.
    if (bps > 0) {
      const due = this.startedAt + ((this.written + size) / bps) * 1000;
      const wait = due - Date.now();
      if (wait > 0) await sleep(wait);
    }
    if (killAt !== undefined && this.written + size > killAt) {
      this.closeAll();
      process.kill(process.pid, this.knobs.KILL_SIGNAL);
      await sleep(60_000);
    }
    if (failAt !== undefined && this.written + size > failAt) {
      throw new SimFailure(`Exception: Write error on target after ${this.written} bytes (simulated)`, 4);
    }
  }

  closeAll(): void {
    for (const fd of this.fds.values()) {
      fsyncSync(fd);
      closeSync(fd);
    }
    this.fds.clear();
  }
}

async function retrieve(
  out: Output,
  req: MarsRequest,
  knobs: SimKnobs,
  writer: TargetWriter,
  now: Date,
): Promise<void> {
  const target = req.params["target"]?.[0];
  if (!target)
    throw new SimFailure('No target given for retrieve: add target="file.grib"', EXIT_REQUEST_ERROR);
  const plan = planRetrieval(req, now);
  const n = plan.fields.length;
  out.log("INFO", `Requesting ${n + plan.missing} field${n + plan.missing === 1 ? "" : "s"}`);
  out.log("INFO", `Calling mars on 'simulated-fdb', local port is ${40000 + (process.pid % 20000)}`);
  out.log("INFO", "Retrieving from FDB [simulator]");
  if (plan.missing > 0)
    out.log("WARN", `${plan.missing} field${plan.missing === 1 ? "" : "s"} not found (no data)`);
  if (n === 0) {
    out.log("WARN", "No data");
    return;
  }
  out.log(
    "INFO",
    `Request cost: ${n} field${n === 1 ? "" : "s"}, ${mbytes(plan.totalBytes)} Mbytes online, nodes: sim01 [marsod]`,
  );
  out.log("INFO", `Transfering ${plan.totalBytes} bytes`);
  out.flush();
  const started = Date.now();
  for (const field of plan.fields) {
    if (knobs.FIELD_DELAY_MS > 0) await sleep(knobs.FIELD_DELAY_MS);
    const values = fieldValues(field, plan.grid);
    await writer.write(
      target,
      encodeGrib2({ ...field, typeOfData: plan.typeOfData, grid: plan.grid, values }),
    );
  }
  const elapsed = Date.now() - started;
  out.log("INFO", `  Read from network: ${rate(plan.totalBytes, elapsed)}`);
  out.log("INFO", `  Writing to target file: ${rate(plan.totalBytes, elapsed)}`);
}

async function extraLines(out: Output, knobs: SimKnobs): Promise<void> {
  for (let i = 1; i <= knobs.LOG_LINES; i++) {
    out.log("INFO", `Simulated progress message ${i} of ${knobs.LOG_LINES} (t=${Date.now()})`);
    if (knobs.LOG_INTERVAL_MS > 0) {
      out.flush();
      await sleep(knobs.LOG_INTERVAL_MS);
    }
  }
  out.flush();
}

function spawnHelper(out: Output): ChildProcess {
  // A child in the same process group, as the real client's shell wrapper has: it must die with the group.
  const child = spawn("sleep", ["86400"], { stdio: "ignore" });
  out.log("INFO", `Started helper process pid ${child.pid}`);
  out.flush();
  return child;
}

/** Run the simulator; resolves to the process exit code. */
export async function runSimulator(args: string[], io: SimIo): Promise<number> {
  const out = new Output(io);
  const now = io.now?.() ?? new Date();
  let helper: ChildProcess | undefined;
  try {
    const knobs = readKnobs(io.env);
    const writer = new TargetWriter(knobs);
    out.log("WARN", "This is the mars-fleet MARS simulator, not ECMWF's MARS client");
    out.log("INFO", "Welcome to MARS");
    out.log("INFO", "Maximum retrieval size is 50.00 G");
    if (io.env["MARS_AUTO_SPLIT_BY_DATES"] !== "0") out.log("INFO", "Automatic split by date is on");
    if (yes(knobs.SPAWN_CHILD)) helper = spawnHelper(out);
    if (yes(knobs.HANG)) {
      out.log("INFO", "Waiting for the data server (simulated hang)");
      out.flush();
      await new Promise<never>(() => setInterval(() => undefined, 60_000));
    }
    const text = args[0] !== undefined ? await io.readFile(args[0]) : await io.readStdin();
    const requests = parseRequests(text);
    for (const [i, req] of requests.entries()) {
      echoRequest(out, req);
      out.log("INFO", `Processing request ${i + 1}`);
      if (i === 0) await extraLines(out, knobs);
      if (req.verb === "retrieve") await retrieve(out, req, knobs, writer, now);
      else if (req.verb === "list") out.log("INFO", `List: ${planRetrieval(req, now).fields.length} fields`);
      else throw new SimFailure(`The simulator does not support "${req.verb}"`, EXIT_REQUEST_ERROR);
    }
    writer.closeAll();
    out.log("INFO", "No errors reported");
    return 0;
  } catch (err) {
    const exitCode = err instanceof SimFailure ? err.exitCode : EXIT_REQUEST_ERROR;
    const message = err instanceof Error ? err.message : String(err);
    if (!(err instanceof SimFailure) && !(err instanceof MarsRequestError)) {
      out.log("ERROR", `Exception: ${message}`);
      return 3;
    }
    out.log("ERROR", message);
    out.log("ERROR", "Request failed");
    return exitCode;
  } finally {
    out.flush();
    helper?.kill("SIGKILL");
  }
}
