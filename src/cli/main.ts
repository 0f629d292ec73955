/** The `mars-fleet` command: yargs parses, builds options and calls the library. */
import yargs from "yargs";
import { hideBin } from "yargs/helpers";
import { loadConfig, type FleetConfig } from "../config/load.js";
import { SETTINGS } from "../config/settings.js";
import { runLocal, runOptions, runSim, type RunArgs } from "./local.js";
import { reportError } from "./output.js";

type Args = Record<string, unknown> & { json?: boolean; config?: string };

/** Settings given as flags (`--shared-root` → sharedRoot), for the configuration's top layer. */
function overridesFrom(argv: Args): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const s of SETTINGS) if (argv[s.key] !== undefined) out[s.key] = argv[s.key];
  return out;
}

function configFrom(argv: Args): FleetConfig {
  return loadConfig({
    overrides: overridesFrom(argv),
    ...(argv.config !== undefined && { configFile: argv.config }),
  });
}

/** Run a handler, turning errors into messages and exit codes. */
function handle<A extends Args>(fn: (argv: A) => Promise<number>): (argv: A) => Promise<void> {
  return async (argv) => {
    try {
      process.exitCode = await fn(argv);
    } catch (err) {
      process.exitCode = reportError(err, argv.json === true);
    }
  };
}

export async function main(argv: string[]): Promise<void> {
  await yargs(hideBin(argv))
    .scriptName("mars-fleet")
    .usage(
      "$0 <command> [options]\n\nRun MARS requests locally or on a fleet of workers over NATS JetStream.",
    )
    .option("config", {
      type: "string",
      describe: "YAML configuration file (default /etc/mars-fleet.yaml, or MARS_CONFIG_FILE)",
    })
    .option("json", { type: "boolean", default: false, describe: "machine-readable output" })
    .command(
      "run <request>",
      "run a MARS request on this machine, with a progress bar and filtered logs",
      (y) => runOptions(y),
      handle((a) => runLocal(a as unknown as RunArgs, configFrom(a))),
    )
    .command(
      "sim [request]",
      "the bundled MARS simulator, invoked like the real mars client",
      (y) => y.positional("request", { type: "string", describe: "request file (default: stdin)" }),
      handle((a) => runSim(a["request"] as string | undefined)),
    )
    .demandCommand(1, "Name a command; see --help.")
    .strict()
    .recommendCommands()
    .epilogue(
      "Exit codes: 0 ok, 2 usage/config, 3 invalid request, 4 MARS error, 5 no data, 6 retryable failure, 7 cancelled, 8 timeout, 9 not found.\n",
    )
    .help()
    .wrap(Math.min(120, process.stdout.columns ?? 100))
    .parseAsync();
}
