/**
 * The canonical key of a job's requests (#28): two jobs whose requests MARS answers with the same
 * fields, in the same order, get the same key; anything that changes the data changes it.
 *
 * How a request is read for its key:
 * - only `retrieve` is keyed (the other verbs write nothing to reuse, or depend on the archive's
 *   state: no key);
 * - `target` and `fieldset` are left out: they say where the data goes, not what it is (the job's
 *   environ and request id are not part of the request);
 * - keywords are already full and lower case (normaliseRequest expands abbreviations);
 * - defaults MARS fills are filled (`class=od`, `stream=oper`, `expver=0001`, `type=an`,
 *   `date=-1`, `time=0000`, `step=0`), so that leaving one out equals giving it;
 * - dates, times, steps, levels and ensemble numbers are expanded (`to`/`by` ranges, relative
 *   dates against today, `2024-01-01` as `20240101`, `06:00` as `0600`, `006` as `6`), and kept
 *   as sorted sets: MARS writes fields in its own order, not in the order a list is given (the
 *   simulator does the same, src/sim/fields.ts);
 * - parameters are their ids (`2t`, `167` and `167.128` are one), as a sorted set;
 * - every other value is lower case, in its given order (`area` and `grid` are ordered; for a key
 *   not known here, order is kept to be safe: two orders then make two keys, never a wrong hit);
 * - a job's several requests keep their order: MARS answers them one after another.
 */
import { createHash } from "node:crypto";
import { expandDates, expandIntegers, expandTimes } from "./expand.js";
import { lookupParam } from "./params.js";
import type { MarsRequest } from "./request.js";

/** Bumped whenever the key's reading of a request changes, so that older entries are not hit. */
const KEY_VERSION = "k1";

const LEFT_OUT: ReadonlySet<string> = new Set(["target", "fieldset"]);

const DEFAULTS: Readonly<Record<string, string[]>> = {
  class: ["od"],
  stream: ["oper"],
  expver: ["0001"],
  type: ["an"],
  date: ["-1"],
  time: ["0"],
  step: ["0"],
};

const sortedSet = (values: Array<string | number>): string[] =>
  [...new Set(values.map(String))].sort((a, b) => a.localeCompare(b, "en", { numeric: true }));

/** How one keyword's values read for the key. */
function valuesFor(key: string, tokens: string[], today: Date): string[] {
  const lower = tokens.map((t) => t.toLowerCase());
  switch (key) {
    case "date":
      return sortedSet(expandDates(lower, today));
    case "time":
      return sortedSet(expandTimes(lower).map((t) => String(t).padStart(4, "0")));
    case "step":
    case "levelist":
    case "number":
      return sortedSet(expandIntegers(key, lower));
    case "param":
      return sortedSet(lower.map((t) => lookupParam(t)?.paramId ?? t));
    case "expver":
      return lower.map((t) => (/^\d{1,4}$/.test(t) ? t.padStart(4, "0") : t));
    case "area":
    case "grid":
      return lower.map((t) => (t !== "" && Number.isFinite(Number(t)) ? String(Number(t)) : t));
    default:
      return lower;
  }
}

/**
 * The key of a job's requests (hex sha256 of their canonical form), or undefined when they cannot be
 * keyed: a verb other than retrieve, or a value the expansions refuse (MARS then refuses the request
 * too, and there is nothing to reuse).
 */
export function requestKey(requests: readonly MarsRequest[], today: Date = new Date()): string | undefined {
  const canonical: Array<Array<[string, string[]]>> = [];
  for (const req of requests) {
    if (req.verb !== "retrieve") return undefined;
    const params: Record<string, string[]> = { ...DEFAULTS };
    for (const [key, tokens] of Object.entries(req.params)) if (!LEFT_OUT.has(key)) params[key] = tokens;
    try {
      canonical.push(
        Object.keys(params)
          .sort()
          .map((key) => [key, valuesFor(key, params[key]!, today)]),
      );
    } catch {
      // A value MARS would refuse: the job fails as it would without a key; nothing to reuse.
      return undefined;
    }
  }
  return createHash("sha256")
    .update(JSON.stringify([KEY_VERSION, canonical]))
    .digest("hex");
}
