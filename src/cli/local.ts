/** `mars-fleet run` (MARS on this machine) and `mars-fleet sim` (the bundled simulator). */
import { basename, dirname, resolve } from "node:path";
import { executeMarsLocally } from "../client/index.js";
import { type FleetConfig, marsCommandArgv } from "../config/index.js";
import { formatDuration } from "../core/index.js";
import { ProgressDisplay } from "./output.js";
import { parseEnviron, readRequestFile } from "./request-file.js";

export interface RunArgs {
  request: string;
  target: string;
  environ?: string[];
  json: boolean;
}

export async function runLocal(args: RunArgs, config: FleetConfig): Promise<number> {
  const request = await readRequestFile(args.request);
  const target = resolve(args.target);
  const label = basename(target);
  const display = new ProgressDisplay(!args.json && process.stderr.isTTY === true);
  const ac = new AbortController();
  const onSignal = (): void => ac.abort();
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  try {
    const command = marsCommandArgv(config);
    const result = await executeMarsLocally(request, {
      targetDir: dirname(target),
      targetFname: basename(target),
      environ: parseEnviron(args.environ),
      filterLogs: config.filterLogs,
      onLog: (line) => display.log(line),
      onProgress: (p) => display.update(label, p.bytes, p.total),
      signal: ac.signal,
      timeoutMs: config.jobTimeout,
      killGraceMs: config.killGrace,
      ...(command && { command }),
    });
    display.stop();
    if (args.json) {
      process.stdout.write(
        JSON.stringify({ target: result.target, bytes: result.bytes, elapsedMs: result.elapsedMs }) + "\n",
      );
    } else {
      process.stdout.write(
        `${result.target}: ${result.bytes} bytes in ${formatDuration(result.elapsedMs)}\n`,
      );
    }
    return 0;
  } finally {
    display.stop();
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
}

export async function runSim(requestFile: string | undefined): Promise<number> {
  // The simulator's own entry (a command of its own): loaded only for `mars-fleet sim`.
  const { simulatorMain } = await import("../sim/main.js");
  return simulatorMain(requestFile === undefined ? [] : [requestFile]);
}
