import { z } from "zod";
import { describeZodError, MarsRequestError } from "../core/index.js";

/** Verbs the MARS client understands. */
export const MARS_VERBS = ["retrieve", "list", "archive", "read", "stage"] as const;
export type MarsVerb = (typeof MARS_VERBS)[number];

/** Keywords we know; a unique prefix of one of them is expanded to it, as MARS does. */
export const KNOWN_KEYWORDS = [
  "accuracy",
  "anoffset",
  "area",
  "channel",
  "class",
  "database",
  "date",
  "diagnostic",
  "domain",
  "duplicates",
  "expect",
  "expver",
  "fcmonth",
  "fcperiod",
  "fieldset",
  "format",
  "frame",
  "grid",
  "hdate",
  "ident",
  "instrument",
  "interpolation",
  "iteration",
  "leadtime",
  "levelist",
  "levtype",
  "method",
  "month",
  "number",
  "obstype",
  "origin",
  "packing",
  "padding",
  "param",
  "product",
  "reportype",
  "resol",
  "rotation",
  "section",
  "source",
  "step",
  "stream",
  "style",
  "system",
  "target",
  "time",
  "truncation",
  "type",
  "use",
  "year",
] as const;

/** Keys whose value is one string (a path), never split on `/`, always quoted on output. */
export const SINGLE_VALUE_KEYS: ReadonlySet<string> = new Set(["target", "source", "fieldset"]);

/** A normalised MARS request: lower-case verb and keys, every value a list of string tokens. */
export interface MarsRequest {
  verb: MarsVerb;
  params: Record<string, string[]>;
}

const scalar = z.union([z.string(), z.number().finite()]);
/** What users may hand us as one request: `{verb?, key: value | [values]}`. */
export const requestObjectSchema = z.record(z.string(), z.union([scalar, z.array(scalar).min(1)]));
export type MarsRequestObject = z.infer<typeof requestObjectSchema>;

export const KEY_PATTERN = /^[a-z][a-z0-9_]*$/;
// eslint-disable-next-line no-control-regex
const CONTROL_CHARS = /[\u0000-\u001f\u007f]/;

/** Resolve a keyword, expanding unambiguous abbreviations (`levt` → `levtype`). */
export function canonicalKey(raw: string): string {
  const key = raw.trim().toLowerCase();
  if (!KEY_PATTERN.test(key)) {
    throw new MarsRequestError(`invalid keyword ${JSON.stringify(raw)}: keywords are letters, digits and _`, {
      key: raw,
    });
  }
  if ((KNOWN_KEYWORDS as readonly string[]).includes(key)) return key;
  const candidates = KNOWN_KEYWORDS.filter((k) => k.startsWith(key));
  if (candidates.length === 1 && key.length >= 2) return candidates[0]!;
  if (candidates.length > 1) {
    throw new MarsRequestError(`ambiguous keyword "${raw}": could be ${candidates.join(", ")}`, { key: raw });
  }
  return key;
}

export function canonicalVerb(raw: string): MarsVerb {
  const verb = raw.trim().toLowerCase();
  const match = MARS_VERBS.find((v) => v === verb || (verb.length >= 3 && v.startsWith(verb)));
  if (!match) {
    throw new MarsRequestError(`unknown verb "${raw}": expected one of ${MARS_VERBS.join(", ")}`, {
      verb: raw,
    });
  }
  return match;
}

/**
 * Check one value token; throws a MarsRequestError naming the key when it cannot be written safely.
 * Commas, `=`, backslashes and one kind of quote are fine: the value is quoted when written (see
 * text.ts). What no quoting can hold is refused: a newline or control character, or both quote kinds.
 */
export function checkToken(key: string, token: string): string {
  if (CONTROL_CHARS.test(token)) {
    throw new MarsRequestError(`value of "${key}" contains a newline or control character`, { key });
  }
  if (token.includes('"') && token.includes("'")) {
    throw new MarsRequestError(
      `value of "${key}" contains both ' and ", which MARS cannot quote: ${JSON.stringify(token)}`,
      { key },
    );
  }
  if (token.trim() === "") throw new MarsRequestError(`empty value for "${key}"`, { key });
  return token.trim();
}

function tokensOf(key: string, value: string | number | Array<string | number>): string[] {
  const items = Array.isArray(value) ? value : [value];
  const tokens: string[] = [];
  for (const item of items) {
    const text = String(item);
    if (SINGLE_VALUE_KEYS.has(key)) {
      if (items.length > 1) throw new MarsRequestError(`"${key}" takes a single value`, { key });
      tokens.push(checkToken(key, text));
    } else {
      for (const part of text.split("/")) tokens.push(checkToken(key, part));
    }
  }
  return tokens;
}

/** Validate and normalise one request given as an object (`verb` key optional, default retrieve). */
export function normaliseRequest(input: unknown): MarsRequest {
  const parsed = requestObjectSchema.safeParse(input);
  if (!parsed.success) {
    throw new MarsRequestError(`invalid MARS request: ${describeZodError(parsed.error)}`, {}, parsed.error);
  }
  let verb: MarsVerb = "retrieve";
  const params: Record<string, string[]> = {};
  for (const [rawKey, value] of Object.entries(parsed.data)) {
    if (rawKey.trim().toLowerCase() === "verb") {
      if (Array.isArray(value)) throw new MarsRequestError(`"verb" takes a single value`, { key: "verb" });
      verb = canonicalVerb(String(value));
      continue;
    }
    const key = canonicalKey(rawKey);
    if (key in params) throw new MarsRequestError(`keyword "${key}" given twice`, { key });
    params[key] = tokensOf(key, value);
  }
  return { verb, params };
}

/** Validate one or several requests (a list inherits keys from the previous request). */
export function normaliseRequests(input: unknown): MarsRequest[] {
  const list = Array.isArray(input) ? input : [input];
  if (list.length === 0) throw new MarsRequestError("an empty list of requests");
  return inheritKeys(list.map((item, i) => withIndex(i, () => normaliseRequest(item))));
}

function withIndex<T>(index: number, fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    if (err instanceof MarsRequestError) {
      throw new MarsRequestError(`request ${index + 1}: ${err.message}`, {
        ...err.details,
        request: index + 1,
      });
    }
    throw err;
  }
}

/** Keys not repeated are inherited from the previous request, as MARS does within one file. */
export function inheritKeys(requests: MarsRequest[]): MarsRequest[] {
  const out: MarsRequest[] = [];
  let previous: Record<string, string[]> = {};
  for (const req of requests) {
    const params = { ...previous, ...req.params };
    out.push({ verb: req.verb, params });
    previous = params;
  }
  return out;
}

/** Return a copy with `key` set to one value (used to point `target` somewhere else). */
export function withParam(req: MarsRequest, key: string, value: string): MarsRequest {
  const canonical = canonicalKey(key);
  return { verb: req.verb, params: { ...req.params, [canonical]: [checkToken(canonical, value)] } };
}

/** The plain-object form (JSON friendly): `{verb, key: "a/b"}` or `{verb, key: "a"}`. */
export function requestToObject(req: MarsRequest): Record<string, string> {
  const out: Record<string, string> = { verb: req.verb };
  for (const [key, tokens] of Object.entries(req.params)) out[key] = tokens.join("/");
  return out;
}
