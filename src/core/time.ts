/** Durations in milliseconds, with readable units. */
export const MILLISECOND = 1;
export const SECOND = 1000 * MILLISECOND;
export const MINUTE = 60 * SECOND;
export const HOUR = 60 * MINUTE;
export const DAY = 24 * HOUR;

const UNITS: Record<string, number> = { ms: MILLISECOND, s: SECOND, m: MINUTE, h: HOUR, d: DAY };

/**
 * Parse a duration: `250ms`, `30s`, `2m`, `1h`, `7d`, or a bare number of seconds (`30`, `0.5`),
 * the convention cads-mars-server's settings use. Returns milliseconds, or undefined if invalid.
 */
export function parseDuration(input: string | number): number | undefined {
  if (typeof input === "number") return Number.isFinite(input) && input >= 0 ? input * SECOND : undefined;
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$/.exec(input);
  if (!m) return undefined;
  return Math.round(Number(m[1]) * UNITS[m[2] ?? "s"]!);
}

/** `1.2 s`, `350 ms`, `3 min 5 s` for people. */
export function formatDuration(ms: number): string {
  if (ms < SECOND) return `${Math.round(ms)} ms`;
  if (ms < MINUTE) return `${(ms / SECOND).toFixed(1)} s`;
  if (ms >= DAY) return `${Math.floor(ms / DAY)} d ${Math.round((ms % DAY) / HOUR)} h`;
  return `${Math.floor(ms / MINUTE)} min ${Math.round((ms % MINUTE) / SECOND)} s`;
}
