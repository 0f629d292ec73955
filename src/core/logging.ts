import { pino, type Logger, type LoggerOptions } from "pino";

export type { Logger };

/** The root logger: structured JSON on stderr, so stdout stays free for data and CLI output. */
export function createLogger(opts: { level?: string; name?: string } = {}): Logger {
  const options: LoggerOptions = {
    level: opts.level ?? process.env["MARS_LOG_LEVEL"] ?? "info",
    base: { name: opts.name ?? "mars-fleet", pid: process.pid },
  };
  // Synchronous writes, pino's own default: a worker logs a few lines per job, and one write(2)
  // costs less than handing each line to libuv's thread pool and back.
  return pino(options, pino.destination({ fd: 2, sync: true }));
}

/** A logger that drops everything: the default for library calls that were given none. */
export function silentLogger(): Logger {
  return pino({ level: "silent" });
}
