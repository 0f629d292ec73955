/** MARS log lines: `mars - INFO   - 20200723.133423 - Welcome to MARS`. */
export type MarsLogLevel = "INFO" | "WARN" | "ERROR" | "DEBUG";

function pad2(n: number): string {
  return String(n).padStart(2, "0");
}

/** MARS's own time stamp: `YYYYMMDD.HHMMSS` in UTC. */
export function marsTimestamp(at: Date = new Date()): string {
  return (
    `${at.getUTCFullYear()}${pad2(at.getUTCMonth() + 1)}${pad2(at.getUTCDate())}.` +
    `${pad2(at.getUTCHours())}${pad2(at.getUTCMinutes())}${pad2(at.getUTCSeconds())}`
  );
}

export function formatLogLine(level: MarsLogLevel, message: string, at: Date = new Date()): string {
  return `mars - ${level.padEnd(6)} - ${marsTimestamp(at)} - ${message}`;
}

const LINE = /^mars - (INFO|WARN|ERROR|DEBUG|FATAL)\s*- (\d{8}\.\d{6}) - (.*)$/;

export interface ParsedLogLine {
  level: string;
  timestamp: string;
  message: string;
}

/** Parse one MARS log line, or undefined when the line is not in MARS's format (e.g. the request echo). */
export function parseLogLine(line: string): ParsedLogLine | undefined {
  const m = LINE.exec(line);
  if (!m) return undefined;
  return { level: m[1]!, timestamp: m[2]!, message: m[3]! };
}

export function isErrorLine(line: string): boolean {
  const parsed = parseLogLine(line);
  return parsed !== undefined && (parsed.level === "ERROR" || parsed.level === "FATAL");
}

const TRANSFER = /^Transfering (\d+) bytes/;

/** The expected size announced by `Transfering N bytes`, if this line is one. */
export function transferBytes(line: string): number | undefined {
  const parsed = parseLogLine(line);
  if (!parsed) return undefined;
  const m = TRANSFER.exec(parsed.message.trim());
  return m ? Number(m[1]) : undefined;
}
