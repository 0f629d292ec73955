/** The `mars-fleet` command: yargs parses, builds options and calls the library. */
import yargs from "yargs";
import { hideBin } from "yargs/helpers";
import { flagName, type FleetConfig, loadConfig, SETTINGS } from "../config/index.js";
import { JOB_STATES, type JobState } from "../broker/index.js";
import type { Argv, CommandModule } from "yargs";
import type { SubmitArgs } from "./fleet.js";
import type { RunArgs } from "./local.js";
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

// Each command loads its modules when it runs: a worker does not carry the gateway's HTTP stack.
const fleetCli = (): Promise<typeof import("./fleet.js")> => import("./fleet.js");

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

/** Options of `run`. */
export function runOptions<T>(y: Argv<T>) {
  return settingOptions(y, ["useShares"])
    .positional("request", {
      type: "string",
      demandOption: true,
      describe: "request file: .json or MARS request text (- for stdin)",
    })
    .option("target", { type: "string", demandOption: true, describe: "where to write the GRIB result" })
    .option("environ", {
      type: "string",
      array: true,
      describe: "client environ as key=value (request_id, user_id...)",
    })
    .option("mars-command", { type: "string", describe: "MARS executable (default: the bundled simulator)" })
    .option("job-timeout", { type: "string", describe: 'wall-clock limit, e.g. "10m" (default: none)' })
    .option("filter-logs", {
      type: "boolean",
      describe: "show only important log lines (--no-filter-logs for all)",
    });
}

/** Options every fleet command takes. */
/** The settings every command that talks to the fleet takes as flags: how to reach and trust it. */
const FLEET_SETTINGS = [
  "servers",
  "queue",
  "sharedRoot",
  "requestTimeout",
  "creds",
  "natsUser",
  "natsPassword",
  "tlsCa",
  "tlsCert",
  "tlsKey",
  "trustKey",
  "signingKey",
];

/**
 * A setting's help cut to its first clause for a flag's description: every process parses its
 * command line, and yargs costs a worker 2.5 MB of resident memory more with the settings' full help
 * texts (docs/PERFORMANCE.md); the README's table has them whole.
 */
function brief(help: string): string {
  const first = help.split(/(?<=[a-z)])[.;:] /)[0]!.replaceAll("…", "...");
  return first.length <= 72 ? first : `${first.slice(0, 69)}...`;
}

/** Flags for settings, defined by the settings table itself (its help text and environment name). */
function settingOptions<T>(y: Argv<T>, keys: string[]): Argv<T> {
  let out = y;
  for (const key of keys) {
    const s = SETTINGS.find((x) => x.key === key);
    if (!s) throw new Error(`no setting ${key}`); // a programming error: the list names a setting
    out = out.option(flagName(key), {
      type: s.kind === "bool" ? "boolean" : "string",
      describe: `${brief(s.help)} (${s.env})`,
    });
  }
  return out;
}

function fleetOptions<T>(y: Argv<T>) {
  return settingOptions(y, FLEET_SETTINGS);
}

function workerOptions<T>(y: Argv<T>) {
  // The topology's settings too: `broker init` makes it with them, a worker checks them.
  return settingOptions(fleetOptions(y), [
    "streamReplicas",
    "eventsMaxAge",
    "retention",
    "laneIdle",
    "keeper",
    "cacheMaxBytes",
    "cacheTtl",
  ])
    .option("concurrency", { type: "number", describe: "job slots (MARS_WORKER_CONCURRENCY, default 2)" })
    .option("mars-command", {
      type: "string",
      describe: "MARS executable (MARS_COMMAND; default: the bundled simulator)",
    })
    .option("heartbeat-interval", {
      alias: "heartbeat",
      type: "string",
      describe: "heartbeat period; ack wait is 3x (MARS_HEARTBEAT_INTERVAL)",
    })
    .option("drain-grace", {
      type: "string",
      describe: "on SIGTERM, time for running jobs to finish (MARS_DRAIN_GRACE)",
    })
    .option("kill-grace", { type: "string", describe: "SIGTERM to SIGKILL delay for MARS (MARS_KILL_GRACE)" })
    .option("max-retries", { type: "number", describe: "attempts per job (MARS_MAX_RETRIES)" })
    .option("retry-delay", {
      type: "string",
      describe: "delay before a retry, grows per attempt (MARS_RETRY_DELAY)",
    })
    .option("max-concurrent-connections", {
      type: "number",
      describe: "fleet-wide cap on running jobs (MARS_MAX_CONCURRENT_CONNECTIONS)",
    })
    .option("log-level", { type: "string", describe: "pino log level (MARS_LOG_LEVEL)" })
    .option("metrics-port", {
      type: "number",
      describe: "serve Prometheus metrics at /metrics (MARS_METRICS_PORT; 0 = off)",
    })
    .option("worker-id", { type: "string", describe: "worker id (default host-pid-random)" });
}

/** Every command: what it is called, what it does, its options, and the module that runs it. */
const COMMANDS: Array<CommandModule<object, Args>> = [
  {
    command: "run <request>",
    describe: "run a MARS request on this machine, with a progress bar and filtered logs",
    builder: (y) => runOptions(y),
    handler: handle(async (a) =>
      (await import("./local.js")).runLocal(a as unknown as RunArgs, configFrom(a)),
    ),
  },
  {
    command: "sim [request]",
    describe: "the bundled MARS simulator, invoked like the real mars client",
    builder: (y) => y.positional("request", { type: "string", describe: "request file (default: stdin)" }),
    handler: handle(async (a) => (await import("./local.js")).runSim(a["request"] as string | undefined)),
  },
  {
    command: "worker",
    describe: "run a worker daemon: pull jobs, run MARS, stream events (SIGTERM drains, a second one forces)",
    builder: (y) => workerOptions(y),
    handler: handle(async (a) =>
      (await import("./worker.js")).runWorker(configFrom(a), a["workerId"] as string | undefined),
    ),
  },
  {
    command: "keeper",
    describe:
      "make and edit lane consumers when workers ask (the only role that may: run one or more with the keeper credentials)",
    builder: (y) =>
      fleetOptions(y).option("log-level", { type: "string", describe: "pino log level (MARS_LOG_LEVEL)" }),
    handler: handle(async (a) => (await import("./keeper.js")).runKeeper(configFrom(a))),
  },
  {
    command: "gateway",
    describe: "serve cads-mars-server's pipe (HTTP) and shares (WebSocket) protocols in front of the fleet",
    builder: (y) =>
      settingOptions(fleetOptions(y), ["gatewaySharesEnv", "gatewayPipeRequestId"])
        .option("pipe-port", {
          type: "number",
          describe: "pipe mode HTTP port (MARS_PIPE_PORT, default 9000)",
        })
        .option("shares-port", {
          type: "number",
          describe: "shares mode WebSocket port (MARS_SHARES_PORT, default 9001)",
        })
        .option("gateway-host", {
          type: "string",
          describe: "listen address (MARS_GATEWAY_HOST, default 0.0.0.0)",
        })
        .option("gateway-data", {
          choices: ["share", "objectstore"],
          describe: "pipe mode data path (MARS_GATEWAY_DATA)",
        })
        .option("heartbeat-interval", {
          alias: "heartbeat",
          type: "string",
          describe: "shares mode heartbeat period (MARS_HEARTBEAT_INTERVAL)",
        })
        .option("max-concurrent-connections", {
          type: "number",
          describe: "shares mode connection limit (MARS_MAX_CONCURRENT_CONNECTIONS)",
        })
        .option("log-level", { type: "string", describe: "pino log level (MARS_LOG_LEVEL)" }),
    handler: handle(async (a) => (await import("./gateway.js")).runGateway(configFrom(a))),
  },
  {
    command: "submit <request>",
    describe: "put a MARS request on the fleet's queue",
    builder: (y) =>
      fleetOptions(y)
        .positional("request", {
          type: "string",
          demandOption: true,
          describe: "request file: .json or MARS text (- for stdin)",
        })
        .option("target", {
          type: "string",
          demandOption: true,
          describe: "result path, under the shared root (absolute or relative to it)",
        })
        .option("follow", {
          alias: "f",
          type: "boolean",
          default: false,
          describe: "follow logs and progress; exit code from the outcome",
        })
        .option("request-id", {
          type: "string",
          describe: "idempotency key: resubmitting returns the same job",
        })
        .option("environ", { type: "string", array: true, describe: "client environ as key=value" })
        .option("split", {
          type: "string",
          array: true,
          describe:
            "run in parts on many workers at once, assembled into one target: date:month, date:N (days), param, step, levelist, number, time (repeat to combine)",
        })
        .option("callback", {
          type: "string",
          describe: "POST the job's record to this URL when it ends (signed; sent by `mars-fleet api`)",
        })
        .option("callback-secret", {
          type: "string",
          describe: "the callback's signing secret (default: one is made and printed on stderr)",
        })
        .option("job-timeout", { type: "string", describe: 'wall-clock limit of the job, e.g. "2h"' })
        .option("filter-logs", {
          type: "boolean",
          describe: "show only important log lines (--no-filter-logs for all)",
        }),
    handler: handle(async (a) => (await fleetCli()).submitCommand(a as unknown as SubmitArgs, configFrom(a))),
  },
  {
    command: "status <id>",
    describe: "show a job's record",
    builder: (y) => fleetOptions(y).positional("id", { type: "string", demandOption: true }),
    handler: handle(async (a) =>
      (await fleetCli()).statusCommand(a["id"] as string, a.json === true, configFrom(a)),
    ),
  },
  {
    command: "logs <id>",
    describe: "print a job's log (from the beginning)",
    builder: (y) =>
      fleetOptions(y).positional("id", { type: "string", demandOption: true }).option("follow", {
        alias: "f",
        type: "boolean",
        default: false,
        describe: "keep following until the job ends",
      }),
    handler: handle(async (a) =>
      (await fleetCli()).logsCommand(a["id"] as string, a["follow"] === true, a.json === true, configFrom(a)),
    ),
  },
  {
    command: "cancel <id>",
    describe: "cancel a job: a queued one never runs, a running one is killed",
    builder: (y) => fleetOptions(y).positional("id", { type: "string", demandOption: true }),
    handler: handle(async (a) =>
      (await fleetCli()).cancelCommand(a["id"] as string, a.json === true, configFrom(a)),
    ),
  },
  {
    command: "jobs",
    describe: "list jobs",
    builder: (y) =>
      fleetOptions(y)
        .option("state", { choices: JOB_STATES, describe: "only jobs in this state" })
        .option("parts", {
          type: "boolean",
          default: false,
          describe: "also list the parts of split jobs (hidden: a split job is one job)",
        }),
    handler: handle(async (a) =>
      (await fleetCli()).jobsCommand(
        a["state"] as JobState | undefined,
        a.json === true,
        configFrom(a),
        a["parts"] === true,
      ),
    ),
  },
  {
    command: "workers",
    describe: "list live workers",
    builder: (y) => fleetOptions(y),
    handler: handle(async (a) => (await fleetCli()).workersCommand(a.json === true, configFrom(a))),
  },
  {
    command: "usage",
    describe:
      "finished jobs per user and UTC day: MARS seconds, bytes, cache hits and the MARS time they saved",
    builder: (y) =>
      fleetOptions(y)
        .option("user", { type: "string", describe: "only this user" })
        .option("from", { type: "string", describe: "from this UTC day (YYYY-MM-DD)" })
        .option("to", { type: "string", describe: "to this UTC day (YYYY-MM-DD)" }),
    handler: handle(async (a) =>
      (await fleetCli()).usageCommand(
        {
          ...(a["user"] !== undefined && { user: String(a["user"]) }),
          ...(a["from"] !== undefined && { from: String(a["from"]) }),
          ...(a["to"] !== undefined && { to: String(a["to"]) }),
        },
        a.json === true,
        configFrom(a),
      ),
    ),
  },
  {
    command: "cache <action>",
    describe:
      "the result cache under the shared root: stats (entries, bytes, budget); purge [--older-than D] [--key K] (all entries without either)",
    builder: (y) =>
      workerOptions(y)
        .positional("action", { choices: ["stats", "purge"] as const, demandOption: true })
        .option("older-than", {
          type: "string",
          describe: "purge: entries last used longer ago than this (7d, 12h)",
        })
        .option("key", {
          type: "string",
          describe: "purge: the entry with this key (a job record's result.cached.key)",
        }),
    handler: handle(async (a) => {
      const cli = await import("./cache.js");
      return a["action"] === "stats"
        ? cli.cacheStats(a.json === true, configFrom(a))
        : cli.cachePurge(
            {
              ...(a["olderThan"] !== undefined && { olderThan: String(a["olderThan"]) }),
              ...(a["key"] !== undefined && { key: String(a["key"]) }),
            },
            a.json === true,
            configFrom(a),
          );
    }),
  },
  {
    command: "broker <action>",
    describe:
      "init: create streams, consumer and buckets (idempotent; reports drift; admin credentials); info: queue state; auth: generate per-role NATS users, their credentials files and nats-server's authorization block",
    builder: (y) =>
      workerOptions(y)
        .positional("action", { choices: ["init", "info", "auth"] as const, demandOption: true })
        .option("out", {
          type: "string",
          describe: "auth: directory for auth.conf and the credentials files",
        })
        .option("passwords", {
          type: "boolean",
          describe: "auth: users with bcrypt-hashed passwords instead of nkeys",
        })
        .option("force", { type: "boolean", describe: "auth: replace the files of an earlier run" }),
    handler: handle(async (a) =>
      a["action"] === "auth"
        ? (await fleetCli()).authCommand(
            {
              dir: (a["out"] as string | undefined) ?? "",
              passwords: a["passwords"] === true,
              force: a["force"] === true,
            },
            a.json === true,
          )
        : (await fleetCli()).brokerCommand(a["action"] as "init" | "info", a.json === true, configFrom(a)),
    ),
  },
  {
    command: "api [what] [action] [id]",
    describe:
      "serve the HTTP API (REST, SSE logs, results with Range; docs at /docs); `api keys add --user U [--role admin]`, `api keys list`, `api keys revoke ID` manage its API keys (admin credentials)",
    builder: (y) =>
      fleetOptions(y)
        .positional("what", { choices: ["keys"] as const, describe: "keys: manage API keys" })
        .positional("action", { choices: ["add", "list", "revoke"] as const })
        .positional("id", { type: "string", describe: "revoke: the key id" })
        .option("port", { type: "number", default: 8080, describe: "HTTP port of the API" })
        .option("host", { type: "string", default: "0.0.0.0", describe: "listen address of the API" })
        .option("user", { type: "string", describe: "keys add: the user the key speaks for" })
        .option("role", {
          choices: ["user", "admin"] as const,
          describe: "keys add: user (own jobs) or admin (all)",
        })
        .option("callback-backoff", {
          type: "string",
          describe: "first retry delay of a failed completion callback (MARS_CALLBACK_BACKOFF, default 1s)",
        })
        .option("callback-max-age", {
          type: "string",
          describe: "how long completion callbacks are retried (MARS_CALLBACK_MAX_AGE, default 1h)",
        })
        .option("callback-allow", {
          type: "string",
          describe:
            "address ranges callbacks may reach although private (MARS_CALLBACK_ALLOW, CIDRs, comma separated)",
        })
        .option("log-level", { type: "string", describe: "pino log level (MARS_LOG_LEVEL)" }),
    handler: handle(async (a) => {
      const api = await import("./api.js");
      if (a["what"] === "keys")
        return api.keysCommand(
          a["action"] as string | undefined,
          {
            ...(a["id"] !== undefined && { id: a["id"] as string }),
            ...(a["user"] !== undefined && { user: a["user"] as string }),
            ...(a["role"] !== undefined && { role: a["role"] as string }),
          },
          a.json === true,
          configFrom(a),
        );
      return api.serveApi(configFrom(a), a["port"] as number, a["host"] as string);
    }),
  },
  {
    command: "qos <action> [file]",
    describe:
      "apply: validate a QoS rules file and put it in force on every worker (admin credentials); show: the rules with running and queued counts",
    builder: (y) =>
      fleetOptions(y)
        .positional("action", { choices: ["apply", "show"] as const, demandOption: true })
        .positional("file", { type: "string", describe: "apply: the rules (YAML; see docs/QOS.md)" }),
    handler: handle(async (a) => {
      const qos = await import("./qos.js");
      return a["action"] === "apply"
        ? qos.qosApply(a["file"] as string | undefined, a.json === true, configFrom(a))
        : qos.qosShow(a.json === true, configFrom(a));
    }),
  },
];

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
    .command(COMMANDS)
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
