import { pino, type Logger, type LoggerOptions } from "pino";

export type { Logger };

/** The root logger: structured JSON on stderr, so stdout stays free for data and CLI output. */
export function createLogger(opts: { level?: string; name?: string } = {}): Logger {
  const options: LoggerOptions = {
    level: opts.level ?? process.env["MARS_LOG_LEVEL"] ?? "info",
    base: { name: opts.name ?? "mars-fleet", pid: process.pid },
  };
  return pino(options, pino.destination({ fd: 2, sync: false }));
}

/** A logger that drops everything: the default for library calls that were given none. */
export function silentLogger(): Logger {
  return pino({ level: "silent" });
}
