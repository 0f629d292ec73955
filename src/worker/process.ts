/** A worker daemon in a child process (`mars-fleet worker`): for the demo, the benchmark and tests. */
import { spawn, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import { setTimeout as sleep } from "node:timers/promises";
import { own } from "../core/index.js";
import { LineSplitter } from "../runner/index.js";

export const CLI_SCRIPT = fileURLToPath(new URL("../../../bin/mars-fleet.js", import.meta.url));
const START_TIMEOUT_MS = 15_000;

export interface WorkerProcess {
  id: string;
  proc: ChildProcess;
  /** Its pino log records, parsed. */
  logs: Array<Record<string, unknown>>;
  exited: Promise<number | null>;
  kill(signal?: NodeJS.Signals): void;
}

/**
 * Start `mars-fleet worker --worker-id <id>` with this environment and wait until it pulls jobs.
 * `wrap`: a command that runs it, e.g. `["ip", "netns", "exec", "<ns>"]` (which execs it in place).
 */
export async function startWorkerProcess(
  id: string,
  env: NodeJS.ProcessEnv,
  onLog?: (line: string) => void,
  wrap: string[] = [],
): Promise<WorkerProcess> {
  const argv = [...wrap, process.execPath, CLI_SCRIPT, "worker", "--worker-id", id];
  const proc = spawn(argv[0]!, argv.slice(1), {
    env,
    stdio: ["ignore", "ignore", "pipe"],
  });
  own(proc); // not left running if the process that started it ends first
  const logs: Array<Record<string, unknown>> = [];
  const splitter = new LineSplitter();
  proc.stderr!.on("data", (d: Buffer) => {
    for (const line of splitter.push(d)) {
      onLog?.(line);
      try {
        logs.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        logs.push({ msg: line });
      }
    }
  });
  const exited = new Promise<number | null>((resolve) => proc.on("exit", (code) => resolve(code)));
  const worker: WorkerProcess = { id, proc, logs, exited, kill: (signal = "SIGTERM") => proc.kill(signal) };
  const deadline = Date.now() + START_TIMEOUT_MS;
  while (!logs.some((l) => l["msg"] === "worker started")) {
    if (proc.exitCode !== null || Date.now() > deadline) {
      proc.kill("SIGKILL");
      throw new Error(`worker ${id} did not start: ${JSON.stringify(logs.slice(-3))}`);
    }
    await sleep(20);
  }
  return worker;
}
