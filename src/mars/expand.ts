import { MarsRequestError } from "../core/index.js";

const DAY_MS = 24 * 60 * 60 * 1000;

/** Expand `a/to/b/by/c` ranges in a token list; `convert` maps a token to a number. */
function expandRanges(
  key: string,
  tokens: string[],
  convert: (token: string) => number,
  defaultBy: number,
  limit: number,
): number[] {
  const out: number[] = [];
  for (let i = 0; i < tokens.length; i++) {
    const next = tokens[i + 1]?.toLowerCase();
    if (next !== "to") {
      out.push(convert(tokens[i]!));
      continue;
    }
    const from = convert(tokens[i]!);
    const toToken = tokens[i + 2];
    if (toToken === undefined)
      throw new MarsRequestError(`"${key}": range without an end after "to"`, { key });
    const to = convert(toToken);
    let by = defaultBy;
    i += 2;
    if (tokens[i + 1]?.toLowerCase() === "by") {
      const byToken = tokens[i + 2];
      by = Number(byToken);
      if (byToken === undefined || !Number.isInteger(by) || by === 0) {
        throw new MarsRequestError(`"${key}": "by" needs a non-zero whole number`, { key });
      }
      i += 2;
    }
    if ((to - from) * by < 0)
      throw new MarsRequestError(`"${key}": range ${from} to ${to} by ${by} is empty`, { key });
    for (let v = from; by > 0 ? v <= to : v >= to; v += by) {
      out.push(v);
      if (out.length > limit) throw new MarsRequestError(`"${key}": more than ${limit} values`, { key });
    }
  }
  return out;
}

/** A date token as days since the epoch (UTC): `20240101`, `2024-01-01`, `0` (today), `-1` (yesterday). */
export function dateToDays(token: string, today: Date = new Date()): number {
  const todayDays = Math.floor(today.getTime() / DAY_MS);
  if (/^-?\d{1,4}$/.test(token) && Number(token) <= 0) return todayDays + Number(token);
  const m = /^(\d{4})-?(\d{2})-?(\d{2})$/.exec(token);
  if (!m)
    throw new MarsRequestError(`invalid date "${token}": use YYYYMMDD, YYYY-MM-DD or -N`, { key: "date" });
  const [y, mo, d] = [Number(m[1]), Number(m[2]), Number(m[3])];
  const ms = Date.UTC(y, mo - 1, d);
  const check = new Date(ms);
  if (check.getUTCFullYear() !== y || check.getUTCMonth() !== mo - 1 || check.getUTCDate() !== d) {
    throw new MarsRequestError(`invalid date "${token}": no such day`, { key: "date" });
  }
  return ms / DAY_MS;
}

/** Days since the epoch back to `YYYYMMDD` as a number. */
export function daysToYmd(days: number): number {
  const d = new Date(days * DAY_MS);
  return d.getUTCFullYear() * 10000 + (d.getUTCMonth() + 1) * 100 + d.getUTCDate();
}

export function expandDates(tokens: string[], today: Date = new Date()): number[] {
  return expandRanges("date", tokens, (t) => dateToDays(t, today), 1, 100_000).map(daysToYmd);
}

/** A time token as HHMM: `00:00`, `0000`, `0`, `12`, `1200`. */
export function parseTime(token: string): number {
  let hh: number;
  let mm = 0;
  const colon = /^(\d{1,2}):(\d{2})$/.exec(token);
  if (colon) {
    hh = Number(colon[1]);
    mm = Number(colon[2]);
  } else if (/^\d{3,4}$/.test(token)) {
    hh = Math.floor(Number(token) / 100);
    mm = Number(token) % 100;
  } else if (/^\d{1,2}$/.test(token)) {
    hh = Number(token);
  } else {
    throw new MarsRequestError(`invalid time "${token}": use HH:MM, HHMM or HH`, { key: "time" });
  }
  if (hh > 23 || mm > 59) throw new MarsRequestError(`invalid time "${token}"`, { key: "time" });
  return hh * 100 + mm;
}

export function expandTimes(tokens: string[]): number[] {
  // Ranges of times step in hours: 0/to/18/by/6.
  const hours = expandRanges("time", tokens, (t) => parseTime(t) / 100, 6, 10_000);
  return hours.map((h) => Math.round(h * 100));
}

/** Whole numbers with ranges: steps, levels, ensemble numbers. */
export function expandIntegers(key: string, tokens: string[]): number[] {
  return expandRanges(
    key,
    tokens,
    (t) => {
      const n = Number(t);
      if (!Number.isInteger(n) || n < 0)
        throw new MarsRequestError(`invalid ${key} "${t}": expected a whole number`, { key });
      return n;
    },
    1,
    100_000,
  );
}
